//! Consume queues split into files: rolling, reading entries older than the cached tail,
//! recovery that reads only the files' ends, the migration of the single-file layout, and
//! the queue minimum (`expire_queues_before`), all on the simulated disk.

use super::consume_queue::{self, encode_entry, CqEntry, CQ_ENTRY_BYTES};
use super::io::{Disk, DiskFile, BLOCK_BYTES};
use super::record::{self, Decoded, RecordInput};
use super::{AppendError, QueueKey, ShardStore, StoreConfig};
use crate::testing::SimDisk;
use futures_lite::future::block_on;
use std::path::{Path, PathBuf};

const KEY: QueueKey = QueueKey {
    topic_id: 3,
    queue: 1,
};
const OTHER: QueueKey = QueueKey {
    topic_id: 3,
    queue: 2,
};
const FILE_ENTRIES: u64 = 100;
const CACHE: u64 = 16;

fn config() -> StoreConfig {
    StoreConfig {
        dir: PathBuf::from("/store/shard-0"),
        segment_size_bytes: 64 * 1024,
        write_buffer_bytes: 16 * 1024,
        max_record_bytes: 4 * 1024,
        adopt_unknown_queues: false,
        cq_file_entries: FILE_ENTRIES,
        cq_cache_entries: CACHE,
    }
}

fn open(disk: &SimDisk) -> ShardStore<SimDisk> {
    block_on(ShardStore::open(disk.clone(), config(), &[KEY, OTHER]))
        .expect("open")
        .0
}

fn body(key: QueueKey, i: u64) -> Vec<u8> {
    format!("q{} message {i:05}", key.queue).into_bytes()
}

fn append_one(store: &ShardStore<SimDisk>, key: QueueKey, bytes: &[u8]) {
    let input = RecordInput {
        topic_id: key.topic_id,
        queue_id: key.queue,
        queue_offset: 0,
        born_timestamp_ms: 1,
        store_timestamp_ms: 1,
        topic: "t",
        key: b"",
        properties: b"",
        body: bytes,
    };
    loop {
        match store.append(&input) {
            Ok(_) => break,
            Err(AppendError::BufferFull) => block_on(store.flush()).map(|_| ()).expect("flush"),
            Err(AppendError::SegmentNotReady) => {
                block_on(store.prepare_next_segment()).expect("segment")
            }
            Err(e) => panic!("append: {e}"),
        }
    }
}

/// Appends `count` records to `key`, flushing and rolling segments as a shard would, and
/// persisting the consume queues every `persist_every` records.
fn append(store: &ShardStore<SimDisk>, key: QueueKey, count: u64, persist_every: u64) {
    let start = store.queue_range(key).map_or(0, |(_, next)| next);
    for i in start..start + count {
        let bytes = body(key, i);
        let input = RecordInput {
            topic_id: key.topic_id,
            queue_id: key.queue,
            queue_offset: 0,
            born_timestamp_ms: 1,
            store_timestamp_ms: 1,
            topic: "t",
            key: b"",
            properties: b"",
            body: &bytes,
        };
        loop {
            match store.append(&input) {
                Ok(appended) => {
                    assert_eq!(appended.queue_offset, i);
                    break;
                }
                Err(AppendError::BufferFull) => {
                    block_on(store.flush()).expect("flush");
                }
                Err(AppendError::SegmentNotReady) => {
                    block_on(store.prepare_next_segment()).expect("segment");
                }
                Err(e) => panic!("append: {e}"),
            }
        }
        if store.needs_next_segment() {
            block_on(store.prepare_next_segment()).expect("segment");
        }
        if (i + 1) % persist_every == 0 {
            block_on(store.flush()).expect("flush");
            block_on(store.persist_metadata()).expect("persist");
        }
    }
}

/// Reads `from..` back as a pull would (entries, then records) and checks every body.
fn check_reads(store: &ShardStore<SimDisk>, key: QueueKey, from: u64) -> u64 {
    let (min, next) = store.queue_range(key).expect("queue");
    assert!(from >= min);
    let mut offset = from;
    while offset < next {
        let entries = block_on(store.entries(key, offset, 7)).expect("entries");
        assert!(!entries.is_empty(), "no entry at {offset} of {next}");
        for entry in entries {
            let bytes = block_on(store.read_record(entry)).expect("record");
            let Ok(Decoded::Record(view)) = record::decode(&bytes, entry.commitlog_offset) else {
                panic!("offset {offset} does not decode");
            };
            assert_eq!(view.queue_offset, offset);
            assert_eq!(view.body, body(key, offset));
            offset += 1;
        }
    }
    offset - from
}

fn files(disk: &SimDisk, key: QueueKey) -> Vec<String> {
    block_on(disk.list(&consume_queue::files_dir(&config().dir, key))).expect("list")
}

fn name(first: u64) -> String {
    format!("{first:020}")
}

