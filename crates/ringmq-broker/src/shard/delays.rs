//! Delayed redelivery: the schedule topic and the task that moves due retries into their
//! group's retry topic (RocketMQ's `ScheduleMessageService`).
//!
//! A rejected message (`handlers/reject.rs`) is appended to `%SCHEDULE%`, whose queue `n - 1`
//! holds the retries of delay level `n`. Every message of one queue waits the same delay, so a
//! queue is in due order and only its head needs watching. On a master, each shard runs
//! [`run_scheduler`] for the schedule queues it owns: per queue, it long-polls from its
//! progress offset, waits until the head's `DUE_MS` (read through the shard's [`Clock`], so a
//! simulation drives it), produces the message into its `REAL_TOPIC` (`%RETRY%<group>`) like
//! any producer would, and then records its progress as the offset of group `%SCHEDULE%` on
//! that queue, a group offset like any other (durable, and copied to slaves).
//!
//! Both halves are durable before they count: the schedule record was stored with the flush
//! mode's guarantee before the reject was answered, and the progress moves only past messages
//! whose retry copy was answered `OK` and lies below [`durable_offset`] (flushed here, and
//! acknowledged by every connected slave: progress is a group offset, and the shipper sends
//! those ahead of pending log bytes, so a promoted slave must already hold the copies its
//! progress counts). A crash between the two delivers a retry twice, never zero times
//! (at-least-once); a restart resumes from the progress offset, so a pending retry whose time
//! passed while the broker was down is delivered at once.
//!
//! Events, notified only here: `woken` (a stop or a role change: tasks waiting for a due time
//! or pausing after a failure look again).
//!
//! [`Clock`]: crate::clock::Clock

use super::completion::Event;
use super::handlers;
use super::mesh::Reply;
use super::topics::{dlq_topic, is_internal_name, RETRY_TOPIC_PREFIX, SCHEDULE_TOPIC};
use super::Shard;
use crate::protocol::message::{
    MessageRef, ProduceRequest, PullRequest, PullResponse, PulledMessage, ANY_QUEUE,
};
use crate::protocol::properties::{self as props, DUE_MS, REAL_TOPIC};
use crate::protocol::{Opcode, Status};
use crate::store::io::Disk;
use crate::store::QueueKey;
use futures_channel::oneshot;
use futures_lite::future;
use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;
use tracing::{info, warn};

/// Schedule messages read per pull once the head is due: a burst of due retries moves in few
/// reads.
const PULL_MAX_MESSAGES: u32 = 64;
/// Bytes read per pull; bounds a due batch.
const PULL_MAX_BYTES: u32 = 4 * 1024 * 1024;
/// Moved retries whose copies are not durable yet that a queue's task keeps track of; past it
/// the task waits for the flush and the slaves before moving more (a slave that stops
/// acknowledging must not grow this list without bound).
const MAX_PENDING: usize = 4096;
/// Pause after a failed produce or commit (disk full, overload) before the same message is
/// tried again: the same pace as the segment allocator's retries, so a full disk is not spun on.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// The delay stage: what wakes the scheduler's waits, and what it has moved.
#[derive(Default)]
pub struct Delays {
    woken: Event,
    /// Retries moved into their retry topic by this shard since start (for tests and logs).
    delivered: Cell<u64>,
}

impl Delays {
    /// Wakes every wait of the scheduler: it then checks whether it should still run.
    pub fn wake(&self) {
        self.woken.notify();
    }

    fn listen(&self) -> oneshot::Receiver<()> {
        self.woken.listen()
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.get()
    }
}

/// The schedule queues this shard moves retries from: the schedule topic's id and the queues
/// it owns, on a master; `None` otherwise.
fn owned_schedule_queues<D: Disk>(shard: &Shard<D>) -> Option<(u32, Vec<u32>)> {
    if !shard.is_master() {
        return None;
    }
    let entry = shard.topic(SCHEDULE_TOPIC)?;
    let queues: Vec<u32> = entry
        .queue_shards
        .iter()
        .enumerate()
        .filter(|(_, s)| **s as usize == shard.id())
        .map(|(q, _)| q as u32)
        .collect();
    (!queues.is_empty()).then_some((entry.topic_id, queues))
}

/// Whether a queue task of the schedule topic `topic_id` must end: a stop, a demotion, or the
/// topic gone.
fn must_end<D: Disk>(shard: &Shard<D>, topic_id: u32) -> bool {
    shard.lifecycle().is_stopping()
        || !shard.is_master()
        || shard
            .topic(SCHEDULE_TOPIC)
            .is_none_or(|e| e.topic_id != topic_id)
}

