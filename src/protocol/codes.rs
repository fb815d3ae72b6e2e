//! Opcodes and response statuses, with their numeric values on the wire.

use std::fmt;

/// What a request asks for. The numeric value is the `opcode` field of the frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Opcode {
    Ping = 1,
    Metadata = 2,
    Produce = 10,
    Pull = 11,
    QueueStats = 12,
    TopicCreate = 20,
    TopicDelete = 21,
    TopicList = 22,
    TopicDescribe = 23,
    GroupCommit = 30,
    GroupFetch = 31,
    GroupDescribe = 32,
    Stats = 40,
    MetadataSnapshot = 60,
    ClusterStatus = 50,
    ClusterPromote = 51,
}

impl Opcode {
    pub const ALL: [Opcode; 16] = [
        Opcode::Ping,
        Opcode::Metadata,
        Opcode::Produce,
        Opcode::Pull,
        Opcode::QueueStats,
        Opcode::TopicCreate,
        Opcode::TopicDelete,
        Opcode::TopicList,
        Opcode::TopicDescribe,
        Opcode::GroupCommit,
        Opcode::GroupFetch,
        Opcode::GroupDescribe,
        Opcode::Stats,
        Opcode::MetadataSnapshot,
        Opcode::ClusterStatus,
        Opcode::ClusterPromote,
    ];

    pub fn from_u16(value: u16) -> Option<Opcode> {
        Opcode::ALL.iter().copied().find(|op| *op as u16 == value)
    }
}

/// The outcome of a request. `Ok` and the three "stored but guarantee not met" statuses carry a
/// normal response body; every other status carries a UTF-8 error message as its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Status {
    Ok = 0,
    /// Stored, but no fdatasync covering it completed within `sync_flush_timeout_ms`.
    FlushDiskTimeout = 1,
    /// Stored, but not acknowledged by enough slaves within `sync_replica_timeout_ms`.
    FlushSlaveTimeout = 2,
    /// Stored, but no slave is connected and in sync.
    SlaveNotAvailable = 3,
    /// A pull found no message at or after its offset within its wait.
    NoNewMessage = 4,
    BadRequest = 100,
    FrameTooLarge = 101,
    BadCrc = 102,
    UnknownOpcode = 103,
    BadMagic = 104,
    UnsupportedVersion = 105,
    TopicNotFound = 110,
    TopicExists = 111,
    QueueNotFound = 112,
    MessageTooLarge = 113,
    OffsetOutOfRange = 114,
    InvalidName = 115,
    /// Retryable: a bounded queue or buffer is full.
    SystemBusy = 200,
    /// Retryable: this broker's role does not accept the request (e.g. produce on a slave).
    NotMaster = 201,
    /// Retryable: not stored, the disk has no space for the next commitlog segment. Reads
    /// keep working; writes are accepted again as soon as space is freed.
    DiskFull = 202,
    StoreError = 300,
    Internal = 301,
}

impl Status {
    const ALL: [Status; 22] = [
        Status::Ok,
        Status::FlushDiskTimeout,
        Status::FlushSlaveTimeout,
        Status::SlaveNotAvailable,
        Status::NoNewMessage,
        Status::BadRequest,
        Status::FrameTooLarge,
        Status::BadCrc,
        Status::UnknownOpcode,
        Status::BadMagic,
        Status::UnsupportedVersion,
        Status::TopicNotFound,
        Status::TopicExists,
        Status::QueueNotFound,
        Status::MessageTooLarge,
        Status::OffsetOutOfRange,
        Status::InvalidName,
        Status::SystemBusy,
        Status::NotMaster,
        Status::DiskFull,
        Status::StoreError,
        Status::Internal,
    ];

    pub fn from_u16(value: u16) -> Option<Status> {
        Status::ALL.iter().copied().find(|s| *s as u16 == value)
    }

    /// Statuses whose body is the normal response body rather than an error message.
    pub fn has_body(self) -> bool {
        matches!(
            self,
            Status::Ok
                | Status::FlushDiskTimeout
                | Status::FlushSlaveTimeout
                | Status::SlaveNotAvailable
                | Status::NoNewMessage
        )
    }

    /// The name used in CLI output and docs, in the domain's own spelling.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::FlushDiskTimeout => "FLUSH_DISK_TIMEOUT",
            Status::FlushSlaveTimeout => "FLUSH_SLAVE_TIMEOUT",
            Status::SlaveNotAvailable => "SLAVE_NOT_AVAILABLE",
            Status::NoNewMessage => "NO_NEW_MESSAGE",
            Status::BadRequest => "BAD_REQUEST",
            Status::FrameTooLarge => "FRAME_TOO_LARGE",
            Status::BadCrc => "BAD_CRC",
            Status::UnknownOpcode => "UNKNOWN_OPCODE",
            Status::BadMagic => "BAD_MAGIC",
            Status::UnsupportedVersion => "UNSUPPORTED_VERSION",
            Status::TopicNotFound => "TOPIC_NOT_FOUND",
            Status::TopicExists => "TOPIC_EXISTS",
            Status::QueueNotFound => "QUEUE_NOT_FOUND",
            Status::MessageTooLarge => "MESSAGE_TOO_LARGE",
            Status::OffsetOutOfRange => "OFFSET_OUT_OF_RANGE",
            Status::InvalidName => "INVALID_NAME",
            Status::SystemBusy => "SYSTEM_BUSY",
            Status::NotMaster => "NOT_MASTER",
            Status::DiskFull => "DISK_FULL",
            Status::StoreError => "STORE_ERROR",
            Status::Internal => "INTERNAL",
        }
    }

    /// Whether the same request may succeed if sent again unchanged.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Status::SystemBusy | Status::NotMaster | Status::DiskFull
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
