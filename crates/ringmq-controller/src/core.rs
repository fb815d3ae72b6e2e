//! One controller, without I/O: requests in, Raft messages and replies out.
//!
//! [`Controller`] joins a [`Consensus`] to the state machine. The process ([`crate::server`])
//! and the simulation (`tests` below and `crate::sim`) both drive it the same way: `handle` a
//! request (answered at once, or when its command commits), `step` a peer's message, `tick`
//! every [`crate::node::TICK_MS`], and `drive` after each of those to get what to send and
//! which pending requests are now answered. The caller passes the time (a monotonic clock in
//! ms), so a test decides what time it is.
//!
//! A request waits for its command as a *waiter* (`W`: the process's reply channel, a test's
//! number). A command is tagged with this controller's id, an incarnation drawn at random
//! when it starts, and a sequence number in its entry's context; when an entry with our tag
//! and the very command the waiter proposed is applied, the waiter gets the result (the
//! sequence starts again at each start, so without the incarnation an entry proposed before
//! a restart could answer a new waiter with another command's result). A
//! proposal that a leader change dropped never commits: its waiter is answered `NO_QUORUM`
//! after [`PROPOSAL_TIMEOUT_MS`], and the broker asks again (every controller request is
//! idempotent or fenced).

use crate::node::{Committed, Consensus, MembershipChange, ProposeError};
use crate::state::{
    assigned_role, decide_election, decide_handover, Applied, BrokerAddress, BrokerReport, Command,
    ControllerState, ElectionConfig, GroupRecord, HandoverRefused, Liveness, Refusal, Role,
    SlaveLinks,
};
use crate::status::sync_state_reason;
use crate::timeline::Switches;
use ringmq_protocol::controller::{
    self as wire, ControllerOpcode, ROLE_FENCED, ROLE_MASTER, ROLE_SLAVE,
};
use ringmq_protocol::Status;
use std::collections::{BTreeMap, BTreeSet};
use std::io;

/// How long a proposal may wait to commit before its waiter is told `NO_QUORUM`: a healthy
/// group commits in a few ms; two election timeouts (2 s) cover a leader change under way.
pub const PROPOSAL_TIMEOUT_MS: u64 = 3_000;

/// How long a heartbeat or group-state read may wait for a read-index round: a broker
/// heartbeats every second, so an answer later than that is replaced by the next one.
pub const READ_TIMEOUT_MS: u64 = 1_000;

/// A read-index round not confirmed within this is given up and its reads go into the next
/// round: a lost heartbeat or response would otherwise hold them until their deadline.
pub const READ_ROUND_RETRY_MS: u64 = 3 * crate::node::TICK_MS;

/// Caps on what brokers can make the controllers keep. They bound the replicated state, so
/// the snapshot a follower is sent (one Raft frame, 64 MiB at most) and the store's records:
/// a group of 16 brokers with 255-byte names and addresses is ~13 KiB, its epoch history
/// (32 entries of at most 8 lost ranges) ~17 KiB, so 1,024 groups stay near 32 MiB.
pub const MAX_NAME_BYTES: usize = 255;
pub const MAX_CLUSTERS: usize = 64;
pub const MAX_GROUPS: usize = 1_024;
pub const MAX_BROKERS_PER_GROUP: usize = 16;
/// End offsets one heartbeat may carry (one per shard; a broker runs one shard per core).
pub const MAX_SHARDS: usize = 1_024;

/// Log entries between snapshots: a controller's commands are small (a JSON registration or
/// SyncStateSet change, ~200 bytes), so 10,000 entries keep the log near 2 MiB and a restart's
/// replay in milliseconds.
pub const DEFAULT_COMPACT_THRESHOLD: u64 = 10_000;

/// A Raft message to send: (destination controller id, encoded message).
pub type OutgoingMessage = (u64, Vec<u8>);

/// What [`Controller::drive`] produced: messages to send and waiters answered.
pub struct Driven<W> {
    pub messages: Vec<OutgoingMessage>,
    pub answered: Vec<(W, Reply)>,
}

/// A status and a body (an encoded response, or a UTF-8 message for error statuses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: Status,
    pub body: Vec<u8>,
}

impl Reply {
    fn ok(body: Vec<u8>) -> Self {
        Reply {
            status: Status::Ok,
            body,
        }
    }
    pub fn error(status: Status, message: impl Into<String>) -> Self {
        Reply {
            status,
            body: message.into().into_bytes(),
        }
    }
}

/// What a pending waiter is owed when its command applies.
enum Owed {
    BrokerId,
    Group,
    Membership,
}

struct Pending<W> {
    waiter: W,
    owed: Owed,
    deadline_ms: u64,
    /// The entry's data (a command) or context (a membership change) as proposed: an
    /// applied entry answers this waiter only if it is the same.
    proposed: Vec<u8>,
}

/// A read answered from the state once a read-index round confirms this controller leads.
enum Read {
    Heartbeat(wire::BrokerHeartbeat),
    GroupState(wire::GroupRef),
}

struct PendingRead<W> {
    waiter: W,
    read: Read,
    deadline_ms: u64,
}

/// The read-index round in flight (one at a time): the reads that arrived before it began,
/// answered once it is confirmed and everything up to its index is applied.
struct ReadRound<W> {
    context: Vec<u8>,
    started_ms: u64,
    confirmed_index: Option<u64>,
    batch: Vec<PendingRead<W>>,
}

pub struct Controller<C: Consensus, W> {
    pub consensus: C,
    pub state: ControllerState,
    pub config: ElectionConfig,
    /// The log index `state` reflects.
    pub applied: u64,
    /// Addresses of the controllers from the command line, for ids the replicated peer table
    /// does not have yet (the initial members).
    initial_peers: BTreeMap<u64, String>,
    /// Soft state: `Some` while this controller leads.
    liveness: Option<Liveness>,
    /// Soft state: the master switches this leader is timing.
    switches: Switches,
    next_sequence: u64,
    /// Drawn at random at each start: with the id and the sequence, it makes a proposal's
    /// tag unique across restarts.
    incarnation: u64,
    pending: BTreeMap<u64, Pending<W>>,
    /// Reads waiting for the next read-index round, and the round in flight.
    reads: Vec<PendingRead<W>>,
    read_round: Option<ReadRound<W>>,
    /// The time of the last `handle` or `tick`, for reads answered from `drive`.
    last_now_ms: u64,
    /// Elections proposed and not yet applied, by (cluster, group, epoch decided at), so a
    /// tick does not propose the same one again while it commits.
    elections_in_flight: BTreeMap<(String, String, u32), u64>,
    pub compact_threshold: u64,
    /// Elections applied, with the group as it was just before: the simulation checks each
    /// against the committed state it was applied to.
    #[cfg(test)]
    pub elections_applied: Vec<(GroupRecord, Command)>,
}

impl<C: Consensus, W> Controller<C, W> {
    pub fn new(
        consensus: C,
        state: ControllerState,
        applied: u64,
        initial_peers: BTreeMap<u64, String>,
        config: ElectionConfig,
    ) -> Self {
        Controller {
            consensus,
            state,
            config,
            applied,
            initial_peers,
            liveness: None,
            switches: Switches::default(),
            next_sequence: 1,
            incarnation: random_incarnation(),
            pending: BTreeMap::new(),
            reads: Vec::new(),
            read_round: None,
            last_now_ms: 0,
            elections_in_flight: BTreeMap::new(),
            compact_threshold: DEFAULT_COMPACT_THRESHOLD,
            #[cfg(test)]
            elections_applied: Vec::new(),
        }
    }

    pub fn id(&self) -> u64 {
        self.consensus.id()
    }

