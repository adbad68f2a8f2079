//! kvfs: mounts a key prefix of a kv cluster as a directory tree.
//!
//! Reads are served from an in-memory copy of the subtree that one watch
//! stream keeps current (with the kernel's caches invalidated on change);
//! writes are buffered per open file and committed as one put on close.
//! A last-known-good copy on disk lets a mount start while the cluster is
//! down.

mod opts;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context};
use fuser::{MountOption, Session, SessionACL};

use kvfs::{Core, Failure, KvFs, MountWatch, Remote, Status};

use crate::opts::{Invocation, Parsed};

fn main() -> ExitCode {
    let mut args = std::env::args();
    let argv0 = args.next().unwrap_or_default();
    let args: Vec<String> = args.collect();
    let name = argv0.rsplit('/').next().unwrap_or("");
    let helper = name.starts_with("mount.");
    let inv = match opts::parse(&args, helper) {
        Ok(Parsed::Run(i)) => *i,
        Ok(Parsed::Print(s)) => {
            println!("{s}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("kvfs: {e}");
            return ExitCode::from(2);
        }
    };
    if inv.fake {
        return ExitCode::SUCCESS;
    }
    // NOTE: fork before any thread exists; the parent returns once the child
    // reports the mount live (what mount(8) needs).
    let ready = if inv.foreground {
        None
    } else {
        match daemonize() {
            Ok(w) => Some(w),
            Err(e) => {
                eprintln!("kvfs: cannot start in the background: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    init_logging(inv.log_json);
    match run(inv, ready) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Forks. In the parent: waits for the child's word and exits with it
/// (never returns). In the child: returns the pipe to report readiness on.
#[allow(unsafe_code)]
fn daemonize() -> std::io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    let mut fds = [0i32; 2];
    // NOTE: close-on-exec, or fusermount3 would inherit the write end and
    // the parent would wait for its EOF forever.
    // SAFETY: pipe2(2) fills two fds we own from here on.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fds are fresh and owned by nobody else.
    let (mut rd, wr) = unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) };
    // SAFETY: single-threaded at this point (called first thing in main).
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            drop(rd);
            // SAFETY: setsid has no memory effects; detaches from the terminal.
            unsafe { libc::setsid() };
            Ok(wr)
        }
        _ => {
            drop(wr);
            let mut msg = String::new();
            let _ = rd.read_to_string(&mut msg);
            if msg == "ok" {
                std::process::exit(0);
            }
            let msg = if msg.is_empty() { "kvfs exited before the mount was live".to_owned() } else { msg };
            eprintln!("kvfs: {msg}");
            std::process::exit(1);
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG`: text, or with `-o
/// log_format=json` one JSON object per line, fields at the top level (as
/// kvd's `--log-format json`).
fn init_logging(json: bool) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fuser=warn"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        fmt.json().flatten_event(true).with_current_span(false).with_span_list(false).init();
    } else {
        fmt.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// A stable file name for a mount's state: FNV-1a of the source.
fn state_name(inv: &Invocation) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in inv.source.trim_start_matches("kvfs#").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

fn default_dir(system: &str, xdg: &str, fallback: &str) -> PathBuf {
    // Root uses the system directories.
    if kvfs::is_root() {
        return PathBuf::from(system);
    }
    std::env::var_os(xdg)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(fallback)))
        .unwrap_or_else(std::env::temp_dir)
        .join("kvfs")
}

fn run(inv: Invocation, ready: Option<std::fs::File>) -> anyhow::Result<()> {
    let mut ready = ready;
    let result = mount_and_serve(&inv, &mut ready);
    if let (Err(e), Some(mut w)) = (&result, ready) {
        let _ = write!(w, "{e:#}");
    }
    result
}

fn mount_and_serve(inv: &Invocation, ready: &mut Option<std::fs::File>) -> anyhow::Result<()> {
    let meta = std::fs::metadata(&inv.mountpoint)
        .with_context(|| format!("mount point {} is not usable", inv.mountpoint.display()))?;
    if !meta.is_dir() {
        bail!("mount point {} is not a directory", inv.mountpoint.display());
    }
    // NOTE: bound before anything is mounted: a port in use is an error at
    // start, not a mount without its metrics.
    let metrics = match &inv.metrics_addr {
        Some(a) => {
            let l = std::net::TcpListener::bind(a).with_context(|| format!("metrics_addr={a}: cannot listen"))?;
            let bound = l.local_addr().with_context(|| format!("metrics_addr={a}: cannot listen"))?;
            Some((l, bound))
        }
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let token = match &inv.token_file {
        Some(p) => {
            let t = std::fs::read_to_string(p).with_context(|| format!("cannot read token_file {}", p.display()))?;
            use std::os::unix::fs::PermissionsExt;
            if std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o044 != 0) {
                // NOTE: the modes keep other users out of the mount, not out
                // of the cluster's API, which takes the token from anyone.
                tracing::warn!(
                    token_file = %p.display(),
                    "the token file is readable by users other than its owner: they can read what the token reads through the API"
                );
            }
            Some(t.trim().to_owned()).filter(|t| !t.is_empty())
        }
        None => None,
    };
    let ca_pem = match &inv.ca_file {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read ca_file {}", p.display()))?),
        None => None,
    };
    // IMPORTANT: each member gets a share of the mount's bound, so that a
    // call still moves on from a frozen member to the next one within it.
    let per_member = (inv.timeout / inv.endpoints.len().max(1) as u32).max(std::time::Duration::from_millis(500));
    let client = kv_client::Client::with_options(
        &inv.endpoints,
        &kv_client::ClientOptions { token, ca_pem, request_timeout: Some(per_member) },
    )?;
    let remote = Arc::new(Remote { client, timeout: inv.timeout });
    let name = state_name(inv);
    let lkg_file = inv
        .cache_dir
        .clone()
        .unwrap_or_else(|| default_dir("/var/cache/kvfs", "XDG_CACHE_HOME", ".cache"))
        .join(format!("{name}.json"));
    // NOTE: named after the real path, however the mount point was given,
    // so that `kvctl watch --mount DIR` finds it by the same rule.
    let real_mountpoint = std::fs::canonicalize(&inv.mountpoint).unwrap_or_else(|_| inv.mountpoint.clone());
    let status_file = kv_client::mounts::status_file(
        &inv.status_dir.clone().unwrap_or_else(kv_client::mounts::default_status_dir),
        &real_mountpoint,
    );

    let opts =
        kvfs::Options { prefix: inv.prefix.clone(), ro: inv.ro, local: inv.local.clone(), attr_map: inv.attr_map };
    // The kernel's side of invalidations exists once the session does.
    let notifier: Arc<OnceLock<fuser::Notifier>> = Arc::default();
    let n = notifier.clone();
    let sink = Box::new(kvfs::invalidator(move || n.get().cloned()));
    let path_of = |k: &str| kvfs::path_in(&inv.prefix, k);

    // The cluster first; the last-known-good copy when it cannot be reached.
    let (revision, entries, from) = match kvfs::load(remote.as_ref(), &inv.prefix, path_of) {
        Ok((rev, e)) => (rev, e, "cluster"),
        // NOTE: a cluster that refuses the token is no reason to serve the
        // last-known-good copy: that would outlive a revocation.
        Err(Failure::Denied) => bail!("cannot mount {}: the cluster refuses the token", inv.source),
        Err(why) => match kvfs::load_lkg(&lkg_file, path_of) {
            Ok((rev, e)) => {
                tracing::warn!(reason = %why, revision = rev, "cluster unreachable; serving the last-known-good copy");
                (rev, e, "last-known-good")
            }
            Err(_) => {
                bail!("cannot load {}: {why} (and no last-known-good copy at {})", inv.source, lkg_file.display())
            }
        },
    };
    let core = Arc::new(Core::new(remote.clone(), opts, kvfs::loaded(entries, revision), sink));
    if from == "cluster" {
        if let Ok(me) = remote.whoami() {
            if let Ok(mut g) = core.grants.write() {
                *g = Some(me.grants);
            }
        }
    }
    core.connected.store(from == "cluster", Ordering::Relaxed);
    core.dirty.store(from == "cluster", Ordering::Relaxed);
    let sync = Arc::new(MountWatch {
        core: core.clone(),
        prefix: inv.prefix.clone(),
        status: Mutex::new(Status {
            connected: from == "cluster",
            revision,
            loaded_from: from.into(),
            prefix: inv.prefix.clone(),
            metrics_addr: metrics.as_ref().map(|(_, a)| a.to_string()),
            ..Status::of_this_process(&inv.source, &inv.mountpoint.display().to_string())
        }),
        status_file: Some(status_file),
        lkg_file: Some(lkg_file),
        liveness: Default::default(),
        revision_due: Default::default(),
    });
    let first_save = sync.save_lkg();

    let access = inv.access(kvfs::is_root());
    let fs = KvFs::new(core.clone(), access.others, access.default_permissions)
        .with_passthrough(inv.passthrough)
        .at(real_mountpoint.clone());
    let mut config = fuser::Config::default();
    let mut mo = vec![
        MountOption::FSName(inv.source.clone()),
        MountOption::Subtype("kvfs".into()),
        // NOTE: a crashed kvfs leaves no dead mount: fusermount3 unmounts.
        MountOption::AutoUnmount,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if inv.ro {
        mo.push(MountOption::RO);
    }
    if access.default_permissions {
        mo.push(MountOption::DefaultPermissions);
    } else if access.others {
        tracing::warn!(
            "nodefault_permissions with other users allowed: every local user may read and write every file"
        );
    }
    config.mount_options = mo;
    // NOTE: the kernel knows only allow_other; "root and the owner" is
    // fuser's check (and auto_unmount needs one of the two).
    config.acl = if access.others { SessionACL::All } else { SessionACL::RootAndOwner };
    config.n_threads = Some(kvfs::kernel::SESSION_THREADS);
    let session = Session::new(fs, &inv.mountpoint, &config)
        .with_context(|| format!("cannot mount at {} (is fuse3 installed?)", inv.mountpoint.display()))?;
    let mountpoint = inv.mountpoint.clone();
    tracing::info!(
        source = %inv.source,
        mountpoint = %inv.mountpoint.display(),
        other_users = access.others,
        default_permissions = access.default_permissions,
        "mounted"
    );
    // NOTE: SIGTERM and SIGINT are caught from before the status file says
    // the mount is live: one that comes right after must unmount cleanly.
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        let _rt = rt.enter();
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    };
    // IMPORTANT: written once the mount is live (a kvfs that fails to mount
    // over a live one leaves that one's file alone), and from here on,
    // however this function ends, the status file goes with it.
    sync.write_status();
    let _status_file = RemoveStatus(sync.clone());

    let _ = notifier.set(session.notifier());
    let watcher = sync.clone();
    std::thread::Builder::new().name("kvfs-watch".into()).spawn(move || watcher.run(&|| false))?;
    if let Some((listener, addr)) = metrics {
        // NOTE: labelled with the real path, the one the status file is
        // named after; the thread ends with the process.
        let label = real_mountpoint.display().to_string();
        let source = sync.clone();
        kvfs::metrics::serve(listener, move || kvfs::metrics::render(&source.current(), &label))?;
        tracing::info!(%addr, "serving metrics at /metrics");
    }
    let shower = sync.clone();
    std::thread::Builder::new().name("kvfs-status".into()).spawn(move || shower.show_revisions())?;
    let saver = sync.clone();
    rt.spawn(async move {
        let mut next_save = std::time::Instant::now() + first_save.map_or(Duration::ZERO, kvfs::lkg_gap);
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let s = saver.clone();
            let due = std::time::Instant::now() >= next_save;
            let took = tokio::task::spawn_blocking(move || {
                let took = if due { s.save_lkg() } else { None };
                s.tick();
                took
            })
            .await;
            if let Ok(Some(t)) = took {
                next_save = std::time::Instant::now() + kvfs::lkg_gap(t);
            }
        }
    });
    rt.spawn(async move {
        let (Ok(mut term), Ok(mut int)) = signals else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("signal received; unmounting");
        // NOTE: a lazy unmount ends the session loop (the kernel answers
        // its next read with ENODEV), whatever still has files open.
        let r = tokio::task::spawn_blocking(move || {
            std::process::Command::new("fusermount3").arg("-u").arg("-z").arg(&mountpoint).status()
        })
        .await;
        if !matches!(r, Ok(Ok(s)) if s.success()) {
            tracing::warn!(result = ?r, "fusermount3 -u failed");
        }
    });
    if let Some(mut w) = ready.take() {
        let _ = w.write_all(b"ok");
        // The daemon has no terminal any more.
        detach_stdio();
    }
    // Serves until unmounted, by a signal or from outside (umount).
    let served = session.run();
    sync.save_lkg();
    sync.remove_status();
    tracing::info!("unmounted");
    rt.shutdown_timeout(Duration::from_millis(200));
    served.context("FUSE session failed")
}

/// Removes the mount's status file when dropped.
struct RemoveStatus(Arc<MountWatch>);

impl Drop for RemoveStatus {
    fn drop(&mut self) {
        self.0.remove_status();
    }
}

/// Points stdin/stdout at /dev/null once the daemon runs on its own.
#[allow(unsafe_code)]
fn detach_stdio() {
    use std::os::fd::AsRawFd;
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        // SAFETY: dup2 onto the standard descriptors; `null` outlives the calls.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
        }
    }
}
