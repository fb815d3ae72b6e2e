//! ringmq: a durable, replicated, thread-per-core message broker.
//!
//! A request's path through the crate, by module: [`protocol`] (frames, pure) → `net`
//! (listeners, connections) → `shard` (the core that owns a queue) → [`store`] (commitlog,
//! consume queues, recovery) → [`replication`] (zero-copy sends to replicas) → `client` (the
//! blocking Rust client).

pub mod bench;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod constants;
/// The fuzz targets' bodies run the store on the simulated disk, so they come with it.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod net;
pub mod protocol;
pub mod replication;
pub mod server;
pub mod shard;
pub mod store;
/// The simulator (disk, clock, driver): test builds only, see the module's doc.
#[cfg(any(test, feature = "testing"))]
pub mod testing;
