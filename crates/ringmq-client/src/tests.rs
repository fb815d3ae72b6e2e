//! Client tests against the fake broker in `fake_broker.rs`.

use super::fake_broker::{self, metadata, topic, FakeConn};
use super::*;
use crate::protocol::message::{GroupCommit, GroupDescribe};
use crate::protocol::message::{
    MessageRef, ProduceRequest, ProduceResponse, PullRequest, PullResponse, PullSummary,
};
use crate::protocol::{Opcode, Status};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn message(body: &[u8]) -> MessageRef<'_> {
    MessageRef {
        born_timestamp_ms: 1,
        key: b"",
        properties: b"",
        body,
    }
}

fn produce_ack(queue: u32, base_offset: u64) -> Vec<u8> {
    let mut out = Vec::new();
    ProduceResponse {
        queue,
        base_offset,
        count: 1,
        commitlog_offset: 0,
    }
    .encode(&mut out);
    out
}

/// Answers metadata with `meta`, produce with an ack naming the queue and this server's port
/// as the offset (so a test can see where a request went).
fn shard_server(meta: Arc<Mutex<Vec<u8>>>, metadata_calls: Arc<AtomicUsize>) -> u16 {
    shard_server_logging(meta, metadata_calls, Arc::new(Mutex::new(Vec::new())))
}

/// [`shard_server`] that also records the opcode of every request it receives.
fn shard_server_logging(
    meta: Arc<Mutex<Vec<u8>>>,
    metadata_calls: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<u16>>>,
) -> u16 {
    let port = Arc::new(AtomicUsize::new(0));
    let port_in_handler = Arc::clone(&port);
    let bound = fake_broker::spawn(move |mut conn: FakeConn| {
        while let Some((header, body)) = conn.read_request() {
            seen.lock().unwrap().push(header.opcode);
            match Opcode::from_u16(header.opcode) {
                Some(Opcode::Metadata) => {
                    metadata_calls.fetch_add(1, Ordering::SeqCst);
                    let body = meta.lock().unwrap().clone();
                    conn.reply(&header, Status::Ok, &body);
                }
                Some(Opcode::Produce) => {
                    let request = ProduceRequest::decode(&body).unwrap();
                    let me = port_in_handler.load(Ordering::SeqCst) as u64;
                    conn.reply(&header, Status::Ok, &produce_ack(request.queue, me));
                }
                _ => conn.reply(&header, Status::BadRequest, b"unexpected"),
            }
        }
    });
    port.store(bound as usize, Ordering::SeqCst);
    bound
}

#[test]
fn pipelined_responses_out_of_order_are_matched_by_id() {
    let port = fake_broker::spawn(|mut conn| {
        let mut requests = Vec::new();
        for _ in 0..3 {
            requests.push(conn.read_request().unwrap().0);
        }
        for header in requests.iter().rev() {
            conn.reply(header, Status::Ok, &header.request_id.to_le_bytes());
        }
    });
    let mut c = Connection::connect(&format!("127.0.0.1:{port}"), Default::default()).unwrap();
    let ids: Vec<u64> = (0..3).map(|_| c.send(Opcode::Ping, b"").unwrap()).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    assert_eq!(c.wait(2).unwrap().body, 2u64.to_le_bytes());
    // 3 arrived first and was parked; recv hands it out before reading the socket again.
    assert_eq!(c.recv().unwrap().request_id(), 3);
    assert_eq!(c.wait(1).unwrap().request_id(), 1);
    assert_eq!(c.in_flight(), 0);
    assert!(matches!(c.wait(1), Err(ClientError::InvalidArgument(_))));
}

