//! Text output: the per-run summary lines (Kafka's producer-perf shape plus µs percentiles),
//! the matrix table and the sync/async ratio table.

use super::mode::{BenchMode, Protocol};
use super::run::RunSummary;
use crate::protocol::Acks;
use serde::Serialize;
use std::fmt::Write;

/// Kafka `ProducerPerformance`'s closing line, from the same numbers: ms with two decimals for
/// average and max, whole ms for percentiles, "MB" meaning MiB as Kafka computes it.
pub fn kafka_line(run: &RunSummary) -> String {
    let l = &run.produce_latency;
    let ms = |us: u64| us / 1000;
    format!(
        "{} records sent, {:.1} records/sec ({:.2} MB/sec), {:.2} ms avg latency, \
         {:.2} ms max latency, {} ms 50th, {} ms 95th, {} ms 99th, {} ms 99.9th.",
        run.messages,
        run.messages_per_sec,
        run.mib_per_sec,
        l.mean_us / 1000.0,
        l.max_us as f64 / 1000.0,
        ms(l.p50_us),
        ms(l.p95_us),
        ms(l.p99_us),
        ms(l.p99_9_us)
    )
}

/// The µs percentile lines for produce and end-to-end latency.
pub fn microsecond_lines(run: &RunSummary) -> String {
    let line = |what: &str, l: &super::histogram::Percentiles| {
        format!(
            "{what} latency us: p50={} p90={} p99={} p99.9={} p99.99={} max={} (n={})",
            l.p50_us, l.p90_us, l.p99_us, l.p99_9_us, l.p99_99_us, l.max_us, l.count
        )
    };
    format!(
        "{}\n{}",
        line("produce", &run.produce_latency),
        line("e2e", &run.e2e_latency)
    )
}

/// `a%` with no decimals, or `-` when it was not measured.
fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.0}%"))
}

fn micros(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

/// Who used how much CPU in the measured phase: the bench (driver), the broker, the slave.
pub fn cpu_line(run: &RunSummary) -> String {
    let c = &run.cpu;
    let mut line = format!(
        "cpu ({} driver, {:.1} s sampled): driver={} broker={}",
        run.driver,
        c.seconds,
        percent(c.driver_percent),
        percent(c.broker_percent)
    );
    if c.slave_percent.is_some() {
        let _ = write!(line, " slave={}", percent(c.slave_percent));
    }
    let _ = write!(
        line,
        " broker_us_per_msg={} (100% = one core)",
        micros(c.broker_us_per_message)
    );
    line
}

/// The matrix: one row per run.
pub fn matrix_table(runs: &[RunSummary]) -> String {
    let mut out = String::new();
    // Wide enough for the longest mode name (SYNC_MASTER_X2), 12 as before otherwise.
    let w = runs
        .iter()
        .map(|r| mode_label(r).len())
        .max()
        .unwrap_or(0)
        .max(12);
    let _ = writeln!(
        out,
        concat!(
            "{:<w$} {:>9} {:>10} {:>8} | {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} | ",
            "{:>8} {:>8} | {:>6} {:>6} {:>7}"
        ),
        "mode",
        "producers",
        "msg/s",
        "MiB/s",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "p99.99",
        "max",
        "e2e p50",
        "e2e p99",
        "drv",
        "brk",
        "brk us",
        w = w
    );
    let _ = writeln!(
        out,
        "{:<w$} {:>9} {:>10} {:>8} | {:^53} | {:^17} | {:^21}",
        "", "", "", "", "produce latency (us)", "e2e (us)", "cpu %, broker us/msg"
    );
    for r in runs {
        let l = &r.produce_latency;
        let _ = writeln!(
            out,
            concat!(
                "{:<w$} {:>9} {:>10.0} {:>8.2} | {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} | ",
                "{:>8} {:>8} | {:>6} {:>6} {:>7}"
            ),
            mode_label(r),
            r.producers,
            r.messages_per_sec,
            r.mib_per_sec,
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.p99_9_us,
            l.p99_99_us,
            l.max_us,
            r.e2e_latency.p50_us,
            r.e2e_latency.p99_us,
            percent(r.cpu.driver_percent),
            percent(r.cpu.broker_percent),
            micros(r.cpu.broker_us_per_message),
            w = w
        );
    }
    out
}

/// The mode column: the mode, and the level when `--acks` named one (`SYNC_MASTER/all`).
fn mode_label(run: &RunSummary) -> String {
    let mut label = run.mode.name().to_string();
    if let Some(acks) = run.acks {
        label = format!("{label}/{acks}");
    }
    if !run.protocol.is_native() {
        label = format!("{label}/{}", run.protocol);
    }
    label
}

/// A sync mode against its async twin at one producer count.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModeRatio {
    pub mode: BenchMode,
    pub baseline: BenchMode,
    pub producers: u32,
    /// sync msg/s ÷ async msg/s: 1.0 means durability costs no throughput.
    pub throughput_ratio: f64,
    /// sync p99 ÷ async p99 (produce latency).
    pub p99_ratio: f64,
}

