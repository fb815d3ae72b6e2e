//! Broker configuration: TOML through serde with every default built in, so `ringmq serve` runs
//! with no file at all. A file given with `--config` and then command-line flags override the
//! defaults; [`BrokerConfig::validate`] refuses bad values with a message naming the key.

use crate::protocol::Acks;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// When a producer's OK is sent relative to the disk (see README "Modes").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FlushDiskType {
    /// OK after an fdatasync covering the record completed (group commit).
    #[serde(rename = "SYNC_FLUSH")]
    SyncFlush,
    /// OK once the record is in the shard's memory; a timer flushes.
    #[serde(rename = "ASYNC_FLUSH")]
    AsyncFlush,
}

/// A configuration the broker refuses: a document that does not parse, or the key of the first
/// bad value and why it is bad. Displayed as `key: reason`, the form operators grep for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Toml(String),
    #[error("{key}: {reason}")]
    Value { key: &'static str, reason: String },
}

impl ConfigError {
    fn value(key: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Value {
            key,
            reason: reason.into(),
        }
    }

    /// The key a bad value was given for (none when the document does not parse).
    pub fn key(&self) -> Option<&'static str> {
        match self {
            ConfigError::Toml(_) => None,
            ConfigError::Value { key, .. } => Some(key),
        }
    }
}

impl FlushDiskType {
    pub fn name(self) -> &'static str {
        match self {
            FlushDiskType::SyncFlush => "SYNC_FLUSH",
            FlushDiskType::AsyncFlush => "ASYNC_FLUSH",
        }
    }
}

impl FromStr for FlushDiskType {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "SYNC_FLUSH" => Ok(FlushDiskType::SyncFlush),
            "ASYNC_FLUSH" => Ok(FlushDiskType::AsyncFlush),
            other => Err(ConfigError::value(
                "flush_disk_type",
                format!("`{other}` is not SYNC_FLUSH or ASYNC_FLUSH"),
            )),
        }
    }
}

impl fmt::Display for FlushDiskType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a broker does in its group (see README "Replication").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerRole {
    /// A produce is answered once `min_in_sync_replicas - 1` slaves acknowledged it.
    #[serde(rename = "SYNC_MASTER")]
    SyncMaster,
    /// A produce is answered without waiting for slaves; they catch up in the background.
    #[serde(rename = "ASYNC_MASTER")]
    AsyncMaster,
    /// Refuses produce; replicates from `master` and serves reads up to what it has.
    #[serde(rename = "SLAVE")]
    Slave,
}

impl BrokerRole {
    pub fn name(self) -> &'static str {
        match self {
            BrokerRole::SyncMaster => "SYNC_MASTER",
            BrokerRole::AsyncMaster => "ASYNC_MASTER",
            BrokerRole::Slave => "SLAVE",
        }
    }
    pub fn is_master(self) -> bool {
        self != BrokerRole::Slave
    }
}

impl FromStr for BrokerRole {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "SYNC_MASTER" => Ok(BrokerRole::SyncMaster),
            "ASYNC_MASTER" => Ok(BrokerRole::AsyncMaster),
            "SLAVE" => Ok(BrokerRole::Slave),
            other => Err(ConfigError::value(
                "broker_role",
                format!("`{other}` is not SYNC_MASTER, ASYNC_MASTER or SLAVE"),
            )),
        }
    }
}

impl fmt::Display for BrokerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the replication link authenticates (docs/security.md, "Replication link").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HaSecurity {
    /// No authentication: anyone who reaches the HA port is served the log as a slave (the
    /// broker warns at start).
    #[serde(rename = "off")]
    Off,
    /// Master and slave prove to each other that they hold `ha_secret_file` before any log
    /// byte or report (a mutual HMAC-SHA256 challenge-response).
    #[serde(rename = "auth")]
    Auth,
    /// Mutual TLS on the link with `ha_tls_cert_file`, `ha_tls_key_file` and `ha_tls_ca_file`:
    /// each end verifies the other's certificate before any log byte or report, and the
    /// stream is encrypted (the master copies segment bytes through TLS instead of splicing).
    #[serde(rename = "tls")]
    Tls,
}

