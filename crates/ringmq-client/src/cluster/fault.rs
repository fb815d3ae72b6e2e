//! Latency fault tolerance, after RocketMQ's `MQFaultStrategy`: a broker group that failed a
//! send, or answered slowly, is avoided for a while, and the while grows with its consecutive
//! failures and with its latency.
//!
//! A failure avoids the group for [`FAILURE_BASE_AVOID`] doubled per consecutive failure, up to
//! [`MAX_AVOID`]; a success resets the count and avoids the group only when it was slow (the
//! latency steps of [`latency_avoid`]). Avoided groups are skipped while another group is
//! available; when every group is avoided the producer still sends, to the one available
//! soonest, so fault tolerance never makes a send fail by itself.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long one failure avoids a group: short, because a master that restarts or a slave
/// promoted in its place should get traffic again within a route refresh or two.
pub const FAILURE_BASE_AVOID: Duration = Duration::from_millis(1000);

/// Longest avoidance: the base doubled five times. RocketMQ goes up to ten minutes; here a
/// group that comes back is used again within half a minute at worst.
pub const MAX_AVOID: Duration = Duration::from_secs(30);

/// Latency steps: an answer slower than `LATENCY_STEPS[i].0` avoids the group for
/// `LATENCY_STEPS[i].1` (RocketMQ's `latencyMax`/`notAvailableDuration`, scaled down).
const LATENCY_STEPS: [(Duration, Duration); 4] = [
    (Duration::from_millis(15_000), Duration::from_secs(30)),
    (Duration::from_millis(3_000), Duration::from_secs(10)),
    (Duration::from_millis(2_000), Duration::from_secs(5)),
    (Duration::from_millis(1_000), Duration::from_secs(2)),
];

/// Avoidance a successful answer with this latency earns (zero below a second).
pub fn latency_avoid(latency: Duration) -> Duration {
    LATENCY_STEPS
        .iter()
        .find(|(over, _)| latency >= *over)
        .map_or(Duration::ZERO, |(_, avoid)| *avoid)
}

/// Avoidance after `failures` consecutive failures (at least one).
pub fn failure_avoid(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(5);
    (FAILURE_BASE_AVOID * (1 << doublings)).min(MAX_AVOID)
}

#[derive(Clone, Copy, Debug)]
struct GroupHealth {
    consecutive_failures: u32,
    available_at: Instant,
}

/// Per-group health, keyed by group name.
#[derive(Debug, Default)]
pub struct FaultTolerance {
    groups: HashMap<String, GroupHealth>,
}

impl FaultTolerance {
    pub fn record_success(&mut self, group: &str, latency: Duration, now: Instant) {
        let avoid = latency_avoid(latency);
        if avoid.is_zero() {
            self.groups.remove(group);
            return;
        }
        self.groups.insert(
            group.to_string(),
            GroupHealth {
                consecutive_failures: 0,
                available_at: now + avoid,
            },
        );
    }

    pub fn record_failure(&mut self, group: &str, latency: Duration, now: Instant) {
        let health = self.groups.entry(group.to_string()).or_insert(GroupHealth {
            consecutive_failures: 0,
            available_at: now,
        });
        health.consecutive_failures = health.consecutive_failures.saturating_add(1);
        let avoid = failure_avoid(health.consecutive_failures).max(latency_avoid(latency));
        health.available_at = now + avoid;
    }

    /// Whether the group may be sent to now.
    pub fn is_available(&self, group: &str, now: Instant) -> bool {
        self.groups.get(group).is_none_or(|h| now >= h.available_at)
    }

    /// How long the group is still avoided (zero when it is available).
    pub fn avoided_for(&self, group: &str, now: Instant) -> Duration {
        self.groups.get(group).map_or(Duration::ZERO, |h| {
            h.available_at.saturating_duration_since(now)
        })
    }

    pub fn consecutive_failures(&self, group: &str) -> u32 {
        self.groups.get(group).map_or(0, |h| h.consecutive_failures)
    }
}
