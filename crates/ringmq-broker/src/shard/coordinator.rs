//! The group coordinator: live members of consumer groups, their sessions, and which member
//! holds which queue.
//!
//! Each group has one coordinator, the shard [`coordinator_shard`] names (a hash of the group
//! name); other shards forward membership requests there and ask it to fence a member's pull
//! or commit. Membership is kept in memory only: after a broker restart every member's next
//! request gets `UNKNOWN_MEMBER` and it joins again (committed offsets are durable in
//! [`super::groups`], so nothing is lost but the session). Member ids carry a nonce of the
//! coordinator's boot and generations start from its boot time ([`Coordinator::booted`]), so
//! no id or generation of an earlier boot, or of another broker, is valid again.
//!
//! The state machine is pure: every transition takes the time it happens at, so a test drives
//! it with a simulated clock. Its rules:
//!
//! - A join, a leave or a session that ends is a membership change: the generation moves on
//!   and the strategy computes a new *target* owner for every queue.
//! - A queue is *held* by at most one member. A queue whose holder is no longer its target is
//!   *revoked*: the holder is told to stop fetching it, commit, and report it released in its
//!   next heartbeat. Only then (or once the holder's session ends, or it has not released the
//!   queue within its own session timeout) is the queue handed to its target, which reads it
//!   from the committed offset. So the holder map is the broker-side queue lock, leased for a
//!   session and renewed by heartbeats.
//! - A pull or commit names the member and its generation; it is accepted only from the
//!   current holder of the queue at the current generation ([`Coordinator::fence`]). A member
//!   whose session ended gets `UNKNOWN_MEMBER`; one with an older generation gets
//!   `ILLEGAL_GENERATION` and heartbeats for its new assignment.
//! - Broadcasting groups have no holders: every member reads every queue, with offsets kept
//!   under its own client id ([`broadcast_offsets_key`]).

use super::allocation::{fnv1a, Strategy};
use crate::constants::{
    GROUP_SESSION_TIMEOUT_MS_DEFAULT, GROUP_SESSION_TIMEOUT_MS_MAX, GROUP_SESSION_TIMEOUT_MS_MIN,
    MAX_CACHED_FENCES, MAX_GROUPS_PER_COORDINATOR, MAX_MEMBERS_PER_GROUP,
};
use crate::protocol::message::{GroupAssignment, GroupMember, GroupMembership, GroupQueue};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// The shard that coordinates `group`: FNV-1a of its name modulo the shard count. Stable
/// across restarts and equal on a master and its slaves (same shard count), so a consumer
/// that fails over meets its group's coordinator on the same shard number.
pub fn coordinator_shard(group: &str, shard_count: usize) -> usize {
    (fnv1a(&[group.as_bytes()]) % shard_count.max(1) as u64) as usize
}

/// Where a broadcasting member's offsets are kept: its own group name per client id, so a
/// member that restarts under the same client id resumes where it stopped.
pub fn broadcast_offsets_key(group: &str, client_id: &str) -> String {
    crate::protocol::broadcast_offsets_key(group, client_id)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupMode {
    /// The queues are divided among the members (the default).
    Clustering,
    /// Every member reads every queue.
    Broadcasting,
}

impl GroupMode {
    pub fn from_wire(value: u8) -> Option<GroupMode> {
        match value {
            0 => Some(GroupMode::Clustering),
            1 => Some(GroupMode::Broadcasting),
            _ => None,
        }
    }

    pub fn to_wire(self) -> u8 {
        match self {
            GroupMode::Clustering => 0,
            GroupMode::Broadcasting => 1,
        }
    }
}

/// What the first member of a group fixes for all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSettings {
    pub topics: Vec<String>,
    pub mode: GroupMode,
    pub strategy: Strategy,
    pub orderly: bool,
}

/// Why a membership request was refused; each maps to one wire status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipError {
    UnknownMember(String),
    IllegalGeneration(String),
    /// A join whose settings differ from the group's, or an invalid value.
    Refused(String),
    /// A bound on groups or members is reached (retryable).
    Full(String),
}

