//! Acknowledgement levels against real processes: what `none`, `leader` and `all` wait for on
//! a SYNC_MASTER and an ASYNC_MASTER with a slave (SIGSTOPped to hold its confirmations back),
//! that `none` is never answered and leaves no waiting slot behind, that `min_acks` raises a
//! level, and that bad flag combinations are refused with BAD_REQUEST.

mod common;

use common::{temp_store, wait_until, Broker, PortBlock};
use ringmq::client::retry::reject;
use ringmq::client::{Acks, Client, ClientError, ClusterStatus, ProduceResult};
use ringmq::protocol::frame::{encode_frame, FrameDecoder, FrameHeader};
use ringmq::protocol::message::{
    encode_produce, ClusterStatusRequest, MessageRef, Ping, StatsRequest,
};
use ringmq::protocol::{Opcode, Status};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The slave wait is short so an `all` produce past a stopped slave is answered quickly; the
/// link timeout is long so the stopped slave's link stays registered (in sync) meanwhile, and
/// the produce is answered FLUSH_SLAVE_TIMEOUT rather than SLAVE_NOT_AVAILABLE.
const HA_CONFIG: &str = "ha_heartbeat_interval_ms = 100\nha_link_timeout_ms = 30000\n\
                         metadata_sync_interval_ms = 200\nsync_replica_timeout_ms = 1000\n";
const CATCH_UP: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(20);

struct Node {
    broker: Broker,
    ports: PortBlock,
    _dir: tempfile::TempDir,
}

fn start_node(role: &str, master: Option<&PortBlock>, shards: &str, config: &str) -> Node {
    let dir = temp_store();
    let ports = PortBlock::allocate();
    let (listen, ha) = (ports.listen_addr(), ports.ha_addr());
    let master_ha = master.map(|m| m.ha_addr());
    let mut args = vec![
        "--role",
        role,
        "--flush",
        "SYNC_FLUSH",
        "--listen",
        &listen,
        "--ha-listen",
        &ha,
        "--shards",
        shards,
    ];
    if let Some(m) = &master_ha {
        args.extend(["--master", m.as_str()]);
    }
    let toml = format!("{HA_CONFIG}{config}");
    let broker = Broker::start_with_config(dir.path(), &toml, &args);
    Node {
        broker,
        ports,
        _dir: dir,
    }
}

/// A master of `role` and its slave, one shard each, with topic `t` (one queue) replicated.
fn pair(role: &str) -> (Node, Node) {
    let master = start_node(role, None, "1", "");
    let slave = start_node("SLAVE", Some(&master.ports), "1", "");
    master.broker.client().create_topic("t", 1).expect("create");
    wait_caught_up(&master.broker);
    (master, slave)
}

fn status(broker: &Broker) -> Option<ClusterStatus> {
    Client::connect(&broker.addr)
        .ok()?
        .call(&ClusterStatusRequest {})
        .ok()
}

/// Waits until every shard of `master` has a slave that acknowledged its whole log.
fn wait_caught_up(master: &Broker) {
    wait_until(CATCH_UP, "the slave to catch up", || {
        let s = status(master)?;
        s.shards
            .iter()
            .all(|sh| sh.slaves.iter().any(|l| l.acked_offset == sh.max_offset))
            .then_some(())
    });
}

fn message(body: &[u8]) -> MessageRef<'_> {
    MessageRef {
        born_timestamp_ms: 0,
        key: b"",
        properties: b"",
        body,
    }
}

fn produce(client: &mut Client, body: &[u8], acks: Acks) -> ProduceResult {
    client
        .produce_with("t", Some(0), &[message(body)], acks)
        .unwrap_or_else(|e| panic!("produce at {acks}: {e}"))
        .unwrap_or_else(|| panic!("a produce at {acks} is answered"))
}

/// SIGCONT on drop, so a failed assertion does not leave a stopped process behind.
struct Paused<'a>(&'a Broker);

impl<'a> Paused<'a> {
    fn new(broker: &'a Broker) -> Self {
        broker.pause();
        Paused(broker)
    }
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        self.0.signal(libc::SIGCONT);
    }
}

