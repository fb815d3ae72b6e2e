//! Cross-shard message passing: the only way cores talk to each other.
//!
//! For every ordered pair of shards (from, to) the main thread creates one bounded
//! `shared_channel` before the executors start, so channel `[from][to]` is addressed by shard
//! id by construction. A request for a queue another shard owns travels as
//! [`ShardRequest::Execute`] with the raw request body and comes back on a oneshot.

use super::topics::TopicTable;
use crate::constants::SHARD_CHANNEL_CAPACITY;
use crate::protocol::message::GroupQueueLag;
use crate::protocol::{Opcode, Status};
use futures_channel::oneshot;
use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};
use std::sync::Arc;

/// A handler's answer: a status and the response body (an error message for error statuses).
#[derive(Debug)]
pub struct Reply {
    pub status: Status,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn ok(body: Vec<u8>) -> Reply {
        Reply {
            status: Status::Ok,
            body,
        }
    }
    pub fn with_status(status: Status, body: Vec<u8>) -> Reply {
        Reply { status, body }
    }
    pub fn error(status: Status, message: impl Into<String>) -> Reply {
        debug_assert!(!status.has_body());
        Reply {
            status,
            body: message.into().into_bytes(),
        }
    }
}

pub enum ShardRequest {
    /// Run a client request on the shard that owns its queue.
    Execute {
        opcode: Opcode,
        body: Vec<u8>,
        reply: oneshot::Sender<Reply>,
    },
    /// Run a produce on the shard that owns its queue at the level the receiving shard
    /// resolved (a forward keeps the client's level; `Execute` would give it the role's).
    Produce {
        body: Vec<u8>,
        acks: crate::protocol::Acks,
        reply: oneshot::Sender<Reply>,
    },
    /// Shard 0 changed the topic table: add or drop local queues, then acknowledge.
    ApplyTopics {
        table: Arc<TopicTable>,
        reply: oneshot::Sender<Result<(), crate::shard::ShardError>>,
    },
    /// Shard 0 changed the ACL rules: take them, then acknowledge.
    ApplyAcls {
        table: Arc<crate::security::acl::AclTable>,
        reply: oneshot::Sender<()>,
    },
    /// Shard 0 changed the SCRAM user table: swap it in, then acknowledge.
    ApplyUsers {
        table: Arc<crate::security::users::UserTable>,
        reply: oneshot::Sender<()>,
    },
    /// A replication link for this shard, accepted by another shard on the shared HA port.
    AdoptReplicaLink {
        fd: std::os::fd::RawFd,
        hello: Box<crate::replication::protocol::Hello>,
        peer: String,
        /// When the whole handshake must be done, set at accept.
        deadline: std::time::Instant,
    },
    /// A TLS replication link for this shard (`ha_security = "tls"`), accepted by another
    /// shard, its preface read and nothing else: the TLS handshake runs here.
    AdoptTlsReplicaLink {
        fd: std::os::fd::RawFd,
        peer: String,
        /// When the whole handshake must be done, set at accept.
        deadline: std::time::Instant,
    },
    /// Every group offset this shard keeps.
    AllGroupOffsets {
        reply: oneshot::Sender<Vec<crate::shard::groups::OffsetRow>>,
    },
    /// This shard's replication state, for `cluster status`.
    ClusterState {
        reply: oneshot::Sender<crate::shard::handlers::cluster::ShardStatus>,
    },
    /// Shard 0 heard a new master for this broker's group from the name servers (or none):
    /// this shard's `NOT_MASTER` answers name it from now on.
    MasterHint {
        master: Option<crate::protocol::MasterHint>,
        /// How registering with each name server last went (for `cluster status`).
        namesrv: Vec<crate::protocol::admin::NameServerStatus>,
    },
    /// Controller mode: shard 0's view of the controllers' answer (epochs, SyncStateSet,
    /// lease); the shard answers with its own report for the next heartbeat.
    ControllerView {
        view: Box<crate::shard::controller_agent::ControllerView>,
        reply: oneshot::Sender<crate::shard::controller_agent::ShardReport>,
    },
    /// Shard 0: what a registration carries changed on another shard (every shard's role
    /// after a role change); register again now.
    Reregister,
    /// Change this shard's role (see `Shard::change_role`).
    ChangeRole {
        target: crate::shard::role::RoleTarget,
        reply: oneshot::Sender<Result<(), crate::shard::ShardError>>,
    },
    /// This shard's probe snapshot.
    Probe {
        reply: oneshot::Sender<crate::metrics::ProbeSnapshot>,
    },
    /// This shard's retention row, after a cleaning pass when `pass` is set.
    Retention {
        pass: bool,
        reply: oneshot::Sender<crate::protocol::admin::ShardRetention>,
    },
    /// Coordinator: may this member, at this generation, pull and commit this queue? The
    /// answer is the group name its offsets are kept under.
    GroupFence {
        group: String,
        member_id: String,
        generation: u64,
        queue: crate::protocol::message::GroupQueue,
        reply: oneshot::Sender<Result<String, crate::shard::coordinator::MembershipError>>,
    },
    /// Coordinator: these groups' generations or queue holders changed; drop the fences
    /// cached for them, then answer (the coordinator answers its member only after that).
    GroupFencesChanged {
        groups: Vec<String>,
        done: oneshot::Sender<()>,
    },
    /// The committed offsets of a group for the queues this shard owns.
    GroupOffsets {
        group: String,
        reply: oneshot::Sender<Vec<GroupQueueLag>>,
    },
    /// Shard 0: create a topic the broker makes for itself (a retry, dead-letter or schedule
    /// topic) unless it exists; every shard has it once the answer comes.
    EnsureInternalTopic {
        name: String,
        queue_count: u32,
        reply: oneshot::Sender<Result<(), crate::shard::ShardError>>,
    },
    /// Kafka group coordinator (`kafka::groups`): a group request of a Kafka connection on
    /// another shard; a join's answer comes when its round closes.
    KafkaGroup {
        request: crate::kafka::groups::Request,
        reply: oneshot::Sender<crate::kafka::groups::Response>,
    },
}

