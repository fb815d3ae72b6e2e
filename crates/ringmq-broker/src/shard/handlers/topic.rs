//! Topic commands. Changes run on shard 0, which owns the topic table: it writes
//! `topics.json` atomically, then every shard applies the new table before the reply.

use super::{body, route, Route};
use crate::protocol::codec::DecodeError;
use crate::protocol::message::{
    QueueRef, QueueStats, TopicCreate, TopicDelete, TopicDescribe, TopicDescription, TopicList,
};
use crate::protocol::{Opcode, Status};
use crate::shard::mesh::{Reply, ShardRequest};
use crate::shard::topics::{topics_path, TopicEntry, TopicTable};
use crate::shard::{Shard, ShardError};
use crate::store::io::Disk;
use crate::store::QueueKey;
use futures_channel::oneshot;
use std::rc::Rc;
use std::sync::Arc;
use tracing::info;

/// Shard that owns the topic table.
const METADATA_SHARD: usize = 0;

fn refuse_on_slave<D: Disk>(shard: &Shard<D>) -> Result<(), ShardError> {
    if shard.is_master() {
        return Ok(());
    }
    Err(ShardError::NotMaster(
        "topics are changed on the master; this slave copies them".to_string(),
    ))
}

/// How a topic-table change ended on this shard.
enum Changed<R> {
    /// Run on shard 0; its answer is to be sent as it is.
    Forwarded(Reply),
    /// Applied everywhere; the decoded request.
    Applied(R),
}

/// Runs a topic-table change: refused on a slave, forwarded to shard 0 from other shards,
/// then on shard 0, under the metadata gate, `change` computes the new table from the current
/// one and it is published.
async fn change_topics<R, D: Disk>(
    shard: &Rc<Shard<D>>,
    opcode: Opcode,
    raw: &[u8],
    decode: fn(&[u8]) -> Result<R, DecodeError>,
    change: impl FnOnce(&TopicTable, &R) -> Result<TopicTable, ShardError>,
) -> Result<Changed<R>, ShardError> {
    refuse_on_slave(shard)?;
    if shard.id() != METADATA_SHARD {
        let reply = shard.forward(METADATA_SHARD, opcode, raw.to_vec()).await;
        return Ok(Changed::Forwarded(reply));
    }
    let request = decode(raw)?;
    let _gate = shard.metadata().lock().await;
    let table = change(&shard.topic_table(), &request)?;
    publish(shard, table).await?;
    Ok(Changed::Applied(request))
}

pub async fn create<D: Disk>(shard: &Rc<Shard<D>>, raw: &[u8]) -> Result<Reply, ShardError> {
    let changed = change_topics(
        shard,
        Opcode::TopicCreate,
        raw,
        TopicCreate::decode,
        |current, request| {
            if current.topics.contains_key(&request.name) {
                return Err(ShardError::TopicExists(request.name.to_string()));
            }
            current
                .with_topic(&request.name, request.queue_count, shard.shard_count())
                .map(|(table, _)| table)
        },
    )
    .await?;
    let request = match changed {
        Changed::Applied(request) => request,
        Changed::Forwarded(reply) => return Ok(reply),
    };
    info!(topic = %request.name, queues = request.queue_count, "topic created");
    let info = shard
        .topic(&request.name)
        .ok_or_else(|| ShardError::Internal(format!("topic `{}` vanished", request.name)))?
        .info(&request.name);
    Ok(Reply::ok(body(|out| info.encode(out))))
}

pub async fn delete<D: Disk>(shard: &Rc<Shard<D>>, raw: &[u8]) -> Result<Reply, ShardError> {
    let changed = change_topics(
        shard,
        Opcode::TopicDelete,
        raw,
        TopicDelete::decode,
        |current, request| {
            if !current.topics.contains_key(&request.name) {
                return Err(ShardError::TopicNotFound(request.name.clone()));
            }
            Ok(current.without_topic(&request.name))
        },
    )
    .await?;
    match changed {
        Changed::Applied(request) => {
            info!(topic = %request.name, "topic deleted");
            Ok(Reply::ok(Vec::new()))
        }
        Changed::Forwarded(reply) => Ok(reply),
    }
}

