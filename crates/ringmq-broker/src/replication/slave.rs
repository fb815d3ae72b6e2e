//! The slave side of a replication link, one per shard.
//!
//! Connects to the master's HA address with backoff, hands over a [`Hello`], cuts its log back
//! if the master says the logs diverged, adopts the master's log identity, then applies the
//! shipped bytes record by record through [`ShardStore::append_replicated`] (the same append
//! rule as the master, so the same offsets and segment rolls) and reports its confirmed offset
//! (flushed under SYNC_FLUSH) after every flush or append and as a heartbeat. Metadata frames
//! on the same link carry the master's topics and group offsets ([`apply_metadata`]).
//! With `ha_security = "auth"` the slave checks the master's proof before it proves itself
//! ([`super::auth`]), and refuses a master that does not prove it holds the secret: such a
//! master cannot feed it a byte.
//!
//! [`ShardStore::append_replicated`]: crate::store::ShardStore::append_replicated

use super::auth;
use super::error::ReplicationError;
use super::identity::LogIdentity;
use super::master::with_timeout;
use super::protocol::{
    encode_proof, next_shipped, AclTrailer, Answer, Hello, LinkSecurity, MasterFrame,
    MetadataFrame, Shipped, Welcome, AUTH_REPORT_BYTES, HA_VERSION, MAX_FRAME_HEADER_BYTES,
    MAX_HANDSHAKE_BYTES, MAX_METADATA_BYTES, NONCE_BYTES, PROOF_BYTES, REPORT_BYTES,
};
use super::tls::LinkStream;
use crate::config::HaSecurity;
use crate::metrics::Counter;
use crate::shard::groups::OffsetRow;
use crate::shard::handlers::topic::publish;
use crate::shard::role::SlaveLink;
use crate::shard::Shard;
use crate::store::io::Disk;
use futures_lite::future;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::spawn_local;
use ringmq_protocol::auth::Secret;
use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;
use tracing::{info, warn};

/// Reconnect backoff: start fast (a restarting master is back within a second), cap so a
/// long outage costs one attempt every few seconds.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(3);

