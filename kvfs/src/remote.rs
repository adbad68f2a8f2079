//! The cluster side of a mount: the client with its bounded waits and errno
//! mapping, the initial load, the watch that keeps the cache current, the
//! last-known-good copy on disk, and the status file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use fuser::{Errno, INodeNo, Notifier};
use kv_client::{Client, EntryInfo, EventType, ListOptions};
use serde::{Deserialize, Serialize};

use crate::tree::{split, Node, Tree};

thread_local! {
    /// The runtime and client of a FUSE thread's cluster calls.
    static THREAD_CLIENT: std::cell::RefCell<Option<(tokio::runtime::Runtime, Client)>> =
        const { std::cell::RefCell::new(None) };
}

/// Talks to the cluster on behalf of FUSE callbacks (which are not async).
pub struct Remote {
    /// The client (fails over between endpoints).
    pub client: Client,
    /// Key prefix of the mount.
    pub prefix: String,
    /// Bound on one call.
    pub timeout: Duration,
    /// What the mount's token may read (`None`: not known, assume all).
    pub grants: RwLock<Option<kv_client::Grants>>,
}

/// Maps a client error to what the filesystem reports; `conflict` is what a
/// failed compare (412) means to the caller.
pub fn errno(e: &kv_client::Error, conflict: Errno) -> Errno {
    match e {
        kv_client::Error::Api { status: 412, .. } => conflict,
        kv_client::Error::Api { status: 413, .. } => Errno::EFBIG,
        kv_client::Error::Api { status: 507, .. } => Errno::ENOSPC,
        kv_client::Error::Api { status: 404, .. } => Errno::ENOENT,
        kv_client::Error::Api { status: 401 | 403, .. } => Errno::EACCES,
        kv_client::Error::Api { status: 400, .. } => Errno::EINVAL,
        kv_client::Error::InvalidKey(k) if k.is_too_long() => Errno::ENAMETOOLONG,
        kv_client::Error::InvalidKey(_) => Errno::EINVAL,
        _ => Errno::EIO,
    }
}

impl Remote {
    /// Full key of a path in the mount.
    pub fn key(&self, path: &str) -> String {
        match (self.prefix.is_empty(), path.is_empty()) {
            (true, _) => path.to_owned(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{path}", self.prefix),
        }
    }

    /// Whether the token may see `path` (or a directory on the way to
    /// something it may read); a name it may not see is `EACCES`, not
    /// `ENOENT`.
    pub fn can_see(&self, path: &str) -> bool {
        self.granted(|g, key| g.can_see(key), path)
    }

    /// Whether the token may write `path` (checked at open, so a shell
    /// redirection fails visibly instead of at an unchecked close).
    pub fn can_write(&self, path: &str) -> bool {
        self.granted(|g, key| g.can_write(key), path)
    }

    /// `test` on the mount's grants and the key of `path`; true while the
    /// grants are unknown.
    fn granted(&self, test: impl Fn(&kv_client::Grants, &str) -> bool, path: &str) -> bool {
        match self.grants.read() {
            Ok(g) => g.as_ref().is_none_or(|g| test(g, &self.key(path))),
            Err(_) => true,
        }
    }

    /// Path in the mount of a full key; `None` outside the mount (or the
    /// prefix key itself, which the root directory stands for).
    pub fn path_of(&self, key: &str) -> Option<String> {
        if self.prefix.is_empty() {
            return Some(key.to_owned());
        }
        key.strip_prefix(&self.prefix)?.strip_prefix('/').map(str::to_owned)
    }

    /// Runs a client call, waiting at most the bound; errors become errnos
    /// (a failed compare: EIO).
    pub fn call<T>(&self, what: &str, f: impl AsyncFnOnce(&Client) -> Result<T, kv_client::Error>) -> Result<T, Errno> {
        self.call_as(what, Errno::EIO, f)
    }

    /// [`Remote::call`], with a failed compare reported as `conflict`.
    ///
    /// NOTE: the call runs on the calling FUSE thread, on a runtime and a
    /// client of that thread's own: its socket is read and written right
    /// here. On the shared runtime, the connection's task ran on a worker
    /// thread and two thread wake-ups were added to every write.
    pub fn call_as<T>(
        &self,
        what: &str,
        conflict: Errno,
        f: impl AsyncFnOnce(&Client) -> Result<T, kv_client::Error>,
    ) -> Result<T, Errno> {
        let result = THREAD_CLIENT.with(|cell| -> Result<_, Errno> {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
                    tracing::error!(error = %e, "cannot start a runtime for cluster calls");
                    Errno::EIO
                })?;
                let client = self.client.with_endpoints(self.client.endpoints()).map_err(|e| {
                    tracing::error!(error = %e, "cannot set up a client for cluster calls");
                    Errno::EIO
                })?;
                *slot = Some((rt, client));
            }
            let (rt, client) = slot.as_ref().ok_or(Errno::EIO)?;
            Ok(rt.block_on(async { tokio::time::timeout(self.timeout, f(client)).await }))
        })?;
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, op = what, "cluster request failed");
                Err(errno(&e, conflict))
            }
            Err(_) => {
                tracing::warn!(
                    op = what,
                    timeout_ms = self.timeout.as_millis() as u64,
                    "cluster did not answer in time"
                );
                Err(Errno::EIO)
            }
        }
    }

    /// Lists the whole mounted subtree with values.
    pub async fn load(&self) -> Result<(u64, BTreeMap<String, Node>), kv_client::Error> {
        let mut opts = ListOptions { recursive: true, values: true, limit: Some(10_000), ..Default::default() };
        let mut out = BTreeMap::new();
        let mut revision = 0;
        loop {
            let page = self.client.list(&self.prefix, &opts).await?;
            revision = revision.max(page.revision);
            for e in page.entries {
                if let Some(p) = self.path_of(&e.key) {
                    out.insert(p, node_of(&e));
                }
            }
            match page.next_after {
                Some(a) if page.more => opts.after = Some(a),
                _ => break,
            }
        }
        Ok((revision, out))
    }
}

