//! Brokers in controller mode (`serve --controller`), real binaries on loopback: one
//! controller and three brokers of one group at the default sizes and timeouts elect a master
//! and take both slaves into the SyncStateSet; a producer with the three brokers' addresses
//! sends unique payloads at level `all` while the master is SIGKILLed; a new master serves
//! within a deadline; every acknowledged payload is on the new master at the offset it was
//! acknowledged with (no acknowledged loss, no offset given twice); the killed broker,
//! restarted at once, rejoins as a slave and is taken back into the set. The measured
//! failover time (SIGKILL to the first OK on the new master) is printed. Also: a one-broker
//! group at the default `min_in_sync_replicas` gets IN_SYNC_REPLICAS_NOT_ENOUGH (Kafka's
//! producers NOT_ENOUGH_REPLICAS) and refuses `cluster promote`; `--role` beside `--controller` is refused at start.

mod common;

use common::kafka::{idempotent_batch, produce_request, produced, Wire};
use common::{http_get, run_binary, temp_store, wait_until, Broker, PortBlock, Sizes};
use kafka_protocol::messages::ApiKey;
use ringmq::client::controller::ControllerClient;
use ringmq::client::Client;
use ringmq::protocol::controller::GroupState;
use ringmq::protocol::message::{MessageRef, TopicListRequest};
use ringmq::protocol::{Acks, Status};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const CLUSTER: &str = "c1";
const GROUP: &str = "group-a";
const TOPIC: &str = "orders";
const QUEUES: u32 = 4;

/// One controller process on a fixed port; killed on drop.
struct Controller {
    addr: String,
    _store: tempfile::TempDir,
    child: Child,
}

impl Controller {
    fn start() -> Controller {
        let addr = PortBlock::allocate().listen_addr();
        let store = temp_store();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["controller", "--id", "1", "--peers", &format!("1={addr}")])
            .arg("--store")
            .arg(store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ringmq controller");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("ringmq ready") {
                    let _ = tx.send(line);
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the controller prints its ready line");
        Controller {
            addr,
            _store: store,
            child,
        }
    }

