//! A shard log's identity: a random id fixed when the log is created (or adopted from the
//! master by an empty slave) and its epochs, in `<shard>/replication.json`, written atomically.
//!
//! A slave whose log has another id is refused: it holds some other log's bytes. Epochs mark
//! where each master's term started; promotion opens a new one at the new master's end, which
//! is where a former master rejoining as a slave must cut its log.
//!
//! An epoch is a (term, generation) pair packed into the `u32` that replication.json, the
//! handshake and the name-server registration carry: `term << 16 | generation`, so comparing
//! the packed numbers compares terms first. A promotion opens generation 0 of a term past
//! every term the broker has seen ([`LogIdentity::open_term`]); a master's restart after a
//! crash opens the next generation of its own term ([`LogIdentity::next_generation`]). A
//! master that crashed and came back therefore stays below the slave promoted in its place
//! however often it restarts, and the name servers' "highest epoch is the master" rule holds.
//! Stores written before the packing hold small epochs: they read as term 0.

use super::error::ReplicationError;
use super::protocol::{Epoch, LogId};
use crate::store::io::Disk;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogIdentity {
    pub log_id: LogId,
    pub epochs: Vec<Epoch>,
    /// Offsets at which this log was cut back because it had diverged from its master's.
    #[serde(default)]
    pub divergence_points: Vec<u64>,
    /// Set by `cluster promote` or `cluster demote`: the role this shard runs with from then on, whatever the
    /// configuration says, so a restart cannot silently turn a promoted master into a slave.
    #[serde(default)]
    pub promoted_role: Option<crate::config::BrokerRole>,
    /// Set by `cluster demote`: the master this shard follows from then on, whatever the
    /// configuration says (with `promoted_role` SLAVE).
    #[serde(default)]
    pub master_addr: Option<std::net::SocketAddr>,
    /// SYNC_MASTER: the offset enough slaves had acknowledged, written with each checkpoint,
    /// so a restarted master shows consumers what was confirmed before it stopped instead of
    /// nothing until a slave acknowledges again.
    #[serde(default)]
    pub replicated_offset: u64,
}

pub fn identity_path(shard_dir: &Path) -> PathBuf {
    shard_dir.join("replication.json")
}

fn random_log_id() -> LogId {
    let mut id = [0u8; 16];
    // getrandom(2) never fails for 16 bytes once the pool is initialised; if it somehow
    // does, fall back to time and pid, which still makes a collision vanishingly unlikely.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    if n != id.len() as isize {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        id.copy_from_slice(&(nanos ^ ((std::process::id() as u128) << 64)).to_le_bytes());
    }
    if id == [0; 16] {
        id[0] = 1;
    }
    id
}

/// Bits of an epoch that hold the generation; the term is above them.
pub const GENERATION_BITS: u32 = 16;
/// Largest generation (and term): a master restarted after a crash this many times in one
/// term refuses to start as master (see [`LogIdentity::next_generation`]).
pub const MAX_GENERATION: u32 = (1 << GENERATION_BITS) - 1;
pub const MAX_TERM: u32 = u32::MAX >> GENERATION_BITS;

/// The term of a packed epoch.
pub fn epoch_term(epoch: u32) -> u32 {
    epoch >> GENERATION_BITS
}

/// The generation of a packed epoch.
pub fn epoch_generation(epoch: u32) -> u32 {
    epoch & MAX_GENERATION
}

/// The first epoch of the term after every term in `seen` (packed epochs): what a promotion
/// opens; `None` when a term past [`MAX_TERM`] would be needed.
pub fn promotion_epoch(seen: impl IntoIterator<Item = u32>) -> Option<u32> {
    let term = seen.into_iter().map(epoch_term).max().unwrap_or(0);
    (term < MAX_TERM).then(|| (term + 1) << GENERATION_BITS)
}

/// `epoch` as `term.generation`, for logs and status output.
pub fn describe_epoch(epoch: u32) -> String {
    format!("{}.{}", epoch_term(epoch), epoch_generation(epoch))
}

impl LogIdentity {
    pub fn new() -> LogIdentity {
        LogIdentity {
            log_id: random_log_id(),
            epochs: vec![(1, 0)],
            divergence_points: Vec::new(),
            promoted_role: None,
            master_addr: None,
            replicated_offset: 0,
        }
    }

    pub fn last_epoch(&self) -> u32 {
        self.epochs.last().map(|(e, _)| *e).unwrap_or(0)
    }

    /// The next generation of the current term, starting at `offset`: a master restarting
    /// after a crash. Its term stays below a slave promoted meanwhile, so the restarted master
    /// never outranks its successor. Fails once the term's generations are used up: rather
    /// than wrap into the next term (which would outrank a successor), the shard does not
    /// start as master.
    pub fn next_generation(&self, offset: u64) -> Result<LogIdentity, ReplicationError> {
        let last = self.last_epoch();
        if epoch_generation(last) == MAX_GENERATION {
            return Err(ReplicationError::Store(format!(
                "epoch {} is the last generation of term {}: this master restarted after a \
                 crash {MAX_GENERATION} times in one term and cannot open another generation; \
                 promote it (`cluster promote`, a new term) or start it as a SLAVE",
                describe_epoch(last),
                epoch_term(last)
            )));
        }
        let mut next = self.clone();
        next.epochs.push((last + 1, offset));
        Ok(next)
    }

