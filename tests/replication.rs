//! Replication against real processes on loopback: a master and a slave (`ringmq serve`), with
//! SIGKILL, SIGSTOP and restarts. Brokers that restart keep their ports ([`PortBlock`]), so a
//! slave reconnects to its master, and a failover consumer finds it again, on their own.
//!
//! Set `RINGMQ_REPL_SEED` to replay the kill points of the durability test; the seed is printed.

mod common;

use ringmq::protocol::message::{
    ClusterDemote, ClusterPromote, ClusterStatusRequest, GroupCommit, GroupFetch, StatsRequest,
    TopicListRequest,
};
use ringmq::testing::SeededRng;

use common::{retention_on_request, temp_store, wait_until, Broker, PortBlock, Sizes};
use ringmq::client::{Client, ClientOptions, ClusterStatus, FailoverClient};
use ringmq::protocol::message::MessageRef;
use ringmq::protocol::Status;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const SHARDS: &str = "2";
/// Short heartbeats and link timeouts so links notice a dead peer quickly; frequent metadata
/// copies so a slave knows a new topic soon after it is created.
const HA_CONFIG: &str = "ha_heartbeat_interval_ms = 100\nha_link_timeout_ms = 3000\n\
                         metadata_sync_interval_ms = 200\nsync_replica_timeout_ms = 3000\n";
const CATCH_UP: Duration = Duration::from_secs(30);
/// The epoch a first promotion opens: term 1, generation 0 (`term << 16 | generation`, see
/// docs/replication.md).
const FIRST_TERM: u32 = 1 << 16;

struct Node {
    broker: Broker,
    ports: PortBlock,
    _dir: tempfile::TempDir,
}

fn start_node(role: &str, flush: &str, master: Option<&PortBlock>, config: &str) -> Node {
    start_sized_node(Sizes::Small, role, flush, master, config)
}

/// A node at `sizes`. At [`Sizes::Small`] it runs two shards with [`HA_CONFIG`]'s short
/// intervals under `config`; at [`Sizes::Default`] everything but `config` is the default.
fn start_sized_node(
    sizes: Sizes,
    role: &str,
    flush: &str,
    master: Option<&PortBlock>,
    config: &str,
) -> Node {
    let dir = temp_store();
    let ports = PortBlock::allocate();
    let listen = ports.listen_addr();
    let ha = ports.ha_addr();
    let master_ha = master.map(|m| m.ha_addr());
    let mut args = vec![
        "--role",
        role,
        "--flush",
        flush,
        "--listen",
        &listen,
        "--ha-listen",
        &ha,
    ];
    if let Some(m) = &master_ha {
        args.extend(["--master", m.as_str()]);
    }
    if sizes == Sizes::Small {
        args.extend(["--shards", SHARDS]);
    }
    // Lines of `config` replace the defaults of HA_CONFIG with the same key.
    let key = |line: &str| line.split('=').next().unwrap_or("").trim().to_string();
    let overridden: Vec<String> = config.lines().map(key).collect();
    let mut toml: String = HA_CONFIG
        .lines()
        .map(str::trim)
        .filter(|l| !overridden.contains(&key(l)))
        .map(|l| format!("{l}\n"))
        .collect();
    if sizes == Sizes::Default {
        toml.clear();
    }
    toml.push_str(config);
    let broker = Broker::start_sized(dir.path(), sizes, &toml, &args);
    Node {
        broker,
        ports,
        _dir: dir,
    }
}

fn message(body: &[u8]) -> MessageRef<'_> {
    MessageRef {
        born_timestamp_ms: 0,
        key: b"",
        properties: b"",
        body,
    }
}

fn status(broker: &Broker) -> Option<ClusterStatus> {
    Client::connect(&broker.addr)
        .ok()?
        .call(&ClusterStatusRequest {})
        .ok()
}

/// Waits until every shard of `master` has a slave that acknowledged its whole log.
fn wait_caught_up(master: &Broker) -> ClusterStatus {
    wait_until(CATCH_UP, "the slave to catch up", || {
        let s = status(master)?;
        s.shards
            .iter()
            .all(|sh| sh.slaves.iter().any(|l| l.acked_offset == sh.max_offset))
            .then_some(s)
    })
}

/// Waits until `slave` shows consumers everything it holds, on every shard.
fn wait_slave_confirmed(slave: &Broker, master: &ClusterStatus) {
    wait_until(CATCH_UP, "the slave to confirm the master's log", || {
        let s = status(slave)?;
        s.shards
            .iter()
            .zip(&master.shards)
            .all(|(sl, m)| sl.max_offset == m.max_offset && sl.confirmed_offset == m.max_offset)
            .then_some(())
    });
}

/// Waits until `broker` knows `topic` (a slave copies topics from its master).
fn wait_topic(broker: &Broker, topic: &str) {
    wait_until(CATCH_UP, "the topic on the slave", || {
        let mut c = Client::connect(&broker.addr).ok()?;
        c.call(&TopicListRequest {})
            .map(|l| l.topics)
            .ok()?
            .iter()
            .any(|t| t.name == topic)
            .then_some(())
    });
}

/// Every visible message of every queue: queue → (offset, body) in order.
fn read_all(broker: &Broker, topic: &str, queues: u32) -> BTreeMap<u32, Vec<(u64, Vec<u8>)>> {
    let mut client = broker.client();
    let mut out = BTreeMap::new();
    for queue in 0..queues {
        let mut offset = 0;
        let mut messages = Vec::new();
        loop {
            let pulled = client
                .pull(topic, queue, offset, 256, 4 << 20, 0)
                .expect("pull");
            if pulled.messages.is_empty() {
                break;
            }
            for m in pulled.messages {
                assert_eq!(
                    m.queue_offset, offset,
                    "queue {queue}: offsets are contiguous"
                );
                offset += 1;
                messages.push((m.queue_offset, m.body));
            }
        }
        out.insert(queue, messages);
    }
    out
}

fn seed() -> u64 {
    common::seed_from_env("RINGMQ_REPL_SEED")
}

/// One durability test's rounds: the nodes' configuration and when the master dies.
struct KillPlan {
    sizes: Sizes,
    rounds: u32,
    /// The master is killed after `kill_after_min` answers plus a seeded random part below
    /// `kill_after_spread`.
    kill_after_min: u64,
    kill_after_spread: u64,
}

/// One round's producers: four blocking clients on the master, each sending to every queue in
/// turn until its connection dies. Every answer is announced on `answered`.
fn spawn_round_producers(
    addr: &str,
    round: u32,
    queues: u32,
    answered: &mpsc::Sender<()>,
) -> Vec<thread::JoinHandle<Vec<SendOutcome>>> {
    const PRODUCERS: u32 = 4;
    (0..PRODUCERS)
        .map(|p| {
            let addr = addr.to_string();
            let tx = answered.clone();
            thread::spawn(move || {
                let mut outcomes = Vec::new();
                let Ok(mut client) = Client::connect(&addr) else {
                    return outcomes;
                };
                for seq in 0u64.. {
                    let body = format!("r{round}-p{p}-{seq:06}").into_bytes();
                    let queue = (seq as u32 + p) % queues;
                    let result = client.produce(DURABLE_TOPIC, Some(queue), &[message(&body)]);
                    let failed = result.is_err();
                    outcomes.push((body, result.map(|r| (r.status, r.response))));
                    let _ = tx.send(());
                    if failed {
                        break;
                    }
                }
                outcomes
            })
        })
        .collect()
}

type SendOutcome = (
    Vec<u8>,
    Result<(Status, ringmq::protocol::message::ProduceResponse), ringmq::client::ClientError>,
);

const DURABLE_TOPIC: &str = "durable";

/// What one broker holds against what was acknowledged: (acknowledged missing or moved,
/// stored twice, out of each producer's order).
fn check_against(
    on: &BTreeMap<u32, Vec<(u64, Vec<u8>)>>,
    acked: &HashMap<Vec<u8>, (u32, u64)>,
) -> (Vec<String>, usize, usize) {
    let mut seen: HashMap<&[u8], (u32, u64)> = HashMap::new();
    let (mut dup, mut reordered) = (0, 0);
    for (queue, messages) in on {
        let mut last_seq: HashMap<&str, u64> = HashMap::new();
        for (offset, body) in messages {
            if seen.insert(body, (*queue, *offset)).is_some() {
                dup += 1;
            }
            let text = std::str::from_utf8(body).expect("a body the test sent");
            let (producer, seq) = text.rsplit_once('-').expect("body format");
            let seq: u64 = seq.parse().expect("body format");
            if let Some(previous) = last_seq.insert(producer, seq) {
                if previous >= seq {
                    reordered += 1;
                }
            }
        }
    }
    let lost = acked
        .iter()
        .filter(|(body, at)| seen.get(body.as_slice()) != Some(at))
        .map(|(body, at)| format!("{}@{at:?}", String::from_utf8_lossy(body)))
        .collect();
    (lost, dup, reordered)
}

