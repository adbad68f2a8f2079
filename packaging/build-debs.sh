#!/usr/bin/env bash
# Builds the Debian packages kvd, kvfs and kvctl from the release binaries
# into target/debian/ (under $CARGO_TARGET_DIR if set) with dpkg-deb: stripped binaries, units, conffile,
# man pages, shell completions, alert rules and a dashboard, changelog and copyright. Usage: packaging/build-debs.sh [REVISION]
# (REVISION defaults to 1; an upgrade test builds a higher one).
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:-1}
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)-$rev"
arch=$(dpkg --print-architecture)
tdir=$(realpath -m "${CARGO_TARGET_DIR:-target}")
out=$tdir/debian
cargo build --release --locked --bins
rm -rf "$out" && mkdir -p "$out"

# stage PACKAGE: a fresh tree with the files every package has.
stage() {
    local d="$out/$1"
    mkdir -p "$d/DEBIAN" "$d/usr/share/doc/$1"
    install -m 644 packaging/debian/copyright "$d/usr/share/doc/$1/copyright"
    sed "s/^kv (0.1.0-1)/kv ($version)/" packaging/debian/changelog | gzip -9n > "$d/usr/share/doc/$1/changelog.Debian.gz"
    chmod 644 "$d/usr/share/doc/$1/changelog.Debian.gz"
}
bin() { install -D -m 755 -s "$tdir/release/$2" "$out/$1/$3/$2"; }
man() { install -D -m 644 /dev/stdin "$out/$1/usr/share/man/man$3/$2.$3" < <(cat "man/$2.$3"); gzip -9n "$out/$1/usr/share/man/man$3/$2.$3"; }
# The shared libraries a binary needs, as a Depends list.
shlibs() {
    local tmp
    tmp=$(mktemp -d)
    mkdir "$tmp/debian"
    printf 'Source: kv\n\nPackage: kv\nArchitecture: any\n' > "$tmp/debian/control"
    (cd "$tmp" && dpkg-shlibdeps -O -e "$@" 2>/dev/null) | sed -n 's/^shlibs:Depends=//p'
    rm -rf "$tmp"
}
control() {
    local d="$out/$1"
    local size
    size=$(du -sk --exclude=DEBIAN "$d" | cut -f1)
    cat > "$d/DEBIAN/control" <<CONTROL
Package: $1
Version: $version
Architecture: $arch
Maintainer: kv developers <kv@example.invalid>
Installed-Size: $size
Section: $2
Priority: optional
Homepage: https://example.invalid/kv
$3
CONTROL
    (cd "$d" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | sort | xargs md5sum > DEBIAN/md5sums)
    dpkg-deb --root-owner-group -Zxz --build "$d" "$out/${1}_${version}_${arch}.deb" >/dev/null
    echo "$out/${1}_${version}_${arch}.deb"
}

stage kvd
bin kvd kvd usr/sbin
install -D -m 644 packaging/kvd.toml "$out/kvd/etc/kvd/kvd.toml"
install -D -m 644 packaging/systemd/kvd.service "$out/kvd/usr/lib/systemd/system/kvd.service"
install -D -m 644 packaging/systemd/kvd@.service "$out/kvd/usr/lib/systemd/system/kvd@.service"
man kvd kvd 8
man kvd kvd.toml 5
# Alert rules and a Grafana dashboard for the members and the mounts.
for f in kv-alerts.yml kv-dashboard.json; do
    install -D -m 644 "packaging/monitoring/$f" "$out/kvd/usr/share/kvd/monitoring/$f"
done
for s in postinst prerm postrm; do install -m 755 "packaging/debian/kvd.$s" "$out/kvd/DEBIAN/$s"; done
echo /etc/kvd/kvd.toml > "$out/kvd/DEBIAN/conffiles"
control kvd database "Depends: adduser, $(shlibs "$out/kvd/usr/sbin/kvd")
Description: replicated key-value store for configuration (node)
 kv is a small, durable, replicated key-value store for configuration.
 This package holds kvd, one node of a cluster: Raft over an LSM store,
 serving an HTTP client API and a peer API, with TLS and token access
 control, run by kvd.service."

stage kvfs
bin kvfs kvfs usr/bin
mkdir -p "$out/kvfs/usr/sbin"
ln -s ../bin/kvfs "$out/kvfs/usr/sbin/mount.kvfs"
ln -s ../bin/kvfs "$out/kvfs/usr/sbin/mount.fuse.kvfs"
man kvfs kvfs 8
man kvfs mount.kvfs 8
for f in fstab etc-app.mount kv-app.service; do
    install -D -m 644 "packaging/examples/$f" "$out/kvfs/usr/share/doc/kvfs/examples/$f"
done
ln -s mount.kvfs.8.gz "$out/kvfs/usr/share/man/man8/mount.fuse.kvfs.8.gz"
control kvfs utils "Depends: fuse3, $(shlibs "$out/kvfs/usr/bin/kvfs")
Description: mount a kv key prefix as a filesystem
 kvfs mounts the keys below a prefix of a kv cluster as a directory tree
 through FUSE: reading a file is a get, writing one is a put. It is also
 mount.kvfs, so /etc/fstab lines and systemd mount units work."

stage kvctl
bin kvctl kvctl usr/bin
man kvctl kvctl 1
man kvctl kvctl-watch 1
install -D -m 644 packaging/systemd/kv-watch@.service "$out/kvctl/usr/lib/systemd/system/kv-watch@.service"
install -D -m 755 packaging/lib/kv-watch "$out/kvctl/usr/lib/kvctl/kv-watch"
# Shell completions where bash-completion, zsh and fish look for them.
completion() { install -D -m 644 /dev/stdin "$out/kvctl/$2" < <("$tdir/release/kvctl" completion "$1"); }
completion bash usr/share/bash-completion/completions/kvctl
completion zsh usr/share/zsh/vendor-completions/_kvctl
completion fish usr/share/fish/vendor_completions.d/kvctl.fish
install -D -m 644 packaging/examples/nginx.conf "$out/kvctl/usr/share/doc/kvctl/examples/nginx.conf"
for s in postinst prerm; do install -m 755 "packaging/debian/kvctl.$s" "$out/kvctl/DEBIAN/$s"; done
control kvctl admin "Depends: $(shlibs "$out/kvctl/usr/bin/kvctl")
Description: command-line client of a kv cluster
 kvctl is the operator's CLI of kv: members, status, health, snapshots,
 tokens, data, watches and benchmarks. kv-watch@.service runs a command
 when the keys under a prefix change (reloading a service in order with
 its kvfs mount)."
