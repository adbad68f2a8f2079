//! Cluster ids: nodes of two clusters never mix.

use std::time::{Duration, Instant};

use kv_tests::Kvd;

use crate::{http, put};

/// Short timeouts so failures show within the test's patience.
const FAST: &[&str] = &["--request-timeout-ms", "3000"];

/// `POST /v1/cluster/members` on `via` for node `id` at `node`'s addresses;
/// status and JSON body, or `None` when no answer came within 30 s.
async fn add_as(via: &Kvd, id: u64, node: &Kvd) -> Option<(u16, serde_json::Value)> {
    let r = http()
        .post(format!("{}/v1/cluster/members", via.url))
        .json(&serde_json::json!({"id": id, "peer_url": node.peer_url, "client_url": node.url}))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.unwrap_or_default()))
}

/// A read of `key` through `k` answers `want` (polled for 10 s).
async fn reads(k: &Kvd, key: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http().get(format!("{}/v1/kv/{key}", k.url)).send().await.expect("get");
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        if status == 200 && body == want {
            return;
        }
        assert!(Instant::now() < deadline, "read of {key} on node at {}: {status} {body}\n{}", k.url, k.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The cluster id a node logged at bootstrap or when it joined.
fn cluster_id_of(k: &Kvd) -> String {
    let log = k.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("bootstrapped") && l.contains("cluster_id="))
        .unwrap_or_else(|| panic!("no cluster id logged:\n{log}"));
    let id = line.split("cluster_id=").nth(1).and_then(|s| s.split_whitespace().next()).expect("id");
    id.trim_matches('"').to_owned()
}

/// Two hosts that run the packaged kvd (`bootstrap = true`) are each a
/// cluster of their own: `member add` of the second on the first once left
/// the first without a leader for good.
#[tokio::test]
async fn member_add_of_a_node_of_another_cluster_is_refused_and_both_clusters_go_on() {
    let a = Kvd::bootstrap(FAST);
    let b = Kvd::bootstrap(FAST);
    put(&a.url, "who", "a").await;
    put(&b.url, "who", "b").await;

    let answer = add_as(&a, 2, &b).await;
    let (status, body) = answer.expect("member add did not answer within 30 s");
    let message = body["message"].as_str().unwrap_or_default();
    assert_eq!(status, 409, "member add of another cluster's node: {body}");
    assert_eq!(body["error"], "not_joinable", "{body}");
    assert!(message.contains(&cluster_id_of(&b)) && message.contains(&cluster_id_of(&a)), "names both ids: {message}");
    assert!(message.contains("without --bootstrap"), "says how to join it: {message}");

    // Both clusters are unharmed: the first keeps its leader and its one member.
    for (k, who) in [(&a, "a"), (&b, "b")] {
        put(&k.url, "after", who).await;
        reads(k, "after", who).await;
        reads(k, "who", who).await;
        let s = crate::node_status(&k.url).await.expect("status");
        assert_eq!(s.leader, Some(1), "node at {} lost its leader: {s:?}", k.url);
    }
    let c: kv_client::ClusterInfo =
        http().get(format!("{}/v1/cluster", a.url)).send().await.expect("cluster").json().await.expect("json");
    assert_eq!(c.members.iter().map(|m| m.id).collect::<Vec<_>>(), [1], "{c:?}");
}

/// Polls `k`'s log for a line holding every one of `parts`.
fn logged(k: &Kvd, parts: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !k.log_text().lines().any(|l| parts.iter().all(|p| l.contains(p))) {
        assert!(Instant::now() < deadline, "no log line with {parts:?}:\n{}", k.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Raft message that says it comes from another cluster is refused
/// before it is read (409 naming both ids, an error line); one from this
/// cluster, or from a kvd that predates ids, is read.
#[tokio::test]
async fn a_peer_message_from_another_cluster_is_refused_and_logged() {
    let a = Kvd::bootstrap(FAST);
    let ours = cluster_id_of(&a);
    let other = if ours == "0123456789abcdef" { "fedcba9876543210" } else { "0123456789abcdef" };
    let send = |id: Option<&str>| {
        let mut r = http().post(format!("{}/peer/v1/vote", a.peer_url)).body(vec![0xffu8; 3]);
        if let Some(id) = id {
            r = r.header("x-kv-cluster", id);
        }
        r.send()
    };
    let r = send(Some(other)).await.expect("vote");
    assert_eq!(r.status(), 409, "a message from cluster {other}");
    assert_eq!(r.headers().get("x-kv-cluster").and_then(|v| v.to_str().ok()), Some(ours.as_str()));
    let text = r.text().await.expect("body");
    assert!(text.contains(&ours) && text.contains(other), "names both ids: {text}");
    logged(&a, &["ERROR", "another cluster", &format!("cluster_id={ours}"), &format!("peer_cluster_id={other}")]);
    for id in [Some(ours.as_str()), None] {
        let r = send(id).await.expect("vote");
        assert_eq!(r.status(), 400, "read (and found undecodable) with cluster id {id:?}");
    }
    put(&a.url, "still", "here").await;
}

/// A member whose data dir was swapped for another cluster's refuses its
/// old cluster's leader, both log it naming both ids, and the cluster goes
/// on with the other members.
#[tokio::test]
async fn a_member_started_on_another_clusters_data_is_refused_and_its_cluster_goes_on() {
    let mut nodes = crate::cluster::start_cluster(3, FAST).await;
    let ours = cluster_id_of(&nodes[0]);
    let mut b = Kvd::bootstrap(FAST);
    put(&b.url, "who", "b").await;
    let theirs = cluster_id_of(&b);
    b.stop();
    nodes[2].kill9();
    nodes[2].wipe();
    let out = std::process::Command::new("cp").arg("-a").arg(&b.data_dir).arg(&nodes[2].data_dir).status().expect("cp");
    assert!(out.success(), "copy the other cluster's data dir");
    let before = nodes[2].log_text().len();
    nodes[2].start_again();

    logged(
        &nodes[2],
        &["ERROR", "another cluster", &format!("cluster_id={theirs}"), &format!("peer_cluster_id={ours}")],
    );
    let leader = crate::cluster::agreed_leader(&[&nodes[0], &nodes[1]]).await;
    let l = &nodes[leader as usize - 1];
    logged(
        l,
        &["ERROR", "another cluster refused", &format!("cluster_id={ours}"), &format!("peer_cluster_id={theirs}")],
    );
    let since = nodes[2].log_text().split_off(before);
    assert!(!since.contains("now belongs to cluster"), "took the old cluster's id:\n{since}");
    for (i, k) in nodes[..2].iter().enumerate() {
        let v = format!("v{i}");
        put(&k.url, "after", &v).await;
        reads(k, "after", &v).await;
    }
}
