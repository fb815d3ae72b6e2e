//! Broker probes: per-shard counters and HDR histograms, kept next to the code they measure.
//!
//! Each shard owns a [`ShardProbe`] and updates it with plain `Cell`/`RefCell` writes: no
//! atomics and no cache line shared with another core on the hot path. Readers (`ringmq stats`,
//! the Prometheus endpoint) ask every shard for a [`ProbeSnapshot`] over the mesh, then merge
//! or label them. Names follow Prometheus conventions: base units in the name, `_total` for
//! counters.

pub mod http;
pub mod prometheus;

use hdrhistogram::Histogram;
use std::cell::{Cell, RefCell};
use std::time::Duration;

/// Histograms track 1 µs to 1 hour with two significant digits (1% resolution): about 15 KiB
/// each, so a shard's probe stays small.
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;
const HISTOGRAM_SIGNIFICANT_DIGITS: u8 = 2;
/// Batch sizes up to 16 GiB of bytes or 16 G records.
const HISTOGRAM_MAX_COUNT: u64 = 1 << 34;

/// Counters, in the order they are reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counter {
    ProduceRequests,
    MessagesAppended,
    BytesAppended,
    PullRequests,
    MessagesPulled,
    Flushes,
    FlushErrors,
    ForwardedRequests,
    ConnectionsAccepted,
    BytesIn,
    BytesOut,
    ReplicationShippedBytes,
    ReplicationSplicedBytes,
    ReplicationCopiedBytes,
    ReplicationReceivedBytes,
    ReplicationMetadataErrors,
    RetentionDeletedSegments,
    RetentionReclaimedBytes,
    NamesrvRegisterRefused,
    ReplicationHandshakesRefused,
    ProduceAcksNone,
    ProduceAcksLeader,
    ProduceAcksAll,
    ProduceAcksRaised,
    ProduceAcksNoneErrors,
    AuthorizationRefused,
    AuditLinesDropped,
    AuthenticationFailures,
}

