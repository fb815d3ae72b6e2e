//! Listeners and connections.
//!
//! The main thread binds every listening socket before the executors start ([`bind_listeners`]):
//! one socket per shard on the shared client port (SO_REUSEPORT spreads connections across
//! shards; a port of 0 is resolved once so every shard shares the same one) and one socket per
//! shard on its shard-aware port. Each shard then accepts on its own sockets
//! ([`accept_loop`]) and serves each connection on its own core ([`connection`]).

pub mod connection;

use crate::config::BrokerConfig;
use crate::constants::LISTEN_BACKLOG;
use crate::shard::Shard;
use glommio::net::TcpListener;
use glommio::spawn_local;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use tracing::{debug, warn};

/// The sockets of every shard and the addresses actually bound.
pub struct BoundListeners {
    /// `per_shard[n]`: the shared-port socket and the shard-aware socket of shard `n`.
    pub per_shard: Vec<Vec<RawFd>>,
    pub listen_addr: SocketAddr,
    pub shard_ports: Vec<u16>,
    /// `ha[n]`: shard `n`'s socket on the shared replication port.
    pub ha: Vec<RawFd>,
    pub ha_addr: SocketAddr,
    /// The Prometheus endpoint's socket and address, served by shard 0.
    pub metrics: Option<(RawFd, SocketAddr)>,
}

fn listening_socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket)
}

fn bound_port(socket: &Socket) -> std::io::Result<u16> {
    socket
        .local_addr()?
        .as_socket()
        .map(|a| a.port())
        .ok_or_else(|| std::io::Error::other("listener has no inet address"))
}

pub fn bind_listeners(config: &BrokerConfig, shard_count: usize) -> Result<BoundListeners, String> {
    let mut listen_addr = config.listen_addr()?;
    let mut per_shard = Vec::with_capacity(shard_count);
    let mut shard_ports = Vec::with_capacity(shard_count);
    let explain = |addr: SocketAddr, e: std::io::Error| format!("cannot listen on {addr}: {e}");
    for shard in 0..shard_count {
        let shared = listening_socket(listen_addr, true).map_err(|e| explain(listen_addr, e))?;
        if listen_addr.port() == 0 {
            listen_addr.set_port(bound_port(&shared).map_err(|e| explain(listen_addr, e))?);
        }
        let mut own_addr = listen_addr;
        own_addr.set_port(shard_port(config, listen_addr.port(), shard)?);
        let own = listening_socket(own_addr, false).map_err(|e| explain(own_addr, e))?;
        shard_ports.push(bound_port(&own).map_err(|e| explain(own_addr, e))?);
        per_shard.push(vec![shared.into_raw_fd(), own.into_raw_fd()]);
    }
    let mut ha_addr = config.ha_addr()?;
    let mut ha = Vec::with_capacity(shard_count);
    for _ in 0..shard_count {
        let socket = listening_socket(ha_addr, true).map_err(|e| explain(ha_addr, e))?;
        if ha_addr.port() == 0 {
            ha_addr.set_port(bound_port(&socket).map_err(|e| explain(ha_addr, e))?);
        }
        ha.push(socket.into_raw_fd());
    }
    let metrics = match config.metrics_addr()? {
        Some(addr) => {
            let socket = listening_socket(addr, false).map_err(|e| explain(addr, e))?;
            let mut bound = addr;
            bound.set_port(bound_port(&socket).map_err(|e| explain(addr, e))?);
            Some((socket.into_raw_fd(), bound))
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
    })
}

/// Shard `n`'s own port: `shard_port_base + n`, by default the client port + 100 + n, or a
/// free port when the client port was chosen freely.
fn shard_port(config: &BrokerConfig, listen_port: u16, shard: usize) -> Result<u16, String> {
    let base = if config.shard_port_base != 0 {
        config.shard_port_base as usize
    } else if config.listen_addr()?.port() == 0 {
        return Ok(0);
    } else {
        listen_port as usize + 100
    };
    u16::try_from(base + shard).map_err(|_| {
        format!(
            "shard_port_base: shard {shard}'s port {} is not a valid port",
            base + shard
        )
    })
}

/// Accepts connections on one listening socket until the task is dropped.
pub async fn accept_loop(shard: Rc<Shard>, fd: RawFd) {
    // SAFETY: the fd is a listening socket created by `bind_listeners` and owned by this task
    // from here on.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    loop {
        match listener.accept().await {
            Ok(stream) => {
                debug!(shard = shard.id, "connection accepted");
                shard
                    .probe
                    .add(crate::metrics::Counter::ConnectionsAccepted, 1);
                spawn_local(connection::serve(shard.clone(), stream)).detach();
            }
            Err(e) => {
                // Typically EMFILE: keep serving existing connections and try again.
                warn!(shard = shard.id, "accept failed: {e}");
                glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}
