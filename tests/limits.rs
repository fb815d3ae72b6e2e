//! Connection limits and timeouts against the real broker on loopback: stalled partial frames
//! (small and large) are closed after `request_read_timeout_ms` without growing the broker's
//! memory, idle
//! connections are closed after `connections_max_idle_ms` while a long-poll pull is not idle,
//! `max_connections_per_ip` and `max_connections` refuse with `SYSTEM_BUSY`, a peer that never
//! reads is closed after `response_write_timeout_ms`, and 64 connections each holding a 15 MiB
//! partial frame stay within a memory cgroup's limit (no OOM kill) while the broker serves.

mod common;

use common::{temp_store, wait_until, Broker};
use ringmq::protocol::frame::{encode_frame, FrameHeader, FRAME_HEADER_BYTES};
use ringmq::protocol::message::{MessageRef, PullRequest};
use ringmq::protocol::{Opcode, Status};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn frame(opcode: Opcode, request_id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&mut out, FrameHeader::request(opcode, request_id), body);
    out
}

/// A socket from `source` (an address of 127.0.0.0/8) to `addr`.
fn connect_from(source: &str, addr: &str) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    let source: SocketAddr = format!("{source}:0").parse().expect("source");
    socket
        .bind(&source.into())
        .expect("bind the source address");
    let addr: SocketAddr = addr.parse().expect("broker address");
    socket.connect(&addr.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

struct RawResponse {
    status: u16,
    request_id: u64,
    body: Vec<u8>,
}

impl RawResponse {
    fn message(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The next response frame, or `None` when the broker closed the connection.
fn read_response(s: &mut TcpStream) -> Option<RawResponse> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    match s.read_exact(&mut header) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
            ) =>
        {
            return None
        }
        Err(e) => panic!("reading a response: {e}"),
    }
    let length = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
    let mut body = vec![0u8; length + 4 - FRAME_HEADER_BYTES];
    s.read_exact(&mut body).expect("response body");
    Some(RawResponse {
        status: u16::from_le_bytes(header[10..12].try_into().unwrap()),
        request_id: u64::from_le_bytes(header[12..20].try_into().unwrap()),
        body,
    })
}

fn assert_closed(s: &mut TcpStream, case: &str) {
    if let Some(r) = read_response(s) {
        panic!(
            "{case}: status {} instead of a close: {}",
            r.status,
            r.message()
        );
    }
}

fn ping(s: &mut TcpStream, request_id: u64) {
    s.write_all(&frame(Opcode::Ping, request_id, &[]))
        .expect("send ping");
    let r = read_response(s).expect("ping answered");
    assert_eq!((r.status, r.request_id), (Status::Ok as u16, request_id));
}

/// The broker's resident memory, from `/proc/<pid>/status`.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// Most memory the broker may grow by while 200 stalled connections are open: each holds a
/// task, two descriptors and a 64 KiB read buffer (12.5 MiB for all at worst), so 32 MiB
/// leaves room for allocator slack and nothing for a leak or a buffer per frame.
const STALLED_RSS_BOUND_BYTES: u64 = 32 * MIB;

