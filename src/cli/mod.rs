//! The `ringmq` command line: one module per subcommand. `serve` runs the broker; every other
//! subcommand is a client of a running broker through [`crate::client`].

pub mod serve;
