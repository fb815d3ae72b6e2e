//! The name server's network side: one glommio executor (not pinned, parking when idle: the
//! name server shares the machine's cores with brokers and is idle almost always) that accepts
//! connections and serves each one as its own task.
//!
//! Each connection reads frames with the protocol's [`FrameDecoder`] and answers every complete
//! frame in the buffer, in order, with one write (so pipelined requests cost one write per
//! burst). Registry calls are synchronous and short, so no request waits on another
//! connection's. Framing follows the broker's rules (`docs/protocol.md`, "Bad frames"): a frame
//! that cannot be trusted (bad magic, bad crc, oversized, unknown version) and an opcode the name
//! server does not serve are answered with their error and close that connection only; a body
//! that does not decode is answered `BAD_REQUEST` and the connection stays open.
//!
//! Bounds, each for a reason: [`MAX_CONNECTIONS`] (a connection over it is answered
//! `SYSTEM_BUSY` and closed), a frame limit (`max_frame_bytes`, the broker's default), and
//! [`READ_BUFFER_BUDGET_BYTES`] shared by every connection's read buffer beyond its base size,
//! so many large frames at once cannot exhaust memory. A frame started and not complete within
//! `request_read_timeout` is answered `BAD_REQUEST` and closes the connection; a connection
//! silent for `idle_timeout` is closed; a peer that does not read its answers for
//! `write_timeout` is dropped.

use crate::registry::{Registry, RegistryError};
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::timer::sleep;
use glommio::{spawn_local, LocalExecutorBuilder, Placement};
use ringmq_protocol::frame::{encode_frame, FrameDecoder, FrameHeader};
use ringmq_protocol::namesrv::{BrokerRegister, BrokerUnregister, RouteQuery};
use ringmq_protocol::{Opcode, Status};
use std::cell::{Cell, RefCell};
use std::io::Write;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Where `ringmq namesrv` listens unless told otherwise (RocketMQ's name server port).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9876";

/// How long a broker may stay silent before it leaves the routes: a few of the brokers'
/// default heartbeat intervals (3 s), so one or two lost heartbeats drop nothing.
pub const DEFAULT_BROKER_EXPIRY_MS: u64 = 10_000;

/// Connections served at once. Brokers hold one each and clients one per process; past this
/// something is wrong, and each connection may hold a read buffer.
pub const MAX_CONNECTIONS: usize = 1024;

/// Each connection's read buffer to begin with: far more than a registration of a broker with
/// a few hundred topics, so it rarely grows.
const BASE_READ_BUFFER_BYTES: usize = 64 * 1024;

/// What every connection's read buffer may hold beyond its base size, together: a frame that
/// would need more is answered `SYSTEM_BUSY` and its connection closed.
pub const READ_BUFFER_BUDGET_BYTES: usize = 256 * 1024 * 1024;

/// The name server's settings.
#[derive(Clone, Debug)]
pub struct NameServerConfig {
    /// `HOST:PORT`; port 0 picks a free one (the ready line names it).
    pub listen: String,
    pub broker_expiry_ms: u64,
    /// Largest frame accepted (the broker's default `max_frame_bytes`).
    pub max_frame_bytes: usize,
    pub request_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
}

impl Default for NameServerConfig {
    fn default() -> Self {
        NameServerConfig {
            listen: DEFAULT_LISTEN.to_string(),
            broker_expiry_ms: DEFAULT_BROKER_EXPIRY_MS,
            max_frame_bytes: 16 * 1024 * 1024,
            // The broker's defaults for the same three.
            request_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            write_timeout: Duration::from_secs(30),
        }
    }
}

impl NameServerConfig {
    fn validate(&self) -> Result<(), String> {
        if self.broker_expiry_ms == 0 || self.broker_expiry_ms > u64::from(u32::MAX) {
            return Err(format!(
                "--broker-expiry-ms: must be 1 to {} (got {})",
                u32::MAX,
                self.broker_expiry_ms
            ));
        }
        Ok(())
    }
}

/// Runs the name server until SIGINT or SIGTERM: prints the ready line
/// (`ringmq ready listen=HOST:PORT role=NAMESRV expiry_ms=N`, the same form as the broker's)
/// once it accepts connections. Returns a message for the user on failure.
pub fn run(config: NameServerConfig) -> Result<(), String> {
    config.validate()?;
    use signal_hook::consts::{SIGINT, SIGTERM};
    // Installed before the ready line, so a signal right after it is not lost.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| format!("installing signal handlers: {e}"))?;
    let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
    let expiry_ms = config.broker_expiry_ms;
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name("namesrv")
        .spawn(move || async move { serve(config, ready_tx).await })
        .map_err(|e| format!("starting the name server's executor: {e}"))?;
    let listen = match ready_rx.recv() {
        Ok(Ok(addr)) => addr,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("the name server's executor stopped while starting".into()),
    };
    // The main thread waits for whichever comes first: a stop signal, or the executor ending
    // (which only a bug does).
    let (events, event) = mpsc::channel::<Option<String>>();
    let exited = events.clone();
    std::thread::Builder::new()
        .name("namesrv-watch".into())
        .spawn(move || {
            let cause = match handle.join() {
                Ok(()) => "its executor returned".to_string(),
                Err(e) => e.to_string(),
            };
            let _ = exited.send(Some(cause));
        })
        .map_err(|e| format!("starting the executor's watcher: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                let _ = events.send(None);
            }
        })
        .map_err(|e| format!("starting the signal thread: {e}"))?;
    println!("ringmq ready listen={listen} role=NAMESRV expiry_ms={expiry_ms}");
    let _ = std::io::stdout().flush();
    match event.recv() {
        // Nothing to flush: the registry lives in memory only, by design.
        Ok(None) => {
            info!("name server stopping");
            Ok(())
        }
        Ok(Some(cause)) => Err(format!("the name server stopped unexpectedly: {cause}")),
        Err(_) => Err("the name server lost its watchers".into()),
    }
}

