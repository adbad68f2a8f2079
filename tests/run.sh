#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, openraft's storage suite, and
# the integration tests that start real kvd processes on loopback.
# Needs only the Rust toolchain on a fresh Debian 12 machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# The integration tests run the binaries, so build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked
