//! Three real controllers (`ringmq controller`) on loopback and a fake broker group of three
//! driven through the client library (`ringmq::client::controller`), heartbeating from
//! threads: a master is elected and takes its slaves into its SyncStateSet; the controller
//! leader is SIGKILLed and a new one leads within seconds with the group's state intact; the
//! master's heartbeats stop and a SyncStateSet member is elected in a new epoch; with two of
//! three controllers down nothing is elected and reads are refused with `NOT_LEADER`, and once
//! they are back the silent master is replaced; a dead controller is replaced with
//! `remove-peer` and `add-peer`; a bad frame closes only its own connection. Waits are on the
//! ready line and on answers polled with a deadline.

mod common;

use common::{run_binary, temp_store, wait_until, PortBlock};
use ringmq::client::controller::ControllerClient;
use ringmq::protocol::controller::{
    AlterSyncStateSet, BrokerHeartbeat, GroupState, RegisterBroker, ROLE_MASTER,
};
use ringmq::protocol::Status;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

const CLUSTER: &str = "c1";
const GROUP: &str = "group-a";

struct ControllerProcess {
    id: u64,
    addr: String,
    peers: String,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl ControllerProcess {
    fn start(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args([
                "controller",
                "--id",
                &self.id.to_string(),
                "--peers",
                &self.peers,
                "--store",
            ])
            .arg(self.store.path())
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
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the controller prints its ready line");
        assert!(line.contains("role=CONTROLLER"), "{line}");
        assert!(line.contains(&format!("id={}", self.id)), "{line}");
        assert!(line.contains(&format!("listen={}", self.addr)), "{line}");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `count` controllers on fixed ports (the peer list names them before they start).
fn controllers(count: u64) -> Vec<ControllerProcess> {
    let addrs: Vec<String> = (0..count)
        .map(|_| PortBlock::allocate().listen_addr())
        .collect();
    let peers = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut all: Vec<ControllerProcess> = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| ControllerProcess {
            id: i as u64 + 1,
            addr: addr.clone(),
            peers: peers.clone(),
            store: temp_store(),
            child: None,
        })
        .collect();
    for c in &mut all {
        c.start();
    }
    all
}

fn client_of(list: &[&ControllerProcess]) -> ControllerClient {
    ControllerClient::connect_list(
        &list
            .iter()
            .map(|c| c.addr.as_str())
            .collect::<Vec<_>>()
            .join(","),
    )
    .unwrap()
}

/// The leader as `addr`'s controller sees it.
fn leader_seen_by(addr: &str) -> Option<u64> {
    let mut client = ControllerClient::new(vec![addr.to_string()], Duration::from_secs(2)).ok()?;
    let status = client.status().ok()?;
    status["is_leader"]
        .as_bool()
        .filter(|l| *l)
        .and(status["id"].as_u64())
}

fn wait_for_leader(list: &[&ControllerProcess], timeout: Duration) -> u64 {
    wait_until(timeout, "a controller leader", || {
        list.iter().find_map(|c| leader_seen_by(&c.addr))
    })
}

/// A fake broker: registers, then heartbeats every 300 ms until stopped; as master it takes
/// every running broker into its SyncStateSet (the fake slaves are always caught up; one
/// stopped is not, as a real master would see its link gone).
struct FakeBroker {
    id: u64,
    running: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
    /// The ids of the running fake brokers, shared.
    all_ids: Arc<std::sync::Mutex<Vec<u64>>>,
}

impl FakeBroker {
    fn start(
        controllers: String,
        store: &str,
        all_ids: Arc<std::sync::Mutex<Vec<u64>>>,
    ) -> FakeBroker {
        let mut client = ControllerClient::connect_list(&controllers).unwrap();
        let id = client
            .register_broker(&RegisterBroker {
                cluster_name: CLUSTER.into(),
                broker_name: GROUP.into(),
                store_identity: store.into(),
                listen: format!("127.0.0.1:1{}", store.len()),
                ha_listen: format!("127.0.0.1:2{}", store.len()),
            })
            .expect("register");
        all_ids.lock().unwrap().push(id);
        let running = Arc::new(AtomicBool::new(true));
        let flag = running.clone();
        let running_ids = all_ids.clone();
        let started = Instant::now();
        let handle = thread::spawn(move || {
            while flag.load(Ordering::SeqCst) {
                let heartbeat = heartbeat_of(id, 100, started);
                if let Ok(answer) = client.heartbeat(&heartbeat) {
                    let mut wanted = all_ids.lock().unwrap().clone();
                    wanted.sort();
                    if answer.role == ROLE_MASTER && answer.sync_state_set != wanted {
                        assert!(
                            answer.lease_expires_ms > heartbeat.sent_at_ms,
                            "a master holds a lease"
                        );
                        let _ = client.alter_sync_state_set(&AlterSyncStateSet {
                            cluster_name: CLUSTER.into(),
                            broker_name: GROUP.into(),
                            master_broker_id: id,
                            master_epoch: answer.master_epoch,
                            sync_state_set_epoch: answer.sync_state_set_epoch,
                            new_sync_state_set: wanted,
                        });
                    }
                }
                thread::sleep(Duration::from_millis(300));
            }
        });
        FakeBroker {
            id,
            running,
            handle: Some(handle),
            all_ids: running_ids,
        }
    }

    fn stop(&mut self) {
        self.running.store(false, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        self.all_ids.lock().unwrap().retain(|id| *id != self.id);
    }
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fake broker's heartbeat: one shard ending at `end`, sent now by a clock started at
/// `started`.
fn heartbeat_of(id: u64, end: u64, started: Instant) -> BrokerHeartbeat {
    BrokerHeartbeat {
        cluster_name: CLUSTER.into(),
        broker_name: GROUP.into(),
        broker_id: id,
        epoch: 0,
        end_offsets: vec![end],
        unclean_restart: 0,
        async_flush: 0,
        learner: 0,
        election_priority: 0,
        sent_at_ms: started.elapsed().as_millis() as u64,
        ..BrokerHeartbeat::default()
    }
}

fn group_state(client: &mut ControllerClient) -> Option<GroupState> {
    client.group_state(CLUSTER, GROUP).ok()
}

#[test]
fn failover_of_the_controller_leader_and_of_the_master() {
    let mut cs = controllers(3);
    let list = || {
        cs.iter()
            .map(|c| c.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    };
    let first_leader = wait_for_leader(&cs.iter().collect::<Vec<_>>(), Duration::from_secs(15));
    let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut brokers: Vec<FakeBroker> = ["store-a", "store-b", "store-c"]
        .iter()
        .map(|s| FakeBroker::start(list(), s, ids.clone()))
        .collect();
    let mut client = ControllerClient::connect_list(&list()).unwrap();
    // A store asking again gets the id it has.
    let again = client
        .register_broker(&RegisterBroker {
            cluster_name: CLUSTER.into(),
            broker_name: GROUP.into(),
            store_identity: "store-a".into(),
            listen: "127.0.0.1:17".into(),
            ha_listen: "127.0.0.1:27".into(),
        })
        .unwrap();
    assert_eq!(again, brokers[0].id);

    let settled = wait_until(
        Duration::from_secs(15),
        "a master with all three in its set",
        || {
            group_state(&mut client)
                .filter(|g| g.master_broker_id != 0 && g.sync_state_set.len() == 3)
        },
    );

    let out = run_binary(&["cluster", "status", "--controller", &list()], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "{CLUSTER}/{GROUP}: master {} epoch {}",
            settled.master_broker_id, settled.master_epoch
        )),
        "{text}"
    );
    assert_eq!(text.matches("alive").count(), 3, "{text}");

    // SIGKILL the controller leader: another leads within seconds, with the same state.
    let killed_at = Instant::now();
    let leader_index = cs.iter().position(|c| c.id == first_leader).unwrap();
    cs[leader_index].kill();
    let survivors: Vec<&ControllerProcess> = cs.iter().filter(|c| c.id != first_leader).collect();
    let second_leader = wait_for_leader(&survivors, Duration::from_secs(10));
    assert_ne!(second_leader, first_leader);
    eprintln!(
        "new controller leader {second_leader} after {:?}",
        killed_at.elapsed()
    );
    // A request in flight while the followers learn the new leader may be told NOT_LEADER
    // with no hint; the broker's next heartbeat asks again, and so does this.
    let after = wait_until(Duration::from_secs(5), "the new leader answers", || {
        group_state(&mut client)
    });
    assert_eq!(
        (
            after.master_broker_id,
            after.master_epoch,
            after.sync_state_set.clone()
        ),
        (
            settled.master_broker_id,
            settled.master_epoch,
            settled.sync_state_set.clone()
        ),
        "the group's committed state survived the leader's death"
    );
    cs[leader_index].start();
    let restarted = cs[leader_index].addr.clone();
    wait_until(
        Duration::from_secs(15),
        "the restarted controller to catch up",
        || {
            let mut c =
                ControllerClient::new(vec![restarted.clone()], Duration::from_secs(2)).ok()?;
            let status = c.status().ok()?;
            let group = status["groups"].as_array()?.first()?.clone();
            (group["master_broker_id"] == settled.master_broker_id
                && group["sync_state_set"].as_array()?.len() == 3)
                .then_some(())
        },
    );

    // Stop the master's heartbeats: a member of its set takes over, in a new epoch.
    let master = settled.master_broker_id;
    let stopped_at = Instant::now();
    brokers.iter_mut().find(|b| b.id == master).unwrap().stop();
    let elected = wait_until(Duration::from_secs(15), "a new master", || {
        group_state(&mut client).filter(|g| g.master_broker_id != master && g.master_broker_id != 0)
    });
    eprintln!(
        "master {master} replaced by {} after {:?}",
        elected.master_broker_id,
        stopped_at.elapsed()
    );
    assert!(settled.sync_state_set.contains(&elected.master_broker_id));
    assert_eq!(elected.master_epoch, settled.master_epoch + 1);
    assert!(
        !elected.sync_state_set.contains(&master),
        "the lost master left the set"
    );
    assert_eq!(
        elected.sync_state_set.len(),
        2,
        "the surviving member stayed in the set"
    );

    // Two of three controllers down: the third cannot lead, refuses reads, elects nobody.
    let epoch_before = elected.master_epoch;
    let new_master = elected.master_broker_id;
    let leader = wait_for_leader(&cs.iter().collect::<Vec<_>>(), Duration::from_secs(10));
    let keep = cs.iter().position(|c| c.id != leader).unwrap();
    for (i, c) in cs.iter_mut().enumerate() {
        if i != keep {
            c.kill();
        }
    }
    brokers
        .iter_mut()
        .find(|b| b.id == new_master)
        .unwrap()
        .stop();
    let mut lone = client_of(&[&cs[keep]]);
    // At first it may still name the dead leader; within an election timeout it knows none.
    let refusal = wait_until(
        Duration::from_secs(10),
        "the lone controller to know no leader",
        || {
            lone.group_state(CLUSTER, GROUP)
                .err()
                .filter(|e| e.to_string().contains("no majority"))
        },
    );
    assert_eq!(refusal.status(), Some(Status::NotLeader), "{refusal}");
    // The master is silent, but nothing can be committed without a majority: the lone
    // controller's own state keeps the epoch for longer than an election would need (the
    // 2 s silence limit). Its status answers from its own state, leader or not.
    let lone_addr = cs[keep].addr.clone();
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        let mut c = ControllerClient::new(vec![lone_addr.clone()], Duration::from_secs(2)).unwrap();
        let status = c
            .call(&ringmq::protocol::controller::StatusRequest {})
            .expect("status from the lone controller");
        assert_eq!(status["is_leader"], false);
        assert_eq!(
            status["groups"][0]["master_epoch"], epoch_before,
            "an election without a majority"
        );
        thread::sleep(Duration::from_millis(200));
    }
    for (i, c) in cs.iter_mut().enumerate() {
        if i != keep {
            c.start();
        }
    }
    // With the majority back, switching resumes: the silent master is replaced.
    let resumed = wait_until(
        Duration::from_secs(20),
        "an election once a majority is back",
        || {
            group_state(&mut client)
                .filter(|g| g.master_broker_id != new_master && g.master_broker_id != 0)
        },
    );
    assert_eq!(resumed.master_epoch, epoch_before + 1);
    for b in &mut brokers {
        b.stop();
    }
}

#[test]
fn a_dead_controller_is_replaced_with_remove_peer_and_add_peer() {
    let mut cs = controllers(3);
    let leader = wait_for_leader(&cs.iter().collect::<Vec<_>>(), Duration::from_secs(15));
    let dead = cs.iter().position(|c| c.id != leader).unwrap();
    let dead_id = cs[dead].id;
    cs[dead].kill();
    let alive: Vec<String> = cs
        .iter()
        .filter(|c| c.id != dead_id)
        .map(|c| c.addr.clone())
        .collect();
    let out = run_binary(
        &[
            "controller",
            "remove-peer",
            &dead_id.to_string(),
            "--controller",
            &alive.join(","),
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The replacement starts knowing the members it will have, then is added.
    let addr = PortBlock::allocate().listen_addr();
    let peers: Vec<String> = cs
        .iter()
        .filter(|c| c.id != dead_id)
        .map(|c| format!("{}={}", c.id, c.addr))
        .chain(std::iter::once(format!("4={addr}")))
        .collect();
    let mut fourth = ControllerProcess {
        id: 4,
        addr: addr.clone(),
        peers: peers.join(","),
        store: temp_store(),
        child: None,
    };
    fourth.start();
    let out = run_binary(
        &[
            "controller",
            "add-peer",
            &format!("4={addr}"),
            "--controller",
            &alive.join(","),
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut client = ControllerClient::connect_list(&alive.join(",")).unwrap();
    let status = client.status().unwrap();
    let voters: Vec<u64> = serde_json::from_value(status["voters"].clone()).unwrap();
    assert_eq!(
        voters
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        [1, 2, 3, 4].into_iter().filter(|i| *i != dead_id).collect()
    );

    // The group still commits with the old leader gone: kill it, the other two lead.
    let id = client
        .register_broker(&RegisterBroker {
            cluster_name: CLUSTER.into(),
            broker_name: GROUP.into(),
            store_identity: "s".into(),
            listen: "127.0.0.1:1".into(),
            ha_listen: "127.0.0.1:2".into(),
        })
        .unwrap();
    cs.iter_mut().find(|c| c.id == leader).unwrap().kill();
    let rest: Vec<&ControllerProcess> = cs
        .iter()
        .filter(|c| c.child.is_some())
        .chain(std::iter::once(&fourth))
        .collect();
    wait_for_leader(&rest, Duration::from_secs(15));
    let mut rest_client = client_of(&rest);
    let known: BTreeMap<u64, ()> = wait_until(
        Duration::from_secs(10),
        "the group on the new majority",
        || {
            rest_client
                .group_state(CLUSTER, GROUP)
                .ok()
                .map(|g| g.brokers.iter().map(|b| (b.broker_id, ())).collect())
        },
    );
    assert!(
        known.contains_key(&id),
        "the registration committed before the change survived it"
    );
}

#[test]
fn a_bad_frame_closes_only_its_connection_and_a_broker_opcode_is_unknown() {
    use ringmq::protocol::frame::{encode_frame, FrameDecoder, FrameHeader};
    use std::io::{Read, Write};
    let cs = controllers(1);
    wait_for_leader(&cs.iter().collect::<Vec<_>>(), Duration::from_secs(15));
    let read_answer = |stream: &mut std::net::TcpStream| {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(frame) = FrameDecoder::new(1 << 20).decode(&buf).unwrap() {
                return (
                    frame.header,
                    String::from_utf8_lossy(frame.body).to_string(),
                );
            }
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "closed before answering");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let mut stream = std::net::TcpStream::connect(&cs[0].addr).unwrap();
    let mut frame = Vec::new();
    encode_frame(
        &mut frame,
        FrameHeader {
            flags: 0,
            opcode: 10,
            status: 0,
            request_id: 5,
        },
        b"x",
    );
    stream.write_all(&frame).unwrap();
    let (header, message) = read_answer(&mut stream);
    assert_eq!(
        (header.status, header.request_id),
        (Status::UnknownOpcode as u16, 5)
    );
    assert!(message.contains("80-99"), "{message}");

    stream.write_all(b"this is not a frame at all").unwrap();
    let (header, _) = read_answer(&mut stream);
    assert_eq!(header.status, Status::BadMagic as u16);
    let mut rest = Vec::new();
    assert_eq!(
        stream.read_to_end(&mut rest).unwrap_or(0),
        0,
        "the connection is closed"
    );

    let status = client_of(&[&cs[0]]).status().unwrap();
    assert_eq!(
        status["is_leader"], true,
        "the controller serves everyone else"
    );
}

/// A follower forwards a broker's requests to the leader and relays the answers, so a broker
/// that reaches only a follower (cut from the leader alone) registers, heartbeats and holds
/// its lease through it: the answers come from the follower's address, not after a redirect.
/// A request another follower already forwarded is answered where it lands, never forwarded
/// a second time.
#[test]
fn a_follower_forwards_a_brokers_requests_to_the_leader() {
    use ringmq::protocol::controller::{GroupRef, FLAG_FORWARDED};
    use ringmq::protocol::frame::{encode_frame, FrameDecoder, FrameHeader};
    use std::io::{Read, Write};
    let cs = controllers(3);
    let leader = wait_for_leader(&cs.iter().collect::<Vec<_>>(), Duration::from_secs(15));
    let follower = cs.iter().find(|c| c.id != leader).unwrap();
    // Until the follower has heard from the leader it answers NOT_LEADER itself.
    let mut client =
        ControllerClient::new(vec![follower.addr.clone()], Duration::from_secs(2)).unwrap();
    let register = RegisterBroker {
        cluster_name: CLUSTER.into(),
        broker_name: GROUP.into(),
        store_identity: "forwarded-store".into(),
        listen: "127.0.0.1:10".into(),
        ha_listen: "127.0.0.1:20".into(),
    };
    let id = wait_until(Duration::from_secs(10), "a registration", || {
        client.register_broker(&register).ok()
    });
    assert_eq!(
        client.current_addr(),
        follower.addr,
        "the follower answered the registration itself"
    );
    let started = Instant::now();
    let answer = wait_until(Duration::from_secs(15), "the lone broker elected", || {
        let heartbeat = heartbeat_of(id, 0, started);
        let answer = client.heartbeat(&heartbeat).expect("a forwarded heartbeat");
        assert_eq!(
            client.current_addr(),
            follower.addr,
            "answered by the follower"
        );
        if answer.role != ROLE_MASTER {
            thread::sleep(Duration::from_millis(250));
            return None;
        }
        Some((answer, heartbeat.sent_at_ms))
    });
    assert!(
        answer.0.lease_expires_ms > answer.1,
        "the leader's lease reached the broker through the follower: {:?}",
        answer.0
    );
    let seen_by_leader = group_state(&mut client_of(&[cs
        .iter()
        .find(|c| c.id == leader)
        .unwrap()]))
    .expect("the leader's group state");
    assert_eq!(seen_by_leader.master_broker_id, id);

    // A frame marked forwarded is not passed on: the follower answers NOT_LEADER itself.
    let mut stream = std::net::TcpStream::connect(&follower.addr).unwrap();
    let mut body = Vec::new();
    GroupRef {
        cluster_name: CLUSTER.into(),
        broker_name: GROUP.into(),
    }
    .encode(&mut body);
    let mut frame = Vec::new();
    encode_frame(
        &mut frame,
        FrameHeader {
            flags: FLAG_FORWARDED,
            opcode: ringmq::protocol::controller::ControllerOpcode::GetGroupState as u16,
            status: 0,
            request_id: 7,
        },
        &body,
    );
    stream.write_all(&frame).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header = loop {
        if let Some(frame) = FrameDecoder::new(1 << 20).decode(&buf).unwrap() {
            break frame.header;
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before answering");
        buf.extend_from_slice(&chunk[..n]);
    };
    assert_eq!(
        (header.status, header.request_id),
        (Status::NotLeader as u16, 7)
    );
}

/// `ringmq namesrv --controller-id ...`: one process serves routes and runs a one-replica
/// controller (RocketMQ's `enableControllerInNamesrv`). One ready line names both addresses;
/// the controller switches masters on its own, without fault tolerance of its own.
#[test]
fn a_controller_inside_the_name_server_switches_masters() {
    let namesrv_addr = PortBlock::allocate().listen_addr();
    let controller_addr = PortBlock::allocate().listen_addr();
    let store = temp_store();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args([
            "namesrv",
            "--listen",
            &namesrv_addr,
            "--controller-id",
            "1",
            "--controller-peers",
            &format!("1={controller_addr}"),
            "--controller-store",
        ])
        .arg(store.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ringmq namesrv");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the name server prints its ready line");
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _process = Kill(child);
    assert!(line.starts_with("ringmq ready"), "{line}");
    assert!(line.contains(&format!("listen={namesrv_addr}")), "{line}");
    assert!(line.contains("role=NAMESRV"), "{line}");
    assert!(
        line.contains(&format!("controller={controller_addr} controller_id=1")),
        "{line}"
    );
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "exactly one ready line"
    );

    // The name server still serves routes.
    let listed = run_binary(&["cluster", "list", "--namesrv", &namesrv_addr], b"");
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );

    // The controller elects a master, and another when the master falls silent.
    let leader = wait_until(
        Duration::from_secs(20),
        "the embedded controller leads",
        || leader_seen_by(&controller_addr),
    );
    assert_eq!(leader, 1);
    let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut first = FakeBroker::start(controller_addr.clone(), "store-one", ids.clone());
    let mut second = FakeBroker::start(controller_addr.clone(), "store-two", ids.clone());
    let mut client = ControllerClient::connect_list(&controller_addr).unwrap();
    let state = wait_until(Duration::from_secs(20), "a master in a full set", || {
        group_state(&mut client).filter(|s| s.master_broker_id != 0 && s.sync_state_set.len() == 2)
    });
    let (master, other) = if state.master_broker_id == first.id {
        (&mut first, second.id)
    } else {
        (&mut second, first.id)
    };
    master.stop();
    let after = wait_until(Duration::from_secs(20), "the other broker elected", || {
        group_state(&mut client).filter(|s| s.master_broker_id == other)
    });
    assert!(
        after.master_epoch > state.master_epoch,
        "{after:?} after {state:?}"
    );
}
