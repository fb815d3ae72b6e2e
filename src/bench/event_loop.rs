//! The event-loop driver: many producers multiplexed on a few threads, as redis-benchmark does.
//!
//! A producer here is a state machine, not a thread: its own connection to every shard that owns
//! a queue of the topic, on every broker group of the [`Topology`] (so the brokers see the same
//! connections as with one client per producer), its window of requests in flight and its outcome. Each driver thread owns a slice
//! of the producers and waits on all their sockets with one `epoll` instance; when an
//! acknowledgement arrives the producer's next request is encoded straight into the
//! connection's write buffer (`begin_frame` + `encode_produce` + `finish_frame`, the protocol
//! crate's codec) and written at once. So the driver's cost per message is one encode, one
//! `write` and a share of one `read` and one `epoll_wait`, instead of a thread wake-up per
//! acknowledgement and 64 runnable threads competing with the broker for the cores.
//!
//! Why raw `epoll` through `libc` and not `mio`: the loop needs level-triggered readiness on
//! plain TCP sockets, a timeout and (open loop) a `timerfd` for sub-millisecond send times,
//! nothing else; `libc` is already a dependency, so this adds no crate to the build (nor to the
//! fuzz lockfile), and the loop stays about as long as the glue `mio` would need. Linux only,
//! like the broker.
//!
//! Latency, pacing (closed or open loop, with the coordinated-omission correction), warmup and
//! the per-second intervals are exactly the thread driver's: both go through
//! [`workload::account`] and [`Pacer`].
//!
//! Consumers ([`run_consumers`]) get one more thread: every queue's long-polling connection on
//! its own `epoll` loop, recording end-to-end latency through [`ConsumerState`] as the thread
//! driver's consumers do.

use super::histogram::new_latency_histogram;
use super::kafka_wire;
use super::workload::{
    self, share, ConsumerOutcome, ConsumerState, InFlight, Pacer, ProducerOutcome, Shared,
    Topology, Workload,
};
use crate::client::{ClientError, ProduceResult, DEFAULT_MAX_FRAME_BYTES, DEFAULT_READ_TIMEOUT};
use crate::protocol::frame::{begin_frame, finish_frame, FrameHeader};
use crate::protocol::message::{
    decode_error_message, encode_produce, MessageRef, ProduceResponse, PullRequest, PullResponse,
    TopicInfo,
};
use crate::protocol::{FrameDecoder, Opcode, Status};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Bytes read from a socket per `read` call; one call usually takes every acknowledgement that
/// arrived (a produce answer is about 50 bytes). Each loop thread has one such buffer, zeroed
/// once, that every socket is read through.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Readiness events taken per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 1024;

/// The longest `epoll_wait` when nothing is due: bounds how late a stalled broker is noticed
/// (with [`DEFAULT_READ_TIMEOUT`]) without waking an idle loop often.
pub(super) const MAX_WAIT: Duration = Duration::from_millis(100);

/// The epoll token of the open-loop send timer (connection tokens are indices into `conns`).
pub(super) const TIMER_TOKEN: usize = usize::MAX;

/// One non-blocking connection of one producer.
struct Conn {
    stream: TcpStream,
    addr: String,
    producer: usize,
    write_buf: Vec<u8>,
    written: usize,
    read_buf: Vec<u8>,
    /// Whether EPOLLOUT is registered (only while `write_buf` has unsent bytes).
    want_write: bool,
    next_request_id: u64,
    in_flight: HashMap<u64, Pending>,
    /// The broker closed it (with nothing in flight); a producer that picks it fails at once.
    closed: bool,
}

/// A request in flight and when it was written (for the stall timeout).
struct Pending {
    request: InFlight,
    sent: Duration,
}

/// One producer's state.
struct Producer {
    index: u32,
    /// Connection (index into the thread's `conns`) per shard; `None` for shards owning none of
    /// the topic's queues.
    shard_conns: Vec<Option<usize>>,
    pacer: Pacer,
    measured_count: Option<u64>,
    next_request: u64,
    measured_sent: u64,
    next_key: usize,
    next_queue: u32,
    in_flight: usize,
    outcome: ProducerOutcome,
}

/// The topic's routing as the driver needs it, over every group of the topology.
struct Route {
    /// Per queue of the topology: the endpoint (index into `endpoints`) of the shard owning
    /// it, and its queue number in its group.
    queues: Vec<(usize, u32)>,
    /// Address of every shard of every group: its own port, or its master's address when it
    /// has none (the broker forwards).
    endpoints: Vec<String>,
    topology: Topology,
    /// Produces go to a Kafka listener (the only endpoint) as Kafka requests.
    kafka: bool,
}

