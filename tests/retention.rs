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
                let candidates = store.retention_candidates(u64::MAX);
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
                    let head = store.advance_log_head(0, u64::MAX).unwrap();
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
                if steps < 3 {
                    // Nothing of a deletion is durable before its unlink: the head moved in
                    // memory only, so the segment and the head are where they were. The
                    // queue may have lost the consume-queue files wholly before the head (step
                    // 2), never an entry at or after it.
                    assert_eq!(store.log_head(), 0, "steps {steps} seed {seed}");
                    assert!(segment_exists(&survivor, 0), "steps {steps}");
                    if steps == 2 {
                        assert!(min > 0 && min <= expected_min, "steps {steps}: {min}");
                    } else {
                        assert_eq!(min, 0, "steps {steps}");
                    }
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
        assert!(!store.retention_candidates(u64::MAX).contains(&current));
        assert!(store.advance_log_head(current, u64::MAX).is_err());
    });
}

/// A flipped bit in a sealed segment stops the read for its age early: its age is unknown
/// (`None`), not the age of the records before the flip, so retention keeps it.
#[test]
fn a_damaged_segment_has_no_age() {
    futures_lite::future::block_on(async {
        let disk = SimDisk::new();
        let (store, _) = ShardStore::open(disk.clone(), store_config(), &[KEY])
            .await
            .unwrap();
        fill(&store, 0..200).await;
        let entries = store.entries(KEY, 0, usize::MAX).await.unwrap();
        store.close().await.unwrap();
        // Inside the body of a record halfway through segment 0: records before it still
        // read, with older store times.
        let victim = entries[entries.len() / 6];
        assert!(victim.commitlog_offset + u64::from(victim.size) < SEGMENT);
        let path = store_config()
            .dir
            .join("commitlog")
            .join(segment_file_name(0));
        assert!(disk.flip_bit(&path, victim.commitlog_offset + 100, 3));
        let (store, _) = ShardStore::open(disk, store_config(), &[KEY])
            .await
            .unwrap();
        assert_eq!(store.newest_store_ms(0).await.unwrap(), None);
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
        // A segment goes only once a checkpoint covers it: a short interval, so the passes
        // below find the sealed segments covered.
        checkpoint_interval_ms: 50,
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

/// Under pressure a pass frees what brings the disk back under disk_max_used_space_ratio
/// (not every sealed segment); appends refused above disk_space_warning_ratio stay refused
/// until use falls a band below it.
#[test]
fn pressure_frees_its_share_and_the_refusal_has_a_band() {
    let clock = SimClock::new(5);
    let disk = SimDisk::new();
    let config = BrokerConfig {
        // Only the operator's passes below run.
        clean_resource_interval_ms: 3_600_000,
        ..broker_config("04")
    };
    with_shard(&clock, &disk, config, |shard, clock| async move {
        let disk = shard.disk().clone();
        // Sizes in segments: the share to free is computed in bytes.
        let space = |used_segments_x10: u64| {
            let used = used_segments_x10 * SHARD_SEGMENT / 10;
            Some(DiskSpace {
                used_bytes: used,
                available_bytes: 100 * SHARD_SEGMENT - used,
            })
        };
        // Past a checkpoint, so the sealed segments are covered.
        clock.sleep(Duration::from_millis(200)).await;
        let sealed = shard.store().max_offset() / SHARD_SEGMENT;
        assert!(sealed >= 2, "{sealed} sealed segments");
        // Half a segment over 75%: one segment goes, the others stay.
        disk.set_space(space(755));
        let answer = delete_expired(&shard).await;
        let deleted = &answer.shards[0].deleted;
        assert_eq!(deleted.len(), 1, "{answer:?}");
        assert_eq!(deleted[0].reason, "disk_pressure");
        assert_eq!(shard.store().log_head(), SHARD_SEGMENT);
        disk.set_space(space(950));
        delete_expired(&shard).await;
        assert!(shard.cleaning().appends_refused());
        // Below the warning ratio, inside the band: still refused.
        disk.set_space(space(890));
        delete_expired(&shard).await;
        assert!(shard.cleaning().appends_refused());
        assert_eq!(produce(&shard, MESSAGES).await, Status::DiskFull);
        disk.set_space(space(870));
        delete_expired(&shard).await;
        assert!(!shard.cleaning().appends_refused());
        assert_eq!(produce(&shard, MESSAGES).await, Status::Ok);
    });
}

/// A deletion writes nothing (finding: it needed free space and a failed consume-queue write
/// stopped the store): with every write failing it still deletes, and the write fault it never
/// reached is still pending afterwards. The checkpoint records the head at its next regular
/// write, and a restart before that starts the log at the oldest segment left.
#[test]
fn a_deletion_writes_nothing_and_works_on_a_full_disk() {
    futures_lite::future::block_on(async {
        let disk = SimDisk::new();
        let (store, _) = ShardStore::open(disk.clone(), store_config(), &[KEY])
            .await
            .unwrap();
        fill(&store, 0..200).await;
        disk.inject(ringmq::testing::SimFault::Write);
        assert!(
            store.remove_expired_segment(0).await.is_err(),
            "not before the head"
        );
        let head = store.advance_log_head(0, u64::MAX).unwrap();
        store.expire_queues_before(head).await.unwrap();
        store.remove_expired_segment(0).await.unwrap();
        assert!(!segment_exists(&disk, 0));
        let (min, max) = check_readable_from_min(&store).await;
        assert!(min > 0 && max == 200);
        assert!(
            ringmq::store::io::Disk::write_atomic(&disk, Path::new("/probe"), vec![1])
                .await
                .is_err(),
            "the deletion consumed the injected write fault: it wrote something"
        );
        let checkpoint = Checkpoint::decode(
            &ringmq::store::io::Disk::read_file(&disk, &checkpoint_path(&store_config().dir))
                .await
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(checkpoint.log_head, 0, "recorded at the next checkpoint");
        let survivor = disk.crash(1);
        let (reopened, _) = ShardStore::open(survivor, store_config(), &[KEY])
            .await
            .unwrap();
        assert_eq!(reopened.log_head(), head);
        assert_eq!(check_readable_from_min(&reopened).await, (min, 200));
    });
}

/// Retention deletes only what the last checkpoint's consume queues cover and what is
/// confirmed: a segment past either stays a candidate-in-waiting.
#[test]
fn candidates_stop_at_the_confirmed_offset_and_the_checkpoint() {
    futures_lite::future::block_on(async {
        let disk = SimDisk::new();
        let (store, _) = ShardStore::open(disk.clone(), store_config(), &[KEY])
            .await
            .unwrap();
        fill(&store, 0..200).await;
        let all = store.retention_candidates(u64::MAX);
        assert!(all.len() >= 2);
        assert_eq!(store.retention_candidates(SEGMENT), vec![0]);
        assert_eq!(store.retention_candidates(SEGMENT - 1), Vec::<u64>::new());
        assert!(store.advance_log_head(0, SEGMENT - 1).is_err());
        // Appended and flushed past another segment, but no checkpoint since: the new
        // segments wait for the consume queues on disk to cover them.
        fill_without_checkpoint(&store, 200..400).await;
        assert_eq!(store.retention_candidates(u64::MAX), all);
        store.persist_metadata().await.unwrap();
        assert!(store.retention_candidates(u64::MAX).len() > all.len());
    });
}

async fn fill_without_checkpoint(store: &ShardStore<SimDisk>, range: std::ops::Range<u64>) {
    for i in range {
        let b = body(i);
        loop {
            match store.append(&input(&b, i)) {
                Ok(_) => break,
                Err(AppendError::SegmentNotReady) => store.prepare_next_segment().await.unwrap(),
                Err(AppendError::BufferFull) => {
                    store.flush().await.unwrap();
                }
                Err(e) => panic!("append {i}: {e}"),
            }
        }
    }
    store.flush().await.unwrap();
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
        let head = store.advance_log_head(0, u64::MAX).unwrap();
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

/// An operator's pass asked for while the shard stops is answered at once (the shard is
/// stopping) rather than left waiting on a cleaner that exits without another pass.
#[test]
fn delete_expired_during_a_stop_is_answered() {
    let clock = SimClock::new(11);
    let disk = SimDisk::new();
    let inner = clock.clone();
    driver::run(&clock, Duration::from_secs(600), move || async move {
        let shard = Shard::open_for_test(disk, Rc::new(inner.clone()), broker_config("04"))
            .await
            .expect("open");
        let background = shard.spawn_background();
        let stopping = glommio::spawn_local({
            let shard = shard.clone();
            async move { shard.stop(background).await }
        });
        // The stop has begun (it refuses new work) and runs on while this request waits.
        glommio::yield_if_needed().await;
        futures_lite::future::yield_now().await;
        assert!(shard.lifecycle().is_stopping());
        let started = inner.now();
        let reply = handlers::handle(&shard, Opcode::DeleteExpired, &[]).await;
        assert_ne!(reply.status, Status::Ok);
        assert!(inner.now() - started < Duration::from_secs(1));
        stopping.await.expect("stop");
    })
    .expect("the stop and the request both end");
}

/// A queue whose consume-queue files are lost after retention deleted the front of the log is
/// rebuilt from the log head: the store opens, the queue starts at the first retained record
/// (its offset past 0, read from the record) and every retained record reads back.
#[test]
fn a_queue_rebuilt_after_deletions_opens() {
    futures_lite::future::block_on(async {
        let disk = SimDisk::new();
        let (store, _) = ShardStore::open(disk.clone(), store_config(), &[KEY])
            .await
            .unwrap();
        fill(&store, 0..200).await;
        let head = store.advance_log_head(0, u64::MAX).unwrap();
        store.expire_queues_before(head).await.unwrap();
        store.remove_expired_segment(0).await.unwrap();
        let before = check_readable_from_min(&store).await;
        assert!(before.0 > 0);
        store.close().await.unwrap();
        let dir = consume_queue::queue_dir(&store_config().dir, KEY.topic_id);
        ringmq::store::io::Disk::remove_dir_all(&disk, &dir)
            .await
            .unwrap();
        let (store, report) = ShardStore::open(disk.clone(), store_config(), &[KEY])
            .await
            .expect("a rebuild after deletions opens");
        assert!(report.consume_queue_entries_dispatched > 0, "{report:?}");
        assert_eq!(store.log_head(), head);
        assert_eq!(check_readable_from_min(&store).await, before);
    });
}

/// A SYNC_MASTER whose slave acknowledged nothing has confirmed nothing: disk pressure deletes
/// none of it (the records exist nowhere else) and the pass says why.
#[test]
fn pressure_never_deletes_what_a_sync_master_has_not_confirmed() {
    let clock = SimClock::new(13);
    let disk = SimDisk::new();
    let inner = clock.clone();
    let config = BrokerConfig {
        broker_role: ringmq::config::BrokerRole::SyncMaster,
        min_in_sync_replicas: 2,
        sync_replica_timeout_ms: 10,
        ..broker_config("*")
    };
    driver::run(&clock, Duration::from_secs(3600), move || async move {
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
        let created = handlers::handle(&shard, Opcode::TopicCreate, &create).await;
        assert_eq!(created.status, Status::Ok);
        let background = shard.spawn_background();
        for n in 0..MESSAGES {
            // Stored, but no slave answers: never OK.
            assert_ne!(produce(&shard, n).await, Status::Ok, "message {n}");
        }
        assert!(shard.store().max_offset() > 2 * SHARD_SEGMENT);
        assert_eq!(shard.confirmed_offset(), 0);
        shard.disk().set_space(Some(DiskSpace {
            used_bytes: 85,
            available_bytes: 15,
        }));
        inner.jump_wall(Duration::from_secs(3600));
        let answer = delete_expired(&shard).await;
        let row = &answer.shards[0];
        assert!(row.deleted.is_empty(), "{answer:?}");
        assert_eq!(shard.store().log_head(), 0);
        assert!(
            row.error
                .as_deref()
                .is_some_and(|e| e.contains("confirmed offset")),
            "{answer:?}"
        );
        shard.stop(background).await.expect("stop");
    })
    .expect("the run ends");
}

/// A record as a master ships it: queue offset `queue_offset`, at commitlog offset `at`.
fn shipped(queue_offset: u64, at: u64) -> Vec<u8> {
    let b = body(queue_offset);
    let input = RecordInput {
        queue_offset,
        ..input(&b, queue_offset)
    };
    let mut out = vec![0u8; input.encoded_len()];
    input.encode_into(at, &mut out);
    out
}

/// A slave restarted at its master's log head (syncFromLastFile): the old log and queue files
/// go, the log starts empty at the head, the queue takes the master's queue offset from the
/// first record shipped for it, and all of it survives a crash right after the restart or
/// after the records.
#[test]
fn a_slave_log_restarts_at_the_masters_head() {
    for crash_after_records in [false, true] {
        futures_lite::future::block_on(async {
            let disk = SimDisk::new();
            let (store, _) = ShardStore::open(disk.clone(), store_config(), &[KEY])
                .await
                .unwrap();
            fill(&store, 0..50).await;
            let head = 3 * SEGMENT;
            assert!(
                store.restart_at(SEGMENT / 2).await.is_err(),
                "not a boundary"
            );
            store.restart_at(head).await.unwrap();
            assert_eq!((store.log_head(), store.max_offset()), (head, head));
            assert_eq!(store.queue_range(KEY), Some((0, 0)));
            assert!(!segment_exists(&disk, 0));
            // The master's queue is at 500 at its head.
            let mut at = head;
            if crash_after_records {
                for q in 500..520 {
                    let bytes = shipped(q, at);
                    // As the slave's link does: a refused first record of an emptied queue
                    // starts the queue at its offset, then goes again.
                    let appended = match store.append_replicated(&bytes) {
                        Ok(appended) => appended,
                        Err(_) => {
                            assert!(store.start_queue_at_replicated(&bytes).await.unwrap());
                            store.append_replicated(&bytes).unwrap()
                        }
                    };
                    assert_eq!(appended.queue_offset, q);
                    at = appended.end_offset;
                }
                // A gap after the first record is still refused.
                assert!(store.append_replicated(&shipped(600, at)).is_err());
                store.flush().await.unwrap();
                store.persist_metadata().await.unwrap();
            }
            let survivor = disk.crash(3);
            let (store, _) = ShardStore::open(survivor.clone(), store_config(), &[KEY])
                .await
                .expect("recovery after a restart");
            assert_eq!(store.log_head(), head);
            if crash_after_records {
                assert_eq!(store.queue_range(KEY), Some((500, 520)));
                check_readable_from_min(&store).await;
            } else {
                assert_eq!(store.max_offset(), head);
                // Reopened, the empty queue has a file at its old offset: the plain append
                // refuses the master's offset, the slave's retry path starts the queue there.
                let bytes = shipped(500, head);
                let first = match store.append_replicated(&bytes) {
                    Ok(first) => first,
                    Err(_) => {
                        assert!(store.start_queue_at_replicated(&bytes).await.unwrap());
                        store.append_replicated(&bytes).unwrap()
                    }
                };
                assert_eq!(first.queue_offset, 500);
                assert!(store
                    .append_replicated(&shipped(501, first.end_offset))
                    .is_ok());
                store.flush().await.unwrap();
                store.persist_metadata().await.unwrap();
                store.close().await.unwrap();
                let (store, _) = ShardStore::open(survivor, store_config(), &[KEY])
                    .await
                    .expect("reopen");
                assert_eq!(store.queue_range(KEY), Some((500, 502)));
                check_readable_from_min(&store).await;
            }
        });
    }
}
