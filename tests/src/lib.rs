//! Harness for tests that run the real binaries: start `kvd` on OS-assigned
//! ports in a temp dir, wait for readiness by polling, kill it by PID on drop.
//!
//! NOTE: `CARGO_BIN_EXE_*` exists only for the package that owns a binary, so
//! the binaries are found next to the test executable's `deps/` directory.
//! `cargo test --workspace` builds them first.

pub mod browser;
pub mod linearizability;
pub mod man;
pub mod net;
pub mod powercut;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary (`kvd`, `kvctl`, `kvfs`) in the target dir.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("test executable lives in target/<profile>/deps");
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing: build the workspace binaries first (cargo build --workspace)", p.display());
    p
}

/// How long a node may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One running `kvd`.
pub struct Kvd {
    child: Option<Child>,
    /// Node id.
    pub id: u64,
    /// The data dir.
    pub data_dir: PathBuf,
    /// Client URL, `http://127.0.0.1:PORT`.
    pub url: String,
    /// Peer URL, `http://127.0.0.1:PORT`.
    pub peer_url: String,
    extra: Vec<String>,
    /// CA that signs the node's certificate, when it speaks TLS.
    pub ca: Option<PathBuf>,
    log: PathBuf,
    /// The power-cut recorder's log of the running process (tests/failsync).
    powercut_log: PathBuf,
    /// Addresses to bind on restart (kept so membership stays valid).
    addrs: Option<(String, String)>,
    /// Network namespace and address to listen on (see [`net::Net`]).
    netns: Option<(String, String)>,
    /// Extra environment of the process.
    env: Vec<(String, String)>,
    /// A command kvd runs under (`ip netns exec NS`, `prlimit ...`); it must
    /// exec kvd in place, so the child's pid is kvd's.
    wrap: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl Kvd {
    /// Starts a bootstrapped single-node cluster in a fresh temp dir.
    pub fn bootstrap(extra: &[&str]) -> Kvd {
        Kvd::new(1, extra).boot()
    }

    /// Starts an empty node that waits to be added to a cluster (it is not
    /// ready until it is).
    pub fn empty(id: u64, extra: &[&str]) -> Kvd {
        Kvd::new(id, extra).waiting()
    }

    /// Starts an empty node (see [`Kvd::empty`]) with its data dir at `data_dir`.
    pub fn empty_on(id: u64, data_dir: PathBuf, extra: &[&str]) -> Kvd {
        Kvd::new(id, extra).at(data_dir).waiting()
    }

    /// Starts a node on an existing data dir (e.g. one `kvd restore` built)
    /// and waits until it is ready.
    pub fn on_dir(id: u64, data_dir: PathBuf, extra: &[&str]) -> Kvd {
        let mut k = Kvd::new(id, extra).at(data_dir).waiting();
        k.wait_ready();
        k
    }

    /// Starts a bootstrapped single-node cluster on `data_dir` (e.g. on a
    /// filesystem the test made) with extra environment variables.
    pub fn bootstrap_on(data_dir: PathBuf, env: &[(&str, &str)], extra: &[&str]) -> Kvd {
        let mut k = Kvd::new(1, extra).at(data_dir);
        k.env = env.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        k.boot()
    }

    /// Starts a bootstrapped single-node cluster run under the command
    /// `wrap` (e.g. `prlimit --nofile=...`), which must exec its arguments.
    pub fn bootstrap_under(wrap: &[&str], extra: &[&str]) -> Kvd {
        let mut k = Kvd::new(1, extra);
        k.wrap = wrap.iter().map(|s| s.to_string()).collect();
        k.boot()
    }

    /// Starts a bootstrapped single-node cluster on host `i` of `net`.
    pub fn bootstrap_in(net: &net::Net, i: usize, extra: &[&str]) -> Kvd {
        Kvd::new(1, extra).on_host(net, i).boot()
    }

    /// Starts an empty node on host `i` of `net` (see [`Kvd::empty`]).
    pub fn empty_in(net: &net::Net, i: usize, id: u64, extra: &[&str]) -> Kvd {
        Kvd::new(id, extra).on_host(net, i).waiting()
    }

    /// Bootstraps and waits until ready.
    fn boot(mut self) -> Kvd {
        self.spawn(true);
        self.wait_ready();
        self
    }

    /// Starts without bootstrapping, not waiting for readiness.
    fn waiting(mut self) -> Kvd {
        self.spawn(false);
        self
    }

    fn at(mut self, data_dir: PathBuf) -> Kvd {
        self.data_dir = data_dir;
        self
    }

    /// Runs in host `i`'s namespace, listening on its address.
    fn on_host(mut self, net: &net::Net, i: usize) -> Kvd {
        self.wrap = vec!["ip".into(), "netns".into(), "exec".into(), net.ns(i)];
        self.netns = Some((net.ns(i), net.addr(i)));
        self
    }

    fn new(id: u64, extra: &[&str]) -> Kvd {
        let tmp = tempfile::tempdir().expect("tempdir");
        Kvd {
            child: None,
            id,
            log: tmp.path().join("kvd.log"),
            powercut_log: tmp.path().join("powercut.log"),
            data_dir: tmp.path().join("data"),
            url: String::new(),
            peer_url: String::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            ca: extra.iter().position(|a| *a == "--tls-ca").and_then(|i| extra.get(i + 1)).map(PathBuf::from),
            addrs: None,
            netns: None,
            env: Vec::new(),
            wrap: Vec::new(),
            _tmp: Some(tmp),
        }
    }

    /// Throws the data dir away (the node must be stopped).
    pub fn wipe(&mut self) {
        assert!(self.child.is_none(), "stop the node before wiping it");
        std::fs::remove_dir_all(&self.data_dir).expect("wipe data dir");
    }

    /// Starts a stopped node again on its data dir (and addresses), without
    /// waiting for readiness.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "node is running");
        self.spawn(false);
    }

