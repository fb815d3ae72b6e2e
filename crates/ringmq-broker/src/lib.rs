//! The ringmq broker: a durable, replicated, thread-per-core message broker.
//!
//! A request's path through the crate, by module: `net` (listeners, connections, admission) →
//! [`shard`] (the core that owns a queue; its handlers run the request) → [`store`] (commitlog,
//! consume queues, recovery) → the disk; [`replication`] ships commitlog bytes to slaves with
//! zero-copy sends, [`metrics`] keeps per-shard probes, and [`server`] starts one pinned glommio
//! executor per shard. Wire formats live in the `ringmq-protocol` crate. `docs/architecture.md`
//! is the map.

pub mod clock;
pub mod config;
pub mod constants;
pub mod counted_polls;
pub mod kafka;
pub mod metrics;
pub mod net;
pub mod replication;
pub mod security;
pub mod server;
pub mod shard;
pub mod store;
/// The simulator (disk, clock, driver): test builds only, see the module's doc.
#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// The wire protocol, under the name the modules here use for it.
use ringmq_protocol as protocol;
