//! The whole shard on the simulated disk and clock, driven from one seed per run (TigerBeetle's
//! VOPR is the model): producers, long-polling consumers, the flusher and its completions, the
//! segment allocator and the checkpoint writer all run as they do in the broker, on a
//! [`SimDisk`] whose I/O takes seeded latencies and completes in a seeded order, until a crash
//! at a seeded instant drops the node's memory and keeps only what the crash model lets
//! survive. The shard is reopened on that disk and checked, several lives per seed:
//!
//! - every record acknowledged under SYNC_FLUSH, and every record a consumer saw under it, is
//!   recovered at its queue offset (under ASYNC_FLUSH only after a clean stop);
//! - nothing appears that was not produced, at another offset, or twice;
//! - no produce or pull waits past its timeout (plus a small bound for the I/O it then does).
//!
//! With retention on (`delete_when = "*"` and a reserved time of a few milliseconds), the
//! cleaner deletes segments while producers append, consumers pull and crashes cut deletions
//! at any step: a queue's minimum only moves forward, every entry from it reads back, and
//! only what lies before it may be missing; a consumer below it is told OFFSET_OUT_OF_RANGE
//! and restarts at the minimum.
//!
//! A master with a slave: socket replication does not run here. The slave side is modelled
//! through the master's replica-ack path: a simulated slave copies records from the master's
//! commitlog into its own store on its own simulated disk, syncs, and reports what it made
//! durable, at seeded times and sometimes not at all; SYNC_MASTER produces must be answered
//! OK only for records the slave holds durably, and time out otherwise.
//!
//! `RINGMQ_SIM_SEEDS=<count>` sets how many seeds each test runs, `RINGMQ_SIM_SEED=<n>`
//! replays one; a failure prints its seed. See `docs/simulation.md`.

use ringmq::clock::Clock;
use ringmq::config::{BrokerConfig, BrokerRole, FlushDiskType};
use ringmq::protocol::message::{
    MessageRef, ProduceRequest, ProduceResponse, PullRequest, PullResponse, TopicCreate,
};
use ringmq::protocol::{Opcode, Status};
use ringmq::shard::{handlers, Shard};
use ringmq::store::record::{self, Decoded};
use ringmq::store::{AppendError, QueueKey, ShardStore, StoreConfig};
use ringmq::testing::disk::IoLatency;
use ringmq::testing::{driver, SeededRng, SimClock, SimDisk};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

const TOPIC: &str = "sim";
const QUEUES: u32 = 2;
const PRODUCERS: u64 = 3;
const CONSUMERS: u64 = 2;
/// Virtual time a life may take: far beyond any cut below, so running out means a hang.
const LIFE_BUDGET: Duration = Duration::from_secs(3600);
/// What a produce or pull may take past its own timeout: the disk I/O it then does (a few
/// hundred microseconds of simulated latency) and the flush it waits for, bounded generously.
const WAIT_SLACK: Duration = Duration::from_millis(20);

/// Seeds per test when `RINGMQ_SIM_SEEDS` is not set: a debug build (plain `cargo test`)
/// runs a quick sample, an optimised one (`scripts/test.sh`) about two minutes' worth here.
const DEFAULT_SEEDS: u64 = if cfg!(debug_assertions) { 20 } else { 500 };

/// Seeds per test: `RINGMQ_SIM_SEEDS`, else `default`; `RINGMQ_SIM_SEED` runs just one.
fn seeds(default: u64) -> std::ops::Range<u64> {
    if let Ok(one) = std::env::var("RINGMQ_SIM_SEED") {
        let seed: u64 = one.parse().expect("RINGMQ_SIM_SEED is a u64");
        return seed..seed + 1;
    }
    let count = std::env::var("RINGMQ_SIM_SEEDS")
        .map(|n| n.parse().expect("RINGMQ_SIM_SEEDS is a count"))
        .unwrap_or(default);
    0..count
}

