//! Property tests: every body type and frames round-trip, and no decoder panics or accepts a
//! damaged frame as a different one. Also pins the worked hex example in `docs/protocol.md`.

use super::frame::{encode_frame, FrameHeader, FRAME_HEADER_BYTES};
use super::message::*;
use super::{FrameDecoder, Opcode};
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.-]{0,24}"
}
fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}
fn topic_info() -> impl Strategy<Value = TopicInfo> {
    (
        name(),
        any::<u32>(),
        proptest::collection::vec(any::<u16>(), 0..8),
    )
        .prop_map(|(name, topic_id, queue_shards)| TopicInfo {
            name,
            topic_id,
            queue_shards,
        })
}
fn queue_stats() -> impl Strategy<Value = QueueStats> {
    (any::<u32>(), any::<u16>(), any::<u64>(), any::<u64>()).prop_map(|(queue, shard, a, b)| {
        QueueStats {
            queue,
            shard,
            min_offset: a,
            max_offset: b,
        }
    })
}
type OwnedMessage = (u64, Vec<u8>, Vec<u8>, Vec<u8>);
fn owned_message() -> impl Strategy<Value = OwnedMessage> {
    (any::<u64>(), bytes(16), bytes(16), bytes(64))
}

/// Encodes with `encode` and checks that `decode` gives the value back.
macro_rules! round_trip {
    ($value:expr, $ty:ty) => {{
        let value = $value;
        let mut out = Vec::new();
        value.encode(&mut out);
        prop_assert_eq!(<$ty>::decode(&out).unwrap(), value);
    }};
}

