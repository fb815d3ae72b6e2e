//! The role stage: whether this shard is a master (with its replicas) or a slave (with its
//! link to the master), the log identity, and the one function that changes the role.
//!
//! [`Shard::change_role`] is the only place the role changes: at runtime, on `cluster
//! promote` (slave to master) and `cluster demote` (master to slave of a given master), with no
//! restart. Its events, each notified only here: `changed` (the role changed: the slave link
//! stops, shippers re-check) and `links` (a replication link closed,
//! came up or reported: wakes shippers and reporters).

use super::completion::Event;
use super::error::ShardError;
use super::Shard;
use crate::config::BrokerRole;
use crate::replication::identity::LogIdentity;
use crate::replication::replicas::Replicas;
use crate::store::io::Disk;
use futures_channel::oneshot;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
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
    /// The master's confirmed offset as last heard; bounds what consumers see here.
    master_confirmed: Cell<u64>,
}

impl SlaveLink {
    pub fn new(master: Option<SocketAddr>) -> SlaveLink {
        SlaveLink {
            master,
            streaming: Cell::new(false),
            master_confirmed: Cell::new(0),
        }
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

    /// The handshake succeeded: the link streams from now on.
    pub fn established(&self) {
        self.streaming.set(true);
    }

    pub fn lost(&self) {
        self.streaming.set(false);
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
}

impl RoleState {
    pub fn new(role: Role, identity: LogIdentity) -> RoleState {
        RoleState {
            role: RefCell::new(role),
            changed: Event::default(),
            identity: RefCell::new(identity),
            links: Event::default(),
        }
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

    /// Replaces the identity in memory (the caller has saved it).
    pub fn set_identity(&self, identity: LogIdentity) {
        *self.identity.borrow_mut() = identity;
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

    /// Slave: the master's confirmed offset; returns whether it moved.
    pub fn set_master_confirmed(&self, offset: u64) -> bool {
        self.slave_link()
            .is_some_and(|link| link.set_master_confirmed(offset))
    }
}

/// The role a transition goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleTarget {
    Master(MasterMode),
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
    ///   replaces the link.
    ///
    /// Every parked pull is woken to look again: what is confirmed depends on the role.
    pub async fn change_role(self: &Rc<Self>, target: RoleTarget) -> Result<(), ShardError> {
        let _appends = self.appending().lock().await;
        let _store = self.flushing().lock_store().await;
        let current = self.role_state().broker_role();
        match target {
            RoleTarget::Master(mode) if current.is_master() => {
                let replicas = self.role_state().replicas().expect("a master has replicas");
                self.persist_role(mode.broker_role(), None).await?;
                *self.role_state().role.borrow_mut() = Role::Master { mode, replicas };
            }
            RoleTarget::Master(mode) => self.promote(mode).await?,
            RoleTarget::Slave(master) => {
                if !current.is_master()
                    && self.role_state().slave_link().and_then(|l| l.master()) == Some(master)
                {
                    return Ok(());
                }
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

    async fn promote(self: &Rc<Self>, mode: MasterMode) -> Result<(), ShardError> {
        super::flushing::flush_holding_gate(self).await?;
        let end = self.store().max_offset();
        let mut identity = self.role_state().identity().next_epoch(end);
        identity.promoted_role = Some(mode.broker_role());
        identity.master_addr = None;
        identity.save(self.disk(), self.dir()).await?;
        let epoch = identity.last_epoch();
        self.role_state().set_identity(identity);
        // Everything the old master confirmed stays visible; the rest waits for this master's
        // own guarantee (its flush, and under SYNC_MASTER its slaves).
        let confirmed = self
            .role_state()
            .slave_link()
            .map_or(0, |l| l.master_confirmed())
            .min(end);
        self.flushing()
            .reset_released(self.store().flushed_offset());
        let replicas = Rc::new(Replicas::new(
            self.config().min_in_sync_replicas,
            confirmed,
            self.clock().clone(),
        ));
        if mode == MasterMode::Sync && replicas.needed() > 0 {
            warn!(
                shard = self.id(),
                "promoted to SYNC_MASTER: producers get SLAVE_NOT_AVAILABLE until a slave follows"
            );
        }
        *self.role_state().role.borrow_mut() = Role::Master { mode, replicas };
        info!(
            shard = self.id(),
            epoch,
            epoch_start_offset = end,
            "promoted to {}",
            mode.broker_role()
        );
        Ok(())
    }

    async fn demote(self: &Rc<Self>, master: SocketAddr) -> Result<(), ShardError> {
        if let Some(replicas) = self.role_state().replicas() {
            // Nothing these producers wrote was acknowledged by enough slaves; the new master
            // may not hold it. They get FLUSH_SLAVE_TIMEOUT, as on any missing acknowledgement.
            replicas.completions.fail_all();
        }
        super::flushing::flush_holding_gate(self).await?;
        self.persist_role(BrokerRole::Slave, Some(master)).await?;
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
    /// it returns on its own once the role changes again.
    pub(super) fn start_slave_link(self: &Rc<Self>, link: Rc<SlaveLink>) {
        glommio::spawn_local(crate::replication::slave::run(self.clone(), link)).detach();
    }
}
