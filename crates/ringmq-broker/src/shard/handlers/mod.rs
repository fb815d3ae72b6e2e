//! Request handlers, one file per command. [`handle`] is the single entry point for a decoded
//! request, whether it came from a connection of this shard or was forwarded by another shard.

pub(crate) mod cluster;
mod group;
pub mod metadata;
mod produce;
mod pull;
pub(crate) mod topic;

use super::mesh::{Reply, ShardRequest};
use super::Shard;
use crate::protocol::codec::DecodeError;
use crate::protocol::message::*;
use crate::protocol::requests::for_each_request;
use crate::protocol::{Opcode, Request, Status};
use std::rc::Rc;

pub async fn handle(shard: &Rc<Shard>, opcode: Opcode, body: &[u8]) -> Reply {
    if shard.stopping.get() && opcode == Opcode::Produce {
        return Reply::error(
            Status::SystemBusy,
            "the broker is shutting down: retry after it restarts",
        );
    }
    for_each_request!(dispatch, shard, opcode, body)
}

/// The handler of one request type (a row of `protocol::requests::for_each_request!`). The
/// dispatch below is expanded from that table, so a declared request without a `Handler`
/// impl does not compile. Handlers take the raw body and decode it with their request type
/// themselves: several forward the body to another shard as it came, or refuse the request
/// (on a slave) before decoding it.
trait Handler: Request {
    async fn run(shard: &Rc<Shard>, body: &[u8]) -> Reply;
}

/// One match arm per declared request; the match is over `Opcode`, declared by the same
/// table, so it is exhaustive by construction.
macro_rules! dispatch {
    (($shard:expr, $opcode:expr, $body:expr)
        $( $op:ident = $value:literal => $wire:literal : $req:ty => $resp:ty, $what:literal
           { $($extra:tt)* }; )+
    ) => {
        match $opcode {
            $( Opcode::$op => <$req as Handler>::run($shard, $body).await, )+
        }
    };
}
use dispatch;

/// Declares `Handler` impls: `RequestType => |shard, body| handler call`.
macro_rules! handlers {
    ($( $req:ty => |$shard:ident, $body:pat_param| $run:expr; )+) => {$(
        impl Handler for $req {
            async fn run($shard: &Rc<Shard>, $body: &[u8]) -> Reply {
                $run
            }
        }
    )+};
}

handlers! {
    Ping => |_shard, _| Reply::ok(Vec::new());
    MetadataRequest => |shard, _| metadata::handle(shard);
    ProduceRequest<'_> => |shard, body| produce::handle(shard, body).await;
    PullRequest => |shard, body| pull::handle(shard, body).await;
    QueueRef => |shard, body| topic::queue_stats(shard, body).await;
    TopicCreate => |shard, body| topic::create(shard, body).await;
    TopicDelete => |shard, body| topic::delete(shard, body).await;
    TopicListRequest => |shard, _| topic::list(shard);
    TopicDescribe => |shard, body| topic::describe(shard, body).await;
    GroupCommit => |shard, body| group::commit(shard, body).await;
    GroupFetch => |shard, body| group::fetch(shard, body).await;
    GroupDescribe => |shard, body| group::describe(shard, body).await;
    StatsRequest => |shard, _| stats(shard).await;
    MetadataSnapshotRequest => |shard, _| metadata::snapshot(shard).await;
    ClusterStatusRequest => |shard, _| cluster::status(shard).await;
    ClusterPromote => |shard, body| cluster::promote(shard, body).await;
}

/// Runs a request that another shard sent over the mesh.
pub async fn handle_shard_request(shard: Rc<Shard>, request: ShardRequest) {
    match request {
        ShardRequest::Execute {
            opcode,
            body,
            reply,
        } => {
            // Counted on the shard that runs it, so that shard's clean stop waits for it too.
            shard.count_in_flight(&shard.requests_in_flight, 1);
            let answer = handle(&shard, opcode, &body).await;
            let _ = reply.send(answer);
            shard.count_in_flight(&shard.requests_in_flight, -1);
        }
        ShardRequest::ApplyTopics { table, reply } => {
            let _ = reply.send(shard.apply_topics(table).await);
        }
        ShardRequest::AdoptReplicaLink { fd, hello, peer } => {
            crate::replication::master::adopt(shard, fd, *hello, peer).await;
        }
        ShardRequest::AllGroupOffsets { reply } => {
            let _ = reply.send(shard.groups.all_rows());
        }
        ShardRequest::ClusterState { reply } => {
            let _ = reply.send(cluster::local_status(&shard));
        }
        ShardRequest::Promote { role, reply } => {
            let _ = reply.send(cluster::promote_local(&shard, role).await);
        }
        ShardRequest::Probe { reply } => {
            let _ = reply.send(shard.snapshot());
        }
        ShardRequest::GroupOffsets { group, reply } => {
            let _ = reply.send(group::local_offsets(&shard, &group));
        }
    }
}

/// Stats: every shard's probe merged, as a JSON document (see `metrics::Stats`).
async fn stats(shard: &Rc<Shard>) -> Reply {
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

fn route(shard: &Shard, topic: &str, queue: u32) -> Result<Route, Reply> {
    let entry = shard.topic(topic).ok_or_else(|| topic_not_found(topic))?;
    let owner = *entry
        .queue_shards
        .get(queue as usize)
        .ok_or_else(|| queue_not_found(topic, queue, entry.queue_count()))?
        as usize;
    if owner == shard.id {
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
