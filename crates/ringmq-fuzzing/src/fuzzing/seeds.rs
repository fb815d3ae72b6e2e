//! Seed inputs for every fuzz target, written with the real encoders, so the fuzzer starts from
//! well-formed frames, bodies, handshakes, streams and store files instead of discovering magic
//! numbers and crcs itself. `tests/fuzz_regressions.rs` writes them to `fuzz/seeds/<target>/`
//! (with `RINGMQ_WRITE_FUZZ_SEEDS=1`) and checks the committed files still match.

use super::replication::{master_stream, sample_metadata};
use super::Input;
use crate::protocol::codes::Opcode;
use crate::protocol::frame::{encode_frame, FrameHeader};
use crate::protocol::message::{
    GroupCommit, GroupDescription, GroupFetch, GroupOffset, GroupQueueLag, MessageRef, Metadata,
    ProduceRequest, ProduceResponse, PullRequest, PullResponse, PullSummary, PulledMessageRef,
    QueueRef, QueueStats, TopicCreate, TopicDelete, TopicDescription, TopicInfo, TopicList,
};
use crate::protocol::namesrv::{
    BrokerRegister, BrokerRoute, BrokerUnregister, RouteQuery, Routes, ShardOffsets,
};
use crate::replication::protocol::{
    encode_refusal, Challenge, Hello, LinkSecurity, Welcome, NONCE_BYTES, PROOF_BYTES,
};
use crate::store::checkpoint::Checkpoint;
use crate::store::record::{encode_end_of_segment, RecordInput};

/// One seed file: `fuzz/seeds/<target>/<name>`.
pub struct Seed {
    pub target: &'static str,
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Every seed of every target.
pub fn seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        out.push(Seed {
            target,
            name: name.to_string(),
            bytes,
        })
    };
    for (name, opcode, body) in request_bodies() {
        add("frame", name, frame_input(opcode, &body));
        add(
            "frame_structured",
            name,
            structured_frame_input(opcode, &body),
        );
    }
    for (selector, (name, body)) in message_bodies().into_iter().enumerate() {
        add("message_body", name, with_selector(selector as u8, &body));
    }
    add("ha_handshake", "hello", with_selector(0, &hello_body()));
    add("ha_handshake", "welcome", with_selector(1, &welcome_body()));
    add("ha_handshake", "refusal", with_selector(1, &refusal_body()));
    add(
        "ha_handshake",
        "challenge",
        with_selector(1, &challenge_body()),
    );
    add(
        "ha_handshake",
        "proof",
        with_selector(2, &[0x3c; PROOF_BYTES]),
    );
    add(
        "ha_stream",
        "metadata",
        with_selector(0, &sample_metadata(3).encode()),
    );
    let records = record_specs();
    let mut shipped = records.clone();
    // Two frames: a heartbeat before the first, a metadata frame before the second.
    shipped.extend_from_slice(&[0x00, 0x04, 0x00, 0xff, 0x1f, 0x05]);
    let (stream, _) = master_stream(&mut Input::new(&shipped));
    add("ha_stream", "master_stream", with_selector(0, &stream));
    add(
        "ha_stream",
        "master_stream_fix_crc",
        with_selector(4, &stream),
    );
    add("ha_stream", "master_log", with_selector(2, &shipped));
    let mut truncated = shipped.clone();
    truncated.extend_from_slice(&(2 * 1000 + 1u64).to_le_bytes());
    add(
        "ha_stream",
        "master_log_truncated",
        with_selector(2, &truncated),
    );
    add("ha_stream", "reports", with_selector(1, &reports()));
    add(
        "commitlog_record",
        "records",
        with_selector(0, &records_at(4096)),
    );
    add(
        "commitlog_record",
        "fix_crc",
        with_selector(1, &records_at(0)),
    );
    let checkpoint = Checkpoint {
        flushed_offset: 8192,
        dispatched_offset: 4096,
        log_head: 0,
    };
    add(
        "store_files",
        "checkpoint",
        with_selector(0, &checkpoint.encode()),
    );
    add(
        "store_files",
        "consume_queue",
        with_selector(1, &consume_queue()),
    );
    add("store_files", "recovery", with_selector(2, &records));
    add("client_response", "responses", client_responses());
    out
}

fn with_selector(selector: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![selector];
    out.extend_from_slice(body);
    out
}

fn encoded(encode: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&mut out);
    out
}

fn opcode_index(opcode: Opcode) -> u8 {
    Opcode::ALL
        .iter()
        .position(|o| *o == opcode)
        .expect("listed") as u8
}

