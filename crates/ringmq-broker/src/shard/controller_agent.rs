//! The controller agent: a broker in controller mode (`controller` set) registers with the
//! controllers, heartbeats to them every `controller_heartbeat_interval_ms`, and takes the
//! role, the lease and the SyncStateSet their answers give (docs/controller.md, "Brokers in
//! controller mode").
//!
//! Data flow. Shard 0 runs one task ([`run`]). The controller client
//! (`ringmq_client::controller::ControllerClient`, blocking) lives on one thread of its own
//! ([`ControlThread`]), so no shard thread ever waits on a controller: the task hands it a
//! request over a bounded channel and awaits the answer on a oneshot, with a deadline. Each
//! round the task
//!
//! 1. heartbeats with the shards' epochs and end offsets (from the previous round's reports);
//! 2. applies the answer: the view (epochs, set, lease, the master's address for NOT_MASTER)
//!    goes to every shard over the mesh, which answers with its own report (end offset, epoch,
//!    and per SyncStateSet candidate whether its link is caught up); then MASTER makes every
//!    shard a master at the controller's epoch, SLAVE makes every shard follow the master's HA
//!    address, FENCED takes the lease away (no role change: it is usually brief, an election
//!    under way). Role changes go through `Shard::change_role` on every shard, no restart;
//! 3. as master, reviews the SyncStateSet from the reports: a slave caught up on every shard
//!    within this term joins, a member behind or disconnected on some shard for
//!    `ha_max_time_slave_not_catchup_ms` leaves. The change is proposed with both epochs
//!    (`AlterSyncStateSet`); while it is pending every shard counts acknowledgements against
//!    the union of the old and the new set.
//!
//! Every shard keeps its [`ControllerState`]: the view shard 0 last sent, which the produce
//! path reads (a lease-based level needs an unexpired lease; a set smaller than
//! `min_in_sync_replicas` refuses `all`-level produce with IN_SYNC_REPLICAS_NOT_ENOUGH).
//! A broker starts fenced (every shard a slave of no master) until an answer says otherwise.

use super::completion::Event;
use super::handlers::cluster::{change_everywhere, local_status};
use super::mesh::ShardRequest;
use super::role::{MasterMode, RoleTarget};
use super::Shard;
use crate::protocol::controller::{
    AlterSyncStateSet, BrokerHeartbeat, GroupState, HeartbeatAnswer, RegisterBroker, ResignMaster,
    SlaveLinkState, NOT_YET, ROLE_FENCED, ROLE_MASTER, ROLE_SLAVE,
};
use crate::protocol::{Acks, MasterHint};
use crate::replication::identity::{
    describe_epoch, epoch_generation, epoch_term, GENERATION_BITS, MAX_GENERATION, MAX_TERM,
};
use crate::store::io::Disk;
use futures_channel::oneshot;
use futures_lite::future;
use glommio::timer::sleep;
use ringmq_client::controller::ControllerClient;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The broker id the controllers assigned this process (0 before registration): every
/// shard's slave link names it in its hello, so the master knows which member a link is.
/// Process-wide because it is fixed once registered and read by every shard thread.
static OWN_BROKER_ID: AtomicU64 = AtomicU64::new(0);

/// The broker id a slave link names in its hello: 0 outside controller mode and for an
/// `async_learner`, which must never be counted as a SyncStateSet member.
pub fn own_broker_id() -> u64 {
    OWN_BROKER_ID.load(Ordering::Relaxed)
}

/// The base of `sent_at_ms` and of the lease: a monotonic clock shared by every thread of
/// the process, so a lease computed from one heartbeat's send time means the same instant on
/// every shard.
fn monotonic_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn monotonic_ms() -> u64 {
    monotonic_base().elapsed().as_millis() as u64
}

/// How long the agent waits for one answer from the control thread: the client tries each
/// controller with its own 5 s timeout, but a lease runs out in 1.6 s; a round that waits
/// longer only delays the next heartbeat, so a slow exchange is abandoned (its answer is
/// dropped) and the next round asks again.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(1_500);
/// Requests queued for the control thread: one in flight and one waiting. A full queue means
/// the controllers are slow; the round skips rather than piles up stale heartbeats.
const CONTROL_QUEUE: usize = 1;
/// Per-controller connect, read and write timeout of the control thread's client: about one
/// lease, so a dead controller is skipped in time for the next one to renew it.
const CONTROLLER_TIMEOUT: Duration = Duration::from_millis(1_000);

/// What the broker registers with the controllers as, made by the server at start.
#[derive(Clone, Debug)]
pub struct ControllerIdentity {
    /// The store's own random broker id (`<store>/broker_id`), in decimal: what marks the
    /// store for good, so the controllers give it the same id after every restart.
    pub store_identity: String,
    /// Advertised client address.
    pub listen: String,
    /// Advertised HA address (what the other brokers follow when this one is master).
    pub ha_listen: String,
    /// Where the main thread asks for a clean stop's hand-over ([`Handover::run`]).
    pub handover: Arc<Handover>,
}

/// A clean stop's hand-over (`controller_handover_timeout_ms`): the main thread asks on
/// SIGTERM and waits; the agent on shard 0 does it between its heartbeat rounds and answers
/// (see [`hand_over`]).
#[derive(Debug, Default)]
pub struct Handover {
    /// The agent's wake-up, there once it registered: carries where to answer.
    wake: Mutex<Option<oneshot::Sender<mpsc::Sender<HandoverOutcome>>>>,
}

/// How a hand-over ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandoverOutcome {
    /// This broker was not the master (or had not registered): nothing to hand over.
    NotMaster,
    /// The controllers made `successor` master, `took` after the request.
    HandedOver { successor: u64, took: Duration },
    /// None within the bound, or the controllers refused: the broker stops anyway and the
    /// controllers elect once its silence passes their limit.
    Failed(String),
}

impl Handover {
    /// Asks the agent to hand over and waits for it at most `timeout` (the main thread, on
    /// SIGTERM, before the shards stop).
    pub fn run(&self, timeout: Duration) -> HandoverOutcome {
        let Some(wake) = self.wake.lock().ok().and_then(|mut w| w.take()) else {
            return HandoverOutcome::NotMaster;
        };
        let (done, outcome) = mpsc::channel();
        if wake.send(done).is_err() {
            return HandoverOutcome::NotMaster;
        }
        // The agent bounds its own work by `timeout`; the margin covers its last answer.
        outcome
            .recv_timeout(timeout + Duration::from_millis(500))
            .unwrap_or_else(|_| {
                HandoverOutcome::Failed(format!("no hand-over within {} ms", timeout.as_millis()))
            })
    }
}

/// What shard 0 last heard from the controllers, as every shard keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControllerView {
    pub broker_id: u64,
    pub master_broker_id: u64,
    pub master_epoch: u32,
    pub sync_state_set_epoch: u32,
    /// The committed SyncStateSet (the master included).
    pub sync_state_set: Vec<u64>,
    /// A change this master proposed and the controllers have not answered yet.
    pub pending_set: Option<Vec<u64>>,
    /// Until when this broker, as master, may acknowledge at lease-based levels.
    pub lease_until: Option<Instant>,
    /// The role the last answer gave (`ROLE_*`).
    pub role: u8,
    /// The controllers may elect outside the set (the last answer's `unclean_election`).
    pub unclean_election: bool,
    /// The agent decided this broker's unclean restart no longer matters (see
    /// `unclean_clears`): every shard drops its flag.
    pub clear_unclean: bool,
    /// This master is stopping and handing its group over: new produce is refused with
    /// NOT_MASTER (before the append), what is in flight completes.
    pub handing_over: bool,
}

