//! The controller process: one listener for peers and brokers, and one thread that owns the
//! [`Controller`] (Raft and the state machine are single-threaded by design).
//!
//! ```text
//!  accept ─▶ per connection: reader thread ──Event──▶ main loop (Controller, DiskStore)
//!                            writer thread ◀──frames──┘    │ tick every 100 ms
//!  per peer: sender thread ◀──── RaftMessage frames ───────┘
//! ```
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
use ringmq_protocol::controller::{ControllerOpcode, RaftMessage};
use ringmq_protocol::frame::{encode_frame, FrameDecoder, FrameHeader};
use ringmq_protocol::Status;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
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

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub id: u64,
    /// Every controller's `HOST:PORT` at the first start, this one's included.
    pub peers: BTreeMap<u64, String>,
    pub store: PathBuf,
    pub election: ElectionConfig,
    pub compact_threshold: u64,
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
    },
    Raft(Vec<u8>),
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
    let (events, inbox) = mpsc::sync_channel(EVENT_QUEUE);
    thread::Builder::new()
        .name("controller-accept".into())
        .spawn(move || accept_loop(listener, events))
        .map_err(|e| e.to_string())?;
    let main_loop = thread::Builder::new()
        .name("controller-main".into())
        .spawn(move || main_loop(controller, inbox))
        .map_err(|e| e.to_string())?;
    Ok(Started {
        listen: bound,
        main_loop,
    })
}

fn main_loop(
    mut controller: Controller<RaftNode<DiskStore>, Waiter>,
    inbox: Receiver<Event>,
) -> Result<(), String> {
    let started = Instant::now();
    let now_ms = || started.elapsed().as_millis() as u64;
    let mut peers: BTreeMap<u64, (String, SyncSender<Vec<u8>>)> = BTreeMap::new();
    let mut next_tick = TICK_MS;
    loop {
        let wait = next_tick.saturating_sub(now_ms());
        let mut answered = Vec::new();
        match inbox.recv_timeout(Duration::from_millis(wait)) {
            Ok(event) => handle_event(&mut controller, event, now_ms(), &mut answered),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err("the listener stopped".into()),
        }
        // Take whatever else arrived before driving once: one fsync covers them all.
        while let Ok(event) = inbox.try_recv() {
            handle_event(&mut controller, event, now_ms(), &mut answered);
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
            send_to_peer(&controller, &mut peers, to, bytes);
        }
        for (waiter, reply) in answered {
            answer(waiter, reply);
        }
    }
}

fn handle_event(
    controller: &mut Controller<RaftNode<DiskStore>, Waiter>,
    event: Event,
    now_ms: u64,
    answered: &mut Vec<(Waiter, Reply)>,
) {
    match event {
        Event::Raft(body) => match RaftMessage::decode(&body) {
            Ok(message) => {
                if let Err(e) = controller.step(message.from, &message.message) {
                    tracing::debug!("raft message from {} refused: {e}", message.from);
                }
            }
            Err(e) => tracing::warn!("undecodable raft message: {e}"),
        },
        Event::Request {
            opcode,
            body,
            waiter,
        } => {
            if let Some(done) = controller.handle(opcode, &body, now_ms, waiter) {
                answered.push(done);
            }
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
) {
    let Some(addr) = controller.peer_addr(to).map(str::to_string) else {
        tracing::debug!("no address for controller {to}; message dropped");
        return;
    };
    if peers.get(&to).is_none_or(|(known, _)| *known != addr) {
        let (tx, rx) = mpsc::sync_channel(PEER_QUEUE_MESSAGES);
        let target = addr.clone();
        let _ = thread::Builder::new()
            .name(format!("controller-peer-{to}"))
            .spawn(move || peer_sender(target, rx));
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
fn peer_sender(addr: String, frames: Receiver<Vec<u8>>) {
    let mut stream: Option<TcpStream> = None;
    while let Ok(frame) = frames.recv() {
        if stream.is_none() {
            stream = connect(&addr);
        }
        let Some(s) = stream.as_mut() else {
            continue; // peer down: drop, Raft resends
        };
        if s.write_all(&frame).is_err() {
            stream = None;
        }
    }
}

fn connect(addr: &str) -> Option<TcpStream> {
    use std::net::ToSocketAddrs;
    let target = addr.to_socket_addrs().ok()?.next()?;
    let stream = TcpStream::connect_timeout(&target, PEER_IO_TIMEOUT).ok()?;
    stream.set_write_timeout(Some(PEER_IO_TIMEOUT)).ok()?;
    stream.set_nodelay(true).ok()?;
    Some(stream)
}

fn accept_loop(listener: TcpListener, events: SyncSender<Event>) {
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            let mut frame = Vec::new();
            let message =
                format!("the controller serves at most {MAX_CONNECTIONS} connections at once");
            encode_frame(
                &mut frame,
                FrameHeader::response(0, Status::SystemBusy, 0),
                message.as_bytes(),
            );
            let _ = stream.write_all(&frame);
            continue;
        }
        let events = events.clone();
        let count = open.clone();
        let spawned = thread::Builder::new()
            .name("controller-conn".into())
            .spawn(move || {
                serve_connection(stream, events);
                count.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            open.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("cannot start a connection thread; connection dropped");
        }
    }
}

/// Reads frames from one connection until it closes; a bad frame is answered and closes it.
fn serve_connection(mut stream: TcpStream, events: SyncSender<Event>) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
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
    // FRAME_TOO_LARGE as soon as its header says otherwise.
    let raft_decoder = FrameDecoder::new(MAX_FRAME_BYTES);
    let request_decoder = FrameDecoder::new(MAX_REQUEST_FRAME_BYTES);
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        loop {
            let is_raft = buf.len() >= 10
                && u16::from_le_bytes([buf[8], buf[9]]) == ControllerOpcode::RaftMessage as u16;
            let decoder = if is_raft || buf.len() < 10 {
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
            let Some(opcode) = ControllerOpcode::from_u16(header.opcode) else {
                let mut frame = Vec::new();
                let message = format!(
                    "opcode {} is not a controller request (controllers serve opcodes 80-99)",
                    header.opcode
                );
                encode_frame(
                    &mut frame,
                    FrameHeader::response(header.opcode, Status::UnknownOpcode, header.request_id),
                    message.as_bytes(),
                );
                let _ = writer.send(frame);
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
                }
            };
            if events.send(event).is_err() {
                return;
            }
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

    /// Only a Raft frame may be large: a request's header claiming more than
    /// MAX_REQUEST_FRAME_BYTES is refused at once; a Raft one of that size is waited for.
    #[test]
    fn request_frames_are_capped_far_below_raft_frames() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (events, _inbox) = mpsc::sync_channel(4);
        thread::spawn(move || {
            for stream in listener.incoming().take(2) {
                let events = events.clone();
                let stream = stream.unwrap();
                thread::spawn(move || serve_connection(stream, events));
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
