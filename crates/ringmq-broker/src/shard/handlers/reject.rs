//! MessageReject: a group consumer could not process a message, so the broker appends a copy
//! that comes back later (RocketMQ's `consumerSendMessageBack`).
//!
//! The request names the group and the message's topic, queue and offset; it runs on the shard
//! that owns that queue, which reads the record itself (the consumer does not resend the body).
//! The copy keeps the key, body and the producer's properties, and carries where the message
//! came from and how often it was rejected ([`crate::protocol::properties`]). While the count
//! is below `max_reconsume_times` the copy goes to the schedule topic's queue for its delay
//! level, from which `shard/delays.rs` moves it into `%RETRY%<group>` once it is due; after
//! that it goes to the dead-letter topic `%DLQ%<group>`. The answer comes once the copy is
//! stored with the flush mode's guarantee, exactly like a produce: a reject answered `OK` is
//! never lost.

use super::{body, produce, route, Route};
use crate::constants::MAX_QUEUES_PER_TOPIC;
use crate::protocol::message::{
    MessageRef, MessageReject, ProduceRequest, ProduceResponse, RejectOutcome,
};
use crate::protocol::properties::{self as props, DELAY_LEVEL, DUE_MS, REAL_TOPIC};
use crate::protocol::Opcode;
use crate::shard::handlers::topic::ensure_internal;
use crate::shard::mesh::Reply;
use crate::shard::topics::{
    dlq_topic, retry_topic, validate_name, DLQ_TOPIC_PREFIX, SCHEDULE_TOPIC,
};
use crate::shard::{Shard, ShardError};
use crate::store::io::Disk;
use crate::store::record::{self, Decoded};
use crate::store::QueueKey;
use std::rc::Rc;

/// Queues of a dead-letter topic: one, as in RocketMQ. Dead letters are rare and read by an
/// operator, who wants them in the order they died.
pub const DLQ_QUEUE_COUNT: u32 = 1;

pub async fn handle<D: Disk>(shard: &Rc<Shard<D>>, raw: &[u8]) -> Result<Reply, ShardError> {
    let request = MessageReject::decode(raw)?;
    validate_name("group", &request.group)?;
    // A dead letter is the end of a message, and a schedule record is not delivered to
    // consumers: rejecting either would only make more copies.
    if request.topic == SCHEDULE_TOPIC || request.topic.starts_with(DLQ_TOPIC_PREFIX) {
        return Err(ShardError::Refused(format!(
            "`{}` cannot be rejected: only a group's topics and its retry topic are retried",
            request.topic
        )));
    }
    if !shard.is_master() {
        return Err(ShardError::NotMaster(
            "a reject appends a copy of the message: send it to the master".to_string(),
        ));
    }
    if shard.lifecycle().is_stopping() {
        return Err(ShardError::ShuttingDown);
    }
    let topic_id = match route(shard, &request.topic, request.queue)? {
        Route::Local { topic_id } => topic_id,
        Route::Remote(owner) => {
            return Ok(shard
                .forward(owner, Opcode::MessageReject, raw.to_vec())
                .await)
        }
    };
    let key = QueueKey {
        topic_id,
        queue: request.queue,
    };
    let original = read_original(shard, key, request.offset).await?;
    let origin = Origin {
        topic: &request.topic,
        queue: request.queue,
        offset: request.offset,
        message_id: format!(
            "{}:{}:{}",
            shard.config().broker_name,
            shard.id(),
            original.commitlog_offset
        ),
    };
    let mut plan = plan_copy(
        shard.config(),
        shard.clock().unix_ms(),
        &request,
        &origin,
        &original.properties,
    );
    if plan.properties.len() > u16::MAX as usize {
        // Refusing would stop the consumer at this message on every restart: it is a dead
        // letter instead, without the producer's lines that left no room.
        tracing::warn!(
            group = %request.group,
            topic = %request.topic,
            queue = request.queue,
            offset = request.offset,
            "the message's properties ({} bytes) leave no room for the retry properties: a \
             dead letter without them",
            original.properties.len()
        );
        plan = plan_trimmed_dead_letter(&request, &origin, &original.properties);
    }
    let queue = match plan.level {
        Some(level) => {
            let levels = shard.config().retry_delay_levels_ms.len() as u32;
            let retry_queues = (shard.shard_count() as u32).clamp(1, MAX_QUEUES_PER_TOPIC);
            ensure_internal(shard, &plan.outcome.topic, retry_queues).await?;
            let schedule = ensure_internal(shard, SCHEDULE_TOPIC, levels).await?;
            // A level list made longer after the schedule topic was made: the extra levels
            // share its last queue (due times are kept per message, so none is early).
            level.min(schedule.queue_count()) - 1
        }
        None => {
            ensure_internal(shard, &plan.outcome.topic, DLQ_QUEUE_COUNT).await?;
            0
        }
    };
    let topic = match plan.level {
        Some(_) => SCHEDULE_TOPIC,
        None => plan.outcome.topic.as_str(),
    };
    let mut produce_body = Vec::new();
    ProduceRequest {
        topic,
        queue,
        messages: vec![MessageRef {
            born_timestamp_ms: original.born_timestamp_ms,
            key: &original.key,
            properties: &plan.properties,
            body: &original.body,
        }],
    }
    .encode(&mut produce_body);
    let stored = produce::handle_internal(shard, &produce_body).await?;
    if !stored.status.has_body() {
        return Ok(stored);
    }
    // The copy is stored (the status says whether its guarantee held in time).
    ProduceResponse::decode(&stored.body)
        .map_err(|e| ShardError::Internal(format!("the copy's produce answer: {e}")))?;
    Ok(Reply::with_status(
        stored.status,
        body(|out| plan.outcome.encode(out)),
    ))
}

