//! The Kafka APIs this listener implements, each on top of a native request.
//!
//! [`SUPPORTED`] (with [`SASL_SUPPORTED`] when SASL is on) is what ApiVersions advertises,
//! and exactly what [`handle`] accepts: a request for any other API or version gets one
//! warning (API, version, the supported range, the client id and software) and the
//! connection closes, except ApiVersions itself, which Kafka answers with
//! UNSUPPORTED_VERSION (35) in a v0 body and the list. Every request runs as its
//! connection's principal ([`Who`]), under the same ACLs as a native client's.

use super::group_api;
use super::producers::{BatchId, ProducerIds, RECOVERY_BYTES, RECOVERY_RECORDS};
use super::records::{self, StoredMessage};
use super::KafkaNode;
use crate::constants::{MAX_BYTES_PER_PULL, MAX_MESSAGES_PER_PRODUCE, MAX_MESSAGES_PER_PULL};
use crate::net::admission::InflightBudget;
use crate::protocol::message::{
    MessageRef, Metadata, PullRequest, PullResponse, QueueRef, QueueStats, TopicCreate, TopicDelete,
};
use crate::protocol::{properties, Acks, FrameHeader, Opcode, Status};
use crate::shard::handlers;
use crate::shard::mesh::Reply;
use crate::shard::Shard;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use std::rc::Rc;
use tracing::{debug, warn};

/// `(API, lowest version, highest version)` this listener serves; ApiVersions lists exactly
/// these. The caps are Kafka's versions that need nothing ringmq lacks (topic ids in Fetch 13
/// and Metadata 13's top-level error, Produce 10's leader hints, ListOffsets 7's max
/// timestamp), and cover what librdkafka 2 sends.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::InitProducerId, 0, 4),
    // Consumer groups, classic protocol (`kafka::groups`). Caps: FindCoordinator 4 batches
    // keys, JoinGroup 5 and the others' next versions carry `group.instance.id` (static
    // membership, not served), OffsetCommit 7 and OffsetFetch 8 bring member ids of the new
    // protocol and several groups per request.
    (ApiKey::FindCoordinator, 0, 3),
    (ApiKey::JoinGroup, 0, 4),
    (ApiKey::SyncGroup, 0, 2),
    (ApiKey::Heartbeat, 0, 2),
    (ApiKey::LeaveGroup, 0, 2),
    (ApiKey::OffsetCommit, 2, 6),
    (ApiKey::OffsetFetch, 1, 7),
];

/// Offered beside [`SUPPORTED`] with `authentication = "scram"` only (`super::sasl`):
/// SaslHandshake 0-1 (after v0 the exchange runs in bare frames), SaslAuthenticate 0-2.
pub const SASL_SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
];

/// Queues of a topic created by CreateTopics with `num_partitions = -1`, or on first use with
/// `kafka_auto_create_topics`: Kafka's own default (`num.partitions`).
const DEFAULT_PARTITIONS: u32 = 1;

/// What the connection writes back.
pub enum Answer {
    /// A whole size-prefixed response.
    Reply(Bytes),
    /// Nothing (a produce with acks 0).
    None,
    /// Close the connection (the reason is logged).
    Close,
    /// Write this response, then close (a failed authentication: Kafka clients read the
    /// error before the connection goes).
    ReplyThenClose(Bytes),
}

/// Per-connection state: who the client is (its address, its principal, whether it still
/// has to authenticate, [`super::sasl`]) and what it said about itself, for the warnings.
pub struct Session {
    software: Option<String>,
    pub(super) sasl: super::sasl::Sasl,
    peer: Option<std::net::SocketAddr>,
}

impl Session {
    /// A new connection from `peer`, with the principal its client certificate names (a
    /// TLS listener with client certificates), if any.
    pub fn new(
        config: &crate::config::BrokerConfig,
        peer: Option<std::net::SocketAddr>,
        principal: Option<crate::security::Principal>,
    ) -> Session {
        Session {
            software: None,
            sasl: super::sasl::Sasl::new(config, principal),
            peer,
        }
    }

    /// Whether requests beyond the SASL exchange are served.
    pub fn is_authenticated(&self) -> bool {
        self.sasl.is_authenticated()
    }

    fn who(&self) -> Who<'_> {
        Who::Client(handlers::acl::Caller {
            principal: self.sasl.principal(),
            peer: self.peer,
        })
    }
}

/// Kafka error codes used here.
pub(super) mod code {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const RECORD_LIST_TOO_LARGE: i16 = 18;
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    pub const NOT_ENOUGH_REPLICAS: i16 = 19;
    pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
    pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REQUEST: i16 = 42;
    pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const UNKNOWN_PRODUCER_ID: i16 = 59;
    pub const INVALID_RECORD: i16 = 87;
}

/// What this listener serves: [`SUPPORTED`], and [`SASL_SUPPORTED`] when SASL is on.
fn served(sasl: bool) -> impl Iterator<Item = &'static (ApiKey, i16, i16)> {
    let extra: &[(ApiKey, i16, i16)] = if sasl { SASL_SUPPORTED } else { &[] };
    SUPPORTED.iter().chain(extra)
}

fn supported(key: i16, sasl: bool) -> Option<(ApiKey, i16, i16)> {
    served(sasl).copied().find(|(k, _, _)| *k as i16 == key)
}

/// The fields of a request header that sit at fixed places in every header version from 1:
/// key, version, correlation id and the client id (a nullable i16 string).
struct RawHeader {
    key: i16,
    version: i16,
    correlation_id: i32,
    client_id: String,
}

fn raw_header(request: &[u8]) -> Option<RawHeader> {
    let key = i16::from_be_bytes(request.get(0..2)?.try_into().ok()?);
    let version = i16::from_be_bytes(request.get(2..4)?.try_into().ok()?);
    let correlation_id = i32::from_be_bytes(request.get(4..8)?.try_into().ok()?);
    let client_id = request
        .get(8..10)
        .and_then(|len| {
            let len = i16::from_be_bytes(len.try_into().ok()?);
            let len = usize::try_from(len).ok()?;
            String::from_utf8(request.get(10..10 + len)?.to_vec()).ok()
        })
        .unwrap_or_default();
    Some(RawHeader {
        key,
        version,
        correlation_id,
        client_id,
    })
}

