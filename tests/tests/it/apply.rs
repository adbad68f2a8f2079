//! Config delivery: `kvctl apply` publishes a directory tree as one
//! transaction, `kvctl export` writes a prefix out; the prefix compare
//! behind them.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kv_client::{Kind, ListOptions, Meta};
use kv_tests::{bin, Kvd, Mount};

use crate::kvctl::command;

fn kvctl(k: &Kvd, args: &[&str]) -> Output {
    command(k, args).output().expect("run kvctl")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs kvctl and asserts success; its stdout.
fn kvctl_ok(k: &Kvd, args: &[&str]) -> String {
    let out = kvctl(k, args);
    assert!(out.status.success(), "kvctl {args:?} failed ({}): {}", out.status, stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// Every entry under `prefix` on `k` (stale: `k`'s own state), by key, and
/// the listing's revision.
fn entries_on(k: &Kvd, prefix: &str, stale: bool) -> (BTreeMap<String, (Meta, Vec<u8>)>, u64) {
    let opts = ListOptions { recursive: true, values: true, stale, ..ListOptions::default() };
    let l = rt().block_on(k.client().list_all(prefix, &opts)).expect("list");
    let map =
        l.entries.into_iter().map(|e| (e.key.clone(), (e.meta.clone(), e.value_bytes().expect("value")))).collect();
    (map, l.revision)
}

fn entries(k: &Kvd, prefix: &str) -> BTreeMap<String, (Meta, Vec<u8>)> {
    entries_on(k, prefix, false).0
}

fn revision(k: &Kvd) -> u64 {
    entries_on(k, "", false).1
}

fn write(path: &Path, content: &[u8], mode: u32) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).expect("mkdir");
    }
    std::fs::write(path, content).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A release tree: a.conf (0644), secret (0600), sub/b.conf, an empty dir
/// (0750) and a symlink.
fn release(dir: &Path, n: u32) {
    write(&dir.join("a.conf"), format!("a = {n}\nsame = 1\n").as_bytes(), 0o644);
    write(&dir.join("secret"), b"s3cret\n", 0o600);
    write(&dir.join("sub/b.conf"), b"b\n", 0o644);
    std::fs::create_dir_all(dir.join("empty")).expect("mkdir");
    std::fs::set_permissions(dir.join("empty"), std::fs::Permissions::from_mode(0o750)).expect("chmod");
    let _ = std::fs::remove_file(dir.join("current"));
    std::os::unix::fs::symlink("a.conf", dir.join("current")).expect("symlink");
}

fn p(dir: &Path) -> &str {
    dir.to_str().expect("utf-8 path")
}

#[test]
fn apply_publishes_files_modes_dirs_and_symlinks_and_prune_removes_the_rest() {
    let k = Kvd::bootstrap(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    release(dir.path(), 1);
    crate::put_sync(&k, "app/stale.conf", "old");
    let before = revision(&k);
    let out = kvctl_ok(&k, &["apply", p(dir.path()), "app"]);
    assert!(
        out.contains("applied: 5 added, 0 changed, 0 removed") && out.contains(&format!("revision {}", before + 1)),
        "{out}"
    );
    let e = entries(&k, "app");
    let got: Vec<(&str, Kind, u32, &[u8])> =
        e.iter().map(|(k, (m, v))| (k.as_str(), m.kind, m.mode & 0o7777, v.as_slice())).collect();
    assert_eq!(
        got,
        [
            ("app/a.conf", Kind::File, 0o644, b"a = 1\nsame = 1\n".as_slice()),
            ("app/current", Kind::Symlink, 0o777, b"a.conf".as_slice()),
            ("app/empty", Kind::Dir, 0o750, b"".as_slice()),
            ("app/secret", Kind::File, 0o600, b"s3cret\n".as_slice()),
            ("app/stale.conf", Kind::File, 0o644, b"old".as_slice()),
            ("app/sub/b.conf", Kind::File, 0o644, b"b\n".as_slice()),
        ],
        "sub needs no entry: its file implies it; without --prune stale.conf stays"
    );
    assert!(e.values().all(|(m, _)| m.mod_revision == before + 1 || m.mod_revision == before), "one revision");
    // Unchanged files are not rewritten; a mode change is a change.
    release(dir.path(), 2);
    std::fs::set_permissions(dir.path().join("secret"), std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let out = kvctl_ok(&k, &["apply", "--prune", p(dir.path()), "app/"]);
    assert!(out.contains("0 added, 2 changed, 1 removed, 3 unchanged"), "{out}");
    let after = entries(&k, "app");
    assert!(!after.contains_key("app/stale.conf"), "pruned");
    assert_eq!(after["app/secret"].0.mode & 0o7777, 0o640);
    for unchanged in ["app/sub/b.conf", "app/current", "app/empty"] {
        assert_eq!(after[unchanged].0.mod_revision, before + 1, "{unchanged} was rewritten");
    }
    assert_eq!(after["app/a.conf"].0.mod_revision, before + 2);
    // The same tree again writes nothing: no new revision.
    let rev = revision(&k);
    let out = kvctl_ok(&k, &["apply", "--prune", p(dir.path()), "app"]);
    assert!(out.contains("nothing to apply") && out.contains(&format!("revision {rev}")), "{out}");
    assert_eq!(revision(&k), rev);
}

#[test]
fn dry_run_prints_the_diff_with_modes_and_writes_nothing() {
    let k = Kvd::bootstrap(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    release(dir.path(), 1);
    kvctl_ok(&k, &["apply", p(dir.path()), "app"]);
    crate::put_sync(&k, "app/extra", "x\n");
    release(dir.path(), 2);
    std::fs::set_permissions(dir.path().join("secret"), std::fs::Permissions::from_mode(0o400)).expect("chmod");
    write(&dir.path().join("logo.bin"), &[0, 1, 2, 0xff], 0o644);
    let rev = revision(&k);
    let out = kvctl_ok(&k, &["apply", "--dry-run", "--prune", p(dir.path()), "app"]);
    for want in [
        "added    app/logo.bin  (file 0644)",
        "changed  app/a.conf  (file 0644 -> file 0644)",
        "changed  app/secret  (file 0600 -> file 0400)",
        "removed  app/extra  (file 0644)",
        "--- a/app/a.conf\n+++ b/app/a.conf\n@@ -1,2 +1,2 @@\n-a = 1\n+a = 2\n same = 1\n",
        "Binary files /dev/null and b/app/logo.bin differ",
        "--- a/app/extra\n+++ /dev/null\n@@ -1,1 +0,0 @@\n-x\n",
        "dry run: 1 added, 2 changed, 1 removed",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(!out.contains("app/secret\n+++"), "a mode change has no content diff:\n{out}");
    assert_eq!(revision(&k), rev, "a dry run writes nothing");
}

#[test]
fn a_failing_check_publishes_nothing_and_a_passing_one_sees_the_whole_result() {
    let k = Kvd::bootstrap(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    crate::put_sync(&k, "app/kept.conf", "kept\n");
    release(dir.path(), 1);
    let out_dir = tempfile::tempdir().expect("tempdir");
    let seen = out_dir.path().join("check-saw");
    let rev = revision(&k);
    let out = kvctl(&k, &["apply", "--check", "echo checking {}; echo broken >&2; exit 3", p(dir.path()), "app"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("broken") && err.contains("exit status 3") && err.contains("nothing was written"), "{err}");
    assert_eq!(revision(&k), rev, "nothing published");
    // A passing check sees the prefix as it will be: DIR's files with their
    // modes, and (without --prune) what the prefix keeps; in a private
    // directory that is gone afterwards.
    let check = format!(
        "cd {{}} && test \"$(cat kept.conf)\" = kept && test \"$(stat -c %a secret empty . | tr '\\n' ' ')\" = '600 750 700 ' \
         && test \"$(readlink current)\" = a.conf && grep -q 'a = 1' a.conf && test -f sub/b.conf && pwd > {}",
        seen.display()
    );
    let out = kvctl_ok(&k, &["apply", "--check", &check, p(dir.path()), "app"]);
    assert!(out.contains("applied: 5 added"), "{out}");
    let staged = std::fs::read_to_string(&seen).expect("the check ran");
    assert!(!Path::new(staged.trim()).exists(), "the staging directory {staged} is left behind");
}

#[test]
fn if_rev_refuses_after_a_put_or_a_delete_under_the_prefix_and_accepts_without() {
    let k = Kvd::bootstrap(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    release(dir.path(), 1);
    kvctl_ok(&k, &["apply", p(dir.path()), "app"]);
    crate::put_sync(&k, "other/x", "not under app");
    let base = revision(&k);
    release(dir.path(), 2);
    // A put under the prefix after REV: seen in the listing.
    crate::put_sync(&k, "app/new", "1");
    let out = kvctl(&k, &["apply", "--if-rev", &base.to_string(), p(dir.path()), "app"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("\"app/new\" changed at revision") && stderr(&out).contains("nothing was written"));
    assert_eq!(entries(&k, "app")["app/a.conf"].1, b"a = 1\nsame = 1\n");
    // A delete after REV: not in the listing, so only the cluster's prefix
    // compare can tell.
    let base = revision(&k);
    rt().block_on(k.client().delete("app/new", false, None)).expect("delete");
    let rev = revision(&k);
    let out = kvctl(&k, &["apply", "--if-rev", &base.to_string(), p(dir.path()), "app"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("changed after --if-rev"), "{}", stderr(&out));
    assert_eq!(revision(&k), rev, "nothing written");
    // Without a change under the prefix after REV (one elsewhere is fine).
    crate::put_sync(&k, "other/x", "changed");
    let out = kvctl_ok(&k, &["apply", "--if-rev", &rev.to_string(), p(dir.path()), "app"]);
    assert!(out.contains("1 changed"), "{out}");
    assert_eq!(entries(&k, "app")["app/a.conf"].1, b"a = 2\nsame = 1\n");
}

#[test]
fn if_rev_older_than_the_history_is_still_decided() {
    // NOTE: the compare is decided from replicated state, alike on every
    // member, not from the watch history each member keeps.
    let k = Kvd::bootstrap(&["--history-revisions", "2"]);
    let dir = tempfile::tempdir().expect("tempdir");
    release(dir.path(), 1);
    crate::put_sync(&k, "app/gone.conf", "x");
    let before_delete = revision(&k);
    crate::put_sync(&k, "other/y", "y");
    kvctl_ok(&k, &["del", "app/gone.conf"]);
    for i in 0..5 {
        crate::put_sync(&k, "other/x", &i.to_string());
    }
    let rev = revision(&k);
    let out = kvctl(&k, &["apply", "--if-rev", &before_delete.to_string(), p(dir.path()), "app"]);
    assert_eq!(out.status.code(), Some(3), "a delete long out of the history still counts: {}", stderr(&out));
    assert!(stderr(&out).contains("nothing was written"), "{}", stderr(&out));
    assert_eq!(revision(&k), rev);
    let deleted = revision(&k) - 5;
    let out = kvctl(&k, &["apply", "--if-rev", &deleted.to_string(), p(dir.path()), "app"]);
    assert_eq!(out.status.code(), Some(0), "nothing under app changed after the delete: {}", stderr(&out));
}

#[test]
fn a_change_between_the_listing_and_the_transaction_is_refused() {
    let k = Kvd::bootstrap(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    release(dir.path(), 1);
    crate::put_sync(&k, "app/a.conf", "theirs");
    // The check runs after the listing and before the transaction: a write
    // from it is the race, made deterministic. A key apply does not touch
    // (so only the prefix compare sees it) and one it rewrites.
    for (key, prune) in [("app/unrelated", false), ("app/a.conf", true)] {
        let check = format!("{} --endpoints {} put {key} racing", bin("kvctl").display(), k.url);
        let mut args = vec!["apply", "--check", &check];
        if prune {
            args.push("--prune");
        }
        args.extend([p(dir.path()), "app"]);
        let out = kvctl(&k, &args);
        assert_eq!(out.status.code(), Some(3), "{key}: {}", stderr(&out));
        assert!(stderr(&out).contains("after kvctl read it at revision"), "{}", stderr(&out));
        let e = entries(&k, "app");
        assert_eq!(e[key].1, b"racing", "the racing write stays");
        assert!(!e.contains_key("app/secret"), "nothing of the tree was written");
    }
}

#[test]
fn export_then_apply_prune_is_a_no_op() {
    let k = Kvd::bootstrap(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    release(dir.path(), 1);
    kvctl_ok(&k, &["apply", p(dir.path()), "app"]);
    // Entries made elsewhere: implied dirs, an explicit one, odd modes.
    let c = k.client();
    let put = |key: &str, v: &str, mode: u32, kind: Kind| {
        let attrs = kv_client::Attrs { mode: Some(mode), kind: Some(kind), ..Default::default() };
        let opts = kv_client::PutOptions { attrs, ..Default::default() };
        rt().block_on(c.put(key, v.to_owned(), &opts)).expect("put");
    };
    put("app/deep/er/x.conf", "x", 0o640, Kind::File);
    put("app/ro", "", 0o555, Kind::Dir);
    put("app/ro/f", "f", 0o444, Kind::File);
    put("app/bin", "\u{1}", 0o4755, Kind::File);
    put("app/link", "../elsewhere", 0o777, Kind::Symlink);
    let out_dir = dir.path().join("exported");
    let out = kvctl_ok(&k, &["export", "app", p(&out_dir)]);
    assert!(out.contains("exported 6 files, 2 directories, 2 symlinks"), "{out}");
    let mode = |rel: &str| std::fs::symlink_metadata(out_dir.join(rel)).expect(rel).permissions().mode() & 0o7777;
    assert_eq!((mode("deep/er/x.conf"), mode("ro"), mode("bin"), mode("deep")), (0o640, 0o555, 0o4755, 0o755));
    assert_eq!(std::fs::read_link(out_dir.join("link")).expect("link"), Path::new("../elsewhere"));
    let rev = revision(&k);
    let out = kvctl_ok(&k, &["apply", "--prune", p(&out_dir), "app"]);
    assert!(out.contains("nothing to apply") && out.contains(&format!("revision {rev}")), "{out}");
    assert_eq!(revision(&k), rev);
    // A non-empty directory is refused unless --force.
    let out = kvctl(&k, &["export", "app", p(&out_dir)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not empty"), "{}", stderr(&out));
    kvctl_ok(&k, &["export", "--force", "app", p(&out_dir)]);
}

#[test]
fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let k = Kvd::bootstrap(&["--max-value-size", "1000"]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let rev = revision(&k);
    let case = |name: &str, setup: &dyn Fn(&Path), prefix: &str, want: &str, code: i32| {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        write(&dir.join("fine.conf"), b"fine", 0o644);
        setup(&dir);
        let target =
            if name == "loop" || name == "missing" || name == "file" { root.join(format!("{name}-arg")) } else { dir };
        let out = kvctl(&k, &["apply", p(&target), prefix]);
        assert_eq!(out.status.code(), Some(code), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{name}: {:?} lacks {want:?}", stderr(&out));
        assert_eq!(revision(&k), rev, "{name}: something was written");
    };
    case("missing", &|_| {}, "app", "no such directory", 1);
    case("file", &|_| write(&root.join("file-arg"), b"x", 0o644), "app", "not a directory", 1);
    case(
        "loop",
        &|_| std::os::unix::fs::symlink(root.join("loop-arg"), root.join("loop-arg")).expect("loop"),
        "app",
        "symlink loop",
        1,
    );
    case(
        "name",
        &|d| write(&d.join(std::ffi::OsStr::from_bytes(b"caf\xe9.conf")), b"x", 0o644),
        "app",
        "not UTF-8, so it is not a valid key",
        1,
    );
    case(
        "large",
        &|d| write(&d.join("big"), &[b'x'; 1001], 0o644),
        "app",
        "over the cluster's value limit of 1000 bytes",
        1,
    );
    case("prefix", &|_| {}, "app//x", "empty segment", 2);
}

#[test]
fn fifos_sockets_and_devices_are_applied_as_entries_of_their_kind_and_exported_again() {
    let k = Kvd::bootstrap(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).expect("mkdir");
    write(&dir.join("app.conf"), b"x", 0o644);
    let run = |cmd: &str, args: &[&std::ffi::OsStr]| {
        assert!(std::process::Command::new(cmd).args(args).status().expect(cmd).success(), "{cmd} {args:?}");
    };
    run("mkfifo", &["-m".as_ref(), "0620".as_ref(), dir.join("pipe").as_os_str()]);
    drop(std::os::unix::net::UnixListener::bind(dir.join("sock")).expect("bind"));
    run(
        "mknod",
        &["-m".as_ref(), "0644".as_ref(), dir.join("null").as_os_str(), "c".as_ref(), "1".as_ref(), "3".as_ref()],
    );
    run(
        "mknod",
        &["-m".as_ref(), "0644".as_ref(), dir.join("disk").as_os_str(), "b".as_ref(), "259".as_ref(), "70000".as_ref()],
    );
    kvctl_ok(&k, &["apply", p(&dir), "app"]);
    let got: BTreeMap<String, (Kind, u32, String)> = entries(&k, "app")
        .into_iter()
        .map(|(key, (m, v))| (key, (m.kind, m.mode, String::from_utf8_lossy(&v).into_owned())))
        .collect();
    assert_eq!(got["app/pipe"], (Kind::Fifo, 0o620, String::new()));
    assert_eq!((got["app/sock"].0, got["app/sock"].2.as_str()), (Kind::Socket, ""));
    assert_eq!((got["app/null"].0, got["app/null"].2.as_str()), (Kind::Char, "1:3"));
    assert_eq!((got["app/disk"].0, got["app/disk"].2.as_str()), (Kind::Block, "259:70000"));
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    kvctl_ok(&k, &["export", "app", p(&out)]);
    let stat = std::process::Command::new("stat")
        .args(["-c", "%n %F %a %t:%T"])
        .args(["pipe", "sock", "null", "disk"].map(|n| out.join(n)))
        .output()
        .expect("stat");
    let text = String::from_utf8_lossy(&stat.stdout).replace(&format!("{}/", out.display()), "");
    let sock = got["app/sock"].1;
    assert_eq!(
        text,
        format!(
            "pipe fifo 620 0:0\nsock socket {sock:o} 0:0\nnull character special file 644 1:3\n\
             disk block special file 644 103:11170\n"
        )
    );
    // Applied again, the exported tree is what the prefix holds.
    let rev = revision(&k);
    assert!(kvctl_ok(&k, &["apply", "--prune", p(&out), "app"]).contains("nothing to apply"));
    assert_eq!(revision(&k), rev);
    // Only root makes devices: another user's export is refused whole.
    let theirs = tmp.path().join("theirs");
    std::fs::create_dir(&theirs).expect("mkdir");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    // (kvctl from a copy that user may run: the build's may be under /root.)
    let theirs_kvctl = tmp.path().join("kvctl");
    std::fs::copy(bin("kvctl"), &theirs_kvctl).expect("copy kvctl");
    let refused = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(&theirs_kvctl)
            .args(["--endpoints", &k.url, "export", "app", p(&theirs)])
            .uid(65534)
            .gid(65534)
            .output()
            .expect("kvctl")
    };
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("2 devices (disk, null): only root makes devices; nothing was written"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(std::fs::read_dir(&theirs).expect("ls").count(), 0, "something was written");
}

#[test]
fn a_tree_over_the_limits_is_refused_before_sending_naming_the_limit() {
    let k = Kvd::bootstrap(&["--max-txn-size", "100000"]);
    let dir = tempfile::tempdir().expect("tempdir");
    for i in 0..200 {
        write(&dir.path().join(format!("f{i:03}")), &[b'x'; 600], 0o644);
    }
    let rev = revision(&k);
    let out = kvctl(&k, &["apply", p(dir.path()), "app"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("over the cluster's limit of 100000 bytes (kvd --max-txn-size): nothing was sent"),
        "{}",
        stderr(&out)
    );
    assert_eq!(revision(&k), rev);
    // Too many entries for one transaction: 2,100 new files need 4,201.
    let k = Kvd::bootstrap(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    for i in 0..2100 {
        write(&dir.path().join(format!("d{}/f{i:04}", i % 20)), b"1", 0o644);
    }
    let out = kvctl(&k, &["apply", p(dir.path()), "app"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("needs 4201 compares and operations") && stderr(&out).contains("limit of 4096"),
        "{}",
        stderr(&out)
    );
    assert!(entries(&k, "app").is_empty());
}

/// 1,024 binary files of 8 KiB: 8 MiB, release `n`.
fn big_release(dir: &Path, n: u8) {
    for i in 0..1024u32 {
        let v: Vec<u8> = (0..8192u32).map(|j| (i.wrapping_mul(31).wrapping_add(j) as u8) ^ n | 0x80).collect();
        write(&dir.join(format!("d{:02}/f{i:04}.bin", i % 32)), &v, 0o644);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_8_mib_release_of_1024_files_replicates_and_a_follower_serves_it() {
    // NOTE: one 8 MiB entry through a follower, to three members fsyncing
    // on one disk: on this 2-core machine with the rest of the suite
    // running it took over kvd's default 5 s (a 504, unknown outcome).
    // The time is not what this tests.
    let nodes = crate::cluster::start_cluster(3, &["--request-timeout-ms", "30000"]).await;
    let leader = crate::cluster::agreed_leader(&nodes.iter().collect::<Vec<_>>()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    big_release(dir.path(), 1);
    let via = nodes.iter().find(|n| n.id != leader).expect("a follower");
    let apply = ["--command-timeout", "60s", "apply", "-o", "json", p(dir.path()), "app"];
    let out = tokio::task::block_in_place(|| command(via, &apply).output()).expect("kvctl");
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let (rev, bytes) = (v["revision"].as_u64().expect("revision"), v["counts"]["bytes"].as_u64().expect("bytes"));
    assert_eq!(v["counts"]["added"], 1024);
    assert!(bytes > 8 << 20, "{bytes} bytes of JSON");
    for n in nodes.iter().filter(|n| n.id != leader) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let (e, at) = loop {
            let opts = ListOptions { recursive: true, values: true, stale: true, ..ListOptions::default() };
            let l = n.client().list_all("app", &opts).await.expect("list");
            let at = l.revision;
            let e: BTreeMap<String, (Meta, Vec<u8>)> = l
                .entries
                .into_iter()
                .map(|e| (e.key.clone(), (e.meta.clone(), e.value_bytes().expect("value"))))
                .collect();
            if at >= rev || std::time::Instant::now() > deadline {
                break (e, at);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert!(at >= rev, "node {} is at revision {at}, not {rev}", n.id);
        assert_eq!(e.len(), 1024, "node {}", n.id);
        for (key, (m, v)) in &e {
            let rel = key.strip_prefix("app/").expect("under app");
            assert_eq!(std::fs::read(dir.path().join(rel)).expect("local").as_slice(), v.as_slice(), "{key}");
            assert_eq!(m.mod_revision, rev, "one revision");
        }
    }
}

#[test]
fn a_reader_on_a_mount_sees_a_release_of_1000_files_whole_never_half() {
    let k = Kvd::bootstrap(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let files: Vec<String> = (0..1000).map(|i| format!("d{}/f{i:04}.conf", i % 10)).collect();
    let make = |n: u32| {
        for f in &files {
            write(&dir.path().join(f), format!("{n}\n{}\n", "x".repeat(200)).as_bytes(), 0o644);
        }
    };
    make(1);
    kvctl_ok(&k, &["apply", p(dir.path()), "app"]);
    let m = Mount::start(&format!("{}/app", k.url), &[]);
    let mnt = m.dir.clone();
    let release_of = |path: &Path| -> u32 {
        let s = std::fs::read_to_string(path).expect("read through the mount");
        s.lines().next().and_then(|l| l.parse().ok()).unwrap_or_else(|| panic!("{}: {s:?}", path.display()))
    };
    crate::mount::eventually("release 1 on the mount", || release_of(&mnt.join(&files[999])) == 1);
    let stop = Arc::new(AtomicBool::new(false));
    type Pass = (u32, u32, std::collections::BTreeSet<u32>);
    // Two readers, walking the files in opposite orders.
    let readers: Vec<_> = [false, true]
        .into_iter()
        .map(|backwards| {
            let mut order = files.clone();
            if backwards {
                order.reverse();
            }
            let passes: Arc<std::sync::Mutex<Vec<Pass>>> = Arc::default();
            let (stop, mnt, out) = (stop.clone(), mnt.clone(), passes.clone());
            let reader = std::thread::spawn(move || {
                // Each pass: the last file, every file, the last file again.
                // When both ends agree no release landed in between, so
                // every file must hold it; a pass whose ends differ proves
                // nothing.
                let end = &order[order.len() - 1];
                while !stop.load(Ordering::SeqCst) {
                    let first = release_of(&mnt.join(end));
                    let seen = order.iter().map(|f| release_of(&mnt.join(f))).collect();
                    let pass = (first, release_of(&mnt.join(end)), seen);
                    out.lock().expect("passes").push(pass);
                }
            });
            (reader, passes)
        })
        .collect();
    const LAST: u32 = 8;
    for n in 2..=LAST {
        std::thread::sleep(std::time::Duration::from_millis(100));
        make(n);
        kvctl_ok(&k, &["apply", p(dir.path()), "app"]);
    }
    for (reader, passes) in &readers {
        // (A reader that failed ends early, and says why at the join.)
        crate::mount::eventually("a whole pass over the last release", || {
            reader.is_finished() || passes.lock().expect("passes").last().is_some_and(|p| p.0 == LAST && p.1 == LAST)
        });
    }
    stop.store(true, Ordering::SeqCst);
    let mut during = 0;
    for (r, (reader, passes)) in readers.into_iter().enumerate() {
        reader.join().expect("reader");
        let passes = std::mem::take(&mut *passes.lock().expect("passes"));
        let mut last = 0;
        for (i, (a, b, seen)) in passes.iter().enumerate() {
            assert!(*a >= last && b >= a, "reader {r}, pass {i}: the mount went back ({last}, {a}, {b})");
            last = *b;
            if a == b {
                assert_eq!(seen.iter().collect::<Vec<_>>(), [a], "reader {r}, pass {i}: half a release: {seen:?}");
            }
        }
        let conclusive = passes.iter().filter(|(a, b, _)| a == b).count();
        during += passes.iter().filter(|(a, b, _)| a == b && (2..LAST).contains(a)).count();
        assert!(
            conclusive >= 3 && passes.iter().any(|p| p.0 == LAST),
            "reader {r}: {} passes, {conclusive} conclusive",
            passes.len()
        );
    }
    // (Passes over release 1 and the last alone prove nothing of a change.)
    assert!(during >= 1, "no whole pass while releases came");
    drop(m);
}

#[tokio::test]
async fn the_prefix_compare_over_http() {
    let k = Kvd::bootstrap(&[]);
    let base = crate::put(&k.url, "app/a", "1").await;
    crate::put(&k.url, "apple", "not under app").await;
    let txn = |body: serde_json::Value| {
        let url = format!("{}/v1/txn", k.url);
        async move { crate::http().post(url).json(&body).send().await.expect("txn") }
    };
    let ok = |since: u64| {
        serde_json::json!({"compare": [{"prefix": "app/", "unchanged_since": since}],
                           "success": [{"op": "put", "key": "app/b", "value": "2"}]})
    };
    let r: kv_client::TxnResponse = txn(ok(base)).await.json().await.expect("json");
    assert!(r.succeeded, "apple is not under app/");
    let r: kv_client::TxnResponse = txn(ok(base)).await.json().await.expect("json");
    assert!(!r.succeeded, "app/b changed after {base}");
    let (status, code) =
        crate::status_and_code(txn(serde_json::json!({"compare": [{"prefix": "a//b", "unchanged_since": 1}]})).await)
            .await;
    assert_eq!((status, code.as_str()), (400, "invalid_key"));
    let (status, code) = crate::status_and_code(
        txn(serde_json::json!({"compare": [{"prefix": "app", "unchanged_since": 1, "key": "app/a"}]})).await,
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "bad_request"));
}
