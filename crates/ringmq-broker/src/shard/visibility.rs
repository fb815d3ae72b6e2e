//! The visibility stage: which records consumers may see, and the long polls waiting for more.
//!
//! The confirmed offset (see [`super::Shard::confirmed_offset`]) bounds what a pull shows. A
//! pull that finds nothing new parks here, keyed by its queue, and is woken only when a record
//! of *that* queue becomes visible, so a thousand pulls parked on different queues cost a
//! produce O(1) work, not a thousand wake-ups:
//!
//! - a pull waiting for a record its queue does not hold yet parks in `by_queue`;
//! - when a batch is appended to a queue, that queue's parked pulls move to `by_end`, keyed by
//!   the commitlog offset just past the batch: the batch is visible once that is confirmed;
//! - a pull waiting for a record its queue holds but does not show yet parks in `by_end` at
//!   the end of that record;
//! - when the confirmed offset moves, every `by_end` entry at or below it is woken.
//!
//! Events that change what visibility means (a role change, a truncation, a topic change, a
//! stop) wake every parked pull; each then looks again. A woken pull always re-checks, so an
//! early wake-up is harmless; a late one is bounded by the pull's own timeout.

use crate::store::QueueKey;
use futures_channel::oneshot;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};

/// Where a parked pull waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFor {
    /// The queue's next append (the queue holds nothing at the pull's offset yet).
    Append(QueueKey),
    /// The confirmed offset reaching this commitlog offset (the end of the wanted record).
    Confirmed(u64),
}

#[derive(Default)]
pub struct Visibility {
    /// The highest confirmed offset this stage was told of; wakes are relative to it.
    confirmed: Cell<u64>,
    /// Pulls waiting for their queue's next append.
    by_queue: RefCell<HashMap<QueueKey, Vec<oneshot::Sender<()>>>>,
    /// Pulls waiting for the confirmed offset to reach a commitlog offset.
    by_end: RefCell<BTreeMap<u64, Vec<oneshot::Sender<()>>>>,
}

/// Parked senders whose pull timed out (receiver dropped) are dropped whenever their list is
/// touched, so a list stays bounded by the pulls actually waiting on it.
fn push_live(list: &mut Vec<oneshot::Sender<()>>, waiter: oneshot::Sender<()>) {
    list.retain(|w| !w.is_canceled());
    list.push(waiter);
}

impl Visibility {
    /// Parks a pull. The returned receiver fires when what it waits for may have happened.
    pub fn wait(&self, what: WaitFor) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        match what {
            WaitFor::Append(key) => {
                push_live(self.by_queue.borrow_mut().entry(key).or_default(), tx);
            }
            WaitFor::Confirmed(end) if end <= self.confirmed.get() => {
                let _ = tx.send(());
            }
            WaitFor::Confirmed(end) => {
                push_live(self.by_end.borrow_mut().entry(end).or_default(), tx);
            }
        }
        rx
    }

    /// A batch was appended to `key`, ending at commitlog offset `end_offset`: the queue's
    /// parked pulls now wait for that end to be confirmed. Call [`Visibility::confirmed`]
    /// afterwards when the append itself confirmed it (ASYNC_FLUSH).
    pub fn appended(&self, key: QueueKey, end_offset: u64) {
        let Some(waiting) = self.by_queue.borrow_mut().remove(&key) else {
            return;
        };
        let mut by_end = self.by_end.borrow_mut();
        let list = by_end.entry(end_offset).or_default();
        list.retain(|w| !w.is_canceled());
        list.extend(waiting.into_iter().filter(|w| !w.is_canceled()));
    }

    /// The confirmed offset is now `offset`: wakes every pull whose record it covers. A lower
    /// offset than before (a log cut back, a new master confirming less) wakes nobody.
    pub fn confirmed(&self, offset: u64) {
        self.confirmed.set(offset);
        let mut by_end = self.by_end.borrow_mut();
        let still_waiting = by_end.split_off(&offset.saturating_add(1));
        let covered = std::mem::replace(&mut *by_end, still_waiting);
        drop(by_end);
        for tx in covered.into_values().flatten() {
            let _ = tx.send(());
        }
    }

    /// Wakes every parked pull (role change, truncation, topic change, stop).
    pub fn wake_all(&self) {
        let queued: Vec<_> = self.by_queue.borrow_mut().drain().collect();
        let ended = std::mem::take(&mut *self.by_end.borrow_mut());
        for tx in queued
            .into_iter()
            .flat_map(|(_, l)| l)
            .chain(ended.into_values().flatten())
        {
            let _ = tx.send(());
        }
    }

    /// Pulls parked right now (timed-out ones not yet dropped included).
    pub fn parked(&self) -> usize {
        self.by_queue.borrow().values().map(Vec::len).sum::<usize>()
            + self.by_end.borrow().values().map(Vec::len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(queue: u32) -> QueueKey {
        QueueKey { topic_id: 1, queue }
    }

    #[test]
    fn an_append_wakes_only_its_own_queue_once_confirmed() {
        let v = Visibility::default();
        let mut parked: Vec<_> = (0..1000).map(|q| v.wait(WaitFor::Append(key(q)))).collect();
        v.appended(key(7), 500);
        assert!(parked.iter_mut().all(|rx| rx.try_recv().unwrap().is_none()));
        v.confirmed(499);
        assert_eq!(parked[7].try_recv().unwrap(), None, "not confirmed yet");
        v.confirmed(500);
        assert_eq!(parked[7].try_recv().unwrap(), Some(()));
        let woken = parked
            .iter_mut()
            .filter_map(|rx| rx.try_recv().ok().flatten())
            .count();
        assert_eq!(woken, 0, "no other queue's pull was woken");
        assert_eq!(v.parked(), 999);
    }

    #[test]
    fn a_held_but_unconfirmed_record_wakes_when_confirmed() {
        let v = Visibility::default();
        v.confirmed(100);
        let mut already = v.wait(WaitFor::Confirmed(100));
        assert_eq!(already.try_recv().unwrap(), Some(()));
        let mut later = v.wait(WaitFor::Confirmed(300));
        v.confirmed(200);
        assert_eq!(later.try_recv().unwrap(), None);
        v.confirmed(300);
        assert_eq!(later.try_recv().unwrap(), Some(()));
    }

    #[test]
    fn timed_out_pulls_do_not_accumulate_and_wake_all_reaches_everyone() {
        let v = Visibility::default();
        for _ in 0..100 {
            drop(v.wait(WaitFor::Append(key(1))));
        }
        let mut a = v.wait(WaitFor::Append(key(1)));
        assert_eq!(v.parked(), 1, "dropped waiters were pruned");
        let mut b = v.wait(WaitFor::Confirmed(10_000));
        v.wake_all();
        assert_eq!(a.try_recv().unwrap(), Some(()));
        assert_eq!(b.try_recv().unwrap(), Some(()));
        assert_eq!(v.parked(), 0);
    }
}
