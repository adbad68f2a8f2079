//! Who may read and write what through a mount: services running as other
//! users (nginx's workers, a unit with `User=`) reach a root-made mount,
//! the stored modes and owners hold them to what those allow, and
//! `uid=`/`gid=`/`umask=` map ownership for hosts whose ids differ.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kv_tests::{bin, is_mounted, Kvd, Mount};

use crate::mount::{eventually, get, text};

const NOBODY: (u32, u32) = (65534, 65534);
/// A service user `app` in group `app` (ids no other test uses), and a user
/// outside that group.
const APP: (u32, u32) = (4710, 4711);
const OTHER: (u32, u32) = (4712, 4712);

/// The stored (mode, uid, gid) of a key.
fn stored(k: &Kvd, key: &str) -> (u32, u32, u32) {
    let m = get(k, key).unwrap_or_else(|| panic!("{key} missing")).meta;
    (m.mode & 0o7777, m.uid, m.gid)
}

/// A put's options that set `mode`, and the owner `(uid, gid)` if given.
fn with_mode(mode: u32, owner: Option<(u32, u32)>) -> kv_client::PutOptions {
    let attrs =
        kv_client::Attrs { mode: Some(mode), uid: owner.map(|o| o.0), gid: owner.map(|o| o.1), ..Default::default() };
    kv_client::PutOptions { attrs, ..Default::default() }
}

/// Puts `value` at `key` through `c`, from synchronous code.
fn put_via(c: &kv_client::Client, key: &str, value: &str, opts: &kv_client::PutOptions) {
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(c.put(key, value.to_owned(), opts)).expect("put");
}

/// Puts `value` at `key` with `mode` (the owner kept), through the API.
fn put_mode(k: &Kvd, key: &str, value: &str, mode: u32) {
    put_via(&k.client(), key, value, &with_mode(mode, None));
}

/// A mount of `k`'s prefix `app` with `-o opts`.
fn app_mount(k: &Kvd, opts: &[&str]) -> Mount {
    Mount::start(&format!("{}/app", k.url), opts)
}

/// Runs `script` in the mount as `who`; (succeeded, stdout, stderr).
fn as_user(m: &Mount, who: (u32, u32), script: &str) -> (bool, String, String) {
    let out = m.sh_as(who, script);
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), s(&out.stdout), s(&out.stderr))
}

/// Asserts that `script` fails as `who` with `why` (e.g. "Permission denied").
fn refused(m: &Mount, who: (u32, u32), script: &str, why: &str) {
    let (ok, out, err) = as_user(m, who, script);
    assert!(!ok, "{script:?} as {who:?} succeeded: {out}");
    assert!(out.is_empty(), "{script:?} as {who:?} printed {out:?}");
    assert!(err.contains(why), "{script:?} as {who:?} failed, but not with {why:?}: {err}");
}

/// Asserts that `script` succeeds as `who`; its stdout.
fn allowed(m: &Mount, who: (u32, u32), script: &str) -> String {
    let (ok, out, err) = as_user(m, who, script);
    assert!(ok, "{script:?} as {who:?} failed: {err}\nkvfs log:\n{}", m.log_text());
    out
}