#[test]
fn files_roll_by_first_offset_and_old_entries_are_read_from_them() {
    let disk = SimDisk::new();
    let store = open(&disk);
    append(&store, KEY, 350, 10);
    append(&store, OTHER, 5, 5);
    block_on(store.persist_metadata()).expect("persist");
    assert_eq!(
        files(&disk, KEY),
        [name(0), name(100), name(200), name(300)]
    );
    assert_eq!(files(&disk, OTHER), [name(0)]);
    // The tail is bounded: the cache plus at most the block the next write rewrites.
    let per_block = (BLOCK_BYTES / CQ_ENTRY_BYTES) as u64;
    assert!(store.cached_entries(KEY) as u64 <= CACHE + per_block);
    assert_eq!(check_reads(&store, KEY, 0), 350);
    // A request across a file boundary reads the two files (one read each) and returns every
    // entry it asked for.
    let entries = block_on(store.entries(KEY, 95, 10)).expect("entries");
    assert_eq!(entries.len(), 10, "entries across a file boundary");
    assert_eq!(check_reads(&store, OTHER, 0), 5);
    // Clean restart and a crash both find every persisted entry through the files.
    block_on(store.close()).expect("close");
    let store = open(&disk);
    assert_eq!(store.queue_range(KEY), Some((0, 350)));
    assert_eq!(check_reads(&store, KEY, 0), 350);
    append(&store, KEY, 60, 20);
    for seed in 0..8 {
        let crashed = disk.crash(seed);
        let store = open(&crashed);
        let (min, next) = store.queue_range(KEY).expect("queue");
        assert_eq!(min, 0);
        assert!((400..=410).contains(&next), "seed {seed}: {next}");
        assert_eq!(check_reads(&store, KEY, 0), next);
        // The recovered store keeps appending into the right file.
        append(&store, KEY, 150, 30);
        block_on(store.close()).expect("close");
        let store = open(&crashed);
        assert_eq!(check_reads(&store, KEY, 0), next + 150);
    }
}

/// Both in memory and in bytes read: 20,000 entries are 200 files (400 KB) here, and a clean
/// restart reads the newest file's end, the cached tail and the log after the checkpoint (at
/// most the last 64 KiB segment), not the files.
#[test]
fn recovery_reads_the_ends_of_the_files_not_the_files() {
    let disk = SimDisk::new();
    let store = open(&disk);
    append(&store, KEY, 20_000, 1000);
    block_on(store.close()).expect("close");
    let before = disk.read_bytes();
    let store = open(&disk);
    let read = disk.read_bytes() - before;
    assert!(
        read < config().segment_size_bytes + 16 * 1024,
        "a restart read {read} bytes"
    );
    let per_block = (BLOCK_BYTES / CQ_ENTRY_BYTES) as u64;
    assert!(
        store.cached_entries(KEY) as u64 <= CACHE + per_block,
        "{} entries in memory after recovery",
        store.cached_entries(KEY)
    );
    assert_eq!(check_reads(&store, KEY, 19_990), 10);
}

#[test]
fn trimming_past_the_recovered_end_reaches_into_older_files() {
    let disk = SimDisk::new();
    let store = open(&disk);
    append(&store, KEY, 120, 120);
    let cut = block_on(store.entries(KEY, 90, 1)).expect("entries")[0].commitlog_offset;
    block_on(store.truncate_to(cut)).expect("truncate");
    assert_eq!(store.queue_range(KEY), Some((0, 90)));
    assert_eq!(files(&disk, KEY), [name(0)]);
    block_on(store.close()).expect("close");
    let store = open(&disk);
    assert_eq!(store.queue_range(KEY), Some((0, 90)));
    assert_eq!(check_reads(&store, KEY, 0), 90);
    append(&store, KEY, 30, 10);
    assert_eq!(check_reads(&store, KEY, 0), 120);
}

/// Writes `entries` as the layout before the split did: one file per queue, entries from the
/// start, zeros to the end of the last block.
fn write_legacy(disk: &SimDisk, key: QueueKey, entries: &[CqEntry]) {
    let path = consume_queue::legacy_path(&config().dir, key);
    let mut bytes = vec![0u8; (entries.len() * CQ_ENTRY_BYTES).div_ceil(BLOCK_BYTES) * BLOCK_BYTES];
    for (i, entry) in entries.iter().enumerate() {
        encode_entry(entry, &mut bytes[i * CQ_ENTRY_BYTES..]);
    }
    block_on(async {
        let file = disk.open(&path, true).await.expect("create legacy file");
        file.write_bytes_at(&bytes, 0).await.expect("write");
        file.fdatasync().await.expect("sync");
        disk.sync_dir(path.parent().expect("dir"))
            .await
            .expect("sync dir");
    });
}

/// A store of the old layout: the records are in the log, each queue's entries in one file.
fn legacy_store(disk: &SimDisk, count: u64) -> Vec<CqEntry> {
    let store = open(disk);
    append(&store, KEY, count, 25);
    append(&store, OTHER, 3, 3);
    block_on(store.close()).expect("close");
    let mut by_queue = Vec::new();
    for key in [KEY, OTHER] {
        let entries = block_on(store.entries(key, 0, usize::MAX)).expect("entries");
        block_on(disk.remove_dir_all(&consume_queue::files_dir(&config().dir, key))).unwrap();
        write_legacy(disk, key, &entries);
        by_queue.push(entries);
    }
    by_queue.swap_remove(0)
}

#[test]
fn a_legacy_single_file_store_is_migrated() {
    let disk = SimDisk::new();
    let entries = legacy_store(&disk, 250);
    let legacy = consume_queue::legacy_path(&config().dir, KEY);
    let store = open(&disk);
    assert!(!block_on(disk.exists(&legacy)).unwrap(), "legacy file left");
    assert_eq!(files(&disk, KEY), [name(0), name(100), name(200)]);
    assert_eq!(store.queue_range(KEY), Some((0, 250)));
    assert_eq!(
        block_on(store.entries(KEY, 0, usize::MAX)).unwrap(),
        entries
    );
    assert_eq!(check_reads(&store, KEY, 0), 250);
    assert_eq!(check_reads(&store, OTHER, 0), 3);
    append(&store, KEY, 10, 10);
    block_on(store.close()).expect("close");
    let store = open(&disk);
    assert_eq!(check_reads(&store, KEY, 0), 260);
}

