//! The audit log: one JSON line per admin call (cluster operations, topic create and delete,
//! user and ACL changes, the metadata snapshot, delete-expired), allowed or refused, written to
//! `audit_log_file` (default `<store_dir>/audit.log`).
//!
//! Lines enter from the shard threads (`shard::handlers::handle_client`) through a bounded
//! channel of [`AUDIT_QUEUE_LINES`] and leave through one writer thread that appends them to
//! the file, so a shard never blocks on the file. A full channel drops the line, counts it in
//! `audit_lines_dropped_total` and says so in the log (at most once every 10 s, with the
//! number dropped since): a drop is never silent.

use crate::constants::AUDIT_QUEUE_LINES;
use serde::Serialize;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
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

struct AuditLog {
    lines: SyncSender<String>,
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
        dropped_unlogged: AtomicU64::new(0),
        last_warning_ms: AtomicU64::new(0),
    };
    if AUDIT.set(log).is_err() {
        return Err("the audit log is already open".to_string());
    }
    let shown = path.display().to_string();
    std::thread::Builder::new()
        .name("ringmq-audit".to_string())
        .spawn(move || write_lines(file, receiver, &shown))
        .map_err(|e| format!("starting the audit writer: {e}"))?;
    Ok(())
}

/// The writer thread: appends each line, flushing once the queue is drained, so a burst is
/// one write and a lone line is on disk (in the page cache) at once.
fn write_lines(file: std::fs::File, receiver: Receiver<String>, path: &str) {
    let mut out = std::io::BufWriter::new(file);
    while let Ok(line) = receiver.recv() {
        let mut written = out.write_all(line.as_bytes());
        while let Ok(next) = receiver.try_recv() {
            written = written.and_then(|_| out.write_all(next.as_bytes()));
        }
        if let Err(e) = written.and_then(|_| out.flush()) {
            tracing::error!(file = %path, "writing the audit log failed: {e}");
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Queues one line. `false`: dropped (queue full); the caller counts it. Without an open
/// audit log (unit tests, simulations), nothing is written and nothing counts as dropped.
pub fn record(line: &AuditLine<'_>) -> bool {
    let Some(log) = AUDIT.get() else {
        return true;
    };
    let mut text = serde_json::to_string(line).expect("an audit line serializes");
    text.push('\n');
    match log.lines.try_send(text) {
        Ok(()) => true,
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
            false
        }
    }
}

/// The time field of a line made now.
pub fn time_ms() -> u64 {
    now_ms()
}
