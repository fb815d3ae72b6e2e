//! [`GroupConsumer`]: a member of a consumer group, sharing a topic's queues with the other
//! members (clustering) or reading all of them itself (broadcasting).
//!
//! The consumer runs the membership protocol (`docs/groups.md`) on one thread with no timer
//! of its own: every [`GroupConsumer::poll`] joins when it is not a member, heartbeats when
//! one is due, gives up the queues the coordinator revoked (it stops fetching them, commits
//! what it processed, then reports them released) and pulls each queue it owns once (all at
//! once on one broker). Every pull names the member and its generation and may carry the
//! commit of what that queue's earlier batches processed, so a commit costs no round trip of
//! its own and a member whose session ended can never commit over its successor.
//!
//! Each message goes to the caller's handler, which answers [`Disposition::Ack`] or
//! [`Disposition::Reject`]. An acknowledged message is committed with a later pull of its
//! queue, at most every [`GroupOptions::commit_interval`] (at-least-once: a member that dies
//! has only what it acknowledged since its last commit delivered again). A rejected one goes
//! to [`GroupConsumer::reject`], which hands it to the broker (`MessageReject`,
//! [`super::retry`]) and then commits past it like an acknowledged one: the broker's copy comes
//! back through the group's retry topic `%RETRY%<group>`, whose queues a clustering group
//! shares like its own topics', until `max_reconsume_times` rejections make it a dead letter.
//! A broadcasting member does not retry (as in RocketMQ): its reject fails the poll and the
//! message stays uncommitted.

use super::api::Client;
use super::error::ClientError;
use super::failover::FailoverClient;
use super::reset::{OffsetReset, OffsetResetApplied};
use crate::protocol::message::{
    GroupAssignment, GroupFetch, GroupHeartbeat, GroupJoin, GroupLeave, GroupPull, GroupQueue,
    MessageReject, PulledMessage, QueueRef, RejectOutcome,
};
use crate::protocol::{FailsOver, Status};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How the group's queues are shared (the `mode` byte of `GroupJoin`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupMode {
    Clustering,
    Broadcasting,
}

/// The allocation strategy of a clustering group (the `strategy` byte of `GroupJoin`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocationStrategy {
    Averagely,
    ByCircle,
    ConsistentHash,
}

impl AllocationStrategy {
    fn to_wire(self) -> u8 {
        match self {
            AllocationStrategy::Averagely => 0,
            AllocationStrategy::ByCircle => 1,
            AllocationStrategy::ConsistentHash => 2,
        }
    }
}

/// How long to wait before joining again after a slave refused membership (`NOT_MASTER`)
/// and the master could not be reached: the slave takes groups over once its master has been
/// gone for a session, so this only paces the tries.
pub const NOT_MASTER_PAUSE: Duration = Duration::from_millis(100);

/// While queues allotted to this member are still held by another (which is committing and
/// releasing them), heartbeat this often to pick them up soon after the release.
pub const WAITING_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(50);

/// Commits ride on pulls at most this often per queue: a busy queue is committed 20 times a
/// second (a few hundred KiB of offsets file writes), and a crash repeats at most this much
/// of a member's work on top of the batch in hand.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Clone, Debug)]
pub struct GroupOptions {
    pub group: String,
    pub topics: Vec<String>,
    /// Names this process in `group describe`; a broadcasting member's offsets are kept under
    /// it, so a restart with the same id resumes.
    pub client_id: String,
    pub host: String,
    pub mode: GroupMode,
    pub strategy: AllocationStrategy,
    /// One message at a time per queue, in order, and never after the member's lease (its
    /// session, measured from the last heartbeat it sent that was answered) may have ended.
    pub orderly: bool,
    /// 0: the broker's default (3 s).
    pub session_timeout_ms: u32,
    /// Shortest time between two commits of one queue riding on its pulls: each commit is a
    /// write of the broker's offsets file, and what a dead member had processed since its
    /// last commit is delivered again. Releases and leaves always commit.
    pub commit_interval: Duration,
    pub max_messages: u32,
    pub max_bytes: u32,
    /// Longest a poll long-polls when its queues are drained (split across them, and never
    /// past the next heartbeat).
    pub max_wait_ms: u32,
    /// Rejections after which a message is a dead letter; 0: the broker's
    /// `max_reconsume_times`.
    pub max_reconsume_times: u32,
}

impl GroupOptions {
    pub fn new(group: &str, topic: &str) -> GroupOptions {
        let host = local_host();
        GroupOptions {
            group: group.to_string(),
            topics: vec![topic.to_string()],
            client_id: default_client_id(&host),
            host,
            mode: GroupMode::Clustering,
            strategy: AllocationStrategy::Averagely,
            orderly: false,
            session_timeout_ms: 0,
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            max_messages: 256,
            max_bytes: 4 * 1024 * 1024,
            max_wait_ms: 1_000,
            max_reconsume_times: 0,
        }
    }
}

/// This machine's name, for `group describe`, as a name the broker takes (see [`as_name`]).
pub fn local_host() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| as_name(h.trim()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// `<host>-<pid>`, as a name the broker takes.
pub fn default_client_id(host: &str) -> String {
    as_name(&format!("{host}-{}", std::process::id()))
}

/// The broker's longest name (`MAX_NAME_BYTES` in ringmq-broker's constants).
const MAX_NAME_BYTES: usize = 127;

/// `text` with anything a broker name may not hold replaced by `-`, no leading dot, and at
/// most the broker's name length (member client ids and hosts are checked as names).
fn as_name(text: &str) -> String {
    let name: String = text
        .trim_start_matches('.')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(MAX_NAME_BYTES)
        .collect();
    name
}

/// One message handed to the handler.
pub struct Delivery<'a> {
    pub topic: &'a str,
    pub queue: u32,
    pub message: &'a PulledMessage,
    pub member_id: &'a str,
    pub generation: u64,
    keepalive: &'a dyn Fn(),
}

impl std::fmt::Debug for Delivery<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.topic)
            .field("queue", &self.queue)
            .field("offset", &self.message.queue_offset)
            .field("member_id", &self.member_id)
            .field("generation", &self.generation)
            .finish()
    }
}

impl Delivery<'_> {
    /// Renews the member's session when a heartbeat is due: a handler that may run longer
    /// than a heartbeat interval (`--exec` runs a command) calls this while it works, or the
    /// session ends under it, its queue moves, and what it processed is never committed.
    /// Cheap when no heartbeat is due. The renewal only keeps the session: a rebalance it
    /// brings is taken after the handler returns, and a queue revoked meanwhile must still be
    /// released within a session of being revoked (like Kafka's `max.poll.interval.ms`, a
    /// handler longer than that loses the queue).
    pub fn keep_alive(&self) {
        (self.keepalive)()
    }
}

/// The handler's answer for one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Processed: committed with a later pull of the queue.
    Ack,
    /// Not processed: handed to [`GroupConsumer::reject`].
    Reject,
}