impl HaSecurity {
    pub fn name(self) -> &'static str {
        match self {
            HaSecurity::Off => "off",
            HaSecurity::Auth => "auth",
            HaSecurity::Tls => "tls",
        }
    }
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Name of the broker group, reported in metadata.
    pub broker_name: String,
    /// Root of the store; each shard keeps `shard-<n>/` below it.
    pub store_dir: PathBuf,
    /// Client address shared by every shard (one socket, accepted on by all); port 0 picks a
    /// free port.
    pub listen: String,
    /// First shard-aware port: shard `n` also listens on `shard_port_base + n`. 0 derives it
    /// as the listen port + 100 (or picks free ports when the listen port is 0).
    pub shard_port_base: u16,
    pub broker_role: BrokerRole,
    /// Replication listener of a master (one socket for every shard).
    pub ha_listen: String,
    /// A slave's master: the master's `ha_listen` address.
    pub master: Option<String>,
    /// Copies that must hold a record before a SYNC_MASTER answers OK: the master and
    /// `min_in_sync_replicas - 1` slaves.
    pub min_in_sync_replicas: u32,
    /// SYNC_MASTER: a produce not acknowledged by enough slaves within this gets
    /// FLUSH_SLAVE_TIMEOUT (the message is stored).
    pub sync_replica_timeout_ms: u64,
    /// A slave further behind than this does not count as in sync: with too few in-sync
    /// slaves a SYNC_MASTER answers SLAVE_NOT_AVAILABLE at once.
    pub ha_max_gap_bytes: u64,
    /// How often a slave reports its offset when nothing else is sent, and a master sends an
    /// empty frame to an idle slave.
    pub ha_heartbeat_interval_ms: u64,
    /// A link that has received nothing for this long is dropped and reconnected.
    pub ha_link_timeout_ms: u64,
    /// ASYNC_MASTER: log a warning when a slave lags by more than this many bytes.
    pub ha_lag_warn_bytes: u64,
    /// How often a master re-sends topics and consumer-group offsets to its slaves when they
    /// have not changed (changes go out at once).
    pub metadata_sync_interval_ms: u64,
    /// Prometheus endpoint HOST:PORT serving `GET /metrics`; unset means none.
    pub metrics_listen: Option<String>,
    /// Number of shards; 0 means one per available core.
    pub shards: usize,
    pub flush_disk_type: FlushDiskType,
    /// ASYNC_FLUSH: how often the flusher looks at dirty data.
    pub flush_interval_ms: u64,
    /// ASYNC_FLUSH: flush only when at least this many 4 KiB pages are dirty...
    pub flush_least_pages: u64,
    /// ...unless this long has passed since the last flush, then flush whatever is dirty.
    pub flush_thorough_interval_ms: u64,
    /// SYNC_FLUSH: a produce not flushed within this gets FLUSH_DISK_TIMEOUT.
    pub sync_flush_timeout_ms: u64,
    pub segment_size_bytes: u64,
    /// Per shard: bytes appended but not yet written before producers wait for the flusher.
    pub write_buffer_bytes: u64,
    /// Largest message body accepted.
    pub max_message_bytes: u64,
    /// Largest frame accepted on a connection (a batch of messages must fit).
    pub max_frame_bytes: u64,
    /// Upper bound on a pull's long-poll wait, whatever the client asks.
    pub max_pull_wait_ms: u64,
    /// How often consume queues and the checkpoint are written.
    pub checkpoint_interval_ms: u64,
    /// Per queue: consume-queue entries kept in memory past those not yet written (24 bytes
    /// each); a pull of older ones reads the consume-queue file. 8192 covers a consumer a few
    /// seconds behind a busy queue without a file read, and bounds the heap at 192 KiB per
    /// queue: 1,000 queues hold under 200 MiB whatever the number of messages.
    pub consume_queue_cache_entries: u64,
    /// Entries per consume-queue file (20 bytes each): 262,144 = 5 MiB, see
    /// `store::consume_queue::DEFAULT_FILE_ENTRIES`. Retention deletes whole files, so this
    /// is the step in which consume-queue space is freed. Fixed for a store's life (recorded
    /// in `store.json`, a start with another value refused): each file covers the offsets
    /// from a multiple of it.
    pub consume_queue_file_entries: u64,
    /// Longest any one start-up stage of a shard may take (priming the probe, loading consume
    /// queues, scanning one commitlog segment, truncating, rebuilding...) before the broker
    /// exits naming the shard and the stage instead of hanging. Five minutes is about a hundred
    /// times a full 1 GiB segment's scan on the slowest disk measured here.
    pub startup_stage_timeout_ms: u64,
    /// Executor busy-spin before parking; trades idle CPU for cross-core latency.
    pub spin_before_park_us: u64,
    /// Memory glommio registers with io_uring per ring (3 rings per executor).
    pub io_memory_bytes: u64,
    /// Client connections across every shard; one more is answered SYSTEM_BUSY and closed.
    pub max_connections: u32,
    /// Client connections from one IP address; one more is answered SYSTEM_BUSY and closed.
    pub max_connections_per_ip: u32,
    /// Per shard: request bytes held across all its connections (frames being received and
    /// requests being handled). A reader waits for room (back-pressure), then SYSTEM_BUSY.
    pub shard_inflight_budget_bytes: u64,
    /// A frame whose first byte arrived this long ago and that is still incomplete gets
    /// BAD_REQUEST and its connection is closed.
    pub request_read_timeout_ms: u64,
    /// A connection with no request in flight and no traffic for this long is closed (a
    /// long-poll pull in flight is not idle).
    pub connections_max_idle_ms: u64,
    /// A connection whose responses make no progress towards the peer for this long (a peer
    /// that never reads) is closed.
    pub response_write_timeout_ms: u64,
    /// Retention: a commitlog segment whose newest record was stored longer ago than this
    /// (broker clock) is deleted during the `delete_when` hours. Per broker, not per topic.
    pub file_reserved_time_ms: u64,
    /// Hours of the day (broker's local time) in which expired segments are deleted:
    /// `;`-separated, `"04"` or `"03;04"`, or `"*"` for any hour.
    pub delete_when: String,
    /// How often each shard's cleaning stage looks for segments to delete.
    pub clean_resource_interval_ms: u64,
    /// Above this fraction of the store's filesystem in use, the oldest segments are deleted
    /// whatever their age and the hour (never the one being written).
    pub disk_max_used_space_ratio: f64,
    /// Above this fraction appends are refused with DISK_FULL until usage falls again; must
    /// exceed `disk_max_used_space_ratio`.
    pub disk_space_warning_ratio: f64,
    /// Delay before the n-th retry of a rejected message is delivered (level n, 1-based; the
    /// last level repeats past the end). RocketMQ's levels by default: 1s 5s 10s 30s 1m 2m 3m
    /// 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h.
    pub retry_delay_levels_ms: Vec<u64>,
    /// Rejections after which a message goes to the group's dead-letter topic `%DLQ%<group>`
    /// instead of being retried (a consumer may ask for its own value per reject).
    pub max_reconsume_times: u32,
    /// Name servers this broker registers with, each `IP:PORT`; empty (the default): no name
    /// server, the broker works alone as before. Every name server is sent the whole
    /// registration independently (a dead one delays no other).
    pub namesrv: Vec<String>,
    /// The cluster this broker's group belongs to, as registered with the name servers.
    pub cluster_name: String,
    /// The client address registered with the name servers (`HOST:PORT`, a host name
    /// allowed: clients on other hosts resolve it); unset: the bound `listen` address.
    pub advertised_listen: Option<String>,
    /// The replication address registered with the name servers (what a slave of this
    /// broker's group would give as `master`); unset: the bound `ha_listen` address.
    pub advertised_ha_listen: Option<String>,
    /// How often the registration is re-sent to every name server when nothing changed
    /// (a topic or role change is sent at once). A few of these fit in the name server's
    /// `broker_expiry_ms` (10 s by default), so one lost heartbeat does not drop the broker.
    pub namesrv_heartbeat_interval_ms: u64,
    /// Whether pulls suggest another broker of the group (`PullSummary::suggest`): a master
    /// with a connected slave suggests the slave to a consumer more than
    /// `slave_read_lag_bytes` behind its log end, and a slave suggests the master once the
    /// consumer is within that distance. Off by default, as RocketMQ's `slaveReadEnable`.
    pub slave_read_enable: bool,
    /// The distance (commitlog bytes from the pulled record to the shard's log end) past
    /// which a master sends a consumer to a slave. ringmq reads O_DIRECT, never from a page
    /// cache, so every read the write buffer does not serve costs the shard's disk queue and
    /// core, which its producers' appends and fsyncs share. A consumer within a few write
    /// buffers (`write_buffer_bytes`, 16 MiB) of the end reads small, recent spans between
    /// appends; one further back is catching up, pulling full `MAX_BYTES_PER_PULL` batches
    /// back to back: that is the reader worth moving. 64 MiB is four write buffers, a few
    /// seconds of a busy shard's appends, so a consumer that only paused briefly stays.
    pub slave_read_lag_bytes: u64,

    // Authentication of the replication link and the name-server registrations
    // (docs/security.md, "Replication link" and "Name server"). The secrets are read from
    // their files at start and never printed: the effective configuration shows the paths.
    /// `"off"` (the default; the broker warns at start), `"auth"` (a mutual challenge-response
    /// over `ha_secret_file` before any log byte or report), `"tls"` (mutual TLS with the
    /// `ha_tls_*` files, encrypted).
    pub ha_security: HaSecurity,
    /// The replication link's shared secret, at least 32 bytes (one trailing newline is not
    /// part of it); the same file on the master and every slave. Required by `"auth"`.
    pub ha_secret_file: Option<PathBuf>,
    /// The name servers' shared secret (as `ringmq namesrv --secret-file`): when set, every
    /// registration, heartbeat and unregistration is signed with it. A name server with a
    /// secret refuses unsigned ones.
    pub namesrv_secret_file: Option<PathBuf>,
    /// `ha_secret_file`'s secret, read by [`BrokerConfig::load_secrets`]; never serialized.
    #[serde(skip)]
    pub ha_secret: Option<ringmq_protocol::auth::Secret>,
    /// `namesrv_secret_file`'s secret, read by [`BrokerConfig::load_secrets`]; never serialized.
    #[serde(skip)]
    pub namesrv_secret: Option<ringmq_protocol::auth::Secret>,
    /// With `ha_security = "tls"`: this broker's certificate chain (PEM, leaf first) on the
    /// replication link, as master and as slave. A master's must name the address its slaves
    /// connect to (`ha_listen` / `--master`, an IP SAN for an IP).
    pub ha_tls_cert_file: Option<PathBuf>,
    /// With `ha_security = "tls"`: the key of `ha_tls_cert_file` (PKCS#8, PKCS#1 or SEC1).
    pub ha_tls_key_file: Option<PathBuf>,
    /// With `ha_security = "tls"`: the CAs whose certificates the other end of a replication
    /// link must chain to. Its own key rather than `tls_ca_file`: a client certificate signed
    /// by the clients' CA must not pass as a slave (which is served the whole log).
    pub ha_tls_ca_file: Option<PathBuf>,
    /// The controllers' shared secret (as `ringmq controller --secret-file`): when set, every
    /// connection a broker in controller mode opens to a controller authenticates with it (a
    /// mutual challenge). A controller with a secret refuses a broker without it. Read and
    /// checked at start by every broker; used only in controller mode.
    pub controller_secret_file: Option<PathBuf>,
    /// `controller_secret_file`'s secret, read by [`BrokerConfig::load_secrets`]; never
    /// serialized.
    #[serde(skip)]
    pub controller_secret: Option<ringmq_protocol::auth::Secret>,
    // Acknowledgement levels (README "Acknowledgement levels"; `shard::handlers::produce`).
    /// The level of a produce that names none (`"leader"` or `"all"`; `"none"` is refused,
    /// since such a client waits for its answer). Unset: the
    /// role decides, as before levels existed: `all` on a SYNC_MASTER, `leader` on an
    /// ASYNC_MASTER, so a client that never names a level gets today's guarantee.
    pub default_acks: Option<Acks>,
    /// The floor: a produce below it (named, or from `default_acks`) is raised to it, never
    /// refused. `"none"` by default: in master/slave mode the role's default already gives
    /// every client that names no level the role's guarantee, and a producer that asks for
    /// `none` or `leader` chose to trade safety for speed (as RocketMQ's one-way send does).
    /// An operator who must not allow that sets `"leader"` or `"all"`.
    pub min_acks: Acks,

    // The Kafka listener (src/kafka, docs/kafka.md).
    /// Kafka wire-protocol listener `HOST:PORT` (port 0 picks a free port); unset (the
    /// default): no Kafka listener.
    pub kafka_listen: Option<String>,
    /// The address Kafka clients are told to connect to (Metadata's broker), `HOST:PORT`;
    /// unset: the bound `kafka_listen` address.
    pub kafka_advertised_listen: Option<String>,
    /// This broker's Kafka node id (0 to 2^31-1); unset: derived from the store's broker id,
    /// so it stays the same across restarts of one store.
    pub kafka_node_id: Option<i32>,
    /// Whether a Kafka produce or metadata request for a topic that does not exist creates
    /// it (with one partition, as Kafka's `num.partitions`); off: the client gets
    /// UNKNOWN_TOPIC_OR_PARTITION (3).
    pub kafka_auto_create_topics: bool,
    // --- TLS on the client and shard ports (docs/security.md) ---
    /// PEM certificate chain of the broker (leaf first). Set with `tls_key_file`: the client
    /// port and every shard port then speak TLS only (it replaces plaintext there; the HA and
    /// metrics ports are unchanged). Re-read on SIGHUP.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert_file`. Re-read on SIGHUP.
    pub tls_key_file: Option<PathBuf>,
    /// PEM certificates of the CAs whose client certificates are accepted (mutual TLS);
    /// needed unless `client_auth = "none"`. Re-read on SIGHUP.
    pub tls_ca_file: Option<PathBuf>,
    /// Whether a TLS client must present a certificate signed by `tls_ca_file`: `none`,
    /// `optional` (one is verified when sent) or `required`.
    pub client_auth: ClientAuth,
    /// A TLS handshake not finished this long after the connection was accepted closes it.
    pub tls_handshake_timeout_ms: u64,
    /// Per shard: TLS handshakes running at once; a connection accepted beyond it is closed at
    /// once, so a flood of slow handshakes costs a bounded amount of memory and never delays
    /// the connections already serving.
    pub tls_max_handshakes_per_shard: u32,

    // Authorization and the audit log (docs/security.md, "ACLs" and "Audit log").
    /// `"off"` (the default; the broker warns at start that every operation, admin calls
    /// included, is open to anyone who reaches a port) or `"acl"`: deny by default, each
    /// request allowed by the ACL rules (`ringmq acl`), deny wins.
    pub authorization: Authorization,
    /// Principals allowed every operation (user and ACL administration included)
    #[serde(default)]
    pub superusers: Vec<String>,
    /// Where every admin call is recorded, one JSON line each (unset: `<store_dir>/audit.log`).
    pub audit_log_file: Option<PathBuf>,
    // Controller mode (docs/controller.md, "Brokers in controller mode"): the controllers
    // assign this broker its id and its role; `broker_role` and `master` are then refused.
    /// Controllers to register and heartbeat with, each `HOST:PORT`; empty (the default):
    /// master/slave mode, the role comes from `broker_role`.
    pub controller: Vec<String>,
    /// How often this broker heartbeats to the controllers (and, as master, renews its lease
    /// and reviews its SyncStateSet). 250 ms: the controller declares a master lost after 2 s
    /// of silence (`--broker-silent-ms`), and the new master learns its role from the answer
    /// to its next heartbeat, at most one interval later; the slaves that must confirm its
    /// first `all`-level write learn the new master at their next heartbeat too. 2 s, 250 ms
    /// and 250 ms leave half a second of the 3 s failover target for the HA handshake. It is
    /// also the lease renewal the issue asks for: a 1.6 s lease survives five lost heartbeats.
    pub controller_heartbeat_interval_ms: u64,
    /// Controller mode, on SIGTERM or SIGINT: how long a master may spend handing its group
    /// over before it stops (new produce refused with NOT_MASTER, a SyncStateSet member that
    /// holds its whole log named to the controllers, which elect it at once). 5 s: the
    /// hand-over itself takes a few hundred milliseconds; the rest lets a slave catch up.
    /// Past it, or with 0, the broker stops without one and the controllers elect once its
    /// silence passes their limit (2 s).
    pub controller_handover_timeout_ms: u64,
    /// An asynchronous learner: replicates, is never in the SyncStateSet, never elected.
    pub async_learner: bool,
    /// Higher is preferred by the controller among otherwise equal candidates.
    pub broker_election_priority: u32,
    /// Controller mode: an `all`-level produce is acknowledged only once every SyncStateSet
    /// member confirmed it (true, the default). False: once `min_in_sync_replicas - 1` of
    /// them did (RocketMQ's `allAckInSyncStateSet = false`).
    pub all_ack_in_sync_state_set: bool,
    /// Controller mode, on the master: a SyncStateSet member this long behind the master's
    /// end, or disconnected, on any shard is proposed out of the set (checked every
    /// `controller_heartbeat_interval_ms`).
    pub ha_max_time_slave_not_catchup_ms: u64,
    /// Which keys the configuration file or a flag gave (not serialized): controller mode
    /// refuses `broker_role` and `master` only when they were given, and takes its own
    /// `min_acks` default only when it was not.
    #[serde(skip)]
    pub given: GivenKeys,
    // --- SCRAM authentication (docs/security.md, "SCRAM") ---
    /// Whether clients must authenticate on the client and shard ports: `off` (every
    /// connection is served), or `scram` (SCRAM-SHA-256/512 against the users in the store,
    /// or a client certificate under mutual TLS, before any request but ping).
    pub authentication: Authentication,
    /// With `authentication = "scram"`: a connection not authenticated this long after it was
    /// accepted is closed.
    pub authentication_timeout_ms: u64,
}

