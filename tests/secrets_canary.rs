//! Secrets are never logged or exposed (issue 13, item 8). Canary strings are the HA secret,
//! the name-server secret, the controller secret and a line of the TLS key file (with the key's
//! own base64 as further canaries); the broker runs at `RUST_LOG=trace` while failures are
//! provoked (a slave with another HA secret, a name server with another secret, a plaintext
//! client on the TLS port, a TLS client without the CA, garbage bytes, bad requests). Then
//! the broker's whole log (the effective configuration it prints at start included), its
//! stdout, `/metrics`, `ringmq stats`, every error body and the rogue slave's log are searched:
//! no canary may appear anywhere.

mod common;

use common::{http_get, temp_store, test_config, wait_until, Broker, NameServer, PortBlock};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use ringmq::client::controller::ControllerClient;
use ringmq::client::{Client, ClientOptions, ClientTls, ConnectionOptions};
use ringmq::protocol::auth::Secret;
use ringmq::protocol::codec::{Fields, Writer};
use ringmq::protocol::controller::{ControllerHello, ControllerOpcode, ControllerProof};
use ringmq::protocol::frame::{encode_frame, FrameHeader};
use ringmq::protocol::message::MessageRef;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

const HA_CANARY: &str = "CANARY-ha-secret-7f3a9c1e5b2d4a6f8e0c";
const NAMESRV_CANARY: &str = "CANARY-namesrv-secret-2b4d6f8a0c1e3a5c";
const CONTROLLER_CANARY: &str = "CANARY-controller-secret-9e8d7c6b5a4f3e";
const TLS_KEY_CANARY: &str = "CANARY-tls-key-file-1a2b3c4d5e6f7a8b9c";
/// The rogue slave's own (wrong) HA secret: it must not show in either log.
const ROGUE_CANARY: &str = "CANARY-rogue-ha-secret-0f1e2d3c4b5a6978";

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// A broker process at trace level; stdout is kept whole, stderr goes to a file.
struct TracedBroker {
    child: Child,
    addr: String,
    ha: String,
    stdout: mpsc::Receiver<String>,
    log: PathBuf,
}

impl TracedBroker {
    fn start(root: &Path, config: &str) -> TracedBroker {
        let config_path = write(root, "broker.toml", &test_config(config));
        let log = root.join("broker.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .arg("--store")
            .arg(root.join("data"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--ha-listen",
                "127.0.0.1:0",
                "--shards",
                "1",
                "--role",
                "SYNC_MASTER",
            ])
            .env("RUST_LOG", "trace")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start ringmq serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let ready = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no ready line; log:\n{}", read(&log)));
            if line.starts_with("ringmq ready") {
                break line;
            }
        };
        let field = |name: &str| {
            ready
                .split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {ready}"))
                .to_string()
        };
        TracedBroker {
            addr: field("listen="),
            ha: field("ha="),
            child,
            stdout: rx,
            log,
        }
    }
}

impl Drop for TracedBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn tls_options(ca: &Path) -> ClientOptions {
    ClientOptions {
        connection: ConnectionOptions {
            tls: Some(ClientTls::from_files(ca, None).unwrap().leak()),
            connect_timeout: Duration::from_secs(5),
            ..ConnectionOptions::default()
        },
        ..ClientOptions::default()
    }
}

