//! The load generator: producer threads (each with its own [`Client`] and connections) and
//! consumer threads (one long-polling connection per queue), all measured against one clock.
//!
//! Time is kept as offsets from the run's origin (`Instant`); the measured phase starts after the
//! warmup. Each message body starts with the wall-clock time (ns since the epoch) at which it was
//! *meant* to be sent, which consumers in this process subtract from their receipt time for the
//! end-to-end latency. Produce latency is ack time minus intended send time: in closed loop the
//! intended time is the send time; in open loop ([`Pacer`]) it is the schedule's, so a stall
//! delays the messages due during it and their latency shows it (no coordinated omission).

use super::histogram::{new_latency_histogram, record_latency};
use crate::client::{Client, ClientError, ClientOptions, DEFAULT_READ_TIMEOUT};
use crate::protocol::message::MessageRef;
use crate::protocol::Acks;
use crate::protocol::Status;
use hdrhistogram::Histogram;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Bytes at the start of every body: the intended send time, u64 little-endian ns since epoch.
pub const TIMESTAMP_BYTES: usize = 8;

/// How long a consumer's pull waits at the end of its queue. Short enough that the end of the
/// run is noticed quickly, long enough that an idle consumer costs the broker little.
pub const PULL_WAIT_MS: u32 = 200;

/// Messages and bytes asked for per pull.
pub const PULL_MAX_MESSAGES: u32 = 256;
pub const PULL_MAX_BYTES: u32 = 4 * 1024 * 1024;

/// How long consumers keep reading after the producers stop, to receive what was acked last.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What every producer and consumer of one run does.
#[derive(Clone, Debug)]
pub struct Workload {
    pub topic: String,
    pub producers: u32,
    pub consumers: u32,
    pub queues: u32,
    /// Distinct keys; 0 sends without keys (the client spreads requests round-robin).
    pub keys: u32,
    pub size_bytes: usize,
    pub batch: u32,
    pub window: u32,
    pub warmup: Duration,
    /// Measured phase length; `None` with `count`.
    pub duration: Option<Duration>,
    /// Measured messages in total over all producers.
    pub count: Option<u64>,
    /// Open loop: messages per second over all producers.
    pub rate_per_sec: Option<f64>,
    /// How the producers are run.
    pub driver: Driver,
    /// The acknowledgement level every produce names (`None`: the broker's `default_acks`).
    /// Never `Acks::None`: a produce nobody answers has no latency to measure.
    pub acks: Option<Acks>,
    /// The broker's Kafka listener: `Some` sends every produce as a Kafka Produce request
    /// there (`--protocol kafka`, event-loop driver, one broker group); `None`: ringmq frames.
    pub kafka: Option<String>,
}

impl Workload {
    /// The wire the producers speak.
    pub fn protocol(&self) -> super::mode::Protocol {
        match self.kafka {
            Some(_) => super::mode::Protocol::Kafka,
            None => super::mode::Protocol::Native,
        }
    }
}

/// How producers are driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// One OS thread and one blocking [`Client`] per producer.
    Threads,
    /// Every producer a state machine on one of `threads` event loops
    /// ([`super::event_loop`]).
    EventLoop { threads: u32 },
}

impl Driver {
    /// `threads` or `event-loop/N`, as printed and stored.
    pub fn describe(self) -> String {
        match self {
            Driver::Threads => "threads".into(),
            Driver::EventLoop { threads } => format!("event-loop/{threads}"),
        }
    }
}

/// When each request of one producer is due.
#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    /// `None`: closed loop, a request is due as soon as the window has room.
    interval: Option<Duration>,
    /// When the first request is due ([`Pacer::staggered`]).
    offset: Duration,
}

impl Pacer {
    pub fn closed_loop() -> Pacer {
        Pacer {
            interval: None,
            offset: Duration::ZERO,
        }
    }

