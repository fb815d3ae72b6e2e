//! Request and response bodies, each declared once with [`wire_body!`].
//!
//! A declaration lists a body's fields in wire order, each with the [`Codec`] that lays it out;
//! the encoder, the decoder, the size floor a list count is checked against, the encodability
//! check and (in tests) the property-test strategy all come from that one list. Which opcode
//! carries which body is declared in [`super::requests`].
//!
//! Produce requests and pull responses carry many messages; their fields are borrowed
//! (`&'a str`, `&'a [u8]`), so their decoders point into the frame instead of copying and the
//! broker's produce path allocates nothing per message. Every other body is small and decoded
//! into owned values.

use super::codec::{
    list, Bytes16, Bytes32, Codec, DecodeError, EncodeError, Fields, Flagged, Name, Reader, Str16,
    Struct, Writer, U16, U32, U64, U8,
};

/// `queue` value in a produce request that lets the receiving shard pick one of its own queues.
pub const ANY_QUEUE: u32 = u32::MAX;

/// Declares a wire body: the struct, its [`Fields`] (for nesting), and inherent `encode`,
/// `decode` (which also refuses trailing bytes) and `check` (every length fits its prefix).
/// A body without a lifetime also gets a property-test strategy from its codecs. An optional
/// `validate = path;` after the struct runs on every decoded value (rules beyond layout).
macro_rules! wire_body {
    (@common $name:ident [$($impl_lt:tt)*] [$($ty_lt:tt)*] [$lt:lifetime]
        [$($inherent_lt:tt)*] [$decode_lt:lifetime]
        { $( $field:ident : $ty:ty => $codec:expr ),* } [$($validate:path)?]
    ) => {
        impl<$($impl_lt)*> Fields<$lt> for $name<$($ty_lt)*> {
            fn write_fields(&self, w: &mut Writer<'_>) {
                let _ = &w;
                $( Codec::<$lt, $ty>::write(&$codec, w, &self.$field); )*
            }
            fn read_fields(r: &mut Reader<$lt>) -> Result<Self, DecodeError> {
                let _ = &r;
                $( let $field = Codec::<$lt, $ty>::read(&$codec, r, stringify!($field))?; )*
                Ok($name { $($field),* })
            }
            fn min_bytes() -> usize {
                0 $( + Codec::<$lt, $ty>::min_bytes(&$codec) )*
            }
            fn check_fields(&self) -> Result<(), EncodeError> {
                $( Codec::<$lt, $ty>::check(&$codec, &self.$field, stringify!($field))?; )*
                Ok(())
            }
            fn canonical() -> bool {
                true $( && Codec::<$lt, $ty>::canonical(&$codec) )*
            }
        }

        impl<$($inherent_lt)*> $name<$($inherent_lt)*> {
            pub fn encode(&self, out: &mut Vec<u8>) {
                self.write_fields(&mut Writer::new(out));
            }
            pub fn decode(body: &$decode_lt [u8]) -> Result<Self, DecodeError> {
                let mut r = Reader::new(body);
                let value = Self::read_fields(&mut r)?;
                r.finish()?;
                $( $validate(&value)?; )?
                Ok(value)
            }
            /// Whether every length fits the wire; `encode` panics on a value that does not.
            pub fn check(&self) -> Result<(), EncodeError> {
                self.check_fields()
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub struct $name:ident<$lt:lifetime> {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty => $codec:expr ),* $(,)?
        }
        $(validate = $validate:path;)?
    ) => {
        $(#[$meta])*
        pub struct $name<$lt> {
            $( $(#[$fmeta])* pub $field: $ty ),*
        }
        wire_body!(@common $name [$lt] [$lt] [$lt] [$lt] [$lt]
            { $( $field : $ty => $codec ),* } [$($validate)?]);
    };
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty => $codec:expr ),* $(,)?
        }
        $(validate = $validate:path;)?
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty ),*
        }
        wire_body!(@common $name ['de] [] ['de] [] ['_]
            { $( $field : $ty => $codec ),* } [$($validate)?]);

        #[cfg(test)]
        impl super::codec::strategies::Generate for $name {
            fn strategy() -> proptest::strategy::BoxedStrategy<Self> {
                use proptest::strategy::Strategy;
                super::message::nested_strategy!(
                    $( super::codec::strategies::Strategize::<$ty>::strategy(&$codec) ),*
                )
                .prop_map(|super::message::nested_pattern!($($field),*)| $name { $($field),* })
                .boxed()
            }
        }
    };
}

/// Other body modules (`namesrv`) declare theirs with the same macro.
pub(crate) use wire_body;

