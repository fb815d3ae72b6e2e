//! The cleaning stage: commitlog retention for one shard, with the state only it changes.
//!
//! Every `clean_resource_interval_ms` (or at once when `DeleteExpired` asks) the cleaner makes
//! a pass over the segments before the one being written, oldest first, one at a time:
//!
//! - above `disk_max_used_space_ratio` of the store's file system the oldest segment goes
//!   whatever its age and the hour (disk pressure);
//! - otherwise, during a `delete_when` hour (any hour for a pass an operator asked for, as
//!   RocketMQ's manual deletion), the oldest segment goes when its newest record was stored
//!   more than `file_reserved_time_ms` ago on the broker's clock. A segment that is not old
//!   enough ends the pass: the ones after it are newer.
//!
//! Each deletion persists the new log head in the checkpoint (under the store gate, so no
//! flush or metadata write overlaps it), moves the queues' minimum, then unlinks the file,
//! in that order (see `docs/storage.md`); recovery finishes one a crash cut short. Appends never
//! wait for the cleaner: it holds the store gate only for the checkpoint write.
//!
//! Its state: whether appends are refused (disk use above `disk_space_warning_ratio`, checked
//! at every pass and after every deletion; [`Cleaning::refusal`] answers appends DISK_FULL
//! until it falls) and the last disk use seen. Its event, notified only here: `wanted` (an
//! operator's pass, or a stop).

use super::completion::Event;
use super::Shard;
use crate::config::DeleteHours;
use crate::metrics::Counter;
use crate::protocol::admin::{DeletedSegment, ShardRetention};
use crate::store::io::Disk;
use crate::store::{AppendError, StoreError};
use futures_channel::oneshot;
use futures_lite::future;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;
use tracing::{error, info, warn};

pub struct Cleaning {
    wanted: Event,
    /// Operators waiting for a pass (`DeleteExpired`): answered when the next one ends.
    waiting: RefCell<Vec<oneshot::Sender<PassReport>>>,
    /// Appends are refused: disk use was above the warning ratio at the last measurement.
    refusing: Cell<bool>,
    /// Used share of the store's file system at the last measurement (0 to 1).
    used_ratio: Cell<f64>,
}

/// What one pass did.
#[derive(Clone, Debug, Default)]
pub struct PassReport {
    pub deleted: Vec<DeletedSegment>,
    /// Why the pass stopped early.
    pub error: Option<String>,
}

impl Default for Cleaning {
    fn default() -> Self {
        Cleaning {
            wanted: Event::default(),
            waiting: RefCell::new(Vec::new()),
            refusing: Cell::new(false),
            used_ratio: Cell::new(0.0),
        }
    }
}

impl Cleaning {
    /// Asks for a pass now, ignoring the `delete_when` hours; the answer comes when it ends.
    pub fn request_pass(&self) -> oneshot::Receiver<PassReport> {
        let (tx, rx) = oneshot::channel();
        self.waiting.borrow_mut().push(tx);
        self.wanted.notify();
        rx
    }

    /// Wakes the cleaner (a stop).
    pub fn wake(&self) {
        self.wanted.notify();
    }

    /// `Some(DISK_FULL)` while disk use is above `disk_space_warning_ratio`.
    pub fn refusal(&self, warning_ratio: f64) -> Option<AppendError> {
        self.refusing.get().then(|| {
            AppendError::DiskFull(format!(
                "the store's file system is {:.1}% used, above disk_space_warning_ratio {:.1}%: \
                 appends are refused until retention or an operator frees space",
                self.used_ratio.get() * 100.0,
                warning_ratio * 100.0
            ))
        })
    }

    pub fn appends_refused(&self) -> bool {
        self.refusing.get()
    }

    pub fn used_ratio(&self) -> f64 {
        self.used_ratio.get()
    }
}

/// The cleaner task: a pass every `clean_resource_interval_ms`, or at once when asked.
pub async fn run_cleaner<D: Disk>(shard: Rc<Shard<D>>) {
    let interval = Duration::from_millis(shard.config().clean_resource_interval_ms);
    let cleaning = shard.cleaning();
    loop {
        if shard.lifecycle().is_background_stopping() {
            return;
        }
        let waiters = std::mem::take(&mut *cleaning.waiting.borrow_mut());
        let report = pass(&shard, !waiters.is_empty()).await;
        for waiter in waiters {
            let _ = waiter.send(report.clone());
        }
        // Asked again while this pass ran: run the next one now.
        if !cleaning.waiting.borrow().is_empty() {
            continue;
        }
        let wanted = cleaning.wanted.listen();
        future::or(
            async {
                let _ = wanted.await;
            },
            shard.clock().sleep(interval),
        )
        .await;
    }
}