impl ControllerView {
    /// The members an `all`-level produce waits for, the master excluded: the committed set,
    /// joined by a pending one (acks count against the larger of the two).
    pub fn required_others(&self) -> Vec<u64> {
        let mut members: BTreeSet<u64> = self.sync_state_set.iter().copied().collect();
        if let Some(pending) = &self.pending_set {
            members.extend(pending.iter().copied());
        }
        members.remove(&self.broker_id);
        members.into_iter().collect()
    }
}

/// One shard's controller-mode state (see the module docs).
#[derive(Default)]
pub struct ControllerState {
    view: RefCell<ControllerView>,
    /// The shard recovered from an unclean shutdown: reported to the controllers until a
    /// later SyncStateSet takes this broker in (then it holds what the set confirmed).
    unclean_restart: Cell<bool>,
    /// The shard's end when a hand-over began here: a record past it may have been appended
    /// after the report the successor was chosen on, so it is never acknowledged.
    handover_from: Cell<Option<u64>>,
    /// The master epoch and instant of this shard's first acknowledged produce in it: the
    /// failover timeline's last phase.
    first_ack: Cell<Option<(u32, Instant)>>,
    /// This shard's replication link to its master ended (the master stopped, or the link
    /// broke): on shard 0 the agent heartbeats at once instead of at the next interval, so
    /// a slave whose master handed over and exited learns the new master in one round trip.
    link_ended: Event,
}

impl ControllerState {
    pub fn view(&self) -> ControllerView {
        self.view.borrow().clone()
    }

    pub fn set_unclean_restart(&self, unclean: bool) {
        self.unclean_restart.set(unclean);
    }

    /// Whether a master may acknowledge at `acks` now (`every_member`: the broker's
    /// `all_ack_in_sync_state_set`). Never unless the controllers' last answer made it master
    /// (a FENCED answer, an election under way, stops every level). Then under an unexpired
    /// lease, at every level; and at `all` in strict mode without one, as long as the
    /// controllers elect only inside the set (their answers say so): every member confirmed
    /// what is acknowledged, a new master can only be a member, and a member that learned it
    /// is master (or follows one of a newer epoch) confirms nothing more of this one, so the
    /// set fences this master by itself and a majority of controllers down stops no `all`
    /// traffic. With `all_ack_in_sync_state_set = false` (some members only) or unclean
    /// elections possible, no member need hold what was acknowledged: the lease decides.
    pub fn may_acknowledge(&self, acks: Acks, every_member: bool, now: Instant) -> bool {
        let view = self.view.borrow();
        if view.role != ROLE_MASTER {
            return false;
        }
        self.leased(now) || (acks == Acks::All && every_member && !view.unclean_election)
    }

    /// A produce is being acknowledged at `now`: kept when it is the first in the view's
    /// master epoch.
    pub fn acknowledged(&self, now: Instant) {
        let epoch = self.view.borrow().master_epoch;
        if self.first_ack.get().is_none_or(|(e, _)| e != epoch) {
            self.first_ack.set(Some((epoch, now)));
        }
    }

    /// This shard's link to its master ended (see `link_ended`).
    pub fn link_ended(&self) {
        self.link_ended.notify();
    }

    /// Whether this master is handing its group over (a clean stop): new produce is refused.
    pub fn handing_over(&self) -> bool {
        self.view.borrow().handing_over
    }

    /// Whether a record ending at `end` was appended after a hand-over began on this shard
    /// (a produce that passed the check before it and appended after): never acknowledged,
    /// the successor need not hold it.
    pub fn appended_during_handover(&self, end: u64) -> bool {
        self.handover_from.get().is_some_and(|from| end > from)
    }

    /// Whether this broker holds an unexpired master lease.
    pub fn leased(&self, now: Instant) -> bool {
        let view = self.view.borrow();
        view.role == ROLE_MASTER && view.lease_until.is_some_and(|until| now < until)
    }

    /// The controller-mode gauges of `/metrics` and `ringmq stats` at `now`: the master epoch
    /// and SyncStateSet (size and epoch) of the controllers' last answer, whether it names
    /// this broker master, and the lease left (0 when none or expired).
    pub fn gauges(&self, now: Instant) -> [(&'static str, u64); 5] {
        let view = self.view.borrow();
        let lease_ms = view.lease_until.map_or(0, |until| {
            until.saturating_duration_since(now).as_millis() as u64
        });
        [
            ("controller_master_epoch", u64::from(view.master_epoch)),
            (
                "controller_is_master",
                u64::from(view.master_broker_id != 0 && view.master_broker_id == view.broker_id),
            ),
            (
                "controller_sync_state_set_size",
                view.sync_state_set.len() as u64,
            ),
            (
                "controller_sync_state_set_epoch",
                u64::from(view.sync_state_set_epoch),
            ),
            ("controller_lease_remaining_ms", lease_ms),
        ]
    }

    /// Whether a slave must neither follow nor acknowledge to a master whose log's last
    /// epoch is `master_last_epoch`: the controllers named a later master epoch (a term is
    /// exactly its master epoch in controller mode). Never outside controller mode (the
    /// view's epoch stays 0).
    pub fn fences_master(&self, master_last_epoch: u32) -> bool {
        self.view.borrow().master_epoch > epoch_term(master_last_epoch)
    }
}

/// A shard's answer to a view: what the next heartbeat and the set review need. Taken right
/// after the view's set was installed on the shard, in the same step: `end_offset` is then a
/// bound on everything the shard acknowledged under the previous set.
#[derive(Clone, Debug, Default)]
pub struct ShardReport {
    pub shard: usize,
    pub epoch: u32,
    pub end_offset: u64,
    /// The shard recovered from an unclean shutdown and the flag was not cleared yet.
    pub unclean_restart: bool,
    /// Per slave broker id linked to this shard.
    pub links: BTreeMap<u64, LinkReport>,
    /// The master epoch and instant of the shard's first acknowledgement in it.
    pub first_ack: Option<(u32, Instant)>,
}

/// One slave broker's links on one shard (a reconnecting slave may briefly have two).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkReport {
    /// The highest offset it acknowledged here.
    pub acked: u64,
    /// Caught up (Kafka's rule, `Replicas::report`) within the last
    /// `ha_max_time_slave_not_catchup_ms`.
    pub in_sync: bool,
    /// Caught up at least once since it connected (a fresh link's grace period is not
    /// evidence enough to admit it).
    pub has_caught_up: bool,
}

impl<D: Disk> Shard<D> {
    /// Takes shard 0's view and reports this shard's state (the mesh's `ControllerView`).
    pub fn apply_controller_view(&self, view: ControllerView) -> ShardReport {
        if let Some(replicas) = self.replicas() {
            replicas.set_required(
                view.required_others(),
                self.config().all_ack_in_sync_state_set,
            );
            // A smaller set may confirm more at once (down to this master alone, which
            // confirms all it holds): consumers see it now, not at the next append.
            self.publish_confirmed();
        }
        if view.clear_unclean {
            self.controller().unclean_restart.set(false);
        }
        let controller = self.controller();
        if view.handing_over && controller.handover_from.get().is_none() {
            // In the same step as the report below: its end covers every record before.
            controller
                .handover_from
                .set(Some(self.store().max_offset()));
        }
        *controller.view.borrow_mut() = view;
        self.controller_report()
    }

