//! Kafka consumer groups, the classic protocol: the coordinator state of the groups this shard
//! coordinates (generation, members, chosen protocol, leader, assignments, sessions).
//!
//! Each group lives on one shard, [`coordinator_shard`] (a hash of the group id); a Kafka
//! connection on any shard sends its JoinGroup, SyncGroup, Heartbeat, LeaveGroup and its
//! OffsetCommit check there through the mesh (`ShardRequest::KafkaGroup`), and the answer comes
//! back on a oneshot. The assignor (range, roundrobin, sticky) runs in the client: the broker
//! picks the protocol every member offers, hands every member's metadata to the leader, and
//! relays the leader's assignment in SyncGroup. Offsets are not kept here: they go to ringmq's
//! group offsets (`shard::groups`) through the native commit, once [`Groups::commit_check`]
//! accepts the member and its generation.
//!
//! State per group, as Kafka's coordinator: `Empty` (no members; such a group is dropped, its
//! offsets stay), `PreparingRebalance` (a join, a leave or a session that ended opened a round:
//! every member must join again, within the longest rebalance timeout of the members, and
//! their JoinGroup answers wait for the round to close), `CompletingRebalance` (the round
//! closed: the generation moved on, the members wait for the leader's SyncGroup) and `Stable`.
//!
//! Sessions and rounds end by time, with no polling: after every change the earliest deadline
//! of the shard's groups is armed as one timer task ([`Coordinator::arm`]); a timer that finds
//! its deadline moved (heartbeats push sessions on) arms the next one. The transitions are
//! pure: each takes the time it happens at, so the tests drive them with made-up instants.
//! Membership is in memory only: after a restart members get UNKNOWN_MEMBER_ID and join again
//! (their offsets are on disk). No static membership: the JoinGroup cap (v4) has no
//! `group.instance.id`.

use crate::constants::{
    KAFKA_GROUPS_PER_SHARD_MAX, KAFKA_GROUP_BYTES_MAX, KAFKA_GROUP_BYTES_PER_SHARD_MAX,
    KAFKA_GROUP_ENTRY_OVERHEAD_BYTES, KAFKA_MEMBERS_PER_GROUP_MAX, KAFKA_MEMBER_ID_CLIENT_ID_MAX,
    KAFKA_MEMBER_METADATA_BYTES_MAX, KAFKA_MEMBER_PROTOCOLS_MAX, KAFKA_REBALANCE_TIMEOUT_MS_MAX,
    KAFKA_SESSION_TIMEOUT_MS_MAX, KAFKA_SESSION_TIMEOUT_MS_MIN,
};
use bytes::Bytes;
use futures_channel::oneshot;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};
use tracing::warn;

/// Kafka error codes of the group APIs.
pub mod code {
    pub const NONE: i16 = 0;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const INVALID_REQUEST: i16 = 42;
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
}

/// The shard that coordinates Kafka group `group_id`: the native groups' coordinator shard of
/// the same name ([`crate::shard::coordinator::coordinator_shard`]), so one shard sees both
/// kinds of member of a name and refuses to mix them (a Kafka group and a native group of one
/// name would both hand out the queues and overwrite each other's offsets).
pub fn coordinator_shard(group_id: &str, shard_count: usize) -> usize {
    crate::shard::coordinator::coordinator_shard(group_id, shard_count)
}

/// What one entry (a member, one of its protocols, one assignment) costs beyond its bytes, in
/// the byte accounting: an entry with an empty name and no metadata is not free.
const ENTRY: usize = KAFKA_GROUP_ENTRY_OVERHEAD_BYTES;

/// The protocols as the coordinator keeps them: copies, not slices of the request's frame
/// (a slice would pin the whole frame while the accounting counts only the slice).
fn owned(protocols: &[(String, Bytes)]) -> Vec<(String, Bytes)> {
    protocols
        .iter()
        .map(|(n, m)| (n.clone(), Bytes::copy_from_slice(m)))
        .collect()
}

/// Bytes a member's protocol list is accounted at.
fn protocols_bytes(protocols: &[(String, Bytes)]) -> usize {
    protocols
        .iter()
        .map(|(n, m)| ENTRY + n.len() + m.len())
        .sum()
}

/// The client id as a member id starts with: at most [`KAFKA_MEMBER_ID_CLIENT_ID_MAX`] bytes
/// (cut on a character boundary), so ids stay short whatever client id a client sends.
fn member_id_prefix(client_id: &str) -> &str {
    let mut end = client_id.len().min(KAFKA_MEMBER_ID_CLIENT_ID_MAX);
    while !client_id.is_char_boundary(end) {
        end -= 1;
    }
    &client_id[..end]
}

/// The longest a new member's id may be (prefix, `-`, 16 hex digits, `-`, a u64).
fn new_member_id_bytes(client_id: &str) -> usize {
    member_id_prefix(client_id).len() + 2 + 16 + 20
}

/// A JoinGroup, as the coordinator needs it.
#[derive(Debug, Clone)]
pub struct Join {
    pub group_id: String,
    /// Empty for a new member.
    pub member_id: String,
    pub client_id: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    /// `(assignor name, subscription metadata)`, in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
}

/// A JoinGroup's answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Joined {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: String,
    pub protocol_name: String,
    pub leader: String,
    pub member_id: String,
    /// Every member's metadata for the chosen protocol: for the leader only.
    pub members: Vec<(String, Bytes)>,
}

impl Joined {
    pub fn error(error: i16, member_id: &str) -> Joined {
        Joined {
            error,
            generation: -1,
            member_id: member_id.to_string(),
            ..Joined::default()
        }
    }
}

/// A SyncGroup's answer: an error, or the member's assignment (empty bytes with an error).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Synced {
    pub error: i16,
    pub protocol_type: String,
    pub protocol_name: String,
    pub assignment: Bytes,
}