/// SYNC_MASTER + SYNC_FLUSH with a slave; producers record every outcome; the master is
/// SIGKILLed at a seeded moment (after a seeded number of acknowledgements), in odd rounds the
/// slave with it, and both are restarted at once. After every round, once the slave caught up,
/// every message acknowledged OK in any round must be on the master and on the slave at
/// exactly its acknowledged offset, once, in its producer's order.
fn acks_survive_master_death(name: &str, plan: KillPlan) {
    const QUEUES: u32 = 4;
    let seed = seed();
    eprintln!("{name}: RINGMQ_REPL_SEED={seed}");
    let mut rng = SeededRng(seed);
    let mut master = start_sized_node(plan.sizes, "SYNC_MASTER", "SYNC_FLUSH", None, "");
    let mut slave = start_sized_node(plan.sizes, "SLAVE", "SYNC_FLUSH", Some(&master.ports), "");
    master
        .broker
        .client()
        .create_topic(DURABLE_TOPIC, QUEUES)
        .unwrap();
    wait_topic(&slave.broker, DURABLE_TOPIC);
    wait_caught_up(&master.broker);

    // body → (queue, offset) for every OK.
    let mut acked: HashMap<Vec<u8>, (u32, u64)> = HashMap::new();
    let (mut other, mut unknown) = (0usize, 0usize);
    let started = Instant::now();
    for round in 0..plan.rounds {
        let kill_slave = round % 2 == 1;
        let kill_after = plan.kill_after_min + rng.below(plan.kill_after_spread);
        let (tx, rx) = mpsc::channel();
        let producers = spawn_round_producers(&master.broker.addr, round, QUEUES, &tx);
        drop(tx);
        let load_began = Instant::now();
        for answered in 0..kill_after {
            if let Err(e) = rx.recv_timeout(Duration::from_secs(30)) {
                panic!(
                    "round {round}: producers stopped answering after {answered} answers ({e}): \
                     master log:\n{}\nslave log:\n{}",
                    master.broker.log_tail(),
                    slave.broker.log_tail()
                );
            }
        }
        let load = load_began.elapsed();
        master.broker.kill();
        if kill_slave {
            slave.broker.kill();
            thread::scope(|s| {
                s.spawn(|| slave.broker.restart());
                master.broker.restart();
            });
        } else {
            master.broker.restart();
        }
        let mut recoveries = master.broker.recoveries();
        if kill_slave {
            recoveries.extend(slave.broker.recoveries());
        }
        let (mut sent, mut round_acked, mut round_other) = (0, 0, 0);
        for producer in producers {
            for (body, outcome) in producer.join().unwrap() {
                sent += 1;
                match outcome {
                    Ok((Status::Ok, r)) => {
                        round_acked += 1;
                        assert!(
                            acked.insert(body, (r.queue, r.base_offset)).is_none(),
                            "unique bodies"
                        );
                    }
                    Ok(_) => round_other += 1,
                    Err(_) => unknown += 1,
                }
            }
        }
        other += round_other;
        let caught_up = wait_caught_up(&master.broker);
        wait_slave_confirmed(&slave.broker, &caught_up);
        let on_master = check_against(&read_all(&master.broker, DURABLE_TOPIC, QUEUES), &acked);
        let on_slave = check_against(&read_all(&slave.broker, DURABLE_TOPIC, QUEUES), &acked);
        eprintln!(
            "{name}: round {round}: killed the master{} after {kill_after} answers ({load:?}): \
             sent={sent} acked={round_acked} other_status={round_other}; all acked so far {}: \
             master lost={} dup={} reordered={}, slave lost={} dup={} reordered={}; \
             recovery (master, then slave if killed): {}",
            if kill_slave { " and the slave" } else { "" },
            acked.len(),
            on_master.0.len(),
            on_master.1,
            on_master.2,
            on_slave.0.len(),
            on_slave.1,
            on_slave.2,
            recoveries
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        );
        for (broker, (lost, dup, reordered)) in [("master", on_master), ("slave", on_slave)] {
            assert!(
                lost.is_empty(),
                "round {round}: acknowledged but missing or moved on the {broker} \
                 (seed {seed}): {lost:?}"
            );
            assert_eq!(
                dup, 0,
                "round {round}: duplicates on the {broker} (seed {seed})"
            );
            assert_eq!(
                reordered, 0,
                "round {round}: reordered on the {broker} (seed {seed})"
            );
        }
    }
    eprintln!(
        "{name}: {} rounds: {} acked OK, {other} other statuses, {unknown} unanswered, \
         lost=0 dup=0 on master and slave, in {:?}",
        plan.rounds,
        acked.len(),
        started.elapsed()
    );
    assert!(acked.len() as u64 >= plan.kill_after_min * plan.rounds as u64 / 2);
}

#[test]
fn sync_master_acks_survive_master_death() {
    acks_survive_master_death(
        "sync_master small",
        KillPlan {
            sizes: Sizes::Small,
            rounds: 5,
            kill_after_min: 20,
            kill_after_spread: 150,
        },
    );
}

#[test]
fn sync_master_acks_survive_master_death_at_the_default_configuration() {
    acks_survive_master_death(
        "sync_master default",
        KillPlan {
            sizes: Sizes::Default,
            rounds: 4,
            kill_after_min: 1000,
            kill_after_spread: 2500,
        },
    );
}

/// Sends SIGCONT when dropped, so a failing test never leaves a stopped broker.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// A SYNC_MASTER that waits `replica_timeout_ms` for its slave, and a slave with a long link
/// timeout: once stopped, it stays connected (and in sync by gap), so producers wait for it
/// rather than being told at once that no slave is available.
fn sync_master_with_patient_slave(replica_timeout_ms: u64) -> (Node, Node) {
    let master = start_node(
        "SYNC_MASTER",
        "ASYNC_FLUSH",
        None,
        &format!("sync_replica_timeout_ms = {replica_timeout_ms}\n"),
    );
    let slave = start_node(
        "SLAVE",
        "ASYNC_FLUSH",
        Some(&master.ports),
        "ha_link_timeout_ms = 60000\n",
    );
    (master, slave)
}

