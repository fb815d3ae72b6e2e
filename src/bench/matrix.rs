//! The matrix: every mode × every producer count with the same workload, and the files of the
//! results folder (per run `.hgrm` and `.hlog`, then `results.json`, `machine.json` and charts).

use super::cpu::Watched;
use super::embedded::{EmbeddedBroker, StartSpec};
use super::histogram::{write_interval_log, write_percentile_distribution, IntervalSeries};
use super::mode::{BenchMode, Protocol};
use super::plot::{self, LatencyAxis, RatioSeries, Series};
use super::report::{self, ModeRatio};
use super::run::{self, run_name_at, RunMeasurement, RunSummary};
use super::workload::{self, Workload};
use crate::client::cluster::RouteCache;
use crate::protocol::Acks;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the broker of each run comes from.
/// This is the one place that decides which broker address the clients use.
pub enum Target {
    /// A broker already running at this address; its mode is read from its metadata. `pid` is
    /// the process whose CPU is reported (given, or found from the port).
    External { addr: String, pid: Option<u32> },
    /// The broker groups the name servers at `namesrv` list (of `cluster`; empty: every
    /// cluster): each run creates its topic on every group's master and drives all their
    /// queues. Masters running on this machine are found by port for the CPU figures.
    Cluster { namesrv: String, cluster: String },
    /// Fresh brokers per run (for a multi-group mode also a fresh name server).
    Embedded {
        /// TOML for `--config` (empty: the broker's defaults).
        config_toml: String,
        shards: Option<usize>,
        store_root: PathBuf,
    },
}

pub struct Matrix {
    pub target: Target,
    pub modes: Vec<BenchMode>,
    /// The acknowledgement levels each mode runs at, each its own row (`[None]`: the
    /// broker's default only, as before `--acks`).
    pub acks_levels: Vec<Option<Acks>>,
    /// The wires each mode and level run over, each its own row (`[Native]` by default); a
    /// table gives each Kafka row's ratio to its native row.
    pub protocols: Vec<Protocol>,
    /// The Kafka listener of an external broker (`--kafka`), for [`Protocol::Kafka`] with
    /// [`Target::External`]; embedded brokers open their own.
    pub kafka_addr: Option<String>,
    pub producer_counts: Vec<u32>,
    /// The workload; `producers` and `topic` are set per run.
    pub workload: Workload,
    pub out_dir: PathBuf,
    pub progress: bool,
    /// Scale of the percentile charts' latency axis.
    pub latency_axis: LatencyAxis,
}

/// Runs the whole matrix, printing as it goes, and writes the results folder.
pub fn run_matrix(matrix: &Matrix) -> Result<(), String> {
    std::fs::create_dir_all(&matrix.out_dir)
        .map_err(|e| format!("creating {}: {e}", matrix.out_dir.display()))?;
    let modes = resolve_modes(matrix)?;
    let mut measurements = Vec::new();
    let mut ready_lines = Vec::new();
    for &mode in &modes {
        for &acks in &matrix.acks_levels {
            for &protocol in &matrix.protocols {
                for &producers in &matrix.producer_counts {
                    let (measurement, ready) = run_one(matrix, mode, acks, protocol, producers)?;
                    ready_lines.extend(ready);
                    print_run(&measurement.summary);
                    write_run_files(&matrix.out_dir, &measurement)?;
                    measurements.push(measurement);
                }
            }
        }
    }
    let summaries: Vec<RunSummary> = measurements.iter().map(|m| m.summary.clone()).collect();
    let ratios = report::ratios(&summaries);
    println!();
    print!("{}", report::matrix_table(&summaries));
    if !ratios.is_empty() {
        println!();
        print!("{}", report::ratio_table(&ratios));
    }
    let acks_ratios = report::acks_ratios(&summaries);
    if !acks_ratios.is_empty() {
        println!();
        print!("{}", report::acks_ratio_table(&acks_ratios));
    }
    let protocol_ratios = report::protocol_ratios(&summaries);
    if !protocol_ratios.is_empty() {
        println!();
        print!("{}", report::protocol_ratio_table(&protocol_ratios));
    }
    write_results_json(matrix, &summaries, &ratios, &acks_ratios, &protocol_ratios)?;
    write_machine_json(matrix, &ready_lines)?;
    write_plots(&matrix.out_dir, &measurements, matrix.latency_axis)?;
    if !ratios.is_empty() {
        plot::ratios_by_producers(&matrix.out_dir, "mode-ratios", &ratio_series(&ratios))?;
    }
    println!("\nresults in {}", matrix.out_dir.display());
    Ok(())
}

