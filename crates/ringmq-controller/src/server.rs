//! The controller process: one listener for peers and brokers, and one thread that owns the
//! [`Controller`] (Raft and the state machine are single-threaded by design).
//!
//! ```text
//!  accept ─▶ per connection: reader thread ──Event──▶ main loop (Controller, DiskStore)
//!                            writer thread ◀──frames──┘    │ tick every 100 ms
//!  per peer: sender thread ◀──── RaftMessage frames ───────┘
//! ```
//!
//! With a secret (`--secret-file`), every connection proves itself before anything else it
//! sends is read: `ControllerHello` (88) and `ControllerProof` (89), a mutual HMAC challenge
//! over both ends' fresh nonces ([`ringmq_protocol::auth::controller_server_proof`]). Until
//! then the connection's frames are capped at [`MAX_REQUEST_FRAME_BYTES`], its handshake at
//! [`HANDSHAKE_TIMEOUT`], and any other frame (a Raft message included, which so never reaches
//! raft-rs) is answered `NOT_AUTHENTICATED` and closes it. Peer senders run the opener's side
//! ([`ringmq_protocol::controller::authenticate`]) before their first Raft message.
//!
//! Raft messages (opcode 80) are one-way: a peer connection only ever carries requests from
//! the sender, and Raft resends what is lost, so a full peer queue drops (bounded by
//! [`PEER_QUEUE_MESSAGES`]) rather than blocks the main loop. Everything the main loop
//! must not wait on (sockets) has its own thread; the main loop blocks only on fsyncs of its
//! own store, which Raft requires before it answers.

use crate::core::{Controller, Reply};
use crate::node::{RaftNode, ELECTION_TICKS, TICK_MS};
use crate::state::{ControllerState, ElectionConfig};
use crate::store::DiskStore;
use ringmq_protocol::auth::{self, Secret};
use ringmq_protocol::controller::{
    forwarded_by_followers, ControllerChallenge, ControllerHello, ControllerOpcode,
    ControllerProof, RaftMessage, FLAG_FORWARDED,
};
use ringmq_protocol::frame::{encode_frame, FrameDecoder, FrameHeader};
use ringmq_protocol::Status;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The largest Raft frame a controller reads: a snapshot of the whole state, which the caps
/// in [`crate::core`] (groups, brokers per group, name lengths, history) keep near 32 MiB.
pub const MAX_FRAME_BYTES: usize = 64 << 20;
/// The largest frame of any other opcode (a broker's or an operator's request): the biggest,
/// a heartbeat, carries at most [`crate::core::MAX_SHARDS`] end offsets and a few names.
pub const MAX_REQUEST_FRAME_BYTES: usize = 64 << 10;
/// Replies queued for one connection's writer; past it the connection is closed (its client
/// does not read its answers).
pub const REPLY_QUEUE: usize = 256;
/// A reply not written within this is given up with its connection: a client that does not
/// read cannot hold a writer thread for ever.
const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Raft messages queued per peer before new ones are dropped (Raft resends): at one tick
/// (100 ms) that is far more than a healthy link ever holds.
pub const PEER_QUEUE_MESSAGES: usize = 1024;
/// Connect and write timeout to a peer: shorter than an election timeout, so a dead peer
/// costs its sender thread, not the group.
const PEER_IO_TIMEOUT: Duration = Duration::from_millis(500);
/// Connections served at once (each holds two threads): three to five peers and a few brokers
/// per group need far fewer; past it a connection is answered `SYSTEM_BUSY` and closed.
pub const MAX_CONNECTIONS: usize = 1024;
/// Requests and Raft messages waiting for the main loop; a full queue holds the connections'
/// readers (back-pressure on the senders) rather than grow without bound.
pub const EVENT_QUEUE: usize = 4096;
/// A connection silent this long is closed: peers send every tick (100 ms) and brokers
/// heartbeat every second, so only an abandoned connection is this quiet.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection that has not finished the handshake by then is closed: the two round trips
/// take milliseconds, so only a stalled or hostile opener is this slow, and it holds two
/// threads while it waits.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections still in the handshake (with a secret), at once: openers that prove nothing
/// get this few of the [`MAX_CONNECTIONS`] slots, so a flood of idle sockets cannot lock
/// peers and brokers out (their handshakes take milliseconds and free their slot at once).
pub const MAX_UNAUTHENTICATED_CONNECTIONS: usize = 64;
/// Of those, from one IP address: one host cannot take them all.
pub const MAX_UNAUTHENTICATED_PER_IP: usize = 16;
/// Connections from one IP address at once, authenticated or not (the name server's figure):
/// a host runs a few brokers and operators, each with a connection or two.
pub const MAX_CONNECTIONS_PER_IP: usize = 256;
/// Refused handshakes are logged at most this often (with the number not logged), so a peer
/// reconnecting in a loop with a wrong secret cannot fill the log.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// Broker requests a follower holds for forwarding to one leader; past it a request is
/// answered `NOT_LEADER` at once (the broker tries the leader itself, or another).
pub const FORWARD_QUEUE: usize = 64;
/// How long a follower waits for the leader's answer to a forwarded request: past the
/// leader's own read timeout (1 s), so a read the leader holds is answered, and short of a
/// lease, so a broker whose answer is lost still renews through another controller in time.
const FORWARD_TIMEOUT: Duration = Duration::from_millis(1_200);

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub id: u64,
    /// Every controller's `HOST:PORT` at the first start, this one's included.
    pub peers: BTreeMap<u64, String>,
    pub store: PathBuf,
    pub election: ElectionConfig,
    pub compact_threshold: u64,
    /// The controllers' shared secret (`--secret-file`): with it every connection, peers' and
    /// brokers' alike, authenticates first. `None`: the port is open (a warning at start).
    pub secret: Option<Secret>,
    /// `HOST:PORT` of a plain-HTTP `GET /metrics` endpoint (Prometheus text; see
    /// [`crate::status::metrics_text`]); `None`: no endpoint.
    pub metrics_listen: Option<String>,
}

