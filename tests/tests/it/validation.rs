//! Bad input on every input path gets a clear error and writes nothing.

use std::io::{Read, Write};

use kv_tests::Kvd;

use crate::{http, put, revision, status_and_code};

/// Sends `req` and checks the status, the error code, and that neither the
/// revision nor the listed keys changed.
async fn refused(k: &Kvd, req: reqwest::RequestBuilder, status: u16, code: &str) {
    let before = revision(&k.url).await;
    let keys_before =
        k.client().list("", &kv_client::ListOptions { recursive: true, ..Default::default() }).await.expect("list");
    let r = req.send().await.expect("request");
    let (s, c) = status_and_code(r).await;
    assert_eq!((s, c.as_str()), (status, code));
    assert_eq!(revision(&k.url).await, before, "a refused request changed the revision");
    let keys_after =
        k.client().list("", &kv_client::ListOptions { recursive: true, ..Default::default() }).await.expect("list");
    assert_eq!(keys_after.entries, keys_before.entries, "a refused request changed the keys");
}

#[tokio::test]
async fn bad_keys_in_paths_are_refused() {
    let k = Kvd::bootstrap(&[]);
    put(&k.url, "seed", "1").await;
    let long_seg = "s".repeat(256);
    let long_key = vec!["s".repeat(200); 21].join("/");
    // NOTE: URL parsers fold "%2E%2E" into "..", so dot segments go raw below.
    for key in ["a//b", "a/", "a%00b", "%ff%fe", "bad%zz", long_seg.as_str(), long_key.as_str()] {
        let url = format!("{}/v1/kv/{key}", k.url);
        refused(&k, http().put(&url).body("x"), 400, "invalid_key").await;
        refused(&k, http().delete(&url), 400, "invalid_key").await;
        let r = http().get(&url).send().await.expect("get");
        assert_eq!(status_and_code(r).await, (400, "invalid_key".into()), "{key}");
    }
    refused(&k, http().put(format!("{}/v1/kv/", k.url)).body("x"), 400, "invalid_key").await;
    refused(&k, http().delete(format!("{}/v1/kv/a//b?recursive=true", k.url)), 400, "invalid_key").await;
    for path in ["list/a//b", "watch/a//b"] {
        let r = http().get(format!("{}/v1/{path}", k.url)).send().await.expect("get");
        assert_eq!(status_and_code(r).await, (400, "invalid_key".into()), "{path}");
    }
    let before = revision(&k.url).await;
    for line in [
        "PUT /v1/kv/a/../b",
        "PUT /v1/kv/a/%2E%2E/b",
        "PUT /v1/kv/.",
        "PUT /v1/kv/a/./b",
        "DELETE /v1/kv/..?recursive=true",
        "GET /v1/list/a/..",
        "GET /v1/watch/..",
    ] {
        let head =
            raw(&k.url, &format!("{line} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"))
                .await;
        assert!(head.starts_with("HTTP/1.1 400") && head.contains("invalid_key"), "{line}: {head}");
    }
    assert_eq!(revision(&k.url).await, before);
}

/// Sends raw bytes (no URL normalisation) and returns the whole answer.
async fn raw(url: &str, request: &str) -> String {
    let addr = url.trim_start_matches("http://").to_owned();
    let request = request.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
        s.write_all(request.as_bytes()).expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .expect("join")
}

#[tokio::test]
async fn oversized_values_are_refused_without_buffering() {
    let k = Kvd::bootstrap(&["--max-value-size", "1024"]);
    put(&k.url, "seed", "1").await;
    let url = format!("{}/v1/kv/big", k.url);
    refused(&k, http().put(&url).body(vec![b'x'; 1025]), 413, "too_large").await;
    // A chunked body with no declared length is cut off at the limit.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..4).map(|_| Ok(vec![b'y'; 600])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    refused(&k, http().put(&url).body(body), 413, "too_large").await;
    // A huge declared length is refused before any of the body is sent.
    let addr = k.url.trim_start_matches("http://").to_owned();
    let head = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
        write!(s, "PUT /v1/kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n").expect("write");
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).expect("read status without sending a body");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .expect("join");
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(k.client().get("big").await.expect("get").is_none());
    // Exactly at the limit is fine.
    let r = http().put(&url).body(vec![b'x'; 1024]).send().await.expect("put");
    assert_eq!(r.status(), 200);
    // In a transaction too.
    let v = "z".repeat(1025);
    let txn = serde_json::json!({"success": [{"op": "put", "key": "t", "value": v}]});
    refused(&k, http().post(format!("{}/v1/txn", k.url)).json(&txn), 413, "too_large").await;
    // And a transaction body beyond max_txn_size (4 × the value limit).
    let body = format!("{{\"success\":[{{\"op\":\"put\",\"key\":\"t\",\"value\":\"{}\"}}]}}", "q".repeat(5000));
    refused(&k, http().post(format!("{}/v1/txn", k.url)).body(body), 413, "too_large").await;
}

