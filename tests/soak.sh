#!/usr/bin/env bash
# The long run of the fault-injection tests (DESIGN.md §3 under faults):
# 3 and 5 members in network namespaces under kill -9, pauses, partitions and
# membership changes, and two mounts while leaders are killed, each for
# SECONDS (default 600), one after another, as root. Every run prints its
# seed; KV_FAULT_SEED=N tests/soak.sh replays a failing one.
# Usage: tests/soak.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
cargo build --workspace --locked
KV_FAULT_SECS="$secs" cargo test -p kv-tests --test it --locked faults:: -- --test-threads=1 --nocapture
