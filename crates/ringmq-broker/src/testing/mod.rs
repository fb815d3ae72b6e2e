//! Deterministic simulation of a node, for tests: [`disk::SimDisk`] (an in-memory [`Disk`]
//! with latencies, faults and a crash model), [`clock::SimClock`] (virtual time, implementing
//! [`crate::clock::Clock`]), [`driver::run`] (one thread, time moves only when every task is
//! blocked) and [`rng::SeededRng`] (the seed everything is drawn from).
//!
//! Compiled only for this crate's own unit tests and with the `testing` feature, which the root
//! `ringmq` package forwards and turns on (through its dev-dependency on itself) for the
//! integration tests, benches and examples, and which the fuzz crate asks for: release builds
//! of the broker do not contain the simulator.
//! `docs/simulation.md` describes the fault model and how to replay a seed.
//!
//! [`Disk`]: crate::store::io::Disk

pub mod clock;
pub mod disk;
pub mod driver;
pub mod hot_path;
pub mod rng;

pub use clock::SimClock;
pub use disk::{SimDisk, SimFault};
pub use rng::SeededRng;

use crate::config::{BrokerConfig, FlushDiskType};

/// A SYNC_FLUSH broker config for a shard on the simulated disk: segments small enough that
/// the simulated disk zero-fills them in a blink, the store at `/sim`, defaults otherwise.
pub fn small_shard_config() -> BrokerConfig {
    BrokerConfig {
        store_dir: std::path::PathBuf::from("/sim"),
        flush_disk_type: FlushDiskType::SyncFlush,
        segment_size_bytes: 1 << 20,
        write_buffer_bytes: 1 << 18,
        max_message_bytes: 1 << 16,
        ..BrokerConfig::default()
    }
}