    fn controller_report(&self) -> ShardReport {
        let identity = self.role_state().identity();
        let end_offset = self.store().max_offset();
        let mut links: BTreeMap<u64, LinkReport> = BTreeMap::new();
        if let Some(replicas) = self.replicas() {
            let limit = Duration::from_millis(self.config().ha_max_time_slave_not_catchup_ms);
            let now = self.clock().now();
            for link in replicas.states().into_iter().filter(|l| l.broker_id != 0) {
                let entry = links.entry(link.broker_id).or_default();
                entry.acked = entry.acked.max(link.acked_offset);
                entry.in_sync |= now.saturating_duration_since(link.caught_up_at) < limit;
                entry.has_caught_up |= link.caught_up_at > link.connected_at;
            }
        }
        ShardReport {
            shard: self.id(),
            epoch: identity.last_epoch(),
            end_offset,
            unclean_restart: self.controller().unclean_restart.get(),
            links,
            first_ack: self.controller().first_ack.get(),
        }
    }
}

/// One request to the control thread, with where its answer goes.
enum ControlRequest {
    Register(RegisterBroker, oneshot::Sender<Result<u64, String>>),
    Heartbeat(
        BrokerHeartbeat,
        oneshot::Sender<Result<HeartbeatAnswer, String>>,
    ),
    Alter(
        AlterSyncStateSet,
        oneshot::Sender<Result<GroupState, String>>,
    ),
    Resign(ResignMaster, oneshot::Sender<Result<GroupState, String>>),
}

/// The thread that owns the blocking controller client.
struct ControlThread {
    requests: mpsc::SyncSender<ControlRequest>,
}

impl ControlThread {
    fn start(
        controllers: Vec<String>,
        secret: Option<ringmq_protocol::auth::Secret>,
    ) -> Result<ControlThread, String> {
        // The one place a broker constructs its controller client; with
        // `controller_secret_file` every connection to a controller proves itself first.
        let mut client = ControllerClient::new(controllers, CONTROLLER_TIMEOUT)
            .map_err(|e| format!("controller: {e}"))?;
        if let Some(secret) = secret {
            client = client.with_secret(secret);
        }
        let (requests, incoming) = mpsc::sync_channel::<ControlRequest>(CONTROL_QUEUE);
        std::thread::Builder::new()
            .name("controller-client".to_string())
            .spawn(move || {
                for request in incoming {
                    match request {
                        ControlRequest::Register(r, reply) => {
                            let _ =
                                reply.send(client.register_broker(&r).map_err(|e| e.to_string()));
                        }
                        ControlRequest::Heartbeat(h, reply) => {
                            let _ = reply.send(client.heartbeat(&h).map_err(|e| e.to_string()));
                        }
                        ControlRequest::Alter(a, reply) => {
                            let _ = reply
                                .send(client.alter_sync_state_set(&a).map_err(|e| e.to_string()));
                        }
                        ControlRequest::Resign(r, reply) => {
                            let _ = reply.send(client.resign_master(&r).map_err(|e| e.to_string()));
                        }
                    }
                }
            })
            .map_err(|e| format!("starting the controller client thread: {e}"))?;
        Ok(ControlThread { requests })
    }

    /// Sends one request and waits at most [`ANSWER_TIMEOUT`] for its answer.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> ControlRequest,
    ) -> Result<T, String> {
        let (reply, answer) = oneshot::channel();
        self.requests.try_send(make(reply)).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => {
                "the previous controller request is still running".to_string()
            }
            mpsc::TrySendError::Disconnected(_) => {
                "the controller client thread is gone".to_string()
            }
        })?;
        future::or(
            async {
                answer
                    .await
                    .unwrap_or_else(|_| Err("no answer".to_string()))
            },
            async {
                sleep(ANSWER_TIMEOUT).await;
                Err(format!(
                    "no answer within {} ms",
                    ANSWER_TIMEOUT.as_millis()
                ))
            },
        )
        .await
    }
}

/// What the agent remembers between rounds (shard 0 only).
struct Agent {
    thread: ControlThread,
    broker_id: u64,
    reports: Vec<ShardReport>,
    view: ControllerView,
    /// Per SyncStateSet member, since when it has had no link on some shard.
    bad_since: BTreeMap<u64, Instant>,
    /// A SyncStateSet change this master is making (see [`Proposal`]).
    pending: Option<Proposal>,
    /// The master epoch of the first answer this process heard, and whether some answer
    /// since showed a set without this broker (see [`unclean_clears`]).
    first_master_epoch: Option<u32>,
    excluded_seen: bool,
    failing: bool,
    warned_incomplete: bool,
    /// A clean stop's hand-over is under way or done (kept in every view from then on).
    handing_over: bool,
    /// This broker's last promotion, for the heartbeats' timeline fields.
    promotion: Option<PromotionTimes>,
}

/// When the answer that made this broker master at `master_epoch` arrived, and when every
/// shard was master after it.
#[derive(Clone, Copy, Debug)]
struct PromotionTimes {
    master_epoch: u32,
    named_at: Instant,
    promoted_at: Option<Instant>,
}

impl PromotionTimes {
    /// The heartbeat's `(promoted_epoch, promoted_in_ms, first_ack_in_ms)`: ms from the
    /// naming answer, [`NOT_YET`] for a phase still to come.
    fn heartbeat_fields(&self, reports: &[ShardReport]) -> (u32, u32, u32) {
        let since = |at: Instant| {
            u32::try_from(at.saturating_duration_since(self.named_at).as_millis())
                .unwrap_or(NOT_YET - 1)
        };
        let first_ack = reports
            .iter()
            .filter_map(|r| r.first_ack)
            .filter(|(epoch, _)| *epoch == self.master_epoch)
            .map(|(_, at)| at)
            .min();
        (
            self.master_epoch,
            self.promoted_at.map_or(NOT_YET, since),
            first_ack.map_or(NOT_YET, since),
        )
    }
}

/// A master's slaves over its shards' reports: per broker, the shards it is linked on and
/// those where it is in sync.
fn slave_links(reports: &[ShardReport]) -> Vec<SlaveLinkState> {
    let mut by_id: BTreeMap<u64, SlaveLinkState> = BTreeMap::new();
    for (id, link) in reports.iter().flat_map(|r| r.links.iter()) {
        let entry = by_id.entry(*id).or_insert_with(|| SlaveLinkState {
            broker_id: *id,
            ..SlaveLinkState::default()
        });
        entry.linked_shards = entry.linked_shards.saturating_add(1);
        entry.in_sync_shards = entry
            .in_sync_shards
            .saturating_add(u16::from(link.in_sync && link.has_caught_up));
    }
    by_id.into_values().collect()
}

/// A SyncStateSet change under way. From the moment it is made until a heartbeat answer
/// shows a newer set epoch (or another master epoch), every shard counts `all`-level
/// acknowledgements against the union of the committed set and `members`: an answer lost,
/// a resend refused as STALE_EPOCH or a timeout says nothing about whether the controllers
/// committed it.
#[derive(Clone, Debug)]
struct Proposal {
    master_epoch: u32,
    /// The set epoch the change is built on.
    base_set_epoch: u32,
    members: Vec<u64>,
    /// Members not in the committed set: each must hold, on every shard, that shard's end
    /// as of the moment the union was installed there (`targets`, by shard). Everything
    /// acknowledged before lies below it; everything after waits for the joiners too.
    joining: Vec<u64>,
    targets: Vec<u64>,
    /// Sent to the controllers at least once (a change with joiners waits for them first).
    sent: bool,
    since: Instant,
}

