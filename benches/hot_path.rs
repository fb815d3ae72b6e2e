//! Heap allocations per request on the broker's hot path, in steady state: one real shard
//! (glommio disk, SYNC_FLUSH) serving one loopback connection through the broker's connection
//! code, a closed-loop client on another thread (see `ringmq::testing::hot_path`). Only the
//! shard thread's allocations are counted. Run with `cargo bench --bench hot_path`; the store
//! goes to a scratch directory under `TMPDIR` (it needs O_DIRECT: not tmpfs).
//!
//! `tests/hot_path.rs` asserts the same counts stay within their budgets.

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use ringmq::testing::hot_path;

#[global_allocator]
static ALLOCATOR: counting_alloc::Counting = counting_alloc::Counting;

const BODY_BYTES: usize = 1024;
const WARMUP: usize = 200;
const REQUESTS: usize = 2000;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run a short
    // pass then, so the target stays checked without taking long.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (warmup, requests) = if quick { (20, 100) } else { (WARMUP, REQUESTS) };
    let dir = tempfile::tempdir().expect("a scratch directory");
    let run = |name: &str, scope| {
        hot_path::measure(
            &dir.path().join(name),
            scope,
            BODY_BYTES,
            warmup,
            requests,
            counting_alloc::set_counting,
            counting_alloc::allocations,
        )
    };
    let counts = run("shard-thread", hot_path::Scope::ShardThread);
    let exact = run("ringmq-code", hot_path::Scope::RingmqCode);
    println!("while the connection's tasks and the flusher run (real socket and disk):");
    println!(
        "  produce (SYNC_FLUSH, one message): {:>6.2} allocations/request",
        exact.produce.allocations
    );
    println!(
        "  pull (one stored message):         {:>6.2} allocations/request",
        exact.pull.allocations
    );
    println!(
        "  long-poll park and wake:           {:>6.2} allocations/request",
        exact.parked_pull.allocations
    );
    println!("hot path, {BODY_BYTES}-byte messages, {requests} requests per phase after {warmup} warm-up (shard thread only; glommio's run loop turns vary with timing):");
    println!(
        "  produce (SYNC_FLUSH, one message): {:>6.2} allocations/request",
        counts.produce.allocations
    );
    println!(
        "  pull (one stored message):         {:>6.2} allocations/request",
        counts.pull.allocations
    );
    // The park-and-wake difference is left out here: it subtracts two counts that each vary
    // with the run loop's turns.
}
