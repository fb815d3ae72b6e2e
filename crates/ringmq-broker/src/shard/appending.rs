//! The appending stage: the append gate, the round-robin queue choice, and waiting (with a
//! deadline) for write-buffer space or the next segment.
//!
//! Produce requests and the slave's replicated records both append through
//! [`Appending::append_waiting`]; every batch appended is announced with the `appended` event,
//! notified only here, which wakes the replication shippers and reporters.

use super::completion::Event;
use super::flushing::Flushing;
use crate::clock::Clock;
use crate::store::AppendError;
use futures_lite::future;
use glommio::sync::{Permit, Semaphore};
use std::cell::Cell;
use std::time::Instant;

pub struct Appending {
    /// Keeps a produce batch contiguous when it has to wait mid-batch for buffer space or a
    /// segment; uncontended in the common case, where no append awaits. Also held by a role
    /// change, so no batch straddles it.
    gate: Semaphore,
    /// Round-robin position for produce requests that let the broker pick the queue.
    next_queue: Cell<usize>,
    /// A batch was appended (new log bytes to ship or report).
    appended: Event,
    /// The encoded sizes of the batch being admitted, kept between batches so admitting one
    /// allocates nothing; only the holder of the gate uses it.
    batch_lens: Cell<Vec<usize>>,
}

impl Default for Appending {
    fn default() -> Self {
        Appending {
            gate: Semaphore::new(1),
            next_queue: Cell::new(0),
            appended: Event::default(),
            batch_lens: Cell::new(Vec::new()),
        }
    }
}

impl Appending {
    /// Takes the append gate. The gate is never closed, so this only waits.
    pub async fn lock(&self) -> Permit<'_> {
        self.gate
            .acquire_permit(1)
            .await
            .expect("the append gate is never closed")
    }

    /// The reusable list for a batch's sizes, empty; give it back with [`Self::return_lens`].
    pub fn take_lens(&self) -> Vec<usize> {
        let mut lens = self.batch_lens.take();
        lens.clear();
        lens
    }

    pub fn return_lens(&self, lens: Vec<usize>) {
        self.batch_lens.set(lens);
    }

    /// The next round-robin turn for a produce that lets the broker pick the queue.
    pub fn next_turn(&self) -> usize {
        let turn = self.next_queue.get();
        self.next_queue.set(turn.wrapping_add(1));
        turn
    }

    /// Announces appended log bytes to the shippers and reporters.
    pub fn announce(&self) {
        self.appended.notify();
    }

    pub fn listen(&self) -> futures_channel::oneshot::Receiver<()> {
        self.appended.listen()
    }

    /// Runs an append, waiting (without blocking the core) while the write buffer is full or
    /// the next segment is not created yet, and retrying, until `deadline`: then
    /// [`AppendError::Busy`]. A segment that could not be created for lack of space is
    /// [`AppendError::DiskFull`] at once. Other errors are returned.
    pub async fn append_waiting<T>(
        &self,
        flushing: &Flushing,
        clock: &dyn Clock,
        deadline: Instant,
        mut append: impl FnMut() -> Result<T, AppendError>,
    ) -> Result<T, AppendError> {
        let started = clock.now();
        loop {
            let (waiting_for, event) = match append() {
                Err(AppendError::BufferFull) => {
                    let flushed = flushing.listen_flushed();
                    flushing.request_urgent();
                    ("write-buffer space (a flush)", flushed)
                }
                Err(AppendError::SegmentNotReady) => {
                    if let Some(failure) = flushing.segment_failure() {
                        return Err(failure);
                    }
                    let ready = flushing.listen_segment_ready();
                    flushing.want_segment();
                    ("the next commitlog segment", ready)
                }
                other => return other,
            };
            let left = deadline.saturating_duration_since(clock.now());
            let woken = future::or(
                async {
                    let _ = event.await;
                    true
                },
                async {
                    clock.sleep(left).await;
                    false
                },
            )
            .await;
            if !woken {
                return Err(AppendError::Busy {
                    waited_ms: clock.now().saturating_duration_since(started).as_millis() as u64,
                    waiting_for,
                });
            }
        }
    }
}
