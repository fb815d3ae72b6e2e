//! Route cache, queue selection, fault tolerance and the resend decisions, against a fake
//! route source and the fake broker.

use super::fault::{failure_avoid, latency_avoid};
use super::*;
use crate::fake_broker::{self, metadata, topic, FakeConn};
use crate::protocol::message::{MessageRef, ProduceRequest, ProduceResponse};
use crate::protocol::{Opcode, Status};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Answers per name-server address; a missing address fails like an unreachable server.
#[derive(Clone, Default)]
struct FakeSource {
    answers: Arc<Mutex<HashMap<String, Vec<BrokerEntry>>>>,
    asked: Arc<Mutex<Vec<String>>>,
}

impl FakeSource {
    fn set(&self, server: &str, brokers: Vec<BrokerEntry>) {
        self.answers
            .lock()
            .unwrap()
            .insert(server.to_string(), brokers);
    }
    fn fail(&self, server: &str) {
        self.answers.lock().unwrap().remove(server);
    }
}

impl RouteSource for FakeSource {
    fn query(&mut self, server: &str, _cluster: &str) -> Result<Vec<BrokerEntry>, ClientError> {
        self.asked.lock().unwrap().push(server.to_string());
        self.answers
            .lock()
            .unwrap()
            .get(server)
            .cloned()
            .ok_or_else(|| ClientError::ConnectionClosed {
                addr: server.to_string(),
            })
    }
}

fn broker(
    group: &str,
    id: u64,
    role: &str,
    epoch: u32,
    listen: &str,
    queues: usize,
) -> BrokerEntry {
    BrokerEntry {
        cluster: "c".into(),
        group: group.into(),
        broker_id: id,
        role: role.into(),
        epoch,
        listen: listen.into(),
        topics: vec![topic("t", vec![0; queues])],
    }
}

fn two_groups() -> Vec<BrokerEntry> {
    vec![
        broker("a", 1, "SYNC_MASTER", 1, "127.0.0.1:1", 4),
        broker("a", 2, "SLAVE", 1, "127.0.0.1:2", 4),
        broker("b", 3, "SYNC_MASTER", 1, "127.0.0.1:3", 4),
        broker("b", 4, "SLAVE", 1, "127.0.0.1:4", 4),
    ]
}

/// A cache that fetches whenever invalidated and drops a missing group at once (the tests of
/// those two bounds use [`cache_with_defaults`]).
fn cache(source: &FakeSource, servers: &[&str]) -> RouteCache {
    let mut routes = cache_with_defaults(source, servers);
    routes.set_forced_refresh_spacing(Duration::ZERO);
    routes.set_missing_group_grace(Duration::ZERO);
    routes
}

fn cache_with_defaults(source: &FakeSource, servers: &[&str]) -> RouteCache {
    RouteCache::new(
        Box::new(source.clone()),
        servers.iter().map(|s| s.to_string()).collect(),
        "",
        Duration::from_secs(3600),
    )
    .unwrap()
}

/// A restarted name server that heard from only one group so far: the other group stays
/// cached (its reader and its queues with it) until it has been missing for the grace.
#[test]
fn a_partial_answer_keeps_the_missing_group_for_a_while() {
    let source = FakeSource::default();
    source.set("ns1", two_groups());
    let mut routes = cache_with_defaults(&source, &["ns1"]);
    assert_eq!(routes.route().unwrap().groups.len(), 2);
    source.set("ns1", two_groups()[2..].to_vec());
    routes.refresh().unwrap();
    assert_eq!(routes.cached().groups.len(), 2, "a missing group is kept");
    routes.set_missing_group_grace(Duration::ZERO);
    routes.refresh().unwrap();
    assert_eq!(
        routes.cached().groups.len(),
        1,
        "past the grace it is dropped"
    );
}

/// Forced refreshes are spaced: a burst of routing errors asks the name servers once.
#[test]
fn forced_refreshes_are_spaced() {
    let source = FakeSource::default();
    source.set("ns1", two_groups());
    let mut routes = cache_with_defaults(&source, &["ns1"]);
    routes.route().unwrap();
    for _ in 0..5 {
        routes.invalidate();
        routes.route().unwrap();
    }
    assert_eq!(source.asked.lock().unwrap().len(), 1);
    routes.set_forced_refresh_spacing(Duration::ZERO);
    routes.invalidate();
    routes.route().unwrap();
    assert_eq!(source.asked.lock().unwrap().len(), 2);
}

