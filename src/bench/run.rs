//! One run: a topic, the producer and consumer threads of a [`Workload`], and the merged
//! result. The broker (embedded or external) is the caller's business.

use super::histogram::{merge_intervals, new_latency_histogram, Percentiles};
use super::mode::BenchMode;
use super::workload::{self, ConsumerOutcome, ProducerOutcome, Shared, Workload};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

/// Everything measured in one run, histograms included.
pub struct RunMeasurement {
    pub mode: BenchMode,
    pub producers: u32,
    /// Wall-clock start of the measured phase.
    pub started_at: SystemTime,
    pub produce: Histogram<u64>,
    pub produce_intervals: Vec<Histogram<u64>>,
    pub e2e: Histogram<u64>,
    pub e2e_intervals: Vec<Histogram<u64>>,
    pub summary: RunSummary,
}

/// The numbers of one run, as printed and stored in `results.json`.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub mode: BenchMode,
    pub producers: u32,
    pub name: String,
    pub messages: u64,
    pub seconds: f64,
    pub messages_per_sec: f64,
    pub mib_per_sec: f64,
    pub stored_without_guarantee: u64,
    pub failed_messages: u64,
    pub first_failure: Option<String>,
    pub consumed_messages: u64,
    pub produce_latency: Percentiles,
    pub e2e_latency: Percentiles,
    /// Messages acknowledged in each second of the measured phase.
    pub messages_per_second_series: Vec<u64>,
}

/// A run's file-name stem: `SYNC_FLUSH-p16`.
pub fn run_name(mode: BenchMode, producers: u32) -> String {
    format!("{}-p{producers}", mode.name())
}

/// Creates the topic and runs the workload against the broker at `addr`.
pub fn run(
    addr: &str,
    mode: BenchMode,
    workload: &Workload,
    progress: bool,
) -> Result<RunMeasurement, String> {
    let mut admin = workload::connect(addr)?;
    admin
        .create_topic(&workload.topic, workload.queues)
        .map_err(|e| {
            format!(
                "creating topic {}: {}",
                workload.topic,
                workload::describe(addr, &e)
            )
        })?;
    let shared = Arc::new(Shared::new());
    // The measured phase, which the per-second intervals count from, starts after the warmup.
    let started_at = SystemTime::now() + workload.warmup;
    let consumers = spawn_consumers(addr, workload, &shared);
    let producers: Vec<_> = (0..workload.producers)
        .map(|index| {
            let (addr, workload, shared) = (addr.to_string(), workload.clone(), shared.clone());
            thread::Builder::new()
                .name(format!("bench-producer-{index}"))
                .spawn(move || workload::run_producer(&addr, &workload, index, &shared))
                .map_err(|e| format!("starting producer thread: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let bar = progress.then(|| progress_bar(mode, workload));
    let produced = join_all(producers, bar.as_ref(), &shared, workload);
    shared.producers_done.store(true, Ordering::Release);
    let consumed = join_all_consumers(consumers);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let produced = produced?;
    let consumed = consumed?;
    Ok(merge(mode, workload, started_at, produced, consumed))
}

type Handle<T> = thread::JoinHandle<Result<T, String>>;

fn spawn_consumers(
    addr: &str,
    workload: &Workload,
    shared: &Arc<Shared>,
) -> Vec<Handle<ConsumerOutcome>> {
    if workload.consumers == 0 {
        return Vec::new();
    }
    (0..workload.queues)
        .map(|queue| {
            let (addr, workload, shared) = (addr.to_string(), workload.clone(), shared.clone());
            thread::spawn(move || workload::run_consumer(&addr, &workload, queue, shared))
        })
        .collect()
}

fn join_all(
    handles: Vec<Handle<ProducerOutcome>>,
    bar: Option<&ProgressBar>,
    shared: &Shared,
    workload: &Workload,
) -> Result<Vec<ProducerOutcome>, String> {
    while handles.iter().any(|h| !h.is_finished()) {
        if let Some(bar) = bar {
            let elapsed = shared.origin.elapsed();
            let measured = elapsed.saturating_sub(workload.warmup).as_secs_f64();
            let acked = shared.acked_messages.load(Ordering::Relaxed);
            match workload.count {
                Some(_) => bar.set_position(acked),
                None => bar.set_position(elapsed.as_secs()),
            }
            bar.set_message(format!("{:.0} msg/s", acked as f64 / measured.max(1e-3)));
        }
        thread::sleep(Duration::from_millis(100));
    }
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| Err("a producer thread panicked".into()))
        })
        .collect()
}

fn join_all_consumers(
    handles: Vec<Handle<ConsumerOutcome>>,
) -> Result<Vec<ConsumerOutcome>, String> {
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| Err("a consumer thread panicked".into()))
        })
        .collect()
}

fn progress_bar(mode: BenchMode, workload: &Workload) -> ProgressBar {
    let (length, unit) = match (workload.count, workload.duration) {
        (Some(count), _) => (count, "msgs"),
        (None, Some(d)) => ((workload.warmup + d).as_secs(), "s"),
        (None, None) => (0, ""),
    };
    let bar = ProgressBar::new(length);
    let template = format!(
        "{} p{} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}}",
        mode.name(),
        workload.producers
    );
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn merge(
    mode: BenchMode,
    workload: &Workload,
    started_at: SystemTime,
    produced: Vec<ProducerOutcome>,
    consumed: Vec<ConsumerOutcome>,
) -> RunMeasurement {
    let mut produce = new_latency_histogram();
    let mut produce_intervals = Vec::new();
    let (mut messages, mut stored_without_guarantee, mut failed) = (0, 0, 0);
    let mut first_failure = None;
    let mut last_ack = Duration::ZERO;
    for p in &produced {
        produce.add(&p.latency).expect("same bounds");
        merge_intervals(&mut produce_intervals, &p.intervals);
        messages += p.acked_messages;
        stored_without_guarantee += p.stored_without_guarantee;
        failed += p.failed_messages;
        first_failure = first_failure.or_else(|| p.first_failure.clone());
        last_ack = last_ack.max(p.last_ack);
    }
    let mut e2e = new_latency_histogram();
    let mut e2e_intervals = Vec::new();
    let mut consumed_messages = 0;
    for c in &consumed {
        e2e.add(&c.latency).expect("same bounds");
        merge_intervals(&mut e2e_intervals, &c.intervals);
        consumed_messages += c.received_messages;
    }
    let seconds = match workload.duration {
        Some(d) => d
            .as_secs_f64()
            .max(last_ack.saturating_sub(workload.warmup).as_secs_f64()),
        None => last_ack.saturating_sub(workload.warmup).as_secs_f64(),
    }
    .max(1e-6);
    let messages_per_sec = messages as f64 / seconds;
    let summary = RunSummary {
        mode,
        producers: workload.producers,
        name: run_name(mode, workload.producers),
        messages,
        seconds,
        messages_per_sec,
        mib_per_sec: messages_per_sec * workload.size_bytes as f64 / (1024.0 * 1024.0),
        stored_without_guarantee,
        failed_messages: failed,
        first_failure,
        consumed_messages,
        produce_latency: Percentiles::of(&produce),
        e2e_latency: Percentiles::of(&e2e),
        messages_per_second_series: produce_intervals.iter().map(|h| h.len()).collect(),
    };
    RunMeasurement {
        mode,
        producers: workload.producers,
        started_at,
        produce,
        produce_intervals,
        e2e,
        e2e_intervals,
        summary,
    }
}
