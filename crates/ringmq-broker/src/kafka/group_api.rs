//! The Kafka group APIs on the wire: FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup (to the group's coordinator shard, [`super::groups`]) and OffsetCommit,
//! OffsetFetch (ringmq's group offsets through the native GroupCommit, GroupFetch and
//! GroupDescribe, so `ringmq group describe` shows a Kafka group's offsets).

use super::api::{code as kafka_code, error_code, native, Who};
use super::groups::{self, code, Join, Joined, Request, Response, Synced};
use super::KafkaNode;
use crate::protocol::message::{
    GroupCommit, GroupDescribe, GroupDescription, GroupFetch, GroupOffset,
};
use crate::protocol::{Opcode, Status};
use crate::shard::mesh::ShardRequest;
use crate::shard::Shard;
use crate::store::io::Disk;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use std::rc::Rc;
use tracing::{debug, warn};

/// FindCoordinator's key type of a transactional id.
const KEY_TYPE_TRANSACTION: i8 = 1;
/// OffsetCommit's error for an offset that is not one (negative).
const INVALID_COMMIT_OFFSET_SIZE: i16 = 28;
/// The caller may not act on the group (its ACLs).
const GROUP_AUTHORIZATION_FAILED: i16 = 30;

fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// ringmq keeps group offsets under the native naming rules: a Kafka group id outside them
/// is refused up front, with the reason in the broker log.
fn group_id_error(group_id: &str) -> Option<(i16, String)> {
    crate::shard::topics::validate_name("group", group_id)
        .err()
        .map(|e| (code::INVALID_GROUP_ID, e.to_string()))
}

/// Runs a group request on its coordinator shard (here, or over the mesh), once the caller
/// is allowed to: a join, sync, heartbeat or leave needs the group's `fetch` right, the
/// commit check its `commit` right (the native GroupJoin's and GroupCommit's).
async fn coordinate(shard: &Rc<Shard>, who: Who<'_>, group_id: &str, request: Request) -> Response {
    use crate::security::acl::{Need, Operation};
    let operation = match request {
        Request::CommitCheck { .. } => Operation::Commit,
        _ => Operation::Fetch,
    };
    if let Err(refused) = who.authorize(shard, &[Need::group(operation, group_id)]) {
        debug!(group = %group_id, "a Kafka group request refused: {refused}");
        return request.refused(GROUP_AUTHORIZATION_FAILED);
    }
    let owner = groups::coordinator_shard(group_id, shard.shard_count());
    if owner == shard.id() {
        return serve_here(shard, request).await;
    }
    shard
        .ask_one(owner, |reply| ShardRequest::KafkaGroup { request, reply })
        .await
        .unwrap_or(Response::Code(code::COORDINATOR_NOT_AVAILABLE))
}

/// Runs a group request on this shard, its coordinator (from a Kafka connection here or over
/// the mesh): refused with COORDINATOR_NOT_AVAILABLE (15) once a clean stop began, with
/// NOT_COORDINATOR (16) on a broker that is not a master, and a join or commit with
/// INCONSISTENT_GROUP_PROTOCOL (23) while native members are in the group of that name (the
/// native join refuses Kafka members alike): one kind of member per group name.
pub async fn serve_here<D: Disk>(shard: &Shard<D>, request: Request) -> Response {
    if shard.lifecycle().is_stopping() {
        return request.refused(code::COORDINATOR_NOT_AVAILABLE);
    }
    if !shard.is_master() {
        return request.refused(code::NOT_COORDINATOR);
    }
    let joins_or_commits = matches!(request, Request::Join(_) | Request::CommitCheck { .. });
    if joins_or_commits && shard.coordinator().borrow().has_members(request.group_id()) {
        warn!(
            group = %request.group_id(),
            "a Kafka join or commit for a group with native members; refused"
        );
        return request.refused(code::INCONSISTENT_GROUP_PROTOCOL);
    }
    shard.kafka_groups().serve(request).await
}

/// A coordinator's answer as an error code (a Join or Sync answer where a code was expected
/// is a bug: it reads as "not available", which clients retry).
fn answer_code(response: Response) -> i16 {
    match response {
        Response::Code(code) => code,
        Response::Joined(j) => j.error,
        Response::Synced(s) => s.error,
    }
}

pub async fn find_coordinator(
    shard: &Rc<Shard>,
    node: &KafkaNode,
    request: FindCoordinatorRequest,
    version: i16,
) -> Option<FindCoordinatorResponse> {
    let refusal = if request.key_type == KEY_TYPE_TRANSACTION {
        Some((
            code::COORDINATOR_NOT_AVAILABLE,
            "ringmq has no transactions: there is no transaction coordinator".to_string(),
        ))
    } else if !shard.is_master() {
        Some((
            code::COORDINATOR_NOT_AVAILABLE,
            "a SLAVE coordinates no groups: ask the master".to_string(),
        ))
    } else {
        group_id_error(request.key.as_str())
    };
    let mut response = FindCoordinatorResponse::default();
    match refusal {
        Some((error, message)) => {
            response = response.with_error_code(error).with_node_id(BrokerId(-1));
            if version >= 1 {
                response = response.with_error_message(Some(text(message)));
            }
        }
        None => {
            response = response
                .with_node_id(BrokerId(node.node_id))
                .with_host(text(node.advertised_host.clone()))
                .with_port(node.advertised_port);
        }
    }
    Some(response)
}

