//! The commitlog record: one encoder and one decoder for the on-disk layout.
//!
//! ```text
//! offset size field
//!  0     4    total_size          whole record, header included
//!  4     4    magic               RECORD_MAGIC (or END_OF_SEGMENT_MAGIC for the marker)
//!  8     4    crc                 crc32c of bytes [12, total_size)
//! 12     4    topic_id
//! 16     4    queue_id
//! 20     8    queue_offset
//! 28     8    commitlog_offset    where the record starts; checked on read
//! 36     8    born_timestamp_ms   set by the producer
//! 44     8    store_timestamp_ms  set by the broker at append
//! 52     4    flags               reserved, 0
//! 56     8    key_hash            hash of the key (the consume-queue tag hash)
//! 64     2    topic_len
//! 66     2    key_len
//! 68     2    properties_len
//! 70     2    reserved            0
//! 72     4    body_len
//! 76     ..   topic, key, properties, body
//! ```
//!
//! All integers are little-endian. A segment's unused tail starts with an end-of-segment
//! marker (`total_size` = bytes left in the segment, `END_OF_SEGMENT_MAGIC`) when at least
//! [`END_OF_SEGMENT_MARKER_BYTES`] remain; zero bytes mean the end of the written log.

use thiserror::Error;

pub const RECORD_HEADER_BYTES: usize = 76;
pub const RECORD_MAGIC: u32 = 0x5245_4301;
pub const END_OF_SEGMENT_MAGIC: u32 = 0x5245_43EE;
/// Size of the end-of-segment marker: `total_size` and `magic`.
pub const END_OF_SEGMENT_MARKER_BYTES: usize = 8;
const CRC_START: usize = 12;

const _: () =
    assert!(RECORD_HEADER_BYTES == 4 + 4 + 4 + 4 + 4 + 8 + 8 + 8 + 8 + 4 + 8 + 2 + 2 + 2 + 2 + 4);

/// What a record carries besides its position, as given to the encoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordInput<'a> {
    pub topic_id: u32,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub born_timestamp_ms: u64,
    pub store_timestamp_ms: u64,
    pub topic: &'a str,
    pub key: &'a [u8],
    pub properties: &'a [u8],
    pub body: &'a [u8],
}

impl RecordInput<'_> {
    /// Encoded size in bytes. Lengths are validated by the caller (protocol limits); an
    /// oversized topic, key or properties here is a programmer error.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_BYTES
            + self.topic.len()
            + self.key.len()
            + self.properties.len()
            + self.body.len()
    }

    /// Encodes the record into `out`, which must be exactly `encoded_len()` bytes.
    pub fn encode_into(&self, commitlog_offset: u64, out: &mut [u8]) {
        assert_eq!(out.len(), self.encoded_len(), "record buffer size");
        assert!(self.topic.len() <= u16::MAX as usize);
        assert!(self.key.len() <= u16::MAX as usize);
        assert!(self.properties.len() <= u16::MAX as usize);
        let total = out.len() as u32;
        put_u32(out, 0, total);
        put_u32(out, 4, RECORD_MAGIC);
        put_u32(out, 12, self.topic_id);
        put_u32(out, 16, self.queue_id);
        put_u64(out, 20, self.queue_offset);
        put_u64(out, 28, commitlog_offset);
        put_u64(out, 36, self.born_timestamp_ms);
        put_u64(out, 44, self.store_timestamp_ms);
        put_u32(out, 52, 0);
        put_u64(out, 56, key_hash(self.key));
        put_u16(out, 64, self.topic.len() as u16);
        put_u16(out, 66, self.key.len() as u16);
        put_u16(out, 68, self.properties.len() as u16);
        put_u16(out, 70, 0);
        put_u32(out, 72, self.body.len() as u32);
        let mut at = RECORD_HEADER_BYTES;
        for part in [self.topic.as_bytes(), self.key, self.properties, self.body] {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        let crc = crc32c::crc32c(&out[CRC_START..]);
        put_u32(out, 8, crc);
        #[cfg(debug_assertions)]
        self.assert_decodes_back(commitlog_offset, out);
    }

    /// Debug builds: the bytes just encoded decode to this record at this offset, so an
    /// encoder bug fails at the append that made it instead of at recovery or in a consumer.
    #[cfg(debug_assertions)]
    fn assert_decodes_back(&self, commitlog_offset: u64, encoded: &[u8]) {
        let view = match decode(encoded, commitlog_offset) {
            Ok(Decoded::Record(view)) => view,
            other => panic!("record encoded at {commitlog_offset} does not decode: {other:?}"),
        };
        assert_eq!(
            view.total_size as usize,
            encoded.len(),
            "encoded record size"
        );
        assert_eq!(
            (view.topic_id, view.queue_id, view.queue_offset),
            (self.topic_id, self.queue_id, self.queue_offset),
            "encoded record position"
        );
        assert_eq!(
            (view.born_timestamp_ms, view.store_timestamp_ms),
            (self.born_timestamp_ms, self.store_timestamp_ms),
            "encoded record timestamps"
        );
        assert!(
            view.topic == self.topic
                && view.key == self.key
                && view.properties == self.properties
                && view.body == self.body,
            "encoded record at {commitlog_offset}: fields do not decode back"
        );
    }
}

