//! The controller's state machine: pure, no I/O, no clock of its own.
//!
//! Two halves, kept apart on purpose:
//! - [`ControllerState`] is *replicated*: every change is a [`Command`] committed through the
//!   Raft log and applied in log order on every controller, so each one holds the same broker
//!   ids, masters, epochs and SyncStateSets. [`ControllerState::apply`] is deterministic (no
//!   clock, no randomness) and refuses a command whose fence no longer holds, so a command
//!   decided on stale information (two elections proposed at once, a deposed master's
//!   SyncStateSet change) changes nothing.
//! - [`Liveness`] is *soft*: the heartbeats the leader has received, with the time it received
//!   them (passed in by the caller). A new leader starts with none and makes no election
//!   until it has listened for one silence period, so a controller failover never looks like a
//!   broker failure.
//!
//! [`decide_election`] joins them: given a group and what the leader has heard, it returns
//! the [`Command::ElectMaster`] to propose, if the master is lost and someone may replace it,
//! following the rules in `docs/controller.md` (issue 11, item 5).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Election and lease settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionConfig {
    /// A master not heard from for this long is lost. 2 s with brokers heartbeating every
    /// second: one late heartbeat does not cost a failover, and detection (2 s) plus the new
    /// master learning its role on its next heartbeat (at most 1 s) stays within the 3 s
    /// failover target.
    pub broker_silent_ms: u64,
    /// How long a master may acknowledge at lease-based levels after it *sent* the
    /// heartbeat that renewed it. At most [`max_lease_ms`]`(broker_silent_ms)`: the
    /// controller declares a master lost no earlier than `broker_silent_ms` after it
    /// *received* its last heartbeat, which was sent before, so the old lease has run out
    /// before a new master is elected; the margin covers clocks that run up to 10% apart and
    /// two ticks of the controller's own lateness (measured on monotonic clocks).
    pub lease_ms: u64,
    /// Elect outside the SyncStateSet when nobody in it is electable: available, but what
    /// only the lost members had is lost (recorded in the epoch history). Off by default.
    pub enable_elect_unclean_master: bool,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        ElectionConfig {
            broker_silent_ms: 2_000,
            lease_ms: max_lease_ms(2_000),
            enable_elect_unclean_master: false,
        }
    }
}

/// The longest lease safe with `broker_silent_ms`: 90% of it (clock rates 10% apart) less
/// two controller ticks. 1,600 ms for the default 2 s.
pub fn max_lease_ms(broker_silent_ms: u64) -> u64 {
    (broker_silent_ms / 10 * 9).saturating_sub(2 * crate::node::TICK_MS)
}

impl ElectionConfig {
    /// Refuses a lease that could outlive the silence after which a new master is elected.
    pub fn validate(&self) -> Result<(), String> {
        let max = max_lease_ms(self.broker_silent_ms);
        if self.lease_ms > max {
            return Err(format!(
                "--lease-ms {} is longer than {max} ms (90% of --broker-silent-ms {} less two 100 ms ticks): an old master could still hold its lease when a new one is elected",
                self.lease_ms, self.broker_silent_ms
            ));
        }
        if self.lease_ms == 0 {
            return Err("--lease-ms must be above 0".into());
        }
        Ok(())
    }
}

/// A broker's addresses as it registered them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerAddress {
    pub listen: String,
    pub ha_listen: String,
}

/// One shard's byte range an unclean election gave up: what the best-known member had past
/// the new master's end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostRange {
    pub shard: u16,
    pub from_offset: u64,
    pub to_offset: u64,
}

/// One master epoch of a group: who was elected, and whether it was an unclean election.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochEntry {
    pub epoch: u32,
    pub master_broker_id: u64,
    pub unclean: bool,
    pub lost: Vec<LostRange>,
    /// How the switch to this epoch went, when the leader that made it saw it through to the
    /// new master's first acknowledgement (or gave up waiting for one): none for a group's
    /// first master, and when a controller failover came in between.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<FailoverTimeline>,
}

