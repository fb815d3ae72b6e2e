//! Listeners and connections.
//!
//! The main thread binds every listening socket before the executors start ([`bind_listeners`]):
//! one socket on the shared client port and one on the HA port, each handed to every shard as
//! a duplicate descriptor (every shard accepts on the same socket), and one socket per shard on
//! its shard-aware port. No socket sets SO_REUSEPORT, so no other process can bind a port the
//! broker holds; SO_REUSEADDR lets a restart bind over connections left in TIME_WAIT, and a
//! port still held by a just-killed broker is retried for [`RESTART_RETRY_MS`]. Each shard then
//! accepts on its sockets ([`accept_loop`]), admits the connection against the limits
//! ([`admission`]) and serves it on its own core ([`connection`]).

pub mod admission;
pub mod connection;

use crate::config::BrokerConfig;
use crate::constants::{
    DESCRIPTORS_PER_CONNECTION, DESCRIPTOR_RESERVE, LISTEN_BACKLOG,
    MAX_REFUSALS_IN_FLIGHT_PER_SHARD, REFUSAL_WRITE_TIMEOUT_MS, RESTART_RETRY_INTERVAL_MS,
    RESTART_RETRY_MS,
};
use crate::security::tls::ServerTls;
use crate::shard::Shard;
use admission::{Admission, InflightBudget};
use glommio::net::TcpListener;
use glommio::{spawn_local, spawn_local_into, Latency, Shares, TaskQueueHandle};
use socket2::{Domain, Protocol, Socket, Type};
use std::cell::Cell;
use std::fmt;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// The sockets of every shard and the addresses actually bound.
pub struct BoundListeners {
    /// `per_shard[n]`: shard `n`'s descriptor of the shared client socket and its own
    /// shard-aware socket.
    pub per_shard: Vec<Vec<RawFd>>,
    pub listen_addr: SocketAddr,
    pub shard_ports: Vec<u16>,
    /// `ha[n]`: shard `n`'s descriptor of the one replication socket.
    pub ha: Vec<RawFd>,
    pub ha_addr: SocketAddr,
    /// The Prometheus endpoint's socket and address, served by shard 0.
    pub metrics: Option<(RawFd, SocketAddr)>,
    /// With `kafka_listen`: each shard's descriptor of the one Kafka socket, and its address.
    pub kafka: Option<(Vec<RawFd>, SocketAddr)>,
}

/// What a listening port is for, so a bind error names the port the user has to look at.
/// Why the broker could not set up its listening sockets.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// An address in the configuration does not parse (the message names the key).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on the {role} {addr}: it is in use by another process (still after {RESTART_RETRY_MS} ms); stop that process or choose another port")]
    InUse { role: PortRole, addr: SocketAddr },
    #[error("cannot listen on the {role} {addr}: {source}")]
    Bind {
        role: PortRole,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the {role} socket has no inet address")]
    NoInetAddress { role: PortRole },
    #[error("duplicating the {role} socket: {source}")]
    Duplicate {
        role: PortRole,
        source: std::io::Error,
    },
    #[error("shard_port_base: shard {shard}'s port {port} is not a valid port")]
    ShardPort { shard: usize, port: usize },
}

#[derive(Clone, Copy, Debug)]
pub enum PortRole {
    Client,
    Shard(usize),
    Ha,
    Metrics,
    Kafka,
}

impl fmt::Display for PortRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRole::Client => f.write_str("client port (listen)"),
            PortRole::Shard(n) => write!(f, "shard {n} port (shard_port_base + {n})"),
            PortRole::Ha => f.write_str("HA port (ha_listen)"),
            PortRole::Metrics => f.write_str("metrics port (metrics_listen)"),
            PortRole::Kafka => f.write_str("Kafka port (kafka_listen)"),
        }
    }
}

/// Binds and listens once, without retrying.
fn listening_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // Non-blocking for good: every shard accepts on a shared socket, and glommio's accept
    // tries a non-blocking accept by toggling O_NONBLOCK on the shared open file, which would
    // race between executors (one could restore blocking mode while another accepts).
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket)
}

