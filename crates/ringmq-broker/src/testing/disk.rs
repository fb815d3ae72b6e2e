//! [`SimDisk`]: an in-memory [`Disk`] for deterministic crash and fault tests.
//!
//! **Files.** Every file (an inode, so an open handle outlives an unlink as on Linux) keeps its
//! durable bytes, the writes completed since its last `fdatasync` and the writes still in
//! flight. Reads see every completed write. An `fdatasync` makes durable the writes that had
//! completed when it was issued, not those completing while it runs: the pipelined flusher
//! writes batch N+1 while sync N is in flight, and only sync N+1 covers it.
//!
//! **Directories.** Creating a file ([`Disk::open`] with `create`) adds a directory entry that
//! a crash may lose until [`Disk::sync_dir`] of its directory. The other namespace operations
//! (`create_dir_all`, `remove`, `remove_dir_all`, `write_atomic`) are durable once they return,
//! as the trait promises and [`crate::store::glommio_disk::GlommioDisk`] implements with a
//! directory fsync; a crash while one is in flight may or may not keep it, and
//! `write_atomic` may leave its `.tmp` file behind.
//!
//! **Crash.** [`SimDisk::crash`] returns the disk as it could be after a power loss now: per
//! directory a seeded prefix of the namespace changes not yet synced (a journal commits them
//! in order), per file the durable bytes plus a seeded subset of the unsynced and in-flight
//! writes, the last one possibly torn at 512-byte sector granularity, and possibly a flipped
//! bit in the bytes an unsynced write changed. Sectors are atomic (the usual device promise),
//! so rewriting the partial last block with the same leading bytes never damages what an
//! earlier sync made durable.
//!
//! **Time.** [`SimDisk::new`] completes every operation at once, so a test can drive the store
//! with `futures_lite::future::block_on`. [`SimDisk::timed`] gives each operation a latency in
//! [`SimClock`] ticks drawn from the seed, so several operations in flight complete in a seeded
//! order; such a disk needs the simulation driver ([`super::driver::run`]).
//!
//! **Faults.** [`SimDisk::inject`] fails the next write or sync with EIO; [`ReadFaults`] makes
//! data reads fail with EIO or return a corrupt sector at seeded rates.
//!
//! **Caller checks.** What the real disk would reject or silently mis-handle panics here with
//! a message naming the caller's mistake (a bug in the store, not a disk fault): an O_DIRECT
//! write or read that is not block aligned or passes the device's request limit, and two
//! writes in flight at once to overlapping bytes of one file (either may land last).

use super::clock::SimClock;
use super::rng::SeededRng;
use crate::store::io::{oversized_write, Disk, DiskFile, BLOCK_BYTES};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Granularity at which a torn write lands: the device's logical sector.
const SECTOR_BYTES: usize = 512;

/// The simulated device's single-request limit: far below a real disk's, so every reader and
/// writer in the store is exercised cutting its I/O into several requests (a single request
/// above it is refused, where a real device behind glommio would hang).
pub const SIM_MAX_IO_BYTES: usize = 64 * 1024;

/// A fault to inject into the next matching operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimFault {
    /// The next `write_at` or `write_atomic` (on any file) fails with EIO and changes nothing.
    Write,
    /// The next `fdatasync` (on any file) fails with EIO; its writes stay unsynced.
    Sync,
}

/// The latency of one kind of operation, in [`SimClock`] ticks, drawn uniformly per operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickRange {
    pub min: u64,
    pub max: u64,
}

/// Latencies of a [`SimDisk::timed`] disk, per kind of operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoLatency {
    pub read: TickRange,
    pub write: TickRange,
    pub sync: TickRange,
    /// Opening, creating, listing, removing, renaming, syncing a directory.
    pub metadata: TickRange,
}

impl IoLatency {
    /// Close to the project's measured disk (docs/storage.md: a 4 KiB O_DIRECT write plus
    /// fdatasync takes 0.1 to 0.3 ms), with wide ranges so completions reorder often.
    pub const TYPICAL: IoLatency = IoLatency {
        read: TickRange { min: 10, max: 200 },
        write: TickRange { min: 10, max: 300 },
        sync: TickRange { min: 50, max: 1000 },
        metadata: TickRange { min: 20, max: 500 },
    };
}

/// Rates of faults on data-file reads, in parts per million reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadFaults {
    /// The read fails with EIO.
    pub eio_per_million: u32,
    /// The read succeeds but one 512-byte sector of what it returns is random bytes.
    pub corrupt_sector_per_million: u32,
}

#[derive(Clone, Copy, Debug)]
enum IoKind {
    Read,
    Write,
    Sync,
    Metadata,
}

/// A timed disk's clock, latencies and the generator its latencies and faults are drawn from.
#[derive(Clone)]
struct Timing {
    clock: SimClock,
    latency: IoLatency,
}

