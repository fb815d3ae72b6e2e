//! SCRAM authentication against the real binary on loopback: the first superuser made offline
//! in a stopped broker's store, produce and consume through the CLI with SCRAM-SHA-256 and
//! SCRAM-SHA-512, an unknown user and a wrong password answered alike (144, identical bodies),
//! requests and oversized frames before authentication refused and the connection closed,
//! user administration kept to superusers, `user list` without key material, a user created on
//! a master usable on its slave, and a password that never reaches the broker's trace log.

mod common;

use common::{run_binary, temp_store, wait_until, Broker};
use ringmq::client::{ClientOptions, ClientScram, Connection, ConnectionOptions};
use ringmq::protocol::message::TopicListRequest;
use ringmq::protocol::scram::{AuthAnswer, AuthFinish, AuthStart, ClientExchange, Mechanism};
use ringmq::protocol::{Opcode, Request, Status};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const ADMIN_PASSWORD: &str = "admin-canary-Jx81q";
const ALICE_PASSWORD: &str = "alice-canary-Zq47p";

/// The link secret every broker of these tests shares (a slave must hold its master's).
const HA_SECRET: &str = "scram-tests-ha-link-secret-0123456789abcdef";

/// Authentication on, `admin` a superuser, and the replication link authenticated (a broker
/// refuses SCRAM beside `ha_security = "off"`); the secret is written under `root`.
fn scram_config(root: &Path) -> String {
    let secret = root.join("ha.secret");
    std::fs::write(&secret, HA_SECRET).unwrap();
    format!(
        "authentication = \"scram\"\nsuperusers = [\"admin\"]\nha_security = \"auth\"\nha_secret_file = \"{}\"\n",
        secret.display()
    )
}

/// Writes `password` to `<dir>/<name>.pw` (with a newline, as `echo` would).
fn password_file(dir: &Path, name: &str, password: &str) -> PathBuf {
    let path = dir.join(format!("{name}.pw"));
    std::fs::write(&path, format!("{password}\n")).unwrap();
    path
}

