//! The controller's durable Raft state in its store directory:
//!
//! ```text
//! <store>/lock        flock'd for the life of the process: one controller per store
//! <store>/log.<S>     Raft entries after the snapshot at index S, appended:
//!                     [len u32][crc32c u32][protobuf Entry], LE
//! <store>/hardstate   term, vote, commit: one framed record, replaced atomically
//! <store>/snapshot    the last snapshot (metadata + state machine JSON), replaced atomically
//! ```
//!
//! "Atomically" is: write `<name>.tmp`, fsync it, rename it over `<name>`, fsync the
//! directory; a crash at any point leaves the old file or the new one, never a mix (a
//! `.tmp` left behind is ignored and removed on start).
//!
//! The log is only appended to and fsynced before Raft is told its entries are durable. On
//! start it is read up to the first record that is short or fails its crc: if that is a torn
//! last write (nothing valid after it) the file is cut there; a bad record with a valid one
//! after it is corruption, and so is a hard state that counts as committed an entry the log
//! no longer has (entries are fsynced before the hard state that commits them, so a torn
//! write never takes a committed one): the store refuses to start rather than silently
//! forget what a majority may have counted on. A record for index `i` replaces every entry from `i` on (Raft
//! overwrote a conflicting tail), exactly as [`MemStorage`] does when it is appended, so the
//! replay rebuilds what was in memory.
//!
//! A new snapshot (compaction, or one the leader sent) comes with a new log file, named by
//! the snapshot's index: the new log (the entries kept after the snapshot, none for the
//! leader's) is written atomically first, then the snapshot, which is the commit point; the
//! old log is removed after. On start the snapshot names the one log that goes with it and
//! any other is removed, so a crash between the writes never pairs a snapshot with entries
//! from before it that the leader's log has since replaced.
//!
//! Reads are served by raft-rs's [`MemStorage`], which this store keeps in step: everything
//! on disk is also in memory (the controller's log is small: compaction bounds it).

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::storage::{MemStorage, RaftState, Storage};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Bytes before each record's payload: length and crc32c.
const RECORD_HEADER_BYTES: usize = 8;
/// The largest record accepted on replay: a controller entry is a small JSON command (a
/// SyncStateSet, a registration) or a snapshot of every group; 64 MiB is far above either and
/// keeps a corrupt length from allocating without bound.
const MAX_RECORD_BYTES: usize = 64 << 20;

/// What the replay found, logged on start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub entries: usize,
    pub truncated_bytes: u64,
    pub snapshot_index: u64,
}

pub struct DiskStore {
    dir: PathBuf,
    log: File,
    /// The snapshot index the open log file goes with (its name).
    log_index: u64,
    memory: MemStorage,
    snapshot: Arc<RwLock<Snapshot>>,
    /// Held for the life of the store: its flock keeps a second controller off this store.
    _lock: File,
    /// Entries appended since the last snapshot: compaction runs past a threshold of them.
    entries_since_snapshot: u64,
    pub recovery: Recovery,
}