    /// One request of `batch` messages every `batch / rate` seconds.
    pub fn open_loop(rate_per_sec: f64, batch: u32) -> Pacer {
        let seconds = f64::from(batch) / rate_per_sec.max(f64::MIN_POSITIVE);
        Pacer {
            interval: Some(Duration::from_secs_f64(seconds)),
            offset: Duration::ZERO,
        }
    }

    /// Producer `index` of `producers` starts `index / producers` of an interval late, so the
    /// producers' requests are spread evenly over each interval instead of all due at the same
    /// instant (a burst of `producers` requests, then silence, is not the steady rate asked).
    pub fn staggered(self, index: u32, producers: u32) -> Pacer {
        let offset = match self.interval {
            Some(interval) => interval.mul_f64(f64::from(index) / f64::from(producers.max(1))),
            None => Duration::ZERO,
        };
        Pacer { offset, ..self }
    }

    /// Offset from the origin at which request `index` is due; `now` in closed loop.
    pub fn due(&self, index: u64, now: Duration) -> Duration {
        match self.interval {
            Some(interval) => self.offset + interval.mul_f64(index as f64),
            None => now,
        }
    }

    pub fn is_open_loop(&self) -> bool {
        self.interval.is_some()
    }
}

/// The latency of a request due at `intended` and acknowledged at `acked` (both offsets from
/// the origin): the whole wait, including any time it spent waiting to be sent.
pub fn intended_latency(intended: Duration, acked: Duration) -> Duration {
    acked.saturating_sub(intended)
}

/// Shared between the run's threads.
pub struct Shared {
    pub origin: Instant,
    /// Wall-clock ns since the epoch at `origin`, for body timestamps.
    pub origin_wall_ns: u64,
    /// Messages acknowledged in the measured phase, for the progress display.
    pub acked_messages: AtomicU64,
    pub producers_done: AtomicBool,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            origin: Instant::now(),
            origin_wall_ns: wall_ns(),
            acked_messages: AtomicU64::new(0),
            producers_done: AtomicBool::new(false),
        }
    }
}

impl Default for Shared {
    fn default() -> Self {
        Shared::new()
    }
}

/// Where a run's topic lives: the master of every broker group it spans (one entry for a
/// single broker) and every queue, group by group. A key hashes over all the queues, as the
/// cluster producer's key hashing does; without keys producers go round the queues.
#[derive(Clone, Debug)]
pub struct Topology {
    /// Client address of each group's master.
    pub masters: Vec<String>,
    /// `(index into masters, queue number in that group)` per queue of the topic.
    pub queues: Vec<(usize, u32)>,
}

impl Topology {
    /// One broker's queues: `0..queue_count`.
    pub fn single(addr: &str, queue_count: u32) -> Topology {
        Topology {
            masters: vec![addr.to_string()],
            queues: (0..queue_count).map(|q| (0, q)).collect(),
        }
    }

    /// The queue (an index into `queues`) a key's messages go to; `None` without queues.
    pub fn queue_for_key(&self, key: &[u8]) -> Option<usize> {
        let count = self.queues.len() as u32;
        (count > 0).then(|| (crc32c::crc32c(key) % count) as usize)
    }

    /// Creates the topic with `queues` queues on every master (an existing topic is kept) and
    /// reads back how many each has.
    pub fn create(masters: Vec<String>, topic: &str, queues: u32) -> Result<Topology, String> {
        let mut all = Vec::new();
        for (index, addr) in masters.iter().enumerate() {
            let mut admin = connect(addr)?;
            let info = admin
                .create_topic(topic, queues)
                .map_err(|e| format!("creating topic {topic}: {}", describe(addr, &e)))?;
            all.extend((0..info.queue_count()).map(|q| (index, q)));
        }
        if all.is_empty() {
            return Err(format!("topic `{topic}` has no queues"));
        }
        Ok(Topology {
            masters,
            queues: all,
        })
    }
}

