//! The name server as a real process (`ringmq namesrv` on loopback, port 0): brokers register
//! through the client library (fake ones: the name server only sees their registrations),
//! routes list them, a silent one expires, a stale master's claim is refused, `cluster list`
//! prints them, a malformed frame closes only its own connection, a restart forgets
//! everything, the connection limit answers `SYSTEM_BUSY`, and a client whose name server is
//! killed carries on with the other. Waits are on events (the ready line, answers) or polls with a deadline.

mod common;

use common::NameServer;
use ringmq::client::namesrv::NameServerClient;
use ringmq::protocol::frame::{encode_frame, FrameDecoder, FrameHeader, FRAME_HEADER_BYTES};
use ringmq::protocol::namesrv::{BrokerRegister, RouteQuery, Routes};
use ringmq::protocol::{Opcode, Status};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

/// Short, so the expiry test waits little; long enough that a heartbeat every 200 ms on a
/// loaded machine never misses it.
const EXPIRY_MS: u64 = 1500;

fn registration(group: &str, id: u64, role: &str, epoch: u32) -> BrokerRegister {
    BrokerRegister {
        cluster_name: "prod".into(),
        broker_name: group.into(),
        broker_id: id,
        role: role.into(),
        epoch,
        flush_disk_type: "SYNC_FLUSH".into(),
        listen: format!("127.0.0.1:{}", 11000 + id),
        ha_listen: format!("127.0.0.1:{}", 12000 + id),
        shard_ports: vec![11000 + id as u16],
        topics: vec![ringmq::protocol::message::TopicInfo {
            name: "orders".into(),
            topic_id: 1,
            queue_shards: vec![0, 0],
        }],
        shards: vec![],
        sequence: 0,
        signed_at_ms: 0,
        signature: vec![],
    }
}

/// (group, broker id, role, epoch) of every listed broker.
fn listed(routes: &Routes) -> Vec<(String, u64, String, u32)> {
    routes
        .brokers
        .iter()
        .map(|b| {
            let b = &b.broker;
            (b.broker_name.clone(), b.broker_id, b.role.clone(), b.epoch)
        })
        .collect()
}

fn row(group: &str, id: u64, role: &str, epoch: u32) -> (String, u64, String, u32) {
    (group.to_string(), id, role.to_string(), epoch)
}

