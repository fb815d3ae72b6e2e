//! `ringmq group describe`: a consumer group's committed offsets and lag per queue.

use super::app::{describe, BrokerArgs, Format};
use super::output::{emit, table};
use crate::protocol::message::{GroupDescribe, GroupDescription, QueueRef};
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
    /// Per topic and queue: committed offset, the queue's minimum and max offset, lag; a
    /// committed offset below the minimum (retention deleted it) is marked.
    Describe { group: String },
}

pub fn run(args: GroupArgs) -> Result<(), String> {
    let GroupCommand::Describe { group } = args.command;
    let mut client = args.broker.connect()?;
    let description = client
        .call(&GroupDescribe { group })
        .map_err(|e| describe(&args.broker.broker, &e))?;
    // The queue minimums come from QUEUE_STATS, one request per row: the group description
    // does not carry them.
    let mins: Vec<Option<u64>> = description
        .queues
        .iter()
        .map(|q| {
            client
                .call(&QueueRef {
                    topic: q.topic.clone(),
                    queue: q.queue,
                })
                .ok()
                .map(|stats| stats.min_offset)
        })
        .collect();
    match args.broker.format {
        Format::Json => emit(&description_json(&description, &mins).to_string()),
        Format::Text => {
            print!("{}", description_text(&description, &mins));
            Ok(())
        }
    }
}

/// True when the committed offset lies below the queue's minimum: a consumer of the group
/// will be answered OFFSET_OUT_OF_RANGE and reset.
fn behind_retention(committed: u64, min: Option<u64>) -> bool {
    min.is_some_and(|min| committed < min)
}

pub fn description_json(d: &GroupDescription, mins: &[Option<u64>]) -> serde_json::Value {
    let queues: Vec<_> = d
        .queues
        .iter()
        .zip(mins.iter().chain(std::iter::repeat(&None)))
        .map(|(q, min)| {
            json!({
                "topic": q.topic,
                "queue": q.queue,
                "committed_offset": q.committed_offset,
                "min_offset": min,
                "max_offset": q.max_offset,
                "lag": q.lag(),
                "behind_retention": behind_retention(q.committed_offset, *min),
            })
        })
        .collect();
    json!({ "group": d.group, "queues": queues })
}

pub fn description_text(d: &GroupDescription, mins: &[Option<u64>]) -> String {
    let rows = d
        .queues
        .iter()
        .zip(mins.iter().chain(std::iter::repeat(&None)))
        .map(|(q, min)| {
            let mut committed = q.committed_offset.to_string();
            if behind_retention(q.committed_offset, *min) {
                committed.push_str(" (behind retention)");
            }
            vec![
                q.topic.clone(),
                q.queue.to_string(),
                committed,
                min.map_or("?".to_string(), |m| m.to_string()),
                q.max_offset.to_string(),
                q.lag().to_string(),
            ]
        })
        .collect::<Vec<_>>();
    let total: u64 = d.queues.iter().map(|q| q.lag()).sum();
    format!(
        "group {} (total lag {total})\n{}",
        d.group,
        table(
            &[
                "TOPIC",
                "QUEUE",
                "COMMITTED",
                "MIN_OFFSET",
                "MAX_OFFSET",
                "LAG"
            ],
            &rows
        )
    )
}
