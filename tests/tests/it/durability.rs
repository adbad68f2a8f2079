//! Durability: restarts, `kill -9` under concurrent writers, the data dir
//! lock, retried writes, snapshots.

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
