//! Consensus behind a small trait of our own, and its one implementation on raft-rs.
//!
//! [`Consensus`] is all the controller asks of a Raft library: tick, take a peer's message,
//! propose a command or a membership change, say who leads, and hand back what to send and
//! what was committed ([`Progress`]). The state machine ([`crate::state`]) and the tests do not
//! name raft-rs; replacing it (with openraft, say) is a new implementation of this trait.
//!
//! Why raft-rs (tikv `raft` 0.7, pinned exactly): it is runtime-free (no async, no threads),
//! so one plain thread drives it with no executor to share; it is the Raft of TiKV and etcd's
//! port, with joint consensus and pre-vote; its `protobuf-codec` build needs no system
//! `protoc` (protobuf-build ships one inside its crate). openraft 0.9 needs tokio, and its
//! runtime-free 0.10 is a pre-release whose API still moves.
//!
//! [`Persistence`] is where Raft's state lives: [`crate::store::DiskStore`] in the process,
//! [`MemoryPersistence`] in the simulation. Everything Raft asks to persist is persisted
//! before the messages that depend on it are handed out (raft-rs's "persisted messages").

use crate::store::{compact_memory, ControllerStorage, DiskStore};
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Message, Snapshot,
};
use raft::Storage as _;
use raft::{Config, RawNode, StateRole};
use std::io;

/// One thing Raft committed, in log order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Committed {
    /// A command a controller proposed: `context` is the proposer's tag, `data` the command.
    Command {
        index: u64,
        context: Vec<u8>,
        data: Vec<u8>,
    },
    /// A membership change, already applied to Raft's configuration.
    Membership {
        index: u64,
        change: MembershipChange,
        context: Vec<u8>,
    },
    /// The leader sent a snapshot: the state machine is replaced by `data`.
    Restore { index: u64, data: Vec<u8> },
    /// An entry with nothing to apply (the empty entry each new leader commits): the
    /// applied index moves past it all the same, or a leader would never count as caught up.
    Empty { index: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    Add(u64),
    Remove(u64),
}

/// What one [`Consensus::drive`] produced.
#[derive(Debug, Default)]
pub struct Progress {
    /// (destination controller id, encoded message).
    pub messages: Vec<(u64, Vec<u8>)>,
    pub committed: Vec<Committed>,
    /// Leadership confirmed for a [`Consensus::read_index`] round: (its context, the commit
    /// index a read answered after it must have applied).
    pub reads: Vec<(Vec<u8>, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("{0}")]
    Refused(String),
}

pub trait Consensus {
    fn id(&self) -> u64;
    /// The leader this node knows of, if any.
    fn leader(&self) -> Option<u64>;
    fn is_leader(&self) -> bool {
        self.leader() == Some(self.id())
    }
    /// Advances Raft's logical clock by one tick.
    fn tick(&mut self);
    /// A message from peer `from` (the sender the frame names), as [`Progress::messages`]
    /// encoded it. Refused (an error to log, never a panic) if it does not parse, names
    /// another sender or receiver, or asks what the Raft library would panic on.
    fn step(&mut self, from: u64, message: &[u8]) -> Result<(), String>;
    fn propose(&mut self, context: Vec<u8>, data: Vec<u8>) -> Result<(), ProposeError>;
    fn propose_membership(
        &mut self,
        change: MembershipChange,
        context: Vec<u8>,
    ) -> Result<(), ProposeError>;
    /// The current voters.
    fn voters(&self) -> Vec<u64>;
    /// The index of the last entry known committed.
    fn commit_index(&self) -> u64;
    /// Whether this node leads and has committed an entry of its own term: before that its
    /// commit index may be behind what an earlier leader committed.
    fn committed_own_term(&self) -> bool;
    /// Asks a majority to confirm this node still leads (raft-rs's read index, in its
    /// `Safe` mode: a heartbeat round, no clock assumed). Confirmed, `context` comes back in
    /// [`Progress::reads`]; a lost round never does (the caller times it out).
    fn read_index(&mut self, context: Vec<u8>);
    /// The data of the entries in this node's log past the commit index: proposals that may
    /// still commit (a leader's own, even after their waiters gave up).
    fn uncommitted(&self) -> Vec<Vec<u8>>;
    /// Persists what Raft produced and returns what to send and apply.
    fn drive(&mut self) -> io::Result<Progress>;
    /// Snapshots the state machine (`data`, serialized at `applied_index`) when the log has
    /// grown past `threshold` entries since the last snapshot.
    fn maybe_compact(
        &mut self,
        applied_index: u64,
        threshold: u64,
        data: &dyn Fn() -> Vec<u8>,
    ) -> io::Result<bool>;
}