impl Synced {
    fn error(error: i16) -> Synced {
        Synced {
            error,
            ..Synced::default()
        }
    }
}

/// A group request another shard sends to the coordinator over the mesh.
#[derive(Debug)]
pub enum Request {
    Join(Join),
    Sync {
        group_id: String,
        generation: i32,
        member_id: String,
        /// Only the leader's carries assignments: `(member id, assignment)`.
        assignments: Vec<(String, Bytes)>,
    },
    Heartbeat {
        group_id: String,
        generation: i32,
        member_id: String,
    },
    Leave {
        group_id: String,
        member_id: String,
    },
    /// May this member, at this generation, commit offsets for the group?
    CommitCheck {
        group_id: String,
        generation: i32,
        member_id: String,
    },
}

impl Request {
    pub fn group_id(&self) -> &str {
        match self {
            Request::Join(join) => &join.group_id,
            Request::Sync { group_id, .. }
            | Request::Heartbeat { group_id, .. }
            | Request::Leave { group_id, .. }
            | Request::CommitCheck { group_id, .. } => group_id,
        }
    }

    /// The answer that refuses this request with `error`.
    pub fn refused(&self, error: i16) -> Response {
        match self {
            Request::Join(join) => Response::Joined(Joined::error(error, &join.member_id)),
            Request::Sync { .. } => Response::Synced(Synced::error(error)),
            _ => Response::Code(error),
        }
    }
}

#[derive(Debug)]
pub enum Response {
    Joined(Joined),
    Synced(Synced),
    /// Heartbeat, LeaveGroup and the commit check: an error code (0 for none).
    Code(i16),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    PreparingRebalance { deadline: Instant },
    CompletingRebalance,
    Stable,
}

struct Member {
    /// Joins get increasing numbers: the longest-standing member leads when the leader left.
    joined_order: u64,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    /// When its session ends unless it heartbeats (not checked while its join waits: the
    /// round's deadline covers it then).
    session_deadline: Instant,
    /// Its JoinGroup, waiting for the round to close.
    waiting_join: Option<oneshot::Sender<Joined>>,
    /// Its SyncGroup, waiting for the leader's.
    waiting_sync: Option<oneshot::Sender<Synced>>,
}

impl Member {
    /// What the coordinator holds for the member with id `id`: the id (repeated in the
    /// leader's JoinGroup answer), its protocols and its assignment, each entry with its
    /// overhead.
    fn bytes(&self, id: &str) -> usize {
        ENTRY + id.len() + protocols_bytes(&self.protocols) + self.assignment.len()
    }
}

struct Group {
    state: State,
    generation: i32,
    protocol_type: String,
    protocol_name: String,
    leader: String,
    members: BTreeMap<String, Member>,
}

impl Group {
    fn bytes(&self) -> usize {
        self.members.iter().map(|(id, m)| m.bytes(id)).sum()
    }

    /// The assignors every member offers (any, for the first member), in the protocol order
    /// of the member whose id sorts first. Linear in the protocols of all members: a join
    /// names at most [`KAFKA_MEMBER_PROTOCOLS_MAX`], each once.
    fn common_protocols(&self) -> Option<Vec<&str>> {
        let mut members = self.members.values();
        let first = members.next()?;
        let mut common: HashSet<&str> = first.protocols.iter().map(|(n, _)| n.as_str()).collect();
        for member in members {
            let offered: HashSet<&str> = member.protocols.iter().map(|(n, _)| n.as_str()).collect();
            common.retain(|name| offered.contains(name));
        }
        Some(
            first
                .protocols
                .iter()
                .map(|(n, _)| n.as_str())
                .filter(|n| common.contains(n))
                .collect(),
        )
    }

    /// Kafka's vote: each member names its most preferred assignor among those all offer; the
    /// most named wins (ties: the one first in the protocol order of the member whose id
    /// sorts first, the order [`Group::common_protocols`] lists them in).
    fn choose_protocol(&self) -> Option<String> {
        let common = self.common_protocols()?;
        let candidates: HashSet<&str> = common.iter().copied().collect();
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for member in self.members.values() {
            if let Some((name, _)) = member
                .protocols
                .iter()
                .find(|(n, _)| candidates.contains(n.as_str()))
            {
                *votes.entry(name.as_str()).or_default() += 1;
            }
        }
        let most = votes.values().copied().max()?;
        common
            .into_iter()
            .find(|n| votes.get(n) == Some(&most))
            .map(str::to_string)
    }

    fn earliest_deadline(&self) -> Option<Instant> {
        let sessions = self
            .members
            .values()
            .filter(|m| m.waiting_join.is_none())
            .map(|m| m.session_deadline);
        let round = match self.state {
            State::PreparingRebalance { deadline } => Some(deadline),
            _ => None,
        };
        sessions.chain(round).min()
    }
}

/// The Kafka groups one shard coordinates.
pub struct Groups {
    groups: HashMap<String, Group>,
    /// Bytes of metadata and assignments over all groups (kept by [`Groups::account`]).
    bytes: usize,
    next_member: u64,
    /// Part of every member id: ids of an earlier boot are not valid again.
    boot_nonce: u64,
}

impl Groups {
    pub fn new(boot_nonce: u64) -> Groups {
        Groups {
            groups: HashMap::new(),
            bytes: 0,
            next_member: 0,
            boot_nonce,
        }
    }

    /// Runs `change` on a group and keeps the byte total right; drops the group once it has
    /// no members (its offsets are kept elsewhere).
    fn account<T>(&mut self, group_id: &str, change: impl FnOnce(&mut Group) -> T) -> Option<T> {
        let group = self.groups.get_mut(group_id)?;
        let before = group.bytes();
        let result = change(group);
        let after = group.bytes();
        self.bytes = self.bytes + after - before;
        if group.members.is_empty() {
            self.groups.remove(group_id);
        }
        Some(result)
    }

