//! Golden vectors: the bytes of one value of every request and response body, as the
//! hand-written encoders before the declared bodies (`wire_body!`, commit 56889a1) wrote them.
//! Each is checked both ways: the declared encoder writes exactly these bytes, and decoding
//! them gives the value back. A change here is a wire format change: it needs a protocol
//! version and an entry in `docs/protocol.md`, not a new vector.
//!
//! The empty request bodies (Ping, Metadata, TopicList, Stats, DeleteExpired,
//! RetentionStatus, ClusterStatus,
//! MetadataSnapshot) are checked to encode to nothing; the JSON bodies (stats, cluster
//! status, metadata snapshot) are serde documents of the `admin` types, not declared here.

use ringmq_protocol::message::*;
use ringmq_protocol::namesrv::*;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len() % 2 == 0, "odd hex length");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// Encodes with `encode`, compares with `golden`, and returns the golden bytes to decode.
fn check_encoding(name: &str, golden: &str, encode: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&mut out);
    assert_eq!(
        hex(&out),
        golden,
        "{name}: encoding differs from the golden bytes"
    );
    unhex(golden)
}

/// An owned body: encodes to `golden` and decodes from it to the same value.
macro_rules! golden {
    ($name:literal, $value:expr, $golden:expr) => {{
        let value = $value;
        let bytes = check_encoding($name, $golden, |out| value.encode(out));
        let decoded = decode_as(&value, &bytes);
        assert_eq!(decoded, value, "{}: decoding the golden bytes", $name);
    }};
}

/// `T::decode` for the type of `_like` (lets the macro name the type through a value).
fn decode_as<T: Decode>(_like: &T, bytes: &[u8]) -> T {
    T::decode_body(bytes).expect("golden bytes decode")
}

trait Decode: Sized {
    fn decode_body(bytes: &[u8]) -> Result<Self, ringmq_protocol::codec::DecodeError>;
}

macro_rules! decodes {
    ($($ty:ty),*) => {$(
        impl Decode for $ty {
            fn decode_body(bytes: &[u8]) -> Result<Self, ringmq_protocol::codec::DecodeError> {
                <$ty>::decode(bytes)
            }
        }
    )*};
}

decodes!(
    ringmq_protocol::controller::RaftMessage,
    ringmq_protocol::controller::RegisterBroker,
    ringmq_protocol::controller::BrokerIdentity,
    ringmq_protocol::controller::BrokerHeartbeat,
    ringmq_protocol::controller::HeartbeatAnswer,
    ringmq_protocol::controller::AlterSyncStateSet,
    ringmq_protocol::controller::GroupState,
    ringmq_protocol::controller::GroupRef,
    ringmq_protocol::controller::AddPeer,
    ringmq_protocol::controller::RemovePeer,
    ringmq_protocol::controller::ResignMaster,
    ProduceResponse,
    PullRequest,
    QueueRef,
    QueueStats,
    Metadata,
    TopicCreate,
    TopicDelete,
    TopicDescribe,
    TopicList,
    TopicDescription,
    GroupCommit,
    GroupFetch,
    GroupOffset,
    GroupDescribe,
    MessageReject,
    RejectOutcome,
    GroupDescription,
    GroupQueue,
    GroupJoin,
    GroupHeartbeat,
    GroupAssignment,
    GroupLeave,
    GroupMembers,
    GroupMember,
    GroupMembership,
    GroupPull,
    ClusterPromote,
    PullSummary,
    BrokerRegister,
    RegisterResult,
    BrokerUnregister,
    RouteQuery,
    Routes
);

fn info() -> TopicInfo {
    TopicInfo {
        name: "orders".into(),
        topic_id: 0x0102_0304,
        queue_shards: vec![0, 1, 0x0203],
    }
}

fn stats() -> QueueStats {
    QueueStats {
        queue: 7,
        shard: 0x0102,
        min_offset: 0x1112_1314_1516_1718,
        max_offset: 0x2122_2324_2526_2728,
    }
}

#[test]
fn produce_request() {
    let messages = vec![
        MessageRef {
            born_timestamp_ms: 0x0a0b_0c0d_0e0f_1011,
            key: b"k1",
            properties: b"p=1",
            body: b"hello",
        },
        MessageRef {
            born_timestamp_ms: 5,
            key: b"",
            properties: b"",
            body: b"",
        },
    ];
    let value = ProduceRequest {
        topic: "orders",
        queue: 3,
        messages: messages.clone(),
    };
    let golden = PRODUCE_REQUEST;
    let bytes = check_encoding("produce request", golden, |out| value.encode(out));
    check_encoding("encode_produce", golden, |out| {
        encode_produce(out, "orders", 3, &messages)
    });
    assert_eq!(ProduceRequest::decode(&bytes).unwrap(), value);
}

