//! Target for the client's side of the protocol: what a hostile or broken broker can send back.

use super::{round_trip, Input};
use crate::client::{ClusterStatus, Response, DEFAULT_MAX_FRAME_BYTES};
use crate::metrics::Stats;
use crate::protocol::codes::Opcode;
use crate::protocol::frame::{encode_frame, FrameDecoder, FrameHeader, FLAG_RESPONSE};
use crate::protocol::message::{
    GroupDescription, GroupOffset, Metadata, ProduceResponse, PullResponse, QueueStats,
    TopicDescription, TopicInfo, TopicList,
};
use crate::shard::handlers::metadata::MetadataSnapshot;
use std::hint::black_box;

/// Statuses that carry a response body; any other status carries an error message.
const BODY_STATUSES: [u16; 5] = [0, 1, 2, 3, 4];

/// Most response frames one input builds.
const MAX_FRAMES_PER_INPUT: usize = 16;

/// A connection's read buffer as the client parses it (`client/connection.rs`): response frames
/// with valid lengths and crc built from the input (opcode, status, request id, body), or raw
/// bytes where the input asks; each frame turned into a status and decoded with the decoder
/// the client uses for that opcode's response.
pub fn client_response(data: &[u8]) {
    let mut input = Input::new(data);
    let mut buf = Vec::new();
    for _ in 0..MAX_FRAMES_PER_INPUT {
        if input.is_empty() {
            break;
        }
        let kind = input.u8();
        let body_len = usize::from(input.u16());
        if kind & 0x80 != 0 {
            buf.extend_from_slice(input.bytes(body_len));
            continue;
        }
        let status = if kind & 0x40 != 0 {
            input.u16()
        } else {
            input.pick(&BODY_STATUSES)
        };
        let header = FrameHeader {
            flags: FLAG_RESPONSE,
            opcode: input.pick(Opcode::ALL) as u16,
            status,
            request_id: u64::from(input.u8()),
        };
        encode_frame(&mut buf, header, input.bytes(body_len));
    }
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    let mut rest = &buf[..];
    while let Ok(Some(frame)) = black_box(decoder.decode(rest)) {
        rest = &rest[frame.wire_len()..];
        let response = Response {
            header: frame.header,
            body: frame.body.to_vec(),
        };
        if let Ok((_status, body)) = black_box(response.into_result("fuzz")) {
            if let Some(opcode) = Opcode::from_u16(frame.header.opcode) {
                response_body(opcode, &body);
            }
        }
    }
}

/// The decoder the client (`client/api.rs`) and the slave's metadata copy use for `opcode`.
fn response_body(opcode: Opcode, body: &[u8]) {
    match opcode {
        Opcode::Metadata => round_trip!(body, Metadata, canonical: true),
        Opcode::Produce => round_trip!(body, ProduceResponse, canonical: true),
        Opcode::Pull => {
            if let Ok(response) = black_box(PullResponse::decode(body)) {
                let owned: Vec<_> = response.messages.iter().map(|m| m.to_owned()).collect();
                assert_eq!(owned.len(), response.messages.len());
            }
            round_trip!(body, PullResponse, canonical: true)
        }
        Opcode::QueueStats => round_trip!(body, QueueStats, canonical: true),
        Opcode::TopicCreate => round_trip!(body, TopicInfo, canonical: true),
        Opcode::TopicList => round_trip!(body, TopicList, canonical: true),
        Opcode::TopicDescribe => round_trip!(body, TopicDescription, canonical: true),
        Opcode::GroupFetch => round_trip!(body, GroupOffset, canonical: false),
        Opcode::GroupDescribe => round_trip!(body, GroupDescription, canonical: true),
        Opcode::Stats => json::<Stats>(body),
        Opcode::MetadataSnapshot => json::<MetadataSnapshot>(body),
        Opcode::ClusterStatus | Opcode::ClusterPromote | Opcode::ClusterDemote => {
            json::<ClusterStatus>(body)
        }
        Opcode::Ping | Opcode::TopicDelete | Opcode::GroupCommit => {}
    }
}

/// JSON bodies: whatever parses must serialize and parse again.
fn json<T: serde::de::DeserializeOwned + serde::Serialize>(body: &[u8]) {
    if let Ok(value) = black_box(serde_json::from_slice::<T>(body)) {
        let text = serde_json::to_vec(&value).expect("a parsed value serializes");
        serde_json::from_slice::<T>(&text).expect("a serialized value parses");
    }
}