#[test]
fn sync_master_answers_leader_without_its_stopped_slave_and_all_times_out() {
    let (master, slave) = pair("SYNC_MASTER");
    let mut client = master.broker.client();
    let paused = Paused::new(&slave.broker);
    assert_eq!(
        produce(&mut client, b"leader", Acks::Leader).status,
        Status::Ok
    );
    assert_eq!(
        produce(&mut client, b"all", Acks::All).status,
        Status::FlushSlaveTimeout
    );
    // A request that names no level gets the role's: `all` on a SYNC_MASTER, as before.
    let default = client
        .produce("t", Some(0), &[message(b"default")])
        .expect("produce");
    assert_eq!(default.status, Status::FlushSlaveTimeout);
    drop(paused);
    assert_eq!(produce(&mut client, b"again", Acks::All).status, Status::Ok);
}

/// A produce forwarded from the shard that received it to the shard owning its queue keeps
/// its level: at `leader` it is answered OK while the slave is stopped, where the role's
/// default (`all`) would time out.
#[test]
fn a_forwarded_produce_keeps_its_level() {
    let master = start_node("SYNC_MASTER", None, "2", "");
    let slave = start_node("SLAVE", Some(&master.ports), "2", "");
    let info = master.broker.client().create_topic("t", 2).expect("create");
    wait_caught_up(&master.broker);
    let queue = 0u32;
    let owner = info.queue_shards[queue as usize] as usize;
    let other = master.broker.shard_ports[1 - owner];
    let mut socket = raw(&format!("127.0.0.1:{other}"));
    let _paused = Paused::new(&slave.broker);
    let mut body = Vec::new();
    encode_produce(&mut body, "t", queue, &[message(b"forwarded")]);
    send(&mut socket, Opcode::Produce, 1, Some(Acks::Leader), &body);
    let answer = read_response(&mut socket);
    assert_eq!((answer.request_id, answer.status), (1, Status::Ok as u16));
    send(&mut socket, Opcode::Produce, 2, Some(Acks::All), &body);
    let answer = read_response(&mut socket);
    assert_eq!(
        (answer.request_id, answer.status),
        (2, Status::FlushSlaveTimeout as u16)
    );
}

#[test]
fn async_master_at_all_waits_for_its_slave() {
    let (master, slave) = pair("ASYNC_MASTER");
    let mut client = master.broker.client();
    {
        let _paused = Paused::new(&slave.broker);
        // The role's default is `leader`: answered without the slave.
        let default = client
            .produce("t", Some(0), &[message(b"default")])
            .expect("produce");
        assert_eq!(default.status, Status::Ok);
        assert_eq!(
            produce(&mut client, b"stopped", Acks::All).status,
            Status::FlushSlaveTimeout
        );
    }
    let acked = produce(&mut client, b"all", Acks::All);
    assert_eq!(acked.status, Status::Ok);
    // Answered only once the slave confirmed it: the master recorded that confirmation
    // before releasing the produce (the slave's own status may trail its acknowledgement).
    let master_status = status(&master.broker).expect("master status");
    let confirmed = master_status.shards[0]
        .slaves
        .iter()
        .map(|l| l.acked_offset)
        .max()
        .unwrap_or(0);
    assert!(
        confirmed > acked.response.commitlog_offset,
        "the slave confirmed up to {confirmed}, before the acknowledged record at {}",
        acked.response.commitlog_offset
    );
}

/// `min_acks` binds the broker's own produces too: on an ASYNC_MASTER with `min_acks = "all"`
/// a reject's copy is not answered OK while the slave cannot confirm it.
#[test]
fn min_acks_binds_the_copy_of_a_rejected_message() {
    let master = start_node("ASYNC_MASTER", None, "1", "min_acks = \"all\"\n");
    let slave = start_node("SLAVE", Some(&master.ports), "1", "");
    let mut client = master.broker.client();
    client.create_topic("t", 1).expect("create");
    wait_caught_up(&master.broker);
    let stored = produce(&mut client, b"to reject", Acks::Leader);
    assert_eq!(stored.status, Status::Ok, "raised to all, confirmed");
    let offset = stored.response.base_offset;
    let paused = Paused::new(&slave.broker);
    let err = reject(&mut client, "app", "t", 0, offset, 0)
        .expect_err("the copy's produce runs at all and the slave is stopped");
    assert!(
        matches!(
            err,
            ClientError::Status {
                status: Status::FlushSlaveTimeout,
                ..
            }
        ),
        "{err}"
    );
    drop(paused);
    wait_caught_up(&master.broker);
    reject(&mut client, "app", "t", 0, offset, 0).expect("the slave confirms the copy");
}

