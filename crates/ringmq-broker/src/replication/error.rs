//! Why a replication link, handshake or metadata copy failed.
//!
//! Every failure ends the link it happened on (the slave reconnects with backoff and the
//! handshake starts over), so the variants are about what to log, not about recovery paths.

use crate::protocol::codec::DecodeError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ReplicationError {
    /// The socket failed (or a file the master ships from could not be opened or read).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The peer sent nothing for a whole link timeout.
    #[error("silent for {ms} ms")]
    Silent { ms: u128 },
    /// A message that does not decode.
    #[error("bad {what}: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: DecodeError,
    },
    /// A length prefix past the bound its message kind has.
    #[error("{what} of {len} bytes exceeds {max}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// The master answered the handshake with a refusal (which, for a version mismatch, names
    /// both versions).
    #[error("refused by the master: {0}")]
    Refused(String),
    /// The master accepted but speaks another protocol version than this slave.
    #[error("the master speaks replication protocol version {master}, this slave version {slave}")]
    Version { master: u16, slave: u16 },
    /// The peer's bytes are well formed but cannot be what the protocol allows (an offset out
    /// of sequence, a record that cannot be one, an unknown frame kind).
    #[error("{0}")]
    Protocol(String),
    /// The peer did not prove it holds the link's shared secret (or this end cannot ask it
    /// to): no log byte or report crosses such a link.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The local store refused what the link asked of it (append, truncate, identity file).
    #[error("{0}")]
    Store(String),
    /// Topics or group offsets from the master could not be applied here.
    #[error("applying the master's metadata: {0}")]
    Metadata(String),
}

impl ReplicationError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> ReplicationError {
        ReplicationError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn decode(what: &'static str) -> impl Fn(DecodeError) -> ReplicationError + Copy {
        move |source| ReplicationError::Decode { what, source }
    }
}
