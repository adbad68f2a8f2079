//! Changes from the cluster: a whole revision applied at once, the load at
//! start and the re-list after compaction, and what the kernel must forget.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::Errno;
use kv_client::{EntryInfo, EventType, WatchEvent};

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

/// The kernel caches to drop after `path` appeared or vanished: its name
/// in its parent, the names of ancestors that may have appeared or vanished
/// with it ([`changed_names`]), and the listings of their directories.
pub(crate) fn entry_invals(s: &State, path: &str) -> Vec<Inval> {
    let mut out = Vec::new();
    for p in changed_names(s, path, true) {
        let (parent, name) = split(&p);
        if let Some(pi) = s.inodes.attached(parent) {
            out.push(Inval::Entry(pi, name.to_owned()));
            out.push(Inval::Inode(pi));
        }
    }
    out
}

/// What an event of a batch puts at `path` (`Some(None)`: nothing), or
/// `None` if it does not apply there: the mount holds a newer version, its
/// own uncommitted write, or a file created here that the delete is not of.
fn incoming(s: &State, path: &str, ev: &WatchEvent) -> Option<Option<TreeNode>> {
    if s.tree.get(path).is_some_and(|n| n.local) {
        return None;
    }
    if s.tree.has_newer(path, ev.revision) {
        // The cluster's own record of a write made here, as this mount
        // wrote it down: it brings the times the cluster gave it.
        let here = s.tree.get(path).filter(|n| !n.provisional && n.meta.mod_revision == ev.revision)?;
        let e = ev.entry.as_ref().filter(|_| ev.kind == EventType::Put)?;
        let n = node_of(e);
        return here.same_content(&n).then_some(Some(n));
    }
    match (ev.kind, &ev.entry) {
        (EventType::Put, Some(e)) => Some(Some(node_of(e))),
        (EventType::Put, None) => None,
        // A file created here and not committed yet is not the one
        // deleted elsewhere.
        _ if s.tree.get(path).is_some_and(|n| n.provisional) => None,
        _ => Some(None),
    }
}

/// A path and what it holds after a change (`None`: nothing).
type Change = (String, Option<TreeNode>);

/// How long a change from elsewhere waits for the kernel to forget the
/// names it is about to change before it is shown anyway (the watch's own
/// batches share their bound with what comes after them).
const FORGET_FIRST_WAIT: Duration = Duration::from_millis(500);

/// The names a change at `path` changes: its own and, when it appears or
/// vanishes (`climb`), those of the implied directories above it that may
/// appear or vanish with it.
fn changed_names(s: &State, path: &str, climb: bool) -> Vec<String> {
    let mut out = vec![path.to_owned()];
    if !climb {
        return out;
    }
    let mut p = path;
    loop {
        let parent = split(p).0;
        if parent.is_empty() || s.tree.get(parent).is_some() {
            break;
        }
        out.push(parent.to_owned());
        p = parent;
    }
    out
}

