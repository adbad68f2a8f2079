//! What one close() of a file on a mount publishes, and what renames and
//! attribute changes keep (DESIGN.md §6: `flush`, concurrent writers,
//! `rename`): revisions counted exactly on the cluster's watch.

use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kv_client::{EventType, WatchEvent};
use kv_tests::{close_checked, Kvd, Mount};

use crate::mount::{eventually, get, text};

fn mount(k: &Kvd) -> Mount {
    Mount::start(&format!("{}/app", k.url), &[])
}

/// Runs `act`, then puts a marker key under `app/` through the API, and
/// returns every event the cluster published under `app/` in between (read
/// from a watch until the marker's revision, so the count is exact). Returns
/// once each of `mounts` shows the marker: they have seen those events too.
fn published(k: &Kvd, mounts: &[&Mount], act: impl FnOnce()) -> Vec<WatchEvent> {
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let c = k.client();
    let from = rt.block_on(crate::revision(&k.url));
    act();
    let marker = format!("marker-{from}");
    let until = rt.block_on(c.put(&format!("app/{marker}"), "m", &Default::default())).expect("marker put").revision;
    let events = rt.block_on(async {
        let mut w = c.watch("app", Some(from)).await.expect("watch");
        let mut out = Vec::new();
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(20), w.next())
                .await
                .expect("the watch stalled before the marker")
                .expect("watch event")
                .expect("watch stream open");
            if ev.revision >= until {
                return out;
            }
            out.push(ev);
        }
    });
    for m in mounts {
        eventually("a mount shows the marker", || m.dir.join(&marker).exists());
    }
    events
}

/// What the events published for `key`: each put's value, `None` for a delete.
fn history(events: &[WatchEvent], key: &str) -> Vec<Option<String>> {
    events
        .iter()
        .filter(|e| e.key == key)
        .map(|e| match e.kind {
            EventType::Put => Some(
                String::from_utf8_lossy(&e.entry.as_ref().and_then(|e| e.value_bytes()).unwrap_or_default()).into(),
            ),
            EventType::Delete => None,
        })
        .collect()
}

fn put_of(v: &str) -> Vec<Option<String>> {
    vec![Some(v.to_owned())]
}

#[test]
fn echo_into_an_existing_file_publishes_one_revision() {
    let k = Kvd::bootstrap(&[]);
    crate::put_sync(&k, "app/f", "1");
    let m = mount(&k);
    assert_eq!(m.sh_ok("cat f"), "1");
    let events = published(&k, &[&m], || {
        m.sh_ok("echo 2 > f");
    });
    assert_eq!(history(&events, "app/f"), put_of("2\n"), "`echo 2 > f` published these revisions of f");
    assert_eq!(text(&k, "app/f"), "2\n");
}

#[test]
fn echo_into_a_new_file_publishes_one_revision() {
    let k = Kvd::bootstrap(&[]);
    let m = mount(&k);
    let events = published(&k, &[&m], || {
        m.sh_ok("echo hello > newf");
    });
    assert_eq!(history(&events, "app/newf"), put_of("hello\n"), "`echo hello > newf` published these revisions");
}

#[test]
fn a_forked_child_closing_its_copy_publishes_nothing() {
    // The subshell is a forked child holding the group's stdout: its exit
    // closes its copy (a FLUSH) while the parent goes on writing. A brace
    // group's redirection is dup2'd onto stdout and the original closed (a
    // FLUSH) before any write. (Not `exec 3>f; printf a >&3; ...`: there
    // the shell itself dups and closes fd 3 around each builtin, and each
    // such close by the process that wrote last is a close(2) that
    // publishes, as DESIGN.md §6 says.)
    let k = Kvd::bootstrap(&[]);
    crate::put_sync(&k, "app/f", "old");
    crate::put_sync(&k, "app/g", "old");
    let m = mount(&k);
    let events = published(&k, &[&m], || {
        m.sh_ok("{ printf a; (true); printf b; } > f");
        m.sh_ok("{ echo x; echo y; } > g");
    });
    let (forked, dup2) = (history(&events, "app/f"), history(&events, "app/g"));
    assert!(
        forked == put_of("ab") && dup2 == put_of("x\ny\n"),
        "revisions published by one handle each: forked child {forked:?}, dup2'd {dup2:?}"
    );
}

