//! `ringmq cluster status|promote|demote`: a broker's replication state, promotion of a slave
//! and demotion of a master, both at runtime.

use super::app::{describe, BrokerArgs, Format};
use super::output::{emit, table};
use crate::protocol::admin::ClusterStatus;
use crate::protocol::message::{ClusterDemote, ClusterPromote, ClusterStatusRequest};
use clap::{Args, Subcommand};

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
    Status,
    /// Turn the slave at --broker into the master of its group.
    Promote {
        /// SYNC_MASTER or ASYNC_MASTER.
        #[arg(long, default_value = "ASYNC_MASTER")]
        role: String,
    },
    /// Turn the master at --broker into a slave of the master whose HA port is --master.
    Demote {
        /// The new master's HA address, HOST:PORT.
        #[arg(long)]
        master: String,
    },
}

pub fn run(args: ClusterArgs) -> Result<(), String> {
    let mut client = args.broker.connect()?;
    let status = match &args.command {
        ClusterCommand::Status => client.call(&ClusterStatusRequest {}),
        ClusterCommand::Promote { role } => client.call(&ClusterPromote { role: role.clone() }),
        ClusterCommand::Demote { master } => client.call(&ClusterDemote {
            master: master.clone(),
        }),
    }
    .map_err(|e| describe(&args.broker.broker, &e))?;
    match args.broker.format {
        Format::Json => emit(&serde_json::to_string(&status).expect("status serializes")),
        Format::Text => {
            print!("{}", status_text(&status));
            Ok(())
        }
    }
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