fn route(topology: &Topology, topic: &str) -> Result<Route, String> {
    let mut endpoints = Vec::new();
    let mut group_endpoints: Vec<Vec<usize>> = Vec::new();
    let mut infos: Vec<TopicInfo> = Vec::new();
    for addr in &topology.masters {
        let mut client = workload::connect(addr)?;
        let info = client
            .topic(topic)
            .map_err(|e| workload::describe(addr, &e))?;
        let host = addr
            .rsplit_once(':')
            .map_or(addr.as_str(), |(host, _)| host);
        let ports = &client.metadata().shard_ports;
        let shards = info
            .queue_shards
            .iter()
            .map(|&s| s as usize + 1)
            .max()
            .unwrap_or(0)
            .max(ports.len());
        let first = endpoints.len();
        endpoints.extend((0..shards).map(|s| match ports.get(s) {
            Some(&port) if port != 0 => format!("{host}:{port}"),
            _ => addr.to_string(),
        }));
        group_endpoints.push((first..first + shards).collect());
        infos.push(info);
    }
    let mut queues = Vec::with_capacity(topology.queues.len());
    for &(group, queue) in &topology.queues {
        let Some(&shard) = infos[group].queue_shards.get(queue as usize) else {
            return Err(format!(
                "topic `{topic}` has no queue {queue} on {}",
                topology.masters[group]
            ));
        };
        queues.push((group_endpoints[group][shard as usize], queue));
    }
    if queues.is_empty() {
        return Err(format!("topic `{topic}` has no queues"));
    }
    Ok(Route {
        queues,
        endpoints,
        topology: topology.clone(),
        kafka: false,
    })
}

/// The route of `--protocol kafka`: every queue of the one group through its Kafka listener at
/// `kafka`, a Kafka partition being a queue (the listener forwards to the owning shard).
fn kafka_route(topology: &Topology, kafka: &str) -> Result<Route, String> {
    if topology.masters.len() != 1 {
        return Err("--protocol kafka drives one broker group (not --namesrv over several)".into());
    }
    Ok(Route {
        queues: topology
            .queues
            .iter()
            .map(|&(_, queue)| (0, queue))
            .collect(),
        endpoints: vec![kafka.to_string()],
        topology: topology.clone(),
        kafka: true,
    })
}

/// A driver thread: it yields the outcomes of the producers it ran.
pub type LoopHandle = std::thread::JoinHandle<Result<Vec<ProducerOutcome>, String>>;

/// Starts every producer of `workload` on `threads` event-loop threads; one outcome per
/// producer once they are joined.
pub fn run_producers(
    topology: &Topology,
    workload: &Workload,
    threads: u32,
    shared: &std::sync::Arc<Shared>,
) -> Result<Vec<LoopHandle>, String> {
    let route = match &workload.kafka {
        Some(kafka) => kafka_route(topology, kafka)?,
        None => route(topology, &workload.topic)?,
    };
    let route = std::sync::Arc::new(route);
    let threads = threads.clamp(1, workload.producers.max(1));
    let mut first = 0u32;
    let mut handles = Vec::new();
    for thread in 0..threads {
        let count = share(u64::from(workload.producers), threads, thread) as u32;
        let indices: Vec<u32> = (first..first + count).collect();
        first += count;
        let (workload, shared, route) = (workload.clone(), shared.clone(), route.clone());
        let handle = std::thread::Builder::new()
            .name(format!("bench-loop-{thread}"))
            .spawn(move || drive(&workload, &indices, &shared, &route))
            .map_err(|e| format!("starting driver thread: {e}"))?;
        handles.push(handle);
    }
    Ok(handles)
}

/// An epoll instance (the descriptor closes with the value).
pub(super) struct Epoll(OwnedFd);

impl Epoll {
    pub(super) fn new() -> Result<Epoll, String> {
        // SAFETY: epoll_create1 takes no pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(format!(
                "epoll_create1: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: `fd` is a new descriptor nothing else owns.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Registers (`EPOLL_CTL_ADD`), changes (`MOD`) or removes (`DEL`) `fd` for readability and,
    /// with `write`, writability. A failure is the run's error: an unregistered socket would
    /// otherwise only show as a stall 30 s later. `peer` names the connection in the message.
    fn control(
        &self,
        op: libc::c_int,
        fd: libc::c_int,
        token: usize,
        write: bool,
        peer: &str,
    ) -> Result<(), String> {
        let mut events = libc::EPOLLIN as u32;
        if write {
            events |= libc::EPOLLOUT as u32;
        }
        let mut event = libc::epoll_event {
            events,
            u64: token as u64,
        };
        // SAFETY: `event` is a valid epoll_event for the duration of the call; `fd` is an open
        // descriptor owned by a value that outlives its registration.
        let rc = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut event) };
        if rc < 0 {
            let name = match op {
                libc::EPOLL_CTL_ADD => "EPOLL_CTL_ADD",
                libc::EPOLL_CTL_MOD => "EPOLL_CTL_MOD",
                _ => "EPOLL_CTL_DEL",
            };
            return Err(format!(
                "{peer}: epoll_ctl {name} of fd {fd}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    pub(super) fn wait(
        &self,
        events: &mut [libc::epoll_event],
        timeout: Duration,
    ) -> Result<usize, String> {
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: the buffer is valid for `events.len()` entries.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                ms,
            )
        };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            return match error.kind() {
                ErrorKind::Interrupted => Ok(0),
                _ => Err(format!("epoll_wait: {error}")),
            };
        }
        Ok(n as usize)
    }
}