#[test]
fn a_root_mount_serves_other_users_as_the_modes_allow() {
    let k = Kvd::bootstrap(&[]);
    // Mounted by root with no options, as the README and the fstab line do.
    let m = app_mount(&k, &[]);
    m.sh_ok("printf s > secret && chmod 600 secret && printf p > public && mkdir box && chmod 777 box");
    assert_eq!(stored(&k, "app/secret"), (0o600, 0, 0));

    // nobody reads what is for everyone, and nothing else.
    assert_eq!(allowed(&m, NOBODY, "cat public"), "p");
    refused(&m, NOBODY, "cat secret", "Permission denied");
    refused(&m, NOBODY, "echo pwn > public", "Permission denied");
    refused(&m, NOBODY, "echo pwn >> public", "Permission denied");
    refused(&m, NOBODY, "truncate -s 0 public", "Permission denied");
    refused(&m, NOBODY, "echo x > new", "Permission denied");
    refused(&m, NOBODY, "rm -f public", "Permission denied");
    refused(&m, NOBODY, "mv public moved", "Permission denied");
    assert_eq!(text(&k, "app/public"), "p");
    assert_eq!(text(&k, "app/secret"), "s");
    assert!(get(&k, "app/new").is_none() && get(&k, "app/moved").is_none());

    // What a user creates is theirs; only the owner changes its mode, only
    // root its owner.
    allowed(&m, NOBODY, "echo mine > box/mine && chmod 600 box/mine && cat box/mine");
    assert_eq!(stored(&k, "app/box/mine"), (0o600, NOBODY.0, NOBODY.1));
    refused(&m, NOBODY, "chmod 666 public", "Operation not permitted");
    refused(&m, NOBODY, "chown 65534 public", "Operation not permitted");
    refused(&m, NOBODY, "chown 0 box/mine", "Operation not permitted");
    refused(&m, (1000, 1000), "cat box/mine", "Permission denied");
    // `cp -p` of a read-only file over one's own (write, fchmod, close).
    allowed(&m, NOBODY, "printf s > box/src && chmod 444 box/src && printf d > box/dst && cp -p box/src box/dst");
    assert_eq!((text(&k, "app/box/dst").as_str(), stored(&k, "app/box/dst")), ("s", (0o444, NOBODY.0, NOBODY.1)));
    // A write by someone the mode lets write leaves the owner alone.
    m.sh_ok("printf r > box/shared && chmod 666 box/shared");
    allowed(&m, NOBODY, "printf n > box/shared");
    assert_eq!((text(&k, "app/box/shared").as_str(), stored(&k, "app/box/shared")), ("n", (0o666, 0, 0)));
    m.sh_ok("chown 33:33 box/mine");
    assert_eq!(stored(&k, "app/box/mine"), (0o600, 33, 33));
    assert_eq!(stored(&k, "app/public"), (0o644, 0, 0));

    // A change of mode made elsewhere holds at once for this mount's users:
    // with the content (a new version), and alone (the same one's
    // attributes).
    put_mode(&k, "app/public", "p2", 0o600);
    eventually("the mount shows the new mode", || m.sh_ok("stat -c %a public").trim() == "600");
    refused(&m, NOBODY, "cat public", "Permission denied");
    put_mode(&k, "app/public", "p2", 0o644);
    eventually("the mount shows the mode back", || m.sh_ok("stat -c %a public").trim() == "644");
    assert_eq!(allowed(&m, NOBODY, "cat public"), "p2");
    put_mode(&k, "app/public", "p2", 0o600);
    eventually("the mount shows the mode again", || m.sh_ok("stat -c %a public").trim() == "600");
    refused(&m, NOBODY, "cat public", "Permission denied");

    // The mount's root is the prefix, which no entry stores: no chmod.
    let out = m.sh("chmod 700 .");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"), "{out:?}");
}

#[test]
fn a_service_reads_a_file_its_group_may_read_and_setgid_directories_hand_the_group_down() {
    let k = Kvd::bootstrap(&[]);
    let m = app_mount(&k, &[]);
    m.sh_ok(&format!(
        "printf 'db=secret' > app.conf && chown 0:{g} app.conf && chmod 640 app.conf && \
         mkdir shared && chown 0:{g} shared && chmod 2777 shared",
        g = APP.1
    ));
    // The service (User=app, group app) reads its config; no one else does.
    assert_eq!(allowed(&m, APP, "cat app.conf"), "db=secret");
    refused(&m, OTHER, "cat app.conf", "Permission denied");
    refused(&m, APP, "echo x > app.conf", "Permission denied");

    // In a setgid directory, what anyone makes is the directory's group's
    // (OTHER's own group is another).
    allowed(&m, OTHER, "umask 022 && echo state > shared/f && mkdir shared/d");
    assert_eq!(stored(&k, "app/shared/f"), (0o644, OTHER.0, APP.1));
    assert_eq!(stored(&k, "app/shared/d"), (0o2755, OTHER.0, APP.1));
    assert_eq!(allowed(&m, APP, "cat shared/f"), "state\n");
    // Outside it, the maker's own group.
    m.sh_ok("mkdir plain && chmod 777 plain");
    allowed(&m, OTHER, "echo x > plain/f");
    assert_eq!(stored(&k, "app/plain/f").2, OTHER.1);
}

