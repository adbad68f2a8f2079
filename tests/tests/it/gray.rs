//! Members that hang instead of failing: every wait has a bound.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kv_tests::{bin, Kvd};

use crate::cluster::{agreed_leader, start_cluster};
use crate::kvctl::command;

/// How long kvctl gives each member in these tests (`KVCTL_COMMAND_TIMEOUT`).
const COMMAND_TIMEOUT: &str = "2s";
/// What a kvctl command facing a frozen member must return within: a few
/// command timeouts, with room for a loaded machine.
const BOUND: Duration = Duration::from_secs(30);

/// A 3-node cluster with one follower frozen (SIGSTOP): the cluster, the
/// frozen one's index and the two others'.
async fn cluster_with_a_frozen_follower() -> (Vec<Kvd>, usize, [usize; 2]) {
    let nodes = start_cluster(3, &[]).await;
    let leader = agreed_leader(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    let followers: Vec<usize> = (0..3).filter(|i| nodes[*i].id != leader).collect();
    let frozen = followers[0];
    let others = [(leader - 1) as usize, followers[1]];
    nodes[frozen].pause();
    (nodes, frozen, others)
}

/// kvctl against `first` then `more` (all through `--endpoints`), with the
/// test's command timeout.
fn kvctl(first: &Kvd, more: &[&Kvd], args: &[&str]) -> Command {
    let mut c = command(first, &[] as &[&str]);
    if !more.is_empty() {
        let urls: Vec<&str> = more.iter().map(|k| k.url.as_str()).collect();
        c.arg("--endpoints").arg(urls.join(","));
    }
    c.args(args).env("KVCTL_COMMAND_TIMEOUT", COMMAND_TIMEOUT).stdin(Stdio::null());
    c
}

/// Runs `c` and waits for it at most [`BOUND`]; panics naming `what` when it
/// is still running then.
fn returns_within_bound(mut c: Command, what: &str) -> Output {
    let mut child = c.spawn().expect("run kvctl");
    let deadline = Instant::now() + BOUND;
    loop {
        if child.try_wait().expect("kvctl status").is_some() {
            return child.wait_with_output().expect("kvctl output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not return within {BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn kvctl_get_and_put_move_past_a_frozen_member() {
    let (nodes, f, [a, b]) = cluster_with_a_frozen_follower().await;
    let (frozen, others) = (&nodes[f], [&nodes[a], &nodes[b]]);
    crate::put(&nodes[a].url, "gray/k", "v").await;

    // The frozen member first: each command moves on to the others.
    let out = returns_within_bound(kvctl(frozen, &others, &["get", "gray/k"]), "get with a frozen member first");
    assert_eq!(out.stdout, b"v", "{}", stderr(&out));
    let out = returns_within_bound(kvctl(frozen, &others, &["put", "gray/new", "w"]), "put with a frozen member first");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = returns_within_bound(kvctl(others[1], &[], &["get", "gray/new"]), "get through a live member");
    assert_eq!(out.stdout, b"w", "{}", stderr(&out));

    // Only the frozen member: a clear failure, within the bound.
    for (args, what) in [(&["get", "gray/k"][..], "get"), (&["put", "gray/other", "x"][..], "put")] {
        let out = returns_within_bound(kvctl(frozen, &[], args), &format!("{what} against only a frozen member"));
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(&frozen.url) && err.contains("no answer within 2 s"), "{what}: {err}");
    }
    // The default bound applies without the flag or the variable.
    let mut c = kvctl(frozen, &[], &["get", "gray/k"]);
    c.env_remove("KVCTL_COMMAND_TIMEOUT");
    let out = returns_within_bound(c, "get against only a frozen member, default timeout");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // The flag overrides the variable.
    let mut c = kvctl(frozen, &[], &["--command-timeout", "1500ms", "get", "gray/k"]);
    c.env("KVCTL_COMMAND_TIMEOUT", "30s");
    let out = returns_within_bound(c, "get with --command-timeout");
    assert!(stderr(&out).contains("no answer within 1.5 s"), "{}", stderr(&out));

    // Thawed, the member catches up; the put it took while frozen, resent
    // elsewhere with the same request id, was applied once.
    frozen.resume();
    let deadline = Instant::now() + BOUND;
    loop {
        let out = kvctl(frozen, &[], &["get", "gray/new"]).output().expect("kvctl");
        if out.stdout == b"w" {
            break;
        }
        assert!(Instant::now() < deadline, "the thawed member never served the put: {}", stderr(&out));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v = frozen.client().get("gray/new").await.expect("get").expect("the key exists");
    assert_eq!(v.meta.version, 1, "the put was applied more than once");
}

#[tokio::test]
async fn kvctl_health_and_status_name_a_frozen_member_within_the_bound() {
    let (nodes, f, [a, b]) = cluster_with_a_frozen_follower().await;
    let frozen = &nodes[f];
    let named = format!("node {}", frozen.id);
    for first in [&nodes[a], frozen] {
        let more: &[&Kvd] = if first.id == frozen.id { &[&nodes[b]] } else { &[] };
        let out = returns_within_bound(kvctl(first, more, &["health"]), "health with a frozen member");
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains(&named), "{}", stderr(&out));
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        let row = |id: u64| table.lines().find(|l| l.starts_with(&id.to_string())).unwrap_or_default().to_owned();
        assert!(row(frozen.id).contains("unhealthy"), "{table}");
        for k in [&nodes[a], &nodes[b]] {
            assert!(row(k.id).contains("healthy") && !row(k.id).contains("unhealthy"), "{table}");
        }
    }
    let out = returns_within_bound(kvctl(&nodes[a], &[], &["health", "-o", "json"]), "health -o json");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let healthy = |id: u64| v.as_array().and_then(|a| a.iter().find(|m| m["id"] == id)).map(|m| m["healthy"].clone());
    assert_eq!(healthy(frozen.id), Some(serde_json::Value::Bool(false)), "{v}");
    assert_eq!(healthy(nodes[a].id), Some(serde_json::Value::Bool(true)), "{v}");

    for first in [&nodes[b], frozen] {
        let more: &[&Kvd] = if first.id == frozen.id { &[&nodes[a]] } else { &[] };
        let out = returns_within_bound(kvctl(first, more, &["status"]), "status with a frozen member");
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains(&named), "{}", stderr(&out));
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        let row = table.lines().find(|l| l.starts_with(&frozen.id.to_string())).unwrap_or_default();
        assert!(row.contains("unreachable"), "{table}");
        assert_eq!(table.lines().count(), 4, "{table}");
    }

    frozen.resume();
    let deadline = Instant::now() + BOUND;
    loop {
        let out = returns_within_bound(kvctl(&nodes[a], &[], &["health"]), "health after the thaw");
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "the thawed member never became healthy: {}", stderr(&out));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn kvctl_watch_against_only_a_frozen_member_gives_up() {
    let (nodes, f, _) = cluster_with_a_frozen_follower().await;
    let out = returns_within_bound(kvctl(&nodes[f], &[], &["watch", "app"]), "watch against only a frozen member");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no answer within 2 s"), "{}", stderr(&out));
    nodes[f].resume();
}

#[test]
fn a_bad_command_timeout_is_refused() {
    for bad in ["0", "0s", "-1", "5x", "fast", "2h", ""] {
        let out = Command::new(bin("kvctl"))
            .args(["--endpoints", "http://127.0.0.1:1", &format!("--command-timeout={bad}"), "get", "a"])
            .output()
            .expect("run kvctl");
        assert_eq!(out.status.code(), Some(2), "--command-timeout {bad:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("--command-timeout"), "{}", stderr(&out));
        if bad.is_empty() {
            continue; // an empty variable counts as unset
        }
        let out = Command::new(bin("kvctl"))
            .args(["--endpoints", "http://127.0.0.1:1", "get", "a"])
            .env("KVCTL_COMMAND_TIMEOUT", bad)
            .output()
            .expect("run kvctl");
        assert_eq!(out.status.code(), Some(2), "KVCTL_COMMAND_TIMEOUT={bad:?}: {}", stderr(&out));
    }
}
