#!/usr/bin/env bash
# Every target of issue 12 in one session, as ratios, for one binary or a before/after pair:
#
#   perf/issue12.sh BINARY                 # one column
#   perf/issue12.sh BEFORE AFTER           # before/after columns, runs interleaved per round
#
# Per round and binary (ROUNDS rounds, default 3; each bench run DURATION s measured after
# WARMUP s, defaults 10 and 2; closed loop, 1 KiB, one message per request, no consumers (the
# targets are produce figures, and Redis's XADD runs have no readers either), the bench's default
# driver unless BENCH_ARGS says otherwise):
#   1. SYNC_FLUSH and ASYNC_FLUSH at 1 and PRODUCERS (default 64) producers;
#   2. SYNC_MASTER and ASYNC_MASTER at PRODUCERS producers;
#   3. batched durable writes: SYNC_FLUSH, BATCH (default 128) messages per request, 8 producers,
#      window 2: MiB/s;
#   4. a fresh slave's catch-up: a master filled with CATCHUP_MIB (default 1024) MiB, then a new
#      slave started and timed on the master's clock from its connection until every shard's lag
#      is 0 (see wait_caught_up), with the master's log in the page cache ("warm") and, where
#      /proc/sys/vm/drop_caches is writable, after dropping it ("cold");
# and once per round, perf/redis.sh at 64 clients (appendfsync always and everysec). Once per
# session perf/limits.sh (4 KiB O_DIRECT write + fdatasync p99, sequential O_DIRECT write
# bandwidth), unless LIMITS_JSON names an existing limits.json. Every bench run reports broker CPU
# µs per acknowledged message; the table shows the medians over rounds.
#
# Environment: ROUNDS, DURATION, WARMUP, PRODUCERS, BATCH, CATCHUP_MIB, CATCHUP_TIMEOUT,
# LIMITS_JSON, BENCH_ARGS (extra `ringmq bench` arguments, e.g. "--driver threads"),
# BROKER_CONFIG (a TOML file given to every broker, embedded or started here), TMPDIR (where
# stores go). Output: results/issue12-<UTC> with every run's results folder and summary.md, the
# table also on stdout.
#
# A run that fails is reported on stderr (with the file that holds its output) and its cells read
# n/a; the session goes on, so one failure does not cost the other figures. Hence no `set -e`.
set -uo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: perf/issue12.sh BINARY [AFTER_BINARY]" >&2
  exit 2