/// A join as the coordinator sees it (decoded and checked by the handler).
pub struct Join<'a> {
    pub group: &'a str,
    pub client_id: &'a str,
    pub host: &'a str,
    pub settings: GroupSettings,
    /// 0 takes the default.
    pub session_timeout_ms: u32,
    /// Every queue of the settings' topics, sorted.
    pub queues: Vec<GroupQueue>,
}

struct Member {
    client_id: String,
    host: String,
    session_timeout: Duration,
    last_heartbeat: Instant,
}

/// The holder of a queue and, once it is no longer the target, when it was told to give the
/// queue up.
struct Holding {
    member: String,
    revoked_at: Option<Instant>,
}

struct Group {
    settings: GroupSettings,
    generation: u64,
    members: BTreeMap<String, Member>,
    /// Every queue of the group's topics, sorted.
    queues: Vec<GroupQueue>,
    /// Clustering: the owner the strategy wants for each queue.
    target: BTreeMap<GroupQueue, String>,
    /// Clustering: the member that holds each queue now (the queue lock).
    holders: BTreeMap<GroupQueue, Holding>,
}

#[derive(Default)]
pub struct Coordinator {
    groups: BTreeMap<String, Group>,
    /// Names this coordinator's life in its member ids ([`Coordinator::booted`]), so an id
    /// handed out before a restart, or by another broker of the group (a slave), is never
    /// handed out again: a stale member cannot pass for a new one with the same client id.
    nonce: u64,
    /// Joins so far, which makes each member id unique for the life of the coordinator.
    joins: u64,
    /// The last generation given to any group. Generations come from this one counter, so a
    /// group's generation only grows, even when it empties and is created again, and a queue
    /// shard may refuse a commit older than one it has taken (see `GroupOffsets::record_fenced`).
    generations: u64,
    /// Groups whose generation or holders changed since the last [`Coordinator::take_changed`]:
    /// other shards drop what they cached of those groups' fences.
    changed: Vec<String>,
}

/// Generations a coordinator may give out per millisecond of its boot time before it could
/// reach the first generation of one booted a millisecond later (2^20: a million membership
/// changes per millisecond of uptime difference, far beyond what a coordinator sees).
const GENERATION_BASE_SHIFT: u32 = 20;

impl Coordinator {
    /// A coordinator booted at `boot_ms` (wall-clock milliseconds since the epoch) on shard
    /// `shard`. Its generations start above any generation an earlier boot gave out (a boot
    /// later by a millisecond starts 2^20 higher), so the commit floors queue shards keep
    /// (`GroupOffsets::record_fenced`), and a member that slept through the restart, still
    /// refuse the old generations; its member ids carry a nonce of the boot, so none repeats.
    pub fn booted(boot_ms: u64, shard: usize) -> Coordinator {
        let nonce = fnv1a(&[
            &boot_ms.to_le_bytes(),
            &(shard as u64).to_le_bytes(),
            &u64::from(std::process::id()).to_le_bytes(),
        ]);
        Coordinator {
            nonce,
            generations: boot_ms << GENERATION_BASE_SHIFT,
            ..Coordinator::default()
        }
    }