#[test]
fn routes_name_each_groups_master_slaves_and_queues() {
    let mut brokers = two_groups();
    // A stale master claim of group a at a lower epoch is not its master.
    brokers.push(broker("a", 5, "SYNC_MASTER", 0, "127.0.0.1:5", 4));
    let route = ClusterRoute::from_brokers(&brokers, "");
    let a = &route.groups["a"];
    assert_eq!(a.master.as_ref().unwrap().listen, "127.0.0.1:1");
    assert_eq!(a.slaves, vec!["127.0.0.1:2", "127.0.0.1:5"]);
    assert_eq!(a.brokers()[0], "127.0.0.1:1");
    assert_eq!(route.writable_queues("t").len(), 8);
    assert_eq!(
        route.writable_queues("t")[4],
        QueueRef {
            group: "b".into(),
            queue: 0
        }
    );
    assert!(route.writable_queues("other").is_empty());
    assert!(ClusterRoute::from_brokers(&brokers, "elsewhere").is_empty());
}

#[test]
fn a_group_without_master_is_readable_but_not_writable() {
    let brokers = vec![
        broker("a", 2, "SLAVE", 1, "127.0.0.1:2", 4),
        broker("b", 3, "SYNC_MASTER", 1, "127.0.0.1:3", 4),
    ];
    let route = ClusterRoute::from_brokers(&brokers, "");
    assert!(route.groups["a"].master.is_none());
    assert_eq!(route.readable_queues("t").len(), 8);
    let writable = route.writable_queues("t");
    assert_eq!(writable.len(), 4);
    assert!(writable.iter().all(|q| q.group == "b"));
}

#[test]
fn an_empty_answer_never_replaces_cached_routes() {
    let source = FakeSource::default();
    source.set("ns1", two_groups());
    let mut routes = cache(&source, &["ns1"]);
    assert_eq!(routes.route().unwrap().groups.len(), 2);
    let version = routes.version();
    // The name server restarted and knows no broker yet.
    source.set("ns1", Vec::new());
    routes.refresh().unwrap();
    assert_eq!(routes.cached().groups.len(), 2);
    assert_eq!(routes.version(), version);
    assert_eq!(routes.ignored_empty_answers(), 1);
    // A real change is taken.
    source.set("ns1", two_groups()[2..].to_vec());
    routes.refresh().unwrap();
    assert_eq!(routes.cached().groups.len(), 1);
    assert_eq!(routes.version(), version + 1);
}

#[test]
fn an_empty_answer_makes_the_cache_ask_the_next_name_server() {
    let source = FakeSource::default();
    source.set("ns1", Vec::new());
    source.set("ns2", two_groups());
    let mut routes = cache(&source, &["ns1", "ns2"]);
    assert_eq!(routes.route().unwrap().groups.len(), 2);
}

#[test]
fn a_failed_name_server_is_skipped_and_a_failed_refresh_keeps_the_routes() {
    let source = FakeSource::default();
    source.set("ns2", two_groups());
    let mut routes = cache(&source, &["ns1", "ns2"]);
    assert_eq!(routes.route().unwrap().groups.len(), 2);
    assert_eq!(routes.failed_queries(), 1);
    // The one that answered is asked first from now on.
    source.asked.lock().unwrap().clear();
    routes.refresh().unwrap();
    assert_eq!(*source.asked.lock().unwrap(), vec!["ns2".to_string()]);
    source.fail("ns2");
    assert!(routes.refresh().is_err());
    assert_eq!(routes.route().unwrap().groups.len(), 2);
}

#[test]
fn the_cache_refreshes_when_due_or_invalidated_and_not_otherwise() {
    let source = FakeSource::default();
    source.set("ns1", two_groups());
    let mut routes = cache(&source, &["ns1"]);
    routes.route().unwrap();
    routes.route().unwrap();
    assert_eq!(source.asked.lock().unwrap().len(), 1);
    routes.invalidate();
    routes.route().unwrap();
    assert_eq!(source.asked.lock().unwrap().len(), 2);
    routes.set_refresh_every(Duration::ZERO);
    routes.invalidate();
    routes.route().unwrap();
    routes.route().unwrap();
    assert_eq!(source.asked.lock().unwrap().len(), 4);
}

