//! `ShardError`: every failure of the shard layer, and its one mapping to a wire [`Status`].
//!
//! Stages, handlers and start-up return it; the handler edge turns it into a [`Reply`] with
//! [`From<ShardError> for Reply`](Reply), so which status a failure earns is decided here and
//! nowhere else.

use super::mesh::Reply;
use crate::protocol::codec::DecodeError;
use crate::protocol::Status;
use crate::store::{AppendError, StoreError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ShardError {
    #[error("malformed request body: {0}")]
    BadRequest(#[from] DecodeError),
    /// A request that decodes but asks for something this broker cannot do as asked.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    InvalidName(String),
    #[error("topic `{0}` already exists")]
    TopicExists(String),
    #[error("topic `{0}` does not exist")]
    TopicNotFound(String),
    #[error("{0}")]
    QueueNotFound(String),
    #[error("{0}")]
    OffsetOutOfRange(String),
    /// A record the consume queue points to cannot be read back as that record.
    #[error("{0}")]
    Unreadable(String),
    #[error("{0}")]
    NotMaster(String),
    /// A group member's request at a generation, or for a queue, it does not hold now.
    #[error("{0}")]
    IllegalGeneration(String),
    /// A group member id the coordinator does not know (its session ended).
    #[error("{0}")]
    UnknownMember(String),
    /// A bound on something clients create (groups, members) is reached: retry later.
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    MessageTooLarge(String),
    /// Controller mode: the SyncStateSet is smaller than `min_in_sync_replicas`; refused
    /// before the append (nothing was stored).
    #[error("{0}")]
    InSyncReplicasNotEnough(String),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The log identity could not be read or written (it names the file).
    #[error(transparent)]
    Replication(#[from] crate::replication::error::ReplicationError),
    /// A metadata file (topics, group offsets, the log identity) could not be read or written;
    /// the message names the file.
    #[error("{0}")]
    Metadata(String),
    /// A flush covering the record failed.
    #[error("the store failed to write or sync; the message may not be durable")]
    NotDurable,
    /// A batch failed after some of its records went into the log: whatever the cause, the
    /// client must treat it as maybe stored (a resend of the whole batch repeats the first
    /// records), never as refused before the append.
    #[error("{stored} of the batch's messages were stored before it failed ({cause}); the batch may be partly stored")]
    PartlyStored {
        stored: usize,
        cause: Box<ShardError>,
    },
    #[error("the broker is shutting down: retry after it restarts")]
    ShuttingDown,
    #[error("shard {0} is not running")]
    ShardGone(usize),
    /// A bug or an impossible state, reported rather than panicking the core.
    #[error("{0}")]
    Internal(String),
}

impl ShardError {
    /// The wire status a client receives for this failure.
    pub fn status(&self) -> Status {
        match self {
            ShardError::BadRequest(_) | ShardError::Refused(_) => Status::BadRequest,
            ShardError::InvalidName(_) => Status::InvalidName,
            ShardError::TopicExists(_) => Status::TopicExists,
            ShardError::TopicNotFound(_) => Status::TopicNotFound,
            ShardError::QueueNotFound(_) => Status::QueueNotFound,
            ShardError::OffsetOutOfRange(_) => Status::OffsetOutOfRange,
            ShardError::NotMaster(_) => Status::NotMaster,
            ShardError::IllegalGeneration(_) => Status::IllegalGeneration,
            ShardError::UnknownMember(_) => Status::UnknownMember,
            ShardError::Overloaded(_) => Status::SystemBusy,
            ShardError::MessageTooLarge(_) => Status::MessageTooLarge,
            ShardError::InSyncReplicasNotEnough(_) => Status::InSyncReplicasNotEnough,
            ShardError::Append(e) => match e {
                AppendError::TooLarge { .. } | AppendError::BatchTooLarge { .. } => {
                    Status::MessageTooLarge
                }
                AppendError::UnknownQueue { .. } => Status::QueueNotFound,
                AppendError::DiskFull(_) => Status::DiskFull,
                AppendError::Busy { .. } => Status::SystemBusy,
                AppendError::BufferFull
                | AppendError::SegmentNotReady
                | AppendError::Diverged(_)
                | AppendError::Failed(_) => Status::StoreError,
            },
            ShardError::Store(_)
            | ShardError::Replication(_)
            | ShardError::Metadata(_)
            | ShardError::Unreadable(_)
            | ShardError::NotDurable
            | ShardError::PartlyStored { .. } => Status::StoreError,
            ShardError::ShuttingDown => Status::SystemBusy,
            ShardError::ShardGone(_) | ShardError::Internal(_) => Status::Internal,
        }
    }
}

impl From<ShardError> for Reply {
    fn from(e: ShardError) -> Reply {
        Reply::error(e.status(), e.to_string())
    }
}

impl From<super::mesh::ShardGone> for ShardError {
    fn from(gone: super::mesh::ShardGone) -> ShardError {
        ShardError::ShardGone(gone.0)
    }
}

impl From<super::coordinator::MembershipError> for ShardError {
    fn from(e: super::coordinator::MembershipError) -> ShardError {
        use super::coordinator::MembershipError as M;
        match e {
            M::UnknownMember(m) => ShardError::UnknownMember(m),
            M::IllegalGeneration(m) => ShardError::IllegalGeneration(m),
            M::Refused(m) => ShardError::Refused(m),
            M::Full(m) => ShardError::Overloaded(m),
        }
    }
}