fn ok(output: &std::process::Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Creates `name` in the stopped store under `root/data` (the offline bootstrap).
fn create_offline(root: &Path, name: &str, password: &str) {
    common::create_user_offline(&root.join("data"), name, password);
}

/// A broker with authentication on, `admin` (a superuser) made offline before its start.
fn broker(root: &Path, extra: &str) -> Broker {
    create_offline(root, "admin", ADMIN_PASSWORD);
    Broker::start_with_config(root, &format!("{}{extra}", scram_config(root)), &[])
}

fn scram_options(mechanism: Mechanism, user: &str, password: &str) -> ClientOptions {
    ClientOptions {
        connection: ConnectionOptions {
            scram: Some(ClientScram::new(mechanism, user, password.as_bytes().to_vec()).leak()),
            ..ConnectionOptions::default()
        },
        ..ClientOptions::default()
    }
}

/// A connection that has not authenticated.
fn bare(addr: &str) -> Connection {
    Connection::connect(addr, ConnectionOptions::default()).expect("connect")
}

fn encode<R: Request>(request: &R) -> Vec<u8> {
    let mut out = Vec::new();
    request.encode_body(&mut out);
    out
}

/// One exchange by hand; the status and body of the last answer.
fn attempt(addr: &str, user: &str, password: &str) -> (Status, Vec<u8>) {
    let mut connection = bare(addr);
    let (mut client, first) =
        ClientExchange::start(Mechanism::ScramSha256, user, "nonce-0123456789");
    let start = AuthStart {
        mechanism: "SCRAM-SHA-256".into(),
        message: first,
    };
    let answer = connection.call(Opcode::AuthStart, &encode(&start)).unwrap();
    let (_, body) = answer.into_result(addr).expect("server-first");
    let server_first = AuthAnswer::decode(&body).unwrap().message;
    let last = client.respond(&server_first, password.as_bytes()).unwrap();
    let finish = connection
        .call(Opcode::AuthFinish, &encode(&AuthFinish { message: last }))
        .unwrap();
    let status = finish.status(addr).unwrap();
    if status == Status::AuthenticationFailed {
        assert!(
            connection.call(Opcode::Ping, &[]).is_err(),
            "the connection is closed after a failed step"
        );
    }
    (status, finish.body)
}

#[test]
fn produce_and_consume_with_sha256_and_sha512_through_the_cli() {
    let dir = temp_store();
    let broker = broker(dir.path(), "");
    let admin_pw = password_file(dir.path(), "admin", ADMIN_PASSWORD);
    let alice_pw = password_file(dir.path(), "alice", ALICE_PASSWORD);
    let as_admin = [
        "--user",
        "admin",
        "--password-file",
        admin_pw.to_str().unwrap(),
    ];
    let out = broker.cli(
        &[
            &["user", "create", "alice", "--new-password-file", "-"][..],
            &as_admin,
        ]
        .concat(),
        format!("{ALICE_PASSWORD}\n").as_bytes(),
    );
    ok(&out, "user create alice");
    let out = broker.cli(
        &[
            &["topic", "create", "orders", "--queues", "2"][..],
            &as_admin,
        ]
        .concat(),
        b"",
    );
    ok(&out, "topic create");
    for (mechanism, body) in [
        ("SCRAM-SHA-256", "hello-256"),
        ("SCRAM-SHA-512", "hello-512"),
    ] {
        let login = [
            "--user",
            "alice",
            "--password-file",
            alice_pw.to_str().unwrap(),
            "--scram-mechanism",
            mechanism,
        ];
        let out = broker.cli(
            &[&["produce", "orders"][..], &login].concat(),
            format!("{body}\n").as_bytes(),
        );
        ok(&out, "produce");
        let out = broker.cli(
            &[
                &[
                    "consume",
                    "orders",
                    "--from",
                    "earliest",
                    "--max-wait-ms",
                    "200",
                ][..],
                &login,
            ]
            .concat(),
            b"",
        );
        let consumed = ok(&out, "consume");
        assert!(consumed.contains(body), "{mechanism}: {consumed}");
    }
    // The same through RINGMQ_USER / RINGMQ_PASSWORD_FILE, the password on standard input.
    let out = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["topic", "list", "--broker", &broker.addr])
        .env("RINGMQ_USER", "alice")
        .env("RINGMQ_PASSWORD_FILE", &alice_pw)
        .output()
        .unwrap();
    assert!(ok(&out, "topic list from the environment").contains("orders"));
    // No credentials: the CLI names what is missing.
    let out = broker.cli(&["topic", "list"], b"");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("NOT_AUTHENTICATED")
            && stderr.contains("--user")
            && stderr.contains("--password-file"),
        "{stderr}"
    );
    let out = broker.cli(&["topic", "list", "--user", "alice"], b"");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--password-file"));
    // The client library with both mechanisms, over shard-aware connections.
    for mechanism in Mechanism::ALL {
        let mut client = broker.client_with(scram_options(mechanism, "alice", ALICE_PASSWORD));
        let topics = client.call(&TopicListRequest {}).unwrap();
        assert_eq!(topics.topics.len(), 1);
    }
}

#[test]
fn unknown_user_and_wrong_password_fail_alike() {
    let dir = temp_store();
    let broker = broker(dir.path(), "");
    let (status, ok_body) = attempt(&broker.addr, "admin", ADMIN_PASSWORD);
    assert_eq!(status, Status::Ok, "{}", String::from_utf8_lossy(&ok_body));
    let (wrong, wrong_body) = attempt(&broker.addr, "admin", "not-the-password");
    let (unknown, unknown_body) = attempt(&broker.addr, "nobody", ADMIN_PASSWORD);
    assert_eq!(wrong, Status::AuthenticationFailed);
    assert_eq!(unknown, Status::AuthenticationFailed);
    assert_eq!(wrong_body, unknown_body, "identical bodies");
    // The client library reports it as the broker's status.
    let error = ringmq::client::Client::connect_with(
        &broker.addr,
        scram_options(Mechanism::ScramSha512, "admin", "wrong"),
    )
    .err()
    .expect("a wrong password is refused");
    assert_eq!(
        error.status(),
        Some(Status::AuthenticationFailed),
        "{error}"
    );
}

