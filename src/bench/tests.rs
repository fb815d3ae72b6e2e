//! Unit tests of the bench's arithmetic and file formats, on known data.

use super::histogram::{
    new_latency_histogram, record_latency, write_interval_log, write_percentile_distribution,
    IntervalSeries, Percentiles,
};
use super::mode::BenchMode;
use super::plot::percentile_label;
use super::report::{kafka_line, ratio_table, ratios};
use super::run::RunSummary;
use super::workload::{intended_latency, share, Driver, Pacer, Workload};
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
fn open_loop_producers_are_staggered_over_one_interval() {
    // Four producers at 250 requests/s each (an interval of 4 ms): together one request every
    // millisecond, not four at once every 4 ms.
    let due: Vec<Duration> = (0..4)
        .map(|i| {
            Pacer::open_loop(250.0, 1)
                .staggered(i, 4)
                .due(2, Duration::ZERO)
        })
        .collect();
    let ms = Duration::from_millis;
    assert_eq!(due, vec![ms(8), ms(9), ms(10), ms(11)]);
    // A closed loop has no schedule to stagger.
    let closed = Pacer::closed_loop().staggered(3, 4);
    assert_eq!(closed.due(5, ms(7)), ms(7));
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
        acks: None,
        protocol: super::mode::Protocol::Native,
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
        driver: "event-loop/1".into(),
        cpu: super::cpu::CpuUse::default(),
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

/// `--acks leader,all`: each level is its own row, sync/async twins pair only at the same
/// level, and each mode's `all` run is divided by its `leader` run.
#[test]
fn acks_levels_are_rows_and_all_is_divided_by_leader() {
    use crate::protocol::Acks;
    let at = |mode, acks, rate, p99| RunSummary {
        acks: Some(acks),
        name: super::run::run_name_at(mode, Some(acks), super::mode::Protocol::Native, 1),
        ..summary(mode, 1, rate, p99)
    };
    let runs = vec![
        at(BenchMode::SyncMaster, Acks::Leader, 1000.0, 200),
        at(BenchMode::SyncMaster, Acks::All, 600.0, 500),
        at(BenchMode::AsyncMaster, Acks::All, 800.0, 400),
    ];
    assert_eq!(runs[1].name, "SYNC_MASTER-all-p1");
    let twins = ratios(&runs);
    assert_eq!(
        twins.len(),
        1,
        "only SYNC_MASTER/all has its twin at the same level"
    );
    assert_eq!(twins[0].throughput_ratio, 0.75);
    let acks = super::report::acks_ratios(&runs);
    assert_eq!(acks.len(), 1, "ASYNC_MASTER ran no leader row");
    assert_eq!(
        (acks[0].mode, acks[0].throughput_ratio, acks[0].p99_ratio),
        (BenchMode::SyncMaster, 0.6, 2.5)
    );
    let table = super::report::acks_ratio_table(&acks);
    assert!(table.contains("SYNC_MASTER all / leader") && table.contains("0.600"));
    assert!(super::report::matrix_table(&runs).contains("SYNC_MASTER/leader"));
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
    assert_eq!(
        "sync_master_x2".parse::<BenchMode>(),
        Ok(BenchMode::SyncMasterTwoGroups)
    );
    assert_eq!(
        BenchMode::SyncMasterTwoGroups.async_twin(),
        Some(BenchMode::SyncMaster),
        "two groups are measured against one group of the same total shards"
    );
    assert_eq!(BenchMode::SyncMasterTwoGroups.groups(), 2);
    assert_eq!(
        BenchMode::SyncMasterTwoGroups.broker_processes(),
        BenchMode::SyncMaster.broker_processes(),
        "each group is what the one-group run starts"
    );
    assert!(
        !BenchMode::ALL.contains(&BenchMode::SyncMasterTwoGroups),
        "the five-process run is asked for by name"
    );
    assert_eq!("controller".parse::<BenchMode>(), Ok(BenchMode::Controller));
    assert_eq!(
        BenchMode::Controller.async_twin(),
        Some(BenchMode::SyncMaster),
        "controller mode is measured against SYNC_MASTER with the same one slave"
    );
    assert_eq!(
        BenchMode::Controller.broker_processes(),
        BenchMode::SyncMaster.broker_processes()
    );
    assert!(BenchMode::Controller.controlled());
    assert!(BenchMode::KNOWN
        .iter()
        .all(|m| m.controlled() == (*m == BenchMode::Controller)));
    assert!(!BenchMode::ALL.contains(&BenchMode::Controller));
    for mode in BenchMode::ALL {
        assert_eq!(mode.groups(), 1);
    }
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
    use super::plot::{LatencyAxis, RatioSeries};
    super::plot::latency_by_percentile(dir.path(), "lat", "title", &series, LatencyAxis::Linear)
        .unwrap();
    super::plot::latency_by_percentile(dir.path(), "log", "title", &series, LatencyAxis::Log)
        .unwrap();
    super::plot::throughput_over_time(dir.path(), "tp", &[("a".into(), vec![1, 5, 3])]).unwrap();
    let ratios = [RatioSeries {
        label: "SYNC_FLUSH / ASYNC_FLUSH msg/s".into(),
        points: vec![(1, 0.5), (64, f64::NAN)],
    }];
    super::plot::ratios_by_producers(dir.path(), "ratio", &ratios).unwrap();
    let files = [
        "lat.png",
        "lat.svg",
        "log.png",
        "log.svg",
        "tp.png",
        "tp.svg",
        "ratio.png",
    ];
    for file in files {
        let len = std::fs::metadata(dir.path().join(file)).unwrap().len();
        assert!(len > 1000, "{file} is {len} bytes");
    }
    let _ = SystemTime::now();
}

#[test]
fn forty_series_all_look_different() {
    let styles: Vec<_> = (0..40).map(super::plot::series_style).collect();
    for (i, a) in styles.iter().enumerate() {
        for b in &styles[i + 1..] {
            assert_ne!(a, b);
        }
    }
    // Beyond ten series the colour repeats but the dash pattern does not.
    assert_eq!(styles[0].0, styles[10].0);
    assert_ne!(styles[0].1, styles[10].1);
}

#[test]
fn ratio_chart_series_follow_the_ratio_table() {
    let runs = vec![
        summary(BenchMode::SyncFlush, 64, 900.0, 3000),
        summary(BenchMode::AsyncFlush, 64, 1000.0, 1000),
        summary(BenchMode::SyncFlush, 1, 100.0, 500),
        summary(BenchMode::AsyncFlush, 1, 400.0, 250),
    ];
    let series = super::matrix::ratio_series(&ratios(&runs));
    let labels: Vec<&str> = series.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "SYNC_FLUSH / ASYNC_FLUSH msg/s",
            "SYNC_FLUSH / ASYNC_FLUSH p99"
        ]
    );
    assert_eq!(series[0].points, vec![(1, 0.25), (64, 0.9)]);
    assert_eq!(series[1].points, vec![(1, 2.0), (64, 3.0)]);
}

