//! Replication: a master ships raw commitlog bytes to its slaves, shard by shard.
//!
//! One link per shard: slave shard n connects to master shard n (all shards listen on one HA
//! port; a shard that accepts another shard's link hands the socket over the mesh). After a
//! handshake ([`protocol`]) the master ([`master`]) streams commitlog bytes from the slave's
//! offset: bytes already on disk go out by io_uring splice ([`splice`]), the unflushed tail
//! straight from the write buffer. The slave ([`slave`]) re-appends every record through the
//! same append rule, so its log is byte-identical, flushes under its own flush mode and reports
//! its confirmed offset. [`replicas`] turns reports into released SYNC_MASTER producers.
//! Topics and group offsets travel on the same link, in metadata frames the master sends after
//! the handshake and whenever they change; the slave applies them as a master would. Failures
//! are [`ReplicationError`]s. With `ha_security = "auth"` both ends prove they hold the shared
//! secret before any of that ([`auth`]); with `"tls"` the link runs inside mutual TLS ([`tls`]).

pub mod auth;
pub mod error;
pub mod identity;
pub mod master;
pub mod protocol;
pub mod replicas;
pub mod slave;
pub mod splice;
pub mod tls;

pub use error::ReplicationError;
