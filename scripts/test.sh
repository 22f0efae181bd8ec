#!/usr/bin/env bash
# Every check CI runs, from a fresh clone: formatting, lints, and every test
# (unit, fuzz-corpus replay, in-process and end-to-end with real server and
# agent processes on loopback, doc examples, and each benchmark run once).
# Installs what the tests need and is missing (scripts/test-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

# Real programs the tests need next to ours (a CONNECT proxy), installed
# from Debian's packages if missing.
./scripts/test-deps.sh

# The compiler's incremental caches grow with every edit and are never
# pruned: on a long-lived checkout they filled a disk (58 GB), and then
# nothing runs. Past 20 GB they are dropped (the next build is slower,
# nothing else changes).
incremental=target/debug/incremental
if [ -d "$incremental" ] && [ "$(du -sk "$incremental" | cut -f1)" -gt $((20 * 1024 * 1024)) ]; then
    echo "test: $incremental is over 20 GB; removing it" >&2
    rm -rf "$incremental"
fi

# A real PostgreSQL and Redis on free ports for the tests that need them,
# stopped however this script ends.
# (Taken apart so a service that does not start stops the run here, with
# its log, instead of every test that needs it failing later.)
services=$(./scripts/test-services.sh start)
eval "$services"
trap './scripts/test-services.sh stop "${RTUNNEL_TEST_SERVICES_DIR:-}"' EXIT
# Tests needing them fail, rather than skip, when they are missing.
export RTUNNEL_TEST_SERVICES=required

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# What an embedder builds: the server library on SQLite alone (no Redis, no
# PostgreSQL driver, no command line).
cargo clippy -p rtunnel-server --lib --no-default-features --features sqlite --locked -- -D warnings
# The end-to-end tests run the real binaries and examples; `cargo test`
# alone builds only the test harness of each main.rs and hash-named
# examples, so build the executables first.
cargo build --workspace --bins --examples --locked
cargo test --workspace --all-targets --locked --no-fail-fast
cargo test --workspace --doc --locked
# Rustdoc on the public API: no broken or private links.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked \
    -p rtunnel-core -p rtunnel-auth -p rtunnel-server -p rtunnel-agent
# The Debian packages: built from the debug binaries above, contents
# checked, and (as root) installed, the server started as its unit would
# start it, then removed.
PACKAGE_PROFILE=dev ./scripts/package.sh --install
