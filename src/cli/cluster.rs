//! `ringmq cluster status|promote|demote`: a broker's replication state, promotion of a slave
//! and demotion of a master (or re-pointing of a slave), all at runtime. `ringmq cluster list`
//! asks the name servers (`--namesrv`) for every cluster, group and broker instead.

use super::app::{describe, BrokerArgs, Format};
use super::output::{emit, table};
use crate::client::{Client, ClientError, NameServerClient};
use crate::protocol::admin::ClusterStatus;
use crate::protocol::message::{ClusterDemote, ClusterPromote, ClusterStatusRequest};
use crate::protocol::namesrv::Routes;
use clap::{Args, Subcommand};
use serde::Serialize;

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Role and, per shard: max, flushed and confirmed offsets; each slave's acked offset and lag.
    /// With --controller: every group as the controllers keep it (master, epochs,
    /// SyncStateSet, brokers) instead of one broker's view.
    Status {
        /// Controllers HOST:PORT[,HOST:PORT...] (`ringmq controller`).
        #[arg(long)]
        controller: Option<String>,
        /// The controllers' secret file (their --secret-file), with --controller.
        #[arg(long, value_name = "FILE", requires = "controller")]
        secret_file: Option<std::path::PathBuf>,
    },
    /// Turn the slave at --broker into the master of its group.
    Promote {
        /// SYNC_MASTER or ASYNC_MASTER.
        #[arg(long, default_value = "ASYNC_MASTER")]
        role: String,
    },
    /// Turn the master at --broker into a slave of the master whose HA port is --master (on a
    /// slave: follow that master instead of its current one).
    Demote {
        /// The new master's HA address, HOST:PORT.
        #[arg(long)]
        master: String,
    },
    /// Every cluster, broker group and broker the name servers (--namesrv, or
    /// RINGMQ_NAMESRV) list: role, epoch, addresses and the age of the last heartbeat.
    List,
}

pub fn run(args: ClusterArgs) -> Result<(), String> {
    type Send<'a> = Box<dyn Fn(&mut Client) -> Result<ClusterStatus, ClientError> + 'a>;
    let send: Send = match &args.command {
        // The name servers, not a broker.
        ClusterCommand::List => return list(&args),
        ClusterCommand::Status {
            controller: Some(controllers),
            secret_file,
        } => return controller_status(controllers, secret_file.as_deref(), args.broker.format),
        ClusterCommand::Status {
            controller: None, ..
        } => Box::new(|c| c.call(&ClusterStatusRequest {})),
        ClusterCommand::Promote { role } => {
            Box::new(move |c| c.call(&ClusterPromote { role: role.clone() }))
        }
        ClusterCommand::Demote { master } => Box::new(move |c| {
            c.call(&ClusterDemote {
                master: master.clone(),
            })
        }),
    };
    let mut client = args.broker.connect()?;
    // With --namesrv, the master it found, not the unused --broker default.
    let addr = client.bootstrap_addr().to_string();
    let status = send(&mut client).map_err(|e| describe(&addr, &e))?;
    match args.broker.format {
        Format::Json => emit(&serde_json::to_string(&status).expect("status serializes")),
        Format::Text => {
            print!("{}", status_text(&status));
            Ok(())
        }
    }
}

/// `cluster status --controller`: the status document of the controller that answers (the
/// leader when one is reachable), as JSON or one block per group.
fn controller_status(
    controllers: &str,
    secret_file: Option<&std::path::Path>,
    format: Format,
) -> Result<(), String> {
    let mut client = super::controller::connect(controllers, secret_file)?;
    let status = client
        .status()
        .map_err(|e| format!("controllers {controllers}: {e}"))?;
    match format {
        Format::Json => emit(&status.to_string()),
        Format::Text => {
            print!("{}", controller_status_text(&status));
            Ok(())
        }
    }
}

/// The controller status document as text: the leader, then each group.
pub fn controller_status_text(status: &serde_json::Value) -> String {
    let mut out = format!(
        "controller {} (leader: {}, voters: {}, commit index {})\n",
        status["id"],
        status["leader_addr"].as_str().unwrap_or("none"),
        status["voters"],
        status["commit_index"]
    );
    for group in status["groups"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{}/{}: master {} epoch {}, SyncStateSet {} (epoch {})\n",
            group["cluster"].as_str().unwrap_or(""),
            group["group"].as_str().unwrap_or(""),
            group["master_broker_id"],
            group["master_epoch"],
            group["sync_state_set"],
            group["sync_state_set_epoch"]
        ));
        let rows: Vec<Vec<String>> = group["brokers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| {
                vec![
                    b["broker_id"].to_string(),
                    b["role"].as_str().unwrap_or("").to_string(),
                    b["listen"].as_str().unwrap_or("").to_string(),
                    if b["alive"].as_bool() == Some(true) {
                        "alive"
                    } else {
                        "silent"
                    }
                    .to_string(),
                    b["why"].as_str().unwrap_or("(ask the leader)").to_string(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["BROKER", "ROLE", "LISTEN", "HEARD", "SYNC STATE"],
            &rows,
        ));
        for entry in group["epoch_history"].as_array().into_iter().flatten() {
            let t = &entry["timeline"];
            if !t.is_object() {
                continue;
            }
            let first_ack = t["first_ack_ms"]
                .as_u64()
                .map_or("none yet".to_string(), |ms| format!("{ms}"));
            out.push_str(&format!(
                "epoch {} ({} to broker {}): detected {}, decided {}, committed {}, role sent {}, promoted {}, first ack {} (ms from the start)\n",
                entry["epoch"],
                t["kind"].as_str().unwrap_or(""),
                entry["master_broker_id"],
                t["detected_ms"],
                t["decided_ms"],
                t["committed_ms"],
                t["role_sent_ms"],
                t["promoted_ms"],
                first_ack
            ));
        }
    }
    out
}

