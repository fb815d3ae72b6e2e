//! The audit log: one JSON line per admin call (cluster operations, topic create and delete,
//! user and ACL changes, the metadata snapshot, delete-expired), allowed or refused, written to
//! `audit_log_file` (default `<store_dir>/audit.log`).
//!
//! Lines enter from the shard threads (`shard::handlers::handle_client`) through a bounded
//! channel of [`AUDIT_QUEUE_LINES`] and leave through one writer thread that appends them to
//! the file, so a shard never blocks on the file. A full channel drops the line, counts it in
//! `audit_lines_dropped_total` and says so in the log (at most once every 10 s, with the
//! number dropped since): a drop is never silent. Lines the writer failed to write count as
//! dropped too (added by the next line recorded, as the writer has no shard's counters). At a
//! clean shutdown [`shutdown`] drains the queue and joins the writer, so every line queued
//! before it is in the file.

use crate::constants::AUDIT_QUEUE_LINES;
use serde::Serialize;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Dropped lines are logged at most this often (with their count), so a stalled disk does not
/// turn into a flood of warnings.
const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// One line of the audit log.
#[derive(Clone, Debug, Serialize)]
pub struct AuditLine<'a> {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub principal: &'a str,
    /// The client's address; `null` for a call without one (the Kafka listener's, today).
    pub peer: Option<SocketAddr>,
    /// The request's name (`ClusterPromote`, `TopicCreate`, `AclAdd`, ...).
    pub operation: &'a str,
    /// What it acts on: `cluster`, `topic:orders`, ...
    pub target: &'a str,
    /// `ok`, or `refused`.
    pub result: &'a str,
    /// The status it was answered with (`OK`, `NOT_AUTHORIZED`, `NOT_MASTER`, ...).
    pub status: &'a str,
}

/// What the writer thread is sent: a line, or the end (after every line queued before it).
enum Message {
    Line(String),
    Stop,
}

struct AuditLog {
    lines: SyncSender<Message>,
    /// The writer thread, joined by [`shutdown`].
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Lines the writer could not write, not yet counted by a shard.
    failed_uncounted: AtomicU64,
    dropped_unlogged: AtomicU64,
    /// Milliseconds since the epoch of the last drop warning.
    last_warning_ms: AtomicU64,
}

static AUDIT: OnceLock<AuditLog> = OnceLock::new();

/// The file the audit log goes to.
pub fn audit_path(configured: Option<&Path>, store_dir: &Path) -> PathBuf {
    configured
        .map(Path::to_path_buf)
        .unwrap_or_else(|| store_dir.join("audit.log"))
}

/// Opens (appends to) `path` and starts the writer thread. Called once at start; an error
/// names the file.
pub fn install(path: &Path) -> Result<(), String> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("audit_log_file {}: {e}", path.display()))?;
    let (lines, receiver) = sync_channel(AUDIT_QUEUE_LINES);
    let log = AuditLog {
        lines,
        writer: Mutex::new(None),
        failed_uncounted: AtomicU64::new(0),
        dropped_unlogged: AtomicU64::new(0),
        last_warning_ms: AtomicU64::new(0),
    };
    if AUDIT.set(log).is_err() {
        return Err("the audit log is already open".to_string());
    }
    let shown = path.display().to_string();
    let writer = std::thread::Builder::new()
        .name("ringmq-audit".to_string())
        .spawn(move || write_lines(file, receiver, &shown))
        .map_err(|e| format!("starting the audit writer: {e}"))?;
    if let Some(log) = AUDIT.get() {
        *log.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(writer);
    }
    Ok(())
}

/// Writes every line queued so far and stops the writer (a clean shutdown, once the shards
/// stopped). Blocks until the file has them; without an open audit log it does nothing.
pub fn shutdown() {
    let Some(log) = AUDIT.get() else {
        return;
    };
    let writer = log.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(writer) = writer {
        if log.lines.send(Message::Stop).is_ok() {
            let _ = writer.join();
        }
    }
}

/// The writer thread: appends each line, flushing once the queue is drained, so a burst is
/// one write and a lone line is on disk (in the page cache) at once. A burst that fails is
/// counted as dropped, all of it (which of its lines reached the file is unknown).
fn write_lines(file: std::fs::File, receiver: Receiver<Message>, path: &str) {
    let mut out = std::io::BufWriter::new(file);
    let mut stopping = false;
    while !stopping {
        let Ok(Message::Line(line)) = receiver.recv() else {
            break;
        };
        let mut burst = 1u64;
        let mut written = out.write_all(line.as_bytes());
        while let Ok(next) = receiver.try_recv() {
            match next {
                Message::Line(next) => {
                    burst += 1;
                    written = written.and_then(|_| out.write_all(next.as_bytes()));
                }
                Message::Stop => {
                    stopping = true;
                    break;
                }
            }
        }
        if let Err(e) = written.and_then(|_| out.flush()) {
            if let Some(log) = AUDIT.get() {
                log.failed_uncounted.fetch_add(burst, Ordering::Relaxed);
            }
            tracing::error!(
                file = %path,
                lines = burst,
                "writing the audit log failed (the lines count in audit_lines_dropped_total): {e}"
            );
        }
    }
    let _ = out.flush();
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Queues one line. Returns the lines the caller counts as dropped: this one if the queue was
/// full, and those the writer failed to write since the last call. Without an open audit log
/// (unit tests, simulations), nothing is written and nothing counts as dropped.
pub fn record(line: &AuditLine<'_>) -> u64 {
    let Some(log) = AUDIT.get() else {
        return 0;
    };
    let failed = log.failed_uncounted.swap(0, Ordering::Relaxed);
    let mut text = serde_json::to_string(line).expect("an audit line serializes");
    text.push('\n');
    match log.lines.try_send(Message::Line(text)) {
        Ok(()) => failed,
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            let dropped = log.dropped_unlogged.fetch_add(1, Ordering::Relaxed) + 1;
            let now = now_ms();
            let last = log.last_warning_ms.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= DROP_WARNING_INTERVAL.as_millis() as u64
                && log
                    .last_warning_ms
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                let dropped = log.dropped_unlogged.swap(0, Ordering::Relaxed).max(dropped);
                tracing::warn!(
                    dropped,
                    "the audit writer's queue is full ({AUDIT_QUEUE_LINES} lines): dropped audit lines (audit_lines_dropped_total counts them)"
                );
            }
            failed + 1
        }
    }
}

/// The time field of a line made now.
pub fn time_ms() -> u64 {
    now_ms()
}