/// Runs while this shard is a slave following `link`; returns once the link is stopped (a
/// role change, which starts a link of its own for another master, or a stop: see
/// [`Shard::stop_slave_link`]).
///
/// The role-change event is polled before the link's own work, so once the link is stopped
/// the connection is dropped at its next await; the steps that must not be cut in the middle
/// (the truncation) run as tasks of their own and re-check that the link is current first.
pub async fn run<D: Disk>(shard: Rc<Shard<D>>, link: Rc<SlaveLink>) {
    let Some(master) = link.master() else {
        return;
    };
    let current = |shard: &Shard<D>| shard.role_state().is_current(&link);
    let mut backoff = BACKOFF_START;
    while current(&shard) {
        let role_changed = shard.role_state().listen_changed();
        let outcome = future::or(
            async {
                let _ = role_changed.await;
                Ok(false)
            },
            link_once(&shard, &link, master),
        )
        .await;
        link.lost(shard.clock().now());
        // Without the link, what this slave reported counts too (`SlaveLink::visible_bound`).
        shard.publish_confirmed();
        // In controller mode the agent asks the controllers at once who leads now (at most
        // once per reconnect attempt, which the backoff spaces).
        shard.controller().link_ended();
        match outcome {
            Ok(true) => backoff = BACKOFF_START,
            Ok(false) => {}
            Err(e) => warn!(shard = shard.id(), %master, "replication link: {e}"),
        }
        if !current(&shard) {
            break;
        }
        let role_changed = shard.role_state().listen_changed();
        future::or(
            async {
                let _ = role_changed.await;
            },
            shard.clock().sleep(backoff),
        )
        .await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    info!(
        shard = shard.id(),
        "replication from the master stopped: this shard is now a {}",
        shard.role()
    );
}

/// One connection to the master. `Ok(true)` when it got as far as streaming.
async fn link_once<D: Disk>(
    shard: &Rc<Shard<D>>,
    link: &Rc<SlaveLink>,
    master: SocketAddr,
) -> Result<bool, ReplicationError> {
    let timeout = Duration::from_millis(shard.config().ha_link_timeout_ms);
    let mut stream = with_timeout(timeout, "connecting", async {
        TcpStream::connect(master)
            .await
            .map_err(std::io::Error::from)
    })
    .await?;
    // With the master down and its HA port in the ephemeral range, a connect can land on this
    // very socket; holding it would keep the master from binding its port again.
    if is_self_connection(&stream) {
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        return Err(ReplicationError::Protocol(format!(
            "connecting to {master} reached this socket itself; retrying"
        )));
    }
    let _ = stream.set_nodelay(true);
    if shard.config().ha_security != HaSecurity::Tls {
        return follow(shard, link, master, stream, timeout).await;
    }
    let Some(tls) = super::tls::get() else {
        return Err(ReplicationError::Auth(
            "ha_security = \"tls\" but no TLS configuration is loaded; not following any master"
                .to_string(),
        ));
    };
    let preface = super::tls::encode_preface(shard.id() as u16);
    with_timeout(
        timeout,
        "sending the TLS preface",
        stream.write_all(&preface),
    )
    .await?;
    let name = rustls::pki_types::ServerName::IpAddress(master.ip().into());
    let connecting = futures_rustls::TlsConnector::from(tls.client.clone()).connect(name, stream);
    let stream = with_timeout(timeout, "the TLS handshake", connecting)
        .await
        .map_err(|e| {
            shard.probe().add(Counter::ReplicationHandshakesRefused, 1);
            ReplicationError::Auth(format!(
                "TLS with the master {master} failed (its certificate must chain to ha_tls_ca_file and name its address; it must accept this slave's): {e}"
            ))
        })?;
    follow(shard, link, master, stream, timeout).await
}

/// The link on a connected stream, plain or TLS: the handshake, the cut, then streaming.
async fn follow<D: Disk, S: LinkStream>(
    shard: &Rc<Shard<D>>,
    link: &Rc<SlaveLink>,
    master: SocketAddr,
    mut stream: S,
    timeout: Duration,
) -> Result<bool, ReplicationError> {
    // One bound on the whole handshake (authentication included), however slowly the master's
    // bytes trickle in.
    let (welcome, session) = future::or(handshake(shard, &mut stream, timeout), async {
        shard.clock().sleep(timeout).await;
        Err(ReplicationError::Silent {
            ms: timeout.as_millis(),
        })
    })
    .await
    .inspect_err(|e| {
        // This slave's own refusals of the master, and the master's refusal of this slave's
        // proof: both are failed authentications of this link.
        let master_refused_proof = matches!(e, ReplicationError::Refused(reason)
            if reason.starts_with("authentication failed"));
        if matches!(e, ReplicationError::Auth(_)) || master_refused_proof {
            shard.probe().add(Counter::ReplicationHandshakesRefused, 1);
        }
    })?;
    let master_epoch = welcome.epochs.last().map_or(0, |(epoch, _)| *epoch);
    if shard.controller().fences_master(master_epoch) {
        // Controller mode: the controllers named a later term than this master's; nothing of
        // its log is taken (no cut either) and nothing is acknowledged to it.
        return Err(ReplicationError::Refused(format!(
            "the master's term {} is older than the controllers' master epoch {}",
            crate::replication::identity::epoch_term(master_epoch),
            shard.controller().view().master_epoch
        )));
    }
    link.set_master_epoch(master_epoch);
    let max_offset = shard.store().max_offset();
    // The master cuts at its first epoch past this log's last one, which is right for the
    // epochs the master handed out. An epoch this shard opened on its own (a generation after
    // a crash as master, while a slave was promoted in its place) may start earlier than that:
    // from its start the bytes are this shard's alone, so the cut goes there.
    let unshared = shard.role_state().identity().unshared_from(&welcome.epochs);
    let cut_to = welcome.truncate_to.min(unshared);
    if welcome.truncate_to != u64::MAX && welcome.truncate_to >= max_offset {
        // The master's retention deleted everything this log lacks (and everything it holds):
        // start over, empty, at the master's log head (RocketMQ's syncFromLastFile). A task
        // of its own and under the store gate, as a truncation below.
        let to = welcome.truncate_to;
        warn!(
            shard = shard.id(),
            master_log_head = to,
            discarded_bytes = max_offset - shard.store().log_head(),
            "the master deleted the log this slave needs; starting over from its log head"
        );
        let restart = spawn_local({
            let (shard, link) = (shard.clone(), link.clone());
            async move {
                let _gate = shard.flushing().lock_store().await;
                if !shard.role_state().is_current(&link) {
                    return Err(stale());
                }
                shard.store().restart_at(to).await.map_err(|e| {
                    ReplicationError::Store(format!("restarting the log at {to}: {e}"))
                })?;
                shard.restarted(to);
                Ok(())
            }
        })
        .detach();
        restart.await.unwrap_or_else(|| Err(stale()))?;
    } else if cut_to < max_offset {
        warn!(
            shard = shard.id(),
            divergence_offset = cut_to,
            discarded_bytes = shard.store().max_offset() - cut_to,
            "this log diverged from the master's; cutting it back to the divergence point"
        );
        // A task of its own: a stopped link drops this future at an await, and a truncation cut
        // off in the middle would leave the store half cut. The task re-checks, holding the
        // store gate, that the link is still current (a role change may have got the gate
        // first and made this shard a master whose log must not be cut).
        let truncation = spawn_local({
            let (shard, link) = (shard.clone(), link.clone());
            let to = cut_to;
            async move {
                let _gate = shard.flushing().lock_store().await;
                if !shard.role_state().is_current(&link) {
                    return Err(stale());
                }
                shard
                    .store()
                    .truncate_to(to)
                    .await
                    .map_err(|e| ReplicationError::Store(format!("truncating to {to}: {e}")))?;
                shard.truncated(to).await;
                Ok(())
            }
        })
        .detach();
        truncation.await.unwrap_or_else(|| Err(stale()))?;
    }
    let identity = LogIdentity {
        log_id: welcome.log_id,
        epochs: welcome.epochs.clone(),
        ..shard.role_state().identity()
    };
    if shard.role_state().identity() != identity {
        identity.save(shard.disk(), shard.dir()).await?;
        if !shard.role_state().is_current(link) {
            return Err(stale());
        }
        shard.role_state().set_identity(identity);
    }
    if cut_to < welcome.truncate_to.min(max_offset) {
        // The master streams from where it thought the logs parted, past this log's new end:
        // hand over the new end (and, adopted above, the master's epochs) on a new connection.
        info!(
            shard = shard.id(),
            from_offset = cut_to,
            "cut back past the master's divergence point; reconnecting from there"
        );
        return Ok(true);
    }
    link.established();
    shard.role_state().wake_links();
    info!(shard = shard.id(), %master, from_offset = shard.store().max_offset(), "replicating from the master");
    let fd = stream.socket_fd();
    let (mut stream, writer) = stream
        .split_link()
        .map_err(|e| ReplicationError::io("splitting the replication socket", e))?;
    let closed = Rc::new(Cell::new(false));
    let reporter = spawn_local(report(
        shard.clone(),
        link.clone(),
        writer,
        session,
        closed.clone(),
    ));
    let result = receive(shard, link, &mut stream, timeout).await;
    closed.set(true);
    super::master::shutdown_socket(fd);
    shard.role_state().wake_links();
    reporter.await;
    result.map(|()| true)
}

/// Whether the two ends of a connected socket are the same address (a self-connection).
fn is_self_connection(socket: &impl AsRawFd) -> bool {
    let socket = socket2::SockRef::from(socket);
    let (local, peer) = (socket.local_addr(), socket.peer_addr());
    matches!(
        (local.map(|a| a.as_socket()), peer.map(|a| a.as_socket())),
        (Ok(Some(local)), Ok(Some(peer))) if local == peer
    )
}

async fn handshake<D: Disk, S: AsyncRead + AsyncWrite + Unpin>(
    shard: &Shard<D>,
    stream: &mut S,
    timeout: Duration,
) -> Result<(Welcome, Option<Secret>), ReplicationError> {
    let identity = shard.role_state().identity();
    let max_offset = shard.store().max_offset();
    let config = shard.config();
    let secret = match (config.ha_security, &config.ha_secret) {
        (HaSecurity::Auth, Some(secret)) => Some(secret),
        // "auth" without a loaded secret (a configuration not built by validation) follows
        // no master rather than any (fail closed).
        (HaSecurity::Auth, None) => {
            return Err(ReplicationError::Auth(
                "this slave requires ha_security = \"auth\" but holds no ha_secret; not \
                 following any master"
                    .to_string(),
            ))
        }
        _ => None,
    };
    let hello = Hello {
        version: HA_VERSION,
        controller_broker_id: crate::shard::controller_agent::own_broker_id(),
        shard: shard.id() as u16,
        shard_count: shard.shard_count() as u16,
        segment_size_bytes: shard.config().segment_size_bytes,
        log_id: if max_offset == 0 {
            [0; 16]
        } else {
            identity.log_id
        },
        last_epoch: identity.last_epoch(),
        max_offset,
        broker_name: shard.config().broker_name.clone(),
        security: if secret.is_some() {
            LinkSecurity::Auth
        } else if config.ha_security == HaSecurity::Tls {
            LinkSecurity::Tls
        } else {
            LinkSecurity::Off
        },
        nonce: match secret {
            Some(_) => auth::fresh_nonce()
                .map_err(|e| ReplicationError::io("drawing the hello's nonce", e))?,
            None => [0; NONCE_BYTES],
        },
    };
    // While this handshake runs, a hello with this nonce arriving at this process's own HA
    // port is this one reflected (see `master::precheck`).
    let _outstanding = secret.map(|_| auth::OutstandingHello::register(hello.nonce));
    let mut out = Vec::new();
    hello.encode(&mut out);
    with_timeout(timeout, "sending the handshake", stream.write_all(&out)).await?;
    let answer = Answer::decode(&read_answer(stream, timeout).await?)?;
    match (answer, secret) {
        (Answer::Welcome(welcome), None) => Ok((welcome, None)),
        (Answer::Welcome(_), Some(_)) => Err(ReplicationError::Auth(
            "the master did not authenticate itself (is its ha_security \"off\"?); this slave \
             requires ha_security = \"auth\" and does not follow it"
                .to_string(),
        )),
        (Answer::Challenge(..), None) => Err(ReplicationError::Auth(
            "the master requires authentication; set ha_security = \"auth\" and \
             ha_secret_file on this slave"
                .to_string(),
        )),
        (Answer::Challenge(challenge, proof), Some(secret)) => {
            // The proof binds the master's group name as it sent it; it must be this slave's
            // group (a master of another group with the same secret is not this one's).
            if challenge.broker_name != hello.broker_name {
                return Err(ReplicationError::Auth(format!(
                    "the master belongs to group `{}`, this slave to `{}`; not following it",
                    challenge.broker_name, hello.broker_name
                )));
            }
            if !auth::verify_master(secret, &hello, &challenge, &proof) {
                return Err(ReplicationError::Auth(
                    "the master's proof does not match: its ha_secret_file differs from this \
                     slave's; not following it"
                        .to_string(),
                ));
            }
            let mut out = Vec::new();
            encode_proof(&auth::slave_proof(secret, &hello, &challenge), &mut out);
            with_timeout(timeout, "sending the proof", stream.write_all(&out)).await?;
            // The welcome, or a refusal that says why. A welcome is followed by its tag under
            // the session key: a relay on the path cannot alter it (the truncation point, the
            // epochs) after the proofs.
            let session = auth::session_key(secret, &hello, &challenge);
            let body = read_answer(stream, timeout).await?;
            let welcome = Welcome::decode(&body)?;
            let mut tag = [0u8; PROOF_BYTES];
            with_timeout(
                timeout,
                "reading the welcome's tag",
                stream.read_exact(&mut tag),
            )
            .await?;
            if !auth::verify_welcome(&session, &body, &tag) {
                return Err(ReplicationError::Auth(
                    "the master's welcome carries a wrong tag (altered on the way?); not \
                     following it"
                        .to_string(),
                ));
            }
            Ok((welcome, Some(session)))
        }
    }
}

/// Reads one length-prefixed answer of the master's handshake. Its decoders turn a refusal (a
/// version mismatch included: the master names both versions) and an acceptance of another
/// version into errors that say so.
async fn read_answer<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<Vec<u8>, ReplicationError> {
    let mut len = [0u8; 4];
    let reading = "reading the master's answer";
    with_timeout(timeout, reading, stream.read_exact(&mut len)).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_HANDSHAKE_BYTES {
        return Err(ReplicationError::TooLarge {
            what: "the master's answer",
            len,
            max: MAX_HANDSHAKE_BYTES,
        });
    }
    let mut body = vec![0u8; len];
    with_timeout(timeout, reading, stream.read_exact(&mut body)).await?;
    Ok(body)
}

/// Sends the confirmed offset whenever it moves, and at least every heartbeat interval.
/// Each offset sent is recorded in the link: the master may answer producers OK for it.
async fn report<D: Disk, W: AsyncWrite + Unpin>(
    shard: Rc<Shard<D>>,
    link: Rc<SlaveLink>,
    mut writer: W,
    session: Option<Secret>,
    closed: Rc<Cell<bool>>,
) {
    let heartbeat = Duration::from_millis(shard.config().ha_heartbeat_interval_ms);
    let link_timeout = Duration::from_millis(shard.config().ha_link_timeout_ms);
    let mut last = None;
    let mut number = 0u64;
    let mut bytes = [0u8; AUTH_REPORT_BYTES];
    while !closed.get() {
        let offset = shard.local_confirmed_offset();
        if shard.controller().fences_master(link.master_epoch()) {
            // Controller mode: a later term was named; this master may be deposed, and an
            // acknowledgement now could answer a producer the new master never saw. The link
            // ends at the role change that follows.
            shard.wait_replication_news(heartbeat).await;
            continue;
        }
        if last != Some(offset) {
            bytes[..REPORT_BYTES].copy_from_slice(&offset.to_le_bytes());
            let len = match &session {
                Some(session) => {
                    // One HMAC per report (a microsecond), numbered so none can be replayed.
                    let tag = auth::report_tag(session, number, offset);
                    bytes[REPORT_BYTES..].copy_from_slice(&tag);
                    number += 1;
                    AUTH_REPORT_BYTES
                }
                None => REPORT_BYTES,
            };
            // Under TLS, rustls takes the report and may keep its record while the socket is
            // full: the flush pushes it out, so no report waits for the next one to leave.
            let sending = async {
                writer.write_all(&bytes[..len]).await?;
                writer.flush().await
            };
            if with_timeout(link_timeout, "sending a report", sending)
                .await
                .is_err()
            {
                break;
            }
            link.record_reported(offset);
            last = Some(offset);
            continue;
        }
        let waited_from = shard.clock().now();
        shard.wait_replication_news(heartbeat).await;
        if shard.clock().now().saturating_duration_since(waited_from) >= heartbeat {
            last = None;
        }
    }
}

/// Reads frames until the link fails or goes silent.
async fn receive<D: Disk, R: AsyncRead + Unpin>(
    shard: &Rc<Shard<D>>,
    link: &SlaveLink,
    stream: &mut R,
    timeout: Duration,
) -> Result<(), ReplicationError> {
    let mut pending: Vec<u8> = Vec::new();
    // Log position of `pending[0]`, and of the byte after everything received.
    let mut position = shard.store().max_offset();
    let mut next_offset = position;
    let mut header = [0u8; MAX_FRAME_HEADER_BYTES];
    let reading = "reading from the master";
    loop {
        with_timeout(timeout, reading, stream.read_exact(&mut header[..1])).await?;
        let kind = header[0];
        let Some(header_len) = MasterFrame::header_bytes_after(kind) else {
            return Err(ReplicationError::Protocol(format!(
                "unknown frame kind {kind} from the master"
            )));
        };
        let rest = &mut header[1..1 + header_len];
        with_timeout(timeout, reading, stream.read_exact(rest)).await?;
        let frame =
            MasterFrame::decode(kind, rest).map_err(ReplicationError::decode("master frame"))?;
        match frame {
            MasterFrame::Heartbeat {
                confirmed_offset, ..
            } => {
                shard.set_master_confirmed(link, confirmed_offset);
            }
            MasterFrame::Data {
                offset,
                len,
                confirmed_offset,
            } => {
                let len = len as usize;
                if offset != next_offset {
                    return Err(ReplicationError::Protocol(format!(
                        "master sent offset {offset}, expected {next_offset}"
                    )));
                }
                if len > super::master::SHIP_CHUNK_BYTES {
                    return Err(ReplicationError::TooLarge {
                        what: "data frame",
                        len,
                        max: super::master::SHIP_CHUNK_BYTES,
                    });
                }
                let at = pending.len();
                pending.resize(at + len, 0);
                read_with_progress(stream, &mut pending[at..], timeout, reading).await?;
                next_offset += len as u64;
                shard
                    .probe()
                    .add(Counter::ReplicationReceivedBytes, len as u64);
                apply(shard, link, &mut pending, &mut position).await?;
                debug_assert!(
                    position <= next_offset,
                    "applied up to {position}, past the {next_offset} received"
                );
                shard.set_master_confirmed(link, confirmed_offset);
            }
            MasterFrame::Metadata { len } => {
                // Metadata never stops the log: a frame this slave cannot hold, decode or apply
                // is skipped with a warning (the framing stays intact, the body is consumed),
                // and the master's next snapshot replaces it.
                let len = len as usize;
                if len > MAX_METADATA_BYTES {
                    skip_bytes(stream, len, timeout, reading).await?;
                    metadata_failed(
                        shard,
                        ReplicationError::TooLarge {
                            what: "metadata frame",
                            len,
                            max: MAX_METADATA_BYTES,
                        },
                    );
                    continue;
                }
                let mut body = vec![0u8; len];
                read_with_progress(stream, &mut body, timeout, reading).await?;
                let mut metadata = match MetadataFrame::decode(&body) {
                    Ok(metadata) => metadata,
                    Err(e) => {
                        metadata_failed(shard, ReplicationError::decode("metadata frame")(e));
                        continue;
                    }
                };
                // The ACL state first and whatever becomes of the rest: a revocation never
                // waits on a topic table this slave cannot take. The master sends it only
                // when it changed, so one this slave cannot take ends the link, and the
                // next link's first frame carries it again.
                if let AclTrailer::Table(acls) = std::mem::take(&mut metadata.acls) {
                    apply_acls(shard, acls, metadata.version).await?;
                }
                if let Err(e) = apply_metadata(shard, metadata).await {
                    metadata_failed(shard, e);
                }
            }
        }
    }
}

/// Reads all of `buf`, failing only when the master sends nothing for `timeout`: a large body
/// on a slow link takes as long as it takes while bytes keep arriving.
async fn read_with_progress<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut [u8],
    timeout: Duration,
    what: &'static str,
) -> Result<(), ReplicationError> {
    let mut done = 0;
    while done < buf.len() {
        let n = with_timeout(timeout, what, stream.read(&mut buf[done..])).await?;
        if n == 0 {
            return Err(ReplicationError::io(
                what,
                std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            ));
        }
        done += n;
    }
    Ok(())
}

