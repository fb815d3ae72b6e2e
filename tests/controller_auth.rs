//! Controller-port authentication (`ringmq controller --secret-file`), against real
//! controllers on loopback: three controllers with the same secret elect a leader and take a
//! registration from a client that holds it; a client without the secret or with another is
//! refused (`NOT_AUTHENTICATED`, naming the flag) and registers nothing; a raw Raft frame sent
//! without the handshake is refused before it reaches raft-rs; a fourth "controller" with
//! another secret never gets its messages in: its handshakes are refused, and the group's
//! leader and commit index do not move. Waits are on the ready line, on answers and on log
//! lines, polled with a deadline.

mod common;

use common::{run_binary, temp_store, wait_until, PortBlock};
use ringmq::client::controller::ControllerClient;
use ringmq::protocol::auth::Secret;
use ringmq::protocol::controller::{ControllerOpcode, RaftMessage, RegisterBroker};
use ringmq::protocol::frame::{encode_frame, FrameDecoder, FrameHeader};
use ringmq::protocol::Status;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

const SECRET: &str = "controller-secret-0123456789abcdef-0123456789";
const OTHER_SECRET: &str = "another-secret-0123456789abcdef-0123456789ab";

struct ControllerProcess {
    addr: String,
    _store: tempfile::TempDir,
    log: PathBuf,
    child: Child,
}