/// `list` without repeats, in order.
fn once(mut list: Vec<Inval>) -> Vec<Inval> {
    let mut seen = HashSet::new();
    list.retain(|i| seen.insert(i.clone()));
    list
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
                // NOTE: a file deleted elsewhere has no links for the
                // descriptors still open on it here; the kernel forgets
                // the count it had.
                let mut held = if new.is_none() { s.inodes.versions_of(path) } else { Vec::new() };
                s.inodes.detach(path, old.clone(), new.is_none());
                held.retain(|i| s.inodes.get(*i).is_some());
                out.extend(held.into_iter().map(Inval::Attrs));
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
    /// new one not there yet), nor half of a release of many files.
    pub fn apply(&self, b: &Batch) {
        let out = self.apply_batch(b, Instant::now() + FORGET_FIRST_WAIT);
        self.invalidate(out);
    }

    /// Like [`Core::apply`], and returns once the kernel has forgotten
    /// what the batch changed (or after `bound`): from then on every open
    /// on this mount reads the batch's revision or a later one, which is
    /// what the status file's revision promises.
    pub fn apply_and_show(&self, b: &Batch, bound: Duration) {
        let deadline = Instant::now() + bound;
        let out = self.apply_batch(b, deadline);
        if !out.is_empty() {
            self.inval.send_and_wait(out, deadline.saturating_duration_since(Instant::now()));
        }
    }

    /// Applies a batch to the tree (waiting until `deadline` at most for
    /// the kernel to forget first); the kernel caches to drop after.
    fn apply_batch(&self, b: &Batch, deadline: Instant) -> Vec<Inval> {
        let changes = |s: &State| -> Vec<Change> {
            b.events
                .iter()
                .filter_map(|ev| {
                    let path = self.path_of(&ev.key)?;
                    incoming(s, &path, ev).map(|n| (path, n))
                })
                .collect()
        };
        let out = self.change_settled(changes, |c| c.max(b.revision), Some(deadline));
        // NOTE: progress alone (a keepalive) moves the cursor but leaves the
        // last-known-good copy as it is: any older cursor resumes as well.
        if !b.events.is_empty() {
            self.changed();
        }
        out
    }

    /// Makes the changes `changes` finds in the state and moves the cursor
    /// (`to` gives the new one from the old). With `settle` (a deadline),
    /// in two steps: first the kernel forgets every name and attribute
    /// they change, while what it is shown of them meanwhile it may not
    /// keep ([`State::settling`]); then they are made at once. Returns the
    /// caches to drop after, all of them again: a reply that kept
    /// something in between (a SETATTR, a CREATE here), a listing a
    /// directory handle opened before filled again, a change the first
    /// step did not know of (this mount wrote meanwhile).
    ///
    /// IMPORTANT: invalidations run on several threads in no order. Sent
    /// after the change, a reader would find some names through the
    /// kernel's cache (the old version) and others through a LOOKUP (the
    /// new one): half a release. Sent before, every name the changes touch
    /// is asked of kvfs by the time they are made, and answered on one
    /// side of them.
    ///
    /// NOTE: bounded: a directory another request holds locked (a RENAME
    /// waiting for the watch to bring a version that won over its commit)
    /// keeps its names until that request ends, and the change is shown
    /// when the deadline passes. Listings are kept whole only as far as
    /// handles opened after the change go.
    fn change_settled(
        &self,
        changes: impl Fn(&State) -> Vec<Change>,
        to: impl FnOnce(u64) -> u64,
        settle: Option<Instant>,
    ) -> Vec<Inval> {
        // (one change at a time: each clears the marks it made)
        let _one = self.applying.lock();
        if let Some(deadline) = settle {
            let first = match self.state.write() {
                Ok(mut s) => {
                    let c = changes(&s);
                    Self::settle(&mut s, &c)
                }
                Err(_) => return Vec::new(),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if !first.is_empty() && !self.inval.send_and_wait(first, left) {
                tracing::warn!(
                    wait_ms = left.as_millis() as u64,
                    "the kernel took long to forget names a change from elsewhere replaces; readers may see part \
                     of it before the rest"
                );
            }
        }
        let mut out = Vec::new();
        let Ok(mut s) = self.state.write() else { return out };
        // (Found again: this mount may have written meanwhile.)
        for (path, new) in changes(&s) {
            Self::replace_entry(&mut s, &path, new, &mut out);
        }
        s.settling.clear();
        s.tree.cursor = to(s.tree.cursor);
        let c = s.tree.cursor;
        s.tree.prune_gone(c);
        drop(s);
        once(out)
    }

    /// Marks the names and attributes `changes` change as settling; the
    /// kernel caches to drop before they are made. Marked by path, whether
    /// the kernel has an inode for it yet or not.
    fn settle(s: &mut State, changes: &[Change]) -> Vec<Inval> {
        let mut out = Vec::new();
        let mut marks = Vec::new();
        for (path, new) in changes {
            let old = s.tree.get(path);
            let names = match (old, new) {
                (None, None) => continue,
                (Some(o), Some(n)) if o.same_content(n) => {
                    if o.meta != n.meta {
                        marks.push(path.clone());
                        if let Some(i) = s.inodes.attached(path) {
                            out.push(Inval::Attrs(i));
                        }
                    }
                    continue;
                }
                (Some(_), Some(_)) => changed_names(s, path, false),
                _ => changed_names(s, path, true),
            };
            // (A name that appears has nothing to forget: the kernel keeps
            // no answer of ENOENT.)
            let cached = old.is_some();
            for p in names {
                let (parent, name) = split(&p);
                if let Some(pi) = s.inodes.attached(parent) {
                    if cached {
                        out.push(Inval::Entry(pi, name.to_owned()));
                    }
                    out.push(Inval::Inode(pi));
                }
                marks.push(parent.to_owned());
                marks.push(p);
            }
        }
        s.settling.extend(marks);
        once(out)
    }

    /// Replaces everything from the cluster with a fresh listing (after the
    /// watch history was compacted, or with nothing once the token is
    /// refused), resuming the watch at `cursor`.
    pub fn relist(&self, fresh: BTreeMap<String, TreeNode>, cursor: u64) {
        self.replace_all(fresh, cursor, false);
    }

    /// [`Core::relist`]; `all` drops this mount's own recent writes too,
    /// and at once: hiding what the token may no longer read comes before
    /// showing the change whole.
    fn replace_all(&self, fresh: BTreeMap<String, TreeNode>, cursor: u64, all: bool) {
        let changes = |s: &State| -> Vec<Change> {
            // NOTE: this mount's own writes since the listing was read stay:
            // an entry it wrote after `cursor`, and a key it deleted after
            // the listing's entry was written.
            let gone = s
                .tree
                .remote_entries()
                .filter(|(p, n)| !fresh.contains_key(*p) && (all || n.meta.mod_revision <= cursor))
                .map(|(p, _)| (p.clone(), None));
            // (the listing's copy of a version this mount wrote, with the
            // cluster's own attributes, is taken: see `incoming`)
            let put = fresh
                .iter()
                .filter(|(p, n)| {
                    let here = s.tree.get(p);
                    let own = here.is_some_and(|o| o.meta.mod_revision == n.meta.mod_revision && o.same_content(n));
                    !(here.is_some_and(|o| o.local || o.provisional || o == *n)
                        || (s.tree.has_newer(p, n.meta.mod_revision) && !own))
                })
                .map(|(p, n)| (p.clone(), Some(n.clone())));
            gone.chain(put).collect()
        };
        let settle = (!all).then(|| Instant::now() + FORGET_FIRST_WAIT);
        let out = self.change_settled(changes, |_| cursor, settle);
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
