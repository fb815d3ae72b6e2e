//! End to end: the real `ringmq bench` binary with embedded brokers on a tiny workload writes
//! the whole results folder and prints the matrix and ratio tables.

mod common;

use common::Broker;
use ringmq::client::cluster::{NameServerSource, RouteSource};
use ringmq::protocol::message::QueueRef;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

#[test]
fn bench_matrix_writes_the_results_folder() {
    let root = common::temp_store();
    let out = root.path().join("results");
    let config = root.path().join("broker.toml");
    // Small segments keep broker start (zero-filling the first segment) fast in a debug build.
    std::fs::write(
        &config,
        "segment_size_bytes = 4194304\nwrite_buffer_bytes = 1048576\nmax_message_bytes = 65536\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args([
            "bench",
            "--count",
            "200",
            "--producers-list",
            "1,4",
            "--size",
            "128",
        ])
        .args(["--warmup", "0.2", "--queues", "4", "--shards", "2"])
        .args(["--latency-axis", "log"])
        .arg("--broker-config")
        .arg(&config)
        .arg("--store-root")
        .arg(root.path())
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run ringmq bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("200 records sent,"), "{stdout}");
    assert!(stdout.contains("ms 99.9th."), "{stdout}");
    for row in [
        "SYNC_FLUSH           1",
        "SYNC_FLUSH           4",
        "ASYNC_FLUSH          4",
        "SYNC_MASTER          4",
        "ASYNC_MASTER         1",
    ] {
        assert!(stdout.contains(row), "table row `{row}` missing:\n{stdout}");
    }
    assert!(stdout.contains("SYNC_FLUSH / ASYNC_FLUSH"), "{stdout}");
    assert!(stdout.contains("SYNC_MASTER / ASYNC_MASTER"), "{stdout}");

    for name in [
        "SYNC_FLUSH-p1",
        "SYNC_FLUSH-p4",
        "ASYNC_FLUSH-p1",
        "ASYNC_FLUSH-p4",
        "SYNC_MASTER-p4",
        "ASYNC_MASTER-p1",
    ] {
        let hgrm = std::fs::read_to_string(out.join(format!("{name}.produce.hgrm"))).unwrap();
        assert!(hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
        assert!(hgrm.contains("Total count    =          200]"), "{hgrm}");
        assert!(out.join(format!("{name}.e2e.hgrm")).exists());
        let hlog = std::fs::read_to_string(out.join(format!("{name}.hlog"))).unwrap();
        assert!(
            hlog.contains("#[StartTime: ") && hlog.contains("Tag=produce"),
            "{hlog}"
        );
    }
    for file in [
        "produce-latency-by-percentile.png",
        "produce-latency-by-percentile.svg",
        "e2e-latency-by-percentile.png",
        "throughput-over-time.png",
        "throughput-over-time.svg",
        "mode-ratios.png",
        "mode-ratios.svg",
    ] {
        let len = std::fs::metadata(out.join(file))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 1000, "{file}: {len} bytes");
    }
    let png = std::fs::read(out.join("throughput-over-time.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");

    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let runs = results["runs"].as_array().unwrap();
    // Every mode (two flush modes, two replicated ones) at each producer count.
    assert_eq!(runs.len(), 8);
    for run in runs {
        assert_eq!(run["messages"], 200);
        assert_eq!(run["failed_messages"], 0);
        assert_eq!(run["produce_latency"]["count"], 200);
        // The consumer read back every measured message the broker acknowledged.
        assert_eq!(run["consumed_messages"], 200);
        assert_eq!(run["driver"], "event-loop/1");
        // The embedded broker is a child process: its CPU is always sampled.
        assert!(run["cpu"]["broker_percent"].is_number(), "{run}");
        assert!(run["cpu"]["driver_percent"].is_number(), "{run}");
    }
    for run in runs
        .iter()
        .filter(|r| r["mode"].as_str().unwrap().ends_with("MASTER"))
    {
        assert!(run["cpu"]["slave_percent"].is_number(), "{run}");
    }
    assert_eq!(results["ratios"].as_array().unwrap().len(), 4);

    let machine: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("machine.json")).unwrap()).unwrap();
    assert!(machine["kernel"].is_string());
    assert!(machine["cores"].as_u64().unwrap() >= 1);
    assert_eq!(
        machine["broker_config"]["ready_lines"]
            .as_array()
            .unwrap()
            .len(),
        8
    );
    // Every embedded broker's store was removed after its run.
    let leftover: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("ringmq-bench-"))
        .collect();
    assert!(leftover.is_empty(), "stores left behind: {leftover:?}");
}

