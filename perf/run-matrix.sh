#!/usr/bin/env bash
# The standard matrix: 1 KiB messages, one message per request per producer (closed loop,
# --window 1), producers 1/16/64, SYNC_FLUSH and ASYNC_FLUSH, each run against a fresh embedded
# broker. Results (tables on stdout, .hgrm, .hlog, plots, results.json, machine.json) land in
# results/<UTC timestamp>/. Extra arguments are passed to `ringmq bench` (e.g. --duration 30).
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet
out="results/$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$out"
"$target_dir/release/ringmq" bench \
  --modes SYNC_FLUSH,ASYNC_FLUSH \
  --producers-list 1,16,64 \
  --size 1024 --batch 1 --window 1 \
  --duration 10 --warmup 2 \
  --out "$out" "$@" | tee "$out/stdout.txt"
