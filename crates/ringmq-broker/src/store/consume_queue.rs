//! Consume queues: per (topic, queue), 20-byte entries pointing into the commitlog.
//!
//! Entries are dispatched in memory at append, into a bounded tail ([`QueueState`]), and
//! written by `persist_metadata` to fixed-size files `<dir>/consumequeue/<topic_id>/<queue>.cq/
//! <20-digit first offset>` (see [`file_path`]), rewriting the partial last block as it fills.
//! Entries older than the tail are read back from the files. A file's unused tail is zeros; an
//! entry with size 0 ends it (no record is smaller than its header). The single-file layout of
//! earlier versions (`<dir>/consumequeue/<topic_id>/<queue>`) is converted at open
//! ([`migrate_legacy`]).

use super::io::{Disk, DiskFile, BLOCK_BYTES};
use super::{QueueKey, StoreError};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

/// One consume-queue entry: 20 bytes on disk (commitlog offset u64, size u32, tag hash u64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CqEntry {
    pub commitlog_offset: u64,
    pub size: u32,
    pub tag_hash: u64,
}

pub const CQ_ENTRY_BYTES: usize = 20;

/// What a consume-queue entry may point at: a file entry outside these is corrupt.
#[derive(Clone, Copy, Debug)]
pub struct EntryLimits {
    pub max_record_bytes: u64,
    pub segment_size_bytes: u64,
}

/// The index of the first entry that cannot describe a record of this queue: a size below a
/// record header or above the largest record, a record crossing its segment's end, or one that
/// does not start after the previous entry's end. Entries carry no checksum of their own, so
/// this is what stands between a flipped bit and a read of gigabytes or a slice out of range.
pub fn first_invalid_entry(entries: &[CqEntry], limits: EntryLimits) -> Option<usize> {
    let header = crate::store::record::RECORD_HEADER_BYTES as u64;
    let mut previous_end = 0u64;
    entries.iter().position(|entry| {
        let size = entry.size as u64;
        let in_segment = entry.commitlog_offset % limits.segment_size_bytes;
        let bad = size < header
            || size > limits.max_record_bytes
            || in_segment + size > limits.segment_size_bytes
            || entry.commitlog_offset < previous_end;
        previous_end = entry.commitlog_offset.saturating_add(size);
        bad
    })
}

impl CqEntry {
    /// Where the record ends. A corrupt entry near the top of the offset range saturates, so it
    /// lies past every real log position instead of wrapping around to the front.
    pub fn end_offset(&self) -> u64 {
        self.commitlog_offset.saturating_add(self.size as u64)
    }
}

/// Entries per consume-queue file when the config does not say: 2^18 = 262,144 entries, 5 MiB.
/// RocketMQ uses 300,000 (6 MB). A multiple of 1024 entries (20 KiB, five 4 KiB blocks) keeps
/// every file a whole number of blocks with no padding; the config accepts any size (each
/// file is written on its own, its last block padded with zeros). Small enough
/// that retention frees space in fine steps and a recovery that reads one file's end reads
/// little; large enough that a queue of 10^9 entries has under 4,000 files.
pub const DEFAULT_FILE_ENTRIES: u64 = 1 << 18;

/// The in-memory state of one queue: its bounds and a bounded tail of its entries. Entries
/// before `tail_start` live only in the files.
#[derive(Default)]
pub struct QueueState {
    /// The first queue offset still served: files wholly before it are deleted.
    pub min_offset: u64,
    /// The queue offset of `tail[0]`.
    pub tail_start: u64,
    /// The newest entries: at least every entry not yet persisted, and the rest of the block
    /// the next write starts in.
    pub tail: VecDeque<CqEntry>,
    /// Entries before this queue offset are durable in the files.
    pub persisted: u64,
    /// Entries before this offset may have bytes in the files (a trim zeroes up to it).
    pub on_disk: u64,
    /// The queue's files whose names are durable: the start of the range each covers (a
    /// multiple of the file size) to its name (the first offset it holds, see `file_path`).
    /// Empty: the queue has no file yet (new) or lost them (a rebuild case after a checkpoint).
    pub files: BTreeMap<u64, u64>,
}