    fn group(&self) -> Option<GroupState> {
        let mut client =
            ControllerClient::new(vec![self.addr.clone()], Duration::from_secs(2)).ok()?;
        client.group_state(CLUSTER, GROUP).ok()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A broker of the group in controller mode, on fixed ports so a restart keeps its
/// addresses.
fn controlled_broker(
    root: &std::path::Path,
    controller: &Controller,
    sizes: Sizes,
    config: &str,
) -> Broker {
    let ports = PortBlock::allocate();
    Broker::start_sized(
        root,
        sizes,
        config,
        &[
            "--controller",
            &controller.addr,
            "--broker-name",
            GROUP,
            "--cluster",
            CLUSTER,
            "--listen",
            &ports.listen_addr(),
            "--ha-listen",
            &ports.ha_addr(),
        ],
    )
}

/// The listen address of the group's master and its broker id, once the controller has one
/// whose SyncStateSet has `members` members.
fn master_with_set(controller: &Controller, members: usize, timeout: Duration) -> (String, u64) {
    wait_until(timeout, "a master with a full SyncStateSet", || {
        let group = controller.group()?;
        (group.master_broker_id != 0 && group.sync_state_set.len() == members).then_some(())?;
        let master = group
            .brokers
            .iter()
            .find(|b| b.broker_id == group.master_broker_id)?;
        Some((master.listen.clone(), master.broker_id))
    })
}

/// What the producer saw: every acknowledged payload with where it was stored, and when and
/// where each OK came.
#[derive(Default)]
struct History {
    acked: Vec<(String, u32, u64)>,
    oks: Vec<(Instant, String)>,
    errors: BTreeMap<String, u64>,
}

/// Sends unique payloads at level `all` until `stop`, to whichever of `brokers` answers: a
/// failure moves to the next address (a NOT_MASTER names the master, the list finds it too).
fn produce_until(brokers: Vec<String>, stop: Arc<AtomicBool>, history: Arc<Mutex<History>>) {
    let mut current = 0;
    let mut client: Option<Client> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let addr = brokers[current].clone();
        if client.is_none() {
            client = Client::connect(&addr).ok();
        }
        let Some(c) = client.as_mut() else {
            current = (current + 1) % brokers.len();
            thread::sleep(Duration::from_millis(20));
            continue;
        };
        let payload = format!("payload-{n:08}");
        let queue = (n % u64::from(QUEUES)) as u32;
        let message = MessageRef {
            born_timestamp_ms: 0,
            key: b"",
            properties: b"",
            body: payload.as_bytes(),
        };
        match c.produce_with(TOPIC, Some(queue), &[message], Acks::All) {
            Ok(Some(result)) if result.status == Status::Ok => {
                let mut h = history.lock().unwrap();
                h.acked.push((payload, queue, result.response.base_offset));
                h.oks.push((Instant::now(), addr));
                n += 1;
            }
            other => {
                let what = match other {
                    Ok(Some(result)) => result.status.to_string(),
                    Ok(None) => "no answer".to_string(),
                    Err(e) => e
                        .status()
                        .map_or("connection".to_string(), |s| s.to_string()),
                };
                *history.lock().unwrap().errors.entry(what).or_default() += 1;
                // The payload may be stored: it is never acknowledged, so it is not checked,
                // and the next one is new.
                n += 1;
                client = None;
                current = (current + 1) % brokers.len();
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Every visible message of the first `queues` queues on `addr`: queue → (offset → body).
fn read_all(addr: &str, queues: u32) -> BTreeMap<u32, BTreeMap<u64, String>> {
    try_read_all(addr, queues).unwrap_or_else(|e| panic!("reading {addr}: {e}"))
}

fn try_read_all(addr: &str, queues: u32) -> Result<BTreeMap<u32, BTreeMap<u64, String>>, String> {
    let mut client = Client::connect(addr).map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for queue in 0..queues {
        let mut offset = 0;
        let mut messages = BTreeMap::new();
        loop {
            let pulled = client
                .pull(TOPIC, queue, offset, 256, 4 << 20, 0)
                .map_err(|e| e.to_string())?;
            if pulled.messages.is_empty() {
                break;
            }
            for m in pulled.messages {
                assert!(
                    messages
                        .insert(m.queue_offset, String::from_utf8_lossy(&m.body).to_string())
                        .is_none(),
                    "queue {queue}: offset {} read twice",
                    m.queue_offset
                );
                offset = m.queue_offset + 1;
            }
        }
        out.insert(queue, messages);
    }
    Ok(out)
}

#[test]
fn sigkill_of_the_master_fails_over_with_no_acknowledged_loss() {
    let controller = Controller::start();
    let roots: Vec<tempfile::TempDir> = (0..3).map(|_| temp_store()).collect();
    let mut brokers: Vec<Broker> = roots
        .iter()
        .map(|root| controlled_broker(root.path(), &controller, Sizes::Default, ""))
        .collect();
    let (master_addr, master_id) = master_with_set(&controller, 3, Duration::from_secs(60));
    let mut admin = Client::connect(&master_addr).expect("connect to the master");
    admin.create_topic(TOPIC, QUEUES).expect("create the topic");
    // Topics reach the slaves with the next metadata frame, not with the log: a master lost
    // before it sent one leaves a new master without the topic.
    for broker in &brokers {
        wait_until(Duration::from_secs(30), "the topic on every broker", || {
            let mut c = Client::connect(&broker.addr).ok()?;
            c.call(&TopicListRequest {})
                .ok()?
                .topics
                .iter()
                .any(|t| t.name == TOPIC)
                .then_some(())
        });
    }
    let addrs: Vec<String> = brokers.iter().map(|b| b.addr.clone()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(History::default()));
    let producer = {
        let (addrs, stop, history) = (addrs.clone(), stop.clone(), history.clone());
        thread::spawn(move || produce_until(addrs, stop, history))
    };
    wait_until(Duration::from_secs(60), "300 acknowledged payloads", || {
        (history.lock().unwrap().acked.len() >= 300).then_some(())
    });
    let victim = brokers
        .iter()
        .position(|b| b.addr == master_addr)
        .expect("the master is one of ours");
    brokers[victim].kill();
    let killed_at = Instant::now();
    let first_ok_elsewhere = || {
        let h = history.lock().unwrap();
        h.oks
            .iter()
            .find(|(at, addr)| *at > killed_at && *addr != master_addr)
            .map(|(at, addr)| (*at - killed_at, addr.clone()))
    };
    let deadline = killed_at + Duration::from_secs(30);
    let (failover, new_master) = loop {
        if let Some(found) = first_ok_elsewhere() {
            break found;
        }
        if Instant::now() > deadline {
            let errors = format!("{:?}", history.lock().unwrap().errors);
            for (i, b) in brokers.iter().enumerate().filter(|(i, _)| *i != victim) {
                let log = b.log();
                let topics: Vec<&str> = log.lines().filter(|l| l.contains("topic")).collect();
                eprintln!(
                    "--- broker {i} ({}) ---\n{}\n{}",
                    b.addr,
                    topics.join("\n"),
                    b.log_tail()
                );
            }
            panic!(
                "no OK from another broker within 30 s of the SIGKILL; errors {errors}; group {:?}",
                controller.group()
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    println!(
        "failover: SIGKILL of the master -> first OK on the new master {new_master} in {} ms",
        failover.as_millis()
    );
    // The killed broker comes back at once and rejoins as a slave.
    brokers[victim].restart();
    let acked_at_restart = history.lock().unwrap().acked.len();
    wait_until(Duration::from_secs(30), "200 more acknowledgements", || {
        (history.lock().unwrap().acked.len() >= acked_at_restart + 200).then_some(())
    });
    let (back_master, _) = master_with_set(&controller, 3, Duration::from_secs(60));
    assert_eq!(
        back_master, new_master,
        "the restarted broker did not take over"
    );
    let group = controller.group().expect("group state");
    assert!(
        group.sync_state_set.contains(&master_id),
        "the old master rejoined the SyncStateSet: {group:?}"
    );
    stop.store(true, Ordering::Relaxed);
    producer.join().expect("producer");
    let history = history.lock().unwrap();
    println!(
        "acknowledged {} payloads; errors by status {:?}",
        history.acked.len(),
        history.errors
    );
    let stored = read_all(&new_master, QUEUES);
    let mut lost = Vec::new();
    for (payload, queue, offset) in &history.acked {
        if stored[queue].get(offset) != Some(payload) {
            lost.push((
                payload.clone(),
                *queue,
                *offset,
                stored[queue].get(offset).cloned(),
            ));
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged payloads are missing or elsewhere on the new master: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    let mut offsets = std::collections::BTreeSet::new();
    for (_, queue, offset) in &history.acked {
        assert!(
            offsets.insert((*queue, *offset)),
            "queue {queue} offset {offset} acknowledged twice"
        );
    }
    // Every broker holds the same log per queue once the slaves caught up: a slave that kept
    // bytes of its own (a term opened twice, a cut missed) differs from the master there.
    let others: Vec<String> = addrs
        .iter()
        .filter(|a| **a != new_master)
        .cloned()
        .collect();
    let mut last_difference = String::new();
    let converged = wait_until_or(Duration::from_secs(30), || {
        others.iter().all(|addr| match try_read_all(addr, QUEUES) {
            Ok(log) if log == stored => true,
            Ok(log) => {
                last_difference = first_difference(addr, &log, &stored);
                false
            }
            Err(e) => {
                last_difference = format!("{addr}: {e}");
                false
            }
        })
    });
    assert!(
        converged,
        "the brokers' logs never agreed with the new master's: {last_difference}"
    );
    assert!(
        failover < Duration::from_secs(5),
        "failover took {} ms",
        failover.as_millis()
    );
}

/// Polls `probe` until it holds or `timeout` passes; whether it held.
fn wait_until_or(timeout: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if probe() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The first queue and offset where `log` (on `addr`) and the master's differ, in words.
fn first_difference(
    addr: &str,
    log: &BTreeMap<u32, BTreeMap<u64, String>>,
    master: &BTreeMap<u32, BTreeMap<u64, String>>,
) -> String {
    for (queue, messages) in master {
        let theirs = log.get(queue).cloned().unwrap_or_default();
        let offsets: std::collections::BTreeSet<u64> =
            messages.keys().chain(theirs.keys()).copied().collect();
        for offset in offsets {
            if messages.get(&offset) != theirs.get(&offset) {
                return format!(
                    "{addr} queue {queue} offset {offset}: {:?} there, {:?} on the master",
                    theirs.get(&offset),
                    messages.get(&offset)
                );
            }
        }
    }
    format!("{addr}: same messages, other queues")
}

#[test]
fn a_one_broker_group_refuses_all_level_produce_and_promote() {
    let controller = Controller::start();
    let root = temp_store();
    let broker = controlled_broker(
        root.path(),
        &controller,
        Sizes::Small,
        "kafka_listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n",
    );
    assert!(
        broker.ready_line.contains("role=CONTROLLED"),
        "{}",
        broker.ready_line
    );
    master_with_set(&controller, 1, Duration::from_secs(30));
    let mut client = broker.client();
    wait_until(
        Duration::from_secs(30),
        "the broker to act as master",
        || client.create_topic(TOPIC, 1).ok(),
    );
    let message = MessageRef {
        born_timestamp_ms: 0,
        key: b"",
        properties: b"",
        body: b"refused",
    };
    let refused = client
        .produce(TOPIC, Some(0), &[message])
        .expect_err("min_in_sync_replicas 2 with a set of 1");
    assert_eq!(
        refused.status(),
        Some(Status::InSyncReplicasNotEnough),
        "{refused}"
    );
    // Level `leader` needs only the lease, which the master holds.
    let accepted = MessageRef {
        body: b"accepted",
        ..message
    };
    let leader = client
        .produce_with(TOPIC, Some(0), &[accepted], Acks::Leader)
        .expect("a leader-level produce")
        .expect("answered");
    assert_eq!(leader.status, Status::Ok);
    // Refused before the append: the accepted message took the queue's first offset, and
    // nothing a consumer sees is the refused one.
    assert_eq!(
        leader.response.base_offset, 0,
        "the refused message took an offset"
    );
    // A set of the master alone holds back nothing a consumer may see.
    let mut stored = BTreeMap::new();
    let visible = wait_until_or(Duration::from_secs(10), || {
        stored = read_all(&broker.addr, 1);
        !stored[&0].is_empty()
    });
    let bodies: Vec<&String> = stored[&0].values().collect();
    assert!(visible && bodies == ["accepted"], "{stored:?}");
    let promote = broker.cli(&["cluster", "promote"], b"");
    assert!(!promote.status.success(), "promote was accepted");
    let stderr = String::from_utf8_lossy(&promote.stderr);
    assert!(stderr.contains("controller mode"), "{stderr}");

    // The controllers' view in /metrics: master under a lease, a set of one.
    let metrics = broker.ready_field("metrics").expect("the metrics listener");
    let text = http_get(&metrics, "/metrics");
    let gauge = |name: &str| -> u64 {
        text.lines()
            .find(|l| {
                l.starts_with(&format!("ringmq_{name} "))
                    || l.starts_with(&format!("ringmq_{name}{{"))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    assert_eq!(gauge("controller_is_master"), 1);
    assert_eq!(gauge("controller_sync_state_set_size"), 1);
    assert!(gauge("controller_master_epoch") >= 1);
    assert!(gauge("controller_lease_remaining_ms") > 0, "{text}");

    // Kafka's clients get the same refusal as NOT_ENOUGH_REPLICAS (19, "not stored"), and
    // acks 1 is level `leader`: its batch lands right after the native message.
    let kafka = broker.ready_field("kafka").expect("the Kafka listener");
    let mut wire = Wire::connect(&kafka);
    let all = produce_request(TOPIC, idempotent_batch(-1, -1, &["kafka refused"]));
    let (error, _) = produced(&wire.call(ApiKey::Produce, 9, &all));
    assert_eq!(error, 19, "acks -1 with a set of 1");
    let one = produce_request(TOPIC, idempotent_batch(-1, -1, &["kafka accepted"])).with_acks(1);
    assert_eq!(
        produced(&wire.call(ApiKey::Produce, 9, &one)),
        (0, 1),
        "the refused batch took no offset"
    );
}

#[test]
fn a_role_beside_the_controller_is_refused_at_start() {
    let store = temp_store();
    let store_arg = store.path().display().to_string();
    let out = run_binary(
        &[
            "serve",
            "--controller",
            "127.0.0.1:9",
            "--role",
            "SYNC_MASTER",
            "--store",
            &store_arg,
        ],
        b"",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broker_role"), "{stderr}");
}
