//! `ringmq namesrv`: runs a name server (the `ringmq-namesrv` crate), a route registry that
//! keeps nothing on disk. See docs/cluster.md.

use crate::namesrv::{
    NameServerConfig, DEFAULT_BROKER_EXPIRY_MS, DEFAULT_GROUP_EPOCH_RETENTION_MS, DEFAULT_LISTEN,
};
use clap::Args;
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

/// Runs until SIGINT/SIGTERM. Returns a message for the user on failure.
pub fn run(args: NamesrvArgs) -> Result<(), String> {
    crate::namesrv::run(args.config())
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
}