/// The open-loop send timer: a `CLOCK_MONOTONIC` timerfd in the epoll set, armed for the
/// instant the next request is due. `epoll_wait`'s own timeout counts whole milliseconds, so
/// waiting with it sends a request up to 1 ms after its schedule, and that delay would be
/// counted as broker latency; the timer expires on the instant (to the kernel's timer slack).
pub(super) struct Timer {
    fd: OwnedFd,
    /// `CLOCK_MONOTONIC` at the run's origin, so a due offset becomes an absolute expiry.
    origin: Duration,
    /// The due offset the timer is armed for; `None` when disarmed or fired.
    armed: Option<Duration>,
}

impl Timer {
    /// A disarmed timer registered in `epoll` under [`TIMER_TOKEN`]; due offsets count from
    /// `origin`.
    pub(super) fn new(epoll: &Epoll, origin: Instant) -> Result<Timer, String> {
        // SAFETY: timerfd_create takes no pointers.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(format!(
                "timerfd_create: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: `fd` is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        epoll.control(
            libc::EPOLL_CTL_ADD,
            fd.as_raw_fd(),
            TIMER_TOKEN,
            false,
            "send timer",
        )?;
        // `Instant` is CLOCK_MONOTONIC on Linux. Reading the elapsed time first can only place
        // the origin a little late, so the timer never fires before a request is due.
        let since = origin.elapsed();
        let origin = monotonic_now()?.saturating_sub(since);
        Ok(Timer {
            fd,
            origin,
            armed: None,
        })
    }

    /// Arms the timer to expire at offset `due` (nothing to do when it already is).
    pub(super) fn arm(&mut self, due: Duration) -> Result<(), String> {
        if self.armed == Some(due) {
            return Ok(());
        }
        let at = self.origin + due;
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let spec = libc::itimerspec {
            it_interval: zero,
            it_value: libc::timespec {
                tv_sec: at.as_secs() as libc::time_t,
                tv_nsec: at.subsec_nanos() as _,
            },
        };
        // SAFETY: `spec` is valid for the call; a null old value is allowed. `at` is never 0
        // (which would disarm), as CLOCK_MONOTONIC is past 0 at the origin.
        let rc = unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(format!(
                "timerfd_settime: {}",
                std::io::Error::last_os_error()
            ));
        }
        self.armed = Some(due);
        Ok(())
    }

    /// Takes the expiry that woke the loop: a level-triggered timerfd stays readable until read.
    pub(super) fn clear(&mut self) {
        let mut expirations = [0u8; 8];
        // SAFETY: reading 8 bytes into an 8-byte buffer. It can only fail with EAGAIN (not
        // expired after all), which leaves nothing to clear.
        unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                expirations.as_mut_ptr().cast(),
                expirations.len(),
            )
        };
        self.armed = None;
    }
}

fn monotonic_now() -> Result<Duration, String> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is valid for the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } < 0 {
        return Err(format!(
            "clock_gettime: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
}

/// How the loop waits at offset `now` when the next open-loop request is due at `next_due`
/// (`None`: no producer waits for its schedule): the instant to arm the [`Timer`] for and the
/// `epoll_wait` timeout. A request already due is sent without waiting.
pub(super) fn plan_wait(now: Duration, next_due: Option<Duration>) -> (Option<Duration>, Duration) {
    match next_due {
        Some(due) if due <= now => (None, Duration::ZERO),
        Some(due) => (Some(due), MAX_WAIT),
        None => (None, MAX_WAIT),
    }
}

/// Everything one driver thread owns.
struct Driver<'a> {
    workload: &'a Workload,
    shared: &'a Shared,
    route: &'a Route,
    epoll: Epoll,
    conns: Vec<Conn>,
    producers: Vec<Producer>,
    keys: Vec<Vec<u8>>,
    bodies: Vec<Vec<u8>>,
    end: Option<Duration>,
    decoder: FrameDecoder,
    /// The thread's read buffer ([`READ_CHUNK_BYTES`]).
    chunk: Vec<u8>,
    /// Open loop only.
    timer: Option<Timer>,
}

fn drive(
    workload: &Workload,
    indices: &[u32],
    shared: &Shared,
    route: &Route,
) -> Result<Vec<ProducerOutcome>, String> {
    let epoll = Epoll::new()?;
    let timer = match workload.rate_per_sec {
        Some(_) => Some(Timer::new(&epoll, shared.origin)?),
        None => None,
    };
    let mut driver = Driver {
        workload,
        shared,
        route,
        epoll,
        conns: Vec::new(),
        producers: Vec::new(),
        keys: (0..workload.keys)
            .map(|k| format!("key-{k}").into_bytes())
            .collect(),
        bodies: (0..workload.batch)
            .map(|_| workload::filler_body(workload.size_bytes))
            .collect(),
        end: workload.duration.map(|d| workload.warmup + d),
        decoder: FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES),
        chunk: vec![0; READ_CHUNK_BYTES],
        timer,
    };
    for &index in indices {
        driver.add_producer(index)?;
    }
    driver.run()?;
    Ok(driver.producers.into_iter().map(|p| p.outcome).collect())
}

