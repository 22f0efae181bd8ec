#!/usr/bin/env bash
# Every check CI runs, from a fresh clone: formatting, lints, and every test
# (unit, fuzz-corpus replay, in-process and end-to-end with real server and
# agent processes on loopback, doc examples, and each benchmark run once).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked
