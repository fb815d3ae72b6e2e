//! One pipelined connection to one broker port.
//!
//! Requests are written whole (one `write_all` per frame) with increasing request ids starting
//! at 1; id 0 is never used, so a response with id 0 is the broker's answer to a frame it could
//! not attribute (bad magic, short length) just before it closes the connection. Responses are
//! read into `read_buf`, parsed with [`FrameDecoder`], and handed out in arrival order; a
//! response that arrives while the caller waits for another id is parked in `arrived`.
//!
//! A produce sent at level `none` ([`Connection::send_with_acks`]) takes no place among the
//! requests in flight: the broker writes no answer to it, so nothing waits for one. A broker
//! whose `min_acks` raised it does answer; that answer is recognised by its id and dropped.
//! A caller that only sends `none` never reads, so each such send also drains, without
//! waiting, what the socket already holds ([`Connection::drain_ready`]): otherwise raised
//! answers would fill both socket buffers and stall the broker's connection. Dropping a
//! connection that sent `none` produces first shuts its write side and reads to the broker's
//! close (at most `CLOSE_DRAIN_TIMEOUT`): closing with unread answers would reset the
//! connection, and the broker could lose the last frames it had not read yet.

use super::error::ClientError;
use super::tls::{explain, ClientTls};
use super::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_FRAME_BYTES, DEFAULT_READ_TIMEOUT, DEFAULT_WRITE_TIMEOUT,
    READ_CHUNK_BYTES,
};
use crate::protocol::codec::DecodeError;
use crate::protocol::frame::{begin_frame, finish_frame, FrameHeader};
use crate::protocol::message::decode_error_message;
use crate::protocol::{Acks, FrameDecoder, Opcode, Status};
use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// `none` produces whose ids a connection remembers, to drop their answers if a broker raised
/// their level. 4096 ids are 32 KiB; an answer to an older one is still recognised (see
/// `one_way_forgotten_through`), so the bound costs only precision, never a broken connection.
const MAX_ONE_WAY_REMEMBERED: usize = 4096;

/// How long dropping a connection that sent `none` produces waits for the broker to read
/// them all and close: long enough for a broker that has a backlog of appends, short enough
/// that a broker that stopped answering does not hold a producer's exit for long.
const CLOSE_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
pub struct ConnectionOptions {
    pub connect_timeout: Duration,
    /// How long one request may wait for its response.
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub max_frame_bytes: usize,
    /// TLS for every connection made with these options; `None`: plaintext.
    pub tls: Option<&'static ClientTls>,
    /// SCRAM credentials every connection made with these options authenticates with before
    /// its first request; `None`: no authentication.
    pub scram: Option<&'static crate::scram::ClientScram>,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        ConnectionOptions {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            tls: super::tls::default_tls(),
            scram: crate::scram::default_scram(),
        }
    }
}

/// A response frame, owning its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub header: FrameHeader,
    pub body: Vec<u8>,
}

impl Response {
    pub fn request_id(&self) -> u64 {
        self.header.request_id
    }

    /// The status, or a protocol error when the broker sent a value this client does not know.
    pub fn status(&self, addr: &str) -> Result<Status, ClientError> {
        Status::from_u16(self.header.status).ok_or_else(|| ClientError::Protocol {
            addr: addr.to_string(),
            reason: format!("unknown status {}", self.header.status),
        })
    }

    /// Splits body statuses (OK and "stored but the guarantee was not met") from error
    /// statuses, whose body is a message.
    pub fn into_result(self, addr: &str) -> Result<(Status, Vec<u8>), ClientError> {
        let status = self.status(addr)?;
        if status.has_body() {
            Ok((status, self.body))
        } else {
            Err(ClientError::Status {
                status,
                message: decode_error_message(&self.body),
            })
        }
    }
}