/// What a consumer sends its requests through: one broker, or a master and its slaves.
pub trait GroupTransport {
    /// Whether [`GroupTransport::call_all`] has its requests in flight at once (then a long
    /// poll waits on every queue at the same time instead of a share of the wait each).
    const PIPELINED: bool = false;

    fn call<R: FailsOver>(&mut self, request: &R) -> Result<R::Response, ClientError>;
    /// A reject appends a copy of the message, so it goes to the master only (never failed
    /// over to a slave, which would refuse it anyway).
    fn reject(&mut self, request: &MessageReject) -> Result<RejectOutcome, ClientError>;

    /// Learns where a topic's queues are, so that pulls go straight to their shards.
    fn learn_topic(&mut self, topic: &str) -> Result<(), ClientError>;

    /// Which broker requests go to now (an index in the transport's list; a single broker is
    /// always 0). A member belongs to the coordinator of the broker it joined on: once this
    /// changes, the consumer joins again there.
    fn broker(&self) -> usize {
        0
    }

    /// A slave refused membership (`NOT_MASTER`: its master may be live): go back to the
    /// master now if it can be reached.
    fn back_to_primary(&mut self) {}

    /// Several requests, answered in order. By default one after another.
    fn call_all<R: FailsOver>(&mut self, requests: &[R]) -> Vec<Result<R::Response, ClientError>> {
        requests.iter().map(|r| self.call(r)).collect()
    }
}

impl GroupTransport for Client {
    const PIPELINED: bool = true;

    fn call<R: FailsOver>(&mut self, request: &R) -> Result<R::Response, ClientError> {
        Client::call(self, request)
    }
    fn reject(&mut self, request: &MessageReject) -> Result<RejectOutcome, ClientError> {
        super::retry::durable(Client::call(self, request)?)
    }

    fn learn_topic(&mut self, topic: &str) -> Result<(), ClientError> {
        self.topic(topic).map(|_| ())
    }

    /// Pipelined: every request is sent before the first answer is awaited.
    fn call_all<R: FailsOver>(&mut self, requests: &[R]) -> Vec<Result<R::Response, ClientError>> {
        let tickets: Vec<_> = requests.iter().map(|r| self.send_request(r)).collect();
        tickets
            .into_iter()
            .zip(requests)
            .map(|(ticket, request)| ticket.and_then(|t| self.wait_request(t, request)))
            .collect()
    }
}

impl GroupTransport for FailoverClient {
    fn call<R: FailsOver>(&mut self, request: &R) -> Result<R::Response, ClientError> {
        FailoverClient::call(self, request)
    }
    fn reject(&mut self, request: &MessageReject) -> Result<RejectOutcome, ClientError> {
        super::retry::durable(self.primary()?.call(request)?)
    }

    fn learn_topic(&mut self, topic: &str) -> Result<(), ClientError> {
        self.describe_topic(topic).map(|_| ())
    }

    fn broker(&self) -> usize {
        self.active()
    }

    fn back_to_primary(&mut self) {
        self.retry_primary_now();
    }
}

/// Counts a caller can report (`ringmq consume` prints them at the end).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupStats {
    pub joins: u64,
    /// Assignments that changed what this member owns.
    pub rebalances: u64,
    /// Pulls or commits the coordinator refused (old generation, or the session had ended).
    pub refused: u64,
    pub delivered: u64,
    /// Messages handed back to the broker: to be retried, or dead.
    pub rejected: u64,
    /// Of those, the ones that became dead letters.
    pub dead: u64,
    /// Rejects that failed: the message was delivered again (or passed over when
    /// broadcasting).
    pub reject_failures: u64,
}

/// Where a queue this member owns is read from and what it has processed.
#[derive(Clone, Copy, Debug)]
struct Cursor {
    /// Next offset to read; `u64::MAX` reads from the group's committed offset.
    next: u64,
    /// The next offset to commit, once something was processed since the last commit.
    uncommitted: Option<u64>,
    /// When a commit of this queue was last sent with a pull.
    committed_at: Instant,
}

struct Membership {
    member_id: std::sync::Arc<str>,
    /// The transport's broker the member joined on ([`GroupTransport::broker`]).
    broker: usize,
    generation: u64,
    heartbeat_interval: Duration,
    session_timeout: Duration,
    /// When the last answered heartbeat (or the join) was sent: the broker's session deadline
    /// is at least a session after it.
    lease_from: Instant,
    next_heartbeat: Instant,
    waiting: u32,
}

pub struct GroupConsumer<T: GroupTransport> {
    transport: T,
    options: GroupOptions,
    member: Option<Membership>,
    cursors: BTreeMap<GroupQueue, Cursor>,
    stats: GroupStats,
    /// Whether the group's retry topic existed when this member last joined: the broker
    /// then shares its queues with the group's own.
    retry_topic_at_join: bool,
    /// A reject made the retry topic after this member joined: it joins again at the next
    /// poll so the group picks the topic's queues up.
    rejoin: bool,
}

/// A poll's outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Polled {
    pub delivered: u64,
    /// Nothing to read right now and no queue waiting to be handed over.
    pub idle: bool,
}

impl<T: GroupTransport> GroupConsumer<T> {
    pub fn new(transport: T, options: GroupOptions) -> GroupConsumer<T> {
        GroupConsumer {
            transport,
            options,
            member: None,
            cursors: BTreeMap::new(),
            stats: GroupStats::default(),
            retry_topic_at_join: false,
            rejoin: false,
        }
    }

    pub fn stats(&self) -> GroupStats {
        self.stats
    }

    pub fn member_id(&self) -> Option<&str> {
        self.member.as_ref().map(|m| &*m.member_id)
    }

    pub fn generation(&self) -> Option<u64> {
        self.member.as_ref().map(|m| m.generation)
    }

    /// The queues this member reads now.
    pub fn owned(&self) -> Vec<GroupQueue> {
        self.cursors.keys().cloned().collect()
    }

