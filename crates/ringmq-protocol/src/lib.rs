//! The binary wire protocol: frames, opcodes, statuses and message bodies.
//!
//! Everything here is pure (no I/O, no allocation beyond the values it returns) so that it can be
//! property-tested and fuzzed on its own. Bytes enter through [`frame::FrameDecoder`] (connection
//! read buffers) and leave through [`frame::encode_frame`]. `docs/protocol.md` is the normative
//! description; this module is its one implementation. Each body is declared once in
//! [`message`] and each opcode once, with its request and response, in [`requests`]; see
//! "How to add an opcode" in `docs/protocol.md`.

pub mod acks;
pub mod admin;
pub mod auth;
pub mod codec;
pub mod codes;
pub mod controller;
pub mod frame;
pub mod message;
pub mod namesrv;
pub mod properties;
pub mod requests;
pub mod scram;

pub use acks::Acks;
pub use codes::{not_master_hint, not_master_message, MasterHint, Opcode, Status};
pub use frame::{FlagsError, FrameDecoder, FrameError, FrameHeader};
pub use requests::{FailsOver, Placement, Request, Response};
#[cfg(test)]
mod proptests;

/// Where a broadcasting group member's offsets are kept: the group name the broker, the
/// client and the CLI all use for that member's rows (`GroupFetch`, `GroupDescribe`), per
/// client id, so a member restarted with the same client id resumes where it stopped.
pub fn broadcast_offsets_key(group: &str, client_id: &str) -> String {
    format!("{group}..{client_id}")
}
