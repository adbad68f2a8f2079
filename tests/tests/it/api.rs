//! Every client API call against one real node: reads, writes, conditional
//! requests, listing, transactions, health and metrics.

use kv_client::ListOptions;
use kv_tests::Kvd;

use crate::{http, put, revision, status_and_code};

#[tokio::test]
async fn put_get_head_delete_round_trip() {
    let k = Kvd::bootstrap(&[]);
    let rev = put(&k.url, "app/db/url", "postgres://db").await;
    let r = http().get(format!("{}/v1/kv/app/db/url", k.url)).send().await.expect("get");
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["etag"], format!("\"{rev}\"").as_str());
    assert_eq!(h["x-kv-kind"], "file");
    assert_eq!(h["x-kv-mode"], "0644");
    assert_eq!(h["x-kv-version"], "1");
    assert_eq!(h["x-kv-create-revision"], rev.to_string().as_str());
    assert!(h.contains_key("last-modified"));
    assert_eq!(r.bytes().await.expect("body"), "postgres://db");

    let r = http().head(format!("{}/v1/kv/app/db/url", k.url)).send().await.expect("head");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "13");
    assert_eq!(r.headers()["x-kv-mod-revision"], rev.to_string().as_str());
    assert!(r.bytes().await.expect("body").is_empty());

    let r = http().delete(format!("{}/v1/kv/app/db/url", k.url)).send().await.expect("delete");
    assert_eq!(r.status(), 200);
    let r = http().get(format!("{}/v1/kv/app/db/url", k.url)).send().await.expect("get");
    assert_eq!(status_and_code(r).await, (404, "not_found".into()));
    let r = http().delete(format!("{}/v1/kv/app/db/url", k.url)).send().await.expect("delete");
    assert_eq!(status_and_code(r).await, (404, "not_found".into()));
}

#[tokio::test]
async fn binary_values_and_stale_reads_round_trip() {
    let k = Kvd::bootstrap(&[]);
    let c = k.client();
    let value: Vec<u8> = (0..=255u8).chain([0, 0xff, b'\n']).collect();
    c.put("bin/blob", value.clone(), &Default::default()).await.expect("put");
    let got = c.get("bin/blob").await.expect("get").expect("exists");
    assert_eq!(got.value.as_ref(), value.as_slice());
    assert_eq!(got.meta.size, value.len() as u64);
    let stale = c.get_opts("bin/blob", true).await.expect("get").expect("exists");
    assert_eq!(stale.value, got.value);
    let key = "sp ace/q?x#y%z/ü";
    c.put(key, "odd", &Default::default()).await.expect("put odd key");
    assert_eq!(c.get(key).await.expect("get").expect("exists").value.as_ref(), b"odd");
}

#[tokio::test]
async fn conditional_requests() {
    let k = Kvd::bootstrap(&[]);
    let url = format!("{}/v1/kv/cfg", k.url);
    let rev = put(&k.url, "cfg", "one").await;
    let etag = format!("\"{rev}\"");

    let r = http().get(&url).header("if-none-match", &etag).send().await.expect("get");
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], etag.as_str());
    let r = http().get(&url).header("if-none-match", "\"999\"").send().await.expect("get");
    assert_eq!(r.status(), 200);

    let r = http().put(&url).header("if-match", "\"999\"").body("two").send().await.expect("put");
    assert_eq!(status_and_code(r).await, (412, "compare_failed".into()));
    assert_eq!(k.client().get("cfg").await.expect("get").expect("exists").value.as_ref(), b"one");

    let r = http().put(&url).header("if-match", &etag).body("two").send().await.expect("put");
    assert_eq!(r.status(), 200);
    let r = http().put(&url).header("if-none-match", "*").body("three").send().await.expect("put");
    assert_eq!(status_and_code(r).await, (412, "compare_failed".into()));
    let r = http()
        .put(format!("{}/v1/kv/fresh", k.url))
        .header("if-none-match", "*")
        .body("new")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);

    let r = http().delete(&url).header("if-match", &etag).send().await.expect("delete");
    assert_eq!(status_and_code(r).await, (412, "compare_failed".into()));
    assert_eq!(k.client().get("cfg").await.expect("get").expect("exists").value.as_ref(), b"two");
}

