//! Every fixed bound of the broker, each with the reason for its value.

/// Requests one connection may have in flight before the broker stops reading from it. Enough
/// for deep pipelining (the probe saw throughput flatten past a window of 256) while bounding
/// the memory a single client can pin.
pub const MAX_INFLIGHT_REQUESTS_PER_CONNECTION: usize = 1024;

/// Request bytes one connection may have in flight. With the count bound alone a client could
/// pin 1024 maximum-size frames (16 GiB at the default frame limit); 64 MiB keeps a handful of
/// full-size batches in flight, enough for throughput, and bounds what one peer can hold.
pub const MAX_INFLIGHT_BYTES_PER_CONNECTION: usize = 64 * 1024 * 1024;

/// Initial read buffer per connection; grows to the frame size when a larger frame arrives.
pub const CONNECTION_READ_BUFFER_BYTES: usize = 64 * 1024;

/// How many bytes of answers a connection's writer gathers into one write when several are
/// queued (pipelined requests): fewer send calls, and a buffer it keeps for the connection's
/// life instead of one allocation per answer. After a write the buffer is cut back to this
/// (a large pull answer may grow it for one write), so an idle connection holds at most
/// 64 KiB of it: 4096 connections (`max_connections`' default) at most 256 MiB, one that
/// only ever answers small requests far less (its buffer is as large as its largest burst).
pub const MAX_COALESCED_RESPONSE_BYTES: usize = 64 * 1024;

/// Cross-shard channel depth per pair of shards. A forwarded request waits (asynchronously)
/// when the owner has this many unanswered; 1024 covers a full pipeline window of one client.
pub const SHARD_CHANNEL_CAPACITY: usize = 1024;

/// Longest topic or group name: fits in file names on every filesystem with room to spare.
pub const MAX_NAME_BYTES: usize = 127;

/// Most queues per topic: keeps metadata responses and describe fan-out small.
pub const MAX_QUEUES_PER_TOPIC: u32 = 1024;

/// Most messages one produce request may carry.
pub const MAX_MESSAGES_PER_PRODUCE: usize = 65_536;

/// Most messages one pull returns, whatever the client asks for.
pub const MAX_MESSAGES_PER_PULL: u32 = 4096;

/// Most bytes one pull returns (at least one message is always returned if available).
pub const MAX_BYTES_PER_PULL: u32 = 8 * 1024 * 1024;

/// Largest single read a pull makes for a run of records. Records of other queues lie between
/// a queue's records, so a span reads more than it returns; 4 MiB keeps that waste bounded
/// while a catching-up consumer still gets hundreds of records per disk read.
pub const MAX_PULL_SPAN_BYTES: u64 = 4 * 1024 * 1024;

/// Listen backlog for client sockets.
pub const LISTEN_BACKLOG: i32 = 1024;

/// How long start-up keeps retrying the store's lock and a port that are in use. A broker
/// killed a moment ago holds both until the kernel has torn its io_uring rings down (measured
/// up to about half a second, more on a loaded machine), and supervisors restart at once; 5 s
/// covers that ten times over, while a store or port held by a live process still fails
/// start-up quickly, naming it.
pub const RESTART_RETRY_MS: u64 = 5_000;

/// Pause between two tries of a lock or port in use: 100 tries within [`RESTART_RETRY_MS`].
pub const RESTART_RETRY_INTERVAL_MS: u64 = 50;

/// Descriptors one client connection holds: its socket and the duplicate its writer owns.
pub const DESCRIPTORS_PER_CONNECTION: u64 = 2;

/// Descriptors kept for everything but client connections: listeners, replication links,
/// segment and consume-queue files (at most [`CQ_OPEN_READERS`] kept open per shard), io_uring
/// rings and eventfds of every shard.
pub const DESCRIPTOR_RESERVE: u64 = 1024;

/// Consume-queue files a shard keeps open for consumers reading behind the cached tail, the
/// least recently used closed first. Each such consumer reads one file pull after pull, so
/// this many lagging queues per shard read without an open each; more still read, paying
/// the open. Small because the descriptors come out of [`DESCRIPTOR_RESERVE`]: 16 per shard
/// is 512 at 32 shards, leaving the rest for segments, links and rings.
pub const CQ_OPEN_READERS: usize = 16;

