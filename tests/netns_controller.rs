//! Controller mode across hosts (issue 11's scenarios), in the network-namespace lab
//! (`common::netns::Lab`, docs/testing-netns.md): three controllers on hosts 0-2 and the three
//! brokers of one group in controller mode on hosts 3-5, at the default sizes, timeouts and
//! shard count. A producer in the root namespace sends unique payloads at level `all` to
//! whichever broker answers and records every outcome (`common::controlled`); each scenario
//! makes its fault (a SIGTERM among them: the hand-over), undoes it where it can, and checks the history: every acknowledged
//! payload is on the master at the queue and offset it was acknowledged with, no queue offset
//! was acknowledged twice, and every broker's log ends identical to the master's.

mod common;

use common::controlled::*;
use common::netns::Lab;
use common::{temp_store, wait_until, Broker, Sizes};
use ringmq::client::controller::ControllerClient;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Three controllers (hosts 0-2) and the three brokers of one group (hosts 3-5).
struct ControlledGroup {
    controller_addrs: Vec<String>,
    brokers: Vec<Broker>,
    /// Dropping one kills it.
    controllers: Vec<Controller>,
    _roots: Vec<tempfile::TempDir>,
}

const CONTROLLER_PORT: u16 = 10950;
const BROKER_HOSTS: std::ops::Range<usize> = 3..6;