    pub fn join(&mut self, join: Join, now: Instant, reply: oneshot::Sender<Joined>) {
        if let Err(error) = self.check_join(&join) {
            let _ = reply.send(Joined::error(error, &join.member_id));
            return;
        }
        let session_timeout = Duration::from_millis(join.session_timeout_ms as u64);
        // Version 0 has no rebalance timeout: the session's stands for it.
        let rebalance_timeout = Duration::from_millis(
            join.rebalance_timeout_ms
                .clamp(join.session_timeout_ms, KAFKA_REBALANCE_TIMEOUT_MS_MAX) as u64,
        );
        self.groups
            .entry(join.group_id.clone())
            .or_insert_with(|| Group {
                state: State::Stable,
                generation: 0,
                protocol_type: join.protocol_type.clone(),
                protocol_name: String::new(),
                leader: String::new(),
                members: BTreeMap::new(),
            });
        let member_id = if join.member_id.is_empty() {
            self.next_member += 1;
            format!(
                "{}-{:x}-{}",
                member_id_prefix(&join.client_id),
                self.boot_nonce,
                self.next_member
            )
        } else {
            join.member_id.clone()
        };
        let joined_order = self.next_member;
        let group_id = join.group_id.clone();
        self.account(&group_id, |group| {
            group.protocol_type = join.protocol_type.clone();
            // A known member of a settled group that offers what it offered and does not lead
            // gets the current generation again, as in Kafka: nothing changed.
            if let Some(member) = group.members.get_mut(&member_id) {
                let unchanged = member.protocols == join.protocols && group.leader != member_id;
                if unchanged && group.state == State::Stable {
                    member.session_deadline = now + member.session_timeout;
                    let _ = reply.send(answer_for(group, &member_id));
                    return;
                }
                member.session_timeout = session_timeout;
                member.rebalance_timeout = rebalance_timeout;
                member.protocols = owned(&join.protocols);
                if let Some(replaced) = member.waiting_join.replace(reply) {
                    let _ = replaced.send(Joined::error(code::REBALANCE_IN_PROGRESS, &member_id));
                }
            } else {
                group.members.insert(
                    member_id.clone(),
                    Member {
                        joined_order,
                        session_timeout,
                        rebalance_timeout,
                        protocols: owned(&join.protocols),
                        assignment: Bytes::new(),
                        session_deadline: now + session_timeout,
                        waiting_join: Some(reply),
                        waiting_sync: None,
                    },
                );
            }
            prepare_rebalance(group, now);
            try_complete_join(group, now, false);
        });
    }

    /// The checks a join passes before it changes anything.
    fn check_join(&self, join: &Join) -> Result<(), i16> {
        if join.group_id.is_empty() {
            return Err(code::INVALID_GROUP_ID);
        }
        if !(KAFKA_SESSION_TIMEOUT_MS_MIN..=KAFKA_SESSION_TIMEOUT_MS_MAX)
            .contains(&join.session_timeout_ms)
        {
            return Err(code::INVALID_SESSION_TIMEOUT);
        }
        if join.protocol_type.is_empty()
            || join.protocols.is_empty()
            || join.protocols.iter().any(|(name, _)| name.is_empty())
        {
            return Err(code::INCONSISTENT_GROUP_PROTOCOL);
        }
        if join.protocols.len() > KAFKA_MEMBER_PROTOCOLS_MAX {
            warn!(
                group = %join.group_id,
                "a Kafka join offering {} protocols (at most {KAFKA_MEMBER_PROTOCOLS_MAX}); refused",
                join.protocols.len()
            );
            return Err(code::INVALID_REQUEST);
        }
        let mut names = HashSet::with_capacity(join.protocols.len());
        if !join.protocols.iter().all(|(name, _)| names.insert(name)) {
            return Err(code::INVALID_REQUEST);
        }
        let metadata_bytes = protocols_bytes(&join.protocols);
        if metadata_bytes > KAFKA_MEMBER_METADATA_BYTES_MAX {
            warn!(
                group = %join.group_id,
                "a Kafka join with {metadata_bytes} bytes of protocol metadata \
                 (at most {KAFKA_MEMBER_METADATA_BYTES_MAX}); refused"
            );
            return Err(code::INVALID_REQUEST);
        }
        let Some(group) = self.groups.get(&join.group_id) else {
            if !join.member_id.is_empty() {
                return Err(code::UNKNOWN_MEMBER_ID);
            }
            let member_bytes = ENTRY + new_member_id_bytes(&join.client_id) + metadata_bytes;
            if self.groups.len() >= KAFKA_GROUPS_PER_SHARD_MAX
                || self.bytes + member_bytes > KAFKA_GROUP_BYTES_PER_SHARD_MAX
            {
                warn!(
                    group = %join.group_id,
                    "this shard coordinates {} Kafka groups holding {} bytes (at most \
                     {KAFKA_GROUPS_PER_SHARD_MAX} and {KAFKA_GROUP_BYTES_PER_SHARD_MAX}); \
                     a new group's join is refused",
                    self.groups.len(),
                    self.bytes
                );
                return Err(code::COORDINATOR_NOT_AVAILABLE);
            }
            return Ok(());
        };
        let known = group.members.get(&join.member_id);
        if !join.member_id.is_empty() && known.is_none() {
            return Err(code::UNKNOWN_MEMBER_ID);
        }
        if known.is_none() && group.members.len() >= KAFKA_MEMBERS_PER_GROUP_MAX {
            return Err(code::GROUP_MAX_SIZE_REACHED);
        }
        if group.protocol_type != join.protocol_type {
            return Err(code::INCONSISTENT_GROUP_PROTOCOL);
        }
        let others_offer = group
            .common_protocols()
            .unwrap_or_default()
            .into_iter()
            .any(|name| join.protocols.iter().any(|(n, _)| n == name));
        let alone = known.is_some() && group.members.len() == 1;
        if !others_offer && !alone {
            return Err(code::INCONSISTENT_GROUP_PROTOCOL);
        }
        let (old_bytes, new_bytes) = match known {
            Some(member) => (
                member.bytes(&join.member_id),
                ENTRY + join.member_id.len() + metadata_bytes + member.assignment.len(),
            ),
            None => (
                0,
                ENTRY + new_member_id_bytes(&join.client_id) + metadata_bytes,
            ),
        };
        let group_bytes = group.bytes() - old_bytes + new_bytes;
        if group_bytes > KAFKA_GROUP_BYTES_MAX {
            warn!(
                group = %join.group_id,
                "a Kafka group would hold {group_bytes} bytes of metadata (at most \
                 {KAFKA_GROUP_BYTES_MAX}); the join is refused"
            );
            return Err(code::INVALID_REQUEST);
        }
        if self.bytes - old_bytes + new_bytes > KAFKA_GROUP_BYTES_PER_SHARD_MAX {
            return Err(code::COORDINATOR_NOT_AVAILABLE);
        }
        Ok(())
    }