fn produce_request() -> Vec<u8> {
    let messages = [
        MessageRef {
            born_timestamp_ms: 1_700_000_000_000,
            key: b"order-1",
            properties: b"TAGS=new",
            body: b"{\"amount\":12}",
        },
        MessageRef {
            born_timestamp_ms: 1_700_000_000_001,
            key: b"",
            properties: b"",
            body: b"second",
        },
    ];
    let request = ProduceRequest {
        topic: "orders",
        queue: 1,
        messages: messages.to_vec(),
    };
    encoded(|out| request.encode(out))
}

fn pull_request() -> Vec<u8> {
    let request = PullRequest {
        topic: "orders".into(),
        queue: 0,
        offset: 42,
        max_messages: 32,
        max_bytes: 1 << 20,
        max_wait_ms: 500,
    };
    encoded(|out| request.encode(out))
}

/// Request bodies with the opcode that carries each.
fn request_bodies() -> Vec<(&'static str, Opcode, Vec<u8>)> {
    let name = |n: &str| encoded(|out| TopicDelete { name: n.into() }.encode(out));
    vec![
        ("ping", Opcode::Ping, Vec::new()),
        ("produce", Opcode::Produce, produce_request()),
        ("pull", Opcode::Pull, pull_request()),
        (
            "queue_stats",
            Opcode::QueueStats,
            encoded(|out| {
                QueueRef {
                    topic: "orders".into(),
                    queue: 3,
                }
                .encode(out)
            }),
        ),
        (
            "topic_create",
            Opcode::TopicCreate,
            encoded(|out| {
                TopicCreate {
                    name: "orders".into(),
                    queue_count: 8,
                }
                .encode(out)
            }),
        ),
        ("topic_delete", Opcode::TopicDelete, name("orders")),
        ("group_describe", Opcode::GroupDescribe, name("billing")),
        (
            "group_commit",
            Opcode::GroupCommit,
            encoded(|out| {
                GroupCommit {
                    group: "billing".into(),
                    topic: "orders".into(),
                    queue: 1,
                    offset: 77,
                }
                .encode(out)
            }),
        ),
        (
            "group_fetch",
            Opcode::GroupFetch,
            encoded(|out| {
                GroupFetch {
                    group: "billing".into(),
                    topic: "orders".into(),
                    queue: 1,
                }
                .encode(out)
            }),
        ),
        (
            "broker_register",
            Opcode::BrokerRegister,
            encoded(|out| broker_register().encode(out)),
        ),
        (
            "broker_unregister",
            Opcode::BrokerUnregister,
            encoded(|out| {
                BrokerUnregister {
                    cluster_name: "DefaultCluster".into(),
                    broker_name: "broker-a".into(),
                    broker_id: 42,
                    sequence: 43,
                    signed_at_ms: 0x0102_0304_0506,
                    signature: vec![0x5a; 32],
                }
                .encode(out)
            }),
        ),
        (
            "route_query",
            Opcode::RouteQuery,
            encoded(|out| {
                RouteQuery {
                    cluster_name: String::new(),
                }
                .encode(out)
            }),
        ),
    ]
}

fn broker_register() -> BrokerRegister {
    BrokerRegister {
        cluster_name: "DefaultCluster".into(),
        broker_name: "broker-a".into(),
        broker_id: 42,
        role: "SYNC_MASTER".into(),
        epoch: 2,
        flush_disk_type: "SYNC_FLUSH".into(),
        listen: "127.0.0.1:10911".into(),
        ha_listen: "127.0.0.1:10912".into(),
        shard_ports: vec![10911, 10913],
        topics: vec![topic_info()],
        shards: vec![ShardOffsets {
            shard: 0,
            confirmed_offset: 4096,
            max_offset: 8192,
        }],
        sequence: 0x1122_3344_5566_7788,
        signed_at_ms: 0x0102_0304_0506,
        signature: vec![0x5a; 32],
    }
}

fn routes() -> Vec<u8> {
    let routes = Routes {
        brokers: vec![BrokerRoute {
            broker: broker_register(),
            last_heartbeat_ms_ago: 250,
        }],
    };
    encoded(|out| routes.encode(out))
}

fn frame_input(opcode: Opcode, body: &[u8]) -> Vec<u8> {
    let mut out = vec![3];
    encode_frame(&mut out, FrameHeader::request(opcode, 7), body);
    encode_frame(&mut out, FrameHeader::request(Opcode::Ping, 8), &[]);
    out
}

/// The header fields [`super::protocol::frame_structured`] reads, then the body.
fn structured_frame_input(opcode: Opcode, body: &[u8]) -> Vec<u8> {
    let mut out = vec![opcode_index(opcode), 0];
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&7u64.to_le_bytes());
    out.extend_from_slice(&13u32.to_le_bytes());
    out.push(0);
    out.extend_from_slice(body);
    out
}