#[test]
fn a_failed_oversized_write_leaves_the_old_value() {
    // `cp` writes through the descriptor it opened; `cat big > f` writes
    // through a dup2'd copy of it (the shell closes the original first).
    let k = Kvd::bootstrap(&["--max-value-size", "1000"]);
    let (a, b) = (mount(&k), mount(&k));
    let local = tempfile::tempdir().expect("tempdir");
    let big = local.path().join("big");
    std::fs::write(&big, vec![b'x'; 2000]).expect("write the local file");
    for cmd in [format!("cp {} f", big.display()), format!("cat {} > f", big.display())] {
        crate::put_sync(&k, "app/f", "old");
        eventually("both mounts show the old value", || [&a, &b].iter().all(|m| m.sh("cat f").stdout == b"old"));
        let events = published(&k, &[&a, &b], || {
            let out = a.sh(&cmd);
            assert!(!out.status.success(), "{cmd:?} of a value over the limit succeeded");
            assert!(String::from_utf8_lossy(&out.stderr).contains("File too large"), "{out:?}");
        });
        let seen = (a.sh_ok("cat f"), b.sh_ok("cat f"), text(&k, "app/f"), history(&events, "app/f"));
        let want = ("old".into(), "old".into(), "old".into(), vec![]);
        assert_eq!(seen, want, "after {cmd:?}: f on A, on B, in the cluster, and its events");
    }
}

#[test]
fn o_excl_creates_of_one_name_on_two_mounts_let_one_open_succeed() {
    // Neither mount knows of the other's file; the cluster decides at open,
    // where a lock file's creator checks (it may never write or close).
    let k = Kvd::bootstrap(&[]);
    let (a, b) = (mount(&k), mount(&k));
    let excl = |m: &Mount, name: &str| std::fs::OpenOptions::new().write(true).create_new(true).open(m.dir.join(name));
    let mut fa = excl(&a, "new").expect("O_EXCL create on A");
    fa.write_all(b"from A").expect("write on A");
    let eb = excl(&b, "new").map(|_| ()).map_err(|e| e.raw_os_error());
    assert_eq!(eb, Err(Some(libc::EEXIST)), "the O_EXCL open on B of a name A created");
    close_checked(fa).expect("close on A");
    assert_eq!(text(&k, "app/new"), "from A");
    // A lock file: created, never written, held open.
    let lock = excl(&b, "lock").expect("lock on B");
    let ea = excl(&a, "lock").map(|_| ()).map_err(|e| e.raw_os_error());
    assert_eq!(ea, Err(Some(libc::EEXIST)), "the O_EXCL open on A of the lock B holds");
    close_checked(lock).expect("close the lock");
    for m in [&a, &b] {
        eventually("both mounts show A's file", || m.sh("cat new").stdout == b"from A");
    }
}

/// What the cluster holds at `app/{name}` once everything `mounts` had
/// sent is in.
fn settled_text(k: &Kvd, mounts: &[&Mount], name: &str) -> String {
    let _ = published(k, mounts, || {});
    text(k, &format!("app/{name}"))
}

/// The permission bits `m` shows for `name`.
fn mode_of(m: &Mount, name: &str) -> Option<u32> {
    m.dir.join(name).metadata().ok().map(|md| md.permissions().mode() & 0o777)
}

/// open(2) of `name` on `m` with `O_RDONLY | O_CREAT`, mode 0640 (std's
/// `create` asks for write access: the flag is passed as is).
fn create_read_only(m: &Mount, name: &str) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_CREAT).mode(0o640).open(m.dir.join(name))
}