/// The tag hash stored in consume-queue entries: the low 64 bits of two crc32c passes.
pub fn key_hash(key: &[u8]) -> u64 {
    if key.is_empty() {
        return 0;
    }
    let low = crc32c::crc32c(key) as u64;
    let high = crc32c::crc32c_append(0x9E37_79B9, key) as u64;
    (high << 32) | low
}

/// A decoded record borrowing from the bytes it was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub total_size: u32,
    pub topic_id: u32,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub commitlog_offset: u64,
    pub born_timestamp_ms: u64,
    pub store_timestamp_ms: u64,
    pub flags: u32,
    pub key_hash: u64,
    pub topic: &'a str,
    pub key: &'a [u8],
    pub properties: &'a [u8],
    pub body: &'a [u8],
}

impl RecordView<'_> {
    pub fn end_offset(&self) -> u64 {
        self.commitlog_offset + self.total_size as u64
    }
}

/// What the bytes at a position of the log are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    Record(RecordView<'a>),
    /// The rest of this segment is unused; the log continues in the next segment.
    EndOfSegment,
    /// A zero size field: nothing was ever written here.
    EndOfData,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RecordError {
    #[error(
        "record at {offset}: only {available} bytes available, header needs {RECORD_HEADER_BYTES}"
    )]
    ShortHeader { offset: u64, available: usize },
    #[error("record at {offset}: bad magic {magic:#010x}")]
    BadMagic { offset: u64, magic: u32 },
    #[error("record at {offset}: total size {total_size} is invalid ({reason})")]
    BadSize {
        offset: u64,
        total_size: u32,
        reason: &'static str,
    },
    #[error("record at {offset}: crc32c {found:#010x} does not match computed {computed:#010x}")]
    BadCrc {
        offset: u64,
        found: u32,
        computed: u32,
    },
    #[error("record at {offset}: header says it belongs at commitlog offset {claimed}")]
    WrongOffset { offset: u64, claimed: u64 },
    #[error("record at {offset}: topic is not valid UTF-8")]
    BadTopic { offset: u64 },
}

/// Decodes the bytes at commitlog offset `offset`. `buf` starts at the record and may extend
/// past it; `max_total_size` bounds the size field (bytes left in the segment, or a read size).
/// Every check that can fail is made: size bounds, magic, crc, the stored offset and field
/// lengths. A decode error means torn or corrupt data, never a panic.
pub fn decode(buf: &[u8], offset: u64) -> Result<Decoded<'_>, RecordError> {
    if buf.len() >= 4 && get_u32(buf, 0) == 0 {
        return Ok(Decoded::EndOfData);
    }
    if buf.len() >= END_OF_SEGMENT_MARKER_BYTES && get_u32(buf, 4) == END_OF_SEGMENT_MAGIC {
        return Ok(Decoded::EndOfSegment);
    }
    if buf.len() < RECORD_HEADER_BYTES {
        return Err(RecordError::ShortHeader {
            offset,
            available: buf.len(),
        });
    }
    let total_size = get_u32(buf, 0);
    let magic = get_u32(buf, 4);
    if magic != RECORD_MAGIC {
        return Err(RecordError::BadMagic { offset, magic });
    }
    let total = total_size as usize;
    if total < RECORD_HEADER_BYTES {
        return Err(RecordError::BadSize {
            offset,
            total_size,
            reason: "smaller than the header",
        });
    }
    if total > buf.len() {
        return Err(RecordError::BadSize {
            offset,
            total_size,
            reason: "extends past the available bytes",
        });
    }
    let rec = &buf[..total];
    let found = get_u32(rec, 8);
    let computed = crc32c::crc32c(&rec[CRC_START..]);
    if found != computed {
        return Err(RecordError::BadCrc {
            offset,
            found,
            computed,
        });
    }
    let claimed = get_u64(rec, 28);
    if claimed != offset {
        return Err(RecordError::WrongOffset { offset, claimed });
    }
    let topic_len = get_u16(rec, 64) as usize;
    let key_len = get_u16(rec, 66) as usize;
    let properties_len = get_u16(rec, 68) as usize;
    let body_len = get_u32(rec, 72) as usize;
    if RECORD_HEADER_BYTES + topic_len + key_len + properties_len + body_len != total {
        return Err(RecordError::BadSize {
            offset,
            total_size,
            reason: "field lengths do not add up",
        });
    }
    let mut at = RECORD_HEADER_BYTES;
    let mut field = |len: usize| {
        let part = &rec[at..at + len];
        at += len;
        part
    };
    let topic =
        std::str::from_utf8(field(topic_len)).map_err(|_| RecordError::BadTopic { offset })?;
    let key = field(key_len);
    let properties = field(properties_len);
    let body = field(body_len);
    Ok(Decoded::Record(RecordView {
        total_size,
        topic_id: get_u32(rec, 12),
        queue_id: get_u32(rec, 16),
        queue_offset: get_u64(rec, 20),
        commitlog_offset: claimed,
        born_timestamp_ms: get_u64(rec, 36),
        store_timestamp_ms: get_u64(rec, 44),
        flags: get_u32(rec, 52),
        key_hash: get_u64(rec, 56),
        topic,
        key,
        properties,
        body,
    }))
}

