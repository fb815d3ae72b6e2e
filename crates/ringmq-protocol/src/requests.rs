//! Which request each opcode carries and what it is answered with, declared once.
//!
//! [`for_each_request!`] holds the table: one row per opcode with its number, its name in the
//! docs, its request body, its response and, for queue-scoped requests, how to find the queue.
//! Everything that needs the list of opcodes expands that table instead of listing opcodes
//! again: the [`Opcode`] enum (through `wire_enum!`), the [`Request`] impls the client's generic
//! call uses, the broker's dispatch (`shard/handlers/mod.rs`, where an opcode without a handler
//! does not compile), the fuzz targets and the property tests. Adding an opcode is one row here,
//! its body in `message.rs` if it is new, its handler, and its entry in `docs/protocol.md`
//! (which `tests/protocol_docs.rs` checks).

use super::codec::{DecodeError, EncodeError, Fields, Reader, Writer};
use super::codes::wire_enum;
use super::message::*;
use super::Status;

/// Expands `$callback! { (args) rows }` with the request table; a row is
/// `Opcode = value => "Name": RequestType => ResponseType, "what the response is" { extras };`
/// where the extras are, in this order and when they apply: `#[fails_over]` (the request may
/// go to a slave when the master cannot be reached, see [`FailsOver`]), `queue: |r| (topic,
/// queue)` and `wait_ms: |r| millis`.
/// `args` (optional) are passed through first, for callbacks that need context.
#[macro_export]
macro_rules! for_each_request {
    ($callback:ident $(, $($args:tt)*)?) => {
        $callback! { ($($($args)*)?)
            Ping = 1 => "Ping": Ping => (), "ping response" {};
            Metadata = 2 => "Metadata": MetadataRequest => Metadata, "metadata"
                { #[fails_over] };
            Produce = 10 => "Produce": ProduceRequest<'_> => ProduceResult, "produce response"
                { queue: |r| (r.topic, r.queue) };
            Pull = 11 => "Pull": PullRequest => PullResult, "pull response"
                { #[fails_over] queue: |r| (r.topic.as_str(), r.queue),
                  wait_ms: |r| r.max_wait_ms };
            QueueStats = 12 => "QueueStats": QueueRef => QueueStats, "queue stats"
                { #[fails_over] queue: |r| (r.topic.as_str(), r.queue) };
            TopicCreate = 20 => "TopicCreate": TopicCreate => TopicInfo, "topic info" {};
            TopicDelete = 21 => "TopicDelete": TopicDelete => (), "topic delete response" {};
            TopicList = 22 => "TopicList": TopicListRequest => TopicList, "topic list"
                { #[fails_over] };
            TopicDescribe = 23 => "TopicDescribe": TopicDescribe => TopicDescription,
                "topic description" { #[fails_over] };
            GroupCommit = 30 => "GroupCommit": GroupCommit => (), "group commit response"
                { #[fails_over] queue: |r| (r.topic.as_str(), r.queue) };
            GroupFetch = 31 => "GroupFetch": GroupFetch => GroupOffset, "group offset"
                { #[fails_over] queue: |r| (r.topic.as_str(), r.queue) };
            GroupDescribe = 32 => "GroupDescribe": GroupDescribe => GroupDescription,
                "group description" {};
            GroupJoin = 33 => "GroupJoin": GroupJoin => GroupAssignment, "group assignment"
                { #[fails_over] };
            GroupHeartbeat = 34 => "GroupHeartbeat": GroupHeartbeat => GroupAssignment,
                "group assignment" { #[fails_over] };
            GroupLeave = 35 => "GroupLeave": GroupLeave => (), "group leave response"
                { #[fails_over] };
            GroupMembers = 36 => "GroupMembers": GroupMembers => GroupMembership,
                "group membership" { #[fails_over] };
            GroupPull = 37 => "GroupPull": GroupPull => PullResult, "pull response"
                { #[fails_over] queue: |r| (r.topic.as_str(), r.queue),
                  wait_ms: |r| r.max_wait_ms };
            MessageReject = 38 => "MessageReject": MessageReject => RejectResult,
                "reject outcome" { queue: |r| (r.topic.as_str(), r.queue) };
            Stats = 40 => "Stats": StatsRequest => $crate::admin::Stats, "stats" {};
            DeleteExpired = 41 => "DeleteExpired": DeleteExpiredRequest
                => $crate::admin::Retention, "retention after a cleaning pass" {};
            RetentionStatus = 42 => "RetentionStatus": RetentionStatusRequest
                => $crate::admin::Retention, "retention status" {};
            MetadataSnapshot = 60 => "MetadataSnapshot": MetadataSnapshotRequest
                => serde_json::Value, "metadata snapshot" {};
            ClusterStatus = 50 => "ClusterStatus": ClusterStatusRequest
                => $crate::admin::ClusterStatus, "cluster status" {};
            ClusterPromote = 51 => "ClusterPromote": ClusterPromote
                => $crate::admin::ClusterStatus,
                "cluster status after promotion" {};
            ClusterDemote = 52 => "ClusterDemote": ClusterDemote
                => $crate::admin::ClusterStatus,
                "cluster status after demotion" {};
            AclAdd = 64 => "AclAdd": AclAdd => (), "acl add response" {};
            AclRemove = 65 => "AclRemove": AclRemove => (), "acl remove response" {};
            AclList = 66 => "AclList": AclListRequest => $crate::admin::AclList, "acl list" {};
            BrokerRegister = 70 => "BrokerRegister": $crate::namesrv::BrokerRegister
                => $crate::namesrv::RegisterResult, "register result" {};
            BrokerUnregister = 71 => "BrokerUnregister": $crate::namesrv::BrokerUnregister
                => (), "unregister response" {};
            RouteQuery = 72 => "RouteQuery": $crate::namesrv::RouteQuery
                => $crate::namesrv::Routes, "routes" {};
            // SCRAM (security.md): last in the table, so the fuzz seeds that pick an opcode by
            // its index in `Opcode::ALL` keep meaning what they meant.
            AuthStart = 5 => "AuthStart": $crate::scram::AuthStart
                => $crate::scram::AuthAnswer, "server-first" {};
            AuthFinish = 6 => "AuthFinish": $crate::scram::AuthFinish
                => $crate::scram::AuthAnswer, "server-final" {};
            UserCreate = 61 => "UserCreate": $crate::scram::UserCreate => (),
                "user create response" {};
            UserDelete = 62 => "UserDelete": $crate::scram::UserDelete => (),
                "user delete response" {};
            UserList = 63 => "UserList": $crate::scram::UserListRequest
                => $crate::scram::UserList, "user list" {};
        }
    };
}
pub use for_each_request;

/// A request body and what answers it: the client's typed call sends any `Request` and returns
/// its `Response`. Implemented for every row of [`for_each_request!`] and nothing else.
pub trait Request {
    const OPCODE: Opcode;
    type Response: Response;
    /// Names the response body in decode errors.
    const RESPONSE_NAME: &'static str;
    fn encode_body(&self, out: &mut Vec<u8>);
    /// Whether every length fits the wire (encoding a value that does not is a bug).
    fn check_body(&self) -> Result<(), EncodeError>;
    /// The queue a queue-scoped request concerns: a shard-aware client sends it to the owner.
    fn queue(&self) -> Option<(&str, u32)> {
        None
    }
    /// For a request the broker may hold before answering (a pull's long poll), how long: the
    /// client then waits that long plus a margin.
    fn wait_ms(&self) -> Option<u32> {
        None
    }
    /// What a successful answer tells a client about topic placement: a client that caches
    /// placement to route queue-scoped requests applies it, so a topic created, described or
    /// deleted through any call routes right afterwards. Declared per opcode in
    /// `placement_of!` below.
    fn placement<'a>(&'a self, response: &'a Self::Response) -> Placement<'a> {
        let _ = response;
        Placement::Unchanged
    }
}

/// What an answer says about where topics are ([`Request::placement`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement<'a> {
    /// Nothing (most answers).
    Unchanged,
    /// The topic exists with this placement (create, describe).
    Topic(&'a TopicInfo),
    /// The topic no longer exists (delete).
    Deleted(&'a str),
    /// Every topic and the shard ports (metadata).
    Everything(&'a Metadata),
}

/// The answers that change what a client knows about placement, by opcode; every other
/// opcode keeps the default. Expanded inside each row's `Request` impl.
macro_rules! placement_of {
    (TopicCreate) => {
        fn placement<'a>(&'a self, info: &'a TopicInfo) -> Placement<'a> {
            Placement::Topic(info)
        }
    };
    (TopicDescribe) => {
        fn placement<'a>(&'a self, description: &'a TopicDescription) -> Placement<'a> {
            Placement::Topic(&description.topic)
        }
    };
    (TopicDelete) => {
        fn placement<'a>(&'a self, _: &'a ()) -> Placement<'a> {
            Placement::Deleted(&self.name)
        }
    };
    (Metadata) => {
        fn placement<'a>(&'a self, metadata: &'a Metadata) -> Placement<'a> {
            Placement::Everything(metadata)
        }
    };
    ($other:ident) => {};
}

/// A request that a consumer's failover client (`ringmq_client::FailoverClient`) may send to
/// a slave when the master cannot be reached or does not answer in time: the reads (pull,
/// queue stats, topic describe and list, metadata, group fetch) and the group commit, whose
/// offsets are the consumer's own and which a slave keeps. Anything else must not be resent
/// elsewhere after a timeout: a produce or topic change may already have happened on the
/// master (the slave would answer `NOT_MASTER`, or worse, a promotion there would make two
/// masters). Marked `#[fails_over]` in [`for_each_request!`].
pub trait FailsOver: Request {}

/// The impl a row's `#[fails_over]` stands for (any other word there does not compile).
macro_rules! marker_impl {
    (fails_over, $req:ty) => {
        impl FailsOver for $req {}
    };
}

/// A response as a client receives it: the status (one for which [`Status::has_body`] holds)
/// and the body.
pub trait Response: Sized {
    fn from_answer(status: Status, body: &[u8]) -> Result<Self, DecodeError>;
    /// The body again (the status is the caller's): what a broker would send for this value.
    /// The fuzz targets check that decoding what this writes gives the same bytes again.
    fn encode_answer(&self, out: &mut Vec<u8>);
    /// Whether a decodable body has only the encoding `encode_answer` writes (false where
    /// bytes are ignored, or for JSON, where spacing and number spelling vary).
    fn canonical() -> bool;
}

/// Responses without a body: anything the broker sends there is ignored.
impl Response for () {
    fn from_answer(_status: Status, _body: &[u8]) -> Result<Self, DecodeError> {
        Ok(())
    }
    fn encode_answer(&self, _out: &mut Vec<u8>) {}
    fn canonical() -> bool {
        false
    }
}

/// Every owned wire body answers with its own decoder.
impl<T: for<'a> Fields<'a>> Response for T {
    fn from_answer(_status: Status, body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let value = T::read_fields(&mut r)?;
        r.finish()?;
        Ok(value)
    }
    fn encode_answer(&self, out: &mut Vec<u8>) {
        self.write_fields(&mut Writer::new(out));
    }
    fn canonical() -> bool {
        <T as Fields<'_>>::canonical()
    }
}

/// Declares responses whose body is a JSON document (the admin ones: stats, cluster status,
/// the metadata snapshot), decoded with serde.
macro_rules! json_responses {
    ($($ty:ty => $what:literal),* $(,)?) => {$(
        impl Response for $ty {
            fn from_answer(_status: Status, body: &[u8]) -> Result<Self, DecodeError> {
                serde_json::from_slice(body).map_err(|_| DecodeError::Invalid {
                    field: $what,
                    reason: "not a valid JSON document",
                })
            }
            fn encode_answer(&self, out: &mut Vec<u8>) {
                serde_json::to_writer(out, self).expect("an admin document serializes");
            }
            fn canonical() -> bool {
                false
            }
        }
    )*};
}

json_responses! {
    crate::admin::Stats => "stats",
    crate::admin::ClusterStatus => "cluster status",
    crate::admin::Retention => "retention",
    crate::admin::AclList => "acl list",
    serde_json::Value => "metadata snapshot",
}

/// A produce the broker stored. `status` is `Ok` or one of the statuses that mean "stored, but
/// the durability guarantee was not met in time" (`FlushDiskTimeout`, `FlushSlaveTimeout`,
/// `SlaveNotAvailable`); callers that need the guarantee must check it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProduceResult {
    pub status: Status,
    pub response: ProduceResponse,
}

impl Response for ProduceResult {
    fn from_answer(status: Status, body: &[u8]) -> Result<Self, DecodeError> {
        let response = ProduceResponse::decode(body)?;
        Ok(ProduceResult { status, response })
    }
    fn encode_answer(&self, out: &mut Vec<u8>) {
        self.response.encode(out);
    }
    fn canonical() -> bool {
        <ProduceResponse as Fields<'_>>::canonical()
    }
}

/// A reject the broker stored a copy for. `status` is `Ok`, or one of the statuses of a copy
/// stored without its durability guarantee in time (as for [`ProduceResult`]): only `Ok`
/// promises the copy survives a crash, so only then may the consumer commit past the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectResult {
    pub status: Status,
    pub outcome: RejectOutcome,
}

impl Response for RejectResult {
    fn from_answer(status: Status, body: &[u8]) -> Result<Self, DecodeError> {
        let outcome = RejectOutcome::decode(body)?;
        Ok(RejectResult { status, outcome })
    }
    fn encode_answer(&self, out: &mut Vec<u8>) {
        self.outcome.encode(out);
    }
    fn canonical() -> bool {
        <RejectOutcome as Fields<'_>>::canonical()
    }
}

/// A pull's answer, copied out of the frame. `status` is `Ok` (messages may still be empty
/// when `max_bytes` is tiny) or `NoNewMessage`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullResult {
    pub status: Status,
    pub summary: PullSummary,
    pub messages: Vec<PulledMessage>,
}

impl Response for PullResult {
    fn from_answer(status: Status, body: &[u8]) -> Result<Self, DecodeError> {
        let response = PullResponse::decode(body)?;
        Ok(PullResult {
            status,
            summary: response.summary,
            messages: response.messages.iter().map(|m| m.to_owned()).collect(),
        })
    }
    fn encode_answer(&self, out: &mut Vec<u8>) {
        let mut encoder = PullResponseEncoder::begin(out, self.summary);
        for m in &self.messages {
            let borrowed = PulledMessageRef {
                queue_offset: m.queue_offset,
                born_timestamp_ms: m.born_timestamp_ms,
                store_timestamp_ms: m.store_timestamp_ms,
                key: &m.key,
                properties: &m.properties,
                body: &m.body,
            };
            encoder.push(out, &borrowed);
        }
        encoder.finish(out, self.summary.next_offset);
    }
    fn canonical() -> bool {
        <PullResponse<'_> as Fields<'_>>::canonical()
    }
}

/// Expands the table into the `Opcode` enum and one `Request` impl per row.
macro_rules! declare_requests {
    (()
        $( $op:ident = $value:literal => $wire:literal : $req:ty => $resp:ty, $what:literal
           { $( #[$fails_over:ident] )? $( queue: |$qr:ident| $queue:expr )?
             $(, wait_ms: |$wr:ident| $wait:expr )? }; )+
    ) => {
        wire_enum! {
            /// What a request asks for. The numeric value is the `opcode` field of the frame
            /// header.
            pub enum Opcode {
                $( $op = $value => $wire ),+
            }
        }

        $(
            impl Request for $req {
                const OPCODE: Opcode = Opcode::$op;
                type Response = $resp;
                const RESPONSE_NAME: &'static str = $what;
                fn encode_body(&self, out: &mut Vec<u8>) {
                    self.encode(out)
                }
                fn check_body(&self) -> Result<(), EncodeError> {
                    self.check()
                }
                $(
                    fn queue(&self) -> Option<(&str, u32)> {
                        let $qr = self;
                        Some($queue)
                    }
                )?
                $(
                    fn wait_ms(&self) -> Option<u32> {
                        let $wr = self;
                        Some($wait)
                    }
                )?
                placement_of!($op);
            }
            $( marker_impl!($fails_over, $req); )?
        )+
    };
}

for_each_request!(declare_requests);
