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
//! Only segments wholly before the confirmed offset and the last checkpoint's dispatched
//! offset are candidates; age expiry also stays behind connected slaves (see [`pass`]).
//!
//! Each deletion moves the log head in memory, moves the queues' minimum, then unlinks the
//! file, in that order, writing nothing (see `docs/storage.md`): it works on a full disk, and
//! neither appends nor flushes (nor the acks waiting on them) wait for the cleaner. The next
//! regular checkpoint records the head; an operator's pass writes one first.
//!
//! Its state: whether appends are refused (disk use above `disk_space_warning_ratio`, checked
//! at every pass and after a pass that deleted; [`Cleaning::refusal`] answers appends
//! DISK_FULL until it falls [`REFUSAL_RELEASE_BAND`] below) and the last disk use seen. Its event, notified only here: `wanted` (an
//! operator's pass, or a stop).

use super::completion::Event;
use super::Shard;
use crate::config::DeleteHours;
use crate::metrics::Counter;
use crate::protocol::admin::{DeletedSegment, ShardRetention};
use crate::store::io::{Disk, DiskSpace};
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
    /// Disk-use readings that failed in a row.
    failed_measures: Cell<u32>,
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
            failed_measures: Cell::new(0),
        }
    }
}

impl Cleaning {
    /// Asks for a pass now, ignoring the `delete_when` hours; the answer comes when it ends.
    /// While the shard stops (`stopping`) the request is refused: the receiver reports a
    /// closed channel at once rather than waiting for a cleaner that is exiting.
    pub fn request_pass(&self, stopping: bool) -> oneshot::Receiver<PassReport> {
        let (tx, rx) = oneshot::channel();
        if stopping {
            return rx;
        }
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

/// Most segments one pass deletes (RocketMQ's `deleteFileBatchMax`): a pass under pressure
/// frees its share and lets the next one measure again, rather than deleting on a stale
/// reading while the unlinked files are still open (closes are asynchronous, and pull readers
/// and slave shippers may hold a descriptor).
pub const DELETE_BATCH_MAX: usize = 10;

/// Appends refused above `disk_space_warning_ratio` are accepted again only once use falls
/// this far below it: a disk hovering at the line would otherwise flip the refusal (and log)
/// at every pass.
pub const REFUSAL_RELEASE_BAND: f64 = 0.02;

/// Consecutive failed disk-use readings after which a refusal is lifted: appends refused
/// because statvfs once said "full" must not stay refused forever because it now fails (the
/// write path still reports a real ENOSPC).
pub const MEASURE_FAILURES_BEFORE_ACCEPTING: u32 = 3;

/// The cleaner task: a pass every `clean_resource_interval_ms`, or at once when asked.
pub async fn run_cleaner<D: Disk>(shard: Rc<Shard<D>>) {
    let interval = Duration::from_millis(shard.config().clean_resource_interval_ms);
    let cleaning = shard.cleaning();
    loop {
        if shard.lifecycle().is_background_stopping() {
            // Operators still waiting get their answer (the channel closes: "stopping")
            // instead of waiting for a pass that will not come.
            cleaning.waiting.borrow_mut().clear();
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

/// One pass: delete from the front while the oldest deletable segment is due, at most
/// [`DELETE_BATCH_MAX`] of them, then stop.
///
/// Never past the shard's confirmed offset (a record a SYNC_MASTER has not had acknowledged
/// must stay). Age expiry also stays behind the slowest connected slave; disk pressure may
/// delete what a slave still needs (the alternative is a full disk), with a warning: that
/// slave's link ends and it restarts from this master's log head (`docs/replication.md`).
pub async fn pass<D: Disk>(shard: &Rc<Shard<D>>, forced: bool) -> PassReport {
    let config = shard.config();
    let store = shard.store();
    let segment_bytes = store.segment_size_bytes();
    // Validated at start-up; an unparsable value here would be a bug, and the safe reading of
    // one is "no hour".
    let hours = DeleteHours::parse(&config.delete_when).unwrap_or(DeleteHours::NONE);
    let mut report = PassReport::default();
    let space = match measure(shard).await {
        Ok(space) => Some(space),
        Err(e) => {
            warn!(
                shard = shard.id(),
                "retention cannot read the disk's use: {e}"
            );
            report.error = Some(format!("reading the disk's use: {e}"));
            // Age-based expiry does not need the ratio; pressure cannot be judged.
            None
        }
    };
    let ratio = space.map_or(0.0, |s| s.used_ratio());
    // A segment goes only once a checkpoint covers it. Timed passes wait for the flusher's
    // regular one; an operator's pass writes one first, so that what was just sealed goes now
    // too, unless the disk is past the warning ratio (a write there could fail and stop the
    // store; the covered segments still go).
    if forced && !shard.cleaning().refusing.get() {
        let _gate = shard.flushing().lock_store().await;
        if let Err(e) = store.persist_metadata().await {
            warn!(
                shard = shard.id(),
                "retention could not write a checkpoint before its pass: {e}"
            );
            report.error = Some(format!("writing the checkpoint: {e}"));
        }
    }
    // Bytes this shard frees under pressure: its share of what brings the file system back to
    // the ratio (every shard of the broker shares it and each frees its part), at least one
    // segment.
    let mut to_free = match space {
        Some(space) if ratio > config.disk_max_used_space_ratio => {
            let total = (space.used_bytes + space.available_bytes) as f64;
            let excess = space.used_bytes as f64 - config.disk_max_used_space_ratio * total;
            let share = (excess.max(0.0) / shard.shard_count().max(1) as f64).ceil() as u64;
            share.max(segment_bytes)
        }
        _ => 0,
    };
    while report.deleted.len() < DELETE_BATCH_MAX {
        let confirmed = shard.confirmed_offset();
        let Some(&base) = store.retention_candidates(confirmed).first() else {
            if to_free > 0 && !store.retention_candidates(u64::MAX).is_empty() {
                warn!(
                    shard = shard.id(),
                    confirmed_offset = confirmed,
                    "disk pressure, but the oldest segment holds records not yet confirmed \
                     (acknowledged by the slaves a SYNC_MASTER needs): it stays"
                );
                report.error = Some(format!(
                    "the oldest segment holds records past the confirmed offset {confirmed}"
                ));
            }
            break;
        };
        let end = base + segment_bytes;
        let slave_needs = shard.replicas().and_then(|r| r.slowest_needed_offset());
        let held_for_slave = slave_needs.is_some_and(|needed| needed < end);
        let reason = if to_free > 0 {
            if held_for_slave {
                warn!(
                    shard = shard.id(),
                    segment = base,
                    slave_needs = slave_needs.unwrap_or(0),
                    "disk pressure deletes a segment a connected slave has not received: that \
                     slave restarts from this master's log head"
                );
            }
            "disk_pressure"
        } else if forced || hours.contains(shard.clock().local_hour()) {
            match store.newest_store_ms(base).await {
                Ok(Some(newest)) => {
                    let now = shard.clock().unix_ms();
                    if now.saturating_sub(newest) < config.file_reserved_time_ms {
                        break;
                    }
                    if let Some(needed) = slave_needs.filter(|_| held_for_slave) {
                        report.error = Some(format!(
                            "segment {base} is expired but a connected slave still needs it \
                             (it has offset {needed})"
                        ));
                        break;
                    }
                    "expired"
                }
                Ok(None) => {
                    // No record read, or the read stopped at something that is not one:
                    // the segment's age is unknown, and a flipped bit must not delete a
                    // young segment. It (and every later one) stays until an operator
                    // looks, or disk pressure takes it.
                    error!(
                        shard = shard.id(),
                        "retention cannot tell the age of segment {base} (no readable record, \
                         or a damaged one): it is kept"
                    );
                    report.error = Some(format!("segment {base}: age unknown, kept"));
                    break;
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
        match delete_segment(shard, base, confirmed).await {
            Ok(()) => {
                to_free = to_free.saturating_sub(segment_bytes);
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
    // Appends refused for a full disk are accepted again as soon as the deletions show.
    if !report.deleted.is_empty() && shard.cleaning().refusing.get() {
        let _ = measure(shard).await;
    }
    report
}

/// Deletes the oldest segment in the order recovery relies on: the head moves (in memory),
/// then the queues' minimum (dropping consume-queue files wholly before it), then the file.
/// Nothing is written, so a full disk does not stop it and it never takes the store gate a
/// flush holds; the next regular checkpoint records the head (see `docs/storage.md`).
async fn delete_segment<D: Disk>(
    shard: &Rc<Shard<D>>,
    base: u64,
    confirmed: u64,
) -> Result<(), StoreError> {
    let store = shard.store();
    let head = store.advance_log_head(base, confirmed)?;
    store.expire_queues_before(head).await?;
    store.remove_expired_segment(base).await
}

/// Reads the store's file system's use, keeps it and turns the append refusal on or off:
/// on above `disk_space_warning_ratio`, off again only [`REFUSAL_RELEASE_BAND`] below it, or
/// after [`MEASURE_FAILURES_BEFORE_ACCEPTING`] failed readings in a row.
async fn measure<D: Disk>(shard: &Shard<D>) -> std::io::Result<DiskSpace> {
    let cleaning = shard.cleaning();
    let space = match shard.disk().space(shard.dir()).await {
        Ok(space) => {
            cleaning.failed_measures.set(0);
            space
        }
        Err(e) => {
            let failures = cleaning.failed_measures.get() + 1;
            cleaning.failed_measures.set(failures);
            if failures >= MEASURE_FAILURES_BEFORE_ACCEPTING && cleaning.refusing.get() {
                error!(
                    shard = shard.id(),
                    "the store's disk use could not be read {failures} times in a row ({e}): \
                     accepting appends again rather than refusing them on an old reading"
                );
                cleaning.refusing.set(false);
            }
            return Err(e);
        }
    };
    let ratio = space.used_ratio();
    cleaning.used_ratio.set(ratio);
    let warning = shard.config().disk_space_warning_ratio;
    let refusing = cleaning.refusing.get();
    if !refusing && ratio > warning {
        error!(
            shard = shard.id(),
            "the store's file system is {:.1}% used, above disk_space_warning_ratio {:.1}%: \
             refusing appends with DISK_FULL until usage falls",
            ratio * 100.0,
            warning * 100.0
        );
        cleaning.refusing.set(true);
    } else if refusing && ratio <= warning - REFUSAL_RELEASE_BAND {
        info!(
            shard = shard.id(),
            "the store's file system is {:.1}% used, below disk_space_warning_ratio: \
             accepting appends again",
            ratio * 100.0
        );
        cleaning.refusing.set(false);
    }
    Ok(space)
}

/// This shard's row of a `Retention` answer.
pub fn status<D: Disk>(shard: &Shard<D>, report: PassReport) -> ShardRetention {
    let store = shard.store();
    let probe = shard.probe();
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
