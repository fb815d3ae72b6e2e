//! Response statuses and the wire-enum macro, with their numeric values on the wire. Opcodes
//! are declared with their requests in [`super::requests`] and re-exported here.

use std::fmt;

/// Declares a wire enum once: each variant with its value and its name in the docs;
/// the enum, its `ALL` list and its `from_u16` follow from that one list, so adding a code
/// touches one place (and the docs, which `tests/protocol_docs.rs` checks against `ALL`).
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $wire:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn from_u16(value: u16) -> Option<$name> {
                match value {
                    $( $value => Some($name::$variant), )+
                    _ => None,
                }
            }
        }

        impl $name {
            /// The name used in CLI output and in the docs, in the domain's own spelling.
            pub fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $wire, )+
                }
            }
        }
    };
}

// `wire_enum!` is used by `requests.rs`, which declares `Opcode` from its table of requests.
pub(crate) use wire_enum;

pub use super::requests::Opcode;

wire_enum! {
    /// The outcome of a request. `Ok` and the three "stored but guarantee not met" statuses
    /// carry a normal response body; every other status carries a UTF-8 error message as its
    /// body.
    pub enum Status {
        Ok = 0 => "OK",
        /// Stored, but no fdatasync covering it completed within `sync_flush_timeout_ms`.
        FlushDiskTimeout = 1 => "FLUSH_DISK_TIMEOUT",
        /// Stored, but not acknowledged by enough slaves within `sync_replica_timeout_ms`.
        FlushSlaveTimeout = 2 => "FLUSH_SLAVE_TIMEOUT",
        /// Stored, but no slave is connected and in sync.
        SlaveNotAvailable = 3 => "SLAVE_NOT_AVAILABLE",
        /// A pull found no message at or after its offset within its wait.
        NoNewMessage = 4 => "NO_NEW_MESSAGE",
        BadRequest = 100 => "BAD_REQUEST",
        FrameTooLarge = 101 => "FRAME_TOO_LARGE",
        BadCrc = 102 => "BAD_CRC",
        UnknownOpcode = 103 => "UNKNOWN_OPCODE",
        BadMagic = 104 => "BAD_MAGIC",
        UnsupportedVersion = 105 => "UNSUPPORTED_VERSION",
        TopicNotFound = 110 => "TOPIC_NOT_FOUND",
        TopicExists = 111 => "TOPIC_EXISTS",
        QueueNotFound = 112 => "QUEUE_NOT_FOUND",
        MessageTooLarge = 113 => "MESSAGE_TOO_LARGE",
        OffsetOutOfRange = 114 => "OFFSET_OUT_OF_RANGE",
        InvalidName = 115 => "INVALID_NAME",
        /// A group member's request carried a generation other than the group's current
        /// one, or named a queue it does not hold: it heartbeats for its new assignment
        /// (Kafka's ILLEGAL_GENERATION).
        IllegalGeneration = 116 => "ILLEGAL_GENERATION",
        /// The group has no member with that id (its session ended, or the coordinator
        /// restarted): the consumer joins again.
        UnknownMember = 117 => "UNKNOWN_MEMBER",
        /// Retryable, not stored: overload (a bounded queue, buffer or limit is full).
        SystemBusy = 200 => "SYSTEM_BUSY",
        /// Retryable: this broker's role does not accept the request (e.g. produce on a slave).
        NotMaster = 201 => "NOT_MASTER",
        /// Retryable: not stored, the disk has no space for the next commitlog segment. Reads
        /// keep working; writes are accepted again as soon as space is freed.
        DiskFull = 202 => "DISK_FULL",
        StoreError = 300 => "STORE_ERROR",
        Internal = 301 => "INTERNAL",
    }
}

impl Status {
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