    pub fn join(
        &mut self,
        join: Join<'_>,
        now: Instant,
    ) -> Result<GroupAssignment, MembershipError> {
        let session_ms = match join.session_timeout_ms {
            0 => GROUP_SESSION_TIMEOUT_MS_DEFAULT,
            ms => ms,
        };
        if !(GROUP_SESSION_TIMEOUT_MS_MIN..=GROUP_SESSION_TIMEOUT_MS_MAX).contains(&session_ms) {
            return Err(MembershipError::Refused(format!(
                "session_timeout_ms must be {GROUP_SESSION_TIMEOUT_MS_MIN} to \
                 {GROUP_SESSION_TIMEOUT_MS_MAX}, not {session_ms}"
            )));
        }
        if !self.groups.contains_key(join.group) && self.groups.len() >= MAX_GROUPS_PER_COORDINATOR
        {
            return Err(MembershipError::Full(format!(
                "this coordinator already has {MAX_GROUPS_PER_COORDINATOR} groups with members"
            )));
        }
        let group = self
            .groups
            .entry(join.group.to_string())
            .or_insert_with(|| Group {
                settings: join.settings.clone(),
                generation: 0,
                members: BTreeMap::new(),
                queues: Vec::new(),
                target: BTreeMap::new(),
                holders: BTreeMap::new(),
            });
        if group.settings != join.settings {
            return Err(MembershipError::Refused(format!(
                "group `{}` has members consuming {:?} ({:?}, {}, orderly {}); this join asks for {:?} ({:?}, {}, orderly {})",
                join.group,
                group.settings.topics,
                group.settings.mode,
                group.settings.strategy.name(),
                group.settings.orderly,
                join.settings.topics,
                join.settings.mode,
                join.settings.strategy.name(),
                join.settings.orderly,
            )));
        }
        if group.members.len() >= MAX_MEMBERS_PER_GROUP {
            return Err(MembershipError::Full(format!(
                "group `{}` already has {MAX_MEMBERS_PER_GROUP} members",
                join.group
            )));
        }
        self.joins += 1;
        let member_id = format!(
            "{}-{:08x}-{}",
            join.client_id, self.nonce as u32, self.joins
        );
        group.members.insert(
            member_id.clone(),
            Member {
                client_id: join.client_id.to_string(),
                host: join.host.to_string(),
                session_timeout: Duration::from_millis(session_ms as u64),
                last_heartbeat: now,
            },
        );
        group.queues = join.queues;
        self.generations += 1;
        group.rebalance(now, self.generations);
        let assignment = group.assignment(&member_id);
        self.changed.push(join.group.to_string());
        Ok(assignment)
    }

    /// Whether group `group_name` has native members (a Kafka join of that name is refused).
    pub fn has_members(&self, group_name: &str) -> bool {
        self.groups
            .get(group_name)
            .is_some_and(|g| !g.members.is_empty())
    }

    /// Renews the member's session, takes the queues it reports released and answers its
    /// assignment now (whatever generation it last knew).
    pub fn heartbeat(
        &mut self,
        group_name: &str,
        member_id: &str,
        released: &[GroupQueue],
        now: Instant,
    ) -> Result<GroupAssignment, MembershipError> {
        if !released.is_empty() {
            self.changed.push(group_name.to_string());
        }
        let group = self.group_with(group_name, member_id)?;
        group
            .members
            .get_mut(member_id)
            .expect("checked above")
            .last_heartbeat = now;
        for queue in released {
            let holds = group
                .holders
                .get(queue)
                .is_some_and(|h| h.member == member_id);
            // Only a queue it was told to give up: releasing one it still owns would leave
            // it without a holder until the next rebalance.
            if holds && group.target.get(queue).is_none_or(|t| t != member_id) {
                group.holders.remove(queue);
            }
        }
        group.grant();
        Ok(group.assignment(member_id))
    }

    /// A clean leave: the member's queues are free at once (it committed before leaving).
    pub fn leave(
        &mut self,
        group_name: &str,
        member_id: &str,
        now: Instant,
    ) -> Result<(), MembershipError> {
        self.generations += 1;
        let generation = self.generations;
        let group = self.group_with(group_name, member_id)?;
        group.members.remove(member_id);
        group.holders.retain(|_, h| h.member != member_id);
        group.rebalance(now, generation);
        if group.members.is_empty() {
            self.groups.remove(group_name);
        }
        self.changed.push(group_name.to_string());
        Ok(())
    }

