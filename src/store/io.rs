//! The storage I/O seam. Every byte the store reads or writes goes through [`Disk`] and
//! [`DiskFile`], implemented by [`crate::store::glommio_disk::GlommioDisk`] (O_DIRECT through the
//! shard's io_uring rings) and by [`crate::store::sim::SimDisk`] (in memory, loses unsynced
//! writes, tears the last write and flips bits on a simulated crash, driven by a seed).
//!
//! The traits use `async fn` without `Send` bounds on purpose: a shard's futures never leave
//! its core.
#![allow(async_fn_in_trait)]

use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};

/// Alignment and granularity of every data write: the device's physical block.
pub const BLOCK_BYTES: usize = 4096;

pub trait Disk: Clone + 'static {
    type File: DiskFile;

    /// Opens a data file for O_DIRECT reads and writes, creating it (empty) if `create`.
    async fn open(&self, path: &Path, create: bool) -> io::Result<Self::File>;
    async fn remove(&self, path: &Path) -> io::Result<()>;
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
}

// `len` is the file size in bytes, not a collection length; an `is_empty` would mean nothing.
#[allow(clippy::len_without_is_empty)]
pub trait DiskFile: 'static {
    /// A buffer suitable for a direct write: aligned to [`BLOCK_BYTES`].
    type Buf: AsRef<[u8]> + AsMut<[u8]>;
    type ReadBuf: Deref<Target = [u8]>;

    /// A zeroed write buffer of `len` bytes (a multiple of [`BLOCK_BYTES`]).
    fn alloc_buffer(&self, len: usize) -> Self::Buf;
    /// Writes the whole buffer at `offset` (a multiple of [`BLOCK_BYTES`]).
    async fn write_at(&self, buf: Self::Buf, offset: u64) -> io::Result<usize>;
    /// Reads up to `len` bytes at any offset; fewer only at the end of the file.
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Self::ReadBuf>;
    /// Makes every completed write to this file durable.
    async fn fdatasync(&self) -> io::Result<()>;
    async fn len(&self) -> io::Result<u64>;
    fn path(&self) -> PathBuf;
}
