//! `ringmq stats`: the broker's probes, merged across shards.

use super::app::{describe, BrokerArgs, Format};
use super::output::{emit, table};
use crate::metrics::Stats;
use crate::protocol::message::StatsRequest;
use clap::Args;

#[derive(Args, Debug)]
pub struct StatsArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
}

pub fn run(args: StatsArgs) -> Result<(), String> {
    let mut client = args.broker.connect()?;
    // With --namesrv, the master it found, not the unused --broker default.
    let addr = client.bootstrap_addr().to_string();
    let stats = client
        .call(&StatsRequest {})
        .map_err(|e| describe(&addr, &e))?;
    match args.broker.format {
        Format::Json => emit(&serde_json::to_string(&stats).expect("stats serialize")),
        Format::Text => {
            print!("{}", stats_text(&stats));
            Ok(())
        }
    }
}

pub fn stats_text(stats: &Stats) -> String {
    let shards: Vec<String> = stats.shards.iter().map(|s| s.to_string()).collect();
    let mut out = format!("shards {}\n", shards.join(","));
    let gauge = |name: &str| stats.gauges.get(name).copied();
    if let Some(ppm) = gauge("disk_used_ratio_ppm") {
        let refused = gauge("retention_appends_refused").unwrap_or(0) > 0;
        out.push_str(&format!(
            "disk used {:.1}%, appends {}\n",
            ppm as f64 / 1e4,
            if refused {
                "refused (DISK_FULL, above disk_space_warning_ratio)"
            } else {
                "accepted"
            }
        ));
    }
    out.push('\n');
    let values: Vec<Vec<String>> = stats
        .counters
        .iter()
        .chain(&stats.gauges)
        .map(|(name, value)| vec![name.clone(), value.to_string()])
        .collect();
    out.push_str(&table(&["COUNTER", "VALUE"], &values));
    out.push('\n');
    let rows: Vec<Vec<String>> = stats
        .histograms
        .iter()
        .map(|(name, h)| {
            vec![
                name.clone(),
                h.count.to_string(),
                h.p50.to_string(),
                h.p90.to_string(),
                h.p99.to_string(),
                h.p999.to_string(),
                h.max.to_string(),
                format!("{:.1}", h.mean),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "HISTOGRAM",
            "COUNT",
            "P50",
            "P90",
            "P99",
            "P99.9",
            "MAX",
            "MEAN",
        ],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Counter, Hist, ProbeSnapshot, ShardProbe};

    #[test]
    fn text_lists_every_counter_and_histogram_with_percentiles() {
        let probe = ShardProbe::default();
        probe.add(Counter::ProduceRequests, 12);
        for v in [100, 200, 300, 400] {
            probe.record(Hist::FdatasyncLatency, v);
        }
        let stats = ProbeSnapshot::merge(&[probe.snapshot(0, vec![("pending_completions", 3)])])
            .unwrap()
            .to_stats();
        let text = stats_text(&stats);
        assert!(text.contains("produce_requests_total"), "{text}");
        let line = text
            .lines()
            .find(|l| l.starts_with("fdatasync_latency_us"))
            .expect("fdatasync row");
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[1], "4", "count: {line}");
        // Probes keep two significant digits: 400 reads back within 1%.
        let max: u64 = cells[6].parse().unwrap();
        assert!((400..=404).contains(&max), "max: {line}");
        assert!(text.contains("pending_completions"), "{text}");
        assert!(
            !text.contains("disk used"),
            "no disk gauge, no disk line: {text}"
        );
        let with_disk = ProbeSnapshot::merge(&[probe.snapshot(
            0,
            vec![
                ("disk_used_ratio_ppm", 923_000),
                ("retention_appends_refused", 1),
            ],
        )])
        .unwrap()
        .to_stats();
        let text = stats_text(&with_disk);
        assert!(text.contains("disk used 92.3%, appends refused"), "{text}");
        for hist in Hist::ALL {
            assert!(text.contains(hist.name()), "{} missing", hist.name());
        }
    }
}
