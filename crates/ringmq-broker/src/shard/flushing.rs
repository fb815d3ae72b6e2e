//! The flushing stage: the flusher (group commit), the segment allocator and the checkpoint
//! writer, with the state and events only they change.
//!
//! Its events, each notified only here: `requested` (wakes the flusher: data was appended
//! under SYNC_FLUSH or the write buffer is full), `flushed` (a flush finished: write-buffer
//! space is free again), `segment_wanted` (wakes the allocator) and `segment_ready` (the next
//! segment was created, or creating it failed). Producers waiting for a flush (SYNC_FLUSH)
//! wait in its [`Completions`], released only by a finished sync. None of the tasks blocks the
//! core; each waits on events or on the shard's clock.

use super::completion::{Completions, Event, Signal, Waiting};
use super::Shard;
use crate::config::FlushDiskType;
use crate::store::io::Disk;
use crate::store::{AppendError, StoreError};
use futures_channel::oneshot;
use futures_lite::future;
use glommio::sync::{Permit, Semaphore};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// How often the allocator retries a segment it could not create. Space freed by an operator
/// or by retention is picked up within this; short enough that producers retrying DISK_FULL
/// see writes accepted again promptly, long enough not to spin on a full disk.
const SEGMENT_RETRY_INTERVAL: Duration = Duration::from_secs(1);

pub struct Flushing {
    /// Only the flusher waits on it, once per idle turn: a [`Signal`], which allocates
    /// nothing per wait (a SYNC_FLUSH produce in a closed loop makes the flusher wait once).
    requested: Signal,
    /// Set by a producer that found the write buffer full: flush now, whatever the mode.
    urgent: Cell<bool>,
    flushed: Event,
    /// Held around flushes, metadata writes, truncation and role changes: they must not
    /// overlap.
    store_gate: Semaphore,
    segment_wanted: Event,
    segment_ready: Event,
    /// Why the allocator could not create the next segment, until it next succeeds. Appends
    /// that need that segment are answered from it at once (`DISK_FULL` when it was for lack
    /// of space) instead of waiting for a segment that may not come.
    segment_failure: RefCell<Option<StoreError>>,
    /// Producers waiting for a flush (SYNC_FLUSH).
    completions: Completions,
}

impl Flushing {
    /// `flushed_offset`: what the recovered store already holds durably.
    pub fn new(flushed_offset: u64) -> Flushing {
        Flushing {
            requested: Signal::default(),
            urgent: Cell::new(false),
            flushed: Event::default(),
            store_gate: Semaphore::new(1),
            segment_wanted: Event::default(),
            segment_ready: Event::default(),
            segment_failure: RefCell::new(None),
            completions: Completions::new(flushed_offset),
        }
    }

    /// Wakes the flusher (under SYNC_FLUSH: something was appended).
    pub fn request(&self) {
        self.requested.notify();
    }

    /// Asks for a flush now, whatever the mode (the write buffer is full, or a slave catching
    /// up wants to write behind).
    pub fn request_urgent(&self) {
        self.urgent.set(true);
        self.requested.notify();
    }

    pub fn listen_flushed(&self) -> oneshot::Receiver<()> {
        self.flushed.listen()
    }