/// The phases of one master switch, in ms from its start: the old master's last heartbeat
/// the leader received (a failover), or the resignation's arrival (a hand-over). The first
/// three are the leader's own clock; `promoted` and `first_ack` the new master's, measured
/// from the answer that named it and placed where the leader received the heartbeat that
/// answer went to (a read-index round, about one round trip between controllers, early).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverTimeline {
    /// `"failover"` (the master went silent) or `"handover"` (it resigned, a clean stop).
    pub kind: String,
    /// The leader found the master lost (`broker_silent_ms` of silence).
    pub detected_ms: u64,
    /// It proposed the election.
    pub decided_ms: u64,
    /// The election committed and applied on the leader.
    pub committed_ms: u64,
    /// The new master's next heartbeat arrived, to be answered with its role.
    pub role_sent_ms: u64,
    /// Every shard of the new master was master.
    pub promoted_ms: u64,
    /// The new master acknowledged its first produce; none if it acknowledged nothing within
    /// [`FIRST_ACK_WAIT_MS`] of its promotion.
    pub first_ack_ms: Option<u64>,
}

/// The timeline's phases in order, each a `<phase>_ms` field of [`FailoverTimeline`] (and a
/// `phase` label of `/metrics`).
pub const FAILOVER_PHASES: [&str; 6] = [
    "detected",
    "decided",
    "committed",
    "role_sent",
    "promoted",
    "first_ack",
];

/// How long after a promotion the leader waits for the new master's first acknowledgement
/// before it records the timeline without one (a group with no traffic).
pub const FIRST_ACK_WAIT_MS: u64 = 10_000;

/// How many epochs of history a group keeps: enough for `cluster status` to show the last
/// failovers, small enough that a snapshot of many groups stays small.
pub const EPOCH_HISTORY_KEPT: usize = 32;

/// Brokers report their log's last epoch packed as `term << 16 | generation` (the broker's
/// `replication::identity`); a master's term is exactly its master epoch.
pub const BROKER_GENERATION_BITS: u32 = 16;

/// A broker group's replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// 0: none.
    pub master_broker_id: u64,
    pub master_epoch: u32,
    pub sync_state_set_epoch: u32,
    pub sync_state_set: BTreeSet<u64>,
    /// Store identity → broker id: the compare-and-set table of `RegisterBroker`.
    pub stores: BTreeMap<String, u64>,
    pub brokers: BTreeMap<u64, BrokerAddress>,
    pub epoch_history: Vec<EpochEntry>,
}

/// Everything the controllers agree on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerState {
    /// The next broker id to hand out; ids are never reused, across groups too.
    pub next_broker_id: u64,
    /// cluster → group → record.
    pub clusters: BTreeMap<String, BTreeMap<String, GroupRecord>>,
    /// Controller id → `HOST:PORT`, changed with the Raft membership.
    pub peers: BTreeMap<u64, String>,
}

/// A change to [`ControllerState`], as it travels in the Raft log (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    RegisterBroker {
        cluster: String,
        group: String,
        store_identity: String,
        address: BrokerAddress,
    },
    /// Fenced by both epochs and the master's id.
    AlterSyncStateSet {
        cluster: String,
        group: String,
        master_broker_id: u64,
        master_epoch: u32,
        sync_state_set_epoch: u32,
        new_sync_state_set: BTreeSet<u64>,
    },
    /// Fenced by both epochs it was decided at: of two elections decided at one epoch, the
    /// first committed wins and the other changes nothing; and one decided before a
    /// SyncStateSet change that commits first changes nothing either (its winner and new set
    /// came from the old set), so the next tick decides again on the committed set.
    ElectMaster {
        cluster: String,
        group: String,
        expected_master_epoch: u32,
        expected_sync_state_set_epoch: u32,
        new_master_broker_id: u64,
        new_sync_state_set: BTreeSet<u64>,
        unclean: bool,
        lost: Vec<LostRange>,
        /// The new master epoch is at least this: one past the highest term any broker
        /// reported (a broker's epoch packs its term above [`BROKER_GENERATION_BITS`]), so
        /// the new master's term is one nobody opened. 0 in commands from before the field.
        #[serde(default)]
        min_master_epoch: u32,
    },
    /// The timeline of the switch to `epoch` (see [`FailoverTimeline`]): kept only by that
    /// epoch's entry, and only once.
    RecordFailover {
        cluster: String,
        group: String,
        epoch: u32,
        timeline: FailoverTimeline,
    },
    SetPeer {
        id: u64,
        addr: String,
    },
    RemovePeer {
        id: u64,
    },
}

