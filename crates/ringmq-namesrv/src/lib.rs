//! The ringmq name server (`ringmq namesrv`): an in-memory route registry that brokers
//! register with (opcode 70, at start, on every change and as a heartbeat) and clients ask for
//! routes (opcode 72). It keeps no durable state: restarted, it knows everything again after
//! one round of heartbeats. `docs/cluster.md` describes its rules, `docs/protocol.md` its
//! messages.
//!
//! [`registry`] is the logic (the epoch rule, expiry, the listing), pure and unit-tested;
//! [`server`] puts it behind TCP on one glommio executor; [`auth`] checks signed registrations
//! when the name server has a secret.

pub mod auth;
pub mod bounds;
pub mod registry;
pub mod server;

pub use registry::{Registry, RegistryError, DEFAULT_GROUP_EPOCH_RETENTION_MS};
pub use server::{run, NameServerConfig, DEFAULT_BROKER_EXPIRY_MS, DEFAULT_LISTEN};