impl Counter {
    pub const ALL: [Counter; 28] = [
        Counter::ProduceRequests,
        Counter::MessagesAppended,
        Counter::BytesAppended,
        Counter::PullRequests,
        Counter::MessagesPulled,
        Counter::Flushes,
        Counter::FlushErrors,
        Counter::ForwardedRequests,
        Counter::ConnectionsAccepted,
        Counter::BytesIn,
        Counter::BytesOut,
        Counter::ReplicationShippedBytes,
        Counter::ReplicationSplicedBytes,
        Counter::ReplicationCopiedBytes,
        Counter::ReplicationReceivedBytes,
        Counter::ReplicationMetadataErrors,
        Counter::RetentionDeletedSegments,
        Counter::RetentionReclaimedBytes,
        Counter::NamesrvRegisterRefused,
        Counter::ReplicationHandshakesRefused,
        Counter::ProduceAcksNone,
        Counter::ProduceAcksLeader,
        Counter::ProduceAcksAll,
        Counter::ProduceAcksRaised,
        Counter::ProduceAcksNoneErrors,
        Counter::AuthorizationRefused,
        Counter::AuditLinesDropped,
        Counter::AuthenticationFailures,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Counter::ProduceRequests => "produce_requests_total",
            Counter::MessagesAppended => "messages_appended_total",
            Counter::BytesAppended => "appended_bytes_total",
            Counter::PullRequests => "pull_requests_total",
            Counter::MessagesPulled => "messages_pulled_total",
            Counter::Flushes => "flushes_total",
            Counter::FlushErrors => "flush_errors_total",
            Counter::ForwardedRequests => "forwarded_requests_total",
            Counter::ConnectionsAccepted => "connections_accepted_total",
            Counter::BytesIn => "received_bytes_total",
            Counter::BytesOut => "sent_bytes_total",
            Counter::ReplicationShippedBytes => "replication_shipped_bytes_total",
            Counter::ReplicationSplicedBytes => "replication_spliced_bytes_total",
            Counter::ReplicationCopiedBytes => "replication_copied_bytes_total",
            Counter::ReplicationReceivedBytes => "replication_received_bytes_total",
            Counter::ReplicationMetadataErrors => "replication_metadata_errors_total",
            Counter::RetentionDeletedSegments => "retention_deleted_segments_total",
            Counter::RetentionReclaimedBytes => "retention_reclaimed_bytes_total",
            Counter::NamesrvRegisterRefused => "namesrv_register_refused_total",
            Counter::ReplicationHandshakesRefused => "replication_handshakes_refused_total",
            Counter::ProduceAcksNone => "produce_acks_none_total",
            Counter::ProduceAcksLeader => "produce_acks_leader_total",
            Counter::ProduceAcksAll => "produce_acks_all_total",
            Counter::ProduceAcksRaised => "produce_acks_raised_total",
            Counter::ProduceAcksNoneErrors => "produce_acks_none_errors_total",
            Counter::AuthorizationRefused => "authorization_refused_total",
            Counter::AuditLinesDropped => "audit_lines_dropped_total",
            Counter::AuthenticationFailures => "authentication_failures_total",
        }
    }
    pub fn help(self) -> &'static str {
        match self {
            Counter::ProduceRequests => "Produce requests handled by the owning shard.",
            Counter::MessagesAppended => "Messages appended to the commitlog.",
            Counter::BytesAppended => "Encoded record bytes appended to the commitlog.",
            Counter::PullRequests => "Pull requests answered by the owning shard.",
            Counter::MessagesPulled => "Messages returned to consumers.",
            Counter::Flushes => "Commitlog flushes (write + fdatasync) completed.",
            Counter::FlushErrors => "Commitlog flushes that failed.",
            Counter::ForwardedRequests => "Requests sent to the shard that owns their queue.",
            Counter::ConnectionsAccepted => "Client connections accepted.",
            Counter::BytesIn => "Bytes received from clients.",
            Counter::BytesOut => "Bytes sent to clients.",
            Counter::ReplicationShippedBytes => "Commitlog bytes a master shipped to slaves.",
            Counter::ReplicationSplicedBytes => {
                "Shipped bytes that went file to socket by splice, never through user space."
            }
            Counter::ReplicationCopiedBytes => {
                "Shipped bytes the master copied in user space (goal: 0)."
            }
            Counter::ReplicationReceivedBytes => "Commitlog bytes a slave received.",
            Counter::ReplicationMetadataErrors => {
                "Metadata frames a slave could not apply or a master would not send (log keeps flowing)."
            }
            Counter::RetentionDeletedSegments => {
                "Commitlog segments deleted by retention (age or disk pressure)."
            }
            Counter::RetentionReclaimedBytes => "Bytes of commitlog segments retention deleted.",
            Counter::NamesrvRegisterRefused => {
                "Registrations a name server answered by refusing this broker's master claim."
            }
            Counter::ReplicationHandshakesRefused => {
                "Replication handshakes refused: a peer that failed or skipped authentication, or a slave the master would not serve."
            }
            Counter::ProduceAcksNone => {
                "Client produce requests run at level none (appended, never answered)."
            }
            Counter::ProduceAcksLeader => {
                "Client produce requests run at level leader (the master's guarantee only)."
            }
            Counter::ProduceAcksAll => {
                "Client produce requests run at level all (the master's and the slaves')."
            }
            Counter::ProduceAcksRaised => {
                "Client produce requests whose level min_acks raised to its floor."
            }
            Counter::ProduceAcksNoneErrors => {
                "Level none produce requests not answered OK (refused, failed, or stored without their guarantee in time); no response tells their sender."
            }
            Counter::AuthorizationRefused => {
                "Requests refused NOT_AUTHORIZED by the ACLs (authorization = \"acl\")."
            }
            Counter::AuditLinesDropped => {
                "Audit log lines dropped because the audit writer's queue was full (each drop is also logged)."
            }
            Counter::AuthenticationFailures => {
                "SCRAM authentication steps refused (unknown user, wrong password, broken exchange)."
            }
        }
    }
}

/// Histograms, in the order they are reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hist {
    AppendLatency,
    ProduceLatency,
    FlushWriteLatency,
    FdatasyncLatency,
    FlushBatchRecords,
    FlushBatchBytes,
    PullLatency,
}

/// How a histogram's values are scaled for Prometheus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Microseconds,
    Records,
    Bytes,
}

