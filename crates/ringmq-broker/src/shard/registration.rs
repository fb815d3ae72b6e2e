//! The registration stage: this broker's registration with the name servers (`namesrv`), and
//! the group's current master as their answers name it.
//!
//! Shard 0 runs one task per name server ([`keep_registered`]), so a slow or dead name server
//! delays no other: each sends the whole registration (`BrokerRegister`) at start, at once
//! after a topic or role change ([`Registration::changed`], notified by `apply_topics` and
//! `change_role` on shard 0), and every `namesrv_heartbeat_interval_ms`. The requests go over
//! glommio's async `TcpStream` with connect and answer deadlines, so no shard ever waits on a
//! name server: the tasks only yield between the shard's other work. A clean shutdown sends
//! `BrokerUnregister` to every name server, bounded by [`UNREGISTER_TIMEOUT`].
//!
//! Every shard keeps the master the answers named ([`Registration::master`]): shard 0 sends it
//! to the others over the mesh when it changes, and each shard's `NOT_MASTER` ends with it.
//! The stage is idle (no task, no master) when `namesrv` is empty.

use super::completion::Event;
use super::handlers::cluster::{local_status, ShardStatus};
use super::mesh::ShardRequest;
use super::Shard;
use crate::protocol::frame::{encode_frame, FrameDecoder, FrameHeader, FRAME_HEADER_BYTES};
use crate::protocol::namesrv::{BrokerRegister, BrokerUnregister, RegisterResult, ShardOffsets};
use crate::protocol::{MasterHint, Opcode, Status};
use crate::store::io::Disk;
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::sleep;
use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use tracing::{info, warn};

/// How long one connect, and then one answer, may take. A name server answers from memory:
/// a second means it is down or overloaded, and the next heartbeat tries again.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// A clean shutdown waits at most this for the name servers to drop the broker; one that does
/// not answer expires it after its `broker_expiry_ms` instead.
pub const UNREGISTER_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Largest answer accepted from a name server: a `RegisterResult` is a few dozen bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What the broker registers as, fixed for the process: made by the server from the store's
/// broker id and the bound (or configured) advertised addresses.
#[derive(Clone, Debug)]
pub struct ClusterIdentity {
    pub broker_id: u64,
    /// Advertised client address.
    pub listen: String,
    /// Advertised HA address.
    pub ha_listen: String,
    pub namesrv: Vec<SocketAddr>,
}

/// The registration stage's state (see the module docs).
#[derive(Default)]
pub struct Registration {
    /// Shard 0: per name server, the master its last answer named.
    answers: RefCell<Vec<Option<MasterHint>>>,
    /// The group's master as this shard last heard it: the newest epoch any name server names.
    master: RefCell<Option<MasterHint>>,
    /// A topic or role change: re-register now.
    changed: Event,
}

impl Registration {
    /// The group's current master, if a name server named one.
    pub fn master(&self) -> Option<MasterHint> {
        self.master.borrow().clone()
    }

    /// Records the master (shard 0 sends it to every shard).
    pub fn set_master(&self, master: Option<MasterHint>) {
        *self.master.borrow_mut() = master;
    }

    /// Something a registration carries changed: every name server task sends it again now.
    pub fn changed(&self) {
        self.changed.notify();
    }

    /// Records name server `index`'s answer; returns the new master when it changed. The
    /// newest epoch wins across name servers (one that just restarted may know no master yet,
    /// or an older one), and a name server that names none only withdraws its own answer.
    fn record_answer(&self, index: usize, named: Option<MasterHint>) -> Option<Option<MasterHint>> {
        let mut answers = self.answers.borrow_mut();
        if answers.len() <= index {
            answers.resize(index + 1, None);
        }
        answers[index] = named;
        let best = answers.iter().flatten().max_by_key(|h| h.epoch).cloned();
        drop(answers);
        let changed = *self.master.borrow() != best;
        changed.then(|| {
            self.set_master(best.clone());
            best
        })
    }
}

/// Starts one registration task per name server on `shard` (shard 0). The tasks end when the
/// returned handles are dropped.
pub fn start<D: Disk + 'static>(
    shard: &Rc<Shard<D>>,
    identity: Rc<ClusterIdentity>,
) -> Vec<glommio::Task<()>> {
    (0..identity.namesrv.len())
        .map(|index| glommio::spawn_local(keep_registered(shard.clone(), identity.clone(), index)))
        .collect()
}

