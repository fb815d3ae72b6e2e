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
