//! The broker's probes through both readers: `Stats` (and `ringmq stats`) and the Prometheus
//! endpoint, against the real binary.

mod common;

use common::{temp_store, Broker};
use ringmq::protocol::message::MessageRef;
use ringmq::protocol::message::StatsRequest;

fn http_get(addr: &str, path: &str) -> (String, String) {
    let response = common::http_get(addr, path);
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP head");
    (head.to_string(), body.to_string())
}

/// Value of the first sample line starting with `prefix`.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn stats_and_prometheus_count_what_the_broker_did() {
    let root = temp_store();
    let broker = Broker::start(
        root.path(),
        &[
            "--shards",
            "2",
            "--flush",
            "SYNC_FLUSH",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let metrics = broker
        .ready_field("metrics")
        .expect("metrics address in the ready line");
    let mut client = broker.client();
    client.create_topic("probed", 2).unwrap();
    let body = [7u8; 100];
    let message = MessageRef {
        born_timestamp_ms: 0,
        key: b"",
        properties: b"",
        body: &body,
    };
    for queue in [0, 1, 0, 1, 0] {
        client.produce("probed", Some(queue), &[message]).unwrap();
    }
    client.produce("probed", Some(1), &[message; 3]).unwrap();
    let pulled = client.pull("probed", 0, 0, 100, 1 << 20, 0).unwrap();
    assert_eq!(pulled.messages.len(), 3);

    let stats = client.call(&StatsRequest {}).unwrap();
    assert_eq!(stats.shards, vec![0, 1]);
    assert_eq!(stats.counters["produce_requests_total"], 6);
    assert_eq!(stats.counters["messages_appended_total"], 8);
    assert_eq!(stats.counters["messages_pulled_total"], 3);
    assert_eq!(stats.counters["pull_requests_total"], 1);
    let flushes = stats.counters["flushes_total"];
    assert!(flushes >= 1, "{stats:?}");
    let batch_records = &stats.histograms["flush_batch_records"];
    assert_eq!(batch_records.count, flushes);
    assert!(
        batch_records.max >= 1 && batch_records.max <= 8,
        "{batch_records:?}"
    );
    assert_eq!(stats.histograms["produce_latency_us"].count, 6);
    assert_eq!(stats.histograms["fdatasync_latency_us"].count, flushes);
    assert_eq!(stats.gauges["pending_completions"], 0);

    let (head, text) = http_get(&metrics, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("openmetrics-text"), "{head}");
    let produced: f64 = (0..2)
        .map(|s| {
            sample(
                &text,
                &format!("ringmq_produce_requests_total{{shard=\"{s}\"}}"),
            )
        })
        .sum();
    assert_eq!(produced, 6.0);
    let syncs: f64 = (0..2)
        .map(|s| {
            sample(
                &text,
                &format!("ringmq_fdatasync_latency_seconds_count{{shard=\"{s}\"}}"),
            )
        })
        .sum();
    assert_eq!(syncs as u64, flushes);
    assert!(text.contains("# TYPE ringmq_flush_batch_bytes histogram"));
    assert!(text.ends_with("# EOF\n"));

    let (head, _) = http_get(&metrics, "/nothing");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    let out = broker.cli(&["stats", "--format", "json"], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["counters"]["produce_requests_total"], 6);
}
