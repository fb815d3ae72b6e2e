//! Frames: a fixed 24-byte little-endian header followed by a body.
//!
//! ```text
//! offset size field
//!  0     4    length      bytes after this field (20 + body length)
//!  4     2    magic       0x4D52 ("RM" on the wire)
//!  6     1    version     1
//!  7     1    flags       bit 0: response; bits 1-2: a produce's acknowledgement level
//!  8     2    opcode      see codes::Opcode
//! 10     2    status      see codes::Status (0 in requests)
//! 12     8    request_id  chosen by the client, echoed in the response
//! 20     4    body_crc    crc32c of the body
//! 24     ..   body
//! ```

use super::acks::Acks;
use super::codes::{Opcode, Status};
use thiserror::Error;

pub const FRAME_HEADER_BYTES: usize = 24;
pub const FRAME_MAGIC: u16 = 0x4D52;
pub const PROTOCOL_VERSION: u8 = 1;
pub const FLAG_RESPONSE: u8 = 0x01;
/// Bits 1-2 of a `Produce` request: 0 leaves the level to the broker's `default_acks`,
/// 1 = none, 2 = leader, 3 = all (see [`Acks`]). Zero in every other frame.
pub const FLAG_ACKS_MASK: u8 = 0b0000_0110;
const FLAG_ACKS_SHIFT: u32 = 1;
/// Bits no frame sets in protocol version 1; a request with one of them is refused.
pub const FLAGS_RESERVED_MASK: u8 = 0b1111_1000;
/// Bytes counted by the length field that belong to the header.
const LENGTH_COVERED_HEADER_BYTES: usize = FRAME_HEADER_BYTES - 4;

const _: () = assert!(FRAME_HEADER_BYTES == 4 + 2 + 1 + 1 + 2 + 2 + 8 + 4);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub flags: u8,
    /// Raw opcode: an unknown value is kept so the error response can echo it.
    pub opcode: u16,
    pub status: u16,
    pub request_id: u64,
}

impl FrameHeader {
    pub fn request(opcode: Opcode, request_id: u64) -> Self {
        FrameHeader {
            flags: 0,
            opcode: opcode as u16,
            status: 0,
            request_id,
        }
    }
    pub fn response(opcode: u16, status: Status, request_id: u64) -> Self {
        FrameHeader {
            flags: FLAG_RESPONSE,
            opcode,
            status: status as u16,
            request_id,
        }
    }
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    /// The same header naming `acks` in flag bits 1-2, or the broker's default for `None`.
    pub fn with_acks(mut self, acks: Option<Acks>) -> Self {
        let value = acks.map_or(0, Acks::flag_value);
        self.flags = (self.flags & !FLAG_ACKS_MASK) | (value << FLAG_ACKS_SHIFT);
        self
    }

    /// The level flag bits 1-2 name; `None` when they are 0 (the broker's default).
    pub fn acks(&self) -> Option<Acks> {
        Acks::from_flag_value((self.flags & FLAG_ACKS_MASK) >> FLAG_ACKS_SHIFT)
    }

    /// Checks the flags of a frame received as a request and returns the level it names.
    /// A request may not set the response bit or a reserved bit, and only `Produce` may name
    /// a level: a peer that does is not speaking this protocol as documented, but the frame
    /// boundary is intact, so the receiver answers `BAD_REQUEST` and keeps the connection.
    pub fn request_acks(&self) -> Result<Option<Acks>, FlagsError> {
        let flags = self.flags;
        if flags & FLAG_RESPONSE != 0 {
            return Err(FlagsError::ResponseBit { flags });
        }
        if flags & FLAGS_RESERVED_MASK != 0 {
            return Err(FlagsError::Reserved { flags });
        }
        let acks = self.acks();
        if acks.is_some() && self.opcode != Opcode::Produce as u16 {
            return Err(FlagsError::AcksOnOpcode {
                flags,
                opcode: self.opcode,
            });
        }
        Ok(acks)
    }
}

/// Why a request's flags are refused (answered `BAD_REQUEST`; the connection stays open).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FlagsError {
    #[error("request flags {flags:#04x} set the response bit (bit 0)")]
    ResponseBit { flags: u8 },
    #[error("request flags {flags:#04x} set reserved bits (bits 3-7 must be 0)")]
    Reserved { flags: u8 },
    #[error(
        "request flags {flags:#04x} name an acknowledgement level (bits 1-2), which only Produce (10) may, not opcode {opcode}"
    )]
    AcksOnOpcode { flags: u8, opcode: u16 },
}