/// Why a command changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("group {cluster}/{group} is unknown to the controller")]
    UnknownGroup { cluster: String, group: String },
    #[error("stale epochs: the group is at master epoch {master_epoch} (master {master_broker_id}) and SyncStateSet epoch {sync_state_set_epoch}")]
    StaleEpoch {
        master_broker_id: u64,
        master_epoch: u32,
        sync_state_set_epoch: u32,
    },
    #[error("invalid SyncStateSet: {0}")]
    InvalidSet(String),
    #[error("epoch {0} is not in the group's history, or has its timeline already")]
    NoSuchEpoch(u32),
}

/// What an applied command answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    BrokerId(u64),
    Group(GroupRecord),
    Peers,
}

impl ControllerState {
    pub fn group(&self, cluster: &str, group: &str) -> Option<&GroupRecord> {
        self.clusters.get(cluster)?.get(group)
    }

    /// Applies one committed command. Deterministic: every controller applying the same log
    /// reaches the same state and the same answers.
    pub fn apply(&mut self, command: &Command) -> Result<Applied, Refusal> {
        match command {
            Command::RegisterBroker {
                cluster,
                group,
                store_identity,
                address,
            } => Ok(Applied::BrokerId(self.register(
                cluster,
                group,
                store_identity,
                address,
            ))),
            Command::AlterSyncStateSet {
                cluster,
                group,
                master_broker_id,
                master_epoch,
                sync_state_set_epoch,
                new_sync_state_set,
            } => {
                let record = self.group_mut(cluster, group)?;
                if record.master_broker_id != *master_broker_id
                    || record.master_epoch != *master_epoch
                    || record.sync_state_set_epoch != *sync_state_set_epoch
                {
                    return Err(stale(record));
                }
                check_set(record, *master_broker_id, new_sync_state_set)?;
                record.sync_state_set = new_sync_state_set.clone();
                record.sync_state_set_epoch += 1;
                Ok(Applied::Group(record.clone()))
            }
            Command::ElectMaster {
                cluster,
                group,
                expected_master_epoch,
                expected_sync_state_set_epoch,
                new_master_broker_id,
                new_sync_state_set,
                unclean,
                lost,
                min_master_epoch,
            } => {
                let record = self.group_mut(cluster, group)?;
                if record.master_epoch != *expected_master_epoch
                    || record.sync_state_set_epoch != *expected_sync_state_set_epoch
                {
                    return Err(stale(record));
                }
                check_set(record, *new_master_broker_id, new_sync_state_set)?;
                record.master_broker_id = *new_master_broker_id;
                record.master_epoch = (record.master_epoch + 1).max(*min_master_epoch);
                record.sync_state_set = new_sync_state_set.clone();
                record.sync_state_set_epoch += 1;
                record.epoch_history.push(EpochEntry {
                    epoch: record.master_epoch,
                    master_broker_id: *new_master_broker_id,
                    unclean: *unclean,
                    lost: lost.clone(),
                    timeline: None,
                });
                let excess = record
                    .epoch_history
                    .len()
                    .saturating_sub(EPOCH_HISTORY_KEPT);
                record.epoch_history.drain(..excess);
                Ok(Applied::Group(record.clone()))
            }
            Command::RecordFailover {
                cluster,
                group,
                epoch,
                timeline,
            } => {
                let record = self.group_mut(cluster, group)?;
                let entry = record
                    .epoch_history
                    .iter_mut()
                    .find(|e| e.epoch == *epoch && e.timeline.is_none())
                    .ok_or(Refusal::NoSuchEpoch(*epoch))?;
                entry.timeline = Some(timeline.clone());
                Ok(Applied::Group(record.clone()))
            }
            Command::SetPeer { id, addr } => {
                self.peers.insert(*id, addr.clone());
                Ok(Applied::Peers)
            }
            Command::RemovePeer { id } => {
                self.peers.remove(id);
                Ok(Applied::Peers)
            }
        }
    }

