//! The master's view of its slaves, per shard: each link's acknowledged offset, and the
//! producers waiting (SYNC_MASTER) for enough slaves to acknowledge their records.
//!
//! A report moves one link's offset forward; the quorum offset is the offset that at least
//! `min_in_sync_replicas - 1` links have reached, and one [`Completions::release`] frees every
//! producer it covers in one batch. A report past the master's own end is refused: a fake
//! acknowledgement must never release a producer.
//!
//! In controller mode the master waits for named brokers rather than a count: each link
//! carries the slave's controller broker id (from its hello), and [`Replicas::set_required`]
//! names the SyncStateSet's other members (while a change is pending, the union of the old and
//! the new set, so an expansion under way never releases on the smaller set's acks). The
//! quorum offset is then the lowest offset every required member has reached on this shard
//! (with `all_ack_in_sync_state_set = false`: the `needed`-th highest among them).

use crate::clock::Clock;
use crate::shard::completion::Completions;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct ReplicaState {
    pub peer: String,
    pub acked_offset: u64,
    /// Where the master ships this link from (its handshake's start): the slave needs every
    /// byte from here, acknowledged or not.
    pub shipped_from: u64,
    pub connected_at: Instant,
    pub last_report_at: Instant,
    /// When this link last caught up, by Kafka's rule: a report at or past the master's end
    /// as of the link's previous report (under steady load a healthy slave never equals the
    /// end of the moment, but always reaches where the end was one report ago).
    pub caught_up_at: Instant,
    /// The master's end when this link last reported (`u64::MAX` before its first report).
    pub master_end_at_report: u64,
    /// Controller mode: the slave's broker id as its hello named it; 0 otherwise.
    pub broker_id: u64,
}

/// Why a report was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct FakeAck {
    pub reported: u64,
    pub master_max: u64,
}

pub struct Replicas {
    /// Slaves that must acknowledge a record before a SYNC_MASTER answers OK.
    needed: usize,
    links: RefCell<BTreeMap<u64, ReplicaState>>,
    next_link_id: Cell<u64>,
    pub completions: Completions,
    /// The shard's clock: link times (and so the lag gauges) read it, not the wall clock.
    clock: Rc<dyn Clock>,
    /// Controller mode: the SyncStateSet members other than this master that an `all`-level
    /// produce waits for, and whether every one of them must confirm (else `needed` of
    /// them). `None`: master/slave mode, any `needed` links count.
    required: RefCell<Option<(Vec<u64>, bool)>>,
}

impl Replicas {
    /// `confirmed_offset`: what slaves are known to have acknowledged already (persisted).
    pub fn new(min_in_sync_replicas: u32, confirmed_offset: u64, clock: Rc<dyn Clock>) -> Replicas {
        Replicas {
            needed: min_in_sync_replicas.saturating_sub(1) as usize,
            links: RefCell::new(BTreeMap::new()),
            next_link_id: Cell::new(1),
            completions: Completions::new(confirmed_offset),
            clock,
            required: RefCell::new(None),
        }
    }

    /// Controller mode: the members (broker ids, the master excluded) whose confirmation an
    /// `all`-level produce waits for; `every` from `all_ack_in_sync_state_set`. Producers the
    /// new members already cover are released at once (a shrink committed by the controller
    /// lets the remaining members' acknowledgements count).
    pub fn set_required(&self, members: Vec<u64>, every: bool) {
        *self.required.borrow_mut() = Some((members, every));
        if let Some(quorum) = self.quorum_offset() {
            self.completions.release(quorum);
        }
    }

    /// Controller mode: how many members an `all`-level produce waits for (`None` in
    /// master/slave mode).
    pub fn required_count(&self) -> Option<usize> {
        self.required.borrow().as_ref().map(|(members, every)| {
            if *every {
                members.len()
            } else {
                members.len().min(self.needed)
            }
        })
    }

    /// The highest offset `broker_id` has acknowledged on any of its links here (a slave
    /// that reconnected may briefly have two), `None` when it has no link.
    pub fn acked_by(&self, broker_id: u64) -> Option<u64> {
        self.links
            .borrow()
            .values()
            .filter(|l| l.broker_id == broker_id)
            .map(|l| l.acked_offset)
            .max()
    }

    pub fn needed(&self) -> usize {
        self.needed
    }

    /// Controller mode: whether every member an `all`-level produce waits for has a link
    /// here now (true in master/slave mode, and with no other member).
    pub fn every_required_linked(&self) -> bool {
        self.required
            .borrow()
            .as_ref()
            .is_none_or(|(members, _)| members.iter().all(|id| self.acked_by(*id).is_some()))
    }

    /// A new link counts as having acknowledged nothing until it reports: the offset in its
    /// handshake may include bytes it has not made durable.
    pub fn register(&self, peer: String, shipped_from: u64, broker_id: u64) -> u64 {
        let id = self.next_link_id.get();
        self.next_link_id.set(id + 1);
        let now = self.clock.now();
        self.links.borrow_mut().insert(
            id,
            ReplicaState {
                peer,
                acked_offset: 0,
                shipped_from,
                connected_at: now,
                last_report_at: now,
                caught_up_at: now,
                master_end_at_report: u64::MAX,
                broker_id,
            },
        );
        id
    }