#[test]
fn a_file_made_by_a_read_only_open_is_in_the_cluster_when_the_open_returns() {
    // The descriptor can write nothing, so the empty file is all this open
    // makes: every mount sees it from the open on (lock files are made so),
    // and stat shows the cluster's times from the first call, not times
    // that change at the close.
    let k = Kvd::bootstrap(&[]);
    let (a, b) = (mount(&k), mount(&k));
    let mut wrong = vec![];
    for i in 0..20 {
        let name = format!("ro{i}");
        let f = create_read_only(&a, &name).expect("open(O_RDONLY | O_CREAT) of a new name");
        let stored = get(&k, &format!("app/{name}"));
        let shown = stat_of(&a.dir.join(&name));
        close_checked(f).expect("close");
        let then = stat_of(&a.dir.join(&name));
        match stored {
            None => wrong.push(format!("{name}: not in the cluster while open")),
            Some(v) if !v.value.is_empty() || v.meta.ctime() != shown.2 || shown != then => wrong.push(format!(
                "{name}: {} bytes stored, ctime {}; stat {shown:?} while open, {then:?} after",
                v.value.len(),
                v.meta.ctime()
            )),
            Some(_) => {}
        }
    }
    assert!(wrong.is_empty(), "{} of 20 read-only creates:\n{}", wrong.len(), wrong.join("\n"));
    eventually("B shows a file A made by a read-only open", || b.dir.join("ro19").exists());
    // A name another client made that the mount may not have seen yet: the
    // open opens that file (O_CREAT without O_EXCL), it does not fail.
    for i in 0..20 {
        let name = format!("theirs{i}");
        crate::put_sync(&k, &format!("app/{name}"), "theirs");
        let mut f = create_read_only(&b, &name).unwrap_or_else(|e| panic!("open(O_RDONLY | O_CREAT) of {name}: {e}"));
        let mut got = String::new();
        f.read_to_string(&mut got).expect("read");
        assert_eq!(got, "theirs", "{name} as the read-only create opened it");
        assert_eq!(text(&k, &format!("app/{name}")), "theirs", "{name} in the cluster");
    }
}