    /// The compare-and-set of broker ids: a store identity already known keeps its id (its
    /// addresses are updated: a broker may move), a new one gets the next id.
    fn register(
        &mut self,
        cluster: &str,
        group: &str,
        store_identity: &str,
        address: &BrokerAddress,
    ) -> u64 {
        let next = &mut self.next_broker_id;
        let record = self
            .clusters
            .entry(cluster.to_string())
            .or_default()
            .entry(group.to_string())
            .or_default();
        let id = *record
            .stores
            .entry(store_identity.to_string())
            .or_insert_with(|| {
                *next += 1;
                *next
            });
        record.brokers.insert(id, address.clone());
        id
    }

    fn group_mut(&mut self, cluster: &str, group: &str) -> Result<&mut GroupRecord, Refusal> {
        self.clusters
            .get_mut(cluster)
            .and_then(|c| c.get_mut(group))
            .ok_or_else(|| Refusal::UnknownGroup {
                cluster: cluster.to_string(),
                group: group.to_string(),
            })
    }
}

fn stale(record: &GroupRecord) -> Refusal {
    Refusal::StaleEpoch {
        master_broker_id: record.master_broker_id,
        master_epoch: record.master_epoch,
        sync_state_set_epoch: record.sync_state_set_epoch,
    }
}

/// A SyncStateSet holds its master and only brokers registered in the group.
fn check_set(record: &GroupRecord, master: u64, set: &BTreeSet<u64>) -> Result<(), Refusal> {
    if !set.contains(&master) {
        return Err(Refusal::InvalidSet(format!(
            "it must contain the master {master}"
        )));
    }
    if let Some(unknown) = set.iter().find(|id| !record.brokers.contains_key(id)) {
        return Err(Refusal::InvalidSet(format!(
            "broker {unknown} is not registered in the group"
        )));
    }
    Ok(())
}

/// What a broker's last heartbeat said, and when the leader received it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerReport {
    pub received_at_ms: u64,
    pub epoch: u32,
    pub end_offsets: Vec<u64>,
    pub unclean_restart: bool,
    pub async_flush: bool,
    pub learner: bool,
    pub election_priority: u32,
    /// A master's view of its slaves' links (empty from anyone else).
    pub links: Vec<SlaveLinks>,
}

/// One slave as its master sees it, over the master's shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SlaveLinks {
    pub broker_id: u64,
    /// Shards with a link from it.
    pub linked_shards: u16,
    /// Shards where it caught up within `ha_max_time_slave_not_catchup_ms`.
    pub in_sync_shards: u16,
}

impl BrokerReport {
    /// A member that restarted uncleanly under ASYNC_FLUSH may have lost what it
    /// acknowledged; under SYNC_FLUSH it lost nothing it acknowledged.
    fn disqualified(&self) -> bool {
        self.unclean_restart && self.async_flush
    }
    fn total_end_offset(&self) -> u64 {
        self.end_offsets
            .iter()
            .fold(0u64, |a, b| a.saturating_add(*b))
    }
}

/// The leader's soft state: the last heartbeat of each broker, by broker id.
#[derive(Clone, Debug, Default)]
pub struct Liveness {
    /// When this controller became leader: no broker counts as lost before it has listened
    /// for one silence period.
    pub leader_since_ms: u64,
    pub reports: BTreeMap<u64, BrokerReport>,
}

impl Liveness {
    pub fn new(leader_since_ms: u64) -> Self {
        Liveness {
            leader_since_ms,
            reports: BTreeMap::new(),
        }
    }

    pub fn record(&mut self, broker_id: u64, report: BrokerReport) {
        self.reports.insert(broker_id, report);
    }

    pub fn is_alive(&self, broker_id: u64, now_ms: u64, config: &ElectionConfig) -> bool {
        self.reports
            .get(&broker_id)
            .is_some_and(|r| now_ms.saturating_sub(r.received_at_ms) < config.broker_silent_ms)
    }

    /// Whether the leader has listened long enough to call a silent broker lost.
    pub fn settled(&self, now_ms: u64, config: &ElectionConfig) -> bool {
        now_ms.saturating_sub(self.leader_since_ms) >= config.broker_silent_ms
    }
}

