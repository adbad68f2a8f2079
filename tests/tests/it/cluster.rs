//! Clusters of real kvd processes: membership changes under load, leader
//! crashes, catch-up by snapshot, quorum loss, forwarding, learners.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kv_client::{ClusterInfo, ErrorCode, ListOptions};
use kv_tests::Kvd;

use crate::{http, status_and_code};

/// Short timeouts so failures show within the test's patience.
const FAST: &[&str] = &["--request-timeout-ms", "3000"];

async fn add(via: &Kvd, node: &Kvd, learner: bool) -> reqwest::Response {
    http()
        .post(format!("{}/v1/cluster/members", via.url))
        .json(
            &serde_json::json!({"id": node.id, "peer_url": node.peer_url, "client_url": node.url, "learner": learner}),
        )
        .send()
        .await
        .expect("add member")
}

pub(crate) async fn add_ok(via: &Kvd, node: &mut Kvd, learner: bool) {
    let r = add(via, node, learner).await;
    let status = r.status();
    assert_eq!(status, 200, "adding node {}: {}", node.id, r.text().await.unwrap_or_default());
    node.wait_ready();
}

async fn remove(via: &Kvd, id: u64) -> reqwest::Response {
    http().delete(format!("{}/v1/cluster/members/{id}", via.url)).send().await.expect("remove member")
}

async fn cluster(url: &str) -> ClusterInfo {
    http().get(format!("{url}/v1/cluster")).send().await.expect("cluster").json().await.expect("json")
}

fn voters(c: &ClusterInfo) -> Vec<u64> {
    c.members.iter().filter(|m| m.voter).map(|m| m.id).collect()
}

