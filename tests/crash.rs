//! Durability under SIGKILL: producers record the outcome of every send while a killer
//! SIGKILLs and restarts the real broker at seeded random moments; afterwards every queue is
//! read from offset 0 and checked against that history (nothing acknowledged lost or moved,
//! nothing duplicated, nothing invented, per-producer order kept).
//!
//! Set `RINGMQ_CRASH_SEED` to replay a run; the seed is printed either way.

mod common;

use ringmq::store::sim::SeededRng;

use common::{temp_store, Broker};
use ringmq::client::Client;
use ringmq::protocol::message::MessageRef;
use ringmq::protocol::Status;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const TOPIC: &str = "crash";
const PRODUCERS: u32 = 4;
/// Produce requests a producer keeps in flight, so a kill lands with several unanswered.
const WINDOW: usize = 4;
const ROUNDS: u32 = 30;
/// How long a producer waits for the broker to come back after losing its connection.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(90);

/// xorshift64*: enough randomness for kill timing, reproducible from the seed.
fn seed() -> u64 {
    common::seed_from_env("RINGMQ_CRASH_SEED")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Sent, no answer yet (or never: the connection died).
    Unknown,
    /// `OK`: durable at this queue offset.
    Acked { queue: u32, offset: u64 },
    /// Another status (stored without the guarantee, or refused): may or may not be present.
    Other(Status),
}

/// The broker's current address and how many times it has been (re)started.
struct Generation {
    state: Mutex<(u64, String)>,
    changed: Condvar,
}

impl Generation {
    fn publish(&self, addr: &str) {
        let mut state = self.state.lock().unwrap();
        state.0 += 1;
        state.1 = addr.to_string();
        self.changed.notify_all();
    }
    fn current(&self) -> (u64, String) {
        self.state.lock().unwrap().clone()
    }
    /// Blocks until a generation newer than `seen` is published.
    fn wait_newer(&self, seen: u64) {
        let state = self.state.lock().unwrap();
        let (state, timeout) = self
            .changed
            .wait_timeout_while(state, RECONNECT_TIMEOUT, |s| s.0 <= seen)
            .unwrap();
        assert!(
            !timeout.timed_out() || state.0 > seen,
            "broker never came back"
        );
    }
}

fn body(producer: u32, seq: u64) -> Vec<u8> {
    format!("p{producer}-s{seq}").into_bytes()
}

fn parse_body(body: &[u8]) -> Option<(u32, u64)> {
    let text = std::str::from_utf8(body).ok()?;
    let (p, s) = text.strip_prefix('p')?.split_once("-s")?;
    Some((p.parse().ok()?, s.parse().ok()?))
}

