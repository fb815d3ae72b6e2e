//! Bodies of the name-server requests (opcodes 70-72): a broker's registration and heartbeat,
//! its clean leave, and the route query clients ask. `docs/protocol.md` lists their layouts and
//! `docs/cluster.md` what the name server does with them.
//!
//! A registration is the broker's whole state each time (not a delta), so a name server that
//! restarted knows everything again after one heartbeat interval, and one lost heartbeat loses
//! nothing.

use super::codec::{
    list, Bytes16, Codec, DecodeError, EncodeError, Fields, Name, Reader, Str16, Struct, Writer,
    U16, U32, U64, U8,
};
use super::message::{wire_body, TopicInfo};

wire_body! {
    /// One shard's offsets in a registration: what a client choosing a slave to read from, or
    /// an operator, wants to know about how far behind it is.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct ShardOffsets {
        pub shard: u16 => U16,
        /// One past the highest offset consumers can read (flushed or replicated as the mode
        /// requires).
        pub confirmed_offset: u64 => U64,
        /// One past the highest offset in the shard's log.
        pub max_offset: u64 => U64,
    }
}

wire_body! {
    /// BrokerRegister request (opcode 70): one broker's whole registration, sent at start, on
    /// every change and as its heartbeat.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct BrokerRegister {
        pub cluster_name: String => Name,
        /// The broker group (a master and its slaves share it).
        pub broker_name: String => Name,
        /// Stable per store, non-zero.
        pub broker_id: u64 => U64,
        /// `SYNC_MASTER`, `ASYNC_MASTER`, `SLAVE` (later `FENCED`).
        pub role: String => Str16,
        /// The highest shard epoch: decides between two master claims of one group.
        pub epoch: u32 => U32,
        /// `SYNC_FLUSH` or `ASYNC_FLUSH`.
        pub flush_disk_type: String => Str16,
        /// Advertised client address, `HOST:PORT`.
        pub listen: String => Str16,
        /// Advertised HA (replication) address, `HOST:PORT`; empty when the broker has none.
        pub ha_listen: String => Str16,
        /// `shard_ports[n]`: shard `n`'s own client port (as in `Metadata`).
        pub shard_ports: Vec<u16> => list("shard_count", "shard_port", U16),
        pub topics: Vec<TopicInfo> => list("topic_count", "topic", Struct),
        /// Per shard offsets; may be empty.
        pub shards: Vec<ShardOffsets> => list("shard_offsets_count", "shard_offsets", Struct),
        /// Orders this broker's registrations: each one it sends carries a larger value than
        /// the last (a restart included: brokers base it on their boot time in nanoseconds),
        /// so a registration that arrives late (resent after a timeout, overtaken by a newer
        /// one on another connection) is ignored. 0: not sequenced, always applied (refused by
        /// a name server that requires signatures).
        pub sequence: u64 => U64,
        /// When the broker signed this registration (its wall clock, ms since the Unix epoch);
        /// 0 when unsigned. A name server with a secret refuses one outside its replay window.
        pub signed_at_ms: u64 => U64,
        /// HMAC-SHA256 over this body encoded with an empty signature, under the name
        /// server's shared secret ([`crate::auth::sign_register`]); empty when unsigned. Name
        /// servers strip it from the registrations they list, so a route answer hands no one
        /// a signed registration to replay.
        pub signature: Vec<u8> => Bytes16,
    }
}

wire_body! {
    /// RegisterResult: the answer to `BrokerRegister`.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct RegisterResult {
        /// 1: registered. 0: refused, a master claim whose epoch is below the group's master
        /// (or equal to it from another broker id); the name server then does not list the
        /// broker at all.
        pub accepted: u8 => U8,
        /// The group's current master as this name server knows it (after this
        /// registration); empty when the group has none.
        pub master_listen: String => Str16,
        pub master_ha_listen: String => Str16,
        pub master_broker_id: u64 => U64,
        pub master_epoch: u32 => U32,
        /// The name server's `broker_expiry_ms`: a broker silent that long is dropped.
        pub expiry_ms: u32 => U32,
        /// The highest master epoch the group has accepted, and the broker id that claimed
        /// it, whether or not that broker is still listed: what a refused master claim lost
        /// to when no master is listed (0 and 0: the group has accepted no master claim).
        pub group_epoch: u32 => U32,
        pub group_epoch_broker_id: u64 => U64,
    }
}

impl RegisterResult {
    pub fn is_accepted(&self) -> bool {
        self.accepted != 0
    }
}

wire_body! {
    /// BrokerUnregister request (opcode 71): a broker's clean shutdown; it leaves the routes at
    /// once instead of after the expiry.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct BrokerUnregister {
        pub cluster_name: String => Name,
        pub broker_name: String => Name,
        pub broker_id: u64 => U64,
        /// The broker's next registration sequence (as in `BrokerRegister`): a name server
        /// that requires signatures refuses one it has seen, so a captured unregistration
        /// cannot take the broker out of the routes again.
        pub sequence: u64 => U64,
        /// As in `BrokerRegister`: signing time and signature, 0 and empty when unsigned.
        pub signed_at_ms: u64 => U64,
        pub signature: Vec<u8> => Bytes16,
    }
}

wire_body! {
    /// RouteQuery request (opcode 72).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct RouteQuery {
        /// Only this cluster's brokers; empty: every cluster's.
        pub cluster_name: String => Str16,
    }
}

wire_body! {
    /// One live broker in a `Routes` answer: its last accepted registration, as it sent it,
    /// and how old that is.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct BrokerRoute {
        pub broker: BrokerRegister => Struct,
        /// Milliseconds since the name server last heard from this broker.
        pub last_heartbeat_ms_ago: u64 => U64,
    }
}

impl BrokerRoute {
    /// Whether the broker takes produces (its role is one of the master roles).
    pub fn is_master(&self) -> bool {
        is_master_role(&self.broker.role)
    }
}

/// Whether `role` (a `BrokerRole` name as brokers register it) claims a group's master.
pub fn is_master_role(role: &str) -> bool {
    matches!(role, "SYNC_MASTER" | "ASYNC_MASTER")
}

wire_body! {
    /// Routes: the answer to `RouteQuery`, every live broker, ordered by cluster, group and
    /// broker id.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Routes {
        pub brokers: Vec<BrokerRoute> => list("broker_count", "broker", Struct),
    }
}
