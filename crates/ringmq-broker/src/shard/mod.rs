//! A shard: the core that owns a set of queues, their commitlog and consume queues.
//!
//! One glommio executor per shard, pinned to a core. Requests arrive from the shard's
//! connections ([`crate::net`]) or, for queues this shard owns, from other shards over the
//! [`mesh`]; [`handlers`] run them (one file per command). The shard's state lives in owned
//! stages, each the only notifier of its own events (see `docs/architecture.md`):
//!
//! - [`appending`]: the append gate, the queue choice, waiting for buffer space or a segment;
//! - [`flushing`]: the flusher and segment allocator, SYNC_FLUSH completions, the store gate;
//! - [`cleaning`]: retention, deleting expired segments and refusing appends on a full disk;
//! - [`visibility`]: the long polls parked per queue, woken as the confirmed offset passes
//!   their record;
//! - [`metadata`]: topics, group offsets and the metadata version;
//! - [`coordinator`]: the live members of the consumer groups this shard coordinates, their
//!   sessions and queue locks (in memory; [`allocation`] divides the queues);
//! - [`lifecycle`]: requests in flight and the stop flags;
//! - [`role`]: master (with its replicas) or slave (with its link), changed only by
//!   [`Shard::change_role`];
//! - [`delays`]: the scheduler that moves delayed retries into their retry topics;
//! - [`registration`]: the name servers this broker registers with (shard 0's tasks) and the
//!   group's master their answers name, which every shard's `NOT_MASTER` carries.
//!
//! The shard is generic over the [`Disk`] its store writes to and reads time through a
//! [`Clock`]; [`Shard::open_for_test`] opens one without sockets or mesh peers (for example on
//! the simulated disk). Nothing here takes a lock shared with another core.

pub mod allocation;
pub mod appending;
pub mod cleaning;
pub mod completion;
pub mod controller_agent;
pub mod coordinator;
pub mod delays;
pub mod error;
pub mod flushing;
pub mod groups;
pub mod handlers;
pub mod lifecycle;
pub mod mesh;
pub mod metadata;
pub mod registration;
pub mod role;
pub mod slave_read;
pub mod startup;
pub mod topics;
pub mod visibility;

use crate::clock::Clock;
use crate::config::{BrokerConfig, BrokerRole, FlushDiskType};
use crate::metrics::{Counter, ProbeSnapshot, ShardProbe};
use crate::protocol::{Acks, Opcode};
use crate::replication::identity::LogIdentity;
use crate::replication::replicas::Replicas;
use crate::store::glommio_disk::GlommioDisk;
use crate::store::io::Disk;
use crate::store::{AppendError, QueueKey, ShardStore, StoreConfig};
use appending::Appending;
use cleaning::Cleaning;
use coordinator::Coordinator;
pub use error::ShardError;
use flushing::Flushing;
use futures_channel::oneshot;
use futures_lite::future;
use groups::GroupOffsets;
use lifecycle::Lifecycle;
use mesh::{Mesh, Reply, ShardRequest};
use metadata::Metadata;
use role::{MasterMode, Role, RoleState, SlaveLink};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use topics::{TopicEntry, TopicTable};
use visibility::Visibility;

pub struct Shard<D: Disk = GlommioDisk> {
    id: usize,
    shard_count: usize,
    config: Arc<BrokerConfig>,
    /// Port on which each shard accepts connections directly (shard-aware clients).
    shard_ports: Arc<Vec<u16>>,
    /// `<store>/shard-<n>`.
    dir: PathBuf,
    disk: D,
    /// Where every timer and deadline of the shard reads time.
    clock: Rc<dyn Clock>,
    store: ShardStore<D>,
    mesh: Mesh,
    /// Counters and histograms of this shard; written only by this core.
    probe: ShardProbe,
    appending: Appending,
    flushing: Flushing,
    cleaning: Cleaning,
    visibility: Visibility,
    metadata: Metadata<D>,
    lifecycle: Lifecycle,
    role: RoleState,
    delays: delays::Delays,
    registration: registration::Registration,
    /// Controller mode: the controllers' view as shard 0 last sent it (lease, set, epochs).
    controller: controller_agent::ControllerState,
    /// Members of the groups whose coordinator this shard is. Borrowed only between awaits.
    coordinator: RefCell<Coordinator>,
    /// Fences granted by other shards' coordinators for queues this shard owns.
    fence_cache: coordinator::FenceCache,
    /// The Kafka consumer groups this shard coordinates (`kafka::groups`), with their timer.
    kafka_groups: crate::kafka::groups::Coordinator,
    /// Serializes [`Shard::announce_fence_changes`] (see there).
    fence_announcements: glommio::sync::Semaphore,
}

/// Wall-clock milliseconds now, which seeds the group coordinator's generations and member
/// ids ([`Coordinator::booted`]); 0 on a clock before the epoch (generations still only grow
/// within the boot).
fn boot_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a shard is made of, for [`Shard::assemble`].
pub struct ShardParts<D: Disk> {
    pub id: usize,
    pub shard_count: usize,
    pub config: Arc<BrokerConfig>,
    pub shard_ports: Arc<Vec<u16>>,
    pub dir: PathBuf,
    pub disk: D,
    pub clock: Rc<dyn Clock>,
    pub store: ShardStore<D>,
    pub groups: GroupOffsets<D>,
    pub topics: Arc<TopicTable>,
    /// The ACL rules (`security::acl`), shared like the topic table.
    pub acls: Arc<crate::security::acl::AclTable>,
    pub mesh: Mesh,
    pub role: BrokerRole,
    pub identity: LogIdentity,
}

