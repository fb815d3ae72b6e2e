//! Unit tests of the bench's arithmetic and file formats, on known data.

use super::histogram::{
    new_latency_histogram, record_latency, write_interval_log, write_percentile_distribution,
    IntervalSeries, Percentiles,
};
use super::mode::BenchMode;
use super::plot::percentile_label;
use super::report::{kafka_line, ratio_table, ratios};
use super::run::RunSummary;
use super::workload::{intended_latency, share, Pacer};
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn histogram_of(values: &[u64]) -> Histogram<u64> {
    let mut h = new_latency_histogram();
    for &v in values {
        h.record(v).unwrap();
    }
    h
}

#[test]
fn percentiles_of_one_to_a_hundred() {
    let values: Vec<u64> = (1..=100).collect();
    let p = Percentiles::of(&histogram_of(&values));
    assert_eq!(p.count, 100);
    assert!((p.mean_us - 50.5).abs() < 1e-9);
    // The p-th percentile is the smallest value with at least p% of the values at or below it.
    assert_eq!(p.p50_us, 50);
    assert_eq!(p.p90_us, 90);
    assert_eq!(p.p95_us, 95);
    assert_eq!(p.p99_us, 99);
    assert_eq!(p.p99_9_us, 100);
    assert_eq!(p.p99_99_us, 100);
    assert_eq!(p.max_us, 100);
}

#[test]
fn percentiles_with_a_tail_above_the_exact_range() {
    // 990 × 100 µs and 10 × 5000 µs. Above 4096 µs, 3 significant digits means buckets of
    // 4 µs: 5000 is reported as the top of [5000, 5003].
    let mut values = vec![100; 990];
    values.extend([5000; 10]);
    let p = Percentiles::of(&histogram_of(&values));
    assert_eq!(p.p50_us, 100);
    assert_eq!(p.p99_us, 100);
    assert_eq!(p.p99_9_us, 5003);
    assert_eq!(p.max_us, 5003);
    assert!((p.mean_us - 148.98).abs() < 0.1, "mean {}", p.mean_us);
}

#[test]
fn empty_histogram_has_zero_percentiles() {
    assert_eq!(
        Percentiles::of(&new_latency_histogram()),
        Percentiles::default()
    );
}

#[test]
fn record_latency_uses_microseconds_and_clamps() {
    let mut h = new_latency_histogram();
    record_latency(&mut h, Duration::from_micros(250), 3);
    record_latency(&mut h, Duration::from_nanos(10), 1);
    record_latency(&mut h, Duration::from_secs(10_000), 1);
    assert_eq!(h.len(), 5);
    assert_eq!(h.count_at(250), 3);
    assert_eq!(h.min(), 1);
    assert!(h.max() >= super::histogram::LATENCY_MAX_US);
}

#[test]
fn hgrm_has_java_layout_and_matches_the_histogram() {
    let mut values: Vec<u64> = (1..=1000).collect();
    values.extend([7000, 7000, 12_345]);
    let h = histogram_of(&values);
    let mut out = Vec::new();
    write_percentile_distribution(&h, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "       Value     Percentile TotalCount 1/(1-Percentile)"
    );
    assert_eq!(lines[1], "");
    let footer_at = lines.iter().position(|l| l.starts_with("#[")).unwrap();
    let data = &lines[2..footer_at];
    assert!(data.len() > 20);
    let mut previous_total = 0;
    for (index, line) in data.iter().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let last = index == data.len() - 1;
        assert_eq!(line.len(), if last { 38 } else { 53 }, "line `{line}`");
        assert_eq!(fields.len(), if last { 3 } else { 4 }, "line `{line}`");
        let value: f64 = fields[0].parse().unwrap();
        let percentile: f64 = fields[1].parse().unwrap();
        let total: u64 = fields[2].parse().unwrap();
        assert_eq!(fields[0].split('.').nth(1).unwrap().len(), 3);
        assert_eq!(fields[1].split('.').nth(1).unwrap().len(), 12);
        // The cumulative count is exactly the count of values at or below the line's value.
        assert_eq!(total, h.count_between(0, value as u64), "line `{line}`");
        assert!(total >= previous_total);
        previous_total = total;
        if last {
            assert_eq!(percentile, 1.0);
            assert_eq!(value as u64, h.max());
            assert_eq!(total, h.len());
        } else {
            let inverse: f64 = fields[3].parse().unwrap();
            assert!((inverse - 1.0 / (1.0 - percentile)).abs() < 0.01);
        }
    }
    assert_eq!(
        lines[footer_at],
        format!(
            "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
            h.mean(),
            h.stdev()
        )
    );
    assert_eq!(
        lines[footer_at + 1],
        format!(
            "#[Max     = {:12.3}, Total count    = {:12}]",
            h.max() as f64,
            1003
        )
    );
    assert_eq!(
        lines[footer_at + 2],
        format!(
            "#[Buckets = {:12}, SubBuckets     = {:12}]",
            h.buckets(),
            2048
        )
    );
}