/// The bytes of one connection: the socket itself, or a TLS session over it.
enum Transport {
    Plain(TcpStream),
    /// Boxed: a session holds rustls's buffers, large beside a bare socket.
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Transport {
    fn socket(&self) -> &TcpStream {
        match self {
            Transport::Plain(stream) => stream,
            Transport::Tls(session) => &session.sock,
        }
    }
}

impl Transport {
    /// One read that never waits: bytes ready now (plaintext under TLS), `WouldBlock` when
    /// there are none. The socket stays in blocking mode for every other read.
    fn read_nonblocking(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Transport::Plain(stream) => {
                // SAFETY: `buf` is a valid, exclusively borrowed buffer of `buf.len()` bytes
                // and the descriptor is this connection's own socket. MSG_DONTWAIT makes this
                // one read non-blocking without changing the socket's mode.
                let n = unsafe {
                    libc::recv(
                        stream.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n >= 0 {
                    Ok(n as usize)
                } else {
                    Err(std::io::Error::last_os_error())
                }
            }
            Transport::Tls(session) => {
                // Plaintext rustls already decrypted first; then at most one socket read, in
                // non-blocking mode for its duration only.
                match session.conn.reader().read(buf) {
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(0),
                    other => return other,
                }
                session.sock.set_nonblocking(true)?;
                let result = tls_read(&mut session.conn, &mut session.sock, buf);
                session.sock.set_nonblocking(false)?;
                match result {
                    // Records arrived but no plaintext yet: nothing to hand over now.
                    Err(e) if e.kind() == ErrorKind::Interrupted => {
                        Err(ErrorKind::WouldBlock.into())
                    }
                    other => other,
                }
            }
        }
    }

    fn shutdown_write(&mut self) -> std::io::Result<()> {
        if let Transport::Tls(session) = self {
            session.conn.send_close_notify();
            write_records(&mut session.conn, &mut session.sock)?;
        }
        self.socket().shutdown(std::net::Shutdown::Write)
    }
}

impl Read for Transport {
    /// On TLS, at most one socket read per call, so the caller's deadline (the socket's read
    /// timeout, set before each call) holds: a read that brought records but no plaintext yet
    /// answers `Interrupted`, and the caller re-arms the timeout with what is left and calls
    /// again. rustls's own `Stream` loops over socket reads inside one call instead.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Transport::Plain(stream) => stream.read(buf),
            Transport::Tls(session) => tls_read(&mut session.conn, &mut session.sock, buf),
        }
    }
}

impl Write for Transport {
    /// On TLS, the records of `buf` are written to the socket before this returns, and a
    /// socket error (the write timeout included) is returned: rustls's own `Stream` buffers
    /// them and drops the socket's error.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Transport::Plain(stream) => stream.write(buf),
            Transport::Tls(session) => {
                let (conn, sock) = (&mut session.conn, &mut session.sock);
                write_records(conn, sock)?;
                let n = conn.writer().write(buf)?;
                write_records(conn, sock)?;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.flush(),
            Transport::Tls(session) => {
                write_records(&mut session.conn, &mut session.sock)?;
                session.sock.flush()
            }
        }
    }
}

/// Writes every TLS record the session holds, propagating the socket's errors.
fn write_records(conn: &mut rustls::ClientConnection, sock: &mut TcpStream) -> std::io::Result<()> {
    while conn.wants_write() {
        if conn.write_tls(sock)? == 0 {
            return Err(ErrorKind::WriteZero.into());
        }
    }
    Ok(())
}

/// One step of a TLS read: plaintext the session already holds, else one socket read.
fn tls_read(
    conn: &mut rustls::ClientConnection,
    sock: &mut TcpStream,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match conn.reader().read(buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        // Ok(0) after the broker's close_notify; an end without one reads as a close too.
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(0),
        other => return other,
    }
    let at_eof = conn.read_tls(sock)? == 0;
    let processed = conn.process_new_packets();
    // An alert the session queued (on an error, say) goes out best-effort; a key update's
    // answer must.
    let written = write_records(conn, sock);
    if let Err(e) = processed {
        return Err(std::io::Error::new(ErrorKind::InvalidData, e));
    }
    written?;
    match conn.reader().read(buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock && at_eof => Ok(0),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Err(ErrorKind::Interrupted.into()),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(0),
        other => other,
    }
}

