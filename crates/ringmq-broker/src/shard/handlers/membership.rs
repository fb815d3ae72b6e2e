//! Group membership: join, heartbeat, leave and members run on the group's coordinator shard
//! ([`coordinator_shard`]); any other shard forwards them there as they came. A member's pull
//! (which may carry a commit) runs on the shard that owns the queue, like a plain pull, after
//! the coordinator has fenced it: only the queue's current holder at the current generation
//! may read or commit it.

use super::{body, pull, route, Route};
use crate::constants::{MAX_TOPICS_PER_GROUP, SLAVE_GROUP_GRACE_MS};
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
use std::time::Duration;

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

/// Refuses membership on a slave whose master may still be live (`NOT_MASTER`, which a
/// failover client does not move on for): one coordinator per group across the master and
/// its slaves, or a member that failed over on a slow answer would join here and take
/// queues its master session still holds. Once the link has been down for
/// [`SLAVE_GROUP_GRACE_MS`] the slave coordinates groups itself, as a master would.
fn coordinates_here<D: Disk>(shard: &Shard<D>) -> Result<(), ShardError> {
    let Some(link) = shard.role_state().slave_link() else {
        return Ok(());
    };
    let grace = Duration::from_millis(SLAVE_GROUP_GRACE_MS);
    if link.master_may_be_live(shard.clock().now(), grace) {
        return Err(ShardError::NotMaster(format!(
            "this slave follows a master that is live (or was less than {SLAVE_GROUP_GRACE_MS} \
             ms ago): consumer groups are coordinated there"
        )));
    }
    Ok(())
}

/// A broadcasting member's offsets live under `<group>..<client id>` (see
/// `broadcast_offsets_key`). A member's group may not hold `..` nor end with `.`, and its
/// client id may not hold `..` (nor start with `.`, as no name may), so such a key splits
/// one way only and is no joinable group's name: no two members, and no clustering group,
/// share an offsets row.
fn broadcast_key_safe(group: &str, client_id: &str) -> Result<(), ShardError> {
    if group.contains("..") || group.ends_with('.') {
        return Err(ShardError::InvalidName(format!(
            "a consumer group member's group name `{group}` may not hold `..` nor end with `.` \
             (broadcasting offsets are kept under `<group>..<client id>`)"
        )));
    }
    if client_id.contains("..") {
        return Err(ShardError::InvalidName(format!(
            "client id `{client_id}` may not hold `..` (broadcasting offsets are kept under \
             `<group>..<client id>`)"
        )));
    }
    Ok(())
}

