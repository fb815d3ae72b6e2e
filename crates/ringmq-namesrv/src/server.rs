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
//! Bounds ([`crate::bounds`], each with its reason): connections at once and per IP address
//! (one over either is answered `SYSTEM_BUSY` and closed), a frame limit (a registration at
//! its cap), [`READ_BUFFER_BUDGET_BYTES`] shared by every connection's read buffer beyond its
//! base size, and [`WRITE_BUFFER_BUDGET_BYTES`] shared by unwritten answers beyond a batch, so
//! many large frames or route answers at once cannot exhaust memory. Route answers are encoded
//! straight into the connection's output, which shrinks back after a large one, and the task
//! yields between answers, so a burst of route queries does not hold up registrations. A frame
//! started and not complete within
//! `request_read_timeout` is answered `BAD_REQUEST` and closes the connection; a connection
//! silent for `idle_timeout` is closed; a peer that does not read its answers for
//! `write_timeout` is dropped.
//!
//! With a secret (`secret_file`), registrations and unregistrations are checked by
//! [`crate::auth`] before the registry sees them: unsigned or wrongly signed ones are answered
//! `NOT_AUTHENTICATED`, replays `REPLAY_REFUSED`, each logged at a bounded rate. Route queries
//! and pings need no signature.

use crate::auth::Authenticator;
use crate::bounds::{
    BASE_READ_BUFFER_BYTES, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_IP, MAX_FRAME_BYTES,
    READ_BUFFER_BUDGET_BYTES, REFUSAL_WARN_INTERVAL_MS, WRITE_BATCH_BYTES,
    WRITE_BUFFER_BUDGET_BYTES,
};
use crate::registry::{Limits, Registry, RegistryError, DEFAULT_GROUP_EPOCH_RETENTION_MS};
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::timer::sleep;
use glommio::{spawn_local, yield_if_needed, LocalExecutorBuilder, Placement};
use ringmq_protocol::frame::{begin_frame, encode_frame, finish_frame, FrameDecoder, FrameHeader};
use ringmq_protocol::namesrv::{
    is_master_role, BrokerRegister, BrokerUnregister, RegisterResult, RouteQuery,
};
use ringmq_protocol::{Opcode, Status};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Where `ringmq namesrv` listens unless told otherwise (RocketMQ's name server port).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9876";

/// How long a broker may stay silent before it leaves the routes: a few of the brokers'
/// default heartbeat intervals (3 s), so one or two lost heartbeats drop nothing.
pub const DEFAULT_BROKER_EXPIRY_MS: u64 = 10_000;

/// The name server's settings.
#[derive(Clone, Debug)]
pub struct NameServerConfig {
    /// `HOST:PORT`; port 0 picks a free one (the ready line names it).
    pub listen: String,
    pub broker_expiry_ms: u64,
    /// How long a group with no live broker keeps its highest epoch.
    pub group_epoch_retention_ms: u64,
    /// Largest frame accepted.
    pub max_frame_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub request_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    /// The brokers' shared secret; with it only signed registrations are taken. `None`: any
    /// peer may register (a warning at start says so).
    pub secret_file: Option<std::path::PathBuf>,
    /// Words appended to the ready line by a process that serves more than the name server
    /// (`ringmq namesrv --controller-id ...` adds ` controller=HOST:PORT controller_id=N`), so
    /// it still prints one ready line. Empty by default.
    pub ready_suffix: String,
}

impl Default for NameServerConfig {
    fn default() -> Self {
        NameServerConfig {
            listen: DEFAULT_LISTEN.to_string(),
            broker_expiry_ms: DEFAULT_BROKER_EXPIRY_MS,
            group_epoch_retention_ms: DEFAULT_GROUP_EPOCH_RETENTION_MS,
            max_frame_bytes: MAX_FRAME_BYTES,
            max_connections: MAX_CONNECTIONS,
            max_connections_per_ip: MAX_CONNECTIONS_PER_IP,
            // The broker's defaults for the same three.
            request_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            write_timeout: Duration::from_secs(30),
            secret_file: None,
            ready_suffix: String::new(),
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
        if self.group_epoch_retention_ms < self.broker_expiry_ms {
            return Err(format!(
                "--group-epoch-retention-ms: must be at least --broker-expiry-ms ({}), and is best many times it (got {})",
                self.broker_expiry_ms, self.group_epoch_retention_ms
            ));
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return Err("--max-connections and --max-connections-per-ip must be at least 1".into());
        }
        if self.max_frame_bytes < 1024 {
            return Err(format!(
                "--max-frame-bytes: must be at least 1024 (got {})",
                self.max_frame_bytes
            ));
        }
        Ok(())
    }
}

/// Runs the name server until SIGINT or SIGTERM: prints the ready line
/// (`ringmq ready listen=HOST:PORT role=NAMESRV expiry_ms=N`, the same form as the broker's,
/// then [`NameServerConfig::ready_suffix`])
/// once it accepts connections. Returns a message for the user on failure.
pub fn run(config: NameServerConfig) -> Result<(), String> {
    config.validate()?;
    let secret = match &config.secret_file {
        Some(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| format!("--secret-file {}: {e}", path.display()))?;
            Some(
                ringmq_protocol::auth::Secret::from_file_contents(bytes)
                    .map_err(|e| format!("--secret-file {}: {e}", path.display()))?,
            )
        }
        None => {
            warn!(
                "no --secret-file: any peer that reaches this name server can register as a \
                 broker of any group (and claim its master with a high epoch) or unregister one"
            );
            None
        }
    };
    raise_descriptor_limit(config.max_connections);
    use signal_hook::consts::{SIGINT, SIGTERM};
    // Installed before the ready line, so a signal right after it is not lost.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| format!("installing signal handlers: {e}"))?;
    let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
    let expiry_ms = config.broker_expiry_ms;
    let ready_suffix = config.ready_suffix.clone();
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name("namesrv")
        .spawn(move || async move { serve(config, secret, ready_tx).await })
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
    println!("ringmq ready listen={listen} role=NAMESRV expiry_ms={expiry_ms}{ready_suffix}");
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

/// Raises the soft limit on open descriptors to the hard limit, as the broker does: the usual
/// soft limit of 1024 would stop accepts short of `max_connections`. Warns when even the hard
/// limit is short.
fn raise_descriptor_limit(max_connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            ..limit
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    // One descriptor per connection, and a few for the listener, stdio and the executor.
    let needed = max_connections as u64 + 64;
    if limit.rlim_cur < needed {
        warn!(
            "the open-descriptor limit {} is below the {needed} that {max_connections} connections need; accepts fail past it (raise `ulimit -n`)",
            limit.rlim_cur
        );
    }
}

/// A master claim, as a refusal's warning names it.
struct Claim {
    cluster: String,
    group: String,
    broker_id: u64,
    role: String,
    epoch: u32,
}

/// State every connection task shares (one executor, so `Rc` and `RefCell`).
struct Shared {
    registry: RefCell<Registry>,
    started: Instant,
    config: NameServerConfig,
    connections: Cell<usize>,
    /// Connections per peer IP address (entries removed at zero).
    per_ip: RefCell<HashMap<IpAddr, usize>>,
    /// Read-buffer bytes beyond the base size, summed over connections.
    buffered: Cell<usize>,
    /// Unwritten answer bytes beyond [`WRITE_BATCH_BYTES`], summed over connections.
    writing: Cell<usize>,
    /// When each refused broker (cluster, group, id) was last warned about, so a refused
    /// broker retrying every heartbeat logs once a minute. Cleared when it reaches
    /// `MAX_BROKERS` entries.
    refusals_warned: RefCell<HashMap<(String, String, u64), u64>>,
    /// With a secret: the signature and replay checks of registrations.
    auth: Option<RefCell<Authenticator>>,
}

impl Shared {
    /// The registry's clock: monotonic milliseconds since start.
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Takes a connection from `ip`; false (and nothing taken) when at either bound.
    fn admit(&self, ip: IpAddr) -> Result<(), String> {
        if self.connections.get() >= self.config.max_connections {
            return Err(format!(
                "the name server serves at most {} connections",
                self.config.max_connections
            ));
        }
        let mut per_ip = self.per_ip.borrow_mut();
        let from_ip = per_ip.entry(ip).or_insert(0);
        if *from_ip >= self.config.max_connections_per_ip {
            return Err(format!(
                "the name server serves at most {} connections from one address ({ip})",
                self.config.max_connections_per_ip
            ));
        }
        *from_ip += 1;
        self.connections.set(self.connections.get() + 1);
        Ok(())
    }

    fn leave(&self, ip: IpAddr) {
        self.connections.set(self.connections.get() - 1);
        let mut per_ip = self.per_ip.borrow_mut();
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
    }

    /// With a secret, whether a registration or unregistration of `what` is taken; `Err` is
    /// the refusal to answer (logged here, at a bounded rate).
    fn authenticate(
        &self,
        what: &str,
        check: impl FnOnce(&mut Authenticator, u64, u64) -> Result<(), crate::auth::Refusal>,
    ) -> Result<(), crate::auth::Refusal> {
        let Some(auth) = &self.auth else {
            return Ok(());
        };
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let now = self.now_ms();
        let mut auth = auth.borrow_mut();
        let checked = check(&mut auth, wall_ms, now);
        if let Err((status, why)) = &checked {
            if let Some(unlogged) = auth.should_log(*status, now) {
                warn!(
                    unlogged_refusals = unlogged,
                    "refused {what} ({status}): {why}"
                );
            }
        }
        checked
    }

    /// Logs a refused master claim, at most once per [`REFUSAL_WARN_INTERVAL_MS`] per broker.
    fn warn_refused(&self, claim: &Claim, result: &RegisterResult) {
        let now = self.now_ms();
        let key = (claim.cluster.clone(), claim.group.clone(), claim.broker_id);
        let mut warned = self.refusals_warned.borrow_mut();
        if warned
            .get(&key)
            .is_some_and(|at| now.saturating_sub(*at) < REFUSAL_WARN_INTERVAL_MS)
        {
            return;
        }
        if warned.len() >= crate::bounds::MAX_BROKERS {
            warned.clear();
        }
        warned.insert(key, now);
        warn!(
            cluster = claim.cluster,
            group = claim.group,
            "refused {} claim of broker {} at epoch {}: the group's highest epoch is {} (broker {}); listed master: {}",
            claim.role,
            claim.broker_id,
            claim.epoch,
            result.group_epoch,
            result.group_epoch_broker_id,
            if result.master_listen.is_empty() {
                "none".to_string()
            } else {
                format!(
                    "broker {} at {} epoch {}",
                    result.master_broker_id, result.master_listen, result.master_epoch
                )
            }
        );
    }
}

async fn serve(
    config: NameServerConfig,
    secret: Option<ringmq_protocol::auth::Secret>,
    ready: mpsc::Sender<Result<String, String>>,
) {
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
        registry: RefCell::new(Registry::with_limits(
            config.broker_expiry_ms,
            config.group_epoch_retention_ms,
            Limits::default(),
        )),
        started: Instant::now(),
        config,
        connections: Cell::new(0),
        per_ip: RefCell::new(HashMap::new()),
        buffered: Cell::new(0),
        writing: Cell::new(0),
        refusals_warned: RefCell::new(HashMap::new()),
        auth: secret.map(|s| RefCell::new(Authenticator::new(s))),
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
            let ip = match stream.peer_addr() {
                Ok(addr) => addr.ip(),
                Err(e) => {
                    debug!("a connection without a peer address: {e}");
                    return;
                }
            };
            if let Err(message) = shared.admit(ip) {
                debug!("refusing a connection from {ip}: {message}");
                refuse(stream, &shared, &message).await;
                return;
            }
            Connection::new(stream, shared.clone()).run().await;
            shared.leave(ip);
        })
        .detach();
    }
}