/// Bytes sent raw to `addr`, and whatever comes back before it closes or goes quiet.
fn raw(addr: &str, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = s.write_all(bytes);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn no_secret_is_printed_logged_or_served() {
    let dir = temp_store();
    let root = dir.path();
    // Certificates: a CA, the broker's leaf; the key file carries a canary line before its PEM
    // block (PEM readers skip text outside blocks), and the key's base64 is a canary too.
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "ca");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = write(root, "ca.pem", &ca_cert.pem());
    let mut leaf = CertificateParams::default();
    leaf.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
    let cert = write(root, "broker.crt", &leaf_cert.pem());
    let key_pem = leaf_key.serialize_pem();
    let key = write(root, "broker.key", &format!("{TLS_KEY_CANARY}\n{key_pem}"));
    let key_lines: Vec<&str> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .collect();
    assert!(!key_lines.is_empty());

    let ha_secret = write(root, "ha.secret", &format!("{HA_CANARY}\n"));
    let namesrv_secret = write(root, "namesrv.secret", NAMESRV_CANARY);
    let controller_secret = write(root, "controller.secret", CONTROLLER_CANARY);
    let other_namesrv = write(root, "other-namesrv.secret", &"n".repeat(40));
    let namesrv =
        NameServer::start_with(5_000, &["--secret-file", other_namesrv.to_str().unwrap()]);
    let metrics = PortBlock::allocate().listen_addr();
    let config = format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n\
         ha_security = \"auth\"\nha_secret_file = \"{}\"\nha_link_timeout_ms = 2000\n\
         namesrv = [\"{}\"]\nnamesrv_heartbeat_interval_ms = 200\nnamesrv_secret_file = \"{}\"\n\
         controller_secret_file = \"{}\"\nmetrics_listen = \"{metrics}\"\n",
        cert.display(),
        key.display(),
        ha_secret.display(),
        namesrv.addr,
        namesrv_secret.display(),
        controller_secret.display(),
    );
    let broker_dir = root.join("master");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let broker = TracedBroker::start(&broker_dir, &config);
    let mut exposed: Vec<(String, String)> = Vec::new();

    // A slave with another HA secret: refused by the master, and it logs the refusal.
    let rogue_dir = root.join("rogue");
    std::fs::create_dir_all(&rogue_dir).unwrap();
    let rogue_secret = write(root, "rogue.secret", ROGUE_CANARY);
    let rogue = Broker::start_with_config(
        &rogue_dir,
        &format!(
            "ha_security = \"auth\"\nha_secret_file = \"{}\"\nha_link_timeout_ms = 2000\n",
            rogue_secret.display()
        ),
        &["--role", "SLAVE", "--shards", "1", "--master", &broker.ha],
    );
    wait_until(
        Duration::from_secs(30),
        "the master refusing the rogue",
        || {
            read(&broker.log)
                .contains("refused a replication peer")
                .then_some(())
        },
    );
    // The name server refuses the broker's signature (another secret).
    wait_until(Duration::from_secs(30), "a refused registration", || {
        read(&broker.log)
            .contains("NOT_AUTHENTICATED")
            .then_some(())
    });

    // Port confusion, a client without the CA, garbage.
    exposed.push((
        "plaintext frame on the TLS port".into(),
        raw(
            &broker.addr,
            &[12, 0, 0, 0, b'R', b'Q', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
    ));
    exposed.push((
        "garbage on the TLS port".into(),
        raw(&broker.addr, &[0x16, 3, 1, 0, 5, 1, 0, 0, 1, 0]),
    ));
    exposed.push((
        "garbage on the HA port".into(),
        raw(&broker.ha, b"\xff\xff\xff\x7fnot a hello"),
    ));
    let other_ca = {
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let k = KeyPair::generate().unwrap();
        write(root, "other-ca.pem", &p.self_signed(&k).unwrap().pem())
    };
    match Client::connect_with(&broker.addr, tls_options(&other_ca)) {
        Ok(_) => panic!("a client trusting another CA connected"),
        Err(e) => exposed.push(("client without the CA".into(), e.to_string())),
    }
    // Bad requests over TLS: their error bodies.
    let mut client = Client::connect_with(&broker.addr, tls_options(&ca)).expect("TLS client");
    for result in [
        client
            .create_topic("bad topic name with spaces", 1)
            .map(|_| ()),
        client
            .produce(
                "no-such-topic",
                Some(0),
                &[MessageRef {
                    born_timestamp_ms: 0,
                    key: b"",
                    properties: b"",
                    body: b"x",
                }],
            )
            .map(|_| ()),
        client
            .pull("no-such-topic", 0, 0, 1, 1 << 20, 0)
            .map(|_| ()),
    ] {
        if let Err(e) = result {
            exposed.push(("error body".into(), e.to_string()));
        }
    }

    // What the broker serves and prints.
    exposed.push(("/metrics".into(), http_get(&metrics, "/metrics")));
    let stats = common::run_binary(
        &[
            "stats",
            "--broker",
            &broker.addr,
            "--tls-ca",
            ca.to_str().unwrap(),
        ],
        b"",
    );
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    exposed.push((
        "ringmq stats".into(),
        String::from_utf8_lossy(&stats.stdout).into_owned(),
    ));
    let stdout: Vec<String> = broker.stdout.try_iter().collect();
    exposed.push(("broker stdout".into(), stdout.join("\n")));
    let log = read(&broker.log);
    assert!(
        log.contains("effective configuration"),
        "the broker prints its effective configuration at start"
    );
    assert!(
        log.contains(&ha_secret.display().to_string()),
        "the configuration shows the secret's path"
    );
    assert!(log.contains("TRACE"), "the broker ran at trace level");
    exposed.push(("broker log (trace)".into(), log));
    exposed.push(("rogue slave log".into(), rogue.log()));

    exposed.extend(traced_controller_output(root, &controller_secret));

    let mut canaries = vec![
        HA_CANARY.to_string(),
        NAMESRV_CANARY.to_string(),
        CONTROLLER_CANARY.to_string(),
        TLS_KEY_CANARY.to_string(),
        ROGUE_CANARY.to_string(),
    ];
    canaries.extend(key_lines.iter().map(|l| l.to_string()));
    for (place, text) in &exposed {
        for canary in &canaries {
            assert!(
                !text.contains(canary.as_str()),
                "the secret {canary:?} appears in {place}"
            );
        }
    }
}

/// One frame of a controller request: `opcode` and `body`'s fields.
fn controller_frame<B: for<'a> Fields<'a>>(opcode: ControllerOpcode, id: u64, body: &B) -> Vec<u8> {
    let mut encoded = Vec::new();
    body.write_fields(&mut Writer::new(&mut encoded));
    let mut frame = Vec::new();
    encode_frame(
        &mut frame,
        FrameHeader {
            flags: 0,
            opcode: opcode as u16,
            status: 0,
            request_id: id,
        },
        &encoded,
    );
    frame
}

/// A controller with the canary secret, at trace level, under the failures an attacker can
/// cause: a request without the handshake, a client with another secret, a hello followed by
/// a wrong proof, a raw Raft frame. Returns its stdout and its log, and every answer.
fn traced_controller_output(root: &Path, secret: &Path) -> Vec<(String, String)> {
    let addr = PortBlock::allocate().listen_addr();
    let store = temp_store();
    let log_path = root.join("controller.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["controller", "--id", "1", "--peers", &format!("1={addr}")])
        .arg("--store")
        .arg(store.path())
        .arg("--secret-file")
        .arg(secret)
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("start ringmq controller");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut ready = String::new();
    stdout.read_line(&mut ready).unwrap();
    assert!(ready.starts_with("ringmq ready"), "{ready}");
    let mut exposed = Vec::new();
    let client = |secret: Option<&str>| {
        let client = ControllerClient::new(vec![addr.clone()], Duration::from_secs(2)).unwrap();
        match secret {
            Some(s) => client.with_secret(Secret::from_file_contents(s.into()).unwrap()),
            None => client,
        }
    };
    let without = client(None).status().expect_err("no secret, no status");
    exposed.push((
        "controller answer without a secret".into(),
        without.to_string(),
    ));
    let other = client(Some(ROGUE_CANARY))
        .status()
        .expect_err("another secret");
    exposed.push((
        "controller answer to another secret".into(),
        other.to_string(),
    ));
    let mut wrong_proof = controller_frame(
        ControllerOpcode::ControllerHello,
        1,
        &ControllerHello { nonce: vec![7; 32] },
    );
    wrong_proof.extend(controller_frame(
        ControllerOpcode::ControllerProof,
        2,
        &ControllerProof { proof: vec![9; 32] },
    ));
    let answer = raw(&addr, &wrong_proof);
    // The log keeps one refusal per 10 s; the answer says which branch refused.
    assert!(answer.contains("the proof does not match"), "{answer}");
    exposed.push(("controller answer to a wrong proof".into(), answer));
    let mut raft = Vec::new();
    encode_frame(
        &mut raft,
        FrameHeader {
            flags: 0,
            opcode: ControllerOpcode::RaftMessage as u16,
            status: 0,
            request_id: 3,
        },
        CONTROLLER_CANARY.as_bytes(),
    );
    // The canary as a Raft body: refused before it is decoded, so it is not echoed either.
    exposed.push((
        "controller answer to a raw Raft frame".into(),
        raw(&addr, &raft),
    ));
    let status = client(Some(CONTROLLER_CANARY))
        .status()
        .expect("with the secret");
    exposed.push(("controller status".into(), status.to_string()));
    wait_until(Duration::from_secs(10), "the refusals logged", || {
        read(&log_path)
            .contains("controller handshake refused")
            .then_some(())
    });
    let _ = child.kill();
    let _ = child.wait();
    let mut rest = String::new();
    let _ = stdout.read_to_string(&mut rest);
    exposed.push(("controller stdout".into(), format!("{ready}{rest}")));
    let log = read(&log_path);
    assert!(log.contains("TRACE"), "the controller ran at trace level");
    exposed.push(("controller log (trace)".into(), log));
    exposed
}