/// `none` produces take no place in flight; a broker that raised their level (`min_acks`)
/// answers them anyway, and those answers are dropped by id, also for ids past the bound of
/// remembered ones, while an answer to an id never sent still breaks the connection.
#[test]
fn answers_to_none_produces_are_dropped_and_hold_no_slot() {
    const SENT: usize = 4096 + 10;
    let port = fake_broker::spawn(|mut conn| {
        while let Some((header, _)) = conn.read_request() {
            assert_eq!(
                header.acks(),
                (header.opcode == Opcode::Produce as u16).then_some(crate::Acks::None)
            );
            conn.reply(&header, Status::Ok, b"");
            if header.opcode == Opcode::Ping as u16 {
                conn.reply_raw(Opcode::Produce as u16, 1_000_000, Status::Ok, b"");
            }
        }
    });
    let mut c = Connection::connect(&format!("127.0.0.1:{port}"), Default::default()).unwrap();
    for _ in 0..SENT {
        c.send_with_acks(Opcode::Produce, Some(crate::Acks::None), |_| {})
            .unwrap();
    }
    assert_eq!(c.in_flight(), 0);
    let ping = c.send(Opcode::Ping, b"").unwrap();
    assert_eq!(c.wait(ping).unwrap().request_id(), SENT as u64 + 1);
    assert!(
        !c.is_broken(),
        "every produce answer was recognised and dropped"
    );
    // Past every id sent: not an answer to a none produce.
    assert!(matches!(c.recv(), Err(ClientError::Protocol { .. })));
}

