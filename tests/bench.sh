#!/usr/bin/env bash
# Benchmarks of DESIGN.md §8, kv side by side with etcd 3.4 (Debian's
# etcd-server) in one invocation: the same workloads, the same layouts
# (1 node, 3 nodes on loopback), the same durability (both fsync on commit).
# It prints figures and a table with the kv / etcd (or kv / reference)
# ratio; it asserts nothing. Run as root (it mounts a tmpfs and kvfs):
#   tests/bench.sh            everything (about 5 minutes here)
#   tests/bench.sh --quick    smaller counts, no scale section
#   tests/bench.sh --only api|fs|scale [--quick]
#                             one section: the client API against etcd, the
#                             mount against tmpfs, or scale and fan-out
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

quick=0 only=""
while [ $# -gt 0 ]; do
    case $1 in
    --quick) quick=1 ;;
    --only)
        only=${2:-}
        shift
        ;;
    *)
        echo "usage: tests/bench.sh [--quick] [--only api|fs|scale]" >&2
        exit 2
        ;;
    esac
    shift
done
case $only in "" | api | fs | scale) ;; *)
    echo "bench: --only takes api, fs or scale" >&2
    exit 2
    ;;
esac
# section NAME: whether to run it.
section() { [ -z "$only" ] || [ "$only" = "$1" ]; }
puts=10000 gets=20000 scale_keys=1000000 watchers=1000 rounds=3
floor_count=1000
if [ "$quick" = 1 ]; then puts=2000 gets=4000 scale_keys=100000 watchers=200 floor_count=300; fi

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    # NOTE: the etcd-server package would start its own etcd on 2379; ours
    # run on free ports and in their own dirs, so leave it be.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --release --locked -p kvd -p kvctl -p kvfs
cargo build --release --locked --manifest-path tests/bench/Cargo.toml
target=${CARGO_TARGET_DIR:-$root/target}
kvd=$target/release/kvd kvctl=$target/release/kvctl kvfs=$target/release/kvfs
B=${CARGO_TARGET_DIR:-$root/tests/bench/target}/release/kv-bench

T=$(mktemp -d /var/tmp/kvbench.XXXXXX)
results=$T/results.jsonl
pids=()
mounts=()
cleanup() {
    if [ -s "$results" ]; then
        say "results (kv / etcd: higher is better for /s, lower for ms)"
        "$B" table "$results" || true
    fi
    for m in "${mounts[@]}"; do umount -l "$m" 2>/dev/null || true; done
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$T"
}
trap cleanup EXIT

field() { "$B" field "$1" "$2"; }
# record ROW TARGET UNIT VALUE
record() { printf '{"row":"%s","target":"%s","unit":"%s","value":%s}\n' "$1" "$2" "$3" "$4" >>"$results"; }
say() { printf '\n== %s\n' "$*"; }

wait_file() {
    for _ in $(seq 300); do [ -s "$1" ] && return 0; sleep 0.1; done
    echo "bench: $1 never appeared" >&2
    exit 1
}

# add_failed LOG: a member add failed; say why (LOG is gone with $T).
add_failed() {
    echo "bench: member add failed: $(cat "$1")" >&2
    exit 1
}

# wait_ready URL: seconds until the node's /health/ready answered 200.
wait_ready() { "$B" ready "$1/health/ready"; }

# start_kv N: kv_urls holds the client URLs of an N-member cluster.
start_kv() {
    kv_urls=() kv_pids=() kv_dirs=()
    runs=$((runs + 1))
    local n=$1 d
    for i in $(seq 1 "$n"); do
        d=$T/kv-$runs-$i
        mkdir -p "$d"
        kv_dirs+=("$d")
        local boot=()
        [ "$i" = 1 ] && boot=(--bootstrap)
        RUST_LOG=warn "$kvd" --id "$i" --data-dir "$d/data" --client-addr 127.0.0.1:0 --peer-addr 127.0.0.1:0 \
            "${boot[@]}" 2>"$d/log" &
        kv_pids+=($!) pids+=($!)
        wait_file "$d/data/client.addr"
        kv_urls+=("http://$(cat "$d/data/client.addr")")
        if [ "$i" = 1 ]; then
            wait_ready "${kv_urls[0]}" >/dev/null
        else
            "$kvctl" --endpoints "${kv_urls[0]}" member add "$i" "http://$(cat "$d/data/peer.addr")" \
                --client-url "${kv_urls[$((i - 1))]}" >"$d/add.log" 2>&1 || add_failed "$d/add.log"
        fi
    done
}