#[derive(Clone, Default)]
pub struct SimDisk {
    state: Rc<RefCell<SimState>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    Dir,
    File(u64),
}

/// One atomic namespace change (a create, an unlink, a rename), applied to the visible
/// namespace at once and to the durable one when its directory is synced.
#[derive(Clone, Debug)]
struct MetaOp {
    id: u64,
    dir: PathBuf,
    changes: Vec<(PathBuf, Option<Entry>)>,
}

#[derive(Clone, Default)]
struct SimState {
    /// The namespace reads see.
    entries: BTreeMap<PathBuf, Entry>,
    /// The namespace a crash keeps for certain.
    durable_entries: BTreeMap<PathBuf, Entry>,
    /// Changes in `entries` not yet in `durable_entries`, oldest first.
    pending_meta: Vec<MetaOp>,
    next_meta_id: u64,
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    next_write_id: u64,
    faults: Vec<SimFault>,
    read_faults: ReadFaults,
    /// Draws latencies and read faults.
    rng: SeededRng,
    /// Bytes returned by reads since the disk was made: lets a test bound the reads of a
    /// recovery against the bytes it scanned.
    read_bytes: u64,
    /// What `available_bytes` reports; `None` is unlimited.
    available_bytes: Option<u64>,
    /// What `space` reports; `None`: an empty file system of unknown size (ratio 0).
    space: Option<crate::store::io::DiskSpace>,
    timing: Option<Timing>,
}

#[derive(Clone, Default)]
struct Inode {
    /// What survives a crash for certain.
    durable: Vec<u8>,
    /// What reads see: `durable` with every completed unsynced write applied.
    current: Vec<u8>,
    /// Completed writes not yet covered by a sync: (completion number, offset, bytes), in
    /// completion order.
    unsynced: Vec<(u64, u64, Vec<u8>)>,
    /// Writes submitted and not completed, by write id: (offset, bytes).
    in_flight: BTreeMap<u64, (u64, Vec<u8>)>,
    /// Completion number of the next write to complete.
    next_completion: u64,
}

pub struct SimFile {
    disk: SimDisk,
    inode: u64,
    path: PathBuf,
}

fn apply(content: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let start = offset as usize;
    let end = start + bytes.len();
    if content.len() < end {
        content.resize(end, 0);
    }
    content[start..end].copy_from_slice(bytes);
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

fn eio(what: &str, path: &Path) -> io::Error {
    io::Error::other(format!("injected EIO on {what} of {}", path.display()))
}

/// The directory holding `path`; the empty path for a top-level name.
fn parent_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The root (and the empty path a relative top-level name hangs from) always exists.
fn is_root(path: &Path) -> bool {
    path.as_os_str().is_empty() || path.parent().is_none()
}

fn dir_exists(entries: &BTreeMap<PathBuf, Entry>, dir: &Path) -> bool {
    is_root(dir) || entries.get(dir) == Some(&Entry::Dir)
}

fn apply_changes(entries: &mut BTreeMap<PathBuf, Entry>, changes: &[(PathBuf, Option<Entry>)]) {
    for (path, entry) in changes {
        match entry {
            Some(entry) => entries.insert(path.clone(), *entry),
            None => entries.remove(path),
        };
    }
}

impl SimState {
    fn take_fault(&mut self, fault: SimFault) -> bool {
        match self.faults.iter().position(|f| *f == fault) {
            Some(i) => {
                self.faults.remove(i);
                true
            }
            None => false,
        }
    }

    /// Applies a namespace change to the visible namespace; durable once `dir` is synced.
    fn change(&mut self, dir: &Path, changes: Vec<(PathBuf, Option<Entry>)>) {
        apply_changes(&mut self.entries, &changes);
        let id = self.next_meta_id;
        self.next_meta_id += 1;
        self.pending_meta.push(MetaOp {
            id,
            dir: dir.to_path_buf(),
            changes,
        });
    }

    /// Makes durable the changes in `dir` made before change number `before`.
    fn sync_dir(&mut self, dir: &Path, before: u64) {
        let (synced, kept): (Vec<MetaOp>, Vec<MetaOp>) = std::mem::take(&mut self.pending_meta)
            .into_iter()
            .partition(|op| op.dir == dir && op.id < before);
        for op in &synced {
            apply_changes(&mut self.durable_entries, &op.changes);
        }
        self.pending_meta = kept;
    }

    fn sync_dir_now(&mut self, dir: &Path) {
        self.sync_dir(dir, self.next_meta_id);
    }

    fn new_inode(&mut self, content: Vec<u8>) -> u64 {
        let id = self.next_inode;
        self.next_inode += 1;
        self.inodes.insert(
            id,
            Inode {
                durable: content.clone(),
                current: content,
                ..Inode::default()
            },
        );
        id
    }

    fn file(&self, path: &Path) -> io::Result<Option<u64>> {
        match self.entries.get(path) {
            Some(Entry::File(inode)) => Ok(Some(*inode)),
            Some(Entry::Dir) => Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{}: is a directory", path.display()),
            )),
            None => Ok(None),
        }
    }

    fn draw_latency(&mut self, kind: IoKind) -> Option<u64> {
        let latency = self.timing.as_ref()?.latency;
        let range = match kind {
            IoKind::Read => latency.read,
            IoKind::Write => latency.write,
            IoKind::Sync => latency.sync,
            IoKind::Metadata => latency.metadata,
        };
        Some(self.rng.between(range.min, range.max))
    }
}