#[test]
fn none_is_appended_never_answered_and_holds_no_slot() {
    const COUNT: u64 = 10_000;
    let dir = temp_store();
    let broker = Broker::start(dir.path(), &["--shards", "1", "--flush", "SYNC_FLUSH"]);
    let mut client = broker.client();
    client.create_topic("t", 1).expect("create");
    for i in 0..COUNT {
        let body = format!("m{i}");
        let sent = client
            .produce_with("t", Some(0), &[message(body.as_bytes())], Acks::None)
            .expect("write");
        assert!(sent.is_none(), "a none produce returns no result");
    }
    assert_eq!(client.in_flight(), 0, "nothing waits for a none produce");
    client.call(&Ping {}).expect("ping after 10k none produces");

    // Every message becomes readable (long polls wait for the appends).
    let mut offset = 0;
    while offset < COUNT {
        let pulled = client
            .pull("t", 0, offset, 1000, 1 << 20, 5000)
            .expect("pull");
        assert!(
            !pulled.messages.is_empty(),
            "no message at {offset} within the long poll"
        );
        for m in &pulled.messages {
            assert_eq!(m.body, format!("m{}", m.queue_offset).as_bytes());
        }
        offset = pulled.summary.next_offset;
    }
    let stats = client.call(&StatsRequest {}).expect("stats");
    assert_eq!(stats.counters["produce_acks_none_total"], COUNT);
    assert_eq!(stats.counters["produce_acks_none_errors_total"], 0);

    // On the wire: a none produce gets no frame. Once it is readable (its produce is done)
    // nothing arrives on its connection, and a ping is answered next.
    let mut socket = raw(&broker.addr);
    let mut body = Vec::new();
    encode_produce(&mut body, "t", 0, &[message(b"silent")]);
    send(&mut socket, Opcode::Produce, 1, Some(Acks::None), &body);
    let pulled = client.pull("t", 0, COUNT, 10, 1 << 20, 5000).expect("pull");
    assert_eq!(pulled.messages[0].body, b"silent");
    assert_nothing_arrives(&mut socket, Duration::from_millis(500));
    send(&mut socket, Opcode::Ping, 2, None, &[]);
    assert_eq!(read_response(&mut socket).request_id, 2);
}

/// Reads for `wait` and fails on any byte: the broker wrote nothing to this connection.
fn assert_nothing_arrives(socket: &mut TcpStream, wait: Duration) {
    socket.set_read_timeout(Some(wait)).unwrap();
    let mut chunk = [0u8; 64];
    match socket.read(&mut chunk) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Ok(n) => panic!(
            "{n} bytes arrived where no answer is due: {:?}",
            &chunk[..n]
        ),
        Err(e) => panic!("the connection failed: {e}"),
    }
    socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
}

/// With `min_acks = "leader"` a `none` produce is raised and, at its effective level, answered:
/// the client library drops that answer (its connection stays usable), and on the wire the
/// answer is there, OK, with the request's id.
#[test]
fn min_acks_raises_none_to_leader_and_the_answer_is_written() {
    let dir = temp_store();
    let broker = Broker::start_with_config(
        dir.path(),
        "min_acks = \"leader\"\n",
        &["--shards", "1", "--flush", "SYNC_FLUSH"],
    );
    let mut client = broker.client();
    client.create_topic("t", 1).expect("create");
    for i in 0..100 {
        let body = format!("m{i}");
        let sent = client
            .produce_with("t", Some(0), &[message(body.as_bytes())], Acks::None)
            .expect("write");
        assert!(sent.is_none());
    }
    client
        .call(&Ping {})
        .expect("the raised answers do not break the connection");
    let pulled = client.pull("t", 0, 0, 1000, 1 << 20, 5000).expect("pull");
    assert!(!pulled.messages.is_empty());

    let mut socket = raw(&broker.addr);
    let mut body = Vec::new();
    encode_produce(&mut body, "t", 0, &[message(b"raised")]);
    send(&mut socket, Opcode::Produce, 7, Some(Acks::None), &body);
    let answer = read_response(&mut socket);
    assert_eq!(
        (answer.request_id, answer.opcode, answer.status),
        (7, Opcode::Produce as u16, Status::Ok as u16)
    );
    let stats = client.call(&StatsRequest {}).expect("stats");
    assert_eq!(stats.counters["produce_acks_none_total"], 0);
    assert_eq!(stats.counters["produce_acks_leader_total"], 101);
    assert_eq!(stats.counters["produce_acks_raised_total"], 101);
}