pub fn status_text(status: &ClusterStatus) -> String {
    let mut out = format!(
        "broker {} role {} flush {}\n\n",
        status.broker_name, status.role, status.flush_disk_type
    );
    let rows: Vec<Vec<String>> = status
        .shards
        .iter()
        .map(|s| {
            vec![
                s.shard.to_string(),
                s.role.clone(),
                s.epoch.to_string(),
                s.max_offset.to_string(),
                s.flushed_offset.to_string(),
                s.confirmed_offset.to_string(),
                match &s.master_link {
                    Some(link) if link.streaming => format!("following {}", link.master),
                    Some(link) => format!("connecting to {}", link.master),
                    None => format!("{} slave(s)", s.slaves.len()),
                },
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "SHARD",
            "ROLE",
            "EPOCH",
            "MAX",
            "FLUSHED",
            "CONFIRMED",
            "LINK",
        ],
        &rows,
    ));
    let slaves: Vec<Vec<String>> = status
        .shards
        .iter()
        .flat_map(|s| {
            s.slaves.iter().map(move |r| {
                vec![
                    s.shard.to_string(),
                    r.peer.clone(),
                    r.acked_offset.to_string(),
                    r.lag_bytes.to_string(),
                    r.lag_ms.to_string(),
                ]
            })
        })
        .collect();
    if !slaves.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["SHARD", "SLAVE", "ACKED", "LAG_BYTES", "LAG_MS"],
            &slaves,
        ));
    }
    out
}

/// `cluster list`: the first name server of `--namesrv` that answers is asked.
fn list(args: &ClusterArgs) -> Result<(), String> {
    let Some(namesrv) = args.broker.namesrv.as_deref() else {
        return Err(
            "cluster list asks the name servers: give --namesrv HOST:PORT[,HOST:PORT...] (or set RINGMQ_NAMESRV)"
                .into(),
        );
    };
    let routes = NameServerClient::connect_list(namesrv)
        .and_then(|mut client| client.routes(&args.broker.cluster_name))
        .map_err(|e| format!("name servers {namesrv}: {e}"))?;
    let listing = ClusterListing::from_routes(&routes);
    match args.broker.format {
        Format::Json => emit(&serde_json::to_string(&listing).expect("listing serializes")),
        Format::Text => {
            print!("{}", listing_text(&listing));
            Ok(())
        }
    }
}