impl SimDisk {
    /// A disk whose operations complete at once, without faults.
    pub fn new() -> Self {
        Self::default()
    }

    /// A disk whose operations take `latency` on `clock`, drawn from `seed`.
    pub fn timed(clock: &SimClock, seed: u64, latency: IoLatency) -> Self {
        let disk = Self::new();
        {
            let mut state = disk.state.borrow_mut();
            state.rng = SeededRng(seed ^ 0xD15C_D15C_D15C_D15C);
            state.timing = Some(Timing {
                clock: clock.clone(),
                latency,
            });
        }
        disk
    }

    /// Runs `effect` on the disk's state once the operation's latency has passed (at once on an
    /// untimed disk). The effect runs even if the caller stops waiting, as a submitted I/O
    /// would; a crash before it runs finds the operation not done (or, for writes, in flight).
    async fn io<T: 'static>(
        &self,
        kind: IoKind,
        effect: impl FnOnce(&mut SimState) -> T + 'static,
    ) -> T {
        let (ticks, clock) = {
            let mut state = self.state.borrow_mut();
            let ticks = state.draw_latency(kind);
            (ticks, state.timing.as_ref().map(|t| t.clock.clone()))
        };
        match (ticks, clock) {
            (Some(ticks), Some(clock)) => {
                let state = self.state.clone();
                clock
                    .after(ticks, move || effect(&mut state.borrow_mut()))
                    .await
            }
            _ => effect(&mut self.state.borrow_mut()),
        }
    }

    /// Bytes returned by data-file reads on this disk (not counting a crash copy's).
    pub fn read_bytes(&self) -> u64 {
        self.state.borrow().read_bytes
    }

    /// Makes `space` report `space` (`None`: ratio 0), as a filling disk would.
    pub fn set_space(&self, space: Option<crate::store::io::DiskSpace>) {
        self.state.borrow_mut().space = space;
    }

    /// Makes `available_bytes` report `bytes` (`None`: unlimited), as a full disk would.
    pub fn set_available_bytes(&self, bytes: Option<u64>) {
        self.state.borrow_mut().available_bytes = bytes;
    }

    /// Sets the rates of data-read faults from now on (kept by crash copies).
    pub fn set_read_faults(&self, faults: ReadFaults) {
        self.state.borrow_mut().read_faults = faults;
    }

    /// Namespace changes a crash now could still lose.
    pub fn unsynced_namespace_changes(&self) -> usize {
        self.state.borrow().pending_meta.len()
    }

    /// Writes submitted and not yet completed, on every file.
    pub fn writes_in_flight(&self) -> usize {
        let state = self.state.borrow();
        state.inodes.values().map(|i| i.in_flight.len()).sum()
    }

    /// The disk as it could be after a power loss now, chosen by `seed`. `self` is unchanged.
    /// The copy keeps the clock, latencies, read-fault rates and free space, and has no
    /// injected faults pending.
    pub fn crash(&self, seed: u64) -> SimDisk {
        let mut rng = SeededRng(seed);
        let state = self.state.borrow();
        let entries = Self::crashed_namespace(&state, &mut rng);
        let mut inodes = BTreeMap::new();
        for entry in entries.values() {
            if let Entry::File(id) = entry {
                if !inodes.contains_key(id) {
                    let content = Self::crashed_content(&state.inodes[id], &mut rng);
                    inodes.insert(
                        *id,
                        Inode {
                            durable: content.clone(),
                            current: content,
                            ..Inode::default()
                        },
                    );
                }
            }
        }
        SimDisk {
            state: Rc::new(RefCell::new(SimState {
                durable_entries: entries.clone(),
                entries,
                pending_meta: Vec::new(),
                next_meta_id: 0,
                inodes,
                next_inode: state.next_inode,
                next_write_id: 0,
                faults: Vec::new(),
                read_faults: state.read_faults,
                rng: rng.fork(),
                read_bytes: 0,
                available_bytes: state.available_bytes,
                space: state.space,
                timing: state.timing.clone(),
            })),
        }
    }

    /// The durable namespace plus, per directory, a seeded prefix of its unsynced changes;
    /// entries whose directory did not survive are gone with it.
    fn crashed_namespace(state: &SimState, rng: &mut SeededRng) -> BTreeMap<PathBuf, Entry> {
        let mut by_dir: BTreeMap<&Path, Vec<&MetaOp>> = BTreeMap::new();
        for op in &state.pending_meta {
            by_dir.entry(op.dir.as_path()).or_default().push(op);
        }
        let mut entries = state.durable_entries.clone();
        for ops in by_dir.values() {
            let landed = rng.below(ops.len() as u64 + 1) as usize;
            for op in &ops[..landed] {
                apply_changes(&mut entries, &op.changes);
            }
        }
        // Parents sort before their children, so one pass in order prunes whole subtrees.
        let mut kept = BTreeMap::new();
        for (path, entry) in entries {
            if dir_exists(&kept, &parent_of(&path)) {
                kept.insert(path, entry);
            }
        }
        kept
    }

    /// A file's bytes after a crash: the durable bytes plus a seeded subset of the unsynced and
    /// in-flight writes, the last possibly torn, and possibly one flipped bit where they
    /// changed something.
    fn crashed_content(inode: &Inode, rng: &mut SeededRng) -> Vec<u8> {
        let mut content = inode.durable.clone();
        let candidates = inode
            .unsynced
            .iter()
            .map(|(_, offset, bytes)| (*offset, bytes))
            .chain(
                inode
                    .in_flight
                    .values()
                    .map(|(offset, bytes)| (*offset, bytes)),
            );
        let landed: Vec<(u64, &Vec<u8>)> = candidates.filter(|_| rng.chance(1, 2)).collect();
        for (i, (offset, bytes)) in landed.iter().enumerate() {
            let torn = i + 1 == landed.len() && rng.chance(1, 2);
            Self::land(&mut content, rng, *offset, bytes, torn);
        }
        if !landed.is_empty() && rng.chance(1, 4) {
            Self::flip_changed_bit(&mut content, &inode.durable, rng, &landed);
        }
        content
    }

    fn land(content: &mut Vec<u8>, rng: &mut SeededRng, offset: u64, bytes: &[u8], torn: bool) {
        if !torn {
            apply(content, offset, bytes);
            return;
        }
        for (i, sector) in bytes.chunks(SECTOR_BYTES).enumerate() {
            if rng.chance(1, 2) {
                apply(content, offset + (i * SECTOR_BYTES) as u64, sector);
            }
        }
    }

    /// Flips one bit in a byte that some landed unsynced write changed relative to `durable`:
    /// a seeded position in a seeded landed write, moved forward to the first byte there that
    /// the write changed (none: no flip). The position does not depend on how many bytes
    /// changed, so a replay whose records differ only in their wall-clock timestamps flips
    /// the same record.
    fn flip_changed_bit(
        content: &mut [u8],
        durable: &[u8],
        rng: &mut SeededRng,
        landed: &[(u64, &Vec<u8>)],
    ) {
        let (offset, bytes) = landed[rng.below(landed.len() as u64) as usize];
        let start = offset as usize + rng.below(bytes.len() as u64) as usize;
        let end = (offset as usize + bytes.len()).min(content.len());
        let bit = rng.below(8);
        let changed = (start..end).find(|&at| durable.get(at).copied().unwrap_or(0) != content[at]);
        if let Some(at) = changed {
            content[at] ^= 1 << bit;
        }
    }

    /// Flips bit `bit` of the byte at `byte_offset` of `path`, in both the durable and the
    /// current content (targeted corruption at rest). Returns false if the byte does not exist.
    pub fn flip_bit(&self, path: &Path, byte_offset: u64, bit: u8) -> bool {
        let mut state = self.state.borrow_mut();
        let Ok(Some(id)) = state.file(path) else {
            return false;
        };
        let file = state.inodes.get_mut(&id).expect("entries name live inodes");
        let at = byte_offset as usize;
        if at >= file.current.len() {
            return false;
        }
        file.current[at] ^= 1 << (bit % 8);
        if let Some(byte) = file.durable.get_mut(at) {
            *byte ^= 1 << (bit % 8);
        }
        true
    }

    /// Makes the next operation of the given kind fail with EIO.
    pub fn inject(&self, fault: SimFault) {
        self.state.borrow_mut().faults.push(fault);
    }

    /// The current content of a file (what a read would see), for test assertions.
    pub fn content(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.state.borrow();
        match state.file(path) {
            Ok(Some(id)) => Some(state.inodes[&id].current.clone()),
            _ => None,
        }
    }

    /// Every file path, for test assertions.
    pub fn paths(&self) -> Vec<PathBuf> {
        let state = self.state.borrow();
        state
            .entries
            .iter()
            .filter(|(_, e)| matches!(e, Entry::File(_)))
            .map(|(p, _)| p.clone())
            .collect()
    }
}