/// The shard's scheduler: idle until this shard is a master owning schedule queues, then one
/// task per queue until a stop, a role change or the topic's deletion, then it looks again.
pub async fn run_scheduler<D: Disk>(shard: Rc<Shard<D>>) {
    loop {
        if shard.lifecycle().is_stopping() {
            return;
        }
        let metadata = shard.metadata().listen_changed();
        let role = shard.role_state().listen_changed();
        let woken = shard.delays().listen();
        let Some((topic_id, queues)) = owned_schedule_queues(&shard) else {
            future::or(
                async {
                    let _ = metadata.await;
                },
                future::or(
                    async {
                        let _ = role.await;
                    },
                    async {
                        let _ = woken.await;
                    },
                ),
            )
            .await;
            continue;
        };
        info!(shard = shard.id(), ?queues, "moving delayed retries");
        let tasks: Vec<_> = queues
            .into_iter()
            .map(|queue| glommio::spawn_local(run_queue(shard.clone(), topic_id, queue)))
            .collect();
        for task in tasks {
            task.await;
        }
    }
}

/// Moves the retries of one schedule queue as they fall due, until [`must_end`].
async fn run_queue<D: Disk>(shard: Rc<Shard<D>>, topic_id: u32, queue: u32) {
    let key = QueueKey { topic_id, queue };
    let committed = shard
        .metadata()
        .groups()
        .get(SCHEDULE_TOPIC, SCHEDULE_TOPIC, queue);
    let mut progress = Progress {
        queue,
        committed: committed.unwrap_or(0),
        next: committed.unwrap_or(0),
        pending: VecDeque::new(),
    };
    // While the head is not due, one message is read at a time: a level whose head waits holds
    // one message, not a batch, in memory.
    let mut head_waits = false;
    while !must_end(&shard, topic_id) {
        let reply = handlers::handle(
            &shard,
            Opcode::Pull,
            &pull_body(&shard, queue, progress.next, head_waits),
        )
        .await;
        match reply.status {
            Status::Ok => {
                let mut messages: Vec<PulledMessage> = match PullResponse::decode(&reply.body) {
                    Ok(response) => response.messages.iter().map(|m| m.to_owned()).collect(),
                    Err(e) => {
                        warn!(shard = shard.id(), queue, "schedule pull answer: {e}");
                        pause(&shard, RETRY_PAUSE).await;
                        Vec::new()
                    }
                };
                head_waits = messages.first().is_some_and(|m| !is_due(&shard, m));
                if head_waits {
                    // Only the head is kept while it waits; the rest is read again after it.
                    messages.truncate(1);
                }
                for message in messages {
                    if !move_when_due(&shard, topic_id, &mut progress, &message).await {
                        break;
                    }
                }
            }
            Status::NoNewMessage => head_waits = false,
            Status::OffsetOutOfRange => {
                let (min_offset, max_offset) = shard.store().queue_range(key).unwrap_or((0, 0));
                // Below the queue (cleaned away): the oldest message left; above it (a promoted
                // slave that got the progress before the log): its end, never its start, which
                // would move every retry of its history again.
                let to = progress.next.clamp(min_offset, max_offset);
                warn!(
                    shard = shard.id(),
                    queue,
                    "schedule progress {} is out of range {min_offset}..{max_offset}; moving to {to}",
                    progress.next
                );
                progress.next = to;
                progress.pending.clear();
            }
            other => {
                warn!(
                    shard = shard.id(),
                    queue,
                    "schedule pull: {other}: {}",
                    error_text(&reply)
                );
                pause(&shard, RETRY_PAUSE).await;
            }
        }
        progress.save(&shard).await;
    }
    // After a demotion this shard is a slave now: its progress comes from the new master.
    if shard.is_master() {
        progress.save(&shard).await;
    }
}

/// The commitlog offset below which a retry copy survives a power cut here and a failover:
/// flushed, and acknowledged by every slave connected now.
fn durable_offset<D: Disk>(shard: &Shard<D>) -> u64 {
    let flushed = shard.store().flushed_offset();
    shard
        .replicas()
        .map(|r| r.states().iter().map(|s| s.acked_offset).min())
        .unwrap_or(None)
        .map_or(flushed, |acked| acked.min(flushed))
}

