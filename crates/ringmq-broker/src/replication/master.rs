//! The master side of replication links.
//!
//! Every shard accepts on the shared HA port; the handshake names the slave's shard, and a link
//! for another shard is handed to it over the mesh (the socket's descriptor, duplicated). The
//! owning shard then answers the handshake and runs two tasks per link: the shipper streams
//! commitlog bytes from the slave's offset, and the report reader turns 8-byte reports into
//! released SYNC_MASTER producers. A report past the master's end closes the link. The
//! shipper also sends this shard's metadata (topics from shard 0, the group offsets of its own
//! queues) right after the handshake, whenever it changes and every
//! `metadata_sync_interval_ms`.
//!
//! With `ha_security = "auth"` the owning shard first runs the challenge-response of
//! [`super::auth`] ([`authenticate`]): a slave that does not prove it holds the secret is
//! refused (counted, logged at a bounded rate) before the welcome, so it is never registered
//! as a replica, gets no byte of the log and no report of it is ever read.

use super::auth::{self, RefusalKind};
use super::error::ReplicationError;
use super::identity::describe_epoch;
use super::protocol::{
    decode_proof, divergence_point, encode_data_header, encode_heartbeat, encode_refusal,
    AclTrailer, Challenge, Hello, LinkSecurity, MetadataFrame, Welcome, ACL_TRAILER_VERSION,
    AUTH_REPORT_BYTES, HA_VERSION, HEARTBEAT_BYTES, MAX_HANDSHAKE_BYTES, MAX_METADATA_BYTES,
    METADATA_HEADER_BYTES, MIN_HA_VERSION, REPORT_BYTES,
};
use super::replicas::Replicas;
use super::splice::SpliceSender;
use super::tls::LinkStream;
use crate::config::HaSecurity;
use crate::metrics::Counter;
use crate::security::acl::{AclTable, Policy};
use crate::shard::mesh::ShardRequest;
use crate::shard::Shard;
use crate::store::io::Disk;
use futures_lite::future;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::spawn_local;
use glommio::timer::sleep;
use ringmq_protocol::auth::Secret;
use std::cell::Cell;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// Most bytes shipped in one data frame: large enough for full-speed catch-up, small enough
/// that a slave applies and acknowledges in steps.
pub const SHIP_CHUNK_BYTES: usize = 1 << 20;
/// How often a lagging ASYNC_MASTER slave may be warned about, per link.
const LAG_WARNING_EVERY: Duration = Duration::from_secs(10);
/// Most handshakes a shard runs at once before the slave has authenticated (from accept to
/// the end of the challenge). A group has a handful of slaves per shard and each reconnects
/// one link at a time, so honest peers need a few; each pending one holds a socket and a task
/// for up to `ha_link_timeout_ms`, so a scanner or a flood of silent connections costs a
/// shard at most this many, and connections past it are closed at once (counted).
const MAX_PRE_AUTH_HANDSHAKES: usize = 8;

thread_local! {
    /// Handshakes of this shard's thread not yet past authentication (shards are threads).
    static PRE_AUTH_HANDSHAKES: Cell<usize> = const { Cell::new(0) };
}

/// One of this shard's [`MAX_PRE_AUTH_HANDSHAKES`] slots, released when dropped.
struct PreAuthSlot;

impl PreAuthSlot {
    fn take() -> Option<PreAuthSlot> {
        PRE_AUTH_HANDSHAKES.with(|n| {
            (n.get() < MAX_PRE_AUTH_HANDSHAKES).then(|| {
                n.set(n.get() + 1);
                PreAuthSlot
            })
        })
    }
}

impl Drop for PreAuthSlot {
    fn drop(&mut self) {
        PRE_AUTH_HANDSHAKES.with(|n| n.set(n.get() - 1));
    }
}

/// What is left until `deadline` (zero once it passed: the next bounded step fails at once).
fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

