//! Data dirs and snapshot files of kvd 0.1 (data dir format 1, KVSNAP01,
//! both in bincode 1's layout) still load, and a data dir of a newer
//! format is refused (see kvd's crate::format). The fixtures and what kvd
//! 0.1 answered about them are under tests/fixtures/kvd-0.1/ (its make.sh).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kv_tests::{bin, Kvd};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/kvd-0.1").join(name)
}

fn json_fixture(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture(name)).expect("read fixture")).expect("fixture JSON")
}

/// kvd 0.1's stopped data dir, unpacked into `into` as `into/data`.
fn unpack_data_dir(into: &Path) -> PathBuf {
    let st = Command::new("tar").arg("-xzf").arg(fixture("data.tar.gz")).arg("-C").arg(into).status().expect("tar");
    assert!(st.success(), "unpacking the fixture failed");
    into.join("data")
}

async fn get_json(url: &str, token: Option<&str>) -> Value {
    let mut r = crate::http().get(url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().await.expect("request");
    assert_eq!(resp.status(), 200, "{url}");
    resp.json().await.expect("JSON")
}

/// Every entry with its value, kind, mode and revisions, and the revision.
async fn listing(k: &Kvd) -> (Vec<Value>, u64) {
    let v = get_json(&format!("{}/v1/list/?recursive=true&values=true", k.url), None).await;
    (v["entries"].as_array().expect("entries").clone(), v["revision"].as_u64().expect("revision"))
}

/// A key's history as kvd 0.1 answered it, less the current revision.
async fn history(k: &Kvd, key: &str) -> Value {
    without_revision(get_json(&format!("{}/v1/history/{key}", k.url), None).await)
}

/// `v` less its `revision` field.
fn without_revision(mut v: Value) -> Value {
    v.as_object_mut().expect("object").remove("revision");
    v
}

/// What kvd 0.1 answered as this kvd answers it: every entry with access
/// and change times, which a data dir of before kept none of, the mtime's.
fn with_times(v: &Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.iter().map(with_times).collect()),
        Value::Object(o) => {
            let mut o: serde_json::Map<String, Value> = o.iter().map(|(k, v)| (k.clone(), with_times(v))).collect();
            if let (Some(m), true) = (o.get("mtime_ns").cloned(), o.contains_key("kind")) {
                o.entry("atime_ns").or_insert(m.clone());
                o.entry("ctime_ns").or_insert(m);
            }
            Value::Object(o)
        }
        other => other.clone(),
    }
}

