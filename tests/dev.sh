#!/usr/bin/env bash
# Runs kv for development, in the spirit of `consul agent -dev`: a single-node
# cluster with its data in a temp dir, and the whole keyspace mounted at DIR
# (default ./kv) in the foreground. Ctrl-C unmounts, stops the node and
# removes the data; nothing is left behind.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(realpath -m "${1:-./kv}")

if ! command -v fusermount3 >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] || { echo "dev.sh: install fuse3 first (apt-get install fuse3)" >&2; exit 1; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 >/dev/null
fi
cargo build --release --bins --locked

made_dir=
[ -d "$dir" ] || { mkdir -p "$dir"; made_dir=1; }
data=$(mktemp -d)
kvd_pid=
cleanup() {
    [ -n "$kvd_pid" ] && kill "$kvd_pid" 2>/dev/null && wait "$kvd_pid" 2>/dev/null
    fusermount3 -u -z "$dir" 2>/dev/null || true
    rm -rf "$data"
    [ -n "$made_dir" ] && rmdir "$dir" 2>/dev/null
    true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

target/release/kvd --dev --data-dir "$data/node" --client-addr 127.0.0.1:7379 --peer-addr 127.0.0.1:7380 &
kvd_pid=$!
until target/release/kvctl ls >/dev/null 2>&1 || ! kill -0 "$kvd_pid" 2>/dev/null; do sleep 0.1; done
kill -0 "$kvd_pid" 2>/dev/null || { echo "dev.sh: kvd did not start" >&2; exit 1; }
echo "kv: node at http://127.0.0.1:7379, keyspace mounted at $dir (Ctrl-C to stop)"
target/release/kvfs -f -o cache_dir="$data/cache" http://127.0.0.1:7379 "$dir" &
wait $!
