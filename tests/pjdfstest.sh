#!/usr/bin/env bash
# Installs pjdfstest (the Rust rewrite of the POSIX file system test suite,
# pinned) into a cache the first time (a few minutes of building on 2
# cores), and prints the path of its binary. tests/tests/it/posix.rs runs it
# against a mount.
set -euo pipefail

version=0.2.2
tools="${XDG_CACHE_HOME:-$HOME/.cache}/kv-tools"
bin="$tools/bin/pjdfstest"
if ! { [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -qx "pjdfstest $version"; }; then
    echo "tests/pjdfstest.sh: installing pjdfstest $version into $tools" >&2
    cargo install --locked --quiet --force --version "$version" --root "$tools" pjdfstest >&2
fi
echo "$bin"
