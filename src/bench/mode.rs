//! The broker modes a bench run compares, and what must run for each.
//!
//! A mode names a durability guarantee ([`BenchMode::SyncFlush`] …) and yields the broker
//! processes that provide it ([`BenchMode::broker_processes`]). Today every mode is one
//! process; a replicated mode (SYNC_MASTER / ASYNC_MASTER) will yield a master and a slave, and
//! the embedded-broker code starts whatever list it is given.

use crate::config::FlushDiskType;
use serde::Serialize;
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum BenchMode {
    #[serde(rename = "SYNC_FLUSH")]
    SyncFlush,
    #[serde(rename = "ASYNC_FLUSH")]
    AsyncFlush,
}

/// What a broker process in a mode plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum BrokerRole {
    /// Takes produce requests; the bench's clients connect to it.
    Master,
}

/// One broker process a mode needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BrokerProcess {
    pub role: BrokerRole,
    pub flush_disk_type: FlushDiskType,
}

impl BenchMode {
    pub const ALL: [BenchMode; 2] = [BenchMode::SyncFlush, BenchMode::AsyncFlush];

    pub fn name(self) -> &'static str {
        match self {
            BenchMode::SyncFlush => "SYNC_FLUSH",
            BenchMode::AsyncFlush => "ASYNC_FLUSH",
        }
    }

    /// The mode with the same topology and a weaker acknowledgement, which this mode's cost is
    /// measured against; `None` for modes that are themselves the baseline.
    pub fn async_twin(self) -> Option<BenchMode> {
        match self {
            BenchMode::SyncFlush => Some(BenchMode::AsyncFlush),
            BenchMode::AsyncFlush => None,
        }
    }

    /// The processes to start, clients' target first.
    pub fn broker_processes(self) -> Vec<BrokerProcess> {
        let flush_disk_type = match self {
            BenchMode::SyncFlush => FlushDiskType::SyncFlush,
            BenchMode::AsyncFlush => FlushDiskType::AsyncFlush,
        };
        vec![BrokerProcess {
            role: BrokerRole::Master,
            flush_disk_type,
        }]
    }

    /// The mode a running broker is in, from the `flush_disk_type` its metadata reports.
    pub fn from_metadata(flush_disk_type: &str) -> Option<BenchMode> {
        flush_disk_type.parse().ok()
    }
}

impl FromStr for BenchMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        BenchMode::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                let known: Vec<&str> = BenchMode::ALL.iter().map(|m| m.name()).collect();
                format!("unknown mode `{s}`; known modes: {}", known.join(", "))
            })
    }
}

impl fmt::Display for BenchMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