#[test]
fn a_descriptor_that_only_truncated_or_made_a_file_keeps_what_was_written_while_it_was_open() {
    // A shell holds fd 3 from `exec 3>f` (or `3>>f` on a new file) and
    // writes the file through another descriptor before it closes fd 3:
    // the truncation or creation was made at the open, and the write came
    // after it, as on any filesystem. (The whole output was lost before:
    // fd 3's last close published the empty file over it; and an append
    // after `exec 3>f` appended to the old content.)
    let k = Kvd::bootstrap(&[]);
    let (a, b) = (mount(&k), mount(&k));
    let mut wrong = vec![];
    for i in 0..10 {
        let steps = [
            (format!("umask 077; exec 3>>new{i}; echo out >> new{i}; exec 3>&-"), format!("new{i}"), "out\n"),
            (format!("exec 3>made{i}; echo out > made{i}; exec 3>&-"), format!("made{i}"), "out\n"),
            (format!("echo old > old{i}; exec 3>old{i}; echo new > old{i}; exec 3>&-"), format!("old{i}"), "new\n"),
            (format!("echo old > app{i}; exec 3>app{i}; echo x >> app{i}; exec 3>&-"), format!("app{i}"), "x\n"),
            // (a chmod or a touch in between is no write through fd 3)
            (
                format!("umask 077; exec 3>>mod{i}; chmod 600 mod{i}; echo x >> mod{i}; exec 3>&-"),
                format!("mod{i}"),
                "x\n",
            ),
            (format!("exec 3>>touch{i}; touch touch{i}; echo x >> touch{i}; exec 3>&-"), format!("touch{i}"), "x\n"),
            // (fd 4 takes fd 3's truncation, whichever closes first)
            (
                format!("echo old > two{i}; exec 3>two{i}; exec 4>>two{i}; exec 3>&-; echo x >&4; exec 4>&-"),
                format!("two{i}"),
                "x\n",
            ),
            // (the same content written again is a write all the same)
            (format!("echo ok > same{i}; exec 3>same{i}; echo ok > same{i}; exec 3>&-"), format!("same{i}"), "ok\n"),
            // (fd 4 edits the empty file fd 3 left; a later `: > f` is not
            // undone by fd 4's next write: its close fails instead)
            (
                format!("echo old > log{i}; exec 3>log{i}; exec 4>>log{i}; exec 3>&-; /bin/echo x >&4; : > log{i}; echo y >&4; exec 4>&-"),
                format!("log{i}"),
                "",
            ),
            (format!("echo old > cut{i}; exec 3>cut{i}; truncate -s 2 cut{i}; exec 3>&-"), format!("cut{i}"), "\0\0"),
        ];
        for (script, name, want) in steps {
            // (the shell's closes of fd 3 and fd 4 are not waited for by
            // what it runs next, as it holds the file otherwise: what they
            // publish is looked at once they are done)
            a.sh(&script);
            let key = format!("app/{name}");
            // (made under umask 077 by `3>>`, whichever descriptor publishes it)
            let mode = if name.starts_with("new") || name.starts_with("mod") { 0o600 } else { 0o644 };
            let want = (want.to_owned(), Some(want.to_owned()), Some(mode));
            let seen = || {
                let stored = get(&k, &key);
                (
                    a.sh_ok(&format!("cat {name}")),
                    stored.as_ref().map(|v| String::from_utf8_lossy(&v.value).into_owned()),
                    stored.map(|v| v.meta.mode & 0o777),
                )
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            let mut now = seen();
            while now != want && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
                now = seen();
            }
            if now == want {
                // (and stays so: no late close undoes it)
                let _ = published(&k, &[&a], || {});
                now = seen();
            }
            if now != want {
                wrong.push(format!("{script:?}: the mount, the cluster and its mode have {now:?}"));
            }
        }
        // Another mount writes the file while a descriptor that truncated
        // it here is open.
        let name = format!("theirs{i}");
        crate::put_sync(&k, &format!("app/{name}"), "old");
        eventually("A shows the file", || a.sh(&format!("cat {name}")).stdout == b"old");
        let held = std::fs::File::create(a.dir.join(&name)).expect("O_TRUNC open on A");
        b.sh_ok(&format!("echo from-b > {name}"));
        eventually("A shows B's version", || a.sh(&format!("cat {name}")).stdout == b"from-b\n");
        let events = published(&k, &[&a, &b], || close_checked(held).expect("close on A"));
        if history(&events, &format!("app/{name}")) != vec![] || text(&k, &format!("app/{name}")) != "from-b\n" {
            wrong.push(format!(
                "{name}: {:?}, then {:?}",
                history(&events, &format!("app/{name}")),
                text(&k, &format!("app/{name}"))
            ));
        }
        // While a descriptor here holds a truncation: an open that writes
        // nothing (`: >> f`, `touch f`) publishes nothing, and neither that
        // touch nor a chmod on the other mount (nor a touch after it) is a
        // write that undoes the truncation at its close.
        let name = format!("held{i}");
        a.sh_ok(&format!("echo old > {name}"));
        let held = std::fs::File::create(a.dir.join(&name)).expect("O_TRUNC open on A");
        a.sh_ok(&format!(": >> {name}; touch {name}"));
        let meanwhile = text(&k, &format!("app/{name}"));
        eventually("B has the file", || b.dir.join(&name).exists());
        b.sh_ok(&format!("chmod 600 {name}"));
        eventually("A shows B's chmod", || mode_of(&a, &name) == Some(0o600));
        a.sh_ok(&format!("touch {name}"));
        close_checked(held).expect("close on A");
        let end = settled_text(&k, &[&a, &b], &name);
        if (meanwhile.as_str(), end.as_str()) != ("old\n", "") {
            wrong.push(format!("{name}: {meanwhile:?} while held, {end:?} after"));
        }
        // The same with descriptors of this test, so that the order of the
        // closes is the test's.
        // (a write through one descriptor before another's truncation: the
        // truncation wins, however late the write is published)
        let name = format!("late{i}");
        a.sh_ok(&format!("echo old > {name}"));
        let mut first = std::fs::File::create(a.dir.join(&name)).expect("O_TRUNC open");
        first.write_all(b"a").expect("write");
        let second = std::fs::File::create(a.dir.join(&name)).expect("second O_TRUNC open");
        close_checked(first).expect("close the first");
        close_checked(second).expect("close the second");
        let end = settled_text(&k, &[&a], &name);
        if !end.is_empty() {
            wrong.push(format!("{name}: {end:?} after"));
        }
        // (an edit that joined one truncation does not take another's:
        // `: > f` after its write truncates it, and its close fails)
        let name = format!("mv{i}");
        a.sh_ok(&format!("echo old > {name}"));
        let truncating = std::fs::File::create(a.dir.join(&name)).expect("O_TRUNC open");
        let mut edit = std::fs::OpenOptions::new().append(true).open(a.dir.join(&name)).expect("append open");
        edit.write_all(b"x").expect("write");
        let again = std::fs::File::create(a.dir.join(&name)).expect("second O_TRUNC open");
        close_checked(again).expect("close the second truncation");
        eventually("the second truncation is published", || text(&k, &format!("app/{name}")).is_empty());
        let edited = close_checked(edit).map_err(|e| e.raw_os_error());
        close_checked(truncating).expect("close the first truncation");
        let end = settled_text(&k, &[&a], &name);
        if (edited, end.as_str()) != (Err(Some(libc::EIO)), "") {
            wrong.push(format!("{name}: the edit's close {edited:?}, {end:?} after"));
        }
        // (an append that began before a truncation still held, and writes
        // after it: its close fails, and the truncation stands)
        let name = format!("after{i}");
        a.sh_ok(&format!("echo old > {name}"));
        let mut edit = std::fs::OpenOptions::new().append(true).open(a.dir.join(&name)).expect("append open");
        let truncating = std::fs::File::create(a.dir.join(&name)).expect("O_TRUNC open");
        edit.write_all(b"y").expect("write");
        let edited = close_checked(edit).map_err(|e| e.raw_os_error());
        close_checked(truncating).expect("close the truncation");
        let end = settled_text(&k, &[&a], &name);
        if (edited, end.as_str()) != (Err(Some(libc::EIO)), "") {
            wrong.push(format!("{name}: the append's close {edited:?}, {end:?} after"));
        }
        // An append opened here after that chmod edits the empty file too.
        let name = format!("chmod{i}");
        a.sh_ok(&format!("echo old > {name}"));
        let held = std::fs::File::create(a.dir.join(&name)).expect("O_TRUNC open on A");
        eventually("B has the file", || b.sh(&format!("cat {name}")).stdout == b"old\n");
        b.sh_ok(&format!("chmod 600 {name}"));
        eventually("A shows B's chmod", || mode_of(&a, &name) == Some(0o600));
        a.sh_ok(&format!("echo x >> {name}"));
        close_checked(held).expect("close on A");
        let end = settled_text(&k, &[&a, &b], &name);
        if end != "x\n" {
            wrong.push(format!("{name}: {end:?} after"));
        }
    }
    assert!(wrong.is_empty(), "{} of 160 steps lost a write or its mode:\n{}", wrong.len(), wrong.join("\n"));
}