#[tokio::test]
async fn malformed_transactions_are_refused() {
    let k = Kvd::bootstrap(&[]);
    put(&k.url, "seed", "1").await;
    let post = |body: &str| http().post(format!("{}/v1/txn", k.url)).body(body.to_owned());
    refused(&k, post("{\"success\": [{\"op\": \"put\""), 400, "bad_json").await;
    refused(&k, post("not json"), 400, "bad_json").await;
    refused(&k, post(r#"{"success":[{"op":"frobnicate","key":"a"}]}"#), 400, "bad_json").await;
    refused(&k, post(r#"{"success":[{"op":"put","key":"a","valu":"x"}]}"#), 400, "bad_json").await;
    refused(&k, post(r#"{"sucess":[]}"#), 400, "bad_json").await;
    refused(
        &k,
        post(r#"{"success":[{"op":"put","key":"ok","value":"1"},{"op":"put","key":"a//b","value":"x"}]}"#),
        400,
        "invalid_key",
    )
    .await;
    refused(
        &k,
        post(r#"{"compare":[{"key":"a"}],"success":[{"op":"put","key":"a","value":"1"}]}"#),
        400,
        "bad_request",
    )
    .await;
    refused(&k, post(r#"{"compare":[{"key":"a","exists":true,"mod_revision":1}]}"#), 400, "bad_request").await;
    refused(&k, post(r#"{"success":[{"op":"put","key":"a","value":"1","value_base64":"MQ=="}]}"#), 400, "bad_request")
        .await;
    refused(&k, post(r#"{"success":[{"op":"put","key":"a","value_base64":"!!"}]}"#), 400, "bad_request").await;
    refused(&k, post(r#"{"success":[{"op":"put","key":"d","kind":"dir","value":"x"}]}"#), 400, "bad_request").await;
    refused(&k, post(r#"{"success":[{"op":"put","key":"a","mode":4096000}]}"#), 400, "bad_request").await;
    refused(&k, post(r#"{"success":[{"op":"delete","key":"a//b"}]}"#), 400, "invalid_key").await;
}

#[tokio::test]
async fn bad_headers_and_queries_are_refused() {
    let k = Kvd::bootstrap(&[]);
    put(&k.url, "seed", "1").await;
    let url = format!("{}/v1/kv/h", k.url);
    for (name, value) in [
        ("x-kv-mode", "999"),
        ("x-kv-mode", "70000"),
        ("x-kv-kind", "pipe"),
        ("x-kv-uid", "-1"),
        ("x-kv-gid", "x"),
        ("x-kv-mtime", "yesterday"),
        ("if-match", "garbage"),
        ("if-none-match", "\"3\""),
        ("x-kv-request-id", ""),
    ] {
        refused(&k, http().put(&url).header(name, value).body("v"), 400, "bad_request").await;
    }
    let long_id = "i".repeat(129);
    refused(&k, http().put(&url).header("x-kv-request-id", long_id).body("v"), 400, "bad_request").await;
    refused(&k, http().put(&url).header("x-kv-kind", "dir").body("v"), 400, "bad_request").await;
    refused(&k, http().put(&url).header("x-kv-kind", "symlink"), 400, "bad_request").await;
    refused(&k, http().delete(format!("{}/v1/kv/seed?recursive=maybe", k.url)), 400, "bad_query").await;
    for q in ["list/?limit=0", "list/?limit=x", "list/?recursive=perhaps", "watch/?rev=abc", "kv/seed?stale=2"] {
        let r = http().get(format!("{}/v1/{q}", k.url)).send().await.expect("get");
        assert_eq!(status_and_code(r).await, (400, "bad_query".into()), "{q}");
    }
}
