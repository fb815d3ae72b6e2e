//! The role stage: whether this shard is a master (with its replicas) or a slave (with its
//! link to the master), the log identity, and the one function that changes the role.
//!
//! [`Shard::change_role`] is the only place the role changes: at runtime, on `cluster
//! promote` (slave to master) and `cluster demote` (master to slave of a given master), with no
//! restart (and `cluster demote` on a slave, to follow another master). The role stage also
//! holds the slave link's task, so a transition and a stop can end it and wait for it. Its
//! events, each notified only here: `changed` (the role changed or the link is being stopped:
//! the slave link stops, shippers re-check) and `links` (a replication link closed,
//! came up or reported: wakes shippers and reporters).

use super::completion::Event;
use super::error::ShardError;
use super::Shard;
use crate::config::BrokerRole;
use crate::replication::identity::{describe_epoch, epoch_term, promotion_epoch, LogIdentity};
use crate::replication::replicas::Replicas;
use crate::store::io::Disk;
use futures_channel::oneshot;
use glommio::sync::Semaphore;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How a master answers producers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterMode {
    /// SYNC_MASTER: OK only once enough slaves acknowledged.
    Sync,
    /// ASYNC_MASTER: OK on the local guarantee; slaves follow.
    Async,
}

impl MasterMode {
    pub fn broker_role(self) -> BrokerRole {
        match self {
            MasterMode::Sync => BrokerRole::SyncMaster,
            MasterMode::Async => BrokerRole::AsyncMaster,
        }
    }

    /// The mode of a master role; `None` for [`BrokerRole::Slave`].
    pub fn of(role: BrokerRole) -> Option<MasterMode> {
        match role {
            BrokerRole::SyncMaster => Some(MasterMode::Sync),
            BrokerRole::AsyncMaster => Some(MasterMode::Async),
            BrokerRole::Slave => None,
        }
    }
}

/// What each role has that the other has not.
pub enum Role {
    Master {
        mode: MasterMode,
        /// The slaves' links and the SYNC_MASTER producers waiting for them. A new one per
        /// term as master, so a link of an earlier term can tell it is stale.
        replicas: Rc<Replicas>,
    },
    Slave(Rc<SlaveLink>),
}

impl Role {
    pub fn broker_role(&self) -> BrokerRole {
        match self {
            Role::Master { mode, .. } => mode.broker_role(),
            Role::Slave(_) => BrokerRole::Slave,
        }
    }
}

/// A slave's link to its master, as the link task last saw it. A new one per master followed.
pub struct SlaveLink {
    /// The master's HA address; `None` when the configuration has no valid one (the shard
    /// then does not replicate).
    master: Option<SocketAddr>,
    /// Whether the link is streaming.
    streaming: Cell<bool>,
    /// The master's confirmed offset as last heard; bounds what consumers see here while the
    /// link streams.
    master_confirmed: Cell<u64>,
    /// The highest confirmed offset this slave's reporter sent to the master (or, after a
    /// restart, what this shard showed at its last checkpoint). A SYNC_MASTER answers OK only
    /// for offsets its slaves reported, and tells the slave so only in its next heartbeat: a
    /// master killed in between leaves `master_confirmed` below records producers were told
    /// are stored. While the link is down consumers see up to this figure as well.
    reported: Cell<u64>,
    /// Set when a role change or a stop ends this link: its task returns at its next step and
    /// nothing it still receives is applied.
    stopped: Cell<bool>,
    /// When the link last stopped streaming: a master heard this recently may still have
    /// live group members (see [`SlaveLink::master_may_be_live`]).
    lost_at: Cell<Option<Instant>>,
    /// The last epoch (packed) of the master this link streams from, as its welcome named
    /// it: controller mode stops acknowledging once the controllers name a later term.
    master_epoch: Cell<u32>,
}

impl SlaveLink {
    pub fn new(master: Option<SocketAddr>) -> SlaveLink {
        SlaveLink {
            master,
            streaming: Cell::new(false),
            master_confirmed: Cell::new(0),
            reported: Cell::new(0),
            stopped: Cell::new(false),
            lost_at: Cell::new(None),
            master_epoch: Cell::new(0),
        }
    }

    /// The master's last epoch, from its welcome (0 before the first handshake).
    pub fn master_epoch(&self) -> u32 {
        self.master_epoch.get()
    }

    pub fn set_master_epoch(&self, epoch: u32) {
        self.master_epoch.set(epoch);
    }

    pub fn master(&self) -> Option<SocketAddr> {
        self.master
    }