#[test]
fn throughput_chart_leaves_out_the_partial_last_second() {
    use super::matrix::whole_seconds;
    assert_eq!(whole_seconds(&[900, 1000, 980, 12]), &[900, 1000, 980]);
    assert_eq!(whole_seconds(&[40]), &[40]);
    assert!(whole_seconds(&[]).is_empty());
}

/// A broker stand-in for the event-loop driver: answers Metadata with one topic of four queues
/// on shard 0 (no shard ports, so producers use the bootstrap address) and Produce by a fixed
/// rule on a global request count: every 5th is refused, every 7th (not 5th) is stored without
/// its guarantee. How it answers is its [`fake::Behaviour`]; it records the most requests any
/// connection had unanswered.
mod fake {
    use crate::protocol::frame::{encode_frame, FrameHeader};
    use crate::protocol::message::{Metadata, ProduceRequest, ProduceResponse, TopicInfo};
    use crate::protocol::{FrameDecoder, Opcode, Status};
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    pub const TOPIC: &str = "fake-topic";
    pub const REFUSED_MESSAGE: &str = "refused by the fake broker";

    #[derive(Default)]
    pub struct Counts {
        pub requests: AtomicU64,
        pub stored_ok: AtomicU64,
        pub stored_timeout: AtomicU64,
        pub refused: AtomicU64,
        pub max_unanswered: AtomicUsize,
        pub connections: AtomicUsize,
    }