/// A producer that only sends `none` never waits for anything; on a broker whose `min_acks`
/// answers them the client drains those answers as it sends, so neither side's buffers fill
/// and stall the other, and every message arrives. A dropped client drains to the broker's
/// close, so its last produces are read rather than lost to a reset.
#[test]
fn a_producer_that_only_sends_none_never_stalls_a_raising_broker() {
    const COUNT: u64 = 200_000;
    let dir = temp_store();
    let broker =
        Broker::start_with_config(dir.path(), "min_acks = \"leader\"\n", &["--shards", "1"]);
    broker.client().create_topic("t", 1).expect("create");
    let mut client = broker.client();
    for i in 0..COUNT {
        let body = format!("m{i}");
        let sent = client
            .produce_with("t", Some(0), &[message(body.as_bytes())], Acks::None)
            .expect("write");
        assert!(sent.is_none());
    }
    client
        .call(&Ping {})
        .expect("a ping after the none produces");
    // The last ones, then drop: the drop drains to the close instead of resetting.
    let mut last = broker.client();
    for i in 0..100 {
        let body = format!("tail{i}");
        last.produce_with("t", Some(0), &[message(body.as_bytes())], Acks::None)
            .expect("write");
    }
    drop(last);
    let mut offset = 0;
    while offset < COUNT + 100 {
        let pulled = client
            .pull("t", 0, offset, 1000, 1 << 20, 5000)
            .expect("pull");
        assert!(
            !pulled.messages.is_empty(),
            "no message at {offset} within the long poll"
        );
        offset = pulled.summary.next_offset;
    }
    let stats = client.call(&StatsRequest {}).expect("stats");
    assert_eq!(stats.counters["produce_acks_leader_total"], COUNT + 100);
}

#[test]
fn bad_flag_combinations_are_refused_and_the_connection_stays_open() {
    let dir = temp_store();
    let broker = Broker::start(dir.path(), &["--shards", "1"]);
    broker.client().create_topic("t", 1).expect("create");
    let mut socket = raw(&broker.addr);
    let mut body = Vec::new();
    encode_produce(&mut body, "t", 0, &[message(b"x")]);
    let bad: [(u8, Opcode, &[u8]); 4] = [
        (0x04, Opcode::Ping, &[]),      // a level on an opcode other than Produce
        (0x08, Opcode::Produce, &body), // a reserved bit
        (0x80 | 0x04, Opcode::Produce, &body), // a reserved bit beside a level
        (0x01, Opcode::Produce, &body), // the response bit in a request
    ];
    for (id, (flags, opcode, body)) in bad.into_iter().enumerate() {
        let id = id as u64 + 1;
        send_flags(&mut socket, opcode, id, flags, body);
        let answer = read_response(&mut socket);
        assert_eq!(
            (answer.request_id, answer.status),
            (id, Status::BadRequest as u16),
            "flags {flags:#04x}: {}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    send(&mut socket, Opcode::Ping, 99, None, &[]);
    let answer = read_response(&mut socket);
    assert_eq!((answer.request_id, answer.status), (99, Status::Ok as u16));
    // None of the refused produces was stored.
    let pulled = broker
        .client()
        .pull("t", 0, 0, 10, 1 << 20, 0)
        .expect("pull");
    assert!(pulled.messages.is_empty());
}

fn raw(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

fn send(socket: &mut TcpStream, opcode: Opcode, id: u64, acks: Option<Acks>, body: &[u8]) {
    let flags = FrameHeader::request(opcode, id).with_acks(acks).flags;
    send_flags(socket, opcode, id, flags, body);
}

fn send_flags(socket: &mut TcpStream, opcode: Opcode, id: u64, flags: u8, body: &[u8]) {
    let mut out = Vec::new();
    let header = FrameHeader {
        flags,
        ..FrameHeader::request(opcode, id)
    };
    encode_frame(&mut out, header, body);
    socket.write_all(&out).expect("write");
}

struct RawResponse {
    request_id: u64,
    opcode: u16,
    status: u16,
    body: Vec<u8>,
}

fn read_response(socket: &mut TcpStream) -> RawResponse {
    let decoder = FrameDecoder::new(64 << 20);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(frame) = decoder.decode(&buf).expect("a well-formed frame") {
            assert!(frame.header.is_response());
            assert_eq!(
                frame.wire_len(),
                buf.len(),
                "one answer at a time in these tests"
            );
            return RawResponse {
                request_id: frame.header.request_id,
                opcode: frame.header.opcode,
                status: frame.header.status,
                body: frame.body.to_vec(),
            };
        }
        let n = socket.read(&mut chunk).expect("read an answer");
        assert!(n > 0, "the broker closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}