#[test]
fn requests_and_large_frames_before_authentication_are_refused() {
    let dir = temp_store();
    let broker = broker(dir.path(), "authentication_timeout_ms = 1000\n");
    for addr in std::iter::once(broker.addr.clone())
        .chain(broker.shard_ports.iter().map(|p| format!("127.0.0.1:{p}")))
    {
        let mut connection = bare(&addr);
        connection
            .call(Opcode::Ping, &[])
            .expect("ping before authentication");
        let answer = connection
            .call(Opcode::TopicList, &encode(&TopicListRequest {}))
            .unwrap();
        assert_eq!(answer.status(&addr).unwrap(), Status::NotAuthenticated);
        assert!(
            connection.call(Opcode::Ping, &[]).is_err(),
            "closed after 142"
        );

        oversized_frame_is_refused_and_closed(&addr);
    }
    // A connection that never authenticates is closed at authentication_timeout_ms.
    let mut idle = bare(&broker.addr);
    wait_until(
        Duration::from_secs(10),
        "the unauthenticated connection to close",
        || idle.peer_closed().then_some(()),
    );
    // After authentication the frame cap is the configured one.
    let mut client = broker.client_with(scram_options(
        Mechanism::ScramSha256,
        "admin",
        ADMIN_PASSWORD,
    ));
    client.create_topic("large", 1).unwrap();
    let body = vec![7u8; 16 * 1024];
    let produced = client.produce(
        "large",
        Some(0),
        &[ringmq::protocol::message::MessageRef {
            born_timestamp_ms: 0,
            key: b"",
            properties: b"",
            body: &body,
        }],
    );
    assert!(
        matches!(&produced, Ok(r) if r.status == Status::Ok),
        "{:?}",
        produced.map(|r| r.status)
    );
}

/// An 8 KiB frame before authentication: only its header is sent, and the broker answers
/// FRAME_TOO_LARGE and closes without waiting for the body.
fn oversized_frame_is_refused_and_closed(addr: &str) {
    use std::io::{Read, Write};
    let mut frame = Vec::new();
    ringmq::protocol::frame::encode_frame(
        &mut frame,
        ringmq::protocol::FrameHeader::request(Opcode::Ping, 9),
        &vec![0u8; 8 * 1024],
    );
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(&frame[..64]).unwrap();
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("the broker closes the connection");
    let decoded = ringmq::protocol::FrameDecoder::new(1 << 20)
        .decode(&answer)
        .unwrap()
        .expect("one whole answer");
    assert_eq!(
        Status::from_u16(decoded.header.status),
        Some(Status::FrameTooLarge),
        "{}",
        String::from_utf8_lossy(decoded.body)
    );
}

