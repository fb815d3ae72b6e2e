//! A blocking client of the name servers (`ringmq namesrv`, opcodes 70-72): brokers register
//! through it, clients and `ringmq cluster list` ask it for routes.
//!
//! It holds a list of name servers and one connection at a time, to the one that answered
//! last. A request that cannot get an answer there (the connect fails, the connection breaks,
//! the answer times out, the server is busy: `SYSTEM_BUSY`, or it answers with request id 0,
//! as it does to a connection over its limits, and closes) is sent to the next server of the
//! list, each at most once per request; any other error *status* is the server's answer and is
//! returned as it is. A connection kept from an earlier request may have gone stale (that name
//! server restarted): when it fails short of a timeout, the request is sent once more on a
//! fresh connection to the same server before moving on (every name-server request is
//! idempotent, so sending one twice is harmless). Name servers keep the
//! same routes (every broker registers with all of them), so which one answers does not matter.
//! Timeouts are short ([`DEFAULT_NAMESRV_TIMEOUT`]): a name server answers from memory, and a
//! hung one should cost a client a few seconds, not the broker-side 30 s.

use crate::connection::{Connection, ConnectionOptions};
use crate::error::ClientError;
use crate::protocol::namesrv::{
    BrokerRegister, BrokerUnregister, RegisterResult, RouteQuery, Routes,
};
use crate::protocol::{Request, Response as _, Status};
use crate::DEFAULT_MAX_FRAME_BYTES;
use std::time::Duration;

/// Connect, read and write timeout of a name-server request, per server tried.
pub const DEFAULT_NAMESRV_TIMEOUT: Duration = Duration::from_secs(3);

/// Where `ringmq namesrv` listens unless told otherwise.
pub const DEFAULT_NAMESRV_ADDR: &str = "127.0.0.1:9876";

/// The connection options [`NameServerClient`] uses by default.
pub fn namesrv_connection_options() -> ConnectionOptions {
    ConnectionOptions {
        connect_timeout: DEFAULT_NAMESRV_TIMEOUT,
        read_timeout: DEFAULT_NAMESRV_TIMEOUT,
        write_timeout: DEFAULT_NAMESRV_TIMEOUT,
        max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
        // The name-server port is plaintext this round (its authentication is another slice).
        tls: None,
        scram: None,
    }
}

/// Splits `HOST:PORT[,HOST:PORT...]` (spaces around commas allowed) into addresses.
pub fn parse_namesrv_list(list: &str) -> Result<Vec<String>, ClientError> {
    parse_address_list(list, "name-server")
}

/// Splits a comma-separated `HOST:PORT` list (spaces around commas allowed); `what` names the
/// kind of server in the errors. Shared by the name-server and controller lists.
pub fn parse_address_list(list: &str, what: &str) -> Result<Vec<String>, ClientError> {
    let addrs: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    if addrs.is_empty() {
        return Err(ClientError::InvalidArgument(format!(
            "no {what} address in {list:?} (expected HOST:PORT[,HOST:PORT...])"
        )));
    }
    if let Some(bad) = addrs.iter().find(|a| !looks_like_host_port(a)) {
        return Err(ClientError::InvalidArgument(format!(
            "{what} address {bad:?} is not HOST:PORT"
        )));
    }
    Ok(addrs)
}

