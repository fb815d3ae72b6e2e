//! [`ShardStore`]: the commitlog and consume queues of one shard behind one API.
//!
//! All methods take `&self` and never hold an internal borrow across an `.await`, so the shard's
//! tasks (connections, the flusher, the segment allocator) can share one `Rc<ShardStore>`.
//! Only one `flush` and one `prepare_next_segment` run at a time: the shard has one task each.

use super::checkpoint::{abort_marker_path, checkpoint_path, Checkpoint};
use super::commitlog::CommitLog;
use super::consume_queue::CQ_ENTRY_BYTES;
use super::consume_queue::{self, QueueState};
use super::io::{Disk, BLOCK_BYTES};
use super::record::{self, Decoded, RecordInput, RecordView, RECORD_HEADER_BYTES};
use super::{AppendError, Appended, CqEntry, QueueKey, RecoveryReport, StoreConfig, StoreError};
use crate::constants::CQ_OPEN_READERS;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;
use tracing::warn;

pub struct ShardStore<D: Disk> {
    disk: D,
    config: StoreConfig,
    log: CommitLog<D>,
    /// The consume queues this shard owns; entries are dispatched here at append.
    queues: RefCell<BTreeMap<QueueKey, QueueState>>,
    /// The consume-queue file each queue last read old entries from, kept open: a consumer
    /// behind the cached tail reads the same file pull after pull, and opening it each time
    /// (an open and a device-limit lookup) costs more than the read. Bounded, and forgotten
    /// whenever a queue's files are removed (see [`Readers`]).
    readers: RefCell<Readers<D::File>>,
    /// The log head: the commitlog's first retained byte, as the checkpoint records it. Moves
    /// forward one segment per retention deletion, before the segment's file goes.
    log_head: Cell<u64>,
    /// The newest store timestamp (broker clock, ms) seen in each segment, by start offset:
    /// noted at every append and by the recovery scan; a segment sealed before a restart and
    /// not scanned is read once by [`ShardStore::newest_store_ms`].
    newest_store_ms: RefCell<BTreeMap<u64, u64>>,
    /// The dispatched offset of the last checkpoint written: consume-queue entries on disk
    /// cover every record before it. A segment is deleted only wholly before it, so a crash
    /// after the unlink (which the checkpoint does not record until its next regular write)
    /// never needs a deleted record to rebuild a queue.
    checkpointed_offset: Cell<u64>,
    /// Entry lists pulls have given back (see [`ShardStore::entry_list`]), cleared.
    entry_lists: RefCell<Vec<Vec<CqEntry>>>,
}

/// How many cleared entry lists the store keeps for the next pulls: as many pulls at once
/// as this read entries without allocating a list. Each holds at most
/// `MAX_MESSAGES_PER_PULL` entries (4096 × 24 bytes in memory), so the pool stays under
/// 1.6 MiB per shard.
const ENTRY_LIST_POOL: usize = 16;

/// A pull's consume-queue entry list, taken from the store's pool and given back (cleared)
/// when dropped, whichever way the pull ends.
pub struct EntryList<'a> {
    pool: &'a RefCell<Vec<Vec<CqEntry>>>,
    pub list: Vec<CqEntry>,
}

impl Drop for EntryList<'_> {
    fn drop(&mut self) {
        let mut pool = self.pool.borrow_mut();
        if pool.len() < ENTRY_LIST_POOL {
            let mut list = std::mem::take(&mut self.list);
            list.clear();
            pool.push(list);
        }
    }
}

/// The consume-queue files kept open for reads, one per queue at most, [`CQ_OPEN_READERS`]
/// in all (the least recently used is closed first). A file re-created under the same name
/// must never be read through a descriptor of the old one: removing files forgets their
/// queue's reader and moves `epoch` on, and a reader opened across such a removal (a pull's
/// open in flight while a trim or an expiry deleted the file) is used once, not kept.
struct Readers<F> {
    open: BTreeMap<QueueKey, (PathBuf, Rc<F>, u64)>,
    /// Counts uses, for the least recently used.
    uses: u64,
    epoch: u64,
}

impl<F> Readers<F> {
    fn new() -> Self {
        Readers {
            open: BTreeMap::new(),
            uses: 0,
            epoch: 0,
        }
    }

    fn get(&mut self, key: QueueKey, path: &std::path::Path) -> Option<Rc<F>> {
        self.uses += 1;
        let uses = self.uses;
        let (open, file, used) = self.open.get_mut(&key)?;
        if open != path {
            return None;
        }
        *used = uses;
        Some(file.clone())
    }

    /// Keeps `file`, opened when the epoch was `opened_at`, unless files were removed since.
    fn keep(&mut self, key: QueueKey, path: PathBuf, file: Rc<F>, opened_at: u64) {
        if opened_at != self.epoch {
            return;
        }
        if !self.open.contains_key(&key) && self.open.len() >= CQ_OPEN_READERS {
            let oldest = self
                .open
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(key, _)| *key);
            if let Some(oldest) = oldest {
                self.open.remove(&oldest);
            }
        }
        self.uses += 1;
        self.open.insert(key, (path, file, self.uses));
    }

    /// Forgets the readers of the queues `gone` names, before their files are removed.
    fn forget(&mut self, gone: impl Fn(&QueueKey) -> bool) {
        self.open.retain(|key, _| !gone(key));
        self.epoch += 1;
    }

    fn len(&self) -> usize {
        self.open.len()
    }
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

/// What a trim does to one queue's files, decided under the borrow and carried out after.
struct TrimPlan {
    /// Entries dropped from the files.
    dropped: u64,
    /// The queue's new end.
    kept: u64,
    /// The start of the file the cut lies in, and its name if it exists.
    cut_file: u64,
    cut_file_name: Option<u64>,
    /// Files wholly past the cut: (range start, name).
    later: Vec<(u64, u64)>,
    /// The first entry of the block the rewrite starts in.
    block: u64,
    /// Bytes of the cut file to zero up to.
    zero_to: u64,
}