/// Runs the TLS handshake to its end within the connect timeout, so a refused certificate
/// or a plaintext port is reported by `connect`, not by the first request.
fn start_tls(
    tls: &ClientTls,
    addr: &str,
    stream: TcpStream,
    timeout: Duration,
) -> Result<Transport, ClientError> {
    let tls_err = |reason| ClientError::Tls {
        addr: addr.to_string(),
        reason,
    };
    let mut session = tls.session(addr).map_err(tls_err)?;
    let mut stream = stream;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|source| ClientError::Io {
            addr: addr.to_string(),
            source,
        })?;
    while session.is_handshaking() {
        if let Err(e) = session.complete_io(&mut stream) {
            return Err(match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => ClientError::Timeout {
                    addr: addr.to_string(),
                    after: timeout,
                },
                // A reset is what a broker does to a handshake it has no place for (its
                // tls_max_handshakes_per_shard are all taken); a close, what it does after
                // refusing what the client sent.
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => tls_err(
                    "the broker reset the connection during the TLS handshake: it is busy or refusing connections (too many handshakes at once); retry later".to_string(),
                ),
                ErrorKind::UnexpectedEof => tls_err(
                    "the broker closed the connection during the TLS handshake (it may want a client certificate: --tls-cert, --tls-key; or the port is not TLS)".to_string(),
                ),
                _ => tls_err(explain(&e)),
            });
        }
    }
    Ok(Transport::Tls(Box::new(rustls::StreamOwned::new(
        session, stream,
    ))))
}

/// An I/O error, or the TLS error inside it as a sentence: under TLS 1.3 a broker refuses a
/// client certificate after the client's side of the handshake is done, so the refusal
/// arrives with the first read.
fn io_or_tls(addr: &str, source: std::io::Error) -> ClientError {
    let is_tls = source
        .get_ref()
        .is_some_and(|inner| inner.is::<rustls::Error>());
    if is_tls {
        ClientError::Tls {
            addr: addr.to_string(),
            reason: explain(&source),
        }
    } else {
        ClientError::Io {
            addr: addr.to_string(),
            source,
        }
    }
}

pub struct Connection {
    addr: String,
    stream: Transport,
    options: ConnectionOptions,
    decoder: FrameDecoder,
    /// Bytes read from the socket and not yet handed out as frames; at most one partial frame
    /// plus one read chunk beyond the frames already complete.
    read_buf: Vec<u8>,
    read_start: usize,
    /// Reused for every request so sending allocates only when a request outgrows it.
    write_buf: Vec<u8>,
    next_request_id: u64,
    /// Requests sent and not yet answered, with their opcode to check the response against.
    /// Bounded by the caller's window: the connection never sends on its own.
    in_flight: HashMap<u64, Opcode>,
    /// Responses read while waiting for another id, in arrival order.
    arrived: VecDeque<Response>,
    /// Ids of the newest `none` produces sent here, increasing (at most
    /// `MAX_ONE_WAY_REMEMBERED`).
    one_way: VecDeque<u64>,
    /// The newest `none` produce id dropped from `one_way`: a produce answer at or below it
    /// that nothing waits for belongs to one of those.
    one_way_forgotten_through: u64,
    /// Whether a `none` produce was ever sent here: then a drop drains before closing.
    sent_one_way: bool,
    broken: bool,
}

