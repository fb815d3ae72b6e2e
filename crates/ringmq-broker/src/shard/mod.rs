//! A shard: the core that owns a set of queues, their commitlog and consume queues.
//!
//! One glommio executor per shard, pinned to a core. Requests arrive from the shard's
//! connections ([`crate::net`]) or, for queues this shard owns, from other shards over the
//! [`mesh`]; [`handlers`] run them (one file per command). Appends go into the shard's
//! [`ShardStore`]; the [`flusher`] task makes them durable and releases the waiting producers
//! in batches ([`completion`]). Nothing here takes a lock shared with another core.

pub mod completion;
pub mod flusher;
pub mod groups;
pub mod handlers;
pub mod mesh;
pub mod startup;
pub mod topics;

use crate::config::{BrokerConfig, BrokerRole, FlushDiskType};
use crate::metrics::{Counter, ProbeSnapshot, ShardProbe};
use crate::protocol::Opcode;
use crate::replication::identity::LogIdentity;
use crate::replication::replicas::Replicas;
use crate::store::glommio_disk::GlommioDisk;
use crate::store::{AppendError, QueueKey, ShardStore, StoreError};
use completion::{Completions, Event};
use futures_channel::oneshot;
use futures_lite::future;
use glommio::sync::Semaphore;
use glommio::timer::sleep;
use groups::GroupOffsets;
use mesh::{Mesh, Reply, ShardRequest};
use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use topics::{TopicEntry, TopicTable};

pub struct Shard {
    pub id: usize,
    pub shard_count: usize,
    pub config: Arc<BrokerConfig>,
    /// Port on which each shard accepts connections directly (shard-aware clients).
    pub shard_ports: Arc<Vec<u16>>,
    pub store_dir: PathBuf,
    pub disk: GlommioDisk,
    pub store: ShardStore<GlommioDisk>,
    pub topics: RefCell<Arc<TopicTable>>,
    pub groups: GroupOffsets<GlommioDisk>,
    /// Producers waiting for a flush (SYNC_FLUSH).
    pub completions: Completions,
    /// Records became visible to consumers: wakes long polls.
    pub visible: Event,
    /// Wakes the flusher: data was appended (SYNC_FLUSH) or the write buffer is full.
    pub flush_requested: Event,
    /// A flush finished: write-buffer space is free again.
    pub flushed: Event,
    /// Wakes the segment allocator.
    pub segment_wanted: Event,
    /// The next segment was created, or creating it failed (see `segment_failure`).
    pub segment_ready: Event,
    /// Client requests being handled and responses queued but not yet written: a clean
    /// shutdown waits for both to reach zero, so what was in flight at SIGTERM is answered.
    pub requests_in_flight: Cell<usize>,
    pub responses_unwritten: Cell<usize>,
    /// Both counts above reached zero.
    pub drained: Event,
    /// Why the allocator could not create the next segment, until it next succeeds. Appends
    /// that need that segment are answered from it at once (`DISK_FULL` when it was for lack
    /// of space) instead of waiting for a segment that may not come.
    pub segment_failure: RefCell<Option<StoreError>>,
    /// Keeps a produce batch contiguous when it has to wait mid-batch for buffer space or a
    /// segment; uncontended in the common case, where no append awaits.
    pub append_gate: Semaphore,
    /// Serializes topic-table changes on shard 0.
    pub metadata_gate: Semaphore,
    pub mesh: Mesh,
    /// Set by a producer that found the write buffer full: flush now, whatever the mode.
    pub flush_urgent: Cell<bool>,
    /// Set at shutdown: background tasks finish their current step and return.
    pub stopping: Cell<bool>,
    /// Set once the requests in flight at a stop are answered: the flusher and the segment
    /// allocator keep running until then, so whatever those requests append is flushed.
    pub background_stopping: Cell<bool>,
    /// Counters and histograms of this shard; written only by this core.
    pub probe: ShardProbe,
    /// This shard's role; changes once, when a slave is promoted.
    pub role: Cell<BrokerRole>,
    pub role_changed: Event,
    /// The log's id and epochs (see `replication::identity`).
    pub identity: RefCell<LogIdentity>,
    /// Master: the slaves' links and the SYNC_MASTER producers waiting for them.
    pub replicas: Replicas,
    /// New log bytes to ship (master) or a link to stop: wakes shippers and reporters.
    pub replication_wakeup: Event,
    /// Slave: the master's confirmed offset as last heard; bounds what consumers see here.
    pub master_confirmed: Cell<u64>,
    /// Counts topic-table and group-offset changes on this shard; a master's shippers send a
    /// metadata frame to its slaves when it moves.
    pub metadata_version: Cell<u64>,
    /// Slave: whether the link to the master is streaming.
    pub link_up: Cell<bool>,
    /// Held around flushes, metadata writes and truncation: they must not overlap.
    pub store_gate: Semaphore,
    /// Round-robin position for produce requests that let the broker pick the queue.
    pub next_queue: Cell<usize>,
}

