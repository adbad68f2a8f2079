#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, openraft's storage suite, and
# the integration tests that start real kvd processes and real FUSE mounts.
# Works on a fresh Debian 12 machine with the Rust toolchain: as root it
# installs what the mount tests drive (fuse3, vim, rsync, nginx), openssl,
# promtool (prometheus) and the headless browser the web UI's tests drive
# (chromium, chromium-driver; without them those tests skip); the package
# test (tests/packages.sh) installs debootstrap, systemd-container, lintian and mandoc; tests/deny.sh builds
# cargo-deny and tests/pjdfstest.sh pjdfstest once into ~/.cache/kv-tools.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v vim >/dev/null 2>&1 || need+=(vim-nox)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
# The TLS tests make their certificates with openssl.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# A mount test runs its own nginx, whose workers read the mount as www-data.
[ -x /usr/sbin/nginx ] || need+=(nginx)
# promtool checks and unit-tests the shipped alert rules.
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# The web UI's tests drive headless Chromium through chromedriver (WebDriver).
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests/run.sh: please install: ${need[*]}" >&2
        exit 1
    fi
    # NOTE: installing nginx would start the system's nginx on port 80;
    # policy-rc.d tells the package scripts not to start services.
    made_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        made_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    if [ -n "$made_policy" ]; then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
fi

# The integration tests run the binaries (and the fsync-fault library), so build them first.
cargo build --workspace --locked
# The POSIX suite the mount is measured with (tests/tests/it/posix.rs).
KV_PJDFSTEST=$(tests/pjdfstest.sh)
export KV_PJDFSTEST

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?
pk_pass=0 pk_fail=0

# The supply chain: advisories, licenses, bans and sources (deny.toml).
if tests/deny.sh; then pk_pass=1; else pk_fail=1; status=1; fi

# The Debian packages, installed and booted in a container (needs root).
if [ "$(id -u)" -eq 0 ]; then
    if tests/packages.sh; then pk_pass=$((pk_pass + 1)); else pk_fail=$((pk_fail + 1)); status=1; fi
else
    echo "tests/run.sh: skipping tests/packages.sh (it needs root)" >&2
fi
# One closing line with the totals of every test binary and the package test.
awk -v pp="$pk_pass" -v pf="$pk_fail" \
    '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p + pp, f + pf }' "$log"
exit "$status"