/// Whether a proposal still stands after an answer at these epochs: only while the
/// controllers show neither a newer set nor another master epoch.
fn proposal_survives(proposal: &Proposal, master_epoch: u32, set_epoch: u32) -> bool {
    master_epoch == proposal.master_epoch && set_epoch <= proposal.base_set_epoch
}

/// Whether every joiner holds its target on every shard (a report per shard, by shard).
fn joiners_hold(joining: &[u64], targets: &[u64], reports: &[ShardReport]) -> bool {
    reports.len() == targets.len()
        && reports.iter().zip(targets).all(|(report, target)| {
            joining.iter().all(|id| {
                report
                    .links
                    .get(id)
                    .is_some_and(|link| link.acked >= *target)
            })
        })
}

/// The epoch a promotion opens on every shard: exactly the controllers' `master_epoch` as
/// the term, so two masters never share one (the controllers elect past every term a
/// broker reports). A shard already in that term (this broker was master in it before a
/// restart) opens its next generation. Refused when a shard's log is past the master
/// epoch: its term would be another master's.
fn controller_epoch(
    master_epoch: u32,
    shard_epochs: impl IntoIterator<Item = u32>,
) -> Result<u32, String> {
    if master_epoch == 0 || master_epoch > MAX_TERM {
        return Err(format!(
            "master epoch {master_epoch} is outside the terms a log can hold (1 to {MAX_TERM})"
        ));
    }
    let mut generation = None;
    for epoch in shard_epochs {
        let term = epoch_term(epoch);
        if term > master_epoch {
            return Err(format!(
                "a shard's log is at term {term}, past the controllers' master epoch \
                 {master_epoch}"
            ));
        }
        if term == master_epoch {
            generation = generation.max(Some(epoch_generation(epoch)));
        }
    }
    match generation {
        None => Ok(master_epoch << GENERATION_BITS),
        Some(g) if g < MAX_GENERATION => Ok((master_epoch << GENERATION_BITS) | (g + 1)),
        Some(_) => Err(format!("every generation of term {master_epoch} is used")),
    }
}

/// Whether an unclean restart stops mattering with this answer: a set that takes this
/// broker back in after one that excluded it (the master admitted it once it held what the
/// set confirmed), or an election that made it master in a newer epoch than the one it
/// restarted into (the controllers chose it knowing the flag).
fn unclean_clears(
    own_id: u64,
    answer: &HeartbeatAnswer,
    first_master_epoch: u32,
    excluded_seen: bool,
) -> bool {
    if answer.role == ROLE_FENCED || !answer.sync_state_set.contains(&own_id) {
        return false;
    }
    excluded_seen
        || (answer.role == ROLE_MASTER
            && answer.master_broker_id == own_id
            && answer.master_epoch > first_master_epoch)
}

/// Runs the agent on shard 0 until the broker stops (see the module docs).
pub async fn run<D: Disk + 'static>(shard: Rc<Shard<D>>, identity: ControllerIdentity) {
    let config = shard.config().clone();
    let thread =
        match ControlThread::start(config.controller.clone(), config.controller_secret.clone()) {
            Ok(thread) => thread,
            Err(e) => {
                warn!("controller mode: {e}; this broker stays fenced");
                return;
            }
        };
    let interval = Duration::from_millis(config.controller_heartbeat_interval_ms);
    let register = RegisterBroker {
        cluster_name: config.cluster_name.clone(),
        broker_name: config.broker_name.clone(),
        store_identity: identity.store_identity,
        listen: identity.listen,
        ha_listen: identity.ha_listen,
    };
    let mut warned = false;
    let broker_id = loop {
        if shard.lifecycle().is_stopping() {
            return;
        }
        match thread
            .ask(|reply| ControlRequest::Register(register.clone(), reply))
            .await
        {
            Ok(id) => break id,
            Err(e) => {
                if !warned {
                    warn!("registering with the controllers failed: {e}; retrying (fenced until then)");
                    warned = true;
                }
                sleep(interval).await;
            }
        }
    };
    if !config.async_learner {
        OWN_BROKER_ID.store(broker_id, Ordering::Relaxed);
    }
    info!(broker_id, "registered with the controllers");
    let mut agent = Agent {
        thread,
        broker_id,
        reports: Vec::new(),
        view: ControllerView {
            broker_id,
            ..ControllerView::default()
        },
        bad_since: BTreeMap::new(),
        pending: None,
        first_master_epoch: None,
        excluded_seen: false,
        failing: false,
        warned_incomplete: false,
        handing_over: false,
        promotion: None,
    };
    agent.reports = broadcast(&shard, &agent.view).await;
    let (wake, asked) = oneshot::channel();
    if let Ok(mut slot) = identity.handover.wake.lock() {
        *slot = Some(wake);
    }
    // Raced against the wait between rounds until it fires once (or its sender is gone).
    let mut asked = Some(asked);
    while !shard.lifecycle().is_stopping() {
        let started = Instant::now();
        // Taken before the round: a link that ends during it shortens the next pause too.
        let link_ended = shard.controller().link_ended.listen();
        round(&shard, &mut agent).await;
        let wait = interval.saturating_sub(started.elapsed());
        let pause = future::or(sleep(wait), async {
            // Its sender lives in the shard: a dropped one (never) waits out the interval.
            if link_ended.await.is_err() {
                sleep(wait).await;
            }
        });
        let Some(waiting) = asked.as_mut() else {
            pause.await;
            continue;
        };
        let request = future::or(async { Some(waiting.await) }, async {
            pause.await;
            None
        })
        .await;
        if let Some(request) = request {
            asked = None;
            if let Ok(done) = request {
                let timeout = Duration::from_millis(config.controller_handover_timeout_ms);
                let _ = done.send(hand_over(&shard, &mut agent, timeout).await);
            }
        }
    }
}

/// How often a hand-over looks again for a member holding the whole log, and retries a
/// refused or unanswered resignation.
const HANDOVER_POLL: Duration = Duration::from_millis(5);

