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
        /// Retryable: this controller is not the Raft leader. The message ends with
        /// ` [leader=HOST:PORT id=N]` when it knows the leader; the client sends there.
        NotLeader = 130 => "NOT_LEADER",
        /// An `AlterSyncStateSet` whose master epoch or SyncStateSet epoch is not the
        /// group's current one, or from a broker that is not the group's master: refused.
        StaleEpoch = 131 => "STALE_EPOCH",
        /// Retryable: the controller could not commit the change (no majority of
        /// controllers reachable) within its timeout; it may still commit later.
        NoQuorum = 132 => "NO_QUORUM",
        /// The port speaks TLS and the client sent plaintext: reconnect with TLS. Sent with
        /// request id 0 before the broker closes the connection.
        TlsRequired = 140 => "TLS_REQUIRED",
        /// A name server that requires signed registrations refused one without a valid
        /// signature under its secret (no signature, a wrong secret, an altered body); a broker
        /// with `authentication = "scram"` sends it to a request other than ping and the
        /// authentication steps before the connection authenticated, then closes it.
        NotAuthenticated = 142 => "NOT_AUTHENTICATED",
        /// A correctly signed registration refused as a replay: signed outside the name
        /// server's replay window, or with a sequence it has already accepted.
        ReplayRefused = 143 => "REPLAY_REFUSED",
        /// A SCRAM exchange failed: the same status and message for an unknown user, a wrong
        /// password and a broken exchange, so the answer does not tell them apart. The broker
        /// closes the connection after it.
        AuthenticationFailed = 144 => "AUTHENTICATION_FAILED",
        /// With `authorization = "acl"`: the connection's principal may not do this. The
        /// message names the operation and the resource, never a rule or a secret.
        NotAuthorized = 145 => "NOT_AUTHORIZED",
        /// Retryable, not stored: overload (a bounded queue, buffer or limit is full).
        SystemBusy = 200 => "SYSTEM_BUSY",
        /// Retryable: this broker's role does not accept the request (e.g. produce on a slave).
        NotMaster = 201 => "NOT_MASTER",
        /// Retryable: not stored, the disk has no space for the next commitlog segment. Reads
        /// keep working; writes are accepted again as soon as space is freed.
        DiskFull = 202 => "DISK_FULL",
        /// Retryable, not stored: an `all` produce refused before its append because the
        /// in-sync set is smaller than `min_in_sync_replicas`. Reserved for controller mode
        /// (issue 11); no broker of this version sends it.
        InSyncReplicasNotEnough = 203 => "IN_SYNC_REPLICAS_NOT_ENOUGH",
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
            Status::SystemBusy
                | Status::NotMaster
                | Status::DiskFull
                | Status::NotLeader
                | Status::NoQuorum
                | Status::InSyncReplicasNotEnough
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The tail of an `OFFSET_OUT_OF_RANGE` message that carries the queue's range: the body stays
/// a UTF-8 message for humans (older clients print it as before), and ends with
/// ` [min_offset=N max_offset=M]` for clients that reset an offset by it.
pub fn offset_out_of_range_message(detail: &str, min_offset: u64, max_offset: u64) -> String {
    format!("{detail} [min_offset={min_offset} max_offset={max_offset}]")
}

/// The (min_offset, max_offset) an `OFFSET_OUT_OF_RANGE` message ends with, if it does (a
/// broker from before the range was carried sends only the text).
pub fn parse_offset_range(message: &str) -> Option<(u64, u64)> {
    let rest = message.strip_suffix(']')?;
    let tail = &rest[rest.rfind(" [min_offset=")? + " [min_offset=".len()..];
    let (min, max) = tail.split_once(" max_offset=")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(min) || !digits(max) {
        return None;
    }
    Some((min.parse().ok()?, max.parse().ok()?))
}

/// The group's current master as a broker that is not it knows it (from its name-server
/// registration answers): the client address to send the request to instead, and the epoch of
/// that master's claim, so a client can tell a newer hint from an older one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterHint {
    /// The master's advertised client address, `HOST:PORT`.
    pub listen: String,
    /// The epoch the master registered with.
    pub epoch: u32,
}

