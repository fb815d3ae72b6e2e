//! [`ClusterProducer`]: sends to every writable queue of every broker group a name server
//! lists, and resends according to what a failure says about the message.
//!
//! Queue choice: round robin over the writable queues of all groups (groups with a master),
//! skipping groups the fault tolerance avoids ([`super::fault`]); with a key, crc32c of the
//! key modulo the number of all listed queues (readable: with or without a master), so one key
//! keeps its queue while a group loses and regains its master. When the key's queue has no
//! master, an ordered send fails as not stored without sending; an unordered one falls back
//! to the key's hash over the writable queues.
//!
//! A failed attempt falls in one [`FailureClass`] and [`decide`] says what follows:
//!
//! | class | examples | what the producer does |
//! |---|---|---|
//! | not stored | connect refused, the write failed, `NOT_MASTER`, `SYSTEM_BUSY`, `DISK_FULL`, unknown topic or queue | resends at once to another group (to the same queue at the new master when `NOT_MASTER` names it) |
//! | maybe stored | no answer in time, or the connection broke, after the request was written | reports it; resends to another group only with `retry_another_group_when_not_stored_ok` |
//! | stored without guarantee | `FLUSH_DISK_TIMEOUT`, `FLUSH_SLAVE_TIMEOUT`, `SLAVE_NOT_AVAILABLE` | as maybe stored (the broker appended it) |
//! | rejected | a bad request, a message too large, an invalid name | reports it, never resends (any broker would refuse it) |
//!
//! Resends are bounded by `retries` (RocketMQ's `retryTimesWhenSendFailed`, 2), an OK is never
//! followed by a resend, and the failing group is avoided whatever the class. With `ordered`
//! and a key, a send never changes queue: it fails instead (a `NOT_MASTER` naming the new
//! master still resends to the same queue there).
//!
//! Whether a request was written decides between "not stored" and "maybe stored": errors
//! from [`Client::send_produce`] (connecting, writing the frame) happen before the broker can
//! have the whole request; errors from [`Client::wait_produce`] happen after. Before writing,
//! a connection the broker already closed (a master that died since the last send) is
//! dropped ([`Client::drop_closed_connections`]) so that its failure is a connect failure,
//! known not stored, rather than a write into a dead socket whose fate is unknown.

use super::fault::FaultTolerance;
use super::{MasterRoute, QueueRef, RouteCache, DEFAULT_ROUTE_REFRESH};
use crate::api::{Client, ClientOptions, ProduceResult};
use crate::error::ClientError;
use crate::protocol::message::MessageRef;
use crate::protocol::{Acks, Status};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Extra attempts after the first, by default (RocketMQ's `retryTimesWhenSendFailed`).
pub const DEFAULT_RETRIES: u32 = 2;

/// How long a produce waits for its answer, by default: the longest a broker takes to answer
/// with its defaults (`sync_flush_timeout_ms` 5000 plus `sync_replica_timeout_ms` 3000, after
/// which it answers FLUSH_DISK_TIMEOUT or FLUSH_SLAVE_TIMEOUT) and a margin. The client's
/// general 30 s would let one hung master stall a send, and every send behind it, for 30 s.
pub const DEFAULT_PRODUCE_READ_TIMEOUT: Duration = Duration::from_millis(5_000 + 3_000 + 2_000);

#[derive(Clone, Debug)]
pub struct ClusterProducerOptions {
    pub client: ClientOptions,
    /// Only this cluster's groups; empty: every cluster the name servers list.
    pub cluster: String,
    pub route_refresh: Duration,
    /// Extra attempts after the first for a message not stored (and, with the next option,
    /// maybe stored).
    pub retries: u32,
    /// At-least-once: resend to another group also after a "maybe stored" or "stored without
    /// the guarantee" answer, accepting a duplicate (RocketMQ's
    /// `retryAnotherBrokerWhenNotStoreOK`, default false).
    pub retry_another_group_when_not_stored_ok: bool,
    /// With a key: fail rather than send the message to another queue than the key's.
    pub ordered: bool,
    /// The acknowledgement level every send names (`None`: each broker's `default_acks`).
    /// At `Acks::None` a send ends once written: nothing is answered, so nothing is resent
    /// after the write, and the outcome says `acknowledged: false`.
    pub acks: Option<Acks>,
}

impl Default for ClusterProducerOptions {
    fn default() -> Self {
        let mut client = ClientOptions::default();
        client.connection.read_timeout = DEFAULT_PRODUCE_READ_TIMEOUT;
        ClusterProducerOptions {
            client,
            cluster: String::new(),
            route_refresh: DEFAULT_ROUTE_REFRESH,
            retries: DEFAULT_RETRIES,
            retry_another_group_when_not_stored_ok: false,
            ordered: false,
            acks: None,
        }
    }
}

/// What a failed attempt says about the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    /// The broker cannot have it: resending cannot duplicate it.
    NotStored,
    /// Written, and then no answer: it may be stored.
    MaybeStored,
    /// Appended, but the flush or replication guarantee was not met in time.
    StoredWithoutGuarantee,
    /// Refused for what it is; every broker would refuse it.
    Rejected,
}