/// A clean stop's hand-over: refuse new produce everywhere, wait until a SyncStateSet member
/// acknowledged every shard's end, ask the controllers to elect it (`ResignMaster`), then
/// take their next answer at once, so every shard follows the successor and NOT_MASTER names
/// it. Bounded by `timeout` (`controller_handover_timeout_ms`). The successor learns its
/// role from its own next heartbeat, at most one interval later.
async fn hand_over<D: Disk + 'static>(
    shard: &Rc<Shard<D>>,
    agent: &mut Agent,
    timeout: Duration,
) -> HandoverOutcome {
    let started = Instant::now();
    if timeout.is_zero() || agent.view.role != ROLE_MASTER || !shard.is_master() {
        return HandoverOutcome::NotMaster;
    }
    let config = shard.config().clone();
    agent.handing_over = true;
    agent.view.handing_over = true;
    let master_epoch = agent.view.master_epoch;
    let interval = Duration::from_millis(config.controller_heartbeat_interval_ms);
    let mut last_round = Instant::now();
    let mut last_error = String::from("no SyncStateSet member acknowledged the whole log");
    while started.elapsed() < timeout {
        agent.reports = broadcast(shard, &agent.view).await;
        if agent.view.role != ROLE_MASTER || agent.view.master_epoch != master_epoch {
            return HandoverOutcome::Failed("the controllers moved the group on first".into());
        }
        if !any_member_linked(agent.broker_id, &agent.view.sync_state_set, &agent.reports) {
            // Nobody could catch up: waiting would only delay the stop.
            return HandoverOutcome::Failed(
                "no other SyncStateSet member is linked on every shard".into(),
            );
        }
        if let Some(successor) =
            holder_of_everything(agent.broker_id, &agent.view.sync_state_set, &agent.reports)
        {
            let request = ResignMaster {
                cluster_name: config.cluster_name.clone(),
                broker_name: config.broker_name.clone(),
                broker_id: agent.broker_id,
                master_epoch,
                successor_broker_id: successor,
            };
            match agent
                .thread
                .ask(|reply| ControlRequest::Resign(request, reply))
                .await
            {
                Ok(group) if group.master_broker_id == successor => {
                    // Follow the successor now rather than at the next round.
                    round(shard, agent).await;
                    return HandoverOutcome::HandedOver {
                        successor,
                        took: started.elapsed(),
                    };
                }
                Ok(group) => {
                    last_error = format!(
                        "the controllers kept broker {} master at epoch {}",
                        group.master_broker_id, group.master_epoch
                    );
                }
                Err(e) => last_error = e,
            }
        }
        if last_round.elapsed() >= interval {
            // Keeps the lease and the controllers' view fresh while a slave catches up.
            round(shard, agent).await;
            last_round = Instant::now();
        }
        sleep(HANDOVER_POLL).await;
    }
    HandoverOutcome::Failed(format!(
        "no hand-over within {} ms: {last_error}",
        timeout.as_millis()
    ))
}

/// Whether some other SyncStateSet member than `own` has a link on every shard of
/// `reports` (one that may still catch up).
fn any_member_linked(own: u64, set: &[u64], reports: &[ShardReport]) -> bool {
    set.iter()
        .filter(|id| **id != own)
        .any(|id| !reports.is_empty() && reports.iter().all(|r| r.links.contains_key(id)))
}

/// A SyncStateSet member other than `own` whose links acknowledged every shard's end in
/// `reports` (the lowest id of those): one that can take over without losing a record this
/// master stored, at any acknowledgement level.
fn holder_of_everything(own: u64, set: &[u64], reports: &[ShardReport]) -> Option<u64> {
    set.iter().copied().filter(|id| *id != own).find(|id| {
        !reports.is_empty()
            && reports.iter().all(|r| {
                r.links
                    .get(id)
                    .is_some_and(|link| link.acked >= r.end_offset)
            })
    })
}

/// Whether every shard answered; warns once per outage when not.
fn complete<D: Disk>(shard: &Shard<D>, agent: &mut Agent) -> bool {
    if agent.reports.len() == shard.shard_count() {
        agent.warned_incomplete = false;
        return true;
    }
    if !agent.warned_incomplete {
        warn!(
            answered = agent.reports.len(),
            shards = shard.shard_count(),
            "some shard did not report to the controller agent; no heartbeat until every one does"
        );
        agent.warned_incomplete = true;
    }
    false
}

async fn round<D: Disk + 'static>(shard: &Rc<Shard<D>>, agent: &mut Agent) {
    let config = shard.config().clone();
    if !complete(shard, agent) {
        // A heartbeat without every shard's epoch and end would mislead an election.
        agent.reports = broadcast(shard, &agent.view).await;
        if !complete(shard, agent) {
            return;
        }
    }
    let (promoted_epoch, promoted_in_ms, first_ack_in_ms) =
        agent.promotion.map_or((0, NOT_YET, NOT_YET), |p| {
            p.heartbeat_fields(&agent.reports)
        });
    let heartbeat = BrokerHeartbeat {
        cluster_name: config.cluster_name.clone(),
        broker_name: config.broker_name.clone(),
        broker_id: agent.broker_id,
        epoch: agent.reports.iter().map(|r| r.epoch).max().unwrap_or(0),
        end_offsets: agent.reports.iter().map(|r| r.end_offset).collect(),
        unclean_restart: u8::from(agent.reports.iter().any(|r| r.unclean_restart)),
        async_flush: u8::from(config.flush_disk_type == crate::config::FlushDiskType::AsyncFlush),
        learner: u8::from(config.async_learner),
        election_priority: config.broker_election_priority,
        sent_at_ms: monotonic_ms(),
        slave_links: if agent.view.role == ROLE_MASTER {
            slave_links(&agent.reports)
        } else {
            Vec::new()
        },
        promoted_epoch,
        promoted_in_ms,
        first_ack_in_ms,
    };
    let answer = match agent
        .thread
        .ask(|reply| ControlRequest::Heartbeat(heartbeat, reply))
        .await
    {
        Ok(answer) => {
            if agent.failing {
                info!("heartbeats reach the controllers again");
                agent.failing = false;
            }
            if answer.role == ROLE_MASTER
                && answer.master_broker_id == agent.broker_id
                && agent
                    .promotion
                    .is_none_or(|p| p.master_epoch != answer.master_epoch)
            {
                agent.promotion = Some(PromotionTimes {
                    master_epoch: answer.master_epoch,
                    named_at: Instant::now(),
                    promoted_at: None,
                });
            }
            answer
        }
        Err(e) => {
            if !agent.failing {
                warn!("heartbeat to the controllers failed: {e}; the lease runs out unless one succeeds");
                agent.failing = true;
            }
            agent.reports = broadcast(shard, &agent.view).await;
            return;
        }
    };
    apply(shard, agent, answer).await;
    if agent.view.role == ROLE_MASTER && shard.is_master() {
        review_sync_state_set(shard, agent).await;
    }
}

/// Takes one heartbeat answer: the view to every shard, then the role.
async fn apply<D: Disk + 'static>(
    shard: &Rc<Shard<D>>,
    agent: &mut Agent,
    mut answer: HeartbeatAnswer,
) {
    if answer.role == ROLE_MASTER && answer.master_broker_id != agent.broker_id {
        warn!(
            master_broker_id = answer.master_broker_id,
            own = agent.broker_id,
            "an answer made this broker master under another broker's id; taken as fenced"
        );
        answer.role = ROLE_FENCED;
    }
    let first = *agent.first_master_epoch.get_or_insert(answer.master_epoch);
    if !agent.view.clear_unclean
        && unclean_clears(agent.broker_id, &answer, first, agent.excluded_seen)
    {
        agent.view.clear_unclean = true;
    }
    if !answer.sync_state_set.contains(&agent.broker_id) {
        agent.excluded_seen = true;
    }
    let was_master =
        agent.view.role == ROLE_MASTER && agent.view.master_epoch == answer.master_epoch;
    if !was_master && answer.role == ROLE_MASTER {
        // A new term as master: every member starts with a full grace period.
        agent.bad_since.clear();
    }
    if agent
        .pending
        .as_ref()
        .is_some_and(|p| !proposal_survives(p, answer.master_epoch, answer.sync_state_set_epoch))
    {
        agent.pending = None;
    }
    let lease_until = (answer.role == ROLE_MASTER && answer.lease_expires_ms > 0)
        .then(|| monotonic_base().checked_add(Duration::from_millis(answer.lease_expires_ms)))
        .flatten();
    agent.view = ControllerView {
        broker_id: agent.broker_id,
        master_broker_id: answer.master_broker_id,
        master_epoch: answer.master_epoch,
        sync_state_set_epoch: answer.sync_state_set_epoch,
        sync_state_set: answer.sync_state_set.clone(),
        pending_set: agent.pending.as_ref().map(|p| p.members.clone()),
        lease_until,
        role: answer.role,
        unclean_election: answer.unclean_election != 0,
        clear_unclean: agent.view.clear_unclean,
        handing_over: agent.handing_over,
    };
    publish_master(shard, agent.broker_id, &answer).await;
    agent.reports = broadcast(shard, &agent.view).await;
    if !complete(shard, agent) {
        // No role change on a partial picture (a promotion needs every shard's term).
        return;
    }
    match answer.role {
        ROLE_MASTER => become_master(shard, agent, answer.master_epoch).await,
        ROLE_SLAVE => follow(shard, agent, &answer.master_ha_listen).await,
        _ => {}
    }
}

