//! The real broker against clients that break the protocol: each bad connection gets an error
//! answer where one is possible and is closed, while a well-behaved client connected beforehand
//! keeps producing and consuming, and the broker stays up. Also many connections at once, and a
//! reader that never reads its responses.

mod common;

use common::{temp_store, Broker};
use ringmq::client::Client;
use ringmq::protocol::frame::{encode_frame, FrameHeader, FRAME_HEADER_BYTES};
use ringmq::protocol::message::{MessageRef, PullRequest};
use ringmq::protocol::{Opcode, Status};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Barrier};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// `max_frame_bytes` in the harness configuration.
const BROKER_MAX_FRAME_BYTES: u32 = 4 * 1024 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(20);

fn raw(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

fn frame(opcode: u16, request_id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let header = FrameHeader {
        flags: 0,
        opcode,
        status: 0,
        request_id,
    };
    encode_frame(&mut out, header, body);
    out
}

struct RawResponse {
    flags: u8,
    opcode: u16,
    status: u16,
    request_id: u64,
    body: Vec<u8>,
}

/// Reads one response frame; `None` on a clean end of stream.
fn read_response(s: &mut TcpStream) -> Option<RawResponse> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    match s.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return None,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
        Err(e) => panic!("reading a response: {e}"),
    }
    let length = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
    assert_eq!(&header[4..6], &[0x52, 0x4d], "response magic");
    let mut body = vec![0u8; length - (FRAME_HEADER_BYTES - 4)];
    s.read_exact(&mut body).expect("response body");
    assert_eq!(
        crc32c::crc32c(&body),
        u32::from_le_bytes(header[20..24].try_into().unwrap())
    );
    Some(RawResponse {
        flags: header[7],
        opcode: u16::from_le_bytes(header[8..10].try_into().unwrap()),
        status: u16::from_le_bytes(header[10..12].try_into().unwrap()),
        request_id: u64::from_le_bytes(header[12..20].try_into().unwrap()),
        body,
    })
}

/// The broker closes the connection: the next read sees end of stream (or a reset).
fn assert_closed(s: &mut TcpStream, case: &str) {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("{case}: {n} more bytes instead of a close: {:?}", &buf[..n]),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("{case}: connection not closed: {e}"),
    }
}