/// Reads and drops `len` bytes (a frame body this slave will not hold), in bounded pieces.
async fn skip_bytes<R: AsyncRead + Unpin>(
    stream: &mut R,
    len: usize,
    timeout: Duration,
    what: &'static str,
) -> Result<(), ReplicationError> {
    let mut scratch = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let piece = left.min(scratch.len());
        read_with_progress(stream, &mut scratch[..piece], timeout, what).await?;
        left -= piece;
    }
    Ok(())
}

/// A metadata frame that could not be applied: counted and logged; the link goes on.
fn metadata_failed<D: Disk>(shard: &Shard<D>, error: ReplicationError) {
    shard.probe().add(Counter::ReplicationMetadataErrors, 1);
    warn!(
        shard = shard.id(),
        "skipped a metadata frame from the master (the log keeps replicating): {error}"
    );
}

/// Applies a master shard's metadata through the same paths as on a master: slave shard 0
/// publishes a topic table that differs from its own (atomic write, then every shard applies
/// it), and each slave shard takes the group offsets of the queues it owns, which are the
/// queues its master shard owns, replacing what it held (see
/// [`GroupOffsets::apply_from_master`]). The caller logs an error and goes on; the master's
/// next snapshot replaces this one.
///
/// [`GroupOffsets::apply_from_master`]: crate::shard::groups::GroupOffsets::apply_from_master
pub async fn apply_metadata<D: Disk>(
    shard: &Rc<Shard<D>>,
    metadata: MetadataFrame,
) -> Result<(), ReplicationError> {
    if let Some(table) = metadata.topics {
        if shard.id() != 0 {
            return Err(ReplicationError::Metadata(format!(
                "master shard {} sent a topic table; only shard 0 does",
                shard.id()
            )));
        }
        if let Some((name, _)) = table.topics.iter().find(|(_, t)| {
            t.queue_shards
                .iter()
                .any(|s| *s as usize >= shard.shard_count())
        }) {
            return Err(ReplicationError::Metadata(format!(
                "topic `{name}` places a queue on a shard this broker does not have (it has {})",
                shard.shard_count()
            )));
        }
        if *shard.topic_table() != table {
            let topics = table.topics.len();
            // A role change ends the link by dropping its future; a publish cut off between
            // the other shards' apply and this shard's would leave this shard's next topic id
            // behind theirs. A detached task runs to the end whatever becomes of the link.
            let publisher = shard.clone();
            let published = spawn_local(async move { publish(&publisher, table).await })
                .detach()
                .await
                .ok_or_else(|| ReplicationError::Metadata("the publish task was lost".into()))?;
            published.map_err(|e| ReplicationError::Metadata(e.to_string()))?;
            info!(
                shard = shard.id(),
                topics,
                version = metadata.version,
                "copied the topic table from the master"
            );
        }
    }
    if let AclTrailer::Table(acls) = metadata.acls {
        apply_acls(shard, acls, metadata.version).await?;
    }
    if let Some(users) = metadata.users {
        apply_users(shard, users).await?;
    }
    let table = shard.topic_table();
    let own = shard.id() as u16;
    let keep = |row: &OffsetRow| {
        table
            .topics
            .get(&row.topic)
            .and_then(|t| t.queue_shards.get(row.queue as usize))
            == Some(&own)
    };
    shard
        .metadata()
        .groups()
        .apply_from_master(metadata.group_offsets, keep)
        .await
        .map_err(|e| ReplicationError::Metadata(e.to_string()))?;
    Ok(())
}

