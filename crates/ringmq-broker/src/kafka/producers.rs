//! Idempotent producers: producer ids, and each partition's window of recent batches so that a
//! retried batch is answered with its first offset instead of being stored again.
//!
//! Producer ids come from one counter per broker process, started at the Unix time in
//! milliseconds times [`IDS_PER_MS`]: a restarted broker starts past every id the previous
//! run could have handed out unless that run gave out more than [`IDS_PER_MS`] ids per
//! millisecond of its life, or the clock went back. Nothing is persisted.
//!
//! The windows live in memory (one lock shared by the shards: a produce holds it for a map
//! look-up, never across an await). They are not rebuilt on restart yet, so a batch retried
//! across a broker restart can be stored twice.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

/// Batches remembered per partition and producer, as Kafka's broker keeps
/// (`max.in.flight.requests.per.connection` is at most 5 with idempotence on).
pub const WINDOW: usize = 5;

/// Producer ids one millisecond of uptime may hand out before ids could repeat after a restart.
pub const IDS_PER_MS: i64 = 1024;

/// The producer-id counter.
pub struct ProducerIds {
    next: AtomicI64,
}

impl ProducerIds {
    pub fn starting_at_unix_ms(now_ms: u64) -> ProducerIds {
        let start = i64::try_from(now_ms)
            .unwrap_or(0)
            .saturating_mul(IDS_PER_MS);
        ProducerIds {
            next: AtomicI64::new(start.max(1)),
        }
    }

    pub fn next(&self) -> i64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

/// What identifies a produced batch of an idempotent producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchId {
    pub producer_id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
    pub record_count: u32,
}

/// One remembered batch: what identifies it and the first offset it was stored at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    epoch: i16,
    base_sequence: i32,
    record_count: u32,
    base_offset: u64,
}

/// `(topic, partition, producer id)` → the last [`WINDOW`] batches.
#[derive(Default)]
pub struct Windows {
    windows: Mutex<HashMap<(String, u32, i64), VecDeque<Seen>>>,
}

impl Windows {
    /// The first offset a batch with these fields was stored at, if it is one of the last
    /// [`WINDOW`] of its producer on this partition.
    pub fn duplicate_of(&self, topic: &str, partition: u32, batch: BatchId) -> Option<u64> {
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
            .iter()
            .find(|s| {
                s.epoch == epoch
                    && s.base_sequence == base_sequence
                    && s.record_count == record_count
            })
            .map(|s| s.base_offset)
    }

    /// Remembers a stored batch, forgetting the oldest past [`WINDOW`].
    pub fn stored(&self, topic: &str, partition: u32, batch: BatchId, base_offset: u64) {
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
        let window = windows
            .entry((topic.to_string(), partition, producer_id))
            .or_default();
        window.push_back(Seen {
            epoch,
            base_sequence,
            record_count,
            base_offset,
        });
        while window.len() > WINDOW {
            window.pop_front();
        }
    }

    /// Forgets every window of a deleted topic.
    pub fn forget_topic(&self, topic: &str) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows.retain(|(t, _, _), _| t != topic);
    }
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

    #[test]
    fn a_retried_batch_is_found_until_five_newer_ones_pass() {
        let w = Windows::default();
        w.stored("t", 0, id(7, 0, 0, 3), 100);
        assert_eq!(w.duplicate_of("t", 0, id(7, 0, 0, 3)), Some(100));
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
            w.stored("t", 0, id(7, 0, i * 3, 3), 100 + i as u64 * 3);
        }
        assert_eq!(
            w.duplicate_of("t", 0, id(7, 0, 0, 3)),
            None,
            "out of the window"
        );
        assert_eq!(w.duplicate_of("t", 0, id(7, 0, 15, 3)), Some(115));
        w.forget_topic("t");
        assert_eq!(w.duplicate_of("t", 0, id(7, 0, 15, 3)), None);
    }

    #[test]
    fn producer_ids_are_unique_and_start_past_an_earlier_run() {
        let first = ProducerIds::starting_at_unix_ms(1_000);
        let a = first.next();
        let b = first.next();
        assert_ne!(a, b);
        let later = ProducerIds::starting_at_unix_ms(1_001);
        assert!(later.next() > b);
    }
}
