//! Target for the client's side of the protocol: what a hostile or broken broker can send back.

use super::Input;
use crate::client::{Response, DEFAULT_MAX_FRAME_BYTES};
use crate::protocol::codes::{Opcode, Status};
use crate::protocol::frame::{encode_frame, FrameDecoder, FrameHeader, FLAG_RESPONSE};
use crate::protocol::message::*;
use crate::protocol::requests::{for_each_request, ProduceResult, PullResult, RejectResult};
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
        if let Ok((status, body)) = black_box(response.into_result("fuzz")) {
            if let Some(opcode) = Opcode::from_u16(frame.header.opcode) {
                response_body(opcode, status, &body);
            }
        }
    }
}

/// The decoder `Client::call` runs for `opcode`'s declared response
/// (`protocol::requests::for_each_request!`): whatever it accepts encodes to bytes that decode
/// and encode the same again, and to the very input where the response is canonical.
fn response_body(opcode: Opcode, status: Status, body: &[u8]) {
    for_each_request!(client_decoders, opcode, status, body);
    if opcode == Opcode::MetadataSnapshot {
        // The slave's metadata copy reads the snapshot with the broker's own type.
        json::<MetadataSnapshot>(body);
    }
}

macro_rules! client_decoders {
    (($opcode:expr, $status:expr, $body:expr)
        $( $op:ident = $value:literal => $wire:literal : $req:ty => $resp:ty, $what:literal
           { $($extra:tt)* }; )+
    ) => {
        match $opcode {
            $( Opcode::$op => answer_round_trip::<$resp>($status, $body), )+
        }
    };
}
use client_decoders;

fn answer_round_trip<R: crate::protocol::Response>(status: Status, body: &[u8]) {
    let Ok(value) = black_box(R::from_answer(status, body)) else {
        return;
    };
    let mut once = Vec::new();
    value.encode_answer(&mut once);
    let again = R::from_answer(status, &once).expect("a re-encoded answer decodes");
    let mut twice = Vec::new();
    again.encode_answer(&mut twice);
    assert_eq!(once, twice, "decode and encode of an answer is not stable");
    if R::canonical() {
        assert_eq!(once, body, "a canonical answer re-encodes differently");
    }
}

/// JSON bodies: whatever parses must serialize and parse again.
fn json<T: serde::de::DeserializeOwned + serde::Serialize>(body: &[u8]) {
    if let Ok(value) = black_box(serde_json::from_slice::<T>(body)) {
        let text = serde_json::to_vec(&value).expect("a parsed value serializes");
        serde_json::from_slice::<T>(&text).expect("a serialized value parses");
    }
}