/// The election to propose for `record`, if it has no master, or its master is silent past
/// the limit or back from an unclean ASYNC_FLUSH restart, and someone may take over; see the module doc and
/// `docs/controller.md` for the order of the rules. `preferred` is a broker an operator
/// asked for (it wins among the eligible).
pub fn decide_election(
    cluster: &str,
    group: &str,
    record: &GroupRecord,
    liveness: &Liveness,
    now_ms: u64,
    config: &ElectionConfig,
    preferred: Option<u64>,
) -> Option<Command> {
    if record.brokers.is_empty() || !liveness.settled(now_ms, config) {
        return None;
    }
    let alive = |id: u64| liveness.is_alive(id, now_ms, config);
    let report = |id: u64| liveness.reports.get(&id);
    let master = record.master_broker_id;
    // A master that heartbeats stays master, after a clean or SYNC_FLUSH restart too. One
    // back from an unclean ASYNC_FLUSH restart may have lost what it acknowledged: it is
    // treated as lost (it reports so until it sees a master epoch newer than its store's,
    // so this decides once, not on every tick).
    if master != 0 && alive(master) && !report(master).is_some_and(|r| r.disqualified()) {
        return None;
    }
    let eligible = |id: u64, allow_disqualified: bool| {
        alive(id)
            && report(id).is_some_and(|r| !r.learner && (allow_disqualified || !r.disqualified()))
    };
    let pool: Vec<u64> = if record.master_epoch == 0 {
        // No master was ever elected: every registered broker is as good as any (a group
        // upgraded in place brings its data, which the ranking below weighs).
        record
            .brokers
            .keys()
            .copied()
            .filter(|id| eligible(*id, true))
            .collect()
    } else {
        let in_set: Vec<u64> = record
            .sync_state_set
            .iter()
            .copied()
            .filter(|id| eligible(*id, false))
            .collect();
        if !in_set.is_empty() {
            in_set
        } else if record.sync_state_set.iter().all(|id| alive(*id)) {
            // Every member of the last set is back (a total crash): the best of them, even
            // one that restarted uncleanly, never leaves the group without a master.
            record
                .sync_state_set
                .iter()
                .copied()
                .filter(|id| eligible(*id, true))
                .collect()
        } else if config.enable_elect_unclean_master {
            record
                .brokers
                .keys()
                .copied()
                .filter(|id| eligible(*id, true))
                .collect()
        } else {
            Vec::new()
        }
    };
    let winner = best_candidate(&pool, liveness, preferred)?;
    let unclean = record.master_epoch != 0 && !record.sync_state_set.contains(&winner);
    let mut new_set: BTreeSet<u64> = record
        .sync_state_set
        .iter()
        .copied()
        .filter(|id| *id != master && eligible(*id, false))
        .collect();
    new_set.insert(winner);
    let lost = if unclean {
        lost_ranges(record, liveness, winner)
    } else {
        Vec::new()
    };
    Some(Command::ElectMaster {
        cluster: cluster.to_string(),
        group: group.to_string(),
        expected_master_epoch: record.master_epoch,
        expected_sync_state_set_epoch: record.sync_state_set_epoch,
        new_master_broker_id: winner,
        new_sync_state_set: new_set,
        unclean,
        lost,
        min_master_epoch: min_master_epoch(liveness),
    })
}

/// A broker's term can be ahead of the record (a store from before controller mode, a term
/// opened by an older broker): an election opens a term past every one reported.
fn min_master_epoch(liveness: &Liveness) -> u32 {
    liveness
        .reports
        .values()
        .map(|r| (r.epoch >> BROKER_GENERATION_BITS).saturating_add(1))
        .max()
        .unwrap_or(0)
}

/// Why a hand-over ([`decide_handover`]) is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandoverRefused {
    /// The sender is not the group's master at the epoch it names (deposed, or the group
    /// moved on): nothing of it to hand over.
    Stale(String),
    /// The successor cannot take over.
    Ineligible(String),
}

