//! End-to-end tests against the real `ringmq serve` binary on loopback: produce and consume
//! across shards, batches, long polling, group offsets and topics across restarts, ASYNC_FLUSH,
//! the CLI and configuration errors.

mod common;

use common::{run_binary, temp_store, Broker};
use ringmq::client::{Client, ClientOptions};
use ringmq::protocol::message::MessageRef;
use ringmq::protocol::message::{GroupCommit, GroupDescribe, GroupFetch, TopicListRequest};
use ringmq::protocol::Status;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

const MAX_BYTES: u32 = 1 << 20;

/// A stored message as a test sees it: (queue offset, key, body).
type Stored = (u64, Vec<u8>, Vec<u8>);

fn message<'a>(key: &'a [u8], body: &'a [u8]) -> MessageRef<'a> {
    MessageRef {
        born_timestamp_ms: 1_700_000_000_000,
        key,
        properties: b"",
        body,
    }
}

/// Every message of one queue from offset 0 to its end: (offset, key, body).
fn drain_queue(client: &mut Client, topic: &str, queue: u32) -> Vec<Stored> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let result = client
            .pull(topic, queue, offset, 256, MAX_BYTES, 0)
            .expect("pull");
        if result.status == Status::NoNewMessage || result.messages.is_empty() {
            assert_eq!(
                offset, result.summary.max_offset,
                "queue {queue} stopped short of its max offset"
            );
            return out;
        }
        for m in result.messages {
            out.push((m.queue_offset, m.key, m.body));
        }
        offset = result.summary.next_offset;
    }
}

/// Produces keyed messages until every queue has some, then checks that each message is
/// consumed exactly once at its acknowledged offset with its key and body, in send order.
fn produce_and_consume_everywhere(client: &mut Client, topic: &str, queues: u32) {
    let mut sent: BTreeMap<u32, Vec<Stored>> = BTreeMap::new();
    let mut i = 0u32;
    while i < 200 || (sent.len() as u32) < queues {
        assert!(i < 10_000, "keys never reached every queue");
        let key = format!("key-{i}").into_bytes();
        let body = format!("body-{i}-{}", "x".repeat((i % 50) as usize)).into_bytes();
        let expected_queue = client.queue_for_key(topic, &key).expect("queue for key");
        let ack = client
            .produce(topic, None, &[message(&key, &body)])
            .expect("produce");
        assert_eq!(ack.status, Status::Ok);
        assert_eq!(ack.response.queue, expected_queue, "key hashed elsewhere");
        assert_eq!(ack.response.count, 1);
        let per_queue = sent.entry(ack.response.queue).or_default();
        assert_eq!(
            ack.response.base_offset,
            per_queue.len() as u64,
            "queue offsets must be contiguous from 0"
        );
        per_queue.push((ack.response.base_offset, key, body));
        i += 1;
    }
    for queue in 0..queues {
        let got = drain_queue(client, topic, queue);
        let want = sent.remove(&queue).unwrap_or_default();
        assert_eq!(got, want, "queue {queue}: consumed != produced");
    }
}

fn assert_queues_on_both_shards(client: &mut Client, topic: &str) {
    let description = client.describe_topic(topic).expect("describe");
    let shards: HashSet<u16> = description.queues.iter().map(|q| q.shard).collect();
    assert_eq!(
        shards.len(),
        2,
        "queues should be on both shards: {description:?}"
    );
    assert_eq!(
        description.topic.queue_shards,
        description
            .queues
            .iter()
            .map(|q| q.shard)
            .collect::<Vec<_>>()
    );
}

#[test]
fn produce_and_consume_across_shards_shard_aware() {
    let dir = temp_store();
    let broker = Broker::start(dir.path(), &["--shards", "2"]);
    assert_eq!(broker.shard_ports.len(), 2);
    let mut client = broker.client();
    client.create_topic("orders", 8).expect("create");
    assert_queues_on_both_shards(&mut client, "orders");
    produce_and_consume_everywhere(&mut client, "orders", 8);
}

#[test]
fn produce_and_consume_across_shards_through_the_shared_port() {
    let dir = temp_store();
    let broker = Broker::start(dir.path(), &["--shards", "2"]);
    let mut client = broker.client_with(ClientOptions {
        shard_aware: false,
        ..ClientOptions::default()
    });
    client.create_topic("orders", 8).expect("create");
    assert_queues_on_both_shards(&mut client, "orders");
    produce_and_consume_everywhere(&mut client, "orders", 8);
    // Group offsets are queue-scoped too: they must be forwarded to the owner.
    for queue in 0..8 {
        client
            .call(&GroupCommit {
                group: "g".into(),
                topic: "orders".into(),
                queue,
                offset: queue as u64,
            })
            .expect("commit");
    }
    for queue in 0..8 {
        assert_eq!(
            client
                .call(&GroupFetch {
                    group: "g".into(),
                    topic: "orders".into(),
                    queue
                })
                .map(|o| o.offset)
                .expect("fetch"),
            Some(queue as u64)
        );
    }
}

