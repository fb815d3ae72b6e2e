//! The top-level `ringmq` parser and dispatch. Every failure becomes a message on stderr and a
//! non-zero exit code; nothing here panics on user input.

use super::{
    acl, admin, bench, cluster, consume, controller, group, namesrv, produce, serve, stats, topic,
    user,
};
use crate::client::{Client, ClientError};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "ringmq",
    version,
    about = "A durable thread-per-core message broker"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the broker.
    Serve(serve::ServeArgs),
    /// Run a name server: the route registry brokers register with and clients ask.
    Namesrv(namesrv::NamesrvArgs),
    /// Run a controller (Raft-replicated broker ids, masters, epochs and SyncStateSets), or
    /// ask the running ones (status, add-peer, remove-peer).
    Controller(controller::ControllerArgs),
    /// Create, list, describe and delete topics.
    Topic(topic::TopicArgs),
    /// Send messages: one per line of stdin, or synthetic ones with --count.
    Produce(produce::ProduceArgs),
    /// Read messages from a topic's queues.
    Consume(consume::ConsumeArgs),
    /// Inspect consumer groups.
    Group(group::GroupArgs),
    /// The broker's counters and latency histograms, merged across shards.
    Stats(stats::StatsArgs),
    /// Replication state of a broker, and promotion of a slave.
    Cluster(cluster::ClusterArgs),
    /// Retention: delete expired segments now, show disk use and the append state.
    Admin(admin::AdminArgs),
    /// ACL rules: add, remove and list them (on a broker, every group's master with
    /// --namesrv, or a stopped broker's store with --store).
    Acl(acl::AclArgs),
    /// Measure throughput and latency: every mode x producer count, with HDR histograms,
    /// plots and a sync/async ratio table.
    Bench(bench::BenchArgs),
    /// SCRAM users: create (the keys are computed here, the broker never sees the
    /// password), delete, list; on a broker, every group's master, or a stopped broker's store.
    User(user::UserArgs),
}

impl Command {
    /// The TLS flags of a command that talks to brokers.
    pub(crate) fn tls_args(&self) -> Option<&TlsArgs> {
        match self {
            Command::Serve(_) | Command::Namesrv(_) | Command::Controller(_) => None,
            Command::Topic(args) => Some(&args.broker.tls),
            Command::Produce(args) => Some(&args.broker.tls),
            Command::Consume(args) => Some(&args.broker.tls),
            Command::Group(args) => Some(&args.broker.tls),
            Command::Stats(args) => Some(&args.broker.tls),
            Command::Cluster(args) => Some(&args.broker.tls),
            Command::Admin(args) => Some(&args.broker.tls),
            Command::Acl(args) => Some(&args.broker.tls),
            Command::Bench(args) => Some(&args.tls),
            Command::User(args) => Some(&args.broker.tls),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// Options shared by every client subcommand.
#[derive(Args, Debug, Clone)]
pub struct BrokerArgs {
    /// Bootstrap broker address HOST:PORT.
    #[arg(long, global = true, default_value = "127.0.0.1:10911")]
    pub broker: String,
    /// Name servers HOST:PORT[,HOST:PORT...]: find the brokers through them instead of
    /// --broker (any of them is asked, the next one when it fails). Without it, RINGMQ_NAMESRV
    /// is used unless --broker is on the command line (an explicit flag wins).
    #[arg(long, global = true, conflicts_with = "broker")]
    pub namesrv: Option<String>,
    /// With --namesrv: only this cluster's broker groups (default: every cluster listed).
    #[arg(
        long = "cluster",
        global = true,
        default_value = "",
        requires = "namesrv"
    )]
    pub cluster_name: String,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// TLS to the brokers (docs/security.md): given a CA, every broker connection of the command
/// uses TLS; name-server connections stay plaintext.
#[derive(Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// PEM file of the CA(s) that signed the brokers' certificates: connect with TLS
    /// (default: RINGMQ_TLS_CA when set).
    #[arg(long = "tls-ca", global = true, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate chain for mutual TLS (with --tls-key and --tls-ca).
    #[arg(
        long = "tls-cert",
        global = true,
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(
        long = "tls-key",
        global = true,
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<std::path::PathBuf>,
    /// The SCRAM user of the same connections (kept here so every command that takes the TLS
    /// flags takes these too).
    #[command(flatten)]
    pub scram: ScramArgs,
}

/// SCRAM authentication of every broker connection (docs/security.md, "SCRAM"). A password is
/// never a command-line argument: it is read from a file, or from standard input.
#[derive(Args, Debug, Clone, Default)]
pub struct ScramArgs {
    /// SCRAM user to authenticate as (default: RINGMQ_USER when set); needs --password-file.
    #[arg(long = "user", global = true, value_name = "NAME")]
    pub user: Option<String>,
    /// File holding --user's password, one trailing newline ignored; `-`: the first line of
    /// standard input (default: RINGMQ_PASSWORD_FILE when set).
    #[arg(long = "password-file", global = true, value_name = "FILE")]
    pub password_file: Option<std::path::PathBuf>,
    /// SCRAM-SHA-256 or SCRAM-SHA-512.
    #[arg(
        long = "scram-mechanism",
        global = true,
        value_name = "MECHANISM",
        default_value = "SCRAM-SHA-256"
    )]
    pub mechanism: String,
}