#[test]
fn failures_avoid_a_group_longer_each_time_up_to_a_bound() {
    assert_eq!(failure_avoid(1), FAILURE_BASE_AVOID);
    assert_eq!(failure_avoid(2), FAILURE_BASE_AVOID * 2);
    assert_eq!(failure_avoid(3), FAILURE_BASE_AVOID * 4);
    assert_eq!(failure_avoid(40), MAX_AVOID);
    assert!((1..40).all(|n| failure_avoid(n) <= failure_avoid(n + 1)));
    assert_eq!(latency_avoid(Duration::from_millis(5)), Duration::ZERO);
    assert!(
        latency_avoid(Duration::from_millis(2500)) > latency_avoid(Duration::from_millis(1200))
    );

    let mut fault = FaultTolerance::default();
    let now = Instant::now();
    fault.record_failure("a", Duration::ZERO, now);
    assert!(!fault.is_available("a", now));
    assert!(fault.is_available("a", now + FAILURE_BASE_AVOID));
    fault.record_failure("a", Duration::ZERO, now);
    assert!(!fault.is_available("a", now + FAILURE_BASE_AVOID));
    assert_eq!(fault.consecutive_failures("a"), 2);
    // A failure that was also slow is avoided as long as the slowness earns.
    fault.record_failure("b", Duration::from_secs(4), now);
    assert_eq!(fault.avoided_for("b", now), Duration::from_secs(10));
    // A fast success forgets the failures.
    fault.record_success("a", Duration::from_millis(1), now);
    assert!(fault.is_available("a", now));
    assert_eq!(fault.consecutive_failures("a"), 0);
    // A slow success avoids the group without counting a failure.
    fault.record_success("c", Duration::from_millis(1500), now);
    assert!(!fault.is_available("c", now));
    assert_eq!(fault.consecutive_failures("c"), 0);
}

#[test]
fn the_resend_decision_table() {
    use Decision::*;
    use FailureClass::*;
    // (class, hinted, retries left, retry when not stored ok, ordered) -> decision
    let table = [
        (NotStored, false, true, false, false, ResendAnotherGroup),
        (NotStored, true, true, false, false, ResendSameQueue),
        (NotStored, true, true, false, true, ResendSameQueue),
        (NotStored, false, true, false, true, Report),
        (NotStored, false, false, false, false, Report),
        (NotStored, true, false, false, false, Report),
        (MaybeStored, false, true, false, false, Report),
        (MaybeStored, false, true, true, false, ResendAnotherGroup),
        (MaybeStored, false, true, true, true, Report),
        (MaybeStored, false, false, true, false, Report),
        (StoredWithoutGuarantee, false, true, false, false, Report),
        (
            StoredWithoutGuarantee,
            false,
            true,
            true,
            false,
            ResendAnotherGroup,
        ),
        (StoredWithoutGuarantee, false, true, true, true, Report),
        (Rejected, false, true, true, false, Report),
    ];
    for (class, hinted, left, retry_ok, ordered, expected) in table {
        assert_eq!(
            decide(class, hinted, left, retry_ok, ordered),
            expected,
            "{class:?} hinted={hinted} left={left} retry_ok={retry_ok} ordered={ordered}"
        );
    }
}

#[test]
fn errors_are_classified_by_whether_the_request_was_written() {
    let io = || ClientError::Io {
        addr: "x".into(),
        source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
    };
    let status = |status| ClientError::Status {
        status,
        message: String::new(),
    };
    let timeout = ClientError::Timeout {
        addr: "x".into(),
        after: Duration::from_secs(1),
    };
    assert_eq!(classify_error(&io(), false), FailureClass::NotStored);
    assert_eq!(classify_error(&io(), true), FailureClass::MaybeStored);
    assert_eq!(classify_error(&timeout, true), FailureClass::MaybeStored);
    let closed = ClientError::ConnectionClosed { addr: "x".into() };
    assert_eq!(classify_error(&closed, true), FailureClass::MaybeStored);
    for s in [
        Status::NotMaster,
        Status::SystemBusy,
        Status::DiskFull,
        Status::TopicNotFound,
    ] {
        assert_eq!(
            classify_error(&status(s), true),
            FailureClass::NotStored,
            "{s:?}"
        );
    }
    assert_eq!(
        classify_error(&status(Status::StoreError), true),
        FailureClass::MaybeStored
    );
    for s in [
        Status::MessageTooLarge,
        Status::BadRequest,
        Status::InvalidName,
    ] {
        assert_eq!(
            classify_error(&status(s), true),
            FailureClass::Rejected,
            "{s:?}"
        );
    }
    let invalid = ClientError::InvalidArgument("x".into());
    assert_eq!(classify_error(&invalid, false), FailureClass::Rejected);
}

