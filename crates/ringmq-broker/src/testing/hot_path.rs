//! The hot-path counter's driver: one real shard (glommio disk in a scratch directory, real
//! clock, SYNC_FLUSH) serving one real client connection on loopback through the broker's own
//! connection code ([`crate::net::connection::serve`]), and a blocking client on another
//! thread that sends one request at a time and waits for its answer (closed loop).
//!
//! On a real disk and socket most of what the shard thread allocates is glommio's run loop:
//! every turn of it allocates a few times (the preemption timer's sources), and how many turns
//! a request takes depends on timing. [`measure_in_process`] therefore counts only what is
//! allocated while ringmq's own code runs: the same phases, one request at a time through
//! [`handlers::handle_client`] and the answer framed as the connection's writer frames it,
//! each request's future and the flusher's wrapped in [`Counted`], which switches counting on
//! only while it is polled. That count is the same from run to run (up to a flush that now
//! and then covers a warm-up request) and is what `tests/hot_path.rs` holds to its bounds.
//!
//! What [`measure`] counts by the caller's global allocator: only the executor thread's
//! allocations count (the caller's `mark_counted` flags that thread), and the client reads the
//! caller's counter around each steady-state phase. One request in flight at a time makes the
//! counts deterministic up to the odd allocation a phase boundary catches, which an average
//! over many requests rounds away. `benches/hot_path.rs` prints the counts;
//! `tests/hot_path.rs` asserts their bounds.

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
use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::mpsc;
use std::task::{Context, Poll};

const TOPIC: &str = "hot";

/// Per-request averages of one steady-state phase.
#[derive(Clone, Copy, Debug, Default)]
pub struct PhaseCounts {
    /// Heap allocations on the shard's thread per request.
    pub allocations: f64,
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
/// `warmup` requests, then `requests` counted, for each phase. `set_counting(true)` runs
/// first on the shard's thread (everything it allocates counts); `allocations` reads the
/// caller's counter (from any thread).
pub fn measure(
    dir: &Path,
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
            .spawn(move || serve_one(config, addr_tx, set_counting))
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
        ..BrokerConfig::default()
    }
}

async fn serve_one(
    config: BrokerConfig,
    addr_tx: mpsc::Sender<std::net::SocketAddr>,
    set_counting: fn(bool),
) {
    set_counting(true);
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
    let net = ShardNet::new(&config, admission);
    connection::serve(shard.clone(), net, stream, ticket).await;
    shard.stop(background).await.expect("a clean stop");
}

/// A future that counts allocations (through the caller's switch) only while it is polled.
pub struct Counted<F> {
    inner: Pin<Box<F>>,
    set_counting: fn(bool),
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        (self.set_counting)(true);
        let polled = self.inner.as_mut().poll(cx);
        (self.set_counting)(false);
        polled
    }
}

fn counted<F: Future>(inner: F, set_counting: fn(bool)) -> Counted<F> {
    Counted {
        inner: Box::pin(inner),
        set_counting,
    }
}

/// [`measure`]'s phases without the socket, counting only ringmq's own code (see the module
/// docs): `handle_client` for each request on a real shard in `dir` (glommio disk, SYNC_FLUSH),
/// and the flusher. `set_counting` switches the caller's counter on and off for this thread.
pub fn measure_in_process(
    dir: &Path,
    body_bytes: usize,
    warmup: usize,
    requests: usize,
    set_counting: fn(bool),
    allocations: fn() -> u64,
) -> HotPathCounts {
    let config = shard_config(dir);
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let shard = Shard::open_for_test(GlommioDisk::new(), Rc::new(RealClock), config)
                .await
                .expect("open the shard");
            let background =
                shard.spawn_background_wrapping_flusher(|flusher| counted(flusher, set_counting));
            let mut create = Vec::new();
            TopicCreate {
                name: TOPIC.to_string(),
                queue_count: 1,
            }
            .encode(&mut create);
            let created = handlers::handle(&shard, Opcode::TopicCreate, &create).await;
            assert_eq!(created.status, Status::Ok, "creating the topic");
            let body = vec![b'x'; body_bytes];
            let mut produce = Vec::new();
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
            .encode(&mut produce);
            let pull = |offset: usize, max_wait_ms: u32| {
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
            let pulls: Vec<Vec<u8>> = (0..warmup + requests).map(|i| pull(i, 0)).collect();
            let end = warmup + requests;
            let parked: Vec<Vec<u8>> = (0..warmup + requests)
                .map(|i| pull(end + i, 60_000))
                .collect();
            let answer = std::cell::RefCell::new(Vec::with_capacity(1 << 16));
            let shard = &shard;
            let (produce, pulls, parked, answer) = (&produce, &pulls, &parked, &answer);
            let produced = phase_in_process(warmup, requests, allocations, |_| {
                counted(
                    async move {
                        let reply = handlers::handle_client(shard, Opcode::Produce, produce).await;
                        frame_answer(answer, Opcode::Produce, reply);
                    },
                    set_counting,
                )
            })
            .await;
            let pulled = phase_in_process(warmup, requests, allocations, |i| {
                counted(
                    async move {
                        let reply = handlers::handle_client(shard, Opcode::Pull, &pulls[i]).await;
                        frame_answer(answer, Opcode::Pull, reply);
                    },
                    set_counting,
                )
            })
            .await;
            let both = phase_in_process(warmup, requests, allocations, |i| {
                counted(
                    async move {
                        let (pulled, produced) = futures_lite::future::zip(
                            handlers::handle_client(shard, Opcode::Pull, &parked[i]),
                            handlers::handle_client(shard, Opcode::Produce, produce),
                        )
                        .await;
                        frame_answer(answer, Opcode::Pull, pulled);
                        frame_answer(answer, Opcode::Produce, produced);
                    },
                    set_counting,
                )
            })
            .await;
            shard.stop(background).await.expect("a clean stop");
            HotPathCounts {
                produce: produced,
                pull: pulled,
                parked_pull: PhaseCounts {
                    allocations: both.allocations - produced.allocations,
                },
            }
        })
        .expect("a glommio executor")
        .join()
        .expect("the shard thread")
}

/// Frames an answer into the reused `answer` buffer, as the connection's writer does.
fn frame_answer(
    answer: &std::cell::RefCell<Vec<u8>>,
    opcode: Opcode,
    reply: crate::shard::mesh::Reply,
) {
    assert_eq!(reply.status, Status::Ok, "answer status");
    let mut answer = answer.borrow_mut();
    answer.clear();
    encode_frame(
        &mut answer,
        FrameHeader::response(opcode as u16, reply.status, 1),
        &reply.body,
    );
}

async fn phase_in_process<'a, F, Fut>(
    warmup: usize,
    requests: usize,
    allocations: fn() -> u64,
    mut run: F,
) -> PhaseCounts
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + 'a,
{
    for i in 0..warmup {
        run(i).await;
    }
    let before = allocations();
    for i in warmup..warmup + requests {
        run(i).await;
    }
    PhaseCounts {
        allocations: (allocations() - before) as f64 / requests as f64,
    }
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