fn topic_info() -> TopicInfo {
    TopicInfo {
        name: "orders".into(),
        topic_id: 1,
        queue_shards: vec![0, 1, 0, 1],
    }
}

fn metadata() -> Vec<u8> {
    let metadata = Metadata {
        broker_name: "broker-a".into(),
        role: "ASYNC_MASTER".into(),
        flush_disk_type: "SYNC_FLUSH".into(),
        shard_ports: vec![10912, 10913],
        topics: vec![topic_info()],
    };
    encoded(|out| metadata.encode(out))
}

fn pull_response() -> Vec<u8> {
    let response = PullResponse {
        summary: PullSummary {
            next_offset: 44,
            min_offset: 0,
            max_offset: 50,
            suggest: 0,
        },
        messages: vec![
            PulledMessageRef {
                queue_offset: 42,
                born_timestamp_ms: 1,
                store_timestamp_ms: 2,
                key: b"k",
                properties: b"",
                body: b"hello",
            },
            PulledMessageRef {
                queue_offset: 43,
                born_timestamp_ms: 3,
                store_timestamp_ms: 4,
                key: b"",
                properties: b"p=1",
                body: b"world",
            },
        ],
    };
    encoded(|out| response.encode(out))
}

fn queue_stats() -> QueueStats {
    QueueStats {
        queue: 1,
        shard: 1,
        min_offset: 0,
        max_offset: 50,
    }
}

/// One body per decoder of [`super::protocol::message_body`], in its selector order.
fn message_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let requests = request_bodies();
    let request = |name: &str| {
        let (_, _, body) = requests
            .iter()
            .find(|(n, _, _)| *n == name)
            .expect("listed");
        body.clone()
    };
    vec![
        ("00_produce_request", request("produce")),
        ("01_pull_request", request("pull")),
        ("02_queue_ref", request("queue_stats")),
        ("03_topic_create", request("topic_create")),
        ("04_name", request("topic_delete")),
        ("05_group_commit", request("group_commit")),
        ("06_group_fetch", request("group_fetch")),
        (
            "07_produce_response",
            encoded(|out| {
                ProduceResponse {
                    queue: 1,
                    base_offset: 42,
                    count: 2,
                    commitlog_offset: 8192,
                }
                .encode(out)
            }),
        ),
        ("08_pull_response", pull_response()),
        ("09_queue_stats", encoded(|out| queue_stats().encode(out))),
        ("10_topic_info", encoded(|out| topic_info().encode(out))),
        ("11_metadata", metadata()),
        (
            "12_topic_list",
            encoded(|out| {
                TopicList {
                    topics: vec![topic_info(), topic_info()],
                }
                .encode(out)
            }),
        ),
        (
            "13_topic_description",
            encoded(|out| {
                TopicDescription {
                    topic: topic_info(),
                    queues: vec![queue_stats()],
                }
                .encode(out)
            }),
        ),
        (
            "14_group_offset",
            encoded(|out| GroupOffset { offset: Some(77) }.encode(out)),
        ),
        (
            "15_group_description",
            encoded(|out| {
                GroupDescription {
                    group: "billing".into(),
                    queues: vec![GroupQueueLag {
                        topic: "orders".into(),
                        queue: 1,
                        committed_offset: 40,
                        max_offset: 50,
                    }],
                }
                .encode(out)
            }),
        ),
        ("16_error_message", b"topic `orders` not found".to_vec()),
        ("17_codes", vec![10, 0, 200, 0]),
        (
            "18_controller_heartbeat",
            encoded(|out| {
                crate::protocol::controller::BrokerHeartbeat {
                    cluster_name: "c1".into(),
                    broker_name: "group-a".into(),
                    broker_id: 7,
                    epoch: 3,
                    end_offsets: vec![4096, 0],
                    unclean_restart: 1,
                    async_flush: 0,
                    learner: 0,
                    election_priority: 5,
                    sent_at_ms: 1000,
                    slave_links: vec![crate::protocol::controller::SlaveLinkState {
                        broker_id: 8,
                        linked_shards: 2,
                        in_sync_shards: 1,
                    }],
                    promoted_epoch: 4,
                    promoted_in_ms: 30,
                    first_ack_in_ms: crate::protocol::controller::NOT_YET,
                }
                .encode(out)
            }),
        ),
    ]
}