#[test]
fn a_file_renamed_while_open_for_writing_keeps_the_writers_data() {
    // Log rotation: the writer keeps its descriptor while the file is
    // renamed away; its writes belong to the renamed file.
    let k = Kvd::bootstrap(&[]);
    let m = mount(&k);
    let mut seen = Vec::new();
    for (what, want) in [("O_APPEND", "old\nx\ny\n"), ("O_TRUNC", "x\ny\n")] {
        crate::put_sync(&k, "app/log", "old\n");
        eventually("the mount shows log", || m.sh("cat log").stdout == b"old\n");
        let mut opts = std::fs::OpenOptions::new();
        match what {
            "O_APPEND" => opts.append(true),
            _ => opts.write(true).truncate(true),
        };
        let mut f = opts.open(m.dir.join("log")).expect("open log");
        f.write_all(b"x\n").expect("write before the rename");
        m.sh_ok("mv log log.1");
        f.write_all(b"y\n").expect("write after the rename");
        let closed = close_checked(f).map_err(|e| e.to_string());
        let rotated = get(&k, "app/log.1").map(|v| String::from_utf8_lossy(&v.value).into_owned());
        let ok = closed.is_ok() && rotated.as_deref() == Some(want) && get(&k, "app/log").is_none();
        seen.push(format!("{what}: close() {closed:?}, log.1 {rotated:?} (want {want:?}), ok {ok}"));
        m.sh_ok("rm -f log.1");
    }
    assert!(seen.iter().all(|s| s.ends_with("ok true")), "the writer's data after a rename: {seen:#?}");
}