/// What one producer measured.
pub struct ProducerOutcome {
    pub latency: Histogram<u64>,
    /// `intervals[n]`: latencies of messages acknowledged in second `n` of the measured phase.
    pub intervals: Vec<Histogram<u64>>,
    pub acked_messages: u64,
    /// Stored, but with a status other than OK (e.g. FLUSH_DISK_TIMEOUT).
    pub stored_without_guarantee: u64,
    pub failed_messages: u64,
    pub first_failure: Option<String>,
    /// Offset of the last measured acknowledgement.
    pub last_ack: Duration,
}

/// What one consumer connection measured.
pub struct ConsumerOutcome {
    pub latency: Histogram<u64>,
    pub intervals: Vec<Histogram<u64>>,
    pub received_messages: u64,
}

pub fn connect(addr: &str) -> Result<Client, String> {
    Client::connect_with(addr, ClientOptions::default()).map_err(|e| describe(addr, &e))
}

pub fn describe(addr: &str, error: &ClientError) -> String {
    error.for_user(addr)
}

/// This producer's share of a total, the remainder going to the first ones.
pub fn share(total: u64, parts: u32, index: u32) -> u64 {
    let parts = u64::from(parts.max(1));
    total / parts + u64::from(u64::from(index) < total % parts)
}

/// A request sent and not yet acknowledged.
pub struct InFlight {
    pub intended: Duration,
    pub messages: u32,
}