#[test]
fn a_batch_gets_contiguous_offsets() {
    let dir = temp_store();
    let broker = Broker::start(dir.path(), &["--shards", "2"]);
    let mut client = broker.client();
    client.create_topic("batch", 2).expect("create");
    let first = client
        .produce("batch", Some(1), &[message(b"", b"before")])
        .expect("produce");
    assert_eq!(first.response.base_offset, 0);
    let bodies: Vec<Vec<u8>> = (0..100).map(|i| format!("m{i}").into_bytes()).collect();
    let batch: Vec<MessageRef<'_>> = bodies.iter().map(|b| message(b"k", b)).collect();
    let ack = client.produce("batch", Some(1), &batch).expect("batch");
    assert_eq!(ack.status, Status::Ok);
    assert_eq!(ack.response.queue, 1);
    assert_eq!(ack.response.base_offset, 1);
    assert_eq!(ack.response.count, 100);
    let got = drain_queue(&mut client, "batch", 1);
    assert_eq!(got.len(), 101);
    for (i, body) in bodies.iter().enumerate() {
        assert_eq!(got[i + 1], (i as u64 + 1, b"k".to_vec(), body.clone()));
    }
    assert!(drain_queue(&mut client, "batch", 0).is_empty());
}

#[test]
fn long_poll_returns_when_a_message_arrives() {
    let dir = temp_store();
    let broker = Broker::start(dir.path(), &["--shards", "2"]);
    let mut client = broker.client();
    client.create_topic("poll", 2).expect("create");

    // Short wait on an empty queue: NO_NEW_MESSAGE.
    let empty = client.pull("poll", 0, 0, 10, MAX_BYTES, 200).expect("pull");
    assert_eq!(empty.status, Status::NoNewMessage);
    assert!(empty.messages.is_empty());

    const WAIT_MS: u32 = 20_000;
    let addr = broker.addr.clone();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let producer = std::thread::spawn(move || {
        let mut producer = Client::connect(&addr).expect("connect");
        // Wait until the poller says its pull is on the wire; the pull may still not have
        // reached the broker, which the test tolerates (it then returns at once).
        started_rx.recv().expect("poller started");
        producer
            .produce("poll", Some(0), &[message(b"k", b"wake up")])
            .expect("produce")
    });
    let start = Instant::now();
    let ticket = client
        .send_pull(&ringmq::protocol::message::PullRequest {
            topic: "poll".into(),
            queue: 0,
            offset: 0,
            max_messages: 10,
            max_bytes: MAX_BYTES,
            max_wait_ms: WAIT_MS,
        })
        .expect("send pull");
    started_tx.send(()).expect("signal");
    let result = client.wait_pull(ticket, WAIT_MS).expect("pull");
    let elapsed = start.elapsed();
    let ack = producer.join().expect("producer");
    assert_eq!(ack.response.base_offset, 0);
    assert_eq!(result.status, Status::Ok);
    assert_eq!(result.messages.len(), 1);
    assert_eq!(result.messages[0].body, b"wake up");
    assert!(
        elapsed < Duration::from_millis(WAIT_MS as u64 / 2),
        "long poll took {elapsed:?}: it did not wake on the produce"
    );
}

