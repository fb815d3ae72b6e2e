//! Idempotent producers: producer ids, and each partition's window of recent batches so that a
//! retried batch is answered with its first offset instead of being stored again.
//!
//! Producer ids come from one counter per broker process, started at the Unix time in
//! milliseconds times [`IDS_PER_MS`]: a restarted broker starts past every id the previous
//! run could have handed out unless that run gave out more than [`IDS_PER_MS`] ids per
//! millisecond of its life, or the clock went back. Nothing is persisted.
//!
//! The windows live in memory (one lock shared by the shards: a produce holds it for a map
//! look-up, never across an await). The store is what survives a restart: the first message
//! of every idempotent batch carries its [`BatchId`] (the `KAFKA_PRODUCER` property, see
//! [`BatchId::property`]), and the first time a run sees a producer id it did not hand out on
//! a partition, it reads that partition's last [`RECOVERY_RECORDS`] messages once and
//! remembers the batches found there ([`Windows::recovered`]). So a batch retried across a
//! restart, or on a new master after a failover (the slaves hold the same messages), is
//! answered with its first offset rather than stored twice. The windows are the store's only
//! while this broker is the one master: a partition's are dropped and read again from the
//! store in every new epoch of the log (a restart, a promotion; another master may have taken
//! batches of the same producers meanwhile). Only ids this run handed out, or
//! found so on the partition, or of a broker's shape starting at sequence 0 (a producer whose
//! first batch there came after a restart or a failover) get a window (any other is
//! UNKNOWN_PRODUCER_ID), a producer's
//! windows are forgotten after [`PRODUCER_IDLE_MS`] without a batch, and at most
//! [`MAX_WINDOWS`] are kept (the least recently used go first), so the memory they take is
//! bounded whatever clients send.

use crate::protocol::Status;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

/// Batches remembered per partition and producer, as Kafka's broker keeps
/// (`max.in.flight.requests.per.connection` is at most 5 with idempotence on).
pub const WINDOW: usize = 5;

/// Producer ids one millisecond of uptime may hand out before ids could repeat after a restart.
pub const IDS_PER_MS: i64 = 1024;

/// A producer's windows are forgotten after this long without a batch: Kafka's own
/// `producer.id.expiration.ms` default (one day).
pub const PRODUCER_IDLE_MS: u64 = 24 * 60 * 60 * 1000;

/// `(topic, partition, producer)` windows kept at most: about 200 bytes each, so some 20 MiB.
pub const MAX_WINDOWS: usize = 100_000;

/// Messages at the end of a partition read to rebuild its windows after a restart: room for
/// the last [`WINDOW`] batches of some hundred producers writing batches of a few records.
pub const RECOVERY_RECORDS: u64 = 4_096;

/// Bytes of pull answers the rebuild reads at most per partition (a tail of large messages
/// is read partly: the batches past it fall back to sequence checks).
pub const RECOVERY_BYTES: usize = 64 << 20;

/// The producer-id counter.
pub struct ProducerIds {
    first: i64,
    next: AtomicI64,
}

impl ProducerIds {
    pub fn starting_at_unix_ms(now_ms: u64) -> ProducerIds {
        let start = i64::try_from(now_ms)
            .unwrap_or(0)
            .saturating_mul(IDS_PER_MS);
        ProducerIds {
            first: start.max(1),
            next: AtomicI64::new(start.max(1)),
        }
    }

    pub fn next(&self) -> i64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether this run handed out `id`.
    pub fn issued(&self, id: i64) -> bool {
        id >= self.first && id < self.next.load(Ordering::Relaxed)
    }

    /// Whether `id` has the shape of an id a ringmq broker hands out by `now_ms`: its time
    /// part (`id / IDS_PER_MS`) from [`EARLIEST_ID_MS`] to `now_ms` plus [`ID_CLOCK_SKEW_MS`]
    /// (another broker of the group, or an earlier run of this one). Such an id's first batch
    /// on a partition (sequence 0) is taken without a window: a producer whose broker was
    /// killed, or failed over, before that partition stored any of its batches is a new
    /// producer there, as Kafka takes it. An invented small id is still UNKNOWN_PRODUCER_ID.
    pub fn could_have_issued(id: i64, now_ms: u64) -> bool {
        let ms = id / IDS_PER_MS;
        let latest = i64::try_from(now_ms.saturating_add(ID_CLOCK_SKEW_MS)).unwrap_or(i64::MAX);
        (EARLIEST_ID_MS..=latest).contains(&ms)
    }
}