impl Disk for SimDisk {
    type File = SimFile;

    /// A created file's directory entry is not durable until [`Disk::sync_dir`].
    async fn open(&self, path: &Path, create: bool) -> io::Result<SimFile> {
        let owned = path.to_path_buf();
        let inode = self
            .io(IoKind::Metadata, move |state| {
                if let Some(inode) = state.file(&owned)? {
                    return Ok(inode);
                }
                let dir = parent_of(&owned);
                if !create || !dir_exists(&state.entries, &dir) {
                    return Err(not_found(&owned));
                }
                let inode = state.new_inode(Vec::new());
                state.change(&dir, vec![(owned, Some(Entry::File(inode)))]);
                Ok(inode)
            })
            .await?;
        Ok(SimFile {
            disk: self.clone(),
            inode,
            path: path.to_path_buf(),
        })
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        let path = path.to_path_buf();
        self.io(IoKind::Metadata, move |state| {
            if state.file(&path)?.is_none() {
                return Err(not_found(&path));
            }
            let dir = parent_of(&path);
            state.change(&dir, vec![(path, None)]);
            state.sync_dir_now(&dir);
            Ok(())
        })
        .await
    }

    /// Durable on return: each directory created is synced into its parent.
    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let path = path.to_path_buf();
        self.io(IoKind::Metadata, move |state| {
            let mut missing: Vec<&Path> = path
                .ancestors()
                .take_while(|dir| !is_root(dir))
                .filter(|dir| state.entries.get(*dir) != Some(&Entry::Dir))
                .collect();
            missing.reverse();
            for dir in missing {
                if state.entries.contains_key(dir) {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{}: a file is in the way", dir.display()),
                    ));
                }
                let parent = parent_of(dir);
                state.change(&parent, vec![(dir.to_path_buf(), Some(Entry::Dir))]);
                state.sync_dir_now(&parent);
            }
            Ok(())
        })
        .await
    }

    async fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let path = path.to_path_buf();
        self.io(IoKind::Metadata, move |state| {
            if !state.entries.contains_key(&path) {
                return Ok(());
            }
            let gone: Vec<(PathBuf, Option<Entry>)> = state
                .entries
                .keys()
                .filter(|p| p.starts_with(&path))
                .map(|p| (p.clone(), None))
                .collect();
            let dir = parent_of(&path);
            state.change(&dir, gone);
            state.sync_dir_now(&dir);
            Ok(())
        })
        .await
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let dir = dir.to_path_buf();
        self.io(IoKind::Metadata, move |state| {
            // BTreeMap order is path order; names within one directory come out sorted.
            let mut names: Vec<String> = state
                .entries
                .keys()
                .filter(|p| p.parent() == Some(dir.as_path()))
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            names.sort();
            Ok(names)
        })
        .await
    }

    async fn exists(&self, path: &Path) -> io::Result<bool> {
        let path = path.to_path_buf();
        self.io(IoKind::Metadata, move |state| {
            Ok(is_root(&path) || state.entries.contains_key(&path))
        })
        .await
    }

    /// Writes and syncs `<path>.tmp` (one operation), then renames it over `path` and syncs
    /// the directory (a second one): a crash between the two leaves the old content and
    /// possibly the temporary file.
    async fn write_atomic(&self, path: &Path, bytes: Vec<u8>) -> io::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let dir = parent_of(path);
        let (for_tmp, tmp_dir) = (tmp.clone(), dir.clone());
        let written = self
            .io(IoKind::Metadata, move |state| {
                if state.take_fault(SimFault::Write) {
                    return Err(eio("write_atomic", &for_tmp));
                }
                if !dir_exists(&state.entries, &tmp_dir) {
                    return Err(not_found(&for_tmp));
                }
                let inode = state.new_inode(bytes);
                state.change(&tmp_dir, vec![(for_tmp, Some(Entry::File(inode)))]);
                Ok(inode)
            })
            .await?;
        let path = path.to_path_buf();
        self.io(IoKind::Metadata, move |state| {
            if state.file(&path)?.is_none() && !dir_exists(&state.entries, &dir) {
                return Err(not_found(&path));
            }
            state.change(&dir, vec![(tmp, None), (path, Some(Entry::File(written)))]);
            state.sync_dir_now(&dir);
            Ok(())
        })
        .await
    }

    async fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        let path = path.to_path_buf();
        self.io(IoKind::Read, move |state| {
            Ok(state
                .file(&path)?
                .map(|inode| state.inodes[&inode].current.clone()))
        })
        .await
    }

    async fn available_bytes(&self, _dir: &Path) -> io::Result<u64> {
        Ok(self.state.borrow().available_bytes.unwrap_or(u64::MAX))
    }

    async fn space(&self, _dir: &Path) -> io::Result<crate::store::io::DiskSpace> {
        Ok(self.state.borrow().space.unwrap_or_default())
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let dir = dir.to_path_buf();
        let before = self.state.borrow().next_meta_id;
        self.io(IoKind::Metadata, move |state| {
            if !dir_exists(&state.entries, &dir) {
                return Err(not_found(&dir));
            }
            state.sync_dir(&dir, before);
            Ok(())
        })
        .await
    }
}