    /// Ends the sessions not renewed within their timeout and takes back revoked queues not
    /// released within their holder's timeout. Returns the (group, member) sessions ended.
    pub fn expire(&mut self, now: Instant) -> Vec<(String, String)> {
        let mut ended = Vec::new();
        for (name, group) in self.groups.iter_mut() {
            let before = group.members.len();
            group.members.retain(|id, m| {
                let alive = now.saturating_duration_since(m.last_heartbeat) <= m.session_timeout;
                if !alive {
                    ended.push((name.clone(), id.clone()));
                }
                alive
            });
            let members = &group.members;
            let before_holders = group.holders.len();
            group
                .holders
                .retain(|_, h| match (members.get(&h.member), h.revoked_at) {
                    (None, _) => false,
                    (Some(m), Some(at)) => now.saturating_duration_since(at) <= m.session_timeout,
                    (Some(_), None) => true,
                });
            if group.members.len() != before {
                self.generations += 1;
                group.rebalance(now, self.generations);
                self.changed.push(name.clone());
            } else if group.holders.len() != before_holders {
                // A holder lost a queue it kept past its deadline: fence its commits too.
                self.generations += 1;
                group.generation = self.generations;
                group.grant();
                self.changed.push(name.clone());
            }
        }
        self.groups.retain(|_, g| !g.members.is_empty());
        ended
    }

    /// The groups whose fences changed since the last call (see `changed`).
    pub fn take_changed(&mut self) -> Vec<String> {
        let mut changed = std::mem::take(&mut self.changed);
        changed.sort();
        changed.dedup();
        changed
    }

    /// Whether `member_id` at `generation` may pull and commit `queue` now; the answer is
    /// the group name its offsets are kept under.
    pub fn fence(
        &self,
        group_name: &str,
        member_id: &str,
        generation: u64,
        queue: &GroupQueue,
    ) -> Result<String, MembershipError> {
        let group = self
            .groups
            .get(group_name)
            .ok_or_else(|| unknown(group_name, member_id))?;
        let member = group
            .members
            .get(member_id)
            .ok_or_else(|| unknown(group_name, member_id))?;
        if generation != group.generation {
            return Err(MembershipError::IllegalGeneration(format!(
                "group `{group_name}` is at generation {}, not {generation}: heartbeat for the \
                 new assignment",
                group.generation
            )));
        }
        match group.settings.mode {
            GroupMode::Broadcasting if group.queues.binary_search(queue).is_ok() => {
                Ok(broadcast_offsets_key(group_name, &member.client_id))
            }
            GroupMode::Clustering
                if group
                    .holders
                    .get(queue)
                    .is_some_and(|h| h.member == member_id) =>
            {
                Ok(group_name.to_string())
            }
            _ => Err(MembershipError::IllegalGeneration(format!(
                "queue {}/{} is not assigned to member `{member_id}` at generation {generation}",
                queue.topic, queue.queue
            ))),
        }
    }

    pub fn membership(&self, group_name: &str, now: Instant) -> GroupMembership {
        let Some(group) = self.groups.get(group_name) else {
            return GroupMembership {
                group: group_name.to_string(),
                generation: 0,
                mode: 0,
                strategy: 0,
                orderly: 0,
                members: Vec::new(),
            };
        };
        let members = group
            .members
            .iter()
            .map(|(id, m)| GroupMember {
                member_id: id.clone(),
                client_id: m.client_id.clone(),
                host: m.host.clone(),
                last_heartbeat_ms: now.saturating_duration_since(m.last_heartbeat).as_millis()
                    as u64,
                owned: group.held_by(id),
            })
            .collect();
        GroupMembership {
            group: group_name.to_string(),
            generation: group.generation,
            mode: group.settings.mode.to_wire(),
            strategy: group.settings.strategy.to_wire(),
            orderly: u8::from(group.settings.orderly),
            members,
        }
    }

    fn group_with(
        &mut self,
        group_name: &str,
        member_id: &str,
    ) -> Result<&mut Group, MembershipError> {
        match self.groups.get_mut(group_name) {
            Some(group) if group.members.contains_key(member_id) => Ok(group),
            _ => Err(unknown(group_name, member_id)),
        }
    }
}