impl Hist {
    pub const ALL: [Hist; 7] = [
        Hist::AppendLatency,
        Hist::ProduceLatency,
        Hist::FlushWriteLatency,
        Hist::FdatasyncLatency,
        Hist::FlushBatchRecords,
        Hist::FlushBatchBytes,
        Hist::PullLatency,
    ];
    /// Name as `ringmq stats` shows it (values as recorded).
    pub fn name(self) -> &'static str {
        match self {
            Hist::AppendLatency => "append_latency_us",
            Hist::ProduceLatency => "produce_latency_us",
            Hist::FlushWriteLatency => "flush_write_latency_us",
            Hist::FdatasyncLatency => "fdatasync_latency_us",
            Hist::FlushBatchRecords => "flush_batch_records",
            Hist::FlushBatchBytes => "flush_batch_bytes",
            Hist::PullLatency => "pull_latency_us",
        }
    }
    pub fn unit(self) -> Unit {
        match self {
            Hist::FlushBatchRecords => Unit::Records,
            Hist::FlushBatchBytes => Unit::Bytes,
            _ => Unit::Microseconds,
        }
    }
    pub fn help(self) -> &'static str {
        match self {
            Hist::AppendLatency => "Time to append one produce batch to the write buffer.",
            Hist::ProduceLatency => {
                "Time from a produce request reaching its shard to its reply (includes the flush wait)."
            }
            Hist::FlushWriteLatency => "Time of the O_DIRECT write of one flush.",
            Hist::FdatasyncLatency => "Time of the fdatasync of one flush.",
            Hist::FlushBatchRecords => "Records made durable by one flush (group-commit batch).",
            Hist::FlushBatchBytes => "Commitlog bytes made durable by one flush.",
            Hist::PullLatency => "Time to read and encode the messages of one pull (no wait).",
        }
    }
    fn new_histogram(self) -> Histogram<u64> {
        let max = match self.unit() {
            Unit::Microseconds => HISTOGRAM_MAX_US,
            Unit::Records | Unit::Bytes => HISTOGRAM_MAX_COUNT,
        };
        Histogram::new_with_bounds(1, max, HISTOGRAM_SIGNIFICANT_DIGITS).expect("valid bounds")
    }
}

/// One shard's probe. Every method is a cheap local write.
pub struct ShardProbe {
    counters: [Cell<u64>; Counter::ALL.len()],
    histograms: Vec<RefCell<Histogram<u64>>>,
    /// Messages appended since the last flush: the next flush's batch size in records.
    records_since_flush: Cell<u64>,
}

impl Default for ShardProbe {
    fn default() -> Self {
        ShardProbe {
            counters: Default::default(),
            histograms: Hist::ALL
                .iter()
                .map(|h| RefCell::new(h.new_histogram()))
                .collect(),
            records_since_flush: Cell::new(0),
        }
    }
}

impl ShardProbe {
    pub fn add(&self, counter: Counter, n: u64) {
        let c = &self.counters[counter as usize];
        c.set(c.get().wrapping_add(n));
    }

    /// One counter's value, without a snapshot of them all.
    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters[counter as usize].get()
    }

    pub fn record(&self, hist: Hist, value: u64) {
        self.histograms[hist as usize]
            .borrow_mut()
            .saturating_record(value.max(1));
    }

    pub fn record_duration(&self, hist: Hist, d: Duration) {
        self.record(hist, d.as_micros().min(u64::MAX as u128) as u64);
    }

    pub fn appended(&self, messages: u64, bytes: u64) {
        self.add(Counter::MessagesAppended, messages);
        self.add(Counter::BytesAppended, bytes);
        self.records_since_flush
            .set(self.records_since_flush.get() + messages);
    }

    /// Records one completed flush. Records appended while it ran belong to the next one, so
    /// the batch size in records is approximate by at most one flush's worth of appends.
    pub fn flushed(&self, bytes: u64, write: Duration, sync: Duration) {
        self.add(Counter::Flushes, 1);
        self.record(Hist::FlushBatchBytes, bytes);
        self.record(Hist::FlushBatchRecords, self.records_since_flush.replace(0));
        self.record_duration(Hist::FlushWriteLatency, write);
        self.record_duration(Hist::FdatasyncLatency, sync);
    }

    pub fn snapshot(&self, shard: usize, gauges: Vec<(&'static str, u64)>) -> ProbeSnapshot {
        ProbeSnapshot {
            shards: vec![shard],
            counters: Counter::ALL
                .iter()
                .map(|c| (*c, self.counters[*c as usize].get()))
                .collect(),
            gauges,
            histograms: Hist::ALL
                .iter()
                .map(|h| (*h, self.histograms[*h as usize].borrow().clone()))
                .collect(),
        }
    }
}

