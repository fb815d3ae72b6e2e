//! Kafka record batches (v2) to native messages and back.
//!
//! A produced batch is decoded with `kafka-protocol`'s RecordBatchDecoder (which checks its
//! crc32c); a compressed batch's records are decompressed here, by pure-Rust codecs read
//! through a limit, so a small batch cannot claim gigabytes. Each record becomes one native
//! message:
//!
//! - key: the record key; a null key is stored as an empty key, and an empty key reads back
//!   as null (a native message has no null key);
//! - body: the value; a null value (a tombstone) is stored as an empty body and reads back as
//!   an empty value (ringmq has no compaction, so a tombstone means nothing to it);
//! - born timestamp: the record's timestamp (CreateTime); a missing one (-1) is the append
//!   time;
//! - headers: one properties line each, `name=value`, in the record's order; a null header
//!   value is the line `name` (no `=`). `%`, `=`, newline and bytes outside printable ASCII
//!   are written `%XX` in names, and all but `=` in values, so every header survives the trip
//!   byte for byte. Reading a native message, each properties line becomes a header the same
//!   way (a line without escapes is taken as it is).
//!
//! A fetch answers with one uncompressed batch per partition built from the stored messages.

use bytes::{Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use std::io::Read;

/// One record of a produced batch, converted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NativeMessage {
    pub born_timestamp_ms: u64,
    pub key: Vec<u8>,
    pub properties: Vec<u8>,
    pub body: Vec<u8>,
}

/// The idempotence fields of a batch's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerFields {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

/// One produced batch: its producer fields and its records as native messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducedBatch {
    pub producer: ProducerFields,
    pub messages: Vec<NativeMessage>,
}

/// Why a produced record set is refused; the message names the limit.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Not a v2 batch, a bad crc, a truncated or malformed batch, or a codec error.
    #[error("corrupt record batch: {0}")]
    Corrupt(String),
    /// Transactional or control batches: ringmq has no transactions.
    #[error("transactional batches are not supported by ringmq (no transaction coordinator)")]
    Transactional,
    /// Decompressed records larger than the limit.
    #[error("a batch decompresses to more than {0} bytes (max_frame_bytes)")]
    TooLarge(usize),
    /// More than one batch for a partition: Kafka's own rule from Produce v3 (the oldest
    /// served), and what keeps one partition's decompression to one bounded batch.
    /// Headers past [`MAX_HEADERS_PER_RECORD`] or [`MAX_HEADERS_PER_BATCH`].
    #[error("too many record headers: {0}")]
    TooManyHeaders(String),
    /// A record's headers past [`MAX_HEADER_BYTES_PER_RECORD`] bytes.
    #[error("{0} bytes of headers in a record (at most {MAX_HEADER_BYTES_PER_RECORD})")]
    HeadersTooLarge(usize),
    #[error("{0} record batches for one partition (Produce v3 and later carry exactly one)")]
    SeveralBatches(usize),
}

/// Whether a record set's batches are compressed (so decoding it needs room for the
/// decompressed records), read from the batch headers only.
pub fn is_compressed(records: &Bytes) -> bool {
    let mut buf = records.clone();
    RecordBatchDecoder::decode_batch_info(&mut buf)
        .is_ok_and(|infos| infos.iter().any(|i| i.compression != Compression::None))
}

/// The largest zstd window a produced batch may declare, at least: what Kafka clients'
/// levels use (windowLog 23 for levels up to 19). The window is allocated before the first
/// byte is decoded, so it is also capped by the decompressed limit when that is larger.
const ZSTD_MIN_WINDOW_BYTES: usize = 8 << 20;

