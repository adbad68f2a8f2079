//! Issue 24: the history as a product: who wrote each revision, a key's
//! versions, reads of a key and of a listing at a past revision, and watch
//! events that carry the entry before them.

use std::process::Command;

use kv_client::{Client, ErrorCode, EventType, ListOptions, TokenSpec};
use kv_tests::{bin, Kvd};

/// Runs kvctl against `k` with `token`; returns (exit code, stdout, stderr).
fn kvctl(k: &Kvd, token: &str, args: &[&str]) -> (i32, String, String) {
    crate::kvctl(&[&["--endpoints", &k.url, "--token", token], args].concat())
}

async fn value_at(c: &Client, key: &str, rev: u64) -> Option<String> {
    c.get_at(key, rev).await.expect("get at a revision").map(|v| String::from_utf8_lossy(&v.value).into_owned())
}

/// Keys and values of a recursive listing at `rev`.
async fn listing_at(c: &Client, prefix: &str, rev: u64) -> Vec<(String, String)> {
    let opts = ListOptions { recursive: true, values: true, rev: Some(rev), ..Default::default() };
    let l = c.list_all(prefix, &opts).await.expect("list at a revision");
    assert_eq!(l.revision, rev, "a past listing says which revision it shows");
    l.entries
        .into_iter()
        .map(|e| {
            let v = String::from_utf8_lossy(&e.value_bytes().unwrap_or_default()).into_owned();
            (e.key, v)
        })
        .collect()
}