#[test]
fn fchmod_of_a_file_with_pending_writes_keeps_them() {
    let k = Kvd::bootstrap(&[]);
    crate::put_sync(&k, "app/f", "base");
    let m = mount(&k);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(m.dir.join("f")).expect("open O_RDWR");
    f.write_all_at(b"AB", 0).expect("write");
    f.set_permissions(std::fs::Permissions::from_mode(0o600)).expect("fchmod");
    f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000)).expect("futimens");
    f.write_all_at(b"CD", 4).expect("write after fchmod");
    let closed = close_checked(f);
    assert!(closed.is_ok(), "close() after fchmod and futimens: {closed:?}");
    let v = get(&k, "app/f").expect("f");
    assert_eq!((String::from_utf8_lossy(&v.value).as_ref(), v.meta.mode), ("ABseCD", 0o600));
}

#[test]
fn a_failed_commit_leaves_no_bytes_behind() {
    let k = Kvd::bootstrap(&[]);
    crate::put_sync(&k, "app/f", "base");
    let m = mount(&k);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(m.dir.join("f")).expect("open O_RDWR");
    // Changed elsewhere after the open: the in-place edit's compare fails.
    crate::put_sync(&k, "app/f", "remote-value");
    eventually("the mount shows the remote value", || m.sh("cat f").stdout == b"remote-value");
    f.write_all_at(b"zzzz", 0).expect("write");
    let closed = close_checked(f);
    assert_eq!(closed.as_ref().map_err(std::io::Error::raw_os_error), Err(Some(libc::EIO)), "close() of a stale edit");
    assert_eq!(text(&k, "app/f"), "remote-value");
    let reads: Vec<String> = (0..5).map(|_| m.sh_ok("cat f")).collect();
    assert!(reads.iter().all(|r| r == "remote-value"), "reads on the writer's mount after the failed close: {reads:?}");
}

#[test]
fn an_o_trunc_handle_stays_last_writer_wins() {
    let k = Kvd::bootstrap(&[]);
    crate::put_sync(&k, "app/f", "base");
    let m = mount(&k);
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(m.dir.join("f")).expect("open O_TRUNC");
    f.write_all(b"1").expect("write");
    f.sync_all().expect("fsync");
    assert_eq!(text(&k, "app/f"), "1", "fsync committed");
    crate::put_sync(&k, "app/f", "remote");
    f.write_all(b"2").expect("write after a remote change");
    let closed = close_checked(f);
    assert!(closed.is_ok(), "close() of an O_TRUNC handle after a remote change: {closed:?}");
    assert_eq!(text(&k, "app/f"), "12");
}

/// What readers of one name saw.
#[derive(Debug, Default)]
struct Reads {
    whole: usize,
    enoent: usize,
    eisdir: usize,
    other_errors: usize,
    /// Values that are neither the first one nor a whole `value-N\n`.
    bad: Vec<String>,
}

impl Reads {
    fn clean(&self) -> bool {
        self.enoent == 0 && self.eisdir == 0 && self.other_errors == 0 && self.bad.is_empty()
    }
}

