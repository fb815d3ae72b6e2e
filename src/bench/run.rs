//! One run: a topic, the producer and consumer threads of a [`Workload`], and the merged
//! result. The broker (embedded or external) is the caller's business.

use super::cpu::{CpuUse, Sample, Watched};
use super::histogram::{merge_intervals, new_latency_histogram, Percentiles};
use super::mode::{BenchMode, Protocol};
use super::workload::{self, ConsumerOutcome, Driver, ProducerOutcome, Shared, Topology, Workload};
use crate::protocol::Acks;
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
    /// The level every produce named (`--acks`); absent: the broker's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acks: Option<Acks>,
    /// The wire the producers spoke (`--protocol`); absent from the JSON: native.
    #[serde(skip_serializing_if = "Protocol::is_native")]
    pub protocol: Protocol,
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
    /// `threads` or `event-loop/N`.
    pub driver: String,
    /// CPU of the bench and the broker processes over the measured phase.
    pub cpu: CpuUse,
}

/// A run's file-name stem: `SYNC_FLUSH-p16`.
pub fn run_name(mode: BenchMode, producers: u32) -> String {
    format!("{}-p{producers}", mode.name())
}

/// A run's name at an acknowledgement level named by `--acks` and over the Kafka wire:
/// `SYNC_MASTER-all-p16`, `SYNC_FLUSH-kafka-p16`, `SYNC_MASTER-all-kafka-p16`.
pub fn run_name_at(
    mode: BenchMode,
    acks: Option<Acks>,
    protocol: Protocol,
    producers: u32,
) -> String {
    let mut name = mode.name().to_string();
    if let Some(acks) = acks {
        name = format!("{name}-{acks}");
    }
    if !protocol.is_native() {
        name = format!("{name}-{protocol}");
    }
    format!("{name}-p{producers}")
}

/// Creates the topic on every master (`masters`: one broker, or every broker group's master)
/// and runs the workload over all their queues; `watched` are the broker processes whose CPU
/// is reported.
pub fn run(
    masters: &[String],
    mode: BenchMode,
    workload: &Workload,
    progress: bool,
    watched: &[Watched],
) -> Result<RunMeasurement, String> {
    let topology = Topology::create(masters.to_vec(), &workload.topic, workload.queues)?;
    let shared = Arc::new(Shared::new());
    // The measured phase, which the per-second intervals count from, starts after the warmup.
    let started_at = SystemTime::now() + workload.warmup;
    let consumers = spawn_consumers(&topology, workload, &shared)?;
    let producers = match spawn_producers(&topology, workload, &shared) {
        Ok(producers) => producers,
        Err(e) => {
            shared.producers_done.store(true, Ordering::Release);
            let _ = join_all_consumers(consumers);
            return Err(e);
        }
    };
    let bar = progress.then(|| progress_bar(mode, workload));
    let (produced, cpu) = join_all(producers, bar.as_ref(), &shared, workload, watched);
    shared.producers_done.store(true, Ordering::Release);
    let consumed = join_all_consumers(consumers);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let produced = produced?;
    let consumed = consumed?;
    let mut measurement = merge(mode, workload, started_at, produced, consumed);
    measurement.summary.cpu = cpu;
    Ok(measurement)
}

type Handle<T> = thread::JoinHandle<Result<T, String>>;

/// Starts the producers with the workload's driver; each handle yields the outcomes of the
/// producers it ran (one for a producer thread, a slice for an event loop).
fn spawn_producers(
    topology: &Topology,
    workload: &Workload,
    shared: &Arc<Shared>,
) -> Result<Vec<Handle<Vec<ProducerOutcome>>>, String> {
    match workload.driver {
        Driver::EventLoop { threads } => {
            super::event_loop::run_producers(topology, workload, threads, shared)
        }
        Driver::Threads => (0..workload.producers)
            .map(|index| {
                let (topology, workload, shared) =
                    (topology.clone(), workload.clone(), shared.clone());
                thread::Builder::new()
                    .name(format!("bench-producer-{index}"))
                    .spawn(move || {
                        workload::run_producer(&topology, &workload, index, &shared)
                            .map(|o| vec![o])
                    })
                    .map_err(|e| format!("starting producer thread: {e}"))
            })
            .collect(),
    }
}

/// Starts the consumers: one event-loop thread for every queue's connection with the event-loop
/// driver, a thread per queue with the thread driver. Each handle yields the outcomes of the
/// queues it read.
fn spawn_consumers(
    topology: &Topology,
    workload: &Workload,
    shared: &Arc<Shared>,
) -> Result<Vec<Handle<Vec<ConsumerOutcome>>>, String> {
    if workload.consumers == 0 {
        return Ok(Vec::new());
    }
    if let Driver::EventLoop { .. } = workload.driver {
        return Ok(vec![super::event_loop::run_consumers(
            topology, workload, shared,
        )?]);
    }
    Ok(topology
        .queues
        .iter()
        .map(|&(group, queue)| {
            let addr = topology.masters[group].clone();
            let (workload, shared) = (workload.clone(), shared.clone());
            thread::spawn(move || {
                workload::run_consumer(&addr, &workload, queue, shared).map(|o| vec![o])
            })
        })
        .collect())
}

/// How often the waiting thread looks at the producers: bounds the progress display's lag and
/// how far after the warmup the first CPU sample is taken.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Waits for the producers, sampling CPU when the measured phase starts and when the last
/// producer ends.
fn join_all(
    handles: Vec<Handle<Vec<ProducerOutcome>>>,
    bar: Option<&ProgressBar>,
    shared: &Shared,
    workload: &Workload,
    watched: &[Watched],
) -> (Result<Vec<ProducerOutcome>, String>, CpuUse) {
    let mut first_sample: Option<Sample> = None;
    while handles.iter().any(|h| !h.is_finished()) {
        if first_sample.is_none() && shared.origin.elapsed() >= workload.warmup {
            let acked = shared.acked_messages.load(Ordering::Relaxed);
            first_sample = Some(Sample::take(watched, acked));
        }
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
        // Polling thread handles that have no event to wait on together; the interval only
        // bounds the display's and the first sample's lag.
        thread::sleep(POLL_INTERVAL);
    }
    let last = Sample::take(watched, shared.acked_messages.load(Ordering::Relaxed));
    // A run shorter than the poll interval: the window is empty and reports nothing.
    let cpu = first_sample
        .map(|first| first.until(&last, watched))
        .unwrap_or_default();
    let outcomes = handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| Err("a producer thread panicked".into()))
        })
        .collect::<Result<Vec<Vec<ProducerOutcome>>, String>>()
        .map(|v| v.into_iter().flatten().collect());
    (outcomes, cpu)
}

fn join_all_consumers(
    handles: Vec<Handle<Vec<ConsumerOutcome>>>,
) -> Result<Vec<ConsumerOutcome>, String> {
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| Err("a consumer thread panicked".into()))
        })
        .collect::<Result<Vec<_>, String>>()
        .map(|v| v.into_iter().flatten().collect())
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
        acks: workload.acks,
        protocol: workload.protocol(),
        name: run_name_at(mode, workload.acks, workload.protocol(), workload.producers),
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
        driver: workload.driver.describe(),
        cpu: CpuUse::default(),
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
