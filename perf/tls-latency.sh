#!/usr/bin/env bash
# What TLS costs on produce latency and throughput (issue 13): the same broker binary with and
# without `tls_cert_file`, one broker at a time on loopback at the default configuration,
# `ringmq bench --driver threads` (TLS needs the threads driver) at 1 and 16 producers, ROUNDS
# rounds (default 3) interleaved plain, TLS, plain, TLS... A CA and a server certificate for
# 127.0.0.1 are made with openssl in the work folder.
#
#   perf/tls-latency.sh BINARY [OUT]      # OUT default results/tls-latency-<UTC>
#
# Environment: ROUNDS, DURATION (s, default 8), WARMUP (s, default 2), PORT (default 23911).
# Output: every bench run's folder and text under OUT, and OUT/summary.txt with one table row
# per run (the bench's SYNC_FLUSH row: msg/s, latency percentiles, CPU).
set -euo pipefail
bin="$(realpath "$1")"
out="${2:-results/tls-latency-$(date -u +%Y%m%d-%H%M%S)}"
rounds="${ROUNDS:-3}"
duration="${DURATION:-8}"
warmup="${WARMUP:-2}"
port="${PORT:-23911}"
mkdir -p "$out"
out="$(realpath "$out")"
work="$(mktemp -d)"
broker=""
cleanup() {
  [ -n "$broker" ] && kill "$broker" 2>/dev/null && wait "$broker" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key \
  -out ca.pem -days 2 -subj "/CN=ringmq-bench-ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=keyCertSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key \
  -out server.csr -subj "/CN=ringmq-bench" 2>/dev/null
printf 'subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n' >server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
  -days 2 -extfile server.ext 2>/dev/null
printf 'tls_cert_file = "%s/server.pem"\ntls_key_file = "%s/server.key"\n' "$work" "$work" >tls.toml
: >plain.toml
: >"$out/summary.txt"
for round in $(seq 1 "$rounds"); do
  for kind in plain tls; do
    rm -rf "store-$kind"
    "$bin" serve --config "$kind.toml" --store "store-$kind" --listen "127.0.0.1:$port" \
      --ha-listen "127.0.0.1:$((port + 1))" >"broker-$kind.log" 2>&1 &
    broker=$!
    for _ in $(seq 1 200); do grep -q "ringmq ready" "broker-$kind.log" && break; sleep 0.05; done
    tls=()
    [ "$kind" = tls ] && tls=(--tls-ca "$work/ca.pem")
    for producers in 1 16; do
      name="r$round-$kind-p$producers"
      "$bin" bench --broker "127.0.0.1:$port" --broker-pid "$broker" "${tls[@]}" \
        --driver threads --producers "$producers" --consumers 0 --duration "$duration" \
        --warmup "$warmup" --out "$out/$name" >"$out/$name.txt" 2>&1
      echo "$name $(grep -E '^SYNC_FLUSH +[0-9]' "$out/$name.txt")" | tee -a "$out/summary.txt"
    done
    kill "$broker"
    wait "$broker" 2>/dev/null || true
    broker=""
  done
done
