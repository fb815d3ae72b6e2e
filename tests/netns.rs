//! Multi-host scenarios in network namespaces (`common::netns::Lab`): brokers on their own
//! hosts, the test's clients in the root namespace, faults made with blackhole routes and
//! `tc tbf` between the hosts. The controller scenarios of issue 11 build on this lab; these
//! cover master/slave replication across a real (virtual) network: a partition between master
//! and slave holds `all` acknowledgements back while `leader` ones go on, and healing it lets
//! the slave catch up to a byte-identical log; a slow link delays the slave but loses nothing.

mod common;

use common::controlled::*;
use common::netns::Lab;
use common::{temp_store, wait_until, Broker, Sizes};
use ringmq::client::controller::ControllerClient;
use ringmq::client::{Acks, Client, ClusterStatus, ProduceResult};
use ringmq::protocol::message::{ClusterStatusRequest, MessageRef, TopicListRequest};
use ringmq::protocol::Status;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A short slave wait, so an `all` produce past a partition is answered quickly; a long link
/// timeout, so the partitioned slave stays registered (the produce then gets
/// FLUSH_SLAVE_TIMEOUT, not SLAVE_NOT_AVAILABLE).
const HA_CONFIG: &str = "ha_heartbeat_interval_ms = 100\nha_link_timeout_ms = 30000\n\
                         metadata_sync_interval_ms = 200\nsync_replica_timeout_ms = 1000\n";
const CATCH_UP: Duration = Duration::from_secs(60);