impl Shard {
    /// The commitlog offset up to which records may be shown to consumers: flushed under
    /// SYNC_FLUSH, appended under ASYNC_FLUSH.
    pub fn confirmed_offset(&self) -> u64 {
        let local = self.local_confirmed_offset();
        match self.role.get() {
            BrokerRole::SyncMaster if self.replicas.needed() > 0 => {
                local.min(self.replicas.completions.released_offset())
            }
            BrokerRole::SyncMaster | BrokerRole::AsyncMaster => local,
            BrokerRole::Slave => local.min(self.master_confirmed.get()),
        }
    }

    /// What this shard's own flush mode guarantees, whatever the replicas have.
    pub fn local_confirmed_offset(&self) -> u64 {
        match self.config.flush_disk_type {
            FlushDiskType::SyncFlush => self.store.flushed_offset(),
            FlushDiskType::AsyncFlush => self.store.max_offset(),
        }
    }

    pub fn bump_metadata_version(&self) {
        self.metadata_version.set(self.metadata_version.get() + 1);
        self.replication_wakeup.notify();
    }

    /// Slave: the master says everything before `offset` is confirmed there.
    pub fn set_master_confirmed(&self, offset: u64) {
        if offset > self.master_confirmed.get() {
            self.master_confirmed.set(offset);
            self.visible.notify();
        } else if offset < self.master_confirmed.get() {
            // A master that restarted (or a new one) may confirm less than before; never
            // show more than the current master confirms.
            self.master_confirmed.set(offset);
        }
    }

    /// SYNC_MASTER: writes the slaves' acknowledged offset when it moved (called with each
    /// checkpoint), so a restart starts from it.
    pub async fn persist_replicated_offset(&self) {
        if self.role.get() != BrokerRole::SyncMaster {
            return;
        }
        let released = self.replicas.completions.released_offset();
        if released == self.identity.borrow().replicated_offset {
            return;
        }
        let mut identity = self.identity.borrow().clone();
        identity.replicated_offset = released;
        match identity.save(&self.disk, &self.store_dir).await {
            Ok(()) => *self.identity.borrow_mut() = identity,
            Err(e) => tracing::warn!(shard = self.id, "writing the replicated offset: {e}"),
        }
    }

    /// Remembers where this log was cut back to follow its master.
    pub async fn record_divergence(&self, offset: u64) {
        let mut identity = self.identity.borrow().clone();
        identity.divergence_points.push(offset);
        if let Err(e) = identity.save(&self.disk, &self.store_dir).await {
            tracing::warn!(shard = self.id, "recording the divergence point: {e}");
        }
        *self.identity.borrow_mut() = identity;
    }

    pub fn topic(&self, name: &str) -> Option<TopicEntry> {
        self.topics.borrow().topics.get(name).cloned()
    }

    pub fn topic_table(&self) -> Arc<TopicTable> {
        self.topics.borrow().clone()
    }

    /// Queues of the table that this shard owns.
    pub fn owned_queues(&self, table: &TopicTable) -> Vec<QueueKey> {
        owned_queues(self.id, table)
    }

    /// Counts a request in (`+1`) or out (`-1`) of `requests_in_flight`, or a response in
    /// or out of `responses_unwritten` (see [`Shard::drained`]).
    pub fn count_in_flight(&self, counter: &Cell<usize>, delta: isize) {
        counter.set(
            counter
                .get()
                .checked_add_signed(delta)
                .expect("in-flight count"),
        );
        if self.requests_in_flight.get() == 0 && self.responses_unwritten.get() == 0 {
            self.drained.notify();
        }
    }

    /// Waits until a batch of records of `lens` bytes can be appended whole without another
    /// wait (see [`ShardStore::admit_batch`]): [`AppendError::DiskFull`] at once when the next
    /// segment could not be created for lack of space, [`AppendError::Busy`] at `deadline`.
    /// The caller holds the append gate, so nothing else appends before it does.
    pub async fn admit_batch(&self, deadline: Instant, lens: &[usize]) -> Result<(), AppendError> {
        self.append_waiting(deadline, || self.store.admit_batch(lens))
            .await
    }