/// The election a clean stop of `record`'s master asks for (`ResignMaster`): `successor`,
/// which the master saw hold its whole log on every shard, in a new epoch, with the master
/// out of the set (it rejoins once it is back and caught up). The successor must be an
/// alive member that an election could pick: in the set, not a learner, not disqualified.
/// Fenced by both epochs like every election, so it cannot undo a change committed since.
pub fn decide_handover(
    record: &GroupRecord,
    liveness: &Liveness,
    now_ms: u64,
    config: &ElectionConfig,
    request: &ringmq_protocol::controller::ResignMaster,
) -> Result<Command, HandoverRefused> {
    let (cluster, group) = (&request.cluster_name, &request.broker_name);
    let (broker_id, master_epoch) = (request.broker_id, request.master_epoch);
    let successor = request.successor_broker_id;
    if record.master_broker_id == 0
        || record.master_broker_id != broker_id
        || record.master_epoch != master_epoch
    {
        return Err(HandoverRefused::Stale(format!(
            "broker {broker_id} at master epoch {master_epoch} is not the master of {cluster}/{group} (master {} at epoch {})",
            record.master_broker_id, record.master_epoch
        )));
    }
    let ineligible = |why: &str| {
        Err(HandoverRefused::Ineligible(format!(
            "broker {successor} cannot take over {cluster}/{group}: {why}"
        )))
    };
    if successor == broker_id || !record.sync_state_set.contains(&successor) {
        return ineligible("it is not another member of the SyncStateSet");
    }
    if !liveness.is_alive(successor, now_ms, config) {
        return ineligible("the controllers have not heard from it within the silence limit");
    }
    match liveness.reports.get(&successor) {
        Some(r) if r.learner => return ineligible("it is a learner"),
        Some(r) if r.disqualified() => {
            return ineligible("it restarted uncleanly under ASYNC_FLUSH since it was last in sync")
        }
        _ => {}
    }
    let new_sync_state_set = record
        .sync_state_set
        .iter()
        .copied()
        .filter(|id| *id != broker_id)
        .collect();
    Ok(Command::ElectMaster {
        cluster: cluster.to_string(),
        group: group.to_string(),
        expected_master_epoch: record.master_epoch,
        expected_sync_state_set_epoch: record.sync_state_set_epoch,
        new_master_broker_id: successor,
        new_sync_state_set,
        unclean: false,
        lost: Vec::new(),
        min_master_epoch: min_master_epoch(liveness),
    })
}

/// The preferred broker if eligible, else the highest (epoch, end offsets), then the highest
/// election priority, then the lowest id (so every controller decides alike).
fn best_candidate(pool: &[u64], liveness: &Liveness, preferred: Option<u64>) -> Option<u64> {
    if let Some(p) = preferred.filter(|p| pool.contains(p)) {
        return Some(p);
    }
    pool.iter().copied().max_by(|a, b| {
        let (ra, rb) = (&liveness.reports[a], &liveness.reports[b]);
        (ra.epoch, ra.total_end_offset(), ra.election_priority)
            .cmp(&(rb.epoch, rb.total_end_offset(), rb.election_priority))
            .then(b.cmp(a))
    })
}

/// Lost ranges one epoch entry keeps (the first shards'): with [`EPOCH_HISTORY_KEPT`] entries
/// per group this bounds a group's history, and so the snapshot.
pub const LOST_RANGES_KEPT: usize = 8;

/// Per shard, what the last set's members last reported past the winner's end (the first
/// [`LOST_RANGES_KEPT`] shards that lost something).
fn lost_ranges(record: &GroupRecord, liveness: &Liveness, winner: u64) -> Vec<LostRange> {
    let Some(won) = liveness.reports.get(&winner) else {
        return Vec::new();
    };
    let mut lost = Vec::new();
    for (shard, from) in won.end_offsets.iter().enumerate() {
        let best = record
            .sync_state_set
            .iter()
            .filter_map(|id| liveness.reports.get(id)?.end_offsets.get(shard).copied())
            .max()
            .unwrap_or(0);
        if best > *from && lost.len() < LOST_RANGES_KEPT {
            lost.push(LostRange {
                shard: shard as u16,
                from_offset: *from,
                to_offset: best,
            });
        }
    }
    lost
}

/// The role the group's record gives `broker_id`, and a master's lease end in the broker's
/// clock (`sent_at_ms` + lease).
pub fn assigned_role(record: &GroupRecord, broker_id: u64) -> Role {
    if record.master_broker_id != 0 && record.master_broker_id == broker_id {
        Role::Master
    } else if record.master_broker_id != 0 && record.brokers.contains_key(&broker_id) {
        Role::Slave
    } else {
        Role::Fenced
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Fenced,
    Master,
    Slave,
}

#[cfg(test)]
mod tests;