    /// A controller's `HOST:PORT`: the replicated table first, then the command line's.
    pub fn peer_addr(&self, id: u64) -> Option<&str> {
        self.state
            .peers
            .get(&id)
            .or_else(|| self.initial_peers.get(&id))
            .map(String::as_str)
    }

    /// Where a follower forwards a broker's request: the leader it knows, with its address.
    /// `None` on the leader itself, and while no leader is known (then the request is
    /// answered `NOT_LEADER` here, as before).
    pub fn forward_target(&self) -> Option<(u64, String)> {
        if self.consensus.is_leader() {
            return None;
        }
        let leader = self.consensus.leader().filter(|l| *l != self.id())?;
        Some((leader, self.peer_addr(leader)?.to_string()))
    }

    fn not_leader(&self) -> Reply {
        let leader = self.consensus.leader().filter(|l| *l != self.id());
        let hint = leader.and_then(|l| self.peer_addr(l).map(|a| (l, a)));
        let detail = match leader {
            Some(l) => format!("controller {} is not the leader; controller {l} is", self.id()),
            None => format!(
                "controller {} knows no leader: no majority of controllers is reachable, or an election is under way",
                self.id()
            ),
        };
        Reply::error(Status::NotLeader, wire::not_leader_message(&detail, hint))
    }

    /// A request from a broker or an operator. `Some` is the answer now; `None` means the
    /// waiter is answered from [`drive`](Self::drive) or [`tick`](Self::tick).
    pub fn handle(
        &mut self,
        opcode: ControllerOpcode,
        body: &[u8],
        now_ms: u64,
        waiter: W,
    ) -> Option<(W, Reply)> {
        self.last_now_ms = now_ms;
        let reply = match self.dispatch(opcode, body, now_ms) {
            Dispatch::Now(reply) => reply,
            // A leader just elected holds the read until an entry of its term commits (the
            // round starts from `drive` then), rather than sending the caller away: a broker's
            // first heartbeat after a controller failover is answered, not refused.
            Dispatch::Read(read) if self.consensus.is_leader() => {
                self.reads.push(PendingRead {
                    waiter,
                    read,
                    deadline_ms: now_ms + READ_TIMEOUT_MS,
                });
                self.start_read_round(now_ms);
                return None;
            }
            Dispatch::Read(_) => self.not_leader(),
            Dispatch::Propose(command, owed) => match self.propose(&command, now_ms) {
                Ok((sequence, proposed)) => {
                    self.pending.insert(
                        sequence,
                        Pending {
                            waiter,
                            owed,
                            deadline_ms: now_ms + PROPOSAL_TIMEOUT_MS,
                            proposed,
                        },
                    );
                    return None;
                }
                Err(reply) => reply,
            },
            Dispatch::Membership(change, addr) => {
                let sequence = self.take_sequence();
                let context = serde_json::to_vec(&(
                    sequence,
                    self.id(),
                    self.incarnation,
                    change_code(change),
                    addr,
                ))
                .expect("serializes");
                match self.consensus.propose_membership(change, context.clone()) {
                    Ok(()) => {
                        self.pending.insert(
                            sequence,
                            Pending {
                                waiter,
                                owed: Owed::Membership,
                                deadline_ms: now_ms + PROPOSAL_TIMEOUT_MS,
                                proposed: context,
                            },
                        );
                        return None;
                    }
                    Err(e) => self.propose_error(e),
                }
            }
        };
        Some((waiter, reply))
    }

    /// Whether this controller may answer from its state: it leads, has committed an entry
    /// of its own term (so its commit index covers every earlier leader's), and has applied
    /// everything committed. Reads also wait for a read-index round (see [`Self::drive`]).
    pub fn can_serve(&self) -> bool {
        self.consensus.committed_own_term() && self.applied >= self.consensus.commit_index()
    }

    fn not_serving(&self) -> Reply {
        if !self.consensus.is_leader() {
            return self.not_leader();
        }
        Reply::error(
            Status::NoQuorum,
            format!(
                "controller {} was just elected and has not yet committed an entry of its term: ask again",
                self.id()
            ),
        )
    }

    /// Starts a read-index round for the queued reads, unless one is in flight.
    fn start_read_round(&mut self, now_ms: u64) {
        if self.read_round.is_some() || self.reads.is_empty() {
            return;
        }
        if !self.consensus.committed_own_term() {
            return;
        }
        let context = tag(self.id(), self.incarnation, self.take_sequence());
        self.consensus.read_index(context.clone());
        self.read_round = Some(ReadRound {
            context,
            started_ms: now_ms,
            confirmed_index: None,
            batch: std::mem::take(&mut self.reads),
        });
    }

    /// Answers the round's reads if it is confirmed and applied, then starts the next.
    fn answer_reads(&mut self, answered: &mut Vec<(W, Reply)>) {
        let ready = self
            .read_round
            .as_ref()
            .and_then(|r| r.confirmed_index)
            .is_some_and(|index| self.applied >= index);
        if !ready {
            return;
        }
        let round = self.read_round.take().expect("checked");
        for read in round.batch {
            let reply = if self.can_serve() {
                self.answer_read(read.read)
            } else {
                self.not_serving()
            };
            answered.push((read.waiter, reply));
        }
        self.start_read_round(self.last_now_ms);
    }

    fn answer_read(&self, read: Read) -> Reply {
        match read {
            Read::Heartbeat(h) => self.heartbeat_answer(&h),
            Read::GroupState(g) => match self.state.group(&g.cluster_name, &g.broker_name) {
                Some(record) => Reply::ok(encode(&self.group_state(
                    &g.cluster_name,
                    &g.broker_name,
                    record,
                    self.last_now_ms,
                ))),
                None => Reply::error(
                    Status::BadRequest,
                    format!(
                        "group {}/{} is unknown to the controller",
                        g.cluster_name, g.broker_name
                    ),
                ),
            },
        }
    }

    fn take_sequence(&mut self) -> u64 {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        sequence
    }

    /// Proposes `command`: its sequence number and its data, as the entry will carry them.
    fn propose(&mut self, command: &Command, _now_ms: u64) -> Result<(u64, Vec<u8>), Reply> {
        let sequence = self.take_sequence();
        let context = tag(self.id(), self.incarnation, sequence);
        let data = serde_json::to_vec(command).expect("a command serializes");
        self.consensus
            .propose(context, data.clone())
            .map(|()| (sequence, data))
            .map_err(|e| self.propose_error(e))
    }

    fn propose_error(&self, e: ProposeError) -> Reply {
        match e {
            ProposeError::NotLeader { .. } => self.not_leader(),
            ProposeError::Refused(message) => Reply::error(Status::NoQuorum, message),
        }
    }

