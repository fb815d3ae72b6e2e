//! ShardStore against the simulated disk: crash recovery across many seeds, bit flips,
//! injected I/O failures, checkpointed restarts and consume-queue rebuilds; and, on a disk with
//! latencies driven by the simulated clock, a concurrent appender, pipelined flusher and
//! checkpoint writer cut by a crash at a seeded instant, with I/O still in flight.

use futures_lite::future::block_on;
use ringmq::store::record::{self, Decoded, RecordInput};
use ringmq::store::{AppendError, QueueKey, ShardStore, StoreConfig};
use ringmq::testing::disk::IoLatency;
use ringmq::testing::driver;
use ringmq::testing::{SeededRng, SimClock, SimDisk, SimFault};
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

const QUEUES: [QueueKey; 3] = [
    QueueKey {
        topic_id: 1,
        queue: 0,
    },
    QueueKey {
        topic_id: 1,
        queue: 1,
    },
    QueueKey {
        topic_id: 2,
        queue: 0,
    },
];

fn config() -> StoreConfig {
    StoreConfig {
        dir: PathBuf::from("/store/shard-0"),
        segment_size_bytes: 64 * 1024,
        write_buffer_bytes: 16 * 1024,
        max_record_bytes: 4 * 1024,
        adopt_unknown_queues: false,
        cq_file_entries: 1024,
        cq_cache_entries: 64,
    }
}

/// What the test appended: per queue, the bodies in queue-offset order.
#[derive(Clone, Default)]
struct Model {
    bodies: Vec<Vec<Vec<u8>>>,
    /// Per queue, how many records the last successful flush covered.
    durable: Vec<usize>,
}

impl Model {
    fn new() -> Self {
        Model {
            bodies: vec![Vec::new(); QUEUES.len()],
            durable: vec![0; QUEUES.len()],
        }
    }
}

fn body_for(rng: &mut SeededRng, q: usize, n: usize) -> Vec<u8> {
    let len = rng.below(1500) as usize;
    let mut body = format!("q{q}-n{n}-").into_bytes();
    body.extend((0..len).map(|i| (i as u8).wrapping_mul(31) ^ q as u8));
    body
}

fn open(disk: &SimDisk) -> (ShardStore<SimDisk>, ringmq::store::RecoveryReport) {
    block_on(ShardStore::open(disk.clone(), config(), &QUEUES)).expect("open")
}

/// Appends one record, preparing segments and flushing as the store asks.
fn append(store: &ShardStore<SimDisk>, model: &mut Model, q: usize, body: &[u8]) {
    let key = QUEUES[q];
    let input = RecordInput {
        topic_id: key.topic_id,
        queue_id: key.queue,
        queue_offset: 0,
        born_timestamp_ms: 1,
        store_timestamp_ms: 2,
        topic: "t",
        key: b"k",
        properties: b"",
        body,
    };
    loop {
        match store.append(&input) {
            Ok(appended) => {
                assert_eq!(appended.queue_offset as usize, model.bodies[q].len());
                model.bodies[q].push(body.to_vec());
                return;
            }
            Err(AppendError::SegmentNotReady) => block_on(store.prepare_next_segment()).unwrap(),
            Err(AppendError::BufferFull) => flush(store, model),
            Err(e) => panic!("append: {e}"),
        }
    }
}

fn flush(store: &ShardStore<SimDisk>, model: &mut Model) {
    block_on(store.flush()).expect("flush");
    assert_eq!(store.flushed_offset(), store.max_offset());
    for q in 0..QUEUES.len() {
        model.durable[q] = model.bodies[q].len();
    }
}

fn workload(store: &ShardStore<SimDisk>, model: &mut Model, rng: &mut SeededRng, ops: usize) {
    for _ in 0..ops {
        match rng.below(20) {
            0..=14 => {
                let q = rng.below(QUEUES.len() as u64) as usize;
                let body = body_for(rng, q, model.bodies[q].len());
                append(store, model, q, &body);
            }
            15..=17 => flush(store, model),
            18 => block_on(store.persist_metadata()).unwrap(),
            _ => {
                if store.needs_next_segment() {
                    block_on(store.prepare_next_segment()).unwrap();
                }
            }
        }
    }
}

