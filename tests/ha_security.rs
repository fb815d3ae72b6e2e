//! Authentication of the replication link (`ha_security = "auth"`) and of name-server
//! registrations (`namesrv_secret_file`, `ringmq namesrv --secret-file`), against real
//! processes on loopback: a rogue `ringmq serve --role SLAVE` without the secret, or with
//! another one, gets no byte of the log and cannot release a SYNC_MASTER producer; a slave with
//! the secret replicates; a forged or replayed registration does not move the routes.

mod common;

use common::{temp_store, wait_until, Broker, NameServer};
use ringmq::client::{Client, ClusterStatus};
use ringmq::protocol::auth::{sign_register, Secret};
use ringmq::protocol::message::{ClusterStatusRequest, MessageRef};
use ringmq::protocol::namesrv::BrokerRegister;
use ringmq::protocol::Status;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Short heartbeats and link timeouts, so refused links retry and a good one catches up fast.
const HA_CONFIG: &str = "ha_heartbeat_interval_ms = 100\nha_link_timeout_ms = 2000\n\
                         metadata_sync_interval_ms = 200\nsync_replica_timeout_ms = 1000\n";
const CATCH_UP: Duration = Duration::from_secs(30);

fn secret_file(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write the secret");
    path
}

fn auth_config(secret: &Path) -> String {
    format!(
        "{HA_CONFIG}ha_security = \"auth\"\nha_secret_file = \"{}\"\n",
        secret.display()
    )
}

fn message(body: &[u8]) -> MessageRef<'_> {
    MessageRef {
        born_timestamp_ms: 0,
        key: b"",
        properties: b"",
        body,
    }
}

fn status(broker: &Broker) -> Option<ClusterStatus> {
    Client::connect(&broker.addr)
        .ok()?
        .call(&ClusterStatusRequest {})
        .ok()
}

fn slave(dir: &Path, master: &Broker, config: &str) -> Broker {
    Broker::start_with_config(
        dir,
        config,
        &["--role", "SLAVE", "--shards", "1", "--master", &master.ha],
    )
}

/// Nothing of the master's log reached `rogue`: its log is empty and it never connected.
fn assert_got_nothing(rogue: &Broker) {
    let s = status(rogue).expect("the rogue's status");
    assert!(
        s.shards.iter().all(|sh| sh.max_offset == 0),
        "a rogue slave received log bytes: {:?}",
        s.shards
    );
    assert!(
        !rogue.log().contains("replicating from the master"),
        "a rogue slave got past the handshake:\n{}",
        rogue.log_tail()
    );
}