/// One name server's registration loop: register, learn the master, wait for a change or the
/// heartbeat interval, again. Failures are logged once per outage, not every heartbeat.
async fn keep_registered<D: Disk>(
    shard: Rc<Shard<D>>,
    identity: Rc<ClusterIdentity>,
    index: usize,
) {
    let addr = identity.namesrv[index];
    let interval = Duration::from_millis(shard.config().namesrv_heartbeat_interval_ms);
    let mut link = NameServerLink::new(addr);
    let mut failing = false;
    loop {
        // Listened to before the registration is built, so a change made while it is being
        // sent is sent again rather than lost.
        let changed = shard.registration().changed.listen();
        let body = registration(&shard, &identity).await;
        let outcome = match body {
            Some(body) => link.exchange(Opcode::BrokerRegister, &body).await,
            // A shard is gone: the broker is stopping; the next round (if any) retries.
            None => Err(io::Error::other("a shard did not report its state")),
        };
        match outcome.and_then(|(status, answer)| answer_of(status, &answer)) {
            Ok(result) => {
                if failing {
                    info!(namesrv = %addr, "registered with the name server again");
                    failing = false;
                }
                learn(&shard, &identity, index, &result).await;
            }
            Err(e) => {
                if !failing {
                    warn!(namesrv = %addr, "registering with the name server failed: {e}; retrying every heartbeat");
                    failing = true;
                }
                // A fresh connection next time: this one may be mid-frame.
                link.close();
            }
        }
        future::or(
            async {
                let _ = changed.await;
            },
            sleep(interval),
        )
        .await;
    }
}

fn answer_of(status: Status, body: &[u8]) -> io::Result<RegisterResult> {
    if status != Status::Ok {
        return Err(io::Error::other(format!(
            "answered {status}: {}",
            String::from_utf8_lossy(body)
        )));
    }
    RegisterResult::decode(body)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("RegisterResult: {e}")))
}

/// Takes the master a name server named and, when the broker's view changes, tells every
/// other shard (their `NOT_MASTER` answers name it too).
async fn learn<D: Disk>(
    shard: &Rc<Shard<D>>,
    identity: &ClusterIdentity,
    index: usize,
    result: &RegisterResult,
) {
    if !result.is_accepted() {
        warn!(
            namesrv = %identity.namesrv[index],
            master = %result.master_listen,
            master_epoch = result.master_epoch,
            "the name server refused this broker's master claim: its group has a master with a newer epoch"
        );
    }
    // This broker naming itself would send clients back here.
    let named =
        (!result.master_listen.is_empty() && result.master_listen != identity.listen).then(|| {
            MasterHint {
                listen: result.master_listen.clone(),
                epoch: result.master_epoch,
            }
        });
    let Some(master) = shard.registration().record_answer(index, named) else {
        return;
    };
    match &master {
        Some(m) => {
            info!(master = %m.listen, epoch = m.epoch, "the group's master, as the name servers name it")
        }
        None => info!("the name servers name no master for this group"),
    }
    for other in (0..shard.shard_count()).filter(|s| *s != shard.id()) {
        let request = ShardRequest::MasterHint {
            master: master.clone(),
        };
        // A shard that is gone is stopping with the broker; nothing to tell it.
        let _ = shard.mesh().send(other, request).await;
    }
}

/// The whole registration as it is now, encoded; `None` if a shard did not report.
async fn registration<D: Disk>(
    shard: &Rc<Shard<D>>,
    identity: &ClusterIdentity,
) -> Option<Vec<u8>> {
    let mut shards: Vec<ShardStatus> = shard
        .ask_others(|reply| ShardRequest::ClusterState { reply })
        .await
        .ok()?;
    shards.push(local_status(shard));
    shards.sort_by_key(|s| s.shard);
    let config = shard.config();
    let register = BrokerRegister {
        cluster_name: config.cluster_name.clone(),
        broker_name: config.broker_name.clone(),
        broker_id: identity.broker_id,
        role: shard.role().name().to_string(),
        epoch: shards.iter().map(|s| s.epoch).max().unwrap_or(0),
        flush_disk_type: config.flush_disk_type.name().to_string(),
        listen: identity.listen.clone(),
        ha_listen: identity.ha_listen.clone(),
        shard_ports: shard.shard_ports().to_vec(),
        topics: shard.topic_table().infos(),
        shards: shards
            .iter()
            .map(|s| ShardOffsets {
                shard: s.shard as u16,
                confirmed_offset: s.confirmed_offset,
                max_offset: s.max_offset,
            })
            .collect(),
    };
    let mut body = Vec::new();
    register.encode(&mut body);
    Some(body)
}