#[test]
fn stalled_partial_frames_are_closed_within_the_read_timeout() {
    const SOCKETS: usize = 200;
    const TIMEOUT: Duration = Duration::from_millis(2_000);
    let dir = temp_store();
    let config = format!("request_read_timeout_ms = {}", TIMEOUT.as_millis());
    let broker = Broker::start_with_config(dir.path(), &config, &["--shards", "2"]);
    broker.client().ping().expect("ping");
    let pid = broker.pid().expect("running");
    let baseline = rss_bytes(pid);
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // Ten bytes of a ping header: length, magic, version, flags, opcode; the rest never comes.
    let partial = &frame(Opcode::Ping, 7, &[])[..10];
    let mut stalled: Vec<(TcpStream, Instant)> = (0..SOCKETS)
        .map(|_| {
            let mut s = connect_from("127.0.0.1", &broker.addr);
            // Taken before the write: the broker's read timer starts when it reads the bytes,
            // which can be before write_all returns here (once it closed 9 ms "early").
            let sent = Instant::now();
            s.write_all(partial).expect("send 10 bytes");
            (s, sent)
        })
        .collect();
    for (i, (s, sent)) in stalled.iter_mut().enumerate() {
        let r = read_response(s).unwrap_or_else(|| panic!("socket {i}: closed without a status"));
        assert_eq!(r.status, Status::BadRequest as u16, "{}", r.message());
        assert!(
            r.message().starts_with("request_read_timeout_ms"),
            "{}",
            r.message()
        );
        assert_closed(s, "a stalled partial frame");
        let after = sent.elapsed();
        assert!(after >= TIMEOUT, "socket {i} closed early, after {after:?}");
        assert!(
            after <= TIMEOUT + Duration::from_secs(1),
            "socket {i} closed after {after:?}"
        );
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let grown = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    println!(
        "RSS baseline {} KiB, grown by at most {} KiB with {SOCKETS} stalled sockets",
        baseline / 1024,
        grown / 1024
    );
    assert!(
        grown < STALLED_RSS_BOUND_BYTES,
        "RSS grew by {grown} bytes, over {STALLED_RSS_BOUND_BYTES}"
    );
    broker.client().ping().expect("the broker still serves");
}

#[test]
fn a_large_frame_that_stalls_is_answered_with_its_request_id() {
    let dir = temp_store();
    let config = "request_read_timeout_ms = 1000";
    let broker = Broker::start_with_config(dir.path(), config, &["--shards", "1"]);
    // Larger than the 64 KiB read buffer: read into its own buffer, from the shard's budget.
    let whole = frame(Opcode::Ping, 42, &vec![0u8; 1024 * 1024]);
    let mut s = connect_from("127.0.0.1", &broker.addr);
    s.write_all(&whole[..200 * 1024]).expect("send a fifth");
    let r = read_response(&mut s).expect("a status before the close");
    assert_eq!(r.status, Status::BadRequest as u16, "{}", r.message());
    assert_eq!(r.request_id, 42);
    assert_closed(&mut s, "a stalled large frame");
    let mut whole_sender = connect_from("127.0.0.1", &broker.addr);
    whole_sender.write_all(&whole).expect("send all of it");
    let r = read_response(&mut whole_sender).expect("answered");
    assert_eq!((r.status, r.request_id), (Status::Ok as u16, 42));
}

#[test]
fn idle_connections_close_but_a_long_poll_pull_is_not_idle() {
    const IDLE: Duration = Duration::from_millis(1_500);
    let dir = temp_store();
    let config = format!("connections_max_idle_ms = {}", IDLE.as_millis());
    let broker = Broker::start_with_config(dir.path(), &config, &["--shards", "1"]);
    broker.client().create_topic("idle", 1).expect("create");
    let mut idle = connect_from("127.0.0.1", &broker.addr);
    let opened = Instant::now();
    let mut polling = connect_from("127.0.0.1", &broker.addr);
    let pull = PullRequest {
        topic: "idle".into(),
        queue: 0,
        offset: 0,
        max_messages: 1,
        max_bytes: 1 << 20,
        max_wait_ms: (IDLE * 3).as_millis() as u32,
    };
    let mut body = Vec::new();
    pull.encode(&mut body);
    polling
        .write_all(&frame(Opcode::Pull, 1, &body))
        .expect("send pull");
    assert_closed(&mut idle, "an idle connection");
    assert!(
        opened.elapsed() >= IDLE,
        "closed after {:?}",
        opened.elapsed()
    );
    let r = read_response(&mut polling).expect("the long poll is answered, not closed");
    assert_eq!(r.status, Status::NoNewMessage as u16, "{}", r.message());
    assert!(opened.elapsed() >= IDLE * 3);
    ping(&mut polling, 2);
}

#[test]
fn the_51st_connection_from_one_address_is_refused_while_another_is_served() {
    const PER_IP: usize = 50;
    let dir = temp_store();
    let config = format!("max_connections_per_ip = {PER_IP}");
    let broker = Broker::start_with_config(dir.path(), &config, &["--shards", "2"]);
    let mut admitted: Vec<TcpStream> = (0..PER_IP)
        .map(|i| {
            let mut s = connect_from("127.0.0.1", &broker.addr);
            ping(&mut s, i as u64 + 1);
            s
        })
        .collect();
    let mut over = connect_from("127.0.0.1", &broker.addr);
    let r = read_response(&mut over).expect("a refusal, not a bare close");
    assert_eq!(r.status, Status::SystemBusy as u16, "{}", r.message());
    assert_eq!(r.request_id, 0);
    assert!(
        r.message().starts_with("max_connections_per_ip: 127.0.0.1"),
        "{}",
        r.message()
    );
    assert_closed(&mut over, "the 51st connection");
    // The Rust client, which sends at once, gets the status too rather than a reset.
    match ringmq::client::Client::connect(&broker.addr) {
        Err(ringmq::client::ClientError::Status { status, message }) => {
            assert_eq!(status, Status::SystemBusy, "{message}");
            assert!(message.starts_with("max_connections_per_ip"), "{message}");
        }
        Err(e) => panic!("the client saw {e} instead of SYSTEM_BUSY"),
        Ok(_) => panic!("the client was admitted over the limit"),
    }
    let mut other = connect_from("127.0.0.2", &broker.addr);
    ping(&mut other, 1);
    // A closed connection frees its place.
    admitted
        .pop()
        .expect("one")
        .shutdown(Shutdown::Both)
        .unwrap();
    wait_until(Duration::from_secs(10), "a freed place", || {
        let mut s = connect_from("127.0.0.1", &broker.addr);
        s.write_all(&frame(Opcode::Ping, 1, &[])).ok()?;
        let r = read_response(&mut s)?;
        (r.status == Status::Ok as u16).then_some(())
    });
    for (i, s) in admitted.iter_mut().enumerate() {
        ping(s, 100 + i as u64);
    }
}

#[test]
fn max_connections_counts_every_address_and_shard() {
    const TOTAL: usize = 20;
    let dir = temp_store();
    let config = format!("max_connections = {TOTAL}");
    let broker = Broker::start_with_config(dir.path(), &config, &["--shards", "2"]);
    let shard_port = format!("127.0.0.1:{}", broker.shard_ports[1]);
    let _admitted: Vec<TcpStream> = (0..TOTAL)
        .map(|i| {
            let source = format!("127.0.0.{}", 1 + i % 4);
            let addr = if i % 2 == 0 {
                &broker.addr
            } else {
                &shard_port
            };
            let mut s = connect_from(&source, addr);
            ping(&mut s, 1);
            s
        })
        .collect();
    let mut over = connect_from("127.0.0.9", &shard_port);
    let r = read_response(&mut over).expect("a refusal");
    assert_eq!(r.status, Status::SystemBusy as u16, "{}", r.message());
    assert!(
        r.message().starts_with("max_connections:"),
        "{}",
        r.message()
    );
    assert_closed(&mut over, "one connection over max_connections");
}

#[test]
fn a_peer_that_never_reads_is_closed_after_the_write_timeout() {
    let dir = temp_store();
    let config = "response_write_timeout_ms = 1000";
    let broker = Broker::start_with_config(dir.path(), config, &["--shards", "1"]);
    let mut client = broker.client();
    client.create_topic("unread", 1).expect("create");
    common::produce_filler(&mut client, "unread", 0, 32, 8 * 1024);
    let pull = PullRequest {
        topic: "unread".into(),
        queue: 0,
        offset: 0,
        max_messages: 32,
        max_bytes: 1 << 20,
        max_wait_ms: 0,
    };
    let mut pull_body = Vec::new();
    pull.encode(&mut pull_body);
    let mut slow = connect_from("127.0.0.1", &broker.addr);
    slow.set_write_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // Every answer is 256 KiB: the broker's writes stall once the socket buffers are full,
    // its reads stop once a connection's window of requests is in flight, and the requests
    // fill the buffers the other way until the broker gives up on the connection.
    let mut next_id = 1u64;
    let err = loop {
        assert!(
            next_id < 2_000_000,
            "the broker kept a connection that never reads"
        );
        let requests: Vec<u8> = (next_id..next_id + 1000)
            .flat_map(|id| frame(Opcode::Pull, id, &pull_body))
            .collect();
        next_id += 1000;
        if let Err(e) = slow.write_all(&requests) {
            break e;
        }
    };
    assert!(
        matches!(
            err.kind(),
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
        ),
        "closed by the broker, not timed out here: {err}"
    );
    broker.client().ping().expect("the broker still serves");
}

/// A memory cgroup for the broker, removed on drop (after the broker has exited).
struct MemoryCgroup {
    dir: PathBuf,
    version: u8,
}

impl MemoryCgroup {
    /// A child cgroup with `limit` bytes of memory, on cgroup v2 if it offers the memory
    /// controller, else on the v1 memory hierarchy; `None` (with the reason) when neither can
    /// be written.
    fn create(limit: u64) -> Result<MemoryCgroup, String> {
        let name = format!("ringmq-limits-{}", std::process::id());
        let mut reasons = Vec::new();
        for (root, version) in cgroup_roots() {
            let dir = root.join(&name);
            match MemoryCgroup::create_in(&root, &dir, version, limit) {
                Ok(cgroup) => return Ok(cgroup),
                Err(e) => {
                    let _ = std::fs::remove_dir(&dir);
                    reasons.push(format!("{} (v{version}): {e}", root.display()));
                }
            }
        }
        Err(format!("no writable memory cgroup: {}", reasons.join("; ")))
    }

    fn create_in(root: &Path, dir: &Path, version: u8, limit: u64) -> Result<Self, String> {
        if version == 2 {
            let controllers = std::fs::read_to_string(root.join("cgroup.controllers"))
                .map_err(|e| e.to_string())?;
            if !controllers.split_whitespace().any(|c| c == "memory") {
                return Err("the memory controller is not available".into());
            }
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory");
        }
        std::fs::create_dir(dir).map_err(|e| format!("mkdir: {e}"))?;
        let cgroup = MemoryCgroup {
            dir: dir.to_path_buf(),
            version,
        };
        let (limit_file, swap_file) = match version {
            2 => ("memory.max", "memory.swap.max"),
            _ => ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"),
        };
        cgroup.write(limit_file, &limit.to_string())?;
        if dir.join(swap_file).exists() {
            cgroup.write(swap_file, &limit.to_string())?;
        }
        Ok(cgroup)
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        std::fs::write(self.dir.join(file), value).map_err(|e| format!("{file}: {e}"))
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    fn adopt(&self, pid: u32) {
        self.write("cgroup.procs", &pid.to_string())
            .expect("move the broker into the cgroup");
    }

    /// OOM kills inside the cgroup so far.
    fn oom_kills(&self) -> u64 {
        let file = if self.version == 2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        self.read(file)
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no oom_kill count in {file}"))
    }

    fn peak_bytes(&self) -> u64 {
        let file = if self.version == 2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        self.read(file).trim().parse().unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Mounted cgroup hierarchies that may hold a memory controller: v2 first, then v1 memory.
fn cgroup_roots() -> Vec<(PathBuf, u8)> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut roots = Vec::new();
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 4 {
            continue;
        }
        match fields[2] {
            "cgroup2" => roots.insert(0, (PathBuf::from(fields[1]), 2)),
            "cgroup" if fields[3].split(',').any(|o| o == "memory") => {
                roots.push((PathBuf::from(fields[1]), 1))
            }
            _ => {}
        }
    }
    roots
}

/// Partial frames of 64 connections together (960 MiB) far exceed this, while the budget
/// (two shards of 64 MiB) and the broker's own growth fit with room to spare.
const CGROUP_LIMIT_BYTES: u64 = 320 * MIB;

#[test]
fn large_partial_frames_stay_within_the_budget_under_a_memory_limit() {
    const CONNECTIONS: usize = 64;
    const FRAME_BYTES: usize = 15 * 1024 * 1024;
    const BUDGET_BYTES: u64 = 64 * MIB;
    let cgroup = match MemoryCgroup::create(CGROUP_LIMIT_BYTES) {
        Ok(cgroup) => cgroup,
        Err(reason) => {
            println!("skipping: {reason}");
            return;
        }
    };
    let dir = temp_store();
    let config = format!(
        "max_frame_bytes = {}\nshard_inflight_budget_bytes = {BUDGET_BYTES}\nrequest_read_timeout_ms = 120000",
        16 * MIB
    );
    let broker = Broker::start_with_config(dir.path(), &config, &["--shards", "2"]);
    cgroup.adopt(broker.pid().expect("running"));
    // Every frame declares 15 MiB and stops 1 KiB short of it.
    let mut whole = frame(
        Opcode::Ping,
        1,
        &vec![0u8; FRAME_BYTES - FRAME_HEADER_BYTES],
    );
    whole.truncate(FRAME_BYTES - 1024);
    let whole = Arc::new(whole);
    let senders: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (addr, whole) = (broker.addr.clone(), whole.clone());
            thread::spawn(move || {
                let mut s = connect_from("127.0.0.1", &addr);
                s.set_write_timeout(Some(Duration::from_secs(120))).unwrap();
                s.write_all(&whole).expect("send a partial frame");
                s
            })
        })
        .collect();
    // A sender finishes once the broker holds its frame or has answered SYSTEM_BUSY and
    // dropped the bytes.
    let mut sockets: Vec<TcpStream> = senders
        .into_iter()
        .map(|t| t.join().expect("sender"))
        .collect();
    let mut busy = 0;
    for s in &mut sockets {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut header = [0u8; FRAME_HEADER_BYTES];
        match s.read_exact(&mut header) {
            Ok(()) => {
                assert_eq!(
                    u16::from_le_bytes(header[10..12].try_into().unwrap()),
                    Status::SystemBusy as u16
                );
                busy += 1;
            }
            Err(e) => assert!(
                matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "{e}"
            ),
        }
    }
    let held = CONNECTIONS - busy;
    println!(
        "{held} frames held, {busy} answered SYSTEM_BUSY; cgroup peak {} MiB of {} MiB",
        cgroup.peak_bytes() / MIB,
        CGROUP_LIMIT_BYTES / MIB
    );
    assert_eq!(cgroup.oom_kills(), 0, "the broker was OOM-killed");
    let per_shard = (BUDGET_BYTES * 3 / 4) as usize / FRAME_BYTES;
    assert!(held >= 1 && held <= 2 * per_shard, "{held} frames held");
    let mut client = broker.client();
    client.create_topic("served", 1).expect("create");
    let message = MessageRef {
        born_timestamp_ms: 0,
        key: b"",
        properties: b"",
        body: b"still serving",
    };
    client
        .produce("served", Some(0), &[message])
        .expect("produce");
    drop(sockets);
    drop(broker);
    drop(cgroup);
}