pub async fn handle(
    shard: &Rc<Shard>,
    node: &KafkaNode,
    session: &mut Session,
    budget: &InflightBudget,
    request: Bytes,
) -> Answer {
    if session.sasl.awaits_bare_token() {
        // After a v0 handshake: a SCRAM message with no Kafka header, answered likewise.
        let users = shard.metadata().users();
        let failed = || {
            shard
                .probe()
                .add(crate::metrics::Counter::AuthenticationFailures, 1)
        };
        return match session.sasl.bare_token(&users, &request, failed) {
            Some(answer) => {
                let mut out = BytesMut::with_capacity(answer.len() + 4);
                out.put_i32(answer.len() as i32);
                out.put_slice(&answer);
                Answer::Reply(out.freeze())
            }
            None => Answer::Close,
        };
    }
    let Some(raw) = raw_header(&request) else {
        return Answer::Close;
    };
    let sasl = session.sasl.is_offered();
    let Some((api, min, max)) = supported(raw.key, sasl).filter(|(_, min, max)| {
        (*min..=*max).contains(&raw.version) || raw.key == ApiKey::ApiVersions as i16
    }) else {
        let range = supported(raw.key, sasl)
            .map(|(_, min, max)| format!("{min}-{max}"))
            .unwrap_or_else(|| "none (not implemented)".to_string());
        warn!(
            api = raw.key,
            name = ApiKey::try_from(raw.key).map(|k| format!("{k:?}")).unwrap_or_default(),
            version = raw.version,
            supported = %range,
            client_id = %raw.client_id,
            client_software = session.software.as_deref().unwrap_or("unknown"),
            "Kafka request for an API or version ringmq does not serve; closing the connection"
        );
        return Answer::Close;
    };
    if api == ApiKey::ApiVersions && !(min..=max).contains(&raw.version) {
        // Kafka's rule: an ApiVersions the broker cannot read is answered in v0 with the list,
        // so the client can retry with a version both sides know.
        let body = api_versions(code::UNSUPPORTED_VERSION, sasl);
        return encode(raw.correlation_id, 0, &body, 0);
    }
    let exchange = matches!(
        api,
        ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
    );
    if !session.is_authenticated() && !exchange {
        debug!(
            api = ?api,
            client_id = %raw.client_id,
            "a Kafka request before SASL authentication; closing the connection"
        );
        return Answer::Close;
    }
    let mut buf = request.clone();
    let header = match RequestHeader::decode(&mut buf, api.request_header_version(raw.version)) {
        Ok(header) => header,
        Err(e) => return undecodable(&raw, &e),
    };
    let version = header.request_api_version;
    let response_header = api.response_header_version(version);
    let correlation = header.correlation_id;
    let who = session.who();
    macro_rules! run {
        ($req:ty, $handler:expr) => {{
            let request = match <$req>::decode(&mut buf, version) {
                Ok(request) => request,
                Err(e) => return undecodable(&raw, &e),
            };
            if !buf.is_empty() {
                // Bytes past the request: a malformed request, and slices the answer kept
                // would pin the whole frame.
                let e = anyhow::anyhow!("{} bytes past the end of the request", buf.len());
                return undecodable(&raw, &e);
            }
            match $handler(request).await {
                Some(body) => encode(correlation, response_header, &body, version),
                None => Answer::None,
            }
        }};
    }
    match api {
        ApiKey::ApiVersions => run!(ApiVersionsRequest, |r: ApiVersionsRequest| {
            if !r.client_software_name.is_empty() {
                session.software = Some(format!(
                    "{} {}",
                    r.client_software_name.as_str(),
                    r.client_software_version.as_str()
                ));
            }
            async move { Some(api_versions(code::NONE, sasl)) }
        }),
        ApiKey::SaslHandshake => {
            let mut then = super::sasl::Then::Close;
            let answer = run!(SaslHandshakeRequest, |r: SaslHandshakeRequest| {
                let (response, next) = session.sasl.handshake(&r, version);
                then = next;
                async { Some(response) }
            });
            closing_if(answer, then)
        }
        ApiKey::SaslAuthenticate => {
            let mut then = super::sasl::Then::Close;
            let users = shard.metadata().users();
            let answer = run!(SaslAuthenticateRequest, |r: SaslAuthenticateRequest| {
                let (response, next) = session.sasl.authenticate(&users, &r, || {
                    shard
                        .probe()
                        .add(crate::metrics::Counter::AuthenticationFailures, 1)
                });
                then = next;
                async { Some(response) }
            });
            closing_if(answer, then)
        }
        ApiKey::Metadata => run!(MetadataRequest, |r| metadata(shard, who, node, r, version)),
        ApiKey::Produce => {
            let request = match ProduceRequest::decode(&mut buf, version) {
                Ok(request) => request,
                Err(e) => return undecodable(&raw, &e),
            };
            let unanswered = request.acks == 0;
            let response = produce(shard, who, node, budget, request).await;
            let failed = response
                .responses
                .iter()
                .flat_map(|t| &t.partition_responses)
                .any(|p| p.error_code != code::NONE);
            match (unanswered, failed) {
                (false, _) => encode(correlation, response_header, &response, version),
                // acks 0: the producer reads no answer (it is not even sent a response
                // frame), so a failure is told the only way Kafka has: the connection closes,
                // and the producer refreshes its metadata and reconnects.
                (true, false) => Answer::None,
                (true, true) => {
                    debug!(
                        client_id = %raw.client_id,
                        "a Kafka produce with acks 0 failed on a partition; closing the connection"
                    );
                    Answer::Close
                }
            }
        }
        ApiKey::Fetch => run!(FetchRequest, |r| fetch(shard, who, r)),
        ApiKey::ListOffsets => run!(ListOffsetsRequest, |r| list_offsets(shard, who, r)),
        ApiKey::CreateTopics => run!(CreateTopicsRequest, |r| create_topics(shard, who, r)),
        ApiKey::DeleteTopics => {
            run!(DeleteTopicsRequest, |r| delete_topics(shard, who, node, r))
        }
        ApiKey::InitProducerId => {
            run!(InitProducerIdRequest, |r| init_producer_id(
                shard, who, node, r
            ))
        }
        ApiKey::FindCoordinator => run!(FindCoordinatorRequest, |r| {
            group_api::find_coordinator(shard, node, r, version)
        }),
        ApiKey::JoinGroup => run!(JoinGroupRequest, |r| {
            group_api::join_group(shard, who, &raw.client_id, r, version)
        }),
        ApiKey::SyncGroup => run!(SyncGroupRequest, |r| group_api::sync_group(shard, who, r)),
        ApiKey::Heartbeat => run!(HeartbeatRequest, |r| group_api::heartbeat(shard, who, r)),
        ApiKey::LeaveGroup => {
            run!(LeaveGroupRequest, |r| group_api::leave_group(shard, who, r))
        }
        ApiKey::OffsetCommit => run!(OffsetCommitRequest, |r| {
            group_api::offset_commit(shard, who, r)
        }),
        ApiKey::OffsetFetch => run!(OffsetFetchRequest, |r| {
            group_api::offset_fetch(shard, who, r, version)
        }),
        _ => Answer::Close,
    }
}

fn undecodable(raw: &RawHeader, error: &anyhow::Error) -> Answer {
    warn!(
        api = raw.key,
        version = raw.version,
        client_id = %raw.client_id,
        "a Kafka request that does not decode ({error}); closing the connection"
    );
    Answer::Close
}

/// Whatever the handlers answer, encodable at the request's version.
trait Body {
    fn encode_body(&self, buf: &mut BytesMut, version: i16) -> anyhow::Result<()>;
}

impl<T: Encodable> Body for T {
    fn encode_body(&self, buf: &mut BytesMut, version: i16) -> anyhow::Result<()> {
        self.encode(buf, version)
    }
}

fn encode(correlation_id: i32, header_version: i16, body: &dyn Body, version: i16) -> Answer {
    let mut out = BytesMut::new();
    out.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let encoded = header
        .encode(&mut out, header_version)
        .and_then(|_| body.encode_body(&mut out, version));
    if let Err(e) = encoded {
        // A field set that this version lacks: a bug here, not the client's; the client sees
        // a closed connection and retries.
        warn!("encoding a Kafka response (v{version}) failed: {e}; closing the connection");
        return Answer::Close;
    }
    let len = (out.len() - 4) as i32;
    out[0..4].copy_from_slice(&len.to_be_bytes());
    Answer::Reply(out.freeze())
}