impl Driver<'_> {
    fn add_producer(&mut self, index: u32) -> Result<(), String> {
        let workload = self.workload;
        let producer = self.producers.len();
        let mut shard_conns = vec![None; self.route.endpoints.len()];
        let mut shards: Vec<usize> = self.route.queues.iter().map(|q| q.0).collect();
        shards.sort_unstable();
        shards.dedup();
        for shard in shards {
            let addr = &self.route.endpoints[shard];
            // Authenticated first when the command has a SCRAM user (the raw socket after).
            let stream = ringmq_client::scram::connect_plaintext(addr)
                .map_err(|e| format!("producer {index}: {}", e.for_user(addr)))?;
            stream
                .set_nodelay(true)
                .and_then(|_| stream.set_nonblocking(true))
                .map_err(|e| format!("producer {index}: configuring socket to {addr}: {e}"))?;
            let token = self.conns.len();
            self.epoll
                .control(libc::EPOLL_CTL_ADD, stream.as_raw_fd(), token, false, addr)?;
            self.conns.push(Conn {
                stream,
                addr: addr.clone(),
                producer,
                write_buf: Vec::new(),
                written: 0,
                read_buf: Vec::with_capacity(READ_CHUNK_BYTES),
                want_write: false,
                next_request_id: 1,
                in_flight: HashMap::new(),
                closed: false,
            });
            shard_conns[shard] = Some(token);
        }
        let pacer = match workload.rate_per_sec {
            Some(rate) => Pacer::open_loop(rate / f64::from(workload.producers), workload.batch)
                .staggered(index, workload.producers),
            None => Pacer::closed_loop(),
        };
        self.producers.push(Producer {
            index,
            shard_conns,
            pacer,
            measured_count: workload.count.map(|c| share(c, workload.producers, index)),
            next_request: 0,
            measured_sent: 0,
            next_key: index as usize,
            // Producers start on different queues so a closed loop spreads from the first
            // request, as many independent clients would.
            next_queue: index,
            in_flight: 0,
            outcome: ProducerOutcome {
                latency: new_latency_histogram(),
                intervals: Vec::new(),
                acked_messages: 0,
                stored_without_guarantee: 0,
                failed_messages: 0,
                first_failure: None,
                last_ack: Duration::ZERO,
            },
        });
        Ok(())
    }

    /// Whether producer `p` still has requests to send at offset `now`.
    fn sending(&self, p: usize, now: Duration) -> bool {
        let producer = &self.producers[p];
        match (producer.measured_count, self.end) {
            (Some(count), _) => producer.measured_sent < count,
            (None, Some(end)) => producer.pacer.due(producer.next_request, now) < end,
            (None, None) => false,
        }
    }

    fn run(&mut self) -> Result<(), String> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
        let mut touched: Vec<usize> = (0..self.producers.len()).collect();
        let open_loop = self.workload.rate_per_sec.is_some();
        let mut next_stall_check = Duration::ZERO;
        loop {
            // Closed loop: only producers that got an answer can send. Open loop: any producer
            // may have come due, so all are visited.
            if open_loop {
                touched.clear();
                touched.extend(0..self.producers.len());
            }
            for &p in &touched {
                self.fill(p)?;
            }
            touched.clear();
            let now = self.shared.origin.elapsed();
            let in_flight: usize = self.producers.iter().map(|p| p.in_flight).sum();
            let any_sending = (0..self.producers.len()).any(|p| self.sending(p, now));
            if in_flight == 0 && !any_sending {
                return Ok(());
            }
            // A stall is one request unanswered for the read timeout, however busy the other
            // connections are. Scanning every request costs, so it runs every MAX_WAIT.
            if in_flight > 0 && now >= next_stall_check {
                next_stall_check = now + MAX_WAIT;
                self.check_stall(now, in_flight)?;
            }
            let mut next_due = None;
            if open_loop {
                for p in 0..self.producers.len() {
                    if self.producers[p].in_flight < self.workload.window as usize
                        && self.sending(p, now)
                    {
                        let due = self.producers[p]
                            .pacer
                            .due(self.producers[p].next_request, now);
                        next_due = Some(next_due.map_or(due, |d: Duration| d.min(due)));
                    }
                }
            }
            let (timer_at, timeout) = plan_wait(now, next_due);
            if let (Some(at), Some(timer)) = (timer_at, &mut self.timer) {
                timer.arm(at)?;
            }
            let ready = self.epoll.wait(&mut events, timeout)?;
            for event in &events[..ready] {
                let token = event.u64 as usize;
                if token == TIMER_TOKEN {
                    if let Some(timer) = &mut self.timer {
                        timer.clear();
                    }
                    continue;
                }
                let flags = event.events;
                if flags & libc::EPOLLOUT as u32 != 0 {
                    self.flush(token)?;
                }
                let readable = libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR;
                if flags & readable as u32 != 0 && self.read(token)? > 0 {
                    touched.push(self.conns[token].producer);
                }
            }
            touched.sort_unstable();
            touched.dedup();
        }
    }

    /// Fails when the oldest request in flight was sent [`DEFAULT_READ_TIMEOUT`] ago or more.
    fn check_stall(&self, now: Duration, in_flight: usize) -> Result<(), String> {
        let oldest = self
            .conns
            .iter()
            .flat_map(|c| c.in_flight.values().map(move |r| (r.sent, c)))
            .min_by_key(|&(sent, _)| sent);
        match oldest {
            Some((sent, conn)) if now.saturating_sub(sent) >= DEFAULT_READ_TIMEOUT => Err(format!(
                "producer {}: no acknowledgement from {} within {} s ({in_flight} requests in \
                     flight)",
                self.producers[conn.producer].index,
                conn.addr,
                DEFAULT_READ_TIMEOUT.as_secs()
            )),
            _ => Ok(()),
        }
    }

    /// Sends producer `p`'s requests while its window has room and (open loop) they are due.
    fn fill(&mut self, p: usize) -> Result<(), String> {
        let workload = self.workload;
        loop {
            let now = self.shared.origin.elapsed();
            if !self.sending(p, now) || self.producers[p].in_flight >= workload.window as usize {
                return Ok(());
            }
            let producer = &mut self.producers[p];
            let intended = producer.pacer.due(producer.next_request, now);
            if intended > now {
                return Ok(());
            }
            let measured = intended >= workload.warmup;
            let mut messages = workload.batch;
            if let (true, Some(count)) = (measured, producer.measured_count) {
                messages = messages.min((count - producer.measured_sent) as u32);
            }
            if messages == 0 {
                return Ok(());
            }
            let key: &[u8] = if self.keys.is_empty() {
                b""
            } else {
                producer.next_key = producer.next_key.wrapping_add(1);
                &self.keys[producer.next_key % self.keys.len()]
            };
            let queue_count = self.route.queues.len() as u32;
            let index = if key.is_empty() {
                producer.next_queue = producer.next_queue.wrapping_add(1);
                producer.next_queue % queue_count
            } else {
                self.route.topology.queue_for_key(key).unwrap_or(0) as u32
            };
            let (shard, queue) = self.route.queues[index as usize];
            let token = producer.shard_conns[shard].expect("every owning shard has a connection");
            if self.conns[token].closed {
                // Writing would likely succeed into the socket buffer and then wait 30 s for
                // an answer that cannot come.
                return Err(format!(
                    "producer {}: {} closed the connection",
                    producer.index, self.conns[token].addr
                ));
            }
            producer.next_request += 1;
            producer.in_flight += 1;
            if measured {
                producer.measured_sent += u64::from(messages);
            }
            let born_ns = self.shared.origin_wall_ns + intended.as_nanos() as u64;
            for body in self.bodies.iter_mut().take(messages as usize) {
                body[..workload::TIMESTAMP_BYTES].copy_from_slice(&born_ns.to_le_bytes());
            }
            if self.route.kafka {
                let conn = &mut self.conns[token];
                let request_id = conn.next_request_id;
                conn.next_request_id += 1;
                let batch = kafka_wire::Batch {
                    topic: &workload.topic,
                    partition: queue,
                    acks: kafka_wire::kafka_acks(workload.acks),
                    key,
                    timestamp_ms: born_ns / 1_000_000,
                    values: &self.bodies[..messages as usize],
                };
                kafka_wire::encode_produce(&mut conn.write_buf, request_id as i32, &batch)?;
                let request = InFlight { intended, messages };
                conn.in_flight
                    .insert(request_id, Pending { request, sent: now });
                self.flush(token)?;
                continue;
            }
            let batch: Vec<MessageRef<'_>> = self.bodies[..messages as usize]
                .iter()
                .map(|body| MessageRef {
                    born_timestamp_ms: born_ns / 1_000_000,
                    key,
                    properties: b"",
                    body,
                })
                .collect();
            let conn = &mut self.conns[token];
            let request_id = conn.next_request_id;
            conn.next_request_id += 1;
            let start = begin_frame(
                &mut conn.write_buf,
                FrameHeader::request(Opcode::Produce, request_id).with_acks(workload.acks),
            );
            encode_produce(&mut conn.write_buf, &workload.topic, queue, &batch);
            finish_frame(&mut conn.write_buf, start);
            let request = InFlight { intended, messages };
            let sent = now;
            conn.in_flight.insert(request_id, Pending { request, sent });
            self.flush(token)?;
        }
    }

    fn flush(&mut self, token: usize) -> Result<(), String> {
        let conn = &mut self.conns[token];
        flush_socket(
            &self.epoll,
            token,
            &mut conn.stream,
            &conn.addr,
            &mut conn.write_buf,
            &mut conn.written,
            &mut conn.want_write,
        )
    }

    /// Reads what arrived and accounts every complete acknowledgement; returns how many.
    fn read(&mut self, token: usize) -> Result<usize, String> {
        let conn = &mut self.conns[token];
        let closed = read_socket(
            &mut conn.stream,
            &conn.addr,
            &mut conn.read_buf,
            &mut self.chunk,
        )?;
        let acked = self.shared.origin.elapsed();
        let mut answered = 0;
        let mut consumed = 0;
        loop {
            let conn = &self.conns[token];
            let (request_id, result) = if self.route.kafka {
                match kafka_wire::decode_answer(&conn.read_buf[consumed..], DEFAULT_MAX_FRAME_BYTES)
                {
                    Ok(Some((wire_len, correlation, result))) => {
                        consumed += wire_len;
                        (correlation as u64, result)
                    }
                    Ok(None) => break,
                    Err(e) => return Err(format!("{}: {e}", conn.addr)),
                }
            } else {
                let frame = match self.decoder.decode(&conn.read_buf[consumed..]) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => return Err(format!("{}: bad frame from the broker: {e}", conn.addr)),
                };
                consumed += frame.wire_len();
                (
                    frame.header.request_id,
                    produce_result(frame.header, frame.body),
                )
            };
            let conn = &mut self.conns[token];
            let Some(Pending { request, .. }) = conn.in_flight.remove(&request_id) else {
                return Err(format!(
                    "{}: answer to request {request_id} that is not in flight",
                    conn.addr
                ));
            };
            let producer = &mut self.producers[conn.producer];
            producer.in_flight -= 1;
            answered += 1;
            workload::account(
                &mut producer.outcome,
                self.workload,
                self.shared,
                &request,
                acked,
                result,
            );
        }
        let conn = &mut self.conns[token];
        conn.read_buf.drain(..consumed);
        if closed && conn.in_flight.is_empty() {
            // Nothing is lost yet (e.g. an idle producer's connection after its last answer):
            // the socket leaves the set, and a later send on it fails (see `fill`).
            conn.closed = true;
            self.epoll.control(
                libc::EPOLL_CTL_DEL,
                conn.stream.as_raw_fd(),
                token,
                false,
                &conn.addr,
            )?;
        } else if closed {
            let index = self.producers[conn.producer].index;
            return Err(format!(
                "producer {index}: {} closed the connection with {} requests in flight",
                conn.addr,
                conn.in_flight.len()
            ));
        }
        Ok(answered)
    }
}

