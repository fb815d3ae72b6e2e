//! Request handlers, one file per command. [`handle`] is the single entry point for a decoded
//! request, whether it came from a connection of this shard or was forwarded by another shard.

pub mod acl;
pub(crate) mod cluster;
mod group;
mod membership;
pub mod metadata;
pub mod produce;
mod pull;
pub(crate) mod reject;
pub(crate) mod topic;
pub(crate) mod user;

use super::mesh::{Reply, ShardRequest};
use super::topics::is_internal_name;
use super::{Shard, ShardError};
use crate::metrics::Counter;
use crate::protocol::frame::FrameHeader;
use crate::protocol::message::*;
use crate::protocol::requests::for_each_request;
use crate::protocol::{Acks, Opcode, Request, Status};
use crate::security::Principal;
use crate::store::io::Disk;
use std::net::SocketAddr;
use std::rc::Rc;
use tracing::debug;

/// A request from a client's connection: [`handle`], except that the frame's flags are
/// checked first (only `Produce` may name an acknowledgement level; see
/// `protocol::frame::FrameHeader::request_acks`), a produce runs at the level it names through
/// [`produce::produce`], and a client may not produce to or delete a topic the broker makes
/// for itself (`%SCHEDULE%`, `%RETRY%<group>`, `%DLQ%<group>`). Their contents are the
/// broker's promises: a schedule record aimed back at the schedule topic would loop, one with
/// a far due time at a level's head would hold every group's retries behind it, and a deleted
/// schedule topic drops every pending retry. The broker's own produces (a reject's copy, a due
/// retry, a forward between shards) come through [`handle`] and are unaffected.
///
/// `None`: write no response. A produce frame that asks for `none` (and that `min_acks` leaves
/// at `none`) gets no answer, ever: not for a refused topic, an undecodable body or a failure
/// of the produce itself, which are counted and logged at debug instead ([`withheld`]).
///
/// Before any of that, [`acl::authorize`] decides (with `authorization = "acl"`): a refused
/// request is answered `NOT_AUTHORIZED` (withheld like any refusal for a `none` produce) and
/// nothing of it runs. `principal` is the connection's (`None`: `ANONYMOUS`), `peer` its
/// address, for the audit log of admin calls.
pub async fn handle_client<D: Disk>(
    shard: &Rc<Shard<D>>,
    header: FrameHeader,
    opcode: Opcode,
    body: &[u8],
    principal: Option<&Principal>,
    peer: Option<SocketAddr>,
) -> Option<Reply> {
    let caller = acl::Caller { principal, peer };
    let audited = match acl::authorize(shard, opcode, body, caller) {
        Ok(audited) => audited,
        Err(refused) => return (!withheld(shard, header, &refused)).then_some(refused),
    };
    let reply = serve_client(shard, header, opcode, body).await;
    if let Some(audited) = audited {
        let status = reply.as_ref().map_or(Status::Ok, |r| r.status);
        acl::audit(shard, &audited, caller, status);
    }
    reply
}

/// [`handle_client`] once the request is allowed.
async fn serve_client<D: Disk>(
    shard: &Rc<Shard<D>>,
    header: FrameHeader,
    opcode: Opcode,
    body: &[u8],
) -> Option<Reply> {
    let requested = match header.request_acks() {
        Ok(acks) => acks,
        Err(e) => return Some(Reply::error(Status::BadRequest, e.to_string())),
    };
    if matches!(opcode, Opcode::Produce | Opcode::TopicDelete) {
        if let Some(name) = leading_name(body).filter(|n| is_internal_name(n)) {
            let refused = Reply::from(ShardError::Refused(format!(
                "`{name}` is kept by the broker: clients read it but do not write or delete it"
            )));
            return (!withheld(shard, header, &refused)).then_some(refused);
        }
    }
    if opcode == Opcode::Produce {
        let request = match ProduceRequest::decode(body) {
            Ok(request) => request,
            Err(e) => {
                let refused = Reply::from(ShardError::from(e));
                return (!withheld(shard, header, &refused)).then_some(refused);
            }
        };
        let produced = produce::produce(
            shard,
            request.topic,
            request.queue,
            &request.messages,
            requested,
        )
        .await;
        return produced.acks.is_answered().then_some(produced.reply);
    }
    Some(handle(shard, opcode, body).await)
}