/// How a fake master answers a produce.
#[derive(Clone)]
enum Behaviour {
    Ok,
    Status(Status, String),
    /// Reads the produce and closes the connection without answering.
    CloseAfterRead,
}

/// A fake master for topic `t` (4 queues on shard 0, no shard ports) that counts produces.
fn fake_master(behaviour: Behaviour, produces: Arc<AtomicUsize>) -> String {
    let port = fake_broker::spawn(move |mut conn: FakeConn| {
        while let Some((header, body)) = conn.read_request() {
            match Opcode::from_u16(header.opcode) {
                Some(Opcode::Metadata) => conn.reply(
                    &header,
                    Status::Ok,
                    &metadata(vec![0], vec![topic("t", vec![0; 4])]),
                ),
                Some(Opcode::Produce) => {
                    produces.fetch_add(1, Ordering::SeqCst);
                    let request = ProduceRequest::decode(&body).unwrap();
                    let mut ack = Vec::new();
                    ProduceResponse {
                        queue: request.queue,
                        base_offset: 7,
                        count: 1,
                        commitlog_offset: 0,
                    }
                    .encode(&mut ack);
                    match &behaviour {
                        Behaviour::Ok => conn.reply(&header, Status::Ok, &ack),
                        Behaviour::Status(status, _) if status.has_body() => {
                            conn.reply(&header, *status, &ack)
                        }
                        Behaviour::Status(status, message) => {
                            conn.reply(&header, *status, message.as_bytes())
                        }
                        Behaviour::CloseAfterRead => return,
                    }
                }
                _ => conn.reply(&header, Status::BadRequest, b""),
            }
        }
    });
    format!("127.0.0.1:{port}")
}

/// An address nothing listens on: a listener bound and dropped.
fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    addr
}

fn producer(masters: &[(&str, &str)], options: ClusterProducerOptions) -> ClusterProducer {
    let source = FakeSource::default();
    let brokers = masters
        .iter()
        .enumerate()
        .map(|(n, (group, listen))| broker(group, n as u64 + 1, "SYNC_MASTER", 1, listen, 4))
        .collect();
    source.set("ns", brokers);
    ClusterProducer::with_routes(cache(&source, &["ns"]), options)
}

fn message<'a>(key: &'a [u8], body: &'a [u8]) -> MessageRef<'a> {
    MessageRef {
        born_timestamp_ms: 1,
        key,
        properties: b"",
        body,
    }
}

#[test]
fn round_robin_spreads_over_every_group_and_a_key_keeps_its_queue() {
    let (a_count, b_count) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let a = fake_master(Behaviour::Ok, Arc::clone(&a_count));
    let b = fake_master(Behaviour::Ok, Arc::clone(&b_count));
    let mut producer = producer(&[("a", &a), ("b", &b)], ClusterProducerOptions::default());
    let mut seen = std::collections::HashSet::new();
    for _ in 0..8 {
        let outcome = producer.send("t", None, &[message(b"", b"x")]).unwrap();
        seen.insert((outcome.group, outcome.queue));
    }
    assert_eq!(seen.len(), 8, "every queue of both groups: {seen:?}");
    let first = producer
        .send("t", Some(b"order-42"), &[message(b"", b"x")])
        .unwrap();
    for _ in 0..5 {
        let again = producer
            .send("t", None, &[message(b"order-42", b"x")])
            .unwrap();
        assert_eq!((&again.group, again.queue), (&first.group, first.queue));
    }
    assert_eq!(
        a_count.load(Ordering::SeqCst) + b_count.load(Ordering::SeqCst),
        14
    );
}

