//! Where the shard reads time.
//!
//! Shard logic (append deadlines, the flusher's timer, long-poll timeouts, replication lag
//! gauges) asks a [`Clock`] instead of calling `Instant::now()` or `glommio::timer::sleep`
//! directly, so a deterministic simulator can substitute its own notion of time. Production
//! code uses [`RealClock`]; a shard holds its clock as `Rc<dyn Clock>`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time and of timers.
pub trait Clock: 'static {
    /// The current instant.
    fn now(&self) -> Instant;
    /// A future that completes once `d` has passed on this clock.
    fn sleep(&self, d: Duration) -> Sleep;
    /// Wall-clock time in milliseconds since the Unix epoch: records' store timestamps, the
    /// age retention compares them with, and deadlines that must outlive the process (a
    /// delayed retry's due time is stored with the message).
    fn unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
    /// The hour of the day (0 to 23) in the broker's local time zone, for `delete_when`.
    fn local_hour(&self) -> u32 {
        local_hour_of(self.unix_ms())
    }
}

/// The local-time hour of a Unix time in milliseconds, through the C library's time-zone
/// rules (TZ and /etc/localtime); UTC when they cannot say.
pub fn local_hour_of(unix_ms: u64) -> u32 {
    let secs = (unix_ms / 1000) as libc::time_t;
    // SAFETY: localtime_r writes only into the `tm` we pass and reads `secs`; both outlive
    // the call. It is the thread-safe variant (no shared static result).
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if ok && (0..24).contains(&tm.tm_hour) {
        tm.tm_hour as u32
    } else {
        ((unix_ms / 3_600_000) % 24) as u32
    }
}

/// The wall clock: `Instant::now()` and glommio's timer. Sleeping needs a glommio executor.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealClock;

impl Clock for RealClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, d: Duration) -> Sleep {
        // The timer's deadline is fixed here, at the call, not at the first poll: a caller
        // that keeps the future across turns (the flusher's idle timer) counts from when it
        // asked.
        Sleep::Timer(glommio::timer::Timer::new(d))
    }
}

/// [`Clock::sleep`]'s future: glommio's timer itself for the real clock (no box around it:
/// a SYNC_FLUSH produce arms one for its flush timeout), any future for another clock.
pub enum Sleep {
    Timer(glommio::timer::Timer),
    Other(Pin<Box<dyn Future<Output = ()>>>),
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut() {
            Sleep::Timer(timer) => Pin::new(timer).poll(cx).map(|_| ()),
            Sleep::Other(other) => other.as_mut().poll(cx),
        }
    }
}
