//! Consumer groups against a running broker: what reading through the group protocol costs,
//! and how long a dead member's queues take to move. Prints numbers; asserts nothing.
//!
//! 1. Throughput at 8 queues and 3 readers: *direct* is 3 threads with their own clients,
//!    each pulling a fixed third of the queues (pipelined, no commits); *group* is 3
//!    `GroupConsumer`s of one group (fenced pulls, a commit riding on every pull). Both read the
//!    same `N` messages of 100 bytes from offset 0 and count them without printing; the group
//!    members settle (join, hand-overs) before the clock starts. Rounds alternate the two.
//! 2. Take-over: 3 members under load, one stops (no leave, its socket closed: what the broker
//!    sees of a SIGKILL); the time until every queue it held has a newer commit.
//!
//! `cargo run --release --example group_throughput -- BROKER [messages] [rounds]`

use ringmq::client::{Client, Disposition, GroupConsumer, GroupOptions};
use ringmq::protocol::message::{GroupDescribe, GroupMembers, MessageRef, PullRequest};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const QUEUES: u32 = 8;
const READERS: usize = 3;

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .expect("usage: group_throughput BROKER [messages] [rounds]");
    let messages: u64 = args
        .next()
        .map_or(400_000, |a| a.parse().expect("messages"));
    let rounds: usize = args.next().map_or(3, |a| a.parse().expect("rounds"));
    let topic = format!("gbench{}", std::process::id());
    let mut admin = Client::connect(&addr).expect("connect");
    admin.create_topic(&topic, QUEUES).expect("create topic");
    produce(&mut admin, &topic, messages);
    let ends: Vec<u64> = admin
        .describe_topic(&topic)
        .expect("describe")
        .queues
        .iter()
        .map(|q| q.max_offset)
        .collect();
    let total: u64 = ends.iter().sum();
    let (mut direct, mut group) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        direct.push(total as f64 / read_direct(&addr, &topic, &ends).as_secs_f64());
        group.push(
            total as f64
                / read_as_group(&addr, &topic, &format!("bench-{round}"), total).as_secs_f64(),
        );
        println!(
            "round {round}: direct {:.0} msg/s, group {:.0} msg/s",
            direct[round], group[round]
        );
    }
    let (d, g) = (median(&mut direct), median(&mut group));
    println!(
        "{total} messages, 8 queues, 3 readers: direct {d:.0} msg/s, group {g:.0} msg/s, group/direct {:.3}",
        g / d
    );
    take_over(&addr, &topic);
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    values[values.len() / 2]
}

fn produce(client: &mut Client, topic: &str, messages: u64) {
    let body = [b'x'; 100];
    let batch: Vec<MessageRef<'_>> = (0..200)
        .map(|_| MessageRef {
            born_timestamp_ms: 0,
            key: b"",
            properties: b"",
            body: &body,
        })
        .collect();
    for n in 0..messages.div_ceil(200) {
        client
            .produce(topic, Some(n as u32 % QUEUES), &batch)
            .expect("produce");
    }
}

/// The averagely split of the 8 queues over 3 readers: 0-2, 3-5, 6-7.
fn share(reader: usize) -> Vec<u32> {
    match reader {
        0 => vec![0, 1, 2],
        1 => vec![3, 4, 5],
        _ => vec![6, 7],
    }
}

