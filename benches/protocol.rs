//! Micro-benchmarks of the pure hot-path code: frame encode/decode of a 1 KiB produce request
//! and record encode + crc32c. Run with `cargo bench --bench protocol` (`-- --test` to smoke).

use divan::{black_box, Bencher};
use ringmq::protocol::frame::{encode_frame, FrameDecoder, FrameHeader};
use ringmq::protocol::message::{encode_produce, MessageRef, ProduceRequest};
use ringmq::protocol::Opcode;
use ringmq::store::record::{self, RecordInput};

const BODY_BYTES: usize = 1024;

fn main() {
    divan::main();
}

fn message(body: &[u8]) -> MessageRef<'_> {
    MessageRef {
        born_timestamp_ms: 1_700_000_000_000,
        key: b"customer-42",
        properties: b"",
        body,
    }
}

#[divan::bench]
fn produce_frame_encode(bencher: Bencher) {
    let body = vec![b'x'; BODY_BYTES];
    let mut request = Vec::with_capacity(2048);
    let mut frame = Vec::with_capacity(2048);
    bencher.bench_local(|| {
        request.clear();
        frame.clear();
        encode_produce(&mut request, "orders", 3, &[message(black_box(&body))]);
        encode_frame(
            &mut frame,
            FrameHeader::request(Opcode::Produce, 7),
            &request,
        );
        black_box(frame.len())
    });
}

#[divan::bench]
fn produce_frame_decode(bencher: Bencher) {
    let body = vec![b'x'; BODY_BYTES];
    let mut request = Vec::new();
    encode_produce(&mut request, "orders", 3, &[message(&body)]);
    let mut frame = Vec::new();
    encode_frame(
        &mut frame,
        FrameHeader::request(Opcode::Produce, 7),
        &request,
    );
    let decoder = FrameDecoder::new(4 * 1024 * 1024);
    bencher.bench_local(|| {
        let frame = decoder
            .decode(black_box(&frame))
            .expect("valid frame")
            .expect("whole frame");
        let produce = ProduceRequest::decode(frame.body).expect("valid produce");
        black_box(produce.messages.len())
    });
}

#[divan::bench]
fn record_encode_with_crc32c(bencher: Bencher) {
    let body = vec![b'x'; BODY_BYTES];
    let input = RecordInput {
        topic_id: 1,
        queue_id: 3,
        queue_offset: 0,
        born_timestamp_ms: 1_700_000_000_000,
        store_timestamp_ms: 1_700_000_000_001,
        topic: "orders",
        key: b"customer-42",
        properties: b"",
        body: &body,
    };
    let mut out = vec![0u8; input.encoded_len()];
    bencher
        .counter(divan::counter::BytesCount::new(out.len()))
        .bench_local(|| {
            black_box(&input).encode_into(4096, &mut out);
            black_box(record::decode(&out, 4096).is_ok())
        });
}