/// Whether requests are checked against the ACLs (`authorization`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Authorization {
    /// Every request is allowed (the broker warns at start).
    Off,
    /// Deny by default; the ACL rules allow, a deny rule wins, superusers pass.
    Acl,
}

impl Authorization {
    pub fn name(self) -> &'static str {
        match self {
            Authorization::Off => "off",
            Authorization::Acl => "acl",
        }
    }
}

/// Keys whose presence, not only their value, matters (see [`BrokerConfig::given`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct GivenKeys {
    pub broker_role: bool,
    pub min_acks: bool,
}

/// Two configurations with the same values are equal however they were written: the effective
/// configuration printed at start (every key) reads back equal to the one it came from.
impl PartialEq for GivenKeys {
    fn eq(&self, _: &GivenKeys) -> bool {
        true
    }
}

/// Whether clients authenticate (`authentication`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Authentication {
    /// No authentication: every connection is served as today.
    Off,
    /// SCRAM-SHA-256 or SCRAM-SHA-512 (or a client certificate) before any request but ping.
    Scram,
}

impl fmt::Display for Authentication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Authentication::Off => "off",
            Authentication::Scram => "scram",
        })
    }
}

/// Whether TLS clients must present a certificate (`client_auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    None,
    Optional,
    Required,
}

impl fmt::Display for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClientAuth::None => "none",
            ClientAuth::Optional => "optional",
            ClientAuth::Required => "required",
        })
    }
}

/// Shortest `namesrv_heartbeat_interval_ms`: a heartbeat costs shard 0 a round trip to every
/// other shard and an encoding of the whole topic table, so a heartbeat every millisecond would
/// take a core; a tenth of a second still expires a dead broker within a second.
pub const MIN_NAMESRV_HEARTBEAT_INTERVAL_MS: u64 = 100;

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            broker_name: "broker-a".to_string(),
            store_dir: PathBuf::from("./data"),
            listen: "127.0.0.1:10911".to_string(),
            shard_port_base: 0,
            metrics_listen: None,
            broker_role: BrokerRole::AsyncMaster,
            ha_listen: "127.0.0.1:10912".to_string(),
            master: None,
            min_in_sync_replicas: 2,
            sync_replica_timeout_ms: 3_000,
            ha_max_gap_bytes: 256 * MIB,
            ha_heartbeat_interval_ms: 1_000,
            ha_link_timeout_ms: 5_000,
            ha_lag_warn_bytes: 64 * MIB,
            metadata_sync_interval_ms: 2_000,
            shards: 0,
            flush_disk_type: FlushDiskType::SyncFlush,
            flush_interval_ms: 500,
            flush_least_pages: 4,
            flush_thorough_interval_ms: 10_000,
            sync_flush_timeout_ms: 5_000,
            segment_size_bytes: GIB,
            write_buffer_bytes: 16 * MIB,
            max_message_bytes: 4 * MIB,
            max_frame_bytes: 16 * MIB,
            max_pull_wait_ms: 30_000,
            checkpoint_interval_ms: 1_000,
            consume_queue_cache_entries: 8192,
            consume_queue_file_entries: crate::store::consume_queue::DEFAULT_FILE_ENTRIES,
            startup_stage_timeout_ms: 300_000,
            spin_before_park_us: 0,
            io_memory_bytes: 10 * MIB,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            shard_inflight_budget_bytes: 256 * MIB,
            request_read_timeout_ms: 30_000,
            connections_max_idle_ms: 600_000,
            response_write_timeout_ms: 30_000,
            file_reserved_time_ms: 72 * 60 * 60 * 1000,
            delete_when: "04".to_string(),
            clean_resource_interval_ms: 10_000,
            disk_max_used_space_ratio: 0.75,
            disk_space_warning_ratio: 0.90,
            retry_delay_levels_ms: DEFAULT_RETRY_DELAY_LEVELS_MS.to_vec(),
            max_reconsume_times: 16,
            namesrv: Vec::new(),
            cluster_name: "DefaultCluster".to_string(),
            advertised_listen: None,
            advertised_ha_listen: None,
            namesrv_heartbeat_interval_ms: 3_000,
            slave_read_enable: false,
            slave_read_lag_bytes: 64 * MIB,
            ha_security: HaSecurity::Off,
            ha_secret_file: None,
            namesrv_secret_file: None,
            ha_secret: None,
            namesrv_secret: None,
            controller_secret_file: None,
            controller_secret: None,
            ha_tls_cert_file: None,
            ha_tls_key_file: None,
            ha_tls_ca_file: None,
            default_acks: None,
            min_acks: Acks::None,
            kafka_listen: None,
            kafka_advertised_listen: None,
            kafka_node_id: None,
            kafka_auto_create_topics: false,
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_file: None,
            client_auth: ClientAuth::None,
            tls_handshake_timeout_ms: 10_000,
            tls_max_handshakes_per_shard: 256,
            authorization: Authorization::Off,
            superusers: Vec::new(),
            audit_log_file: None,
            controller: Vec::new(),
            controller_heartbeat_interval_ms: 250,
            controller_handover_timeout_ms: 5_000,
            async_learner: false,
            broker_election_priority: 0,
            all_ack_in_sync_state_set: true,
            ha_max_time_slave_not_catchup_ms: 3_000,
            given: GivenKeys::default(),
            authentication: Authentication::Off,
            authentication_timeout_ms: 10_000,
        }
    }
}