fn resolve_modes(matrix: &Matrix) -> Result<Vec<BenchMode>, String> {
    let addr = match &matrix.target {
        Target::External { addr, .. } => addr.clone(),
        Target::Cluster { namesrv, cluster } => cluster_masters(namesrv, cluster, 0)?.remove(0),
        Target::Embedded { .. } => return Ok(matrix.modes.clone()),
    };
    let addr = &addr;
    let client = workload::connect(addr)?;
    let reported = client.metadata().flush_disk_type.clone();
    let role = client.metadata().role.clone();
    let mode = BenchMode::from_metadata(&role, &reported)
        .ok_or_else(|| format!("broker {addr} reports an unknown flush mode `{reported}`"))?;
    if !matrix.modes.is_empty() && matrix.modes != [mode] {
        return Err(format!(
            "broker {addr} runs {mode}; --modes can only name that mode with --broker or --namesrv"
        ));
    }
    Ok(vec![mode])
}

fn run_one(
    matrix: &Matrix,
    mode: BenchMode,
    acks: Option<Acks>,
    protocol: Protocol,
    producers: u32,
) -> Result<(RunMeasurement, Option<String>), String> {
    let name = run_name_at(mode, acks, protocol, producers);
    let kafka = protocol == Protocol::Kafka;
    let mut workload = Workload {
        producers,
        acks,
        topic: format!(
            "bench-{}-{}",
            name.to_ascii_lowercase().replace('_', "-"),
            workload::wall_ns()
        ),
        ..matrix.workload.clone()
    };
    match &matrix.target {
        Target::External { addr, pid } => {
            if kafka {
                workload.kafka = Some(matrix.kafka_addr.clone().ok_or(
                    "--protocol kafka with --broker needs --kafka HOST:PORT (its Kafka listener)",
                )?);
            }
            let watched: Vec<Watched> = pid
                .or_else(|| external_pid(addr))
                .map(|pid| Watched {
                    label: "broker",
                    pid,
                })
                .into_iter()
                .collect();
            let masters = [addr.clone()];
            let result = run::run(&masters, mode, &workload, matrix.progress, &watched)?;
            Ok((result, None))
        }
        Target::Cluster { namesrv, cluster } => {
            if kafka {
                return Err(
                    "--protocol kafka drives one broker (--broker or embedded), not --namesrv"
                        .into(),
                );
            }
            let masters = cluster_masters(namesrv, cluster, 0)?;
            let watched: Vec<Watched> = masters
                .iter()
                .filter_map(|addr| external_pid(addr))
                .map(|pid| Watched {
                    label: "broker",
                    pid,
                })
                .collect();
            let result = run::run(&masters, mode, &workload, matrix.progress, &watched)?;
            Ok((result, None))
        }
        Target::Embedded {
            config_toml,
            shards,
            store_root,
        } => {
            let groups = mode.groups();
            if kafka && groups > 1 {
                return Err(format!(
                    "--protocol kafka drives one broker group; {mode} runs {groups}"
                ));
            }
            // The master opens a Kafka listener on a free port for a Kafka row (its address is
            // in the ready line); the rest of the configuration is the native row's.
            let kafka_toml = format!("{config_toml}\nkafka_listen = \"127.0.0.1:0\"\n");
            let config_toml = if kafka { &kafka_toml } else { config_toml };
            let namesrv = match groups {
                1 => None,
                _ => Some(EmbeddedBroker::start_namesrv(
                    store_root,
                    &format!("{name}-namesrv"),
                    &matrix.out_dir,
                )?),
            };
            let namesrv_addr = namesrv.as_ref().map(|n| n.addr.clone());
            let controller = match mode.controlled() {
                true => Some(EmbeddedBroker::start_controller(
                    store_root,
                    &format!("{name}-controller"),
                    &matrix.out_dir,
                )?),
                false => None,
            };
            let controller_addr = controller.as_ref().map(|c| c.addr.clone());
            // Several groups split the one-group run's shards between them, so the comparison
            // holds the total fixed.
            let group_shards = match groups {
                1 => *shards,
                n => Some((shards.unwrap_or_else(default_shards) / n).max(1)),
            };
            let processes = mode.broker_processes();
            // Each group on its own CPUs, as the one group's shards are: a broker pins shard
            // `n` to the `n`th CPU of its mask, so unrestricted one-shard brokers would all
            // share the first CPU.
            let group_cpus = match groups {
                1 => vec![Vec::new()],
                n => super::embedded::split_cpus(&super::embedded::allowed_cpus(), n),
            };
            let mut brokers: Vec<EmbeddedBroker> = Vec::new();
            let mut masters = Vec::new();
            for (group, cpus) in group_cpus.iter().enumerate() {
                let group_name = format!("g{group}");
                let first = brokers.len();
                for (index, process) in processes.iter().enumerate() {
                    let master_ha = (index > 0)
                        .then(|| brokers[first].ready_field("ha"))
                        .flatten();
                    let stem = match groups {
                        1 => format!("{name}-{index}"),
                        _ => format!("{name}-{group_name}-{index}"),
                    };
                    let spec = StartSpec {
                        process,
                        config_toml,
                        shards: group_shards,
                        store_root,
                        name: &stem,
                        out_dir: &matrix.out_dir,
                        master_ha: master_ha.as_deref(),
                        group: namesrv_addr.as_deref().map(|n| (n, group_name.as_str())),
                        controller: controller_addr.as_deref().map(|c| (c, group_name.as_str())),
                        cpus: Some(cpus.as_slice()).filter(|c| !c.is_empty()),
                    };
                    brokers.push(EmbeddedBroker::start(&spec)?);
                }
                // In controller mode the controller picks the master among the group's brokers.
                let master = match &controller_addr {
                    Some(c) => super::embedded::controlled_master(c, &group_name, processes.len())?,
                    None => brokers[first].addr.clone(),
                };
                if processes.len() > 1 {
                    super::embedded::wait_for_slaves(&master, processes.len() - 1)?;
                }
                masters.push(master);
                if kafka {
                    workload.kafka = Some(
                        brokers[first]
                            .ready_field("kafka")
                            .ok_or("the embedded broker's ready line names no Kafka listener")?,
                    );
                }
            }
            // With a name server the clients take the masters from its routes, as `--namesrv`
            // does, once every group has registered.
            if let Some(namesrv) = &namesrv_addr {
                masters = cluster_masters(namesrv, super::embedded::BENCH_CLUSTER, groups)?;
            }
            let ready = brokers[0].ready_line.clone();
            // A master is the broker the clients were given (in controller mode not always the
            // first started).
            let watched: Vec<Watched> = brokers
                .iter()
                .filter_map(|b| {
                    let label = if masters.contains(&b.addr) {
                        "broker"
                    } else {
                        "slave"
                    };
                    b.pid().map(|pid| Watched { label, pid })
                })
                .collect();
            let result = run::run(&masters, mode, &workload, matrix.progress, &watched)
                .map_err(|e| format!("{name}: {e}\n{}", brokers[0].log_tail()));
            for broker in brokers {
                broker.stop()?;
            }
            if let Some(namesrv) = namesrv {
                namesrv.stop()?;
            }
            if let Some(controller) = controller {
                controller.stop()?;
            }
            Ok((result?, Some(ready)))
        }
    }
}

