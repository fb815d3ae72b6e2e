//! ringmq: a durable, replicated, thread-per-core message broker.
//!
//! A request's path through the crate, by module: [`protocol`] (frames, pure) → `net`
//! (listeners, connections) → `shard` (the core that owns a queue) → [`store`] (commitlog,
//! consume queues, recovery) → `client` (the blocking Rust client).

pub mod cli;
pub mod client;
pub mod protocol;
pub mod store;