/// A SASL answer whose exchange cannot go on is the connection's last.
fn closing_if(answer: Answer, then: super::sasl::Then) -> Answer {
    match (answer, then) {
        (Answer::Reply(bytes), super::sasl::Then::Close) => Answer::ReplyThenClose(bytes),
        (answer, _) => answer,
    }
}

fn api_versions(error_code: i16, sasl: bool) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(
            served(sasl)
                .map(|(key, min, max)| {
                    api_versions_response::ApiVersion::default()
                        .with_api_key(*key as i16)
                        .with_min_version(*min)
                        .with_max_version(*max)
                })
                .collect(),
        )
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// On whose behalf a native request runs: a Kafka client (its connection's principal, under
/// the same ACLs as a native client's), or the broker itself (its own reads, such as the
/// idempotence rebuild, which no client's rights should limit).
#[derive(Clone, Copy)]
pub(crate) enum Who<'a> {
    Client(handlers::acl::Caller<'a>),
    Broker,
}

impl Who<'_> {
    /// Whether this caller may do what `needs` names (the broker may do anything).
    pub(super) fn authorize(
        self,
        shard: &Rc<Shard>,
        needs: &[crate::security::acl::Need],
    ) -> Result<(), String> {
        match self {
            Who::Client(caller) => handlers::acl::authorize_needs(shard, caller, needs),
            Who::Broker => Ok(()),
        }
    }

    fn authorize_idempotent_producer(self, shard: &Rc<Shard>) -> Result<(), String> {
        match self {
            Who::Client(caller) => handlers::acl::authorize_idempotent_producer(shard, caller),
            Who::Broker => Ok(()),
        }
    }
}

/// A native request (not a produce: see [`produce_partition`]). A client's goes through the
/// client path (`handle_client`: the same checks as a native client, broker-kept topics
/// refused); the broker's own straight to the handler.
pub(super) async fn native(
    shard: &Rc<Shard>,
    who: Who<'_>,
    opcode: Opcode,
    body: Vec<u8>,
) -> Reply {
    debug_assert_ne!(opcode, Opcode::Produce);
    let caller = match who {
        Who::Client(caller) => caller,
        Who::Broker => return handlers::handle(shard, opcode, &body).await,
    };
    handlers::handle_client(
        shard,
        FrameHeader::request(opcode, 0),
        opcode,
        &body,
        caller.principal,
        caller.peer,
    )
    .await
    // Only a produce at level `none` goes unanswered.
    .unwrap_or_else(|| Reply::error(Status::Internal, "no answer"))
}

