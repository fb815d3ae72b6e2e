//! Allocation strategies: which live member of a clustering group should own each queue.
//!
//! Pure functions of the sorted queue list and the sorted member list, so every coordinator
//! (and a test) computes the same answer from the same membership. The coordinator
//! ([`super::coordinator`]) applies the answer as a *target*; a queue moves only once its
//! current holder has released it or its session has ended.

use crate::protocol::message::GroupQueue;
use std::collections::BTreeMap;

/// How a clustering group's queues are divided (the `strategy` byte of `GroupJoin`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// RocketMQ's `AllocateMessageQueueAveragely`: each member gets one contiguous run of the
    /// sorted queues, the first `queues % members` members one queue more.
    Averagely,
    /// RocketMQ's `AllocateMessageQueueAveragelyByCircle`: queue `i` goes to member
    /// `i % members`, so a member's queues are spread over the topic.
    ByCircle,
    /// A hash ring with [`VIRTUAL_NODES`] points per member: a join or a leave moves only
    /// the queues next to the points that changed, about `1 / members` of them.
    ConsistentHash,
}

/// Points per member on the consistent-hash ring: enough that 3 members split 8 queues
/// roughly evenly, few enough that a rebalance of a thousand members stays cheap.
pub const VIRTUAL_NODES: usize = 32;

impl Strategy {
    pub fn from_wire(value: u8) -> Option<Strategy> {
        match value {
            0 => Some(Strategy::Averagely),
            1 => Some(Strategy::ByCircle),
            2 => Some(Strategy::ConsistentHash),
            _ => None,
        }
    }

    pub fn to_wire(self) -> u8 {
        match self {
            Strategy::Averagely => 0,
            Strategy::ByCircle => 1,
            Strategy::ConsistentHash => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Averagely => "averagely",
            Strategy::ByCircle => "by-circle",
            Strategy::ConsistentHash => "consistent-hash",
        }
    }

    /// The owner of every queue, by index into `members`. `queues` and `members` are sorted
    /// (the caller's invariant); no members means no owners.
    pub fn allocate<'m>(
        self,
        queues: &[GroupQueue],
        members: &[&'m str],
    ) -> BTreeMap<GroupQueue, &'m str> {
        debug_assert!(queues.windows(2).all(|w| w[0] < w[1]), "queues unsorted");
        debug_assert!(members.windows(2).all(|w| w[0] < w[1]), "members unsorted");
        if members.is_empty() {
            return BTreeMap::new();
        }
        match self {
            Strategy::Averagely => averagely(queues, members),
            Strategy::ByCircle => queues
                .iter()
                .enumerate()
                .map(|(i, q)| (q.clone(), members[i % members.len()]))
                .collect(),
            Strategy::ConsistentHash => consistent_hash(queues, members),
        }
    }
}

fn averagely<'m>(queues: &[GroupQueue], members: &[&'m str]) -> BTreeMap<GroupQueue, &'m str> {
    let (each, extra) = (queues.len() / members.len(), queues.len() % members.len());
    let mut owners = BTreeMap::new();
    let mut next = 0;
    for (i, member) in members.iter().enumerate() {
        let run = each + usize::from(i < extra);
        for q in &queues[next..next + run] {
            owners.insert(q.clone(), *member);
        }
        next += run;
    }
    owners
}

fn consistent_hash<'m>(
    queues: &[GroupQueue],
    members: &[&'m str],
) -> BTreeMap<GroupQueue, &'m str> {
    let mut ring: Vec<(u64, &'m str)> = members
        .iter()
        .flat_map(|m| {
            (0..VIRTUAL_NODES).map(move |n| (ring_point(&[m.as_bytes(), &n.to_le_bytes()]), *m))
        })
        .collect();
    ring.sort_unstable();
    queues
        .iter()
        .map(|q| {
            let point = ring_point(&[q.topic.as_bytes(), &q.queue.to_le_bytes()]);
            let at = ring.partition_point(|(p, _)| *p < point) % ring.len();
            (q.clone(), ring[at].1)
        })
        .collect()
}

/// A point on the ring: FNV-1a spread by splitmix64's finalizer, because FNV alone maps
/// keys that differ only in their last bytes (`member` + node number) to nearby points,
/// which would give one member a whole arc.
fn ring_point(parts: &[&[u8]]) -> u64 {
    let mut z = fnv1a(parts);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a, 64 bits: stable across builds and machines (unlike `std`'s hasher), which the
/// ring needs so that every coordinator places a member's points at the same spots.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn queues(n: u32) -> Vec<GroupQueue> {
        (0..n)
            .map(|queue| GroupQueue {
                topic: "t".into(),
                queue,
            })
            .collect()
    }

    fn counts(owners: &BTreeMap<GroupQueue, &str>) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for m in owners.values() {
            *counts.entry(m.to_string()).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn averagely_gives_contiguous_runs_the_first_members_one_more() {
        let owners = Strategy::Averagely.allocate(&queues(8), &["a", "b", "c"]);
        let order: Vec<&str> = owners.values().copied().collect();
        assert_eq!(order, ["a", "a", "a", "b", "b", "b", "c", "c"]);
    }

    #[test]
    fn by_circle_deals_queues_round_the_members() {
        let owners = Strategy::ByCircle.allocate(&queues(8), &["a", "b", "c"]);
        let order: Vec<&str> = owners.values().copied().collect();
        assert_eq!(order, ["a", "b", "c", "a", "b", "c", "a", "b"]);
    }

    /// Every strategy gives every queue exactly one live owner, and more members than queues
    /// leaves some idle rather than sharing a queue.
    #[test]
    fn every_strategy_owns_every_queue_once() {
        for strategy in [
            Strategy::Averagely,
            Strategy::ByCircle,
            Strategy::ConsistentHash,
        ] {
            for members in [
                &["a"][..],
                &["a", "b", "c"],
                &["a", "b", "c", "d", "e", "f", "g", "h", "i"],
            ] {
                let owners = strategy.allocate(&queues(8), members);
                assert_eq!(owners.len(), 8, "{strategy:?}");
                assert!(owners.values().all(|m| members.contains(m)));
                if strategy != Strategy::ConsistentHash {
                    let c = counts(&owners);
                    let (lo, hi) = (c.values().min().unwrap(), c.values().max().unwrap());
                    assert!(hi - lo <= 1, "{strategy:?} {members:?}: {c:?}");
                }
            }
            assert!(strategy.allocate(&queues(8), &[]).is_empty());
        }
    }

    /// A member leaving the ring moves only its own queues: the others keep theirs.
    #[test]
    fn consistent_hash_moves_only_the_leavers_queues() {
        let before = Strategy::ConsistentHash.allocate(&queues(64), &["a", "b", "c", "d"]);
        let after = Strategy::ConsistentHash.allocate(&queues(64), &["a", "b", "d"]);
        let moved: BTreeSet<_> = before
            .iter()
            .filter(|(q, m)| after[*q] != **m)
            .map(|(q, _)| q.clone())
            .collect();
        assert!(!moved.is_empty());
        assert!(moved.iter().all(|q| before[q] == "c"), "{moved:?}");
        assert!(
            counts(&before).len() == 4,
            "every member got some of 64 queues"
        );
    }
}
