//! The checkpoint and the abort marker of one shard's store.
//!
//! `<dir>/checkpoint` (replaced atomically) says up to which commitlog offset an fdatasync has
//! completed (`flushed_offset`) and up to which offset the consume-queue files hold every entry
//! (`dispatched_offset`); recovery scans forward from the smaller. A missing or damaged
//! checkpoint means: scan from the oldest segment. `<dir>/abort` exists while a store is open;
//! finding it at open means the previous run did not close cleanly.
//!
//! It also holds the *log head*, the commitlog's first retained byte as of the last
//! checkpoint. Retention moves the head in memory and unlinks the segment without writing
//! anything (a full disk must not stop it); the next regular checkpoint records the head.
//! Recovery removes any segment still present before the recorded head (an unlink that
//! failed), and starts the log at its oldest segment when that lies past the recorded head:
//! a front segment missing is taken as deleted, whether retention or an operator removed it.
//! The head therefore does not tell retention from lost data; what recovery guards is that a
//! segment is deleted only once the checkpoint's consume queues cover it, so rebuilding them
//! never needs its records.
//!
//! Layout, little-endian: magic u32, version u32, flushed_offset u64, dispatched_offset u64,
//! log_head u64, crc32c u32 of the preceding 32 bytes. Version 1 (before retention) lacks
//! `log_head` (24 bytes and the crc) and reads as head 0.

use std::path::{Path, PathBuf};

const CHECKPOINT_MAGIC: u32 = 0x434B_5054;
const CHECKPOINT_VERSION: u32 = 2;
pub const CHECKPOINT_BYTES: usize = 36;
/// A version-1 checkpoint, written by brokers before retention.
const CHECKPOINT_V1_BYTES: usize = 28;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub flushed_offset: u64,
    pub dispatched_offset: u64,
    /// The commitlog's first retained byte when this checkpoint was written: every segment
    /// before it is deleted (or about to be, after a failed unlink). Later deletions may have
    /// moved the real head past it.
    pub log_head: u64,
}

pub fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join("checkpoint")
}

pub fn abort_marker_path(dir: &Path) -> PathBuf {
    dir.join("abort")
}

impl Checkpoint {
    /// Where recovery may start scanning: every record before it is durable and dispatched.
    pub fn scan_start(&self) -> u64 {
        self.flushed_offset.min(self.dispatched_offset)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CHECKPOINT_BYTES);
        out.extend_from_slice(&CHECKPOINT_MAGIC.to_le_bytes());
        out.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.flushed_offset.to_le_bytes());
        out.extend_from_slice(&self.dispatched_offset.to_le_bytes());
        out.extend_from_slice(&self.log_head.to_le_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// `None` for anything but a whole, intact checkpoint of this version or version 1.
    pub fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        let (version, body) = match bytes.len() {
            CHECKPOINT_BYTES => (CHECKPOINT_VERSION, 32),
            CHECKPOINT_V1_BYTES => (1, 24),
            _ => return None,
        };
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        if u32_at(0) != CHECKPOINT_MAGIC || u32_at(4) != version {
            return None;
        }
        if crc32c::crc32c(&bytes[..body]) != u32_at(body) {
            return None;
        }
        Some(Checkpoint {
            flushed_offset: u64_at(8),
            dispatched_offset: u64_at(16),
            log_head: if version == 1 { 0 } else { u64_at(24) },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_bit_flip_rejected() {
        let cp = Checkpoint {
            flushed_offset: 123_456,
            dispatched_offset: 99,
            log_head: 65_536,
        };
        let bytes = cp.encode();
        assert_eq!(Checkpoint::decode(&bytes), Some(cp));
        assert_eq!(cp.scan_start(), 99);
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(Checkpoint::decode(&bad), None, "bit {bit}");
        }
        assert_eq!(Checkpoint::decode(&bytes[..35]), None);
    }

    #[test]
    fn a_version_1_checkpoint_reads_with_head_zero() {
        let mut v1 = Vec::new();
        v1.extend_from_slice(&CHECKPOINT_MAGIC.to_le_bytes());
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&8192u64.to_le_bytes());
        v1.extend_from_slice(&4096u64.to_le_bytes());
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        let expected = Checkpoint {
            flushed_offset: 8192,
            dispatched_offset: 4096,
            log_head: 0,
        };
        assert_eq!(Checkpoint::decode(&v1), Some(expected));
        v1[4] = 2;
        assert_eq!(Checkpoint::decode(&v1), None, "a v2 header on a v1 body");
    }
}
