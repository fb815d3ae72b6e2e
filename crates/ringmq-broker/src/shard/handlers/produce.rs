//! Produce: append a batch to one queue and answer when the flush mode's guarantee holds.

use super::{body, route, Route};
use crate::config::{BrokerRole, FlushDiskType};
use crate::constants::MAX_MESSAGES_PER_PRODUCE;
use crate::metrics::{Counter, Hist};
use crate::protocol::message::{MessageRef, ProduceRequest, ProduceResponse, ANY_QUEUE};
use crate::protocol::{Opcode, Status};
use crate::replication::replicas::Replicas;
use crate::shard::completion::Completion;
use crate::shard::mesh::Reply;
use crate::shard::{Shard, ShardError};
use crate::store::io::Disk;
use crate::store::record::RecordInput;
use crate::store::{Appended, QueueKey};
use futures_lite::future;
use std::rc::Rc;
use std::time::{Duration, Instant};

pub async fn handle<D: Disk>(shard: &Rc<Shard<D>>, raw: &[u8]) -> Result<Reply, ShardError> {
    let request = ProduceRequest::decode(raw)?;
    if !shard.is_master() {
        return Err(not_master(shard));
    }
    validate(shard, &request)?;
    let queue = if request.queue == ANY_QUEUE {
        pick_queue(shard, request.topic)?
    } else {
        request.queue
    };
    let topic_id = match route(shard, request.topic, queue)? {
        Route::Local { topic_id, .. } => topic_id,
        Route::Remote(owner) => {
            let mut forwarded = Vec::with_capacity(raw.len());
            ProduceRequest { queue, ..request }.encode(&mut forwarded);
            return Ok(shard.forward(owner, Opcode::Produce, forwarded).await);
        }
    };
    let started = shard.clock().now();
    shard.probe().add(Counter::ProduceRequests, 1);
    let key = QueueKey { topic_id, queue };
    // One deadline for the whole request: waiting for buffer space or a segment and waiting
    // for the flush both count against `sync_flush_timeout_ms`, so a status always arrives
    // within it (plus the slaves' own wait under SYNC_MASTER).
    let deadline = started + Duration::from_millis(shard.config().sync_flush_timeout_ms);
    let (first, last) = append_batch(shard, key, &request, deadline).await?;
    shard
        .probe()
        .record_duration(Hist::AppendLatency, shard.clock().now() - started);
    shard.probe().appended(
        request.messages.len() as u64,
        last.end_offset - first.commitlog_offset,
    );
    shard.appended(key, last.end_offset);
    if shard.config().flush_disk_type == FlushDiskType::AsyncFlush {
        shard.publish_confirmed();
    }
    let status = wait_for_guarantee(shard, last.end_offset, deadline).await;
    if status == Status::StoreError {
        return Err(ShardError::NotDurable);
    }
    shard
        .probe()
        .record_duration(Hist::ProduceLatency, shard.clock().now() - started);
    let response = ProduceResponse {
        queue,
        base_offset: first.queue_offset,
        count: request.messages.len() as u32,
        commitlog_offset: first.commitlog_offset,
    };
    Ok(Reply::with_status(status, body(|out| response.encode(out))))
}

fn not_master<D: Disk>(shard: &Shard<D>) -> ShardError {
    ShardError::NotMaster(format!(
        "{} is a slave: send produce requests to its master",
        shard.config().broker_name
    ))
}

fn validate<D: Disk>(shard: &Shard<D>, request: &ProduceRequest<'_>) -> Result<(), ShardError> {
    if request.messages.len() > MAX_MESSAGES_PER_PRODUCE {
        return Err(ShardError::Refused(format!(
            "{} messages in one produce request; the maximum is {MAX_MESSAGES_PER_PRODUCE}",
            request.messages.len()
        )));
    }
    let max = shard.config().max_message_bytes as usize;
    if let Some((i, m)) = request
        .messages
        .iter()
        .enumerate()
        .find(|(_, m)| m.body.len() > max)
    {
        return Err(ShardError::MessageTooLarge(format!(
            "message {i} has a body of {} bytes; the maximum is {max}",
            m.body.len()
        )));
    }
    Ok(())
}

/// A queue of the topic, preferring the ones this shard owns so the request needs no hop.
fn pick_queue<D: Disk>(shard: &Shard<D>, topic: &str) -> Result<u32, ShardError> {
    let entry = shard
        .topic(topic)
        .ok_or_else(|| ShardError::TopicNotFound(topic.to_string()))?;
    let local: Vec<u32> = entry
        .queue_shards
        .iter()
        .enumerate()
        .filter(|(_, s)| **s as usize == shard.id())
        .map(|(q, _)| q as u32)
        .collect();
    let turn = shard.appending().next_turn();
    Ok(if local.is_empty() {
        (turn % entry.queue_shards.len()) as u32
    } else {
        local[turn % local.len()]
    })
}