#[test]
fn stalled_slave_gives_flush_slave_timeout_then_ok() {
    let (master, slave) = sync_master_with_patient_slave(1000);
    let mut client = master.broker.client();
    client.create_topic("stall", 2).unwrap();
    wait_topic(&slave.broker, "stall");
    assert_eq!(
        client
            .produce("stall", Some(0), &[message(b"before")])
            .unwrap()
            .status,
        Status::Ok
    );
    let _resume = Resume(slave.broker.pid().unwrap() as i32);
    slave.broker.pause();
    let producers: Vec<_> = (0..3u32)
        .map(|p| {
            let addr = master.broker.addr.clone();
            thread::spawn(move || {
                let mut client = Client::connect(&addr).unwrap();
                (0..2)
                    .map(|i| {
                        let started = Instant::now();
                        let body = format!("stalled-{p}-{i}");
                        let r = client.produce("stall", Some(p % 2), &[message(body.as_bytes())]);
                        (r.map(|r| r.status), started.elapsed())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for producer in producers {
        for (status, took) in producer.join().unwrap() {
            assert_eq!(status.unwrap(), Status::FlushSlaveTimeout);
            assert!(
                took >= Duration::from_millis(900),
                "answered after {took:?}"
            );
            assert!(
                took < Duration::from_millis(3000),
                "answered after {took:?}"
            );
            slowest = slowest.max(took);
        }
    }
    println!("stalled slave: 6 produces got FLUSH_SLAVE_TIMEOUT, slowest {slowest:?}");
    slave.broker.signal(libc::SIGCONT);
    let took = wait_until(Duration::from_secs(20), "OK after SIGCONT", || {
        let started = Instant::now();
        let r = client
            .produce("stall", Some(0), &[message(b"after")])
            .ok()?;
        (r.status == Status::Ok).then(|| started.elapsed())
    });
    println!("after SIGCONT: OK in {took:?}");
}

#[test]
fn sync_master_without_slave_says_so_at_once_and_stores() {
    let master = start_node("SYNC_MASTER", "SYNC_FLUSH", None, "");
    let mut client = master.broker.client();
    client.create_topic("alone", 1).unwrap();
    let started = Instant::now();
    let r = client
        .produce("alone", Some(0), &[message(b"lonely")])
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, Status::SlaveNotAvailable);
    assert!(took < Duration::from_millis(500), "took {took:?}");
    println!("no slave: SLAVE_NOT_AVAILABLE in {took:?}");
    let slave = start_node("SLAVE", "SYNC_FLUSH", Some(&master.ports), "");
    wait_topic(&slave.broker, "alone");
    let caught_up = wait_caught_up(&master.broker);
    wait_slave_confirmed(&slave.broker, &caught_up);
    for broker in [&master.broker, &slave.broker] {
        let all = read_all(broker, "alone", 1);
        assert_eq!(all[&0], vec![(r.response.base_offset, b"lonely".to_vec())]);
    }
}

/// Files under `shard-<n>/commitlog` of a store, by relative path.
fn commitlog_files(store: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for shard in std::fs::read_dir(store).unwrap() {
        let shard = shard.unwrap().path();
        let log = shard.join("commitlog");
        if !log.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&log).unwrap() {
            let file = file.unwrap().path();
            let name = format!(
                "{}/commitlog/{}",
                shard.file_name().unwrap().to_string_lossy(),
                file.file_name().unwrap().to_string_lossy()
            );
            files.insert(name, std::fs::read(&file).unwrap());
        }
    }
    files
}

/// Produces `count` 1 KiB messages (batches of 32) spread over `queues`; returns bodies per
/// queue.
fn produce_bulk(broker: &Broker, topic: &str, queues: u32, tag: &str, count: usize) -> usize {
    let mut client = broker.client();
    let mut sent = 0;
    while sent < count {
        let bodies: Vec<Vec<u8>> = (sent..sent + 32)
            .map(|i| {
                let mut b = format!("{tag}-{i:08}-").into_bytes();
                b.resize(1024, b'x');
                b
            })
            .collect();
        let batch: Vec<MessageRef<'_>> = bodies.iter().map(|b| message(b)).collect();
        let queue = (sent / 32) as u32 % queues;
        let r = client.produce(topic, Some(queue), &batch).unwrap();
        assert_eq!(r.status, Status::Ok);
        sent += 32;
    }
    sent
}

#[test]
fn fresh_slave_catches_up_byte_for_byte() {
    let mut master = start_node("ASYNC_MASTER", "ASYNC_FLUSH", None, "");
    master.broker.client().create_topic("bulk", 4).unwrap();
    let sent = produce_bulk(&master.broker, "bulk", 4, "bulk", 4096);
    let mut slave = start_node("SLAVE", "ASYNC_FLUSH", Some(&master.ports), "");
    wait_topic(&slave.broker, "bulk");
    let caught_up = wait_caught_up(&master.broker);
    wait_slave_confirmed(&slave.broker, &caught_up);
    let total: u64 = caught_up.shards.iter().map(|s| s.max_offset).sum();
    assert!(total > 4 << 20, "{total} bytes of log");
    let from_master = read_all(&master.broker, "bulk", 4);
    let from_slave = read_all(&slave.broker, "bulk", 4);
    assert_eq!(from_master.values().map(Vec::len).sum::<usize>(), sent);
    assert!(from_slave == from_master, "the slave serves every message");
    assert!(master.broker.stop() && slave.broker.stop());
    let m = commitlog_files(&master.broker.store);
    let s = commitlog_files(&slave.broker.store);
    let mut compared = 0;
    for (name, bytes) in &m {
        match s.get(name) {
            Some(other) => {
                assert!(other == bytes, "{name} differs between master and slave");
                compared += 1;
            }
            // A segment made ahead of need on one side only must be empty.
            None => assert!(bytes.iter().all(|b| *b == 0), "{name} missing on the slave"),
        }
    }
    for (name, bytes) in &s {
        if !m.contains_key(name) {
            assert!(bytes.iter().all(|b| *b == 0), "{name} only on the slave");
        }
    }
    assert!(compared >= 4, "several segments per shard: {:?}", m.keys());
    println!(
        "fresh slave: {sent} messages, {total} bytes of log, {compared} identical segment files"
    );
}

/// `start_offset=N` of every "slave connected" line of a master's log.
fn connect_offsets(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("slave connected"))
        .filter_map(|l| {
            let at = l.find("start_offset=")? + "start_offset=".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn restarted_slave_resumes_from_its_own_end() {
    let master = start_node("ASYNC_MASTER", "ASYNC_FLUSH", None, "");
    master.broker.client().create_topic("resume", 2).unwrap();
    produce_bulk(&master.broker, "resume", 2, "one", 1024);
    let mut slave = start_node("SLAVE", "ASYNC_FLUSH", Some(&master.ports), "");
    wait_topic(&slave.broker, "resume");
    let first = wait_caught_up(&master.broker);
    assert!(slave.broker.stop(), "clean stop");
    produce_bulk(&master.broker, "resume", 2, "two", 1024);
    let before = connect_offsets(&master.broker.log()).len();
    slave.broker.restart();
    let second = wait_caught_up(&master.broker);
    wait_slave_confirmed(&slave.broker, &second);
    let offsets = connect_offsets(&master.broker.log())[before..].to_vec();
    if offsets.len() != 2 {
        let interesting = |log: String| -> String {
            log.lines()
                .filter(|l| l.contains("slave") || l.contains("link") || l.contains("replicat"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        println!(
            "MASTER:\n{}\nSLAVE:\n{}",
            interesting(master.broker.log()),
            interesting(slave.broker.log())
        );
    }
    let mut expected: Vec<u64> = first.shards.iter().map(|s| s.max_offset).collect();
    expected.sort_unstable();
    let mut resumed = offsets.clone();
    resumed.sort_unstable();
    assert_eq!(
        resumed, expected,
        "each shard resumed at the slave's own end, not at 0"
    );
    assert!(resumed.iter().all(|o| *o > 0));
    assert!(read_all(&slave.broker, "resume", 2) == read_all(&master.broker, "resume", 2));
    println!(
        "restarted slave: resumed at {offsets:?}, master now at {:?}",
        {
            second
                .shards
                .iter()
                .map(|s| s.max_offset)
                .collect::<Vec<_>>()
        }
    );
}

#[test]
fn fake_ack_beyond_the_master_is_refused() {
    use ringmq::replication::protocol::{Hello, LinkSecurity, Welcome, NONCE_BYTES};
    let master = start_node(
        "SYNC_MASTER",
        "ASYNC_FLUSH",
        None,
        "sync_replica_timeout_ms = 1000\nha_max_gap_bytes = 1099511627776\n",
    );
    let mut client = master.broker.client();
    let topic = client.create_topic("fake", 4).unwrap();
    let queue = topic
        .queue_shards
        .iter()
        .position(|s| *s == 0)
        .expect("a queue on shard 0") as u32;

    let mut link = std::net::TcpStream::connect(&master.broker.ha).unwrap();
    link.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut hello = Vec::new();
    Hello {
        version: ringmq::replication::protocol::HA_VERSION,
        shard: 0,
        shard_count: 2,
        segment_size_bytes: 1 << 20,
        log_id: [0; 16],
        last_epoch: 0,
        max_offset: 0,
        broker_name: "broker-a".into(),
        security: LinkSecurity::Off,
        nonce: [0; NONCE_BYTES],
        controller_broker_id: 0,
    }
    .encode(&mut hello);
    link.write_all(&hello).unwrap();
    let mut len = [0u8; 4];
    link.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    link.read_exact(&mut body).unwrap();
    Welcome::decode(&body).expect("the master accepts the fake slave");
    wait_until(Duration::from_secs(10), "the fake link registered", || {
        status(&master.broker)?.shards[0]
            .slaves
            .len()
            .eq(&1)
            .then_some(())
    });

    let addr = master.broker.addr.clone();
    let producer = thread::spawn(move || {
        let mut client = Client::connect(&addr).unwrap();
        let started = Instant::now();
        let r = client.produce("fake", Some(queue), &[message(b"must not be ok")]);
        (r.unwrap().status, started.elapsed())
    });
    wait_until(Duration::from_secs(10), "the record appended", || {
        (status(&master.broker)?.shards[0].max_offset > 0).then_some(())
    });
    link.write_all(&(1u64 << 40).to_le_bytes()).unwrap();
    // The master closes the link: reading ends with EOF (after whatever it shipped).
    let mut sink = Vec::new();
    let read = link.read_to_end(&mut sink);
    assert!(read.is_ok(), "the master closed the link: {read:?}");
    let (status, took) = producer.join().unwrap();
    assert_eq!(
        status,
        Status::FlushSlaveTimeout,
        "a fake ack released a producer"
    );
    let log = master.broker.log();
    assert!(
        log.contains("a slave acknowledged an offset beyond this master's log"),
        "the refusal is logged"
    );
    println!("fake ack: link closed, producer got {status:?} after {took:?}");
}

#[test]
fn consumer_fails_over_to_the_slave_and_back() {
    const TOPIC: &str = "orders";
    const QUEUES: u32 = 2;
    const COUNT: usize = 300;
    let mut master = start_node("SYNC_MASTER", "SYNC_FLUSH", None, "");
    let slave = start_node("SLAVE", "SYNC_FLUSH", Some(&master.ports), "");
    master.broker.client().create_topic(TOPIC, QUEUES).unwrap();
    wait_topic(&slave.broker, TOPIC);
    wait_caught_up(&master.broker);
    let mut producer = master.broker.client();
    let mut produced = HashSet::new();
    for i in 0..COUNT {
        let body = format!("m{i:05}");
        let r = producer
            .produce(TOPIC, Some(i as u32 % QUEUES), &[message(body.as_bytes())])
            .unwrap();
        assert_eq!(r.status, Status::Ok);
        produced.insert(body.into_bytes());
    }
    let caught_up = wait_caught_up(&master.broker);
    wait_slave_confirmed(&slave.broker, &caught_up);

    let brokers = vec![master.ports.listen_addr(), slave.ports.listen_addr()];
    let mut consumer = FailoverClient::connect(&brokers, ClientOptions::default()).unwrap();
    consumer.set_retry_primary_every(Duration::from_millis(200));
    let mut positions: Vec<u64> = (0..QUEUES)
        .map(|q| {
            consumer
                .call(&GroupFetch {
                    group: "g".into(),
                    topic: TOPIC.into(),
                    queue: q,
                })
                .map(|o| o.offset)
                .unwrap()
                .unwrap_or(0)
        })
        .collect();
    let mut read = Consumed::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumed_len(&positions) < 100 {
        read.step(&mut consumer, &mut positions, TOPIC, QUEUES);
    }
    assert_eq!(consumer.active(), 0, "read from the master first");
    master.broker.kill();
    while consumed_len(&positions) < 200 {
        read.step(&mut consumer, &mut positions, TOPIC, QUEUES);
        assert!(Instant::now() < deadline, "stuck on the slave");
    }
    assert_eq!(consumer.active(), 1, "the consumer moved to the slave");
    let on_slave = read.by_broker[1];
    master.broker.restart();
    // Keep consuming (long polls once drained) until the client is back on the master.
    while consumer.active() != 0 {
        read.step(&mut consumer, &mut positions, TOPIC, QUEUES);
        assert!(Instant::now() < deadline, "never went back to the master");
    }
    let back_at = read.consumed.len();
    // More messages, produced once the slave follows the restarted master again, and the
    // rest of the topic: all read from the master.
    wait_caught_up(&master.broker);
    let mut producer = master.broker.client();
    for i in COUNT..COUNT + 50 {
        let body = format!("m{i:05}");
        let r = producer
            .produce(TOPIC, Some(i as u32 % QUEUES), &[message(body.as_bytes())])
            .unwrap();
        assert_eq!(r.status, Status::Ok);
        produced.insert(body.into_bytes());
    }
    while consumed_len(&positions) < produced.len() as u64 {
        read.step(&mut consumer, &mut positions, TOPIC, QUEUES);
        assert!(
            Instant::now() < deadline,
            "stuck after the master came back"
        );
    }
    assert_eq!(consumer.active(), 0, "finished on the master");
    assert!(read.consumed.len() - back_at >= 50);
    let unique: HashSet<_> = read.consumed.iter().cloned().collect();
    assert_eq!(read.consumed.len(), produced.len(), "nothing read twice");
    assert_eq!(unique, produced, "everything read");
    let committed: Vec<_> = (0..QUEUES)
        .map(|q| {
            consumer
                .call(&GroupFetch {
                    group: "g".into(),
                    topic: TOPIC.into(),
                    queue: q,
                })
                .map(|o| o.offset)
                .unwrap()
                .unwrap()
        })
        .collect();
    assert_eq!(committed, positions);
    println!(
        "consumer failover: {} consumed once each, {} from the master, {} from the slave ({on_slave} before the master returned), {} switches",
        read.consumed.len(),
        read.by_broker[0],
        read.by_broker[1],
        consumer.switches()
    );

    // The CLI with the same list reads everything from the slave while the master is down.
    let caught_up = wait_caught_up(&master.broker);
    wait_slave_confirmed(&slave.broker, &caught_up);
    master.broker.kill();
    let list = format!("{},{}", brokers[0], brokers[1]);
    let out = common::run_binary(
        &[
            "consume",
            TOPIC,
            "--broker",
            &list,
            "--format",
            "json",
            "--max-wait-ms",
            "200",
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(
        lines,
        produced.len(),
        "ringmq consume --broker master,slave"
    );
    println!("ringmq consume --broker {list} with the master down: {lines} messages");
}

#[derive(Default)]
struct Consumed {
    consumed: Vec<Vec<u8>>,
    by_broker: [usize; 2],
}

impl Consumed {
    /// One batch of at most 10 from each queue, each committed.
    fn step(
        &mut self,
        consumer: &mut FailoverClient,
        positions: &mut [u64],
        topic: &str,
        queues: u32,
    ) {
        for q in 0..queues {
            let at = q as usize;
            let r = match consumer.pull(topic, q, positions[at], 10, 1 << 20, 100) {
                Ok(r) => r,
                Err(e) => panic!("pull at {} of queue {q}: {e}", positions[at]),
            };
            for m in &r.messages {
                assert_eq!(m.queue_offset, positions[at], "no skip, no repeat");
                positions[at] += 1;
                self.consumed.push(m.body.clone());
                self.by_broker[consumer.active()] += 1;
            }
            consumer
                .call(&GroupCommit {
                    group: "g".into(),
                    topic: topic.into(),
                    queue: q,
                    offset: positions[at],
                })
                .unwrap();
        }
    }
}

fn consumed_len(positions: &[u64]) -> u64 {
    positions.iter().sum()
}

#[test]
fn promoted_slave_and_divergent_old_master() {
    const TOPIC: &str = "epochs";
    let mut old = start_node("ASYNC_MASTER", "SYNC_FLUSH", None, "");
    let mut new = start_node("SLAVE", "SYNC_FLUSH", Some(&old.ports), "");
    old.broker.client().create_topic(TOPIC, 2).unwrap();
    wait_topic(&new.broker, TOPIC);
    let mut client = old.broker.client();
    for i in 0..50u32 {
        let body = format!("common-{i}");
        let r = client
            .produce(TOPIC, Some(i % 2), &[message(body.as_bytes())])
            .unwrap();
        assert_eq!(r.status, Status::Ok);
    }
    wait_caught_up(&old.broker);
    assert!(new.broker.stop());
    for i in 0..30u32 {
        let body = format!("divergent-{i}");
        client
            .produce(TOPIC, Some(i % 2), &[message(body.as_bytes())])
            .unwrap();
    }
    drop(client);
    let old_ends: Vec<u64> = status(&old.broker)
        .unwrap()
        .shards
        .iter()
        .map(|s| s.max_offset)
        .collect();
    old.broker.kill();

    new.broker.restart();
    let promoted = new
        .broker
        .client()
        .call(&ClusterPromote {
            role: "ASYNC_MASTER".into(),
        })
        .unwrap();
    assert!(promoted
        .shards
        .iter()
        .all(|s| s.role == "ASYNC_MASTER" && s.epoch == FIRST_TERM));
    let mut client = new.broker.client();
    for i in 0..20u32 {
        let body = format!("new-{i}");
        let r = client
            .produce(TOPIC, Some(i % 2), &[message(body.as_bytes())])
            .unwrap();
        assert_eq!(r.status, Status::Ok);
    }
    old.broker.set_arg("--role", "SLAVE");
    old.broker.set_arg("--master", &new.ports.ha_addr());
    old.broker.restart();
    let caught_up = wait_caught_up(&new.broker);
    wait_slave_confirmed(&old.broker, &caught_up);
    let old_status = status(&old.broker).unwrap();
    let mut cut = 0;
    for (shard, promoted_at) in old_status.shards.iter().zip(&promoted.shards) {
        assert_eq!(shard.role, "SLAVE");
        assert_eq!(shard.epoch, FIRST_TERM);
        if old_ends[shard.shard] > promoted_at.max_offset {
            assert_eq!(
                shard.divergence_points,
                vec![promoted_at.max_offset],
                "shard {} cut its log where the new epoch starts",
                shard.shard
            );
            cut += 1;
        }
    }
    assert!(cut > 0, "some shard held divergent records");
    assert!(old.broker.log().contains("diverged"), "the cut is logged");
    let on_old = read_all(&old.broker, TOPIC, 2);
    let on_new = read_all(&new.broker, TOPIC, 2);
    assert!(
        on_old == on_new,
        "the old master's log now equals the new master's"
    );
    let bodies: Vec<String> = on_old
        .values()
        .flatten()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert_eq!(bodies.len(), 70);
    assert!(bodies.iter().all(|b| !b.starts_with("divergent")));
    assert!(old.broker.stop() && new.broker.stop());
    let m = commitlog_files(&new.broker.store);
    let s = commitlog_files(&old.broker.store);
    for (name, bytes) in &m {
        if let Some(other) = s.get(name) {
            assert!(other == bytes, "{name} differs after the cut");
        }
    }
    println!(
        "promotion: divergence points {:?}, {} messages on both",
        old_status
            .shards
            .iter()
            .map(|s| s.divergence_points.clone())
            .collect::<Vec<_>>(),
        bodies.len()
    );
}

/// A SYNC_MASTER restarted without its slave still shows consumers what its slave had
/// acknowledged before the restart (the acknowledged offset is persisted), instead of nothing.
#[test]
fn restarted_sync_master_keeps_showing_what_was_replicated() {
    let mut master = start_node("SYNC_MASTER", "SYNC_FLUSH", None, "");
    let mut slave = start_node("SLAVE", "SYNC_FLUSH", Some(&master.ports), "");
    let mut client = master.broker.client();
    client.create_topic("kept", 1).unwrap();
    wait_caught_up(&master.broker);
    let mut acked = Vec::new();
    for i in 0..20u32 {
        let body = format!("kept-{i}");
        let r = client
            .produce("kept", Some(0), &[message(body.as_bytes())])
            .unwrap();
        assert_eq!(r.status, Status::Ok, "message {i}");
        acked.push((r.response.base_offset, body.into_bytes()));
    }
    wait_caught_up(&master.broker);
    let gauges = client.call(&StatsRequest {}).unwrap().gauges;
    assert_eq!(
        gauges["replication_slaves"], 2,
        "one slave link per shard: {gauges:?}"
    );
    assert_eq!(gauges["replication_lag_bytes"], 0, "{gauges:?}");
    assert!(slave.broker.stop(), "the slave stops cleanly");
    assert!(master.broker.stop(), "the master stops cleanly");
    master.broker.restart();
    let visible = read_all(&master.broker, "kept", 1);
    assert_eq!(
        visible[&0], acked,
        "acknowledged messages visible after a restart"
    );
    drop(slave);
}

/// Topics and group offsets reach a slave as soon as they change on the master, not only at
/// the periodic copy (set to a minute here, longer than the test waits).
#[test]
fn metadata_changes_reach_the_slave_at_once() {
    let slow_periodic = "metadata_sync_interval_ms = 60000\n";
    let master = start_node("ASYNC_MASTER", "SYNC_FLUSH", None, slow_periodic);
    let slave = start_node("SLAVE", "SYNC_FLUSH", Some(&master.ports), slow_periodic);
    wait_until(CATCH_UP, "the slave links", || {
        let s = status(&slave.broker)?;
        s.shards
            .iter()
            .all(|sh| sh.master_link.as_ref().is_some_and(|l| l.streaming))
            .then_some(())
    });
    let mut client = master.broker.client();
    client.create_topic("late", 2).unwrap();
    wait_topic(&slave.broker, "late");
    client
        .call(&GroupCommit {
            group: "readers".into(),
            topic: "late".into(),
            queue: 1,
            offset: 7,
        })
        .unwrap();
    wait_until(CATCH_UP, "the group offset on the slave", || {
        let mut c = Client::connect(&slave.broker.addr).ok()?;
        (c.call(&GroupFetch {
            group: "readers".into(),
            topic: "late".into(),
            queue: 1,
        })
        .map(|o| o.offset)
        .ok()?
            == Some(7))
        .then_some(())
    });
}

/// A master of this version refuses a slave of another with a reason naming both versions,
/// in the layout every version decodes (see `replication::protocol`).
#[test]
fn a_slave_of_another_protocol_version_is_refused_naming_both_versions() {
    use ringmq::replication::protocol::{
        Hello, LinkSecurity, Welcome, HA_VERSION, MIN_HA_VERSION, NONCE_BYTES,
    };
    use ringmq::replication::ReplicationError;
    let master = start_node("ASYNC_MASTER", "SYNC_FLUSH", None, "");
    let mut link = std::net::TcpStream::connect(&master.broker.ha).unwrap();
    link.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut hello = Vec::new();
    Hello {
        version: ringmq::replication::protocol::HA_VERSION,
        shard: 0,
        shard_count: 2,
        segment_size_bytes: 1 << 20,
        log_id: [0; 16],
        last_epoch: 0,
        max_offset: 0,
        broker_name: "broker-a".into(),
        security: LinkSecurity::Off,
        nonce: [0; NONCE_BYTES],
        controller_broker_id: 0,
    }
    .encode(&mut hello);
    let current = hello.clone();
    // Length prefix, magic, then the version: one older than any this master takes.
    let old = MIN_HA_VERSION - 1;
    hello[8..10].copy_from_slice(&old.to_le_bytes());
    link.write_all(&hello).unwrap();
    let mut len = [0u8; 4];
    link.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    link.read_exact(&mut body).unwrap();
    let reason = match Welcome::decode(&body) {
        Err(ReplicationError::Refused(reason)) => reason,
        other => panic!("a slave of version {old} was not refused: {other:?}"),
    };
    assert!(
        reason.contains(&format!("version {old}"))
            && reason.contains(&format!("version {HA_VERSION}")),
        "the refusal does not name both versions: {reason}"
    );
    let mut rest = Vec::new();
    assert_eq!(
        link.read_to_end(&mut rest).map_err(|e| e.kind()),
        Ok(0),
        "the master closes the link after refusing"
    );
    // The same hello in this version is taken, and it is the only slave the master lists:
    // the refused one never became a link.
    let mut accepted = std::net::TcpStream::connect(&master.broker.ha).unwrap();
    accepted
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    accepted.write_all(&current).unwrap();
    accepted.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    accepted.read_exact(&mut body).unwrap();
    Welcome::decode(&body).expect("a slave of this version is welcomed");
    let peer = accepted.local_addr().unwrap().to_string();
    wait_until(CATCH_UP, "the accepted slave listed alone", || {
        let slaves = &status(&master.broker)?.shards[0].slaves;
        (slaves.len() == 1 && slaves[0].peer == peer).then_some(())
    });
}

/// A master impersonated by the test on an HA port, with no client port anywhere: what a
/// slave learns about topics and group offsets can only come over the replication link.
struct FakeMaster {
    ports: PortBlock,
    listener: std::net::TcpListener,
}

impl FakeMaster {
    fn bind() -> FakeMaster {
        let ports = PortBlock::allocate();
        let listener = std::net::TcpListener::bind(ports.ha_addr()).unwrap();
        FakeMaster { ports, listener }
    }

    /// Accepts the next slave link and reads its hello.
    fn accept(&self) -> (std::net::TcpStream, ringmq::replication::protocol::Hello) {
        use ringmq::replication::protocol::Hello;
        let (mut link, _) = self.listener.accept().unwrap();
        link.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut len = [0u8; 4];
        link.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
        link.read_exact(&mut body).unwrap();
        (link, Hello::decode(&body).expect("a hello of this version"))
    }
}

/// Topics and group offsets reach a slave in metadata frames on the HA link: the test plays
/// the master on its HA port and has no client port, so a slave that dialled one for them
/// would never see them.
#[test]
fn metadata_arrives_on_the_replication_link_alone() {
    use ringmq::replication::protocol::{encode_heartbeat, MetadataFrame, Welcome};
    use ringmq::shard::groups::OffsetRow;
    use ringmq::shard::topics::TopicTable;
    let fake = FakeMaster::bind();
    let slave = start_node("SLAVE", "SYNC_FLUSH", Some(&fake.ports), "");
    let (table, _) = TopicTable::default()
        .with_topic("remote", 4, 2)
        .expect("a valid topic");
    let placement = table.topics["remote"].queue_shards.clone();
    let mut links = Vec::new();
    for _ in 0..2 {
        let (mut link, hello) = fake.accept();
        let mut answer = Vec::new();
        Welcome {
            version: ringmq::replication::protocol::HA_VERSION,
            log_id: [5; 16],
            epochs: vec![(1, 0)],
            truncate_to: u64::MAX,
        }
        .encode(&mut answer);
        link.write_all(&answer).unwrap();
        // As a master shard does: the table from shard 0, each shard its own queues' offsets.
        let shard = hello.shard;
        let group_offsets = (0..placement.len() as u32)
            .filter(|q| placement[*q as usize] == shard)
            .map(|queue| OffsetRow {
                group: "readers".into(),
                topic: "remote".into(),
                queue,
                offset: 100 + u64::from(queue),
            })
            .collect();
        let frame = MetadataFrame {
            version: 1,
            topics: (shard == 0).then(|| table.clone()),
            group_offsets,
            acls: ringmq::replication::protocol::AclTrailer::Absent,
            users: None,
        };
        link.write_all(&frame.encode()).unwrap();
        links.push((link, frame.encode()));
    }
    // Heartbeats keep both links inside the slave's link timeout while the test looks, and the
    // metadata goes again with each, as a master resends it every sync interval: a slave
    // shard drops rows of a topic its table does not hold yet, and the table travels on shard
    // 0's link, in no order with shard 1's.
    let beating = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let heart = {
        let beating = beating.clone();
        thread::spawn(move || {
            while beating.load(std::sync::atomic::Ordering::Relaxed) {
                for (link, frame) in &mut links {
                    let _ = link.write_all(&encode_heartbeat(0, 0));
                    let _ = link.write_all(frame);
                }
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    wait_topic(&slave.broker, "remote");
    let mut client = Client::connect(&slave.broker.addr).unwrap();
    let topic = client
        .call(&TopicListRequest {})
        .map(|l| l.topics)
        .unwrap()
        .into_iter()
        .find(|t| t.name == "remote")
        .unwrap();
    assert_eq!(topic.queue_shards, placement, "the master's placement");
    wait_until(CATCH_UP, "every group offset on the slave", || {
        let mut c = Client::connect(&slave.broker.addr).ok()?;
        (0..4u32)
            .all(|q| {
                c.call(&GroupFetch {
                    group: "readers".into(),
                    topic: "remote".into(),
                    queue: q,
                })
                .map(|o| o.offset)
                .ok()
                    == Some(Some(100 + u64::from(q)))
            })
            .then_some(())
    });
    beating.store(false, std::sync::atomic::Ordering::Relaxed);
    heart.join().unwrap();
}

/// A slave refuses a master that accepts it in another protocol version, and says which
/// versions met.
#[test]
fn a_slave_names_both_versions_when_its_master_speaks_another() {
    use ringmq::replication::protocol::{Welcome, HA_VERSION};
    let fake = FakeMaster::bind();
    let slave = start_node("SLAVE", "SYNC_FLUSH", Some(&fake.ports), "");
    let (mut link, _) = fake.accept();
    let mut answer = Vec::new();
    Welcome {
        version: ringmq::replication::protocol::HA_VERSION,
        log_id: [5; 16],
        epochs: vec![(1, 0)],
        truncate_to: u64::MAX,
    }
    .encode(&mut answer);
    // Length prefix, refused byte, empty reason, then the version.
    let newer = HA_VERSION + 1;
    answer[7..9].copy_from_slice(&newer.to_le_bytes());
    link.write_all(&answer).unwrap();
    let expected = format!(
        "the master speaks replication protocol version {newer}, this slave version {HA_VERSION}"
    );
    wait_until(CATCH_UP, "the slave to report the version mismatch", || {
        slave.broker.log().contains(&expected).then_some(())
    });
    let mut rest = Vec::new();
    assert_eq!(
        link.read_to_end(&mut rest).map_err(|e| e.kind()),
        Ok(0),
        "the slave closes the link"
    );
}

/// SIGTERM on a SYNC_MASTER whose producers wait for a stalled slave: the stop answers them
/// (FLUSH_SLAVE_TIMEOUT: stored, not replicated in time) before the broker exits, rather than
/// dropping their connections with the answers unsent.
#[test]
fn sigterm_answers_producers_waiting_for_a_stalled_slave() {
    let (mut master, slave) = sync_master_with_patient_slave(2000);
    let mut client = master.broker.client();
    client.create_topic("term", 1).unwrap();
    wait_topic(&slave.broker, "term");
    let _resume = Resume(slave.broker.pid().unwrap() as i32);
    slave.broker.pause();
    let producers: Vec<_> = (0..3)
        .map(|p| {
            let addr = master.broker.addr.clone();
            thread::spawn(move || {
                let mut client = Client::connect(&addr).unwrap();
                let body = format!("waiting-{p}");
                client
                    .produce("term", Some(0), &[message(body.as_bytes())])
                    .map(|r| r.status)
            })
        })
        .collect();
    wait_until(Duration::from_secs(20), "three producers waiting", || {
        let stats = client.call(&StatsRequest {}).ok()?;
        (stats.gauges["pending_completions"] >= 3).then_some(())
    });
    master.broker.signal(libc::SIGTERM);
    for producer in producers {
        let status = producer.join().unwrap();
        assert_eq!(
            status.expect("answered before the broker exited"),
            Status::FlushSlaveTimeout
        );
    }
    assert!(master.broker.stop(), "clean exit after SIGTERM");
}

/// Group commits in a tight loop (each one moves the master shard's metadata version) while a
/// SYNC_MASTER producer waits for its slave: the slave's log must keep up, so every produce is
/// answered OK well within the replica timeout. Offsets go on many groups so each metadata
/// frame is large, as it would be in a busy broker.
#[test]
fn offset_commits_in_a_loop_do_not_starve_log_shipping() {
    let commit = |group: &str, offset: u64| GroupCommit {
        group: group.into(),
        topic: "busy".into(),
        queue: 0,
        offset,
    };
    let master = start_node("SYNC_MASTER", "ASYNC_FLUSH", None, "");
    let slave = start_node("SLAVE", "ASYNC_FLUSH", Some(&master.ports), "");
    let mut client = master.broker.client();
    client.create_topic("busy", 2).unwrap();
    wait_topic(&slave.broker, "busy");
    for group in 0..500 {
        client.call(&commit(&format!("group-{group}"), 1)).unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let committers: Vec<_> = (0..3)
        .map(|c| {
            let addr = master.broker.addr.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                let mut client = Client::connect(&addr).unwrap();
                let mut commits = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let group = format!("group-{}", (commits * 3 + c) % 500);
                    client.call(&commit(&group, commits)).unwrap();
                    commits += 1;
                }
                commits
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    let producing = Instant::now();
    let mut produced = 0;
    while producing.elapsed() < Duration::from_secs(2) {
        let i = produced;
        produced += 1;
        let body = format!("while committing {i}");
        let started = Instant::now();
        let r = client
            .produce("busy", Some(0), &[message(body.as_bytes())])
            .unwrap();
        let took = started.elapsed();
        assert_eq!(r.status, Status::Ok, "produce {i} after {took:?}");
        slowest = slowest.max(took);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let commits: u64 = committers.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(commits > 0);
    assert!(
        slowest < Duration::from_millis(1500),
        "the slowest SYNC_MASTER produce took {slowest:?} with {commits} commits beside it"
    );
    println!("{commits} commits beside {produced} produces, slowest {slowest:?}");
    // Coalescing delays a change, never drops it: the last commit reaches the slave.
    client.call(&commit("group-0", 1_000_000)).unwrap();
    wait_until(CATCH_UP, "the last commit on the slave", || {
        let mut c = Client::connect(&slave.broker.addr).ok()?;
        let fetch = GroupFetch {
            group: "group-0".into(),
            topic: "busy".into(),
            queue: 0,
        };
        (c.call(&fetch).ok()?.offset == Some(1_000_000)).then_some(())
    });
}

/// Roles change at runtime, with no restart: a slave is promoted while its old master keeps
/// taking writes (a divergent tail), the old master is demoted to follow the new one and cuts
/// that tail, then the roles swap back (the demoted node promoted again, the other demoted to
/// follow it) and replication flows the other way.
#[test]
fn demote_then_promote_back_at_runtime() {
    const TOPIC: &str = "swap";
    let mut a = start_node("ASYNC_MASTER", "SYNC_FLUSH", None, "");
    let mut b = start_node("SLAVE", "SYNC_FLUSH", Some(&a.ports), "");
    a.broker.client().create_topic(TOPIC, 2).unwrap();
    wait_topic(&b.broker, TOPIC);
    let produce_all = |broker: &Broker, prefix: &str, count: u32| {
        let mut client = broker.client();
        for i in 0..count {
            let body = format!("{prefix}-{i}");
            let r = client
                .produce(TOPIC, Some(i % 2), &[message(body.as_bytes())])
                .unwrap();
            assert_eq!(r.status, Status::Ok, "{prefix} {i}");
        }
    };
    produce_all(&a.broker, "common", 40);
    wait_caught_up(&a.broker);

    let promoted = b
        .broker
        .client()
        .call(&ClusterPromote {
            role: "ASYNC_MASTER".to_string(),
        })
        .unwrap();
    assert!(promoted.shards.iter().all(|s| s.role == "ASYNC_MASTER"));
    produce_all(&a.broker, "divergent", 10);
    produce_all(&b.broker, "new", 10);

    let demoted = a
        .broker
        .client()
        .call(&ClusterDemote {
            master: b.ports.ha_addr(),
        })
        .unwrap();
    assert!(demoted
        .shards
        .iter()
        .all(|s| s.role == "SLAVE" && s.master_link.is_some()));
    let refused = a
        .broker
        .client()
        .produce(TOPIC, Some(0), &[message(b"refused")]);
    assert!(
        !matches!(&refused, Ok(r) if r.status == Status::Ok),
        "a demoted master refuses produce: {refused:?}"
    );
    let on_b = wait_caught_up(&b.broker);
    wait_slave_confirmed(&a.broker, &on_b);
    let a_status = status(&a.broker).unwrap();
    let cut: Vec<_> = a_status
        .shards
        .iter()
        .filter(|s| !s.divergence_points.is_empty())
        .collect();
    assert!(!cut.is_empty(), "the divergent tail was cut: {a_status:?}");
    for shard in &cut {
        assert_eq!(
            shard.divergence_points,
            vec![promoted.shards[shard.shard].max_offset],
            "shard {} cut its log where b's epoch starts",
            shard.shard
        );
    }
    assert!(read_all(&a.broker, TOPIC, 2) == read_all(&b.broker, TOPIC, 2));

    // And back: a is promoted again (a third epoch), b demoted to follow it.
    let repromoted = a
        .broker
        .client()
        .call(&ClusterPromote {
            role: "ASYNC_MASTER".to_string(),
        })
        .unwrap();
    assert!(repromoted
        .shards
        .iter()
        .all(|s| s.role == "ASYNC_MASTER" && s.epoch == 2 * FIRST_TERM));
    let redemoted = b
        .broker
        .client()
        .call(&ClusterDemote {
            master: a.ports.ha_addr(),
        })
        .unwrap();
    assert!(redemoted.shards.iter().all(|s| s.role == "SLAVE"));
    produce_all(&a.broker, "back", 10);
    let on_a = wait_caught_up(&a.broker);
    wait_slave_confirmed(&b.broker, &on_a);
    let on_a = read_all(&a.broker, TOPIC, 2);
    assert!(on_a == read_all(&b.broker, TOPIC, 2));
    let bodies: Vec<String> = on_a
        .values()
        .flatten()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert_eq!(bodies.len(), 60);
    assert!(bodies.iter().all(|b| !b.starts_with("divergent")));
    assert!(a.broker.stop() && b.broker.stop());
}

/// A failover with two slaves: the master dies, one slave is promoted, and the other is
/// re-pointed at runtime (`cluster demote --master` on a slave) to follow the new master. It
/// takes the new master's records from where it stood and shows the same log.
#[test]
fn a_second_slave_follows_the_new_master_after_a_failover() {
    const TOPIC: &str = "repoint";
    let mut a = start_node("ASYNC_MASTER", "SYNC_FLUSH", None, "");
    let mut b = start_node("SLAVE", "SYNC_FLUSH", Some(&a.ports), "");
    let mut c = start_node("SLAVE", "SYNC_FLUSH", Some(&a.ports), "");
    a.broker.client().create_topic(TOPIC, 2).unwrap();
    wait_topic(&b.broker, TOPIC);
    wait_topic(&c.broker, TOPIC);
    let produce_all = |broker: &Broker, prefix: &str| {
        let mut client = broker.client();
        for i in 0..20u32 {
            let body = format!("{prefix}-{i}");
            let r = client
                .produce(TOPIC, Some(i % 2), &[message(body.as_bytes())])
                .unwrap();
            assert_eq!(r.status, Status::Ok, "{prefix} {i}");
        }
    };
    produce_all(&a.broker, "old");
    wait_until(CATCH_UP, "both slaves to catch up", || {
        let s = status(&a.broker)?;
        s.shards
            .iter()
            .all(|sh| {
                sh.slaves.len() == 2 && sh.slaves.iter().all(|l| l.acked_offset == sh.max_offset)
            })
            .then_some(())
    });
    a.broker.kill();

    let promoted = b
        .broker
        .client()
        .call(&ClusterPromote {
            role: "ASYNC_MASTER".to_string(),
        })
        .unwrap();
    assert!(promoted.shards.iter().all(|s| s.role == "ASYNC_MASTER"));
    let repointed = c
        .broker
        .client()
        .call(&ClusterDemote {
            master: b.ports.ha_addr(),
        })
        .unwrap();
    assert!(
        repointed.shards.iter().all(|s| s.role == "SLAVE"
            && s.master_link.as_ref().map(|l| l.master.as_str()) == Some(&*b.ports.ha_addr())),
        "every shard of c follows b now: {repointed:?}"
    );
    produce_all(&b.broker, "new");
    let on_b = wait_caught_up(&b.broker);
    wait_slave_confirmed(&c.broker, &on_b);
    let on_b = read_all(&b.broker, TOPIC, 2);
    assert!(on_b == read_all(&c.broker, TOPIC, 2));
    assert_eq!(on_b.values().map(Vec::len).sum::<usize>(), 40);
    let c_status = status(&c.broker).unwrap();
    assert!(
        c_status
            .shards
            .iter()
            .all(|s| s.divergence_points.is_empty()),
        "c held nothing b lacks: nothing to cut"
    );
    assert!(b.broker.stop() && c.broker.stop());
}

/// A metadata frame the slave cannot decode or apply is skipped, not a reason to drop the
/// link: the log must keep replicating whatever the metadata does. The fake master sends
/// garbage and a table naming a shard the slave lacks before a good table, on the same link.
#[test]
fn a_bad_metadata_frame_is_skipped_and_the_link_stays() {
    use ringmq::replication::protocol::{encode_heartbeat, MetadataFrame, Welcome, KIND_METADATA};
    use ringmq::shard::topics::TopicTable;
    let fake = FakeMaster::bind();
    let slave = start_node("SLAVE", "SYNC_FLUSH", Some(&fake.ports), "");
    let (good, _) = TopicTable::default()
        .with_topic("kept", 2, 2)
        .expect("a valid topic");
    let mut beyond = good.clone();
    beyond.topics.get_mut("kept").unwrap().queue_shards = vec![0, 7];
    let mut links = Vec::new();
    for _ in 0..2 {
        let (mut link, hello) = fake.accept();
        let mut answer = Vec::new();
        Welcome {
            version: ringmq::replication::protocol::HA_VERSION,
            log_id: [5; 16],
            epochs: vec![(1, 0)],
            truncate_to: u64::MAX,
        }
        .encode(&mut answer);
        link.write_all(&answer).unwrap();
        if hello.shard == 0 {
            // A body that is no metadata frame, then one that decodes but cannot be applied.
            link.write_all(&[KIND_METADATA, 3, 0, 0, 0, 1, 2, 3])
                .unwrap();
            let frame = MetadataFrame {
                version: 1,
                topics: Some(beyond.clone()),
                group_offsets: Vec::new(),
                acls: ringmq::replication::protocol::AclTrailer::Absent,
                users: None,
            };
            link.write_all(&frame.encode()).unwrap();
            let frame = MetadataFrame {
                version: 2,
                topics: Some(good.clone()),
                group_offsets: Vec::new(),
                acls: ringmq::replication::protocol::AclTrailer::Absent,
                users: None,
            };
            link.write_all(&frame.encode()).unwrap();
        }
        links.push(link);
    }
    let beating = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let heart = {
        let beating = beating.clone();
        thread::spawn(move || {
            while beating.load(std::sync::atomic::Ordering::Relaxed) {
                for link in &mut links {
                    let _ = link.write_all(&encode_heartbeat(0, 0));
                }
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    wait_topic(&slave.broker, "kept");
    let log = slave.broker.log();
    assert_eq!(
        log.matches("skipped a metadata frame").count(),
        2,
        "both bad frames are logged as skipped"
    );
    fake.listener.set_nonblocking(true).unwrap();
    assert!(
        matches!(fake.listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the slave reconnected: a bad metadata frame dropped its link"
    );
    let stats = Client::connect(&slave.broker.addr)
        .unwrap()
        .call(&StatsRequest {})
        .unwrap();
    assert_eq!(
        stats.counters["replication_metadata_errors_total"], 2,
        "{:?}",
        stats.counters
    );
    beating.store(false, std::sync::atomic::Ordering::Relaxed);
    heart.join().unwrap();
}

fn retention_of(broker: &Broker) -> ringmq::protocol::admin::Retention {
    broker
        .client()
        .call(&ringmq::protocol::message::RetentionStatusRequest {})
        .expect("retention status")
}

/// A slave runs the same cleaning stage on its own copy: its deletions leave the master's
/// log alone and it keeps following; a fresh slave that would need what the master deleted
/// is refused with the master's earliest retained offset.
#[test]
fn slaves_apply_retention_on_their_own_copy_and_keep_following() {
    let config = retention_on_request();
    let master = start_node("ASYNC_MASTER", "SYNC_FLUSH", None, &config);
    let slave = start_node("SLAVE", "SYNC_FLUSH", Some(&master.ports), &config);
    master.broker.client().create_topic("kept", 4).unwrap();
    wait_topic(&slave.broker, "kept");
    produce_bulk(&master.broker, "kept", 4, "first", 8192);
    let caught_up = wait_caught_up(&master.broker);
    wait_slave_confirmed(&slave.broker, &caught_up);

    let out = slave.broker.cli(&["admin", "delete-expired"], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let on_slave = retention_of(&slave.broker);
    for shard in &on_slave.shards {
        let current = shard.max_offset / (1 << 20) * (1 << 20);
        assert_eq!(shard.log_head, current, "slave shard {}", shard.shard);
        assert!(shard.log_head > 0, "several segments per shard");
    }
    assert!(
        retention_of(&master.broker)
            .shards
            .iter()
            .all(|s| s.log_head == 0),
        "the slave's deletions are its own"
    );

    // The master deletes too; the slave keeps following from its own end.
    let out = master.broker.cli(&["admin", "delete-expired"], b"");
    assert!(out.status.success());
    let master_heads: Vec<u64> = retention_of(&master.broker)
        .shards
        .iter()
        .map(|s| s.log_head)
        .collect();
    assert!(master_heads.iter().all(|h| *h > 0), "{master_heads:?}");
    produce_bulk(&master.broker, "kept", 4, "second", 2048);
    let caught_up = wait_caught_up(&master.broker);
    wait_slave_confirmed(&slave.broker, &caught_up);

    // A fresh slave would need the log from 0, which the master deleted: it starts over at
    // the master's earliest retained offset (syncFromLastFile) and follows from there, its
    // queues starting where the master's do.
    let fresh = start_node("SLAVE", "SYNC_FLUSH", Some(&master.ports), &config);
    wait_topic(&fresh.broker, "kept");
    let master_status = status(&master.broker).unwrap();
    wait_until(CATCH_UP, "the fresh slave to follow from the head", || {
        let s = status(&fresh.broker)?;
        s.shards
            .iter()
            .zip(&master_status.shards)
            .all(|(f, m)| f.max_offset == m.max_offset && f.confirmed_offset == m.max_offset)
            .then_some(())
    });
    let fresh_heads: Vec<u64> = retention_of(&fresh.broker)
        .shards
        .iter()
        .map(|s| s.log_head)
        .collect();
    assert_eq!(
        fresh_heads, master_heads,
        "the fresh slave starts at the master's head"
    );
    assert!(fresh
        .broker
        .log()
        .contains("starting over from its log head"));
    let on_master = master.broker.client().describe_topic("kept").unwrap();
    let on_fresh = fresh.broker.client().describe_topic("kept").unwrap();
    for (m, f) in on_master.queues.iter().zip(&on_fresh.queues) {
        assert!(
            m.min_offset > 0,
            "queue {}: retention moved the minimum",
            m.queue
        );
        assert_eq!((f.min_offset, f.max_offset), (m.min_offset, m.max_offset));
    }
    // Every retained message reads back from the fresh slave as from the master.
    for q in &on_master.queues {
        let read = |broker: &Broker| {
            let mut client = broker.client();
            let mut offset = q.min_offset;
            let mut bodies = Vec::new();
            while offset < q.max_offset {
                let pulled = client
                    .pull("kept", q.queue, offset, 256, 4 << 20, 0)
                    .expect("pull");
                assert!(!pulled.messages.is_empty(), "queue {} at {offset}", q.queue);
                for m in pulled.messages {
                    assert_eq!(m.queue_offset, offset);
                    offset += 1;
                    bodies.push(m.body);
                }
            }
            bodies
        };
        assert_eq!(
            read(&fresh.broker),
            read(&master.broker),
            "queue {}",
            q.queue
        );
    }
}

/// Age-based retention on a master stays behind a connected slave that has not received the
/// log: with the slave stopped (its link still open), an operator's pass deletes nothing the
/// slave lacks and says why; once it catches up, the segments go.
#[test]
fn age_retention_waits_for_a_connected_slave() {
    let config = retention_on_request();
    // Checkpoints often, so the sealed segments are covered when the operator asks.
    let master = start_node(
        "ASYNC_MASTER",
        "SYNC_FLUSH",
        None,
        &format!("{config}checkpoint_interval_ms = 100\n"),
    );
    let slave = start_node(
        "SLAVE",
        "SYNC_FLUSH",
        Some(&master.ports),
        &format!("{config}ha_link_timeout_ms = 60000\n"),
    );
    master.broker.client().create_topic("held", 4).unwrap();
    wait_topic(&slave.broker, "held");
    produce_bulk(&master.broker, "held", 4, "first", 1024);
    let caught_up = wait_caught_up(&master.broker);
    wait_slave_confirmed(&slave.broker, &caught_up);
    let acked: Vec<u64> = caught_up
        .shards
        .iter()
        .map(|s| s.slaves[0].acked_offset)
        .collect();

    let resume = Resume(slave.broker.pid().unwrap() as i32);
    slave.broker.pause();
    produce_bulk(&master.broker, "held", 4, "second", 8192);
    let answer: ringmq::protocol::admin::Retention = master
        .broker
        .client()
        .call(&ringmq::protocol::message::DeleteExpiredRequest {})
        .expect("delete-expired");
    for (shard, acked) in answer.shards.iter().zip(&acked) {
        assert!(
            shard.log_head <= *acked,
            "shard {}: deleted up to {} past the slave's {acked}",
            shard.shard,
            shard.log_head
        );
        assert!(
            shard
                .error
                .as_deref()
                .is_some_and(|e| e.contains("a connected slave still needs it")),
            "{shard:?}"
        );
    }
    drop(resume);
    let caught_up = wait_caught_up(&master.broker);
    let answer: ringmq::protocol::admin::Retention = master
        .broker
        .client()
        .call(&ringmq::protocol::message::DeleteExpiredRequest {})
        .expect("delete-expired");
    for (shard, status) in answer.shards.iter().zip(&caught_up.shards) {
        let current = status.max_offset / (1 << 20) * (1 << 20);
        assert_eq!(shard.log_head, current, "shard {}: {shard:?}", shard.shard);
    }
}