/// One pass: delete from the front while the oldest deletable segment is due, then stop.
pub async fn pass<D: Disk>(shard: &Rc<Shard<D>>, forced: bool) -> PassReport {
    let config = shard.config();
    let store = shard.store();
    let segment_bytes = store.segment_size_bytes();
    // Validated at start-up; an unparsable value here would be a bug, and the safe reading of
    // one is "no hour".
    let hours = DeleteHours::parse(&config.delete_when).unwrap_or(DeleteHours::NONE);
    let mut report = PassReport::default();
    loop {
        let ratio = match measure(shard).await {
            Ok(ratio) => ratio,
            Err(e) => {
                warn!(
                    shard = shard.id(),
                    "retention cannot read the disk's use: {e}"
                );
                report.error = Some(format!("reading the disk's use: {e}"));
                // Age-based expiry does not need the ratio; pressure cannot be judged.
                0.0
            }
        };
        let Some(&base) = store.retention_candidates().first() else {
            break;
        };
        let reason = if ratio > config.disk_max_used_space_ratio {
            "disk_pressure"
        } else if forced || hours.contains(shard.clock().local_hour()) {
            match store.newest_store_ms(base).await {
                Ok(newest) => {
                    let now = shard.clock().unix_ms();
                    let expired = newest
                        .is_none_or(|ms| now.saturating_sub(ms) >= config.file_reserved_time_ms);
                    if !expired {
                        break;
                    }
                    "expired"
                }
                Err(e) => {
                    error!(
                        shard = shard.id(),
                        "retention could not read segment {base} for its age: {e}"
                    );
                    report.error = Some(format!("reading segment {base}: {e}"));
                    break;
                }
            }
        } else {
            break;
        };
        let file = store.commitlog().segment_path(base).display().to_string();
        match delete_segment(shard, base).await {
            Ok(()) => {
                shard.probe().add(Counter::RetentionDeletedSegments, 1);
                shard
                    .probe()
                    .add(Counter::RetentionReclaimedBytes, segment_bytes);
                info!(
                    shard = shard.id(),
                    segment = %file,
                    reason,
                    log_head = store.log_head(),
                    disk_used_ratio = ratio,
                    "retention deleted a commitlog segment"
                );
                report.deleted.push(DeletedSegment {
                    file,
                    start_offset: base,
                    bytes: segment_bytes,
                    reason: reason.to_string(),
                });
            }
            Err(e) => {
                error!(
                    shard = shard.id(),
                    "retention could not delete segment {file}: {e}"
                );
                report.error = Some(format!("deleting {file}: {e}"));
                break;
            }
        }
    }
    report
}

/// Deletes the oldest segment in the order recovery relies on: the new log head in the
/// checkpoint, the queues' minimum, then the file.
async fn delete_segment<D: Disk>(shard: &Rc<Shard<D>>, base: u64) -> Result<(), StoreError> {
    let store = shard.store();
    let head = {
        let _gate = shard.flushing().lock_store().await;
        store.advance_log_head(base).await?
    };
    store.expire_queues_before(head).await?;
    store.remove_expired_segment(base).await
}

/// Reads the store's file system's use, keeps it and turns the append refusal on or off.
async fn measure<D: Disk>(shard: &Shard<D>) -> std::io::Result<f64> {
    let space = shard.disk().space(shard.dir()).await?;
    let ratio = space.used_ratio();
    let cleaning = shard.cleaning();
    cleaning.used_ratio.set(ratio);
    let warning = shard.config().disk_space_warning_ratio;
    let above = ratio > warning;
    if above && !cleaning.refusing.get() {
        error!(
            shard = shard.id(),
            "the store's file system is {:.1}% used, above disk_space_warning_ratio {:.1}%: \
             refusing appends with DISK_FULL until usage falls",
            ratio * 100.0,
            warning * 100.0
        );
    } else if !above && cleaning.refusing.get() {
        info!(
            shard = shard.id(),
            "the store's file system is {:.1}% used, at or below disk_space_warning_ratio: \
             accepting appends again",
            ratio * 100.0
        );
    }
    cleaning.refusing.set(above);
    Ok(ratio)
}

/// This shard's row of a `Retention` answer.
pub fn status<D: Disk>(shard: &Shard<D>, report: PassReport) -> ShardRetention {
    let store = shard.store();
    let probe = shard.snapshot();
    ShardRetention {
        shard: shard.id(),
        log_head: store.log_head(),
        max_offset: store.max_offset(),
        segments: store.commitlog().segment_count(),
        disk_used_ratio: shard.cleaning().used_ratio(),
        appends_refused: shard.cleaning().appends_refused(),
        deleted: report.deleted,
        deleted_segments_total: probe.counter(Counter::RetentionDeletedSegments),
        reclaimed_bytes_total: probe.counter(Counter::RetentionReclaimedBytes),
        error: report.error,
    }
}
