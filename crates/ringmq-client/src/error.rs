//! Errors a client call can return, each naming the broker address it concerns.

use crate::protocol::codec::DecodeError;
use crate::protocol::{not_master_hint, FrameError, MasterHint, Status};
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
    /// The TLS handshake failed; `reason` says why in words (see `tls::explain`).
    #[error("TLS with {addr}: {reason}")]
    Tls { addr: String, reason: String },
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

    /// The group's current master a `NOT_MASTER` answer named, if it named one: send the
    /// request there instead of waiting for a route refresh.
    pub fn master_hint(&self) -> Option<MasterHint> {
        match self {
            ClientError::Status {
                status: Status::NotMaster,
                message,
            } => not_master_hint(message),
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
                | ClientError::Tls { .. }
        )
    }
}

impl ClientError {
    /// The error as a message for a person at a terminal: the broker's status name and
    /// explanation as it sent them, or what failed locally and which broker it concerns.
    pub fn for_user(&self, broker: &str) -> String {
        match self {
            ClientError::Io { addr, source } => format!("cannot reach broker at {addr}: {source}"),
            ClientError::Status {
                status: crate::protocol::Status::NotAuthenticated,
                ..
            } if crate::scram::default_scram().is_none() => format!(
                "{self} [no SCRAM user given: pass --user NAME and --password-file FILE, or set RINGMQ_USER and RINGMQ_PASSWORD_FILE]"
            ),
            ClientError::Status { .. } => self.to_string(),
            _ => format!("{self} (broker {broker})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ClientError;
    use crate::protocol::{not_master_message, MasterHint, Status};

    #[test]
    fn only_a_not_master_answer_names_a_master() {
        let hint = MasterHint {
            listen: "127.0.0.1:9500".into(),
            epoch: 4,
        };
        let message = not_master_message("this broker is a SLAVE", Some(&hint));
        let not_master = ClientError::Status {
            status: Status::NotMaster,
            message: message.clone(),
        };
        assert_eq!(not_master.master_hint(), Some(hint));
        let other = ClientError::Status {
            status: Status::SystemBusy,
            message,
        };
        assert_eq!(other.master_hint(), None);
        let plain = ClientError::Status {
            status: Status::NotMaster,
            message: "this broker is a SLAVE".into(),
        };
        assert_eq!(plain.master_hint(), None);
    }
}
