//! Multi-host scenarios in network namespaces (`common::netns::Lab`): brokers on their own
//! hosts, the test's clients in the root namespace, faults made with blackhole routes and
//! `tc tbf` between the hosts. The controller scenarios of issue 11 are in netns_controller.rs
//! on the same lab; these cover master/slave replication across a real (virtual) network: a
//! partition between master and slave holds `all` acknowledgements back while `leader` ones
//! go on, and healing it lets the slave catch up to a byte-identical log; a slow link delays
//! the slave but loses nothing.

mod common;

use common::netns::Lab;
use common::{temp_store, wait_until, Broker, Sizes};
use ringmq::client::{Acks, Client, ClusterStatus, ProduceResult};
use ringmq::protocol::message::{ClusterStatusRequest, MessageRef};
use ringmq::protocol::Status;
use std::time::Duration;

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
