//! TLS and mutual TLS on the client and shard ports, against the real binary on loopback:
//! produce and consume over TLS, refused clients (no CA, a certificate from another CA, no
//! certificate under `client_auth = required`), `optional`, a SIGHUP reload to a new CA, the
//! two kinds of port confusion answered within a second, and a handshake flood that an
//! established producer does not notice. Certificates are made here with rcgen.

mod common;

use common::tls::Ca;
use common::{temp_store, wait_until, Broker};
use rcgen::SanType;
use ringmq::client::{Client, ClientError, ClientOptions, ClientTls, ConnectionOptions};
use ringmq::protocol::message::{MessageRef, PullRequest};
use ringmq::protocol::Status;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn tls_config(cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n{extra}",
        cert.display(),
        key.display()
    )
}

fn options(ca: &Path, identity: Option<&(PathBuf, PathBuf)>) -> ClientOptions {
    let identity = identity.map(|(c, k)| (c.as_path(), k.as_path()));
    let tls = ClientTls::from_files(ca, identity)
        .expect("client TLS")
        .leak();
    ClientOptions {
        connection: ConnectionOptions {
            tls: Some(tls),
            connect_timeout: Duration::from_secs(5),
            ..ConnectionOptions::default()
        },
        ..ClientOptions::default()
    }
}

fn message(body: &[u8]) -> MessageRef<'_> {
    MessageRef {
        born_timestamp_ms: 1_700_000_000_000,
        key: b"",
        properties: b"",
        body,
    }
}

/// Produces one message to `topic` queue 0 and reads it back, over `client`.
fn round_trip(client: &mut Client, topic: &str) {
    client
        .create_topic(topic, 2)
        .expect("create topic over TLS");
    let ack = client
        .produce(topic, Some(1), &[message(b"sealed")])
        .expect("produce over TLS");
    assert_eq!(ack.status, Status::Ok);
    let got = client
        .pull(topic, 1, ack.response.base_offset, 10, 1 << 20, 0)
        .expect("pull over TLS");
    assert_eq!(got.messages.len(), 1);
    assert_eq!(got.messages[0].body, b"sealed");
}

fn tls_error(result: Result<Client, ClientError>) -> String {
    match result {
        Err(e @ ClientError::Tls { .. }) => e.to_string(),
        Err(other) => panic!("expected a TLS error, got {other}"),
        Ok(_) => panic!("expected the connection to be refused"),
    }
}

#[test]
fn produce_and_consume_over_tls_and_refuse_a_client_without_the_ca() {
    let dir = temp_store();
    let ca = Ca::new(dir.path(), "ca");
    let other = Ca::new(dir.path(), "other-ca");
    let (cert, key) = ca.server(dir.path(), "broker");
    let broker =
        Broker::start_with_config(dir.path(), &tls_config(&cert, &key, ""), &["--shards", "2"]);
    // The bootstrap port and (shard-aware routing) both shard ports speak TLS.
    let mut client = Client::connect_with(&broker.addr, options(&ca.pem, None)).expect("connect");
    round_trip(&mut client, "sealed");
    let error = tls_error(Client::connect_with(
        &broker.addr,
        options(&other.pem, None),
    ));
    assert!(error.contains("not signed by a CA in --tls-ca"), "{error}");
}

#[test]
fn mutual_tls_required_refuses_other_cas_and_no_certificate() {
    let dir = temp_store();
    let ca = Ca::new(dir.path(), "ca");
    let other = Ca::new(dir.path(), "other-ca");
    let (cert, key) = ca.server(dir.path(), "broker");
    let extra = format!(
        "tls_ca_file = \"{}\"\nclient_auth = \"required\"",
        ca.pem.display()
    );
    let broker = Broker::start_with_config(dir.path(), &tls_config(&cert, &key, &extra), &[]);
    let uri = SanType::URI("spiffe://test/orders".try_into().unwrap());
    let good = ca.issue(dir.path(), "orders", vec![uri.clone()]);
    let mut client =
        Client::connect_with(&broker.addr, options(&ca.pem, Some(&good))).expect("mTLS");
    round_trip(&mut client, "mtls");
    let forged = other.issue(dir.path(), "forged", vec![uri]);
    // With TLS 1.3 the client finishes its side before the broker checks its certificate, so
    // the refusal may come with the first request instead of the handshake.
    let refused = Client::connect_with(&broker.addr, options(&ca.pem, Some(&forged)));
    let error = tls_error(refused);
    assert!(
        error.contains("refused this client's certificate"),
        "{error}"
    );
    let refused = Client::connect_with(&broker.addr, options(&ca.pem, None));
    let error = tls_error(refused);
    assert!(error.contains("requires a client certificate"), "{error}");
}