fn assert_error_then_close(s: &mut TcpStream, case: &str, status: Status, request_id: u64) {
    let r = read_response(s).unwrap_or_else(|| panic!("{case}: closed without an answer"));
    assert_eq!(r.flags & 1, 1, "{case}: response flag");
    assert_eq!(
        r.status,
        status as u16,
        "{case}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.request_id, request_id, "{case}: request id");
    assert!(!r.body.is_empty(), "{case}: error answers carry a message");
    assert_closed(s, case);
}

/// A well-behaved client producing and consuming in a loop; it reports each completed round
/// and panics (closing the channel) on any failure.
struct Bystander {
    rounds: Receiver<u64>,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<u64>,
}

impl Bystander {
    fn start(addr: &str, topic: &'static str) -> Bystander {
        let mut client = Client::connect(addr).expect("bystander connect");
        client.create_topic(topic, 2).expect("bystander topic");
        let (tx, rounds) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = thread::spawn(move || {
            let mut round = 0u64;
            while !stopped.load(Ordering::Relaxed) {
                let queue = (round % 2) as u32;
                let body = format!("bystander-{round}");
                let message = MessageRef {
                    born_timestamp_ms: round,
                    key: b"",
                    properties: b"",
                    body: body.as_bytes(),
                };
                let ack = client
                    .produce(topic, Some(queue), &[message])
                    .expect("produce");
                assert_eq!(ack.status, Status::Ok);
                let pulled = client
                    .pull(topic, queue, ack.response.base_offset, 1, 1 << 16, 0)
                    .expect("pull");
                assert_eq!(pulled.messages[0].body, body.as_bytes());
                round += 1;
                let _ = tx.send(round);
            }
            round
        });
        Bystander {
            rounds,
            stop,
            handle,
        }
    }

    /// Waits until the bystander completes a round that started after this call.
    fn still_working(&self, case: &str) {
        while self.rounds.try_recv().is_ok() {}
        for _ in 0..2 {
            self.rounds
                .recv_timeout(IO_TIMEOUT)
                .unwrap_or_else(|e| panic!("after {case}: bystander stopped working: {e}"));
        }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("bystander panicked")
    }
}

#[test]
fn bad_frames_close_only_their_own_connection() {
    let dir = temp_store();
    let mut broker = Broker::start(dir.path(), &["--shards", "2"]);
    let bystander = Bystander::start(&broker.addr, "bystander");
    bystander.still_working("start");
    let produce = Opcode::Produce as u16;

    // Header claiming a frame above max_frame_bytes: refused before any body arrives.
    let mut s = raw(&broker.addr);
    let mut header = frame(produce, 7, b"");
    header[0..4].copy_from_slice(&(BROKER_MAX_FRAME_BYTES + 100).to_le_bytes());
    s.write_all(&header).unwrap();
    assert_error_then_close(&mut s, "oversized", Status::FrameTooLarge, 7);
    bystander.still_working("oversized");

    // Body crc mismatch.
    let mut s = raw(&broker.addr);
    let mut bad = frame(Opcode::Ping as u16, 8, b"abc");
    bad[20] ^= 0xff;
    s.write_all(&bad).unwrap();
    assert_error_then_close(&mut s, "bad crc", Status::BadCrc, 8);
    bystander.still_working("bad crc");

    // Wrong magic: the request id cannot be trusted, the answer carries 0.
    let mut s = raw(&broker.addr);
    let mut bad = frame(Opcode::Ping as u16, 9, b"");
    bad[4] = b'X';
    s.write_all(&bad).unwrap();
    assert_error_then_close(&mut s, "bad magic", Status::BadMagic, 0);
    bystander.still_working("bad magic");

    // Unsupported version.
    let mut s = raw(&broker.addr);
    let mut bad = frame(Opcode::Ping as u16, 10, b"");
    bad[6] = 9;
    s.write_all(&bad).unwrap();
    assert_error_then_close(&mut s, "bad version", Status::UnsupportedVersion, 10);
    bystander.still_working("bad version");

    // Garbage: not a ringmq frame at all.
    let mut s = raw(&broker.addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s).expect("garbage: an answer before the close");
    assert!(
        r.status == Status::BadMagic as u16 || r.status == Status::FrameTooLarge as u16,
        "garbage answered with status {}",
        r.status
    );
    assert_eq!(r.opcode, 0, "unparsed frames are answered with opcode 0");
    assert_closed(&mut s, "garbage");
    bystander.still_working("garbage");

    // Unknown opcode: answered with the opcode echoed, then closed.
    let mut s = raw(&broker.addr);
    s.write_all(&frame(999, 11, b"")).unwrap();
    let r = read_response(&mut s).expect("unknown opcode: an answer");
    assert_eq!(r.status, Status::UnknownOpcode as u16);
    assert_eq!((r.opcode, r.request_id), (999, 11));
    assert_closed(&mut s, "unknown opcode");
    bystander.still_working("unknown opcode");

    // Truncated frame, then the client closes its side: no answer, the broker closes too.
    let mut s = raw(&broker.addr);
    let whole = frame(produce, 12, &[0u8; 200]);
    s.write_all(&whole[..100]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_closed(&mut s, "truncated");
    bystander.still_working("truncated");

    // Valid frame, junk body: BAD_REQUEST and the connection stays usable.
    let mut s = raw(&broker.addr);
    s.write_all(&frame(produce, 13, b"junk")).unwrap();
    let r = read_response(&mut s).expect("malformed body: an answer");
    assert_eq!(r.status, Status::BadRequest as u16);
    assert_eq!((r.opcode, r.request_id), (produce, 13));
    s.write_all(&frame(Opcode::Ping as u16, 14, b"")).unwrap();
    let r = read_response(&mut s).expect("ping after BAD_REQUEST");
    assert_eq!((r.status, r.request_id), (Status::Ok as u16, 14));
    drop(s);
    bystander.still_working("malformed body");

    let rounds = bystander.finish();
    assert!(broker.is_running(), "broker died:\n{}", broker.log());
    assert!(rounds > 0);
}

#[test]
fn many_connections_at_once() {
    const CONNECTIONS: usize = 200;
    const MESSAGES: u64 = 3;
    let dir = temp_store();
    let mut broker = Broker::start(dir.path(), &["--shards", "2"]);
    broker.client().create_topic("many", 4).expect("create");
    let barrier = Arc::new(Barrier::new(CONNECTIONS));
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let (addr, barrier) = (broker.addr.clone(), barrier.clone());
            thread::spawn(move || {
                let mut client = Client::connect(&addr).expect("connect");
                client.topic("many").expect("metadata");
                // Every client is connected before any of them produces.
                barrier.wait();
                let queue = (i % 4) as u32;
                for m in 0..MESSAGES {
                    let body = format!("c{i}-m{m}");
                    let message = MessageRef {
                        born_timestamp_ms: m,
                        key: b"",
                        properties: b"",
                        body: body.as_bytes(),
                    };
                    let ack = client
                        .produce("many", Some(queue), &[message])
                        .expect("produce");
                    assert_eq!(ack.status, Status::Ok);
                }
                client.ping().expect("ping");
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker panicked");
    }
    let mut client = broker.client();
    let mut bodies = Vec::new();
    for queue in 0..4 {
        let mut offset = 0;
        loop {
            let r = client
                .pull("many", queue, offset, 1000, 1 << 20, 0)
                .expect("pull");
            if r.messages.is_empty() {
                break;
            }
            offset = r.summary.next_offset;
            bodies.extend(r.messages.into_iter().map(|m| m.body));
        }
    }
    bodies.sort();
    let mut want: Vec<Vec<u8>> = (0..CONNECTIONS)
        .flat_map(|i| (0..MESSAGES).map(move |m| format!("c{i}-m{m}").into_bytes()))
        .collect();
    want.sort();
    assert_eq!(bodies, want);
    assert!(broker.is_running());
}

#[test]
fn a_reader_that_never_reads_does_not_stall_others() {
    let dir = temp_store();
    let mut broker = Broker::start(dir.path(), &["--shards", "2"]);
    let mut client = broker.client();
    let info = client.create_topic("slow", 2).expect("create");
    // Enough data that every pull answer is large and the slow socket fills quickly.
    common::produce_filler(&mut client, "slow", 0, 32, 8 * 1024);

    // The slow reader talks to the shard that owns queue 0, the queue the others use too.
    let port = broker.shard_ports[info.queue_shards[0] as usize];
    let slow = raw(&format!("127.0.0.1:{port}"));
    let mut requests = Vec::new();
    let pull = PullRequest {
        topic: "slow".into(),
        queue: 0,
        offset: 0,
        max_messages: 32,
        max_bytes: 1 << 20,
        max_wait_ms: 0,
    };
    let mut body = Vec::new();
    pull.encode(&mut body);
    for id in 1..=4000u64 {
        requests.extend_from_slice(&frame(Opcode::Pull as u16, id, &body));
    }
    let mut slow_writer = slow.try_clone().expect("clone");
    // Writing may block once the broker stops reading (back-pressure): do it aside.
    let writer = thread::spawn(move || {
        let _ = slow_writer.write_all(&requests);
    });

    let bystander = Bystander::start(&broker.addr, "others");
    let mut other = broker.client();
    let started = Instant::now();
    for i in 0..50u32 {
        let body = format!("other-{i}");
        let message = MessageRef {
            born_timestamp_ms: 0,
            key: b"",
            properties: b"",
            body: body.as_bytes(),
        };
        let ack = other.produce("slow", Some(0), &[message]).expect("produce");
        let got = other
            .pull("slow", 0, ack.response.base_offset, 1, 1 << 20, 0)
            .expect("pull");
        assert_eq!(got.messages[0].body, body.as_bytes());
    }
    bystander.still_working("slow reader");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "others were slowed down to {:?}",
        started.elapsed()
    );
    // The slow reader finally goes away; the broker is fine.
    slow.shutdown(Shutdown::Both).unwrap();
    drop(slow);
    writer.join().expect("writer");
    bystander.finish();
    other.ping().expect("ping after the slow reader left");
    assert!(broker.is_running(), "broker died:\n{}", broker.log());
}

/// The writer gathers queued answers into one write (up to 64 KiB at a time, more when one
/// answer is larger): 2000 pipelined requests of mixed answer sizes (pings and pulls of 1 to
/// 8 messages of 8 KiB) are each answered exactly once, whole (a checked crc each), and a
/// peer that closes with answers still queued leaves nothing unwritten behind: the broker's
/// clean stop finds every response written.
#[test]
fn pipelined_answers_of_mixed_sizes_are_each_written_once() {
    let dir = temp_store();
    let mut broker = Broker::start(dir.path(), &["--shards", "1"]);
    let mut client = broker.client();
    client.create_topic("mixed", 1).expect("create");
    common::produce_filler(&mut client, "mixed", 0, 8, 8 * 1024);
    let port = broker.shard_ports[0];
    let requests = |count: u64| {
        let mut out = Vec::new();
        for id in 1..=count {
            if id % 3 == 0 {
                out.extend_from_slice(&frame(Opcode::Ping as u16, id, &[]));
                continue;
            }
            let mut body = Vec::new();
            PullRequest {
                topic: "mixed".into(),
                queue: 0,
                offset: 0,
                max_messages: (id % 8 + 1) as u32,
                max_bytes: 1 << 20,
                max_wait_ms: 0,
            }
            .encode(&mut body);
            out.extend_from_slice(&frame(Opcode::Pull as u16, id, &body));
        }
        out
    };

    const COUNT: u64 = 2000;
    let s = raw(&format!("127.0.0.1:{port}"));
    let mut w = s.try_clone().expect("clone");
    let all = requests(COUNT);
    let writer = thread::spawn(move || w.write_all(&all).expect("send the requests"));
    let mut r = s;
    let mut seen = vec![false; COUNT as usize + 1];
    for _ in 0..COUNT {
        let answer = read_response(&mut r).expect("an answer for every request");
        assert_eq!(
            answer.status,
            Status::Ok as u16,
            "request {}",
            answer.request_id
        );
        let id = answer.request_id;
        assert!((1..=COUNT).contains(&id), "an answer to no request: {id}");
        assert!(!seen[id as usize], "request {id} answered twice");
        seen[id as usize] = true;
        if id % 3 == 0 {
            assert_eq!(answer.opcode, Opcode::Ping as u16);
        } else {
            assert_eq!(answer.opcode, Opcode::Pull as u16);
            let messages = id % 8 + 1;
            assert!(
                answer.body.len() as u64 > messages * 8 * 1024,
                "pull {id} of {messages} messages answered with {} bytes",
                answer.body.len()
            );
        }
    }
    writer.join().expect("writer");

    // A peer that leaves with most of its answers still queued.
    let s = raw(&format!("127.0.0.1:{port}"));
    let mut w = s.try_clone().expect("clone");
    let all = requests(COUNT);
    let writer = thread::spawn(move || {
        let _ = w.write_all(&all);
    });
    let mut r = s;
    for _ in 0..10 {
        read_response(&mut r).expect("the first answers");
    }
    r.shutdown(Shutdown::Both).unwrap();
    drop(r);
    writer.join().expect("writer");
    client.ping().expect("the broker still answers");
    assert!(broker.stop(), "a clean stop:\n{}", broker.log());
    assert!(
        !broker.log().contains("still unanswered"),
        "responses left unwritten:\n{}",
        broker.log()
    );
}

/// How many descriptors the broker process holds open now.
fn open_fds(broker: &Broker) -> usize {
    let pid = broker.pid().expect("a running broker");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the broker's fd table")
        .count()
}

/// A peer that resets its connection while a long poll is parked: the reader's descriptor is
/// closed at once and the next connection gets its number, while the writer still holds the
/// pull. When the pull's answer then fails to write, the broker must shut down the socket the
/// writer holds, not the number the new client now owns.
#[test]
fn a_failed_answer_after_the_peer_left_does_not_touch_a_newer_connection() {
    let dir = temp_store();
    let broker = Broker::start(dir.path(), &["--shards", "1"]);
    let mut producer = broker.client();
    producer.create_topic("parked", 1).expect("create");
    // The producer's connection to the shard's port is open before the count below.
    producer.ping().expect("ping");
    let wake = MessageRef {
        born_timestamp_ms: 1,
        key: b"",
        properties: b"",
        body: b"wake",
    };
    producer
        .produce("parked", Some(0), &[wake])
        .expect("produce");
    let port = broker.shard_ports[0];
    let addr = format!("127.0.0.1:{port}");

    let before = open_fds(&broker);
    let mut leaver = raw(&addr);
    let pull = PullRequest {
        topic: "parked".into(),
        queue: 0,
        offset: 1,
        max_messages: 1,
        max_bytes: 1 << 20,
        max_wait_ms: 15_000,
    };
    let mut body = Vec::new();
    pull.encode(&mut body);
    let mut requests = frame(Opcode::Pull as u16, 1, &body);
    requests.extend_from_slice(&frame(Opcode::Ping as u16, 2, &[]));
    leaver.write_all(&requests).unwrap();
    // The ping is answered once the pull ahead of it has started (and parked).
    let answer = read_response(&mut leaver).expect("the ping's answer");
    assert_eq!(answer.request_id, 2);
    // Each plaintext connection holds two descriptors (the reader's and the writer's dup).
    common::wait_until(IO_TIMEOUT, "the connection's descriptors", || {
        (open_fds(&broker) == before + 2).then_some(())
    });
    socket2::SockRef::from(&leaver)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(leaver);
    // The reader's descriptor is closed; the writer's stays while the pull is parked.
    common::wait_until(IO_TIMEOUT, "the reader's descriptor closed", || {
        (open_fds(&broker) == before + 1).then_some(())
    });
    // The lowest free number, the one the reader had, goes to this connection.
    let mut newer = raw(&addr);
    newer
        .write_all(&frame(Opcode::Ping as u16, 7, &[]))
        .unwrap();
    assert_eq!(read_response(&mut newer).expect("served").request_id, 7);

    // A message wakes the parked pull; its answer fails on the reset socket.
    let ack = producer
        .produce(
            "parked",
            Some(0),
            &[MessageRef {
                born_timestamp_ms: 1,
                key: b"",
                properties: b"",
                body: b"wake",
            }],
        )
        .expect("produce");
    assert_eq!(ack.status, Status::Ok);
    common::wait_until(IO_TIMEOUT, "the leaver's writer gone", || {
        (open_fds(&broker) == before + 2).then_some(())
    });
    for id in 8..12 {
        newer
            .write_all(&frame(Opcode::Ping as u16, id, &[]))
            .unwrap();
        let answer = read_response(&mut newer).expect("the newer connection is still served");
        assert_eq!(answer.request_id, id);
    }
}