#[test]
fn hlog_reads_back_to_the_same_histograms() {
    let produce = vec![
        histogram_of(&[10, 20, 30]),
        histogram_of(&[]),
        histogram_of(&[5000, 7, 7, 7]),
    ];
    let e2e = vec![histogram_of(&[100, 200]), histogram_of(&[300])];
    let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut out = Vec::new();
    write_interval_log(
        &mut out,
        start,
        "test",
        &[
            IntervalSeries {
                tag: "produce",
                intervals: &produce,
            },
            IntervalSeries {
                tag: "e2e",
                intervals: &e2e,
            },
        ],
    )
    .unwrap();
    let mut read_produce = Vec::new();
    let mut read_e2e = Vec::new();
    let mut start_time = None;
    let mut deserializer = Deserializer::new();
    for entry in IntervalLogIterator::new(&out) {
        match entry.unwrap() {
            LogEntry::StartTime(t) => start_time = Some(t),
            LogEntry::Interval(interval) => {
                let bytes = base64_decode(interval.encoded_histogram());
                let h: Histogram<u64> = deserializer.deserialize(&mut &bytes[..]).unwrap();
                let second = interval.start_timestamp().as_secs() as usize;
                match interval.tag().map(|t| t.as_str()) {
                    Some("produce") => read_produce.push((second, h)),
                    Some("e2e") => read_e2e.push((second, h)),
                    other => panic!("unexpected tag {other:?}"),
                }
            }
            _ => {}
        }
    }
    assert_eq!(start_time, Some(Duration::from_secs(1_700_000_000)));
    assert_eq!(read_produce.len(), 3);
    assert_eq!(read_e2e.len(), 2);
    for (second, h) in &read_produce {
        assert_eq!(h.len(), produce[*second].len());
        assert_eq!(h, &produce[*second]);
    }
    for (second, h) in &read_e2e {
        assert_eq!(h, &e2e[*second]);
    }
    let total: u64 = read_produce.iter().map(|(_, h)| h.len()).sum();
    assert_eq!(total, 7);
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

/// One closed-loop sender (window 1) paced at 1000 msg/s; each request takes 100 µs except
/// request 100, which stalls for 200 ms. Returns (intended-time latencies, send-time latencies).
fn simulate_stall(pacer: Pacer) -> (Histogram<u64>, Histogram<u64>) {
    let mut corrected = new_latency_histogram();
    let mut naive = new_latency_histogram();
    let mut now = Duration::ZERO;
    for index in 0..1000u64 {
        let intended = pacer.due(index, now);
        let sent = intended.max(now);
        let service = if index == 100 {
            Duration::from_millis(200)
        } else {
            Duration::from_micros(100)
        };
        let acked = sent + service;
        record_latency(&mut corrected, intended_latency(intended, acked), 1);
        record_latency(&mut naive, acked - sent, 1);
        now = acked;
    }
    (corrected, naive)
}

#[test]
fn open_loop_counts_the_stall_against_every_message_due_during_it() {
    let (corrected, naive) = simulate_stall(Pacer::open_loop(1000.0, 1));
    // Sending per send time, the stall is one slow message out of 1000.
    assert_eq!(naive.count_between(100_000, u64::MAX), 1);
    // Per intended time, message 101 (due at 101 ms, sent at 300 ms) waited 199.1 ms, and each
    // later one 0.9 ms less while the sender catches up at 10 per ms: messages 100..=211 all
    // exceed 100 ms.
    assert_eq!(corrected.count_between(100_000, u64::MAX), 112);
    let p = Percentiles::of(&corrected);
    assert!(p.p90_us > 50_000, "p90 {} µs", p.p90_us);
    assert!(Percentiles::of(&naive).p90_us <= 100);
    // Message 101's latency is the full wait from its due time.
    assert!(corrected.count_between(199_000, 199_200) >= 1);
}

#[test]
fn closed_loop_is_due_immediately() {
    let pacer = Pacer::closed_loop();
    let now = Duration::from_millis(1234);
    assert_eq!(pacer.due(99, now), now);
    let (corrected, naive) = simulate_stall(pacer);
    assert_eq!(corrected, naive);
}

#[test]
fn open_loop_schedule_spreads_batches() {
    let pacer = Pacer::open_loop(1000.0, 10);
    assert_eq!(pacer.due(0, Duration::ZERO), Duration::ZERO);
    assert_eq!(pacer.due(3, Duration::ZERO), Duration::from_millis(30));
}

#[test]
fn shares_split_a_total_exactly() {
    let parts: Vec<u64> = (0..3).map(|i| share(10, 3, i)).collect();
    assert_eq!(parts, [4, 3, 3]);
    assert_eq!((0..7).map(|i| share(200, 7, i)).sum::<u64>(), 200);
}

fn summary(mode: BenchMode, producers: u32, rate: f64, p99_us: u64) -> RunSummary {
    RunSummary {
        mode,
        producers,
        name: super::run::run_name(mode, producers),
        messages: (rate * 10.0) as u64,
        seconds: 10.0,
        messages_per_sec: rate,
        mib_per_sec: rate / 1024.0,
        stored_without_guarantee: 0,
        failed_messages: 0,
        first_failure: None,
        consumed_messages: 0,
        produce_latency: Percentiles {
            count: 10,
            mean_us: 1500.0,
            p50_us: 900,
            p95_us: 2100,
            p99_us,
            p99_9_us: 5600,
            max_us: 12_345,
            ..Percentiles::default()
        },
        e2e_latency: Percentiles::default(),
        messages_per_second_series: vec![],
    }
}

#[test]
fn ratio_of_each_sync_mode_to_its_async_twin() {
    let runs = vec![
        summary(BenchMode::SyncFlush, 1, 1000.0, 400),
        summary(BenchMode::SyncFlush, 16, 9000.0, 800),
        summary(BenchMode::AsyncFlush, 1, 2000.0, 100),
        summary(BenchMode::AsyncFlush, 16, 10_000.0, 1000),
        summary(BenchMode::SyncFlush, 64, 5.0, 5),
    ];
    let r = ratios(&runs);
    assert_eq!(r.len(), 2, "p64 has no async twin");
    assert_eq!(
        (r[0].producers, r[0].throughput_ratio, r[0].p99_ratio),
        (1, 0.5, 4.0)
    );
    assert_eq!(
        (r[1].producers, r[1].throughput_ratio, r[1].p99_ratio),
        (16, 0.9, 0.8)
    );
    assert_eq!(r[0].baseline, BenchMode::AsyncFlush);
    let table = ratio_table(&r);
    assert!(table.contains("SYNC_FLUSH / ASYNC_FLUSH"));
    assert!(table.contains("0.500") && table.contains("4.000") && table.contains("0.900"));
}

#[test]
fn kafka_line_has_the_producer_perf_shape() {
    let line = kafka_line(&summary(BenchMode::SyncFlush, 1, 1000.0, 3000));
    assert_eq!(
        line,
        "10000 records sent, 1000.0 records/sec (0.98 MB/sec), 1.50 ms avg latency, \
         12.35 ms max latency, 0 ms 50th, 2 ms 95th, 3 ms 99th, 5 ms 99.9th."
    );
}

#[test]
fn percentile_axis_labels() {
    let labels: Vec<String> = (0..6).map(|x| percentile_label(x as f64)).collect();
    assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]);
}