    fn dispatch(&mut self, opcode: ControllerOpcode, body: &[u8], now_ms: u64) -> Dispatch {
        macro_rules! decode {
            ($ty:ty) => {
                match wire::decode_request::<$ty>(body) {
                    Ok(v) => v,
                    Err(e) => return Dispatch::Now(Reply::error(Status::BadRequest, e.to_string())),
                }
            };
        }
        if opcode == ControllerOpcode::ControllerStatus {
            return Dispatch::Now(Reply::ok(
                serde_json::to_vec(&self.status_document(now_ms)).expect("json"),
            ));
        }
        if !self.consensus.is_leader() {
            return Dispatch::Now(self.not_leader());
        }
        match opcode {
            ControllerOpcode::RaftMessage
            | ControllerOpcode::ControllerStatus
            | ControllerOpcode::ControllerHello
            | ControllerOpcode::ControllerProof => {
                Dispatch::Now(Reply::error(Status::BadRequest, "not a request"))
            }
            ControllerOpcode::RegisterBroker => {
                let r = decode!(wire::RegisterBroker);
                if let Some(refused) = self.registration_refused(&r) {
                    return Dispatch::Now(refused);
                }
                let address = BrokerAddress {
                    listen: r.listen,
                    ha_listen: r.ha_listen,
                };
                if let Some(group) = self.state.group(&r.cluster_name, &r.broker_name) {
                    if let Some(id) = group.stores.get(&r.store_identity) {
                        if group.brokers.get(id) == Some(&address) {
                            return Dispatch::Now(Reply::ok(encode(&wire::BrokerIdentity {
                                broker_id: *id,
                            })));
                        }
                    }
                }
                Dispatch::Propose(
                    Command::RegisterBroker {
                        cluster: r.cluster_name,
                        group: r.broker_name,
                        store_identity: r.store_identity,
                        address,
                    },
                    Owed::BrokerId,
                )
            }
            ControllerOpcode::BrokerHeartbeat => {
                let h = decode!(wire::BrokerHeartbeat);
                if h.end_offsets.len() > MAX_SHARDS {
                    return Dispatch::Now(Reply::error(
                        Status::BadRequest,
                        format!(
                            "a heartbeat carries at most {MAX_SHARDS} end offsets, not {}",
                            h.end_offsets.len()
                        ),
                    ));
                }
                self.record_heartbeat(&h, now_ms);
                Dispatch::Read(Read::Heartbeat(h))
            }
            ControllerOpcode::AlterSyncStateSet => {
                let a = decode!(wire::AlterSyncStateSet);
                // A learner is never electable, so it must not count as in sync (the
                // leader knows who is one from their heartbeats).
                let learner = self.liveness.as_ref().and_then(|l| {
                    a.new_sync_state_set
                        .iter()
                        .find(|id| l.reports.get(id).is_some_and(|r| r.learner))
                        .copied()
                });
                if let Some(id) = learner {
                    return Dispatch::Now(Reply::error(
                        Status::BadRequest,
                        format!("broker {id} is a learner: it cannot be in the SyncStateSet"),
                    ));
                }
                Dispatch::Propose(
                    Command::AlterSyncStateSet {
                        cluster: a.cluster_name,
                        group: a.broker_name,
                        master_broker_id: a.master_broker_id,
                        master_epoch: a.master_epoch,
                        sync_state_set_epoch: a.sync_state_set_epoch,
                        new_sync_state_set: a.new_sync_state_set.into_iter().collect(),
                    },
                    Owed::Group,
                )
            }
            ControllerOpcode::GetGroupState => {
                Dispatch::Read(Read::GroupState(decode!(wire::GroupRef)))
            }
            ControllerOpcode::ResignMaster => {
                let r = decode!(wire::ResignMaster);
                // Decided on the state and the liveness only a serving leader has.
                let (true, Some(liveness)) = (self.can_serve(), self.liveness.as_ref()) else {
                    return Dispatch::Now(self.not_serving());
                };
                let Some(record) = self.state.group(&r.cluster_name, &r.broker_name) else {
                    return Dispatch::Now(Reply::error(
                        Status::BadRequest,
                        format!("no group {}/{}", r.cluster_name, r.broker_name),
                    ));
                };
                match decide_handover(record, liveness, now_ms, &self.config, &r) {
                    Ok(command) => {
                        tracing::info!(
                            "controller {}: {}/{} master {} hands over to {}",
                            self.id(),
                            r.cluster_name,
                            r.broker_name,
                            r.broker_id,
                            r.successor_broker_id
                        );
                        self.switches.resigned(
                            &r.cluster_name,
                            &r.broker_name,
                            r.master_epoch,
                            now_ms,
                        );
                        Dispatch::Propose(command, Owed::Group)
                    }
                    Err(HandoverRefused::Stale(message)) => {
                        Dispatch::Now(Reply::error(Status::StaleEpoch, message))
                    }
                    Err(HandoverRefused::Ineligible(message)) => {
                        Dispatch::Now(Reply::error(Status::BadRequest, message))
                    }
                }
            }
            ControllerOpcode::AddPeer => {
                let p = decode!(wire::AddPeer);
                if p.addr.len() > MAX_NAME_BYTES || p.id == 0 {
                    return Dispatch::Now(Reply::error(
                        Status::BadRequest,
                        format!("a peer needs an id above 0 and an address of at most {MAX_NAME_BYTES} bytes"),
                    ));
                }
                if self.consensus.voters().contains(&p.id) {
                    return Dispatch::Now(Reply::error(
                        Status::BadRequest,
                        format!("controller {} is already a member", p.id),
                    ));
                }
                Dispatch::Membership(MembershipChange::Add(p.id), p.addr)
            }
            ControllerOpcode::RemovePeer => {
                let p = decode!(wire::RemovePeer);
                if !self.consensus.voters().contains(&p.id) {
                    return Dispatch::Now(Reply::error(
                        Status::BadRequest,
                        format!("controller {} is not a member", p.id),
                    ));
                }
                if p.id == self.id() {
                    // The leader would stop leading mid-change, and raft-rs 0.7 has no
                    // transfer here yet: stop it (another is elected), then remove it.
                    return Dispatch::Now(Reply::error(
                        Status::BadRequest,
                        format!(
                            "controller {} is the leader: stop it first (another controller takes over), then remove it",
                            p.id
                        ),
                    ));
                }
                Dispatch::Membership(MembershipChange::Remove(p.id), String::new())
            }
        }
    }

    /// Why a registration is refused, if it is: a name too long, or a cap it would pass
    /// (only a new cluster, group or store counts against them).
    fn registration_refused(&self, r: &wire::RegisterBroker) -> Option<Reply> {
        for (what, value) in [
            ("cluster name", &r.cluster_name),
            ("broker name", &r.broker_name),
            ("store identity", &r.store_identity),
            ("listen address", &r.listen),
            ("HA listen address", &r.ha_listen),
        ] {
            if value.len() > MAX_NAME_BYTES || (value.is_empty() && what != "HA listen address") {
                return Some(Reply::error(
                    Status::InvalidName,
                    format!(
                        "the {what} must be 1 to {MAX_NAME_BYTES} bytes, not {}",
                        value.len()
                    ),
                ));
            }
        }
        let cap = |message: String| Some(Reply::error(Status::BadRequest, message));
        let clusters = &self.state.clusters;
        let Some(groups) = clusters.get(&r.cluster_name) else {
            if clusters.len() >= MAX_CLUSTERS {
                return cap(format!(
                    "the controllers keep at most {MAX_CLUSTERS} clusters"
                ));
            }
            return self.group_cap();
        };
        let Some(group) = groups.get(&r.broker_name) else {
            return self.group_cap();
        };
        if !group.stores.contains_key(&r.store_identity)
            && group.stores.len() >= MAX_BROKERS_PER_GROUP
        {
            return cap(format!(
                "group {}/{} has {MAX_BROKERS_PER_GROUP} brokers, the most a group may have (a broker id is kept per store, for good)",
                r.cluster_name, r.broker_name
            ));
        }
        None
    }

    fn group_cap(&self) -> Option<Reply> {
        let groups: usize = self.state.clusters.values().map(|g| g.len()).sum();
        (groups >= MAX_GROUPS).then(|| {
            Reply::error(
                Status::BadRequest,
                format!("the controllers keep at most {MAX_GROUPS} broker groups"),
            )
        })
    }

