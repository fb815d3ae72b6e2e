//! Pull: read confirmed messages of one queue, long-polling at its end.

use super::{body, route, Route};
use crate::constants::{MAX_BYTES_PER_PULL, MAX_MESSAGES_PER_PULL, MAX_PULL_SPAN_BYTES};
use crate::metrics::{Counter, Hist};
use crate::protocol::message::{PullRequest, PullResponseEncoder, PullSummary, PulledMessageRef};
use crate::protocol::{Opcode, Status};
use crate::shard::mesh::Reply;
use crate::shard::visibility::WaitFor;
use crate::shard::{Shard, ShardError};
use crate::store::io::Disk;
use crate::store::record::{self, Decoded};
use crate::store::{CqEntry, QueueKey};
use futures_lite::future;
use std::rc::Rc;
use std::time::Duration;

pub async fn handle<D: Disk>(shard: &Rc<Shard<D>>, raw: &[u8]) -> Result<Reply, ShardError> {
    let request = PullRequest::decode(raw)?;
    let topic_id = match route(shard, &request.topic, request.queue)? {
        Route::Local { topic_id, .. } => topic_id,
        Route::Remote(owner) => return Ok(shard.forward(owner, Opcode::Pull, raw.to_vec()).await),
    };
    serve(shard, topic_id, &request).await
}

/// Runs a pull of a queue this shard owns (a plain pull, or a group member's once fenced).
pub async fn serve<D: Disk>(
    shard: &Rc<Shard<D>>,
    topic_id: u32,
    request: &PullRequest,
) -> Result<Reply, ShardError> {
    shard.probe().add(Counter::PullRequests, 1);
    let key = QueueKey {
        topic_id,
        queue: request.queue,
    };
    let wait =
        Duration::from_millis((request.max_wait_ms as u64).min(shard.config().max_pull_wait_ms));
    let clock = shard.clock();
    let deadline = clock.now() + wait;
    loop {
        let summary = summary(shard, key, request.offset).await?;
        if request.offset < summary.max_offset {
            let started = clock.now();
            let reply = read_messages(shard, key, request, summary).await;
            shard
                .probe()
                .record_duration(Hist::PullLatency, clock.now() - started);
            return reply.map(Reply::ok);
        }
        let now = clock.now();
        // A shutting-down shard answers a long poll at once rather than hold its stop.
        if now >= deadline || shard.lifecycle().is_stopping() {
            return Ok(Reply::with_status(
                Status::NoNewMessage,
                body(|out| {
                    let summary = PullSummary {
                        suggest: shard.read_suggestion(None),
                        ..summary
                    };
                    PullResponseEncoder::begin(out, summary).finish(out, request.offset);
                }),
            ));
        }
        let visible = shard.visibility().wait(
            wait_for(shard, key, request.offset).await,
            shard.confirmed_offset(),
        );
        future::or(
            async {
                let _ = visible.await;
            },
            clock.sleep(deadline - now),
        )
        .await;
    }
}

/// What a pull at the end of what `key` shows waits for: the record at `offset` to be
/// confirmed when the queue holds it already, else the queue's next append.
async fn wait_for<D: Disk>(shard: &Shard<D>, key: QueueKey, offset: u64) -> WaitFor {
    // An entry older than the cached tail is read from its file; if that read fails, waiting
    // for the next append still ends the poll by its deadline.
    let entry = shard.store().entries(key, offset, 1).await.ok();
    match entry.as_deref().and_then(|entries| entries.first()) {
        Some(entry) => WaitFor::Confirmed(entry.commitlog_offset + entry.size as u64),
        None => WaitFor::Append(key),
    }
}

pub(super) async fn summary<D: Disk>(
    shard: &Shard<D>,
    key: QueueKey,
    offset: u64,
) -> Result<PullSummary, ShardError> {
    let (min_offset, stored_end) = shard
        .store()
        .queue_range(key)
        .ok_or_else(super::unregistered_queue)?;
    let max_offset = shard
        .store()
        .visible_end(key, shard.confirmed_offset())
        .await?
        .unwrap_or(min_offset);
    // An offset the queue holds but does not show yet (not confirmed: a restarted SYNC_MASTER
    // until its slave acknowledges again, a slave until its master confirms) is not out of
    // range: the consumer waits for it like for a new message, so it neither skips nor
    // rewinds.
    if offset < min_offset || offset > max_offset.max(stored_end) {
        let reason = if offset < min_offset {
            "below the queue's minimum (retention deleted it)"
        } else {
            "past the queue's end"
        };
        return Err(ShardError::OffsetOutOfRange(
            crate::protocol::codes::offset_out_of_range_message(
                // The range follows in the bracketed suffix, once.
                &format!("offset {offset} is {reason}"),
                min_offset,
                max_offset,
            ),
        ));
    }
    Ok(PullSummary {
        next_offset: offset,
        min_offset,
        max_offset,
        suggest: 0,
    })
}

