//! Consumer-group offsets. The shard that owns a queue keeps its groups' offsets, so a commit
//! goes where the consumer already pulls from; describe gathers every shard's rows.

use super::{bad_request, body, route, Route};
use crate::protocol::message::{
    GroupCommit, GroupDescribe, GroupDescription, GroupFetch, GroupOffset, GroupQueueLag,
};
use crate::protocol::{Opcode, Status};
use crate::shard::mesh::{Reply, ShardRequest};
use crate::shard::topics::validate_name;
use crate::shard::Shard;
use crate::store::QueueKey;
use std::rc::Rc;

pub async fn commit(shard: &Rc<Shard>, raw: &[u8]) -> Reply {
    let request = match GroupCommit::decode(raw) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    if let Err(message) = validate_name("group", &request.group) {
        return Reply::error(Status::InvalidName, message);
    }
    match route(shard, &request.topic, request.queue) {
        Ok(Route::Local { .. }) => {}
        Ok(Route::Remote(owner)) => {
            return shard
                .forward(owner, Opcode::GroupCommit, raw.to_vec())
                .await
        }
        Err(reply) => return reply,
    }
    match shard
        .groups
        .commit(
            &request.group,
            &request.topic,
            request.queue,
            request.offset,
        )
        .await
    {
        Ok(()) => {
            shard.bump_metadata_version();
            Reply::ok(Vec::new())
        }
        Err(message) => Reply::error(Status::StoreError, message),
    }
}

pub async fn fetch(shard: &Rc<Shard>, raw: &[u8]) -> Reply {
    let request = match GroupFetch::decode(raw) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    match route(shard, &request.topic, request.queue) {
        Ok(Route::Local { .. }) => {}
        Ok(Route::Remote(owner)) => {
            return shard.forward(owner, Opcode::GroupFetch, raw.to_vec()).await
        }
        Err(reply) => return reply,
    }
    let offset = GroupOffset {
        offset: shard
            .groups
            .get(&request.group, &request.topic, request.queue),
    };
    Reply::ok(body(|out| offset.encode(out)))
}

pub async fn describe(shard: &Rc<Shard>, raw: &[u8]) -> Reply {
    let request = match GroupDescribe::decode(raw) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let mut queues = local_offsets(shard, &request.group);
    match shard
        .ask_others(|reply| ShardRequest::GroupOffsets {
            group: request.group.clone(),
            reply,
        })
        .await
    {
        Ok(others) => queues.extend(others.into_iter().flatten()),
        Err(reply) => return reply,
    }
    queues.sort_by(|a, b| (&a.topic, a.queue).cmp(&(&b.topic, b.queue)));
    let description = GroupDescription {
        group: request.group,
        queues,
    };
    Reply::ok(body(|out| description.encode(out)))
}

/// This shard's rows for a group: committed offset and the queue's visible end.
pub fn local_offsets(shard: &Shard, group: &str) -> Vec<GroupQueueLag> {
    let confirmed = shard.confirmed_offset();
    shard
        .groups
        .of_group(group)
        .into_iter()
        .filter_map(|(topic, queue, committed)| {
            let entry = shard.topic(&topic)?;
            let key = QueueKey {
                topic_id: entry.topic_id,
                queue,
            };
            let max_offset = shard.store.visible_end(key, confirmed)?;
            Some(GroupQueueLag {
                topic,
                queue,
                committed_offset: committed,
                max_offset,
            })
        })
        .collect()
}
