//! The hot-path counter's driver: one real shard (glommio disk in a scratch directory, real
//! clock, SYNC_FLUSH) serving one real client connection on loopback through the broker's own
//! connection code ([`crate::net::connection::serve`]), and a blocking client on another
//! thread that sends one request at a time and waits for its answer (closed loop).
//!
//! Two scopes ([`Scope`]). On a real disk and socket most of what the shard thread allocates
//! is glommio's run loop: every turn of it allocates a few times (the preemption timer's
//! sources), and how many turns a request takes depends on timing. [`Scope::RingmqCode`]
//! therefore counts only while the tasks that serve a request are polled (the connection's
//! reader, writer and request tasks and the flusher: see
//! [`crate::counted_polls`]), which includes what glommio allocates inside those polls (its
//! I/O sources and timers) and is the same from run to run; `tests/hot_path.rs` holds it to
//! its budgets. [`Scope::ShardThread`] counts everything the shard thread allocates.
//!
//! The client reads the caller's counter around each steady-state phase. One request in
//! flight at a time makes the counts deterministic up to the odd allocation a phase boundary
//! catches (the flusher finishing a turn while the client already reads), which an average
//! over many requests rounds away. The shard's checkpoint and interval flush are set an hour
//! apart, so no checkpoint (dozens of allocations: files, paths, buffers) lands in a phase
//! however slow the disk. `benches/hot_path.rs` prints both scopes' counts.

use crate::clock::RealClock;
use crate::config::{BrokerConfig, FlushDiskType};
use crate::net::admission::Admission;
use crate::net::{connection, ShardNet};
use crate::protocol::frame::{encode_frame, FrameHeader, FRAME_HEADER_BYTES};
use crate::protocol::message::{MessageRef, ProduceRequest, PullRequest, TopicCreate};
use crate::protocol::{Opcode, Status};
use crate::shard::{handlers, Shard};
use crate::store::glommio_disk::GlommioDisk;
use glommio::net::TcpListener;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::rc::Rc;
use std::sync::mpsc;

const TOPIC: &str = "hot";

/// Per-request averages of one steady-state phase.
#[derive(Clone, Copy, Debug, Default)]
pub struct PhaseCounts {
    /// Heap allocations on the shard's thread per request.
    pub allocations: f64,
}

/// What [`measure`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Only while the tasks that serve a request are polled: ringmq's code on the real
    /// connection path, and glommio's work inside those polls. Does not depend on timing.
    RingmqCode,
    /// Everything the shard's thread allocates, glommio's run loop included.
    ShardThread,
}

/// What [`measure`] found, per request in steady state.
#[derive(Clone, Copy, Debug, Default)]
pub struct HotPathCounts {
    /// A produce of one message of `body_bytes`, answered once durable (SYNC_FLUSH).
    pub produce: PhaseCounts,
    /// A pull of one stored message.
    pub pull: PhaseCounts,
    /// A pull that parks at the queue's end and is woken by the produce sent right after it,
    /// less that produce's own count: the cost of parking and waking one long poll.
    pub parked_pull: PhaseCounts,
}

/// Runs the shard in `dir` (empty, on a file system that takes O_DIRECT) and the client:
/// `warmup` requests, then `requests` counted, for each phase. `set_counting` switches the
/// caller's counter on and off for the shard's thread (as `scope` says); `allocations` reads
/// it (from any thread).
pub fn measure(
    dir: &Path,
    scope: Scope,
    body_bytes: usize,
    warmup: usize,
    requests: usize,
    set_counting: fn(bool),
    allocations: fn() -> u64,
) -> HotPathCounts {
    let config = shard_config(dir);
    let (addr_tx, addr_rx) = mpsc::channel();
    let server = std::thread::spawn(move || {
        glommio::LocalExecutorBuilder::default()
            .spawn(move || serve_one(config, addr_tx, scope, set_counting))
            .expect("a glommio executor")
            .join()
            .expect("the shard thread")
    });
    let addr = addr_rx.recv().expect("the shard's address");
    let counts = drive(addr, body_bytes, warmup, requests, allocations);
    server.join().expect("the shard thread");
    counts
}

fn shard_config(dir: &Path) -> BrokerConfig {
    BrokerConfig {
        store_dir: dir.to_path_buf(),
        flush_disk_type: FlushDiskType::SyncFlush,
        // Room for every phase without a segment roll, small enough to zero-fill quickly.
        segment_size_bytes: 64 << 20,
        max_message_bytes: 1 << 16,
        // No checkpoint and no interval flush within a phase (see the module docs): SYNC_FLUSH
        // flushes for every produce anyway, and the final checkpoint runs at the stop.
        checkpoint_interval_ms: 3_600_000,
        flush_interval_ms: 3_600_000,
        // The count must not depend on how full the machine's disk is: never DISK_FULL, and
        // the cleaner never looks for space to free (it has only the segment being written).
        disk_max_used_space_ratio: 0.999,
        disk_space_warning_ratio: 1.0,
        ..BrokerConfig::default()
    }
}

