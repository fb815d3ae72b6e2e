//! `ringmq group describe`: a consumer group's committed offsets and lag per queue;
//! `ringmq group dlq` ([`super::dlq`]): its dead letters.

use super::app::{describe, BrokerArgs, Format};
use super::output::{emit, table};
use crate::protocol::message::{GroupDescribe, GroupDescription};
use clap::{Args, Subcommand};
use serde_json::json;

#[derive(Args, Debug)]
pub struct GroupArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(subcommand)]
    pub command: GroupCommand,
}

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Per topic and queue: committed offset, max offset, lag.
    Describe { group: String },
    /// The group's dead letters (`%DLQ%<group>`): origin topic, queue and offset, attempts and
    /// a body preview.
    Dlq { group: String },
}

pub fn run(args: GroupArgs) -> Result<(), String> {
    let group = match args.command {
        GroupCommand::Describe { group } => group,
        GroupCommand::Dlq { group } => return super::dlq::run(&args.broker, &group),
    };
    let mut client = args.broker.connect()?;
    let description = client
        .call(&GroupDescribe { group })
        .map_err(|e| describe(&args.broker.broker, &e))?;
    match args.broker.format {
        Format::Json => emit(&description_json(&description).to_string()),
        Format::Text => {
            print!("{}", description_text(&description));
            Ok(())
        }
    }
}

pub fn description_json(d: &GroupDescription) -> serde_json::Value {
    let queues: Vec<_> = d
        .queues
        .iter()
        .map(|q| {
            json!({
                "topic": q.topic,
                "queue": q.queue,
                "committed_offset": q.committed_offset,
                "max_offset": q.max_offset,
                "lag": q.lag(),
            })
        })
        .collect();
    json!({ "group": d.group, "queues": queues })
}

pub fn description_text(d: &GroupDescription) -> String {
    let rows = d
        .queues
        .iter()
        .map(|q| {
            vec![
                q.topic.clone(),
                q.queue.to_string(),
                q.committed_offset.to_string(),
                q.max_offset.to_string(),
                q.lag().to_string(),
            ]
        })
        .collect::<Vec<_>>();
    let total: u64 = d.queues.iter().map(|q| q.lag()).sum();
    format!(
        "group {} (total lag {total})\n{}",
        d.group,
        table(&["TOPIC", "QUEUE", "COMMITTED", "MAX_OFFSET", "LAG"], &rows)
    )
}