    /// Spawns the process and waits for its client address (not readiness).
    fn spawn(&mut self, bootstrap: bool) {
        let addr_file = self.data_dir.join("client.addr");
        let peer_file = self.data_dir.join("peer.addr");
        let _ = std::fs::remove_file(&addr_file);
        let _ = std::fs::remove_file(&peer_file);
        let host = self.netns.as_ref().map_or("127.0.0.1", |(_, a)| a.as_str());
        let (client_addr, peer_addr) = self.addrs.clone().unwrap_or((format!("{host}:0"), format!("{host}:0")));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let mut cmd = match self.wrap.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(bin("kvd"));
                c
            }
            None => Command::new(bin("kvd")),
        };
        cmd.arg("--id")
            .arg(self.id.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--client-addr", &client_addr, "--peer-addr", &peer_addr])
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .env("KV_STALL_FSYNC_FILE", self.stall_file())
            .envs(self.env.iter().map(|(a, b)| (a, b)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if bootstrap {
            cmd.arg("--bootstrap");
        }
        // IMPORTANT: every kvd runs with the power-cut recorder, so any test
        // can cut its power (see `power_cut`). NOTE: what a previous run left
        // unsynced counts as durable from here on (the page cache keeps it
        // across a `kill -9`; only a power cut in between would lose it).
        let _ = std::fs::remove_file(&self.powercut_log);
        cmd.env("LD_PRELOAD", bin("libkv_failsync.so")).env("KV_POWERCUT_LOG", &self.powercut_log);
        let mut child = cmd.spawn().expect("spawn kvd");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let (Ok(c), Ok(p)) = (std::fs::read_to_string(&addr_file), std::fs::read_to_string(&peer_file)) {
                let scheme = if self.ca.is_some() { "https" } else { "http" };
                self.url = format!("{scheme}://{}", c.trim());
                self.peer_url = format!("{scheme}://{}", p.trim());
                self.addrs = Some((c.trim().to_owned(), p.trim().to_owned()));
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("kvd exited early ({status}):\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "kvd did not bind in time:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// Polls `/health/ready` until it answers 200.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = format!("{}/health/ready", self.url);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("kvd exited ({status}):\n{}", self.log_text());
                }
            }
            if http_status(&url, self.ca.as_deref()) == Some(200) {
                return;
            }
            assert!(Instant::now() < deadline, "kvd not ready in time:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` the process and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The trigger file that stalls the process's fsyncs (tests/failsync).
    fn stall_file(&self) -> PathBuf {
        self.powercut_log.with_file_name("stall-fsync")
    }

    /// Stalls every fsync of the process from now on, as a stuck disk does,
    /// or lets them go on again.
    pub fn stall_fsync(&self, stalled: bool) {
        if stalled {
            std::fs::write(self.stall_file(), "").expect("create the stall trigger");
        } else if let Err(e) = std::fs::remove_file(self.stall_file()) {
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "remove the stall trigger: {e}");
        }
    }

    /// A power cut: `kill -9`, then every byte the process wrote to its data
    /// dir after that file's last completed fsync is zeroed (tests/failsync).
    /// Returns what was taken back.
    pub fn power_cut(&mut self) -> powercut::Cut {
        self.kill9();
        self.stall_fsync(false);
        let cut = powercut::apply(&self.powercut_log, &self.data_dir).expect("apply the power cut");
        let _ = std::fs::remove_file(&self.powercut_log);
        cut
    }

    /// SIGTERM the process and wait for it to exit; returns its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        c.wait().ok().and_then(|s| s.code())
    }

    /// Waits up to `timeout` for the process to exit on its own; its exit
    /// code, `None` if it is still running (or died by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Starts the node again on its data dir and waits until it is ready.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn(false);
        self.wait_ready();
    }

    /// Freezes the process (SIGSTOP): a peer that accepts connections but
    /// never answers.
    pub fn pause(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// Thaws a paused process (SIGCONT).
    pub fn resume(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    /// Asks the process to stop (SIGTERM), without waiting for it (see
    /// [`Kvd::wait_exit`]).
    pub fn terminate(&self) {
        self.signal(rustix::process::Signal::TERM);
    }

    /// Asks the process to read its certificates and JWKS again (SIGHUP).
    pub fn hangup(&self) {
        self.signal(rustix::process::Signal::HUP);
    }

    // NOTE: kill(2) itself, not kill(1): a forked child would hold copies of
    // this process's descriptors (files open in mounts among them) for a
    // moment, and closing them sends FLUSHes of their own.
    fn signal(&self, sig: rustix::process::Signal) {
        if let Some(c) = &self.child {
            let pid = rustix::process::Pid::from_raw(c.id() as i32).expect("a child's pid is positive");
            rustix::process::kill_process(pid, sig).unwrap_or_else(|e| panic!("kill {sig:?} {}: {e}", c.id()));
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The request that adds this node to a cluster as a voter.
    pub fn add_request(&self) -> kv_client::AddMember {
        kv_client::AddMember {
            id: self.id,
            peer_url: self.peer_url.clone(),
            client_url: Some(self.url.clone()),
            learner: false,
        }
    }

    /// A client for this node.
    pub fn client(&self) -> kv_client::Client {
        self.client_with(None)
    }

    /// A client for this node sending `token`.
    pub fn client_with(&self, token: Option<&str>) -> kv_client::Client {
        let opts = kv_client::ClientOptions {
            token: token.map(str::to_owned),
            ca_pem: self.ca.as_ref().map(|p| std::fs::read(p).expect("CA file")),
            ..Default::default()
        };
        kv_client::Client::with_options(&[self.url.as_str()], &opts).expect("client")
    }

    /// The admin token written at bootstrap.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin-token")).expect("admin-token file").trim().to_owned()
    }

    /// What the node logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Path of the node's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Kvd {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Status of a GET, `None` when nothing answered. Blocking, for polling
/// (from async tests too); `https://` URLs are checked against `ca`.
pub fn http_status(url: &str, ca: Option<&Path>) -> Option<u16> {
    use std::io::{Read, Write};
    let (tls, rest) = match url.strip_prefix("https://") {
        Some(r) => (true, r),
        None => (false, url.strip_prefix("http://")?),
    };
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}")))?;
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let mut buf = [0u8; 32];
    let n = if tls {
        let mut conn = tls_client(ca?, host)?;
        let mut stream = rustls::Stream::new(&mut conn, &mut s);
        stream.write_all(req.as_bytes()).ok()?;
        stream.read(&mut buf).ok()?
    } else {
        s.write_all(req.as_bytes()).ok()?;
        s.read(&mut buf).ok()?
    };
    let line = std::str::from_utf8(&buf[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A blocking TLS client connection to `host` (HOST:PORT) trusting `ca`.
fn tls_client(ca: &Path, host: &str) -> Option<rustls::ClientConnection> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).ok()? {
        roots.add(c.ok()?).ok()?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.rsplit_once(':')?.0.to_owned()).ok()?;
    rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).ok()
}

/// A test certificate authority made with the `openssl` command: a CA and
/// node certificates for 127.0.0.1 / localhost usable as server and client.
pub struct Pki {
    dir: tempfile::TempDir,
    /// The CA certificate (PEM).
    pub ca: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Pki {
    /// Makes a new CA.
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        let ca = dir.path().join("ca.crt");
        Pki { dir, ca }
    }

    /// A certificate and key for a node, signed by this CA.
    pub fn node(&self, name: &str) -> (PathBuf, PathBuf) {
        let d = self.dir.path();
        let (key, csr, crt, ext) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
        std::fs::write(
            d.join(&ext),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n\
             basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n",
        )
        .expect("ext file");
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
        (d.join(crt), d.join(key))
    }

    /// kvd flags for a node with a certificate from this CA.
    pub fn kvd_args(&self, name: &str) -> Vec<String> {
        let (crt, key) = self.node(name);
        let s = |p: &Path| p.display().to_string();
        vec!["--tls-cert".into(), s(&crt), "--tls-key".into(), s(&key), "--tls-ca".into(), s(&self.ca)]
    }
}

/// One running `kvfs -f` mount in a temp dir.
pub struct Mount {
    child: Option<Child>,
    /// The mount point.
    pub dir: PathBuf,
    /// Directory of the status file.
    pub status_dir: PathBuf,
    /// The source URL.
    pub source: String,
    log: PathBuf,
    tmp: tempfile::TempDir,
}

/// Hard deadline for one shell command run in a mount.
pub const SH_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether `dir` is a mount point (per /proc/self/mountinfo).
pub fn is_mounted(dir: &Path) -> bool {
    let want = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str())))
        .unwrap_or(false)
}

