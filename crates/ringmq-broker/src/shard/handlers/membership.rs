//! Group membership: join, heartbeat, leave and members run on the group's coordinator shard
//! ([`coordinator_shard`]); any other shard forwards them there as they came. A member's pull
//! (which may carry a commit) runs on the shard that owns the queue, like a plain pull, after
//! the coordinator has fenced it: only the queue's current holder at the current generation
//! may read or commit it.

use super::{body, pull, route, Route};
use crate::constants::MAX_TOPICS_PER_GROUP;
use crate::protocol::message::{
    GroupHeartbeat, GroupJoin, GroupLeave, GroupMembers, GroupPull, GroupQueue, PullRequest,
    PullResponseEncoder,
};
use crate::protocol::{Opcode, Status};
use crate::shard::allocation::Strategy;
use crate::shard::coordinator::{coordinator_shard, GroupMode, GroupSettings, Join};
use crate::shard::mesh::{Reply, ShardRequest};
use crate::shard::topics::{retry_topic, validate_name};
use crate::shard::{Shard, ShardError};
use crate::store::io::Disk;
use crate::store::QueueKey;
use futures_channel::oneshot;
use std::rc::Rc;

/// `Some(reply)` when another shard coordinates `group` and answered the forwarded request.
async fn forwarded<D: Disk>(
    shard: &Rc<Shard<D>>,
    group: &str,
    opcode: Opcode,
    raw: &[u8],
) -> Option<Reply> {
    let coordinator = coordinator_shard(group, shard.shard_count());
    if coordinator == shard.id() {
        return None;
    }
    Some(shard.forward(coordinator, opcode, raw.to_vec()).await)
}

pub async fn join<D: Disk>(shard: &Rc<Shard<D>>, raw: &[u8]) -> Result<Reply, ShardError> {
    let request = GroupJoin::decode(raw)?;
    validate_name("group", &request.group)?;
    validate_name("client id", &request.client_id)?;
    if let Some(reply) = forwarded(shard, &request.group, Opcode::GroupJoin, raw).await {
        return Ok(reply);
    }
    let settings = settings(&request)?;
    let mut queues = Vec::new();
    for topic in &settings.topics {
        let entry = shard
            .topic(topic)
            .ok_or_else(|| ShardError::TopicNotFound(topic.clone()))?;
        queues.extend((0..entry.queue_count()).map(|queue| GroupQueue {
            topic: topic.clone(),
            queue,
        }));
    }
    queues.extend(retry_queues(shard, &request.group, settings.mode));
    queues.sort();
    let assignment = shard.coordinator().borrow_mut().join(
        Join {
            group: &request.group,
            client_id: &request.client_id,
            host: &request.host,
            settings,
            session_timeout_ms: request.session_timeout_ms,
            queues,
        },
        shard.clock().now(),
    )?;
    tracing::info!(
        shard = shard.id(),
        group = %request.group,
        member = %assignment.member_id,
        host = %request.host,
        generation = assignment.generation,
        "group member joined"
    );
    Ok(Reply::ok(body(|out| assignment.encode(out))))
}

