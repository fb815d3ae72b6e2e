//! Consume queues: per (topic, queue), 20-byte entries pointing into the commitlog.
//!
//! Entries are dispatched in memory at append (queue offset = index in the queue's Vec, the
//! min offset is always 0 until retention exists) and written to
//! `<dir>/consumequeue/<topic_id>/<queue>` by `persist_metadata`, rewriting the partial last
//! block as it fills. A file's unused tail is zeros; an entry with size 0 ends it (no record is
//! smaller than its header).

use super::io::{Disk, DiskFile, BLOCK_BYTES};
use super::{QueueKey, StoreError};
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

/// The in-memory state of one queue.
#[derive(Default)]
pub struct QueueState {
    /// Every entry, index = queue offset.
    pub entries: Vec<CqEntry>,
    /// How many leading entries the file holds durably.
    pub persisted: usize,
    /// The file exists (possibly empty); a missing file after a checkpoint means it was lost.
    pub file_exists: bool,
}

pub fn queue_dir(store_dir: &Path, topic_id: u32) -> PathBuf {
    store_dir.join("consumequeue").join(topic_id.to_string())
}

pub fn queue_path(store_dir: &Path, key: QueueKey) -> PathBuf {
    queue_dir(store_dir, key.topic_id).join(key.queue.to_string())
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

/// Reads a queue file: `None` if it does not exist.
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

/// The index of the first entry touching the block that holds entry `from`: a writer needs
/// the entries from there on to rebuild that partial block.
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
    assert!(
        tail_index <= block_first_entry(from),
        "consume-queue tail starts too late"
    );
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
        for (i, entry) in tail.iter().enumerate().skip(first - tail_index) {
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