async fn refuse(mut stream: TcpStream, shared: &Shared, message: &str) {
    let mut out = Vec::new();
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
    /// Bytes of `out`'s capacity beyond [`WRITE_BATCH_BYTES`] counted in `Shared::writing`.
    out_charged: usize,
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
            out_charged: 0,
        }
    }

    async fn run(mut self) {
        loop {
            let stop = self.answer_buffered();
            self.charge_out();
            if !self.out.is_empty() {
                let written = self.stream.write_all(&self.out).await;
                self.out.clear();
                if self.out.capacity() > WRITE_BATCH_BYTES {
                    // A large route answer is written: give its memory back.
                    self.out = Vec::new();
                }
                self.charge_out();
                if written.is_err() {
                    break;
                }
            }
            // Another connection's registration must not wait for a burst of route answers.
            yield_if_needed().await;
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
        self.out = Vec::new();
        self.charge_out();
    }

    /// Brings `Shared::writing` up to date with `out`'s capacity.
    fn charge_out(&mut self) {
        let over = self.out.capacity().saturating_sub(WRITE_BATCH_BYTES);
        let writing = &self.shared.writing;
        writing.set(writing.get() - self.out_charged + over);
        self.out_charged = over;
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
                    let then = answer(&self.shared, frame.header, frame.body, &mut self.out);
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

/// Answers one well-framed request, appending the whole response frame to `out`; whether
/// the connection stays.
fn answer(shared: &Shared, header: FrameHeader, body: &[u8], out: &mut Vec<u8>) -> After {
    let response = |status: Status| FrameHeader::response(header.opcode, status, header.request_id);
    let error = |out: &mut Vec<u8>, status: Status, message: String, then: After| {
        encode_frame(out, response(status), message.as_bytes());
        then
    };
    let malformed = |e: ringmq_protocol::codec::DecodeError| {
        (Status::BadRequest, format!("malformed request body: {e}"))
    };
    let ok = |out: &mut Vec<u8>, encode: &dyn Fn(&mut Vec<u8>)| {
        let start = begin_frame(out, response(Status::Ok));
        encode(out);
        finish_frame(out, start);
        After::Keep
    };
    match Opcode::from_u16(header.opcode) {
        Some(Opcode::Ping) => ok(out, &|_| {}),
        Some(Opcode::BrokerRegister) => match BrokerRegister::decode(body) {
            Ok(mut registration) => {
                let what = format!(
                    "a registration of {}/{} broker {} ({} at epoch {})",
                    registration.cluster_name,
                    registration.broker_name,
                    registration.broker_id,
                    registration.role,
                    registration.epoch
                );
                if let Err((status, why)) =
                    shared.authenticate(&what, |a, wall, now| a.check_register(&registration, wall, now))
                {
                    return error(out, status, why, After::Keep);
                }
                // Routes hand registrations out: none carries a signature to replay.
                registration.signature.clear();
                let now = shared.now_ms();
                // What a refusal's warning names (only master claims can be refused).
                let claim = is_master_role(&registration.role).then(|| Claim {
                    cluster: registration.cluster_name.clone(),
                    group: registration.broker_name.clone(),
                    broker_id: registration.broker_id,
                    role: registration.role.clone(),
                    epoch: registration.epoch,
                });
                let registered = shared.registry.borrow_mut().register(registration, now);
                match registered {
                    Ok(result) => {
                        if let Some(claim) = claim.filter(|_| !result.is_accepted()) {
                            shared.warn_refused(&claim, &result);
                        }
                        ok(out, &|out| result.encode(out))
                    }
                    Err(e @ RegistryError::Invalid(_)) => {
                        error(out, Status::BadRequest, e.to_string(), After::Keep)
                    }
                    Err(e @ RegistryError::Full(_)) => {
                        error(out, Status::SystemBusy, e.to_string(), After::Keep)
                    }
                }
            }
            Err(e) => {
                let (status, message) = malformed(e);
                error(out, status, message, After::Keep)
            }
        },
        Some(Opcode::BrokerUnregister) => match BrokerUnregister::decode(body) {
            Ok(r) => {
                let what = format!(
                    "an unregistration of {}/{} broker {}",
                    r.cluster_name, r.broker_name, r.broker_id
                );
                if let Err((status, why)) =
                    shared.authenticate(&what, |a, wall, now| a.check_unregister(&r, wall, now))
                {
                    return error(out, status, why, After::Keep);
                }
                let now = shared.now_ms();
                let removed = shared.registry.borrow_mut().unregister(
                    &r.cluster_name,
                    &r.broker_name,
                    r.broker_id,
                    now,
                );
                debug!(
                    cluster = r.cluster_name,
                    group = r.broker_name,
                    broker_id = r.broker_id,
                    removed,
                    "unregister"
                );
                ok(out, &|_| {})
            }
            Err(e) => {
                let (status, message) = malformed(e);
                error(out, status, message, After::Keep)
            }
        },
        Some(Opcode::RouteQuery) => match RouteQuery::decode(body) {
            Ok(q) => {
                let now = shared.now_ms();
                let mut registry = shared.registry.borrow_mut();
                // About the answer's size (every registration plus its age); checked before
                // encoding so many slow readers of large answers cannot exhaust memory.
                let estimate = registry.registered_bytes() + 12 * registry.broker_count() + 4;
                let over = (out.len() + estimate).saturating_sub(WRITE_BATCH_BYTES);
                if over > 0 && shared.writing.get() + over > WRITE_BUFFER_BUDGET_BYTES {
                    let message = format!(
                        "the name server's answers waiting to be written are at their bound ({} MiB); retry later or ask another name server",
                        WRITE_BUFFER_BUDGET_BYTES >> 20
                    );
                    return error(out, Status::SystemBusy, message, After::Keep);
                }
                let start = begin_frame(out, response(Status::Ok));
                registry.encode_routes(&q.cluster_name, now, out);
                finish_frame(out, start);
                After::Keep
            }
            Err(e) => {
                let (status, message) = malformed(e);
                error(out, status, message, After::Keep)
            }
        },
        Some(other) => error(
            out,
            Status::UnknownOpcode,
            format!(
                "{} ({}) is a broker request and this is a name server: it serves Ping, BrokerRegister, BrokerUnregister and RouteQuery",
                other.name(),
                header.opcode
            ),
            After::Close,
        ),
        None => error(
            out,
            Status::UnknownOpcode,
            format!("unknown opcode {}", header.opcode),
            After::Close,
        ),
    }
}