/// An advertised address: `HOST:PORT` with a host name or IP (clients resolve it) and a
/// non-zero port, nothing a NOT_MASTER hint could not carry.
fn check_advertised(key: &'static str, value: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| ConfigError::value(key, format!("`{value}` {why}"));
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| bad("is not HOST:PORT"))?;
    if host.is_empty() || value.contains(char::is_whitespace) {
        return Err(bad("is not HOST:PORT (an empty host, or a space)"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad("does not end with a port (1-65535)")),
        Ok(_) => Ok(()),
    }
}

/// RocketMQ's `messageDelayLevel`: 1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h.
pub const DEFAULT_RETRY_DELAY_LEVELS_MS: [u64; 18] = [
    1_000, 5_000, 10_000, 30_000, 60_000, 120_000, 180_000, 240_000, 300_000, 360_000, 420_000,
    480_000, 540_000, 600_000, 1_200_000, 1_800_000, 3_600_000, 7_200_000,
];

/// Most delay levels: each is one queue of the schedule topic (RocketMQ has 18).
const MAX_RETRY_DELAY_LEVELS: usize = 64;

/// Smallest segment: a few maximum-size writes must fit and zero-filling stays cheap in tests.
const MIN_SEGMENT_BYTES: u64 = 64 * KIB;
/// Blocks are 4 KiB on disk; sizes that reach the disk must be multiples of it.
const BLOCK: u64 = 4096;
/// glommio refuses less than 64 KiB of io memory.
const MIN_IO_MEMORY_BYTES: u64 = 64 * KIB;
/// Far beyond any real core count; catches typos such as `shards = 2000`.
const MAX_SHARDS: usize = 256;
/// Each connection holds two descriptors, a task and a 64 KiB read buffer (256 MiB for all
/// of them at worst); 4096 serves a large fleet of pipelining clients and stays within the
/// descriptor limits servers commonly run with.
const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
/// A quarter of the total, so one host (a client with a connection leak, say) cannot lock
/// every other host out.
const DEFAULT_MAX_CONNECTIONS_PER_IP: u32 = 1024;