/// Where a request's answer goes: its connection's writer, with the request's id and opcode.
struct Waiter {
    writer: SyncSender<Vec<u8>>,
    request_id: u64,
    opcode: u16,
}

enum Event {
    Request {
        opcode: ControllerOpcode,
        body: Vec<u8>,
        waiter: Waiter,
        /// A follower forwarded it ([`FLAG_FORWARDED`]): answered here, never forwarded on.
        forwarded: bool,
    },
    Raft(Vec<u8>),
    /// A `/metrics` scrape: the status document, sent back on the channel.
    Status(mpsc::Sender<serde_json::Value>),
}

/// Opens the store, binds the listener, prints the ready line and serves until killed.
pub fn run(config: ServerConfig) -> Result<(), String> {
    let id = config.id;
    let started = start(config)?;
    println!(
        "ringmq ready listen={} role=CONTROLLER id={id}",
        started.listen
    );
    let _ = io::stdout().flush();
    started.wait()
}

/// A controller serving on its own threads: what [`start`] returns.
pub struct Started {
    /// The address it listens on (its `--peers` entry, with a port 0 resolved).
    pub listen: std::net::SocketAddr,
    main_loop: thread::JoinHandle<Result<(), String>>,
}

impl Started {
    /// Blocks until the controller stops, which only a failure of its store (or a bug) does:
    /// the error says why.
    pub fn wait(self) -> Result<(), String> {
        match self.main_loop.join() {
            Ok(result) => result,
            Err(_) => Err("the controller's main loop panicked".into()),
        }
    }
}

/// Opens the store, binds the listener and starts serving on threads of its own, without
/// printing anything: `ringmq controller` ([`run`]) and a name server that embeds a
/// controller (`ringmq namesrv --controller-id ...`) both start one this way.
pub fn start(config: ServerConfig) -> Result<Started, String> {
    let listen = config
        .peers
        .get(&config.id)
        .ok_or_else(|| {
            format!(
                "--peers has no address for this controller's --id {}",
                config.id
            )
        })?
        .clone();
    let voters: Vec<u64> = config.peers.keys().copied().collect();
    let store = DiskStore::open(&config.store, &voters).map_err(|e| e.to_string())?;
    let recovery = store.recovery.clone();
    let (applied, data) = store.snapshot_data().map_err(|e| e.to_string())?;
    let state: ControllerState = if data.is_empty() {
        ControllerState::default()
    } else {
        serde_json::from_slice(&data)
            .map_err(|e| format!("{}: snapshot state: {e}", config.store.display()))?
    };
    let node = RaftNode::new(
        config.id,
        store,
        applied,
        (ELECTION_TICKS, 2 * ELECTION_TICKS),
    )?;
    let mut controller = Controller::new(
        node,
        state,
        applied,
        config.peers.clone(),
        config.election.clone(),
    );
    controller.compact_threshold = config.compact_threshold;
    let listener =
        TcpListener::bind(&listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        "controller {} recovered: {} log entries after snapshot {}, {} torn bytes cut",
        config.id,
        recovery.entries,
        recovery.snapshot_index,
        recovery.truncated_bytes
    );
    let secret = config.secret.clone().map(Arc::new);
    if secret.is_none() {
        tracing::warn!(
            "controller {} runs without --secret-file: anyone who reaches {bound} can send Raft messages, register brokers and change membership",
            config.id
        );
    }
    let (events, inbox) = mpsc::sync_channel(EVENT_QUEUE);
    if let Some(addr) = &config.metrics_listen {
        let metrics = TcpListener::bind(addr)
            .map_err(|e| format!("cannot listen on --metrics-listen {addr}: {e}"))?;
        let scrapes = events.clone();
        thread::Builder::new()
            .name("controller-metrics".into())
            .spawn(move || serve_metrics(metrics, scrapes))
            .map_err(|e| e.to_string())?;
    }
    let accept_secret = secret.clone();
    thread::Builder::new()
        .name("controller-accept".into())
        .spawn(move || accept_loop(listener, events, accept_secret))
        .map_err(|e| e.to_string())?;
    let main_loop = thread::Builder::new()
        .name("controller-main".into())
        .spawn(move || main_loop(controller, inbox, secret))
        .map_err(|e| e.to_string())?;
    Ok(Started {
        listen: bound,
        main_loop,
    })
}

