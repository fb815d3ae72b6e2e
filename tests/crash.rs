//! Durability under SIGKILL. Each test runs rounds: one producer per queue records the outcome
//! of every send while the real broker runs for a seeded random time; then the broker is
//! SIGKILLed and restarted on its store at once, as a supervisor would, and every queue is read
//! from offset 0 and checked against the whole history of sends:
//! - nothing duplicated, nothing invented, each producer's order kept;
//! - everything a restarted broker served before is still there, at the same offsets;
//! - under SYNC_FLUSH every acknowledged message is there at its acknowledged offset;
//! - under ASYNC_FLUSH what is missing is only a suffix of the messages acknowledged in the
//!   round (no holes); how many is printed.
//!
//! Each mode runs with small segments (many rolls and checkpoints per round) and at the default
//! configuration (1 GiB segments, one shard per core, default timeouts), which users run.
//! `--nocapture` shows one summary line per round and the shards' recovery reports.
//!
//! Set `RINGMQ_CRASH_SEED` to replay a run; the seed is printed either way.

mod common;

use ringmq::testing::SeededRng;

use common::{temp_store, Broker, Recovery, Sizes};
use ringmq::client::Client;
use ringmq::protocol::message::MessageRef;
use ringmq::protocol::Status;
use std::collections::HashMap;
use std::thread;
use std::time::{Duration, Instant};

const TOPIC: &str = "crash";
const PRODUCERS: u32 = 4;
/// Produce requests a producer keeps in flight, so a kill lands with several unanswered.
const WINDOW: usize = 4;
/// How long a producer waits for an acknowledgement before the test fails: far beyond the
/// broker's own flush timeout, so only a broker that never answers reaches it.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);

fn seed() -> u64 {
    common::seed_from_env("RINGMQ_CRASH_SEED")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Sent, no answer yet (or never: the connection died).
    Unknown,
    /// `OK`: stored at this queue offset (durable under SYNC_FLUSH).
    Acked { queue: u32, offset: u64 },
    /// Another status (stored without the guarantee, or refused): may or may not be present.
    Other(Status),
}

/// What a mode promises about acknowledged messages after a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Promise {
    /// SYNC_FLUSH: every acknowledged message survives.
    Lossless,
    /// ASYNC_FLUSH: a per-queue suffix of what was acknowledged since the last flush may go.
    SuffixMayBeLost,
}

/// One test's rounds: the broker's configuration and how long producers run before each kill.
struct Plan {
    sizes: Sizes,
    flush: &'static str,
    promise: Promise,
    rounds: u32,
    /// Load before each kill: `load_min_ms` plus a seeded random part below `load_spread_ms`.
    load_min_ms: u64,
    load_spread_ms: u64,
    /// Message body size: larger bodies put megabytes between two checkpoints, so recovery
    /// scans (and reads) that much.
    body_bytes: usize,
}

/// `p<producer>-s<seq>`, padded with `-` and dots to `body_bytes` when shorter.
fn body(producer: u32, seq: u64, body_bytes: usize) -> Vec<u8> {
    let mut body = format!("p{producer}-s{seq}").into_bytes();
    if body.len() < body_bytes {
        body.push(b'-');
        body.resize(body_bytes, b'.');
    }
    body
}

fn parse_body(body: &[u8]) -> Option<(u32, u64)> {
    let text = std::str::from_utf8(body).ok()?;
    let (p, s) = text.strip_prefix('p')?.split_once("-s")?;
    let (s, padding) = s.split_once('-').unwrap_or((s, ""));
    if padding.bytes().any(|b| b != b'.') {
        return None;
    }
    Some((p.parse().ok()?, s.parse().ok()?))
}

