//! Integration tests that run the real binaries on loopback with
//! OS-assigned ports. One module per topic.

mod api;
mod apply;
mod browser;
mod cluster;
mod config;
mod disk;
mod durability;
mod engines;
mod faults;
mod formats;
mod gray;
mod history;
mod hostile;
mod identity;
mod kinds;
mod kvctl;
mod lifecycle;
mod metrics;
mod mount;
mod mountmetrics;
mod ops;
mod permissions;
mod posix;
mod powercut;
mod readers;
mod reload;
mod security;
mod stale;
mod stalemount;
mod times;
mod transfer;
mod ui;
mod validation;
mod watch;
mod writers;

use reqwest::Client as Http;

/// A plain HTTP client for raw requests.
pub fn http() -> Http {
    Http::new()
}

/// The node's current revision, read through a list.
pub async fn revision(url: &str) -> u64 {
    let r = http().get(format!("{url}/v1/list/?limit=1")).send().await.expect("list");
    r.headers()
        .get("x-kv-revision")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("x-kv-revision header")
}

/// A member's status (`GET /v1/status`), `None` when it does not answer
/// within 5 s.
pub async fn node_status(url: &str) -> Option<kv_client::NodeStatus> {
    let r = http().get(format!("{url}/v1/status")).timeout(std::time::Duration::from_secs(5)).send().await.ok()?;
    r.json().await.ok()
}

/// Status and JSON error code of a response.
pub async fn status_and_code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    (status, body["error"].as_str().unwrap_or("").to_owned())
}

/// Puts a value, panicking on failure.
pub async fn put(url: &str, key: &str, value: &str) -> u64 {
    let r = http().put(format!("{url}/v1/kv/{key}")).body(value.to_owned()).send().await.expect("put");
    assert_eq!(r.status(), 200, "put {key}");
    let body: serde_json::Value = r.json().await.expect("json");
    body["revision"].as_u64().expect("revision")
}

/// Runs kvctl, without the environment's endpoints and token; returns (exit code, stdout, stderr).
pub fn kvctl(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(kv_tests::bin("kvctl"))
        .args(args)
        .env_remove("KVCTL_TOKEN")
        .env_remove("KVCTL_ENDPOINTS")
        .output()
        .expect("run kvctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Puts a value from synchronous code.
pub fn put_sync(k: &kv_tests::Kvd, key: &str, value: &str) -> u64 {
    let c = k.client();
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(c.put(key, value.to_owned(), &Default::default()))
        .expect("put")
        .revision
}

/// A three-member cluster with `extra` flags, formed with the admin token.
pub async fn cluster_of_three(extra: &[&str]) -> Vec<kv_tests::Kvd> {
    let first = kv_tests::Kvd::bootstrap(extra);
    let admin = first.client_with(Some(&first.admin_token()));
    let mut nodes = vec![first];
    for id in [2, 3] {
        let mut n = kv_tests::Kvd::empty(id, extra);
        admin.add_member(&n.add_request()).await.expect("add member");
        n.wait_ready();
        nodes.push(n);
    }
    nodes
}