fn main_loop(
    mut controller: Controller<RaftNode<DiskStore>, Waiter>,
    inbox: Receiver<Event>,
    secret: Option<Arc<Secret>>,
) -> Result<(), String> {
    let started = Instant::now();
    let now_ms = || started.elapsed().as_millis() as u64;
    let mut peers: BTreeMap<u64, (String, SyncSender<Vec<u8>>)> = BTreeMap::new();
    let mut forwarders = Forwarders {
        by_addr: HashMap::new(),
        secret: secret.clone(),
        id: controller.id(),
    };
    let mut next_tick = TICK_MS;
    loop {
        let wait = next_tick.saturating_sub(now_ms());
        let mut answered = Vec::new();
        match inbox.recv_timeout(Duration::from_millis(wait)) {
            Ok(event) => handle_event(
                &mut controller,
                &mut forwarders,
                event,
                now_ms(),
                &mut answered,
            ),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err("the listener stopped".into()),
        }
        // Take whatever else arrived before driving once: one fsync covers them all.
        while let Ok(event) = inbox.try_recv() {
            handle_event(
                &mut controller,
                &mut forwarders,
                event,
                now_ms(),
                &mut answered,
            );
        }
        if now_ms() >= next_tick {
            answered.extend(controller.tick(now_ms()));
            next_tick = now_ms() + TICK_MS;
        }
        let driven = controller
            .drive()
            .map_err(|e| format!("controller store failed, stopping: {e}"))?;
        answered.extend(driven.answered);
        for (to, bytes) in driven.messages {
            send_to_peer(&controller, &mut peers, to, bytes, &secret);
        }
        for (waiter, reply) in answered {
            answer(waiter, reply);
        }
    }
}

fn handle_event(
    controller: &mut Controller<RaftNode<DiskStore>, Waiter>,
    forwarders: &mut Forwarders,
    event: Event,
    now_ms: u64,
    answered: &mut Vec<(Waiter, Reply)>,
) {
    match event {
        Event::Status(reply) => {
            let _ = reply.send(controller.status_document(now_ms));
        }
        Event::Raft(body) => match RaftMessage::decode(&body) {
            Ok(message) => {
                if let Err(e) = controller.step(message.from, &message.message, now_ms) {
                    tracing::debug!("raft message from {} refused: {e}", message.from);
                }
            }
            Err(e) => tracing::warn!("undecodable raft message: {e}"),
        },
        Event::Request {
            opcode,
            body,
            waiter,
            forwarded,
        } => {
            let (body, waiter) = match controller.forward_target() {
                Some((leader, addr)) if !forwarded && forwarded_by_followers(opcode) => {
                    let job = Forward {
                        opcode,
                        body,
                        waiter,
                    };
                    match forwarders.forward(leader, &addr, job) {
                        Ok(()) => return,
                        // Its queue is full: NOT_LEADER names the leader, the broker goes there.
                        Err(job) => (job.body, job.waiter),
                    }
                }
                _ => (body, waiter),
            };
            if let Some(done) = controller.handle(opcode, &body, now_ms, waiter) {
                answered.push(done);
            }
        }
    }
}

/// Longest `/metrics` request head read; a scraper's is a few hundred bytes.
const MAX_HTTP_HEAD_BYTES: usize = 8192;
/// A scraper that sends nothing (or reads nothing) for this long is dropped.
const HTTP_IO_TIMEOUT: Duration = Duration::from_secs(2);

/// `--metrics-listen`: answers `GET /metrics` one connection at a time (scrapers are few and
/// each answer is built in microseconds) with the status document as Prometheus text.
fn serve_metrics(listener: TcpListener, events: SyncSender<Event>) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(HTTP_IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(HTTP_IO_TIMEOUT));
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() <= MAX_HTTP_HEAD_BYTES {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
        let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
        let mut parts = std::str::from_utf8(line).unwrap_or("").split_whitespace();
        let (status, body) = match (parts.next(), parts.next()) {
            (Some("GET"), Some("/metrics")) => {
                let (reply, document) = mpsc::channel();
                let answered = events
                    .send(Event::Status(reply))
                    .ok()
                    .and_then(|()| document.recv_timeout(HTTP_IO_TIMEOUT).ok());
                match answered {
                    Some(document) => ("200 OK", crate::status::metrics_text(&document)),
                    None => (
                        "503 Service Unavailable",
                        "the controller's main loop did not answer\n".to_string(),
                    ),
                }
            }
            (Some("GET"), _) => ("404 Not Found", "only /metrics is served\n".to_string()),
            _ => ("405 Method Not Allowed", "only GET is served\n".to_string()),
        };
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

/// A follower's forwarding of broker requests to its leader: one thread and one
/// authenticated connection per leader address, one request at a time (a broker sends a
/// heartbeat every 250 ms; a group's few brokers never queue long).
struct Forwarders {
    by_addr: HashMap<String, SyncSender<Forward>>,
    secret: Option<Arc<Secret>>,
    /// This controller's id, for the refusals it writes.
    id: u64,
}

struct Forward {
    opcode: ControllerOpcode,
    body: Vec<u8>,
    waiter: Waiter,
}

impl Forwarders {
    /// Queues the request for the leader at `addr`, or hands it back when it cannot.
    fn forward(&mut self, leader: u64, addr: &str, job: Forward) -> Result<(), Forward> {
        if !self.by_addr.contains_key(addr) {
            let (tx, rx) = mpsc::sync_channel(FORWARD_QUEUE);
            let (target, secret, id) = (addr.to_string(), self.secret.clone(), self.id);
            let spawned = thread::Builder::new()
                .name(format!("controller-forward-{leader}"))
                .spawn(move || forwarder(id, target, rx, secret));
            if spawned.is_err() {
                return Err(job);
            }
            self.by_addr.insert(addr.to_string(), tx);
        }
        match self.by_addr[addr].try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job)) => Err(job),
            Err(TrySendError::Disconnected(job)) => {
                self.by_addr.remove(addr);
                Err(job)
            }
        }
    }
}