/// A connection made readable only by a dropped answer (a raised `none` produce) is no
/// acknowledgement: `next_produce_ack` keeps waiting, within its own timeout, and says
/// `None` at the end of it rather than blocking for the read timeout.
#[test]
fn a_dropped_answer_is_not_an_acknowledgement() {
    let port = fake_broker::spawn(|mut conn| {
        let mut one_way = None;
        while let Some((header, _)) = conn.read_request() {
            // Answers metadata, and the raised `none` produce once the `leader` one came (so
            // the answer arrives while the client waits for an ack); the `leader` one never.
            if header.opcode == Opcode::Metadata as u16 {
                let body = metadata(vec![0], vec![topic("t", vec![0])]);
                conn.reply(&header, Status::Ok, &body);
            } else if header.acks() == Some(crate::Acks::None) {
                one_way = Some(header);
            } else if let Some(one_way) = one_way.take() {
                conn.reply(&one_way, Status::Ok, b"");
            }
        }
    });
    let options = ClientOptions {
        connection: ConnectionOptions {
            read_timeout: Duration::from_secs(30),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut client = Client::connect_with(&format!("127.0.0.1:{port}"), options).unwrap();
    let sent = client
        .produce_with("t", Some(0), &[message(b"one-way")], crate::Acks::None)
        .unwrap();
    assert!(sent.is_none());
    client
        .send_produce_with(
            "t",
            Some(0),
            &[message(b"waits")],
            Some(crate::Acks::Leader),
        )
        .unwrap();
    let started = Instant::now();
    let next = client.next_produce_ack(Duration::from_millis(300)).unwrap();
    assert!(next.is_none(), "{next:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited {:?}, past the caller's timeout",
        started.elapsed()
    );
    assert_eq!(
        client.in_flight(),
        1,
        "the leader produce is still in flight"
    );
}

#[test]
fn error_statuses_map_to_errors_and_stored_statuses_do_not() {
    let port = fake_broker::spawn(|mut conn| {
        while let Some((header, _)) = conn.read_request() {
            match Opcode::from_u16(header.opcode).unwrap() {
                Opcode::Metadata => {
                    let body = metadata(vec![0], vec![topic("t", vec![0])]);
                    conn.reply(&header, Status::Ok, &body)
                }
                Opcode::TopicCreate => conn.reply(&header, Status::TopicExists, b"t exists"),
                Opcode::Produce => {
                    conn.reply(&header, Status::FlushDiskTimeout, &produce_ack(0, 7))
                }
                Opcode::Pull => {
                    let mut out = Vec::new();
                    PullResponse {
                        summary: PullSummary {
                            next_offset: 3,
                            min_offset: 0,
                            max_offset: 3,
                            suggest: 0,
                        },
                        messages: vec![],
                    }
                    .encode(&mut out);
                    conn.reply(&header, Status::NoNewMessage, &out)
                }
                _ => conn.reply(&header, Status::SystemBusy, b"busy"),
            }
        }
    });
    let mut client = Client::connect(&format!("127.0.0.1:{port}")).unwrap();
    match client.create_topic("t", 4) {
        Err(ClientError::Status { status, message }) => {
            assert_eq!(status, Status::TopicExists);
            assert_eq!(message, "t exists");
        }
        other => panic!("expected TOPIC_EXISTS, got {other:?}"),
    }
    let stored = client.produce("t", Some(0), &[message(b"x")]).unwrap();
    assert_eq!(stored.status, Status::FlushDiskTimeout);
    assert_eq!(stored.response.base_offset, 7);
    let pulled = client.pull("t", 0, 3, 32, 1 << 20, 0).unwrap();
    assert_eq!(pulled.status, Status::NoNewMessage);
    assert!(pulled.messages.is_empty());
    let busy = client
        .call(&GroupDescribe { group: "g".into() })
        .unwrap_err();
    assert_eq!(busy.status(), Some(Status::SystemBusy));
}

#[test]
fn requests_route_to_the_shard_that_owns_the_queue() {
    let calls = Arc::new(AtomicUsize::new(0));
    let empty = Arc::new(Mutex::new(Vec::new()));
    let shard0 = shard_server(Arc::clone(&empty), Arc::clone(&calls));
    let shard1 = shard_server(Arc::clone(&empty), Arc::clone(&calls));
    // Shard 2 has port 0: its queues must go through the bootstrap connection.
    let meta = metadata(vec![shard0, shard1, 0], vec![topic("t", vec![1, 0, 2, 1])]);
    let bootstrap = shard_server(Arc::new(Mutex::new(meta)), Arc::clone(&calls));
    let mut client = Client::connect(&format!("127.0.0.1:{bootstrap}")).unwrap();
    let expected = [shard1, shard0, bootstrap, shard1];
    for (queue, port) in expected.iter().enumerate() {
        let result = client
            .produce("t", Some(queue as u32), &[message(b"x")])
            .unwrap();
        assert_eq!(result.response.queue, queue as u32);
        assert_eq!(
            result.response.base_offset,
            u64::from(*port),
            "queue {queue}"
        );
    }
    assert_eq!(client.route("t", 0), ConnectionSlot::Shard(1));
    assert_eq!(client.route("t", 2), ConnectionSlot::Bootstrap);
    assert_eq!(client.route("unknown", 0), ConnectionSlot::Bootstrap);
}

/// The generic call routes by what the request declares: a produce sent with `call` goes
/// where `produce` sends it, and a value the wire cannot carry is refused before sending.
#[test]
fn generic_call_routes_queue_scoped_requests_and_checks_lengths() {
    let calls = Arc::new(AtomicUsize::new(0));
    let empty = Arc::new(Mutex::new(Vec::new()));
    let shard0 = shard_server(Arc::clone(&empty), Arc::clone(&calls));
    let meta = metadata(vec![shard0, 0], vec![topic("t", vec![0, 1])]);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let bootstrap = shard_server_logging(
        Arc::new(Mutex::new(meta)),
        Arc::clone(&calls),
        Arc::clone(&seen),
    );
    let mut client = Client::connect(&format!("127.0.0.1:{bootstrap}")).unwrap();
    for (queue, port) in [(0u32, shard0), (1, bootstrap)] {
        let result = client
            .call(&ProduceRequest {
                topic: "t",
                queue,
                messages: vec![message(b"x")],
            })
            .unwrap();
        assert_eq!(result.status, Status::Ok);
        assert_eq!(
            result.response.base_offset,
            u64::from(port),
            "queue {queue}"
        );
    }
    let long = "n".repeat(usize::from(u16::MAX) + 1);
    let refused = client.call(&GroupDescribe { group: long });
    assert!(
        matches!(&refused, Err(ClientError::InvalidArgument(m)) if m.contains("`group`")),
        "{refused:?}"
    );
    // Nothing was sent for the refused request (nor for an empty name): the bootstrap saw
    // only the metadata and the produce it answered. A ping marks that everything sent before
    // it has arrived (this fake answers it BAD_REQUEST, after recording it).
    let empty = client.call(&GroupDescribe {
        group: String::new(),
    });
    assert!(
        matches!(&empty, Err(ClientError::InvalidArgument(_))),
        "{empty:?}"
    );
    client.ping().unwrap_err();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            Opcode::Metadata as u16,
            Opcode::Produce as u16,
            Opcode::Ping as u16
        ]
    );
}