const PRODUCE_REQUEST: &str = concat!(
    "06006f7264657273030000000200000011100f0e0d0c0b0a02006b310300703d310500000068656c",
    "6c6f05000000000000000000000000000000",
);

/// The header of a produce frame (request id 1, empty body) at each acknowledgement level:
/// the level is flag byte 7, bits 1-2 (`00` leaves it to the broker's `default_acks`).
#[test]
fn produce_frame_acks_flags() {
    use ringmq_protocol::frame::{encode_frame, FrameDecoder, FrameHeader};
    use ringmq_protocol::{Acks, Opcode};
    let cases = [
        (None, "14000000524d01000a000000010000000000000000000000"),
        (
            Some(Acks::None),
            "14000000524d01020a000000010000000000000000000000",
        ),
        (
            Some(Acks::Leader),
            "14000000524d01040a000000010000000000000000000000",
        ),
        (
            Some(Acks::All),
            "14000000524d01060a000000010000000000000000000000",
        ),
    ];
    for (acks, golden) in cases {
        let header = FrameHeader::request(Opcode::Produce, 1).with_acks(acks);
        let name = format!("produce frame at {acks:?}");
        let bytes = check_encoding(&name, golden, |out| encode_frame(out, header, &[]));
        let frame = FrameDecoder::new(64).decode(&bytes).unwrap().unwrap();
        assert_eq!(frame.header.request_acks(), Ok(acks), "{name}");
    }
}

#[test]
fn pull_response() {
    let summary = PullSummary {
        next_offset: 11,
        min_offset: 0x11,
        max_offset: 0x22,
        suggest: 1,
    };
    let messages = [
        PulledMessageRef {
            queue_offset: 9,
            born_timestamp_ms: 0x0a0b,
            store_timestamp_ms: 0x0c0d,
            key: b"k",
            properties: b"pp",
            body: b"body",
        },
        PulledMessageRef {
            queue_offset: 10,
            born_timestamp_ms: 1,
            store_timestamp_ms: 2,
            key: b"",
            properties: b"",
            body: b"x",
        },
    ];
    // `suggest` (1, read from a slave) is the summary's last byte, before the message count.
    let golden = concat!(
        "0b0000000000000011000000000000002200000000000000",
        "01",
        "0200000009000000000000000b0a0000",
        "000000000d0c00000000000001006b0200707004000000626f64790a000000000000000100000000",
        "0000000200000000000000000000000100000078",
    );
    // The incremental encoder the broker uses, the next offset patched at the end as there.
    let bytes = check_encoding("pull response (incremental)", golden, |out| {
        let mut encoder = PullResponseEncoder::begin(
            out,
            PullSummary {
                next_offset: 0,
                ..summary
            },
        );
        for m in &messages {
            encoder.push(out, m);
        }
        encoder.finish(out, 11);
    });
    let value = PullResponse {
        summary,
        messages: messages.to_vec(),
    };
    check_encoding("pull response", golden, |out| value.encode(out));
    assert_eq!(PullResponse::decode(&bytes).unwrap(), value);
}