impl BrokerConfig {
    /// Parses a TOML document; unknown keys are refused so a typo is not silently ignored.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let mut config: BrokerConfig =
            toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
        let table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
        config.given = GivenKeys {
            broker_role: table.contains_key("broker_role"),
            min_acks: table.contains_key("min_acks"),
        };
        Ok(config)
    }

    /// Whether the controllers assign this broker's role (`controller` is set).
    pub fn controller_mode(&self) -> bool {
        !self.controller.is_empty()
    }

    /// The level of a produce that names none while `default_acks` is unset: `all` in
    /// controller mode (every SyncStateSet member), else `None` (the role decides).
    pub fn mode_default_acks(&self) -> Option<Acks> {
        self.default_acks
            .or_else(|| self.controller_mode().then_some(Acks::All))
    }

    /// The floor of every produce's level: `min_acks`, or `leader` in controller mode when
    /// `min_acks` was not given (a fenced or lease-less master must answer, never stay silent).
    pub fn mode_min_acks(&self) -> Acks {
        if self.controller_mode() && !self.given.min_acks {
            Acks::Leader
        } else {
            self.min_acks
        }
    }

    /// Checks the controller-mode keys: the controllers assign the role, so `broker_role`
    /// and `master` are refused beside `controller`.
    fn validate_controller(&self) -> Result<(), ConfigError> {
        check_duration_ms(
            "controller_heartbeat_interval_ms",
            self.controller_heartbeat_interval_ms,
        )?;
        check_duration_ms(
            "ha_max_time_slave_not_catchup_ms",
            self.ha_max_time_slave_not_catchup_ms,
        )?;
        if self.controller_handover_timeout_ms != 0 {
            check_duration_ms(
                "controller_handover_timeout_ms",
                self.controller_handover_timeout_ms,
            )?;
        }
        if !self.controller_mode() {
            return Ok(());
        }
        if self.given.broker_role {
            return Err(ConfigError::value(
                "broker_role",
                "the controllers assign the role in controller mode (`controller` is set): \
                 remove broker_role (or --role)",
            ));
        }
        if self.master.is_some() {
            return Err(ConfigError::value(
                "master",
                "the controllers name the master in controller mode (`controller` is set): \
                 remove master (or --master)",
            ));
        }
        for (i, entry) in self.controller.iter().enumerate() {
            check_advertised("controller", entry)?;
            if self.controller[..i].contains(entry) {
                return Err(ConfigError::value(
                    "controller",
                    format!("{entry} is listed twice"),
                ));
            }
        }
        if self.controller_heartbeat_interval_ms > 1_000 {
            return Err(ConfigError::value(
                "controller_heartbeat_interval_ms",
                "at most 1000: the controller declares a broker lost after 2 s of silence, \
                 and its lease (1.6 s) must be renewed more than once within it",
            ));
        }
        if self.cluster_name.is_empty()
            || self.cluster_name.len() > crate::constants::MAX_NAME_BYTES
        {
            return Err(ConfigError::value(
                "cluster_name",
                format!(
                    "must be 1 to {} bytes of UTF-8",
                    crate::constants::MAX_NAME_BYTES
                ),
            ));
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("configuration serializes")
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            ConfigError::value(
                "listen",
                format!("`{}` is not HOST:PORT (an IP and a port)", self.listen),
            )
        })
    }

    pub fn ha_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.ha_listen.parse().map_err(|_| {
            ConfigError::value(
                "ha_listen",
                format!("`{}` is not HOST:PORT (an IP and a port)", self.ha_listen),
            )
        })
    }

    /// The master's HA address, required for a slave.
    pub fn master_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        match (&self.master, self.broker_role) {
            (None, BrokerRole::Slave) => Err(ConfigError::value(
                "master",
                "a SLAVE needs its master's HA address",
            )),
            (Some(m), _) => m.parse().map(Some).map_err(|_| {
                ConfigError::value(
                    "master",
                    format!("`{m}` is not HOST:PORT (an IP and a port)"),
                )
            }),
            (None, _) => Ok(None),
        }
    }

    pub fn kafka_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        self.kafka_listen
            .as_ref()
            .map(|m| {
                m.parse().map_err(|_| {
                    ConfigError::value(
                        "kafka_listen",
                        format!("`{m}` is not HOST:PORT (an IP and a port)"),
                    )
                })
            })
            .transpose()
    }

    /// The Kafka keys: the listener's address, the advertised one (a wildcard bind needs
    /// it: no client connects to 0.0.0.0) and the node id's range.
    fn validate_kafka(&self) -> Result<(), ConfigError> {
        let Some(bound) = self.kafka_addr()? else {
            return Ok(());
        };
        match &self.kafka_advertised_listen {
            Some(advertised) => check_advertised("kafka_advertised_listen", advertised)?,
            None if bound.ip().is_unspecified() => {
                return Err(ConfigError::value(
                    "kafka_advertised_listen",
                    format!("the Kafka listener binds {bound}, which no client can connect to: set the address Kafka clients are told to use"),
                ))
            }
            None => {}
        }
        if self.kafka_node_id.is_some_and(|id| id < 0) {
            return Err(ConfigError::value("kafka_node_id", "must be 0 or more"));
        }
        Ok(())
    }

    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        self.metrics_listen
            .as_ref()
            .map(|m| {
                m.parse().map_err(|_| {
                    ConfigError::value(
                        "metrics_listen",
                        format!("`{m}` is not HOST:PORT (an IP and a port)"),
                    )
                })
            })
            .transpose()
    }

    /// The name servers' addresses, in the order configured, host names resolved (once, at
    /// start: a name server that moves needs a broker restart). Fails naming `namesrv` and
    /// the entry that does not resolve.
    pub fn namesrv_addrs(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        let mut addrs: Vec<SocketAddr> = Vec::with_capacity(self.namesrv.len());
        for entry in &self.namesrv {
            let resolved = std::net::ToSocketAddrs::to_socket_addrs(entry.as_str())
                .map_err(|e| {
                    ConfigError::value("namesrv", format!("`{entry}` does not resolve: {e}"))
                })?
                .next()
                .ok_or_else(|| {
                    ConfigError::value("namesrv", format!("`{entry}` resolves to no address"))
                })?;
            if addrs.contains(&resolved) {
                return Err(ConfigError::value(
                    "namesrv",
                    format!("`{entry}` is {resolved}, listed twice"),
                ));
            }
            addrs.push(resolved);
        }
        Ok(addrs)
    }

    /// Checks the keys of registering with name servers; they are read only when `namesrv`
    /// is set, and checked only then (a broker on its own starts whatever they say).
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        if self.slave_read_lag_bytes == 0 {
            return Err(ConfigError::value(
                "slave_read_lag_bytes",
                "must be positive (every consumer would be sent to a slave)",
            ));
        }
        if self.namesrv.is_empty() {
            return Ok(());
        }
        for (i, entry) in self.namesrv.iter().enumerate() {
            check_advertised("namesrv", entry)?;
            if self.namesrv[..i].contains(entry) {
                return Err(ConfigError::value(
                    "namesrv",
                    format!("{entry} is listed twice"),
                ));
            }
        }
        if self.cluster_name.is_empty()
            || self.cluster_name.len() > crate::constants::MAX_NAME_BYTES
        {
            return Err(ConfigError::value(
                "cluster_name",
                format!(
                    "must be 1 to {} bytes of UTF-8",
                    crate::constants::MAX_NAME_BYTES
                ),
            ));
        }
        for (key, value) in [
            ("advertised_listen", &self.advertised_listen),
            ("advertised_ha_listen", &self.advertised_ha_listen),
        ] {
            if let Some(value) = value {
                check_advertised(key, value)?;
            }
        }
        // The bind address is the default advertised one: a wildcard reaches no client.
        for (key, bound, advertised) in [
            ("advertised_listen", &self.listen, &self.advertised_listen),
            (
                "advertised_ha_listen",
                &self.ha_listen,
                &self.advertised_ha_listen,
            ),
        ] {
            let wildcard = bound
                .parse::<SocketAddr>()
                .is_ok_and(|a| a.ip().is_unspecified());
            if wildcard && advertised.is_none() {
                return Err(ConfigError::value(
                    key,
                    format!(
                        "the broker binds {bound}, which no client can connect to: set the \
                         address to register with the name servers"
                    ),
                ));
            }
        }
        check_duration_ms(
            "namesrv_heartbeat_interval_ms",
            self.namesrv_heartbeat_interval_ms,
        )?;
        if self.namesrv_heartbeat_interval_ms < MIN_NAMESRV_HEARTBEAT_INTERVAL_MS {
            return Err(ConfigError::value(
                "namesrv_heartbeat_interval_ms",
                format!(
                    "must be at least {MIN_NAMESRV_HEARTBEAT_INTERVAL_MS} (each heartbeat \
                     gathers every shard's state and re-encodes the topic table on shard 0)"
                ),
            ));
        }
        Ok(())
    }

    /// Keys that are set but do nothing in this configuration, to warn about at start.
    pub fn unused_cluster_keys(&self) -> Vec<&'static str> {
        if !self.namesrv.is_empty() {
            return Vec::new();
        }
        [
            ("advertised_listen", self.advertised_listen.is_some()),
            ("advertised_ha_listen", self.advertised_ha_listen.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
    }

    pub fn shard_count(&self) -> usize {
        if self.shards == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            self.shards
        }
    }

    /// Checks every value, naming the key of the first bad one.
    /// Whether the client and shard ports speak TLS.
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert_file.is_some()
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => {
                return Err(ConfigError::value(
                    "tls_key_file",
                    "tls_cert_file is set: give its private key too",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::value(
                    "tls_cert_file",
                    "tls_key_file is set: give the certificate too",
                ))
            }
            _ => {}
        }
        if self.client_auth != ClientAuth::None {
            if !self.tls_enabled() {
                return Err(ConfigError::value(
                    "client_auth",
                    format!(
                        "`{}` needs TLS: set tls_cert_file and tls_key_file",
                        self.client_auth
                    ),
                ));
            }
            if self.tls_ca_file.is_none() {
                return Err(ConfigError::value("tls_ca_file", format!("client_auth = `{}` verifies client certificates against it: give the CA file", self.client_auth)));
            }
        }
        if self.client_auth == ClientAuth::None && self.tls_ca_file.is_some() {
            // Refused rather than ignored: whoever set a client CA expects client certificates
            // to be checked, and `none` would silently serve every client unauthenticated.
            return Err(ConfigError::value(
                "client_auth",
                "tls_ca_file is set but client_auth is `none`, so no client certificate would be asked for: set client_auth = \"optional\" or \"required\", or remove tls_ca_file",
            ));
        }
        if self.tls_max_handshakes_per_shard == 0 {
            return Err(ConfigError::value(
                "tls_max_handshakes_per_shard",
                "at least 1",
            ));
        }
        check_duration_ms("tls_handshake_timeout_ms", self.tls_handshake_timeout_ms)
    }

    fn validate_authentication(&self) -> Result<(), ConfigError> {
        check_duration_ms("authentication_timeout_ms", self.authentication_timeout_ms)?;
        if let Some(empty) = self.superusers.iter().find(|p| p.trim().is_empty()) {
            return Err(ConfigError::value(
                "superusers",
                format!("`{empty}` is not a principal: give user names or certificate names"),
            ));
        }
        if self.authentication == Authentication::Scram && self.ha_security == HaSecurity::Off {
            // Refused rather than warned (as Kafka refuses SASL beside a plaintext inter-broker
            // listener): the metadata frames carry every user's StoredKey and ServerKey, and
            // with "off" anyone reaching the HA port can follow this broker as a slave.
            return Err(ConfigError::value(
                "authentication",
                "\"scram\" needs ha_security = \"auth\" (with ha_secret_file) or stronger: the replication link carries the user keys, and with ha_security = \"off\" anyone who reaches the HA port can follow this broker and copy them",
            ));
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_tls()?;
        self.validate_authorization()?;
        self.validate_authentication()?;
        self.listen_addr()?;
        self.metrics_addr()?;
        self.validate_kafka()?;
        self.ha_addr()?;
        self.master_addr()?;
        if self.min_in_sync_replicas == 0 {
            return Err(ConfigError::value(
                "min_in_sync_replicas",
                "at least 1 (the master itself)",
            ));
        }
        if self.broker_name.is_empty() || self.broker_name.len() > 64 {
            return Err(ConfigError::value(
                "broker_name",
                "must be 1 to 64 characters",
            ));
        }
        if self.shards > MAX_SHARDS {
            return Err(ConfigError::value(
                "shards",
                format!("{} exceeds {MAX_SHARDS}", self.shards),
            ));
        }
        if self.segment_size_bytes < MIN_SEGMENT_BYTES || self.segment_size_bytes % BLOCK != 0 {
            return Err(ConfigError::value(
                "segment_size_bytes",
                format!(
                    "{} must be a multiple of 4096 and at least {MIN_SEGMENT_BYTES}",
                    self.segment_size_bytes
                ),
            ));
        }
        if self.segment_size_bytes > u32::MAX as u64 * 4 {
            return Err(ConfigError::value("segment_size_bytes", "at most 16 GiB"));
        }
        if self.write_buffer_bytes < 16 * BLOCK || self.write_buffer_bytes % BLOCK != 0 {
            return Err(ConfigError::value(
                "write_buffer_bytes",
                format!(
                    "{} must be a multiple of 4096 and at least 64 KiB",
                    self.write_buffer_bytes
                ),
            ));
        }
        if self.consume_queue_cache_entries == 0 || self.consume_queue_cache_entries > 1 << 24 {
            return Err(ConfigError::value(
                "consume_queue_cache_entries",
                "must be between 1 and 16777216 (384 MiB per queue)",
            ));
        }
        if self.consume_queue_file_entries == 0 || self.consume_queue_file_entries > 1 << 24 {
            return Err(ConfigError::value(
                "consume_queue_file_entries",
                "must be between 1 and 16777216 (320 MiB files)",
            ));
        }
        if self.max_message_bytes == 0 {
            return Err(ConfigError::value("max_message_bytes", "must be positive"));
        }
        let largest_record = self.max_message_bytes + 2 * 64 * KIB + 512;
        if largest_record * 2 > self.write_buffer_bytes {
            return Err(ConfigError::value(
                "max_message_bytes",
                format!(
                    "{} is too large for write_buffer_bytes {} (a record must fit twice)",
                    self.max_message_bytes, self.write_buffer_bytes
                ),
            ));
        }
        if largest_record * 2 > self.segment_size_bytes {
            return Err(ConfigError::value(
                "max_message_bytes",
                format!(
                    "{} is too large for segment_size_bytes {}",
                    self.max_message_bytes, self.segment_size_bytes
                ),
            ));
        }
        if self.max_frame_bytes < self.max_message_bytes + 1024 {
            return Err(ConfigError::value(
                "max_frame_bytes",
                "must exceed max_message_bytes by at least 1 KiB",
            ));
        }
        if self.max_frame_bytes > u32::MAX as u64 {
            return Err(ConfigError::value("max_frame_bytes", "at most 4 GiB"));
        }
        for (key, value) in [
            ("flush_interval_ms", self.flush_interval_ms),
            (
                "flush_thorough_interval_ms",
                self.flush_thorough_interval_ms,
            ),
            ("sync_flush_timeout_ms", self.sync_flush_timeout_ms),
            ("checkpoint_interval_ms", self.checkpoint_interval_ms),
            ("startup_stage_timeout_ms", self.startup_stage_timeout_ms),
            ("sync_replica_timeout_ms", self.sync_replica_timeout_ms),
            ("ha_heartbeat_interval_ms", self.ha_heartbeat_interval_ms),
            ("ha_link_timeout_ms", self.ha_link_timeout_ms),
            ("metadata_sync_interval_ms", self.metadata_sync_interval_ms),
        ] {
            check_duration_ms(key, value)?;
        }
        if self.ha_link_timeout_ms <= self.ha_heartbeat_interval_ms {
            return Err(ConfigError::value(
                "ha_link_timeout_ms",
                "must exceed ha_heartbeat_interval_ms",
            ));
        }
        self.validate_connection_limits()?;
        self.validate_security()?;
        self.validate_cluster()?;
        self.validate_controller()?;
        self.validate_retention()?;
        self.validate_retries()?;
        // A client that names no level waits for an answer (plain `Client::produce` does):
        // a `none` default would leave every such client waiting out its read timeout. Only a
        // frame that itself asks for `none` goes unanswered.
        if self.default_acks == Some(Acks::None) {
            return Err(ConfigError::value(
                "default_acks",
                "`none` would leave every client that names no level without an answer; \
                 use \"leader\" or \"all\" (a producer asks for none per request)",
            ));
        }
        if self.io_memory_bytes < MIN_IO_MEMORY_BYTES {
            return Err(ConfigError::value(
                "io_memory_bytes",
                format!(
                    "{} is below glommio's minimum of {MIN_IO_MEMORY_BYTES}",
                    self.io_memory_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Superusers are principals as ACL rules name them: not empty, no control characters,
    /// and neither `*` (everyone) nor `ANONYMOUS` (every unauthenticated connection).
    fn validate_authorization(&self) -> Result<(), ConfigError> {
        crate::security::acl::check_superusers(&self.superusers)
            .map_err(|e| ConfigError::value("superusers", e))?;
        if let Some(path) = &self.audit_log_file {
            if path.as_os_str().is_empty() {
                return Err(ConfigError::value(
                    "audit_log_file",
                    "an empty path: give a file, or leave it unset for <store_dir>/audit.log",
                ));
            }
        }
        Ok(())
    }

    /// Checks the authentication keys (the files themselves are read by `load_secrets`).
    fn validate_security(&self) -> Result<(), ConfigError> {
        match self.ha_security {
            HaSecurity::Tls => {
                for (key, value) in [
                    ("ha_tls_cert_file", &self.ha_tls_cert_file),
                    ("ha_tls_key_file", &self.ha_tls_key_file),
                    ("ha_tls_ca_file", &self.ha_tls_ca_file),
                ] {
                    if value.is_none() {
                        return Err(ConfigError::value(
                            key,
                            "ha_security = \"tls\" needs ha_tls_cert_file, ha_tls_key_file and ha_tls_ca_file",
                        ));
                    }
                }
                Ok(())
            }
            HaSecurity::Auth if self.ha_secret_file.is_none() => Err(ConfigError::value(
                "ha_secret_file",
                "ha_security = \"auth\" needs the shared secret's file",
            )),
            _ => Ok(()),
        }
    }

    /// Reads the secrets of `ha_secret_file` (when `ha_security = "auth"`),
    /// `namesrv_secret_file` and `controller_secret_file`. An error names the key and the file, never the contents.
    pub fn load_secrets(&mut self) -> Result<(), ConfigError> {
        fn read(
            key: &'static str,
            path: &std::path::Path,
        ) -> Result<ringmq_protocol::auth::Secret, ConfigError> {
            let bytes = std::fs::read(path)
                .map_err(|e| ConfigError::value(key, format!("{}: {e}", path.display())))?;
            ringmq_protocol::auth::Secret::from_file_contents(bytes)
                .map_err(|e| ConfigError::value(key, format!("{}: {e}", path.display())))
        }
        self.ha_secret = match (&self.ha_security, &self.ha_secret_file) {
            (HaSecurity::Auth, Some(path)) => Some(read("ha_secret_file", path)?),
            _ => None,
        };
        self.namesrv_secret = match &self.namesrv_secret_file {
            Some(path) => Some(read("namesrv_secret_file", path)?),
            None => None,
        };
        self.controller_secret = match &self.controller_secret_file {
            Some(path) => Some(read("controller_secret_file", path)?),
            None => None,
        };
        Ok(())
    }

    fn validate_retention(&self) -> Result<(), ConfigError> {
        if self.file_reserved_time_ms == 0 {
            return Err(ConfigError::value(
                "file_reserved_time_ms",
                "must be positive",
            ));
        }
        check_duration_ms(
            "clean_resource_interval_ms",
            self.clean_resource_interval_ms,
        )?;
        DeleteHours::parse(&self.delete_when)?;
        let max = self.disk_max_used_space_ratio;
        if !(max > 0.0 && max <= 1.0) {
            return Err(ConfigError::value(
                "disk_max_used_space_ratio",
                format!("{max} is not in (0, 1]"),
            ));
        }
        let warning = self.disk_space_warning_ratio;
        if !(warning > max && warning <= 1.0) {
            return Err(ConfigError::value(
                "disk_space_warning_ratio",
                format!("{warning} must exceed disk_max_used_space_ratio {max} and be at most 1"),
            ));
        }
        Ok(())
    }

    fn validate_retries(&self) -> Result<(), ConfigError> {
        let levels = &self.retry_delay_levels_ms;
        if levels.is_empty() || levels.len() > MAX_RETRY_DELAY_LEVELS {
            return Err(ConfigError::value(
                "retry_delay_levels_ms",
                format!("1 to {MAX_RETRY_DELAY_LEVELS} levels, not {}", levels.len()),
            ));
        }
        for level in levels {
            check_duration_ms("retry_delay_levels_ms", *level)?;
        }
        if self.max_reconsume_times == 0 {
            return Err(ConfigError::value(
                "max_reconsume_times",
                "at least 1 (0 would send every rejected message to the dead-letter topic)",
            ));
        }
        Ok(())
    }

    /// The delay before retry `attempt` (1-based) and its level: past the last level, the last.
    pub fn retry_delay(&self, attempt: u32) -> (u32, u64) {
        let levels = &self.retry_delay_levels_ms;
        let level = (attempt.max(1) as usize).min(levels.len());
        (level as u32, levels[level - 1])
    }

    fn validate_connection_limits(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("max_connections", self.max_connections as u64),
            ("max_connections_per_ip", self.max_connections_per_ip as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::value(key, "must be positive"));
            }
        }
        for (key, value) in [
            ("request_read_timeout_ms", self.request_read_timeout_ms),
            ("connections_max_idle_ms", self.connections_max_idle_ms),
            ("response_write_timeout_ms", self.response_write_timeout_ms),
        ] {
            check_duration_ms(key, value)?;
        }
        if self.shard_inflight_budget_bytes < 2 * self.max_frame_bytes {
            return Err(ConfigError::value(
                    "shard_inflight_budget_bytes",
                    format!(
                        "{} must be at least twice max_frame_bytes {} (frames still arriving may hold three quarters of it, and a largest frame must fit)",
                self.shard_inflight_budget_bytes, self.max_frame_bytes
            )));
        }
        Ok(())
    }
}

/// The hours of `delete_when`: bit `h` set when hour `h` (0 to 23) is a deletion hour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeleteHours(u32);

impl DeleteHours {
    pub const ANY: DeleteHours = DeleteHours((1 << 24) - 1);
    pub const NONE: DeleteHours = DeleteHours(0);

    /// `"*"`, or hours 0 to 23 separated by `;` (one or two digits each, RocketMQ's
    /// `deleteWhen`).
    pub fn parse(text: &str) -> Result<DeleteHours, ConfigError> {
        let text = text.trim();
        if text == "*" {
            return Ok(DeleteHours::ANY);
        }
        let mut bits = 0u32;
        for part in text.split(';') {
            let part = part.trim();
            let hour = (!part.is_empty() && part.len() <= 2 && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| part.parse::<u32>().ok())
                .flatten()
                .filter(|h| *h < 24)
                .ok_or_else(|| {
                    ConfigError::value(
                        "delete_when",
                        format!(
                            "`{part}` in `{text}` is not an hour 0 to 23; give hours separated by `;` (\"04\", \"03;04\") or \"*\" for any hour"
                        ),
                    )
                })?;
            bits |= 1 << hour;
        }
        Ok(DeleteHours(bits))
    }

    pub fn contains(self, hour: u32) -> bool {
        hour < 24 && self.0 & (1 << hour) != 0
    }
}

/// Longest time any `_ms` key may name: beyond a day a timeout protects nothing, and the
/// bound keeps every `Instant + Duration` and every sum of timeouts far from overflow.
const MAX_DURATION_MS: u64 = 24 * 60 * 60 * 1000;

fn check_duration_ms(key: &'static str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::value(key, "must be positive"));
    }
    if value > MAX_DURATION_MS {
        return Err(ConfigError::value(
            key,
            format!("{value} is more than a day ({MAX_DURATION_MS} ms)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Controller mode: `broker_role` and `master` beside `controller` are refused only when
    /// given; the levels default to `all` with a `leader` floor unless `min_acks` is given.
    #[test]
    fn controller_mode_keys_are_checked_and_change_the_level_defaults() {
        let controlled = BrokerConfig::from_toml("controller = [\"127.0.0.1:9877\"]").unwrap();
        controlled.validate().unwrap();
        assert_eq!(controlled.mode_default_acks(), Some(Acks::All));
        assert_eq!(controlled.mode_min_acks(), Acks::Leader);
        let floor =
            BrokerConfig::from_toml("controller = [\"127.0.0.1:9877\"]\nmin_acks = \"none\"")
                .unwrap();
        assert_eq!(floor.mode_min_acks(), Acks::None);
        let plain = BrokerConfig::default();
        assert_eq!(
            (plain.mode_default_acks(), plain.mode_min_acks()),
            (None, Acks::None)
        );
        let role = BrokerConfig::from_toml(
            "controller = [\"127.0.0.1:9877\"]\nbroker_role = \"SLAVE\"\nmaster = \"127.0.0.1:1\"",
        )
        .unwrap();
        assert_eq!(role.validate().unwrap_err().key(), Some("broker_role"));
        for (text, key) in [
            (
                "controller = [\"127.0.0.1:9877\"]\nmaster = \"127.0.0.1:1\"",
                "master",
            ),
            ("controller = [\"nohost\"]", "controller"),
            (
                "controller = [\"127.0.0.1:9877\", \"127.0.0.1:9877\"]",
                "controller",
            ),
            (
                "controller = [\"127.0.0.1:9877\"]\ncontroller_heartbeat_interval_ms = 5000",
                "controller_heartbeat_interval_ms",
            ),
            (
                "ha_max_time_slave_not_catchup_ms = 0",
                "ha_max_time_slave_not_catchup_ms",
            ),
        ] {
            let config = BrokerConfig::from_toml(text).unwrap();
            assert_eq!(config.validate().unwrap_err().key(), Some(key), "{text}");
        }
    }

    #[test]
    fn defaults_are_valid_and_round_trip_through_toml() {
        let config = BrokerConfig::default();
        config.validate().unwrap();
        let back = BrokerConfig::from_toml(&config.to_toml()).unwrap();
        assert_eq!(back, config);
    }

    /// The Kafka keys: off by default, a wildcard bind needs an advertised address, the
    /// node id is not negative; each refusal names its key.
    #[test]
    fn kafka_keys_are_checked_and_name_their_key() {
        let kafka = |listen: &str, advertised: Option<&str>, node: Option<i32>| BrokerConfig {
            kafka_listen: Some(listen.to_string()),
            kafka_advertised_listen: advertised.map(str::to_string),
            kafka_node_id: node,
            ..BrokerConfig::default()
        };
        assert_eq!(BrokerConfig::default().kafka_addr().unwrap(), None);
        kafka("127.0.0.1:9092", None, None).validate().unwrap();
        kafka("0.0.0.0:9092", Some("mq1.example:9092"), Some(3))
            .validate()
            .unwrap();
        let key = |c: BrokerConfig| c.validate().unwrap_err().key();
        assert_eq!(key(kafka("localhost", None, None)), Some("kafka_listen"));
        assert_eq!(
            key(kafka("0.0.0.0:9092", None, None)),
            Some("kafka_advertised_listen")
        );
        assert_eq!(
            key(kafka("127.0.0.1:9092", Some("no-port"), None)),
            Some("kafka_advertised_listen")
        );
        assert_eq!(
            key(kafka("127.0.0.1:9092", None, Some(-1))),
            Some("kafka_node_id")
        );
        let parsed = BrokerConfig::from_toml(
            "kafka_listen = \"127.0.0.1:0\"\nkafka_node_id = 7\nkafka_auto_create_topics = true",
        )
        .unwrap();
        assert_eq!(parsed.kafka_node_id, Some(7));
        assert!(parsed.kafka_auto_create_topics);
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(
            BrokerConfig::from_toml("").unwrap(),
            BrokerConfig::default()
        );
    }

    #[test]
    fn delete_when_takes_hours_or_any_and_refuses_the_rest() {
        let hours = DeleteHours::parse("04").unwrap();
        assert!(hours.contains(4) && !hours.contains(3) && !hours.contains(14));
        let hours = DeleteHours::parse("3; 04;23").unwrap();
        assert!(hours.contains(3) && hours.contains(4) && hours.contains(23));
        assert!(!hours.contains(0));
        assert_eq!(DeleteHours::parse("*").unwrap(), DeleteHours::ANY);
        assert!((0..24).all(|h| DeleteHours::ANY.contains(h)));
        for bad in ["", "24", "4am", "04;", "-1", "004", "*;04", "4,5"] {
            let err = DeleteHours::parse(bad).unwrap_err();
            assert_eq!(err.key(), Some("delete_when"), "{bad}: {err}");
            assert!(err.to_string().contains("\"*\""), "{bad}: {err}");
        }
    }

    #[test]
    fn retention_values_name_their_key() {
        let bad = |config: BrokerConfig| config.validate().unwrap_err().key();
        let base = BrokerConfig::default;
        assert_eq!(
            bad(BrokerConfig {
                delete_when: "25".into(),
                ..base()
            }),
            Some("delete_when")
        );
        assert_eq!(
            bad(BrokerConfig {
                file_reserved_time_ms: 0,
                ..base()
            }),
            Some("file_reserved_time_ms")
        );
        assert_eq!(
            bad(BrokerConfig {
                clean_resource_interval_ms: 0,
                ..base()
            }),
            Some("clean_resource_interval_ms")
        );
        for ratio in [0.0, -0.5, 1.5, f64::NAN] {
            assert_eq!(
                bad(BrokerConfig {
                    disk_max_used_space_ratio: ratio,
                    ..base()
                }),
                Some("disk_max_used_space_ratio"),
                "{ratio}"
            );
        }
        for warning in [0.75, 0.5, 1.01, f64::NAN] {
            assert_eq!(
                bad(BrokerConfig {
                    disk_space_warning_ratio: warning,
                    ..base()
                }),
                Some("disk_space_warning_ratio"),
                "{warning}"
            );
        }
        let config = BrokerConfig::from_toml(
            "file_reserved_time_ms = 3600000\ndelete_when = \"*\"\n\
             disk_max_used_space_ratio = 0.5\ndisk_space_warning_ratio = 1.0\n",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.file_reserved_time_ms, 3_600_000);
        assert_eq!(
            BrokerConfig::default().file_reserved_time_ms,
            72 * 3_600_000
        );
    }

    #[test]
    fn acknowledgement_levels_parse_and_round_trip() {
        let defaults = BrokerConfig::default();
        assert_eq!(
            (defaults.default_acks, defaults.min_acks),
            (None, Acks::None)
        );
        let config =
            BrokerConfig::from_toml("default_acks = \"all\"\nmin_acks = \"leader\"").unwrap();
        assert_eq!(
            (config.default_acks, config.min_acks),
            (Some(Acks::All), Acks::Leader)
        );
        assert_eq!(BrokerConfig::from_toml(&config.to_toml()).unwrap(), config);
        assert_eq!(
            BrokerConfig::from_toml(&defaults.to_toml()).unwrap(),
            defaults
        );
        let err = BrokerConfig::from_toml("min_acks = \"one\"").unwrap_err();
        assert!(err.to_string().contains("min_acks"), "{err}");
        let silent = BrokerConfig::from_toml("default_acks = \"none\"").unwrap();
        assert_eq!(silent.validate().unwrap_err().key(), Some("default_acks"));
        BrokerConfig::from_toml("min_acks = \"all\"\ndefault_acks = \"leader\"")
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = BrokerConfig::from_toml("flush_disk_type = \"SOMETIMES\"").unwrap_err();
        assert!(err.to_string().contains("flush_disk_type"), "{err}");
        let err = BrokerConfig::from_toml("flush_intervl_ms = 5").unwrap_err();
        assert!(err.to_string().contains("flush_intervl_ms"), "{err}");
        let config = BrokerConfig {
            segment_size_bytes: 5000,
            ..BrokerConfig::default()
        };
        assert!(config.validate().unwrap_err().key() == Some("segment_size_bytes"));
        let err = BrokerConfig::from_toml("broker_role = \"LEADER\"").unwrap_err();
        assert!(err.to_string().contains("broker_role"), "{err}");
        let config = BrokerConfig {
            broker_role: BrokerRole::Slave,
            ..BrokerConfig::default()
        };
        assert!(config.validate().unwrap_err().key() == Some("master"));
        let config = BrokerConfig {
            listen: "nowhere".into(),
            ..BrokerConfig::default()
        };
        assert!(config.validate().unwrap_err().key() == Some("listen"));
        let config = BrokerConfig {
            max_message_bytes: 8 * MIB,
            ..BrokerConfig::default()
        };
        assert!(config.validate().unwrap_err().key() == Some("max_message_bytes"));
    }

    #[test]
    fn a_duration_over_a_day_is_refused_naming_its_key() {
        let config = BrokerConfig {
            request_read_timeout_ms: MAX_DURATION_MS + 1,
            ..BrokerConfig::default()
        };
        let error = config.validate().unwrap_err();
        assert!(error.key() == Some("request_read_timeout_ms"), "{error}");
        let config = BrokerConfig {
            sync_flush_timeout_ms: MAX_DURATION_MS + 1,
            ..BrokerConfig::default()
        };
        let error = config.validate().unwrap_err();
        assert!(error.key() == Some("sync_flush_timeout_ms"), "{error}");
    }

    #[test]
    fn authentication_keys_have_defaults_and_name_their_key() {
        let config = BrokerConfig::from_toml("").unwrap();
        assert_eq!(config.authentication, Authentication::Off);
        assert_eq!(config.authentication_timeout_ms, 10_000);
        assert!(config.superusers.is_empty());
        let parsed = BrokerConfig::from_toml(
            "authentication = \"scram\"\nsuperusers = [\"admin\", \"spiffe://prod/ops\"]\n\
             ha_security = \"auth\"\nha_secret_file = \"/secret\"",
        )
        .unwrap();
        assert_eq!(parsed.authentication, Authentication::Scram);
        assert!(parsed.validate().is_ok());
        let key = |text: &str| {
            BrokerConfig::from_toml(text)
                .unwrap()
                .validate()
                .unwrap_err()
                .key()
        };
        assert_eq!(
            key("authentication_timeout_ms = 0"),
            Some("authentication_timeout_ms")
        );
        assert_eq!(key("superusers = [\" \"]"), Some("superusers"));
        // The Kafka listener authenticates with SASL/SCRAM too (kafka::sasl).
        BrokerConfig::from_toml(
            "authentication = \"scram\"\nha_security = \"auth\"\nha_secret_file = \"/s\"\nkafka_listen = \"127.0.0.1:0\"",
        )
        .unwrap()
        .validate()
        .unwrap();
        let off = BrokerConfig::from_toml("authentication = \"scram\"")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(off.key(), Some("authentication"), "{off}");
        assert!(off.to_string().contains("ha_security"), "{off}");
        assert!(BrokerConfig::from_toml("authentication = \"plain\"").is_err());
    }

    #[test]
    fn tls_keys_name_their_key() {
        let with = |text: &str| BrokerConfig::from_toml(text).unwrap().validate();
        let key = |text: &str| with(text).unwrap_err().key();
        assert_eq!(key("tls_cert_file = \"c.pem\""), Some("tls_key_file"));
        assert_eq!(key("tls_key_file = \"k.pem\""), Some("tls_cert_file"));
        assert_eq!(key("client_auth = \"required\""), Some("client_auth"));
        let tls = "tls_cert_file = \"c.pem\"\ntls_key_file = \"k.pem\"\n";
        assert_eq!(
            key(&format!("{tls}client_auth = \"optional\"")),
            Some("tls_ca_file")
        );
        assert_eq!(
            key(&format!("{tls}tls_ca_file = \"ca.pem\"")),
            Some("client_auth")
        );
        assert_eq!(
            key(&format!("{tls}tls_max_handshakes_per_shard = 0")),
            Some("tls_max_handshakes_per_shard")
        );
        assert_eq!(
            key(&format!("{tls}tls_handshake_timeout_ms = 0")),
            Some("tls_handshake_timeout_ms")
        );
        assert!(BrokerConfig::from_toml("client_auth = \"sometimes\"").is_err());
        with(&format!(
            "{tls}tls_ca_file = \"ca.pem\"\nclient_auth = \"required\""
        ))
        .unwrap();
    }

    #[test]
    fn connection_limits_name_their_key() {
        for (config, key) in [
            (
                BrokerConfig {
                    max_connections: 0,
                    ..BrokerConfig::default()
                },
                "max_connections:",
            ),
            (
                BrokerConfig {
                    max_connections_per_ip: 0,
                    ..BrokerConfig::default()
                },
                "max_connections_per_ip:",
            ),
            (
                BrokerConfig {
                    request_read_timeout_ms: 0,
                    ..BrokerConfig::default()
                },
                "request_read_timeout_ms:",
            ),
            (
                BrokerConfig {
                    connections_max_idle_ms: 0,
                    ..BrokerConfig::default()
                },
                "connections_max_idle_ms:",
            ),
            (
                BrokerConfig {
                    response_write_timeout_ms: 0,
                    ..BrokerConfig::default()
                },
                "response_write_timeout_ms:",
            ),
            (
                BrokerConfig {
                    shard_inflight_budget_bytes: 16 * MIB,
                    ..BrokerConfig::default()
                },
                "shard_inflight_budget_bytes:",
            ),
        ] {
            let err = config.validate().unwrap_err();
            assert!(err.to_string().starts_with(key), "{err}");
        }
    }

    /// The secrets are read from their files and never printed: the effective configuration
    /// and `Debug` show the paths only; "tls" and "auth" without a file are refused by name.
    #[test]
    fn secrets_are_loaded_from_files_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let canary = "canary-secret-0123456789-0123456789";
        let path = dir.path().join("ha.secret");
        std::fs::write(&path, format!("{canary}\n")).unwrap();
        let mut config = BrokerConfig {
            ha_security: HaSecurity::Auth,
            ha_secret_file: Some(path.clone()),
            namesrv_secret_file: Some(path.clone()),
            controller_secret_file: Some(path.clone()),
            ..BrokerConfig::default()
        };
        config.validate().unwrap();
        config.load_secrets().unwrap();
        assert!(config.ha_secret.is_some() && config.namesrv_secret.is_some());
        assert!(config.controller_secret.is_some());
        for printed in [config.to_toml(), format!("{config:?}")] {
            assert!(!printed.contains(canary), "{printed}");
            assert!(printed.contains(&path.display().to_string()));
        }
        let back = BrokerConfig::from_toml(&config.to_toml()).unwrap();
        assert_eq!(
            back.ha_secret, None,
            "a secret never travels through the TOML"
        );
        let short = dir.path().join("weak.secret");
        std::fs::write(&short, "tooshortsecret").unwrap();
        let mut weak = BrokerConfig {
            namesrv_secret_file: Some(short),
            ..BrokerConfig::default()
        };
        let error = weak.load_secrets().unwrap_err();
        assert_eq!(error.key(), Some("namesrv_secret_file"));
        assert!(!error.to_string().contains("tooshortsecret"), "{error}");
        let mut weak = BrokerConfig {
            controller_secret_file: Some(dir.path().join("weak.secret")),
            ..BrokerConfig::default()
        };
        let error = weak.load_secrets().unwrap_err();
        assert_eq!(error.key(), Some("controller_secret_file"));
        assert!(!error.to_string().contains("tooshortsecret"), "{error}");
        let tls = BrokerConfig::from_toml("ha_security = \"tls\"").unwrap();
        let error = tls.validate().unwrap_err();
        assert_eq!(error.key(), Some("ha_tls_cert_file"));
        let no_file = BrokerConfig::from_toml("ha_security = \"auth\"").unwrap();
        assert_eq!(
            no_file.validate().unwrap_err().key(),
            Some("ha_secret_file")
        );
    }

    #[test]
    fn cluster_keys_name_their_key_and_stay_unread_without_a_name_server() {
        let alone = BrokerConfig {
            listen: "0.0.0.0:10911".into(),
            ..BrokerConfig::default()
        };
        alone
            .validate()
            .expect("no namesrv: a wildcard bind is fine as before");
        let cluster = |f: &dyn Fn(&mut BrokerConfig)| {
            let mut config = BrokerConfig {
                namesrv: vec!["127.0.0.1:9876".into()],
                ..BrokerConfig::default()
            };
            f(&mut config);
            config.validate().err().and_then(|e| e.key())
        };
        assert_eq!(cluster(&|_| {}), None);
        assert_eq!(cluster(&|c| c.namesrv.push("ns-2".into())), Some("namesrv"));
        assert_eq!(cluster(&|c| c.namesrv.push("localhost:9877".into())), None);
        let named = BrokerConfig {
            namesrv: vec!["localhost:9876".into()],
            ..BrokerConfig::default()
        };
        assert_eq!(
            named.namesrv_addrs().unwrap()[0].port(),
            9876,
            "names resolve"
        );
        let unknown = BrokerConfig {
            namesrv: vec!["no-such-host.invalid:9876".into()],
            ..BrokerConfig::default()
        };
        assert_eq!(unknown.namesrv_addrs().unwrap_err().key(), Some("namesrv"));
        let standalone = BrokerConfig {
            cluster_name: String::new(),
            advertised_listen: Some("x:1".into()),
            ..BrokerConfig::default()
        };
        standalone
            .validate()
            .expect("no namesrv: the cluster keys are not checked");
        assert_eq!(standalone.unused_cluster_keys(), vec!["advertised_listen"]);
        assert_eq!(
            cluster(&|c| c.namesrv.push("127.0.0.1:9876".into())),
            Some("namesrv"),
            "listed twice"
        );
        assert_eq!(cluster(&|c| c.cluster_name.clear()), Some("cluster_name"));
        assert_eq!(
            cluster(&|c| c.listen = "0.0.0.0:10911".into()),
            Some("advertised_listen")
        );
        assert_eq!(
            cluster(&|c| {
                c.listen = "0.0.0.0:10911".into();
                c.advertised_listen = Some("broker-a.example:10911".into());
            }),
            None
        );
        for bad in ["host", "host:0", ":1", "a b:1", "host:99999"] {
            assert_eq!(
                cluster(&|c| c.advertised_listen = Some(bad.into())),
                Some("advertised_listen"),
                "{bad}"
            );
        }
        assert_eq!(
            cluster(&|c| c.namesrv_heartbeat_interval_ms = 0),
            Some("namesrv_heartbeat_interval_ms")
        );
        assert_eq!(
            cluster(&|c| c.namesrv_heartbeat_interval_ms = MIN_NAMESRV_HEARTBEAT_INTERVAL_MS - 1),
            Some("namesrv_heartbeat_interval_ms")
        );
        assert_eq!(
            cluster(&|c| c.namesrv_heartbeat_interval_ms = MIN_NAMESRV_HEARTBEAT_INTERVAL_MS),
            None
        );
        assert_eq!(
            cluster(&|c| c.slave_read_lag_bytes = 0),
            Some("slave_read_lag_bytes")
        );
    }
}