/// The group, with `controller_flags` on every controller's command line and `config(i)`
/// added to broker `i`'s configuration.
fn controlled_group(
    lab: &Lab,
    controller_flags: &[&str],
    config: impl Fn(usize) -> &'static str,
) -> ControlledGroup {
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
            Controller::spawn_with(
                lab.command(h, env!("CARGO_BIN_EXE_ringmq")),
                h as u64 + 1,
                &peers,
                controller_addrs[h].clone(),
                controller_flags,
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

impl ControlledGroup {
    fn addrs(&self) -> Vec<String> {
        self.brokers.iter().map(|b| b.addr.clone()).collect()
    }

    /// Every broker's address but `master`'s.
    fn others(&self, master: &str) -> Vec<String> {
        self.addrs().into_iter().filter(|a| a != master).collect()
    }

    fn index_of(&self, addr: &str) -> usize {
        self.brokers
            .iter()
            .position(|b| b.addr == addr)
            .expect("one of the group's brokers")
    }

    fn host_of(&self, addr: &str) -> usize {
        BROKER_HOSTS.start + self.index_of(addr)
    }

    /// Waits until the controllers name a master other than `old_id`: its id and address.
    fn elected_other_than(&self, old_id: u64) -> (u64, String) {
        wait_until(Duration::from_secs(30), "another master elected", || {
            let state = group_state(&self.controller_addrs)?;
            (state.master_broker_id != 0 && state.master_broker_id != old_id).then_some(())?;
            let b = state
                .brokers
                .iter()
                .find(|b| b.broker_id == state.master_broker_id)?;
            Some((b.broker_id, b.listen.clone()))
        })
    }

    /// A slave of the group whose master is `master_id`, as the controllers list it.
    fn a_slave(&self, master_id: u64) -> ringmq::protocol::controller::BrokerEntry {
        group_state(&self.controller_addrs)
            .expect("group state")
            .brokers
            .into_iter()
            .find(|b| b.broker_id != master_id)
            .expect("a slave")
    }

    /// Waits until the controllers' SyncStateSet no longer holds `id`: the group then.
    fn shrunk_out(&self, id: u64, what: &str) -> ringmq::protocol::controller::GroupState {
        wait_until(Duration::from_secs(60), what, || {
            let state = group_state(&self.controller_addrs)?;
            (!state.sync_state_set.contains(&id)).then_some(state)
        })
    }

    /// The id of the controller that leads now (1-based: hosts 0-2 run ids 1-3).
    fn controller_leader(&self) -> u64 {
        wait_until(Duration::from_secs(30), "a controller leader", || {
            let mut client =
                ControllerClient::new(self.controller_addrs.clone(), Duration::from_secs(2))
                    .ok()?;
            client.status().ok()?["leader"]
                .as_u64()
                .filter(|id| *id != 0)
        })
    }
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

    /// Stops the producer: what it saw.
    fn stop(self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("producer");
        std::mem::take(&mut *self.history.lock().unwrap())
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

    /// Waits for the first OK after `since` from a broker other than `not`: how long after
    /// `since`, and from which.
    fn first_ok_after(&self, since: Instant, not: &str) -> (Duration, String) {
        wait_until(Duration::from_secs(60), "an OK from another broker", || {
            let h = self.history.lock().unwrap();
            h.oks
                .iter()
                .find(|(at, addr)| *at > since && addr != not)
                .map(|(at, addr)| (*at - since, addr.clone()))
        })
    }

    /// Stops the producer and checks its history against `master`'s log: no acknowledged
    /// loss, no offset given twice, every other broker's log identical. The history, for
    /// more checks.
    fn finish(self, group: &ControlledGroup, master: &str) -> History {
        let history = self.stop();
        println!(
            "acknowledged {} payloads; errors by status {:?}",
            history.acked.len(),
            history.errors
        );
        let stored = read_all(master, QUEUES);
        assert_no_acknowledged_loss(&history, &stored);
        assert_converged(&group.others(master), &stored, Duration::from_secs(60));
        history
    }
}

/// A scenario's start: the group (`config` per broker), a master whose set has `members`
/// members, the topic on every broker, and a producer past 300 acknowledgements.
fn running(
    lab: &Lab,
    members: usize,
    config: impl Fn(usize) -> &'static str,
) -> (ControlledGroup, Producer, String, u64) {
    running_with(lab, &[], members, config)
}

/// [`running`] with `controller_flags` on the controllers' command lines.
fn running_with(
    lab: &Lab,
    controller_flags: &[&str],
    members: usize,
    config: impl Fn(usize) -> &'static str,
) -> (ControlledGroup, Producer, String, u64) {
    let group = controlled_group(lab, controller_flags, config);
    let (master, id) = master_with_set(&group.controller_addrs, members, Duration::from_secs(60));
    create_topic_everywhere(&master, &group.addrs());
    let producer = Producer::start(group.addrs());
    producer.wait_for(300, "300 acknowledged payloads");
    (group, producer, master, id)
}

/// The end of a scenario once its fault is undone: the old master rejoins the set as a slave
/// under the same new master, 100 more payloads are acknowledged, the history checks hold,
/// and, with `fenced_from`, the old master acknowledged nothing after it (where it cannot
/// have had every member's confirmation since). Without it, an OK the old master gives after
/// `replaced_at` is one every member, the new master included, confirmed before it learned it
/// was master: it is on the new master, which the loss check sees.
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
    let history = producer.finish(group, new_master);
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
}

fn defaults(_: usize) -> &'static str {
    ""
}

/// The master cut from every controller, not from its clients or its slaves: the
/// controllers elect a slave of the SyncStateSet; the old master, whose slaves leave it for
/// the new epoch, acknowledges nothing they did not confirm (it answers NOT_MASTER once a
/// member left); healed, it rejoins the set as a slave.
#[test]
fn a_master_cut_from_the_controllers_is_replaced_and_nothing_acknowledged_is_lost() {
    let Some(lab) = Lab::for_test(6) else { return };
    let (group, producer, old_master, old_id) = running(&lab, 3, defaults);
    let master_host = group.host_of(&old_master);
    for controller_host in 0..3 {
        lab.partition(master_host, controller_host);
    }
    let cut_at = Instant::now();
    let (failover, new_master) = producer.first_ok_after(cut_at, &old_master);
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
        (cut_at + failover, None),
    );
}