fi
bins=("$@")
sides=(before after)
[ $# -eq 1 ] && sides=(this)
rounds="${ROUNDS:-3}"
duration="${DURATION:-10}"
warmup="${WARMUP:-2}"
producers="${PRODUCERS:-64}"
batch="${BATCH:-128}"
catchup_mib="${CATCHUP_MIB:-1024}"
dir="${TMPDIR:-/tmp}"
read -r -a extra <<<"${BENCH_ARGS:-}"
config_args=()
[ -n "${BROKER_CONFIG:-}" ] && config_args=(--config "$BROKER_CONFIG")
bench_config=()
[ -n "${BROKER_CONFIG:-}" ] && bench_config=(--broker-config "$BROKER_CONFIG")
here="$(cd "$(dirname "$0")" && pwd)"
out="results/issue12-$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$out"

if [ -n "${LIMITS_JSON:-}" ]; then
  cp "$LIMITS_JSON" "$out/limits.json" || echo "cannot read LIMITS_JSON $LIMITS_JSON" >&2
elif "$here/limits.sh" "$dir" "$out/limits" >&2; then
  cp "$out/limits/limits.json" "$out/limits.json"
else
  echo "perf/limits.sh failed: the disk-relative targets read n/a" >&2
fi

started_pids=()
stop_started() {
  for p in "${started_pids[@]}"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  started_pids=()
}
# Stops one broker this script started and forgets its pid: once reaped, the number may be
# reused by an unrelated process, which stop_started must not signal.
stop_pid() {
  local pid=$1 kept=() p
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${started_pids[@]}"; do
    [ "$p" = "$pid" ] || kept+=("$p")
  done
  started_pids=("${kept[@]}")
}
scratch="$(mktemp -d "$dir/ringmq-issue12-XXXXXX")"
trap 'stop_started; rm -rf "$scratch"' EXIT
trap 'exit 130' INT TERM # runs the EXIT trap: brokers stopped, stores removed

# Starts `BIN serve ARGS...` with its stdout in FILE and waits for the ready line (an event the
# broker prints; the file is polled for it). Sets $started to the pid.
serve() {
  local bin=$1 file=$2
  shift 2
  "$bin" serve "${config_args[@]}" --listen 127.0.0.1:0 --ha-listen 127.0.0.1:0 "$@" \
    >"$file" 2>"$file.err" &
  started=$!
  started_pids+=("$started")
  for _ in $(seq 1 1200); do
    grep -q '^ringmq ready' "$file" && return 0
    kill -0 "$started" 2>/dev/null || break
    sleep 0.1
  done
  echo "broker did not become ready; log:" >&2
  tail -20 "$file.err" >&2
  stop_pid "$started"
  return 1
}
field() { grep -o "$2=[^ ]*" "$1" | head -1 | cut -d= -f2; }

# Seconds of catch-up of the slave with pid $3 to the master at $2, on the master's clock: from
# the slave's connection to each shard (the slave's start-up, which zero-fills its segments, is
# not catch-up) until that shard's lag reached 0, the slowest shard counting. `cluster status`
# has no event to wait on, so it is polled; the moment a shard caught up lies between the last
# poll that saw it lag and the first that did not, and is placed by extrapolating the shard's
# average rate since its connection from the last lagging poll (never past the first caught-up
# poll). Fails (exit 1, reason on stderr) when the slave exits or CATCHUP_TIMEOUT (default 600)
# seconds pass.
wait_caught_up() {
  python3 - "$1" "$2" "$3" "${CATCHUP_TIMEOUT:-600}" <<'PY'
import json, subprocess, sys, time
bin, addr, slave, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
deadline = time.monotonic() + timeout

def alive():
    try:
        state = open(f"/proc/{slave}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"

lagging = {}  # shard -> (connected_ms, acked_offset, lag_bytes) at the last poll it lagged
while True:
    if not alive():
        sys.exit("the slave exited before it caught up")
    if time.monotonic() > deadline:
        sys.exit(f"the slave did not catch up within {timeout:.0f} s")
    status = subprocess.run([bin, "cluster", "status", "--broker", addr, "--format", "json"],
                            capture_output=True, text=True)
    if status.returncode == 0:
        shards = json.loads(status.stdout)["shards"]
        caught_up_ms = []
        for shard in shards:
            if not shard["slaves"]:
                break
            row = shard["slaves"][0]
            if row["lag_bytes"] > 0:
                lagging[shard["shard"]] = (row["connected_ms"], row["acked_offset"], row["lag_bytes"])
                break
            seen = lagging.get(shard["shard"])
            if seen is None:
                # Caught up at the first look: at most this long.
                caught_up_ms.append(row["connected_ms"])
                continue
            connected_ms, acked, lag = seen
            rate = acked / connected_ms if connected_ms > 0 and acked > 0 else None
            estimate = connected_ms + lag / rate if rate else row["connected_ms"]
            caught_up_ms.append(min(estimate, row["connected_ms"]))
        else:
            print(f"{max(caught_up_ms, default=0) / 1000:.3f}")
            sys.exit(0)
    time.sleep(0.05)  # the poll interval; the estimate above does not depend on it
PY
}

# The catch-up measurement of one binary into directory $2 (catchup.json); returns 1 when the
# master cannot be started or filled (the caller reports it; catchup.json is then missing).
catchup() {
  local bin=$1 dest=$2
  mkdir -p "$dest"
  serve "$bin" "$dest/master.out" --store "$scratch/master" --flush ASYNC_FLUSH || return 1
  local master=$started addr ha
  addr="$(field "$dest/master.out" listen)"
  ha="$(field "$dest/master.out" ha)"
  if ! "$bin" bench --broker "$addr" --count $((catchup_mib * 1024)) --size 1024 --batch "$batch" \
    --producers 4 --window 2 --warmup 0 --consumers 0 --out "$dest/fill" >"$dest/fill.txt" 2>&1; then
    echo "filling the master failed, see $dest/fill.txt" >&2
    return 1
  fi
  local bytes
  bytes="$("$bin" cluster status --broker "$addr" --format json | python3 -c '
import json, sys
print(sum(s["max_offset"] for s in json.load(sys.stdin)["shards"]))')" || return 1
  local rows=()
  for cache in warm cold; do
    if [ "$cache" = cold ]; then
      sync
      if ! (echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then
        echo "drop_caches is not writable here: no cold catch-up" >&2
        continue
      fi
    fi
    if ! serve "$bin" "$dest/slave-$cache.out" --store "$scratch/slave-$cache" --role SLAVE --master "$ha"; then
      echo "the $cache slave did not start, see $dest/slave-$cache.out.err" >&2
      continue
    fi
    local slave=$started seconds
    if ! seconds="$(wait_caught_up "$bin" "$addr" "$slave")"; then
      echo "$cache catch-up failed (see $dest/slave-$cache.out.err)" >&2
      stop_pid "$slave"
      rm -rf "$scratch/slave-$cache"
      continue
    fi
    stop_pid "$slave"
    rm -rf "$scratch/slave-$cache"
    rows+=("\"$cache\": {\"bytes\": $bytes, \"seconds\": $seconds}")
  done
  stop_pid "$master"
  rm -rf "$scratch/master"
  (IFS=,; echo "{${rows[*]}}") >"$dest/catchup.json"
}

for round in $(seq 1 "$rounds"); do
  for i in "${!bins[@]}"; do
    bin="${bins[$i]}" side="${sides[$i]}" d="$out/$side-$round"
    common=(--size 1024 --window 1 --consumers 0 --duration "$duration" --warmup "$warmup"
      "${bench_config[@]}" "${extra[@]}")
    "$bin" bench --modes SYNC_FLUSH,ASYNC_FLUSH --producers-list "1,$producers" --batch 1 \
      "${common[@]}" --out "$d/flush" >"$d-flush.txt" 2>&1 ||
      echo "round $round $side: flush runs failed, see $d-flush.txt" >&2
    "$bin" bench --modes SYNC_MASTER,ASYNC_MASTER --producers "$producers" --batch 1 \
      "${common[@]}" --out "$d/replicated" >"$d-replicated.txt" 2>&1 ||
      echo "round $round $side: replicated runs failed, see $d-replicated.txt" >&2
    "$bin" bench --modes SYNC_FLUSH --producers 8 --batch "$batch" --size 1024 --window 2 \
      --consumers 0 --duration "$duration" --warmup "$warmup" "${bench_config[@]}" "${extra[@]}" \
      --out "$d/batched" >"$d-batched.txt" 2>&1 ||
      echo "round $round $side: batched run failed, see $d-batched.txt" >&2
    catchup "$bin" "$d/catchup" ||
      echo "round $round $side: catch-up failed, see $d/catchup" >&2
    stop_started # whatever a failed catch-up left running
    echo "round $round $side done" >&2
  done
  DURATION="$duration" CLIENTS=64 OUT="$out/redis-$round" "$here/redis.sh" >"$out/redis-$round.txt" 2>&1 ||
    echo "round $round: perf/redis.sh failed, see $out/redis-$round.txt" >&2
  echo "round $round redis done" >&2
done

python3 - "$out" "$rounds" "$producers" "${sides[@]}" <<'PY' | tee "$out/summary.md"
import json, os, statistics, sys
out, rounds, producers, sides = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]

def load(path):
    # A run that failed leaves no file (or a partial one): its cells read n/a.
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None

def runs(side, r, what):
    data = load(f"{out}/{side}-{r}/{what}/results.json")
    return {(x["mode"], x["producers"]): x for x in (data["runs"] if data else [])}

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

limits = load(f"{out}/limits.json") or {}
def limit(key, part):
    return (limits.get(key) or {}).get(part)
write_p99, sync_p99 = limit("o_direct_4k_write_us", "p99"), limit("fdatasync_after_4k_write_us", "p99")
# The p99 of write + fdatasync timed as pairs; without the probe, the sum of fio's two p99s,
# which only bounds it from above (the target's denominator is then too generous).
disk_p99 = limit("o_direct_4k_write_plus_fdatasync_us", "p99")
disk_p99_label = "disk write+fdatasync p99"
if disk_p99 is None and write_p99 is not None and sync_p99 is not None:
    disk_p99, disk_p99_label = write_p99 + sync_p99, "(disk write p99 + fdatasync p99, an upper bound)"
seq_mib = limits.get("sequential_o_direct_write_mib_per_sec")
seq_read_mib = limits.get("sequential_o_direct_read_mib_per_sec")
# Cold catch-up reads the master's disk and writes the slave's: the slower of the two bounds it.
cold_floor = min(v for v in (seq_mib, seq_read_mib) if v is not None) if seq_mib or seq_read_mib else None
# Per round: Redis ran once per round, between the binaries' runs, so each round's ratio compares
# figures taken minutes apart; the median is over those per-round ratios.
redis_rounds = {}
for r in range(1, rounds + 1):
    for row in load(f"{out}/redis-{r}/redis.json") or []:
        if row["clients"] == 64:
            redis_rounds.setdefault(r, {})[row["appendfsync"]] = row["messages_per_sec"]
redis = {k: median([redis_rounds.get(r, {}).get(k) for r in range(1, rounds + 1)]) for k in ("always", "everysec")}
try:
    redis_version = open(f"{out}/redis-1/version.txt").read().strip()
except OSError:
    redis_version = "unknown"

def ratio(a, b):
    return a / b if a is not None and b else None

def per_round(side, f):
    return median([f(r) for r in range(1, rounds + 1)])

def rate(side, r, what, mode, p):
    run = runs(side, r, what).get((mode, p))
    return run["messages_per_sec"] if run else None

def lat(side, r, mode, p, key):
    run = runs(side, r, "flush").get((mode, p))
    return run["produce_latency"][key] if run else None

def catch(side, r, cache):
    c = (load(f"{out}/{side}-{r}/catchup/catchup.json") or {}).get(cache)
    return c["bytes"] / c["seconds"] / 2**20 if c and c["seconds"] > 0 else None

P = producers
targets = [
    ("SYNC_FLUSH / ASYNC_FLUSH msg/s at %d" % P, ">= 0.9",
     lambda s: per_round(s, lambda r: ratio(rate(s, r, "flush", "SYNC_FLUSH", P), rate(s, r, "flush", "ASYNC_FLUSH", P)))),
    ("SYNC_MASTER / ASYNC_MASTER msg/s at %d" % P, ">= 0.9",
     lambda s: per_round(s, lambda r: ratio(rate(s, r, "replicated", "SYNC_MASTER", P), rate(s, r, "replicated", "ASYNC_MASTER", P)))),
    ("SYNC_FLUSH at %d / Redis XADD always at 64" % P, ">= 2",
     lambda s: per_round(s, lambda r: ratio(rate(s, r, "flush", "SYNC_FLUSH", P), redis_rounds.get(r, {}).get("always")))),
    ("ASYNC_FLUSH at %d / Redis XADD everysec at 64" % P, ">= 1.5",
     lambda s: per_round(s, lambda r: ratio(rate(s, r, "flush", "ASYNC_FLUSH", P), redis_rounds.get(r, {}).get("everysec")))),
    ("SYNC_FLUSH p99 at 1 / " + disk_p99_label, "<= 2",
     lambda s: ratio(per_round(s, lambda r: lat(s, r, "SYNC_FLUSH", 1, "p99_us")), disk_p99)),
    ("SYNC_FLUSH p99.99 at 1 (ms)", "<= 5",
     lambda s: ratio(per_round(s, lambda r: lat(s, r, "SYNC_FLUSH", 1, "p99_99_us")), 1000)),
    ("batched SYNC_FLUSH MiB/s / O_DIRECT sequential write", ">= 0.7",
     lambda s: ratio(per_round(s, lambda r: (runs(s, r, "batched").get(("SYNC_FLUSH", 8)) or {}).get("mib_per_sec")), seq_mib)),
    ("fresh slave catch-up, cold / min(O_DIRECT sequential read, write)", ">= 0.8",
     lambda s: ratio(per_round(s, lambda r: catch(s, r, "cold")), cold_floor)),
    ("fresh slave catch-up, page cache (GiB/s)", ">= 1",
     lambda s: ratio(per_round(s, lambda r: catch(s, r, "warm")), 1024)),
]
def cell(v):
    return "n/a" if v is None else f"{v:.2f}"
print(f"Medians of {rounds} rounds; every figure is a ratio (or the unit named) from this session.\n")
print("| target | goal | " + " | ".join(sides) + " |")
print("|---|---|" + "---|" * len(sides))
for name, goal, f in targets:
    print(f"| {name} | {goal} | " + " | ".join(cell(f(s)) for s in sides) + " |")

print("\nBroker CPU per acknowledged message (µs, target <= 6), driver and broker CPU (% of a core):\n")
print("| run | " + " | ".join(f"{s} us/msg | {s} driver % | {s} broker %" for s in sides) + " |")
print("|---|" + "---|---|---|" * len(sides))
keys = []
for what in ("flush", "replicated", "batched"):
    for key in sorted(runs(sides[0], 1, what)):
        keys.append((what, key))
for what, key in keys:
    cells = []
    for s in sides:
        def pick(field):
            return per_round(s, lambda r: ((runs(s, r, what).get(key) or {}).get("cpu") or {}).get(field))
        cells += [cell(pick("broker_us_per_message")), cell(pick("driver_percent")), cell(pick("broker_percent"))]
    label = f"{key[0]} p{key[1]}" + (" batched" if what == "batched" else "")
    print(f"| {label} | " + " | ".join(cells) + " |")
print(f"\nDisk (perf/limits.sh): 4 KiB O_DIRECT write + fdatasync pairs p99 "
      f"{cell(limit('o_direct_4k_write_plus_fdatasync_us', 'p99'))} µs (fio: write p99 {cell(write_p99)} µs, "
      f"fdatasync p99 {cell(sync_p99)} µs); sequential O_DIRECT write {cell(seq_mib)} MiB/s, "
      f"read {cell(seq_read_mib)} MiB/s. {redis_version}; medians at 64 clients: "
      f"always {cell(redis.get('always'))}, everysec {cell(redis.get('everysec'))} msg/s.")
PY
echo "results in $out" >&2
