//! The kvctl binary: data commands through the client crate, exit codes.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use kv_tests::{bin, Kvd};

/// kvctl with `args` against `k`, its output captured.
pub(crate) fn command(k: &Kvd, args: &[impl AsRef<std::ffi::OsStr>]) -> Command {
    let mut c = Command::new(bin("kvctl"));
    c.arg("--endpoints").arg(&k.url).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn kvctl(k: &Kvd, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = command(k, args).stdin(Stdio::piped()).spawn().expect("run kvctl");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.unwrap_or_default()).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("kvctl output")
}

#[test]
fn data_commands_work_end_to_end() {
    let k = Kvd::bootstrap(&[]);
    let out = kvctl(&k, &["put", "app/name", "demo"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let blob: Vec<u8> = (0..=255u8).collect();
    let out = kvctl(&k, &["put", "app/blob", "-"], Some(&blob));
    assert!(out.status.success());
    let out = kvctl(&k, &["get", "app/blob"], None);
    assert_eq!(out.stdout, blob, "get writes the raw bytes");
    let out = kvctl(&k, &["get", "app/name"], None);
    assert_eq!(out.stdout, b"demo");

    let out = kvctl(&k, &["ls", "app"], None);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("KIND"), "{table}");
    assert!(table.contains("app/name") && table.contains("app/blob"), "{table}");
    let out = kvctl(&k, &["ls", "-o", "json", "-r"], None);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["entries"].as_array().map(Vec::len), Some(2));

    let out = kvctl(&k, &["del", "app", "--recursive"], None);
    assert!(out.status.success());
    let out = kvctl(&k, &["get", "app/name"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

#[test]
fn put_sets_the_mode_and_owner_a_mount_enforces_and_keeps_them_on_rewrite() {
    let k = Kvd::bootstrap(&[]);
    let meta = |key: &str| {
        let m = crate::mount::get(&k, key).expect(key).meta;
        (m.mode & 0o7777, m.uid, m.gid)
    };
    let out = kvctl(&k, &["put", "app/db.password", "-", "--mode", "0640", "--gid", "4711"], Some(b"s3cret"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(meta("app/db.password"), (0o640, 0, 4711));
    // A rewrite without them keeps them.
    assert!(kvctl(&k, &["put", "app/db.password", "n3w"], None).status.success());
    assert_eq!(meta("app/db.password"), (0o640, 0, 4711));
    assert!(kvctl(&k, &["put", "app/db.password", "n3w", "--uid", "998", "--mode", "600"], None).status.success());
    assert_eq!(meta("app/db.password"), (0o600, 998, 4711));
    // Bad input: a usage error, and nothing written.
    for bad in [["--mode", "0999"], ["--mode", "17777"], ["--mode", "rw"], ["--uid", "app"], ["--gid", "4294967296"]] {
        let out = kvctl(&k, &["put", "app/other", "x", bad[0], bad[1]], None);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(bad[0]),
            "{bad:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(crate::mount::get(&k, "app/other").is_none());
}

#[test]
fn exit_codes_follow_the_contract() {
    let k = Kvd::bootstrap(&[]);
    assert_eq!(kvctl(&k, &["frobnicate"], None).status.code(), Some(2));
    assert_eq!(kvctl(&k, &["get"], None).status.code(), Some(2));
    let out = kvctl(&k, &["put", "a//b", "x"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty segment"));
    let out = kvctl(&k, &["completion", "bash"], None);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("_kvctl"));
    for sub in [
        "get",
        "put",
        "del",
        "ls",
        "apply",
        "export",
        "watch",
        "status",
        "health",
        "member add",
        "leader transfer",
        "snapshot save",
        "bench put",
    ] {
        let mut args: Vec<&str> = sub.split(' ').collect();
        args.push("--help");
        let out = kvctl(&k, &args, None);
        assert!(String::from_utf8_lossy(&out.stdout).contains("Example"), "kvctl {sub} --help has no example");
    }
    // Nothing listens on port 1: a one-line reason and exit 1.
    let out =
        Command::new(bin("kvctl")).args(["--endpoints", "http://127.0.0.1:1", "get", "a"]).output().expect("run kvctl");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no endpoint could be reached"), "{err}");
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "kvctl failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

fn roles(v: &serde_json::Value) -> Vec<(u64, String)> {
    let mut r: Vec<(u64, String)> = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| (m["id"].as_u64().unwrap_or(0), m["status"]["role"].as_str().unwrap_or("unreachable").to_owned()))
        .collect();
    r.sort();
    r
}

#[test]
fn a_cluster_built_and_changed_with_kvctl_only() {
    let one = Kvd::bootstrap(&[]);
    let mut two = Kvd::empty(2, &[]);
    let mut three = Kvd::empty(3, &[]);
    for n in [&two, &three] {
        let out = kvctl(&one, &["member", "add", &n.id.to_string(), &n.peer_url, "--client-url", &n.url], None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    two.wait_ready();
    three.wait_ready();
    let status = json_of(&kvctl(&one, &["status", "-o", "json"], None));
    let r = roles(&status);
    assert_eq!(r.iter().filter(|(_, role)| role == "leader").count(), 1, "{r:?}");
    assert_eq!(r.iter().filter(|(_, role)| role == "follower").count(), 2, "{r:?}");
    let table = String::from_utf8_lossy(&kvctl(&one, &["status"], None).stdout).into_owned();
    assert!(table.starts_with("ID") && table.lines().count() == 4, "{table}");
    // Move the leader, through any member.
    let leader = status["leader"].as_u64().expect("leader");
    let target = if leader == 2 { 3 } else { 2 };
    let out = kvctl(&three, &["leader", "transfer", &target.to_string()], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json_of(&kvctl(&one, &["status", "-o", "json"], None))["leader"].as_u64(), Some(target));
    // Remove one, then add it back (wiped).
    let out = kvctl(&one, &["member", "remove", "3"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list = json_of(&kvctl(&one, &["member", "list", "-o", "json"], None));
    assert_eq!(list["members"].as_array().map(Vec::len), Some(2));
    // The removed node, still running, cannot answer linearizable reads
    // (503); a client with more endpoints moves on.
    crate::put_sync(&one, "after/removal", "1");
    let out = kvctl(&three, &["get", "after/removal"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 503"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(bin("kvctl"))
        .args(["--endpoints", &format!("{},{}", three.url, one.url), "get", "after/removal"])
        .output()
        .expect("kvctl");
    assert_eq!(out.stdout, b"1", "{}", String::from_utf8_lossy(&out.stderr));
    three.kill9();
    three.wipe();
    three.start_again();
    let out = kvctl(&two, &["member", "add", "3", &three.peer_url, "--client-url", &three.url], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    three.wait_ready();
    assert!(kvctl(&one, &["health"], None).status.success());
    // A member down: health exits 1 and names it.
    three.kill9();
    let out = kvctl(&one, &["health"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("node 3"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn watch_exec_runs_once_per_change_in_order() {
    let k = Kvd::bootstrap(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("events");
    let rev = crate::put_sync(&k, "other", "x");
    let mut child = Command::new(bin("kvctl"))
        .args(["--endpoints", &k.url, "watch", "app", "--rev", &rev.to_string(), "--exec"])
        .arg(format!("echo \"$KV_REVISION $KV_EVENT $KV_KEY\" >> {}", file.display()))
        .stdout(Stdio::null())
        .spawn()
        .expect("kvctl watch");
    for i in 0..20 {
        crate::put_sync(&k, &format!("app/k{i:02}"), "v");
    }
    let out = kvctl(&k, &["del", "app", "--recursive"], None);
    assert!(out.status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let lines = loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= 40 || std::time::Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(lines.len(), 40, "{lines:?}");
    for (i, l) in lines.iter().take(20).enumerate() {
        assert_eq!(l, &format!("{} put app/k{i:02}", rev + 1 + i as u64));
    }
    assert!(lines[20..].iter().all(|l| l.starts_with(&format!("{} delete app/k", rev + 21))));
}

/// Every key with its value and metadata, read through a node.
fn dump(k: &Kvd) -> Vec<(String, Option<String>, u32)> {
    let out = kvctl(k, &["ls", "-r", "-o", "json"], None);
    let v = json_of(&out);
    let c = k.client();
    let rt = tokio::runtime::Runtime::new().expect("rt");
    v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            let key = e["key"].as_str().expect("key").to_owned();
            let val = rt.block_on(c.get(&key)).expect("get").map(|v| String::from_utf8_lossy(&v.value).into_owned());
            (key, val, e["mode"].as_u64().unwrap_or(0) as u32)
        })
        .collect()
}

#[test]
fn snapshot_save_and_restore_give_an_identical_keyspace() {
    let k = Kvd::bootstrap(&[]);
    for i in 0..300 {
        crate::put_sync(&k, &format!("snap/{i:03}"), &format!("value {i}"));
    }
    let out = kvctl(&k, &["put", "bin", "-"], Some(&[0, 159, 146, 150]));
    assert!(out.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backup.snap");
    let out = kvctl(&k, &["snapshot", "save", file.to_str().expect("utf-8")], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let restore = |snap: &std::path::Path, data: &std::path::Path| {
        Command::new(bin("kvd"))
            .args(["restore", "--id", "1", "--client-addr", "127.0.0.1:0", "--peer-addr", "127.0.0.1:0", "--snapshot"])
            .arg(snap)
            .arg("--data-dir")
            .arg(data)
            .output()
            .expect("kvd restore")
    };
    // Corrupt and truncated files are refused and leave nothing behind.
    let bytes = std::fs::read(&file).expect("read");
    let bad = dir.path().join("bad.snap");
    for damaged in [bytes[..bytes.len() / 2].to_vec(), {
        let mut b = bytes.clone();
        let mid = b.len() / 2;
        b[mid] ^= 1;
        b
    }] {
        std::fs::write(&bad, damaged).expect("write");
        let target = dir.path().join("refused");
        let out = restore(&bad, &target);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("corrupt or truncated"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!target.exists(), "a refused restore left a data dir");
    }
    let data = dir.path().join("restored");
    let out = restore(&file, &data);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let restored = Kvd::on_dir(1, data, &[]);
    assert_eq!(dump(&restored), dump(&k));
    assert_eq!(dump(&restored).len(), 301);
    // The restored node is a working one-member cluster.
    crate::put_sync(&restored, "after", "restore");
}