/// Writes what `write_buf` holds from `written` on; registers the socket for writability while
/// bytes remain (the socket buffer was full) and unregisters once it drained.
fn flush_socket(
    epoll: &Epoll,
    token: usize,
    stream: &mut TcpStream,
    addr: &str,
    write_buf: &mut Vec<u8>,
    written: &mut usize,
    want_write: &mut bool,
) -> Result<(), String> {
    while *written < write_buf.len() {
        match stream.write(&write_buf[*written..]) {
            Ok(0) => return Err(format!("{addr}: connection closed while writing")),
            Ok(n) => *written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{addr}: write failed: {e}")),
        }
    }
    let pending = *written < write_buf.len();
    if !pending {
        write_buf.clear();
        *written = 0;
    }
    if pending != *want_write {
        *want_write = pending;
        epoll.control(
            libc::EPOLL_CTL_MOD,
            stream.as_raw_fd(),
            token,
            pending,
            addr,
        )?;
    }
    Ok(())
}

/// Appends everything readable now to `read_buf`, reading through the thread's `chunk`; true
/// when the peer closed the connection.
fn read_socket(
    stream: &mut TcpStream,
    addr: &str,
    read_buf: &mut Vec<u8>,
    chunk: &mut [u8],
) -> Result<bool, String> {
    loop {
        match stream.read(chunk) {
            Ok(0) => return Ok(true),
            Ok(n) => read_buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{addr}: read failed: {e}")),
        }
    }
}

