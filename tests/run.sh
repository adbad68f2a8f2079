#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, openraft's storage suite, and
# the integration tests that start real kvd processes and real FUSE mounts.
# Works on a fresh Debian 12 machine with the Rust toolchain: as root it
# installs what the mount tests drive (fuse3, vim, rsync) and openssl.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v vim >/dev/null 2>&1 || need+=(vim-nox)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
# The TLS tests make their certificates with openssl.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests/run.sh: please install: ${need[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The integration tests run the binaries, so build them first.
cargo build --workspace --bins --locked

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?
# One closing line with the totals of every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
