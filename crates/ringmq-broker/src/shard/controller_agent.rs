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

use super::handlers::cluster::{change_everywhere, local_status};
use super::mesh::ShardRequest;
use super::role::{MasterMode, RoleTarget};
use super::Shard;
use crate::protocol::controller::{
    AlterSyncStateSet, BrokerHeartbeat, GroupState, HeartbeatAnswer, RegisterBroker, ROLE_FENCED,
    ROLE_MASTER, ROLE_SLAVE,
};
use crate::protocol::{Acks, MasterHint};
use crate::replication::identity::{epoch_term, promotion_epoch, GENERATION_BITS};
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
use std::sync::{mpsc, OnceLock};
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
}

impl ControllerState {
    pub fn view(&self) -> ControllerView {
        self.view.borrow().clone()
    }

    pub fn set_unclean_restart(&self, unclean: bool) {
        self.unclean_restart.set(unclean);
    }

    /// Whether a master may acknowledge at `acks` now: an `all`-level produce that waits for
    /// at least one other member is fenced by the set itself (a new master was one of them
    /// and stopped confirming when it was elected); anything else needs an unexpired lease.
    pub fn may_acknowledge(&self, acks: Acks, now: Instant) -> bool {
        let view = self.view.borrow();
        if acks == Acks::All && !view.required_others().is_empty() {
            return true;
        }
        view.lease_until.is_some_and(|until| now < until)
    }
}

/// A shard's answer to a view: what the next heartbeat and the set review need.
#[derive(Clone, Debug, Default)]
pub struct ShardReport {
    pub shard: usize,
    pub epoch: u32,
    pub end_offset: u64,
    /// Per slave broker id linked to this shard: (caught up within this term, behind for
    /// longer than `ha_max_time_slave_not_catchup_ms`).
    pub links: BTreeMap<u64, (bool, bool)>,
}

impl<D: Disk> Shard<D> {
    /// Takes shard 0's view and reports this shard's state (the mesh's `ControllerView`).
    pub fn apply_controller_view(&self, view: ControllerView) -> ShardReport {
        if let Some(replicas) = self.replicas() {
            replicas.set_required(
                view.required_others(),
                self.config().all_ack_in_sync_state_set,
            );
        }
        *self.controller().view.borrow_mut() = view;
        self.controller_report()
    }