/// Polls the given nodes until they agree on a leader among them.
pub(crate) async fn agreed_leader(nodes: &[&Kvd]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = Vec::new();
        for n in nodes {
            seen.push(crate::node_status(&n.url).await.and_then(|s| s.leader));
        }
        if let Some(Some(l)) = seen.first() {
            if seen.iter().all(|s| *s == Some(*l)) && nodes.iter().any(|n| n.id == *l) {
                return *l;
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a cluster of `n` voters: node 1 bootstraps, the others are added.
pub(crate) async fn start_cluster(n: u64, extra: &[&str]) -> Vec<Kvd> {
    let mut nodes = vec![Kvd::bootstrap(extra)];
    for id in 2..=n {
        let mut k = Kvd::empty(id, extra);
        add_ok(&nodes[0], &mut k, false).await;
        nodes.push(k);
    }
    nodes
}

/// Writers that put unique keys until stopped, recording what was acknowledged.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, String, u64)>>>,
    count: Arc<AtomicUsize>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(n: usize, endpoints: &[String], prefix: &str) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<(String, String, u64)>>> = Arc::default();
        let count = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for w in 0..n {
            let mut eps = endpoints.to_vec();
            let len = eps.len();
            eps.rotate_left(w % len);
            let (stop, acked, count, prefix) = (stop.clone(), acked.clone(), count.clone(), prefix.to_owned());
            handles.push(tokio::spawn(async move {
                let c = kv_client::Client::new(&eps).expect("client");
                // Bounded: at most 50,000 attempts per writer.
                for i in 0..50_000 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let (key, value) = (format!("{prefix}/{w}/{i}"), format!("{w}-{i}"));
                    match c.put(&key, value.clone(), &Default::default()).await {
                        Ok(r) => {
                            acked.lock().expect("lock").push((key, value, r.revision));
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }));
        }
        Writers { stop, acked, count, handles }
    }

    /// Waits until `more` further writes were acknowledged.
    async fn wait_more(&self, more: usize) {
        let target = self.count.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.count.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "writes stalled at {}", self.count.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn finish(self) -> Vec<(String, String, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            h.await.expect("writer");
        }
        let acked = self.acked.lock().expect("lock").clone();
        acked
    }
}

/// Every acknowledged write is on the member, once (version 1), with its value.
async fn check_all_present(node: &Kvd, prefix: &str, acked: &[(String, String, u64)]) {
    let c = node.client();
    let mut opts = ListOptions { recursive: true, values: true, limit: Some(10_000), ..Default::default() };
    let mut have = std::collections::HashMap::new();
    loop {
        let page = c.list(prefix, &opts).await.expect("list");
        for e in page.entries {
            assert_eq!(e.meta.version, 1, "{} was applied more than once", e.key);
            have.insert(e.key.clone(), (e.value.clone().unwrap_or_default(), e.meta.mod_revision));
        }
        match page.next_after {
            Some(n) if page.more => opts.after = Some(n),
            _ => break,
        }
    }
    for (key, value, rev) in acked {
        let got = have.get(key).unwrap_or_else(|| panic!("node {}: acknowledged {key} is missing", node.id));
        assert_eq!((&got.0, got.1), (value, *rev), "node {}: {key}", node.id);
    }
}

#[tokio::test]
async fn grow_to_five_and_shrink_to_three_with_writes_running() {
    let mut nodes = start_cluster(1, FAST).await;
    for id in 2..=5 {
        nodes.push(Kvd::empty(id, FAST));
    }
    // Writers go through members that stay to the end (2 and 3), so both
    // forwarding and membership changes are exercised under load.
    let w = Writers::start(4, &[nodes[0].url.clone()], "grow");
    w.wait_more(100).await;
    for i in 1..5 {
        let (head, rest) = nodes.split_at_mut(i);
        add_ok(&head[0], &mut rest[0], false).await;
        w.wait_more(50).await;
    }
    assert_eq!(voters(&cluster(&nodes[2].url).await), vec![1, 2, 3, 4, 5]);
    let w2 = Writers::start(4, &[nodes[1].url.clone(), nodes[2].url.clone()], "grow2");
    for id in [5, 4] {
        let r = remove(&nodes[2], id).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        w2.wait_more(50).await;
    }
    assert_eq!(voters(&cluster(&nodes[1].url).await), vec![1, 2, 3]);
    // Remove the leader itself; leadership moves first.
    let leader = agreed_leader(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    let r = remove(&nodes[(leader - 1) as usize], leader).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    w2.wait_more(50).await;
    let stay: Vec<&Kvd> = nodes[..3].iter().filter(|n| n.id != leader).collect();
    let new_leader = agreed_leader(&stay).await;
    assert_ne!(new_leader, leader);
    assert_eq!(voters(&cluster(&stay[0].url).await).len(), 2);
    let acked = w.finish().await;
    let acked2 = w2.finish().await;
    for n in &stay {
        check_all_present(n, "grow", &acked).await;
        check_all_present(n, "grow2", &acked2).await;
    }
}

#[tokio::test]
async fn kill_the_leader_under_eight_writers() {
    let mut nodes = start_cluster(3, FAST).await;
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let w = Writers::start(8, &urls, "crash");
    w.wait_more(500).await;
    let leader = agreed_leader(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    nodes[(leader - 1) as usize].kill9();
    let survivors: Vec<&Kvd> = nodes.iter().filter(|n| n.id != leader).collect();
    let new_leader = agreed_leader(&survivors).await;
    assert_ne!(new_leader, leader);
    // Writes go on with the new leader.
    w.wait_more(300).await;
    let acked = w.finish().await;
    // The old leader rejoins by itself and catches up.
    nodes[(leader - 1) as usize].restart();
    for n in &nodes {
        check_all_present(n, "crash", &acked).await;
    }
}

#[tokio::test]
async fn a_new_member_catches_up_by_snapshot() {
    let extra = ["--snapshot-logs", "20"];
    let mut nodes = vec![Kvd::bootstrap(&extra)];
    let c = nodes[0].client();
    for batch in 0..100 {
        let puts: Vec<kv_client::TxnOp> = (0..500)
            .map(|i| kv_client::TxnOp::put(format!("big/{batch:03}/{i:03}"), format!("v{batch}-{i}")))
            .collect();
        c.txn(&kv_client::TxnRequest { success: puts, ..Default::default() }).await.expect("txn");
    }
    // Wait until the leader has purged the log behind a snapshot.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s: kv_client::NodeStatus =
            http().get(format!("{}/v1/status", nodes[0].url)).send().await.expect("status").json().await.expect("json");
        if s.purged_index > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "log never purged: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut k = Kvd::empty(2, &extra);
    add_ok(&nodes[0], &mut k, false).await;
    nodes.push(k);
    let s: kv_client::NodeStatus =
        http().get(format!("{}/v1/status", nodes[1].url)).send().await.expect("status").json().await.expect("json");
    assert!(s.snapshot_index > 0, "the new member did not get a snapshot: {s:?}");
    let metrics = |k: &Kvd| {
        let url = format!("{}/metrics", k.url);
        async move { http().get(url).send().await.expect("metrics").text().await.expect("text") }
    };
    let leader = metrics(&nodes[0]).await;
    assert!(crate::disk::metric(&leader, "kv_raft_snapshots_built_total") >= 1, "{leader}");
    assert!(crate::disk::metric(&leader, "kv_raft_snapshots_sent_total") >= 1, "{leader}");
    let new = metrics(&nodes[1]).await;
    assert_eq!(crate::disk::metric(&new, "kv_raft_snapshots_installed_total"), 1, "{new}");
    assert_eq!(crate::disk::metric(&new, "kv_raft_snapshots_sent_total"), 0, "{new}");
    let h0 = keyspace_hash(&nodes[0]).await;
    let h1 = keyspace_hash(&nodes[1]).await;
    assert_eq!(h0.1, 50_000);
    assert_eq!(h0, h1, "the new member's data differs");
}

/// openraft 0.9 gives each AppendEntries one heartbeat interval and puts up
/// to 64 entries in it. A new member replaying a log of large entries must
/// still catch up: without a cap on an RPC's bytes, the same 64 entries
/// timed out again and again.
#[tokio::test]
async fn a_new_member_catches_up_on_a_log_of_large_entries() {
    let mut nodes = vec![Kvd::bootstrap(&[])];
    let c = nodes[0].client();
    // 64 entries of 1,000 small puts each (about 8 MB): what a bulk load makes.
    for batch in 0..64 {
        let puts: Vec<kv_client::TxnOp> =
            (0..1000).map(|i| kv_client::TxnOp::put(format!("big/{batch:03}/{i:03}"), "v".repeat(100))).collect();
        c.txn(&kv_client::TxnRequest { success: puts, ..Default::default() }).await.expect("txn");
    }
    let mut k = Kvd::empty(2, &[]);
    tokio::time::timeout(Duration::from_secs(90), add_ok(&nodes[0], &mut k, false))
        .await
        .expect("the new member did not catch up within 90 s");
    nodes.push(k);
    let s: kv_client::NodeStatus =
        http().get(format!("{}/v1/status", nodes[1].url)).send().await.expect("status").json().await.expect("json");
    assert_eq!(s.snapshot_index, 0, "the new member got a snapshot, not the log: {s:?}");
    let h0 = keyspace_hash(&nodes[0]).await;
    let h1 = keyspace_hash(&nodes[1]).await;
    assert_eq!(h0.1, 64_000);
    assert_eq!(h0, h1, "the new member's data differs");
}

/// (hash, count) of every key and value, read from the member's own state.
async fn keyspace_hash(node: &Kvd) -> (u64, usize) {
    use std::hash::{Hash, Hasher};
    let c = node.client();
    let _ = c.get("big/000/000").await.expect("linearizable barrier");
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut n = 0;
    let mut opts =
        ListOptions { recursive: true, values: true, stale: true, limit: Some(10_000), ..Default::default() };
    loop {
        let page = c.list("", &opts).await.expect("list");
        for e in &page.entries {
            (&e.key, &e.value, e.meta.mod_revision).hash(&mut h);
            n += 1;
        }
        match page.next_after {
            Some(a) if page.more => opts.after = Some(a),
            _ => break,
        }
    }
    (h.finish(), n)
}

#[tokio::test]
async fn minority_loss_keeps_writing_majority_loss_refuses_then_recovers() {
    let mut nodes = start_cluster(3, &["--request-timeout-ms", "1500"]).await;
    let leader = agreed_leader(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    let followers: Vec<usize> = (0..3).filter(|i| nodes[*i].id != leader).collect();
    // A hung peer (accepts connections, never answers) holds nobody up.
    nodes[followers[0]].pause();
    let li = (leader - 1) as usize;
    let other = followers[1];
    for (i, via) in [li, other].into_iter().enumerate() {
        let r = http().put(format!("{}/v1/kv/minority/{i}", nodes[via].url)).body("ok").send().await.expect("put");
        assert_eq!(r.status(), 200, "a write with a minority down failed");
    }
    nodes[other].kill9();
    // No quorum: a clear answer after the bounded wait, not a hang. The
    // leader took the write into its log, so it may still commit once the
    // majority is back: its outcome is unknown (504), not refused (503).
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    let r = client.put(format!("{}/v1/kv/majority", nodes[li].url)).body("no").send().await.expect("answered");
    // It names the request id kvd gave the write, to resend it with.
    let id = r.headers().get("x-kv-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert!(id.as_deref().is_some_and(|id| id.starts_with("kvd-")), "a 504 without the write's request id: {id:?}");
    assert_eq!(r.status(), 504);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"], "unknown_outcome");
    let message = body["message"].as_str().unwrap_or("");
    assert!(message.contains("resend it with the same X-Kv-Request-Id"), "{message}");
    // Once the leader has gone an election timeout without a quorum, it
    // refuses writes at once (503, Retry-After) and takes nothing.
    let mut refused = None;
    for i in 0..10 {
        let r = client.put(format!("{}/v1/kv/refused/{i}", nodes[li].url)).body("no").send().await.expect("answered");
        if r.status() == 503 {
            assert_eq!(r.headers().get("retry-after").map(|v| v.to_str().unwrap_or("")), Some("1"));
            assert_eq!(status_and_code(r).await, (503, "unavailable".into()));
            refused = Some(format!("refused/{i}"));
            break;
        }
        assert_eq!(r.status(), 504, "a write without quorum");
    }
    let refused = refused.expect("a leader without quorum kept taking writes");
    let r = client.get(format!("{}/v1/kv/minority/0", nodes[li].url)).send().await.expect("answered");
    assert_eq!(r.status(), 503, "a linearizable read without quorum must not answer");
    let r = client.get(format!("{}/v1/kv/minority/0?stale=true", nodes[li].url)).send().await.expect("answered");
    assert_eq!(r.status(), 200, "a stale read answers without quorum");
    // The majority comes back: writes go on.
    nodes[other].start_again();
    nodes[followers[0]].resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = client.put(format!("{}/v1/kv/majority", nodes[li].url)).body("back").send().await.expect("answered");
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "writes did not resume");
    }
    for n in &mut nodes {
        n.wait_ready();
        // NOTE: a member thawed after the majority came back may still
        // start an election: retry reads that find no leader.
        let c = n.client();
        let mut got = None;
        for _ in 0..20 {
            match (c.get("majority").await, c.get(&refused).await) {
                (Ok(a), Ok(b)) => {
                    got = Some((a, b));
                    break;
                }
                (Err(e), _) | (_, Err(e)) => assert!(e.is(&ErrorCode::Unavailable), "{e}"),
            }
        }
        let (majority, refused_value) = got.expect("reads never found a leader");
        assert_eq!(majority.expect("exists").value.as_ref(), b"back");
        assert_eq!(refused_value, None, "a refused write was written");
    }
}

#[tokio::test]
async fn learners_serve_stale_reads_that_never_go_back_and_watches() {
    let mut nodes = start_cluster(3, FAST).await;
    let mut learner = Kvd::empty(4, FAST);
    add_ok(&nodes[1], &mut learner, true).await;
    let info = cluster(&nodes[0].url).await;
    assert_eq!(voters(&info), vec![1, 2, 3]);
    assert!(info
        .members
        .iter()
        .any(|m| m.id == 4 && !m.voter && m.status.as_ref().is_some_and(|s| s.role == "learner")));
    let start = crate::revision(&nodes[0].url).await;
    let mut watch = learner.client().watch("ctr", Some(start)).await.expect("watch on a learner");
    let writer = {
        let url = nodes[2].url.clone();
        tokio::spawn(async move {
            for i in 0..200u32 {
                crate::put(&url, "ctr/n", &i.to_string()).await;
            }
        })
    };
    let mut last = (0u64, -1i64);
    while !writer.is_finished() {
        let r = http().get(format!("{}/v1/kv/ctr/n?stale=true", learner.url)).send().await.expect("stale read");
        if r.status() == 404 {
            continue;
        }
        let rev: u64 = r.headers()["x-kv-revision"].to_str().expect("ascii").parse().expect("number");
        let v: i64 = r.text().await.expect("body").parse().expect("number");
        assert!(rev >= last.0 && v >= last.1, "stale read went back: {last:?} then {:?}", (rev, v));
        last = (rev, v);
    }
    writer.await.expect("writer");
    // A linearizable read through the learner sees the last write.
    assert_eq!(learner.client().get("ctr/n").await.expect("get").expect("exists").value.as_ref(), b"199");
    // Its watch saw every change in order; resuming on another member from
    // the last revision seen misses nothing and repeats nothing.
    let mut seen = Vec::new();
    while seen.len() < 120 {
        seen.push(watch.next().await.expect("event").expect("open").revision);
    }
    drop(watch);
    let mut rest = nodes[0].client().watch("ctr", seen.last().copied()).await.expect("resume elsewhere");
    while seen.len() < 200 {
        seen.push(rest.next().await.expect("event").expect("open").revision);
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "events repeated or out of order");
    assert_eq!(seen.len(), 200);
    nodes.push(learner);
}

#[tokio::test]
async fn writes_through_a_follower_point_clients_at_the_leader() {
    let mut nodes = start_cluster(3, FAST).await;
    let leader = agreed_leader(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    let at = |id: u64| nodes.iter().position(|n| n.id == id).expect("member");
    let (l, f) = (at(leader), at(if leader == 1 { 2 } else { 1 }));
    let hint = |r: &reqwest::Response| r.headers().get("x-kv-leader").map(|v| v.to_str().unwrap_or("").to_owned());
    // A write a follower forwarded names the leader; one the leader took does not.
    let r = http().put(format!("{}/v1/kv/hint/a", nodes[f].url)).body("1").send().await.expect("put");
    assert_eq!(r.status(), 200);
    assert_eq!(hint(&r), Some(nodes[l].url.clone()));
    let r = http().put(format!("{}/v1/kv/hint/b", nodes[l].url)).body("1").send().await.expect("put");
    assert_eq!(r.status(), 200);
    assert_eq!(hint(&r), None);
    // A refused write names nobody and writes nothing.
    let r = http().put(format!("{}/v1/kv/hint//bad", nodes[f].url)).body("1").send().await.expect("put");
    assert_eq!(status_and_code(r).await.0, 400);
    // A client that lists the leader moves there after its first write; reads follow.
    let c = kv_client::Client::new(&[nodes[f].url.as_str(), nodes[l].url.as_str()]).expect("client");
    assert_eq!(c.current_endpoint(), nodes[f].url);
    c.put("hint/c", "1", &Default::default()).await.expect("put");
    assert_eq!(c.current_endpoint(), nodes[l].url);
    assert_eq!(c.get("hint/a").await.expect("get").expect("exists").value.as_ref(), b"1");
    // A client that does not list the leader stays where it was told to go.
    let only = kv_client::Client::new(&[nodes[f].url.as_str()]).expect("client");
    only.put("hint/d", "1", &Default::default()).await.expect("put");
    assert_eq!(only.current_endpoint(), nodes[f].url);
    let keys: Vec<String> = nodes[f]
        .client()
        .list("hint", &ListOptions { recursive: true, ..Default::default() })
        .await
        .expect("list")
        .entries
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["hint/a", "hint/b", "hint/c", "hint/d"]);
    // The leader dies: the client fails over to the member it has left,
    // which is the new leader or forwards to it.
    nodes[l].kill9();
    let rest: Vec<&Kvd> = nodes.iter().filter(|n| n.id != leader).collect();
    agreed_leader(&rest).await;
    c.put("hint/e", "1", &Default::default()).await.expect("put after the leader died");
    assert_eq!(c.current_endpoint(), nodes[f].url);
    assert_eq!(c.get("hint/e").await.expect("get").expect("exists").value.as_ref(), b"1");
}

#[tokio::test]
async fn removed_and_wiped_members_can_rejoin_and_leadership_moves() {
    let mut nodes = start_cluster(3, FAST).await;
    crate::put(&nodes[0].url, "keep", "1").await;
    let r = remove(&nodes[0], 3).await;
    assert_eq!(r.status(), 200);
    nodes[2].kill9();
    nodes[2].wipe();
    nodes[2].start_again();
    let (head, tail) = nodes.split_at_mut(2);
    add_ok(&head[1], &mut tail[0], false).await;
    assert_eq!(voters(&cluster(&nodes[2].url).await), vec![1, 2, 3]);
    assert_eq!(nodes[2].client().get_opts("keep", true).await.expect("get").expect("exists").value.as_ref(), b"1");
    // Under a new id too.
    let mut fresh = Kvd::empty(7, FAST);
    add_ok(&nodes[2], &mut fresh, true).await;
    let r = http().post(format!("{}/v1/cluster/members/7/promote", nodes[0].url)).send().await.expect("promote");
    assert_eq!(r.status(), 200);
    assert_eq!(voters(&cluster(&nodes[0].url).await), vec![1, 2, 3, 7]);
    // Leadership transfer, asked of any member.
    let leader = agreed_leader(&[&nodes[0], &nodes[1], &nodes[2], &fresh]).await;
    let target = if leader == 7 { 2 } else { 7 };
    let r = http()
        .post(format!("{}/v1/cluster/leader", nodes[0].url))
        .json(&serde_json::json!({"id": target}))
        .send()
        .await
        .expect("transfer");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert_eq!(agreed_leader(&[&nodes[0], &nodes[1], &nodes[2], &fresh]).await, target);
    crate::put(&nodes[0].url, "after", "transfer").await;
}

#[tokio::test]
async fn membership_requests_are_validated() {
    let nodes = start_cluster(1, FAST).await;
    let url = format!("{}/v1/cluster/members", nodes[0].url);
    let before = cluster(&nodes[0].url).await.members.len();
    for (body, code) in [
        ("{\"id\": 2", "bad_json"),
        ("{\"id\": 2, \"peer\": \"http://127.0.0.1:1\"}", "bad_json"),
        ("{\"id\": 0, \"peer_url\": \"http://127.0.0.1:1\"}", "bad_request"),
        ("{\"id\": 2, \"peer_url\": \"127.0.0.1\"}", "bad_request"),
        ("{\"id\": 1, \"peer_url\": \"http://127.0.0.1:1\"}", "bad_request"),
    ] {
        let r = http().post(&url).body(body).send().await.expect("post");
        assert_eq!(status_and_code(r).await, (400, code.to_owned()), "{body}");
    }
    let r = http().delete(format!("{url}/9")).send().await.expect("delete");
    assert_eq!(status_and_code(r).await, (404, "not_found".into()));
    let r = http().delete(format!("{url}/x")).send().await.expect("delete");
    assert_eq!(status_and_code(r).await, (400, "bad_request".into()));
    let r = http().delete(format!("{url}/1")).send().await.expect("delete");
    assert_eq!(status_and_code(r).await, (400, "bad_request".into()), "removing the only voter");
    let r = http()
        .post(format!("{}/v1/cluster/leader", nodes[0].url))
        .json(&serde_json::json!({"id": 5}))
        .send()
        .await
        .expect("transfer");
    assert_eq!(status_and_code(r).await, (400, "bad_request".into()));
    assert_eq!(cluster(&nodes[0].url).await.members.len(), before);
}
