//! The store's exclusive lock: `<store>/lock`, held with `flock(LOCK_EX)` by the main thread for
//! the life of the broker process, so a second broker on the same store exits at once instead
//! of writing the same segments and metadata files (as Kafka's `.lock` and RocketMQ's `lock`
//! file do). The file holds the holder's pid for the error message. The kernel drops the lock
//! when the process dies, SIGKILL included, so a supervisor's immediate restart takes it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Name of the lock file inside the store directory.
pub const STORE_LOCK_NAME: &str = "lock";

/// Why the store's lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it; `holder` names it by pid when the lock file says.
    #[error(
        "store {} is in use: {holder} holds its lock {}; stop that broker or use another --store",
        store.display(),
        path.display()
    )]
    InUse {
        store: PathBuf,
        path: PathBuf,
        holder: String,
    },
    #[error("store lock {}: {what}{source}", path.display())]
    Io {
        path: PathBuf,
        /// What was being done, with a trailing `: `, or empty.
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Holds the lock until dropped (the process exits).
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
    pub path: PathBuf,
}

impl StoreLock {
    /// Takes the lock of `store_dir` without waiting. Fails with a message naming the store
    /// and, when it can be read, the pid of the process that holds it.
    pub fn acquire(store_dir: &Path) -> Result<StoreLock, LockError> {
        let path = store_dir.join(STORE_LOCK_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| LockError::Io {
                path: path.clone(),
                what: "",
                source,
            })?;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "another process".to_string(),
                    pid => format!("the process with pid {pid}"),
                };
                return Err(LockError::InUse {
                    store: store_dir.to_path_buf(),
                    path,
                    holder,
                });
            }
            return Err(LockError::Io {
                path,
                what: "",
                source: error,
            });
        }
        let pid = std::process::id();
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ()))
            .and_then(|()| file.write_all(format!("{pid}\n").as_bytes()))
            .and_then(|()| file.sync_data())
            .map_err(|source| LockError::Io {
                path: path.clone(),
                what: "writing the pid: ",
                source,
            })?;
        Ok(StoreLock { _file: file, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_and_the_lock_frees_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = StoreLock::acquire(dir.path()).expect("first lock");
        let error = StoreLock::acquire(dir.path())
            .expect_err("second lock must fail")
            .to_string();
        assert!(error.contains(&dir.path().display().to_string()), "{error}");
        assert!(
            error.contains(&format!("pid {}", std::process::id())),
            "{error}"
        );
        drop(first);
        StoreLock::acquire(dir.path()).expect("lock after the holder let go");
    }
}