    /// Takes the store gate. The gate is never closed, so this only waits.
    pub async fn lock_store(&self) -> Permit<'_> {
        self.store_gate
            .acquire_permit(1)
            .await
            .expect("the store gate is never closed")
    }

    /// Wakes the segment allocator.
    pub fn want_segment(&self) {
        self.segment_wanted.notify();
    }

    pub fn listen_segment_ready(&self) -> oneshot::Receiver<()> {
        self.segment_ready.listen()
    }

    /// The last failure to create the next segment, as the append error to answer with.
    pub fn segment_failure(&self) -> Option<AppendError> {
        self.segment_failure.borrow().as_ref().map(|failure| {
            if failure.is_disk_full() {
                AppendError::DiskFull(failure.to_string())
            } else {
                AppendError::Failed(failure.to_string())
            }
        })
    }

    /// A waiter for a flush covering everything before `end_offset`.
    pub fn wait_durable(&self, end_offset: u64) -> Waiting<'_> {
        self.completions.wait(end_offset)
    }

    pub fn pending(&self) -> usize {
        self.completions.pending()
    }

    /// A log cut back to `flushed_offset` (truncation, promotion): nothing past it counts as
    /// flushed any more.
    pub fn reset_released(&self, flushed_offset: u64) {
        self.completions.reset_to(flushed_offset);
    }

    /// A sync completed: everything before `offset` is durable.
    fn released(&self, offset: u64) {
        self.completions.release(offset);
        self.flushed.notify();
    }

    /// A flush failed: every waiting and future producer fails, waiting appends wake.
    fn failed(&self) {
        self.completions.fail_all();
        self.flushed.notify();
    }

    /// Wakes every background task (a stop).
    pub fn wake_tasks(&self) {
        self.requested.notify();
        self.segment_wanted.notify();
    }
}

/// Under SYNC_FLUSH: flush whenever anything is dirty. Flushes are pipelined: while the
/// fdatasync of one batch is in flight, everything appended meanwhile is already being written,
/// and its own sync starts as soon as the previous one completes. Each sync releases every
/// producer it covers in one batch (group commit). Under ASYNC_FLUSH: every
/// `flush_interval_ms`, flush when at least `flush_least_pages` are dirty or
/// `flush_thorough_interval_ms` has passed; a full write buffer asks for a flush at once.
/// Consume queues and the checkpoint are written every `checkpoint_interval_ms` between
/// flushes.
pub async fn run_flusher<D: Disk>(shard: Rc<Shard<D>>) {
    let config = shard.config().clone();
    let clock = shard.clock().clone();
    let flushing = shard.flushing();
    let checkpoint_every = Duration::from_millis(config.checkpoint_interval_ms);
    let interval = Duration::from_millis(config.flush_interval_ms);
    let thorough = Duration::from_millis(config.flush_thorough_interval_ms);
    let least_bytes = config.flush_least_pages * 4096;
    let mut last_flush = clock.now();
    let mut last_checkpoint = clock.now();
    // The idle wait's timer and when it fires, kept across idle turns while it fires no later
    // than the turn needs: arming one per turn cost a boxed future and a timer for every
    // SYNC_FLUSH produce. One that fires early only makes the loop re-check sooner.
    type Armed = (Instant, crate::clock::Sleep);
    let mut timer: Option<Armed> = None;
    loop {
        if shard.lifecycle().is_background_stopping() {
            return;
        }
        // Checked before flushing: under steady SYNC_FLUSH load something is always dirty, and
        // the checkpoint (and consume-queue files) must still be written every interval.
        if clock.now().saturating_duration_since(last_checkpoint) >= checkpoint_every {
            last_checkpoint = clock.now();
            let _gate = flushing.lock_store().await;
            if let Err(e) = shard.store().persist_metadata().await {
                warn!(
                    shard = shard.id(),
                    "writing consume queues and checkpoint failed: {e}"
                );
            }
            shard.persist_replicated_offset().await;
            continue;
        }
        let dirty = shard.store().dirty_bytes();
        let due = match config.flush_disk_type {
            FlushDiskType::SyncFlush => dirty > 0,
            FlushDiskType::AsyncFlush => {
                dirty > 0
                    && (dirty >= least_bytes
                        || clock.now().saturating_duration_since(last_flush) >= thorough)
            }
        };
        if due || flushing.urgent.replace(false) {
            last_flush = clock.now();
            if let Err(e) = flush_burst(&shard).await {
                shard.probe().add(crate::metrics::Counter::FlushErrors, 1);
                flushing.failed();
                error!(
                    shard = shard.id(),
                    "flush failed, refusing further appends: {e}"
                );
                return;
            }
            continue;
        }
        let now = clock.now();
        let wake_by = match config.flush_disk_type {
            FlushDiskType::SyncFlush => last_checkpoint + checkpoint_every,
            FlushDiskType::AsyncFlush => (now + interval).min(last_checkpoint + checkpoint_every),
        };
        if timer.as_ref().is_none_or(|(at, _)| *at > wake_by) {
            timer = Some((wake_by, clock.sleep(wake_by.saturating_duration_since(now))));
        }
        let (_, armed) = timer.as_mut().expect("armed above");
        let fired = future::or(
            async {
                flushing.requested.wait().await;
                false
            },
            async {
                armed.await;
                true
            },
        )
        .await;
        if fired {
            timer = None;
        }
    }
}