/// What the producer does after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send again, to a queue of a group not tried yet.
    ResendAnotherGroup,
    /// Send again to the same queue, at the master the `NOT_MASTER` answer named.
    ResendSameQueue,
    /// Stop and report this attempt's outcome.
    Report,
}

/// The resend decision table (see the module documentation). `hinted`: a `NOT_MASTER`
/// answer named the group's current master; `retries_left`: another attempt is allowed;
/// `ordered`: the message has a key and must not change queue.
pub fn decide(
    class: FailureClass,
    hinted: bool,
    retries_left: bool,
    retry_not_stored_ok: bool,
    ordered: bool,
) -> Decision {
    if !retries_left {
        return Decision::Report;
    }
    match class {
        FailureClass::Rejected => Decision::Report,
        FailureClass::NotStored if hinted => Decision::ResendSameQueue,
        FailureClass::NotStored if !ordered => Decision::ResendAnotherGroup,
        FailureClass::NotStored => Decision::Report,
        FailureClass::MaybeStored | FailureClass::StoredWithoutGuarantee
            if retry_not_stored_ok && !ordered =>
        {
            Decision::ResendAnotherGroup
        }
        FailureClass::MaybeStored | FailureClass::StoredWithoutGuarantee => Decision::Report,
    }
}

/// The class of an error, given whether it happened before the request was written.
pub fn classify_error(error: &ClientError, written: bool) -> FailureClass {
    if let Some(status) = error.status() {
        return match status {
            // Refused before the append: the broker is not the master, is shedding load, has
            // no room, or the routes are stale.
            Status::NotMaster
            | Status::SystemBusy
            | Status::DiskFull
            | Status::InSyncReplicasNotEnough
            | Status::TopicNotFound
            | Status::QueueNotFound => FailureClass::NotStored,
            // A store failure may come after part of the work was done.
            Status::StoreError | Status::Internal => FailureClass::MaybeStored,
            _ => FailureClass::Rejected,
        };
    }
    match error {
        ClientError::InvalidArgument(_) => FailureClass::Rejected,
        _ if !written => FailureClass::NotStored,
        _ => FailureClass::MaybeStored,
    }
}

/// Where a message went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendOutcome {
    /// `OK`, or the "stored without the guarantee" status the broker answered.
    pub status: Status,
    pub group: String,
    /// The master's address that took it.
    pub broker: String,
    pub queue: u32,
    /// The first message's queue offset; 0 when not `acknowledged`.
    pub base_offset: u64,
    pub count: u32,
    /// Attempts made, this one included.
    pub attempts: u32,
    /// Whether the broker answered: false for a send at level `none`, which was written and
    /// whose fate is unknown (then `status` is `OK` and `base_offset` means nothing).
    pub acknowledged: bool,
}

