//! Keeping a mount current: the initial load, the watch (resumed from a
//! cursor of its own), the re-list after compaction, the last-known-good
//! copy on disk and the status file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kv_client::{clock, EntryInfo};
use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, Failure};
use crate::core::{node_of, Core};
use crate::tree::TreeNode;

/// Entries per page of a load.
const PAGE: usize = 10_000;

/// How long the watch waits for the kernel to drop what a revision
/// replaced before it says the mount serves that revision (a directory
/// another request holds locked makes it wait).
const SHOW_WAIT: Duration = Duration::from_millis(500);

/// Lists the whole subtree below `prefix`, with values, by pages. The
/// cursor to watch from is the *first* page's revision: a later page may
/// reflect later writes, and a change between pages must still be replayed
/// (replaying one the listing already holds changes nothing).
pub fn load(
    cluster: &dyn Cluster,
    prefix: &str,
    path_of: impl Fn(&str) -> Option<String>,
) -> Result<(u64, BTreeMap<String, TreeNode>), Failure> {
    let mut out = BTreeMap::new();
    let mut cursor: Option<u64> = None;
    for page in kv_client::pages(|after| cluster.list_page(prefix, after, PAGE)) {
        let page = page?;
        cursor = Some(cursor.map_or(page.revision, |c| c.min(page.revision)));
        for e in &page.entries {
            if let Some(p) = path_of(&e.key) {
                out.insert(p, node_of(e));
            }
        }
    }
    Ok((cursor.unwrap_or(0), out))
}

/// What the mount tells about itself in its status file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Status {
    /// The mount's source.
    pub source: String,
    /// Where it is mounted.
    pub mountpoint: String,
    /// The key prefix it shows ("" for the whole keyspace): a change of a
    /// key under it is in the mount once `revision` reaches the change's.
    #[serde(default)]
    pub prefix: String,
    /// kvfs's pid.
    pub pid: u32,
    /// When that process started: field 22 of `/proc/PID/stat` (clock
    /// ticks after boot). A file whose pid runs with another start time,
    /// or that was written in another boot, belongs to a dead mount.
    pub start_time: u64,
    /// `/proc/sys/kernel/random/boot_id` when the file was written.
    pub boot_id: String,
    /// Whether the watch stream is up.
    pub connected: bool,
    /// The member the watch stream comes from, while it is up.
    pub endpoint: Option<String>,
    /// Cluster revision the mount reflects: every open from now on reads
    /// what the prefix held at this revision or later (written once the
    /// kernel has dropped what it replaced, at most every 10 ms).
    pub revision: u64,
    /// Since when the mount may be missing changes (seconds since the
    /// epoch): when it lost the cluster, or last heard from a stream that
    /// has gone quiet; `null` while it is current.
    pub stale_since: Option<u64>,
    /// Where the content came from at start: "cluster" or "last-known-good".
    pub loaded_from: String,
    /// Seconds since `stale_since` (0 while current), as of the last write.
    #[serde(default)]
    pub staleness_seconds: u64,
    /// Watch streams opened again after one ended or failed.
    #[serde(default)]
    pub reconnects: u64,
    /// Changes the mount sent to the cluster (a file's content at close or
    /// fsync, a create, mkdir, delete, rename, chmod...), failed ones
    /// included.
    #[serde(default)]
    pub commits: u64,
    /// The failed ones, by the errno the mount reported (`{"EIO": 2}`).
    #[serde(default)]
    pub commit_failures: BTreeMap<String, u64>,
    /// Kernel cache invalidations waiting for a notifier thread.
    #[serde(default)]
    pub invalidations_queued: u64,
    /// Where the mount serves its Prometheus metrics (`-o metrics_addr=`,
    /// with the port it chose for port 0); `null` without.
    #[serde(default)]
    pub metrics_addr: Option<String>,
    /// Set once the mount ends: the file is gone and is not written again.
    #[serde(skip)]
    pub retired: bool,
}

