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
    /// One entry per waiting produce request (not per message), ordered by end offset: the
    /// end and the waiter's slot.
    waiters: RefCell<VecDeque<(u64, usize)>>,
    /// Waiters' outcomes and wakers, reused: a slot is taken by [`Completions::wait`] and
    /// given back when its [`Waiting`] is dropped (or, for one dropped before its outcome, when
    /// the release or failure reaches it), so steady state allocates nothing per waiter. The
    /// list grows to the most waiters at once (a shard's produce requests in flight).
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<usize>>,
}

#[derive(Default)]
struct Slot {
    outcome: Option<Completion>,
    waker: Option<Waker>,
    /// Its [`Waiting`] is gone: the release or failure that reaches it frees it.
    abandoned: bool,
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
    /// already released. Dropping the waiter (a timeout) is safe at any point: its slot is
    /// given back, and a release still counts it in order.
    pub fn wait(&self, end_offset: u64) -> Waiting<'_> {
        if self.failed.get() {
            return Waiting::ready(self, Completion::Failed);
        }
        if end_offset <= self.released_offset.get() {
            return Waiting::ready(self, Completion::Done);
        }
        let mut waiters = self.waiters.borrow_mut();
        // Appends on a shard are sequential, so waiters arrive in offset order; release
        // pops from the front on that assumption.
        assert!(
            waiters.back().is_none_or(|(end, _)| *end <= end_offset),
            "a waiter for {end_offset} arrived after one for {:?}",
            waiters.back().map(|(end, _)| *end)
        );
        let slot = match self.free.borrow_mut().pop() {
            Some(slot) => slot,
            None => {
                let mut slots = self.slots.borrow_mut();
                slots.push(Slot::default());
                slots.len() - 1
            }
        };
        waiters.push_back((end_offset, slot));
        Waiting {
            completions: self,
            state: WaitState::Slot(slot),
        }
    }

    /// Gives a waiter its outcome and wakes it, or frees its slot when it is gone.
    fn complete(&self, slot: usize, outcome: Completion) {
        let waker = {
            let mut slots = self.slots.borrow_mut();
            let entry = &mut slots[slot];
            if entry.abandoned {
                *entry = Slot::default();
                drop(slots);
                self.free.borrow_mut().push(slot);
                return;
            }
            entry.outcome = Some(outcome);
            entry.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Releases, in one batch, every waiter whose records end at or before `offset`. Returns
    /// how many were released.
    pub fn release(&self, offset: u64) -> usize {
        if offset > self.released_offset.get() {
            self.released_offset.set(offset);
        }
        let mut released = 0;
        let mut previous_end = 0;
        loop {
            let next = {
                let mut waiters = self.waiters.borrow_mut();
                match waiters.front() {
                    Some((end, _)) if *end <= offset => waiters.pop_front(),
                    _ => None,
                }
            };
            let Some((end, slot)) = next else { break };
            assert!(
                end >= previous_end,
                "completions released out of offset order: {end} after {previous_end}"
            );
            previous_end = end;
            self.complete(slot, Completion::Done);
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
        self.fail_waiting();
    }

    /// Fails every current waiter; later ones wait as before.
    pub fn fail_waiting(&self) {
        loop {
            let next = self.waiters.borrow_mut().pop_front();
            let Some((_, slot)) = next else { break };
            self.complete(slot, Completion::Failed);
        }
    }

    pub fn pending(&self) -> usize {
        self.waiters.borrow().len()
    }
}

/// A waiter of [`Completions::wait`]: a future of its outcome, holding a reused slot.
pub struct Waiting<'a> {
    completions: &'a Completions,
    state: WaitState,
}

enum WaitState {
    /// Its outcome, not yet taken (known at once, or taken from the slot).
    Ready(Completion),
    Slot(usize),
    Taken,
}

impl<'a> Waiting<'a> {
    fn ready(completions: &'a Completions, outcome: Completion) -> Self {
        Waiting {
            completions,
            state: WaitState::Ready(outcome),
        }
    }

    /// The outcome if there is one already (then it is taken: the next call says `None`).
    pub fn try_recv(&mut self) -> Option<Completion> {
        match self.state {
            WaitState::Ready(outcome) => {
                self.state = WaitState::Taken;
                Some(outcome)
            }
            WaitState::Slot(slot) => {
                let outcome = self.completions.slots.borrow_mut()[slot].outcome.take()?;
                self.free_slot(slot);
                Some(outcome)
            }
            WaitState::Taken => None,
        }
    }

    fn free_slot(&mut self, slot: usize) {
        self.completions.slots.borrow_mut()[slot] = Slot::default();
        self.completions.free.borrow_mut().push(slot);
        self.state = WaitState::Taken;
    }
}

impl Future for Waiting<'_> {
    type Output = Completion;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Completion> {
        if let Some(outcome) = self.try_recv() {
            return Poll::Ready(outcome);
        }
        let WaitState::Slot(slot) = self.state else {
            panic!("a completion waiter polled after it completed");
        };
        let mut slots = self.completions.slots.borrow_mut();
        let waker = &mut slots[slot].waker;
        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let WaitState::Slot(slot) = self.state {
            let completed = {
                let mut slots = self.completions.slots.borrow_mut();
                let entry = &mut slots[slot];
                if entry.outcome.is_none() {
                    // Still queued: the release or failure that reaches it frees it.
                    entry.abandoned = true;
                    entry.waker = None;
                }
                entry.outcome.is_some()
            };
            if completed {
                self.free_slot(slot);
            }
        }
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

    /// `fail_waiting` fails who waits now, not who comes later (a member that left a master
    /// without a lease: the next produce may find it back).
    #[test]
    fn failing_the_waiting_leaves_later_waiters_waiting() {
        let c = Completions::new(0);
        let mut a = c.wait(100);
        c.fail_waiting();
        assert_eq!(a.try_recv(), Some(Completion::Failed));
        let mut b = c.wait(200);
        assert_eq!(b.try_recv(), None, "a later waiter waits");
        assert_eq!(c.release(200), 1);
        assert_eq!(b.try_recv(), Some(Completion::Done));
    }

    #[test]
    fn one_release_completes_every_covered_waiter_in_order() {
        let c = Completions::new(0);
        let mut a = c.wait(100);
        let mut b = c.wait(200);
        let mut d = c.wait(300);
        assert_eq!(c.release(250), 2);
        assert_eq!(a.try_recv(), Some(Completion::Done));
        assert_eq!(b.try_recv(), Some(Completion::Done));
        assert_eq!(d.try_recv(), None);
        assert_eq!(c.pending(), 1);
        let mut e = c.wait(240);
        assert_eq!(e.try_recv(), Some(Completion::Done));
        c.fail_all();
        assert_eq!(d.try_recv(), Some(Completion::Failed));
        let mut f = c.wait(1000);
        assert_eq!(f.try_recv(), Some(Completion::Failed));
    }

    #[test]
    fn a_dropped_waiter_gives_its_slot_back_and_releases_stay_in_order() {
        use futures_lite::future::{block_on, poll_once};
        let c = Completions::new(0);
        let mut a = c.wait(100);
        let b = c.wait(200);
        let mut d = c.wait(300);
        assert_eq!(block_on(poll_once(&mut a)), None, "not released yet");
        // A timed-out waiter: its slot is freed by the release that reaches it.
        drop(b);
        assert_eq!(c.pending(), 3);
        assert_eq!(
            c.release(250),
            2,
            "the dropped waiter still counts in order"
        );
        assert_eq!(block_on(poll_once(&mut a)), Some(Completion::Done));
        assert_eq!(d.try_recv(), None);
        drop(a);
        // Both freed slots are reused: the slot list does not grow past three.
        let mut e = c.wait(400);
        let f = c.wait(500);
        assert_eq!(c.slots.borrow().len(), 3);
        drop(f);
        c.fail_all();
        assert_eq!(d.try_recv(), Some(Completion::Failed));
        assert_eq!(e.try_recv(), Some(Completion::Failed));
        drop((d, e));
        assert_eq!(c.pending(), 0);
        assert_eq!(c.free.borrow().len(), 3, "every slot is free again");
        // A waiter dropped after its release but before it looked frees its slot too.
        let c = Completions::new(0);
        let g = c.wait(10);
        c.release(10);
        drop(g);
        assert_eq!(c.free.borrow().len(), 1);
    }

    #[test]
    fn reset_lowers_what_counts_as_released() {
        let c = Completions::new(0);
        c.release(500);
        c.reset_to(200);
        assert_eq!(c.released_offset(), 200);
        let mut w = c.wait(300);
        assert_eq!(w.try_recv(), None, "300 is past the cut");
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