/// An asymmetric partition: the master cut from the controller leader only (it reaches the
/// other two controllers, its slaves and its clients). Its heartbeats time out at the leader
/// and go to a follower, which forwards them: the leader keeps hearing from it, so three
/// silence limits (6 s) pass with no election, no refusal and every OK from the master.
#[test]
fn a_master_cut_from_the_controller_leader_only_is_not_replaced() {
    let Some(lab) = Lab::for_test(6) else { return };
    let (group, producer, master, master_id) = running(&lab, 3, defaults);
    let before = group_state(&group.controller_addrs).expect("group state");
    let errors_before = producer.history.lock().unwrap().errors.clone();
    let leader = group.controller_leader();
    let (master_host, leader_host) = (group.host_of(&master), leader as usize - 1);
    lab.partition(master_host, leader_host);
    let cut_at = Instant::now();
    let window = Duration::from_secs(6);
    wait_until(Duration::from_secs(30), "an OK 6 s after the cut", || {
        let h = producer.history.lock().unwrap();
        h.oks
            .last()
            .is_some_and(|(at, _)| *at > cut_at + window)
            .then_some(())
    });
    let during = group_state(&group.controller_addrs).expect("group state");
    assert_eq!(
        group.controller_leader(),
        leader,
        "the controllers changed leader: the scenario is not the one meant"
    );
    lab.heal(master_host, leader_host);
    assert_eq!(
        (during.master_broker_id, during.master_epoch),
        (master_id, before.master_epoch),
        "a master cut from the controller leader alone was replaced: {during:?}"
    );
    let history = producer.finish(&group, &master);
    let after = history.oks.iter().filter(|(at, _)| *at > cut_at).count();
    println!(
        "master cut from controller leader {leader} only: {after} OKs in the {} s after, all from the master",
        window.as_secs()
    );
    assert!(
        history
            .oks
            .iter()
            .all(|(at, addr)| *at <= cut_at || *addr == master),
        "an OK from another broker"
    );
    assert_eq!(
        history.errors, errors_before,
        "refusals during the asymmetric partition"
    );
}

/// A slow slave (what it receives shaped to 2 Mbit/s) under a bulk load at level `leader`
/// on another topic that its link cannot carry: behind for `ha_max_time_slave_not_catchup_ms`
/// (3 s), it is shrunk out of the SyncStateSet and `all` goes on with the other two; the
/// limit lifted and the load stopped, it catches up and is readmitted, and its log ends
/// identical to the master's.
#[test]
fn a_slow_slave_is_shrunk_out_of_the_set_and_readmitted_once_caught_up() {
    let Some(lab) = Lab::for_test(6) else { return };
    let (group, producer, master, master_id) = running(&lab, 3, defaults);
    const BULK: &str = "bulk";
    create_named_topic_everywhere(&master, &group.addrs(), BULK, 1);
    let before = group_state(&group.controller_addrs).expect("group state");
    let slow = group.a_slave(master_id);
    let slow_host = group.host_of(&slow.listen);
    lab.shape_incoming(slow_host, "2mbit");
    let shaped_at = Instant::now();
    let stop_bulk = Arc::new(AtomicBool::new(false));
    let bulk = {
        let (stop, master) = (stop_bulk.clone(), master.clone());
        std::thread::spawn(move || {
            let mut client = ringmq::client::Client::connect(&master).expect("connect");
            let body = vec![b'x'; 32 << 10];
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let message = ringmq::protocol::message::MessageRef {
                    born_timestamp_ms: 0,
                    key: b"",
                    properties: b"",
                    body: &body,
                };
                match client.produce_with(BULK, Some(0), &[message], ringmq::protocol::Acks::Leader)
                {
                    Ok(Some(r)) if r.status == ringmq::protocol::Status::Ok => sent += 1,
                    other => panic!("a bulk produce at level leader failed: {other:?}"),
                }
            }
            sent
        })
    };
    let shrunk = group.shrunk_out(slow.broker_id, "the slow slave shrunk out");
    let shrunk_after = shaped_at.elapsed();
    assert_eq!(
        (shrunk.master_broker_id, shrunk.master_epoch),
        (master_id, before.master_epoch),
        "a shrink is no election"
    );
    assert_eq!(
        shrunk.sync_state_set.len(),
        2,
        "only the slow slave left: {shrunk:?}"
    );
    let why = wait_until(
        Duration::from_secs(10),
        "a reason for the slow slave",
        || sync_state_why(&group.controller_addrs, slow.broker_id),
    );
    // Linked but out: behind on the bulk shard, or momentarily caught up there (a fetch
    // reached the end it asked for) while it cannot hold the end a readmission needs.
    assert!(
        why.starts_with("out: ") && !why.contains("no replication link"),
        "the slow slave is out with its link up: {why}"
    );
    println!("the slow slave's reason: {why}");
    producer.wait_for(200, "200 acknowledgements at `all` with the slow slave out");
    stop_bulk.store(true, Ordering::Relaxed);
    let bulk_sent = bulk.join().expect("bulk producer");
    lab.unshape_incoming(slow_host);
    let unshaped_at = Instant::now();
    wait_until(
        Duration::from_secs(120),
        "the slow slave readmitted",
        || {
            let state = group_state(&group.controller_addrs)?;
            state.sync_state_set.contains(&slow.broker_id).then_some(())
        },
    );
    println!(
        "slow slave {} shrunk out {} ms after its link was shaped ({bulk_sent} bulk messages of 32 KiB), readmitted {} ms after the limit was lifted",
        slow.broker_id,
        shrunk_after.as_millis(),
        unshaped_at.elapsed().as_millis()
    );
    producer.wait_for(100, "100 acknowledgements with the slave back in the set");
    producer.finish(&group, &master);
}