/// Checks that `k` serves what kvd 0.1 served, plus `added` entries (by key).
async fn serves_what_kvd_0_1_served(k: &Kvd, token: &str, added: &[&str], revision: u64) {
    let (entries, rev) = listing(k).await;
    assert_eq!(rev, revision);
    let old = json_fixture("list.json");
    let old_entries = old["entries"].as_array().expect("entries");
    let kept: Vec<Value> =
        entries.iter().filter(|e| !added.contains(&e["key"].as_str().unwrap_or(""))).cloned().collect();
    assert_eq!(
        kept,
        with_times(&Value::Array(old_entries.clone())).as_array().expect("entries").clone(),
        "the entries of kvd 0.1's data dir"
    );
    assert_eq!(entries.len(), old_entries.len() + added.len());
    assert!(old_entries.iter().any(|e| e["kind"] == "symlink") && old_entries.iter().any(|e| e["kind"] == "dir"));
    assert_eq!(history(k, "notes/a").await, with_times(&without_revision(json_fixture("history-a.json"))));
    assert_eq!(history(k, "notes/gone").await, with_times(&without_revision(json_fixture("history-gone.json"))));
    assert_eq!(get_json(&format!("{}/v1/auth/tokens", k.url), Some(token)).await, json_fixture("tokens.json"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_dir_of_kvd_0_1_is_upgraded_and_served() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = unpack_data_dir(tmp.path());
    let mut k = Kvd::on_dir(1, data, &["--auth", "writes"]);
    let token = k.admin_token();
    serves_what_kvd_0_1_served(&k, &token, &[], 8).await;
    assert!(k.log_text().contains("upgraded the data dir from format 1"), "{}", k.log_text());
    // Writes go on after the upgrade, and survive a restart.
    let c = k.client_with(Some(&token));
    let put = c.put("new/key", "after the upgrade", &Default::default()).await.expect("put");
    assert_eq!(put.revision, 9);
    assert_eq!(k.stop(), Some(0));
    k.start_again();
    k.wait_ready();
    serves_what_kvd_0_1_served(&k, &token, &["new/key"], 9).await;
    let v = c.with_endpoints(&[&k.url]).expect("client").get("new/key").await.expect("get").expect("present");
    assert_eq!(v.value.as_ref(), b"after the upgrade");
    assert_eq!(k.log_text().matches("upgraded the data dir").count(), 1, "upgraded once only");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_of_kvd_0_1_restores() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("restored");
    let out = Command::new(bin("kvd"))
        .args(["restore", "--id", "1", "--client-addr", "127.0.0.1:0", "--peer-addr", "127.0.0.1:0", "--snapshot"])
        .arg(fixture("backup.snap"))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("kvd restore");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let k = Kvd::on_dir(1, data, &[]);
    let (entries, rev) = listing(&k).await;
    assert_eq!(Value::Array(entries), with_times(&json_fixture("list.json")["entries"]));
    assert!(rev >= 8, "continues from the snapshot's revision: {rev}");
    let tokens = get_json(&format!("{}/v1/auth/tokens", k.url), None).await;
    let names: Vec<&str> = tokens.as_array().expect("tokens").iter().filter_map(|t| t["name"].as_str()).collect();
    assert!(names.contains(&"reader"), "{tokens}");
    assert!(crate::put(&k.url, "after", "restore").await > rev, "a working one-member cluster");
}

/// Runs kvd to its exit (killed after 30 s); its exit code and stderr.
fn run_kvd(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let mut child = Command::new(bin("kvd"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvd");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Every record of the data dir's database, read with fjall alone.
fn records(data: &Path) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let db = fjall::Database::builder(data.join("db")).open().expect("open the database");
    let mut out = vec![];
    for name in ["log", "raft", "sm_meta", "data", "events", "revisions", "dedup", "sys"] {
        let ks = db.keyspace(name, fjall::KeyspaceCreateOptions::default).expect("keyspace");
        for item in ks.iter() {
            let (k, v) = item.into_inner().expect("read");
            out.push((name.to_owned(), k.to_vec(), v.to_vec()));
        }
    }
    out
}

#[test]
fn a_data_dir_of_a_newer_format_is_refused_and_left_alone() {
    let mut k = Kvd::bootstrap(&[]);
    crate::put_sync(&k, "a", "1");
    assert_eq!(k.stop(), Some(0));
    let data = k.data_dir.clone();
    {
        let db = fjall::Database::builder(data.join("db")).open().expect("open the database");
        let raft = db.keyspace("raft", fjall::KeyspaceCreateOptions::default).expect("keyspace");
        assert_eq!(raft.get("format").expect("get").as_deref(), Some(3u32.to_be_bytes().as_slice()));
        raft.insert("format", 4u32.to_be_bytes()).expect("mark");
        db.persist(fjall::PersistMode::SyncData).expect("persist");
    }
    let before = records(&data);
    let arg = |s: &str| std::ffi::OsString::from(s);
    let args = [arg("--id"), arg("1"), arg("--data-dir"), data.clone().into_os_string()];
    let args: Vec<&std::ffi::OsStr> = args
        .iter()
        .map(|a| a.as_os_str())
        .chain(["--client-addr", "127.0.0.1:0", "--peer-addr", "127.0.0.1:0"].map(std::ffi::OsStr::new))
        .collect();
    let (code, stderr) = run_kvd(&args);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("the data dir is in format 4, newer than this kvd reads (formats 1 to 3)"), "{stderr}");
    assert_eq!(records(&data), before, "the refused data dir changed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_message_of_an_unknown_format_is_refused_naming_the_known_ones() {
    let k = Kvd::bootstrap(&[]);
    let url = format!("{}/peer/v1/hold-elections", k.peer_url);
    let r = crate::http().post(&url).header("x-kv-peer-format", "9").body(vec![0u8; 8]).send().await.expect("post");
    assert_eq!(r.status(), 415);
    assert_eq!(r.headers().get("x-kv-peer-formats").and_then(|v| v.to_str().ok()), Some("1 2 3"));
    let text = r.text().await.expect("text");
    assert!(text.contains("peer message format \"9\" is unknown") && text.contains("reads formats 1 2 3"), "{text}");
    // Formats 1 (kvd 0.1's, no header), 2 and 3 are answered, each in its own.
    for (format, body) in [(None, 0u64.to_le_bytes().to_vec()), (Some("2"), vec![0u8]), (Some("3"), vec![0u8])] {
        let mut req = crate::http().post(&url).body(body);
        if let Some(f) = format {
            req = req.header("x-kv-peer-format", f);
        }
        let r = req.send().await.expect("post");
        assert_eq!(r.status(), 200, "format {format:?}");
        let answered_in = r.headers().get("x-kv-peer-format").and_then(|v| v.to_str().ok());
        assert_eq!(answered_in, Some(format.unwrap_or("1")));
    }
}
