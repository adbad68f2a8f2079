#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, openraft's storage suite, and
# the integration tests that start real kvd processes on loopback.
# Needs only the Rust toolchain on a fresh Debian 12 machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# The integration tests run the binaries, so build them first.
cargo build --workspace --bins --locked

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?
# One closing line with the totals of every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