impl<D: Disk> Shard<D> {
    /// Builds a shard from an opened store and its metadata, in `role`.
    pub fn assemble(parts: ShardParts<D>) -> Shard<D> {
        let role = match MasterMode::of(parts.role) {
            Some(mode) => Role::Master {
                mode,
                // What slaves are known to have acknowledged before a restart (persisted).
                replicas: Rc::new(Replicas::new(
                    parts.config.min_in_sync_replicas,
                    parts
                        .identity
                        .replicated_offset
                        .min(parts.store.max_offset()),
                    parts.clock.clone(),
                )),
            },
            None => {
                let master = parts
                    .identity
                    .master_addr
                    .filter(|_| parts.identity.promoted_role == Some(BrokerRole::Slave))
                    .or_else(|| parts.config.master_addr().ok().flatten())
                    // Controller mode starts fenced: no master until the controllers name one.
                    .filter(|_| !parts.config.controller_mode());
                // What this slave showed at its last checkpoint stays visible while its master
                // is down (see `SlaveLink::visible_bound`); never past the recovered log.
                let shown = parts
                    .identity
                    .replicated_offset
                    .min(parts.store.max_offset());
                Role::Slave(Rc::new(SlaveLink::new(master).starting_from(shown)))
            }
        };
        let flushed = parts.store.flushed_offset();
        Shard {
            id: parts.id,
            shard_count: parts.shard_count,
            config: parts.config,
            shard_ports: parts.shard_ports,
            dir: parts.dir,
            disk: parts.disk,
            clock: parts.clock,
            store: parts.store,
            mesh: parts.mesh,
            probe: ShardProbe::default(),
            appending: Appending::default(),
            flushing: Flushing::new(flushed),
            cleaning: Cleaning::default(),
            visibility: Visibility::default(),
            metadata: Metadata::new(parts.topics, parts.acls, parts.groups),
            lifecycle: Lifecycle::default(),
            role: RoleState::new(role, parts.identity),
            delays: delays::Delays::default(),
            registration: registration::Registration::default(),
            controller: controller_agent::ControllerState::default(),
            coordinator: RefCell::new(Coordinator::booted(boot_ms(), parts.id)),
            fence_cache: coordinator::FenceCache::default(),
            kafka_groups: crate::kafka::groups::Coordinator::new(boot_ms() ^ parts.id as u64),
            fence_announcements: glommio::sync::Semaphore::new(1),
        }
    }

