//! `ringmq namesrv`: runs a name server (the `ringmq-namesrv` crate), a route registry that
//! keeps nothing on disk. See docs/cluster.md.

use super::controller::{read_secret_file, server_config, ElectionArgs};
use crate::namesrv::{
    NameServerConfig, DEFAULT_BROKER_EXPIRY_MS, DEFAULT_GROUP_EPOCH_RETENTION_MS, DEFAULT_LISTEN,
};
use clap::Args;
use ringmq_controller::core::DEFAULT_COMPACT_THRESHOLD;
use ringmq_controller::server;
use ringmq_controller::state::ElectionConfig;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct NamesrvArgs {
    /// Listen address HOST:PORT; port 0 picks a free port (the ready line names it).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Drop a broker from the routes after this long without a registration or heartbeat.
    #[arg(long, default_value_t = DEFAULT_BROKER_EXPIRY_MS)]
    pub broker_expiry_ms: u64,
    /// How long a broker group with no live broker keeps its highest master epoch (so a stale
    /// master cannot take it back); after it, the group starts afresh. At least
    /// --broker-expiry-ms.
    #[arg(long, default_value_t = DEFAULT_GROUP_EPOCH_RETENTION_MS)]
    pub group_epoch_retention_ms: u64,
    /// The brokers' shared secret (at least 32 bytes; their `namesrv_secret_file`): with it,
    /// only registrations signed with it are taken. Read from the file, never printed.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<std::path::PathBuf>,
    /// Also run a controller in this process (RocketMQ's `enableControllerInNamesrv`): its
    /// id, one of --controller-peers. Brokers then list the controllers' addresses in their
    /// `--controller`. Needs --controller-peers and --controller-store.
    #[arg(long, requires_all = ["controller_peers", "controller_store"])]
    pub controller_id: Option<u64>,
    /// Every controller, `ID=HOST:PORT,...`, as `ringmq controller --peers` (its own entry
    /// is where this process's controller listens: a port apart from --listen).
    #[arg(long, requires = "controller_id")]
    pub controller_peers: Option<String>,
    /// The embedded controller's store (Raft log, hard state, snapshots), as
    /// `ringmq controller --store`: the name server itself keeps nothing on disk.
    #[arg(long, requires = "controller_id")]
    pub controller_store: Option<PathBuf>,
    /// The embedded controller's `--broker-silent-ms`.
    #[arg(long, default_value_t = ElectionConfig::default().broker_silent_ms)]
    pub controller_broker_silent_ms: u64,
    /// The embedded controller's `--lease-ms`.
    #[arg(long, default_value_t = ElectionConfig::default().lease_ms)]
    pub controller_lease_ms: u64,
    /// The embedded controller's `--enable-elect-unclean-master`.
    #[arg(long)]
    pub controller_enable_elect_unclean_master: bool,
    /// The embedded controller's `--secret-file`: the controllers' shared secret (at least 32
    /// bytes), apart from the brokers' --secret-file. Read once, never printed.
    #[arg(long, value_name = "FILE", requires = "controller_id")]
    pub controller_secret_file: Option<PathBuf>,
    /// The embedded controller's `/metrics` endpoint, HOST:PORT (as `ringmq controller
    /// --metrics-listen`).
    #[arg(long, value_name = "HOST:PORT", requires = "controller_id")]
    pub controller_metrics_listen: Option<String>,
    /// Connections served at once (tests lower it).
    #[arg(long, hide = true)]
    pub max_connections: Option<usize>,
    /// Connections from one IP address at once.
    #[arg(long, hide = true)]
    pub max_connections_per_ip: Option<usize>,
    /// A frame not complete this long after its first byte closes its connection.
    #[arg(long, hide = true)]
    pub request_read_timeout_ms: Option<u64>,
    /// A connection silent this long is closed.
    #[arg(long, hide = true)]
    pub idle_timeout_ms: Option<u64>,
}

impl NamesrvArgs {
    pub fn config(&self) -> NameServerConfig {
        let defaults = NameServerConfig::default();
        let ms = Duration::from_millis;
        NameServerConfig {
            listen: self.listen.clone(),
            broker_expiry_ms: self.broker_expiry_ms,
            group_epoch_retention_ms: self.group_epoch_retention_ms,
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            max_connections_per_ip: self
                .max_connections_per_ip
                .unwrap_or(defaults.max_connections_per_ip),
            request_read_timeout: self
                .request_read_timeout_ms
                .map_or(defaults.request_read_timeout, ms),
            idle_timeout: self.idle_timeout_ms.map_or(defaults.idle_timeout, ms),
            secret_file: self.secret_file.clone(),
            ..defaults
        }
    }
}