/// State every connection task shares (one executor, so `Rc` and `RefCell`).
struct Shared {
    registry: RefCell<Registry>,
    started: Instant,
    config: NameServerConfig,
    connections: Cell<usize>,
    /// Read-buffer bytes beyond the base size, summed over connections.
    buffered: Cell<usize>,
}

impl Shared {
    /// The registry's clock: monotonic milliseconds since start.
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

async fn serve(config: NameServerConfig, ready: mpsc::Sender<Result<String, String>>) {
    let listener = match TcpListener::bind(config.listen.as_str()) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot listen on {}: {e}", config.listen)));
            return;
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a.to_string(),
        Err(e) => {
            let _ = ready.send(Err(format!("reading the bound address: {e}")));
            return;
        }
    };
    let shared = Rc::new(Shared {
        registry: RefCell::new(Registry::new(config.broker_expiry_ms)),
        started: Instant::now(),
        config,
        connections: Cell::new(0),
        buffered: Cell::new(0),
    });
    let _ = ready.send(Ok(addr));
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: keep serving the connections there are.
                warn!("accept failed: {e}");
                sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        spawn_local(async move {
            if shared.connections.get() >= MAX_CONNECTIONS {
                refuse(stream, &shared).await;
                return;
            }
            shared.connections.set(shared.connections.get() + 1);
            Connection::new(stream, shared.clone()).run().await;
            shared.connections.set(shared.connections.get() - 1);
        })
        .detach();
    }
}

async fn refuse(mut stream: TcpStream, shared: &Shared) {
    let mut out = Vec::new();
    let message = format!("the name server serves at most {MAX_CONNECTIONS} connections");
    encode_frame(
        &mut out,
        FrameHeader::response(0, Status::SystemBusy, 0),
        message.as_bytes(),
    );
    let _ = stream.set_write_timeout(Some(shared.config.write_timeout));
    let _ = stream.write_all(&out).await;
    let _ = stream.close().await;
}

/// What answering a frame leaves of its connection.
enum After {
    Keep,
    Close,
}

/// Where [`Connection::answer_buffered`] stopped.
enum Stop {
    /// No complete frame is left: read more.
    NeedBytes,
    /// The answers reached [`WRITE_BATCH_BYTES`]: write them, then answer the rest.
    Batch,
    /// The connection closes after the answers.
    Close,
}

/// Answers gathered before they are written: a burst of pipelined route queries, each
/// answered with every route, must not gather unbounded memory.
const WRITE_BATCH_BYTES: usize = 1024 * 1024;

