//! The `ringmq` command line: one module per subcommand. `serve` runs the broker and `namesrv`
//! a name server; every other subcommand is a client of a running broker (or of the name
//! servers) through [`crate::client`].
//!
//! [`app`] holds the top-level parser and dispatch, [`output`] the text/JSON formatting shared
//! by the client subcommands.

pub mod acl;
pub mod admin;
pub mod app;
pub mod bench;
pub mod cluster;
pub mod consume;
pub mod controller;
pub mod dlq;
pub mod group;
pub mod namesrv;
pub mod output;
pub mod produce;
pub mod routed;
pub mod serve;
pub mod stats;
#[cfg(test)]
mod tests;
pub mod topic;
pub mod user;