#[tokio::test]
async fn a_keys_versions_name_their_writers_and_past_revisions_read_back() {
    let k = Kvd::bootstrap(&["--auth", "writes"]);
    let admin_token = k.admin_token();
    let admin = k.client_with(Some(&admin_token));
    let spec = TokenSpec { name: "deployer".into(), read: vec![], write: vec!["app".into()], admin: false };
    let deployer_token = admin.create_token(&spec).await.expect("token").token;
    let deployer = k.client_with(Some(&deployer_token));

    let r1 = admin.put("app/a.conf", "one", &Default::default()).await.expect("put").revision;
    let r2 = deployer.put("app/b.conf", "b", &Default::default()).await.expect("put").revision;
    let r3 = deployer.put("app/a.conf", "two", &Default::default()).await.expect("put").revision;
    let r4 = admin.delete("app/b.conf", false, None).await.expect("delete").revision;
    let r5 = deployer.put("app/a.conf", "three", &Default::default()).await.expect("put").revision;

    // Versions, newest first, with their writers; a delete is a version.
    let h = admin.history("app/a.conf", None).await.expect("history");
    let seen: Vec<(u64, Option<&str>, bool)> =
        h.versions.iter().map(|v| (v.revision, v.writer.as_deref(), v.deleted)).collect();
    assert_eq!(seen, [(r5, Some("deployer"), false), (r3, Some("deployer"), false), (r1, Some("admin"), false)]);
    assert!(h.versions.iter().all(|v| v.time_ns.is_some_and(|t| t > 0)), "each version has its time");
    let b = admin.history("app/b.conf", None).await.expect("history");
    assert_eq!(b.versions.iter().map(|v| (v.revision, v.deleted)).collect::<Vec<_>>(), [(r4, true), (r2, false)]);

    // A key and a listing as they were.
    assert_eq!(value_at(&admin, "app/a.conf", r1).await.as_deref(), Some("one"));
    assert_eq!(value_at(&admin, "app/a.conf", r2).await.as_deref(), Some("one"));
    assert_eq!(value_at(&admin, "app/a.conf", r4).await.as_deref(), Some("two"));
    assert_eq!(value_at(&admin, "app/b.conf", r3).await.as_deref(), Some("b"));
    assert_eq!(value_at(&admin, "app/b.conf", r4).await, None, "deleted then");
    assert_eq!(value_at(&admin, "app/b.conf", r1).await, None, "not yet written then");
    let pairs = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    assert_eq!(listing_at(&admin, "app", r3).await, pairs(&[("app/a.conf", "two"), ("app/b.conf", "b")]));
    assert_eq!(listing_at(&admin, "app", r5).await, pairs(&[("app/a.conf", "three")]));
    let ahead = admin.get_at("app/a.conf", r5 + 10).await.expect_err("a revision not reached yet");
    assert_eq!(ahead.code(), Some(&ErrorCode::BadQuery), "{ahead}");

    // kvctl: history and get --rev.
    let (code, out, err) = kvctl(&k, &admin_token, &["history", "app/a.conf"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("REV"), "{out}");
    assert!(lines[1].starts_with(&r5.to_string()) && lines[1].contains("deployer"), "{out}");
    assert!(lines[3].starts_with(&r1.to_string()) && lines[3].contains("admin"), "{out}");
    let (code, out, err) = kvctl(&k, &admin_token, &["get", "app/a.conf", "--rev", &r3.to_string()]);
    assert_eq!((code, out.as_str()), (0, "two"), "{err}");
    let (code, _, err) = kvctl(&k, &admin_token, &["get", "app/b.conf", "--rev", &r1.to_string()]);
    assert_eq!(code, 1);
    assert!(err.contains("did not exist at revision"), "{err}");
    let (code, out, err) = kvctl(&k, &admin_token, &["ls", "app", "-r", "--rev", &r3.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("app/a.conf") && out.contains("app/b.conf"), "{out}");
}

#[tokio::test]
async fn reads_before_the_history_are_compacted() {
    let k = Kvd::bootstrap(&["--history-revisions", "3"]);
    let c = k.client();
    let mut revs = vec![];
    for i in 0..6 {
        revs.push(c.put("k", format!("v{i}"), &Default::default()).await.expect("put").revision);
    }
    assert_eq!(value_at(&c, "k", revs[4]).await.as_deref(), Some("v4"));
    let e = c.get_at("k", revs[0]).await.expect_err("beyond the history");
    assert_eq!(e.code(), Some(&ErrorCode::Compacted), "{e}");
    let opts = ListOptions { rev: Some(revs[0]), ..Default::default() };
    let e = c.list("", &opts).await.expect_err("beyond the history");
    assert_eq!(e.code(), Some(&ErrorCode::Compacted), "{e}");
    let h = c.history("k", None).await.expect("history");
    assert_eq!(h.versions.len(), 3, "only what the history holds: {h:?}");
    assert_eq!(h.versions[0].writer.as_deref(), Some("anonymous"), "without auth, writes are anonymous");
    assert!(h.compact >= revs[2], "{h:?}");
}

#[tokio::test]
async fn watch_events_carry_the_entry_before_when_asked() {
    let k = Kvd::bootstrap(&[]);
    let c = k.client();
    let start = c.put("app/x", "old", &Default::default()).await.expect("put").revision;
    c.put("app/x", "new", &Default::default()).await.expect("put");
    c.delete("app/x", false, None).await.expect("delete");
    c.put("app/y", "fresh", &Default::default()).await.expect("put");
    let mut with = c.watch_opts("app", Some(start), true).await.expect("watch");
    let mut without = c.watch_opts("app", Some(start), false).await.expect("watch");
    let mut seen = vec![];
    for _ in 0..3 {
        let ev = with.next().await.expect("event").expect("open");
        let plain = without.next().await.expect("event").expect("open");
        assert_eq!(plain.prev, None, "only streams that ask get the entry before");
        let prev = ev.prev.as_ref().map(|p| String::from_utf8_lossy(&p.value_bytes().unwrap_or_default()).into_owned());
        seen.push((ev.kind, ev.key.clone(), prev));
    }
    assert_eq!(
        seen,
        [
            (EventType::Put, "app/x".to_owned(), Some("old".to_owned())),
            (EventType::Delete, "app/x".to_owned(), Some("new".to_owned())),
            (EventType::Put, "app/y".to_owned(), None),
        ]
    );
}

/// Keys and values of `prefix` now.
async fn listing_now(c: &Client, prefix: &str) -> Vec<(String, String)> {
    let r = c.list("", &ListOptions { recursive: true, ..Default::default() }).await.expect("list").revision;
    listing_at(c, prefix, r).await
}

#[tokio::test]
async fn rollback_makes_a_prefix_what_it_was_and_diff_shows_the_change() {
    let k = Kvd::bootstrap(&["--auth", "writes"]);
    let admin_token = k.admin_token();
    let c = k.client_with(Some(&admin_token));
    c.put("app/a.conf", "listen 80;\n", &Default::default()).await.expect("put");
    c.put("app/old.conf", "old\n", &Default::default()).await.expect("put");
    c.put("other/x", "untouched", &Default::default()).await.expect("put");
    let good = c.put("app/b.conf", "b\n", &Default::default()).await.expect("put").revision;
    let want = listing_at(&c, "app", good).await;
    c.put("app/a.conf", "listen 8080;\n", &Default::default()).await.expect("put");
    c.delete("app/old.conf", false, None).await.expect("delete");
    c.put("app/new.conf", "new\n", &Default::default()).await.expect("put");
    c.put("other/x", "changed elsewhere", &Default::default()).await.expect("put");

    let (code, out, err) = kvctl(&k, &admin_token, &["diff", "app", &good.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("-listen 80;") && out.contains("+listen 8080;"), "{out}");
    assert!(out.contains("app/old.conf") && out.contains("app/new.conf"), "{out}");
    let (code, out, _) = kvctl(&k, &admin_token, &["diff", "app/a.conf", &good.to_string()]);
    assert_eq!(code, 0);
    assert!(out.contains("-listen 80;") && out.contains("+listen 8080;"), "a key's own diff: {out}");

    let before = listing_now(&c, "app").await;
    let (code, out, err) = kvctl(&k, &admin_token, &["rollback", "app", "--to", &good.to_string(), "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dry run"), "{out}");
    assert_eq!(listing_now(&c, "app").await, before, "a dry run writes nothing");

    // A change after the reviewed revision, even a delete, refuses it.
    let reviewed = c.put("app/late.conf", "late\n", &Default::default()).await.expect("put").revision;
    c.delete("app/late.conf", false, None).await.expect("delete");
    let before = listing_now(&c, "app").await;
    let args = ["rollback", "app", "--to", &good.to_string(), "--if-rev", &reviewed.to_string()];
    let (code, _, err) = kvctl(&k, &admin_token, &args);
    assert_eq!(code, 3, "a change after --if-rev refuses the rollback: {err}");
    assert!(err.contains("nothing was written"), "{err}");
    assert_eq!(listing_now(&c, "app").await, before, "a refused rollback writes nothing");

    let (code, out, err) = kvctl(&k, &admin_token, &["rollback", "app", "--to", &good.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rolled back"), "{out}");
    assert_eq!(listing_now(&c, "app").await, want, "the prefix is what it was");
    assert_eq!(c.get("other/x").await.expect("get").expect("kept").value, "changed elsewhere");
    let (code, out, _) = kvctl(&k, &admin_token, &["rollback", "app", "--to", &good.to_string()]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to roll back"), "{out}");
    let (code, _, err) = kvctl(&k, &admin_token, &["rollback", "app", "--to", "999999"]);
    assert_eq!(code, 1, "a revision not reached yet: {err}");
}

#[tokio::test]
async fn a_rollback_racing_writers_applies_whole_or_not_at_all() {
    let k = Kvd::bootstrap(&[]);
    let c = k.client();
    c.put("app/x", "0", &Default::default()).await.expect("put");
    let target = c.put("app/y", "0", &Default::default()).await.expect("put").revision;
    let want = listing_at(&c, "app", target).await;
    let writer = k.client();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let w = tokio::spawn(async move {
        let mut i = 1u64;
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            writer.put("app/x", i.to_string(), &Default::default()).await.expect("writer");
            i += 1;
        }
    });
    let (mut applied, mut refused) = (0, 0);
    for _ in 0..20 {
        let out = Command::new(bin("kvctl"))
            .args(["--endpoints", &k.url, "-o", "json", "rollback", "app", "--to", &target.to_string()])
            .env_remove("KVCTL_TOKEN")
            .env_remove("KVCTL_ENDPOINTS")
            .output()
            .expect("kvctl");
        match out.status.code() {
            Some(0) => {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
                if let Some(rev) = v["revision"].as_u64().filter(|_| v.get("dry_run").is_none()) {
                    assert_eq!(listing_at(&c, "app", rev).await, want, "a rollback that applied is whole");
                }
                applied += 1;
            }
            Some(3) => refused += 1,
            other => panic!("unexpected exit {other:?}: {}", String::from_utf8_lossy(&out.stderr)),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    w.await.expect("writer");
    assert_eq!(applied + refused, 20);
}

#[tokio::test]
async fn kvctl_watch_prev_prints_the_entry_before() {
    use std::io::BufRead;
    let k = Kvd::bootstrap(&[]);
    let c = k.client();
    let start = c.put("app/x", "old\n", &Default::default()).await.expect("put").revision;
    c.put("app/x", "new\n", &Default::default()).await.expect("put");
    let mut child = Command::new(bin("kvctl"))
        .args(["--endpoints", &k.url, "watch", "app", "--prev", "--rev", &start.to_string()])
        .env_remove("KVCTL_TOKEN")
        .env_remove("KVCTL_ENDPOINTS")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kvctl watch");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = String::new();
    while !seen.contains("+new") {
        match rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.contains("put app/x") && seen.contains("-old") && seen.contains("+new"), "{seen}");
}
