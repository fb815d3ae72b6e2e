//! Brokers registering with a real name server (`ringmq namesrv` and `ringmq serve --namesrv`
//! on loopback, port 0): the routes list a broker with its topics, a topic created on it is
//! listed before its next heartbeat, a slave's `NOT_MASTER` names its group's master, its
//! promotion is listed at once with a newer epoch, SIGTERM takes a broker out of the routes at
//! once and SIGKILL after the name server's expiry. A master SIGKILLed, replaced by its
//! promoted slave and restarted as master (as a supervisor would) never replaces its successor
//! in the routes however often it crashes and restarts, and once made to follow the successor
//! its log equals the successor's.
//! Waits are on ready lines and answers, or polls with a deadline.

mod common;

use common::{temp_store, wait_until, Broker, NameServer};
use ringmq::client::{Client, ClusterStatus};
use ringmq::protocol::message::{
    ClusterDemote, ClusterPromote, ClusterStatusRequest, MessageRef, TopicListRequest,
};
use ringmq::protocol::namesrv::Routes;
use ringmq::protocol::Status;
use std::time::{Duration, Instant};

/// A heartbeat far longer than the waits below: a route that changes within them changed
/// because the broker registered at once, not because a heartbeat came round.
const SLOW_HEARTBEAT: &str = "namesrv_heartbeat_interval_ms = 60000";

/// The routes' entry for the broker whose advertised client address is `listen`.
fn listed(routes: &Routes, listen: &str) -> Option<ringmq::protocol::namesrv::BrokerRoute> {
    routes
        .brokers
        .iter()
        .find(|b| b.broker.listen == listen)
        .cloned()
}

#[test]
fn brokers_register_change_at_once_name_their_master_and_leave() {
    let ns = NameServer::start(60_000);
    let master_dir = temp_store();
    let mut master = Broker::start_with_config(
        master_dir.path(),
        SLOW_HEARTBEAT,
        &[
            "--namesrv",
            &ns.addr,
            "--cluster",
            "c1",
            "--broker-name",
            "g1",
            "--role",
            "ASYNC_MASTER",
        ],
    );
    let mut client = master.client();
    client.create_topic("before", 2).expect("create topic");
    let route = wait_until(Duration::from_secs(10), "the master in the routes", || {
        listed(&ns.routes(), &master.addr)
            .filter(|r| r.broker.topics.iter().any(|t| t.name == "before"))
    });
    assert_eq!(route.broker.cluster_name, "c1");
    assert_eq!(route.broker.broker_name, "g1");
    assert_eq!(route.broker.role, "ASYNC_MASTER");
    assert_ne!(route.broker.broker_id, 0);
    assert_eq!(route.broker.ha_listen, master.ha);
    assert_eq!(route.broker.shard_ports, master.shard_ports);
    let broker_id = std::fs::read_to_string(master.store.join("broker_id")).expect("broker_id");
    assert_eq!(broker_id.trim(), route.broker.broker_id.to_string());

    // Listed well before the next heartbeat (a minute away): the wait gives up after a sixth
    // of it.
    client.create_topic("after", 3).expect("create topic");
    wait_until(
        Duration::from_secs(10),
        "the new topic in the routes",
        || {
            listed(&ns.routes(), &master.addr).filter(|r| {
                r.broker
                    .topics
                    .iter()
                    .any(|t| t.name == "after" && t.queue_count() == 3)
            })
        },
    );

    // A slave of g1 learns the master from its registration answer and names it.
    let slave_dir = temp_store();
    let mut slave = Broker::start_with_config(
        slave_dir.path(),
        SLOW_HEARTBEAT,
        &[
            "--namesrv",
            &ns.addr,
            "--cluster",
            "c1",
            "--broker-name",
            "g1",
            "--role",
            "SLAVE",
            "--master",
            &master.ha,
        ],
    );
    let mut slave_client = slave.client();
    let hint = wait_until(
        Duration::from_secs(10),
        "NOT_MASTER naming the master",
        || {
            let refused = slave_client
                .produce(
                    "before",
                    Some(0),
                    &[MessageRef {
                        born_timestamp_ms: 0,
                        key: b"",
                        properties: b"",
                        body: b"to a slave",
                    }],
                )
                .expect_err("a slave refuses produce");
            assert_eq!(refused.status(), Some(Status::NotMaster), "{refused}");
            refused.master_hint()
        },
    );
    assert_eq!(hint.listen, master.addr);
    assert_eq!(hint.epoch, route.broker.epoch);
    let slave_route = listed(&ns.routes(), &slave.addr).expect("the slave is listed");
    assert_eq!(slave_route.broker.role, "SLAVE");
    assert_ne!(slave_route.broker.broker_id, route.broker.broker_id);

    // SIGTERM: out of the routes at once, not after the minute-long expiry; each broker's
    // own unregister removes it (the other stays listed until it stops).
    assert!(slave.stop(), "the slave stops cleanly");
    let routes = ns.routes();
    assert!(listed(&routes, &slave.addr).is_none(), "{routes:?}");
    assert!(listed(&routes, &master.addr).is_some(), "{routes:?}");
    assert!(master.stop(), "the master stops cleanly");
    let routes = ns.routes();
    assert!(listed(&routes, &master.addr).is_none(), "{routes:?}");
}

