//! `ringmq group describe`: a consumer group's live members (client id, host, the queues
//! each holds), its committed offsets and lag per queue. A broadcasting group's offsets are
//! kept per member, so each member's rows are shown under its client id. `ringmq group dlq`
//! ([`super::dlq`]): the group's dead letters.

use super::app::{describe, BrokerArgs, Format};
use super::output::{emit, table};
use crate::client::Client;
use crate::protocol::message::{GroupDescribe, GroupDescription, GroupMembers, GroupMembership};
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
    /// Members with their client ids, hosts and queues; per topic and queue: owner,
    /// committed offset, max offset, lag.
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
    let fail = |e| describe(&args.broker.broker, &e);
    let description = client
        .call(&GroupDescribe {
            group: group.clone(),
        })
        .map_err(fail)?;
    let membership = client
        .call(&GroupMembers {
            group: group.clone(),
        })
        .map_err(fail)?;
    let per_member = broadcast_offsets(&mut client, &membership).map_err(fail)?;
    match args.broker.format {
        Format::Json => {
            let mut value = description_json(&description);
            value["generation"] = json!(membership.generation);
            value["mode"] = json!(mode_name(membership.mode));
            value["members"] = members_json(&membership, &per_member);
            emit(&value.to_string())
        }
        Format::Text => {
            print!("{}", members_text(&membership));
            print!("{}", description_text_owned(&description, &membership));
            for (client_id, d) in &per_member {
                println!("member {client_id}:");
                print!("{}", description_text(d));
            }
            Ok(())
        }
    }
}

fn mode_name(mode: u8) -> &'static str {
    if mode == 1 {
        "broadcasting"
    } else {
        "clustering"
    }
}

/// A broadcasting group's offsets, per member (kept under `<group>..<client id>`).
fn broadcast_offsets(
    client: &mut Client,
    membership: &GroupMembership,
) -> Result<Vec<(String, GroupDescription)>, crate::client::ClientError> {
    if membership.mode != 1 {
        return Ok(Vec::new());
    }
    let mut rows = Vec::new();
    for m in &membership.members {
        let d = client.call(&GroupDescribe {
            group: format!("{}..{}", membership.group, m.client_id),
        })?;
        rows.push((m.client_id.clone(), d));
    }
    Ok(rows)
}

fn members_json(
    membership: &GroupMembership,
    per_member: &[(String, GroupDescription)],
) -> serde_json::Value {
    let members: Vec<_> = membership
        .members
        .iter()
        .map(|m| {
            let offsets = per_member
                .iter()
                .find(|(id, _)| *id == m.client_id)
                .map(|(_, d)| description_json(d)["queues"].clone());
            json!({
                "member_id": m.member_id,
                "client_id": m.client_id,
                "host": m.host,
                "last_heartbeat_ms": m.last_heartbeat_ms,
                "queues": m.owned.iter().map(|q| json!({"topic": q.topic, "queue": q.queue})).collect::<Vec<_>>(),
                "offsets": offsets,
            })
        })
        .collect();
    json!(members)
}

fn members_text(membership: &GroupMembership) -> String {
    if membership.members.is_empty() {
        return "no live members\n".to_string();
    }
    let rows = membership
        .members
        .iter()
        .map(|m| {
            vec![
                m.member_id.clone(),
                m.client_id.clone(),
                m.host.clone(),
                m.owned
                    .iter()
                    .map(|q| format!("{}/{}", q.topic, q.queue))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect::<Vec<_>>();
    format!(
        "generation {} ({}), {} members\n{}",
        membership.generation,
        mode_name(membership.mode),
        membership.members.len(),
        table(&["MEMBER", "CLIENT_ID", "HOST", "QUEUES"], &rows)
    )
}

/// The offsets table with each queue's holder (clustering) beside it.
fn description_text_owned(d: &GroupDescription, membership: &GroupMembership) -> String {
    let owner = |topic: &str, queue: u32| {
        membership
            .members
            .iter()
            .find(|m| m.owned.iter().any(|q| q.topic == topic && q.queue == queue))
            .filter(|_| membership.mode != 1)
            .map_or("-".to_string(), |m| m.client_id.clone())
    };
    let rows = d
        .queues
        .iter()
        .map(|q| {
            vec![
                q.topic.clone(),
                q.queue.to_string(),
                owner(&q.topic, q.queue),
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
        table(
            &["TOPIC", "QUEUE", "OWNER", "COMMITTED", "MAX_OFFSET", "LAG"],
            &rows
        )
    )
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