impl SimFile {
    fn caller_bug(&self, what: String) -> ! {
        panic!(
            "SimDisk: caller bug on {}: {what} (the real disk would fail or corrupt data)",
            self.path.display()
        )
    }
}

impl DiskFile for SimFile {
    type Buf = Vec<u8>;

    fn max_io_bytes(&self) -> usize {
        SIM_MAX_IO_BYTES
    }

    fn alloc_buffer(&self, len: usize) -> Vec<u8> {
        if len % BLOCK_BYTES != 0 {
            self.caller_bug(format!(
                "direct-write buffer of {len} bytes, not whole blocks"
            ));
        }
        vec![0; len]
    }

    async fn write_at(&self, buf: Vec<u8>, offset: u64) -> io::Result<usize> {
        let len = buf.len();
        if offset % BLOCK_BYTES as u64 != 0 || len % BLOCK_BYTES != 0 {
            self.caller_bug(format!("unaligned direct write of {len} bytes at {offset}"));
        }
        if len > SIM_MAX_IO_BYTES {
            return Err(oversized_write(&self.path, len, SIM_MAX_IO_BYTES));
        }
        let submitted = {
            let mut state = self.disk.state.borrow_mut();
            if state.take_fault(SimFault::Write) {
                None
            } else {
                let id = state.next_write_id;
                state.next_write_id += 1;
                let inode = state.inodes.get_mut(&self.inode).expect("open inode");
                let end = offset + len as u64;
                let overlap = inode.in_flight.values().find(|(at, bytes)| {
                    let other_end = at + bytes.len() as u64;
                    *at < end && offset < other_end
                });
                if let Some((at, bytes)) = overlap {
                    let range = format!("[{at}, {})", at + bytes.len() as u64);
                    self.caller_bug(format!(
                        "write of [{offset}, {end}) while the write of {range} is in flight"
                    ));
                }
                inode.in_flight.insert(id, (offset, buf));
                Some(id)
            }
        };
        let (inode, path) = (self.inode, self.path.clone());
        self.disk
            .io(IoKind::Write, move |state| {
                let Some(id) = submitted else {
                    return Err(eio("write", &path));
                };
                let file = state.inodes.get_mut(&inode).expect("open inode");
                let (offset, bytes) = file.in_flight.remove(&id).expect("submitted write");
                apply(&mut file.current, offset, &bytes);
                let completion = file.next_completion;
                file.next_completion += 1;
                file.unsynced.push((completion, offset, bytes));
                Ok(len)
            })
            .await
    }

