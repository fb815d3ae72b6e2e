//! Produce: append a batch to one queue and answer when the request's acknowledgement level
//! holds.
//!
//! One produce path for every listener. [`produce`] takes (topic, queue, messages, level) and
//! returns the [`Produced`] outcome: the level it ran at and the reply (a status and, for the
//! OK family, an encoded `ProduceResponse`). The client protocol's connection reaches it
//! through `handlers::handle_client`, which takes the level from the frame's flags and writes
//! no response when the level applied is `none`; another listener (Kafka's) calls it the same
//! way with the level its own request names, and decides from `Produced::acks` whether to
//! answer. A queue another shard owns is forwarded there with the level already resolved, so
//! the owning shard runs it at the same level.
//!
//! Levels ([`AcksPolicy`]): a request that names none gets `default_acks` (unset: the role's,
//! `all` on a SYNC_MASTER and `leader` on an ASYNC_MASTER, as before levels existed); one
//! below `min_acks` is raised to it. In master/slave mode `leader` waits for the flush mode's
//! guarantee on this broker only, `all` also for `min_in_sync_replicas - 1` slaves exactly as
//! a SYNC_MASTER always has (on an ASYNC_MASTER too), and `none` appends like `leader` and is
//! never answered. The broker's own produces (a rejected message's copy, a due retry) come
//! through `handlers::handle` and run at the level a request naming none gets (so
//! `min_acks` and `default_acks` bind them too), never below `leader`.

use super::{body, route, Route};
use crate::config::{BrokerConfig, BrokerRole, FlushDiskType};
use crate::constants::MAX_MESSAGES_PER_PRODUCE;
use crate::metrics::{Counter, Hist};
use crate::protocol::message::{
    encode_produce, MessageRef, ProduceRequest, ProduceResponse, ANY_QUEUE,
};
use crate::protocol::{Acks, Status};
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
use tracing::debug;

/// How a request's level is decided: its own, or `default`, and never below `floor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcksPolicy {
    pub default: Acks,
    pub floor: Acks,
}

impl AcksPolicy {
    /// The policy of a broker with `config` in `role` (the current one: a promotion changes
    /// the default when `default_acks` is unset).
    pub fn new(config: &BrokerConfig, role: BrokerRole) -> AcksPolicy {
        AcksPolicy {
            default: config
                .mode_default_acks()
                .unwrap_or_else(|| role_acks(role)),
            floor: config.mode_min_acks(),
        }
    }

    /// The level a request that names `requested` (`None`: the broker's default) runs at.
    pub fn resolve(self, requested: Option<Acks>) -> Acks {
        requested.unwrap_or(self.default).max(self.floor)
    }
}

/// The level the role guaranteed before requests could name one: what a request that names
/// none gets while `default_acks` is unset.
pub fn role_acks(role: BrokerRole) -> Acks {
    match role {
        BrokerRole::SyncMaster => Acks::All,
        // A slave refuses produce whatever the level.
        BrokerRole::AsyncMaster | BrokerRole::Slave => Acks::Leader,
    }
}

/// What one produce came to: the level it ran at and its answer.
#[derive(Debug)]
pub struct Produced {
    /// The level applied (the request's raised to `min_acks`, or the default): `None` means
    /// the sender expects no answer and the listener writes none.
    pub acks: Acks,
    /// The status and, for the OK family (`Status::has_body`), an encoded `ProduceResponse`;
    /// otherwise an error message.
    pub reply: Reply,
}

impl Produced {
    /// The decoded response when the status carries one (it was stored).
    pub fn response(&self) -> Option<ProduceResponse> {
        if !self.reply.status.has_body() {
            return None;
        }
        ProduceResponse::decode(&self.reply.body).ok()
    }
}

