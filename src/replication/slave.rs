//! The slave side of a replication link, one per shard.
//!
//! Connects to the master's HA address with backoff, hands over a [`Hello`], cuts its log back
//! if the master says the logs diverged, adopts the master's log identity, then applies the
//! shipped bytes record by record through [`ShardStore::append_replicated`] (the same append
//! rule as the master, so the same offsets and segment rolls) and reports its confirmed offset
//! (flushed under SYNC_FLUSH) after every flush or append and as a heartbeat.
//!
//! [`ShardStore::append_replicated`]: crate::store::ShardStore::append_replicated

use super::identity::LogIdentity;
use super::master::with_timeout;
use super::protocol::{
    next_shipped, Hello, MasterFrame, Shipped, Welcome, DATA_HEADER_BYTES, MAX_HANDSHAKE_BYTES,
};
use crate::metrics::Counter;
use crate::shard::role::SlaveLink;
use crate::shard::Shard;
use crate::store::io::Disk;
use futures_lite::future;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::spawn_local;
use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use std::time::Duration;
use tracing::{info, warn};

/// Reconnect backoff: start fast (a restarting master is back within a second), cap so a
/// long outage costs one attempt every few seconds.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(3);

/// Runs while this shard is a slave following `link`; returns once the role changes (a
/// promotion, or a demotion to follow another master, which starts a link of its own).
pub async fn run<D: Disk>(shard: Rc<Shard<D>>, link: Rc<SlaveLink>) {
    let Some(master) = link.master() else {
        return;
    };
    let current = |shard: &Shard<D>| {
        shard
            .role_state()
            .slave_link()
            .is_some_and(|l| Rc::ptr_eq(&l, &link))
    };
    let mut backoff = BACKOFF_START;
    while current(&shard) {
        let role_changed = shard.role_state().listen_changed();
        let outcome = future::or(link_once(&shard, &link, master), async {
            let _ = role_changed.await;
            Ok(false)
        })
        .await;
        link.lost();
        match outcome {
            Ok(true) => backoff = BACKOFF_START,
            Ok(false) => {}
            Err(e) => warn!(shard = shard.id(), %master, "replication link: {e}"),
        }
        if !current(&shard) {
            break;
        }
        shard.clock().sleep(backoff).await;
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
    link: &SlaveLink,
    master: SocketAddr,
) -> Result<bool, String> {
    let timeout = Duration::from_millis(shard.config().ha_link_timeout_ms);
    let mut stream = with_timeout(timeout, async {
        TcpStream::connect(master)
            .await
            .map_err(std::io::Error::from)
    })
    .await
    .map_err(|e| format!("connecting: {e}"))?;
    // With the master down and its HA port in the ephemeral range, a connect can land on this
    // very socket; holding it would keep the master from binding its port again.
    if crate::client::is_self_connection(&stream) {
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        return Err(format!(
            "connecting to {master} reached this socket itself; retrying"
        ));
    }
    let _ = stream.set_nodelay(true);
    let welcome = handshake(shard, &mut stream, timeout).await?;
    if let Some(reason) = welcome.refused {
        return Err(format!("refused by the master: {reason}"));
    }
    if welcome.truncate_to < shard.store().max_offset() {
        warn!(
            shard = shard.id(),
            divergence_offset = welcome.truncate_to,
            discarded_bytes = shard.store().max_offset() - welcome.truncate_to,
            "this log diverged from the master's; cutting it back to the divergence point"
        );
        let _gate = shard.flushing().lock_store().await;
        shard
            .store()
            .truncate_to(welcome.truncate_to)
            .await
            .map_err(|e| format!("truncating to {}: {e}", welcome.truncate_to))?;
        shard.truncated(welcome.truncate_to).await;
    }
    let identity = LogIdentity {
        log_id: welcome.log_id,
        epochs: welcome.epochs.clone(),
        ..shard.role_state().identity()
    };
    if shard.role_state().identity() != identity {
        identity.save(shard.disk(), shard.dir()).await?;
        shard.role_state().set_identity(identity);
    }
    link.established(welcome.client_addr.clone());
    shard.role_state().wake_links();
    info!(shard = shard.id(), %master, from_offset = shard.store().max_offset(), "replicating from the master");
    // SAFETY: a second descriptor for the same socket, owned by the reporter.
    let write_fd = unsafe { libc::dup(stream.as_raw_fd()) };
    if write_fd < 0 {
        return Err("dup of the replication socket failed".into());
    }
    let writer = unsafe { TcpStream::from_raw_fd(write_fd) };
    let closed = Rc::new(Cell::new(false));
    let reporter = spawn_local(report(shard.clone(), writer, closed.clone()));
    let result = receive(shard, &mut stream, timeout).await;
    closed.set(true);
    super::master::shutdown_socket(stream.as_raw_fd());
    shard.role_state().wake_links();
    reporter.await;
    result.map(|()| true)
}

async fn handshake<D: Disk>(
    shard: &Shard<D>,
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Welcome, String> {
    let identity = shard.role_state().identity();
    let max_offset = shard.store().max_offset();
    let hello = Hello {
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
    };
    let mut out = Vec::new();
    hello.encode(&mut out);
    with_timeout(timeout, stream.write_all(&out)).await?;
    let mut len = [0u8; 4];
    with_timeout(timeout, stream.read_exact(&mut len)).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_HANDSHAKE_BYTES {
        return Err(format!("master's answer of {len} bytes is too large"));
    }
    let mut body = vec![0u8; len];
    with_timeout(timeout, stream.read_exact(&mut body)).await?;
    Welcome::decode(&body).map_err(|e| format!("bad answer from the master: {e}"))
}

/// Sends the confirmed offset whenever it moves, and at least every heartbeat interval.
async fn report<D: Disk>(shard: Rc<Shard<D>>, mut writer: TcpStream, closed: Rc<Cell<bool>>) {
    let heartbeat = Duration::from_millis(shard.config().ha_heartbeat_interval_ms);
    let mut last = None;
    while !closed.get() {
        let offset = shard.local_confirmed_offset();
        if last != Some(offset) {
            if writer.write_all(&offset.to_le_bytes()).await.is_err() {
                break;
            }
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
async fn receive<D: Disk>(
    shard: &Rc<Shard<D>>,
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<(), String> {
    let mut pending: Vec<u8> = Vec::new();
    // Log position of `pending[0]`, and of the byte after everything received.
    let mut position = shard.store().max_offset();
    let mut next_offset = position;
    let mut header = [0u8; DATA_HEADER_BYTES];
    loop {
        with_timeout(timeout, stream.read_exact(&mut header[..1])).await?;
        let kind = header[0];
        let Some(header_len) = MasterFrame::header_bytes_after(kind) else {
            return Err(format!("unknown frame kind {kind} from the master"));
        };
        let rest = &mut header[1..1 + header_len];
        with_timeout(timeout, stream.read_exact(rest)).await?;
        let frame =
            MasterFrame::decode(kind, rest).map_err(|e| format!("bad master frame: {e}"))?;
        match frame {
            MasterFrame::Heartbeat { state, .. } => {
                shard.set_master_confirmed(state.confirmed_offset);
                shard.master_metadata_version(state.metadata_version).await;
            }
            MasterFrame::Data { offset, len, state } => {
                let len = len as usize;
                if offset != next_offset {
                    return Err(format!(
                        "master sent offset {offset}, expected {next_offset}"
                    ));
                }
                if len > super::master::SHIP_CHUNK_BYTES {
                    return Err(format!("data frame of {len} bytes is larger than allowed"));
                }
                let at = pending.len();
                pending.resize(at + len, 0);
                with_timeout(timeout, stream.read_exact(&mut pending[at..])).await?;
                next_offset += len as u64;
                shard
                    .probe()
                    .add(Counter::ReplicationReceivedBytes, len as u64);
                apply(shard, &mut pending, &mut position).await?;
                shard.set_master_confirmed(state.confirmed_offset);
                shard.master_metadata_version(state.metadata_version).await;
            }
        }
    }
}

/// Appends every complete record at the front of `pending` (which starts at log offset
/// `position`) and removes what it consumed.
async fn apply<D: Disk>(
    shard: &Rc<Shard<D>>,
    pending: &mut Vec<u8>,
    position: &mut u64,
) -> Result<(), String> {
    let segment = shard.config().segment_size_bytes;
    let mut used = 0usize;
    loop {
        match next_shipped(&pending[used..], *position, segment)? {
            Shipped::Incomplete => break,
            Shipped::SegmentTail(skipped) => {
                used += skipped;
                *position += skipped as u64;
            }
            Shipped::Record(size) => {
                append(shard, &pending[used..used + size]).await?;
                used += size;
                *position += size as u64;
            }
        }
    }
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
    Ok(())
}

async fn append<D: Disk>(shard: &Rc<Shard<D>>, bytes: &[u8]) -> Result<(), String> {
    // A slave appends what its master shipped; if its own flusher or disk cannot keep up for
    // a whole link timeout, the link is dropped and resumes from the slave's end later.
    let deadline =
        shard.clock().now() + std::time::Duration::from_millis(shard.config().ha_link_timeout_ms);
    let appended = shard
        .append_waiting(deadline, || shard.store().append_replicated(bytes))
        .await
        .map_err(|e| e.to_string())?;
    shard.appended(appended.queue, appended.end_offset);
    shard.probe().appended(1, bytes.len() as u64);
    Ok(())
}