    #[derive(Clone, Copy)]
    pub struct Behaviour {
        /// Answers are held until a connection has this many produce requests unanswered
        /// (1: each is answered at once), so a pipelining driver is the only way to progress.
        pub hold: usize,
        /// How long each batch of answers waits before it is written: a slow broker.
        pub delay: Duration,
        /// Answers are written one byte per `write`, so frames arrive split across reads.
        pub byte_at_a_time: bool,
        /// A connection's produce request with this number (from 1) is not answered: the fake
        /// shuts its side of the connection down instead.
        pub close_on_request: Option<u64>,
        /// After answering this connection's request with this number the fake shuts its side
        /// down.
        pub close_after_answer: Option<u64>,
    }

    impl Default for Behaviour {
        fn default() -> Self {
            Behaviour {
                hold: 1,
                delay: Duration::ZERO,
                byte_at_a_time: false,
                close_on_request: None,
                close_after_answer: None,
            }
        }
    }

    pub fn start() -> (String, Arc<Counts>) {
        start_with(Behaviour::default())
    }

    pub fn start_with(behaviour: Behaviour) -> (String, Arc<Counts>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let counts = Arc::new(Counts::default());
        let shared = counts.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                shared.connections.fetch_add(1, Ordering::Relaxed);
                let counts = shared.clone();
                std::thread::spawn(move || serve(stream, &counts, behaviour));
            }
        });
        (addr, counts)
    }

    /// Ends the fake's side: a FIN (never a reset: what the driver still sends is read and
    /// dropped until it closes too).
    fn hang_up(mut stream: TcpStream) {
        let _ = stream.shutdown(Shutdown::Write);
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    }

    fn send(stream: &mut TcpStream, bytes: &[u8], behaviour: Behaviour) -> bool {
        if behaviour.byte_at_a_time {
            bytes.iter().all(|b| stream.write_all(&[*b]).is_ok())
        } else {
            stream.write_all(bytes).is_ok()
        }
    }

    fn serve(mut stream: TcpStream, counts: &Counts, behaviour: Behaviour) {
        stream.set_nodelay(true).unwrap();
        let decoder = FrameDecoder::new(1 << 20);
        let mut buf = Vec::new();
        let mut held: Vec<u8> = Vec::new();
        let mut unanswered = 0usize;
        let mut produced = 0u64;
        let mut chunk = [0u8; 65536];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            let mut used = 0;
            while let Ok(Some(frame)) = decoder.decode(&buf[used..]) {
                used += frame.wire_len();
                let id = frame.header.request_id;
                if frame.header.opcode == Opcode::Metadata as u16 {
                    let mut body = Vec::new();
                    Metadata {
                        broker_name: "fake".into(),
                        role: "ASYNC_MASTER".into(),
                        flush_disk_type: "ASYNC_FLUSH".into(),
                        shard_ports: Vec::new(),
                        topics: vec![TopicInfo {
                            name: TOPIC.into(),
                            topic_id: 1,
                            queue_shards: vec![0; 4],
                        }],
                    }
                    .encode(&mut body);
                    let header = FrameHeader::response(Opcode::Metadata as u16, Status::Ok, id);
                    let mut out = Vec::new();
                    encode_frame(&mut out, header, &body);
                    if !send(&mut stream, &out, behaviour) {
                        return;
                    }
                    continue;
                }
                produced += 1;
                if behaviour.close_on_request == Some(produced) {
                    return hang_up(stream);
                }
                let messages = ProduceRequest::decode(frame.body).unwrap().messages.len() as u64;
                let n = counts.requests.fetch_add(1, Ordering::Relaxed) + 1;
                let (status, body) = if n % 5 == 0 {
                    counts.refused.fetch_add(messages, Ordering::Relaxed);
                    (Status::QueueNotFound, REFUSED_MESSAGE.as_bytes().to_vec())
                } else {
                    let status = if n % 7 == 0 {
                        counts.stored_timeout.fetch_add(messages, Ordering::Relaxed);
                        Status::FlushDiskTimeout
                    } else {
                        counts.stored_ok.fetch_add(messages, Ordering::Relaxed);
                        Status::Ok
                    };
                    let mut body = Vec::new();
                    ProduceResponse {
                        queue: 0,
                        base_offset: 0,
                        count: messages as u32,
                        commitlog_offset: 0,
                    }
                    .encode(&mut body);
                    (status, body)
                };
                let header = FrameHeader::response(Opcode::Produce as u16, status, id);
                encode_frame(&mut held, header, &body);
                unanswered += 1;
                counts
                    .max_unanswered
                    .fetch_max(unanswered, Ordering::Relaxed);
                if unanswered >= behaviour.hold {
                    // The slow broker's service time, not a synchronisation.
                    std::thread::sleep(behaviour.delay);
                    if !send(&mut stream, &held, behaviour) {
                        return;
                    }
                    held.clear();
                    unanswered = 0;
                }
                if behaviour.close_after_answer == Some(produced) {
                    return hang_up(stream);
                }
            }
            buf.drain(..used);
        }
    }
}