/// Checks the recovered store against the model and returns the model trimmed to it.
fn check_recovered(store: &ShardStore<SimDisk>, model: &Model) -> Model {
    block_on(check_recovered_async(store, model))
}

async fn check_recovered_async(store: &ShardStore<SimDisk>, model: &Model) -> Model {
    let mut recovered = Model::new();
    for (q, key) in QUEUES.iter().enumerate() {
        let (min, next) = store.queue_range(*key).unwrap();
        assert_eq!(min, 0);
        let next = next as usize;
        assert!(
            next >= model.durable[q],
            "queue {q}: {next} recovered, {} were flushed",
            model.durable[q]
        );
        assert!(next <= model.bodies[q].len(), "queue {q}: invented records");
        let entries = store.entries(*key, 0, usize::MAX).await.unwrap();
        assert_eq!(entries.len(), next);
        for (i, entry) in entries.iter().enumerate() {
            let bytes = store.read_record(*entry).await.unwrap();
            let Ok(Decoded::Record(view)) = record::decode(&bytes, entry.commitlog_offset) else {
                panic!("queue {q} entry {i} does not decode");
            };
            assert_eq!(view.queue_offset, i as u64);
            assert_eq!(view.body, &model.bodies[q][i][..], "queue {q} entry {i}");
        }
        recovered.bodies[q] = model.bodies[q][..next].to_vec();
        recovered.durable[q] = next;
    }
    recovered
}

#[test]
fn crash_recovery_across_seeds() {
    for seed in 0..250u64 {
        let mut rng = SeededRng(seed);
        let disk = SimDisk::new();
        let (store, _) = open(&disk);
        let mut model = Model::new();
        let ops = 120 + rng.below(200) as usize;
        workload(&store, &mut model, &mut rng, ops);
        let crashed = disk.crash(seed);
        let (store, report) = open(&crashed);
        assert!(report.unclean_shutdown, "seed {seed}");
        let mut model = check_recovered(&store, &model);
        workload(&store, &mut model, &mut rng, 150);
        let crashed = crashed.crash(seed ^ 0xDEAD_BEEF);
        let (store, _) = open(&crashed);
        let model = check_recovered(&store, &model);
        let total: usize = model.bodies.iter().map(Vec::len).sum();
        assert_eq!(store.max_offset() > 0, total > 0, "seed {seed}");
    }
}

#[test]
fn bit_flip_keeps_exactly_the_records_before_it() {
    for seed in 0..60u64 {
        let mut rng = SeededRng(seed);
        let disk = SimDisk::new();
        let (store, _) = open(&disk);
        let mut model = Model::new();
        for _ in 0..150 {
            let q = rng.below(QUEUES.len() as u64) as usize;
            let body = body_for(&mut rng, q, model.bodies[q].len());
            append(&store, &mut model, q, &body);
        }
        flush(&store, &mut model);
        let mut all: Vec<(usize, u64, u32)> = Vec::new();
        for (q, key) in QUEUES.iter().enumerate() {
            for e in block_on(store.entries(*key, 0, usize::MAX)).unwrap() {
                all.push((q, e.commitlog_offset, e.size));
            }
        }
        let (_, victim_offset, victim_size) = all[rng.below(all.len() as u64) as usize];
        let at = victim_offset + rng.below(victim_size as u64);
        let segment = at / config().segment_size_bytes * config().segment_size_bytes;
        let path = config()
            .dir
            .join("commitlog")
            .join(format!("{segment:020}"));
        assert!(disk.flip_bit(&path, at - segment, rng.below(8) as u8));
        let (store, report) = open(&disk);
        assert!(report.truncation_reason.is_some() || report.max_offset == victim_offset);
        assert_eq!(report.max_offset, victim_offset, "seed {seed}");
        for (q, key) in QUEUES.iter().enumerate() {
            let expected = all
                .iter()
                .filter(|(qq, off, _)| *qq == q && *off < victim_offset)
                .count();
            assert_eq!(store.queue_range(*key).unwrap().1 as usize, expected);
        }
        let mut trimmed = model.clone();
        for q in 0..QUEUES.len() {
            trimmed.durable[q] = 0;
        }
        let model = check_recovered(&store, &trimmed);
        // Appending after the truncation and crashing again must not resurrect old records.
        let mut model = model;
        workload(&store, &mut model, &mut rng, 100);
        flush(&store, &mut model);
        let (store, _) = open(&disk.crash(seed));
        check_recovered(&store, &model);
    }
}

