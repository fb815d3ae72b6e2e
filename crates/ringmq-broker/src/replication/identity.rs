//! A shard log's identity: a random id fixed when the log is created (or adopted from the
//! master by an empty slave) and its epochs, in `<shard>/replication.json`, written atomically.
//!
//! A slave whose log has another id is refused: it holds some other log's bytes. Epochs mark
//! where each master's term started; promotion opens a new one at the new master's end, which
//! is where a former master rejoining as a slave must cut its log.

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

    /// A new epoch starting at `offset`, for a promoted master.
    pub fn next_epoch(&self, offset: u64) -> LogIdentity {
        let mut next = self.clone();
        next.epochs.push((self.last_epoch() + 1, offset));
        next
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