#[test]
fn a_group_that_cannot_be_reached_is_resent_from_and_then_avoided() {
    let b_count = Arc::new(AtomicUsize::new(0));
    let b = fake_master(Behaviour::Ok, Arc::clone(&b_count));
    let mut producer = producer(
        &[("a", &dead_address()), ("b", &b)],
        ClusterProducerOptions::default(),
    );
    let mut resent = 0;
    for _ in 0..10 {
        let outcome = producer.send("t", None, &[message(b"", b"x")]).unwrap();
        assert_eq!(outcome.group, "b");
        if outcome.attempts > 1 {
            resent += 1;
        }
    }
    // Group a failed once and was avoided from then on.
    assert_eq!(resent, 1);
    assert_eq!(producer.fault_tolerance().consecutive_failures("a"), 1);
    assert_eq!(b_count.load(Ordering::SeqCst), 10);
}

#[test]
fn not_master_with_a_hint_resends_to_the_named_master_in_one_round_trip() {
    let new_count = Arc::new(AtomicUsize::new(0));
    let new_master = fake_master(Behaviour::Ok, Arc::clone(&new_count));
    let old = fake_master(
        Behaviour::Status(
            Status::NotMaster,
            format!("demoted [master={new_master} epoch=2]"),
        ),
        Arc::new(AtomicUsize::new(0)),
    );
    let options = ClusterProducerOptions {
        ordered: true,
        ..Default::default()
    };
    let mut producer = producer(&[("a", &old)], options);
    let outcome = producer
        .send("t", Some(b"k"), &[message(b"", b"x")])
        .unwrap();
    assert_eq!(
        (outcome.group.as_str(), outcome.broker.as_str()),
        ("a", new_master.as_str())
    );
    assert_eq!(outcome.attempts, 2);
    // Later sends go straight to the named master while the routes list the old epoch.
    let outcome = producer
        .send("t", Some(b"k"), &[message(b"", b"x")])
        .unwrap();
    assert_eq!(
        (outcome.broker.as_str(), outcome.attempts),
        (new_master.as_str(), 1)
    );
    assert_eq!(new_count.load(Ordering::SeqCst), 2);
}

#[test]
fn stored_without_the_guarantee_is_reported_and_resent_only_when_asked() {
    for retry in [false, true] {
        let (a_count, b_count) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let a = fake_master(
            Behaviour::Status(Status::FlushSlaveTimeout, String::new()),
            Arc::clone(&a_count),
        );
        let b = fake_master(Behaviour::Ok, Arc::clone(&b_count));
        let options = ClusterProducerOptions {
            retry_another_group_when_not_stored_ok: retry,
            ..Default::default()
        };
        let mut producer = producer(&[("a", &a), ("b", &b)], options);
        // A key that maps to group a (queues 0-3 of 8).
        let key = (0..)
            .map(|n: u32| n.to_string())
            .find(|k| crc32c::crc32c(k.as_bytes()) % 8 < 4)
            .unwrap();
        let outcome = producer
            .send("t", Some(key.as_bytes()), &[message(b"", b"x")])
            .unwrap();
        if retry {
            assert_eq!((outcome.group.as_str(), outcome.status), ("b", Status::Ok));
            assert_eq!(b_count.load(Ordering::SeqCst), 1);
        } else {
            assert_eq!(
                (outcome.group.as_str(), outcome.status),
                ("a", Status::FlushSlaveTimeout)
            );
            assert_eq!(b_count.load(Ordering::SeqCst), 0);
        }
        assert_eq!(a_count.load(Ordering::SeqCst), 1);
        assert!(!producer.fault_tolerance().is_available("a", Instant::now()));
    }
}

#[test]
fn a_connection_lost_after_writing_is_maybe_stored_and_not_resent() {
    let (a_count, b_count) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let a = fake_master(Behaviour::CloseAfterRead, Arc::clone(&a_count));
    let b = fake_master(Behaviour::Ok, Arc::clone(&b_count));
    let mut producer = producer(&[("a", &a), ("b", &b)], ClusterProducerOptions::default());
    let key = (0..)
        .map(|n: u32| n.to_string())
        .find(|k| crc32c::crc32c(k.as_bytes()) % 8 < 4)
        .unwrap();
    let error = producer
        .send("t", Some(key.as_bytes()), &[message(b"", b"x")])
        .unwrap_err();
    assert_eq!(error.class, FailureClass::MaybeStored);
    assert_eq!(error.group.as_deref(), Some("a"));
    assert_eq!(
        (
            a_count.load(Ordering::SeqCst),
            b_count.load(Ordering::SeqCst)
        ),
        (1, 0)
    );
}

