#!/usr/bin/env bash
# Coverage-guided fuzzing of every decoder with libFuzzer, on stable Rust (docs/fuzzing.md).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Builds fuzz/ with the sanitizer-coverage flags `cargo fuzz` passes when no sanitizer is
# chosen, runs each target for at most SECONDS_PER_TARGET (default 30; 0 builds only) from the seeds in
# fuzz/seeds/<target> plus a scratch corpus under target/fuzz-corpus, and fails if any target
# finds a crash. A crash input is copied to fuzz/regressions/<target>/ so it can be committed;
# `cargo test --test fuzz_regressions` replays it from then on.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

seconds=${1:-30}
shift || true
case "$seconds" in
  ''|*[!0-9]*) echo "fuzz: SECONDS_PER_TARGET must be a whole number, got '$seconds'" >&2; exit 2 ;;
esac
triple=x86_64-unknown-linux-gnu
target_dir="$root/target/fuzz"
corpus_root="$root/target/fuzz-corpus"
artifact_root="$root/target/fuzz-artifacts"

# libfuzzer-sys compiles libFuzzer's C++ sources with the cc crate.
if ! command -v c++ >/dev/null 2>&1; then
    echo "fuzz: no C++ compiler, installing g++"
    apt-get update -qq && apt-get install -y -qq g++ >/dev/null
fi

# What cargo-fuzz (src/project.rs) passes with no sanitizer, for a release build on Linux,
# except one codegen unit per crate: libFuzzer collects the counters of every module alike, and
# on two cores the default units build the broker crate about twice as fast. `--target` keeps
# these flags off build scripts and proc macros.
rustflags=(
    -Cpasses=sancov-module
    -Cllvm-args=-sanitizer-coverage-level=4
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
    -Cllvm-args=-sanitizer-coverage-pc-table
    -Cllvm-args=-sanitizer-coverage-trace-compares
    -Cllvm-args=-simplifycfg-branch-fold-threshold=0
    -Cllvm-args=-sanitizer-coverage-stack-depth
    --cfg fuzzing
    -Clink-dead-code
    -Cdebug-assertions
    -Coverflow-checks
)

mapfile -t all_targets < <(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' fuzz/Cargo.toml)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=("${all_targets[@]}")
fi

echo "fuzz: building the fuzz targets for $triple"
RUSTFLAGS="${rustflags[*]}" cargo build --manifest-path fuzz/Cargo.toml --locked \
    --release --config profile.release.debug=1 --target "$triple" \
    --target-dir "$target_dir" --bins

if [ "$seconds" -eq 0 ]; then
    # libFuzzer reads -max_total_time=0 as "no limit": 0 here means build only.
    echo "fuzz: 0 s per target: built the targets, running none"
    exit 0
fi

failed=()
for t in "${targets[@]}"; do
    corpus="$corpus_root/$t"
    artifacts="$artifact_root/$t/"
    rm -rf "$artifacts"
    mkdir -p "$corpus" "$artifacts" "fuzz/seeds/$t"
    log="$artifact_root/$t.log"
    echo "fuzz: $t for ${seconds}s"
    set +e
    "$target_dir/$triple/release/$t" "$corpus" "fuzz/seeds/$t" \
        -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="$artifacts" \
        -timeout=10 -rss_limit_mb=2048 -max_len=65536 >"$log" 2>&1
    rc=$?
    set -e
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
    echo "fuzz: $t: exit $rc, ${runs:-?} executions, ${speed:-?} exec/s, ${cov:-no coverage line}"
    shopt -s nullglob
    crashes=("$artifacts"crash-* "$artifacts"timeout-* "$artifacts"oom-* "$artifacts"leak-*)
    shopt -u nullglob
    if [ $rc -ne 0 ] || [ ${#crashes[@]} -ne 0 ]; then
        mkdir -p "fuzz/regressions/$t"
        for c in "${crashes[@]}"; do
            kept=$(for k in "fuzz/regressions/$t"/*; do cmp -s "$c" "$k" && echo "$k"; done; true)
            if [ -n "$kept" ]; then
                echo "fuzz: $t: $(basename "$c") is already kept as $kept"
            else
                cp "$c" "fuzz/regressions/$t/" && echo "fuzz: $t: kept $(basename "$c")"
            fi
        done
        tail -40 "$log"
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -ne 0 ]; then
    echo "fuzz: crashes in: ${failed[*]} (inputs under fuzz/regressions/, commit them)"
    exit 1
fi
echo "fuzz: ${#targets[@]} targets, no crash"
