//! The registration stage: this broker's registration with the name servers (`namesrv`), and
//! the group's current master as their answers name it.
//!
//! Shard 0 builds the whole registration (`BrokerRegister`, one encoding, bounded by
//! [`MAX_REGISTRATION_BYTES`]) at start, at once after a topic or role change
//! ([`Registration::changed`], notified by `apply_topics` and `change_role` on shard 0, and by
//! the other shards over the mesh), and every `namesrv_heartbeat_interval_ms`. One task per
//! name server ([`keep_registered`]) sends the newest one, so a slow or dead name server delays
//! no other. Each registration carries a larger `sequence` than the last, so a name server
//! ignores one that arrives late. The requests go over
//! glommio's async `TcpStream` with connect and answer deadlines, so no shard ever waits on a
//! name server: the tasks only yield between the shard's other work. A clean shutdown
//! ([`stop`]) lets each task finish its exchange in flight and send `BrokerUnregister` on its
//! own connection, bounded by [`UNREGISTER_TIMEOUT`].
//!
//! Every shard keeps the master the answers named ([`Registration::master`]): shard 0 sends it
//! to the others over the mesh when it changes, and each shard's `NOT_MASTER` ends with it.
//! The stage is idle (no task, no master) when `namesrv` is empty.
//!
//! With `namesrv_secret_file`, every registration and the unregistration are signed
//! (`ringmq_protocol::auth::sign_register`): the signature covers the whole body, its signing
//! time and its sequence, so a name server with the same secret can tell a forged or replayed
//! one (docs/security.md, "Name server").

use super::completion::Event;
use super::handlers::cluster::{local_status, ShardStatus};
use super::mesh::ShardRequest;
use super::Shard;
use crate::metrics::Counter;
use crate::protocol::admin::NameServerStatus;
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

/// Largest registration sent: the name server's bound on one (`MAX_REGISTRATION_BYTES` in
/// ringmq-namesrv), which refuses anything larger; a broker with that many topics is told so
/// in its log rather than silently never listed.
pub const MAX_REGISTRATION_BYTES: usize = 4 * 1024 * 1024;

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
    /// Per name server, how the last registration went (shard 0 keeps it, and sends it to the
    /// other shards with the master, so `cluster status` shows it from any shard).
    namesrv: RefCell<Vec<NameServerStatus>>,
    /// A topic or role change: re-register now (also notified by a stop).
    changed: Event,
    /// The broker is stopping: each task finishes the exchange in flight, then unregisters
    /// on its own connection and returns.
    stopping: Cell<bool>,
    /// The last registration's `sequence`; 0 before the first.
    sequence: Cell<u64>,
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

    /// The next registration's `sequence`: the wall clock in nanoseconds at the first, one
    /// more each time after, so a restarted broker (booted later by far more nanoseconds than
    /// it sent registrations) counts above everything it sent before, and a name server can
    /// ignore a registration that arrives after a newer one.
    fn next_sequence(&self) -> u64 {
        let next = match self.sequence.get() {
            0 => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                .max(1),
            last => last + 1,
        };
        self.sequence.set(next);
        next
    }

    /// Each name server as the last registration with it went.
    pub fn namesrv(&self) -> Vec<NameServerStatus> {
        self.namesrv.borrow().clone()
    }

    /// Records the name servers' states (shard 0 sends them to every shard).
    pub fn set_namesrv(&self, namesrv: Vec<NameServerStatus>) {
        *self.namesrv.borrow_mut() = namesrv;
    }

    /// Shard 0: records how registering with name server `index` went; returns whether that
    /// differs from the last time.
    fn record_state(&self, index: usize, state: NameServerStatus) -> bool {
        let mut states = self.namesrv.borrow_mut();
        if states.len() <= index {
            states.resize(index + 1, NameServerStatus::default());
        }
        std::mem::replace(&mut states[index], state.clone()) != state
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

/// The newest encoded registration for one name server's task: the builder replaces it, the
/// task takes it. Holding only the newest means a slow name server is sent what is current
/// when it is ready, and never makes the builder or the other name servers wait.
#[derive(Default)]
struct Outbox {
    latest: RefCell<Option<Rc<Vec<u8>>>>,
    posted: Event,
}

/// Starts the registration on `shard` (shard 0): one task that builds the registration at
/// start, on every change and every heartbeat, and one task per name server that sends it;
/// [`stop`] ends them.
pub fn start<D: Disk + 'static>(
    shard: &Rc<Shard<D>>,
    identity: Rc<ClusterIdentity>,
) -> Vec<glommio::Task<()>> {
    let outboxes: Vec<Rc<Outbox>> = identity
        .namesrv
        .iter()
        .map(|_| Rc::new(Outbox::default()))
        .collect();
    let mut tasks: Vec<glommio::Task<()>> = outboxes
        .iter()
        .enumerate()
        .map(|(index, outbox)| {
            glommio::spawn_local(keep_registered(
                shard.clone(),
                identity.clone(),
                index,
                outbox.clone(),
            ))
        })
        .collect();
    tasks.push(glommio::spawn_local(build_registrations(
        shard.clone(),
        identity,
        outboxes,
    )));
    tasks
}