    pub fn is_streaming(&self) -> bool {
        self.streaming.get()
    }

    pub fn master_confirmed(&self) -> u64 {
        self.master_confirmed.get()
    }

    /// A link that starts out showing up to `offset` until its master says otherwise: what
    /// the shard showed before a restart (its identity's `replicated_offset`).
    pub fn starting_from(self, offset: u64) -> SlaveLink {
        self.reported.set(offset);
        self
    }

    /// The reporter sent `offset` to the master.
    pub fn record_reported(&self, offset: u64) {
        self.reported.set(self.reported.get().max(offset));
    }

    /// The log was cut back to `offset`: what was reported past it is gone.
    pub fn cut_reported(&self, offset: u64) {
        self.reported.set(self.reported.get().min(offset));
    }

    /// How far consumers may read here (before the local flush bound). Streaming, the master's
    /// word is current and final (a restarted master may confirm less than before). With the
    /// link down, also what this slave itself reported: the master may have answered OK for
    /// it without living to send the heartbeat that says so, and a producer told OK must
    /// find its message on the slave while the master is gone. The residual risk: a master
    /// that returns after a power loss with a shorter log cuts this slave back below what it
    /// showed (those records were never acknowledged by a SYNC_MASTER, only received here).
    pub fn visible_bound(&self) -> u64 {
        if self.is_streaming() {
            self.master_confirmed()
        } else {
            self.master_confirmed().max(self.reported.get())
        }
    }

    /// The handshake succeeded: the link streams from now on.
    pub fn established(&self) {
        self.streaming.set(true);
    }

    pub fn lost(&self, now: Instant) {
        if self.streaming.replace(false) {
            self.lost_at.set(Some(now));
        }
    }

    /// Whether the master this slave follows may still be serving: the link streams, or
    /// stopped streaming less than `grace` ago. Consumer group membership then belongs to
    /// the master alone, or a queue could have an owner on each broker.
    pub fn master_may_be_live(&self, now: Instant, grace: Duration) -> bool {
        self.is_streaming()
            || self
                .lost_at
                .get()
                .is_some_and(|at| now.saturating_duration_since(at) < grace)
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.get()
    }

    /// Records the master's confirmed offset; returns whether it moved. A master that
    /// restarted (or a new one) may confirm less than before: never show more than the current
    /// master confirms.
    fn set_master_confirmed(&self, offset: u64) -> bool {
        self.master_confirmed.replace(offset) != offset
    }
}

/// The role stage's state.
pub struct RoleState {
    role: RefCell<Role>,
    changed: Event,
    /// The log's id and epochs (see `replication::identity`).
    identity: RefCell<LogIdentity>,
    links: Event,
    /// The running slave link's task, so a role change and a stop can end it and wait until
    /// it no longer appends, truncates or reports.
    link_task: RefCell<Option<glommio::task::JoinHandle<()>>>,
    /// Serializes role transitions: one stops the link before it takes the gates, so the gates
    /// alone do not keep a second transition from starting a link in between.
    changing: Semaphore,
}

impl RoleState {
    pub fn new(role: Role, identity: LogIdentity) -> RoleState {
        RoleState {
            role: RefCell::new(role),
            changed: Event::default(),
            identity: RefCell::new(identity),
            links: Event::default(),
            link_task: RefCell::new(None),
            changing: Semaphore::new(1),
        }
    }

    /// Whether `link` is the link this slave follows now (and not being stopped): a link task
    /// re-checks this after every await before it changes the log or what consumers see.
    pub fn is_current(&self, link: &SlaveLink) -> bool {
        !link.is_stopped()
            && matches!(&*self.role.borrow(), Role::Slave(l) if std::ptr::eq(&**l, link))
    }

    pub fn broker_role(&self) -> BrokerRole {
        self.role.borrow().broker_role()
    }

