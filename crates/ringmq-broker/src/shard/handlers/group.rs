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
    let mut queues = local_offsets(shard, &request.group);
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
pub fn local_offsets<D: Disk>(shard: &Shard<D>, group: &str) -> Vec<GroupQueueLag> {
    let confirmed = shard.confirmed_offset();
    shard
        .metadata()
        .groups()
        .of_group(group)
        .into_iter()
        .filter_map(|(topic, queue, committed)| {
            let entry = shard.topic(&topic)?;
            let key = QueueKey {
                topic_id: entry.topic_id,
                queue,
            };
            let max_offset = shard.store().visible_end(key, confirmed)?;
            Some(GroupQueueLag {
                topic,
                queue,
                committed_offset: committed,
                max_offset,
            })
        })
        .collect()
}
