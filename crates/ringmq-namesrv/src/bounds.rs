//! Every bound the name server keeps, in one place, each with its reason. The name server
//! trusts its network (without `--secret-file` any peer may register; with it, `crate::auth` checks signatures), so
//! these are what keep a misbehaving or merely too busy peer from exhausting its memory or
//! starving other peers.

/// Brokers kept at most. Each entry holds a registration (its topic list included), so a
/// peer registering endless broker ids must hit a bound.
pub const MAX_BROKERS: usize = 4096;

/// Groups kept at most, with or without live brokers (a group's highest epoch outlives its
/// brokers for the retention window). When full, a registration that would make a new group
/// is answered `SYSTEM_BUSY`: forgetting other groups' epochs to make room would let a stale
/// master take its group back exactly when the server is under load.
pub const MAX_GROUPS: usize = 4096;

/// One registration's encoded size at most: a broker with a few thousand topics of many
/// queues fits many times over; more is a bug or abuse.
pub const MAX_REGISTRATION_BYTES: usize = 4 * 1024 * 1024;

/// Encoded bytes of all kept registrations at most, so the registry's memory is bounded and a
/// `Routes` answer listing everything fits the Rust client's 64 MiB frame.
pub const MAX_REGISTERED_BYTES: usize = 48 * 1024 * 1024;

/// Largest request frame read: a registration at its cap plus the frame header. Requests are
/// small otherwise, so the broker's 16 MiB would only let a few slow peers hold the read
/// budget.
pub const MAX_FRAME_BYTES: usize = MAX_REGISTRATION_BYTES + 64;

/// Connections served at once. Brokers hold one each and clients one per process; past this
/// something is wrong, and each connection may hold a read buffer.
pub const MAX_CONNECTIONS: usize = 1024;

/// Connections from one IP address at once: a quarter of the total, as the broker's
/// `max_connections_per_ip` is, so one host with a connection leak cannot lock the others out
/// while a host running many clients (or a whole loopback test cluster) still fits.
pub const MAX_CONNECTIONS_PER_IP: usize = MAX_CONNECTIONS / 4;

/// Each connection's read buffer to begin with: far more than a registration of a broker with
/// a few hundred topics, so it rarely grows.
pub const BASE_READ_BUFFER_BYTES: usize = 64 * 1024;

/// What every connection's read buffer may hold beyond its base size, together: a frame that
/// would need more is answered `SYSTEM_BUSY` and its connection closed. 64 frames at the cap.
pub const READ_BUFFER_BUDGET_BYTES: usize = 256 * 1024 * 1024;

/// Answers a connection gathers before they are written: a burst of pipelined route queries,
/// each answered with every route, must not gather unbounded memory. One answer may exceed it
/// (a `Routes` of everything, up to [`MAX_REGISTERED_BYTES`]); the next waits for its write.
pub const WRITE_BATCH_BYTES: usize = 1024 * 1024;

/// What every connection's unwritten answers may hold beyond [`WRITE_BATCH_BYTES`] each,
/// together: route answers of the whole registry to many slow readers at once. A request whose
/// answer would go past it is answered `SYSTEM_BUSY` (the client tries another server).
pub const WRITE_BUFFER_BUDGET_BYTES: usize = 256 * 1024 * 1024;

/// How often one broker's refused master claims are logged (a refused broker retries every
/// heartbeat; one warning a minute says enough).
pub const REFUSAL_WARN_INTERVAL_MS: u64 = 60_000;