struct Connection {
    stream: TcpStream,
    shared: Rc<Shared>,
    decoder: FrameDecoder,
    buf: Vec<u8>,
    /// Bytes of `buf` beyond its base size counted in `Shared::buffered`.
    charged: usize,
    /// When the first byte of the frame now in `buf` arrived.
    frame_started: Instant,
    out: Vec<u8>,
}

impl Connection {
    fn new(stream: TcpStream, shared: Rc<Shared>) -> Self {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(shared.config.write_timeout));
        Connection {
            stream,
            decoder: FrameDecoder::new(shared.config.max_frame_bytes),
            shared,
            buf: Vec::with_capacity(BASE_READ_BUFFER_BYTES),
            charged: 0,
            frame_started: Instant::now(),
            out: Vec::new(),
        }
    }

    async fn run(mut self) {
        loop {
            let stop = self.answer_buffered();
            if !self.out.is_empty() {
                let written = self.stream.write_all(&self.out).await;
                self.out.clear();
                if written.is_err() {
                    break;
                }
            }
            match stop {
                Stop::Close => break,
                Stop::Batch => continue,
                Stop::NeedBytes => {
                    if !self.read_more().await {
                        break;
                    }
                }
            }
        }
        let _ = self.stream.close().await;
        self.release_buffer();
    }

    /// Answers the complete frames in the buffer into `out`: all of them, or up to the first
    /// that closes the connection, or until `out` holds a batch.
    fn answer_buffered(&mut self) -> Stop {
        let mut consumed = 0;
        let mut stop = Stop::NeedBytes;
        loop {
            if self.out.len() >= WRITE_BATCH_BYTES {
                stop = Stop::Batch;
                break;
            }
            match self.decoder.decode(&self.buf[consumed..]) {
                Ok(Some(frame)) => {
                    consumed += frame.wire_len();
                    let (status, body, then) = answer(&self.shared, frame.header, frame.body);
                    encode_frame(
                        &mut self.out,
                        FrameHeader::response(frame.header.opcode, status, frame.header.request_id),
                        &body,
                    );
                    if matches!(then, After::Close) {
                        stop = Stop::Close;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    debug!("closing a connection: {e}");
                    let header = FrameHeader::response(0, e.status(), e.request_id());
                    encode_frame(&mut self.out, header, e.to_string().as_bytes());
                    stop = Stop::Close;
                    break;
                }
            }
        }
        if consumed > 0 {
            self.buf.drain(..consumed);
            self.frame_started = Instant::now();
            if self.buf.is_empty() && self.charged > 0 {
                // A large frame is done: give its room back to the other connections.
                self.buf = Vec::with_capacity(BASE_READ_BUFFER_BYTES);
                self.release_buffer();
            }
        }
        stop
    }

    /// Reads more bytes; false when the connection should end (closed by the peer, an I/O
    /// error, a timeout, or no room for the frame).
    async fn read_more(&mut self) -> bool {
        if self.buf.len() == self.buf.capacity() && !self.grow() {
            let message = format!(
                "the name server's read buffers are full ({} MiB over all connections); retry later",
                READ_BUFFER_BUDGET_BYTES >> 20
            );
            self.answer_pending(Status::SystemBusy, &message).await;
            return false;
        }
        let filled = self.buf.len();
        let deadline = if filled == 0 {
            Instant::now() + self.shared.config.idle_timeout
        } else {
            self.frame_started + self.shared.config.request_read_timeout
        };
        // At most one base buffer's worth per read: zeroing the whole room of a grown buffer
        // on every read would cost a large frame quadratic time.
        let room = (filled + BASE_READ_BUFFER_BYTES).min(self.buf.capacity());
        self.buf.resize(room, 0);
        let read = {
            let into = &mut self.buf[filled..];
            let stream = &mut self.stream;
            future::or(async { Some(stream.read(into).await) }, async {
                sleep(deadline.saturating_duration_since(Instant::now())).await;
                None
            })
            .await
        };
        match read {
            Some(Ok(n)) if n > 0 => {
                self.buf.truncate(filled + n);
                if filled == 0 {
                    self.frame_started = Instant::now();
                }
                true
            }
            Some(_) => false,
            None if filled == 0 => {
                debug!("closing an idle connection");
                false
            }
            None => {
                self.buf.truncate(filled);
                let message = format!(
                    "a frame started {} ms ago is still incomplete; closing the connection",
                    self.frame_started.elapsed().as_millis()
                );
                self.answer_pending(Status::BadRequest, &message).await;
                false
            }
        }
    }

    /// Doubles the buffer (the decoder has checked the frame's size against the limit once
    /// its header arrived), charging the growth to the shared budget.
    fn grow(&mut self) -> bool {
        let more = self.buf.capacity().max(BASE_READ_BUFFER_BYTES);
        let shared = &self.shared;
        if shared.buffered.get() + more > READ_BUFFER_BUDGET_BYTES {
            return false;
        }
        shared.buffered.set(shared.buffered.get() + more);
        self.charged += more;
        self.buf
            .reserve_exact(self.buf.capacity() + more - self.buf.len());
        true
    }

    fn release_buffer(&mut self) {
        let shared = &self.shared;
        shared.buffered.set(shared.buffered.get() - self.charged);
        self.charged = 0;
    }

    /// Answers the frame whose start is in the buffer (its id when its header arrived) with an
    /// error; the connection closes after it.
    async fn answer_pending(&mut self, status: Status, message: &str) {
        let (opcode, request_id) = if self.buf.len() >= 20 {
            (
                u16::from_le_bytes([self.buf[8], self.buf[9]]),
                u64::from_le_bytes(self.buf[12..20].try_into().expect("8 bytes")),
            )
        } else {
            (0, 0)
        };
        let mut out = Vec::new();
        encode_frame(
            &mut out,
            FrameHeader::response(opcode, status, request_id),
            message.as_bytes(),
        );
        let _ = self.stream.write_all(&out).await;
    }
}