/// Where Raft's log, hard state and snapshots are kept.
pub trait Persistence {
    fn storage(&self) -> ControllerStorage;
    fn append(&mut self, entries: &[Entry]) -> io::Result<()>;
    fn set_hard_state(&mut self, hard_state: &HardState) -> io::Result<()>;
    fn set_commit(&mut self, commit: u64) -> io::Result<()>;
    fn apply_snapshot(&mut self, snapshot: &Snapshot) -> io::Result<()>;
    fn entries_since_snapshot(&self) -> u64;
    fn compact(
        &mut self,
        applied_index: u64,
        conf_state: &ConfState,
        data: Vec<u8>,
    ) -> io::Result<()>;
}

impl Persistence for DiskStore {
    fn storage(&self) -> ControllerStorage {
        DiskStore::storage(self)
    }
    fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        DiskStore::append(self, entries)
    }
    fn set_hard_state(&mut self, hard_state: &HardState) -> io::Result<()> {
        DiskStore::set_hard_state(self, hard_state)
    }
    fn set_commit(&mut self, commit: u64) -> io::Result<()> {
        DiskStore::set_commit(self, commit)
    }
    fn apply_snapshot(&mut self, snapshot: &Snapshot) -> io::Result<()> {
        DiskStore::apply_snapshot(self, snapshot)
    }
    fn entries_since_snapshot(&self) -> u64 {
        DiskStore::entries_since_snapshot(self)
    }
    fn compact(
        &mut self,
        applied_index: u64,
        conf_state: &ConfState,
        data: Vec<u8>,
    ) -> io::Result<()> {
        DiskStore::compact(self, applied_index, conf_state, data)
    }
}

/// Raft state in memory only: what survives a simulated crash is this value (its storage is
/// shared), which the simulation keeps while it drops the node around it.
#[derive(Clone)]
pub struct MemoryPersistence {
    storage: ControllerStorage,
    since_snapshot: u64,
}

impl MemoryPersistence {
    pub fn new(voters: &[u64]) -> Self {
        MemoryPersistence {
            storage: ControllerStorage::in_memory(voters),
            since_snapshot: 0,
        }
    }
}

fn storage_error(e: raft::Error) -> io::Error {
    io::Error::other(e.to_string())
}

impl Persistence for MemoryPersistence {
    fn storage(&self) -> ControllerStorage {
        self.storage.clone()
    }
    fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        self.since_snapshot += entries.len() as u64;
        self.storage
            .memory
            .wl()
            .append(entries)
            .map_err(storage_error)
    }
    fn set_hard_state(&mut self, hard_state: &HardState) -> io::Result<()> {
        self.storage.memory.wl().set_hardstate(hard_state.clone());
        Ok(())
    }
    fn set_commit(&mut self, commit: u64) -> io::Result<()> {
        self.storage.memory.wl().mut_hard_state().commit = commit;
        Ok(())
    }
    fn apply_snapshot(&mut self, snapshot: &Snapshot) -> io::Result<()> {
        self.since_snapshot = 0;
        self.storage
            .memory
            .wl()
            .apply_snapshot(snapshot.clone())
            .map_err(storage_error)?;
        *self.storage.snapshot.write().expect("snapshot lock") = snapshot.clone();
        Ok(())
    }
    fn entries_since_snapshot(&self) -> u64 {
        self.since_snapshot
    }
    fn compact(
        &mut self,
        applied_index: u64,
        conf_state: &ConfState,
        data: Vec<u8>,
    ) -> io::Result<()> {
        let memory = &self.storage.memory;
        let term = memory.term(applied_index).map_err(storage_error)?;
        let last = memory.last_index().map_err(storage_error)?;
        let kept = if last > applied_index {
            memory
                .entries(
                    applied_index + 1,
                    last + 1,
                    None,
                    raft::GetEntriesContext::empty(false),
                )
                .map_err(storage_error)?
        } else {
            Vec::new()
        };
        let mut snapshot = Snapshot::default();
        snapshot.set_data(data.into());
        snapshot.mut_metadata().index = applied_index;
        snapshot.mut_metadata().term = term;
        snapshot.mut_metadata().set_conf_state(conf_state.clone());
        compact_memory(memory, &self.storage.snapshot, snapshot, &kept)?;
        self.since_snapshot = kept.len() as u64;
        Ok(())
    }
}

/// [`Consensus`] on raft-rs.
pub struct RaftNode<P: Persistence> {
    raw: RawNode<ControllerStorage>,
    persistence: P,
    conf_state: ConfState,
}

