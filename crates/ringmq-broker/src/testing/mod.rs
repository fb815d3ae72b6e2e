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
pub mod rng;

pub use clock::SimClock;
pub use disk::{SimDisk, SimFault};
pub use rng::SeededRng;
