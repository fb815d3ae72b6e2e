//! The broker modes a bench run compares, and what must run for each.
//!
//! A mode names a durability guarantee ([`BenchMode::SyncFlush`] …) and yields the broker
//! processes that provide it ([`BenchMode::broker_processes`]): one broker for the flush modes,
//! a master and a slave on loopback for the replicated ones. The replicated modes both run
//! ASYNC_FLUSH (RocketMQ's usual pairing with SYNC_MASTER), so their ratio isolates what waiting
//! for the slave costs. [`BenchMode::SyncMasterTwoGroups`] runs two such SYNC_MASTER groups
//! behind an embedded name server, each broker with half the one-group run's shards, so its
//! ratio to SYNC_MASTER shows what spreading the same shards over two groups costs.
//! [`BenchMode::Controller`] runs the SYNC_MASTER pair in controller mode instead (one embedded
//! controller elects the master; produces at the brokers' default level `all` wait for the
//! SyncStateSet, the same one slave), so its ratio to SYNC_MASTER is what controller mode costs.

use crate::config::{BrokerRole as Role, FlushDiskType};
use serde::Serialize;
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum BenchMode {
    #[serde(rename = "SYNC_FLUSH")]
    SyncFlush,
    #[serde(rename = "ASYNC_FLUSH")]
    AsyncFlush,
    #[serde(rename = "SYNC_MASTER")]
    SyncMaster,
    #[serde(rename = "ASYNC_MASTER")]
    AsyncMaster,
    #[serde(rename = "SYNC_MASTER_X2")]
    SyncMasterTwoGroups,
    #[serde(rename = "CONTROLLER")]
    Controller,
}

/// What a broker process in a mode plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum BrokerRole {
    /// Takes produce requests; the bench's clients connect to it.
    Master,
    /// Follows the master started before it.
    Slave,
}

/// One broker process a mode needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BrokerProcess {
    pub role: BrokerRole,
    pub broker_role: Role,
    pub flush_disk_type: FlushDiskType,
}

impl BenchMode {
    pub const ALL: [BenchMode; 4] = [
        BenchMode::SyncFlush,
        BenchMode::AsyncFlush,
        BenchMode::SyncMaster,
        BenchMode::AsyncMaster,
    ];

    /// Every mode `--modes` accepts: [`BenchMode::ALL`] (the default matrix), the two-group
    /// run, which starts five processes, and the controller-mode pair (three); the last two are
    /// asked for by name.
    pub const KNOWN: [BenchMode; 6] = [
        BenchMode::SyncFlush,
        BenchMode::AsyncFlush,
        BenchMode::SyncMaster,
        BenchMode::AsyncMaster,
        BenchMode::SyncMasterTwoGroups,
        BenchMode::Controller,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BenchMode::SyncFlush => "SYNC_FLUSH",
            BenchMode::AsyncFlush => "ASYNC_FLUSH",
            BenchMode::SyncMaster => "SYNC_MASTER",
            BenchMode::AsyncMaster => "ASYNC_MASTER",
            BenchMode::SyncMasterTwoGroups => "SYNC_MASTER_X2",
            BenchMode::Controller => "CONTROLLER",
        }
    }

    /// Whether the mode's brokers run in controller mode, behind an embedded controller.
    pub fn controlled(self) -> bool {
        self == BenchMode::Controller
    }

    /// The mode this mode's cost is measured against: for a sync mode the same topology with a
    /// weaker acknowledgement, for the two-group run one group of the same total shards;
    /// `None` for modes that are themselves the baseline.
    pub fn async_twin(self) -> Option<BenchMode> {
        match self {
            BenchMode::SyncFlush => Some(BenchMode::AsyncFlush),
            BenchMode::SyncMaster => Some(BenchMode::AsyncMaster),
            BenchMode::SyncMasterTwoGroups | BenchMode::Controller => Some(BenchMode::SyncMaster),
            BenchMode::AsyncFlush | BenchMode::AsyncMaster => None,
        }
    }

    /// Broker groups the mode runs (each of [`BenchMode::broker_processes`]), behind an
    /// embedded name server when more than one.
    pub fn groups(self) -> usize {
        match self {
            BenchMode::SyncMasterTwoGroups => 2,
            _ => 1,
        }
    }

    /// The processes to start for one group, clients' target first (in controller mode the
    /// controller picks the master; `broker_role` is not given to those brokers).
    pub fn broker_processes(self) -> Vec<BrokerProcess> {
        let single = |flush_disk_type| {
            vec![BrokerProcess {
                role: BrokerRole::Master,
                broker_role: Role::AsyncMaster,
                flush_disk_type,
            }]
        };
        let pair = |broker_role| {
            vec![
                BrokerProcess {
                    role: BrokerRole::Master,
                    broker_role,
                    flush_disk_type: FlushDiskType::AsyncFlush,
                },
                BrokerProcess {
                    role: BrokerRole::Slave,
                    broker_role: Role::Slave,
                    flush_disk_type: FlushDiskType::AsyncFlush,
                },
            ]
        };
        match self {
            BenchMode::SyncFlush => single(FlushDiskType::SyncFlush),
            BenchMode::AsyncFlush => single(FlushDiskType::AsyncFlush),
            BenchMode::SyncMaster | BenchMode::SyncMasterTwoGroups | BenchMode::Controller => {
                pair(Role::SyncMaster)
            }
            BenchMode::AsyncMaster => pair(Role::AsyncMaster),
        }
    }

    /// The mode a running broker is in, from the role and flush mode its metadata reports.
    pub fn from_metadata(role: &str, flush_disk_type: &str) -> Option<BenchMode> {
        match role {
            "SYNC_MASTER" => Some(BenchMode::SyncMaster),
            _ => flush_disk_type.parse().ok(),
        }
    }
}

impl FromStr for BenchMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        BenchMode::KNOWN
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                let known: Vec<&str> = BenchMode::KNOWN.iter().map(|m| m.name()).collect();
                format!("unknown mode `{s}`; known modes: {}", known.join(", "))
            })
    }
}

impl fmt::Display for BenchMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The wire a run's producers speak (`--protocol`): ringmq's own frames, or Kafka's Produce
/// requests to the broker's Kafka listener (`kafka_listen`), the same broker and settings
/// otherwise, so the two rows of a mode compare the paths alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Native,
    Kafka,
}

impl Protocol {
    pub fn is_native(&self) -> bool {
        *self == Protocol::Native
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Native => "native",
            Protocol::Kafka => "kafka",
        })
    }
}
