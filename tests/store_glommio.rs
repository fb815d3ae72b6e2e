//! ShardStore on the real disk: O_DIRECT through glommio in a temporary directory.

use glommio::LocalExecutorBuilder;
use ringmq::store::glommio_disk::{prime_iopoll_probe, GlommioDisk};
use ringmq::store::record::{self, Decoded, RecordInput};
use ringmq::store::{AppendError, QueueKey, ShardStore, StoreConfig};

const KEY: QueueKey = QueueKey {
    topic_id: 9,
    queue: 0,
};

fn input(body: &[u8]) -> RecordInput<'_> {
    RecordInput {
        topic_id: KEY.topic_id,
        queue_id: KEY.queue,
        queue_offset: 0,
        born_timestamp_ms: 1,
        store_timestamp_ms: 2,
        topic: "glommio",
        key: b"key",
        properties: b"",
        body,
    }
}

fn body(i: usize) -> Vec<u8> {
    let mut b = format!("record-{i}-").into_bytes();
    b.resize(300 + i % 700, (i % 251) as u8);
    b
}

async fn append_all(store: &ShardStore<GlommioDisk>, range: std::ops::Range<usize>) {
    for i in range {
        let b = body(i);
        loop {
            match store.append(&input(&b)) {
                Ok(a) => {
                    assert_eq!(a.queue_offset, i as u64);
                    break;
                }
                Err(AppendError::SegmentNotReady) => store.prepare_next_segment().await.unwrap(),
                Err(AppendError::BufferFull) => {
                    store.flush().await.unwrap();
                }
                Err(e) => panic!("append {i}: {e}"),
            }
        }
        if store.needs_next_segment() {
            store.prepare_next_segment().await.unwrap();
        }
    }
}

async fn check_all(store: &ShardStore<GlommioDisk>, count: usize) {
    assert_eq!(store.queue_range(KEY), Some((0, count as u64)));
    for (i, entry) in store
        .entries(KEY, 0, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .enumerate()
    {
        let bytes = store.read_record(entry).await.unwrap();
        let Ok(Decoded::Record(view)) = record::decode(&bytes, entry.commitlog_offset) else {
            panic!("record {i} does not decode");
        };
        assert_eq!(view.body, &body(i)[..], "record {i}");
        assert_eq!(view.queue_offset, i as u64);
    }
}

#[test]
fn append_flush_read_close_reopen_and_roll_on_a_real_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("shard-0");
    LocalExecutorBuilder::default()
        .spawn(move || async move {
            prime_iopoll_probe(dir.path()).await.unwrap();
            let config = StoreConfig {
                dir: store_dir,
                segment_size_bytes: 128 * 1024,
                write_buffer_bytes: 32 * 1024,
                max_record_bytes: 8 * 1024,
                adopt_unknown_queues: false,
                cq_file_entries: 1024,
                cq_cache_entries: 64,
            };
            let disk = GlommioDisk::new();
            let (store, report) = ShardStore::open(disk, config.clone(), &[KEY])
                .await
                .unwrap();
            assert!(!report.unclean_shutdown);
            append_all(&store, 0..50).await;
            let flushed = store.flush().await.unwrap();
            assert_eq!(flushed, store.max_offset());
            check_all(&store, 50).await;
            // Past the first segment: the roll writes the marker and the next head.
            append_all(&store, 50..600).await;
            store.flush().await.unwrap();
            assert!(store.max_offset() > 2 * config.segment_size_bytes);
            check_all(&store, 600).await;
            store.close().await.unwrap();
            drop(store);

            let (store, report) = ShardStore::open(disk, config.clone(), &[KEY])
                .await
                .unwrap();
            assert!(!report.unclean_shutdown);
            assert_eq!(report.scanned_bytes, 0);
            check_all(&store, 600).await;
            append_all(&store, 600..620).await;
            store.flush().await.unwrap();
            drop(store);

            // Not closed: recovery scans from the last checkpoint and keeps the flushed tail.
            let (store, report) = ShardStore::open(disk, config, &[KEY]).await.unwrap();
            assert!(report.unclean_shutdown);
            assert_eq!(report.truncation_reason, None);
            check_all(&store, 620).await;
            store.close().await.unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
}

/// Single requests of 1, 4, 8 and 16 MiB through the storage seam on a fresh executor, as
/// recovery issues them right after start-up. Requests above the device's limit
/// (`max_sectors_kb`, 4 MiB on this project's disks) used to hang the executor for good
/// (glommio#633); the seam now cuts them, so each one completes and reads back what was
/// written. A deadline turns a regression into a failure instead of a hung test.
#[test]
fn large_reads_and_writes_complete_on_a_fresh_executor() {
    use ringmq::store::io::{Disk, DiskFile};
    const MIB: usize = 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let executor = LocalExecutorBuilder::default()
        .spawn(move || async move {
            prime_iopoll_probe(&path).await.unwrap();
            let disk = GlommioDisk::new();
            let file = disk.open(&path.join("large"), true).await.unwrap();
            assert_eq!(file.max_io_bytes() % 4096, 0);
            for size_mib in [1usize, 4, 8, 16] {
                let len = size_mib * MIB;
                let bytes: Vec<u8> = (0..len).map(|i| (i / 4096 + size_mib) as u8).collect();
                file.write_bytes_at(&bytes, 0).await.unwrap();
                file.fdatasync().await.unwrap();
                let back = file.read_at(0, len).await.unwrap();
                assert!(back == bytes, "{size_mib} MiB read back differs");
                let unaligned = file.read_at(4096 + 17, len - 8192).await.unwrap();
                assert!(unaligned[..] == bytes[4096 + 17..len - 4096 + 17]);
                done_tx.send(size_mib).unwrap();
            }
        })
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for size_mib in [1usize, 4, 8, 16] {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match done_rx.recv_timeout(left) {
            Ok(done) => assert_eq!(done, size_mib),
            Err(_) => panic!("a {size_mib} MiB direct read or write did not complete in 60 s"),
        }
    }
    executor.join().unwrap();
}