fn event_loop_workload(producers: u32, window: u32, batch: u32, count: u64) -> Workload {
    Workload {
        topic: fake::TOPIC.into(),
        producers,
        consumers: 0,
        queues: 4,
        keys: 0,
        size_bytes: 64,
        batch,
        window,
        warmup: Duration::ZERO,
        duration: None,
        count: Some(count),
        rate_per_sec: None,
        driver: Driver::EventLoop { threads: 2 },
        acks: None,
        kafka: None,
    }
}

fn run_event_loop(addr: &str, workload: &Workload) -> Vec<super::workload::ProducerOutcome> {
    try_run_event_loop(addr, workload).unwrap()
}

/// The outcomes of every producer, or the first driver thread's error.
fn try_run_event_loop(
    addr: &str,
    workload: &Workload,
) -> Result<Vec<super::workload::ProducerOutcome>, String> {
    let shared = std::sync::Arc::new(super::workload::Shared::new());
    let topology = super::workload::Topology::single(addr, workload.queues);
    let handles = super::event_loop::run_producers(&topology, workload, 2, &shared)?;
    let mut outcomes = Vec::new();
    for handle in handles {
        outcomes.extend(handle.join().unwrap()?);
    }
    Ok(outcomes)
}

#[test]
fn event_loop_counts_match_what_the_broker_answered_and_count_errors() {
    use std::sync::atomic::Ordering::Relaxed;
    let (addr, counts) = fake::start();
    let workload = event_loop_workload(5, 1, 3, 900);
    let outcomes = run_event_loop(&addr, &workload);
    assert_eq!(outcomes.len(), 5, "one outcome per producer");
    let acked: u64 = outcomes.iter().map(|o| o.acked_messages).sum();
    let without_guarantee: u64 = outcomes.iter().map(|o| o.stored_without_guarantee).sum();
    let failed: u64 = outcomes.iter().map(|o| o.failed_messages).sum();
    let (ok, timeout, refused) = (
        counts.stored_ok.load(Relaxed),
        counts.stored_timeout.load(Relaxed),
        counts.refused.load(Relaxed),
    );
    assert_eq!(
        ok + timeout + refused,
        900,
        "exactly --count messages were sent"
    );
    assert_eq!(acked, ok + timeout, "acknowledged = stored");
    assert_eq!(without_guarantee, timeout);
    assert_eq!(failed, refused);
    assert!(
        refused > 0 && timeout > 0,
        "the fake's rule produced both outcomes"
    );
    let latencies: u64 = outcomes.iter().map(|o| o.latency.len()).sum();
    assert_eq!(latencies, acked, "one latency per acknowledged message");
    let failure = outcomes
        .iter()
        .find_map(|o| o.first_failure.clone())
        .unwrap();
    assert!(failure.contains(fake::REFUSED_MESSAGE), "{failure}");
    // Closed loop with window 1: never two requests of one producer (one connection) at once.
    assert_eq!(counts.max_unanswered.load(Relaxed), 1);
    // Each producer has its own connection (one shard), plus one metadata connection.
    assert_eq!(counts.connections.load(Relaxed), 5 + 1);
}

#[test]
fn event_loop_pipelines_up_to_the_window_and_no_further() {
    use std::sync::atomic::Ordering::Relaxed;
    // The fake answers a connection only once it has 4 requests pending: the run completes
    // only if the driver keeps the whole window in flight (200 requests per producer, a
    // multiple of 4), and never more than the window.
    let (addr, counts) = fake::start_with(fake::Behaviour {
        hold: 4,
        ..fake::Behaviour::default()
    });
    let workload = event_loop_workload(3, 4, 1, 600);
    let outcomes = run_event_loop(&addr, &workload);
    let answered: u64 = outcomes
        .iter()
        .map(|o| o.acked_messages + o.failed_messages)
        .sum();
    assert_eq!(answered, 600);
    assert_eq!(counts.max_unanswered.load(Relaxed), 4);
}