#[test]
fn allow_root_keeps_others_out_and_nodefault_permissions_turns_the_checks_off() {
    let k = Kvd::bootstrap(&[]);
    crate::put_sync(&k, "app/public", "p");
    put_mode(&k, "app/secret", "s", 0o600);
    // (by absolute paths: whether nobody's `cd` is refused depends on what
    // the kernel has cached of the root)
    let refused_all = |m: &Mount, script: &str| {
        let script = script.replace("DIR", &m.dir.display().to_string());
        let out = kv_tests::run_sh_as(Some(NOBODY), Path::new("/"), &script, &m.dir);
        let refused = String::from_utf8_lossy(&out.stderr).contains("Permission denied");
        assert!(!out.status.success() && out.stdout.is_empty() && refused, "{script:?} through allow_root: {out:?}");
        // ...by the mount, which still serves root.
        assert_eq!(m.sh_ok("cat public"), "p");
    };
    let m = app_mount(&k, &["allow_root"]);
    assert_eq!(m.sh_ok("cat public secret"), "ps");
    for script in ["cat DIR/public", "cat DIR/secret", "ls DIR", "printf x >> DIR/public"] {
        refused_all(&m, script);
    }
    drop(m);
    assert_eq!(text(&k, "app/public"), "p");

    // Read-only, where reads may come without an open: still root's alone,
    // after root has read (and the kernel has cached) everything.
    let m = app_mount(&k, &["ro", "allow_root"]);
    assert_eq!(m.sh_ok("cat public secret"), "ps");
    for script in ["cat DIR/public", "cat DIR/secret", "ls DIR"] {
        refused_all(&m, script);
    }
    drop(m);

    // A read-only mount for everyone (no FUSE open at all) is held to the
    // modes too.
    let m = app_mount(&k, &["ro"]);
    assert_eq!(allowed(&m, NOBODY, "cat public"), "p");
    refused(&m, NOBODY, "cat secret", "Permission denied");
    drop(m);

    // Only for someone who knows why: every user reads and writes all.
    let m = app_mount(&k, &["nodefault_permissions"]);
    assert_eq!(allowed(&m, NOBODY, "cat secret"), "s");
    assert!(m.log_text().contains("every local user may read and write every file"), "{}", m.log_text());
}