/// Sends forwarded requests to the leader at `addr` and relays each answer, whatever its
/// status, to the broker that asked. A request the leader does not answer in time is
/// answered `NOT_LEADER` without a leader hint, so the broker's client moves on to the next
/// controller rather than back to this one's leader.
fn forwarder(id: u64, addr: String, jobs: Receiver<Forward>, secret: Option<Arc<Secret>>) {
    let mut stream: Option<TcpStream> = None;
    let mut next_request_id: u64 = 1 << 32;
    while let Ok(job) = jobs.recv() {
        next_request_id += 1;
        // A kept connection the leader closed meanwhile (idle, or restarted) fails once and
        // is replaced: every forwarded request is idempotent or fenced, so a resend is safe.
        let mut result = Err((false, String::new()));
        for _ in 0..2 {
            let reused = stream.is_some();
            result = (|| {
                if stream.is_none() {
                    let s = connect(&addr, secret.as_deref())
                        .ok_or_else(|| (false, "cannot connect".to_string()))?;
                    s.set_read_timeout(Some(FORWARD_TIMEOUT))
                        .map_err(|e| (false, e.to_string()))?;
                    stream = Some(s);
                }
                let s = stream.as_mut().expect("connected above");
                exchange_forwarded(s, next_request_id, job.opcode, &job.body)
            })();
            let closed = matches!(result, Err((true, _)));
            if result.is_ok() {
                break;
            }
            stream = None;
            if !(reused && closed) {
                break;
            }
            next_request_id += 1;
        }
        let reply = match result {
            Ok(reply) => reply,
            Err((_, e)) => {
                Reply::error(
                    Status::NotLeader,
                    format!("controller {id} is not the leader and could not forward to the leader at {addr}: {e}"),
                )
            }
        };
        answer(job.waiter, reply);
    }
}

/// One forwarded request and the leader's answer to it; an error says whether the
/// connection was found closed (worth one more try on a fresh one) and why.
fn exchange_forwarded(
    stream: &mut TcpStream,
    request_id: u64,
    opcode: ControllerOpcode,
    body: &[u8],
) -> Result<Reply, (bool, String)> {
    let mut frame = Vec::new();
    encode_frame(
        &mut frame,
        FrameHeader {
            flags: FLAG_FORWARDED,
            opcode: opcode as u16,
            status: 0,
            request_id,
        },
        body,
    );
    stream
        .write_all(&frame)
        .map_err(|e| (true, e.to_string()))?;
    let decoder = FrameDecoder::new(MAX_REQUEST_FRAME_BYTES);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(frame) = decoder.decode(&buf).map_err(|e| (false, e.to_string()))? {
            if !frame.header.is_response() || frame.header.request_id != request_id {
                return Err((
                    false,
                    format!(
                        "the leader answered request {} where {request_id} was asked",
                        frame.header.request_id
                    ),
                ));
            }
            let status = Status::from_u16(frame.header.status)
                .ok_or_else(|| (false, format!("unknown status {}", frame.header.status)))?;
            return Ok(Reply {
                status,
                body: frame.body.to_vec(),
            });
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err((true, "the leader closed the connection".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err((
                    false,
                    format!("no answer within {} ms", FORWARD_TIMEOUT.as_millis()),
                ))
            }
            Err(e) => return Err((true, e.to_string())),
        }
    }
}

fn answer(waiter: Waiter, reply: Reply) {
    let mut frame = Vec::new();
    encode_frame(
        &mut frame,
        FrameHeader::response(waiter.opcode, reply.status, waiter.request_id),
        &reply.body,
    );
    // Never block the main loop on a client: a full queue means it does not read, and its
    // writer closes the connection when its write times out.
    let _ = waiter.writer.try_send(frame);
}

fn send_to_peer(
    controller: &Controller<RaftNode<DiskStore>, Waiter>,
    peers: &mut BTreeMap<u64, (String, SyncSender<Vec<u8>>)>,
    to: u64,
    message: Vec<u8>,
    secret: &Option<Arc<Secret>>,
) {
    let Some(addr) = controller.peer_addr(to).map(str::to_string) else {
        tracing::debug!("no address for controller {to}; message dropped");
        return;
    };
    if peers.get(&to).is_none_or(|(known, _)| *known != addr) {
        let (tx, rx) = mpsc::sync_channel(PEER_QUEUE_MESSAGES);
        let target = addr.clone();
        let secret = secret.clone();
        let _ = thread::Builder::new()
            .name(format!("controller-peer-{to}"))
            .spawn(move || peer_sender(target, rx, secret));
        peers.insert(to, (addr, tx));
    }
    let mut body = Vec::new();
    RaftMessage {
        from: controller.id(),
        message,
    }
    .encode(&mut body);
    let mut frame = Vec::new();
    encode_frame(
        &mut frame,
        FrameHeader {
            flags: 0,
            opcode: ControllerOpcode::RaftMessage as u16,
            status: 0,
            request_id: 0,
        },
        &body,
    );
    match peers[&to].1.try_send(frame) {
        Ok(()) | Err(TrySendError::Full(_)) => {}
        Err(TrySendError::Disconnected(_)) => {
            peers.remove(&to);
        }
    }
}