/// Aborts the FUSE connection behind `dir` (so nothing can hang on it) and
/// lazily unmounts it.
pub fn force_unmount(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    if !is_mounted(dir) {
        return;
    }
    let conns = Path::new("/sys/fs/fuse/connections");
    if std::fs::read_dir(conns).map(|mut d| d.next().is_none()).unwrap_or(true) {
        let _ = Command::new("mount").args(["-t", "fusectl", "none"]).arg(conns).status();
    }
    if let Ok(meta) = std::fs::metadata(dir) {
        let dev = meta.dev();
        let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
        let _ = std::fs::write(conns.join(minor.to_string()).join("abort"), "1");
    }
    let _ = Command::new("umount").arg("-l").arg(dir).status();
}

impl Mount {
    /// The kvfs process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Mounts `source` with `kvfs -f` and extra `-o` options; waits until
    /// the mount is live.
    pub fn start(source: &str, opts: &[&str]) -> Mount {
        let tmp = tempfile::tempdir().expect("tempdir");
        // Other users (the permission tests' services) may pass through to
        // the mount point, and list nothing else here.
        std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).expect("chmod");
        let dir = tmp.path().join("mnt");
        std::fs::create_dir(&dir).expect("mount dir");
        let mut m = Mount {
            child: None,
            dir,
            status_dir: tmp.path().join("status"),
            source: source.to_owned(),
            log: tmp.path().join("kvfs.log"),
            tmp,
        };
        m.spawn(opts);
        m
    }

    /// Mounts again at the same place with the same cache (after `stop`).
    pub fn restart(&mut self, opts: &[&str]) {
        self.spawn(opts);
    }

    fn spawn(&mut self, opts: &[&str]) {
        let mut o = vec![
            format!("cache_dir={}", self.tmp.path().join("cache").display()),
            format!("status_dir={}", self.status_dir.display()),
        ];
        o.extend(opts.iter().map(|s| s.to_string()));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log");
        let mut child = Command::new(bin("kvfs"))
            .args(["-f", "-o", &o.join(",")])
            .arg(&self.source)
            .arg(&self.dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn kvfs");
        let deadline = Instant::now() + READY_TIMEOUT;
        while !is_mounted(&self.dir) {
            if let Ok(Some(s)) = child.try_wait() {
                panic!("kvfs exited ({s}):\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "kvfs did not mount in time:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        // NOTE: mounted is not yet serving: fusermount3 may still be handing
        // kvfs the device. Wait for a first answer through the mount.
        let _ = std::fs::read_dir(&self.dir);
        // The status file is written once the mount is live.
        let has_status = |d: &Path| {
            std::fs::read_dir(d)
                .is_ok_and(|mut r| r.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "status"))))
        };
        while !has_status(&self.status_dir) {
            assert!(Instant::now() < deadline, "kvfs wrote no status file in time:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// Runs `sh -c script` in the mount; a hang past [`SH_TIMEOUT`] aborts
    /// the mount and fails the test.
    pub fn sh(&self, script: &str) -> std::process::Output {
        run_sh(&self.dir, script, &self.dir)
    }

    /// Runs `sh -c script` in the mount as the user and group `who` (uid,
    /// gid).
    /// (A user the mount's root refuses gets that from the `cd`.)
    pub fn sh_as(&self, who: (u32, u32), script: &str) -> std::process::Output {
        let script = format!("cd '{}' && {script}", self.dir.display());
        run_sh_as(Some(who), Path::new("/"), &script, &self.dir)
    }

    /// Like [`Mount::sh`], and asserts success.
    pub fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "{script:?} failed: {}\n{}\nkvfs log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The mount's status file, parsed.
    pub fn status(&self) -> serde_json::Value {
        let dir = std::fs::read_dir(&self.status_dir).expect("status dir");
        let file = dir
            .filter_map(Result::ok)
            .find(|e| e.path().extension().is_some_and(|x| x == "status"))
            .expect("status file");
        serde_json::from_slice(&std::fs::read(file.path()).expect("read status")).expect("status JSON")
    }

    /// SIGTERMs kvfs and waits for it; returns its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return s.code();
            }
            if Instant::now() > deadline {
                force_unmount(&self.dir);
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` kvfs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// kvfs's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop();
        force_unmount(&self.dir);
    }
}

/// Runs `sh -c script` in `cwd`; past [`SH_TIMEOUT`] the mount at `mnt` is
/// aborted and the test fails instead of hanging.
pub fn run_sh(cwd: &Path, script: &str, mnt: &Path) -> std::process::Output {
    run_sh_as(None, cwd, script, mnt)
}

/// Like [`run_sh`], as the user and group `who` (uid, gid; no
/// supplementary groups) when given.
pub fn run_sh_as(who: Option<(u32, u32)>, cwd: &Path, script: &str, mnt: &Path) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("sh");
    if let Some((uid, gid)) = who {
        // NOTE: std drops the supplementary groups when root sets a uid.
        cmd.uid(uid).gid(gid).env("HOME", "/");
    }
    let mut child = cmd
        .arg("-c")
        .arg(script)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh");
    let deadline = Instant::now() + SH_TIMEOUT;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            force_unmount(mnt);
            let _ = child.kill();
            panic!("{script:?} hung on the mount");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Closes `f` the way a program does and reports what close(2) said, which
/// std's `drop` swallows (a kvfs mount reports a failed commit there).
#[allow(unsafe_code)]
pub fn close_checked(f: std::fs::File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = f.into_raw_fd();
    // SAFETY: `fd` came from `into_raw_fd` and is closed exactly once.
    if unsafe { libc::close(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
