//! Leadership transfer and a leader's removal of itself (which transfers
//! first) when the client goes away mid-way: nothing the transfer holds
//! (heartbeats, elections, proposals) stays held.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use kv_tests::Kvd;

use crate::cluster::{agreed_leader, start_cluster};
use crate::http;

/// Short timeouts so a transfer gives up within the test's patience.
const FAST: &[&str] = &["--request-timeout-ms", "3000"];
/// kvd's default election timeout.
const ELECTION_TIMEOUT: Duration = Duration::from_millis(1000);

async fn status(k: &Kvd) -> Option<kv_client::NodeStatus> {
    crate::node_status(&k.url).await
}

/// A put through `k` that gives up after `wait`: whether it was acknowledged.
async fn put_within(k: &Kvd, key: &str, wait: Duration) -> bool {
    let r = http().put(format!("{}/v1/kv/{key}", k.url)).body("x").timeout(wait).send().await;
    r.is_ok_and(|r| r.status() == 200)
}

/// kvctl `args` against `k`, left running.
fn kvctl(k: &Kvd, args: &[String]) -> Child {
    crate::kvctl::command(k, args).stdin(Stdio::null()).spawn().expect("run kvctl")
}

/// Freezes the follower a transfer away from the leader picks (the other
/// voter whose log matches furthest; on a tie, the highest id), runs
/// `kvctl args(leader id, target id)` against the leader, kills kvctl with
/// SIGKILL once the leader holds proposals (the transfer is under way),
/// thaws the follower, and checks that the cluster is left as it was: a
/// leader, writes through every member, and once leadership is handed back
/// to the first leader (whose heartbeats the transfer paused), one leader
/// and one term while idle, and nothing held on any member.
async fn cancel_mid_transfer(args: impl Fn(u64, u64) -> Vec<String>) {
    let nodes = start_cluster(3, FAST).await;
    let all: Vec<&Kvd> = nodes.iter().collect();
    let leader = agreed_leader(&all).await;
    let at = |id: u64| &nodes[(id - 1) as usize];
    let target = nodes.iter().map(|n| n.id).filter(|id| *id != leader).max().expect("a follower");
    // Every member holds the whole log, so the transfer finds its target
    // caught up; frozen, the target never takes over.
    for n in &nodes {
        assert!(put_within(n, &format!("before/{}", n.id), Duration::from_secs(10)).await, "put through node {}", n.id);
    }
    // NOTE: a write is answered once a quorum holds it; the target may take
    // it a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (l, t) = (status(at(leader)).await, status(at(target)).await);
        if let (Some(l), Some(t)) = (l, t) {
            if t.last_log_index == l.last_log_index {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the target never held the leader's whole log");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    at(target).pause();

    let mut child = kvctl(at(leader), &args(leader, target));
    let ended = |child: &mut Child| {
        if let Ok(Some(s)) = child.try_wait() {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err);
            panic!("kvctl ended ({s}) before it could be cancelled: {err}");
        }
    };
    // NOTE: no write before the transfer has begun: the frozen target
    // would not hold the whole log.
    let deadline = Instant::now() + Duration::from_secs(20);
    let begun = || {
        let log = at(leader).log_text();
        log.lines().find(|l| l.contains("transferring leadership")).map(str::to_owned)
    };
    let line = loop {
        if let Some(line) = begun() {
            break line;
        }
        ended(&mut child);
        assert!(Instant::now() < deadline, "the leader never began the transfer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(line.contains(&format!("target={target}")), "the transfer went elsewhere than node {target}: {line:?}");
    // Proposals are held once the transfer has paused the leader: a write
    // through it is then not acknowledged.
    let mut probe = 0;
    while put_within(at(leader), &format!("probe/{probe}"), Duration::from_secs(1)).await {
        ended(&mut child);
        assert!(Instant::now() < deadline, "the leader never held proposals for the transfer");
        probe += 1;
    }
    child.kill().expect("SIGKILL kvctl");
    let _ = child.wait();
    at(target).resume();

    // The cluster takes writes through every member again.
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in &nodes {
        while !put_within(n, &format!("after/{}", n.id), Duration::from_secs(5)).await {
            assert!(Instant::now() < deadline, "no write through node {} after the cancelled transfer", n.id);
        }
    }
    // Leadership goes back to the node that ran the cancelled transfer.
    if agreed_leader(&all).await != leader {
        let r = http()
            .post(format!("{}/v1/cluster/leader", at(target).url))
            .json(&serde_json::json!({ "id": leader }))
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .expect("transfer back");
        assert_eq!(r.status(), 200, "transfer back to node {leader}: {}", r.text().await.unwrap_or_default());
    }
    assert_eq!(agreed_leader(&all).await, leader);
    // Idle, it keeps its followers: its heartbeats renew their leases.
    let term = status(at(leader)).await.expect("leader status").term;
    let watch_until = Instant::now() + ELECTION_TIMEOUT * 8;
    while Instant::now() < watch_until {
        for n in &nodes {
            let s = status(n).await.unwrap_or_else(|| panic!("node {} answers its status", n.id));
            assert!(
                s.term == term && s.leader == Some(leader),
                "idle after the cancelled transfer, node {} moved from term {term} under node {leader} to term {} \
                 under {:?}: node {leader} leads without heartbeats",
                n.id,
                s.term,
                s.leader
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in &nodes {
        assert!(put_within(n, &format!("idle/{}", n.id), Duration::from_secs(5)).await, "put through node {}", n.id);
        let text = http().get(format!("{}/metrics", n.url)).send().await.expect("metrics").text().await.expect("text");
        for held in ["kv_raft_heartbeats_paused", "kv_raft_elections_held", "kv_proposals_held"] {
            assert_eq!(crate::disk::metric(&text, held), 0, "{held} on node {}", n.id);
        }
    }
}

#[tokio::test]
async fn a_leader_transfer_cancelled_mid_way_leaves_nothing_held() {
    cancel_mid_transfer(|_, target| vec!["leader".into(), "transfer".into(), target.to_string()]).await;
}

#[tokio::test]
async fn a_leader_self_removal_cancelled_mid_transfer_leaves_nothing_held() {
    cancel_mid_transfer(|leader, _| vec!["member".into(), "remove".into(), leader.to_string()]).await;
}