#[test]
fn bench_reports_an_unreachable_broker() {
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["bench", "--broker", "127.0.0.1:1", "--count", "10"])
        .output()
        .expect("run ringmq bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach broker at 127.0.0.1:1"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bench_reports_a_failed_embedded_start_with_the_broker_log() {
    let root = common::temp_store();
    let config = root.path().join("bad.toml");
    std::fs::write(&config, "segment_size_bytes = 12345\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["bench", "--count", "10", "--modes", "SYNC_FLUSH"])
        .arg("--broker-config")
        .arg(&config)
        .arg("--store-root")
        .arg(root.path())
        .arg("--out")
        .arg(root.path().join("out"))
        .output()
        .expect("run ringmq bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("embedded SYNC_FLUSH broker failed to start"),
        "{stderr}"
    );
    assert!(stderr.contains("segment_size_bytes"), "{stderr}");
}

/// Against an external broker, with either driver: what the bench counts as acknowledged is
/// exactly what the broker stored (queue max offsets of the bench's topic), and the broker's
/// CPU is found from its port.
#[test]
fn bench_against_an_external_broker_counts_what_the_broker_stored() {
    let root = common::temp_store();
    let broker = Broker::start(root.path(), &["--shards", "2"]);
    for (driver, producers, window) in [("event-loop", "6", "3"), ("threads", "3", "2")] {
        let out = root.path().join(format!("results-{driver}"));
        let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["bench", "--broker", &broker.addr, "--driver", driver])
            .args([
                "--driver-threads",
                "2",
                "--producers",
                producers,
                "--window",
                window,
            ])
            .args(["--count", "300", "--warmup", "0", "--consumers", "0"])
            .args(["--size", "100", "--queues", "4"])
            .arg("--out")
            .arg(&out)
            .output()
            .expect("run ringmq bench");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "bench --driver {driver} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        assert!(stdout.contains("broker_us_per_msg="), "{stdout}");
        let results: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap())
                .unwrap();
        let run = &results["runs"][0];
        assert_eq!(run["messages"], 300, "{run}");
        assert_eq!(run["failed_messages"], 0, "{run}");
        assert!(run["cpu"]["broker_percent"].is_number(), "{run}");
        assert!(run["cpu"]["broker_us_per_message"].is_number(), "{run}");
        assert_eq!(
            run["driver"],
            if driver == "threads" {
                "threads"
            } else {
                "event-loop/2"
            }
        );
    }
    // Each run made its own topic; together they stored both runs' messages and no more.
    let mut client = broker.client();
    let topics: Vec<_> = client
        .refresh_metadata()
        .unwrap()
        .topics
        .iter()
        .filter(|t| t.name.starts_with("bench-"))
        .cloned()
        .collect();
    assert_eq!(topics.len(), 2, "{topics:?}");
    for topic in topics {
        let stored: u64 = (0..topic.queue_count())
            .map(|queue| {
                client
                    .call(&QueueRef {
                        topic: topic.name.clone(),
                        queue,
                    })
                    .unwrap()
                    .max_offset
            })
            .sum();
        assert_eq!(stored, 300, "topic {}", topic.name);
    }
}

/// `ringmq namesrv` on a free port, stopped (killed: it keeps nothing) when dropped.
struct NameServer {
    child: std::process::Child,
    addr: String,
}

