//! [`ShardStore`]: the commitlog and consume queues of one shard behind one API.
//!
//! All methods take `&self` and never hold an internal borrow across an `.await`, so the shard's
//! tasks (connections, the flusher, the segment allocator) can share one `Rc<ShardStore>`.
//! Only one `flush` and one `prepare_next_segment` run at a time: the shard has one task each.

use super::checkpoint::{abort_marker_path, checkpoint_path, Checkpoint};
use super::commitlog::CommitLog;
use super::consume_queue::{self, QueueState};
use super::io::{Disk, BLOCK_BYTES};
use super::record::{self, Decoded, RecordInput, RecordView, RECORD_HEADER_BYTES};
use super::{AppendError, Appended, CqEntry, QueueKey, RecoveryReport, StoreConfig, StoreError};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;
use tracing::warn;

pub struct ShardStore<D: Disk> {
    disk: D,
    config: StoreConfig,
    log: CommitLog<D>,
    /// The consume queues this shard owns; entries are dispatched here at append.
    queues: RefCell<BTreeMap<QueueKey, QueueState>>,
    /// The log head: the commitlog's first retained byte, as the checkpoint records it. Moves
    /// forward one segment per retention deletion, before the segment's file goes.
    log_head: Cell<u64>,
    /// Where [`ShardStore::expire_queues_before`] last moved the queues' minimum to (the
    /// in-memory stand-in for the consume-queue side, see there).
    queues_head: Cell<u64>,
    /// The newest store timestamp (broker clock, ms) seen in each segment, by start offset:
    /// noted at every append and by the recovery scan; a segment sealed before a restart and
    /// not scanned is read once by [`ShardStore::newest_store_ms`].
    newest_store_ms: RefCell<BTreeMap<u64, u64>>,
}

fn invalid_config(reason: String) -> StoreError {
    StoreError::io(
        "invalid store config",
        std::io::Error::new(std::io::ErrorKind::InvalidInput, reason),
    )
}

fn validate(config: &StoreConfig) -> Result<(), StoreError> {
    let segment = config.segment_size_bytes;
    if segment == 0 || segment % BLOCK_BYTES as u64 != 0 {
        return Err(invalid_config(format!(
            "segment_size_bytes {segment} is not a positive multiple of {BLOCK_BYTES}"
        )));
    }
    if config.max_record_bytes < RECORD_HEADER_BYTES
        || config.max_record_bytes > config.write_buffer_bytes
        || config.max_record_bytes as u64 > segment
    {
        return Err(invalid_config(format!(
            "max_record_bytes {} must be at least {RECORD_HEADER_BYTES} and at most \
             write_buffer_bytes {} and segment_size_bytes {segment}",
            config.max_record_bytes, config.write_buffer_bytes
        )));
    }
    Ok(())
}

/// What the first recovery pass decided about each queue.
#[derive(Default)]
struct Dispatch {
    dispatched: u64,
    /// Queues whose consume queue is behind or inconsistent: rebuilt from the oldest segment.
    rebuild: BTreeSet<QueueKey>,
}

impl<D: Disk> ShardStore<D> {
    /// Opens (creating if needed) the store in `config.dir` and recovers it.
    ///
    /// `queues` are the queues this shard owns according to topic metadata; records for other
    /// (topic id, queue) pairs (deleted topics) are skipped by dispatch. Writes the abort marker.
    pub async fn open(
        disk: D,
        config: StoreConfig,
        queues: &[QueueKey],
    ) -> Result<(Self, RecoveryReport), StoreError> {
        Self::open_reporting(disk, config, queues, &|_| {}).await
    }

