//! [`GlommioDisk`]: the real [`Disk`], O_DIRECT data files through the executor's io_uring
//! rings (`glommio::io::DmaFile`) and metadata operations on glommio's blocking thread pool.
//!
//! **Call [`prime_iopoll_probe`] at the start of every executor, before any other `dma_open`
//! on the data device.** glommio 0.9 probes IOPOLL support with the first file it O_DIRECT-opens
//! on each thread; when that file is empty, fallocated or sparse the probe is wrong and every
//! later O_DIRECT read fails with EOPNOTSUPP while writes still succeed (glommio#605, #670; see
//! `notes/glommio-probe.md` section 1). The probe result is thread-local, so once per executor.
//!
//! Metadata calls (`list`, `write_atomic`, `remove`, ...) use `std::fs` inside
//! `spawn_blocking`, so the core never blocks on them. Closures there never panic: a panic in
//! a `spawn_blocking` closure hangs the caller (glommio/glommio#37); they return `io::Result`.

use super::io::{oversized_write, Disk, DiskFile, DiskSpace, BLOCK_BYTES};
use glommio::io::{DmaBuffer, DmaFile, OpenOptions};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Name of the sentinel file opened first on every executor (see [`prime_iopoll_probe`]).
pub const IOPOLL_SENTINEL_NAME: &str = ".glommio_sentinel";
/// Size of the sentinel: one written, allocated block, so glommio's 512-byte probe read
/// reaches the device and learns the truth.
const IOPOLL_SENTINEL_BYTES: usize = 4096;

/// Makes glommio's per-thread IOPOLL probe see a non-empty, written file on the data device.
///
/// Must run on every executor thread before any other `dma_open` on the device of `dir`;
/// otherwise O_DIRECT reads may fail with EOPNOTSUPP for the life of the thread.
pub async fn prime_iopoll_probe(dir: &Path) -> io::Result<()> {
    let sentinel = dir.join(IOPOLL_SENTINEL_NAME);
    let for_write = sentinel.clone();
    let dir_owned = dir.to_path_buf();
    blocking(move || {
        fs::create_dir_all(&dir_owned)?;
        let big_enough = fs::metadata(&for_write)
            .map(|m| m.len() >= IOPOLL_SENTINEL_BYTES as u64)
            .unwrap_or(false);
        if !big_enough {
            let mut file = fs::File::create(&for_write)?;
            file.write_all(&[0u8; IOPOLL_SENTINEL_BYTES])?;
            file.sync_all()?;
        }
        Ok(())
    })
    .await?;
    // Read access is required: a write-only first open breaks the probe too (glommio#670).
    let file = OpenOptions::new()
        .read(true)
        .dma_open(&sentinel)
        .await
        .map_err(io::Error::from)?;
    file.close().await.map_err(io::Error::from)?;
    Ok(())
}

/// Runs `f` on glommio's blocking pool. Must be called from inside an executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    glommio::executor().spawn_blocking(f).await
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct GlommioDisk;

impl GlommioDisk {
    pub fn new() -> Self {
        GlommioDisk
    }
}

pub struct GlommioFile {
    file: DmaFile,
    path: PathBuf,
    /// The device's single-request limit, read once at open (see [`DiskFile::max_io_bytes`]).
    max_io_bytes: usize,
}

/// Used when the file's device has no request queue in sysfs (overlay, tmpfs, network file
/// systems report device major 0): 128 KiB is the kernel's default `max_sectors_kb` and what
/// glommio assumes for an unknown device.
const FALLBACK_MAX_IO_BYTES: usize = 128 * 1024;

/// The most bytes one request to block device `major:minor` may carry, from
/// `/sys/dev/block/M:m/queue/max_sectors_kb` (a partition's queue is its disk's, one level up),
/// rounded down to whole blocks.
fn device_max_io_bytes(major: u32, minor: u32) -> usize {
    let dev = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let kib = [dev.join("queue"), dev.join("../queue")]
        .iter()
        .find_map(|queue| {
            fs::read_to_string(queue.join("max_sectors_kb"))
                .ok()
                .and_then(|text| text.trim().parse::<usize>().ok())
        });
    match kib {
        Some(kib) if kib * 1024 >= BLOCK_BYTES => kib * 1024 / BLOCK_BYTES * BLOCK_BYTES,
        _ => FALLBACK_MAX_IO_BYTES,
    }
}

impl Disk for GlommioDisk {
    type File = GlommioFile;