/// Decodes a produce request's record set: exactly one batch (Kafka's rule since Produce v3).
/// `now_ms` stands in for a missing timestamp; `max_decompressed` bounds the decompressed
/// records, so one partition of a request decompresses to at most that.
pub fn decode_record_set(
    records: &Bytes,
    now_ms: u64,
    max_decompressed: usize,
) -> Result<Vec<ProducedBatch>, BatchError> {
    let mut infos_buf = records.clone();
    let infos = RecordBatchDecoder::decode_batch_info(&mut infos_buf)
        .map_err(|e| BatchError::Corrupt(e.to_string()))?;
    if infos.len() > 1 {
        return Err(BatchError::SeveralBatches(infos.len()));
    }
    let mut buf = records.clone();
    let mut batches = Vec::with_capacity(infos.len());
    for info in &infos {
        if info.version != 2 {
            return Err(BatchError::Corrupt(format!(
                "message format v{} (ringmq reads record batches v2 only)",
                info.version
            )));
        }
        if info.transactional || info.control {
            return Err(BatchError::Transactional);
        }
        let count = usize::try_from(info.record_count)
            .ok()
            .filter(|n| *n <= MAX_RECORDS_PER_BATCH)
            .ok_or_else(|| {
                BatchError::Corrupt(format!(
                    "{} records in one batch (at most {MAX_RECORDS_PER_BATCH})",
                    info.record_count
                ))
            })?;
        let decompress = |data: &mut Bytes, compression: Compression| {
            let records = decompress(data, compression, max_decompressed)?;
            check_record_counts(&records, count)?;
            Ok::<_, BatchError>(records).map_err(anyhow::Error::from)
        };
        let set = RecordBatchDecoder::decode_with_custom_compression(&mut buf, Some(decompress))
            .map_err(|e| match e.downcast::<BatchError>() {
                Ok(batch) => batch,
                Err(e) => BatchError::Corrupt(e.to_string()),
            })?;
        let messages = set.records.iter().map(|r| to_native(r, now_ms)).collect();
        batches.push(ProducedBatch {
            producer: ProducerFields {
                producer_id: info.producer_id,
                producer_epoch: info.producer_epoch,
                base_sequence: info.base_sequence,
            },
            messages,
        });
    }
    if !buf.is_empty() || batches.is_empty() {
        return Err(BatchError::Corrupt(
            "the record set is not a whole number of v2 batches".to_string(),
        ));
    }
    Ok(batches)
}

/// Records in one batch at most: a native produce's message limit.
pub const MAX_RECORDS_PER_BATCH: usize = crate::constants::MAX_MESSAGES_PER_PRODUCE;

/// Headers one record may carry: its properties, at most 64 KiB, take a byte per header at
/// least (the line break), and far fewer in practice.
pub const MAX_HEADERS_PER_RECORD: usize = 4_096;

/// Headers one batch may carry in all. Decoded, a header costs the codec an entry of about
/// 64 bytes for its two bytes on the wire, so a batch of empty headers would amplify
/// `max_frame_bytes` of records some thirtyfold; this bounds it to a few MiB.
pub const MAX_HEADERS_PER_BATCH: usize = 65_536;

/// Header name and value bytes one record may carry: they become its properties, which the
/// store keeps behind a u16 length.
pub const MAX_HEADER_BYTES_PER_RECORD: usize = u16::MAX as usize;

