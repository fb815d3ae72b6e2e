//! `ringmq group describe`: a consumer group's live members (client id, host, the queues
//! each holds), its committed offsets and lag per queue. A broadcasting group's offsets are
//! kept per member, so each member's rows are shown under its client id. `ringmq group dlq`
//! ([`super::dlq`]): the group's dead letters.

use super::app::{describe, BrokerArgs, Format};
use super::output::{emit, table};
use crate::client::Client;
use crate::protocol::message::{
    GroupDescribe, GroupDescription, GroupMembers, GroupMembership, QueueRef,
};
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
    /// Members with their client ids, hosts and queues; per topic and queue: owner, committed
    /// offset, the queue's minimum and max offset, lag. A committed offset below the minimum
    /// (retention deleted it) is marked.
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
    // With --namesrv, the master it found, not the unused --broker default.
    let addr = client.bootstrap_addr().to_string();
    let fail = |e| describe(&addr, &e);
    let description = client
        .call(&GroupDescribe {
            group: group.clone(),
        })
        .map_err(fail)?;
    let mins = queue_minimums(&mut client, &description);
    let membership = client
        .call(&GroupMembers {
            group: group.clone(),
        })
        .map_err(fail)?;
    let per_member = broadcast_offsets(&mut client, &membership).map_err(fail)?;
    match args.broker.format {
        Format::Json => {
            let mut value = description_json(&description, &mins);
            value["generation"] = json!(membership.generation);
            value["mode"] = json!(mode_name(membership.mode));
            value["members"] = members_json(&membership, &per_member);
            emit(&value.to_string())
        }
        Format::Text => {
            print!("{}", members_text(&membership));
            print!(
                "{}",
                description_text(&description, &mins, Some(&membership))
            );
            for (client_id, d, mins) in &per_member {
                println!("member {client_id}:");
                print!("{}", description_text(d, mins, None));
            }
            Ok(())
        }
    }
}

/// True when the committed offset lies below the queue's minimum: a consumer of the group
/// will be answered OFFSET_OUT_OF_RANGE and reset.
fn behind_retention(committed: u64, min: Option<u64>) -> bool {
    min.is_some_and(|min| committed < min)
}

fn mode_name(mode: u8) -> &'static str {
    if mode == 1 {
        "broadcasting"
    } else {
        "clustering"
    }
}

/// Each queue's minimum, from QUEUE_STATS (one request per row: the group description does
/// not carry them); `None` where the broker did not answer.
fn queue_minimums(client: &mut Client, description: &GroupDescription) -> Vec<Option<u64>> {
    description
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
        .collect()
}

/// A member's offsets in a broadcasting group, with its queues' minimums.
type MemberOffsets = (String, GroupDescription, Vec<Option<u64>>);

/// A broadcasting group's offsets, per member (kept under `<group>..<client id>`).
fn broadcast_offsets(
    client: &mut Client,
    membership: &GroupMembership,
) -> Result<Vec<MemberOffsets>, crate::client::ClientError> {
    if membership.mode != 1 {
        return Ok(Vec::new());
    }
    let mut rows = Vec::new();
    for m in &membership.members {
        let d = client.call(&GroupDescribe {
            group: crate::protocol::broadcast_offsets_key(&membership.group, &m.client_id),
        })?;
        let mins = queue_minimums(client, &d);
        rows.push((m.client_id.clone(), d, mins));
    }
    Ok(rows)
}

fn members_json(membership: &GroupMembership, per_member: &[MemberOffsets]) -> serde_json::Value {
    let members: Vec<_> = membership
        .members
        .iter()
        .map(|m| {
            let offsets = per_member
                .iter()
                .find(|(id, _, _)| *id == m.client_id)
                .map(|(_, d, mins)| description_json(d, mins)["queues"].clone());
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

/// The offsets table; with the membership of a clustering group, each queue's holder too.
pub fn description_text(
    d: &GroupDescription,
    mins: &[Option<u64>],
    membership: Option<&GroupMembership>,
) -> String {
    let owners = membership.filter(|m| m.mode != 1);
    let owner = |topic: &str, queue: u32| {
        owners
            .and_then(|m| {
                m.members
                    .iter()
                    .find(|m| m.owned.iter().any(|q| q.topic == topic && q.queue == queue))
            })
            .map_or("-".to_string(), |m| m.client_id.clone())
    };
    let rows = d
        .queues
        .iter()
        .zip(mins.iter().chain(std::iter::repeat(&None)))
        .map(|(q, min)| {
            let mut committed = q.committed_offset.to_string();
            if behind_retention(q.committed_offset, *min) {
                committed.push_str(" (behind retention)");
            }
            let mut row = vec![q.topic.clone(), q.queue.to_string()];
            if owners.is_some() {
                row.push(owner(&q.topic, q.queue));
            }
            row.extend([
                committed,
                min.map_or("?".to_string(), |m| m.to_string()),
                q.max_offset.to_string(),
                q.lag().to_string(),
            ]);
            row
        })
        .collect::<Vec<_>>();
    let total: u64 = d.queues.iter().map(|q| q.lag()).sum();
    let mut header = vec!["TOPIC", "QUEUE"];
    if owners.is_some() {
        header.push("OWNER");
    }
    header.extend(["COMMITTED", "MIN_OFFSET", "MAX_OFFSET", "LAG"]);
    format!(
        "group {} (total lag {total})\n{}",
        d.group,
        table(&header, &rows)
    )
}