/// Appends every message of the batch; the queue offsets of a batch are contiguous because
/// the append gate is held while the batch waits for buffer space or a new segment.
async fn append_batch<'a, D: Disk>(
    shard: &Rc<Shard<D>>,
    key: QueueKey,
    request: &ProduceRequest<'a>,
    deadline: Instant,
) -> Result<(Appended, Appended), ShardError> {
    let _gate = shard.appending().lock().await;
    // A role change holds the gate: a batch that waited for it behind a demotion must not
    // append on what is now a slave.
    if !shard.is_master() {
        return Err(not_master(shard));
    }
    let store_timestamp_ms = shard.clock().unix_ms();
    let input = |m: &MessageRef<'a>| record_input(key, request.topic, store_timestamp_ms, m);
    // The whole batch or none of it: its segments and its buffer space must be there before
    // its first record goes in, so DISK_FULL or SYSTEM_BUSY always means nothing was stored.
    let mut lens = shard.appending().take_lens();
    lens.extend(request.messages.iter().map(|m| input(m).encoded_len()));
    let admitted = shard.admit_batch(deadline, &lens).await;
    shard.appending().return_lens(lens);
    admitted?;
    let mut first = None;
    let mut last: Option<Appended> = None;
    for (stored, m) in request.messages.iter().enumerate() {
        let appended = match append_one(shard, deadline, &input(m)).await {
            Ok(appended) => appended,
            Err(e) => {
                // Admission makes this rare, but what went in before the failure is in the
                // log: announce it, so pulls parked on the queue and the shippers see it now
                // rather than at their timeouts. SYSTEM_BUSY or DISK_FULL would tell the
                // client nothing was stored: past the first record the answer is STORE_ERROR.
                let Some(last) = last else {
                    return Err(e);
                };
                announce_partial(shard, key, last.end_offset);
                return Err(ShardError::PartlyStored {
                    stored,
                    cause: Box::new(e),
                });
            }
        };
        first.get_or_insert(appended);
        last = Some(appended);
    }
    if shard.config().flush_disk_type == FlushDiskType::SyncFlush {
        shard.flushing().request();
    }
    if shard.store().needs_next_segment() {
        shard.flushing().want_segment();
    }
    Ok((
        first.expect("batch is not empty"),
        last.expect("batch is not empty"),
    ))
}

/// A batch that failed partway: its records already appended count as appended, as after a
/// whole batch.
fn announce_partial<D: Disk>(shard: &Shard<D>, key: QueueKey, end_offset: u64) {
    shard.appended(key, end_offset);
    match shard.config().flush_disk_type {
        FlushDiskType::SyncFlush => shard.flushing().request(),
        FlushDiskType::AsyncFlush => shard.publish_confirmed(),
    }
}

async fn append_one<D: Disk>(
    shard: &Shard<D>,
    deadline: Instant,
    input: &RecordInput<'_>,
) -> Result<Appended, ShardError> {
    Ok(shard
        .append_waiting(deadline, || shard.store().append(input))
        .await?)
}

fn record_input<'a>(
    key: QueueKey,
    topic: &'a str,
    store_timestamp_ms: u64,
    m: &MessageRef<'a>,
) -> RecordInput<'a> {
    RecordInput {
        topic_id: key.topic_id,
        queue_id: key.queue,
        queue_offset: 0,
        born_timestamp_ms: m.born_timestamp_ms,
        store_timestamp_ms,
        topic,
        key: m.key,
        properties: m.properties,
        body: m.body,
    }
}

/// Waits until the flush mode's and the role's guarantees hold for everything before
/// `end_offset`, or says which one did not hold in time. Both waits run at once: the flush and
/// the shipping to slaves overlap.
async fn wait_for_guarantee<D: Disk>(
    shard: &Shard<D>,
    end_offset: u64,
    deadline: Instant,
) -> Status {
    let replicas = shard
        .replicas()
        .filter(|r| shard.role() == BrokerRole::SyncMaster && r.needed() > 0);
    if let Some(replicas) = &replicas {
        let in_sync = replicas.in_sync(shard.store().max_offset(), shard.config().ha_max_gap_bytes);
        if in_sync < replicas.needed() {
            return Status::SlaveNotAvailable;
        }
    }
    let flush = async {
        match shard.config().flush_disk_type {
            FlushDiskType::AsyncFlush => Status::Ok,
            FlushDiskType::SyncFlush => wait_for_flush(shard, end_offset, deadline).await,
        }
    };
    let replicas = async {
        match replicas {
            Some(replicas) => wait_for_slaves(shard, &replicas, end_offset).await,
            None => Status::Ok,
        }
    };
    match future::zip(flush, replicas).await {
        (Status::Ok, replicas) => replicas,
        (flush, _) => flush,
    }
}

/// SYNC_MASTER: waits for enough slaves to acknowledge `end_offset`, at most
/// `sync_replica_timeout_ms`.
async fn wait_for_slaves<D: Disk>(
    shard: &Shard<D>,
    replicas: &Replicas,
    end_offset: u64,
) -> Status {
    let done = replicas.completions.wait(end_offset);
    let timeout = Duration::from_millis(shard.config().sync_replica_timeout_ms);
    future::or(
        async {
            match done.await {
                Completion::Done => Status::Ok,
                Completion::Failed => Status::FlushSlaveTimeout,
            }
        },
        async {
            shard.clock().sleep(timeout).await;
            Status::FlushSlaveTimeout
        },
    )
    .await
}

/// SYNC_FLUSH: waits for a flush covering `end_offset`, until the request's deadline.
async fn wait_for_flush<D: Disk>(shard: &Shard<D>, end_offset: u64, deadline: Instant) -> Status {
    let done = shard.flushing().wait_durable(end_offset);
    let timeout = deadline.saturating_duration_since(shard.clock().now());
    future::or(
        async {
            match done.await {
                Completion::Done => Status::Ok,
                Completion::Failed => Status::StoreError,
            }
        },
        async {
            shard.clock().sleep(timeout).await;
            Status::FlushDiskTimeout
        },
    )
    .await
}