/// What the first recovery pass decided about each queue.
#[derive(Default)]
struct Dispatch {
    dispatched: u64,
    /// Queues whose consume queue is behind or inconsistent: rebuilt from the oldest segment.
    rebuild: BTreeSet<QueueKey>,
    /// Without a checkpoint the scan covers the whole log, and a queue whose files are lost
    /// or far behind would take every entry of it into memory (24 GB for 10^9 entries): past
    /// this many unpersisted entries the queue is dropped from memory and rebuilt instead,
    /// which writes its files segment by segment. `None` with a checkpoint: the scan then
    /// covers only what was appended after it.
    unpersisted_limit: Option<u64>,
    /// The most entries any queue held in memory during the scan and the rebuild.
    peak_cached: u64,
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
            readers: RefCell::new(Readers::new()),
            entry_lists: RefCell::new(Vec::new()),
            log_head: Cell::new(log_head),
            newest_store_ms: RefCell::new(BTreeMap::new()),
            checkpointed_offset: Cell::new(0),
        };
        let on_disk = store.queues_on_disk().await?;
        let mut keys: Vec<QueueKey> = queues.to_vec();
        keys.extend(on_disk.into_iter().filter(|k| !queues.contains(k)));
        // Never before the head: with every segment gone (removed by hand) the log resumes at
        // the head rather than restarting at 0 under entries that point past it.
        let scan_start = store
            .log
            .scan_start(checkpoint.map(|c| c.scan_start()))
            .max(store.log_head());
        stage(format!(
            "loading the tails of {} consume queues",
            keys.len()
        ));
        let invalid = store
            .load_queues(&keys, scan_start, checkpoint.is_some(), stage)
            .await?;
        let mut dispatch = Dispatch {
            rebuild: invalid,
            unpersisted_limit: checkpoint
                .is_none()
                .then_some(store.file_entries().max(store.config.cq_cache_entries)),
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
        let trimmed = store.trim_queues(scan.end_offset).await?;
        if scan_start > store.log.oldest_segment().unwrap_or(0) {
            for (key, state) in store.queues.borrow().iter() {
                if state.files.is_empty() {
                    dispatch.rebuild.insert(*key);
                }
            }
        }
        let (rebuilt, rebuild_peak) = store
            .rebuild(&dispatch.rebuild, scan.end_offset, stage)
            .await?;
        dispatch.dispatched += rebuilt;
        dispatch.peak_cached = dispatch.peak_cached.max(rebuild_peak);
        // Idempotent: a crash between a deletion's checkpoint and its queue trim heals here.
        stage("moving queue minimums to the log head".to_string());
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
            consume_queue_peak_cached_entries: dispatch.peak_cached,
            duration: started.elapsed(),
        };
        Ok((store, report))
    }

    /// Every queue with consume-queue files (`consumequeue/<topic id>/<queue>.cq/`) or a
    /// legacy single file (`consumequeue/<topic id>/<queue>`).
    async fn queues_on_disk(&self) -> Result<Vec<QueueKey>, StoreError> {
        let root = self.config.dir.join("consumequeue");
        let list = |dir: std::path::PathBuf| async move {
            self.disk
                .list(&dir)
                .await
                .map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))
        };
        let mut keys = BTreeSet::new();
        for topic in list(root.clone()).await? {
            let Ok(topic_id) = topic.parse::<u32>() else {
                continue;
            };
            for name in list(root.join(&topic)).await? {
                let queue = name
                    .strip_suffix(consume_queue::FILES_DIR_SUFFIX)
                    .or_else(|| name.strip_suffix(consume_queue::REBUILD_MARKER_SUFFIX))
                    .unwrap_or(&name);
                if let Ok(queue) = queue.parse::<u32>() {
                    keys.insert(QueueKey { topic_id, queue });
                }
            }
        }
        Ok(keys.into_iter().collect())
    }

    fn entry_limits(&self) -> consume_queue::EntryLimits {
        consume_queue::EntryLimits {
            max_record_bytes: self.config.max_record_bytes as u64,
            segment_size_bytes: self.config.segment_size_bytes,
        }
    }

    fn file_entries(&self) -> u64 {
        self.config.cq_file_entries
    }

    /// Registers each queue from its files without reading them whole: migrates a legacy
    /// file, finds the newest file's entry count by binary search, and loads the tail back
    /// until it holds `cq_cache_entries` entries and, when `cover_scan` (a checkpoint bounds
    /// the scan), reaches before `scan_start` so the recovery scan can compare every entry it
    /// re-dispatches, at most one file further. Without a checkpoint the scan covers the whole
    /// log, and loading that far back would put every queue in memory at once: entries older
    /// than the tail are then not compared.
    /// Returns the queues whose files hold an entry that cannot be right (see
    /// [`consume_queue::first_invalid_entry`]): they are rebuilt from the commitlog.
    async fn load_queues(
        &self,
        keys: &[QueueKey],
        scan_start: u64,
        cover_scan: bool,
        stage: &dyn Fn(String),
    ) -> Result<BTreeSet<QueueKey>, StoreError> {
        let mut invalid = BTreeSet::new();
        let dir = &self.config.dir;
        let n = self.file_entries();
        for key in keys {
            let marker = consume_queue::rebuild_marker_path(dir, *key);
            if self
                .disk
                .exists(&marker)
                .await
                .map_err(|e| StoreError::io(format!("checking {}", marker.display()), e))?
            {
                warn!(
                    "consume queue {}/{} was being rebuilt when the broker stopped; rebuilding \
                     it again",
                    key.topic_id, key.queue
                );
                self.queues.borrow_mut().insert(*key, QueueState::default());
                invalid.insert(*key);
                continue;
            }
            let legacy = consume_queue::legacy_path(dir, *key);
            let legacy_exists = self
                .disk
                .exists(&legacy)
                .await
                .map_err(|e| StoreError::io(format!("checking {}", legacy.display()), e))?;
            if legacy_exists {
                // A stage per queue: a store with many large legacy files takes long in all,
                // and the deadline is for one step.
                stage(format!(
                    "migrating consume queue {} to split files",
                    legacy.display()
                ));
            }
            if legacy_exists
                && !consume_queue::migrate_legacy(&self.disk, dir, *key, n, self.entry_limits())
                    .await?
            {
                warn!(
                    "legacy consume queue {} held an impossible entry; rebuilding it from the \
                     commitlog",
                    legacy.display()
                );
                invalid.insert(*key);
            }
            if legacy_exists {
                stage("loading the tails of consume queues".to_string());
            }
            let files_dir = consume_queue::files_dir(dir, *key);
            let mut files = BTreeMap::new();
            let names = self
                .disk
                .list(&files_dir)
                .await
                .map_err(|e| StoreError::io(format!("listing {}", files_dir.display()), e))?;
            let mut two_in_one_range = false;
            for first_held in names
                .iter()
                .filter_map(|name| consume_queue::parse_file_name(name))
            {
                let range = files.entry(consume_queue::file_start(first_held, n));
                two_in_one_range |=
                    matches!(range, std::collections::btree_map::Entry::Occupied(_));
                range.or_insert(first_held);
            }
            let (Some((&first_start, &first)), Some((&last, &last_name))) =
                (files.first_key_value(), files.last_key_value())
            else {
                self.queues.borrow_mut().insert(*key, QueueState::default());
                continue;
            };
            // The queue's first entry is the first file's first, at its name: a first file
            // that lacks it while later files exist (an empty file an older rebuild left
            // behind), or two files for one range, cannot be read as one queue.
            let first_missing = first_start != last
                && consume_queue::read_range(
                    &self.disk,
                    &consume_queue::file_path(dir, *key, first),
                    first - first_start,
                    1,
                )
                .await?
                .is_empty();
            if two_in_one_range || first_missing {
                warn!(
                    "consume queue {} holds files that do not form one queue; rebuilding it \
                     from the commitlog",
                    files_dir.display()
                );
                self.queues.borrow_mut().insert(*key, QueueState::default());
                invalid.insert(*key);
                continue;
            }
            let last_path = consume_queue::file_path(dir, *key, last_name);
            let count =
                consume_queue::entry_count(&self.disk, &last_path, last_name - last, n).await?;
            let on_disk = last + count;
            let mut state = QueueState::starting_at(on_disk);
            state.min_offset = first;
            state.files = files;
            self.queues.borrow_mut().insert(*key, state);
            // The newest chunk may end early at a zero entry (a torn write): the queue ends
            // there, and the trim zeroes what lies past it.
            let window = self.config.cq_cache_entries.max(1);
            let newest = on_disk.saturating_sub(window).max(last_name);
            let chunk =
                consume_queue::read_range(&self.disk, &last_path, newest - last, on_disk - newest)
                    .await?;
            let valid = consume_queue::first_invalid_entry(&chunk, self.entry_limits()).is_none();
            {
                let mut queues = self.queues.borrow_mut();
                let state = queues.get_mut(key).expect("registered above");
                state.on_disk = on_disk;
                state.tail_start = newest;
                state.persisted = newest + chunk.len() as u64;
                state.tail = chunk.into();
            }
            let mut loaded_back = 0u64;
            let mut ok = valid;
            while ok {
                let (more, want) = {
                    let queues = self.queues.borrow();
                    let state = &queues[key];
                    // Only what the cache lacks while it is short (the newest file began
                    // inside the window), a cache's worth at a time while covering the scan.
                    let want = match window.checked_sub(state.tail.len() as u64) {
                        Some(short) if short > 0 => short,
                        _ => window,
                    };
                    let covers_scan = !cover_scan
                        || state
                            .tail
                            .front()
                            .is_some_and(|e| e.commitlog_offset < scan_start);
                    let more = state.tail_start > state.min_offset
                        && (state.tail.len() < window as usize || !covers_scan)
                        && loaded_back < window + n;
                    (more, want)
                };
                if !more {
                    break;
                }
                // Nothing added while the tail starts after the minimum: the files do not
                // hold the entries between them (a file named past the tail's start).
                match self.extend_back(*key, want).await? {
                    Some(added) if added > 0 => loaded_back += added,
                    _ => ok = false,
                }
            }
            if !ok {
                warn!(
                    "consume queue {} holds an impossible entry near its end; rebuilding it \
                     from the commitlog",
                    files_dir.display()
                );
                invalid.insert(*key);
            }
        }
        Ok(invalid)
    }

    /// Reads up to `want` entries before a queue's cached tail (within one file) and puts
    /// them in front of it. Returns how many, or `None` when the file does not hold
    /// them as it must (missing, short, impossible or out of order): the queue is damaged.
    async fn extend_back(&self, key: QueueKey, want: u64) -> Result<Option<u64>, StoreError> {
        let n = self.file_entries();
        let (path, from, count, next_start) = {
            let queues = self.queues.borrow();
            let Some(state) = queues.get(&key) else {
                return Ok(Some(0));
            };
            if state.tail_start <= state.min_offset {
                return Ok(Some(0));
            }
            let file = consume_queue::file_start(state.tail_start - 1, n);
            let Some(&name) = state.files.get(&file) else {
                return Ok(None);
            };
            let from = name
                .max(state.min_offset)
                .max(state.tail_start.saturating_sub(want.max(1)));
            if from >= state.tail_start {
                return Ok(Some(0));
            }
            (
                consume_queue::file_path(&self.config.dir, key, name),
                from - file,
                state.tail_start - from,
                state.tail.front().map(|e| e.commitlog_offset),
            )
        };
        let chunk = consume_queue::read_range(&self.disk, &path, from, count).await?;
        let ordered = match (chunk.last(), next_start) {
            (Some(last), Some(next)) => last.end_offset() <= next,
            _ => true,
        };
        if chunk.len() as u64 != count
            || !ordered
            || consume_queue::first_invalid_entry(&chunk, self.entry_limits()).is_some()
        {
            return Ok(None);
        }
        let mut queues = self.queues.borrow_mut();
        let Some(state) = queues.get_mut(&key) else {
            return Ok(Some(0));
        };
        for entry in chunk.into_iter().rev() {
            state.tail.push_front(entry);
        }
        state.tail_start -= count;
        Ok(Some(count))
    }

    /// Dispatches one scanned record idempotently: append if it is the queue's next entry,
    /// skip if already present, schedule a rebuild if the queue is behind or disagrees.
    /// Entries older than the loaded tail are not compared: they were durable before the
    /// checkpoint the scan starts from.
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
        let next = state.next();
        if view.queue_offset == next {
            state.push(entry_of(view));
            dispatch.dispatched += 1;
            dispatch.peak_cached = dispatch.peak_cached.max(state.tail.len() as u64);
            if dispatch
                .unpersisted_limit
                .is_some_and(|limit| state.next() - state.persisted > limit)
            {
                *state = QueueState::default();
                dispatch.rebuild.insert(key);
            }
        } else if view.queue_offset > next
            || state
                .cached(view.queue_offset)
                .is_some_and(|entry| *entry != entry_of(view))
        {
            // The whole entry is compared, not only its offset: consume-queue entries carry no
            // checksum, and a crash during a consume-queue write past the checkpoint can leave
            // a plausible entry with a damaged size or key hash (found by the timed simulation:
            // the record then failed to read for ever, its bytes intact in the log).
            dispatch.rebuild.insert(key);
        }
    }

    /// Drops entries whose record does not end at or before `end` and zeroes them in the files
    /// (removing files wholly past the cut) so they can never come back. Returns how many were
    /// dropped from the files.
    async fn trim_queues(&self, end: u64) -> Result<u64, StoreError> {
        let keys: Vec<QueueKey> = self.queues.borrow().keys().copied().collect();
        let n = self.file_entries();
        let mut trimmed = 0;
        for key in keys {
            loop {
                let reload = {
                    let mut queues = self.queues.borrow_mut();
                    let Some(state) = queues.get_mut(&key) else {
                        break;
                    };
                    while state.tail.back().is_some_and(|e| e.end_offset() > end) {
                        state.tail.pop_back();
                    }
                    state.tail.is_empty() && state.tail_start > state.min_offset
                };
                // The cut lies before the cached tail: fetch older entries and look again.
                if !reload
                    || !matches!(self.extend_back(key, self.config.cq_cache_entries).await?, Some(added) if added > 0)
                {
                    break;
                }
            }
            let plan = {
                let mut queues = self.queues.borrow_mut();
                let Some(state) = queues.get_mut(&key) else {
                    continue;
                };
                let kept = state.next();
                state.persisted = state.persisted.min(kept);
                if state.on_disk <= kept {
                    continue;
                }
                let cut_file = consume_queue::file_start(kept, n);
                let later: Vec<(u64, u64)> = state
                    .files
                    .range(cut_file + 1..)
                    .map(|(start, name)| (*start, *name))
                    .collect();
                let block = consume_queue::block_start_offset(kept, n);
                let zero_to = (state.on_disk.min(cut_file + n) - cut_file) * CQ_ENTRY_BYTES as u64;
                let plan = TrimPlan {
                    dropped: state.on_disk - kept,
                    kept,
                    cut_file,
                    later,
                    block,
                    zero_to,
                    cut_file_name: state.files.get(&cut_file).copied(),
                };
                state.on_disk = kept;
                plan
            };
            let TrimPlan {
                dropped,
                kept,
                cut_file,
                later,
                block,
                zero_to,
                cut_file_name,
            } = plan;
            trimmed += dropped;
            self.readers.borrow_mut().forget(|k| *k == key);
            for (start, name) in later.iter().rev() {
                let path = consume_queue::file_path(&self.config.dir, key, *name);
                self.disk
                    .remove(&path)
                    .await
                    .map_err(|e| StoreError::io(format!("removing {}", path.display()), e))?;
                if let Some(state) = self.queues.borrow_mut().get_mut(&key) {
                    state.files.remove(start);
                }
            }
            if let Some(name) = cut_file_name {
                let (first, tail) = self.entries_for_write(key, block, kept).await?;
                let path = consume_queue::file_path(&self.config.dir, key, name);
                consume_queue::write_from(
                    &self.disk,
                    &path,
                    &tail,
                    (first - cut_file) as usize,
                    (kept - cut_file) as usize,
                    zero_to,
                )
                .await?;
            }
        }
        Ok(trimmed)
    }

    /// Rebuilds the given queues from the oldest segment up to `end`, one segment at a time:
    /// after each, the rebuilt entries are written to the files and the tails cut back to the
    /// cache bound, so a rebuild of a long log holds no more than a segment's entries. A queue
    /// starts at the queue offset of its oldest record still in the log. Returns entries added
    /// and the most entries one queue held in memory meanwhile.
    async fn rebuild(
        &self,
        keys: &BTreeSet<QueueKey>,
        end: u64,
        stage: &dyn Fn(String),
    ) -> Result<(u64, u64), StoreError> {
        if keys.is_empty() {
            return Ok((0, 0));
        }
        for key in keys {
            self.queues.borrow_mut().insert(*key, QueueState::default());
            self.readers.borrow_mut().forget(|k| k == key);
            // Durable before the files go, removed once the rebuilt files are: a crash in
            // between makes the next open rebuild the queue again rather than load the part
            // written so far as the whole queue.
            let marker = consume_queue::rebuild_marker_path(&self.config.dir, *key);
            let topic_dir = consume_queue::queue_dir(&self.config.dir, key.topic_id);
            self.disk
                .create_dir_all(&topic_dir)
                .await
                .map_err(|e| StoreError::io(format!("creating {}", topic_dir.display()), e))?;
            self.disk
                .write_atomic(&marker, Vec::new())
                .await
                .map_err(|e| StoreError::io(format!("writing {}", marker.display()), e))?;
            let dir = consume_queue::files_dir(&self.config.dir, *key);
            self.disk
                .remove_dir_all(&dir)
                .await
                .map_err(|e| StoreError::io(format!("removing {}", dir.display()), e))?;
            let legacy = consume_queue::legacy_path(&self.config.dir, *key);
            if self
                .disk
                .exists(&legacy)
                .await
                .map_err(|e| StoreError::io("checking a consume queue", e))?
            {
                self.disk
                    .remove(&legacy)
                    .await
                    .map_err(|e| StoreError::io(format!("removing {}", legacy.display()), e))?;
            }
        }
        let mut added = 0;
        let mut peak = 0;
        let mut started = BTreeSet::new();
        let segment_size = self.config.segment_size_bytes;
        let mut from = self.log.oldest_segment().unwrap_or(0);
        while from < end {
            let base = from / segment_size * segment_size;
            let to = (base + segment_size).min(end);
            stage(format!(
                "rebuilding {} consume queues: scanning segment {}",
                keys.len(),
                self.log.segment_path(base).display()
            ));
            let scan = self
                .log
                .scan(from, to, |view| {
                    let key = QueueKey {
                        topic_id: view.topic_id,
                        queue: view.queue_id,
                    };
                    if !keys.contains(&key) {
                        return Ok(());
                    }
                    let mut queues = self.queues.borrow_mut();
                    let state = queues.get_mut(&key).expect("known queue");
                    if started.insert(key) {
                        *state = QueueState::starting_at(view.queue_offset);
                    }
                    let next = state.next();
                    if view.queue_offset > next {
                        return Err(StoreError::Corrupt(format!(
                            "queue {}/{} jumps from offset {next} to {} at commitlog offset {}",
                            key.topic_id, key.queue, view.queue_offset, view.commitlog_offset
                        )));
                    }
                    if view.queue_offset == next {
                        state.push(entry_of(view));
                        added += 1;
                        peak = peak.max(state.tail.len() as u64);
                    }
                    Ok(())
                })
                .await?;
            // The rebuild reads records the recovery scan did not check: one that fails its
            // crc stops it short, and the queue would silently miss every entry after it.
            if scan.end_offset < to || scan.corruption.is_some() {
                return Err(StoreError::Corrupt(format!(
                    "rebuilding consume queues stopped at commitlog offset {} of {end}: {}",
                    scan.end_offset,
                    scan.corruption.as_deref().unwrap_or("a gap in the log")
                )));
            }
            // Only queues whose first record was seen: writing a queue not yet started would
            // create a file at offset 0 that its real first file (named by its first offset)
            // never replaces.
            self.persist_queues(Some(&started)).await?;
            from = scan.end_offset.max(to);
        }
        for key in keys {
            let marker = consume_queue::rebuild_marker_path(&self.config.dir, *key);
            self.disk
                .remove(&marker)
                .await
                .map_err(|e| StoreError::io(format!("removing {}", marker.display()), e))?;
        }
        Ok((added, peak))
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
        self.readers
            .borrow_mut()
            .forget(|key| key.topic_id == topic_id);
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
        let queue_offset = state.next();
        let record = RecordInput {
            queue_offset,
            ..*input
        };
        let commitlog_offset = self
            .log
            .append(size, |offset, out| record.encode_into(offset, out))?;
        self.note_store_time(commitlog_offset, input.store_timestamp_ms);
        state.push(CqEntry {
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
        let at = queues.get(&key).map_or(0, |state| state.next());
        // A queue that holds nothing (no entry, no file) in a log that starts past 0 takes the
        // master's queue offset: its earlier entries lie before the head, deleted here and on
        // the master (a slave restarted at the master's log head, see `restart_at`).
        let starts_here = self.log_head() > 0
            && queues
                .get(&key)
                .is_none_or(|s| s.min_offset == s.next() && s.files.is_empty());
        if starts_here && view.queue_offset > at {
            queues.insert(key, QueueState::starting_at(view.queue_offset));
        } else if view.queue_offset != at {
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
        state.push(CqEntry {
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
        self.trim_queues(offset).await?;
        self.persist_metadata().await
    }

    /// Starts the log over, empty, at `head` (a segment boundary at or past the log's end): a
    /// slave whose master's retention deleted everything this log lacks (RocketMQ's
    /// `syncFromLastFile`). Every byte held here lies before `head`, so it is deleted on the
    /// master too; the log, every consume-queue file and every queue's entries go, the queues
    /// stay registered, empty, and each takes the queue offset of the first record the master
    /// ships for it (see [`ShardStore::append_replicated`]).
    ///
    /// Order, for a crash at any point: the consume-queue files first (a crash then reopens
    /// the old log and rebuilds its queues from it, and the next handshake restarts again),
    /// then the checkpoint with the new head (from there, recovery removes every segment
    /// before it and resumes the log at it), then the segments. The caller must not run a
    /// flush or `persist_metadata` concurrently (it holds the store gate).
    pub async fn restart_at(&self, head: u64) -> Result<(), StoreError> {
        let size = self.config.segment_size_bytes;
        if head % size != 0 || head < self.log.max_offset() {
            return Err(StoreError::Corrupt(format!(
                "cannot restart the log at {head}: not a segment boundary at or past its end {}",
                self.log.max_offset()
            )));
        }
        self.log.flush().await?;
        self.readers.borrow_mut().forget(|_| true);
        let topics: BTreeSet<u32> = self.queues.borrow().keys().map(|k| k.topic_id).collect();
        let on_disk: BTreeSet<u32> = self
            .queues_on_disk()
            .await?
            .into_iter()
            .map(|k| k.topic_id)
            .collect();
        for topic_id in topics.union(&on_disk) {
            let dir = consume_queue::queue_dir(&self.config.dir, *topic_id);
            self.disk
                .remove_dir_all(&dir)
                .await
                .map_err(|e| StoreError::io(format!("removing {}", dir.display()), e))?;
        }
        for state in self.queues.borrow_mut().values_mut() {
            *state = QueueState::default();
        }
        let restarted = Checkpoint {
            flushed_offset: head,
            dispatched_offset: head,
            log_head: head,
        };
        self.disk
            .write_atomic(&checkpoint_path(&self.config.dir), restarted.encode())
            .await
            .map_err(|e| StoreError::io("writing the checkpoint of a restarted log", e))?;
        self.log_head.set(head);
        self.newest_store_ms.borrow_mut().clear();
        self.log.remove_segments_before(head).await?;
        let start = super::commitlog::ScanEnd {
            end_offset: head,
            scanned_bytes: 0,
            scanned_records: 0,
            corruption: None,
        };
        self.log.finish_recovery(head, &start).await?;
        self.persist_metadata().await
    }

    /// Before a replicated append that [`ShardStore::append_replicated`] refused: when `bytes`
    /// is the first record of a queue that holds no entry, in a log that starts past 0, and
    /// carries a later queue offset (a slave restarted at its master's head, then restarted
    /// itself, which gave the empty queue a file at its old offset), the queue's empty files go
    /// and it starts at the record's offset. Returns whether it did (the append is worth a
    /// retry). The files go before the state changes, so a checkpoint meanwhile writes nothing
    /// for the queue; a crash in between leaves a queue without files, which starts over the
    /// same way.
    pub async fn start_queue_at_replicated(&self, bytes: &[u8]) -> Result<bool, StoreError> {
        let Some(claimed) = record::peek_commitlog_offset(bytes) else {
            return Ok(false);
        };
        let Ok(record::Decoded::Record(view)) = record::decode(bytes, claimed) else {
            return Ok(false);
        };
        let key = QueueKey {
            topic_id: view.topic_id,
            queue: view.queue_id,
        };
        let empty_before = |queues: &BTreeMap<QueueKey, QueueState>| {
            queues.get(&key).is_some_and(|s| {
                s.min_offset == s.next() && !s.files.is_empty() && view.queue_offset > s.next()
            })
        };
        if self.log_head() == 0 || !empty_before(&self.queues.borrow()) {
            return Ok(false);
        }
        self.readers.borrow_mut().forget(|k| *k == key);
        let dir = consume_queue::files_dir(&self.config.dir, key);
        self.disk
            .remove_dir_all(&dir)
            .await
            .map_err(|e| StoreError::io(format!("removing {}", dir.display()), e))?;
        let mut queues = self.queues.borrow_mut();
        if !empty_before(&queues) {
            return Ok(false);
        }
        queues.insert(key, QueueState::starting_at(view.queue_offset));
        Ok(true)
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
        if let Err(e) = self.persist_queues(None).await {
            self.log.mark_failed(e.to_string());
            return Err(e);
        }
        let path = checkpoint_path(&self.config.dir);
        self.disk
            .write_atomic(&path, checkpoint.encode())
            .await
            .map_err(|e| StoreError::io(format!("writing {}", path.display()), e))?;
        self.checkpointed_offset.set(checkpoint.dispatched_offset);
        Ok(())
    }

    /// Writes every queue's unpersisted entries (of `only` those queues, if given) to its files,
    /// creating a file when entries reach its first offset (its name synced before the
    /// checkpoint that counts on it), then cuts each cached tail back to `cq_cache_entries`.
    async fn persist_queues(&self, only: Option<&BTreeSet<QueueKey>>) -> Result<(), StoreError> {
        let n = self.file_entries();
        let pending: Vec<(QueueKey, u64, u64, bool)> = self
            .queues
            .borrow()
            .iter()
            .filter(|(key, _)| only.is_none_or(|keys| keys.contains(key)))
            .filter(|(_, s)| s.files.is_empty() || s.persisted < s.next())
            .map(|(key, s)| (*key, s.persisted, s.next(), s.files.is_empty()))
            .collect();
        for (key, persisted, next, no_files) in pending {
            let dir = consume_queue::files_dir(&self.config.dir, key);
            if no_files {
                self.disk
                    .create_dir_all(&dir)
                    .await
                    .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
            }
            let mut pos = persisted;
            loop {
                let file = consume_queue::file_start(pos, n);
                let block = consume_queue::block_start_offset(pos, n);
                let end = next.min(file + n);
                let (first, tail) = self.entries_for_write(key, block, end).await?;
                // A new file is named by the first entry written to it: its range's start, or
                // later when the queue begins inside it (a rebuild after retention; see
                // `consume_queue::file_path`).
                let existing = self
                    .queues
                    .borrow()
                    .get(&key)
                    .and_then(|state| state.files.get(&file).copied());
                let (is_new, name) = match existing {
                    Some(name) => (false, name),
                    None => (true, first),
                };
                let path = consume_queue::file_path(&self.config.dir, key, name);
                consume_queue::write_from(
                    &self.disk,
                    &path,
                    &tail,
                    (first - file) as usize,
                    (pos - file) as usize,
                    0,
                )
                .await?;
                if is_new {
                    // The checkpoint written next says these entries are on disk: the new
                    // file's name must be durable before it.
                    self.disk
                        .sync_dir(&dir)
                        .await
                        .map_err(|e| StoreError::io(format!("syncing {}", dir.display()), e))?;
                }
                if let Some(state) = self.queues.borrow_mut().get_mut(&key) {
                    state.files.insert(file, name);
                    state.persisted = state.persisted.max(end);
                    state.on_disk = state.on_disk.max(end);
                }
                if end >= next {
                    break;
                }
                pos = end;
            }
            if let Some(state) = self.queues.borrow_mut().get_mut(&key) {
                let keep_from = state.next().saturating_sub(self.config.cq_cache_entries);
                state.evict_before(keep_from, n);
            }
        }
        Ok(())
    }

    /// Entries `from..to` of a queue (one file's), for rebuilding a partial block, and the
    /// offset of the first (later than `from` where the file holds nothing before it): from
    /// the cached tail, and from the file for any part before it (always persisted).
    async fn entries_for_write(
        &self,
        key: QueueKey,
        from: u64,
        to: u64,
    ) -> Result<(u64, Vec<CqEntry>), StoreError> {
        let n = self.file_entries();
        let file = consume_queue::file_start(from, n);
        let (tail_start, start, name) = match self.queues.borrow().get(&key) {
            Some(state) => match state.files.get(&file) {
                Some(&name) => (state.tail_start, from.max(name), Some(name)),
                None => (state.tail_start, from.max(state.tail_start), None),
            },
            None => return Ok((from, Vec::new())),
        };
        let mut out = Vec::new();
        if let Some(name) = name.filter(|_| start < tail_start.min(to)) {
            let path = consume_queue::file_path(&self.config.dir, key, name);
            let count = tail_start.min(to) - start;
            out = consume_queue::read_range(&self.disk, &path, start - file, count).await?;
            if out.len() as u64 != count {
                return Err(StoreError::Corrupt(format!(
                    "consume queue {} ends before queue offset {}",
                    path.display(),
                    start + count
                )));
            }
        }
        let queues = self.queues.borrow();
        let Some(state) = queues.get(&key) else {
            return Ok((start, Vec::new()));
        };
        for offset in start.max(state.tail_start)..to {
            match state.cached(offset) {
                Some(entry) => out.push(*entry),
                None => {
                    return Err(StoreError::Corrupt(format!(
                        "consume queue {}/{} lost unpersisted entry {offset} from memory",
                        key.topic_id, key.queue
                    )))
                }
            }
        }
        Ok((start, out))
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
        queues.get(&key).map(|s| (s.min_offset, s.next()))
    }

    /// How many consume-queue files are kept open for reads (at most [`CQ_OPEN_READERS`]).
    pub fn open_readers(&self) -> usize {
        self.readers.borrow().len()
    }

    /// How many of a queue's entries are in memory (the cached tail), for tests and metrics.
    pub fn cached_entries(&self, key: QueueKey) -> usize {
        self.queues.borrow().get(&key).map_or(0, |s| s.tail.len())
    }

    /// One past the highest queue offset whose record ends at or before `confirmed_offset`.
    /// Found in the cached tail; when the confirmed offset lies before it (a slave, or a
    /// SYNC_MASTER whose slave lags by more than the cache), by a binary search of the files
    /// between the minimum and the tail, one entry per read (about 30 for 10^9 entries): a
    /// consumer there reads up to what is confirmed instead of waiting on a visible end stuck
    /// at the minimum. An entry that stops being readable meanwhile (retention passed it)
    /// ends the search short, never past what is confirmed.
    pub async fn visible_end(
        &self,
        key: QueueKey,
        confirmed_offset: u64,
    ) -> Result<Option<u64>, StoreError> {
        let (mut lo, mut hi) = {
            let queues = self.queues.borrow();
            let Some(state) = queues.get(&key) else {
                return Ok(None);
            };
            let in_tail = state
                .tail
                .front()
                .is_some_and(|first| first.end_offset() <= confirmed_offset);
            if in_tail || state.tail_start <= state.min_offset {
                let visible = state
                    .tail
                    .partition_point(|e| e.end_offset() <= confirmed_offset);
                return Ok(Some(state.tail_start + visible as u64));
            }
            (state.min_offset, state.tail_start)
        };
        // Invariant: entries before `lo` are confirmed, the one at `hi` (if any) is not.
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.entries(key, mid, 1).await?.first() {
                Some(entry) if entry.end_offset() <= confirmed_offset => lo = mid + 1,
                _ => hi = mid,
            }
        }
        Ok(Some(lo))
    }

    /// Consume-queue entries of `key` from queue offset `from`, at most `max_count`; none
    /// below the queue's minimum. Entries before the cached tail are read from the queue's
    /// files, one read per file touched (a pull touches one, two at a file boundary), and
    /// validated: an impossible entry ends the answer, or fails it when it comes first.
    pub async fn entries(
        &self,
        key: QueueKey,
        from: u64,
        max_count: usize,
    ) -> Result<Vec<CqEntry>, StoreError> {
        let mut out = Vec::new();
        self.entries_into(key, from, max_count, &mut out).await?;
        Ok(out)
    }

    /// An empty entry list for [`ShardStore::entries_into`], from the store's pool when one
    /// was given back: a pull in steady state allocates none.
    pub fn entry_list(&self) -> EntryList<'_> {
        let list = self.entry_lists.borrow_mut().pop().unwrap_or_default();
        EntryList {
            pool: &self.entry_lists,
            list,
        }
    }

    /// [`ShardStore::entries`] into `out` (cleared first).
    pub async fn entries_into(
        &self,
        key: QueueKey,
        from: u64,
        max_count: usize,
        out: &mut Vec<CqEntry>,
    ) -> Result<(), StoreError> {
        let n = self.file_entries();
        out.clear();
        let mut pos = from;
        loop {
            let (path, index, count) = {
                let queues = self.queues.borrow();
                let Some(state) = queues.get(&key) else {
                    return Ok(());
                };
                let want = (max_count - out.len()) as u64;
                if want == 0 || pos < state.min_offset || pos >= state.next() {
                    return Ok(());
                }
                if pos >= state.tail_start {
                    let at = (pos - state.tail_start) as usize;
                    let count = want.min(state.next() - pos) as usize;
                    // Entries read from a file before the tail must end before the tail's
                    // first starts, as the file chunks are checked against each other.
                    let unordered = match (out.last(), state.tail.get(at)) {
                        (Some(last), Some(first)) => first.commitlog_offset < last.end_offset(),
                        _ => false,
                    };
                    if !unordered {
                        out.extend(state.tail.range(at..at + count).copied());
                    }
                    return Ok(());
                }
                let file = consume_queue::file_start(pos, n);
                let count = want.min(file + n - pos).min(state.tail_start - pos);
                let name = state.files.get(&file).copied().unwrap_or(file);
                (
                    consume_queue::file_path(&self.config.dir, key, name),
                    pos - file,
                    count,
                )
            };
            let cached = self.readers.borrow_mut().get(key, &path);
            let file = match cached {
                Some(file) => file,
                None => {
                    let opened_at = self.readers.borrow().epoch;
                    let file = Rc::new(self.disk.open(&path, false).await.map_err(|e| {
                        StoreError::io(format!("reading consume queue {}", path.display()), e)
                    })?);
                    self.readers
                        .borrow_mut()
                        .keep(key, path.clone(), file.clone(), opened_at);
                    file
                }
            };
            let mut chunk = consume_queue::read_entries(&*file, index, count).await?;
            let unordered = match (out.last(), chunk.first()) {
                (Some(last), Some(first)) => first.commitlog_offset < last.end_offset(),
                _ => false,
            };
            let bad = consume_queue::first_invalid_entry(&chunk, self.entry_limits())
                .or((chunk.len() as u64 != count).then_some(chunk.len()))
                .or(unordered.then_some(0));
            if let Some(bad) = bad {
                if bad == 0 && out.is_empty() {
                    return Err(StoreError::Corrupt(format!(
                        "consume queue {} holds no valid entry for queue offset {pos}",
                        path.display()
                    )));
                }
                chunk.truncate(bad);
                out.extend(chunk);
                return Ok(());
            }
            pos += chunk.len() as u64;
            out.extend(chunk);
        }
    }

    /// Moves every queue's minimum to its first entry whose record starts at or after
    /// `log_head` (never backwards), and deletes the consume-queue files wholly before it
    /// (never a queue's newest). Idempotent: recovery calls it with the log head, so a crash
    /// between deleting a segment and trimming the queues, or in the middle of this, heals
    /// on the next open. Costs one small read per file crossed and a binary search (one entry
    /// per read) in the file holding the new minimum.
    pub async fn expire_queues_before(&self, log_head: u64) -> Result<(), StoreError> {
        let keys: Vec<QueueKey> = self.queues.borrow().keys().copied().collect();
        for key in keys {
            self.expire_queue(key, log_head).await?;
        }
        Ok(())
    }

    async fn expire_queue(&self, key: QueueKey, log_head: u64) -> Result<(), StoreError> {
        let n = self.file_entries();
        let found = self.first_entry_at_or_after(key, log_head).await?;
        let doomed: Vec<(u64, u64)> = {
            let mut queues = self.queues.borrow_mut();
            let Some(state) = queues.get_mut(&key) else {
                return Ok(());
            };
            state.min_offset = state.min_offset.max(found);
            let keep_from = state.tail_start.max(state.min_offset);
            state.evict_before(keep_from, n);
            let newest = state.files.keys().next_back().copied();
            let min = state.min_offset;
            state
                .files
                .iter()
                .map(|(start, name)| (*start, *name))
                .filter(|&(start, _)| start + n <= min && Some(start) != newest)
                .collect()
        };
        if !doomed.is_empty() {
            self.readers.borrow_mut().forget(|k| *k == key);
        }
        for (file, name) in doomed {
            let path = consume_queue::file_path(&self.config.dir, key, name);
            match self.disk.remove(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(format!("removing {}", path.display()), e)),
            }
            if let Some(state) = self.queues.borrow_mut().get_mut(&key) {
                state.files.remove(&file);
            }
        }
        Ok(())
    }

    /// The queue offset of the first entry of `key` at or after its minimum whose record
    /// starts at or after `log_head`; the queue's next offset when there is none.
    async fn first_entry_at_or_after(
        &self,
        key: QueueKey,
        log_head: u64,
    ) -> Result<u64, StoreError> {
        let n = self.file_entries();
        let (min, tail_start, files) = {
            let queues = self.queues.borrow();
            let Some(state) = queues.get(&key) else {
                return Ok(0);
            };
            let first_cached_before = state
                .tail
                .front()
                .is_some_and(|e| e.commitlog_offset < log_head);
            if first_cached_before || state.tail_start <= state.min_offset {
                let skip = state.tail_start.max(state.min_offset);
                let below = state
                    .tail
                    .iter()
                    .skip((skip - state.tail_start) as usize)
                    .take_while(|e| e.commitlog_offset < log_head)
                    .count() as u64;
                return Ok(skip + below);
            }
            let files: Vec<(u64, u64)> = state
                .files
                .range(consume_queue::file_start(state.min_offset, n)..state.tail_start)
                .map(|(start, name)| (*start, *name))
                .collect();
            (state.min_offset, state.tail_start, files)
        };
        // The usual case at every open: the head lies before the queue's first entry, and one
        // read says so (no walk, no search).
        if let Some(first) = self.entries(key, min, 1).await?.first() {
            if first.commitlog_offset >= log_head {
                return Ok(min);
            }
        }
        // The answer lies in [min, tail_start]: walk the files by their first entries, then
        // search the one file that holds it.
        let path = |name: u64| consume_queue::file_path(&self.config.dir, key, name);
        let mut holder = None;
        for (i, &(file, name)) in files.iter().enumerate() {
            let later_first = match files.get(i + 1) {
                Some(&(next, next_name)) => {
                    consume_queue::read_range(&self.disk, &path(next_name), next_name - next, 1)
                        .await?
                        .first()
                        .map(|e| e.commitlog_offset)
                }
                None => None,
            };
            if later_first.is_none_or(|first| first >= log_head) {
                holder = Some((file, name));
                break;
            }
        }
        let Some((file, name)) = holder else {
            return Ok(min);
        };
        let from = name.max(min);
        let to = (file + n).min(tail_start);
        if from >= to {
            return Ok(from.min(tail_start));
        }
        // Binary search, one entry per read: entries' commitlog offsets increase, and
        // reading the file whole (5 MiB at the default size) for every queue at every start
        // would make recovery read every queue's oldest file.
        let holder_path = path(name);
        let reader = self.disk.open(&holder_path, false).await.map_err(|e| {
            StoreError::io(
                format!("reading consume queue {}", holder_path.display()),
                e,
            )
        })?;
        let index = consume_queue::partition_point(&reader, from - file, to - file, |entry| {
            entry.is_some_and(|e| e.commitlog_offset < log_head)
        })
        .await?;
        Ok(file + index)
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
        // Records arrive in log order: the segment being noted is the last one in the map,
        // so no lookup by key is needed for all but a segment's first record.
        match newest.last_entry() {
            Some(mut last) if *last.key() == base => {
                let at = last.get_mut();
                *at = (*at).max(store_timestamp_ms);
            }
            _ => {
                let at = newest.entry(base).or_insert(store_timestamp_ms);
                *at = (*at).max(store_timestamp_ms);
            }
        }
    }

    /// The segments retention may delete, oldest first: wholly before the segment being
    /// written, wholly flushed (an unflushed end marker would otherwise be lost with it), wholly
    /// before `confirmed` (the shard's confirmed offset: under SYNC_MASTER a record no slave
    /// has acknowledged yet must stay) and wholly covered by the last checkpoint (see
    /// `checkpointed_offset`).
    pub fn retention_candidates(&self, confirmed: u64) -> Vec<u64> {
        let limit = self
            .log
            .flushed_offset()
            .min(confirmed)
            .min(self.checkpointed_offset.get());
        let size = self.config.segment_size_bytes;
        self.log
            .sealed_segments()
            .into_iter()
            .filter(|base| base + size <= limit)
            .collect()
    }

    /// The newest store timestamp of segment `base`: remembered from appends and the
    /// recovery scan, else found by reading the segment once (a segment sealed before this
    /// process started), then remembered. `None` (its age is unknown) when the read found no
    /// record or stopped early at something that is not a record: a flipped bit must not make
    /// a young segment look expired, so retention skips such a segment and reports it.
    pub async fn newest_store_ms(&self, base: u64) -> Result<Option<u64>, StoreError> {
        if let Some(ms) = self.newest_store_ms.borrow().get(&base) {
            return Ok(Some(*ms));
        }
        let mut newest = None::<u64>;
        let end = base + self.config.segment_size_bytes;
        let scan = self
            .log
            .scan(base, end, |view| {
                newest = Some(
                    newest.map_or(view.store_timestamp_ms, |n| n.max(view.store_timestamp_ms)),
                );
                Ok(())
            })
            .await?;
        if scan.corruption.is_some() {
            return Ok(None);
        }
        if let Some(ms) = newest {
            self.newest_store_ms.borrow_mut().insert(base, ms);
        }
        Ok(newest)
    }

    /// First step of deleting the oldest segment `base` (one of
    /// [`ShardStore::retention_candidates`] for `confirmed`): the head moves past it, in
    /// memory only. Nothing is written, so a deletion works on a full disk and never waits
    /// for (or holds up) a flush: the next regular checkpoint records the head, and a crash
    /// before it is safe because recovery starts the log at its oldest segment on disk
    /// whatever the checkpoint says. The caller then calls
    /// [`ShardStore::expire_queues_before`] and [`ShardStore::remove_expired_segment`].
    /// Returns the new head.
    pub fn advance_log_head(&self, base: u64, confirmed: u64) -> Result<u64, StoreError> {
        if self.retention_candidates(confirmed).first() != Some(&base) {
            return Err(StoreError::Corrupt(format!(
                "segment {base} is not the oldest deletable segment"
            )));
        }
        let head = base + self.config.segment_size_bytes;
        self.log_head.set(head);
        Ok(head)
    }

    /// Last step of a deletion: the segment's file goes (after the head and the queues moved
    /// past it) and its directory is synced.
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

    /// Review finding 5: the open readers are bounded, least recently used closed first, and
    /// a reader opened before a removal of files (a pull's open in flight while a trim or an
    /// expiry deleted the file) is not kept, so a later file of the same name is never read
    /// through it.
    #[test]
    fn readers_are_bounded_and_never_kept_across_a_removal() {
        use super::{Readers, CQ_OPEN_READERS};
        use std::path::Path;
        use std::rc::Rc;
        let key = |queue: u32| QueueKey { topic_id: 1, queue };
        let path = |queue: u32| PathBuf::from(format!("/q/{queue}"));
        let mut readers = Readers::<u32>::new();
        for queue in 0..CQ_OPEN_READERS as u32 {
            let epoch = readers.epoch;
            readers.keep(key(queue), path(queue), Rc::new(queue), epoch);
        }
        // Queue 0 used again: queue 1 is now the least recently used.
        assert_eq!(readers.get(key(0), &path(0)).as_deref(), Some(&0));
        let epoch = readers.epoch;
        readers.keep(key(99), path(99), Rc::new(99), epoch);
        assert_eq!(readers.len(), CQ_OPEN_READERS);
        assert!(
            readers.get(key(1), &path(1)).is_none(),
            "the LRU was closed"
        );
        assert!(readers.get(key(0), &path(0)).is_some());
        assert!(readers.get(key(0), Path::new("/q/other")).is_none());
        // An open begun before a removal is used once, not kept.
        let opened_at = readers.epoch;
        readers.forget(|k| *k == key(2));
        readers.keep(key(2), path(2), Rc::new(2), opened_at);
        assert!(readers.get(key(2), &path(2)).is_none());
        let epoch = readers.epoch;
        readers.keep(key(2), path(2), Rc::new(2), epoch);
        assert!(readers.get(key(2), &path(2)).is_some());
    }

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
            cq_file_entries: 1024,
            cq_cache_entries: 64,
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
