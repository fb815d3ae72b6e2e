//! Admin documents that cross the wire as JSON bodies: what `ClusterStatus` and `Stats` return.
//! They live here, not next to the broker code that fills them, so that the client reads them
//! without depending on the broker.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `ClusterStatus` body (JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub broker_name: String,
    pub role: String,
    pub flush_disk_type: String,
    pub shards: Vec<ShardStatus>,
    /// With `namesrv` set: each name server as this broker's registration last found it.
    #[serde(default)]
    pub namesrv: Vec<NameServerStatus>,
    /// Controller mode: the broker's id, role and SyncStateSet as the controllers last told it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<ControllerModeStatus>,
}

/// A broker in controller mode, as its last heartbeat answer left it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerModeStatus {
    pub controllers: Vec<String>,
    /// 0 until the controllers assigned one.
    pub broker_id: u64,
    /// MASTER, SLAVE or FENCED.
    pub assigned_role: String,
    pub master_broker_id: u64,
    pub master_epoch: u32,
    pub sync_state_set_epoch: u32,
    pub sync_state_set: Vec<u64>,
    /// A change this master proposed that the controllers have not answered yet.
    pub pending_sync_state_set: Option<Vec<u64>>,
    /// A master's lease left, in ms (none on a slave or a fenced broker).
    pub lease_ms_left: Option<u64>,
}

/// One name server as a broker's registration with it last went.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameServerStatus {
    /// The name server's address.
    pub namesrv: String,
    /// The last registration was answered.
    pub registered: bool,
    /// The last answer refused this broker's master claim: its epoch does not outrank the
    /// group's master there, which the name server lists instead (this broker is not listed
    /// as a master).
    pub refused: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardStatus {
    pub shard: usize,
    pub role: String,
    pub epoch: u32,
    pub log_id: String,
    pub max_offset: u64,
    pub flushed_offset: u64,
    /// What consumers of this shard can see.
    pub confirmed_offset: u64,
    pub divergence_points: Vec<u64>,
    /// Master: one row per connected slave.
    pub slaves: Vec<SlaveStatus>,
    /// Slave: the link to the master.
    pub master_link: Option<MasterLink>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SlaveStatus {
    pub peer: String,
    pub acked_offset: u64,
    pub lag_bytes: u64,
    /// How long the slave has been behind the master's end (0 when caught up).
    pub lag_ms: u64,
    pub connected_ms: u64,
    pub last_report_ms_ago: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MasterLink {
    pub master: String,
    pub streaming: bool,
    pub master_confirmed_offset: u64,
}

/// The body of `DeleteExpired` and `RetentionStatus` responses (JSON): one row per shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Retention {
    pub shards: Vec<ShardRetention>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardRetention {
    pub shard: usize,
    /// The commitlog's first retained byte.
    pub log_head: u64,
    pub max_offset: u64,
    /// Commitlog segments on disk (retained ones, the one being written, a prepared one).
    pub segments: usize,
    /// Used over usable bytes of the store's file system, 0 to 1.
    pub disk_used_ratio: f64,
    /// Appends are refused with DISK_FULL: usage is above `disk_space_warning_ratio`.
    pub appends_refused: bool,
    /// What this pass deleted (always empty in a `RetentionStatus` answer).
    pub deleted: Vec<DeletedSegment>,
    pub deleted_segments_total: u64,
    pub reclaimed_bytes_total: u64,
    /// Why the pass stopped early (a failed read, unlink or checkpoint write).
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeletedSegment {
    /// The segment's file path on the broker.
    pub file: String,
    pub start_offset: u64,
    pub bytes: u64,
    /// `"expired"` (older than `file_reserved_time_ms`) or `"disk_pressure"`.
    pub reason: String,
}

/// The body of a `Stats` response (JSON): probes merged across the shards listed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub shards: Vec<usize>,
    pub counters: BTreeMap<String, u64>,
    pub gauges: BTreeMap<String, u64>,
    pub histograms: BTreeMap<String, HistogramSummary>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistogramSummary {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// The `AclList` body (JSON): every rule, each part in the text `AclAdd` takes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclList {
    /// `"off"` or `"acl"`: whether the rules are enforced.
    pub authorization: String,
    pub rules: Vec<AclEntry>,
}

/// One rule as text (`docs/security.md`, "ACLs").
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AclEntry {
    pub principal: String,
    pub operation: String,
    pub resource: String,
    pub effect: String,
}
