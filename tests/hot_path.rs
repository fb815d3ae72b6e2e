//! The broker's hot path holds to its allocation budget: what ringmq's own code allocates per
//! SYNC_FLUSH produce of one 1 KiB message, per pull of one stored message and per long poll
//! parked and woken, in steady state, on a real shard (glommio disk) one request at a time
//! (`ringmq::testing::hot_path::measure_in_process`; `cargo bench --bench hot_path` prints
//! the same counts and the whole shard thread's). The count does not depend on timing, so
//! this is a behaviour test: a change that adds an allocation per request fails it.
//!
//! The budgets are the counts as they stand; issue 12's target is 2 per produce. What is left
//! per produce: the request's message list and its answer's body, the flush waiter's oneshot
//! channel and its timeout (a boxed future and a glommio timer), the sync task the flusher
//! spawns, and glommio's own per-I/O sources of the write and the fdatasync (see the "Hot
//! path" section of docs/architecture.md).

#[path = "../benches/support/counting_alloc.rs"]
mod counting_alloc;

use ringmq::testing::hot_path;

#[global_allocator]
static ALLOCATOR: counting_alloc::Counting = counting_alloc::Counting;

/// Allocations per request; a fraction over the whole number allows for a flush that now and
/// then covers a warm-up request too.
const PRODUCE_BUDGET: f64 = 8.5;
const PULL_BUDGET: f64 = 4.5;
const PARKED_PULL_BUDGET: f64 = 10.5;

#[test]
fn steady_state_requests_stay_within_their_allocation_budget() {
    let dir = tempfile::Builder::new()
        .prefix("ringmq-hot-path-")
        .tempdir_in(std::env::temp_dir())
        .expect("a scratch directory");
    let counts = hot_path::measure_in_process(
        dir.path(),
        1024,
        50,
        400,
        counting_alloc::set_counting,
        counting_alloc::allocations,
    );
    eprintln!("{counts:?}");
    assert!(
        counts.produce.allocations <= PRODUCE_BUDGET,
        "a produce allocates {:.2} times, over its budget of {PRODUCE_BUDGET}",
        counts.produce.allocations
    );
    assert!(
        counts.pull.allocations <= PULL_BUDGET,
        "a pull allocates {:.2} times, over its budget of {PULL_BUDGET}",
        counts.pull.allocations
    );
    assert!(
        counts.parked_pull.allocations <= PARKED_PULL_BUDGET,
        "parking and waking a long poll allocates {:.2} times, over its budget of {PARKED_PULL_BUDGET}",
        counts.parked_pull.allocations
    );
    // The counter counts at all: a broken switch would pass every budget with zero.
    assert!(counts.produce.allocations >= 1.0, "{counts:?}");
}