/// A copy of one or more shards' probes, sent between cores.
#[derive(Clone, Debug)]
pub struct ProbeSnapshot {
    pub shards: Vec<usize>,
    pub counters: Vec<(Counter, u64)>,
    /// Point-in-time values such as pending completions; summed when merged, except the
    /// [`is_max_gauge`] ones.
    pub gauges: Vec<(&'static str, u64)>,
    pub histograms: Vec<(Hist, Histogram<u64>)>,
}

/// Gauges that describe something the shards share or a state any one of them is in (the
/// store's file system, appends refused, the controllers' view of the broker): merged by taking the largest, since a sum of the
/// same disk's use seen by every shard means nothing.
pub fn is_max_gauge(name: &str) -> bool {
    name.starts_with("disk_")
        || name.starts_with("controller_")
        || name == "retention_appends_refused"
}

impl ProbeSnapshot {
    /// Sums counters and gauges and adds histograms.
    pub fn merge(snapshots: &[ProbeSnapshot]) -> Option<ProbeSnapshot> {
        let mut merged = snapshots.first()?.clone();
        for other in &snapshots[1..] {
            merged.shards.extend(&other.shards);
            for ((_, a), (_, b)) in merged.counters.iter_mut().zip(&other.counters) {
                *a = a.wrapping_add(*b);
            }
            for ((name, a), (_, b)) in merged.gauges.iter_mut().zip(&other.gauges) {
                if is_max_gauge(name) {
                    *a = (*a).max(*b);
                } else {
                    *a += *b;
                }
            }
            for ((_, a), (_, b)) in merged.histograms.iter_mut().zip(&other.histograms) {
                a.add(b).expect("histograms share bounds");
            }
        }
        merged.shards.sort_unstable();
        Some(merged)
    }

    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters
            .iter()
            .find(|(c, _)| *c == counter)
            .map(|(_, v)| *v)
            .unwrap_or(0)
    }

    pub fn histogram(&self, hist: Hist) -> &Histogram<u64> {
        &self
            .histograms
            .iter()
            .find(|(h, _)| *h == hist)
            .expect("every histogram is in a snapshot")
            .1
    }

    /// The `ringmq stats` document.
    pub fn to_stats(&self) -> Stats {
        Stats {
            shards: self.shards.clone(),
            counters: self
                .counters
                .iter()
                .map(|(c, v)| (c.name().to_string(), *v))
                .collect(),
            gauges: self
                .gauges
                .iter()
                .map(|(n, v)| (n.to_string(), *v))
                .collect(),
            histograms: self
                .histograms
                .iter()
                .map(|(h, hist)| (h.name().to_string(), summarize(hist)))
                .collect(),
        }
    }
}

pub use crate::protocol::admin::{HistogramSummary, Stats};

/// Summarizes a histogram for the `Stats` document.
pub fn summarize(h: &Histogram<u64>) -> HistogramSummary {
    let empty = h.is_empty();
    let q = |p: f64| if empty { 0 } else { h.value_at_quantile(p) };
    HistogramSummary {
        count: h.len(),
        min: if empty { 0 } else { h.min() },
        mean: if empty { 0.0 } else { h.mean() },
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        p999: q(0.999),
        max: if empty { 0 } else { h.max() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counters_gauges_and_histograms() {
        let a = ShardProbe::default();
        let b = ShardProbe::default();
        a.add(Counter::ProduceRequests, 3);
        b.add(Counter::ProduceRequests, 4);
        for v in 1..=100 {
            a.record(Hist::FdatasyncLatency, v);
        }
        b.record(Hist::FdatasyncLatency, 10_000);
        a.appended(5, 500);
        a.flushed(500, Duration::from_micros(20), Duration::from_micros(90));
        let gauges = |pending, disk, refused| {
            vec![
                ("pending_completions", pending),
                ("disk_used_ratio_ppm", disk),
                ("retention_appends_refused", refused),
            ]
        };
        let merged = ProbeSnapshot::merge(&[
            a.snapshot(0, gauges(2, 400_000, 0)),
            b.snapshot(1, gauges(5, 410_000, 1)),
        ])
        .unwrap();
        assert_eq!(merged.shards, vec![0, 1]);
        assert_eq!(merged.counter(Counter::ProduceRequests), 7);
        assert_eq!(merged.counter(Counter::Flushes), 1);
        // Shards share the disk: its use and the refusal are the worst shard's, not a sum.
        assert_eq!(merged.gauges, gauges(7, 410_000, 1));
        let sync = merged.histogram(Hist::FdatasyncLatency);
        assert_eq!(sync.len(), 102);
        assert!(sync.max() >= 9_900, "max {}", sync.max());
        let stats = merged.to_stats();
        assert_eq!(stats.histograms["flush_batch_records"].max, 5);
        assert_eq!(stats.histograms["flush_batch_bytes"].count, 1);
        let p50 = stats.histograms["fdatasync_latency_us"].p50;
        assert!((50..=52).contains(&p50), "p50 {p50}");
        let json = serde_json::to_string(&stats).unwrap();
        let back: Stats = serde_json::from_str(&json).unwrap();
        assert_eq!(back, stats);
    }
}