/// Where a schedule queue's task stands: `next` is the first message not moved yet,
/// `committed` what the durable progress offset says, `pending` the moves whose copies may not
/// be durable yet (the progress after each, and the commitlog end the copy lies below), oldest
/// first.
struct Progress {
    queue: u32,
    committed: u64,
    next: u64,
    pending: VecDeque<(u64, u64)>,
}

impl Progress {
    /// Records that the messages before `next` have moved, the last one's copy lying below
    /// commitlog offset `copy_end`.
    fn moved(&mut self, next: u64, copy_end: u64) {
        self.next = next;
        self.pending.push_back((next, copy_end));
    }

    /// The progress offset every copy of which is durable ([`durable_offset`]).
    fn durable_next<D: Disk>(&mut self, shard: &Shard<D>) -> u64 {
        let durable = durable_offset(shard);
        let mut to = None;
        while let Some(&(next, end)) = self.pending.front() {
            if end > durable {
                break;
            }
            to = Some(next);
            self.pending.pop_front();
        }
        match (to, self.pending.is_empty()) {
            // Skipped messages (no copy) past the last pending move count at once.
            (_, true) => self.next,
            (Some(next), false) => next,
            (None, false) => self.committed,
        }
    }

    /// Makes the durable part of the progress the progress offset (a failure is retried at
    /// the next save; until then a restart moves those retries again, which at-least-once
    /// allows).
    async fn save<D: Disk>(&mut self, shard: &Shard<D>) {
        let to = self.durable_next(shard);
        if to == self.committed {
            return;
        }
        let groups = shard.metadata().groups();
        match groups
            .commit(SCHEDULE_TOPIC, SCHEDULE_TOPIC, self.queue, to)
            .await
        {
            Ok(()) => {
                self.committed = to;
                shard.metadata().bump();
            }
            Err(e) => warn!(
                shard = shard.id(),
                queue = self.queue,
                "saving the schedule progress: {e}"
            ),
        }
    }
}

fn pull_body<D: Disk>(shard: &Shard<D>, queue: u32, offset: u64, head_only: bool) -> Vec<u8> {
    let mut out = Vec::new();
    PullRequest {
        topic: SCHEDULE_TOPIC.to_string(),
        queue,
        offset,
        max_messages: if head_only { 1 } else { PULL_MAX_MESSAGES },
        max_bytes: PULL_MAX_BYTES,
        max_wait_ms: u32::try_from(shard.config().max_pull_wait_ms).unwrap_or(u32::MAX),
    }
    .encode(&mut out);
    out
}