fn read_direct(addr: &str, topic: &str, ends: &[u64]) -> Duration {
    let start = Arc::new(Barrier::new(READERS + 1));
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (addr, topic, start) = (addr.to_string(), topic.to_string(), start.clone());
            let ends = ends.to_vec();
            thread::spawn(move || {
                let mut client = Client::connect(&addr).expect("connect");
                client.topic(&topic).expect("routing");
                let mut offsets: BTreeMap<u32, u64> =
                    share(r).into_iter().map(|q| (q, 0)).collect();
                start.wait();
                while offsets.iter().any(|(q, o)| *o < ends[*q as usize]) {
                    let tickets: Vec<_> = offsets
                        .iter()
                        .filter(|(q, o)| **o < ends[**q as usize])
                        .map(|(q, o)| {
                            let pull = PullRequest {
                                topic: topic.clone(),
                                queue: *q,
                                offset: *o,
                                max_messages: 256,
                                max_bytes: 4 << 20,
                                max_wait_ms: 0,
                            };
                            (*q, client.send_pull(&pull).expect("pull"))
                        })
                        .collect();
                    for (q, ticket) in tickets {
                        let result = client.wait_pull(ticket, 0).expect("pull answer");
                        offsets.insert(q, result.summary.next_offset);
                    }
                }
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    for r in readers {
        r.join().expect("reader");
    }
    began.elapsed()
}

fn member(addr: &str, topic: &str, group: &str, name: &str) -> GroupConsumer<Client> {
    let mut options = GroupOptions::new(group, topic);
    options.client_id = name.to_string();
    options.max_wait_ms = 100;
    GroupConsumer::new(Client::connect(addr).expect("connect"), options)
}

fn read_as_group(addr: &str, topic: &str, group: &str, total: u64) -> Duration {
    let settled = Arc::new(Barrier::new(READERS + 1));
    let delivered = Arc::new(AtomicU64::new(0));
    let done_at = Arc::new(Mutex::new(None::<Instant>));
    let members: Vec<_> = (0..READERS)
        .map(|r| {
            let (addr, topic, group) = (addr.to_string(), topic.to_string(), group.to_string());
            let (settled, delivered, done_at) =
                (settled.clone(), delivered.clone(), done_at.clone());
            thread::spawn(move || {
                let mut consumer = member(&addr, &topic, &group, &format!("m{r}"));
                // Join and let the hand-overs of the three joins finish before the clock runs.
                let until = Instant::now() + Duration::from_millis(1_500);
                while Instant::now() < until {
                    consumer.poll(0, &mut |_| Disposition::Ack).expect("settle");
                    thread::sleep(Duration::from_millis(10));
                }
                settled.wait();
                while delivered.load(Ordering::Relaxed) < total {
                    let polled = consumer
                        .poll(u64::MAX, &mut |_| Disposition::Ack)
                        .expect("poll");
                    if delivered.fetch_add(polled.delivered, Ordering::Relaxed) + polled.delivered
                        >= total
                    {
                        done_at.lock().unwrap().get_or_insert_with(Instant::now);
                    }
                }
                consumer.close().expect("leave");
            })
        })
        .collect();
    settled.wait();
    let began = Instant::now();
    for m in members {
        m.join().expect("member");
    }
    let done = done_at.lock().unwrap().expect("every message delivered");
    done - began
}

fn take_over(addr: &str, topic: &str) {
    let group = "takeover";
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (addr, topic, stop) = (addr.to_string(), topic.to_string(), stop.clone());
        thread::spawn(move || {
            let mut client = Client::connect(&addr).expect("connect");
            while !stop.load(Ordering::Relaxed) {
                produce(&mut client, &topic, 800);
                thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let die = Arc::new(AtomicBool::new(false));
    let victim_queues = Arc::new(Mutex::new(Vec::new()));
    let members: Vec<_> = (0..READERS)
        .map(|r| {
            let (addr, topic, stop, die) = (
                addr.to_string(),
                topic.to_string(),
                stop.clone(),
                die.clone(),
            );
            let victim_queues = victim_queues.clone();
            thread::spawn(move || {
                let mut consumer = member(&addr, &topic, group, &format!("t{r}"));
                while !stop.load(Ordering::Relaxed) {
                    if r == 0 && die.load(Ordering::Relaxed) {
                        *victim_queues.lock().unwrap() = consumer.owned();
                        return; // dropped without leaving: its session has to end
                    }
                    consumer
                        .poll(u64::MAX, &mut |_| Disposition::Ack)
                        .expect("poll");
                }
                consumer.close().expect("leave");
            })
        })
        .collect();
    let mut admin = Client::connect(addr).expect("connect");
    thread::sleep(Duration::from_secs(3));
    die.store(true, Ordering::Relaxed);
    while victim_queues.lock().unwrap().is_empty() {
        thread::sleep(Duration::from_millis(1));
    }
    let died = Instant::now();
    let since_heartbeat = admin
        .call(&GroupMembers {
            group: group.into(),
        })
        .expect("members")
        .members
        .iter()
        .find(|m| m.client_id == "t0")
        .map_or(0, |m| m.last_heartbeat_ms);
    let committed = |admin: &mut Client| -> BTreeMap<u32, u64> {
        admin
            .call(&GroupDescribe {
                group: group.into(),
            })
            .expect("describe")
            .queues
            .iter()
            .map(|q| (q.queue, q.committed_offset))
            .collect()
    };
    let at_death = committed(&mut admin);
    let queues: Vec<u32> = victim_queues
        .lock()
        .unwrap()
        .iter()
        .map(|q| q.queue)
        .collect();
    loop {
        let now = committed(&mut admin);
        if queues.iter().all(|q| now.get(q) > at_death.get(q)) {
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    let moved = died.elapsed();
    stop.store(true, Ordering::Relaxed);
    producer.join().expect("producer");
    for m in members {
        m.join().expect("member");
    }
    let session_end = Duration::from_millis(3_000u64.saturating_sub(since_heartbeat));
    println!(
        "take-over: member stopped {since_heartbeat} ms after its last heartbeat; its {} queues \
         consumed again {} ms after it stopped, {} ms after its session ended (3000 ms session)",
        queues.len(),
        moved.as_millis(),
        moved.saturating_sub(session_end).as_millis()
    );
}
