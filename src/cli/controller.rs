//! `ringmq controller`: runs a controller (the `ringmq-controller` crate), or with a
//! subcommand asks the running ones: `status`, `add-peer`, `remove-peer`. See
//! docs/controller.md.

use crate::client::controller::ControllerClient;
use clap::{Args, Subcommand};
use ringmq_controller::core::DEFAULT_COMPACT_THRESHOLD;
use ringmq_controller::server::{self, ServerConfig};
use ringmq_controller::state::ElectionConfig;
use ringmq_protocol::auth::Secret;
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ControllerArgs {
    #[command(subcommand)]
    pub action: Option<ControllerAction>,
    /// This controller's id: one of the ids in --peers.
    #[arg(long)]
    pub id: Option<u64>,
    /// Every controller at the first start, `ID=HOST:PORT,...`; this controller listens on
    /// its own entry, for its peers and for brokers alike. Later membership changes are made
    /// with add-peer/remove-peer and kept in the store.
    #[arg(long)]
    pub peers: Option<String>,
    /// Directory of the Raft log, hard state and snapshots. Do not delete it: a controller
    /// restarted without its store has forgotten what it voted and committed.
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// A master not heard from this long is lost.
    #[arg(long, default_value_t = ElectionConfig::default().broker_silent_ms)]
    pub broker_silent_ms: u64,
    /// How long after its heartbeat's send time a master's lease runs; at most 90% of
    /// --broker-silent-ms less 200 ms (see docs/controller.md).
    #[arg(long, default_value_t = ElectionConfig::default().lease_ms)]
    pub lease_ms: u64,
    /// Elect a broker outside the SyncStateSet when none in it can be: available, but data
    /// only the lost members had is lost (recorded in the epoch history).
    #[arg(long)]
    pub enable_elect_unclean_master: bool,
    /// Log entries between snapshots.
    #[arg(long, default_value_t = DEFAULT_COMPACT_THRESHOLD, hide = true)]
    pub compact_threshold: u64,
    /// The controllers' shared secret (at least 32 bytes; the same file on every controller,
    /// the brokers' `controller_secret_file`): with it every connection, peers' and brokers'
    /// alike, must prove it holds the secret before it is served. Read once, never printed.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// HOST:PORT of an HTTP endpoint answering `GET /metrics` with this controller's view
    /// in Prometheus text: groups, masters, SyncStateSets, brokers, last failover timelines.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<String>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum ControllerAction {
    /// The controllers' view: leader, members, every group's master, epochs and set (JSON).
    Status {
        /// Controllers HOST:PORT[,HOST:PORT...].
        #[arg(long)]
        controller: String,
        /// The controllers' secret file (their --secret-file).
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
    },
    /// Adds a controller to the Raft group (start it with --peers listing the current
    /// members and itself, then add it).
    AddPeer {
        /// ID=HOST:PORT of the new controller.
        peer: String,
        #[arg(long)]
        controller: String,
        /// The controllers' secret file (their --secret-file).
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
    },
    /// Removes a controller from the Raft group (a dead one, before replacing it).
    RemovePeer {
        id: u64,
        #[arg(long)]
        controller: String,
        /// The controllers' secret file (their --secret-file).
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
    },
}

pub fn run(args: ControllerArgs) -> Result<(), String> {
    match args.action.clone() {
        Some(action) => run_action(action),
        None => serve(args),
    }
}

fn serve(args: ControllerArgs) -> Result<(), String> {
    let missing = |flag: &str| {
        format!("`ringmq controller` needs {flag} (or a subcommand: status, add-peer, remove-peer)")
    };
    let id = args.id.ok_or_else(|| missing("--id"))?;
    let peers = args.peers.as_deref().ok_or_else(|| missing("--peers"))?;
    let store = args.store.clone().ok_or_else(|| missing("--store"))?;
    let secret = args
        .secret_file
        .as_deref()
        .map(|path| read_secret_file("--secret-file", path))
        .transpose()?;
    let mut config = server_config(id, peers, store, &args.election(), secret)?;
    config.metrics_listen = args.metrics_listen.clone();
    server::run(config)
}