/// A send that did not end in a stored message (or whose fate is unknown).
#[derive(Debug, thiserror::Error)]
#[error("{error} (group {}, {attempts} attempt(s), {class:?})", group.as_deref().unwrap_or("none"))]
pub struct SendError {
    /// The class of the attempts together: `MaybeStored` when any attempt may have stored it.
    pub class: FailureClass,
    /// The last attempt's error.
    pub error: ClientError,
    /// The group of the last attempt, when a queue was chosen.
    pub group: Option<String>,
    pub attempts: u32,
}

/// What one failed attempt says.
struct FailedAttempt {
    class: FailureClass,
    /// The group's master a `NOT_MASTER` answer named, when it is not the one asked.
    hint: Option<crate::protocol::MasterHint>,
    error: ClientError,
    /// The broker's answer, when it stored the message without the guarantee.
    outcome: Option<SendOutcome>,
}

/// The error of a send whose attempts all failed; `last` is `None` when no queue was found.
fn send_error(
    topic: &str,
    last: Option<(ClientError, Option<String>, FailureClass)>,
    maybe_stored: bool,
    attempts: u32,
) -> SendError {
    let (error, group, class) = last.unwrap_or_else(|| {
        (
            ClientError::Status {
                status: Status::TopicNotFound,
                message: format!("no writable queue of topic `{topic}` in the routes"),
            },
            None,
            FailureClass::NotStored,
        )
    });
    SendError {
        // Any attempt that may have stored it makes the whole send "maybe stored".
        class: if maybe_stored {
            FailureClass::MaybeStored
        } else {
            class
        },
        error,
        group,
        attempts,
    }
}

pub struct ClusterProducer {
    routes: RouteCache,
    options: ClusterProducerOptions,
    /// One client per master address, opened on first use and dropped when it breaks.
    clients: HashMap<String, Client>,
    fault: FaultTolerance,
    /// Masters named by `NOT_MASTER` answers, used until the routes list that epoch or newer.
    hinted: HashMap<String, MasterRoute>,
    round_robin: usize,
}

impl ClusterProducer {
    /// A producer that finds brokers through the name servers of `namesrv` (`a,b`).
    pub fn connect(
        namesrv: &str,
        options: ClusterProducerOptions,
    ) -> Result<ClusterProducer, ClientError> {
        let mut routes = RouteCache::connect(namesrv, &options.cluster)?;
        routes.set_refresh_every(options.route_refresh);
        Ok(ClusterProducer::with_routes(routes, options))
    }

    pub fn with_routes(routes: RouteCache, options: ClusterProducerOptions) -> ClusterProducer {
        ClusterProducer {
            routes,
            options,
            clients: HashMap::new(),
            fault: FaultTolerance::default(),
            hinted: HashMap::new(),
            round_robin: 0,
        }
    }

    pub fn routes(&mut self) -> &mut RouteCache {
        &mut self.routes
    }

    pub fn fault_tolerance(&self) -> &FaultTolerance {
        &self.fault
    }

