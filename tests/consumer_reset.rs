//! A consumer whose offset fell below the queue's minimum (retention deleted the records) is
//! answered OFFSET_OUT_OF_RANGE with the queue's range and reset by its policy; `topic
//! describe` shows the minimum and `group describe` marks the group. The retention stage that
//! deletes segments lives elsewhere; here its effect is made by hand, as it leaves the store:
//! the oldest segment removed while the broker is down, and recovery moves every queue's
//! minimum to the new log head.

mod common;

use common::{temp_store, Broker};
use ringmq::client::reset::{out_of_range, pull_with_reset, reset_for, OffsetReset, PullOutcome};
use ringmq::protocol::message::{GroupCommit, MessageRef, QueueRef};
use ringmq::protocol::Status;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_consumer_below_the_minimum_is_reset_by_its_policy() {
    let dir = temp_store();
    let mut broker = Broker::start(dir.path(), &["--shards", "1"]);
    let mut client = broker.client();
    client.create_topic("kept", 1).expect("create");
    // 1 MiB segments (the test configuration): 400 bodies of 8 KB fill three of them.
    let body = vec![b'r'; 8000];
    for _ in 0..40 {
        let batch: Vec<MessageRef> = (0..10)
            .map(|_| MessageRef {
                born_timestamp_ms: 1,
                key: b"",
                properties: b"",
                body: &body,
            })
            .collect();
        client.produce("kept", Some(0), &batch).expect("produce");
    }
    client
        .call(&GroupCommit {
            group: "slow".into(),
            topic: "kept".into(),
            queue: 0,
            offset: 0,
        })
        .expect("commit");
    assert!(broker.stop(), "a clean stop");
    let oldest = dir
        .path()
        .join("data/shard-0/commitlog")
        .join(format!("{:020}", 0));
    std::fs::remove_file(&oldest).expect("remove the oldest segment");
    broker.restart();

    let mut client = broker.client();
    let stats = client
        .call(&QueueRef {
            topic: "kept".into(),
            queue: 0,
        })
        .expect("stats");
    assert!(stats.min_offset > 0, "the minimum moved: {stats:?}");
    assert_eq!(stats.max_offset, 400);
    let min = stats.min_offset;

    // The library: the error carries the range, and each policy picks its end.
    let refused = client
        .pull("kept", 0, 0, 10, 1 << 20, 0)
        .expect_err("a pull below the minimum");
    assert_eq!(refused.status(), Some(Status::OffsetOutOfRange));
    assert_eq!(out_of_range(&refused), Some((min, 400)));
    let reset = reset_for(&refused, OffsetReset::Latest, 0, 0).expect("reset");
    assert_eq!(reset.to, 400);
    // A consumer loop: the reset is reported once, then the pull at the minimum succeeds.
    let mut offset = 0;
    let mut pull = |offset: &mut u64| {
        pull_with_reset(OffsetReset::Earliest, 0, offset, |at| {
            client.pull("kept", 0, at, 10, 1 << 20, 0)
        })
        .expect("pull or reset")
    };
    match pull(&mut offset) {
        PullOutcome::Reset(reset) => assert_eq!((reset.from, reset.to), (0, min)),
        other => panic!("expected a reset, got {other:?}"),
    }
    match pull(&mut offset) {
        PullOutcome::Pulled(pulled) => assert_eq!(pulled.messages[0].queue_offset, min),
        other => panic!("expected messages, got {other:?}"),
    }

    let out = broker.cli(&["topic", "describe", "kept"], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().nth(2) == Some(&min.to_string())),
        "topic describe shows the minimum {min}:\n{text}"
    );
    let out = broker.cli(&["group", "describe", "slow"], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0 (behind retention)"), "{text}");

    // The CLI: earliest by default, printing the reset.
    let out = broker.cli(&["consume", "kept", "--from", "0", "--count", "3"], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "offset 0 is out of range {min}..=400; reset to {min} (earliest)"
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    // Latest: nothing old is printed.
    let out = broker.cli(
        &[
            "consume",
            "kept",
            "--from",
            "0",
            "--offset-reset",
            "latest",
            "--max-wait-ms",
            "100",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("reset to 400 (latest)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 0);
    let out = broker.cli(&["consume", "kept", "--offset-reset", "newest"], b"");
    assert!(!out.status.success(), "an unknown policy is refused");
}