#[test]
fn failed_write_or_sync_is_reported_and_appends_are_refused() {
    for fault in [SimFault::Write, SimFault::Sync] {
        let disk = SimDisk::new();
        let (store, _) = open(&disk);
        let mut model = Model::new();
        append(&store, &mut model, 0, b"one");
        flush(&store, &mut model);
        append(&store, &mut model, 0, b"two");
        disk.inject(fault);
        assert!(block_on(store.flush()).is_err(), "{fault:?}");
        assert_eq!(
            store.flushed_offset(),
            store.max_offset() - store.dirty_bytes()
        );
        assert!(
            store.dirty_bytes() > 0,
            "the failed flush must not count as durable"
        );
        let input = RecordInput {
            topic_id: 1,
            queue_id: 0,
            queue_offset: 0,
            born_timestamp_ms: 0,
            store_timestamp_ms: 0,
            topic: "t",
            key: b"",
            properties: b"",
            body: b"three",
        };
        assert!(matches!(store.append(&input), Err(AppendError::Failed(_))));
        assert!(block_on(store.flush()).is_err());
        assert!(block_on(store.persist_metadata()).is_err());
        // After a restart the durable record is there.
        let (store, _) = open(&disk.crash(7));
        assert!(store.queue_range(QUEUES[0]).unwrap().1 >= 1);
    }
}

#[test]
fn clean_close_restarts_from_the_checkpoint() {
    let disk = SimDisk::new();
    let (store, _) = open(&disk);
    let mut model = Model::new();
    let mut rng = SeededRng(42);
    workload(&store, &mut model, &mut rng, 400);
    block_on(store.close()).unwrap();
    let max = store.max_offset();
    assert!(
        max > 2 * config().segment_size_bytes,
        "the test must roll segments"
    );
    let (store, report) = open(&disk);
    assert!(!report.unclean_shutdown);
    assert_eq!(report.scan_start_offset, max);
    assert_eq!(report.scanned_bytes, 0);
    assert_eq!(report.truncated_bytes, 0);
    check_recovered(&store, &model);
}

#[test]
fn deleted_consume_queue_is_rebuilt_from_the_commitlog() {
    let disk = SimDisk::new();
    let (store, _) = open(&disk);
    let mut model = Model::new();
    let mut rng = SeededRng(3);
    workload(&store, &mut model, &mut rng, 300);
    block_on(store.close()).unwrap();
    let cq = config()
        .dir
        .join("consumequeue/1/1.cq/00000000000000000000");
    assert!(disk.content(&cq).is_some());
    futures_lite::future::block_on(ringmq::store::io::Disk::remove(&disk, &cq)).unwrap();
    let (store, report) = open(&disk);
    assert_eq!(
        report.consume_queue_entries_dispatched as usize,
        model.bodies[1].len()
    );
    check_recovered(&store, &model);
    // And the rebuilt queue is on disk again: a further restart needs no rebuild.
    block_on(store.close()).unwrap();
    let (store, report) = open(&disk);
    assert_eq!(report.consume_queue_entries_dispatched, 0);
    check_recovered(&store, &model);
}

#[test]
fn stale_records_past_a_truncation_never_come_back() {
    let disk = SimDisk::new();
    let (store, _) = open(&disk);
    let mut model = Model::new();
    // Headers are 78 bytes here (topic "t", key "k"): the second record ends at block 4096,
    // so the flush after the truncation does not rewrite the third record's block.
    let first = vec![b'a'; 2000 - 78];
    let second_old = vec![b'b'; 2096 - 78];
    let second_new = vec![b'n'; 2096 - 78];
    for body in [&first, &second_old, &b"third-cccc".to_vec()] {
        append(&store, &mut model, 0, body);
    }
    flush(&store, &mut model);
    let second = block_on(store.entries(QUEUES[0], 1, 1)).unwrap()[0];
    let path = config().dir.join("commitlog").join(format!("{:020}", 0));
    assert!(disk.flip_bit(&path, second.commitlog_offset + 80, 0));
    let (store, report) = open(&disk);
    assert!(report.truncation_reason.is_some());
    assert!(report.truncated_bytes > 0);
    assert_eq!(store.queue_range(QUEUES[0]), Some((0, 1)));
    // A same-size record ends exactly where the stale third record starts.
    let mut model = Model::new();
    model.bodies[0].push(first);
    append(&store, &mut model, 0, &second_new);
    assert_eq!(store.max_offset(), 4096);
    flush(&store, &mut model);
    let (store, _) = open(&disk.crash(1));
    assert_eq!(store.queue_range(QUEUES[0]), Some((0, 2)));
    check_recovered(&store, &model);
}

