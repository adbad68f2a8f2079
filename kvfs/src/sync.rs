//! Keeping a mount current: the initial load, the watch (resumed from a
//! cursor of its own), the re-list after compaction, the last-known-good
//! copy on disk and the status file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use kv_client::EntryInfo;
use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, Failure};
use crate::core::{node_of, Core};
use crate::tree::Node;

/// Entries per page of a load.
const PAGE: usize = 10_000;

/// Lists the whole subtree below `prefix`, with values, by pages. The
/// cursor to watch from is the *first* page's revision: a later page may
/// reflect later writes, and a change between pages must still be replayed
/// (replaying one the listing already holds changes nothing).
pub fn load(
    cluster: &dyn Cluster,
    prefix: &str,
    path_of: impl Fn(&str) -> Option<String>,
) -> Result<(u64, BTreeMap<String, Node>), Failure> {
    let mut out = BTreeMap::new();
    let mut cursor: Option<u64> = None;
    let mut after: Option<String> = None;
    loop {
        let page = cluster.list_page(prefix, after.as_deref(), PAGE)?;
        cursor = Some(cursor.map_or(page.revision, |c| c.min(page.revision)));
        for e in &page.entries {
            if let Some(p) = path_of(&e.key) {
                out.insert(p, node_of(e));
            }
        }
        match page.next_after {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    Ok((cursor.unwrap_or(0), out))
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

/// The last-known-good copy on disk.
#[derive(Serialize, Deserialize)]
struct Lkg {
    revision: u64,
    entries: Vec<EntryInfo>,
}

/// Loads a last-known-good copy.
pub fn load_lkg(
    path: &Path,
    path_of: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<(u64, BTreeMap<String, Node>)> {
    let lkg: Lkg = serde_json::from_slice(&std::fs::read(path)?)?;
    let entries = lkg.entries.iter().filter_map(|e| path_of(&e.key).map(|p| (p, node_of(e)))).collect();
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

/// The watch side of a mount.
pub struct Sync {
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
}

impl Sync {
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

    fn set_connected(&self, connected: bool) {
        self.core.connected.store(connected, Ordering::Relaxed);
        let revision = self.core.cursor();
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
        if !self.core.dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        let Some(path) = &self.lkg_file else { return };
        let Ok((revision, entries)) = self.core.remote_entries() else { return };
        let lkg = Lkg { revision, entries };
        match serde_json::to_vec(&lkg) {
            Ok(b) => {
                if let Err(e) = write_atomic(path, &b) {
                    tracing::warn!(error = %e, "cannot save the last-known-good copy");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the last-known-good copy"),
        }
        if let Ok(mut s) = self.status.lock() {
            s.revision = revision;
        }
        self.write_status();
    }

    /// Keeps the cache current, on the calling thread, until `stop` says:
    /// watches from the cursor, applies each revision whole, reconnects (to
    /// any endpoint) and lists again when the history it needs is compacted.
    pub fn run(&self, stop: &dyn Fn() -> bool) {
        while !stop() {
            let from = self.core.cursor();
            match self.core.cluster().watch(&self.prefix, from) {
                Ok(mut w) => {
                    self.set_connected(true);
                    loop {
                        match w.next() {
                            Ok(Some(b)) => self.core.apply(&b),
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
            self.set_connected(false);
            std::thread::sleep(Duration::from_millis(300));
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
