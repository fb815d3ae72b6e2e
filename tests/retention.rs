//! Retention without a broker process: segment deletion in the store, interrupted at every
//! step by a simulated crash, recovery of a half-done deletion (also at the default 1 GiB
//! segment size, on sparse files on the real disk), and the shard's cleaning stage on the
//! simulated clock: age expiry only inside the `delete_when` hours, disk pressure, and
//! DISK_FULL above the warning ratio until usage falls.

use glommio::LocalExecutorBuilder;
use ringmq::clock::Clock;
use ringmq::config::BrokerConfig;
use ringmq::protocol::admin::Retention;
use ringmq::protocol::message::{
    MessageRef, ProduceRequest, PullRequest, PullResponse, TopicCreate,
};
use ringmq::protocol::{Opcode, Status};
use ringmq::shard::{handlers, Shard};
use ringmq::store::checkpoint::{checkpoint_path, Checkpoint};
use ringmq::store::commitlog::segment_file_name;
use ringmq::store::consume_queue::{self, CqEntry, CQ_ENTRY_BYTES};
use ringmq::store::glommio_disk::GlommioDisk;
use ringmq::store::io::DiskSpace;
use ringmq::store::record::{self, Decoded, RecordInput};
use ringmq::store::{AppendError, QueueKey, ShardStore, StoreConfig};
use ringmq::testing::{driver, SimClock, SimDisk};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

const KEY: QueueKey = QueueKey {
    topic_id: 3,
    queue: 0,
};
const SEGMENT: u64 = 64 * 1024;

fn store_config() -> StoreConfig {
    StoreConfig {
        dir: PathBuf::from("/store/shard-0"),
        segment_size_bytes: SEGMENT,
        write_buffer_bytes: 32 * 1024,
        max_record_bytes: 4 * 1024,
        adopt_unknown_queues: false,
        // Small files and tail, so deletions cross consume-queue files and old entries come
        // from them.
        cq_file_entries: 64,
        cq_cache_entries: 16,
    }
}

fn body(i: u64) -> Vec<u8> {
    let mut b = format!("record-{i}-").into_bytes();
    b.resize(900, b'a' + (i % 26) as u8);
    b
}

fn input(body: &[u8], store_timestamp_ms: u64) -> RecordInput<'_> {
    RecordInput {
        topic_id: KEY.topic_id,
        queue_id: KEY.queue,
        queue_offset: 0,
        born_timestamp_ms: 1,
        store_timestamp_ms,
        topic: "retained",
        key: b"",
        properties: b"",
        body,
    }
}

/// Appends records `range`, record `i` stored at time `i`, preparing segments and flushing
/// as needed; ends flushed with metadata persisted.
async fn fill(store: &ShardStore<SimDisk>, range: std::ops::Range<u64>) {
    for i in range {
        let b = body(i);
        loop {
            match store.append(&input(&b, i)) {
                Ok(a) => {
                    assert_eq!(a.queue_offset, i);
                    break;
                }
                Err(AppendError::SegmentNotReady) => store.prepare_next_segment().await.unwrap(),
                Err(AppendError::BufferFull) => {
                    store.flush().await.unwrap();
                }
                Err(e) => panic!("append {i}: {e}"),
            }
        }
    }
    store.flush().await.unwrap();
    store.persist_metadata().await.unwrap();
}