    /// One round: join or heartbeat as needed, give up revoked queues, pull every owned queue
    /// once and hand each message to `handler`, stopping after `limit` messages.
    pub fn poll(
        &mut self,
        limit: u64,
        handler: &mut dyn FnMut(&Delivery<'_>) -> Disposition,
    ) -> Result<Polled, ClientError> {
        if self.rejoin {
            self.rejoin = false;
            self.close()?;
        }
        if self.member.is_none() {
            self.join()?;
        }
        self.heartbeat_if_due()?;
        let queues = self.owned();
        let mut delivered = 0;
        if limit > 0 && !queues.is_empty() {
            let wait_ms = self.wait_ms(queues.len());
            let max_messages = self
                .options
                .max_messages
                .min(limit.min(u32::MAX as u64) as u32);
            let requests: Vec<GroupPull> = queues
                .iter()
                .map(|q| {
                    let c = self.cursors[q];
                    let due = c.committed_at.elapsed() >= self.options.commit_interval;
                    let commit = c.uncommitted.filter(|_| due);
                    self.pull_request(q, commit, c.next, max_messages, wait_ms)
                })
                .collect();
            let results = self.transport.call_all(&requests);
            let refused_by_slave = results
                .iter()
                .any(|r| matches!(r, Err(e) if e.status() == Some(Status::NotMaster)));
            if refused_by_slave {
                // The transport moved to a slave on a slow answer, and the slave refused:
                // back to the master, where this session may well be alive.
                self.transport.back_to_primary();
            }
            self.check_broker();
            for ((queue, request), result) in queues.iter().zip(&requests).zip(results) {
                if self.member.is_none() {
                    break;
                }
                delivered += self.take_batch(queue, request, result, limit - delivered, handler)?;
            }
        }
        let waiting = self.member.as_ref().is_some_and(|m| m.waiting > 0);
        if self.cursors.is_empty() && self.member.is_some() {
            // Nothing to long-poll on: pause rather than spin until the next heartbeat
            // brings queues.
            let pause = if waiting {
                WAITING_HEARTBEAT_INTERVAL
            } else {
                Duration::from_millis(self.options.max_wait_ms.max(1) as u64)
            };
            std::thread::sleep(pause.min(self.until_heartbeat()));
        }
        Ok(Polled {
            delivered,
            idle: delivered == 0 && !waiting,
        })
    }

    /// Commits what was processed and leaves the group, so its queues move at once.
    pub fn close(&mut self) -> Result<(), ClientError> {
        let Some(member_id) = self.member.as_ref().map(|m| m.member_id.to_string()) else {
            return Ok(());
        };
        let queues = self.owned();
        for queue in &queues {
            self.commit_only(queue)?;
        }
        self.cursors.clear();
        self.member = None;
        self.transport.call(&GroupLeave {
            group: self.options.group.clone(),
            member_id,
        })
    }

    /// A message the handler rejected: the broker stores its copy (a retry, or a dead letter
    /// after `max_reconsume_times`), and the caller then commits past it like an acknowledged
    /// one. Fails for a broadcasting member (no retries) and when the broker does not take
    /// the copy; the message then stays uncommitted and is delivered again.
    pub fn reject(&mut self, delivery: &Delivery<'_>) -> Result<RejectOutcome, ClientError> {
        if self.options.mode == GroupMode::Broadcasting {
            return Err(ClientError::InvalidArgument(format!(
                "message {}/{} at offset {} was rejected, and a broadcasting consumer does not \
                 retry",
                delivery.topic, delivery.queue, delivery.message.queue_offset
            )));
        }
        let outcome = self.transport.reject(&MessageReject {
            group: self.options.group.clone(),
            topic: delivery.topic.to_string(),
            queue: delivery.queue,
            offset: delivery.message.queue_offset,
            max_reconsume_times: self.options.max_reconsume_times,
        })?;
        self.stats.rejected += 1;
        if outcome.topic != super::retry::retry_topic(&self.options.group) {
            self.stats.dead += 1;
        } else if !self.retry_topic_at_join
            && !self.cursors.keys().any(|q| q.topic == outcome.topic)
        {
            // Unless the group already shares the retry topic's queues (this member holds one
            // since a later rebalance): then joining again would only rebalance for nothing.
            self.rejoin = true;
        }
        Ok(outcome)
    }

    fn join(&mut self) -> Result<(), ClientError> {
        for topic in &self.options.topics {
            self.transport.learn_topic(topic)?;
        }
        // Whether the broker shares the retry topic's queues with this join (it exists once the
        // group rejected something); learned before the join, so a topic made in between only
        // costs one more join later.
        self.retry_topic_at_join = self.options.mode == GroupMode::Clustering
            && self
                .transport
                .learn_topic(&super::retry::retry_topic(&self.options.group))
                .is_ok();
        let sent = Instant::now();
        let o = &self.options;
        let answer = self.transport.call(&GroupJoin {
            group: o.group.clone(),
            client_id: o.client_id.clone(),
            host: o.host.clone(),
            topics: o.topics.clone(),
            mode: match o.mode {
                GroupMode::Clustering => 0,
                GroupMode::Broadcasting => 1,
            },
            strategy: o.strategy.to_wire(),
            orderly: u8::from(o.orderly),
            session_timeout_ms: o.session_timeout_ms,
        });
        let assignment = match answer {
            Ok(assignment) => assignment,
            Err(e) if e.status() == Some(Status::NotMaster) => {
                tracing::info!(group = %self.options.group, "join refused: {e}");
                self.transport.back_to_primary();
                std::thread::sleep(NOT_MASTER_PAUSE);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.stats.joins += 1;
        self.cursors.clear();
        self.member = Some(Membership {
            member_id: assignment.member_id.as_str().into(),
            broker: self.transport.broker(),
            generation: assignment.generation,
            heartbeat_interval: Duration::from_millis(assignment.heartbeat_interval_ms as u64),
            session_timeout: Duration::from_millis(assignment.session_timeout_ms as u64),
            lease_from: sent,
            next_heartbeat: sent,
            waiting: 0,
        });
        tracing::info!(
            group = %self.options.group,
            member = %assignment.member_id,
            generation = assignment.generation,
            "joined the group"
        );
        self.apply(assignment, sent)
    }

    fn until_heartbeat(&self) -> Duration {
        self.member.as_ref().map_or(Duration::ZERO, |m| {
            m.next_heartbeat.saturating_duration_since(Instant::now())
        })
    }

    /// Long-poll per queue: the caller's wait, ending before the next heartbeat is due, split
    /// across the queues when they are pulled one after another (their waits add up: each gets
    /// its share of the time to the heartbeat, or a slow poll outlives the session).
    fn wait_ms(&self, queues: usize) -> u32 {
        let share = if T::PIPELINED {
            1
        } else {
            queues.max(1) as u32
        };
        let until_heartbeat = self.until_heartbeat().as_millis().min(u32::MAX as u128) as u32;
        self.options.max_wait_ms.min(until_heartbeat) / share
    }

    fn heartbeat_if_due(&mut self) -> Result<(), ClientError> {
        match &self.member {
            Some(m) if Instant::now() >= m.next_heartbeat => self.heartbeat(Vec::new()),
            _ => Ok(()),
        }
    }

    /// Heartbeats (reporting `released`) and applies the answer; an ended session is left
    /// for the next poll to join again.
    fn heartbeat(&mut self, released: Vec<GroupQueue>) -> Result<(), ClientError> {
        let Some(member) = &self.member else {
            return Ok(());
        };
        let sent = Instant::now();
        let answer = self.transport.call(&GroupHeartbeat {
            group: self.options.group.clone(),
            member_id: member.member_id.to_string(),
            generation: member.generation,
            released,
        });
        match answer {
            Ok(assignment) => {
                self.check_broker();
                if let Some(m) = &mut self.member {
                    m.lease_from = sent;
                }
                self.apply(assignment, sent)
            }
            Err(e) if e.status() == Some(Status::UnknownMember) => {
                self.session_ended("heartbeat", &e);
                Ok(())
            }
            Err(e) if e.status() == Some(Status::NotMaster) => {
                self.not_master("heartbeat", &e);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// A slave refused a member's request: its master may be live, so membership stays
    /// there. Back to the master; the session survives if the master still has it.
    fn not_master(&mut self, what: &str, e: &ClientError) {
        tracing::info!(group = %self.options.group, "{what} refused: {e}");
        self.transport.back_to_primary();
        self.check_broker();
    }

    /// A member's session lives on the coordinator of the broker it joined on: once the
    /// transport moved to another broker (failover or failback), the queues it held may be
    /// another member's there, so it drops them and joins again where it is now.
    fn check_broker(&mut self) {
        let now = self.transport.broker();
        if self.member.as_ref().is_some_and(|m| m.broker != now) {
            let e = ClientError::InvalidArgument(format!("the consumer moved to broker {now}"));
            self.session_ended("membership", &e);
        }
    }

    /// Takes an assignment: new queues start from the committed offset, queues gone are
    /// dropped, revoked ones are committed and reported released at once.
    fn apply(&mut self, assignment: GroupAssignment, sent: Instant) -> Result<(), ClientError> {
        let Some(member) = &mut self.member else {
            return Ok(());
        };
        member.generation = assignment.generation;
        member.waiting = assignment.waiting;
        member.next_heartbeat = sent
            + if assignment.waiting > 0 || !assignment.revoked.is_empty() {
                WAITING_HEARTBEAT_INTERVAL
            } else {
                member.heartbeat_interval
            };
        let before: Vec<GroupQueue> = self.owned();
        // Queues neither owned nor revoked were taken from this member (it held them past
        // its deadline): nothing of them may be committed any more.
        self.cursors
            .retain(|q, _| assignment.owned.contains(q) || assignment.revoked.contains(q));
        for queue in &assignment.owned {
            self.cursors.entry(queue.clone()).or_insert(Cursor {
                next: u64::MAX,
                uncommitted: None,
                committed_at: sent,
            });
        }
        let mut released = Vec::new();
        for queue in &assignment.revoked {
            if self.cursors.contains_key(queue) {
                self.commit_only(queue)?;
                if self.member.is_none() {
                    return Ok(());
                }
            }
            self.cursors.remove(queue);
            released.push(queue.clone());
        }
        if self.owned() != before {
            self.stats.rebalances += 1;
            tracing::info!(
                group = %self.options.group,
                generation = assignment.generation,
                owned = ?self.owned().iter().map(|q| q.queue).collect::<Vec<_>>(),
                "assignment changed"
            );
        }
        if released.is_empty() {
            Ok(())
        } else {
            self.heartbeat(released)
        }
    }

    /// Commits a queue's processed offset without reading (before releasing or leaving).
    fn commit_only(&mut self, queue: &GroupQueue) -> Result<(), ClientError> {
        let Some(commit) = self.cursors.get(queue).and_then(|c| c.uncommitted) else {
            return Ok(());
        };
        match self.group_pull(queue, Some(commit), commit, 0, 0) {
            Ok(_) => {
                if let Some(c) = self.cursors.get_mut(queue) {
                    c.uncommitted = None;
                }
                Ok(())
            }
            Err(e) => {
                let generation = self.member.as_ref().map_or(0, |m| m.generation);
                self.refused("commit", queue, generation, e)
            }
        }
    }

    fn group_pull(
        &mut self,
        queue: &GroupQueue,
        commit: Option<u64>,
        offset: u64,
        max_messages: u32,
        wait_ms: u32,
    ) -> Result<super::PullResult, ClientError> {
        let request = self.pull_request(queue, commit, offset, max_messages, wait_ms);
        self.transport.call(&request)
    }

    fn pull_request(
        &self,
        queue: &GroupQueue,
        commit: Option<u64>,
        offset: u64,
        max_messages: u32,
        wait_ms: u32,
    ) -> GroupPull {
        let member = self.member.as_ref().expect("pulls only as a member");
        GroupPull {
            group: self.options.group.clone(),
            member_id: member.member_id.to_string(),
            generation: member.generation,
            topic: queue.topic.clone(),
            queue: queue.queue,
            commit,
            offset,
            max_messages,
            max_bytes: self.options.max_bytes,
            max_wait_ms: wait_ms,
        }
    }

    /// A refused pull or commit: an old generation heartbeats now (the commit waits for the
    /// next pull or the release), an ended session drops everything to join again.
    ///
    /// `generation` is the one the refused request carried: when a heartbeat since (for an
    /// earlier refusal of the same poll) already brought a newer one, this refusal is old
    /// news and sends no heartbeat of its own.
    fn refused(
        &mut self,
        what: &str,
        queue: &GroupQueue,
        generation: u64,
        e: ClientError,
    ) -> Result<(), ClientError> {
        match e.status() {
            Some(Status::IllegalGeneration) => {
                self.stats.refused += 1;
                tracing::info!(group = %self.options.group, queue = queue.queue, "{what} refused: {e}");
                match &mut self.member {
                    Some(m) if m.generation == generation => m.next_heartbeat = Instant::now(),
                    _ => return Ok(()),
                }
                self.heartbeat_if_due()
            }
            Some(Status::UnknownMember) => {
                self.stats.refused += 1;
                self.session_ended(what, &e);
                Ok(())
            }
            Some(Status::NotMaster) => {
                self.not_master(what, &e);
                Ok(())
            }
            _ => Err(e),
        }
    }

    fn session_ended(&mut self, what: &str, e: &ClientError) {
        eprintln!(
            "group {}: {what} refused ({e}); dropping {} queues and joining again",
            self.options.group,
            self.cursors.len()
        );
        self.member = None;
        self.cursors.clear();
    }

    /// Takes one queue's pull answer (its commit, if it carried one, landed with it) and
    /// delivers what came, unless the queue was taken away meanwhile.
    fn take_batch(
        &mut self,
        queue: &GroupQueue,
        request: &GroupPull,
        result: Result<super::PullResult, ClientError>,
        limit: u64,
        handler: &mut dyn FnMut(&Delivery<'_>) -> Disposition,
    ) -> Result<u64, ClientError> {
        let commit = request.commit;
        let result = match result {
            Ok(result) => result,
            Err(e) if e.status() == Some(Status::OffsetOutOfRange) => {
                self.out_of_range(queue, &e)?;
                return Ok(0);
            }
            Err(e) => {
                let what = if commit.is_some() { "commit" } else { "pull" };
                return self.refused(what, queue, request.generation, e).map(|()| 0);
            }
        };
        let Some(c) = self.cursors.get_mut(queue) else {
            return Ok(0);
        };
        // The commit landed with the pull; where reading starts is the broker's answer.
        if commit.is_some() {
            if c.uncommitted == commit {
                c.uncommitted = None;
            }
            c.committed_at = Instant::now();
        }
        if result.messages.is_empty() {
            c.next = result.summary.next_offset;
        }
        let take = result
            .messages
            .len()
            .min(limit.min(usize::MAX as u64) as usize);
        self.deliver(queue, &result.messages[..take], handler)
    }

    /// A pull outside the queue's range: below its minimum (retention deleted what was
    /// left unread) it moves to the minimum; past its end (a broker crash under ASYNC_FLUSH
    /// lost a tail the group had committed) to the end, not back to the minimum, which would
    /// deliver the whole queue again. The range comes from the error (the shared reset
    /// module), or from the queue's stats when the error does not carry it.
    fn out_of_range(&mut self, queue: &GroupQueue, e: &ClientError) -> Result<(), ClientError> {
        let Some(next) = self.cursors.get(queue).map(|c| c.next) else {
            return Ok(());
        };
        let from = match next {
            u64::MAX => self
                .transport
                .call(&GroupFetch {
                    group: self.offsets_group(),
                    topic: queue.topic.clone(),
                    queue: queue.queue,
                })?
                .offset
                .unwrap_or(0),
            next => next,
        };
        let (min_offset, max_offset) = match super::reset::out_of_range(e) {
            Some(range) => range,
            None => {
                let stats = self.transport.call(&QueueRef {
                    topic: queue.topic.clone(),
                    queue: queue.queue,
                })?;
                (stats.min_offset, stats.max_offset)
            }
        };
        let policy = if from > max_offset {
            OffsetReset::Latest
        } else {
            OffsetReset::Earliest
        };
        let applied = OffsetResetApplied {
            queue: queue.queue,
            from,
            to: policy.target(min_offset, max_offset),
            min_offset,
            max_offset,
            policy,
        };
        eprintln!("group {}: {applied}", self.options.group);
        if let Some(c) = self.cursors.get_mut(queue) {
            c.next = applied.to;
            // The new position is committed with the next pull, so a successor starts there.
            c.uncommitted = Some(applied.to);
        }
        Ok(())
    }

    /// The group name this member's offsets are kept under (a broadcasting member's own).
    fn offsets_group(&self) -> String {
        match self.options.mode {
            GroupMode::Clustering => self.options.group.clone(),
            GroupMode::Broadcasting => {
                crate::protocol::broadcast_offsets_key(&self.options.group, &self.options.client_id)
            }
        }
    }

    /// Hands a batch to the handler in order, heartbeating between messages when one is due;
    /// stops early when the queue is taken away, or (orderly) when the lease may have ended.
    fn deliver(
        &mut self,
        queue: &GroupQueue,
        messages: &[PulledMessage],
        handler: &mut dyn FnMut(&Delivery<'_>) -> Disposition,
    ) -> Result<u64, ClientError> {
        let Some(member) = &self.member else {
            return Ok(0);
        };
        // Shared, not copied, per message: the hot loop allocates nothing.
        let mut member_id = member.member_id.clone();
        let mut generation = member.generation;
        let mut next_heartbeat = member.next_heartbeat;
        let interval = member.heartbeat_interval;
        let group = self.options.group.clone();
        let mut delivered = 0;
        // What was processed since the cursor was last written: written back before anything
        // that may commit (a heartbeat's revocations) and at the end.
        let mut processed_to = None;
        for message in messages {
            let lease_ended = self.options.orderly && !self.lease_holds();
            if lease_ended || Instant::now() >= next_heartbeat {
                self.advance(queue, processed_to.take());
                if lease_ended {
                    // Paused past the lease: a successor may hold the queue. Ask first.
                    if let Some(m) = &mut self.member {
                        m.next_heartbeat = Instant::now();
                    }
                }
                self.heartbeat_if_due()?;
                let Some(member) = &self.member else { break };
                if !self.cursors.contains_key(queue)
                    || (self.options.orderly && !self.lease_holds())
                {
                    break;
                }
                member_id = member.member_id.clone();
                generation = member.generation;
                next_heartbeat = member.next_heartbeat;
            }
            let renewed = Cell::new(None);
            let disposition = {
                let transport = RefCell::new(&mut self.transport);
                let last = Cell::new(Instant::now());
                let keepalive = || {
                    if last.get().elapsed() < interval {
                        return;
                    }
                    let sent = Instant::now();
                    last.set(sent);
                    let Ok(mut transport) = transport.try_borrow_mut() else {
                        return;
                    };
                    let renewal = GroupHeartbeat {
                        group: group.to_string(),
                        member_id: member_id.to_string(),
                        generation,
                        released: Vec::new(),
                    };
                    // A refusal is left for the heartbeat after the handler to act on.
                    if transport.call(&renewal).is_ok() {
                        renewed.set(Some(sent));
                    }
                };
                handler(&Delivery {
                    topic: &queue.topic,
                    queue: queue.queue,
                    message,
                    member_id: &member_id,
                    generation,
                    keepalive: &keepalive,
                })
            };
            if let (Some(sent), Some(m)) = (renewed.get(), &mut self.member) {
                // Renewed during the handler: the lease runs from the renewal, and the
                // assignment it answered is taken now.
                m.lease_from = sent;
                m.next_heartbeat = Instant::now();
                next_heartbeat = m.next_heartbeat;
            }
            if disposition == Disposition::Reject {
                self.advance(queue, processed_to.take());
                if let Err(e) = self.reject(&Delivery {
                    topic: &queue.topic,
                    queue: queue.queue,
                    message,
                    member_id: &member_id,
                    generation,
                    keepalive: &|| {},
                }) {
                    self.stats.reject_failures += 1;
                    let broadcasting = self.options.mode == GroupMode::Broadcasting;
                    tracing::warn!(
                        group = %self.options.group,
                        topic = %queue.topic,
                        queue = queue.queue,
                        offset = message.queue_offset,
                        "reject failed: {e}; {}",
                        if broadcasting { "passed over" } else { "delivered again" }
                    );
                    // A broadcasting member does not retry (as in RocketMQ): the message is
                    // passed over. Otherwise the copy may not be stored (the master is down,
                    // or it was not durable in time): the queue's batch stops here and stays
                    // uncommitted from this message on, so the next poll delivers it again.
                    if !broadcasting {
                        break;
                    }
                }
            }
            delivered += 1;
            processed_to = Some(message.queue_offset + 1);
        }
        self.advance(queue, processed_to);
        self.stats.delivered += delivered;
        Ok(delivered)
    }

    /// Moves a queue's cursor past what was processed (a no-op once the queue is gone).
    fn advance(&mut self, queue: &GroupQueue, processed_to: Option<u64>) {
        if let (Some(next), Some(cursor)) = (processed_to, self.cursors.get_mut(queue)) {
            cursor.next = next;
            cursor.uncommitted = Some(next);
        }
    }

    /// Whether the broker cannot have ended this member's session yet, with a heartbeat
    /// interval to spare for the message about to be processed.
    fn lease_holds(&self) -> bool {
        self.member
            .as_ref()
            .is_some_and(|m| m.lease_from.elapsed() + m.heartbeat_interval < m.session_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::{PullSummary, PulledMessage};
    use crate::protocol::requests::{PullResult, RejectResult};
    use crate::protocol::{Opcode, Response};

    /// The script: a request's opcode and body to the status and body answered.
    type Answer = dyn FnMut(Opcode, &[u8]) -> (Status, Vec<u8>);

    /// A coordinator played from a script: each request is recorded (opcode and decoded
    /// essentials) and answered by `answer`.
    struct Scripted {
        log: Vec<String>,
        answer: Box<Answer>,
        /// The broker answering now, which the script may move (a failover).
        broker: std::rc::Rc<Cell<usize>>,
    }

    impl GroupTransport for Scripted {
        fn broker(&self) -> usize {
            self.broker.get()
        }

        fn back_to_primary(&mut self) {
            self.log.push("back to the master".into());
            self.broker.set(0);
        }

        fn learn_topic(&mut self, _topic: &str) -> Result<(), ClientError> {
            Ok(())
        }

        fn call<R: FailsOver>(&mut self, request: &R) -> Result<R::Response, ClientError> {
            let mut body = Vec::new();
            request.encode_body(&mut body);
            self.log.push(describe(R::OPCODE, &body));
            let (status, answer) = (self.answer)(R::OPCODE, &body);
            if !status.has_body() {
                return Err(ClientError::Status {
                    status,
                    message: String::from_utf8_lossy(&answer).into_owned(),
                });
            }
            Ok(R::Response::from_answer(status, &answer).expect("scripted answer decodes"))
        }

        fn reject(&mut self, request: &MessageReject) -> Result<RejectOutcome, ClientError> {
            let mut body = Vec::new();
            request.encode(&mut body);
            self.log
                .push(format!("reject {}/{}", request.topic, request.offset));
            let (status, answer) = (self.answer)(Opcode::MessageReject, &body);
            if !status.has_body() {
                return Err(ClientError::Status {
                    status,
                    message: String::from_utf8_lossy(&answer).into_owned(),
                });
            }
            let outcome = RejectOutcome::decode(&answer).expect("scripted answer decodes");
            crate::retry::durable(RejectResult { status, outcome })
        }
    }

    fn describe(opcode: Opcode, body: &[u8]) -> String {
        match opcode {
            Opcode::GroupPull => {
                let p = GroupPull::decode(body).unwrap();
                format!(
                    "pull q{} gen {} commit {:?} max {}",
                    p.queue, p.generation, p.commit, p.max_messages
                )
            }
            Opcode::GroupHeartbeat => {
                let h = GroupHeartbeat::decode(body).unwrap();
                let released: Vec<u32> = h.released.iter().map(|q| q.queue).collect();
                format!("heartbeat gen {} released {released:?}", h.generation)
            }
            other => other.name().to_string(),
        }
    }

    fn q(queue: u32) -> GroupQueue {
        GroupQueue {
            topic: "t".into(),
            queue,
        }
    }

    fn assignment(generation: u64, owned: Vec<GroupQueue>, revoked: Vec<GroupQueue>) -> Vec<u8> {
        let mut out = Vec::new();
        GroupAssignment {
            member_id: "m-1".into(),
            generation,
            session_timeout_ms: 3_000,
            heartbeat_interval_ms: 1_000,
            owned,
            revoked,
            waiting: 0,
        }
        .encode(&mut out);
        out
    }

    fn batch(offsets: std::ops::Range<u64>) -> Vec<u8> {
        let mut out = Vec::new();
        PullResult {
            status: Status::Ok,
            summary: PullSummary {
                next_offset: offsets.end,
                min_offset: 0,
                max_offset: offsets.end,
                suggest: 0,
            },
            messages: offsets
                .map(|o| PulledMessage {
                    queue_offset: o,
                    born_timestamp_ms: 0,
                    store_timestamp_ms: 0,
                    key: Vec::new(),
                    properties: Vec::new(),
                    body: b"m".to_vec(),
                })
                .collect(),
        }
        .encode_answer(&mut out);
        out
    }

    /// A pull refused for an old generation makes the member heartbeat at once; the queue it
    /// is told to give up is committed (at what it processed) before it is reported released,
    /// and the next pulls carry the new generation and the commit of the last batch.
    #[test]
    fn a_revoked_queue_is_committed_before_it_is_released() {
        let mut heartbeats = 0;
        let mut pulls_of_q1 = 0;
        let transport = Scripted {
            log: Vec::new(),
            broker: Default::default(),
            answer: Box::new(move |opcode, body| match opcode {
                Opcode::GroupJoin => (Status::Ok, assignment(1, vec![q(0), q(1)], vec![])),
                Opcode::GroupHeartbeat => {
                    heartbeats += 1;
                    match heartbeats {
                        1 => (Status::Ok, assignment(2, vec![q(1)], vec![q(0)])),
                        _ => (Status::Ok, assignment(2, vec![q(1)], vec![])),
                    }
                }
                Opcode::GroupPull => {
                    let p = GroupPull::decode(body).unwrap();
                    match (p.queue, p.max_messages) {
                        (_, 0) => (Status::NoNewMessage, batch(p.offset..p.offset)),
                        (0, _) => (Status::Ok, batch(0..2)),
                        _ if p.generation == 1 => (Status::IllegalGeneration, b"old".to_vec()),
                        _ => {
                            pulls_of_q1 += 1;
                            (Status::Ok, batch(pulls_of_q1 * 5..pulls_of_q1 * 5 + 1))
                        }
                    }
                }
                other => panic!("unexpected {other:?}"),
            }),
        };
        let mut options = GroupOptions::new("g", "t");
        options.commit_interval = Duration::ZERO;
        let mut consumer = GroupConsumer::new(transport, options);
        let mut seen = Vec::new();
        let mut handler = |d: &Delivery<'_>| {
            seen.push((d.queue, d.message.queue_offset, d.generation));
            Disposition::Ack
        };
        consumer.poll(u64::MAX, &mut handler).unwrap();
        assert_eq!(consumer.owned(), [q(1)]);
        consumer.poll(u64::MAX, &mut handler).unwrap();
        consumer.poll(u64::MAX, &mut handler).unwrap();
        assert_eq!(
            consumer.transport.log,
            [
                "GroupJoin",
                "pull q0 gen 1 commit None max 256",
                "pull q1 gen 1 commit None max 256",
                "heartbeat gen 1 released []",
                "pull q0 gen 2 commit Some(2) max 0",
                "heartbeat gen 2 released [0]",
                "pull q1 gen 2 commit None max 256",
                "pull q1 gen 2 commit Some(6) max 256",
            ]
        );
        assert_eq!(seen, [(0, 0, 1), (0, 1, 1), (1, 5, 2), (1, 10, 2)]);
        assert_eq!(consumer.stats().refused, 1);
    }

    /// A rejected message goes to the broker as a `MessageReject` naming its queue and
    /// offset, and the next pull commits past it like past the acknowledged ones; a reject the
    /// broker made a dead letter is counted as one. A broadcasting member's reject fails, and
    /// its poll passes the message over.
    #[test]
    fn a_rejected_message_is_handed_back_and_committed_past() {
        let mut rejects = 0;
        let transport = Scripted {
            log: Vec::new(),
            broker: Default::default(),
            answer: Box::new(move |opcode, body| match opcode {
                Opcode::GroupJoin => (Status::Ok, assignment(1, vec![q(0)], vec![])),
                Opcode::GroupPull => {
                    let p = GroupPull::decode(body).unwrap();
                    match p.offset {
                        u64::MAX => (Status::Ok, batch(0..3)),
                        at => (Status::NoNewMessage, batch(at..at)),
                    }
                }
                Opcode::MessageReject => {
                    rejects += 1;
                    let topic = if rejects == 1 { "%RETRY%g" } else { "%DLQ%g" };
                    let mut out = Vec::new();
                    RejectOutcome {
                        topic: topic.into(),
                        reconsume_times: rejects,
                        delay_ms: 200,
                    }
                    .encode(&mut out);
                    (Status::Ok, out)
                }
                other => panic!("unexpected {other:?}"),
            }),
        };
        let mut options = GroupOptions::new("g", "t");
        options.commit_interval = Duration::ZERO;
        let mut consumer = GroupConsumer::new(transport, options.clone());
        let mut handler = |d: &Delivery<'_>| match d.message.queue_offset {
            0 => Disposition::Ack,
            _ => Disposition::Reject,
        };
        consumer.poll(u64::MAX, &mut handler).unwrap();
        consumer.poll(u64::MAX, &mut handler).unwrap();
        assert_eq!(
            consumer.transport.log,
            [
                "GroupJoin",
                "pull q0 gen 1 commit None max 256",
                "reject t/1",
                "reject t/2",
                "pull q0 gen 1 commit Some(3) max 256",
            ]
        );
        let stats = consumer.stats();
        assert_eq!((stats.delivered, stats.rejected, stats.dead), (3, 2, 1));

        options.mode = GroupMode::Broadcasting;
        let transport = Scripted {
            log: Vec::new(),
            broker: Default::default(),
            answer: Box::new(|opcode, body| match opcode {
                Opcode::GroupJoin => (Status::Ok, assignment(1, vec![q(0)], vec![])),
                Opcode::GroupPull => {
                    let _ = GroupPull::decode(body).unwrap();
                    (Status::Ok, batch(0..1))
                }
                other => panic!("unexpected {other:?}"),
            }),
        };
        let mut broadcast = GroupConsumer::new(transport, options);
        let mut reject_all = |_: &Delivery<'_>| Disposition::Reject;
        broadcast.poll(u64::MAX, &mut reject_all).unwrap();
        let stats = broadcast.stats();
        assert_eq!(
            (stats.delivered, stats.rejected, stats.reject_failures),
            (1, 0, 1)
        );
    }

    /// A reject whose copy was stored without its guarantee (FLUSH_DISK_TIMEOUT) or not at all
    /// (the master unreachable) does not end the poll and is not committed past: the message
    /// comes again from the queue, and only the reject answered OK lets the commit pass it.
    #[test]
    fn a_failed_or_undurable_reject_leaves_the_message_uncommitted() {
        let mut rejects = 0;
        let transport = Scripted {
            log: Vec::new(),
            broker: Default::default(),
            answer: Box::new(move |opcode, body| match opcode {
                Opcode::GroupJoin => (Status::Ok, assignment(1, vec![q(0)], vec![])),
                Opcode::GroupPull => match GroupPull::decode(body).unwrap().offset {
                    u64::MAX => (Status::Ok, batch(0..3)),
                    at if at < 3 => (Status::Ok, batch(at..3)),
                    at => (Status::NoNewMessage, batch(at..at)),
                },
                Opcode::MessageReject => {
                    rejects += 1;
                    let mut out = Vec::new();
                    RejectOutcome {
                        topic: "%RETRY%g".into(),
                        reconsume_times: 1,
                        delay_ms: 200,
                    }
                    .encode(&mut out);
                    match rejects {
                        1 => (Status::FlushDiskTimeout, out),
                        2 => (Status::NotMaster, b"no master".to_vec()),
                        _ => (Status::Ok, out),
                    }
                }
                other => panic!("unexpected {other:?}"),
            }),
        };
        let mut options = GroupOptions::new("g", "t");
        options.commit_interval = Duration::ZERO;
        let mut consumer = GroupConsumer::new(transport, options);
        let mut seen = Vec::new();
        let mut handler = |d: &Delivery<'_>| {
            seen.push(d.message.queue_offset);
            match d.message.queue_offset {
                1 => Disposition::Reject,
                _ => Disposition::Ack,
            }
        };
        for _ in 0..4 {
            consumer.poll(u64::MAX, &mut handler).unwrap();
        }
        assert_eq!(seen, [0, 1, 1, 1, 2]);
        let commits: Vec<&str> = consumer
            .transport
            .log
            .iter()
            .filter_map(|l| l.split(" commit ").nth(1))
            .filter_map(|l| l.split(' ').next())
            .collect();
        assert_eq!(commits, ["None", "Some(1)", "None", "Some(3)"]);
        let stats = consumer.stats();
        assert_eq!((stats.rejected, stats.reject_failures), (1, 2));
    }

    /// A handler that runs past heartbeat intervals keeps its session with `keep_alive`:
    /// heartbeats go out while it works, then its commit rides on the next pull as usual.
    #[test]
    fn a_slow_handler_keeps_its_session_alive() {
        let transport = Scripted {
            log: Vec::new(),
            broker: Default::default(),
            answer: Box::new(move |opcode, body| {
                let mut assignment = GroupAssignment {
                    member_id: "m-1".into(),
                    generation: 1,
                    session_timeout_ms: 300,
                    heartbeat_interval_ms: 20,
                    owned: vec![q(0)],
                    revoked: vec![],
                    waiting: 0,
                };
                match opcode {
                    Opcode::GroupJoin | Opcode::GroupHeartbeat => {
                        let mut out = Vec::new();
                        assignment.owned = vec![q(0)];
                        assignment.encode(&mut out);
                        (Status::Ok, out)
                    }
                    Opcode::GroupPull => {
                        let p = GroupPull::decode(body).unwrap();
                        (Status::Ok, batch(p.offset.min(5)..p.offset.min(5) + 1))
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }),
        };
        let mut options = GroupOptions::new("g", "t");
        options.commit_interval = Duration::ZERO;
        let mut consumer = GroupConsumer::new(transport, options);
        let mut handler = |d: &Delivery<'_>| {
            // Five heartbeat intervals of work.
            for _ in 0..10 {
                std::thread::sleep(Duration::from_millis(10));
                d.keep_alive();
            }
            Disposition::Ack
        };
        assert_eq!(consumer.poll(u64::MAX, &mut handler).unwrap().delivered, 1);
        let log = &consumer.transport.log;
        let during = log[2..]
            .iter()
            .filter(|l| l.starts_with("heartbeat"))
            .count();
        assert!(during >= 3, "{log:?}");
        consumer
            .poll(u64::MAX, &mut |_: &Delivery<'_>| Disposition::Ack)
            .unwrap();
        let log = &consumer.transport.log;
        assert!(
            log.iter()
                .any(|l| l.starts_with("pull q0 gen 1 commit Some(6)")),
            "{log:?}"
        );
    }

    /// A slave's NOT_MASTER sends the consumer back to the master and keeps its session
    /// there; a transport that moved to another broker (a failover on a slow answer) drops
    /// the membership, discards what came from there, and joins again.
    #[test]
    fn a_slave_refusal_goes_back_and_a_broker_change_joins_again() {
        let broker = std::rc::Rc::new(Cell::new(0));
        let moved = broker.clone();
        let mut pulls = 0;
        let mut joins = 0;
        let transport = Scripted {
            log: Vec::new(),
            broker: broker.clone(),
            answer: Box::new(move |opcode, _body| match opcode {
                Opcode::GroupJoin => {
                    joins += 1;
                    (Status::Ok, assignment(joins, vec![q(0)], vec![]))
                }
                Opcode::GroupPull => {
                    pulls += 1;
                    match pulls {
                        1 => {
                            moved.set(1);
                            (Status::NotMaster, b"slave".to_vec())
                        }
                        2 => {
                            moved.set(1);
                            (Status::Ok, batch(0..3))
                        }
                        _ => (Status::Ok, batch(0..1)),
                    }
                }
                other => panic!("unexpected {other:?}"),
            }),
        };
        let mut consumer = GroupConsumer::new(transport, GroupOptions::new("g", "t"));
        let mut delivered = Vec::new();
        let mut handler = |d: &Delivery<'_>| {
            delivered.push(d.message.queue_offset);
            Disposition::Ack
        };
        consumer.poll(u64::MAX, &mut handler).unwrap();
        assert_eq!(broker.get(), 0, "back on the master");
        assert_eq!(consumer.generation(), Some(1), "the master session is kept");
        consumer.poll(u64::MAX, &mut handler).unwrap();
        assert!(consumer.member_id().is_none(), "moved broker: joins again");
        broker.set(0);
        consumer.poll(u64::MAX, &mut handler).unwrap();
        assert_eq!(consumer.generation(), Some(2));
        assert_eq!(
            delivered,
            [0],
            "nothing delivered from the other broker's answer"
        );
    }

    /// Queues pulled one after another (not pipelined) share the time to the next heartbeat,
    /// so their long-polls together end before it, however long `max_wait_ms` is; and a poll
    /// whose every pull is refused for an old generation heartbeats once, not once per queue.
    #[test]
    fn sequential_long_polls_fit_before_the_heartbeat_and_refusals_heartbeat_once() {
        let waits = std::rc::Rc::new(RefCell::new(Vec::new()));
        let seen = waits.clone();
        let mut heartbeats = 0;
        let transport = Scripted {
            log: Vec::new(),
            broker: Default::default(),
            answer: Box::new(move |opcode, body| match opcode {
                Opcode::GroupJoin => (Status::Ok, assignment(1, (0..8).map(q).collect(), vec![])),
                Opcode::GroupHeartbeat => {
                    heartbeats += 1;
                    (
                        Status::Ok,
                        assignment(1 + heartbeats, (0..8).map(q).collect(), vec![]),
                    )
                }
                Opcode::GroupPull => {
                    let p = GroupPull::decode(body).unwrap();
                    seen.borrow_mut().push(p.max_wait_ms);
                    if seen.borrow().len() > 8 && p.generation == 1 {
                        (Status::IllegalGeneration, b"old".to_vec())
                    } else {
                        (Status::NoNewMessage, batch(0..0))
                    }
                }
                other => panic!("unexpected {other:?}"),
            }),
        };
        let mut options = GroupOptions::new("g", "t");
        options.max_wait_ms = 5_000;
        let mut consumer = GroupConsumer::new(transport, options);
        let mut handler = |_: &Delivery<'_>| Disposition::Ack;
        consumer.poll(u64::MAX, &mut handler).unwrap();
        let total: u32 = waits.borrow().iter().sum();
        assert!(total <= 1_000, "{:?}", waits.borrow());
        // Now the coordinator moved on: all eight pulls of generation 1 are refused.
        consumer.poll(u64::MAX, &mut handler).unwrap();
        let log = &consumer.transport.log;
        let heartbeats = log.iter().filter(|l| l.starts_with("heartbeat")).count();
        assert_eq!(heartbeats, 1, "{log:?}");
        assert_eq!(consumer.generation(), Some(2));
    }

    /// A session that ended (UNKNOWN_MEMBER on a pull) drops every queue, and the next poll
    /// joins again and reads from the committed offsets.
    #[test]
    fn an_ended_session_joins_again() {
        let mut joins = 0;
        let transport = Scripted {
            log: Vec::new(),
            broker: Default::default(),
            answer: Box::new(move |opcode, body| match opcode {
                Opcode::GroupJoin => {
                    joins += 1;
                    (Status::Ok, assignment(joins, vec![q(0)], vec![]))
                }
                Opcode::GroupPull => {
                    let p = GroupPull::decode(body).unwrap();
                    if p.generation == 1 {
                        (Status::UnknownMember, b"gone".to_vec())
                    } else {
                        (Status::Ok, batch(3..4))
                    }
                }
                other => panic!("unexpected {other:?}"),
            }),
        };
        let mut consumer = GroupConsumer::new(transport, GroupOptions::new("g", "t"));
        let mut handler = |_: &Delivery<'_>| Disposition::Ack;
        assert_eq!(consumer.poll(u64::MAX, &mut handler).unwrap().delivered, 0);
        assert!(consumer.member_id().is_none());
        assert_eq!(consumer.poll(u64::MAX, &mut handler).unwrap().delivered, 1);
        assert_eq!(consumer.stats().joins, 2);
        let log = &consumer.transport.log;
        assert_eq!(log[2], "GroupJoin");
        assert_eq!(log[3], "pull q0 gen 2 commit None max 256");
    }
}