pub async fn join_group(
    shard: &Rc<Shard>,
    who: Who<'_>,
    client_id: &str,
    request: JoinGroupRequest,
    version: i16,
) -> Option<JoinGroupResponse> {
    let group_id = request.group_id.0.to_string();
    let member_id = request.member_id.to_string();
    let joined = if let Some((error, _)) = group_id_error(&group_id) {
        Joined::error(error, &member_id)
    } else if !shard.is_master() {
        Joined::error(code::NOT_COORDINATOR, &member_id)
    } else {
        let join = Join {
            group_id: group_id.clone(),
            member_id: member_id.clone(),
            client_id: client_id.to_string(),
            session_timeout_ms: request.session_timeout_ms,
            rebalance_timeout_ms: if version >= 1 {
                request.rebalance_timeout_ms
            } else {
                request.session_timeout_ms
            },
            protocol_type: request.protocol_type.to_string(),
            protocols: request
                .protocols
                .into_iter()
                .map(|p| (p.name.to_string(), p.metadata))
                .collect(),
        };
        match coordinate(shard, who, &group_id, Request::Join(join)).await {
            Response::Joined(joined) => joined,
            other => Joined::error(answer_code(other), &member_id),
        }
    };
    Some(join_response(joined))
}

pub(super) fn join_response(joined: Joined) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_error_code(joined.error)
        .with_generation_id(joined.generation)
        .with_protocol_name(Some(text(joined.protocol_name)))
        .with_leader(text(joined.leader))
        .with_member_id(text(joined.member_id))
        .with_members(
            joined
                .members
                .into_iter()
                .map(|(id, metadata)| {
                    join_group_response::JoinGroupResponseMember::default()
                        .with_member_id(text(id))
                        .with_metadata(metadata)
                })
                .collect(),
        )
}

pub async fn sync_group(
    shard: &Rc<Shard>,
    who: Who<'_>,
    request: SyncGroupRequest,
) -> Option<SyncGroupResponse> {
    let group_id = request.group_id.0.to_string();
    let synced = if let Some((error, _)) = group_id_error(&group_id) {
        Synced {
            error,
            ..Synced::default()
        }
    } else {
        let sync = Request::Sync {
            group_id: group_id.clone(),
            generation: request.generation_id,
            member_id: request.member_id.to_string(),
            assignments: request
                .assignments
                .into_iter()
                .map(|a| (a.member_id.to_string(), a.assignment))
                .collect(),
        };
        match coordinate(shard, who, &group_id, sync).await {
            Response::Synced(synced) => synced,
            other => Synced {
                error: answer_code(other),
                ..Synced::default()
            },
        }
    };
    Some(
        SyncGroupResponse::default()
            .with_error_code(synced.error)
            .with_assignment(synced.assignment),
    )
}

pub async fn heartbeat(
    shard: &Rc<Shard>,
    who: Who<'_>,
    request: HeartbeatRequest,
) -> Option<HeartbeatResponse> {
    let group_id = request.group_id.0.to_string();
    let error = match group_id_error(&group_id) {
        Some((error, _)) => error,
        None => answer_code(
            coordinate(
                shard,
                who,
                &group_id,
                Request::Heartbeat {
                    group_id: group_id.clone(),
                    generation: request.generation_id,
                    member_id: request.member_id.to_string(),
                },
            )
            .await,
        ),
    };
    Some(HeartbeatResponse::default().with_error_code(error))
}

pub async fn leave_group(
    shard: &Rc<Shard>,
    who: Who<'_>,
    request: LeaveGroupRequest,
) -> Option<LeaveGroupResponse> {
    let group_id = request.group_id.0.to_string();
    let error = match group_id_error(&group_id) {
        Some((error, _)) => error,
        None => answer_code(
            coordinate(
                shard,
                who,
                &group_id,
                Request::Leave {
                    group_id: group_id.clone(),
                    member_id: request.member_id.to_string(),
                },
            )
            .await,
        ),
    };
    Some(LeaveGroupResponse::default().with_error_code(error))
}

pub async fn offset_commit(
    shard: &Rc<Shard>,
    who: Who<'_>,
    request: OffsetCommitRequest,
) -> Option<OffsetCommitResponse> {
    let group_id = request.group_id.0.to_string();
    let refused = if let Some((error, _)) = group_id_error(&group_id) {
        error
    } else if !shard.is_master() {
        code::NOT_COORDINATOR
    } else {
        let check = Request::CommitCheck {
            group_id: group_id.clone(),
            generation: request.generation_id_or_member_epoch,
            member_id: request.member_id.to_string(),
        };
        answer_code(coordinate(shard, who, &group_id, check).await)
    };
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let topic_name = topic.name.0.to_string();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let error = if refused != code::NONE {
                refused
            } else {
                commit_one(
                    shard,
                    who,
                    &group_id,
                    &topic_name,
                    p.partition_index,
                    p.committed_offset,
                )
                .await
            };
            partitions.push(
                offset_commit_response::OffsetCommitResponsePartition::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(error),
            );
        }
        topics.push(
            offset_commit_response::OffsetCommitResponseTopic::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    Some(OffsetCommitResponse::default().with_topics(topics))
}

