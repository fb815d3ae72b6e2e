//! Retention in the real broker process: `ringmq admin delete-expired` prints what it deleted
//! and `ringmq stats` shows it; SIGKILL while the cleaner deletes, with an immediate restart,
//! keeps every retained message readable; on a small loop-mounted file system disk pressure
//! deletes the oldest segments and a nearly full disk refuses appends with DISK_FULL until
//! space is freed.
//!
//! The loop mount needs root; without it that test says so and passes only when
//! `RINGMQ_SKIP_ROOT_TESTS=1` is set, so nothing passes off as tested.

mod common;

use common::{checked, http_get, retention_on_request, temp_store, wait_until, Broker, LoopMount};
use ringmq::client::Client;
use ringmq::protocol::admin::Retention;
use ringmq::protocol::message::{MessageRef, RetentionStatusRequest};
use ringmq::protocol::Status;
use std::time::Duration;

/// The test configuration's segment size (`Sizes::Small`).
const SEGMENT: u64 = 1 << 20;
const BODY_BYTES: usize = 16 * 1024;

fn body(seq: u64) -> Vec<u8> {
    let mut body = vec![(seq % 251) as u8; BODY_BYTES];
    body[..8].copy_from_slice(&seq.to_le_bytes());
    body
}

/// Produces messages `range` to queue 0 of `topic` in batches of 16; returns how many were
/// acknowledged OK before the first failure (a killed broker) and that failure's status.
fn produce(client: &mut Client, topic: &str, range: std::ops::Range<u64>) -> (u64, Option<Status>) {
    let mut acked = 0;
    let mut seq = range.start;
    while seq < range.end {
        let bodies: Vec<Vec<u8>> = (seq..(seq + 16).min(range.end)).map(body).collect();
        let messages: Vec<MessageRef<'_>> = bodies
            .iter()
            .map(|b| MessageRef {
                born_timestamp_ms: 0,
                key: b"",
                properties: b"",
                body: b,
            })
            .collect();
        match client.produce(topic, Some(0), &messages) {
            Ok(result) if result.status == Status::Ok => {
                assert_eq!(
                    result.response.base_offset, seq,
                    "offsets follow the sequence"
                );
                acked += messages.len() as u64;
                seq += messages.len() as u64;
            }
            Ok(result) => return (acked, Some(result.status)),
            Err(e) => return (acked, e.status()),
        }
    }
    (acked, None)
}

fn retention(broker: &Broker) -> Option<Retention> {
    Client::connect(&broker.addr)
        .ok()?
        .call(&RetentionStatusRequest {})
        .ok()
}

fn queue_range(client: &mut Client, topic: &str) -> (u64, u64) {
    let stats = client
        .call(&ringmq::protocol::message::QueueRef {
            topic: topic.to_string(),
            queue: 0,
        })
        .expect("queue stats");
    (stats.min_offset, stats.max_offset)
}

/// The queue's range through a pull at 0: OK from 0, or OFFSET_OUT_OF_RANGE past retention;
/// then every message from the minimum reads back intact, at its sequence number.
fn check_readable(broker: &Broker, topic: &str) -> (u64, u64) {
    let mut client = broker.client();
    let (min, max) = queue_range(&mut client, topic);
    if min > 0 {
        let below = client.pull(topic, 0, min - 1, 16, 1 << 20, 0);
        assert_eq!(
            below.err().and_then(|e| e.status()),
            Some(Status::OffsetOutOfRange),
            "a pull below the minimum {min}"
        );
    }
    let mut offset = min;
    while offset < max {
        let pulled = match client.pull(topic, 0, offset, 256, 8 << 20, 0) {
            Ok(pulled) => pulled,
            // The cleaner is still deleting (disk pressure): skip to the new minimum, as a
            // consumer resetting to earliest does.
            Err(e) if e.status() == Some(Status::OffsetOutOfRange) => {
                let now = queue_range(&mut client, topic);
                assert!(now.0 > offset, "out of range at {offset}, range {now:?}");
                offset = now.0;
                continue;
            }
            Err(e) => panic!("pull at {offset} of {min}..{max}: {e}"),
        };
        assert!(!pulled.messages.is_empty(), "messages at {offset} of {max}");
        for m in pulled.messages {
            assert_eq!(m.queue_offset, offset);
            assert_eq!(m.body, body(offset), "message {offset} intact");
            offset += 1;
        }
    }
    (min, max)
}