impl Connection {
    pub fn connect(addr: &str, options: ConnectionOptions) -> Result<Connection, ClientError> {
        let io_err = |source| ClientError::Io {
            addr: addr.to_string(),
            source,
        };
        let mut last_error = None;
        let mut stream = None;
        for socket_addr in addr.to_socket_addrs().map_err(io_err)? {
            match connect_to(&socket_addr, options.connect_timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        let stream = match (stream, last_error) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(io_err(e)),
            (None, None) => {
                return Err(ClientError::InvalidArgument(format!(
                    "{addr} resolves to no address"
                )))
            }
        };
        // Requests are small and latency-bound; Nagle would hold a pipelined tail back.
        stream.set_nodelay(true).map_err(io_err)?;
        stream
            .set_write_timeout(Some(options.write_timeout))
            .map_err(io_err)?;
        let stream = match options.tls {
            None => Transport::Plain(stream),
            Some(tls) => start_tls(tls, addr, stream, options.connect_timeout)?,
        };
        let mut connection = Connection {
            addr: addr.to_string(),
            stream,
            options,
            decoder: FrameDecoder::new(options.max_frame_bytes),
            read_buf: Vec::with_capacity(READ_CHUNK_BYTES),
            read_start: 0,
            write_buf: Vec::new(),
            next_request_id: 1,
            in_flight: HashMap::new(),
            arrived: VecDeque::new(),
            one_way: VecDeque::new(),
            one_way_forgotten_through: 0,
            sent_one_way: false,
            broken: false,
        };
        if let Some(scram) = options.scram {
            crate::scram::authenticate(&mut connection, scram)?;
        }
        Ok(connection)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The socket of a plaintext connection with nothing in flight or buffered, for a caller
    /// that frames its own requests after this connection authenticated (the bench's event
    /// loop). `None` on TLS (the session's state cannot leave it) or with bytes pending.
    pub fn into_plaintext_socket(self) -> Option<TcpStream> {
        let idle = self.in_flight.is_empty()
            && self.arrived.is_empty()
            && self.read_start >= self.read_buf.len()
            && !self.broken;
        match &self.stream {
            Transport::Plain(stream) if idle => stream.try_clone().ok(),
            _ => None,
        }
    }

    pub fn options(&self) -> ConnectionOptions {
        self.options
    }

    /// Whether an earlier error left the stream unusable (closed, misaligned, I/O failure).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Requests sent and not yet handed to the caller: unanswered, or answered and parked
    /// (read while waiting for another id, or by [`drain_ready`](Self::drain_ready)).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len() + self.arrived.len()
    }

    /// Whether the broker closed (or reset) this connection while nothing was in flight on
    /// it: checked without blocking, so a caller can reconnect instead of writing a request
    /// into a socket that is already gone, after which its fate would be unknown. A
    /// connection with requests in flight or answers buffered is not examined (its answers
    /// come first). Marks the connection broken when it was closed.
    pub fn peer_closed(&mut self) -> bool {
        if self.broken {
            return true;
        }
        if !self.in_flight.is_empty() || self.has_buffered_response() {
            return false;
        }
        let mut fd = libc::pollfd {
            fd: self.stream.socket().as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd whose descriptor this connection owns; zero timeout.
        let ready = unsafe { libc::poll(&mut fd, 1, 0) };
        let hung_up = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR;
        if ready > 0 && fd.revents & hung_up != 0 {
            self.broken = true;
        }
        self.broken
    }

    /// Sends a request and returns its id without waiting for the response.
    pub fn send(&mut self, opcode: Opcode, body: &[u8]) -> Result<u64, ClientError> {
        self.send_with(opcode, |out| out.extend_from_slice(body))
    }

    /// Like [`send`](Self::send), with the body encoded straight into the frame buffer.
    pub fn send_with(
        &mut self,
        opcode: Opcode,
        encode_body: impl FnOnce(&mut Vec<u8>),
    ) -> Result<u64, ClientError> {
        self.send_with_acks(opcode, None, encode_body)
    }

    /// Like [`send_with`](Self::send_with), naming an acknowledgement level in the frame's
    /// flags (only `Produce` may; `None`: the broker's default). At `Acks::None` the request
    /// is not in flight once written: no answer is waited for (see the module comment).
    pub fn send_with_acks(
        &mut self,
        opcode: Opcode,
        acks: Option<Acks>,
        encode_body: impl FnOnce(&mut Vec<u8>),
    ) -> Result<u64, ClientError> {
        let request_id = self.next_request_id;
        self.write_buf.clear();
        let start = begin_frame(
            &mut self.write_buf,
            FrameHeader::request(opcode, request_id).with_acks(acks),
        );
        encode_body(&mut self.write_buf);
        if self.write_buf.len() > self.options.max_frame_bytes {
            return Err(ClientError::InvalidArgument(format!(
                "{opcode:?} request of {} bytes exceeds the maximum frame size of {} bytes",
                self.write_buf.len(),
                self.options.max_frame_bytes
            )));
        }
        finish_frame(&mut self.write_buf, start);
        if let Err(source) = self.stream.write_all(&self.write_buf) {
            self.broken = true;
            return Err(match source.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => ClientError::Timeout {
                    addr: self.addr.clone(),
                    after: self.options.write_timeout,
                },
                _ => io_or_tls(&self.addr, source),
            });
        }
        self.next_request_id += 1;
        if acks == Some(Acks::None) {
            self.remember_one_way(request_id);
            self.sent_one_way = true;
            // The send went out whatever this finds: a failure here (the broker closed, a
            // bad frame) marks the connection broken, and the next request reports it.
            let _ = self.drain_ready();
        } else {
            self.in_flight.insert(request_id, opcode);
        }
        Ok(request_id)
    }

    /// Reads what the socket holds now, without waiting: answers to `none` produces are
    /// dropped, every other response is checked and parked for its caller (`recv`, `wait`).
    pub fn drain_ready(&mut self) -> Result<(), ClientError> {
        loop {
            self.park_buffered()?;
            if !self.read_ready()? {
                return Ok(());
            }
        }
    }

    /// The next response if one can be had without waiting ([`drain_ready`](Self::drain_ready)
    /// first): `None` when the socket held only answers to `none` produces, or nothing.
    pub fn try_recv(&mut self) -> Result<Option<Response>, ClientError> {
        if self.arrived.is_empty() {
            self.drain_ready()?;
        }
        Ok(self.arrived.pop_front())
    }

    /// Moves every complete frame of `read_buf` to `arrived`, dropping answers to `none`
    /// produces.
    fn park_buffered(&mut self) -> Result<(), ClientError> {
        loop {
            let (response, wire_len) = match self.decoder.decode(&self.read_buf[self.read_start..])
            {
                Ok(Some(frame)) => (
                    Response {
                        header: frame.header,
                        body: frame.body.to_vec(),
                    },
                    frame.wire_len(),
                ),
                Ok(None) => return Ok(()),
                Err(source) => {
                    self.broken = true;
                    return Err(ClientError::Frame {
                        addr: self.addr.clone(),
                        source,
                    });
                }
            };
            self.read_start += wire_len;
            if !self.answers_one_way(&response.header) {
                let response = self.accept(response)?;
                self.arrived.push_back(response);
            }
        }
    }

    /// One non-blocking read into `read_buf`: whether it got bytes. The broker's close or an
    /// I/O error marks the connection broken.
    fn read_ready(&mut self) -> Result<bool, ClientError> {
        self.read_buf.drain(..self.read_start);
        self.read_start = 0;
        let filled = self.read_buf.len();
        self.read_buf.resize(filled + READ_CHUNK_BYTES, 0);
        let result = loop {
            match self.stream.read_nonblocking(&mut self.read_buf[filled..]) {
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        self.read_buf
            .truncate(filled + *result.as_ref().unwrap_or(&0));
        match result {
            Ok(0) => {
                self.broken = true;
                Err(ClientError::ConnectionClosed {
                    addr: self.addr.clone(),
                })
            }
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(false),
            Err(source) => {
                self.broken = true;
                Err(ClientError::Io {
                    addr: self.addr.clone(),
                    source,
                })
            }
        }
    }

    /// Sends a request and waits for its response.
    pub fn call(&mut self, opcode: Opcode, body: &[u8]) -> Result<Response, ClientError> {
        let id = self.send(opcode, body)?;
        self.wait(id)
    }

    /// The next response in arrival order (parked ones first).
    pub fn recv(&mut self) -> Result<Response, ClientError> {
        self.recv_within(self.options.read_timeout)
    }

    pub fn recv_within(&mut self, timeout: Duration) -> Result<Response, ClientError> {
        if let Some(response) = self.arrived.pop_front() {
            return Ok(response);
        }
        let deadline = Instant::now() + timeout;
        self.read_response(deadline, timeout)
    }

    /// Waits for the response to request `request_id`, parking any others that arrive first.
    pub fn wait(&mut self, request_id: u64) -> Result<Response, ClientError> {
        self.wait_within(request_id, self.options.read_timeout)
    }

    pub fn wait_within(
        &mut self,
        request_id: u64,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        if let Some(at) = self
            .arrived
            .iter()
            .position(|r| r.request_id() == request_id)
        {
            return Ok(self.arrived.remove(at).expect("position is in range"));
        }
        if !self.in_flight.contains_key(&request_id) {
            return Err(ClientError::InvalidArgument(format!(
                "request {request_id} is not in flight on {}",
                self.addr
            )));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let response = self.read_response(deadline, timeout)?;
            if response.request_id() == request_id {
                return Ok(response);
            }
            self.arrived.push_back(response);
        }
    }

    /// Whether [`recv`](Self::recv) can return without reading the socket: a parked
    /// response, or a complete frame in the buffer that is not an answer to a `none` produce
    /// (`recv` would drop that and read on), or one that does not decode (an error now).
    pub fn has_buffered_response(&self) -> bool {
        if !self.arrived.is_empty() {
            return true;
        }
        let mut at = self.read_start;
        loop {
            match self.decoder.decode(&self.read_buf[at..]) {
                Ok(None) => return false,
                Err(_) => return true,
                Ok(Some(frame)) if self.is_one_way_answer(&frame.header) => {
                    at += frame.wire_len();
                }
                Ok(Some(_)) => return true,
            }
        }
    }

    fn read_response(
        &mut self,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        loop {
            let response = self.read_frame(deadline, timeout)?;
            if !self.answers_one_way(&response.header) {
                return self.accept(response);
            }
        }
    }

    fn remember_one_way(&mut self, request_id: u64) {
        if self.one_way.len() == MAX_ONE_WAY_REMEMBERED {
            if let Some(oldest) = self.one_way.pop_front() {
                self.one_way_forgotten_through = oldest;
            }
        }
        self.one_way.push_back(request_id);
    }

    /// Whether `header` answers a `none` produce (its level raised by the broker): then it
    /// is dropped, and its id forgotten.
    fn answers_one_way(&mut self, header: &FrameHeader) -> bool {
        if !self.is_one_way_answer(header) {
            return false;
        }
        if let Ok(at) = self.one_way.binary_search(&header.request_id) {
            self.one_way.remove(at);
        }
        true
    }

    fn is_one_way_answer(&self, header: &FrameHeader) -> bool {
        let id = header.request_id;
        if !header.is_response()
            || header.opcode != Opcode::Produce as u16
            || self.in_flight.contains_key(&id)
        {
            return false;
        }
        self.one_way.binary_search(&id).is_ok() || (id != 0 && id <= self.one_way_forgotten_through)
    }

    /// Shuts the write side and reads (dropping everything) until the broker closes, at most
    /// `timeout`: the broker then has read every frame sent here.
    fn drain_to_close(&mut self, timeout: Duration) {
        if self.stream.shutdown_write().is_err() {
            return;
        }
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero()
                || self
                    .stream
                    .socket()
                    .set_read_timeout(Some(remaining))
                    .is_err()
            {
                return;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Checks a response against what is in flight.
    fn accept(&mut self, response: Response) -> Result<Response, ClientError> {
        let header = response.header;
        if !header.is_response() {
            return Err(self.violation(format!(
                "frame for request {} is not marked as a response",
                header.request_id
            )));
        }
        match self.in_flight.remove(&header.request_id) {
            Some(opcode) if opcode as u16 == header.opcode => Ok(response),
            Some(opcode) => Err(self.violation(format!(
                "response to request {} has opcode {}, expected {opcode:?}",
                header.request_id, header.opcode
            ))),
            None if header.request_id == 0 => {
                // The broker could not attribute one of our frames and closes the connection.
                self.broken = true;
                let status = response.status(&self.addr)?;
                Err(ClientError::Status {
                    status,
                    message: decode_error_message(&response.body),
                })
            }
            None => Err(self.violation(format!(
                "response for request {} that is not in flight",
                header.request_id
            ))),
        }
    }

    fn violation(&mut self, reason: String) -> ClientError {
        self.broken = true;
        ClientError::Protocol {
            addr: self.addr.clone(),
            reason,
        }
    }

    fn read_frame(
        &mut self,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        loop {
            match self.decoder.decode(&self.read_buf[self.read_start..]) {
                Ok(Some(frame)) => {
                    let response = Response {
                        header: frame.header,
                        body: frame.body.to_vec(),
                    };
                    self.read_start += frame.wire_len();
                    return Ok(response);
                }
                Ok(None) => {}
                Err(source) => {
                    self.broken = true;
                    return Err(ClientError::Frame {
                        addr: self.addr.clone(),
                        source,
                    });
                }
            }
            self.fill(deadline, timeout)?;
        }
    }

    /// Reads at least one more byte, or fails with timeout, close or I/O error.
    fn fill(&mut self, deadline: Instant, timeout: Duration) -> Result<(), ClientError> {
        // Only a partial frame remains in front of `read_start`: moving it is cheap.
        self.read_buf.drain(..self.read_start);
        self.read_start = 0;
        let filled = self.read_buf.len();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(self.timeout(timeout));
            }
            let io_err = |source| ClientError::Io {
                addr: self.addr.clone(),
                source,
            };
            self.stream
                .socket()
                .set_read_timeout(Some(remaining))
                .map_err(io_err)?;
            self.read_buf.resize(filled + READ_CHUNK_BYTES, 0);
            let result = self.stream.read(&mut self.read_buf[filled..]);
            self.read_buf
                .truncate(filled + *result.as_ref().unwrap_or(&0));
            match result {
                Ok(0) => {
                    self.broken = true;
                    return Err(ClientError::ConnectionClosed {
                        addr: self.addr.clone(),
                    });
                }
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(self.timeout(timeout));
                }
                Err(source) => {
                    self.broken = true;
                    return Err(io_or_tls(&self.addr, source));
                }
            }
        }
    }

    fn timeout(&self, after: Duration) -> ClientError {
        ClientError::Timeout {
            addr: self.addr.clone(),
            after,
        }
    }

    /// Decodes a response body with context for the error.
    pub fn decode<T>(
        &self,
        what: &'static str,
        body: &[u8],
        decode: impl FnOnce(&[u8]) -> Result<T, DecodeError>,
    ) -> Result<T, ClientError> {
        decode(body).map_err(|source| ClientError::Decode {
            addr: self.addr.clone(),
            what,
            source,
        })
    }
}

/// Connects to `addr`, never returning a connection to itself. With the broker down and its
/// port inside the ephemeral range, the kernel can pick that very port as the local end, and
/// the connect succeeds against itself (TCP simultaneous open); kept, it would hold the port
/// the broker needs to restart. Such a connection is reset at once (no TIME_WAIT) and the
/// connect tried again, which picks another local port and so fails like any connect to a
/// port nobody listens on.
fn connect_to(addr: &SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    for _ in 0..SELF_CONNECT_ATTEMPTS {
        let stream = TcpStream::connect_timeout(addr, timeout)?;
        if !is_self_connection(&stream) {
            return Ok(stream);
        }
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    }
    Err(std::io::Error::new(
        ErrorKind::ConnectionRefused,
        format!("{addr}: connected to itself (nothing listens there); dropped the connection"),
    ))
}

/// Attempts per address when a connect lands on itself: the second one takes another local
/// port, so three are plenty.
const SELF_CONNECT_ATTEMPTS: usize = 3;

/// Whether the two ends of a connected socket are the same address (a self-connection).
pub fn is_self_connection(socket: &impl AsRawFd) -> bool {
    let socket = socket2::SockRef::from(socket);
    let (local, peer) = (socket.local_addr(), socket.peer_addr());
    matches!(
        (local.map(|a| a.as_socket()), peer.map(|a| a.as_socket())),
        (Ok(Some(local)), Ok(Some(peer))) if local == peer
    )
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.sent_one_way && !self.broken {
            self.drain_to_close(CLOSE_DRAIN_TIMEOUT);
        }
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.socket().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::{Domain, Protocol, Socket, Type};

    #[test]
    fn a_socket_connected_to_its_own_address_is_detected() {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        socket
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let own = socket.local_addr().unwrap();
        // A connect to the socket's own address opens simultaneously with itself: what the
        // kernel does when it picks a not-yet-listening broker port as the ephemeral port.
        socket.connect(&own).expect("self-connect");
        let stream: TcpStream = socket.into();
        assert!(is_self_connection(&stream));
    }

    #[test]
    fn an_ordinary_connection_is_not_a_self_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = connect_to(&listener.local_addr().unwrap(), Duration::from_secs(5)).unwrap();
        assert!(!is_self_connection(&stream));
    }
}