fn looks_like_host_port(addr: &str) -> bool {
    match addr.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

/// A client of a list of name servers; see the module documentation.
pub struct NameServerClient {
    addrs: Vec<String>,
    options: ConnectionOptions,
    /// The server tried first: the one that answered last.
    current: usize,
    connection: Option<Connection>,
}

impl NameServerClient {
    /// A client of `addrs` that connects on its first request. Always plaintext: the name
    /// server does not speak TLS, so neither `options.tls` nor the process-wide TLS default
    /// (which `ConnectionOptions::default()` picks up) applies here.
    pub fn new(addrs: Vec<String>, options: ConnectionOptions) -> Result<Self, ClientError> {
        let options = ConnectionOptions {
            tls: None,
            scram: None,
            ..options
        };
        if addrs.is_empty() {
            return Err(ClientError::InvalidArgument(
                "no name-server address given".into(),
            ));
        }
        Ok(NameServerClient {
            addrs,
            options,
            current: 0,
            connection: None,
        })
    }

    /// Parses `HOST:PORT[,HOST:PORT...]` and connects to the first server that accepts,
    /// trying each in turn; fails only when none does.
    pub fn connect_list(list: &str) -> Result<Self, ClientError> {
        let mut client = Self::new(parse_namesrv_list(list)?, namesrv_connection_options())?;
        client.connected()?;
        Ok(client)
    }

    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// The server the next request goes to first.
    pub fn current_addr(&self) -> &str {
        &self.addrs[self.current]
    }

    /// Registers (or heartbeats) one broker.
    pub fn register(
        &mut self,
        registration: &BrokerRegister,
    ) -> Result<RegisterResult, ClientError> {
        self.call(registration)
    }

    /// Removes one broker from the routes at once (its clean shutdown). Unsigned, with
    /// sequence 0: a name server with a secret answers `NOT_AUTHENTICATED`; use
    /// [`NameServerClient::unregister_signed`] with one.
    pub fn unregister(
        &mut self,
        cluster_name: &str,
        broker_name: &str,
        broker_id: u64,
    ) -> Result<(), ClientError> {
        self.call(&BrokerUnregister {
            cluster_name: cluster_name.to_string(),
            broker_name: broker_name.to_string(),
            broker_id,
            sequence: 0,
            signed_at_ms: 0,
            signature: Vec::new(),
        })
    }

    /// As [`NameServerClient::unregister`], signed with `secret` at this host's wall clock
    /// (`ringmq_protocol::auth::sign_unregister`). `sequence` must be above every one the name
    /// server accepted from that broker (its registrations' included), or it answers
    /// `REPLAY_REFUSED`.
    pub fn unregister_signed(
        &mut self,
        cluster_name: &str,
        broker_name: &str,
        broker_id: u64,
        sequence: u64,
        secret: &crate::protocol::auth::Secret,
    ) -> Result<(), ClientError> {
        let mut unregister = BrokerUnregister {
            cluster_name: cluster_name.to_string(),
            broker_name: broker_name.to_string(),
            broker_id,
            sequence,
            signed_at_ms: 0,
            signature: Vec::new(),
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        crate::protocol::auth::sign_unregister(secret, &mut unregister, now_ms);
        self.call(&unregister)
    }

    /// Every live broker of `cluster_name` (empty: of every cluster).
    pub fn routes(&mut self, cluster_name: &str) -> Result<Routes, ClientError> {
        self.call(&RouteQuery {
            cluster_name: cluster_name.to_string(),
        })
    }

    /// Sends one request, to each server in turn until one answers; see the module doc.
    pub fn call<R: Request>(&mut self, request: &R) -> Result<R::Response, ClientError> {
        request
            .check_body()
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        let mut last_error = None;
        for _ in 0..self.addrs.len() {
            let reused = self.connection.as_ref().is_some_and(|c| !c.is_broken());
            let mut outcome = self.call_current(request);
            if reused && outcome.as_ref().is_err_and(is_stale_connection) {
                tracing::debug!(
                    "name server {}: a kept connection failed; once more on a fresh one",
                    self.current_addr()
                );
                self.connection = None;
                outcome = self.call_current(request);
            }
            match outcome {
                Ok(response) => return Ok(response),
                Err(e) if !self.another_server_may_answer(&e) => return Err(e),
                Err(e) => {
                    tracing::debug!("name server {}: {e}", self.current_addr());
                    self.connection = None;
                    self.current = (self.current + 1) % self.addrs.len();
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("at least one server was tried"))
    }

    /// Whether `e`, just returned by the current server, says nothing about the request
    /// itself, so the next server may answer it.
    fn another_server_may_answer(&self, e: &ClientError) -> bool {
        match e {
            ClientError::InvalidArgument(_) => false,
            ClientError::Status {
                status: Status::SystemBusy,
                ..
            } => true,
            // An answer with request id 0 (the server refused the connection or could not
            // attribute a frame) marks the connection broken: it was no answer to this request.
            ClientError::Status { .. } => self.connection.as_ref().is_some_and(|c| c.is_broken()),
            _ => true,
        }
    }

    fn call_current<R: Request>(&mut self, request: &R) -> Result<R::Response, ClientError> {
        let connection = self.connect_current()?;
        let id = connection.send_with(R::OPCODE, |out| request.encode_body(out))?;
        let response = connection.wait(id)?;
        let (status, body) = response.into_result(connection.addr())?;
        connection.decode(R::RESPONSE_NAME, &body, |b| {
            R::Response::from_answer(status, b)
        })
    }

    fn connect_current(&mut self) -> Result<&mut Connection, ClientError> {
        if self
            .connection
            .as_mut()
            .is_some_and(|c| c.is_broken() || c.peer_closed())
        {
            self.connection = None;
        }
        if self.connection.is_none() {
            let addr = &self.addrs[self.current];
            self.connection = Some(Connection::connect(addr, self.options)?);
        }
        Ok(self.connection.as_mut().expect("connected above"))
    }

    /// Connects to the first server of the list (from the current one) that accepts.
    fn connected(&mut self) -> Result<(), ClientError> {
        let mut last_error = None;
        for _ in 0..self.addrs.len() {
            match self.connect_current() {
                Ok(_) => return Ok(()),
                Err(e) => {
                    self.current = (self.current + 1) % self.addrs.len();
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("at least one server was tried"))
    }
}

/// Whether `e`, on a connection kept from an earlier request, may be that connection having
/// gone stale (closed or reset by a name server that restarted) rather than the server failing
/// now: worth one more try on a fresh connection. A timeout is not (the server is there and
/// slow; another wait would double the cost).
fn is_stale_connection(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Io { .. } | ClientError::ConnectionClosed { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_bad_entries_are_named() {
        assert_eq!(
            parse_namesrv_list("127.0.0.1:9876, 10.0.0.2:9877,").unwrap(),
            vec!["127.0.0.1:9876", "10.0.0.2:9877"]
        );
        assert!(parse_namesrv_list(" , ").is_err());
        let e = parse_namesrv_list("127.0.0.1:9876,nohost").unwrap_err();
        assert!(e.to_string().contains("\"nohost\""), "{e}");
        assert!(parse_namesrv_list("h:99999").is_err());
    }

    /// How a fake name server treats each connection it accepts.
    #[derive(Clone, Copy)]
    enum Fake {
        /// Answers every request with an empty `Routes` (only routes are asked here), keeping
        /// the connection.
        Answer,
        /// Answers one request, then closes the connection (a restart, as its peer sees it).
        AnswerOnceThenClose,
        /// Answers `SYSTEM_BUSY` with request id 0 at once and closes (over its connection
        /// limit), as the name server does.
        BusyAtConnect,
    }

    /// A name server on a thread that serves `connections` connections as `fake` says and
    /// counts the requests it answered.
    fn fake_server(
        fake: Fake,
        connections: usize,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use crate::protocol::frame::{encode_frame, FrameHeader};
        use crate::protocol::FrameDecoder;
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let answered = std::sync::Arc::new(AtomicUsize::new(0));
        let count = answered.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(connections) {
                let mut stream = stream.unwrap();
                if let Fake::BusyAtConnect = fake {
                    let mut out = Vec::new();
                    encode_frame(
                        &mut out,
                        FrameHeader::response(0, Status::SystemBusy, 0),
                        b"at most 1 connection",
                    );
                    let _ = stream.write_all(&out);
                    continue;
                }
                let decoder = FrameDecoder::new(1 << 20);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                'connection: loop {
                    while let Ok(Some(frame)) = decoder.decode(&buf) {
                        let (len, header) = (frame.wire_len(), frame.header);
                        let mut out = Vec::new();
                        let mut body = Vec::new();
                        Routes { brokers: vec![] }.encode(&mut body);
                        encode_frame(
                            &mut out,
                            FrameHeader::response(header.opcode, Status::Ok, header.request_id),
                            &body,
                        );
                        buf.drain(..len);
                        stream.write_all(&out).unwrap();
                        count.fetch_add(1, Ordering::SeqCst);
                        if let Fake::AnswerOnceThenClose = fake {
                            break 'connection;
                        }
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            }
        });
        (addr, answered)
    }

    fn dead_addr() -> String {
        // A listener bound and closed at once: connecting to its port is refused.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    #[test]
    fn a_dead_server_is_skipped_and_all_dead_is_an_io_error() {
        let dead = dead_addr();
        let e = NameServerClient::connect_list(&format!("{dead},{dead}"))
            .err()
            .expect("nothing listens");
        assert!(matches!(e, ClientError::Io { .. }), "{e:?}");
        let (live, answered) = fake_server(Fake::Answer, 2);
        let mut client = NameServerClient::connect_list(&format!("{dead},{live}")).unwrap();
        assert_eq!(client.current_addr(), live);
        assert!(client.routes("").unwrap().brokers.is_empty());
        // The fake serves one connection at a time.
        drop(client);
        // Not connected yet, so the request itself starts on the dead one and moves on.
        let mut client = NameServerClient::new(
            vec![dead.clone(), live.clone()],
            namesrv_connection_options(),
        )
        .unwrap();
        assert_eq!(client.current_addr(), dead);
        assert!(client.routes("").is_ok());
        assert_eq!(client.current_addr(), live);
        assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn a_busy_server_is_skipped() {
        let (busy, _) = fake_server(Fake::BusyAtConnect, 1);
        let (live, answered) = fake_server(Fake::Answer, 1);
        let mut client =
            NameServerClient::new(vec![busy, live.clone()], namesrv_connection_options()).unwrap();
        assert!(client.routes("").unwrap().brokers.is_empty());
        assert_eq!(client.current_addr(), live);
        assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn a_stale_kept_connection_is_replaced_once_with_a_single_server() {
        // The server closes each connection after one answer, as a restarted one would have.
        let (addr, answered) = fake_server(Fake::AnswerOnceThenClose, 3);
        let mut client = NameServerClient::connect_list(&addr).unwrap();
        for n in 1..=3 {
            assert!(client.routes("").is_ok(), "request {n}");
        }
        assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}