fn io_context(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

impl DiskStore {
    /// Opens (or creates) the store in `dir`. A new store starts with `initial_voters` as
    /// its membership; an existing one keeps what it recorded.
    pub fn open(dir: &Path, initial_voters: &[u64]) -> io::Result<DiskStore> {
        fs::create_dir_all(dir).map_err(|e| io_context(dir, "create", e))?;
        let lock = lock_store(dir)?;
        for leftover in ["hardstate.tmp", "snapshot.tmp"] {
            let _ = fs::remove_file(dir.join(leftover));
        }
        let memory = MemStorage::new();
        let snapshot = match read_record_file(&dir.join("snapshot"))? {
            Some(bytes) => Snapshot::parse_from_bytes(&bytes).map_err(invalid("snapshot"))?,
            None => {
                let mut fresh = Snapshot::default();
                fresh
                    .mut_metadata()
                    .set_conf_state(ConfState::from((initial_voters.to_vec(), vec![])));
                write_atomically(
                    dir,
                    "snapshot",
                    &frame(&fresh.write_to_bytes().map_err(invalid("snapshot"))?),
                )?;
                fresh
            }
        };
        let snapshot_index = snapshot.get_metadata().index;
        if snapshot_index == 0 {
            memory.initialize_with_conf_state(snapshot.get_metadata().get_conf_state().clone());
        } else {
            memory
                .wl()
                .apply_snapshot(snapshot.clone())
                .map_err(raft_error)?;
        }
        remove_other_logs(dir, snapshot_index)?;
        let log_path = dir.join(log_name(snapshot_index));
        let (entries, good_len, file_len) = replay_log(&log_path, snapshot_index)?;
        let created = !log_path.exists();
        let mut log = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&log_path)
            .map_err(|e| io_context(&log_path, "open", e))?;
        if created {
            // The new file's name must be durable before an entry in it is acknowledged.
            sync_dir(dir)?;
        }
        if good_len < file_len {
            log.set_len(good_len)
                .map_err(|e| io_context(&log_path, "truncate", e))?;
            log.sync_all()
                .map_err(|e| io_context(&log_path, "fsync", e))?;
        }
        use std::io::Seek;
        log.seek(io::SeekFrom::End(0))?;
        let count = entries.len();
        if !entries.is_empty() {
            memory.wl().append(&entries).map_err(raft_error)?;
        }
        if let Some(bytes) = read_record_file(&dir.join("hardstate"))? {
            let mut hard_state =
                HardState::parse_from_bytes(&bytes).map_err(invalid("hardstate"))?;
            // Entries are durable before the hard state that commits them, so a torn tail
            // never takes a committed one: a commit past the log's end means the log lost
            // entries (corruption). Starting anyway would apply less than was committed.
            let last = memory.last_index().map_err(raft_error)?;
            if hard_state.commit > last {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "store {}: the hard state counts entries up to {} as committed but the log ends at {last}: committed entries are lost (the log is corrupt). Rebuild this controller from its peers (remove-peer, move the store away, add-peer)",
                        dir.display(),
                        hard_state.commit
                    ),
                ));
            }
            // A snapshot is only ever of committed entries; a crash after a snapshot from the
            // leader was written and before the hard state that followed it leaves an older
            // commit here, which would put the applied index past the commit.
            hard_state.commit = hard_state.commit.max(snapshot_index);
            // Likewise the term: the snapshot's entries are of its term or earlier, and a
            // node must never vote or append in a term below one it has seen.
            hard_state.term = hard_state.term.max(snapshot.get_metadata().term);
            memory.wl().set_hardstate(hard_state);
        }
        Ok(DiskStore {
            dir: dir.to_path_buf(),
            log,
            log_index: snapshot_index,
            memory,
            snapshot: Arc::new(RwLock::new(snapshot)),
            _lock: lock,
            entries_since_snapshot: count as u64,
            recovery: Recovery {
                entries: count,
                truncated_bytes: file_len - good_len,
                snapshot_index,
            },
        })
    }

    /// The in-memory view raft-rs reads (shared: a clone of the same storage).
    pub fn storage(&self) -> ControllerStorage {
        ControllerStorage {
            memory: self.memory.clone(),
            snapshot: self.snapshot.clone(),
        }
    }

    pub fn entries_since_snapshot(&self) -> u64 {
        self.entries_since_snapshot
    }

    /// Appends and fsyncs `entries`, then shows them to Raft.
    pub fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for entry in entries {
            buf.extend_from_slice(&frame(&entry.write_to_bytes().map_err(invalid("entry"))?));
        }
        let path = self.dir.join(log_name(self.log_index));
        self.log
            .write_all(&buf)
            .map_err(|e| io_context(&path, "append to", e))?;
        self.log
            .sync_data()
            .map_err(|e| io_context(&path, "fdatasync", e))?;
        self.memory.wl().append(entries).map_err(raft_error)?;
        self.entries_since_snapshot += entries.len() as u64;
        Ok(())
    }

    pub fn set_hard_state(&mut self, hard_state: &HardState) -> io::Result<()> {
        let bytes = hard_state.write_to_bytes().map_err(invalid("hardstate"))?;
        write_atomically(&self.dir, "hardstate", &frame(&bytes))?;
        self.memory.wl().set_hardstate(hard_state.clone());
        Ok(())
    }

    pub fn set_commit(&mut self, commit: u64) -> io::Result<()> {
        let mut hard_state = self.memory.rl().hard_state().clone();
        hard_state.commit = commit;
        self.set_hard_state(&hard_state)
    }

    /// A snapshot the leader sent: replaces the state and the whole log, and becomes the
    /// snapshot this store serves to followers once it leads.
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot) -> io::Result<()> {
        self.install(snapshot, &[])?;
        self.memory
            .wl()
            .apply_snapshot(snapshot.clone())
            .map_err(raft_error)?;
        *self.snapshot.write().expect("snapshot lock") = snapshot.clone();
        self.entries_since_snapshot = 0;
        Ok(())
    }

    /// Snapshots the state machine at `applied_index` (`data`, its serialized state) and
    /// drops the log entries it covers.
    pub fn compact(
        &mut self,
        applied_index: u64,
        conf_state: &ConfState,
        data: Vec<u8>,
    ) -> io::Result<()> {
        let term = self.memory.term(applied_index).map_err(raft_error)?;
        let mut snapshot = Snapshot::default();
        snapshot.set_data(data.into());
        let metadata = snapshot.mut_metadata();
        metadata.index = applied_index;
        metadata.term = term;
        metadata.set_conf_state(conf_state.clone());
        let last = self.memory.last_index().map_err(raft_error)?;
        let kept = if last > applied_index {
            self.memory
                .entries(
                    applied_index + 1,
                    last + 1,
                    None,
                    raft::GetEntriesContext::empty(false),
                )
                .map_err(raft_error)?
        } else {
            Vec::new()
        };
        self.install(&snapshot, &kept)?;
        compact_memory(&self.memory, &self.snapshot, snapshot, &kept)?;
        self.entries_since_snapshot = kept.len() as u64;
        Ok(())
    }

    /// The last snapshot's state machine data (empty for a new store).
    pub fn snapshot_data(&self) -> io::Result<(u64, Vec<u8>)> {
        match read_record_file(&self.dir.join("snapshot"))? {
            Some(bytes) => {
                let snapshot = Snapshot::parse_from_bytes(&bytes).map_err(invalid("snapshot"))?;
                Ok((snapshot.get_metadata().index, snapshot.get_data().to_vec()))
            }
            None => Ok((0, Vec::new())),
        }
    }

    /// Makes `snapshot` durable with `kept` (the entries after it) as its log: the new log
    /// first, then the snapshot (the commit point), then the old log goes.
    fn install(&mut self, snapshot: &Snapshot, kept: &[Entry]) -> io::Result<()> {
        let index = snapshot.get_metadata().index;
        let mut buf = Vec::new();
        for entry in kept {
            buf.extend_from_slice(&frame(&entry.write_to_bytes().map_err(invalid("entry"))?));
        }
        let name = log_name(index);
        write_atomically(&self.dir, &name, &buf)?;
        let bytes = snapshot.write_to_bytes().map_err(invalid("snapshot"))?;
        write_atomically(&self.dir, "snapshot", &frame(&bytes))?;
        let path = self.dir.join(&name);
        self.log = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| io_context(&path, "open", e))?;
        if self.log_index != index {
            let old = self.dir.join(log_name(self.log_index));
            // Left behind by a crash, it is removed on the next start.
            let _ = fs::remove_file(old);
        }
        self.log_index = index;
        Ok(())
    }
}

