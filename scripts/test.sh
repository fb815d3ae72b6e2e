#!/usr/bin/env bash
# The whole test suite, in stages, each timed: formatting and lints, build, unit, simulated-
# disk and whole-shard simulation tests, end-to-end tests, crash and limit tests against the
# real binary, multi-host scenarios in network namespaces, real Kafka clients against the
# Kafka listener, and a bounded coverage-guided fuzzing run of every decoder. `.ci/run` runs
# exactly this.
#
# Every file in tests/ runs in exactly one stage: the unit, crash-and-limits, namespace and
# Kafka-clients stages name their files, and every other test file runs in the end-to-end stage. The
# Kafka-clients stage installs its clients first (scripts/kafka-clients.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${RINGMQ_FUZZ_SECONDS:-30}"
# Seeds per shard simulation test, in the debug build the build stage made (docs/simulation.md;
# thousands of seeds are a soak: `RINGMQ_SIM_SEEDS=5000 cargo test --release --test shard_sim`).
SIM_SEEDS="${RINGMQ_SIM_SEEDS:-200}"
# Seeds of the controller simulation (three or five raft-rs controllers and a broker group):
# 2,000 take about 3 minutes in the debug build here, most of it the fsyncs of the disk seeds.
CONTROLLER_SIM_SEEDS="${RINGMQ_CONTROLLER_SIM_SEEDS:-2000}"
suite_start=$(date +%s)

stage() {
  local name=$1
  shift
  local start
  start=$(date +%s)
  echo "==> stage: $name"
  "$@"
  echo "==> stage: $name took $(($(date +%s) - start)) s"
}

# Tests driving the broker with real Kafka clients, which this script installs first.
kafka_clients=(kafka kafka_security)
# Multi-host scenarios in network namespaces (needs root; RINGMQ_REQUIRE_NETNS=1 makes a
# machine without them fail the stage rather than skip it).
netns_scenarios=(netns netns_controller)
crash_and_limits=(crash replication disk_full fail_stop limits ports retention_process groups retry broker_registration cluster ha_security acks tls controller controller_auth secrets_canary ha_tls tls_flood acl controller_mode scram)
end_to_end=()
for file in tests/*.rs; do
  name=$(basename "$file" .rs)
  case " ${crash_and_limits[*]} ${kafka_clients[*]} ${netns_scenarios[*]} store_sim store_glommio fuzz_regressions shard_sim " in
    *" $name "*) ;;
    *) end_to_end+=("$name") ;;
  esac
done
test_args() {
  local name
  for name in "$@"; do
    [ -f "tests/$name.rs" ] && printf -- '--test\n%s\n' "$name"
  done
  return 0
}

stage "format" cargo fmt --all -- --check
stage "clippy" cargo clippy --workspace --all-targets -- -D warnings
stage "build" cargo test --workspace --all-targets --no-run
mapfile -t unit < <(test_args store_sim store_glommio fuzz_regressions)
# A member crate's own tests/ files (the protocol's golden vectors, ...): --workspace --lib
# runs only their unit tests, and the root's --test flags name only the root's files.
member_tests() {
  local file crate
  for file in crates/*/tests/*.rs; do
    [ -f "$file" ] || continue
    crate=$(basename "$(dirname "$(dirname "$file")")")
    printf -- '-p\n%s\n--test\n%s\n' "$crate" "$(basename "$file" .rs)"
  done
}
unit_and_simulation() {
  RINGMQ_CONTROLLER_SIM_SEEDS="$CONTROLLER_SIM_SEEDS" \
    cargo test --workspace --lib --bins --benches --examples "${unit[@]}"
  local members
  mapfile -t members < <(member_tests)
  [ ${#members[@]} -eq 0 ] || cargo test "${members[@]}"
  # The whole shard on the simulated disk and clock. Not optimised: the release build alone
  # took about 10 minutes cold on 2 cores, longer than these seeds take unoptimised.
  RINGMQ_SIM_SEEDS="$SIM_SEEDS" cargo test --test shard_sim
}
stage "unit, property and simulation (${SIM_SEEDS} shard seeds per mode, ${CONTROLLER_SIM_SEEDS} controller seeds)" unit_and_simulation
mapfile -t e2e < <(test_args "${end_to_end[@]}")
stage "end to end" cargo test "${e2e[@]}"
mapfile -t crash < <(test_args "${crash_and_limits[@]}")
stage "crash and limits" cargo test "${crash[@]}"
mapfile -t netns < <(test_args "${netns_scenarios[@]}")
# One at a time: each controller scenario runs three controllers and three brokers against a
# 2 s silence limit, and two side by side on two cores would measure the machine, not them.
stage "network namespace scenarios" env RINGMQ_REQUIRE_NETNS=1 cargo test "${netns[@]}" -- --test-threads 1
# Kafka clients: kcat, kafka-python, confluent-kafka, KafkaJS and kafka-python's own
# integration suite, installed (pinned) by scripts/kafka-clients.sh when missing; the tests then
# fail rather than skip without them.
kafka_clients_stage() {
  local clients kafka
  clients=$(scripts/kafka-clients.sh | tail -n 1)
  mapfile -t kafka < <(test_args "${kafka_clients[@]}")
  RINGMQ_KAFKA_CLIENTS="$clients" RINGMQ_REQUIRE_KAFKA_CLIENTS=1 cargo test "${kafka[@]}"
}
stage "kafka clients" kafka_clients_stage
stage "fuzzing (${FUZZ_SECONDS} s per target)" scripts/fuzz.sh "$FUZZ_SECONDS"
echo "==> whole suite took $(($(date +%s) - suite_start)) s"
