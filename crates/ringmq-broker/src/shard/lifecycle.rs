//! The drain/lifecycle stage: what a clean stop waits for and the flags that tell tasks to end.
//!
//! Connections count the requests they run and the responses they queue; a stop first sets
//! `stopping` (new produce requests are refused, long polls answer at once), waits until both
//! counts reach zero (the `drained` event, notified only here), then sets `background_stopping`
//! so the flusher and the segment allocator finish their step and return.

use super::completion::Event;
use crate::clock::Clock;
use std::cell::Cell;
use std::time::Duration;

#[derive(Default)]
pub struct Lifecycle {
    /// Client requests being handled (including those forwarded to this shard by another).
    requests_in_flight: Cell<usize>,
    /// Responses queued on a connection but not yet written to its socket.
    responses_unwritten: Cell<usize>,
    /// Both counts above reached zero.
    drained: Event,
    /// Set at shutdown: produce is refused, long polls answer at once.
    stopping: Cell<bool>,
    /// Set once the requests in flight at a stop are answered: the flusher and the segment
    /// allocator keep running until then, so whatever those requests append is flushed.
    background_stopping: Cell<bool>,
}

/// How a clean stop's wait for in-flight requests ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    Drained,
    /// The bound passed with this many requests and responses still outstanding.
    TimedOut {
        requests: usize,
        responses: usize,
    },
}

impl Lifecycle {
    pub fn request_started(&self) {
        Self::add(&self.requests_in_flight, 1);
    }

    pub fn request_finished(&self) {
        Self::add(&self.requests_in_flight, -1);
        self.notify_if_drained();
    }

    pub fn response_queued(&self) {
        Self::add(&self.responses_unwritten, 1);
    }

    pub fn response_written(&self) {
        Self::add(&self.responses_unwritten, -1);
        self.notify_if_drained();
    }

    fn add(counter: &Cell<usize>, delta: isize) {
        let value = counter
            .get()
            .checked_add_signed(delta)
            .expect("an in-flight count went below zero: a finish without a start");
        counter.set(value);
    }

    fn notify_if_drained(&self) {
        if self.requests_in_flight.get() == 0 && self.responses_unwritten.get() == 0 {
            self.drained.notify();
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    pub fn is_background_stopping(&self) -> bool {
        self.background_stopping.get()
    }

    /// First step of a clean stop: refuse new produce requests.
    pub fn begin_stop(&self) {
        self.stopping.set(true);
    }

    /// Last step of a clean stop: background tasks end after their current step.
    pub fn stop_background(&self) {
        debug_assert!(self.stopping.get(), "background stops after the foreground");
        self.background_stopping.set(true);
    }

    /// Waits until every request in flight has been answered and its answer written, at most
    /// `bound`.
    pub async fn wait_drained(&self, clock: &dyn Clock, bound: Duration) -> Drain {
        let deadline = clock.now() + bound;
        while self.requests_in_flight.get() > 0 || self.responses_unwritten.get() > 0 {
            let left = deadline.saturating_duration_since(clock.now());
            if left.is_zero() {
                return Drain::TimedOut {
                    requests: self.requests_in_flight.get(),
                    responses: self.responses_unwritten.get(),
                };
            }
            let drained = self.drained.listen();
            futures_lite::future::or(
                async {
                    let _ = drained.await;
                },
                clock.sleep(left),
            )
            .await;
        }
        Drain::Drained
    }
}