/// Shards of an embedded broker started without `--shards`: the broker's default, one per core.
fn default_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How long embedded brokers may take to appear in their name server's routes.
const REGISTER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The master of every broker group the name servers at `namesrv` list (of `cluster`; empty:
/// all), in group-name order. With `expect_groups` > 0, waits until that many groups have a
/// master (embedded brokers register right after their ready line).
pub fn cluster_masters(
    namesrv: &str,
    cluster: &str,
    expect_groups: usize,
) -> Result<Vec<String>, String> {
    let fail = |e: crate::client::ClientError| workload::describe(namesrv, &e);
    let mut cache = RouteCache::connect(namesrv, cluster).map_err(fail)?;
    let deadline = std::time::Instant::now() + REGISTER_TIMEOUT;
    loop {
        let route = cache.refresh().map_err(fail)?;
        let masters: Vec<String> = route
            .groups
            .values()
            .filter_map(|g| g.master.as_ref().map(|m| m.listen.clone()))
            .collect();
        let complete = masters.len() == route.groups.len();
        if expect_groups == 0 && !masters.is_empty() && complete {
            return Ok(masters);
        }
        if expect_groups > 0 && masters.len() >= expect_groups {
            return Ok(masters);
        }
        if expect_groups == 0 {
            let missing: Vec<&str> = route
                .groups
                .values()
                .filter(|g| g.master.is_none())
                .map(|g| g.name.as_str())
                .collect();
            return Err(match route.groups.is_empty() {
                true => format!("the name servers at {namesrv} list no broker"),
                false => format!(
                    "broker groups without a master in the routes of {namesrv}: {}",
                    missing.join(", ")
                ),
            });
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "{} of {expect_groups} broker groups registered with the name server at \
                 {namesrv} within {} s",
                masters.len(),
                REGISTER_TIMEOUT.as_secs()
            ));
        }
        // Registration has no event a client can wait on; the interval only bounds start-up.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The pid of the broker at `addr` when it runs on this machine (see [`super::cpu`]).
fn external_pid(addr: &str) -> Option<u32> {
    let (host, port) = addr.rsplit_once(':')?;
    if !super::cpu::is_local_host(host) {
        return None;
    }
    super::cpu::pid_listening_on(port.parse().ok()?)
}

fn print_run(run: &RunSummary) {
    println!("== {} ==", run.name);
    println!("{}", report::kafka_line(run));
    println!("{}", report::microsecond_lines(run));
    println!("{}", report::cpu_line(run));
    if run.failed_messages > 0 || run.stored_without_guarantee > 0 {
        println!(
            "warning: {} messages failed, {} stored without the mode's guarantee{}",
            run.failed_messages,
            run.stored_without_guarantee,
            run.first_failure
                .as_deref()
                .map(|f| format!(" (first failure: {f})"))
                .unwrap_or_default()
        );
    }
}

fn create(path: &Path) -> Result<std::io::BufWriter<std::fs::File>, String> {
    std::fs::File::create(path)
        .map(std::io::BufWriter::new)
        .map_err(|e| format!("creating {}: {e}", path.display()))
}

fn write_run_files(out_dir: &Path, m: &RunMeasurement) -> Result<(), String> {
    let name = &m.summary.name;
    for (what, histogram) in [("produce", &m.produce), ("e2e", &m.e2e)] {
        let path = out_dir.join(format!("{name}.{what}.hgrm"));
        let mut file = create(&path)?;
        write_percentile_distribution(histogram, &mut file)
            .and_then(|_| file.flush())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    let path = out_dir.join(format!("{name}.hlog"));
    let mut file = create(&path)?;
    let series = [
        IntervalSeries {
            tag: "produce",
            intervals: &m.produce_intervals,
        },
        IntervalSeries {
            tag: "e2e",
            intervals: &m.e2e_intervals,
        },
    ];
    write_interval_log(
        &mut file,
        m.started_at,
        &format!("ringmq bench {name}"),
        &series,
    )
    .and_then(|_| file.flush())
    .map_err(|e| format!("writing {}: {e}", path.display()))
}

fn workload_json(w: &Workload, matrix: &Matrix) -> serde_json::Value {
    json!({
        "producers_list": matrix.producer_counts,
        "consumers": w.consumers,
        "queues": w.queues,
        "keys": w.keys,
        "size_bytes": w.size_bytes,
        "batch": w.batch,
        "window": w.window,
        "warmup_secs": w.warmup.as_secs_f64(),
        "duration_secs": w.duration.map(|d| d.as_secs_f64()),
        "count": w.count,
        "rate_per_sec": w.rate_per_sec,
        "driver": w.driver.describe(),
    })
}

fn write_results_json(
    matrix: &Matrix,
    runs: &[RunSummary],
    ratios: &[ModeRatio],
    acks_ratios: &[report::AcksRatio],
    protocol_ratios: &[report::ProtocolRatio],
) -> Result<(), String> {
    let value = json!({
        "workload": workload_json(&matrix.workload, matrix),
        "modes": matrix.modes,
        "runs": runs,
        "ratios": ratios,
        // `all` against `leader` per mode and producer count (empty without both levels).
        "acks_ratios": acks_ratios,
        // Kafka against native per mode, level and producer count (empty without both).
        "protocol_ratios": protocol_ratios,
        "table": report::matrix_table(runs),
    });
    let path = matrix.out_dir.join("results.json");
    let text = serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

fn write_machine_json(matrix: &Matrix, ready_lines: &[String]) -> Result<(), String> {
    let (store_path, broker) = match &matrix.target {
        Target::External { addr, pid } => (
            std::env::temp_dir(),
            json!({ "external_broker": addr, "pid": pid }),
        ),
        Target::Cluster { namesrv, cluster } => (
            std::env::temp_dir(),
            json!({ "namesrv": namesrv, "cluster": cluster }),
        ),
        Target::Embedded {
            config_toml,
            shards,
            store_root,
        } => (
            store_root.clone(),
            json!({
                "config_toml": config_toml,
                "shards": shards,
                "ready_lines": ready_lines,
                "processes": matrix.modes.iter().map(|m| json!({
                    "mode": m,
                    "groups": m.groups(),
                    "processes": m.broker_processes(),
                    "effective_config": effective_config(config_toml, *m, *shards),
                })).collect::<Vec<_>>(),
            }),
        ),
    };
    let value = super::machine::describe(&store_path, broker);
    let path = matrix.out_dir.join("machine.json");
    let text = serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// The configuration an embedded broker of `mode` runs with (defaults, the file, the flags),
/// as TOML; the listen address and store are per run and come from the ready lines.
fn effective_config(config_toml: &str, mode: BenchMode, shards: Option<usize>) -> String {
    let mut config = match crate::config::BrokerConfig::from_toml(config_toml) {
        Ok(config) => config,
        Err(e) => return format!("invalid: {e}"),
    };
    if let Some(process) = mode.broker_processes().first() {
        config.flush_disk_type = process.flush_disk_type;
    }
    if let Some(shards) = shards {
        config.shards = shards;
    }
    config.to_toml()
}

/// The ratio table as chart lines: per mode pair, msg/s ratio and p99 ratio by producers.
pub fn ratio_series(ratios: &[ModeRatio]) -> Vec<RatioSeries> {
    let mut out: Vec<RatioSeries> = Vec::new();
    for r in ratios {
        let pair = format!("{} / {}", r.mode.name(), r.baseline.name());
        for (metric, value) in [("msg/s", r.throughput_ratio), ("p99", r.p99_ratio)] {
            let label = format!("{pair} {metric}");
            match out.iter_mut().find(|s| s.label == label) {
                Some(series) => series.points.push((r.producers, value)),
                None => out.push(RatioSeries {
                    label,
                    points: vec![(r.producers, value)],
                }),
            }
        }
    }
    for series in &mut out {
        series.points.sort_by_key(|p| p.0);
    }
    out
}

fn write_plots(
    out_dir: &Path,
    measurements: &[RunMeasurement],
    axis: LatencyAxis,
) -> Result<(), String> {
    let produce: Vec<Series<'_>> = measurements
        .iter()
        .map(|m| Series {
            label: m.summary.name.clone(),
            histogram: &m.produce,
        })
        .collect();
    plot::latency_by_percentile(
        out_dir,
        "produce-latency-by-percentile",
        "Produce latency by percentile (send → ack)",
        &produce,
        axis,
    )?;
    let e2e: Vec<Series<'_>> = measurements
        .iter()
        .filter(|m| !m.e2e.is_empty())
        .map(|m| Series {
            label: m.summary.name.clone(),
            histogram: &m.e2e,
        })
        .collect();
    if !e2e.is_empty() {
        plot::latency_by_percentile(
            out_dir,
            "e2e-latency-by-percentile",
            "End-to-end latency by percentile (born → consumed)",
            &e2e,
            axis,
        )?;
    }
    // The last second of a run is partial (the stragglers acknowledged after the measured
    // phase ends) and would draw as a drop; the chart leaves it out, results.json and the .hlog
    // keep every interval.
    let throughput: Vec<(String, Vec<u64>)> = measurements
        .iter()
        .map(|m| {
            let series = whole_seconds(&m.summary.messages_per_second_series);
            (m.summary.name.clone(), series.to_vec())
        })
        .collect();
    plot::throughput_over_time(out_dir, "throughput-over-time", &throughput)
}

/// A per-second series without its last, partial second (a one-point series is kept).
pub fn whole_seconds(series: &[u64]) -> &[u64] {
    match series.len() {
        0 | 1 => series,
        n => &series[..n - 1],
    }
}
