//! Where the shard reads time.
//!
//! Shard logic (append deadlines, the flusher's timer, long-poll timeouts, replication lag
//! gauges) asks a [`Clock`] instead of calling `Instant::now()` or `glommio::timer::sleep`
//! directly, so a deterministic simulator can substitute its own notion of time. Production
//! code uses [`RealClock`]; a shard holds its clock as `Rc<dyn Clock>`.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time and of timers.
pub trait Clock: 'static {
    /// The current instant.
    fn now(&self) -> Instant;
    /// A future that completes once `d` has passed on this clock.
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()>>>;
    /// Wall-clock time in ms since the Unix epoch, for deadlines that must outlive the process
    /// (a delayed retry's due time is stored with the message).
    fn unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// The wall clock: `Instant::now()` and glommio's timer. Sleeping needs a glommio executor.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealClock;

impl Clock for RealClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()>>> {
        Box::pin(async move {
            glommio::timer::sleep(d).await;
        })
    }
}
