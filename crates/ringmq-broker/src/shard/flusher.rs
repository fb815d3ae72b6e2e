//! Background tasks of a shard's store: the flusher (group commit), the segment allocator and
//! the checkpoint writer. None of them blocks the core; each waits on events or timers.

use super::Shard;
use crate::config::FlushDiskType;
use crate::store::StoreError;
use futures_lite::future;
use glommio::timer::sleep;
use glommio::{spawn_local, Task};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// How often the allocator retries a segment it could not create. Space freed by an operator
/// or by retention is picked up within this; short enough that producers retrying DISK_FULL
/// see writes accepted again promptly, long enough not to spin on a full disk.
const SEGMENT_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Under SYNC_FLUSH: flush whenever anything is dirty. Flushes are pipelined: while the
/// fdatasync of one batch is in flight, everything appended meanwhile is already being written,
/// and its own sync starts as soon as the previous one completes. Each sync releases every
/// producer it covers in one batch (group commit). Under ASYNC_FLUSH: every
/// `flush_interval_ms`, flush when at least `flush_least_pages` are dirty or
/// `flush_thorough_interval_ms` has passed; a full write buffer asks for a flush at once.
/// Consume queues and the checkpoint are written every `checkpoint_interval_ms` between
/// flushes.
pub async fn run_flusher(shard: Rc<Shard>) {
    let config = shard.config.clone();
    let checkpoint_every = Duration::from_millis(config.checkpoint_interval_ms);
    let interval = Duration::from_millis(config.flush_interval_ms);
    let thorough = Duration::from_millis(config.flush_thorough_interval_ms);
    let least_bytes = config.flush_least_pages * 4096;
    let mut last_flush = Instant::now();
    let mut last_checkpoint = Instant::now();
    loop {
        if shard.background_stopping.get() {
            return;
        }
        // Checked before flushing: under steady SYNC_FLUSH load something is always dirty, and
        // the checkpoint (and consume-queue files) must still be written every interval.
        if last_checkpoint.elapsed() >= checkpoint_every {
            last_checkpoint = Instant::now();
            let _gate = shard.store_gate.acquire_permit(1).await;
            if let Err(e) = shard.store.persist_metadata().await {
                warn!(
                    shard = shard.id,
                    "writing consume queues and checkpoint failed: {e}"
                );
            }
            shard.persist_replicated_offset().await;
            continue;
        }
        let dirty = shard.store.dirty_bytes();
        let due = match config.flush_disk_type {
            FlushDiskType::SyncFlush => dirty > 0,
            FlushDiskType::AsyncFlush => {
                dirty > 0 && (dirty >= least_bytes || last_flush.elapsed() >= thorough)
            }
        };
        if due || shard.flush_urgent.replace(false) {
            last_flush = Instant::now();
            if let Err(e) = flush_burst(&shard).await {
                shard.probe.add(crate::metrics::Counter::FlushErrors, 1);
                shard.completions.fail_all();
                shard.flushed.notify();
                error!(
                    shard = shard.id,
                    "flush failed, refusing further appends: {e}"
                );
                return;
            }
            continue;
        }
        let wait = match config.flush_disk_type {
            FlushDiskType::SyncFlush => checkpoint_every,
            FlushDiskType::AsyncFlush => interval.min(checkpoint_every),
        };
        let requested = shard.flush_requested.listen();
        future::or(
            async {
                let _ = requested.await;
            },
            sleep(wait),
        )
        .await;
    }
}

/// Writes and syncs until nothing is left unwritten, with at most one sync in flight while
/// the next batch is written.
pub async fn flush_burst(shard: &Rc<Shard>) -> Result<(), StoreError> {
    let _gate = shard.store_gate.acquire_permit(1).await;
    let mut in_flight: Option<Task<Result<u64, StoreError>>> = None;
    loop {
        let written = shard.store.write_dirty().await?;
        if let Some(previous) = in_flight.take() {
            released(shard, previous.await?);
        }
        let Some(written) = written else {
            return Ok(());
        };
        let syncing = shard.clone();
        in_flight = Some(spawn_local(
            async move { syncing.store.sync(written).await },
        ));
    }
}

/// A sync completed: everything before `offset` is durable.
fn released(shard: &Shard, offset: u64) {
    let stats = shard.store.last_flush();
    shard
        .probe
        .flushed(stats.bytes, stats.write_duration, stats.sync_duration);
    shard.completions.release(offset);
    shard.replication_wakeup.notify();
    if shard.config.flush_disk_type == FlushDiskType::SyncFlush {
        shard.visible.notify();
    }
    shard.flushed.notify();
}

/// Creates and zero-fills the next commitlog segment ahead of need.
pub async fn run_segment_allocator(shard: Rc<Shard>) {
    loop {
        if shard.background_stopping.get() {
            return;
        }
        if shard.store.needs_next_segment() {
            if let Err(e) = shard.store.prepare_next_segment().await {
                if shard.segment_failure.borrow().is_none() {
                    error!(
                        shard = shard.id,
                        "creating the next commitlog segment failed, retrying every {} ms: {e}",
                        SEGMENT_RETRY_INTERVAL.as_millis()
                    );
                }
                // Appends waiting for the segment are woken to answer from the failure
                // (DISK_FULL at once when space ran out); try again after a pause, not a spin.
                *shard.segment_failure.borrow_mut() = Some(e);
                shard.segment_ready.notify();
                sleep(SEGMENT_RETRY_INTERVAL).await;
                continue;
            }
            if shard.segment_failure.borrow_mut().take().is_some() {
                info!(
                    shard = shard.id,
                    "the next commitlog segment was created after all; accepting appends again"
                );
            }
            shard.segment_ready.notify();
            continue;
        }
        let _ = shard.segment_wanted.listen().await;
    }
}