    /// What a heartbeat says about its broker, kept when it arrives (the silence that makes a
    /// master lost is counted from the last one received, which is no earlier than any lease
    /// answered for it began). Brokers not registered are not kept.
    fn record_heartbeat(&mut self, h: &wire::BrokerHeartbeat, now_ms: u64) {
        let registered = self
            .state
            .group(&h.cluster_name, &h.broker_name)
            .is_some_and(|r| r.brokers.contains_key(&h.broker_id));
        if !registered {
            return;
        }
        let liveness = self.liveness.get_or_insert_with(|| Liveness::new(now_ms));
        liveness.record(
            h.broker_id,
            BrokerReport {
                received_at_ms: now_ms,
                epoch: h.epoch,
                end_offsets: h.end_offsets.clone(),
                unclean_restart: h.unclean_restart != 0,
                async_flush: h.async_flush != 0,
                learner: h.learner != 0,
                election_priority: h.election_priority,
                links: h
                    .slave_links
                    .iter()
                    .map(|l| SlaveLinks {
                        broker_id: l.broker_id,
                        linked_shards: l.linked_shards,
                        in_sync_shards: l.in_sync_shards,
                    })
                    .collect(),
            },
        );
        let record = self
            .state
            .group(&h.cluster_name, &h.broker_name)
            .expect("checked above");
        if let Some(command) = self.switches.heartbeat(h, record, now_ms) {
            if self.propose(&command, now_ms).is_ok() {
                tracing::info!("controller {}: recording {command:?}", self.id());
            }
        }
    }

    /// Whether an `ElectMaster` for the group is in the log past the commit index.
    fn election_pending(&self, cluster: &str, group: &str) -> bool {
        self.consensus.uncommitted().iter().any(|data| {
            matches!(
                serde_json::from_slice::<Command>(data),
                Ok(Command::ElectMaster { cluster: c, group: g, .. }) if c == cluster && g == group
            )
        })
    }

    /// The answer to a heartbeat, from the state once a read-index round confirmed it.
    fn heartbeat_answer(&self, h: &wire::BrokerHeartbeat) -> Reply {
        let Some(record) = self.state.group(&h.cluster_name, &h.broker_name) else {
            return Reply::error(
                Status::BadRequest,
                format!(
                    "group {}/{} is unknown: register the broker first",
                    h.cluster_name, h.broker_name
                ),
            );
        };
        if !record.brokers.contains_key(&h.broker_id) {
            return Reply::error(
                Status::BadRequest,
                format!(
                    "broker id {} is not registered in {}/{}: register first",
                    h.broker_id, h.cluster_name, h.broker_name
                ),
            );
        }
        let mut role = assigned_role(record, h.broker_id);
        // A master back from an unclean ASYNC_FLUSH restart is one `decide_election` replaces
        // at the next tick: a lease now would overlap its successor's. It is told it is
        // fenced (with the epoch, which it needs to see to stop reporting the restart).
        if role == Role::Master && h.unclean_restart != 0 && h.async_flush != 0 {
            role = Role::Fenced;
        }
        // Likewise a master an election in this leader's log may still replace: proposed
        // when it was silent, that election commits whenever a majority is back, even after
        // the master has returned (and its waiter timed out).
        if role == Role::Master && self.election_pending(&h.cluster_name, &h.broker_name) {
            role = Role::Fenced;
        }
        let master = record.brokers.get(&record.master_broker_id);
        let answer = wire::HeartbeatAnswer {
            role: match role {
                Role::Master => ROLE_MASTER,
                Role::Slave => ROLE_SLAVE,
                Role::Fenced => ROLE_FENCED,
            },
            master_broker_id: record.master_broker_id,
            master_listen: master.map(|m| m.listen.clone()).unwrap_or_default(),
            master_ha_listen: master.map(|m| m.ha_listen.clone()).unwrap_or_default(),
            master_epoch: record.master_epoch,
            sync_state_set_epoch: record.sync_state_set_epoch,
            sync_state_set: record.sync_state_set.iter().copied().collect(),
            lease_expires_ms: if role == Role::Master {
                h.sent_at_ms.saturating_add(self.config.lease_ms)
            } else {
                0
            },
            unclean_election: u8::from(self.config.enable_elect_unclean_master),
        };
        Reply::ok(encode(&answer))
    }

    fn group_state(
        &self,
        cluster: &str,
        group: &str,
        record: &GroupRecord,
        now_ms: u64,
    ) -> wire::GroupState {
        wire::GroupState {
            cluster_name: cluster.to_string(),
            broker_name: group.to_string(),
            master_broker_id: record.master_broker_id,
            master_epoch: record.master_epoch,
            sync_state_set_epoch: record.sync_state_set_epoch,
            sync_state_set: record.sync_state_set.iter().copied().collect(),
            brokers: record
                .brokers
                .iter()
                .map(|(id, a)| wire::BrokerEntry {
                    broker_id: *id,
                    listen: a.listen.clone(),
                    ha_listen: a.ha_listen.clone(),
                    alive: self
                        .liveness
                        .as_ref()
                        .is_some_and(|l| l.is_alive(*id, now_ms, &self.config))
                        as u8,
                })
                .collect(),
        }
    }

    /// The JSON `ControllerStatus` answers: this controller's view.
    pub fn status_document(&self, now_ms: u64) -> serde_json::Value {
        let mut groups = Vec::new();
        for (cluster, by_name) in &self.state.clusters {
            for (name, record) in by_name {
                let state = self.group_state(cluster, name, record, now_ms);
                groups.push(serde_json::json!({
                    "cluster": cluster,
                    "group": name,
                    "master_broker_id": state.master_broker_id,
                    "master_epoch": state.master_epoch,
                    "sync_state_set_epoch": state.sync_state_set_epoch,
                    "sync_state_set": state.sync_state_set,
                    "brokers": state.brokers.iter().map(|b| serde_json::json!({
                        "broker_id": b.broker_id, "listen": b.listen, "ha_listen": b.ha_listen,
                        "alive": b.alive != 0,
                        "role": wire::role_name(match assigned_role(record, b.broker_id) {
                            Role::Master => ROLE_MASTER, Role::Slave => ROLE_SLAVE, Role::Fenced => ROLE_FENCED }),
                        "in_sync_state_set": record.sync_state_set.contains(&b.broker_id),
                        // Why it is in or out (the leader's view; null on a follower).
                        "why": sync_state_reason(record, b.broker_id, self.liveness.as_ref(), now_ms, &self.config),
                        // The leader's soft state: the broker's last heartbeat, as elections
                        // rank it (null on a follower, and for a broker not heard since this
                        // controller leads).
                        "reported": self.liveness.as_ref().and_then(|l| l.reports.get(&b.broker_id)).map(|r| serde_json::json!({
                            "heard_ms_ago": now_ms.saturating_sub(r.received_at_ms),
                            "epoch": r.epoch,
                            "end_offsets": r.end_offsets,
                            "unclean_restart": r.unclean_restart,
                            "learner": r.learner,
                        })),
                    })).collect::<Vec<_>>(),
                    "epoch_history": record.epoch_history,
                }));
            }
        }
        let leader = self.consensus.leader();
        serde_json::json!({
            "id": self.id(),
            "leader": leader,
            "leader_addr": leader.and_then(|l| self.peer_addr(l)),
            "is_leader": self.consensus.is_leader(),
            "voters": self.consensus.voters(),
            "peers": self.consensus.voters().iter().map(|v| (v.to_string(), self.peer_addr(*v))).collect::<BTreeMap<_, _>>(),
            "commit_index": self.consensus.commit_index(),
            "applied_index": self.applied,
            "groups": groups,
        })
    }

    /// A Raft message from peer `from`: refused unless `from` is a controller we know (a
    /// member, or one the peer tables name: we could not answer one we have no address for).
    pub fn step(&mut self, from: u64, message: &[u8], now_ms: u64) -> Result<(), String> {
        self.last_now_ms = now_ms;
        if self.peer_addr(from).is_none() && !self.consensus.voters().contains(&from) {
            return Err(format!("controller {from} is not a known member"));
        }
        self.consensus.step(from, message)
    }