impl Status {
    /// The status of this process, for a mount of `source` at `mountpoint`.
    pub fn of_this_process(source: &str, mountpoint: &str) -> Status {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // NOTE: the command name (field 2) may hold spaces and parentheses;
        // fields after the last ')' are plain.
        let start_time =
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(19)?.parse().ok()).unwrap_or(0);
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        Status {
            source: source.to_owned(),
            mountpoint: mountpoint.to_owned(),
            pid: std::process::id(),
            start_time,
            boot_id: boot_id.trim().to_owned(),
            ..Status::default()
        }
    }
}

/// When the watch last heard from the cluster, and how long it may be
/// quiet before the mount counts itself stale.
#[derive(Debug, Default)]
pub struct Liveness {
    heard: Option<(Instant, u64)>,
    quiet_after: Option<Duration>,
}

/// Waits between watch attempts: doubling up to a cap, each drawn at
/// random from its upper half, so that the many mounts of a failed member
/// do not all come back at once.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(8);

    fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    fn wait(&mut self) -> Duration {
        use std::hash::{BuildHasher, Hasher};
        // NOTE: std's hasher keys are random per process: enough to spread
        // mounts apart, with no crate for it.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_i64(clock::now_ns());
        let half = self.next / 2;
        let d = half + Duration::from_nanos(h.finish() % (half.as_nanos() as u64).max(1));
        self.next = (self.next * 2).min(Self::MAX);
        d
    }
}

/// The last-known-good copy on disk.
#[derive(Serialize, Deserialize)]
struct Lkg {
    revision: u64,
    entries: Vec<EntryInfo>,
}

/// Loads a last-known-good copy; one that does not parse is `InvalidData`.
pub fn load_lkg(
    path: &Path,
    path_of: impl Fn(&str) -> Option<String>,
) -> std::io::Result<(u64, BTreeMap<String, TreeNode>)> {
    let lkg: Lkg = serde_json::from_slice(&std::fs::read(path)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let entries = lkg.entries.iter().filter_map(|e| path_of(&e.key).map(|p| (p, node_of(e)))).collect();
    Ok((lkg.revision, entries))
}

/// How long to wait before the next save of the last-known-good copy,
/// after one that took `took` (a minute at most: one slow fsync does not
/// put off the next save for long).
pub fn lkg_gap(took: Duration) -> Duration {
    (took * LKG_COST_FACTOR).clamp(Duration::from_secs(1), LKG_GAP_MAX)
}

/// Writes `path` whole by a rename; `durable` syncs the data first (the
/// last-known-good copy; the status file lives in a runtime directory and
/// is rewritten up to a hundred times a second, so it is not).
fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    if durable {
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)
}

/// The watch side of a mount.
pub struct MountWatch {
    /// The mount.
    pub core: Arc<Core>,
    /// Key prefix watched.
    pub prefix: String,
    /// Status, as written to the status file.
    pub status: Mutex<Status>,
    /// The status file.
    pub status_file: Option<PathBuf>,
    /// The last-known-good copy.
    pub lkg_file: Option<PathBuf>,
    /// What the watch last heard.
    pub liveness: Mutex<Liveness>,
    /// A revision the status file is still to show ([`MountWatch::show_revisions`]).
    pub revision_due: RevisionDue,
}

/// A newer revision than the status file shows, and the wake-up of the
/// thread that writes it.
#[derive(Default)]
pub struct RevisionDue {
    due: Mutex<bool>,
    wake: std::sync::Condvar,
}

/// The least time between two writes of the status file for a new
/// revision: a burst of writes (one revision each) rewrites it at most this
/// often, the last revision of the burst at the end of the gap.
const STATUS_GAP: Duration = Duration::from_millis(10);

/// The last-known-good copy is saved no more often than this many times
/// its last save took: a large keyspace under steady writes does not spend
/// its time writing it (at least once a second when it is small).
const LKG_COST_FACTOR: u32 = 100;

/// The longest wait between two saves of a changed last-known-good copy.
const LKG_GAP_MAX: Duration = Duration::from_secs(60);

