//! The Kafka listener (`kafka_listen`, off by default): Kafka's wire protocol on ringmq's
//! storage, for the non-group APIs (docs/kafka.md has the API table and the mapping).
//!
//! Each shard accepts on its duplicate of the one Kafka socket, as on the client port, and
//! admits the connection against the same limits. A connection runs one request at a time,
//! as a Kafka broker does (it stops reading a connection until its answer is sent), so answers
//! go out in request order. Every request is served through the native handlers
//! (`shard::handlers`), so a Kafka produce takes the same produce path as a native one, and a
//! fetch the same pull (its long poll included).
//!
//! Bounds, as on the native connection: a request larger than `max_frame_bytes`, a size that
//! does not parse or a request that does not decode closes the connection (Kafka has no way
//! to answer a request it cannot read); a request started and not finished within
//! `request_read_timeout_ms` closes it; a connection with no traffic for
//! `connections_max_idle_ms` is closed; an answer the peer does not read within
//! `response_write_timeout_ms` closes it. A request's bytes are reserved from the shard's
//! in-flight budget while it runs.
//!
//! Security follows the client ports' (docs/security.md): with `tls_cert_file` the Kafka
//! listener speaks TLS only (the same certificates, client certificates and handshake bounds;
//! a plaintext client is closed), and with `authentication = "scram"` a connection
//! authenticates with SASL/SCRAM ([`sasl`]) before anything but ApiVersions is served. Every
//! request then runs as the connection's principal, under the same ACLs as a native client.

mod api;
pub(crate) mod group_api;
pub mod groups;
pub mod producers;
pub mod records;
mod sasl;