struct Pair {
    master: Broker,
    slave: Broker,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// A SYNC_MASTER on host 0 and its slave on host 1, one shard each, topic `t` (one queue),
/// at the default sizes (1 GiB segments) apart from the HA timings above.
fn pair(lab: &Lab) -> Pair {
    let (master_dir, slave_dir) = (temp_store(), temp_store());
    let (m, s) = (&lab.hosts[0].ip, &lab.hosts[1].ip);
    let master = Broker::start_in(
        &lab.hosts[0].netns,
        master_dir.path(),
        Sizes::Default,
        HA_CONFIG,
        &[
            "--role",
            "SYNC_MASTER",
            "--shards",
            "1",
            "--listen",
            &format!("{m}:10911"),
            "--ha-listen",
            &format!("{m}:10912"),
        ],
    );
    let slave = Broker::start_in(
        &lab.hosts[1].netns,
        slave_dir.path(),
        Sizes::Default,
        HA_CONFIG,
        &[
            "--role",
            "SLAVE",
            "--shards",
            "1",
            "--master",
            &format!("{m}:10912"),
            "--listen",
            &format!("{s}:10911"),
            "--ha-listen",
            &format!("{s}:10912"),
        ],
    );
    master.client().create_topic("t", 1).expect("create");
    Pair {
        master,
        slave,
        _dirs: (master_dir, slave_dir),
    }
}

fn status(broker: &Broker) -> Option<ClusterStatus> {
    Client::connect(&broker.addr)
        .ok()?
        .call(&ClusterStatusRequest {})
        .ok()
}

/// Waits until the master's slave acknowledged its whole log; returns the log's end.
fn wait_caught_up(master: &Broker) -> u64 {
    wait_until(CATCH_UP, "the slave to catch up", || {
        let s = status(master)?;
        let shard = s.shards.first()?;
        shard
            .slaves
            .iter()
            .any(|l| l.acked_offset == shard.max_offset)
            .then_some(shard.max_offset)
    })
}

fn produce(client: &mut Client, body: &[u8], acks: Acks) -> ProduceResult {
    let message = MessageRef {
        born_timestamp_ms: 0,
        key: b"",
        properties: b"",
        body,
    };
    client
        .produce_with("t", Some(0), &[message], acks)
        .unwrap_or_else(|e| panic!("produce at {acks}: {e}"))
        .unwrap_or_else(|| panic!("a produce at {acks} is answered"))
}

/// Every message body of queue 0 of `t` on `broker`, in offset order.
fn bodies(broker: &Broker) -> Vec<Vec<u8>> {
    let mut client = broker.client();
    let mut out = Vec::new();
    loop {
        let pulled = client
            .pull("t", 0, out.len() as u64, 256, 4 << 20, 0)
            .expect("pull");
        if pulled.messages.is_empty() {
            return out;
        }
        out.extend(pulled.messages.into_iter().map(|m| m.body));
    }
}

#[test]
fn a_partition_holds_all_acks_back_and_the_healed_slave_catches_up() {
    let Some(lab) = Lab::for_test(2) else { return };
    let p = pair(&lab);
    let mut client = p.master.client();
    assert_eq!(
        produce(&mut client, b"before", Acks::All).status,
        Status::Ok
    );

    lab.partition(0, 1);
    // The client (root namespace) still reaches the master; the slave does not.
    assert_eq!(
        produce(&mut client, b"leader", Acks::Leader).status,
        Status::Ok
    );
    assert_eq!(
        produce(&mut client, b"all", Acks::All).status,
        Status::FlushSlaveTimeout
    );
    lab.heal(0, 1);

    let end = wait_caught_up(&p.master);
    assert_eq!(produce(&mut client, b"after", Acks::All).status, Status::Ok);
    assert!(wait_caught_up(&p.master) > end);
    let expected: Vec<Vec<u8>> = [&b"before"[..], b"leader", b"all", b"after"]
        .iter()
        .map(|b| b.to_vec())
        .collect();
    assert_eq!(bodies(&p.master), expected);
    assert_eq!(bodies(&p.slave), expected, "the slave's copy after healing");
}

#[test]
fn a_slow_link_delays_the_slave_and_loses_nothing() {
    let Some(lab) = Lab::for_test(2) else { return };
    let p = pair(&lab);
    let mut client = p.master.client();
    // The master's sends (log bytes to the slave) at 1 Mbit/s: the 1 MiB below takes over
    // eight seconds to cross, far longer than producing it at `leader` in eight requests.
    lab.shape(0, "1mbit");
    let body = vec![7u8; 4096];
    let batch: Vec<MessageRef<'_>> = (0..32)
        .map(|_| MessageRef {
            born_timestamp_ms: 0,
            key: b"",
            properties: b"",
            body: &body,
        })
        .collect();
    for _ in 0..8 {
        let produced = client
            .produce_with("t", Some(0), &batch, Acks::Leader)
            .expect("produce")
            .expect("answered");
        assert_eq!(produced.status, Status::Ok);
    }
    let shard = status(&p.master).expect("status").shards.remove(0);
    let acked = shard
        .slaves
        .iter()
        .map(|l| l.acked_offset)
        .max()
        .unwrap_or(0);
    assert!(
        acked < shard.max_offset,
        "the shaped link holds the slave back (acked {acked} of {})",
        shard.max_offset
    );
    wait_caught_up(&p.master);
    lab.unshape(0);
    assert_eq!(produce(&mut client, b"last", Acks::All).status, Status::Ok);
    let on_slave = bodies(&p.slave);
    assert_eq!(on_slave.len(), 257);
    assert_eq!(on_slave, bodies(&p.master));
}

// ---- Controller mode across hosts (issue 11's scenarios) ----

/// Three controllers (hosts 0-2) and the three brokers of one group in controller mode
/// (hosts 3-5), at the default sizes, timeouts and shard count.
struct ControlledGroup {
    controller_addrs: Vec<String>,
    brokers: Vec<Broker>,
    /// Dropping one kills it.
    controllers: Vec<Controller>,
    _roots: Vec<tempfile::TempDir>,
}

const CONTROLLER_PORT: u16 = 10950;
const BROKER_HOSTS: std::ops::Range<usize> = 3..6;

fn controlled_group(lab: &Lab) -> ControlledGroup {
    controlled_group_with(lab, |_| "")
}

/// [`controlled_group`] with `config(i)` added to broker `i`'s configuration.
fn controlled_group_with(lab: &Lab, config: impl Fn(usize) -> &'static str) -> ControlledGroup {
    let controller_addrs: Vec<String> = (0..3)
        .map(|h| format!("{}:{CONTROLLER_PORT}", lab.hosts[h].ip))
        .collect();
    let peers = controller_addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let controllers: Vec<Controller> = (0..3)
        .map(|h| {
            Controller::spawn(
                lab.command(h, env!("CARGO_BIN_EXE_ringmq")),
                h as u64 + 1,
                &peers,
                controller_addrs[h].clone(),
            )
        })
        .collect();
    let roots: Vec<tempfile::TempDir> = BROKER_HOSTS.map(|_| temp_store()).collect();
    let controllers_arg = controller_addrs.join(",");
    let brokers = BROKER_HOSTS
        .zip(&roots)
        .enumerate()
        .map(|(i, (h, root))| {
            let ip = &lab.hosts[h].ip;
            Broker::start_in(
                &lab.hosts[h].netns,
                root.path(),
                Sizes::Default,
                config(i),
                &[
                    "--controller",
                    &controllers_arg,
                    "--broker-name",
                    GROUP,
                    "--cluster",
                    CLUSTER,
                    "--listen",
                    &format!("{ip}:10911"),
                    "--ha-listen",
                    &format!("{ip}:10912"),
                ],
            )
        })
        .collect();
    ControlledGroup {
        controller_addrs,
        brokers,
        controllers,
        _roots: roots,
    }
}

/// Creates the topic on the master and waits until every broker has it (topics reach the
/// slaves with a metadata frame, not with the log).
fn create_topic_everywhere(group: &ControlledGroup, master: &str) {
    Client::connect(master)
        .expect("connect to the master")
        .create_topic(TOPIC, QUEUES)
        .expect("create the topic");
    for broker in &group.brokers {
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
}

/// The master cut from every controller, not from its clients or its slaves: the
/// controllers elect a slave of the SyncStateSet; the old master, whose slaves leave it for
/// the new epoch, acknowledges nothing they did not confirm (it answers NOT_MASTER once a
/// member left); no acknowledged payload is lost or given an offset twice; healed, the old
/// master rejoins the set as a slave and every log ends identical to the new master's.
#[test]
fn a_master_cut_from_the_controllers_is_replaced_and_nothing_acknowledged_is_lost() {
    let Some(lab) = Lab::for_test(6) else { return };
    let group = controlled_group(&lab);
    let (old_master, old_id) = master_with_set(&group.controller_addrs, 3, Duration::from_secs(60));
    create_topic_everywhere(&group, &old_master);
    let producer = Producer::start(group.brokers.iter().map(|b| b.addr.clone()).collect());
    producer.wait_for(300, "300 acknowledged payloads");
    let master_host = host_of(&group, &old_master);
    for controller_host in 0..3 {
        lab.partition(master_host, controller_host);
    }
    let cut_at = Instant::now();
    let (failover, new_master) =
        wait_until(Duration::from_secs(30), "an OK from another broker", || {
            let h = producer.history.lock().unwrap();
            h.oks
                .iter()
                .find(|(at, addr)| *at > cut_at && *addr != old_master)
                .map(|(at, addr)| (*at - cut_at, addr.clone()))
        });
    let new_master_first_ok = cut_at + failover;
    println!(
        "master cut from the controllers -> first OK on the new master {new_master} in {} ms",
        failover.as_millis()
    );
    // The old master tries on its own for a while before the cut is healed.
    producer.wait_for(200, "200 acknowledgements on the new master");
    for controller_host in 0..3 {
        lab.heal(master_host, controller_host);
    }
    rejoined_and_checked(
        &group,
        producer,
        (&old_master, old_id),
        &new_master,
        (new_master_first_ok, None),
    );
}

/// The producer thread of a scenario and what it saw.
struct Producer {
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    thread: std::thread::JoinHandle<()>,
}

impl Producer {
    fn start(addrs: Vec<String>) -> Producer {
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(History::default()));
        let thread = {
            let (stop, history) = (stop.clone(), history.clone());
            std::thread::spawn(move || produce_until(addrs, stop, history))
        };
        Producer {
            stop,
            history,
            thread,
        }
    }

    fn acked(&self) -> usize {
        self.history.lock().unwrap().acked.len()
    }

    /// Waits for `more` acknowledgements past those so far.
    fn wait_for(&self, more: usize, what: &str) {
        let target = self.acked() + more;
        wait_until(Duration::from_secs(60), what, || {
            (self.acked() >= target).then_some(())
        });
    }
}

/// The end of a scenario once its fault is undone: the old master rejoins the set as a slave
/// under the same new master, 100 more payloads are acknowledged, and then the checks: no
/// acknowledged payload is lost or given an offset twice, every broker's log ends identical
/// to the new master's, and, with `fenced_from`, the old master acknowledged nothing after
/// it (where it cannot have had every member's confirmation since). Without it, an OK the
/// old master gives after the election is one every member, the new master included,
/// confirmed before it learned it was master: it is on the new master, which the loss check
/// sees.
fn rejoined_and_checked(
    group: &ControlledGroup,
    producer: Producer,
    (old_master, old_id): (&str, u64),
    new_master: &str,
    (replaced_at, fenced_from): (Instant, Option<Instant>),
) {
    let (back, _) = master_with_set(&group.controller_addrs, 3, Duration::from_secs(60));
    assert_eq!(back, new_master, "the old master took over again");
    let state = group_state(&group.controller_addrs).expect("group state");
    assert!(
        state.sync_state_set.contains(&old_id),
        "the old master rejoined the SyncStateSet: {state:?}"
    );
    producer.wait_for(100, "100 acknowledgements after the old master rejoined");
    producer.stop.store(true, Ordering::Relaxed);
    producer.thread.join().expect("producer");
    let history = producer.history.lock().unwrap();
    println!(
        "acknowledged {} payloads; errors by status {:?}",
        history.acked.len(),
        history.errors
    );
    let late = |from: Instant| {
        history
            .oks
            .iter()
            .filter(|(at, addr)| addr == old_master && *at > from)
            .count()
    };
    println!(
        "the old master acknowledged {} produces after it was replaced",
        late(replaced_at)
    );
    if let Some(from) = fenced_from {
        let late = late(from);
        assert_eq!(
            late, 0,
            "the old master acknowledged {late} produces it could not"
        );
    }
    let stored = read_all(new_master, QUEUES);
    assert_no_acknowledged_loss(&history, &stored);
    let others: Vec<String> = group
        .brokers
        .iter()
        .map(|b| b.addr.clone())
        .filter(|a| a != new_master)
        .collect();
    assert_converged(&others, &stored, Duration::from_secs(60));
}

/// A zombie master: SIGSTOPped past its lease (with the producer's request to it in flight),
/// replaced by the controllers while stopped, then resumed. What it answers after it resumed
/// is NOT_MASTER, or an OK for what every member confirmed before the stop (then on the new
/// master too); it rejoins the set as a slave, cuts what it held past the new master's
/// history, and nothing acknowledged is lost.
#[test]
fn a_master_stopped_past_its_lease_resumes_as_a_slave_and_nothing_acknowledged_is_lost() {
    let Some(lab) = Lab::for_test(6) else { return };
    let group = controlled_group(&lab);
    let (old_master, old_id) = master_with_set(&group.controller_addrs, 3, Duration::from_secs(60));
    create_topic_everywhere(&group, &old_master);
    let producer = Producer::start(group.brokers.iter().map(|b| b.addr.clone()).collect());
    producer.wait_for(300, "300 acknowledged payloads");
    let victim = group
        .brokers
        .iter()
        .position(|b| b.addr == old_master)
        .expect("the master is one of ours");
    group.brokers[victim].pause();
    let stopped_at = Instant::now();
    let (new_id, new_master) = wait_until(
        Duration::from_secs(30),
        "the controllers to elect another master",
        || {
            let state = group_state(&group.controller_addrs)?;
            (state.master_broker_id != 0 && state.master_broker_id != old_id).then_some(())?;
            let b = state
                .brokers
                .iter()
                .find(|b| b.broker_id == state.master_broker_id)?;
            Some((b.broker_id, b.listen.clone()))
        },
    );
    let elected_at = Instant::now();
    println!(
        "master SIGSTOPped -> broker {new_id} ({new_master}) elected in {} ms",
        (elected_at - stopped_at).as_millis()
    );
    group.brokers[victim].signal(libc::SIGCONT);
    producer.wait_for(200, "200 acknowledgements after the old master resumed");
    rejoined_and_checked(
        &group,
        producer,
        (&old_master, old_id),
        &new_master,
        (elected_at, None),
    );
}

/// The host each broker of `group` runs on, by its listen address.
fn host_of(group: &ControlledGroup, addr: &str) -> usize {
    BROKER_HOSTS
        .zip(&group.brokers)
        .find(|(_, b)| b.addr == addr)
        .map(|(h, _)| h)
        .expect("one of the group's brokers")
}

/// The master and one slave cut from the controllers and from the other slave (clients reach
/// all three): the controllers elect the other slave, alone in its set, so at the default
/// `min_in_sync_replicas` (2) it refuses every produce, and the old master, which cannot
/// have its third member confirm or its set shrunk, acknowledges nothing either: the group
/// is unavailable, not divergent. Healed, the old master and its slave rejoin the new
/// master's set, produces are acknowledged again, and nothing acknowledged is lost.
#[test]
fn a_master_isolated_with_one_slave_acknowledges_nothing_and_loses_nothing() {
    let Some(lab) = Lab::for_test(6) else { return };
    let group = controlled_group(&lab);
    let (old_master, old_id) = master_with_set(&group.controller_addrs, 3, Duration::from_secs(60));
    create_topic_everywhere(&group, &old_master);
    let producer = Producer::start(group.brokers.iter().map(|b| b.addr.clone()).collect());
    producer.wait_for(300, "300 acknowledged payloads");
    let master_host = host_of(&group, &old_master);
    let mut others = BROKER_HOSTS.filter(|h| *h != master_host);
    let (with_master, alone) = (others.next().unwrap(), others.next().unwrap());
    let minority = [master_host, with_master];
    let majority = [0, 1, 2, alone];
    for a in minority {
        for b in majority {
            lab.partition(a, b);
        }
    }
    let cut_at = Instant::now();
    let alone_addr = group.brokers[alone - BROKER_HOSTS.start].addr.clone();
    wait_until(Duration::from_secs(30), "the lone slave elected", || {
        let state = group_state(&group.controller_addrs)?;
        let master = state
            .brokers
            .iter()
            .find(|b| b.broker_id == state.master_broker_id)?;
        (master.listen == alone_addr).then_some(())
    });
    let elected_at = Instant::now();
    println!(
        "master isolated with one slave -> the other slave elected {} ms after the cut",
        (elected_at - cut_at).as_millis()
    );
    // The producer goes round the three and is refused everywhere for a while.
    let errors = || {
        producer
            .history
            .lock()
            .unwrap()
            .errors
            .values()
            .sum::<u64>()
    };
    let before = errors();
    wait_until(
        Duration::from_secs(60),
        "20 refusals after the election",
        || (errors() >= before + 20).then_some(()),
    );
    let oks_while_cut = producer
        .history
        .lock()
        .unwrap()
        .oks
        .iter()
        .filter(|(at, _)| *at > elected_at)
        .count();
    assert_eq!(
        oks_while_cut, 0,
        "something acknowledged while the set could not be complete"
    );
    for a in minority {
        for b in majority {
            lab.heal(a, b);
        }
    }
    producer.wait_for(200, "200 acknowledgements after healing");
    rejoined_and_checked(
        &group,
        producer,
        (&old_master, old_id),
        &alone_addr,
        (elected_at, Some(elected_at)),
    );
}

/// Two of the three controllers SIGKILLed: no election can happen any more, but the running
/// master keeps acknowledging at level `all` (its set is complete and nothing needs the
/// controllers), well past a lease (1.6 s) and a silence limit (2 s), with no refusal.
#[test]
fn two_controllers_down_stop_no_all_level_traffic() {
    let Some(lab) = Lab::for_test(6) else { return };
    let mut group = controlled_group(&lab);
    let (master, _) = master_with_set(&group.controller_addrs, 3, Duration::from_secs(60));
    create_topic_everywhere(&group, &master);
    let producer = Producer::start(group.brokers.iter().map(|b| b.addr.clone()).collect());
    producer.wait_for(300, "300 acknowledged payloads");
    let errors_before = producer.history.lock().unwrap().errors.clone();
    group.controllers.truncate(1);
    let killed_at = Instant::now();
    let window = Duration::from_secs(6);
    wait_until(
        Duration::from_secs(30),
        "an OK 6 s after the controllers died",
        || {
            let h = producer.history.lock().unwrap();
            h.oks
                .last()
                .is_some_and(|(at, _)| *at > killed_at + window)
                .then_some(())
        },
    );
    producer.stop.store(true, Ordering::Relaxed);
    producer.thread.join().expect("producer");
    let history = producer.history.lock().unwrap();
    let after: Vec<&(Instant, String)> = history
        .oks
        .iter()
        .filter(|(at, _)| *at > killed_at)
        .collect();
    println!(
        "two of three controllers down: {} OKs in the {} s after, errors {:?} (before {:?})",
        after.len(),
        window.as_secs(),
        history.errors,
        errors_before
    );
    assert_eq!(
        history.errors, errors_before,
        "refusals once the controllers died"
    );
    assert!(
        after.iter().all(|(_, addr)| *addr == master),
        "an OK from another broker: no election can have happened"
    );
    let stored = read_all(&master, QUEUES);
    assert_no_acknowledged_loss(&history, &stored);
}

/// The id of the controller that leads now (1-based, as the lab's hosts 0-2 are ids 1-3).
fn controller_leader(group: &ControlledGroup) -> u64 {
    wait_until(Duration::from_secs(30), "a controller leader", || {
        let mut client =
            ControllerClient::new(group.controller_addrs.clone(), Duration::from_secs(2)).ok()?;
        client.status().ok()?["leader"]
            .as_u64()
            .filter(|id| *id != 0)
    })
}

/// The controller leader and the master SIGKILLed together: the two controllers left elect a
/// leader, which listens for one silence period before it calls any broker lost, then elects
/// a member of the set; the killed master, restarted at once, rejoins as a slave; nothing
/// acknowledged is lost and the logs end identical.
#[test]
fn the_controller_leader_and_the_master_killed_together_fail_over_with_no_loss() {
    let Some(lab) = Lab::for_test(6) else { return };
    let mut group = controlled_group(&lab);
    let (old_master, old_id) = master_with_set(&group.controller_addrs, 3, Duration::from_secs(60));
    create_topic_everywhere(&group, &old_master);
    let producer = Producer::start(group.brokers.iter().map(|b| b.addr.clone()).collect());
    producer.wait_for(300, "300 acknowledged payloads");
    let leader = controller_leader(&group);
    let victim = group
        .brokers
        .iter()
        .position(|b| b.addr == old_master)
        .expect("the master is one of ours");
    group.controllers.remove(leader as usize - 1);
    group.brokers[victim].kill();
    let killed_at = Instant::now();
    let (failover, new_master) =
        wait_until(Duration::from_secs(30), "an OK from another broker", || {
            let h = producer.history.lock().unwrap();
            h.oks
                .iter()
                .find(|(at, addr)| *at > killed_at && *addr != old_master)
                .map(|(at, addr)| (*at - killed_at, addr.clone()))
        });
    println!(
        "controller leader {leader} and the master SIGKILLed -> first OK on {new_master} in {} ms",
        failover.as_millis()
    );
    group.brokers[victim].restart();
    producer.wait_for(200, "200 acknowledgements after the restart");
    rejoined_and_checked(
        &group,
        producer,
        (&old_master, old_id),
        &new_master,
        (killed_at + failover, None),
    );
}

/// Every broker SIGKILLed at once and restarted at once (SYNC_FLUSH: none lost what it
/// acknowledged): the controllers wait until every member of the last set has reported, then
/// elect the one with the highest epoch and end offsets; the group serves again with nothing
/// acknowledged lost, no queue offset given twice, and identical logs.
#[test]
fn every_broker_killed_at_once_comes_back_with_nothing_acknowledged_lost() {
    let Some(lab) = Lab::for_test(6) else { return };
    let mut group = controlled_group(&lab);
    let (master, _) = master_with_set(&group.controller_addrs, 3, Duration::from_secs(60));
    create_topic_everywhere(&group, &master);
    let producer = Producer::start(group.brokers.iter().map(|b| b.addr.clone()).collect());
    producer.wait_for(300, "300 acknowledged payloads");
    for broker in group.brokers.iter_mut() {
        broker.signal(libc::SIGKILL);
    }
    let killed_at = Instant::now();
    for broker in group.brokers.iter_mut() {
        broker.kill();
        broker.restart();
    }
    let first_ok = wait_until(Duration::from_secs(60), "an OK after the restarts", || {
        let h = producer.history.lock().unwrap();
        h.oks
            .iter()
            .find(|(at, _)| *at > killed_at)
            .map(|(at, addr)| (*at - killed_at, addr.clone()))
    });
    println!(
        "every broker SIGKILLed and restarted -> first OK on {} in {} ms",
        first_ok.1,
        first_ok.0.as_millis()
    );
    producer.wait_for(200, "200 acknowledgements after the restarts");
    let (new_master, _) = master_with_set(&group.controller_addrs, 3, Duration::from_secs(60));
    producer.stop.store(true, Ordering::Relaxed);
    producer.thread.join().expect("producer");
    let history = producer.history.lock().unwrap();
    println!(
        "acknowledged {} payloads; errors by status {:?}",
        history.acked.len(),
        history.errors
    );
    let stored = read_all(&new_master, QUEUES);
    assert_no_acknowledged_loss(&history, &stored);
    let others: Vec<String> = group
        .brokers
        .iter()
        .map(|b| b.addr.clone())
        .filter(|a| *a != new_master)
        .collect();
    assert_converged(&others, &stored, Duration::from_secs(60));
}

/// A learner (`async_learner = true`) replicates but is never in the SyncStateSet and never
/// elected: with the master SIGKILLed the other member is elected, alone in its set (so it
/// refuses `all` at the default `min_in_sync_replicas` until the killed broker, restarted at
/// once, rejoins), while the learner, caught up and alive throughout, stays out; nothing
/// acknowledged is lost, and the learner's log ends identical to the master's too.
#[test]
fn a_learner_is_never_in_the_set_nor_elected() {
    let Some(lab) = Lab::for_test(6) else { return };
    const LEARNER: usize = 2;
    let mut group = controlled_group_with(&lab, |i| {
        if i == LEARNER {
            "async_learner = true\n"
        } else {
            ""
        }
    });
    let (old_master, old_id) = master_with_set(&group.controller_addrs, 2, Duration::from_secs(60));
    let learner_addr = group.brokers[LEARNER].addr.clone();
    let learner_id = wait_until(Duration::from_secs(30), "the learner registered", || {
        let state = group_state(&group.controller_addrs)?;
        state
            .brokers
            .iter()
            .find(|b| b.listen == learner_addr)
            .map(|b| b.broker_id)
    });
    assert_ne!(old_master, learner_addr, "the learner was elected first");
    create_topic_everywhere(&group, &old_master);
    let producer = Producer::start(
        group.brokers[..LEARNER]
            .iter()
            .map(|b| b.addr.clone())
            .collect(),
    );
    producer.wait_for(300, "300 acknowledged payloads");
    let victim = group
        .brokers
        .iter()
        .position(|b| b.addr == old_master)
        .expect("the master is one of ours");
    group.brokers[victim].kill();
    let (new_id, new_master) =
        wait_until(Duration::from_secs(30), "another master elected", || {
            let state = group_state(&group.controller_addrs)?;
            (state.master_broker_id != 0 && state.master_broker_id != old_id).then_some(())?;
            assert!(
                !state.sync_state_set.contains(&learner_id),
                "the learner is in the set: {state:?}"
            );
            let b = state
                .brokers
                .iter()
                .find(|b| b.broker_id == state.master_broker_id)?;
            Some((b.broker_id, b.listen.clone()))
        });
    assert_ne!(new_id, learner_id, "the learner was elected");
    group.brokers[victim].restart();
    let (back, _) = master_with_set(&group.controller_addrs, 2, Duration::from_secs(60));
    assert_eq!(back, new_master);
    producer.wait_for(100, "100 acknowledgements once the set is whole again");
    let state = group_state(&group.controller_addrs).expect("group state");
    assert!(
        !state.sync_state_set.contains(&learner_id) && state.master_broker_id != learner_id,
        "the learner joined: {state:?}"
    );
    producer.stop.store(true, Ordering::Relaxed);
    producer.thread.join().expect("producer");
    let history = producer.history.lock().unwrap();
    let stored = read_all(&new_master, QUEUES);
    assert_no_acknowledged_loss(&history, &stored);
    let others: Vec<String> = group
        .brokers
        .iter()
        .map(|b| b.addr.clone())
        .filter(|a| *a != new_master)
        .collect();
    assert_converged(&others, &stored, Duration::from_secs(60));
}