/// Writes an end-of-segment marker covering `out` (the whole unused tail of a segment).
pub fn encode_end_of_segment(out: &mut [u8]) {
    assert!(out.len() >= END_OF_SEGMENT_MARKER_BYTES);
    assert!(out.len() <= u32::MAX as usize);
    let len = out.len() as u32;
    put_u32(out, 0, len);
    put_u32(out, 4, END_OF_SEGMENT_MAGIC);
}

/// The `total_size` field of the record or marker that `bytes` starts with, unchecked: for
/// callers that frame a stream of log bytes before they can [`decode`] a whole record.
pub fn peek_total_size(bytes: &[u8]) -> Option<u32> {
    (bytes.len() >= 4).then(|| get_u32(bytes, 0))
}

/// Whether `bytes` starts with an end-of-segment marker.
pub fn is_end_of_segment(bytes: &[u8]) -> bool {
    bytes.len() >= END_OF_SEGMENT_MARKER_BYTES && get_u32(bytes, 4) == END_OF_SEGMENT_MAGIC
}

/// The commitlog offset a record header claims to start at, unchecked: where a replicated
/// record says it belongs, before [`decode`] checks it.
pub fn peek_commitlog_offset(bytes: &[u8]) -> Option<u64> {
    (bytes.len() >= RECORD_HEADER_BYTES).then(|| get_u64(bytes, 28))
}

fn put_u16(out: &mut [u8], at: usize, v: u16) {
    out[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(out: &mut [u8], at: usize, v: u32) {
    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(out: &mut [u8], at: usize, v: u64) {
    out[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([buf[at], buf[at + 1]])
}
fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}
fn get_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RecordInput<'static> {
        RecordInput {
            topic_id: 7,
            queue_id: 3,
            queue_offset: 99,
            born_timestamp_ms: 1,
            store_timestamp_ms: 2,
            topic: "orders",
            key: b"k1",
            properties: b"p=1",
            body: b"hello world",
        }
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "fields do not decode back")]
    fn a_record_that_does_not_decode_to_its_input_fails_the_debug_check() {
        let input = sample();
        let mut out = vec![0u8; input.encoded_len()];
        input.encode_into(4096, &mut out);
        // Same bytes, but the producer's body differed: the check must notice.
        let other = RecordInput {
            body: b"hello there",
            ..input
        };
        other.assert_decodes_back(4096, &out);
    }

    #[test]
    fn peeks_read_the_header_fields_they_name() {
        let input = sample();
        let mut out = vec![0u8; input.encoded_len()];
        input.encode_into(8192, &mut out);
        assert_eq!(peek_total_size(&out), Some(out.len() as u32));
        assert_eq!(peek_commitlog_offset(&out), Some(8192));
        assert_eq!(peek_commitlog_offset(&out[..RECORD_HEADER_BYTES - 1]), None);
        assert!(!is_end_of_segment(&out));
        let mut marker = [0u8; 64];
        encode_end_of_segment(&mut marker);
        assert!(is_end_of_segment(&marker));
        assert_eq!(peek_total_size(&marker), Some(64));
    }

    #[test]
    fn round_trip() {
        let input = sample();
        let mut buf = vec![0u8; input.encoded_len() + 10];
        input.encode_into(4096, &mut buf[..input.encoded_len()]);
        let Decoded::Record(view) = decode(&buf, 4096).unwrap() else {
            panic!("expected a record")
        };
        assert_eq!(view.topic, "orders");
        assert_eq!(view.body, b"hello world");
        assert_eq!(view.queue_offset, 99);
        assert_eq!(view.end_offset(), 4096 + input.encoded_len() as u64);
        assert_eq!(view.key_hash, key_hash(b"k1"));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let input = sample();
        let mut buf = vec![0u8; input.encoded_len()];
        input.encode_into(0, &mut buf);
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            match decode(&bad, 0) {
                Ok(Decoded::Record(_)) => panic!("flip of bit {bit} not detected"),
                Ok(Decoded::EndOfData) | Ok(Decoded::EndOfSegment) | Err(_) => {}
            }
        }
    }

    #[test]
    fn wrong_position_and_markers() {
        let input = sample();
        let mut buf = vec![0u8; input.encoded_len()];
        input.encode_into(0, &mut buf);
        assert!(matches!(
            decode(&buf, 8),
            Err(RecordError::WrongOffset { .. })
        ));
        assert_eq!(decode(&[0u8; 100], 0), Ok(Decoded::EndOfData));
        let mut marker = [0u8; 40];
        encode_end_of_segment(&mut marker);
        assert_eq!(decode(&marker, 0), Ok(Decoded::EndOfSegment));
    }
}
