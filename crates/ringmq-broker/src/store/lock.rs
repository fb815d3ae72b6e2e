//! The store's exclusive lock: `<store>/lock`, held with `flock(LOCK_EX)` by the main thread for
//! the life of the broker process, so a second broker on the same store exits at once instead
//! of writing the same segments and metadata files (as Kafka's `.lock` and RocketMQ's `lock`
//! file do). The file holds the holder's pid for the error message. The kernel drops the lock
//! when the process dies, SIGKILL included, but only once it has torn the process down (its
//! io_uring rings first): a restart issued right after a `kill -9` retries for a while
//! ([`StoreLock::acquire_retrying`]) instead of failing against the dying broker.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Name of the lock file inside the store directory.
pub const STORE_LOCK_NAME: &str = "lock";

/// Why the store's lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it; `holder` names it by pid when the lock file says.
    #[error(
        "store {} is in use: {holder} holds its lock {}{}; stop that broker or use another --store",
        store.display(),
        path.display(),
        if *waited_ms > 0 { format!(" (still after {waited_ms} ms)") } else { String::new() }
    )]
    InUse {
        store: PathBuf,
        path: PathBuf,
        holder: String,
        /// How long start-up retried before giving up (0: it did not).
        waited_ms: u64,
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
                    waited_ms: 0,
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

    /// [`StoreLock::acquire`], retried every `interval` for up to `wait` while another process
    /// holds the lock (logged once): a broker killed a moment ago holds it until the kernel has
    /// torn it down. A live holder still fails start-up, after `wait`.
    pub fn acquire_retrying(
        store_dir: &Path,
        wait: Duration,
        interval: Duration,
    ) -> Result<StoreLock, LockError> {
        let started = Instant::now();
        let mut logged = false;
        loop {
            match StoreLock::acquire(store_dir) {
                Err(LockError::InUse { holder, .. }) if started.elapsed() < wait => {
                    if !logged {
                        tracing::warn!(
                            "store {} is locked by {holder}; retrying for up to {} ms in case a \
                             killed broker is still exiting",
                            store_dir.display(),
                            wait.as_millis()
                        );
                        logged = true;
                    }
                    std::thread::sleep(interval);
                }
                Err(LockError::InUse {
                    store,
                    path,
                    holder,
                    ..
                }) => {
                    return Err(LockError::InUse {
                        store,
                        path,
                        holder,
                        waited_ms: started.elapsed().as_millis() as u64,
                    })
                }
                other => return other,
            }
        }
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

    /// A holder that lets go while start-up retries (a killed broker finishing its exit) gives
    /// the lock to the retrying one; a holder that stays fails it after the wait, saying so.
    #[test]
    fn a_retrying_acquire_takes_a_lock_released_meanwhile_and_gives_up_on_a_live_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = StoreLock::acquire(dir.path()).expect("first lock");
        let interval = Duration::from_millis(10);
        let error = StoreLock::acquire_retrying(dir.path(), Duration::from_millis(200), interval)
            .expect_err("a live holder keeps it")
            .to_string();
        assert!(error.contains("still after"), "{error}");
        let (taken_tx, taken_rx) = std::sync::mpsc::channel();
        let path = dir.path().to_path_buf();
        let retrying = std::thread::spawn(move || {
            let lock = StoreLock::acquire_retrying(&path, Duration::from_secs(60), interval);
            taken_tx.send(()).unwrap();
            lock
        });
        // Still waiting while the first holds it.
        assert!(taken_rx.recv_timeout(Duration::from_millis(100)).is_err());
        drop(first);
        retrying
            .join()
            .unwrap()
            .expect("taken once the holder let go");
    }
}