/// Writes and syncs until nothing is left unwritten, with at most one sync in flight while
/// the next batch is written.
pub async fn flush_burst<D: Disk>(shard: &Rc<Shard<D>>) -> Result<(), StoreError> {
    let _gate = shard.flushing().lock_store().await;
    flush_holding_gate(shard).await
}

/// [`flush_burst`] for a caller that holds the store gate already (a role change). Every
/// flush goes through here, so the producers a sync covers are always released by it.
pub(super) async fn flush_holding_gate<D: Disk>(shard: &Rc<Shard<D>>) -> Result<(), StoreError> {
    // Each sync runs alongside the write of what arrived meanwhile (the two overlap on the
    // disk), both in this task: no task spawned per flush. The next sync starts once both
    // are done, as it did when the sync was a task of its own awaited after the write.
    let mut written = shard.store().write_dirty().await?;
    while let Some(syncing) = written {
        let (synced, next) =
            future::zip(shard.store().sync(syncing), shard.store().write_dirty()).await;
        // A finished sync releases its producers even when the write beside it failed:
        // their records are durable.
        released(shard, synced?);
        written = next?;
    }
    Ok(())
}

/// A sync completed: everything before `offset` is durable.
fn released<D: Disk>(shard: &Shard<D>, offset: u64) {
    let store = shard.store();
    assert!(
        offset <= store.max_offset(),
        "a sync released offset {offset} past the log's end {}",
        store.max_offset()
    );
    let stats = store.last_flush();
    shard
        .probe()
        .flushed(stats.bytes, stats.write_duration, stats.sync_duration);
    shard.flushing().released(offset);
    if shard.config().flush_disk_type == FlushDiskType::SyncFlush {
        shard.publish_confirmed();
    }
}

/// Creates and zero-fills the next commitlog segment ahead of need.
pub async fn run_segment_allocator<D: Disk>(shard: Rc<Shard<D>>) {
    let flushing = shard.flushing();
    loop {
        if shard.lifecycle().is_background_stopping() {
            return;
        }
        if shard.store().needs_next_segment() {
            if let Err(e) = shard.store().prepare_next_segment().await {
                if flushing.segment_failure.borrow().is_none() {
                    error!(
                        shard = shard.id(),
                        "creating the next commitlog segment failed, retrying every {} ms: {e}",
                        SEGMENT_RETRY_INTERVAL.as_millis()
                    );
                }
                // Appends waiting for the segment are woken to answer from the failure
                // (DISK_FULL at once when space ran out); try again after a pause, not a spin.
                *flushing.segment_failure.borrow_mut() = Some(e);
                flushing.segment_ready.notify();
                shard.clock().sleep(SEGMENT_RETRY_INTERVAL).await;
                continue;
            }
            if flushing.segment_failure.borrow_mut().take().is_some() {
                info!(
                    shard = shard.id(),
                    "the next commitlog segment was created after all; accepting appends again"
                );
            }
            flushing.segment_ready.notify();
            continue;
        }
        let _ = flushing.segment_wanted.listen().await;
    }
}