#[tokio::test]
async fn attributes_are_stored_and_kept() {
    let k = Kvd::bootstrap(&[]);
    let url = format!("{}/v1/kv/etc/secret", k.url);
    let r = http()
        .put(&url)
        .header("x-kv-mode", "600")
        .header("x-kv-uid", "1000")
        .header("x-kv-gid", "100")
        .header("x-kv-mtime", "1700000000123456789")
        .body("s3cret")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let first = k.client().get("etc/secret").await.expect("get").expect("exists");
    assert_eq!((first.meta.mode, first.meta.uid, first.meta.gid), (0o600, 1000, 100));
    assert_eq!(first.meta.mtime_ns, 1_700_000_000_123_456_789);

    // A later plain write keeps mode and owner, bumps version and mtime.
    put(&k.url, "etc/secret", "rotated").await;
    let second = k.client().get("etc/secret").await.expect("get").expect("exists");
    assert_eq!((second.meta.mode, second.meta.uid, second.meta.gid), (0o600, 1000, 100));
    assert_eq!(second.meta.version, 2);
    assert_eq!(second.meta.create_revision, first.meta.create_revision);
    assert!(second.meta.mod_revision > first.meta.mod_revision);
    assert_ne!(second.meta.mtime_ns, first.meta.mtime_ns);

    let r = http()
        .put(format!("{}/v1/kv/etc/link", k.url))
        .header("x-kv-kind", "symlink")
        .body("secret")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let link = k.client().get("etc/link").await.expect("get").expect("exists");
    assert_eq!((link.meta.kind, link.meta.mode), (kv_client::Kind::Symlink, 0o777));
}

#[tokio::test]
async fn list_children_recursive_and_paging() {
    let k = Kvd::bootstrap(&[]);
    for key in ["a/1", "a/2", "a/b/c", "a/b/d", "a/x.txt", "ab", "a/b", "a/b-c"] {
        put(&k.url, key, key).await;
    }
    let c = k.client();
    let r = c.list("a", &ListOptions::default()).await.expect("list");
    let names: Vec<(&str, &str)> = r.entries.iter().map(|e| (e.key.as_str(), e.meta.kind.as_str())).collect();
    assert_eq!(names, vec![("a/1", "file"), ("a/2", "file"), ("a/b", "file"), ("a/b-c", "file"), ("a/x.txt", "file")]);

    let rec = c.list("a", &ListOptions { recursive: true, values: true, ..Default::default() }).await.expect("list");
    let keys: Vec<&str> = rec.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, vec!["a/1", "a/2", "a/b", "a/b-c", "a/b/c", "a/b/d", "a/x.txt"]);
    assert_eq!(rec.entries[4].value.as_deref(), Some("a/b/c"));

    // Implied directories: nothing is stored at "d/e" itself; a subtree that
    // sorts after a longer sibling name ("e.txt" < "e/f") is still listed.
    put(&k.url, "d/e/f", "x").await;
    put(&k.url, "d/e.txt", "x").await;
    let r = c.list("d", &ListOptions { limit: Some(1), ..Default::default() }).await.expect("list");
    assert_eq!(r.entries.len(), 1);
    assert_eq!((r.entries[0].key.as_str(), r.entries[0].meta.kind), ("d/e", kv_client::Kind::Dir));
    assert_eq!(r.next_after.as_deref(), Some("e"));

    for recursive in [false, true] {
        let mut opts = ListOptions { recursive, limit: Some(2), ..Default::default() };
        let mut all = Vec::new();
        loop {
            let page = c.list("a", &opts).await.expect("page");
            assert!(page.entries.len() <= 2);
            all.extend(page.entries.into_iter().map(|e| e.key));
            match page.next_after {
                Some(n) if page.more => opts.after = Some(n),
                _ => break,
            }
        }
        let want: Vec<&str> = if recursive {
            vec!["a/1", "a/2", "a/b", "a/b-c", "a/b/c", "a/b/d", "a/x.txt"]
        } else {
            vec!["a/1", "a/2", "a/b", "a/b-c", "a/x.txt"]
        };
        assert_eq!(all, want, "recursive={recursive}");
    }
    let whole = c.list("", &ListOptions::default()).await.expect("root");
    let top: Vec<&str> = whole.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(top, vec!["a", "ab", "d"]);
}

