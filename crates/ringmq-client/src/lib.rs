//! The blocking Rust client: no async runtime, one `std::net::TcpStream` per connection,
//! pipelined requests.
//!
//! Requests leave through [`Connection::send`] (a frame encoded with [`crate::protocol`]) and
//! responses come back through [`Connection::recv`] / [`Connection::wait`], matched by request
//! id. [`Client`] sits on top: it fetches [`Metadata`](crate::protocol::message::Metadata) from a
//! bootstrap address and routes every queue-scoped request straight to the shard that owns the
//! queue (the broker's shard-aware ports), so the common path has no cross-core hop on the broker.

mod api;
pub mod cluster;
mod connection;
pub mod controller;
mod error;
mod failover;
#[cfg(test)]
pub(crate) mod fake_broker;
mod group;
pub mod namesrv;
pub mod reset;
pub mod retry;
pub mod scram;
#[cfg(test)]
mod tests;
mod tls;

pub use ringmq_protocol::admin::{ClusterStatus, MasterLink, ShardStatus, SlaveStatus, Stats};
pub use ringmq_protocol::Acks;

pub use api::{
    queue_for_key, Client, ClientOptions, ConnectionSlot, ProduceAck, ProduceResult, PullResult,
    Ticket,
};
pub use connection::{is_self_connection, Connection, ConnectionOptions, Response};
pub use error::ClientError;
pub use failover::{FailoverClient, DEFAULT_RETRY_PRIMARY_EVERY};
pub use group::{
    default_client_id, local_host, AllocationStrategy, Delivery, Disposition, GroupConsumer,
    GroupMode, GroupOptions, GroupStats, GroupTransport, Polled,
};
pub use namesrv::NameServerClient;
pub use reset::{OffsetReset, OffsetResetApplied};
/// The wire protocol, under the name the modules here use for it.
use ringmq_protocol as protocol;
pub use scram::{set_default_scram, ClientScram};
pub use tls::{set_default_tls, ClientTls};

use std::time::Duration;

/// Largest frame the client sends or accepts. A pull response is bounded by the pull's
/// `max_bytes`, which callers keep well below this; the limit only stops a corrupt length field
/// from making the client allocate without bound.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// How long to wait for a TCP connection to be accepted.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Floor for how long a request may wait for its response. It must exceed every broker-side
/// wait (sync flush and sync replica timeouts are a few seconds) so that a broker status such as
/// `FLUSH_SLAVE_TIMEOUT` always arrives before the client gives up.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Margin added to a pull's long-poll wait: the broker answers `NO_NEW_MESSAGE` at the end of
/// the wait, and the client must still be listening then.
pub const LONG_POLL_MARGIN: Duration = Duration::from_secs(10);

/// How long a blocked write may take before the connection is reported as timed out.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes requested from the socket per read: large enough for a full pull batch in a few calls.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
