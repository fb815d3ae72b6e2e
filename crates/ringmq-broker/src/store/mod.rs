//! Storage for one shard: the commitlog, the consume queues, the checkpoint and the metadata
//! files, all under `<store>/shard-<n>/`.
//!
//! Data enters through [`ShardStore::append`] (encode into the commitlog's aligned write buffer,
//! assign the queue offset, dispatch a consume-queue entry in memory) and becomes durable through
//! [`ShardStore::flush`] (one O_DIRECT write of the dirty blocks and one fdatasync: group commit).
//! It leaves through [`ShardStore::entries`] + [`ShardStore::read_record`]. On open, recovery
//! scans the commitlog forward from the checkpoint, truncates at the first torn or corrupt
//! record and re-dispatches consume queues. All I/O goes through the [`io::Disk`] seam.

pub mod checkpoint;
pub mod commitlog;
pub mod consume_queue;
#[cfg(test)]
mod cq_tests;
pub mod glommio_disk;
pub mod io;
pub mod lock;
pub mod record;

use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

pub use consume_queue::CqEntry;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt store: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }

    /// The file system had no space (ENOSPC, or EDQUOT for a quota): retryable once space is
    /// freed, unlike other I/O errors.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => {
                source.kind() == std::io::ErrorKind::StorageFull
                    || matches!(
                        source.raw_os_error(),
                        Some(libc::ENOSPC) | Some(libc::EDQUOT)
                    )
            }
            StoreError::Corrupt(_) => false,
        }
    }
}

/// Why an append was not taken. None of these lose data: the caller retries after the event
/// named, or answers the client with an error status.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AppendError {
    /// The write buffer holds `write_buffer_bytes` not yet written; retry after the next flush.
    #[error("write buffer full")]
    BufferFull,
    /// The record does not fit in the current segment and the next one is not created yet;
    /// retry after `prepare_next_segment`.
    #[error("next segment not ready")]
    SegmentNotReady,
    #[error("record of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("unknown queue {queue} of topic id {topic_id}")]
    UnknownQueue { topic_id: u32, queue: u32 },
    /// A replicated record does not fit this log where the master put it: the logs diverged.
    #[error("replicated record does not match this log: {0}")]
    Diverged(String),
    /// A previous write or sync failed; the store refuses appends until restarted.
    #[error("store failed: {0}")]
    Failed(String),
    /// A produce batch larger than the write buffer or than a segment can never be admitted
    /// whole; the client must send smaller batches.
    #[error("the batch takes {bytes} bytes in the commitlog, more than {limit} ({max_bytes}): send smaller batches")]
    BatchTooLarge {
        bytes: u64,
        limit: &'static str,
        max_bytes: u64,
    },
    /// The record needs the next segment, and creating it failed for lack of space.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// The wait for write-buffer space or the next segment outlasted the request's deadline:
    /// the flusher or the segment allocator is not keeping up.
    #[error("timed out after {waited_ms} ms waiting for {waiting_for}")]
    Busy {
        waited_ms: u64,
        waiting_for: &'static str,
    },
}

/// Identifies a queue inside a shard's store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueKey {
    pub topic_id: u32,
    pub queue: u32,
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// `<store>/shard-<n>`.
    pub dir: PathBuf,
    pub segment_size_bytes: u64,
    /// Bound on bytes appended but not yet written to disk, per shard.
    pub write_buffer_bytes: usize,
    /// Largest encoded record accepted.
    pub max_record_bytes: usize,
    /// Slave stores: recovery registers queues it finds records of but does not know yet (their
    /// topic had not been copied from the master when the slave stopped) instead of skipping
    /// them as records of deleted topics.
    pub adopt_unknown_queues: bool,
    /// Entries per consume-queue file (see [`consume_queue::DEFAULT_FILE_ENTRIES`]).
    pub cq_file_entries: u64,
    /// Entries of each queue kept in memory past those not yet persisted (the broker's
    /// `consume_queue_cache_entries`); older ones are read from the files.
    pub cq_cache_entries: u64,
}

/// Where an appended record went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The queue the record went to (a replicated record names its own).
    pub queue: QueueKey,
    pub queue_offset: u64,
    pub commitlog_offset: u64,
    /// Commitlog offset just past the record: the completion key.
    pub end_offset: u64,
}

/// What recovery found, for the start-up log line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// True when the abort marker was present: the previous run did not shut down cleanly.
    pub unclean_shutdown: bool,
    pub scan_start_offset: u64,
    pub scanned_bytes: u64,
    pub scanned_records: u64,
    /// Bytes past the last good record that were discarded (zeroed).
    pub truncated_bytes: u64,
    /// Why the scan stopped short, if it found a torn or corrupt record.
    pub truncation_reason: Option<String>,
    pub max_offset: u64,
    pub consume_queue_entries_trimmed: u64,
    pub consume_queue_entries_dispatched: u64,
    /// The most consume-queue entries one queue held in memory during recovery: bounded by
    /// a segment's entries or the file size, however long the log.
    pub consume_queue_peak_cached_entries: u64,
    pub duration: Duration,
}

pub use shard_store::ShardStore;
mod shard_store;