#[test]
fn modes_parse_and_pair() {
    assert_eq!("sync_flush".parse::<BenchMode>(), Ok(BenchMode::SyncFlush));
    assert_eq!(
        "SYNC_MASTER".parse::<BenchMode>(),
        Ok(BenchMode::SyncMaster)
    );
    assert!("SYNC_SLAVE".parse::<BenchMode>().is_err());
    assert_eq!(
        BenchMode::SyncFlush.async_twin(),
        Some(BenchMode::AsyncFlush)
    );
    assert_eq!(
        BenchMode::SyncMaster.async_twin(),
        Some(BenchMode::AsyncMaster)
    );
    assert_eq!(BenchMode::AsyncMaster.async_twin(), None);
    for mode in [BenchMode::SyncFlush, BenchMode::AsyncFlush] {
        assert_eq!(mode.broker_processes().len(), 1);
    }
    for mode in [BenchMode::SyncMaster, BenchMode::AsyncMaster] {
        let processes = mode.broker_processes();
        assert_eq!(processes.len(), 2, "a master and its slave");
        assert_eq!(processes[0].role, super::mode::BrokerRole::Master);
        assert_eq!(processes[1].broker_role, crate::config::BrokerRole::Slave);
        assert_eq!(processes[0].flush_disk_type, processes[1].flush_disk_type);
    }
    assert_eq!(
        BenchMode::from_metadata("SYNC_MASTER", "ASYNC_FLUSH"),
        Some(BenchMode::SyncMaster)
    );
    assert_eq!(
        BenchMode::from_metadata("ASYNC_MASTER", "SYNC_FLUSH"),
        Some(BenchMode::SyncFlush)
    );
}

#[test]
fn plots_render_png_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let h = histogram_of(&(1..=500).collect::<Vec<_>>());
    let series = [super::plot::Series {
        label: "SYNC_FLUSH-p1".into(),
        histogram: &h,
    }];
    super::plot::latency_by_percentile(dir.path(), "lat", "title", &series).unwrap();
    super::plot::throughput_over_time(dir.path(), "tp", &[("a".into(), vec![1, 5, 3])]).unwrap();
    for file in ["lat.png", "lat.svg", "tp.png", "tp.svg"] {
        let len = std::fs::metadata(dir.path().join(file)).unwrap().len();
        assert!(len > 1000, "{file} is {len} bytes");
    }
    let _ = SystemTime::now();
}

#[test]
fn throughput_chart_leaves_out_the_partial_last_second() {
    use super::matrix::whole_seconds;
    assert_eq!(whole_seconds(&[900, 1000, 980, 12]), &[900, 1000, 980]);
    assert_eq!(whole_seconds(&[40]), &[40]);
    assert!(whole_seconds(&[]).is_empty());
}