#[test]
fn a_rejected_message_is_never_resent_and_ordered_fails_rather_than_move() {
    let (a_count, b_count) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let a = fake_master(
        Behaviour::Status(Status::MessageTooLarge, "too large".into()),
        Arc::clone(&a_count),
    );
    let b = fake_master(Behaviour::Ok, Arc::clone(&b_count));
    let mut producer = producer(&[("a", &a), ("b", &b)], ClusterProducerOptions::default());
    let key = (0..)
        .map(|n: u32| n.to_string())
        .find(|k| crc32c::crc32c(k.as_bytes()) % 8 < 4)
        .unwrap();
    let error = producer
        .send("t", Some(key.as_bytes()), &[message(b"", b"x")])
        .unwrap_err();
    assert_eq!((error.class, error.attempts), (FailureClass::Rejected, 1));

    let options = ClusterProducerOptions {
        ordered: true,
        ..Default::default()
    };
    let mut ordered = producer_with(&[("a", &dead_address()), ("b", &b)], options);
    let error = ordered
        .send("t", Some(key.as_bytes()), &[message(b"", b"x")])
        .unwrap_err();
    assert_eq!((error.class, error.attempts), (FailureClass::NotStored, 1));
    assert_eq!(b_count.load(Ordering::SeqCst), 0);
}

/// A key whose queue (of the 8 listed, 4 per group) is in group a.
fn key_in_group_a() -> String {
    (0..)
        .map(|n: u32| n.to_string())
        .find(|k| crc32c::crc32c(k.as_bytes()) % 8 < 4)
        .unwrap()
}

/// A master that answered OK and died (closed the connection, stopped listening): the next
/// send finds the connection closed before writing, so its failure is a refused connect, not
/// stored, and it goes on to group b.
#[test]
fn a_master_that_closed_after_an_ok_is_not_written_to_again() {
    let (a_count, b_count) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    let a = {
        let a_count = Arc::clone(&a_count);
        let port = fake_broker::spawn_once(move |mut conn: FakeConn| {
            while let Some((header, body)) = conn.read_request() {
                match Opcode::from_u16(header.opcode) {
                    Some(Opcode::Metadata) => conn.reply(
                        &header,
                        Status::Ok,
                        &metadata(vec![0], vec![topic("t", vec![0; 4])]),
                    ),
                    Some(Opcode::Produce) => {
                        a_count.fetch_add(1, Ordering::SeqCst);
                        let request = ProduceRequest::decode(&body).unwrap();
                        let mut ack = Vec::new();
                        ProduceResponse {
                            queue: request.queue,
                            base_offset: 0,
                            count: 1,
                            commitlog_offset: 0,
                        }
                        .encode(&mut ack);
                        conn.reply(&header, Status::Ok, &ack);
                        break;
                    }
                    _ => conn.reply(&header, Status::BadRequest, b""),
                }
            }
            drop(conn);
            let _ = closed_tx.send(());
        });
        format!("127.0.0.1:{port}")
    };
    let b = fake_master(Behaviour::Ok, Arc::clone(&b_count));
    let mut producer = producer(&[("a", &a), ("b", &b)], ClusterProducerOptions::default());
    let key = key_in_group_a();
    let first = producer
        .send("t", Some(key.as_bytes()), &[message(b"", b"x")])
        .unwrap();
    assert_eq!(first.group, "a");
    closed_rx.recv().unwrap();
    let second = producer
        .send("t", Some(key.as_bytes()), &[message(b"", b"x")])
        .unwrap();
    assert_eq!((second.group.as_str(), second.attempts), ("b", 2));
    assert_eq!(
        (
            a_count.load(Ordering::SeqCst),
            b_count.load(Ordering::SeqCst)
        ),
        (1, 1)
    );
}