async fn read_messages<D: Disk>(
    shard: &Shard<D>,
    key: QueueKey,
    request: &PullRequest,
    summary: PullSummary,
) -> Result<Vec<u8>, ShardError> {
    let max_messages = request.max_messages.clamp(1, MAX_MESSAGES_PER_PULL) as u64;
    let max_bytes = request.max_bytes.clamp(1, MAX_BYTES_PER_PULL) as usize;
    let count = (summary.max_offset - request.offset).min(max_messages) as usize;
    // The consume-queue file read may be deleted by retention meanwhile, as the log below.
    let mut pooled = shard.store().entry_list();
    shard
        .store()
        .entries_into(key, request.offset, count, &mut pooled.list)
        .await
        .map_err(|e| deleted_while_reading(shard, key, request.offset, e))?;
    let entries = &pooled.list;
    let summary =
        PullSummary {
            suggest: shard.read_suggestion(entries.first().zip(entries.last()).map(
                |(first, last)| first.commitlog_offset..last.commitlog_offset + last.size as u64,
            )),
            ..summary
        };
    // A stored record is larger than the same message in a pull answer (it also holds the
    // topic and its own header), so the records' sizes bound the answer: one allocation.
    let records: usize = entries.iter().map(|e| e.size as usize).sum();
    let mut out = Vec::with_capacity(records.min(max_bytes) + super::SMALL_BODY_BYTES);
    let mut encoder = PullResponseEncoder::begin(&mut out, summary);
    let mut next = request.offset;
    let mut rest = &entries[..];
    'spans: while !rest.is_empty() {
        let span = span_len(shard, rest);
        let first = rest[0].commitlog_offset;
        let last = &rest[span - 1];
        if last.size as usize > shard.store().max_record_bytes() {
            return Err(ShardError::Unreadable(format!(
                "consume-queue entry for queue offset {next} is corrupt: {last:?}"
            )));
        }
        let bytes = shard
            .store()
            .read_span(
                first,
                last.commitlog_offset.saturating_add(last.size as u64),
            )
            .await
            .map_err(|e| deleted_while_reading(shard, key, next, e))?;
        for entry in &rest[..span] {
            if encoder.count() > 0 && out.len() + entry.size as usize > max_bytes {
                break 'spans;
            }
            let at = (entry.commitlog_offset - first) as usize;
            let record = bytes.get(at..at + entry.size as usize).unwrap_or(&[]);
            let view = match record::decode(record, entry.commitlog_offset) {
                Ok(Decoded::Record(view))
                    if view.queue_offset == next && view.total_size == entry.size =>
                {
                    view
                }
                Ok(_) | Err(_) => {
                    return Err(ShardError::Unreadable(format!(
                        "record for queue offset {next} at commitlog offset {} is unreadable",
                        entry.commitlog_offset
                    )))
                }
            };
            encoder.push(
                &mut out,
                &PulledMessageRef {
                    queue_offset: view.queue_offset,
                    born_timestamp_ms: view.born_timestamp_ms,
                    store_timestamp_ms: view.store_timestamp_ms,
                    key: view.key,
                    properties: view.properties,
                    body: view.body,
                },
            );
            next += 1;
        }
        rest = &rest[span..];
    }
    shard
        .probe()
        .add(Counter::MessagesPulled, next - request.offset);
    encoder.finish(&mut out, next);
    Ok(out)
}

/// A read that failed because retention deleted the segment after the range check (the
/// queue's minimum has passed `offset` since) is OFFSET_OUT_OF_RANGE like a pull that came
/// later; any other failure stays what it is.
fn deleted_while_reading<D: Disk>(
    shard: &Shard<D>,
    key: QueueKey,
    offset: u64,
    error: crate::store::StoreError,
) -> ShardError {
    match shard.store().queue_range(key) {
        Some((min, max)) if offset < min => ShardError::OffsetOutOfRange(format!(
            "offset {offset} was deleted by retention while being read; the queue's range is \
             {min}..={max}"
        )),
        _ => error.into(),
    }
}

/// How many of `entries` (at least one) one read can cover: same segment, within
/// `MAX_PULL_SPAN_BYTES` of the first record's start.
fn span_len<D: Disk>(shard: &Shard<D>, entries: &[CqEntry]) -> usize {
    let segment = shard.store().segment_size_bytes();
    let first = entries[0].commitlog_offset;
    let limit = first + MAX_PULL_SPAN_BYTES;
    let same_segment = |offset: u64| offset / segment == first / segment;
    1 + entries[1..]
        .iter()
        .take_while(|e| {
            // Entries of a queue increase; a corrupt one that does not ends the span (and
            // fails its own read) instead of underflowing the arithmetic below.
            let end = e.commitlog_offset.saturating_add(e.size as u64);
            e.commitlog_offset >= first && same_segment(e.commitlog_offset) && end <= limit
        })
        .count()
}
