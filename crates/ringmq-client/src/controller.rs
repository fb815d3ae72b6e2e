//! A blocking client of the controllers (`ringmq controller`, opcodes 80-99): what a broker in
//! controller mode registers, heartbeats and changes its SyncStateSet through, and what
//! `ringmq controller status|add-peer|remove-peer` use.
//!
//! It holds the list of controllers and one connection, to the one that answered last (the
//! leader, normally). A `NOT_LEADER` answer that names the leader is followed at once, in one
//! round trip; one that names none (an election under way, or no majority) and a controller
//! that cannot be reached move on to the next address of the list, each at most once per
//! request. An address that failed (unreachable, timed out) is not tried again within the
//! request, as a hint or from the list: a broker cut from the leader alone goes on to a
//! follower, which forwards its request to the leader. Every controller request is
//! idempotent or fenced by epochs, so one sent twice is harmless.
//!
//! It speaks frames over a plain `TcpStream` of its own rather than [`crate::Connection`],
//! whose typed opcodes are the broker's table; the controller's is
//! `ringmq_protocol::controller::ControllerOpcode`.

use crate::error::ClientError;
use crate::protocol::auth::Secret;
use crate::protocol::controller::{authenticate, HandshakeError};
use crate::protocol::controller::{
    not_leader_hint, AddPeer, AlterSyncStateSet, BrokerHeartbeat, BrokerIdentity,
    ControllerRequest, GroupRef, GroupState, HeartbeatAnswer, RegisterBroker, RemovePeer,
    ResignMaster, StatusRequest,
};
use crate::protocol::frame::{encode_frame, FrameDecoder, FrameHeader};
use crate::protocol::{Response as _, Status};
use crate::DEFAULT_MAX_FRAME_BYTES;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Connect, read and write timeout per controller tried. A commit takes milliseconds on a
/// healthy group; the controller itself answers `NO_QUORUM` after 3 s, so 5 s is enough to
/// hear that rather than time out first.
pub const DEFAULT_CONTROLLER_TIMEOUT: Duration = Duration::from_secs(5);

pub struct ControllerClient {
    addrs: Vec<String>,
    timeout: Duration,
    current: usize,
    connection: Option<(String, TcpStream)>,
    /// The controller that answered last (the leader, as far as we know): tried first, even
    /// when the list names it differently.
    last_answered: Option<String>,
    next_request_id: u64,
    /// The controllers' shared secret: with it every new connection runs the controller
    /// port's handshake before its first request (see [`ControllerClient::with_secret`]).
    secret: Option<Secret>,
}

/// Splits `HOST:PORT[,HOST:PORT...]`.
pub fn parse_controller_list(list: &str) -> Result<Vec<String>, ClientError> {
    crate::namesrv::parse_address_list(list, "controller")
}