    /// Advances Raft's clock, proposes elections for groups whose master is lost, and
    /// answers proposals that timed out.
    pub fn tick(&mut self, now_ms: u64) -> Vec<(W, Reply)> {
        self.last_now_ms = now_ms;
        self.consensus.tick();
        let mut answered = Vec::new();
        if !self.consensus.is_leader() {
            self.liveness = None;
            self.switches.clear();
            self.elections_in_flight.clear();
            let round = self.read_round.take().map(|r| r.batch).unwrap_or_default();
            for read in round.into_iter().chain(std::mem::take(&mut self.reads)) {
                answered.push((read.waiter, self.not_leader()));
            }
        } else {
            if self.liveness.is_none() {
                self.liveness = Some(Liveness::new(now_ms));
            }
            // Elections are decided on a state that holds everything committed.
            if self.can_serve() {
                self.propose_elections(now_ms);
            }
            self.retry_reads(now_ms, &mut answered);
        }
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline_ms <= now_ms)
            .map(|(s, _)| *s)
            .collect();
        answered.extend(expired
            .into_iter()
            .filter_map(|s| self.pending.remove(&s))
            .map(|p| (p.waiter, Reply::error(Status::NoQuorum, format!(
                "the change was not committed within {PROPOSAL_TIMEOUT_MS} ms (no majority of controllers, or a leader change); it may still commit: ask again"
            )))));
        answered
    }

    /// Gives up a read-index round unconfirmed for too long (its reads go into the next),
    /// answers reads past their deadline `NO_QUORUM`, and starts the next round.
    fn retry_reads(&mut self, now_ms: u64, answered: &mut Vec<(W, Reply)>) {
        if self.read_round.as_ref().is_some_and(|r| {
            r.confirmed_index.is_none()
                && now_ms.saturating_sub(r.started_ms) >= READ_ROUND_RETRY_MS
        }) {
            let mut batch = self.read_round.take().expect("checked").batch;
            batch.append(&mut self.reads);
            self.reads = batch;
        }
        let (late, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads)
            .into_iter()
            .partition(|r| r.deadline_ms <= now_ms);
        self.reads = waiting;
        for read in late {
            answered.push((read.waiter, Reply::error(
                Status::NoQuorum,
                format!("a majority of controllers did not confirm controller {} leads within {READ_TIMEOUT_MS} ms: ask again", self.id()),
            )));
        }
        self.start_read_round(now_ms);
    }

    fn propose_elections(&mut self, now_ms: u64) {
        self.elections_in_flight
            .retain(|_, deadline| *deadline > now_ms);
        let liveness = self.liveness.as_ref().expect("leader has liveness");
        self.switches.expire(&self.state, now_ms);
        let mut commands = Vec::new();
        for (cluster, groups) in &self.state.clusters {
            for (name, record) in groups {
                self.switches
                    .observe(cluster, name, record, liveness, now_ms, &self.config);
                let key = (cluster.clone(), name.clone(), record.master_epoch);
                if self.elections_in_flight.contains_key(&key) {
                    continue;
                }
                if let Some(command) =
                    decide_election(cluster, name, record, liveness, now_ms, &self.config, None)
                {
                    commands.push((key, command));
                }
            }
        }
        for (key, command) in commands {
            if self.propose(&command, now_ms).is_ok() {
                tracing::info!("controller {}: proposing {command:?}", self.id());
                self.switches.decided(&key.0, &key.1, key.2, now_ms);
                self.elections_in_flight
                    .insert(key, now_ms + PROPOSAL_TIMEOUT_MS);
            }
        }
    }

    /// Persists and applies what Raft produced: returns the messages to send (destination
    /// id, bytes) and the waiters now answered.
    pub fn drive(&mut self) -> io::Result<Driven<W>> {
        let mut answered = Vec::new();
        let mut messages = Vec::new();
        // A read-index round started here (the previous one answered, or reads held until
        // this leader's term committed) is in Raft's next output: drive once more to send it
        // now rather than at the next tick.
        for _ in 0..2 {
            let progress = self.consensus.drive()?;
            messages.extend(progress.messages);
            for committed in progress.committed {
                if let Committed::Restore { index, data } = &committed {
                    self.restore(*index, data)?;
                    continue;
                }
                self.apply(committed, &mut answered);
            }
            for (context, index) in progress.reads {
                if let Some(round) = self.read_round.as_mut().filter(|r| r.context == context) {
                    round.confirmed_index = Some(index);
                }
            }
            let round_before = self.read_round.as_ref().map(|r| r.context.clone());
            self.answer_reads(&mut answered);
            self.start_read_round(self.last_now_ms);
            let round_after = self.read_round.as_ref().map(|r| r.context.clone());
            if round_after.is_none() || round_after == round_before {
                break;
            }
        }
        let state = &self.state;
        self.consensus
            .maybe_compact(self.applied, self.compact_threshold, &|| {
                serde_json::to_vec(state).expect("state serializes")
            })?;
        Ok(Driven { messages, answered })
    }

    /// Replaces the state by the snapshot the leader sent. One that does not decode is
    /// fatal: carrying on with the old state would apply the entries after the snapshot to
    /// a state that is not the group's, and diverge silently.
    fn restore(&mut self, index: u64, data: &[u8]) -> io::Result<()> {
        let state = serde_json::from_slice::<ControllerState>(data).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the snapshot at index {index} the leader sent does not decode ({e}): rebuild this controller from its peers"),
            )
        })?;
        self.state = state;
        self.applied = index;
        Ok(())
    }

    fn apply(&mut self, committed: Committed, answered: &mut Vec<(W, Reply)>) {
        match committed {
            Committed::Empty { index } => self.applied = index,
            Committed::Restore { index, data } => {
                // `drive` restores before it applies anything else; kept for completeness.
                if let Ok(state) = serde_json::from_slice::<ControllerState>(&data) {
                    self.state = state;
                    self.applied = index;
                }
            }
            Committed::Command {
                index,
                context,
                data,
            } => {
                self.applied = index;
                let Ok(command) = serde_json::from_slice::<Command>(&data) else {
                    tracing::error!(
                        "controller {}: entry {index} is not a command; skipped",
                        self.id()
                    );
                    return;
                };
                #[cfg(test)]
                let before = match &command {
                    Command::ElectMaster { cluster, group, .. } => {
                        self.state.group(cluster, group).cloned()
                    }
                    _ => None,
                };
                let outcome = self.state.apply(&command);
                #[cfg(test)]
                if let (Some(before), Ok(_)) = (before, &outcome) {
                    self.elections_applied.push((before, command.clone()));
                }
                if let Command::ElectMaster {
                    cluster,
                    group,
                    expected_master_epoch,
                    ..
                } = &command
                {
                    self.elections_in_flight.remove(&(
                        cluster.clone(),
                        group.clone(),
                        *expected_master_epoch,
                    ));
                    if let Ok(Applied::Group(record)) = &outcome {
                        self.switches.committed(
                            cluster,
                            group,
                            *expected_master_epoch,
                            record.master_epoch,
                            record.master_broker_id,
                            self.last_now_ms,
                        );
                    }
                }
                let Some(pending) = self.take_pending(&context, &data) else {
                    return;
                };
                let reply = match (outcome, pending.owed, &command) {
                    (Ok(Applied::BrokerId(id)), Owed::BrokerId, _) => {
                        Reply::ok(encode(&wire::BrokerIdentity { broker_id: id }))
                    }
                    (
                        Ok(Applied::Group(record)),
                        Owed::Group,
                        Command::AlterSyncStateSet { cluster, group, .. }
                        | Command::ElectMaster { cluster, group, .. },
                    ) => Reply::ok(encode(&self.group_state(cluster, group, &record, 0))),
                    (Err(e @ Refusal::StaleEpoch { .. }), _, _) => {
                        Reply::error(Status::StaleEpoch, e.to_string())
                    }
                    (Err(e), _, _) => Reply::error(Status::BadRequest, e.to_string()),
                    (Ok(other), _, _) => {
                        Reply::error(Status::Internal, format!("unexpected outcome {other:?}"))
                    }
                };
                answered.push((pending.waiter, reply));
            }
            Committed::Membership {
                index,
                change,
                context,
            } => {
                self.applied = index;
                let (sequence, proposer, incarnation, _, addr): (u64, u64, u64, u8, String) =
                    serde_json::from_slice(&context).unwrap_or((0, 0, 0, 0, String::new()));
                let command = match change {
                    MembershipChange::Add(id) => Command::SetPeer { id, addr },
                    MembershipChange::Remove(id) => Command::RemovePeer { id },
                };
                let _ = self.state.apply(&command);
                tracing::info!(
                    "controller {}: membership {change:?} applied at {index}",
                    self.id()
                );
                let ours = proposer == self.id()
                    && incarnation == self.incarnation
                    && self
                        .pending
                        .get(&sequence)
                        .is_some_and(|p| p.proposed == context);
                if ours {
                    if let Some(pending) = self.pending.remove(&sequence) {
                        answered.push((pending.waiter, Reply::ok(Vec::new())));
                    }
                }
            }
        }
    }

    /// The waiter an applied command answers: the tag is ours (id and incarnation) and the
    /// command is the one that waiter proposed.
    fn take_pending(&mut self, context: &[u8], data: &[u8]) -> Option<Pending<W>> {
        let sequence = untag(context, self.id(), self.incarnation)?;
        if self.pending.get(&sequence)?.proposed != data {
            return None;
        }
        self.pending.remove(&sequence)
    }

    /// The groups' masters, for the simulation's checks.
    pub fn masters(&self) -> BTreeSet<(String, String, u32, u64)> {
        self.state
            .clusters
            .iter()
            .flat_map(|(c, gs)| {
                gs.iter()
                    .map(move |(g, r)| (c.clone(), g.clone(), r.master_epoch, r.master_broker_id))
            })
            .collect()
    }
}