/// The environment variables that stand for `--user` and `--password-file`.
pub const USER_ENV: &str = "RINGMQ_USER";
pub const PASSWORD_FILE_ENV: &str = "RINGMQ_PASSWORD_FILE";

/// A password from `path` (`-`: the first line of standard input, the rest stays there for
/// the command, `produce` say); `flag` names where the path came from in errors.
pub fn read_password(path: &std::path::Path, flag: &str) -> Result<Vec<u8>, String> {
    let bytes = if path.as_os_str() == "-" {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::stdin().lock(), &mut line)
            .map_err(|e| format!("{flag} -: reading standard input: {e}"))?;
        line.into_bytes()
    } else {
        std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?
    };
    crate::client::scram::password_from_file_contents(bytes)
        .map_err(|e| format!("{flag} {}: {e}", path.display()))
}

impl ScramArgs {
    /// Reads the password and makes the user the credentials of every broker connection of
    /// this process. A user without a password file, or the other way round, is refused
    /// naming what is missing.
    pub fn install(&self) -> Result<(), String> {
        let from_env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let user = self
            .user
            .clone()
            .or_else(|| from_env(USER_ENV).map(|v| v.to_string_lossy().into_owned()));
        let (file, flag) = match &self.password_file {
            Some(file) => (Some(file.clone()), "--password-file"),
            None => (
                from_env(PASSWORD_FILE_ENV).map(Into::into),
                PASSWORD_FILE_ENV,
            ),
        };
        let mechanism =
            ringmq_protocol::scram::Mechanism::from_name(&self.mechanism).ok_or_else(|| {
                format!(
                    "--scram-mechanism `{}`: use SCRAM-SHA-256 or SCRAM-SHA-512",
                    self.mechanism
                )
            })?;
        match (user, file) {
            (None, None) => Ok(()),
            (Some(user), None) => Err(format!(
                "--user {user}: give its password with --password-file FILE (`-` reads standard input) or {PASSWORD_FILE_ENV}; a password is never a command-line argument"
            )),
            (None, Some(_)) => Err(format!(
                "{flag}: give the user it belongs to with --user NAME (or {USER_ENV})"
            )),
            (Some(user), Some(file)) => {
                let password = read_password(&file, flag)?;
                let scram = crate::client::ClientScram::new(mechanism, user, password);
                crate::client::set_default_scram(scram.leak());
                Ok(())
            }
        }
    }
}

/// The environment variable that names the CA file when `--tls-ca` is not given.
pub const TLS_CA_ENV: &str = "RINGMQ_TLS_CA";

impl TlsArgs {
    /// `--tls-ca`, else a non-empty `env` (the value of [`TLS_CA_ENV`]).
    pub fn ca_path(&self, env: Option<std::ffi::OsString>) -> Option<std::path::PathBuf> {
        self.tls_ca
            .clone()
            .or_else(|| env.filter(|v| !v.is_empty()).map(Into::into))
    }

    /// Loads the files and makes TLS (and the SCRAM user, when given) the default of every
    /// broker connection of this process; the error names the flag and the file.
    pub fn install(&self) -> Result<(), String> {
        self.install_tls()?;
        self.scram.install()
    }

    fn install_tls(&self) -> Result<(), String> {
        let Some(ca) = self.ca_path(std::env::var_os(TLS_CA_ENV)) else {
            return match self.tls_cert {
                Some(_) => Err(format!(
                    "--tls-cert: a client certificate needs TLS; give --tls-ca FILE (or {TLS_CA_ENV})"
                )),
                None => Ok(()),
            };
        };
        let identity = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
        let tls = crate::client::ClientTls::from_files(&ca, identity).map_err(|e| {
            match &self.tls_ca {
                Some(_) => e,
                None => format!("{e} (from {TLS_CA_ENV})"),
            }
        })?;
        crate::client::set_default_tls(tls.leak());
        Ok(())
    }
}

