//! Where the shard reads time.
//!
//! Shard logic (append deadlines, the flusher's timer, long-poll timeouts, replication lag
//! gauges) asks a [`Clock`] instead of calling `Instant::now()` or `glommio::timer::sleep`
//! directly, so a deterministic simulator can substitute its own notion of time. Production
//! code uses [`RealClock`]; a shard holds its clock as `Rc<dyn Clock>`.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// A source of time and of timers.
pub trait Clock: 'static {
    /// The current instant.
    fn now(&self) -> Instant;
    /// A future that completes once `d` has passed on this clock.
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()>>>;
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
