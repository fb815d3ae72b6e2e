//! The binary wire protocol: frames, opcodes, statuses and message bodies.
//!
//! Everything here is pure (no I/O, no allocation beyond the values it returns) so that it can be
//! property-tested and fuzzed on its own. Bytes enter through [`frame::FrameDecoder`] (connection
//! read buffers) and leave through [`frame::encode_frame`]. `docs/protocol.md` is the normative
//! description; this module is its one implementation.

pub mod admin;
pub mod codec;
pub mod codes;
pub mod frame;
pub mod message;

pub use codes::{Opcode, Status};
pub use frame::{FrameDecoder, FrameError, FrameHeader};
#[cfg(test)]
mod proptests;
