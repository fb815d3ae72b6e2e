//! A group of brokers in controller mode, for the controller tests (tests/controller_mode.rs
//! on loopback, tests/netns.rs across namespaces): controller processes, the group's master as
//! the controllers see it, a producer of unique payloads at level `all` that records every
//! outcome, and the readers and comparisons the history checks use.
#![allow(dead_code)]

use super::{http_get, temp_store, wait_until, Broker, PortBlock, Sizes};
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

pub const CLUSTER: &str = "c1";
pub const GROUP: &str = "group-a";
pub const TOPIC: &str = "orders";
pub const QUEUES: u32 = 4;

/// One controller process; killed on drop.
pub struct Controller {
    pub addr: String,
    /// Its `/metrics` endpoint (a lone controller from [`Controller::start`] only).
    pub metrics: Option<String>,
    _store: tempfile::TempDir,
    child: Child,
}

impl Controller {
    /// A lone controller on loopback.
    pub fn start() -> Controller {
        let block = PortBlock::allocate();
        let (addr, metrics) = (block.listen_addr(), block.ha_addr());
        let peers = format!("1={addr}");
        let mut controller = Controller::spawn_with(
            Command::new(env!("CARGO_BIN_EXE_ringmq")),
            1,
            &peers,
            addr,
            &["--metrics-listen", &metrics],
        );
        controller.metrics = Some(metrics);
        controller
    }

    /// Controller `id` of `peers` (`ID=HOST:PORT,...`, its own entry `addr`), run by
    /// `command` (the binary, or `ip netns exec NS` and the binary); returns once it printed
    /// its ready line.
    pub fn spawn(command: Command, id: u64, peers: &str, addr: String) -> Controller {
        Controller::spawn_with(command, id, peers, addr, &[])
    }

