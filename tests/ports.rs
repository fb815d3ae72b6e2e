//! Port hygiene with the real broker on loopback: a broker SIGKILLed and restarted at once on
//! the same fixed ports becomes ready (its dead sockets and its store lock linger in the kernel
//! for a moment), also when the restart does not wait for the killed process to be reaped; a
//! second broker on ports in use exits with an error naming the busy port; no other process
//! can bind a port the broker holds, even with SO_REUSEPORT; and a client that keeps
//! connecting while a broker on an ephemeral-range port is down never keeps a connection to
//! itself, so the broker can come back on its port.

mod common;

use common::{run_binary, temp_store, test_config, Broker, PortBlock};
use ringmq::client::{is_self_connection, Connection, ConnectionOptions};
use ringmq::protocol::message::MessageRef;
use ringmq::protocol::Opcode;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// Rounds of kill-and-restart: each one must bind while the previous process's sockets may
/// still be torn down.
const RESTART_ROUNDS: usize = 4;

fn produce_one(broker: &Broker, topic: &str, body: &[u8]) {
    let mut client = broker.client();
    let message = MessageRef {
        born_timestamp_ms: 0,
        key: b"",
        properties: b"",
        body,
    };
    client.produce(topic, Some(0), &[message]).expect("produce");
}

#[test]
fn sigkill_and_immediate_restart_on_fixed_ports_becomes_ready() {
    let dir = temp_store();
    let ports = PortBlock::allocate();
    let (listen, ha) = (ports.listen_addr(), ports.ha_addr());
    let args = ["--shards", "2", "--listen", &listen, "--ha-listen", &ha];
    let mut broker = Broker::start(dir.path(), &args);
    broker.client().create_topic("restart", 2).expect("create");
    for round in 0..RESTART_ROUNDS {
        // Open connections at the kill leave sockets for the kernel to tear down.
        let _held = broker.client();
        produce_one(&broker, "restart", format!("round {round}").as_bytes());
        if round % 2 == 0 {
            broker.kill();
            broker.restart();
        } else {
            broker.kill_and_restart_at_once();
        }
        assert_eq!(
            broker.addr, listen,
            "round {round}: the client port is kept"
        );
        assert_eq!(broker.ha, ha, "round {round}: the HA port is kept");
        broker.client().ping().expect("ping after restart");
    }
    let retries = broker.log().matches("is in use; retrying").count();
    let lock_waits = broker.log().matches("is locked by").count();
    println!(
        "{RESTART_ROUNDS} immediate restarts; {retries} of them waited for a port, \
         {lock_waits} for the store's lock"
    );
    let got = broker
        .client()
        .pull("restart", 0, 0, 100, 1 << 20, 0)
        .expect("pull");
    assert_eq!(got.messages.len(), RESTART_ROUNDS, "every round's message");
}

/// Runs `ringmq serve` in `root` until it exits (it must) and returns its exit status and log.
fn serve_until_exit(root: &Path, args: &[&str]) -> (std::process::ExitStatus, String) {
    let config = root.join("broker.toml");
    std::fs::write(&config, test_config("")).expect("write config");
    let store = root.join("data");
    let (config, store) = (config.display().to_string(), store.display().to_string());
    let mut all = vec!["serve", "--config", &config, "--store", &store];
    all.extend_from_slice(args);
    let output = run_binary(&all, b"");
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status, log)
}