/// A produce answer as the client library would return it: a body status decodes the
/// acknowledgement, any other status is the broker's error message.
fn produce_result(header: FrameHeader, body: &[u8]) -> Result<ProduceResult, ClientError> {
    let status = Status::from_u16(header.status).ok_or_else(|| ClientError::Protocol {
        addr: String::new(),
        reason: format!("unknown status {}", header.status),
    })?;
    if header.opcode != Opcode::Produce as u16 {
        return Err(ClientError::Protocol {
            addr: String::new(),
            reason: format!("answer with opcode {} to a produce", header.opcode),
        });
    }
    if !status.has_body() {
        return Err(ClientError::Status {
            status,
            message: decode_error_message(body),
        });
    }
    let response = ProduceResponse::decode(body).map_err(|e| ClientError::Protocol {
        addr: String::new(),
        reason: format!("produce response: {e}"),
    })?;
    Ok(ProduceResult { status, response })
}

/// A consumer thread: it yields every queue's outcome.
pub type ConsumerLoopHandle = std::thread::JoinHandle<Result<Vec<ConsumerOutcome>, String>>;

/// One queue's long-polling connection on the consumer loop.
struct Puller {
    stream: TcpStream,
    addr: String,
    queue: u32,
    write_buf: Vec<u8>,
    written: usize,
    want_write: bool,
    read_buf: Vec<u8>,
    next_request_id: u64,
    /// When the pull in flight was sent; `None` once this queue is finished.
    sent_at: Option<Duration>,
    state: ConsumerState,
}