    /// The role itself, borrowed: hold it only for a synchronous look, never across an await.
    pub fn role_ref(&self) -> std::cell::Ref<'_, Role> {
        self.role.borrow()
    }

    pub fn replicas(&self) -> Option<Rc<Replicas>> {
        match &*self.role.borrow() {
            Role::Master { replicas, .. } => Some(replicas.clone()),
            Role::Slave(_) => None,
        }
    }

    pub fn slave_link(&self) -> Option<Rc<SlaveLink>> {
        match &*self.role.borrow() {
            Role::Slave(link) => Some(link.clone()),
            Role::Master { .. } => None,
        }
    }

    pub fn identity(&self) -> LogIdentity {
        self.identity.borrow().clone()
    }

    /// The epoch this shard's log is in: a new one at every promotion and every restart.
    pub fn last_epoch(&self) -> u32 {
        self.identity.borrow().last_epoch()
    }

    /// Replaces the identity in memory (the caller has saved it).
    pub fn set_identity(&self, identity: LogIdentity) {
        *self.identity.borrow_mut() = identity;
    }

    /// Whether the shard is still a slave following `link` (stopped or not).
    fn is_following(&self, link: &SlaveLink) -> bool {
        matches!(&*self.role.borrow(), Role::Slave(l) if std::ptr::eq(&**l, link))
    }

    pub fn listen_changed(&self) -> oneshot::Receiver<()> {
        self.changed.listen()
    }

    /// A link closed, came up or reported.
    pub fn wake_links(&self) {
        self.links.notify();
    }

    pub fn listen_links(&self) -> oneshot::Receiver<()> {
        self.links.listen()
    }

    /// Slave: the master's confirmed offset as heard on `link`; returns whether it moved. A
    /// link that is no longer the current one is ignored: its master is not this slave's.
    pub fn set_master_confirmed(&self, link: &SlaveLink, offset: u64) -> bool {
        self.is_current(link) && link.set_master_confirmed(offset)
    }
}

/// The role a transition goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleTarget {
    /// Master in `mode`. A slave promoted opens `epoch` (packed, see
    /// `replication::identity`): `cluster promote` computes it once for every shard, so all
    /// of them open the same term; `None` opens the next term of this shard's own log. A
    /// shard that is already a master keeps its epoch, except in controller mode when
    /// `epoch` is of a later term: it re-opens in that term (`Shard::reopen_term`).
    Master {
        mode: MasterMode,
        epoch: Option<u32>,
    },
    /// Follow the master whose HA port is at this address.
    Slave(SocketAddr),
}

impl<D: Disk> Shard<D> {
    /// The one role transition. Runs with the append gate and the store gate held, so no
    /// produce batch and no flush straddles it:
    ///
    /// - slave to master (promotion): flush, open a new epoch at the end of the log (the
    ///   divergence point for a former master that rejoins), remember the role, start a new
    ///   term of replicas;
    /// - master to slave (demotion): fail the SYNC_MASTER producers still waiting for slaves
    ///   (their records were never confirmed), stop shipping (every link of the old term sees
    ///   it is stale), remember the role and the master, start the slave link; a divergent tail
    ///   is cut back by the link's handshake, as for any returning slave;
    /// - master to master of the other mode keeps its links; slave to slave of another master
    ///   replaces the link;
    /// - controller mode, master to master in a later term: the term is re-opened at the log's
    ///   end, the replicas (and their waiting producers) kept, the old term's links ended.
    ///
    /// Every parked pull is woken to look again: what is confirmed depends on the role.
    ///
    /// A slave's link is stopped, and its task waited for, before anything else: from then on
    /// nothing the old master ships is applied, so the promotion's epoch starts at the log's
    /// real end and no late truncation cuts the new master. If the transition fails, the link
    /// is started again.
    pub async fn change_role(self: &Rc<Self>, target: RoleTarget) -> Result<(), ShardError> {
        let _changing = self
            .role_state()
            .changing
            .acquire_permit(1)
            .await
            .expect("the role-change gate is never closed");
        // A stop has ended the link (or will): a link started now would outlive the flusher.
        if self.lifecycle().is_stopping() {
            return Err(ShardError::ShuttingDown);
        }
        let current = self.role_state().broker_role();
        if let RoleTarget::Slave(master) = target {
            if !current.is_master()
                && self.role_state().slave_link().and_then(|l| l.master()) == Some(master)
            {
                return Ok(());
            }
        }
        let stopped_link = self.stop_slave_link().await;
        let changed = self.change_role_stopped(target, current).await;
        if changed.is_ok() && !self.is_master() {
            // A slave coordinates no Kafka groups: their members find the master.
            self.kafka_groups()
                .abandon(crate::kafka::groups::code::NOT_COORDINATOR);
        }
        if changed.is_err() {
            if let Some(link) = stopped_link {
                // Still a slave of the same master: follow it again with a fresh link.
                if self.role_state().is_following(&link) {
                    self.start_slave_link_replacing(&link);
                }
            }
        }
        changed
    }