/// Reads `path` (open, read to EOF, close) until `stop`.
fn reader(path: &Path, stop: &AtomicBool) -> Reads {
    let mut r = Reads::default();
    while !stop.load(Ordering::Relaxed) {
        let mut buf = Vec::new();
        match std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut buf)) {
            Ok(_) => {
                let v = String::from_utf8_lossy(&buf);
                let whole = v == "v0"
                    || v.strip_prefix("value-")
                        .and_then(|n| n.strip_suffix('\n'))
                        .is_some_and(|n| n.parse::<u32>().is_ok());
                if whole {
                    r.whole += 1;
                } else if r.bad.len() < 10 {
                    r.bad.push(v.into_owned());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => r.enoent += 1,
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => r.eisdir += 1,
            Err(_) => r.other_errors += 1,
        }
    }
    r
}

/// Readers of `f` on `a` and `b` while `write` runs; what each saw.
fn read_while(a: &Mount, b: &Mount, write: impl FnOnce()) -> (Reads, Reads) {
    let stop = Arc::new(AtomicBool::new(false));
    let spawn = |m: &Mount| {
        let (path, stop) = (m.dir.join("f"), stop.clone());
        std::thread::spawn(move || reader(&path, &stop))
    };
    let (ra, rb) = (spawn(a), spawn(b));
    write();
    stop.store(true, Ordering::Relaxed);
    (ra.join().expect("reader on A"), rb.join().expect("reader on B"))
}

#[test]
fn rename_over_is_atomic_for_readers_on_both_mounts() {
    const REWRITES: usize = 100;
    let k = Kvd::bootstrap(&[]);
    crate::put_sync(&k, "app/f", "v0");
    let (a, b) = (mount(&k), mount(&k));
    assert_eq!(b.sh_ok("cat f"), "v0");
    let shell = read_while(&a, &b, || {
        a.sh_ok(&format!(
            "i=1; while [ $i -le {REWRITES} ]; do printf 'value-%d\\n' $i > tmp && mv -f tmp f; i=$((i + 1)); done"
        ));
    });
    let rust = read_while(&a, &b, || {
        for i in 1..=REWRITES {
            std::fs::write(a.dir.join("tmp2"), format!("value-{i}\n")).expect("write tmp2");
            std::fs::rename(a.dir.join("tmp2"), a.dir.join("f")).expect("rename tmp2 over f");
        }
    });
    println!("mv -f: on A {:?}, on B {:?}", shell.0, shell.1);
    println!("rename(): on A {:?}, on B {:?}", rust.0, rust.1);
    assert_eq!(text(&k, "app/f"), format!("value-{REWRITES}\n"));
    assert!(
        shell.0.clean() && shell.1.clean() && rust.0.clean() && rust.1.clean(),
        "readers of f saw it missing or neither value while it was renamed over: mv -f on A {:?}, on B {:?}; \
         rename() on A {:?}, on B {:?}",
        shell.0,
        shell.1,
        rust.0,
        rust.1
    );
}

/// What `stat` shows of `path`: size, mtime and ctime in ns.
fn stat_of(path: &Path) -> (u64, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let s = std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    (s.size(), s.mtime() * 1_000_000_000 + s.mtime_nsec(), s.ctime() * 1_000_000_000 + s.ctime_nsec())
}