#[test]
fn owned_bodies() {
    golden!(
        "produce response",
        ProduceResponse {
            queue: 3,
            base_offset: 0x0102_0304_0506_0708,
            count: 2,
            commitlog_offset: 0x1000_2000,
        },
        "030000000807060504030201020000000020001000000000"
    );
    golden!(
        "pull request",
        PullRequest {
            topic: "orders".into(),
            queue: 2,
            offset: 0x0102_0304_0506_0708,
            max_messages: 100,
            max_bytes: 0x0010_0000,
            max_wait_ms: 500,
        },
        "06006f72646572730200000008070605040302016400000000001000f4010000"
    );
    golden!(
        "queue ref",
        QueueRef {
            topic: "orders".into(),
            queue: 4,
        },
        "06006f726465727304000000"
    );
    golden!(
        "queue stats",
        stats(),
        "07000000020118171615141312112827262524232221"
    );
    golden!(
        "metadata",
        Metadata {
            broker_name: "b1".into(),
            role: "SYNC_MASTER".into(),
            flush_disk_type: "ASYNC_FLUSH".into(),
            shard_ports: vec![9001, 0],
            topics: vec![
                info(),
                TopicInfo {
                    name: "e".into(),
                    topic_id: 9,
                    queue_shards: vec![],
                },
            ],
        },
        concat!(
            "020062310b0053594e435f4d41535445520b004153594e435f464c55534802000000292300000200",
            "000006006f726465727304030201030000000000010003020100650900000000000000",
        )
    );
    golden!(
        "topic create",
        TopicCreate {
            name: "orders".into(),
            queue_count: 8,
        },
        "06006f726465727308000000"
    );
    // TopicDelete, TopicDescribe and GroupDescribe were one `Name` body before.
    golden!(
        "topic delete",
        TopicDelete {
            name: "orders".into()
        },
        "06006f7264657273"
    );
    golden!(
        "topic describe",
        TopicDescribe {
            name: "orders".into()
        },
        "06006f7264657273"
    );
    golden!(
        "group describe",
        GroupDescribe {
            group: "orders".into()
        },
        "06006f7264657273"
    );
    golden!(
        "cluster promote",
        ClusterPromote {
            role: "SYNC_MASTER".into()
        },
        "0b0053594e435f4d4153544552"
    );
    golden!(
        "topic list",
        TopicList {
            topics: vec![info(), info()],
        },
        concat!(
            "0200000006006f7264657273040302010300000000000100030206006f7264657273040302010300",
            "0000000001000302",
        )
    );
    golden!(
        "topic description",
        TopicDescription {
            topic: info(),
            queues: vec![
                stats(),
                QueueStats {
                    queue: 1,
                    shard: 0,
                    min_offset: 0,
                    max_offset: 3,
                },
            ],
        },
        concat!(
            "06006f72646572730403020103000000000001000302020000000700000002011817161514131211",
            "282726252423222101000000000000000000000000000300000000000000",
        )
    );
    golden!(
        "group commit",
        GroupCommit {
            group: "g1".into(),
            topic: "orders".into(),
            queue: 5,
            offset: 0x0102_0304_0506_0708,
        },
        "0200673106006f7264657273050000000807060504030201"
    );
    golden!(
        "group fetch",
        GroupFetch {
            group: "g1".into(),
            topic: "orders".into(),
            queue: 5,
        },
        "0200673106006f726465727305000000"
    );
    golden!(
        "group offset (present)",
        GroupOffset {
            offset: Some(0x0102_0304_0506_0708),
        },
        "010807060504030201"
    );
    golden!(
        "group offset (absent)",
        GroupOffset { offset: None },
        "000000000000000000"
    );
    golden!(
        "group description",
        GroupDescription {
            group: "g1".into(),
            queues: vec![
                GroupQueueLag {
                    topic: "orders".into(),
                    queue: 1,
                    committed_offset: 0x10,
                    max_offset: 0x0102_0304,
                },
                GroupQueueLag {
                    topic: "x".into(),
                    queue: 0,
                    committed_offset: 0,
                    max_offset: 0,
                },
            ],
        },
        concat!(
            "020067310200000006006f7264657273010000001000000000000000040302010000000001007800",
            "00000000000000000000000000000000000000",
        )
    );
}

/// The membership bodies (opcodes 33 to 37), as first written with the coordinator.
#[test]
fn group_membership_bodies() {
    let q = |queue| GroupQueue {
        topic: "t".into(),
        queue,
    };
    golden!("group queue", q(2), "01007402000000");
    golden!(
        "group join",
        GroupJoin {
            group: "g1".into(),
            client_id: "c".into(),
            host: "h".into(),
            topics: vec!["t".into()],
            mode: 1,
            strategy: 2,
            orderly: 1,
            session_timeout_ms: 3000,
        },
        "0200673101006301006801000000010074010201b80b0000"
    );
    golden!(
        "group heartbeat",
        GroupHeartbeat {
            group: "g1".into(),
            member_id: "c-1".into(),
            generation: 7,
            released: vec![q(3)],
        },
        "020067310300632d3107000000000000000100000001007403000000"
    );
    golden!(
        "group assignment",
        GroupAssignment {
            member_id: "c-1".into(),
            generation: 7,
            session_timeout_ms: 3000,
            heartbeat_interval_ms: 1000,
            owned: vec![q(0), q(1)],
            revoked: vec![q(2)],
            waiting: 1,
        },
        "0300632d310700000000000000b80b0000e8030000020000000100740000000001007401000000010000000100740200000001000000"
    );
    golden!(
        "group leave",
        GroupLeave {
            group: "g1".into(),
            member_id: "c-1".into(),
        },
        "020067310300632d31"
    );
    golden!(
        "group members",
        GroupMembers { group: "g1".into() },
        "02006731"
    );
    golden!(
        "group membership",
        GroupMembership {
            group: "g1".into(),
            generation: 7,
            mode: 0,
            strategy: 0,
            orderly: 0,
            members: vec![GroupMember {
                member_id: "c-1".into(),
                client_id: "c".into(),
                host: "h".into(),
                last_heartbeat_ms: 250,
                owned: vec![q(0)],
            }],
        },
        "020067310700000000000000000000010000000300632d31010063010068fa000000000000000100000001007400000000"
    );
    golden!(
        "group pull",
        GroupPull {
            group: "g1".into(),
            member_id: "c-1".into(),
            generation: 7,
            topic: "t".into(),
            queue: 4,
            commit: Some(9),
            offset: u64::MAX,
            max_messages: 256,
            max_bytes: 65536,
            max_wait_ms: 100,
        },
        "020067310300632d31070000000000000001007404000000010900000000000000ffffffffffffffff000100000000010064000000"
    );
}