#[test]
fn a_killed_broker_expires_from_the_routes() {
    const EXPIRY_MS: u64 = 1500;
    let ns = NameServer::start(EXPIRY_MS);
    let dir = temp_store();
    let mut broker = Broker::start_with_config(
        dir.path(),
        "namesrv_heartbeat_interval_ms = 300",
        &["--namesrv", &ns.addr, "--broker-name", "g2"],
    );
    let route = wait_until(Duration::from_secs(10), "the broker in the routes", || {
        listed(&ns.routes(), &broker.addr)
    });
    assert_eq!(route.broker.cluster_name, "DefaultCluster");
    // Heartbeats keep it listed past the expiry.
    std::thread::sleep(Duration::from_millis(2 * EXPIRY_MS));
    assert!(
        listed(&ns.routes(), &broker.addr).is_some(),
        "heartbeats keep it"
    );
    let killed = Instant::now();
    broker.kill();
    wait_until(
        Duration::from_secs(15),
        "the killed broker to expire",
        || listed(&ns.routes(), &broker.addr).is_none().then_some(()),
    );
    // Not before the expiry: only silence dropped it.
    assert!(killed.elapsed() >= Duration::from_millis(EXPIRY_MS - 400));
}

fn status(broker: &Broker) -> Option<ClusterStatus> {
    Client::connect(&broker.addr)
        .ok()?
        .call(&ClusterStatusRequest {})
        .ok()
}

fn produce_bodies(broker: &Broker, topic: &str, prefix: &str, count: u32) {
    let mut client = broker.client();
    for i in 0..count {
        let body = format!("{prefix}-{i}");
        let answer = client
            .produce(
                topic,
                Some(i % 2),
                &[MessageRef {
                    born_timestamp_ms: 0,
                    key: b"",
                    properties: b"",
                    body: body.as_bytes(),
                }],
            )
            .expect("produce");
        assert_eq!(answer.status, Status::Ok, "{prefix} {i}");
    }
}

/// Every message body of `topic`'s two queues, in queue order.
fn bodies(broker: &Broker, topic: &str) -> Vec<Vec<String>> {
    let mut client = broker.client();
    (0..2)
        .map(|queue| {
            let pulled = client
                .pull(topic, queue, 0, 1000, 4 << 20, 0)
                .expect("pull");
            pulled
                .messages
                .iter()
                .map(|m| String::from_utf8_lossy(&m.body).into_owned())
                .collect()
        })
        .collect()
}

/// The master the routes list for `group`: (advertised address, epoch).
fn listed_master(routes: &Routes, group: &str) -> Option<(String, u32)> {
    routes
        .brokers
        .iter()
        .find(|b| b.broker.broker_name == group && b.broker.role.ends_with("MASTER"))
        .map(|b| (b.broker.listen.clone(), b.broker.epoch))
}

/// The commitlog files of a store's shards, by `shard-N/commitlog/NAME`.
fn commitlog_files(store: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    for shard in std::fs::read_dir(store).expect("store").flatten() {
        let log = shard.path().join("commitlog");
        let Ok(entries) = std::fs::read_dir(&log) else {
            continue;
        };
        for file in entries.flatten() {
            let name = format!(
                "{}/commitlog/{}",
                shard.file_name().to_string_lossy(),
                file.file_name().to_string_lossy()
            );
            files.insert(name, std::fs::read(file.path()).expect("read segment"));
        }
    }
    files
}