/// The answer to one well-framed request: status, body, and whether the connection stays.
fn answer(shared: &Shared, header: FrameHeader, body: &[u8]) -> (Status, Vec<u8>, After) {
    let error = |status: Status, message: String| (status, message.into_bytes(), After::Keep);
    let ok = |encode: &dyn Fn(&mut Vec<u8>)| {
        let mut out = Vec::new();
        encode(&mut out);
        (Status::Ok, out, After::Keep)
    };
    let malformed = |e: ringmq_protocol::codec::DecodeError| {
        error(Status::BadRequest, format!("malformed request body: {e}"))
    };
    match Opcode::from_u16(header.opcode) {
        Some(Opcode::Ping) => (Status::Ok, Vec::new(), After::Keep),
        Some(Opcode::BrokerRegister) => match BrokerRegister::decode(body) {
            Ok(registration) => {
                let now = shared.now_ms();
                match shared.registry.borrow_mut().register(registration, now) {
                    Ok(result) => ok(&|out| result.encode(out)),
                    Err(e @ RegistryError::Invalid(_)) => error(Status::BadRequest, e.to_string()),
                    Err(e @ RegistryError::Full(_)) => error(Status::SystemBusy, e.to_string()),
                }
            }
            Err(e) => malformed(e),
        },
        Some(Opcode::BrokerUnregister) => match BrokerUnregister::decode(body) {
            Ok(r) => {
                let removed = shared.registry.borrow_mut().unregister(
                    &r.cluster_name,
                    &r.broker_name,
                    r.broker_id,
                );
                debug!(
                    cluster = r.cluster_name,
                    group = r.broker_name,
                    broker_id = r.broker_id,
                    removed,
                    "unregister"
                );
                (Status::Ok, Vec::new(), After::Keep)
            }
            Err(e) => malformed(e),
        },
        Some(Opcode::RouteQuery) => match RouteQuery::decode(body) {
            Ok(q) => {
                let now = shared.now_ms();
                let routes = shared.registry.borrow_mut().routes(&q.cluster_name, now);
                ok(&|out| routes.encode(out))
            }
            Err(e) => malformed(e),
        },
        Some(other) => (
            Status::UnknownOpcode,
            format!(
                "{} ({}) is a broker request and this is a name server: it serves Ping, BrokerRegister, BrokerUnregister and RouteQuery",
                other.name(),
                header.opcode
            )
            .into_bytes(),
            After::Close,
        ),
        None => (
            Status::UnknownOpcode,
            format!("unknown opcode {}", header.opcode).into_bytes(),
            After::Close,
        ),
    }
}