async fn serve_one(
    config: BrokerConfig,
    addr_tx: mpsc::Sender<std::net::SocketAddr>,
    scope: Scope,
    set_counting: fn(bool),
) {
    match scope {
        Scope::RingmqCode => crate::counted_polls::set_switch(Some(set_counting)),
        Scope::ShardThread => set_counting(true),
    }
    let shard = Shard::open_for_test(GlommioDisk::new(), Rc::new(RealClock), config.clone())
        .await
        .expect("open the shard");
    let background = shard.spawn_background();
    let mut create = Vec::new();
    TopicCreate {
        name: TOPIC.to_string(),
        queue_count: 1,
    }
    .encode(&mut create);
    let created = handlers::handle(&shard, Opcode::TopicCreate, &create).await;
    assert_eq!(created.status, Status::Ok, "creating the topic");
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    addr_tx
        .send(listener.local_addr().expect("its address"))
        .expect("the client waits");
    let stream = listener.accept().await.expect("the client connects");
    let admission = Admission::new(&config);
    let ticket = admission
        .admit(std::net::Ipv4Addr::LOCALHOST.into())
        .expect("one connection is admitted");
    let net = ShardNet::new(&config, admission, None);
    connection::serve(shard.clone(), net, stream, ticket).await;
    shard.stop(background).await.expect("a clean stop");
    crate::counted_polls::set_switch(None);
    set_counting(false);
}

/// The blocking client: each phase's requests one at a time.
fn drive(
    addr: std::net::SocketAddr,
    body_bytes: usize,
    warmup: usize,
    requests: usize,
    allocations: fn() -> u64,
) -> HotPathCounts {
    let mut client = Client::connect(addr);
    let body = vec![b'x'; body_bytes];
    let produce = client.frame(Opcode::Produce, |out| {
        ProduceRequest {
            topic: TOPIC,
            queue: 0,
            messages: vec![MessageRef {
                born_timestamp_ms: 1_700_000_000_000,
                key: b"",
                properties: b"",
                body: &body,
            }],
        }
        .encode(out)
    });
    let phase = |client: &mut Client, run: &mut dyn FnMut(&mut Client, usize)| {
        for i in 0..warmup {
            run(client, i);
        }
        let before = allocations();
        for i in warmup..warmup + requests {
            run(client, i);
        }
        PhaseCounts {
            allocations: (allocations() - before) as f64 / requests as f64,
        }
    };
    let produced = phase(&mut client, &mut |c, _| c.call(&produce, Status::Ok));
    let pull_at = |offset: usize, max_wait_ms: u32| {
        let mut out = Vec::new();
        PullRequest {
            topic: TOPIC.to_string(),
            queue: 0,
            offset: offset as u64,
            max_messages: 1,
            max_bytes: 1 << 20,
            max_wait_ms,
        }
        .encode(&mut out);
        out
    };
    // Pull frames are built before each phase: building them is the client's work.
    let pulls: Vec<Vec<u8>> = (0..warmup + requests)
        .map(|i| client.frame(Opcode::Pull, |out| out.extend(pull_at(i, 0))))
        .collect();
    let pulled = phase(&mut client, &mut |c, i| c.call(&pulls[i], Status::Ok));
    // The queue ends after the produce phase, and each round below adds one message.
    let end = warmup + requests;
    let parked: Vec<Vec<u8>> = (0..warmup + requests)
        .map(|i| client.frame(Opcode::Pull, |out| out.extend(pull_at(end + i, 60_000))))
        .collect();
    let park_and_wake = phase(&mut client, &mut |c, i| {
        // The pull parks at the end; the produce behind it on the same connection wakes it.
        c.send(&parked[i]);
        c.send(&produce);
        c.receive(Status::Ok);
        c.receive(Status::Ok);
    });
    drop(client);
    HotPathCounts {
        produce: produced,
        pull: pulled,
        parked_pull: PhaseCounts {
            allocations: park_and_wake.allocations - produced.allocations,
        },
    }
}

struct Client {
    stream: TcpStream,
    next_id: u64,
    answer: Vec<u8>,
}

impl Client {
    fn connect(addr: std::net::SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to the shard");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            next_id: 1,
            answer: Vec::new(),
        }
    }

    fn frame(&mut self, opcode: Opcode, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut encoded = Vec::new();
        body(&mut encoded);
        let mut frame = Vec::new();
        encode_frame(
            &mut frame,
            FrameHeader::request(opcode, self.next_id),
            &encoded,
        );
        self.next_id += 1;
        frame
    }

    fn send(&mut self, frame: &[u8]) {
        self.stream.write_all(frame).expect("send a request");
    }

    fn receive(&mut self, status: Status) {
        let mut length = [0u8; 4];
        self.stream.read_exact(&mut length).expect("an answer");
        let total = 4 + u32::from_le_bytes(length) as usize;
        self.answer.resize(total, 0);
        self.stream
            .read_exact(&mut self.answer[4..])
            .expect("the answer's rest");
        assert!(total >= FRAME_HEADER_BYTES, "a whole header");
        let got = u16::from_le_bytes([self.answer[10], self.answer[11]]);
        assert_eq!(got, status as u16, "answer status");
    }

    fn call(&mut self, frame: &[u8], status: Status) {
        self.send(frame);
        self.receive(status);
    }
}