    /// Opens shard 0 of a one-shard broker on `disk`, with no sockets and no mesh peers: the
    /// store under `<config.store_dir>/shard-0` is recovered, topics come from
    /// `<config.store_dir>/topics.json` if the disk holds it. Run [`Shard::spawn_background`]
    /// for the flusher and the segment allocator, drive it with [`handlers::handle`], end it
    /// with [`Shard::stop`]. Needs a glommio executor (the background tasks are local tasks).
    /// Replication never starts: a SLAVE opened this way has no link.
    pub async fn open_for_test(
        disk: D,
        clock: Rc<dyn Clock>,
        config: BrokerConfig,
    ) -> Result<Rc<Shard<D>>, ShardError> {
        let config = Arc::new(config);
        let dir = startup::shard_dir(&config.store_dir, 0);
        disk.create_dir_all(&dir)
            .await
            .map_err(|e| ShardError::Metadata(format!("{}: {e}", dir.display())))?;
        let identity = LogIdentity::load_or_create(&disk, &dir).await?;
        let topics_path = topics::topics_path(&config.store_dir);
        let topics = match disk.read_file(&topics_path).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                .map_err(|e| ShardError::Metadata(format!("{}: {e}", topics_path.display())))?,
            Ok(None) => TopicTable::default(),
            Err(e) => {
                return Err(ShardError::Metadata(format!(
                    "{}: {e}",
                    topics_path.display()
                )))
            }
        };
        let role = identity.promoted_role.unwrap_or(config.broker_role);
        let store_config = StoreConfig {
            dir: dir.clone(),
            segment_size_bytes: config.segment_size_bytes,
            write_buffer_bytes: config.write_buffer_bytes as usize,
            max_record_bytes: startup::max_record_bytes(&config),
            adopt_unknown_queues: role == BrokerRole::Slave,
            cq_file_entries: config.consume_queue_file_entries,
            cq_cache_entries: config.consume_queue_cache_entries,
        };
        let (store, _report) =
            ShardStore::open(disk.clone(), store_config, &owned_queues(0, &topics)).await?;
        let groups = GroupOffsets::load(disk.clone(), dir.join("groups.json")).await?;
        Ok(Rc::new(Shard::assemble(ShardParts {
            id: 0,
            shard_count: 1,
            shard_ports: Arc::new(Vec::new()),
            config,
            dir,
            disk,
            clock,
            store,
            groups,
            topics: Arc::new(topics),
            acls: Arc::default(),
            mesh: Mesh::alone(),
            role,
            identity,
        })))
    }

    /// Starts the flusher, the segment allocator, the cleaner and the retry scheduler;
    /// [`Shard::stop`] ends them. Also starts the group sessions' expiry tick, which ends on its
    /// own once the stop reaches the background tasks (nothing waits for it: it holds no I/O).
    pub fn spawn_background(self: &Rc<Self>) -> BackgroundTasks {
        glommio::spawn_local(run_group_expiry(self.clone())).detach();
        BackgroundTasks {
            flusher: glommio::spawn_local(crate::counted_polls::observed(flushing::run_flusher(
                self.clone(),
            ))),
            allocator: glommio::spawn_local(flushing::run_segment_allocator(self.clone())),
            cleaner: glommio::spawn_local(cleaning::run_cleaner(self.clone())),
            scheduler: glommio::spawn_local(delays::run_scheduler(self.clone())),
        }
    }

    /// A clean stop: refuse new produce requests, answer what is in flight (at most as long
    /// as a produce may wait for its guarantees, plus a second, so a peer that does not read
    /// cannot hold the stop forever), end the background tasks, final flush and checkpoint.
    pub async fn stop(self: &Rc<Self>, background: BackgroundTasks) -> Result<(), ShardError> {
        self.lifecycle.begin_stop();
        self.delays.wake();
        // Kafka joins and syncs waiting for their round would hold the drain below.
        self.kafka_groups
            .abandon(crate::kafka::groups::code::COORDINATOR_NOT_AVAILABLE);
        // The slave link appends and truncates: it ends before the flusher does, so nothing
        // lands after the final flush and no truncation races the store's close. A truncation
        // it had begun runs to its end under the store gate: taking the gate waits for it.
        self.end_slave_link_for_stop().await;
        drop(self.flushing.lock_store().await);
        self.visibility.wake_all();
        self.flushing.request();
        let bound = Duration::from_millis(
            self.config.sync_flush_timeout_ms + self.config.sync_replica_timeout_ms + 1_000,
        );
        if let lifecycle::Drain::TimedOut {
            requests,
            responses,
        } = self.lifecycle.wait_drained(&*self.clock, bound).await
        {
            tracing::warn!(
                shard = self.id,
                requests,
                responses,
                "stopping with requests still unanswered after {} ms",
                bound.as_millis()
            );
        }
        // The scheduler produces: it ends (its produce refused, its waits woken) while the
        // flusher still runs, so what it stored is flushed by the final flush.
        background.scheduler.await;
        self.lifecycle.stop_background();
        self.flushing.wake_tasks();
        self.cleaning.wake();
        background.flusher.await;
        background.allocator.await;
        background.cleaner.await;
        self.persist_replicated_offset().await;
        if let Err(e) = self.metadata.groups().flush().await {
            tracing::warn!(shard = self.id, "writing group offsets at stop: {e}");
        }
        self.store.close().await?;
        Ok(())
    }

    pub fn id(&self) -> usize {
        self.id
    }

    pub fn shard_count(&self) -> usize {
        self.shard_count
    }

    pub fn config(&self) -> &Arc<BrokerConfig> {
        &self.config
    }

    pub fn shard_ports(&self) -> &[u16] {
        &self.shard_ports
    }

    /// `<store>/shard-<n>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn disk(&self) -> &D {
        &self.disk
    }

    pub fn clock(&self) -> &Rc<dyn Clock> {
        &self.clock
    }

    pub fn store(&self) -> &ShardStore<D> {
        &self.store
    }

    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    pub fn probe(&self) -> &ShardProbe {
        &self.probe
    }

    pub fn appending(&self) -> &Appending {
        &self.appending
    }

    pub fn flushing(&self) -> &Flushing {
        &self.flushing
    }

    pub fn cleaning(&self) -> &Cleaning {
        &self.cleaning
    }

    pub fn visibility(&self) -> &Visibility {
        &self.visibility
    }

    pub fn metadata(&self) -> &Metadata<D> {
        &self.metadata
    }

    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    pub fn coordinator(&self) -> &RefCell<Coordinator> {
        &self.coordinator
    }

    pub fn kafka_groups(&self) -> &crate::kafka::groups::Coordinator {
        &self.kafka_groups
    }

    pub fn fence_cache(&self) -> &coordinator::FenceCache {
        &self.fence_cache
    }

    /// Tells every other shard that the groups the coordinator changed since the last call
    /// have new fences (in the background: a shard whose channel is full is not waited for
    /// here).
    pub async fn announce_fence_changes(self: &Rc<Self>) {
        if self.shard_count < 2 {
            self.coordinator.borrow_mut().take_changed();
            return;
        }
        // One announcement at a time: whoever takes changes waits until every shard dropped
        // them, and whoever comes next waits for that, so no answer to a member (say, a new
        // owner's heartbeat) leaves before the fences it makes stale are gone everywhere.
        let Ok(_turn) = self.fence_announcements.acquire_permit(1).await else {
            return;
        };
        let groups = self.coordinator.borrow_mut().take_changed();
        if groups.is_empty() {
            return;
        }
        let mut acks = Vec::new();
        for other in (0..self.shard_count).filter(|s| *s != self.id) {
            let (done, ack) = oneshot::channel();
            let request = ShardRequest::GroupFencesChanged {
                groups: groups.clone(),
                done,
            };
            match self.mesh.send(other, request).await {
                Ok(()) => acks.push(ack),
                Err(_) => tracing::warn!(
                    shard = self.id,
                    other,
                    "cannot tell a shard of new group fences"
                ),
            }
        }
        for ack in acks {
            // A shard gone away cannot serve a pull with a stale fence either.
            let _ = ack.await;
        }
    }

    pub fn registration(&self) -> &registration::Registration {
        &self.registration
    }

    pub fn controller(&self) -> &controller_agent::ControllerState {
        &self.controller
    }

    pub fn role_state(&self) -> &RoleState {
        &self.role
    }

    pub fn delays(&self) -> &delays::Delays {
        &self.delays
    }

    pub fn role(&self) -> BrokerRole {
        self.role.broker_role()
    }

    pub fn is_master(&self) -> bool {
        self.role().is_master()
    }

    /// Master: this term's replicas. `None` on a slave.
    pub fn replicas(&self) -> Option<Rc<Replicas>> {
        self.role.replicas()
    }

    /// The commitlog offset up to which records may be shown to consumers: flushed under
    /// SYNC_FLUSH, appended under ASYNC_FLUSH; under SYNC_MASTER also acknowledged by enough
    /// slaves, on a slave also confirmed by the master.
    pub fn confirmed_offset(&self) -> u64 {
        let local = self.local_confirmed_offset();
        match &*self.role.role_ref() {
            Role::Master {
                mode: MasterMode::Sync,
                replicas,
            } if replicas.needed() > 0 => local.min(replicas.completions.released_offset()),
            Role::Master { .. } => local,
            Role::Slave(link) => local.min(link.visible_bound()),
        }
    }

    /// What this shard's own flush mode guarantees, whatever the replicas have.
    pub fn local_confirmed_offset(&self) -> u64 {
        match self.config.flush_disk_type {
            FlushDiskType::SyncFlush => self.store.flushed_offset(),
            FlushDiskType::AsyncFlush => self.store.max_offset(),
        }
    }

    /// Tells the visibility stage the current confirmed offset (it moved, or may have): the
    /// long polls its records satisfy wake.
    pub fn publish_confirmed(&self) {
        let store = &self.store;
        debug_assert!(
            store.flushed_offset() <= store.max_offset(),
            "flushed {} past the log's end {}",
            store.flushed_offset(),
            store.max_offset()
        );
        if let Some(replicas) = self.replicas() {
            if replicas.required_count() == Some(0) {
                // Controller mode, a SyncStateSet of this master alone: nothing to wait for,
                // so what this shard holds is released (Kafka's HW = LEO with one in-sync
                // replica); else consumers would never see a leader-level write.
                replicas.completions.release(self.local_confirmed_offset());
            }
        }
        self.visibility.confirmed(self.confirmed_offset());
    }

    /// A batch was appended to `key`, ending at `end_offset`: parked pulls of that queue now
    /// wait for it to be confirmed, shippers and reporters wake.
    pub fn appended(&self, key: QueueKey, end_offset: u64) {
        self.visibility.appended(key, end_offset);
        self.appending.announce();
    }

    /// Waits until something a replication link reports on may have changed (an append, a
    /// flush, a metadata change, a link or role event), at most `timeout`.
    pub async fn wait_replication_news(&self, timeout: Duration) {
        let appended = self.appending.listen();
        let flushed = self.flushing.listen_flushed();
        let metadata = self.metadata.listen_changed();
        let links = self.role.listen_links();
        let any = async {
            future::or(
                future::or(
                    async {
                        let _ = appended.await;
                    },
                    async {
                        let _ = flushed.await;
                    },
                ),
                future::or(
                    async {
                        let _ = metadata.await;
                    },
                    async {
                        let _ = links.await;
                    },
                ),
            )
            .await
        };
        future::or(any, self.clock.sleep(timeout)).await;
    }

    /// Slave: the master `link` follows says everything before `offset` is confirmed there
    /// (ignored unless `link` is the current link).
    pub fn set_master_confirmed(&self, link: &SlaveLink, offset: u64) {
        if self.role.set_master_confirmed(link, offset) {
            self.publish_confirmed();
        }
    }

    /// SYNC_MASTER: writes the slaves' acknowledged offset when it moved (called with each
    /// checkpoint), so a restart starts from it. SLAVE: writes what consumers see here, so a
    /// slave restarted while its master is down still shows what was acknowledged.
    pub async fn persist_replicated_offset(&self) {
        let released = match self.role() {
            BrokerRole::SyncMaster => match self.replicas() {
                Some(replicas) => replicas.completions.released_offset(),
                None => return,
            },
            BrokerRole::Slave => self.confirmed_offset(),
            _ => return,
        };
        let mut identity = self.role.identity();
        if released == identity.replicated_offset {
            return;
        }
        identity.replicated_offset = released;
        match identity.save(&self.disk, &self.dir).await {
            Ok(()) => self.role.set_identity(identity),
            Err(e) => tracing::warn!(shard = self.id, "writing the replicated offset: {e}"),
        }
    }

    /// Slave: the log was started over at `offset`, the master's log head (see
    /// `ShardStore::restart_at`). The flushed and released counters follow the new log, every
    /// parked pull looks again (its queue is empty now).
    pub fn restarted(&self, offset: u64) {
        debug_assert_eq!(self.store.max_offset(), offset);
        self.flushing.reset_released(self.store.flushed_offset());
        self.visibility.wake_all();
        self.publish_confirmed();
    }

    /// Slave: the log was cut back to `offset` to follow its master. Nothing past the cut may
    /// still count as flushed or replicated (a later promotion must not answer OK from stale
    /// counters), every parked pull looks again, and the cut is remembered.
    pub async fn truncated(&self, offset: u64) {
        self.flushing.reset_released(self.store.flushed_offset());
        if let Some(replicas) = self.replicas() {
            replicas.completions.reset_to(offset);
        }
        if let Some(link) = self.role.slave_link() {
            link.cut_reported(offset);
        }
        self.visibility.wake_all();
        self.publish_confirmed();
        let mut identity = self.role.identity();
        identity.divergence_points.push(offset);
        // Nothing past the cut was acknowledged in the term this log now follows.
        identity.replicated_offset = identity.replicated_offset.min(offset);
        if let Err(e) = identity.save(&self.disk, &self.dir).await {
            tracing::warn!(shard = self.id, "recording the divergence point: {e}");
        }
        self.role.set_identity(identity);
    }

    pub fn topic(&self, name: &str) -> Option<TopicEntry> {
        self.metadata.topic(name)
    }

    /// `read` of the topic's entry, without copying it.
    pub fn with_topic<R>(&self, name: &str, read: impl FnOnce(&TopicEntry) -> R) -> Option<R> {
        self.metadata.with_topic(name, read)
    }

    pub fn topic_table(&self) -> Arc<TopicTable> {
        self.metadata.table()
    }

    /// This shard's copy of the ACL rules.
    pub fn acls(&self) -> Arc<crate::security::acl::AclTable> {
        self.metadata.acls()
    }

    /// Queues of the table that this shard owns.
    pub fn owned_queues(&self, table: &TopicTable) -> Vec<QueueKey> {
        owned_queues(self.id, table)
    }

    /// Waits until a batch of records of `lens` bytes can be appended whole without another
    /// wait (see [`ShardStore::admit_batch`]): [`AppendError::DiskFull`] at once when the next
    /// segment could not be created for lack of space, [`AppendError::Busy`] at `deadline`.
    /// The caller holds the append gate, so nothing else appends before it does.
    pub async fn admit_batch(&self, deadline: Instant, lens: &[usize]) -> Result<(), AppendError> {
        if let Some(refused) = self.cleaning.refusal(self.config.disk_space_warning_ratio) {
            return Err(refused);
        }
        self.append_waiting(deadline, || self.store.admit_batch(lens))
            .await
    }

    /// See [`Appending::append_waiting`].
    pub async fn append_waiting<T>(
        &self,
        deadline: Instant,
        append: impl FnMut() -> Result<T, AppendError>,
    ) -> Result<T, AppendError> {
        self.appending
            .append_waiting(&self.flushing, &*self.clock, deadline, append)
            .await
    }

    /// Sends a request built by `request` to every other shard and collects their answers
    /// (this shard's own answer is the caller's to add).
    pub async fn ask_others<T>(
        &self,
        request: impl Fn(oneshot::Sender<T>) -> ShardRequest,
    ) -> Result<Vec<T>, ShardError> {
        let mut answers = Vec::with_capacity(self.shard_count.saturating_sub(1));
        for other in (0..self.shard_count).filter(|s| *s != self.id) {
            let (tx, rx) = oneshot::channel();
            self.mesh.send(other, request(tx)).await?;
            answers.push(rx.await.map_err(|_| ShardError::ShardGone(other))?);
        }
        Ok(answers)
    }

    /// Sends a request built by `request` to shard `to` and waits for its answer.
    pub async fn ask_one<T>(
        &self,
        to: usize,
        request: impl FnOnce(oneshot::Sender<T>) -> ShardRequest,
    ) -> Result<T, ShardError> {
        let (tx, rx) = oneshot::channel();
        self.mesh.send(to, request(tx)).await?;
        rx.await.map_err(|_| ShardError::ShardGone(to))
    }

    /// Runs a client request on shard `to` and returns its reply.
    pub async fn forward(&self, to: usize, opcode: Opcode, body: Vec<u8>) -> Reply {
        self.forward_request(to, |reply| ShardRequest::Execute {
            opcode,
            body,
            reply,
        })
        .await
    }

    /// Forwards a produce at the acknowledgement level this shard resolved for it.
    pub async fn forward_produce(&self, to: usize, body: Vec<u8>, acks: Acks) -> Reply {
        self.forward_request(to, |reply| ShardRequest::Produce { body, acks, reply })
            .await
    }

    async fn forward_request(
        &self,
        to: usize,
        request: impl FnOnce(oneshot::Sender<Reply>) -> ShardRequest,
    ) -> Reply {
        self.probe.add(Counter::ForwardedRequests, 1);
        let (tx, rx) = oneshot::channel();
        let request = request(tx);
        if let Err(gone) = self.mesh.send(to, request).await {
            return ShardError::from(gone).into();
        }
        match rx.await {
            Ok(reply) => reply,
            Err(_) => ShardError::ShardGone(to).into(),
        }
    }

    pub fn snapshot(&self) -> ProbeSnapshot {
        self.probe.snapshot(self.id, self.gauges())
    }

    /// Point-in-time values for the probe: waiting producers, per master shard its slaves
    /// and the worst slave lag (bytes behind the master's end, and for how long), and in
    /// controller mode the controllers' view of this broker.
    fn gauges(&self) -> Vec<(&'static str, u64)> {
        let max_offset = self.store.max_offset();
        let now = self.clock.now();
        let replicas = self.replicas();
        let slaves = replicas.as_ref().map(|r| r.states()).unwrap_or_default();
        let lag_bytes = slaves
            .iter()
            .map(|s| max_offset.saturating_sub(s.acked_offset))
            .max()
            .unwrap_or(0);
        let lag_ms = slaves
            .iter()
            .filter(|s| s.acked_offset < max_offset)
            .map(|s| now.saturating_duration_since(s.caught_up_at).as_millis() as u64)
            .max()
            .unwrap_or(0);
        let replica_waiters = replicas.as_ref().map_or(0, |r| r.completions.pending());
        let mut gauges = vec![
            (
                "pending_completions",
                (self.flushing.pending() + replica_waiters) as u64,
            ),
            ("replication_slaves", slaves.len() as u64),
            ("replication_lag_bytes", lag_bytes),
            ("replication_lag_ms", lag_ms),
            (
                "disk_used_ratio_ppm",
                (self.cleaning.used_ratio() * 1e6).round() as u64,
            ),
            (
                "retention_appends_refused",
                self.cleaning.appends_refused() as u64,
            ),
        ];
        // Every shard has the same list (the configuration is the broker's).
        if self.config.controller_mode() {
            gauges.extend(self.controller.gauges(now));
        }
        gauges
    }

    /// One snapshot per shard (a shard that does not answer is left out).
    pub async fn gather_snapshots(&self) -> Vec<ProbeSnapshot> {
        let mut snapshots = vec![self.snapshot()];
        if let Ok(others) = self.ask_others(|reply| ShardRequest::Probe { reply }).await {
            snapshots.extend(others);
        }
        snapshots.sort_by_key(|s| s.shards.first().copied());
        snapshots
    }

    /// Swaps in a new topic table: registers queues this shard now owns and drops the topics
    /// that are gone.
    ///
    /// A topic whose files could not be removed is still dropped from the table (the table
    /// was already published; a leftover queue of an unknown topic id is never read again) and
    /// the first error is returned after the table is swapped and parked pulls are woken, so
    /// this shard never keeps serving a table the others no longer have.
    pub async fn apply_topics(&self, table: Arc<TopicTable>) -> Result<(), ShardError> {
        let old = self.topic_table();
        let mut first_error = None;
        for (name, entry) in &old.topics {
            let kept = table
                .topics
                .get(name)
                .is_some_and(|e| e.topic_id == entry.topic_id);
            if !kept {
                if let Err(e) = self.store.remove_topic(entry.topic_id).await {
                    first_error.get_or_insert(ShardError::from(e));
                }
                if let Err(e) = self.metadata.groups().forget_topic(name).await {
                    first_error.get_or_insert(e);
                }
            }
        }
        let known: std::collections::HashSet<QueueKey> =
            owned_queues(self.id, &old).into_iter().collect();
        for key in owned_queues(self.id, &table) {
            if !known.contains(&key) {
                self.store.add_queue(key);
            }
        }
        self.metadata.set_table(table);
        // Shard 0's name-server tasks register the new topics at once (a no-op elsewhere).
        self.registration.changed();
        // A pull parked on a dropped queue answers QUEUE_NOT_FOUND now, not at its timeout.
        self.visibility.wake_all();
        first_error.map_or(Ok(()), Err)
    }
}