/// Sends frames to one peer, reconnecting as needed; ends when its queue is dropped (the
/// peer's address changed or it left).
fn peer_sender(addr: String, frames: Receiver<Vec<u8>>, secret: Option<Arc<Secret>>) {
    let mut stream: Option<TcpStream> = None;
    while let Ok(frame) = frames.recv() {
        if stream.is_none() {
            stream = connect(&addr, secret.as_deref());
        }
        let Some(s) = stream.as_mut() else {
            continue; // peer down: drop, Raft resends
        };
        if s.write_all(&frame).is_err() {
            stream = None;
        }
    }
}

/// A connection to a peer, authenticated when this controller has a secret (a peer that
/// fails the handshake is treated as down: its messages are dropped, Raft resends).
fn connect(addr: &str, secret: Option<&Secret>) -> Option<TcpStream> {
    use std::net::ToSocketAddrs;
    let target = addr.to_socket_addrs().ok()?.next()?;
    let mut stream = TcpStream::connect_timeout(&target, PEER_IO_TIMEOUT).ok()?;
    stream.set_write_timeout(Some(PEER_IO_TIMEOUT)).ok()?;
    stream.set_nodelay(true).ok()?;
    if let Some(secret) = secret {
        stream.set_read_timeout(Some(PEER_IO_TIMEOUT)).ok()?;
        if let Err(e) = ringmq_protocol::controller::authenticate(&mut stream, secret, 1) {
            use ringmq_protocol::controller::HandshakeError;
            log_refusal(&match e {
                // Its connection limits are full: not a secret that differs.
                HandshakeError::Refused {
                    status: Status::SystemBusy,
                    message,
                } => format!("peer {addr} is busy, retrying: {}", quoted(&message)),
                HandshakeError::Refused { status, message } => format!(
                    "peer {addr} did not authenticate: {status}: {}",
                    quoted(&message)
                ),
                other => format!("peer {addr} did not authenticate: {other}"),
            });
            return None;
        }
    }
    Some(stream)
}

/// Longest piece of a peer's refusal text that goes into the log.
const QUOTED_CHARS: usize = 200;

/// A peer's text for the log: at most [`QUOTED_CHARS`] characters, control characters escaped
/// (a hostile peer cannot forge log lines or fill the log).
fn quoted(text: &str) -> String {
    let mut out: String = text.chars().take(QUOTED_CHARS).collect::<String>();
    if text.chars().count() > QUOTED_CHARS {
        out.push_str("...");
    }
    format!("{out:?}")
}

/// Logs a refused handshake, at most once per [`REFUSAL_LOG_EVERY`] for the process. The
/// reason names what failed, never a secret or a proof.
fn log_refusal(reason: &str) {
    static LAST: std::sync::Mutex<(Option<Instant>, u64)> = std::sync::Mutex::new((None, 0));
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    if last
        .0
        .is_some_and(|at| now.saturating_duration_since(at) < REFUSAL_LOG_EVERY)
    {
        last.1 += 1;
        return;
    }
    let unlogged = std::mem::take(&mut last.1);
    last.0 = Some(now);
    tracing::warn!(
        unlogged_refusals = unlogged,
        "controller handshake refused: {reason}"
    );
}

/// Counts of the connections served, in all, per IP address, and still in the handshake.
#[derive(Default)]
struct Admission {
    open: usize,
    unauthenticated: usize,
    /// Per address: (open, unauthenticated); an address leaves when both reach zero, so the
    /// map holds at most [`MAX_CONNECTIONS`] entries.
    per_ip: HashMap<IpAddr, (usize, usize)>,
}

/// A connection's place in the [`Admission`] counts, given back when it drops.
struct Ticket {
    admission: Arc<Mutex<Admission>>,
    ip: IpAddr,
    unauthenticated: bool,
}

impl Ticket {
    /// Takes a place for a connection from `ip` (`unauthenticated`: it must pass the handshake
    /// first), or says which limit is full.
    fn take(
        admission: &Arc<Mutex<Admission>>,
        ip: IpAddr,
        unauthenticated: bool,
    ) -> Result<Ticket, String> {
        let mut counts = admission.lock().unwrap_or_else(|e| e.into_inner());
        let (ip_open, ip_unauthenticated) = counts.per_ip.get(&ip).copied().unwrap_or((0, 0));
        if counts.open >= MAX_CONNECTIONS {
            return Err(format!(
                "the controller serves at most {MAX_CONNECTIONS} connections at once"
            ));
        }
        if ip_open >= MAX_CONNECTIONS_PER_IP {
            return Err(format!(
                "the controller serves at most {MAX_CONNECTIONS_PER_IP} connections from one address"
            ));
        }
        if unauthenticated
            && (counts.unauthenticated >= MAX_UNAUTHENTICATED_CONNECTIONS
                || ip_unauthenticated >= MAX_UNAUTHENTICATED_PER_IP)
        {
            return Err(format!(
                "the controller has {MAX_UNAUTHENTICATED_CONNECTIONS} handshakes pending at most ({MAX_UNAUTHENTICATED_PER_IP} from one address)"
            ));
        }
        counts.open += 1;
        counts.unauthenticated += usize::from(unauthenticated);
        counts.per_ip.insert(
            ip,
            (
                ip_open + 1,
                ip_unauthenticated + usize::from(unauthenticated),
            ),
        );
        Ok(Ticket {
            admission: admission.clone(),
            ip,
            unauthenticated,
        })
    }