impl QueueState {
    /// One past the last entry: where the next append goes.
    pub fn next(&self) -> u64 {
        self.tail_start + self.tail.len() as u64
    }

    /// The cached entry at `offset`, if the tail holds it.
    pub fn cached(&self, offset: u64) -> Option<&CqEntry> {
        let at = offset.checked_sub(self.tail_start)?;
        self.tail.get(usize::try_from(at).ok()?)
    }

    pub fn push(&mut self, entry: CqEntry) {
        self.tail.push_back(entry);
    }

    /// An empty queue whose first entry will be `offset`.
    pub fn starting_at(offset: u64) -> QueueState {
        QueueState {
            min_offset: offset,
            tail_start: offset,
            persisted: offset,
            on_disk: offset,
            ..QueueState::default()
        }
    }

    /// Drops cached entries before `keep_from`, but never one a later write or read of the
    /// tail needs: the block of the first unpersisted entry, and always the last entry (the
    /// visible end is found from the tail).
    pub fn evict_before(&mut self, keep_from: u64, file_entries: u64) {
        let write_block = block_start_offset(self.persisted, file_entries);
        let keep_from = keep_from
            .min(write_block)
            .min(self.next().saturating_sub(1))
            .max(self.tail_start);
        let drop = (keep_from - self.tail_start) as usize;
        self.tail.drain(..drop);
        self.tail_start = keep_from;
    }
}

/// The queue offset of the first entry in the block holding `offset`'s entry in its file.
pub fn block_start_offset(offset: u64, file_entries: u64) -> u64 {
    let file = file_start(offset, file_entries);
    file + block_first_entry((offset - file) as usize) as u64
}

/// The first offset of the file holding queue offset `offset`.
pub fn file_start(offset: u64, file_entries: u64) -> u64 {
    offset / file_entries * file_entries
}

pub fn queue_dir(store_dir: &Path, topic_id: u32) -> PathBuf {
    store_dir.join("consumequeue").join(topic_id.to_string())
}

/// The single file of the layout before consume queues were split:
/// `consumequeue/<topic id>/<queue>`. Found at open, it is migrated (see `migrate_legacy`).
pub fn legacy_path(store_dir: &Path, key: QueueKey) -> PathBuf {
    queue_dir(store_dir, key.topic_id).join(key.queue.to_string())
}

/// The directory of a queue's files: `consumequeue/<topic id>/<queue>.cq`. The suffix keeps
/// it apart from a legacy file of the same queue, so a half-done migration is told by names.
pub fn files_dir(store_dir: &Path, key: QueueKey) -> PathBuf {
    queue_dir(store_dir, key.topic_id).join(format!("{}{FILES_DIR_SUFFIX}", key.queue))
}

pub const FILES_DIR_SUFFIX: &str = ".cq";

/// Present while a queue is being rebuilt from the commitlog: `consumequeue/<topic id>/
/// <queue>.rebuilding`. The rebuild removes the queue's files and writes them again segment
/// by segment while the old checkpoint stands; files a crash left half-written would load as
/// a valid, shorter queue, so an open that finds the marker rebuilds the queue again.
pub fn rebuild_marker_path(store_dir: &Path, key: QueueKey) -> PathBuf {
    queue_dir(store_dir, key.topic_id).join(format!("{}{REBUILD_MARKER_SUFFIX}", key.queue))
}

pub const REBUILD_MARKER_SUFFIX: &str = ".rebuilding";

/// A queue's file holding offsets from `first`: named by `first` in 20 digits, so names sort
/// as offsets do. A file covers offsets from `file_start(first)` (a multiple of the file
/// size) to the next multiple, entry `i` at index `i - file_start(first)`; its name is that
/// start, except for a queue's first file when the queue begins inside it (rebuilt after
/// retention deleted its oldest records): then the name is the first offset it holds, and the
/// entries before it are zeros.
pub fn file_path(store_dir: &Path, key: QueueKey, first: u64) -> PathBuf {
    files_dir(store_dir, key).join(format!("{first:020}"))
}

