#!/usr/bin/env bash
# The broker's resident memory as messages accumulate, and the cost of reading old data.
#
# Starts one broker (ASYNC_FLUSH, so the disk is not the limit; default segment size and
# consume-queue settings unless CONFIG says otherwise), produces N small messages with
# `ringmq bench --count`, and samples VmRSS / VmHWM from /proc/<pid>/status every INTERVAL
# seconds with the store's size and the messages stored (the queues' max offsets).
# Then times a consume of READ messages of one queue from its start (entries from the
# consume-queue files) and from near its end (entries from the cached tail).
#
#   BIN=target/release/ringmq N=10000000 perf/rss.sh
#
# Variables: BIN, N (messages, default 10^7), SIZE (body bytes, default 16), QUEUES (default 8),
# SHARDS (default 1), INTERVAL (seconds between samples, default 5), READ (messages read back,
# default 8000: within the cached tail of 8192 entries for the read near the end), STORE (store root; default a fresh temp dir, removed at the end), CONFIG
# (extra TOML lines for the broker).
set -euo pipefail

BIN=${BIN:-target/release/ringmq}
N=${N:-10000000}
SIZE=${SIZE:-16}
QUEUES=${QUEUES:-8}
SHARDS=${SHARDS:-1}
INTERVAL=${INTERVAL:-5}
READ=${READ:-8000}
CONFIG=${CONFIG:-}
PORT=${PORT:-19911}
ADDR=127.0.0.1:$PORT

own_store=0
if [[ -z "${STORE:-}" ]]; then
  STORE=$(mktemp -d /tmp/ringmq-rss.XXXXXX)
  own_store=1
fi
mkdir -p "$STORE"
# Ports of their own, so the script runs beside another broker.
printf 'shard_port_base = %s\n%s\n' "$((PORT + 100))" "$CONFIG" > "$STORE/broker.toml"

"$BIN" serve --config "$STORE/broker.toml" --store "$STORE/data" --listen "$ADDR" \
  --ha-listen "127.0.0.1:$((PORT + 1))" \
  --shards "$SHARDS" --flush ASYNC_FLUSH > "$STORE/broker.out" 2> "$STORE/broker.log" &
broker=$!
cleanup() {
  kill "$broker" 2>/dev/null || true
  wait "$broker" 2>/dev/null || true
  if [[ $own_store == 1 ]]; then rm -rf "$STORE"; fi
}
trap cleanup EXIT
for _ in $(seq 100); do
  grep -q "ringmq ready" "$STORE/broker.out" 2>/dev/null && break
  sleep 0.1
done
grep -q "ringmq ready" "$STORE/broker.out" || { cat "$STORE/broker.log"; exit 1; }

status_kib() { awk -v key="$1:" '$1 == key { print $2 }' "/proc/$broker/status"; }
log_bytes() { du -sb "$STORE"/data/shard-*/commitlog 2>/dev/null | awk '{ s += $1 } END { print s + 0 }'; }
cq_bytes() { du -sb "$STORE"/data/shard-*/consumequeue 2>/dev/null | awk '{ s += $1 } END { print s + 0 }'; }

echo "# messages=$N body=$SIZE queues=$QUEUES shards=$SHARDS store=$STORE"
echo "# elapsed_s  commitlog_bytes  consumequeue_bytes  messages  VmRSS_KiB  VmHWM_KiB"
"$BIN" bench --broker "$ADDR" --count "$N" --size "$SIZE" --batch 128 --window 4 \
  --producers 2 --consumers 0 --queues "$QUEUES" --warmup 0 --out "$STORE/bench" \
  > "$STORE/bench.out" 2>&1 &
bench=$!
start=$(date +%s.%N)
sample() {
  local now
  now=$(date +%s.%N)
  printf '%10.1f  %15s  %18s  %12s  %9s  %9s\n' "$(echo "$now - $start" | bc)" "$(log_bytes)" \
    "$(cq_bytes)" "$(total_messages)" "$(status_kib VmRSS)" "$(status_kib VmHWM)"
}
# Messages stored: the sum of every queue's max offset (topic describe, JSON).
total_messages() {
  local topic
  topic=$("$BIN" topic list --broker "$ADDR" --format json 2>/dev/null \
    | grep -o '"name":"[^"]*"' | head -1 | cut -d'"' -f4)
  [[ -z "$topic" ]] && { echo 0; return; }
  "$BIN" topic describe "$topic" --broker "$ADDR" --format json 2>/dev/null \
    | grep -o '"max_offset":[0-9]*' | cut -d: -f2 | awk '{ s += $1 } END { print s + 0 }'
}
while kill -0 "$bench" 2>/dev/null; do
  sample
  sleep "$INTERVAL"
done
wait "$bench" || { cat "$STORE/bench.out"; exit 1; }
sample
grep -m1 "records sent" "$STORE/bench.out" || true

topic=$("$BIN" topic list --broker "$ADDR" --format json | grep -o '"name":"[^"]*"' | head -1 | cut -d'"' -f4)
max=$("$BIN" topic describe "$topic" --broker "$ADDR" --format json \
  | grep -o '"max_offset":[0-9]*' | head -1 | cut -d: -f2)
read_from() {
  local from=$1 t0 t1
  t0=$(date +%s.%N)
  "$BIN" consume "$topic" --broker "$ADDR" --queue 0 --from "$from" --count "$READ" > /dev/null
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc
}
old=$(read_from 0)
tail_from=$(( max > READ ? max - READ : 0 ))
new=$(read_from "$tail_from")
echo "# read $READ messages of queue 0 (of $max): from offset 0 (consume-queue files) ${old}s, from $tail_from (near the tail) ${new}s"
echo "# after the reads: VmRSS $(status_kib VmRSS) KiB"
