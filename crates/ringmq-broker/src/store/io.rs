//! The storage I/O seam. Every byte the store reads or writes goes through [`Disk`] and
//! [`DiskFile`], implemented by [`crate::store::glommio_disk::GlommioDisk`] (O_DIRECT through the
//! shard's io_uring rings) and, in tests, by `crate::testing::disk::SimDisk` (in memory, with
//! seeded latencies and faults; loses unsynced writes and directory entries, tears the last
//! write and flips bits on a simulated crash).
//!
//! Durability of the namespace: a file created by [`Disk::open`] may vanish in a crash until
//! [`Disk::sync_dir`] of its directory completes; every other namespace operation
//! (`create_dir_all`, `remove`, `remove_dir_all`, `write_atomic`) is durable once it returns.
//!
//! The traits use `async fn` without `Send` bounds on purpose: a shard's futures never leave
//! its core.
#![allow(async_fn_in_trait)]

use std::io;
use std::path::{Path, PathBuf};

/// Alignment and granularity of every data write: the device's physical block.
pub const BLOCK_BYTES: usize = 4096;

pub trait Disk: Clone + 'static {
    type File: DiskFile;

    /// Opens a data file for O_DIRECT reads and writes, creating it (empty) if `create`. A
    /// created file's directory entry is durable only after [`Disk::sync_dir`] of its directory:
    /// a caller creating several files syncs the directory once.
    async fn open(&self, path: &Path, create: bool) -> io::Result<Self::File>;
    /// Unlinks a file, durably.
    async fn remove(&self, path: &Path) -> io::Result<()>;
    /// Creates a directory and any missing parents, durably (each new one is synced into its
    /// parent).
    async fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it; succeeds if it does not exist.
    async fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// File names (not paths) in a directory, sorted; empty if the directory does not exist.
    async fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    async fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Replaces `path` with `bytes` atomically and durably: write a temporary file, fsync it,
    /// rename it over `path`, fsync the directory.
    async fn write_atomic(&self, path: &Path, bytes: Vec<u8>) -> io::Result<()>;
    /// The whole content of a small file, or `None` if it does not exist.
    async fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>>;
    /// Bytes an unprivileged writer may still allocate on the file system holding `dir`.
    async fn available_bytes(&self, dir: &Path) -> io::Result<u64>;
    /// The size and use of the file system holding `dir` (statvfs), for retention's disk
    /// ratios.
    async fn space(&self, dir: &Path) -> io::Result<DiskSpace>;
    /// Makes the entries of files created in `dir` so far durable (fsync of the directory).
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The file system's blocks as `df` counts them, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes in use (all blocks minus free ones, the root reserve counted as free).
    pub used_bytes: u64,
    /// Bytes an unprivileged writer may still allocate.
    pub available_bytes: u64,
}

impl DiskSpace {
    /// Used over usable (used plus available), as `df`'s Use% and RocketMQ compute it: the
    /// root reserve is not space the broker can fill. 0 for an empty or unknown file system.
    pub fn used_ratio(&self) -> f64 {
        let usable = self.used_bytes.saturating_add(self.available_bytes);
        if usable == 0 {
            0.0
        } else {
            self.used_bytes as f64 / usable as f64
        }
    }
}

// `len` is the file size in bytes, not a collection length; an `is_empty` would mean nothing.
#[allow(clippy::len_without_is_empty)]
pub trait DiskFile: 'static {
    /// A buffer suitable for a direct write: aligned to [`BLOCK_BYTES`].
    type Buf: AsRef<[u8]> + AsMut<[u8]>;

    /// The largest single read or write this file takes: the device's limit for one request
    /// (`max_sectors_kb`), a multiple of [`BLOCK_BYTES`]. A direct request above it is split by
    /// the block layer, and glommio 0.9 on an IOPOLL ring never sees such a request complete
    /// (glommio#633): the executor parks forever. Writers split by it; [`DiskFile::read_at`]
    /// splits reads by it; [`DiskFile::write_at`] refuses a larger buffer.
    fn max_io_bytes(&self) -> usize;
    /// A zeroed write buffer of `len` bytes (a multiple of [`BLOCK_BYTES`], at most
    /// [`DiskFile::max_io_bytes`]).
    fn alloc_buffer(&self, len: usize) -> Self::Buf;
    /// Writes the whole buffer at `offset` (a multiple of [`BLOCK_BYTES`]). A buffer larger
    /// than [`DiskFile::max_io_bytes`] is refused with `InvalidInput`.
    async fn write_at(&self, buf: Self::Buf, offset: u64) -> io::Result<usize>;
    /// One read of at most [`DiskFile::max_io_bytes`] at any offset, appended to `out`; fewer
    /// bytes only at the end of the file. Callers use [`DiskFile::read_at`].
    async fn read_chunk_at(&self, offset: u64, len: usize, out: &mut Vec<u8>) -> io::Result<()>;
    /// Reads up to `len` bytes at any offset; fewer only at the end of the file. The one place
    /// where reads are cut to the device's limit: recovery, consume-queue loads and pulls all
    /// come through here.
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let before = out.len();
            let at = offset + before as u64;
            let want = chunk_len(at, len - before, self.max_io_bytes());
            self.read_chunk_at(at, want, &mut out).await?;
            if out.len() - before < want {
                break;
            }
        }
        Ok(out)
    }
    /// Writes `bytes` (a multiple of [`BLOCK_BYTES`]) at `offset` (likewise) in requests of at
    /// most [`DiskFile::max_io_bytes`], each copied into an aligned buffer. For writers that
    /// build their bytes elsewhere; the commitlog fills aligned buffers directly instead.
    async fn write_bytes_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        let chunk = self.max_io_bytes();
        for (index, part) in bytes.chunks(chunk).enumerate() {
            let mut buf = self.alloc_buffer(part.len());
            buf.as_mut().copy_from_slice(part);
            self.write_at(buf, offset + (index * chunk) as u64).await?;
        }
        Ok(())
    }
    /// Makes every completed write to this file durable.
    async fn fdatasync(&self) -> io::Result<()>;
    async fn len(&self) -> io::Result<u64>;
    fn path(&self) -> PathBuf;
}

/// How much of a read of `len` bytes at `offset` one request may take: a direct read goes to
/// the device from the block below `offset` to the block above its end, and that whole span
/// must stay within `max_io_bytes` (a multiple of [`BLOCK_BYTES`]).
pub fn chunk_len(offset: u64, len: usize, max_io_bytes: usize) -> usize {
    let skew = (offset % BLOCK_BYTES as u64) as usize;
    len.min(max_io_bytes - skew)
}

/// The error for a write buffer above the file's [`DiskFile::max_io_bytes`]: a caller that did
/// not split its write, a programming error answered with an error rather than a hung core.
pub fn oversized_write(path: &Path, len: usize, max_io_bytes: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{}: direct write of {len} bytes exceeds the device's single-request limit of {max_io_bytes} bytes",
            path.display()
        ),
    )
}