#[test]
fn only_a_slave_with_the_secret_is_served_and_releases_producers() {
    let root = temp_store();
    let secret = secret_file(
        root.path(),
        "ha.secret",
        b"0123456789abcdef0123456789abcdef\n",
    );
    let wrong = secret_file(root.path(), "wrong.secret", &[b'w'; 40]);
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| temp_store()).collect();
    let master = Broker::start_with_config(
        dirs[0].path(),
        &auth_config(&secret),
        &["--role", "SYNC_MASTER", "--shards", "1"],
    );
    assert!(
        !master.log().contains("ha_security is \"off\""),
        "an authenticating broker warns as if it were open"
    );
    let mut client = master.client();
    client.create_topic("secured", 1).unwrap();
    // One rogue with no authentication at all, one with another secret.
    let open_rogue = slave(dirs[1].path(), &master, HA_CONFIG);
    assert!(
        open_rogue.log().contains("ha_security is \"off\""),
        "a broker without authentication warns at start"
    );
    let wrong_rogue = slave(dirs[2].path(), &master, &auth_config(&wrong));
    wait_until(CATCH_UP, "the master to refuse the rogues", || {
        (master
            .log()
            .contains("refused a replication peer: authentication failed")
            && open_rogue.log().contains("authentication failed")
            && wrong_rogue.log().contains("authentication failed"))
        .then_some(())
    });
    // With only rogues connected, no producer is ever told OK; and the rogues keep being
    // refused meanwhile (the counter rises during the loop: they were retrying, not gone). The
    // loop runs at least 3 s and until a refusal was counted in it (a rogue's backoff is at
    // most 3 s), bounded by CATCH_UP.
    use ringmq::protocol::message::StatsRequest;
    let refused = |client: &mut Client| {
        client.call(&StatsRequest {}).unwrap().counters["replication_handshakes_refused_total"]
    };
    let refused_before = refused(&mut client);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) || refused(&mut client) == refused_before {
        assert!(
            started.elapsed() < CATCH_UP,
            "no rogue was refused while producing"
        );
        let r = client
            .produce("secured", Some(0), &[message(b"not for rogues")])
            .unwrap();
        assert!(
            matches!(
                r.status,
                Status::SlaveNotAvailable | Status::FlushSlaveTimeout
            ),
            "a produce with only rogue slaves was answered {}",
            r.status
        );
    }
    assert!(master.log().contains("does not match") || master.log().contains("without it"));
    assert!(
        !master.log().contains("0123456789abcdef"),
        "the secret was logged"
    );
    // The slave with the secret replicates and releases producers.
    let good = slave(dirs[3].path(), &master, &auth_config(&secret));
    wait_until(CATCH_UP, "the slave with the secret to catch up", || {
        let s = status(&master)?;
        let shard = &s.shards[0];
        shard
            .slaves
            .iter()
            .any(|l| l.acked_offset == shard.max_offset)
            .then_some(())
    });
    let r = wait_until(CATCH_UP, "an OK with the good slave", || {
        let r = client
            .produce("secured", Some(0), &[message(b"replicated")])
            .ok()?;
        (r.status == Status::Ok).then_some(r)
    });
    let on_slave = wait_until(CATCH_UP, "the message on the good slave", || {
        let pulled = good
            .client()
            .pull("secured", 0, r.response.base_offset, 1, 1 << 20, 0)
            .ok()?;
        pulled.messages.into_iter().next()
    });
    assert_eq!(on_slave.body, b"replicated");
    // The master's status lists the good slave only.
    let s = status(&master).unwrap();
    assert_eq!(s.shards[0].slaves.len(), 1, "{:?}", s.shards[0].slaves);
    assert_got_nothing(&open_rogue);
    assert_got_nothing(&wrong_rogue);
}

/// A master without the secret cannot feed a slave that requires it.
#[test]
fn a_slave_with_the_secret_refuses_a_master_without_it() {
    let root = temp_store();
    let secret = secret_file(root.path(), "ha.secret", &[b's'; 32]);
    let (master_dir, slave_dir) = (temp_store(), temp_store());
    let master = Broker::start_with_config(
        master_dir.path(),
        HA_CONFIG,
        &["--role", "ASYNC_MASTER", "--shards", "1"],
    );
    master.client().create_topic("open", 1).unwrap();
    let r = master
        .client()
        .produce("open", Some(0), &[message(b"unauthenticated")])
        .unwrap();
    assert_eq!(r.status, Status::Ok);
    let strict = slave(slave_dir.path(), &master, &auth_config(&secret));
    wait_until(CATCH_UP, "the slave to refuse the master", || {
        strict
            .log()
            .contains("the master did not authenticate itself")
            .then_some(())
    });
    assert_got_nothing(&strict);
}

/// A master with another secret cannot feed a slave either: the slave checks the master's
/// proof before it proves itself, refuses it, and counts it.
#[test]
fn a_slave_refuses_a_master_with_another_secret() {
    use ringmq::protocol::message::StatsRequest;
    let root = temp_store();
    let secret = secret_file(root.path(), "ha.secret", &[b's'; 32]);
    let wrong = secret_file(root.path(), "wrong.secret", &[b'w'; 32]);
    let (master_dir, slave_dir) = (temp_store(), temp_store());
    let master = Broker::start_with_config(
        master_dir.path(),
        &auth_config(&wrong),
        &["--role", "ASYNC_MASTER", "--shards", "1"],
    );
    master.client().create_topic("other", 1).unwrap();
    let r = master
        .client()
        .produce("other", Some(0), &[message(b"from the wrong master")])
        .unwrap();
    assert_eq!(r.status, Status::Ok);
    let strict = slave(slave_dir.path(), &master, &auth_config(&secret));
    wait_until(CATCH_UP, "the slave to refuse the master's proof", || {
        strict
            .log()
            .contains("the master's proof does not match")
            .then_some(())
    });
    let stats = strict.client().call(&StatsRequest {}).unwrap();
    assert!(stats.counters["replication_handshakes_refused_total"] >= 1);
    assert_got_nothing(&strict);
}