/// The master's client address and epoch for every shard's NOT_MASTER (none when this
/// broker is the master, or the group has none).
async fn publish_master<D: Disk>(shard: &Rc<Shard<D>>, own_id: u64, answer: &HeartbeatAnswer) {
    let hint = (answer.master_broker_id != 0
        && answer.master_broker_id != own_id
        && !answer.master_listen.is_empty())
    .then(|| MasterHint {
        listen: answer.master_listen.clone(),
        // The master's term is exactly the controllers' master epoch.
        epoch: answer.master_epoch.min(MAX_TERM) << GENERATION_BITS,
    });
    if shard.registration().master() == hint {
        return;
    }
    shard.registration().set_master(hint.clone());
    for other in (0..shard.shard_count()).filter(|s| *s != shard.id()) {
        let request = ShardRequest::MasterHint {
            master: hint.clone(),
            namesrv: shard.registration().namesrv(),
        };
        let _ = shard.mesh().send(other, request).await;
    }
}

/// Sends `view` to every shard and collects their reports (this shard's included), by
/// shard. Fewer than `shard_count` when some shard did not answer: callers skip what needs
/// every shard ([`complete`]).
async fn broadcast<D: Disk>(shard: &Rc<Shard<D>>, view: &ControllerView) -> Vec<ShardReport> {
    let mut reports = shard
        .ask_others(|reply| ShardRequest::ControllerView {
            view: Box::new(view.clone()),
            reply,
        })
        .await
        .unwrap_or_default();
    reports.push(shard.apply_controller_view(view.clone()));
    reports.sort_by_key(|r| r.shard);
    reports
}

/// MASTER: every shard not yet a master is promoted, opening exactly the controllers'
/// epoch as its term ([`controller_epoch`]); a master elected again in a later epoch re-opens
/// in it (slaves fence a master whose term is older than the controllers' epoch).
async fn become_master<D: Disk + 'static>(
    shard: &Rc<Shard<D>>,
    agent: &mut Agent,
    master_epoch: u32,
) {
    let all_masters = local_status(shard).role.ends_with("MASTER")
        && agent.reports.len() == shard.shard_count()
        && shard_roles_are_master(shard).await;
    let behind = agent
        .reports
        .iter()
        .any(|r| epoch_term(r.epoch) < master_epoch);
    if all_masters && !behind {
        if let Some(r) = agent
            .reports
            .iter()
            .find(|r| epoch_term(r.epoch) != master_epoch)
        {
            warn!(
                shard = r.shard,
                term = epoch_term(r.epoch),
                master_epoch,
                "a master shard's term is past the controllers' master epoch"
            );
        }
        mark_promoted(agent, master_epoch);
        return;
    }
    let epoch = match controller_epoch(master_epoch, agent.reports.iter().map(|r| r.epoch)) {
        Ok(epoch) => epoch,
        Err(e) => {
            warn!("controller mode: not becoming master: {e}; staying fenced");
            return;
        }
    };
    let started = Instant::now();
    match change_everywhere(
        shard,
        RoleTarget::Master {
            mode: MasterMode::Sync,
            epoch: Some(epoch),
        },
    )
    .await
    {
        Ok(()) => {
            info!(
                master_epoch,
                term_generation = %describe_epoch(epoch),
                took_ms = started.elapsed().as_millis() as u64,
                "{}",
                if all_masters {
                    "the controllers elected this master again: re-opened in their epoch"
                } else {
                    "the controllers made this broker the master"
                }
            );
            mark_promoted(agent, master_epoch);
            agent.reports = broadcast(shard, &agent.view).await;
        }
        Err(e) => warn!("becoming master failed: {e}; the next heartbeat retries"),
    }
}

/// Every shard is master in `master_epoch`: the promotion's time, kept once.
fn mark_promoted(agent: &mut Agent, master_epoch: u32) {
    if let Some(p) = agent
        .promotion
        .as_mut()
        .filter(|p| p.master_epoch == master_epoch && p.promoted_at.is_none())
    {
        p.promoted_at = Some(Instant::now());
    }
}

async fn shard_roles_are_master<D: Disk>(shard: &Rc<Shard<D>>) -> bool {
    match shard
        .ask_others(|reply| ShardRequest::ClusterState { reply })
        .await
    {
        Ok(others) => others.iter().all(|s| s.role.ends_with("MASTER")),
        Err(_) => false,
    }
}

/// SLAVE: every shard follows the master's HA address (a shard already following it keeps
/// its link).
async fn follow<D: Disk + 'static>(shard: &Rc<Shard<D>>, agent: &Agent, master_ha: &str) {
    let Some(master) = resolve(master_ha) else {
        warn!(
            master_ha,
            "the controllers named a master HA address that does not resolve"
        );
        return;
    };
    let following = |status: &crate::protocol::admin::ShardStatus| {
        status
            .master_link
            .as_ref()
            .is_some_and(|l| l.master == master.to_string())
    };
    let everyone = match shard
        .ask_others(|reply| ShardRequest::ClusterState { reply })
        .await
    {
        Ok(others) => others.iter().all(following) && following(&local_status(shard)),
        Err(_) => return,
    };
    if everyone {
        return;
    }
    match change_everywhere(shard, RoleTarget::Slave(master)).await {
        Ok(()) => info!(
            %master,
            master_broker_id = agent.view.master_broker_id,
            master_epoch = agent.view.master_epoch,
            "the controllers made this broker a slave"
        ),
        Err(e) => warn!("following the master at {master} failed: {e}; the next heartbeat retries"),
    }
}

fn resolve(addr: &str) -> Option<SocketAddr> {
    addr.to_socket_addrs().ok()?.next()
}

/// The master's review of its SyncStateSet from the shards' reports (see the module docs).
async fn review_sync_state_set<D: Disk>(shard: &Rc<Shard<D>>, agent: &mut Agent) {
    if agent.reports.len() != shard.shard_count() {
        return;
    }
    let limit = Duration::from_millis(shard.config().ha_max_time_slave_not_catchup_ms);
    let Some(mut proposal) = agent.pending.take() else {
        propose(shard, agent).await;
        return;
    };
    if !proposal.sent {
        if joiners_hold(&proposal.joining, &proposal.targets, &agent.reports) {
            proposal.sent = true;
        } else if proposal.since.elapsed() >= limit {
            // Never sent: the controllers never saw it, so the union can go.
            info!(joining = ?proposal.joining, "a joining member did not catch up in time; the SyncStateSet stays");
            agent.view.pending_set = None;
            agent.reports = broadcast(shard, &agent.view).await;
            return;
        } else {
            agent.pending = Some(proposal);
            return;
        }
    }
    send_alter(shard, agent, proposal).await;
}