    /// The handshake passed: the connection no longer counts as unauthenticated.
    fn authenticated(&mut self) {
        if std::mem::take(&mut self.unauthenticated) {
            let mut counts = self.admission.lock().unwrap_or_else(|e| e.into_inner());
            counts.unauthenticated -= 1;
            if let Some(entry) = counts.per_ip.get_mut(&self.ip) {
                entry.1 -= 1;
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.authenticated();
        let mut counts = self.admission.lock().unwrap_or_else(|e| e.into_inner());
        counts.open -= 1;
        let gone = counts.per_ip.get_mut(&self.ip).is_some_and(|entry| {
            entry.0 -= 1;
            *entry == (0, 0)
        });
        if gone {
            counts.per_ip.remove(&self.ip);
        }
    }
}

fn accept_loop(listener: TcpListener, events: SyncSender<Event>, secret: Option<Arc<Secret>>) {
    let admission = Arc::new(Mutex::new(Admission::default()));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        let ticket = match Ticket::take(&admission, peer.ip(), secret.is_some()) {
            Ok(ticket) => ticket,
            Err(message) => {
                let mut frame = Vec::new();
                encode_frame(
                    &mut frame,
                    FrameHeader::response(0, Status::SystemBusy, 0),
                    message.as_bytes(),
                );
                let _ = stream.set_write_timeout(Some(PEER_IO_TIMEOUT));
                let _ = stream.write_all(&frame);
                continue;
            }
        };
        let events = events.clone();
        let secret = secret.clone();
        let spawned = thread::Builder::new()
            .name("controller-conn".into())
            .spawn(move || serve_connection(stream, events, secret.as_deref(), ticket));
        if spawned.is_err() {
            tracing::warn!("cannot start a connection thread; connection dropped");
        }
    }
}

/// Where a connection stands in the handshake (only with a secret; without one every
/// connection starts `Open`).
enum Handshake {
    /// Nothing but a `ControllerHello` is taken.
    AwaitHello,
    /// The challenge was sent; nothing but the opener's `ControllerProof` is taken.
    AwaitProof {
        client_nonce: Vec<u8>,
        server_nonce: [u8; auth::NONCE_BYTES],
    },
    /// Authenticated (or no secret): requests and Raft messages are served.
    Open,
}

/// What the handshake makes of one frame.
enum Verdict {
    /// Served as before: the connection is open.
    Serve,
    /// A handshake step, answered; the connection goes on.
    Answered,
    /// Refused and answered; the connection closes.
    Close,
}

fn reply(writer: &SyncSender<Vec<u8>>, header: &FrameHeader, status: Status, body: &[u8]) {
    let mut frame = Vec::new();
    encode_frame(
        &mut frame,
        FrameHeader::response(header.opcode, status, header.request_id),
        body,
    );
    let _ = writer.send(frame);
}

/// One frame through the handshake: a hello is challenged, a proof checked, anything else
/// before both is refused.
fn handshake_step(
    state: &mut Handshake,
    secret: Option<&Secret>,
    header: &FrameHeader,
    body: &[u8],
    writer: &SyncSender<Vec<u8>>,
    peer: &str,
) -> Verdict {
    let hello = header.opcode == ControllerOpcode::ControllerHello as u16;
    let proof = header.opcode == ControllerOpcode::ControllerProof as u16;
    let Some(secret) = secret else {
        if hello || proof {
            reply(writer, header, Status::BadRequest, b"this controller runs without --secret-file: connect without a controller secret, or give the controller the same secret");
            return Verdict::Close;
        }
        return Verdict::Serve;
    };
    let refuse = |state: &mut Handshake, message: &str| {
        log_refusal(&format!("{peer}: {message}"));
        reply(writer, header, Status::NotAuthenticated, message.as_bytes());
        *state = Handshake::AwaitHello;
        Verdict::Close
    };
    match std::mem::replace(state, Handshake::AwaitHello) {
        Handshake::Open if hello || proof => refuse(state, "this connection is already authenticated"),
        Handshake::Open => {
            *state = Handshake::Open;
            Verdict::Serve
        }
        Handshake::AwaitHello if hello => {
            let Ok(request) = ringmq_protocol::controller::decode_request::<ControllerHello>(body)
            else {
                return refuse(state, "undecodable ControllerHello");
            };
            if request.nonce.len() != auth::NONCE_BYTES {
                return refuse(state, "ControllerHello: the nonce must be 32 bytes");
            }
            let Ok(server_nonce) = auth::fresh_nonce() else {
                return refuse(state, "no random nonce available on the controller");
            };
            let mut answer = Vec::new();
            ControllerChallenge {
                nonce: server_nonce.to_vec(),
                proof: auth::controller_server_proof(secret, &request.nonce, &server_nonce)
                    .to_vec(),
            }
            .encode(&mut answer);
            reply(writer, header, Status::Ok, &answer);
            *state = Handshake::AwaitProof {
                client_nonce: request.nonce,
                server_nonce,
            };
            Verdict::Answered
        }
        Handshake::AwaitProof {
            client_nonce,
            server_nonce,
        } if proof => {
            let proved = ringmq_protocol::controller::decode_request::<ControllerProof>(body)
                .is_ok_and(|p| {
                    auth::verify_controller_client(secret, &client_nonce, &server_nonce, &p.proof)
                });
            if !proved {
                return refuse(state, "the proof does not match: this peer's controller secret (--secret-file, controller_secret_file) differs from this controller's");
            }
            reply(writer, header, Status::Ok, &[]);
            *state = Handshake::Open;
            Verdict::Answered
        }
        Handshake::AwaitHello | Handshake::AwaitProof { .. } => refuse(
            state,
            "this controller requires authentication first: give the client the controllers' secret (--secret-file, or controller_secret_file on a broker)",
        ),
    }
}

/// Reads frames from one connection until it closes; a bad frame is answered and closes it.
fn serve_connection(
    mut stream: TcpStream,
    events: SyncSender<Event>,
    secret: Option<&Secret>,
    mut ticket: Ticket,
) {
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "unknown peer".to_string(), |a| a.to_string());
    let mut state = match secret {
        Some(_) => Handshake::AwaitHello,
        None => Handshake::Open,
    };
    let opened = Instant::now();
    let handshake_deadline = opened + HANDSHAKE_TIMEOUT;
    let _ = stream.set_read_timeout(Some(if secret.is_some() {
        HANDSHAKE_TIMEOUT
    } else {
        IDLE_TIMEOUT
    }));
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let _ = write_half.set_write_timeout(Some(REPLY_WRITE_TIMEOUT));
    let (writer, frames) = mpsc::sync_channel::<Vec<u8>>(REPLY_QUEUE);
    let _ = thread::Builder::new()
        .name("controller-conn-writer".into())
        .spawn(move || {
            let mut out = write_half;
            while let Ok(frame) = frames.recv() {
                if out.write_all(&frame).is_err() {
                    // Timed out or gone: close both halves, so the reader stops too.
                    let _ = out.shutdown(std::net::Shutdown::Both);
                    break;
                }
            }
        });
    // Raft frames may be large (a snapshot); everything else is small, and is refused
    // FRAME_TOO_LARGE as soon as its header says otherwise. Before the handshake every frame
    // is small: an unauthenticated opener cannot make this thread hold 64 MiB.
    let raft_decoder = FrameDecoder::new(MAX_FRAME_BYTES);
    let request_decoder = FrameDecoder::new(MAX_REQUEST_FRAME_BYTES);
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        loop {
            let is_raft = buf.len() >= 10
                && u16::from_le_bytes([buf[8], buf[9]]) == ControllerOpcode::RaftMessage as u16;
            let open = matches!(state, Handshake::Open);
            let decoder = if open && (is_raft || buf.len() < 10) {
                &raft_decoder
            } else {
                &request_decoder
            };
            let (header, body, used) = match decoder.decode(&buf) {
                Ok(Some(frame)) => (frame.header, frame.body.to_vec(), frame.wire_len()),
                Ok(None) => break,
                Err(e) => {
                    let mut frame = Vec::new();
                    encode_frame(
                        &mut frame,
                        FrameHeader::response(0, e.status(), e.request_id()),
                        e.to_string().as_bytes(),
                    );
                    let _ = writer.send(frame);
                    return;
                }
            };
            buf.drain(..used);
            // Sizes only: a body may be a proof, which is not for the log.
            tracing::trace!(%peer, opcode = header.opcode, bytes = body.len(), "controller frame");
            match handshake_step(&mut state, secret, &header, &body, &writer, &peer) {
                Verdict::Serve => {}
                Verdict::Answered => {
                    if matches!(state, Handshake::Open) {
                        ticket.authenticated();
                        let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
                    }
                    continue;
                }
                Verdict::Close => return,
            }
            let Some(opcode) = ControllerOpcode::from_u16(header.opcode) else {
                let message = format!(
                    "opcode {} is not a controller request (controllers serve opcodes 80-99)",
                    header.opcode
                );
                reply(&writer, &header, Status::UnknownOpcode, message.as_bytes());
                continue;
            };
            let event = if opcode == ControllerOpcode::RaftMessage {
                Event::Raft(body)
            } else {
                Event::Request {
                    opcode,
                    body,
                    waiter: Waiter {
                        writer: writer.clone(),
                        request_id: header.request_id,
                        opcode: header.opcode,
                    },
                    forwarded: header.flags & FLAG_FORWARDED != 0,
                }
            };
            if events.send(event).is_err() {
                return;
            }
        }
        if !matches!(state, Handshake::Open) {
            let left = handshake_deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log_refusal(&format!(
                    "{peer}: no handshake within {} ms",
                    HANDSHAKE_TIMEOUT.as_millis()
                ));
                return;
            }
            // Each read waits only for the time the handshake has left.
            let _ = stream.set_read_timeout(Some(left));
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Parses `ID=HOST:PORT,...`.
pub fn parse_peers(list: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut peers = BTreeMap::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, addr) = parse_peer(entry)?;
        if peers.insert(id, addr).is_some() {
            return Err(format!("controller id {id} is listed twice in --peers"));
        }
    }
    if peers.is_empty() {
        return Err("--peers lists no controller (expected ID=HOST:PORT,...)".into());
    }
    Ok(peers)
}