/// Runs one producer to the end of the measured phase and collects its acknowledgements.
///
/// It has a client per group master. On one broker the client picks the queue (key hash or
/// round-robin); over several groups the producer picks a queue of the whole topology and
/// sends to that queue's master. Acknowledgements are awaited in send order across the
/// clients: a blocking client waits on one connection at a time, and the oldest request is
/// the one due first.
pub fn run_producer(
    topology: &Topology,
    workload: &Workload,
    index: u32,
    shared: &Shared,
) -> Result<ProducerOutcome, String> {
    let mut clients = Vec::with_capacity(topology.masters.len());
    for addr in &topology.masters {
        let mut client = connect(addr)?;
        client
            .topic(&workload.topic)
            .map_err(|e| describe(addr, &e))?;
        clients.push(client);
    }
    let several = clients.len() > 1;
    let mut next_queue = index as usize;
    let pacer = match workload.rate_per_sec {
        Some(rate) => Pacer::open_loop(rate / f64::from(workload.producers), workload.batch)
            .staggered(index, workload.producers),
        None => Pacer::closed_loop(),
    };
    let measured_count = workload.count.map(|c| share(c, workload.producers, index));
    let end = workload.duration.map(|d| workload.warmup + d);
    let keys: Vec<Vec<u8>> = (0..workload.keys)
        .map(|k| format!("key-{k}").into_bytes())
        .collect();
    let mut bodies: Vec<Vec<u8>> = (0..workload.batch)
        .map(|_| filler_body(workload.size_bytes))
        .collect();
    let mut outcome = ProducerOutcome {
        latency: new_latency_histogram(),
        intervals: Vec::new(),
        acked_messages: 0,
        stored_without_guarantee: 0,
        failed_messages: 0,
        first_failure: None,
        last_ack: Duration::ZERO,
    };
    let mut in_flight: Vec<HashMap<crate::client::Ticket, InFlight>> =
        (0..clients.len()).map(|_| HashMap::new()).collect();
    // The group of every request in flight, oldest first.
    let mut order: VecDeque<usize> = VecDeque::new();
    let mut next_request = 0u64;
    let mut measured_sent = 0u64;
    let mut next_key = index as usize;
    loop {
        let now = shared.origin.elapsed();
        let sending = match (measured_count, end) {
            (Some(count), _) => measured_sent < count,
            (None, Some(end)) => pacer.due(next_request, now) < end,
            (None, None) => false,
        };
        while sending && order.len() < workload.window as usize {
            let now = shared.origin.elapsed();
            let intended = pacer.due(next_request, now);
            if intended > now {
                break;
            }
            let measured = intended >= workload.warmup;
            let mut messages = workload.batch;
            if let (true, Some(count)) = (measured, measured_count) {
                messages = messages.min((count - measured_sent) as u32);
            }
            if messages == 0 {
                break;
            }
            let born_ns = shared.origin_wall_ns + intended.as_nanos() as u64;
            let key: &[u8] = if keys.is_empty() {
                b""
            } else {
                next_key = next_key.wrapping_add(1);
                &keys[next_key % keys.len()]
            };
            for body in bodies.iter_mut().take(messages as usize) {
                body[..TIMESTAMP_BYTES].copy_from_slice(&born_ns.to_le_bytes());
            }
            let batch: Vec<MessageRef<'_>> = bodies[..messages as usize]
                .iter()
                .map(|body| MessageRef {
                    born_timestamp_ms: born_ns / 1_000_000,
                    key,
                    properties: b"",
                    body,
                })
                .collect();
            let (group, queue) = if several {
                let queue = if key.is_empty() {
                    next_queue = next_queue.wrapping_add(1);
                    next_queue % topology.queues.len()
                } else {
                    topology.queue_for_key(key).unwrap_or(0)
                };
                let (group, queue) = topology.queues[queue];
                (group, Some(queue))
            } else {
                (0, None)
            };
            let addr = &topology.masters[group];
            let ticket = clients[group]
                .send_produce_with(&workload.topic, queue, &batch, workload.acks)
                .map_err(|e| describe(addr, &e))?;
            in_flight[group].insert(ticket, InFlight { intended, messages });
            order.push_back(group);
            next_request += 1;
            if measured {
                measured_sent += u64::from(messages);
            }
            if measured_count.is_some_and(|c| measured_sent >= c) {
                break;
            }
        }
        let Some(&group) = order.front() else {
            if !sending || measured_count.is_some_and(|c| measured_sent >= c) {
                return Ok(outcome);
            }
            let due = pacer.due(next_request, shared.origin.elapsed());
            std::thread::sleep(due.saturating_sub(shared.origin.elapsed()));
            continue;
        };
        let addr = &topology.masters[group];
        let window_full = order.len() >= workload.window as usize;
        let wait = if pacer.is_open_loop() && sending && !window_full {
            pacer
                .due(next_request, Duration::ZERO)
                .saturating_sub(shared.origin.elapsed())
        } else {
            DEFAULT_READ_TIMEOUT
        };
        match clients[group].next_produce_ack(wait) {
            Ok(Some(ack)) => {
                let acked = shared.origin.elapsed();
                let Some(request) = in_flight[group].remove(&ack.ticket) else {
                    continue;
                };
                order.pop_front();
                account(&mut outcome, workload, shared, &request, acked, ack.result);
            }
            Ok(None) if wait < DEFAULT_READ_TIMEOUT => {}
            Ok(None) => {
                return Err(format!(
                    "producer {index}: no acknowledgement from {addr} within {} s",
                    wait.as_secs()
                ))
            }
            Err(e) => return Err(format!("producer {index}: {}", describe(addr, &e))),
        }
    }
}

/// Records one acknowledgement (or failure) of a measured request; the same for both drivers.
pub fn account(
    outcome: &mut ProducerOutcome,
    workload: &Workload,
    shared: &Shared,
    request: &InFlight,
    acked: Duration,
    result: Result<crate::client::ProduceResult, ClientError>,
) {
    if request.intended < workload.warmup {
        return;
    }
    let messages = u64::from(request.messages);
    match result {
        Ok(r) => {
            if r.status != Status::Ok {
                outcome.stored_without_guarantee += messages;
            }
            let latency = intended_latency(request.intended, acked);
            record_latency(&mut outcome.latency, latency, messages);
            let second = acked.saturating_sub(workload.warmup).as_secs() as usize;
            while outcome.intervals.len() <= second {
                outcome.intervals.push(new_latency_histogram());
            }
            record_latency(&mut outcome.intervals[second], latency, messages);
            outcome.acked_messages += messages;
            outcome.last_ack = outcome.last_ack.max(acked);
            shared.acked_messages.fetch_add(messages, Ordering::Relaxed);
        }
        Err(e) => {
            outcome.failed_messages += messages;
            if outcome.first_failure.is_none() {
                outcome.first_failure = Some(e.to_string());
            }
        }
    }
}