/// Walks a batch's (decompressed) records before the codec decodes them, checking that each
/// length and count fits in the bytes that are there, and the header bounds above. The
/// vendored kafka-protocol caps its reservations by the bytes left, but a record's headers
/// still cost far more decoded than on the wire.
fn check_record_counts(records: &[u8], count: usize) -> Result<(), BatchError> {
    let corrupt = |what: &str| BatchError::Corrupt(format!("record {what} does not fit the batch"));
    let mut batch_headers = 0usize;
    let mut rest = records;
    for _ in 0..count {
        let len = varint(&mut rest).ok_or_else(|| corrupt("length"))?;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= rest.len())
            .ok_or_else(|| corrupt("length"))?;
        let (mut record, tail) = rest.split_at(len);
        rest = tail;
        record = record.get(1..).ok_or_else(|| corrupt("attributes"))?;
        varint(&mut record).ok_or_else(|| corrupt("timestamp delta"))?;
        varint(&mut record).ok_or_else(|| corrupt("offset delta"))?;
        for field in ["key", "value"] {
            skip_nullable(&mut record).ok_or_else(|| corrupt(field))?;
        }
        let headers = varint(&mut record).ok_or_else(|| corrupt("header count"))?;
        // A header takes at least two bytes (its name's and its value's lengths).
        let headers = usize::try_from(headers)
            .ok()
            .filter(|h| h.saturating_mul(2) <= record.len())
            .ok_or_else(|| corrupt("header count"))?;
        batch_headers += headers;
        if headers > MAX_HEADERS_PER_RECORD || batch_headers > MAX_HEADERS_PER_BATCH {
            return Err(BatchError::TooManyHeaders(format!(
                "{headers} headers in a record, {batch_headers} in the batch so far (at most \
                 {MAX_HEADERS_PER_RECORD} and {MAX_HEADERS_PER_BATCH})"
            )));
        }
        let before = record.len();
        for _ in 0..headers {
            skip_nullable(&mut record).ok_or_else(|| corrupt("header name"))?;
            skip_nullable(&mut record).ok_or_else(|| corrupt("header value"))?;
        }
        if before - record.len() > MAX_HEADER_BYTES_PER_RECORD {
            return Err(BatchError::HeadersTooLarge(before - record.len()));
        }
    }
    Ok(())
}

/// A zigzag varint (Kafka's record fields), at most 10 bytes.
fn varint(buf: &mut &[u8]) -> Option<i64> {
    let mut value: u64 = 0;
    for i in 0..10 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    None
}

/// Skips a varint-length-prefixed field (-1: null).
fn skip_nullable(buf: &mut &[u8]) -> Option<()> {
    match varint(buf)? {
        -1 => Some(()),
        len => {
            let len = usize::try_from(len).ok().filter(|l| *l <= buf.len())?;
            *buf = &buf[len..];
            Some(())
        }
    }
}

fn to_native(record: &Record, now_ms: u64) -> NativeMessage {
    NativeMessage {
        born_timestamp_ms: u64::try_from(record.timestamp).unwrap_or(now_ms),
        key: record.key.as_deref().unwrap_or_default().to_vec(),
        properties: headers_to_properties(
            record
                .headers
                .iter()
                .map(|(name, value)| (name.as_bytes(), value.as_deref())),
        ),
        body: record.value.as_deref().unwrap_or_default().to_vec(),
    }
}

/// One stored message to put in a fetch answer.
pub struct StoredMessage<'a> {
    pub offset: u64,
    pub born_timestamp_ms: u64,
    pub key: &'a [u8],
    pub properties: &'a [u8],
    pub body: &'a [u8],
}

/// One uncompressed v2 batch holding `messages` (consecutive offsets), empty when there are none.
pub fn encode_batch(messages: &[StoredMessage<'_>]) -> Result<Bytes, BatchError> {
    if messages.is_empty() {
        return Ok(Bytes::new());
    }
    let base = messages[0].offset;
    let records: Vec<Record> = messages.iter().map(|m| to_record(m, base)).collect();
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| BatchError::Corrupt(e.to_string()))?;
    Ok(out.freeze())
}