/// Whether the failure `reply` to the client frame of `header` is withheld because the frame
/// asked for `none` and runs at `none` (its sender reads no answer). A withheld failure is
/// counted under level `none` and as a `none` error, and logged at debug, as a failed `none`
/// produce is. Used before the produce runs: by [`handle_client`] and by the connection for
/// SYSTEM_BUSY and a read timeout.
pub fn withheld<D: Disk>(shard: &Shard<D>, header: FrameHeader, reply: &Reply) -> bool {
    if header.opcode != Opcode::Produce as u16 || header.request_acks() != Ok(Some(Acks::None)) {
        return false;
    }
    let policy = produce::AcksPolicy::new(shard.config(), shard.role());
    if policy.resolve(Some(Acks::None)).is_answered() {
        return false;
    }
    shard.probe().add(Counter::ProduceAcksNone, 1);
    shard.probe().add(Counter::ProduceAcksNoneErrors, 1);
    debug!(
        shard = shard.id(),
        status = %reply.status,
        "a produce at level none was refused; its sender asked for no answer: {}",
        String::from_utf8_lossy(&reply.body)
    );
    true
}

/// The name a Produce or TopicDelete body starts with (a u16 length, then UTF-8), without
/// decoding the rest: the check above costs a produce nothing but this peek.
fn leading_name(body: &[u8]) -> Option<&str> {
    let len = u16::from_le_bytes([*body.first()?, *body.get(1)?]) as usize;
    std::str::from_utf8(body.get(2..2 + len)?).ok()
}

pub async fn handle<D: Disk>(shard: &Rc<Shard<D>>, opcode: Opcode, body: &[u8]) -> Reply {
    dispatch(shard, opcode, body)
        .await
        .unwrap_or_else(|e| error_reply(shard, e))
}

/// The reply of a failed request.
fn error_reply<D: Disk>(shard: &Shard<D>, e: ShardError) -> Reply {
    match e {
        // Every NOT_MASTER names the group's master when the name servers named one, so
        // a client re-routes in one round trip (docs/protocol.md).
        ShardError::NotMaster(message) => Reply::error(
            Status::NotMaster,
            crate::protocol::not_master_message(&message, shard.registration().master().as_ref()),
        ),
        e => Reply::from(e),
    }
}

/// Runs one request; a failure becomes its reply in [`handle`], the one place where a
/// [`ShardError`] turns into a wire status.
async fn dispatch<D: Disk>(
    shard: &Rc<Shard<D>>,
    opcode: Opcode,
    body: &[u8],
) -> Result<Reply, ShardError> {
    if shard.lifecycle().is_stopping() && opcode == Opcode::Produce {
        return Err(ShardError::ShuttingDown);
    }
    // glommio stores a spawned task's future inline only below 2 KiB and boxes a larger one.
    // Every client request runs as its own task (the connection's `start_at`), whose future
    // holds the largest of these arms: the pull, the one request on the data path (produce
    // runs before this dispatch), is polled in place; every other request's future goes to
    // the heap, so a rarely used large handler (a group pull, a reject, a promotion) costs
    // its own request one allocation rather than every request one. tests/hot_path.rs counts
    // the allocations of a produce and a pull, so a pull that outgrows the limit fails it.
    match opcode {
        Opcode::Pull => <PullRequest as Handler>::run(shard, body).await,
        _ => Box::pin(dispatch_any(shard, opcode, body)).await,
    }
}

/// Every request's handler, by the request table.
async fn dispatch_any<D: Disk>(
    shard: &Rc<Shard<D>>,
    opcode: Opcode,
    body: &[u8],
) -> Result<Reply, ShardError> {
    for_each_request!(dispatch_arms, shard, opcode, body)
}