    pub fn unregister(&self, id: u64) {
        self.links.borrow_mut().remove(&id);
    }

    /// Records a link's report. Returns whether the quorum offset advanced.
    pub fn report(&self, id: u64, offset: u64, master_max: u64) -> Result<bool, FakeAck> {
        if offset > master_max {
            return Err(FakeAck {
                reported: offset,
                master_max,
            });
        }
        {
            let mut links = self.links.borrow_mut();
            let Some(link) = links.get_mut(&id) else {
                return Ok(false);
            };
            let now = self.clock.now();
            link.acked_offset = offset;
            link.last_report_at = now;
            if offset >= master_max || offset >= link.master_end_at_report {
                link.caught_up_at = now;
            }
            link.master_end_at_report = master_max;
        }
        let before = self.completions.released_offset();
        if let Some(quorum) = self.quorum_offset() {
            // Every link's offset was at most the master's end when it was reported, and a
            // master's end only grows: a quorum past it would release a producer on a fake ack.
            debug_assert!(
                quorum <= master_max,
                "quorum offset {quorum} is past the master's end {master_max}"
            );
            self.completions.release(quorum);
        }
        let after = self.completions.released_offset();
        // What was released earlier was bounded by the master's end then, and that end only
        // grows: no producer is ever answered for bytes the master does not hold.
        debug_assert!(
            after <= master_max,
            "released producers up to {after}, past the master's end {master_max}"
        );
        Ok(after > before)
    }

    /// The highest offset that `needed` links have all reached (controller mode: that the
    /// required members have, see the module docs).
    pub fn quorum_offset(&self) -> Option<u64> {
        if let Some((members, every)) = &*self.required.borrow() {
            if members.is_empty() {
                return None;
            }
            let mut acked: Vec<u64> = members
                .iter()
                .map(|id| self.acked_by(*id).unwrap_or(0))
                .collect();
            acked.sort_unstable_by(|a, b| b.cmp(a));
            let count = if *every {
                acked.len()
            } else {
                self.needed.clamp(1, acked.len())
            };
            return Some(acked[count - 1]);
        }
        if self.needed == 0 {
            return None;
        }
        let mut acked: Vec<u64> = self
            .links
            .borrow()
            .values()
            .map(|l| l.acked_offset)
            .collect();
        if acked.len() < self.needed {
            return None;
        }
        acked.sort_unstable_by(|a, b| b.cmp(a));
        Some(acked[self.needed - 1])
    }

    /// The lowest offset a connected slave still needs from this master (its acknowledged
    /// offset, or where its link started if it has acknowledged less): age-based retention
    /// deletes nothing from there on. `None` without slaves.
    pub fn slowest_needed_offset(&self) -> Option<u64> {
        self.links
            .borrow()
            .values()
            .map(|l| l.acked_offset.max(l.shipped_from))
            .min()
    }

    /// Links close enough to the master's end to count as in sync.
    pub fn in_sync(&self, master_max: u64, max_gap_bytes: u64) -> usize {
        self.links
            .borrow()
            .values()
            .filter(|l| master_max.saturating_sub(l.acked_offset) <= max_gap_bytes)
            .count()
    }

    /// Whether some connected slave has acknowledged `offset`: it holds the log up to there.
    /// Allocates nothing (a far pull asks this on every answer).
    pub fn any_acked_at_least(&self, offset: u64) -> bool {
        self.links
            .borrow()
            .values()
            .any(|l| l.acked_offset >= offset)
    }