impl ControllerClient {
    pub fn new(addrs: Vec<String>, timeout: Duration) -> Result<Self, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::InvalidArgument(
                "no controller address given".into(),
            ));
        }
        Ok(ControllerClient {
            addrs,
            timeout,
            current: 0,
            connection: None,
            last_answered: None,
            next_request_id: 1,
            secret: None,
        })
    }

    /// Authenticates every connection to the controllers with `secret` (their `--secret-file`):
    /// the controller proves it holds it before this client sends a request, and this client
    /// proves it in turn. A controller without a secret, or with another, is refused (the
    /// error says which).
    pub fn with_secret(mut self, secret: Secret) -> Self {
        self.secret = Some(secret);
        self.connection = None;
        self
    }

    pub fn connect_list(list: &str) -> Result<Self, ClientError> {
        Self::new(parse_controller_list(list)?, DEFAULT_CONTROLLER_TIMEOUT)
    }

    /// The address the last answer came from.
    pub fn current_addr(&self) -> &str {
        self.connection
            .as_ref()
            .map_or(&self.addrs[self.current], |(a, _)| a.as_str())
    }

    pub fn register_broker(&mut self, request: &RegisterBroker) -> Result<u64, ClientError> {
        self.call(request)
            .map(|BrokerIdentity { broker_id }| broker_id)
    }

    pub fn heartbeat(&mut self, request: &BrokerHeartbeat) -> Result<HeartbeatAnswer, ClientError> {
        self.call(request)
    }

    pub fn alter_sync_state_set(
        &mut self,
        request: &AlterSyncStateSet,
    ) -> Result<GroupState, ClientError> {
        self.call(request)
    }

    /// A master stopping cleanly hands its group to `request.successor_broker_id`; the
    /// answer is the group after the change (its master is the successor when it committed).
    pub fn resign_master(&mut self, request: &ResignMaster) -> Result<GroupState, ClientError> {
        self.call(request)
    }

    pub fn group_state(
        &mut self,
        cluster_name: &str,
        broker_name: &str,
    ) -> Result<GroupState, ClientError> {
        self.call(&GroupRef {
            cluster_name: cluster_name.into(),
            broker_name: broker_name.into(),
        })
    }

    /// The status document of the leader when one is reachable, else of the controller that
    /// answered (any controller answers with its own view and names the leader; only the
    /// leader knows which brokers are alive).
    pub fn status(&mut self) -> Result<serde_json::Value, ClientError> {
        let status: serde_json::Value = self.call(&StatusRequest {})?;
        let leader = status["leader_addr"].as_str().map(str::to_string);
        match leader {
            Some(addr) if status["is_leader"] != true => {
                self.connection = None;
                self.last_answered = Some(addr);
                Ok(self.call(&StatusRequest {}).unwrap_or(status))
            }
            _ => Ok(status),
        }
    }

    pub fn add_peer(&mut self, id: u64, addr: &str) -> Result<(), ClientError> {
        self.call(&AddPeer {
            id,
            addr: addr.into(),
        })
    }

    pub fn remove_peer(&mut self, id: u64) -> Result<(), ClientError> {
        self.call(&RemovePeer { id })
    }

    /// Sends one request; see the module doc for where it goes.
    pub fn call<R: ControllerRequest>(&mut self, request: &R) -> Result<R::Response, ClientError> {
        request
            .check_body()
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        let mut body = Vec::new();
        request.encode_body(&mut body);
        let mut last_error = None;
        // Each listed controller once, plus one hop to a named leader after each.
        let mut target: Option<String> = self.last_answered.take();
        let mut tried = 0;
        let mut hops = 0;
        // Addresses that failed during this request: not asked again in it.
        let mut failed: Vec<String> = Vec::new();
        while tried < self.addrs.len() {
            let addr = match target.take() {
                Some(addr) => addr,
                None => {
                    let addr = self.addrs[self.current].clone();
                    tried += 1;
                    if failed.contains(&addr) {
                        self.current = (self.current + 1) % self.addrs.len();
                        continue;
                    }
                    addr
                }
            };
            match self.exchange(&addr, R::OPCODE as u16, &body) {
                Ok((Status::Ok, answer)) => {
                    self.last_answered = Some(addr.clone());
                    return R::Response::from_answer(Status::Ok, &answer).map_err(|source| {
                        ClientError::Decode {
                            addr,
                            what: R::RESPONSE_NAME,
                            source,
                        }
                    });
                }
                Ok((Status::NotLeader, message)) => {
                    let message = String::from_utf8_lossy(&message).to_string();
                    let hint = not_leader_hint(&message).map(|(_, a)| a);
                    self.connection = None;
                    match hint.filter(|h| *h != addr && !failed.contains(h)) {
                        Some(leader) if hops < self.addrs.len() => {
                            hops += 1;
                            target = Some(leader);
                        }
                        _ => self.current = (self.current + 1) % self.addrs.len(),
                    }
                    last_error = Some(ClientError::Status {
                        status: Status::NotLeader,
                        message,
                    });
                }
                Ok((status, message)) => {
                    self.last_answered = Some(addr.clone());
                    return Err(ClientError::Status {
                        status,
                        message: String::from_utf8_lossy(&message).to_string(),
                    });
                }
                Err(e) => {
                    self.connection = None;
                    // The list moves on from where it stands, unless this was the list's own
                    // turn (then past it): a hint or the last answerer failing costs no turn.
                    if self.addrs[self.current] == addr {
                        self.current = (self.current + 1) % self.addrs.len();
                    }
                    failed.push(addr);
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("at least one controller was tried"))
    }

    fn exchange(
        &mut self,
        addr: &str,
        opcode: u16,
        body: &[u8],
    ) -> Result<(Status, Vec<u8>), ClientError> {
        let io = |source: std::io::Error| match source.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => ClientError::Timeout {
                addr: addr.to_string(),
                after: self.timeout,
            },
            _ => ClientError::Io {
                addr: addr.to_string(),
                source,
            },
        };
        if self.connection.as_ref().is_none_or(|(a, _)| a != addr) {
            let target = addr.to_socket_addrs().map_err(io)?.next().ok_or_else(|| {
                ClientError::InvalidArgument(format!("{addr} resolves to no address"))
            })?;
            let mut stream = TcpStream::connect_timeout(&target, self.timeout).map_err(io)?;
            stream.set_read_timeout(Some(self.timeout)).map_err(io)?;
            stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
            let _ = stream.set_nodelay(true);
            if let Some(secret) = &self.secret {
                let first = self.next_request_id;
                self.next_request_id += 2;
                match authenticate(&mut stream, secret, first) {
                    Ok(()) => {}
                    // Final, like any error status: another controller has the same secret.
                    Err(HandshakeError::Refused { status, message }) => {
                        return Ok((status, message.into_bytes()))
                    }
                    Err(HandshakeError::Io(e)) => return Err(io(e)),
                    Err(HandshakeError::Protocol(reason)) => {
                        return Err(ClientError::Protocol {
                            addr: addr.to_string(),
                            reason,
                        })
                    }
                }
            }
            self.connection = Some((addr.to_string(), stream));
        }
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let mut frame = Vec::new();
        encode_frame(
            &mut frame,
            FrameHeader {
                flags: 0,
                opcode,
                status: 0,
                request_id,
            },
            body,
        );
        let (_, stream) = self.connection.as_mut().expect("connected above");
        stream.write_all(&frame).map_err(io)?;
        let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(frame) = decoder.decode(&buf).map_err(|source| ClientError::Frame {
                addr: addr.to_string(),
                source,
            })? {
                if frame.header.request_id != request_id || !frame.header.is_response() {
                    return Err(ClientError::Protocol {
                        addr: addr.to_string(),
                        reason: format!(
                            "answer to request {} where {request_id} was asked",
                            frame.header.request_id
                        ),
                    });
                }
                let status =
                    Status::from_u16(frame.header.status).ok_or_else(|| ClientError::Protocol {
                        addr: addr.to_string(),
                        reason: format!("unknown status {}", frame.header.status),
                    })?;
                return Ok((status, frame.body.to_vec()));
            }
            let (_, stream) = self.connection.as_mut().expect("connected above");
            match stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(ClientError::ConnectionClosed {
                        addr: addr.to_string(),
                    });
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(io(e)),
            }
        }
    }
}