/// The handler of one request type (a row of `protocol::requests::for_each_request!`). The
/// dispatch above is expanded from that table, so a declared request without a `Handler`
/// impl does not compile. Handlers take the raw body and decode it with their request type
/// themselves: several forward the body to another shard as it came, or refuse the request
/// (on a slave) before decoding it.
trait Handler: Request {
    async fn run<D: Disk>(shard: &Rc<Shard<D>>, body: &[u8]) -> Result<Reply, ShardError>;
}

/// One match arm per declared request; the match is over `Opcode`, declared by the same
/// table, so it is exhaustive by construction.
macro_rules! dispatch_arms {
    (($shard:expr, $opcode:expr, $body:expr)
        $( $op:ident = $value:literal => $wire:literal : $req:ty => $resp:ty, $what:literal
           { $($extra:tt)* }; )+
    ) => {
        match $opcode {
            $( Opcode::$op => <$req as Handler>::run($shard, $body).await, )+
        }
    };
}
use dispatch_arms;

/// Declares `Handler` impls: `RequestType => |shard, body| handler call`.
macro_rules! handlers {
    ($( $req:ty => |$shard:ident, $body:pat_param| $run:expr; )+) => {$(
        impl Handler for $req {
            async fn run<D: Disk>(
                $shard: &Rc<Shard<D>>,
                $body: &[u8],
            ) -> Result<Reply, ShardError> {
                $run
            }
        }
    )+};
}

handlers! {
    Ping => |_shard, _| Ok(Reply::ok(Vec::new()));
    MetadataRequest => |shard, _| Ok(metadata::handle(shard));
    ProduceRequest<'_> => |shard, body| produce::handle_internal(shard, body).await;
    PullRequest => |shard, body| pull::handle(shard, body).await;
    QueueRef => |shard, body| topic::queue_stats(shard, body).await;
    TopicCreate => |shard, body| topic::create(shard, body).await;
    TopicDelete => |shard, body| topic::delete(shard, body).await;
    TopicListRequest => |shard, _| Ok(topic::list(shard));
    TopicDescribe => |shard, body| topic::describe(shard, body).await;
    GroupCommit => |shard, body| group::commit(shard, body).await;
    GroupFetch => |shard, body| group::fetch(shard, body).await;
    GroupDescribe => |shard, body| group::describe(shard, body).await;
    GroupJoin => |shard, body| membership::join(shard, body).await;
    GroupHeartbeat => |shard, body| membership::heartbeat(shard, body).await;
    GroupLeave => |shard, body| membership::leave(shard, body).await;
    GroupMembers => |shard, body| membership::members(shard, body).await;
    GroupPull => |shard, body| membership::pull(shard, body).await;
    MessageReject => |shard, body| reject::handle(shard, body).await;
    StatsRequest => |shard, _| stats(shard).await;
    DeleteExpiredRequest => |shard, _| retention(shard, true).await;
    RetentionStatusRequest => |shard, _| retention(shard, false).await;
    MetadataSnapshotRequest => |shard, _| metadata::snapshot(shard).await;
    ClusterStatusRequest => |shard, _| cluster::status(shard).await;
    ClusterPromote => |shard, body| cluster::promote(shard, body).await;
    ClusterDemote => |shard, body| cluster::demote(shard, body).await;
    AclAdd => |shard, body| acl::add(shard, body).await;
    AclRemove => |shard, body| acl::remove(shard, body).await;
    AclListRequest => |shard, _| acl::list(shard);
    crate::protocol::scram::AuthStart => |_shard, _| Err(user::connection_only("AuthStart"));
    crate::protocol::scram::AuthFinish => |_shard, _| Err(user::connection_only("AuthFinish"));
    crate::protocol::scram::UserCreate => |shard, body| user::create(shard, body).await;
    crate::protocol::scram::UserDelete => |shard, body| user::delete(shard, body).await;
    crate::protocol::scram::UserListRequest => |shard, _| Ok(user::list(shard));
    crate::protocol::namesrv::BrokerRegister => |_shard, _| Err(name_server_only("BrokerRegister"));
    crate::protocol::namesrv::BrokerUnregister => |_shard, _| Err(name_server_only("BrokerUnregister"));
    crate::protocol::namesrv::RouteQuery => |_shard, _| Err(name_server_only("RouteQuery"));
}