/// The migration's intermediate states, as a crash leaves them: some new files written (one
/// torn) with the legacy file still there, or every new file complete and the legacy file not
/// yet removed. Either reopens to the same queue.
#[test]
fn a_migration_interrupted_at_any_step_reopens() {
    for state in ["partial", "complete"] {
        let disk = SimDisk::new();
        let entries = legacy_store(&disk, 250);
        let dir = consume_queue::files_dir(&config().dir, KEY);
        block_on(disk.create_dir_all(&dir)).unwrap();
        let first = &entries[..FILE_ENTRIES as usize];
        block_on(consume_queue::write_from(
            &disk,
            &dir.join(name(0)),
            first,
            0,
            0,
            0,
        ))
        .unwrap();
        if state == "partial" {
            // A later file of the interrupted attempt holds garbage.
            block_on(async {
                let file = disk.open(&dir.join(name(100)), true).await.unwrap();
                file.write_bytes_at(&[0x5a; BLOCK_BYTES], 0).await.unwrap();
                file.fdatasync().await.unwrap();
            });
        } else {
            for first_offset in [100u64, 200] {
                let end = (first_offset + FILE_ENTRIES).min(250) as usize;
                block_on(consume_queue::write_from(
                    &disk,
                    &dir.join(name(first_offset)),
                    &entries[first_offset as usize..end],
                    0,
                    0,
                    0,
                ))
                .unwrap();
            }
        }
        block_on(disk.sync_dir(&dir)).unwrap();
        let store = open(&disk);
        assert_eq!(store.queue_range(KEY), Some((0, 250)), "{state}");
        assert_eq!(check_reads(&store, KEY, 0), 250, "{state}");
        let legacy = consume_queue::legacy_path(&config().dir, KEY);
        assert!(!block_on(disk.exists(&legacy)).unwrap());
        // A crash right after the migration keeps it (every step was durable).
        let store = open(&disk.crash(7));
        assert_eq!(check_reads(&store, KEY, 0), 250, "{state} after a crash");
    }
}

#[test]
fn a_legacy_file_with_an_impossible_entry_is_rebuilt() {
    let disk = SimDisk::new();
    let mut entries = legacy_store(&disk, 150);
    entries[120].size = 3;
    write_legacy(&disk, KEY, &entries);
    let (store, report) =
        block_on(ShardStore::open(disk.clone(), config(), &[KEY, OTHER])).expect("open");
    assert!(report.consume_queue_entries_dispatched >= 150);
    assert_eq!(check_reads(&store, KEY, 0), 150);
}

fn head_at(store: &ShardStore<SimDisk>, offset: u64) -> u64 {
    block_on(store.entries(KEY, offset, 1)).expect("entries")[0].commitlog_offset
}

#[test]
fn expiry_moves_the_minimum_and_deletes_whole_files_only() {
    let disk = SimDisk::new();
    let store = open(&disk);
    append(&store, KEY, 450, 30);
    append(&store, OTHER, 20, 20);
    block_on(store.persist_metadata()).unwrap();
    let head = head_at(&store, 250);
    block_on(store.expire_queues_before(head)).expect("expire");
    assert_eq!(store.queue_range(KEY), Some((250, 450)));
    // OTHER's records were appended after KEY's last: all after the head, nothing expires.
    assert_eq!(store.queue_range(OTHER), Some((0, 20)));
    assert_eq!(files(&disk, KEY), [name(200), name(300), name(400)]);
    assert!(block_on(store.entries(KEY, 249, 5)).unwrap().is_empty());
    assert_eq!(check_reads(&store, KEY, 250), 200);
    // Idempotent, and never backwards.
    block_on(store.expire_queues_before(head)).expect("again");
    block_on(store.expire_queues_before(0)).expect("older head");
    assert_eq!(store.queue_range(KEY), Some((250, 450)));
    // A head past the tail's start finds the minimum in the cache.
    let late = head_at(&store, 445);
    block_on(store.expire_queues_before(late)).expect("late");
    assert_eq!(store.queue_range(KEY), Some((445, 450)));
    assert_eq!(files(&disk, KEY), [name(400)]);
    assert_eq!(check_reads(&store, KEY, 445), 5);
    // A head past every record empties the queue but keeps its newest file and its end.
    block_on(store.expire_queues_before(u64::MAX)).expect("all");
    assert_eq!(store.queue_range(KEY), Some((450, 450)));
    assert_eq!(store.queue_range(OTHER), Some((20, 20)));
    assert_eq!(files(&disk, KEY), [name(400)]);
    append(&store, KEY, 60, 20);
    block_on(store.persist_metadata()).unwrap();
    assert_eq!(check_reads(&store, KEY, 450), 60);
    assert_eq!(files(&disk, KEY), [name(400), name(500)]);
}

/// The retention order: the log head is persisted first (here the test holds it), then the
/// queues are trimmed; a crash anywhere, including after only some files were deleted,
/// reopens to the same minimum once recovery applies the head again.
#[test]
fn expiry_interrupted_by_a_crash_heals_on_the_next_open() {
    let disk = SimDisk::new();
    let store = open(&disk);
    append(&store, KEY, 450, 30);
    block_on(store.persist_metadata()).unwrap();
    let head = head_at(&store, 310);
    // Half done by hand: the oldest file deleted, the next one not.
    let dir = consume_queue::files_dir(&config().dir, KEY);
    block_on(disk.remove(&dir.join(name(0)))).unwrap();
    for seed in 0..6 {
        let crashed = disk.crash(seed);
        let store = open(&crashed);
        assert_eq!(
            store.queue_range(KEY).unwrap().0,
            100,
            "the first file left"
        );
        block_on(store.expire_queues_before(head)).expect("expire");
        assert_eq!(store.queue_range(KEY), Some((310, 450)));
        let after = files(&crashed, KEY);
        assert_eq!(after, [name(300), name(400)]);
        let store = open(&crashed.crash(seed + 100));
        block_on(store.expire_queues_before(head)).expect("expire again");
        assert_eq!(store.queue_range(KEY), Some((310, 450)));
        assert_eq!(check_reads(&store, KEY, 310), 140);
    }
}