/// Runs `check` for every seed, naming a failing seed and how to replay it; prints the seed
/// count, simulated events and wall time at the end.
fn for_each_seed(name: &str, default: u64, check: impl Fn(u64) -> u64) {
    let started = Instant::now();
    let mut events = 0;
    let range = seeds(default);
    let count = range.end - range.start;
    for seed in range {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(seed))) {
            Ok(fired) => events += fired,
            Err(panic) => {
                eprintln!("{name}: seed {seed} failed; replay it with RINGMQ_SIM_SEED={seed}");
                std::panic::resume_unwind(panic);
            }
        }
    }
    eprintln!(
        "{name}: {count} seeds, {events} simulated events, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn config(flush: FlushDiskType, role: BrokerRole) -> BrokerConfig {
    BrokerConfig {
        store_dir: PathBuf::from("/broker"),
        broker_role: role,
        flush_disk_type: flush,
        // Small enough that a life rolls segments and fills the write buffer.
        segment_size_bytes: 256 * 1024,
        write_buffer_bytes: 160 * 1024,
        max_message_bytes: 1024,
        flush_interval_ms: 2,
        flush_least_pages: 2,
        flush_thorough_interval_ms: 10,
        checkpoint_interval_ms: 15,
        sync_flush_timeout_ms: 100,
        sync_replica_timeout_ms: 100,
        min_in_sync_replicas: 2,
        max_pull_wait_ms: 50,
        // A tail of a few entries and files of a few dozen: pulls that rewind read the files,
        // and a life rolls them.
        consume_queue_cache_entries: 3,
        consume_queue_file_entries: 24,
        ..BrokerConfig::default()
    }
}

/// `file_reserved_time_ms` of [`retention_config`].
const RESERVED_MS: u64 = 20;

/// [`config`] with retention that deletes within a life: any hour, records older than 20 ms
/// of simulated time, checked every 3 ms; segments as small as the largest record allows
/// (about 130 KiB) so that a life seals several.
fn retention_config(flush: FlushDiskType) -> BrokerConfig {
    BrokerConfig {
        segment_size_bytes: 160 * 1024,
        write_buffer_bytes: 140 * 1024,
        delete_when: "*".to_string(),
        file_reserved_time_ms: RESERVED_MS,
        clean_resource_interval_ms: 3,
        // Retention deletes only what a checkpoint covers: frequent ones, so a life deletes.
        checkpoint_interval_ms: 5,
        ..config(flush, BrokerRole::AsyncMaster)
    }
}

/// What the run produced and what it was told, for the checks after each life.
#[derive(Default)]
struct History {
    /// Every body ever sent, to the queue it was sent to. Bodies are unique.
    sent: BTreeMap<Vec<u8>, u32>,
    /// Per queue, offset to body: acknowledged OK (for the current life: since the last
    /// recovery, plus what that recovery found).
    acked: Vec<BTreeMap<u64, Vec<u8>>>,
    /// Per queue, offset to body: shown to a consumer.
    seen: Vec<BTreeMap<u64, Vec<u8>>>,
    /// Per queue, offset to body: acknowledged OK by a SYNC_MASTER, so held durably by the
    /// slave too. Kept across lives: the master flushes synchronously, so these never go.
    replicated: Vec<BTreeMap<u64, Vec<u8>>>,
    /// The topic's id, as the slave's store knows its queues.
    topic_id: u32,
    /// Per queue, its minimum offset at the last recovery: retention only moves it forward.
    mins: Vec<u64>,
    /// Per acknowledged body, the broker's wall clock (ms) when its produce was sent: its
    /// store timestamp is no earlier. Kept across lives.
    stored_after: BTreeMap<Vec<u8>, u64>,
    /// The broker's wall clock (ms) when the last life ended (its crash or clean stop): no
    /// deletion happened later.
    ended_ms: u64,
    /// Whether retention ran in the lives checked: only then may a record go.
    retention: bool,
}

impl History {
    fn new() -> Self {
        History {
            acked: vec![BTreeMap::new(); QUEUES as usize],
            seen: vec![BTreeMap::new(); QUEUES as usize],
            replicated: vec![BTreeMap::new(); QUEUES as usize],
            mins: vec![0; QUEUES as usize],
            ..History::default()
        }
    }