/// The controller settings both `ringmq controller` and a name server embedding one
/// (`ringmq namesrv --controller-id ...`) take, apart from where it is.
#[derive(Clone, Debug)]
pub struct ElectionArgs {
    pub broker_silent_ms: u64,
    pub lease_ms: u64,
    pub enable_elect_unclean_master: bool,
    pub compact_threshold: u64,
}

impl ControllerArgs {
    fn election(&self) -> ElectionArgs {
        ElectionArgs {
            broker_silent_ms: self.broker_silent_ms,
            lease_ms: self.lease_ms,
            enable_elect_unclean_master: self.enable_elect_unclean_master,
            compact_threshold: self.compact_threshold,
        }
    }
}

/// A controller's configuration from its flags: `peers` is `ID=HOST:PORT,...`; the election
/// settings are validated (a lease that could outlive the silence limit is refused); `secret`
/// is the controllers' shared secret (see [`read_secret_file`]).
pub fn server_config(
    id: u64,
    peers: &str,
    store: PathBuf,
    election: &ElectionArgs,
    secret: Option<Secret>,
) -> Result<ServerConfig, String> {
    let peers = server::parse_peers(peers)?;
    let config = ElectionConfig {
        broker_silent_ms: election.broker_silent_ms,
        lease_ms: election.lease_ms,
        enable_elect_unclean_master: election.enable_elect_unclean_master,
    };
    config.validate()?;
    Ok(ServerConfig {
        id,
        peers,
        store,
        election: config,
        compact_threshold: election.compact_threshold.max(1),
        secret,
        metrics_listen: None,
    })
}

/// The secret held by `path`, for the flag `flag`; an error names the flag and the file, never
/// the contents.
pub fn read_secret_file(flag: &str, path: &Path) -> Result<Secret, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    Secret::from_file_contents(bytes).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

/// A client of the controllers `list`, authenticated with `secret_file`'s secret when given.
pub fn connect(list: &str, secret_file: Option<&Path>) -> Result<ControllerClient, String> {
    let client = ControllerClient::connect_list(list).map_err(|e| e.to_string())?;
    Ok(match secret_file {
        Some(path) => client.with_secret(read_secret_file("--secret-file", path)?),
        None => client,
    })
}

fn run_action(action: ControllerAction) -> Result<(), String> {
    match action {
        ControllerAction::Status {
            controller,
            secret_file,
        } => {
            let status = connect(&controller, secret_file.as_deref())?
                .status()
                .map_err(|e| e.to_string())?;
            println!(
                "{}",
                serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?
            );
        }
        ControllerAction::AddPeer {
            peer,
            controller,
            secret_file,
        } => {
            let (id, addr) = server::parse_peer(&peer)?;
            connect(&controller, secret_file.as_deref())?
                .add_peer(id, &addr)
                .map_err(|e| e.to_string())?;
            println!("controller {id} ({addr}) added");
        }
        ControllerAction::RemovePeer {
            id,
            controller,
            secret_file,
        } => {
            connect(&controller, secret_file.as_deref())?
                .remove_peer(id)
                .map_err(|e| e.to_string())?;
            println!("controller {id} removed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ControllerAction;
    use crate::cli::app::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ringmq").chain(args.iter().copied()))
    }

    #[test]
    fn controller_flags_and_subcommands_parse() {
        let Command::Controller(args) = parse(&[
            "controller",
            "--id",
            "2",
            "--peers",
            "1=h:1,2=h:2",
            "--store",
            "/tmp/x",
        ])
        .unwrap()
        .command
        else {
            panic!("not controller")
        };
        assert_eq!(
            (args.id, args.broker_silent_ms, args.lease_ms),
            (Some(2), 2000, 1600)
        );
        assert!(!args.enable_elect_unclean_master);
        let Command::Controller(args) =
            parse(&["controller", "add-peer", "4=h:4", "--controller", "h:1"])
                .unwrap()
                .command
        else {
            panic!("not controller")
        };
        assert!(matches!(
            args.action,
            Some(ControllerAction::AddPeer { .. })
        ));
        assert!(parse(&[
            "controller",
            "--id",
            "1",
            "remove-peer",
            "3",
            "--controller",
            "h:1"
        ])
        .is_err());
    }
}