stop_all() {
    for p in "${kv_pids[@]}" "${etcd_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${kv_pids[@]}" "${etcd_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    kv_pids=() etcd_pids=()
}

# start_etcd N: etcd_urls holds the client URLs of an N-member etcd cluster.
start_etcd() {
    etcd_urls=() etcd_pids=()
    runs=$((runs + 1))
    local n=$1 ports cluster="" d
    ports=$("$B" ports $((2 * n)) | tr -d '[]' | tr ',' ' ')
    read -ra p <<<"$ports"
    for i in $(seq 1 "$n"); do
        cluster+="${cluster:+,}e$i=http://127.0.0.1:${p[$((2 * i - 1))]}"
    done
    for i in $(seq 1 "$n"); do
        d=$T/etcd-$runs-$i
        mkdir -p "$d"
        local c=${p[$((2 * i - 2))]} pp=${p[$((2 * i - 1))]}
        etcd --name "e$i" --data-dir "$d/data" \
            --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
            --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
            --initial-cluster "$cluster" --initial-cluster-state new --log-level error 2>"$d/log" &
        etcd_pids+=($!) pids+=($!)
        etcd_urls+=("http://127.0.0.1:$c")
    done
    for u in "${etcd_urls[@]}"; do "$B" ready "$u/health" >/dev/null; done
}

join() { local IFS=,; echo "$*"; }

# fields FILE FIELD: FIELD of each JSON line of FILE, one per line.
fields() {
    local l
    while read -r l; do field "$l" "$2"; done <"$1"
}