/// A `NOT_MASTER` message: `detail`, then ` [master=HOST:PORT epoch=N]` when the broker knows
/// the current master, so clients re-route in one round trip. Like the offset range, the tail
/// keeps the body a message for humans; the hint is left out when `listen` could not be parsed
/// back (no `HOST:PORT`, or a space in it), since a tail no parser accepts only misleads.
pub fn not_master_message(detail: &str, master: Option<&MasterHint>) -> String {
    match master {
        Some(hint) if valid_listen(&hint.listen) => {
            format!("{detail} [master={} epoch={}]", hint.listen, hint.epoch)
        }
        _ => detail.to_string(),
    }
}

/// The master a `NOT_MASTER` message ends with, if it does (a broker that knows no master, or
/// one from before hints were added, sends only the text).
pub fn not_master_hint(message: &str) -> Option<MasterHint> {
    let rest = message.strip_suffix(']')?;
    let tail = &rest[rest.rfind(" [master=")? + " [master=".len()..];
    let (listen, epoch) = tail.split_once(" epoch=")?;
    if !valid_listen(listen) || epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(MasterHint {
        listen: listen.to_string(),
        epoch: epoch.parse().ok()?,
    })
}

/// `HOST:PORT` with a non-empty host (a bracketed IPv6 address too) and a decimal port, and
/// no space, which would split the tail.
fn valid_listen(listen: &str) -> bool {
    let Some((host, port)) = listen.rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && !listen.contains(char::is_whitespace)
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok()
}

#[cfg(test)]
mod master_hint_tests {
    use super::{not_master_hint, not_master_message, MasterHint};

    #[test]
    fn the_hint_round_trips_and_foreign_text_is_not_a_hint() {
        let hint = MasterHint {
            listen: "10.0.0.7:9500".into(),
            epoch: u32::MAX,
        };
        let message = not_master_message("this broker is a SLAVE", Some(&hint));
        assert_eq!(
            message,
            format!(
                "this broker is a SLAVE [master=10.0.0.7:9500 epoch={}]",
                u32::MAX
            )
        );
        assert_eq!(not_master_hint(&message), Some(hint));
        assert_eq!(not_master_message("plain", None), "plain");
        let v6 = MasterHint {
            listen: "[::1]:9500".into(),
            epoch: 0,
        };
        assert_eq!(
            not_master_hint(&not_master_message("x", Some(&v6))),
            Some(v6)
        );
        for text in [
            "this broker is a SLAVE",
            "x [master=h:1 epoch=]",
            "x [master=:1 epoch=2]",
            "x [master=h epoch=2]",
            "x [master=h:port epoch=2]",
            "x [master=h:1 epoch=-2]",
            "x [master=h:1 epoch=4294967296]",
            "x [master=h:1 epoch=2",
            "x [min_offset=1 max_offset=2]",
        ] {
            assert_eq!(not_master_hint(text), None, "{text}");
        }
    }

    #[test]
    fn an_unparseable_address_is_left_out_rather_than_sent() {
        let hint = MasterHint {
            listen: "host with space:1".into(),
            epoch: 3,
        };
        assert_eq!(not_master_message("slave", Some(&hint)), "slave");
    }
}

#[cfg(test)]
mod offset_range_tests {
    use super::{offset_out_of_range_message, parse_offset_range};

    #[test]
    fn the_range_round_trips_and_foreign_text_is_not_a_range() {
        let message = offset_out_of_range_message("offset 3 is below", 17, u64::MAX);
        assert_eq!(
            message,
            format!("offset 3 is below [min_offset=17 max_offset={}]", u64::MAX)
        );
        assert_eq!(parse_offset_range(&message), Some((17, u64::MAX)));
        for text in [
            "offset 3 is outside the queue's range 0..=5",
            "[min_offset=1 max_offset=]",
            "x [min_offset=1 max_offset=2",
            "x [min_offset=-1 max_offset=2]",
            "x [min_offset=1 max_offset=99999999999999999999999]",
        ] {
            assert_eq!(parse_offset_range(text), None, "{text}");
        }
    }
}