enum Dispatch {
    Now(Reply),
    Read(Read),
    Propose(Command, Owed),
    Membership(MembershipChange, String),
}

fn encode<T: for<'a> ringmq_protocol::codec::Fields<'a>>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    value.write_fields(&mut ringmq_protocol::codec::Writer::new(&mut out));
    out
}

/// An entry's context: the proposing controller's id, its incarnation and the sequence
/// number, LE.
fn tag(id: u64, incarnation: u64, sequence: u64) -> Vec<u8> {
    let mut context = id.to_le_bytes().to_vec();
    context.extend_from_slice(&incarnation.to_le_bytes());
    context.extend_from_slice(&sequence.to_le_bytes());
    context
}

/// The sequence number of a context `tag(id, incarnation, _)` wrote, else `None`.
fn untag(context: &[u8], id: u64, incarnation: u64) -> Option<u64> {
    if context.len() != 24
        || context[..8] != id.to_le_bytes()
        || context[8..16] != incarnation.to_le_bytes()
    {
        return None;
    }
    Some(u64::from_le_bytes(context[16..].try_into().ok()?))
}

/// A membership change in its proposal's context (so two changes never look alike).
fn change_code(change: MembershipChange) -> u8 {
    match change {
        MembershipChange::Add(_) => 1,
        MembershipChange::Remove(_) => 2,
    }
}