/// The name-server requests (opcodes 70-72) share the protocol's table, so the broker's
/// dispatch has an arm for them; a broker refuses them (a client pointed `--namesrv` at a
/// broker's port learns so from the message).
fn name_server_only(request: &str) -> ShardError {
    ShardError::Refused(format!(
        "{request} is a name-server request and this is a broker: give `--namesrv` the address of a `ringmq namesrv`"
    ))
}

/// Runs a request that another shard sent over the mesh.
pub async fn handle_shard_request<D: Disk>(shard: Rc<Shard<D>>, request: ShardRequest) {
    match request {
        ShardRequest::Execute {
            opcode,
            body,
            reply,
        } => {
            // Counted on the shard that runs it, so that shard's clean stop waits for it too.
            shard.lifecycle().request_started();
            let answer = handle(&shard, opcode, &body).await;
            let _ = reply.send(answer);
            shard.lifecycle().request_finished();
        }
        ShardRequest::Produce { body, acks, reply } => {
            shard.lifecycle().request_started();
            let answer = produce::handle_forwarded(&shard, &body, acks)
                .await
                .unwrap_or_else(|e| error_reply(&shard, e));
            let _ = reply.send(answer);
            shard.lifecycle().request_finished();
        }
        ShardRequest::ApplyTopics { table, reply } => {
            let _ = reply.send(shard.apply_topics(table).await);
        }
        ShardRequest::ApplyAcls { table, reply } => acl::apply(&shard, table, reply),
        ShardRequest::ApplyUsers { table, reply } => {
            shard.metadata().set_users(table);
            let _ = reply.send(());
        }
        ShardRequest::AdoptReplicaLink {
            fd,
            hello,
            peer,
            deadline,
        } => {
            crate::replication::master::adopt(shard, fd, *hello, peer, deadline).await;
        }
        ShardRequest::AdoptTlsReplicaLink { fd, peer, deadline } => {
            crate::replication::master::adopt_tls(shard, fd, peer, deadline).await;
        }
        ShardRequest::AllGroupOffsets { reply } => {
            let _ = reply.send(shard.metadata().groups().all_rows());
        }
        ShardRequest::ClusterState { reply } => {
            let _ = reply.send(cluster::local_status(&shard));
        }
        ShardRequest::ChangeRole { target, reply } => {
            let changed = shard.change_role(target).await;
            // Shard 0's name-server tasks register the new role at once.
            shard.registration().changed();
            let _ = reply.send(changed);
        }
        ShardRequest::Reregister => shard.registration().changed(),
        ShardRequest::ControllerView { view, reply } => {
            let _ = reply.send(shard.apply_controller_view(*view));
        }
        ShardRequest::MasterHint { master, namesrv } => {
            shard.registration().set_master(master);
            shard.registration().set_namesrv(namesrv);
        }
        ShardRequest::Probe { reply } => {
            let _ = reply.send(shard.snapshot());
        }
        ShardRequest::Retention { pass, reply } => {
            if let Ok(row) = local_retention(&shard, pass).await {
                let _ = reply.send(row);
            }
        }
        ShardRequest::GroupFence {
            group,
            member_id,
            generation,
            queue,
            reply,
        } => {
            let answer = shard
                .coordinator()
                .borrow()
                .fence(&group, &member_id, generation, &queue);
            let _ = reply.send(answer);
        }
        ShardRequest::GroupFencesChanged { groups, done } => {
            shard.fence_cache().forget(&groups);
            let _ = done.send(());
        }
        ShardRequest::GroupOffsets { group, reply } => {
            let _ = reply.send(group::local_offsets(&shard, &group).await);
        }
        ShardRequest::EnsureInternalTopic {
            name,
            queue_count,
            reply,
        } => {
            let created = topic::ensure_internal(&shard, &name, queue_count).await;
            let _ = reply.send(created.map(|_| ()));
        }
        ShardRequest::KafkaGroup { request, reply } => {
            let _ = reply.send(crate::kafka::group_api::serve_here(&shard, request).await);
        }
    }
}