/// The unconnected channel ends of one shard, made in the main thread.
pub struct MeshEnds {
    pub senders: Vec<Option<SharedSender<ShardRequest>>>,
    pub receivers: Vec<Option<SharedReceiver<ShardRequest>>>,
}

/// Builds the full mesh: `ends[s]` belongs to shard `s`; `senders[t]` sends to shard `t` and
/// `receivers[f]` receives from shard `f` (`None` for itself).
pub fn build_mesh(shard_count: usize) -> Vec<MeshEnds> {
    let mut ends: Vec<MeshEnds> = (0..shard_count)
        .map(|_| MeshEnds {
            senders: (0..shard_count).map(|_| None).collect(),
            receivers: (0..shard_count).map(|_| None).collect(),
        })
        .collect();
    for from in 0..shard_count {
        for to in 0..shard_count {
            if from != to {
                let (tx, rx) = shared_channel::new_bounded(SHARD_CHANNEL_CAPACITY);
                ends[from].senders[to] = Some(tx);
                ends[to].receivers[from] = Some(rx);
            }
        }
    }
    ends
}

/// Connected senders of one shard, indexed by target shard.
pub struct Mesh {
    senders: Vec<Option<ConnectedSender<ShardRequest>>>,
}

impl Mesh {
    /// Connects this shard's ends; must run inside the shard's executor. Returns the receivers
    /// with the id of the shard each receives from.
    ///
    /// A sender's connect completes only once the peer has connected the matching receiver, so
    /// every end is connected concurrently: awaiting the senders first would deadlock two shards
    /// that each wait for the other's receivers.
    pub async fn connect(ends: MeshEnds) -> (Mesh, Vec<(usize, ConnectedReceiver<ShardRequest>)>) {
        let sender_tasks: Vec<_> = ends
            .senders
            .into_iter()
            .map(|s| s.map(|s| glommio::spawn_local(s.connect())))
            .collect();
        let receiver_tasks: Vec<_> = ends
            .receivers
            .into_iter()
            .enumerate()
            .filter_map(|(from, r)| r.map(|r| (from, glommio::spawn_local(r.connect()))))
            .collect();
        let mut senders = Vec::with_capacity(sender_tasks.len());
        for task in sender_tasks {
            senders.push(match task {
                Some(task) => Some(task.await),
                None => None,
            });
        }
        let mut receivers = Vec::with_capacity(receiver_tasks.len());
        for (from, task) in receiver_tasks {
            receivers.push((from, task.await));
        }
        (Mesh { senders }, receivers)
    }

    /// The mesh of a broker with one shard: nobody to talk to.
    pub fn alone() -> Mesh {
        Mesh {
            senders: vec![None],
        }
    }

    /// Sends a request to shard `to`, waiting (asynchronously) while its channel is full.
    pub async fn send(&self, to: usize, request: ShardRequest) -> Result<(), ShardGone> {
        let sender = self.senders[to].as_ref().expect("no channel to self");
        sender.send(request).await.map_err(|_| ShardGone(to))
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ShardGone(pub usize);
