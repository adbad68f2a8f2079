//! Disk faults (DESIGN.md §3): a data dir on a small filesystem that fills
//! up, an fsync that fails, and a data dir whose journal was torn or
//! damaged by a crash.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kv_client::{ErrorCode, PutOptions};
use kv_tests::{bin, Kvd, Mount};

/// A tmpfs of `mib` MiB mounted for the life of the value.
struct SmallFs {
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl SmallFs {
    fn new(mib: u64) -> SmallFs {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("fs");
        std::fs::create_dir(&dir).expect("mkdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "kvtest"])
            .arg(&dir)
            .status()
            .expect("mount");
        assert!(ok.success(), "mounting a tmpfs needs root");
        SmallFs { dir, _tmp: tmp }
    }

    /// Bytes available, per `stat -f`.
    fn available(&self) -> u64 {
        let out = Command::new("stat").args(["-f", "-c", "%a %S"]).arg(&self.dir).output().expect("stat -f");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text.split_whitespace().map(|n| n.parse::<u64>().expect("number"));
        it.next().expect("blocks") * it.next().expect("block size")
    }

    /// Fills the filesystem with `path` until fewer than `left` bytes are free.
    fn fill(&self, path: &Path, left: u64) {
        let size = self.available().saturating_sub(left) + 4096;
        std::fs::write(path, vec![0x5a_u8; size as usize]).expect("fill");
        assert!(self.available() < left, "the filler left {} bytes free", self.available());
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Polls `f` until it returns `Some`, for at most 10 s.
pub(crate) fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A bootstrapped kvd in `dir` whose fsyncs fail while `trigger` exists
/// (tests/failsync, which every kvd of the harness has loaded).
fn bootstrap_with_failing_fsync(dir: &Path, trigger: &Path) -> Kvd {
    Kvd::bootstrap_on(dir.join("data"), &[("KV_FAIL_FSYNC_FILE", trigger.to_str().expect("utf-8 path"))], &[])
}

/// `(last log index, applied index)` of a member, from its peer status.
pub(crate) fn peer_status(rt: &tokio::runtime::Runtime, k: &Kvd) -> Option<(u64, u64)> {
    let s: serde_json::Value =
        rt.block_on(async { reqwest::get(format!("{}/peer/v1/status", k.peer_url)).await?.json().await }).ok()?;
    Some((s["last_log_index"].as_u64()?, s["applied_index"].as_u64()?))
}

pub(crate) fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

#[test]
fn a_full_disk_refuses_writes_keeps_serving_reads_and_recovers() {
    let fs = SmallFs::new(96);
    let reserve = 24u64 << 20;
    let k = Kvd::bootstrap_on(fs.dir.join("data"), &[], &["--min-free-space", &reserve.to_string()]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let c = k.client();
    let put = |key: &str| rt.block_on(c.put(key, "v", &PutOptions::default()));
    put("before").expect("put with space");
    let m = Mount::start(&k.url, &[]);

    let metrics =
        || rt.block_on(async { reqwest::get(format!("{}/metrics", k.url)).await?.text().await }).expect("metrics");
    fs.fill(&fs.dir.join("filler"), reserve / 2);
    poll("the node to see the disk full", || (metric(&metrics(), "kv_disk_full") == 1).then_some(()));
    let err = put("during").expect_err("a write on a full disk");
    assert!(err.is(&ErrorCode::NoSpace), "{err}");
    let text = err.to_string();
    assert!(text.contains("no_space") || text.contains("out of disk space"), "{text}");
    assert_eq!(rt.block_on(c.get("during")).expect("get"), None, "a refused write wrote something");
    // Reads go on, through the API and the mount.
    assert_eq!(rt.block_on(c.get("before")).expect("get").map(|v| v.value), Some("v".into()));
    assert_eq!(m.sh_ok("cat before"), "v");
    // Writes through kvctl and the mount say why.
    let out = Command::new(bin("kvctl")).args(["--endpoints", &k.url, "put", "cli", "x"]).output().expect("kvctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("out of disk space"), "kvctl put: {stderr}");
    // NOTE: the shell ignores what close() says; cp reports it.
    let src = fs._tmp.path().join("src");
    std::fs::write(&src, "x\n").expect("src");
    let out = m.sh(&format!("cp {} fromfs", src.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("No space left on device"), "cp: {stderr}");
    assert_eq!(rt.block_on(c.get("fromfs")).expect("get"), None, "a refused copy wrote something");
    let text = metrics();
    assert_eq!(metric(&text, "kv_disk_full"), 1);
    assert!(metric(&text, "kv_writes_refused_no_space_total") >= 3);
    assert!(metric(&text, "kv_disk_free_bytes") < reserve);
    assert!(k.log_text().contains("disk nearly full"), "no log line");

    // Space freed: writes come back without a restart.
    std::fs::remove_file(fs.dir.join("filler")).expect("rm filler");
    poll("writes after space was freed", || put("after").ok());
    assert_eq!(metric(&metrics(), "kv_disk_full"), 0);
    m.sh_ok("echo y > fromfs");
    assert_eq!(rt.block_on(c.get("fromfs")).expect("get").map(|v| v.value), Some("y\n".into()));
}

#[test]
fn a_follower_out_of_space_falls_behind_and_catches_up() {
    let fs = SmallFs::new(96);
    let reserve = 24u64 << 20;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let a = Kvd::bootstrap(&[]);
    let mut b = Kvd::empty(2, &[]);
    let mut c = Kvd::empty_on(3, fs.dir.join("data"), &["--min-free-space", &reserve.to_string()]);
    for n in [&mut b, &mut c] {
        rt.block_on(a.client().add_member(&n.add_request())).expect("add member");
        n.wait_ready();
    }
    let metrics = |k: &Kvd| {
        rt.block_on(async { reqwest::get(format!("{}/metrics", k.url)).await?.text().await }).expect("metrics")
    };
    fs.fill(&fs.dir.join("filler"), reserve / 2);
    poll("node 3 to see its disk full", || (metric(&metrics(&c), "kv_disk_full") == 1).then_some(()));

    // The other two are a quorum: writes go on, node 3 refuses the ones sent to it.
    for i in 0..20 {
        rt.block_on(a.client().put(&format!("f/{i}"), "v", &PutOptions::default()))
            .expect("write with a full follower");
    }
    let err = rt.block_on(c.client().put("f/direct", "v", &PutOptions::default())).expect_err("refused");
    assert!(err.is(&ErrorCode::NoSpace), "{err}");
    // It still answers from what it has.
    let stale = rt.block_on(c.client().get_opts("f/0", true)).expect("stale read");
    assert!(stale.is_none(), "node 3 took an entry on a full disk");
    assert!(metric(&metrics(&c), "kv_writes_refused_no_space_total") >= 1);

    std::fs::remove_file(fs.dir.join("filler")).expect("rm filler");
    poll("node 3 to catch up", || rt.block_on(c.client().get_opts("f/19", true)).ok().flatten());
    assert!(c.running());
}

#[test]
fn a_failed_fsync_stops_the_node_before_it_acknowledges() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let trigger = tmp.path().join("fail-fsync");
    let mut k = bootstrap_with_failing_fsync(tmp.path(), &trigger);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let c = k.client();
    rt.block_on(c.put("before", "v", &PutOptions::default())).expect("put while fsync works");

    std::fs::write(&trigger, "").expect("trigger");
    let r = rt.block_on(c.put("during", "v", &PutOptions::default()));
    assert!(r.is_err(), "a write was acknowledged although its fsync failed: {r:?}");
    let code = k.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(70), "kvd must stop on a failed fsync:\n{}", k.log_text());
    assert!(k.log_text().contains("fsync of the journal failed"), "{}", k.log_text());

    // The disk works again: the node starts with what it acknowledged.
    std::fs::remove_file(&trigger).expect("rm trigger");
    k.start_again();
    k.wait_ready();
    assert_eq!(rt.block_on(k.client().get("before")).expect("get").map(|v| v.value), Some("v".into()));
}

/// Runs `kvd` on `data` until it is ready or exits: `Ok(client URL, child)`
/// or `Err(exit code, stderr)`.
fn start_on(data: &Path) -> Result<(String, std::process::Child), (Option<i32>, String)> {
    let log = data.with_extension("log");
    let addr = data.join("client.addr");
    let _ = std::fs::remove_file(&addr);
    let mut child = Command::new(bin("kvd"))
        .args(["--id", "1", "--client-addr", "127.0.0.1:0", "--peer-addr", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("kvd");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Err((s.code(), std::fs::read_to_string(&log).unwrap_or_default()));
        }
        if let Ok(a) = std::fs::read_to_string(&addr) {
            let url = format!("http://{}", a.trim());
            let ready = kv_tests::http_status(&format!("{url}/health/ready"), None);
            if ready == Some(200) {
                return Ok((url, child));
            }
        }
        assert!(Instant::now() < deadline, "kvd neither ready nor stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where the journal's written bytes end (the rest of the file is zeros).
fn journal(data: &Path) -> (PathBuf, usize) {
    let path = data.join("db/0.jnl");
    let bytes = std::fs::read(&path).expect("journal");
    let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
    (path, end)
}

#[test]
fn a_torn_journal_tail_is_recovered_and_a_damaged_journal_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut k = Kvd::bootstrap_on(tmp.path().join("data"), &[], &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let c = k.client();
    const N: usize = 30;
    for i in 1..=N {
        rt.block_on(c.put(&format!("k/{i:02}"), format!("v{i}"), &PutOptions::default())).expect("put");
    }
    k.kill9();
    let (_, end) = journal(&k.data_dir);
    assert!(end > 1000, "journal too small: {end}");

    // Cut the tail anywhere (mid-record included): the node starts with a
    // prefix of the acknowledged writes, each value whole.
    for cut in [1, 7, 40, 150, 600] {
        let copy = tmp.path().join(format!("cut{cut}"));
        copy_dir(&k.data_dir, &copy);
        let (path, end) = journal(&copy);
        std::fs::OpenOptions::new().write(true).open(&path).expect("open").set_len((end - cut) as u64).expect("cut");
        let (url, mut child) = start_on(&copy).unwrap_or_else(|e| panic!("cut {cut}: refused: {e:?}"));
        let list = rt
            .block_on(
                kv_client::Client::new(&[url])
                    .expect("client")
                    .list("k", &kv_client::ListOptions { recursive: true, values: true, ..Default::default() }),
            )
            .expect("list");
        let _ = child.kill();
        let _ = child.wait();
        let keys: Vec<String> = list.entries.iter().map(|e| e.key.clone()).collect();
        let prefix: Vec<String> = (1..=keys.len()).map(|i| format!("k/{i:02}")).collect();
        assert_eq!(keys, prefix, "cut {cut}: not a prefix of the writes");
        for (i, e) in list.entries.iter().enumerate() {
            assert_eq!(e.value.as_deref(), Some(format!("v{}", i + 1).as_str()), "cut {cut}: {} torn", e.key);
        }
        assert!(keys.len() + 10 >= N, "cut {cut} lost more than its tail: {} of {N}", keys.len());
    }

    // Damage before the tail is refused, loudly, with what to do: a bit
    // flipped in an acknowledged write's value, mid-journal.
    // NOTE: not any byte: one in a batch's framing makes fjall take the
    // batch for a torn tail, and the node starts with the writes before it
    // (seen: a flip at the journal's middle kept 14 of 30). kvd cannot
    // tell that from a cut yet; see the issue 25 note.
    let copy = tmp.path().join("flipped");
    copy_dir(&k.data_dir, &copy);
    let (path, end) = journal(&copy);
    let mut bytes = std::fs::read(&path).expect("journal");
    let at = bytes.windows(3).position(|w| w == b"v15").expect("the 15th value in the journal");
    assert!(at < end * 3 / 4, "the 15th value is near the tail: {at} of {end}");
    bytes[at + 1] ^= 0x01;
    std::fs::write(&path, bytes).expect("write");
    let (code, stderr) = start_on(&copy).expect_err("a damaged journal must be refused");
    assert_ne!(code, Some(0));
    assert!(stderr.contains("damaged") && stderr.contains("kvd restore"), "{stderr}");
}

fn copy_dir(from: &Path, to: &Path) {
    let ok = Command::new("cp").arg("-a").arg(from).arg(to).status().expect("cp");
    assert!(ok.success());
}

#[test]
fn a_write_the_followers_hold_waits_for_the_leaders_own_fsync() {
    // A leader passes its own entries on to the followers while its fsync
    // runs (Durability in kvd/src/store.rs). Here the leader's disk stalls:
    // both followers hold the write, which makes a quorum in openraft's
    // count, yet nobody answers it or shows it until the leader's fsync
    // returns. Long election timeouts keep the followers from electing a
    // leader of their own meanwhile (that leader could rightly commit it).
    let slow = ["--election-timeout-ms", "20000"];
    let a = Kvd::bootstrap(&slow);
    let mut followers = [Kvd::empty(2, &slow), Kvd::empty(3, &slow)];
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for n in &mut followers {
        rt.block_on(a.client().add_member(&n.add_request())).expect("add member");
        n.wait_ready();
    }
    let metrics = || rt.block_on(async { reqwest::get(format!("{}/metrics", a.url)).await?.text().await });
    // The leader takes this path once it sees its followers in its membership.
    poll("the leader to pass appends on before their fsync", || {
        rt.block_on(a.client().put("warm", "v", &PutOptions::default())).expect("put");
        (metric(&metrics().expect("metrics"), "kv_log_appends_before_fsync_total") > 0).then_some(())
    });
    let status = |k: &Kvd| peer_status(&rt, k).expect("status");
    // NOTE: a follower learns that the last warm-up write is committed with
    // the leader's next message; until it has applied all it holds, a change
    // of its applied index would not be the stalled write's.
    let before: Vec<_> = followers
        .iter()
        .map(|n| poll("a follower to apply all it holds", || Some(status(n)).filter(|(last, applied)| last == applied)))
        .collect();

    a.stall_fsync(true);
    let client = a.client();
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let _ = tx.send(rt.block_on(client.put("stalled", "v", &PutOptions::default())));
    });
    for (n, b) in followers.iter().zip(&before) {
        poll("the write to reach a follower", || (status(n).0 > b.0).then_some(()));
    }
    // NOTE: what must not happen would happen within milliseconds (the
    // followers' acknowledgements are in); a second of looking is plenty.
    // The followers are held back by the commit index the leader sends
    // them; the leader's own answer by its state machine waiting for the
    // fsync (and here also by the journal's lock, which the stalled fsync
    // holds).
    let end = Instant::now() + Duration::from_secs(1);
    while Instant::now() < end {
        assert!(rx.try_recv().is_err(), "the leader answered a write before its own fsync");
        for (n, b) in followers.iter().zip(&before) {
            assert_eq!(status(n).1, b.1, "follower {} applied an entry not yet on the leader's disk", n.id);
            let seen = rt.block_on(n.client().get_opts("stalled", true)).expect("stale read");
            assert_eq!(seen, None, "follower {} shows a write not yet on the leader's disk", n.id);
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    a.stall_fsync(false);
    rx.recv_timeout(Duration::from_secs(10)).expect("answer").expect("the write, once on the leader's disk");
    writer.join().expect("writer");
    for n in &followers {
        poll("a follower to apply the write", || rt.block_on(n.client().get_opts("stalled", true)).ok().flatten());
    }
}
