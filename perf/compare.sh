#!/usr/bin/env bash
# Before/after comparison of two ringmq binaries on the standard matrix, interleaved on one
# machine in one sitting: runs A, B, A, B... (ROUNDS rounds, default 3; DURATION seconds measured
# after WARMUP, defaults 10 and 2, as perf/run-matrix.sh) and prints, per mode and
# producer count, the median msg/s and produce p50/p99 of each binary and their ratio (B / A).
# The machine is noisy; the interleaving spreads drift over both sides.
#
#   perf/compare.sh BEFORE_BINARY AFTER_BINARY [extra `ringmq bench` arguments]
set -euo pipefail
before=$1 after=$2
shift 2
rounds="${ROUNDS:-3}"
duration="${DURATION:-10}"
warmup="${WARMUP:-2}"
out="results/compare-$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$out"
for round in $(seq 1 "$rounds"); do
  for side in before after; do
    bin=$before
    [ "$side" = after ] && bin=$after
    "$bin" bench --modes SYNC_FLUSH,ASYNC_FLUSH --producers-list 1,16,64 --size 1024 --batch 1 \
      --window 1 --duration "$duration" --warmup "$warmup" --out "$out/$side-$round" "$@" >"$out/$side-$round.txt" 2>&1
    echo "round $round $side done" >&2
  done
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rows = {}
for side in ("before", "after"):
    for r in range(1, rounds + 1):
        for run in json.load(open(f"{out}/{side}-{r}/results.json"))["runs"]:
            key = (run["mode"], run["producers"])
            rows.setdefault(key, {}).setdefault(side, []).append(
                (run["messages_per_sec"], run["produce_latency"]["p50_us"], run["produce_latency"]["p99_us"]))
print(f"medians of {rounds} interleaved runs each; ratio = after / before")
print(f"{'mode':12} {'prod':>4} | {'msg/s before':>12} {'after':>8} {'ratio':>6} | {'p50 before':>10} {'after':>6} | {'p99 before':>10} {'after':>6} {'ratio':>6}")
for key in sorted(rows):
    b, a = rows[key]["before"], rows[key]["after"]
    med = lambda xs, i: statistics.median(x[i] for x in xs)
    print(f"{key[0]:12} {key[1]:>4} | {med(b,0):>12.0f} {med(a,0):>8.0f} {med(a,0)/med(b,0):>6.2f} | "
          f"{med(b,1):>10.0f} {med(a,1):>6.0f} | {med(b,2):>10.0f} {med(a,2):>6.0f} {med(a,2)/med(b,2):>6.2f}")
PY
