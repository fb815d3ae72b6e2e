//! [`SeededRng`]: the one source of randomness in a simulation. Every choice the simulator
//! makes (I/O latencies, completion order, faults, crash outcomes) and every workload a test
//! generates comes from one of these, seeded from the run's seed, so a printed seed replays
//! the run exactly.

/// A small seeded generator (splitmix64): well mixed, one `u64` of state, trivially cloned.
#[derive(Clone, Debug, Default)]
pub struct SeededRng(pub u64);

impl SeededRng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform-enough in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Uniform-enough in `low..=high` (`low` when `high < low`).
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high.saturating_sub(low).saturating_add(1))
    }
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.below(denominator) < numerator
    }
    /// A generator for a sub-system, independent of this one's later draws: each part of a
    /// simulation takes its own, so adding a draw in one part does not reshuffle the others.
    pub fn fork(&mut self) -> SeededRng {
        SeededRng(self.next_u64())
    }
}