    /// Opens `epoch` (a promotion's, from [`promotion_epoch`]) at `offset`. An epoch that is
    /// not past the last one (another shard's term moved meanwhile) is raised to the next
    /// term of this log, so the epoch list stays increasing.
    pub fn open_term(&self, epoch: u32, offset: u64) -> Option<LogIdentity> {
        let epoch = epoch.max(promotion_epoch([self.last_epoch()])?);
        let mut next = self.clone();
        next.epochs.push((epoch, offset));
        Some(next)
    }

    /// Opens exactly `epoch` at `offset` (controller mode: the term is the controllers'
    /// master epoch, never one of this log's own choosing); `None` unless `epoch` is past
    /// this log's last epoch.
    pub fn open_exact(&self, epoch: u32, offset: u64) -> Option<LogIdentity> {
        (epoch > self.last_epoch()).then(|| {
            let mut next = self.clone();
            next.epochs.push((epoch, offset));
            next
        })
    }

    /// Where this log stops sharing `master`'s history: the start of its first epoch that the
    /// master's epoch list does not hold with the same start (a generation this shard opened
    /// after a crash, or a term it was promoted to, that the master never had); `u64::MAX`
    /// when every epoch is the master's. Bytes from there were written by this shard alone.
    pub fn unshared_from(&self, master: &[super::protocol::Epoch]) -> u64 {
        self.epochs
            .iter()
            .find(|e| !master.contains(e))
            .map_or(u64::MAX, |(_, start)| *start)
    }

    pub async fn load_or_create<D: Disk>(
        disk: &D,
        shard_dir: &Path,
    ) -> Result<LogIdentity, ReplicationError> {
        let path = identity_path(shard_dir);
        match disk.read_file(&path).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).map_err(|e| {
                ReplicationError::Store(format!(
                    "{}: not a valid log identity: {e}",
                    path.display()
                ))
            }),
            Ok(None) => {
                let identity = LogIdentity::new();
                identity.save(disk, shard_dir).await?;
                Ok(identity)
            }
            Err(e) => Err(ReplicationError::io(path.display().to_string(), e)),
        }
    }

    pub async fn save<D: Disk>(&self, disk: &D, shard_dir: &Path) -> Result<(), ReplicationError> {
        let path = identity_path(shard_dir);
        let bytes = serde_json::to_vec(self).expect("identity serializes");
        disk.write_atomic(&path, bytes)
            .await
            .map_err(|e| ReplicationError::io(path.display().to_string(), e))
    }
}

impl Default for LogIdentity {
    fn default() -> Self {
        LogIdentity::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crashed_master_stays_below_the_slave_promoted_in_its_place() {
        let master = LogIdentity::new();
        assert_eq!(master.last_epoch(), 1, "a new log: term 0, generation 1");
        // The slave holds the master's epochs; promoted, it opens the next term.
        let promoted = master
            .open_term(promotion_epoch([master.last_epoch()]).unwrap(), 500)
            .unwrap();
        assert_eq!(promoted.last_epoch(), 1 << GENERATION_BITS);
        assert_eq!(describe_epoch(promoted.last_epoch()), "1.0");
        // The old master restarts after crash after crash: never at or past the new term.
        let mut restarted = master.clone();
        for offset in [400, 900, 1300] {
            restarted = restarted.next_generation(offset).unwrap();
            assert!(restarted.last_epoch() < promoted.last_epoch());
            assert_eq!(epoch_term(restarted.last_epoch()), 0);
        }
        // Following the new master, it shares everything before its first restart.
        assert_eq!(restarted.unshared_from(&promoted.epochs), 400);
        assert_eq!(master.unshared_from(&promoted.epochs), u64::MAX);
        // A store from before the packing (epoch 7) is term 0: the first promotion outranks it.
        let old = LogIdentity {
            epochs: vec![(1, 0), (7, 100)],
            ..LogIdentity::new()
        };
        assert_eq!(promotion_epoch([old.last_epoch()]), Some(1 << 16));
        // An epoch that is not past the log's own is raised to the log's next term.
        let raised = promoted.open_term(1 << 16, 900).unwrap();
        assert_eq!(raised.last_epoch(), 2 << 16);
    }

    #[test]
    fn generations_and_terms_that_would_overflow_are_refused() {
        let full = LogIdentity {
            epochs: vec![(1, 0), (MAX_GENERATION, 10)],
            ..LogIdentity::new()
        };
        let refused = full.next_generation(20).unwrap_err().to_string();
        assert!(refused.contains("last generation of term 0"), "{refused}");
        assert_eq!(promotion_epoch([MAX_TERM << GENERATION_BITS]), None);
        assert_eq!(
            promotion_epoch([(MAX_TERM - 1) << GENERATION_BITS | 5]),
            Some(MAX_TERM << 16)
        );
    }
}