    pub fn states(&self) -> Vec<ReplicaState> {
        self.links.borrow().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::RealClock;
    use crate::shard::completion::Completion;

    #[test]
    fn one_ack_releases_every_covered_producer_and_fake_acks_are_refused() {
        let replicas = Replicas::new(2, 0, Rc::new(RealClock));
        let mut a = replicas.completions.wait(100);
        let mut b = replicas.completions.wait(200);
        let mut c = replicas.completions.wait(300);
        let link = replicas.register("slave".into(), 0, 0);
        assert_eq!(
            replicas.report(link, 500, 400),
            Err(FakeAck {
                reported: 500,
                master_max: 400
            })
        );
        assert_eq!(a.try_recv(), None, "a fake ack released a producer");
        assert_eq!(replicas.report(link, 250, 400), Ok(true));
        assert_eq!(a.try_recv(), Some(Completion::Done));
        assert_eq!(b.try_recv(), Some(Completion::Done));
        assert_eq!(c.try_recv(), None);
        assert_eq!(replicas.in_sync(400, 100), 0);
        assert_eq!(replicas.in_sync(400, 200), 1);
    }

    #[test]
    fn quorum_needs_enough_links() {
        let replicas = Replicas::new(3, 0, Rc::new(RealClock));
        let one = replicas.register("a".into(), 0, 0);
        replicas.report(one, 1000, 1000).unwrap();
        assert_eq!(replicas.quorum_offset(), None);
        let two = replicas.register("b".into(), 0, 0);
        replicas.report(two, 600, 1000).unwrap();
        assert_eq!(replicas.quorum_offset(), Some(600));
        replicas.unregister(one);
        assert_eq!(replicas.quorum_offset(), None);
        assert_eq!(
            Replicas::new(1, 0, Rc::new(RealClock)).quorum_offset(),
            None
        );
        // A link that has not reported yet holds the quorum back, whatever its handshake said.
        let three = replicas.register("c".into(), 0, 0);
        replicas.report(two, 900, 1000).unwrap();
        assert_eq!(replicas.quorum_offset(), Some(0));
        replicas.report(three, 800, 1000).unwrap();
        assert_eq!(replicas.quorum_offset(), Some(800));
    }

    /// Controller mode: only the named members count, every one of them, and a set change
    /// releases what the new set already covers.
    #[test]
    fn controller_mode_waits_for_every_named_member() {
        let replicas = Replicas::new(2, 0, Rc::new(RealClock));
        let mut pending = replicas.completions.wait(500);
        let b = replicas.register("b".into(), 0, 2);
        let c = replicas.register("c".into(), 0, 3);
        let stranger = replicas.register("x".into(), 0, 9);
        replicas.set_required(vec![2, 3], true);
        assert_eq!(replicas.required_count(), Some(2));
        replicas.report(stranger, 1000, 1000).unwrap();
        replicas.report(b, 1000, 1000).unwrap();
        assert_eq!(replicas.quorum_offset(), Some(0), "c has not reported");
        assert_eq!(pending.try_recv(), None);
        replicas.report(c, 400, 1000).unwrap();
        assert_eq!(replicas.quorum_offset(), Some(400));
        assert_eq!(pending.try_recv(), None, "500 is not covered by c");
        // The controller shrank the set to {b}: b's acknowledgement now releases it.
        replicas.set_required(vec![2], true);
        assert_eq!(pending.try_recv(), Some(Completion::Done));
        // A member without a link holds everything back.
        replicas.set_required(vec![2, 4], true);
        assert_eq!(replicas.quorum_offset(), Some(0));
        replicas.set_required(vec![2, 4], false);
        assert_eq!(
            replicas.quorum_offset(),
            Some(1000),
            "one of them, as min_in_sync - 1"
        );
        replicas.unregister(c);
        assert_eq!(replicas.acked_by(3), None);
    }

    /// A clock that moves only when told (one second a step).
    #[derive(Default)]
    struct StepClock {
        base: std::cell::OnceCell<Instant>,
        steps: Cell<u32>,
    }

    impl StepClock {
        fn step(&self) {
            self.steps.set(self.steps.get() + 1);
        }
    }

    impl crate::clock::Clock for StepClock {
        fn now(&self) -> Instant {
            *self.base.get_or_init(Instant::now)
                + std::time::Duration::from_secs(u64::from(self.steps.get()))
        }

        fn sleep(&self, _: std::time::Duration) -> crate::clock::Sleep {
            crate::clock::Sleep::Other(Box::pin(std::future::pending()))
        }
    }

    /// Kafka's caught-up rule: a report that reaches where the master's end was at the
    /// previous report counts, though the end moved on meanwhile.
    #[test]
    fn caught_up_means_reaching_the_end_of_the_previous_report() {
        let clock = Rc::new(StepClock::default());
        let replicas = Replicas::new(2, 0, clock.clone());
        let link = replicas.register("b".into(), 0, 2);
        let start = replicas.states()[0].caught_up_at;
        clock.step();
        // First report: behind the end of the moment, and no previous report to reach.
        replicas.report(link, 900, 1000).unwrap();
        assert_eq!(replicas.states()[0].caught_up_at, start);
        clock.step();
        // Past 1000 (the end at the first report), behind today's 1100: caught up.
        replicas.report(link, 1050, 1100).unwrap();
        let second = replicas.states()[0].caught_up_at;
        assert!(second > start, "a pipelined slave counts as caught up");
        clock.step();
        // Behind 1100 (the end at the previous report): not caught up.
        replicas.report(link, 1080, 5000).unwrap();
        assert_eq!(replicas.states()[0].caught_up_at, second);
    }

    /// Retention's bound: the lowest of each link's acknowledged offset or, before it reports
    /// past it, where its link started; none without links.
    #[test]
    fn the_slowest_slave_bounds_what_it_still_needs() {
        let replicas = Replicas::new(1, 0, Rc::new(RealClock));
        assert_eq!(replicas.slowest_needed_offset(), None);
        let a = replicas.register("a".into(), 4096, 0);
        let b = replicas.register("b".into(), 0, 0);
        assert_eq!(replicas.slowest_needed_offset(), Some(0));
        replicas.report(b, 10_000, 20_000).unwrap();
        assert_eq!(replicas.slowest_needed_offset(), Some(4096));
        replicas.report(a, 15_000, 20_000).unwrap();
        assert_eq!(replicas.slowest_needed_offset(), Some(10_000));
        replicas.unregister(b);
        assert_eq!(replicas.slowest_needed_offset(), Some(15_000));
    }
}