/// One producer: owns queue `id`, keeps `WINDOW` produces in flight, records every outcome,
/// reconnects after the broker dies. Returns the outcome of every sequence number it sent.
fn produce_until_stopped(id: u32, generation: &Generation, stop: &AtomicBool) -> Vec<Outcome> {
    let mut history: Vec<Outcome> = Vec::new();
    let mut client: Option<Client> = None;
    let mut seen_generation = 0;
    // request id -> sequence number, for the current connection.
    let mut pending: HashMap<u64, u64> = HashMap::new();
    loop {
        if stop.load(Ordering::Relaxed) && pending.is_empty() {
            return history;
        }
        let Some(c) = client.as_mut() else {
            let (generation_now, addr) = generation.current();
            match Client::connect(&addr).and_then(|mut c| c.topic(TOPIC).map(|_| c)) {
                Ok(c) => {
                    seen_generation = generation_now;
                    client = Some(c);
                }
                Err(_) => {
                    if stop.load(Ordering::Relaxed) {
                        return history;
                    }
                    generation.wait_newer(generation_now);
                }
            }
            continue;
        };
        let mut broken = false;
        while pending.len() < WINDOW && !stop.load(Ordering::Relaxed) {
            let seq = history.len() as u64;
            let body = body(id, seq);
            let message = MessageRef {
                born_timestamp_ms: seq,
                key: b"",
                properties: b"",
                body: &body,
            };
            history.push(Outcome::Unknown);
            match c.send_produce(TOPIC, Some(id), &[message]) {
                Ok(ticket) => {
                    pending.insert(ticket.request_id, seq);
                }
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        if !broken && !pending.is_empty() {
            match c.next_produce_ack(Duration::from_secs(60)) {
                Ok(Some(ack)) => {
                    let seq = pending
                        .remove(&ack.ticket.request_id)
                        .expect("ack for a request in flight");
                    history[seq as usize] = match ack.result {
                        Ok(r) if r.status == Status::Ok => Outcome::Acked {
                            queue: r.response.queue,
                            offset: r.response.base_offset,
                        },
                        Ok(r) => Outcome::Other(r.status),
                        Err(e) => match e.status() {
                            Some(status) => Outcome::Other(status),
                            None => {
                                broken = true;
                                Outcome::Unknown
                            }
                        },
                    };
                }
                Ok(None) => panic!("producer {id}: no acknowledgement within 60 s"),
                Err(_) => broken = true,
            }
        }
        if broken {
            // Everything in flight stays Unknown; wait for the next broker if this one died.
            pending.clear();
            client = None;
            let (now, _) = generation.current();
            if now == seen_generation && !stop.load(Ordering::Relaxed) {
                generation.wait_newer(seen_generation);
            }
        }
    }
}

/// Every message of a queue from offset 0: (offset, body).
fn read_queue(client: &mut Client, queue: u32) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let r = client
            .pull(TOPIC, queue, offset, 512, 1 << 20, 0)
            .unwrap_or_else(|e| panic!("queue {queue}: pull at offset {offset} failed: {e:?}"));
        if r.messages.is_empty() {
            assert_eq!(offset, r.summary.max_offset, "queue {queue} ends early");
            return out;
        }
        for m in r.messages {
            assert_eq!(
                m.queue_offset, offset,
                "queue {queue}: offsets not contiguous"
            );
            offset += 1;
            out.push((m.queue_offset, m.body));
        }
        assert_eq!(offset, r.summary.next_offset);
    }
}

#[test]
fn acknowledged_messages_survive_repeated_sigkill() {
    let seed = seed();
    eprintln!("crash test seed: {seed} (set RINGMQ_CRASH_SEED={seed} to replay)");
    let mut rng = SeededRng(seed);
    let dir = temp_store();
    let mut broker = Broker::start(dir.path(), &["--flush", "SYNC_FLUSH", "--shards", "2"]);
    broker
        .client()
        .create_topic(TOPIC, PRODUCERS)
        .expect("create topic");

    let generation = Arc::new(Generation {
        state: Mutex::new((0, String::new())),
        changed: Condvar::new(),
    });
    generation.publish(&broker.addr);
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|id| {
            let (generation, stop) = (generation.clone(), stop.clone());
            thread::spawn(move || produce_until_stopped(id, &generation, &stop))
        })
        .collect();

    let started = Instant::now();
    for _ in 0..ROUNDS {
        // The random moment: how long the producers run before this kill.
        thread::sleep(Duration::from_millis(50 + rng.below(400)));
        broker.kill();
        broker.restart();
        generation.publish(&broker.addr);
    }
    // A last stretch without a kill, so the end state includes acknowledged traffic.
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let histories: Vec<Vec<Outcome>> = producers
        .into_iter()
        .map(|p| p.join().expect("producer panicked"))
        .collect();
    let elapsed = started.elapsed();

    // Final kill too: the check reads what recovery produced.
    broker.kill();
    broker.restart();
    let mut client = broker.client();
    let (mut sent, mut acked, mut other) = (0, 0, 0);
    let (mut unacked_present, mut unacked_absent) = (0, 0);
    for (producer, history) in histories.iter().enumerate() {
        let queue = producer as u32;
        let stored = read_queue(&mut client, queue);
        let mut at: BTreeMap<u64, u64> = BTreeMap::new(); // seq -> offset
        let mut last_seq: Option<u64> = None;
        for (offset, body) in &stored {
            let (p, seq) = parse_body(body).unwrap_or_else(|| {
                panic!("queue {queue} offset {offset}: a body never sent: {body:?}")
            });
            assert_eq!(
                p, producer as u32,
                "queue {queue}: another producer's message"
            );
            assert!(
                (seq as usize) < history.len(),
                "queue {queue} offset {offset}: seq {seq} was never sent"
            );
            assert!(
                at.insert(seq, *offset).is_none(),
                "queue {queue}: seq {seq} stored twice"
            );
            if let Some(last) = last_seq {
                assert!(
                    seq > last,
                    "queue {queue}: seq {seq} at offset {offset} after seq {last}"
                );
            }
            last_seq = Some(seq);
        }
        for (seq, outcome) in history.iter().enumerate() {
            sent += 1;
            match outcome {
                Outcome::Acked { queue: q, offset } => {
                    acked += 1;
                    assert_eq!(*q, queue);
                    assert_eq!(
                        at.get(&(seq as u64)),
                        Some(offset),
                        "producer {producer} seq {seq}: acknowledged at offset {offset}, \
                         lost or moved (seed {seed})"
                    );
                }
                Outcome::Other(_) | Outcome::Unknown => {
                    if matches!(outcome, Outcome::Other(_)) {
                        other += 1;
                    }
                    if at.contains_key(&(seq as u64)) {
                        unacked_present += 1;
                    } else {
                        unacked_absent += 1;
                    }
                }
            }
        }
    }
    eprintln!(
        "crash test: seed={seed} rounds={ROUNDS} sent={sent} acked={acked} lost=0 \
         other_status={other} unacked_present={unacked_present} \
         unacked_absent={unacked_absent} in {elapsed:?}"
    );
    assert!(
        acked > 0,
        "nothing was acknowledged: the test tested nothing"
    );
}