/// Builds the registration (the other shards' states over the mesh, the topic table, one
/// encoding) once per change or heartbeat, and posts it to every name server's task.
async fn build_registrations<D: Disk>(
    shard: Rc<Shard<D>>,
    identity: Rc<ClusterIdentity>,
    outboxes: Vec<Rc<Outbox>>,
) {
    let interval = Duration::from_millis(shard.config().namesrv_heartbeat_interval_ms);
    let mut too_large = false;
    while !shard.registration().stopping.get() {
        // Listened to before the registration is built, so a change made while it is being
        // built is built again rather than lost.
        let changed = shard.registration().changed.listen();
        // `None`: a shard is gone, so the broker is stopping; the next round (if any) retries.
        if let Some((body, topic_count)) = registration(&shard, &identity).await {
            let fits = body.len() <= MAX_REGISTRATION_BYTES;
            if fits == too_large {
                too_large = !fits;
                if too_large {
                    warn!(
                        bytes = body.len(),
                        topic_count,
                        "the registration is larger than the name servers take \
                         ({MAX_REGISTRATION_BYTES} bytes): not sent, so this broker is not \
                         listed; fewer topics or queues per broker fit"
                    );
                } else {
                    info!(bytes = body.len(), "the registration fits again");
                }
            }
            if fits {
                let body = Rc::new(body);
                for outbox in &outboxes {
                    *outbox.latest.borrow_mut() = Some(body.clone());
                    outbox.posted.notify();
                }
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
    // Wakes the name-server tasks to see the stop.
    for outbox in &outboxes {
        outbox.posted.notify();
    }
}

/// One name server's registration loop: send the newest registration, learn the master,
/// wait for the next one. Failures are logged once per outage, not every heartbeat.
async fn keep_registered<D: Disk>(
    shard: Rc<Shard<D>>,
    identity: Rc<ClusterIdentity>,
    index: usize,
    outbox: Rc<Outbox>,
) {
    let addr = identity.namesrv[index];
    let heartbeat_ms = shard.config().namesrv_heartbeat_interval_ms;
    let mut link = NameServerLink::new(addr);
    let mut failing = false;
    let mut warned_expiry = false;
    while !shard.registration().stopping.get() {
        let posted = outbox.posted.listen();
        let Some(body) = outbox.latest.borrow_mut().take() else {
            let _ = posted.await;
            continue;
        };
        let outcome = link.exchange(Opcode::BrokerRegister, &body).await;
        let (state, master_changed) = match outcome
            .and_then(|(status, answer)| answer_of(status, &answer))
        {
            Ok(result) => {
                if failing {
                    info!(namesrv = %addr, "registered with the name server again");
                    failing = false;
                }
                check_expiry(addr, heartbeat_ms, result.expiry_ms, &mut warned_expiry);
                let refused = !result.is_accepted();
                if refused {
                    shard.probe().add(Counter::NamesrvRegisterRefused, 1);
                }
                let master_changed = learn(&shard, &identity, index, &result);
                let state = NameServerStatus {
                    namesrv: addr.to_string(),
                    registered: true,
                    refused,
                };
                (state, master_changed)
            }
            Err(e) => {
                if !failing {
                    warn!(namesrv = %addr, "registering with the name server failed: {e}; retrying every heartbeat");
                    failing = true;
                }
                // A fresh connection next time: this one may be mid-frame.
                link.close();
                let refused = shard
                    .registration()
                    .namesrv
                    .borrow()
                    .get(index)
                    .is_some_and(|s| s.refused);
                let state = NameServerStatus {
                    namesrv: addr.to_string(),
                    registered: false,
                    refused,
                };
                (state, false)
            }
        };
        let was_refused = shard
            .registration()
            .namesrv
            .borrow()
            .get(index)
            .is_some_and(|s| s.refused);
        if state.refused != was_refused {
            log_refusal(&shard, &identity, addr, state.refused);
        }
        let state_changed = shard.registration().record_state(index, state);
        if state_changed || master_changed {
            publish(&shard).await;
        }
    }
    unregister(&mut link, &shard, &identity).await;
}

/// Warns (once per task) when three heartbeats do not fit in the name server's expiry: one
/// lost or late heartbeat would then drop this broker from the routes.
fn check_expiry(addr: SocketAddr, heartbeat_ms: u64, expiry_ms: u32, warned: &mut bool) {
    if !*warned && expiry_ms > 0 && heartbeat_ms.saturating_mul(3) > u64::from(expiry_ms) {
        *warned = true;
        warn!(
            namesrv = %addr,
            namesrv_heartbeat_interval_ms = heartbeat_ms,
            broker_expiry_ms = expiry_ms,
            "three heartbeats take longer than the name server's expiry: a heartbeat or two \
             lost drops this broker from the routes; lower namesrv_heartbeat_interval_ms"
        );
    }
}

/// Ends the registration tasks: each finishes the exchange it has in flight (each step is
/// bounded by [`REQUEST_TIMEOUT`]) and then sends `BrokerUnregister` on the same connection,
/// so no registration of this broker can reach a name server after its unregister. Waits
/// for them all, at most the in-flight exchange's bound plus [`UNREGISTER_TIMEOUT`]; a task
/// still running then is dropped (that name server expires the broker instead).
pub async fn stop<D: Disk>(shard: &Rc<Shard<D>>, tasks: Vec<glommio::Task<()>>) {
    shard.registration().stopping.set(true);
    shard.registration().changed();
    let all = async {
        for task in tasks {
            task.await;
        }
    };
    let bound = REQUEST_TIMEOUT * 2 + UNREGISTER_TIMEOUT;
    future::or(all, async {
        sleep(bound).await;
        warn!(
            "the name servers did not all answer the unregister within {} ms",
            bound.as_millis()
        );
    })
    .await;
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

/// A name server started or stopped refusing this broker's master claim: logged on the change
/// only (every heartbeat would repeat it).
fn log_refusal<D: Disk>(
    shard: &Shard<D>,
    identity: &ClusterIdentity,
    addr: SocketAddr,
    refused: bool,
) {
    if !refused {
        info!(namesrv = %addr, "the name server accepts this broker's registration again");
        return;
    }
    let master = shard.registration().master();
    warn!(
        namesrv = %addr,
        broker_id = identity.broker_id,
        master = %master.as_ref().map_or("none", |m| m.listen.as_str()),
        master_epoch = master.as_ref().map_or(0, |m| m.epoch),
        "the name server refused this broker's master claim: its epoch does not outrank the \
         group's master there (lower, or equal from another broker), so clients are not routed \
         here; this broker still takes writes sent to it directly until it is demoted (fencing \
         it is the controller's part)"
    );
}

/// Sends the master and the name servers' states to every other shard: their `NOT_MASTER`
/// answers name the master, their `cluster status` shows the states.
async fn publish<D: Disk>(shard: &Rc<Shard<D>>) {
    let registration = shard.registration();
    for other in (0..shard.shard_count()).filter(|s| *s != shard.id()) {
        let request = ShardRequest::MasterHint {
            master: registration.master(),
            namesrv: registration.namesrv(),
        };
        // A shard that is gone is stopping with the broker; nothing to tell it.
        let _ = shard.mesh().send(other, request).await;
    }
}

/// Takes the master a name server named; returns whether the broker's view of it changed.
fn learn<D: Disk>(
    shard: &Rc<Shard<D>>,
    identity: &ClusterIdentity,
    index: usize,
    result: &RegisterResult,
) -> bool {
    // This broker naming itself would send clients back here.
    let named =
        (!result.master_listen.is_empty() && result.master_listen != identity.listen).then(|| {
            MasterHint {
                listen: result.master_listen.clone(),
                epoch: result.master_epoch,
            }
        });
    let Some(master) = shard.registration().record_answer(index, named) else {
        return false;
    };
    match &master {
        Some(m) => {
            info!(master = %m.listen, epoch = m.epoch, "the group's master, as the name servers name it")
        }
        None => info!("the name servers name no master for this group"),
    }
    true
}

/// The whole registration as it is now, encoded; `None` if a shard did not report.
async fn registration<D: Disk>(
    shard: &Rc<Shard<D>>,
    identity: &ClusterIdentity,
) -> Option<(Vec<u8>, usize)> {
    let mut shards: Vec<ShardStatus> = shard
        .ask_others(|reply| ShardRequest::ClusterState { reply })
        .await
        .ok()?;
    shards.push(local_status(shard));
    shards.sort_by_key(|s| s.shard);
    let config = shard.config();
    let mut register = BrokerRegister {
        cluster_name: config.cluster_name.clone(),
        broker_name: config.broker_name.clone(),
        broker_id: identity.broker_id,
        role: registered_role(&shards).to_string(),
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
        sequence: shard.registration().next_sequence(),
        signed_at_ms: 0,
        signature: Vec::new(),
    };
    if let Some(secret) = &config.namesrv_secret {
        ringmq_protocol::auth::sign_register(secret, &mut register, wall_clock_ms());
    }
    let mut body = Vec::new();
    register.encode(&mut body);
    let topic_count = register.topics.len();
    Some((body, topic_count))
}

/// The wall clock in ms since the Unix epoch: a signature's time, which the name server checks
/// against its own clock.
fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The role registered: a master role only when every shard is a master of the same mode.
/// Shards in different roles (a role change under way, or one that failed on some shards)
/// register as SLAVE, so no client is routed to a broker only part of which takes writes.
fn registered_role(shards: &[ShardStatus]) -> &str {
    match shards.split_first() {
        Some((first, rest))
            if first.role.ends_with("MASTER") && rest.iter().all(|s| s.role == first.role) =>
        {
            &first.role
        }
        _ => "SLAVE",
    }
}

/// Sends `BrokerUnregister` on `link` (the connection the registrations went on, or a new
/// one after a failure) and waits at most [`UNREGISTER_TIMEOUT`] for the answer.
async fn unregister<D: Disk>(
    link: &mut NameServerLink,
    shard: &Shard<D>,
    identity: &ClusterIdentity,
) {
    let config = shard.config();
    let mut unregister = BrokerUnregister {
        cluster_name: config.cluster_name.clone(),
        broker_name: config.broker_name.clone(),
        broker_id: identity.broker_id,
        // Above every registration sent: a name server with a secret refuses a sequence it
        // has seen, so this one cannot be replayed later.
        sequence: shard.registration().next_sequence(),
        signed_at_ms: 0,
        signature: Vec::new(),
    };
    if let Some(secret) = &config.namesrv_secret {
        ringmq_protocol::auth::sign_unregister(secret, &mut unregister, wall_clock_ms());
    }
    let mut body = Vec::new();
    unregister.encode(&mut body);
    let addr = link.addr;
    let sent = future::or(link.exchange(Opcode::BrokerUnregister, &body), async {
        sleep(UNREGISTER_TIMEOUT).await;
        Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"))
    })
    .await;
    match sent {
        Ok((Status::Ok, _)) => info!(namesrv = %addr, "unregistered"),
        Ok((status, _)) => warn!(namesrv = %addr, "unregistering: answered {status}"),
        Err(e) => {
            warn!(namesrv = %addr, "unregistering failed: {e}; the name server expires this broker instead")
        }
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
                    if header.is_response() && header.request_id < id {
                        // The answer to an earlier request that timed out here: its exchange
                        // is over; the one due follows on the same connection.
                        continue;
                    }
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
    use super::{registered_role, Registration};
    use crate::protocol::admin::{NameServerStatus, ShardStatus};

    fn shard(role: &str) -> ShardStatus {
        ShardStatus {
            shard: 0,
            role: role.to_string(),
            epoch: 1,
            log_id: String::new(),
            max_offset: 0,
            flushed_offset: 0,
            confirmed_offset: 0,
            divergence_points: Vec::new(),
            slaves: Vec::new(),
            master_link: None,
        }
    }

    #[test]
    fn a_master_role_is_registered_only_when_every_shard_has_it() {
        let all = [shard("SYNC_MASTER"), shard("SYNC_MASTER")];
        assert_eq!(registered_role(&all), "SYNC_MASTER");
        let mixed = [shard("SYNC_MASTER"), shard("SLAVE")];
        assert_eq!(registered_role(&mixed), "SLAVE");
        let modes = [shard("SYNC_MASTER"), shard("ASYNC_MASTER")];
        assert_eq!(registered_role(&modes), "SLAVE");
        assert_eq!(registered_role(&[shard("SLAVE")]), "SLAVE");
    }
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

    #[test]
    fn a_tie_keeps_one_master_and_refusals_are_recorded_on_change_only() {
        let r = Registration::default();
        // Two name servers that took different first claims at the same epoch: one master is
        // named (the later name server's), never a flip on every answer.
        assert_eq!(r.record_answer(0, hint("a:1", 7)), Some(hint("a:1", 7)));
        assert_eq!(r.record_answer(1, hint("b:1", 7)), Some(hint("b:1", 7)));
        assert_eq!(r.record_answer(0, hint("a:1", 7)), None);
        assert_eq!(r.record_answer(1, hint("b:1", 7)), None);

        let state = |registered, refused| NameServerStatus {
            namesrv: "127.0.0.1:9876".to_string(),
            registered,
            refused,
        };
        assert!(r.record_state(1, state(true, true)), "a new refusal");
        assert!(
            !r.record_state(1, state(true, true)),
            "the same refusal again"
        );
        assert_eq!(r.namesrv()[0], NameServerStatus::default(), "not heard yet");
        assert!(r.namesrv()[1].refused);
        assert!(
            r.record_state(1, state(false, true)),
            "unreachable, still refused"
        );
        assert!(r.record_state(1, state(true, false)), "accepted again");
    }
}