/// A clustering group also reads its retry topic `%RETRY%<group>` (where its rejected
/// messages come back, `handlers/reject.rs`) once the broker has made it, at the group's first
/// reject; a consumer that rejected before the topic existed joins again to pick it up.
/// Broadcasting members get no retries (as in RocketMQ: each member's failures are its own).
fn retry_queues<D: Disk>(shard: &Shard<D>, group: &str, mode: GroupMode) -> Vec<GroupQueue> {
    let retry = retry_topic(group);
    match (mode, shard.topic(&retry)) {
        (GroupMode::Clustering, Some(entry)) => (0..entry.queue_count())
            .map(|queue| GroupQueue {
                topic: retry.clone(),
                queue,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The join's settings, checked: known mode and strategy, 1 to `MAX_TOPICS_PER_GROUP` valid
/// topic names (sorted, so the order a client lists them in does not matter).
fn settings(request: &GroupJoin) -> Result<GroupSettings, ShardError> {
    let mode = GroupMode::from_wire(request.mode)
        .ok_or_else(|| ShardError::Refused(format!("unknown group mode {}", request.mode)))?;
    let strategy = Strategy::from_wire(request.strategy).ok_or_else(|| {
        ShardError::Refused(format!("unknown allocation strategy {}", request.strategy))
    })?;
    if request.orderly > 1 {
        return Err(ShardError::Refused(format!(
            "orderly must be 0 or 1, not {}",
            request.orderly
        )));
    }
    let mut topics = request.topics.clone();
    topics.sort();
    topics.dedup();
    if topics.is_empty() || topics.len() > MAX_TOPICS_PER_GROUP {
        return Err(ShardError::Refused(format!(
            "a group consumes 1 to {MAX_TOPICS_PER_GROUP} topics, not {}",
            topics.len()
        )));
    }
    for topic in &topics {
        validate_name("topic", topic)?;
    }
    Ok(GroupSettings {
        topics,
        mode,
        strategy,
        orderly: request.orderly == 1,
    })
}

pub async fn heartbeat<D: Disk>(shard: &Rc<Shard<D>>, raw: &[u8]) -> Result<Reply, ShardError> {
    let request = GroupHeartbeat::decode(raw)?;
    validate_name("group", &request.group)?;
    if let Some(reply) = forwarded(shard, &request.group, Opcode::GroupHeartbeat, raw).await {
        return Ok(reply);
    }
    let assignment = shard.coordinator().borrow_mut().heartbeat(
        &request.group,
        &request.member_id,
        &request.released,
        shard.clock().now(),
    )?;
    Ok(Reply::ok(body(|out| assignment.encode(out))))
}

pub async fn leave<D: Disk>(shard: &Rc<Shard<D>>, raw: &[u8]) -> Result<Reply, ShardError> {
    let request = GroupLeave::decode(raw)?;
    validate_name("group", &request.group)?;
    if let Some(reply) = forwarded(shard, &request.group, Opcode::GroupLeave, raw).await {
        return Ok(reply);
    }
    shard.coordinator().borrow_mut().leave(
        &request.group,
        &request.member_id,
        shard.clock().now(),
    )?;
    tracing::info!(shard = shard.id(), group = %request.group, member = %request.member_id, "group member left");
    Ok(Reply::ok(Vec::new()))
}

pub async fn members<D: Disk>(shard: &Rc<Shard<D>>, raw: &[u8]) -> Result<Reply, ShardError> {
    let request = GroupMembers::decode(raw)?;
    validate_name("group", &request.group)?;
    if let Some(reply) = forwarded(shard, &request.group, Opcode::GroupMembers, raw).await {
        return Ok(reply);
    }
    let membership = shard
        .coordinator()
        .borrow()
        .membership(&request.group, shard.clock().now());
    Ok(Reply::ok(body(|out| membership.encode(out))))
}

/// A member's pull: fenced by the coordinator, then its commit (if any) lands, then the read
/// runs as a plain pull's does.
///
/// The fence and the commit are not one step when the coordinator is another shard: the
/// coordinator could end the member's session during the hop back. That window is the mesh's
/// round trip (microseconds) against a session's seconds, and what lands then is an offset the
/// member had processed up to, so a successor that read from an earlier committed offset
/// loses nothing; at worst it sees again what it already processed.
pub async fn pull<D: Disk>(shard: &Rc<Shard<D>>, raw: &[u8]) -> Result<Reply, ShardError> {
    let request = GroupPull::decode(raw)?;
    validate_name("group", &request.group)?;
    let topic_id = match route(shard, &request.topic, request.queue)? {
        Route::Local { topic_id } => topic_id,
        Route::Remote(owner) => {
            return Ok(shard.forward(owner, Opcode::GroupPull, raw.to_vec()).await)
        }
    };
    let queue = GroupQueue {
        topic: request.topic.clone(),
        queue: request.queue,
    };
    let offsets_key = fence(shard, &request, queue).await?;
    let groups = shard.metadata().groups();
    if let Some(offset) = request.commit {
        groups
            .commit(&offsets_key, &request.topic, request.queue, offset)
            .await?;
        shard.metadata().bump();
    }
    let key = QueueKey {
        topic_id,
        queue: request.queue,
    };
    let offset = match request.offset {
        u64::MAX => match groups.get(&offsets_key, &request.topic, request.queue) {
            Some(committed) => committed,
            None => {
                shard
                    .store()
                    .queue_range(key)
                    .ok_or_else(super::unregistered_queue)?
                    .0
            }
        },
        offset => offset,
    };
    if request.max_messages == 0 {
        let summary = pull::summary(shard, key, offset)?;
        return Ok(Reply::with_status(
            Status::NoNewMessage,
            body(|out| PullResponseEncoder::begin(out, summary).finish(out, offset)),
        ));
    }
    let plain = PullRequest {
        topic: request.topic,
        queue: request.queue,
        offset,
        max_messages: request.max_messages,
        max_bytes: request.max_bytes,
        max_wait_ms: request.max_wait_ms,
    };
    pull::serve(shard, topic_id, &plain).await
}

/// Asks the group's coordinator (this shard or another) whether the pull may run.
async fn fence<D: Disk>(
    shard: &Rc<Shard<D>>,
    request: &GroupPull,
    queue: GroupQueue,
) -> Result<String, ShardError> {
    let coordinator = coordinator_shard(&request.group, shard.shard_count());
    if coordinator == shard.id() {
        return Ok(shard.coordinator().borrow().fence(
            &request.group,
            &request.member_id,
            request.generation,
            &queue,
        )?);
    }
    let (reply, answer) = oneshot::channel();
    shard
        .mesh()
        .send(
            coordinator,
            ShardRequest::GroupFence {
                group: request.group.clone(),
                member_id: request.member_id.clone(),
                generation: request.generation,
                queue,
                reply,
            },
        )
        .await?;
    Ok(answer
        .await
        .map_err(|_| ShardError::ShardGone(coordinator))??)
}
