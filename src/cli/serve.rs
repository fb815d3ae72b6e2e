//! `ringmq serve`: starts the broker.

use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// TOML configuration file; flags override its values.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Store directory (default ./data).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Client listen address HOST:PORT (default 127.0.0.1:10911); port 0 picks a free port.
    #[arg(long)]
    pub listen: Option<String>,
    /// Number of shards, one executor pinned per core (default: one per core).
    #[arg(long)]
    pub shards: Option<usize>,
    /// SYNC_FLUSH or ASYNC_FLUSH.
    #[arg(long)]
    pub flush: Option<String>,
}

/// Runs the broker until SIGINT/SIGTERM. Returns a message for the user on failure.
pub fn run(args: ServeArgs) -> Result<(), String> {
    let _ = args;
    Err("serve is not implemented yet".to_string())
}
