//! Prometheus text exposition of per-shard snapshots, one series per shard (label `shard`).
//! Encoding is done by `prometheus-client`; this module only maps our probes onto it: counters
//! as counters, gauges as gauges, HDR histograms as Prometheus histograms in base units
//! (latency in seconds, sizes in bytes and records).

use super::{Counter, Hist, ProbeSnapshot, Unit};
use hdrhistogram::Histogram;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Latency bucket bounds in seconds: 50 µs (a fast fdatasync here) to 10 s.
const LATENCY_BUCKETS_SECONDS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];
/// Group-commit batch bounds: one block to 64 MiB.
const BYTES_BUCKETS: [f64; 9] = [
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
];
const RECORDS_BUCKETS: [f64; 13] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0,
];

fn gauge_help(name: &str) -> &'static str {
    match name {
        "pending_completions" => "Produce requests waiting for a flush or for slaves.",
        "replication_slaves" => "Slaves connected to this master shard.",
        "replication_lag_bytes" => "Bytes the furthest-behind slave lacks.",
        "replication_lag_ms" => "How long the furthest-behind slave has been behind.",
        "disk_used_ratio_ppm" => {
            "Used share of the store's file system in parts per million (retention compares it with disk_max_used_space_ratio and disk_space_warning_ratio)."
        }
        "retention_appends_refused" => {
            "1 while appends are refused with DISK_FULL: disk use is above disk_space_warning_ratio."
        }
        "controller_master_epoch" => {
            "Controller mode: the group's master epoch in the controllers' last answer."
        }
        "controller_is_master" => "Controller mode: 1 while the controllers name this broker master.",
        "controller_sync_state_set_size" => {
            "Controller mode: members of the group's committed SyncStateSet, the master included."
        }
        "controller_sync_state_set_epoch" => {
            "Controller mode: the epoch of the group's committed SyncStateSet."
        }
        "controller_lease_remaining_ms" => {
            "Controller mode: ms left of this master's lease (0: none; it acknowledges nothing)."
        }
        _ => "A point-in-time value.",
    }
}

#[derive(Debug)]
struct SnapshotCollector {
    shards: Vec<ProbeSnapshot>,
}

fn prometheus_name(hist: Hist) -> String {
    match hist.unit() {
        Unit::Microseconds => hist.name().trim_end_matches("_us").to_string() + "_seconds",
        Unit::Records | Unit::Bytes => hist.name().to_string(),
    }
}

/// (per-bucket counts with +Inf last, sum) in the histogram's Prometheus unit.
fn buckets(hist: Hist, h: &Histogram<u64>) -> (Vec<(f64, u64)>, f64) {
    let (bounds, scale): (&[f64], f64) = match hist.unit() {
        Unit::Microseconds => (&LATENCY_BUCKETS_SECONDS, 1e-6),
        Unit::Bytes => (&BYTES_BUCKETS, 1.0),
        Unit::Records => (&RECORDS_BUCKETS, 1.0),
    };
    let mut counts: Vec<(f64, u64)> = bounds.iter().map(|b| (*b, 0)).collect();
    counts.push((f64::INFINITY, 0));
    let mut sum = 0.0;
    for v in h.iter_recorded() {
        let value = h.highest_equivalent(v.value_iterated_to()) as f64 * scale;
        let n = v.count_at_value();
        sum += value * n as f64;
        let slot = counts
            .iter()
            .position(|(bound, _)| value <= *bound)
            .expect("+Inf bucket takes everything");
        counts[slot].1 += n;
    }
    (counts, sum)
}

impl prometheus_client::collector::Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for counter in Counter::ALL {
            let name = counter.name().trim_end_matches("_total");
            let mut family =
                encoder.encode_descriptor(name, counter.help(), None, MetricType::Counter)?;
            for s in &self.shards {
                let labels = [("shard", s.shards[0].to_string())];
                family
                    .encode_family(&labels)?
                    .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                        &s.counter(counter),
                        None,
                    )?;
            }
        }
        let gauge_names: Vec<&'static str> = self
            .shards
            .first()
            .map(|s| s.gauges.iter().map(|(n, _)| *n).collect())
            .unwrap_or_default();
        for name in gauge_names {
            let mut family =
                encoder.encode_descriptor(name, gauge_help(name), None, MetricType::Gauge)?;
            for s in &self.shards {
                let value = s
                    .gauges
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| *v as i64);
                let labels = [("shard", s.shards[0].to_string())];
                family
                    .encode_family(&labels)?
                    .encode_gauge(&value.unwrap_or(0))?;
            }
        }
        for hist in Hist::ALL {
            let name = prometheus_name(hist);
            let mut family =
                encoder.encode_descriptor(&name, hist.help(), None, MetricType::Histogram)?;
            for s in &self.shards {
                let h = s.histogram(hist);
                let (counts, sum) = buckets(hist, h);
                let labels = [("shard", s.shards[0].to_string())];
                family
                    .encode_family(&labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        sum,
                        h.len(),
                        &counts,
                        None,
                    )?;
            }
        }
        Ok(())
    }
}

/// Renders one snapshot per shard as Prometheus text exposition.
pub fn render(shards: Vec<ProbeSnapshot>) -> String {
    let mut registry = Registry::with_prefix("ringmq");
    registry.register_collector(Box::new(SnapshotCollector { shards }));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ShardProbe;
    use std::time::Duration;

    #[test]
    fn exposition_has_types_units_labels_and_cumulative_buckets() {
        let a = ShardProbe::default();
        a.add(Counter::ProduceRequests, 3);
        a.appended(4, 4096);
        a.flushed(4096, Duration::from_micros(30), Duration::from_micros(120));
        a.flushed(8192, Duration::from_micros(30), Duration::from_micros(3000));
        let b = ShardProbe::default();
        b.add(Counter::ProduceRequests, 5);
        let text = render(vec![
            a.snapshot(0, vec![("pending_completions", 1)]),
            b.snapshot(1, vec![("pending_completions", 0)]),
        ]);
        assert!(
            text.contains("# TYPE ringmq_produce_requests counter"),
            "{text}"
        );
        assert!(
            text.contains("ringmq_produce_requests_total{shard=\"0\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("ringmq_produce_requests_total{shard=\"1\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE ringmq_pending_completions gauge"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE ringmq_fdatasync_latency_seconds histogram"),
            "{text}"
        );
        // 120 µs falls in the 250 µs bucket, 3 ms in the 5 ms one; buckets are cumulative.
        assert!(
            text.contains("ringmq_fdatasync_latency_seconds_bucket{le=\"0.0001\",shard=\"0\"} 0")
                || text.contains(
                    "ringmq_fdatasync_latency_seconds_bucket{shard=\"0\",le=\"0.0001\"} 0"
                ),
            "{text}"
        );
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("ringmq_fdatasync_latency_seconds_bucket")
                    && l.contains("\"0.00025\"")
                    && l.contains("shard=\"0\"")
            })
            .expect("0.00025 bucket");
        assert!(line.ends_with(" 1"), "{line}");
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("ringmq_fdatasync_latency_seconds_bucket")
                    && l.contains("\"0.005\"")
                    && l.contains("shard=\"0\"")
            })
            .expect("0.005 bucket");
        assert!(line.ends_with(" 2"), "{line}");
        assert!(
            text.contains("ringmq_fdatasync_latency_seconds_count{shard=\"0\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("ringmq_flush_batch_records_count{shard=\"0\"} 2"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