/// The first offset a file name stands for, if it is one of ours.
pub fn parse_file_name(name: &str) -> Option<u64> {
    if name.len() != 20 || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

pub fn encode_entry(entry: &CqEntry, out: &mut [u8]) {
    out[0..8].copy_from_slice(&entry.commitlog_offset.to_le_bytes());
    out[8..12].copy_from_slice(&entry.size.to_le_bytes());
    out[12..20].copy_from_slice(&entry.tag_hash.to_le_bytes());
}

fn decode_entry(bytes: &[u8]) -> CqEntry {
    CqEntry {
        commitlog_offset: u64::from_le_bytes(bytes[0..8].try_into().expect("8")),
        size: u32::from_le_bytes(bytes[8..12].try_into().expect("4")),
        tag_hash: u64::from_le_bytes(bytes[12..20].try_into().expect("8")),
    }
}

/// Entries of a file's content, up to the first zero-size entry.
pub fn decode_entries(bytes: &[u8]) -> Vec<CqEntry> {
    bytes
        .chunks_exact(CQ_ENTRY_BYTES)
        .map(decode_entry)
        .take_while(|e| e.size != 0)
        .collect()
}

/// First index whose record does not end at or before `confirmed_offset`.
pub fn visible_end(entries: &[CqEntry], confirmed_offset: u64) -> usize {
    entries.partition_point(|e| e.end_offset() <= confirmed_offset)
}

/// Reads a whole queue file: `None` if it does not exist. For tests and tools; the store
/// reads ranges ([`read_range`]).
pub async fn load<D: Disk>(disk: &D, path: &Path) -> Result<Option<Vec<CqEntry>>, StoreError> {
    let context = || format!("reading consume queue {}", path.display());
    if !disk
        .exists(path)
        .await
        .map_err(|e| StoreError::io(context(), e))?
    {
        return Ok(None);
    }
    let file = disk
        .open(path, false)
        .await
        .map_err(|e| StoreError::io(context(), e))?;
    let len = file.len().await.map_err(|e| StoreError::io(context(), e))?;
    let bytes = file
        .read_at(0, len as usize)
        .await
        .map_err(|e| StoreError::io(context(), e))?;
    Ok(Some(decode_entries(&bytes)))
}

/// Entries `index..index + count` of a file (indices within the file), in one read; fewer
/// where the file ends or holds a zero-size entry. The caller validates them.
pub async fn read_range<D: Disk>(
    disk: &D,
    path: &Path,
    index: u64,
    count: u64,
) -> Result<Vec<CqEntry>, StoreError> {
    let context = || format!("reading consume queue {}", path.display());
    let file = disk
        .open(path, false)
        .await
        .map_err(|e| StoreError::io(context(), e))?;
    read_entries(&file, index, count).await
}

/// [`read_range`] on a file already open.
pub async fn read_entries<F: DiskFile>(
    file: &F,
    index: u64,
    count: u64,
) -> Result<Vec<CqEntry>, StoreError> {
    let context = || format!("reading consume queue {}", file.path().display());
    let bytes = file
        .read_at(
            index * CQ_ENTRY_BYTES as u64,
            count as usize * CQ_ENTRY_BYTES,
        )
        .await
        .map_err(|e| StoreError::io(context(), e))?;
    Ok(decode_entries(&bytes))
}

/// How many entries a file holds (counting from index 0, entries before `first_index` being
/// absent by its name): the index of its first zero-size entry at or after it, found by binary
/// search (about 18 reads of one block for a full default file) rather than by reading the
/// file whole, so recovery reads little of each queue.
pub async fn entry_count<D: Disk>(
    disk: &D,
    path: &Path,
    first_index: u64,
    capacity: u64,
) -> Result<u64, StoreError> {
    let context = || format!("reading consume queue {}", path.display());
    let file = disk
        .open(path, false)
        .await
        .map_err(|e| StoreError::io(context(), e))?;
    let len = file.len().await.map_err(|e| StoreError::io(context(), e))?;
    // A file named past its range's start can be shorter than its first index (a crash
    // between its creation and its first fdatasync keeps the name, not the content): it then
    // holds no entry, and counts as ending at its name, never before it.
    let hi = (len / CQ_ENTRY_BYTES as u64).min(capacity).max(first_index);
    partition_point(&file, first_index, hi, |entry| entry.is_some()).await
}

/// The first index in `lo..hi` of a file whose entry (`None`: absent) fails `before`, which
/// must hold for a prefix of the range and fail for the rest: a binary search reading one
/// entry at a time, so finding an end or a minimum in a 5 MiB file costs about 18 small reads.
pub async fn partition_point<F: DiskFile>(
    file: &F,
    mut lo: u64,
    mut hi: u64,
    before: impl Fn(Option<&CqEntry>) -> bool,
) -> Result<u64, StoreError> {
    // Invariant: entries before `lo` pass `before`, the one at `hi` (if any) does not.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if before(read_entries(file, mid, 1).await?.first()) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// Converts a queue's legacy single file into split files, crash-safely: any files left by an
/// interrupted earlier attempt are removed, the new files are written and synced, their names
/// synced, and only then is the legacy file removed. A crash before that last step leaves the
/// legacy file, and the next open starts over; after it, the split files are complete. Reads
/// the legacy file one new file's worth at a time. Returns false when the legacy file held an
/// impossible entry: the entries before it are kept and the caller rebuilds the queue.
pub async fn migrate_legacy<D: Disk>(
    disk: &D,
    store_dir: &Path,
    key: QueueKey,
    file_entries: u64,
    limits: EntryLimits,
) -> Result<bool, StoreError> {
    let legacy = legacy_path(store_dir, key);
    let dir = files_dir(store_dir, key);
    let io = |what: &'static str, path: &Path| {
        let context = format!("{what} {} (consume-queue migration)", path.display());
        move |e| StoreError::io(context, e)
    };
    disk.remove_dir_all(&dir)
        .await
        .map_err(io("removing", &dir))?;
    disk.create_dir_all(&dir)
        .await
        .map_err(io("creating", &dir))?;
    let old = disk
        .open(&legacy, false)
        .await
        .map_err(io("opening", &legacy))?;
    let len = old.len().await.map_err(io("sizing", &legacy))?;
    let chunk_bytes = file_entries * CQ_ENTRY_BYTES as u64;
    let mut first = 0u64;
    let mut valid = true;
    loop {
        let bytes = old
            .read_at(first * CQ_ENTRY_BYTES as u64, chunk_bytes as usize)
            .await
            .map_err(io("reading", &legacy))?;
        let mut entries = decode_entries(&bytes);
        if let Some(bad) = first_invalid_entry(&entries, limits) {
            entries.truncate(bad);
            valid = false;
        }
        let full = entries.len() as u64 == file_entries;
        if !entries.is_empty() || first == 0 {
            let path = file_path(store_dir, key, first);
            write_from(disk, &path, &entries, 0, 0, 0).await?;
        }
        first += entries.len() as u64;
        if !full || !valid || first * CQ_ENTRY_BYTES as u64 >= len {
            break;
        }
    }
    disk.sync_dir(&dir).await.map_err(io("syncing", &dir))?;
    disk.remove(&legacy)
        .await
        .map_err(io("removing", &legacy))?;
    Ok(valid)
}

/// The index of the first entry touching the block that holds entry `from`: a writer needs
/// the entries from there on (those that exist) to rebuild that partial block.
pub fn block_first_entry(from: usize) -> usize {
    (from * CQ_ENTRY_BYTES) / BLOCK_BYTES * BLOCK_BYTES / CQ_ENTRY_BYTES
}

/// Writes entries from index `from` on into the file, zeroing up to `zero_to_bytes` past them,
/// then fdatasyncs. `tail` holds the queue's entries from index `tail_index` (at most
/// [`block_first_entry`]`(from)`) to the end, so the partial first block can be rebuilt.
pub async fn write_from<D: Disk>(
    disk: &D,
    path: &Path,
    tail: &[CqEntry],
    tail_index: usize,
    from: usize,
    zero_to_bytes: u64,
) -> Result<(), StoreError> {
    // Entries of the rewritten block before `tail_index` are written as zeros: only a queue's
    // first file, named past its start (see `file_path`), has no entries there.
    assert!(tail_index <= from, "consume-queue tail starts too late");
    let context = || format!("writing consume queue {}", path.display());
    let file = disk
        .open(path, true)
        .await
        .map_err(|e| StoreError::io(context(), e))?;
    let block_start = (from * CQ_ENTRY_BYTES) / BLOCK_BYTES * BLOCK_BYTES;
    let data_end = (tail_index + tail.len()) * CQ_ENTRY_BYTES;
    let end = data_end.max(zero_to_bytes as usize).div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
    if end > block_start {
        let mut image = vec![0u8; end - block_start];
        let first = block_start / CQ_ENTRY_BYTES;
        let skew = block_start - first * CQ_ENTRY_BYTES;
        let mut scratch = [0u8; CQ_ENTRY_BYTES];
        for (i, entry) in tail
            .iter()
            .enumerate()
            .skip(first.saturating_sub(tail_index))
        {
            let i = i + tail_index;
            encode_entry(entry, &mut scratch);
            let at = i * CQ_ENTRY_BYTES;
            let (src, dst) = if at < block_start {
                (&scratch[skew..], 0)
            } else {
                (&scratch[..], at - block_start)
            };
            image[dst..dst + src.len()].copy_from_slice(src);
        }
        file.write_bytes_at(&image, block_start as u64)
            .await
            .map_err(|e| StoreError::io(context(), e))?;
    }
    file.fdatasync()
        .await
        .map_err(|e| StoreError::io(context(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::disk::SimDisk;
    use futures_lite::future::block_on;

    fn entry(i: u64) -> CqEntry {
        CqEntry {
            commitlog_offset: i * 100,
            size: 100,
            tag_hash: i ^ 0xABCD,
        }
    }

    #[test]
    fn incremental_writes_across_blocks_round_trip() {
        let disk = SimDisk::new();
        let path = Path::new("/s/consumequeue/1/0");
        block_on(crate::store::io::Disk::create_dir_all(
            &disk,
            path.parent().unwrap(),
        ))
        .unwrap();
        let all: Vec<CqEntry> = (0..700).map(entry).collect();
        let mut persisted = 0;
        for n in [1usize, 5, 204, 205, 410, 700] {
            let tail_index = block_first_entry(persisted);
            let tail = &all[tail_index..n];
            block_on(write_from(&disk, path, tail, tail_index, persisted, 0)).unwrap();
            persisted = n;
            let loaded = block_on(load(&disk, path)).unwrap().unwrap();
            assert_eq!(loaded, all[..n]);
        }
        block_on(write_from(&disk, path, &all[..3], 0, 3, 700 * 20)).unwrap();
        assert_eq!(block_on(load(&disk, path)).unwrap().unwrap(), all[..3]);
    }

    #[test]
    fn visible_end_is_first_entry_past_confirmed() {
        let all: Vec<CqEntry> = (0..10).map(entry).collect();
        assert_eq!(visible_end(&all, 0), 0);
        assert_eq!(visible_end(&all, 99), 0);
        assert_eq!(visible_end(&all, 100), 1);
        assert_eq!(visible_end(&all, 550), 5);
        assert_eq!(visible_end(&all, 10_000), 10);
    }
}
