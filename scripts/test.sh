#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property, simulated-disk and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