    /// Runs an append, waiting (without blocking the core) while the write buffer is full or
    /// the next segment is not created yet, and retrying, until `deadline`: then
    /// [`AppendError::Busy`]. A segment that could not be created for lack of space is
    /// [`AppendError::DiskFull`] at once. Other errors are returned.
    pub async fn append_waiting<T>(
        &self,
        deadline: Instant,
        mut append: impl FnMut() -> Result<T, AppendError>,
    ) -> Result<T, AppendError> {
        let started = Instant::now();
        loop {
            let (waiting_for, event) = match append() {
                Err(AppendError::BufferFull) => {
                    let flushed = self.flushed.listen();
                    self.flush_urgent.set(true);
                    self.flush_requested.notify();
                    ("write-buffer space (a flush)", flushed)
                }
                Err(AppendError::SegmentNotReady) => {
                    if let Some(failure) = self.segment_failure.borrow().as_ref() {
                        return Err(if failure.is_disk_full() {
                            AppendError::DiskFull(failure.to_string())
                        } else {
                            AppendError::Failed(failure.to_string())
                        });
                    }
                    let ready = self.segment_ready.listen();
                    self.segment_wanted.notify();
                    ("the next commitlog segment", ready)
                }
                other => return other,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let woken = future::or(
                async {
                    let _ = event.await;
                    true
                },
                async {
                    sleep(left).await;
                    false
                },
            )
            .await;
            if !woken {
                return Err(AppendError::Busy {
                    waited_ms: started.elapsed().as_millis() as u64,
                    waiting_for,
                });
            }
        }
    }

    /// Sends a request built by `request` to every other shard and collects their answers
    /// (this shard's own answer is the caller's to add).
    pub async fn ask_others<T>(
        &self,
        request: impl Fn(oneshot::Sender<T>) -> ShardRequest,
    ) -> Result<Vec<T>, Reply> {
        let mut answers = Vec::with_capacity(self.shard_count.saturating_sub(1));
        for other in (0..self.shard_count).filter(|s| *s != self.id) {
            let (tx, rx) = oneshot::channel();
            self.mesh
                .send(other, request(tx))
                .await
                .map_err(|gone| gone.reply())?;
            answers.push(rx.await.map_err(|_| mesh::ShardGone(other).reply())?);
        }
        Ok(answers)
    }

    /// Runs a client request on shard `to` and returns its reply.
    pub async fn forward(&self, to: usize, opcode: Opcode, body: Vec<u8>) -> Reply {
        self.probe.add(Counter::ForwardedRequests, 1);
        let (tx, rx) = oneshot::channel();
        let request = ShardRequest::Execute {
            opcode,
            body,
            reply: tx,
        };
        if let Err(gone) = self.mesh.send(to, request).await {
            return gone.reply();
        }
        match rx.await {
            Ok(reply) => reply,
            Err(_) => mesh::ShardGone(to).reply(),
        }
    }

    pub fn snapshot(&self) -> ProbeSnapshot {
        self.probe.snapshot(self.id, self.gauges())
    }

    /// Point-in-time values for the probe: waiting producers, and per master shard its slaves
    /// and the worst slave lag (bytes behind the master's end, and for how long).
    fn gauges(&self) -> Vec<(&'static str, u64)> {
        let max_offset = self.store.max_offset();
        let slaves = self.replicas.states();
        let lag_bytes = slaves
            .iter()
            .map(|s| max_offset.saturating_sub(s.acked_offset))
            .max()
            .unwrap_or(0);
        let lag_ms = slaves
            .iter()
            .filter(|s| s.acked_offset < max_offset)
            .map(|s| s.caught_up_at.elapsed().as_millis() as u64)
            .max()
            .unwrap_or(0);
        vec![
            (
                "pending_completions",
                (self.completions.pending() + self.replicas.completions.pending()) as u64,
            ),
            ("replication_slaves", slaves.len() as u64),
            ("replication_lag_bytes", lag_bytes),
            ("replication_lag_ms", lag_ms),
        ]
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
    pub async fn apply_topics(&self, table: Arc<TopicTable>) -> Result<(), String> {
        let old = self.topic_table();
        for (name, entry) in &old.topics {
            let kept = table
                .topics
                .get(name)
                .is_some_and(|e| e.topic_id == entry.topic_id);
            if !kept {
                self.store
                    .remove_topic(entry.topic_id)
                    .await
                    .map_err(|e| e.to_string())?;
                self.groups.forget_topic(name).await?;
            }
        }
        let known: std::collections::HashSet<QueueKey> =
            owned_queues(self.id, &old).into_iter().collect();
        for key in owned_queues(self.id, &table) {
            if !known.contains(&key) {
                self.store.add_queue(key);
            }
        }
        *self.topics.borrow_mut() = table;
        self.bump_metadata_version();
        Ok(())
    }
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
