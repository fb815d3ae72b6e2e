//! Waiting for a guarantee without blocking the core.
//!
//! [`Completions`] holds producers waiting for their records to be covered by a flush (later: a
//! slave ack), ordered by the commitlog offset just past their last record. Appends on a shard
//! are sequential, so waiters arrive in offset order and one [`Completions::release`] pops every
//! waiter it covers from the front: one flush, one batch of completions.
//!
//! [`Event`] is a notification every current listener receives once; each stage owns its own
//! events and is the only one to notify them.

use futures_channel::oneshot;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::task::{Poll, Waker};

/// The outcome a waiter receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    Done,
    /// The store failed (write or sync error): the record's durability is unknown.
    Failed,
}

#[derive(Default)]
pub struct Completions {
    released_offset: Cell<u64>,
    failed: Cell<bool>,
    /// One entry per waiting produce request (not per message), ordered by end offset.
    waiters: RefCell<VecDeque<(u64, oneshot::Sender<Completion>)>>,
}

impl Completions {
    pub fn new(released_offset: u64) -> Self {
        Completions {
            released_offset: Cell::new(released_offset),
            ..Default::default()
        }
    }

    pub fn released_offset(&self) -> u64 {
        self.released_offset.get()
    }

    /// Registers a waiter for everything before `end_offset`. Resolves at once when that is
    /// already released.
    pub fn wait(&self, end_offset: u64) -> oneshot::Receiver<Completion> {
        let (tx, rx) = oneshot::channel();
        if self.failed.get() {
            let _ = tx.send(Completion::Failed);
        } else if end_offset <= self.released_offset.get() {
            let _ = tx.send(Completion::Done);
        } else {
            let mut waiters = self.waiters.borrow_mut();
            // Appends on a shard are sequential, so waiters arrive in offset order; release
            // pops from the front on that assumption.
            assert!(
                waiters.back().is_none_or(|(end, _)| *end <= end_offset),
                "a waiter for {end_offset} arrived after one for {:?}",
                waiters.back().map(|(end, _)| *end)
            );
            waiters.push_back((end_offset, tx));
        }
        rx
    }

    /// Releases, in one batch, every waiter whose records end at or before `offset`. Returns
    /// how many were released.
    pub fn release(&self, offset: u64) -> usize {
        if offset > self.released_offset.get() {
            self.released_offset.set(offset);
        }
        let mut waiters = self.waiters.borrow_mut();
        let mut released = 0;
        let mut previous_end = 0;
        while waiters.front().is_some_and(|(end, _)| *end <= offset) {
            let (end, tx) = waiters.pop_front().expect("front exists");
            assert!(
                end >= previous_end,
                "completions released out of offset order: {end} after {previous_end}"
            );
            previous_end = end;
            let _ = tx.send(Completion::Done);
            released += 1;
        }
        released
    }

    /// Lowers the released offset to at most `offset` (a log cut back by truncation): nothing
    /// past the new end may count as released any more. Waiters are untouched.
    pub fn reset_to(&self, offset: u64) {
        if offset < self.released_offset.get() {
            self.released_offset.set(offset);
        }
    }

    /// Fails every current and future waiter.
    pub fn fail_all(&self) {
        self.failed.set(true);
        for (_, tx) in self.waiters.borrow_mut().drain(..) {
            let _ = tx.send(Completion::Failed);
        }
    }

    pub fn pending(&self) -> usize {
        self.waiters.borrow().len()
    }
}

/// A notification every current listener receives once.
#[derive(Default)]
pub struct Event {
    listeners: RefCell<Vec<oneshot::Sender<()>>>,
}

impl Event {
    pub fn listen(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut listeners = self.listeners.borrow_mut();
        // Listeners whose waits timed out are dropped here so the list stays bounded by the
        // number of waits actually in progress.
        listeners.retain(|l| !l.is_canceled());
        listeners.push(tx);
        rx
    }

    pub fn notify(&self) {
        for tx in self.listeners.borrow_mut().drain(..) {
            let _ = tx.send(());
        }
    }
}

/// A wake-up for one task that waits for it again and again (the flusher), allocating
/// nothing: [`Signal::notify`] sets it and wakes the waiter; [`Signal::wait`] returns once
/// it is set, and clears it. Unlike an [`Event`], a notification while nobody waits is
/// kept: the next wait returns at once, and the waiter, which re-checks its work after
/// every wake-up, finds nothing or something it would otherwise have seen only later.
#[derive(Default)]
pub struct Signal {
    set: Cell<bool>,
    waiter: RefCell<Option<Waker>>,
}

impl Signal {
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(waker) = self.waiter.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Returns once notified (since the last wait returned). One waiter at a time, and one
    /// owner: the shard's flusher task is the only caller (`Flushing::request` and
    /// `request_urgent` the notifiers). A second task waiting at the same time would replace
    /// the first's waker and leave it asleep until its own timer; this is not checked at run time, because a wait
    /// dropped by a timer leaves its waker behind and looks the same as a live one.
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.set.replace(false) {
                return Poll::Ready(());
            }
            let mut waiter = self.waiter.borrow_mut();
            if !waiter.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waiter = Some(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_release_completes_every_covered_waiter_in_order() {
        let c = Completions::new(0);
        let mut a = c.wait(100);
        let mut b = c.wait(200);
        let mut d = c.wait(300);
        assert_eq!(c.release(250), 2);
        assert_eq!(a.try_recv().unwrap(), Some(Completion::Done));
        assert_eq!(b.try_recv().unwrap(), Some(Completion::Done));
        assert_eq!(d.try_recv().unwrap(), None);
        assert_eq!(c.pending(), 1);
        let mut e = c.wait(240);
        assert_eq!(e.try_recv().unwrap(), Some(Completion::Done));
        c.fail_all();
        assert_eq!(d.try_recv().unwrap(), Some(Completion::Failed));
        let mut f = c.wait(1000);
        assert_eq!(f.try_recv().unwrap(), Some(Completion::Failed));
    }

    #[test]
    fn reset_lowers_what_counts_as_released() {
        let c = Completions::new(0);
        c.release(500);
        c.reset_to(200);
        assert_eq!(c.released_offset(), 200);
        let mut w = c.wait(300);
        assert_eq!(w.try_recv().unwrap(), None, "300 is past the cut");
        c.reset_to(400);
        assert_eq!(c.released_offset(), 200, "reset never raises");
    }

    #[test]
    fn signal_keeps_a_notification_until_the_next_wait() {
        use futures_lite::future::{block_on, poll_once};
        let s = Signal::default();
        assert_eq!(block_on(poll_once(s.wait())), None, "not notified yet");
        s.notify();
        assert_eq!(block_on(poll_once(s.wait())), Some(()));
        assert_eq!(block_on(poll_once(s.wait())), None, "the wait cleared it");
        s.notify();
        s.notify();
        assert_eq!(block_on(poll_once(s.wait())), Some(()));
        assert_eq!(
            block_on(poll_once(s.wait())),
            None,
            "two notifies, one wake-up"
        );
    }

    #[test]
    fn event_wakes_all_listeners_once() {
        let e = Event::default();
        let mut a = e.listen();
        let mut b = e.listen();
        e.notify();
        assert_eq!(a.try_recv().unwrap(), Some(()));
        assert_eq!(b.try_recv().unwrap(), Some(()));
        let mut c = e.listen();
        assert_eq!(c.try_recv().unwrap(), None);
    }
}