/// Ends the group sessions that were not renewed in time, every `GROUP_EXPIRY_TICK_MS` of the
/// shard's clock, so a dead member's queues move within its session timeout plus a tick.
async fn run_group_expiry<D: Disk>(shard: Rc<Shard<D>>) {
    let tick = Duration::from_millis(crate::constants::GROUP_EXPIRY_TICK_MS);
    while !shard.lifecycle.is_background_stopping() {
        shard.clock.sleep(tick).await;
        let ended = shard.coordinator.borrow_mut().expire(shard.clock.now());
        shard.announce_fence_changes().await;
        for (group, member) in ended {
            tracing::info!(shard = shard.id, %group, %member, "group session ended: its queues move");
        }
    }
}

/// The flusher, segment allocator, cleaner and retry scheduler of a shard, ended by
/// [`Shard::stop`].
pub struct BackgroundTasks {
    flusher: glommio::Task<()>,
    allocator: glommio::Task<()>,
    cleaner: glommio::Task<()>,
    scheduler: glommio::Task<()>,
}

pub fn owned_queues(shard_id: usize, table: &TopicTable) -> Vec<QueueKey> {
    table
        .topics
        .values()
        .flat_map(|e| {
            e.queue_shards
                .iter()
                .enumerate()
                .filter(move |(_, s)| **s as usize == shard_id)
                .map(move |(q, _)| QueueKey {
                    topic_id: e.topic_id,
                    queue: q as u32,
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::RealClock;
    use crate::protocol::message::{
        MessageRef, ProduceRequest, PullRequest, PullResponse, TopicCreate,
    };
    use crate::protocol::Status;
    use crate::testing::disk::SimDisk;

    fn config() -> BrokerConfig {
        crate::testing::small_shard_config()
    }

    fn pull(queue: u32, max_wait_ms: u32) -> Vec<u8> {
        let mut body = Vec::new();
        PullRequest {
            topic: "t".to_string(),
            queue,
            offset: 0,
            max_messages: 16,
            max_bytes: 1 << 16,
            max_wait_ms,
        }
        .encode(&mut body);
        body
    }

    /// The shard runs without sockets or peers on the simulated disk: a produce releases the
    /// long poll parked on its own queue, not the one parked on another, and a stop answers the
    /// one still parked at once.
    #[test]
    fn a_produce_wakes_only_the_pull_parked_on_its_queue() {
        glommio::LocalExecutor::default().run(async {
            let disk = SimDisk::new();
            let shard = Shard::open_for_test(disk, Rc::new(RealClock), config())
                .await
                .unwrap();
            let background = shard.spawn_background();
            let mut create = Vec::new();
            TopicCreate {
                name: "t".to_string(),
                queue_count: 2,
            }
            .encode(&mut create);
            let created = handlers::handle(&shard, Opcode::TopicCreate, &create).await;
            assert_eq!(created.status, Status::Ok);

            let parked_here = {
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    handlers::handle(&shard, Opcode::Pull, &pull(1, 10_000)).await
                })
            };
            let parked_elsewhere = {
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    handlers::handle(&shard, Opcode::Pull, &pull(0, 10_000)).await
                })
            };
            while shard.visibility().parked() < 2 {
                futures_lite::future::yield_now().await;
            }
            let woken_before = shard.visibility().woken();
            let produced = handlers::handle(&shard, Opcode::Produce, &produce(1, b"hello")).await;
            assert_eq!(produced.status, Status::Ok);
            let answer = parked_here.await;
            // One wake-up, of queue 1's pull: queue 0's was neither woken nor re-parked.
            assert_eq!(shard.visibility().woken() - woken_before, 1);
            assert_eq!(answer.status, Status::Ok);
            let pulled = PullResponse::decode(&answer.body).unwrap();
            assert_eq!(pulled.messages.len(), 1);
            assert_eq!(pulled.messages[0].body, b"hello");
            assert_eq!(shard.visibility().parked(), 1, "queue 0's pull still waits");

            let started = std::time::Instant::now();
            shard.stop(background).await.unwrap();
            let answer = parked_elsewhere.await;
            assert_eq!(answer.status, Status::NoNewMessage);
            assert!(started.elapsed() < std::time::Duration::from_secs(5));
        });
    }

    fn produce(queue: u32, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        ProduceRequest {
            topic: "t",
            queue,
            messages: vec![MessageRef {
                born_timestamp_ms: 0,
                key: b"",
                properties: b"",
                body,
            }],
        }
        .encode(&mut out);
        out
    }

    /// A producer of `body` to queue 0, spawned and run until it waits for a slave's
    /// acknowledgement; its task answers the produce.
    async fn parked_producer<D: Disk + 'static>(
        shard: &Rc<Shard<D>>,
        body: &'static [u8],
    ) -> glommio::Task<mesh::Reply> {
        let task = {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                handlers::handle(&shard, Opcode::Produce, &produce(0, body)).await
            })
        };
        while shard.replicas().unwrap().completions.pending() == 0 {
            futures_lite::future::yield_now().await;
        }
        task
    }

    async fn create_topic<D: Disk>(shard: &Rc<Shard<D>>) {
        let mut create = Vec::new();
        TopicCreate {
            name: "t".to_string(),
            queue_count: 1,
        }
        .encode(&mut create);
        let created = handlers::handle(shard, Opcode::TopicCreate, &create).await;
        assert_eq!(created.status, Status::Ok);
    }

    /// The role transition alone, on the simulated disk: a demotion answers the SYNC_MASTER
    /// producer waiting for its slave at once (not at its 60 s timeout), refuses produce from
    /// then on and is remembered in the log identity; promoting back opens a new epoch and
    /// takes produce again.
    #[test]
    fn demotion_fails_waiting_producers_and_promotion_back_takes_writes() {
        glommio::LocalExecutor::default().run(async {
            let config = BrokerConfig {
                broker_role: BrokerRole::SyncMaster,
                min_in_sync_replicas: 2,
                sync_replica_timeout_ms: 60_000,
                ..config()
            };
            let shard = Shard::open_for_test(SimDisk::new(), Rc::new(RealClock), config)
                .await
                .unwrap();
            // No flusher until the demotion is done: the role change's own flush is the only
            // one, and it must release the SYNC_FLUSH wait (else the producer would get
            // FLUSH_DISK_TIMEOUT at its timeout, not FLUSH_SLAVE_TIMEOUT at once).
            let allocator = glommio::spawn_local(flushing::run_segment_allocator(shard.clone()));
            create_topic(&shard).await;
            // A slave that connected and has acknowledged nothing yet: in sync by gap, so the
            // producer waits for it.
            shard
                .replicas()
                .unwrap()
                .register("slave".to_string(), 0, 0);
            let waiting = parked_producer(&shard, b"unconfirmed").await;
            // Nothing listens there: the link retries in the background until the promotion.
            let master: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
            let started = std::time::Instant::now();
            shard
                .change_role(role::RoleTarget::Slave(master))
                .await
                .unwrap();
            assert_eq!(waiting.await.status, Status::FlushSlaveTimeout);
            assert!(started.elapsed() < std::time::Duration::from_secs(10));
            let background = BackgroundTasks {
                flusher: glommio::spawn_local(flushing::run_flusher(shard.clone())),
                allocator,
                cleaner: glommio::spawn_local(cleaning::run_cleaner(shard.clone())),
                scheduler: glommio::spawn_local(delays::run_scheduler(shard.clone())),
            };
            assert_eq!(shard.role(), BrokerRole::Slave);
            assert!(shard.replicas().is_none());
            let identity = shard.role_state().identity();
            assert_eq!(identity.promoted_role, Some(BrokerRole::Slave));
            assert_eq!(identity.master_addr, Some(master));
            let refused = handlers::handle(&shard, Opcode::Produce, &produce(0, b"no")).await;
            assert_eq!(refused.status, Status::NotMaster);

            let epoch = identity.last_epoch();
            shard
                .change_role(role::RoleTarget::Master {
                    mode: role::MasterMode::Async,
                    epoch: None,
                })
                .await
                .unwrap();
            assert_eq!(shard.role(), BrokerRole::AsyncMaster);
            assert_eq!(
                shard.role_state().identity().last_epoch(),
                crate::replication::identity::promotion_epoch([epoch]).unwrap()
            );
            let taken = handlers::handle(&shard, Opcode::Produce, &produce(0, b"yes")).await;
            assert_eq!(taken.status, Status::Ok);
            shard.stop(background).await.unwrap();
        });
    }

    /// Controller mode: a master the controllers elect again in a later epoch re-opens in
    /// that term at its log's end (its slaves fence a master in an older term) and keeps its
    /// replicas, so a producer waiting for the slave is answered OK by the slave's
    /// acknowledgement in the new term; the same or an older term changes nothing.
    #[test]
    fn a_master_elected_again_in_a_later_epoch_reopens_its_term_and_keeps_waiting_producers() {
        use crate::replication::identity::GENERATION_BITS;
        use controller_agent::ControllerView;
        use ringmq_protocol::controller::ROLE_MASTER;
        use std::time::{Duration, Instant};
        glommio::LocalExecutor::default().run(async {
            let config = BrokerConfig {
                broker_role: BrokerRole::Slave,
                controller: vec!["127.0.0.1:9".to_string()],
                min_in_sync_replicas: 2,
                sync_replica_timeout_ms: 60_000,
                ..config()
            };
            let shard = Shard::open_for_test(SimDisk::new(), Rc::new(RealClock), config)
                .await
                .unwrap();
            let background = shard.spawn_background();
            let view = |master_epoch| ControllerView {
                broker_id: 1,
                master_broker_id: 1,
                master_epoch,
                sync_state_set_epoch: 1,
                sync_state_set: vec![1, 2],
                lease_until: Some(Instant::now() + Duration::from_secs(600)),
                role: ROLE_MASTER,
                ..ControllerView::default()
            };
            let master = |term: u32| role::RoleTarget::Master {
                mode: role::MasterMode::Sync,
                epoch: Some(term << GENERATION_BITS),
            };
            shard.apply_controller_view(view(3));
            shard.change_role(master(3)).await.unwrap();
            create_topic(&shard).await;
            let replicas = shard.replicas().unwrap();
            let _old_term_link = replicas.register("slave".to_string(), 0, 2);
            let waiting = parked_producer(&shard, b"waits").await;
            let end = shard.store().max_offset();

            shard.apply_controller_view(view(5));
            shard.change_role(master(5)).await.unwrap();
            let epochs = shard.role_state().identity().epochs;
            assert_eq!(epochs.last(), Some(&(5 << GENERATION_BITS, end)));
            assert_eq!(shard.role(), BrokerRole::SyncMaster);
            assert!(Rc::ptr_eq(&shard.replicas().unwrap(), &replicas));
            assert_eq!(
                replicas.completions.pending(),
                1,
                "the producer still waits"
            );
            for again in [5, 4] {
                shard.change_role(master(again)).await.unwrap();
                assert_eq!(shard.role_state().identity().epochs, epochs, "term {again}");
            }
            let link = replicas.register("slave, in the new term".to_string(), end, 2);
            replicas
                .report(link, end, shard.store().max_offset())
                .unwrap();
            assert_eq!(waiting.await.status, Status::Ok);
            shard.stop(background).await.unwrap();
        });
    }

    /// A demotion whose role file cannot be written leaves the shard the master it was, and
    /// its SYNC_MASTER producers still wait for their slaves (not failed for good): the slave's
    /// acknowledgement releases the one waiting.
    #[test]
    fn a_failed_demotion_leaves_sync_master_producers_working() {
        glommio::LocalExecutor::default().run(async {
            let config = BrokerConfig {
                broker_role: BrokerRole::SyncMaster,
                min_in_sync_replicas: 2,
                sync_replica_timeout_ms: 60_000,
                ..config()
            };
            let disk = SimDisk::new();
            let shard = Shard::open_for_test(disk.clone(), Rc::new(RealClock), config)
                .await
                .unwrap();
            let background = shard.spawn_background();
            create_topic(&shard).await;
            let replicas = shard.replicas().unwrap();
            let slave = replicas.register("slave".to_string(), 0, 0);
            let waiting = parked_producer(&shard, b"waits").await;
            while shard.store().flushed_offset() < shard.store().max_offset() {
                futures_lite::future::yield_now().await;
            }
            // Nothing is left to flush: the demotion's next write is the role file's.
            disk.inject(crate::testing::SimFault::Write);
            let master: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
            let failed = shard.change_role(role::RoleTarget::Slave(master)).await;
            assert!(failed.is_err(), "the role file write was failed");
            assert_eq!(shard.role(), BrokerRole::SyncMaster);
            assert!(Rc::ptr_eq(&shard.replicas().unwrap(), &replicas));
            assert_eq!(
                replicas.completions.pending(),
                1,
                "the producer still waits"
            );
            let end = shard.store().max_offset();
            replicas.report(slave, end, end).unwrap();
            assert_eq!(waiting.await.status, Status::Ok);
            // And the next producer is served the same way.
            let next = parked_producer(&shard, b"next").await;
            let end = shard.store().max_offset();
            replicas.report(slave, end, end).unwrap();
            let next = next.await;
            assert_eq!(next.status, Status::Ok);
            shard.stop(background).await.unwrap();
        });
    }

    /// `cluster demote` on a slave re-points it: the link to the old master is stopped and one
    /// to the new master started, and the new master is what a restart follows. A stop ends
    /// the link started at runtime.
    #[test]
    fn a_slave_is_re_pointed_to_another_master_and_its_link_ends_at_stop() {
        glommio::LocalExecutor::default().run(async {
            let old: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
            let new: std::net::SocketAddr = "127.0.0.1:7".parse().unwrap();
            let config = BrokerConfig {
                broker_role: BrokerRole::Slave,
                master: Some(old.to_string()),
                ..config()
            };
            let shard = Shard::open_for_test(SimDisk::new(), Rc::new(RealClock), config)
                .await
                .unwrap();
            let background = shard.spawn_background();
            let first = shard.role_state().slave_link().unwrap();
            assert_eq!(first.master(), Some(old));
            // Nothing listens at either address: each link retries until it is stopped.
            shard.start_slave_link(first.clone());
            let mut demote = Vec::new();
            crate::protocol::message::ClusterDemote {
                master: new.to_string(),
            }
            .encode(&mut demote);
            let answer = handlers::handle(&shard, Opcode::ClusterDemote, &demote).await;
            assert_eq!(
                answer.status,
                Status::Ok,
                "{:?}",
                String::from_utf8_lossy(&answer.body)
            );
            assert_eq!(shard.role(), BrokerRole::Slave);
            let second = shard.role_state().slave_link().unwrap();
            assert_eq!(second.master(), Some(new));
            assert!(
                !shard.role_state().is_current(&first),
                "the old link is stopped"
            );
            assert!(shard.role_state().is_current(&second));
            assert_eq!(shard.role_state().identity().master_addr, Some(new));

            let started = std::time::Instant::now();
            shard.stop(background).await.unwrap();
            assert!(
                !shard.role_state().is_current(&second),
                "the stop ended the link"
            );
            assert!(started.elapsed() < std::time::Duration::from_secs(5));
        });
    }

    /// The acknowledged offset a restart starts from never outlives the records it covers: a
    /// cut lowers it to the cut, and a promotion writes its own term's starting value.
    #[test]
    fn the_replicated_offset_follows_cuts_and_promotions() {
        glommio::LocalExecutor::default().run(async {
            let config = BrokerConfig {
                broker_role: BrokerRole::SyncMaster,
                // No slave needed: the records go in without one.
                min_in_sync_replicas: 1,
                ..config()
            };
            let disk = SimDisk::new();
            let shard = Shard::open_for_test(disk.clone(), Rc::new(RealClock), config)
                .await
                .unwrap();
            let background = shard.spawn_background();
            create_topic(&shard).await;
            for _ in 0..3 {
                let ok = handlers::handle(&shard, Opcode::Produce, &produce(0, b"r")).await;
                assert_eq!(ok.status, Status::Ok);
            }
            let end = shard.store().max_offset();
            let mut identity = shard.role_state().identity();
            identity.replicated_offset = end;
            identity.save(&disk, shard.dir()).await.unwrap();
            shard.role_state().set_identity(identity);

            let master: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
            shard
                .change_role(role::RoleTarget::Slave(master))
                .await
                .unwrap();
            shard.truncated(end / 2).await;
            let saved = LogIdentity::load_or_create(&disk, shard.dir())
                .await
                .unwrap();
            assert_eq!(saved.replicated_offset, end / 2);

            shard
                .change_role(role::RoleTarget::Master {
                    mode: MasterMode::Sync,
                    epoch: None,
                })
                .await
                .unwrap();
            // This slave heard nothing confirmed from its master: the new term starts at 0.
            let saved = LogIdentity::load_or_create(&disk, shard.dir())
                .await
                .unwrap();
            assert_eq!(saved.replicated_offset, 0);
            shard.stop(background).await.unwrap();
        });
    }

    /// A master killed after answering OK for what its slave reported but before the heartbeat
    /// saying so: the slave shows what it reported once the link is down, and a restart while
    /// the master is still down shows the same.
    #[test]
    fn a_slave_shows_what_it_reported_once_its_master_is_gone() {
        glommio::LocalExecutor::default().run(async {
            let disk = SimDisk::new();
            let shard = Shard::open_for_test(disk.clone(), Rc::new(RealClock), config())
                .await
                .unwrap();
            let background = shard.spawn_background();
            create_topic(&shard).await;
            for _ in 0..3 {
                let ok = handlers::handle(&shard, Opcode::Produce, &produce(0, b"r")).await;
                assert_eq!(ok.status, Status::Ok);
            }
            let end = shard.store().max_offset();
            let master: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
            shard
                .change_role(role::RoleTarget::Slave(master))
                .await
                .unwrap();
            let link = shard.role_state().slave_link().unwrap();
            // No await from here to the checks: the link task cannot interleave.
            link.established();
            shard.role_state().set_master_confirmed(&link, end / 3);
            link.record_reported(end);
            assert_eq!(
                shard.confirmed_offset(),
                end / 3,
                "streaming, the master's word bounds what is shown"
            );
            link.lost(shard.clock().now());
            assert_eq!(
                shard.confirmed_offset(),
                end,
                "the last heartbeat was lost: what was reported is shown"
            );
            shard.persist_replicated_offset().await;
            shard.stop(background).await.unwrap();

            let reopened = Shard::open_for_test(disk.clone(), Rc::new(RealClock), config())
                .await
                .unwrap();
            assert_eq!(reopened.role(), BrokerRole::Slave);
            assert_eq!(
                reopened.confirmed_offset(),
                end,
                "a restart with the master down shows what was shown before"
            );
            let link = reopened.role_state().slave_link().unwrap();
            link.established();
            reopened.role_state().set_master_confirmed(&link, end / 3);
            assert_eq!(
                reopened.confirmed_offset(),
                end / 3,
                "a master that is back decides again"
            );
        });
    }
}