/// `ha_security = "tls"` without its certificate files: the broker refuses to start, naming
/// the missing key.
#[test]
fn ha_security_tls_is_refused_at_load() {
    let root = temp_store();
    let config = root.path().join("tls.toml");
    std::fs::write(&config, "ha_security = \"tls\"\n").unwrap();
    let store = root.path().join("data");
    let out = common::run_binary(
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
        ],
        b"",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ha_tls_cert_file"), "{stderr}");
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn forged_and_replayed_registrations_are_refused() {
    let root = temp_store();
    let secret_bytes = [b'n'; 48];
    let secret_path = secret_file(root.path(), "namesrv.secret", &secret_bytes);
    let namesrv = NameServer::start_with(10_000, &["--secret-file", secret_path.to_str().unwrap()]);
    let dir = temp_store();
    let config = format!(
        "namesrv = [\"{}\"]\nnamesrv_heartbeat_interval_ms = 200\nnamesrv_secret_file = \"{}\"\n",
        namesrv.addr,
        secret_path.display()
    );
    let master = Broker::start_with_config(
        dir.path(),
        &config,
        &["--role", "ASYNC_MASTER", "--shards", "1"],
    );
    let real = wait_until(CATCH_UP, "the signed master in the routes", || {
        namesrv
            .routes()
            .brokers
            .into_iter()
            .find(|b| b.is_master() && b.broker.listen == master.addr)
    });
    assert!(
        real.broker.signature.is_empty(),
        "routes hand out signatures"
    );
    let mut client = namesrv.client();
    // Right format, higher epoch, another address: unsigned, then signed with another secret.
    let forged = BrokerRegister {
        broker_id: real.broker.broker_id + 1,
        epoch: real.broker.epoch + (10 << 16),
        listen: "127.0.0.1:1".into(),
        sequence: u64::MAX - 1,
        ..real.broker.clone()
    };
    let refused = client.register(&forged).unwrap_err();
    assert_eq!(
        refused.status(),
        Some(Status::NotAuthenticated),
        "{refused}"
    );
    let mut wrongly_signed = forged.clone();
    let other = Secret::from_file_contents(vec![b'x'; 48]).unwrap();
    sign_register(&other, &mut wrongly_signed, wall_ms());
    let refused = client.register(&wrongly_signed).unwrap_err();
    assert_eq!(
        refused.status(),
        Some(Status::NotAuthenticated),
        "{refused}"
    );
    // A valid registration, sent twice: the second is a replay. (A slave of another id, so
    // the accepted first one moves no master.)
    let secret = Secret::from_file_contents(secret_bytes.to_vec()).unwrap();
    let mut valid = BrokerRegister {
        broker_id: real.broker.broker_id + 2,
        role: "SLAVE".into(),
        listen: "127.0.0.1:2".into(),
        sequence: 7,
        ..real.broker.clone()
    };
    sign_register(&secret, &mut valid, wall_ms());
    client.register(&valid).expect("a valid registration");
    let replayed = client.register(&valid).unwrap_err();
    assert_eq!(replayed.status(), Some(Status::ReplayRefused), "{replayed}");
    // Signed with the secret, but two minutes ago.
    let mut stale = BrokerRegister {
        sequence: 8,
        ..valid.clone()
    };
    sign_register(&secret, &mut stale, wall_ms() - 120_000);
    let refused = client.register(&stale).unwrap_err();
    assert_eq!(refused.status(), Some(Status::ReplayRefused), "{refused}");
    // The real master still holds the route, and its own later heartbeats are taken.
    let routes = wait_until(CATCH_UP, "a later heartbeat of the real master", || {
        let routes = namesrv.routes();
        routes
            .brokers
            .iter()
            .any(|b| b.broker.listen == master.addr && b.broker.sequence > real.broker.sequence)
            .then_some(routes)
    });
    let masters: Vec<_> = routes.brokers.iter().filter(|b| b.is_master()).collect();
    assert_eq!(masters.len(), 1, "{masters:?}");
    assert_eq!(masters[0].broker.listen, master.addr);
    // The client's unsigned unregistration is refused; the signed one takes the slave out.
    let (cluster, group) = (&valid.cluster_name, &valid.broker_name);
    let refused = client
        .unregister(cluster, group, valid.broker_id)
        .unwrap_err();
    assert_eq!(
        refused.status(),
        Some(Status::NotAuthenticated),
        "{refused}"
    );
    client
        .unregister_signed(cluster, group, valid.broker_id, 9, &secret)
        .expect("a signed unregistration");
    assert!(!namesrv
        .routes()
        .brokers
        .iter()
        .any(|b| b.broker.broker_id == valid.broker_id));
}

/// A broker without the secret is not listed by a name server that requires it.
#[test]
fn an_unsigned_broker_is_not_listed_by_a_name_server_with_a_secret() {
    let root = temp_store();
    let secret_path = secret_file(root.path(), "namesrv.secret", &[b'n'; 32]);
    let namesrv = NameServer::start_with(10_000, &["--secret-file", secret_path.to_str().unwrap()]);
    let dir = temp_store();
    let config = format!(
        "namesrv = [\"{}\"]\nnamesrv_heartbeat_interval_ms = 200\n",
        namesrv.addr
    );
    let broker = Broker::start_with_config(dir.path(), &config, &["--shards", "1"]);
    wait_until(CATCH_UP, "the broker to log the refusal", || {
        broker.log().contains("NOT_AUTHENTICATED").then_some(())
    });
    assert!(namesrv.routes().brokers.is_empty());
}

/// A hand-made slave on the master's HA port: reads the challenge, answers it with something
/// other than the slave's proof, and returns the master's answer (after the length prefix) and
/// whatever the master sent after it before closing.
fn answer_challenge_with(
    master: &Broker,
    answer: impl FnOnce(&[u8]) -> Vec<u8>,
) -> (Vec<u8>, Vec<u8>) {
    use ringmq::replication::protocol::{encode_proof, Answer, Hello, LinkSecurity, PROOF_BYTES};
    use std::io::{Read, Write};
    let mut link = std::net::TcpStream::connect(&master.ha).unwrap();
    link.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut hello = Vec::new();
    Hello {
        version: ringmq::replication::protocol::HA_VERSION,
        shard: 0,
        shard_count: 1,
        segment_size_bytes: 1 << 20,
        log_id: [0; 16],
        last_epoch: 0,
        max_offset: 0,
        broker_name: "broker-a".into(),
        security: LinkSecurity::Auth,
        nonce: [0x42; 32],
        controller_broker_id: 0,
    }
    .encode(&mut hello);
    link.write_all(&hello).unwrap();
    let read_message = |link: &mut std::net::TcpStream| {
        let mut len = [0u8; 4];
        link.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
        link.read_exact(&mut body).unwrap();
        body
    };
    let challenge = read_message(&mut link);
    assert!(matches!(
        Answer::decode(&challenge),
        Ok(Answer::Challenge(..))
    ));
    let proof = answer(&challenge[challenge.len() - PROOF_BYTES..]);
    let mut out = Vec::new();
    if proof.len() == PROOF_BYTES {
        encode_proof(&proof.try_into().unwrap(), &mut out);
    } else {
        out.extend_from_slice(&(proof.len() as u32).to_le_bytes());
        out.extend_from_slice(&proof);
    }
    link.write_all(&out).unwrap();
    let refusal = read_message(&mut link);
    let mut rest = Vec::new();
    let _ = link.read_to_end(&mut rest);
    (refusal, rest)
}

/// What a hand-made slave answers a challenge with, given the master's proof.
type ProofAnswer = fn(&[u8]) -> Vec<u8>;

/// The master's own proof sent back, a zero proof and a truncated one are each refused with a
/// reason, followed by nothing (no log byte), and counted.
#[test]
fn a_reflected_or_garbage_proof_is_refused_by_the_master() {
    use ringmq::protocol::message::StatsRequest;
    use ringmq::replication::protocol::Welcome;
    use ringmq::replication::ReplicationError;
    let root = temp_store();
    let secret = secret_file(root.path(), "ha.secret", &[b'r'; 32]);
    let dir = temp_store();
    let master = Broker::start_with_config(
        dir.path(),
        &auth_config(&secret),
        &["--role", "SYNC_MASTER", "--shards", "1"],
    );
    let mut client = master.client();
    client.create_topic("kept", 1).unwrap();
    client
        .produce("kept", Some(0), &[message(b"secret records")])
        .unwrap();
    let answers: [ProofAnswer; 3] = [
        |masters_proof| masters_proof.to_vec(),
        |_| vec![0; 32],
        |masters_proof| masters_proof[..16].to_vec(),
    ];
    for answer in answers {
        let (refusal, rest) = answer_challenge_with(&master, answer);
        match Welcome::decode(&refusal) {
            Err(ReplicationError::Refused(reason)) => {
                assert!(reason.contains("authentication failed"), "{reason}")
            }
            other => panic!("a bad proof was not refused: {other:?}"),
        }
        assert!(rest.is_empty(), "{} bytes followed a refusal", rest.len());
    }
    let stats = client.call(&StatsRequest {}).unwrap();
    assert!(stats.counters["replication_handshakes_refused_total"] >= 3);
    assert!(status(&master).unwrap().shards[0].slaves.is_empty());
}

/// Reads one length-prefixed handshake message; returns it with its prefix.
fn read_framed(link: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    let mut len = [0u8; 4];
    link.read_exact(&mut len).unwrap();
    let mut framed = len.to_vec();
    framed.resize(4 + u32::from_le_bytes(len) as usize, 0);
    link.read_exact(&mut framed[4..]).unwrap();
    framed
}

/// A fake master that reflects a slave's own hello to the slave's HA port gets no challenge
/// (so no master proof the slave's link would accept): the slave refuses it, and counts it.
#[test]
fn a_slave_refuses_its_own_hello_reflected_to_its_ha_port() {
    use ringmq::protocol::message::StatsRequest;
    use ringmq::replication::protocol::Welcome;
    use ringmq::replication::ReplicationError;
    use std::io::Write;
    let root = temp_store();
    let secret = secret_file(root.path(), "ha.secret", &[b'm'; 32]);
    let fake_master = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_addr = fake_master.local_addr().unwrap().to_string();
    let dir = temp_store();
    let victim = Broker::start_with_config(
        dir.path(),
        &auth_config(&secret),
        &["--role", "SLAVE", "--shards", "1", "--master", &fake_addr],
    );
    let (mut from_victim, _) = fake_master.accept().unwrap();
    from_victim
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let hello = read_framed(&mut from_victim);
    // The victim's handshake is still waiting on this connection: forward its hello to its
    // own HA port, as an attacker would to obtain the master's proof over it.
    let mut to_victim = std::net::TcpStream::connect(&victim.ha).unwrap();
    to_victim
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    to_victim.write_all(&hello).unwrap();
    let answer = read_framed(&mut to_victim);
    match Welcome::decode(&answer[4..]) {
        Err(ReplicationError::Refused(reason)) => assert!(
            reason.contains("reflected") || reason.contains("not a master"),
            "{reason}"
        ),
        other => panic!("the slave answered its own reflected hello with {other:?}"),
    }
    let stats = victim.client().call(&StatsRequest {}).unwrap();
    assert!(stats.counters["replication_handshakes_refused_total"] >= 1);
    assert_got_nothing(&victim);
}

/// Connections that never finish their handshake hold at most a few slots of a shard: the
/// next one is closed at once (while the silent ones still wait out their deadline), and
/// counted.
#[test]
fn silent_handshakes_beyond_the_cap_are_closed_at_once() {
    use ringmq::protocol::message::StatsRequest;
    use std::io::Read;
    let root = temp_store();
    let secret = secret_file(root.path(), "ha.secret", &[b'c'; 32]);
    let dir = temp_store();
    // A long link timeout: the silent connections stay pending for the whole test.
    let config = format!(
        "ha_link_timeout_ms = 30000\nha_security = \"auth\"\nha_secret_file = \"{}\"\n",
        secret.display()
    );
    let master = Broker::start_with_config(
        dir.path(),
        &config,
        &["--role", "SYNC_MASTER", "--shards", "1"],
    );
    let mut client = master.client();
    let refused = |client: &mut Client| {
        client.call(&StatsRequest {}).unwrap().counters["replication_handshakes_refused_total"]
    };
    let before = refused(&mut client);
    let silent: Vec<std::net::TcpStream> = (0..8)
        .map(|_| std::net::TcpStream::connect(&master.ha).unwrap())
        .collect();
    // The master takes connections in order; once the ninth is closed the eight are pending.
    let mut extra = std::net::TcpStream::connect(&master.ha).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut rest = Vec::new();
    let read = extra.read_to_end(&mut rest);
    assert!(
        matches!(read, Ok(0)),
        "a handshake past the cap was not closed: {read:?}"
    );
    for mut link in &silent {
        link.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        assert!(
            matches!(link.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a pending handshake was closed before its deadline"
        );
    }
    assert!(refused(&mut client) > before);
    drop(silent);
}

/// An attacker relaying a real slave's handshake to the master (so both proofs pass) and then
/// rewriting the slave's offset reports cannot move the acknowledged offset: every report is
/// tagged under the session key, and the master closes the link on the first forged one.
#[test]
fn a_relay_cannot_forge_reports_after_the_handshake() {
    use ringmq::replication::protocol::PROOF_BYTES;
    use std::io::{Read, Write};
    let root = temp_store();
    let secret = secret_file(root.path(), "ha.secret", &[b'p'; 32]);
    let (master_dir, slave_dir) = (temp_store(), temp_store());
    let master = Broker::start_with_config(
        master_dir.path(),
        &auth_config(&secret),
        &["--role", "SYNC_MASTER", "--shards", "1"],
    );
    let mut client = master.client();
    client.create_topic("relayed", 1).unwrap();
    let r = client
        .produce("relayed", Some(0), &[message(b"not on the slave")])
        .unwrap();
    assert_ne!(r.status, Status::Ok, "no slave yet");
    let master_max = status(&master).unwrap().shards[0].max_offset;
    assert!(master_max > 0);
    let relay = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_addr = relay.local_addr().unwrap().to_string();
    let _slave = Broker::start_with_config(
        slave_dir.path(),
        &auth_config(&secret),
        &["--role", "SLAVE", "--shards", "1", "--master", &relay_addr],
    );
    let (mut from_slave, _) = relay.accept().unwrap();
    let mut to_master = std::net::TcpStream::connect(&master.ha).unwrap();
    for link in [&from_slave, &to_master] {
        link.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
    }
    // The handshake goes through untouched: hello, challenge, proof, welcome and its tag.
    to_master.write_all(&read_framed(&mut from_slave)).unwrap();
    from_slave.write_all(&read_framed(&mut to_master)).unwrap();
    to_master.write_all(&read_framed(&mut from_slave)).unwrap();
    let mut welcome = read_framed(&mut to_master);
    let mut tag = [0u8; PROOF_BYTES];
    to_master.read_exact(&mut tag).unwrap();
    welcome.extend_from_slice(&tag);
    from_slave.write_all(&welcome).unwrap();
    // No log byte reaches the slave; its first report (offset 0) is rewritten to claim the
    // master's whole log, keeping the slave's tag.
    let mut report = [0u8; 8 + PROOF_BYTES];
    from_slave.read_exact(&mut report).unwrap();
    report[..8].copy_from_slice(&master_max.to_le_bytes());
    to_master.write_all(&report).unwrap();
    wait_until(CATCH_UP, "the master to refuse the forged report", || {
        master.log().contains("carries a wrong tag").then_some(())
    });
    let s = status(&master).unwrap();
    assert!(
        s.shards[0]
            .slaves
            .iter()
            .all(|l| l.acked_offset < master_max),
        "a forged report was acknowledged: {:?}",
        s.shards[0].slaves
    );
    let r = client
        .produce("relayed", Some(0), &[message(b"still not acknowledged")])
        .unwrap();
    assert_ne!(r.status, Status::Ok);
}