proptest! {
    #[test]
    fn small_bodies_round_trip(
        topic in name(), group in name(), queue in any::<u32>(), offset in any::<u64>(),
        info in topic_info(), stats in queue_stats(),
        topics in proptest::collection::vec(topic_info(), 0..4),
        queues in proptest::collection::vec(queue_stats(), 0..4),
        ports in proptest::collection::vec(any::<u16>(), 0..4),
        present in any::<bool>(), numbers in any::<(u32, u32, u32, u64, u64)>(),
    ) {
        round_trip!(PullRequest { topic: topic.clone(), queue, offset, max_messages: numbers.0,
            max_bytes: numbers.1, max_wait_ms: numbers.2 }, PullRequest);
        round_trip!(ProduceResponse { queue, base_offset: offset, count: numbers.0,
            commitlog_offset: numbers.3 }, ProduceResponse);
        round_trip!(QueueRef { topic: topic.clone(), queue }, QueueRef);
        round_trip!(stats, QueueStats);
        round_trip!(info.clone(), TopicInfo);
        round_trip!(Metadata { broker_name: group.clone(), role: "SYNC_MASTER".into(),
            flush_disk_type: "SYNC_FLUSH".into(), shard_ports: ports, topics: topics.clone() },
            Metadata);
        round_trip!(TopicCreate { name: topic.clone(), queue_count: numbers.0 }, TopicCreate);
        round_trip!(Name { name: topic.clone() }, Name);
        round_trip!(TopicList { topics }, TopicList);
        round_trip!(TopicDescription { topic: info, queues }, TopicDescription);
        round_trip!(GroupCommit { group: group.clone(), topic: topic.clone(), queue, offset },
            GroupCommit);
        round_trip!(GroupFetch { group: group.clone(), topic: topic.clone(), queue }, GroupFetch);
        round_trip!(GroupOffset { offset: present.then_some(offset) }, GroupOffset);
        round_trip!(GroupDescription { group, queues: vec![GroupQueueLag { topic, queue,
            committed_offset: numbers.3, max_offset: numbers.4 }] }, GroupDescription);
    }

    #[test]
    fn produce_and_pull_round_trip(
        topic in name(), queue in any::<u32>(),
        messages in proptest::collection::vec(owned_message(), 1..6),
        offsets in any::<(u64, u64, u64)>(),
    ) {
        let refs: Vec<MessageRef<'_>> = messages.iter().map(|(t, k, p, b)| MessageRef {
            born_timestamp_ms: *t, key: k, properties: p, body: b }).collect();
        let request = ProduceRequest { topic: &topic, queue, messages: refs };
        let mut out = Vec::new();
        request.encode(&mut out);
        prop_assert_eq!(ProduceRequest::decode(&out).unwrap(), request);

        let pulled: Vec<PulledMessageRef<'_>> = messages.iter().enumerate().map(|(i, (t, k, p, b))|
            PulledMessageRef { queue_offset: i as u64, born_timestamp_ms: *t,
                store_timestamp_ms: t.wrapping_add(1), key: k, properties: p, body: b }).collect();
        let response = PullResponse { summary: PullSummary { next_offset: offsets.0,
            min_offset: offsets.1, max_offset: offsets.2 }, messages: pulled };
        let mut out = Vec::new();
        response.encode(&mut out);
        prop_assert_eq!(PullResponse::decode(&out).unwrap(), response);
    }

    #[test]
    fn frames_round_trip(flags in any::<u8>(), opcode in any::<u16>(), status in any::<u16>(),
                         request_id in any::<u64>(), body in bytes(256)) {
        let header = FrameHeader { flags, opcode, status, request_id };
        let mut out = Vec::new();
        encode_frame(&mut out, header, &body);
        let frame = FrameDecoder::new(1024).decode(&out).unwrap().unwrap();
        prop_assert_eq!(frame.header, header);
        prop_assert_eq!(frame.body, &body[..]);
        prop_assert_eq!(frame.wire_len(), out.len());
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(input in bytes(512)) {
        let _ = FrameDecoder::new(256).decode(&input);
        let _ = ProduceRequest::decode(&input);
        let _ = ProduceResponse::decode(&input);
        let _ = PullRequest::decode(&input);
        let _ = PullResponse::decode(&input);
        let _ = QueueRef::decode(&input);
        let _ = QueueStats::decode(&input);
        let _ = TopicInfo::decode(&input);
        let _ = Metadata::decode(&input);
        let _ = TopicCreate::decode(&input);
        let _ = Name::decode(&input);
        let _ = TopicList::decode(&input);
        let _ = TopicDescription::decode(&input);
        let _ = GroupCommit::decode(&input);
        let _ = GroupFetch::decode(&input);
        let _ = GroupOffset::decode(&input);
        let _ = GroupDescription::decode(&input);
        let _ = decode_error_message(&input);
    }

    #[test]
    fn truncated_frames_are_incomplete(body in bytes(64), cut in any::<prop::sample::Index>()) {
        let mut out = Vec::new();
        encode_frame(&mut out, FrameHeader::request(Opcode::Produce, 9), &body);
        let cut = cut.index(out.len());
        prop_assert_eq!(FrameDecoder::new(1024).decode(&out[..cut]), Ok(None));
    }

    /// The crc covers the body and the length, magic and version are checked, so damage there
    /// is an error or "need more bytes", never a different frame. (flags, opcode, status and
    /// request id are not covered by the crc; see docs/protocol.md.)
    #[test]
    fn corrupted_frames_are_never_a_wrong_frame(
        body in bytes(64), at in any::<prop::sample::Index>(), flip in 1u8..=255,
    ) {
        let mut out = Vec::new();
        encode_frame(&mut out, FrameHeader::request(Opcode::Produce, 9), &body);
        let checked: Vec<usize> = (0..7).chain(20..out.len()).collect();
        let at = checked[at.index(checked.len())];
        out[at] ^= flip;
        match FrameDecoder::new(1024).decode(&out) {
            Ok(None) | Err(_) => {}
            Ok(Some(frame)) => {
                // Shortening the length may land on a prefix whose crc happens to match; that
                // frame must still not claim the original body.
                prop_assert!(at < 4 && frame.body != &body[..]);
            }
        }
    }
}

/// The produce frame shown in docs/protocol.md, byte for byte.
pub fn example_produce_frame() -> Vec<u8> {
    let mut body = Vec::new();
    encode_produce(
        &mut body,
        "orders",
        1,
        &[MessageRef {
            born_timestamp_ms: 1_700_000_000_000,
            key: b"k1",
            properties: b"",
            body: b"hello",
        }],
    );
    let mut out = Vec::new();
    encode_frame(&mut out, FrameHeader::request(Opcode::Produce, 1), &body);
    out
}

pub fn hex_dump(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .enumerate()
        .map(|(i, chunk)| {
            let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
            format!("{:04x}  {}\n", i * 16, hex.join(" "))
        })
        .collect()
}

#[test]
fn docs_hex_example_matches_the_encoder() {
    let frame = example_produce_frame();
    assert_eq!(
        frame.len(),
        FRAME_HEADER_BYTES + 2 + 6 + 4 + 4 + 8 + 2 + 2 + 2 + 4 + 5
    );
    let dump = hex_dump(&frame);
    let docs = include_str!("../../../docs/protocol.md");
    assert!(
        docs.contains(&dump),
        "docs/protocol.md must contain:\n{dump}"
    );
    let crc = u32::from_le_bytes(frame[20..24].try_into().unwrap());
    assert!(docs.contains(&format!("{crc:#010x}")), "crc {crc:#010x}");
}