/// Parses one `ID=HOST:PORT`.
pub fn parse_peer(entry: &str) -> Result<(u64, String), String> {
    let (id, addr) = entry
        .split_once('=')
        .ok_or_else(|| format!("{entry:?} is not ID=HOST:PORT"))?;
    let id: u64 = id
        .trim()
        .parse()
        .ok()
        .filter(|id| *id != 0)
        .ok_or_else(|| format!("{entry:?}: the id must be a number above 0"))?;
    let addr = addr.trim();
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok((id, addr.to_string()))
        }
        _ => Err(format!("{entry:?}: {addr:?} is not HOST:PORT")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Openers that never finish the handshake get a small share of the slots, and one host a
    /// share of that; an authenticated connection gives its handshake slot back.
    #[test]
    fn unauthenticated_connections_have_caps_of_their_own() {
        let admission = Arc::new(Mutex::new(Admission::default()));
        let flooder: IpAddr = "10.0.0.9".parse().unwrap();
        let mut held: Vec<Ticket> = (0..MAX_UNAUTHENTICATED_PER_IP)
            .map(|_| Ticket::take(&admission, flooder, true).unwrap())
            .collect();
        assert!(Ticket::take(&admission, flooder, true).is_err());
        // Another host still gets in, and so does a connection needing no handshake.
        assert!(Ticket::take(&admission, "10.0.0.1".parse().unwrap(), true).is_ok());
        held.push(Ticket::take(&admission, flooder, false).unwrap());
        held[0].authenticated();
        held.push(Ticket::take(&admission, flooder, true).unwrap());
        for host in 0..MAX_UNAUTHENTICATED_CONNECTIONS {
            let ip = IpAddr::from([10, 1, (host / 200) as u8, (host % 200) as u8]);
            if let Ok(ticket) = Ticket::take(&admission, ip, true) {
                held.push(ticket);
            }
        }
        let counts = admission.lock().unwrap().unauthenticated;
        assert_eq!(counts, MAX_UNAUTHENTICATED_CONNECTIONS);
        drop(held);
        let counts = admission.lock().unwrap();
        assert_eq!((counts.open, counts.unauthenticated), (0, 0));
        assert!(counts.per_ip.is_empty());
    }

    #[test]
    fn a_peer_s_refusal_text_is_escaped_and_capped() {
        assert_eq!(quoted("busy\nfake line"), "\"busy\\nfake line\"");
        let long = "x".repeat(10_000);
        assert!(quoted(&long).len() < QUOTED_CHARS + 10);
    }

    /// Only a Raft frame may be large: a request's header claiming more than
    /// MAX_REQUEST_FRAME_BYTES is refused at once; a Raft one of that size is waited for.
    #[test]
    fn request_frames_are_capped_far_below_raft_frames() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (events, _inbox) = mpsc::sync_channel(4);
        let admission = Arc::new(Mutex::new(Admission::default()));
        thread::spawn(move || {
            for stream in listener.incoming().take(2) {
                let events = events.clone();
                let stream = stream.unwrap();
                let ticket = Ticket::take(&admission, stream.peer_addr().unwrap().ip(), false);
                let ticket = ticket.unwrap();
                thread::spawn(move || serve_connection(stream, events, None, ticket));
            }
        });
        let header = |opcode: ControllerOpcode| {
            let mut frame = Vec::new();
            let body = vec![0u8; MAX_REQUEST_FRAME_BYTES];
            encode_frame(
                &mut frame,
                FrameHeader {
                    flags: 0,
                    opcode: opcode as u16,
                    status: 0,
                    request_id: 5,
                },
                &body,
            );
            frame.truncate(ringmq_protocol::frame::FRAME_HEADER_BYTES);
            frame
        };
        let mut broker = TcpStream::connect(addr).unwrap();
        broker
            .write_all(&header(ControllerOpcode::BrokerHeartbeat))
            .unwrap();
        let mut reply = Vec::new();
        broker.read_to_end(&mut reply).unwrap();
        let frame = FrameDecoder::new(MAX_REQUEST_FRAME_BYTES)
            .decode(&reply)
            .unwrap()
            .unwrap();
        assert_eq!(frame.header.status, Status::FrameTooLarge as u16);

        let mut peer = TcpStream::connect(addr).unwrap();
        peer.write_all(&header(ControllerOpcode::RaftMessage))
            .unwrap();
        peer.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut byte = [0u8; 1];
        let waited = peer.read(&mut byte);
        assert!(
            matches!(&waited, Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut),
            "the Raft frame's body is awaited, not refused: {waited:?}"
        );
    }

    #[test]
    fn peer_lists_parse_and_bad_entries_are_named() {
        let peers = parse_peers("1=127.0.0.1:9001, 2=127.0.0.1:9002,3=h:9003").unwrap();
        assert_eq!(peers.len(), 3);
        assert_eq!(peers[&2], "127.0.0.1:9002");
        for bad in [
            "",
            "1=127.0.0.1:9001,1=h:2",
            "0=h:1",
            "x=h:1",
            "1=h",
            "1=:5",
            "1",
        ] {
            assert!(parse_peers(bad).is_err(), "{bad}");
        }
    }
}