#[test]
fn uid_gid_and_umask_change_what_this_host_shows_and_not_what_is_stored() {
    let k = Kvd::bootstrap(&[]);
    crate::put_sync(&k, "app/conf", "c");
    crate::put_sync(&k, "app/dir/x", "x");
    let src = format!("{}/app", k.url);
    // The host where the service's user is nobody, its group 4711.
    let m = Mount::start(&src, &["uid=nobody", &format!("gid={}", APP.1), "umask=027"]);
    assert_eq!(m.sh_ok("stat -c '%u %g %a' conf dir"), format!("65534 {g} 640\n65534 {g} 750\n", g = APP.1));
    // The shown owner writes; the group reads; others get nothing.
    allowed(&m, NOBODY, "printf c2 > conf");
    assert_eq!(text(&k, "app/conf"), "c2");
    assert_eq!(allowed(&m, (4713, APP.1), "cat conf"), "c2");
    refused(&m, (4713, APP.1), "echo x > conf", "Permission denied");
    // (the mount's root is shown 0750 too: they cannot even enter it)
    refused(&m, OTHER, "cat conf", "can't cd");
    // `cp -p`, `rsync -a` by the shown owner chown to what is shown: not
    // stored (this host's number means nothing elsewhere).
    allowed(&m, NOBODY, &format!("chown nobody:{} conf", APP.1));
    m.sh_ok("chown 5:5 conf");
    // The shown owner owns every entry here: only root changes modes for
    // every host, and what it makes is stored as its directory's.
    refused(&m, NOBODY, "chmod 666 conf", "Operation not permitted");
    allowed(&m, NOBODY, "printf n > dir/new");
    assert_eq!(stored(&k, "app/dir/new").1, 0);
    // Root's chmod is stored, with the bits umask= hides kept as stored.
    m.sh_ok("chmod 600 conf");
    assert_eq!(stored(&k, "app/conf"), (0o604, 0, 0));
    m.sh_ok("chmod 640 conf");
    // What is stored is what was there.
    assert_eq!(stored(&k, "app/conf"), (0o644, 0, 0));
    drop(m);

    let m = Mount::start(&src, &["fmode=0600", "dmode=0700"]);
    assert_eq!(m.sh_ok("stat -c '%u %g %a' conf dir"), "0 0 600\n0 0 700\n");
    refused(&m, NOBODY, "cat conf", "can't cd");
    drop(m);

    // Bad values: a clear error, and no mount.
    let dir = tempfile::tempdir().expect("tempdir");
    for (opt, says) in [
        ("uid=no-such-user-kv", "no such user"),
        ("gid=no-such-group-kv", "no such group"),
        ("umask=888", "octal"),
        ("fmode=u+rw", "octal"),
        ("allow_other,allow_root", "exclude each other"),
    ] {
        let out = Command::new(bin("kvfs")).args(["-f", "-o", opt, &src]).arg(dir.path()).output().expect("kvfs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{opt}: {err}");
        assert!(err.contains(says), "{opt}: {err}");
        assert!(!is_mounted(dir.path()), "{opt} mounted");
    }
}