#[test]
fn event_loop_reassembles_answers_split_across_reads() {
    use std::sync::atomic::Ordering::Relaxed;
    let (addr, counts) = fake::start_with(fake::Behaviour {
        byte_at_a_time: true,
        ..fake::Behaviour::default()
    });
    let workload = event_loop_workload(2, 2, 2, 200);
    let outcomes = run_event_loop(&addr, &workload);
    let acked: u64 = outcomes.iter().map(|o| o.acked_messages).sum();
    let failed: u64 = outcomes.iter().map(|o| o.failed_messages).sum();
    let stored = counts.stored_ok.load(Relaxed) + counts.stored_timeout.load(Relaxed);
    assert_eq!(acked, stored);
    assert_eq!(failed, counts.refused.load(Relaxed));
    assert_eq!(acked + failed, 200);
}

#[test]
fn event_loop_reports_a_broker_that_closes_with_requests_in_flight() {
    let (addr, _) = fake::start_with(fake::Behaviour {
        close_on_request: Some(3),
        ..fake::Behaviour::default()
    });
    let workload = event_loop_workload(1, 1, 1, 10);
    let Err(error) = try_run_event_loop(&addr, &workload) else {
        panic!("the broker hung up, yet the run succeeded");
    };
    assert!(
        error.contains(&format!(
            "{addr} closed the connection with 1 requests in flight"
        )),
        "{error}"
    );
}

#[test]
fn event_loop_fails_at_once_on_a_connection_the_broker_closed() {
    // The fake answers request 3 and hangs up but keeps reading: a request the driver wrote
    // to the closed connection would wait for the stall timeout. Whether the driver sees the
    // close before or after sending request 4, the error names the close.
    let (addr, _) = fake::start_with(fake::Behaviour {
        close_after_answer: Some(3),
        ..fake::Behaviour::default()
    });
    let workload = event_loop_workload(1, 1, 1, 10);
    let Err(error) = try_run_event_loop(&addr, &workload) else {
        panic!("the broker hung up, yet the run succeeded");
    };
    assert!(
        error.contains(&format!("{addr} closed the connection")),
        "{error}"
    );
}

#[test]
fn event_loop_reports_an_unreachable_broker() {
    let workload = event_loop_workload(2, 1, 1, 10);
    let shared = std::sync::Arc::new(super::workload::Shared::new());
    let topology = super::workload::Topology::single("127.0.0.1:1", workload.queues);
    let error = super::event_loop::run_producers(&topology, &workload, 1, &shared)
        .expect_err("no broker listens on port 1");
    assert!(error.contains("127.0.0.1:1"), "{error}");
}

#[test]
fn proc_stat_times_and_listening_sockets_parse() {
    use super::cpu::{listening_inodes_in, stat_ticks};
    // A command name with a space and a parenthesis must not shift the fields.
    let stat = "1234 (bench (x) y) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 4 0 100";
    assert_eq!(stat_ticks(stat), Some(175));
    assert_eq!(stat_ticks("garbage"), None);
    let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1\n\
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4343 1\n\
   2: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1\n";
    assert_eq!(listening_inodes_in(table, 8080), vec!["4242".to_string()]);
    assert!(listening_inodes_in(table, 9999).is_empty());
}

#[test]
fn this_process_is_found_listening_and_its_cpu_is_sampled() {
    use super::cpu::{pid_listening_on, Sample, Watched};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    assert_eq!(pid_listening_on(port), Some(std::process::id()));
    let watched = [Watched {
        label: "broker",
        pid: std::process::id(),
    }];
    let first = Sample::take(&watched, 0);
    // Burn CPU until the kernel's accounting moves by a clock tick (10 ms usually); the
    // deadline only bounds a broken /proc.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut x = 0u64;
    let used = loop {
        for _ in 0..1_000_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let used = first.until(&Sample::take(&watched, 1000), &watched);
        if used.driver_percent.is_some_and(|p| p > 0.0) || std::time::Instant::now() > deadline {
            break used;
        }
    };
    assert!(used.driver_percent.unwrap() > 0.0, "{used:?}");
    assert!(used.broker_percent.unwrap() > 0.0, "{used:?}");
    assert!(used.broker_us_per_message.unwrap() > 0.0, "{used:?}");
    assert_eq!(used.slave_percent, None);
}