/// Decides a change from the reports; installs the union on every shard before anything
/// else, then sends it once its joiners hold what was acknowledged before.
async fn propose<D: Disk>(shard: &Rc<Shard<D>>, agent: &mut Agent) {
    let now = Instant::now();
    let limit = Duration::from_millis(shard.config().ha_max_time_slave_not_catchup_ms);
    let members: BTreeSet<u64> = agent.view.sync_state_set.iter().copied().collect();
    let candidates: BTreeSet<u64> = agent
        .reports
        .iter()
        .flat_map(|r| r.links.keys().copied())
        .collect();
    let mut next = members.clone();
    for id in candidates.iter().filter(|id| !members.contains(id)) {
        let caught_up = agent.reports.iter().all(|r| {
            r.links
                .get(id)
                .is_some_and(|l| l.in_sync && l.has_caught_up)
        });
        if caught_up {
            next.insert(*id);
        }
    }
    for id in members.iter().filter(|id| **id != agent.broker_id) {
        let links: Vec<Option<&LinkReport>> =
            agent.reports.iter().map(|r| r.links.get(id)).collect();
        // Behind already means "not caught up for ha_max_time_slave_not_catchup_ms".
        if links.iter().any(|l| l.is_some_and(|l| !l.in_sync)) {
            next.remove(id);
            continue;
        }
        if links.iter().all(Option::is_some) {
            agent.bad_since.remove(id);
            continue;
        }
        let since = *agent.bad_since.entry(*id).or_insert(now);
        if now.saturating_duration_since(since) >= limit {
            next.remove(id);
        }
    }
    next.insert(agent.broker_id);
    if next == members {
        return;
    }
    let joining: Vec<u64> = next.difference(&members).copied().collect();
    let proposal_members: Vec<u64> = next.into_iter().collect();
    // Counted against the union from now on; each shard's report is taken right after it
    // installed the union, so its end bounds everything acknowledged under the old set.
    agent.view.pending_set = Some(proposal_members.clone());
    agent.reports = broadcast(shard, &agent.view).await;
    if agent.reports.len() != shard.shard_count() {
        agent.view.pending_set = None;
        agent.reports = broadcast(shard, &agent.view).await;
        return;
    }
    let targets: Vec<u64> = agent.reports.iter().map(|r| r.end_offset).collect();
    let mut proposal = Proposal {
        master_epoch: agent.view.master_epoch,
        base_set_epoch: agent.view.sync_state_set_epoch,
        members: proposal_members,
        sent: false,
        since: now,
        joining,
        targets,
    };
    if !joiners_hold(&proposal.joining, &proposal.targets, &agent.reports) {
        agent.pending = Some(proposal);
        return;
    }
    proposal.sent = true;
    send_alter(shard, agent, proposal).await;
}