#[test]
fn file_names_are_twenty_digit_first_offsets() {
    let dir = Path::new("/s");
    let path = consume_queue::file_path(dir, KEY, 262_144);
    assert_eq!(
        path,
        Path::new("/s/consumequeue/3/1.cq/00000000000000262144")
    );
    assert_eq!(
        consume_queue::parse_file_name("00000000000000262144"),
        Some(262_144)
    );
    assert_eq!(consume_queue::parse_file_name("262144"), None);
    assert_eq!(consume_queue::parse_file_name("0000000000000026214x"), None);
    assert_eq!(consume_queue::file_start(262_143, 262_144), 0);
    assert_eq!(consume_queue::file_start(262_144, 262_144), 262_144);
}

/// A queue rebuilt after retention deleted the oldest segments starts at the queue offset of
/// its oldest record still in the log, inside a file's range: that file is named by the offset
/// (the entries before it are zeros), and the queue reads, reopens and grows from there.
#[test]
fn a_queue_rebuilt_after_segments_were_deleted_starts_inside_a_file() {
    let disk = SimDisk::new();
    let store = open(&disk);
    let filler = vec![b'f'; 3000];
    for i in 0..150 {
        append_one(&store, KEY, &body(KEY, i));
        append_one(&store, OTHER, &filler);
    }
    block_on(store.close()).expect("close");
    let log_dir = config().dir.join("commitlog");
    for base in [0u64, 64 * 1024] {
        block_on(disk.remove(&log_dir.join(format!("{base:020}")))).unwrap();
    }
    block_on(disk.remove_dir_all(&consume_queue::files_dir(&config().dir, KEY))).unwrap();
    let store = open(&disk);
    let (min, next) = store.queue_range(KEY).expect("queue");
    assert!(
        min > 0 && min % FILE_ENTRIES != 0,
        "starts inside a file: {min}"
    );
    assert_eq!(next, 150);
    assert_eq!(files(&disk, KEY)[0], name(min));
    assert_eq!(check_reads(&store, KEY, min), 150 - min);
    block_on(store.close()).expect("close");
    let store = open(&disk);
    assert_eq!(store.queue_range(KEY), Some((min, 150)));
    append(&store, KEY, 100, 25);
    block_on(store.close()).expect("close");
    let store = open(&disk);
    assert_eq!(store.queue_range(KEY), Some((min, 250)));
    assert_eq!(check_reads(&store, KEY, min), 250 - min);
}

/// A restart reads the ends of the consume-queue files (a binary search for the newest
/// file's end, the cached tail, a binary search for the minimum), not the files: 3.2 MB here,
/// of which a restart reads a few blocks besides the commitlog scan's window (up to 1 MiB).
#[test]
fn a_restart_reads_a_bounded_part_of_the_consume_queue_files() {
    let disk = SimDisk::new();
    let config = StoreConfig {
        cq_file_entries: 16_384,
        segment_size_bytes: 1024 * 1024,
        ..config()
    };
    let open = |disk: &SimDisk| {
        block_on(ShardStore::open(
            disk.clone(),
            config.clone(),
            &[KEY, OTHER],
        ))
        .expect("open")
        .0
    };
    let store = open(&disk);
    append(&store, KEY, 160_000, 20_000);
    block_on(store.close()).expect("close");
    let scan_window = 1024 * 1024;
    let before = disk.read_bytes();
    let store = open(&disk);
    let read = disk.read_bytes() - before;
    assert!(
        read < scan_window + 200 * 1024,
        "a restart read {read} bytes"
    );
    assert_eq!(store.queue_range(KEY), Some((0, 160_000)));
    let before = disk.read_bytes();
    let old = block_on(store.entries(KEY, 5, 32)).expect("old entries");
    assert_eq!(old.len(), 32);
    let read = disk.read_bytes() - before;
    assert!(
        read <= 2 * BLOCK_BYTES as u64,
        "an old pull's entries cost {read} bytes"
    );
}

/// The test's record of one queue: the commitlog offset of every record appended, by queue
/// offset (a crash cuts it back to what recovery found).
#[derive(Default)]
struct Placed {
    commitlog: Vec<u64>,
}

impl Placed {
    /// The minimum `expire_queues_before(head)` must give: the first offset whose record
    /// starts at or after `head`.
    fn expected_min(&self, head: u64) -> u64 {
        self.commitlog.partition_point(|&offset| offset < head) as u64
    }
}

fn append_placed(store: &ShardStore<SimDisk>, key: QueueKey, placed: &mut Placed, count: u64) {
    for _ in 0..count {
        let i = placed.commitlog.len() as u64;
        let bytes = body(key, i);
        let input = RecordInput {
            topic_id: key.topic_id,
            queue_id: key.queue,
            queue_offset: 0,
            born_timestamp_ms: 1,
            store_timestamp_ms: 1,
            topic: "t",
            key: b"",
            properties: b"",
            body: &bytes,
        };
        let appended = loop {
            match store.append(&input) {
                Ok(appended) => break appended,
                Err(AppendError::BufferFull) => {
                    block_on(store.flush()).expect("flush");
                }
                Err(AppendError::SegmentNotReady) => {
                    block_on(store.prepare_next_segment()).expect("segment");
                }
                Err(e) => panic!("append: {e}"),
            }
        };
        assert_eq!(appended.queue_offset, i);
        placed.commitlog.push(appended.commitlog_offset);
        if store.needs_next_segment() {
            block_on(store.prepare_next_segment()).expect("segment");
        }
    }
}