/// `base`: the batch's first offset. The encoder starts a new batch wherever
/// `offset - sequence` changes, so each record's sequence follows its offset, from -1 at the
/// base: one batch, whose base sequence is -1 (no producer).
fn to_record(m: &StoredMessage<'_>, base: u64) -> Record {
    let mut record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: m.offset as i64,
        sequence: (m.offset.wrapping_sub(base) as i32).wrapping_sub(1),
        timestamp: i64::try_from(m.born_timestamp_ms).unwrap_or(i64::MAX),
        key: (!m.key.is_empty()).then(|| Bytes::copy_from_slice(m.key)),
        value: Some(Bytes::copy_from_slice(m.body)),
        headers: Default::default(),
    };
    for (name, value) in properties_to_headers(m.properties) {
        // The broker's mark of an idempotent batch is not the producer's header.
        if name == crate::protocol::properties::KAFKA_PRODUCER.as_bytes() {
            continue;
        }
        // A header name must be UTF-8 on the wire; an unescaped binary name is escaped.
        let name = String::from_utf8(name).unwrap_or_else(|e| escape(e.as_bytes(), true));
        record
            .headers
            .insert(StrBytes::from_string(name), value.map(Bytes::from));
    }
    record
}

/// Kafka headers as properties lines (see the module docs).
pub fn headers_to_properties<'a>(
    headers: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        if !out.is_empty() {
            out.push(b'\n');
        }
        out.extend_from_slice(escape(name, true).as_bytes());
        if let Some(value) = value {
            out.push(b'=');
            out.extend_from_slice(escape(value, false).as_bytes());
        }
    }
    out
}

/// Properties lines as Kafka headers (see the module docs); empty lines are skipped.
pub fn properties_to_headers(properties: &[u8]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    if properties.is_empty() {
        return Vec::new();
    }
    properties
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| match line.iter().position(|b| *b == b'=') {
            Some(at) => (unescape(&line[..at]), Some(unescape(&line[at + 1..]))),
            None => (unescape(line), None),
        })
        .collect()
}