impl NameServer {
    fn start() -> NameServer {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["namesrv", "--listen", "127.0.0.1:0"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start ringmq namesrv");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines
            .find_map(|l| l.ok().filter(|l| l.starts_with("ringmq ready")))
            .expect("name server ready line");
        let addr = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("listen="))
            .expect("listen= in the ready line")
            .to_string();
        // Keep draining stdout so the name server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        NameServer { child, addr }
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `bench --namesrv` against two broker groups on loopback: with either driver every
/// acknowledged message is stored (the sum of both groups' queue max offsets equals the run's
/// count) and both groups took some.
#[test]
fn bench_over_two_groups_found_through_a_name_server_counts_what_both_stored() {
    let root = common::temp_store();
    let namesrv = NameServer::start();
    let groups: Vec<(tempfile::TempDir, Broker)> = ["a", "b"]
        .iter()
        .map(|group| {
            let dir = common::temp_store();
            let broker = Broker::start(
                dir.path(),
                &[
                    "--shards",
                    "2",
                    "--namesrv",
                    &namesrv.addr,
                    "--cluster",
                    "bench-test",
                    "--broker-name",
                    group,
                ],
            );
            (dir, broker)
        })
        .collect();
    common::wait_until(Duration::from_secs(30), "both groups registered", || {
        let brokers = NameServerSource::default()
            .query(&namesrv.addr, "bench-test")
            .ok()?;
        (brokers.iter().filter(|b| b.is_master()).count() == 2).then_some(())
    });
    for driver in ["event-loop", "threads"] {
        let out = root.path().join(format!("results-{driver}"));
        let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args([
                "bench",
                "--namesrv",
                &namesrv.addr,
                "--cluster",
                "bench-test",
            ])
            .args(["--driver", driver, "--producers", "3", "--window", "2"])
            .args(["--duration", "1", "--warmup", "0", "--consumers", "1"])
            .args(["--size", "100", "--queues", "2"])
            .arg("--out")
            .arg(&out)
            .output()
            .expect("run ringmq bench");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "bench --namesrv --driver {driver} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        let results: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap())
                .unwrap();
        let run = &results["runs"][0];
        assert_eq!(run["failed_messages"], 0, "{run}");
        let acked = run["messages"].as_u64().unwrap();
        assert!(acked > 0, "{run}");
        assert_eq!(
            run["consumed_messages"], acked,
            "consumers read every group: {run}"
        );
        assert!(run["cpu"]["broker_percent"].is_number(), "{run}");
        let per_group: Vec<u64> = groups
            .iter()
            .map(|(_, broker)| stored_by_bench_topics(broker, driver))
            .collect();
        assert_eq!(
            per_group.iter().sum::<u64>(),
            acked,
            "driver {driver}: stored per group {per_group:?}"
        );
        assert!(
            per_group.iter().all(|&n| n > 0),
            "driver {driver}: every group took messages: {per_group:?}"
        );
    }
}

/// Messages stored in the bench topics on `broker` not yet counted for an earlier driver: the
/// run's topic is the newest `bench-` topic (each run creates its own).
fn stored_by_bench_topics(broker: &Broker, driver: &str) -> u64 {
    let mut client = broker.client();
    let mut topics: Vec<_> = client
        .refresh_metadata()
        .unwrap()
        .topics
        .iter()
        .filter(|t| t.name.starts_with("bench-"))
        .cloned()
        .collect();
    topics.sort_by_key(|t| t.topic_id);
    let topic = topics
        .last()
        .unwrap_or_else(|| panic!("{driver}: no bench topic"));
    (0..topic.queue_count())
        .map(|queue| {
            client
                .call(&QueueRef {
                    topic: topic.name.clone(),
                    queue,
                })
                .unwrap()
                .max_offset
        })
        .sum()
}

/// A bench run against embedded brokers with small segments, `args` after `bench`, stored
/// under a fresh root: its root (keep it alive), results folder, stdout and results.json.
/// Fails with both outputs unless it succeeded.
fn embedded_bench(args: &[&str]) -> (tempfile::TempDir, PathBuf, String, serde_json::Value) {
    let root = common::temp_store();
    let out = root.path().join("results");
    let config = root.path().join("broker.toml");
    std::fs::write(
        &config,
        "segment_size_bytes = 4194304\nwrite_buffer_bytes = 1048576\nmax_message_bytes = 65536\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .arg("bench")
        .args(args)
        .args(["--warmup", "0"])
        .arg("--broker-config")
        .arg(&config)
        .arg("--store-root")
        .arg(root.path())
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run ringmq bench");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    (root, out, stdout, results)
}

/// Every run of `results` sent `count` messages, none failed, and all were consumed.
fn every_message_acknowledged_and_consumed(results: &serde_json::Value, count: u64) {
    for run in results["runs"].as_array().unwrap() {
        assert_eq!(run["messages"], count, "{run}");
        assert_eq!(run["failed_messages"], 0, "{run}");
        assert_eq!(run["consumed_messages"], count, "{run}");
    }
}

/// The two-group mode: an embedded name server and two SYNC_MASTER groups of one shard each,
/// reported beside the one-group SYNC_MASTER run of two shards with their ratio.
#[test]
fn two_group_mode_runs_beside_one_group_with_the_ratio() {
    let (_root, out, stdout, results) = embedded_bench(&[
        "--modes",
        "SYNC_MASTER,SYNC_MASTER_X2",
        "--count",
        "200",
        "--producers",
        "2",
        "--window",
        "2",
        "--queues",
        "2",
        "--shards",
        "2",
    ]);
    assert!(stdout.contains("SYNC_MASTER_X2 / SYNC_MASTER"), "{stdout}");
    every_message_acknowledged_and_consumed(&results, 200);
    let x2 = &results["runs"][1];
    assert_eq!(x2["mode"], "SYNC_MASTER_X2", "{x2}");
    assert!(x2["cpu"]["slave_percent"].is_number(), "{x2}");
    // A master and a slave per group, each group's broker with half the shards (one), so
    // the total matches the one-group run's two.
    for group in ["g0", "g1"] {
        for index in 0..2 {
            let log = out.join(format!("SYNC_MASTER_X2-p2-{group}-{index}.broker.log"));
            assert!(log.exists(), "{} missing", log.display());
        }
    }
    let machine: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("machine.json")).unwrap()).unwrap();
    let broker = &machine["broker_config"];
    assert_eq!(broker["processes"][1]["groups"], 2, "{machine}");
    let ready = broker["ready_lines"].as_array().unwrap();
    assert!(
        ready[0].as_str().unwrap().contains(" shards=2 "),
        "{ready:?}"
    );
    assert!(
        ready[1].as_str().unwrap().contains(" shards=1 "),
        "{ready:?}"
    );
}

/// The controller mode: an embedded controller and a SYNC_MASTER-like pair in controller mode
/// (the controller elects the master the clients are given), reported beside SYNC_MASTER with
/// the ratio; every message is acknowledged (at the default level `all`) and consumed.
#[test]
fn controller_mode_runs_beside_sync_master_with_the_ratio() {
    let (_root, out, stdout, results) = embedded_bench(&[
        "--modes",
        "SYNC_MASTER,CONTROLLER",
        "--count",
        "200",
        "--producers",
        "2",
        "--window",
        "2",
        "--queues",
        "2",
        "--shards",
        "1",
    ]);
    assert!(stdout.contains("CONTROLLER / SYNC_MASTER"), "{stdout}");
    every_message_acknowledged_and_consumed(&results, 200);
    let controlled = &results["runs"][1];
    assert_eq!(controlled["mode"], "CONTROLLER", "{controlled}");
    assert!(
        controlled["cpu"]["slave_percent"].is_number(),
        "{controlled}"
    );
    let log = std::fs::read_to_string(out.join("CONTROLLER-p2-controller.controller.log"))
        .expect("the controller's log");
    assert!(
        log.contains("ElectMaster"),
        "the controller elected nobody:\n{log}"
    );
}

/// `--protocol native,kafka`: the same mode over ringmq frames and over the broker's Kafka
/// listener, each its own row; every Kafka-produced message is stored (and read by the
/// native consumers), and the kafka ÷ native table and `protocol_ratios` are written.
#[test]
fn kafka_protocol_rows_run_beside_native_with_the_ratio() {
    let (_root, _out, stdout, results) = embedded_bench(&[
        "--modes",
        "SYNC_FLUSH",
        "--protocol",
        "native,kafka",
        "--count",
        "300",
        "--producers",
        "3",
        "--window",
        "2",
        "--batch",
        "2",
        "--queues",
        "4",
        "--shards",
        "2",
    ]);
    assert!(stdout.contains("SYNC_FLUSH/kafka"), "{stdout}");
    assert!(stdout.contains("SYNC_FLUSH kafka / native"), "{stdout}");
    let runs = results["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[1]["protocol"], "kafka", "{}", runs[1]);
    assert_eq!(runs[1]["name"], "SYNC_FLUSH-kafka-p3");
    for run in runs {
        assert_eq!(run["messages"], 300, "{run}");
        assert_eq!(run["failed_messages"], 0, "{run}");
        assert_eq!(run["consumed_messages"], 300, "{run}");
    }
    let ratio = &results["protocol_ratios"][0];
    assert_eq!(ratio["mode"], "SYNC_FLUSH", "{results}");
    assert!(ratio["throughput_ratio"].as_f64().unwrap() > 0.0, "{ratio}");

    // Refusals: the thread driver, and --protocol kafka against --broker without --kafka.
    let threads = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args([
            "bench",
            "--protocol",
            "kafka",
            "--driver",
            "threads",
            "--count",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!threads.status.success());
    assert!(String::from_utf8_lossy(&threads.stderr).contains("event-loop"));
}