/// The earliest time part of a producer id [`ProducerIds::could_have_issued`] accepts
/// (2020-01-01T00:00:00Z, before any ringmq broker ran).
pub const EARLIEST_ID_MS: i64 = 1_577_836_800_000;

/// How far another broker's clock may run ahead of this one's for its ids to count.
pub const ID_CLOCK_SKEW_MS: u64 = 60_000;

/// What identifies a produced batch of an idempotent producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchId {
    pub producer_id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
    pub record_count: u32,
}

impl BatchId {
    /// The `KAFKA_PRODUCER` property value stored with the batch's first message.
    pub fn property(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.producer_id, self.epoch, self.base_sequence, self.record_count
        )
    }

    /// The batch a `KAFKA_PRODUCER` value names; `None` for anything else.
    pub fn parse_property(value: &str) -> Option<BatchId> {
        let mut fields = value.split(':');
        let batch = BatchId {
            producer_id: fields.next()?.parse().ok().filter(|id: &i64| *id >= 0)?,
            epoch: fields.next()?.parse().ok()?,
            base_sequence: fields.next()?.parse().ok()?,
            record_count: fields.next()?.parse().ok().filter(|n: &u32| *n > 0)?,
        };
        fields.next().is_none().then_some(batch)
    }
}

/// One remembered batch: what identifies it, the first offset it was stored at, and the
/// status its guarantee missed with, while it has not been seen to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    epoch: i16,
    base_sequence: i32,
    record_count: u32,
    base_offset: u64,
    failed: Option<Status>,
}

/// A retried batch found in its window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Duplicate {
    pub base_offset: u64,
    /// Stored, but answered this status (its level's guarantee did not hold in time); `None`
    /// once it held.
    pub failed: Option<Status>,
}

/// One window: the last [`WINDOW`] batches and when the last one came (Unix ms).
#[derive(Default)]
struct Window {
    seen: VecDeque<Seen>,
    used_ms: u64,
}

/// How far a partition's windows come from its store, by the log epoch they were read in.
#[derive(Clone, Copy, Default)]
struct Recovery {
    /// The epoch whose windows are kept: a partition's windows of another epoch were dropped.
    cleared: Option<u32>,
    /// The epoch in which the stored tail was read.
    read: Option<u32>,
}

/// `(topic, partition, producer id)` → its window, and per partition the epoch its stored
/// tail was read in ([`Windows::recovered`]).
#[derive(Default)]
pub struct Windows {
    windows: Mutex<HashMap<(String, u32, i64), Window>>,
    recovery: Mutex<HashMap<(String, u32), Recovery>>,
}