#[test]
fn a_read_that_straddles_the_write_buffer_returns_the_buffered_bytes() {
    // Replication ships ranges like [slave's offset, max offset): the start already on disk,
    // the end still only in the write buffer.
    let disk = SimDisk::new();
    let (store, _) = open(&disk);
    let mut model = Model::new();
    for i in 0..20 {
        append(&store, &mut model, i % 3, &[b'a'; 1000]);
    }
    flush(&store, &mut model);
    for i in 0..5 {
        append(&store, &mut model, i % 3, &[b'b'; 1000]);
    }
    let max = store.max_offset();
    assert!(store.flushed_offset() < max && max < config().segment_size_bytes);
    let before = block_on(store.commitlog().read(0, max as usize)).unwrap();
    flush(&store, &mut model);
    let after = block_on(store.commitlog().read(0, max as usize)).unwrap();
    assert!(
        before == after,
        "the unflushed tail read as what the file held"
    );
    assert!(before[before.len() - 1000..].iter().all(|b| *b == b'b'));
}

/// The pipelined flusher writes the next batch (rewriting the partial last block) while or
/// after the previous batch is synced. A crash that tears or drops such an unsynced rewrite
/// must never lose a record an earlier sync made durable: the rewrite only adds bytes to the
/// block. Exercised here with the write and sync halves driven separately, over many seeds.
#[test]
fn a_torn_rewrite_of_the_partial_block_never_loses_synced_records() {
    for seed in 0..300u64 {
        let mut rng = SeededRng(seed ^ 0x5151_5151);
        let disk = SimDisk::new();
        let (store, _) = open(&disk);
        let mut model = Model::new();
        for _ in 0..(5 + rng.below(25)) {
            for _ in 0..(1 + rng.below(6)) {
                let q = rng.below(QUEUES.len() as u64) as usize;
                let body = body_for(&mut rng, q, model.bodies[q].len());
                append(&store, &mut model, q, &body);
            }
            let covered: Vec<usize> = model.bodies.iter().map(Vec::len).collect();
            let written = block_on(store.write_dirty()).expect("write");
            // Appends keep arriving while the sync is in flight.
            for _ in 0..rng.below(4) {
                let q = rng.below(QUEUES.len() as u64) as usize;
                let body = body_for(&mut rng, q, model.bodies[q].len());
                append(&store, &mut model, q, &body);
            }
            if let Some(written) = written {
                block_on(store.sync(written)).expect("sync");
                for (durable, covered) in model.durable.iter_mut().zip(&covered) {
                    *durable = (*durable).max(*covered);
                }
            }
            // The next batch is written, and the crash may come before its sync.
            if rng.below(2) == 0 {
                let _unsynced = block_on(store.write_dirty()).expect("write");
            }
        }
        let crashed = disk.crash(seed);
        let (store, _) = open(&crashed);
        check_recovered(&store, &model);
    }
}