/// The record a reject names, copied out of the log.
struct Original {
    commitlog_offset: u64,
    born_timestamp_ms: u64,
    key: Vec<u8>,
    properties: Vec<u8>,
    body: Vec<u8>,
}

/// Reads the record at `offset` of `key`, which must be one consumers can see.
async fn read_original<D: Disk>(
    shard: &Shard<D>,
    key: QueueKey,
    offset: u64,
) -> Result<Original, ShardError> {
    let store = shard.store();
    let (min_offset, _) = store
        .queue_range(key)
        .ok_or_else(super::unregistered_queue)?;
    let visible = store
        .visible_end(key, shard.confirmed_offset())
        .await?
        .unwrap_or(min_offset);
    if offset < min_offset || offset >= visible {
        return Err(ShardError::OffsetOutOfRange(format!(
            "offset {offset} is not a message of the queue: it shows {min_offset}..{visible}"
        )));
    }
    let entry = store
        .entries(key, offset, 1)
        .await?
        .first()
        .copied()
        .ok_or_else(super::unregistered_queue)?;
    if entry.size as usize > store.max_record_bytes() {
        return Err(ShardError::Unreadable(format!(
            "consume-queue entry for queue offset {offset} is corrupt: {entry:?}"
        )));
    }
    let bytes = store.read_record(entry).await?;
    match record::decode(&bytes, entry.commitlog_offset) {
        Ok(Decoded::Record(view)) if view.queue_offset == offset => Ok(Original {
            commitlog_offset: entry.commitlog_offset,
            born_timestamp_ms: view.born_timestamp_ms,
            key: view.key.to_vec(),
            properties: view.properties.to_vec(),
            body: view.body.to_vec(),
        }),
        _ => Err(ShardError::Unreadable(format!(
            "record for queue offset {offset} at commitlog offset {} is unreadable",
            entry.commitlog_offset
        ))),
    }
}

/// Where the rejected message was first delivered (used when the record does not say so
/// already, i.e. when it is not itself a retry).
pub struct Origin<'a> {
    pub topic: &'a str,
    pub queue: u32,
    pub offset: u64,
    pub message_id: String,
}

/// What to append for a reject.
#[derive(Debug, PartialEq, Eq)]
pub struct CopyPlan {
    /// The delay level of a retry (1-based); `None` for a dead letter.
    pub level: Option<u32>,
    pub properties: Vec<u8>,
    pub outcome: RejectOutcome,
}

