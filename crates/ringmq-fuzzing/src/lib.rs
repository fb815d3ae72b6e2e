//! The bodies of the libFuzzer targets in `fuzz/`, as plain functions of this crate
//! (re-exported as `ringmq::fuzzing`).
//!
//! Each binary in `fuzz/fuzz_targets/` is a three-line `fuzz_target!` that calls one function of
//! [`TARGETS`]; `tests/fuzz_regressions.rs` calls the same functions on every file under
//! `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/`, so a crash found once is replayed by
//! plain `cargo test` for ever. A check panics only on a bug: a decoder that panicked, or a
//! decode → encode → decode round trip that changed the value. Bad input must give an error.
//!
//! Where one target covers a family of decoders, its first input byte picks the decoder.
//! `docs/fuzzing.md` lists the targets and how to run them.
//!
//! A crate of its own, depending only on the crates whose decoders it drives: `fuzz/` builds
//! it and every dependency with coverage instrumentation, so what it leaves out (the CLI, the
//! controller's Raft, the name server, the plots) is build time saved (docs/fuzzing.md).

// The paths the target bodies use (`crate::store`, ...), as in the `ringmq` crate.
use ringmq_broker::{clock, replication, shard, store, testing};
use ringmq_client as client;
use ringmq_protocol as protocol;

mod fuzzing;

pub use fuzzing::*;