/// Binds `addr`, retrying "address in use" until `deadline`: a broker killed a moment ago
/// still holds its ports while the kernel tears its io_uring rings down (up to about half a
/// second), and a supervisor restarts at once.
fn bind_retrying(addr: SocketAddr, role: PortRole, deadline: Instant) -> Result<Socket, NetError> {
    let mut logged = false;
    loop {
        match listening_socket(addr) {
            Ok(socket) => return Ok(socket),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                if !logged {
                    warn!("{role} {addr} is in use; retrying for up to {RESTART_RETRY_MS} ms in case a stopped broker still holds it");
                    logged = true;
                }
                std::thread::sleep(Duration::from_millis(RESTART_RETRY_INTERVAL_MS));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(NetError::InUse { role, addr })
            }
            Err(source) => return Err(NetError::Bind { role, addr, source }),
        }
    }
}

fn bound_port(socket: &Socket, role: PortRole) -> Result<u16, NetError> {
    socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map(|a| a.port())
        .ok_or(NetError::NoInetAddress { role })
}

/// `count` descriptors of one socket: the socket itself and `count - 1` duplicates.
fn share(socket: Socket, count: usize, role: PortRole) -> Result<Vec<RawFd>, NetError> {
    let mut fds = Vec::with_capacity(count);
    for _ in 1..count {
        // SAFETY: F_DUPFD_CLOEXEC on a valid descriptor returns a new one or -1.
        let fd = unsafe { libc::fcntl(socket.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            let source = std::io::Error::last_os_error();
            for fd in fds {
                unsafe { libc::close(fd) };
            }
            return Err(NetError::Duplicate { role, source });
        }
        fds.push(fd);
    }
    fds.insert(0, socket.into_raw_fd());
    Ok(fds)
}

pub fn bind_listeners(
    config: &BrokerConfig,
    shard_count: usize,
) -> Result<BoundListeners, NetError> {
    let deadline = Instant::now() + Duration::from_millis(RESTART_RETRY_MS);
    let mut listen_addr = config.listen_addr()?;
    let shared = bind_retrying(listen_addr, PortRole::Client, deadline)?;
    listen_addr.set_port(bound_port(&shared, PortRole::Client)?);
    let shared = share(shared, shard_count, PortRole::Client)?;
    let mut per_shard = Vec::with_capacity(shard_count);
    let mut shard_ports = Vec::with_capacity(shard_count);
    for (shard, shared_fd) in shared.into_iter().enumerate() {
        let role = PortRole::Shard(shard);
        let mut own_addr = listen_addr;
        own_addr.set_port(shard_port(config, listen_addr.port(), shard)?);
        let own = bind_retrying(own_addr, role, deadline)?;
        shard_ports.push(bound_port(&own, role)?);
        per_shard.push(vec![shared_fd, own.into_raw_fd()]);
    }
    let mut ha_addr = config.ha_addr()?;
    let ha = bind_retrying(ha_addr, PortRole::Ha, deadline)?;
    ha_addr.set_port(bound_port(&ha, PortRole::Ha)?);
    let ha = share(ha, shard_count, PortRole::Ha)?;
    let metrics = match config.metrics_addr()? {
        Some(mut addr) => {
            let socket = bind_retrying(addr, PortRole::Metrics, deadline)?;
            addr.set_port(bound_port(&socket, PortRole::Metrics)?);
            Some((socket.into_raw_fd(), addr))
        }
        None => None,
    };
    let kafka = match config.kafka_addr()? {
        Some(mut addr) => {
            let socket = bind_retrying(addr, PortRole::Kafka, deadline)?;
            addr.set_port(bound_port(&socket, PortRole::Kafka)?);
            Some((share(socket, shard_count, PortRole::Kafka)?, addr))
        }
        None => None,
    };
    Ok(BoundListeners {
        per_shard,
        listen_addr,
        shard_ports,
        ha,
        ha_addr,
        metrics,
        kafka,
    })
}

/// Raises the soft limit on open descriptors to the hard limit, as Go's runtime does: a
/// client connection holds [`DESCRIPTORS_PER_CONNECTION`], and the usual soft limit of 1024
/// would stop accepting at about 500 connections, far below `max_connections`. Warns when
/// even the hard limit is short of what `max_connections` needs.
pub fn raise_descriptor_limit(config: &BrokerConfig) {
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
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    let needed = config.max_connections as u64 * DESCRIPTORS_PER_CONNECTION + DESCRIPTOR_RESERVE;
    if limit.rlim_cur < needed {
        warn!(
            "the open-descriptor limit {} is below the {needed} that max_connections {} needs; accepts fail past it (raise `ulimit -n` or lower max_connections)",
            limit.rlim_cur, config.max_connections
        );
    }
}

/// Shard `n`'s own port: `shard_port_base + n`, by default the client port + 100 + n, or a
/// free port when the client port was chosen freely.
fn shard_port(config: &BrokerConfig, listen_port: u16, shard: usize) -> Result<u16, NetError> {
    let base = if config.shard_port_base != 0 {
        config.shard_port_base as usize
    } else if config.listen_addr()?.port() == 0 {
        return Ok(0);
    } else {
        listen_port as usize + 100
    };
    u16::try_from(base + shard).map_err(|_| NetError::ShardPort {
        shard,
        port: base + shard,
    })
}

/// What every client connection of one shard shares.
pub struct ShardNet {
    /// The broker-wide connection limits (shared with every other shard).
    pub admission: Arc<Admission>,
    /// This shard's request-memory budget across its connections.
    pub budget: Rc<InflightBudget>,
    pub timeouts: connection::ConnectionTimeouts,
    /// Refusals being answered now (see `MAX_REFUSALS_IN_FLIGHT_PER_SHARD`).
    refusals_in_flight: Rc<Cell<usize>>,
    /// TLS on this shard's client and shard ports, when configured.
    tls: Option<Arc<ServerTls>>,
    /// TLS handshakes running now, at most `tls_max_handshakes_per_shard`.
    handshakes_in_flight: Rc<Cell<usize>>,
    max_handshakes: usize,
    /// Where TLS connections run, when TLS is on (see [`TlsQueues`]).
    tls_queues: Option<TlsQueues>,
}

/// The shard's glommio task queues for TLS connections: handshakes (public-key crypto, a
/// millisecond or so each, and what a flood of full ClientHellos makes a peer pay nothing
/// for) run in a queue with a small share of the core, so under contention established
/// connections, which run in the queue the accept loop runs in, keep most of it. A finished
/// handshake moves its connection back there.
#[derive(Clone, Copy)]
pub struct TlsQueues {
    pub handshakes: TaskQueueHandle,
    pub serving: TaskQueueHandle,
}

/// The handshake queue's shares, against the default queue's 1000: about a tenth of the core
/// while established connections want all of it, all of it when they are idle.
const TLS_HANDSHAKE_SHARES: usize = 100;

impl ShardNet {
    pub fn new(
        config: &BrokerConfig,
        admission: Arc<Admission>,
        tls: Option<Arc<ServerTls>>,
    ) -> Rc<ShardNet> {
        Rc::new(ShardNet {
            admission,
            budget: InflightBudget::new(config.shard_inflight_budget_bytes),
            timeouts: connection::ConnectionTimeouts {
                request_read: Duration::from_millis(config.request_read_timeout_ms),
                idle: Duration::from_millis(config.connections_max_idle_ms),
                response_write: Duration::from_millis(config.response_write_timeout_ms),
                tls_handshake: Duration::from_millis(config.tls_handshake_timeout_ms),
            },
            refusals_in_flight: Rc::new(Cell::new(0)),
            handshakes_in_flight: Rc::new(Cell::new(0)),
            max_handshakes: config.tls_max_handshakes_per_shard as usize,
            // Only with TLS: made on the shard's executor, which a broker without TLS (and
            // the hot-path harness) need not have here.
            tls_queues: tls.is_some().then(|| {
                let executor = glommio::executor();
                TlsQueues {
                    handshakes: executor.create_task_queue(
                        Shares::Static(TLS_HANDSHAKE_SHARES),
                        Latency::NotImportant,
                        "tls-handshakes",
                    ),
                    serving: executor.current_task_queue(),
                }
            }),
            tls,
        })
    }
}

impl ShardNet {
    /// The task queues TLS connections run in, when TLS is on.
    pub fn tls_queues(&self) -> Option<TlsQueues> {
        self.tls_queues
    }

    /// The certificates of this shard's TLS ports, when TLS is on (`tls_cert_file`).
    pub fn tls(&self) -> Option<&Arc<ServerTls>> {
        self.tls.as_ref()
    }

    /// One of the shard's `tls_max_handshakes_per_shard` places, or `None` when every one is
    /// taken (the caller closes the new connection at once).
    pub fn handshake_slot(&self) -> Option<HandshakeSlot> {
        let in_flight = self.handshakes_in_flight.clone();
        (in_flight.get() < self.max_handshakes).then(|| HandshakeSlot::take(in_flight))
    }
}

/// One of a shard's `tls_max_handshakes_per_shard` places, held while a handshake runs and
/// given back when dropped: by the connection's task once its handshake ends, or with that
/// task if it is dropped first, so no path can keep or double-release one.
pub struct HandshakeSlot(Rc<Cell<usize>>);

impl HandshakeSlot {
    fn take(in_flight: Rc<Cell<usize>>) -> HandshakeSlot {
        in_flight.set(in_flight.get() + 1);
        HandshakeSlot(in_flight)
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Starts a TLS connection's own task (its handshake never runs in the accept loop), or
/// closes it at once when the shard already runs `tls_max_handshakes_per_shard` handshakes:
/// a flood of stalled handshakes then costs bounded memory and delays nobody else.
fn start_tls(
    shard: &Rc<Shard>,
    net: &Rc<ShardNet>,
    tls: &ServerTls,
    stream: glommio::net::TcpStream,
    ticket: admission::Ticket,
) {
    let Some(slot) = net.handshake_slot() else {
        refuse_handshake(shard, net, &stream);
        return;
    };
    let connection = connection::serve_tls(
        shard.clone(),
        net.clone(),
        stream,
        ticket,
        tls.current(),
        slot,
    );
    match net.tls_queues {
        Some(queues) => match spawn_local_into(connection, queues.handshakes) {
            Ok(task) => {
                task.detach();
            }
            Err(e) => warn!(shard = shard.id(), "starting a TLS connection failed: {e}"),
        },
        None => {
            spawn_local(connection).detach();
        }
    }
}

/// Closes a connection at once (a reset) because the shard runs
/// `tls_max_handshakes_per_shard` handshakes already.
pub fn refuse_handshake(shard: &Shard, net: &ShardNet, stream: &glommio::net::TcpStream) {
    debug!(
        shard = shard.id(),
        "tls_max_handshakes_per_shard: {} TLS handshakes already running; closing a new connection",
        net.max_handshakes
    );
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Accepts connections on one listening socket until the task is dropped.
pub async fn accept_loop(shard: Rc<Shard>, net: Rc<ShardNet>, fd: RawFd) {
    // SAFETY: the fd is a listening socket created by `bind_listeners` and owned by this task
    // from here on.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    loop {
        match listener.accept().await {
            Ok(stream) => {
                shard
                    .probe()
                    .add(crate::metrics::Counter::ConnectionsAccepted, 1);
                let Ok(peer) = stream.peer_addr() else {
                    continue;
                };
                match net.admission.admit(peer.ip()) {
                    Ok(ticket) => {
                        debug!(shard = shard.id(), %peer, "connection accepted");
                        match &net.tls {
                            None => {
                                spawn_local(connection::serve(
                                    shard.clone(),
                                    net.clone(),
                                    stream,
                                    ticket,
                                ))
                                .detach();
                            }
                            Some(tls) => start_tls(&shard, &net, tls, stream, ticket),
                        }
                    }
                    Err(refusal) => {
                        debug!(shard = shard.id(), %peer, "connection refused: {refusal}");
                        let in_flight = net.refusals_in_flight.clone();
                        if in_flight.get() >= MAX_REFUSALS_IN_FLIGHT_PER_SHARD {
                            let _ =
                                socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                            continue;
                        }
                        in_flight.set(in_flight.get() + 1);
                        let timeout = Duration::from_millis(REFUSAL_WRITE_TIMEOUT_MS);
                        // A TLS client can only read a refusal inside a session.
                        let tls = net.tls.as_ref().map(|tls| tls.current());
                        spawn_local(async move {
                            let reason = refusal.to_string();
                            match tls {
                                None => connection::refuse(stream, reason, timeout).await,
                                Some(tls) => {
                                    connection::refuse_tls(stream, tls, reason, timeout).await
                                }
                            }
                            in_flight.set(in_flight.get() - 1);
                        })
                        .detach();
                    }
                }
            }
            Err(e) => {
                // Typically EMFILE: keep serving existing connections and try again.
                warn!(shard = shard.id(), "accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
