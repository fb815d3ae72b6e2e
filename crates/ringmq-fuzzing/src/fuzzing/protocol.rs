//! Targets for the client protocol: frames as they arrive on a broker connection, and every
//! request and response body.

use super::{round_trip, Input};
use crate::protocol::codec::Fields;
use crate::protocol::codes::{Opcode, Status};
use crate::protocol::frame::{
    begin_frame, encode_frame, finish_frame, FrameDecoder, FrameError, FrameHeader,
    FRAME_HEADER_BYTES,
};
use crate::protocol::message::*;
use crate::protocol::requests::for_each_request;
use std::hint::black_box;

/// Frame limits to decode with: the header alone, small, and the broker's default.
const MAX_FRAME_CHOICES: [usize; 4] = [FRAME_HEADER_BYTES, 1024, 64 * 1024, 16 * 1024 * 1024];

/// Raw bytes of a connection's read buffer, parsed frame after frame as the broker does. Every
/// decoded frame must re-encode to exactly the bytes it came from.
pub fn frame(data: &[u8]) {
    let mut input = Input::new(data);
    let decoder = FrameDecoder::new(input.pick(&MAX_FRAME_CHOICES));
    let mut buf = input.rest();
    loop {
        match black_box(decoder.decode(buf)) {
            Ok(Some(frame)) => {
                let (wire, rest) = buf.split_at(frame.wire_len());
                let mut encoded = Vec::new();
                encode_frame(&mut encoded, frame.header, frame.body);
                assert_eq!(encoded, wire, "a decoded frame re-encodes differently");
                buf = rest;
            }
            Ok(None) => break,
            Err(e) => {
                black_box((e.status(), e.request_id(), e.to_string()));
                break;
            }
        }
    }
}

/// A valid frame built from the input (lengths and crc32c computed, which mutation alone would
/// never find), decoded and handed to the broker's body decoder for its opcode; then the same
/// frame with one body bit flipped, which the crc must catch.
pub fn frame_structured(data: &[u8]) {
    let mut input = Input::new(data);
    let opcode = input.pick(Opcode::ALL);
    let header = FrameHeader {
        flags: input.u8(),
        opcode: opcode as u16,
        status: input.u16(),
        request_id: input.u64(),
    };
    let flip = input.u32() as usize;
    let incremental = input.u8() & 1 == 1;
    let body = input.rest();
    let mut wire = Vec::new();
    if incremental {
        let start = begin_frame(&mut wire, header);
        wire.extend_from_slice(body);
        finish_frame(&mut wire, start);
    } else {
        encode_frame(&mut wire, header, body);
    }
    let decoder = FrameDecoder::new(wire.len());
    let frame = decoder
        .decode(&wire)
        .expect("a valid frame decodes")
        .expect("a whole frame is complete");
    assert_eq!((frame.header, frame.body), (header, body));
    assert_eq!(frame.wire_len(), wire.len());
    assert_eq!(decoder.decode(&wire[..wire.len() - 1]), Ok(None));
    let too_small = FrameDecoder::new(wire.len() - 1).decode(&wire);
    assert!(
        matches!(too_small, Err(FrameError::TooLarge { request_id, .. }) if request_id == header.request_id),
        "an oversized frame is refused with its request id: {too_small:?}"
    );
    request_body(opcode, frame.body);
    if !body.is_empty() {
        let bit = flip % (body.len() * 8);
        wire[FRAME_HEADER_BYTES + bit / 8] ^= 1 << (bit % 8);
        let flipped = decoder.decode(&wire);
        assert!(
            matches!(flipped, Err(FrameError::BadCrc { .. })),
            "a flipped body bit must fail the crc: {flipped:?}"
        );
    }
}

/// The body decoder of the request `opcode` carries, as declared in
/// `protocol::requests::for_each_request!` (the broker's handlers decode with it).
pub(crate) fn request_body(opcode: Opcode, body: &[u8]) {
    for_each_request!(request_decoders, opcode, body)
}

/// One match arm per declared request: its body round-trips (to the same bytes where its
/// codecs are canonical).
macro_rules! request_decoders {
    (($opcode:expr, $body:expr)
        $( $op:ident = $value:literal => $wire:literal : $req:ty => $resp:ty, $what:literal
           { $($extra:tt)* }; )+
    ) => {
        match $opcode {
            $( Opcode::$op => round_trip!($body, $req, canonical: <$req as Fields<'_>>::canonical()), )+
        }
    };
}
use request_decoders;

/// Decoders of [`message_body`], in selector order.
const BODY_DECODERS: [fn(&[u8]); 19] = [
    |b| round_trip!(b, ProduceRequest, canonical: true),
    |b| round_trip!(b, PullRequest, canonical: true),
    |b| round_trip!(b, QueueRef, canonical: true),
    |b| round_trip!(b, TopicCreate, canonical: true),
    // Every single-name body (TopicDelete, TopicDescribe, GroupDescribe, ClusterPromote,
    // ClusterDemote).
    |b| round_trip!(b, TopicDelete, canonical: true),
    |b| round_trip!(b, GroupCommit, canonical: true),
    |b| round_trip!(b, GroupFetch, canonical: true),
    |b| round_trip!(b, ProduceResponse, canonical: true),
    |b| round_trip!(b, PullResponse, canonical: true),
    |b| round_trip!(b, QueueStats, canonical: true),
    |b| round_trip!(b, TopicInfo, canonical: true),
    |b| round_trip!(b, Metadata, canonical: true),
    |b| round_trip!(b, TopicList, canonical: true),
    |b| round_trip!(b, TopicDescription, canonical: true),
    // `present = 0` with a non-zero offset decodes to `None`, which encodes a zero offset.
    |b| round_trip!(b, GroupOffset, canonical: false),
    |b| round_trip!(b, GroupDescription, canonical: true),
    |b| {
        black_box(decode_error_message(b));
    },
    |b| {
        let mut input = Input::new(b);
        let (opcode, status) = (input.u16(), input.u16());
        if let Some(op) = Opcode::from_u16(opcode) {
            assert_eq!(op as u16, opcode);
        }
        if let Some(s) = Status::from_u16(status) {
            assert_eq!(s as u16, status);
            black_box((s.has_body(), s.to_string()));
        }
    },
    controller_bodies,
];

/// Every controller body (`protocol::controller`, opcodes 80-99): each decoder in turn on the
/// same bytes, and the leader hint of a `NOT_LEADER` message.
fn controller_bodies(b: &[u8]) {
    use crate::protocol::controller::*;
    round_trip!(b, RaftMessage, canonical: true);
    round_trip!(b, RegisterBroker, canonical: true);
    round_trip!(b, BrokerIdentity, canonical: true);
    round_trip!(b, BrokerHeartbeat, canonical: true);
    round_trip!(b, HeartbeatAnswer, canonical: true);
    round_trip!(b, AlterSyncStateSet, canonical: true);
    round_trip!(b, GroupRef, canonical: true);
    round_trip!(b, GroupState, canonical: true);
    round_trip!(b, AddPeer, canonical: true);
    round_trip!(b, RemovePeer, canonical: true);
    round_trip!(b, ResignMaster, canonical: true);
    black_box(not_leader_hint(&String::from_utf8_lossy(b)));
}

/// Every request and response body: the first byte picks the decoder, the rest is the body.
pub fn message_body(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    BODY_DECODERS[selector as usize % BODY_DECODERS.len()](body);
}