/// Which shard owns each queue of the topic, as the broker at `addr` lists it.
fn queue_shards(addr: &str) -> Vec<u16> {
    ringmq::client::Client::connect(addr)
        .expect("connect")
        .call(&ringmq::protocol::message::TopicListRequest {})
        .expect("topics")
        .topics
        .into_iter()
        .find(|t| t.name == TOPIC)
        .expect("the topic")
        .queue_shards
}

/// The leader's status document's entry for the group.
fn group_status(group: &ControlledGroup) -> Option<serde_json::Value> {
    let mut client =
        ControllerClient::new(group.controller_addrs.clone(), Duration::from_secs(2)).ok()?;
    let status = client.status().ok()?;
    (status["is_leader"] == true).then_some(())?;
    status["groups"]
        .as_array()?
        .iter()
        .find(|g| g["group"] == GROUP)
        .cloned()
}

/// The first steps of both unclean-election scenarios: the replication link between the
/// master and one slave `S` cut (S still reaches the controllers and the clients), S shrunk out
/// of the set for it, 200 more payloads acknowledged by the other two alone, then the master and
/// the other slave SIGKILLed and not restarted: only S lives, out of the set. With `stop`, the
/// producer is stopped before the kill and the kill waits until the controller leader's last
/// reports from both members cover every acknowledged record, so what an unclean election
/// gives up is exactly known. S's index and id, the killed brokers' indexes, and the history when
/// stopped.
fn only_an_out_of_set_slave_left(
    lab: &Lab,
    group: &mut ControlledGroup,
    producer: Producer,
    (master, master_id): (&str, u64),
    stop: bool,
) -> (usize, u64, [usize; 2], Option<History>, Option<Producer>) {
    let s = group.a_slave(master_id);
    let s_index = group.index_of(&s.listen);
    let m_index = group.index_of(master);
    let other = (0..3).find(|i| *i != s_index && *i != m_index).unwrap();
    lab.partition(group.host_of(master), group.host_of(&s.listen));
    group.shrunk_out(s.broker_id, "S shrunk out of the set");
    producer.wait_for(200, "200 acknowledgements without S");
    let (history, producer) = if stop {
        let history = producer.stop();
        let queue_shards = queue_shards(master);
        let mut last_record = std::collections::BTreeMap::<usize, u64>::new();
        for ((_, queue, _), at) in history.acked.iter().zip(&history.commitlog_offsets) {
            let shard = queue_shards[*queue as usize] as usize;
            let last = last_record.entry(shard).or_default();
            *last = (*last).max(*at);
        }
        // Both members' reports: the other may be elected first (see the off scenario), and
        // then its report bounds what S's election gives up.
        wait_until(
            Duration::from_secs(30),
            "reports from both members covering every acknowledged record",
            || {
                let status = group_status(group)?;
                let brokers = status["brokers"].as_array()?;
                brokers
                    .iter()
                    .filter(|b| b["broker_id"] != s.broker_id)
                    .all(|b| {
                        let reported: Option<Vec<u64>> = b["reported"]["end_offsets"]
                            .as_array()
                            .and_then(|e| e.iter().map(|v| v.as_u64()).collect());
                        reported.is_some_and(|ends| {
                            last_record
                                .iter()
                                .all(|(shard, at)| ends.get(*shard).is_some_and(|end| end > at))
                        })
                    })
                    .then_some(())
            },
        );
        (Some(history), None)
    } else {
        (None, Some(producer))
    };
    for i in [m_index, other] {
        group.brokers[i].kill();
    }
    (s_index, s.broker_id, [m_index, other], history, producer)
}