/// The fields' strategies as nested pairs ending in `Just(())`: proptest implements
/// `Strategy` for tuples of at most 12, and a body may have more fields than that.
#[cfg(test)]
macro_rules! nested_strategy {
    () => { proptest::strategy::Just(()) };
    ($first:expr $(, $rest:expr)*) => {
        ($first, super::message::nested_strategy!($($rest),*))
    };
}
#[cfg(test)]
pub(crate) use nested_strategy;

/// The pattern matching a [`nested_strategy`] value, binding each field by name.
#[cfg(test)]
macro_rules! nested_pattern {
    () => { () };
    ($first:ident $(, $rest:ident)*) => {
        ($first, super::message::nested_pattern!($($rest),*))
    };
}
#[cfg(test)]
pub(crate) use nested_pattern;

wire_body! {
    /// One message as a producer sends it (borrowed).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct MessageRef<'a> {
        pub born_timestamp_ms: u64 => U64,
        pub key: &'a [u8] => Bytes16,
        pub properties: &'a [u8] => Bytes16,
        pub body: &'a [u8] => Bytes32,
    }
}

/// The message list of a produce request. `encode_produce` writes a slice with it, so the
/// client's produce need not build a [`ProduceRequest`].
const PRODUCE_MESSAGES: super::codec::List<Struct> = list("message_count", "message", Struct);

wire_body! {
    /// Produce: append a batch of messages to one queue of a topic.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct ProduceRequest<'a> {
        pub topic: &'a str => Name,
        /// A queue id, or [`ANY_QUEUE`].
        pub queue: u32 => U32,
        pub messages: Vec<MessageRef<'a>> => PRODUCE_MESSAGES,
    }
    validate = produce_has_messages;
}

fn produce_has_messages(request: &ProduceRequest<'_>) -> Result<(), DecodeError> {
    if request.messages.is_empty() {
        return Err(DecodeError::Invalid {
            field: "message_count",
            reason: "a produce request needs at least one message",
        });
    }
    Ok(())
}

/// Encodes a produce request from borrowed parts, with the layout [`ProduceRequest`] declares.
pub fn encode_produce(out: &mut Vec<u8>, topic: &str, queue: u32, messages: &[MessageRef<'_>]) {
    let mut w = Writer::new(out);
    Name.write(&mut w, &topic);
    U32.write(&mut w, &queue);
    PRODUCE_MESSAGES.write_items(&mut w, messages);
}

wire_body! {
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct ProduceResponse {
        pub queue: u32 => U32,
        /// Queue offset of the first message; message `i` of the batch has `base_offset + i`.
        pub base_offset: u64 => U64,
        pub count: u32 => U32,
        /// Commitlog offset of the first message's record.
        pub commitlog_offset: u64 => U64,
    }
}

wire_body! {
    /// Pull: read messages of one queue from a queue offset, optionally waiting for new ones.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct PullRequest {
        pub topic: String => Name,
        pub queue: u32 => U32,
        pub offset: u64 => U64,
        pub max_messages: u32 => U32,
        pub max_bytes: u32 => U32,
        /// Long polling: how long to wait at the end of the queue for a message to arrive.
        pub max_wait_ms: u32 => U32,
    }
}

wire_body! {
    /// One message as a consumer receives it (borrowed from the response frame).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PulledMessageRef<'a> {
        pub queue_offset: u64 => U64,
        pub born_timestamp_ms: u64 => U64,
        pub store_timestamp_ms: u64 => U64,
        pub key: &'a [u8] => Bytes16,
        pub properties: &'a [u8] => Bytes16,
        pub body: &'a [u8] => Bytes32,
    }
}

/// An owned pulled message, for clients that keep messages past the response buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PulledMessage {
    pub queue_offset: u64,
    pub born_timestamp_ms: u64,
    pub store_timestamp_ms: u64,
    pub key: Vec<u8>,
    pub properties: Vec<u8>,
    pub body: Vec<u8>,
}

impl PulledMessageRef<'_> {
    pub fn to_owned(&self) -> PulledMessage {
        PulledMessage {
            queue_offset: self.queue_offset,
            born_timestamp_ms: self.born_timestamp_ms,
            store_timestamp_ms: self.store_timestamp_ms,
            key: self.key.to_vec(),
            properties: self.properties.to_vec(),
            body: self.body.to_vec(),
        }
    }
}

