//! Request handlers, one file per command. [`handle`] is the single entry point for a decoded
//! request, whether it came from a connection of this shard or was forwarded by another shard.

pub(crate) mod cluster;
mod group;
pub(crate) mod metadata;
mod produce;
mod pull;
pub(crate) mod topic;

use super::mesh::{Reply, ShardRequest};
use super::Shard;
use crate::protocol::codec::DecodeError;
use crate::protocol::{Opcode, Status};
use crate::store::io::Disk;
use std::rc::Rc;

pub async fn handle<D: Disk>(shard: &Rc<Shard<D>>, opcode: Opcode, body: &[u8]) -> Reply {
    if shard.lifecycle().is_stopping() && opcode == Opcode::Produce {
        return Reply::error(
            Status::SystemBusy,
            "the broker is shutting down: retry after it restarts",
        );
    }
    match opcode {
        Opcode::Ping => Reply::ok(Vec::new()),
        Opcode::Metadata => metadata::handle(shard),
        Opcode::Produce => produce::handle(shard, body).await,
        Opcode::Pull => pull::handle(shard, body).await,
        Opcode::QueueStats => topic::queue_stats(shard, body).await,
        Opcode::TopicCreate => topic::create(shard, body).await,
        Opcode::TopicDelete => topic::delete(shard, body).await,
        Opcode::TopicList => topic::list(shard),
        Opcode::TopicDescribe => topic::describe(shard, body).await,
        Opcode::GroupCommit => group::commit(shard, body).await,
        Opcode::GroupFetch => group::fetch(shard, body).await,
        Opcode::GroupDescribe => group::describe(shard, body).await,
        Opcode::Stats => stats(shard).await,
        Opcode::MetadataSnapshot => metadata::snapshot(shard).await,
        Opcode::ClusterStatus => cluster::status(shard).await.unwrap_or_else(Reply::from),
        Opcode::ClusterPromote => cluster::promote(shard, body)
            .await
            .unwrap_or_else(Reply::from),
        Opcode::ClusterDemote => cluster::demote(shard, body)
            .await
            .unwrap_or_else(Reply::from),
    }
}

/// Runs a request that another shard sent over the mesh.
pub async fn handle_shard_request<D: Disk>(shard: Rc<Shard<D>>, request: ShardRequest) {
    match request {
        ShardRequest::Execute {
            opcode,
            body,
            reply,
        } => {
            // Counted on the shard that runs it, so that shard's clean stop waits for it too.
            shard.lifecycle().request_started();
            let answer = handle(&shard, opcode, &body).await;
            let _ = reply.send(answer);
            shard.lifecycle().request_finished();
        }
        ShardRequest::ApplyTopics { table, reply } => {
            let _ = reply.send(shard.apply_topics(table).await);
        }
        ShardRequest::AdoptReplicaLink { fd, hello, peer } => {
            crate::replication::master::adopt(shard, fd, *hello, peer).await;
        }
        ShardRequest::AllGroupOffsets { reply } => {
            let _ = reply.send(shard.metadata().groups().all_rows());
        }
        ShardRequest::ApplyGroupOffsets { rows, reply } => {
            let _ = reply.send(shard.metadata().groups().apply_from_master(rows).await);
        }
        ShardRequest::ClusterState { reply } => {
            let _ = reply.send(cluster::local_status(&shard));
        }
        ShardRequest::ChangeRole { target, reply } => {
            let _ = reply.send(shard.change_role(target).await);
        }
        ShardRequest::MetadataChanged => shard.metadata().master_changed(),
        ShardRequest::Probe { reply } => {
            let _ = reply.send(shard.snapshot());
        }
        ShardRequest::GroupOffsets { group, reply } => {
            let _ = reply.send(group::local_offsets(&shard, &group));
        }
    }
}

/// Stats: every shard's probe merged, as a JSON document (see `metrics::Stats`).
async fn stats<D: Disk>(shard: &Rc<Shard<D>>) -> Reply {
    let snapshots = shard.gather_snapshots().await;
    match crate::metrics::ProbeSnapshot::merge(&snapshots) {
        Some(merged) => Reply::ok(serde_json::to_vec(&merged.to_stats()).expect("stats serialize")),
        None => Reply::error(Status::Internal, "no shard answered"),
    }
}

fn bad_request(e: DecodeError) -> Reply {
    Reply::error(Status::BadRequest, format!("malformed request body: {e}"))
}

fn topic_not_found(name: &str) -> Reply {
    Reply::error(
        Status::TopicNotFound,
        format!("topic `{name}` does not exist"),
    )
}

fn queue_not_found(name: &str, queue: u32, count: u32) -> Reply {
    Reply::error(
        Status::QueueNotFound,
        format!(
            "topic `{name}` has queues 0 to {}, not {queue}",
            count.saturating_sub(1)
        ),
    )
}

/// Where a queue-scoped request must run: here, or on the owning shard.
enum Route {
    Local { topic_id: u32 },
    Remote(usize),
}

fn route<D: Disk>(shard: &Shard<D>, topic: &str, queue: u32) -> Result<Route, Reply> {
    let entry = shard.topic(topic).ok_or_else(|| topic_not_found(topic))?;
    let owner = *entry
        .queue_shards
        .get(queue as usize)
        .ok_or_else(|| queue_not_found(topic, queue, entry.queue_count()))?
        as usize;
    if owner == shard.id() {
        Ok(Route::Local {
            topic_id: entry.topic_id,
        })
    } else {
        Ok(Route::Remote(owner))
    }
}

/// Encodes a body with a writer function into a fresh vector.
fn body(encode: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&mut out);
    out
}
