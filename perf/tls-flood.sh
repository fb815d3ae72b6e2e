#!/usr/bin/env bash
# An established TLS producer's latency with and without a handshake flood (issue 13, item 10):
# runs tests/tls_flood.rs's `an_established_producer_never_times_out_under_a_crawling_handshake_flood`
# (one broker, one shard; ten flood threads that stall on half a ClientHello, crawl through a
# real one 16 bytes every 20 ms, or churn full handshakes) ROUNDS times (default 3) and prints
# each round's p50/p99 without and under the flood. REQUESTS (default 1000) produces per phase.
# PROFILE=release builds optimised (default: debug, the build the tests use; say which when
# quoting the figures). Output: the lines on stdout and tls-flood.txt in OUT (default
# results/tls-flood).
set -euo pipefail
rounds="${ROUNDS:-3}"
requests="${REQUESTS:-1000}"
profile="${PROFILE:-debug}"
out="${1:-results/tls-flood}"
mkdir -p "$out"
release=()
[ "$profile" = release ] && release=(--release)
: >"$out/tls-flood.txt"
for round in $(seq 1 "$rounds"); do
  RINGMQ_FLOOD_REQUESTS="$requests" cargo test "${release[@]}" --test tls_flood \
    an_established_producer_never_times_out_under_a_crawling_handshake_flood -- --nocapture 2>&1 |
    grep '^tls handshake flood:' | sed "s/^/round $round ($profile): /" | tee -a "$out/tls-flood.txt"
done