/// `PullSummary::suggest`: keep reading this queue where you are.
pub const SUGGEST_STAY: u8 = 0;
/// `PullSummary::suggest`: the master is busy and this position is far behind its log end;
/// read this queue from a slave of the same group.
pub const SUGGEST_SLAVE: u8 = 1;
/// `PullSummary::suggest`: a slave says the consumer is close to the log end again; read this
/// queue from the master.
pub const SUGGEST_MASTER: u8 = 2;

wire_body! {
    /// Pull response header fields; messages follow.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PullSummary {
        /// The offset to pull from next.
        pub next_offset: u64 => U64,
        /// Lowest offset still held in the queue.
        pub min_offset: u64 => U64,
        /// One past the highest confirmed (visible) offset.
        pub max_offset: u64 => U64,
        /// Where to read this queue from next: [`SUGGEST_STAY`], [`SUGGEST_SLAVE`] or
        /// [`SUGGEST_MASTER`] (see `slave_read_enable`).
        pub suggest: u8 => U8,
    }
}

wire_body! {
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct PullResponse<'a> {
        pub summary: PullSummary => Struct,
        pub messages: Vec<PulledMessageRef<'a>> => list("message_count", "message", Struct),
    }
}

/// Writes a pull response incrementally, in the layout [`PullResponse`] declares: the summary
/// first, messages as they are read, the count and next offset patched at the end.
pub struct PullResponseEncoder {
    count_at: usize,
    next_offset_at: usize,
    count: u32,
}

impl PullResponseEncoder {
    pub fn begin(out: &mut Vec<u8>, summary: PullSummary) -> Self {
        let mut w = Writer::new(out);
        // `next_offset` is the summary's first field.
        let next_offset_at = w.position();
        summary.write_fields(&mut w);
        let count_at = w.position();
        w.u32(0);
        PullResponseEncoder {
            count_at,
            next_offset_at,
            count: 0,
        }
    }
    pub fn push(&mut self, out: &mut Vec<u8>, m: &PulledMessageRef<'_>) {
        m.write_fields(&mut Writer::new(out));
        self.count += 1;
    }
    pub fn count(&self) -> u32 {
        self.count
    }
    pub fn finish(self, out: &mut Vec<u8>, next_offset: u64) {
        let mut w = Writer::new(out);
        w.patch_u32(self.count_at, self.count);
        w.patch_u64(self.next_offset_at, next_offset);
    }
}

wire_body! {
    /// A topic and a queue: the body of queue-scoped requests (`QueueStats`).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct QueueRef {
        pub topic: String => Name,
        pub queue: u32 => U32,
    }
}

wire_body! {
    /// Offsets of one queue as seen by the shard that owns it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct QueueStats {
        pub queue: u32 => U32,
        pub shard: u16 => U16,
        pub min_offset: u64 => U64,
        /// One past the highest confirmed offset: what consumers can read.
        pub max_offset: u64 => U64,
    }
}

wire_body! {
    /// A topic's identity and queue placement.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct TopicInfo {
        pub name: String => Str16,
        /// Never reused, so records of a deleted topic are never mistaken for a new one's.
        pub topic_id: u32 => U32,
        /// `queue_shards[q]` is the shard that owns queue `q`.
        pub queue_shards: Vec<u16> => list("queue_count", "queue_shard", U16),
    }
}

impl TopicInfo {
    pub fn queue_count(&self) -> u32 {
        self.queue_shards.len() as u32
    }
}

wire_body! {
    /// Metadata: what a shard-aware client needs to route requests.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Metadata {
        pub broker_name: String => Str16,
        /// `BrokerRole` name, e.g. `ASYNC_MASTER`.
        pub role: String => Str16,
        /// `FlushDiskType` name, e.g. `SYNC_FLUSH`.
        pub flush_disk_type: String => Str16,
        /// `shard_ports[n]` is the port on which shard `n` accepts connections directly.
        pub shard_ports: Vec<u16> => list("shard_count", "shard_port", U16),
        pub topics: Vec<TopicInfo> => list("topic_count", "topic", Struct),
    }
}

impl Metadata {
    pub fn shard_count(&self) -> usize {
        self.shard_ports.len()
    }
}

wire_body! {
    /// TopicCreate request.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct TopicCreate {
        pub name: String => Name,
        pub queue_count: u32 => U32,
    }
}

wire_body! {
    /// TopicDelete request.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct TopicDelete {
        pub name: String => Name,
    }
}

wire_body! {
    /// TopicDescribe request.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct TopicDescribe {
        pub name: String => Name,
    }
}

wire_body! {
    /// TopicList response.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct TopicList {
        pub topics: Vec<TopicInfo> => list("topic_count", "topic", Struct),
    }
}