#[test]
fn event_loop_open_loop_counts_the_schedule_and_the_wait_behind_a_slow_broker() {
    use std::sync::atomic::Ordering::Relaxed;
    // Two producers at 1,000 requests/s each for 0.3 s: 300 requests each are due. The fake
    // takes 5 ms per answer, so with window 1 a producer completes at most 200 requests/s and
    // falls ever further behind its schedule.
    let (addr, counts) = fake::start_with(fake::Behaviour {
        delay: Duration::from_millis(5),
        ..fake::Behaviour::default()
    });
    let workload = Workload {
        count: None,
        duration: Some(Duration::from_millis(300)),
        rate_per_sec: Some(2000.0),
        ..event_loop_workload(2, 1, 1, 0)
    };
    let outcomes = run_event_loop(&addr, &workload);
    let requests = counts.requests.load(Relaxed);
    assert!(
        (600..=602).contains(&requests),
        "{requests} requests for 2 × 300 due"
    );
    let answered: u64 = outcomes
        .iter()
        .map(|o| o.acked_messages + o.failed_messages)
        .sum();
    assert_eq!(answered, requests);
    // The last request of a producer was due at 0.3 s and sent after about 300 × 5 ms: its
    // latency counts from its schedule, so it carries the whole backlog (no coordinated
    // omission), far beyond any one request's 5 ms wait.
    let max_us = outcomes.iter().map(|o| o.latency.max()).max().unwrap();
    assert!(max_us >= 1_000_000, "max latency {max_us} us");
}

#[test]
fn open_loop_waits_arm_the_timer_for_the_exact_due_instant() {
    use super::event_loop::{plan_wait, MAX_WAIT};
    let now = Duration::from_millis(10);
    // 300 µs ahead: epoll_wait's millisecond timeout would send it 700 µs late (rounded up) or
    // spin (rounded down); the timer is armed for the instant itself.
    let due = now + Duration::from_micros(300);
    assert_eq!(plan_wait(now, Some(due)), (Some(due), MAX_WAIT));
    let due = now + Duration::from_nanos(1);
    assert_eq!(plan_wait(now, Some(due)), (Some(due), MAX_WAIT));
    // Due now or overdue: sent without waiting.
    assert_eq!(plan_wait(now, Some(now)), (None, Duration::ZERO));
    assert_eq!(
        plan_wait(now, Some(Duration::from_millis(3))),
        (None, Duration::ZERO)
    );
    // Nothing waits for its schedule (closed loop, or every window full).
    assert_eq!(plan_wait(now, None), (None, MAX_WAIT));
}

#[test]
fn the_send_timer_wakes_the_loop_at_its_instant_not_at_the_epoll_timeout() {
    use super::event_loop::{Epoll, Timer, TIMER_TOKEN};
    let epoll = Epoll::new().unwrap();
    let origin = std::time::Instant::now();
    let mut timer = Timer::new(&epoll, origin).unwrap();
    let due = origin.elapsed() + Duration::from_micros(300);
    timer.arm(due).unwrap();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 4];
    // The epoll timeout is far beyond the test: only the timer can end this wait.
    let ready = epoll.wait(&mut events, Duration::from_secs(120)).unwrap();
    assert_eq!(ready, 1);
    assert_eq!({ events[0].u64 }, TIMER_TOKEN as u64);
    // A timer never expires early, so this holds however loaded the machine is.
    assert!(origin.elapsed() >= due, "woke before the due instant");
    // Level-triggered: once read, the timer no longer wakes the loop.
    timer.clear();
    assert_eq!(epoll.wait(&mut events, Duration::ZERO).unwrap(), 0);
}

#[test]
fn only_a_broker_on_this_machine_is_looked_up_by_port() {
    use super::cpu::is_local_host;
    for host in ["127.0.0.1", "localhost", "0.0.0.0", "::1", "[::1]"] {
        assert!(is_local_host(host), "{host} is this machine");
    }
    // TEST-NET-1 (RFC 5737) is never assigned to an interface: a remote host.
    assert!(!is_local_host("192.0.2.1"));
    assert!(!is_local_host("[2001:db8::1]"));
}