/// Seeded runs of appends, flushes, consume-queue writes, expiries (the head only moves
/// forward and never past what is flushed, as retention moves it), reads of old and new
/// entries, clean restarts and crashes: after every expiry and every reopen (which applies
/// the head again, as recovery does with the persisted head), each queue's minimum is the
/// first entry at or after the head, and every offset from it reads back its own record.
#[test]
fn expiry_interleaved_with_appends_reads_and_crashes() {
    use crate::testing::SeededRng;
    for seed in 0..24u64 {
        let mut rng = SeededRng(seed ^ 0xC0FFEE);
        let mut disk = SimDisk::new();
        let mut store = open(&disk);
        let mut placed = [Placed::default(), Placed::default()];
        let keys = [KEY, OTHER];
        let mut head = 0u64;
        for step in 0..160 {
            let q = rng.below(2) as usize;
            let op = rng.below(10);
            match op {
                0..=3 => append_placed(&store, keys[q], &mut placed[q], rng.between(1, 60)),
                4 => {
                    block_on(store.flush()).expect("flush");
                }
                5 => block_on(store.persist_metadata()).expect("persist"),
                6 => {
                    let flushed = store.flushed_offset();
                    let candidates: Vec<u64> = placed[q]
                        .commitlog
                        .iter()
                        .copied()
                        .filter(|&offset| offset <= flushed)
                        .collect();
                    if let Some(&pick) =
                        candidates.get(rng.below(candidates.len() as u64 + 1) as usize)
                    {
                        head = head.max(pick);
                    }
                    block_on(store.expire_queues_before(head)).expect("expire");
                }
                7 => {
                    let (min, next) = store.queue_range(keys[q]).expect("queue");
                    let from = min + rng.below(next - min + 1);
                    let to = (from + rng.between(1, 50)).min(next);
                    let entries = block_on(store.entries(keys[q], from, (to - from) as usize))
                        .expect("entries");
                    assert_eq!(entries.len() as u64, to - from, "seed {seed} step {step}");
                    for (i, entry) in entries.iter().enumerate() {
                        let offset = from + i as u64;
                        assert_eq!(entry.commitlog_offset, placed[q].commitlog[offset as usize]);
                        let bytes = block_on(store.read_record(*entry)).expect("record");
                        let Ok(Decoded::Record(view)) =
                            record::decode(&bytes, entry.commitlog_offset)
                        else {
                            panic!("seed {seed}: offset {offset} does not decode");
                        };
                        assert_eq!(view.body, body(keys[q], offset));
                    }
                    if from > 0 {
                        assert!(
                            block_on(store.entries(keys[q], min.saturating_sub(1), 1))
                                .expect("below")
                                .is_empty()
                                || min == 0
                        );
                    }
                }
                8 => {
                    block_on(store.close()).expect("close");
                    store = open(&disk);
                    block_on(store.expire_queues_before(head)).expect("expire at open");
                }
                _ => {
                    disk = disk.crash(seed * 1000 + step);
                    store = open(&disk);
                    block_on(store.expire_queues_before(head)).expect("expire at open");
                    for (q, key) in keys.iter().enumerate() {
                        let next = store.queue_range(*key).expect("queue").1;
                        assert!(next as usize <= placed[q].commitlog.len());
                        placed[q].commitlog.truncate(next as usize);
                    }
                }
            }
            // Appends do not move the minimum; every other step leaves it where the head
            // says (an expiry or a reopen applied it).
            for (q, key) in keys.iter().enumerate() {
                let (min, next) = store.queue_range(*key).expect("queue");
                assert_eq!(
                    next as usize,
                    placed[q].commitlog.len(),
                    "seed {seed} step {step}"
                );
                assert_eq!(
                    min,
                    placed[q].expected_min(head),
                    "seed {seed} step {step} op {op} queue {q} head {head} tail {}",
                    store.cached_entries(*key)
                );
            }
        }
        // A final expiry and reopen: the minimum is exactly where the head puts it.
        block_on(store.expire_queues_before(head)).expect("expire");
        for (q, key) in keys.iter().enumerate() {
            let (min, next) = store.queue_range(*key).expect("queue");
            assert_eq!(min, placed[q].expected_min(head), "seed {seed} queue {q}");
            assert_eq!(check_reads(&store, *key, min), next - min);
        }
        block_on(store.close()).expect("close");
        let store = open(&disk.crash(seed));
        block_on(store.expire_queues_before(head)).expect("expire");
        for (q, key) in keys.iter().enumerate() {
            let (min, next) = store.queue_range(*key).expect("queue");
            assert_eq!(
                min,
                placed[q].expected_min(head),
                "seed {seed} queue {q} reopened"
            );
            assert_eq!(check_reads(&store, *key, min), next - min);
        }
    }
}

/// A migration that fails part-way (a write or an fdatasync of a new file fails) leaves the
/// legacy file in place: after a crash of that disk the next open migrates again.
#[test]
fn a_migration_failing_part_way_is_redone_after_a_crash() {
    use crate::testing::SimFault;
    for fault in [SimFault::Write, SimFault::Sync] {
        let disk = SimDisk::new();
        let entries = legacy_store(&disk, 250);
        disk.inject(fault);
        let failed = block_on(ShardStore::open(disk.clone(), config(), &[KEY, OTHER]));
        assert!(failed.is_err(), "{fault:?}: the open fails");
        let files_dir = consume_queue::files_dir(&config().dir, KEY);
        assert!(
            block_on(disk.exists(&files_dir)).unwrap(),
            "{fault:?}: the migration had begun"
        );
        let legacy = consume_queue::legacy_path(&config().dir, KEY);
        for seed in 0..4 {
            let crashed = disk.crash(seed);
            assert!(
                block_on(crashed.exists(&legacy)).unwrap(),
                "{fault:?}: legacy kept"
            );
            let store = open(&crashed);
            assert_eq!(
                store.queue_range(KEY),
                Some((0, 250)),
                "{fault:?} seed {seed}"
            );
            assert_eq!(
                block_on(store.entries(KEY, 0, usize::MAX)).unwrap(),
                entries
            );
            assert_eq!(check_reads(&store, OTHER, 0), 3);
        }
    }
}