    /// [`Controller::spawn`] with `extra` flags (`--enable-elect-unclean-master`, ...).
    pub fn spawn_with(
        mut command: Command,
        id: u64,
        peers: &str,
        addr: String,
        extra: &[&str],
    ) -> Controller {
        let store = temp_store();
        let mut child = command
            .args(["controller", "--id", &id.to_string(), "--peers", peers])
            .arg("--store")
            .arg(store.path())
            .args(extra)
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
            metrics: None,
            _store: store,
            child,
        }
    }

    pub fn group(&self) -> Option<GroupState> {
        group_state(std::slice::from_ref(&self.addr))
    }

    /// The status document (`cluster status --controller --format json`) of this controller.
    pub fn status(&self) -> serde_json::Value {
        let mut client =
            ControllerClient::new(vec![self.addr.clone()], Duration::from_secs(2)).expect("client");
        client.status().expect("controller status")
    }

    /// Waits (60 s at most) for the timeline of the switch to `epoch`, as the status document
    /// and `/metrics` give it; the latter's phases must equal the former's.
    pub fn timeline(&self, epoch: u64) -> serde_json::Value {
        let timeline = wait_until(Duration::from_secs(60), "the failover timeline", || {
            let status = self.status();
            status["groups"][0]["epoch_history"]
                .as_array()?
                .iter()
                .find(|e| e["epoch"] == epoch && e["timeline"].is_object())
                .map(|e| e["timeline"].clone())
        });
        if let Some(metrics) = &self.metrics {
            let text = http_get(metrics, "/metrics");
            for phase in ringmq::controller::state::FAILOVER_PHASES {
                if timeline[format!("{phase}_ms")].is_null() {
                    continue;
                }
                let line = format!(
                    r#"ringmq_controller_last_failover_phase_ms{{cluster="{CLUSTER}",group="{GROUP}",kind={},phase="{phase}"}} {}"#,
                    timeline["kind"],
                    timeline[format!("{phase}_ms")]
                );
                assert!(
                    text.lines().any(|l| l == line),
                    "{line} not in /metrics:\n{text}"
                );
            }
        }
        timeline
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why broker `broker_id` is in or out of the SyncStateSet, as the leading controller's
/// status document says (`None` until a leader answers with a reason).
pub fn sync_state_why(controllers: &[String], broker_id: u64) -> Option<String> {
    let mut client = ControllerClient::new(controllers.to_vec(), Duration::from_secs(2)).ok()?;
    let status = client.status().ok()?;
    let leader = status["leader_addr"].as_str()?.to_string();
    let status = if status["is_leader"] == true {
        status
    } else {
        ControllerClient::new(vec![leader], Duration::from_secs(2))
            .ok()?
            .status()
            .ok()?
    };
    status["groups"][0]["brokers"]
        .as_array()?
        .iter()
        .find(|b| b["broker_id"] == broker_id)?["why"]
        .as_str()
        .map(str::to_string)
}

/// The group's state from whichever of `controllers` leads.
pub fn group_state(controllers: &[String]) -> Option<GroupState> {
    let mut client = ControllerClient::new(controllers.to_vec(), Duration::from_secs(2)).ok()?;
    client.group_state(CLUSTER, GROUP).ok()
}

/// A broker of the group in controller mode on loopback, on fixed ports so a restart keeps
/// its addresses.
pub fn controlled_broker(
    root: &std::path::Path,
    controller: &Controller,
    sizes: Sizes,
    config: &str,
) -> Broker {
    controlled_broker_at(root, &controller.addr, sizes, config)
}

/// [`controlled_broker`] with the controllers at `controllers` (a list, or a proxy).
pub fn controlled_broker_at(
    root: &std::path::Path,
    controllers: &str,
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
            controllers,
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

/// The listen address of the group's master and its broker id, once the controllers have one
/// whose SyncStateSet has `members` members.
pub fn master_with_set(controllers: &[String], members: usize, timeout: Duration) -> (String, u64) {
    wait_until(timeout, "a master with a full SyncStateSet", || {
        let group = group_state(controllers)?;
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
pub struct History {
    pub acked: Vec<(String, u32, u64)>,
    /// The commitlog offset of each acknowledged payload's record, in `acked`'s order.
    pub commitlog_offsets: Vec<u64>,
    pub oks: Vec<(Instant, String)>,
    pub errors: BTreeMap<String, u64>,
}

/// Sends unique payloads at level `all` until `stop`, to whichever of `brokers` answers: a
/// failure moves to the next address (a NOT_MASTER names the master, the list finds it too).
pub fn produce_until(brokers: Vec<String>, stop: Arc<AtomicBool>, history: Arc<Mutex<History>>) {
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
                h.commitlog_offsets.push(result.response.commitlog_offset);
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
pub fn read_all(addr: &str, queues: u32) -> BTreeMap<u32, BTreeMap<u64, String>> {
    try_read_all(addr, queues).unwrap_or_else(|e| panic!("reading {addr}: {e}"))
}

pub fn try_read_all(
    addr: &str,
    queues: u32,
) -> Result<BTreeMap<u32, BTreeMap<u64, String>>, String> {
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

/// Polls `probe` until it holds or `timeout` passes; whether it held.
pub fn wait_until_or(timeout: Duration, mut probe: impl FnMut() -> bool) -> bool {
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
pub fn first_difference(
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

/// The history checks: every acknowledged payload is in `stored` (the master's log) at the
/// queue and offset it was acknowledged with, and no queue offset was acknowledged twice.
pub fn assert_no_acknowledged_loss(
    history: &History,
    stored: &BTreeMap<u32, BTreeMap<u64, String>>,
) {
    let mut lost = Vec::new();
    for (payload, queue, offset) in &history.acked {
        let there = stored.get(queue).and_then(|q| q.get(offset));
        if there != Some(payload) {
            lost.push((payload.clone(), *queue, *offset, there.cloned()));
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged payloads are missing or elsewhere on the master: {:?}",
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
}

/// Waits until every broker of `others` holds exactly `stored` (the master's log) per queue:
/// a slave that kept bytes of its own (a term opened twice, a divergent tail not cut) differs
/// there.
pub fn assert_converged(
    others: &[String],
    stored: &BTreeMap<u32, BTreeMap<u64, String>>,
    timeout: Duration,
) {
    let mut last_difference = String::new();
    let converged = wait_until_or(timeout, || {
        others.iter().all(|addr| match try_read_all(addr, QUEUES) {
            Ok(log) if log == *stored => true,
            Ok(log) => {
                last_difference = first_difference(addr, &log, stored);
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
        "the brokers' logs never agreed with the master's: {last_difference}"
    );
}

/// Creates the topic on `master` and waits until every one of `brokers` has it: topics reach
/// the slaves with the next metadata frame, not with the log, and a master lost before it
/// sent one leaves a new master without the topic.
pub fn create_topic_everywhere(master: &str, brokers: &[String]) {
    create_named_topic_everywhere(master, brokers, TOPIC, QUEUES);
}

/// [`create_topic_everywhere`] for a topic `topic` of `queues` queues.
pub fn create_named_topic_everywhere(master: &str, brokers: &[String], topic: &str, queues: u32) {
    Client::connect(master)
        .expect("connect to the master")
        .create_topic(topic, queues)
        .expect("create the topic");
    for broker in brokers {
        wait_until(Duration::from_secs(30), "the topic on every broker", || {
            let mut c = Client::connect(broker).ok()?;
            c.call(&TopicListRequest {})
                .ok()?
                .topics
                .iter()
                .any(|t| t.name == topic)
                .then_some(())
        });
    }
}

/// The broker id a stopped master's log says it handed its group to (SIGTERM in controller
/// mode); fails with the log's end when it handed over to nobody.
pub fn handed_over_to(broker: &Broker) -> u64 {
    broker
        .log()
        .lines()
        .find_map(|l| {
            l.split("handed the group over to broker ")
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "no hand-over in the stopped master's log:\n{}",
                broker.log_tail()
            )
        })
}