/// Decides the copy of a rejected message whose record carries `properties`, at wall-clock
/// `now_ms`: its attempt count, whether it is retried (and when) or dead, and its properties.
pub fn plan_copy(
    config: &crate::config::BrokerConfig,
    now_ms: u64,
    request: &MessageReject,
    origin: &Origin<'_>,
    properties: &[u8],
) -> CopyPlan {
    let rejected_before = props::get_u64(properties, props::RECONSUME_TIMES).unwrap_or(0);
    let times = u32::try_from(rejected_before.saturating_add(1)).unwrap_or(u32::MAX);
    let max = match request.max_reconsume_times {
        0 => config.max_reconsume_times,
        asked => asked,
    };
    // The first delivery's place, unless this record is a retry that knows it already.
    let mut set: Vec<(&str, String)> = Vec::with_capacity(8);
    if props::get(properties, props::ORIGIN_TOPIC).is_none() {
        set.extend([
            (props::ORIGIN_TOPIC, origin.topic.to_string()),
            (props::ORIGIN_QUEUE, origin.queue.to_string()),
            (props::ORIGIN_OFFSET, origin.offset.to_string()),
            (props::ORIGIN_MESSAGE_ID, origin.message_id.clone()),
        ]);
    }
    set.push((props::RECONSUME_TIMES, times.to_string()));
    if rejected_before >= max as u64 {
        // A dead letter is not scheduled: a retry's schedule lines would only mislead.
        return CopyPlan {
            level: None,
            properties: props::with_and_without(
                properties,
                &set,
                &[REAL_TOPIC, DELAY_LEVEL, DUE_MS],
            ),
            outcome: RejectOutcome {
                topic: dlq_topic(&request.group),
                reconsume_times: times,
                delay_ms: 0,
            },
        };
    }
    let (level, delay_ms) = config.retry_delay(times);
    let retry = retry_topic(&request.group);
    set.extend([
        (REAL_TOPIC, retry.clone()),
        (DELAY_LEVEL, level.to_string()),
        (DUE_MS, now_ms.saturating_add(delay_ms).to_string()),
    ]);
    CopyPlan {
        level: Some(level),
        properties: props::with(properties, &set),
        outcome: RejectOutcome {
            topic: retry,
            reconsume_times: times,
            delay_ms,
        },
    }
}