    async fn change_role_stopped(
        self: &Rc<Self>,
        target: RoleTarget,
        current: BrokerRole,
    ) -> Result<(), ShardError> {
        let _appends = self.appending().lock().await;
        let _store = self.flushing().lock_store().await;
        match target {
            RoleTarget::Master {
                mode,
                epoch: Some(epoch),
            } if current.is_master()
                && self.config().controller_mode()
                && epoch_term(epoch) > epoch_term(self.role_state().last_epoch()) =>
            {
                self.reopen_term(mode, epoch).await?
            }
            RoleTarget::Master { mode, .. } if current.is_master() => {
                let replicas = self.role_state().replicas().expect("a master has replicas");
                self.persist_role(mode.broker_role(), None).await?;
                *self.role_state().role.borrow_mut() = Role::Master { mode, replicas };
            }
            RoleTarget::Master { mode, epoch } => self.promote(mode, epoch).await?,
            RoleTarget::Slave(master) => {
                self.demote(master).await?;
                if let Some(link) = self.role_state().slave_link() {
                    self.start_slave_link(link);
                }
            }
        }
        self.role_state().changed.notify();
        self.role_state().wake_links();
        self.visibility().wake_all();
        self.publish_confirmed();
        info!(shard = self.id(), "now a {}", self.role());
        Ok(())
    }

    async fn promote(
        self: &Rc<Self>,
        mode: MasterMode,
        epoch: Option<u32>,
    ) -> Result<(), ShardError> {
        super::flushing::flush_holding_gate(self).await?;
        let end = self.store().max_offset();
        // Everything the old master confirmed stays visible; the rest waits for this master's
        // own guarantee (its flush, and under SYNC_MASTER its slaves).
        let confirmed = self
            .role_state()
            .slave_link()
            .map_or(0, |l| l.visible_bound())
            .min(end);
        let current = self.role_state().identity();
        if let (true, Some(epoch)) = (self.config().controller_mode(), epoch) {
            // Controller mode: exactly the controllers' epoch, so two masters never open one
            // term (see `controller_agent::controller_epoch`).
            if current.open_exact(epoch, end).is_none() {
                return Err(ShardError::Refused(format!(
                    "promotion: epoch {} is not past this log's last epoch {}",
                    describe_epoch(epoch),
                    describe_epoch(current.last_epoch())
                )));
            }
        }
        let epoch = epoch.or_else(|| promotion_epoch([current.last_epoch()]));
        let mut identity = epoch
            .and_then(|epoch| {
                if self.config().controller_mode() {
                    current.open_exact(epoch, end)
                } else {
                    current.open_term(epoch, end)
                }
            })
            .ok_or_else(|| {
                ShardError::Refused(format!(
                    "promotion: epoch {} is in the last term this log can hold",
                    describe_epoch(current.last_epoch())
                ))
            })?;
        identity.promoted_role = Some(mode.broker_role());
        identity.master_addr = None;
        // What this term starts from as acknowledged; a restart before the first checkpoint
        // must not start from an earlier term's value.
        identity.replicated_offset = confirmed;
        identity.save(self.disk(), self.dir()).await?;
        let epoch = identity.last_epoch();
        self.role_state().set_identity(identity);
        self.flushing()
            .reset_released(self.store().flushed_offset());
        let replicas = Rc::new(Replicas::new(
            self.config().min_in_sync_replicas,
            confirmed,
            self.clock().clone(),
        ));
        if self.config().controller_mode() {
            // The set the controllers committed: what `all` waits for from the first produce.
            let view = self.controller().view();
            replicas.set_required(
                view.required_others(),
                self.config().all_ack_in_sync_state_set,
            );
        } else if mode == MasterMode::Sync && replicas.needed() > 0 {
            warn!(
                shard = self.id(),
                "promoted to SYNC_MASTER: producers get SLAVE_NOT_AVAILABLE until a slave follows"
            );
        }
        *self.role_state().role.borrow_mut() = Role::Master { mode, replicas };
        info!(
            shard = self.id(),
            epoch,
            term_generation = %describe_epoch(epoch),
            epoch_start_offset = end,
            "promoted to {}",
            mode.broker_role()
        );
        Ok(())
    }