/// Sends `BrokerUnregister` to every name server at once and waits for their answers, each at
/// most [`UNREGISTER_TIMEOUT`].
pub async fn unregister_all(cluster_name: &str, broker_name: &str, identity: &ClusterIdentity) {
    let mut body = Vec::new();
    BrokerUnregister {
        cluster_name: cluster_name.to_string(),
        broker_name: broker_name.to_string(),
        broker_id: identity.broker_id,
    }
    .encode(&mut body);
    let body = Rc::new(body);
    let tasks: Vec<_> = identity
        .namesrv
        .iter()
        .map(|addr| {
            let (addr, body) = (*addr, body.clone());
            glommio::spawn_local(async move {
                let mut link = NameServerLink::new(addr);
                let sent = future::or(
                    link.exchange(Opcode::BrokerUnregister, &body),
                    async {
                        sleep(UNREGISTER_TIMEOUT).await;
                        Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"))
                    },
                )
                .await;
                match sent {
                    Ok((Status::Ok, _)) => info!(namesrv = %addr, "unregistered"),
                    Ok((status, _)) => warn!(namesrv = %addr, "unregistering: answered {status}"),
                    Err(e) => warn!(namesrv = %addr, "unregistering failed: {e}; the name server expires this broker instead"),
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
}

/// One connection to a name server, opened on first use and after a failure: a request and
/// its answer at a time (a registration is small and infrequent; nothing is pipelined).
struct NameServerLink {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    next_id: Cell<u64>,
    buf: Vec<u8>,
}

impl NameServerLink {
    fn new(addr: SocketAddr) -> NameServerLink {
        NameServerLink {
            addr,
            stream: None,
            next_id: Cell::new(1),
            buf: Vec::new(),
        }
    }

    fn close(&mut self) {
        self.stream = None;
        self.buf.clear();
    }

    /// Sends one request and reads its answer: `(status, body)`.
    async fn exchange(&mut self, opcode: Opcode, body: &[u8]) -> io::Result<(Status, Vec<u8>)> {
        if self.stream.is_none() {
            let addr = self.addr;
            let stream = within(REQUEST_TIMEOUT, "connecting", async move {
                TcpStream::connect(addr).await.map_err(io::Error::from)
            })
            .await?;
            let _ = stream.set_nodelay(true);
            self.stream = Some(stream);
        }
        let id = self.next_id.replace(self.next_id.get() + 1);
        let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + body.len());
        encode_frame(&mut frame, FrameHeader::request(opcode, id), body);
        let stream = self.stream.as_mut().expect("connected above");
        let buf = &mut self.buf;
        within(REQUEST_TIMEOUT, "waiting for the answer", async move {
            stream.write_all(&frame).await?;
            let decoder = FrameDecoder::new(MAX_ANSWER_BYTES);
            let mut chunk = [0u8; 4096];
            loop {
                let decoded = decoder
                    .decode(buf)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                if let Some(frame) = decoded {
                    let (header, answer, used) =
                        (frame.header, frame.body.to_vec(), frame.wire_len());
                    buf.drain(..used);
                    if !header.is_response() || header.request_id != id {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "an answer to request {} where {id} was due",
                                header.request_id
                            ),
                        ));
                    }
                    let status = Status::from_u16(header.status).ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("unknown status {}", header.status),
                        )
                    })?;
                    return Ok((status, answer));
                }
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the name server closed the connection",
                    ));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
    }
}

/// `io`, or a `TimedOut` error naming `what` after `timeout`.
async fn within<T>(
    timeout: Duration,
    what: &'static str,
    io: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    future::or(io, async {
        sleep(timeout).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what}: no progress within {} ms", timeout.as_millis()),
        ))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::Registration;
    use crate::protocol::MasterHint;

    fn hint(listen: &str, epoch: u32) -> Option<MasterHint> {
        Some(MasterHint {
            listen: listen.to_string(),
            epoch,
        })
    }

    #[test]
    fn the_newest_epoch_any_name_server_names_is_the_master() {
        let r = Registration::default();
        assert_eq!(r.record_answer(0, hint("a:1", 3)), Some(hint("a:1", 3)));
        assert_eq!(r.record_answer(0, hint("a:1", 3)), None, "unchanged");
        // A second name server with an older view does not replace it...
        assert_eq!(r.record_answer(1, hint("b:1", 2)), None);
        // ...a restarted one that knows no master withdraws only its own answer...
        assert_eq!(r.record_answer(1, None), None);
        assert_eq!(r.master(), hint("a:1", 3));
        // ...and a newer epoch takes over.
        assert_eq!(r.record_answer(1, hint("b:1", 4)), Some(hint("b:1", 4)));
        assert_eq!(r.record_answer(1, None), Some(hint("a:1", 3)));
        assert_eq!(r.record_answer(0, None), Some(None));
        assert_eq!(r.master(), None);
    }
}