pub async fn join<D: Disk>(shard: &Rc<Shard<D>>, raw: &[u8]) -> Result<Reply, ShardError> {
    let request = GroupJoin::decode(raw)?;
    validate_name("group", &request.group)?;
    validate_name("host", &request.host)?;
    broadcast_key_safe(&request.group, &request.client_id)?;
    coordinates_here(shard)?;
    validate_name("client id", &request.client_id)?;
    if let Some(reply) = forwarded(shard, &request.group, Opcode::GroupJoin, raw).await {
        return Ok(reply);
    }
    if shard.kafka_groups().has_members(&request.group) {
        // One kind of member per group name: both would hand out the queues (`kafka::groups`).
        return Err(ShardError::Refused(format!(
            "group `{}` has Kafka consumers as members: a native consumer cannot join it",
            request.group
        )));
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
    shard.announce_fence_changes().await;
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
    coordinates_here(shard)?;
    if let Some(reply) = forwarded(shard, &request.group, Opcode::GroupHeartbeat, raw).await {
        return Ok(reply);
    }
    let assignment = shard.coordinator().borrow_mut().heartbeat(
        &request.group,
        &request.member_id,
        &request.released,
        shard.clock().now(),
    );
    shard.announce_fence_changes().await;
    let assignment = assignment?;
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
    shard.announce_fence_changes().await;
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
/// coordinator could end the member's session during the hop back, or while this shard still
/// holds a cached grant. The coordinator answers the join, heartbeat or leave that changed the
/// group only once every shard has dropped its cached grants of the group, so no successor
/// reads before then; and the queue shard refuses a commit older than the newest generation
/// that committed the row (`GroupOffsets::record_fenced`). What can still land in that window
/// is an offset the member had processed up to, before any successor read: nothing is lost,
/// at worst a message is seen again.
pub async fn pull<D: Disk>(shard: &Rc<Shard<D>>, raw: &[u8]) -> Result<Reply, ShardError> {
    let request = GroupPull::decode(raw)?;
    validate_name("group", &request.group)?;
    coordinates_here(shard)?;
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
        commit(shard, &offsets_key, &request, offset).await?;
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
        let summary = pull::summary(shard, key, offset).await?;
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

/// Lands a member's commit. A commit-only request (a member giving a queue up or leaving)
/// returns once the offset is on disk, as `GroupCommit` does. A commit riding on a read is
/// written in the background, coalesced with the others, so reading never waits for a file
/// write: a broker crash can lose the last few milliseconds of those, which only means
/// their messages are delivered again (the guarantee is at-least-once either way).
async fn commit<D: Disk>(
    shard: &Rc<Shard<D>>,
    offsets_key: &str,
    request: &GroupPull,
    offset: u64,
) -> Result<(), ShardError> {
    let groups = shard.metadata().groups();
    let version = groups.record_fenced(
        offsets_key,
        &request.topic,
        request.queue,
        offset,
        request.generation,
    )?;
    shard.metadata().bump();
    if request.max_messages == 0 {
        return groups.persist(version).await;
    }
    let owner = shard.clone();
    glommio::spawn_local(async move {
        if let Err(e) = owner.metadata().groups().persist(version).await {
            tracing::warn!(shard = owner.id(), "writing group offsets: {e}");
        }
    })
    .detach();
    Ok(())
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
    let cache = shard.fence_cache();
    if let Some(key) = cache.get(
        &request.group,
        &request.member_id,
        request.generation,
        &queue,
    ) {
        return Ok(key);
    }
    let epoch = cache.epoch();
    let (reply, answer) = oneshot::channel();
    shard
        .mesh()
        .send(
            coordinator,
            ShardRequest::GroupFence {
                group: request.group.clone(),
                member_id: request.member_id.clone(),
                generation: request.generation,
                queue: queue.clone(),
                reply,
            },
        )
        .await?;
    let key = answer
        .await
        .map_err(|_| ShardError::ShardGone(coordinator))??;
    shard.fence_cache().insert(
        epoch,
        &request.group,
        &request.member_id,
        request.generation,
        &queue,
        key.clone(),
    );
    Ok(key)
}

#[cfg(test)]
mod tests {
    use crate::clock::RealClock;
    use crate::config::BrokerConfig;
    use crate::protocol::message::*;
    use crate::protocol::{Opcode, Status};
    use crate::shard::mesh::Reply;
    use crate::shard::{handlers, Shard};
    use crate::store::io::Disk;
    use crate::testing::SimDisk;
    use std::rc::Rc;

    fn config() -> BrokerConfig {
        crate::testing::small_shard_config()
    }

    async fn call<D: Disk>(shard: &Rc<Shard<D>>, opcode: Opcode, body: Vec<u8>) -> Reply {
        handlers::handle(shard, opcode, &body).await
    }

    fn join(client: &str) -> Vec<u8> {
        let mut out = Vec::new();
        GroupJoin {
            group: "g".into(),
            client_id: client.into(),
            host: "h".into(),
            topics: vec!["t".into()],
            mode: 0,
            strategy: 0,
            orderly: 0,
            session_timeout_ms: 0,
        }
        .encode(&mut out);
        out
    }

    fn heartbeat(a: &GroupAssignment, released: Vec<GroupQueue>) -> Vec<u8> {
        let mut out = Vec::new();
        GroupHeartbeat {
            group: "g".into(),
            member_id: a.member_id.clone(),
            generation: a.generation,
            released,
        }
        .encode(&mut out);
        out
    }

    fn group_pull(
        a: &GroupAssignment,
        queue: u32,
        commit: Option<u64>,
        offset: u64,
        max: u32,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        GroupPull {
            group: "g".into(),
            member_id: a.member_id.clone(),
            generation: a.generation,
            topic: "t".into(),
            queue,
            commit,
            offset,
            max_messages: max,
            max_bytes: 1 << 16,
            max_wait_ms: 0,
        }
        .encode(&mut out);
        out
    }

    fn assignment(reply: Reply) -> GroupAssignment {
        assert_eq!(
            reply.status,
            Status::Ok,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        GroupAssignment::decode(&reply.body).unwrap()
    }

    fn offsets(reply: &Reply) -> Vec<u64> {
        PullResponse::decode(&reply.body)
            .unwrap()
            .messages
            .iter()
            .map(|m| m.queue_offset)
            .collect()
    }

    async fn committed<D: Disk>(shard: &Rc<Shard<D>>, queue: u32) -> Option<u64> {
        let mut out = Vec::new();
        GroupFetch {
            group: "g".into(),
            topic: "t".into(),
            queue,
        }
        .encode(&mut out);
        let reply = call(shard, Opcode::GroupFetch, out).await;
        GroupOffset::decode(&reply.body).unwrap().offset
    }

    /// A group or client id a broadcasting offsets key could be confused with is refused at
    /// the join.
    #[test]
    fn a_join_refuses_names_a_broadcast_key_could_collide_with() {
        glommio::LocalExecutor::default().run(async {
            let shard = Shard::open_for_test(SimDisk::new(), Rc::new(RealClock), config())
                .await
                .unwrap();
            let background = shard.spawn_background();
            for (group, client) in [("a..b", "c"), ("a.", "b"), ("a", "b..c")] {
                let mut out = Vec::new();
                GroupJoin {
                    group: group.into(),
                    client_id: client.into(),
                    host: "h".into(),
                    topics: vec!["t".into()],
                    mode: 1,
                    strategy: 0,
                    orderly: 0,
                    session_timeout_ms: 0,
                }
                .encode(&mut out);
                let reply = call(&shard, Opcode::GroupJoin, out).await;
                assert_eq!(reply.status, Status::InvalidName, "{group} / {client}");
            }
            shard.stop(background).await.unwrap();
        });
    }

    /// A slave refuses membership with NOT_MASTER while its link to the master streams and
    /// for a grace after it is lost (its master may still have the members), and coordinates
    /// groups itself once the master has been gone longer (here the join goes on to find no
    /// topic: the gate opened).
    #[test]
    fn a_slave_refuses_membership_while_its_master_may_be_live() {
        glommio::LocalExecutor::default().run(async {
            let config = BrokerConfig {
                broker_role: crate::config::BrokerRole::Slave,
                ..config()
            };
            let shard = Shard::open_for_test(SimDisk::new(), Rc::new(RealClock), config)
                .await
                .unwrap();
            let background = shard.spawn_background();
            let link = shard.role_state().slave_link().expect("a slave's link");
            link.established();
            let a = GroupAssignment {
                member_id: "a-1".into(),
                generation: 1,
                session_timeout_ms: 3_000,
                heartbeat_interval_ms: 1_000,
                owned: vec![],
                revoked: vec![],
                waiting: 0,
            };
            let streaming = call(&shard, Opcode::GroupJoin, join("a")).await;
            assert_eq!(streaming.status, Status::NotMaster);
            let beat = call(&shard, Opcode::GroupHeartbeat, heartbeat(&a, vec![])).await;
            assert_eq!(beat.status, Status::NotMaster);
            let pull = call(&shard, Opcode::GroupPull, group_pull(&a, 0, Some(1), 1, 0)).await;
            assert_eq!(pull.status, Status::NotMaster);
            link.lost(std::time::Instant::now());
            let just_lost = call(&shard, Opcode::GroupJoin, join("a")).await;
            assert_eq!(just_lost.status, Status::NotMaster);
            link.established();
            let long_ago = std::time::Duration::from_millis(crate::constants::SLAVE_GROUP_GRACE_MS);
            link.lost(std::time::Instant::now() - long_ago);
            let taken_over = call(&shard, Opcode::GroupJoin, join("a")).await;
            assert_eq!(taken_over.status, Status::TopicNotFound);
            shard.stop(background).await.unwrap();
        });
    }

    /// Through the handlers on one shard: a member reads from the group's committed offset
    /// and commits with its next pull; a join makes its generation stale, so its pull and
    /// commit are refused and nothing lands; it gives up the revoked queue with a commit and
    /// a release, and the newcomer reads that queue from the committed offset.
    #[test]
    fn a_members_pull_commits_and_a_stale_generation_commits_nothing() {
        glommio::LocalExecutor::default().run(async {
            let shard = Shard::open_for_test(SimDisk::new(), Rc::new(RealClock), config())
                .await
                .unwrap();
            let background = shard.spawn_background();
            let mut create = Vec::new();
            TopicCreate {
                name: "t".into(),
                queue_count: 2,
            }
            .encode(&mut create);
            assert_eq!(
                call(&shard, Opcode::TopicCreate, create).await.status,
                Status::Ok
            );
            for queue in 0..2 {
                let mut produce = Vec::new();
                ProduceRequest {
                    topic: "t",
                    queue,
                    messages: (0..3)
                        .map(|_| MessageRef {
                            born_timestamp_ms: 0,
                            key: b"",
                            properties: b"",
                            body: b"m",
                        })
                        .collect(),
                }
                .encode(&mut produce);
                assert_eq!(
                    call(&shard, Opcode::Produce, produce).await.status,
                    Status::Ok
                );
            }

            let a = assignment(call(&shard, Opcode::GroupJoin, join("a")).await);
            assert_eq!(a.owned.len(), 2);
            let read = call(
                &shard,
                Opcode::GroupPull,
                group_pull(&a, 0, None, u64::MAX, 16),
            )
            .await;
            assert_eq!(offsets(&read), [0, 1, 2]);
            let commit = call(&shard, Opcode::GroupPull, group_pull(&a, 0, Some(3), 3, 0)).await;
            assert_eq!(commit.status, Status::NoNewMessage);
            assert_eq!(committed(&shard, 0).await, Some(3));

            let b = assignment(call(&shard, Opcode::GroupJoin, join("b")).await);
            let stale = call(&shard, Opcode::GroupPull, group_pull(&a, 1, Some(2), 2, 16)).await;
            assert_eq!(stale.status, Status::IllegalGeneration);
            assert_eq!(committed(&shard, 1).await, None, "a refused commit landed");
            let a = assignment(call(&shard, Opcode::GroupHeartbeat, heartbeat(&a, vec![])).await);
            let q1 = GroupQueue {
                topic: "t".into(),
                queue: 1,
            };
            assert_eq!(a.revoked, std::slice::from_ref(&q1));
            let early = call(
                &shard,
                Opcode::GroupPull,
                group_pull(&b, 1, None, u64::MAX, 16),
            )
            .await;
            assert_eq!(
                early.status,
                Status::IllegalGeneration,
                "b read before a released"
            );
            let commit = call(&shard, Opcode::GroupPull, group_pull(&a, 1, Some(1), 1, 0)).await;
            assert_eq!(commit.status, Status::NoNewMessage);
            let a = assignment(
                call(
                    &shard,
                    Opcode::GroupHeartbeat,
                    heartbeat(&a, vec![q1.clone()]),
                )
                .await,
            );
            assert!(a.revoked.is_empty());
            let b = assignment(call(&shard, Opcode::GroupHeartbeat, heartbeat(&b, vec![])).await);
            assert_eq!(b.owned, [q1]);
            let read = call(
                &shard,
                Opcode::GroupPull,
                group_pull(&b, 1, None, u64::MAX, 16),
            )
            .await;
            assert_eq!(offsets(&read), [1, 2], "b starts from a's commit");

            let mut leave = Vec::new();
            GroupLeave {
                group: "g".into(),
                member_id: b.member_id.clone(),
            }
            .encode(&mut leave);
            assert_eq!(
                call(&shard, Opcode::GroupLeave, leave).await.status,
                Status::Ok
            );
            let a = assignment(call(&shard, Opcode::GroupHeartbeat, heartbeat(&a, vec![])).await);
            assert_eq!(a.owned.len(), 2);
            let gone = call(&shard, Opcode::GroupHeartbeat, heartbeat(&b, vec![])).await;
            assert_eq!(gone.status, Status::UnknownMember);
            shard.stop(background).await.unwrap();
        });
    }
}