/// Starts one thread that long-polls every queue of the topic on its own connection (as the
/// thread driver's consumers do, one connection per queue), multiplexed with `epoll`.
pub fn run_consumers(
    topology: &Topology,
    workload: &Workload,
    shared: &std::sync::Arc<Shared>,
) -> Result<ConsumerLoopHandle, String> {
    let route = route(topology, &workload.topic)?;
    let epoll = Epoll::new()?;
    let mut pullers = Vec::new();
    for &(shard, queue) in &route.queues {
        let addr = route.endpoints[shard].clone();
        let stream = ringmq_client::scram::connect_plaintext(&addr)
            .map_err(|e| format!("consumer of queue {queue}: {}", e.for_user(&addr)))?;
        stream
            .set_nodelay(true)
            .and_then(|_| stream.set_nonblocking(true))
            .map_err(|e| format!("consumer of queue {queue}: configuring socket: {e}"))?;
        epoll.control(
            libc::EPOLL_CTL_ADD,
            stream.as_raw_fd(),
            pullers.len(),
            false,
            &addr,
        )?;
        pullers.push(Puller {
            stream,
            addr,
            queue,
            write_buf: Vec::new(),
            written: 0,
            want_write: false,
            read_buf: Vec::with_capacity(READ_CHUNK_BYTES),
            next_request_id: 1,
            sent_at: None,
            state: ConsumerState::new(workload, shared),
        });
    }
    let (workload, shared) = (workload.clone(), shared.clone());
    std::thread::Builder::new()
        .name("bench-consumers".into())
        .spawn(move || consume(&workload, &shared, &epoll, pullers))
        .map_err(|e| format!("starting consumer thread: {e}"))
}

fn consume(
    workload: &Workload,
    shared: &Shared,
    epoll: &Epoll,
    mut pullers: Vec<Puller>,
) -> Result<Vec<ConsumerOutcome>, String> {
    for (token, puller) in pullers.iter_mut().enumerate() {
        send_pull(workload, shared, epoll, puller, token)?;
    }
    let mut pull_loop = PullLoop {
        workload,
        shared,
        epoll,
        decoder: FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES),
        chunk: vec![0; READ_CHUNK_BYTES],
    };
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
    while pullers.iter().any(|p| p.sent_at.is_some()) {
        check_pull_stall(&pullers, shared.origin.elapsed())?;
        let ready = epoll.wait(&mut events, MAX_WAIT)?;
        for event in &events[..ready] {
            let token = event.u64 as usize;
            pull_loop.on_event(&mut pullers[token], token, event.events)?;
        }
    }
    Ok(pullers.into_iter().map(|p| p.state.outcome).collect())
}