/// Slave shard 0 takes the master's ACL rules when they differ from its own, through the path
/// a master's change takes (`handlers::acl::publish`: atomic write, then every shard), in a
/// detached task for the reason the topic table's publish is.
async fn apply_acls<D: Disk>(
    shard: &Rc<Shard<D>>,
    acls: crate::security::acl::AclTable,
    version: u64,
) -> Result<(), ReplicationError> {
    if shard.id() != 0 {
        return Err(ReplicationError::Metadata(format!(
            "master shard {} sent ACL rules; only shard 0 does",
            shard.id()
        )));
    }
    if *shard.acls() == acls {
        return Ok(());
    }
    warn_on_policy_mismatch(shard, &acls);
    let rules = acls.rules.len();
    let publisher = shard.clone();
    let published = spawn_local(async move {
        let _gate = publisher.metadata().lock().await;
        crate::shard::handlers::acl::publish(&publisher, acls).await
    })
    .detach()
    .await
    .ok_or_else(|| ReplicationError::Metadata("the ACL publish task was lost".into()))?;
    published.map_err(|e| ReplicationError::Metadata(e.to_string()))?;
    info!(
        shard = shard.id(),
        rules, version, "copied the ACL rules from the master"
    );
    Ok(())
}

/// Slave shard 0 publishes the master's user table when it differs from its own (atomic
/// write, then every shard swaps it in), in a detached task like the topic table.
async fn apply_users<D: Disk>(
    shard: &Rc<Shard<D>>,
    users: crate::security::users::UserTable,
) -> Result<(), ReplicationError> {
    if shard.id() != 0 {
        return Err(ReplicationError::Metadata(format!(
            "master shard {} sent a user table; only shard 0 does",
            shard.id()
        )));
    }
    if *shard.metadata().users() == users {
        return Ok(());
    }
    let count = users.users.len();
    let publisher = shard.clone();
    let published =
        spawn_local(async move { crate::shard::handlers::user::publish(&publisher, users).await })
            .detach()
            .await
            .ok_or_else(|| ReplicationError::Metadata("the publish task was lost".into()))?;
    published.map_err(|e| ReplicationError::Metadata(e.to_string()))?;
    info!(
        shard = shard.id(),
        users = count,
        "copied the user table from the master"
    );
    Ok(())
}