/// A store where KEY's oldest records lie in segments that are then deleted by hand, the
/// oldest remaining segment holds none of KEY's records (only OTHER's), and KEY continues
/// after it for two more segments; KEY's files are removed, so the next open rebuilds KEY
/// from the log. Returns KEY's first offset still in the log and its next offset.
fn store_needing_a_rebuild_across_a_gap(disk: &SimDisk, key_before: u64) -> (u64, u64) {
    let store = open(disk);
    let filler = vec![b'f'; 3000];
    let segment = config().segment_size_bytes;
    for i in 0..key_before {
        append_one(&store, KEY, &body(KEY, i));
        append_one(&store, OTHER, &filler);
    }
    // Filler alone until a whole segment holds nothing of KEY.
    let quiet_from = store.max_offset().div_ceil(segment) * segment;
    while store.max_offset() < quiet_from + segment {
        append_one(&store, OTHER, &filler);
    }
    let mut next = key_before;
    while store.max_offset() < quiet_from + 3 * segment {
        append_one(&store, KEY, &body(KEY, next));
        append_one(&store, OTHER, &filler);
        next += 1;
    }
    block_on(store.close()).expect("close");
    let log_dir = config().dir.join("commitlog");
    for base in (0..quiet_from).step_by(segment as usize) {
        block_on(disk.remove(&log_dir.join(format!("{base:020}")))).unwrap();
    }
    block_on(disk.remove_dir_all(&consume_queue::files_dir(&config().dir, KEY))).unwrap();
    (key_before, next)
}

/// Finding 1 of the consume-queue review: the rebuild wrote an empty file 0 for a queue with
/// no record in the first segment it scanned, which then stood beside the queue's real first
/// file (two files in one range, or a first file without entries). Both a start inside the
/// first file's range and one past it (which made the load loop spin) reopen to the queue.
#[test]
fn a_rebuild_whose_first_segment_lacks_the_queue_leaves_one_first_file() {
    for key_before in [40u64, 140] {
        let disk = SimDisk::new();
        let (first, next) = store_needing_a_rebuild_across_a_gap(&disk, key_before);
        let store = open(&disk);
        assert_eq!(store.queue_range(KEY), Some((first, next)), "{key_before}");
        assert_eq!(files(&disk, KEY)[0], name(first), "{key_before}");
        assert_eq!(check_reads(&store, KEY, first), next - first);
        block_on(store.close()).expect("close");
        let store = open(&disk);
        assert_eq!(store.queue_range(KEY), Some((first, next)), "{key_before}");
        assert_eq!(check_reads(&store, KEY, first), next - first);
        append(&store, KEY, 30, 10);
        block_on(store.close()).expect("close");
        // A store the old rebuild left with the empty file 0 beside the real first file is
        // recognised and rebuilt, not loaded as an empty queue or spun on.
        let stale = consume_queue::files_dir(&config().dir, KEY).join(name(0));
        block_on(async {
            disk.open(&stale, true).await.expect("create");
            disk.sync_dir(stale.parent().unwrap()).await.expect("sync");
        });
        let store = open(&disk);
        assert_eq!(
            store.queue_range(KEY),
            Some((first, next + 30)),
            "{key_before}"
        );
        assert_eq!(check_reads(&store, KEY, first), next + 30 - first);
        assert_eq!(files(&disk, KEY)[0], name(first), "{key_before}");
    }
}

/// Finding 3: a last file named past its range's start that came back shorter than its name
/// (created, then a crash before its content was synced) made the load underflow. It counts
/// as holding nothing; without a checkpoint the scan then dispatches the queue again.
#[test]
fn a_last_file_shorter_than_its_name_loads_as_empty() {
    let disk = SimDisk::new();
    let (first, next) = store_needing_a_rebuild_across_a_gap(&disk, 140);
    let store = open(&disk);
    assert_eq!(store.queue_range(KEY), Some((first, next)));
    block_on(store.close()).expect("close");
    let dir = consume_queue::files_dir(&config().dir, KEY);
    block_on(async {
        disk.remove_dir_all(&dir).await.unwrap();
        disk.create_dir_all(&dir).await.unwrap();
        disk.open(&dir.join(name(first)), true).await.unwrap();
        disk.sync_dir(&dir).await.unwrap();
        disk.remove(&super::checkpoint::checkpoint_path(&config().dir))
            .await
            .unwrap();
    });
    let store = open(&disk);
    assert_eq!(store.queue_range(KEY), Some((first, next)));
    assert_eq!(check_reads(&store, KEY, first), next - first);
}

/// Finding 2: a crash part-way through a rebuild (here a write fails while the rebuild writes
/// the second segment's entries, then the disk crashes) left the files written so far, which
/// the next open loaded as the whole queue under the old checkpoint: an idle queue came back
/// short. The marker makes the next open rebuild it again.
#[test]
fn a_crash_in_the_middle_of_a_rebuild_rebuilds_again() {
    use crate::testing::SimFault;
    let disk = SimDisk::new();
    let (first, next) = store_needing_a_rebuild_across_a_gap(&disk, 40);
    let rebuilding = std::cell::Cell::new(0);
    let failing = disk.clone();
    let stage = |what: String| {
        if what.starts_with("rebuilding") {
            rebuilding.set(rebuilding.get() + 1);
            if rebuilding.get() == 3 {
                failing.inject(SimFault::Write);
            }
        }
    };
    let failed = block_on(ShardStore::open_reporting(
        disk.clone(),
        config(),
        &[KEY, OTHER],
        &stage,
    ));
    assert!(failed.is_err(), "the write fault fails the open");
    assert_eq!(rebuilding.get(), 3, "the rebuild got to its third segment");
    for seed in 0..4 {
        let store = open(&disk.crash(seed));
        assert_eq!(store.queue_range(KEY), Some((first, next)), "seed {seed}");
        assert_eq!(check_reads(&store, KEY, first), next - first);
    }
}