impl Windows {
    /// Whether the stored tail of `partition` was read in log epoch `epoch`.
    pub fn is_recovered(&self, topic: &str, partition: u32, epoch: u32) -> bool {
        self.recovery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(topic.to_string(), partition))
            .is_some_and(|r| r.read == Some(epoch))
    }

    /// Before the stored tail of `partition` is read in `epoch`: the first time in that epoch,
    /// the partition's windows of earlier epochs are dropped (batches stored from now on are
    /// remembered as usual, and the tail's are merged in by [`Windows::recovered`]).
    pub fn begin_recovery(&self, topic: &str, partition: u32, epoch: u32) {
        let mut recovery = self.recovery.lock().unwrap_or_else(|e| e.into_inner());
        let mark = recovery.entry((topic.to_string(), partition)).or_default();
        if mark.cleared == Some(epoch) {
            return;
        }
        mark.cleared = Some(epoch);
        drop(recovery);
        self.windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(t, p, _), _| !(t == topic && *p == partition));
    }

    /// Remembers the batches found in the stored tail of `partition`, each with its first
    /// offset, and marks the partition read in `epoch`. A batch already remembered is kept as it is
    /// (a produce may have stored or retried it while the tail was read), and each window
    /// stays in offset order with its newest [`WINDOW`] batches, so reading a partition
    /// twice (two produces racing on the first contact) changes nothing.
    pub fn recovered(
        &self,
        topic: &str,
        partition: u32,
        found: &[(BatchId, u64)],
        epoch: u32,
        now_ms: u64,
    ) {
        {
            let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
            for &(batch, base_offset) in found {
                let key = (topic.to_string(), partition, batch.producer_id);
                if !windows.contains_key(&key) && windows.len() >= MAX_WINDOWS {
                    evict(&mut windows, now_ms);
                }
                let window = windows.entry(key).or_default();
                window.used_ms = window.used_ms.max(now_ms);
                if window.seen.iter().any(|s| s.base_offset == base_offset) {
                    continue;
                }
                let at = window
                    .seen
                    .iter()
                    .position(|s| s.base_offset > base_offset)
                    .unwrap_or(window.seen.len());
                window.seen.insert(
                    at,
                    Seen {
                        epoch: batch.epoch,
                        base_sequence: batch.base_sequence,
                        record_count: batch.record_count,
                        base_offset,
                        failed: None,
                    },
                );
                while window.seen.len() > WINDOW {
                    window.seen.pop_front();
                }
            }
        }
        self.recovery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((topic.to_string(), partition))
            .or_default()
            .read = Some(epoch);
    }

    /// Whether a window of `producer_id` on `partition` is kept (this run stored one of its
    /// batches there, or found one in the stored tail).
    pub fn knows(&self, topic: &str, partition: u32, producer_id: i64) -> bool {
        self.windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&(topic.to_string(), partition, producer_id))
    }

    /// Where a batch with these fields was stored, if it is one of the last [`WINDOW`] of
    /// its producer on this partition.
    pub fn duplicate_of(&self, topic: &str, partition: u32, batch: BatchId) -> Option<Duplicate> {
        let BatchId {
            producer_id,
            epoch,
            base_sequence,
            record_count,
        } = batch;
        if producer_id < 0 {
            return None;
        }
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows
            .get(&(topic.to_string(), partition, producer_id))?
            .seen
            .iter()
            .find(|s| {
                s.epoch == epoch
                    && s.base_sequence == base_sequence
                    && s.record_count == record_count
            })
            .map(|s| Duplicate {
                base_offset: s.base_offset,
                failed: s.failed,
            })
    }

    /// The base sequence the producer's next batch on this partition must carry: the one
    /// after its newest remembered batch of `epoch` (sequences wrap at i32::MAX, as Kafka's
    /// do). `None` when nothing of that producer and epoch is remembered (a new producer, a
    /// new epoch, or an expired window): any sequence starts it.
    pub fn next_sequence(
        &self,
        topic: &str,
        partition: u32,
        producer_id: i64,
        epoch: i16,
    ) -> Option<i32> {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let newest = windows
            .get(&(topic.to_string(), partition, producer_id))?
            .seen
            .back()
            .copied()?;
        (newest.epoch == epoch).then(|| {
            let next = i64::from(newest.base_sequence) + i64::from(newest.record_count);
            (next % (i64::from(i32::MAX) + 1)) as i32
        })
    }

    /// A batch stored with a missed guarantee was seen to hold since.
    pub fn confirmed(&self, topic: &str, partition: u32, batch: BatchId) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(window) = windows.get_mut(&(topic.to_string(), partition, batch.producer_id)) {
            for s in window.seen.iter_mut() {
                if s.epoch == batch.epoch
                    && s.base_sequence == batch.base_sequence
                    && s.record_count == batch.record_count
                {
                    s.failed = None;
                }
            }
        }
    }

    /// Remembers a stored batch at `now_ms` (`failed`: the status its guarantee missed
    /// with), forgetting the oldest past [`WINDOW`], and past [`MAX_WINDOWS`] the idle
    /// windows, then the least recently used.
    pub fn stored(
        &self,
        topic: &str,
        partition: u32,
        batch: BatchId,
        base_offset: u64,
        failed: Option<Status>,
        now_ms: u64,
    ) {
        let BatchId {
            producer_id,
            epoch,
            base_sequence,
            record_count,
        } = batch;
        if producer_id < 0 {
            return;
        }
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let key = (topic.to_string(), partition, producer_id);
        if !windows.contains_key(&key) && windows.len() >= MAX_WINDOWS {
            evict(&mut windows, now_ms);
        }
        let window = windows.entry(key).or_default();
        window.used_ms = now_ms;
        window.seen.push_back(Seen {
            epoch,
            base_sequence,
            record_count,
            base_offset,
            failed,
        });
        while window.seen.len() > WINDOW {
            window.seen.pop_front();
        }
    }

    /// Windows kept now.
    pub fn len(&self) -> usize {
        self.windows.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every window of a deleted topic, and that its partitions were read.
    pub fn forget_topic(&self, topic: &str) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows.retain(|(t, _, _), _| t != topic);
        self.recovery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(t, _), _| t != topic);
    }
}

