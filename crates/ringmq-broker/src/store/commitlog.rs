//! The commitlog of one shard: fixed-size segments `<dir>/commitlog/<20-digit start offset>`,
//! an in-memory write buffer, group-commit flush and the recovery scan.
//!
//! Records enter through [`CommitLog::append`] (encoded straight into the write buffer) and
//! reach disk through [`CommitLog::flush`]: the dirty range, from the block holding the last
//! flushed byte up to the end rounded up to [`BLOCK_BYTES`], goes out in one O_DIRECT write per
//! segment involved and one fdatasync per file. The partial last block is rewritten as it fills.
//! Segments are created and zero-filled ahead of need ([`CommitLog::prepare_next_segment`]) so
//! later fdatasyncs only touch written extents. A record never spans segments: the unused tail
//! gets an end-of-segment marker and the record starts the next segment.
//!
//! Retention removes whole segments from the front ([`CommitLog::remove_segment`]), never the
//! one being written; the store decides which and records the new head first.
//!
//! Recovery ([`CommitLog::recover`]) scans forward, stops at the first torn or corrupt record,
//! zeroes what lies past it and deletes later segments, so stale bytes are never read as records.

use super::io::{Disk, DiskFile, BLOCK_BYTES};
use super::record::{self, Decoded, RecordView, END_OF_SEGMENT_MARKER_BYTES, RECORD_HEADER_BYTES};
use super::{AppendError, StoreConfig, StoreError};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::warn;

/// Size of each zero-fill write when preparing a segment: large writes reach the device's
/// streaming bandwidth (4 GB/s at 1 MiB in the probe) without pinning much DMA memory.
pub const ZERO_FILL_CHUNK_BYTES: usize = 1 << 20;
/// Size of each read during the recovery scan, for the same reason; a window always holds at
/// least one whole record of `max_record_bytes`.
pub const SCAN_READ_BYTES: usize = 1 << 20;
/// Digits in a segment file name: a u64 offset zero-padded so names sort by offset.
const SEGMENT_NAME_DIGITS: usize = 20;

pub fn segment_file_name(base: u64) -> String {
    format!("{base:0width$}", width = SEGMENT_NAME_DIGITS)
}

fn parse_segment_name(name: &str) -> Option<u64> {
    if name.len() != SEGMENT_NAME_DIGITS || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

fn align_down(v: u64) -> u64 {
    v / BLOCK_BYTES as u64 * BLOCK_BYTES as u64
}

fn align_up(v: u64) -> u64 {
    v.div_ceil(BLOCK_BYTES as u64) * BLOCK_BYTES as u64
}

/// Where and why the recovery scan stopped.
pub struct ScanEnd {
    pub end_offset: u64,
    pub scanned_bytes: u64,
    pub scanned_records: u64,
    /// `Some` when the scan stopped at a torn or corrupt record rather than at zeros.
    pub corruption: Option<String>,
}

/// What the most recent flush did, for the shard's probe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// Commitlog bytes the flush made durable (the group-commit batch).
    pub bytes: u64,
    /// Bytes written to disk, including the rewritten partial block and block padding.
    pub written_bytes: u64,
    pub write_duration: Duration,
    pub sync_duration: Duration,
}

/// Bytes written by [`CommitLog::write_dirty`], durable once [`CommitLog::sync`] completes.
pub struct Written {
    target: u64,
    written_bytes: u64,
    write_duration: Duration,
}

pub struct CommitLog<D: Disk> {
    disk: D,
    /// Files written since the last sync began. A sync takes them all, not only the files of
    /// its own write: a segment roll writes the old segment's end marker in one write, and the
    /// next write may touch only the new segment, yet the marker must be durable before
    /// anything after it counts as durable.
    unsynced_files: RefCell<Vec<Rc<D::File>>>,
    /// The other list [`CommitLog::sync`] alternates `unsynced_files` with.
    spare_unsynced_files: RefCell<Vec<Rc<D::File>>>,
    /// The list of a flush's writes, kept for the next flush (see `dirty_writes`).
    spare_writes: RefCell<DirtyWrites<D::File>>,
    last_flush: Cell<FlushStats>,
    dir: PathBuf,
    segment_size_bytes: u64,
    write_buffer_bytes: usize,
    max_record_bytes: usize,
    state: RefCell<LogState<D::File>>,
}

