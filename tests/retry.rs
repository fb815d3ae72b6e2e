//! Retries and dead letters against the real `ringmq serve` binary: a rejected message comes
//! back through `%RETRY%<group>` after delays that grow per attempt, ends in `%DLQ%<group>`
//! after `max_reconsume_times`, is listed by `ringmq group dlq`, and a retry pending when the
//! broker is SIGKILLed and restarted at once still arrives.
//!
//! The brokers run with short delay levels (200, 400, 800 ms) so the test is fast; the levels
//! are the broker's configuration, as a user would set them.

mod common;

use common::{temp_store, Broker};
use ringmq::client::retry::{reject, Delivery};
use ringmq::client::Client;
use ringmq::protocol::message::{MessageRef, PulledMessage};
use ringmq::protocol::properties::{self, DUE_MS};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const GROUP: &str = "app";
const RETRY: &str = "%RETRY%app";
const DLQ: &str = "%DLQ%app";
const LEVELS: &str = "retry_delay_levels_ms = [200, 400, 800]\nmax_reconsume_times = 2";

fn produce(client: &mut Client, topic: &str, body: &[u8]) -> (u32, u64) {
    let message = MessageRef {
        born_timestamp_ms: 1_700_000_000_000,
        key: b"",
        properties: b"",
        body,
    };
    let result = client.produce(topic, Some(0), &[message]).expect("produce");
    (result.response.queue, result.response.base_offset)
}

/// Reads the retry topic from where `cursors` stand (one per queue), long-polling each queue in
/// turn, until a message arrives or `timeout` passes.
struct RetryReader {
    cursors: Vec<u64>,
}

impl RetryReader {
    fn new() -> RetryReader {
        RetryReader {
            cursors: Vec::new(),
        }
    }