#[test]
fn mutual_tls_optional_accepts_a_client_without_a_certificate() {
    let dir = temp_store();
    let ca = Ca::new(dir.path(), "ca");
    let (cert, key) = ca.server(dir.path(), "broker");
    let extra = format!(
        "tls_ca_file = \"{}\"\nclient_auth = \"optional\"",
        ca.pem.display()
    );
    let broker = Broker::start_with_config(dir.path(), &tls_config(&cert, &key, &extra), &[]);
    let mut anonymous =
        Client::connect_with(&broker.addr, options(&ca.pem, None)).expect("no cert");
    round_trip(&mut anonymous, "optional");
    let good = ca.issue(
        dir.path(),
        "app",
        vec![SanType::DnsName("app.test".try_into().unwrap())],
    );
    let mut named =
        Client::connect_with(&broker.addr, options(&ca.pem, Some(&good))).expect("cert");
    named
        .create_topic("optional-2", 1)
        .expect("create with a certificate");
}

#[test]
fn sighup_reloads_the_certificate_and_a_bad_file_keeps_the_old_one() {
    let dir = temp_store();
    let old = Ca::new(dir.path(), "old-ca");
    let new = Ca::new(dir.path(), "new-ca");
    let (cert, key) = old.server(dir.path(), "broker");
    let broker = Broker::start_with_config(dir.path(), &tls_config(&cert, &key, ""), &[]);
    Client::connect_with(&broker.addr, options(&old.pem, None)).expect("old CA before reload");
    let (new_cert, new_key) = new.server(dir.path(), "broker-new");
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    broker.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(10), "the reload", || {
        broker
            .log()
            .contains("reloaded the TLS certificates")
            .then_some(())
    });
    Client::connect_with(&broker.addr, options(&new.pem, None)).expect("new CA after reload");
    let error = tls_error(Client::connect_with(&broker.addr, options(&old.pem, None)));
    assert!(error.contains("not signed by a CA in --tls-ca"), "{error}");
    std::fs::write(&key, "not a key").unwrap();
    broker.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(10), "the failed reload", || {
        broker
            .log()
            .contains("keeping the previous ones")
            .then_some(())
    });
    assert!(
        broker.log().contains("tls_key_file"),
        "the error names the key"
    );
    Client::connect_with(&broker.addr, options(&new.pem, None)).expect("kept after a bad reload");
}

#[test]
fn a_plaintext_client_on_a_tls_port_is_told_within_a_second() {
    let dir = temp_store();
    let ca = Ca::new(dir.path(), "ca");
    let (cert, key) = ca.server(dir.path(), "broker");
    let broker = Broker::start_with_config(dir.path(), &tls_config(&cert, &key, ""), &[]);
    let started = Instant::now();
    let error = match Client::connect(&broker.addr) {
        Err(e) => e,
        Ok(_) => panic!("a plaintext client was served on a TLS port"),
    };
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(error.status(), Some(Status::TlsRequired), "{error}");
    assert!(error.to_string().contains("requires TLS"), "{error}");
}

#[test]
fn a_tls_client_on_a_plaintext_port_is_told_within_a_second() {
    let dir = temp_store();
    let ca = Ca::new(dir.path(), "ca");
    let broker = Broker::start(dir.path(), &[]);
    let started = Instant::now();
    let error = tls_error(Client::connect_with(&broker.addr, options(&ca.pem, None)));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(error.contains("does not speak TLS on this port"), "{error}");
}

