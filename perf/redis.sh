#!/usr/bin/env bash
# The Redis Streams baseline of issue 12: `redis-benchmark -P 1` XADD with a 1 KiB field against
# a redis-server on 127.0.0.1 whose AOF lives in a temp dir on the same filesystem as the bench's
# embedded brokers, under `appendfsync always` and `appendfsync everysec`, at CLIENTS clients
# (default "1 16 64"). Prints msg/s and redis-server's CPU (percent of one core and µs per XADD,
# from /proc/<pid>/stat) per run, and writes OUT/redis.json (default results/redis) for
# perf/issue12.sh, with `redis-server --version` in OUT/version.txt.
#
#   perf/redis.sh                      # every mode × client count, DURATION (default 10) s each
#   DURATION=1 CLIENTS=64 perf/redis.sh
#
# redis-benchmark runs a request count, not a duration: each run sends DURATION × a rate guess,
# min(RATE_GUESS, per-client guess × clients) with RATE_GUESS 60000/s (about Redis's everysec
# rate at 64 clients on 2 cores) and per client 6000/s under `always` (one fsync per round trip
# at one client) or 20000/s under `everysec`, so runs last roughly DURATION seconds; the rate
# is what redis-benchmark reports. Installs redis-server and redis-tools
# with apt-get when missing. The stream is deleted between runs; automatic AOF rewrites are off
# so a background rewrite's fork does not land in one run and not another.
set -euo pipefail
duration="${DURATION:-10}"
rate_guess="${RATE_GUESS:-60000}"
clients_list="${CLIENTS:-1 16 64}"
modes="${FSYNC_MODES:-always everysec}"
out="${OUT:-results/redis}"
dir="${TMPDIR:-/tmp}"
mkdir -p "$out"

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  echo "installing redis-server and redis-tools (apt-get)" >&2
  apt-get update >/dev/null && apt-get install -y redis-server redis-tools >/dev/null
fi

# The version goes with the figures (OUT/version.txt): Redis releases differ in XADD's cost.
redis-server --version >"$out/version.txt"
work="$(mktemp -d "$dir/ringmq-redis-XXXXXX")"
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM # runs the EXIT trap: redis-server stopped, its dir removed

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
value="$(head -c 1024 /dev/zero | tr '\0' x)"
ticks="$(getconf CLK_TCK)"

cpu_ticks() { # utime + stime of a pid, fields counted after the command name's last ')'
  sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}

results="$out/redis.jsonl"
: >"$results"
for mode in $modes; do
  redis-server --bind 127.0.0.1 --port "$port" --dir "$work" --save '' \
    --appendonly yes --appendfsync "$mode" --auto-aof-rewrite-percentage 0 \
    --daemonize no --logfile "$work/redis-$mode.log" &
  pid=$!
  for _ in $(seq 1 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1 # redis-server has no ready line on stdout; ping is the readiness check
  done
  redis-cli -p "$port" ping >/dev/null
  for clients in $clients_list; do
    redis-cli -p "$port" del bench-stream >/dev/null
    per_client=20000
    [ "$mode" = always ] && per_client=6000
    guess=$(( per_client * clients ))
    [ "$guess" -gt "$rate_guess" ] && guess=$rate_guess
    requests="$(awk -v d="$duration" -v g="$guess" 'BEGIN { printf "%d", d * g }')" # DURATION may be fractional
    before="$(cpu_ticks "$pid")"
    started="$(date +%s.%N)"
    line="$(redis-benchmark -h 127.0.0.1 -p "$port" -c "$clients" -P 1 -n "$requests" --csv \
      XADD bench-stream '*' field "$value" | tail -1)"
    ended="$(date +%s.%N)"
    after="$(cpu_ticks "$pid")"
    # --csv: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",...
    rps="$(echo "$line" | cut -d, -f2 | tr -d '"')"
    python3 - "$results" "$mode" "$clients" "$rps" "$before" "$after" "$ticks" "$started" "$ended" "$requests" <<'PY'
import json, sys
results, mode, clients, rps, before, after, ticks, started, ended, requests = sys.argv[1:]
cpu_s = (int(after) - int(before)) / int(ticks)
wall = float(ended) - float(started)
row = {
    "appendfsync": mode, "clients": int(clients), "messages_per_sec": float(rps),
    "server_cpu_percent": 100 * cpu_s / wall if wall > 0 else None,
    "server_us_per_message": 1e6 * cpu_s / int(requests),
}
open(results, "a").write(json.dumps(row) + "\n")
print(f"redis appendfsync={mode:8} clients={int(clients):3} msg/s={row['messages_per_sec']:>10.0f} "
      f"server_cpu={row['server_cpu_percent']:.0f}% server_us_per_msg={row['server_us_per_message']:.1f}")
PY
  done
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=""
  rm -rf "${work:?}"/*
done
python3 -c 'import json,sys; rows=[json.loads(l) for l in open(sys.argv[1])]; json.dump(rows, open(sys.argv[2],"w"), indent=2)' "$results" "$out/redis.json"
rm -f "$results"
echo "results in $out/redis.json" >&2
