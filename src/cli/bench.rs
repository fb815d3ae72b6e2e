//! `ringmq bench`: parses the workload and matrix options and hands them to
//! [`crate::bench::matrix`].

use crate::bench::matrix::{run_matrix, Matrix, Target};
use crate::bench::mode::{BenchMode, Protocol};
use crate::bench::plot::LatencyAxis;
use crate::bench::workload::{Driver, Workload, TIMESTAMP_BYTES};
use crate::cli::app::TLS_CA_ENV;
use crate::cli::produce::MAX_WINDOW;
use crate::protocol::Acks;
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Benchmark an existing broker HOST:PORT instead of starting one per run.
    #[arg(long)]
    pub broker: Option<String>,
    /// Name servers HOST:PORT[,HOST:PORT...]: benchmark the broker groups they list instead of
    /// starting brokers. Each run creates its topic on every group's master and spreads the
    /// producers' requests and the consumers over every group's queues. Without it,
    /// RINGMQ_NAMESRV is used unless --broker is on the command line, as for the client
    /// commands.
    #[arg(long, conflicts_with = "broker")]
    pub namesrv: Option<String>,
    /// With --namesrv: only this cluster's broker groups (default: every cluster listed).
    #[arg(long = "cluster", default_value = "", requires = "namesrv")]
    pub cluster_name: String,
    /// With --broker: the broker's pid, whose CPU each run reports (default: the local process
    /// listening on the broker's port, if there is one).
    #[arg(long, requires = "broker")]
    pub broker_pid: Option<u32>,
    /// TLS to --broker (or the brokers --namesrv lists): --tls-ca, --tls-cert, --tls-key.
    #[command(flatten)]
    pub tls: super::app::TlsArgs,
    /// How producers are run: `event-loop` multiplexes every producer's connections on
    /// --driver-threads threads; `threads` gives each producer its own OS thread and blocking
    /// client.
    #[arg(long, value_enum, default_value_t = DriverKind::EventLoop)]
    pub driver: DriverKind,
    /// Event-loop threads with --driver event-loop (producers are spread evenly over them).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub driver_threads: u32,
    /// Modes to run, comma-separated (default: SYNC_FLUSH,ASYNC_FLUSH,SYNC_MASTER,ASYNC_MASTER;
    /// with --broker or --namesrv, the brokers' own mode). SYNC_MASTER_X2 runs two SYNC_MASTER
    /// groups (each a master and a slave, half the shards each) behind an embedded name server;
    /// its ratio to SYNC_MASTER is the cost of two groups over one of the same total shards.
    #[arg(long, value_delimiter = ',')]
    pub modes: Vec<BenchMode>,
    /// Acknowledgement levels to run, comma-separated: `leader`, `all` (default: none named,
    /// the broker's `default_acks`). Each level is its own row of the matrix, run against
    /// fresh brokers like a mode, and a table gives each mode's `all` ÷ `leader` ratio.
    /// `none` is refused: nothing answers it, so there is no latency to measure.
    #[arg(long, value_delimiter = ',')]
    pub acks: Vec<Acks>,
    /// Wires to run, comma-separated: `native` (ringmq frames, the default), `kafka` (Kafka
    /// Produce requests to the broker's Kafka listener: embedded brokers open one, an external
    /// one is named with --kafka). Each is its own row; a table gives kafka ÷ native.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub protocol: Vec<Protocol>,
    /// With --broker and --protocol kafka: the broker's Kafka listener HOST:PORT.
    #[arg(long, requires = "broker")]
    pub kafka: Option<String>,
    /// Producers, each with its own connections and window of requests in flight.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub producers: u32,
    /// Producer counts to run, comma-separated (overrides --producers): the matrix's rows.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub producers_list: Vec<u32>,
    /// Consumer clients; 0 measures no end-to-end latency. Each queue is long-polled on its own
    /// connection.
    #[arg(long, default_value_t = 1)]
    pub consumers: u32,
    /// Message body size in bytes (the first 8 carry the send timestamp).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Messages per produce request.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub batch: u32,
    /// Queues of the benchmark topic.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub queues: u32,
    /// Distinct message keys (queue chosen by key hash); 0 = no keys, queues round-robin.
    #[arg(long, default_value_t = 0)]
    pub keys: u32,
    /// Length of the measured phase in seconds (default 10 unless --count is given).
    #[arg(long, conflicts_with = "count")]
    pub duration: Option<f64>,
    /// Measured messages in total over all producers, instead of --duration.
    #[arg(long)]
    pub count: Option<u64>,
    /// Seconds of unmeasured load before the measured phase.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Produce requests in flight per producer; 1 = closed loop, each waits for its ack.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_WINDOW as i64))]
    pub window: u32,
    /// Open loop: total messages per second over all producers; latency counts from each
    /// message's scheduled send time (coordinated omission corrected).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Scale of the latency axis of the percentile charts.
    #[arg(long, value_enum, default_value_t = LatencyAxis::Linear)]
    pub latency_axis: LatencyAxis,
    /// Results folder (default results/<timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Shards of each embedded broker (default: one per core).
    #[arg(long)]
    pub shards: Option<usize>,
    /// TOML configuration for embedded brokers (default: the broker's built-in defaults).
    #[arg(long)]
    pub broker_config: Option<PathBuf>,
    /// Where embedded brokers' fresh stores are created (default: the system temp dir).
    #[arg(long)]
    pub store_root: Option<PathBuf>,
}

