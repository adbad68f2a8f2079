//! Changes from the cluster: a whole revision applied at once, the load at
//! start and the re-list after compaction, and what the kernel must forget.

use std::collections::BTreeMap;
use std::sync::Arc;

use fuser::Errno;
use kv_client::{EntryInfo, EventType};

use super::{Core, Inval, State};
use crate::cluster::Batch;
use crate::tree::{split, TreeNode};

/// A cache node from a wire entry.
pub fn node_of(e: &EntryInfo) -> TreeNode {
    TreeNode {
        meta: e.meta.clone(),
        value: Arc::new(e.value_bytes().unwrap_or_default()),
        local: false,
        provisional: false,
    }
}

/// The names to forget after `path` appeared or vanished: its name in its
/// parent, and the names of ancestors that appeared or vanished with it.
pub(crate) fn entry_invals(s: &State, path: &str) -> Vec<Inval> {
    let mut out = Vec::new();
    let mut p = path;
    loop {
        let (parent, name) = split(p);
        if let Some(pi) = s.inodes.attached(parent) {
            out.push(Inval::Entry(pi, name.to_owned()));
            out.push(Inval::Inode(pi));
        }
        if parent.is_empty() || s.tree.get(parent).is_some() {
            break;
        }
        p = parent;
    }
    out
}

impl Core {
    /// Puts `new` (or nothing) at `path` for a change from elsewhere: an
    /// inode whose content changes or goes is detached with the version it
    /// had; one whose attributes change is told to the kernel.
    fn replace_entry(s: &mut State, path: &str, new: Option<TreeNode>, out: &mut Vec<Inval>) {
        let old = s.tree.get(path).cloned();
        match (&old, &new) {
            (Some(o), Some(n)) if o.same_content(n) => {
                if o.meta != n.meta {
                    if let Some(i) = s.inodes.attached(path) {
                        out.push(Inval::Attrs(i));
                    }
                }
            }
            (None, None) => return,
            _ => {
                s.inodes.detach(path, old.clone(), new.is_none());
            }
        }
        let appeared_or_changed = match new {
            Some(n) => {
                let changed = old.as_ref().is_none_or(|o| !o.same_content(&n));
                s.tree.insert(path.to_owned(), n);
                changed
            }
            None => {
                s.tree.remove(path);
                true
            }
        };
        if appeared_or_changed {
            out.extend(entry_invals(s, path));
        }
    }

    /// Applies every change of one revision at once, so a reader never sees
    /// half of a transaction (a rename elsewhere: the old name gone and the
    /// new one not there yet).
    pub fn apply(&self, b: &Batch) {
        let out = self.apply_batch(b);
        self.invalidate(out);
    }

    /// Like [`Core::apply`], and returns once the kernel has forgotten
    /// what the batch changed (or after `bound`): from then on every open
    /// on this mount reads the batch's revision or a later one, which is
    /// what the status file's revision promises.
    pub fn apply_and_show(&self, b: &Batch, bound: std::time::Duration) {
        let out = self.apply_batch(b);
        if !out.is_empty() {
            self.inval.send_and_wait(out, bound);
        }
    }

    /// Applies a batch to the tree; the kernel caches to drop.
    fn apply_batch(&self, b: &Batch) -> Vec<Inval> {
        let mut out = Vec::new();
        let Ok(mut s) = self.state.write() else { return out };
        for ev in &b.events {
            let Some(path) = self.path_of(&ev.key) else { continue };
            if s.tree.has_newer(&path, ev.revision) || s.tree.get(&path).is_some_and(|n| n.local) {
                continue;
            }
            let new = match (ev.kind, &ev.entry) {
                (EventType::Put, Some(e)) => Some(node_of(e)),
                (EventType::Put, None) => continue,
                // A file created here and not committed yet is not the one
                // deleted elsewhere.
                _ if s.tree.get(&path).is_some_and(|n| n.provisional) => continue,
                _ => None,
            };
            Self::replace_entry(&mut s, &path, new, &mut out);
        }
        s.tree.cursor = s.tree.cursor.max(b.revision);
        let c = s.tree.cursor;
        s.tree.prune_gone(c);
        drop(s);
        // NOTE: progress alone (a keepalive) moves the cursor but leaves the
        // last-known-good copy as it is: any older cursor resumes as well.
        if !b.events.is_empty() {
            self.changed();
        }
        out
    }

    /// Replaces everything from the cluster with a fresh listing (after the
    /// watch history was compacted, or with nothing once the token is
    /// refused), resuming the watch at `cursor`.
    pub fn relist(&self, fresh: BTreeMap<String, TreeNode>, cursor: u64) {
        self.replace_all(fresh, cursor, false);
    }

    /// [`Core::relist`]; `all` drops this mount's own recent writes too.
    fn replace_all(&self, fresh: BTreeMap<String, TreeNode>, cursor: u64, all: bool) {
        let mut out = Vec::new();
        let Ok(mut s) = self.state.write() else { return };
        // NOTE: this mount's own writes since the listing was read stay: an
        // entry it wrote after `cursor`, and a key it deleted after the
        // listing's entry was written.
        let gone: Vec<String> = s
            .tree
            .remote_entries()
            .filter(|(p, n)| !fresh.contains_key(*p) && (all || n.meta.mod_revision <= cursor))
            .map(|(p, _)| p.clone())
            .collect();
        for p in gone {
            Self::replace_entry(&mut s, &p, None, &mut out);
        }
        for (p, n) in fresh {
            if s.tree.get(&p).is_some_and(|o| o.local || o.provisional || *o == n)
                || s.tree.has_newer(&p, n.meta.mod_revision)
            {
                continue;
            }
            Self::replace_entry(&mut s, &p, Some(n), &mut out);
        }
        s.tree.cursor = cursor;
        s.tree.prune_gone(cursor);
        drop(s);
        self.changed();
        self.invalidate(out);
    }

    /// The cluster refused the token (revoked, expired): forget everything
    /// it showed, so the mount answers `EACCES` instead of serving what the
    /// token may no longer read, here or from the last-known-good copy.
    pub fn locked_out(&self) {
        let first = self.grants.write().map(|mut g| g.replace(kv_client::Grants::default())).ok().flatten();
        if first != Some(kv_client::Grants::default()) {
            tracing::error!("the cluster refuses this mount's token; hiding the cached keys");
        }
        let cursor = self.cursor();
        self.replace_all(BTreeMap::new(), cursor, true);
    }

    /// Where the watch resumes.
    pub fn cursor(&self) -> u64 {
        self.state.read().map(|s| s.tree.cursor).unwrap_or(0)
    }

    /// Every entry that came from the cluster, as wire entries (the
    /// last-known-good copy), with the cursor.
    pub fn remote_entries(&self) -> Result<(u64, Vec<EntryInfo>), Errno> {
        let s = self.state()?;
        let entries =
            s.tree.remote_entries().map(|(p, n)| EntryInfo::new(self.key(p), n.meta.clone(), Some(&n.value))).collect();
        Ok((s.tree.cursor, entries))
    }
}

/// A tree holding a loaded listing, the watch to resume at `cursor`.
pub fn loaded(entries: BTreeMap<String, TreeNode>, cursor: u64) -> State {
    let mut s = State::default();
    for (p, n) in entries {
        s.tree.insert(p, n);
    }
    s.tree.cursor = cursor;
    s
}