/// One partition's commit through the native GroupCommit (routed to the shard that owns the
/// queue, durable when answered). The commit's metadata string is not kept.
async fn commit_one(
    shard: &Rc<Shard>,
    who: Who<'_>,
    group: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> i16 {
    let (Ok(queue), Ok(offset)) = (u32::try_from(partition), u64::try_from(offset)) else {
        return if partition < 0 {
            kafka_code::UNKNOWN_TOPIC_OR_PARTITION
        } else {
            INVALID_COMMIT_OFFSET_SIZE
        };
    };
    let mut body = Vec::new();
    GroupCommit {
        group: group.to_string(),
        topic: topic.to_string(),
        queue,
        offset,
    }
    .encode(&mut body);
    error_code(native(shard, who, Opcode::GroupCommit, body).await.status)
}

pub async fn offset_fetch(
    shard: &Rc<Shard>,
    who: Who<'_>,
    request: OffsetFetchRequest,
    version: i16,
) -> Option<OffsetFetchResponse> {
    let group_id = request.group_id.0.to_string();
    if let Some((error, _)) = group_id_error(&group_id) {
        let mut response = OffsetFetchResponse::default();
        if version >= 2 {
            response = response.with_error_code(error);
        }
        return Some(response);
    }
    let wanted: Vec<(String, Vec<i32>)> = match request.topics {
        Some(topics) => topics
            .into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect(),
        // Version 2 on: null asks for every partition the group committed.
        None => match committed_partitions(shard, who, &group_id).await {
            Ok(rows) => rows,
            Err(error) => {
                return Some(OffsetFetchResponse::default().with_error_code(error));
            }
        },
    };
    let mut topics = Vec::with_capacity(wanted.len());
    for (topic, indexes) in wanted {
        let mut partitions = Vec::with_capacity(indexes.len());
        for index in indexes {
            let (offset, error) = fetch_one(shard, who, &group_id, &topic, index).await;
            partitions.push(
                offset_fetch_response::OffsetFetchResponsePartition::default()
                    .with_partition_index(index)
                    .with_committed_offset(offset)
                    .with_error_code(error),
            );
        }
        topics.push(
            offset_fetch_response::OffsetFetchResponseTopic::default()
                .with_name(TopicName(text(topic)))
                .with_partitions(partitions),
        );
    }
    Some(OffsetFetchResponse::default().with_topics(topics))
}

/// A partition's committed offset (-1: none), through the native GroupFetch.
async fn fetch_one(
    shard: &Rc<Shard>,
    who: Who<'_>,
    group: &str,
    topic: &str,
    index: i32,
) -> (i64, i16) {
    let Ok(queue) = u32::try_from(index) else {
        return (-1, code::NONE);
    };
    let mut body = Vec::new();
    GroupFetch {
        group: group.to_string(),
        topic: topic.to_string(),
        queue,
    }
    .encode(&mut body);
    let reply = native(shard, who, Opcode::GroupFetch, body).await;
    if matches!(reply.status, Status::TopicNotFound | Status::QueueNotFound) {
        // Kafka's answer for a partition nothing was committed to, existing or not.
        return (-1, code::NONE);
    }
    if reply.status != Status::Ok {
        return (-1, error_code(reply.status));
    }
    match GroupOffset::decode(&reply.body) {
        Ok(GroupOffset { offset: Some(o) }) => (o as i64, code::NONE),
        Ok(GroupOffset { offset: None }) => (-1, code::NONE),
        Err(_) => (-1, kafka_code::UNKNOWN_SERVER_ERROR),
    }
}

/// Every (topic, partitions) the group committed, through the native GroupDescribe.
async fn committed_partitions(
    shard: &Rc<Shard>,
    who: Who<'_>,
    group: &str,
) -> Result<Vec<(String, Vec<i32>)>, i16> {
    let mut body = Vec::new();
    GroupDescribe {
        group: group.to_string(),
    }
    .encode(&mut body);
    let reply = native(shard, who, Opcode::GroupDescribe, body).await;
    if reply.status != Status::Ok {
        return Err(error_code(reply.status));
    }
    let description =
        GroupDescription::decode(&reply.body).map_err(|_| kafka_code::UNKNOWN_SERVER_ERROR)?;
    let mut topics: Vec<(String, Vec<i32>)> = Vec::new();
    for row in description.queues {
        let Ok(index) = i32::try_from(row.queue) else {
            continue;
        };
        match topics.iter_mut().find(|(t, _)| *t == row.topic) {
            Some((_, indexes)) => indexes.push(index),
            None => topics.push((row.topic, vec![index])),
        }
    }
    Ok(topics)
}