/// Runs until SIGINT/SIGTERM. Returns a message for the user on failure. With
/// --controller-id the controller starts first, on threads of its own: its address joins the
/// name server's ready line, and a failure of the controller (its store) ends the process, as
/// it ends `ringmq controller`.
pub fn run(args: NamesrvArgs) -> Result<(), String> {
    let mut config = args.config();
    if let Some(id) = args.controller_id {
        let (Some(peers), Some(store)) = (&args.controller_peers, &args.controller_store) else {
            return Err("--controller-id needs --controller-peers and --controller-store".into());
        };
        let election = ElectionArgs {
            broker_silent_ms: args.controller_broker_silent_ms,
            lease_ms: args.controller_lease_ms,
            enable_elect_unclean_master: args.controller_enable_elect_unclean_master,
            compact_threshold: DEFAULT_COMPACT_THRESHOLD,
        };
        let secret = args
            .controller_secret_file
            .as_deref()
            .map(|path| read_secret_file("--controller-secret-file", path))
            .transpose()?;
        let mut controller_config = server_config(id, peers, store.clone(), &election, secret)?;
        controller_config.metrics_listen = args.controller_metrics_listen.clone();
        let controller = server::start(controller_config)?;
        config.ready_suffix = format!(" controller={} controller_id={id}", controller.listen);
        std::thread::Builder::new()
            .name("controller-watch".into())
            .spawn(move || {
                let cause = controller
                    .wait()
                    .err()
                    .unwrap_or_else(|| "it returned".into());
                tracing::error!("the embedded controller stopped: {cause}");
                eprintln!("ringmq namesrv: the embedded controller stopped: {cause}");
                std::process::exit(1);
            })
            .map_err(|e| format!("starting the controller's watcher: {e}"))?;
    }
    crate::namesrv::run(config)
}

#[cfg(test)]
mod tests {
    use crate::cli::app::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ringmq").chain(args.iter().copied()))
    }

    #[test]
    fn namesrv_flags_parse_with_defaults() {
        let Command::Namesrv(args) = parse(&["namesrv"]).unwrap().command else {
            panic!("not namesrv")
        };
        assert_eq!(args.listen, "127.0.0.1:9876");
        assert_eq!(args.broker_expiry_ms, 10_000);
        assert_eq!(args.group_epoch_retention_ms, 600_000);
        assert_eq!(args.config().max_connections, 1024);
        let Command::Namesrv(args) = parse(&[
            "namesrv",
            "--listen",
            "127.0.0.1:0",
            "--broker-expiry-ms",
            "1500",
            "--group-epoch-retention-ms",
            "60000",
            "--max-connections",
            "2",
            "--idle-timeout-ms",
            "500",
        ])
        .unwrap()
        .command
        else {
            panic!("not namesrv")
        };
        let config = args.config();
        assert_eq!(
            (config.listen.as_str(), config.broker_expiry_ms),
            ("127.0.0.1:0", 1500)
        );
        assert_eq!(config.group_epoch_retention_ms, 60_000);
        assert_eq!(config.max_connections, 2);
        assert_eq!(config.max_connections_per_ip, 256);
        assert_eq!(config.idle_timeout, std::time::Duration::from_millis(500));
        assert!(parse(&["namesrv", "--broker-expiry-ms", "soon"]).is_err());
    }

    #[test]
    fn an_embedded_controller_needs_its_id_peers_and_store() {
        let Command::Namesrv(args) = parse(&[
            "namesrv",
            "--controller-id",
            "2",
            "--controller-peers",
            "1=127.0.0.1:9877,2=127.0.0.1:9878",
            "--controller-store",
            "/var/lib/ringmq/controller-2",
            "--controller-secret-file",
            "/etc/ringmq/controller.secret",
        ])
        .unwrap()
        .command
        else {
            panic!("not namesrv")
        };
        assert_eq!(args.controller_id, Some(2));
        assert_eq!(args.controller_lease_ms, 1_600);
        assert_eq!(
            args.controller_secret_file.as_deref(),
            Some(std::path::Path::new("/etc/ringmq/controller.secret"))
        );
        assert!(parse(&["namesrv", "--controller-id", "1"]).is_err());
        assert!(parse(&["namesrv", "--controller-store", "/tmp/x"]).is_err());
        assert!(parse(&["namesrv", "--controller-peers", "1=127.0.0.1:1"]).is_err());
        assert!(parse(&["namesrv", "--controller-secret-file", "/etc/ringmq/c"]).is_err());
    }
}