    /// Records `body` at `offset` of `queue` in `map`; the same offset must never carry two
    /// different bodies within what one recovery keeps.
    fn note(map: &mut BTreeMap<u64, Vec<u8>>, offset: u64, body: &[u8], what: &str) {
        if let Some(before) = map.insert(offset, body.to_vec()) {
            assert_eq!(before, body, "{what}: offset {offset} changed its message");
        }
    }
}

fn encode(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    f(&mut out);
    out
}

/// Produces batches of unique messages until the life ends, checking each answer's wait.
async fn producer(
    shard: Rc<Shard<SimDisk>>,
    clock: SimClock,
    history: Rc<RefCell<History>>,
    mut rng: SeededRng,
    tag: String,
) {
    let bound = Duration::from_millis(
        shard.config().sync_flush_timeout_ms + shard.config().sync_replica_timeout_ms,
    ) + WAIT_SLACK;
    for n in 0u64.. {
        let queue = rng.below(QUEUES as u64) as u32;
        let bodies: Vec<Vec<u8>> = (0..rng.between(1, 3))
            .map(|i| {
                let mut body = format!("{tag}-n{n}-m{i}-").into_bytes();
                body.resize(body.len() + rng.below(600) as usize, b'a' + (n % 26) as u8);
                body
            })
            .collect();
        {
            let mut history = history.borrow_mut();
            for body in &bodies {
                history.sent.insert(body.clone(), queue);
            }
        }
        let messages: Vec<MessageRef<'_>> = bodies
            .iter()
            .map(|body| MessageRef {
                born_timestamp_ms: n,
                key: b"",
                properties: b"",
                body,
            })
            .collect();
        let request = encode(|out| {
            ProduceRequest {
                topic: TOPIC,
                queue,
                messages,
            }
            .encode(out)
        });
        let started = clock.now();
        let sent_ms = clock.unix_ms();
        let reply = handlers::handle(&shard, Opcode::Produce, &request).await;
        let waited = clock.now() - started;
        assert!(
            waited <= bound,
            "a produce waited {waited:?}, bound {bound:?}"
        );
        if reply.status == Status::Ok {
            let response = ProduceResponse::decode(&reply.body).expect("produce response");
            assert_eq!(response.queue, queue);
            if shard.config().flush_disk_type == FlushDiskType::SyncFlush {
                let flushed = shard.store().flushed_offset();
                assert!(
                    flushed > response.commitlog_offset,
                    "a SYNC_FLUSH produce at commitlog offset {} was answered OK with the log \
                     flushed to {flushed}",
                    response.commitlog_offset
                );
            }
            let mut history = history.borrow_mut();
            for (i, body) in bodies.iter().enumerate() {
                let offset = response.base_offset + i as u64;
                History::note(&mut history.acked[queue as usize], offset, body, "acked");
                history.stored_after.insert(body.clone(), sent_ms);
                if shard.role() == BrokerRole::SyncMaster {
                    let replicated = &mut history.replicated[queue as usize];
                    History::note(replicated, offset, body, "replicated");
                }
            }
        }
        clock.sleep_ticks(rng.below(3_000)).await;
    }
}