#[test]
fn a_kill_while_idle_is_recovered_as_an_unclean_shutdown() {
    let dir = temp_store();
    let mut broker = Broker::start(dir.path(), &["--flush", "SYNC_FLUSH", "--shards", "2"]);
    let mut client = broker.client();
    client.create_topic(TOPIC, 2).expect("create topic");
    let mut acked = Vec::new();
    for i in 0..20u64 {
        let body = body((i % 2) as u32, i);
        let message = MessageRef {
            born_timestamp_ms: i,
            key: b"",
            properties: b"",
            body: &body,
        };
        let ack = client
            .produce(TOPIC, Some((i % 2) as u32), &[message])
            .expect("produce");
        assert_eq!(ack.status, Status::Ok);
        acked.push((ack.response.queue, ack.response.base_offset, body));
    }

    assert!(broker.stop(), "clean stop failed:\n{}", broker.log());
    let before = broker.log().len();
    broker.restart();
    let clean = broker.log()[before..].to_string();
    let recovered: Vec<&str> = clean.lines().filter(|l| l.contains("recovered")).collect();
    assert_eq!(recovered.len(), 2, "one report per shard:\n{clean}");
    assert!(
        recovered
            .iter()
            .all(|l| l.contains("unclean_shutdown=false")),
        "{clean}"
    );

    broker.kill();
    let before = broker.log().len();
    broker.restart();
    let unclean = broker.log()[before..].to_string();
    let recovered: Vec<&str> = unclean
        .lines()
        .filter(|l| l.contains("recovered"))
        .collect();
    assert_eq!(recovered.len(), 2, "one report per shard:\n{unclean}");
    assert!(
        recovered
            .iter()
            .all(|l| l.contains("unclean_shutdown=true")),
        "{unclean}"
    );

    let mut client = broker.client();
    let mut stored: Vec<(u32, u64, Vec<u8>)> = Vec::new();
    for queue in 0..2 {
        for (offset, body) in read_queue(&mut client, queue) {
            stored.push((queue, offset, body));
        }
    }
    acked.sort();
    stored.sort();
    assert_eq!(stored, acked);
}