#[test]
fn a_topology_spans_every_group_and_keys_hash_over_all_its_queues() {
    let one = super::workload::Topology::single("127.0.0.1:1", 4);
    assert_eq!(one.queues, [(0, 0), (0, 1), (0, 2), (0, 3)]);
    let info = crate::protocol::message::TopicInfo {
        name: "t".into(),
        topic_id: 1,
        queue_shards: vec![0; 4],
    };
    // On one broker a key lands where the client's own key hashing puts it.
    for key in [&b"a"[..], b"key-7", b"order-42"] {
        assert_eq!(
            one.queue_for_key(key).map(|q| q as u32),
            crate::client::queue_for_key(&info, key)
        );
    }
    let two = super::workload::Topology {
        masters: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
        queues: vec![(0, 0), (0, 1), (1, 0), (1, 1)],
    };
    let groups: std::collections::BTreeSet<usize> = (0..64)
        .map(|k| two.queues[two.queue_for_key(format!("key-{k}").as_bytes()).unwrap()].0)
        .collect();
    assert_eq!(groups.len(), 2, "keys reach both groups");
}

#[test]
fn cpu_of_every_master_and_every_slave_is_summed() {
    use super::cpu::{Sample, Watched};
    let me = std::process::id();
    let watched = [
        Watched {
            label: "broker",
            pid: me,
        },
        Watched {
            label: "slave",
            pid: me,
        },
        Watched {
            label: "broker",
            pid: me,
        },
    ];
    let before = Sample::take(&watched, 0);
    // 300 ms of this thread's CPU (not wall time: the machine may be busy), so that the one
    // clock tick each reading may be off by is small beside what is measured.
    let cpu_ns = || {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec it is given.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
        t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
    };
    let start = cpu_ns();
    let mut x = 0u64;
    while cpu_ns() - start < 300_000_000 {
        x = std::hint::black_box(x.wrapping_add(1));
    }
    let after = Sample::take(&watched, 1000);
    let cpu = before.until(&after, &watched);
    let (broker, slave) = (cpu.broker_percent.unwrap(), cpu.slave_percent.unwrap());
    // Both masters are this process: twice its CPU; the one slave once.
    let ratio = broker / slave;
    assert!((1.8..=2.2).contains(&ratio), "{cpu:?}");
    let per_message = cpu.broker_us_per_message.unwrap();
    assert!(
        per_message >= 500.0,
        "two masters' 300 ms over 1000 messages: {cpu:?}"
    );
}

#[test]
fn groups_get_disjoint_cpus_and_share_them_only_when_there_are_too_few() {
    use super::embedded::split_cpus;
    assert_eq!(split_cpus(&[0, 1], 2), vec![vec![0], vec![1]]);
    assert_eq!(split_cpus(&[0, 1, 2, 3], 2), vec![vec![0, 1], vec![2, 3]]);
    assert_eq!(split_cpus(&[4, 5, 6], 2), vec![vec![4], vec![5, 6]]);
    assert_eq!(split_cpus(&[0], 2), vec![vec![0], vec![0]]);
    assert_eq!(split_cpus(&[], 2), vec![Vec::<usize>::new(), Vec::new()]);
    let mine = super::embedded::allowed_cpus();
    assert!(!mine.is_empty(), "this process runs on some CPU");
}

/// `--protocol native,kafka`: a Kafka row is its own row, divided by the native row of the same
/// mode, level and producer count; sync/async and all/leader ratios stay among native rows.
#[test]
fn kafka_rows_are_divided_by_their_native_rows() {
    use super::mode::Protocol;
    use super::report::{protocol_ratio_table, protocol_ratios};
    let kafka = |mode, rate, p99| RunSummary {
        protocol: Protocol::Kafka,
        name: super::run::run_name_at(mode, None, Protocol::Kafka, 4),
        ..summary(mode, 4, rate, p99)
    };
    let runs = vec![
        summary(BenchMode::SyncFlush, 4, 1000.0, 200),
        kafka(BenchMode::SyncFlush, 800.0, 300),
        summary(BenchMode::AsyncFlush, 4, 2000.0, 100),
        kafka(BenchMode::AsyncFlush, 1000.0, 100),
    ];
    assert_eq!(runs[1].name, "SYNC_FLUSH-kafka-p4");
    let by_wire = protocol_ratios(&runs);
    assert_eq!(by_wire.len(), 2);
    assert_eq!(by_wire[0].mode, BenchMode::SyncFlush);
    assert!((by_wire[0].throughput_ratio - 0.8).abs() < 1e-9);
    assert!((by_wire[0].p99_ratio - 1.5).abs() < 1e-9);
    assert!((by_wire[1].throughput_ratio - 0.5).abs() < 1e-9);
    let table = protocol_ratio_table(&by_wire);
    assert!(table.contains("SYNC_FLUSH kafka / native"), "{table}");
    // The sync/async ratio pairs the native rows only (0.5), not a Kafka row with anything.
    let twins = ratios(&runs);
    assert_eq!(twins.len(), 1);
    assert!((twins[0].throughput_ratio - 0.5).abs() < 1e-9);
    assert!(super::report::matrix_table(&runs).contains("SYNC_FLUSH/kafka"));
}