/// Creates a topic the broker makes for itself (a group's retry or dead-letter topic, the
/// schedule topic) unless it exists, and returns it. It is made on shard 0 under the metadata
/// gate like a client's topic, with the broker's name rules instead of the client's; once this
/// returns, every shard has it.
pub async fn ensure_internal<D: Disk>(
    shard: &Rc<Shard<D>>,
    name: &str,
    queue_count: u32,
) -> Result<TopicEntry, ShardError> {
    if let Some(entry) = shard.topic(name) {
        return Ok(entry);
    }
    refuse_on_slave(shard)?;
    if shard.id() != METADATA_SHARD {
        let (reply, answer) = oneshot::channel();
        let request = ShardRequest::EnsureInternalTopic {
            name: name.to_string(),
            queue_count,
            reply,
        };
        shard.mesh().send(METADATA_SHARD, request).await?;
        answer
            .await
            .map_err(|_| ShardError::ShardGone(METADATA_SHARD))??;
    } else {
        let _gate = shard.metadata().lock().await;
        if shard.topic(name).is_none() {
            let (table, _) =
                shard
                    .topic_table()
                    .with_internal_topic(name, queue_count, shard.shard_count())?;
            publish(shard, table).await?;
            info!(topic = %name, queues = queue_count, "internal topic created");
        }
    }
    shard
        .topic(name)
        .ok_or_else(|| ShardError::Internal(format!("topic `{name}` vanished after its creation")))
}

/// Makes a new table durable, then applies it on every shard (this one last).
pub async fn publish<D: Disk>(shard: &Rc<Shard<D>>, table: TopicTable) -> Result<(), ShardError> {
    let path = topics_path(&shard.config().store_dir);
    shard
        .disk()
        .write_atomic(&path, table.to_json())
        .await
        .map_err(|e| ShardError::Metadata(format!("{}: {e}", path.display())))?;
    let table = Arc::new(table);
    let outcomes = shard
        .ask_others(|reply| ShardRequest::ApplyTopics {
            table: table.clone(),
            reply,
        })
        .await?;
    outcomes.into_iter().collect::<Result<Vec<()>, _>>()?;
    shard.apply_topics(table).await
}

pub fn list<D: Disk>(shard: &Shard<D>) -> Reply {
    let list = TopicList {
        topics: shard.topic_table().infos(),
    };
    Reply::ok(body(|out| list.encode(out)))
}

pub async fn describe<D: Disk>(shard: &Rc<Shard<D>>, raw: &[u8]) -> Result<Reply, ShardError> {
    let request = TopicDescribe::decode(raw)?;
    let entry = shard
        .topic(&request.name)
        .ok_or_else(|| ShardError::TopicNotFound(request.name.clone()))?;
    let mut queues = Vec::with_capacity(entry.queue_shards.len());
    for queue in 0..entry.queue_count() {
        let mut stats_body = Vec::new();
        QueueRef {
            topic: request.name.clone(),
            queue,
        }
        .encode(&mut stats_body);
        let reply = queue_stats(shard, &stats_body).await?;
        if reply.status != Status::Ok {
            return Ok(reply);
        }
        let stats = QueueStats::decode(&reply.body)
            .map_err(|e| ShardError::Internal(format!("a shard's queue stats: {e}")))?;
        queues.push(stats);
    }
    let description = TopicDescription {
        topic: entry.info(&request.name),
        queues,
    };
    Ok(Reply::ok(body(|out| description.encode(out))))
}

pub async fn queue_stats<D: Disk>(shard: &Rc<Shard<D>>, raw: &[u8]) -> Result<Reply, ShardError> {
    let request = QueueRef::decode(raw)?;
    let topic_id = match route(shard, &request.topic, request.queue)? {
        Route::Local { topic_id, .. } => topic_id,
        Route::Remote(owner) => {
            return Ok(Box::pin(shard.forward(owner, Opcode::QueueStats, raw.to_vec())).await)
        }
    };
    let key = QueueKey {
        topic_id,
        queue: request.queue,
    };
    let (min_offset, _) = shard
        .store()
        .queue_range(key)
        .ok_or_else(super::unregistered_queue)?;
    let stats = QueueStats {
        queue: request.queue,
        shard: shard.id() as u16,
        min_offset,
        max_offset: shard
            .store()
            .visible_end(key, shard.confirmed_offset())
            .await?
            .unwrap_or(min_offset),
    };
    Ok(Reply::ok(body(|out| stats.encode(out))))
}