#[test]
fn registers_lists_refuses_stale_masters_expires_and_forgets_on_restart() {
    let mut server = NameServer::start(EXPIRY_MS);
    let mut ns = server.client();
    for r in [
        registration("a", 1, "SYNC_MASTER", 1),
        registration("a", 2, "SLAVE", 1),
        registration("b", 3, "ASYNC_MASTER", 1),
    ] {
        let result = ns.register(&r).expect("register");
        assert!(result.is_accepted(), "{result:?}");
        assert_eq!(result.expiry_ms as u64, EXPIRY_MS);
    }
    let routes = ns.routes("").expect("routes");
    assert_eq!(
        listed(&routes),
        vec![
            row("a", 1, "SYNC_MASTER", 1),
            row("a", 2, "SLAVE", 1),
            row("b", 3, "ASYNC_MASTER", 1),
        ]
    );
    assert_eq!(
        routes.brokers[0].broker,
        registration("a", 1, "SYNC_MASTER", 1)
    );
    assert!(ns.routes("other-cluster").unwrap().brokers.is_empty());

    // Broker 2 is promoted with a higher epoch; the old master's next heartbeat (still
    // claiming master at epoch 1) is refused and told who the master is.
    let broker_2_last_sent = Instant::now();
    assert!(ns
        .register(&registration("a", 2, "SYNC_MASTER", 2))
        .unwrap()
        .is_accepted());
    let stale = ns
        .register(&registration("a", 1, "SYNC_MASTER", 1))
        .unwrap();
    assert!(!stale.is_accepted());
    assert_eq!(stale.master_listen, "127.0.0.1:11002");
    assert_eq!((stale.master_broker_id, stale.master_epoch), (2, 2));
    // Another broker claiming the same epoch is refused too.
    assert!(!ns
        .register(&registration("a", 9, "ASYNC_MASTER", 2))
        .unwrap()
        .is_accepted());
    assert_eq!(
        listed(&ns.routes("prod").unwrap()),
        vec![
            row("a", 2, "SYNC_MASTER", 2),
            row("b", 3, "ASYNC_MASTER", 1)
        ]
    );

    // A bad registration is answered BAD_REQUEST and the connection keeps serving.
    let err = ns.register(&registration("a", 0, "SLAVE", 1)).unwrap_err();
    assert_eq!(err.status(), Some(Status::BadRequest), "{err}");
    assert_eq!(ns.routes("").unwrap().brokers.len(), 2);

    // `cluster list` prints the grouped listing.
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["cluster", "list", "--format", "json", "--namesrv"])
        // The first address refuses connections: the next one is asked.
        .arg(format!("{},{}", dead_addr(), server.addr))
        .output()
        .expect("run cluster list");
    assert!(output.status.success(), "{output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    let clusters = json["clusters"].as_array().expect("clusters");
    assert_eq!(clusters.len(), 1);
    assert_eq!(clusters[0]["name"], "prod");
    let groups = clusters[0]["groups"].as_array().expect("groups");
    let names: Vec<&str> = groups.iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b"]);
    let master = &groups[0]["brokers"][0];
    let keys: Vec<&str> = master
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = [
        "broker_id",
        "epoch",
        "ha_listen",
        "last_heartbeat_ms_ago",
        "listen",
        "role",
    ];
    expected.sort();
    assert_eq!(keys, expected);
    assert_eq!(master["broker_id"], 2);
    assert_eq!(master["role"], "SYNC_MASTER");
    assert_eq!(master["epoch"], 2);
    assert_eq!(master["listen"], "127.0.0.1:11002");
    assert_eq!(master["ha_listen"], "127.0.0.1:12002");
    assert!(master["last_heartbeat_ms_ago"].as_u64().unwrap() < EXPIRY_MS);
    let text = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["cluster", "list", "--namesrv", &server.addr])
        .output()
        .expect("run cluster list");
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.starts_with("CLUSTER"), "{text}");
    assert!(
        text.contains("ASYNC_MASTER") && text.contains("127.0.0.1:11003"),
        "{text}"
    );

    // Unregister drops at once.
    ns.unregister("prod", "b", 3).unwrap();
    assert_eq!(
        listed(&ns.routes("").unwrap()),
        vec![row("a", 2, "SYNC_MASTER", 2)]
    );

    // Expiry: broker 4 heartbeats every 200 ms, broker 2 stays silent (since its promotion)
    // and leaves the routes within the expiry (polled with a deadline, not slept for).
    let deadline = Instant::now() + Duration::from_millis(EXPIRY_MS) + Duration::from_secs(10);
    loop {
        ns.register(&registration("c", 4, "SLAVE", 0)).unwrap();
        let now = listed(&ns.routes("").unwrap());
        if now == vec![row("c", 4, "SLAVE", 0)] {
            break;
        }
        assert!(Instant::now() < deadline, "broker 2 never expired: {now:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Its registration arrived after `broker_2_last_sent`: it cannot have expired sooner.
    // And it left within the expiry: the bound allows 3 s for this poll's 200 ms steps and a
    // loaded machine, far less than a missed expiry would take (never).
    let gone_after = broker_2_last_sent.elapsed();
    assert!(
        gone_after >= Duration::from_millis(EXPIRY_MS),
        "dropped {gone_after:?} after it was last sent, before its expiry"
    );
    assert!(
        gone_after < Duration::from_millis(EXPIRY_MS) + Duration::from_secs(3),
        "still listed {gone_after:?} after it was last sent (expiry {EXPIRY_MS} ms)"
    );

    // SIGTERM stops it cleanly; restarted, it knows nothing until brokers register again.
    server.terminate();
    let err = ns.routes("").unwrap_err();
    assert!(err.status().is_none(), "no server to answer: {err}");
    let server = NameServer::start(EXPIRY_MS);
    let mut ns = server.client();
    assert!(ns.routes("").unwrap().brokers.is_empty());
    // And with its memory gone, it takes the stale epoch again (documented in cluster.md).
    assert!(ns
        .register(&registration("a", 1, "SYNC_MASTER", 1))
        .unwrap()
        .is_accepted());
}

/// An address nothing listens on.
fn dead_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn frame(opcode: u16, request_id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let header = FrameHeader {
        opcode,
        ..FrameHeader::request(Opcode::Ping, request_id)
    };
    encode_frame(&mut out, header, body);
    out
}

/// One answer frame: (opcode, status, request id, body).
type Answer = (u16, u16, u64, Vec<u8>);

/// Reads answers until `count` arrived (false) or the server closed (true).
fn answers(stream: &mut TcpStream, count: usize) -> (Vec<Answer>, bool) {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let decoder = FrameDecoder::new(64 << 20);
    let (mut buf, mut out) = (Vec::new(), Vec::new());
    let mut chunk = [0u8; 65536];
    loop {
        while let Some(frame) = decoder.decode(&buf).expect("valid answer frames") {
            let h = frame.header;
            out.push((h.opcode, h.status, h.request_id, frame.body.to_vec()));
            let used = frame.wire_len();
            buf.drain(..used);
            if out.len() == count {
                return (out, false);
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => return (out, true),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
            Err(e) => panic!("reading answers: {e}"),
        }
    }
}

/// After `answers` returned `count` frames: whether the server then closes the connection.
fn closes(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(0) | Err(_))
}

#[test]
fn pipelined_requests_are_answered_and_a_bad_frame_closes_only_its_connection() {
    let server = NameServer::start(60_000);
    let mut ns = server.client();
    ns.register(&registration("a", 1, "SYNC_MASTER", 1))
        .unwrap();

    // Pipelined: 50 route queries and pings written at once, each answered by id.
    let mut raw = TcpStream::connect(&server.addr).unwrap();
    let mut burst = Vec::new();
    let mut query = Vec::new();
    RouteQuery {
        cluster_name: String::new(),
    }
    .encode(&mut query);
    for id in 1..=50u64 {
        if id % 2 == 0 {
            burst.extend(frame(Opcode::RouteQuery as u16, id, &query));
        } else {
            burst.extend(frame(Opcode::Ping as u16, id, &[]));
        }
    }
    raw.write_all(&burst).unwrap();
    let (got, closed) = answers(&mut raw, 50);
    assert!(!closed);
    let ids: Vec<u64> = got.iter().map(|a| a.2).collect();
    assert_eq!(ids, (1..=50).collect::<Vec<_>>());
    for (opcode, status, id, body) in &got {
        assert_eq!(*status, Status::Ok as u16);
        if id % 2 == 0 {
            assert_eq!(*opcode, Opcode::RouteQuery as u16);
            assert_eq!(Routes::decode(body).unwrap().brokers.len(), 1);
        }
    }

    // A body that does not decode: BAD_REQUEST, and the connection stays usable.
    raw.write_all(&frame(Opcode::BrokerRegister as u16, 51, &[1, 2, 3]))
        .unwrap();
    raw.write_all(&frame(Opcode::Ping as u16, 52, &[])).unwrap();
    let (got, _) = answers(&mut raw, 2);
    assert_eq!((got[0].1, got[0].2), (Status::BadRequest as u16, 51));
    assert_eq!((got[1].1, got[1].2), (Status::Ok as u16, 52));

    // A broker opcode: UNKNOWN_OPCODE, then that connection closes.
    let mut other = TcpStream::connect(&server.addr).unwrap();
    other
        .write_all(&frame(Opcode::TopicList as u16, 7, &[]))
        .unwrap();
    let (got, _) = answers(&mut other, 1);
    assert_eq!((got[0].1, got[0].2), (Status::UnknownOpcode as u16, 7));
    assert!(String::from_utf8_lossy(&got[0].3).contains("name server"));
    assert!(closes(&mut other));

    // Bad magic: BAD_MAGIC with request id 0, then closed.
    let mut bad = TcpStream::connect(&server.addr).unwrap();
    let mut garbage = frame(Opcode::Ping as u16, 9, &[]);
    garbage[4] ^= 0xff;
    bad.write_all(&garbage).unwrap();
    let (got, _) = answers(&mut bad, 1);
    assert_eq!((got[0].1, got[0].2), (Status::BadMagic as u16, 0));
    assert!(closes(&mut bad));

    // A corrupted body crc: BAD_CRC with the frame's id, then closed.
    let mut corrupt = TcpStream::connect(&server.addr).unwrap();
    let mut flipped = frame(Opcode::RouteQuery as u16, 11, &query);
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    corrupt.write_all(&flipped).unwrap();
    let (got, _) = answers(&mut corrupt, 1);
    assert_eq!((got[0].1, got[0].2), (Status::BadCrc as u16, 11));
    assert!(closes(&mut corrupt));

    // An oversized frame is refused from its header alone.
    let mut big = TcpStream::connect(&server.addr).unwrap();
    let mut header = frame(Opcode::BrokerRegister as u16, 12, &[]);
    header[0..4].copy_from_slice(&(1u32 << 30).to_le_bytes());
    big.write_all(&header[..FRAME_HEADER_BYTES]).unwrap();
    let (got, _) = answers(&mut big, 1);
    assert_eq!((got[0].1, got[0].2), (Status::FrameTooLarge as u16, 12));
    assert!(closes(&mut big));

    // A registration larger than a connection's base read buffer (64 KiB), then pipelined
    // queries whose answers together exceed the server's write batch.
    let mut large = registration("big", 2, "SLAVE", 1);
    large.topics = (0..1000)
        .map(|t| ringmq::protocol::message::TopicInfo {
            name: format!("topic-{t:04}"),
            topic_id: t,
            queue_shards: vec![0; 100],
        })
        .collect();
    assert!(ns.register(&large).unwrap().is_accepted());
    let mut burst = Vec::new();
    for id in 100..120u64 {
        burst.extend(frame(Opcode::RouteQuery as u16, id, &query));
    }
    raw.write_all(&burst).unwrap();
    let (got, _) = answers(&mut raw, 20);
    for (i, (_, status, id, body)) in got.iter().enumerate() {
        assert_eq!((*status, *id), (Status::Ok as u16, 100 + i as u64));
        let routes = Routes::decode(body).unwrap();
        assert_eq!(routes.brokers.len(), 2);
        assert_eq!(routes.brokers[1].broker, large);
    }

    // Everyone else is still served: the first raw connection and the client.
    raw.write_all(&frame(Opcode::Ping as u16, 53, &[])).unwrap();
    let (got, _) = answers(&mut raw, 1);
    assert_eq!((got[0].1, got[0].2), (Status::Ok as u16, 53));
    match ns.routes("") {
        Ok(routes) => assert_eq!(routes.brokers.len(), 2),
        Err(e) => panic!("the client's connection broke: {e}"),
    }
}

/// A broker shares the protocol's table but is no name server: pointed at one, the name-server
/// client gets a `BAD_REQUEST` that says so, and the broker keeps serving the connection.
#[test]
fn a_broker_refuses_name_server_requests_with_a_clear_message() {
    let root = common::temp_store();
    let broker = common::Broker::start(root.path(), &["--shards", "1"]);
    let mut ns = NameServerClient::connect_list(&broker.addr).expect("connect to the broker");
    for err in [
        ns.routes("").unwrap_err(),
        ns.register(&registration("a", 1, "SYNC_MASTER", 1))
            .unwrap_err(),
        ns.unregister("prod", "a", 1).unwrap_err(),
    ] {
        assert_eq!(err.status(), Some(Status::BadRequest), "{err}");
        assert!(err.to_string().contains("name-server request"), "{err}");
    }
}

/// A connection over `--max-connections` is answered `SYSTEM_BUSY` (request id 0) and closed,
/// a client that has another name server moves on to it, and a connection is admitted again
/// once one closes. An idle connection is closed after `--idle-timeout-ms`.
#[test]
fn the_connection_limit_answers_system_busy_and_clients_move_on() {
    let limited = NameServer::start_with(60_000, &["--max-connections", "2"]);
    let other = NameServer::start(60_000);
    let mut held = Vec::new();
    for n in 0..2u64 {
        let mut stream = TcpStream::connect(&limited.addr).unwrap();
        stream
            .write_all(&frame(Opcode::Ping as u16, n + 1, &[]))
            .unwrap();
        let (got, _) = answers(&mut stream, 1);
        assert_eq!(got[0].1, Status::Ok as u16, "connection {n} is served");
        held.push(stream);
    }
    let mut third = TcpStream::connect(&limited.addr).unwrap();
    let (got, closed) = answers(&mut third, 1);
    assert_eq!((got[0].1, got[0].2), (Status::SystemBusy as u16, 0));
    let message = String::from_utf8_lossy(&got[0].3);
    assert!(message.contains("at most 2 connections"), "{message}");
    assert!(
        closed || closes(&mut third),
        "the refused connection is closed"
    );

    // A client whose first name server is full asks the next one.
    other
        .client()
        .register(&registration("a", 1, "SYNC_MASTER", 1))
        .unwrap();
    let mut ns = NameServerClient::connect_list(&format!("{},{}", limited.addr, other.addr))
        .expect("connects (the refusal comes after the connect)");
    assert_eq!(ns.routes("").unwrap().brokers.len(), 1);
    assert_eq!(ns.current_addr(), other.addr);

    // One held connection closes: there is room again (polled: the server notices the close
    // asynchronously).
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut stream = TcpStream::connect(&limited.addr).unwrap();
        stream
            .write_all(&frame(Opcode::Ping as u16, 7, &[]))
            .unwrap();
        let (got, _) = answers(&mut stream, 1);
        if got.first().is_some_and(|a| a.1 == Status::Ok as u16) {
            break;
        }
        assert!(Instant::now() < deadline, "no room after a close: {got:?}");
        std::thread::sleep(Duration::from_millis(50));
    }

    let idle = NameServer::start_with(60_000, &["--idle-timeout-ms", "300"]);
    let mut stream = TcpStream::connect(&idle.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("an idle connection is closed, not {other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed after {:?}, before the idle timeout",
        started.elapsed()
    );
}

/// Two name servers, a broker registered with both, a client asking them: SIGKILL the one the
/// client is talking to, mid-session, and its next requests are answered by the other with
/// the same routes, without an error reaching the caller.
#[test]
fn killing_the_clients_name_server_goes_unnoticed() {
    let mut first = NameServer::start(60_000);
    let second = NameServer::start(60_000);
    let brokers = [
        registration("a", 1, "SYNC_MASTER", 1),
        registration("a", 2, "SLAVE", 1),
    ];
    for server in [&first, &second] {
        let mut ns = server.client();
        for r in &brokers {
            assert!(ns.register(r).unwrap().is_accepted());
        }
    }
    let mut client =
        NameServerClient::connect_list(&format!("{},{}", first.addr, second.addr)).unwrap();
    let before = listed(&client.routes("").unwrap());
    assert_eq!(client.current_addr(), first.addr, "talking to the first");
    first.kill();
    for _ in 0..3 {
        let after = client.routes("").expect("the other name server answers");
        assert_eq!(listed(&after), before);
        assert_eq!(client.current_addr(), second.addr);
    }
}
