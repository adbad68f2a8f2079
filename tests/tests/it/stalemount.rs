//! Mounts behind members that hang, are cut off or removed: each serves a
//! change made elsewhere within 10 s and says meanwhile that it is stale;
//! and status files that tell a dead mount from a live one.

use std::time::{Duration, Instant};

use kv_tests::net::Net;
use kv_tests::{Kvd, Mount};

use crate::mount::eventually;

/// The propagation bound a mount behind a failed member must keep.
const BOUND: Duration = Duration::from_secs(10);

/// `-o endpoints=` naming `others`.
fn endpoints(others: &[&Kvd]) -> String {
    let urls: Vec<&str> = others.iter().map(|k| k.url.as_str()).collect();
    format!("endpoints={}", urls.join("+"))
}

/// Puts through `k` alone, retrying while the cluster elects a new leader.
fn put_through(rt: &tokio::runtime::Runtime, k: &Kvd, key: &str, value: &str) {
    let c = k.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match rt.block_on(c.put(key, value.to_owned(), &Default::default())) {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "put {key} through node {}: {e}", k.id),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls the mount until `file` holds `want`, for at most [`BOUND`];
/// returns whether the status file said stale (or disconnected) meanwhile.
fn serves_within_bound(m: &Mount, file: &str, want: &str) -> bool {
    let deadline = Instant::now() + BOUND;
    let mut said_stale = false;
    loop {
        let s = m.status();
        said_stale |= !s["stale_since"].is_null() || s["connected"] == false;
        if m.sh(&format!("cat {file}")).stdout == want.as_bytes() {
            return said_stale;
        }
        assert!(
            Instant::now() < deadline,
            "the mount did not serve {file}={want:?} within {BOUND:?}; status {s}\nkvfs log:\n{}",
            m.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the member at `url` answers a new watch with 503.
fn refuses_watches(rt: &tokio::runtime::Runtime, url: &str) -> bool {
    rt.block_on(async {
        let r = crate::http().get(format!("{url}/v1/watch/app")).timeout(Duration::from_secs(5)).send().await;
        r.is_ok_and(|r| r.status() == 503)
    })
}

#[test]
fn a_mount_behind_a_frozen_member_serves_a_change_made_elsewhere_within_10s() {
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let nodes = rt.block_on(crate::cluster::start_cluster(3, &[]));
    let (a, b) = (&nodes[0], &nodes[1]);
    let m = Mount::start(&format!("{}/app", a.url), &[&endpoints(&[b, &nodes[2]])]);
    put_through(&rt, b, "app/conf", "before");
    eventually("the mount has the first value", || m.sh("cat conf").stdout == b"before");
    a.pause();
    put_through(&rt, b, "app/conf", "after");
    let said_stale = serves_within_bound(&m, "conf", "after");
    a.resume();
    assert!(said_stale, "the status file never said stale while the mount was: {}", m.status());
    assert_ne!(m.status()["endpoint"], a.url.as_str(), "the mount still watches the frozen member");
}

/// Starts three members, one per namespace of `net`.
async fn cluster_in(net: &Net) -> Vec<Kvd> {
    let mut nodes = vec![Kvd::bootstrap_in(net, 0, &[])];
    for i in 1..3 {
        let mut n = Kvd::empty_in(net, i, i as u64 + 1, &[]);
        nodes[0].client().add_member(&n.add_request()).await.expect("add member");
        n.wait_ready();
        nodes.push(n);
    }
    nodes
}

/// The mount (in the test's namespace) still reaches the member; the
/// member no longer reaches its peers, and ends its watch streams.
#[test]
fn a_mount_behind_a_partitioned_member_serves_a_change_made_elsewhere_within_10s() {
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let mut net = Net::new(3);
    let nodes = rt.block_on(cluster_in(&net));
    let (a, b) = (&nodes[0], &nodes[1]);
    let m = Mount::start(&format!("{}/app", a.url), &[&endpoints(&[b, &nodes[2]])]);
    put_through(&rt, b, "app/conf", "before");
    eventually("the mount has the first value", || m.sh("cat conf").stdout == b"before");
    net.partition(&[0]);
    put_through(&rt, b, "app/conf", "after");
    serves_within_bound(&m, "conf", "after");
    assert_ne!(m.status()["endpoint"], a.url.as_str(), "the mount still watches the cut-off member");
    assert!(refuses_watches(&rt, &a.url), "a member without its quorum accepts new watches");
    net.heal();
}

#[test]
fn a_mount_behind_a_removed_member_moves_on() {
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let nodes = rt.block_on(crate::cluster::start_cluster(3, &[]));
    let (a, b) = (&nodes[2], &nodes[0]);
    let m = Mount::start(&format!("{}/app", a.url), &[&endpoints(&[b, &nodes[1]])]);
    put_through(&rt, b, "app/conf", "before");
    eventually("the mount has the first value", || m.sh("cat conf").stdout == b"before");
    rt.block_on(b.client().remove_member(a.id)).expect("remove the member behind the mount");
    put_through(&rt, b, "app/conf", "after");
    serves_within_bound(&m, "conf", "after");
    assert_ne!(m.status()["endpoint"], a.url.as_str(), "the mount still watches the removed member");
    assert!(refuses_watches(&rt, &a.url), "a removed member accepts new watches");
}

/// The check kvfs(8) documents: the status file's pid runs, in this boot,
/// and started when the file says.
fn mount_alive(s: &serde_json::Value) -> bool {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
    let Some(pid) = s["pid"].as_u64() else { return false };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The start time is field 22; the command name (field 2) may hold spaces.
    let start = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(19)).map(str::to_owned);
    s["boot_id"].as_str() == Some(boot.trim()) && s["start_time"].as_u64().map(|t| t.to_string()) == start
}

#[test]
fn a_killed_mounts_status_file_tells_it_is_dead_and_a_stopped_one_has_none() {
    let k = Kvd::bootstrap(&[]);
    let mut m = Mount::start(&format!("{}/app", k.url), &[]);
    let s = m.status();
    assert!(mount_alive(&s), "a live mount's status file reads as dead: {s}");
    m.kill9();
    let s = m.status();
    assert!(!mount_alive(&s), "a killed mount's status file reads as alive: {s}");
    let mut m = Mount::start(&format!("{}/app", k.url), &[]);
    assert_eq!(m.stop(), Some(0));
    let left: Vec<_> = std::fs::read_dir(&m.status_dir).expect("status dir").filter_map(Result::ok).collect();
    assert!(left.is_empty(), "a stopped mount left {left:?}");
}