    fn next(&mut self, client: &mut Client, timeout: Duration) -> Option<(u32, PulledMessage)> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            // The broker makes the retry topic at the group's first reject.
            let Ok(info) = client.topic(RETRY) else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            self.cursors.resize(info.queue_count() as usize, 0);
            for queue in 0..info.queue_count() {
                let offset = self.cursors[queue as usize];
                let pulled = client
                    .pull(RETRY, queue, offset, 1, 1 << 20, 20)
                    .expect("pull the retry topic");
                if let Some(m) = pulled.messages.into_iter().next() {
                    self.cursors[queue as usize] = m.queue_offset + 1;
                    return Some((queue, m));
                }
            }
        }
        None
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A message rejected three times (its consumer asks for 3 attempts) arrives three more times,
/// each after a longer delay; its fourth rejection and the third of a message under the
/// broker's `max_reconsume_times = 2` make dead letters, which `group dlq` lists with their
/// origin and `consume %DLQ%app` reads.
#[test]
fn rejected_messages_come_back_with_growing_delays_then_die() {
    let root = temp_store();
    let broker = Broker::start_with_config(root.path(), LEVELS, &[]);
    let mut client = broker.client();
    client.create_topic("orders", 2).expect("create");
    let (queue, offset) = produce(&mut client, "orders", b"three-times");
    let mut reader = RetryReader::new();

    let (mut topic, mut at_queue, mut at_offset) = ("orders".to_string(), queue, offset);
    let mut gaps = Vec::new();
    for attempt in 1..=3u32 {
        // The due time is set while the reject runs, so the gap is timed from before it.
        let rejected = Instant::now();
        let outcome = reject(&mut client, GROUP, &topic, at_queue, at_offset, 3).expect("reject");
        assert_eq!(outcome.topic, RETRY);
        assert_eq!(outcome.reconsume_times, attempt);
        let (retry_queue, m) = reader
            .next(&mut client, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("retry {attempt} never arrived"));
        gaps.push(rejected.elapsed());
        assert_eq!(m.body, b"three-times");
        let delivery = Delivery::of(&m);
        assert_eq!(delivery.reconsume_times, attempt);
        assert_eq!(delivery.origin, Some(("orders".to_string(), queue, offset)));
        let due = properties::get_u64(&m.properties, DUE_MS).expect("a due time");
        assert!(now_ms() >= due, "retry {attempt} arrived before it was due");
        (topic, at_queue, at_offset) = (RETRY.to_string(), retry_queue, m.queue_offset);
    }
    eprintln!("gaps between each reject and its retry: {gaps:?}");
    for (gap, level_ms) in gaps.iter().zip([200, 400, 800]) {
        assert!(*gap >= Duration::from_millis(level_ms), "{gaps:?}");
    }
    assert!(
        gaps[0] < gaps[1] && gaps[1] < gaps[2],
        "the delays grow: {gaps:?}"
    );
    let dead = reject(&mut client, GROUP, &topic, at_queue, at_offset, 3).expect("reject");
    assert_eq!((dead.topic.as_str(), dead.reconsume_times), (DLQ, 4));

    // Under the broker's max_reconsume_times = 2: two retries, then the third reject is dead.
    let (queue, offset) = produce(&mut client, "orders", b"broker-max");
    let (mut topic, mut at_queue, mut at_offset) = ("orders".to_string(), queue, offset);
    for attempt in 1..=2u32 {
        let outcome = reject(&mut client, GROUP, &topic, at_queue, at_offset, 0).expect("reject");
        assert_eq!(
            (outcome.topic.as_str(), outcome.reconsume_times),
            (RETRY, attempt)
        );
        let (retry_queue, m) = reader
            .next(&mut client, Duration::from_secs(10))
            .expect("a retry");
        assert_eq!(m.body, b"broker-max");
        (topic, at_queue, at_offset) = (RETRY.to_string(), retry_queue, m.queue_offset);
    }
    let dead = reject(&mut client, GROUP, &topic, at_queue, at_offset, 0).expect("reject");
    assert_eq!((dead.topic.as_str(), dead.reconsume_times), (DLQ, 3));
    assert!(
        reader
            .next(&mut client, Duration::from_millis(1_500))
            .is_none(),
        "a dead letter is not retried"
    );

    let listed = broker.cli(&["group", "dlq", GROUP, "--format", "json"], b"");
    assert!(listed.status.success(), "{listed:?}");
    let letters: Vec<serde_json::Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(letters.len(), 2, "{letters:?}");
    let bodies: Vec<&str> = letters
        .iter()
        .map(|l| l["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["three-times", "broker-max"]);
    assert_eq!(letters[0]["attempts"], 4);
    assert_eq!(letters[1]["attempts"], 3);
    for letter in &letters {
        assert_eq!(letter["origin_topic"], "orders");
        assert!(letter["origin_offset"].is_u64());
    }
    let text = broker.cli(&["group", "dlq", GROUP], b"");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("2 dead letters") && text.contains("broker-max"),
        "{text}"
    );

    let consumed = broker.cli(&["consume", DLQ, "--format", "json"], b"");
    assert!(consumed.status.success(), "{consumed:?}");
    let consumed = String::from_utf8_lossy(&consumed.stdout);
    assert_eq!(consumed.lines().count(), 2, "{consumed}");
    assert!(consumed.contains("ORIGIN_TOPIC=orders"), "{consumed}");
}

/// A retry still waiting for its due time when the broker is SIGKILLed arrives after an
/// immediate restart, not before its due time.
#[test]
fn a_pending_retry_survives_a_sigkill() {
    let root = temp_store();
    let mut broker = Broker::start_with_config(
        root.path(),
        "retry_delay_levels_ms = [2000]\nmax_reconsume_times = 2",
        &[],
    );
    let mut client = broker.client();
    client.create_topic("orders", 1).expect("create");
    let (queue, offset) = produce(&mut client, "orders", b"pending");
    let outcome = reject(&mut client, GROUP, "orders", queue, offset, 0).expect("reject");
    assert_eq!(outcome.delay_ms, 2_000);
    let mut reader = RetryReader::new();
    assert!(
        reader
            .next(&mut client, Duration::from_millis(300))
            .is_none(),
        "the retry came before its delay"
    );
    broker.kill();
    broker.restart();
    let mut client = broker.client();
    let (_, m) = reader
        .next(&mut client, Duration::from_secs(15))
        .expect("the pending retry arrived after the restart");
    assert_eq!(m.body, b"pending");
    let due = properties::get_u64(&m.properties, DUE_MS).expect("a due time");
    assert!(now_ms() >= due, "the retry arrived before it was due");
    assert_eq!(Delivery::of(&m).reconsume_times, 1);
}

/// `consume --group app --exec CMD`: a command that fails for one message rejects it each
/// time; it comes back through `%RETRY%app` to the same consumer, with its attempt count in
/// `RINGMQ_RECONSUME_TIMES`, twice (the broker's `max_reconsume_times = 2`), each no sooner
/// than its delay, and its third failure makes it a dead letter. The message that succeeds is
/// processed once.
#[test]
fn consume_exec_rejects_on_failure_until_the_message_is_dead() {
    let root = temp_store();
    let broker = Broker::start_with_config(root.path(), LEVELS, &[]);
    let mut client = broker.client();
    client.create_topic("orders", 2).expect("create");
    produce(&mut client, "orders", b"fail-me");
    produce(&mut client, "orders", b"fine");
    let log = root.path().join("exec.log");
    let command = format!(
        "body=$(cat); echo \"$(date +%s%3N) $RINGMQ_TOPIC $RINGMQ_RECONSUME_TIMES $body\" >> {}; \
         [ \"$body\" != fail-me ]",
        log.display()
    );
    // Four deliveries: "fine" once, "fail-me" three times. Short long polls (split across the
    // topic's and the retry topic's queues) so a retry is seen soon after it is due.
    let consumed = broker.cli(
        &[
            "consume",
            "orders",
            "--group",
            GROUP,
            "--exec",
            &command,
            "--follow",
            "--count",
            "4",
            "--max-wait-ms",
            "100",
        ],
        b"",
    );
    assert!(consumed.status.success(), "{consumed:?}");
    let log = std::fs::read_to_string(&log).expect("the command ran");
    let runs: Vec<Vec<&str>> = log.lines().map(|l| l.split(' ').collect()).collect();
    let failing: Vec<&Vec<&str>> = runs.iter().filter(|r| r[3] == "fail-me").collect();
    let fine = runs.iter().filter(|r| r[3] == "fine").count();
    assert_eq!(fine, 1, "{log}");
    assert_eq!(failing.len(), 3, "{log}");
    let topics: Vec<&str> = failing.iter().map(|r| r[1]).collect();
    assert_eq!(topics, ["orders", RETRY, RETRY], "{log}");
    let attempts: Vec<&str> = failing.iter().map(|r| r[2]).collect();
    assert_eq!(attempts, ["0", "1", "2"], "{log}");
    let at: Vec<u64> = failing.iter().map(|r| r[0].parse().unwrap()).collect();
    // Never before the level's delay (the growth itself is timed in the test above, without
    // a consumer's polling in between).
    let gaps = [at[1] - at[0], at[2] - at[1]];
    eprintln!("--exec runs of the failing message {gaps:?} ms apart");
    assert!(gaps[0] >= 200 && gaps[1] >= 400, "{gaps:?}\n{log}");
    let stats = String::from_utf8_lossy(&consumed.stderr);
    assert!(stats.contains("rejected 3 (dead 1)"), "{stats}");

    let listed = broker.cli(&["group", "dlq", GROUP, "--format", "json"], b"");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    let letter: serde_json::Value = serde_json::from_str(listed.trim()).unwrap();
    assert_eq!(letter["body"], "fail-me");
    assert_eq!(letter["attempts"], 3);
    assert_eq!(letter["origin_topic"], "orders");
}