    /// [`ShardStore::open`], telling `stage` what recovery is doing as it goes (each step, and
    /// each segment the scan enters), so a caller can put a deadline on every stage and name
    /// the one that did not finish.
    pub async fn open_reporting(
        disk: D,
        config: StoreConfig,
        queues: &[QueueKey],
        stage: &dyn Fn(String),
    ) -> Result<(Self, RecoveryReport), StoreError> {
        let started = Instant::now();
        validate(&config)?;
        let store_dir = config.dir.clone();
        let io = |what: &str| {
            let what = format!("{what} in {}", store_dir.display());
            move |e| StoreError::io(what, e)
        };
        disk.create_dir_all(&config.dir)
            .await
            .map_err(io("creating the store directory"))?;
        let abort = abort_marker_path(&config.dir);
        let unclean_shutdown = disk.exists(&abort).await.map_err(io("checking abort"))?;
        let checkpoint = disk
            .read_file(&checkpoint_path(&config.dir))
            .await
            .map_err(io("reading the checkpoint"))?
            .and_then(|bytes| Checkpoint::decode(&bytes));
        stage(format!("opening the commitlog in {}", config.dir.display()));
        let log = CommitLog::open(disk.clone(), &config).await?;
        // A deletion the checkpoint recorded may not have reached its unlink: finish it. A
        // segment missing before the head is retention's doing, not lost data; a log whose
        // oldest segment lies past the recorded head (a checkpoint of a broker before
        // retention, files removed by hand) starts there.
        let recorded_head = checkpoint.map_or(0, |c| c.log_head);
        let finished = log.remove_segments_before(recorded_head).await?;
        if finished > 0 {
            tracing::info!(
                "finished {finished} retention deletion(s) a crash interrupted: the checkpoint's log head is {recorded_head}"
            );
        }
        let log_head = recorded_head.max(log.oldest_segment().unwrap_or(recorded_head));
        let store = ShardStore {
            disk: disk.clone(),
            config,
            log,
            queues: RefCell::new(BTreeMap::new()),
            log_head: Cell::new(log_head),
            queues_head: Cell::new(0),
            newest_store_ms: RefCell::new(BTreeMap::new()),
        };
        let on_disk = store.queues_on_disk().await?;
        let mut keys: Vec<QueueKey> = queues.to_vec();
        keys.extend(on_disk.into_iter().filter(|k| !queues.contains(k)));
        stage(format!("loading {} consume queues", keys.len()));
        let (loaded, invalid) = store.load_queues(&keys).await?;
        // Never before the head: with every segment gone (removed by hand) the log resumes at
        // the head rather than restarting at 0 under entries that point past it.
        let scan_start = store
            .log
            .scan_start(checkpoint.map(|c| c.scan_start()))
            .max(store.log_head());
        let mut dispatch = Dispatch {
            rebuild: invalid,
            ..Dispatch::default()
        };
        let segment_size = store.config.segment_size_bytes;
        let mut scanning = u64::MAX;
        let mut enter_segment = |offset: u64| {
            let base = offset / segment_size * segment_size;
            if base != scanning {
                scanning = base;
                stage(format!(
                    "scanning commitlog segment {} from offset {offset}",
                    store.log.segment_path(base).display()
                ));
            }
        };
        enter_segment(scan_start);
        let scan = store
            .log
            .scan(scan_start, u64::MAX, |view| {
                enter_segment(view.commitlog_offset);
                store.note_store_time(view.commitlog_offset, view.store_timestamp_ms);
                store.redispatch(view, &mut dispatch);
                Ok(())
            })
            .await?;
        stage(format!(
            "truncating the commitlog at offset {} and syncing it",
            scan.end_offset
        ));
        let truncated_bytes = store.log.finish_recovery(scan_start, &scan).await?;
        stage("trimming consume queues past the recovered end".to_string());
        let trimmed = store.trim_queues(scan.end_offset, &loaded).await?;
        if scan_start > store.log.oldest_segment().unwrap_or(0) {
            for (key, state) in store.queues.borrow().iter() {
                if !state.file_exists {
                    dispatch.rebuild.insert(*key);
                }
            }
        }
        dispatch.dispatched += store
            .rebuild(&dispatch.rebuild, scan.end_offset, stage)
            .await?;
        // Idempotent: a crash between a deletion's checkpoint and its queue trim heals here.
        store.expire_queues_before(store.log_head()).await?;
        stage("writing the abort marker, consume queues and checkpoint".to_string());
        disk.write_atomic(&abort, Vec::new())
            .await
            .map_err(io("writing the abort marker"))?;
        store.persist_metadata().await?;
        let report = RecoveryReport {
            unclean_shutdown,
            scan_start_offset: scan_start,
            scanned_bytes: scan.scanned_bytes,
            scanned_records: scan.scanned_records,
            truncated_bytes,
            truncation_reason: scan.corruption.clone(),
            max_offset: scan.end_offset,
            consume_queue_entries_trimmed: trimmed,
            consume_queue_entries_dispatched: dispatch.dispatched,
            duration: started.elapsed(),
        };
        Ok((store, report))
    }

