#!/usr/bin/env bash
# End-to-end test of the Debian packages: builds them, boots a minimal
# Debian 12 root (debootstrap, cached between runs) with systemd-nspawn, and
# inside it installs the packages and checks that kvd.service runs, kvctl
# health passes, the packaged /etc/fstab line mounts /etc/app, a unit with
# User=app ordered after it reads a 0640 root:app file there (and nobody
# else does), kv-watch@.service restarts a service when its config changes
# and the service reads the new value through the mount, an upgrade keeps
# the data and a
# purge leaves no running unit, and that a second host joins as the README
# says; kvd's status line, `systemctl reload`, and that the watchdog
# restarts a frozen kvd; kvctl's shell completions and the alert rules and
# dashboard are installed where the tools look. Also: lintian, mandoc/man
# lint, and
# systemd-analyze verify/security. Needs root. Usage: tests/packages.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
[ "$(id -u)" -eq 0 ] || { echo "tests/packages.sh: needs root (debootstrap, nspawn)" >&2; exit 1; }

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v lintian >/dev/null || need+=(lintian)
command -v mandoc >/dev/null || need+=(mandoc)
command -v man >/dev/null || need+=(man-db)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

step "man pages: mandoc -T lint and man --warnings"
for m in man/*.[0-9]; do
    grep -q '^\.so ' "$m" && continue
    out=$(mandoc -T lint -W warning "$m" 2>&1 || true)
    [ -z "$out" ] || fail "mandoc: $out"
    out=$(MANWIDTH=80 man --warnings -l "$m" 2>&1 >/dev/null || true)
    [ -z "$out" ] || fail "man --warnings $m: $out"
done
echo ok

step "build the packages (revision 1)"
packaging/build-debs.sh 1
tdir=$(realpath -m "${CARGO_TARGET_DIR:-target}")
work=$(mktemp -d /var/tmp/kv-packages.XXXXXX)
nspawn_pid=
cleanup() {
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$nspawn_pid" 2>/dev/null || true
    fi
    [ -d "$work/root" ] && umount -R "$work/root" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/v1" "$work/v2"
cp "$tdir"/debian/*.deb "$work/v1/"

step "lintian"
# NOTE: initial-upload-closes-no-bugs is expected: these packages are not
# uploaded to Debian, so there is no ITP bug to close.
lintian --fail-on error,warning --suppress-tags initial-upload-closes-no-bugs "$work"/v1/*.deb

step "revision 2, for the upgrade"
packaging/build-debs.sh 2 >/dev/null
cp "$tdir"/debian/*.deb "$work/v2/"

step "a Debian 12 root (cached)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/kv-ci/bookworm-root"
if [ ! -x "$cache/usr/bin/systemctl" ]; then
    # The mirror this machine's apt already uses.
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null ||
        awk '/^deb / {print $2; exit}' /etc/apt/sources.list)
    rm -rf "$cache.tmp"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,fuse3,ca-certificates,man-db \
        bookworm "$cache.tmp" "$mirror" >/dev/null
    mv "$cache.tmp" "$cache"
fi
cp -a "$cache" "$work/root"
root=$work/root
echo kvtest > "$root/etc/hostname"
mkdir -p "$root/opt/debs" && cp -r "$work/v1" "$work/v2" "$root/opt/debs/"
mkdir -p "$root/etc/app"
# An application running as its own user (User=app): it reads a 0640
# root:app file and a 0644 one through the mount.
cat > "$root/etc/systemd/system/kv-app.service" <<'EOF'
[Unit]
Description=An application that reads its config from /etc/app
RequiresMountsFor=/etc/app

[Service]
Type=oneshot
RemainAfterExit=yes
User=app
Group=app
StateDirectory=kv-app
ExecStart=/bin/sh -c 'cat /etc/app/app.conf > /var/lib/kv-app/conf && cat /etc/app/greeting > /var/lib/kv-app/seen'
EOF

# A service that reads its config through the mount each time it runs,
# started again by kv-watch@reader.service on every change of app/.
cat > "$root/etc/systemd/system/kv-reader.service" <<'EOF'
[Unit]
Description=A service that reads /etc/app/reload.conf each time it runs
RequiresMountsFor=/etc/app

[Service]
Type=oneshot
StateDirectory=kv-reader
ExecStart=/bin/sh -c 'cat /etc/app/reload.conf >> /var/lib/kv-reader/seen; echo >> /var/lib/kv-reader/seen'
EOF

step "boot it"
systemd-nspawn --quiet --register=no --keep-unit --private-network --bind=/dev/fuse \
    --property=DeviceAllow='/dev/fuse rwm' -D "$root" -b > "$work/console.log" 2>&1 &
nspawn_pid=$!
leader=
for _ in $(seq 1 300); do
    leader=$(pgrep -P "$nspawn_pid" -x systemd || true)
    [ -n "$leader" ] && break
    kill -0 "$nspawn_pid" 2>/dev/null || { cat "$work/console.log"; fail "nspawn exited"; }
    sleep 0.1
done
[ -n "$leader" ] || fail "no init in the container"
# inside CMD...: runs a shell command inside the container.
inside() { timeout -s KILL 120 nsenter --target "$leader" --mount --uts --ipc --net --pid -- /bin/sh -c "$*"; }
for _ in $(seq 1 300); do
    state=$(inside 'systemctl is-system-running 2>/dev/null' || true)
    case "$state" in running | degraded) break ;; esac
    sleep 0.2
done
echo "system: $state"

step "install"
inside 'DEBIAN_FRONTEND=noninteractive dpkg -i /opt/debs/v1/*.deb' >/dev/null
waitfor() { # waitfor WHAT CMD: polls CMD in the container for 60 s.
    local what=$1; shift
    for _ in $(seq 1 300); do inside "$*" >/dev/null 2>&1 && return 0; sleep 0.2; done
    inside 'journalctl --no-pager -n 50' || true
    fail "$what"
}
waitfor "kvd.service is not active" 'systemctl is-active --quiet kvd.service'
inside 'systemctl show -p Type,User,ActiveState kvd.service'
waitfor "kvctl health fails" 'kvctl health'
inside 'kvctl health'
inside 'stat -c "%a %U %n" /var/lib/kvd/admin-token'
out=$(inside 'kvctl put app/greeting hello' 2>&1 || true)
grep -q 'needs a token' <<<"$out" || fail "an anonymous write was not refused (auth = writes): $out"
inside 'kvctl --token-file /var/lib/kvd/admin-token put app/greeting hello'

step "metrics from the packaged kvd, inside the unit's sandbox (ProcSubset=pid)"
out=$(inside 'bash -c "exec 3<>/dev/tcp/127.0.0.1/7379 && printf \"GET /metrics HTTP/1.0\r\nAuthorization: Bearer %s\r\n\r\n\" \$(cat /var/lib/kvd/admin-token) >&3 && cat <&3"')
for m in kv_raft_has_leader kv_build_info process_open_fds process_resident_memory_bytes process_start_time_seconds; do
    grep -q "^$m" <<<"$out" || fail "the packaged kvd's /metrics lacks $m: $(head -c 300 <<<"$out")"
done
echo ok

step "shell completions and the monitoring files where the tools look for them"
for f in /usr/share/bash-completion/completions/kvctl /usr/share/zsh/vendor-completions/_kvctl \
    /usr/share/fish/vendor_completions.d/kvctl.fish /usr/share/kvd/monitoring/kv-alerts.yml \
    /usr/share/kvd/monitoring/kv-dashboard.json; do
    inside "test -s $f" || fail "the packages do not install $f"
done
# What bash-completion loads for `kvctl <TAB>`: sourced by bash, it completes subcommands.
out=$(inside 'bash -c ". /usr/share/bash-completion/completions/kvctl; COMP_WORDS=(kvctl sta); COMP_CWORD=1; _kvctl kvctl sta kvctl; echo \${COMPREPLY[*]}"')
case " $out " in *" status "*) echo ok ;; *) fail "bash completion of 'kvctl sta' gave: $out" ;; esac

step "systemd: the status line, reload on SIGHUP, and the watchdog restarts a frozen kvd"
[ "$(inside 'systemctl show -p WatchdogUSec --value kvd.service')" = 30s ] || fail "the shipped unit sets no WatchdogSec=30s"
waitfor "no STATUS= line from kvd" \
    'systemctl show -p StatusText --value kvd.service | grep -Eqx "leader, term [0-9]+, revision [0-9]+"'
inside 'systemctl show -p StatusText kvd.service'
pid=$(inside 'systemctl show -p MainPID --value kvd.service')
inside 'systemctl reload kvd.service'
waitfor "kvd did not log the reload" 'journalctl -u kvd.service --no-pager | grep -q "SIGHUP: nothing to reload"'
[ "$(inside 'systemctl show -p MainPID --value kvd.service')" = "$pid" ] || fail "a reload restarted kvd"
# NOTE: a drop-in shortens the watchdog for the test; the frozen process
# (SIGSTOP) sends no keepalive, so systemd kills it and starts a new one.
inside 'mkdir -p /etc/systemd/system/kvd.service.d &&
    printf "[Service]\nWatchdogSec=3s\n" > /etc/systemd/system/kvd.service.d/watchdog.conf &&
    systemctl daemon-reload && systemctl restart kvd.service'
waitfor "kvctl health after the restart" 'kvctl health'
frozen=$(inside 'systemctl show -p MainPID --value kvd.service')
# A running kvd sends keepalives: systemd's time of the last one moves on,
# and it is the same process.
last=$(inside 'systemctl show -p WatchdogTimestampMonotonic --value kvd.service')
waitfor "systemd hears no keepalive from kvd" \
    "[ \"\$(systemctl show -p WatchdogTimestampMonotonic --value kvd.service)\" != $last ]"
[ "$(inside 'systemctl show -p MainPID --value kvd.service')" = "$frozen" ] || fail "kvd restarted while it ran"
inside "kill -STOP $frozen"
waitfor "systemd did not restart the frozen kvd" \
    "p=\$(systemctl show -p MainPID --value kvd.service) && [ \"\$p\" != $frozen ] && [ \"\$p\" != 0 ] &&
    systemctl is-active --quiet kvd.service"
# (grep in the container: a grep -q here would cut journalctl's pipe, and
# pipefail would count that as a failure)
inside 'journalctl -u kvd.service --no-pager | grep -q "Watchdog timeout"' || fail "the restart was not the watchdog's"
waitfor "kvctl health after the watchdog's restart" 'kvctl health'
inside 'rm -r /etc/systemd/system/kvd.service.d && systemctl daemon-reload && systemctl restart kvd.service'
waitfor "kvctl health without the drop-in" 'kvctl health'

step "a second host (README): refused while it is a cluster of its own, added once emptied"
# NOTE: the second host is a kvd@two instance in the same container (the
# container has no network but loopback), configured as the package ships
# kvd.toml (bootstrap = true), so it first makes a cluster of its own.
inside 'sed -e "s/^id = 1/id = 2/" -e "s|^data_dir = .*|data_dir = \"/var/lib/kvd/two\"|" \
    -e "s|^# client_addr = .*|client_addr = \"127.0.0.1:7389\"|" -e "s|^# peer_addr = .*|peer_addr = \"127.0.0.1:7390\"|" \
    /etc/kvd/kvd.toml > /etc/kvd/two.toml'
inside 'systemctl start kvd@two.service'
waitfor "kvd@two is not healthy" 'kvctl --endpoints http://127.0.0.1:7389 health'
add2='kvctl --token-file /var/lib/kvd/admin-token member add 2 http://127.0.0.1:7390 --client-url http://127.0.0.1:7389'
out=$(inside "$add2" 2>&1) && fail "member add of another cluster's node succeeded: $out"
grep -q 'without --bootstrap' <<<"$out" || fail "the refusal does not say how to join: $out"
inside 'kvctl health' || fail "the refused member add harmed the cluster"
inside 'systemctl stop kvd@two.service'
inside 'sed -i "s/^bootstrap = true/bootstrap = false/" /etc/kvd/two.toml && rm -rf /var/lib/kvd/two/*'
# NOTE: --no-block, as the README says: an empty node is not ready until it
# is added, and a plain start would wait for that until it timed out.
inside 'systemctl start --no-block kvd@two.service'
waitfor "kvd@two does not listen" 'test -s /var/lib/kvd/two/peer.addr'
inside "$add2"
waitfor "the second host did not catch up" '[ "$(kvctl --endpoints http://127.0.0.1:7389 get app/greeting)" = hello ]'
inside 'kvctl --token-file /var/lib/kvd/admin-token member remove 2'
inside 'systemctl stop kvd@two.service'

step "the packaged fstab line, and an application with User= ordered after it"
# The mount of the README: the packaged example's line in /etc/fstab.
inside 'grep "^http.*fuse.kvfs" /usr/share/doc/kvfs/examples/fstab >> /etc/fstab && tail -1 /etc/fstab'
inside 'adduser --system --group --no-create-home --quiet app'
inside 'systemctl daemon-reload'
inside 'systemctl start etc-app.mount'
inside 'findmnt -t fuse.kvfs /etc/app' || fail "/etc/app is not a kvfs mount"
# (the cluster takes writes with a token only, as packaged: kvctl puts it)
inside 'printf "db=secret\n" | kvctl --token-file /var/lib/kvd/admin-token put app/app.conf - \
    --mode 0640 --gid "$(getent group app | cut -d: -f3)"'
waitfor "the mount does not show app.conf as 0640 root:app" '[ "$(stat -c "%a %U %G" /etc/app/app.conf)" = "640 root app" ]'
inside 'systemctl start kv-app.service' || { inside 'journalctl --no-pager -n 30 -u kv-app.service'; fail "kv-app failed"; }
inside 'systemctl show -p After kv-app.service' | grep -q 'etc-app.mount' || fail "kv-app is not ordered after etc-app.mount"
[ "$(inside 'cat /var/lib/kv-app/seen')" = hello ] || fail "the application did not read the value"
[ "$(inside 'cat /var/lib/kv-app/conf')" = db=secret ] || fail "the application (User=app) did not read its 0640 root:app config"
[ "$(inside 'cat /etc/app/greeting')" = hello ] || fail "cat through the mount"
[ "$(inside 'runuser -u nobody -- cat /etc/app/greeting')" = hello ] || fail "nobody cannot read a 0644 file"
inside 'runuser -u nobody -- cat /etc/app/app.conf' 2>/dev/null && fail "nobody read a 0640 root:app file"
# The old fstab form, through mount.fuse: kvfs#SOURCE with type fuse.
inside 'mkdir -p /mnt/app && mount -t fuse "kvfs#http://127.0.0.1:7379/app" /mnt/app -o _netdev'
[ "$(inside 'cat /mnt/app/greeting')" = hello ] || fail "the kvfs# form"
inside 'umount /mnt/app'

step "kv-watch@.service: a change under the prefix restarts a service, which reads it through the mount"
inside 'test -f /usr/share/doc/kvctl/examples/nginx.conf' || fail "no example kv-watch config"
inside 'mkdir -p /etc/kv/watch && printf "%s\n" "# as in kvctl-watch(1)" PREFIX=app MOUNT=/etc/app WAIT=200ms:1s \
    "COMMAND=systemctl start kv-reader.service" > /etc/kv/watch/reader.conf'
inside 'kvctl --token-file /var/lib/kvd/admin-token put app/reload.conf v0'
inside 'systemctl enable --now kv-watch@reader.service'
waitfor "kv-watch@reader is not active" 'systemctl is-active --quiet kv-watch@reader.service'
inside 'systemctl show -p After kv-watch@reader.service' | grep -q 'remote-fs.target' ||
    fail "kv-watch@ is not ordered after the remote file systems (kvfs mounts)"
# The watch starts "from now": write until a run shows it is up.
waitfor "kv-watch@reader never ran" 'kvctl --token-file /var/lib/kvd/admin-token put app/probe x >/dev/null &&
    sleep 0.5 && test -s /var/lib/kv-reader/seen'
for v in v1 v2; do
    inside "kvctl --token-file /var/lib/kvd/admin-token put app/reload.conf $v"
    # NOTE: the run for the last change is the last run: it read the new value.
    for _ in $(seq 1 300); do [ "$(inside 'tail -1 /var/lib/kv-reader/seen')" = $v ] && break; sleep 0.2; done
    [ "$(inside 'tail -1 /var/lib/kv-reader/seen')" = $v ] || fail "the service did not read $v through the mount:
$(inside 'cat /var/lib/kv-reader/seen /run/kvfs/etc-app.status; journalctl --no-pager -n 20 -u kv-watch@reader.service')"
done
seen=$(inside 'cat /var/lib/kv-reader/seen')
sed -n '/^v1$/,$p' <<<"$seen" | grep -qx v0 && fail "a run after the change read the old value: $seen"
inside 'journalctl --no-pager -u kv-watch@reader.service' | grep -E 'runs again|did not serve' &&
    fail "kv-watch@reader reported a failed run"
inside 'systemctl stop kv-watch@reader.service'

step "systemd-analyze verify and security"
inside 'systemd-analyze verify /usr/lib/systemd/system/kvd.service /usr/lib/systemd/system/kvd@.service \
    /usr/lib/systemd/system/kv-watch@.service'
inside 'systemd-analyze security --no-pager kvd.service' | tail -1

step "upgrade keeps the data and restarts the service"
before=$(inside 'systemctl show -p MainPID --value kvd.service')
inside 'DEBIAN_FRONTEND=noninteractive dpkg -i /opt/debs/v2/*.deb' >/dev/null
waitfor "kvd.service is not active after the upgrade" 'systemctl is-active --quiet kvd.service'
after=$(inside 'systemctl show -p MainPID --value kvd.service')
[ "$before" != "$after" ] || fail "the upgrade did not restart kvd ($before)"
inside 'dpkg-query -W -f "\${Version}\n" kvd' | grep -q -- '-2$' || fail "not upgraded"
waitfor "kvctl health after the upgrade" 'kvctl health'
[ "$(inside 'kvctl get app/greeting')" = hello ] || fail "the upgrade lost data"

step "purge leaves no running unit (and the data unless asked)"
inside 'umount /etc/app'
inside 'dpkg --purge kvfs kvctl kvd' >/dev/null 2>&1
inside 'systemctl is-active --quiet kvd.service' && fail "kvd.service still active after purge"
# (minbase has no pgrep)
inside 'for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = kvd ] && exit 0; done; exit 1' &&
    fail "a kvd process survived the purge"
inside 'test -d /var/lib/kvd && getent passwd kvd' >/dev/null || fail "a plain purge removed the data"
inside 'DEBIAN_FRONTEND=noninteractive dpkg -i /opt/debs/v2/kvd_*.deb' >/dev/null
waitfor "kvd.service after reinstall" 'systemctl is-active --quiet kvd.service'
inside 'KVD_PURGE_DATA=yes dpkg --purge kvd' >/dev/null 2>&1
inside 'test -e /var/lib/kvd || getent passwd kvd' && fail "KVD_PURGE_DATA=yes left data or the user"
inside 'systemctl is-active --quiet kvd.service' && fail "kvd.service still active"

echo
echo "packages: all checks passed"