#[test]
fn a_second_broker_on_ports_in_use_exits_naming_the_port() {
    let dir = temp_store();
    let ports = PortBlock::allocate();
    let (listen, ha) = (ports.listen_addr(), ports.ha_addr());
    let _first = Broker::start(
        dir.path(),
        &["--shards", "2", "--listen", &listen, "--ha-listen", &ha],
    );
    let cases = [
        (
            "client port (listen)",
            listen.clone(),
            "127.0.0.1:0".to_string(),
        ),
        ("HA port (ha_listen)", "127.0.0.1:0".to_string(), ha.clone()),
    ];
    let runs: Vec<_> = cases
        .into_iter()
        .map(|(what, listen, ha)| {
            thread::spawn(move || {
                let dir = temp_store();
                let args = ["--shards", "2", "--listen", &listen, "--ha-listen", &ha];
                let (status, log) = serve_until_exit(dir.path(), &args);
                (what, listen, ha, status, log)
            })
        })
        .collect();
    for run in runs {
        let (what, listen, ha, status, log) = run.join().expect("second broker");
        assert!(
            !status.success(),
            "{what}: second broker exited with {status}"
        );
        let busy = if what.starts_with("client") {
            listen
        } else {
            ha
        };
        let named = format!("{what} {busy}: it is in use by another process");
        assert!(log.contains(&named), "{what}: log lacks `{named}`:\n{log}");
        assert!(
            !log.contains("ringmq ready"),
            "{what}: became ready:\n{log}"
        );
    }
}

/// A socket with SO_REUSEADDR and SO_REUSEPORT bound to `addr`: what another process of the
/// same user would try in order to share the broker's port.
fn bind_sharing(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(16)?;
    Ok(socket)
}

#[test]
fn no_other_process_can_bind_the_brokers_ports() {
    let dir = temp_store();
    let broker = Broker::start(dir.path(), &["--shards", "2", "--ha-listen", "127.0.0.1:0"]);
    let listen: SocketAddr = broker.addr.parse().expect("listen address");
    let mut held = vec![
        ("client port", listen),
        ("HA port", broker.ha.parse().unwrap()),
    ];
    for port in &broker.shard_ports {
        held.push(("shard port", SocketAddr::new(listen.ip(), *port)));
    }
    for (what, addr) in held {
        match bind_sharing(addr) {
            Ok(_) => panic!("another process could bind the broker's {what} {addr}"),
            Err(e) => assert_eq!(
                e.raw_os_error(),
                Some(libc::EADDRINUSE),
                "{what} {addr}: {e}"
            ),
        }
    }
    broker.client().ping().expect("the broker still serves");
}

/// A port inside the kernel's ephemeral range that is free now.
fn ephemeral_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Connects and pings in a loop until told to stop, counting successes; panics if a
/// connection it got was a connection to itself.
fn retrying_client(addr: String, stop: Arc<AtomicBool>, served: Arc<AtomicU64>) -> u64 {
    let options = ConnectionOptions {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(5),
        ..ConnectionOptions::default()
    };
    let mut attempts = 0u64;
    while !stop.load(Ordering::Relaxed) {
        attempts += 1;
        let Ok(mut connection) = Connection::connect(&addr, options) else {
            continue;
        };
        assert!(
            !is_self_connection(&connection),
            "the client kept a connection to itself"
        );
        if connection.call(Opcode::Ping, &[]).is_ok() {
            served.fetch_add(1, Ordering::Relaxed);
        }
    }
    attempts
}

#[test]
fn a_broker_on_an_ephemeral_port_comes_back_while_a_client_retries() {
    let dir = temp_store();
    let port = ephemeral_port();
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "--shards",
        "1",
        "--listen",
        &listen,
        "--ha-listen",
        "127.0.0.1:0",
    ];
    let mut broker = Broker::start(dir.path(), &args);
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let client = {
        let (addr, stop, served) = (listen.clone(), stop.clone(), served.clone());
        thread::spawn(move || retrying_client(addr, stop, served))
    };
    for round in 0..3 {
        broker.kill();
        // Down for a while: the client's connects walk the ephemeral range meanwhile.
        thread::sleep(Duration::from_millis(500));
        broker.restart();
        let before = served.load(Ordering::Relaxed);
        common::wait_until(
            Duration::from_secs(30),
            "the client is served again",
            || {
                assert!(!client.is_finished(), "the retrying client failed");
                (served.load(Ordering::Relaxed) > before).then_some(())
            },
        );
        println!("round {round}: the broker came back on {listen}");
    }
    stop.store(true, Ordering::Relaxed);
    let attempts = client.join().expect("retrying client");
    println!("the client connected {attempts} times");
}