#[test]
fn user_administration_is_for_superusers_and_lists_no_keys() {
    let dir = temp_store();
    let broker = broker(dir.path(), "");
    let admin_pw = password_file(dir.path(), "admin", ADMIN_PASSWORD);
    let alice_pw = password_file(dir.path(), "alice", ALICE_PASSWORD);
    let as_admin = [
        "--user",
        "admin",
        "--password-file",
        admin_pw.to_str().unwrap(),
    ];
    ok(
        &broker.cli(
            &[
                &[
                    "user",
                    "create",
                    "alice",
                    "--new-password-file",
                    alice_pw.to_str().unwrap(),
                ][..],
                &as_admin,
            ]
            .concat(),
            b"",
        ),
        "create alice",
    );
    let as_alice = [
        "--user",
        "alice",
        "--password-file",
        alice_pw.to_str().unwrap(),
    ];
    let out = broker.cli(&[&["user", "list"][..], &as_alice].concat(), b"");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT_AUTHORIZED"));
    let listed = ok(
        &broker.cli(
            &[&["user", "list", "--format", "json"][..], &as_admin].concat(),
            b"",
        ),
        "user list",
    );
    let json: serde_json::Value = serde_json::from_str(listed.trim()).unwrap();
    let names: Vec<&str> = json["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "alice"]);
    let stored = std::fs::read_to_string(broker.store.join("users.json")).unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    for credentials in stored["users"].as_object().unwrap().values() {
        for credential in credentials.as_array().unwrap() {
            for key in ["stored_key", "server_key", "salt"] {
                let value = credential[key].as_str().unwrap();
                assert!(!listed.contains(value), "user list shows {key}");
            }
        }
    }
    assert!(!serde_json::to_string(&stored)
        .unwrap()
        .contains(ALICE_PASSWORD));
    ok(
        &broker.cli(&[&["user", "delete", "alice"][..], &as_admin].concat(), b""),
        "delete",
    );
    let out = broker.cli(&[&["topic", "list"][..], &as_alice].concat(), b"");
    assert!(String::from_utf8_lossy(&out.stderr).contains("AUTHENTICATION_FAILED"));
    // The offline store is locked while the broker runs.
    let out = run_binary(
        &["user", "list", "--store", broker.store.to_str().unwrap()],
        b"",
    );
    assert!(!out.status.success(), "the store lock is respected");
}

#[test]
fn a_user_made_on_the_master_works_on_its_slave() {
    let master_dir = temp_store();
    let master = broker(master_dir.path(), "");
    let slave_dir = temp_store();
    let slave = Broker::start_with_config(
        slave_dir.path(),
        &scram_config(slave_dir.path()),
        &["--role", "SLAVE", "--master", &master.ha],
    );
    let mut admin = master.client_with(scram_options(
        Mechanism::ScramSha256,
        "admin",
        ADMIN_PASSWORD,
    ));
    let credentials =
        ringmq::client::scram::credentials_for(ALICE_PASSWORD.as_bytes(), 4096, &Mechanism::ALL)
            .unwrap();
    admin
        .call(&ringmq::protocol::scram::UserCreate {
            name: "alice".into(),
            credentials: credentials.iter().map(|c| c.to_stored()).collect(),
        })
        .unwrap();
    wait_until(Duration::from_secs(20), "alice to reach the slave", || {
        let options = scram_options(Mechanism::ScramSha512, "alice", ALICE_PASSWORD);
        let mut client = ringmq::client::Client::connect_with(&slave.addr, options).ok()?;
        client.call(&TopicListRequest {}).ok()
    });
}

#[test]
fn the_password_never_reaches_the_broker_log_at_trace_level() {
    let dir = temp_store();
    create_offline(dir.path(), "admin", ADMIN_PASSWORD);
    let config = dir.path().join("broker.toml");
    std::fs::write(&config, common::test_config(&scram_config(dir.path()))).unwrap();
    let log = dir.path().join("trace.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["serve", "--config", config.to_str().unwrap(), "--store"])
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--ha-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the broker exited"
        );
        if let Some(addr) = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("listen="))
        {
            break addr.to_string();
        }
    };
    assert_eq!(attempt(&addr, "admin", ADMIN_PASSWORD).0, Status::Ok);
    assert_eq!(
        attempt(&addr, "admin", ALICE_PASSWORD).0,
        Status::AuthenticationFailed
    );
    assert_eq!(
        attempt(&addr, "alice", ALICE_PASSWORD).0,
        Status::AuthenticationFailed
    );
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("TRACE") || text.contains("DEBUG"),
        "the log is at trace level"
    );
    for password in [ADMIN_PASSWORD, ALICE_PASSWORD] {
        assert!(!text.contains(password), "the log holds a password");
    }
    // The client never sends the password, so the real check is on what the broker holds:
    // no key of users.json, in base64 or hex, reaches its log.
    let keys = stored_keys(&dir.path().join("data"));
    assert!(keys.len() >= 3, "users.json names its keys: {keys:?}");
    for (what, base64) in keys {
        let bytes = base64_decode(&base64);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!text.contains(&base64), "the log holds {what} in base64");
        assert!(!text.contains(&hex), "the log holds {what} in hex");
        assert!(
            !text.contains(&format!("{bytes:?}")[1..20]),
            "the log holds {what} as bytes"
        );
    }
}