/// Sends the proposal; only the controllers' answer ends it here (a failure keeps it and
/// the union until a heartbeat shows a newer set epoch, and the next round sends it again).
async fn send_alter<D: Disk>(shard: &Rc<Shard<D>>, agent: &mut Agent, proposal: Proposal) {
    let config = shard.config();
    let alter = AlterSyncStateSet {
        cluster_name: config.cluster_name.clone(),
        broker_name: config.broker_name.clone(),
        master_broker_id: agent.broker_id,
        master_epoch: proposal.master_epoch,
        sync_state_set_epoch: proposal.base_set_epoch,
        new_sync_state_set: proposal.members.clone(),
    };
    match agent
        .thread
        .ask(|reply| ControlRequest::Alter(alter, reply))
        .await
    {
        Ok(state) if state.sync_state_set_epoch > proposal.base_set_epoch => {
            info!(
                old = ?agent.view.sync_state_set,
                new = ?state.sync_state_set,
                sync_state_set_epoch = state.sync_state_set_epoch,
                "the SyncStateSet changed"
            );
            agent.view.sync_state_set = state.sync_state_set;
            agent.view.sync_state_set_epoch = state.sync_state_set_epoch;
            agent.view.pending_set = None;
            agent
                .bad_since
                .retain(|id, _| agent.view.sync_state_set.contains(id));
            agent.reports = broadcast(shard, &agent.view).await;
        }
        Ok(state) => {
            warn!(proposal = ?proposal.members, sync_state_set_epoch = state.sync_state_set_epoch, "the controllers answered a SyncStateSet change with no newer set; kept until a heartbeat shows one");
            agent.pending = Some(proposal);
        }
        Err(e) => {
            warn!(proposal = ?proposal.members, "proposing a SyncStateSet change failed: {e}; kept (and counted) until a heartbeat shows a newer set");
            agent.pending = Some(proposal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proposal(master_epoch: u32, base_set_epoch: u32) -> Proposal {
        Proposal {
            master_epoch,
            base_set_epoch,
            members: vec![1, 2, 3],
            joining: vec![2],
            targets: vec![100, 200],
            sent: true,
            since: Instant::now(),
        }
    }

    fn report(shard: usize, links: &[(u64, u64)]) -> ShardReport {
        ShardReport {
            shard,
            links: links
                .iter()
                .map(|(id, acked)| {
                    (
                        *id,
                        LinkReport {
                            acked: *acked,
                            in_sync: true,
                            has_caught_up: true,
                        },
                    )
                })
                .collect(),
            ..ShardReport::default()
        }
    }

    /// The heartbeat's view of the slaves counts, per broker, the shards it is linked on and
    /// those where it is in sync (caught up lately and at least once since it connected).
    #[test]
    fn slave_links_count_linked_and_in_sync_shards_per_broker() {
        let mut behind = report(1, &[(7, 10), (8, 10)]);
        behind.links.get_mut(&7).unwrap().in_sync = false;
        behind.links.get_mut(&8).unwrap().has_caught_up = false;
        let reports = [report(0, &[(7, 5), (8, 5), (9, 5)]), behind];
        let links = slave_links(&reports);
        let counts: Vec<(u64, u16, u16)> = links
            .iter()
            .map(|l| (l.broker_id, l.linked_shards, l.in_sync_shards))
            .collect();
        assert_eq!(counts, [(7, 2, 1), (8, 2, 1), (9, 1, 1)]);
    }

    /// A promotion's phases are reported from the answer that named the master, the first
    /// ack being the earliest of any shard in that epoch; those of other epochs do not count.
    #[test]
    fn a_promotion_reports_its_phases_from_the_naming_answer() {
        let named_at = Instant::now();
        let mut promotion = PromotionTimes {
            master_epoch: 3,
            named_at,
            promoted_at: None,
        };
        let acked = |shard, epoch, after_ms| ShardReport {
            first_ack: Some((epoch, named_at + Duration::from_millis(after_ms))),
            ..report(shard, &[])
        };
        assert_eq!(promotion.heartbeat_fields(&[]), (3, NOT_YET, NOT_YET));
        promotion.promoted_at = Some(named_at + Duration::from_millis(12));
        let reports = [acked(0, 2, 1), report(1, &[])];
        assert_eq!(promotion.heartbeat_fields(&reports), (3, 12, NOT_YET));
        let reports = [acked(0, 3, 40), acked(1, 3, 25)];
        assert_eq!(promotion.heartbeat_fields(&reports), (3, 12, 25));
    }

    /// A successor must have acknowledged every shard's end; a member without a link on
    /// some shard can never catch up there.
    #[test]
    fn a_hand_over_names_only_a_member_holding_every_shards_end() {
        let ended = |shard, end, links: &[(u64, u64)]| ShardReport {
            end_offset: end,
            ..report(shard, links)
        };
        let set = [1, 2, 3];
        let behind = [
            ended(0, 100, &[(2, 100), (3, 90)]),
            ended(1, 50, &[(2, 40), (3, 50)]),
        ];
        assert_eq!(holder_of_everything(1, &set, &behind), None);
        assert!(any_member_linked(1, &set, &behind));
        let caught_up = [
            ended(0, 100, &[(2, 100), (3, 100)]),
            ended(1, 50, &[(2, 40), (3, 50)]),
        ];
        assert_eq!(holder_of_everything(1, &set, &caught_up), Some(3));
        assert_eq!(
            holder_of_everything(1, &[1, 2], &caught_up),
            None,
            "only members count"
        );
        assert_eq!(
            holder_of_everything(3, &set, &caught_up),
            None,
            "not itself"
        );
        let half_linked = [ended(0, 100, &[(2, 100)]), ended(1, 50, &[(3, 50)])];
        assert!(!any_member_linked(1, &set, &half_linked));
        assert!(!any_member_linked(1, &set, &[]));

        let state = ControllerState::default();
        assert!(!state.appended_during_handover(u64::MAX), "no hand-over");
        state.handover_from.set(Some(100));
        assert!(!state.appended_during_handover(100));
        assert!(state.appended_during_handover(101));
    }

    /// The term is exactly the controllers' master epoch; a shard already in it (a master
    /// restarted into its own epoch) takes the next generation; a shard past it refuses.
    #[test]
    fn a_promotion_opens_exactly_the_master_epoch() {
        let term = |t: u32, g: u32| (t << GENERATION_BITS) | g;
        assert_eq!(
            controller_epoch(5, [term(2, 0), term(4, 3)]),
            Ok(term(5, 0))
        );
        assert_eq!(
            controller_epoch(5, [term(5, 0), term(5, 2), term(3, 0)]),
            Ok(term(5, 3))
        );
        assert!(controller_epoch(5, [term(6, 0), term(1, 0)]).is_err());
        assert!(controller_epoch(0, [0]).is_err());
        assert!(controller_epoch(5, [term(5, MAX_GENERATION)]).is_err());
        assert!(controller_epoch(MAX_TERM + 1, [0]).is_err());
    }

    /// A proposal and its union stand through failed, lost or refused answers, until the
    /// controllers show a newer set or another master epoch.
    #[test]
    fn a_pending_set_stands_until_a_newer_set_epoch_is_seen() {
        let p = proposal(3, 7);
        assert!(proposal_survives(&p, 3, 7), "no news: the union stays");
        assert!(!proposal_survives(&p, 3, 8), "a newer set was committed");
        assert!(!proposal_survives(&p, 4, 7), "another term");
    }

    /// A joiner is admitted only when it holds, on every shard, the end that shard had when
    /// the union was installed, and only with a report from every shard.
    #[test]
    fn joiners_must_hold_every_shards_target() {
        let p = proposal(1, 1);
        let both = [report(0, &[(2, 100)]), report(1, &[(2, 250)])];
        assert!(joiners_hold(&p.joining, &p.targets, &both));
        let behind = [report(0, &[(2, 100)]), report(1, &[(2, 199)])];
        assert!(!joiners_hold(&p.joining, &p.targets, &behind));
        let missing_link = [report(0, &[(2, 100)]), report(1, &[(3, 900)])];
        assert!(!joiners_hold(&p.joining, &p.targets, &missing_link));
        assert!(
            !joiners_hold(&p.joining, &p.targets, &both[..1]),
            "a shard that did not report"
        );
    }

    /// The unclean flag clears when a set takes the broker back in after one without it, or
    /// when it is elected master in a newer epoch; not on any later set epoch that lists it.
    #[test]
    fn the_unclean_flag_clears_only_on_readmission_or_election() {
        let answer = |role, master, master_epoch, set: &[u64]| HeartbeatAnswer {
            role,
            master_broker_id: master,
            master_listen: String::new(),
            master_ha_listen: String::new(),
            master_epoch,
            sync_state_set_epoch: 1,
            sync_state_set: set.to_vec(),
            lease_expires_ms: 0,
            unclean_election: 0,
        };
        // The master admitted another slave: set epoch moved, this broker (2) listed all along.
        assert!(!unclean_clears(
            2,
            &answer(ROLE_SLAVE, 1, 3, &[1, 2, 3]),
            3,
            false
        ));
        assert!(unclean_clears(
            2,
            &answer(ROLE_SLAVE, 1, 3, &[1, 2]),
            3,
            true
        ));
        assert!(!unclean_clears(2, &answer(ROLE_SLAVE, 1, 3, &[1]), 3, true));
        assert!(unclean_clears(
            2,
            &answer(ROLE_MASTER, 2, 4, &[2]),
            3,
            false
        ));
        assert!(!unclean_clears(
            2,
            &answer(ROLE_MASTER, 2, 3, &[2]),
            3,
            false
        ));
        assert!(!unclean_clears(
            2,
            &answer(ROLE_FENCED, 0, 4, &[2]),
            3,
            true
        ));
    }

    /// A master acknowledges under its lease at every level, and at `all` in strict mode
    /// without it unless unclean elections are possible; nothing once fenced. A slave stops
    /// acknowledging a master of an older term once a newer master epoch is known.
    #[test]
    fn acknowledging_needs_the_lease_but_strict_all_and_slaves_fence_older_terms() {
        let state = ControllerState::default();
        let now = Instant::now();
        let later = now + Duration::from_secs(2);
        *state.view.borrow_mut() = ControllerView {
            broker_id: 1,
            master_epoch: 4,
            sync_state_set: vec![1, 2, 3],
            role: ROLE_MASTER,
            ..ControllerView::default()
        };
        // No lease yet (or none renewed): only strict `all`.
        assert!(state.may_acknowledge(Acks::All, true, now));
        assert!(!state.may_acknowledge(Acks::All, false, now));
        assert!(!state.may_acknowledge(Acks::Leader, true, now));
        state.view.borrow_mut().lease_until = Some(now + Duration::from_secs(1));
        for acks in [Acks::All, Acks::Leader] {
            assert!(state.may_acknowledge(acks, false, now));
            assert!(!state.may_acknowledge(acks, false, later));
        }
        assert!(state.may_acknowledge(Acks::All, true, later));
        // Unclean elections on: the set fences nothing, the lease decides.
        state.view.borrow_mut().unclean_election = true;
        assert!(state.may_acknowledge(Acks::All, true, now));
        assert!(!state.may_acknowledge(Acks::All, true, later));
        // Fenced (an election under way), lease or not: nothing.
        state.view.borrow_mut().unclean_election = false;
        state.view.borrow_mut().role = ROLE_FENCED;
        assert!(!state.may_acknowledge(Acks::All, true, now));
        assert!(!state.may_acknowledge(Acks::Leader, true, now));
        assert!(state.fences_master(3 << GENERATION_BITS | 9));
        assert!(!state.fences_master(4 << GENERATION_BITS));
        assert!(!ControllerState::default().fences_master(0));
    }
}