/// The Kafka wire's request decodes as the broker's listener decodes it (same crate), with
/// the batch's values, key, timestamp and acks; an answer decodes to the native outcome.
#[test]
fn kafka_wire_requests_and_answers_round_trip() {
    use super::kafka_wire::{decode_answer, encode_produce, Batch, PRODUCE_VERSION};
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };
    use kafka_protocol::messages::{
        ApiKey, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader,
    };
    use kafka_protocol::protocol::{Decodable, Encodable};
    use kafka_protocol::records::RecordBatchDecoder;
    let mut out = Vec::new();
    let values = vec![b"one".to_vec(), b"two".to_vec()];
    let batch = Batch {
        topic: "t",
        partition: 3,
        acks: -1,
        key: b"k",
        timestamp_ms: 1_700_000_000_000,
        values: &values,
    };
    encode_produce(&mut out, 42, &batch).unwrap();
    let size = i32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
    assert_eq!(size + 4, out.len());
    let mut body = Bytes::copy_from_slice(&out[4..]);
    let header = RequestHeader::decode(
        &mut body,
        ApiKey::Produce.request_header_version(PRODUCE_VERSION),
    )
    .unwrap();
    assert_eq!(header.correlation_id, 42);
    let request = ProduceRequest::decode(&mut body, PRODUCE_VERSION).unwrap();
    assert_eq!(request.acks, -1);
    let partition = &request.topic_data[0].partition_data[0];
    assert_eq!(partition.index, 3);
    let mut records = partition.records.clone().unwrap();
    let decoded = RecordBatchDecoder::decode(&mut records).unwrap();
    let got: Vec<&[u8]> = decoded
        .records
        .iter()
        .map(|r| r.value.as_deref().unwrap())
        .collect();
    assert_eq!(got, [&b"one"[..], b"two"]);
    assert_eq!(decoded.records[0].key.as_deref(), Some(&b"k"[..]));
    assert_eq!(decoded.records[1].timestamp, 1_700_000_000_000);

    let answer = |error_code: i16| {
        let response =
            ProduceResponse::default().with_responses(vec![TopicProduceResponse::default()
                .with_partition_responses(vec![PartitionProduceResponse::default()
                    .with_index(3)
                    .with_error_code(error_code)
                    .with_base_offset(17)])]);
        let mut body = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(42)
            .encode(
                &mut body,
                ApiKey::Produce.response_header_version(PRODUCE_VERSION),
            )
            .unwrap();
        response.encode(&mut body, PRODUCE_VERSION).unwrap();
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        frame
    };
    let ok = answer(0);
    assert!(decode_answer(&ok[..ok.len() - 1], 1 << 20)
        .unwrap()
        .is_none());
    let (len, correlation, result) = decode_answer(&ok, 1 << 20).unwrap().unwrap();
    assert_eq!((len, correlation), (ok.len(), 42));
    let result = result.unwrap();
    assert_eq!(result.status, crate::protocol::Status::Ok);
    assert_eq!(result.response.base_offset, 17);
    let late = decode_answer(&answer(20), 1 << 20)
        .unwrap()
        .unwrap()
        .2
        .unwrap();
    assert_eq!(late.status, crate::protocol::Status::FlushSlaveTimeout);
    assert!(decode_answer(&answer(3), 1 << 20)
        .unwrap()
        .unwrap()
        .2
        .is_err());
    assert!(decode_answer(&(-1i32).to_be_bytes(), 1 << 20).is_err());
}
