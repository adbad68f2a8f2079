#!/usr/bin/env bash
# Runs every fuzz target under fuzz/ for a bounded time with cargo-fuzz
# (libFuzzer), on the stable toolchain (no sanitizer: kv has no unsafe code
# in these paths; panics, hangs and allocations beyond the input are what is
# looked for). Usage: tests/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# A crash leaves its input in fuzz/artifacts/TARGET/; copy it into
# fuzz/regressions/TARGET/ and `cargo test -p kvd fuzz` replays it from then on.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(key request peer snapshot)

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cargo fuzz build -s none -O

status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "== fuzzing $t for ${secs}s"
    if ! cargo fuzz run -s none -O "$t" "corpus/$t" "seeds/$t" "regressions/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 -print_final_stats=1 \
        2>&1 | tail -n 25; then
        status=1
    fi
    # NOTE: pipefail keeps libFuzzer's status; artifacts show what failed.
    if compgen -G "artifacts/$t/*" >/dev/null; then
        echo "fuzz: $t found crashing inputs:" >&2
        ls "artifacts/$t" >&2
        status=1
    fi
done
exit "$status"