#[test]
fn topic_not_found_refreshes_metadata_once_and_retries_on_the_right_shard() {
    let calls = Arc::new(AtomicUsize::new(0));
    let shard_meta = Arc::new(Mutex::new(Vec::new()));
    let shard0 = shard_server(shard_meta, Arc::new(AtomicUsize::new(0)));
    let meta = Arc::new(Mutex::new(metadata(vec![shard0], vec![])));
    let meta_in_handler = Arc::clone(&meta);
    let calls_in_handler = Arc::clone(&calls);
    let bootstrap = fake_broker::spawn(move |mut conn| {
        while let Some((header, _)) = conn.read_request() {
            if header.opcode == Opcode::Metadata as u16 {
                calls_in_handler.fetch_add(1, Ordering::SeqCst);
                let body = meta_in_handler.lock().unwrap().clone();
                conn.reply(&header, Status::Ok, &body);
            } else {
                // The topic appears in metadata only after the first produce fails.
                *meta_in_handler.lock().unwrap() =
                    metadata(vec![shard0], vec![topic("t", vec![0])]);
                conn.reply(&header, Status::TopicNotFound, b"no topic t here");
            }
        }
    });
    let mut client = Client::connect(&format!("127.0.0.1:{bootstrap}")).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let result = client.produce("t", Some(0), &[message(b"x")]).unwrap();
    assert_eq!(result.response.base_offset, u64::from(shard0));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // A topic that never appears fails after exactly one refresh.
    let missing = client
        .produce("gone", Some(0), &[message(b"x")])
        .unwrap_err();
    assert_eq!(missing.status(), Some(Status::TopicNotFound));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[test]
fn pipelined_produce_collects_acks_from_every_shard() {
    let calls = Arc::new(AtomicUsize::new(0));
    let empty = Arc::new(Mutex::new(Vec::new()));
    let shard0 = shard_server(Arc::clone(&empty), Arc::clone(&calls));
    let shard1 = shard_server(Arc::clone(&empty), Arc::clone(&calls));
    let meta = metadata(vec![shard0, shard1], vec![topic("t", vec![0, 1])]);
    let bootstrap = shard_server(Arc::new(Mutex::new(meta)), Arc::clone(&calls));
    let mut client = Client::connect(&format!("127.0.0.1:{bootstrap}")).unwrap();
    let mut tickets = Vec::new();
    for _ in 0..10 {
        tickets.push(client.send_produce("t", None, &[message(b"x")]).unwrap());
    }
    assert_eq!(client.in_flight(), 10);
    let mut seen = Vec::new();
    while client.in_flight() > 0 {
        let ack = client
            .next_produce_ack(Duration::from_secs(5))
            .unwrap()
            .expect("an ack within 5 s");
        let result = ack.result.unwrap();
        let expected_port = [shard0, shard1][result.response.queue as usize];
        assert_eq!(result.response.base_offset, u64::from(expected_port));
        seen.push(ack.ticket);
    }
    seen.sort_by_key(|t| (format!("{:?}", t.slot), t.request_id));
    tickets.sort_by_key(|t| (format!("{:?}", t.slot), t.request_id));
    assert_eq!(seen, tickets);
    assert!(client
        .next_produce_ack(Duration::from_millis(10))
        .unwrap()
        .is_none());
}

#[test]
fn queue_for_key_is_stable_and_round_robin_spreads() {
    let meta = metadata(vec![0], vec![topic("t", vec![0, 0, 0])]);
    let bootstrap = shard_server(Arc::new(Mutex::new(meta)), Arc::new(AtomicUsize::new(0)));
    let mut client = Client::connect(&format!("127.0.0.1:{bootstrap}")).unwrap();
    let q = client.queue_for_key("t", b"order-42").unwrap();
    assert_eq!(q, crc32c::crc32c(b"order-42") % 3);
    let keyed = MessageRef {
        key: b"order-42",
        ..message(b"x")
    };
    for _ in 0..3 {
        let r = client.produce("t", None, &[keyed]).unwrap();
        assert_eq!(r.response.queue, q);
    }
    let mut queues: Vec<u32> = (0..6)
        .map(|_| {
            client
                .produce("t", None, &[message(b"x")])
                .unwrap()
                .response
                .queue
        })
        .collect();
    queues.sort();
    assert_eq!(queues, vec![0, 0, 1, 1, 2, 2]);
}

#[test]
fn connection_level_error_timeout_and_close_are_reported() {
    let port = fake_broker::spawn(|mut conn| {
        let (header, body) = conn.read_request().unwrap();
        match body.as_slice() {
            b"unattributable" => {
                conn.reply_raw(header.opcode, 0, Status::BadMagic, b"bad magic 0x0000");
            }
            b"close" => {}
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    });
    let addr = format!("127.0.0.1:{port}");
    let options = ConnectionOptions {
        read_timeout: Duration::from_millis(100),
        ..Default::default()
    };
    let mut c = Connection::connect(&addr, options).unwrap();
    let err = c.call(Opcode::Ping, b"unattributable").unwrap_err();
    assert_eq!(err.status(), Some(Status::BadMagic));
    assert!(c.is_broken());

    let mut c = Connection::connect(&addr, options).unwrap();
    assert!(matches!(
        c.call(Opcode::Ping, b"close"),
        Err(ClientError::ConnectionClosed { .. })
    ));

    let mut c = Connection::connect(&addr, options).unwrap();
    let err = c.call(Opcode::Ping, b"slow").unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains(&addr));
}

#[test]
fn pull_waits_longer_than_the_long_poll() {
    let port = fake_broker::spawn(|mut conn| {
        while let Some((header, body)) = conn.read_request() {
            if header.opcode == Opcode::Metadata as u16 {
                conn.reply(&header, Status::Ok, &metadata(vec![0], vec![]));
                continue;
            }
            let request = PullRequest::decode(&body).unwrap();
            std::thread::sleep(Duration::from_millis(u64::from(request.max_wait_ms)));
            let mut out = Vec::new();
            PullResponse {
                summary: PullSummary {
                    next_offset: request.offset,
                    min_offset: 0,
                    max_offset: request.offset,
                    suggest: 0,
                },
                messages: vec![],
            }
            .encode(&mut out);
            conn.reply(&header, Status::NoNewMessage, &out);
        }
    });
    let options = ClientOptions {
        connection: ConnectionOptions {
            read_timeout: Duration::from_millis(50),
            ..Default::default()
        },
        shard_aware: true,
    };
    let mut client = Client::connect_with(&format!("127.0.0.1:{port}"), options).unwrap();
    let pulled = client.pull("t", 0, 5, 10, 1024, 300).unwrap();
    assert_eq!(pulled.status, Status::NoNewMessage);
    assert_eq!(pulled.summary.next_offset, 5);
}

#[test]
fn oversized_and_unencodable_requests_are_refused_before_sending() {
    let port = fake_broker::spawn(|mut conn| while conn.read_request().is_some() {});
    let options = ConnectionOptions {
        max_frame_bytes: 64,
        ..Default::default()
    };
    let mut c = Connection::connect(&format!("127.0.0.1:{port}"), options).unwrap();
    assert!(matches!(
        c.send(Opcode::Ping, &[0u8; 100]),
        Err(ClientError::InvalidArgument(_))
    ));
    assert!(matches!(
        Client::connect("no-port-here"),
        Err(ClientError::InvalidArgument(_))
    ));
}

/// A fake broker for failover tests: answers metadata, pull (one message whose body is `name`
/// at the requested offset) and group commit (recorded); drops every connection while `down`.
fn group_member(
    name: &'static str,
    down: Arc<std::sync::atomic::AtomicBool>,
    log: Arc<Mutex<Vec<String>>>,
) -> String {
    let port = fake_broker::spawn(move |mut conn: FakeConn| {
        while let Some((header, body)) = conn.read_request() {
            if down.load(Ordering::SeqCst) {
                return;
            }
            match Opcode::from_u16(header.opcode) {
                Some(Opcode::Metadata) => conn.reply(
                    &header,
                    Status::Ok,
                    &metadata(vec![0], vec![topic("t", vec![0])]),
                ),
                Some(Opcode::Pull) => {
                    let request = PullRequest::decode(&body).unwrap();
                    // A long poll at the queue's end: answered after the wait.
                    std::thread::sleep(Duration::from_millis(u64::from(request.max_wait_ms)));
                    log.lock()
                        .unwrap()
                        .push(format!("{name} pull {}", request.offset));
                    let mut out = Vec::new();
                    PullResponse {
                        summary: PullSummary {
                            next_offset: request.offset + 1,
                            min_offset: 0,
                            max_offset: request.offset + 1,
                            suggest: 0,
                        },
                        messages: vec![crate::protocol::message::PulledMessageRef {
                            queue_offset: request.offset,
                            born_timestamp_ms: 1,
                            store_timestamp_ms: 1,
                            key: b"",
                            properties: b"",
                            body: name.as_bytes(),
                        }],
                    }
                    .encode(&mut out);
                    conn.reply(&header, Status::Ok, &out);
                }
                Some(Opcode::GroupCommit) => {
                    let request = crate::protocol::message::GroupCommit::decode(&body).unwrap();
                    log.lock()
                        .unwrap()
                        .push(format!("{name} commit {}", request.offset));
                    conn.reply(&header, Status::Ok, b"");
                }
                Some(Opcode::Produce) => {
                    log.lock().unwrap().push(format!("{name} produce"));
                    conn.reply(&header, Status::NotMaster, b"slave");
                }
                _ => conn.reply(&header, Status::BadRequest, b"unexpected"),
            }
        }
    });
    format!("127.0.0.1:{port}")
}

#[test]
fn failover_reads_from_the_slave_while_the_master_is_down_and_goes_back() {
    use std::sync::atomic::AtomicBool;
    let log = Arc::new(Mutex::new(Vec::new()));
    let master_down = Arc::new(AtomicBool::new(false));
    let slave_down = Arc::new(AtomicBool::new(false));
    let master = group_member("master", master_down.clone(), log.clone());
    let slave = group_member("slave", slave_down.clone(), log.clone());
    let mut client =
        FailoverClient::connect_list(&format!("{master},{slave}"), ClientOptions::default())
            .unwrap();
    client.set_retry_primary_every(Duration::from_secs(3600));
    let mut offset = 0;
    let mut pull = |client: &mut FailoverClient| {
        let result = client.pull("t", 0, offset, 10, 1024, 0).unwrap();
        offset = result.summary.next_offset;
        String::from_utf8(result.messages[0].body.clone()).unwrap()
    };
    assert_eq!(pull(&mut client), "master");
    client
        .call(&GroupCommit {
            group: "g".into(),
            topic: "t".into(),
            queue: 0,
            offset: 1,
        })
        .unwrap();
    assert_eq!(client.active(), 0);

    master_down.store(true, Ordering::SeqCst);
    assert_eq!(
        pull(&mut client),
        "slave",
        "the same pull went to the slave"
    );
    assert_eq!(client.active(), 1);
    assert_eq!(client.active_addr(), slave);
    client
        .call(&GroupCommit {
            group: "g".into(),
            topic: "t".into(),
            queue: 0,
            offset: 2,
        })
        .unwrap();
    // Produce never fails over: the master is down, so it fails, and the slave never sees it.
    assert!(client.produce("t", Some(0), &[message(b"x")]).is_err());

    // Back up, but the retry interval has not passed: the client stays on the slave.
    master_down.store(false, Ordering::SeqCst);
    assert_eq!(pull(&mut client), "slave");
    client.set_retry_primary_every(Duration::ZERO);
    assert_eq!(pull(&mut client), "master", "returned to the master");
    assert_eq!(client.active(), 0);
    assert_eq!(client.switches(), 2);

    // Both down: the error says the broker is unreachable.
    master_down.store(true, Ordering::SeqCst);
    slave_down.store(true, Ordering::SeqCst);
    assert!(client.pull("t", 0, 4, 10, 1024, 0).is_err());
    slave_down.store(false, Ordering::SeqCst);
    assert_eq!(pull(&mut client), "slave");

    let log = log.lock().unwrap().clone();
    assert_eq!(
        log,
        [
            "master pull 0",
            "master commit 1",
            "slave pull 1",
            "slave commit 2",
            "slave pull 2",
            "master pull 3",
            "slave pull 4",
        ],
        "each offset pulled once, in order, across the switches; no produce reached the slave"
    );
}

#[test]
fn failover_client_needs_a_reachable_broker() {
    assert!(FailoverClient::connect(&[], ClientOptions::default()).is_err());
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    assert!(FailoverClient::connect(&[addr], ClientOptions::default()).is_err());
}

#[test]
fn failover_returns_to_the_master_even_when_every_pull_long_polls() {
    // Regression: a successful request on the slave re-armed the retry deadline whenever it
    // had passed during the request, so a consumer whose pulls long-poll longer than the retry
    // interval never went back to the master.
    use std::sync::atomic::AtomicBool;
    let log = Arc::new(Mutex::new(Vec::new()));
    let master_down = Arc::new(AtomicBool::new(true));
    let master = group_member("master", master_down.clone(), log.clone());
    let slave = group_member("slave", Arc::new(AtomicBool::new(false)), log.clone());
    let brokers = [master, slave];
    let mut client = FailoverClient::connect(&brokers, ClientOptions::default()).unwrap();
    assert_eq!(
        client.active(),
        1,
        "the master is down: started on the slave"
    );
    client.set_retry_primary_every(Duration::from_millis(20));
    master_down.store(false, Ordering::SeqCst);
    for offset in 0..3 {
        client.pull("t", 0, offset, 10, 1024, 50).unwrap();
    }
    assert_eq!(
        client.active(),
        0,
        "back on the master: {:?}",
        log.lock().unwrap()
    );
}

/// A master that answers metadata at once and nothing else (a slow master: each request
/// times out at the client, though it may have been carried out), and a slave that logs
/// what reaches it. Only the requests marked `FailsOver` may be resent to the slave; a
/// produce or a topic change that timed out must not, or the slave would answer `NOT_MASTER`
/// (produce) or carry out a change the master may also have made.
#[test]
fn failover_resends_only_reads_after_a_timeout() {
    use crate::protocol::message::{QueueRef, QueueStats, TopicDelete};
    let master = fake_broker::spawn(|mut conn| {
        let mut held = Vec::new();
        while let Some((header, _)) = conn.read_request() {
            if header.opcode == Opcode::Metadata as u16 {
                conn.reply(
                    &header,
                    Status::Ok,
                    &metadata(vec![0], vec![topic("t", vec![0])]),
                );
            } else {
                held.push(header);
            }
        }
    });
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen_in_slave = Arc::clone(&seen);
    let slave = fake_broker::spawn(move |mut conn| {
        while let Some((header, _)) = conn.read_request() {
            let opcode = Opcode::from_u16(header.opcode).unwrap();
            if opcode == Opcode::Metadata {
                conn.reply(
                    &header,
                    Status::Ok,
                    &metadata(vec![0], vec![topic("t", vec![0])]),
                );
                continue;
            }
            seen_in_slave.lock().unwrap().push(opcode);
            match opcode {
                Opcode::QueueStats => {
                    let mut body = Vec::new();
                    QueueStats {
                        queue: 0,
                        shard: 0,
                        min_offset: 0,
                        max_offset: 5,
                    }
                    .encode(&mut body);
                    conn.reply(&header, Status::Ok, &body);
                }
                Opcode::Produce => conn.reply(&header, Status::NotMaster, b"slave"),
                _ => conn.reply(&header, Status::Ok, b""),
            }
        }
    });
    let mut options = ClientOptions::default();
    options.connection.read_timeout = Duration::from_millis(200);
    let brokers = [format!("127.0.0.1:{master}"), format!("127.0.0.1:{slave}")];
    let mut client = FailoverClient::connect(&brokers, options).unwrap();
    assert_eq!(client.active(), 0);

    let produced = client.produce("t", Some(0), &[message(b"x")]);
    assert!(
        matches!(produced, Err(ClientError::Timeout { .. })),
        "{produced:?}"
    );
    let deleted = client
        .primary()
        .unwrap()
        .call(&TopicDelete { name: "t".into() });
    assert!(
        matches!(deleted, Err(ClientError::Timeout { .. })),
        "{deleted:?}"
    );
    assert_eq!(
        client.active(),
        0,
        "a write that timed out switches nothing"
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );

    // A read that times out is answered by the slave, which serves reads from then on.
    let stats = client
        .call(&QueueRef {
            topic: "t".into(),
            queue: 0,
        })
        .unwrap();
    assert_eq!(stats.max_offset, 5);
    assert_eq!(client.active(), 1);
    assert_eq!(*seen.lock().unwrap(), [Opcode::QueueStats]);
}

/// The topic cache follows answers to the generic call as it followed the old topic methods:
/// a topic deleted through `call` is forgotten, so after it is recreated elsewhere the
/// client learns the new placement instead of routing to the old shard; create, describe and
/// metadata answers put their placement in the cache.
#[test]
fn the_topic_cache_follows_every_answered_call() {
    use crate::protocol::message::{
        MetadataRequest, TopicCreate, TopicDelete, TopicDescribe, TopicDescription, TopicInfo,
    };
    let shard_calls = Arc::new(AtomicUsize::new(0));
    let shard0 = shard_server(Arc::new(Mutex::new(Vec::new())), Arc::clone(&shard_calls));
    let shard1 = shard_server(Arc::new(Mutex::new(Vec::new())), Arc::clone(&shard_calls));
    let ports = vec![shard0, shard1];
    let meta = Arc::new(Mutex::new(metadata(
        ports.clone(),
        vec![topic("t", vec![0])],
    )));
    let metadata_calls = Arc::new(AtomicUsize::new(0));
    let (meta_in_handler, calls_in_handler) = (Arc::clone(&meta), Arc::clone(&metadata_calls));
    let bootstrap = fake_broker::spawn(move |mut conn| {
        while let Some((header, body)) = conn.read_request() {
            let mut out = Vec::new();
            match Opcode::from_u16(header.opcode) {
                Some(Opcode::Metadata) => {
                    calls_in_handler.fetch_add(1, Ordering::SeqCst);
                    out = meta_in_handler.lock().unwrap().clone();
                }
                Some(Opcode::TopicDelete) => {}
                Some(Opcode::TopicCreate) => {
                    let request = TopicCreate::decode(&body).unwrap();
                    topic(&request.name, vec![1]).encode(&mut out);
                }
                Some(Opcode::TopicDescribe) => {
                    let request = TopicDescribe::decode(&body).unwrap();
                    TopicDescription {
                        topic: topic(&request.name, vec![1, 0]),
                        queues: Vec::new(),
                    }
                    .encode(&mut out);
                }
                _ => {
                    conn.reply(&header, Status::BadRequest, b"unexpected");
                    continue;
                }
            }
            conn.reply(&header, Status::Ok, &out);
        }
    });
    let mut client = Client::connect(&format!("127.0.0.1:{bootstrap}")).unwrap();
    assert_eq!(client.route("t", 0), ConnectionSlot::Shard(0));

    // Deleted, then recreated on shard 1 by someone else.
    client.call(&TopicDelete { name: "t".into() }).unwrap();
    assert_eq!(client.route("t", 0), ConnectionSlot::Bootstrap, "forgotten");
    *meta.lock().unwrap() = metadata(ports.clone(), vec![topic("t", vec![1])]);
    assert_eq!(client.topic("t").unwrap().queue_shards, [1]);
    assert_eq!(
        metadata_calls.load(Ordering::SeqCst),
        2,
        "learned by one refresh"
    );
    let produced = client
        .call(&ProduceRequest {
            topic: "t",
            queue: 0,
            messages: vec![message(b"x")],
        })
        .unwrap();
    assert_eq!(produced.response.base_offset, u64::from(shard1));

    // Create and describe answers are cached without asking for metadata.
    let created: TopicInfo = client
        .call(&TopicCreate {
            name: "u".into(),
            queue_count: 1,
        })
        .unwrap();
    assert_eq!(created.queue_shards, [1]);
    assert_eq!(client.route("u", 0), ConnectionSlot::Shard(1));
    client.call(&TopicDescribe { name: "v".into() }).unwrap();
    assert_eq!(client.route("v", 1), ConnectionSlot::Shard(0));
    assert_eq!(metadata_calls.load(Ordering::SeqCst), 2);

    // A metadata answer replaces the cache.
    *meta.lock().unwrap() = metadata(ports, vec![topic("w", vec![1])]);
    client.call(&MetadataRequest {}).unwrap();
    assert_eq!(client.route("w", 0), ConnectionSlot::Shard(1));
    assert_eq!(
        client.route("u", 0),
        ConnectionSlot::Bootstrap,
        "not in metadata"
    );
}
