//! Stale reads (`?stale=true`): what a member answers from its own state
//! while it installs a snapshot, and across its own crash.

use std::time::{Duration, Instant};

use kv_client::{ListResponse, NodeStatus};
use kv_tests::Kvd;

use crate::cluster::add_ok;
use crate::{http, put};

/// Short timeouts so failures show within the test's patience.
const FAST: &[&str] = &["--request-timeout-ms", "3000"];

async fn status(url: &str) -> NodeStatus {
    crate::node_status(url).await.expect("status")
}

/// One stale read's answer: a listing of `order/` at a revision, or a
/// refusal (503 with `Retry-After` and the JSON error of DESIGN.md §4).
enum Answer {
    State(ListResponse),
    Refused,
}

async fn stale_list(url: &str, prefix: &str) -> Answer {
    let r = http()
        .get(format!("{url}/v1/list/{prefix}?recursive=true&stale=true&limit=10000"))
        .send()
        .await
        .expect("stale list");
    if r.status() == 503 {
        assert!(r.headers().contains_key("retry-after"), "a 503 without Retry-After");
        let body: serde_json::Value = r.json().await.expect("a 503 has a JSON body");
        assert_eq!(body["error"], "unavailable", "{body}");
        return Answer::Refused;
    }
    assert_eq!(r.status(), 200, "stale list: {}", r.text().await.unwrap_or_default());
    Answer::State(r.json().await.expect("list json"))
}

/// The keys of `order/` that existed at revision `rev`, given the revision
/// each was written at (each written once, in order).
fn order_keys_at(written: &[(String, u64)], rev: u64) -> Vec<String> {
    written.iter().filter(|(_, r)| *r <= rev).map(|(k, _)| k.clone()).collect()
}

/// A learner that fell behind gets a snapshot; while it loads it, every
/// stale read shows a state that existed (all keys written up to its
/// revision, none after) or is refused. The load used to clear the state
/// first and fill it in batches, with the old revision showing throughout:
/// keys missing under a revision they were written before.
#[tokio::test]
async fn stale_reads_during_a_snapshot_install_show_only_states_that_existed() {
    let extra = ["--snapshot-logs", "20", "--request-timeout-ms", "3000"];
    let leader = Kvd::bootstrap(&extra);
    let mut learner = Kvd::empty(2, &extra);
    add_ok(&leader, &mut learner, true).await;
    let mut written: Vec<(String, u64)> = Vec::new();
    for i in 0..20 {
        let key = format!("order/{i:03}");
        written.push((key.clone(), put(&leader.url, &key, "v").await));
    }
    // The learner has them all, then stops hearing from the leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Answer::State(l) = stale_list(&learner.url, "order").await {
            if l.entries.len() == 20 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the learner did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let behind = status(&learner.url).await.applied_index;
    learner.pause();
    // Many records make the load long; more ordered keys come after them.
    let c = leader.client();
    for batch in 0..100 {
        let puts: Vec<kv_client::TxnOp> =
            (0..1000).map(|i| kv_client::TxnOp::put(format!("bulk/{batch:03}/{i:03}"), "b".repeat(64))).collect();
        c.txn(&kv_client::TxnRequest { success: puts, ..Default::default() }).await.expect("bulk txn");
    }
    for i in 20..40 {
        let key = format!("order/{i:03}");
        written.push((key.clone(), put(&leader.url, &key, "v").await));
    }
    let last = written.last().map(|(_, r)| *r).expect("writes");
    // The leader purges the log the learner would need: it must get a snapshot.
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&leader.url).await.purged_index <= behind + 1 {
        assert!(Instant::now() < deadline, "the leader never purged its log");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Readers poll the learner from before it wakes until it has it all.
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (url, written) = (learner.url.clone(), written.clone());
            tokio::spawn(async move {
                let (mut states, mut refused, mut lowest) = (0u32, 0u32, u64::MAX);
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    match stale_list(&url, "order").await {
                        Answer::Refused => refused += 1,
                        Answer::State(l) => {
                            let keys: Vec<String> = l.entries.iter().map(|e| e.key.clone()).collect();
                            let want = order_keys_at(&written, l.revision);
                            assert_eq!(
                                keys, want,
                                "a stale read at revision {} shows a state that never existed",
                                l.revision
                            );
                            states += 1;
                            lowest = lowest.min(l.revision);
                            if l.revision >= last {
                                return (states, refused, lowest);
                            }
                        }
                    }
                    assert!(Instant::now() < deadline, "the learner never got the snapshot");
                }
            })
        })
        .collect();
    learner.resume();
    for r in readers {
        let (states, refused, lowest) = r.await.expect("reader");
        assert!(lowest < last, "the reader did not see the state before the install");
        println!("reader: {states} whole states, {refused} refusals");
    }
    let s = status(&learner.url).await;
    assert!(s.snapshot_index > behind, "the learner did not get a snapshot: {s:?}");
}

/// A learner served a stale read at revision R, then crashed (`kill -9`)
/// while its leader was unreachable. Its state machine's last writes ride
/// along with the next log fsync, so they were lost with the process; on
/// restart it re-applied only as far as its last durable commit hint and
/// served stale reads below R. It must refuse them (503) until it is back
/// at or past anything it could have served.
#[tokio::test]
async fn a_restarted_member_never_serves_stale_reads_below_what_it_served() {
    let leader = Kvd::bootstrap(FAST);
    let mut learner = Kvd::empty(2, FAST);
    add_ok(&leader, &mut learner, true).await;
    let mut last = 0;
    for i in 0..10 {
        last = put(&leader.url, &format!("r/{i}"), "v").await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let served = loop {
        if let Answer::State(l) = stale_list(&learner.url, "r").await {
            if l.revision >= last {
                break l.revision;
            }
        }
        assert!(Instant::now() < deadline, "the learner did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Nobody tells the learner what is committed while it restarts.
    leader.pause();
    learner.kill9();
    learner.start_again();
    let mut answers = Vec::new();
    for _ in 0..50 {
        match stale_list(&learner.url, "r").await {
            Answer::Refused => answers.push(None),
            Answer::State(l) => {
                assert!(
                    l.revision >= served,
                    "after a crash the member served revision {} after serving {served} (answers so far: {answers:?})",
                    l.revision
                );
                answers.push(Some(l.revision));
            }
        }
    }
    // With its leader back it catches up and serves again.
    leader.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match stale_list(&learner.url, "r").await {
            Answer::State(l) => {
                assert!(l.revision >= served, "served revision {} after {served}", l.revision);
                assert_eq!(l.entries.len(), 10);
                break;
            }
            Answer::Refused => {
                assert!(Instant::now() < deadline, "the member never served stale reads again");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
