//! ringmq: a durable, replicated, thread-per-core message broker.
//!
//! The workspace's crates, from the wire inward: `ringmq-protocol` (frames, opcodes, message
//! bodies, admin documents; pure), `ringmq-client` (the blocking Rust client; depends on the
//! protocol crate only), `ringmq-broker` (net → shard → store → disk, replication, metrics) and
//! `ringmq-namesrv` (the route registry brokers register with and clients ask) and
//! `ringmq-controller` (Raft-replicated broker ids, masters, epochs and SyncStateSets).
//! This package holds what sits on top of them: the `ringmq` command line ([`cli`]), the
//! benchmark tool ([`bench`]), and the fuzzing entry points re-exported from `ringmq-fuzzing`. Its library re-exports the other
//! crates' modules under one name (`ringmq::store`, `ringmq::protocol`, ...), which is what the
//! integration tests and the benches use. `docs/architecture.md` is the map.

pub mod bench;
pub mod cli;
/// The fuzz targets' bodies run the store on the simulated disk, so they come with it.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub use ringmq_fuzzing as fuzzing;

pub use ringmq_broker::*;
pub use ringmq_client as client;
pub use ringmq_controller as controller;
pub use ringmq_namesrv as namesrv;
pub use ringmq_protocol as protocol;