    /// Loads each queue's file; returns how many entries each file held.
    /// Every queue with a consume-queue file: `consumequeue/<topic id>/<queue>`.
    async fn queues_on_disk(&self) -> Result<Vec<QueueKey>, StoreError> {
        let root = self.config.dir.join("consumequeue");
        let list = |dir: std::path::PathBuf| async move {
            self.disk
                .list(&dir)
                .await
                .map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))
        };
        let mut keys = Vec::new();
        for topic in list(root.clone()).await? {
            let Ok(topic_id) = topic.parse::<u32>() else {
                continue;
            };
            for queue in list(root.join(&topic)).await? {
                if let Ok(queue) = queue.parse::<u32>() {
                    keys.push(QueueKey { topic_id, queue });
                }
            }
        }
        Ok(keys)
    }

    /// Also returns the queues whose file holds an entry that cannot be right (see
    /// [`consume_queue::first_invalid_entry`]): they are rebuilt from the commitlog.
    async fn load_queues(
        &self,
        keys: &[QueueKey],
    ) -> Result<(BTreeMap<QueueKey, usize>, BTreeSet<QueueKey>), StoreError> {
        let mut loaded = BTreeMap::new();
        let mut invalid = BTreeSet::new();
        for key in keys {
            let path = consume_queue::queue_path(&self.config.dir, *key);
            let entries = consume_queue::load(&self.disk, &path).await?;
            let file_exists = entries.is_some();
            let mut entries = entries.unwrap_or_default();
            let limits = consume_queue::EntryLimits {
                max_record_bytes: self.config.max_record_bytes as u64,
                segment_size_bytes: self.config.segment_size_bytes,
            };
            if let Some(bad) = consume_queue::first_invalid_entry(&entries, limits) {
                warn!(
                    "consume queue {} holds an impossible entry at index {bad} ({:?}); \
                     rebuilding it from the commitlog",
                    path.display(),
                    entries[bad]
                );
                entries.clear();
                invalid.insert(*key);
            }
            loaded.insert(*key, entries.len());
            let state = QueueState {
                persisted: entries.len(),
                entries,
                file_exists,
            };
            self.queues.borrow_mut().insert(*key, state);
        }
        Ok((loaded, invalid))
    }

    /// Dispatches one scanned record idempotently: append if it is the queue's next entry,
    /// skip if already present, schedule a rebuild if the queue is behind or disagrees.
    fn redispatch(&self, view: &RecordView<'_>, dispatch: &mut Dispatch) {
        let key = QueueKey {
            topic_id: view.topic_id,
            queue: view.queue_id,
        };
        if dispatch.rebuild.contains(&key) {
            return;
        }
        let mut queues = self.queues.borrow_mut();
        if self.config.adopt_unknown_queues {
            queues.entry(key).or_default();
        }
        let Some(state) = queues.get_mut(&key) else {
            return;
        };
        let next = state.entries.len() as u64;
        if view.queue_offset == next {
            state.entries.push(entry_of(view));
            dispatch.dispatched += 1;
        } else if view.queue_offset > next
            || state.entries[view.queue_offset as usize] != entry_of(view)
        {
            // The whole entry is compared, not only its offset: consume-queue entries carry no
            // checksum, and a crash during a consume-queue write past the checkpoint can leave
            // a plausible entry with a damaged size or key hash (found by the timed simulation:
            // the record then failed to read for ever, its bytes intact in the log).
            dispatch.rebuild.insert(key);
        }
    }

    /// Drops entries whose record does not end at or before `end` and zeroes them in the file
    /// so they can never come back. Returns how many were dropped.
    async fn trim_queues(
        &self,
        end: u64,
        loaded: &BTreeMap<QueueKey, usize>,
    ) -> Result<u64, StoreError> {
        let mut trimmed = 0;
        for (key, &file_entries) in loaded {
            let kept = {
                let mut queues = self.queues.borrow_mut();
                let state = queues.get_mut(key).expect("loaded queue");
                while state.entries.last().is_some_and(|e| e.end_offset() > end) {
                    state.entries.pop();
                }
                state.persisted = state.persisted.min(state.entries.len());
                state.persisted
            };
            if kept >= file_entries {
                continue;
            }
            trimmed += (file_entries - kept) as u64;
            let tail_index = consume_queue::block_first_entry(kept);
            let tail: Vec<CqEntry> = self.queues.borrow()[key].entries[tail_index..kept].to_vec();
            let path = consume_queue::queue_path(&self.config.dir, *key);
            let zero_to = (file_entries * consume_queue::CQ_ENTRY_BYTES) as u64;
            consume_queue::write_from(&self.disk, &path, &tail, tail_index, kept, zero_to).await?;
        }
        Ok(trimmed)
    }

    /// Rebuilds the given queues from the oldest segment up to `end`. Returns entries added.
    async fn rebuild(
        &self,
        keys: &BTreeSet<QueueKey>,
        end: u64,
        stage: &dyn Fn(String),
    ) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        for key in keys {
            let path = consume_queue::queue_path(&self.config.dir, *key);
            let exists = {
                let mut queues = self.queues.borrow_mut();
                let state = queues.get_mut(key).expect("known queue");
                *state = QueueState::default();
                self.disk.exists(&path)
            };
            if exists
                .await
                .map_err(|e| StoreError::io("checking a consume queue", e))?
            {
                self.disk
                    .remove(&path)
                    .await
                    .map_err(|e| StoreError::io(format!("removing {}", path.display()), e))?;
            }
        }
        let mut added = 0;
        let oldest = self.log.oldest_segment().unwrap_or(0);
        let segment_size = self.config.segment_size_bytes;
        let mut scanning = u64::MAX;
        let scan = self
            .log
            .scan(oldest, end, |view| {
                let base = view.commitlog_offset / segment_size * segment_size;
                if base != scanning {
                    scanning = base;
                    stage(format!(
                        "rebuilding {} consume queues: scanning segment {}",
                        keys.len(),
                        self.log.segment_path(base).display()
                    ));
                }
                let key = QueueKey {
                    topic_id: view.topic_id,
                    queue: view.queue_id,
                };
                if !keys.contains(&key) {
                    return Ok(());
                }
                let mut queues = self.queues.borrow_mut();
                let state = queues.get_mut(&key).expect("known queue");
                let next = state.entries.len() as u64;
                if view.queue_offset > next {
                    return Err(StoreError::Corrupt(format!(
                        "queue {}/{} jumps from offset {next} to {} at commitlog offset {}",
                        key.topic_id, key.queue, view.queue_offset, view.commitlog_offset
                    )));
                }
                if view.queue_offset == next {
                    state.entries.push(entry_of(view));
                    added += 1;
                }
                Ok(())
            })
            .await?;
        // The rebuild reads records the recovery scan did not check: one that fails its crc
        // stops it short, and the queue would silently miss every entry after it.
        if scan.end_offset < end || scan.corruption.is_some() {
            return Err(StoreError::Corrupt(format!(
                "rebuilding consume queues stopped at commitlog offset {} of {end}: {}",
                scan.end_offset,
                scan.corruption.as_deref().unwrap_or("a gap in the log")
            )));
        }
        Ok(added)
    }

    /// Registers a new, empty queue (a topic was created).
    pub fn add_queue(&self, key: QueueKey) {
        self.queues.borrow_mut().entry(key).or_default();
    }

    /// Forgets every queue of a topic and removes its consume-queue files.
    pub async fn remove_topic(&self, topic_id: u32) -> Result<(), StoreError> {
        self.queues
            .borrow_mut()
            .retain(|key, _| key.topic_id != topic_id);
        let dir = consume_queue::queue_dir(&self.config.dir, topic_id);
        self.disk
            .remove_dir_all(&dir)
            .await
            .map_err(|e| StoreError::io(format!("removing {}", dir.display()), e))
    }

    /// Appends one record to the commitlog write buffer, assigning the next queue offset of
    /// `input`'s queue (the `queue_offset` field of `input` is ignored and filled in), and
    /// dispatches its consume-queue entry in memory. Memory only: durable after `flush`.
    pub fn append(&self, input: &RecordInput<'_>) -> Result<Appended, AppendError> {
        let key = QueueKey {
            topic_id: input.topic_id,
            queue: input.queue_id,
        };
        let mut queues = self.queues.borrow_mut();
        let Some(state) = queues.get_mut(&key) else {
            return Err(AppendError::UnknownQueue {
                topic_id: key.topic_id,
                queue: key.queue,
            });
        };
        let size = input.encoded_len();
        if size > self.config.max_record_bytes {
            return Err(AppendError::TooLarge {
                size,
                max: self.config.max_record_bytes,
            });
        }
        let queue_offset = state.entries.len() as u64;
        let record = RecordInput {
            queue_offset,
            ..*input
        };
        let commitlog_offset = self
            .log
            .append(size, |offset, out| record.encode_into(offset, out))?;
        self.note_store_time(commitlog_offset, input.store_timestamp_ms);
        state.entries.push(CqEntry {
            commitlog_offset,
            size: size as u32,
            tag_hash: record::key_hash(input.key),
        });
        Ok(Appended {
            queue: key,
            queue_offset,
            commitlog_offset,
            end_offset: commitlog_offset + size as u64,
        })
    }

    /// Appends one record shipped by the master, byte for byte. It must decode (crc, size,
    /// stored offset), land at the commitlog offset the master gave it and carry the next
    /// queue offset of its queue; a queue not yet known here (its topic is still being
    /// synced) is registered on the spot. Nothing is appended when a check fails.
    pub fn append_replicated(&self, bytes: &[u8]) -> Result<Appended, AppendError> {
        self.append_replicated_unless_deleted(bytes, |_| false)
    }

    /// [`ShardStore::append_replicated`], except that a record of a topic id `deleted` names
    /// goes into the log (where the master has it) without a consume-queue entry: a slave
    /// that already dropped a deleted topic's queues still receives the records the master
    /// wrote before the deletion, and registering them afresh would fail the queue-offset check
    /// on every reconnect.
    pub fn append_replicated_unless_deleted(
        &self,
        bytes: &[u8],
        deleted: impl Fn(u32) -> bool,
    ) -> Result<Appended, AppendError> {
        let Some(claimed) = record::peek_commitlog_offset(bytes) else {
            return Err(AppendError::Diverged(format!(
                "{} bytes is not a record",
                bytes.len()
            )));
        };
        let view = match record::decode(bytes, claimed) {
            Ok(record::Decoded::Record(view)) if view.total_size as usize == bytes.len() => view,
            Ok(_) => return Err(AppendError::Diverged(format!("no record at {claimed}"))),
            Err(e) => return Err(AppendError::Diverged(e.to_string())),
        };
        if bytes.len() > self.config.max_record_bytes {
            return Err(AppendError::TooLarge {
                size: bytes.len(),
                max: self.config.max_record_bytes,
            });
        }
        let start = self.log.next_start(bytes.len());
        if start != claimed {
            return Err(AppendError::Diverged(format!(
                "record for commitlog offset {claimed} would land at {start}"
            )));
        }
        let key = QueueKey {
            topic_id: view.topic_id,
            queue: view.queue_id,
        };
        if deleted(key.topic_id) {
            let commitlog_offset = self
                .log
                .append(bytes.len(), |_, out| out.copy_from_slice(bytes))?;
            debug_assert_eq!(commitlog_offset, claimed);
            self.note_store_time(commitlog_offset, view.store_timestamp_ms);
            return Ok(Appended {
                queue: key,
                queue_offset: view.queue_offset,
                commitlog_offset,
                end_offset: commitlog_offset + bytes.len() as u64,
            });
        }
        let mut queues = self.queues.borrow_mut();
        let at = queues
            .get(&key)
            .map_or(0, |state| state.entries.len() as u64);
        if view.queue_offset != at {
            // Refused before the queue is registered: a failed append leaves no empty queue.
            return Err(AppendError::Diverged(format!(
                "record at {claimed} has queue offset {} but topic id {} queue {} is at {at}",
                view.queue_offset, key.topic_id, key.queue,
            )));
        }
        let state = queues.entry(key).or_default();
        let commitlog_offset = self
            .log
            .append(bytes.len(), |_, out| out.copy_from_slice(bytes))?;
        debug_assert_eq!(commitlog_offset, claimed);
        self.note_store_time(commitlog_offset, view.store_timestamp_ms);
        state.entries.push(CqEntry {
            commitlog_offset,
            size: bytes.len() as u32,
            tag_hash: view.key_hash,
        });
        Ok(Appended {
            queue: key,
            queue_offset: view.queue_offset,
            commitlog_offset,
            end_offset: commitlog_offset + bytes.len() as u64,
        })
    }

    /// Cuts the log back to `offset` (a slave whose log diverged from its master's): flushes,
    /// zeroes everything from `offset` to the end of its segment, deletes later segments, drops
    /// consume-queue entries past it and writes a new checkpoint. The caller must not run a
    /// flush or `persist_metadata` concurrently.
    pub async fn truncate_to(&self, offset: u64) -> Result<(), StoreError> {
        if offset >= self.log.max_offset() {
            return Ok(());
        }
        if offset < self.log_head() {
            // Retention deleted the segments the cut would land in: the log cannot start
            // over there, and the slave must not pretend it holds bytes it lacks.
            return Err(StoreError::Corrupt(format!(
                "cannot cut the log back to {offset}: retention deleted everything before {}",
                self.log_head()
            )));
        }
        self.log.flush().await?;
        // Point recovery at or before the cut first: if the broker dies while the tail is being
        // zeroed, recovery must not start scanning inside the zeroed range and leave a hole.
        let before_cut = Checkpoint {
            flushed_offset: offset,
            dispatched_offset: offset,
            log_head: self.log_head(),
        };
        self.disk
            .write_atomic(&checkpoint_path(&self.config.dir), before_cut.encode())
            .await
            .map_err(|e| StoreError::io("writing the checkpoint before a truncation", e))?;
        let cut = super::commitlog::ScanEnd {
            end_offset: offset,
            scanned_bytes: 0,
            scanned_records: 0,
            corruption: Some(format!("diverged from the master at {offset}")),
        };
        self.log.finish_recovery(offset, &cut).await?;
        let in_files: BTreeMap<QueueKey, usize> = self
            .queues
            .borrow()
            .iter()
            .filter(|(_, s)| s.file_exists)
            .map(|(k, s)| (*k, s.persisted))
            .collect();
        for state in self.queues.borrow_mut().values_mut() {
            while state
                .entries
                .last()
                .is_some_and(|e| e.end_offset() > offset)
            {
                state.entries.pop();
            }
        }
        self.trim_queues(offset, &in_files).await?;
        self.persist_metadata().await
    }

    /// The commitlog, for replication: segment locations and the unflushed tail.
    pub fn commitlog(&self) -> &CommitLog<D> {
        &self.log
    }

    /// Writes every dirty block present at the call and fdatasyncs: one sync covers every
    /// append made before the call (group commit). Returns the new flushed offset.
    pub async fn flush(&self) -> Result<u64, StoreError> {
        self.log.flush().await
    }

    /// First half of a pipelined flush (see [`CommitLog::write_dirty`]).
    pub async fn write_dirty(&self) -> Result<Option<super::commitlog::Written>, StoreError> {
        self.log.write_dirty().await
    }

    /// Second half: makes a write durable. Returns the flushed offset.
    pub async fn sync(&self, written: super::commitlog::Written) -> Result<u64, StoreError> {
        self.log.sync(written).await
    }

    /// Bytes appended but not yet written to disk.
    pub fn unwritten_bytes(&self) -> u64 {
        self.log.unwritten_bytes()
    }

    /// Sizes and durations of the most recent successful flush.
    pub fn last_flush(&self) -> super::commitlog::FlushStats {
        self.log.last_flush()
    }

    /// Writes the consume queues' new entries and the checkpoint (flushed offset and the
    /// commitlog offset up to which consume queues are on disk).
    pub async fn persist_metadata(&self) -> Result<(), StoreError> {
        if let Some(reason) = self.log.failure() {
            return Err(StoreError::io(
                "store failed earlier",
                std::io::Error::other(reason),
            ));
        }
        let checkpoint = Checkpoint {
            flushed_offset: self.log.flushed_offset(),
            dispatched_offset: self.log.max_offset(),
            log_head: self.log_head(),
        };
        let pending: Vec<(QueueKey, usize, usize, bool, Vec<CqEntry>)> = self
            .queues
            .borrow()
            .iter()
            .filter(|(_, s)| !s.file_exists || s.persisted < s.entries.len())
            .map(|(key, s)| {
                let tail_index = consume_queue::block_first_entry(s.persisted);
                let tail = s.entries[tail_index..].to_vec();
                (*key, tail_index, s.persisted, s.file_exists, tail)
            })
            .collect();
        for (key, tail_index, from, file_exists, tail) in pending {
            if let Err(e) = self
                .write_queue(key, &tail, tail_index, from, file_exists)
                .await
            {
                self.log.mark_failed(e.to_string());
                return Err(e);
            }
            if let Some(state) = self.queues.borrow_mut().get_mut(&key) {
                state.persisted = state.persisted.max(tail_index + tail.len());
                state.file_exists = true;
            }
        }
        let path = checkpoint_path(&self.config.dir);
        self.disk
            .write_atomic(&path, checkpoint.encode())
            .await
            .map_err(|e| StoreError::io(format!("writing {}", path.display()), e))
    }

    async fn write_queue(
        &self,
        key: QueueKey,
        tail: &[CqEntry],
        tail_index: usize,
        from: usize,
        file_exists: bool,
    ) -> Result<(), StoreError> {
        if !file_exists {
            let dir = consume_queue::queue_dir(&self.config.dir, key.topic_id);
            self.disk
                .create_dir_all(&dir)
                .await
                .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        }
        let path = consume_queue::queue_path(&self.config.dir, key);
        consume_queue::write_from(&self.disk, &path, tail, tail_index, from, 0).await?;
        if !file_exists {
            // The checkpoint written next says these entries are on disk: the new file's name
            // must be durable before it.
            let dir = consume_queue::queue_dir(&self.config.dir, key.topic_id);
            self.disk
                .sync_dir(&dir)
                .await
                .map_err(|e| StoreError::io(format!("syncing {}", dir.display()), e))?;
        }
        Ok(())
    }

    /// See [`CommitLog::admit_batch`].
    pub fn admit_batch(&self, lens: &[usize]) -> Result<(), AppendError> {
        self.log.admit_batch(lens)
    }

    /// True when the next segment should be created and zero-filled ahead of need.
    pub fn needs_next_segment(&self) -> bool {
        self.log.needs_next_segment()
    }

    /// Creates and zero-fills the next segment (no-op if it exists).
    pub async fn prepare_next_segment(&self) -> Result<(), StoreError> {
        self.log.prepare_next_segment().await
    }

    /// Commitlog offset just past the last appended record.
    pub fn max_offset(&self) -> u64 {
        self.log.max_offset()
    }

    /// Commitlog offset up to which an fdatasync has completed.
    pub fn flushed_offset(&self) -> u64 {
        self.log.flushed_offset()
    }

    /// Bytes appended but not yet flushed.
    pub fn dirty_bytes(&self) -> u64 {
        self.log.max_offset() - self.log.flushed_offset()
    }

    /// (min queue offset, next queue offset) of a queue, counting every appended entry. The
    /// minimum is derived, never stored: the first entry whose record starts at or after the
    /// queues' head (see [`ShardStore::expire_queues_before`]).
    pub fn queue_range(&self, key: QueueKey) -> Option<(u64, u64)> {
        let queues = self.queues.borrow();
        let head = self.queues_head.get();
        queues.get(&key).map(|s| {
            let min = s.entries.partition_point(|e| e.commitlog_offset < head);
            (min as u64, s.entries.len() as u64)
        })
    }

    /// One past the highest queue offset whose record ends at or before `confirmed_offset`.
    pub fn visible_end(&self, key: QueueKey, confirmed_offset: u64) -> Option<u64> {
        let queues = self.queues.borrow();
        let state = queues.get(&key)?;
        Some(consume_queue::visible_end(&state.entries, confirmed_offset) as u64)
    }

    /// Consume-queue entries of `key` from queue offset `from`, at most `max_count`.
    pub fn entries(&self, key: QueueKey, from: u64, max_count: usize) -> Vec<CqEntry> {
        let queues = self.queues.borrow();
        let Some(state) = queues.get(&key) else {
            return Vec::new();
        };
        let start = (from as usize).min(state.entries.len());
        let end = start.saturating_add(max_count).min(state.entries.len());
        state.entries[start..end].to_vec()
    }

    /// The bytes of the record an entry points to (from the write buffer or from disk).
    /// The bytes of the log from `from` to `to` in one read (memory or one segment on disk).
    /// Pulls read the records of consecutive entries this way rather than one read each.
    pub async fn read_span(&self, from: u64, to: u64) -> Result<Vec<u8>, StoreError> {
        self.log.read(from, (to - from) as usize).await
    }

    pub fn segment_size_bytes(&self) -> u64 {
        self.config.segment_size_bytes
    }

    /// The largest record this store writes; a consume-queue entry claiming more is corrupt.
    pub fn max_record_bytes(&self) -> usize {
        self.config.max_record_bytes
    }

    pub async fn read_record(&self, entry: CqEntry) -> Result<Vec<u8>, StoreError> {
        let bytes = self
            .log
            .read(entry.commitlog_offset, entry.size as usize)
            .await?;
        match record::decode(&bytes, entry.commitlog_offset) {
            Ok(Decoded::Record(view)) if view.total_size == entry.size => Ok(bytes),
            Ok(other) => Err(StoreError::Corrupt(format!(
                "consume-queue entry {entry:?} points at {other:?}, not a record of its size"
            ))),
            Err(e) => Err(StoreError::Corrupt(e.to_string())),
        }
    }

    /// The commitlog's first retained byte (the log head).
    pub fn log_head(&self) -> u64 {
        self.log_head.get()
    }

    fn note_store_time(&self, commitlog_offset: u64, store_timestamp_ms: u64) {
        let base = self.log.base_of(commitlog_offset);
        let mut newest = self.newest_store_ms.borrow_mut();
        let at = newest.entry(base).or_insert(store_timestamp_ms);
        *at = (*at).max(store_timestamp_ms);
    }

    /// The segments retention may delete, oldest first: wholly before the segment being
    /// written and wholly flushed (an unflushed end marker would otherwise be lost with it).
    pub fn retention_candidates(&self) -> Vec<u64> {
        let flushed = self.log.flushed_offset();
        let size = self.config.segment_size_bytes;
        self.log
            .sealed_segments()
            .into_iter()
            .filter(|base| base + size <= flushed)
            .collect()
    }

    /// The newest store timestamp of segment `base` (`None`: it holds no record): remembered
    /// from appends and the recovery scan, else found by reading the segment once (a segment
    /// sealed before this process started), then remembered.
    pub async fn newest_store_ms(&self, base: u64) -> Result<Option<u64>, StoreError> {
        if let Some(ms) = self.newest_store_ms.borrow().get(&base) {
            return Ok(Some(*ms));
        }
        let mut newest = None::<u64>;
        let end = base + self.config.segment_size_bytes;
        self.log
            .scan(base, end, |view| {
                newest = Some(
                    newest.map_or(view.store_timestamp_ms, |n| n.max(view.store_timestamp_ms)),
                );
                Ok(())
            })
            .await?;
        if let Some(ms) = newest {
            self.newest_store_ms.borrow_mut().insert(base, ms);
        }
        Ok(newest)
    }

    /// First step of deleting the oldest segment `base`: the head moves past it and the
    /// checkpoint records that durably. The caller holds the store gate (no flush or metadata
    /// write runs meanwhile), then calls [`ShardStore::expire_queues_before`] and
    /// [`ShardStore::remove_expired_segment`]. Returns the new head.
    pub async fn advance_log_head(&self, base: u64) -> Result<u64, StoreError> {
        if self.retention_candidates().first() != Some(&base) {
            return Err(StoreError::Corrupt(format!(
                "segment {base} is not the oldest deletable segment"
            )));
        }
        let old = self.log_head.get();
        let head = base + self.config.segment_size_bytes;
        self.log_head.set(head);
        if let Err(e) = self.persist_metadata().await {
            self.log_head.set(old);
            return Err(e);
        }
        Ok(head)
    }

    /// Last step of a deletion: the segment's file goes (after the checkpoint and the queues).
    pub async fn remove_expired_segment(&self, base: u64) -> Result<(), StoreError> {
        if base + self.config.segment_size_bytes > self.log_head.get() {
            return Err(StoreError::Corrupt(format!(
                "segment {base} is not before the log head {}",
                self.log_head.get()
            )));
        }
        self.log.remove_segment(base).await?;
        self.newest_store_ms.borrow_mut().remove(&base);
        Ok(())
    }

    /// Moves every queue's minimum to the first entry at or after `log_head` (the shared
    /// contract with the consume-queue split: idempotent, called by retention after the
    /// checkpoint and by recovery).
    ///
    /// This is the smallest in-memory version, kept apart so the consume-queue work can
    /// replace its body: it only records the head that [`ShardStore::queue_range`] derives each
    /// minimum from. Entries before it stay in memory and in the queue files (nothing reads
    /// them: a pull below the minimum is OFFSET_OUT_OF_RANGE).
    pub async fn expire_queues_before(&self, log_head: u64) -> Result<(), StoreError> {
        self.queues_head.set(self.queues_head.get().max(log_head));
        Ok(())
    }

    /// Clean shutdown: flush, persist metadata, remove the abort marker.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.flush().await?;
        self.persist_metadata().await?;
        let abort = abort_marker_path(&self.config.dir);
        self.disk
            .remove(&abort)
            .await
            .map_err(|e| StoreError::io(format!("removing {}", abort.display()), e))
    }
}