use crate::config::BrokerConfig;
use crate::net::admission::BudgetPermit;
use crate::net::ShardNet;
use crate::security::scram::PRE_AUTHENTICATION_MAX_FRAME_BYTES;
use crate::security::Principal;
use crate::shard::Shard;
use futures_lite::{future, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::spawn_local;
use glommio::timer::sleep;
use std::os::fd::{FromRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// What every shard's Kafka connections share: the identity the listener advertises, the
/// producer ids and the idempotence windows.
pub struct KafkaNode {
    /// The node id Metadata names as every partition's leader.
    pub node_id: i32,
    /// The host and port clients are told to connect to.
    pub advertised_host: String,
    pub advertised_port: i32,
    pub auto_create_topics: bool,
    pub producer_ids: producers::ProducerIds,
    pub windows: producers::Windows,
}

impl KafkaNode {
    /// `bound` is the address the Kafka socket is bound to (its port chosen when 0);
    /// `broker_id` the store's broker id, from which the default node id derives.
    pub fn new(config: &BrokerConfig, bound: std::net::SocketAddr, broker_id: u64) -> KafkaNode {
        let (advertised_host, advertised_port) = match &config.kafka_advertised_listen {
            Some(advertised) => split_host_port(advertised)
                .unwrap_or_else(|| (bound.ip().to_string(), i32::from(bound.port()))),
            None => (bound.ip().to_string(), i32::from(bound.port())),
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        KafkaNode {
            node_id: config
                .kafka_node_id
                .unwrap_or_else(|| node_id_from_broker_id(broker_id)),
            advertised_host,
            advertised_port,
            auto_create_topics: config.kafka_auto_create_topics,
            producer_ids: producers::ProducerIds::starting_at_unix_ms(now_ms),
            windows: producers::Windows::default(),
        }
    }
}

/// A stable, non-negative Kafka node id from the store's broker id (a random u64).
pub fn node_id_from_broker_id(broker_id: u64) -> i32 {
    (broker_id % (i32::MAX as u64)) as i32
}

/// `HOST:PORT` (the config check has already refused anything else).
pub fn split_host_port(address: &str) -> Option<(String, i32)> {
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_string(), i32::from(port)))
}

/// Accepts Kafka connections on one shard's descriptor of the Kafka socket until dropped.
pub async fn accept_loop(shard: Rc<Shard>, net: Rc<ShardNet>, node: Arc<KafkaNode>, fd: RawFd) {
    // SAFETY: the fd is the listening socket `bind_listeners` made for this shard, owned by
    // this task from here on.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let Ok(peer) = stream.peer_addr() else {
                    continue;
                };
                match net.admission.admit(peer.ip()) {
                    Ok(ticket) if net.tls().is_some() => {
                        debug!(shard = shard.id(), %peer, "Kafka TLS connection accepted");
                        start_tls(&shard, &net, &node, stream, ticket);
                    }
                    Ok(ticket) => {
                        debug!(shard = shard.id(), %peer, "Kafka connection accepted");
                        let _ = stream.set_nodelay(true);
                        let _ = stream.set_write_timeout(Some(net.timeouts.response_write));
                        let (shard, net, node) = (shard.clone(), net.clone(), node.clone());
                        spawn_local(async move {
                            serve(shard, net, node, stream, Some(peer), None).await;
                            drop(ticket);
                        })
                        .detach();
                    }
                    // Kafka has no frame to refuse a connection with: it is closed at once.
                    Err(refusal) => {
                        debug!(shard = shard.id(), %peer, "Kafka connection refused: {refusal}")
                    }
                }
            }
            Err(e) => {
                warn!(shard = shard.id(), "Kafka accept failed: {e}");
                sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A TLS connection: its handshake in the shard's handshake queue within the handshake
/// bounds (`tls_max_handshakes_per_shard`, `tls_handshake_timeout_ms`), as on the client
/// ports, then served where plaintext connections are.
fn start_tls(
    shard: &Rc<Shard>,
    net: &Rc<ShardNet>,
    node: &Arc<KafkaNode>,
    stream: TcpStream,
    ticket: crate::net::admission::Ticket,
) {
    use crate::net::connection::{accept_tls, serve_where_plaintext_runs, Plaintext};
    let (Some(tls), Some(queues)) = (net.tls(), net.tls_queues()) else {
        return;
    };
    let Some(slot) = net.handshake_slot() else {
        crate::net::refuse_handshake(shard, net, &stream);
        return;
    };
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    let config = tls.current();
    let shard_id = shard.id();
    let (shard, net, node) = (shard.clone(), net.clone(), node.clone());
    let connection = async move {
        let Some((session, principal)) =
            accept_tls(&shard, &net, stream, config, slot, Plaintext::Close).await
        else {
            return;
        };
        let serving = {
            let (shard, net) = (shard.clone(), net.clone());
            async move {
                serve(shard, net, node, session, peer, principal).await;
                drop(ticket);
            }
        };
        serve_where_plaintext_runs(&shard, &net, serving).await;
    };
    match glommio::spawn_local_into(connection, queues.handshakes) {
        Ok(task) => {
            task.detach();
        }
        Err(e) => warn!(
            shard = shard_id,
            "starting a Kafka TLS connection failed: {e}"
        ),
    }
}

/// Why a connection's loop stops.
enum End {
    Closed,
    ReadTimeout,
    Idle,
    /// The shard's in-flight budget had no room for the request in time.
    NoBudget,
    /// Not authenticated within `authentication_timeout_ms`.
    NotAuthenticated,
}

/// Serves one Kafka connection (plaintext or TLS) from `peer`, whose client certificate
/// named `principal` (if any).
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    shard: Rc<Shard>,
    net: Rc<ShardNet>,
    node: Arc<KafkaNode>,
    mut stream: S,
    peer: Option<std::net::SocketAddr>,
    principal: Option<Principal>,
) {
    let max_frame = shard.config().max_frame_bytes as usize;
    let mut session = api::Session::new(shard.config(), peer, principal);
    let authentication_deadline =
        Instant::now() + Duration::from_millis(shard.config().authentication_timeout_ms);
    loop {
        let read = if session.is_authenticated() {
            read_request(&mut stream, &net, max_frame).await
        } else {
            // Before authentication: the exchange's few hundred bytes at most, and only
            // until the deadline.
            let limit = max_frame.min(PRE_AUTHENTICATION_MAX_FRAME_BYTES);
            future::or(read_request(&mut stream, &net, limit), async {
                sleep(authentication_deadline.saturating_duration_since(Instant::now())).await;
                Err(End::NotAuthenticated)
            })
            .await
        };
        let (request, budget) = match read {
            Ok(request) => request,
            Err(End::Closed) => break,
            Err(End::NotAuthenticated) => {
                debug!(
                    shard = shard.id(),
                    "Kafka connection not authenticated within authentication_timeout_ms; closing"
                );
                break;
            }
            Err(End::ReadTimeout) => {
                debug!(
                    shard = shard.id(),
                    "Kafka request not complete within request_read_timeout_ms; closing"
                );
                break;
            }
            Err(End::Idle) => {
                debug!(shard = shard.id(), "closing an idle Kafka connection");
                break;
            }
            Err(End::NoBudget) => {
                debug!(
                    shard = shard.id(),
                    "shard_inflight_budget_bytes: no room for a Kafka request; closing"
                );
                break;
            }
        };
        shard.lifecycle().request_started();
        let answer = api::handle(&shard, &node, &mut session, &net.budget, request).await;
        shard.lifecycle().request_finished();
        drop(budget);
        match answer {
            api::Answer::Reply(bytes) => {
                // A TLS stream holds records until flushed; a plaintext one flushes at once.
                if stream.write_all(&bytes).await.is_err() || stream.flush().await.is_err() {
                    break;
                }
            }
            api::Answer::None => {}
            api::Answer::Close => break,
            api::Answer::ReplyThenClose(bytes) => {
                let _ = stream.write_all(&bytes).await;
                let _ = stream.flush().await;
                break;
            }
        }
    }
    let _ = stream.close().await;
}