#[test]
fn the_cli_names_a_missing_ca_file() {
    let dir = temp_store();
    let missing = dir.path().join("nowhere.pem");
    let output = common::run_binary(
        &[
            "topic",
            "list",
            "--broker",
            "127.0.0.1:1",
            "--tls-ca",
            missing.to_str().unwrap(),
        ],
        b"",
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--tls-ca") && stderr.contains("nowhere.pem"),
        "{stderr}"
    );
    let ca = Ca::new(dir.path(), "ca");
    let output = common::run_binary(
        &[
            "topic",
            "list",
            "--broker",
            "127.0.0.1:1",
            "--tls-ca",
            ca.pem.to_str().unwrap(),
            "--tls-cert",
            missing.to_str().unwrap(),
            "--tls-key",
            missing.to_str().unwrap(),
        ],
        b"",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--tls-cert") && stderr.contains("nowhere.pem"),
        "{stderr}"
    );
    let output = common::run_binary(
        &[
            "topic",
            "list",
            "--broker",
            "127.0.0.1:1",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ],
        b"",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("needs TLS; give --tls-ca"), "{stderr}");
}

/// Whether the broker has closed `s` (end of stream or a reset) within `wait`; a read that
/// times out is not a close.
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait.max(Duration::from_millis(1))))
        .unwrap();
    let mut sink = [0u8; 64];
    match s.read(&mut sink) {
        Ok(0) => true,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
        ),
        Ok(n) => panic!("the broker answered {n} bytes to half a ClientHello"),
    }
}

#[test]
fn a_handshake_flood_does_not_stall_an_established_producer() {
    const CAP: usize = 16;
    const OVER: usize = 20;
    const REQUESTS: usize = 300;
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(2_000);
    const MARGIN: Duration = Duration::from_millis(2_000);
    let dir = temp_store();
    let ca = Ca::new(dir.path(), "ca");
    let (cert, key) = ca.server(dir.path(), "broker");
    let extra = format!(
        "tls_max_handshakes_per_shard = {CAP}\ntls_handshake_timeout_ms = {}",
        HANDSHAKE_TIMEOUT.as_millis()
    );
    let broker = Broker::start_with_config(
        dir.path(),
        &tls_config(&cert, &key, &extra),
        &["--shards", "1"],
    );
    let mut producer = Client::connect_with(&broker.addr, options(&ca.pem, None)).expect("connect");
    producer.create_topic("flood", 1).expect("create");
    // Half a ClientHello: a record header promising 512 bytes and a few of them, then silence.
    let half_hello = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let stall = || {
        let mut s = TcpStream::connect(&broker.addr).expect("connect");
        s.write_all(&half_hello).expect("half a hello");
        (s, Instant::now())
    };
    // All places but one held by stalled handshakes: a fresh client still gets through.
    let mut held: Vec<_> = (0..CAP - 1).map(|_| stall()).collect();
    let mut fresh = Client::connect_with(&broker.addr, options(&ca.pem, None))
        .expect("a fresh TLS client during the flood");
    let ack = fresh
        .produce("flood", Some(0), &[message(b"fresh")])
        .expect("produce through the fresh client");
    assert_eq!(ack.status, Status::Ok);
    // Its handshake is over (a request was answered): one place is free again. The first of
    // these takes it, every later one is beyond the bound and closed at once.
    let mut over: Vec<_> = (0..OVER).map(|_| stall()).collect();
    held.push(over.remove(0));
    // A client that comes now finds every place taken, and says the broker is busy.
    let error = tls_error(Client::connect_with(&broker.addr, options(&ca.pem, None)));
    assert!(error.contains("busy or refusing"), "{error}");

    let mut latencies_us = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        let body = format!("m{i}");
        let started = Instant::now();
        let ack = producer.produce("flood", Some(0), &[message(body.as_bytes())]);
        latencies_us.push(started.elapsed().as_micros() as u64);
        assert_eq!(
            ack.expect("produce under a handshake flood").status,
            Status::Ok
        );
    }
    latencies_us.sort_unstable();
    let p50 = latencies_us[REQUESTS / 2];
    let p99 = latencies_us[REQUESTS * 99 / 100];
    eprintln!("handshake flood: produce p50 {p50} us, p99 {p99} us");

    for (i, (s, _)) in over.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_millis(500)),
            "connection {i} beyond tls_max_handshakes_per_shard was not closed at once"
        );
    }
    for (i, (s, connected)) in held.iter_mut().enumerate() {
        let deadline = *connected + HANDSHAKE_TIMEOUT + MARGIN;
        assert!(
            closed_within(s, deadline.saturating_duration_since(Instant::now())),
            "stalled handshake {i} was not closed within tls_handshake_timeout_ms"
        );
    }
}