/// A body of `size` bytes whose first [`TIMESTAMP_BYTES`] are overwritten per send.
pub fn filler_body(size: usize) -> Vec<u8> {
    let mut body = vec![b'x'; size.max(TIMESTAMP_BYTES)];
    body[..TIMESTAMP_BYTES].fill(0);
    body
}

/// Reads one queue from offset 0 until the producers are done and the queue has been drained,
/// recording each message's end-to-end latency (receipt wall time minus intended send time).
pub fn run_consumer(
    addr: &str,
    workload: &Workload,
    queue: u32,
    shared: Arc<Shared>,
) -> Result<ConsumerOutcome, String> {
    let mut client = connect(addr)?;
    let mut state = ConsumerState::new(workload, &shared);
    loop {
        state.before_pull(&shared);
        let pulled = client
            .pull(
                &workload.topic,
                queue,
                state.offset,
                PULL_MAX_MESSAGES,
                PULL_MAX_BYTES,
                PULL_WAIT_MS,
            )
            .map_err(|e| format!("consumer of queue {queue}: {}", describe(addr, &e)))?;
        let bodies = pulled.messages.iter().map(|m| m.body.as_slice());
        if state.received(bodies, pulled.summary.next_offset, pulled.status) {
            return Ok(state.outcome);
        }
    }
}

/// One queue's consumer, whichever driver runs it: the offset to pull from next, the drain
/// deadline once the producers are done, and what it measured.
pub struct ConsumerState {
    pub offset: u64,
    measured_from_ns: u64,
    drain_deadline: Option<Instant>,
    pub outcome: ConsumerOutcome,
}

impl ConsumerState {
    pub fn new(workload: &Workload, shared: &Shared) -> ConsumerState {
        ConsumerState {
            offset: 0,
            measured_from_ns: shared.origin_wall_ns + workload.warmup.as_nanos() as u64,
            drain_deadline: None,
            outcome: ConsumerOutcome {
                latency: new_latency_histogram(),
                intervals: Vec::new(),
                received_messages: 0,
            },
        }
    }

    /// Starts the drain period once the producers are done; call before each pull.
    pub fn before_pull(&mut self, shared: &Shared) {
        if shared.producers_done.load(Ordering::Acquire) && self.drain_deadline.is_none() {
            self.drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
        }
    }

    /// Records one pull's messages (their bodies) and moves the offset; true when the consumer
    /// is finished: drained after the producers stopped, or out of drain time.
    pub fn received<'a>(
        &mut self,
        bodies: impl ExactSizeIterator<Item = &'a [u8]>,
        next_offset: u64,
        status: Status,
    ) -> bool {
        let received_ns = wall_ns();
        let empty = bodies.len() == 0;
        let outcome = &mut self.outcome;
        for body in bodies {
            let Some(born_ns) = body_timestamp_ns(body) else {
                continue;
            };
            if born_ns < self.measured_from_ns {
                continue;
            }
            let latency = Duration::from_nanos(received_ns.saturating_sub(born_ns));
            record_latency(&mut outcome.latency, latency, 1);
            let second =
                (received_ns.saturating_sub(self.measured_from_ns) / 1_000_000_000) as usize;
            while outcome.intervals.len() <= second {
                outcome.intervals.push(new_latency_histogram());
            }
            record_latency(&mut outcome.intervals[second], latency, 1);
            outcome.received_messages += 1;
        }
        self.offset = next_offset.max(self.offset);
        let caught_up = empty || status == Status::NoNewMessage;
        match self.drain_deadline {
            Some(_) if caught_up => true,
            Some(deadline) => Instant::now() >= deadline,
            None => false,
        }
    }
}

pub fn body_timestamp_ns(body: &[u8]) -> Option<u64> {
    let bytes: [u8; TIMESTAMP_BYTES] = body.get(..TIMESTAMP_BYTES)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