/// Unclean election off (the default): with the master and the in-set slave killed and only
/// an out-of-set slave alive, the controllers elect nobody: three silence limits pass with no
/// new epoch and no OK anywhere (unavailable). Healed and restarted, the killed members take
/// the group back, the slave rejoins, and nothing acknowledged was lost.
#[test]
fn with_unclean_election_off_only_an_out_of_set_slave_left_is_not_elected() {
    let Some(lab) = Lab::for_test(6) else { return };
    let (mut group, producer, master, master_id) = running(&lab, 3, defaults);
    let (s_index, s_id, killed, _, producer) =
        only_an_out_of_set_slave_left(&lab, &mut group, producer, (&master, master_id), false);
    let producer = producer.expect("still producing");
    let killed_at = Instant::now();
    // Watch for three silence limits: S may never be elected in them. (The other member,
    // killed a moment after the master, may be: its last heartbeat can be younger than the
    // silence limit when the master's is past it. It is a member holding everything, and it
    // is dead, so nothing is acknowledged either way.)
    let window = Duration::from_secs(6);
    while killed_at.elapsed() < window {
        if let Some(state) = group_state(&group.controller_addrs) {
            assert_ne!(
                state.master_broker_id, s_id,
                "the out-of-set slave was elected with unclean elections off: {state:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let oks_after = producer
        .history
        .lock()
        .unwrap()
        .oks
        .iter()
        .filter(|(at, _)| *at > killed_at)
        .count();
    assert_eq!(oks_after, 0, "an OK with no master");
    lab.heal(group.host_of(&master), BROKER_HOSTS.start + s_index);
    for i in killed {
        group.brokers[i].restart();
    }
    let (back, _) = master_with_set(&group.controller_addrs, 3, Duration::from_secs(60));
    assert_ne!(
        back, group.brokers[s_index].addr,
        "the out-of-set slave {s_id} was elected"
    );
    println!(
        "unclean election off: no master for {} s, then {back} took the group back",
        window.as_secs()
    );
    producer.wait_for(100, "100 acknowledgements once the members are back");
    producer.finish(&group, &back);
}

/// Unclean election on (`--enable-elect-unclean-master`): the out-of-set slave, the only
/// broker alive, is elected in an epoch marked unclean, and the byte range per shard the controllers record as lost
/// is exactly what the history checker finds missing: every acknowledged payload whose record
/// starts at or past the range's start on its shard, and no other. Healed and restarted, the
/// killed brokers cut their divergent tails and follow it; every log ends identical to its.
#[test]
fn with_unclean_election_on_the_lost_range_recorded_is_what_the_checker_finds_missing() {
    let Some(lab) = Lab::for_test(6) else { return };
    let (mut group, producer, master, master_id) =
        running_with(&lab, &["--enable-elect-unclean-master"], 3, defaults);
    let (s_index, s_id, killed, history, _) =
        only_an_out_of_set_slave_left(&lab, &mut group, producer, (&master, master_id), true);
    let history = history.expect("stopped");
    // The other member may be elected first (it can still count as alive when the master is
    // found lost), then S once that one is found dead too.
    let s_addr = wait_until(Duration::from_secs(30), "S elected", || {
        let state = group_state(&group.controller_addrs)?;
        (state.master_broker_id == s_id).then_some(())?;
        state
            .brokers
            .iter()
            .find(|b| b.broker_id == s_id)
            .map(|b| b.listen.clone())
    });
    let status = group_status(&group).expect("group status");
    let last = status["epoch_history"]
        .as_array()
        .and_then(|h| h.last())
        .cloned()
        .expect("an epoch history");
    assert_eq!(last["master_broker_id"], s_id, "{last}");
    assert_eq!(last["unclean"], true, "{last}");
    let lost: std::collections::BTreeMap<u64, (u64, u64)> = last["lost"]
        .as_array()
        .expect("lost ranges")
        .iter()
        .map(|r| {
            (
                r["shard"].as_u64().unwrap(),
                (
                    r["from_offset"].as_u64().unwrap(),
                    r["to_offset"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    let queue_shards = queue_shards(&s_addr);
    let stored = read_all(&s_addr, QUEUES);
    let mut missing = 0;
    for ((payload, queue, offset), at) in history.acked.iter().zip(&history.commitlog_offsets) {
        let shard = u64::from(queue_shards[*queue as usize]);
        let on_s = stored.get(queue).and_then(|q| q.get(offset)) == Some(payload);
        let in_range = lost
            .get(&shard)
            .is_some_and(|(from, to)| *at >= *from && *at < *to);
        assert_eq!(
            !on_s, in_range,
            "{payload} (queue {queue} offset {offset}, shard {shard} record at {at}): missing {}, in the recorded range {:?}",
            !on_s,
            lost.get(&shard)
        );
        missing += usize::from(!on_s);
    }
    assert!(missing > 0, "the scenario lost nothing: it tests nothing");
    println!(
        "unclean election on: broker {s_id} elected; lost ranges {lost:?}; {missing} of {} acknowledged payloads missing, all in them",
        history.acked.len()
    );
    lab.heal(group.host_of(&master), BROKER_HOSTS.start + s_index);
    for i in killed {
        group.brokers[i].restart();
    }
    let (back, _) = master_with_set(&group.controller_addrs, 3, Duration::from_secs(60));
    assert_eq!(back, s_addr, "the unclean master keeps the group");
    assert_converged(
        &group.others(&s_addr),
        &read_all(&s_addr, QUEUES),
        Duration::from_secs(60),
    );
}

/// A zombie master: SIGSTOPped past its lease (with the producer's request to it in flight),
/// replaced by the controllers while stopped, then resumed. What it answers after it resumed
/// is NOT_MASTER, or an OK for what every member confirmed before the stop (then on the new
/// master too); it rejoins the set as a slave and cuts what it held past the new master's
/// history.
#[test]
fn a_master_stopped_past_its_lease_resumes_as_a_slave_and_nothing_acknowledged_is_lost() {
    let Some(lab) = Lab::for_test(6) else { return };
    let (group, producer, old_master, old_id) = running(&lab, 3, defaults);
    let victim = group.index_of(&old_master);
    group.brokers[victim].pause();
    let stopped_at = Instant::now();
    let (new_id, new_master) = group.elected_other_than(old_id);
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

/// The master and one slave cut from the controllers and from the other slave (clients reach
/// all three): the controllers elect the other slave, alone in its set, so at the default
/// `min_in_sync_replicas` (2) it refuses every produce, and the old master, which cannot
/// have its third member confirm or its set shrunk, acknowledges nothing either: the group
/// is unavailable, not divergent. Healed, the old master and its slave rejoin the new
/// master's set and produces are acknowledged again.
#[test]
fn a_master_isolated_with_one_slave_acknowledges_nothing_and_loses_nothing() {
    let Some(lab) = Lab::for_test(6) else { return };
    let (group, producer, old_master, old_id) = running(&lab, 3, defaults);
    let master_host = group.host_of(&old_master);
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
    let (_, elected) = group.elected_other_than(old_id);
    assert_eq!(elected, alone_addr, "the lone slave is the one electable");
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
    let (mut group, producer, master, _) = running(&lab, 3, defaults);
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
    let history = producer.finish(&group, &master);
    let after: Vec<&(Instant, String)> = history
        .oks
        .iter()
        .filter(|(at, _)| *at > killed_at)
        .collect();
    println!(
        "two of three controllers down: {} OKs in the {} s after",
        after.len(),
        window.as_secs()
    );
    assert_eq!(
        history.errors, errors_before,
        "refusals once the controllers died"
    );
    assert!(
        after.iter().all(|(_, addr)| *addr == master),
        "an OK from another broker: no election can have happened"
    );
}

/// The controller leader and the master SIGKILLed together: the two controllers left elect a
/// leader, which listens for one silence period before it calls any broker lost, then elects
/// a member of the set; the killed master, restarted at once, rejoins as a slave.
#[test]
fn the_controller_leader_and_the_master_killed_together_fail_over_with_no_loss() {
    let Some(lab) = Lab::for_test(6) else { return };
    let (mut group, producer, old_master, old_id) = running(&lab, 3, defaults);
    let leader = group.controller_leader();
    let victim = group.index_of(&old_master);
    group.controllers.remove(leader as usize - 1);
    group.brokers[victim].kill();
    let killed_at = Instant::now();
    let (failover, new_master) = producer.first_ok_after(killed_at, &old_master);
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

/// SIGTERM of the master under load: it hands the group to a member holding its whole log,
/// which the controllers elect at once (the successor its log names is the master elected),
/// and the producer moves over with nothing acknowledged lost; restarted at once, the old
/// master rejoins the set as a slave. The gap (SIGTERM to the first OK on the new master) is
/// printed; the SIGKILL scenarios above show the silence-based election it avoids.
#[test]
fn sigterm_of_the_master_hands_the_group_over_with_no_loss() {
    let Some(lab) = Lab::for_test(6) else { return };
    let (mut group, producer, old_master, old_id) = running(&lab, 3, defaults);
    let victim = group.index_of(&old_master);
    let terminated_at = Instant::now();
    assert!(group.brokers[victim].stop(), "a clean exit");
    let exited = terminated_at.elapsed();
    let (gap, new_master) = producer.first_ok_after(terminated_at, &old_master);
    println!(
        "master SIGTERMed -> exited in {} ms, first OK on {new_master} in {} ms",
        exited.as_millis(),
        gap.as_millis()
    );
    let successor = handed_over_to(&group.brokers[victim]);
    let (elected, elected_addr) = group.elected_other_than(old_id);
    assert_eq!(
        (elected, elected_addr.as_str()),
        (successor, new_master.as_str()),
        "the member the old master named is the master the producer reached"
    );
    group.brokers[victim].restart();
    producer.wait_for(200, "200 acknowledgements after the restart");
    rejoined_and_checked(
        &group,
        producer,
        (&old_master, old_id),
        &new_master,
        (terminated_at + gap, None),
    );
}

/// Every broker SIGKILLed at once and restarted at once (SYNC_FLUSH: none lost what it
/// acknowledged): the controllers wait until every member of the last set has reported, then
/// elect the one with the highest epoch and end offsets; the group serves again.
#[test]
fn every_broker_killed_at_once_comes_back_with_nothing_acknowledged_lost() {
    let Some(lab) = Lab::for_test(6) else { return };
    let (mut group, producer, _, _) = running(&lab, 3, defaults);
    for broker in group.brokers.iter() {
        broker.signal(libc::SIGKILL);
    }
    let killed_at = Instant::now();
    for broker in group.brokers.iter_mut() {
        broker.kill();
        broker.restart();
    }
    let (first_ok, at) = producer.first_ok_after(killed_at, "");
    println!(
        "every broker SIGKILLed and restarted -> first OK on {at} in {} ms",
        first_ok.as_millis()
    );
    producer.wait_for(200, "200 acknowledgements after the restarts");
    let (master, _) = master_with_set(&group.controller_addrs, 3, Duration::from_secs(60));
    producer.finish(&group, &master);
}

/// A learner (`async_learner = true`) replicates but is never in the SyncStateSet and never
/// elected: with the master SIGKILLed the other member is elected, alone in its set (so it
/// refuses `all` at the default `min_in_sync_replicas` until the killed broker, restarted at
/// once, rejoins), while the learner, caught up and alive throughout, stays out; the
/// learner's log ends identical to the master's too.
#[test]
fn a_learner_is_never_in_the_set_nor_elected() {
    let Some(lab) = Lab::for_test(6) else { return };
    const LEARNER: usize = 2;
    let learner = |i| {
        if i == LEARNER {
            "async_learner = true\n"
        } else {
            ""
        }
    };
    let (mut group, producer, old_master, old_id) = running(&lab, 2, learner);
    let learner_addr = group.brokers[LEARNER].addr.clone();
    assert_ne!(old_master, learner_addr, "the learner was elected first");
    let learner_id = wait_until(Duration::from_secs(30), "the learner registered", || {
        let state = group_state(&group.controller_addrs)?;
        state
            .brokers
            .iter()
            .find(|b| b.listen == learner_addr)
            .map(|b| b.broker_id)
    });
    let outside = |what: &str| {
        let state = group_state(&group.controller_addrs).expect("group state");
        assert!(
            !state.sync_state_set.contains(&learner_id) && state.master_broker_id != learner_id,
            "{what}: the learner joined: {state:?}"
        );
    };
    outside("before the kill");
    let victim = group.index_of(&old_master);
    group.brokers[victim].kill();
    let (new_id, new_master) = group.elected_other_than(old_id);
    assert_ne!(new_id, learner_id, "the learner was elected");
    outside("after the election");
    group.brokers[victim].restart();
    let (back, _) = master_with_set(&group.controller_addrs, 2, Duration::from_secs(60));
    assert_eq!(back, new_master);
    producer.wait_for(100, "100 acknowledgements once the set is whole again");
    outside("once the set is whole again");
    producer.finish(&group, &new_master);
}