#[test]
fn a_connection_over_the_limit_is_refused_inside_tls() {
    let dir = temp_store();
    let ca = Ca::new(dir.path(), "ca");
    let (cert, key) = ca.server(dir.path(), "broker");
    let extra = "max_connections_per_ip = 1";
    let broker = Broker::start_with_config(dir.path(), &tls_config(&cert, &key, extra), &[]);
    let options = ClientOptions {
        shard_aware: false,
        ..options(&ca.pem, None)
    };
    let _held = Client::connect_with(&broker.addr, options).expect("the first connection");
    let error = match Client::connect_with(&broker.addr, options) {
        Err(e) => e,
        Ok(_) => panic!("a connection over max_connections_per_ip was served"),
    };
    assert_eq!(error.status(), Some(Status::SystemBusy), "{error}");
    assert!(
        error.to_string().contains("max_connections_per_ip"),
        "{error}"
    );
}

/// The principal is shown in the broker's debug log only: a broker started here with the
/// connection module at debug level names the client certificate's URI SAN.
#[test]
fn the_principal_from_the_san_is_in_the_debug_log() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let dir = temp_store();
    let ca = Ca::new(dir.path(), "ca");
    let (cert, key) = ca.server(dir.path(), "broker");
    let extra = format!(
        "tls_ca_file = \"{}\"\nclient_auth = \"required\"",
        ca.pem.display()
    );
    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        common::test_config(&tls_config(&cert, &key, &extra)),
    )
    .unwrap();
    let log = dir.path().join("broker.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .args(["--store", dir.path().join("data").to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--ha-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info,ringmq_broker::net=debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start ringmq serve");
    let mut ready = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let addr = ready
        .split_whitespace()
        .find_map(|f| f.strip_prefix("listen="))
        .unwrap_or_else(|| panic!("no ready line: {ready}"))
        .to_string();
    let identity = ca.issue(
        dir.path(),
        "orders",
        vec![SanType::URI("spiffe://test/orders".try_into().unwrap())],
    );
    let client = Client::connect_with(&addr, options(&ca.pem, Some(&identity)));
    let seen = wait_until(Duration::from_secs(10), "the principal in the log", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .find(|l| l.contains("TLS handshake done"))
            .map(str::to_string)
    });
    let _ = child.kill();
    let _ = child.wait();
    client.expect("mTLS connect");
    assert!(
        seen.contains("principal=Some(\"spiffe://test/orders\")"),
        "{seen}"
    );
}

/// A pull answer larger than the socket buffers, to a client that starts reading only after
/// the broker has filled them: the session's buffered tail must still be flushed, or the
/// client waits for bytes the broker believes written.
#[test]
fn a_large_answer_read_late_arrives_whole_over_tls() {
    const MESSAGES: usize = 12;
    const BODY: usize = 256 * 1024;
    let dir = temp_store();
    let ca = Ca::new(dir.path(), "ca");
    let (cert, key) = ca.server(dir.path(), "broker");
    let broker =
        Broker::start_with_config(dir.path(), &tls_config(&cert, &key, ""), &["--shards", "1"]);
    let mut options = options(&ca.pem, None);
    options.connection.read_timeout = Duration::from_secs(10);
    let mut client = Client::connect_with(&broker.addr, options).expect("connect");
    client.create_topic("large", 1).expect("create");
    let body = vec![b'x'; BODY];
    for _ in 0..MESSAGES {
        let ack = client
            .produce("large", Some(0), &[message(&body)])
            .expect("produce");
        assert_eq!(ack.status, Status::Ok);
    }
    let ticket = client
        .send_pull(&PullRequest {
            topic: "large".into(),
            queue: 0,
            offset: 0,
            max_messages: MESSAGES as u32,
            max_bytes: (MESSAGES * (BODY + 1024)) as u32,
            max_wait_ms: 0,
        })
        .expect("send the pull");
    // Not a synchronization: the scenario is a reader that comes late, after the broker's
    // writes have met a full socket.
    std::thread::sleep(Duration::from_millis(500));
    let got = client.wait_pull(ticket, 0).expect("the whole answer");
    assert_eq!(got.messages.len(), MESSAGES);
    assert!(got.messages.iter().all(|m| m.body.len() == BODY));
}