/// Finding 4: with the confirmed offset before the cached tail (a SYNC_MASTER whose slave is
/// more than the cache behind), the visible end was the queue's minimum, so a consumer
/// between the two waited for ever on a record already confirmed. It is now found in the
/// files: one past the last entry whose record ends at or before the confirmed offset.
#[test]
fn the_visible_end_behind_the_cached_tail_is_found_in_the_files() {
    let disk = SimDisk::new();
    let store = open(&disk);
    append(&store, KEY, 500, 50);
    block_on(store.persist_metadata()).expect("persist");
    assert!(
        (store.cached_entries(KEY) as u64) < 300,
        "the tail is cut back"
    );
    let entries = block_on(store.entries(KEY, 0, usize::MAX)).expect("entries");
    for at in [0usize, 1, 99, 100, 250, 399] {
        let confirmed = entries[at].end_offset();
        assert_eq!(
            block_on(store.visible_end(KEY, confirmed)).expect("visible end"),
            Some(at as u64 + 1),
            "confirmed through entry {at}"
        );
        // Part of a record confirmed: that record is not visible.
        assert_eq!(
            block_on(store.visible_end(KEY, confirmed - 1)).expect("visible end"),
            Some(at as u64),
            "confirmed into entry {at}"
        );
    }
    assert_eq!(
        block_on(store.visible_end(KEY, u64::MAX)).expect("visible end"),
        Some(500)
    );
    // After expiry the answer never goes below the minimum.
    block_on(store.expire_queues_before(entries[200].commitlog_offset)).expect("expire");
    assert_eq!(
        block_on(store.visible_end(KEY, entries[150].end_offset())).expect("visible end"),
        Some(200)
    );
    assert_eq!(
        block_on(store.visible_end(KEY, entries[300].end_offset())).expect("visible end"),
        Some(301)
    );
}

/// The consume queues at the default settings (262,144 entries per file, 8,192 cached): the
/// tail stays bounded, a file boundary is crossed and read across, a restart and a crash
/// find the queue through the files, the visible end behind the tail is found in them, and
/// an expiry deletes the first file whole and moves the minimum inside the second.
#[test]
fn consume_queues_at_the_default_settings() {
    let defaults = crate::config::BrokerConfig::default();
    let config = StoreConfig {
        cq_file_entries: defaults.consume_queue_file_entries,
        cq_cache_entries: defaults.consume_queue_cache_entries,
        segment_size_bytes: 4 * 1024 * 1024,
        write_buffer_bytes: 1024 * 1024,
        ..config()
    };
    assert_eq!(config.cq_file_entries, 262_144);
    assert_eq!(config.cq_cache_entries, 8192);
    let open = |disk: &SimDisk| {
        block_on(ShardStore::open(
            disk.clone(),
            config.clone(),
            &[KEY, OTHER],
        ))
        .expect("open")
        .0
    };
    let disk = SimDisk::new();
    let store = open(&disk);
    let total = 270_000u64;
    append(&store, KEY, total, 10_000);
    append(&store, OTHER, 10, 10);
    block_on(store.persist_metadata()).expect("persist");
    assert_eq!(files(&disk, KEY), [name(0), name(262_144)]);
    let per_block = (BLOCK_BYTES / CQ_ENTRY_BYTES) as u64;
    assert!(store.cached_entries(KEY) as u64 <= 8192 + per_block);
    let across = block_on(store.entries(KEY, 262_140, 10)).expect("entries");
    assert_eq!(across.len(), 10);
    let confirmed = block_on(store.entries(KEY, 100_000, 1)).expect("entry")[0].end_offset();
    assert_eq!(
        block_on(store.visible_end(KEY, confirmed)).expect("visible end"),
        Some(100_001)
    );
    block_on(store.close()).expect("close");
    let store = open(&disk);
    assert_eq!(store.queue_range(KEY), Some((0, total)));
    assert!(
        store.cached_entries(KEY) as u64 <= 8192 + per_block,
        "{}",
        store.cached_entries(KEY)
    );
    assert_eq!(check_reads(&store, KEY, 262_000), total - 262_000);
    assert_eq!(check_reads(&store, KEY, 0).min(10), 10);
    append(&store, KEY, 1000, 300);
    let crashed = disk.crash(3);
    let store = open(&crashed);
    let (min, next) = store.queue_range(KEY).expect("queue");
    assert_eq!(min, 0);
    assert!((total..=total + 1000).contains(&next), "{next}");
    assert_eq!(check_reads(&store, KEY, 261_000), next - 261_000);
    let head = block_on(store.entries(KEY, 263_000, 1)).expect("entry")[0].commitlog_offset;
    block_on(store.expire_queues_before(head)).expect("expire");
    assert_eq!(store.queue_range(KEY), Some((263_000, next)));
    assert_eq!(files(&crashed, KEY), [name(262_144)]);
    block_on(store.close()).expect("close");
    let store = open(&crashed);
    block_on(store.expire_queues_before(head)).expect("expire");
    assert_eq!(store.queue_range(KEY), Some((263_000, next)));
    assert_eq!(check_reads(&store, KEY, 263_000), next - 263_000);
}