fn entry_of(view: &RecordView<'_>) -> CqEntry {
    CqEntry {
        commitlog_offset: view.commitlog_offset,
        size: view.total_size,
        tag_hash: view.key_hash,
    }
}

#[cfg(test)]
mod tests {
    use super::{QueueKey, ShardStore, StoreConfig};
    use crate::store::record::RecordInput;
    use crate::testing::SimDisk;
    use futures_lite::future::block_on;
    use std::path::PathBuf;

    /// A record of topic id 5 queue 0 at `queue_offset`, encoded where it lands in the log.
    fn shipped(queue_offset: u64, commitlog_offset: u64) -> Vec<u8> {
        let input = RecordInput {
            topic_id: 5,
            queue_id: 0,
            queue_offset,
            born_timestamp_ms: 1,
            store_timestamp_ms: 1,
            topic: "gone",
            key: b"",
            properties: b"",
            body: b"before the deletion",
        };
        let mut out = vec![0u8; input.encoded_len()];
        input.encode_into(commitlog_offset, &mut out);
        out
    }

    /// A slave shard that applied a topic's deletion before the topic's last records arrived
    /// keeps them in the log (where the master has them) and registers no queue for them; the
    /// plain replicated append refuses the second one, which is what stalled such a link.
    #[test]
    fn records_of_a_deleted_topic_land_in_the_log_without_a_queue() {
        let config = StoreConfig {
            dir: PathBuf::from("/store/shard-1"),
            segment_size_bytes: 64 * 1024,
            write_buffer_bytes: 16 * 1024,
            max_record_bytes: 4 * 1024,
            adopt_unknown_queues: true,
        };
        let (slave, _) = block_on(ShardStore::open(SimDisk::new(), config, &[])).expect("open");
        let key = QueueKey {
            topic_id: 5,
            queue: 0,
        };
        let first = shipped(0, 0);
        slave.append_replicated(&first).expect("first record");
        block_on(slave.remove_topic(5)).expect("remove");
        let second = shipped(1, slave.max_offset());
        assert!(
            slave.append_replicated(&second).is_err(),
            "a re-registered queue starts at 0 and refuses queue offset 1"
        );
        let deleted = |id: u32| id == 5;
        let end = slave.max_offset() + second.len() as u64;
        slave
            .append_replicated_unless_deleted(&second, deleted)
            .expect("a deleted topic's record is logged");
        assert_eq!(slave.max_offset(), end);
        let third = shipped(2, end);
        slave
            .append_replicated_unless_deleted(&third, deleted)
            .expect("and the next one too");
        assert_eq!(slave.max_offset(), end + third.len() as u64);
        assert_eq!(slave.queue_range(key), None);
    }
}