    /// Sends one batch to one queue of `topic`: by `key` when given (else the first message's
    /// key, else round robin), resending as the module documentation says.
    pub fn send(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        messages: &[MessageRef<'_>],
    ) -> Result<SendOutcome, SendError> {
        let key = key
            .or_else(|| messages.first().map(|m| m.key))
            .filter(|k| !k.is_empty());
        let ordered = self.options.ordered && key.is_some();
        let allowed = 1 + self.options.retries;
        let mut tried: Vec<String> = Vec::new();
        let mut pinned: Option<(QueueRef, String)> = None;
        let mut maybe_stored = false;
        let mut stored: Option<SendOutcome> = None;
        let mut last: Option<(ClientError, Option<String>, FailureClass)> = None;
        let mut attempts = 0;
        while attempts < allowed {
            let (queue, master) = match pinned.take() {
                Some(target) => target,
                None => match self.pick(topic, key, &tried, ordered, attempts == 0) {
                    Ok(Some(target)) => target,
                    Ok(None) => break,
                    Err(error) => {
                        last = Some((error, None, FailureClass::NotStored));
                        break;
                    }
                },
            };
            attempts += 1;
            let failed = match self.attempt_once(&queue, &master, topic, messages, attempts) {
                Ok(outcome) => return Ok(outcome),
                Err(failed) => *failed,
            };
            match failed.class {
                FailureClass::MaybeStored => maybe_stored = true,
                FailureClass::StoredWithoutGuarantee => stored = failed.outcome,
                _ => {}
            }
            let decision = decide(
                failed.class,
                failed.hint.is_some(),
                attempts < allowed,
                self.options.retry_another_group_when_not_stored_ok,
                ordered,
            );
            last = Some((failed.error, Some(queue.group.clone()), failed.class));
            match decision {
                Decision::ResendSameQueue => {
                    let listen = failed.hint.expect("hinted").listen;
                    pinned = Some((queue, listen));
                }
                Decision::ResendAnotherGroup => tried.push(queue.group),
                Decision::Report => break,
            }
        }
        // Stored once without the guarantee, and no later attempt stored it with it.
        if let Some(mut outcome) = stored {
            outcome.attempts = attempts;
            return Ok(outcome);
        }
        Err(send_error(topic, last, maybe_stored, attempts))
    }

    /// One attempt at `master`: the outcome of an OK, else what the failure says (the fault
    /// tolerance, the routes and a `NOT_MASTER`'s named master are updated here).
    fn attempt_once(
        &mut self,
        queue: &QueueRef,
        master: &str,
        topic: &str,
        messages: &[MessageRef<'_>],
        attempts: u32,
    ) -> Result<SendOutcome, Box<FailedAttempt>> {
        let started = Instant::now();
        let result = self.attempt(master, topic, queue.queue, messages);
        let latency = started.elapsed();
        let failed = match result {
            Ok(None) => {
                return Ok(SendOutcome {
                    status: Status::Ok,
                    group: queue.group.clone(),
                    broker: master.to_string(),
                    queue: queue.queue,
                    base_offset: 0,
                    count: messages.len() as u32,
                    attempts,
                    acknowledged: false,
                })
            }
            Ok(Some(result)) => {
                let outcome = SendOutcome {
                    status: result.status,
                    group: queue.group.clone(),
                    broker: master.to_string(),
                    queue: result.response.queue,
                    base_offset: result.response.base_offset,
                    count: result.response.count,
                    attempts,
                    acknowledged: true,
                };
                if result.status == Status::Ok {
                    self.fault
                        .record_success(&queue.group, latency, Instant::now());
                    return Ok(outcome);
                }
                FailedAttempt {
                    class: FailureClass::StoredWithoutGuarantee,
                    hint: None,
                    error: ClientError::Status {
                        status: result.status,
                        message: "stored without the flush or replication guarantee".into(),
                    },
                    outcome: Some(outcome),
                }
            }
            Err((error, written)) => FailedAttempt {
                class: classify_error(&error, written),
                // Only a hint naming another master than the one just asked is news.
                hint: error.master_hint().filter(|h| h.listen != master),
                error,
                outcome: None,
            },
        };
        tracing::debug!(group = %queue.group, class = ?failed.class, error = %failed.error, "cluster produce attempt failed");
        if let Some(hint) = &failed.hint {
            self.learn_master(&queue.group, hint.listen.clone(), hint.epoch);
        }
        if failed.class != FailureClass::Rejected {
            if failed.hint.is_none() {
                self.fault
                    .record_failure(&queue.group, latency, Instant::now());
            }
            self.routes.invalidate();
        }
        Err(Box::new(failed))
    }

    /// The queue and master address for the next attempt; `None` when every group was tried
    /// (or, ordered, when the key's queue cannot be used).
    fn pick(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        tried: &[String],
        ordered: bool,
        first: bool,
    ) -> Result<Option<(QueueRef, String)>, ClientError> {
        let mut queues = self.routes.route()?.writable_queues(topic);
        if queues.is_empty() {
            // A topic created since the last refresh: fetch once before giving up.
            self.routes.invalidate();
            queues = self.routes.route()?.writable_queues(topic);
        }
        let listed = self.routes.cached().readable_queues(topic);
        if queues.is_empty() {
            return Err(ClientError::Status {
                status: Status::TopicNotFound,
                message: format!("no group with a master lists topic `{topic}`"),
            });
        }
        let chosen = match key {
            // The key's queue over every listed queue, whatever the fault tolerance says: a
            // key keeps its queue while the groups and their queue counts are unchanged, a
            // lost master included.
            Some(key) if first || ordered => {
                if !first {
                    return Ok(None);
                }
                let hash = crc32c::crc32c(key) as usize;
                let home = &listed[hash % listed.len()];
                if queues.contains(home) {
                    Some(home.clone())
                } else if ordered {
                    return Err(ClientError::Status {
                        status: Status::NotMaster,
                        message: format!(
                            "the key's queue {} of group {} has no master now; an ordered send \
                             never changes queue (not sent)",
                            home.queue, home.group
                        ),
                    });
                } else {
                    Some(queues[hash % queues.len()].clone())
                }
            }
            Some(key) => {
                let left: Vec<&QueueRef> = queues
                    .iter()
                    .filter(|q| !tried.contains(&q.group))
                    .collect();
                (!left.is_empty()).then(|| left[crc32c::crc32c(key) as usize % left.len()].clone())
            }
            None => self.next_round_robin(&queues, tried),
        };
        Ok(chosen.and_then(|queue| {
            let master = self.master_of(&queue.group)?;
            Some((queue, master))
        }))
    }

    fn next_round_robin(&mut self, queues: &[QueueRef], tried: &[String]) -> Option<QueueRef> {
        let left: Vec<&QueueRef> = queues
            .iter()
            .filter(|q| !tried.contains(&q.group))
            .collect();
        if left.is_empty() {
            return None;
        }
        self.round_robin = self.round_robin.wrapping_add(1);
        let now = Instant::now();
        let start = self.round_robin % left.len();
        let available = (0..left.len())
            .map(|i| left[(start + i) % left.len()])
            .find(|q| self.fault.is_available(&q.group, now));
        // Every group left is avoided: the one available soonest, never no send at all.
        let queue = available.or_else(|| {
            left.iter()
                .copied()
                .min_by_key(|q| self.fault.avoided_for(&q.group, now))
        })?;
        Some(queue.clone())
    }

    /// The group's master: a hinted one while the routes list an older epoch.
    fn master_of(&mut self, group: &str) -> Option<String> {
        let listed = self.routes.cached().groups.get(group)?.master.clone();
        if let Some(hint) = self.hinted.get(group) {
            if listed.as_ref().is_none_or(|m| m.epoch < hint.epoch) {
                return Some(hint.listen.clone());
            }
            self.hinted.remove(group);
        }
        listed.map(|m| m.listen)
    }

    fn learn_master(&mut self, group: &str, listen: String, epoch: u32) {
        tracing::info!(group, master = %listen, epoch, "NOT_MASTER named the group's master");
        self.hinted.insert(
            group.to_string(),
            MasterRoute {
                listen,
                epoch,
                broker_id: 0,
            },
        );
    }

    /// One attempt on one master: the error with whether the request had been written.
    fn attempt(
        &mut self,
        master: &str,
        topic: &str,
        queue: u32,
        messages: &[MessageRef<'_>],
    ) -> Result<Option<ProduceResult>, (ClientError, bool)> {
        if !self.clients.contains_key(master) {
            let client =
                Client::connect_with(master, self.options.client).map_err(|e| (e, false))?;
            self.clients.insert(master.to_string(), client);
        }
        let client = self.clients.get_mut(master).expect("just inserted");
        client.drop_closed_connections();
        let acks = self.options.acks;
        let sent = client.send_produce_with(topic, Some(queue), messages, acks);
        let result = match sent {
            Ok(_) if acks == Some(Acks::None) => Ok(None),
            Ok(ticket) => client.wait_produce(ticket).map(Some).map_err(|e| (e, true)),
            Err(e) => Err((e, false)),
        };
        if let Err((e, _)) = &result {
            if e.breaks_connection() || matches!(e, ClientError::Timeout { .. }) {
                self.clients.remove(master);
            }
        }
        result
    }
}