/// Why bytes on a connection are not a frame. Every variant means the stream can no longer be
/// trusted to be aligned on frame boundaries, so the connection is answered (where a request id
/// is known) and closed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {length} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        length: usize,
        max: usize,
        request_id: u64,
    },
    #[error("frame length {length} is shorter than the header")]
    TooShort { length: usize },
    #[error("bad magic {found:#06x}, expected {FRAME_MAGIC:#06x}")]
    BadMagic { found: u16 },
    #[error("unsupported protocol version {found}, this broker speaks {PROTOCOL_VERSION}")]
    UnsupportedVersion { found: u8, request_id: u64 },
    #[error("body crc32c {found:#010x} does not match computed {computed:#010x}")]
    BadCrc {
        found: u32,
        computed: u32,
        request_id: u64,
    },
}

impl FrameError {
    pub fn status(&self) -> Status {
        match self {
            FrameError::TooLarge { .. } => Status::FrameTooLarge,
            FrameError::TooShort { .. } | FrameError::BadMagic { .. } => Status::BadMagic,
            FrameError::UnsupportedVersion { .. } => Status::UnsupportedVersion,
            FrameError::BadCrc { .. } => Status::BadCrc,
        }
    }
    /// The request id to answer with, when the header was readable.
    pub fn request_id(&self) -> u64 {
        match self {
            FrameError::TooLarge { request_id, .. }
            | FrameError::UnsupportedVersion { request_id, .. }
            | FrameError::BadCrc { request_id, .. } => *request_id,
            FrameError::TooShort { .. } | FrameError::BadMagic { .. } => 0,
        }
    }
}

/// Appends a whole frame (header and body) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, header: FrameHeader, body: &[u8]) {
    let length = (LENGTH_COVERED_HEADER_BYTES + body.len()) as u32;
    out.reserve(FRAME_HEADER_BYTES + body.len());
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
    out.push(PROTOCOL_VERSION);
    out.push(header.flags);
    out.extend_from_slice(&header.opcode.to_le_bytes());
    out.extend_from_slice(&header.status.to_le_bytes());
    out.extend_from_slice(&header.request_id.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
}

/// Starts a frame whose body the caller appends afterwards; [`finish_frame`] fills in the
/// length and crc. This avoids building the body in a second buffer.
pub fn begin_frame(out: &mut Vec<u8>, header: FrameHeader) -> usize {
    let start = out.len();
    encode_frame(out, header, &[]);
    start
}

pub fn finish_frame(out: &mut [u8], start: usize) {
    let body_start = start + FRAME_HEADER_BYTES;
    let body_len = out.len() - body_start;
    let length = (LENGTH_COVERED_HEADER_BYTES + body_len) as u32;
    let crc = crc32c::crc32c(&out[body_start..]);
    out[start..start + 4].copy_from_slice(&length.to_le_bytes());
    out[start + 20..start + 24].copy_from_slice(&crc.to_le_bytes());
}

/// A decoded frame borrowing its body from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: FrameHeader,
    pub body: &'a [u8],
}

impl Frame<'_> {
    /// Bytes this frame occupied in the buffer.
    pub fn wire_len(&self) -> usize {
        FRAME_HEADER_BYTES + self.body.len()
    }
}

/// Stateless frame parser with a maximum frame size.
#[derive(Clone, Copy, Debug)]
pub struct FrameDecoder {
    pub max_frame_bytes: usize,
}

impl FrameDecoder {
    pub fn new(max_frame_bytes: usize) -> Self {
        FrameDecoder { max_frame_bytes }
    }