#[test]
fn a_restarted_stale_master_never_replaces_its_successor() {
    const TOPIC: &str = "stale";
    const FIRST_TERM: u32 = 1 << 16;
    let ns = NameServer::start(60_000);
    let group = ["--namesrv", &ns.addr, "--broker-name", "g3"];
    let config = "namesrv_heartbeat_interval_ms = 200\nha_heartbeat_interval_ms = 100";
    let old_dir = temp_store();
    let mut old = Broker::start_with_config(
        old_dir.path(),
        config,
        &[
            &group[..],
            &["--role", "ASYNC_MASTER", "--flush", "SYNC_FLUSH"],
        ]
        .concat(),
    );
    let new_dir = temp_store();
    let mut new = Broker::start_with_config(
        new_dir.path(),
        config,
        &[
            &group[..],
            &[
                "--role",
                "SLAVE",
                "--flush",
                "SYNC_FLUSH",
                "--master",
                &old.ha,
            ],
        ]
        .concat(),
    );
    old.client().create_topic(TOPIC, 2).expect("create topic");
    produce_bodies(&old, TOPIC, "common", 20);
    wait_until(Duration::from_secs(30), "the slave to catch up", || {
        let s = status(&old)?;
        s.shards
            .iter()
            .all(|sh| sh.slaves.iter().any(|l| l.acked_offset == sh.max_offset))
            .then_some(())
    });

    wait_until(Duration::from_secs(30), "the topic on the slave", || {
        let topics = Client::connect(&new.addr)
            .ok()?
            .call(&TopicListRequest {})
            .ok()?
            .topics;
        topics.iter().any(|t| t.name == TOPIC).then_some(())
    });
    old.kill();
    let promoted = new
        .client()
        .call(&ClusterPromote {
            role: "ASYNC_MASTER".to_string(),
        })
        .expect("promote");
    assert!(
        promoted.shards.iter().all(|s| s.epoch == FIRST_TERM),
        "{promoted:?}"
    );
    wait_until(
        Duration::from_secs(10),
        "the promoted slave listed as master",
        || (listed_master(&ns.routes(), "g3")? == (new.addr.clone(), FIRST_TERM)).then_some(()),
    );
    produce_bodies(&new, TOPIC, "new", 10);

    // A supervisor restarts the old master with its configuration: a master again, taking
    // writes sent to it directly, crashing and restarting twice more.
    for life in 0..3 {
        old.restart();
        let refused = wait_until(Duration::from_secs(10), "the stale claim refused", || {
            status(&old).filter(|s| s.namesrv.iter().any(|n| n.registered && n.refused))
        });
        assert_eq!(refused.role, "ASYNC_MASTER");
        assert!(
            refused.shards.iter().all(|s| s.epoch < FIRST_TERM),
            "a restart stays in its term: {refused:?}"
        );
        assert_eq!(
            listed_master(&ns.routes(), "g3"),
            Some((new.addr.clone(), FIRST_TERM)),
            "life {life}: the routes still list the promoted slave"
        );
        produce_bodies(&old, TOPIC, &format!("stale{life}"), 6);
        old.kill();
    }
    old.restart();
    wait_until(Duration::from_secs(10), "the stale claim refused", || {
        status(&old).filter(|s| s.namesrv.iter().any(|n| n.refused))
    });
    let restarted = status(&old).expect("status");
    assert!(
        restarted.shards.iter().any(|s| s.epoch > 2),
        "generations moved: {restarted:?}"
    );
    assert_eq!(
        listed_master(&ns.routes(), "g3"),
        Some((new.addr.clone(), FIRST_TERM))
    );

    // Made to follow the new master, it cuts every stale write and ends byte-identical.
    let demoted = old
        .client()
        .call(&ClusterDemote {
            master: new.ha.clone(),
        })
        .expect("demote");
    assert!(demoted.shards.iter().all(|s| s.role == "SLAVE"));
    let on_new = wait_until(
        Duration::from_secs(30),
        "the old master to catch up",
        || {
            let n = status(&new)?;
            let o = status(&old)?;
            let caught_up = n.shards.iter().zip(&o.shards).all(|(n, o)| {
                n.slaves.iter().any(|l| l.acked_offset == n.max_offset)
                    && o.max_offset == n.max_offset
                    && o.confirmed_offset == n.max_offset
                    && o.epoch == n.epoch
            });
            caught_up.then_some(n)
        },
    );
    assert!(on_new.shards.iter().all(|s| s.epoch == FIRST_TERM));
    let from_new = bodies(&new, TOPIC);
    assert_eq!(bodies(&old, TOPIC), from_new);
    let all: Vec<&String> = from_new.iter().flatten().collect();
    assert_eq!(all.len(), 30, "{all:?}");
    assert!(all.iter().all(|b| !b.starts_with("stale")), "{all:?}");
    wait_until(
        Duration::from_secs(10),
        "the old master listed as a slave",
        || listed(&ns.routes(), &old.addr).filter(|r| r.broker.role == "SLAVE"),
    );
    assert!(old.stop() && new.stop());
    let on_new = commitlog_files(&new.store);
    let on_old = commitlog_files(&old.store);
    let mut compared = 0;
    for (name, bytes) in &on_new {
        if let Some(other) = on_old.get(name) {
            assert!(other == bytes, "{name} differs after the cut");
            compared += 1;
        }
    }
    assert!(compared > 0, "{:?}", on_new.keys());
}
