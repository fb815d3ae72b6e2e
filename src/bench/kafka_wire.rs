//! The Kafka wire for `ringmq bench --protocol kafka`: what the event-loop driver writes and
//! reads instead of ringmq frames when its producers speak to the broker's Kafka listener.
//!
//! A request is Produce v7 (the newest version before flexible encodings, which every Kafka
//! client of the last years sends and the listener serves) with one partition and one
//! RecordBatch v2 (no compression) holding the request's messages; its correlation id is the
//! driver's request id. An answer is matched by correlation id, as Kafka answers in request
//! order per connection. Encoding goes through the `kafka-protocol` crate, as a Kafka client's
//! would, so the figure includes a client's real encoding cost.

use crate::client::ClientError;
use crate::protocol::message::ProduceResponse as NativeAnswer;
use crate::protocol::{Acks, Status};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// The Produce version the driver sends.
pub const PRODUCE_VERSION: i16 = 7;

/// Kafka's `acks` for a bench level: `leader` is 1; `all` and the broker's default are -1
/// (which the listener maps to the broker's `default_acks`, raised to `min_acks`).
pub fn kafka_acks(acks: Option<Acks>) -> i16 {
    match acks {
        Some(Acks::Leader) => 1,
        Some(Acks::None) => 0,
        Some(Acks::All) | None => -1,
    }
}

/// What one Produce request carries.
pub struct Batch<'a> {
    pub topic: &'a str,
    pub partition: u32,
    /// Kafka's `acks` ([`kafka_acks`]).
    pub acks: i16,
    /// Every record's key (empty: none).
    pub key: &'a [u8],
    pub timestamp_ms: u64,
    pub values: &'a [Vec<u8>],
}

/// Appends one size-prefixed Produce request, correlation id `correlation`, holding `batch`.
pub fn encode_produce(
    out: &mut Vec<u8>,
    correlation: i32,
    batch: &Batch<'_>,
) -> Result<(), String> {
    let Batch {
        topic,
        partition,
        acks,
        key,
        timestamp_ms,
        values,
    } = *batch;
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, value)| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // Not idempotent: the batch's base sequence is -1. The encoder starts a new batch
            // wherever offset - sequence changes, so the sequence follows the offset.
            sequence: i as i32 - 1,
            timestamp: timestamp_ms as i64,
            key: (!key.is_empty()).then(|| Bytes::copy_from_slice(key)),
            value: Some(Bytes::copy_from_slice(value)),
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    let mut encoded = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut encoded,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| format!("encoding a record batch: {e}"))?;
    let request = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition as i32)
                .with_records(Some(encoded.freeze()))])]);
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(PRODUCE_VERSION)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_static_str("ringmq-bench")));
    let mut body = BytesMut::new();
    header
        .encode(
            &mut body,
            ApiKey::Produce.request_header_version(PRODUCE_VERSION),
        )
        .and_then(|()| request.encode(&mut body, PRODUCE_VERSION))
        .map_err(|e| format!("encoding a Produce request: {e}"))?;
    out.extend_from_slice(&(body.len() as i32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// A decoded answer: its length on the wire, its correlation id and the produce's outcome as
/// the native client would report it.
pub type Answer = (
    usize,
    i32,
    Result<crate::client::ProduceResult, ClientError>,
);

/// The complete answer at the front of `buf`, or `None` when it has not all arrived.
pub fn decode_answer(buf: &[u8], max_bytes: usize) -> Result<Option<Answer>, String> {
    let Some(size) = buf.get(..4) else {
        return Ok(None);
    };
    let size = i32::from_be_bytes(size.try_into().expect("4 bytes"));
    if size < 4 || size as usize > max_bytes {
        return Err(format!("a Kafka answer of {size} bytes"));
    }
    let wire_len = 4 + size as usize;
    let Some(frame) = buf.get(4..wire_len) else {
        return Ok(None);
    };
    let mut body = Bytes::copy_from_slice(frame);
    let header = ResponseHeader::decode(
        &mut body,
        ApiKey::Produce.response_header_version(PRODUCE_VERSION),
    )
    .map_err(|e| format!("a Kafka answer's header: {e}"))?;
    let answer = ProduceResponse::decode(&mut body, PRODUCE_VERSION)
        .map_err(|e| format!("a Produce answer: {e}"))?;
    let partition = answer
        .responses
        .first()
        .and_then(|t| t.partition_responses.first())
        .ok_or("a Produce answer without its partition")?;
    let count = 0; // not in a Produce answer; the driver counts what it sent
    Ok(Some((
        wire_len,
        header.correlation_id,
        outcome(partition.error_code, partition.base_offset, count),
    )))
}

/// A partition's error code as the native client reports a produce: 0 is OK; 20
/// (NOT_ENOUGH_REPLICAS_AFTER_APPEND: stored, not replicated in time) is stored without the
/// guarantee, as a native FLUSH_SLAVE_TIMEOUT; anything else failed.
fn outcome(
    error_code: i16,
    base_offset: i64,
    count: u32,
) -> Result<crate::client::ProduceResult, ClientError> {
    let status = match error_code {
        0 => Status::Ok,
        20 => Status::FlushSlaveTimeout,
        code => {
            return Err(ClientError::Protocol {
                addr: String::new(),
                reason: format!("Kafka error {code} on a Produce"),
            })
        }
    };
    Ok(crate::client::ProduceResult {
        status,
        response: NativeAnswer {
            queue: 0,
            base_offset: base_offset.max(0) as u64,
            count,
            commitlog_offset: 0,
        },
    })
}