/// The reject request and its answer (opcode 38, added after the hand-written encoders: these
/// bytes are the declared layout in `docs/protocol.md`, fixed from now on).
#[test]
fn reject_bodies() {
    golden!(
        "message reject",
        MessageReject {
            group: "g1".into(),
            topic: "orders".into(),
            queue: 5,
            offset: 0x0102_0304_0506_0708,
            max_reconsume_times: 2,
        },
        "0200673106006f726465727305000000080706050403020102000000"
    );
    golden!(
        "reject outcome",
        RejectOutcome {
            topic: "%RETRY%g1".into(),
            reconsume_times: 3,
            delay_ms: 0x0102_0304,
        },
        "0900255245545259256731030000000403020100000000"
    );
}

/// The name-server bodies (opcodes 70-72; docs/protocol.md, "Name-server bodies").
#[test]
fn name_server_bodies() {
    golden!(
        "broker register",
        BrokerRegister {
            cluster_name: "prod".into(),
            broker_name: "broker-a".into(),
            broker_id: 0x0102_0304_0506_0708,
            role: "SYNC_MASTER".into(),
            epoch: 3,
            flush_disk_type: "SYNC_FLUSH".into(),
            listen: "10.0.0.1:9000".into(),
            ha_listen: "10.0.0.1:9100".into(),
            shard_ports: vec![9000, 9001],
            topics: vec![info()],
            shards: vec![ShardOffsets {
                shard: 1,
                confirmed_offset: 0x10,
                max_offset: 0x20,
            }],
            sequence: 0x1112_1314_1516_1718,
            signed_at_ms: 0x2122_2324_2526_2728,
            signature: vec![0xab; 2],
        },
        "040070726f64080062726f6b65722d6108070605040302010b0053594e435f4d4153544552030000000a0053594e435f464c5553480d0031302e302e302e313a393030300d0031302e302e302e313a3931303002000000282329230100000006006f7264657273040302010300000000000100030201000000010010000000000000002000000000000000181716151413121128272625242322210200abab"
    );
    golden!(
        "register result",
        RegisterResult {
            accepted: 0,
            master_listen: "10.0.0.2:9000".into(),
            master_ha_listen: "10.0.0.2:9100".into(),
            master_broker_id: 0x0a0b,
            master_epoch: 4,
            expiry_ms: 10_000,
            group_epoch: 5,
            group_epoch_broker_id: 0x0c0d,
        },
        "000d0031302e302e302e323a393030300d0031302e302e302e323a393130300b0a0000000000000400000010270000050000000d0c000000000000"
    );
    golden!(
        "broker unregister",
        BrokerUnregister {
            cluster_name: "prod".into(),
            broker_name: "broker-a".into(),
            broker_id: 0x0102_0304_0506_0708,
            sequence: 0x1112_1314_1516_1718,
            signed_at_ms: 0x2122_2324_2526_2728,
            signature: vec![0xab; 2],
        },
        "040070726f64080062726f6b65722d610807060504030201181716151413121128272625242322210200abab"
    );
    golden!(
        "route query",
        RouteQuery {
            cluster_name: "prod".into(),
        },
        "040070726f64"
    );
    golden!(
        "routes",
        Routes {
            brokers: vec![BrokerRoute {
                broker: BrokerRegister {
                    cluster_name: "prod".into(),
                    broker_name: "broker-a".into(),
                    broker_id: 7,
                    role: "SLAVE".into(),
                    epoch: 3,
                    flush_disk_type: "ASYNC_FLUSH".into(),
                    listen: "h:1".into(),
                    ha_listen: "h:2".into(),
                    shard_ports: vec![9000],
                    topics: vec![info()],
                    shards: vec![],
                    sequence: 9,
                    signed_at_ms: 0,
                    signature: vec![],
                },
                last_heartbeat_ms_ago: 1500,
            }],
        },
        "01000000040070726f64080062726f6b65722d6107000000000000000500534c415645030000000b004153594e435f464c5553480300683a310300683a320100000028230100000006006f7264657273040302010300000000000100030200000000090000000000000000000000000000000000dc05000000000000"
    );
}

