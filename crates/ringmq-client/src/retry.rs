//! Retries and dead letters, as a group consumer sees them.
//!
//! A consumer of group `G` acknowledges a message by committing past it (`GroupCommit`) and
//! rejects it with [`reject`]: the broker then appends a copy that comes back through the
//! group's retry topic `%RETRY%G` after a delay that grows per attempt, and after
//! `max_reconsume_times` attempts into the dead-letter topic `%DLQ%G` instead. A consumer of
//! `G` therefore reads `%RETRY%G` beside its own topics ([`subscribed_topics`]); what a copy
//! carries about its first delivery is in its properties ([`Delivery::of`]).

use super::api::Client;
use super::error::ClientError;
use crate::protocol::message::{MessageReject, PulledMessage, RejectOutcome};
use crate::protocol::properties as props;
use crate::protocol::requests::RejectResult;
use crate::protocol::Status;

/// The retry topic of a group.
pub fn retry_topic(group: &str) -> String {
    format!("%RETRY%{group}")
}

/// The dead-letter topic of a group.
pub fn dlq_topic(group: &str) -> String {
    format!("%DLQ%{group}")
}

/// The topics a consumer of `group` reads to consume `topics`: those, and the group's retry
/// topic once it exists (the broker makes it at the group's first reject), so retried
/// messages come back to the group.
pub fn subscribed_topics(client: &mut Client, group: &str, topics: &[String]) -> Vec<String> {
    let retry = retry_topic(group);
    let mut all = topics.to_vec();
    if !all.contains(&retry) && client.topic(&retry).is_ok() {
        all.push(retry);
    }
    all
}

/// Rejects the message at `offset` of `topic`/`queue` for `group`: the broker schedules its
/// retry (or makes it a dead letter) and answers once the copy is stored. The consumer then
/// commits past the message as if it had been processed: the copy is the one to wait for.
/// `max_reconsume_times` 0 uses the broker's `max_reconsume_times`. A copy stored without its
/// durability guarantee in time ([`durable`]) is an error: the consumer must not commit past
/// the message then, so that a crash that loses the copy delivers the original again.
pub fn reject(
    client: &mut Client,
    group: &str,
    topic: &str,
    queue: u32,
    offset: u64,
    max_reconsume_times: u32,
) -> Result<RejectOutcome, ClientError> {
    durable(client.call(&MessageReject {
        group: group.to_string(),
        topic: topic.to_string(),
        queue,
        offset,
        max_reconsume_times,
    })?)
}

/// The outcome of a reject whose copy is durable (`OK`); an error for a copy stored without
/// its guarantee (`FLUSH_DISK_TIMEOUT`, `FLUSH_SLAVE_TIMEOUT`, `SLAVE_NOT_AVAILABLE`), which a
/// crash may still lose.
pub fn durable(result: RejectResult) -> Result<RejectOutcome, ClientError> {
    match result.status {
        Status::Ok => Ok(result.outcome),
        status => Err(ClientError::Status {
            status,
            message: format!(
                "the copy went to {} but is not durable yet: the message stays uncommitted",
                result.outcome.topic
            ),
        }),
    }
}

/// What a delivered message says about its earlier attempts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Rejections so far: 0 on the first delivery.
    pub reconsume_times: u32,
    /// Topic, queue and offset of the first delivery, for a retried or dead copy.
    pub origin: Option<(String, u32, u64)>,
    /// The first delivery's id (`<broker>:<shard>:<commitlog offset>`), for a copy.
    pub origin_message_id: Option<String>,
}

impl Delivery {
    pub fn of(message: &PulledMessage) -> Delivery {
        let p = &message.properties;
        let origin = match (
            props::get(p, props::ORIGIN_TOPIC),
            props::get_u64(p, props::ORIGIN_QUEUE),
            props::get_u64(p, props::ORIGIN_OFFSET),
        ) {
            (Some(topic), Some(queue), Some(offset)) => u32::try_from(queue)
                .ok()
                .map(|q| (topic.to_string(), q, offset)),
            _ => None,
        };
        Delivery {
            reconsume_times: props::get_u64(p, props::RECONSUME_TIMES)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(0),
            origin,
            origin_message_id: props::get(p, props::ORIGIN_MESSAGE_ID).map(str::to_string),
        }
    }
}
