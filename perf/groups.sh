#!/usr/bin/env bash
# Consumer-group benchmarks against a release broker started here (two shards, SYNC_FLUSH, a
# store under a temporary directory): the throughput of 3 group members against 3 readers
# pulling the same 8 queues directly, and the time a dead member's queues take to move
# (examples/group_throughput.rs). MESSAGES (default 400000) of 100 bytes, ROUNDS (default 3).
#
#   perf/groups.sh
set -euo pipefail
cd "$(dirname "$0")/.."
messages="${MESSAGES:-400000}"
rounds="${ROUNDS:-3}"
cargo build --release --bin ringmq --example group_throughput
store=$(mktemp -d /tmp/ringmq-groups-bench.XXXXXX)
trap 'kill "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true; rm -rf "$store"' EXIT
target/release/ringmq serve --store "$store/data" --listen 127.0.0.1:0 --ha-listen 127.0.0.1:0 --shards 2 \
  >"$store/ready" 2>"$store/broker.log" &
broker=$!
for _ in $(seq 100); do
  grep -q '^ringmq ready' "$store/ready" 2>/dev/null && break
  sleep 0.1
done
addr=$(sed -n 's/^ringmq ready listen=\([^ ]*\).*/\1/p' "$store/ready")
[ -n "$addr" ] || { echo "the broker did not start: $(tail -5 "$store/broker.log")" >&2; exit 1; }
target/release/examples/group_throughput "$addr" "$messages" "$rounds"