fn unknown(group: &str, member_id: &str) -> MembershipError {
    MembershipError::UnknownMember(format!(
        "group `{group}` has no member `{member_id}` (its session ended or the broker \
         restarted): join again"
    ))
}

impl Group {
    /// A membership change: new generation, new targets, holders of queues they lose told.
    fn rebalance(&mut self, now: Instant, generation: u64) {
        debug_assert!(generation > self.generation, "generations only grow");
        self.generation = generation;
        if self.settings.mode == GroupMode::Broadcasting {
            return;
        }
        let members: Vec<&str> = self.members.keys().map(String::as_str).collect();
        self.target = self
            .settings
            .strategy
            .allocate(&self.queues, &members)
            .into_iter()
            .map(|(q, m)| (q, m.to_string()))
            .collect();
        let members = &self.members;
        let target = &self.target;
        self.holders
            .retain(|q, h| members.contains_key(&h.member) && target.contains_key(q));
        for (queue, holding) in self.holders.iter_mut() {
            let keeps = self.target.get(queue) == Some(&holding.member);
            holding.revoked_at = match (keeps, holding.revoked_at) {
                (true, _) => None,
                (false, Some(at)) => Some(at),
                (false, None) => Some(now),
            };
        }
        self.grant();
    }

    /// Hands every free queue to its target.
    fn grant(&mut self) {
        for (queue, member) in &self.target {
            self.holders
                .entry(queue.clone())
                .or_insert_with(|| Holding {
                    member: member.clone(),
                    revoked_at: None,
                });
        }
        debug_assert!(
            self.holders
                .values()
                .all(|h| self.members.contains_key(&h.member)),
            "a queue is held by a member that is gone"
        );
    }

    fn held_by(&self, member_id: &str) -> Vec<GroupQueue> {
        match self.settings.mode {
            GroupMode::Broadcasting => self.queues.clone(),
            GroupMode::Clustering => self
                .holders
                .iter()
                .filter(|(_, h)| h.member == member_id)
                .map(|(q, _)| q.clone())
                .collect(),
        }
    }

    fn assignment(&self, member_id: &str) -> GroupAssignment {
        let member = &self.members[member_id];
        let session_ms = member.session_timeout.as_millis() as u32;
        let (owned, revoked) = match self.settings.mode {
            GroupMode::Broadcasting => (self.queues.clone(), Vec::new()),
            GroupMode::Clustering => self
                .held_by(member_id)
                .into_iter()
                .partition(|q| self.target.get(q).is_some_and(|t| t == member_id)),
        };
        let waiting = self
            .target
            .iter()
            .filter(|(q, t)| {
                *t == member_id && self.holders.get(*q).is_some_and(|h| h.member != member_id)
            })
            .count() as u32;
        GroupAssignment {
            member_id: member_id.to_string(),
            generation: self.generation,
            session_timeout_ms: session_ms,
            heartbeat_interval_ms: heartbeat_interval_ms(session_ms),
            owned,
            revoked,
            waiting,
        }
    }
}

/// A queue shard's copy of the fences another shard's coordinator granted, so a member's
/// pulls do not cross the mesh each time. The coordinator tells every shard when a group's
/// generation or holders change (`ShardRequest::GroupFencesChanged`), and that group's entries
/// go. A grant that was asked for before a change and answered after it is not kept: every
/// change moves `forgotten`, and [`FenceCache::insert`] takes an entry only if it did not move
/// while the question was out.
/// A granted fence: the member, its generation and the group name its offsets are under.
struct Grant {
    member_id: String,
    generation: u64,
    offsets_key: String,
}

#[derive(Default)]
pub struct FenceCache {
    /// Keyed by (group, topic, queue).
    entries: RefCell<HashMap<(String, String, u32), Grant>>,
    forgotten: Cell<u64>,
}

impl FenceCache {
    pub fn get(
        &self,
        group: &str,
        member_id: &str,
        generation: u64,
        queue: &GroupQueue,
    ) -> Option<String> {
        let entries = self.entries.borrow();
        let grant = entries.get(&(group.to_string(), queue.topic.clone(), queue.queue))?;
        (grant.member_id == member_id && grant.generation == generation)
            .then(|| grant.offsets_key.clone())
    }

