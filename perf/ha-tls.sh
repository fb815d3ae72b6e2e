#!/usr/bin/env bash
# Catch-up throughput of a fresh slave over the TLS replication link (`ha_security = "tls"`,
# the copy path through rustls) against splice (`ha_security = "auth"`) on the same log, in one
# run: tests/ha_tls.rs's ignored `catch_up_throughput_over_tls_and_over_splice` (one shard,
# MB MiB of 64 KiB records written and flushed first; default 256). The figure includes
# each slave's start-up, the same for both. PROFILE=release builds optimised (default:
# debug; say which when quoting the figures). Output: the line on stdout and ha-tls.txt in OUT
# (default results/ha-tls).
set -euo pipefail
mb="${MB:-256}"
profile="${PROFILE:-debug}"
out="${1:-results/ha-tls}"
mkdir -p "$out"
release=()
[ "$profile" = release ] && release=(--release)
RINGMQ_HA_TLS_MB="$mb" cargo test "${release[@]}" --test ha_tls \
  catch_up_throughput_over_tls_and_over_splice -- --ignored --nocapture 2>&1 |
  grep '^ha catch-up' | sed "s/^/($profile) /" | tee "$out/ha-tls.txt"