    pub fn sync(
        &mut self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
        reply: oneshot::Sender<Synced>,
    ) {
        if !self.groups.contains_key(group_id) {
            let _ = reply.send(Synced::error(code::UNKNOWN_MEMBER_ID));
            return;
        }
        if assignments.len() > KAFKA_MEMBERS_PER_GROUP_MAX {
            let _ = reply.send(Synced::error(code::INVALID_REQUEST));
            return;
        }
        let shard_bytes = self.bytes;
        self.account(group_id, |group| {
            let error = member_error(group, member_id, generation);
            if error != code::NONE {
                let _ = reply.send(Synced::error(error));
                return;
            }
            let member = group.members.get_mut(member_id).expect("checked above");
            member.session_deadline = now + member.session_timeout;
            match group.state {
                State::PreparingRebalance { .. } => {
                    let _ = reply.send(Synced::error(code::REBALANCE_IN_PROGRESS));
                }
                State::Stable => {
                    let _ = reply.send(synced(group, member_id));
                }
                State::CompletingRebalance => {
                    // Its connection waits for the leader's sync and cannot heartbeat: the
                    // wait is bounded by the rebalance timeout, not the (shorter) session.
                    member.session_deadline =
                        now + member.session_timeout.max(member.rebalance_timeout);
                    if let Some(replaced) = member.waiting_sync.replace(reply) {
                        let _ = replaced.send(Synced::error(code::REBALANCE_IN_PROGRESS));
                    }
                    if group.leader == member_id {
                        complete_sync(group, group_id, assignments, shard_bytes, now);
                    }
                }
            }
        });
    }

    pub fn heartbeat(
        &mut self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        now: Instant,
    ) -> i16 {
        self.account(group_id, |group| {
            let error = member_error(group, member_id, generation);
            if error != code::NONE {
                return error;
            }
            let member = group.members.get_mut(member_id).expect("checked above");
            member.session_deadline = now + member.session_timeout;
            match group.state {
                State::PreparingRebalance { .. } => code::REBALANCE_IN_PROGRESS,
                State::CompletingRebalance | State::Stable => code::NONE,
            }
        })
        .unwrap_or(code::UNKNOWN_MEMBER_ID)
    }

    pub fn leave(&mut self, group_id: &str, member_id: &str, now: Instant) -> i16 {
        self.account(group_id, |group| {
            if remove_member(group, member_id, now) {
                code::NONE
            } else {
                code::UNKNOWN_MEMBER_ID
            }
        })
        .unwrap_or(code::UNKNOWN_MEMBER_ID)
    }

    /// Kafka's rules for an offset commit: a commit with no member and generation -1 is a
    /// standalone consumer's, allowed while the group has no members; otherwise the member
    /// must be in the group at its generation, and not between a round's close and its sync.
    pub fn commit_check(
        &mut self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        now: Instant,
    ) -> i16 {
        let Some(group) = self.groups.get_mut(group_id) else {
            return if generation < 0 && member_id.is_empty() {
                code::NONE
            } else {
                code::UNKNOWN_MEMBER_ID
            };
        };
        if group.state == State::CompletingRebalance {
            return code::REBALANCE_IN_PROGRESS;
        }
        let error = member_error(group, member_id, generation);
        if error == code::NONE {
            let member = group.members.get_mut(member_id).expect("checked above");
            member.session_deadline = now + member.session_timeout;
        }
        error
    }