/// A key hashes over every listed queue, so it keeps its queue while another group has no
/// master; when its own group has none, an ordered send fails unsent and an unordered one
/// goes to a writable queue.
#[test]
fn a_key_keeps_its_queue_while_a_group_has_no_master() {
    let b_count = Arc::new(AtomicUsize::new(0));
    let b = fake_master(Behaviour::Ok, Arc::clone(&b_count));
    let routes = |a_role: &str| {
        let source = FakeSource::default();
        source.set(
            "ns",
            vec![
                broker("a", 1, a_role, 1, &dead_address(), 4),
                broker("b", 2, "SYNC_MASTER", 1, &b, 4),
            ],
        );
        cache(&source, &["ns"])
    };
    let key_in_b = (0..)
        .map(|n: u32| n.to_string())
        .find(|k| crc32c::crc32c(k.as_bytes()) % 8 >= 4)
        .unwrap();
    let expected_queue = crc32c::crc32c(key_in_b.as_bytes()) % 8 - 4;
    let mut without_a = ClusterProducer::with_routes(routes("SLAVE"), Default::default());
    let outcome = without_a
        .send("t", Some(key_in_b.as_bytes()), &[message(b"", b"x")])
        .unwrap();
    assert_eq!(
        (outcome.group.as_str(), outcome.queue),
        ("b", expected_queue)
    );

    let key = key_in_group_a();
    let options = ClusterProducerOptions {
        ordered: true,
        ..Default::default()
    };
    let mut ordered = ClusterProducer::with_routes(routes("SLAVE"), options);
    let error = ordered
        .send("t", Some(key.as_bytes()), &[message(b"", b"x")])
        .unwrap_err();
    assert_eq!((error.class, error.attempts), (FailureClass::NotStored, 0));
    assert_eq!(b_count.load(Ordering::SeqCst), 1);
    let outcome = without_a
        .send("t", Some(key.as_bytes()), &[message(b"", b"x")])
        .unwrap();
    assert_eq!(outcome.group, "b");
}

fn producer_with(masters: &[(&str, &str)], options: ClusterProducerOptions) -> ClusterProducer {
    producer(masters, options)
}

/// A fake broker of topic `t` (one queue) that answers every pull with one message at the
/// pulled offset, whose body names `name`, and `suggest` in the summary; logs each pull.
fn fake_reader(name: &'static str, suggest: u8, log: Arc<Mutex<Vec<String>>>) -> String {
    use crate::protocol::message::{PullRequest, PullResponse, PullSummary, PulledMessageRef};
    let port = fake_broker::spawn(move |mut conn: FakeConn| {
        while let Some((header, body)) = conn.read_request() {
            match Opcode::from_u16(header.opcode) {
                Some(Opcode::Metadata) => conn.reply(
                    &header,
                    Status::Ok,
                    &metadata(vec![0], vec![topic("t", vec![0])]),
                ),
                Some(Opcode::Pull) => {
                    let request = PullRequest::decode(&body).unwrap();
                    log.lock()
                        .unwrap()
                        .push(format!("{name} {}", request.offset));
                    let mut out = Vec::new();
                    PullResponse {
                        summary: PullSummary {
                            next_offset: request.offset + 1,
                            min_offset: 0,
                            max_offset: request.offset + 1,
                            suggest,
                        },
                        messages: vec![PulledMessageRef {
                            queue_offset: request.offset,
                            born_timestamp_ms: 0,
                            store_timestamp_ms: 0,
                            key: b"",
                            properties: b"",
                            body: name.as_bytes(),
                        }],
                    }
                    .encode(&mut out);
                    conn.reply(&header, Status::Ok, &out)
                }
                Some(Opcode::GroupCommit) => {
                    let commit = crate::protocol::message::GroupCommit::decode(&body).unwrap();
                    log.lock()
                        .unwrap()
                        .push(format!("{name} commit {}", commit.offset));
                    conn.reply(&header, Status::Ok, b"")
                }
                _ => conn.reply(&header, Status::BadRequest, b""),
            }
        }
    });
    format!("127.0.0.1:{port}")
}

/// A commit the slave took while the master was out of the routes is sent to the master once
/// the reader is back on it (the master's metadata would overwrite the slave's offset).
#[test]
fn a_commit_a_slave_took_is_sent_to_the_master_when_it_returns() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let slave = fake_reader("slave", 0, Arc::clone(&log));
    let master = fake_reader("master", 0, Arc::clone(&log));
    let source = FakeSource::default();
    source.set("ns", vec![broker("a", 2, "SLAVE", 1, &slave, 1)]);
    let mut consumer =
        ClusterConsumer::with_routes(cache(&source, &["ns"]), ClusterConsumerOptions::default());
    let queue = QueueRef {
        group: "a".into(),
        queue: 0,
    };
    consumer.commit("g", "t", &queue, 7).unwrap();
    assert_eq!(consumer.pending_commits(), 1);
    source.set(
        "ns",
        vec![
            broker("a", 1, "SYNC_MASTER", 2, &master, 1),
            broker("a", 2, "SLAVE", 1, &slave, 1),
        ],
    );
    consumer.routes().invalidate();
    consumer.pull("t", &queue, 7, 10, 1 << 20, 0).unwrap();
    assert_eq!(consumer.pending_commits(), 0);
    assert_eq!(
        *log.lock().unwrap(),
        vec!["slave commit 7", "master 7", "master commit 7"]
    );
    // A commit the master takes is not remembered.
    consumer.commit("g", "t", &queue, 8).unwrap();
    assert_eq!(consumer.pending_commits(), 0);
}