impl ControllerProcess {
    fn start(id: u64, addr: &str, peers: &str, secret: &Path, dir: &Path) -> ControllerProcess {
        let store = temp_store();
        let log = dir.join(format!("controller-{id}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["controller", "--id", &id.to_string(), "--peers", peers])
            .arg("--store")
            .arg(store.path())
            .arg("--secret-file")
            .arg(secret)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
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
        ControllerProcess {
            addr: addr.to_string(),
            _store: store,
            log,
            child,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn secret_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn secret(contents: &str) -> Secret {
    Secret::from_file_contents(contents.as_bytes().to_vec()).unwrap()
}

fn client(addrs: &str, with: Option<&str>) -> ControllerClient {
    let client = ControllerClient::new(
        addrs.split(',').map(str::to_string).collect(),
        Duration::from_secs(2),
    )
    .unwrap();
    match with {
        Some(contents) => client.with_secret(secret(contents)),
        None => client,
    }
}

fn register(store: &str) -> RegisterBroker {
    RegisterBroker {
        cluster_name: "c1".into(),
        broker_name: "group-a".into(),
        store_identity: store.into(),
        listen: "127.0.0.1:1".into(),
        ha_listen: "127.0.0.1:2".into(),
    }
}

/// The leader's id and commit index, as controller `addr` sees them, if it is the leader.
fn leader_at(addr: &str) -> Option<(u64, u64)> {
    let status = client(addr, Some(SECRET)).status().ok()?;
    (status["is_leader"] == true).then(|| {
        (
            status["id"].as_u64().unwrap(),
            status["commit_index"].as_u64().unwrap(),
        )
    })
}

/// Sends one frame on a fresh connection and reads the answer: (status, body), or `None`
/// when the controller closed without answering.
fn raw_exchange(addr: &str, opcode: u16, body: &[u8]) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut frame = Vec::new();
    encode_frame(
        &mut frame,
        FrameHeader {
            flags: 0,
            opcode,
            status: 0,
            request_id: 9,
        },
        body,
    );
    stream.write_all(&frame).unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let frame = FrameDecoder::new(1 << 20).decode(&reply).ok()??;
    Some((
        frame.header.status,
        String::from_utf8_lossy(frame.body).into_owned(),
    ))
}

#[test]
fn only_holders_of_the_secret_reach_the_controllers() {
    let dir = tempfile::tempdir().unwrap();
    let right = secret_file(dir.path(), "controller.secret", &format!("{SECRET}\n"));
    let wrong = secret_file(dir.path(), "other.secret", OTHER_SECRET);
    let addrs: Vec<String> = (0..4)
        .map(|_| PortBlock::allocate().listen_addr())
        .collect();
    let peers = |count: usize| {
        addrs[..count]
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",")
    };
    let three = peers(3);
    let controllers: Vec<ControllerProcess> = (0..3)
        .map(|i| ControllerProcess::start(i as u64 + 1, &addrs[i], &three, &right, dir.path()))
        .collect();
    let list = addrs[..3].join(",");

    // Leader election over authenticated peer links, and a registration.
    let (leader, _) = wait_until(Duration::from_secs(20), "a controller leader", || {
        controllers.iter().find_map(|c| leader_at(&c.addr))
    });
    let broker_id = client(&list, Some(SECRET))
        .register_broker(&register("store-a"))
        .expect("a client with the secret registers");
    assert!(broker_id > 0);

    // No secret, or another: refused, naming what is missing, and nothing registered.
    let unauthenticated = client(&list, None)
        .register_broker(&register("store-rogue"))
        .unwrap_err();
    assert_eq!(
        unauthenticated.status(),
        Some(Status::NotAuthenticated),
        "{unauthenticated}"
    );
    assert!(
        unauthenticated.to_string().contains("--secret-file"),
        "{unauthenticated}"
    );
    let wrong_secret = client(&list, Some(OTHER_SECRET))
        .register_broker(&register("store-rogue"))
        .unwrap_err();
    assert!(
        wrong_secret.to_string().contains("secret"),
        "{wrong_secret}"
    );
    let state = client(&list, Some(SECRET))
        .group_state("c1", "group-a")
        .unwrap();
    assert_eq!(
        state
            .brokers
            .iter()
            .map(|b| b.broker_id)
            .collect::<Vec<_>>(),
        vec![broker_id],
        "only the authenticated registration is in the state"
    );

    // A Raft frame without the handshake never reaches raft-rs: answered and closed.
    let mut raft = Vec::new();
    RaftMessage {
        from: 2,
        message: vec![8, 1],
    }
    .encode(&mut raft);
    let (status, message) = raw_exchange(
        &controllers[0].addr,
        ControllerOpcode::RaftMessage as u16,
        &raft,
    )
    .expect("an answer before the close");
    assert_eq!(status, Status::NotAuthenticated as u16, "{message}");

    // The CLI: without --secret-file it names the flag; with it, it reads the status.
    let out = run_binary(&["controller", "status", "--controller", &list], b"");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--secret-file"), "{stderr}");
    let out = run_binary(
        &[
            "cluster",
            "status",
            "--controller",
            &list,
            "--secret-file",
            right.to_str().unwrap(),
            "--format",
            "json",
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, commit_before) = leader_at(&controllers[leader as usize - 1].addr).unwrap();

    // A fourth "controller" with another secret: it campaigns at the three, whose handshakes
    // refuse it (the log says so on both sides), and the group does not notice.
    let rogue = ControllerProcess::start(4, &addrs[3], &peers(4), &wrong, dir.path());
    wait_until(Duration::from_secs(30), "the rogue's links refused", || {
        rogue.log().contains("did not authenticate").then_some(())
    });
    wait_until(
        Duration::from_secs(30),
        "a controller refusing the rogue",
        || {
            controllers
                .iter()
                .any(|c| c.log().contains("controller handshake refused"))
                .then_some(())
        },
    );
    let rogue_status = client(&rogue.addr, Some(OTHER_SECRET)).status().unwrap();
    assert_ne!(rogue_status["is_leader"], true, "{rogue_status}");
    assert!(
        rogue_status["leader"].is_null() || rogue_status["leader"] == 0,
        "the rogue never hears a leader: {rogue_status}"
    );
    assert_eq!(
        leader_at(&controllers[leader as usize - 1].addr),
        Some((leader, commit_before)),
        "the rogue moved neither the leader nor the log"
    );
    for c in &controllers {
        assert!(!c.log().contains(SECRET), "a secret in the log");
    }
    assert!(!rogue.log().contains(OTHER_SECRET));
}

/// A connection from 127.0.0.2 that sends nothing.
fn idle_opener(addr: &str) -> TcpStream {
    use socket2::{Domain, SockAddr, Socket, Type};
    let target: std::net::SocketAddr = addr.parse().unwrap();
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let source: std::net::SocketAddr = "127.0.0.2:0".parse().unwrap();
    socket.bind(&SockAddr::from(source)).unwrap();
    socket.connect(&SockAddr::from(target)).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Idle openers from one address get a few handshake slots, not the controller's: past them
/// they are answered SYSTEM_BUSY at once, a holder of the secret from another address is
/// served meanwhile, and the idle ones are closed once the 2 s handshake time is up.
#[test]
fn idle_openers_cannot_lock_the_controller_out() {
    let dir = tempfile::tempdir().unwrap();
    let right = secret_file(dir.path(), "controller.secret", SECRET);
    let addr = PortBlock::allocate().listen_addr();
    let controller = ControllerProcess::start(1, &addr, &format!("1={addr}"), &right, dir.path());
    let opened = std::time::Instant::now();
    let mut idle: Vec<TcpStream> = (0..16).map(|_| idle_opener(&addr)).collect();
    let mut refused = idle_opener(&addr);
    let mut reply = Vec::new();
    let _ = refused.read_to_end(&mut reply);
    let frame = FrameDecoder::new(1 << 20)
        .decode(&reply)
        .ok()
        .flatten()
        .expect("the 17th idle opener is answered");
    assert_eq!(frame.header.status, Status::SystemBusy as u16);
    assert!(opened.elapsed() < Duration::from_secs(2), "refused at once");
    wait_until(Duration::from_secs(20), "a status with the secret", || {
        client(&controller.addr, Some(SECRET)).status().ok()
    });
    for stream in &mut idle {
        let mut byte = [0u8; 1];
        let _ = stream.read(&mut byte);
    }
    let closed_after = opened.elapsed();
    assert!(
        closed_after < Duration::from_millis(4_500),
        "idle openers held for {closed_after:?}"
    );
}