    /// Ends the sessions and rounds whose deadlines passed by `now`.
    pub fn expire(&mut self, now: Instant) {
        let ids: Vec<String> = self
            .groups
            .iter()
            .filter(|(_, g)| g.earliest_deadline().is_some_and(|d| d <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.account(&id, |group| {
                let ended: Vec<String> = group
                    .members
                    .iter()
                    .filter(|(_, m)| m.waiting_join.is_none() && m.session_deadline <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                for member_id in ended {
                    remove_member(group, &member_id, now);
                }
                if let State::PreparingRebalance { deadline } = group.state {
                    if deadline <= now {
                        try_complete_join(group, now, true);
                    }
                }
            });
        }
    }

    pub fn earliest_deadline(&self) -> Option<Instant> {
        self.groups
            .values()
            .filter_map(Group::earliest_deadline)
            .min()
    }

    /// The earliest deadline of one group (linear in its members, not in the shard's).
    pub fn group_deadline(&self, group_id: &str) -> Option<Instant> {
        self.groups.get(group_id)?.earliest_deadline()
    }

    /// Whether Kafka group `group_id` has members (a native join of that name is refused).
    pub fn has_members(&self, group_id: &str) -> bool {
        self.groups.contains_key(group_id)
    }

    /// Drops every group, answering each waiting JoinGroup and SyncGroup with `error`: on a
    /// clean stop (COORDINATOR_NOT_AVAILABLE, the clients find the coordinator again) and when
    /// the broker stops being a master (NOT_COORDINATOR). Offsets stay where they are.
    pub fn abandon(&mut self, error: i16) {
        for (_, group) in self.groups.drain() {
            for (id, mut member) in group.members {
                if let Some(waiting) = member.waiting_join.take() {
                    let _ = waiting.send(Joined::error(error, &id));
                }
                if let Some(waiting) = member.waiting_sync.take() {
                    let _ = waiting.send(Synced::error(error));
                }
            }
        }
        self.bytes = 0;
    }

    #[cfg(test)]
    fn generation(&self, group_id: &str) -> Option<i32> {
        self.groups.get(group_id).map(|g| g.generation)
    }
}

/// The error a member's request gets before its group state is looked at.
fn member_error(group: &Group, member_id: &str, generation: i32) -> i16 {
    if !group.members.contains_key(member_id) {
        code::UNKNOWN_MEMBER_ID
    } else if generation != group.generation {
        code::ILLEGAL_GENERATION
    } else {
        code::NONE
    }
}

fn synced(group: &Group, member_id: &str) -> Synced {
    Synced {
        error: code::NONE,
        protocol_type: group.protocol_type.clone(),
        protocol_name: group.protocol_name.clone(),
        assignment: group
            .members
            .get(member_id)
            .map(|m| m.assignment.clone())
            .unwrap_or_default(),
    }
}

fn answer_syncs(group: &mut Group, answer: impl Fn(&str) -> Synced) {
    for (id, member) in group.members.iter_mut() {
        if let Some(waiting) = member.waiting_sync.take() {
            let _ = waiting.send(answer(id));
        }
    }
}

/// The leader's SyncGroup: its assignments go to every member waiting, and the group is
/// stable; assignments past the byte bounds fail the round instead (every member joins again).
fn complete_sync(
    group: &mut Group,
    group_id: &str,
    assignments: Vec<(String, Bytes)>,
    shard_bytes: usize,
    now: Instant,
) {
    // The previous generation's assignments are replaced, not added to; those for ids that
    // are not members are dropped.
    let previous: usize = group.members.values().map(|m| m.assignment.len()).sum();
    let kept: usize = assignments
        .iter()
        .filter(|(id, _)| group.members.contains_key(id))
        .map(|(_, a)| a.len())
        .sum();
    let group_bytes = group.bytes() - previous + kept;
    if group_bytes > KAFKA_GROUP_BYTES_MAX
        || shard_bytes - previous + kept > KAFKA_GROUP_BYTES_PER_SHARD_MAX
    {
        warn!(
            group = %group_id,
            "a Kafka leader's assignments of {kept} bytes would make its group \
             hold {group_bytes} (at most {KAFKA_GROUP_BYTES_MAX}, and \
             {KAFKA_GROUP_BYTES_PER_SHARD_MAX} for the shard's groups); the round is refused"
        );
        answer_syncs(group, |_| Synced::error(code::INVALID_REQUEST));
        prepare_rebalance(group, now);
        return;
    }
    let mut assignments: HashMap<String, Bytes> = assignments.into_iter().collect();
    for (id, member) in group.members.iter_mut() {
        member.assignment = assignments
            .remove(id)
            .map(|a| Bytes::copy_from_slice(&a))
            .unwrap_or_default();
        // A follower's wait for the leader was bounded by the rebalance timeout: its session
        // runs from its assignment on.
        member.session_deadline = now + member.session_timeout;
    }
    group.state = State::Stable;
    let answers: HashMap<String, Synced> = group
        .members
        .keys()
        .map(|id| (id.clone(), synced(group, id)))
        .collect();
    answer_syncs(group, |id| answers.get(id).cloned().unwrap_or_default());
}

/// The JoinGroup answer of a member at the group's current generation.
fn answer_for(group: &Group, member_id: &str) -> Joined {
    let members = if group.leader == member_id {
        group
            .members
            .iter()
            .map(|(id, m)| {
                let metadata = m
                    .protocols
                    .iter()
                    .find(|(n, _)| *n == group.protocol_name)
                    .map(|(_, md)| md.clone())
                    .unwrap_or_default();
                (id.clone(), metadata)
            })
            .collect()
    } else {
        Vec::new()
    };
    Joined {
        error: code::NONE,
        generation: group.generation,
        protocol_type: group.protocol_type.clone(),
        protocol_name: group.protocol_name.clone(),
        leader: group.leader.clone(),
        member_id: member_id.to_string(),
        members,
    }
}

/// Opens a round (unless one is open): every member must join again by the deadline, the
/// longest rebalance timeout among them; SyncGroups waiting are told to join again.
fn prepare_rebalance(group: &mut Group, now: Instant) {
    if matches!(group.state, State::PreparingRebalance { .. }) {
        return;
    }
    let longest = group
        .members
        .values()
        .map(|m| m.rebalance_timeout)
        .max()
        .unwrap_or_default();
    group.state = State::PreparingRebalance {
        deadline: now + longest,
    };
    answer_syncs(group, |_| Synced::error(code::REBALANCE_IN_PROGRESS));
}

/// Closes the round once every member joined again, or (`deadline_passed`) drops those that
/// did not: the generation moves on, the protocol and the leader are chosen, and every
/// waiting JoinGroup is answered.
fn try_complete_join(group: &mut Group, now: Instant, deadline_passed: bool) {
    if !matches!(group.state, State::PreparingRebalance { .. }) {
        return;
    }
    let all_joined = group.members.values().all(|m| m.waiting_join.is_some());
    if !all_joined && !deadline_passed {
        return;
    }
    group.members.retain(|_, m| m.waiting_join.is_some());
    group.generation += 1;
    if group.members.is_empty() {
        group.state = State::Stable;
        return;
    }
    group.protocol_name = group.choose_protocol().unwrap_or_default();
    if !group.members.contains_key(&group.leader) {
        group.leader = group
            .members
            .iter()
            .min_by_key(|(_, m)| m.joined_order)
            .map(|(id, _)| id.clone())
            .unwrap_or_default();
    }
    group.state = State::CompletingRebalance;
    let ids: Vec<String> = group.members.keys().cloned().collect();
    for id in ids {
        let answer = answer_for(group, &id);
        let member = group.members.get_mut(&id).expect("listed above");
        member.session_deadline = now + member.session_timeout;
        if let Some(waiting) = member.waiting_join.take() {
            let _ = waiting.send(answer);
        }
    }
}

/// A member leaves (LeaveGroup, or its session ended): a new round for the rest.
fn remove_member(group: &mut Group, member_id: &str, now: Instant) -> bool {
    let Some(mut member) = group.members.remove(member_id) else {
        return false;
    };
    if let Some(waiting) = member.waiting_join.take() {
        let _ = waiting.send(Joined::error(code::UNKNOWN_MEMBER_ID, member_id));
    }
    if let Some(waiting) = member.waiting_sync.take() {
        let _ = waiting.send(Synced::error(code::UNKNOWN_MEMBER_ID));
    }
    if group.members.is_empty() {
        group.generation += 1;
        group.state = State::Stable;
        return true;
    }
    prepare_rebalance(group, now);
    try_complete_join(group, now, false);
    true
}

/// A shard's Kafka groups with the timer that ends their sessions and rounds.
pub struct Coordinator {
    groups: Rc<RefCell<Groups>>,
    /// The deadline the newest timer task sleeps until, if one sleeps.
    armed: Rc<Cell<Option<Instant>>>,
}

impl Coordinator {
    pub fn new(boot_nonce: u64) -> Coordinator {
        Coordinator {
            groups: Rc::new(RefCell::new(Groups::new(boot_nonce))),
            armed: Rc::new(Cell::new(None)),
        }
    }

    /// Runs one group request here (the coordinator shard) and waits for its answer: a join
    /// until its round closes, a follower's sync until the leader's.
    pub async fn serve(&self, request: Request) -> Response {
        let now = Instant::now();
        let group_id = request.group_id().to_string();
        let response = match request {
            Request::Join(join) => {
                let member_id = join.member_id.clone();
                let (tx, rx) = oneshot::channel();
                self.groups.borrow_mut().join(join, now, tx);
                self.arm_for(&group_id);
                // A dropped sender: the member was removed while it waited.
                return Response::Joined(
                    rx.await
                        .unwrap_or_else(|_| Joined::error(code::UNKNOWN_MEMBER_ID, &member_id)),
                );
            }
            Request::Sync {
                group_id,
                generation,
                member_id,
                assignments,
            } => {
                let (tx, rx) = oneshot::channel();
                self.groups.borrow_mut().sync(
                    &group_id,
                    generation,
                    &member_id,
                    assignments,
                    now,
                    tx,
                );
                self.arm_for(&group_id);
                return Response::Synced(
                    rx.await
                        .unwrap_or_else(|_| Synced::error(code::REBALANCE_IN_PROGRESS)),
                );
            }
            // A heartbeat and a commit check only push a session's deadline on: the timer
            // armed stays early enough (it finds nothing due and arms the next).
            Request::Heartbeat {
                group_id,
                generation,
                member_id,
            } => {
                return Response::Code(
                    self.groups
                        .borrow_mut()
                        .heartbeat(&group_id, generation, &member_id, now),
                )
            }
            Request::Leave {
                group_id,
                member_id,
            } => Response::Code(self.groups.borrow_mut().leave(&group_id, &member_id, now)),
            Request::CommitCheck {
                group_id,
                generation,
                member_id,
            } => {
                return Response::Code(
                    self.groups
                        .borrow_mut()
                        .commit_check(&group_id, generation, &member_id, now),
                )
            }
        };
        self.arm_for(&group_id);
        response
    }

    /// See [`Groups::abandon`].
    pub fn abandon(&self, error: i16) {
        self.groups.borrow_mut().abandon(error);
    }

    /// Whether Kafka group `group_id` has members.
    pub fn has_members(&self, group_id: &str) -> bool {
        self.groups.borrow().has_members(group_id)
    }

    /// After a change to one group: only its deadlines can have moved earlier, so only its
    /// members are looked at (a request costs its group's size, not the shard's).
    fn arm_for(&self, group_id: &str) {
        let deadline = self.groups.borrow().group_deadline(group_id);
        if let Some(deadline) = deadline {
            self.arm_at(deadline);
        }
    }

    /// Makes sure a timer task wakes by `deadline`: a new task when none sleeps or the one
    /// sleeping wakes later. A task that wakes ends what is due and arms the earliest deadline
    /// of all groups; heartbeats only push deadlines on, so between changes there is at most
    /// one wake per session timeout, never a periodic tick.
    fn arm_at(&self, deadline: Instant) {
        if self.armed.get().is_some_and(|armed| armed <= deadline) {
            return;
        }
        self.armed.set(Some(deadline));
        let groups: Weak<RefCell<Groups>> = Rc::downgrade(&self.groups);
        let armed = Rc::downgrade(&self.armed);
        glommio::spawn_local(async move {
            glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
            let (Some(groups), Some(armed)) = (groups.upgrade(), armed.upgrade()) else {
                return;
            };
            if armed.get() == Some(deadline) {
                armed.set(None);
            }
            groups.borrow_mut().expire(Instant::now());
            let next = groups.borrow().earliest_deadline();
            if let Some(next) = next {
                Coordinator { groups, armed }.arm_at(next);
            }
        })
        .detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(group: &str, member: &str, assignors: &[&str]) -> Join {
        Join {
            group_id: group.to_string(),
            member_id: member.to_string(),
            client_id: "c".to_string(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".to_string(),
            protocols: assignors
                .iter()
                .map(|a| (a.to_string(), Bytes::from(format!("meta-{a}"))))
                .collect(),
        }
    }

    fn joined(rx: &mut oneshot::Receiver<Joined>) -> Option<Joined> {
        rx.try_recv().expect("not cancelled")
    }

    /// Two members: the second's join opens a round the first must join again; the leader's
    /// assignment reaches both; a leave and a session that ends open new rounds.
    #[test]
    fn joins_rounds_syncs_leaves_and_sessions() {
        let t0 = Instant::now();
        let mut groups = Groups::new(7);
        let (tx, mut rx) = oneshot::channel();
        groups.join(join("g", "", &["range", "roundrobin"]), t0, tx);
        let a = joined(&mut rx).expect("a lone member's round closes at once");
        assert_eq!(
            (a.error, a.generation, a.leader.clone()),
            (0, 1, a.member_id.clone())
        );
        assert_eq!(a.protocol_name, "range");
        assert_eq!(a.members.len(), 1);

        let (tx, mut rx_b) = oneshot::channel();
        groups.join(join("g", "", &["roundrobin"]), t0, tx);
        assert_eq!(
            joined(&mut rx_b),
            None,
            "waits for the first member to join again"
        );
        assert_eq!(
            groups.heartbeat("g", 1, &a.member_id, t0),
            code::REBALANCE_IN_PROGRESS
        );
        let (tx, mut rx_a) = oneshot::channel();
        groups.join(join("g", &a.member_id, &["range", "roundrobin"]), t0, tx);
        let a2 = joined(&mut rx_a).expect("round closed");
        let b = joined(&mut rx_b).expect("round closed");
        assert_eq!(a2.generation, 2);
        assert_eq!(a2.protocol_name, "roundrobin", "the one both offer");
        assert_eq!(a2.leader, a.member_id, "the leader stays");
        assert_eq!(a2.members.len(), 2);
        assert!(b.members.is_empty(), "only the leader sees the members");

        let (tx, mut sync_b) = oneshot::channel();
        groups.sync("g", 2, &b.member_id, Vec::new(), t0, tx);
        assert_eq!(sync_b.try_recv().unwrap(), None, "waits for the leader");
        let (tx, mut sync_a) = oneshot::channel();
        let plan = vec![
            (a.member_id.clone(), Bytes::from_static(b"p0")),
            (b.member_id.clone(), Bytes::from_static(b"p1")),
        ];
        groups.sync("g", 2, &a.member_id, plan, t0, tx);
        assert_eq!(sync_a.try_recv().unwrap().unwrap().assignment, "p0");
        assert_eq!(sync_b.try_recv().unwrap().unwrap().assignment, "p1");
        assert_eq!(groups.heartbeat("g", 2, &b.member_id, t0), code::NONE);
        assert_eq!(
            groups.heartbeat("g", 1, &b.member_id, t0),
            code::ILLEGAL_GENERATION
        );
        assert_eq!(groups.commit_check("g", 2, &b.member_id, t0), code::NONE);
        assert_eq!(
            groups.commit_check("g", -1, "", t0),
            code::UNKNOWN_MEMBER_ID
        );

        // b's session ends (a heartbeats): a round opens, a joins again alone.
        let later = t0 + Duration::from_millis(9_000);
        assert_eq!(groups.heartbeat("g", 2, &a.member_id, later), code::NONE);
        assert!(groups.earliest_deadline().unwrap() <= t0 + Duration::from_millis(10_000));
        groups.expire(t0 + Duration::from_millis(10_001));
        assert_eq!(
            groups.heartbeat("g", 2, &a.member_id, later),
            code::REBALANCE_IN_PROGRESS
        );
        assert_eq!(
            groups.heartbeat("g", 2, &b.member_id, later),
            code::UNKNOWN_MEMBER_ID
        );
        let (tx, mut rx_a) = oneshot::channel();
        groups.join(join("g", &a.member_id, &["range", "roundrobin"]), later, tx);
        let a3 = joined(&mut rx_a).unwrap();
        assert_eq!((a3.generation, a3.members.len()), (3, 1));
        assert_eq!(groups.leave("g", &a.member_id, later), code::NONE);
        assert_eq!(groups.generation("g"), None, "an empty group is dropped");
        assert_eq!(groups.commit_check("g", -1, "", later), code::NONE);
    }

    /// A member that heartbeats through a round but does not join again is dropped when the
    /// round's deadline (the rebalance timeout, 30 s) passes, not before.
    #[test]
    fn a_round_closes_at_its_deadline_without_the_silent_member() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut groups = Groups::new(1);
        let (tx, mut rx) = oneshot::channel();
        groups.join(join("g", "", &["range"]), t0, tx);
        let a = joined(&mut rx).unwrap();
        let (tx, mut rx_b) = oneshot::channel();
        groups.join(join("g", "", &["range"]), t0, tx);
        // a stays in session (10 s) by heartbeats but never joins again.
        for ms in [8_000, 16_000, 25_000] {
            assert_eq!(
                groups.heartbeat("g", 1, &a.member_id, at(ms)),
                code::REBALANCE_IN_PROGRESS
            );
        }
        assert_eq!(groups.earliest_deadline(), Some(at(30_000)), "the round's");
        groups.expire(at(29_900));
        assert_eq!(
            joined(&mut rx_b),
            None,
            "nothing closes before the deadline"
        );
        groups.expire(at(30_000));
        let b = joined(&mut rx_b).expect("the round closed at its deadline");
        assert_eq!(
            (b.error, b.generation, b.leader.clone()),
            (0, 2, b.member_id.clone())
        );
        assert_eq!(
            groups.heartbeat("g", 2, &a.member_id, at(30_000)),
            code::UNKNOWN_MEMBER_ID
        );
    }

    /// A follower waiting for the leader's SyncGroup cannot heartbeat: its session does not
    /// end while it waits, the rebalance timeout bounds the wait.
    #[test]
    fn a_follower_waiting_for_the_leaders_sync_keeps_its_session_until_the_rebalance_timeout() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut groups = Groups::new(1);
        let (tx, mut rx) = oneshot::channel();
        groups.join(join("g", "", &["range"]), t0, tx);
        let a = joined(&mut rx).unwrap();
        let (tx, mut rx_b) = oneshot::channel();
        groups.join(join("g", "", &["range"]), t0, tx);
        let (tx, mut rx_a) = oneshot::channel();
        groups.join(join("g", &a.member_id, &["range"]), t0, tx);
        let (_, b) = (joined(&mut rx_a).unwrap(), joined(&mut rx_b).unwrap());
        let (tx, mut sync_b) = oneshot::channel();
        groups.sync("g", 2, &b.member_id, Vec::new(), t0, tx);
        for ms in [8_000, 16_000, 24_000] {
            assert_eq!(groups.heartbeat("g", 2, &a.member_id, at(ms)), code::NONE);
            groups.expire(at(ms + 2_000));
        }
        assert_eq!(
            sync_b.try_recv().unwrap(),
            None,
            "b still waits, in the group"
        );
        groups.expire(at(30_000));
        assert_eq!(
            sync_b.try_recv().unwrap().unwrap().error,
            code::UNKNOWN_MEMBER_ID,
            "the rebalance timeout ends the wait"
        );
    }

    /// Protocol lists are bounded, names unique and not empty; every entry and the member id
    /// count in the byte total; stored metadata does not share the request's buffer.
    #[test]
    fn joins_are_bounded_accounted_and_copied() {
        let t0 = Instant::now();
        let mut groups = Groups::new(1);
        let many: Vec<String> = (0..=KAFKA_MEMBER_PROTOCOLS_MAX)
            .map(|i| format!("p{i}"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let cases = [
            (join("g", "", &many), code::INVALID_REQUEST),
            (join("g", "", &["range", "range"]), code::INVALID_REQUEST),
            (
                join("g", "", &["range", ""]),
                code::INCONSISTENT_GROUP_PROTOCOL,
            ),
        ];
        for (request, error) in cases {
            let (tx, mut rx) = oneshot::channel();
            groups.join(request, t0, tx);
            assert_eq!(joined(&mut rx).unwrap().error, error);
        }
        let frame = Bytes::from(vec![7u8; 1 << 20]);
        let request = Join {
            client_id: "c".repeat(32_767),
            protocols: vec![("range".into(), frame.slice(10..20))],
            ..join("g", "", &[])
        };
        let (tx, mut rx) = oneshot::channel();
        groups.join(request, t0, tx);
        let a = joined(&mut rx).unwrap();
        assert_eq!(a.error, code::NONE);
        assert!(a.member_id.len() <= new_member_id_bytes(&"c".repeat(32_767)));
        assert!(a.member_id.len() < 128, "{} bytes", a.member_id.len());
        assert_eq!(
            groups.bytes,
            2 * ENTRY + a.member_id.len() + "range".len() + 10,
            "the member, its id and its one protocol"
        );
        let stored = &groups.groups["g"].members[&a.member_id].protocols[0].1;
        let frame_range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
        assert!(
            !frame_range.contains(&(stored.as_ptr() as usize)),
            "a copy, not a slice of the frame"
        );
        assert_eq!(groups.leave("g", &a.member_id, t0), code::NONE);
        assert_eq!(groups.bytes, 0);
    }

    #[test]
    fn bad_joins_get_the_kafka_error_that_fits() {
        let t0 = Instant::now();
        let mut groups = Groups::new(1);
        let cases = [
            (
                Join {
                    session_timeout_ms: 10,
                    ..join("g", "", &["range"])
                },
                code::INVALID_SESSION_TIMEOUT,
            ),
            (join("", "", &["range"]), code::INVALID_GROUP_ID),
            (join("g", "", &[]), code::INCONSISTENT_GROUP_PROTOCOL),
            (join("g", "nobody", &["range"]), code::UNKNOWN_MEMBER_ID),
            (
                Join {
                    protocols: vec![(
                        "range".into(),
                        Bytes::from(vec![0; KAFKA_MEMBER_METADATA_BYTES_MAX + 1]),
                    )],
                    ..join("g", "", &[])
                },
                code::INVALID_REQUEST,
            ),
        ];
        for (request, error) in cases {
            let (tx, mut rx) = oneshot::channel();
            groups.join(request, t0, tx);
            assert_eq!(joined(&mut rx).unwrap().error, error);
        }
        let (tx, mut rx) = oneshot::channel();
        groups.join(join("g", "", &["range"]), t0, tx);
        assert_eq!(joined(&mut rx).unwrap().error, code::NONE);
        let (tx, mut rx) = oneshot::channel();
        groups.join(join("g", "", &["sticky"]), t0, tx);
        assert_eq!(
            joined(&mut rx).unwrap().error,
            code::INCONSISTENT_GROUP_PROTOCOL
        );
        for _ in 1..KAFKA_MEMBERS_PER_GROUP_MAX {
            let (tx, _rx) = oneshot::channel();
            groups.join(join("g", "", &["range"]), t0, tx);
        }
        let (tx, mut rx) = oneshot::channel();
        groups.join(join("g", "", &["range"]), t0, tx);
        assert_eq!(joined(&mut rx).unwrap().error, code::GROUP_MAX_SIZE_REACHED);
    }
}