/// A cache node from a wire entry.
pub fn node_of(e: &EntryInfo) -> Node {
    Node {
        meta: e.meta.clone(),
        value: Arc::new(e.value_bytes().unwrap_or_default()),
        local: false,
        provisional: false,
    }
}

/// What the mount tells about itself in its status file.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Status {
    /// The mount's source.
    pub source: String,
    /// Where it is mounted.
    pub mountpoint: String,
    /// kvfs's pid.
    pub pid: u32,
    /// Whether the watch stream is up.
    pub connected: bool,
    /// Cluster revision the mount reflects.
    pub revision: u64,
    /// When the mount lost the cluster (seconds since the epoch), if it has.
    pub stale_since: Option<u64>,
    /// Where the content came from at start: "cluster" or "last-known-good".
    pub loaded_from: String,
}

/// State shared by the sync loop and the filesystem.
pub struct Sync {
    /// The cache.
    pub tree: Arc<RwLock<Tree>>,
    /// Cluster access.
    pub remote: Arc<Remote>,
    /// Status, as written to the status file.
    pub status: Mutex<Status>,
    /// The status file.
    pub status_file: Option<PathBuf>,
    /// The last-known-good copy.
    pub lkg_file: Option<PathBuf>,
    /// The cache changed since the last save.
    pub dirty: AtomicBool,
    /// Paths this mount is writing right now: the kernel already knows of
    /// those changes, and invalidating them while their syscall holds the
    /// directory lock would stall the watch.
    pub own: Mutex<std::collections::HashMap<String, usize>>,
    /// Invalidations go to a thread of their own (they may block in the
    /// kernel; the runtime must not).
    pub inval_tx: std::sync::mpsc::Sender<Vec<Inval>>,
}

/// The last-known-good copy on disk.
#[derive(Serialize, Deserialize)]
struct Lkg {
    revision: u64,
    entries: Vec<EntryInfo>,
}

/// Loads a last-known-good copy.
pub fn load_lkg(path: &Path, remote: &Remote) -> anyhow::Result<(u64, BTreeMap<String, Node>)> {
    let lkg: Lkg = serde_json::from_slice(&std::fs::read(path)?)?;
    let entries = lkg.entries.iter().filter_map(|e| remote.path_of(&e.key).map(|p| (p, node_of(e)))).collect();
    Ok((lkg.revision, entries))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Marks a path as being written by this mount while it lives.
pub struct OwnWrite<'a> {
    sync: &'a Sync,
    path: String,
}

