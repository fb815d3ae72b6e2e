//! `ringmq bench`: the benchmark instrument.
//!
//! A [`matrix::Matrix`] runs one [`workload::Workload`] for every mode × producer count, each
//! against fresh embedded brokers ([`embedded`], started per [`mode::BenchMode`]: one group, or
//! for SYNC_MASTER_X2 two groups behind an embedded name server), against an existing broker,
//! or against the broker groups a name server lists (`--namesrv`; the run's
//! [`workload::Topology`] is every group's master and queues). Producers run on a few
//! event-loop threads ([`event_loop`], the default) or one thread each ([`workload`]),
//! consumers on one more event loop or a thread per queue; all
//! record latencies into HDR histograms ([`histogram`]), and [`cpu`] samples the bench's and the
//! broker's CPU from `/proc`; [`run`] merges them; [`report`] prints the summary lines, the
//! matrix and the sync/async ratios; [`plot`] draws the charts and [`machine`] records what it
//! all ran on. Everything of one invocation lands in one results folder.

pub mod cpu;
pub mod embedded;
pub mod event_loop;
pub mod histogram;
pub mod kafka_wire;
pub mod machine;
pub mod matrix;
pub mod mode;
pub mod plot;
pub mod report;
pub mod run;
#[cfg(test)]
mod tests;
pub mod workload;
