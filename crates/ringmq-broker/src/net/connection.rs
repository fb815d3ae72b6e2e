//! One client connection: read frames, run each request as its own task (pipelining: many in
//! flight, answered as they complete, matched by request id), write responses in order of
//! completion.
//!
//! Transport: a reader task and a writer task each own one direction. On a plaintext port the
//! socket is duplicated, so each owns a glommio stream of its own and neither ever waits for
//! the other (the hot path, unchanged). On a TLS port one rustls session carries both
//! directions: it is split into a read half and a write half over one shared session (a lock
//! taken only inside a poll, never across an await), after a handshake that [`serve_tls`] runs
//! in the connection's own task, outside the accept loop, in the shard's low-share handshake
//! task queue (the connection is then served in the accept loop's queue). The reader and the writer are generic
//! over the halves, so both kinds run the same code. A frame that breaks framing (oversized,
//! bad magic, bad crc, unknown version or opcode) is answered with an error where the request
//! id is known, and then only this connection closes. A TLS ClientHello on a plaintext port
//! is answered with a TLS alert, a ringmq frame on a TLS port with `TLS_REQUIRED`, so either
//! kind of confused client learns why at once.
//!
//! Bounds: a frame that does not fit the connection's base read buffer reserves its size from
//! the shard's [`InflightBudget`] before its body is read (the reader stops reading while it
//! waits: back-pressure), and a request that gets no budget within the wait is answered
//! `SYSTEM_BUSY` (a large frame's body is then read and dropped, so the connection stays
//! usable). A frame started and not finished within `request_read_timeout_ms` is answered
//! `BAD_REQUEST` and the connection closes; a connection with nothing in flight and no traffic
//! for `connections_max_idle_ms` is closed; a writer that makes no progress for
//! `response_write_timeout_ms` (a peer that never reads) closes the connection. A TLS
//! handshake not done within `tls_handshake_timeout_ms` closes the connection.
//!
//! Authentication (`authentication = "scram"`, `security::scram`): a connection without a
//! certificate principal serves only ping and the two SCRAM steps, frames of at most
//! `PRE_AUTHENTICATION_MAX_FRAME_BYTES`, until it authenticates or
//! `authentication_timeout_ms` passes; any other request is answered `NOT_AUTHENTICATED` and
//! the connection closes, as it does after a failed step (`AUTHENTICATION_FAILED`). The steps
//! are answered by the reader itself, in order with the frames around them; on success the
//! user becomes the connection's principal. User administration (61-63) and cluster
//! promote/demote need a principal in `superusers` once authentication is on; with it off,
//! online user changes are refused.

use super::admission::{BudgetPermit, Ticket};
use super::{HandshakeSlot, ShardNet};
use crate::config::Authentication;
use crate::constants::{
    CONNECTION_READ_BUFFER_BYTES, INFLIGHT_BUDGET_WAIT_MS, MAX_COALESCED_RESPONSE_BYTES,
    MAX_INFLIGHT_BYTES_PER_CONNECTION, MAX_INFLIGHT_REQUESTS_PER_CONNECTION,
};
use crate::counted_polls::observed;
use crate::metrics::Counter;
use crate::protocol::frame::{encode_frame, FrameDecoder, FrameError, FrameHeader};
use crate::protocol::frame::{FRAME_HEADER_BYTES, PROTOCOL_VERSION};
use crate::protocol::{Opcode, Status};
use crate::security::scram::{self as scram_steps, Step, PRE_AUTHENTICATION_MAX_FRAME_BYTES};
use crate::security::tls::{
    opening, session_principal, Opening, OPENING_BYTES, PLAINTEXT_PORT_ALERT,
};
use crate::security::{Peer, Principal};
use crate::shard::handlers;
use crate::shard::mesh::Reply;
use crate::shard::Shard;
use futures_lite::{future, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use glommio::sync::{Semaphore, StaticPermit};
use glommio::timer::sleep;
use glommio::{spawn_local, spawn_local_into};
use std::cell::Cell;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::debug;

/// How long a TLS port waits before peeking again at a connection whose first bytes do not
/// yet tell a ClientHello from a frame: short, as the rest is normally one segment behind.
const PEEK_RETRY_MS: u64 = 2;

/// The configured timeouts of every connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionTimeouts {
    pub request_read: Duration,
    pub idle: Duration,
    pub response_write: Duration,
    pub tls_handshake: Duration,
}