/// Makes room for a window: drops every idle one, and when that frees nothing the least
/// recently used tenth (one scan and sort per [`MAX_WINDOWS`] / 10 new windows at worst).
fn evict(windows: &mut HashMap<(String, u32, i64), Window>, now_ms: u64) {
    windows.retain(|_, w| now_ms.saturating_sub(w.used_ms) < PRODUCER_IDLE_MS);
    if windows.len() < MAX_WINDOWS {
        return;
    }
    let mut used: Vec<u64> = windows.values().map(|w| w.used_ms).collect();
    let cut = used.len() / 10;
    let (_, threshold, _) = used.select_nth_unstable(cut);
    let threshold = *threshold;
    windows.retain(|_, w| w.used_ms > threshold);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(producer_id: i64, epoch: i16, base_sequence: i32, record_count: u32) -> BatchId {
        BatchId {
            producer_id,
            epoch,
            base_sequence,
            record_count,
        }
    }

    fn ok(base_offset: u64) -> Duplicate {
        Duplicate {
            base_offset,
            failed: None,
        }
    }

    /// The next batch must follow the newest of its producer and epoch; sequences wrap.
    #[test]
    fn the_next_sequence_follows_the_newest_batch_of_the_epoch() {
        let w = Windows::default();
        assert_eq!(
            w.next_sequence("t", 0, 7, 0),
            None,
            "a new producer starts anywhere"
        );
        w.stored("t", 0, id(7, 0, 0, 3), 0, None, 0);
        assert_eq!(w.next_sequence("t", 0, 7, 0), Some(3));
        assert_eq!(
            w.next_sequence("t", 0, 7, 1),
            None,
            "a new epoch starts anywhere"
        );
        w.stored("t", 0, id(7, 0, i32::MAX - 1, 2), 3, None, 0);
        assert_eq!(w.next_sequence("t", 0, 7, 0), Some(0), "wraps");
    }

    /// A batch stored with a missed guarantee is found with its status until confirmed.
    #[test]
    fn a_failed_guarantee_is_remembered_until_confirmed() {
        let w = Windows::default();
        w.stored(
            "t",
            0,
            id(7, 0, 0, 2),
            10,
            Some(Status::SlaveNotAvailable),
            0,
        );
        let found = w.duplicate_of("t", 0, id(7, 0, 0, 2)).expect("found");
        assert_eq!(found.failed, Some(Status::SlaveNotAvailable));
        w.confirmed("t", 0, id(7, 0, 0, 2));
        assert_eq!(w.duplicate_of("t", 0, id(7, 0, 0, 2)), Some(ok(10)));
    }

    #[test]
    fn a_retried_batch_is_found_until_five_newer_ones_pass() {
        let w = Windows::default();
        w.stored("t", 0, id(7, 0, 0, 3), 100, None, 0);
        assert_eq!(w.duplicate_of("t", 0, id(7, 0, 0, 3)), Some(ok(100)));
        assert_eq!(
            w.duplicate_of("t", 1, id(7, 0, 0, 3)),
            None,
            "other partition"
        );
        assert_eq!(w.duplicate_of("t", 0, id(7, 1, 0, 3)), None, "other epoch");
        assert_eq!(
            w.duplicate_of("t", 0, id(-1, 0, 0, 3)),
            None,
            "not idempotent"
        );
        for i in 1..=WINDOW as i32 {
            w.stored("t", 0, id(7, 0, i * 3, 3), 100 + i as u64 * 3, None, 0);
        }
        assert_eq!(
            w.duplicate_of("t", 0, id(7, 0, 0, 3)),
            None,
            "out of the window"
        );
        assert_eq!(w.duplicate_of("t", 0, id(7, 0, 15, 3)), Some(ok(115)));
        w.forget_topic("t");
        assert_eq!(w.duplicate_of("t", 0, id(7, 0, 15, 3)), None);
    }

    /// The property names the batch and reads back; anything else is no batch.
    #[test]
    fn the_stored_mark_of_a_batch_reads_back() {
        let batch = id(1_700_000_000_000_123, 2, 2_147_483_600, 40);
        assert_eq!(BatchId::parse_property(&batch.property()), Some(batch));
        for bad in [
            "",
            "1:0:0",
            "1:0:0:5:9",
            "-1:0:0:5",
            "1:0:0:0",
            "x:0:0:5",
            "1:0:0:5 ",
        ] {
            assert_eq!(BatchId::parse_property(bad), None, "{bad:?}");
        }
    }

    /// Batches found in a stored tail seed the windows in offset order, keep what a produce
    /// remembered meanwhile, and reading the tail twice changes nothing.
    #[test]
    fn a_stored_tail_seeds_the_windows_once_in_offset_order() {
        let w = Windows::default();
        // Remembered in an earlier epoch: dropped when the tail is read in epoch 3.
        w.stored("t", 0, id(9, 0, 0, 1), 1, None, 0);
        assert!(!w.is_recovered("t", 0, 3));
        w.begin_recovery("t", 0, 3);
        assert!(!w.knows("t", 0, 9), "an earlier epoch's window");
        // A produce raced the read: the producer's newest batch is remembered first.
        w.stored("t", 0, id(7, 0, 9, 1), 40, None, 5);
        let found: Vec<(BatchId, u64)> = (0..8)
            .map(|i| (id(7, 0, i, 1), 30 + i as u64))
            .chain([(id(8, 0, 0, 2), 20)])
            .collect();
        w.recovered("t", 0, &found, 3, 5);
        // A second read in the same epoch keeps what was stored meanwhile.
        w.begin_recovery("t", 0, 3);
        w.recovered("t", 0, &found, 3, 6);
        assert!(w.is_recovered("t", 0, 3) && !w.is_recovered("t", 1, 3));
        assert!(!w.is_recovered("t", 0, 4), "a new epoch reads again");
        assert!(w.knows("t", 0, 7) && w.knows("t", 0, 8) && !w.knows("t", 1, 7));
        assert_eq!(w.next_sequence("t", 0, 7, 0), Some(10), "after the newest");
        assert_eq!(w.next_sequence("t", 0, 8, 0), Some(2));
        assert_eq!(w.duplicate_of("t", 0, id(7, 0, 7, 1)), Some(ok(37)));
        assert_eq!(
            w.duplicate_of("t", 0, id(7, 0, 3, 1)),
            None,
            "past the newest five"
        );
        w.forget_topic("t");
        assert!(!w.is_recovered("t", 0, 3) && !w.knows("t", 0, 7));
    }

    /// Past the cap, idle windows go first, then the least recently used; the count never
    /// exceeds the cap.
    #[test]
    fn windows_are_bounded_by_the_cap_and_expire_when_idle() {
        let w = Windows::default();
        for p in 0..MAX_WINDOWS as i64 {
            w.stored("t", 0, id(p, 0, 0, 1), 0, None, p as u64);
        }
        assert_eq!(w.len(), MAX_WINDOWS);
        // One more, long after: every earlier window is idle and goes.
        let later = MAX_WINDOWS as u64 + PRODUCER_IDLE_MS;
        w.stored("t", 0, id(MAX_WINDOWS as i64, 0, 0, 1), 0, None, later);
        assert_eq!(w.len(), 1);
        for p in 0..MAX_WINDOWS as i64 {
            w.stored("t", 1, id(p, 0, 0, 1), 0, None, later + p as u64);
        }
        assert!(w.len() <= MAX_WINDOWS);
        // Nothing idle: the least recently used tenth goes, the newest stay.
        w.stored("t", 2, id(1, 0, 0, 1), 0, None, later + MAX_WINDOWS as u64);
        assert!(w.len() <= MAX_WINDOWS);
        assert_eq!(w.duplicate_of("t", 2, id(1, 0, 0, 1)), Some(ok(0)));
        assert_eq!(
            w.duplicate_of("t", 1, id(0, 0, 0, 1)),
            None,
            "the oldest went"
        );
        let newest = MAX_WINDOWS as i64 - 1;
        assert_eq!(w.duplicate_of("t", 1, id(newest, 0, 0, 1)), Some(ok(0)));
    }

    #[test]
    fn producer_ids_are_unique_and_start_past_an_earlier_run() {
        let first = ProducerIds::starting_at_unix_ms(1_000);
        let a = first.next();
        let b = first.next();
        assert_ne!(a, b);
        let later = ProducerIds::starting_at_unix_ms(1_001);
        assert!(later.next() > b);
        assert!(first.issued(a) && first.issued(b));
        assert!(!first.issued(b + 1), "not handed out yet");
        assert!(!first.issued(a - 1) && !first.issued(0));
    }

    #[test]
    fn only_ids_of_a_brokers_shape_could_have_been_issued() {
        let now_ms = 1_796_000_000_000u64;
        let earlier_run = ProducerIds::starting_at_unix_ms(now_ms - 3_600_000).next();
        let other_broker = ProducerIds::starting_at_unix_ms(now_ms + 1_000).next();
        assert!(ProducerIds::could_have_issued(earlier_run, now_ms));
        assert!(ProducerIds::could_have_issued(other_broker, now_ms));
        for invented in [0, 12_345, i64::MAX] {
            assert!(
                !ProducerIds::could_have_issued(invented, now_ms),
                "{invented}"
            );
        }
        let ahead = ProducerIds::starting_at_unix_ms(now_ms + ID_CLOCK_SKEW_MS + 1).next();
        assert!(!ProducerIds::could_have_issued(ahead, now_ms));
    }
}