/// A slave whose own `authorization` or `superusers` differ from its master's says so: it
/// decides by the stricter of both while a slave, but by its own alone once promoted.
fn warn_on_policy_mismatch<D: Disk>(shard: &Shard<D>, acls: &crate::security::acl::AclTable) {
    let Some(master) = &acls.master else {
        return;
    };
    let config = shard.config();
    let mut own = config.superusers.clone();
    own.sort();
    let mut theirs = master.superusers.clone();
    theirs.sort();
    if config.authorization != master.authorization || own != theirs {
        warn!(
            shard = shard.id(),
            own_authorization = %config.authorization.name(),
            master_authorization = %master.authorization.name(),
            own_superusers = ?config.superusers,
            master_superusers = ?master.superusers,
            "this slave's authorization or superusers differ from its master's: it enforces the \
             ACLs if either says \"acl\" and takes the superusers of both while a slave, but \
             only its own once promoted; give it the master's settings"
        );
    }
}

/// Appends every complete record at the front of `pending` (which starts at log offset
/// `position`) and removes what it consumed.
async fn apply<D: Disk>(
    shard: &Rc<Shard<D>>,
    link: &SlaveLink,
    pending: &mut Vec<u8>,
    position: &mut u64,
) -> Result<(), ReplicationError> {
    let segment = shard.config().segment_size_bytes;
    let mut used = 0usize;
    let outcome = loop {
        let shipped = match next_shipped(&pending[used..], *position, segment) {
            Ok(shipped) => shipped,
            Err(e) => break Err(e),
        };
        match shipped {
            Shipped::Incomplete => break Ok(()),
            Shipped::SegmentTail(skipped) => {
                used += skipped;
                *position += skipped as u64;
            }
            Shipped::Record(size) => {
                if let Err(e) = append(shard, link, &pending[used..used + size]).await {
                    break Err(e);
                }
                used += size;
                *position += size as u64;
                // The same append rule as the master's: the record lands where it did there.
                debug_assert_eq!(
                    shard.store().max_offset(),
                    *position,
                    "the slave's log is not where the master's is"
                );
            }
        }
    };
    // What was appended before an error is flushed and shown all the same: pulls parked on it
    // must not wait out their timeout.
    pending.drain(..used);
    if used > 0 {
        // Catching up, write behind while receiving rather than stall on a full buffer: ask
        // for a flush once a quarter of the buffer is dirty, whatever the flush mode's timer.
        if shard.store().dirty_bytes() >= shard.config().write_buffer_bytes / 4 {
            shard.flushing().request_urgent();
        } else {
            shard.flushing().request();
        }
        shard.publish_confirmed();
    }
    outcome
}