# median FILE FIELD: the median of FIELD over the JSON lines of FILE.
median() {
    fields "$1" "$2" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# bench_layout LAYOUT: the API workloads against the running kv and etcd
# clusters (kv_urls, etcd_urls). Each workload runs $rounds times per store,
# the stores taking turns (kv first in odd rounds, etcd in even ones), and
# each figure is the median over the rounds. This machine's CPU speed drifts
# by up to 1.8 x over seconds (other guests on the host); back-to-back
# rounds see the same drift, one store's block after the other's does not.
bench_layout() {
    local layout=$1 w op c count cl r order tgt eps out f
    for w in "put 1 $puts" "put 64 $puts" "get 64 $gets"; do
        read -r op c count <<<"$w"
        cl="$c client"
        [ "$c" = 1 ] || cl+=s
        for tgt in kv etcd; do : >"$T/$tgt.jsonl"; done
        for r in $(seq 1 "$rounds"); do
            order="kv etcd"
            [ $((r % 2)) = 0 ] && order="etcd kv"
            for tgt in $order; do
                eps=$(join "${kv_urls[@]}")
                [ "$tgt" = etcd ] && eps=$(join "${etcd_urls[@]}")
                say "$tgt, $layout: $op, $cl ($count), round $r of $rounds"
                out=$("$B" "$op" --target "$tgt" --endpoints "$eps" --clients "$c" --count "$count")
                echo "$out"
                echo "$out" >>"$T/$tgt.jsonl"
            done
        done
        for tgt in kv etcd; do
            f=$T/$tgt.jsonl
            echo "$tgt, $layout, $op, $cl: /s over the rounds: $(fields "$f" ops_per_sec | xargs printf '%.0f ')"
            record "$op/s, $cl, $layout" "$tgt" "/s" "$(median "$f" ops_per_sec)"
            if [ "$op" = put ]; then
                record "put p50, $cl, $layout" "$tgt" ms "$(median "$f" p50_ms)"
                record "put p99, $cl, $layout" "$tgt" ms "$(median "$f" p99_ms)"
            fi
        done
        if [ "$w" = "put 1 $puts" ] && [ "$layout" = "1 node" ]; then
            kv_put_p50=$(median "$T/kv.jsonl" p50_ms)
        fi
        if [ "$w" = "put 1 $puts" ] && [ "$layout" = "3 nodes" ]; then
            kv_put3_p50=$(median "$T/kv.jsonl" p50_ms)
        fi
    done
}

kv_pids=() etcd_pids=() runs=0
say "machine: $(nproc) cores, $(uname -r), data under $T"
# The disk's fdatasync (4 KiB appends), in turns with the same appends made
# by a bare TCP server before it answers each request: the least any durable
# write over the network can take on this machine.
floor=$("$B" floor "$T" --count "$floor_count")
echo "fdatasync of 4 KiB, in turns with a bare server doing the same per request: $floor"
fsync_p50=$(field "$floor" fsync_p50_ms)
record "fdatasync p50 (disk)" reference ms "$fsync_p50"

for n in 1 3; do
    section api || break
    layout="1 node"
    [ "$n" = 3 ] && layout="3 nodes"
    # Both clusters stay up for the whole layout: the one not measured idles.
    start_kv "$n"
    start_etcd "$n"
    if [ "$n" = 1 ]; then
        # The floor under every request: one kept-alive connection asking
        # for nothing (no Raft, no disk).
        say "kv, $layout: HTTP round trip of an empty request"
        r=$("$B" rtt "${kv_urls[0]}/health/live")
        echo "$r"
        kv_rtt_p50=$(field "$r" p50_ms)
        record "HTTP round trip p50, empty request, 1 node" kv ms "$kv_rtt_p50"
    fi
    bench_layout "$layout"
    stop_all
done
if section api; then
    record "put p50, 1 client, 1 node / fdatasync p50" kv x "$(awk -v a="$kv_put_p50" -v b="$fsync_p50" 'BEGIN { print a / b }')"
    # What a server doing no work at all beyond the append and fsync scores.
    record "bare durable TCP server p50 / fdatasync p50" kv x "$(field "$floor" ratio)"
    record "put p50, 1 client, 1 node / bare server p50" kv x \
        "$(awk -v a="$kv_put_p50" -v b="$(field "$floor" server_p50_ms)" 'BEGIN { print a / b }')"
    # The floor of a 3-node write: the bare server, plus one round trip to a
    # follower (the empty request's) and the follower's fdatasync.
    floor3=$(awk -v s="$(field "$floor" server_p50_ms)" -v r="$kv_rtt_p50" -v f="$fsync_p50" 'BEGIN { print s + r + f }')
    record "floor of a 3-node put: bare server + round trip + fdatasync" reference ms "$floor3"
    record "put p50, 1 client, 3 nodes / that floor" kv x "$(awk -v a="$kv_put3_p50" -v b="$floor3" 'BEGIN { print a / b }')"
fi

# The mount against tmpfs (1 node, like the API put it is compared with).
if section fs; then
    start_kv 1
    mkdir -p "$T/tmpfs" "$T/mnt-rw" "$T/mnt-ro" "$T/mnt-pt" "$T/mnt-a" "$T/mnt-b" "$T/floor" "$T/floor-pt"
    mount -t tmpfs -o size=256m kvbench "$T/tmpfs"
    mounts+=("$T/tmpfs")
    # mounted DIR: waits until the mount started in the background at DIR
    # is live.
    mounted() {
        pids+=($!)
        mounts+=("$1")
        for _ in $(seq 300); do mountpoint -q "$1" && return 0; sleep 0.1; done
        echo "bench: $1 did not mount" >&2
        exit 1
    }
    # mount_kvfs URL DIR [OPTIONS]: a kvfs mount in the background, once live.
    mount_kvfs() {
        "$kvfs" -f ${3:+-o "$3"} "$1" "$2" 2>"$2.log" &
        mounted "$2"
    }
    mount_kvfs "${kv_urls[0]}" "$T/mnt-rw"
    mount_kvfs "${kv_urls[0]}" "$T/mnt-ro" ro
    mount_kvfs "${kv_urls[0]}" "$T/mnt-pt" passthrough
    # The FUSE floor: the same tree from memory, with kvfs's choices
    # towards the kernel (tests/bench/src/fusefloor.rs).
    # mount_floor DIR [--passthrough]
    mount_floor() {
        "$B" fusefloor "$@" 2>"$1.log" &
        mounted "$1"
    }
    mount_floor "$T/floor"
    mount_floor "$T/floor-pt" --passthrough
    say "filesystem loops: tmpfs"
    tm=$("$B" fs --keep "$T/tmpfs")
    echo "$tm"
    # create+write+close is timed in 5 blocks, each after a block of as many
    # API puts (1 client) to the member the mount uses: its reference.
    say "filesystem loops: kvfs, and API puts to the member it uses"
    kw=$("$B" fs --keep --put-endpoint "${kv_urls[0]}" "$T/mnt-rw")
    echo "$kw"
    # NOTE: right after thousands of writes the mount is still busy with
    # their echoes from the watch; the read loops measure it settled, as a
    # program reading its config finds it.
    sleep 5
    # The read loops take turns with the same loops on tmpfs and on the
    # FUSE floor, round by round.
    say "filesystem loops, reads only: kvfs (the files written above), tmpfs and the FUSE floor"
    km=$("$B" fs --read-only --reference "$T/tmpfs" --floor "$T/floor" "$T/mnt-rw")
    echo "$km"
    say "filesystem loops, reads only: kvfs -o ro, and tmpfs"
    ro=$("$B" fs --read-only --reference "$T/tmpfs" "$T/mnt-ro")
    echo "$ro"
    say "filesystem loops, reads only: kvfs -o passthrough, tmpfs and the FUSE floor with passthrough"
    pt=$("$B" fs --read-only --reference "$T/tmpfs" --floor "$T/floor-pt" "$T/mnt-pt")
    echo "$pt"
    record "create+write+close p50 (ref: API put p50)" kv ms "$(field "$kw" create_write_close.p50_ms)"
    # FUSE's own share: names the mount keeps local (no put), against tmpfs.
    record "create+write+close p50, a name kept local (no put)" kv ms "$(field "$kw" create_write_close_local.p50_ms)"
    record "create+write+close p50, a name kept local (no put)" reference ms "$(field "$tm" create_write_close.p50_ms)"
    record "open+read+close, cached 100 B file" kv µs "$(field "$km" open_read_close_us)"
    record "open+read+close, cached 100 B file" reference µs "$(field "$km" reference.open_read_close_us)"
    record "open+read+close, cached 100 B file, -o ro" kv µs "$(field "$ro" open_read_close_us)"
    record "open+read+close, cached 100 B file, -o ro" reference µs "$(field "$ro" reference.open_read_close_us)"
    # against ROW JSON FIELD OTHER: FIELD of JSON as ROW's kv value (µs),
    # the same under OTHER (reference or floor) as its reference.
    against() {
        record "$1" kv µs "$(field "$2" "$3")"
        record "$1" reference µs "$(field "$2" "$4.$3")"
    }
    against "open+read+close, cached 100 B file, -o passthrough" "$pt" open_read_close_us reference
    against "open+read+close, cached 100 B file, -o passthrough, kvfs / FUSE floor" "$pt" open_read_close_us floor
    against "open+read+close, cached 100 B file, kvfs / FUSE floor" "$km" open_read_close_us floor
    record "stat of 1,000 entries" kv µs "$(field "$km" stat_1000_us)"
    record "stat of 1,000 entries" reference µs "$(field "$km" reference.stat_1000_us)"
    record "ls -l of 1,000 entries" kv µs "$(field "$km" ls_l_1000_us)"
    record "ls -l of 1,000 entries" reference µs "$(field "$km" reference.ls_l_1000_us)"
    against "stat of 1,000 entries, kvfs / FUSE floor" "$km" stat_1000_us floor
    against "ls -l of 1,000 entries, kvfs / FUSE floor" "$km" ls_l_1000_us floor
    record "create+write+close p50 (ref: API put p50)" reference ms "$(field "$kw" api_put.p50_ms)"
    for m in "$T/mnt-rw" "$T/mnt-ro" "$T/mnt-pt" "$T/floor" "$T/floor-pt"; do umount "$m"; done
    stop_all

    # Propagation between members of a 3-node cluster.
    start_kv 3
    mount_kvfs "${kv_urls[1]}" "$T/mnt-b"
    say "propagation: write through member 1, cat on a mount of member 2"
    r=$("$B" propagate --endpoint "${kv_urls[0]}" "$T/mnt-b")
    echo "$r"
    record "propagation p50, member to mount" kv ms "$(field "$r" p50_ms)"
    record "propagation p99, member to mount" kv ms "$(field "$r" p99_ms)"
    umount "$T/mnt-b"
    stop_all
fi

if [ "$quick" = 0 ] && section scale; then
    say "watch fan-out: $watchers watchers, 100 writes/s for 10 s"
    start_kv 1
    r=$("$B" watchers --endpoints "${kv_urls[0]}" --watchers "$watchers" --rate 100 --secs 10)
    echo "$r"
    record "watch fan-out p99, $watchers watchers" kv ms "$(field "$r" p99_ms)"
    record "watch events missing" kv "" "$(field "$r" missing_events)"
    stop_all

    say "scale: $scale_keys keys of 100 bytes"
    start_kv 1
    r=$("$B" load --endpoints "${kv_urls[0]}" --keys "$scale_keys")
    echo "$r"
    raw=$(field "$r" raw_bytes)
    rss=$(awk '/VmRSS/ { print $2 * 1024 }' "/proc/${kv_pids[0]}/status")
    echo "kvd resident memory: $rss bytes for $raw raw bytes"
    record "kvd RSS / raw key+value bytes, $scale_keys keys" kv x "$(awk -v a="$rss" -v b="$raw" 'BEGIN { print a / b }')"
    t0=$(date +%s.%N)
    if "$kvctl" --endpoints "${kv_urls[0]}" snapshot save "$T/scale.snap" >"$T/snap.out" 2>&1; then
        t1=$(date +%s.%N)
        record "snapshot save, $scale_keys keys" kv s "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
        record "snapshot size / raw bytes" kv x "$(awk -v a="$(stat -c %s "$T/scale.snap")" -v b="$raw" 'BEGIN { print a / b }')"
    else
        echo "bench: snapshot save failed: $(cat "$T/snap.out")" >&2
    fi
    # Restart to ready: SIGTERM, then start again on the same data dir.
    d=${kv_dirs[0]}
    kill "${kv_pids[0]}"
    wait "${kv_pids[0]}" 2>/dev/null || true
    RUST_LOG=warn "$kvd" --id 1 --data-dir "$d/data" --client-addr "${kv_urls[0]#http://}" \
        --peer-addr "$(cat "$d/data/peer.addr")" 2>>"$d/log" &
    kv_pids=($!) pids+=($!)
    record "restart to ready, $scale_keys keys" kv s "$(wait_ready "${kv_urls[0]}")"
    # Catch-up of a new member: it joins by snapshot, then is promoted.
    d=$T/kv-join
    mkdir -p "$d"
    RUST_LOG=warn "$kvd" --id 2 --data-dir "$d/data" --client-addr 127.0.0.1:0 --peer-addr 127.0.0.1:0 2>"$d/log" &
    kv_pids+=($!) pids+=($!)
    wait_file "$d/data/client.addr"
    t0=$(date +%s.%N)
    "$kvctl" --endpoints "${kv_urls[0]}" member add 2 "http://$(cat "$d/data/peer.addr")" \
        --client-url "http://$(cat "$d/data/client.addr")" >"$d/add.log" 2>&1 || add_failed "$d/add.log"
    wait_ready "http://$(cat "$d/data/client.addr")" >/dev/null
    t1=$(date +%s.%N)
    record "new member caught up, $scale_keys keys" kv s "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
    stop_all
fi

