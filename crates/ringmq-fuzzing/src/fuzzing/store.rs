//! Targets for what the store reads back from disk: commitlog records, the checkpoint, consume
//! queue entries, and recovery of a whole store whose files were damaged.
//!
//! The store runs on [`SimDisk`], whose futures complete at once, so `block_on` drives it
//! without a glommio executor.

use super::Input;
use crate::store::checkpoint::{checkpoint_path, Checkpoint, CHECKPOINT_BYTES};
use crate::store::commitlog::{segment_file_name, CommitLog};
use crate::store::consume_queue::{self, file_path, CQ_ENTRY_BYTES};
use crate::store::record::{self, key_hash, Decoded, RecordInput, RecordView};
use crate::store::{AppendError, QueueKey, ShardStore, StoreConfig};
use crate::testing::disk::SimDisk;
use futures_lite::future::block_on;
use std::hint::black_box;
use std::path::PathBuf;

/// Queues the fuzzed stores own: two of one topic, one of another.
pub(crate) const QUEUES: [QueueKey; 3] = [
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

/// Most records one input appends: enough to roll a 64 KiB segment, few enough to stay fast.
const MAX_RECORDS_PER_INPUT: u8 = 48;

/// Small segments, buffer and records (the smallest the broker allows), so that a short input
/// rolls segments and fills the write buffer.
pub(crate) fn store_config() -> StoreConfig {
    StoreConfig {
        dir: PathBuf::from("/fuzz/shard-0"),
        segment_size_bytes: 64 * 1024,
        write_buffer_bytes: 16 * 1024,
        max_record_bytes: 4 * 1024,
        adopt_unknown_queues: true,
        cq_file_entries: 1024,
        cq_cache_entries: 64,
    }
}

pub(crate) fn open_store(disk: &SimDisk) -> Result<ShardStore<SimDisk>, String> {
    block_on(ShardStore::open(disk.clone(), store_config(), &QUEUES))
        .map(|(store, _report)| store)
        .map_err(|e| e.to_string())
}

/// Runs `append` as a shard does: flushing when the write buffer is full and creating the next
/// segment when asked. `Err` is the append's own refusal.
pub(crate) fn append_waiting(
    store: &ShardStore<SimDisk>,
    append: impl Fn() -> Result<crate::store::Appended, AppendError>,
) -> Result<(), AppendError> {
    loop {
        match append() {
            Ok(_) => return Ok(()),
            Err(AppendError::BufferFull) => {
                block_on(store.flush()).map_err(|e| AppendError::Failed(e.to_string()))?;
            }
            Err(AppendError::SegmentNotReady) => {
                block_on(store.prepare_next_segment())
                    .map_err(|e| AppendError::Failed(e.to_string()))?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Appends the records `input` describes (a count, then per record its queue and field
/// lengths), flushing whenever the input asks. Stops at the first refused append.
pub(crate) fn append_from(store: &ShardStore<SimDisk>, input: &mut Input<'_>) {
    let count = input.u8() % MAX_RECORDS_PER_INPUT;
    for _ in 0..count {
        let key = input.pick(&QUEUES);
        let flush = input.u8() & 1 == 1;
        let key_len = input.u8() as usize % 16;
        let properties_len = input.u8() as usize % 16;
        let body_len = input.u16() as usize % 2048;
        let born_timestamp_ms = input.u64();
        let record = RecordInput {
            topic_id: key.topic_id,
            queue_id: key.queue,
            queue_offset: 0,
            born_timestamp_ms,
            store_timestamp_ms: born_timestamp_ms ^ 1,
            topic: if key.topic_id == 1 { "orders" } else { "audit" },
            key: input.bytes(key_len),
            properties: input.bytes(properties_len),
            body: input.bytes(body_len),
        };
        if append_waiting(store, || store.append(&record)).is_err() {
            return;
        }
        if flush && block_on(store.flush()).is_err() {
            return;
        }
    }
}

pub(crate) fn segment_path(base: u64) -> PathBuf {
    CommitLog::<SimDisk>::dir_of(&store_config()).join(segment_file_name(base))
}

/// The log bytes of `[0, end)` as a master holds them on disk, segment after segment.
pub(crate) fn log_bytes(disk: &SimDisk, end: u64) -> Vec<u8> {
    let segment = store_config().segment_size_bytes;
    let mut out = Vec::with_capacity(end as usize);
    let mut base = 0;
    while base < end {
        let mut content = disk.content(&segment_path(base)).unwrap_or_default();
        content.resize(segment as usize, 0);
        let take = (end - base).min(segment) as usize;
        out.extend_from_slice(&content[..take]);
        base += segment;
    }
    out
}

/// A commitlog record at a position. The first byte's low bit asks for the crc32c to be
/// recomputed (so mutations reach the checks after it); the next 8 bytes are the position; the
/// rest is the log from there. Records are decoded one after another as the recovery scan does,
/// and each one must re-encode to a record that decodes to the same fields.
pub fn commitlog_record(data: &[u8]) {
    let mut input = Input::new(data);
    let fix_crc = input.u8() & 1 == 1;
    let mut offset = input.u64();
    let mut log = input.rest().to_vec();
    let mut at = 0usize;
    while at < log.len() {
        if fix_crc {
            recompute_crc(&mut log[at..]);
        }
        let view = match black_box(record::decode(&log[at..], offset)) {
            Ok(Decoded::Record(view)) => view,
            Ok(Decoded::EndOfSegment | Decoded::EndOfData) => return,
            Err(e) => {
                black_box(e.to_string());
                return;
            }
        };
        check_record_round_trip(&view, &log[at..at + view.total_size as usize]);
        let Some(end) = offset.checked_add(u64::from(view.total_size)) else {
            return;
        };
        assert_eq!(view.end_offset(), end);
        at += view.total_size as usize;
        offset = end;
    }
}

/// Rewrites the crc32c of the record at the front of `rec`, when its size field fits.
pub(crate) fn recompute_crc(rec: &mut [u8]) {
    if rec.len() < record::RECORD_HEADER_BYTES {
        return;
    }
    let total = u32::from_le_bytes(rec[..4].try_into().expect("4 bytes")) as usize;
    if (record::RECORD_HEADER_BYTES..=rec.len()).contains(&total) {
        let crc = crc32c::crc32c(&rec[12..total]);
        rec[8..12].copy_from_slice(&crc.to_le_bytes());
    }
}

fn check_record_round_trip(view: &RecordView<'_>, wire: &[u8]) {
    let input = RecordInput {
        topic_id: view.topic_id,
        queue_id: view.queue_id,
        queue_offset: view.queue_offset,
        born_timestamp_ms: view.born_timestamp_ms,
        store_timestamp_ms: view.store_timestamp_ms,
        topic: view.topic,
        key: view.key,
        properties: view.properties,
        body: view.body,
    };
    assert_eq!(input.encoded_len(), wire.len(), "record length changed");
    let mut encoded = vec![0u8; input.encoded_len()];
    input.encode_into(view.commitlog_offset, &mut encoded);
    let Ok(Decoded::Record(again)) = record::decode(&encoded, view.commitlog_offset) else {
        panic!("a re-encoded record does not decode");
    };
    // The encoder writes the reserved fields as zero and computes the key hash itself.
    let expected = RecordView {
        flags: 0,
        key_hash: key_hash(view.key),
        ..*view
    };
    assert_eq!(again, expected, "record round trip changed the fields");
    if view.flags == 0 && view.key_hash == key_hash(view.key) && wire[70..72] == [0, 0] {
        assert_eq!(encoded, wire, "record encoding is not canonical");
    }
}

/// The store's other files: the first byte picks the checkpoint decoder, the consume-queue
/// decoder, or recovery of a whole store (records appended, files damaged, store reopened).
pub fn store_files(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => checkpoint(rest),
        1 => consume_queue_entries(rest),
        _ => recovery(rest),
    }
}

fn checkpoint(bytes: &[u8]) {
    if let Some(cp) = black_box(Checkpoint::decode(bytes)) {
        if bytes.len() == CHECKPOINT_BYTES {
            assert_eq!(cp.encode(), bytes, "checkpoint encoding is not canonical");
        } else {
            // A version-1 checkpoint (before retention) reads with head 0 and is rewritten as
            // the current version, which must read back the same.
            assert_eq!(cp.log_head, 0, "a version-1 checkpoint has no log head");
            assert_eq!(Checkpoint::decode(&cp.encode()), Some(cp));
        }
        black_box(cp.scan_start());
    }
}

/// A consume-queue file: entries up to the first zero size, each pointing into the log.
fn consume_queue_entries(bytes: &[u8]) {
    let (confirmed, file) = bytes.split_at(bytes.len().min(8));
    let mut confirmed_offset = [0u8; 8];
    confirmed_offset[..confirmed.len()].copy_from_slice(confirmed);
    let entries = black_box(consume_queue::decode_entries(file));
    assert!(entries.len() <= file.len() / CQ_ENTRY_BYTES);
    let mut encoded = vec![0u8; entries.len() * CQ_ENTRY_BYTES];
    for (entry, out) in entries.iter().zip(encoded.chunks_exact_mut(CQ_ENTRY_BYTES)) {
        consume_queue::encode_entry(entry, out);
    }
    assert_eq!(consume_queue::decode_entries(&encoded), entries);
    assert_eq!(
        encoded,
        file[..encoded.len()],
        "entries re-encode differently"
    );
    for entry in &entries {
        black_box(entry.end_offset());
    }
    let visible = consume_queue::visible_end(&entries, u64::from_le_bytes(confirmed_offset));
    assert!(visible <= entries.len());
}

/// The files a store can find damaged at open: a segment, the checkpoint, a consume queue.
fn damage_target(choice: u8) -> PathBuf {
    let dir = store_config().dir;
    match choice % 5 {
        0 | 1 => segment_path(0),
        2 => checkpoint_path(&dir),
        q => file_path(&dir, QUEUES[q as usize - 3], 0),
    }
}

/// Records appended from the input; then either a simulated crash or a clean close followed by
/// flipped bits in the files; then the store reopened and every entry read back. Nothing a disk
/// can hold may panic recovery or a read; after a clean close with no damage, every record
/// must come back.
fn recovery(data: &[u8]) {
    let mut input = Input::new(data);
    let disk = SimDisk::new();
    let store = open_store(&disk).expect("a new store opens");
    append_from(&store, &mut input);
    let crash_seed = input.u64();
    let disk = if crash_seed & 1 == 1 {
        disk.crash(crash_seed)
    } else {
        block_on(store.close()).expect("a simulated disk does not fail");
        disk
    };
    let before = (store.max_offset(), all_records(&store));
    drop(store);
    let flips = input.u8() % 8;
    for _ in 0..flips {
        let path = damage_target(input.u8());
        let at = u64::from(input.u16());
        disk.flip_bit(&path, at, input.u8());
    }
    let Ok(reopened) = black_box(open_store(&disk)) else {
        return;
    };
    let after = (reopened.max_offset(), all_records(&reopened));
    if crash_seed & 1 == 0 && flips == 0 {
        assert_eq!(after, before, "a clean close lost or changed records");
    }
}

/// Every record the store's consume queues point to, read as a pull does.
fn all_records(store: &ShardStore<SimDisk>) -> Vec<Result<Vec<u8>, String>> {
    let mut out = Vec::new();
    for key in QUEUES {
        let entries = match block_on(store.entries(key, 0, usize::MAX)) {
            Ok(entries) => entries,
            Err(e) => {
                out.push(Err(e.to_string()));
                continue;
            }
        };
        for entry in entries {
            out.push(block_on(store.read_record(entry)).map_err(|e| e.to_string()));
        }
    }
    out
}