/// `cluster list --format json`: `{"clusters":[{"name","groups":[{"name","brokers":[...]}]}]}`.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct ClusterListing {
    pub clusters: Vec<ListedCluster>,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct ListedCluster {
    pub name: String,
    pub groups: Vec<ListedGroup>,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct ListedGroup {
    pub name: String,
    pub brokers: Vec<ListedBroker>,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct ListedBroker {
    pub broker_id: u64,
    pub role: String,
    pub epoch: u32,
    pub listen: String,
    pub ha_listen: String,
    pub last_heartbeat_ms_ago: u64,
}

impl ClusterListing {
    /// Groups the name server's flat listing (ordered by cluster, group and broker id).
    pub fn from_routes(routes: &Routes) -> Self {
        let mut clusters: Vec<ListedCluster> = Vec::new();
        for route in &routes.brokers {
            let b = &route.broker;
            if clusters.last().is_none_or(|c| c.name != b.cluster_name) {
                clusters.push(ListedCluster {
                    name: b.cluster_name.clone(),
                    groups: Vec::new(),
                });
            }
            let groups = &mut clusters.last_mut().expect("pushed above").groups;
            if groups.last().is_none_or(|g| g.name != b.broker_name) {
                groups.push(ListedGroup {
                    name: b.broker_name.clone(),
                    brokers: Vec::new(),
                });
            }
            groups
                .last_mut()
                .expect("pushed above")
                .brokers
                .push(ListedBroker {
                    broker_id: b.broker_id,
                    role: b.role.clone(),
                    epoch: b.epoch,
                    listen: b.listen.clone(),
                    ha_listen: b.ha_listen.clone(),
                    last_heartbeat_ms_ago: route.last_heartbeat_ms_ago,
                });
        }
        ClusterListing { clusters }
    }
}

pub fn listing_text(listing: &ClusterListing) -> String {
    let rows: Vec<Vec<String>> = listing
        .clusters
        .iter()
        .flat_map(|c| c.groups.iter().map(move |g| (c, g)))
        .flat_map(|(c, g)| g.brokers.iter().map(move |b| (c, g, b)))
        .map(|(c, g, b)| {
            vec![
                c.name.clone(),
                g.name.clone(),
                b.broker_id.to_string(),
                b.role.clone(),
                b.epoch.to_string(),
                b.listen.clone(),
                b.ha_listen.clone(),
                format!("{} ms ago", b.last_heartbeat_ms_ago),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no brokers registered\n".to_string();
    }
    table(
        &[
            "CLUSTER",
            "GROUP",
            "BROKER_ID",
            "ROLE",
            "EPOCH",
            "LISTEN",
            "HA_LISTEN",
            "HEARTBEAT",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use crate::cli::app::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ringmq").chain(args.iter().copied()))
    }

    /// `cluster list` takes the name servers; the broker subcommands keep `--broker`.
    #[test]
    fn cluster_list_takes_namesrv_and_the_others_keep_broker() {
        use super::ClusterCommand;
        let Command::Cluster(args) = parse(&[
            "cluster",
            "list",
            "--namesrv",
            "127.0.0.1:9876,127.0.0.1:9877",
            "--cluster",
            "prod",
            "--format",
            "json",
        ])
        .unwrap()
        .command
        else {
            panic!("not cluster")
        };
        assert!(matches!(args.command, ClusterCommand::List));
        assert_eq!(
            args.broker.namesrv.as_deref(),
            Some("127.0.0.1:9876,127.0.0.1:9877")
        );
        assert_eq!(args.broker.cluster_name, "prod");
        assert!(parse(&["cluster", "list", "--namesrv", "h:1", "--broker", "h:2"]).is_err());
        let Command::Cluster(args) = parse(&["cluster", "status", "--broker", "h:2"])
            .unwrap()
            .command
        else {
            panic!("not cluster")
        };
        assert!(matches!(
            args.command,
            ClusterCommand::Status {
                controller: None,
                ..
            }
        ));
        assert_eq!(args.broker.broker, "h:2");
    }

    #[test]
    fn cluster_list_groups_routes_by_cluster_and_group() {
        use super::{listing_text, ClusterListing};
        use crate::protocol::namesrv::{BrokerRegister, BrokerRoute, Routes};
        let route = |cluster: &str, group: &str, id: u64, role: &str| BrokerRoute {
            broker: BrokerRegister {
                cluster_name: cluster.into(),
                broker_name: group.into(),
                broker_id: id,
                role: role.into(),
                epoch: 3,
                flush_disk_type: "SYNC_FLUSH".into(),
                listen: format!("h:{id}"),
                ha_listen: String::new(),
                shard_ports: vec![],
                topics: vec![],
                shards: vec![],
                sequence: 1,
                signed_at_ms: 0,
                signature: vec![],
            },
            last_heartbeat_ms_ago: 40,
        };
        let routes = Routes {
            brokers: vec![
                route("c1", "a", 1, "SYNC_MASTER"),
                route("c1", "a", 2, "SLAVE"),
                route("c1", "b", 3, "ASYNC_MASTER"),
                route("c2", "a", 4, "SLAVE"),
            ],
        };
        let listing = ClusterListing::from_routes(&routes);
        let json = serde_json::to_value(&listing).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"clusters": [
                {"name": "c1", "groups": [
                    {"name": "a", "brokers": [
                        {"broker_id": 1, "role": "SYNC_MASTER", "epoch": 3, "listen": "h:1",
                         "ha_listen": "", "last_heartbeat_ms_ago": 40},
                        {"broker_id": 2, "role": "SLAVE", "epoch": 3, "listen": "h:2",
                         "ha_listen": "", "last_heartbeat_ms_ago": 40}]},
                    {"name": "b", "brokers": [
                        {"broker_id": 3, "role": "ASYNC_MASTER", "epoch": 3, "listen": "h:3",
                         "ha_listen": "", "last_heartbeat_ms_ago": 40}]}]},
                {"name": "c2", "groups": [
                    {"name": "a", "brokers": [
                        {"broker_id": 4, "role": "SLAVE", "epoch": 3, "listen": "h:4",
                         "ha_listen": "", "last_heartbeat_ms_ago": 40}]}]}]})
        );
        let text = listing_text(&listing);
        assert_eq!(text.lines().count(), 5, "{text}");
        assert!(
            text.lines()
                .nth(2)
                .unwrap()
                .starts_with("c1       a      2"),
            "{text}"
        );
        assert_eq!(
            listing_text(&ClusterListing::from_routes(&Routes { brokers: vec![] })),
            "no brokers registered\n"
        );
    }
}