/// Long-polls every queue from where it last got to, checking what it is shown and how long
/// each pull waited.
async fn consumer(
    shard: Rc<Shard<SimDisk>>,
    clock: SimClock,
    history: Rc<RefCell<History>>,
    mut rng: SeededRng,
) {
    let mut next = vec![0u64; QUEUES as usize];
    loop {
        let queue = rng.below(QUEUES as u64) as u32;
        let max_wait_ms = rng.below(80) as u32;
        // Now and then read again from an older offset: below the cached tail, the entries
        // come from the consume-queue files, and they must show what they showed before.
        if rng.chance(1, 8) {
            next[queue as usize] = rng.below(next[queue as usize] + 1);
        }
        let request = encode(|out| {
            PullRequest {
                topic: TOPIC.to_string(),
                queue,
                offset: next[queue as usize],
                max_messages: rng.between(1, 16) as u32,
                max_bytes: 64 * 1024,
                max_wait_ms,
            }
            .encode(out)
        });
        let started = clock.now();
        let reply = handlers::handle(&shard, Opcode::Pull, &request).await;
        let waited = clock.now() - started;
        let allowed =
            Duration::from_millis((max_wait_ms as u64).min(shard.config().max_pull_wait_ms))
                + WAIT_SLACK;
        assert!(
            waited <= allowed,
            "a pull waited {waited:?}, allowed {allowed:?}"
        );
        match reply.status {
            Status::Ok => {
                let response = PullResponse::decode(&reply.body).expect("pull response");
                let mut history = history.borrow_mut();
                for message in &response.messages {
                    assert_eq!(
                        history.sent.get(message.body),
                        Some(&queue),
                        "queue {queue} offset {} shows a message never sent to it",
                        message.queue_offset
                    );
                    if let Some(acked) = history.acked[queue as usize].get(&message.queue_offset) {
                        assert_eq!(acked.as_slice(), message.body, "seen differs from acked");
                    }
                    let offset = message.queue_offset;
                    History::note(
                        &mut history.seen[queue as usize],
                        offset,
                        message.body,
                        "seen",
                    );
                }
                next[queue as usize] = response.summary.next_offset;
            }
            Status::NoNewMessage => {}
            // Retention passed it: restart at the queue's minimum, as a consumer resets to
            // earliest.
            Status::OffsetOutOfRange => {
                let topic_id = shard.topic(TOPIC).expect("the topic").topic_id;
                let (min, _) = shard
                    .store()
                    .queue_range(QueueKey { topic_id, queue })
                    .expect("the queue");
                assert!(
                    min > next[queue as usize],
                    "queue {queue}: offset {} answered out of range, minimum {min}",
                    next[queue as usize]
                );
                next[queue as usize] = min;
            }
            other => panic!("pull answered {other:?}"),
        }
        clock.sleep_ticks(rng.below(2_000)).await;
    }
}

/// Everything each queue holds now from its minimum, read from the store (not through pulls:
/// a SYNC_MASTER shows only what a slave acknowledged again since the restart): offset to
/// body.
async fn read_all(shard: &Rc<Shard<SimDisk>>) -> Vec<BTreeMap<u64, Vec<u8>>> {
    let topic_id = shard.topic(TOPIC).expect("the topic").topic_id;
    let mut queues = Vec::new();
    for queue in 0..QUEUES {
        let key = QueueKey { topic_id, queue };
        let mut held = BTreeMap::new();
        let (min, _) = shard.store().queue_range(key).expect("a registered queue");
        let entries = shard.store().entries(key, min, usize::MAX).await;
        for (i, entry) in entries.expect("entries").iter().enumerate() {
            let offset = min + i as u64;
            let bytes = shard.store().read_record(*entry).await.expect("read back");
            let Ok(Decoded::Record(view)) = record::decode(&bytes, entry.commitlog_offset) else {
                panic!("queue {queue} offset {offset} does not decode");
            };
            assert_eq!(view.queue_offset, offset);
            held.insert(offset, view.body.to_vec());
        }
        queues.push(held);
    }
    queues
}