/// The error of a link that was stopped while it waited: its master is no longer followed.
fn stale() -> ReplicationError {
    ReplicationError::Protocol("the link was stopped by a role change or a stop".to_string())
}

async fn append<D: Disk>(
    shard: &Rc<Shard<D>>,
    link: &SlaveLink,
    bytes: &[u8],
) -> Result<(), ReplicationError> {
    if !shard.role_state().is_current(link) {
        return Err(stale());
    }
    // A slave appends what its master shipped; if its own flusher or disk cannot keep up for
    // a whole link timeout, the link is dropped and resumes from the slave's end later.
    let deadline =
        shard.clock().now() + std::time::Duration::from_millis(shard.config().ha_link_timeout_ms);
    // A topic id below the next one that the table no longer holds was deleted here while
    // the master's records of it were still on their way: they go into the log unindexed.
    let table = shard.topic_table();
    let deleted =
        |id: u32| id < table.next_topic_id && !table.topics.values().any(|t| t.topic_id == id);
    // Checked again inside: the wait for buffer space may outlast the link.
    let attempt = || {
        shard.append_waiting(deadline, || {
            if !shard.role_state().is_current(link) {
                return Err(crate::store::AppendError::Busy {
                    waited_ms: 0,
                    waiting_for: "a link that is current (it was stopped)",
                });
            }
            shard
                .store()
                .append_replicated_unless_deleted(bytes, deleted)
        })
    };
    let appended = match attempt().await {
        // The first record of a queue emptied by a restart at the master's head: the queue
        // starts at its offset, then the append goes again.
        Err(crate::store::AppendError::Diverged(why)) => {
            let started = shard
                .store()
                .start_queue_at_replicated(bytes)
                .await
                .map_err(|e| ReplicationError::Store(e.to_string()))?;
            if !started {
                return Err(ReplicationError::Store(
                    crate::store::AppendError::Diverged(why).to_string(),
                ));
            }
            attempt().await
        }
        other => other,
    }
    .map_err(|e| ReplicationError::Store(e.to_string()))?;
    shard.appended(appended.queue, appended.end_offset);
    shard.probe().appended(1, bytes.len() as u64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::is_self_connection;
    use socket2::{Domain, Protocol, Socket, Type};
    use std::net::SocketAddr;

    /// What the kernel does when a slave dials a stopped master whose HA port lies in the
    /// ephemeral range and picks that very port for the connect: the socket meets itself.
    #[test]
    fn a_socket_connected_to_its_own_address_is_detected() {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        socket
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let own = socket.local_addr().unwrap();
        socket.connect(&own).expect("self-connect");
        let stream: std::net::TcpStream = socket.into();
        assert!(is_self_connection(&stream));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(!is_self_connection(&other));
    }
}