fn hello_body() -> Vec<u8> {
    let hello = Hello {
        version: crate::replication::protocol::HA_VERSION,
        shard: 1,
        shard_count: 2,
        segment_size_bytes: 1 << 30,
        log_id: [7; 16],
        last_epoch: 3,
        max_offset: 4096,
        broker_name: "broker-a".into(),
        security: LinkSecurity::Auth,
        nonce: [0x5a; NONCE_BYTES],
        controller_broker_id: 0,
    };
    encoded(|out| hello.encode(out))[4..].to_vec()
}

fn challenge_body() -> Vec<u8> {
    let challenge = Challenge {
        version: crate::replication::protocol::HA_VERSION,
        nonce: [0xa5; NONCE_BYTES],
        broker_name: "broker-a".into(),
        last_epoch: 1 << 16,
    };
    encoded(|out| challenge.encode(&[0x3c; PROOF_BYTES], out))[4..].to_vec()
}

fn welcome_body() -> Vec<u8> {
    let welcome = Welcome {
        version: crate::replication::protocol::HA_VERSION,
        log_id: [9; 16],
        epochs: vec![(1, 0), (2, 8192)],
        truncate_to: 8192,
    };
    encoded(|out| welcome.encode(out))[4..].to_vec()
}

fn refusal_body() -> Vec<u8> {
    let reason = crate::replication::master::version_refusal(1);
    encoded(|out| encode_refusal(&reason, out))[4..].to_vec()
}

/// Input for [`super::store::append_from`]: records of every queue, one large enough that a
/// few of them fill the write buffer.
fn record_specs() -> Vec<u8> {
    let mut out = vec![6];
    for i in 0..6u8 {
        let body_len: u16 = if i == 3 { 1900 } else { 40 + u16::from(i) };
        out.extend_from_slice(&[i % 3, i & 1, 3, 2]);
        out.extend_from_slice(&body_len.to_le_bytes());
        out.extend_from_slice(&(1_700_000_000_000u64 + u64::from(i)).to_le_bytes());
        out.extend_from_slice(b"keyp=");
        out.extend((0..body_len).map(|b| (b as u8).wrapping_mul(31) ^ i));
    }
    out
}

fn reports() -> Vec<u8> {
    let mut out = vec![2];
    out.extend_from_slice(&100_000u32.to_le_bytes());
    for (link, offset) in [(0u8, 4096u64), (1, 8192), (0x80, 0), (1, 100_100), (0, 2)] {
        out.push(link);
        out.extend_from_slice(&offset.to_le_bytes());
    }
    out
}

/// The position, then two records and an end-of-segment marker as a segment holds them.
fn records_at(offset: u64) -> Vec<u8> {
    let mut out = offset.to_le_bytes().to_vec();
    let mut at = offset;
    for (key, body) in [(&b"k1"[..], &b"hello world"[..]), (b"", b"second")] {
        let record = RecordInput {
            topic_id: 7,
            queue_id: 3,
            queue_offset: at,
            born_timestamp_ms: 1,
            store_timestamp_ms: 2,
            topic: "orders",
            key,
            properties: b"p=1",
            body,
        };
        let mut bytes = vec![0u8; record.encoded_len()];
        record.encode_into(at, &mut bytes);
        at += bytes.len() as u64;
        out.extend_from_slice(&bytes);
    }
    let mut marker = [0u8; 16];
    encode_end_of_segment(&mut marker);
    out.extend_from_slice(&marker);
    out
}

/// A confirmed offset, then three consume-queue entries and the zero entry that ends them.
fn consume_queue() -> Vec<u8> {
    let mut out = 300u64.to_le_bytes().to_vec();
    for (offset, size, tag) in [(0u64, 100u32, 1u64), (100, 120, 2), (220, 90, 3), (0, 0, 0)] {
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&tag.to_le_bytes());
    }
    out
}

/// Frames in the layout [`super::client::client_response`] reads: kind, body length, status
/// index, opcode index, request id, body.
fn client_responses() -> Vec<u8> {
    let mut out = Vec::new();
    let stats_json = br#"{"not":"a stats document"}"#.to_vec();
    for (opcode, status, body) in [
        (Opcode::Metadata, 0u8, metadata()),
        (Opcode::Pull, 4, pull_response()),
        (Opcode::TopicCreate, 0, encoded(|o| topic_info().encode(o))),
        (Opcode::QueueStats, 0, encoded(|o| queue_stats().encode(o))),
        (Opcode::Stats, 0, stats_json),
        (Opcode::RouteQuery, 0, routes()),
    ] {
        out.push(0);
        out.extend_from_slice(&(body.len() as u16).to_le_bytes());
        out.push(status);
        out.push(opcode_index(opcode));
        out.push(1);
        out.extend_from_slice(&body);
    }
    out
}
