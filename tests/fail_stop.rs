//! Fail-stop: a shard that dies takes the whole broker down with one log line naming it, so a
//! supervisor's restart recovers it, instead of the broker serving on with a dead shard; and a
//! start-up stage that never finishes ends the broker naming the shard and the stage, instead
//! of a silent hang.

mod common;

use ringmq::protocol::message::QueueRef;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn a_panicking_shard_ends_the_process_naming_the_shard() {
    let dir = common::temp_store();
    let store = dir.path().join("data");
    let log = dir.path().join("broker.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["serve", "--store", store.to_str().unwrap(), "--shards", "2"])
        .args(["--listen", "127.0.0.1:0", "--ha-listen", "127.0.0.1:0"])
        .env("RINGMQ_TEST_PANIC_SHARD", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start ringmq serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (status_tx, status_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = status_tx.send(child.wait());
    });
    let status = status_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the broker exits after its shard panicked")
        .expect("wait");
    assert!(!status.success(), "{status:?}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("shard-1") && log.contains("injected test panic in shard 1"),
        "{log}"
    );
    assert!(log.contains("restart recovers it"), "{log}");
    drop(rx);
}

#[test]
fn a_start_up_stage_that_never_finishes_ends_the_broker_naming_shard_and_stage() {
    let dir = common::temp_store();
    let store = dir.path().join("data");
    let config = dir.path().join("broker.toml");
    std::fs::write(&config, "startup_stage_timeout_ms = 1500\n").unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["serve", "--store", store.to_str().unwrap(), "--shards", "2"])
        .args(["--config", config.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--ha-listen", "127.0.0.1:0"])
        .env("RINGMQ_TEST_STALL_SHARD", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringmq serve");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(out) = rx.recv_timeout(Duration::from_secs(60)) else {
        unsafe { libc::kill(pid, libc::SIGKILL) };
        panic!("a stalled start-up stage hung the broker past its deadline");
    };
    let out = out.expect("wait");
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ringmq ready"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("shard 1 did not finish a start-up stage within 1500 ms")
            && stderr.contains("priming the io_uring poll probe in")
            && stderr.contains("shard-1"),
        "{stderr}"
    );
}

/// SIGTERM stops accepting, answers what is in flight, flushes and exits: every produce the
/// client had pipelined when the signal arrived gets an answer (OK once flushed, or a
/// retryable SYSTEM_BUSY if it was read after the stop began), the broker exits cleanly, and
/// every OK is there after the restart.
#[test]
fn sigterm_answers_every_request_in_flight_then_exits_cleanly() {
    use ringmq::protocol::message::MessageRef;
    use ringmq::protocol::Status;
    let dir = common::temp_store();
    let mut broker =
        common::Broker::start_sized(dir.path(), common::Sizes::Default, "", &["--shards", "1"]);
    let mut client = broker.client();
    client.create_topic("drain", 1).expect("create topic");
    client.topic("drain").expect("routing");
    let body = vec![5u8; 4096];
    let message = MessageRef {
        born_timestamp_ms: 0,
        key: b"",
        properties: b"",
        body: &body,
    };
    let mut tickets: Vec<_> = (0..400)
        .map(|_| {
            client
                .send_produce("drain", Some(0), &[message])
                .expect("send")
        })
        .collect();
    // The signal goes once the broker has answered the first: before that, on a loaded machine
    // it may not have read any of them yet (every answer SYSTEM_BUSY, nothing acknowledged to
    // check after the restart). The other 399 are in flight, read or not, when it arrives.
    let first = tickets.remove(0);
    let first = client
        .wait_produce(first)
        .expect("the first produce before the signal");
    assert_eq!(first.status, Status::Ok);
    broker.signal(libc::SIGTERM);
    let mut ok = 1u64;
    let mut busy = 0u64;
    for ticket in tickets {
        match client.wait_produce(ticket) {
            Ok(result) if result.status == Status::Ok => ok += 1,
            Err(e) if e.status() == Some(Status::SystemBusy) => busy += 1,
            other => panic!("a request in flight at SIGTERM got {other:?}"),
        }
    }
    eprintln!("after SIGTERM: {ok} OK, {busy} SYSTEM_BUSY");
    assert!(broker.stop(), "the broker exits cleanly after SIGTERM");
    broker.restart();
    let stats = broker
        .client()
        .call(&QueueRef {
            topic: "drain".into(),
            queue: 0,
        })
        .expect("queue stats");
    assert_eq!(
        stats.max_offset, ok,
        "every OK survives, nothing refused was stored"
    );
}