/// Every (mode with a twin, producer count) pair for which both runs exist.
pub fn ratios(runs: &[RunSummary]) -> Vec<ModeRatio> {
    let mut out = Vec::new();
    // Native rows only: a Kafka row is compared with its native twin (`protocol_ratios`).
    for run in runs.iter().filter(|r| r.protocol.is_native()) {
        let Some(baseline) = run.mode.async_twin() else {
            continue;
        };
        let Some(twin) = runs.iter().find(|r| {
            r.mode == baseline
                && r.producers == run.producers
                && r.acks == run.acks
                && r.protocol.is_native()
        }) else {
            continue;
        };
        out.push(ModeRatio {
            mode: run.mode,
            baseline,
            producers: run.producers,
            throughput_ratio: ratio(run.messages_per_sec, twin.messages_per_sec),
            p99_ratio: ratio(
                run.produce_latency.p99_us as f64,
                twin.produce_latency.p99_us as f64,
            ),
        });
    }
    out
}

/// One mode at level `all` against the same mode at `leader`, at one producer count: what
/// waiting for the slaves costs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AcksRatio {
    pub mode: BenchMode,
    pub producers: u32,
    /// `all` msg/s ÷ `leader` msg/s.
    pub throughput_ratio: f64,
    /// `all` p99 ÷ `leader` p99 (produce latency).
    pub p99_ratio: f64,
}

/// Every (mode, producer count) run at both `all` and `leader`.
pub fn acks_ratios(runs: &[RunSummary]) -> Vec<AcksRatio> {
    let at = |run: &RunSummary, acks: Acks| run.acks == Some(acks) && run.protocol.is_native();
    runs.iter()
        .filter(|run| at(run, Acks::All))
        .filter_map(|all| {
            let leader = runs.iter().find(|r| {
                at(r, Acks::Leader) && r.mode == all.mode && r.producers == all.producers
            })?;
            Some(AcksRatio {
                mode: all.mode,
                producers: all.producers,
                throughput_ratio: ratio(all.messages_per_sec, leader.messages_per_sec),
                p99_ratio: ratio(
                    all.produce_latency.p99_us as f64,
                    leader.produce_latency.p99_us as f64,
                ),
            })
        })
        .collect()
}

pub fn acks_ratio_table(ratios: &[AcksRatio]) -> String {
    ratio_rows(
        "acks ratio",
        ratios.iter().map(|r| {
            let pair = format!("{} all / leader", r.mode.name());
            (pair, r.producers, r.throughput_ratio, r.p99_ratio)
        }),
    )
}

/// A mode's Kafka row against its native row (same level, same producers): what the Kafka
/// wire costs on the same broker.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProtocolRatio {
    pub mode: BenchMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acks: Option<Acks>,
    pub producers: u32,
    /// Kafka msg/s ÷ native msg/s.
    pub throughput_ratio: f64,
    /// Kafka p99 ÷ native p99 (produce latency).
    pub p99_ratio: f64,
    /// Kafka broker CPU µs per message ÷ native (`None` where either is unknown).
    pub broker_us_per_msg_ratio: Option<f64>,
}

/// Every (mode, level, producer count) run over both wires.
pub fn protocol_ratios(runs: &[RunSummary]) -> Vec<ProtocolRatio> {
    runs.iter()
        .filter(|run| run.protocol == Protocol::Kafka)
        .filter_map(|kafka| {
            let native = runs.iter().find(|r| {
                r.protocol.is_native()
                    && r.mode == kafka.mode
                    && r.acks == kafka.acks
                    && r.producers == kafka.producers
            })?;
            let us = |r: &RunSummary| r.cpu.broker_us_per_message;
            Some(ProtocolRatio {
                mode: kafka.mode,
                acks: kafka.acks,
                producers: kafka.producers,
                throughput_ratio: ratio(kafka.messages_per_sec, native.messages_per_sec),
                p99_ratio: ratio(
                    kafka.produce_latency.p99_us as f64,
                    native.produce_latency.p99_us as f64,
                ),
                broker_us_per_msg_ratio: us(kafka).zip(us(native)).map(|(k, n)| ratio(k, n)),
            })
        })
        .collect()
}

pub fn protocol_ratio_table(ratios: &[ProtocolRatio]) -> String {
    ratio_rows(
        "protocol ratio",
        ratios.iter().map(|r| {
            let level = r.acks.map(|a| format!("/{a}")).unwrap_or_default();
            let pair = format!("{}{level} kafka / native", r.mode.name());
            (pair, r.producers, r.throughput_ratio, r.p99_ratio)
        }),
    )
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        f64::NAN
    }
}

pub fn ratio_table(ratios: &[ModeRatio]) -> String {
    ratio_rows(
        "ratio",
        ratios.iter().map(|r| {
            let pair = format!("{} / {}", r.mode.name(), r.baseline.name());
            (pair, r.producers, r.throughput_ratio, r.p99_ratio)
        }),
    )
}

/// One ratio table: a row per (pair, producers, throughput ratio, p99 ratio), the first column
/// as wide as its longest pair (at least 26).
fn ratio_rows(title: &str, rows: impl Iterator<Item = (String, u32, f64, f64)>) -> String {
    let rows: Vec<_> = rows.collect();
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(26);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<w$} {:>9} {:>12} {:>10}",
        title, "producers", "msg/s ratio", "p99 ratio"
    );
    for (pair, producers, throughput, p99) in rows {
        let _ = writeln!(
            out,
            "{:<w$} {:>9} {:>12.3} {:>10.3}",
            pair, producers, throughput, p99
        );
    }
    out
}