#[tokio::test]
async fn recursive_delete_is_one_atomic_revision() {
    let k = Kvd::bootstrap(&[]);
    for key in ["t", "t/1", "t/2/3", "t/4", "tt"] {
        put(&k.url, key, "v").await;
    }
    let before = revision(&k.url).await;
    let r = k.client().delete("t", true, None).await.expect("delete");
    assert_eq!(r.revision, before + 1);
    assert_eq!(r.results[0].deleted, Some(4));
    let left = k.client().list("", &ListOptions { recursive: true, ..Default::default() }).await.expect("list");
    let keys: Vec<&str> = left.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, vec!["tt"]);
}

#[tokio::test]
async fn transactions_compare_then_write_atomically() {
    let k = Kvd::bootstrap(&[]);
    let rev = put(&k.url, "lock", "free").await;
    let txn = |cmp_rev: u64| {
        serde_json::json!({
            "compare": [{"key": "lock", "mod_revision": cmp_rev}, {"key": "new", "exists": false}],
            "success": [{"op": "put", "key": "lock", "value": "held"},
                        {"op": "put", "key": "new", "value_base64": "AP8="},
                        {"op": "put", "key": "new", "mode": 384}],
            "failure": [{"op": "put", "key": "lost", "value": "1"}]
        })
    };
    let r = http().post(format!("{}/v1/txn", k.url)).json(&txn(rev)).send().await.expect("txn");
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["succeeded"], true);
    assert_eq!(body["revision"], rev + 1, "a transaction raises the revision once");
    assert_eq!(body["results"].as_array().map(Vec::len), Some(3));
    let new = k.client().get("new").await.expect("get").expect("exists");
    assert_eq!(new.value.as_ref(), &[0x00, 0xff]);
    assert_eq!((new.meta.mode, new.meta.version), (0o600, 2));

    let r = http().post(format!("{}/v1/txn", k.url)).json(&txn(rev)).send().await.expect("txn");
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["succeeded"], false);
    assert_eq!(k.client().get("lost").await.expect("get").expect("exists").value.as_ref(), b"1");
    assert_eq!(k.client().get("lock").await.expect("get").expect("exists").value.as_ref(), b"held");
}

#[tokio::test]
async fn health_metrics_and_unknown_endpoints() {
    let k = Kvd::bootstrap(&[]);
    put(&k.url, "m", "1").await;
    let r = http().get(format!("{}/health/live", k.url)).send().await.expect("live");
    assert_eq!(r.status(), 200);
    let r = http().get(format!("{}/health/ready", k.url)).send().await.expect("ready");
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["status"], "ready");
    let text = http().get(format!("{}/metrics", k.url)).send().await.expect("metrics").text().await.expect("text");
    for name in [
        "kv_raft_term 1",
        "kv_raft_is_leader 1",
        "kv_revision 1",
        "kv_fsync_seconds_bucket{le=",
        "kv_http_request_seconds_count{kind=\"write\"}",
        "kv_raft_leader_changes_total 1",
        // The bootstrap admin token, then the put.
        "kv_raft_proposed_writes_total 2",
    ] {
        assert!(text.contains(name), "metrics lack {name:?}:\n{text}");
    }
    let r = http().get(format!("{}/v2/nothing", k.url)).send().await.expect("get");
    assert_eq!(status_and_code(r).await, (404, "not_found".into()));
    let r = http().post(format!("{}/v1/kv/x", k.url)).send().await.expect("post");
    assert_eq!(status_and_code(r).await, (405, "method_not_allowed".into()));
}