/// The dead letter of a message whose properties leave no room for the broker's lines: only
/// those lines (origin and attempt count, kept from the record when it is a retry).
pub fn plan_trimmed_dead_letter(
    request: &MessageReject,
    origin: &Origin<'_>,
    properties: &[u8],
) -> CopyPlan {
    let rejected_before = props::get_u64(properties, props::RECONSUME_TIMES).unwrap_or(0);
    let times = u32::try_from(rejected_before.saturating_add(1)).unwrap_or(u32::MAX);
    let kept = |name: &str, fallback: String| {
        props::get(properties, name)
            .filter(|_| props::get(properties, props::ORIGIN_TOPIC).is_some())
            .map_or(fallback, str::to_string)
    };
    let set = [
        (
            props::ORIGIN_TOPIC,
            kept(props::ORIGIN_TOPIC, origin.topic.to_string()),
        ),
        (
            props::ORIGIN_QUEUE,
            kept(props::ORIGIN_QUEUE, origin.queue.to_string()),
        ),
        (
            props::ORIGIN_OFFSET,
            kept(props::ORIGIN_OFFSET, origin.offset.to_string()),
        ),
        (
            props::ORIGIN_MESSAGE_ID,
            kept(props::ORIGIN_MESSAGE_ID, origin.message_id.clone()),
        ),
        (props::RECONSUME_TIMES, times.to_string()),
    ];
    CopyPlan {
        level: None,
        properties: props::with(&[], &set),
        outcome: RejectOutcome {
            topic: dlq_topic(&request.group),
            reconsume_times: times,
            delay_ms: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BrokerConfig;
    use crate::protocol::properties::{get, get_u64, ORIGIN_TOPIC, RECONSUME_TIMES};

    fn request(max_reconsume_times: u32) -> MessageReject {
        MessageReject {
            group: "app".to_string(),
            topic: "orders".to_string(),
            queue: 1,
            offset: 7,
            max_reconsume_times,
        }
    }

    fn origin() -> Origin<'static> {
        Origin {
            topic: "orders",
            queue: 1,
            offset: 7,
            message_id: "b:0:100".to_string(),
        }
    }

    /// Each rejection waits one level longer, the origin is set once and kept, and the
    /// rejection after `max_reconsume_times` retries is a dead letter.
    #[test]
    fn attempts_climb_the_levels_then_die() {
        let config = BrokerConfig {
            retry_delay_levels_ms: vec![200, 400, 800],
            ..BrokerConfig::default()
        };
        let mut properties = b"TAGS=a".to_vec();
        let mut delays = Vec::new();
        for attempt in 1..=4u32 {
            let plan = plan_copy(&config, 1_000, &request(0), &origin(), &properties);
            assert_eq!(plan.outcome.reconsume_times, attempt);
            assert_eq!(
                get_u64(&plan.properties, RECONSUME_TIMES),
                Some(attempt as u64)
            );
            assert_eq!(get(&plan.properties, "TAGS"), Some("a"));
            assert_eq!(get(&plan.properties, ORIGIN_TOPIC), Some("orders"));
            assert_eq!(plan.outcome.topic, "%RETRY%app");
            delays.push(plan.outcome.delay_ms);
            assert_eq!(
                get_u64(&plan.properties, DUE_MS),
                Some(1_000 + plan.outcome.delay_ms)
            );
            // The retried copy is what the consumer rejects next (from the retry topic).
            properties = plan.properties;
            let retried = Origin {
                topic: "%RETRY%app",
                ..origin()
            };
            let again = plan_copy(&config, 1_000, &request(0), &retried, &properties);
            assert_eq!(get(&again.properties, ORIGIN_TOPIC), Some("orders"));
        }
        assert_eq!(delays, vec![200, 400, 800, 800], "the last level repeats");

        let mut properties = Vec::new();
        for attempt in 1..=3u32 {
            let plan = plan_copy(&config, 0, &request(2), &origin(), &properties);
            assert_eq!(plan.level.is_none(), attempt == 3, "attempt {attempt}");
            properties = plan.properties;
        }
        assert_eq!(get_u64(&properties, RECONSUME_TIMES), Some(3));
        assert_eq!(
            get(&properties, DUE_MS),
            None,
            "a dead letter has no due time"
        );
        assert_eq!(get(&properties, ORIGIN_TOPIC), Some("orders"));
    }

    /// A message whose properties leave no room for the retry lines is a dead letter with
    /// only the broker's lines, its origin and count kept from the retried record.
    #[test]
    fn properties_too_large_make_a_trimmed_dead_letter() {
        let config = BrokerConfig::default();
        let mut huge = vec![b'x'; u16::MAX as usize - 20];
        let plan = plan_copy(&config, 0, &request(0), &origin(), &huge);
        assert!(plan.properties.len() > u16::MAX as usize, "not vacuous");
        let dead = plan_trimmed_dead_letter(&request(0), &origin(), &huge);
        assert_eq!(
            (dead.level, dead.outcome.topic.as_str()),
            (None, "%DLQ%app")
        );
        assert!(dead.properties.len() < 256);
        assert_eq!(get(&dead.properties, ORIGIN_TOPIC), Some("orders"));
        assert_eq!(get_u64(&dead.properties, RECONSUME_TIMES), Some(1));
        // A retry's record: its first origin and count are kept.
        huge.extend_from_slice(b"\nORIGIN_TOPIC=first\nORIGIN_QUEUE=3\nRECONSUME_TIMES=4");
        let dead = plan_trimmed_dead_letter(&request(0), &origin(), &huge);
        assert_eq!(get(&dead.properties, ORIGIN_TOPIC), Some("first"));
        assert_eq!(get(&dead.properties, "ORIGIN_QUEUE"), Some("3"));
        assert_eq!(dead.outcome.reconsume_times, 5);
    }
}