/// A fresh 64-bit value per start: std's randomly keyed hasher (seeded from the OS) over
/// the wall clock and the process id. Uniqueness is all that is needed, not secrecy.
fn random_incarnation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    //! One controller alone (a one-voter group, which leads itself) over memory persistence:
    //! the answers of each request, decided by the core rather than the state machine.
    use super::*;
    use crate::node::{MemoryPersistence, RaftNode};
    use wire::{
        AlterSyncStateSet, BrokerHeartbeat, BrokerIdentity, GroupRef, GroupState, HeartbeatAnswer,
        RegisterBroker,
    };

    type Lone = Controller<RaftNode<MemoryPersistence>, u32>;

    fn lone() -> Lone {
        let node = RaftNode::new(1, MemoryPersistence::new(&[1]), 0, (3, 4)).unwrap();
        let peers = [(1, "127.0.0.1:1".to_string())].into_iter().collect();
        let mut c = Controller::new(
            node,
            ControllerState::default(),
            0,
            peers,
            ElectionConfig::default(),
        );
        for now in 0..10 {
            c.tick(now * 100);
            c.drive().unwrap();
        }
        assert!(c.consensus.is_leader());
        c
    }

    fn body<T: for<'a> ringmq_protocol::codec::Fields<'a>>(value: &T) -> Vec<u8> {
        encode(value)
    }

    /// Handles a request and drives until it is answered.
    fn ask(c: &mut Lone, opcode: ControllerOpcode, request: Vec<u8>, now: u64) -> Reply {
        if let Some((_, reply)) = c.handle(opcode, &request, now, 7) {
            return reply;
        }
        let driven = c.drive().unwrap();
        let (waiter, reply) = driven
            .answered
            .into_iter()
            .next()
            .expect("answered once committed");
        assert_eq!(waiter, 7);
        reply
    }

    fn register(c: &mut Lone, store: &str) -> u64 {
        let reply = ask(
            c,
            ControllerOpcode::RegisterBroker,
            body(&RegisterBroker {
                cluster_name: "c".into(),
                broker_name: "g".into(),
                store_identity: store.into(),
                listen: format!("{store}:1"),
                ha_listen: format!("{store}:2"),
            }),
            1_000,
        );
        assert_eq!(reply.status, Status::Ok);
        BrokerIdentity::decode(&reply.body).unwrap().broker_id
    }

    fn heartbeat(c: &mut Lone, id: u64, now: u64) -> HeartbeatAnswer {
        let reply = ask(
            c,
            ControllerOpcode::BrokerHeartbeat,
            body(&BrokerHeartbeat {
                cluster_name: "c".into(),
                broker_name: "g".into(),
                broker_id: id,
                epoch: 0,
                end_offsets: vec![id],
                unclean_restart: 0,
                async_flush: 0,
                learner: 0,
                election_priority: 0,
                sent_at_ms: now + 5,
                ..BrokerHeartbeat::default()
            }),
            now,
        );
        assert_eq!(
            reply.status,
            Status::Ok,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        HeartbeatAnswer::decode(&reply.body).unwrap()
    }

    /// Brokers a and b registered, b elected master at 2,500 ms (the highest end offset) and
    /// both in its SyncStateSet: (a, b, b's master answer).
    fn two_in_sync(c: &mut Lone) -> (u64, u64, HeartbeatAnswer) {
        let a = register(c, "a");
        let b = register(c, "b");
        heartbeat(c, a, 1_000);
        heartbeat(c, b, 1_000);
        c.tick(2_500);
        c.drive().unwrap();
        heartbeat(c, a, 2_500);
        let answer = heartbeat(c, b, 2_500);
        assert_eq!(answer.role, ROLE_MASTER, "the highest end offset");
        let alter = ask(
            c,
            ControllerOpcode::AlterSyncStateSet,
            body(&AlterSyncStateSet {
                cluster_name: "c".into(),
                broker_name: "g".into(),
                master_broker_id: b,
                master_epoch: answer.master_epoch,
                sync_state_set_epoch: answer.sync_state_set_epoch,
                new_sync_state_set: vec![a, b],
            }),
            2_500,
        );
        assert_eq!(alter.status, Status::Ok);
        (a, b, answer)
    }

    #[test]
    fn a_read_sent_to_a_leader_that_has_not_committed_its_term_waits_and_is_answered() {
        let node = RaftNode::new(1, MemoryPersistence::new(&[1]), 0, (3, 4)).unwrap();
        let peers = [(1, "127.0.0.1:1".to_string())].into_iter().collect();
        let mut c: Lone = Controller::new(
            node,
            ControllerState::default(),
            0,
            peers,
            ElectionConfig::default(),
        );
        let mut now = 0;
        while !c.consensus.is_leader() {
            now += 100;
            assert!(now < 5_000, "a one-voter group elects itself");
            c.tick(now);
        }
        assert!(
            !c.consensus.committed_own_term(),
            "the term's first entry is not persisted before drive"
        );
        let read = body(&GroupRef {
            cluster_name: "c".into(),
            broker_name: "g".into(),
        });
        assert!(
            c.handle(ControllerOpcode::GetGroupState, &read, now, 7)
                .is_none(),
            "held, not refused"
        );
        let answered = c.drive().unwrap().answered;
        assert_eq!(answered.len(), 1);
        let (waiter, reply) = &answered[0];
        assert_eq!(*waiter, 7);
        assert_eq!(
            reply.status,
            Status::BadRequest,
            "answered from the state (no such group): {}",
            String::from_utf8_lossy(&reply.body)
        );
    }

    #[test]
    fn a_resigning_master_is_answered_with_the_group_its_successor_leads() {
        let mut c = lone();
        let (a, b, answer) = two_in_sync(&mut c);
        let now = 2_500;
        let resign = |broker_id, successor| {
            body(&wire::ResignMaster {
                cluster_name: "c".into(),
                broker_name: "g".into(),
                broker_id,
                master_epoch: answer.master_epoch,
                successor_broker_id: successor,
            })
        };
        let refused = ask(&mut c, ControllerOpcode::ResignMaster, resign(a, b), now);
        assert_eq!(refused.status, Status::StaleEpoch, "a is not the master");
        let reply = ask(&mut c, ControllerOpcode::ResignMaster, resign(b, a), now);
        assert_eq!(
            reply.status,
            Status::Ok,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let group = GroupState::decode(&reply.body).unwrap();
        assert_eq!(group.master_broker_id, a);
        assert!(group.master_epoch > answer.master_epoch);
        assert_eq!(group.sync_state_set, vec![a]);
        assert_eq!(heartbeat(&mut c, a, now).role, ROLE_MASTER);
        assert_eq!(heartbeat(&mut c, b, now).role, ROLE_SLAVE);
    }

    #[test]
    fn a_lone_controller_assigns_ids_elects_a_master_and_fences_stale_changes() {
        let mut c = lone();
        let a = register(&mut c, "a");
        let b = register(&mut c, "b");
        assert_eq!(
            register(&mut c, "a"),
            a,
            "answered from the state, no new id"
        );
        assert_eq!(
            heartbeat(&mut c, a, 1_000).role,
            ROLE_FENCED,
            "no master yet"
        );
        heartbeat(&mut c, b, 1_000);
        // The leader elects once it has listened one silence period.
        let now = 2_500;
        c.tick(now);
        c.drive().unwrap();
        let answer = heartbeat(&mut c, b, now);
        assert_eq!(answer.role, ROLE_MASTER, "the highest end offset");
        assert_eq!(answer.lease_expires_ms, now + 5 + c.config.lease_ms);
        assert_eq!(heartbeat(&mut c, a, now).role, ROLE_SLAVE);
        assert_eq!(heartbeat(&mut c, a, now).lease_expires_ms, 0);

        let alter = |set_epoch| {
            body(&AlterSyncStateSet {
                cluster_name: "c".into(),
                broker_name: "g".into(),
                master_broker_id: b,
                master_epoch: answer.master_epoch,
                sync_state_set_epoch: set_epoch,
                new_sync_state_set: vec![a, b],
            })
        };
        let reply = ask(
            &mut c,
            ControllerOpcode::AlterSyncStateSet,
            alter(answer.sync_state_set_epoch),
            now,
        );
        assert_eq!(reply.status, Status::Ok);
        assert_eq!(
            GroupState::decode(&reply.body).unwrap().sync_state_set,
            vec![a, b]
        );
        let stale = ask(
            &mut c,
            ControllerOpcode::AlterSyncStateSet,
            alter(answer.sync_state_set_epoch),
            now,
        );
        assert_eq!(
            stale.status,
            Status::StaleEpoch,
            "{}",
            String::from_utf8_lossy(&stale.body)
        );

        let unknown = ask(
            &mut c,
            ControllerOpcode::GetGroupState,
            body(&GroupRef {
                cluster_name: "c".into(),
                broker_name: "x".into(),
            }),
            now,
        );
        assert_eq!(unknown.status, Status::BadRequest);
        let unregistered = ask(
            &mut c,
            ControllerOpcode::BrokerHeartbeat,
            body(&BrokerHeartbeat {
                cluster_name: "c".into(),
                broker_name: "g".into(),
                broker_id: 99,
                epoch: 0,
                end_offsets: vec![],
                unclean_restart: 0,
                async_flush: 0,
                learner: 0,
                election_priority: 0,
                sent_at_ms: 0,
                ..BrokerHeartbeat::default()
            }),
            now,
        );
        assert_eq!(unregistered.status, Status::BadRequest);
        let garbage = c
            .handle(ControllerOpcode::RegisterBroker, &[1, 2, 3], now, 7)
            .unwrap()
            .1;
        assert_eq!(garbage.status, Status::BadRequest);
    }

    #[test]
    fn a_master_back_from_an_unclean_async_flush_restart_gets_no_lease() {
        let mut c = lone();
        let (a, b, _) = two_in_sync(&mut c);
        let reply = ask(
            &mut c,
            ControllerOpcode::BrokerHeartbeat,
            body(&BrokerHeartbeat {
                cluster_name: "c".into(),
                broker_name: "g".into(),
                broker_id: b,
                epoch: 1,
                end_offsets: vec![b],
                unclean_restart: 1,
                async_flush: 1,
                learner: 0,
                election_priority: 0,
                sent_at_ms: 2_600,
                ..BrokerHeartbeat::default()
            }),
            2_600,
        );
        let answer = HeartbeatAnswer::decode(&reply.body).unwrap();
        assert_eq!(answer.role, ROLE_FENCED, "it is about to be replaced");
        assert_eq!(answer.lease_expires_ms, 0);
        assert_eq!(answer.master_epoch, 1, "it learns the epoch all the same");
        // The next tick replaces it, and the new master's lease overlaps none.
        heartbeat(&mut c, a, 2_600);
        c.tick(2_700);
        c.drive().unwrap();
        assert_eq!(heartbeat(&mut c, a, 2_700).role, ROLE_MASTER);
    }

    #[test]
    fn an_entry_from_an_earlier_start_or_another_command_answers_no_waiter() {
        let mut c = lone();
        let register = |store: &str| RegisterBroker {
            cluster_name: "c".into(),
            broker_name: "g".into(),
            store_identity: store.into(),
            listen: format!("{store}:1"),
            ha_listen: format!("{store}:2"),
        };
        assert!(c
            .handle(
                ControllerOpcode::RegisterBroker,
                &body(&register("b")),
                1_000,
                9
            )
            .is_none());
        let sequence = c.next_sequence - 1;
        // Entries proposed before a restart, carrying the same id and sequence (the sequence
        // starts again at 1 on each start), and one with our tag but another command.
        let other = |store: &str| Command::RegisterBroker {
            cluster: "c".into(),
            group: "g".into(),
            store_identity: store.into(),
            address: BrokerAddress {
                listen: format!("{store}:1"),
                ha_listen: format!("{store}:2"),
            },
        };
        let mut answered = Vec::new();
        for (incarnation, store) in [(c.incarnation.wrapping_add(1), "a"), (c.incarnation, "z")] {
            let index = c.applied + 1;
            c.apply(
                Committed::Command {
                    index,
                    context: tag(c.id(), incarnation, sequence),
                    data: serde_json::to_vec(&other(store)).unwrap(),
                },
                &mut answered,
            );
        }
        assert!(
            answered.is_empty(),
            "no waiter gets another command's answer"
        );
        let (waiter, reply) = c.drive().unwrap().answered.pop().expect("its own entry");
        assert_eq!(waiter, 9);
        let id = BrokerIdentity::decode(&reply.body).unwrap().broker_id;
        let group = c.state.group("c", "g").unwrap();
        assert_eq!(group.stores["b"], id);
        assert_ne!(group.stores["a"], id, "two stores never share a broker id");
        assert_ne!(group.stores["z"], id);
    }

    #[test]
    fn forged_raft_messages_are_refused_without_a_panic() {
        use protobuf::Message as _;
        use raft::eraftpb::{Message, MessageType};
        let node = RaftNode::new(1, MemoryPersistence::new(&[1, 2, 3]), 0, (3, 4)).unwrap();
        let peers = (1..=3).map(|i| (i, format!("127.0.0.1:{i}"))).collect();
        let mut c: Lone = Controller::new(
            node,
            ControllerState::default(),
            0,
            peers,
            ElectionConfig::default(),
        );
        let message = |from: u64, to: u64, commit: u64| {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgHeartbeat);
            m.from = from;
            m.to = to;
            m.term = 5;
            m.commit = commit;
            m.write_to_bytes().unwrap()
        };
        // raft-rs's commit_to panics on a commit past the log's end.
        let past_end = c.step(2, &message(2, 1, 1_000), 0);
        assert!(past_end.unwrap_err().contains("our log ends at 0"));
        assert!(
            c.step(3, &message(2, 1, 0), 0).is_err(),
            "another sender inside"
        );
        assert!(
            c.step(2, &message(2, 3, 0), 0).is_err(),
            "for another controller"
        );
        assert!(c.step(9, &message(9, 1, 0), 0).is_err(), "not a member");
        assert!(c.step(2, b"garbage", 0).is_err());
        // A well-formed heartbeat from a member is taken.
        c.step(2, &message(2, 1, 0), 0).unwrap();
        assert_eq!(c.consensus.leader(), Some(2));
    }

    #[test]
    fn registrations_past_the_caps_are_refused() {
        let mut c = lone();
        for i in 0..MAX_BROKERS_PER_GROUP {
            register(&mut c, &format!("s{i}"));
        }
        let more = |c: &mut Lone, store: &str, group: &str| {
            ask(
                c,
                ControllerOpcode::RegisterBroker,
                body(&RegisterBroker {
                    cluster_name: "c".into(),
                    broker_name: group.into(),
                    store_identity: store.into(),
                    listen: "h:1".into(),
                    ha_listen: "h:2".into(),
                }),
                1_000,
            )
        };
        let full = more(&mut c, "one-more", "g");
        assert_eq!(full.status, Status::BadRequest);
        assert!(String::from_utf8_lossy(&full.body).contains("the most a group may have"));
        assert_eq!(
            more(&mut c, "s3", "g").status,
            Status::Ok,
            "a known store still is"
        );
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        assert_eq!(more(&mut c, "s", &long).status, Status::InvalidName);
        assert_eq!(more(&mut c, "", "g2").status, Status::InvalidName);
    }

    #[test]
    fn a_snapshot_that_does_not_decode_is_fatal_not_skipped() {
        let mut c = lone();
        let before = c.applied;
        let error = c.restore(50, b"not json").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert_eq!(c.applied, before, "nothing applied past it");
        let state = serde_json::to_vec(&ControllerState::default()).unwrap();
        c.restore(50, &state).unwrap();
        assert_eq!(c.applied, 50);
    }

    #[test]
    fn membership_changes_and_set_changes_are_validated() {
        let mut c = lone();
        let leader = ask(
            &mut c,
            ControllerOpcode::RemovePeer,
            body(&wire::RemovePeer { id: 1 }),
            1_000,
        );
        assert_eq!(leader.status, Status::BadRequest);
        assert!(String::from_utf8_lossy(&leader.body).contains("is the leader"));
        let member = ask(
            &mut c,
            ControllerOpcode::AddPeer,
            body(&wire::AddPeer {
                id: 1,
                addr: "h:1".into(),
            }),
            1_000,
        );
        assert_eq!(member.status, Status::BadRequest);

        let a = register(&mut c, "a");
        let b = register(&mut c, "b");
        heartbeat(&mut c, a, 1_000);
        let mut learner = BrokerHeartbeat {
            cluster_name: "c".into(),
            broker_name: "g".into(),
            broker_id: b,
            epoch: 0,
            end_offsets: vec![0],
            unclean_restart: 0,
            async_flush: 0,
            learner: 1,
            election_priority: 0,
            sent_at_ms: 1_000,
            ..BrokerHeartbeat::default()
        };
        ask(
            &mut c,
            ControllerOpcode::BrokerHeartbeat,
            body(&learner),
            1_000,
        );
        c.tick(2_500);
        c.drive().unwrap();
        learner.sent_at_ms = 2_500;
        ask(
            &mut c,
            ControllerOpcode::BrokerHeartbeat,
            body(&learner),
            2_500,
        );
        let master = heartbeat(&mut c, a, 2_500);
        assert_eq!(master.role, ROLE_MASTER, "the learner is never elected");
        let alter = ask(
            &mut c,
            ControllerOpcode::AlterSyncStateSet,
            body(&AlterSyncStateSet {
                cluster_name: "c".into(),
                broker_name: "g".into(),
                master_broker_id: a,
                master_epoch: master.master_epoch,
                sync_state_set_epoch: master.sync_state_set_epoch,
                new_sync_state_set: vec![a, b],
            }),
            2_500,
        );
        assert_eq!(alter.status, Status::BadRequest);
        assert!(String::from_utf8_lossy(&alter.body).contains("is a learner"));
    }

    #[test]
    fn a_follower_names_the_leader_and_an_uncommitted_change_times_out() {
        // Three voters, only this one running: it never leads, and says it knows no leader.
        let node = RaftNode::new(1, MemoryPersistence::new(&[1, 2, 3]), 0, (3, 4)).unwrap();
        let peers = (1..=3).map(|i| (i, format!("127.0.0.1:{i}"))).collect();
        let mut c: Lone = Controller::new(
            node,
            ControllerState::default(),
            0,
            peers,
            ElectionConfig::default(),
        );
        let reply = c
            .handle(
                ControllerOpcode::GetGroupState,
                &body(&GroupRef {
                    cluster_name: "c".into(),
                    broker_name: "g".into(),
                }),
                0,
                1,
            )
            .unwrap()
            .1;
        assert_eq!(reply.status, Status::NotLeader);
        assert!(String::from_utf8_lossy(&reply.body).contains("no majority"));
        let status = c
            .handle(ControllerOpcode::ControllerStatus, &[], 0, 1)
            .unwrap()
            .1;
        assert_eq!(status.status, Status::Ok, "any controller answers status");

        // A proposal that does not commit (the leader is not driven here, as if its
        // followers were gone): the waiter hears NO_QUORUM at the deadline, not never.
        let mut leader = lone();
        assert!(leader
            .handle(
                ControllerOpcode::RegisterBroker,
                &body(&RegisterBroker {
                    cluster_name: "c".into(),
                    broker_name: "g".into(),
                    store_identity: "s".into(),
                    listen: "h:1".into(),
                    ha_listen: "h:2".into(),
                }),
                1_000,
                9
            )
            .is_none());
        assert!(leader.tick(1_000 + PROPOSAL_TIMEOUT_MS - 1).is_empty());
        let expired = leader.tick(1_000 + PROPOSAL_TIMEOUT_MS);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].0, 9);
        assert_eq!(expired[0].1.status, Status::NoQuorum);
    }
}