/// After a recovery: what the shard holds against what the previous life was told; the
/// history then continues from what survived (recovery made it durable).
fn check_recovered(
    history: &mut History,
    held: Vec<BTreeMap<u64, Vec<u8>>>,
    mins: Vec<u64>,
    flush: FlushDiskType,
    clean_stop: bool,
) {
    let mut bodies_seen = BTreeMap::new();
    for (queue, held) in held.iter().enumerate() {
        let min = mins[queue];
        // What went below the minimum was deleted by retention, which takes a segment only
        // once its newest record is file_reserved_time_ms old: every acknowledged record
        // below the new minimum was stored at least that long before the life ended. This is
        // judged from the history, not from the recovered state under test.
        for (offset, body) in history.acked[queue].range(..min) {
            assert!(
                history.retention,
                "queue {queue}: offset {offset} went below the minimum {min} without retention"
            );
            if let Some(&sent) = history.stored_after.get(body) {
                assert!(
                    sent + RESERVED_MS <= history.ended_ms,
                    "queue {queue}: offset {offset}, stored at or after {sent} ms, was deleted \
                     by {} ms, younger than file_reserved_time_ms {RESERVED_MS}",
                    history.ended_ms
                );
            }
        }
        assert!(
            min >= history.mins[queue],
            "queue {queue}: the minimum went back from {} to {min}",
            history.mins[queue]
        );
        for (offset, body) in held {
            assert_eq!(
                history.sent.get(body),
                Some(&(queue as u32)),
                "queue {queue} offset {offset} holds a message never sent to it"
            );
            assert!(
                bodies_seen.insert(body.clone(), (queue, *offset)).is_none(),
                "a message is held twice"
            );
        }
        let must_survive = flush == FlushDiskType::SyncFlush || clean_stop;
        for (what, told) in [
            ("acked", &history.acked[queue]),
            ("seen", &history.seen[queue]),
        ] {
            // Retention deleted what lies before the minimum.
            for (offset, body) in told.range(min..) {
                match held.get(offset) {
                    Some(kept) => assert_eq!(kept, body, "queue {queue} offset {offset} changed"),
                    None if must_survive => panic!(
                        "queue {queue} lost {what} offset {offset} ({flush:?}, clean stop \
                         {clean_stop})"
                    ),
                    None => {}
                }
            }
        }
        assert_eq!(
            held.keys().copied().collect::<Vec<_>>(),
            (min..min + held.len() as u64).collect::<Vec<_>>(),
            "queue {queue} has holes"
        );
    }
    history.mins = mins;
    history.acked = held.clone();
    history.seen = held;
}

/// How one life runs.
struct LifePlan {
    flush: FlushDiskType,
    /// Whether the previous life stopped cleanly (then even ASYNC_FLUSH loses nothing).
    previous_clean: bool,
    /// False: only recover and check.
    run: bool,
    /// SYNC_MASTER with a simulated slave on this disk; `None`: an ASYNC_MASTER alone.
    slave_disk: Option<SimDisk>,
    /// Retention deletes segments during the life (see [`retention_config`]).
    retention: bool,
}

