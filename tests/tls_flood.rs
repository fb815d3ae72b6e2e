//! A handshake flood against the TLS port while an established producer keeps sending (issue
//! 13, item 10): many clients stall (half a ClientHello), crawl (a real ClientHello a few
//! bytes at a time) or churn (full handshakes, then close); none of the producer's requests
//! times out. In a file of its own, so that its thousands of connections run in a process
//! without other TLS tests (tests of one file run in parallel; the flood made tests/tls.rs's
//! fresh-client checks fail on a small machine). Certificates are made here with rcgen.

mod common;

use common::{temp_store, wait_until, Broker};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use ringmq::client::{Client, ClientOptions, ClientTls, ConnectionOptions};
use ringmq::protocol::message::MessageRef;
use ringmq::protocol::Status;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A CA and the broker's leaf (an IP SAN for 127.0.0.1), as PEM files under `dir`:
/// (CA, certificate, key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "ca");
    let ca_key = KeyPair::generate().unwrap();
    let ca = params.self_signed(&ca_key).unwrap();
    let mut leaf = CertificateParams::default();
    leaf.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("broker.crt"),
        dir.join("broker.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

fn options(ca: &Path) -> ClientOptions {
    ClientOptions {
        connection: ConnectionOptions {
            tls: Some(ClientTls::from_files(ca, None).expect("client TLS").leak()),
            connect_timeout: Duration::from_secs(5),
            ..ConnectionOptions::default()
        },
        ..ClientOptions::default()
    }
}

fn message(body: &[u8]) -> MessageRef<'_> {
    MessageRef {
        born_timestamp_ms: 1_700_000_000_000,
        key: b"",
        properties: b"",
        body,
    }
}

/// Whether the broker has closed `s` within `wait` (end of stream or a reset).
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait.max(Duration::from_millis(1))))
        .unwrap();
    let mut sink = [0u8; 64];
    match s.read(&mut sink) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
        ),
    }
}

/// A real client's ClientHello, as it goes on the wire: a TLS client connects to a listener
/// here that reads what it sends and never answers.
fn captured_client_hello(ca: &Path) -> Vec<u8> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let ca = ca.to_path_buf();
    let client = std::thread::spawn(move || {
        let mut options = options(&ca);
        options.connection.connect_timeout = Duration::from_secs(2);
        options.connection.read_timeout = Duration::from_secs(2);
        let _ = Client::connect_with(&addr, options);
    });
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut header = [0u8; 5];
    s.read_exact(&mut header).unwrap();
    assert_eq!(header[0], 0x16, "a handshake record");
    let len = u16::from_be_bytes([header[3], header[4]]) as usize;
    let mut hello = header.to_vec();
    hello.resize(5 + len, 0);
    s.read_exact(&mut hello[5..]).unwrap();
    drop(s);
    let _ = client.join();
    hello
}

/// p50 and p99 (µs) of `count` single-message produces on `producer`; every one must succeed
/// (the client's request timeout is the "never times out" bound).
fn produce_latencies(producer: &mut Client, count: usize) -> (u64, u64) {
    let mut latencies_us = Vec::with_capacity(count);
    for i in 0..count {
        let body = format!("m{i}");
        let started = Instant::now();
        let ack = producer.produce("flood", Some(0), &[message(body.as_bytes())]);
        latencies_us.push(started.elapsed().as_micros() as u64);
        assert_eq!(
            ack.expect("produce under a handshake flood").status,
            Status::Ok
        );
    }
    latencies_us.sort_unstable();
    (latencies_us[count / 2], latencies_us[count * 99 / 100])
}

/// Many clients stall (half a ClientHello), crawl (a real ClientHello a few bytes at a time)
/// or churn (full handshakes, then close) against the TLS port while an established producer
/// keeps sending: none of its requests times out. Its p50/p99 without and with the flood are
/// printed (`perf/tls-flood.sh` collects them; a figure, not an assertion).
#[test]
fn an_established_producer_never_times_out_under_a_crawling_handshake_flood() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let requests: usize = std::env::var("RINGMQ_FLOOD_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let dir = temp_store();
    let (ca, cert, key) = certificates(dir.path());
    let broker = Broker::start_with_config(
        dir.path(),
        &format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n\
             tls_max_handshakes_per_shard = 64\ntls_handshake_timeout_ms = 3000\n",
            cert.display(),
            key.display()
        ),
        &["--shards", "1"],
    );
    let mut producer_options = options(&ca);
    // Generous: the flood may slow a request, never make it wait this long.
    producer_options.connection.read_timeout = Duration::from_secs(20);
    let mut producer = Client::connect_with(&broker.addr, producer_options).expect("connect");
    producer.create_topic("flood", 1).expect("create");
    let (quiet_p50, quiet_p99) = produce_latencies(&mut producer, requests);

    let hello = Arc::new(captured_client_hello(&ca));
    let running = Arc::new(AtomicBool::new(true));
    let opened = Arc::new(AtomicU64::new(0));
    let mut flood = Vec::new();
    for kind in 0..10 {
        let (running, opened, hello, addr, ca) = (
            running.clone(),
            opened.clone(),
            hello.clone(),
            broker.addr.clone(),
            ca.clone(),
        );
        flood.push(std::thread::spawn(move || {
            while running.load(Ordering::SeqCst) {
                opened.fetch_add(1, Ordering::Relaxed);
                match kind % 3 {
                    // Stall: half a ClientHello, held until the broker drops it.
                    0 => {
                        if let Ok(mut s) = TcpStream::connect(&addr) {
                            let _ = s.write_all(&hello[..hello.len() / 2]);
                            let _ = closed_within(&mut s, Duration::from_secs(4));
                        }
                    }
                    // Crawl: the whole ClientHello, 16 bytes every 20 ms.
                    1 => {
                        if let Ok(mut s) = TcpStream::connect(&addr) {
                            for piece in hello.chunks(16) {
                                if !running.load(Ordering::SeqCst) || s.write_all(piece).is_err() {
                                    break;
                                }
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                    }
                    // Churn: a full handshake (the broker's CPU), then close.
                    _ => {
                        let _ = Client::connect_with(&addr, options(&ca));
                    }
                }
            }
        }));
    }
    wait_until(Duration::from_secs(10), "the flood under way", || {
        (opened.load(Ordering::Relaxed) >= 20).then_some(())
    });
    let (flood_p50, flood_p99) = produce_latencies(&mut producer, requests);
    running.store(false, Ordering::SeqCst);
    for thread in flood {
        thread.join().unwrap();
    }
    eprintln!(
        "tls handshake flood: produce p50 {quiet_p50} us, p99 {quiet_p99} us without; \
         p50 {flood_p50} us, p99 {flood_p99} us under the flood ({} flood connections)",
        opened.load(Ordering::Relaxed)
    );
}
