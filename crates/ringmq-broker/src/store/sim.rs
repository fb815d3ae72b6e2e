//! [`SimDisk`]: an in-memory [`Disk`] for deterministic crash tests.
//!
//! Every file keeps its durable bytes and the writes made since its last `fdatasync`. Reads see
//! every completed write. [`SimDisk::crash`] returns the disk as it could be after a power loss:
//! the durable bytes plus a seeded subset of the unsynced writes, the last one possibly torn at
//! 512-byte sector granularity, and possibly a flipped bit in the bytes an unsynced write changed.
//! Sectors are atomic (the usual device promise), so rewriting the partial last block with the
//! same leading bytes never damages what an earlier sync made durable.
//!
//! Simplifications, on purpose: creating and removing files and directories is durable at once,
//! and so is `write_atomic` (the real disk fsyncs the directory for both). Data writes must be
//! aligned to [`BLOCK_BYTES`] like O_DIRECT writes, or they fail with `InvalidInput`.
//!
//! Futures complete immediately, so tests drive the store with `futures_lite::future::block_on`.

use super::io::{oversized_write, Disk, DiskFile, BLOCK_BYTES};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
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
    /// The next `write_at` (on any file) fails with EIO and changes nothing.
    Write,
    /// The next `fdatasync` (on any file) fails with EIO; its writes stay unsynced.
    Sync,
}

#[derive(Clone, Default)]
pub struct SimDisk {
    state: Rc<RefCell<SimState>>,
}

#[derive(Clone, Default)]
struct SimState {
    files: BTreeMap<PathBuf, SimFileState>,
    dirs: BTreeSet<PathBuf>,
    faults: Vec<SimFault>,
    /// Bytes returned by reads since the disk was made: lets a test bound the reads of a
    /// recovery against the bytes it scanned.
    read_bytes: u64,
    /// What `available_bytes` reports; `None` is unlimited.
    available_bytes: Option<u64>,
}

#[derive(Clone, Default)]
struct SimFileState {
    /// What survives a crash for certain.
    durable: Vec<u8>,
    /// What reads see: `durable` with every unsynced write applied.
    current: Vec<u8>,
    /// Writes since the last fdatasync, in completion order.
    unsynced: Vec<(u64, Vec<u8>)>,
}

pub struct SimFile {
    state: Rc<RefCell<SimState>>,
    path: PathBuf,
}

/// splitmix64: a tiny, well-mixed seeded generator; enough for choosing crash outcomes.
/// A small seeded generator (splitmix64): the crash model's, and the tests' for workloads
/// that must replay from a printed seed.
#[derive(Clone, Debug)]
pub struct SeededRng(pub u64);

impl SeededRng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform-enough in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.below(denominator) < numerator
    }
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
        format!("{}: no such file", path.display()),
    )
}

fn eio(what: &str, path: &Path) -> io::Error {
    io::Error::other(format!("injected EIO on {what} of {}", path.display()))
}

impl SimDisk {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes returned by data-file reads on this disk (not counting a crash copy's).
    pub fn read_bytes(&self) -> u64 {
        self.state.borrow().read_bytes
    }

    /// Makes `available_bytes` report `bytes` (`None`: unlimited), as a full disk would.
    pub fn set_available_bytes(&self, bytes: Option<u64>) {
        self.state.borrow_mut().available_bytes = bytes;
    }

    /// The disk as it could be after a power loss now, chosen by `seed`. `self` is unchanged.
    pub fn crash(&self, seed: u64) -> SimDisk {
        let mut rng = SeededRng(seed);
        let state = self.state.borrow();
        let mut files = BTreeMap::new();
        for (path, file) in &state.files {
            let mut content = file.durable.clone();
            let landed: Vec<&(u64, Vec<u8>)> =
                file.unsynced.iter().filter(|_| rng.chance(1, 2)).collect();
            for (i, (offset, bytes)) in landed.iter().enumerate() {
                let torn = i + 1 == landed.len() && rng.chance(1, 2);
                Self::land(&mut content, &mut rng, *offset, bytes, torn);
            }
            if !landed.is_empty() && rng.chance(1, 4) {
                Self::flip_changed_bit(&mut content, &file.durable, &mut rng, &landed);
            }
            files.insert(
                path.clone(),
                SimFileState {
                    durable: content.clone(),
                    current: content,
                    unsynced: Vec::new(),
                },
            );
        }
        SimDisk {
            state: Rc::new(RefCell::new(SimState {
                files,
                dirs: state.dirs.clone(),
                faults: Vec::new(),
                read_bytes: 0,
                available_bytes: state.available_bytes,
            })),
        }
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

    /// Flips one bit in a byte that some landed unsynced write changed relative to `durable`.
    fn flip_changed_bit(
        content: &mut [u8],
        durable: &[u8],
        rng: &mut SeededRng,
        landed: &[&(u64, Vec<u8>)],
    ) {
        let (offset, bytes) = landed[rng.below(landed.len() as u64) as usize];
        let changed: Vec<usize> = (0..bytes.len())
            .map(|i| *offset as usize + i)
            .filter(|&at| durable.get(at).copied().unwrap_or(0) != content[at])
            .collect();
        if let Some(&at) = changed.get(rng.below(changed.len() as u64) as usize) {
            content[at] ^= 1 << rng.below(8);
        }
    }

    /// Flips bit `bit` of the byte at `byte_offset` of `path`, in both the durable and the
    /// current content (targeted corruption at rest). Returns false if the byte does not exist.
    pub fn flip_bit(&self, path: &Path, byte_offset: u64, bit: u8) -> bool {
        let mut state = self.state.borrow_mut();
        let Some(file) = state.files.get_mut(path) else {
            return false;
        };
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
        self.state
            .borrow()
            .files
            .get(path)
            .map(|f| f.current.clone())
    }

    /// Every file path, for test assertions.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.state.borrow().files.keys().cloned().collect()
    }

    fn take_fault(state: &mut SimState, fault: SimFault) -> bool {
        match state.faults.iter().position(|f| *f == fault) {
            Some(i) => {
                state.faults.remove(i);
                true
            }
            None => false,
        }
    }
}

impl Disk for SimDisk {
    type File = SimFile;