fn consumer_of(brokers: Vec<BrokerEntry>) -> ClusterConsumer {
    let source = FakeSource::default();
    source.set("ns", brokers);
    ClusterConsumer::with_routes(cache(&source, &["ns"]), ClusterConsumerOptions::default())
}

#[test]
fn a_consumer_follows_the_slave_read_suggestion_per_queue() {
    use crate::protocol::message::{SUGGEST_MASTER, SUGGEST_SLAVE};
    let log = Arc::new(Mutex::new(Vec::new()));
    let master = fake_reader("master", SUGGEST_SLAVE, Arc::clone(&log));
    let slave = fake_reader("slave", SUGGEST_MASTER, Arc::clone(&log));
    let mut consumer = consumer_of(vec![
        broker("a", 1, "SYNC_MASTER", 1, &master, 1),
        broker("a", 2, "SLAVE", 1, &slave, 1),
    ]);
    let queue = QueueRef {
        group: "a".into(),
        queue: 0,
    };
    assert_eq!(consumer.queues("t").unwrap(), vec![queue.clone()]);
    let mut offset = 0;
    for _ in 0..4 {
        let r = consumer.pull("t", &queue, offset, 10, 1 << 20, 0).unwrap();
        offset = r.summary.next_offset;
    }
    // The master suggested a slave, the slave sent it back, and so on; no offset repeated.
    assert_eq!(
        *log.lock().unwrap(),
        vec!["master 0", "slave 1", "master 2", "slave 3"]
    );
    // The slave's last answer sent the queue back to the master.
    assert!(!consumer.reads_from_slave("t", &queue));
}

#[test]
fn a_consumer_reads_a_dead_masters_queues_from_its_slave() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let slave = fake_reader("slave", 0, Arc::clone(&log));
    let b = fake_reader("b", 0, Arc::clone(&log));
    let mut consumer = consumer_of(vec![
        broker("a", 1, "SYNC_MASTER", 1, &dead_address(), 1),
        broker("a", 2, "SLAVE", 1, &slave, 1),
        broker("b", 3, "SYNC_MASTER", 1, &b, 1),
    ]);
    let queues = consumer.queues("t").unwrap();
    assert_eq!(queues.len(), 2);
    for queue in &queues {
        consumer.pull("t", queue, 5, 10, 1 << 20, 0).unwrap();
    }
    assert_eq!(*log.lock().unwrap(), vec!["slave 5", "b 5"]);
    assert_eq!(consumer.active_broker("a"), Some(slave.as_str()));
}

#[test]
fn a_consumer_goes_to_the_master_the_routes_list_once_they_change() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let slave = fake_reader("slave", 0, Arc::clone(&log));
    let master = fake_reader("master", 0, Arc::clone(&log));
    let source = FakeSource::default();
    // The master expired from the routes: only the slave is listed.
    source.set("ns", vec![broker("a", 2, "SLAVE", 1, &slave, 1)]);
    let mut consumer =
        ClusterConsumer::with_routes(cache(&source, &["ns"]), ClusterConsumerOptions::default());
    let queue = QueueRef {
        group: "a".into(),
        queue: 0,
    };
    consumer.pull("t", &queue, 0, 10, 1 << 20, 0).unwrap();
    // It registered again (restarted, or a slave promoted in its place).
    source.set(
        "ns",
        vec![
            broker("a", 1, "SYNC_MASTER", 2, &master, 1),
            broker("a", 2, "SLAVE", 1, &slave, 1),
        ],
    );
    consumer.routes().invalidate();
    consumer.pull("t", &queue, 1, 10, 1 << 20, 0).unwrap();
    assert_eq!(*log.lock().unwrap(), vec!["slave 0", "master 1"]);
    assert_eq!(consumer.active_broker("a"), Some(master.as_str()));
}