fn error_text(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

fn due_ms(message: &PulledMessage) -> u64 {
    props::get_u64(&message.properties, DUE_MS).unwrap_or(0)
}

fn is_due<D: Disk>(shard: &Shard<D>, message: &PulledMessage) -> bool {
    shard.clock().unix_ms() >= due_ms(message)
}

/// Waits until `message` is due and moves it into its retry topic; false when the task must
/// end first (the message stays for whoever runs next).
async fn move_when_due<D: Disk>(
    shard: &Rc<Shard<D>>,
    topic_id: u32,
    progress: &mut Progress,
    message: &PulledMessage,
) -> bool {
    // Only a group's retry topic: a copy aimed anywhere else (the schedule topic itself, which
    // would loop) is not one this broker wrote.
    let Some(real_topic) = props::get(&message.properties, REAL_TOPIC)
        .filter(|t| is_internal_name(t) && t.starts_with(RETRY_TOPIC_PREFIX))
        .map(str::to_string)
    else {
        warn!(
            shard = shard.id(),
            queue = progress.queue,
            offset = message.queue_offset,
            "a schedule message without a retry topic is skipped"
        );
        progress.next = message.queue_offset + 1;
        return true;
    };
    let due_ms = due_ms(message);
    loop {
        let now_ms = shard.clock().unix_ms();
        if now_ms >= due_ms {
            break;
        }
        // What has moved so far is made durable before a wait: a restart does not move it again.
        progress.save(shard).await;
        if must_end(shard, topic_id) {
            return false;
        }
        pause(shard, Duration::from_millis(due_ms - now_ms)).await;
    }
    // Copies not durable yet are bounded: past the bound, wait for the flush and the slaves.
    while progress.pending.len() >= MAX_PENDING {
        progress.save(shard).await;
        if must_end(shard, topic_id) {
            return false;
        }
        if progress.pending.len() >= MAX_PENDING {
            pause(shard, RETRY_PAUSE).await;
        }
    }
    let mut target = real_topic;
    let copy_end = loop {
        if must_end(shard, topic_id) {
            return false;
        }
        match deliver(shard, &target, message).await {
            Ok(end) => break end,
            Err(Status::TopicNotFound) => {
                let queues = match target.starts_with(RETRY_TOPIC_PREFIX) {
                    true => (shard.shard_count() as u32).max(1),
                    false => handlers::reject::DLQ_QUEUE_COUNT,
                };
                if let Err(e) = handlers::topic::ensure_internal(shard, &target, queues).await {
                    warn!(shard = shard.id(), "re-creating {target}: {e}");
                    pause(shard, RETRY_PAUSE).await;
                }
            }
            Err(status) if status.is_retryable() || status == Status::StoreError => {
                pause(shard, RETRY_PAUSE).await
            }
            Err(status) if target.starts_with(RETRY_TOPIC_PREFIX) => {
                // The same produce will never be taken (e.g. `max_message_bytes` was lowered):
                // waiting would block the level for every group; the copy is a dead letter.
                let group = &target[RETRY_TOPIC_PREFIX.len()..];
                warn!(
                    shard = shard.id(),
                    queue = progress.queue,
                    offset = message.queue_offset,
                    "{status} moving a retry into {target}: it goes to the dead letters"
                );
                target = dlq_topic(group);
            }
            Err(status) => {
                warn!(
                    shard = shard.id(),
                    queue = progress.queue,
                    offset = message.queue_offset,
                    "{status} storing a retry as a dead letter in {target}: it is dropped"
                );
                progress.next = message.queue_offset + 1;
                return true;
            }
        }
    };
    shard
        .delays()
        .delivered
        .set(shard.delays().delivered.get() + 1);
    progress.moved(message.queue_offset + 1, copy_end);
    true
}

/// Produces the retry copy into `real_topic` (a queue of this shard's): the commitlog offset
/// the stored copy lies below, or the status of a produce that stored nothing. A copy stored
/// without its guarantee in time (`FLUSH_DISK_TIMEOUT`, `FLUSH_SLAVE_TIMEOUT`,
/// `SLAVE_NOT_AVAILABLE`) is stored all the same: producing it again would only add a
/// duplicate, so it counts as moved and [`Progress`] waits until it is durable.
async fn deliver<D: Disk>(
    shard: &Rc<Shard<D>>,
    real_topic: &str,
    message: &PulledMessage,
) -> Result<u64, Status> {
    let mut body = Vec::new();
    ProduceRequest {
        topic: real_topic,
        queue: ANY_QUEUE,
        messages: vec![MessageRef {
            born_timestamp_ms: message.born_timestamp_ms,
            key: &message.key,
            properties: &message.properties,
            body: &message.body,
        }],
    }
    .encode(&mut body);
    let reply = handlers::handle(shard, Opcode::Produce, &body).await;
    if reply.status.has_body() {
        return Ok(shard.store().max_offset());
    }
    if !shard.lifecycle().is_stopping() {
        warn!(
            shard = shard.id(),
            "moving a retry into {real_topic}: {}: {}",
            reply.status,
            error_text(&reply)
        );
    }
    Err(reply.status)
}

/// Sleeps for `d` on the shard's clock, or less when the stage is woken (a stop, a role
/// change).
async fn pause<D: Disk>(shard: &Shard<D>, d: Duration) {
    let woken = shard.delays().listen();
    let role = shard.role_state().listen_changed();
    future::or(
        shard.clock().sleep(d),
        future::or(
            async {
                let _ = woken.await;
            },
            async {
                let _ = role.await;
            },
        ),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::config::{BrokerConfig, FlushDiskType};
    use crate::protocol::message::{
        MessageReject, PullRequest, RejectOutcome, TopicCreate, TopicDelete,
    };
    use crate::protocol::properties::{ORIGIN_OFFSET, ORIGIN_TOPIC, RECONSUME_TIMES};
    use crate::testing::disk::IoLatency;
    use crate::testing::{driver, SeededRng, SimClock, SimDisk};
    use std::cell::RefCell;

    const GROUP: &str = "app";
    const RETRY: &str = "%RETRY%app";
    const LEVELS_MS: [u64; 3] = [200, 400, 800];

    fn config() -> BrokerConfig {
        BrokerConfig {
            retry_delay_levels_ms: LEVELS_MS.to_vec(),
            ..crate::testing::small_shard_config()
        }
    }

    fn encode(write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out);
        out
    }

    async fn open(disk: SimDisk, clock: &SimClock) -> Rc<Shard<SimDisk>> {
        open_with(disk, clock, config()).await
    }

    async fn open_with(
        disk: SimDisk,
        clock: &SimClock,
        config: BrokerConfig,
    ) -> Rc<Shard<SimDisk>> {
        Shard::open_for_test(disk, Rc::new(clock.clone()), config)
            .await
            .expect("open")
    }

    fn progress(shard: &Shard<SimDisk>) -> Option<u64> {
        shard
            .metadata()
            .groups()
            .get(SCHEDULE_TOPIC, SCHEDULE_TOPIC, 0)
    }

    async fn create_topic(shard: &Rc<Shard<SimDisk>>) {
        if shard.topic("t").is_some() {
            return;
        }
        let body = encode(|out| {
            TopicCreate {
                name: "t".to_string(),
                queue_count: 1,
            }
            .encode(out)
        });
        let reply = handlers::handle(shard, Opcode::TopicCreate, &body).await;
        assert_eq!(reply.status, Status::Ok);
    }

    async fn produce(shard: &Rc<Shard<SimDisk>>, body: &[u8]) -> u64 {
        let request = encode(|out| {
            ProduceRequest {
                topic: "t",
                queue: 0,
                messages: vec![MessageRef {
                    born_timestamp_ms: 0,
                    key: b"",
                    properties: b"",
                    body,
                }],
            }
            .encode(out)
        });
        let reply = handlers::handle(shard, Opcode::Produce, &request).await;
        assert_eq!(reply.status, Status::Ok);
        crate::protocol::message::ProduceResponse::decode(&reply.body)
            .unwrap()
            .base_offset
    }

    async fn reject(
        shard: &Rc<Shard<SimDisk>>,
        topic: &str,
        offset: u64,
        max_reconsume_times: u32,
    ) -> Result<RejectOutcome, Reply> {
        let request = encode(|out| {
            MessageReject {
                group: GROUP.to_string(),
                topic: topic.to_string(),
                queue: 0,
                offset,
                max_reconsume_times,
            }
            .encode(out)
        });
        let reply = handlers::handle(shard, Opcode::MessageReject, &request).await;
        match reply.status {
            Status::Ok => Ok(RejectOutcome::decode(&reply.body).unwrap()),
            _ => Err(reply),
        }
    }

    /// The next message of `topic` queue 0 at `offset`, waiting for it up to `wait_ms`.
    async fn next(
        shard: &Rc<Shard<SimDisk>>,
        topic: &str,
        offset: u64,
        wait_ms: u32,
    ) -> Option<PulledMessage> {
        let request = encode(|out| {
            PullRequest {
                topic: topic.to_string(),
                queue: 0,
                offset,
                max_messages: 1,
                max_bytes: 1 << 16,
                max_wait_ms: wait_ms,
            }
            .encode(out)
        });
        let reply = handlers::handle(shard, Opcode::Pull, &request).await;
        match reply.status {
            Status::Ok => PullResponse::decode(&reply.body)
                .unwrap()
                .messages
                .first()
                .map(|m| m.to_owned()),
            _ => None,
        }
    }

    /// Two messages rejected 50 ms apart come back in that order, each no earlier than its
    /// level's delay; the retried copy rejected again waits the next level and keeps its
    /// origin; with `max_reconsume_times` 2 the third rejection is a dead letter.
    #[test]
    fn retries_come_back_in_due_order_with_growing_delays_then_die() {
        let clock = SimClock::new(7);
        let disk = SimDisk::timed(&clock, 7, IoLatency::TYPICAL);
        let inner = clock.clone();
        driver::run(&clock, Duration::from_secs(30), move || async move {
            let shard = open(disk, &inner).await;
            let background = shard.spawn_background();
            create_topic(&shard).await;
            let a = produce(&shard, b"a").await;
            let b = produce(&shard, b"b").await;
            let started = inner.unix_ms();
            let first = reject(&shard, "t", a, 2).await.unwrap();
            assert_eq!((first.topic.as_str(), first.reconsume_times), (RETRY, 1));
            assert_eq!(first.delay_ms, LEVELS_MS[0]);
            inner.sleep(Duration::from_millis(50)).await;
            reject(&shard, "t", b, 2).await.unwrap();

            let mut arrivals = Vec::new();
            for offset in 0..2 {
                let m = next(&shard, RETRY, offset, 5_000).await.expect("a retry");
                arrivals.push((m.body.clone(), inner.unix_ms() - started));
            }
            assert_eq!(arrivals[0].0, b"a");
            assert_eq!(arrivals[1].0, b"b");
            assert!(arrivals[0].1 >= 200, "{arrivals:?}");
            assert!(arrivals[1].1 >= 250, "{arrivals:?}");

            // The retried copy of `a`, rejected in turn: level 2, origin kept.
            let copy = next(&shard, RETRY, 0, 0).await.unwrap();
            assert_eq!(props::get(&copy.properties, ORIGIN_TOPIC), Some("t"));
            let rejected_at = inner.unix_ms();
            let second = reject(&shard, RETRY, 0, 2).await.unwrap();
            assert_eq!((second.reconsume_times, second.delay_ms), (2, LEVELS_MS[1]));
            let again = next(&shard, RETRY, 2, 5_000)
                .await
                .expect("the second retry");
            assert!(inner.unix_ms() - rejected_at >= LEVELS_MS[1]);
            assert_eq!(props::get_u64(&again.properties, RECONSUME_TIMES), Some(2));
            assert_eq!(props::get_u64(&again.properties, ORIGIN_OFFSET), Some(a));
            assert_eq!(again.body, b"a");

            let dead = reject(&shard, RETRY, 2, 2).await.unwrap();
            assert_eq!((dead.topic.as_str(), dead.delay_ms), ("%DLQ%app", 0));
            let letter = next(&shard, "%DLQ%app", 0, 1_000)
                .await
                .expect("a dead letter");
            // A dead letter, or a schedule record, is not rejected again.
            for topic in ["%DLQ%app", SCHEDULE_TOPIC] {
                let refused = reject(&shard, topic, 0, 2).await.unwrap_err();
                assert_eq!(refused.status, Status::BadRequest, "{topic}");
            }
            assert_eq!(letter.body, b"a");
            assert_eq!(props::get_u64(&letter.properties, RECONSUME_TIMES), Some(3));
            assert_eq!(props::get(&letter.properties, ORIGIN_TOPIC), Some("t"));
            // No third retry comes: the dead letter is the end.
            assert!(next(&shard, RETRY, 3, 2_000).await.is_none());
            assert_eq!(shard.delays().delivered(), 3);
            shard.stop(background).await.expect("clean stop");
        })
        .expect("the run finishes");
    }

    /// A reject refused for what it names: an offset the queue does not show, a bad group.
    #[test]
    fn a_reject_of_nothing_is_refused() {
        let clock = SimClock::new(1);
        let inner = clock.clone();
        driver::run(&clock, Duration::from_secs(10), move || async move {
            let shard = open(SimDisk::new(), &inner).await;
            let background = shard.spawn_background();
            create_topic(&shard).await;
            let refused = reject(&shard, "t", 0, 0).await.unwrap_err();
            assert_eq!(refused.status, Status::OffsetOutOfRange);
            produce(&shard, b"x").await;
            let body = encode(|out| {
                MessageReject {
                    group: "bad/group".to_string(),
                    topic: "t".to_string(),
                    queue: 0,
                    offset: 0,
                    max_reconsume_times: 0,
                }
                .encode(out)
            });
            let reply = handlers::handle(&shard, Opcode::MessageReject, &body).await;
            assert_eq!(reply.status, Status::InvalidName);
            assert!(shard.topic(SCHEDULE_TOPIC).is_none(), "nothing was made");
            shard.stop(background).await.expect("clean stop");
        })
        .expect("the run finishes");
    }

    /// Under ASYNC_FLUSH a moved retry's copy is only appended: the progress offset (fsynced
    /// on its own) must not pass it before the flusher has written it, or a power cut in
    /// between loses the retry (the schedule record is counted as moved, the copy is gone).
    #[test]
    fn progress_waits_until_the_copy_is_flushed() {
        let clock = SimClock::new(3);
        let disk = SimDisk::timed(&clock, 3, IoLatency::TYPICAL);
        let inner = clock.clone();
        driver::run(&clock, Duration::from_secs(30), move || async move {
            let config = BrokerConfig {
                flush_disk_type: FlushDiskType::AsyncFlush,
                flush_least_pages: 1 << 30,
                flush_thorough_interval_ms: 3_000,
                max_pull_wait_ms: 200,
                ..config()
            };
            let shard = open_with(disk, &inner, config).await;
            let background = shard.spawn_background();
            create_topic(&shard).await;
            let started = inner.unix_ms();
            let offset = produce(&shard, b"m").await;
            reject(&shard, "t", offset, 0).await.unwrap();
            next(&shard, RETRY, 0, 5_000).await.expect("the retry");
            let copy_end = shard.store().max_offset();
            assert!(
                shard.store().flushed_offset() < copy_end,
                "not vacuous: the copy is not flushed yet"
            );
            while inner.unix_ms() - started < 2_500 {
                if progress(&shard).is_some() {
                    assert!(
                        shard.store().flushed_offset() >= copy_end,
                        "the progress passed a copy that is not on disk"
                    );
                }
                inner.sleep(Duration::from_millis(20)).await;
            }
            // Once the flusher wrote it, the progress follows.
            while progress(&shard).is_none() {
                assert!(
                    inner.unix_ms() - started < 10_000,
                    "the progress never moved"
                );
                inner.sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(progress(&shard), Some(1));
            shard.stop(background).await.expect("clean stop");
        })
        .expect("the run finishes");
    }

    /// Progress above the schedule queue's end (a promoted slave got the offset before the
    /// log) resumes at the end, not at the start: the retries already moved are not moved
    /// again.
    #[test]
    fn progress_past_the_end_resumes_at_the_end() {
        let clock = SimClock::new(5);
        let disk = SimDisk::timed(&clock, 5, IoLatency::TYPICAL);
        let inner = clock.clone();
        driver::run(&clock, Duration::from_secs(30), move || async move {
            let shard = open(disk.clone(), &inner).await;
            let background = shard.spawn_background();
            create_topic(&shard).await;
            let first = produce(&shard, b"first").await;
            reject(&shard, "t", first, 0).await.unwrap();
            next(&shard, RETRY, 0, 5_000)
                .await
                .expect("the first retry");
            shard.stop(background).await.expect("clean stop");

            let shard = open(disk, &inner).await;
            shard
                .metadata()
                .groups()
                .commit(SCHEDULE_TOPIC, SCHEDULE_TOPIC, 0, 50)
                .await
                .unwrap();
            let background = shard.spawn_background();
            let second = produce(&shard, b"second").await;
            reject(&shard, "t", second, 0).await.unwrap();
            let moved = next(&shard, RETRY, 1, 5_000)
                .await
                .expect("the second retry");
            assert_eq!(moved.body, b"second", "the first retry was moved again");
            assert!(next(&shard, RETRY, 2, 1_000).await.is_none());
            shard.stop(background).await.expect("clean stop");
        })
        .expect("the run finishes");
    }

    /// A client cannot write to or delete the broker's own topics, and a schedule record
    /// aimed at anything but a retry topic (here the schedule topic itself, which would loop)
    /// is skipped.
    #[test]
    fn the_brokers_topics_are_not_the_clients() {
        let clock = SimClock::new(2);
        let inner = clock.clone();
        driver::run(&clock, Duration::from_secs(10), move || async move {
            let shard = open(SimDisk::new(), &inner).await;
            let background = shard.spawn_background();
            create_topic(&shard).await;
            let offset = produce(&shard, b"x").await;
            reject(&shard, "t", offset, 0).await.unwrap();
            next(&shard, RETRY, 0, 5_000).await.expect("the retry");
            let looping = encode(|out| {
                ProduceRequest {
                    topic: SCHEDULE_TOPIC,
                    queue: 0,
                    messages: vec![MessageRef {
                        born_timestamp_ms: 0,
                        key: b"",
                        properties: b"REAL_TOPIC=%SCHEDULE%",
                        body: b"loop",
                    }],
                }
                .encode(out)
            });
            let header = |opcode| crate::protocol::FrameHeader::request(opcode, 1);
            let produce = header(Opcode::Produce);
            let refused =
                handlers::handle_client(&shard, produce, Opcode::Produce, &looping, None, None)
                    .await
                    .expect("answered");
            assert_eq!(refused.status, Status::BadRequest);
            for name in [SCHEDULE_TOPIC, RETRY] {
                let delete = encode(|out| {
                    TopicDelete {
                        name: name.to_string(),
                    }
                    .encode(out)
                });
                let delete_header = header(Opcode::TopicDelete);
                let refused = handlers::handle_client(
                    &shard,
                    delete_header,
                    Opcode::TopicDelete,
                    &delete,
                    None,
                    None,
                )
                .await
                .expect("answered");
                assert_eq!(refused.status, Status::BadRequest, "{name}");
                assert!(shard.topic(name).is_some());
            }
            // A produce that asks for `none` gets no answer, not even the refusal, nor for a
            // body that does not decode; both are counted, as SYSTEM_BUSY would be.
            let silent = produce.with_acks(Some(crate::protocol::Acks::None));
            let refused =
                handlers::handle_client(&shard, silent, Opcode::Produce, &looping, None, None)
                    .await;
            assert!(refused.is_none(), "{refused:?}");
            let garbled =
                handlers::handle_client(&shard, silent, Opcode::Produce, b"\x05", None, None).await;
            assert!(garbled.is_none(), "{garbled:?}");
            let busy = Reply::error(Status::SystemBusy, "no room");
            assert!(handlers::withheld(&shard, silent, &busy));
            assert!(
                !handlers::withheld(&shard, produce, &busy),
                "no level: answered"
            );
            let errors = shard
                .probe()
                .counter(crate::metrics::Counter::ProduceAcksNoneErrors);
            assert_eq!(errors, 3);
            // The broker's own path stores it; the scheduler passes it over.
            let stored = handlers::handle(&shard, Opcode::Produce, &looping).await;
            assert_eq!(stored.status, Status::Ok);
            while progress(&shard) != Some(2) {
                inner.sleep(Duration::from_millis(20)).await;
            }
            let key = QueueKey {
                topic_id: shard.topic(SCHEDULE_TOPIC).unwrap().topic_id,
                queue: 0,
            };
            assert_eq!(shard.store().queue_range(key).unwrap().1, 2, "no loop");
            assert_eq!(shard.delays().delivered(), 1);
            shard.stop(background).await.expect("clean stop");
        })
        .expect("the run finishes");
    }

    /// Rejects acknowledged before a power cut at a seeded instant (some before their due
    /// time, some after) are all delivered after the restart, none before its due time.
    #[test]
    fn a_crash_mid_delay_loses_no_acknowledged_retry() {
        let (mut acked_total, mut moved_after_restart) = (0, 0);
        for seed in 0..12u64 {
            let mut rng = SeededRng(seed);
            let clock = SimClock::new(seed);
            let disk = SimDisk::timed(&clock, seed, IoLatency::TYPICAL);
            let acked: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
            let cut = Duration::from_millis(rng.between(20, 1_200));
            let (inner, first_disk, told) = (clock.clone(), disk.clone(), acked.clone());
            // The first life ends at `cut` with everything in flight: a power cut.
            let cut_short = driver::run(&clock, cut, move || async move {
                let shard = open(first_disk, &inner).await;
                let _background = shard.spawn_background();
                create_topic(&shard).await;
                for i in 0..6u32 {
                    let body = format!("m{i}").into_bytes();
                    let offset = produce(&shard, &body).await;
                    if reject(&shard, "t", offset, 0).await.is_ok() {
                        told.borrow_mut().push(body);
                    }
                    inner.sleep(Duration::from_millis(30)).await;
                }
                futures_lite::future::pending::<()>().await;
            });
            assert!(cut_short.is_err(), "seed {seed}: the first life was cut");
            let disk = disk.crash(seed ^ 0xC4A5);
            let (inner, seen) = (clock.clone(), Rc::new(RefCell::new(Vec::new())));
            let got = seen.clone();
            moved_after_restart +=
                driver::run(&clock, cut + Duration::from_secs(20), move || async move {
                    let shard = open(disk, &inner).await;
                    let background = shard.spawn_background();
                    let mut offset = 0;
                    // Everything due has moved within the longest delay after the restart.
                    while let Some(m) = next(&shard, RETRY, offset, 2_000).await {
                        let due = props::get_u64(&m.properties, DUE_MS).unwrap();
                        assert!(inner.unix_ms() >= due, "seed {seed}: a retry came early");
                        got.borrow_mut().push(m.body.clone());
                        offset = m.queue_offset + 1;
                    }
                    let moved = shard.delays().delivered();
                    shard.stop(background).await.expect("clean stop");
                    moved
                })
                .expect("the second life finishes");
            let seen = seen.borrow();
            for body in acked.borrow().iter() {
                assert!(
                    seen.contains(body),
                    "seed {seed}: the acknowledged reject of {:?} was lost (cut at {cut:?})",
                    String::from_utf8_lossy(body)
                );
            }
            acked_total += acked.borrow().len();
        }
        // Not vacuous: rejects were acknowledged, and some were still waiting at the cut.
        assert!(acked_total >= 12, "only {acked_total} rejects acknowledged");
        assert!(moved_after_restart > 0, "no retry was pending at any cut");
    }
}