/// A slave registers queues on the fly when the master ships records of a topic it has not
/// copied yet. After a restart (clean or not, consume queues persisted or not) it must still
/// hold those queues, or the next shipped record of one of them would not fit.
#[test]
fn a_slave_keeps_queues_it_adopted_across_restarts() {
    let key = QueueKey {
        topic_id: 9,
        queue: 0,
    };
    let master_disk = SimDisk::new();
    let (master, _) = block_on(ShardStore::open(master_disk, config(), &[key])).expect("open");
    let mut shipped = Vec::new();
    for i in 0..6u32 {
        let body = format!("adopted-{i}");
        let input = RecordInput {
            topic_id: key.topic_id,
            queue_id: key.queue,
            queue_offset: 0,
            born_timestamp_ms: 1,
            store_timestamp_ms: 2,
            topic: "late",
            key: b"",
            properties: b"",
            body: body.as_bytes(),
        };
        let appended = master.append(&input).expect("append on the master");
        let entry = block_on(master.entries(key, appended.queue_offset, 1)).unwrap()[0];
        shipped.push(block_on(master.read_record(entry)).expect("read"));
    }
    let slave_config = StoreConfig {
        adopt_unknown_queues: true,
        cq_file_entries: 1024,
        cq_cache_entries: 64,
        ..config()
    };
    for persist_queues in [false, true] {
        let disk = SimDisk::new();
        let (slave, _) =
            block_on(ShardStore::open(disk.clone(), slave_config.clone(), &[])).expect("open");
        for record in &shipped[..4] {
            slave.append_replicated(record).expect("replicated append");
        }
        block_on(slave.flush()).expect("flush");
        if persist_queues {
            block_on(slave.persist_metadata()).expect("persist");
        }
        let crashed = disk.crash(7);
        let (slave, _) =
            block_on(ShardStore::open(crashed, slave_config.clone(), &[])).expect("reopen");
        assert_eq!(
            slave.queue_range(key),
            Some((0, 4)),
            "queue forgotten (consume queues persisted: {persist_queues})"
        );
        for record in &shipped[4..] {
            slave
                .append_replicated(record)
                .expect("the next shipped record fits");
        }
    }
}

/// A recovery reads the log about once, whatever the largest allowed record: the scan used to
/// refill a window of `max_record_bytes` for every record, so at the default 4 MiB limit a
/// restart read the segment once per record and never finished. Small records under a large
/// record limit, as in the default configuration, after a crash that lost the checkpoint, so
/// the whole log is scanned.
#[test]
fn recovery_reads_each_scanned_byte_about_once() {
    let large_limit = StoreConfig {
        segment_size_bytes: 8 * 1024 * 1024,
        write_buffer_bytes: 4 * 1024 * 1024 + 4096,
        max_record_bytes: 4 * 1024 * 1024 + 4096,
        ..config()
    };
    let disk = SimDisk::new();
    let (store, _) =
        block_on(ShardStore::open(disk.clone(), large_limit.clone(), &QUEUES)).expect("open");
    let mut model = Model::new();
    let mut rng = SeededRng(7);
    workload(&store, &mut model, &mut rng, 3000);
    flush(&store, &mut model);
    let crashed = disk.crash(7);
    let checkpoint = ringmq::store::checkpoint::checkpoint_path(&large_limit.dir);
    block_on(ringmq::store::io::Disk::remove(&crashed, &checkpoint)).expect("no checkpoint");
    let before = crashed.read_bytes();
    let (_, report) = block_on(ShardStore::open(
        crashed.clone(),
        large_limit.clone(),
        &QUEUES,
    ))
    .expect("reopen");
    let read = crashed.read_bytes() - before;
    assert!(report.unclean_shutdown);
    assert!(report.scanned_records > 1000, "{report:?}");
    let slack = 2 * large_limit.max_record_bytes as u64 + 4 * large_limit.write_buffer_bytes as u64;
    assert!(
        read <= 2 * report.scanned_bytes + slack,
        "recovery read {read} bytes to scan {} bytes",
        report.scanned_bytes
    );
}

