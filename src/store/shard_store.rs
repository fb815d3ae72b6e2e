//! [`ShardStore`]: the commitlog and consume queues of one shard behind one API.
//!
//! All methods take `&self` and never hold an internal borrow across an `.await`, so the shard's
//! tasks (connections, the flusher, the segment allocator) can share one `Rc<ShardStore>`.
//! Only one `flush` and one `prepare_next_segment` run at a time: the shard has one task each.

use super::io::Disk;
use super::record::RecordInput;
use super::{AppendError, Appended, CqEntry, QueueKey, RecoveryReport, StoreConfig, StoreError};

pub struct ShardStore<D: Disk> {
    _disk: D,
}

impl<D: Disk> ShardStore<D> {
    /// Opens (creating if needed) the store in `config.dir` and recovers it.
    ///
    /// `queues` are the queues this shard owns according to topic metadata; records for other
    /// (topic id, queue) pairs (deleted topics) are skipped by dispatch. Writes the abort marker.
    pub async fn open(
        disk: D,
        config: StoreConfig,
        queues: &[QueueKey],
    ) -> Result<(Self, RecoveryReport), StoreError> {
        let _ = (disk, config, queues);
        todo!()
    }

    /// Registers a new, empty queue (a topic was created).
    pub fn add_queue(&self, key: QueueKey) {
        let _ = key;
        todo!()
    }

    /// Forgets every queue of a topic and removes its consume-queue files.
    pub async fn remove_topic(&self, topic_id: u32) -> Result<(), StoreError> {
        let _ = topic_id;
        todo!()
    }

    /// Appends one record to the commitlog write buffer, assigning the next queue offset of
    /// `input`'s queue (the `queue_offset` field of `input` is ignored and filled in), and
    /// dispatches its consume-queue entry in memory. Memory only: durable after `flush`.
    pub fn append(&self, input: &RecordInput<'_>) -> Result<Appended, AppendError> {
        let _ = input;
        todo!()
    }

    /// Writes every dirty block present at the call and fdatasyncs: one sync covers every
    /// append made before the call (group commit). Returns the new flushed offset.
    pub async fn flush(&self) -> Result<u64, StoreError> {
        todo!()
    }

    /// Writes the consume queues' new entries and the checkpoint (flushed offset and the
    /// commitlog offset up to which consume queues are on disk).
    pub async fn persist_metadata(&self) -> Result<(), StoreError> {
        todo!()
    }

    /// True when the next segment should be created and zero-filled ahead of need.
    pub fn needs_next_segment(&self) -> bool {
        todo!()
    }

    /// Creates and zero-fills the next segment (no-op if it exists).
    pub async fn prepare_next_segment(&self) -> Result<(), StoreError> {
        todo!()
    }

    /// Commitlog offset just past the last appended record.
    pub fn max_offset(&self) -> u64 {
        todo!()
    }

    /// Commitlog offset up to which an fdatasync has completed.
    pub fn flushed_offset(&self) -> u64 {
        todo!()
    }

    /// Bytes appended but not yet flushed.
    pub fn dirty_bytes(&self) -> u64 {
        todo!()
    }

    /// (min queue offset, next queue offset) of a queue, counting every appended entry.
    pub fn queue_range(&self, key: QueueKey) -> Option<(u64, u64)> {
        let _ = key;
        todo!()
    }

    /// One past the highest queue offset whose record ends at or before `confirmed_offset`.
    pub fn visible_end(&self, key: QueueKey, confirmed_offset: u64) -> Option<u64> {
        let _ = (key, confirmed_offset);
        todo!()
    }

    /// Consume-queue entries of `key` from queue offset `from`, at most `max_count`.
    pub fn entries(&self, key: QueueKey, from: u64, max_count: usize) -> Vec<CqEntry> {
        let _ = (key, from, max_count);
        todo!()
    }

    /// The bytes of the record an entry points to (from the write buffer or from disk).
    pub async fn read_record(&self, entry: CqEntry) -> Result<Vec<u8>, StoreError> {
        let _ = entry;
        todo!()
    }

    /// Clean shutdown: flush, persist metadata, remove the abort marker.
    pub async fn close(&self) -> Result<(), StoreError> {
        todo!()
    }
}
