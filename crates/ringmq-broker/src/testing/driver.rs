//! The deterministic driver: runs a simulated node on one glommio executor and moves
//! [`SimClock`] time only when no task can run.
//!
//! glommio runs its task queue until it is empty and only then polls its reactor, where timers
//! fire. The driver waits on a short real timer: being woken by it means every other task is
//! blocked (on the simulated clock, disk, or on each other), so virtual time may move to the
//! next event. Nothing in a simulation does real I/O or sleeps on a real timer, and the
//! preemption timer is set beyond any run, so the order in which tasks run depends only on the
//! seed. A run therefore replays exactly from its seed.

use super::clock::SimClock;
use glommio::timer::Timer;
use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// How long the idle probe's real timer runs: it must outlast the poll right after it is made
/// (if it expired first, the probe proves nothing and is retried), and every advance of
/// virtual time waits for it once, so short.
const IDLE_PROBE: Duration = Duration::from_micros(1);

/// How long an idle executor spins before parking in the kernel: longer than the probe, so
/// that waiting for it never parks (a parked thread takes about 50 µs to wake, which would
/// dominate a run of many small steps). glommio spins only on an executor bound to a CPU.
const SPIN_BEFORE_PARK: Duration = Duration::from_millis(1);

/// Spreads simulation executors (one per test thread) over the CPUs they are bound to.
static NEXT_CPU: AtomicUsize = AtomicUsize::new(0);

/// glommio's preemption quantum for simulated runs: longer than any run, so glommio never
/// interrupts a task queue on a wall-clock signal (which would make the order depend on speed).
const NO_PREEMPTION: Duration = Duration::from_secs(24 * 3600);

/// Ready once no other task on the executor is runnable. Its first poll arms a short real
/// timer and returns `Pending`; the task is woken only by that timer, and glommio fires timers
/// only when its task queue has run dry, so any later poll means the executor was idle. (Being
/// ready on a timer that had already expired would prove nothing: the timer is re-armed until
/// the first poll finds it pending.)
struct UntilIdle {
    armed: Option<Timer>,
}

fn until_idle() -> UntilIdle {
    UntilIdle { armed: None }
}

impl Future for UntilIdle {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.armed.is_some() {
            return Poll::Ready(());
        }
        loop {
            let mut probe = Timer::new(IDLE_PROBE);
            if Pin::new(&mut probe).poll(cx).is_pending() {
                self.armed = Some(probe);
                return Poll::Pending;
            }
        }
    }
}

/// A fresh executor bound to one of the CPUs (so that it spins rather than parks when idle),
/// or an unbound one where binding is refused.
fn simulation_executor() -> LocalExecutor {
    let builder = |placement| {
        LocalExecutorBuilder::new(placement)
            .preempt_timer(NO_PREEMPTION)
            .spin_before_park(SPIN_BEFORE_PARK)
            .io_memory(64 * 1024)
            .ring_depth(8)
            .make()
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = NEXT_CPU.fetch_add(1, Ordering::Relaxed) % cpus;
    builder(Placement::Fixed(cpu))
        .or_else(|_| builder(Placement::Unbound))
        .expect("a glommio executor for the simulation")
}

/// Why a run stopped without its root future finishing.
#[derive(Debug)]
pub enum Stuck {
    /// Every task waits and nothing is scheduled: a lost wake-up, or a wait for an event that
    /// can never come.
    Deadlock { at_ticks: u64 },
    /// Virtual time reached the run's budget first.
    OutOfTime { at_ticks: u64 },
}

/// Runs the future `root()` makes on a fresh executor on this thread, advancing `clock` whenever
/// every task is blocked, until `root` finishes or virtual time passes `budget`. Tasks `root`
/// spawned and left running are dropped with the executor when it returns, and I/O still in
/// flight is discarded ([`SimClock::discard_pending`]): returning is a power cut for whatever
/// had not finished, so call [`super::disk::SimDisk::crash`] to continue from that disk.
pub fn run<T, F, Fut>(clock: &SimClock, budget: Duration, root: F) -> Result<T, Stuck>
where
    T: 'static,
    F: FnOnce() -> Fut + 'static,
    Fut: Future<Output = T> + 'static,
{
    let executor = simulation_executor();
    let budget_ticks = super::clock::ticks_in(budget);
    let clock = clock.clone();
    executor.run(async move {
        let output = Rc::new(RefCell::new(None));
        let filled = output.clone();
        glommio::spawn_local(async move {
            let value = root().await;
            *filled.borrow_mut() = Some(value);
        })
        .detach();
        let result = loop {
            until_idle().await;
            if let Some(value) = output.borrow_mut().take() {
                break Ok(value);
            }
            let at_ticks = clock.now_ticks();
            if at_ticks > budget_ticks {
                break Err(Stuck::OutOfTime { at_ticks });
            }
            if !clock.advance() {
                break Err(Stuck::Deadlock { at_ticks });
            }
        };
        clock.discard_pending();
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use std::time::Instant;

    /// Tasks sleeping on the simulated clock wake in deadline order, at their deadline, and a
    /// run replays: the same seed gives the same trace.
    #[test]
    fn timers_fire_in_order_and_runs_replay() {
        let trace_of = |seed: u64| {
            let clock = SimClock::new(seed);
            let inner = clock.clone();
            run(&clock, Duration::from_secs(10), move || async move {
                let trace = Rc::new(RefCell::new(Vec::new()));
                let mut tasks = Vec::new();
                for i in 0..20u64 {
                    let (clock, trace) = (inner.clone(), trace.clone());
                    tasks.push(glommio::spawn_local(async move {
                        let start = clock.now();
                        clock.sleep(Duration::from_micros(100 * (i % 7))).await;
                        let slept = clock.now() - start;
                        assert!(slept >= Duration::from_micros(100 * (i % 7)));
                        trace.borrow_mut().push((i, inner_ticks(&clock)));
                    }));
                }
                for task in tasks {
                    task.await;
                }
                Rc::try_unwrap(trace).unwrap().into_inner()
            })
            .expect("finishes")
        };
        fn inner_ticks(clock: &SimClock) -> u64 {
            clock.now_ticks()
        }
        let trace = trace_of(1);
        assert_eq!(trace.len(), 20);
        assert!(trace.windows(2).all(|w| w[0].1 <= w[1].1), "{trace:?}");
        assert_eq!(trace.last().unwrap().1, 600);
        assert_eq!(trace_of(1), trace);
    }

    #[test]
    fn a_task_waiting_for_nothing_is_a_deadlock() {
        let clock = SimClock::new(0);
        let result = run(&clock, Duration::from_secs(1), || async {
            futures_lite::future::pending::<()>().await;
        });
        assert!(
            matches!(result, Err(Stuck::Deadlock { at_ticks: 0 })),
            "{result:?}"
        );
    }

    #[test]
    fn a_run_stops_at_its_budget() {
        let clock = SimClock::new(0);
        let inner = clock.clone();
        let result = run(&clock, Duration::from_millis(5), move || async move {
            loop {
                inner.sleep(Duration::from_millis(1)).await;
            }
        });
        assert!(matches!(result, Err(Stuck::OutOfTime { .. })), "{result:?}");
    }

    #[test]
    fn executor_start_is_cheap_enough_for_thousands_of_runs() {
        let started = Instant::now();
        for seed in 0..200 {
            let clock = SimClock::new(seed);
            run(&clock, Duration::from_secs(1), || async {}).unwrap();
        }
        let each = started.elapsed() / 200;
        eprintln!("one simulated run's executor: {each:?}");
        assert!(each < Duration::from_millis(20), "{each:?}");
    }
}