/// Every `stored_key`, `server_key` and the `unknown_user_key` of `<store>/users.json`
/// (base64), named.
fn stored_keys(store: &Path) -> Vec<(String, String)> {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("users.json")).unwrap()).unwrap();
    let mut keys = vec![(
        "unknown_user_key".to_string(),
        json["unknown_user_key"].as_str().unwrap().to_string(),
    )];
    for (user, credentials) in json["users"].as_object().unwrap() {
        for credential in credentials.as_array().unwrap() {
            for field in ["stored_key", "server_key"] {
                keys.push((
                    format!("{user}'s {field}"),
                    credential[field].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    keys
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

#[test]
fn the_bench_authenticates_with_either_driver() {
    let dir = temp_store();
    let broker = broker(dir.path(), "");
    let admin_pw = password_file(dir.path(), "admin", ADMIN_PASSWORD);
    for driver in ["event-loop", "threads"] {
        let out = dir.path().join(format!("bench-{driver}"));
        let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["bench", "--broker", &broker.addr, "--driver", driver])
            .args([
                "--count",
                "50",
                "--producers-list",
                "1",
                "--size",
                "64",
                "--warmup",
                "0.1",
            ])
            .args(["--user", "admin", "--password-file"])
            .arg(&admin_pw)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        ok(&output, &format!("bench --driver {driver}"));
    }
    let output = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["bench", "--broker", &broker.addr, "--count", "10", "--out"])
        .arg(dir.path().join("bench-anonymous"))
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "a bench without credentials is refused"
    );
}

/// Under TLS with `client_auth = optional`: a client certificate's principal counts as
/// authenticated; a TLS client without one must run SCRAM inside the session.
#[test]
fn a_client_certificate_counts_as_authenticated_and_scram_runs_over_tls() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let dir = temp_store();
    let pem = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let ca_pem = pem("ca.pem", ca.pem());
    let issue = |name: &str, san: SanType| {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![san];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        (
            pem(&format!("{name}.crt"), cert.pem()),
            pem(&format!("{name}.key"), key.serialize_pem()),
        )
    };
    let (server_cert, server_key) =
        issue("server", SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let client = issue(
        "client",
        SanType::DnsName("app.example".try_into().unwrap()),
    );
    let broker = broker(
        dir.path(),
        &format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\ntls_ca_file = \"{}\"\nclient_auth = \"optional\"\n",
            server_cert.display(),
            server_key.display(),
            ca_pem.display()
        ),
    );
    let tls = |identity: Option<&(PathBuf, PathBuf)>| {
        ringmq::client::ClientTls::from_files(
            &ca_pem,
            identity.map(|(c, k)| (c.as_path(), k.as_path())),
        )
        .unwrap()
        .leak()
    };
    let with_certificate = ConnectionOptions {
        tls: Some(tls(Some(&client))),
        ..ConnectionOptions::default()
    };
    let mut connection = Connection::connect(&broker.addr, with_certificate).unwrap();
    let answer = connection
        .call(Opcode::TopicList, &encode(&TopicListRequest {}))
        .unwrap();
    assert_eq!(
        answer.status(&broker.addr).unwrap(),
        Status::Ok,
        "the certificate authenticates"
    );
    let plain_tls = ConnectionOptions {
        tls: Some(tls(None)),
        ..ConnectionOptions::default()
    };
    let mut connection = Connection::connect(&broker.addr, plain_tls).unwrap();
    let answer = connection
        .call(Opcode::TopicList, &encode(&TopicListRequest {}))
        .unwrap();
    assert_eq!(
        answer.status(&broker.addr).unwrap(),
        Status::NotAuthenticated
    );
    let scram_over_tls = ConnectionOptions {
        scram: Some(
            ClientScram::new(
                Mechanism::ScramSha512,
                "admin",
                ADMIN_PASSWORD.as_bytes().to_vec(),
            )
            .leak(),
        ),
        ..plain_tls
    };
    let mut connection = Connection::connect(&broker.addr, scram_over_tls).unwrap();
    let answer = connection
        .call(Opcode::TopicList, &encode(&TopicListRequest {}))
        .unwrap();
    assert_eq!(answer.status(&broker.addr).unwrap(), Status::Ok);
    // A certificate the CA signed but that names no one (no SAN): no principal, so it does not
    // count as authenticated.
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "nameless");
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let nameless = (
        pem("nameless.crt", cert.pem()),
        pem("nameless.key", key.serialize_pem()),
    );
    let without_san = ConnectionOptions {
        tls: Some(tls(Some(&nameless))),
        ..ConnectionOptions::default()
    };
    let mut connection = Connection::connect(&broker.addr, without_san).unwrap();
    let answer = connection
        .call(Opcode::TopicList, &encode(&TopicListRequest {}))
        .unwrap();
    assert_eq!(
        answer.status(&broker.addr).unwrap(),
        Status::NotAuthenticated,
        "a certificate without a SAN names no principal"
    );
}

