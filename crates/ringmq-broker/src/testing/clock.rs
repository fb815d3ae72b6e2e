//! [`SimClock`]: virtual time for a simulation, and the queue of everything waiting on it.
//!
//! Time moves in ticks of [`TICK`] and only when the driver ([`super::driver`]) finds no task
//! runnable: it then fires the earliest pending event, a timer ([`Clock::sleep`]) or an I/O
//! completion that [`super::disk::SimDisk`] scheduled. Events due at the same tick fire in an
//! order drawn from the clock's seed, so two I/Os with equal latency still complete in a seeded
//! order. Nothing here reads the wall clock except once, for the origin that [`Clock::now`]
//! counts from.

use super::rng::SeededRng;
use crate::clock::Clock;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// One tick of virtual time: fine enough for the disk's latencies (tens of microseconds) and
/// the shard's timers (milliseconds) to interleave.
pub const TICK: Duration = Duration::from_micros(1);

/// The wall-clock time a simulation starts at (2023-11-14 22:13:20 UTC): fixed, so a run that
/// stores wall-clock times (store timestamps, a retry's due time) replays byte for byte from
/// its seed.
pub const SIM_ORIGIN_UNIX_MS: u64 = 1_700_000_000_000;

/// Ticks in `d`, rounded up: a sleep never ends early.
pub fn ticks_in(d: Duration) -> u64 {
    let nanos = d.as_nanos().div_ceil(TICK.as_nanos());
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

pub fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_nanos(ticks.saturating_mul(TICK.as_nanos() as u64))
}

/// Orders events: by due tick, then by a seeded draw (the completion order of I/Os due at
/// once), then by creation (unique).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct EventKey {
    tick: u64,
    order: u64,
    id: u64,
}

struct ClockState {
    origin: Instant,
    now_ticks: u64,
    rng: SeededRng,
    next_id: u64,
    events: BTreeMap<EventKey, Box<dyn FnOnce()>>,
    fired: u64,
    /// Wall-clock milliseconds at tick 0 plus every jump of [`SimClock::jump_wall`]: the
    /// simulated wall clock is this plus the virtual time elapsed, never the host's clock.
    wall_base_ms: u64,
}

/// Virtual time, shared (cheap to clone) by everything in one simulated node.
#[derive(Clone)]
pub struct SimClock {
    state: Rc<RefCell<ClockState>>,
}

impl SimClock {
    pub fn new(seed: u64) -> Self {
        SimClock {
            state: Rc::new(RefCell::new(ClockState {
                origin: Instant::now(),
                now_ticks: 0,
                rng: SeededRng(seed ^ 0xC10C_C10C_C10C_C10C),
                next_id: 0,
                events: BTreeMap::new(),
                fired: 0,
                wall_base_ms: SIM_ORIGIN_UNIX_MS,
            })),
        }
    }

    pub fn now_ticks(&self) -> u64 {
        self.state.borrow().now_ticks
    }

    /// Virtual time elapsed since the clock was made.
    pub fn elapsed(&self) -> Duration {
        ticks_to_duration(self.now_ticks())
    }

    /// Moves the wall clock (store timestamps, retention's age and hour) forward by `d`
    /// without moving virtual time: days pass for retention while no timer fires.
    pub fn jump_wall(&self, d: Duration) {
        self.state.borrow_mut().wall_base_ms += d.as_millis() as u64;
    }

    /// Events fired so far: a measure of how much a run simulated.
    pub fn fired(&self) -> u64 {
        self.state.borrow().fired
    }

    pub fn pending(&self) -> usize {
        self.state.borrow().events.len()
    }

    /// Runs `effect` when virtual time reaches `ticks` from now; the returned future yields its
    /// result. The effect runs even if the future is dropped first: an I/O a caller stops
    /// waiting for still happens.
    pub fn after<T: 'static>(
        &self,
        ticks: u64,
        effect: impl FnOnce() -> T + 'static,
    ) -> Completion<T> {
        self.completion(ticks, effect).0
    }

    /// A timer: completes when virtual time reaches `ticks` from now. Dropping it cancels it,
    /// so an abandoned timeout does not pull time forward.
    pub fn sleep_ticks(&self, ticks: u64) -> Completion<()> {
        let (mut completion, key) = self.completion(ticks, || ());
        completion.cancel = Some((self.clone(), key));
        completion
    }

    fn completion<T: 'static>(
        &self,
        ticks: u64,
        effect: impl FnOnce() -> T + 'static,
    ) -> (Completion<T>, EventKey) {
        let slot = Rc::new(RefCell::new(Slot {
            value: None,
            waker: None,
        }));
        let filled = slot.clone();
        let key = self.schedule(ticks, move || {
            let value = effect();
            let mut slot = filled.borrow_mut();
            slot.value = Some(value);
            if let Some(waker) = slot.waker.take() {
                waker.wake();
            }
        });
        (Completion { slot, cancel: None }, key)
    }

    fn schedule(&self, ticks: u64, event: impl FnOnce() + 'static) -> EventKey {
        let mut state = self.state.borrow_mut();
        let key = EventKey {
            tick: state.now_ticks.saturating_add(ticks),
            order: state.rng.next_u64(),
            id: state.next_id,
        };
        state.next_id += 1;
        state.events.insert(key, Box::new(event));
        key
    }

    /// Fires the earliest pending event, moving time to it. False when nothing is pending.
    pub fn advance(&self) -> bool {
        let event = {
            let mut state = self.state.borrow_mut();
            let Some((key, event)) = state.events.pop_first() else {
                return false;
            };
            state.now_ticks = state.now_ticks.max(key.tick);
            state.fired += 1;
            event
        };
        event();
        true
    }

    /// Drops every pending event without running it: the end of a simulated node's life. I/O
    /// still in flight never completes (the disk keeps it as in flight for its crash model).
    pub fn discard_pending(&self) {
        let events = std::mem::take(&mut self.state.borrow_mut().events);
        drop(events);
    }

    fn cancel(&self, key: EventKey) {
        let removed = self.state.borrow_mut().events.remove(&key);
        drop(removed);
    }
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        let state = self.state.borrow();
        state.origin + ticks_to_duration(state.now_ticks)
    }

    fn sleep(&self, d: Duration) -> crate::clock::Sleep {
        crate::clock::Sleep::Other(Box::pin(self.sleep_ticks(ticks_in(d))))
    }

    fn unix_ms(&self) -> u64 {
        let state = self.state.borrow();
        state.wall_base_ms + ticks_to_duration(state.now_ticks).as_millis() as u64
    }

    /// The hour in UTC: a simulation must not depend on the host's time zone.
    fn local_hour(&self) -> u32 {
        ((self.unix_ms() / 3_600_000) % 24) as u32
    }
}

struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
}

/// The future of a scheduled event: ready once the clock has fired it.
pub struct Completion<T> {
    slot: Rc<RefCell<Slot<T>>>,
    /// For timers: the event to remove if the timer is dropped before it fires.
    cancel: Option<(SimClock, EventKey)>,
}

impl<T> Future for Completion<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut slot = self.slot.borrow_mut();
        match slot.value.take() {
            Some(value) => Poll::Ready(value),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T> Drop for Completion<T> {
    fn drop(&mut self) {
        if let Some((clock, key)) = self.cancel.take() {
            clock.cancel(key);
        }
    }
}
