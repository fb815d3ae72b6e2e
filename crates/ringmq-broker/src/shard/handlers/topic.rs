//! Topic commands. Changes run on shard 0, which owns the topic table: it writes
//! `topics.json` atomically, then every shard applies the new table before the reply.

use super::{bad_request, body, route, topic_not_found, Route};
use crate::protocol::codec::DecodeError;
use crate::protocol::message::{
    QueueRef, QueueStats, TopicCreate, TopicDelete, TopicDescribe, TopicDescription, TopicList,
};
use crate::protocol::{Opcode, Status};
use crate::shard::mesh::{Reply, ShardRequest};
use crate::shard::topics::{topics_path, TopicTable};
use crate::shard::Shard;
use crate::store::io::Disk;
use crate::store::QueueKey;
use std::rc::Rc;
use std::sync::Arc;
use tracing::info;

/// Shard that owns the topic table.
const METADATA_SHARD: usize = 0;

fn refuse_on_slave(shard: &Shard) -> Option<Reply> {
    (!shard.role.get().is_master()).then(|| {
        Reply::error(
            Status::NotMaster,
            "topics are changed on the master; this slave copies them",
        )
    })
}

/// Runs a topic-table change: refused on a slave, forwarded to shard 0 from other shards,
/// then on shard 0, under the metadata gate, `change` computes the new table from the current
/// one and it is published. `Err` carries the reply to send as it is (a forwarded answer or an
/// error); `Ok` the decoded request once the change is applied everywhere.
async fn change_topics<R>(
    shard: &Rc<Shard>,
    opcode: Opcode,
    raw: &[u8],
    decode: fn(&[u8]) -> Result<R, DecodeError>,
    change: impl FnOnce(&TopicTable, &R) -> Result<TopicTable, Reply>,
) -> Result<R, Reply> {
    if let Some(reply) = refuse_on_slave(shard) {
        return Err(reply);
    }
    if shard.id != METADATA_SHARD {
        return Err(shard.forward(METADATA_SHARD, opcode, raw.to_vec()).await);
    }
    let request = decode(raw).map_err(bad_request)?;
    let _gate = shard
        .metadata_gate
        .acquire_permit(1)
        .await
        .map_err(|e| Reply::error(Status::Internal, e.to_string()))?;
    let table = change(&shard.topic_table(), &request)?;
    publish(shard, table).await?;
    Ok(request)
}

pub async fn create(shard: &Rc<Shard>, raw: &[u8]) -> Reply {
    let changed = change_topics(
        shard,
        Opcode::TopicCreate,
        raw,
        TopicCreate::decode,
        |current, request| {
            if current.topics.contains_key(&request.name) {
                return Err(Reply::error(
                    Status::TopicExists,
                    format!("topic `{}` already exists", request.name),
                ));
            }
            current
                .with_topic(&request.name, request.queue_count, shard.shard_count)
                .map(|(table, _)| table)
                .map_err(|message| Reply::error(Status::InvalidName, message))
        },
    )
    .await;
    let request = match changed {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    info!(topic = %request.name, queues = request.queue_count, "topic created");
    let info = shard
        .topic(&request.name)
        .expect("topic just published")
        .info(&request.name);
    Reply::ok(body(|out| info.encode(out)))
}

pub async fn delete(shard: &Rc<Shard>, raw: &[u8]) -> Reply {
    let changed = change_topics(
        shard,
        Opcode::TopicDelete,
        raw,
        TopicDelete::decode,
        |current, request| {
            if !current.topics.contains_key(&request.name) {
                return Err(topic_not_found(&request.name));
            }
            Ok(current.without_topic(&request.name))
        },
    )
    .await;
    match changed {
        Ok(request) => {
            info!(topic = %request.name, "topic deleted");
            Reply::ok(Vec::new())
        }
        Err(reply) => reply,
    }
}

/// Makes a new table durable, then applies it on every shard (this one last).
pub async fn publish(shard: &Rc<Shard>, table: TopicTable) -> Result<(), Reply> {
    let path = topics_path(&shard.config.store_dir);
    shard
        .disk
        .write_atomic(&path, table.to_json())
        .await
        .map_err(|e| Reply::error(Status::StoreError, format!("{}: {e}", path.display())))?;
    let table = Arc::new(table);
    let outcomes = shard
        .ask_others(|reply| ShardRequest::ApplyTopics {
            table: table.clone(),
            reply,
        })
        .await?;
    if let Some(Err(message)) = outcomes.into_iter().find(|o| o.is_err()) {
        return Err(Reply::error(Status::StoreError, message));
    }
    shard
        .apply_topics(table)
        .await
        .map_err(|message| Reply::error(Status::StoreError, message))
}

pub fn list(shard: &Shard) -> Reply {
    let list = TopicList {
        topics: shard.topic_table().infos(),
    };
    Reply::ok(body(|out| list.encode(out)))
}

pub async fn describe(shard: &Rc<Shard>, raw: &[u8]) -> Reply {
    let request = match TopicDescribe::decode(raw) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let Some(entry) = shard.topic(&request.name) else {
        return topic_not_found(&request.name);
    };
    let mut queues = Vec::with_capacity(entry.queue_shards.len());
    for queue in 0..entry.queue_count() {
        let mut stats_body = Vec::new();
        QueueRef {
            topic: request.name.clone(),
            queue,
        }
        .encode(&mut stats_body);
        let reply = queue_stats(shard, &stats_body).await;
        if reply.status != Status::Ok {
            return reply;
        }
        match QueueStats::decode(&reply.body) {
            Ok(stats) => queues.push(stats),
            Err(e) => return Reply::error(Status::Internal, e.to_string()),
        }
    }
    let description = TopicDescription {
        topic: entry.info(&request.name),
        queues,
    };
    Reply::ok(body(|out| description.encode(out)))
}

pub async fn queue_stats(shard: &Rc<Shard>, raw: &[u8]) -> Reply {
    let request = match QueueRef::decode(raw) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let topic_id = match route(shard, &request.topic, request.queue) {
        Ok(Route::Local { topic_id, .. }) => topic_id,
        Ok(Route::Remote(owner)) => {
            return Box::pin(shard.forward(owner, Opcode::QueueStats, raw.to_vec())).await
        }
        Err(reply) => return reply,
    };
    let key = QueueKey {
        topic_id,
        queue: request.queue,
    };
    let Some((min_offset, _)) = shard.store.queue_range(key) else {
        return Reply::error(
            Status::QueueNotFound,
            "queue is not registered on its shard",
        );
    };
    let stats = QueueStats {
        queue: request.queue,
        shard: shard.id as u16,
        min_offset,
        max_offset: shard
            .store
            .visible_end(key, shard.confirmed_offset())
            .unwrap_or(min_offset),
    };
    Reply::ok(body(|out| stats.encode(out)))
}