/// Serves a connection accepted on a plaintext port.
pub async fn serve(shard: Rc<Shard>, net: Rc<ShardNet>, stream: TcpStream, ticket: Ticket) {
    let _ = stream.set_nodelay(true);
    let Ok(addr) = stream.peer_addr() else {
        return;
    };
    // SAFETY: dup returns a new descriptor for the same socket, owned by the writer stream.
    let write_fd = unsafe { libc::dup(stream.as_raw_fd()) };
    if write_fd < 0 {
        debug!(
            "dup of a client socket failed: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    let writer = unsafe { TcpStream::from_raw_fd(write_fd) };
    let _ = writer.set_write_timeout(Some(net.timeouts.response_write));
    let peer = Peer {
        addr,
        principal: None,
    };
    let halves = Halves {
        reader: stream,
        writer,
        // The writer's own descriptor, not the reader's: the reader stream is dropped (its
        // descriptor closed, and free for the shard to reuse) when the peer closes, while the
        // writer may still answer requests in flight and shut the socket down on a failed write.
        fd: write_fd,
        plaintext: true,
    };
    serve_halves(shard, net, halves, peer, ticket).await;
}

/// Serves a connection accepted on a TLS port: tells a plaintext client so, runs the
/// handshake within `tls_handshake_timeout_ms`, then serves it like any other. `slot`, one of
/// the shard's handshake places, is given back when the handshake ends, whatever the outcome
/// (or when this future is dropped).
pub async fn serve_tls(
    shard: Rc<Shard>,
    net: Rc<ShardNet>,
    stream: TcpStream,
    ticket: Ticket,
    config: Arc<rustls::ServerConfig>,
    slot: HandshakeSlot,
) {
    let _ = stream.set_nodelay(true);
    let Ok(addr) = stream.peer_addr() else {
        return;
    };
    let Some((session, principal)) =
        accept_tls(&shard, &net, stream, config, slot, Plaintext::TellRingmq).await
    else {
        return;
    };
    let fd = session.get_ref().0.as_raw_fd();
    let (reader, writer) = futures_lite::io::split(session);
    let halves = Halves {
        reader,
        writer,
        fd,
        plaintext: false,
    };
    let serving = serve_halves(
        shard.clone(),
        net.clone(),
        halves,
        Peer { addr, principal },
        ticket,
    );
    serve_where_plaintext_runs(&shard, &net, serving).await;
}

/// What a TLS port does with a peer that speaks plaintext first.
#[derive(Clone, Copy)]
pub enum Plaintext {
    /// Answer `TLS_REQUIRED` in ringmq framing (a native client reads why), then close.
    TellRingmq,
    /// Close at once (a Kafka client: Kafka has no frame to say it in).
    Close,
}

/// The server side of a TLS handshake on an accepted connection, within
/// `tls_handshake_timeout_ms`: the session and the principal its client certificate names,
/// or `None` (the reason at debug). `slot`, one of the shard's handshake places, is given
/// back when the handshake ends, whatever the outcome.
pub async fn accept_tls(
    shard: &Shard,
    net: &ShardNet,
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    slot: HandshakeSlot,
    plaintext: Plaintext,
) -> Option<(
    futures_rustls::server::TlsStream<TcpStream>,
    Option<crate::security::Principal>,
)> {
    let addr = stream.peer_addr().ok()?;
    let deadline = Instant::now() + net.timeouts.tls_handshake;
    let session = future::or(
        handshake(stream, config, net.timeouts.tls_handshake, plaintext),
        async {
            sleep(deadline.saturating_duration_since(Instant::now())).await;
            debug!(shard = shard.id(), %addr, "TLS handshake timed out; closing");
            None
        },
    )
    .await;
    drop(slot);
    let session = session?;
    let principal = session_principal(session.get_ref().1);
    debug!(shard = shard.id(), %addr, principal = ?principal.as_ref().map(|p| p.as_str()), "TLS handshake done");
    let _ = session
        .get_ref()
        .0
        .set_write_timeout(Some(net.timeouts.response_write));
    Some((session, principal))
}

/// Runs a TLS connection, whose handshake ran in the shard's low-share handshake queue,
/// where plaintext connections run.
pub async fn serve_where_plaintext_runs(
    shard: &Shard,
    net: &ShardNet,
    serving: impl std::future::Future<Output = ()> + 'static,
) {
    match net.tls_queues() {
        Some(queues) => match spawn_local_into(serving, queues.serving) {
            Ok(task) => {
                task.detach();
            }
            Err(e) => debug!(
                shard = shard.id(),
                "serving a TLS connection failed to start: {e}"
            ),
        },
        None => serving.await,
    }
}

/// The handshake, after a look at the first bytes: anything but a ClientHello (every ringmq
/// frame: its magic sits at bytes 4-5) is answered `TLS_REQUIRED` in ringmq framing, what a
/// plaintext client reads. Up to [`OPENING_BYTES`] decide; they are peeked, so rustls still
/// reads the whole record. `None` when no session came of it (the caller bounds the time).
async fn handshake(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    timeout: Duration,
    plaintext: Plaintext,
) -> Option<futures_rustls::server::TlsStream<TcpStream>> {
    let mut first = [0u8; OPENING_BYTES];
    loop {
        let n = stream.peek(&mut first).await.ok()?;
        if n == 0 {
            return None;
        }
        match opening(&first[..n]) {
            Opening::ClientHello => break,
            Opening::Plaintext if matches!(plaintext, Plaintext::Close) => {
                debug!("a plaintext client on a TLS Kafka listener; closing");
                return None;
            }
            Opening::Plaintext => {
                let reason = "this port requires TLS: the client sent plaintext; connect with TLS (ringmq: --tls-ca FILE)".to_string();
                answer_and_close(stream, Status::TlsRequired, reason, timeout).await;
                return None;
            }
            // A peek returns what has arrived and does not wait for more: a record header
            // split across segments (rare: a ClientHello opens in one) is polled for.
            Opening::Undecided => sleep(Duration::from_millis(PEEK_RETRY_MS)).await,
        }
    }
    match futures_rustls::TlsAcceptor::from(config)
        .accept(stream)
        .await
    {
        Ok(session) => Some(session),
        Err(e) => {
            debug!("TLS handshake failed: {e}");
            None
        }
    }
}

/// The two directions of one connection and the socket under them.
struct Halves<R, W> {
    reader: R,
    writer: W,
    /// The socket both halves use, to shut it down from either side: a descriptor that stays
    /// open as long as the writer does (on a plaintext port the writer's own duplicate).
    fd: RawFd,
    /// A plaintext port: a ClientHello arriving first is answered with a TLS alert.
    plaintext: bool,
}

async fn serve_halves<R, W>(
    shard: Rc<Shard>,
    net: Rc<ShardNet>,
    halves: Halves<R, W>,
    peer: Peer,
    ticket: Ticket,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + 'static,
{
    let activity = Rc::new(Cell::new(Instant::now()));
    let (tx, rx) = local_channel::new_bounded::<Response>(MAX_INFLIGHT_REQUESTS_PER_CONNECTION);
    let writer_task = spawn_local(observed(write_responses(
        shard.clone(),
        halves.writer,
        halves.fd,
        !halves.plaintext,
        rx,
        activity.clone(),
    )));
    let authenticated =
        shard.config().authentication == Authentication::Off || peer.principal.is_some();
    let max_frame_bytes = shard.config().max_frame_bytes as usize;
    let reader = Reader {
        decoder: FrameDecoder::new(if authenticated {
            max_frame_bytes
        } else {
            max_frame_bytes.min(PRE_AUTHENTICATION_MAX_FRAME_BYTES)
        }),
        authenticated,
        exchange: None,
        authentication_deadline: Instant::now()
            + Duration::from_millis(shard.config().authentication_timeout_ms),
        requests: Rc::new(Semaphore::new(MAX_INFLIGHT_REQUESTS_PER_CONNECTION as u64)),
        request_bytes: Rc::new(Semaphore::new(MAX_INFLIGHT_BYTES_PER_CONNECTION as u64)),
        buf: vec![0u8; CONNECTION_READ_BUFFER_BYTES],
        filled: 0,
        frame_started: Instant::now(),
        shard,
        net,
        stream: halves.reader,
        answer_client_hello: halves.plaintext.then_some(halves.fd),
        peer: Rc::new(peer),
        tx: Rc::new(tx),
        activity,
    };
    observed(reader.run()).await;
    writer_task.await;
    drop(ticket);
}

/// One answer on its way to the writer: framed there, into the writer's own buffer.
struct Response {
    request: FrameHeader,
    reply: Reply,
}

async fn write_responses<W: AsyncWrite + Unpin>(
    shard: Rc<Shard>,
    mut writer: W,
    fd: RawFd,
    flush: bool,
    rx: LocalReceiver<Response>,
    activity: Rc<Cell<Instant>>,
) {
    // One buffer for the connection's life: a response is framed into it (header and body in
    // one copy), so answering allocates nothing here. Answers already queued behind the first
    // go out in the same write, up to a bound that keeps the buffer small.
    let mut out = Vec::new();
    while let Some(first) = rx.recv().await {
        out.clear();
        let mut framed = 1;
        frame_response(&mut out, first);
        while out.len() < MAX_COALESCED_RESPONSE_BYTES {
            match future::poll_once(rx.recv()).await {
                Some(Some(next)) => {
                    frame_response(&mut out, next);
                    framed += 1;
                }
                _ => break,
            }
        }
        let mut written = writer.write_all(&out).await;
        if flush && written.is_ok() {
            // A TLS session accepts bytes into its own buffer and reports them written even
            // when the socket would block: the tail of an answer stays there until flushed.
            written = writer.flush().await;
        }
        for _ in 0..framed {
            shard.lifecycle().response_written();
        }
        if let Err(e) = written {
            if e.kind() == std::io::ErrorKind::TimedOut {
                debug!(
                    shard = shard.id(),
                    "closing a connection whose peer does not read its responses"
                );
            }
            shutdown_both(fd);
            // Requests still in flight must be able to queue their answers and finish (a
            // dropped receiver does not release senders waiting on a full channel).
            while rx.recv().await.is_some() {
                shard.lifecycle().response_written();
            }
            break;
        }
        activity.set(Instant::now());
        shard.probe().add(Counter::BytesOut, out.len() as u64);
        if out.capacity() > MAX_COALESCED_RESPONSE_BYTES {
            // A large pull answer grew it: give the memory back rather than hold it idle.
            out.clear();
            out.shrink_to(MAX_COALESCED_RESPONSE_BYTES);
        }
    }
    let _ = writer.close().await;
}

/// Ends both directions of the socket, so the reader of the same socket sees its end too.
fn shutdown_both(fd: RawFd) {
    // SAFETY: shutdown on a socket descriptor this task owns.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// Why the reader stops.
enum End {
    /// The peer closed, an I/O error, or a framing error already answered.
    Closed,
    /// A started frame did not finish within `request_read_timeout_ms`; its header when it
    /// is no longer in the base buffer.
    ReadTimeout(Option<FrameHeader>),
    /// Nothing in flight and no traffic for `connections_max_idle_ms`.
    Idle,
    /// Not authenticated within `authentication_timeout_ms`.
    AuthenticationTimeout,
}

struct Reader<R> {
    shard: Rc<Shard>,
    net: Rc<ShardNet>,
    stream: R,
    /// On a plaintext port, the socket to answer a TLS ClientHello on, until the first bytes
    /// have told (cleared then, so it costs the hot path nothing after).
    answer_client_hello: Option<RawFd>,
    /// Who is on the other end, for the handlers (the ACL round) and debug logs; replaced
    /// once, when a SCRAM exchange succeeds.
    peer: Rc<Peer>,
    /// Whether requests other than ping and the SCRAM steps are served: authentication is
    /// off, a certificate named the client, or a SCRAM exchange succeeded.
    authenticated: bool,
    /// A SCRAM exchange between its AuthStart and its AuthFinish.
    exchange: Option<crate::protocol::scram::ServerExchange>,
    /// An unauthenticated connection is closed then (`authentication_timeout_ms` after accept).
    authentication_deadline: Instant,
    tx: Rc<LocalSender<Response>>,
    decoder: FrameDecoder,
    /// Requests of this connection in flight (count), so one peer cannot pin unbounded work.
    requests: Rc<Semaphore>,
    /// Request bytes of this connection in flight, its share of the shard's budget at most.
    request_bytes: Rc<Semaphore>,
    /// When bytes last arrived or a response was last written: the idle clock.
    activity: Rc<Cell<Instant>>,
    /// Base read buffer; a frame larger than it is read into its own buffer.
    buf: Vec<u8>,
    filled: usize,
    /// When the first byte of the frame now in `buf[..filled]` arrived.
    frame_started: Instant,
}

/// Per-connection permits of one request.
type ConnectionPermits = (StaticPermit, StaticPermit);

impl<R: AsyncRead + Unpin> Reader<R> {
    async fn run(mut self) {
        let end = loop {
            if let Err(end) = self.dispatch_buffered().await {
                break end;
            }
            if let Some(total) = self.pending_large_frame() {
                if let Err(end) = self.receive_large(total).await {
                    break end;
                }
                continue;
            }
            if let Err(end) = self.fill().await {
                break end;
            }
        };
        match end {
            End::Closed => {}
            End::ReadTimeout(header) => self.answer_read_timeout(header).await,
            End::Idle => debug!(shard = self.shard.id(), "closing an idle connection"),
            End::AuthenticationTimeout => self.answer_authentication_timeout().await,
        }
    }

    /// Starts every complete frame in the buffer.
    async fn dispatch_buffered(&mut self) -> Result<(), End> {
        let mut consumed = 0;
        loop {
            let frame = match self.decoder.decode(&self.buf[consumed..self.filled]) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    reject(&self.shard, &self.tx, &e).await;
                    return Err(End::Closed);
                }
            };
            let (header, wire_len) = (frame.header, frame.wire_len());
            let body = frame.body.to_vec();
            consumed += wire_len;
            let opcode = self.opcode(header).await?;
            if !self.admit(opcode, header, &body).await? {
                continue;
            }
            let permits = self.connection_permits(wire_len).await?;
            match self.net.budget.reserve(wire_len as u64).await {
                Some(budget) => self.start(opcode, header, body, (permits, budget)),
                None => self.answer_busy(header, wire_len).await,
            }
        }
        self.buf.copy_within(consumed..self.filled, 0);
        self.filled -= consumed;
        if consumed > 0 && self.filled > 0 {
            self.frame_started = Instant::now();
        }
        Ok(())
    }

    async fn opcode(&self, header: FrameHeader) -> Result<Opcode, End> {
        match Opcode::from_u16(header.opcode) {
            Some(opcode) => Ok(opcode),
            None => {
                let message = format!("unknown opcode {}", header.opcode);
                send_reply(
                    &self.shard,
                    &self.tx,
                    header,
                    Reply::error(Status::UnknownOpcode, message),
                )
                .await;
                Err(End::Closed)
            }
        }
    }

    /// Whether a request goes on to the handlers: the SCRAM steps are answered here, a request
    /// before authentication is refused (`NOT_AUTHENTICATED`, then the connection closes) and
    /// user administration by a principal not in `superusers` is refused (`NOT_AUTHORIZED`).
    async fn admit(
        &mut self,
        opcode: Opcode,
        header: FrameHeader,
        body: &[u8],
    ) -> Result<bool, End> {
        if matches!(opcode, Opcode::AuthStart | Opcode::AuthFinish) {
            self.authentication_step(opcode, header, body).await?;
            return Ok(false);
        }
        if !self.authenticated && opcode != Opcode::Ping {
            let message = format!(
                "{} needs an authenticated connection: this broker requires SCRAM (ringmq: --user NAME --password-file FILE) or a client certificate; closing",
                opcode.name()
            );
            self.answer(header, Reply::error(Status::NotAuthenticated, message))
                .await;
            return Err(End::Closed);
        }
        if let Some(message) = self.superuser_refusal(opcode) {
            self.answer(header, Reply::error(Status::NotAuthorized, message))
                .await;
            return Ok(false);
        }
        Ok(true)
    }

    /// The one check of the requests only `superusers` may make ([`needs_superuser`]): why
    /// this connection may not, or `None` when it may. With authentication off, user changes
    /// are refused to everyone (anyone could replace a user's keys; make users offline with
    /// `--store` before turning authentication on) and the rest is allowed as it always was.
    fn superuser_refusal(&self, opcode: Opcode) -> Option<String> {
        if !needs_superuser(opcode) {
            return None;
        }
        let config = self.shard.config();
        if config.authentication == Authentication::Off {
            return matches!(opcode, Opcode::UserCreate | Opcode::UserDelete).then(|| {
                format!(
                    "{}: users are changed online only with authentication = \"scram\" (by a superuser); with it off, change them on the stopped broker (ringmq user create NAME --store DIR)",
                    opcode.name()
                )
            });
        }
        let principal = self.peer.principal.as_ref();
        if principal.is_some_and(|p| config.superusers.iter().any(|s| s == p.as_str())) {
            return None;
        }
        Some(format!(
            "{} needs a principal in `superusers` while authentication is on; this connection's is {}",
            opcode.name(),
            principal.map_or("none".to_string(), |p| format!("`{p}`"))
        ))
    }

    /// One SCRAM step, answered in place. A failed step closes the connection. A connection
    /// that already has a principal (a certificate's, or an earlier exchange's) keeps it: a
    /// new exchange there is refused without closing.
    async fn authentication_step(
        &mut self,
        opcode: Opcode,
        header: FrameHeader,
        body: &[u8],
    ) -> Result<(), End> {
        if let Some(principal) = self.peer.principal.as_ref() {
            let message = format!("this connection is already authenticated as `{principal}`");
            self.answer(header, Reply::error(Status::BadRequest, message))
                .await;
            return Ok(());
        }
        let step = if opcode == Opcode::AuthStart {
            let users = self.shard.metadata().users();
            scram_steps::start(&users, body, &mut self.exchange)
        } else {
            scram_steps::finish(body, &mut self.exchange)
        };
        match step {
            Step::Continue(reply) => {
                self.answer(header, reply).await;
                Ok(())
            }
            Step::Authenticated(reply, principal) => {
                self.authenticated_as(principal);
                self.answer(header, reply).await;
                Ok(())
            }
            Step::Failed(reply) => {
                self.shard.probe().add(Counter::AuthenticationFailures, 1);
                self.answer(header, reply).await;
                Err(End::Closed)
            }
        }
    }

    fn authenticated_as(&mut self, principal: Principal) {
        debug!(shard = self.shard.id(), peer = %self.peer.addr, principal = %principal, "SCRAM authentication succeeded");
        self.peer = Rc::new(Peer {
            addr: self.peer.addr,
            principal: Some(principal),
        });
        self.authenticated = true;
        self.decoder.max_frame_bytes = self.shard.config().max_frame_bytes as usize;
    }

    async fn answer(&self, header: FrameHeader, reply: Reply) {
        send_reply(&self.shard, &self.tx, header, reply).await;
    }

    async fn answer_authentication_timeout(&self) {
        let message = format!(
            "authentication_timeout_ms: not authenticated within {} ms; closing the connection",
            self.shard.config().authentication_timeout_ms
        );
        debug!(shard = self.shard.id(), peer = %self.peer.addr, "{message}");
        send_reply(
            &self.shard,
            &self.tx,
            connection_error_header(),
            Reply::error(Status::NotAuthenticated, message),
        )
        .await;
    }

    /// [`Reader::receive_large`] for a frame that must pass [`Reader::admit`] first: read
    /// whole within the shard's budget, then admitted or answered.
    async fn receive_large_checked(
        &mut self,
        total: usize,
        header: FrameHeader,
        opcode: Opcode,
    ) -> Result<(), End> {
        let permits = self.connection_permits(total).await?;
        let Some((receiving, budget)) = self.net.budget.reserve_receiving(total as u64).await
        else {
            self.frame_started = Instant::now();
            self.answer_busy(header, total).await;
            return self
                .discard(total)
                .await
                .map_err(|end| with_header(end, header));
        };
        self.frame_started = Instant::now();
        let mut frame = vec![0u8; total];
        frame[..self.filled].copy_from_slice(&self.buf[..self.filled]);
        let mut got = self.filled;
        self.filled = 0;
        while got < total {
            got += self
                .read_frame_part(&mut frame, got, total)
                .await
                .map_err(|end| with_header(end, header))?;
        }
        drop(receiving);
        if let Err(e) = self.decoder.decode(&frame) {
            reject(&self.shard, &self.tx, &e).await;
            return Err(End::Closed);
        }
        if self
            .admit(opcode, header, &frame[FRAME_HEADER_BYTES..])
            .await?
        {
            self.start_at(opcode, header, frame, FRAME_HEADER_BYTES, (permits, budget));
        }
        Ok(())
    }

    /// Waits (back-pressure on this connection only) for a place among its requests in flight.
    async fn connection_permits(&self, wire_len: usize) -> Result<ConnectionPermits, End> {
        let count = self.requests.clone().acquire_static_permit(1).await;
        let cost = wire_len.min(MAX_INFLIGHT_BYTES_PER_CONNECTION) as u64;
        let bytes = self.request_bytes.clone().acquire_static_permit(cost).await;
        match (count, bytes) {
            (Ok(count), Ok(bytes)) => Ok((count, bytes)),
            _ => Err(End::Closed),
        }
    }

    /// Runs one request as its own task; its permits are held until its answer is queued.
    fn start(
        &self,
        opcode: Opcode,
        header: FrameHeader,
        frame: Vec<u8>,
        permits: (ConnectionPermits, BudgetPermit),
    ) {
        self.start_at(opcode, header, frame, 0, permits)
    }

    fn start_at(
        &self,
        opcode: Opcode,
        header: FrameHeader,
        frame: Vec<u8>,
        body_start: usize,
        permits: (ConnectionPermits, BudgetPermit),
    ) {
        let (shard, tx, activity) = (self.shard.clone(), self.tx.clone(), self.activity.clone());
        let peer = self.peer.clone();
        shard.lifecycle().request_started();
        spawn_local(observed(async move {
            let reply = handlers::handle_client(
                &shard,
                header,
                opcode,
                &frame[body_start..],
                peer.principal.as_ref(),
                Some(peer.addr),
            )
            .await;
            drop(frame);
            // No reply: a produce at level `none`, whose sender waits for no answer.
            if let Some(reply) = reply {
                send_reply(&shard, &tx, header, reply).await;
            }
            shard.lifecycle().request_finished();
            // The idle clock starts when the last request in flight is done.
            activity.set(Instant::now());
            drop(permits);
        }))
        .detach();
    }

    async fn answer_busy(&self, header: FrameHeader, wire_len: usize) {
        let message = format!(
            "shard_inflight_budget_bytes: shard {} had no room for a {wire_len}-byte request within {INFLIGHT_BUDGET_WAIT_MS} ms; retry later",
            self.shard.id()
        );
        let reply = Reply::error(Status::SystemBusy, message);
        // A produce that asked for `none` is never answered, not even SYSTEM_BUSY.
        if !handlers::withheld(&self.shard, header, &reply) {
            send_reply(&self.shard, &self.tx, header, reply).await;
        }
    }

    /// The size of the frame in the buffer when its header is complete and it cannot fit.
    fn pending_large_frame(&self) -> Option<usize> {
        if self.filled < FRAME_HEADER_BYTES {
            return None;
        }
        // `dispatch_buffered` has checked the header (magic, version, size) already.
        let length = u32::from_le_bytes(self.buf[0..4].try_into().expect("4 bytes")) as usize;
        let total = 4 + length;
        (total > self.buf.len()).then_some(total)
    }

    /// Reads a frame larger than the base buffer into its own buffer, once the shard's budget
    /// holds it; without budget the frame is answered `SYSTEM_BUSY` and its bytes dropped.
    async fn receive_large(&mut self, total: usize) -> Result<(), End> {
        let header = pending_header(&self.buf);
        let opcode = self.opcode(header).await?;
        if !self.authenticated || opcode_needs_admission(opcode) {
            // Never reached before authentication (the pre-authentication cap is below the
            // base buffer); a large step or user command is read whole and admitted as any.
            return self.receive_large_checked(total, header, opcode).await;
        }
        let permits = self.connection_permits(total).await?;
        let reserved = self.net.budget.reserve_receiving(total as u64).await;
        // The read deadline is the peer's to meet: time the broker spent not reading (waiting
        // for this connection's permits or the shard's budget) does not count against it.
        self.frame_started = Instant::now();
        let Some((receiving, budget)) = reserved else {
            self.answer_busy(header, total).await;
            return self
                .discard(total)
                .await
                .map_err(|end| with_header(end, header));
        };
        let mut frame = vec![0u8; total];
        frame[..self.filled].copy_from_slice(&self.buf[..self.filled]);
        let mut got = self.filled;
        self.filled = 0;
        while got < total {
            got += self
                .read_frame_part(&mut frame, got, total)
                .await
                .map_err(|end| with_header(end, header))?;
        }
        drop(receiving);
        match self.decoder.decode(&frame) {
            Ok(Some(_)) => {}
            Ok(None) => unreachable!("a whole frame was read"),
            Err(e) => {
                reject(&self.shard, &self.tx, &e).await;
                return Err(End::Closed);
            }
        }
        self.start_at(opcode, header, frame, FRAME_HEADER_BYTES, (permits, budget));
        Ok(())
    }

    async fn read_frame_part(
        &mut self,
        frame: &mut [u8],
        from: usize,
        to: usize,
    ) -> Result<usize, End> {
        let deadline = self.frame_started + self.net.timeouts.request_read;
        let n = read_or_expire(&mut self.stream, &mut frame[from..to], expire_at(deadline)).await?;
        self.received(n);
        Ok(n)
    }

    /// Reads and drops the rest of a frame of `total` bytes whose start is in the buffer.
    async fn discard(&mut self, total: usize) -> Result<(), End> {
        let mut remaining = total - self.filled;
        self.filled = 0;
        let deadline = self.frame_started + self.net.timeouts.request_read;
        while remaining > 0 {
            let chunk = remaining.min(self.buf.len());
            let n = read_or_expire(
                &mut self.stream,
                &mut self.buf[..chunk],
                expire_at(deadline),
            )
            .await?;
            self.received(n);
            remaining -= n;
        }
        Ok(())
    }

    /// Reads more bytes into the base buffer, within the read or the idle deadline (before
    /// authentication: within the authentication deadline).
    async fn fill(&mut self) -> Result<(), End> {
        let expire = if !self.authenticated {
            Expiry::Authentication(self.authentication_deadline)
        } else if self.filled > 0 {
            Expiry::At(self.frame_started + self.net.timeouts.request_read)
        } else {
            Expiry::Idle {
                idle: self.net.timeouts.idle,
                activity: self.activity.clone(),
                requests: self.requests.clone(),
            }
        };
        let was_empty = self.filled == 0;
        let n = read_or_expire(&mut self.stream, &mut self.buf[self.filled..], expire).await?;
        if let Some(fd) = self.answer_client_hello {
            // Decided on the first few bytes, however they arrive; no frame is dispatched
            // before then (a header is longer than what decides).
            match opening(&self.buf[..self.filled + n]) {
                Opening::ClientHello => {
                    answer_client_hello(fd, &self.peer);
                    return Err(End::Closed);
                }
                Opening::Plaintext => self.answer_client_hello = None,
                Opening::Undecided => {}
            }
        }
        if was_empty {
            self.frame_started = Instant::now();
        }
        self.filled += n;
        self.received(n);
        Ok(())
    }

    fn received(&self, n: usize) {
        self.activity.set(Instant::now());
        self.shard.probe().add(Counter::BytesIn, n as u64);
    }

    async fn answer_read_timeout(&self, header: Option<FrameHeader>) {
        let header = match header {
            Some(header) => header,
            None if self.filled >= FRAME_HEADER_BYTES => pending_header(&self.buf),
            None => connection_error_header(),
        };
        let message = format!(
            "request_read_timeout_ms: a frame started {} ms ago is still incomplete; closing the connection",
            self.frame_started.elapsed().as_millis()
        );
        debug!(shard = self.shard.id(), "{message}");
        let reply = Reply::error(Status::BadRequest, message);
        // The connection closes either way; a produce that asked for `none` gets no answer.
        if !handlers::withheld(&self.shard, header, &reply) {
            send_reply(&self.shard, &self.tx, header, reply).await;
        }
    }
}

/// Requests [`Reader::admit`] looks at even on an authenticated connection.
fn opcode_needs_admission(opcode: Opcode) -> bool {
    matches!(opcode, Opcode::AuthStart | Opcode::AuthFinish) || needs_superuser(opcode)
}

/// Requests kept to `superusers` while authentication is on: user administration, and the
/// role changes (a demoted broker follows the master it is pointed at and copies its users,
/// so demotion hands over the user table). The ACL round adds finer rules beside this one.
fn needs_superuser(opcode: Opcode) -> bool {
    matches!(
        opcode,
        Opcode::UserCreate
            | Opcode::UserDelete
            | Opcode::UserList
            | Opcode::ClusterPromote
            | Opcode::ClusterDemote
    )
}

/// Names the frame a read timeout belongs to, once its header has left the base buffer.
fn with_header(end: End, header: FrameHeader) -> End {
    match end {
        End::ReadTimeout(None) => End::ReadTimeout(Some(header)),
        other => other,
    }
}

/// When a read gives up.
enum Expiry {
    /// A started frame must be complete by then.
    At(Instant),
    /// Before authentication: the connection must have authenticated by then.
    Authentication(Instant),
    /// Between frames: when nothing has been in flight and nothing has moved for `idle`.
    Idle {
        idle: Duration,
        activity: Rc<Cell<Instant>>,
        requests: Rc<Semaphore>,
    },
}

fn expire_at(deadline: Instant) -> Expiry {
    Expiry::At(deadline)
}

impl Expiry {
    async fn wait(self) -> End {
        match self {
            Expiry::At(deadline) => {
                sleep(deadline.saturating_duration_since(Instant::now())).await;
                End::ReadTimeout(None)
            }
            Expiry::Authentication(deadline) => {
                sleep(deadline.saturating_duration_since(Instant::now())).await;
                End::AuthenticationTimeout
            }
            Expiry::Idle {
                idle,
                activity,
                requests,
            } => loop {
                let now = Instant::now();
                let in_flight = requests.available() < MAX_INFLIGHT_REQUESTS_PER_CONNECTION as u64;
                // A request in flight (a long-poll pull, say) keeps the connection busy.
                let since = if in_flight { now } else { activity.get() };
                let deadline = since + idle;
                if deadline <= now {
                    return End::Idle;
                }
                sleep(deadline - now).await;
            },
        }
    }
}

/// Reads into `into` unless `expire` comes first. glommio's socket read waits for readiness
/// and then reads, so abandoning it loses no bytes.
async fn read_or_expire<R: AsyncRead + Unpin>(
    stream: &mut R,
    into: &mut [u8],
    expire: Expiry,
) -> Result<usize, End> {
    let read = async {
        match stream.read(into).await {
            Ok(0) | Err(_) => Err(End::Closed),
            Ok(n) => Ok(n),
        }
    };
    future::or(read, async { Err(expire.wait().await) }).await
}

/// Sends the TLS alert of a plaintext port to a client that opened with a ClientHello, and
/// ends the socket (the writer task then finds it closed).
fn answer_client_hello(fd: RawFd, peer: &Peer) {
    debug!(peer = %peer.addr, "a TLS ClientHello on a plaintext port; answering with a TLS alert");
    // SAFETY: a send of 7 bytes from a local array on a socket this connection owns; a fresh
    // connection's send buffer always has room, and a failure changes nothing (it closes).
    unsafe {
        libc::send(
            fd,
            PLAINTEXT_PORT_ALERT.as_ptr() as *const libc::c_void,
            PLAINTEXT_PORT_ALERT.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    shutdown_both(fd);
}

/// The header of the frame at the start of `buf`, which holds at least a whole header.
fn pending_header(buf: &[u8]) -> FrameHeader {
    debug_assert!(buf.len() >= FRAME_HEADER_BYTES && buf[6] == PROTOCOL_VERSION);
    FrameHeader {
        flags: buf[7],
        opcode: u16::from_le_bytes([buf[8], buf[9]]),
        status: 0,
        request_id: u64::from_le_bytes(buf[12..20].try_into().expect("8 bytes")),
    }
}

/// The header of an answer that belongs to no request: opcode 0, request id 0.
fn connection_error_header() -> FrameHeader {
    FrameHeader {
        opcode: 0,
        ..FrameHeader::request(Opcode::Ping, 0)
    }
}

fn response_frame(request: FrameHeader, reply: Reply) -> Vec<u8> {
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + reply.body.len());
    frame_response(&mut frame, Response { request, reply });
    frame
}

/// Appends the frame of one answer to `out`.
fn frame_response(out: &mut Vec<u8>, response: Response) {
    let Response { request, reply } = response;
    encode_frame(
        out,
        FrameHeader::response(request.opcode, reply.status, request.request_id),
        &reply.body,
    );
}

/// Queues a response for the writer, counted in `responses_unwritten` until it is written.
async fn send_reply(shard: &Shard, tx: &LocalSender<Response>, request: FrameHeader, reply: Reply) {
    shard.lifecycle().response_queued();
    if tx.send(Response { request, reply }).await.is_err() {
        shard.lifecycle().response_written();
    }
}

async fn reject(shard: &Shard, tx: &LocalSender<Response>, error: &FrameError) {
    debug!("closing a connection: {error}");
    let header = FrameHeader {
        request_id: error.request_id(),
        ..connection_error_header()
    };
    send_reply(
        shard,
        tx,
        header,
        Reply::error(error.status(), error.to_string()),
    )
    .await;
}

/// Answers a connection the broker does not admit with `SYSTEM_BUSY` and closes it. What
/// the peer sent meanwhile is read and dropped until it closes too (within `timeout`): closing
/// with unread bytes would reset the connection and could discard the answer on its way.
pub async fn refuse(stream: TcpStream, reason: String, timeout: Duration) {
    answer_and_close(stream, Status::SystemBusy, reason, timeout).await
}

/// [`refuse`] on a TLS port: the refusal goes out inside a TLS session (a plaintext frame
/// would read as a broken handshake), all of it, handshake included, within `timeout`.
pub async fn refuse_tls(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    reason: String,
    timeout: Duration,
) {
    let _ = stream.set_write_timeout(Some(timeout));
    let answer = async {
        let acceptor = futures_rustls::TlsAcceptor::from(config);
        let mut session = acceptor.accept(stream).await.ok()?;
        let frame = response_frame(
            connection_error_header(),
            Reply::error(Status::SystemBusy, reason),
        );
        session.write_all(&frame).await.ok()?;
        session.flush().await.ok()?;
        // Read and drop what the peer sent until it closes, as `refuse` does.
        let mut sink = [0u8; 4096];
        while matches!(session.read(&mut sink).await, Ok(n) if n > 0) {}
        Some(())
    };
    future::or(answer, async {
        sleep(timeout).await;
        None
    })
    .await;
}

/// Answers a connection with one error frame that belongs to no request, then closes it as
/// [`refuse`] says.
async fn answer_and_close(
    mut stream: TcpStream,
    status: Status,
    reason: String,
    timeout: Duration,
) {
    let frame = response_frame(connection_error_header(), Reply::error(status, reason));
    let _ = stream.set_write_timeout(Some(timeout));
    if stream.write_all(&frame).await.is_err() {
        return;
    }
    let _ = stream.close().await;
    let drain = async {
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    future::or(drain, sleep(timeout)).await;
}