    /// Controller mode: the controllers elected this master again, in a later master epoch
    /// (slaves fence a master whose term is older than the controllers' epoch, so staying in
    /// the old term would leave it without a slave). It opens exactly that term at its log's
    /// end and keeps its replicas: producers waiting for slaves go on waiting, and are released
    /// by the slaves' acknowledgements in the new term (the bytes before the term's start are
    /// this log's, which a slave's handshake in the new term confirms). Every link of the old
    /// term ends (see `replication::master::ship`) and its slave reconnects into the new one.
    async fn reopen_term(self: &Rc<Self>, mode: MasterMode, epoch: u32) -> Result<(), ShardError> {
        super::flushing::flush_holding_gate(self).await?;
        let end = self.store().max_offset();
        let current = self.role_state().identity();
        let mut identity = current.open_exact(epoch, end).ok_or_else(|| {
            ShardError::Refused(format!(
                "re-opening the term: epoch {} is not past this log's last epoch {}",
                describe_epoch(epoch),
                describe_epoch(current.last_epoch())
            ))
        })?;
        identity.promoted_role = Some(mode.broker_role());
        identity.master_addr = None;
        identity.save(self.disk(), self.dir()).await?;
        self.role_state().set_identity(identity);
        if let Role::Master { mode: m, .. } = &mut *self.role_state().role.borrow_mut() {
            *m = mode;
        }
        info!(
            shard = self.id(),
            epoch,
            term_generation = %describe_epoch(epoch),
            epoch_start_offset = end,
            previous = %describe_epoch(current.last_epoch()),
            "re-opened as {} in a later term",
            mode.broker_role()
        );
        Ok(())
    }

    async fn demote(self: &Rc<Self>, master: SocketAddr) -> Result<(), ShardError> {
        super::flushing::flush_holding_gate(self).await?;
        self.persist_role(BrokerRole::Slave, Some(master)).await?;
        // Only now, with the demotion certain: failing them marks this term's replicas failed
        // for good, and a demotion that failed above leaves the shard the same master.
        if let Some(replicas) = self.role_state().replicas() {
            // Nothing these producers wrote was acknowledged by enough slaves; the new master
            // may not hold it. They get FLUSH_SLAVE_TIMEOUT, as on any missing acknowledgement.
            replicas.completions.fail_all();
        }
        *self.role_state().role.borrow_mut() = Role::Slave(Rc::new(SlaveLink::new(Some(master))));
        info!(shard = self.id(), %master, "demoted: following the master at {master}");
        Ok(())
    }

    /// Remembers a role set at runtime, so a restart keeps it whatever the configuration says.
    async fn persist_role(
        &self,
        role: BrokerRole,
        master: Option<SocketAddr>,
    ) -> Result<(), ShardError> {
        let mut identity = self.role_state().identity();
        identity.promoted_role = Some(role);
        identity.master_addr = master;
        identity.save(self.disk(), self.dir()).await?;
        self.role_state().set_identity(identity);
        Ok(())
    }

    /// Starts the slave's link to its master (which also carries topics and group offsets);
    /// it returns once the role changes again or the shard stops ([`Shard::stop_slave_link`]).
    pub fn start_slave_link(self: &Rc<Self>, link: Rc<SlaveLink>) {
        let task = glommio::spawn_local(crate::replication::slave::run(self.clone(), link));
        let previous = self.role_state().link_task.replace(Some(task.detach()));
        debug_assert!(
            previous.is_none(),
            "a slave link started over a running one"
        );
    }

    /// After a failed transition: the stopped `link` is replaced by a fresh one to the same
    /// master, which keeps what the old one heard confirmed.
    fn start_slave_link_replacing(self: &Rc<Self>, link: &SlaveLink) {
        let fresh = Rc::new(SlaveLink::new(link.master()));
        fresh.master_confirmed.set(link.master_confirmed());
        fresh.reported.set(link.reported.get());
        *self.role_state().role.borrow_mut() = Role::Slave(fresh.clone());
        self.start_slave_link(fresh);
    }

    /// At a stop (after `begin_stop`): waits for a role change in progress, which may start a
    /// link, then ends the link; a later role change is refused, so none starts again.
    pub(super) async fn end_slave_link_for_stop(&self) {
        debug_assert!(self.lifecycle().is_stopping());
        let _changing = self
            .role_state()
            .changing
            .acquire_permit(1)
            .await
            .expect("the role-change gate is never closed");
        self.stop_slave_link().await;
    }

    /// Ends the slave link, if one runs, and waits until its task has returned: nothing it
    /// received is applied after this. Returns the link that was stopped.
    pub async fn stop_slave_link(&self) -> Option<Rc<SlaveLink>> {
        let link = self.role_state().slave_link();
        if let Some(link) = &link {
            link.stopped.set(true);
            link.lost(self.clock().now());
        }
        let task = self.role_state().link_task.borrow_mut().take();
        if let Some(task) = task {
            self.role_state().changed.notify();
            let _ = task.await;
        }
        link
    }
}