/// Consume-queue entries carry no checksum: a corrupt size or offset in the file is caught on
/// load and the queue is rebuilt from the commitlog, so every record reads back. Before, a size
/// past the record's end panicked the pull that sliced by it.
#[test]
fn a_corrupt_consume_queue_entry_is_rebuilt_from_the_commitlog() {
    use ringmq::store::io::{Disk, DiskFile};
    for (field_at, corrupt) in [(8usize, &[0xFF_u8; 4][..]), (0, &[0x00; 8][..])] {
        let disk = SimDisk::new();
        let (store, _) = open(&disk);
        let mut model = Model::new();
        let mut rng = SeededRng(11);
        workload(&store, &mut model, &mut rng, 300);
        block_on(store.close()).unwrap();
        assert!(
            model.bodies[1].len() > 10,
            "the queue must hold entries to corrupt"
        );
        let cq = config()
            .dir
            .join("consumequeue/1/1.cq/00000000000000000000");
        let mut bytes = disk.content(&cq).expect("consume queue written");
        let at = 5 * 20 + field_at;
        bytes[at..at + corrupt.len()].copy_from_slice(corrupt);
        block_on(async {
            let file = disk.open(&cq, false).await.unwrap();
            let aligned = bytes.len().div_ceil(4096) * 4096;
            bytes.resize(aligned, 0);
            file.write_bytes_at(&bytes, 0).await.unwrap();
            file.fdatasync().await.unwrap();
        });
        let (store, report) = open(&disk);
        assert_eq!(
            report.consume_queue_entries_dispatched as usize,
            model.bodies[1].len(),
            "the corrupt queue is rebuilt whole"
        );
        check_recovered(&store, &model);
    }
}

/// A batch is admitted whole or not at all: it waits for the segments and the buffer space it
/// needs (or is refused when it could never fit), and a segment that the disk has no room for
/// is never created, nor left behind half-written.
#[test]
fn batches_are_admitted_whole_and_a_full_disk_creates_no_segment() {
    let disk = SimDisk::new();
    let (store, _) = open(&disk);
    let mut model = Model::new();
    let segment = config().segment_size_bytes;
    let buffer = config().write_buffer_bytes;
    let small = vec![1000usize; 4];
    assert_eq!(store.admit_batch(&small), Ok(()));
    assert!(matches!(
        store.admit_batch(&vec![1000; buffer / 1000 + 1]),
        Err(AppendError::BatchTooLarge {
            limit: "write_buffer_bytes",
            ..
        })
    ));
    // Fill the current segment to within a few records of its end, flushing as we go.
    while store.max_offset() + 3000 < segment {
        append(&store, &mut model, 0, &[7u8; 900]);
        if store.dirty_bytes() > buffer as u64 / 2 {
            flush(&store, &mut model);
        }
    }
    flush(&store, &mut model);
    disk.set_available_bytes(Some(segment - 1));
    let crossing = vec![1000usize; 8];
    assert_eq!(
        store.admit_batch(&crossing),
        Err(AppendError::SegmentNotReady)
    );
    let error = block_on(store.prepare_next_segment()).expect_err("no room for a segment");
    assert!(error.is_disk_full(), "{error}");
    let segments = block_on(ringmq::store::io::Disk::list(
        &disk,
        &config().dir.join("commitlog"),
    ))
    .unwrap();
    assert_eq!(segments.len(), 1, "no partial segment left: {segments:?}");
    assert_eq!(
        store.admit_batch(&crossing),
        Err(AppendError::SegmentNotReady)
    );
    disk.set_available_bytes(None);
    block_on(store.prepare_next_segment()).expect("room again");
    assert_eq!(store.admit_batch(&crossing), Ok(()));
}

/// Runs `check` for each seed; a failing seed is named with the way to replay it alone.
/// `RINGMQ_SIM_SEED=<n>` runs only seed `n`; `RINGMQ_SIM_SEEDS=<count>` runs that many.
fn for_each_seed(seeds: std::ops::Range<u64>, check: impl Fn(u64)) {
    let seeds = match (
        std::env::var("RINGMQ_SIM_SEED"),
        std::env::var("RINGMQ_SIM_SEEDS"),
    ) {
        (Ok(one), _) => {
            let seed = one.parse().expect("RINGMQ_SIM_SEED is a u64");
            seed..seed + 1
        }
        (_, Ok(count)) => 0..count.parse().expect("RINGMQ_SIM_SEEDS is a count"),
        _ => seeds,
    };
    for seed in seeds {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(seed)));
        if let Err(panic) = outcome {
            eprintln!("seed {seed} failed; replay it alone with RINGMQ_SIM_SEED={seed}");
            std::panic::resume_unwind(panic);
        }
    }
}

/// Virtual time a timed run may take before it counts as stuck: far beyond any workload here.
const RUN_BUDGET: Duration = Duration::from_secs(600);

