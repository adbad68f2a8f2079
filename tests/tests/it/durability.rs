//! Durability: restarts, `kill -9` under concurrent writers, the data dir
//! lock, retried writes (request ids and their window), snapshots.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use kv_client::ListOptions;
use kv_tests::Kvd;

use crate::{http, put, revision};

#[tokio::test]
async fn restart_keeps_every_acknowledged_write() {
    let mut k = Kvd::bootstrap(&[]);
    for i in 0..200 {
        put(&k.url, &format!("keep/{i}"), &format!("value-{i}")).await;
    }
    let rev = revision(&k.url).await;
    k.kill9();
    k.restart();
    let c = k.client();
    for i in 0..200 {
        let v = c.get(&format!("keep/{i}")).await.expect("get").expect("kept");
        assert_eq!(v.value, format!("value-{i}"));
    }
    assert_eq!(revision(&k.url).await, rev);
    // A clean stop exits 0 and keeps everything too.
    assert_eq!(k.stop(), Some(0));
    k.restart();
    assert_eq!(revision(&k.url).await, rev);
}

#[tokio::test]
async fn crash_under_eight_writers_loses_no_acknowledged_write() {
    let mut k = Kvd::bootstrap(&[]);
    // (writer, key, value, acknowledged revision)
    type Acked = Vec<(usize, String, String, u64)>;
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (url, acked, count) = (k.url.clone(), acked.clone(), count.clone());
        writers.push(tokio::spawn(async move {
            let c = kv_client::Client::new(&[url]).expect("client");
            // Bounded: stops at the first failure (the crash) or after 20,000 writes.
            for n in 0..20_000 {
                let key = format!("w{w}/{n}");
                let value = format!("{w}:{n}:{}", "x".repeat(n % 50));
                match c.put(&key, value.clone(), &Default::default()).await {
                    Ok(r) => {
                        acked.lock().expect("lock").push((w, key, value, r.revision));
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    // Poll until the writers are well under way, then crash the node.
    while count.load(Ordering::Relaxed) < 1500 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    k.kill9();
    for w in writers {
        w.await.expect("writer");
    }
    k.restart();
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= 1500);
    let c = k.client();
    let mut last = [0u64; 8];
    let mut revs = std::collections::HashSet::new();
    for (w, key, value, rev) in &acked {
        let got = c.get(key).await.expect("get").unwrap_or_else(|| panic!("acknowledged {key} lost"));
        assert_eq!(got.value.as_ref(), value.as_bytes(), "{key}");
        assert_eq!(got.meta.mod_revision, *rev, "{key} has another revision than acknowledged");
        assert!(*rev > last[*w], "writer {w}: revisions out of order");
        last[*w] = *rev;
        assert!(revs.insert(*rev), "revision {rev} acknowledged twice");
    }
}

#[tokio::test]
async fn a_second_kvd_on_the_same_data_dir_refuses_to_start() {
    let k = Kvd::bootstrap(&[]);
    let out = std::process::Command::new(kv_tests::bin("kvd"))
        .args(["--id", "2", "--client-addr", "127.0.0.1:0", "--peer-addr", "127.0.0.1:0", "--data-dir"])
        .arg(&k.data_dir)
        .output()
        .expect("run kvd");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another kvd"), "{err}");
    // The first node is unaffected.
    put(&k.url, "still", "here").await;
}

#[tokio::test]
async fn retried_writes_apply_once() {
    let k = Kvd::bootstrap(&[]);
    let send = |body: &'static str| {
        http().put(format!("{}/v1/kv/once", k.url)).header("x-kv-request-id", "client-7-42").body(body).send()
    };
    let first: serde_json::Value = send("first").await.expect("put").json().await.expect("json");
    let before = revision(&k.url).await;
    let again: serde_json::Value = send("second").await.expect("put").json().await.expect("json");
    assert_eq!(again, first, "a retry gets the first answer");
    assert_eq!(revision(&k.url).await, before, "a retry does not write");
    let v = k.client().get("once").await.expect("get").expect("exists");
    assert_eq!((v.value.as_ref(), v.meta.version), (b"first".as_slice(), 1));
    // Transactions too.
    let txn = serde_json::json!({"success": [{"op": "put", "key": "ctr", "value": "1"}]});
    for _ in 0..3 {
        let r = http()
            .post(format!("{}/v1/txn", k.url))
            .header("x-kv-request-id", "txn-1")
            .json(&txn)
            .send()
            .await
            .expect("txn");
        assert_eq!(r.status(), 200);
    }
    assert_eq!(k.client().get("ctr").await.expect("get").expect("exists").meta.version, 1);
}

/// The node's last applied log index.
async fn applied_index(url: &str) -> u64 {
    crate::node_status(url).await.expect("status").applied_index
}

/// Regression: request ids were remembered for 100,000 log entries, so
/// under a high write rate a retry could apply twice within seconds. They
/// are remembered for a window of time, however many entries pass.
#[tokio::test]
async fn a_retry_after_100_000_log_entries_still_applies_once() {
    // NOTE: on tmpfs, where an fsync costs nothing, the entries take seconds.
    let shm = std::path::Path::new("/dev/shm");
    let tmp = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.expect("tempdir");
    let k = Kvd::bootstrap_on(tmp.path().join("data"), &[], &["--snapshot-logs", "50000"]);
    let send = |body: &'static str| {
        http().put(format!("{}/v1/kv/once", k.url)).header("x-kv-request-id", "retry-R").body(body).send()
    };
    let r = send("first").await.expect("put");
    assert_eq!(r.status(), 200);
    let first: serde_json::Value = r.json().await.expect("json");
    // Push more than 100,000 entries through the log (what the old pruning
    // counted): a write is an entry of its own when no other waits with it,
    // so two writers, each waiting for its answer.
    let target = applied_index(&k.url).await + 100_050;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..2 {
        let (c, url) = (k.client(), k.url.clone());
        writers.spawn(async move {
            let mut i = 0u64;
            while applied_index(&url).await < target {
                for _ in 0..100 {
                    c.put(&format!("fill/{w}"), i.to_string(), &Default::default()).await.expect("fill put");
                    i += 1;
                }
                assert!(std::time::Instant::now() < deadline, "100,000 entries took too long");
            }
        });
    }
    while let Some(r) = writers.join_next().await {
        r.expect("writer");
    }
    // NOTE: every writer left its loop at `target` or beyond.
    let before = revision(&k.url).await;
    let r = send("second").await.expect("put");
    assert_eq!(r.status(), 200);
    let again: serde_json::Value = r.json().await.expect("json");
    assert_eq!(again, first, "the retry was applied again instead of answered");
    assert_eq!(revision(&k.url).await, before, "the retry wrote");
    let v = k.client().get("once").await.expect("get").expect("exists");
    assert_eq!((v.value.as_ref(), v.meta.version), (b"first".as_slice(), 1));
}

/// A retry of an id that carries its time (`~MILLIS`), sent after the dedup
/// window, is refused with 409 `request_id_expired`; nothing is written.
#[tokio::test]
async fn a_retry_after_the_dedup_window_is_refused_and_writes_nothing() {
    let k = Kvd::bootstrap(&["--dedup-window-ms", "1500"]);
    let now_ms = kv_client::clock::now_ns() / 1_000_000;
    let id = format!("late-1~{now_ms}");
    let send = |body: &'static str| {
        http().put(format!("{}/v1/kv/late", k.url)).header("x-kv-request-id", id.clone()).body(body).send()
    };
    let r = send("first").await.expect("put");
    assert_eq!(r.status(), 200);
    let first: serde_json::Value = r.json().await.expect("json");
    let rev = revision(&k.url).await;
    // Retries are answered from the record until the window has passed;
    // then they are refused.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let body = loop {
        let r = send("second").await.expect("put");
        if r.status() != 200 {
            assert_eq!(r.headers().get("x-kv-request-id").map(|v| v.to_str().unwrap_or("")), Some(id.as_str()));
            assert_eq!(r.status(), 409);
            break r.json::<serde_json::Value>().await.expect("json");
        }
        assert_eq!(r.json::<serde_json::Value>().await.expect("json"), first, "a retry within the window");
        assert!(std::time::Instant::now() < deadline, "a retry long after the window was still answered");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(body["error"], "request_id_expired", "{body}");
    let message = body["message"].as_str().expect("message");
    assert!(message.contains(&id) && message.contains("nothing was written"), "{message}");
    assert_eq!(revision(&k.url).await, rev, "a refused retry wrote");
    let v = k.client().get("late").await.expect("get").expect("exists");
    assert_eq!((v.value.as_ref(), v.meta.version), (b"first".as_slice(), 1));
    // A new id goes through.
    let now_ms = kv_client::clock::now_ns() / 1_000_000;
    let r = http()
        .put(format!("{}/v1/kv/late", k.url))
        .header("x-kv-request-id", format!("late-2~{now_ms}"))
        .body("third")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
}

/// A write sent without `X-Kv-Request-Id` gets kvd's id back in the header,
/// and resending with it is answered, not applied again (what a 504 asks).
#[tokio::test]
async fn a_write_without_a_request_id_gets_one_back_to_resend_with() {
    let k = Kvd::bootstrap(&[]);
    let id_of = |r: &reqwest::Response| {
        r.headers().get("x-kv-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned).expect("request id header")
    };
    let r = http().put(format!("{}/v1/kv/given", k.url)).body("first").send().await.expect("put");
    assert_eq!(r.status(), 200);
    let id = id_of(&r);
    let first: serde_json::Value = r.json().await.expect("json");
    let (_, ms) = id.rsplit_once('~').expect("kvd's ids carry their time");
    assert!(ms.parse::<u64>().is_ok(), "{id}");
    let before = revision(&k.url).await;
    let r = http()
        .put(format!("{}/v1/kv/given", k.url))
        .header("x-kv-request-id", &id)
        .body("second")
        .send()
        .await
        .expect("put");
    assert_eq!(id_of(&r), id);
    assert_eq!(r.json::<serde_json::Value>().await.expect("json"), first, "the resend was applied again");
    assert_eq!(revision(&k.url).await, before);
    // Every write answers with its id: a transaction, a delete, an error, a
    // client's own id; each write's own id differs.
    let txn = serde_json::json!({"success": [{"op": "put", "key": "t", "value": "1"}]});
    let r = http().post(format!("{}/v1/txn", k.url)).json(&txn).send().await.expect("txn");
    assert_ne!(id_of(&r), id);
    let r = http().delete(format!("{}/v1/kv/nothing-here", k.url)).send().await.expect("delete");
    assert_eq!(r.status(), 404);
    assert!(id_of(&r).starts_with("kvd-"));
    let r = http().put(format!("{}/v1/kv/mine", k.url)).header("x-kv-request-id", "mine-1").body("v").send();
    assert_eq!(id_of(&r.await.expect("put")), "mine-1");
    // Reads carry none.
    let r = http().get(format!("{}/v1/kv/given", k.url)).send().await.expect("get");
    assert!(r.headers().get("x-kv-request-id").is_none());
}

#[tokio::test]
async fn snapshots_purge_the_log_and_restart_from_them() {
    let mut k = Kvd::bootstrap(&["--snapshot-logs", "50"]);
    for i in 0..300 {
        put(&k.url, &format!("s/{i:03}"), &i.to_string()).await;
    }
    let snap = k.data_dir.join("snapshots/current.snap");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !snap.exists() {
        assert!(std::time::Instant::now() < deadline, "no snapshot was built");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let rev = revision(&k.url).await;
    k.kill9();
    k.restart();
    assert_eq!(revision(&k.url).await, rev);
    let all =
        k.client().list("s", &ListOptions { recursive: true, values: true, ..Default::default() }).await.expect("list");
    assert_eq!(all.entries.len(), 300);
    for (i, e) in all.entries.iter().enumerate() {
        assert_eq!(e.value.as_deref(), Some(i.to_string().as_str()));
    }
}