/// One life of the shard: open (recovering) on `disk`, check what survived, run producers and
/// consumers until a seeded instant (unless only checking), then either crash (return with
/// everything in flight) or stop cleanly. Returns whether it stopped cleanly.
fn life(
    clock: &SimClock,
    disk: &SimDisk,
    history: &Rc<RefCell<History>>,
    rng: &mut SeededRng,
    plan: LifePlan,
) -> bool {
    let LifePlan {
        flush,
        previous_clean,
        run,
        slave_disk,
        retention,
    } = plan;
    let (disk, inner, history) = (disk.clone(), clock.clone(), history.clone());
    let role = match slave_disk {
        Some(_) => BrokerRole::SyncMaster,
        None => BrokerRole::AsyncMaster,
    };
    let mut rng = rng.fork();
    let cut_ticks = rng.between(5_000, 150_000);
    let clean = rng.chance(1, 4);
    driver::run(clock, LIFE_BUDGET, move || async move {
        let config = if retention {
            retention_config(flush)
        } else {
            config(flush, role)
        };
        let shard = Shard::open_for_test(disk, Rc::new(inner.clone()), config)
            .await
            .expect("open");
        if shard.topic(TOPIC).is_none() {
            let create = encode(|out| {
                TopicCreate {
                    name: TOPIC.to_string(),
                    queue_count: QUEUES,
                }
                .encode(out)
            });
            let reply = handlers::handle(&shard, Opcode::TopicCreate, &create).await;
            assert_eq!(reply.status, Status::Ok, "creating the topic");
        }
        history.borrow_mut().topic_id = shard.topic(TOPIC).expect("the topic").topic_id;
        let held = read_all(&shard).await;
        let topic_id = shard.topic(TOPIC).expect("the topic").topic_id;
        let mins = (0..QUEUES)
            .map(|queue| {
                let key = QueueKey { topic_id, queue };
                shard.store().queue_range(key).expect("the queue").0
            })
            .collect();
        check_recovered(&mut history.borrow_mut(), held, mins, flush, previous_clean);
        let slave = match slave_disk {
            // The slave restarts with the master (both lost power): it recovers, must still
            // hold every record a SYNC_MASTER acknowledged, and cuts what it holds past the
            // master's recovered end (never acknowledged: the master flushes synchronously),
            // as a reconnecting slave does.
            Some(slave_disk) => {
                let (slave, _) = ShardStore::open(slave_disk, slave_store_config(), &[])
                    .await
                    .expect("slave recovery");
                let (topic_id, replicated) = {
                    let history = history.borrow();
                    (history.topic_id, history.replicated.clone())
                };
                check_slave_holds(&slave, topic_id, &replicated).await;
                let master_max = shard.store().max_offset();
                if slave.max_offset() > master_max {
                    slave
                        .truncate_to(master_max)
                        .await
                        .expect("slave truncation");
                }
                Some(Rc::new(slave))
            }
            None => None,
        };
        if !run {
            return true;
        }
        let background = shard.spawn_background();
        let mut tasks = Vec::new();
        for p in 0..PRODUCERS {
            let tag = format!("p{p}-t{}", inner.now_ticks());
            tasks.push(glommio::spawn_local(producer(
                shard.clone(),
                inner.clone(),
                history.clone(),
                rng.fork(),
                tag,
            )));
        }
        if let Some(slave) = slave {
            tasks.push(glommio::spawn_local(replicate(
                shard.clone(),
                slave,
                inner.clone(),
                rng.fork(),
            )));
        }
        for _ in 0..CONSUMERS {
            tasks.push(glommio::spawn_local(consumer(
                shard.clone(),
                inner.clone(),
                history.clone(),
                rng.fork(),
            )));
        }
        inner.sleep_ticks(cut_ticks).await;
        if clean {
            drop(tasks);
            shard.stop(background).await.expect("clean stop");
        }
        let mut history = history.borrow_mut();
        history.ended_ms = inner.unix_ms();
        history.retention |= retention;
        clean
    })
    .expect("a life runs until its cut")
}

/// Several lives of one shard on one disk, crashing or stopping at seeded instants.
fn run_seed(seed: u64, flush: FlushDiskType) -> u64 {
    run_seed_with(seed, flush, false)
}

fn run_seed_with(seed: u64, flush: FlushDiskType, retention: bool) -> u64 {
    let mut rng = SeededRng(seed);
    let clock = SimClock::new(seed);
    let mut disk = SimDisk::timed(&clock, seed, IoLatency::TYPICAL);
    let history = Rc::new(RefCell::new(History::new()));
    let mut clean = true;
    for life_index in 0..4u64 {
        let plan = LifePlan {
            flush,
            previous_clean: clean,
            run: true,
            slave_disk: None,
            retention,
        };
        clean = life(&clock, &disk, &history, &mut rng, plan);
        disk = if clean {
            disk.clone()
        } else {
            disk.crash(seed.wrapping_mul(1_000_003) ^ life_index)
        };
    }
    // A last life only recovers and checks.
    let plan = LifePlan {
        flush,
        previous_clean: clean,
        run: false,
        slave_disk: None,
        retention,
    };
    life(&clock, &disk, &history, &mut rng, plan);
    assert!(
        history.borrow().sent.len() > 10,
        "seed {seed}: the run produced almost nothing"
    );
    if retention {
        DELETING_SEEDS
            .with(|n| n.set(n.get() + history.borrow().mins.iter().any(|m| *m > 0) as u64));
    }
    clock.fired()
}