/// Reads one size-prefixed request (the size is a big-endian i32), within the idle deadline
/// before its first byte and the read deadline after. Its bytes are reserved from the shard's
/// in-flight budget (the share for requests still arriving included, as on the native
/// connection) before its buffer is allocated, so connections that each announce a large
/// request and stall hold budget, not unbounded memory; the permit is the request's to hold.
async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    net: &ShardNet,
    max_frame: usize,
) -> Result<(bytes::Bytes, BudgetPermit), End> {
    let mut size = [0u8; 4];
    let idle = net.timeouts.idle;
    let first = within(stream.read(&mut size), idle, End::Idle).await?;
    let started = Instant::now();
    let deadline = started + net.timeouts.request_read;
    let mut got = first;
    while got < 4 {
        got += within(
            stream.read(&mut size[got..]),
            deadline.saturating_duration_since(Instant::now()),
            End::ReadTimeout,
        )
        .await?;
    }
    let len = i32::from_be_bytes(size);
    if len < 8 || len as usize > max_frame {
        debug!("a Kafka request of {len} bytes (max_frame_bytes {max_frame}); closing");
        return Err(End::Closed);
    }
    let (receiving, budget) = net
        .budget
        .reserve_receiving(len as u64)
        .await
        .ok_or(End::NoBudget)?;
    // Time spent waiting for the budget is the broker's, not the peer's.
    let deadline = Instant::now() + net.timeouts.request_read;
    let mut body = vec![0u8; len as usize];
    let mut got = 0;
    while got < body.len() {
        got += within(
            stream.read(&mut body[got..]),
            deadline.saturating_duration_since(Instant::now()),
            End::ReadTimeout,
        )
        .await?;
    }
    drop(receiving);
    Ok((bytes::Bytes::from(body), budget))
}

/// A read that returns at least one byte within `limit`, or `expired`.
async fn within(
    read: impl std::future::Future<Output = std::io::Result<usize>>,
    limit: Duration,
    expired: End,
) -> Result<usize, End> {
    let read = async {
        match read.await {
            Ok(0) | Err(_) => Err(End::Closed),
            Ok(n) => Ok(n),
        }
    };
    future::or(read, async {
        sleep(limit).await;
        Err(expired)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_id_is_stable_and_not_negative_and_the_advertised_address_splits() {
        for broker_id in [1, u64::MAX, i32::MAX as u64, 12_345_678_901_234] {
            let id = node_id_from_broker_id(broker_id);
            assert!(id >= 0);
            assert_eq!(id, node_id_from_broker_id(broker_id));
        }
        assert_eq!(
            split_host_port("mq1.example:9092"),
            Some(("mq1.example".to_string(), 9092))
        );
        assert_eq!(
            split_host_port("[::1]:9092"),
            Some(("::1".to_string(), 9092))
        );
        assert_eq!(split_host_port("mq1.example:0"), None);
        assert_eq!(split_host_port(":9092"), None);
    }
}