    async fn read_chunk_at(&self, offset: u64, len: usize, out: &mut Vec<u8>) -> io::Result<()> {
        let device_span = (offset as usize % BLOCK_BYTES + len).div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        if device_span > SIM_MAX_IO_BYTES {
            self.caller_bug(format!(
                "read of {len} bytes at {offset} spans {device_span} device bytes, past the \
                 {SIM_MAX_IO_BYTES}-byte request limit (use DiskFile::read_at)"
            ));
        }
        let (inode, path) = (self.inode, self.path.clone());
        let bytes = self
            .disk
            .io(IoKind::Read, move |state| {
                let faults = state.read_faults;
                if faults.eio_per_million > 0
                    && state.rng.chance(faults.eio_per_million.into(), 1_000_000)
                {
                    return Err(io::Error::other(format!(
                        "simulated EIO reading {len} bytes at {offset} of {}",
                        path.display()
                    )));
                }
                let content = &state.inodes[&inode].current;
                let start = (offset as usize).min(content.len());
                let end = (start + len).min(content.len());
                let mut bytes = content[start..end].to_vec();
                state.read_bytes += bytes.len() as u64;
                if faults.corrupt_sector_per_million > 0
                    && !bytes.is_empty()
                    && state
                        .rng
                        .chance(faults.corrupt_sector_per_million.into(), 1_000_000)
                {
                    let sectors = bytes.len().div_ceil(SECTOR_BYTES) as u64;
                    let from = state.rng.below(sectors) as usize * SECTOR_BYTES;
                    let to = (from + SECTOR_BYTES).min(bytes.len());
                    for byte in &mut bytes[from..to] {
                        *byte = state.rng.next_u64() as u8;
                    }
                }
                Ok(bytes)
            })
            .await?;
        out.extend_from_slice(&bytes);
        Ok(())
    }

