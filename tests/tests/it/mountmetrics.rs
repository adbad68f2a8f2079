//! A mount's metrics (`-o metrics_addr=`) and the counters of its status
//! file, on a real cluster and a real FUSE mount.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use kv_tests::{bin, is_mounted, Kvd, Mount};

use crate::mount::eventually;

/// One sample of the exposition: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// GETs `path` from `addr`: the status code and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics address");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    (code, body.to_owned())
}

/// Parses the Prometheus text format: every sample line, and the TYPE of
/// every family.
fn parse(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
    let mut samples = Vec::new();
    let mut types = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').expect("TYPE name kind");
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        // NOTE: the label values here hold no commas or quotes.
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').expect("label=value");
            map.insert(k.to_owned(), v.trim_matches('"').to_owned());
        }
        samples.push((name.to_owned(), map, value));
    }
    (samples, types)
}

/// The value of the one sample named `name` whose labels include `with`.
fn value(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<f64> = samples
        .iter()
        .filter(|(n, l, _)| n == name && with.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, _, v)| *v)
        .collect();
    assert!(found.len() <= 1, "{name} {with:?} is there {} times", found.len());
    found.first().copied()
}

fn scrape(addr: &str) -> Vec<Sample> {
    let (code, body) = get(addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    parse(&body).0
}

fn cluster_revision(k: &Kvd) -> u64 {
    tokio::runtime::Runtime::new().expect("rt").block_on(crate::revision(&k.url))
}

#[test]
fn a_mount_serves_its_revision_commits_failures_and_connection_as_prometheus_text() {
    let mut k = Kvd::bootstrap(&["--max-value-size", "1000"]);
    crate::put_sync(&k, "app/seed", "1");
    let m = Mount::start(&format!("{}/app", k.url), &["metrics_addr=127.0.0.1:0"]);
    let addr = m.status()["metrics_addr"].as_str().expect("the status file tells the metrics address").to_owned();
    assert!(addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"), "{addr}");
    m.sh_ok("echo hello > greeting");
    // A value over the cluster's limit: the close reports EFBIG.
    let out = m.sh("head -c 1001 /dev/zero > big");
    assert!(String::from_utf8_lossy(&out.stderr).contains("File too large"), "{out:?}");
    let rev = cluster_revision(&k);
    eventually("the mount serves the cluster's revision", || {
        value(&scrape(&addr), "kvfs_revision", &[]) == Some(rev as f64)
    });

    let (code, body) = get(&addr, "/metrics");
    assert_eq!(code, 200);
    let (samples, types) = parse(&body);
    let mountpoint = std::fs::canonicalize(&m.dir).expect("realpath").display().to_string();
    for (name, labels, _) in &samples {
        assert_eq!(labels.get("mountpoint"), Some(&mountpoint), "{name} {labels:?}");
        assert_eq!(labels.get("prefix").map(String::as_str), Some("app"), "{name} {labels:?}");
    }
    let v = |name: &str, with: &[(&str, &str)]| value(&samples, name, with).unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(v("kvfs_revision", &[]), rev as f64);
    assert_eq!(v("kvfs_connected", &[]), 1.0);
    assert_eq!(v("kvfs_staleness_seconds", &[]), 0.0);
    assert_eq!(v("kvfs_reconnects_total", &[]), 0.0);
    // The greeting and the refused big file (the seed came from the API).
    assert_eq!(v("kvfs_commits_total", &[]), 2.0, "{body}");
    assert_eq!(v("kvfs_commit_failures_total", &[("errno", "EFBIG")]), 1.0, "{body}");
    assert_eq!(v("kvfs_commit_failures_total", &[("errno", "EIO")]), 0.0, "{body}");
    assert!(v("kvfs_invalidations_queued", &[]) >= 0.0);
    assert_eq!(v("kvfs_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    for (family, kind) in [
        ("kvfs_revision", "gauge"),
        ("kvfs_staleness_seconds", "gauge"),
        ("kvfs_connected", "gauge"),
        ("kvfs_invalidations_queued", "gauge"),
        ("kvfs_reconnects_total", "counter"),
        ("kvfs_commits_total", "counter"),
        ("kvfs_commit_failures_total", "counter"),
        ("kvfs_build_info", "gauge"),
    ] {
        assert_eq!(types.get(family).map(String::as_str), Some(kind), "{family}:\n{body}");
    }
    assert_eq!(get(&addr, "/").0, 404);

    // The status file holds the same counters (as of the last second).
    eventually("the status file counts the commits", || {
        let s = m.status();
        s["commits"] == 2 && s["commit_failures"]["EFBIG"] == 1
    });
    let s = m.status();
    assert_eq!((s["revision"].as_u64(), &s["connected"]), (Some(rev), &serde_json::Value::Bool(true)));
    assert_eq!((s["staleness_seconds"].as_u64(), s["reconnects"].as_u64()), (Some(0), Some(0)), "{s}");
    assert!(s["invalidations_queued"].is_u64(), "{s}");
    assert_eq!(s["prefix"], "app");

    // The cluster goes away: disconnected and stale; it comes back: one
    // reconnect.
    k.stop();
    eventually("the mount counts itself disconnected and stale", || {
        let s = scrape(&addr);
        value(&s, "kvfs_connected", &[]) == Some(0.0)
            && value(&s, "kvfs_staleness_seconds", &[]).is_some_and(|x| x >= 1.0)
    });
    eventually("the status file tells the staleness", || m.status()["staleness_seconds"].as_u64() >= Some(1));
    k.start_again();
    k.wait_ready();
    eventually("the mount reconnects", || {
        let s = scrape(&addr);
        value(&s, "kvfs_connected", &[]) == Some(1.0)
            && value(&s, "kvfs_reconnects_total", &[]) == Some(1.0)
            && value(&s, "kvfs_staleness_seconds", &[]) == Some(0.0)
    });
    eventually("the status file counts the reconnect", || m.status()["reconnects"] == 1);
}

/// The status file in `dir`, parsed.
fn status_in(dir: &Path) -> serde_json::Value {
    let f = std::fs::read_dir(dir)
        .expect("status dir")
        .filter_map(Result::ok)
        .find(|e| e.path().extension().is_some_and(|x| x == "status"))
        .expect("status file");
    serde_json::from_slice(&std::fs::read(f.path()).expect("read")).expect("json")
}

#[test]
fn the_mount_helper_takes_metrics_addr_and_the_endpoint_ends_with_the_mount() {
    let k = Kvd::bootstrap(&[]);
    crate::put_sync(&k, "app/x", "1");
    let tmp = tempfile::tempdir().expect("tempdir");
    let helper = tmp.path().join("mount.fuse.kvfs");
    std::os::unix::fs::symlink(bin("kvfs"), &helper).expect("symlink");
    let dir = tmp.path().join("mnt");
    std::fs::create_dir(&dir).expect("mkdir");
    let status_dir = tmp.path().join("status");
    // As an fstab line has it: mount(8)'s order, options it ignores.
    // (The daemon keeps stderr: a file, not a pipe to wait on.)
    let log = tmp.path().join("kvfs.log");
    let status = Command::new(&helper)
        .arg(format!("{}/app", k.url))
        .arg(&dir)
        .args(["-o", &format!("_netdev,metrics_addr=127.0.0.1:0,status_dir={}", status_dir.display())])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .status()
        .expect("mount.fuse.kvfs");
    assert!(status.success(), "{}", std::fs::read_to_string(&log).unwrap_or_default());
    let s = status_in(&status_dir);
    let addr = s["metrics_addr"].as_str().expect("metrics_addr").to_owned();
    let pid = s["pid"].as_u64().expect("pid");
    let samples = scrape(&addr);
    assert_eq!(value(&samples, "kvfs_connected", &[]), Some(1.0));
    // Unmounted from outside: kvfs exits, and nothing answers there any more.
    assert!(Command::new("umount").arg(&dir).status().expect("umount").success());
    eventually("kvfs exits after an outside unmount", || !Path::new(&format!("/proc/{pid}")).exists());
    assert!(std::net::TcpStream::connect(&addr).is_err(), "the metrics endpoint outlived the mount");
}

#[test]
fn a_bad_or_busy_metrics_addr_fails_the_mount_and_mounts_nothing() {
    let k = Kvd::bootstrap(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("mnt");
    std::fs::create_dir(&dir).expect("mkdir");
    let status_dir = tmp.path().join("status");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = taken.local_addr().expect("addr").to_string();
    let helper = tmp.path().join("mount.fuse.kvfs");
    std::os::unix::fs::symlink(bin("kvfs"), &helper).expect("symlink");
    let kvfs = |opt: &str| {
        let o = format!("{opt},status_dir={}", status_dir.display());
        Command::new(bin("kvfs")).args(["-f", "-o", &o]).arg(format!("{}/app", k.url)).arg(&dir).output().expect("kvfs")
    };
    let mount_helper = |opt: &str| {
        let o = format!("{opt},status_dir={}", status_dir.display());
        Command::new(&helper).arg(format!("{}/app", k.url)).arg(&dir).args(["-o", &o]).output().expect("mount helper")
    };
    for (out, code, says) in [
        (kvfs("metrics_addr=nope"), 2, "metrics_addr=nope: expected HOST:PORT".to_owned()),
        (kvfs("metrics_addr=127.0.0.1:99999"), 2, "metrics_addr=127.0.0.1:99999: expected HOST:PORT".to_owned()),
        (kvfs("metrics_addr"), 2, "metrics_addr needs a value".to_owned()),
        (mount_helper("metrics_addr=nope"), 2, "metrics_addr=nope: expected HOST:PORT".to_owned()),
        (kvfs(&format!("metrics_addr={busy}")), 1, format!("metrics_addr={busy}: cannot listen")),
        (mount_helper(&format!("metrics_addr={busy}")), 1, format!("metrics_addr={busy}: cannot listen")),
    ] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{err}");
        assert!(err.contains(&says), "{says:?} not in {err}");
        assert!(!is_mounted(&dir), "mounted despite: {err}");
        assert!(!status_dir.exists() || std::fs::read_dir(&status_dir).expect("dir").next().is_none(), "{err}");
    }
}