fn message(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// The Kafka error code of a native status.
pub(super) fn error_code(status: Status) -> i16 {
    match status {
        Status::Ok | Status::NoNewMessage => code::NONE,
        Status::TopicNotFound | Status::QueueNotFound => code::UNKNOWN_TOPIC_OR_PARTITION,
        Status::OffsetOutOfRange => code::OFFSET_OUT_OF_RANGE,
        Status::MessageTooLarge => code::MESSAGE_TOO_LARGE,
        Status::NotMaster => code::NOT_LEADER_OR_FOLLOWER,
        Status::FlushDiskTimeout | Status::SystemBusy => code::REQUEST_TIMED_OUT,
        // Stored, but not on enough slaves in time.
        Status::FlushSlaveTimeout | Status::SlaveNotAvailable => {
            code::NOT_ENOUGH_REPLICAS_AFTER_APPEND
        }
        // Not stored: too few in-sync replicas (the controller round's answer).
        Status::InSyncReplicasNotEnough => code::NOT_ENOUGH_REPLICAS,
        Status::TopicExists => code::TOPIC_ALREADY_EXISTS,
        Status::InvalidName => code::INVALID_TOPIC_EXCEPTION,
        Status::DiskFull | Status::StoreError => code::KAFKA_STORAGE_ERROR,
        Status::NotAuthorized => code::TOPIC_AUTHORIZATION_FAILED,
        _ => code::UNKNOWN_SERVER_ERROR,
    }
}

/// The broker's topics (name → queue count), from the native Metadata.
async fn topics(shard: &Rc<Shard>, who: Who<'_>) -> Vec<(String, u32, u32)> {
    let reply = native(shard, who, Opcode::Metadata, Vec::new()).await;
    match Metadata::decode(&reply.body) {
        Ok(metadata) if reply.status == Status::Ok => metadata
            .topics
            .into_iter()
            .map(|t| {
                let count = t.queue_count();
                (t.name, t.topic_id, count)
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// A stable Kafka topic id from ringmq's (never reused) topic id.
fn topic_uuid(topic_id: u32) -> uuid::Uuid {
    uuid::Uuid::from_u64_pair(0x7269_6e67_6d71_0000, u64::from(topic_id))
}

async fn create_topic(shard: &Rc<Shard>, who: Who<'_>, topic: &str, partitions: u32) -> Reply {
    let mut body = Vec::new();
    TopicCreate {
        name: topic.to_string(),
        queue_count: partitions,
    }
    .encode(&mut body);
    native(shard, who, Opcode::TopicCreate, body).await
}

async fn metadata(
    shard: &Rc<Shard>,
    who: Who<'_>,
    node: &KafkaNode,
    request: MetadataRequest,
    version: i16,
) -> Option<MetadataResponse> {
    let mut known = topics(shard, who).await;
    // Version 0 has no "all topics" null: an empty list means all there.
    let wanted: Option<Vec<String>> = match request.topics {
        Some(list) if !(version == 0 && list.is_empty()) => Some(
            list.into_iter()
                .filter_map(|t| t.name.map(|n| n.0.to_string()))
                .collect(),
        ),
        _ => None,
    };
    // Auto-create asks for it twice: the broker's switch and the request's (from v4).
    let may_create = node.auto_create_topics && (version < 4 || request.allow_auto_topic_creation);
    if let (Some(wanted), true) = (&wanted, may_create) {
        let mut created = false;
        for topic in wanted {
            if !known.iter().any(|(n, _, _)| n == topic) {
                created |= create_topic(shard, who, topic, DEFAULT_PARTITIONS)
                    .await
                    .status
                    == Status::Ok;
            }
        }
        if created {
            known = topics(shard, who).await;
        }
    }
    let broker = metadata_response::MetadataResponseBroker::default()
        .with_node_id(BrokerId(node.node_id))
        .with_host(StrBytes::from_string(node.advertised_host.clone()))
        .with_port(node.advertised_port);
    // A slave is no partition's leader: its partitions say so (NOT_LEADER_OR_FOLLOWER), so a
    // client looks for the master instead of producing here and failing per batch.
    let partition_error = if shard.is_master() {
        code::NONE
    } else {
        code::NOT_LEADER_OR_FOLLOWER
    };
    let describe = |topic: &str, topic_id: u32, count: u32| {
        metadata_response::MetadataResponseTopic::default()
            .with_name(Some(name(topic)))
            .with_topic_id(if version >= 10 {
                topic_uuid(topic_id)
            } else {
                uuid::Uuid::nil()
            })
            .with_partitions(
                (0..count)
                    .map(|p| {
                        metadata_response::MetadataResponsePartition::default()
                            .with_error_code(partition_error)
                            .with_partition_index(p as i32)
                            .with_leader_id(BrokerId(node.node_id))
                            .with_leader_epoch(if version >= 7 { 0 } else { -1 })
                            .with_replica_nodes(vec![BrokerId(node.node_id)])
                            .with_isr_nodes(vec![BrokerId(node.node_id)])
                    })
                    .collect(),
            )
    };
    let topics = match wanted {
        None => known
            .iter()
            .filter(|(n, _, _)| !crate::shard::topics::is_internal_name(n))
            .map(|(n, id, count)| describe(n, *id, *count))
            .collect(),
        Some(wanted) => wanted
            .iter()
            .map(|topic| match known.iter().find(|(n, _, _)| n == topic) {
                Some((n, id, count)) => describe(n, *id, *count),
                None => metadata_response::MetadataResponseTopic::default()
                    .with_name(Some(name(topic)))
                    .with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION),
            })
            .collect(),
    };
    let mut response = MetadataResponse::default()
        .with_brokers(vec![broker])
        .with_topics(topics);
    if version >= 1 {
        response = response.with_controller_id(BrokerId(node.node_id));
    }
    if version >= 2 {
        response = response.with_cluster_id(Some(StrBytes::from_string(format!(
            "ringmq-{}",
            shard.config().broker_name
        ))));
    }
    Some(response)
}

/// One partition's produce outcome.
fn partition_produced(
    index: i32,
    error: i16,
    base_offset: i64,
    message: Option<String>,
) -> produce_response::PartitionProduceResponse {
    produce_response::PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(error)
        .with_base_offset(base_offset)
        .with_error_message(message.map(StrBytes::from_string))
}

async fn produce(
    shard: &Rc<Shard>,
    who: Who<'_>,
    node: &KafkaNode,
    budget: &InflightBudget,
    request: ProduceRequest,
) -> ProduceResponse {
    // Kafka's acks onto the broker's levels: 0 none, 1 leader (the flush mode on this
    // broker), -1 ("all") the broker's default level, what a native request naming none gets
    // (`default_acks`, else the role's: a SYNC_MASTER waits for its slave, an ASYNC_MASTER
    // for its flush). Kafka's "all" means every in-sync replica, and an ASYNC_MASTER keeps
    // none in sync: mapped to ringmq's `all`, a lone ASYNC_MASTER would wait for a slave it
    // does not have and answer 20 to every produce, which producers retry without end. Each
    // is raised to `min_acks`; anything else is refused per partition.
    let acks: Option<Option<Acks>> = match request.acks {
        0 => Some(Some(Acks::None)),
        1 => Some(Some(Acks::Leader)),
        -1 => Some(None),
        _ => None,
    };
    let transactional = request
        .transactional_id
        .as_ref()
        .is_some_and(|id| !id.0.is_empty());
    let mut responses = Vec::with_capacity(request.topic_data.len());
    for topic in request.topic_data {
        let topic_name = topic.name.0.to_string();
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for partition in topic.partition_data {
            let index = partition.index;
            let outcome = if acks.is_none() {
                partition_produced(
                    index,
                    code::INVALID_REQUIRED_ACKS,
                    -1,
                    Some(format!("acks {} is not 0, 1 or -1", request.acks)),
                )
            } else if transactional {
                partition_produced(
                    index,
                    code::UNSUPPORTED_FOR_MESSAGE_FORMAT,
                    -1,
                    Some("transactional producers are not supported by ringmq".to_string()),
                )
            } else {
                let acks = acks.flatten();
                produce_partition(shard, who, node, &topic_name, partition, acks, budget).await
            };
            partitions.push(outcome);
        }
        responses.push(
            produce_response::TopicProduceResponse::default()
                .with_name(topic.name)
                .with_partition_responses(partitions),
        );
    }
    ProduceResponse::default().with_responses(responses)
}

async fn produce_partition(
    shard: &Rc<Shard>,
    who: Who<'_>,
    node: &KafkaNode,
    topic: &str,
    partition: produce_request::PartitionProduceData,
    acks: Option<Acks>,
    budget: &InflightBudget,
) -> produce_response::PartitionProduceResponse {
    let (index, records) = (partition.index, partition.records);
    let Ok(queue) = u32::try_from(index) else {
        return partition_produced(index, code::UNKNOWN_TOPIC_OR_PARTITION, -1, None);
    };
    // As for a native client (`handlers::handle_client`): the broker's own topics are read,
    // never written, by clients.
    if crate::shard::topics::is_internal_name(topic) {
        return partition_produced(
            index,
            code::INVALID_TOPIC_EXCEPTION,
            -1,
            Some(format!(
                "`{topic}` is kept by the broker: clients read it but do not write it"
            )),
        );
    }
    // The same decision as a native produce (`handlers::acl::authorize`).
    let need = [crate::security::acl::Need::topic(
        crate::security::acl::Operation::Produce,
        topic,
    )];
    if let Err(refused) = who.authorize(shard, &need) {
        return partition_produced(index, code::TOPIC_AUTHORIZATION_FAILED, -1, Some(refused));
    }
    if shard.topic(topic).is_none() {
        let created = node.auto_create_topics
            && create_topic(shard, who, topic, DEFAULT_PARTITIONS)
                .await
                .status
                == Status::Ok;
        if !created {
            return partition_produced(
                index,
                code::UNKNOWN_TOPIC_OR_PARTITION,
                -1,
                Some(format!(
                    "topic `{topic}` does not exist (kafka_auto_create_topics is off)"
                )),
            );
        }
    }
    let records = records.unwrap_or_default();
    // A compressed batch decompresses to at most max_frame_bytes (the most a native produce
    // carries), and that room is reserved from the shard's in-flight budget first, as the
    // compressed bytes were: decompressed records held by requests count like received ones.
    let limit = shard.config().max_frame_bytes as usize;
    let _decompressed = if records::is_compressed(&records) {
        match budget.reserve(limit as u64).await {
            Some(permit) => Some(permit),
            None => {
                return partition_produced(
                    index,
                    code::REQUEST_TIMED_OUT,
                    -1,
                    Some("no room in the shard's in-flight budget to decompress".to_string()),
                )
            }
        }
    } else {
        None
    };
    let batches = match records::decode_record_set(&records, shard.clock().unix_ms(), limit) {
        Ok(batches) => batches,
        Err(e) => {
            let code = match e {
                records::BatchError::Transactional => code::UNSUPPORTED_FOR_MESSAGE_FORMAT,
                records::BatchError::TooLarge(_) => code::RECORD_LIST_TOO_LARGE,
                records::BatchError::SeveralBatches(_) => code::INVALID_RECORD,
                records::BatchError::TooManyHeaders(_) => code::INVALID_RECORD,
                records::BatchError::HeadersTooLarge(_) => code::MESSAGE_TOO_LARGE,
                records::BatchError::Corrupt(_) => code::CORRUPT_MESSAGE,
            };
            return partition_produced(index, code, -1, Some(e.to_string()));
        }
    };
    if batches
        .iter()
        .flat_map(|b| &b.messages)
        .any(|m| properties::get(&m.properties, properties::KAFKA_PRODUCER).is_some())
    {
        return partition_produced(
            index,
            code::INVALID_RECORD,
            -1,
            Some(format!(
                "the header {} is the broker's own (it marks an idempotent batch)",
                properties::KAFKA_PRODUCER
            )),
        );
    }
    let mut first_offset = None;
    for batch in batches {
        let p = batch.producer;
        // The windows come from the store once per partition and log epoch (a restart and
        // a promotion each open one): the batches found in its stored tail, so a producer
        // id handed out by an earlier run or another master is known with its batches.
        let epoch = shard.role_state().last_epoch();
        if p.producer_id >= 0
            && shard.is_master()
            && !node.windows.is_recovered(topic, queue, epoch)
        {
            recover_windows(shard, node, topic, queue, epoch).await;
        }
        // Only ids this broker handed out, or found in the partition's tail, or a first batch
        // (sequence 0) of an id another run or broker handed out, get a window: any other
        // would make the windows grow with whatever ids clients invent. A slave
        // answers NOT_LEADER_OR_FOLLOWER below instead, so that a producer with stale
        // metadata finds the master rather than giving up its id (and its retries' dedup).
        if p.producer_id >= 0
            && shard.is_master()
            && !node.producer_ids.issued(p.producer_id)
            && !node.windows.knows(topic, queue, p.producer_id)
            && !(p.base_sequence == 0
                && ProducerIds::could_have_issued(p.producer_id, shard.clock().unix_ms()))
        {
            return partition_produced(
                index,
                code::UNKNOWN_PRODUCER_ID,
                -1,
                Some(format!(
                    "producer id {} was not handed out by this broker (InitProducerId), none of \
                     its batches is among this partition's last {RECOVERY_RECORDS} messages, and \
                     this batch (sequence {}) is not the first of an id a broker hands out",
                    p.producer_id, p.base_sequence
                )),
            );
        }
        let id = BatchId {
            producer_id: p.producer_id,
            epoch: p.producer_epoch,
            base_sequence: p.base_sequence,
            record_count: batch.messages.len() as u32,
        };
        if let Some(dup) = node.windows.duplicate_of(topic, queue, id) {
            if let Some(status) = dup.failed {
                // The first copy was stored but its guarantee missed: the retry is answered
                // success only once the guarantee is seen to hold, never at once. The readable
                // end covers the flush and a SYNC_MASTER's slaves; an ASYNC_MASTER's slaves
                // (level all) it does not, so there the original error stands.
                let end = readable_end(shard, Who::Broker, topic, queue).await;
                let covered = status == Status::FlushDiskTimeout
                    || shard.role() == crate::config::BrokerRole::SyncMaster;
                let last = dup.base_offset + u64::from(id.record_count);
                if covered && end.is_some_and(|end| end >= last) {
                    node.windows.confirmed(topic, queue, id);
                } else {
                    return partition_produced(
                        index,
                        error_code(status),
                        dup.base_offset as i64,
                        Some(format!("stored, but {status} (a retry of that batch)")),
                    );
                }
            }
            first_offset.get_or_insert(dup.base_offset);
            continue;
        }
        // Sequence continuity (Kafka's rule): a batch that is not a retry must follow the
        // newest one its producer stored here, or a batch in between was lost.
        if p.producer_id >= 0 {
            let expected =
                node.windows
                    .next_sequence(topic, queue, p.producer_id, p.producer_epoch);
            if let Some(expected) = expected.filter(|e| *e != p.base_sequence) {
                return partition_produced(
                    index,
                    code::OUT_OF_ORDER_SEQUENCE_NUMBER,
                    -1,
                    Some(format!(
                        "base sequence {} where {expected} comes next",
                        p.base_sequence
                    )),
                );
            }
        }
        if batch.messages.is_empty() {
            continue;
        }
        if batch.messages.len() > MAX_MESSAGES_PER_PRODUCE {
            return partition_produced(
                index,
                code::RECORD_LIST_TOO_LARGE,
                -1,
                Some(format!(
                    "more than {MAX_MESSAGES_PER_PRODUCE} records in one batch"
                )),
            );
        }
        // The first message of an idempotent batch names it, for the windows of a later run.
        let marked = (p.producer_id >= 0).then(|| {
            properties::with(
                &batch.messages[0].properties,
                &[(properties::KAFKA_PRODUCER, id.property())],
            )
        });
        let messages: Vec<MessageRef> = batch
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| MessageRef {
                born_timestamp_ms: m.born_timestamp_ms,
                key: &m.key,
                properties: match (&marked, i) {
                    (Some(marked), 0) => marked,
                    _ => &m.properties,
                },
                body: &m.body,
            })
            .collect();
        // The one produce path both listeners take, at the level the Kafka request names
        // (`None`: the broker's default; raised to `min_acks`); whether to answer follows the Kafka request's acks, since a
        // Kafka producer with acks 0 reads no answer even when the broker waited longer.
        let produced = handlers::produce::produce(shard, topic, queue, &messages, acks).await;
        let reply = &produced.reply;
        let Some(stored) = produced.response() else {
            return partition_produced(index, error_code(reply.status), -1, Some(message(reply)));
        };
        node.windows.stored(
            topic,
            queue,
            id,
            stored.base_offset,
            (reply.status != Status::Ok).then_some(reply.status),
            shard.clock().unix_ms(),
        );
        first_offset.get_or_insert(stored.base_offset);
        if reply.status != Status::Ok {
            return partition_produced(
                index,
                error_code(reply.status),
                stored.base_offset as i64,
                Some(format!("stored, but {}", reply.status)),
            );
        }
    }
    partition_produced(
        index,
        code::NONE,
        first_offset.map_or(-1, |o| o as i64),
        None,
    )
}

/// Reads the last [`RECOVERY_RECORDS`] messages of a partition (at most [`RECOVERY_BYTES`]
/// of answers) and remembers the idempotent batches their `KAFKA_PRODUCER` properties name
/// ([`producers::Windows::recovered`]), in log epoch `epoch` (the windows of an earlier epoch
/// are dropped first: another master may have stored batches since). Only what consumers may
/// read is seen: a batch stored but not yet confirmed (a restarted SYNC_MASTER before its
/// slave caught up) is not, and its retry is stored again, as the retry of a batch that
/// missed its guarantee may be. A read that fails leaves the partition unmarked, so the next
/// produce tries again.
async fn recover_windows(shard: &Rc<Shard>, node: &KafkaNode, topic: &str, queue: u32, epoch: u32) {
    node.windows.begin_recovery(topic, queue, epoch);
    let Ok(stats) = queue_stats(shard, Who::Broker, topic, queue).await else {
        return;
    };
    let started = shard.clock().now();
    let mut offset = stats
        .max_offset
        .saturating_sub(RECOVERY_RECORDS)
        .max(stats.min_offset);
    let mut found = Vec::new();
    let mut read = 0usize;
    while offset < stats.max_offset && read < RECOVERY_BYTES {
        let reply = pull(
            shard,
            Who::Broker,
            topic,
            queue,
            offset,
            MAX_BYTES_PER_PULL,
            0,
        )
        .await;
        if reply.status != Status::Ok {
            warn!(
                topic,
                queue,
                offset,
                status = %reply.status,
                "reading a partition's tail for its idempotent producers failed; the next \
                 produce tries again"
            );
            return;
        }
        let Ok(pulled) = PullResponse::decode(&reply.body) else {
            return;
        };
        let Some(last) = pulled.messages.last() else {
            break;
        };
        let next = last.queue_offset + 1;
        for m in &pulled.messages {
            if let Some(batch) = properties::get(m.properties, properties::KAFKA_PRODUCER)
                .and_then(BatchId::parse_property)
            {
                found.push((batch, m.queue_offset));
            }
        }
        read += reply.body.len();
        offset = next;
    }
    node.windows
        .recovered(topic, queue, &found, epoch, shard.clock().unix_ms());
    debug!(
        topic,
        queue,
        batches = found.len(),
        read_bytes = read,
        took_ms = (shard.clock().now() - started).as_millis() as u64,
        "rebuilt the idempotent producers' windows of a partition from its stored tail"
    );
}

/// One partition's pull, as the native consumer would send it.
async fn pull(
    shard: &Rc<Shard>,
    who: Who<'_>,
    topic: &str,
    queue: u32,
    offset: u64,
    max_bytes: u32,
    wait_ms: u32,
) -> Reply {
    let mut body = Vec::new();
    PullRequest {
        topic: topic.to_string(),
        queue,
        offset,
        max_messages: MAX_MESSAGES_PER_PULL,
        max_bytes: max_bytes.clamp(1, MAX_BYTES_PER_PULL),
        max_wait_ms: wait_ms,
    }
    .encode(&mut body);
    native(shard, who, Opcode::Pull, body).await
}

/// What a fetch partition is: its topic, queue, offset, byte limit.
struct Wanted {
    topic: String,
    partition: i32,
    offset: i64,
    max_bytes: i32,
}

/// Partitions of one fetch that wait at once in a long poll: each wait is a native pull
/// parked at the end of its queue, so a request naming thousands of partitions would park
/// thousands. The rest are read again when the poll ends, as every partition is.
const MAX_LONG_POLL_PARTITIONS: usize = 256;

async fn fetch(shard: &Rc<Shard>, who: Who<'_>, request: FetchRequest) -> Option<FetchResponse> {
    // A partition named twice is read and answered once.
    let mut seen = std::collections::HashSet::new();
    let wanted: Vec<Wanted> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| Wanted {
                topic: t.topic.0.to_string(),
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes,
            })
        })
        .filter(|w| seen.insert((w.topic.clone(), w.partition)))
        .collect();
    let mut answers = fetch_once(shard, who, &wanted, request.max_bytes).await;
    let got: usize = answers
        .iter()
        .map(|a| a.records.as_ref().map_or(0, |r| r.len()))
        .sum();
    let min_bytes = usize::try_from(request.min_bytes.max(1)).unwrap_or(1);
    if got < min_bytes && request.max_wait_ms > 0 && !wanted.is_empty() {
        // Long poll: the native pull waits at the end of every queue asked for at once, until
        // the first one has something or the wait is over; then everything is read again.
        let wait = request.max_wait_ms as u32;
        // Partitions that answered an error are not waited on: they would answer at once.
        let waits: Vec<_> = wanted
            .iter()
            .zip(&answers)
            .filter(|(w, answer)| w.offset >= 0 && answer.error_code == code::NONE)
            .map(|(w, _)| w)
            .take(MAX_LONG_POLL_PARTITIONS)
            .map(|w| {
                Box::pin(pull(
                    shard,
                    who,
                    &w.topic,
                    w.partition.max(0) as u32,
                    w.offset as u64,
                    1,
                    wait,
                ))
            })
            .collect();
        if !waits.is_empty() {
            first_of(waits).await;
            answers = fetch_once(shard, who, &wanted, request.max_bytes).await;
        }
    }
    let mut topics: Vec<fetch_response::FetchableTopicResponse> = Vec::new();
    for (w, answer) in wanted.iter().zip(answers) {
        match topics.last_mut() {
            Some(t) if t.topic.0.as_str() == w.topic => t.partitions.push(answer),
            _ => topics.push(
                fetch_response::FetchableTopicResponse::default()
                    .with_topic(name(&w.topic))
                    .with_partitions(vec![answer]),
            ),
        }
    }
    Some(FetchResponse::default().with_responses(topics))
}