/// Ticks of [`RaftNode`]: the caller ticks every [`TICK_MS`]. A follower that hears no
/// leader for 10 ticks (1 s) campaigns; the leader heartbeats every tick. Redpanda's 1.5 s
/// election timeout is the neighbourhood; 1 s keeps a controller failover well inside the
/// broker failover target. The election timeout is randomized in [10, 20) ticks by raft-rs.
pub const TICK_MS: u64 = 100;
pub const ELECTION_TICKS: usize = 10;
pub const HEARTBEAT_TICKS: usize = 1;

impl<P: Persistence> RaftNode<P> {
    /// `applied` is the index the state machine was restored to (its snapshot's).
    pub fn new(
        id: u64,
        persistence: P,
        applied: u64,
        election_ticks: (usize, usize),
    ) -> Result<Self, String> {
        let config = Config {
            id,
            election_tick: election_ticks.0,
            min_election_tick: election_ticks.0,
            max_election_tick: election_ticks.1,
            heartbeat_tick: HEARTBEAT_TICKS,
            applied,
            pre_vote: true,
            check_quorum: true,
            // Reads (heartbeat answers, group state) are confirmed by a heartbeat round, not
            // by a leader lease that a paused or partitioned leader could outlive.
            read_only_option: raft::ReadOnlyOption::Safe,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        config.validate().map_err(|e| e.to_string())?;
        let storage = persistence.storage();
        let conf_state = raft::Storage::initial_state(&storage)
            .map_err(|e| e.to_string())?
            .conf_state;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&config, storage, &logger).map_err(|e| e.to_string())?;
        Ok(RaftNode {
            raw,
            persistence,
            conf_state,
        })
    }

    pub fn persistence(&self) -> &P {
        &self.persistence
    }

    fn not_leader(&self) -> ProposeError {
        ProposeError::NotLeader {
            leader: self.leader(),
        }
    }

    fn collect(&mut self, entries: Vec<Entry>, out: &mut Vec<Committed>) {
        for entry in entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal => {
                    if entry.data.is_empty() {
                        out.push(Committed::Empty { index: entry.index });
                        continue;
                    }
                    out.push(Committed::Command {
                        index: entry.index,
                        context: entry.context.to_vec(),
                        data: entry.data.to_vec(),
                    });
                }
                EntryType::EntryConfChange => {
                    let Ok(cc) = ConfChange::parse_from_bytes(&entry.data) else {
                        out.push(Committed::Empty { index: entry.index });
                        continue;
                    };
                    if let Ok(cs) = self.raw.apply_conf_change(&cc) {
                        self.conf_state = cs;
                    }
                    let change = match cc.get_change_type() {
                        ConfChangeType::RemoveNode => MembershipChange::Remove(cc.node_id),
                        _ => MembershipChange::Add(cc.node_id),
                    };
                    out.push(Committed::Membership {
                        index: entry.index,
                        change,
                        context: cc.context.to_vec(),
                    });
                }
                // Never proposed here (membership changes are one node at a time).
                EntryType::EntryConfChangeV2 => out.push(Committed::Empty { index: entry.index }),
            }
        }
    }
}

/// Encodes `messages` for sending. A snapshot is reported sent at once: raft-rs pauses a
/// follower that is being sent a snapshot until told how it went, and a snapshot lost on the
/// way would pause it for good. Reported as finished, the leader probes the follower next;
/// if the snapshot never arrived the probe is rejected and a snapshot is sent again.
fn encode_messages<S: raft::Storage>(
    raw: &mut RawNode<S>,
    messages: Vec<Message>,
    out: &mut Vec<(u64, Vec<u8>)>,
) {
    for m in messages {
        if let Ok(bytes) = m.write_to_bytes() {
            out.push((m.to, bytes));
        }
        if m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
            raw.report_snapshot(m.to, raft::SnapshotStatus::Finish);
        }
    }
}

/// What a peer's message must hold before raft-rs sees it. Peers are not authenticated yet
/// (issue 13), so these checks keep a forged or garbled message from *crashing* a
/// controller, not from misleading it: the sender it claims is the frame's, the receiver is
/// us, and a heartbeat's commit is within our log (raft-rs's `commit_to` panics past its
/// end; a real leader never sends more than the follower's match index). An append's commit
/// is safe: raft-rs bounds it by the entries it carries.
fn check_peer_message(m: &Message, from: u64, us: u64, last_index: u64) -> Result<(), String> {
    use raft::eraftpb::MessageType;
    if m.from != from || from == raft::INVALID_ID || from == us {
        return Err(format!(
            "the message says it is from {} inside a frame from {from}",
            m.from
        ));
    }
    if m.to != us {
        return Err(format!("the message is for controller {}, not {us}", m.to));
    }
    if m.get_msg_type() == MessageType::MsgHeartbeat && m.commit > last_index {
        return Err(format!(
            "a heartbeat commits up to {} but our log ends at {last_index}",
            m.commit
        ));
    }
    Ok(())
}

