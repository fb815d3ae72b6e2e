//! Errors a client call can return, each naming the broker address it concerns.

use crate::protocol::codec::DecodeError;
use crate::protocol::{FrameError, Status};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("I/O error talking to {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {} ms waiting for {addr}", after.as_millis())]
    Timeout { addr: String, after: Duration },
    #[error("connection to {addr} closed by the broker")]
    ConnectionClosed { addr: String },
    #[error("bad frame from {addr}: {source}")]
    Frame {
        addr: String,
        #[source]
        source: FrameError,
    },
    #[error("cannot decode {what} from {addr}: {source}")]
    Decode {
        addr: String,
        what: &'static str,
        #[source]
        source: DecodeError,
    },
    #[error("protocol violation by {addr}: {reason}")]
    Protocol { addr: String, reason: String },
    /// The broker answered with an error status; `message` is its explanation.
    #[error("{status}: {message}")]
    Status { status: Status, message: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ClientError {
    /// The broker's status, when the error is one.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the connection this error came from can no longer be used.
    pub fn breaks_connection(&self) -> bool {
        matches!(
            self,
            ClientError::Io { .. }
                | ClientError::ConnectionClosed { .. }
                | ClientError::Frame { .. }
                | ClientError::Protocol { .. }
        )
    }
}

impl ClientError {
    /// The error as a message for a person at a terminal: the broker's status name and
    /// explanation as it sent them, or what failed locally and which broker it concerns.
    pub fn for_user(&self, broker: &str) -> String {
        match self {
            ClientError::Io { addr, source } => format!("cannot reach broker at {addr}: {source}"),
            ClientError::Status { .. } => self.to_string(),
            _ => format!("{self} (broker {broker})"),
        }
    }
}
