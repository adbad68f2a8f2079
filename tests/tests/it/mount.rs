//! Real FUSE mounts of a real cluster: shell tools and editors, changes
//! between mounts, concurrent writers, cluster loss, bad input, and mount
//! conventions.

use std::time::{Duration, Instant};

use kv_tests::{bin, is_mounted, run_sh, Kvd, Mount};

pub(crate) fn get(k: &Kvd, key: &str) -> Option<kv_client::Value> {
    let c = k.client();
    tokio::runtime::Runtime::new().expect("rt").block_on(c.get(key)).expect("get")
}

fn put(k: &Kvd, key: &str, v: &str) {
    crate::put_sync(k, key, v);
}

pub(crate) fn text(k: &Kvd, key: &str) -> String {
    let v = get(k, key).unwrap_or_else(|| panic!("{key} missing"));
    String::from_utf8_lossy(&v.value).into_owned()
}

/// Polls until `f` holds (bounded).
pub(crate) fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn shell_tools_and_editors_work_through_the_mount() {
    let k = Kvd::bootstrap(&[]);
    put(&k, "app/db/url", "postgres://db");
    let m = Mount::start(&format!("{}/app", k.url), &[]);
    assert_eq!(m.sh_ok("cat db/url"), "postgres://db");
    m.sh_ok("echo hello > greeting && echo more >> greeting && printf 'no newline' > raw");
    assert_eq!(text(&k, "app/greeting"), "hello\nmore\n");
    assert_eq!(text(&k, "app/raw"), "no newline");
    m.sh_ok("sed -i 's/hello/HELLO/' greeting");
    assert_eq!(text(&k, "app/greeting"), "HELLO\nmore\n");
    // vim saving a file (and its swap file and write probe stay local).
    m.sh_ok("vim -es -N -u NONE -c '%s/more/MORE/' -c 'wq' greeting");
    assert_eq!(text(&k, "app/greeting"), "HELLO\nMORE\n");
    m.sh_ok("vim -es -N -u NONE -c 'set backup writebackup' -c '%s/MORE/again/' -c 'wq' greeting");
    assert_eq!(text(&k, "app/greeting"), "HELLO\nagain\n");
    let all = k.client();
    let keys: Vec<String> = tokio::runtime::Runtime::new()
        .expect("rt")
        .block_on(all.list("app", &kv_client::ListOptions { recursive: true, ..Default::default() }))
        .expect("list")
        .entries
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert!(!keys.iter().any(|k| k.ends_with(".swp") || k.ends_with('~') || k.ends_with("4913")), "{keys:?}");

    m.sh_ok("mkdir -p a/b/c && echo x > a/b/c/f && ln -s a/b/c/f link && test \"$(cat link)\" = x");
    assert_eq!(get(&k, "app/link").expect("link").meta.kind, kv_client::Kind::Symlink);
    m.sh_ok("chmod 600 a/b/c/f && chown 1000:100 a/b/c/f && touch -d '2020-01-02 03:04:05' a/b/c/f");
    let f = get(&k, "app/a/b/c/f").expect("f").meta;
    assert_eq!((f.mode, f.uid, f.gid, f.mtime_ns), (0o600, 1000, 100, 1_577_934_245_000_000_000));
    m.sh_ok("mv a z && test -f z/b/c/f && ! test -e a");
    assert!(get(&k, "app/a/b/c/f").is_none());
    assert_eq!(text(&k, "app/z/b/c/f"), "x\n");
    assert_eq!(m.sh_ok("find z | sort"), "z\nz/b\nz/b/c\nz/b/c/f\n");
    assert_eq!(m.sh_ok("grep -r x z"), "z/b/c/f:x\n");
    m.sh_ok("rm -r z && ! test -e z");
    assert!(get(&k, "app/z/b/c/f").is_none());

    // A tree copied in and out keeps modes and times.
    let src = tempfile::tempdir().expect("tempdir");
    let s = src.path().display().to_string();
    run_sh(
        src.path(),
        "mkdir -p d/e && echo one > d/one && echo two > d/e/two && chmod 640 d/one && \
         touch -d '2021-05-06 07:08:09' d/one && ln -s one d/ln && tar -cf t.tar d",
        src.path(),
    );
    m.sh_ok(&format!("cp -a {s}/d cpa && rsync -a {s}/d/ rs/ && mkdir tx && tar -C tx -xf {s}/t.tar"));
    for dir in ["cpa", "rs", "tx/d"] {
        let one = get(&k, &format!("app/{dir}/one")).unwrap_or_else(|| panic!("{dir}/one"));
        assert_eq!((one.meta.mode, one.meta.mtime_ns), (0o640, 1_620_284_889_000_000_000), "{dir}");
        assert_eq!(text(&k, &format!("app/{dir}/e/two")), "two\n");
        assert_eq!(text(&k, &format!("app/{dir}/ln")), "one");
    }
    m.sh_ok(&format!("rsync -a rs/ {s}/out/ && cp -a cpa {s}/cpout"));
    let out = run_sh(src.path(), "stat -c '%a %Y' out/one cpout/one && cat out/e/two && readlink out/ln", src.path());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "640 1620284889\n640 1620284889\ntwo\none\n");
    // Hard links are refused.
    let out = m.sh("ln cpa/one hard");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not permitted"));
}