impl<P: Persistence> Consensus for RaftNode<P> {
    fn id(&self) -> u64 {
        self.raw.raft.id
    }
    fn leader(&self) -> Option<u64> {
        let leader = self.raw.raft.leader_id;
        (leader != raft::INVALID_ID).then_some(leader)
    }
    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }
    fn tick(&mut self) {
        self.raw.tick();
    }
    fn step(&mut self, from: u64, message: &[u8]) -> Result<(), String> {
        let m = Message::parse_from_bytes(message).map_err(|e| e.to_string())?;
        check_peer_message(&m, from, self.id(), self.raw.raft.raft_log.last_index())?;
        self.raw.step(m).map_err(|e| e.to_string())
    }
    fn propose(&mut self, context: Vec<u8>, data: Vec<u8>) -> Result<(), ProposeError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        self.raw
            .propose(context, data)
            .map_err(|e| ProposeError::Refused(e.to_string()))
    }
    fn propose_membership(
        &mut self,
        change: MembershipChange,
        context: Vec<u8>,
    ) -> Result<(), ProposeError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let mut cc = ConfChange::default();
        match change {
            MembershipChange::Add(id) => {
                cc.set_change_type(ConfChangeType::AddNode);
                cc.node_id = id;
            }
            MembershipChange::Remove(id) => {
                cc.set_change_type(ConfChangeType::RemoveNode);
                cc.node_id = id;
            }
        }
        cc.set_context(context.into());
        self.raw
            .propose_conf_change(Vec::new(), cc)
            .map_err(|e| ProposeError::Refused(e.to_string()))
    }
    fn voters(&self) -> Vec<u64> {
        self.conf_state.voters.clone()
    }
    fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }
    fn committed_own_term(&self) -> bool {
        self.is_leader() && self.raw.raft.commit_to_current_term()
    }
    fn read_index(&mut self, context: Vec<u8>) {
        self.raw.read_index(context);
    }
    fn uncommitted(&self) -> Vec<Vec<u8>> {
        let log = &self.raw.raft.raft_log;
        let (low, high) = (log.committed + 1, log.last_index() + 1);
        if low >= high {
            return Vec::new();
        }
        log.slice(low, high, None, raft::GetEntriesContext::empty(false))
            .map(|entries| entries.into_iter().map(|e| e.data.to_vec()).collect())
            .unwrap_or_default()
    }
    fn drive(&mut self) -> io::Result<Progress> {
        let mut progress = Progress::default();
        if !self.raw.has_ready() {
            return Ok(progress);
        }
        let mut ready = self.raw.ready();
        encode_messages(&mut self.raw, ready.take_messages(), &mut progress.messages);
        progress.reads = ready
            .take_read_states()
            .into_iter()
            .map(|r| (r.request_ctx, r.index))
            .collect();
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            self.persistence.apply_snapshot(&snapshot)?;
            self.conf_state = snapshot.get_metadata().get_conf_state().clone();
            progress.committed.push(Committed::Restore {
                index: snapshot.get_metadata().index,
                data: snapshot.get_data().to_vec(),
            });
        }
        let committed = ready.take_committed_entries();
        self.collect(committed, &mut progress.committed);
        self.persistence.append(ready.entries())?;
        if let Some(hard_state) = ready.hs() {
            self.persistence.set_hard_state(hard_state)?;
        }
        encode_messages(
            &mut self.raw,
            ready.take_persisted_messages(),
            &mut progress.messages,
        );
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.persistence.set_commit(commit)?;
        }
        encode_messages(&mut self.raw, light.take_messages(), &mut progress.messages);
        let committed = light.take_committed_entries();
        self.collect(committed, &mut progress.committed);
        self.raw.advance_apply();
        Ok(progress)
    }
    fn maybe_compact(
        &mut self,
        applied_index: u64,
        threshold: u64,
        data: &dyn Fn() -> Vec<u8>,
    ) -> io::Result<bool> {
        if self.persistence.entries_since_snapshot() < threshold || applied_index == 0 {
            return Ok(false);
        }
        // Nothing applied since the last snapshot (the tail past it is not applied yet).
        let first_index = raft::Storage::first_index(&self.persistence.storage())
            .map_err(|e| io::Error::other(e.to_string()))?;
        if applied_index < first_index {
            return Ok(false);
        }
        let conf_state = self.conf_state.clone();
        self.persistence
            .compact(applied_index, &conf_state, data())?;
        Ok(true)
    }
}