/// A topic's placement alone (nested in metadata, topic lists and descriptions above).
#[test]
fn topic_info() {
    let value = info();
    let bytes = check_encoding(
        "topic info",
        "06006f72646572730403020103000000000001000302",
        |out| value.encode(out),
    );
    assert_eq!(TopicInfo::decode(&bytes).unwrap(), value);
}

#[test]
fn empty_request_bodies() {
    let mut out = Vec::new();
    Ping {}.encode(&mut out);
    MetadataRequest {}.encode(&mut out);
    TopicListRequest {}.encode(&mut out);
    StatsRequest {}.encode(&mut out);
    DeleteExpiredRequest {}.encode(&mut out);
    RetentionStatusRequest {}.encode(&mut out);
    ClusterStatusRequest {}.encode(&mut out);
    MetadataSnapshotRequest {}.encode(&mut out);
    assert!(out.is_empty(), "{}", hex(&out));
    assert_eq!(Ping::decode(&[]).unwrap(), Ping {});
    assert!(
        Ping::decode(&[0]).is_err(),
        "an empty body has no room for bytes"
    );
}

/// `OFFSET_OUT_OF_RANGE`'s message tail that carries the queue's range (docs/protocol.md,
/// "Statuses"): the bytes of one, and the range parsed back from them.
#[test]
fn offset_out_of_range_message() {
    use ringmq_protocol::codes::{offset_out_of_range_message, parse_offset_range};
    let golden = "6f666673657420332069732062656c6f77205b6d696e5f6f66667365743d3130206d61785f6f66667365743d34325d";
    let bytes = check_encoding("OFFSET_OUT_OF_RANGE message", golden, |out| {
        out.extend_from_slice(offset_out_of_range_message("offset 3 is below", 10, 42).as_bytes())
    });
    let text = std::str::from_utf8(&bytes).expect("UTF-8");
    assert_eq!(parse_offset_range(text), Some((10, 42)));
}

/// The retention opcodes' whole request frames (an empty body): opcode 41 `DeleteExpired`
/// and 42 `RetentionStatus`, request id 7.
#[test]
fn retention_request_frames() {
    use ringmq_protocol::frame::{encode_frame, FrameHeader};
    use ringmq_protocol::Opcode;
    for (opcode, golden) in [
        (Opcode::DeleteExpired, DELETE_EXPIRED_FRAME),
        (Opcode::RetentionStatus, RETENTION_STATUS_FRAME),
    ] {
        check_encoding(&format!("{opcode:?} frame"), golden, |out| {
            encode_frame(out, FrameHeader::request(opcode, 7), &[])
        });
    }
    assert_eq!(Opcode::DeleteExpired as u16, 41);
    assert_eq!(Opcode::RetentionStatus as u16, 42);
}

const DELETE_EXPIRED_FRAME: &str = "14000000524d010029000000070000000000000000000000";
const RETENTION_STATUS_FRAME: &str = "14000000524d01002a000000070000000000000000000000";

/// The `Retention` JSON body: field names and order as docs/protocol.md gives them.
#[test]
fn retention_document() {
    use ringmq_protocol::admin::{DeletedSegment, Retention, ShardRetention};
    let value = Retention {
        shards: vec![ShardRetention {
            shard: 1,
            log_head: 1048576,
            max_offset: 1050000,
            segments: 2,
            disk_used_ratio: 0.5,
            appends_refused: false,
            deleted: vec![DeletedSegment {
                file: "/d/shard-1/commitlog/00000000000000000000".to_string(),
                start_offset: 0,
                bytes: 1048576,
                reason: "expired".to_string(),
            }],
            deleted_segments_total: 1,
            reclaimed_bytes_total: 1048576,
            error: None,
        }],
    };
    let golden = concat!(
        r#"{"shards":[{"shard":1,"log_head":1048576,"max_offset":1050000,"segments":2,"#,
        r#""disk_used_ratio":0.5,"appends_refused":false,"deleted":[{"file":"#,
        r#""/d/shard-1/commitlog/00000000000000000000","start_offset":0,"bytes":1048576,"#,
        r#""reason":"expired"}],"deleted_segments_total":1,"reclaimed_bytes_total":1048576,"#,
        r#""error":null}]}"#
    );
    assert_eq!(serde_json::to_string(&value).unwrap(), golden);
    assert_eq!(serde_json::from_str::<Retention>(golden).unwrap(), value);
}

