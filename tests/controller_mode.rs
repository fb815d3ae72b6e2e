//! Brokers in controller mode (`serve --controller`), real binaries on loopback: one
//! controller and three brokers of one group at the default sizes and timeouts elect a master
//! and take both slaves into the SyncStateSet; a producer with the three brokers' addresses
//! sends unique payloads at level `all` while the master is SIGKILLed; a new master serves
//! within a deadline; every acknowledged payload is on the new master at the offset it was
//! acknowledged with (no acknowledged loss, no offset given twice); the killed broker,
//! restarted at once, rejoins as a slave and is taken back into the set. The measured
//! failover time (SIGKILL to the first OK on the new master) is printed. SIGTERM of the master
//! instead hands the group over: the member its log names is the new master, nothing
//! acknowledged is lost, and the gap (SIGTERM to the first OK elsewhere) is printed. Also: a one-broker
//! group at the default `min_in_sync_replicas` gets IN_SYNC_REPLICAS_NOT_ENOUGH (Kafka's
//! producers NOT_ENOUGH_REPLICAS) and refuses `cluster promote`; `--role` beside `--controller` is refused at start.
//! And the expansion race (RocketMQ #5663): a SyncStateSet change the controller committed and
//! the master never heard of still counts its joiner (see the test).

mod common;

use common::controlled::*;
use common::kafka::{idempotent_batch, produce_request, produced, Wire};
use common::{http_get, run_binary, temp_store, wait_until, Broker, Sizes};
use kafka_protocol::messages::ApiKey;

use ringmq::protocol::message::MessageRef;
use ringmq::protocol::{Acks, Status};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// One controller and three brokers of one group at the default sizes and timeouts, a
/// master with all three in its set, and a producer of unique `all`-level payloads to the
/// three addresses that has 300 acknowledged.
struct Running {
    controller: Controller,
    _roots: Vec<tempfile::TempDir>,
    brokers: Vec<Broker>,
    addrs: Vec<String>,
    master_addr: String,
    master_id: u64,
    victim: usize,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    producer: Option<thread::JoinHandle<()>>,
}

impl Running {
    fn start() -> Running {
        let controller = Controller::start();
        let roots: Vec<tempfile::TempDir> = (0..3).map(|_| temp_store()).collect();
        let brokers: Vec<Broker> = roots
            .iter()
            .map(|root| controlled_broker(root.path(), &controller, Sizes::Default, ""))
            .collect();
        let (master_addr, master_id) = master_with_set(
            std::slice::from_ref(&controller.addr),
            3,
            Duration::from_secs(60),
        );
        let addrs: Vec<String> = brokers.iter().map(|b| b.addr.clone()).collect();
        create_topic_everywhere(&master_addr, &addrs);
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
        Running {
            controller,
            _roots: roots,
            brokers,
            addrs,
            master_addr,
            master_id,
            victim,
            stop,
            history,
            producer: Some(producer),
        }
    }