thread_local! {
    /// Seeds of the retention runs whose queues' minimum moved: the test must exercise it.
    static DELETING_SEEDS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[test]
fn sync_flush_keeps_every_acknowledged_and_every_seen_record_across_crashes() {
    for_each_seed("shard_sim sync_flush", DEFAULT_SEEDS, |seed| {
        run_seed(seed, FlushDiskType::SyncFlush)
    });
}

#[test]
fn retention_deletes_segments_among_appends_pulls_and_crashes() {
    DELETING_SEEDS.with(|n| n.set(0));
    let range = seeds(DEFAULT_SEEDS);
    let count = range.end - range.start;
    for_each_seed("shard_sim retention", DEFAULT_SEEDS, |seed| {
        run_seed_with(seed, FlushDiskType::SyncFlush, true)
    });
    let deleting = DELETING_SEEDS.with(|n| n.get());
    eprintln!("shard_sim retention: {deleting} of {count} seeds deleted segments");
    assert!(
        deleting * 2 >= count,
        "only {deleting} of {count} seeds ever deleted a segment"
    );
}

#[test]
fn async_flush_never_shows_invented_or_reordered_records_across_crashes() {
    for_each_seed("shard_sim async_flush", DEFAULT_SEEDS, |seed| {
        run_seed(seed, FlushDiskType::AsyncFlush)
    });
}

fn slave_store_config() -> StoreConfig {
    let master = config(FlushDiskType::SyncFlush, BrokerRole::Slave);
    StoreConfig {
        dir: PathBuf::from("/slave/shard-0"),
        segment_size_bytes: master.segment_size_bytes,
        write_buffer_bytes: master.write_buffer_bytes as usize,
        max_record_bytes: ringmq::shard::startup::max_record_bytes(&master),
        adopt_unknown_queues: true,
        cq_file_entries: 1024,
        cq_cache_entries: 64,
    }
}

/// The slave side of replication, through the master's replica-ack path: at seeded times
/// (and after seeded stalls longer than the replica timeout) copy what the master appended
/// into the slave's store record by record, sync it, and report the synced offset as a link
/// would.
async fn replicate(
    shard: Rc<Shard<SimDisk>>,
    slave: Rc<ShardStore<SimDisk>>,
    clock: SimClock,
    mut rng: SeededRng,
) {
    let replicas = shard.replicas().expect("a SYNC_MASTER has replicas");
    let link = replicas.register("simulated slave".to_string(), 0, 0);
    let segment = shard.config().segment_size_bytes;
    let mut cursor = slave.max_offset();
    loop {
        clock.sleep_ticks(rng.below(4_000)).await;
        if rng.chance(1, 25) {
            clock.sleep_ticks(rng.between(100_000, 300_000)).await;
        }
        cursor = copy_from_master(&shard, &slave, cursor, segment).await;
        slave.flush().await.expect("slave flush");
        let master_max = shard.store().max_offset();
        match replicas.report(link, slave.flushed_offset(), master_max) {
            Ok(true) => {
                shard.publish_confirmed();
                shard.role_state().wake_links();
            }
            Ok(false) => {}
            Err(fake) => panic!("the simulated slave reported past the master: {fake:?}"),
        }
    }
}

/// Copies the master's records from `cursor` on; returns where the next copy starts.
async fn copy_from_master(
    shard: &Rc<Shard<SimDisk>>,
    slave: &ShardStore<SimDisk>,
    mut cursor: u64,
    segment: u64,
) -> u64 {
    loop {
        let end = shard.store().max_offset();
        if cursor >= end {
            return cursor;
        }
        let segment_end = (cursor / segment + 1) * segment;
        let len = (end.min(segment_end) - cursor).min(64 * 1024) as usize;
        let bytes = shard
            .store()
            .commitlog()
            .read(cursor, len)
            .await
            .expect("master read");
        let mut at = 0;
        while at < bytes.len() {
            match record::decode(&bytes[at..], cursor + at as u64) {
                Ok(Decoded::Record(view)) => {
                    let record = &bytes[at..at + view.total_size as usize];
                    append_on_slave(slave, record).await;
                    at += view.total_size as usize;
                }
                Ok(Decoded::EndOfSegment) => {
                    at = (segment_end - cursor) as usize;
                    break;
                }
                // A record cut by the read's end: read it whole next time.
                Ok(Decoded::EndOfData) | Err(_) => break,
            }
        }
        if at == 0 {
            return cursor;
        }
        cursor += at as u64;
    }
}

async fn append_on_slave(slave: &ShardStore<SimDisk>, record: &[u8]) {
    loop {
        match slave.append_replicated(record) {
            Ok(_) => return,
            Err(AppendError::BufferFull) => {
                slave.flush().await.expect("slave flush");
            }
            Err(AppendError::SegmentNotReady) => {
                slave.prepare_next_segment().await.expect("slave segment");
            }
            Err(e) => panic!("the slave refused a shipped record: {e}"),
        }
    }
}

/// Every record a SYNC_MASTER acknowledged is on the slave, which has just recovered from a
/// crash: none of them was lost.
async fn check_slave_holds(
    store: &ShardStore<SimDisk>,
    topic_id: u32,
    replicated: &[BTreeMap<u64, Vec<u8>>],
) {
    for (queue, replicated) in replicated.iter().enumerate() {
        let key = QueueKey {
            topic_id,
            queue: queue as u32,
        };
        for (offset, body) in replicated {
            let entry = store
                .entries(key, *offset, 1)
                .await
                .expect("slave entries")
                .first()
                .copied()
                .unwrap_or_else(|| {
                    panic!("the slave lost acknowledged offset {offset} of queue {queue}")
                });
            let bytes = store.read_record(entry).await.expect("slave read");
            let Ok(Decoded::Record(view)) = record::decode(&bytes, entry.commitlog_offset) else {
                panic!("slave record does not decode");
            };
            assert_eq!(
                view.body,
                body.as_slice(),
                "slave queue {queue} offset {offset}"
            );
        }
    }
}

/// A SYNC_MASTER with a simulated slave (see the module doc), over several master lives.
fn run_replicated_seed(seed: u64) -> u64 {
    let mut rng = SeededRng(seed ^ 0x5EED_0F5A);
    let clock = SimClock::new(seed);
    let mut disk = SimDisk::timed(&clock, seed, IoLatency::TYPICAL);
    let mut slave_disk = SimDisk::timed(&clock, seed ^ 0xD15C, IoLatency::TYPICAL);
    let history = Rc::new(RefCell::new(History::new()));
    let flush = FlushDiskType::SyncFlush;
    let mut clean = true;
    for life_index in 0..3u64 {
        let plan = LifePlan {
            flush,
            previous_clean: clean,
            run: true,
            slave_disk: Some(slave_disk.clone()),
            retention: false,
        };
        clean = life(&clock, &disk, &history, &mut rng, plan);
        slave_disk = slave_disk.crash(seed.wrapping_mul(31) ^ life_index);
        disk = if clean {
            disk.clone()
        } else {
            disk.crash(seed.wrapping_mul(7_000_003) ^ life_index)
        };
    }
    // A last life only recovers both and checks.
    let plan = LifePlan {
        flush,
        previous_clean: clean,
        run: false,
        slave_disk: Some(slave_disk.clone()),
        retention: false,
    };
    life(&clock, &disk, &history, &mut rng, plan);
    let replicated: usize = history.borrow().replicated.iter().map(BTreeMap::len).sum();
    assert!(
        replicated > 0,
        "seed {seed}: no produce was ever acknowledged by the slave"
    );
    clock.fired()
}

#[test]
fn sync_master_acknowledges_only_what_the_slave_holds_durably() {
    for_each_seed("shard_sim sync_master", DEFAULT_SEEDS, run_replicated_seed);
}

/// A seed replays: the same seed fires the same number of simulated events and leaves the
/// same history (what `RINGMQ_SIM_SEED` relies on).
#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 11] {
        let first = run_seed(seed, FlushDiskType::SyncFlush);
        let second = run_seed(seed, FlushDiskType::SyncFlush);
        assert_eq!(
            first, second,
            "seed {seed} fired different numbers of events"
        );
    }
}