impl Drop for OwnWrite<'_> {
    fn drop(&mut self) {
        if let Ok(mut o) = self.sync.own.lock() {
            if let Some(n) = o.get_mut(&self.path) {
                *n -= 1;
                if *n == 0 {
                    o.remove(&self.path);
                }
            }
        }
    }
}

impl Sync {
    /// Marks `path` as written by this mount until the guard drops.
    pub fn own_write(&self, path: &str) -> OwnWrite<'_> {
        if let Ok(mut o) = self.own.lock() {
            *o.entry(path.to_owned()).or_insert(0) += 1;
        }
        OwnWrite { sync: self, path: path.to_owned() }
    }

    /// Writes the status file.
    pub fn write_status(&self) {
        let Some(path) = &self.status_file else { return };
        let s = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        if let Ok(json) = serde_json::to_vec_pretty(&s) {
            if let Err(e) = write_atomic(path, &json) {
                tracing::warn!(error = %e, path = %path.display(), "cannot write the status file");
            }
        }
    }

    fn set_connected(&self, connected: bool, revision: u64) {
        let changed = match self.status.lock() {
            Ok(mut s) => {
                let changed = s.connected != connected;
                s.connected = connected;
                s.revision = revision;
                if connected {
                    s.stale_since = None;
                } else if s.stale_since.is_none() {
                    s.stale_since = Some(now_secs());
                }
                changed
            }
            Err(_) => false,
        };
        if changed {
            tracing::info!(connected, revision, "cluster connection changed");
            self.write_status();
        }
    }

    /// Saves the last-known-good copy if the cache changed.
    pub fn save_lkg(&self) {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        let Some(path) = &self.lkg_file else { return };
        let lkg = match self.tree.read() {
            Ok(t) => Lkg {
                revision: t.revision,
                entries: t
                    .remote_entries()
                    .map(|(p, n)| EntryInfo::new(self.remote.key(p), n.meta.clone(), Some(&n.value)))
                    .collect(),
            },
            Err(_) => return,
        };
        match serde_json::to_vec(&lkg) {
            Ok(b) => {
                if let Err(e) = write_atomic(path, &b) {
                    tracing::warn!(error = %e, "cannot save the last-known-good copy");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the last-known-good copy"),
        }
        if let Ok(mut s) = self.status.lock() {
            s.revision = lkg.revision;
        }
        self.write_status();
    }

    /// Keeps the cache current: watches from the cache's revision, applies
    /// every event, invalidates the kernel's caches, reconnects (to any
    /// endpoint) and re-lists when the history it needs is compacted.
    pub async fn run(self: Arc<Self>) {
        loop {
            let from = self.tree.read().map(|t| t.revision).unwrap_or(0);
            match self.remote.client.watch(&self.remote.prefix, Some(from)).await {
                Ok(mut w) => {
                    self.set_connected(true, from);
                    loop {
                        match w.next().await {
                            Ok(Some(ev)) => {
                                let complete = w.last_revision();
                                let inval = self.apply(&ev, complete);
                                if !inval.is_empty() {
                                    let _ = self.inval_tx.send(inval);
                                }
                            }
                            Ok(None) => break,
                            Err(e) if e.status() == Some(410) => {
                                self.relist().await;
                                break;
                            }
                            Err(e) if matches!(e.status(), Some(401 | 403)) => {
                                self.locked_out(&e);
                                break;
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "watch ended");
                                break;
                            }
                        }
                    }
                }
                Err(e) if e.status() == Some(410) => self.relist().await,
                Err(e) if matches!(e.status(), Some(401 | 403)) => self.locked_out(&e),
                Err(e) => tracing::debug!(error = %e, "cannot watch"),
            }
            let rev = self.tree.read().map(|t| t.revision).unwrap_or(0);
            self.set_connected(false, rev);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The cluster refused the token (revoked, expired): forget everything
    /// it showed, so the mount answers `EACCES` instead of serving what the
    /// token may no longer read, here or from the last-known-good copy.
    fn locked_out(&self, e: &kv_client::Error) {
        let first = self.remote.grants.write().map(|mut g| g.replace(kv_client::Grants::default())).ok().flatten();
        if first != Some(kv_client::Grants::default()) {
            tracing::error!(error = %e, "the cluster refuses this mount's token; hiding the cached keys");
        }
        let mut inval = Vec::new();
        if let Ok(mut t) = self.tree.write() {
            for p in t.replace_remote(BTreeMap::new()) {
                inval.extend(invalidations(&t, &p));
            }
        }
        self.dirty.store(true, Ordering::Relaxed);
        let _ = self.inval_tx.send(inval);
    }

    async fn relist(&self) {
        tracing::info!("watch history compacted; listing again");
        let Ok((rev, fresh)) = self.remote.load().await else { return };
        let mut inval = Vec::new();
        if let Ok(mut t) = self.tree.write() {
            for p in t.replace_remote(fresh) {
                inval.extend(invalidations(&t, &p));
            }
            t.revision = rev;
            t.prune_gone(rev);
        }
        self.dirty.store(true, Ordering::Relaxed);
        let _ = self.inval_tx.send(inval);
    }

    /// Applies one event; returns what the kernel must forget.
    fn apply(&self, ev: &kv_client::WatchEvent, complete: Option<u64>) -> Vec<Inval> {
        let Some(path) = self.remote.path_of(&ev.key) else { return vec![] };
        let Ok(mut t) = self.tree.write() else { return vec![] };
        if let Some(c) = complete {
            t.revision = t.revision.max(c);
        }
        let stale = t.deleted_after(&path, ev.revision);
        if let Some(c) = complete {
            t.prune_gone(c);
        }
        if stale || t.get(&path).is_some_and(|n| n.local) {
            return vec![];
        }
        let changed = match (ev.kind, &ev.entry) {
            (EventType::Put, Some(e)) => {
                let node = node_of(e);
                match t.get(&path) {
                    // Our own write, already in the cache: refresh silently.
                    Some(old) if old.meta.mod_revision == node.meta.mod_revision && !old.provisional => {
                        t.insert(path.clone(), node);
                        false
                    }
                    Some(old) if old.meta.mod_revision > node.meta.mod_revision => false,
                    _ => {
                        t.insert(path.clone(), node);
                        true
                    }
                }
            }
            _ => {
                t.get(&path).is_some_and(|n| n.meta.mod_revision <= ev.revision && !n.provisional)
                    && t.remove(&path).is_some()
            }
        };
        self.dirty.store(true, Ordering::Relaxed);
        let own = self.own.lock().map(|o| o.contains_key(&path)).unwrap_or(false);
        if changed && !own {
            invalidations(&t, &path)
        } else {
            vec![]
        }
    }
}

/// A kernel cache entry to drop.
pub enum Inval {
    /// Attributes and pages of an inode.
    Inode(u64),
    /// A name in a directory.
    Entry(u64, String),
}

/// What to invalidate after `path` changed: its inode, its name in its
/// parent, and the names of ancestors that appeared or vanished with it.
pub fn invalidations(t: &Tree, path: &str) -> Vec<Inval> {
    let mut out = Vec::new();
    if let Some(i) = t.known_ino(path) {
        out.push(Inval::Inode(i));
    }
    let mut p = path;
    loop {
        let (parent, name) = split(p);
        if let Some(pi) = t.known_ino(parent) {
            out.push(Inval::Entry(pi, name.to_owned()));
            out.push(Inval::Inode(pi));
        }
        if parent.is_empty() || t.get(parent).is_some() {
            break;
        }
        p = parent;
    }
    out
}

/// Runs invalidations on their own thread until the sender goes away.
pub fn spawn_invalidator(n: Notifier, rx: std::sync::mpsc::Receiver<Vec<Inval>>) {
    let _ = std::thread::Builder::new().name("kvfs-inval".into()).spawn(move || {
        for list in rx {
            invalidate(&n, list);
        }
    });
}

/// Tells the kernel; never called from inside a FUSE callback.
fn invalidate(n: &Notifier, list: Vec<Inval>) {
    for i in list {
        let r = match &i {
            Inval::Inode(ino) => n.inval_inode(INodeNo(*ino), 0, 0),
            Inval::Entry(parent, name) => n.inval_entry(INodeNo(*parent), std::ffi::OsStr::new(name)),
        };
        if let Err(e) = r {
            // ENOENT: the kernel had nothing cached.
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::debug!(error = %e, "invalidation failed");
            }
        }
    }
}