/// How long a request waits for room in its shard's `shard_inflight_budget_bytes` before it is
/// answered `SYSTEM_BUSY`. Requests finish in milliseconds, so a budget still full after a
/// second means overload: answering then lets the client back off long before its own read
/// timeout (30 s), instead of queueing more work behind the overload.
pub const INFLIGHT_BUDGET_WAIT_MS: u64 = 1_000;

/// How long the broker spends on a connection it does not admit: writing the `SYSTEM_BUSY`
/// frame (small, so it fits a new socket's buffer at once), then waiting for the peer to close
/// so the close does not reset the answer away. The bound stops a refused peer from holding a
/// task.
pub const REFUSAL_WRITE_TIMEOUT_MS: u64 = 1_000;

/// Refused connections one shard answers at a time. Each holds a descriptor for up to two
/// refusal timeouts; past this many, a refused connection is reset at once, so a peer that
/// connects over its limit in a loop cannot exhaust the broker's descriptors.
pub const MAX_REFUSALS_IN_FLIGHT_PER_SHARD: usize = 64;

/// Pipe capacity the replication splice sender asks for (`F_SETPIPE_SZ`). One pipe's worth is
/// the most one linked file → pipe → socket pair can move, so this is the chunk size; 1 MiB
/// matched the best measured throughput (notes/glommio-probe.md §3) and is the default
/// `/proc/sys/fs/pipe-max-size`. If the system refuses it the sender halves it down to
/// [`SPLICE_PIPE_MIN_CAPACITY_BYTES`], then keeps whatever the kernel gave.
pub const SPLICE_PIPE_CAPACITY_BYTES: usize = 1024 * 1024;

/// Smallest pipe capacity worth asking for before settling for the kernel default (64 KiB).
pub const SPLICE_PIPE_MIN_CAPACITY_BYTES: usize = 64 * 1024;

/// Submission queue entries of the splice sender's own ring. A transfer step has at most two
/// linked operations in flight, and cancellation adds at most three; 8 leaves room for both.
pub const SPLICE_RING_ENTRIES: u32 = 8;

/// How long one round of cancelling an abandoned splice transfer waits for the kernel before
/// asking again. Cancelled polls and interrupted socket waits end within microseconds; a splice
/// in the middle of a disk read ends when the read does.
pub const SPLICE_CANCEL_ROUND_WAIT_MS: u32 = 10;

/// Rounds of cancellation before giving up and leaving the rest to the ring's teardown: one
/// second in all, far above a disk read, so a stuck kernel cannot hang the core for longer.
pub const SPLICE_CANCEL_ROUNDS_MAX: usize = 100;

/// A consumer group member's session when its join asks for none: a few heartbeats (a third
/// of it each) long, so a dead member's queues move within about three seconds, and long
/// enough that a busy client's heartbeat is not lost to a slow round.
pub const GROUP_SESSION_TIMEOUT_MS_DEFAULT: u32 = 3_000;

/// Shortest session a join may ask for: heartbeats every 100 ms at least, the expiry tick's
/// granularity times three.
pub const GROUP_SESSION_TIMEOUT_MS_MIN: u32 = 300;

/// Longest session a join may ask for (Kafka's `group.max.session.timeout.ms`): a dead
/// member's queues must not wait longer than this to move.
pub const GROUP_SESSION_TIMEOUT_MS_MAX: u32 = 300_000;

/// How long a slave refuses consumer group membership (`NOT_MASTER`) after its link to the
/// master stopped streaming: a member still in session on a master that is alive (but cut
/// off from this slave) keeps its queues there for up to its session, so a member failing
/// over here before then could take the same queues. A default session; a master that is
/// really gone makes groups wait this long on the slave.
pub const SLAVE_GROUP_GRACE_MS: u64 = GROUP_SESSION_TIMEOUT_MS_DEFAULT as u64;

/// How often a coordinator shard looks for sessions that ended. A tenth of a second is the
/// slack it adds to "a dead member's queues move within its session timeout".
pub const GROUP_EXPIRY_TICK_MS: u64 = 100;

/// Groups with live members one coordinator shard keeps. Each costs a few hundred bytes plus
/// its members and queues; a client joining random group names cannot grow the table past
/// this (further joins are answered `SYSTEM_BUSY`).
pub const MAX_GROUPS_PER_COORDINATOR: usize = 65_536;

/// Members one group may have: more than any topic's queues are worth sharing between, and it
/// bounds the work of one rebalance (members times queues).
pub const MAX_MEMBERS_PER_GROUP: usize = 1_024;