struct LogState<F> {
    /// Open segment files by start offset; a segment appears here only once it is fully
    /// zero-filled and synced (or was found on disk at open).
    segments: BTreeMap<u64, Rc<F>>,
    /// Bytes `[buffer_start, max_offset)`: recently flushed bytes kept for readers (see
    /// `compact`), the partial block before the flushed offset, and everything appended since.
    /// Capacity reserved at open, so appends never allocate.
    buffer: Vec<u8>,
    /// Block-aligned commitlog offset of `buffer[0]`.
    buffer_start: u64,
    max_offset: u64,
    /// End of the last completed write; `flushed_offset` follows it once synced.
    written_offset: u64,
    flushed_offset: u64,
    /// Set by the first failed write or sync; the log accepts nothing after it.
    failed: Option<String>,
}

impl<F> LogState<F> {
    /// The offsets' order and the buffer's shape, checked after every change: what is flushed
    /// was written, what was written was appended, and the buffer starts on a block boundary
    /// (direct writes are cut from it block by block) and holds exactly the bytes from there to
    /// the end of the log.
    fn check(&self) {
        assert!(
            self.flushed_offset <= self.written_offset && self.written_offset <= self.max_offset,
            "commitlog offsets out of order: flushed {} written {} max {}",
            self.flushed_offset,
            self.written_offset,
            self.max_offset
        );
        assert_eq!(
            self.buffer_start % BLOCK_BYTES as u64,
            0,
            "write buffer starts at {}, not on a block boundary",
            self.buffer_start
        );
        assert!(
            self.buffer_start <= self.flushed_offset
                && self.buffer.len() as u64 == self.max_offset - self.buffer_start,
            "write buffer [{}, +{}) does not end at the log's end {} or starts past the flushed offset {}",
            self.buffer_start,
            self.buffer.len(),
            self.max_offset,
            self.flushed_offset
        );
    }
}

impl<D: Disk> CommitLog<D> {
    pub fn dir_of(config: &StoreConfig) -> PathBuf {
        config.dir.join("commitlog")
    }

    pub fn segment_path(&self, base: u64) -> PathBuf {
        self.dir.join(segment_file_name(base))
    }

    pub fn base_of(&self, offset: u64) -> u64 {
        offset / self.segment_size_bytes * self.segment_size_bytes
    }

    pub fn last_flush(&self) -> FlushStats {
        self.last_flush.get()
    }

    pub fn max_offset(&self) -> u64 {
        self.state.borrow().max_offset
    }

    pub fn flushed_offset(&self) -> u64 {
        self.state.borrow().flushed_offset
    }

    pub fn failure(&self) -> Option<String> {
        self.state.borrow().failed.clone()
    }

    /// Segment files the log holds open (retained, being written, prepared).
    pub fn segment_count(&self) -> usize {
        self.state.borrow().segments.len()
    }

    pub fn oldest_segment(&self) -> Option<u64> {
        self.state.borrow().segments.keys().next().copied()
    }

    /// Refuses every later append and flush: a write or sync failed somewhere in the store.
    pub fn mark_failed(&self, reason: String) {
        let mut state = self.state.borrow_mut();
        if state.failed.is_none() {
            state.failed = Some(reason);
        }
    }

    fn fail(&self, context: String, error: std::io::Error) -> StoreError {
        let mut state = self.state.borrow_mut();
        if state.failed.is_none() {
            state.failed = Some(format!("{context}: {error}"));
        }
        StoreError::io(context, error)
    }

    /// Opens every segment on disk. The log is empty until [`CommitLog::finish_recovery`].
    pub async fn open(disk: D, config: &StoreConfig) -> Result<Self, StoreError> {
        let dir = Self::dir_of(config);
        disk.create_dir_all(&dir)
            .await
            .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        let names = disk
            .list(&dir)
            .await
            .map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
        let mut segments = BTreeMap::new();
        for base in names.iter().filter_map(|n| parse_segment_name(n)) {
            if base % config.segment_size_bytes != 0 {
                return Err(StoreError::Corrupt(format!(
                    "segment {} does not start at a multiple of segment_size_bytes {}",
                    segment_file_name(base),
                    config.segment_size_bytes
                )));
            }
            let path = dir.join(segment_file_name(base));
            let file = disk
                .open(&path, false)
                .await
                .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
            segments.insert(base, Rc::new(file));
        }
        let state = LogState {
            segments,
            // Dirty bytes (at most one write buffer) plus retained flushed bytes (at most one
            // more, see `compact`) plus a block of alignment on each side.
            buffer: Vec::with_capacity(2 * config.write_buffer_bytes + 2 * BLOCK_BYTES),
            buffer_start: 0,
            max_offset: 0,
            written_offset: 0,
            flushed_offset: 0,
            failed: None,
        };
        Ok(CommitLog {
            disk,
            unsynced_files: RefCell::new(Vec::new()),
            spare_unsynced_files: RefCell::new(Vec::new()),
            spare_writes: RefCell::new(Vec::new()),
            last_flush: Cell::new(FlushStats::default()),
            dir,
            segment_size_bytes: config.segment_size_bytes,
            write_buffer_bytes: config.write_buffer_bytes,
            max_record_bytes: config.max_record_bytes,
            state: RefCell::new(state),
        })
    }

