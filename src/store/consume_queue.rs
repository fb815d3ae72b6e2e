//! Consume queues: per (topic, queue), 20-byte entries pointing into the commitlog.

/// One consume-queue entry: 20 bytes on disk (commitlog offset u64, size u32, tag hash u64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CqEntry {
    pub commitlog_offset: u64,
    pub size: u32,
    pub tag_hash: u64,
}

pub const CQ_ENTRY_BYTES: usize = 20;