    /// Opens with O_DIRECT, read and write. A newly created file's directory entry is not
    /// synced here: the caller syncs the directory ([`Disk::sync_dir`]) once it needs the file
    /// to survive a crash.
    async fn open(&self, path: &Path, create: bool) -> io::Result<GlommioFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .dma_open(path)
            .await
            .map_err(io::Error::from)?;
        let (major, minor) = (file.dev_major(), file.dev_minor());
        let max_io_bytes = blocking(move || Ok(device_max_io_bytes(major, minor))).await?;
        Ok(GlommioFile {
            file,
            path: path.to_path_buf(),
            max_io_bytes,
        })
    }

    /// Unlinks and fsyncs the parent directory, so a removed file stays removed after a crash.
    async fn remove(&self, path: &Path) -> io::Result<()> {
        let path = path.to_path_buf();
        blocking(move || {
            fs::remove_file(&path)?;
            sync_dir(&parent_of(&path))
        })
        .await
    }

    /// Syncs the parent of every directory it creates, not only the last one's: a crash
    /// must not lose `a/` after `a/b/` was reported created.
    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let path = path.to_path_buf();
        blocking(move || {
            let missing: Vec<PathBuf> = path
                .ancestors()
                .take_while(|dir| !dir.as_os_str().is_empty() && !dir.exists())
                .map(Path::to_path_buf)
                .collect();
            fs::create_dir_all(&path)?;
            for dir in missing.iter().rev() {
                sync_dir(&parent_of(dir))?;
            }
            Ok(())
        })
        .await
    }

    async fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let path = path.to_path_buf();
        blocking(move || match fs::remove_dir_all(&path) {
            Ok(()) => sync_dir(&parent_of(&path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        })
        .await
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let dir = dir.to_path_buf();
        blocking(move || {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let mut names = Vec::new();
            for entry in entries {
                names.push(entry?.file_name().to_string_lossy().into_owned());
            }
            names.sort();
            Ok(names)
        })
        .await
    }

    async fn exists(&self, path: &Path) -> io::Result<bool> {
        let path = path.to_path_buf();
        blocking(move || path.try_exists()).await
    }

    async fn write_atomic(&self, path: &Path, bytes: Vec<u8>) -> io::Result<()> {
        let path = path.to_path_buf();
        blocking(move || write_atomic_blocking(&path, &bytes)).await
    }

    async fn available_bytes(&self, dir: &Path) -> io::Result<u64> {
        let dir = dir.to_path_buf();
        blocking(move || {
            let c_path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
            let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
            // SAFETY: a valid C string and a pointer to writable memory of the right type.
            if unsafe { libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: statvfs succeeded, so it filled the struct.
            let stats = unsafe { stats.assume_init() };
            Ok(stats.f_bavail * stats.f_frsize)
        })
        .await
    }

    async fn space(&self, dir: &Path) -> io::Result<DiskSpace> {
        let dir = dir.to_path_buf();
        blocking(move || {
            let c_path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
            let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
            // SAFETY: a valid C string and a pointer to writable memory of the right type.
            if unsafe { libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: statvfs succeeded, so it filled the struct.
            let stats = unsafe { stats.assume_init() };
            Ok(DiskSpace {
                used_bytes: stats.f_blocks.saturating_sub(stats.f_bfree) * stats.f_frsize,
                available_bytes: stats.f_bavail * stats.f_frsize,
            })
        })
        .await
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let dir = dir.to_path_buf();
        blocking(move || sync_dir(&dir)).await
    }

    async fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        let path = path.to_path_buf();
        blocking(move || match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }
}

impl DiskFile for GlommioFile {
    type Buf = DmaBuffer;

    fn max_io_bytes(&self) -> usize {
        self.max_io_bytes
    }

    fn alloc_buffer(&self, len: usize) -> DmaBuffer {
        let mut buf = self.file.alloc_dma_buffer(len);
        buf.as_bytes_mut().fill(0);
        buf
    }

    async fn write_at(&self, buf: DmaBuffer, offset: u64) -> io::Result<usize> {
        let len = buf.len();
        if len > self.max_io_bytes {
            return Err(oversized_write(&self.path, len, self.max_io_bytes));
        }
        let written = self
            .file
            .write_at(buf, offset)
            .await
            .map_err(io::Error::from)?;
        if written != len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "{}: short direct write of {written} of {len} bytes at {offset}",
                    self.path.display()
                ),
            ));
        }
        Ok(written)
    }

    async fn read_chunk_at(&self, offset: u64, len: usize, out: &mut Vec<u8>) -> io::Result<()> {
        debug_assert!(
            (offset as usize % BLOCK_BYTES + len).div_ceil(BLOCK_BYTES) * BLOCK_BYTES
                <= self.max_io_bytes,
            "read of {len} bytes at {offset} past the device limit"
        );
        let bytes = self
            .file
            .read_at(offset, len)
            .await
            .map_err(io::Error::from)?;
        out.extend_from_slice(&bytes);
        Ok(())
    }

    async fn fdatasync(&self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(io::Error::from)
    }

    async fn len(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(io::Error::from)
    }

    fn path(&self) -> PathBuf {
        self.path.clone()
    }
}

/// Permissions of the files [`write_atomic_blocking`] makes.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Replaces `path` with `bytes` so that a crash leaves either the old file or the new one:
/// write `<path>.tmp`, sync it, rename it over `path`, sync the directory. Blocks the calling
/// thread; [`GlommioDisk::write_atomic`] runs it on the blocking pool, and the server calls it
/// directly before any executor starts.
///
/// The file is made `0600` (owner only, whatever the umask): these are the store's metadata
/// files, `users.json`'s SCRAM keys among them. A stale `<path>.tmp` (a crash mid-write, or one
/// planted with looser permissions) is removed and the new one made with `O_EXCL`, so the
/// bytes never land in a file someone else opened first.
pub fn write_atomic_blocking(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.to_path_buf().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    sync_dir(&parent_of(path))
}