#[test]
fn changes_show_up_in_a_mount_on_another_member() {
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let nodes = rt.block_on(crate::cluster::start_cluster(2, &[]));
    let a = Mount::start(&format!("{}/app", nodes[0].url), &[]);
    let b = Mount::start(&format!("{}/app", nodes[1].url), &[]);
    for i in 0..5 {
        a.sh_ok(&format!("echo v{i} > conf"));
        eventually("b sees the write", || b.sh("cat conf").stdout == format!("v{i}\n").as_bytes());
    }
    a.sh_ok("mkdir -p sub && echo 1 > sub/x");
    eventually("b lists the new file", || b.sh_ok("ls sub") == "x\n");
    a.sh_ok("rm conf");
    eventually("b stops listing the deleted file", || !b.sh_ok("ls").contains("conf"));
    // A change made through the API shows up in both.
    put(&nodes[1], "app/api", "from the API");
    eventually("a sees an API write", || a.sh("cat api").stdout == b"from the API");
}

#[test]
fn concurrent_writers_and_renamers_leave_whole_values() {
    let k = Kvd::bootstrap(&[]);
    let m = Mount::start(&format!("{}/app", k.url), &[]);
    let script = |w: usize| {
        format!(
            "for i in $(seq 1 15); do v=\"writer-{w}-$i-$(printf '%0300d' $i)\"; \
             printf %s \"$v\" > t{w}.tmp && mv t{w}.tmp shared$((i % 3)); \
             printf %s \"$v\" > direct$((i % 2)); done"
        )
    };
    let procs: Vec<_> = (0..8)
        .map(|w| std::process::Command::new("sh").arg("-c").arg(script(w)).current_dir(&m.dir).spawn().expect("writer"))
        .collect();
    for mut p in procs {
        let deadline = Instant::now() + kv_tests::SH_TIMEOUT;
        loop {
            if let Ok(Some(s)) = p.try_wait() {
                assert!(s.success(), "a writer failed");
                break;
            }
            assert!(Instant::now() < deadline, "writers hung");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for key in ["shared0", "shared1", "shared2", "direct0", "direct1"] {
        let v = text(&k, &format!("app/{key}"));
        let ok = v.starts_with("writer-") && v.len() > 300 && {
            let parts: Vec<&str> = v.splitn(4, '-').collect();
            parts.len() == 4 && parts[3] == format!("{:0300}", parts[2].parse::<u32>().unwrap_or(0))
        };
        assert!(ok, "{key} holds a torn value: {v:?}");
        assert_eq!(m.sh_ok(&format!("cat {key}")), v, "the mount disagrees on {key}");
    }
}

#[test]
fn a_lost_cluster_keeps_reads_fails_writes_and_a_restart_serves_the_last_copy() {
    let mut k = Kvd::bootstrap(&[]);
    put(&k, "app/conf", "known good");
    let mut m = Mount::start(&format!("{}/app", k.url), &["timeout=2"]);
    assert_eq!(m.sh_ok("cat conf"), "known good");
    eventually("the status file says connected", || m.status()["connected"] == true);
    k.kill9();
    assert_eq!(m.sh_ok("cat conf"), "known good");
    let out = m.sh("echo new > conf");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Input/output error"), "{out:?}");
    eventually("the status file says disconnected", || m.status()["connected"] == false);
    assert!(m.status()["stale_since"].is_u64());
    assert_eq!(m.sh_ok("cat conf"), "known good");
    // A fresh kvfs with the cluster still down serves the last copy it saw.
    assert_eq!(m.stop(), Some(0));
    assert!(!is_mounted(&m.dir));
    m.restart(&["timeout=1"]);
    assert_eq!(m.sh_ok("cat conf"), "known good");
    assert_eq!(m.status()["loaded_from"], "last-known-good");
    // The cluster comes back: the mount catches up and takes writes again.
    k.restart();
    put(&k, "app/conf", "fresh");
    eventually("the mount reconnects", || m.sh("cat conf").stdout == b"fresh");
    m.sh_ok("echo back > conf");
    assert_eq!(text(&k, "app/conf"), "back\n");
}

#[test]
fn bad_names_and_oversized_files_are_refused_and_write_nothing() {
    let k = Kvd::bootstrap(&["--max-value-size", "1000"]);
    put(&k, "app/seed", "1");
    let m = Mount::start(&format!("{}/app", k.url), &[]);
    let out = m.sh(&format!("echo x > {}", "n".repeat(256)));
    assert!(String::from_utf8_lossy(&out.stderr).contains("File name too long"), "{out:?}");
    let deep = vec!["d".repeat(250); 17].join("/");
    let out = m.sh(&format!("mkdir -p {deep}"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("File name too long"), "{out:?}");
    let out = m.sh("head -c 1001 /dev/zero > big");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("File too large"), "{out:?}");
    // The redirection's create publishes nothing before the write, and the
    // failed write nothing after.
    assert!(get(&k, "app/big").is_none(), "an oversized file was written");
    assert!(!m.dir.join("big").exists(), "the refused new file is still listed");
    m.sh_ok("head -c 1000 /dev/zero > fits");
    assert_eq!(get(&k, "app/fits").expect("fits").meta.size, 1000);
    let list = tokio::runtime::Runtime::new()
        .expect("rt")
        .block_on(k.client().list("", &kv_client::ListOptions { recursive: true, ..Default::default() }))
        .expect("list");
    let keys: Vec<&str> = list.entries.iter().map(|e| e.key.as_str()).collect();
    // mkdir -p made the levels that fit; the one too long was never written.
    assert!(!keys.contains(&format!("app/{deep}").as_str()));
    assert!(keys.iter().all(|k| k.len() <= kv_client::MAX_KEY_BYTES));
    assert!(keys.contains(&"app/fits") && keys.contains(&"app/seed"));
}

#[test]
fn mount_conventions_helper_daemon_unmount_and_crash() {
    let k = Kvd::bootstrap(&[]);
    put(&k, "app/x", "1");
    // mount(8)'s helper form, in the background, with options it ignores.
    let tmp = tempfile::tempdir().expect("tempdir");
    let helper = tmp.path().join("mount.kvfs");
    std::os::unix::fs::symlink(bin("kvfs"), &helper).expect("symlink");
    let dir = tmp.path().join("mnt");
    std::fs::create_dir(&dir).expect("mkdir");
    let status = std::process::Command::new(&helper)
        .arg(format!("{}/app", k.url))
        .arg(&dir)
        .args(["-o", &format!("rw,_netdev,nofail,x-systemd.automount,status_dir={}", tmp.path().display())])
        .status()
        .expect("mount.kvfs");
    assert!(status.success());
    assert!(is_mounted(&dir), "the helper returned before the mount was live");
    assert_eq!(std::fs::read_to_string(dir.join("x")).expect("read"), "1");
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    assert!(mounts.lines().any(|l| l.contains(&dir.display().to_string()) && l.contains(" fuse.kvfs ")), "{mounts}");
    let pid: u32 = {
        let files: Vec<_> = std::fs::read_dir(tmp.path()).expect("dir").filter_map(Result::ok).collect();
        let status = files.iter().find(|e| e.path().extension().is_some_and(|x| x == "status")).expect("status file");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(status.path()).expect("read")).expect("json");
        v["pid"].as_u64().expect("pid") as u32
    };
    // Unmounted from outside: kvfs exits.
    assert!(std::process::Command::new("umount").arg(&dir).status().expect("umount").success());
    eventually("kvfs exits after an outside unmount", || !std::path::Path::new(&format!("/proc/{pid}")).exists());

    // A crashed kvfs leaves no dead mount behind.
    let mut m = Mount::start(&format!("{}/app", k.url), &[]);
    m.kill9();
    let deadline = Instant::now() + Duration::from_secs(30);
    while is_mounted(&m.dir) {
        if Instant::now() > deadline {
            let ps =
                std::process::Command::new("ps").args(["-eo", "pid,ppid,stat,wchan:30,args"]).output().expect("ps");
            panic!(
                "the mount of a killed kvfs stayed:\n{}\nkvfs log:\n{}",
                String::from_utf8_lossy(&ps.stdout),
                m.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGTERM unmounts cleanly.
    let mut m = Mount::start(&format!("{}/app", k.url), &["ro"]);
    let out = m.sh("echo no > x");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Read-only file system"), "{out:?}");
    assert_eq!(m.stop(), Some(0));
    assert!(!is_mounted(&m.dir));
    // Bad usage exits 2.
    let out = std::process::Command::new(bin("kvfs")).args(["-o", "bogus", "http://h:1", "/x"]).output().expect("kvfs");
    assert_eq!(out.status.code(), Some(2));
}

/// renameat2(2) with flags, in the mount.
#[allow(unsafe_code)]
fn renameat2(dir: &std::path::Path, from: &str, to: &str, flags: libc::c_uint) -> std::io::Result<()> {
    use std::ffi::CString;
    let p = |n: &str| CString::new(dir.join(n).display().to_string()).expect("path");
    let (a, b) = (p(from), p(to));
    // SAFETY: both paths are valid NUL-terminated strings for the call.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn renames_are_atomic_and_honour_noreplace_and_exchange() {
    let k = Kvd::bootstrap(&[]);
    put(&k, "app/a", "A");
    put(&k, "app/b", "B");
    put(&k, "app/d/x", "X");
    let m = Mount::start(&format!("{}/app", k.url), &[]);
    let before =
        tokio::runtime::Runtime::new().expect("rt").block_on(k.client().get_json("/v1/status")).expect("status");
    let err = renameat2(&m.dir, "a", "b", libc::RENAME_NOREPLACE).expect_err("target exists");
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
    renameat2(&m.dir, "a", "b", libc::RENAME_EXCHANGE).expect("exchange");
    assert_eq!((text(&k, "app/a"), text(&k, "app/b")), ("B".into(), "A".into()));
    let after =
        tokio::runtime::Runtime::new().expect("rt").block_on(k.client().get_json("/v1/status")).expect("status");
    assert_eq!(after["revision"].as_u64(), before["revision"].as_u64().map(|r| r + 1), "one transaction");
    renameat2(&m.dir, "a", "c", libc::RENAME_NOREPLACE).expect("noreplace onto a free name");
    assert!(get(&k, "app/a").is_none() && text(&k, "app/c") == "B");
    // A directory moves with its subtree, onto an empty directory too.
    m.sh_ok("mkdir e && mv d e/ && test \"$(cat e/d/x)\" = X");
    assert_eq!(text(&k, "app/e/d/x"), "X");
    assert!(get(&k, "app/d/x").is_none());
    let out = m.sh("mkdir f && echo 1 > f/y && mkdir g && echo 2 > g/z && mv -T f g");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"), "{out:?}");
}

#[test]
fn a_file_renamed_to_a_scratch_name_keeps_what_is_written_there() {
    // The rename deletes the key; the watch may bring that delete before the
    // rename is done here: the moved file must not become a deleted one.
    let k = Kvd::bootstrap(&[]);
    let m = Mount::start(&format!("{}/app", k.url), &[]);
    let out = m.sh_ok(
        "for i in $(seq 20); do printf 55 > q$i; mv q$i q$i~; printf 66 > q$i~; printf '%s ' \"$(cat q$i~)\"; done",
    );
    assert_eq!(
        out.trim(),
        ["66"; 20].join(" "),
        "what cat showed after each write to a file renamed to a scratch name"
    );
    for i in 1..=20 {
        assert!(get(&k, &format!("app/q{i}")).is_none(), "app/q{i} was renamed away");
    }
}

#[test]
fn a_tree_written_and_removed_at_once_stays_removed() {
    // Rust's remove_dir_all unlinks while it reads the directory (unlike
    // rm -r, which reads it whole first): offsets must not skip entries.
    // And the watch delivers this mount's own puts after it has deleted the
    // files again: they must not bring the names back.
    let k = Kvd::bootstrap(&[]);
    let m = Mount::start(&k.url, &[]);
    // NOTE: enough names that a directory read takes several getdents calls.
    for round in 0..1 {
        let dir = m.dir.join(format!("t{round}"));
        std::fs::create_dir(&dir).expect("mkdir");
        for i in 0..1500 {
            std::fs::write(dir.join(format!("f{i:04}")), "x").expect("write");
        }
        std::fs::remove_dir_all(&dir).expect("remove_dir_all through the mount");
        assert!(!dir.exists(), "t{round} came back");
    }
    let rest = k.client();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let left =
        rt.block_on(rest.list("", &kv_client::ListOptions { recursive: true, ..Default::default() })).expect("list");
    assert!(left.entries.is_empty(), "keys left behind: {:?}", left.entries.iter().map(|e| &e.key).collect::<Vec<_>>());
    assert_eq!(m.sh_ok("ls | wc -l").trim(), "0");
}

#[test]
fn a_read_only_mount_reads_without_opens_and_follows_every_change() {
    // `-o ro` mounts run in FUSE's no-open mode: reads come without a file
    // handle and must still see each new value, whatever its length.
    let k = Kvd::bootstrap(&[]);
    put(&k, "app/conf", "first");
    let m = Mount::start(&format!("{}/app", k.url), &["ro"]);
    assert_eq!(m.sh_ok("cat conf"), "first");
    for (i, v) in ["a much longer second value", "3", "", "fourth\nwith lines\n"].iter().enumerate() {
        put(&k, "app/conf", v);
        eventually(&format!("change {i} in the ro mount"), || {
            std::fs::read_to_string(m.dir.join("conf")).ok().as_deref() == Some(*v)
        });
        assert_eq!(m.sh_ok("wc -c < conf").trim(), v.len().to_string());
    }
    assert_eq!(m.sh_ok("dd if=conf bs=1 skip=7 count=4 2>/dev/null"), "with");
    crate::put_sync(&k, "app/other", "x");
    eventually("a new file in the ro mount", || m.dir.join("other").exists());
    let c = k.client();
    tokio::runtime::Runtime::new().expect("rt").block_on(c.delete("app/conf", false, None)).expect("delete");
    eventually("a deleted file gone from the ro mount", || !m.dir.join("conf").exists());
    let out = m.sh("cat conf");
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such file"), "{out:?}");
}

#[test]
fn long_listings_carry_each_entrys_current_attributes() {
    // `ls -l` of a directory not looked at before gets its attributes from
    // the listing itself (READDIRPLUS): sizes, types and modes must be right,
    // and stay right after remote changes.
    let k = Kvd::bootstrap(&[]);
    put(&k, "app/d/a", "1");
    put(&k, "app/d/bb", "22");
    put(&k, "app/d/sub/c", "333");
    let m = Mount::start(&format!("{}/app", k.url), &[]);
    let ls = |m: &Mount| m.sh_ok("ls -l d | awk 'NR > 1 { print $1, $5, $9 }'");
    assert_eq!(ls(&m), "-rw-r--r-- 1 a\n-rw-r--r-- 2 bb\ndrwxr-xr-x 4096 sub\n");
    put(&k, "app/d/bb", "4444");
    eventually("the new size in a long listing", || ls(&m).contains("-rw-r--r-- 4 bb"));
    m.sh_ok("chmod 600 d/a && echo 55555 > d/e");
    assert_eq!(ls(&m), "-rw------- 1 a\n-rw-r--r-- 4 bb\n-rw-r--r-- 6 e\ndrwxr-xr-x 4096 sub\n");
    let c = k.client();
    tokio::runtime::Runtime::new().expect("rt").block_on(c.delete("app/d/a", false, None)).expect("delete");
    eventually("a deleted entry leaves the long listing", || !m.sh_ok("ls -l d").contains(" a\n"));
}

/// Whether thread `tid` of this process sits in syscall `nr` now.
fn in_syscall(tid: i32, nr: i64) -> bool {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse::<i64>().ok()))
        == Some(nr)
}

#[test]
fn a_close_commits_what_was_written_while_an_earlier_flush_was_in_flight() {
    use std::io::Write;
    let k = Kvd::bootstrap(&[]);
    let m = Mount::start(&format!("{}/app", k.url), &["timeout=30"]);
    let mut f = std::fs::File::create(m.dir.join("f")).expect("create");
    f.write_all(b"early").expect("write");
    // A copy of the descriptor in the process that wrote: its close sends a
    // FLUSH that commits what was written so far.
    let copy = f.try_clone().expect("dup");
    k.pause();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let flusher = std::thread::spawn(move || {
        tid_tx.send(rustix::thread::gettid().as_raw_nonzero().get()).expect("tid");
        kv_tests::close_checked(copy)
    });
    let tid = tid_rx.recv().expect("tid");
    eventually("the copy's close waits for the stopped cluster", || in_syscall(tid, libc::SYS_close));
    // Written while that commit is in flight.
    f.write_all(b"data").expect("write");
    assert!(!flusher.is_finished(), "the copy's close did not wait for the cluster");
    k.resume();
    flusher.join().expect("flusher").expect("the copy's close failed");
    kv_tests::close_checked(f).expect("close failed");
    assert_eq!(text(&k, "app/f"), "earlydata", "the last close committed an older buffer");
    assert_eq!(m.sh_ok("cat f"), "earlydata");
}