/// `--driver`'s values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverKind {
    EventLoop,
    Threads,
}

impl BenchArgs {
    fn workload(&self) -> Result<Workload, String> {
        if self.size < TIMESTAMP_BYTES {
            return Err(format!(
                "--size must be at least {TIMESTAMP_BYTES}: the body carries the send timestamp"
            ));
        }
        let seconds = |flag: &str, v: f64| {
            Duration::try_from_secs_f64(v).map_err(|_| format!("{flag}: `{v}` is not a duration"))
        };
        let duration = match (self.duration, self.count) {
            (_, Some(0)) => return Err("--count must be at least 1".into()),
            (_, Some(_)) => None,
            (Some(d), None) if d > 0.0 => Some(seconds("--duration", d)?),
            (Some(_), None) => return Err("--duration must be positive".into()),
            (None, None) => Some(Duration::from_secs(10)),
        };
        if let Some(rate) = self.rate {
            if !(rate > 0.0 && rate.is_finite()) {
                return Err(format!("--rate: `{rate}` is not a positive rate"));
            }
        }
        Ok(Workload {
            topic: String::new(),
            producers: self.producers,
            consumers: self.consumers,
            queues: self.queues,
            keys: self.keys,
            size_bytes: self.size,
            batch: self.batch,
            window: self.window,
            warmup: seconds("--warmup", self.warmup)?,
            duration,
            count: self.count,
            rate_per_sec: self.rate,
            driver: match self.driver {
                DriverKind::EventLoop => Driver::EventLoop {
                    threads: self.driver_threads,
                },
                DriverKind::Threads => Driver::Threads,
            },
            acks: None,
            kafka: None,
        })
    }

    fn target(&self) -> Result<Target, String> {
        if let Some(namesrv) = &self.namesrv {
            return Ok(Target::Cluster {
                namesrv: namesrv.clone(),
                cluster: self.cluster_name.clone(),
            });
        }
        if let Some(addr) = &self.broker {
            return Ok(Target::External {
                addr: addr.clone(),
                pid: self.broker_pid,
            });
        }
        let config_toml = match &self.broker_config {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("--broker-config {}: {e}", path.display()))?,
            None => String::new(),
        };
        Ok(Target::Embedded {
            config_toml,
            shards: self.shards,
            store_root: self.store_root.clone().unwrap_or_else(std::env::temp_dir),
        })
    }
}

/// `results/<UTC timestamp>` (YYYYMMDD-HHMMSS).
fn default_out_dir() -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    PathBuf::from("results").join(format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    ))
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Refuses TLS where the bench cannot use it: with the embedded broker (plaintext) and with
/// the event-loop driver. `env_ca` is the value of `RINGMQ_TLS_CA`, which stands for the flag.
pub fn check_tls(args: &BenchArgs, env_ca: Option<std::ffi::OsString>) -> Result<(), String> {
    if args.tls.ca_path(env_ca).is_none() {
        return Ok(());
    }
    if args.broker.is_none() && args.namesrv.is_none() {
        return Err(format!(
            "--tls-ca (or {TLS_CA_ENV}): the embedded broker speaks plaintext; give --broker or --namesrv of a TLS broker"
        ));
    }
    if !matches!(args.driver, DriverKind::Threads) {
        // The event loop frames requests into raw non-blocking sockets; TLS goes through the
        // blocking client, which only the thread driver uses.
        return Err(format!(
            "--tls-ca (or {TLS_CA_ENV}): the event-loop driver speaks plaintext only; add --driver threads"
        ));
    }
    Ok(())
}