/// Stats: every shard's probe merged, as a JSON document (see `metrics::Stats`).
async fn stats<D: Disk>(shard: &Rc<Shard<D>>) -> Result<Reply, ShardError> {
    let snapshots = shard.gather_snapshots().await;
    let merged = crate::metrics::ProbeSnapshot::merge(&snapshots)
        .ok_or_else(|| ShardError::Internal("no shard answered".to_string()))?;
    Ok(Reply::ok(
        serde_json::to_vec(&merged.to_stats()).expect("stats serialize"),
    ))
}

/// DeleteExpired (`pass`: every shard runs a cleaning pass now, outside the `delete_when`
/// hours) and RetentionStatus: every shard's retention row.
async fn retention<D: Disk>(shard: &Rc<Shard<D>>, pass: bool) -> Result<Reply, ShardError> {
    let mut shards = vec![local_retention(shard, pass).await?];
    shards.extend(
        shard
            .ask_others(|reply| ShardRequest::Retention { pass, reply })
            .await?,
    );
    shards.sort_by_key(|row| row.shard);
    let answer = crate::protocol::admin::Retention { shards };
    Ok(Reply::ok(
        serde_json::to_vec(&answer).expect("retention serializes"),
    ))
}

async fn local_retention<D: Disk>(
    shard: &Rc<Shard<D>>,
    pass: bool,
) -> Result<crate::protocol::admin::ShardRetention, ShardError> {
    let report = if pass {
        shard
            .cleaning()
            .request_pass(shard.lifecycle().is_stopping())
            .await
            .map_err(|_| ShardError::Internal("the shard is stopping".to_string()))?
    } else {
        crate::shard::cleaning::PassReport::default()
    };
    Ok(crate::shard::cleaning::status(shard, report))
}

/// The owning shard does not hold a queue the topic table gives it (a table being applied).
fn unregistered_queue() -> ShardError {
    ShardError::QueueNotFound("queue is not registered on its shard".to_string())
}

/// Where a queue-scoped request must run: here, or on the owning shard.
enum Route {
    Local { topic_id: u32 },
    Remote(usize),
}

fn route<D: Disk>(shard: &Shard<D>, topic: &str, queue: u32) -> Result<Route, ShardError> {
    // Read in place: copying the entry (its queue list) cost every request an allocation.
    let (topic_id, owner, queue_count) = shard
        .with_topic(topic, |entry| {
            let owner = entry.queue_shards.get(queue as usize).copied();
            (entry.topic_id, owner, entry.queue_count())
        })
        .ok_or_else(|| ShardError::TopicNotFound(topic.to_string()))?;
    let owner = owner.ok_or_else(|| {
        ShardError::QueueNotFound(format!(
            "topic `{topic}` has queues 0 to {}, not {queue}",
            queue_count.saturating_sub(1)
        ))
    })? as usize;
    if owner == shard.id() {
        Ok(Route::Local { topic_id })
    } else {
        Ok(Route::Remote(owner))
    }
}

/// Room for the small fixed bodies (a produce answer, an empty pull summary) so that encoding
/// one allocates once rather than growing the vector field by field.
const SMALL_BODY_BYTES: usize = 64;

/// Encodes a body with a writer function into a fresh vector.
fn body(encode: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::with_capacity(SMALL_BODY_BYTES);
    encode(&mut out);
    out
}