fn escape(bytes: &[u8], name: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        let plain = (0x20..0x7f).contains(&b) && b != b'%' && !(name && b == b'=');
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `%XX` back to the byte; anything else (a `%` not followed by two hex digits included) is
/// taken as it is, so a native property that was never escaped reads back unchanged.
fn unescape(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(b) = hex {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Decompresses a batch's records, at most `limit` bytes.
fn decompress(
    data: &mut Bytes,
    compression: Compression,
    limit: usize,
) -> Result<Bytes, BatchError> {
    let input: &[u8] = data;
    let out = match compression {
        Compression::None => return Ok(std::mem::take(data)),
        Compression::Gzip => read_limited(flate2::read::MultiGzDecoder::new(input), limit)?,
        Compression::Snappy => snappy(input, limit)?,
        Compression::Lz4 => read_limited(lz4_flex::frame::FrameDecoder::new(input), limit)?,
        Compression::Zstd => {
            let window = limit.max(ZSTD_MIN_WINDOW_BYTES) as u64;
            let decoder =
                ruzstd::decoding::StreamingDecoder::new_with_max_window_size(input, window)
                    .map_err(|e| BatchError::Corrupt(format!("zstd: {e}")))?;
            read_limited(decoder, limit)?
        }
    };
    Ok(Bytes::from(out))
}

fn read_limited(reader: impl Read, limit: usize) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BatchError::Corrupt(format!("decompressing: {e}")))?;
    if out.len() > limit {
        return Err(BatchError::TooLarge(limit));
    }
    Ok(out)
}

/// The Java client's snappy framing (xerial: a 16-byte magic, then blocks each with a
/// big-endian u32 length), or one raw snappy block as other clients write it.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";

fn snappy(input: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::new();
    let block = |compressed: &[u8], out: &mut Vec<u8>| -> Result<(), BatchError> {
        let len = snap::raw::decompress_len(compressed)
            .map_err(|e| BatchError::Corrupt(format!("snappy: {e}")))?;
        if out.len() + len > limit {
            return Err(BatchError::TooLarge(limit));
        }
        let start = out.len();
        out.resize(start + len, 0);
        snap::raw::Decoder::new()
            .decompress(compressed, &mut out[start..])
            .map_err(|e| BatchError::Corrupt(format!("snappy: {e}")))?;
        Ok(())
    };
    if input.len() >= 16 && input.starts_with(XERIAL_MAGIC) {
        let mut rest = &input[16..];
        while !rest.is_empty() {
            let (len, tail) = rest
                .split_first_chunk::<4>()
                .ok_or_else(|| BatchError::Corrupt("snappy: truncated block length".into()))?;
            let len = u32::from_be_bytes(*len) as usize;
            let compressed = tail
                .get(..len)
                .ok_or_else(|| BatchError::Corrupt("snappy: truncated block".into()))?;
            block(compressed, &mut out)?;
            rest = &tail[len..];
        }
    } else {
        block(input, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> impl Strategy<Value = (Vec<u8>, Option<Vec<u8>>)> {
        (
            proptest::collection::vec(any::<u8>(), 0..12),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..24)),
        )
    }

    /// Born timestamp, key, headers (name, value), body.
    type TestMessage = (u64, Vec<u8>, Vec<(String, Option<Vec<u8>>)>, Vec<u8>);

    fn message() -> impl Strategy<Value = TestMessage> {
        (
            0u64..(1 << 45),
            proptest::collection::vec(any::<u8>(), 0..16),
            proptest::collection::vec(
                (
                    "[ -~]{1,8}",
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
                ),
                0..4,
            ),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
    }

    proptest! {
        /// Headers survive the trip through properties byte for byte (names and values with
        /// `=`, `%`, newlines and binary included), nulls included.
        #[test]
        fn headers_round_trip_through_properties(headers in proptest::collection::vec(header(), 0..6)) {
            let properties = headers_to_properties(
                headers.iter().map(|(n, v)| (n.as_slice(), v.as_deref())),
            );
            let back = properties_to_headers(&properties);
            // An empty name with no value is an empty line, which carries nothing.
            let expected: Vec<_> = headers
                .into_iter()
                .filter(|(n, v)| !(n.is_empty() && v.is_none()))
                .collect();
            prop_assert_eq!(back, expected);
        }

        /// The fetch encoder's batch decodes back (crc32c checked) to the same records, and
        /// through the produce conversion to the same native messages.
        #[test]
        fn fetch_batches_decode_to_what_was_stored(
            base in 0u64..(1 << 40),
            messages in proptest::collection::vec(message(), 1..8),
        ) {
            let properties: Vec<Vec<u8>> = messages
                .iter()
                .map(|(_, _, headers, _)| {
                    // Unique names: Kafka headers decode into a map.
                    let mut seen = std::collections::HashSet::new();
                    headers_to_properties(
                        headers
                            .iter()
                            .filter(|(n, _)| seen.insert(n.clone()))
                            .map(|(n, v)| (n.as_bytes(), v.as_deref())),
                    )
                })
                .collect();
            let stored: Vec<StoredMessage> = messages
                .iter()
                .zip(&properties)
                .enumerate()
                .map(|(i, ((ts, key, _, body), properties))| StoredMessage {
                    offset: base + i as u64,
                    born_timestamp_ms: *ts,
                    key,
                    properties,
                    body,
                })
                .collect();
            let batch = encode_batch(&stored).expect("encodes");
            let mut info = batch.clone();
            let infos = RecordBatchDecoder::decode_batch_info(&mut info).expect("header");
            prop_assert_eq!(infos.len(), 1, "one batch");
            prop_assert_eq!((infos[0].base_sequence, infos[0].producer_id), (-1, -1));
            let mut buf = batch.clone();
            let set = RecordBatchDecoder::decode(&mut buf).expect("decodes");
            prop_assert_eq!(set.records.len(), stored.len());
            for (record, m) in set.records.iter().zip(&stored) {
                prop_assert_eq!(record.offset as u64, m.offset);
            }
            let produced = decode_record_set(&batch, 7, 1 << 20).expect("converts");
            prop_assert_eq!(produced.len(), 1);
            for (native, m) in produced[0].messages.iter().zip(&stored) {
                prop_assert_eq!(native.born_timestamp_ms, m.born_timestamp_ms);
                prop_assert_eq!(&native.key, m.key);
                prop_assert_eq!(&native.body, m.body);
                prop_assert_eq!(&native.properties, m.properties);
            }
        }

        /// A flipped byte anywhere after the crc field is refused, never accepted or a panic.
        #[test]
        fn a_corrupted_batch_is_refused(at in 21usize..200, flip in 1u8..=255) {
            let stored = [StoredMessage { offset: 0, born_timestamp_ms: 1, key: b"k", properties: b"a=b", body: b"value" }];
            let batch = encode_batch(&stored).expect("encodes");
            let mut bytes = batch.to_vec();
            let at = at % bytes.len();
            prop_assume!(at >= 21);
            bytes[at] ^= flip;
            prop_assert!(decode_record_set(&Bytes::from(bytes), 0, 1 << 20).is_err());
        }

        /// A batch whose header claims more records, or a record more headers, than its bytes
        /// hold is refused before the codec reserves room for them.
        #[test]
        fn impossible_counts_are_refused(records in 1u32..4, headers in 1u64..(1 << 31)) {
            let mut record = vec![0u8, 0, 0, 1, 2, b'v']; // attributes, deltas, null key, value "v"
            let mut zigzag = headers << 1;
            loop {
                let b = (zigzag & 0x7f) as u8;
                zigzag >>= 7;
                if zigzag == 0 { record.push(b); break; }
                record.push(b | 0x80);
            }
            let mut body = vec![(record.len() as u8) << 1];
            body.extend_from_slice(&record);
            prop_assert!(check_record_counts(&body, records as usize).is_err());
        }

        /// A record of more headers than one record may carry is refused, and so is a batch
    /// whose records carry more in all; within both bounds they decode.
    #[test]
    fn header_counts_past_the_bounds_are_refused(extra in 1usize..4) {
        let record = |headers: usize| {
            let mut r = vec![0u8, 0, 0, 1, 2, b'v'];
            let mut zigzag = (headers as u64) << 1;
            loop {
                let b = (zigzag & 0x7f) as u8;
                zigzag >>= 7;
                if zigzag == 0 { r.push(b); break; }
                r.push(b | 0x80);
            }
            for _ in 0..headers { r.extend_from_slice(&[0, 1]); } // empty name, null value
            let mut len = (r.len() as u64) << 1;
            let mut out = Vec::new();
            loop {
                let b = (len & 0x7f) as u8;
                len >>= 7;
                if len == 0 { out.push(b); break; }
                out.push(b | 0x80);
            }
            out.extend_from_slice(&r);
            out
        };
        prop_assert!(check_record_counts(&record(MAX_HEADERS_PER_RECORD), 1).is_ok());
        prop_assert!(matches!(
            check_record_counts(&record(MAX_HEADERS_PER_RECORD + extra), 1),
            Err(BatchError::TooManyHeaders(_))
        ));
        let per_batch = MAX_HEADERS_PER_BATCH / MAX_HEADERS_PER_RECORD;
        let many = record(MAX_HEADERS_PER_RECORD).repeat(per_batch + extra);
        prop_assert!(check_record_counts(&many, per_batch).is_ok());
        prop_assert!(matches!(
            check_record_counts(&many, per_batch + extra),
            Err(BatchError::TooManyHeaders(_))
        ));
    }

    /// Arbitrary bytes never panic the decoder.
        #[test]
        fn arbitrary_record_sets_do_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_record_set(&Bytes::from(bytes), 0, 1 << 16);
        }
    }

    /// A record whose timestamp delta overflows the batch's first timestamp is refused, not
    /// a panic (the codec added them unchecked).
    #[test]
    fn a_timestamp_delta_that_overflows_is_refused() {
        let stored = [
            StoredMessage {
                offset: 0,
                born_timestamp_ms: 0,
                key: b"",
                properties: b"",
                body: b"a",
            },
            StoredMessage {
                offset: 1,
                born_timestamp_ms: 5,
                key: b"",
                properties: b"",
                body: b"b",
            },
        ];
        let mut bytes = encode_batch(&stored).expect("encodes").to_vec();
        assert!(decode_record_set(&Bytes::from(bytes.clone()), 0, 1 << 20).is_ok());
        bytes[27..35].copy_from_slice(&(i64::MAX - 2).to_be_bytes());
        let crc = crc32c::crc32c(&bytes[21..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            decode_record_set(&Bytes::from(bytes), 0, 1 << 20),
            Err(BatchError::Corrupt(_))
        ));
    }

    /// Two batches for one partition are refused (each alone decodes).
    #[test]
    fn a_record_set_of_two_batches_is_refused() {
        let stored = [StoredMessage {
            offset: 0,
            born_timestamp_ms: 1,
            key: b"k",
            properties: b"",
            body: b"v",
        }];
        let batch = encode_batch(&stored).expect("encodes");
        assert_eq!(decode_record_set(&batch, 0, 1 << 20).expect("one").len(), 1);
        assert!(!is_compressed(&batch));
        let mut two = batch.to_vec();
        two.extend_from_slice(&batch);
        assert!(matches!(
            decode_record_set(&Bytes::from(two), 0, 1 << 20),
            Err(BatchError::SeveralBatches(2))
        ));
    }

    /// A zstd frame declaring a window past the limit is refused before its window is
    /// allocated; one within it decodes.
    #[test]
    fn a_zstd_window_past_the_limit_is_refused() {
        // A frame header: magic, a descriptor with no content size, a window descriptor of
        // 2^(10 + 20) bytes (1 GiB), then a raw last block of 1 byte.
        let frame = [
            0x28,
            0xb5,
            0x2f,
            0xfd,
            0x00,
            20 << 3,
            0x09,
            0x00,
            0x00,
            b'x',
        ];
        let refused = decompress(
            &mut Bytes::copy_from_slice(&frame),
            Compression::Zstd,
            1 << 20,
        );
        assert!(
            matches!(refused, Err(BatchError::Corrupt(_))),
            "{refused:?}"
        );
        let small = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x00, 0x09, 0x00, 0x00, b'x'];
        let out = decompress(
            &mut Bytes::copy_from_slice(&small),
            Compression::Zstd,
            1 << 20,
        )
        .expect("decodes");
        assert_eq!(&out[..], b"x");
    }

    /// Each codec a producer may use decodes, and a bomb past the limit is refused.
    #[test]
    fn compressed_records_decode_within_the_limit() {
        let plain = vec![b'x'; 10_000];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &plain).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let snappy_raw = snap::raw::Encoder::new()
            .compress_vec(&plain)
            .expect("snappy");
        let mut xerial = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
        xerial.extend_from_slice(&(snappy_raw.len() as u32).to_be_bytes());
        xerial.extend_from_slice(&snappy_raw);
        let mut lz4 = lz4_flex::frame::FrameEncoder::new(Vec::new());
        std::io::Write::write_all(&mut lz4, &plain).expect("lz4");
        let lz4 = lz4.finish().expect("lz4");
        for (compression, data) in [
            (Compression::Gzip, gz),
            (Compression::Snappy, snappy_raw),
            (Compression::Snappy, xerial),
            (Compression::Lz4, lz4),
        ] {
            let mut bytes = Bytes::from(data);
            let out = decompress(&mut bytes.clone(), compression, 20_000).expect("decodes");
            assert_eq!(&out[..], &plain[..], "{compression:?}");
            assert!(
                matches!(
                    decompress(&mut bytes, compression, 5_000),
                    Err(BatchError::TooLarge(_))
                ),
                "{compression:?}"
            );
        }
    }
}
