//! The ringmq controller (`ringmq controller`): it gives each broker a persistent id, decides
//! which broker of a group is master, keeps each group's SyncStateSet and epochs, and elects a
//! new master when the master is lost. Three or more controllers replicate that state with
//! Raft; `docs/controller.md` says how to run them and the rules they follow.
//!
//! From the wire inward:
//! - [`server`]: the process: a listener for peers and brokers, one thread driving the rest;
//! - [`core`]: one controller without I/O: requests, ticks and Raft messages in; replies and
//!   Raft messages out;
//! - [`node`]: consensus behind a small trait of our own ([`node::Consensus`]), implemented on
//!   raft-rs (tikv `raft` 0.7, pinned; why it and not openraft is in that module);
//! - [`state`]: the state machine, pure: replicated commands, the leader's soft state of
//!   heartbeats, and the election rules;
//! - [`timeline`]: the leader's notes on a master switch under way, recorded as its
//!   failover timeline once the new master acknowledged;
//! - [`status`]: the status document's explanations and its `/metrics` rendering;
//! - [`store`]: the Raft log, hard state and snapshots on disk.
//!
//! The broker side of controller mode is the broker's controller agent
//! (`ringmq_broker::shard::controller_agent`), over the blocking client in
//! `ringmq_client::controller`.

pub mod core;
pub mod node;
pub mod server;
pub mod state;
pub mod status;
pub mod store;
pub mod timeline;

#[cfg(test)]
mod sim;