    /// Where the recovery scan starts: `hint` (from the checkpoint) when a segment holds it,
    /// else the start of the oldest segment.
    pub fn scan_start(&self, hint: Option<u64>) -> u64 {
        let state = self.state.borrow();
        let oldest = state.segments.keys().next().copied().unwrap_or(0);
        let Some(hint) = hint else { return oldest };
        let in_segment = state.segments.contains_key(&self.base_of(hint));
        let at_end_of_segment = hint % self.segment_size_bytes == 0
            && hint >= self.segment_size_bytes
            && state
                .segments
                .contains_key(&(hint - self.segment_size_bytes));
        if hint >= oldest && (in_segment || at_end_of_segment) {
            hint
        } else {
            oldest
        }
    }

    /// Decodes records forward from `from` (a record boundary) until zeros, a torn or corrupt
    /// record, a missing segment or `limit`, calling `on_record` for each good record.
    pub async fn scan(
        &self,
        from: u64,
        limit: u64,
        mut on_record: impl FnMut(&RecordView<'_>) -> Result<(), StoreError>,
    ) -> Result<ScanEnd, StoreError> {
        let mut pos = from;
        let mut records = 0u64;
        let mut window = Window::default();
        let mut corruption = None;
        while pos < limit {
            let base = self.base_of(pos);
            let segment_end = base + self.segment_size_bytes;
            let file = match self.state.borrow().segments.get(&base) {
                Some(file) => file.clone(),
                None => break,
            };
            let remaining = segment_end - pos;
            if remaining < END_OF_SEGMENT_MARKER_BYTES as u64 {
                pos = segment_end;
                continue;
            }
            let need = self.scan_need(&window, base, pos, remaining);
            if !window.covers(base, pos, need) {
                let want = remaining.min(SCAN_READ_BYTES.max(need) as u64) as usize;
                window.fill(&*file, pos, base, want).await?;
                let need = self.scan_need(&window, base, pos, remaining);
                if !window.covers(base, pos, need) {
                    let want = remaining.min(SCAN_READ_BYTES.max(need) as u64) as usize;
                    window.fill(&*file, pos, base, want).await?;
                }
            }
            let available = window.from(pos);
            if available.is_empty() {
                break;
            }
            match record::decode(available, pos) {
                Ok(Decoded::Record(view)) => {
                    on_record(&view)?;
                    records += 1;
                    pos = view.end_offset();
                }
                Ok(Decoded::EndOfSegment) => {
                    let claimed = u32::from_le_bytes(available[..4].try_into().expect("4"));
                    if claimed as u64 != remaining {
                        corruption = Some(format!(
                            "end-of-segment marker at {pos} covers {claimed} bytes, \
                             but {remaining} remain in the segment"
                        ));
                        break;
                    }
                    pos = segment_end;
                }
                Ok(Decoded::EndOfData) => break,
                Err(e) => {
                    corruption = Some(e.to_string());
                    break;
                }
            }
        }
        Ok(ScanEnd {
            end_offset: pos,
            scanned_bytes: pos - from,
            scanned_records: records,
            corruption,
        })
    }

    /// How many bytes from `pos` the scan window must hold to decode the record there: the
    /// size its header declares (capped by the largest record and the segment's rest) once the
    /// size field is in the window, else one header. Asking for the largest possible record
    /// instead made every record of a default-configured log refill a 4 MiB window, so a
    /// recovery read the segment once per record and never finished in practice.
    fn scan_need(&self, window: &Window, base: u64, pos: u64, remaining: u64) -> usize {
        let header = remaining.min(RECORD_HEADER_BYTES as u64) as usize;
        if !window.covers(base, pos, 4) || window.from(pos).len() < 4 {
            return header;
        }
        let declared = u32::from_le_bytes(window.from(pos)[..4].try_into().expect("4 bytes"));
        (declared as u64)
            .min(remaining)
            .min(self.max_record_bytes as u64)
            .max(header as u64) as usize
    }

    /// Makes `scan.end_offset` the end of the log: deletes later segments, zeroes stale bytes
    /// past the end, syncs the scanned segments, loads the partial last block into the write
    /// buffer and makes sure the segment for the next append exists. Returns the bytes zeroed.
    pub async fn finish_recovery(&self, from: u64, scan: &ScanEnd) -> Result<u64, StoreError> {
        let end = scan.end_offset;
        let base = self.base_of(end);
        self.remove_segments_after(base).await?;
        let current = self.state.borrow().segments.get(&base).cloned();
        let mut truncated_bytes = 0;
        let mut head = Vec::new();
        if let Some(file) = &current {
            let head_start = align_down(end) - base;
            head = read_exact(&**file, head_start, (end - base - head_start) as usize).await?;
            truncated_bytes = self
                .zero_tail(&**file, base, end, &head, scan.corruption.is_some())
                .await?;
        }
        let synced: Vec<Rc<D::File>> = {
            let state = self.state.borrow();
            let first = self.base_of(from);
            state
                .segments
                .range(first..=base)
                .map(|(_, f)| f.clone())
                .collect()
        };
        for file in synced {
            file.fdatasync().await.map_err(|e| {
                StoreError::io(format!("fdatasync of {}", file.path().display()), e)
            })?;
        }
        if current.is_none() {
            // The log ends on a segment boundary. With no room for the next segment the broker
            // still starts and serves reads; appends answer DISK_FULL until the allocator
            // creates it.
            match self.zero_filled_segment(base).await {
                Ok(file) => {
                    self.state.borrow_mut().segments.insert(base, Rc::new(file));
                }
                Err(e) if e.is_disk_full() => {
                    warn!("starting without the next commitlog segment: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        let mut state = self.state.borrow_mut();
        state.buffer.clear();
        state.buffer.extend_from_slice(&head);
        state.buffer_start = align_down(end);
        state.max_offset = end;
        state.written_offset = end;
        state.flushed_offset = end;
        state.check();
        Ok(truncated_bytes)
    }

    /// Start offsets of the segments wholly before the one being written, oldest first: the
    /// only ones retention may delete.
    pub fn sealed_segments(&self) -> Vec<u64> {
        let state = self.state.borrow();
        let current = self.base_of(state.max_offset);
        state.segments.range(..current).map(|(b, _)| *b).collect()
    }

    /// Forgets segment `base` and unlinks its file, making the removal durable. Readers that
    /// still hold the file keep reading it until they drop it (an unlinked file lives on while
    /// open). The caller has made sure nothing needs it (retention, the recovery of a deletion
    /// the checkpoint had recorded).
    pub async fn remove_segment(&self, base: u64) -> Result<(), StoreError> {
        if base >= self.base_of(self.state.borrow().max_offset) {
            return Err(StoreError::Corrupt(format!(
                "refusing to delete segment {}: it is being written",
                segment_file_name(base)
            )));
        }
        let Some(file) = self.state.borrow_mut().segments.remove(&base) else {
            return Ok(());
        };
        let path = self.segment_path(base);
        match self.disk.remove(&path).await {
            Ok(()) => {}
            // Gone already: a deletion that reached the unlink before a crash.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                // Kept in the map so the next pass tries again (nothing reads it: it lies
                // before the head); a restart would remove it too.
                self.state.borrow_mut().segments.insert(base, file);
                return Err(StoreError::io(format!("removing {}", path.display()), e));
            }
        }
        // `Disk::remove` is durable (it syncs the directory): nothing more to sync.
        Ok(())
    }

    /// At open, before the scan: removes the segments wholly before `head` (a deletion the
    /// checkpoint recorded but a crash kept from its unlink). Returns how many there were.
    pub async fn remove_segments_before(&self, head: u64) -> Result<usize, StoreError> {
        // Segments start at multiples of the segment size and the head is one (it moves a
        // whole segment at a time), so a segment starting before it ends at or before it.
        let before: Vec<u64> = self
            .state
            .borrow()
            .segments
            .range(..head)
            .map(|(b, _)| *b)
            .collect();
        for base in &before {
            self.state.borrow_mut().segments.remove(base);
            let path = self.segment_path(*base);
            // Durable on return: `Disk::remove` syncs the directory.
            self.disk
                .remove(&path)
                .await
                .map_err(|e| StoreError::io(format!("removing {}", path.display()), e))?;
        }
        Ok(before.len())
    }

    async fn remove_segments_after(&self, base: u64) -> Result<(), StoreError> {
        let later: Vec<u64> = {
            let mut state = self.state.borrow_mut();
            let later: Vec<u64> = state.segments.range(base + 1..).map(|(b, _)| *b).collect();
            for b in &later {
                state.segments.remove(b);
            }
            later
        };
        for b in later {
            let path = self.segment_path(b);
            self.disk
                .remove(&path)
                .await
                .map_err(|e| StoreError::io(format!("removing {}", path.display()), e))?;
        }
        Ok(())
    }

    /// Zeroes what may hold stale bytes past `end` in its segment: to the segment end after a
    /// corrupt record (anything may follow it), else up to the last non-zero byte before the
    /// first all-zero window of one write buffer plus one block. No run of zeros that long
    /// occurs inside written data (every record has a non-zero header and is at most one write
    /// buffer long), and an unsynced flush writes at most that far past the durable end.
    async fn zero_tail(
        &self,
        file: &D::File,
        base: u64,
        end: u64,
        head: &[u8],
        corrupt: bool,
    ) -> Result<u64, StoreError> {
        let segment_end = base + self.segment_size_bytes;
        let zero_end = if corrupt {
            segment_end
        } else {
            let window = (self.write_buffer_bytes + BLOCK_BYTES) as u64;
            let mut last_non_zero = end;
            let mut at = end;
            while at < segment_end {
                let probe_end = (at + window).min(segment_end);
                let probe = read_exact(file, at - base, (probe_end - at) as usize).await?;
                match probe.iter().rposition(|b| *b != 0) {
                    Some(last) => last_non_zero = at + last as u64 + 1,
                    None => break,
                }
                at = probe_end;
            }
            last_non_zero
        };
        if zero_end == end {
            return Ok(0);
        }
        let context = || format!("zeroing the tail of {}", file.path().display());
        let mut at = align_down(end);
        let stop = align_up(zero_end);
        while at < stop {
            let len = ZERO_FILL_CHUNK_BYTES
                .min(file.max_io_bytes())
                .min((stop - at) as usize);
            let mut buf = file.alloc_buffer(len);
            if at == align_down(end) {
                buf.as_mut()[..head.len()].copy_from_slice(head);
            }
            file.write_at(buf, at - base)
                .await
                .map_err(|e| StoreError::io(context(), e))?;
            at += len as u64;
        }
        file.fdatasync()
            .await
            .map_err(|e| StoreError::io(context(), e))?;
        Ok(zero_end - end)
    }

    /// Where a record of `len` bytes appended now would start: at the end of the log, or at the
    /// next segment when it does not fit in the current one. The same rule on master and slave
    /// gives byte-identical logs.
    pub fn next_start(&self, len: usize) -> u64 {
        let start = self.state.borrow().max_offset;
        let segment_end = self.base_of(start) + self.segment_size_bytes;
        if start + len as u64 > segment_end {
            segment_end
        } else {
            start
        }
    }

    /// The segment holding `offset`: its file path, start and end offsets.
    pub fn segment_of(&self, offset: u64) -> Option<(PathBuf, u64, u64)> {
        let base = self.base_of(offset);
        self.state.borrow().segments.contains_key(&base).then(|| {
            (
                self.segment_path(base),
                base,
                base + self.segment_size_bytes,
            )
        })
    }

    pub fn segment_size_bytes(&self) -> u64 {
        self.segment_size_bytes
    }

    /// Calls `f` with the appended bytes from `offset` (at most `max_len`, not past the end of
    /// its segment) while they are still in the write buffer; `None` when `offset` is older
    /// than the buffer. Borrowed, not copied: replication sends them straight to a socket.
    pub fn with_buffered<R>(
        &self,
        offset: u64,
        max_len: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Option<R> {
        let state = self.state.borrow();
        if offset < state.buffer_start || offset > state.max_offset {
            return None;
        }
        let segment_end = self.base_of(offset) + self.segment_size_bytes;
        let end = state
            .max_offset
            .min(offset + max_len as u64)
            .min(segment_end);
        let from = (offset - state.buffer_start) as usize;
        let to = (end - state.buffer_start) as usize;
        Some(f(&state.buffer[from..to]))
    }

    /// Reserves room for a record of `len` bytes and encodes it with `encode(offset, bytes)`.
    /// Returns the commitlog offset the record starts at.
    pub fn append(
        &self,
        len: usize,
        encode: impl FnOnce(u64, &mut [u8]),
    ) -> Result<u64, AppendError> {
        let mut state = self.state.borrow_mut();
        if let Some(reason) = &state.failed {
            return Err(AppendError::Failed(reason.clone()));
        }
        let mut start = state.max_offset;
        let segment_end = self.base_of(start) + self.segment_size_bytes;
        if start + len as u64 > segment_end {
            start = segment_end;
        }
        if !state.segments.contains_key(&self.base_of(start)) {
            return Err(AppendError::SegmentNotReady);
        }
        let end = start + len as u64;
        if end - state.flushed_offset > self.write_buffer_bytes as u64 {
            return Err(AppendError::BufferFull);
        }
        let gap = (start - state.max_offset) as usize;
        let gap_at = state.buffer.len();
        state.buffer.resize(gap_at + gap + len, 0);
        if gap >= END_OF_SEGMENT_MARKER_BYTES {
            record::encode_end_of_segment(&mut state.buffer[gap_at..gap_at + gap]);
        }
        encode(start, &mut state.buffer[gap_at + gap..]);
        state.max_offset = end;
        state.check();
        Ok(start)
    }

    /// Writes the dirty range and fdatasyncs every file it touched. Returns the flushed offset.
    pub async fn flush(&self) -> Result<u64, StoreError> {
        match self.write_dirty().await? {
            Some(written) => self.sync(written).await,
            None => Ok(self.state.borrow().flushed_offset),
        }
    }

    /// First half of a flush: writes every byte appended since the last write (from the block
    /// holding the written end, so the partial block is rewritten as it fills) and returns
    /// what [`CommitLog::sync`] must make durable. A shard may write the next batch while the
    /// previous one is being synced: a rewrite of the partial block only ever adds bytes to
    /// it, so a torn rewrite cannot damage what an earlier sync made durable.
    pub async fn write_dirty(&self) -> Result<Option<Written>, StoreError> {
        let (target, parts) = {
            let state = self.state.borrow();
            if let Some(reason) = &state.failed {
                return Err(StoreError::io(
                    "commitlog failed earlier",
                    std::io::Error::other(reason.clone()),
                ));
            }
            if state.max_offset == state.written_offset {
                return Ok(None);
            }
            (state.max_offset, self.dirty_writes(&state))
        };
        let written_bytes = parts
            .iter()
            .map(|(_, buf, _)| buf.as_ref().len() as u64)
            .sum();
        let write_start = Instant::now();
        let mut parts = parts;
        for (file, buf, file_offset) in parts.drain(..) {
            if let Err(e) = file.write_at(buf, file_offset).await {
                // The path is looked up only now: `path()` allocates.
                let context = format!("write of {} at {file_offset}", file.path().display());
                return Err(self.fail(context, e));
            }
            let mut unsynced = self.unsynced_files.borrow_mut();
            if !unsynced.iter().any(|f| Rc::ptr_eq(f, &file)) {
                unsynced.push(file);
            }
        }
        *self.spare_writes.borrow_mut() = parts;
        let mut state = self.state.borrow_mut();
        state.written_offset = state.written_offset.max(target);
        state.check();
        Ok(Some(Written {
            target,
            written_bytes,
            write_duration: write_start.elapsed(),
        }))
    }

    /// Second half of a flush: fdatasyncs every file written since the last sync began;
    /// everything before the write's end is then durable. Returns the flushed offset.
    pub async fn sync(&self, written: Written) -> Result<u64, StoreError> {
        let sync_start = Instant::now();
        // The list is swapped for the spare one (writes of the next batch go there while these
        // sync) and becomes the spare again afterwards: no allocation per flush.
        let spare = std::mem::take(&mut *self.spare_unsynced_files.borrow_mut());
        let mut files = std::mem::replace(&mut *self.unsynced_files.borrow_mut(), spare);
        for file in &files {
            if let Err(e) = file.fdatasync().await {
                let context = format!("fdatasync of {}", file.path().display());
                return Err(self.fail(context, e));
            }
        }
        files.clear();
        *self.spare_unsynced_files.borrow_mut() = files;
        let mut state = self.state.borrow_mut();
        self.last_flush.set(FlushStats {
            bytes: written.target.saturating_sub(state.flushed_offset),
            written_bytes: written.written_bytes,
            write_duration: written.write_duration,
            sync_duration: sync_start.elapsed(),
        });
        state.flushed_offset = state.flushed_offset.max(written.target);
        self.compact(&mut state);
        state.check();
        Ok(state.flushed_offset)
    }

    /// Bytes appended but not yet written.
    pub fn unwritten_bytes(&self) -> u64 {
        let state = self.state.borrow();
        state.max_offset - state.written_offset
    }

    /// Keeps recently flushed bytes in the buffer so that consumers reading near the end of
    /// the log (the common case) are served from memory, not by an O_DIRECT read per record.
    /// When more than `write_buffer_bytes` of flushed bytes are held, the oldest are dropped
    /// down to half of that: the move happens once per half buffer appended, so it costs about
    /// one byte copied per byte appended rather than a whole buffer per flush.
    fn compact(&self, state: &mut LogState<D::File>) {
        let flushed_block = align_down(state.flushed_offset);
        if flushed_block - state.buffer_start <= self.write_buffer_bytes as u64 {
            return;
        }
        let keep_from = align_down(flushed_block - self.write_buffer_bytes as u64 / 2);
        let drop = (keep_from - state.buffer_start) as usize;
        state.buffer.drain(..drop);
        state.buffer_start = keep_from;
    }

    /// Aligned buffers covering the dirty range (from the block holding the flushed offset to
    /// the end): one per segment it touches, cut further at the device's request limit.
    fn dirty_writes(&self, state: &LogState<D::File>) -> DirtyWrites<D::File> {
        // Empty: the last flush drained it. Kept between flushes so a flush allocates no list.
        let mut writes = std::mem::take(&mut *self.spare_writes.borrow_mut());
        let end = align_up(state.max_offset);
        let mut at = align_down(state.written_offset).max(state.buffer_start);
        while at < state.max_offset {
            let base = self.base_of(at);
            let file = state.segments[&base].clone();
            let part_end = end
                .min(base + self.segment_size_bytes)
                .min(at + file.max_io_bytes() as u64);
            let mut buf = file.alloc_buffer((part_end - at) as usize);
            let copy_end = part_end.min(state.max_offset);
            let from = (at - state.buffer_start) as usize;
            let to = (copy_end - state.buffer_start) as usize;
            buf.as_mut()[..to - from].copy_from_slice(&state.buffer[from..to]);
            writes.push((file, buf, at - base));
            at = part_end;
        }
        writes
    }

    /// Whether a batch of records of `lens` bytes can be appended now without waiting, all of
    /// it: `SegmentNotReady` or `BufferFull` when it must wait (for the allocator or a flush),
    /// `BatchTooLarge` when it never could. Placed exactly as [`CommitLog::append`] would (a
    /// record that does not fit its segment starts the next), so once this holds and nothing
    /// else appends in between, every record of the batch goes in without a wait; a batch is
    /// never cut in two by a segment that cannot be made or a flush that does not come.
    pub fn admit_batch(&self, lens: &[usize]) -> Result<(), AppendError> {
        let state = self.state.borrow();
        if let Some(reason) = &state.failed {
            return Err(AppendError::Failed(reason.clone()));
        }
        let first_base = self.base_of(state.max_offset);
        let mut end = state.max_offset;
        for len in lens {
            let segment_end = self.base_of(end) + self.segment_size_bytes;
            if end + *len as u64 > segment_end {
                end = segment_end;
            }
            end += *len as u64;
        }
        let bytes = end - state.max_offset;
        if bytes > self.write_buffer_bytes as u64 {
            return Err(AppendError::BatchTooLarge {
                bytes,
                limit: "write_buffer_bytes",
                max_bytes: self.write_buffer_bytes as u64,
            });
        }
        let last_base = self.base_of(end.saturating_sub(1).max(state.max_offset));
        if last_base > first_base + self.segment_size_bytes {
            return Err(AppendError::BatchTooLarge {
                bytes,
                limit: "segment_size_bytes",
                max_bytes: self.segment_size_bytes,
            });
        }
        let mut base = first_base;
        while base <= last_base {
            if !state.segments.contains_key(&base) {
                return Err(AppendError::SegmentNotReady);
            }
            base += self.segment_size_bytes;
        }
        if end - state.flushed_offset > self.write_buffer_bytes as u64 {
            return Err(AppendError::BufferFull);
        }
        Ok(())
    }

    /// True when the segment for the next append is missing, or the current one is half full
    /// and its successor is not prepared yet.
    pub fn needs_next_segment(&self) -> bool {
        let state = self.state.borrow();
        let base = self.base_of(state.max_offset);
        let half_full = state.max_offset - base >= self.segment_size_bytes / 2;
        !state.segments.contains_key(&base)
            || (half_full
                && !state
                    .segments
                    .contains_key(&(base + self.segment_size_bytes)))
    }

    /// Creates and zero-fills the next missing segment (current or next); no-op if both exist.
    pub async fn prepare_next_segment(&self) -> Result<(), StoreError> {
        let base = {
            let state = self.state.borrow();
            let current = self.base_of(state.max_offset);
            let next = current + self.segment_size_bytes;
            if !state.segments.contains_key(&current) {
                current
            } else if !state.segments.contains_key(&next) {
                next
            } else {
                return Ok(());
            }
        };
        let file = self.zero_filled_segment(base).await?;
        self.state.borrow_mut().segments.insert(base, Rc::new(file));
        Ok(())
    }

    /// Creates segment `base` and writes zeros through it. A new segment that could not be
    /// filled (no space, say) is removed again, so the space it took is free for what can still be
    /// written (consume queues, checkpoints) until the allocator tries again.
    async fn zero_filled_segment(&self, base: u64) -> Result<D::File, StoreError> {
        let path = self.segment_path(base);
        let existed = self
            .disk
            .exists(&path)
            .await
            .map_err(|e| StoreError::io(format!("looking for {}", path.display()), e))?;
        match self.fill_with_zeros(&path).await {
            Ok(file) => Ok(file),
            Err(e) if existed => Err(e),
            Err(e) => {
                if let Err(remove) = self.disk.remove(&path).await {
                    warn!("removing the partial segment {}: {remove}", path.display());
                }
                Err(e)
            }
        }
    }

    async fn fill_with_zeros(&self, path: &std::path::Path) -> Result<D::File, StoreError> {
        let context = || format!("zero-filling segment {}", path.display());
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        let available = self
            .disk
            .available_bytes(dir)
            .await
            .map_err(|e| StoreError::io(context(), e))?;
        // Checked first so a full disk costs one statvfs per retry, not a segment's worth of
        // zeros written and removed again.
        if available < self.segment_size_bytes {
            return Err(StoreError::io(
                context(),
                std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!(
                        "no space left on device: a segment needs {} bytes, {available} are free",
                        self.segment_size_bytes
                    ),
                ),
            ));
        }
        let file = self
            .disk
            .open(path, true)
            .await
            .map_err(|e| StoreError::io(context(), e))?;
        let mut at = 0u64;
        while at < self.segment_size_bytes {
            let len = ZERO_FILL_CHUNK_BYTES
                .min(file.max_io_bytes())
                .min((self.segment_size_bytes - at) as usize);
            let buf = file.alloc_buffer(len);
            file.write_at(buf, at)
                .await
                .map_err(|e| StoreError::io(context(), e))?;
            at += len as u64;
        }
        file.fdatasync()
            .await
            .map_err(|e| StoreError::io(context(), e))?;
        // The segment's name must survive a crash before any record is acknowledged in it:
        // otherwise recovery would not find the file at all.
        self.disk
            .sync_dir(dir)
            .await
            .map_err(|e| StoreError::io(context(), e))?;
        Ok(file)
    }

    /// The bytes `[offset, offset + len)`: what is still in the write buffer from there, the
    /// rest from the segment file (which holds everything before the buffer).
    pub async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        let (file, tail) = {
            let state = self.state.borrow();
            let end = offset + len as u64;
            if offset >= state.buffer_start && end <= state.max_offset {
                let from = (offset - state.buffer_start) as usize;
                return Ok(state.buffer[from..from + len].to_vec());
            }
            // A range that starts before the write buffer and ends in it: the buffered part may
            // not be written yet (the file still holds zeros there), so it comes from the
            // buffer, copied now, before the read below lets a flush move the buffer.
            let tail = if end > state.buffer_start && end <= state.max_offset {
                state.buffer[..(end - state.buffer_start) as usize].to_vec()
            } else {
                Vec::new()
            };
            match state.segments.get(&self.base_of(offset)) {
                Some(file) => (file.clone(), tail),
                None => {
                    let oldest = state.segments.keys().next().copied().unwrap_or(0);
                    let why = if offset < oldest {
                        "it was deleted by retention"
                    } else {
                        "no segment holds it"
                    };
                    return Err(StoreError::Corrupt(format!(
                        "commitlog offset {offset} cannot be read: {why}"
                    )));
                }
            }
        };
        let base = self.base_of(offset);
        let mut out = file
            .read_at(offset - base, len - tail.len())
            .await
            .map_err(|e| StoreError::io(format!("read of {}", file.path().display()), e))?;
        out.extend_from_slice(&tail);
        Ok(out)
    }
}

/// The writes of one flush: (segment file, aligned buffer, offset in the file).
type DirtyWrites<F> = Vec<(Rc<F>, <F as DiskFile>::Buf, u64)>;

/// Reads `len` bytes at `offset`; bytes past the end of the file read as zeros (a segment
/// whose zero-fill was cut short by a crash).
async fn read_exact<F: DiskFile>(file: &F, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
    let mut out = file
        .read_at(offset, len)
        .await
        .map_err(|e| StoreError::io(format!("read of {}", file.path().display()), e))?;
    out.resize(len, 0);
    Ok(out)
}

/// The bytes the recovery scan read last: `[start, start + bytes.len())` of one segment.
#[derive(Default)]
struct Window {
    /// Start offset of the segment the window was read from.
    base: u64,
    start: u64,
    bytes: Vec<u8>,
    /// The read that filled the window stopped at the end of the file.
    at_file_end: bool,
}

impl Window {
    fn covers(&self, base: u64, pos: u64, need: usize) -> bool {
        let end = self.start + self.bytes.len() as u64;
        self.base == base
            && pos >= self.start
            && pos <= end
            && (pos + need as u64 <= end || self.at_file_end)
    }

    fn from(&self, pos: u64) -> &[u8] {
        &self.bytes[(pos - self.start) as usize..]
    }

    async fn fill<F: DiskFile>(
        &mut self,
        file: &F,
        pos: u64,
        base: u64,
        want: usize,
    ) -> Result<(), StoreError> {
        self.bytes = file
            .read_at(pos - base, want)
            .await
            .map_err(|e| StoreError::io(format!("read of {}", file.path().display()), e))?;
        self.base = base;
        self.start = pos;
        self.at_file_end = self.bytes.len() < want;
        Ok(())
    }
}