    /// What [`FenceCache::insert`] compares against.
    pub fn epoch(&self) -> u64 {
        self.forgotten.get()
    }

    pub fn insert(
        &self,
        asked_at_epoch: u64,
        group: &str,
        member_id: &str,
        generation: u64,
        queue: &GroupQueue,
        key: String,
    ) {
        if asked_at_epoch != self.forgotten.get() {
            return;
        }
        let mut entries = self.entries.borrow_mut();
        if entries.len() >= MAX_CACHED_FENCES {
            entries.clear();
        }
        entries.insert(
            (group.to_string(), queue.topic.clone(), queue.queue),
            Grant {
                member_id: member_id.to_string(),
                generation,
                offsets_key: key,
            },
        );
    }

    pub fn forget(&self, groups: &[String]) {
        self.forgotten.set(self.forgotten.get() + 1);
        self.entries
            .borrow_mut()
            .retain(|(g, _, _), _| !groups.contains(g));
    }
}

/// A third of the session: two heartbeats may be lost before it ends.
pub fn heartbeat_interval_ms(session_timeout_ms: u32) -> u32 {
    (session_timeout_ms / 3).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SimClock;
    use std::collections::BTreeSet;

    fn queues(n: u32) -> Vec<GroupQueue> {
        (0..n)
            .map(|queue| GroupQueue {
                topic: "t".into(),
                queue,
            })
            .collect()
    }

    fn settings(mode: GroupMode) -> GroupSettings {
        GroupSettings {
            topics: vec!["t".into()],
            mode,
            strategy: Strategy::Averagely,
            orderly: false,
        }
    }

    fn join(c: &mut Coordinator, client: &str, mode: GroupMode, now: Instant) -> GroupAssignment {
        c.join(
            Join {
                group: "g",
                client_id: client,
                host: "h",
                settings: settings(mode),
                session_timeout_ms: 3_000,
                queues: queues(8),
            },
            now,
        )
        .unwrap()
    }

    /// Moves the simulated clock on by `d`.
    fn pass(clock: &SimClock, d: Duration) {
        let _sleep = crate::clock::Clock::sleep(clock, d);
        assert!(clock.advance());
    }

    fn held(c: &Coordinator, now: Instant) -> BTreeMap<String, BTreeSet<u32>> {
        c.membership("g", now)
            .members
            .into_iter()
            .map(|m| (m.member_id, m.owned.iter().map(|q| q.queue).collect()))
            .collect()
    }

    /// No queue is ever held by two members, and the union of holdings is every queue once
    /// the members have released what they were told to.
    fn assert_disjoint(c: &Coordinator, now: Instant) {
        let mut seen = BTreeSet::new();
        for owned in held(c, now).values() {
            for q in owned {
                assert!(seen.insert(*q), "queue {q} held twice: {:?}", held(c, now));
            }
        }
    }

    /// A restarted coordinator (or a slave's) never hands out an id or a generation an
    /// earlier one did: with the same client id, the old member's id is unknown to the new
    /// coordinator and its generation is below every new one.
    #[test]
    fn a_rebooted_coordinator_repeats_no_member_id_or_generation() {
        let clock = SimClock::new(4);
        let now = crate::clock::Clock::now(&clock);
        let boot = 1_800_000_000_000;
        let mut before = Coordinator::booted(boot, 0);
        let old = join(&mut before, "a", GroupMode::Clustering, now);
        for _ in 0..5 {
            join(&mut before, "b", GroupMode::Clustering, now);
        }
        let mut after = Coordinator::booted(boot + 1, 0);
        let new = join(&mut after, "a", GroupMode::Clustering, now);
        assert_ne!(new.member_id, old.member_id);
        assert!(new.generation > before.generations, "{new:?}");
        let q0 = GroupQueue {
            topic: "t".into(),
            queue: 0,
        };
        assert!(matches!(
            after.fence("g", &old.member_id, old.generation, &q0),
            Err(MembershipError::UnknownMember(_))
        ));
        // Another shard booted in the same millisecond names its members apart too.
        let mut other = Coordinator::booted(boot + 1, 1);
        assert_ne!(
            join(&mut other, "a", GroupMode::Clustering, now).member_id,
            new.member_id
        );
    }

    /// A second member joins: the first is told to give up half its queues, the newcomer
    /// waits for them, the first's commits stay accepted until it releases them, and after
    /// the release the newcomer holds them at the same generation.
    #[test]
    fn a_join_revokes_then_hands_over_after_the_release() {
        let clock = SimClock::new(1);
        let now = crate::clock::Clock::now(&clock);
        let mut c = Coordinator::default();
        let a = join(&mut c, "a", GroupMode::Clustering, now);
        assert_eq!(a.owned.len(), 8);
        let b = join(&mut c, "b", GroupMode::Clustering, now);
        assert_eq!(b.generation, a.generation + 1);
        assert!(b.owned.is_empty());
        assert_eq!(b.waiting, 4);
        let q7 = GroupQueue {
            topic: "t".into(),
            queue: 7,
        };
        // a's old generation is fenced at once, everywhere.
        assert!(matches!(
            c.fence("g", &a.member_id, a.generation, &q7),
            Err(MembershipError::IllegalGeneration(_))
        ));
        let a2 = c.heartbeat("g", &a.member_id, &[], now).unwrap();
        assert_eq!(a2.revoked.len(), 4);
        assert_eq!(a2.owned.len(), 4);
        // It may still commit a revoked queue, the newcomer may not read it yet.
        assert_eq!(c.fence("g", &a.member_id, a2.generation, &q7).unwrap(), "g");
        assert!(c.fence("g", &b.member_id, b.generation, &q7).is_err());
        assert_disjoint(&c, now);
        let a3 = c.heartbeat("g", &a.member_id, &a2.revoked, now).unwrap();
        assert!(a3.revoked.is_empty());
        let b2 = c.heartbeat("g", &b.member_id, &[], now).unwrap();
        assert_eq!(b2.owned.len(), 4);
        assert_eq!(b2.waiting, 0);
        assert!(c.fence("g", &a.member_id, a3.generation, &q7).is_err());
        assert_eq!(c.fence("g", &b.member_id, b2.generation, &q7).unwrap(), "g");
        assert_disjoint(&c, now);
    }

    /// A member that stops heartbeating loses its session just after its timeout, not
    /// before; its queues go straight to the survivors (nobody to wait for) and its own
    /// requests get UNKNOWN_MEMBER from then on.
    #[test]
    fn a_session_that_ends_moves_its_queues_at_once() {
        let clock = SimClock::new(2);
        let now = || crate::clock::Clock::now(&clock);
        let mut c = Coordinator::default();
        let a = join(&mut c, "a", GroupMode::Clustering, now());
        let b = join(&mut c, "b", GroupMode::Clustering, now());
        let a2 = c.heartbeat("g", &a.member_id, &[], now()).unwrap();
        c.heartbeat("g", &a.member_id, &a2.revoked, now()).unwrap();
        for _ in 0..3 {
            pass(&clock, Duration::from_millis(1_000));
            c.heartbeat("g", &a.member_id, &[], now()).unwrap();
            assert!(c.expire(now()).is_empty());
        }
        // b has been silent for exactly its session: still alive.
        assert!(c.expire(now()).is_empty());
        pass(&clock, Duration::from_millis(1));
        assert_eq!(
            c.expire(now()),
            vec![("g".to_string(), b.member_id.clone())]
        );
        let a3 = c.heartbeat("g", &a.member_id, &[], now()).unwrap();
        assert_eq!(a3.owned.len(), 8, "{a3:?}");
        assert_eq!(a3.waiting, 0);
        let q0 = GroupQueue {
            topic: "t".into(),
            queue: 0,
        };
        assert!(matches!(
            c.fence("g", &b.member_id, b.generation, &q0),
            Err(MembershipError::UnknownMember(_))
        ));
        assert!(matches!(
            c.heartbeat("g", &b.member_id, &[], now()),
            Err(MembershipError::UnknownMember(_))
        ));
    }

    /// A holder that keeps heartbeating but never releases a revoked queue loses it after
    /// its session timeout, and the generation moves on so its late commit is refused.
    #[test]
    fn a_revoked_queue_never_released_is_taken_after_the_session() {
        let clock = SimClock::new(3);
        let now = || crate::clock::Clock::now(&clock);
        let mut c = Coordinator::default();
        let a = join(&mut c, "a", GroupMode::Clustering, now());
        let b = join(&mut c, "b", GroupMode::Clustering, now());
        for _ in 0..4 {
            pass(&clock, Duration::from_millis(1_000));
            c.heartbeat("g", &a.member_id, &[], now()).unwrap();
            c.heartbeat("g", &b.member_id, &[], now()).unwrap();
            c.expire(now());
        }
        let b2 = c.heartbeat("g", &b.member_id, &[], now()).unwrap();
        assert_eq!(b2.owned.len(), 4);
        assert!(b2.generation > b.generation);
        let a2 = c.heartbeat("g", &a.member_id, &[], now()).unwrap();
        assert!(a2.revoked.is_empty());
        assert_eq!(a2.owned.len(), 4);
        assert_disjoint(&c, now());
    }

    /// Broadcasting: every member reads every queue, each under its own offsets.
    #[test]
    fn broadcasting_gives_every_member_every_queue() {
        let clock = SimClock::new(4);
        let now = crate::clock::Clock::now(&clock);
        let mut c = Coordinator::default();
        let a = join(&mut c, "a", GroupMode::Broadcasting, now);
        let b = join(&mut c, "b", GroupMode::Broadcasting, now);
        assert_eq!(b.owned.len(), 8);
        let a2 = c.heartbeat("g", &a.member_id, &[], now).unwrap();
        assert_eq!(a2.owned.len(), 8);
        let q3 = GroupQueue {
            topic: "t".into(),
            queue: 3,
        };
        assert_eq!(
            c.fence("g", &a.member_id, a2.generation, &q3).unwrap(),
            "g..a"
        );
        assert_eq!(
            c.fence("g", &b.member_id, b.generation, &q3).unwrap(),
            "g..b"
        );
        // Clustering members cannot join a broadcasting group.
        let refused = c.join(
            Join {
                group: "g",
                client_id: "c",
                host: "h",
                settings: settings(GroupMode::Clustering),
                session_timeout_ms: 0,
                queues: queues(8),
            },
            now,
        );
        assert!(matches!(refused, Err(MembershipError::Refused(_))));
    }

    /// A clean leave frees the leaver's queues for the others at once; the last leave
    /// forgets the group.
    #[test]
    fn a_leave_hands_over_at_once_and_the_last_forgets_the_group() {
        let clock = SimClock::new(5);
        let now = crate::clock::Clock::now(&clock);
        let mut c = Coordinator::default();
        let a = join(&mut c, "a", GroupMode::Clustering, now);
        let b = join(&mut c, "b", GroupMode::Clustering, now);
        c.leave("g", &a.member_id, now).unwrap();
        let b2 = c.heartbeat("g", &b.member_id, &[], now).unwrap();
        assert_eq!(b2.owned.len(), 8);
        c.leave("g", &b.member_id, now).unwrap();
        assert!(c.membership("g", now).members.is_empty());
        assert_eq!(c.membership("g", now).generation, 0);
    }

    #[test]
    fn the_coordinator_shard_is_stable_and_in_range() {
        for shards in 1..8 {
            assert!(coordinator_shard("billing", shards) < shards);
        }
        assert_eq!(
            coordinator_shard("billing", 4),
            coordinator_shard("billing", 4)
        );
    }
}