impl MountWatch {
    /// Writes the status file.
    pub fn write_status(&self) {
        let Ok(s) = self.status.lock() else { return };
        self.write_locked(&s);
    }

    /// IMPORTANT: called with the status locked, so no write follows
    /// [`MountWatch::remove_status`].
    fn write_locked(&self, s: &Status) {
        let Some(path) = &self.status_file else { return };
        if s.retired {
            return;
        }
        if let Ok(json) = serde_json::to_vec_pretty(s) {
            if let Err(e) = write_atomic(path, &json, false) {
                tracing::warn!(error = %e, path = %path.display(), "cannot write the status file");
            }
        }
    }

    /// Removes the status file for good (the mount ends).
    pub fn remove_status(&self) {
        let Some(path) = &self.status_file else { return };
        if let Ok(mut s) = self.status.lock() {
            s.retired = true;
            let _ = std::fs::remove_file(path);
        }
    }

    /// Applies `f` to the status and writes the file if that changed it.
    fn update_status(&self, f: impl FnOnce(&mut Status)) -> bool {
        let Ok(mut s) = self.status.lock() else { return false };
        let before = s.clone();
        f(&mut s);
        let changed = *s != before;
        if changed {
            self.write_locked(&s);
        }
        changed
    }

    /// The status file says the mount serves `revision` (if it is newer):
    /// on every watch batch, so without the copy `update_status` compares.
    /// Written by [`MountWatch::show_revisions`]'s thread, at most once per
    /// [`STATUS_GAP`] (on a host whose runtime directory is on disk, each
    /// rewrite is a disk write beside the cluster's own).
    fn show_revision(&self, revision: u64) {
        let Ok(mut s) = self.status.lock() else { return };
        if revision > s.revision {
            s.revision = revision;
            if let Ok(mut due) = self.revision_due.due.lock() {
                *due = true;
                self.revision_due.wake.notify_one();
            }
        }
    }

    /// Writes the status file whenever [`MountWatch::show_revision`] moved
    /// the revision, then waits [`STATUS_GAP`]; runs on a thread of its own
    /// for the life of the process.
    pub fn show_revisions(&self) {
        loop {
            {
                let Ok(mut due) = self.revision_due.due.lock() else { return };
                while !*due {
                    let Ok(d) = self.revision_due.wake.wait(due) else { return };
                    due = d;
                }
                *due = false;
            }
            // (under the status lock, as every write: never an older status
            // over a newer one)
            if let Ok(s) = self.status.lock() {
                self.write_locked(&s);
            }
            std::thread::sleep(STATUS_GAP);
        }
    }

    /// Brings the status's counters and staleness up to now.
    fn refresh(&self, s: &mut Status) {
        s.staleness_seconds = s.stale_since.map_or(0, |t| clock::now_s().saturating_sub(t));
        s.commits = self.core.commits.total();
        s.commit_failures = self.core.commits.failed();
        s.invalidations_queued = self.core.invalidations_queued();
    }

    /// The status as of now (what `-o metrics_addr=` serves).
    pub fn current(&self) -> Status {
        let mut s = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        self.refresh(&mut s);
        s
    }

    /// `reopened`: a watch stream is up again after one ended or failed.
    fn set_connected(&self, connected: bool, endpoint: Option<String>, reopened: bool) {
        self.core.connected.store(connected, Ordering::Relaxed);
        let revision = self.core.cursor();
        let mut flipped = false;
        self.update_status(|s| {
            flipped = s.connected != connected;
            s.reconnects += u64::from(reopened);
            s.connected = connected;
            s.endpoint = endpoint;
            s.revision = revision;
            if connected {
                s.stale_since = None;
            } else if s.stale_since.is_none() {
                s.stale_since = Some(clock::now_s());
            }
            self.refresh(s);
        });
        if flipped {
            tracing::info!(connected, revision, "cluster connection changed");
        }
    }

    /// Records that the watch heard from the cluster now.
    fn heard(&self, quiet_after: Option<Option<Duration>>) {
        if let Ok(mut l) = self.liveness.lock() {
            l.heard = Some((Instant::now(), clock::now_s()));
            if let Some(q) = quiet_after {
                l.quiet_after = q;
            }
        }
    }