/// An nginx run as root whose workers run as www-data, serving `root`
/// on a unix socket.
struct Nginx {
    child: Child,
    sock: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(root: &Path) -> Nginx {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display();
        let sock = dir.path().join("http.sock");
        let conf = format!(
            "user www-data;\n\
             worker_processes 1;\n\
             daemon off;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {d}/body;\n\
               proxy_temp_path {d}/proxy;\n\
               server {{ listen unix:{sock}; root {root}; }}\n\
             }}\n",
            sock = sock.display(),
            root = root.display()
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).expect("conf");
        let child = Command::new("/usr/sbin/nginx")
            .args(["-p", &d.to_string(), "-e", &format!("{d}/error.log"), "-c"])
            .arg(dir.path().join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (tests/run.sh installs nginx)");
        let mut n = Nginx { child, sock, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&n.sock).is_err() {
            if let Ok(Some(s)) = n.child.try_wait() {
                panic!("nginx exited ({s}): {}", n.log());
            }
            assert!(Instant::now() < deadline, "nginx did not listen: {}", n.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        n
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("error.log")).unwrap_or_default()
    }

    /// GET `path`: (status, body).
    fn get(&self, path: &str) -> (u16, String) {
        let mut s = UnixStream::connect(&self.sock).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        write!(s, "GET {path} HTTP/1.0\r\nHost: kv\r\n\r\n").expect("request");
        let mut r = String::new();
        s.read_to_string(&mut r).expect("response");
        let status = r.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = r.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }

    /// The uids of nginx's processes that are not the master.
    fn worker_uids(&self) -> Vec<u32> {
        let master = self.child.id().to_string();
        let mut uids = Vec::new();
        for e in std::fs::read_dir("/proc").expect("proc").flatten() {
            let Ok(st) = std::fs::read_to_string(e.path().join("status")) else { continue };
            let field = |name: &str| {
                st.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
            };
            if field("PPid:").as_deref() == Some(master.as_str()) && field("Name:").as_deref() == Some("nginx") {
                uids.extend(field("Uid:").and_then(|u| u.parse::<u32>().ok()));
            }
        }
        uids
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(self.child.try_wait(), Ok(Some(_))) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn nginx_workers_serve_files_from_a_root_mount() {
    let k = Kvd::bootstrap(&[]);
    let m = Mount::start(&format!("{}/site", k.url), &[]);
    m.sh_ok("mkdir www && printf '<h1>hello</h1>' > www/index.html && printf key > www/private.key && chmod 600 www/private.key");
    let n = Nginx::start(&m.dir.join("www"));
    assert_eq!(n.get("/index.html"), (200, "<h1>hello</h1>".to_owned()), "{}", n.log());
    let uids = n.worker_uids();
    assert!(!uids.is_empty() && uids.iter().all(|&u| u == 33), "workers are not www-data: {uids:?}");
    assert_eq!(n.get("/private.key").0, 403, "{}", n.log());
    // A change made elsewhere is what the next request serves.
    crate::put_sync(&k, "site/www/index.html", "<h1>again</h1>");
    eventually("nginx serves the new page", || n.get("/index.html").1 == "<h1>again</h1>");
}

#[test]
fn the_token_decides_what_the_mount_sees_and_the_modes_which_user_sees_what() {
    let k = Kvd::bootstrap(&["--auth", "all"]);
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let admin = k.client_with(Some(&k.admin_token()));
    let tokens = tempfile::tempdir().expect("tempdir");
    let token_file = tokens.path().join("app");
    for (key, value, mode) in [("app/public", "p", 0o644), ("app/secret", "s", 0o600), ("app/hidden/key", "h", 0o644)] {
        put_via(&admin, key, value, &with_mode(mode, None));
    }
    rt.block_on(async {
        let spec = kv_client::TokenSpec {
            name: "app-mount".into(),
            read: vec!["app/public".into(), "app/secret".into()],
            write: vec![],
            admin: false,
        };
        let t = admin.create_token(&spec).await.expect("token").token;
        std::fs::write(&token_file, t).expect("token file");
    });
    // A token file every user may read is one they may use: said at mount.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let m = app_mount(&k, &[&format!("token_file={}", token_file.display())]);
    assert!(m.log_text().contains("the token file is readable by users other than its owner"), "{}", m.log_text());
    drop(m);
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let m = app_mount(&k, &[&format!("token_file={}", token_file.display())]);
    assert!(!m.log_text().contains("readable by users other than its owner"), "{}", m.log_text());
    // What the token may not read, no one on the host reads, root included.
    let out = m.sh("cat hidden/key");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{out:?}");
    // What it may, the modes share out.
    assert_eq!(m.sh_ok("cat secret"), "s");
    assert_eq!(allowed(&m, NOBODY, "cat public"), "p");
    refused(&m, NOBODY, "cat secret", "Permission denied");
    // And the API, to a user without a token, gives nothing with --auth all.
    let anonymous = k.client_with(None);
    let r = rt.block_on(anonymous.get("app/secret"));
    assert!(matches!(&r, Err(e) if e.is(&kv_client::ErrorCode::Unauthorized)), "{r:?}");
}

/// A file's (mode, uid, gid), as the model holds it.
type Access = (u32, u32, u32);

/// Whether `who` may read (`bit` 4) or write (`bit` 2) a file of `a`, by
/// POSIX's rule: the owner's bits, else the group's, else the others'.
fn may(a: Access, who: (u32, u32), bit: u32) -> bool {
    let (mode, uid, gid) = a;
    let shift = if who.0 == uid {
        6
    } else if who.1 == gid {
        3
    } else {
        0
    };
    mode >> shift & bit != 0
}

#[test]
fn random_changes_of_modes_and_owners_hold_every_user_to_the_current_ones() {
    let seed = std::env::var("KV_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| (kv_client::clock::now_ns() as u64).max(1));
    println!("KV_SEED={seed}");
    let mut rng = seed | 1;
    let mut next = |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    let k = Kvd::bootstrap(&[]);
    let m = app_mount(&k, &[]);
    const FILES: [&str; 3] = ["a", "b", "c"];
    const MODES: [u32; 8] = [0o600, 0o640, 0o644, 0o660, 0o664, 0o666, 0o604, 0o400];
    const UIDS: [u32; 4] = [0, NOBODY.0, APP.0, OTHER.0];
    const GIDS: [u32; 4] = [0, NOBODY.1, APP.1, OTHER.1];
    let users = [NOBODY, APP, OTHER];
    let mut model: Vec<Access> = Vec::new();
    for f in FILES {
        put_mode(&k, &format!("app/{f}"), f, 0o644);
        model.push((0o644, 0, 0));
    }
    for step in 0..30 {
        let i = next(FILES.len());
        let f = FILES[i];
        let (mode, uid, gid) = (MODES[next(MODES.len())], UIDS[next(UIDS.len())], GIDS[next(GIDS.len())]);
        let what = match next(4) {
            0 => {
                m.sh_ok(&format!("chmod {mode:o} {f}"));
                model[i].0 = mode;
                "chmod in the mount"
            }
            1 => {
                m.sh_ok(&format!("chown {uid}:{gid} {f}"));
                (model[i].1, model[i].2) = (uid, gid);
                "chown in the mount"
            }
            2 => {
                // A new version from elsewhere, with its own attributes.
                put_via(&k.client(), &format!("app/{f}"), &format!("{f}{step}"), &with_mode(mode, Some((uid, gid))));
                model[i] = (mode, uid, gid);
                "put elsewhere"
            }
            _ => {
                // The same content with another mode, from elsewhere.
                let now = text(&k, &format!("app/{f}"));
                put_mode(&k, &format!("app/{f}"), &now, mode);
                model[i].0 = mode;
                "mode alone elsewhere"
            }
        };
        let want = |a: Access| format!("{:o} {} {}", a.0, a.1, a.2);
        eventually(&format!("step {step} ({what}) shows on {f}"), || {
            m.sh_ok(&format!("stat -c '%a %u %g' {f}")).trim() == want(model[i])
        });
        for (j, f) in FILES.iter().enumerate() {
            for who in users {
                let (read, _, _) = as_user(&m, who, &format!("cat {f} >/dev/null"));
                let (write, _, _) = as_user(&m, who, &format!(": >> {f}"));
                assert_eq!(
                    (read, write),
                    (may(model[j], who, 4), may(model[j], who, 2)),
                    "step {step} ({what}): {who:?} on {f} {} (KV_SEED={seed})",
                    want(model[j])
                );
            }
        }
    }
}

/// Runs `f` on a thread of its own whose filesystem ids are `who`'s: the
/// kernel checks (and FUSE reports) that thread as that user.
#[allow(unsafe_code)]
fn on_thread_as<T: Send + 'static>(who: (u32, u32), f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: raw syscalls that change only this thread's groups and
        // filesystem ids (glibc's setgroups would change every thread's);
        // the thread ends with the closure.
        let fsuid = unsafe {
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>());
            libc::setfsgid(who.1);
            libc::setfsuid(who.0);
            libc::setfsuid(u32::MAX)
        };
        assert_eq!(fsuid as u32, who.0, "the thread's filesystem uid");
        f()
    })
    .join()
    .expect("thread")
}

#[test]
fn a_writer_let_in_by_an_old_version_cannot_close_over_a_new_owner_s_file() {
    let k = Kvd::bootstrap(&[]);
    let m = app_mount(&k, &[]);
    m.sh_ok("mkdir box && chmod 777 box && printf mine > box/f && chmod 666 box/f");
    let path = m.dir.join("box/f");
    let url = k.url.clone();
    let (closed, opened_as) = on_thread_as(NOBODY, move || {
        use std::os::unix::fs::MetadataExt;
        // nobody may write the 0666 file, and opens it to replace it...
        let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(&path).expect("open as nobody");
        let opened_as = std::fs::metadata(&path).map(|m| m.uid()).unwrap_or(u32::MAX);
        f.write_all(b"pwn").expect("write");
        // ...when root puts a secret of its own there from elsewhere.
        let c = kv_client::Client::new(&[url]).expect("client");
        put_via(&c, "app/box/f", "secret", &with_mode(0o600, Some((0, 0))));
        eventually("the mount shows the new version", || {
            std::fs::metadata(&path).map(|m| m.mode() & 0o7777).ok() == Some(0o600)
        });
        (kv_tests::close_checked(f).map_err(|e| e.raw_os_error()), opened_as)
    });
    assert_eq!(opened_as, 0, "the file was root's");
    assert_eq!(closed, Err(Some(libc::EACCES)), "close() did not refuse");
    assert_eq!(text(&k, "app/box/f"), "secret");
    assert_eq!(stored(&k, "app/box/f"), (0o600, 0, 0));
}

#[test]
fn opens_with_o_creat_racing_a_secret_s_creation_elsewhere_never_read_it() {
    let k = Kvd::bootstrap(&[]);
    let m = app_mount(&k, &[]);
    m.sh_ok("mkdir box && chmod 777 box");
    let path = m.dir.join("box/s");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (url, halt) = (k.url.clone(), stop.clone());
    // Root, elsewhere: the secret appears and goes, over and over.
    let root = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("rt");
        let c = kv_client::Client::new(&[url]).expect("client");
        let opts = with_mode(0o600, Some((0, 0)));
        let (mut rounds, mut replaced) = (0, Vec::new());
        while !halt.load(std::sync::atomic::Ordering::Relaxed) {
            rt.block_on(c.put("app/box/s", "secret".to_owned(), &opts)).expect("put");
            // Nothing of nobody's may replace it (a file nobody created
            // just before, closed just after).
            if let Some(v) = rt.block_on(c.get("app/box/s")).expect("get") {
                if v.value != "secret".as_bytes() || v.meta.uid != 0 {
                    replaced.push(format!("{:?} uid {}", v.value, v.meta.uid));
                }
            }
            rt.block_on(c.delete("app/box/s", false, None)).expect("delete");
            rounds += 1;
        }
        (rounds, replaced)
    });
    // nobody: open(O_CREAT|O_RDWR) and read, as fast as it can, for 3 s.
    let seen = on_thread_as(NOBODY, move || {
        let mut seen = std::collections::BTreeMap::<String, u32>::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let what = match std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)
            {
                Ok(mut f) => {
                    let mut s = String::new();
                    let r = f.read_to_string(&mut s).map(|_| format!("read {s:?}"));
                    drop(f);
                    r.unwrap_or_else(|e| format!("read failed: {e}"))
                }
                Err(e) => format!("open: {:?}", e.kind()),
            };
            *seen.entry(what).or_default() += 1;
        }
        seen
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (rounds, replaced) = root.join().expect("root");
    println!("{rounds} rounds of the secret; nobody saw {seen:?}");
    assert!(replaced.is_empty(), "nobody's file replaced root's secret: {replaced:?}");
    assert!(!seen.keys().any(|k| k.contains("secret")), "nobody read the secret: {seen:?}");
    assert!(seen.keys().any(|k| k.starts_with("open: PermissionDenied")), "the race was never run: {seen:?}");
}