#[test]
fn group_offsets_survive_clean_and_unclean_restarts() {
    let dir = temp_store();
    let mut broker = Broker::start(dir.path(), &["--shards", "2"]);
    let mut client = broker.client();
    client.create_topic("g", 4).expect("create");
    for queue in 0..4 {
        let bodies: Vec<Vec<u8>> = (0..10).map(|i| vec![i as u8; 8]).collect();
        let batch: Vec<MessageRef<'_>> = bodies.iter().map(|b| message(b"", b)).collect();
        client.produce("g", Some(queue), &batch).expect("produce");
    }
    assert_eq!(
        client
            .call(&GroupFetch {
                group: "billing".into(),
                topic: "g".into(),
                queue: 0
            })
            .map(|o| o.offset)
            .expect("fetch"),
        None
    );
    client
        .call(&GroupCommit {
            group: "billing".into(),
            topic: "g".into(),
            queue: 0,
            offset: 3,
        })
        .expect("commit");
    client
        .call(&GroupCommit {
            group: "billing".into(),
            topic: "g".into(),
            queue: 2,
            offset: 7,
        })
        .expect("commit");

    let check = |client: &mut Client, expect: &[(u32, u64)]| {
        for (queue, offset) in expect {
            assert_eq!(
                client
                    .call(&GroupFetch {
                        group: "billing".into(),
                        topic: "g".into(),
                        queue: *queue
                    })
                    .map(|o| o.offset)
                    .expect("fetch"),
                Some(*offset),
                "queue {queue}"
            );
        }
        assert_eq!(
            client
                .call(&GroupFetch {
                    group: "billing".into(),
                    topic: "g".into(),
                    queue: 1
                })
                .map(|o| o.offset)
                .expect("fetch"),
            None
        );
        let d = client
            .call(&GroupDescribe {
                group: "billing".into(),
            })
            .expect("describe group");
        let mut lags: Vec<(u32, u64, u64, u64)> = d
            .queues
            .iter()
            .map(|q| (q.queue, q.committed_offset, q.max_offset, q.lag()))
            .collect();
        lags.sort();
        let want: Vec<(u32, u64, u64, u64)> =
            expect.iter().map(|(q, o)| (*q, *o, 10, 10 - o)).collect();
        assert_eq!(lags, want);
        assert!(d.queues.iter().all(|q| q.topic == "g"));
    };
    check(&mut client, &[(0, 3), (2, 7)]);

    assert!(broker.stop(), "clean stop failed:\n{}", broker.log());
    broker.restart();
    let mut client = broker.client();
    check(&mut client, &[(0, 3), (2, 7)]);

    client
        .call(&GroupCommit {
            group: "billing".into(),
            topic: "g".into(),
            queue: 0,
            offset: 9,
        })
        .expect("commit");
    client
        .call(&GroupCommit {
            group: "billing".into(),
            topic: "g".into(),
            queue: 3,
            offset: 1,
        })
        .expect("commit");
    broker.kill();
    broker.restart();
    let mut client = broker.client();
    check(&mut client, &[(0, 9), (2, 7), (3, 1)]);
}

#[test]
fn topics_survive_restarts_and_deleted_topics_stay_deleted() {
    let dir = temp_store();
    let mut broker = Broker::start(dir.path(), &["--shards", "2"]);
    let mut client = broker.client();
    let created = client.create_topic("keep", 3).expect("create");
    client.create_topic("doomed", 2).expect("create");
    assert_eq!(
        client.create_topic("keep", 3).unwrap_err().status(),
        Some(Status::TopicExists)
    );
    for queue in 0..2 {
        client
            .produce("doomed", Some(queue), &[message(b"", b"old message")])
            .expect("produce");
    }
    client
        .produce("keep", Some(2), &[message(b"", b"kept")])
        .expect("produce");

    assert!(broker.stop(), "clean stop failed:\n{}", broker.log());
    broker.restart();
    let mut client = broker.client();
    let mut names: Vec<String> = client
        .call(&TopicListRequest {})
        .map(|l| l.topics)
        .expect("list")
        .into_iter()
        .map(|t| t.name)
        .collect();
    names.sort();
    assert_eq!(names, ["doomed", "keep"]);
    assert_eq!(client.topic("keep").expect("topic"), created);
    assert_eq!(drain_queue(&mut client, "keep", 2).len(), 1);

    client.delete_topic("doomed").expect("delete");
    let err = client
        .produce("doomed", Some(0), &[message(b"", b"after delete")])
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::TopicNotFound), "{err}");
    let err = client.pull("doomed", 0, 0, 10, MAX_BYTES, 0).unwrap_err();
    assert_eq!(err.status(), Some(Status::TopicNotFound), "{err}");

    let recreated = client.create_topic("doomed", 2).expect("re-create");
    let old_id = created.topic_id;
    assert_ne!(recreated.topic_id, old_id);
    for queue in 0..2 {
        assert!(drain_queue(&mut client, "doomed", queue).is_empty());
    }
    client
        .produce("doomed", Some(0), &[message(b"", b"new message")])
        .expect("produce");

    broker.kill();
    broker.restart();
    let mut client = broker.client();
    let got = drain_queue(&mut client, "doomed", 0);
    assert_eq!(got, vec![(0, vec![], b"new message".to_vec())]);
    assert!(drain_queue(&mut client, "doomed", 1).is_empty());
    assert!(broker.stop());
    broker.restart();
    let mut client = broker.client();
    assert_eq!(drain_queue(&mut client, "doomed", 0).len(), 1);
    assert!(drain_queue(&mut client, "doomed", 1).is_empty());
    assert_eq!(drain_queue(&mut client, "keep", 2).len(), 1);
}

