//! `ringmq topic create|list|describe|delete`.

use super::app::{describe, BrokerArgs, Format};
use super::output::{emit, table};
use crate::protocol::message::{TopicDescription, TopicInfo, TopicListRequest};
use clap::{Args, Subcommand};
use serde_json::json;

#[derive(Args, Debug)]
pub struct TopicArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(subcommand)]
    pub command: TopicCommand,
}

#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic with N queues spread over the broker's shards.
    Create {
        name: String,
        /// Queues per broker group (with --namesrv, every group gets this many).
        #[arg(long, default_value_t = 4)]
        queues: u32,
        /// With --namesrv: only on these broker groups (default: every group of the cluster).
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
    },
    /// List topics.
    List,
    /// Show each queue's shard and offsets.
    Describe { name: String },
    /// Delete a topic.
    Delete { name: String },
}

pub fn run(args: TopicArgs) -> Result<(), String> {
    let broker = &args.broker;
    if let Some(namesrv) = &broker.namesrv {
        return super::routed::topic(broker, namesrv, args.command);
    }
    if matches!(&args.command, TopicCommand::Create { groups, .. } if !groups.is_empty()) {
        return Err("--groups picks broker groups of a cluster: it needs --namesrv".into());
    }
    let mut client = broker.connect()?;
    let fail = |e| describe(&broker.broker, &e);
    match args.command {
        TopicCommand::Create { name, queues, .. } => {
            let info = client.create_topic(&name, queues).map_err(fail)?;
            match broker.format {
                Format::Json => emit(&topic_json(&info).to_string()),
                Format::Text => emit(&format!(
                    "created topic {} with {} queues",
                    info.name,
                    info.queue_count()
                )),
            }
        }
        TopicCommand::List => {
            let topics = client.call(&TopicListRequest {}).map_err(fail)?.topics;
            match broker.format {
                Format::Json => {
                    let list: Vec<_> = topics.iter().map(topic_json).collect();
                    emit(&json!({ "topics": list }).to_string())
                }
                Format::Text => {
                    let rows = topics
                        .iter()
                        .map(|t| {
                            vec![
                                t.name.clone(),
                                t.topic_id.to_string(),
                                t.queue_count().to_string(),
                            ]
                        })
                        .collect::<Vec<_>>();
                    print!("{}", table(&["TOPIC", "ID", "QUEUES"], &rows));
                    Ok(())
                }
            }
        }
        TopicCommand::Describe { name } => {
            let description = client.describe_topic(&name).map_err(fail)?;
            match broker.format {
                Format::Json => emit(&description_json(&description).to_string()),
                Format::Text => {
                    print!("{}", description_text(&description));
                    Ok(())
                }
            }
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).map_err(fail)?;
            match broker.format {
                Format::Json => emit(&json!({ "deleted": name }).to_string()),
                Format::Text => emit(&format!("deleted topic {name}")),
            }
        }
    }
}

fn topic_json(info: &TopicInfo) -> serde_json::Value {
    json!({
        "name": info.name,
        "topic_id": info.topic_id,
        "queues": info.queue_count(),
        "queue_shards": info.queue_shards,
    })
}

fn description_json(d: &TopicDescription) -> serde_json::Value {
    let queues: Vec<_> = d
        .queues
        .iter()
        .map(|q| {
            json!({
                "queue": q.queue,
                "shard": q.shard,
                "min_offset": q.min_offset,
                "max_offset": q.max_offset,
            })
        })
        .collect();
    json!({ "name": d.topic.name, "topic_id": d.topic.topic_id, "queues": queues })
}

pub fn description_text(d: &TopicDescription) -> String {
    let rows = d
        .queues
        .iter()
        .map(|q| {
            vec![
                q.queue.to_string(),
                q.shard.to_string(),
                q.min_offset.to_string(),
                q.max_offset.to_string(),
            ]
        })
        .collect::<Vec<_>>();
    format!(
        "topic {} (id {})\n{}",
        d.topic.name,
        d.topic.topic_id,
        table(&["QUEUE", "SHARD", "MIN_OFFSET", "MAX_OFFSET"], &rows)
    )
}