/// Appends random records until the run is cut, waiting as a shard does: for a flush when
/// the buffer is full, creating the next segment when the log needs it.
async fn appender(
    store: Rc<ShardStore<SimDisk>>,
    model: Rc<RefCell<Model>>,
    clock: SimClock,
    mut rng: SeededRng,
) {
    loop {
        let q = rng.below(QUEUES.len() as u64) as usize;
        let n = model.borrow().bodies[q].len();
        let body = body_for(&mut rng, q, n);
        let key = QUEUES[q];
        let input = RecordInput {
            topic_id: key.topic_id,
            queue_id: key.queue,
            queue_offset: 0,
            born_timestamp_ms: 1,
            store_timestamp_ms: 2,
            topic: "t",
            key: b"k",
            properties: b"",
            body: &body,
        };
        loop {
            match store.append(&input) {
                Ok(appended) => {
                    let mut model = model.borrow_mut();
                    assert_eq!(appended.queue_offset as usize, model.bodies[q].len());
                    model.bodies[q].push(body.clone());
                    break;
                }
                Err(AppendError::SegmentNotReady) => store.prepare_next_segment().await.unwrap(),
                Err(AppendError::BufferFull) => clock.sleep_ticks(50).await,
                Err(e) => panic!("append: {e}"),
            }
        }
        clock.sleep_ticks(rng.below(40)).await;
    }
}

/// The shard's pipelined flush: batch N+1 is written while sync N is in flight; a record
/// counts as durable once the sync of a write that covered it completes. Every so often the
/// consume queues and the checkpoint are written instead, never during a burst.
async fn flusher(
    store: Rc<ShardStore<SimDisk>>,
    model: Rc<RefCell<Model>>,
    clock: SimClock,
    mut rng: SeededRng,
) {
    loop {
        clock.sleep_ticks(rng.below(600)).await;
        if rng.chance(1, 8) {
            store.persist_metadata().await.unwrap();
            continue;
        }
        let mut in_flight: Option<glommio::Task<Vec<usize>>> = None;
        loop {
            let covered: Vec<usize> = model.borrow().bodies.iter().map(Vec::len).collect();
            let written = store.write_dirty().await.unwrap();
            if let Some(previous) = in_flight.take() {
                let durable = previous.await;
                let mut model = model.borrow_mut();
                for (now, synced) in model.durable.iter_mut().zip(durable) {
                    *now = (*now).max(synced);
                }
            }
            let Some(written) = written else {
                break;
            };
            let syncing = store.clone();
            in_flight = Some(glommio::spawn_local(async move {
                syncing.sync(written).await.unwrap();
                covered
            }));
        }
    }
}

/// One timed life of a store: open (recovering), check against `model`, run the workload
/// until a seeded instant, then return what was appended and acknowledged: the caller crashes
/// the disk with whatever was in flight.
fn timed_life(
    clock: &SimClock,
    disk: &SimDisk,
    model: Model,
    rng: &mut SeededRng,
    cut_ticks: u64,
) -> Model {
    let (disk, inner_clock, mut rng) = (disk.clone(), clock.clone(), rng.fork());
    driver::run(clock, RUN_BUDGET, move || async move {
        let (store, report) = ShardStore::open(disk, config(), &QUEUES)
            .await
            .expect("open");
        assert!(report.unclean_shutdown || model.bodies.iter().all(Vec::is_empty));
        let model = Rc::new(RefCell::new(check_recovered_async(&store, &model).await));
        let store = Rc::new(store);
        glommio::spawn_local(appender(
            store.clone(),
            model.clone(),
            inner_clock.clone(),
            rng.fork(),
        ))
        .detach();
        glommio::spawn_local(flusher(
            store.clone(),
            model.clone(),
            inner_clock.clone(),
            rng.fork(),
        ))
        .detach();
        inner_clock.sleep_ticks(cut_ticks).await;
        let model = model.borrow().clone();
        model
    })
    .expect("the workload runs until the cut")
}

