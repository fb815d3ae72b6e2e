//! Fail-stop: a shard that dies takes the whole broker down with one log line naming it, so a
//! supervisor's restart recovers it, instead of the broker serving on with a dead shard; and a
//! start-up stage that never finishes ends the broker naming the shard and the stage, instead
//! of a silent hang.

mod common;

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