    fn controller_report(&self) -> ShardReport {
        let identity = self.role_state().identity();
        let end_offset = self.store().max_offset();
        let mut links = BTreeMap::new();
        if let Some(replicas) = self.replicas() {
            let term_start = identity.epochs.last().map_or(0, |(_, start)| *start);
            let target = replicas.completions.released_offset().max(term_start);
            let limit = Duration::from_millis(self.config().ha_max_time_slave_not_catchup_ms);
            let now = self.clock().now();
            for link in replicas.states().into_iter().filter(|l| l.broker_id != 0) {
                let caught_up = link.acked_offset >= target.min(end_offset);
                let behind = link.acked_offset < end_offset
                    && now.saturating_duration_since(link.caught_up_at) >= limit;
                let entry = links.entry(link.broker_id).or_insert((false, true));
                entry.0 |= caught_up;
                entry.1 &= behind;
            }
        }
        ShardReport {
            shard: self.id(),
            epoch: identity.last_epoch(),
            end_offset,
            links,
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
}

/// The thread that owns the blocking controller client.
struct ControlThread {
    requests: mpsc::SyncSender<ControlRequest>,
}

impl ControlThread {
    fn start(controllers: Vec<String>) -> Result<ControlThread, String> {
        // The one place a broker constructs its controller client.
        let mut client = ControllerClient::new(controllers, CONTROLLER_TIMEOUT)
            .map_err(|e| format!("controller: {e}"))?;
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
    /// Per SyncStateSet member, since when it has been behind or disconnected on some shard.
    bad_since: BTreeMap<u64, Instant>,
    /// The answer's (master epoch, set epoch) when this process first heard one: the
    /// unclean-restart flag is cleared once a later set takes this broker in.
    first_epochs: Option<(u32, u32)>,
    failing: bool,
}

/// Runs the agent on shard 0 until the broker stops (see the module docs).
pub async fn run<D: Disk + 'static>(shard: Rc<Shard<D>>, identity: ControllerIdentity) {
    let config = shard.config().clone();
    let thread = match ControlThread::start(config.controller.clone()) {
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
        first_epochs: None,
        failing: false,
    };
    agent.reports = broadcast(&shard, &agent.view).await;
    while !shard.lifecycle().is_stopping() {
        let started = Instant::now();
        round(&shard, &mut agent).await;
        let spent = started.elapsed();
        sleep(interval.saturating_sub(spent)).await;
    }
}

async fn round<D: Disk + 'static>(shard: &Rc<Shard<D>>, agent: &mut Agent) {
    let config = shard.config().clone();
    let heartbeat = BrokerHeartbeat {
        cluster_name: config.cluster_name.clone(),
        broker_name: config.broker_name.clone(),
        broker_id: agent.broker_id,
        epoch: agent.reports.iter().map(|r| r.epoch).max().unwrap_or(0),
        end_offsets: agent.reports.iter().map(|r| r.end_offset).collect(),
        unclean_restart: u8::from(shard.controller().unclean_restart.get()),
        async_flush: u8::from(config.flush_disk_type == crate::config::FlushDiskType::AsyncFlush),
        learner: u8::from(config.async_learner),
        election_priority: config.broker_election_priority,
        sent_at_ms: monotonic_ms(),
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
    answer: HeartbeatAnswer,
) {
    let first = *agent
        .first_epochs
        .get_or_insert((answer.master_epoch, answer.sync_state_set_epoch));
    if answer.role != ROLE_FENCED
        && answer.sync_state_set.contains(&agent.broker_id)
        && (answer.master_epoch, answer.sync_state_set_epoch) != first
    {
        shard.controller().unclean_restart.set(false);
    }
    let epochs_moved = (answer.master_epoch, answer.sync_state_set_epoch)
        != (agent.view.master_epoch, agent.view.sync_state_set_epoch);
    let was_master =
        agent.view.role == ROLE_MASTER && agent.view.master_epoch == answer.master_epoch;
    if !was_master && answer.role == ROLE_MASTER {
        // A new term as master: every member starts with a full grace period.
        agent.bad_since.clear();
    }
    agent.view = ControllerView {
        broker_id: agent.broker_id,
        master_broker_id: answer.master_broker_id,
        master_epoch: answer.master_epoch,
        sync_state_set_epoch: answer.sync_state_set_epoch,
        sync_state_set: answer.sync_state_set.clone(),
        pending_set: if epochs_moved {
            None
        } else {
            agent.view.pending_set.take()
        },
        lease_until: (answer.role == ROLE_MASTER && answer.lease_expires_ms > 0)
            .then(|| monotonic_base() + Duration::from_millis(answer.lease_expires_ms)),
        role: answer.role,
    };
    publish_master(shard, agent.broker_id, &answer).await;
    agent.reports = broadcast(shard, &agent.view).await;
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
        epoch: answer.master_epoch << GENERATION_BITS,
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

/// Sends `view` to every shard and collects their reports (this shard's included).
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

/// MASTER: every shard not yet a master is promoted, opening a term at least the
/// controller's epoch and past every term any shard has seen (so queue offsets continue from
/// the log's end and an epoch is never reused).
async fn become_master<D: Disk + 'static>(
    shard: &Rc<Shard<D>>,
    agent: &mut Agent,
    master_epoch: u32,
) {
    let all_masters = local_status(shard).role.ends_with("MASTER")
        && agent.reports.len() == shard.shard_count()
        && shard_roles_are_master(shard).await;
    if all_masters {
        return;
    }
    let seen = agent.reports.iter().map(|r| r.epoch);
    let Some(next) = promotion_epoch(seen) else {
        warn!("controller mode: every term an epoch can hold is used; staying fenced");
        return;
    };
    let wanted = master_epoch.min(crate::replication::identity::MAX_TERM) << GENERATION_BITS;
    let epoch = next.max(wanted);
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
                term = epoch_term(epoch),
                took_ms = started.elapsed().as_millis() as u64,
                "the controllers made this broker the master"
            );
            agent.reports = broadcast(shard, &agent.view).await;
        }
        Err(e) => warn!("becoming master failed: {e}; the next heartbeat retries"),
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
    if agent.view.pending_set.is_some() || agent.reports.len() != shard.shard_count() {
        return;
    }
    let now = Instant::now();
    let limit = Duration::from_millis(shard.config().ha_max_time_slave_not_catchup_ms);
    let members: BTreeSet<u64> = agent.view.sync_state_set.iter().copied().collect();
    let candidates: BTreeSet<u64> = agent
        .reports
        .iter()
        .flat_map(|r| r.links.keys().copied())
        .collect();
    let mut next = members.clone();
    for id in &candidates {
        let caught_up = agent
            .reports
            .iter()
            .all(|r| r.links.get(id).is_some_and(|(caught_up, _)| *caught_up));
        if caught_up && !members.contains(id) {
            next.insert(*id);
        }
    }
    for id in members.iter().filter(|id| **id != agent.broker_id) {
        let bad = agent
            .reports
            .iter()
            .any(|r| r.links.get(id).is_none_or(|(_, behind)| *behind));
        if !bad {
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
    let proposal: Vec<u64> = next.into_iter().collect();
    // Counted against the union from now until the controllers answer.
    agent.view.pending_set = Some(proposal.clone());
    agent.reports = broadcast(shard, &agent.view).await;
    let config = shard.config();
    let alter = AlterSyncStateSet {
        cluster_name: config.cluster_name.clone(),
        broker_name: config.broker_name.clone(),
        master_broker_id: agent.broker_id,
        master_epoch: agent.view.master_epoch,
        sync_state_set_epoch: agent.view.sync_state_set_epoch,
        new_sync_state_set: proposal.clone(),
    };
    let outcome = agent
        .thread
        .ask(|reply| ControlRequest::Alter(alter, reply))
        .await;
    agent.view.pending_set = None;
    match outcome {
        Ok(state) => {
            info!(
                old = ?members,
                new = ?state.sync_state_set,
                sync_state_set_epoch = state.sync_state_set_epoch,
                "the SyncStateSet changed"
            );
            agent.view.sync_state_set = state.sync_state_set;
            agent.view.sync_state_set_epoch = state.sync_state_set_epoch;
            agent
                .bad_since
                .retain(|id, _| agent.view.sync_state_set.contains(id));
        }
        Err(e) => warn!(proposal = ?proposal, "proposing a SyncStateSet change failed: {e}"),
    }
    agent.reports = broadcast(shard, &agent.view).await;
}