pub fn run(args: BenchArgs) -> Result<(), String> {
    check_tls(&args, std::env::var_os(TLS_CA_ENV))?;
    let workload = args.workload()?;
    let external = args.broker.is_some() || args.namesrv.is_some();
    let modes = match (external, args.modes.is_empty()) {
        (false, true) => BenchMode::ALL.to_vec(),
        _ => args.modes.clone(),
    };
    let producer_counts = if args.producers_list.is_empty() {
        vec![args.producers]
    } else {
        args.producers_list.clone()
    };
    if args.acks.contains(&Acks::None) {
        return Err(
            "--acks none: a produce at level none is never answered, so the bench cannot time it; run leader or all"
                .into(),
        );
    }
    let protocols = if args.protocol.is_empty() {
        vec![Protocol::Native]
    } else {
        let mut p = args.protocol.clone();
        p.dedup();
        p
    };
    if protocols.contains(&Protocol::Kafka) {
        if !matches!(args.driver, DriverKind::EventLoop) {
            return Err(
                "--protocol kafka runs on the event-loop driver; drop --driver threads".into(),
            );
        }
        if args.tls.ca_path(std::env::var_os(TLS_CA_ENV)).is_some() {
            return Err("--protocol kafka: the bench speaks plaintext Kafka only".into());
        }
    }
    let acks_levels = if args.acks.is_empty() {
        vec![None]
    } else {
        args.acks.iter().copied().map(Some).collect()
    };
    let matrix = Matrix {
        target: args.target()?,
        modes,
        acks_levels,
        protocols,
        kafka_addr: args.kafka.clone(),
        producer_counts,
        workload,
        out_dir: args.out.clone().unwrap_or_else(default_out_dir),
        progress: std::io::stdout().is_terminal(),
        latency_axis: args.latency_axis,
    };
    run_matrix(&matrix)
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;
    use crate::bench::matrix::Target;
    use crate::cli::app::{Cli, Command};

    fn bench_target(args: &[&str], env: Option<&str>) -> Result<Target, String> {
        let cli = Cli::parse_with_env(
            ["ringmq", "bench"].into_iter().chain(args.iter().copied()),
            env.map(str::to_string),
        )
        .map_err(|e| e.to_string())?;
        let Command::Bench(args) = cli.command else {
            panic!("not bench")
        };
        args.target()
    }

    /// `--namesrv` (or RINGMQ_NAMESRV when neither flag is typed) makes the cluster the target;
    /// `--broker` beats the variable and conflicts with the flag.
    #[test]
    fn namesrv_flag_and_variable_pick_the_cluster() {
        let cluster = |t: Target| match t {
            Target::Cluster { namesrv, cluster } => Some((namesrv, cluster)),
            _ => None,
        };
        let flag = bench_target(&["--namesrv", "n:1,n:2", "--cluster", "c"], None).unwrap();
        assert_eq!(cluster(flag), Some(("n:1,n:2".into(), "c".into())));
        let env = bench_target(&["--cluster", "c"], Some("e:1")).unwrap();
        assert_eq!(cluster(env), Some(("e:1".into(), "c".into())));
        let broker = bench_target(&["--broker", "b:1"], Some("e:1")).unwrap();
        assert!(matches!(broker, Target::External { ref addr, .. } if addr == "b:1"));
        assert!(bench_target(&["--broker", "b:1", "--namesrv", "n:1"], None).is_err());
        assert!(
            bench_target(&["--cluster", "c"], None).is_err(),
            "--cluster needs --namesrv"
        );
        let embedded = bench_target(&[], None).unwrap();
        assert!(matches!(embedded, Target::Embedded { .. }));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
