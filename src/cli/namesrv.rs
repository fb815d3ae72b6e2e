//! `ringmq namesrv`: runs a name server (the `ringmq-namesrv` crate), a route registry that
//! keeps nothing on disk. See docs/cluster.md.

use crate::namesrv::{NameServerConfig, DEFAULT_BROKER_EXPIRY_MS, DEFAULT_LISTEN};
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct NamesrvArgs {
    /// Listen address HOST:PORT; port 0 picks a free port (the ready line names it).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Drop a broker from the routes after this long without a registration or heartbeat.
    #[arg(long, default_value_t = DEFAULT_BROKER_EXPIRY_MS)]
    pub broker_expiry_ms: u64,
}

impl NamesrvArgs {
    pub fn config(&self) -> NameServerConfig {
        NameServerConfig {
            listen: self.listen.clone(),
            broker_expiry_ms: self.broker_expiry_ms,
            ..NameServerConfig::default()
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
        let Command::Namesrv(args) = parse(&[
            "namesrv",
            "--listen",
            "127.0.0.1:0",
            "--broker-expiry-ms",
            "1500",
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
        assert!(parse(&["namesrv", "--broker-expiry-ms", "soon"]).is_err());
    }
}