/// A file truncated or created and closed without a write is published by
/// the RELEASE of its last close, which the kernel sends after close(2) has
/// returned. The program's next step (or the next command of a shell) must
/// still see what that close left: the empty file, not the old content, and
/// not an append lost to the late truncation; and a file made without a
/// write shows from the start the times the cluster gives it. The same for
/// truncate(2) by path, which gives the file a new inode while the kernel
/// still has the name on the old one.
#[test]
fn the_step_after_a_last_close_or_a_truncate_sees_what_it_left() {
    let k = Kvd::bootstrap(&[]);
    let m = mount(&k);
    let mut wrong = Vec::new();
    for i in 0..60 {
        let f = m.dir.join(format!("t{i}"));
        std::fs::write(&f, "data").expect("write");
        // `: > f`, as a program does it.
        drop(std::fs::OpenOptions::new().write(true).truncate(true).open(&f).expect("open O_TRUNC"));
        let size = stat_of(&f).0;
        let read = std::fs::read(&f).expect("read");
        let mut a = std::fs::OpenOptions::new().append(true).open(&f).expect("open O_APPEND");
        a.write_all(b"x").expect("append");
        let closed = close_checked(a);
        let after = std::fs::read(&f).expect("read");
        if size != 0 || !read.is_empty() || closed.is_err() || after != b"x" {
            wrong.push(format!("t{i}: size {size}, read {read:?}, append's close {closed:?}, then {after:?}"));
        }
    }
    // truncate(2) by path, then stat(2), in one process (perl, which every
    // Debian has): a new version, under a new inode.
    let truncated = m.sh_ok(
        "perl -e 'for $i (1..100) { open(F, \">u$i\") or die $!; print F \"data\"; close(F) or die $!; \
         truncate(\"u$i\", 123) or die $!; @s = stat(\"u$i\"); print \"$s[7];\" }'",
    );
    let want: String = (0..100).map(|_| "123;").collect();
    if truncated != want {
        wrong.push(format!("truncated to 123, then stat said: {truncated}"));
    }
    // Opened on one thread, closed on another (the kernel names a close by
    // the thread that makes it).
    for i in 0..60 {
        let f = m.dir.join(format!("th{i}"));
        std::fs::write(&f, "data").expect("write");
        let g = f.clone();
        let opened = std::thread::spawn(move || {
            std::fs::OpenOptions::new().write(true).truncate(true).open(g).expect("open O_TRUNC")
        });
        drop(opened.join().expect("the opening thread"));
        let read = std::fs::read(&f).expect("read");
        if !read.is_empty() {
            wrong.push(format!("th{i}: opened on another thread, closed, then read {read:?}"));
        }
    }
    // The same through a shell.
    let shell = m.sh_ok(
        "for i in $(seq 40); do echo data > s$i; : > s$i; printf '%s,' \"$(cat s$i)\"; \
         echo x >> s$i; printf '%s;' \"$(cat s$i)\"; done",
    );
    let want: String = (0..40).map(|_| ",x;").collect();
    if shell != want {
        wrong.push(format!("through sh: {shell}"));
    }
    // The same while the shell holds the file open for reading: another
    // open of it, not a copy of the truncating one.
    let held = m.sh_ok(
        "for i in $(seq 40); do echo data > r$i; exec 4< r$i; : > r$i; printf '%s,' \"$(cat r$i)\"; exec 4<&-; done",
    );
    if held != ",".repeat(40) {
        wrong.push(format!("with a reader open: {held}"));
    }
    // (in a directory with an entry of its own, whose times the file's
    // first version changes)
    std::fs::create_dir(m.dir.join("d")).expect("mkdir");
    for i in 0..40 {
        let f = m.dir.join(format!("d/c{i}"));
        drop(std::fs::File::create(&f).expect("create"));
        let (first, dir_first) = (stat_of(&f), stat_of(&m.dir.join("d")));
        eventually("the cluster has the file", || get(&k, &format!("app/d/c{i}")).is_some());
        let meta = get(&k, &format!("app/d/c{i}")).expect("published").meta;
        let _ = published(&k, &[&m], || {});
        let (then, dir_then) = (stat_of(&f), stat_of(&m.dir.join("d")));
        if first != then || dir_first != dir_then || first.2 != meta.ctime() {
            wrong.push(format!(
                "c{i}: {first:?} then {then:?} (the cluster's ctime {}), its directory {dir_first:?} then {dir_then:?}",
                meta.ctime()
            ));
        }
    }
    assert!(wrong.is_empty(), "{} of 340 steps saw something else:\n{}", wrong.len(), wrong.join("\n"));
}