/// Finding 5: consumers behind the cached tail of more queues than the open-reader bound
/// all read their files, and no more than the bound stay open.
#[test]
fn readers_of_many_lagging_queues_stay_bounded() {
    use crate::constants::CQ_OPEN_READERS;
    let keys: Vec<QueueKey> = (0..CQ_OPEN_READERS as u32 + 8)
        .map(|queue| QueueKey { topic_id: 9, queue })
        .collect();
    let disk = SimDisk::new();
    let store = block_on(ShardStore::open(disk.clone(), config(), &keys))
        .expect("open")
        .0;
    for key in &keys {
        append(&store, *key, 120, 40);
    }
    block_on(store.persist_metadata()).expect("persist");
    for round in 0..3 {
        for key in &keys {
            assert_eq!(check_reads_to(&store, *key, round * 10, 10), 10);
            assert!(store.open_readers() <= CQ_OPEN_READERS);
        }
    }
}

/// Reads `count` entries from `from` (older than the cached tail here) and checks them.
fn check_reads_to(store: &ShardStore<SimDisk>, key: QueueKey, from: u64, count: usize) -> u64 {
    let entries = block_on(store.entries(key, from, count)).expect("entries");
    for (i, entry) in entries.iter().enumerate() {
        let bytes = block_on(store.read_record(*entry)).expect("record");
        let Ok(Decoded::Record(view)) = record::decode(&bytes, entry.commitlog_offset) else {
            panic!("offset {} does not decode", from + i as u64);
        };
        assert_eq!(view.body, body(key, from + i as u64));
    }
    entries.len() as u64
}

/// Finding 7: with no checkpoint the recovery scan covers the whole log, and a queue whose
/// files are lost took every entry into memory before anything was written. Past a file's
/// worth of unpersisted entries it is now rebuilt, segment by segment.
#[test]
fn recovery_without_a_checkpoint_keeps_a_lost_queue_out_of_memory() {
    let disk = SimDisk::new();
    let store = open(&disk);
    append(&store, KEY, 3000, 500);
    block_on(store.close()).expect("close");
    block_on(async {
        disk.remove_dir_all(&consume_queue::files_dir(&config().dir, KEY))
            .await
            .unwrap();
        disk.remove(&super::checkpoint::checkpoint_path(&config().dir))
            .await
            .unwrap();
    });
    let (store, report) =
        block_on(ShardStore::open(disk.clone(), config(), &[KEY, OTHER])).expect("open");
    // A 64 KiB segment holds about 1,400 of these records.
    assert!(
        report.consume_queue_peak_cached_entries < 1600,
        "{} entries of one queue in memory",
        report.consume_queue_peak_cached_entries
    );
    assert_eq!(store.queue_range(KEY), Some((0, 3000)));
    assert_eq!(check_reads(&store, KEY, 0), 3000);
    block_on(store.close()).expect("close");
    let store = open(&disk);
    assert_eq!(check_reads(&store, KEY, 0), 3000);
}

/// Finding 9: entries read from a file before the cached tail were checked against each
/// other but not against the tail they run into; a file entry overlapping the tail's first
/// now ends the answer before the tail.
#[test]
fn a_file_entry_overlapping_the_cached_tail_ends_the_answer() {
    let disk = SimDisk::new();
    let store = open(&disk);
    append(&store, KEY, 250, 50);
    block_on(store.persist_metadata()).expect("persist");
    let (_, next) = store.queue_range(KEY).expect("queue");
    let tail_start = next - store.cached_entries(KEY) as u64;
    assert!(tail_start > 3, "{tail_start}");
    let first_cached = block_on(store.entries(KEY, tail_start, 1)).expect("tail")[0];
    // The entry before the tail, in its file, claims the tail's first record.
    let file = (tail_start - 1) / FILE_ENTRIES * FILE_ENTRIES;
    let path = consume_queue::file_path(&config().dir, KEY, file);
    let at = (tail_start - 1 - file) as usize * CQ_ENTRY_BYTES;
    block_on(async {
        let f = disk.open(&path, false).await.unwrap();
        let block = at / BLOCK_BYTES * BLOCK_BYTES;
        let mut bytes = f.read_at(block as u64, 2 * BLOCK_BYTES).await.unwrap();
        bytes.resize(2 * BLOCK_BYTES, 0);
        encode_entry(&first_cached, &mut bytes[at - block..]);
        f.write_bytes_at(&bytes, block as u64).await.unwrap();
        f.fdatasync().await.unwrap();
    });
    let entries = block_on(store.entries(KEY, tail_start - 3, 10)).expect("entries");
    assert_eq!(entries.len(), 3, "stops before the tail");
    assert_eq!(entries[2], first_cached);
}

/// Finding 8: each legacy queue's migration is its own start-up stage, so the stage deadline
/// bounds one queue's conversion, not the whole store's.
#[test]
fn each_legacy_queue_migrates_in_its_own_stage() {
    let disk = SimDisk::new();
    legacy_store(&disk, 150);
    let stages = std::cell::RefCell::new(Vec::new());
    let record = |what: String| stages.borrow_mut().push(what);
    let (store, _) = block_on(ShardStore::open_reporting(
        disk.clone(),
        config(),
        &[KEY, OTHER],
        &record,
    ))
    .expect("open");
    let migrating: Vec<String> = stages
        .borrow()
        .iter()
        .filter(|what| what.starts_with("migrating consume queue"))
        .cloned()
        .collect();
    assert_eq!(migrating.len(), 2, "{migrating:?}");
    for key in [KEY, OTHER] {
        let legacy = consume_queue::legacy_path(&config().dir, key);
        assert!(
            migrating
                .iter()
                .any(|what| what.contains(&legacy.display().to_string())),
            "{migrating:?}"
        );
    }
    assert_eq!(check_reads(&store, KEY, 0), 150);
}