    async fn open(&self, path: &Path, create: bool) -> io::Result<SimFile> {
        let mut state = self.state.borrow_mut();
        if !state.files.contains_key(path) {
            if !create {
                return Err(not_found(path));
            }
            state
                .files
                .insert(path.to_path_buf(), SimFileState::default());
        }
        Ok(SimFile {
            state: self.state.clone(),
            path: path.to_path_buf(),
        })
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        match self.state.borrow_mut().files.remove(path) {
            Some(_) => Ok(()),
            None => Err(not_found(path)),
        }
    }

    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        for dir in path.ancestors() {
            state.dirs.insert(dir.to_path_buf());
        }
        Ok(())
    }

    async fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        state.files.retain(|p, _| !p.starts_with(path));
        state.dirs.retain(|p| !p.starts_with(path));
        Ok(())
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.state.borrow();
        let files = state.files.keys().map(|p| p.as_path());
        let dirs = state.dirs.iter().map(|p| p.as_path());
        let mut names: Vec<String> = files
            .chain(dirs)
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn exists(&self, path: &Path) -> io::Result<bool> {
        let state = self.state.borrow();
        Ok(state.files.contains_key(path) || state.dirs.contains(path))
    }

    async fn write_atomic(&self, path: &Path, bytes: Vec<u8>) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        if Self::take_fault(&mut state, SimFault::Write) {
            return Err(eio("write_atomic", path));
        }
        state.files.insert(
            path.to_path_buf(),
            SimFileState {
                durable: bytes.clone(),
                current: bytes,
                unsynced: Vec::new(),
            },
        );
        Ok(())
    }

    async fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        Ok(self.content(path))
    }

    async fn available_bytes(&self, _dir: &Path) -> io::Result<u64> {
        Ok(self.state.borrow().available_bytes.unwrap_or(u64::MAX))
    }
}

impl SimFile {
    fn with_file<T>(&self, f: impl FnOnce(&mut SimState) -> io::Result<T>) -> io::Result<T> {
        let mut state = self.state.borrow_mut();
        if !state.files.contains_key(&self.path) {
            return Err(not_found(&self.path));
        }
        f(&mut state)
    }
}

impl DiskFile for SimFile {
    type Buf = Vec<u8>;

    fn max_io_bytes(&self) -> usize {
        SIM_MAX_IO_BYTES
    }

    fn alloc_buffer(&self, len: usize) -> Vec<u8> {
        assert_eq!(len % BLOCK_BYTES, 0, "direct-write buffer of {len} bytes");
        vec![0; len]
    }

    async fn write_at(&self, buf: Vec<u8>, offset: u64) -> io::Result<usize> {
        if offset % BLOCK_BYTES as u64 != 0 || buf.len() % BLOCK_BYTES != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: unaligned direct write of {} bytes at {offset}",
                    self.path.display(),
                    buf.len()
                ),
            ));
        }
        if buf.len() > SIM_MAX_IO_BYTES {
            return Err(oversized_write(&self.path, buf.len(), SIM_MAX_IO_BYTES));
        }
        self.with_file(|state| {
            if SimDisk::take_fault(state, SimFault::Write) {
                return Err(eio("write", &self.path));
            }
            let file = state.files.get_mut(&self.path).expect("checked");
            apply(&mut file.current, offset, &buf);
            let len = buf.len();
            file.unsynced.push((offset, buf));
            Ok(len)
        })
    }

    async fn read_chunk_at(&self, offset: u64, len: usize, out: &mut Vec<u8>) -> io::Result<()> {
        let device_span = (offset as usize % BLOCK_BYTES + len).div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        if device_span > SIM_MAX_IO_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: read of {len} bytes past the device limit",
                    self.path.display()
                ),
            ));
        }
        self.with_file(|state| {
            let content = &state.files[&self.path].current;
            let start = (offset as usize).min(content.len());
            let end = (start + len).min(content.len());
            out.extend_from_slice(&content[start..end]);
            state.read_bytes += (end - start) as u64;
            Ok(())
        })
    }

    async fn fdatasync(&self) -> io::Result<()> {
        self.with_file(|state| {
            if SimDisk::take_fault(state, SimFault::Sync) {
                return Err(eio("fdatasync", &self.path));
            }
            let file = state.files.get_mut(&self.path).expect("checked");
            for (offset, bytes) in std::mem::take(&mut file.unsynced) {
                apply(&mut file.durable, offset, &bytes);
            }
            Ok(())
        })
    }

    async fn len(&self) -> io::Result<u64> {
        self.with_file(|state| Ok(state.files[&self.path].current.len() as u64))
    }

    fn path(&self) -> PathBuf {
        self.path.clone()
    }
}