wire_body! {
    /// TopicDescribe response.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct TopicDescription {
        pub topic: TopicInfo => Struct,
        pub queues: Vec<QueueStats> => list("queue_count", "queue", Struct),
    }
}

wire_body! {
    /// GroupCommit request: a consumer group's next offset to consume for one queue.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct GroupCommit {
        pub group: String => Name,
        pub topic: String => Name,
        pub queue: u32 => U32,
        pub offset: u64 => U64,
    }
}

wire_body! {
    /// GroupFetch request.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct GroupFetch {
        pub group: String => Name,
        pub topic: String => Name,
        pub queue: u32 => U32,
    }
}

wire_body! {
    /// GroupFetch response: the committed offset, if the group ever committed one for the queue.
    /// Absent, the offset bytes are still there (zero).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct GroupOffset {
        pub offset: Option<u64> => Flagged { present: "present" },
    }
}

wire_body! {
    /// GroupDescribe request.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct GroupDescribe {
        pub group: String => Name,
    }
}

wire_body! {
    /// One row of a GroupDescribe response.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct GroupQueueLag {
        pub topic: String => Str16,
        pub queue: u32 => U32,
        pub committed_offset: u64 => U64,
        pub max_offset: u64 => U64,
    }
}

impl GroupQueueLag {
    pub fn lag(&self) -> u64 {
        self.max_offset.saturating_sub(self.committed_offset)
    }
}

wire_body! {
    /// GroupDescribe response.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct GroupDescription {
        pub group: String => Str16,
        pub queues: Vec<GroupQueueLag> => list("queue_count", "queue", Struct),
    }
}

wire_body! {
    /// One queue of a group's subscription, as membership requests and answers name it.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct GroupQueue {
        pub topic: String => Str16,
        pub queue: u32 => U32,
    }
}

wire_body! {
    /// GroupJoin request: a consumer joins `group` with a session. `mode` is 0 (clustering:
    /// the queues are divided among the members) or 1 (broadcasting: every member reads
    /// every queue); `strategy` is 0 (averagely), 1 (by circle) or 2 (consistent hash);
    /// `orderly` is 1 when the members process each queue one message at a time, in order.
    /// The first member fixes the group's topics, mode, strategy and orderliness; a join that
    /// asks for others is refused. `session_timeout_ms` 0 takes the broker's default.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct GroupJoin {
        pub group: String => Name,
        pub client_id: String => Name,
        pub host: String => Str16,
        pub topics: Vec<String> => list("topic_count", "topic", Name),
        pub mode: u8 => U8,
        pub strategy: u8 => U8,
        pub orderly: u8 => U8,
        pub session_timeout_ms: u32 => U32,
    }
}

wire_body! {
    /// GroupHeartbeat request: keeps the member's session and reports the queues it has
    /// given up (stopped fetching and committed) since the last answer told it to.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct GroupHeartbeat {
        pub group: String => Name,
        pub member_id: String => Str16,
        pub generation: u64 => U64,
        pub released: Vec<GroupQueue> => list("released_count", "released", Struct),
    }
}

wire_body! {
    /// GroupJoin and GroupHeartbeat response: the member's view of the group now. `owned`
    /// are the queues it holds and may read; `revoked` are queues it holds but must give up
    /// (stop fetching, commit, then report them released); `waiting` counts queues allotted
    /// to it that another member still holds.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct GroupAssignment {
        pub member_id: String => Str16,
        pub generation: u64 => U64,
        pub session_timeout_ms: u32 => U32,
        pub heartbeat_interval_ms: u32 => U32,
        pub owned: Vec<GroupQueue> => list("owned_count", "owned", Struct),
        pub revoked: Vec<GroupQueue> => list("revoked_count", "revoked", Struct),
        pub waiting: u32 => U32,
    }
}

wire_body! {
    /// GroupLeave request: the member has committed what it read and leaves at once.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct GroupLeave {
        pub group: String => Name,
        pub member_id: String => Str16,
    }
}

wire_body! {
    /// GroupMembers request: the live members of a group on its coordinator.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct GroupMembers {
        pub group: String => Name,
    }
}

wire_body! {
    /// One member in a GroupMembership answer.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct GroupMember {
        pub member_id: String => Str16,
        pub client_id: String => Str16,
        pub host: String => Str16,
        /// Milliseconds since the coordinator last heard from it.
        pub last_heartbeat_ms: u64 => U64,
        pub owned: Vec<GroupQueue> => list("owned_count", "owned", Struct),
    }
}