/// Resolves when the first of `futures` does.
async fn first_of<F: std::future::Future + Unpin>(mut futures: Vec<F>) {
    std::future::poll_fn(|cx| {
        for f in futures.iter_mut() {
            if std::pin::Pin::new(f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

async fn fetch_once(
    shard: &Rc<Shard>,
    who: Who<'_>,
    wanted: &[Wanted],
    max_bytes: i32,
) -> Vec<fetch_response::PartitionData> {
    let mut left = usize::try_from(max_bytes).unwrap_or(0);
    // Kafka's rule: the first partition with records gets at least one record even past
    // max_bytes (so a large record never blocks a consumer); every later one only what
    // still fits, and once max_bytes is spent, no records and its watermarks.
    let mut oversized_allowed = true;
    let mut out = Vec::with_capacity(wanted.len());
    for w in wanted {
        let partition = fetch_response::PartitionData::default().with_partition_index(w.partition);
        let (Ok(queue), Ok(offset)) = (u32::try_from(w.partition), u64::try_from(w.offset)) else {
            out.push(partition.with_error_code(code::OFFSET_OUT_OF_RANGE));
            continue;
        };
        let wanted_bytes = usize::try_from(w.max_bytes).unwrap_or(0);
        let limit = if oversized_allowed {
            wanted_bytes.min(left.max(1)).max(1)
        } else {
            wanted_bytes.min(left)
        };
        if limit == 0 {
            out.push(watermarks(shard, who, partition, &w.topic, queue).await);
            continue;
        }
        let reply = pull(shard, who, &w.topic, queue, offset, limit as u32, 0).await;
        let data = partition_data(partition, &reply, !oversized_allowed, &mut left);
        if data.records.as_ref().is_some_and(|r| !r.is_empty()) {
            oversized_allowed = false;
        }
        out.push(data);
    }
    out
}

/// A queue's range as the native `QueueStats` answers it, or the status it failed with.
async fn queue_stats(
    shard: &Rc<Shard>,
    who: Who<'_>,
    topic: &str,
    queue: u32,
) -> Result<QueueStats, Status> {
    let mut body = Vec::new();
    QueueRef {
        topic: topic.to_string(),
        queue,
    }
    .encode(&mut body);
    let reply = native(shard, who, Opcode::QueueStats, body).await;
    match (reply.status, QueueStats::decode(&reply.body)) {
        (Status::Ok, Ok(stats)) => Ok(stats),
        (Status::Ok, Err(_)) => Err(Status::Internal),
        (status, _) => Err(status),
    }
}

/// The end of a queue consumers may read (`None`: unknown).
async fn readable_end(shard: &Rc<Shard>, who: Who<'_>, topic: &str, queue: u32) -> Option<u64> {
    queue_stats(shard, who, topic, queue)
        .await
        .ok()
        .map(|stats| stats.max_offset)
}

/// A partition answered without records: its watermarks (or its error).
async fn watermarks(
    shard: &Rc<Shard>,
    who: Who<'_>,
    partition: fetch_response::PartitionData,
    topic: &str,
    queue: u32,
) -> fetch_response::PartitionData {
    match queue_stats(shard, who, topic, queue).await {
        Ok(stats) => partition
            .with_high_watermark(stats.max_offset as i64)
            .with_last_stable_offset(stats.max_offset as i64)
            .with_log_start_offset(stats.min_offset as i64)
            .with_records(Some(Bytes::new())),
        Err(status) => partition.with_error_code(error_code(status)),
    }
}

/// `strict`: records past `left` are left out (the pull returns its first message whatever
/// its size), so only the first partition with records may exceed the request's max_bytes.
fn partition_data(
    partition: fetch_response::PartitionData,
    reply: &Reply,
    strict: bool,
    left: &mut usize,
) -> fetch_response::PartitionData {
    if !reply.status.has_body() {
        let mut partition = partition.with_error_code(error_code(reply.status));
        if reply.status == Status::OffsetOutOfRange {
            partition = partition.with_high_watermark(-1);
        }
        return partition;
    }
    let Ok(pulled) = PullResponse::decode(&reply.body) else {
        return partition.with_error_code(code::UNKNOWN_SERVER_ERROR);
    };
    let stored: Vec<StoredMessage> = pulled
        .messages
        .iter()
        .map(|m| StoredMessage {
            offset: m.queue_offset,
            born_timestamp_ms: if m.born_timestamp_ms == 0 {
                m.store_timestamp_ms
            } else {
                m.born_timestamp_ms
            },
            key: m.key,
            properties: m.properties,
            body: m.body,
        })
        .collect();
    let records = match records::encode_batch(&stored) {
        Ok(records) if strict && records.len() > *left => Bytes::new(),
        Ok(records) => records,
        Err(_) => return partition.with_error_code(code::UNKNOWN_SERVER_ERROR),
    };
    *left = left.saturating_sub(records.len());
    partition
        .with_high_watermark(pulled.summary.max_offset as i64)
        .with_last_stable_offset(pulled.summary.max_offset as i64)
        .with_log_start_offset(pulled.summary.min_offset as i64)
        .with_records(Some(records))
}

/// Kafka's ListOffsets timestamps for the ends of a partition.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

async fn list_offsets(
    shard: &Rc<Shard>,
    who: Who<'_>,
    request: ListOffsetsRequest,
) -> Option<ListOffsetsResponse> {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let topic_name = topic.name.0.to_string();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let answer = list_offsets_response::ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1)
                .with_offset(-1);
            let Ok(queue) = u32::try_from(p.partition_index) else {
                partitions.push(answer.with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION));
                continue;
            };
            let stats = match queue_stats(shard, who, &topic_name, queue).await {
                Ok(stats) => stats,
                Err(status) => {
                    partitions.push(answer.with_error_code(error_code(status)));
                    continue;
                }
            };
            let answer = match p.timestamp {
                LATEST => answer.with_offset(stats.max_offset as i64),
                EARLIEST => answer.with_offset(stats.min_offset as i64),
                timestamp => {
                    match by_timestamp(shard, who, &topic_name, queue, stats, timestamp).await {
                        Ok((offset, found)) => answer.with_offset(offset).with_timestamp(found),
                        Err(code) => answer.with_error_code(code),
                    }
                }
            };
            partitions.push(answer);
        }
        topics.push(
            list_offsets_response::ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    Some(ListOffsetsResponse::default().with_topics(topics))
}

/// The first offset whose store timestamp is at least `timestamp`, by a binary search over
/// the queue (store timestamps grow with the offset; a record's own CreateTime need not):
/// one single-message pull per step, so about 2 log2(n) reads. `(-1, -1)` when every record
/// is older, as Kafka answers.
async fn by_timestamp(
    shard: &Rc<Shard>,
    who: Who<'_>,
    topic: &str,
    queue: u32,
    stats: QueueStats,
    timestamp: i64,
) -> Result<(i64, i64), i16> {
    if timestamp < 0 {
        return Err(code::INVALID_REQUEST);
    }
    let stamp_at = |offset: u64| async move {
        let reply = pull(shard, who, topic, queue, offset, 1, 0).await;
        if reply.status != Status::Ok {
            return Err(error_code(reply.status));
        }
        let pulled = PullResponse::decode(&reply.body).map_err(|_| code::UNKNOWN_SERVER_ERROR)?;
        pulled
            .messages
            .first()
            .map(|m| m.store_timestamp_ms as i64)
            .ok_or(code::OFFSET_OUT_OF_RANGE)
    };
    let (mut low, mut high) = (stats.min_offset, stats.max_offset);
    while low < high {
        let mid = low + (high - low) / 2;
        if stamp_at(mid).await? < timestamp {
            low = mid + 1;
        } else {
            high = mid;
        }
    }
    if low >= stats.max_offset {
        return Ok((-1, -1));
    }
    Ok((low as i64, stamp_at(low).await?))
}

async fn create_topics(
    shard: &Rc<Shard>,
    who: Who<'_>,
    request: CreateTopicsRequest,
) -> Option<CreateTopicsResponse> {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let topic_name = topic.name.0.to_string();
        let result =
            create_topics_response::CreatableTopicResult::default().with_name(topic.name.clone());
        let partitions = match topic.num_partitions {
            -1 => DEFAULT_PARTITIONS,
            n if n > 0 => n as u32,
            n => {
                results.push(
                    result
                        .with_error_code(code::INVALID_PARTITIONS)
                        .with_error_message(Some(StrBytes::from_string(format!("{n} partitions")))),
                );
                continue;
            }
        };
        let result = if request.validate_only {
            // The real create's checks, in its order, without applying the table it builds:
            // authorization first, as `handle_client` decides a create before it runs.
            let need = [crate::security::acl::Need::topic(
                crate::security::acl::Operation::Create,
                topic_name.as_str(),
            )];
            let authorized = who.authorize(shard, &need);
            let checked = if let Err(refused) = authorized {
                Err((code::TOPIC_AUTHORIZATION_FAILED, refused))
            } else if !shard.is_master() {
                Err((
                    code::NOT_LEADER_OR_FOLLOWER,
                    "topics are changed on the master".into(),
                ))
            } else if shard.topic_table().topics.contains_key(&topic_name) {
                Err((code::TOPIC_ALREADY_EXISTS, format!("`{topic_name}` exists")))
            } else {
                shard
                    .topic_table()
                    .with_topic(&topic_name, partitions, shard.shard_count())
                    .map(|_| ())
                    .map_err(|e| (code::INVALID_TOPIC_EXCEPTION, e.to_string()))
            };
            match checked {
                Ok(()) => result
                    .with_num_partitions(partitions as i32)
                    .with_replication_factor(1),
                Err((code, message)) => result
                    .with_error_code(code)
                    .with_error_message(Some(StrBytes::from_string(message))),
            }
        } else {
            let reply = create_topic(shard, who, &topic_name, partitions).await;
            if reply.status == Status::Ok {
                result
                    .with_num_partitions(partitions as i32)
                    .with_replication_factor(1)
            } else {
                result
                    .with_error_code(error_code(reply.status))
                    .with_error_message(Some(StrBytes::from_string(message(&reply))))
            }
        };
        results.push(result);
    }
    Some(CreateTopicsResponse::default().with_topics(results))
}

async fn delete_topics(
    shard: &Rc<Shard>,
    who: Who<'_>,
    node: &KafkaNode,
    request: DeleteTopicsRequest,
) -> Option<DeleteTopicsResponse> {
    let mut responses = Vec::with_capacity(request.topic_names.len());
    for topic in request.topic_names {
        let topic_name = topic.0.to_string();
        let mut body = Vec::new();
        TopicDelete {
            name: topic_name.clone(),
        }
        .encode(&mut body);
        let reply = native(shard, who, Opcode::TopicDelete, body).await;
        if reply.status == Status::Ok {
            node.windows.forget_topic(&topic_name);
        }
        responses.push(
            delete_topics_response::DeletableTopicResult::default()
                .with_name(Some(topic))
                .with_error_code(error_code(reply.status)),
        );
    }
    Some(DeleteTopicsResponse::default().with_responses(responses))
}

async fn init_producer_id(
    shard: &Rc<Shard>,
    who: Who<'_>,
    node: &KafkaNode,
    request: InitProducerIdRequest,
) -> Option<InitProducerIdResponse> {
    // Kafka asks IdempotentWrite on the cluster or WRITE on some topic (KIP-679); ringmq's
    // rule is the second (`handlers::acl::authorize_idempotent_producer`).
    if let Err(refused) = who.authorize_idempotent_producer(shard) {
        debug!("InitProducerId refused: {refused}");
        return Some(
            InitProducerIdResponse::default()
                .with_error_code(code::CLUSTER_AUTHORIZATION_FAILED)
                .with_producer_id(ProducerId(-1)),
        );
    }
    // A null transactional id (an empty one read as null too) asks for an idempotent producer.
    if request
        .transactional_id
        .as_ref()
        .is_some_and(|id| !id.0.is_empty())
    {
        warn!("InitProducerId with a transactional id: ringmq has no transactions");
        return Some(
            InitProducerIdResponse::default()
                .with_error_code(code::UNSUPPORTED_FOR_MESSAGE_FORMAT)
                .with_producer_id(ProducerId(-1)),
        );
    }
    Some(
        InitProducerIdResponse::default()
            .with_producer_id(ProducerId(node.producer_ids.next()))
            .with_producer_epoch(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// ApiVersions lists exactly the table, and every cap is one the crate can encode.
    #[test]
    fn every_advertised_version_is_one_the_codecs_know() {
        for (key, min, max) in served(true) {
            let known = key.valid_versions();
            assert!(
                known.min <= *min && *max <= known.max,
                "{key:?} {min}-{max} vs {known}"
            );
        }
        let body = api_versions(code::NONE, false);
        assert_eq!(body.api_keys.len(), SUPPORTED.len());
        let with_sasl = api_versions(code::NONE, true);
        assert_eq!(
            with_sasl.api_keys.len(),
            SUPPORTED.len() + SASL_SUPPORTED.len()
        );
        assert!(with_sasl
            .api_keys
            .iter()
            .any(|k| k.api_key == ApiKey::SaslAuthenticate as i16 && k.max_version == 2));
    }

    /// A request of a few bytes that declares 2^31-1 topics fails to decode (not enough
    /// bytes) instead of reserving room for them first: unpatched, the reservation of tens of
    /// GiB aborts the process (vendor/kafka-protocol/RINGMQ-PATCH.md).
    #[test]
    fn an_array_length_past_the_request_fails_to_decode_without_reserving_it() {
        let mut classic = Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff, 0, 0]);
        assert!(MetadataRequest::decode(&mut classic, 4).is_err());
        // Flexible versions: a compact array of 2^31 - 1 (an unsigned varint of 2^31).
        let mut compact = Bytes::from_static(&[0x80, 0x80, 0x80, 0x80, 0x08, 0]);
        assert!(MetadataRequest::decode(&mut compact, 12).is_err());
    }

    fn round_trip<T: Encodable + Decodable + PartialEq + std::fmt::Debug>(value: &T, version: i16) {
        let mut buf = BytesMut::new();
        value.encode(&mut buf, version).expect("encodes");
        let mut bytes = buf.freeze();
        let back = T::decode(&mut bytes, version).expect("decodes");
        assert_eq!(&back, value, "v{version}");
        assert!(bytes.is_empty(), "v{version}: trailing bytes");
    }

    proptest! {
        /// Each response this listener encodes decodes back to itself at every advertised
        /// version, as built by the code above (fields a version lacks left at defaults).
        #[test]
        fn responses_round_trip(
            offset in 0i64..(1 << 40),
            partitions in 1u32..5,
            error in prop_oneof![Just(0i16), Just(3), Just(20), Just(35)],
            topic in "[a-z]{1,12}",
        ) {
            for v in 0..=4 {
                round_trip(&api_versions(error, v % 2 == 0), v);
            }
            for v in 3..=9 {
                let p = partition_produced(1, error, offset, (v >= 8).then(|| "m".to_string()));
                let r = ProduceResponse::default().with_responses(vec![
                    produce_response::TopicProduceResponse::default()
                        .with_name(name(&topic))
                        .with_partition_responses(vec![p]),
                ]);
                round_trip(&r, v);
            }
            let stored = [StoredMessage { offset: offset as u64, born_timestamp_ms: 5, key: b"k", properties: b"h=v", body: b"b" }];
            let records = records::encode_batch(&stored).expect("batch");
            for v in 4..=12 {
                let p = fetch_response::PartitionData::default()
                    .with_partition_index(0)
                    .with_error_code(error)
                    .with_high_watermark(offset + 1)
                    .with_last_stable_offset(offset + 1)
                    .with_log_start_offset(if v >= 5 { 0 } else { -1 })
                    .with_records(Some(records.clone()));
                let r = FetchResponse::default().with_responses(vec![
                    fetch_response::FetchableTopicResponse::default()
                        .with_topic(name(&topic))
                        .with_partitions(vec![p]),
                ]);
                round_trip(&r, v);
            }
            for v in 1..=6 {
                let p = list_offsets_response::ListOffsetsPartitionResponse::default()
                    .with_partition_index(0)
                    .with_error_code(error)
                    .with_timestamp(-1)
                    .with_offset(offset);
                round_trip(&ListOffsetsResponse::default().with_topics(vec![
                    list_offsets_response::ListOffsetsTopicResponse::default()
                        .with_name(name(&topic))
                        .with_partitions(vec![p]),
                ]), v);
            }
            for v in 2..=7 {
                let r = create_topics_response::CreatableTopicResult::default()
                    .with_name(name(&topic))
                    .with_error_code(error)
                    .with_num_partitions(if v >= 5 { partitions as i32 } else { -1 })
                    .with_replication_factor(if v >= 5 { 1 } else { -1 });
                round_trip(&CreateTopicsResponse::default().with_topics(vec![r]), v);
            }
            for v in 1..=5 {
                let r = delete_topics_response::DeletableTopicResult::default()
                    .with_name(Some(name(&topic)))
                    .with_error_code(error);
                round_trip(&DeleteTopicsResponse::default().with_responses(vec![r]), v);
            }
            for v in 0..=4 {
                round_trip(&InitProducerIdResponse::default().with_producer_id(ProducerId(offset)).with_producer_epoch(0), v);
            }
            round_trip(
                &SaslHandshakeResponse::default()
                    .with_error_code(error)
                    .with_mechanisms(vec![StrBytes::from_string(topic.clone())]),
                1,
            );
            for v in 0..=2 {
                let r = SaslAuthenticateResponse::default()
                    .with_error_code(error)
                    .with_error_message((error != 0).then(|| StrBytes::from_string(topic.clone())))
                    .with_auth_bytes(Bytes::from(topic.clone().into_bytes()))
                    .with_session_lifetime_ms(if v >= 1 { offset } else { 0 });
                round_trip(&r, v);
            }
        }
    }
}