/// The environment variable that names the name servers when neither flag is given.
pub const NAMESRV_ENV: &str = "RINGMQ_NAMESRV";

/// The subcommands that take [`BrokerArgs`] (`serve` has a `--namesrv` of its own), and
/// `bench`, whose `--broker`/`--namesrv` pair follows the same rule.
const CLIENT_COMMANDS: &[&str] = &[
    "topic", "produce", "consume", "group", "stats", "cluster", "admin", "bench", "acl", "user",
];

impl Cli {
    /// Parses `args` as if `--namesrv <namesrv_env>` (the value of [`NAMESRV_ENV`]) were on a
    /// client command line that names neither `--namesrv` nor `--broker`. Not clap's `env`:
    /// clap counts an environment value as given, so the variable would make every `--broker`
    /// command a conflict. Added to the arguments rather than set after parsing, so flags that
    /// require `--namesrv` (`--cluster`, `--retry-another-group`) accept the variable too.
    pub fn parse_with_env<I, T>(args: I, namesrv_env: Option<String>) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let client_command = args
            .get(1)
            .and_then(|a| a.to_str())
            .is_some_and(|a| CLIENT_COMMANDS.contains(&a));
        let names = |flag: &str| {
            args.iter().filter_map(|a| a.to_str()).any(|a| {
                a == flag
                    || a.strip_prefix(flag)
                        .is_some_and(|rest| rest.starts_with('='))
            })
        };
        let given = names("--broker") || names("--namesrv");
        if let Some(value) = namesrv_env.filter(|v| !v.trim().is_empty()) {
            if client_command && !given {
                args.push("--namesrv".into());
                args.push(value.into());
            }
        }
        Cli::try_parse_from(args)
    }
}

impl BrokerArgs {
    /// A client of one broker: `--broker`, or with `--namesrv` the master of the only broker
    /// group the name servers list (a command about one broker refuses to pick among several).
    pub fn connect(&self) -> Result<Client, String> {
        match &self.namesrv {
            Some(namesrv) => super::routed::single_master(self, namesrv),
            None => Client::connect(&self.broker).map_err(|e| describe(&self.broker, &e)),
        }
    }

    /// What errors name: the broker, or the name servers.
    pub fn target(&self) -> &str {
        self.namesrv.as_deref().unwrap_or(&self.broker)
    }
}

/// A message for a user (see [`ClientError::for_user`]).
pub fn describe(broker: &str, error: &ClientError) -> String {
    error.for_user(broker)
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    if let Some(tls) = cli.command.tls_args() {
        if let Err(e) = tls.install() {
            eprintln!("error: {e}");
            return 2;
        }
    }
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Namesrv(args) => namesrv::run(args),
        Command::Controller(args) => controller::run(args),
        Command::Topic(args) => topic::run(args),
        Command::Produce(args) => produce::run(args),
        Command::Consume(args) => consume::run(args),
        Command::Group(args) => group::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Cluster(args) => cluster::run(args),
        Command::Admin(args) => admin::run(args),
        Command::Acl(args) => acl::run(args),
        Command::Bench(args) => bench::run(args),
        Command::User(args) => user::run(args),
    };
    match result {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("ringmq: {message}");
            1
        }
    }
}

/// Parses `args` (clap prints help, version and usage errors itself) and runs the command.
pub fn main_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match Cli::parse_with_env(args, std::env::var(NAMESRV_ENV).ok()) {
        Ok(cli) => {
            install_logger(matches!(
                cli.command,
                Command::Serve(_) | Command::Namesrv(_) | Command::Controller(_)
            ));
            run(cli)
        }
        Err(e) => {
            let _ = e.print();
            if e.use_stderr() {
                2
            } else {
                0
            }
        }
    }
}

/// Logs go to stderr (stdout carries data and the broker's ready line). The broker logs at
/// `info` by default; client commands only at `warn`. `RUST_LOG` overrides both. glommio
/// reports its fallbacks (io_uring buffer registration, probe errors) only through the `log`
/// crate, which this subscriber captures too.
fn install_logger(serving: bool) {
    let default = if serving { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .try_init();
}