/// Frames written in one `write_all`, then `count` answers read back in order.
fn pipelined(
    stream: &mut std::net::TcpStream,
    frames: &[(Opcode, Vec<u8>)],
    count: usize,
) -> Vec<(Status, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut bytes = Vec::new();
    for (id, (opcode, body)) in frames.iter().enumerate() {
        ringmq::protocol::frame::encode_frame(
            &mut bytes,
            ringmq::protocol::FrameHeader::request(*opcode, id as u64 + 1),
            body,
        );
    }
    stream.write_all(&bytes).unwrap();
    let decoder = ringmq::protocol::FrameDecoder::new(1 << 20);
    let mut received = Vec::new();
    let mut answers = Vec::new();
    let mut chunk = [0u8; 4096];
    while answers.len() < count {
        while let Some(frame) = decoder.decode(&received).unwrap() {
            let used = ringmq::protocol::frame::FRAME_HEADER_BYTES + frame.body.len();
            answers.push((
                Status::from_u16(frame.header.status).unwrap(),
                frame.body.to_vec(),
            ));
            received.drain(..used);
            if answers.len() == count {
                return answers;
            }
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed after {} answers: {answers:?}", answers.len());
        received.extend_from_slice(&chunk[..n]);
    }
    answers
}

#[test]
fn the_gate_holds_for_pipelined_frames_and_a_second_exchange_is_refused() {
    use std::io::Read;
    let dir = temp_store();
    let broker = broker(dir.path(), "");
    let connect = || {
        let stream = std::net::TcpStream::connect(&broker.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
    };
    let topic_list = (Opcode::TopicList, encode(&TopicListRequest {}));
    let (mut client, first) =
        ClientExchange::start(Mechanism::ScramSha256, "admin", "nonce-0123456789");
    let start = (
        Opcode::AuthStart,
        encode(&AuthStart {
            mechanism: "SCRAM-SHA-256".into(),
            message: first.clone(),
        }),
    );
    // A request in the same write as AuthStart is before authentication: 142, and closed.
    let mut stream = connect();
    let answers = pipelined(&mut stream, &[start.clone(), topic_list.clone()], 2);
    assert_eq!(answers[0].0, Status::Ok, "server-first");
    assert_eq!(answers[1].0, Status::NotAuthenticated, "never served");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "nothing after 142");
    // AuthFinish and a request in one write: the request is served, after the exchange.
    let mut stream = connect();
    let answers = pipelined(&mut stream, std::slice::from_ref(&start), 1);
    let server_first = AuthAnswer::decode(&answers[0].1).unwrap().message;
    let last = client
        .respond(&server_first, ADMIN_PASSWORD.as_bytes())
        .unwrap();
    let finish = (Opcode::AuthFinish, encode(&AuthFinish { message: last }));
    let answers = pipelined(&mut stream, &[finish, topic_list.clone()], 2);
    assert_eq!(answers[0].0, Status::Ok, "server-final");
    assert_eq!(answers[1].0, Status::Ok, "served in order after AuthFinish");
    // A second exchange on an authenticated connection is refused, and the connection stays.
    let answers = pipelined(&mut stream, &[start, topic_list], 2);
    assert_eq!(answers[0].0, Status::BadRequest);
    assert_eq!(answers[1].0, Status::Ok, "still authenticated as admin");
}

#[test]
fn role_changes_are_for_superusers_and_user_changes_need_authentication() {
    use ringmq::protocol::message::{ClusterDemote, ClusterPromote};
    let dir = temp_store();
    let broker = broker(dir.path(), "");
    let mut admin = broker.client_with(scram_options(
        Mechanism::ScramSha256,
        "admin",
        ADMIN_PASSWORD,
    ));
    let credentials =
        ringmq::client::scram::credentials_for(ALICE_PASSWORD.as_bytes(), 4096, &Mechanism::ALL)
            .unwrap();
    admin
        .call(&ringmq::protocol::scram::UserCreate {
            name: "alice".into(),
            credentials: credentials.iter().map(|c| c.to_stored()).collect(),
        })
        .unwrap();
    let mut alice = Connection::connect(
        &broker.addr,
        scram_options(Mechanism::ScramSha256, "alice", ALICE_PASSWORD).connection,
    )
    .unwrap();
    let role = broker_role(&broker);
    let demote = encode(&ClusterDemote {
        master: "127.0.0.1:1".into(),
    });
    let promote = encode(&ClusterPromote {
        role: String::new(),
    });
    for (opcode, body) in [
        (Opcode::ClusterDemote, demote),
        (Opcode::ClusterPromote, promote),
    ] {
        let answer = alice.call(opcode, &body).unwrap();
        assert_eq!(
            answer.status(&broker.addr).unwrap(),
            Status::NotAuthorized,
            "{opcode:?} by a user not in superusers"
        );
    }
    assert_eq!(
        broker_role(&broker),
        role,
        "the refused demotion changed nothing"
    );
    // users.json, with its keys, is the owner's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(broker.store.join("users.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    drop(broker);

    // With authentication off, users are not changed online (anyone could replace the keys
    // of a superuser-to-be); the offline store is the way.
    let open_dir = temp_store();
    let open = Broker::start(open_dir.path(), &[]);
    let pw = password_file(open_dir.path(), "bob", ALICE_PASSWORD);
    let out = open.cli(
        &[
            "user",
            "create",
            "bob",
            "--new-password-file",
            pw.to_str().unwrap(),
        ],
        b"",
    );
    assert!(
        !out.status.success(),
        "online user create with authentication off"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NOT_AUTHORIZED"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!open.store.join("users.json").exists());
}

/// The role the broker's cluster status names.
fn broker_role(broker: &Broker) -> String {
    let mut admin = broker.client_with(scram_options(
        Mechanism::ScramSha256,
        "admin",
        ADMIN_PASSWORD,
    ));
    let status = admin
        .call(&ringmq::protocol::message::ClusterStatusRequest {})
        .unwrap();
    status.role
}
