//! Reload in order: `kvctl watch --exec` with `--wait` (bursts, one run at a
//! time, failed runs carried over) and `--mount` (the command reads what
//! triggered it through the mount).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kv_tests::{bin, Kvd, Mount};

use crate::{put, revision};

/// How long any one thing a test waits for may take.
const BOUND: Duration = Duration::from_secs(30);

/// A running `kvctl watch`, killed (by its pid) on drop; its stderr goes to
/// a file.
struct Watcher {
    child: Child,
    stderr: PathBuf,
}

impl Watcher {
    fn start(k: &Kvd, dir: &Path, args: &[&str]) -> Watcher {
        let stderr = dir.join("kvctl.stderr");
        let child = Command::new(bin("kvctl"))
            .arg("--endpoints")
            .arg(&k.url)
            .arg("watch")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("run kvctl watch");
        Watcher { child, stderr }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Fails the test if kvctl exited.
    fn alive(&mut self) {
        if let Ok(Some(s)) = self.child.try_wait() {
            panic!("kvctl watch exited ({s}): {}", self.stderr());
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines of `path` (none while it does not exist).
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

/// Polls `cond` every 20 ms until it holds; fails the test after [`BOUND`].
async fn until(what: &str, w: &mut Watcher, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !cond() {
        w.alive();
        assert!(Instant::now() < deadline, "{what}: not within {BOUND:?}; kvctl said: {}", w.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn wait_coalesces_a_burst_of_writes_into_one_run() {
    let k = Kvd::bootstrap(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let from = revision(&k.url).await.to_string();
    let cmd = r#"echo "$KV_CHANGES $KV_REVISION ${KV_KEY-none}" >> runs; printf '%s\n' "$KV_KEYS" >> keys"#;
    let mut w = Watcher::start(&k, tmp.path(), &["app", "--rev", &from, "--wait", "1s:20s", "--exec", cmd]);
    let keys: Vec<String> = (0..50).map(|i| format!("app/k{i:02}")).collect();
    let revs = futures_util::future::join_all(keys.iter().map(|key| put(&k.url, key, "v"))).await;
    let last = revs.iter().max().copied().expect("revisions");
    let runs = tmp.path().join("runs");
    until("the run for the burst", &mut w, || !lines(&runs).is_empty()).await;
    // One more change: the next run is for it alone, so the burst had one.
    let one = put(&k.url, "app/zz", "v").await;
    until("the run for the change after the burst", &mut w, || lines(&runs).len() >= 2).await;
    assert_eq!(lines(&runs), [format!("50 {last} none"), format!("1 {one} app/zz")], "{}", w.stderr());
    let mut want = keys.clone();
    want.push("app/zz".into());
    assert_eq!(lines(&tmp.path().join("keys")), want);
}

#[tokio::test]
async fn wait_min_max_runs_at_max_under_a_steady_trickle() {
    let k = Kvd::bootstrap(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let from = revision(&k.url).await.to_string();
    let cmd = r#"echo "$KV_CHANGES $KV_REVISION" >> runs"#;
    let mut w = Watcher::start(&k, tmp.path(), &["app", "--rev", &from, "--wait", "400ms:1s", "--exec", cmd]);
    let runs = tmp.path().join("runs");
    // A change every 100 ms for 4 s: never quiet for 400 ms.
    let mut last = 0;
    for i in 0..40 {
        last = put(&k.url, "app/tick", &i.to_string()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = lines(&runs).len();
    w.alive();
    assert!(during >= 2, "{during} runs during a 4 s trickle with MAX 1s: {:?}; {}", lines(&runs), w.stderr());
    until("the run for the end of the trickle", &mut w, || {
        lines(&runs).last().is_some_and(|l| l.ends_with(&format!(" {last}")))
    })
    .await;
    let changes: u64 = lines(&runs).iter().filter_map(|l| l.split(' ').next()?.parse::<u64>().ok()).sum();
    assert_eq!(changes, lines(&runs).len() as u64, "one key per run: {:?}", lines(&runs));
}

#[tokio::test]
async fn wait_never_runs_the_command_twice_at_once() {
    let k = Kvd::bootstrap(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let from = revision(&k.url).await.to_string();
    // mkdir is atomic: a second run while one holds the lock says so.
    let cmd = r#"mkdir lock 2>/dev/null || echo OVERLAP >> log
        echo "start $KV_REVISION" >> log; sleep 0.3; echo "end $KV_REVISION" >> log; rmdir lock"#;
    let mut w = Watcher::start(&k, tmp.path(), &["app", "--rev", &from, "--wait", "50ms", "--exec", cmd]);
    let log = tmp.path().join("log");
    let mut last = 0;
    for i in 0..15 {
        last = put(&k.url, &format!("app/k{}", i % 4), &i.to_string()).await;
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    let done = format!("end {last}");
    until("the run for the last change", &mut w, || lines(&log).last() == Some(&done)).await;
    let log = lines(&log);
    assert!(!log.iter().any(|l| l == "OVERLAP"), "two runs at once: {log:?}");
    // Runs alternate start and end, one revision each, in order.
    assert!(log.len() >= 4, "{log:?}");
    let mut prev = 0;
    for pair in log.chunks(2) {
        let (start, end) = (&pair[0], pair.get(1).expect("an end"));
        let rev: u64 = start.strip_prefix("start ").and_then(|r| r.parse().ok()).expect("a start");
        assert_eq!(end, &format!("end {rev}"), "{log:?}");
        assert!(rev > prev, "{log:?}");
        prev = rev;
    }
}

#[tokio::test]
async fn a_failing_command_is_reported_and_retried_with_the_next_change() {
    let k = Kvd::bootstrap(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let from = revision(&k.url).await.to_string();
    std::fs::write(tmp.path().join("fail"), "").expect("fail file");
    let cmd = r#"echo "$KV_CHANGES $KV_REVISION $(echo $KV_KEYS)" >> runs; test ! -e fail || exit 3"#;
    let mut w = Watcher::start(&k, tmp.path(), &["app", "--rev", &from, "--wait", "50ms", "--exec", cmd]);
    let runs = tmp.path().join("runs");
    let a = put(&k.url, "app/a", "1").await;
    until("the failed run is reported", &mut w, || w_said(&tmp, "exit status: 3")).await;
    assert_eq!(lines(&runs), [format!("1 {a} app/a")]);
    let said = std::fs::read_to_string(tmp.path().join("kvctl.stderr")).unwrap_or_default();
    assert!(said.contains(&format!("revision {a}")), "{said}");
    std::fs::remove_file(tmp.path().join("fail")).expect("rm fail");
    let b = put(&k.url, "app/b", "2").await;
    until("the retry", &mut w, || lines(&runs).len() >= 2).await;
    assert_eq!(lines(&runs), [format!("1 {a} app/a"), format!("2 {b} app/a app/b")], "{}", w.stderr());
    // A command that cannot start is a failed run too.
    drop(w);
    let mut w =
        Watcher::start(&k, tmp.path(), &["app", "--rev", &b.to_string(), "--wait", "50ms", "--exec", "exec ./missing"]);
    put(&k.url, "app/c", "3").await;
    until("a command that cannot start is reported", &mut w, || w_said(&tmp, "exit status: 127")).await;
}

#[tokio::test]
async fn a_failed_run_is_tried_again_after_a_pause_without_a_new_change() {
    let k = Kvd::bootstrap(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let from = revision(&k.url).await.to_string();
    std::fs::write(tmp.path().join("fail"), "").expect("fail file");
    let cmd = r#"echo "$KV_REVISION $(echo $KV_KEYS)" >> runs; test ! -e fail || exit 3"#;
    let mut w = Watcher::start(&k, tmp.path(), &["app", "--rev", &from, "--wait", "50ms", "--exec", cmd]);
    let runs = tmp.path().join("runs");
    let a = put(&k.url, "app/a", "1").await;
    until("the failed run", &mut w, || w_said(&tmp, "exit status: 3")).await;
    std::fs::remove_file(tmp.path().join("fail")).expect("rm fail");
    until("the retry, with no change since", &mut w, || lines(&runs).len() >= 2).await;
    assert_eq!(lines(&runs), [format!("{a} app/a"), format!("{a} app/a")], "{}", w.stderr());
}

fn w_said(tmp: &tempfile::TempDir, what: &str) -> bool {
    std::fs::read_to_string(tmp.path().join("kvctl.stderr")).unwrap_or_default().contains(what)
}

#[tokio::test]
async fn with_mount_the_command_reads_the_new_value_through_the_mount() {
    let k = Kvd::bootstrap(&[]);
    put(&k.url, "app/conf/value", "v-initial").await;
    let m = Mount::start(&format!("{}/app", k.url), &[]);
    assert_eq!(m.status()["prefix"], "app", "the status file names the mount's prefix");
    let tmp = tempfile::tempdir().expect("tempdir");
    let from = revision(&k.url).await.to_string();
    let file = m.dir.join("conf/value");
    let cmd = format!(r#"echo "$KV_REVISION $(cat '{}')" >> seen"#, file.display());
    let (dir, status_dir) = (m.dir.display().to_string(), m.status_dir.display().to_string());
    let args = ["app/conf", "--rev", &from, "--mount", &dir, "--status-dir", &status_dir, "--exec", &cmd];
    let mut w = Watcher::start(&k, tmp.path(), &args);
    let seen = tmp.path().join("seen");
    let mut want = Vec::new();
    for i in 0..40 {
        let value = format!("v{i}");
        let rev = put(&k.url, "app/conf/value", &value).await;
        want.push(format!("{rev} {value}"));
        until("the run for the change", &mut w, || lines(&seen).len() == want.len()).await;
    }
    assert_eq!(lines(&seen), want, "a run read an old value through the mount");
}

#[tokio::test]
async fn mount_that_is_not_a_kvfs_mount_of_the_prefix_is_refused() {
    let k = Kvd::bootstrap(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let refused = |args: &[&str], why: &str| {
        let out = crate::kvctl::command(&k, &[&["watch"], args].concat()).output().expect("kvctl");
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {said}");
        assert!(said.contains(why), "{args:?}: {said}");
    };
    let plain = tmp.path().display().to_string();
    refused(&["app", "--exec", "true", "--mount", &plain], "not a kvfs mount (not a mount point)");
    refused(&["app", "--exec", "true", "--mount", "/proc"], "not a kvfs mount (a proc mount)");
    refused(&["app", "--exec", "true", "--mount", "/nonexistent"], "--mount /nonexistent");
    let m = Mount::start(&format!("{}/app/web", k.url), &[]);
    let (dir, status_dir) = (m.dir.display().to_string(), m.status_dir.display().to_string());
    refused(&["app", "--exec", "true", "--mount", &dir, "--status-dir", &status_dir], "do not hold every key");
    refused(&["app/web", "--exec", "true", "--mount", &dir], "--status-dir");
    // Usage errors: --mount and --wait need --exec.
    let out = crate::kvctl::command(&k, &["watch", "app", "--mount", &dir]).output().expect("kvctl");
    assert_eq!(out.status.code(), Some(2));
}