    /// Covers the writes completed when it is issued; writes completing meanwhile stay unsynced.
    async fn fdatasync(&self) -> io::Result<()> {
        let (covers, failed) = {
            let mut state = self.disk.state.borrow_mut();
            let failed = state.take_fault(SimFault::Sync);
            (state.inodes[&self.inode].next_completion, failed)
        };
        let (inode, path) = (self.inode, self.path.clone());
        self.disk
            .io(IoKind::Sync, move |state| {
                if failed {
                    return Err(eio("fdatasync", &path));
                }
                let file = state.inodes.get_mut(&inode).expect("open inode");
                let (synced, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut file.unsynced)
                    .into_iter()
                    .partition(|(completion, _, _)| *completion < covers);
                for (_, offset, bytes) in synced {
                    apply(&mut file.durable, offset, &bytes);
                }
                file.unsynced = kept;
                Ok(())
            })
            .await
    }

    async fn len(&self) -> io::Result<u64> {
        Ok(self.disk.state.borrow().inodes[&self.inode].current.len() as u64)
    }

    fn path(&self) -> PathBuf {
        self.path.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::driver::run;
    use futures_lite::future::block_on;
    use std::time::Duration;

    const BUDGET: Duration = Duration::from_secs(60);

    fn timed(seed: u64) -> (SimClock, SimDisk) {
        let clock = SimClock::new(seed);
        let disk = SimDisk::timed(&clock, seed, IoLatency::TYPICAL);
        (clock, disk)
    }

    fn block(byte: u8) -> Vec<u8> {
        vec![byte; BLOCK_BYTES]
    }

    /// A file in `/d`, created and its name synced.
    async fn synced_file(disk: &SimDisk) -> SimFile {
        disk.create_dir_all(Path::new("/d")).await.unwrap();
        let file = disk.open(Path::new("/d/f"), true).await.unwrap();
        disk.sync_dir(Path::new("/d")).await.unwrap();
        file
    }

    /// Writes in flight together complete in an order drawn from the seed: the same seed gives
    /// the same order, and some seeds give an order other than submission order.
    #[test]
    fn writes_in_flight_complete_in_a_seeded_order() {
        let order_of = |seed: u64| {
            let (clock, disk) = timed(seed);
            run(&clock, BUDGET, move || async move {
                let file = Rc::new(synced_file(&disk).await);
                let order = Rc::new(RefCell::new(Vec::new()));
                let writes: Vec<_> = (0..6u64)
                    .map(|i| {
                        let (file, order) = (file.clone(), order.clone());
                        glommio::spawn_local(async move {
                            let at = i * BLOCK_BYTES as u64;
                            file.write_at(block(i as u8), at).await.unwrap();
                            order.borrow_mut().push(i);
                        })
                    })
                    .collect();
                for write in writes {
                    write.await;
                }
                let order = order.borrow().clone();
                order
            })
            .unwrap()
        };
        let orders: Vec<Vec<u64>> = (0..20).map(order_of).collect();
        assert_eq!(order_of(3), orders[3], "a seed replays");
        assert!(
            orders.iter().any(|o| *o != [0, 1, 2, 3, 4, 5]),
            "{orders:?}"
        );
        assert!(orders.iter().any(|o| *o != orders[0]), "{orders:?}");
    }

    /// An fdatasync covers the writes that had completed when it was issued. A write issued
    /// while the sync runs (batch N+1 during sync N) is not covered, even if it completes
    /// first: some crash after the sync loses it, none loses the covered write.
    #[test]
    fn a_sync_covers_only_the_writes_completed_before_it() {
        let mut lost_the_later_write = 0;
        for seed in 0..40u64 {
            let (clock, disk) = timed(seed);
            let inner = disk.clone();
            run(&clock, BUDGET, move || async move {
                let file = Rc::new(synced_file(&inner).await);
                file.write_at(block(1), 0).await.unwrap();
                let later = file.clone();
                let next_batch = glommio::spawn_local(async move {
                    later.write_at(block(2), BLOCK_BYTES as u64).await.unwrap();
                });
                file.fdatasync().await.unwrap();
                next_batch.await;
            })
            .unwrap();
            let crashed = disk.crash(seed);
            let content = crashed.content(Path::new("/d/f")).expect("synced name");
            assert_eq!(content[..BLOCK_BYTES], block(1), "seed {seed}");
            if content.len() < 2 * BLOCK_BYTES || content[BLOCK_BYTES..] != block(2) {
                lost_the_later_write += 1;
            }
        }
        assert!(
            lost_the_later_write > 0,
            "the later write was always covered"
        );
    }

    /// A created file's name survives a crash only once its directory is synced; data synced
    /// with fdatasync does not help a file whose name is lost.
    #[test]
    fn a_new_file_can_vanish_until_its_directory_is_synced() {
        let mut vanished = 0;
        for seed in 0..40u64 {
            let disk = SimDisk::new();
            let file = block_on(async {
                disk.create_dir_all(Path::new("/d")).await.unwrap();
                let file = disk.open(Path::new("/d/f"), true).await.unwrap();
                file.write_at(block(7), 0).await.unwrap();
                file.fdatasync().await.unwrap();
                file
            });
            if disk.crash(seed).content(Path::new("/d/f")).is_none() {
                vanished += 1;
            }
            block_on(disk.sync_dir(Path::new("/d"))).unwrap();
            let crashed = disk.crash(seed);
            assert_eq!(crashed.content(Path::new("/d/f")), Some(block(7)));
            drop(file);
        }
        assert!(vanished > 0 && vanished < 40, "vanished {vanished} of 40");
    }

    /// A crash at any point of a `write_atomic` leaves the old content or the new one, never
    /// a mix or nothing; a `.tmp` file may be left behind.
    #[test]
    fn write_atomic_interrupted_anywhere_leaves_old_or_new() {
        let mut outcomes = BTreeMap::new();
        for seed in 0..60u64 {
            let (clock, disk) = timed(seed);
            let path = Path::new("/d/meta");
            let inner = disk.clone();
            let cut_at = SeededRng(seed).below(1500);
            let sleeper = clock.clone();
            run(&clock, BUDGET, move || async move {
                inner.create_dir_all(Path::new("/d")).await.unwrap();
                inner.write_atomic(path, b"old".to_vec()).await.unwrap();
                let writer = inner.clone();
                glommio::spawn_local(async move {
                    writer.write_atomic(path, b"new".to_vec()).await.unwrap();
                })
                .detach();
                sleeper.sleep_ticks(cut_at).await;
            })
            .unwrap();
            let crashed = disk.crash(seed);
            let content = crashed.content(path).expect("never lost");
            assert!(content == b"old" || content == b"new", "seed {seed}");
            *outcomes.entry(content).or_insert(0) += 1;
        }
        assert_eq!(outcomes.len(), 2, "both outcomes occur: {outcomes:?}");
    }

    /// Read faults at full rate: every read fails, or every read returns a corrupt sector.
    #[test]
    fn read_faults_fail_or_corrupt_reads() {
        let disk = SimDisk::new();
        let file = block_on(synced_file(&disk));
        block_on(file.write_at(block(5), 0)).unwrap();
        disk.set_read_faults(ReadFaults {
            eio_per_million: 1_000_000,
            corrupt_sector_per_million: 0,
        });
        assert!(block_on(file.read_at(0, BLOCK_BYTES)).is_err());
        disk.set_read_faults(ReadFaults {
            eio_per_million: 0,
            corrupt_sector_per_million: 1_000_000,
        });
        let read = block_on(file.read_at(0, BLOCK_BYTES)).unwrap();
        assert_eq!(read.len(), BLOCK_BYTES);
        assert_ne!(read, block(5));
        let differing = read.iter().filter(|b| **b != 5).count();
        assert!(differing <= SECTOR_BYTES, "{differing} bytes differ");
        disk.set_read_faults(ReadFaults::default());
        assert_eq!(block_on(file.read_at(0, BLOCK_BYTES)).unwrap(), block(5));
    }

    #[test]
    #[should_panic(expected = "while the write of [0, 8192) is in flight")]
    fn overlapping_writes_in_flight_are_a_caller_bug() {
        let (clock, disk) = timed(1);
        let _ = run(&clock, BUDGET, move || async move {
            let file = Rc::new(synced_file(&disk).await);
            let first = file.clone();
            let a = glommio::spawn_local(async move {
                first.write_at(vec![1; 2 * BLOCK_BYTES], 0).await.unwrap();
            });
            let b = file.write_at(block(2), BLOCK_BYTES as u64);
            let _ = futures_lite::future::zip(a, b).await;
        });
    }

    #[test]
    #[should_panic(expected = "unaligned direct write of 4096 bytes at 512")]
    fn an_unaligned_write_is_a_caller_bug() {
        let disk = SimDisk::new();
        let file = block_on(synced_file(&disk));
        let _ = block_on(file.write_at(block(1), 512));
    }

    #[test]
    fn creating_a_file_in_a_missing_directory_fails() {
        let disk = SimDisk::new();
        let error = block_on(disk.open(Path::new("/nowhere/f"), true))
            .err()
            .expect("no such directory");
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }
}