wire_body! {
    /// GroupMembers response. No members (and generation 0) when the group has no session
    /// on this broker.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct GroupMembership {
        pub group: String => Str16,
        pub generation: u64 => U64,
        pub mode: u8 => U8,
        pub strategy: u8 => U8,
        pub orderly: u8 => U8,
        pub members: Vec<GroupMember> => list("member_count", "member", Struct),
    }
}

wire_body! {
    /// GroupPull request: a member's pull, fenced by its generation, with an optional commit
    /// of the queue's next offset to consume that lands before the read. `offset` is where to
    /// read; `u64::MAX` reads from the group's committed offset (the queue's minimum when
    /// none), and the answer's `next_offset` says where that was. `max_messages` 0 only
    /// commits (answered at once, `NO_NEW_MESSAGE` with no messages).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct GroupPull {
        pub group: String => Name,
        pub member_id: String => Str16,
        pub generation: u64 => U64,
        pub topic: String => Name,
        pub queue: u32 => U32,
        pub commit: Option<u64> => Flagged { present: "commit_present" },
        pub offset: u64 => U64,
        pub max_messages: u32 => U32,
        pub max_bytes: u32 => U32,
        pub max_wait_ms: u32 => U32,
    }
}

wire_body! {
    /// MessageReject request: a consumer of `group` could not process the message at
    /// `offset` of `topic`/`queue` (an original or a retried copy). The broker reads the record
    /// itself, so the body is not sent again; the attempts so far travel on the record as the
    /// `RECONSUME_TIMES` property (see [`super::properties`]).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct MessageReject {
        pub group: String => Name,
        pub topic: String => Name,
        pub queue: u32 => U32,
        pub offset: u64 => U64,
        /// Attempts after which the message is a dead letter; 0 means the broker's
        /// `max_reconsume_times`.
        pub max_reconsume_times: u32 => U32,
    }
}

wire_body! {
    /// MessageReject response: where the copy went.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct RejectOutcome {
        /// `%RETRY%<group>` (delivered again after `delay_ms`) or `%DLQ%<group>` (a dead
        /// letter, never delivered again by the broker).
        pub topic: String => Str16,
        /// The copy's `RECONSUME_TIMES`: how many times the message has been rejected.
        pub reconsume_times: u32 => U32,
        /// The delay before the retry is delivered; 0 for a dead letter.
        pub delay_ms: u64 => U64,
    }
}

wire_body! {
    /// ClusterPromote request: the role to take, SYNC_MASTER or ASYNC_MASTER (empty:
    /// ASYNC_MASTER).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct ClusterPromote {
        pub role: String => Str16,
    }
}

wire_body! {
    /// ClusterDemote request: the HA address (`HOST:PORT`) of the master to follow.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct ClusterDemote {
        pub master: String => Str16,
    }
}

wire_body! {
    /// Ping request, with an empty body: the answer's round trip is the measurement.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Ping {}
}

wire_body! {
    /// Metadata request.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct MetadataRequest {}
}

wire_body! {
    /// TopicList request.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct TopicListRequest {}
}

wire_body! {
    /// Stats request.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct StatsRequest {}
}

wire_body! {
    /// DeleteExpired request: run every shard's retention pass now.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct DeleteExpiredRequest {}
}

wire_body! {
    /// RetentionStatus request: every shard's log head, disk use and retention state.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct RetentionStatusRequest {}
}

wire_body! {
    /// MetadataSnapshot request: a slave copying its master's topics and group offsets.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct MetadataSnapshotRequest {}
}

wire_body! {
    /// ClusterStatus request.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct ClusterStatusRequest {}
}

wire_body! {
    /// AclAdd request: one rule, each part as text the broker parses (docs/security.md,
    /// "ACLs"): `principal` (a name, `ANONYMOUS`, or `*`), `operation` (`produce`,
    /// `alter_acls`, ...), `resource` (`topic:NAME`, `topic-prefix:P`, `group:G`,
    /// `group-prefix:P` or `cluster`) and `effect` (`allow` or `deny`).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct AclAdd {
        pub principal: String => Str16,
        pub operation: String => Str16,
        pub resource: String => Str16,
        pub effect: String => Str16,
    }
}

wire_body! {
    /// AclRemove request: the rule to remove, as in [`AclAdd`].
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct AclRemove {
        pub principal: String => Str16,
        pub operation: String => Str16,
        pub resource: String => Str16,
        pub effect: String => Str16,
    }
}

wire_body! {
    /// AclList request: every rule of the broker.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct AclListRequest {}
}

/// Decodes an error response body (any status for which `Status::has_body` is false).
pub fn decode_error_message(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}