    /// Brings the status file's staleness and counters up to date (called
    /// every second): a stream quiet past its bound makes the mount stale
    /// before the stream is given up.
    ///
    /// NOTE: the revision is the watch thread's to write, once the kernel
    /// has dropped what a revision replaced (see [`MountWatch::run`]).
    pub fn tick(&self) {
        let quiet_since = self.liveness.lock().ok().and_then(|l| match (l.heard, l.quiet_after) {
            (Some((at, secs)), Some(q)) if at.elapsed() > q => Some(secs),
            _ => None,
        });
        let mut went_quiet = false;
        self.update_status(|s| {
            if s.connected {
                went_quiet = s.stale_since.is_none() && quiet_since.is_some();
                s.stale_since = quiet_since;
            }
            self.refresh(s);
        });
        if went_quiet {
            tracing::warn!(revision = self.core.cursor(), "the watch stream has gone quiet; the mount may be stale");
        }
    }

    /// Saves the last-known-good copy if the cache changed; how long that
    /// took (`None`: nothing was saved).
    pub fn save_lkg(&self) -> Option<Duration> {
        if !self.core.dirty.swap(false, Ordering::Relaxed) {
            return None;
        }
        let began = Instant::now();
        let path = self.lkg_file.as_ref()?;
        let saved = match self.core.remote_entries() {
            Ok((revision, entries)) => match serde_json::to_vec(&Lkg { revision, entries }) {
                Ok(b) => write_atomic(path, &b, true)
                    .map_err(|e| tracing::warn!(error = %e, "cannot save the last-known-good copy"))
                    .is_ok(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot encode the last-known-good copy");
                    false
                }
            },
            Err(_) => false,
        };
        // (what could not be saved is tried again, at the next save or at
        // unmount)
        if !saved {
            self.core.dirty.store(true, Ordering::Relaxed);
        }
        Some(began.elapsed())
    }

    /// Keeps the cache current, on the calling thread, until `stop` says:
    /// watches from the cursor, applies each revision whole, reconnects (to
    /// any endpoint) and lists again when the history it needs is compacted.
    /// Waits between attempts back off, with jitter.
    pub fn run(&self, stop: &dyn Fn() -> bool) {
        let mut backoff = Backoff::new();
        let mut opened = false;
        while !stop() {
            let from = self.core.cursor();
            match self.core.cluster().watch(&self.prefix, from) {
                Ok(mut w) => {
                    self.heard(Some(w.quiet_after()));
                    self.set_connected(true, w.endpoint(), opened);
                    opened = true;
                    backoff.reset();
                    loop {
                        match w.next() {
                            Ok(Some(b)) => {
                                self.heard(None);
                                // IMPORTANT: the status file's revision moves only once
                                // the kernel has dropped what the batch replaced: a
                                // program told to reload at that revision
                                // (`kvctl watch --mount`) must not read the old file.
                                self.core.apply_and_show(&b, SHOW_WAIT);
                                let revision = self.core.cursor();
                                self.show_revision(revision);
                            }
                            Ok(None) => break,
                            Err(f) => {
                                self.failed(f);
                                break;
                            }
                        }
                        if stop() {
                            return;
                        }
                    }
                }
                Err(f) => self.failed(f),
            }
            self.set_connected(false, None, false);
            std::thread::sleep(backoff.wait());
        }
    }

    fn failed(&self, f: Failure) {
        match f {
            Failure::Compacted => self.relist(),
            Failure::Denied => self.core.locked_out(),
            other => tracing::debug!(error = %other, "watch ended"),
        }
    }

    fn relist(&self) {
        tracing::info!("watch history compacted; listing again");
        let core = &self.core;
        match load(core.cluster(), &self.prefix, |k| core.path_of(k)) {
            Ok((cursor, fresh)) => core.relist(fresh, cursor),
            Err(f) => tracing::warn!(error = %f, "cannot list again"),
        }
    }
}