    /// Parses the first frame in `buf`. `Ok(None)` means more bytes are needed; an oversized
    /// frame is reported as soon as its header is complete, before its body arrives.
    pub fn decode<'a>(&self, buf: &'a [u8]) -> Result<Option<Frame<'a>>, FrameError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let length = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        if length < LENGTH_COVERED_HEADER_BYTES {
            return Err(FrameError::TooShort { length });
        }
        if buf.len() >= 6 {
            let magic = u16::from_le_bytes([buf[4], buf[5]]);
            if magic != FRAME_MAGIC {
                return Err(FrameError::BadMagic { found: magic });
            }
        }
        if buf.len() < FRAME_HEADER_BYTES {
            return Ok(None);
        }
        let request_id = u64::from_le_bytes(buf[12..20].try_into().expect("8 bytes"));
        let total = 4 + length;
        if total > self.max_frame_bytes {
            return Err(FrameError::TooLarge {
                length: total,
                max: self.max_frame_bytes,
                request_id,
            });
        }
        if buf[6] != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion {
                found: buf[6],
                request_id,
            });
        }
        if buf.len() < total {
            return Ok(None);
        }
        let header = FrameHeader {
            flags: buf[7],
            opcode: u16::from_le_bytes([buf[8], buf[9]]),
            status: u16::from_le_bytes([buf[10], buf[11]]),
            request_id,
        };
        let found = u32::from_le_bytes(buf[20..24].try_into().expect("4 bytes"));
        let body = &buf[FRAME_HEADER_BYTES..total];
        let computed = crc32c::crc32c(body);
        if found != computed {
            return Err(FrameError::BadCrc {
                found,
                computed,
                request_id,
            });
        }
        Ok(Some(Frame { header, body }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_partial_input() {
        let mut out = Vec::new();
        let header = FrameHeader::request(Opcode::Ping, 42);
        encode_frame(&mut out, header, b"hello");
        let decoder = FrameDecoder::new(1024);
        for cut in 0..out.len() {
            assert_eq!(decoder.decode(&out[..cut]), Ok(None), "cut at {cut}");
        }
        let frame = decoder.decode(&out).unwrap().unwrap();
        assert_eq!(frame.header, header);
        assert_eq!(frame.body, b"hello");
        assert_eq!(frame.wire_len(), out.len());
    }

    #[test]
    fn begin_finish_matches_encode() {
        let header = FrameHeader::response(10, Status::Ok, 7);
        let mut a = Vec::new();
        encode_frame(&mut a, header, b"body bytes");
        let mut b = vec![9, 9];
        let start = begin_frame(&mut b, header);
        b.extend_from_slice(b"body bytes");
        finish_frame(&mut b, start);
        assert_eq!(&b[2..], &a[..]);
    }

    #[test]
    fn acks_travel_in_bits_1_and_2_and_bad_combinations_are_refused() {
        let produce = FrameHeader::request(Opcode::Produce, 1);
        assert_eq!(produce.request_acks(), Ok(None));
        for (acks, flags) in [(Acks::None, 0x02), (Acks::Leader, 0x04), (Acks::All, 0x06)] {
            let header = produce.with_acks(Some(acks));
            assert_eq!(header.flags, flags);
            assert_eq!(header.request_acks(), Ok(Some(acks)));
            assert_eq!(header.with_acks(None), produce);
            let mut out = Vec::new();
            encode_frame(&mut out, header, b"");
            assert_eq!(out[7], flags);
            let frame = FrameDecoder::new(64).decode(&out).unwrap().unwrap();
            assert_eq!(frame.header.acks(), Some(acks));
        }
        let ping = FrameHeader::request(Opcode::Ping, 2).with_acks(Some(Acks::All));
        assert!(matches!(
            ping.request_acks(),
            Err(FlagsError::AcksOnOpcode { opcode: 1, .. })
        ));
        for bit in 3..8 {
            let header = FrameHeader {
                flags: 1 << bit,
                ..produce
            };
            assert!(matches!(
                header.request_acks(),
                Err(FlagsError::Reserved { .. })
            ));
        }
        let response_bit = FrameHeader {
            flags: FLAG_RESPONSE,
            ..produce
        };
        assert!(matches!(
            response_bit.request_acks(),
            Err(FlagsError::ResponseBit { .. })
        ));
    }

    #[test]
    fn errors_are_detected() {
        let decoder = FrameDecoder::new(64);
        let mut out = Vec::new();
        encode_frame(&mut out, FrameHeader::request(Opcode::Ping, 5), &[0u8; 100]);
        assert!(matches!(
            decoder.decode(&out[..FRAME_HEADER_BYTES]),
            Err(FrameError::TooLarge { request_id: 5, .. })
        ));
        let mut bad = Vec::new();
        encode_frame(&mut bad, FrameHeader::request(Opcode::Ping, 6), b"abc");
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            decoder.decode(&bad),
            Err(FrameError::BadCrc { request_id: 6, .. })
        ));
        bad[4] = 0;
        assert!(matches!(
            decoder.decode(&bad),
            Err(FrameError::BadMagic { .. })
        ));
        let short = 3u32.to_le_bytes();
        assert!(matches!(
            decoder.decode(&short),
            Ok(None) | Err(FrameError::TooShort { .. })
        ));
    }
}