/// Drops the entries `snapshot` covers from `memory` (keeping `kept`, the ones after it) and
/// makes it the snapshot followers are sent. `MemStorageCore::apply_snapshot` resets the
/// commit index to the snapshot's: it is put back, since commits past it stay committed.
pub(crate) fn compact_memory(
    memory: &MemStorage,
    last_snapshot: &RwLock<Snapshot>,
    snapshot: Snapshot,
    kept: &[Entry],
) -> io::Result<()> {
    let mut core = memory.wl();
    let commit = core.hard_state().commit;
    core.apply_snapshot(snapshot.clone()).map_err(raft_error)?;
    if !kept.is_empty() {
        core.append(kept).map_err(raft_error)?;
    }
    core.mut_hard_state().commit = commit.max(snapshot.get_metadata().index);
    *last_snapshot.write().expect("snapshot lock") = snapshot;
    Ok(())
}

/// The [`Storage`] raft-rs reads: [`MemStorage`] for the log and state, and the last
/// snapshot *with its data* for followers that need one (`MemStorage` would send one without
/// the state machine in it).
#[derive(Clone)]
pub struct ControllerStorage {
    pub(crate) memory: MemStorage,
    pub(crate) snapshot: Arc<RwLock<Snapshot>>,
}

impl ControllerStorage {
    /// A storage in memory only (the simulation's).
    pub fn in_memory(voters: &[u64]) -> Self {
        let mut snapshot = Snapshot::default();
        snapshot
            .mut_metadata()
            .set_conf_state(ConfState::from((voters.to_vec(), vec![])));
        ControllerStorage {
            memory: MemStorage::new_with_conf_state(ConfState::from((voters.to_vec(), vec![]))),
            snapshot: Arc::new(RwLock::new(snapshot)),
        }
    }
}

impl Storage for ControllerStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.memory.initial_state()
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: raft::GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.memory.entries(low, high, max_size, context)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.memory.term(idx)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.memory.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.memory.last_index()
    }
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let snapshot = self.snapshot.read().expect("snapshot lock").clone();
        if snapshot.get_metadata().index < request_index {
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(snapshot)
    }
}

/// `[len u32][crc32c u32][payload]`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The first whole record of `bytes`, if it has one that checks.
fn unframe(bytes: &[u8]) -> Option<(&[u8], usize)> {
    let header = bytes.get(..RECORD_HEADER_BYTES)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if len > MAX_RECORD_BYTES {
        return None;
    }
    let payload = bytes.get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len)?;
    (crc32c::crc32c(payload) == crc).then_some((payload, RECORD_HEADER_BYTES + len))
}