/// A pull waits at most PULL_WAIT_MS at the broker; one unanswered for the client's read
/// timeout means the broker is stuck.
fn check_pull_stall(pullers: &[Puller], now: Duration) -> Result<(), String> {
    let stalled = pullers.iter().find(|p| {
        p.sent_at
            .is_some_and(|t| now.saturating_sub(t) >= DEFAULT_READ_TIMEOUT)
    });
    match stalled {
        Some(p) => Err(format!(
            "consumer of queue {}: no pull answer from {} within {} s",
            p.queue,
            p.addr,
            DEFAULT_READ_TIMEOUT.as_secs()
        )),
        None => Ok(()),
    }
}

/// What the consumer loop's events share.
struct PullLoop<'a> {
    workload: &'a Workload,
    shared: &'a Shared,
    epoll: &'a Epoll,
    decoder: FrameDecoder,
    /// The thread's read buffer ([`READ_CHUNK_BYTES`]).
    chunk: Vec<u8>,
}

impl PullLoop<'_> {
    /// One readiness event of `puller`'s connection: writes what is pending, takes every
    /// complete answer and sends the next pull unless the queue is finished.
    fn on_event(&mut self, puller: &mut Puller, token: usize, flags: u32) -> Result<(), String> {
        if flags & libc::EPOLLOUT as u32 != 0 {
            flush_socket(
                self.epoll,
                token,
                &mut puller.stream,
                &puller.addr,
                &mut puller.write_buf,
                &mut puller.written,
                &mut puller.want_write,
            )?;
        }
        if flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 == 0 {
            return Ok(());
        }
        let closed = read_socket(
            &mut puller.stream,
            &puller.addr,
            &mut puller.read_buf,
            &mut self.chunk,
        )?;
        let mut consumed = 0;
        let mut answered = false;
        while let Some(frame) = self
            .decoder
            .decode(&puller.read_buf[consumed..])
            .map_err(|e| format!("{}: bad frame from the broker: {e}", puller.addr))?
        {
            consumed += frame.wire_len();
            let (status, response) = pull_answer(frame.header, frame.body)
                .map_err(|e| format!("consumer of queue {}: {e}", puller.queue))?;
            let bodies = response.messages.iter().map(|m| m.body);
            let finished = puller
                .state
                .received(bodies, response.summary.next_offset, status);
            puller.sent_at = None;
            answered = !finished;
            if finished {
                // A finished queue's socket leaves the set, so its close cannot wake the
                // loop again and again.
                self.epoll.control(
                    libc::EPOLL_CTL_DEL,
                    puller.stream.as_raw_fd(),
                    token,
                    false,
                    &puller.addr,
                )?;
            }
        }
        puller.read_buf.drain(..consumed);
        if answered {
            send_pull(self.workload, self.shared, self.epoll, puller, token)?;
        } else if closed && puller.sent_at.is_some() {
            return Err(format!(
                "consumer of queue {}: {} closed the connection",
                puller.queue, puller.addr
            ));
        }
        Ok(())
    }
}

/// A pull answer: the messages with a body status, the broker's error message otherwise.
fn pull_answer(header: FrameHeader, body: &[u8]) -> Result<(Status, PullResponse<'_>), String> {
    match Status::from_u16(header.status) {
        Some(status) if status.has_body() => PullResponse::decode(body)
            .map(|r| (status, r))
            .map_err(|e| format!("pull response: {e}")),
        Some(status) => Err(format!("{status}: {}", decode_error_message(body))),
        None => Err(format!("unknown status {}", header.status)),
    }
}

fn send_pull(
    workload: &Workload,
    shared: &Shared,
    epoll: &Epoll,
    puller: &mut Puller,
    token: usize,
) -> Result<(), String> {
    puller.state.before_pull(shared);
    let request_id = puller.next_request_id;
    puller.next_request_id += 1;
    let start = begin_frame(
        &mut puller.write_buf,
        FrameHeader::request(Opcode::Pull, request_id),
    );
    PullRequest {
        topic: workload.topic.clone(),
        queue: puller.queue,
        offset: puller.state.offset,
        max_messages: workload::PULL_MAX_MESSAGES,
        max_bytes: workload::PULL_MAX_BYTES,
        max_wait_ms: workload::PULL_WAIT_MS,
    }
    .encode(&mut puller.write_buf);
    finish_frame(&mut puller.write_buf, start);
    puller.sent_at = Some(shared.origin.elapsed());
    flush_socket(
        epoll,
        token,
        &mut puller.stream,
        &puller.addr,
        &mut puller.write_buf,
        &mut puller.written,
        &mut puller.want_write,
    )
}