pub async fn accept_loop<D: Disk>(shard: Rc<Shard<D>>, fd: RawFd) {
    // SAFETY: a listening socket bound by the main thread, owned by this task.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    loop {
        match listener.accept().await {
            Ok(stream) => {
                spawn_local(handshake(shard.clone(), stream)).detach();
            }
            Err(e) => {
                warn!(shard = shard.id(), "replication accept failed: {e}");
                sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads a slave's hello. A hello of another protocol version is answered with a refusal that
/// names both versions (the slave logs it) before the error returns.
async fn read_hello<D: Disk, S: AsyncRead + AsyncWrite + Unpin>(
    shard: &Shard<D>,
    stream: &mut S,
) -> Result<Hello, ReplicationError> {
    let timeout = Duration::from_millis(shard.config().ha_link_timeout_ms);
    let mut len = [0u8; 4];
    with_timeout(
        timeout,
        "reading the handshake",
        stream.read_exact(&mut len),
    )
    .await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_HANDSHAKE_BYTES {
        return Err(ReplicationError::TooLarge {
            what: "handshake",
            len,
            max: MAX_HANDSHAKE_BYTES,
        });
    }
    let mut body = vec![0u8; len];
    with_timeout(
        timeout,
        "reading the handshake",
        stream.read_exact(&mut body),
    )
    .await?;
    let version = Hello::version_of(&body).map_err(ReplicationError::decode("handshake"))?;
    if !(MIN_HA_VERSION..=HA_VERSION).contains(&version) {
        let reason = version_refusal(version);
        let mut answer = Vec::new();
        encode_refusal(&reason, &mut answer);
        with_timeout(timeout, "refusing the slave", stream.write_all(&answer)).await?;
        return Err(ReplicationError::Protocol(reason));
    }
    Hello::decode(&body).map_err(ReplicationError::decode("handshake"))
}

/// Why a slave of protocol version `slave` is refused.
pub fn version_refusal(slave: u16) -> String {
    format!(
        "the slave speaks replication protocol version {slave}, this master version {HA_VERSION} \
         (and takes slaves of version {MIN_HA_VERSION} to {HA_VERSION})"
    )
}

/// Runs `io`, failing it when it takes longer than `timeout` (the peer went silent).
pub async fn with_timeout<T>(
    timeout: Duration,
    what: &'static str,
    io: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, ReplicationError> {
    future::or(
        async { io.await.map_err(|e| ReplicationError::io(what, e)) },
        async {
            sleep(timeout).await;
            Err(ReplicationError::Silent {
                ms: timeout.as_millis(),
            })
        },
    )
    .await
}

async fn handshake<D: Disk>(shard: Rc<Shard<D>>, mut stream: TcpStream) {
    if shard.config().ha_security == HaSecurity::Tls {
        return tls_handshake(shard, stream).await;
    }
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let timeout = Duration::from_millis(shard.config().ha_link_timeout_ms);
    // One deadline for the whole handshake (hello, challenge and proof, the answer), however
    // slowly the peer's bytes trickle in, on this shard or the one it is handed to.
    let deadline = Instant::now() + timeout;
    let Some(slot) = PreAuthSlot::take() else {
        shard.probe().add(Counter::ReplicationHandshakesRefused, 1);
        auth::log_refusal(
            shard.id(),
            &peer,
            RefusalKind::Hello,
            &format!("{MAX_PRE_AUTH_HANDSHAKES} handshakes are already pending on this shard"),
        );
        return;
    };
    let read = future::or(read_hello(&shard, &mut stream), async {
        sleep(timeout).await;
        Err(ReplicationError::Silent {
            ms: timeout.as_millis(),
        })
    });
    let hello = match read.await {
        Ok(h) => h,
        Err(e) => {
            shard.probe().add(Counter::ReplicationHandshakesRefused, 1);
            let reason = format!("handshake failed: {e}");
            auth::log_refusal(shard.id(), &peer, RefusalKind::Hello, &reason);
            return;
        }
    };
    let target = hello.shard as usize;
    if target == shard.id() || target >= shard.shard_count() {
        serve_slave(shard, stream, hello, peer, deadline, slot).await;
        return;
    }
    // The target shard takes a slot of its own.
    drop(slot);
    // SAFETY: dup gives the target shard its own descriptor for the same socket.
    let fd = unsafe { libc::dup(stream.as_raw_fd()) };
    if fd < 0 {
        warn!(shard = shard.id(), "dup of a replication socket failed");
        return;
    }
    drop(stream);
    let request = ShardRequest::AdoptReplicaLink {
        fd,
        hello: Box::new(hello),
        peer,
        deadline,
    };
    if let Err(gone) = shard.mesh().send(target, request).await {
        warn!(
            shard = shard.id(),
            "handing a replication link to shard {} failed", gone.0
        );
    }
}

/// Runs on the target shard for a link accepted by another shard.
pub async fn adopt<D: Disk>(
    shard: Rc<Shard<D>>,
    fd: RawFd,
    hello: Hello,
    peer: String,
    deadline: Instant,
) {
    // SAFETY: `fd` was duplicated for this shard by the accepting one.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let Some(slot) = PreAuthSlot::take() else {
        shard.probe().add(Counter::ReplicationHandshakesRefused, 1);
        auth::log_refusal(
            shard.id(),
            &peer,
            RefusalKind::Hello,
            &format!("{MAX_PRE_AUTH_HANDSHAKES} handshakes are already pending on this shard"),
        );
        return;
    };
    serve_slave(shard, stream, hello, peer, deadline, slot).await;
}

/// With `ha_security = "auth"`: challenges the slave and checks its proof (see
/// [`super::auth`]), the whole exchange bounded by `ha_link_timeout_ms`. `Ok` lets the
/// handshake go on to the welcome; an `Auth` error is a refusal to send to the slave, any
/// other error a link that failed meanwhile.
async fn authenticate<D: Disk, S: AsyncRead + AsyncWrite + Unpin>(
    shard: &Shard<D>,
    stream: &mut S,
    hello: &Hello,
    deadline: Instant,
) -> Result<Option<Secret>, ReplicationError> {
    let config = shard.config();
    let secret = match (config.ha_security, &config.ha_secret) {
        (HaSecurity::Auth, Some(secret)) => secret,
        // Validation loads the secret with "auth"; a configuration built otherwise without
        // one must not turn "auth" into "off" (fail closed).
        (HaSecurity::Auth, None) => {
            return Err(ReplicationError::Auth(
                "this master requires ha_security = \"auth\" but holds no ha_secret".to_string(),
            ))
        }
        // "tls": the TLS handshake authenticated the slave; a hello that says otherwise is
        // not one of this master's slaves.
        (HaSecurity::Tls, _) if hello.security != LinkSecurity::Tls => {
            return Err(ReplicationError::Auth(
                "this master requires ha_security = \"tls\" and the slave's hello says otherwise"
                    .to_string(),
            ))
        }
        // "off" (and "tls"): the welcome follows at once (a slave that requires
        // authentication refuses it).
        _ => return Ok(None),
    };
    if hello.security != LinkSecurity::Auth {
        return Err(ReplicationError::Auth(
            "this master requires ha_security = \"auth\" and the slave connected without it \
             (set ha_security and ha_secret_file on the slave)"
                .to_string(),
        ));
    }
    let challenge = Challenge {
        version: hello.version,
        nonce: auth::fresh_nonce()
            .map_err(|e| ReplicationError::io("drawing the challenge's nonce", e))?,
        broker_name: config.broker_name.clone(),
        last_epoch: shard.role_state().identity().last_epoch(),
    };
    let timeout = Duration::from_millis(config.ha_link_timeout_ms);
    let exchange = async {
        let mut bytes = Vec::new();
        challenge.encode(&auth::master_proof(secret, hello, &challenge), &mut bytes);
        stream
            .write_all(&bytes)
            .await
            .map_err(|e| ReplicationError::io("sending the challenge", e))?;
        let mut len = [0u8; 4];
        stream
            .read_exact(&mut len)
            .await
            .map_err(|e| ReplicationError::io("reading the slave's proof", e))?;
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_HANDSHAKE_BYTES {
            return Err(ReplicationError::TooLarge {
                what: "the slave's proof",
                len,
                max: MAX_HANDSHAKE_BYTES,
            });
        }
        let mut body = vec![0u8; len];
        stream
            .read_exact(&mut body)
            .await
            .map_err(|e| ReplicationError::io("reading the slave's proof", e))?;
        let proof = decode_proof(&body).map_err(|e| {
            ReplicationError::Auth(format!("the slave's proof does not decode: {e}"))
        })?;
        if !auth::verify_slave(secret, hello, &challenge, &proof) {
            return Err(ReplicationError::Auth(
                "the slave's proof does not match: its ha_secret_file differs from this \
                 master's"
                    .to_string(),
            ));
        }
        Ok(Some(auth::session_key(secret, hello, &challenge)))
    };
    future::or(exchange, async {
        sleep(remaining(deadline)).await;
        Err(ReplicationError::Auth(format!(
            "the slave did not complete the handshake within {} ms",
            timeout.as_millis()
        )))
    })
    .await
}

/// The checks that need no secret, run before the challenge: only a master of the slave's
/// group answers a challenge at all. Every shard accepts on the HA port whatever its role, so
/// without this a slave-role shard would compute the master's proof for any hello, its own
/// included: an attacker forwarding a slave's hello to that slave's own HA port would get
/// back exactly the challenge and proof the slave's link accepts, and could feed it. A hello
/// with a nonce this process sent itself is refused for the same reason (whatever the role,
/// a reflected hello is never a slave).
fn precheck<D: Disk>(shard: &Shard<D>, hello: &Hello) -> Result<(), String> {
    let config = &shard.config();
    if hello.security == LinkSecurity::Auth && auth::is_own_hello(&hello.nonce) {
        return Err("the hello is one this broker sent itself (reflected back)".to_string());
    }
    if !shard.role().is_master() {
        return Err(format!(
            "{} is a {}, not a master",
            config.broker_name,
            shard.role()
        ));
    }
    if hello.broker_name != config.broker_name {
        return Err(format!(
            "slave belongs to group `{}`, this master to `{}`",
            hello.broker_name, config.broker_name
        ));
    }
    Ok(())
}

/// What the master answers a slave, and where it will ship from; `Err` holds why it refuses.
fn welcome<D: Disk>(shard: &Shard<D>, hello: &Hello) -> Result<(Welcome, u64), String> {
    let config = &shard.config();
    // Again after the challenge: the role may have changed meanwhile.
    precheck(shard, hello)?;
    if hello.shard as usize != shard.id() || hello.shard_count as usize != shard.shard_count() {
        return Err(format!(
            "slave shard {} of {} cannot follow master shard {} of {}",
            hello.shard,
            hello.shard_count,
            shard.id(),
            shard.shard_count()
        ));
    }
    if hello.segment_size_bytes != config.segment_size_bytes {
        return Err(format!(
            "segment_size_bytes differs (slave {}, master {}); logs would not line up",
            hello.segment_size_bytes, config.segment_size_bytes
        ));
    }
    let identity = shard.role_state().identity();
    let fresh = hello.log_id == [0; 16];
    if !fresh && hello.log_id != identity.log_id {
        return Err(
            "the slave holds another log (its log id differs); empty its store to follow this master"
                .to_string(),
        );
    }
    if hello.last_epoch > identity.last_epoch() {
        return Err(format!(
            "the slave has seen epoch {} but this master is at epoch {}: this master is stale",
            hello.last_epoch,
            identity.last_epoch()
        ));
    }
    let master_max = shard.store().max_offset();
    let mut truncate_to = if fresh && hello.max_offset == 0 {
        u64::MAX
    } else {
        divergence_point(&identity.epochs, hello.last_epoch)
    };
    if hello.max_offset.min(truncate_to) > master_max {
        // The slave holds bytes this master lost (unflushed when it crashed): cut them.
        truncate_to = master_max;
    }
    let mut start = hello.max_offset.min(truncate_to);
    let head = shard.store().log_head();
    let restart = start < head;
    if restart {
        if hello.max_offset > head {
            // The slave's log diverged before the head and holds bytes past it: it can neither
            // be cut back (the master no longer has the log there) nor restarted without
            // discarding bytes the master still retains under other contents.
            return Err(format!(
                "the slave's log diverged at offset {start}, before this master's log head \
                 {head} (retention deleted the log there): empty the slave's store to follow \
                 this master"
            ));
        }
        // Retention deleted what the slave lacks, and the slave holds nothing at or past the
        // head: it starts over, empty, at the head (RocketMQ's `syncFromLastFile`). A
        // `truncate_to` at or past the slave's end says so.
        truncate_to = head;
        start = head;
    }
    let welcome = Welcome {
        version: hello.version,
        log_id: identity.log_id,
        epochs: identity.epochs,
        truncate_to: if truncate_to < hello.max_offset || restart {
            truncate_to
        } else {
            u64::MAX
        },
    };
    Ok((welcome, start))
}

async fn serve_slave<D: Disk, S: LinkStream>(
    shard: Rc<Shard<D>>,
    mut stream: S,
    hello: Hello,
    peer: String,
    deadline: Instant,
    slot: PreAuthSlot,
) {
    if let Err(reason) = precheck(&shard, &hello) {
        shard.probe().add(Counter::ReplicationHandshakesRefused, 1);
        auth::log_refusal(shard.id(), &peer, RefusalKind::Peer, &reason);
        let mut bytes = Vec::new();
        encode_refusal(&reason, &mut bytes);
        let refusing = stream.write_all(&bytes);
        let _ = with_timeout(remaining(deadline), "refusing the slave", refusing).await;
        return;
    }
    let session = match authenticate(&shard, &mut stream, &hello, deadline).await {
        Ok(session) => session,
        Err(e) => {
            shard.probe().add(Counter::ReplicationHandshakesRefused, 1);
            let kind = match e {
                ReplicationError::Auth(_) => RefusalKind::Auth,
                _ => RefusalKind::Hello,
            };
            auth::log_refusal(shard.id(), &peer, kind, &e.to_string());
            if let ReplicationError::Auth(reason) = &e {
                // The slave logs why; the reason names only what was expected.
                let mut bytes = Vec::new();
                encode_refusal(&format!("authentication failed: {reason}"), &mut bytes);
                let refusing = stream.write_all(&bytes);
                let _ = with_timeout(remaining(deadline), "refusing the slave", refusing).await;
            }
            return;
        }
    };
    let answer = welcome(&shard, &hello);
    let mut bytes = Vec::new();
    match &answer {
        Ok((welcome, _)) => {
            welcome.encode(&mut bytes);
            if let Some(session) = &session {
                // After the length-prefixed welcome: its tag under the session key.
                let tag = auth::welcome_tag(session, &bytes[4..]);
                bytes.extend_from_slice(&tag);
            }
        }
        Err(reason) => encode_refusal(reason, &mut bytes),
    }
    let answering = stream.write_all(&bytes);
    if with_timeout(remaining(deadline), "answering the slave", answering)
        .await
        .is_err()
    {
        return;
    }
    // Past the handshake: an authenticated (or, with "off", accepted) link no longer counts
    // against the pending handshakes.
    drop(slot);
    let (start, term) = match answer {
        Ok((welcome, start)) => (start, welcome.epochs.last().map_or(0, |(epoch, _)| *epoch)),
        Err(reason) => {
            shard.probe().add(Counter::ReplicationHandshakesRefused, 1);
            warn!(shard = shard.id(), %peer, "refused a slave: {reason}");
            return;
        }
    };
    // The welcome refuses unless this shard is a master, so it has this term's replicas.
    let Some(replicas) = shard.replicas() else {
        return;
    };
    if shard.role_state().last_epoch() != term {
        // A term re-opened while the welcome was sent (controller mode): the slave took the
        // old term's epochs, and would fence this master; it reconnects into the new term.
        info!(shard = shard.id(), %peer, "a new term opened during the handshake; the slave reconnects");
        return;
    }
    let fd = stream.socket_fd();
    let _ = socket2::SockRef::from(&BorrowedSocket(fd)).set_nodelay(true);
    let link = replicas.register(peer.clone(), start, hello.controller_broker_id);
    info!(shard = shard.id(), %peer, start_offset = start, "slave connected");
    if let Ok((reader, mut stream)) = stream.split_link() {
        let closed = Rc::new(Cell::new(false));
        let reports = spawn_local(read_reports(
            shard.clone(),
            replicas.clone(),
            reader,
            fd,
            link,
            session,
            closed.clone(),
        ));
        let splice_fd = S::ZERO_COPY.then_some(fd);
        let result = ship(
            &shard,
            &replicas,
            &mut stream,
            splice_fd,
            start,
            hello.version,
            &closed,
        )
        .await;
        if let Err(e) = result {
            info!(shard = shard.id(), %peer, "slave link closed: {e}");
        }
        closed.set(true);
        shutdown_socket(fd);
        drop(stream);
        reports.await;
    }
    replicas.unregister(link);
    info!(shard = shard.id(), %peer, "slave disconnected");
    // Controller mode without a lease (the controllers unreachable): this master cannot have
    // a member that left removed from the set, so `all`-level produces waiting for it would
    // only time out; they are answered FLUSH_SLAVE_TIMEOUT now (stored, not confirmed), and
    // new ones NOT_MASTER (`produce::check_controller_mode`).
    if shard.config().controller_mode()
        && !shard.controller().leased(shard.clock().now())
        && !replicas.every_required_linked()
    {
        replicas.completions.fail_waiting();
    }
}

async fn read_reports<D: Disk, R: AsyncRead + Unpin>(
    shard: Rc<Shard<D>>,
    replicas: Rc<Replicas>,
    mut reader: R,
    fd: RawFd,
    link: u64,
    session: Option<Secret>,
    closed: Rc<Cell<bool>>,
) {
    let timeout = Duration::from_millis(shard.config().ha_link_timeout_ms);
    let mut report = [0u8; AUTH_REPORT_BYTES];
    let report_len = if session.is_some() {
        AUTH_REPORT_BYTES
    } else {
        REPORT_BYTES
    };
    let mut last_warning: Option<Instant> = None;
    let mut number = 0u64;
    while !closed.get() {
        let reading = reader.read_exact(&mut report[..report_len]);
        if let Err(e) = with_timeout(timeout, "reading a report", reading).await {
            info!(shard = shard.id(), "slave report stream ended: {e}");
            break;
        }
        let offset = u64::from_le_bytes(report[..REPORT_BYTES].try_into().expect("8 bytes"));
        if let Some(session) = &session {
            let tag = &report[REPORT_BYTES..AUTH_REPORT_BYTES];
            if !auth::verify_report(session, number, offset, tag) {
                // Not the authenticated slave's report (altered, replayed or injected on the
                // path): it moves nothing, and the link ends.
                shard.probe().add(Counter::ReplicationHandshakesRefused, 1);
                auth::log_refusal(
                    shard.id(),
                    &format!("link {link}"),
                    RefusalKind::Auth,
                    &format!("report {number} of a slave link carries a wrong tag; closing it"),
                );
                break;
            }
            number += 1;
        }
        let master_max = shard.store().max_offset();
        match replicas.report(link, offset, master_max) {
            Ok(advanced) => {
                if advanced {
                    shard.publish_confirmed();
                    shard.role_state().wake_links();
                }
            }
            Err(fake) => {
                error!(
                    shard = shard.id(),
                    reported = fake.reported,
                    master_max = fake.master_max,
                    "a slave acknowledged an offset beyond this master's log; closing the link"
                );
                break;
            }
        }
        let lag = master_max.saturating_sub(offset);
        if lag > shard.config().ha_lag_warn_bytes
            && last_warning.is_none_or(|at| {
                shard.clock().now().saturating_duration_since(at) >= LAG_WARNING_EVERY
            })
        {
            last_warning = Some(shard.clock().now());
            warn!(shard = shard.id(), lag_bytes = lag, "slave lags behind");
        }
    }
    closed.set(true);
    // The shipper may be blocked sending to a peer that stopped reading: shutting the socket
    // down makes that send fail now rather than when TCP gives up.
    shutdown_socket(fd);
    shard.role_state().wake_links();
}

/// A descriptor borrowed for a socket option call (the link's stream owns it).
struct BorrowedSocket(RawFd);

impl AsRawFd for BorrowedSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Ends both directions of a link's socket, so every task blocked on it returns.
pub fn shutdown_socket(fd: RawFd) {
    // SAFETY: shutdown(2) on a descriptor the caller owns; errors (already closed) are moot.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// Per link: the splice ring and the segment file it reads from.
struct Shipper {
    /// The pipe splice moves segment bytes through; none under TLS, where nothing is spliced
    /// (a pipe is two descriptors and 1 MiB of kernel buffer a TLS link would never use).
    splice: Option<SpliceSender>,
    /// A plain buffered read-only descriptor of the segment being shipped: splice reads the
    /// page cache, which sees what the O_DIRECT writes put on disk.
    segment: Option<(u64, std::fs::File)>,
}

impl Shipper {
    fn segment_file(
        &mut self,
        path: &std::path::Path,
        base: u64,
    ) -> Result<RawFd, ReplicationError> {
        if self.segment.as_ref().is_none_or(|(b, _)| *b != base) {
            let file = std::fs::File::open(path)
                .map_err(|e| ReplicationError::io(path.display().to_string(), e))?;
            self.segment = Some((base, file));
        }
        Ok(self.segment.as_ref().expect("just opened").1.as_raw_fd())
    }
}

/// Streams the log from `start` until the link closes, and the metadata frames between.
async fn ship<D: Disk, W: AsyncWrite + Unpin>(
    shard: &Rc<Shard<D>>,
    replicas: &Rc<Replicas>,
    stream: &mut W,
    splice_fd: Option<RawFd>,
    start: u64,
    link_version: u16,
    closed: &Cell<bool>,
) -> Result<(), ReplicationError> {
    let heartbeat = Duration::from_millis(shard.config().ha_heartbeat_interval_ms);
    let metadata_every = Duration::from_millis(shard.config().metadata_sync_interval_ms);
    let link_timeout = Duration::from_millis(shard.config().ha_link_timeout_ms);
    // The term the welcome named (`serve_slave` checked it before the first await since).
    let term = shard.role_state().last_epoch();
    let splice = match splice_fd {
        Some(_) => Some(
            SpliceSender::new().map_err(|e| ReplicationError::io("creating the splice ring", e))?,
        ),
        None => None,
    };
    let mut shipper = Shipper {
        splice,
        segment: None,
    };
    let clock = shard.clock();
    let mut sent = start;
    let mut last_sent_at = clock.now();
    let mut confirmed_sent = 0u64;
    let mut metadata = MetadataPacing::new(heartbeat, metadata_every);
    let mut acls = AclsSent::new(link_version);
    while !closed.get() {
        // A demotion (or a demotion and a promotion back) ends this term: its links stop.
        if !shard.replicas().is_some_and(|r| Rc::ptr_eq(&r, replicas)) {
            return Err(ReplicationError::Protocol(
                "this shard is no longer the master that accepted the link".to_string(),
            ));
        }
        // A term re-opened since the link began (controller mode): the slave holds the old
        // term's epochs, and fences a master in it; it reconnects and takes the new ones.
        if shard.role_state().last_epoch() != term {
            return Err(ReplicationError::Protocol(format!(
                "this master opened term {} after the link's handshake (in {})",
                describe_epoch(shard.role_state().last_epoch()),
                describe_epoch(term)
            )));
        }
        let version = shard.metadata().version();
        if metadata.due(version, clock.now()) {
            send_metadata(shard, stream, version, &mut acls).await?;
            metadata.sent(version, clock.now());
            last_sent_at = clock.now();
            continue;
        }
        let max = shard.store().max_offset();
        if sent < max {
            confirmed_sent = shard.confirmed_offset();
            let shipped = ship_chunk(shard, &mut shipper, stream, splice_fd, sent, max).await?;
            // A frame of no bytes would loop here forever without moving the link.
            debug_assert!(shipped > 0, "an empty data frame at {sent} (log end {max})");
            sent += shipped;
            last_sent_at = clock.now();
            continue;
        }
        // A heartbeat also goes out when the confirmed offset moved (a flush or a slave ack), so
        // the slave's consumers see records as soon as the master's guarantee holds.
        let confirmed = shard.confirmed_offset();
        let since_sent = clock.now().saturating_duration_since(last_sent_at);
        if since_sent >= heartbeat || confirmed != confirmed_sent {
            confirmed_sent = confirmed;
            let beat = encode_heartbeat(max, confirmed);
            stream
                .write_all(&beat[..HEARTBEAT_BYTES])
                .await
                .map_err(|e| ReplicationError::io("sending a heartbeat", e))?;
            last_sent_at = clock.now();
            continue;
        }
        // Topic and group-offset changes bump the metadata version, which wakes this too; a
        // change that came too soon after the last metadata frame waits for its turn.
        let mut wait = heartbeat.saturating_sub(since_sent);
        if let Some(turn) = metadata.wait(version, clock.now()) {
            wait = wait.min(turn);
        }
        // rustls takes plaintext and keeps its records while the socket is full (its write
        // returns Ok all the same): before going idle they must leave, or the last frames wait
        // for the next heartbeat, and so do the SYNC_MASTER producers they would release.
        with_timeout(link_timeout, "flushing the link", stream.flush()).await?;
        shard.wait_replication_news(wait).await;
    }
    Ok(())
}

/// When a shipper sends metadata. The first frame goes out before any log bytes; then a full
/// snapshot every `every`, and a change (every group commit is one) at most once per
/// `heartbeat`: changes coalesce, so commits in a tight loop cost one frame per heartbeat
/// interval and the log keeps flowing between them.
struct MetadataPacing {
    heartbeat: Duration,
    every: Duration,
    /// (version, when) of the last metadata frame.
    sent: Option<(u64, Instant)>,
}

impl MetadataPacing {
    fn new(heartbeat: Duration, every: Duration) -> MetadataPacing {
        MetadataPacing {
            heartbeat,
            every,
            sent: None,
        }
    }

    /// Whether a frame for `version` should go out at `now`.
    fn due(&self, version: u64, now: Instant) -> bool {
        self.wait(version, now) == Some(Duration::ZERO)
            || self
                .sent
                .is_some_and(|(_, at)| now.saturating_duration_since(at) >= self.every)
    }

    /// How long until a frame for `version` is due, `None` when only the periodic snapshot is.
    fn wait(&self, version: u64, now: Instant) -> Option<Duration> {
        match self.sent {
            None => Some(Duration::ZERO),
            Some((v, _)) if v == version => None,
            Some((_, at)) => Some(
                self.heartbeat
                    .saturating_sub(now.saturating_duration_since(at)),
            ),
        }
    }

    fn sent(&mut self, version: u64, at: Instant) {
        self.sent = Some((version, at));
    }
}

/// What one link was last sent of the ACL state, so the table (up to `MAX_ACL_RULES` rules)
/// travels on a link's first frame and after each change rather than in every frame.
struct AclsSent {
    /// Whether the link carries the trailer at all (version 4 on; a version-3 slave would
    /// skip every frame that has one).
    trailer: bool,
    /// The shard's table as it was last sent (compared by pointer: a change swaps the `Arc`).
    table: Option<Arc<AclTable>>,
}

impl AclsSent {
    fn new(link_version: u16) -> AclsSent {
        AclsSent {
            trailer: link_version >= ACL_TRAILER_VERSION,
            table: None,
        }
    }

    /// The trailer for the next frame of `shard`; `sent` is to be called once it went out.
    /// Only shard 0 sends rules (every shard holds the same); the master's own authorization
    /// and superusers go with them, so its slaves decide as it does.
    fn next<D: Disk>(&self, shard: &Shard<D>) -> (AclTrailer, Option<Arc<AclTable>>) {
        if !self.trailer {
            return (AclTrailer::Absent, None);
        }
        let current = shard.acls();
        let same = self
            .table
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(t, &current));
        if shard.id() != 0 || same {
            return (AclTrailer::Unchanged, None);
        }
        let config = shard.config();
        let table = AclTable {
            rules: current.rules.clone(),
            master: Some(Policy {
                authorization: config.authorization,
                superusers: config.superusers.clone(),
            }),
        };
        (AclTrailer::Table(table), Some(current))
    }
}

/// Sends this shard's metadata as of `version`: the topic table from shard 0 (every shard
/// holds the same table, one copy is enough), the group offsets of this shard's queues, and
/// the ACL trailer ([`AclsSent`]). A snapshot over [`MAX_METADATA_BYTES`] is counted and
/// logged, not sent.
async fn send_metadata<D: Disk, W: AsyncWrite + Unpin>(
    shard: &Shard<D>,
    stream: &mut W,
    version: u64,
    acls: &mut AclsSent,
) -> Result<(), ReplicationError> {
    let (trailer, table) = acls.next(shard);
    let frame = MetadataFrame {
        version,
        topics: (shard.id() == 0).then(|| (*shard.topic_table()).clone()),
        group_offsets: shard.metadata().groups().all_rows(),
        acls: trailer,
        users: users_to_ship(shard),
    }
    .encode();
    let len = frame.len() - METADATA_HEADER_BYTES;
    if len > MAX_METADATA_BYTES {
        // The slave would skip it; the log matters more than this snapshot, so keep the link
        // and say why the slave's metadata stays behind.
        shard.probe().add(Counter::ReplicationMetadataErrors, 1);
        warn!(
            shard = shard.id(),
            len,
            max = MAX_METADATA_BYTES,
            "not sending a metadata snapshot larger than a slave accepts; log shipping goes on"
        );
        return Ok(());
    }
    stream
        .write_all(&frame)
        .await
        .map_err(|e| ReplicationError::io("sending metadata", e))?;
    if table.is_some() {
        acls.table = table;
    }
    Ok(())
}

/// The user table, from shard 0 once a user was ever made (generation above 0); otherwise the
/// frame says "no users" and a slave keeps its own table.
fn users_to_ship<D: Disk>(shard: &Shard<D>) -> Option<crate::security::users::UserTable> {
    if shard.id() != 0 {
        return None;
    }
    let users = shard.metadata().users();
    (users.generation > 0).then(|| (*users).clone())
}

/// Sends one frame of the log starting at `from`, never past its segment, and never across the
/// flushed offset: bytes on disk go by splice (file → pipe → socket, no user-space copy), the
/// unflushed tail straight from the write buffer. Returns the bytes of log it carried.
async fn ship_chunk<D: Disk, W: AsyncWrite + Unpin>(
    shard: &Rc<Shard<D>>,
    shipper: &mut Shipper,
    stream: &mut W,
    splice_fd: Option<RawFd>,
    from: u64,
    max: u64,
) -> Result<u64, ReplicationError> {
    let log = shard.store().commitlog();
    let flushed = shard.store().flushed_offset();
    let segment_end = (from / log.segment_size_bytes() + 1) * log.segment_size_bytes();
    let mut end = max.min(segment_end).min(from + SHIP_CHUNK_BYTES as u64);
    if from < flushed {
        end = end.min(flushed);
    }
    let len = (end - from) as usize;
    // The segment is found and opened before the frame's header goes out: if retention
    // deleted it (disk pressure may delete what a slave still needs), the link ends with a
    // clear error instead of a header the slave would wait on bytes for. A descriptor opened
    // earlier still reads a segment unlinked since.
    let on_disk = if from < flushed {
        let base = from / log.segment_size_bytes() * log.segment_size_bytes();
        let path = log.segment_path(base);
        let cached = shipper.segment.as_ref().is_some_and(|(b, _)| *b == base);
        if !cached && log.segment_of(from).is_none() {
            return Err(ReplicationError::Store(format!(
                "the slave needs offset {from}, but retention deleted it (the log head is {})",
                shard.store().log_head()
            )));
        }
        Some((shipper.segment_file(&path, base)?, path, base))
    } else {
        None
    };
    let header = encode_data_header(from, len as u32, shard.confirmed_offset());
    stream
        .write_all(&header)
        .await
        .map_err(|e| ReplicationError::io("sending a data frame", e))?;
    let (Some(socket), Some(splice)) = (splice_fd, shipper.splice.as_mut()) else {
        // Under TLS: every byte goes through rustls, read from the log into memory first.
        copy_range(shard, stream, from, len).await?;
        shard
            .probe()
            .add(Counter::ReplicationShippedBytes, len as u64);
        return Ok(len as u64);
    };
    if let Some((fd, path, base)) = on_disk {
        splice
            .send_file_range(fd, from - base, len, socket)
            .await
            .map_err(|e| {
                ReplicationError::io(format!("splicing {} at {}", path.display(), from - base), e)
            })?;
        shard
            .probe()
            .add(Counter::ReplicationSplicedBytes, len as u64);
    } else {
        send_tail(shard, stream, socket, from, len).await?;
    }
    shard
        .probe()
        .add(Counter::ReplicationShippedBytes, len as u64);
    Ok(len as u64)
}

/// Sends `len` unflushed bytes from the write buffer with non-blocking `send` calls made
/// while the buffer is borrowed: the kernel copies them into the socket, this process copies
/// nothing. If the socket is full, the rest is copied out and written asynchronously (counted
/// in `replication_copied_bytes_total`).
async fn send_tail<D: Disk, W: AsyncWrite + Unpin>(
    shard: &Shard<D>,
    stream: &mut W,
    fd: RawFd,
    from: u64,
    len: usize,
) -> Result<(), ReplicationError> {
    let log = shard.store().commitlog();
    let mut done = 0usize;
    while done < len {
        let sent = log.with_buffered(from + done as u64, len - done, |bytes| {
            // SAFETY: `bytes` is a live borrow of the write buffer for the whole call.
            unsafe {
                libc::send(
                    fd,
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            }
        });
        match sent {
            Some(n) if n > 0 => done += n as usize,
            Some(_) => {
                let error = std::io::Error::last_os_error();
                if error.kind() != std::io::ErrorKind::WouldBlock {
                    return Err(ReplicationError::io("sending the log tail", error));
                }
                break;
            }
            None => break,
        }
    }
    if done < len {
        copy_range(shard, stream, from + done as u64, len - done).await?;
    }
    Ok(())
}

/// The copy path (`ha_security = "tls"`, and a log tail the socket had no room for): `len`
/// bytes of the log from `from`, read into memory (the write buffer or the segment) and
/// written through the stream (counted in `replication_copied_bytes_total`).
async fn copy_range<D: Disk, W: AsyncWrite + Unpin>(
    shard: &Shard<D>,
    stream: &mut W,
    from: u64,
    len: usize,
) -> Result<(), ReplicationError> {
    let bytes = shard
        .store()
        .commitlog()
        .read(from, len)
        .await
        .map_err(|e| ReplicationError::Store(e.to_string()))?;
    // The data frame's header already promised `len` bytes: fewer would make the slave read
    // the next frame's header as log bytes.
    if bytes.len() != len {
        return Err(ReplicationError::Store(format!(
            "reading {len} bytes of the log at {from} for a slave gave {}",
            bytes.len()
        )));
    }
    shard
        .probe()
        .add(Counter::ReplicationCopiedBytes, bytes.len() as u64);
    stream
        .write_all(&bytes)
        .await
        .map_err(|e| ReplicationError::io("sending log bytes", e))
}

/// With `ha_security = "tls"`: reads the slave's preface and hands the socket, before TLS, to
/// the shard it names (see [`super::tls`]).
async fn tls_handshake<D: Disk>(shard: Rc<Shard<D>>, mut stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let timeout = Duration::from_millis(shard.config().ha_link_timeout_ms);
    let deadline = Instant::now() + timeout;
    let Some(slot) = PreAuthSlot::take() else {
        shard.probe().add(Counter::ReplicationHandshakesRefused, 1);
        auth::log_refusal(
            shard.id(),
            &peer,
            RefusalKind::Hello,
            &format!("{MAX_PRE_AUTH_HANDSHAKES} handshakes are already pending on this shard"),
        );
        return;
    };
    let mut preface = [0u8; super::tls::PREFACE_BYTES];
    let reading = with_timeout(
        timeout,
        "reading the TLS preface",
        stream.read_exact(&mut preface),
    );
    let target = match reading
        .await
        .map_err(|e| e.to_string())
        .and_then(|()| super::tls::decode_preface(&preface))
    {
        Ok(target) => target as usize,
        Err(reason) => {
            shard.probe().add(Counter::ReplicationHandshakesRefused, 1);
            auth::log_refusal(shard.id(), &peer, RefusalKind::Hello, &reason);
            return;
        }
    };
    if target == shard.id() || target >= shard.shard_count() {
        serve_tls_slave(shard, stream, peer, deadline, slot).await;
        return;
    }
    drop(slot);
    // SAFETY: dup gives the target shard its own descriptor for the same socket.
    let fd = unsafe { libc::dup(stream.as_raw_fd()) };
    if fd < 0 {
        warn!(shard = shard.id(), "dup of a replication socket failed");
        return;
    }
    drop(stream);
    let request = ShardRequest::AdoptTlsReplicaLink { fd, peer, deadline };
    if let Err(gone) = shard.mesh().send(target, request).await {
        warn!(
            shard = shard.id(),
            "handing a replication link to shard {} failed", gone.0
        );
    }
}

/// Runs on the target shard for a TLS link accepted by another shard (its preface read).
pub async fn adopt_tls<D: Disk>(shard: Rc<Shard<D>>, fd: RawFd, peer: String, deadline: Instant) {
    // SAFETY: `fd` was duplicated for this shard by the accepting one.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let Some(slot) = PreAuthSlot::take() else {
        shard.probe().add(Counter::ReplicationHandshakesRefused, 1);
        auth::log_refusal(
            shard.id(),
            &peer,
            RefusalKind::Hello,
            &format!("{MAX_PRE_AUTH_HANDSHAKES} handshakes are already pending on this shard"),
        );
        return;
    };
    serve_tls_slave(shard, stream, peer, deadline, slot).await;
}

/// The TLS handshake (the slave's certificate must chain to `ha_tls_ca_file`), then the hello
/// inside TLS and the link as [`serve_slave`] runs it.
async fn serve_tls_slave<D: Disk>(
    shard: Rc<Shard<D>>,
    stream: TcpStream,
    peer: String,
    deadline: Instant,
    slot: PreAuthSlot,
) {
    let refuse = |kind: RefusalKind, reason: &str| {
        shard.probe().add(Counter::ReplicationHandshakesRefused, 1);
        auth::log_refusal(shard.id(), &peer, kind, reason);
    };
    let Some(tls) = super::tls::get() else {
        return refuse(
            RefusalKind::Auth,
            "ha_security = \"tls\" but no TLS configuration is loaded",
        );
    };
    let accepting = futures_rustls::TlsAcceptor::from(tls.server.clone()).accept(stream);
    let accepted = future::or(
        async { accepting.await.map_err(|e| e.to_string()) },
        async {
            sleep(remaining(deadline)).await;
            Err("no TLS handshake before ha_link_timeout_ms".to_string())
        },
    );
    let mut stream = match accepted.await {
        Ok(stream) => stream,
        Err(reason) => {
            return refuse(
                RefusalKind::Auth,
                &format!(
                "TLS handshake failed (a slave needs a certificate from ha_tls_ca_file): {reason}"
            ),
            )
        }
    };
    let read = future::or(read_hello(&shard, &mut stream), async {
        sleep(remaining(deadline)).await;
        Err(ReplicationError::Silent {
            ms: remaining(deadline).as_millis(),
        })
    });
    match read.await {
        Ok(hello) => serve_slave(shard, stream, hello, peer, deadline, slot).await,
        Err(e) => refuse(RefusalKind::Hello, &format!("handshake failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::MetadataPacing;
    use std::time::{Duration, Instant};

    /// Group commits in a tight loop bump the metadata version before every frame; the
    /// shipper must still spend nearly all its frames on the log.
    #[test]
    fn metadata_changes_coalesce_to_one_frame_per_heartbeat() {
        let heartbeat = Duration::from_millis(100);
        let mut pacing = MetadataPacing::new(heartbeat, Duration::from_secs(2));
        let start = Instant::now();
        let mut version = 0;
        let mut metadata_frames = 0;
        let mut data_frames = 0;
        // One frame per millisecond for a second, a commit before each.
        for ms in 0..1000 {
            let now = start + Duration::from_millis(ms);
            version += 1;
            if pacing.due(version, now) {
                pacing.sent(version, now);
                metadata_frames += 1;
            } else {
                data_frames += 1;
            }
        }
        assert!(
            (10..=11).contains(&metadata_frames),
            "{metadata_frames} metadata frames in 10 heartbeat intervals"
        );
        assert!(data_frames >= 989);
        // A change is due a heartbeat after the last frame; no change waits for the snapshot.
        let now = start + Duration::from_millis(5000);
        pacing.sent(version, now);
        assert_eq!(pacing.wait(version, now), None);
        assert!(!pacing.due(version, now + Duration::from_millis(1999)));
        assert!(pacing.due(version, now + Duration::from_secs(2)));
        assert_eq!(
            pacing.wait(version + 1, now + Duration::from_millis(30)),
            Some(Duration::from_millis(70))
        );
        assert!(pacing.due(version + 1, now + heartbeat));
    }
}