/// A ringmq frame whose little-endian length (790 = 0x316) makes it start `16 03` like a TLS
/// record, on a plaintext port: served, not answered with a TLS alert.
#[test]
fn a_frame_that_starts_like_a_tls_record_is_served_on_a_plaintext_port() {
    use ringmq::protocol::frame::{encode_frame, FrameHeader, FRAME_HEADER_BYTES};
    use ringmq::protocol::Opcode;
    let dir = temp_store();
    let broker = Broker::start(dir.path(), &[]);
    let mut frame = Vec::new();
    encode_frame(
        &mut frame,
        FrameHeader::request(Opcode::Ping, 9),
        &[0u8; 790 - 20],
    );
    assert_eq!(&frame[..2], &[0x16, 0x03]);
    let mut s = TcpStream::connect(&broker.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // In two parts, so the first read may see fewer bytes than decide.
    s.write_all(&frame[..3]).unwrap();
    s.flush().unwrap();
    s.write_all(&frame[3..]).unwrap();
    let mut header = [0u8; FRAME_HEADER_BYTES];
    s.read_exact(&mut header).expect("a ringmq answer");
    assert_ne!(header[0], 0x15, "answered with a TLS alert");
    let request_id = u64::from_le_bytes(header[12..20].try_into().unwrap());
    assert_eq!(request_id, 9);
}

/// Every plaintext frame on a TLS port is told `TLS_REQUIRED`, also one whose length makes it
/// start `16 03` like a TLS record (the magic at bytes 4-5 decides), even sent in parts.
#[test]
fn a_frame_that_starts_like_a_tls_record_is_told_tls_required() {
    use ringmq::protocol::frame::{encode_frame, FrameHeader, FRAME_HEADER_BYTES};
    use ringmq::protocol::Opcode;
    let dir = temp_store();
    let ca = Ca::new(dir.path(), "ca");
    let (cert, key) = ca.server(dir.path(), "broker");
    let broker = Broker::start_with_config(dir.path(), &tls_config(&cert, &key, ""), &[]);
    let mut frame = Vec::new();
    encode_frame(
        &mut frame,
        FrameHeader::request(Opcode::Ping, 9),
        &[0u8; 790 - 20],
    );
    assert_eq!(&frame[..2], &[0x16, 0x03]);
    let mut s = TcpStream::connect(&broker.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(&frame[..3]).unwrap();
    s.write_all(&frame[3..]).unwrap();
    let mut header = [0u8; FRAME_HEADER_BYTES];
    s.read_exact(&mut header)
        .expect("a ringmq answer, not a closed connection");
    let status = u16::from_le_bytes(header[10..12].try_into().unwrap());
    assert_eq!(status, Status::TlsRequired as u16);
}

/// Under TLS the client's write timeout holds: a broker that stops reading (paused) makes a
/// pipelined producer fail with a timeout soon after the socket buffers fill.
#[test]
fn the_write_timeout_holds_over_tls() {
    let dir = temp_store();
    let ca = Ca::new(dir.path(), "ca");
    let (cert, key) = ca.server(dir.path(), "broker");
    let broker =
        Broker::start_with_config(dir.path(), &tls_config(&cert, &key, ""), &["--shards", "1"]);
    let mut options = options(&ca.pem, None);
    options.connection.write_timeout = Duration::from_millis(500);
    let mut client = Client::connect_with(&broker.addr, options).expect("connect");
    client.create_topic("stalled", 1).expect("create");
    let body = vec![b'x'; 200 * 1024];
    let batch = [
        message(&body),
        message(&body),
        message(&body),
        message(&body),
    ];
    client
        .produce("stalled", Some(0), &batch)
        .expect("a produce before the pause");
    broker.pause();
    let started = Instant::now();
    let error = loop {
        // Socket buffers hold a few megabytes; far fewer requests than this fill them.
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "writes to a broker that does not read kept succeeding"
        );
        if let Err(e) = client.send_produce("stalled", Some(0), &batch) {
            break e;
        }
    };
    assert!(
        matches!(error, ClientError::Timeout { .. }),
        "expected a write timeout, got {error}"
    );
    // One blocked write, not one per buffered chunk: rustls's own stream waited out the
    // socket's timeout on every call and took tens of seconds to fail here.
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the write timeout took {took:?}"
    );
}