#[test]
fn async_flush_produces_consumes_and_keeps_messages_across_a_clean_restart() {
    let dir = temp_store();
    let mut broker = Broker::start(dir.path(), &["--shards", "2", "--flush", "ASYNC_FLUSH"]);
    let mut client = broker.client();
    assert_eq!(client.metadata().flush_disk_type, "ASYNC_FLUSH");
    client.create_topic("a", 4).expect("create");
    let mut want: BTreeMap<u32, Vec<Stored>> = BTreeMap::new();
    for i in 0..400u32 {
        let queue = i % 4;
        let body = format!("async-{i}").into_bytes();
        let ack = client
            .produce("a", Some(queue), &[message(b"", &body)])
            .expect("produce");
        assert_eq!(ack.status, Status::Ok);
        let q = want.entry(queue).or_default();
        assert_eq!(ack.response.base_offset, q.len() as u64);
        q.push((ack.response.base_offset, vec![], body));
    }
    for (queue, messages) in &want {
        assert_eq!(&drain_queue(&mut client, "a", *queue), messages);
    }
    assert!(broker.stop(), "clean stop failed:\n{}", broker.log());
    broker.restart();
    let mut client = broker.client();
    for (queue, messages) in &want {
        assert_eq!(&drain_queue(&mut client, "a", *queue), messages);
    }
}

#[test]
fn the_cli_produces_consumes_and_describes_as_json() {
    let dir = temp_store();
    let broker = Broker::start(dir.path(), &["--shards", "2"]);
    let out = broker.cli(
        &[
            "topic", "create", "cli", "--queues", "4", "--format", "json",
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let lines = ["first", "second", "third", "fourth", "fifth"];
    let input = lines.join("\n") + "\n";
    let out = broker.cli(
        &["produce", "cli", "--key", "customer-42", "--format", "json"],
        input.as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acks: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(acks.len(), lines.len(), "{acks:?}");
    let queue = acks[0]["queue"].as_u64().expect("queue");
    let mut lines_seen: Vec<u64> = acks.iter().map(|a| a["line"].as_u64().unwrap()).collect();
    lines_seen.sort();
    assert_eq!(lines_seen, [1, 2, 3, 4, 5]);
    for ack in &acks {
        assert_eq!(ack["status"], "OK", "{ack}");
        assert_eq!(ack["queue"].as_u64(), Some(queue), "one key, one queue");
        let line = ack["line"].as_u64().unwrap();
        assert_eq!(ack["offset"].as_u64(), Some(line - 1), "{ack}");
    }

    let out = broker.cli(
        &[
            "consume",
            "cli",
            "--from",
            "earliest",
            "--format",
            "json",
            "--max-wait-ms",
            "100",
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let consumed: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(consumed.len(), lines.len(), "{consumed:?}");
    for (i, m) in consumed.iter().enumerate() {
        assert_eq!(m["queue"].as_u64(), Some(queue));
        assert_eq!(m["offset"].as_u64(), Some(i as u64));
        assert_eq!(m["key"], "customer-42");
        assert_eq!(m["body"], lines[i]);
    }

    let out = broker.cli(&["topic", "describe", "cli", "--format", "json"], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).expect("describe json");
    assert_eq!(d["name"], "cli");
    let queues = d["queues"].as_array().expect("queues");
    assert_eq!(queues.len(), 4);
    let total: u64 = queues
        .iter()
        .map(|q| q["max_offset"].as_u64().unwrap())
        .sum();
    assert_eq!(total, lines.len() as u64);
}

#[test]
fn invalid_configuration_is_refused_naming_the_key() {
    let dir = temp_store();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "segment_size_bytes = 1000\n").expect("write config");
    let store = dir.path().join("data");
    let store = store.to_str().unwrap();
    let config = config.to_str().unwrap();
    let base = ["serve", "--store", store, "--listen", "127.0.0.1:0"];

    let out = run_binary(&[&base[..], &["--config", config]].concat(), b"");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("segment_size_bytes"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ringmq ready"));

    let out = run_binary(&[&base[..], &["--flush", "SOMETIMES"]].concat(), b"");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SOMETIMES"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ringmq ready"));

    std::fs::write(dir.path().join("unknown.toml"), "no_such_key = 1\n").expect("write");
    let unknown = dir.path().join("unknown.toml");
    let out = run_binary(
        &[&base[..], &["--config", unknown.to_str().unwrap()]].concat(),
        b"",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no_such_key"), "{stderr}");
}

#[test]
fn a_second_broker_on_the_same_store_exits_naming_the_store_and_the_holder() {
    let dir = temp_store();
    let mut first = Broker::start(dir.path(), &[]);
    let store = first.store.display().to_string();
    let out = run_binary(
        &[
            "serve",
            "--store",
            &store,
            "--listen",
            "127.0.0.1:0",
            "--ha-listen",
            "127.0.0.1:0",
        ],
        b"",
    );
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ringmq ready"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&store), "{stderr}");
    let pid = first.pid().expect("first broker runs");
    assert!(stderr.contains(&format!("pid {pid}")), "{stderr}");

    // The lock dies with its holder, SIGKILL included: an immediate restart takes it.
    first.kill();
    first.restart();
    let mut client = first.client();
    client
        .create_topic("after-lock", 1)
        .expect("broker serves after restart");
}
