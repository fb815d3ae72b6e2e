//! Background tasks of a shard's store: the flusher (group commit), the segment allocator and
//! the checkpoint writer. None of them blocks the core; each waits on events or timers.

use super::Shard;
use crate::config::FlushDiskType;
use futures_lite::future;
use glommio::timer::sleep;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::{error, warn};

/// Under SYNC_FLUSH: flush whenever anything is dirty. While one flush (write + fdatasync) is
/// in flight, appends accumulate; the next flush covers all of them with one sync and releases
/// all their producers at once. Under ASYNC_FLUSH: every `flush_interval_ms`, flush when at
/// least `flush_least_pages` are dirty or `flush_thorough_interval_ms` has passed; a full write
/// buffer asks for a flush at once. Consume queues and the checkpoint are written every
/// `checkpoint_interval_ms` between flushes.
pub async fn run_flusher(shard: Rc<Shard>) {
    let config = shard.config.clone();
    let checkpoint_every = Duration::from_millis(config.checkpoint_interval_ms);
    let interval = Duration::from_millis(config.flush_interval_ms);
    let thorough = Duration::from_millis(config.flush_thorough_interval_ms);
    let least_bytes = config.flush_least_pages * 4096;
    let mut last_flush = Instant::now();
    let mut last_checkpoint = Instant::now();
    loop {
        if shard.stopping.get() {
            return;
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
            if let Err(e) = flush_once(&shard).await {
                error!(
                    shard = shard.id,
                    "flush failed, refusing further appends: {e}"
                );
                return;
            }
            continue;
        }
        if last_checkpoint.elapsed() >= checkpoint_every {
            last_checkpoint = Instant::now();
            let _gate = shard.store_gate.acquire_permit(1).await;
            if let Err(e) = shard.store.persist_metadata().await {
                warn!(
                    shard = shard.id,
                    "writing consume queues and checkpoint failed: {e}"
                );
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

async fn flush_once(shard: &Shard) -> Result<(), crate::store::StoreError> {
    let _gate = shard.store_gate.acquire_permit(1).await;
    match shard.store.flush().await {
        Ok(offset) => {
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
            Ok(())
        }
        Err(e) => {
            shard.probe.add(crate::metrics::Counter::FlushErrors, 1);
            shard.completions.fail_all();
            shard.flushed.notify();
            Err(e)
        }
    }
}

/// Creates and zero-fills the next commitlog segment ahead of need.
pub async fn run_segment_allocator(shard: Rc<Shard>) {
    loop {
        if shard.stopping.get() {
            return;
        }
        if shard.store.needs_next_segment() {
            if let Err(e) = shard.store.prepare_next_segment().await {
                error!(
                    shard = shard.id,
                    "creating the next commitlog segment failed: {e}"
                );
                // Appends waiting for the segment are told through the event and will see the
                // failure on their next attempt; try again after a pause rather than spin.
                shard.segment_ready.notify();
                sleep(Duration::from_secs(1)).await;
                continue;
            }
            shard.segment_ready.notify();
            continue;
        }
        let _ = shard.segment_wanted.listen().await;
    }
}
