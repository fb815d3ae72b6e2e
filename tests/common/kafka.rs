//! A hand-driven Kafka connection and the produce requests the Kafka tests build by hand
//! (tests/kafka.rs, and the controller-mode tests that check Kafka's error codes).
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A hand-driven Kafka connection: size-prefixed requests, answers read in order.
pub struct Wire {
    pub stream: TcpStream,
    correlation: i32,
}

impl Wire {
    pub fn connect(kafka: &str) -> Wire {
        let stream = TcpStream::connect(kafka).expect("connect to the Kafka listener");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Wire {
            stream,
            correlation: 0,
        }
    }

    /// Sends `request` at `version` with a v1 header (or v2 for flexible versions).
    pub fn send<R: Encodable>(&mut self, key: ApiKey, version: i16, request: &R) -> i32 {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("ringmq-test")));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, key.request_header_version(version))
            .expect("header");
        request.encode(&mut body, version).expect("request");
        self.raw(&body);
        self.correlation
    }

    pub fn raw(&mut self, body: &[u8]) {
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        self.stream.write_all(&frame).expect("send");
    }

    /// The next answer's body, after its header (version `header_version`) and correlation.
    pub fn answer(&mut self, correlation: i32, header_version: i16) -> Option<Bytes> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).ok()?;
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut body).ok()?;
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, header_version).expect("header");
        assert_eq!(header.correlation_id, correlation);
        Some(body)
    }

    /// InitProducerId v4 for a new idempotent (not transactional) producer: its id.
    pub fn init_producer_id(&mut self) -> i64 {
        let answer: InitProducerIdResponse = self.call(
            ApiKey::InitProducerId,
            4,
            &InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        );
        assert_eq!(answer.error_code, 0, "InitProducerId");
        answer.producer_id.0
    }

    pub fn call<R: Encodable, A: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        request: &R,
    ) -> A {
        let correlation = self.send(key, version, request);
        let mut body = self
            .answer(correlation, key.response_header_version(version))
            .expect("an answer");
        A::decode(&mut body, version).expect("decodes")
    }
}

pub fn idempotent_batch(producer_id: i64, base_sequence: i32, values: &[&str]) -> Bytes {
    batch_with_headers(producer_id, base_sequence, values, &[])
}

/// [`idempotent_batch`] whose records each carry `headers`.
pub fn batch_with_headers(
    producer_id: i64,
    base_sequence: i32,
    values: &[&str],
    headers: &[(&str, &str)],
) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: base_sequence + i as i32,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
            headers: headers
                .iter()
                .map(|(name, value)| {
                    (
                        StrBytes::from_string(name.to_string()),
                        Some(Bytes::copy_from_slice(value.as_bytes())),
                    )
                })
                .collect(),
        })
        .collect();
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("batch");
    out.freeze()
}

pub fn produce_request(topic: &str, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(records)),
            ])])
}

pub fn produced(answer: &ProduceResponse) -> (i16, i64) {
    let p = &answer.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// Fetch v12 of `partition` of `topic` from offset 0 (no wait, 1 MiB): the partition's answer
/// and its records, decoded.
pub fn fetch_from_start(
    wire: &mut Wire,
    topic: &str,
    partition: i32,
) -> (fetch_response::PartitionData, Vec<Record>) {
    let fetched: FetchResponse = wire.call(
        ApiKey::Fetch,
        12,
        &FetchRequest::default()
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![fetch_request::FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)])]),
    );
    let answer = fetched.responses[0].partitions[0].clone();
    let mut records = answer.records.clone().unwrap_or_default();
    let decoded = if records.is_empty() {
        Vec::new()
    } else {
        kafka_protocol::records::RecordBatchDecoder::decode(&mut records)
            .expect("a record batch")
            .records
    };
    (answer, decoded)
}

// ---- Real Kafka clients (installed by scripts/test.sh and scripts/kafka-clients.sh) ----

/// The kcat binary, or `None` (after saying why) when it is not installed and not required.
pub fn kcat() -> Option<&'static str> {
    let found = Command::new("kcat")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some("kcat");
    }
    if std::env::var("RINGMQ_REQUIRE_KAFKA_CLIENTS").as_deref() == Ok("1") {
        panic!(
            "kcat is not installed and RINGMQ_REQUIRE_KAFKA_CLIENTS=1: install it \
             (`apt-get install -y kcat`) or run scripts/test.sh, which does"
        );
    }
    eprintln!("kcat is not installed: skipping (set RINGMQ_REQUIRE_KAFKA_CLIENTS=1 to fail)");
    None
}

/// The directory `scripts/kafka-clients.sh` installs (venv/, node/node_modules/,
/// kafka-python-src/), from `RINGMQ_KAFKA_CLIENTS`; `None` (after saying why) when unset and not
/// required.
pub fn kafka_clients() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("RINGMQ_KAFKA_CLIENTS").map(std::path::PathBuf::from);
    if let Some(dir) = dir.filter(|d| d.join("venv/bin/python").exists()) {
        return Some(dir);
    }
    if std::env::var("RINGMQ_REQUIRE_KAFKA_CLIENTS").as_deref() == Ok("1") {
        panic!(
            "RINGMQ_KAFKA_CLIENTS does not name an installed client directory and \
             RINGMQ_REQUIRE_KAFKA_CLIENTS=1: run scripts/kafka-clients.sh and pass its output"
        );
    }
    eprintln!("RINGMQ_KAFKA_CLIENTS unset: skipping (scripts/kafka-clients.sh installs them)");
    None
}

pub fn script(name: &str) -> String {
    format!("{}/tests/kafka/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs a client script to completion within `limit`; fails with its output and the broker's
/// log when it fails; returns its stdout. The pipes are drained while it runs (a client that
/// writes more than a pipe holds would otherwise block until the limit).
pub fn run_client(broker: &super::Broker, command: Command, limit: Duration) -> String {
    let (status, stdout, stderr, took) = run_to_end(command, limit);
    assert!(
        status.success(),
        "{status} after {took:?}:\nstdout:\n{stdout}\nstderr:\n{stderr}\nbroker log:\n{}",
        broker.log_tail()
    );
    stdout
}

/// Runs `command` until it exits or `limit` passes (then it is killed), reading its stdout and
/// stderr on their own threads; returns its status, both outputs and how long it ran.
pub fn run_to_end(
    mut command: Command,
    limit: Duration,
) -> (std::process::ExitStatus, String, String, Duration) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("client status") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            break child.wait().expect("killed client");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    (status, stdout, stderr, started.elapsed())
}

pub fn python(clients: &Path, script_name: &str, args: &[&str]) -> Command {
    let mut command = Command::new(clients.join("venv/bin/python"));
    command.arg("-u").arg(script(script_name)).args(args);
    command
}