/// Every entry from the queue's minimum reads back as the record of its offset.
async fn check_readable_from_min(store: &ShardStore<SimDisk>) -> (u64, u64) {
    let (min, max) = store.queue_range(KEY).expect("the queue");
    for (i, entry) in store
        .entries(KEY, min, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .enumerate()
    {
        let offset = min + i as u64;
        let bytes = store
            .read_record(entry)
            .await
            .expect("a retained record reads");
        let Ok(Decoded::Record(view)) = record::decode(&bytes, entry.commitlog_offset) else {
            panic!("offset {offset} does not decode");
        };
        assert_eq!(view.queue_offset, offset);
        assert_eq!(view.body, body(offset).as_slice());
    }
    (min, max)
}

fn segment_exists(disk: &SimDisk, base: u64) -> bool {
    let path = store_config()
        .dir
        .join("commitlog")
        .join(segment_file_name(base));
    disk.paths().contains(&path)
}

/// A deletion cut by a crash after each of its steps (checkpoint, queue trim, unlink) and
/// after none: recovery ends with the segment gone, the head past it, the queue's minimum at
/// the first record after it, and every retained record readable. Never as lost data.
#[test]
fn a_crash_at_any_step_of_a_deletion_recovers_to_the_head() {
    for steps in 0..=3 {
        for seed in 0..4u64 {
            futures_lite::future::block_on(async {
                let disk = SimDisk::new();
                let (store, _) = ShardStore::open(disk.clone(), store_config(), &[KEY])
                    .await
                    .unwrap();
                fill(&store, 0..200).await;
                let candidates = store.retention_candidates();
                assert!(candidates.len() >= 2, "200 records fill three segments");
                assert_eq!(candidates[0], 0);
                let expected_min = store
                    .entries(KEY, 0, usize::MAX)
                    .await
                    .unwrap()
                    .iter()
                    .position(|e| e.commitlog_offset >= SEGMENT)
                    .unwrap() as u64;
                if steps >= 1 {
                    let head = store.advance_log_head(0).await.unwrap();
                    assert_eq!(head, SEGMENT);
                    if steps >= 2 {
                        store.expire_queues_before(head).await.unwrap();
                        assert_eq!(store.queue_range(KEY), Some((expected_min, 200)));
                    }
                    if steps >= 3 {
                        store.remove_expired_segment(0).await.unwrap();
                    }
                }
                let survivor = disk.crash(seed);
                let (store, report) = ShardStore::open(survivor.clone(), store_config(), &[KEY])
                    .await
                    .unwrap_or_else(|e| panic!("steps {steps} seed {seed}: recovery: {e}"));
                assert_eq!(report.truncation_reason, None, "steps {steps}");
                assert_eq!(store.max_offset(), report.max_offset);
                let (min, max) = check_readable_from_min(&store).await;
                assert_eq!(max, 200, "steps {steps}: nothing after the head is lost");
                if steps == 0 {
                    assert_eq!((min, store.log_head()), (0, 0));
                    assert!(segment_exists(&survivor, 0));
                } else {
                    assert_eq!(store.log_head(), SEGMENT, "steps {steps} seed {seed}");
                    assert_eq!(min, expected_min, "steps {steps} seed {seed}");
                    assert!(
                        !segment_exists(&survivor, 0),
                        "steps {steps}: recovery finishes the recorded deletion"
                    );
                }
            });
        }
    }
}

/// The oldest segment's file gone without the checkpoint saying so (removed by hand, or a
/// checkpoint from before retention): the log starts at its oldest segment, not at a loss.
#[test]
fn a_missing_front_segment_is_where_the_log_starts() {
    futures_lite::future::block_on(async {
        let disk = SimDisk::new();
        let (store, _) = ShardStore::open(disk.clone(), store_config(), &[KEY])
            .await
            .unwrap();
        fill(&store, 0..200).await;
        store.close().await.unwrap();
        let path = store_config()
            .dir
            .join("commitlog")
            .join(segment_file_name(0));
        ringmq::store::io::Disk::remove(&disk, &path).await.unwrap();
        let (store, report) = ShardStore::open(disk.clone(), store_config(), &[KEY])
            .await
            .expect("recovery");
        assert_eq!(report.truncation_reason, None);
        assert_eq!(store.log_head(), SEGMENT);
        let (min, max) = check_readable_from_min(&store).await;
        assert!(min > 0);
        assert_eq!(max, 200);
    });
}

/// A segment sealed before a restart, which no scan of this run covered, is read once for
/// its newest store timestamp; the segment being written is never a candidate.
#[test]
fn the_age_of_a_sealed_segment_is_read_back_after_a_restart() {
    futures_lite::future::block_on(async {
        let disk = SimDisk::new();
        let (store, _) = ShardStore::open(disk.clone(), store_config(), &[KEY])
            .await
            .unwrap();
        fill(&store, 0..200).await;
        let entries = store.entries(KEY, 0, usize::MAX).await.unwrap();
        let newest_in_first = entries
            .iter()
            .rposition(|e| e.commitlog_offset < SEGMENT)
            .unwrap() as u64;
        store.close().await.unwrap();
        let (store, _) = ShardStore::open(disk, store_config(), &[KEY])
            .await
            .unwrap();
        assert_eq!(
            store.newest_store_ms(0).await.unwrap(),
            Some(newest_in_first)
        );
        let current = store.max_offset() / SEGMENT * SEGMENT;
        assert!(!store.retention_candidates().contains(&current));
        assert!(store.advance_log_head(current).await.is_err());
    });
}

/// Writes `records` (queue offsets from `first_offset`) into a sparse segment file at `base`
/// and returns their consume-queue entries.
fn write_sparse_segment(
    dir: &Path,
    base: u64,
    segment: u64,
    first_offset: u64,
    records: u64,
) -> Vec<CqEntry> {
    let mut bytes = Vec::new();
    let mut entries = Vec::new();
    for i in 0..records {
        let b = body(first_offset + i);
        let record = RecordInput {
            queue_offset: first_offset + i,
            ..input(&b, 1)
        };
        let at = base + bytes.len() as u64;
        let mut out = vec![0u8; record.encoded_len()];
        record.encode_into(at, &mut out);
        entries.push(CqEntry {
            commitlog_offset: at,
            size: out.len() as u32,
            tag_hash: record::key_hash(b""),
        });
        bytes.extend_from_slice(&out);
    }
    let path = dir.join("commitlog").join(segment_file_name(base));
    let file = std::fs::File::create(&path).unwrap();
    std::io::Write::write_all(&mut &file, &bytes).unwrap();
    file.set_len(segment).unwrap();
    entries
}

/// The default 1 GiB segments, on sparse files: a store whose checkpoint moved the head past
/// segment 0, once with segment 0 still there (the crash came before the unlink) and once
/// with it gone, recovers promptly (a recovery that hung at this size went unseen before)
/// with the first segment removed and everything after the head readable.
#[test]
fn a_half_done_deletion_recovers_at_the_default_segment_size() {
    let segment = BrokerConfig::default().segment_size_bytes;
    assert_eq!(segment, 1 << 30);
    for file_left in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shard-0");
        std::fs::create_dir_all(dir.join("commitlog")).unwrap();
        let mut entries = Vec::new();
        if file_left {
            entries = write_sparse_segment(&dir, 0, segment, 0, 50);
        } else {
            entries.extend((0..50).map(|i| CqEntry {
                commitlog_offset: i * 1024,
                size: 1000,
                tag_hash: 0,
            }));
        }
        entries.extend(write_sparse_segment(&dir, segment, segment, 50, 50));
        let end = entries.last().unwrap().end_offset();
        // The pre-split single-file layout: recovery migrates it as well.
        let queue = consume_queue::legacy_path(&dir, KEY);
        std::fs::create_dir_all(queue.parent().unwrap()).unwrap();
        let mut cq = vec![0u8; entries.len() * CQ_ENTRY_BYTES];
        for (i, e) in entries.iter().enumerate() {
            consume_queue::encode_entry(e, &mut cq[i * CQ_ENTRY_BYTES..]);
        }
        std::fs::write(&queue, cq).unwrap();
        let checkpoint = Checkpoint {
            flushed_offset: end,
            dispatched_offset: end,
            log_head: segment,
        };
        std::fs::write(checkpoint_path(&dir), checkpoint.encode()).unwrap();
        let config = StoreConfig {
            dir: dir.clone(),
            segment_size_bytes: segment,
            write_buffer_bytes: 16 << 20,
            max_record_bytes: 4 << 20,
            adopt_unknown_queues: false,
            // The broker's defaults.
            cq_file_entries: ringmq::config::BrokerConfig::default().consume_queue_file_entries,
            cq_cache_entries: ringmq::config::BrokerConfig::default().consume_queue_cache_entries,
        };
        let started = std::time::Instant::now();
        LocalExecutorBuilder::default()
            .spawn(move || async move {
                ringmq::store::glommio_disk::prime_iopoll_probe(&config.dir)
                    .await
                    .unwrap();
                let (store, report) = ShardStore::open(GlommioDisk::new(), config, &[KEY])
                    .await
                    .expect("recovery");
                assert_eq!(report.truncation_reason, None);
                assert_eq!(report.max_offset, end);
                assert_eq!(store.log_head(), segment);
                assert_eq!(store.queue_range(KEY), Some((50, 100)));
                for (i, entry) in store
                    .entries(KEY, 50, usize::MAX)
                    .await
                    .unwrap()
                    .into_iter()
                    .enumerate()
                {
                    let bytes = store.read_record(entry).await.expect("read");
                    let Ok(Decoded::Record(view)) = record::decode(&bytes, entry.commitlog_offset)
                    else {
                        panic!("record {i} does not decode");
                    };
                    assert_eq!(view.body, body(50 + i as u64).as_slice());
                }
                store.close().await.unwrap();
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(
            !dir.join("commitlog").join(segment_file_name(0)).exists(),
            "file left {file_left}: segment 0 is removed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "recovery at 1 GiB segments took {:?}",
            started.elapsed()
        );
    }
}

// The cleaning stage on the simulated clock and disk.

const TOPIC: &str = "aging";
/// The broker's records may be 128 KiB and more (names and properties): the shard tests use
/// larger segments than the store tests, as tests/shard_sim.rs does.
const SHARD_SEGMENT: u64 = 256 * 1024;
/// Messages written before each check: a little over two segments.
const MESSAGES: u64 = 600;

fn broker_config(delete_when: &str) -> BrokerConfig {
    BrokerConfig {
        store_dir: PathBuf::from("/broker"),
        segment_size_bytes: SHARD_SEGMENT,
        write_buffer_bytes: 160 * 1024,
        max_message_bytes: 1024,
        file_reserved_time_ms: 60_000,
        delete_when: delete_when.to_string(),
        clean_resource_interval_ms: 100,
        ..BrokerConfig::default()
    }
}

fn encode(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    f(&mut out);
    out
}

async fn produce(shard: &Rc<Shard<SimDisk>>, n: u64) -> Status {
    let b = body(n);
    let request = encode(|out| {
        ProduceRequest {
            topic: TOPIC,
            queue: 0,
            messages: vec![MessageRef {
                born_timestamp_ms: n,
                key: b"",
                properties: b"",
                body: &b,
            }],
        }
        .encode(out)
    });
    handlers::handle(shard, Opcode::Produce, &request)
        .await
        .status
}

/// A pull's status and, when OK, its first message's body.
async fn pull(shard: &Rc<Shard<SimDisk>>, offset: u64) -> (Status, Option<Vec<u8>>) {
    let request = encode(|out| {
        PullRequest {
            topic: TOPIC.to_string(),
            queue: 0,
            offset,
            max_messages: 4,
            max_bytes: 64 * 1024,
            max_wait_ms: 0,
        }
        .encode(out)
    });
    let reply = handlers::handle(shard, Opcode::Pull, &request).await;
    let first = (reply.status == Status::Ok).then(|| {
        let response = PullResponse::decode(&reply.body).unwrap();
        assert_eq!(response.messages[0].queue_offset, offset);
        response.messages[0].body.to_vec()
    });
    (reply.status, first)
}

async fn delete_expired(shard: &Rc<Shard<SimDisk>>) -> Retention {
    let reply = handlers::handle(shard, Opcode::DeleteExpired, &[]).await;
    assert_eq!(reply.status, Status::Ok);
    serde_json::from_slice(&reply.body).unwrap()
}

/// Opens a one-shard broker on `disk`, creates the topic and writes `MESSAGES` messages, then runs `check` with the background tasks going.
fn with_shard<F, Fut>(clock: &SimClock, disk: &SimDisk, config: BrokerConfig, check: F)
where
    F: FnOnce(Rc<Shard<SimDisk>>, SimClock) -> Fut + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let (clock, inner, disk) = (clock.clone(), clock.clone(), disk.clone());
    driver::run(&clock, Duration::from_secs(24 * 3600), move || async move {
        let shard = Shard::open_for_test(disk, Rc::new(inner.clone()), config)
            .await
            .expect("open");
        let create = encode(|out| {
            TopicCreate {
                name: TOPIC.to_string(),
                queue_count: 1,
            }
            .encode(out)
        });
        assert_eq!(
            handlers::handle(&shard, Opcode::TopicCreate, &create)
                .await
                .status,
            Status::Ok
        );
        let background = shard.spawn_background();
        for n in 0..MESSAGES {
            assert_eq!(produce(&shard, n).await, Status::Ok, "message {n}");
        }
        check(shard.clone(), inner).await;
        shard.stop(background).await.expect("stop");
    })
    .expect("the run ends");
}

/// Sleeps past a few cleaning intervals, so the cleaner has made its passes.
async fn let_cleaner_run(clock: &SimClock) {
    clock.sleep(Duration::from_millis(350)).await;
}

/// Old segments outside the `delete_when` hours stay; in them (or on an operator's request,
/// whatever the hour) they go, the one being written never; the queue's minimum follows
/// and a pull below it is OFFSET_OUT_OF_RANGE.
#[test]
fn segments_expire_by_age_only_inside_the_window() {
    let clock = SimClock::new(1);
    // The simulated wall clock starts at 22:13 UTC (the simulation's local time): "04" is
    // outside it, "22" inside.
    assert_eq!(clock.local_hour(), 22);
    for (delete_when, inside) in [("04", false), ("03;22", true), ("*", true)] {
        let clock = SimClock::new(7);
        let disk = SimDisk::new();
        with_shard(
            &clock,
            &disk,
            broker_config(delete_when),
            move |shard, clock| async move {
                let_cleaner_run(&clock).await;
                assert_eq!(
                    shard.store().log_head(),
                    0,
                    "{delete_when}: nothing is old yet"
                );
                clock.jump_wall(Duration::from_secs(61));
                // Still the same hour: 22:13 plus a minute.
                assert_eq!(clock.local_hour(), 22);
                let_cleaner_run(&clock).await;
                let current = shard.store().max_offset() / SHARD_SEGMENT * SHARD_SEGMENT;
                if inside {
                    assert_eq!(shard.store().log_head(), current, "{delete_when}");
                } else {
                    assert_eq!(
                        shard.store().log_head(),
                        0,
                        "{delete_when}: outside the hours"
                    );
                    let answer = delete_expired(&shard).await;
                    let deleted = &answer.shards[0].deleted;
                    assert_eq!(deleted.len() as u64, current / SHARD_SEGMENT, "{answer:?}");
                    assert!(deleted.iter().all(|d| d.reason == "expired"));
                    assert_eq!(shard.store().log_head(), current);
                }
                let stats = shard.snapshot();
                assert_eq!(
                    stats.counter(ringmq::metrics::Counter::RetentionDeletedSegments),
                    current / SHARD_SEGMENT
                );
                let (min, max) = shard
                    .store()
                    .queue_range(QueueKey {
                        topic_id: shard.topic(TOPIC).unwrap().topic_id,
                        queue: 0,
                    })
                    .unwrap();
                assert!(min > 0 && max == MESSAGES, "{min}..{max}");
                assert_eq!(pull(&shard, 0).await.0, Status::OffsetOutOfRange);
                let (status, first) = pull(&shard, min).await;
                assert_eq!(status, Status::Ok);
                assert_eq!(first.unwrap(), body(min));
                // Appends go on after the deletions.
                assert_eq!(produce(&shard, MESSAGES).await, Status::Ok);
            },
        );
        // And the head survives a restart.
        let reopened = driver::run(&clock, Duration::from_secs(60), {
            let (disk, clock) = (disk.clone(), clock.clone());
            move || async move {
                let shard = Shard::open_for_test(disk, Rc::new(clock), broker_config("04"))
                    .await
                    .unwrap();
                shard.store().log_head()
            }
        })
        .unwrap();
        assert!(reopened > 0, "{delete_when}");
    }
}

/// Above disk_max_used_space_ratio the oldest segments go whatever their age and the hour;
/// above disk_space_warning_ratio produces are refused with DISK_FULL, and accepted again
/// once usage falls.
#[test]
fn disk_pressure_deletes_the_oldest_and_full_disk_refuses_appends_until_it_falls() {
    let clock = SimClock::new(3);
    let disk = SimDisk::new();
    with_shard(
        &clock,
        &disk,
        broker_config("04"),
        |shard, clock| async move {
            let disk = shard.disk().clone();
            let space = |used: u64| {
                Some(DiskSpace {
                    used_bytes: used,
                    available_bytes: 100 - used,
                })
            };
            disk.set_space(space(80));
            let_cleaner_run(&clock).await;
            let current = shard.store().max_offset() / SHARD_SEGMENT * SHARD_SEGMENT;
            assert_eq!(
                shard.store().log_head(),
                current,
                "every sealed segment goes under pressure, young as it is"
            );
            assert_eq!(
                produce(&shard, MESSAGES).await,
                Status::Ok,
                "80% is below 90%"
            );
            disk.set_space(space(95));
            let_cleaner_run(&clock).await;
            assert!(shard.cleaning().appends_refused());
            assert_eq!(produce(&shard, MESSAGES + 1).await, Status::DiskFull);
            let gauges = shard.snapshot().gauges;
            assert!(
                gauges.contains(&("retention_appends_refused", 1)),
                "{gauges:?}"
            );
            assert!(
                gauges.contains(&("disk_used_ratio_ppm", 950_000)),
                "{gauges:?}"
            );
            // Pulls still work while appends are refused.
            let min = shard.store().queue_range(QueueKey {
                topic_id: shard.topic(TOPIC).unwrap().topic_id,
                queue: 0,
            });
            assert_eq!(pull(&shard, min.unwrap().0).await.0, Status::Ok);
            disk.set_space(space(50));
            let_cleaner_run(&clock).await;
            assert!(!shard.cleaning().appends_refused());
            assert_eq!(produce(&shard, MESSAGES + 1).await, Status::Ok);
        },
    );
}

/// A checkpoint write that fails leaves the head where it was and the segment in place, and
/// the next attempt deletes it; a failed deletion is never half-applied in memory.
#[test]
fn a_failed_checkpoint_write_keeps_the_segment_and_a_retry_deletes_it() {
    futures_lite::future::block_on(async {
        let disk = SimDisk::new();
        let (store, _) = ShardStore::open(disk.clone(), store_config(), &[KEY])
            .await
            .unwrap();
        fill(&store, 0..200).await;
        disk.inject(ringmq::testing::SimFault::Write);
        assert!(store.advance_log_head(0).await.is_err());
        assert_eq!(store.log_head(), 0);
        assert_eq!(store.retention_candidates().first(), Some(&0));
        assert!(
            store.remove_expired_segment(0).await.is_err(),
            "not before the head"
        );
        assert!(segment_exists(&disk, 0));
        assert_eq!(check_readable_from_min(&store).await, (0, 200));
        let head = store.advance_log_head(0).await.unwrap();
        store.expire_queues_before(head).await.unwrap();
        store.remove_expired_segment(0).await.unwrap();
        assert!(!segment_exists(&disk, 0));
        let (min, max) = check_readable_from_min(&store).await;
        assert!(min > 0 && max == 200);
    });
}

/// Every segment gone and the checkpoint's head past zero: the log resumes at the head (its
/// next append lands there), not at offset 0 under entries that point past it.
#[test]
fn with_every_segment_gone_the_log_resumes_at_the_head() {
    futures_lite::future::block_on(async {
        let disk = SimDisk::new();
        let (store, _) = ShardStore::open(disk.clone(), store_config(), &[KEY])
            .await
            .unwrap();
        fill(&store, 0..200).await;
        let head = store.advance_log_head(0).await.unwrap();
        store.close().await.unwrap();
        for path in disk.paths() {
            if path.parent().is_some_and(|d| d.ends_with("commitlog")) {
                ringmq::store::io::Disk::remove(&disk, &path).await.unwrap();
            }
        }
        let (store, report) = ShardStore::open(disk.clone(), store_config(), &[KEY])
            .await
            .expect("recovery");
        assert_eq!(report.max_offset, head);
        assert_eq!(store.log_head(), head);
        assert_eq!(store.max_offset(), head);
    });
}