/// The produce path of every client listener: resolves `requested` (`None`: the broker's
/// default) against `default_acks` and `min_acks`, appends `messages` to `queue` of `topic`
/// (`ANY_QUEUE`: one the broker picks) here or on the owning shard, and waits as long as the
/// level says. Counts the request under its level in /metrics; a `none` request that fails
/// is counted and logged at debug, since nobody will read its answer.
pub async fn produce<D: Disk>(
    shard: &Rc<Shard<D>>,
    topic: &str,
    queue: u32,
    messages: &[MessageRef<'_>],
    requested: Option<Acks>,
) -> Produced {
    let policy = AcksPolicy::new(shard.config(), shard.role());
    let acks = policy.resolve(requested);
    count_level(shard, requested.unwrap_or(policy.default), acks);
    let ran = if shard.lifecycle().is_stopping() {
        Err(ShardError::ShuttingDown)
    } else {
        run(shard, topic, queue, messages, acks).await
    };
    let reply = match ran {
        Ok(reply) => reply,
        Err(e) => super::error_reply(shard, e),
    };
    if acks == Acks::None && reply.status != Status::Ok {
        shard.probe().add(Counter::ProduceAcksNoneErrors, 1);
        debug!(
            shard = shard.id(),
            topic,
            status = %reply.status,
            "a produce at level none failed; its sender asked for no answer: {}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    Produced { acks, reply }
}

fn count_level<D: Disk>(shard: &Shard<D>, asked: Acks, applied: Acks) {
    let counter = match applied {
        Acks::None => Counter::ProduceAcksNone,
        Acks::Leader => Counter::ProduceAcksLeader,
        Acks::All => Counter::ProduceAcksAll,
    };
    shard.probe().add(counter, 1);
    if applied != asked {
        shard.probe().add(Counter::ProduceAcksRaised, 1);
    }
}

/// A client's produce forwarded by another shard, at the level that shard resolved.
pub async fn handle_forwarded<D: Disk>(
    shard: &Rc<Shard<D>>,
    raw: &[u8],
    acks: Acks,
) -> Result<Reply, ShardError> {
    if shard.lifecycle().is_stopping() {
        return Err(ShardError::ShuttingDown);
    }
    decode_and_run(shard, raw, acks).await
}

/// The broker's own produce (a reject's copy, a due retry): the level a request naming none
/// gets (`default_acks`, raised to `min_acks`), and never below `leader`: its caller reads
/// the outcome (a reject is answered OK only once its copy holds), so it cannot run unanswered.
/// Refusing it while the shard stops is the caller's choice (the dispatch does; a reject in
/// progress does not).
pub async fn handle_internal<D: Disk>(
    shard: &Rc<Shard<D>>,
    raw: &[u8],
) -> Result<Reply, ShardError> {
    decode_and_run(shard, raw, internal_acks(shard.config(), shard.role())).await
}

/// The level of the broker's own produces on a broker with `config` in `role`.
pub fn internal_acks(config: &BrokerConfig, role: BrokerRole) -> Acks {
    AcksPolicy::new(config, role)
        .resolve(None)
        .max(Acks::Leader)
}

async fn decode_and_run<D: Disk>(
    shard: &Rc<Shard<D>>,
    raw: &[u8],
    acks: Acks,
) -> Result<Reply, ShardError> {
    let request = ProduceRequest::decode(raw)?;
    run(shard, request.topic, request.queue, &request.messages, acks).await
}

async fn run<D: Disk>(
    shard: &Rc<Shard<D>>,
    topic: &str,
    queue: u32,
    messages: &[MessageRef<'_>],
    acks: Acks,
) -> Result<Reply, ShardError> {
    if !shard.is_master() {
        return Err(not_master(shard));
    }
    check_controller_mode(shard, acks)?;
    validate(shard, messages)?;
    let queue = if queue == ANY_QUEUE {
        pick_queue(shard, topic)?
    } else {
        queue
    };
    let topic_id = match route(shard, topic, queue)? {
        Route::Local { topic_id, .. } => topic_id,
        Route::Remote(owner) => {
            // One allocation for the body, as the forward of the raw request always had.
            let mut forwarded = Vec::with_capacity(produce_wire_len(topic, messages));
            encode_produce(&mut forwarded, topic, queue, messages);
            return Ok(shard.forward_produce(owner, forwarded, acks).await);
        }
    };
    let started = shard.clock().now();
    shard.probe().add(Counter::ProduceRequests, 1);
    let key = QueueKey { topic_id, queue };
    // One deadline for the whole request: waiting for buffer space or a segment and waiting
    // for the flush both count against `sync_flush_timeout_ms`, so a status always arrives
    // within it (plus the slaves' own wait at level `all`).
    let deadline = started + Duration::from_millis(shard.config().sync_flush_timeout_ms);
    let (first, last) = append_batch(shard, key, topic, messages, deadline).await?;
    shard
        .probe()
        .record_duration(Hist::AppendLatency, shard.clock().now() - started);
    shard.probe().appended(
        messages.len() as u64,
        last.end_offset - first.commitlog_offset,
    );
    shard.appended(key, last.end_offset);
    if shard.config().flush_disk_type == FlushDiskType::AsyncFlush {
        shard.publish_confirmed();
    }
    let status = wait_for_guarantee(shard, last.end_offset, deadline, acks).await;
    if status == Status::StoreError {
        return Err(ShardError::NotDurable);
    }
    // Fenced while it waited (demoted, or the lease ran out): never an OK, and the client
    // learns the new master from the NOT_MASTER.
    if shard.config().controller_mode()
        && (!shard.is_master()
            || shard.controller().appended_during_handover(last.end_offset)
            || !shard.controller().may_acknowledge(
                acks,
                shard.config().all_ack_in_sync_state_set,
                shard.clock().now(),
            ))
    {
        return Err(fenced(shard));
    }
    let now = shard.clock().now();
    if shard.config().controller_mode() {
        shard.controller().acknowledged(now);
    }
    shard
        .probe()
        .record_duration(Hist::ProduceLatency, now - started);
    let response = ProduceResponse {
        queue,
        base_offset: first.queue_offset,
        count: messages.len() as u32,
        commitlog_offset: first.commitlog_offset,
    };
    Ok(Reply::with_status(status, body(|out| response.encode(out))))
}

/// The length `encode_produce` writes for `topic` and `messages`: a u16-prefixed name, the
/// queue, a u32 count, and per message its timestamp and three length-prefixed fields.
fn produce_wire_len(topic: &str, messages: &[MessageRef<'_>]) -> usize {
    let fixed = 2 + topic.len() + 4 + 4;
    fixed
        + messages
            .iter()
            .map(|m| 8 + 2 + m.key.len() + 2 + m.properties.len() + 4 + m.body.len())
            .sum::<usize>()
}

fn not_master<D: Disk>(shard: &Shard<D>) -> ShardError {
    ShardError::NotMaster(format!(
        "{} is a slave: send produce requests to its master",
        shard.config().broker_name
    ))
}

/// Controller mode, before the append: a master without a lease answers NOT_MASTER where the
/// level needs one, and an `all`-level produce with a SyncStateSet smaller than
/// `min_in_sync_replicas` gets IN_SYNC_REPLICAS_NOT_ENOUGH (nothing is stored).
fn check_controller_mode<D: Disk>(shard: &Shard<D>, acks: Acks) -> Result<(), ShardError> {
    if !shard.config().controller_mode() {
        return Ok(());
    }
    let now = shard.clock().now();
    let controller = shard.controller();
    if controller.handing_over() {
        return Err(ShardError::NotMaster(format!(
            "{} is stopping and handing its group over to another broker: retry",
            shard.config().broker_name
        )));
    }
    if !controller.may_acknowledge(acks, shard.config().all_ack_in_sync_state_set, now) {
        return Err(fenced(shard));
    }
    // Without a lease, strict `all` goes on only while every member is linked: a member
    // that left (re-pointed by the controllers to a new master, most likely) will confirm
    // nothing more, so the produce is sent to the master it follows now instead of waiting
    // out `sync_replica_timeout_ms` here.
    if !controller.leased(now) && !shard.replicas().is_none_or(|r| r.every_required_linked()) {
        return Err(fenced(shard));
    }
    let view = shard.controller().view();
    let members = view.sync_state_set.len();
    let needed = shard.config().min_in_sync_replicas as usize;
    if acks == Acks::All && members < needed {
        return Err(ShardError::InSyncReplicasNotEnough(format!(
            "the SyncStateSet of {} has {members} member(s) {:?}, fewer than \
             min_in_sync_replicas = {needed}: refused before the append (a one-broker group \
             needs min_in_sync_replicas = 1)",
            shard.config().broker_name,
            view.sync_state_set
        )));
    }
    Ok(())
}

fn fenced<D: Disk>(shard: &Shard<D>) -> ShardError {
    ShardError::NotMaster(format!(
        "{} is fenced: its lease from the controllers ran out or another broker was elected",
        shard.config().broker_name
    ))
}

fn validate<D: Disk>(shard: &Shard<D>, messages: &[MessageRef<'_>]) -> Result<(), ShardError> {
    if messages.len() > MAX_MESSAGES_PER_PRODUCE {
        return Err(ShardError::Refused(format!(
            "{} messages in one produce request; the maximum is {MAX_MESSAGES_PER_PRODUCE}",
            messages.len()
        )));
    }
    let max = shard.config().max_message_bytes as usize;
    if let Some((i, m)) = messages
        .iter()
        .enumerate()
        .find(|(_, m)| m.body.len() > max)
    {
        return Err(ShardError::MessageTooLarge(format!(
            "message {i} has a body of {} bytes; the maximum is {max}",
            m.body.len()
        )));
    }
    // The store's record keeps the key and the properties behind u16 lengths. The native
    // codec cannot carry more, but another listener's message can (a Kafka record's key, or
    // its headers as properties lines): refused here, before the append would panic the shard.
    if let Some((i, m)) = messages
        .iter()
        .enumerate()
        .find(|(_, m)| m.key.len() > u16::MAX as usize || m.properties.len() > u16::MAX as usize)
    {
        return Err(ShardError::MessageTooLarge(format!(
            "message {i} has a key of {} bytes and properties of {} bytes; each is at most {}",
            m.key.len(),
            m.properties.len(),
            u16::MAX
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
    topic: &'a str,
    messages: &[MessageRef<'a>],
    deadline: Instant,
) -> Result<(Appended, Appended), ShardError> {
    let _gate = shard.appending().lock().await;
    // A role change holds the gate: a batch that waited for it behind a demotion must not
    // append on what is now a slave.
    if !shard.is_master() {
        return Err(not_master(shard));
    }
    let store_timestamp_ms = shard.clock().unix_ms();
    let input = |m: &MessageRef<'a>| record_input(key, topic, store_timestamp_ms, m);
    // The whole batch or none of it: its segments and its buffer space must be there before
    // its first record goes in, so DISK_FULL or SYSTEM_BUSY always means nothing was stored.
    let mut lens = shard.appending().take_lens();
    lens.extend(messages.iter().map(|m| input(m).encoded_len()));
    let admitted = shard.admit_batch(deadline, &lens).await;
    shard.appending().return_lens(lens);
    admitted?;
    let mut first = None;
    let mut last: Option<Appended> = None;
    for (stored, m) in messages.iter().enumerate() {
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

/// Waits until the flush mode's guarantee holds for everything before `end_offset` and, at
/// level `all`, the slaves' too, or says which one did not hold in time. Both waits run at
/// once: the flush and the shipping to slaves overlap.
async fn wait_for_guarantee<D: Disk>(
    shard: &Shard<D>,
    end_offset: u64,
    deadline: Instant,
    acks: Acks,
) -> Status {
    let replicas = shard.replicas().filter(|r| {
        // Controller mode waits for the SyncStateSet's members, checked before the append.
        waits_for_slaves(acks, r.required_count().unwrap_or(r.needed()))
    });
    if let Some(replicas) = replicas.as_ref().filter(|r| r.required_count().is_none()) {
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

/// Whether a produce at `acks` waits for `needed` slaves: only `all` does, on either master
/// role (the later controller round changes what `all` counts, not this).
fn waits_for_slaves(acks: Acks, needed: usize) -> bool {
    acks == Acks::All && needed > 0
}

/// Level `all`: waits for enough slaves to acknowledge `end_offset`, at most
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(default_acks: Option<Acks>, min_acks: Acks) -> BrokerConfig {
        BrokerConfig {
            default_acks,
            min_acks,
            ..BrokerConfig::default()
        }
    }

    #[test]
    fn unset_default_follows_the_role_as_before_levels() {
        let defaults = config(None, BrokerConfig::default().min_acks);
        let sync = AcksPolicy::new(&defaults, BrokerRole::SyncMaster);
        let asynchronous = AcksPolicy::new(&defaults, BrokerRole::AsyncMaster);
        assert_eq!(sync.resolve(None), Acks::All);
        assert_eq!(asynchronous.resolve(None), Acks::Leader);
        // The default floor lets a request weaken or strengthen its own level.
        for acks in Acks::ALL {
            assert_eq!(sync.resolve(Some(acks)), acks);
            assert_eq!(asynchronous.resolve(Some(acks)), acks);
        }
    }

    #[test]
    fn a_configured_default_applies_to_requests_that_name_none() {
        let policy = AcksPolicy::new(
            &config(Some(Acks::Leader), Acks::None),
            BrokerRole::SyncMaster,
        );
        assert_eq!(policy.resolve(None), Acks::Leader);
        assert_eq!(policy.resolve(Some(Acks::All)), Acks::All);
        assert_eq!(policy.resolve(Some(Acks::None)), Acks::None);
    }

    #[test]
    fn a_request_that_names_no_level_is_always_answered() {
        // Validation refuses `default_acks = "none"`; every valid policy answers `None`.
        for default in [None, Some(Acks::Leader), Some(Acks::All)] {
            for role in [BrokerRole::SyncMaster, BrokerRole::AsyncMaster] {
                let policy = AcksPolicy::new(&config(default, Acks::None), role);
                assert!(policy.resolve(None).is_answered(), "{default:?} {role:?}");
            }
        }
    }

    #[test]
    fn the_floor_raises_and_never_lowers() {
        let policy = AcksPolicy::new(
            &config(Some(Acks::Leader), Acks::Leader),
            BrokerRole::AsyncMaster,
        );
        assert_eq!(policy.resolve(Some(Acks::None)), Acks::Leader);
        assert_eq!(policy.resolve(None), Acks::Leader);
        let raised = AcksPolicy::new(
            &config(Some(Acks::Leader), Acks::All),
            BrokerRole::SyncMaster,
        );
        assert_eq!(raised.resolve(None), Acks::All, "the default is raised too");
        assert_eq!(policy.resolve(Some(Acks::Leader)), Acks::Leader);
        assert_eq!(policy.resolve(Some(Acks::All)), Acks::All);
        let strict = AcksPolicy::new(&config(None, Acks::All), BrokerRole::AsyncMaster);
        for acks in Acks::ALL {
            assert_eq!(strict.resolve(Some(acks)), Acks::All);
        }
    }

    #[test]
    fn the_brokers_own_produces_follow_the_policy_at_leader_or_above() {
        let role = BrokerRole::AsyncMaster;
        assert_eq!(internal_acks(&config(None, Acks::None), role), Acks::Leader);
        assert_eq!(internal_acks(&config(None, Acks::All), role), Acks::All);
        assert_eq!(
            internal_acks(&config(Some(Acks::All), Acks::None), role),
            Acks::All
        );
        assert_eq!(
            internal_acks(&config(None, Acks::None), BrokerRole::SyncMaster),
            Acks::All
        );
        // Even a policy that could resolve to `none` leaves them answered.
        let unvalidated = config(Some(Acks::None), Acks::None);
        assert_eq!(internal_acks(&unvalidated, role), Acks::Leader);
    }

    #[test]
    fn the_forward_buffer_is_sized_exactly() {
        let messages = [
            MessageRef {
                born_timestamp_ms: 1,
                key: b"k",
                properties: b"a=b",
                body: b"body",
            },
            MessageRef {
                born_timestamp_ms: 2,
                key: b"",
                properties: b"",
                body: &[7; 300],
            },
        ];
        let mut out = Vec::new();
        encode_produce(&mut out, "topic", 3, &messages);
        assert_eq!(produce_wire_len("topic", &messages), out.len());
    }

    #[test]
    fn only_all_waits_for_slaves_and_only_when_some_are_needed() {
        assert!(waits_for_slaves(Acks::All, 1));
        assert!(!waits_for_slaves(Acks::All, 0));
        assert!(!waits_for_slaves(Acks::Leader, 1));
        assert!(!waits_for_slaves(Acks::None, 1));
    }
}