/// The cleaner outside its hours deletes nothing; `ringmq admin delete-expired` deletes the
/// expired segments at once and names them; `ringmq stats` and `/metrics` count them.
#[test]
fn delete_expired_runs_a_pass_now_and_prints_what_it_deleted() {
    let root = temp_store();
    // An hour the broker's local time is not in for the length of this test.
    let config = format!("shards = 1\n{}", retention_on_request());
    let broker =
        Broker::start_with_config(root.path(), &config, &["--metrics-listen", "127.0.0.1:0"]);
    let mut client = broker.client();
    client.create_topic("aged", 1).unwrap();
    let (acked, failure) = produce(&mut client, "aged", 0..300);
    assert_eq!((acked, failure), (300, None));
    let before = retention(&broker).expect("retention status");
    assert_eq!(
        before.shards[0].log_head, 0,
        "outside delete_when nothing goes"
    );

    let out = broker.cli(&["admin", "delete-expired"], b"");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let max_offset = before.shards[0].max_offset;
    let sealed = max_offset / SEGMENT;
    assert!(
        sealed >= 3,
        "300 messages of 16 KiB fill more than 3 segments"
    );
    for base in 0..sealed {
        let name = ringmq::store::commitlog::segment_file_name(base * SEGMENT);
        assert!(text.contains(&name), "{name} listed:\n{text}");
        let path = broker.store.join("shard-0/commitlog").join(&name);
        assert!(!path.exists(), "{} deleted", path.display());
    }
    assert!(text.contains("expired"), "{text}");
    let (min, max) = check_readable(&broker, "aged");
    assert!(min > 0 && max == 300, "{min}..{max}");

    let stats = broker.cli(&["stats"], b"");
    let stats = String::from_utf8_lossy(&stats.stdout);
    assert!(stats.contains("disk used"), "{stats}");
    assert!(stats.contains("appends accepted"), "{stats}");
    let line = stats
        .lines()
        .find(|l| l.starts_with("retention_deleted_segments_total"))
        .unwrap_or_else(|| panic!("no deleted-segments counter:\n{stats}"));
    assert!(line.ends_with(&format!(" {sealed}")), "{line}");

    let metrics_addr = broker.ready_field("metrics").expect("metrics address");
    let metrics = http_get(&metrics_addr, "/metrics");
    for name in [
        "ringmq_retention_deleted_segments_total",
        "ringmq_retention_reclaimed_bytes_total",
        "ringmq_disk_used_ratio_ppm",
        "ringmq_retention_appends_refused",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

/// SIGKILL while the cleaner deletes (any hour, everything older than a millisecond, a pass
/// every 20 ms) and producers append, restarted at once, three times: recovery always
/// succeeds, the minimum only moves forward and every message from it reads back intact.
#[test]
fn sigkill_during_cleaning_and_an_immediate_restart_lose_nothing_retained() {
    let root = temp_store();
    let config = "shards = 1\nfile_reserved_time_ms = 1\ndelete_when = \"*\"\n\
                  clean_resource_interval_ms = 20\n";
    let mut broker = Broker::start_with_config(root.path(), config, &[]);
    broker.client().create_topic("churn", 1).unwrap();
    let mut next = 0u64;
    let mut last_min = 0;
    for round in 0..3 {
        let mut client = broker.client();
        // Kill from another thread while this one produces: somewhere in a deletion, or
        // between two, as the timing falls.
        let pid = broker.pid().expect("running");
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300 + 200 * round));
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        });
        let (acked, failure) = produce(&mut client, "churn", next..next + 100_000);
        killer.join().unwrap();
        assert!(failure.is_none() || acked > 0 || next > 0, "round {round}");
        next += acked;
        broker.kill();
        broker.restart();
        let (min, max) = check_readable(&broker, "churn");
        assert!(
            max >= next,
            "round {round}: {next} acknowledged, {max} recovered"
        );
        assert!(min >= last_min, "round {round}: the minimum went back");
        last_min = min;
        next = max;
    }
    assert!(
        last_min > 0,
        "the cleaner deleted something in three rounds"
    );
}

/// A 64 MiB ext4 file system: above disk_max_used_space_ratio (40%) the oldest segments go
/// however young; above disk_space_warning_ratio (70%) produces get DISK_FULL (the log says
/// so) while pulls still work, and once space is freed produces are accepted again.
#[test]
fn disk_pressure_and_disk_full_on_a_small_file_system() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var("RINGMQ_SKIP_ROOT_TESTS").as_deref() == Ok("1"),
            "this test needs root for a loop mount; set RINGMQ_SKIP_ROOT_TESTS=1 to skip it"
        );
        eprintln!("skipped: not root");
        return;
    }
    let root = temp_store();
    let Some(disk) = LoopMount::try_create(root.path(), 64 << 20) else {
        eprintln!("skipped: a loop device cannot be set up here");
        return;
    };
    let config = "shards = 1\ndisk_max_used_space_ratio = 0.4\n\
                  disk_space_warning_ratio = 0.7\nclean_resource_interval_ms = 100\n";
    let broker = Broker::start_with_config(&disk.mount, config, &[]);
    let mut client = broker.client();
    client.create_topic("pressed", 1).unwrap();
    // 40 MiB through a file system of 64: without pressure deletion it would fill.
    let (acked, failure) = produce(&mut client, "pressed", 0..2_560);
    assert_eq!((acked, failure), (2_560, None));
    let state = wait_until(Duration::from_secs(30), "pressure deletion", || {
        let r = retention(&broker)?;
        let shard = &r.shards[0];
        // Done: below the ratio, or nothing left but the segment being written (and the
        // one prepared after it).
        let done = shard.disk_used_ratio <= 0.4 || shard.segments <= 2;
        (done && shard.log_head > 0).then_some(r)
    });
    assert!(!state.shards[0].appends_refused);
    assert!(
        broker.log().contains("reason=\"disk_pressure\"")
            || broker.log().contains("reason=disk_pressure")
    );
    let (min, max) = check_readable(&broker, "pressed");
    assert!(min > 0 && max == 2_560);

    // Fill the file system past the warning ratio behind the broker's back.
    let free = disk.available_bytes();
    let filler = disk.mount.join("filler");
    checked(
        "fallocate",
        &[
            "-l",
            &(free - (4 << 20)).to_string(),
            filler.to_str().unwrap(),
        ],
    );
    wait_until(Duration::from_secs(30), "appends refused", || {
        retention(&broker)?.shards[0].appends_refused.then_some(())
    });
    let (_, refused) = produce(&mut client, "pressed", 2_560..2_576);
    assert_eq!(refused, Some(Status::DiskFull));
    assert!(broker.log().contains("refusing appends with DISK_FULL"));
    check_readable(&broker, "pressed");

    std::fs::remove_file(&filler).unwrap();
    wait_until(Duration::from_secs(30), "appends accepted again", || {
        (!retention(&broker)?.shards[0].appends_refused).then_some(())
    });
    assert_eq!(produce(&mut client, "pressed", 2_560..2_576), (16, None));
    assert!(broker.log().contains("accepting appends again"));
    drop(broker);
}