/// Crashes with writes, syncs, segment creations and checkpoint renames in flight, completing
/// in a seeded order, several times over one disk: every record a completed sync covered is
/// recovered, in order, and nothing else appears.
#[test]
fn crashes_with_io_in_flight_lose_no_synced_record() {
    for_each_seed(0..30, |seed| {
        let mut rng = SeededRng(seed);
        let clock = SimClock::new(seed);
        let mut disk = SimDisk::timed(&clock, seed, IoLatency::TYPICAL);
        let mut model = Model::new();
        let mut flushed_any = false;
        for life in 0..4 {
            let cut = rng.between(2_000, 30_000);
            model = timed_life(&clock, &disk, model, &mut rng, cut);
            flushed_any |= model.durable.iter().any(|d| *d > 0);
            assert!(disk.writes_in_flight() + disk.unsynced_namespace_changes() < 10_000);
            disk = disk.crash(seed ^ life);
        }
        // A last life only recovers and checks.
        timed_life(&clock, &disk, model, &mut rng, 0);
        assert!(
            flushed_any,
            "seed {seed}: nothing was ever flushed; the test proves nothing"
        );
    });
}

/// A crash during recovery itself (while it zeroes the torn tail, rewrites consume queues,
/// writes the checkpoint) must leave a store the next recovery still opens whole.
#[test]
fn a_crash_during_recovery_loses_nothing_recovery_had_found() {
    for_each_seed(0..20, |seed| {
        let mut rng = SeededRng(seed ^ 0x0BAD_CAFE);
        let clock = SimClock::new(seed);
        let disk = SimDisk::timed(&clock, seed, IoLatency::TYPICAL);
        let cut = rng.between(10_000, 40_000);
        let model = timed_life(&clock, &disk, Model::new(), &mut rng, cut);
        let mut disk = disk.crash(seed);
        // Cut short recoveries: open and stop at a seeded instant, before or after it ends.
        for cut in 0..3u64 {
            let cut_ticks = rng.below(3_000);
            let (opening, inner) = (disk.clone(), clock.clone());
            let _ = driver::run(&clock, RUN_BUDGET, move || async move {
                let open = ShardStore::open(opening, config(), &QUEUES);
                futures_lite::future::or(
                    async {
                        open.await.expect("open");
                    },
                    inner.sleep_ticks(cut_ticks),
                )
                .await;
            });
            disk = disk.crash(seed.wrapping_mul(31) ^ cut);
        }
        timed_life(&clock, &disk, model, &mut rng, 0);
    });
}

/// Reads that fail (EIO) or return a corrupt sector never hand back a wrong record: every
/// read either fails or returns exactly the record's bytes (each record is checked against its
/// checksum and its consume-queue entry on the way out).
#[test]
fn read_faults_never_return_a_wrong_record() {
    use ringmq::testing::disk::ReadFaults;
    for_each_seed(0..20, |seed| {
        let disk = SimDisk::new();
        let (store, _) = open(&disk);
        let mut model = Model::new();
        let mut rng = SeededRng(seed ^ 0xFA17);
        workload(&store, &mut model, &mut rng, 300);
        block_on(store.close()).unwrap();
        // Reopened, nothing is in the write buffer: every read goes to the disk.
        let (store, _) = open(&disk);
        // The entries first: older ones come from the consume-queue files, and this test is
        // about the record reads (a faulty entry read is an error, checked in the unit tests).
        let entries: Vec<Vec<_>> = QUEUES
            .iter()
            .map(|key| block_on(store.entries(*key, 0, usize::MAX)).unwrap())
            .collect();
        disk.set_read_faults(ReadFaults {
            eio_per_million: 100_000,
            corrupt_sector_per_million: 200_000,
        });
        let (mut failed, mut read) = (0, 0);
        for (q, entries) in entries.iter().enumerate() {
            for (i, entry) in entries.iter().enumerate() {
                match block_on(store.read_record(*entry)) {
                    Ok(bytes) => {
                        let Ok(Decoded::Record(view)) =
                            record::decode(&bytes, entry.commitlog_offset)
                        else {
                            panic!("queue {q} entry {i}: a read returned bytes that do not decode");
                        };
                        assert_eq!(view.body, &model.bodies[q][i][..], "queue {q} entry {i}");
                        read += 1;
                    }
                    Err(_) => failed += 1,
                }
            }
        }
        assert!(
            failed > 0 && read > 0,
            "seed {seed}: {failed} failed, {read} read"
        );
    });
}
