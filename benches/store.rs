//! Micro-benchmarks of the shard store on the simulated disk (no real I/O): the append path
//! (encode into the write buffer + consume-queue dispatch) and consume-queue lookups
//! (`visible_end`, `entries`). Run with `cargo bench --bench store` (`-- --test` to smoke).

use divan::{black_box, Bencher};
use futures_lite::future::block_on;
use ringmq::store::record::RecordInput;
use ringmq::store::{AppendError, QueueKey, ShardStore, StoreConfig};
use ringmq::testing::SimDisk;
use std::path::PathBuf;

const BODY_BYTES: usize = 1024;
const QUEUE: QueueKey = QueueKey {
    topic_id: 1,
    queue: 0,
};

/// Records preloaded before lookups are measured.
const PRELOADED_RECORDS: usize = 10_000;

fn main() {
    divan::main();
}

fn open_store() -> ShardStore<SimDisk> {
    let config = StoreConfig {
        dir: PathBuf::from("/bench/shard-0"),
        segment_size_bytes: 64 * 1024 * 1024,
        write_buffer_bytes: 4 * 1024 * 1024,
        max_record_bytes: 64 * 1024,
        adopt_unknown_queues: false,
        cq_file_entries: 1024,
        cq_cache_entries: 64,
    };
    block_on(ShardStore::open(SimDisk::new(), config, &[QUEUE]))
        .expect("open store on the simulated disk")
        .0
}

fn input(body: &[u8]) -> RecordInput<'_> {
    RecordInput {
        topic_id: QUEUE.topic_id,
        queue_id: QUEUE.queue,
        queue_offset: 0,
        born_timestamp_ms: 1_700_000_000_000,
        store_timestamp_ms: 1_700_000_000_001,
        topic: "orders",
        key: b"",
        properties: b"",
        body,
    }
}

/// Appends one record, flushing or preparing a segment when the store asks to.
fn append(store: &ShardStore<SimDisk>, body: &[u8]) {
    loop {
        match store.append(&input(body)) {
            Ok(appended) => {
                black_box(appended);
                return;
            }
            Err(AppendError::BufferFull) => {
                block_on(store.flush()).expect("flush");
            }
            Err(AppendError::SegmentNotReady) => {
                block_on(store.prepare_next_segment()).expect("next segment");
            }
            Err(e) => panic!("append: {e}"),
        }
    }
}

#[divan::bench]
fn append_1kib(bencher: Bencher) {
    let store = open_store();
    let body = vec![b'x'; BODY_BYTES];
    bencher.bench_local(|| append(&store, black_box(&body)));
}

fn preloaded() -> ShardStore<SimDisk> {
    let store = open_store();
    let body = vec![b'x'; BODY_BYTES];
    for _ in 0..PRELOADED_RECORDS {
        append(&store, &body);
    }
    block_on(store.flush()).expect("flush");
    store
}

#[divan::bench]
fn consume_queue_visible_end(bencher: Bencher) {
    let store = preloaded();
    let confirmed = store.flushed_offset() / 2;
    bencher.bench_local(|| black_box(store.visible_end(QUEUE, black_box(confirmed))));
}

#[divan::bench(args = [1, 32, 256])]
fn consume_queue_entries(bencher: Bencher, count: usize) {
    let store = preloaded();
    let from = (PRELOADED_RECORDS / 2) as u64;
    bencher.bench_local(|| black_box(block_on(store.entries(QUEUE, black_box(from), count))));
}