/// One producer for one round: owns queue `id`, keeps `WINDOW` produces in flight starting at
/// sequence number `first_seq`, and records every outcome until the broker dies under it.
fn produce_until_killed(id: u32, addr: &str, first_seq: u64, body_bytes: usize) -> Vec<Outcome> {
    let mut outcomes: Vec<Outcome> = Vec::new();
    let Ok(mut client) = Client::connect(addr).and_then(|mut c| c.topic(TOPIC).map(|_| c)) else {
        return outcomes;
    };
    // request id -> sequence number.
    let mut pending: HashMap<u64, u64> = HashMap::new();
    loop {
        while pending.len() < WINDOW {
            let seq = first_seq + outcomes.len() as u64;
            let body = body(id, seq, body_bytes);
            let message = MessageRef {
                born_timestamp_ms: seq,
                key: b"",
                properties: b"",
                body: &body,
            };
            outcomes.push(Outcome::Unknown);
            match client.send_produce(TOPIC, Some(id), &[message]) {
                Ok(ticket) => pending.insert(ticket.request_id, seq),
                Err(_) => return outcomes,
            };
        }
        let ack = match client.next_produce_ack(ACK_TIMEOUT) {
            Ok(Some(ack)) => ack,
            Ok(None) => panic!("producer {id}: no acknowledgement within {ACK_TIMEOUT:?}"),
            Err(_) => return outcomes,
        };
        let seq = pending
            .remove(&ack.ticket.request_id)
            .expect("ack for a request in flight");
        outcomes[(seq - first_seq) as usize] = match ack.result {
            Ok(r) if r.status == Status::Ok => Outcome::Acked {
                queue: r.response.queue,
                offset: r.response.base_offset,
            },
            Ok(r) => Outcome::Other(r.status),
            Err(e) => match e.status() {
                Some(status) => Outcome::Other(status),
                None => return outcomes,
            },
        };
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

/// Everything one queue's producer sent, and what the queue held after the last restart.
#[derive(Default)]
struct QueueHistory {
    /// The outcome of every send, by sequence number.
    outcomes: Vec<Outcome>,
    /// Sequence numbers the queue held after the last restart, by offset.
    recovered: Vec<u64>,
}

/// One round's counts, over all queues.
#[derive(Default, Debug)]
struct RoundCount {
    sent: u64,
    acked: u64,
    lost: u64,
    other_status: u64,
    unacked_present: u64,
    unacked_absent: u64,
    stored: u64,
}

impl RoundCount {
    fn add(&mut self, other: &RoundCount) {
        self.sent += other.sent;
        self.acked += other.acked;
        self.lost += other.lost;
        self.other_status += other.other_status;
        self.unacked_present += other.unacked_present;
        self.unacked_absent += other.unacked_absent;
        self.stored += other.stored;
    }
}

/// The sequence numbers of a queue as read back, checked for bodies never sent, another
/// producer's messages, duplicates and reordering (each producer's sequence numbers increase
/// with the offset).
fn stored_sequence(queue: u32, sent: usize, stored: &[(u64, Vec<u8>)]) -> Vec<u64> {
    let mut seqs: Vec<u64> = Vec::with_capacity(stored.len());
    for (offset, body) in stored {
        let (producer, seq) = parse_body(body).unwrap_or_else(|| {
            panic!("queue {queue} offset {offset}: a body never sent: {body:?}")
        });
        assert_eq!(producer, queue, "queue {queue}: another producer's message");
        assert!(
            (seq as usize) < sent,
            "queue {queue} offset {offset}: seq {seq} was never sent"
        );
        if let Some(last) = seqs.last() {
            assert!(
                seq > *last,
                "queue {queue} offset {offset}: seq {seq} after seq {last} (duplicate or reordered)"
            );
        }
        seqs.push(seq);
    }
    seqs
}

/// Checks one queue after a restart against its history; the sends of this round start at
/// `round_start`. Returns the round's counts; `lost` counts acknowledged messages missing, all
/// of them past the queue's end (a suffix), none before it.
fn check_queue(
    queue: u32,
    history: &mut QueueHistory,
    round_start: u64,
    stored: &[(u64, Vec<u8>)],
    seed: u64,
) -> RoundCount {
    let seqs = stored_sequence(queue, history.outcomes.len(), stored);
    let kept = history.recovered.len();
    assert!(
        seqs.len() >= kept && seqs[..kept] == history.recovered[..],
        "queue {queue}: the {kept} messages served after the last restart changed (seed {seed})"
    );
    let end = seqs.len() as u64;
    let mut count = RoundCount {
        stored: end,
        ..RoundCount::default()
    };
    for (seq, outcome) in history
        .outcomes
        .iter()
        .enumerate()
        .skip(round_start as usize)
    {
        let seq = seq as u64;
        count.sent += 1;
        let present = seqs.binary_search(&seq).is_ok();
        match *outcome {
            Outcome::Acked { queue: q, offset } => {
                assert_eq!(q, queue, "seq {seq}: acknowledged on another queue");
                count.acked += 1;
                if offset < end {
                    assert_eq!(
                        seqs[offset as usize], seq,
                        "queue {queue}: seq {seq} acknowledged at offset {offset} is missing or \
                         moved, before the queue's end {end} (a hole; seed {seed})"
                    );
                } else {
                    count.lost += 1;
                }
            }
            Outcome::Other(_) | Outcome::Unknown => {
                if matches!(outcome, Outcome::Other(_)) {
                    count.other_status += 1;
                }
                if present {
                    count.unacked_present += 1;
                } else {
                    count.unacked_absent += 1;
                }
            }
        }
    }
    history.recovered = seqs;
    count
}

fn recovery_summary(recoveries: &[Recovery]) -> String {
    recoveries
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs `plan`: rounds of load, SIGKILL, immediate restart and a check of every queue.
fn run(name: &str, plan: Plan) {
    let seed = seed();
    eprintln!("{name}: seed {seed} (set RINGMQ_CRASH_SEED={seed} to replay)");
    let mut rng = SeededRng(seed);
    let dir = temp_store();
    let mut args = vec!["--flush", plan.flush];
    if plan.sizes == Sizes::Small {
        args.extend(["--shards", "2"]);
    }
    let mut broker = Broker::start_sized(dir.path(), plan.sizes, "", &args);
    broker
        .client()
        .create_topic(TOPIC, PRODUCERS)
        .expect("create topic");
    let mut histories: Vec<QueueHistory> =
        (0..PRODUCERS).map(|_| QueueHistory::default()).collect();
    let mut total = RoundCount::default();
    let mut slowest_recovery_ms: f64 = 0.0;
    let started = Instant::now();
    for round in 0..plan.rounds {
        let round_starts: Vec<u64> = histories.iter().map(|h| h.outcomes.len() as u64).collect();
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|id| {
                let addr = broker.addr.clone();
                let first_seq = round_starts[id as usize];
                let body_bytes = plan.body_bytes;
                thread::spawn(move || produce_until_killed(id, &addr, first_seq, body_bytes))
            })
            .collect();
        let load_ms = plan.load_min_ms + rng.below(plan.load_spread_ms);
        // The seeded kill moment, not a synchronisation: the producers run until it.
        thread::sleep(Duration::from_millis(load_ms));
        broker.kill();
        let restart_began = Instant::now();
        broker.restart();
        let ready_after = restart_began.elapsed();
        for (history, producer) in histories.iter_mut().zip(producers) {
            history
                .outcomes
                .extend(producer.join().expect("producer panicked"));
        }
        let recoveries = broker.recoveries();
        slowest_recovery_ms = recoveries
            .iter()
            .map(|r| r.duration_ms)
            .fold(slowest_recovery_ms, f64::max);
        let mut client = broker.client();
        let mut count = RoundCount::default();
        for (queue, history) in histories.iter_mut().enumerate() {
            let stored = read_queue(&mut client, queue as u32);
            let queue_count =
                check_queue(queue as u32, history, round_starts[queue], &stored, seed);
            count.add(&queue_count);
        }
        eprintln!(
            "{name}: round {round}: load {load_ms} ms, sent={} acked={} lost={} dup=0 \
             other_status={} unacked_present={} unacked_absent={} stored={}; \
             ready {ready_after:?} after restart; recovery: {}",
            count.sent,
            count.acked,
            count.lost,
            count.other_status,
            count.unacked_present,
            count.unacked_absent,
            count.stored,
            recovery_summary(&recoveries)
        );
        if plan.promise == Promise::Lossless {
            assert_eq!(
                count.lost, 0,
                "round {round}: acknowledged messages lost (seed {seed})"
            );
        }
        total.add(&count);
    }
    eprintln!(
        "{name}: seed={seed} rounds={} sent={} acked={} lost={} dup=0 other_status={} \
         unacked_present={} unacked_absent={} slowest shard recovery {slowest_recovery_ms:.1} ms, \
         in {:?}",
        plan.rounds,
        total.sent,
        total.acked,
        total.lost,
        total.other_status,
        total.unacked_present,
        total.unacked_absent,
        started.elapsed()
    );
    assert!(
        total.acked > 0,
        "nothing was acknowledged: the test tested nothing"
    );
}

#[test]
fn acknowledged_messages_survive_repeated_sigkill() {
    run(
        "sync_flush small",
        Plan {
            sizes: Sizes::Small,
            flush: "SYNC_FLUSH",
            promise: Promise::Lossless,
            rounds: 30,
            load_min_ms: 50,
            load_spread_ms: 400,
            body_bytes: 0,
        },
    );
}

#[test]
fn acknowledged_messages_survive_sigkill_at_the_default_configuration() {
    run(
        "sync_flush default",
        Plan {
            sizes: Sizes::Default,
            flush: "SYNC_FLUSH",
            promise: Promise::Lossless,
            rounds: 4,
            load_min_ms: 1000,
            load_spread_ms: 2000,
            body_bytes: 1024,
        },
    );
}

#[test]
fn async_flush_loses_only_a_suffix_of_acknowledged_messages() {
    run(
        "async_flush small",
        Plan {
            sizes: Sizes::Small,
            flush: "ASYNC_FLUSH",
            promise: Promise::SuffixMayBeLost,
            rounds: 10,
            load_min_ms: 50,
            load_spread_ms: 400,
            body_bytes: 0,
        },
    );
}

#[test]
fn async_flush_loses_only_a_suffix_at_the_default_configuration() {
    run(
        "async_flush default",
        Plan {
            sizes: Sizes::Default,
            flush: "ASYNC_FLUSH",
            promise: Promise::SuffixMayBeLost,
            rounds: 4,
            load_min_ms: 1000,
            load_spread_ms: 2000,
            body_bytes: 1024,
        },
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
        let body = body((i % 2) as u32, i, 0);
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
    broker.restart();
    let clean = broker.recoveries();
    assert_eq!(clean.len(), 2, "one report per shard: {clean:?}");
    assert!(clean.iter().all(|r| !r.unclean_shutdown), "{clean:?}");

    broker.kill();
    broker.restart();
    let unclean = broker.recoveries();
    assert_eq!(unclean.len(), 2, "one report per shard: {unclean:?}");
    assert!(unclean.iter().all(|r| r.unclean_shutdown), "{unclean:?}");

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