    /// The first OK after `since` from another broker than the old master: how long after
    /// `since`, and which broker. Fails with the survivors' logs after 30 s.
    fn first_ok_elsewhere(&self, since: Instant, what: &str) -> (Duration, String) {
        let deadline = since + Duration::from_secs(30);
        loop {
            let found = self
                .history
                .lock()
                .unwrap()
                .oks
                .iter()
                .find(|(at, addr)| *at > since && *addr != self.master_addr)
                .map(|(at, addr)| (*at - since, addr.clone()));
            if let Some(found) = found {
                return found;
            }
            if Instant::now() > deadline {
                let errors = format!("{:?}", self.history.lock().unwrap().errors);
                for (i, b) in self
                    .brokers
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != self.victim)
                {
                    eprintln!("--- broker {i} ({}) ---\n{}", b.addr, b.log_tail());
                }
                panic!(
                    "no OK from another broker within 30 s of the {what}; errors {errors}; group {:?}",
                    self.controller.group()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Restarts the old master at once; it rejoins as a slave and is taken back into the set
    /// while the producer goes on. Then every acknowledged payload is on `new_master` at its
    /// offset and the other two brokers hold the same.
    fn rejoin_and_check(mut self, new_master: &str) {
        self.brokers[self.victim].restart();
        let acked_at_restart = self.history.lock().unwrap().acked.len();
        wait_until(Duration::from_secs(30), "200 more acknowledgements", || {
            (self.history.lock().unwrap().acked.len() >= acked_at_restart + 200).then_some(())
        });
        let (back_master, _) = master_with_set(
            std::slice::from_ref(&self.controller.addr),
            3,
            Duration::from_secs(60),
        );
        assert_eq!(
            back_master, new_master,
            "the restarted broker did not take over"
        );
        let group = self.controller.group().expect("group state");
        assert!(
            group.sync_state_set.contains(&self.master_id),
            "the old master rejoined the SyncStateSet: {group:?}"
        );
        for broker in &group.brokers {
            let why = sync_state_why(
                std::slice::from_ref(&self.controller.addr),
                broker.broker_id,
            )
            .expect("the leader explains every broker");
            if broker.broker_id == group.master_broker_id {
                assert_eq!(why, "master");
            } else {
                assert!(
                    why.starts_with("in"),
                    "broker {} is a member: {why}",
                    broker.broker_id
                );
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        self.producer.take().unwrap().join().expect("producer");
        let history = self.history.lock().unwrap();
        println!(
            "acknowledged {} payloads; errors by status {:?}",
            history.acked.len(),
            history.errors
        );
        let stored = read_all(new_master, QUEUES);
        assert_no_acknowledged_loss(&history, &stored);
        let others: Vec<String> = self
            .addrs
            .iter()
            .filter(|a| **a != new_master)
            .cloned()
            .collect();
        assert_converged(&others, &stored, Duration::from_secs(30));
    }
}

#[test]
fn sigkill_of_the_master_fails_over_with_no_acknowledged_loss() {
    let mut group = Running::start();
    group.brokers[group.victim].kill();
    let killed_at = Instant::now();
    let (failover, new_master) = group.first_ok_elsewhere(killed_at, "SIGKILL");
    println!(
        "failover: SIGKILL of the master -> first OK on the new master {new_master} in {} ms",
        failover.as_millis()
    );
    let epoch = group.controller.group().expect("group state").master_epoch;
    let timeline = group.controller.timeline(u64::from(epoch));
    println!("failover timeline (ms from the old master's last heartbeat): {timeline}");
    let phases = ordered_phases(&timeline, "failover");
    assert!(
        phases[0] >= 2_000,
        "detected only after broker_silent_ms (2 s) of silence: {timeline}"
    );
    // The start is the last heartbeat before the SIGKILL (at most one 250 ms interval
    // earlier); the first OK the producer saw follows the new master's first ack.
    let first_ack = timeline["first_ack_ms"]
        .as_u64()
        .expect("the producer was acknowledged");
    assert!(
        first_ack <= failover.as_millis() as u64 + 1_000,
        "the recorded first ack ({first_ack} ms) is no later than the producer's first OK ({} ms) plus one interval and slack",
        failover.as_millis()
    );
    group.rejoin_and_check(&new_master);
    assert!(
        failover < Duration::from_secs(5),
        "failover took {} ms",
        failover.as_millis()
    );
}

/// SIGTERM: the master refuses new produce, waits until a member holds its whole log, has
/// the controllers elect that member at once and exits; the producer moves over with nothing
/// acknowledged lost. The broker's log names the successor, which is the new master: the
/// election came from the hand-over, not from the controllers noticing the silence.
#[test]
fn sigterm_of_the_master_hands_the_group_over_with_no_acknowledged_loss() {
    let mut group = Running::start();
    let victim = group.victim;
    let terminated_at = Instant::now();
    assert!(group.brokers[victim].stop(), "a clean exit");
    let exited = terminated_at.elapsed();
    let (gap, new_master) = group.first_ok_elsewhere(terminated_at, "SIGTERM");
    println!(
        "hand-over: SIGTERM of the master -> exit in {} ms, first OK on the new master {new_master} in {} ms",
        exited.as_millis(),
        gap.as_millis()
    );
    let successor = handed_over_to(&group.brokers[victim]);
    let state = group.controller.group().expect("group state");
    let elected = state
        .brokers
        .iter()
        .find(|b| b.broker_id == state.master_broker_id)
        .expect("the master is a known broker");
    assert_eq!(
        (state.master_broker_id, elected.listen.as_str()),
        (successor, new_master.as_str()),
        "the broker the old master named is the master the producer reached"
    );
    assert!(
        !state.sync_state_set.contains(&group.master_id),
        "the stopped master left the set: {state:?}"
    );
    let timeline = group.controller.timeline(u64::from(state.master_epoch));
    println!("hand-over timeline (ms from the resignation): {timeline}");
    let phases = ordered_phases(&timeline, "handover");
    assert_eq!(
        phases[..2],
        [0, 0],
        "a resignation is detected and decided at once"
    );
    assert!(
        timeline["first_ack_ms"].is_u64(),
        "the producer was acknowledged: {timeline}"
    );
    group.rejoin_and_check(&new_master);
}

/// The timeline's phases (detected, decided, committed, role sent, promoted, then first ack
/// when there is one), checked to be of `kind` and in order.
fn ordered_phases(timeline: &serde_json::Value, kind: &str) -> Vec<u64> {
    assert_eq!(timeline["kind"], kind, "{timeline}");
    let phases: Vec<u64> = ringmq::controller::state::FAILOVER_PHASES
        .iter()
        .filter_map(|p| timeline[format!("{p}_ms")].as_u64())
        .collect();
    assert!(
        phases.len() >= 5,
        "every phase up to the promotion: {timeline}"
    );
    assert!(
        phases.windows(2).all(|w| w[0] <= w[1]),
        "phases in order: {timeline}"
    );
    phases
}

#[test]
fn a_one_broker_group_refuses_all_level_produce_and_promote() {
    let controller = Controller::start();
    let root = temp_store();
    let mut broker = controlled_broker(
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
    master_with_set(
        std::slice::from_ref(&controller.addr),
        1,
        Duration::from_secs(30),
    );
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

    // Alone in its set, the master has nobody to hand over to: SIGTERM stops it without
    // waiting out controller_handover_timeout_ms for a member that cannot appear.
    assert!(broker.stop(), "a clean exit");
    let log = broker.log();
    assert!(
        log.contains("stopping without a hand-over (no other SyncStateSet member is linked"),
        "{}",
        broker.log_tail()
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

/// Between the brokers and the controller: passes every request, and once a SyncStateSet
/// change admitting `joiner` goes by (while armed), drops every answer to the broker that
/// proposed it, on any connection it makes: the controller commits the change, the master
/// never hears that it did (RocketMQ #5663's window, held open).
struct AnswerCutter {
    addr: String,
    armed: Arc<AtomicBool>,
    /// The broker whose answers are dropped (0: none yet).
    cut: Arc<std::sync::atomic::AtomicU64>,
}

impl AnswerCutter {
    fn start(controller: &str, joiner: Arc<std::sync::atomic::AtomicU64>) -> AnswerCutter {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap().to_string();
        let armed = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (upstream, armed2, cut2) = (controller.to_string(), armed.clone(), cut.clone());
        thread::spawn(move || {
            for broker in listener.incoming().map_while(Result::ok) {
                let Ok(controller) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                let sender = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let (b, c) = (broker.try_clone().unwrap(), controller.try_clone().unwrap());
                let (armed, cut, joiner, id) =
                    (armed2.clone(), cut2.clone(), joiner.clone(), sender.clone());
                thread::spawn(move || {
                    relay(b, c, |frame| {
                        use ringmq::protocol::controller::{AlterSyncStateSet, BrokerHeartbeat};
                        match frame.header.opcode {
                            82 => {
                                if let Ok(h) = BrokerHeartbeat::decode(frame.body) {
                                    id.store(h.broker_id, Ordering::SeqCst);
                                }
                            }
                            83 => {
                                if let Ok(a) = AlterSyncStateSet::decode(frame.body) {
                                    id.store(a.master_broker_id, Ordering::SeqCst);
                                    let j = joiner.load(Ordering::SeqCst);
                                    if armed.load(Ordering::SeqCst)
                                        && a.new_sync_state_set.contains(&j)
                                    {
                                        cut.store(a.master_broker_id, Ordering::SeqCst);
                                    }
                                }
                            }
                            _ => {}
                        }
                        true
                    })
                });
                let (cut, id) = (cut2.clone(), sender);
                thread::spawn(move || {
                    relay(controller, broker, |_| {
                        let who = id.load(Ordering::SeqCst);
                        who == 0 || who != cut.load(Ordering::SeqCst)
                    })
                });
            }
        });
        AnswerCutter { addr, armed, cut }
    }
}

/// Copies frames from `from` to `to`, each one only if `pass` says so, until either closes.
fn relay(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    mut pass: impl FnMut(&ringmq::protocol::frame::Frame<'_>) -> bool,
) {
    use std::io::{Read, Write};
    let decoder = ringmq::protocol::frame::FrameDecoder::new(64 << 20);
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let (len, keep) = match decoder.decode(&buf) {
                Ok(Some(frame)) => (frame.wire_len(), pass(&frame)),
                Ok(None) => break,
                Err(_) => {
                    let _ = to.shutdown(std::net::Shutdown::Both);
                    return;
                }
            };
            if keep && to.write_all(&buf[..len]).is_err() {
                return;
            }
            buf.drain(..len);
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// The expansion race (RocketMQ #5663, issue 11 item 10): the master proposes taking a
/// caught-up slave S back into the SyncStateSet; the controller commits it, and the master
/// never learns (its answers are dropped). S is then SIGKILLed and stays down for a second,
/// the master and the other member are SIGKILLed together, and S, restarted, is elected (a
/// member of the committed set). Whatever the master acknowledged while the change was
/// pending must be on S: acknowledgements count against the union of the old and the
/// proposed set, so while S was down nothing was acknowledged that S lacks. Counting against
/// the old set only, that second's acks would have needed the other member alone, and they
/// would be lost (checked by hand: with the union removed from `required_others` this test
/// fails).
#[test]
fn an_expansion_the_master_never_hears_committed_still_counts_the_joiner() {
    let controller = Controller::start();
    let joiner = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let cutter = AnswerCutter::start(&controller.addr, joiner.clone());
    let roots: Vec<tempfile::TempDir> = (0..3).map(|_| temp_store()).collect();
    let mut brokers: Vec<Broker> = roots
        .iter()
        .map(|root| controlled_broker_at(root.path(), &cutter.addr, Sizes::Default, ""))
        .collect();
    let controllers = std::slice::from_ref(&controller.addr);
    let (master_addr, master_id) = master_with_set(controllers, 3, Duration::from_secs(60));
    let addrs: Vec<String> = brokers.iter().map(|b| b.addr.clone()).collect();
    create_topic_everywhere(&master_addr, &addrs);
    let state = controller.group().expect("group state");
    let address_of = |id: u64| {
        state
            .brokers
            .iter()
            .find(|b| b.broker_id == id)
            .map(|b| b.listen.clone())
            .unwrap()
    };
    let others: Vec<u64> = state
        .sync_state_set
        .iter()
        .copied()
        .filter(|id| *id != master_id)
        .collect();
    let (s_id, a_id) = (others[0], others[1]);
    let index = |id: u64| addrs.iter().position(|a| *a == address_of(id)).unwrap();
    let (m, a, s) = (
        addrs.iter().position(|x| *x == master_addr).unwrap(),
        index(a_id),
        index(s_id),
    );
    joiner.store(s_id, Ordering::SeqCst);

    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(History::default()));
    let producer = {
        let (addrs, stop, history) = (vec![master_addr.clone()], stop.clone(), history.clone());
        thread::spawn(move || produce_until(addrs, stop, history))
    };
    // S stopped past ha_max_time_slave_not_catchup_ms: shrunk out.
    brokers[s].pause();
    wait_until(Duration::from_secs(30), "S shrunk out of the set", || {
        let g = controller.group()?;
        (!g.sync_state_set.contains(&s_id)).then_some(())
    });
    // Armed: the change that takes S back in is committed, its answer (and every later
    // one to the master) dropped.
    cutter.armed.store(true, Ordering::SeqCst);
    brokers[s].signal(libc::SIGCONT);
    wait_until(
        Duration::from_secs(30),
        "S readmitted by the controller",
        || {
            let g = controller.group()?;
            g.sync_state_set.contains(&s_id).then_some(())
        },
    );
    assert_eq!(
        cutter.cut.load(Ordering::SeqCst),
        master_id,
        "the master's answers are cut from the readmission on"
    );
    let acked_before = history.lock().unwrap().acked.len();
    // The master still believes S is only joining. S dies (SIGKILL: what its socket held
    // unread is gone too, unlike under SIGSTOP) and stays down for a second; then the master
    // and the other member die together and S is restarted, as a supervisor would. It ran
    // SYNC_FLUSH, so its unclean restart does not disqualify it.
    brokers[s].kill();
    thread::sleep(Duration::from_secs(1));
    let acked_while_s_down = history.lock().unwrap().acked.len() - acked_before;
    brokers[m].kill();
    brokers[a].kill();
    brokers[s].restart();
    stop.store(true, Ordering::Relaxed);
    producer.join().expect("producer");
    // Elected; reads show what every member confirmed, so wait until the dead member is
    // shrunk out too.
    let (new_master, elected) = master_with_set(controllers, 1, Duration::from_secs(60));
    assert_eq!(elected, s_id, "S, the only live member, took over");
    let history = history.lock().unwrap();
    println!(
        "acknowledged {} payloads, {acked_while_s_down} while S was down with the change pending on the master; errors {:?}",
        history.acked.len(),
        history.errors
    );
    // S learns its role at its next heartbeat, and its set of one at the one after: then
    // it confirms everything it holds, and consumers see it.
    wait_until(Duration::from_secs(30), "S confirming all it holds", || {
        let out = run_binary(&["cluster", "status", "--broker", &new_master], b"");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let shards: Vec<Vec<&str>> = text
            .lines()
            .filter(|l| l.contains("SYNC_MASTER") && !l.starts_with("broker"))
            .map(|l| l.split_whitespace().collect())
            .collect();
        (!shards.is_empty() && shards.iter().all(|row| row[3] == row[5])).then_some(())
    });
    let stored = read_all(&new_master, QUEUES);
    assert_no_acknowledged_loss(&history, &stored);
}