/// Topics one group may consume: a join names them all and each rebalance walks their queues.
pub const MAX_TOPICS_PER_GROUP: usize = 16;

/// Fences a queue shard keeps from other shards' coordinators (one per group and queue being
/// read, about 100 bytes each). Past this the cache starts over: only a mesh round trip per
/// pull is lost until it refills.
pub const MAX_CACHED_FENCES: usize = 65_536;

/// Kafka consumer groups (classic protocol, `kafka::groups`): groups with live members one
/// coordinator shard keeps. A client joining random group ids cannot grow the table past this;
/// a join past it is COORDINATOR_NOT_AVAILABLE (15), retried once groups empty out. With
/// [`KAFKA_GROUP_BYTES_PER_SHARD_MAX`] it bounds a shard's group memory.
pub const KAFKA_GROUPS_PER_SHARD_MAX: usize = 4_096;

/// Members one Kafka group may have: the rebalance relays every member's metadata to the
/// leader, so this bounds one JoinGroup answer. Past it: GROUP_MAX_SIZE_REACHED (81).
pub const KAFKA_MEMBERS_PER_GROUP_MAX: usize = 1_024;

/// Protocol metadata bytes of one member's join (its subscription, for every assignor it
/// offers). A subscription names topics (at most 249 bytes each) and, for sticky assignors,
/// the partitions it owns: 1 MiB is thousands of topics. Past it: INVALID_REQUEST (42).
pub const KAFKA_MEMBER_METADATA_BYTES_MAX: usize = 1024 * 1024;

/// Metadata and assignment bytes of one group (every member's join metadata and the leader's
/// assignments together): what the coordinator holds for it and relays in one JoinGroup
/// answer to the leader. Past it: INVALID_REQUEST (42).
pub const KAFKA_GROUP_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Metadata and assignment bytes of every Kafka group one shard coordinates: the byte bound
/// beside the count bound above (4096 groups of 8 MiB would be 32 GiB). A join or sync past
/// it is COORDINATOR_NOT_AVAILABLE (15).
pub const KAFKA_GROUP_BYTES_PER_SHARD_MAX: usize = 256 * 1024 * 1024;

/// Shortest session a Kafka member may ask for (Kafka's `group.min.session.timeout.ms` is
/// 6 s; lower here so tests of a dead member run quicker, still ten heartbeats of 100 ms).
/// Outside the bounds: INVALID_SESSION_TIMEOUT (26).
pub const KAFKA_SESSION_TIMEOUT_MS_MIN: i32 = 1_000;

/// Longest session a Kafka member may ask for (Kafka's `group.max.session.timeout.ms`): a dead
/// member's partitions move within this.
pub const KAFKA_SESSION_TIMEOUT_MS_MAX: i32 = 1_800_000;

/// Longest rebalance a Kafka member may ask for (its `max.poll.interval.ms`): how long a join
/// waits for the other members. A join asking for more is held to this.
pub const KAFKA_REBALANCE_TIMEOUT_MS_MAX: i32 = 1_800_000;

/// Protocols (assignors) one Kafka join may offer: clients offer one to three; the vote over
/// a group's members is linear in them. Past it: INVALID_REQUEST (42).
pub const KAFKA_MEMBER_PROTOCOLS_MAX: usize = 32;

/// What each entry of a Kafka group (a member, one protocol it offers) costs in the byte
/// accounting beside its bytes: the bounds above then bound entries with empty names too.
pub const KAFKA_GROUP_ENTRY_OVERHEAD_BYTES: usize = 64;

/// Bytes of a Kafka client id a member id starts with (a client id may be 32 KiB; the id is
/// repeated in every answer to the group's leader).
pub const KAFKA_MEMBER_ID_CLIENT_ID_MAX: usize = 64;

// The rebalance clamp (`kafka::groups`) needs the session's lower bound under the
// rebalance's upper one.
const _: () = assert!(KAFKA_SESSION_TIMEOUT_MS_MAX <= KAFKA_REBALANCE_TIMEOUT_MS_MAX);

/// Audit lines queued for the audit writer thread (`security/audit.rs`). Admin calls are rare
/// (an operator's commands, a monitor's stats every few seconds): 4096 lines of ~250 bytes
/// (1 MiB) absorb a burst of minutes while the writer is stalled on a slow disk. Past it a
/// line is dropped, counted and logged; a shard never waits on the file.
pub const AUDIT_QUEUE_LINES: usize = 4096;