/// The controller's bodies (opcodes 80-87, `controller.rs`).
#[test]
fn controller_bodies() {
    use ringmq_protocol::controller::*;
    golden!(
        "RaftMessage",
        RaftMessage {
            from: 2,
            message: vec![0x08, 0x03]
        },
        "0200000000000000020000000803"
    );
    golden!(
        "RegisterBroker",
        RegisterBroker {
            cluster_name: "c".into(),
            broker_name: "g".into(),
            store_identity: "s1".into(),
            listen: "h:1".into(),
            ha_listen: "h:2".into(),
        },
        "010063010067020073310300683a310300683a32"
    );
    golden!(
        "BrokerIdentity",
        BrokerIdentity { broker_id: 7 },
        "0700000000000000"
    );
    golden!(
        "BrokerHeartbeat",
        BrokerHeartbeat {
            cluster_name: "c".into(),
            broker_name: "g".into(),
            broker_id: 7,
            epoch: 3,
            end_offsets: vec![4096, 0],
            unclean_restart: 1,
            async_flush: 0,
            learner: 0,
            election_priority: 5,
            sent_at_ms: 1000,
            slave_links: vec![SlaveLinkState {
                broker_id: 8,
                linked_shards: 2,
                in_sync_shards: 1,
            }],
            promoted_epoch: 4,
            promoted_in_ms: 30,
            first_ack_in_ms: NOT_YET,
        },
        "010063010067070000000000000003000000020000000010000000000000000000000000000001000005000000e803000000000000\
         0100000008000000000000000200010004000000\
         1e000000ffffffff"
    );
    golden!(
        "HeartbeatAnswer",
        HeartbeatAnswer {
            role: ROLE_MASTER,
            master_broker_id: 7,
            master_listen: "h:1".into(),
            master_ha_listen: "h:2".into(),
            master_epoch: 4,
            sync_state_set_epoch: 9,
            sync_state_set: vec![7, 8],
            lease_expires_ms: 3000,
            unclean_election: 0,
        },
        "0107000000000000000300683a310300683a3204000000090000000200000007000000000000000800000000000000b80b00000000000000"
    );
    golden!(
        "AlterSyncStateSet",
        AlterSyncStateSet {
            cluster_name: "c".into(),
            broker_name: "g".into(),
            master_broker_id: 7,
            master_epoch: 4,
            sync_state_set_epoch: 9,
            new_sync_state_set: vec![7],
        },
        "01006301006707000000000000000400000009000000010000000700000000000000"
    );
    golden!(
        "ResignMaster",
        ringmq_protocol::controller::ResignMaster {
            cluster_name: "c".into(),
            broker_name: "g".into(),
            broker_id: 7,
            master_epoch: 4,
            successor_broker_id: 8,
        },
        "0100630100670700000000000000040000000800000000000000"
    );
    golden!(
        "GroupState",
        GroupState {
            cluster_name: "c".into(),
            broker_name: "g".into(),
            master_broker_id: 7,
            master_epoch: 4,
            sync_state_set_epoch: 10,
            sync_state_set: vec![7],
            brokers: vec![BrokerEntry { broker_id: 7, listen: "h:1".into(), ha_listen: "h:2".into(), alive: 1 }],
        },
        "0100630100670700000000000000040000000a0000000100000007000000000000000100000007000000000000000300683a310300683a3201"
    );
    golden!(
        "GroupRef",
        GroupRef {
            cluster_name: "c".into(),
            broker_name: "g".into()
        },
        "010063010067"
    );
    golden!(
        "AddPeer",
        AddPeer {
            id: 4,
            addr: "h:9".into()
        },
        "04000000000000000300683a39"
    );
    golden!("RemovePeer", RemovePeer { id: 3 }, "0300000000000000");
    let mut out = Vec::new();
    StatusRequest {}.encode(&mut out);
    assert!(out.is_empty());
}
