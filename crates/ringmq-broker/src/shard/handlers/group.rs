//! Consumer-group offsets. The shard that owns a queue keeps its groups' offsets, so a commit
//! goes where the consumer already pulls from; describe gathers every shard's rows.

use super::{body, route, Route};
use crate::protocol::message::{
    GroupCommit, GroupDescribe, GroupDescription, GroupFetch, GroupOffset, GroupQueueLag,
};
use crate::protocol::Opcode;
use crate::shard::mesh::{Reply, ShardRequest};
use crate::shard::topics::validate_name;
use crate::shard::{Shard, ShardError};
use crate::store::io::Disk;
use crate::store::QueueKey;
use std::rc::Rc;

pub async fn commit<D: Disk>(shard: &Rc<Shard<D>>, raw: &[u8]) -> Result<Reply, ShardError> {
    let request = GroupCommit::decode(raw)?;
    validate_name("group", &request.group)?;
    if let Route::Remote(owner) = route(shard, &request.topic, request.queue)? {
        return Ok(shard
            .forward(owner, Opcode::GroupCommit, raw.to_vec())
            .await);
    }
    shard
        .metadata()
        .groups()
        .commit(
            &request.group,
            &request.topic,
            request.queue,
            request.offset,
        )
        .await?;
    shard.metadata().bump();
    Ok(Reply::ok(Vec::new()))
}

pub async fn fetch<D: Disk>(shard: &Rc<Shard<D>>, raw: &[u8]) -> Result<Reply, ShardError> {
    let request = GroupFetch::decode(raw)?;
    // Refused like a commit, so a consumer with a bad group learns it before it reads.
    validate_name("group", &request.group)?;
    if let Route::Remote(owner) = route(shard, &request.topic, request.queue)? {
        return Ok(shard.forward(owner, Opcode::GroupFetch, raw.to_vec()).await);
    }
    let offset = GroupOffset {
        offset: shard
            .metadata()
            .groups()
            .get(&request.group, &request.topic, request.queue),
    };
    Ok(Reply::ok(body(|out| offset.encode(out))))
}

pub async fn describe<D: Disk>(shard: &Rc<Shard<D>>, raw: &[u8]) -> Result<Reply, ShardError> {
    let request = GroupDescribe::decode(raw)?;
    validate_name("group", &request.group)?;
    let mut queues = local_offsets(shard, &request.group).await;
    let others = shard
        .ask_others(|reply| ShardRequest::GroupOffsets {
            group: request.group.clone(),
            reply,
        })
        .await?;
    queues.extend(others.into_iter().flatten());
    queues.sort_by(|a, b| (&a.topic, a.queue).cmp(&(&b.topic, b.queue)));
    let description = GroupDescription {
        group: request.group,
        queues,
    };
    Ok(Reply::ok(body(|out| description.encode(out))))
}

/// This shard's rows for a group: committed offset and the queue's visible end.
pub async fn local_offsets<D: Disk>(shard: &Shard<D>, group: &str) -> Vec<GroupQueueLag> {
    let confirmed = shard.confirmed_offset();
    let mut rows = Vec::new();
    for (topic, queue, committed) in shard.metadata().groups().of_group(group) {
        let Some(entry) = shard.topic(&topic) else {
            continue;
        };
        let key = QueueKey {
            topic_id: entry.topic_id,
            queue,
        };
        // A queue whose files cannot be read shows its minimum as its end (no lag claimed)
        // rather than failing the whole description.
        let max_offset = match shard.store().visible_end(key, confirmed).await {
            Ok(Some(end)) => end,
            Ok(None) => continue,
            Err(_) => match shard.store().queue_range(key) {
                Some((min, _)) => min,
                None => continue,
            },
        };
        rows.push(GroupQueueLag {
            topic,
            queue,
            committed_offset: committed,
            max_offset,
        });
    }
    rows
}
