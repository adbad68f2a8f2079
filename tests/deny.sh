#!/usr/bin/env bash
# The supply-chain check: cargo-deny over the whole dependency tree with
# deny.toml (RustSec advisories, unmaintained and yanked crates included;
# licenses; banned crates; sources). Installs the pinned cargo-deny into a
# cache the first time (a few minutes of building on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.20.2
tools="${XDG_CACHE_HOME:-$HOME/.cache}/kv-tools"
has_version() { [ -x "$1" ] && "$1" --version 2>/dev/null | grep -qx "cargo-deny $version"; }
deny=$(command -v cargo-deny || true)
if ! has_version "$deny"; then
    deny="$tools/bin/cargo-deny"
    if ! has_version "$deny"; then
        echo "tests/deny.sh: installing cargo-deny $version into $tools" >&2
        cargo install --locked --quiet --version "$version" --root "$tools" cargo-deny
    fi
fi
export PATH="$(dirname "$deny"):$PATH"

# The advisory database is a git repository cargo-deny keeps under
# $CARGO_HOME/advisory-dbs. Refresh it; where the network does not reach it,
# check against the copy already there, and say how old it is.
db_root="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
if ! cargo deny fetch db >/dev/null 2>&1; then
    db=$(ls -d "$db_root"/advisory-db-* 2>/dev/null | head -n1 || true)
    if [ -z "$db" ]; then
        echo "tests/deny.sh: cannot fetch the RustSec advisory database and there is no copy in $db_root;" >&2
        echo "  clone the advisory-db repository into $db_root/advisory-db-3157b0e258782691 and run again" >&2
        exit 1
    fi
    echo "tests/deny.sh: cannot refresh the advisory database; using the copy of $(git -C "$db" log -1 --format=%cs) in $db" >&2
fi
cargo deny --offline --locked check --hide-inclusion-graph