/// Reads a file holding one framed record. A file that does not check is an error (these
/// files are only ever replaced whole, so a bad one is corruption, not a torn write).
fn read_record_file(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => f
            .read_to_end(&mut bytes)
            .map_err(|e| io_context(path, "read", e))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_context(path, "open", e)),
    };
    match unframe(&bytes) {
        Some((payload, used)) if used == bytes.len() => Ok(Some(payload.to_vec())),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is corrupt (length or crc32c does not check)",
                path.display()
            ),
        )),
    }
}

/// The entries of the log after `snapshot_index`, the length of its good prefix and of the
/// file.
fn replay_log(path: &Path, snapshot_index: u64) -> io::Result<(Vec<Entry>, u64, u64)> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)
                .map_err(|e| io_context(path, "read", e))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0, 0)),
        Err(e) => return Err(io_context(path, "open", e)),
    }
    let mut entries: Vec<Entry> = Vec::new();
    let mut at = 0;
    loop {
        let Some((payload, used)) = unframe(&bytes[at..]) else {
            if let Some(next) = record_after_bad(&bytes[at..]) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: the record at byte {at} is corrupt and a valid one follows it at byte {}: not a torn tail",
                        path.display(),
                        at + next
                    ),
                ));
            }
            break;
        };
        let Ok(entry) = Entry::parse_from_bytes(payload) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: the record at byte {at} checks but is not an entry",
                    path.display()
                ),
            ));
        };
        at += used;
        if entry.index <= snapshot_index {
            continue;
        }
        while entries.last().is_some_and(|last| last.index >= entry.index) {
            entries.pop();
        }
        if entries
            .last()
            .is_some_and(|last| last.index + 1 != entry.index)
            || (entries.is_empty() && entry.index != snapshot_index + 1)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: entry {} does not follow entry {} (snapshot at {snapshot_index})",
                    path.display(),
                    entry.index,
                    entries.last().map_or(snapshot_index, |l| l.index)
                ),
            ));
        }
        entries.push(entry);
    }
    Ok((entries, at as u64, bytes.len() as u64))
}

/// The log file that goes with the snapshot at `snapshot_index`.
fn log_name(snapshot_index: u64) -> String {
    format!("log.{snapshot_index}")
}

/// Removes log files (and their temporary files) other than the snapshot's: a crash during
/// an install leaves the new one unused, or the old one unremoved.
fn remove_other_logs(dir: &Path, snapshot_index: u64) -> io::Result<()> {
    let keep = log_name(snapshot_index);
    for entry in fs::read_dir(dir).map_err(|e| io_context(dir, "list", e))? {
        let name = entry.map_err(|e| io_context(dir, "list", e))?.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("log.") && name != keep {
            fs::remove_file(dir.join(name))
                .map_err(|e| io_context(&dir.join(name), "remove", e))?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_context(dir, "fsync directory", e))
}

/// Where a valid record starts after the bad one `bytes` begins with, if its length field
/// is sane and the bytes after it frame a record: then the bad one is not a torn last write.
/// (A torn write whose length field is itself garbage cannot be told from corruption here;
/// the commit check on start catches a committed entry lost that way.)
fn record_after_bad(bytes: &[u8]) -> Option<usize> {
    let header = bytes.get(..RECORD_HEADER_BYTES)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_RECORD_BYTES {
        return None;
    }
    let next = RECORD_HEADER_BYTES + len;
    unframe(bytes.get(next..)?).map(|_| next)
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    let mut f = File::create(&tmp).map_err(|e| io_context(&tmp, "create", e))?;
    f.write_all(bytes)
        .map_err(|e| io_context(&tmp, "write", e))?;
    f.sync_all().map_err(|e| io_context(&tmp, "fsync", e))?;
    fs::rename(&tmp, &target).map_err(|e| io_context(&target, "rename onto", e))?;
    sync_dir(dir)
}

fn lock_store(dir: &Path) -> io::Result<File> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_context(&path, "open", e))?;
    // SAFETY: flock on a descriptor this function owns; no memory is shared.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "store {} is in use: another controller holds {}",
                dir.display(),
                path.display()
            ),
        ));
    }
    Ok(file)
}

fn invalid(what: &'static str) -> impl Fn(protobuf::ProtobufError) -> io::Error {
    move |e| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}"))
}

fn raft_error(e: raft::Error) -> io::Error {
    io::Error::other(format!("raft storage: {e}"))
}

#[cfg(test)]
mod tests;
