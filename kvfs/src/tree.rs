//! The cached subtree: entries by path (relative to the mount's prefix),
//! local scratch files, and what the watch has seen. Plain data, no I/O.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kv_client::{Kind, Meta};

/// One cached entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeNode {
    /// Metadata as the cluster (or this mount, for its own writes) knows it.
    pub meta: Meta,
    /// File content or link target.
    pub value: Arc<Vec<u8>>,
    /// Lives only in this mount (editor scratch files); never sent.
    pub local: bool,
    /// Created here and not committed yet.
    pub provisional: bool,
}

impl TreeNode {
    /// Whether two entries hold the same bytes (attributes aside).
    pub fn same_content(&self, other: &TreeNode) -> bool {
        self.meta.kind == other.meta.kind && (Arc::ptr_eq(&self.value, &other.value) || self.value == other.value)
    }
}

/// The tree of one mount.
#[derive(Debug, Default)]
pub struct Tree {
    entries: BTreeMap<String, TreeNode>,
    /// IMPORTANT: where the watch resumes: every event up to here has been
    /// applied. Only the watch (and a load or re-list) moves it; this
    /// mount's own writes do not, or the watch would skip what others wrote
    /// in between.
    pub cursor: u64,
    /// Paths this mount deleted, with the revision of the delete: a put
    /// event at or before it, still on its way through the watch, must not
    /// bring the entry back.
    gone: HashMap<String, u64>,
    /// How many entries lie below each directory path that has any.
    below: HashMap<String, usize>,
    /// How many directories each directory path holds (its link count is
    /// two more), where it holds any.
    subdirs: HashMap<String, u32>,
}

/// Joins a directory path and a name.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// The directories a path lies in, from the root (`""`) down to its
/// parent.
fn ancestors(path: &str) -> impl DoubleEndedIterator<Item = &str> {
    let inner = path.match_indices('/').map(|(i, _)| &path[..i]);
    std::iter::once("").filter(move |_| !path.is_empty()).chain(inner)
}

/// The parent directory and the name of a path.
pub fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Tree {
        Tree::default()
    }

    /// The entry stored at a path.
    pub fn get(&self, path: &str) -> Option<&TreeNode> {
        self.entries.get(path)
    }

    /// Mutable access to the entry at a path (not to its kind, which the
    /// count of directories follows: change that by [`Tree::insert`]).
    pub fn get_mut(&mut self, path: &str) -> Option<&mut TreeNode> {
        self.entries.get_mut(path)
    }

    /// Stores an entry.
    pub fn insert(&mut self, path: String, node: TreeNode) {
        // NOTE: a new version of an entry of the same kind (most inserts)
        // changes no directory.
        if let Some(o) = self.entries.get_mut(&path).filter(|o| o.meta.kind == node.meta.kind) {
            *o = node;
            return;
        }
        let before = self.dirs_at(&path);
        let counted = path.clone();
        if self.entries.insert(path, node).is_none() {
            for a in ancestors(&counted) {
                *self.below.entry(a.to_owned()).or_insert(0) += 1;
            }
        }
        self.count_dirs(&counted, before);
    }

    /// Removes an entry.
    pub fn remove(&mut self, path: &str) -> Option<TreeNode> {
        let before = self.dirs_at(path);
        let old = self.entries.remove(path);
        if old.is_some() {
            for a in ancestors(path) {
                if let Some(n) = self.below.get_mut(a) {
                    *n -= 1;
                    if *n == 0 {
                        self.below.remove(a);
                    }
                }
            }
        }
        self.count_dirs(path, before);
        old
    }

    /// Removes an entry this mount deleted in the cluster at `revision`.
    pub fn remove_at(&mut self, path: &str, revision: u64) -> Option<TreeNode> {
        let r = self.gone.entry(path.to_owned()).or_insert(0);
        *r = (*r).max(revision);
        self.remove(path)
    }

    /// Whether `path` is a directory: an entry of that kind, or a path
    /// with no entry and keys below it (the root always).
    fn is_dir(&self, path: &str) -> bool {
        match self.entries.get(path) {
            Some(n) => n.meta.kind == Kind::Dir,
            None => path.is_empty() || self.below.contains_key(path),
        }
    }

    /// Which of `path` and its ancestors are directories, nearest first.
    fn dirs_at(&self, path: &str) -> Vec<bool> {
        std::iter::once(path).chain(ancestors(path).rev()).map(|p| self.is_dir(p)).collect()
    }

    /// Counts the directories that appeared or vanished at `path` or above
    /// it in their parents, `before` being [`Tree::dirs_at`] before the
    /// change.
    fn count_dirs(&mut self, path: &str, before: Vec<bool>) {
        let paths: Vec<&str> = std::iter::once(path).chain(ancestors(path).rev()).collect();
        for (p, was) in paths.into_iter().zip(before) {
            let is = self.is_dir(p);
            if is == was || p.is_empty() {
                continue;
            }
            let parent = split(p).0.to_owned();
            if is {
                *self.subdirs.entry(parent).or_insert(0) += 1;
            } else if let Some(n) = self.subdirs.get_mut(&parent) {
                *n -= 1;
                if *n == 0 {
                    self.subdirs.remove(&parent);
                }
            }
        }
    }

    /// The link count of a directory: its `.`, its name in its parent and
    /// each directory's `..` in it.
    pub fn dir_links(&self, dir: &str) -> u32 {
        2 + self.subdirs.get(dir).copied().unwrap_or(0)
    }

    /// Whether a change of `path` at `revision` is old news: the watch has
    /// applied everything up to it (this change, and any later one), the
    /// entry here is as new or newer, or this mount deleted it at or after
    /// `revision`.
    pub fn knows_newer(&self, path: &str, revision: u64) -> bool {
        revision <= self.cursor || self.has_newer(path, revision)
    }

    /// Whether the entry here is as new as `revision` or newer, or this
    /// mount deleted it at or after `revision`.
    pub fn has_newer(&self, path: &str, revision: u64) -> bool {
        self.gone.get(path).is_some_and(|r| revision <= *r)
            || self.entries.get(path).is_some_and(|n| !n.local && !n.provisional && n.meta.mod_revision >= revision)
    }

    /// Forgets deletes that every event up to `revision` has been seen past.
    pub fn prune_gone(&mut self, revision: u64) {
        if !self.gone.is_empty() {
            self.gone.retain(|_, r| *r > revision);
        }
    }

    /// Whether anything lies below `dir`.
    pub fn has_children(&self, dir: &str) -> bool {
        let base = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        self.entries.range(base.clone()..).next().is_some_and(|(k, _)| k.starts_with(&base) && *k != base)
    }

    /// What a path is: an entry's kind, or a directory when keys lie below
    /// it (or it is the root).
    pub fn kind(&self, path: &str) -> Option<Kind> {
        if path.is_empty() {
            return Some(Kind::Dir);
        }
        match self.entries.get(path) {
            Some(n) => Some(n.meta.kind),
            None if self.has_children(path) => Some(Kind::Dir),
            None => None,
        }
    }

    /// Direct children of a directory: names and kinds, in name order.
    pub fn children(&self, dir: &str) -> Vec<(String, Kind)> {
        let base = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        let mut out: BTreeMap<String, Kind> = BTreeMap::new();
        for (k, n) in self.entries.range(base.clone()..) {
            let Some(rest) = k.strip_prefix(&base) else { break };
            match rest.split_once('/') {
                None => {
                    out.insert(rest.to_owned(), n.meta.kind);
                }
                Some((name, _)) => {
                    out.entry(name.to_owned()).or_insert(Kind::Dir);
                }
            }
        }
        out.into_iter().collect()
    }

    /// The entry at `path` and every entry below it.
    pub fn subtree(&self, path: &str) -> Vec<(String, TreeNode)> {
        let base = format!("{path}/");
        let mut out: Vec<(String, TreeNode)> =
            self.entries.get(path).map(|n| (path.to_owned(), n.clone())).into_iter().collect();
        out.extend(
            self.entries
                .range(base.clone()..)
                .take_while(|(k, _)| k.starts_with(&base))
                .map(|(k, n)| (k.clone(), n.clone())),
        );
        out
    }

    /// Every entry that came from the cluster (for the last-known-good copy).
    pub fn remote_entries(&self) -> impl Iterator<Item = (&String, &TreeNode)> {
        self.entries.iter().filter(|(_, n)| !n.local && !n.provisional)
    }

    /// Replaces every entry that came from the cluster with `fresh`, keeping
    /// local and provisional ones. Returns the paths that changed.
    pub fn replace_remote(&mut self, fresh: BTreeMap<String, TreeNode>) -> Vec<String> {
        let mut changed = Vec::new();
        let old: Vec<String> = self.remote_entries().map(|(k, _)| k.clone()).collect();
        for k in old {
            if !fresh.contains_key(&k) {
                self.remove(&k);
                changed.push(k);
            }
        }
        for (k, n) in fresh {
            if self.entries.get(&k).is_some_and(|o| o.local || o.provisional) {
                continue;
            }
            if self.entries.get(&k) != Some(&n) {
                changed.push(k.clone());
                self.insert(k, n);
            }
        }
        changed
    }
}

/// Matches a file name against a glob with `*` and `?`.
pub fn glob_match(glob: &str, name: &str) -> bool {
    fn go(g: &[u8], n: &[u8]) -> bool {
        match (g.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&g[1..], n) || (!n.is_empty() && go(g, &n[1..])),
            (Some(b'?'), Some(_)) => go(&g[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&g[1..], &n[1..]),
            _ => false,
        }
    }
    go(glob.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(kind: Kind, v: &str) -> TreeNode {
        TreeNode {
            meta: Meta {
                kind,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime_ns: 0,
                create_revision: 1,
                mod_revision: 1,
                version: 1,
                size: v.len() as u64,
                atime_ns: None,
                ctime_ns: None,
            },
            value: Arc::new(v.as_bytes().to_vec()),
            local: false,
            provisional: false,
        }
    }

    #[test]
    fn directories_are_implied_by_keys_below() {
        let mut t = Tree::new();
        t.insert("a/b/c".into(), node(Kind::File, "x"));
        t.insert("a.txt".into(), node(Kind::File, "y"));
        t.insert("e".into(), node(Kind::Dir, ""));
        assert_eq!(t.kind("a"), Some(Kind::Dir));
        assert_eq!(t.kind("a/b"), Some(Kind::Dir));
        assert_eq!(t.kind("a/b/c"), Some(Kind::File));
        assert_eq!(t.kind("b"), None);
        assert_eq!(
            t.children(""),
            vec![("a".into(), Kind::Dir), ("a.txt".into(), Kind::File), ("e".into(), Kind::Dir)]
        );
        assert!(t.has_children("a") && !t.has_children("e") && !t.has_children("a.txt"));
        assert_eq!(t.subtree("a").len(), 1);
    }

    #[test]
    fn a_directory_counts_the_directories_in_it() {
        let mut t = Tree::new();
        assert_eq!(t.dir_links(""), 2);
        t.insert("a/b/c".into(), node(Kind::File, "x"));
        assert_eq!((t.dir_links(""), t.dir_links("a"), t.dir_links("a/b")), (3, 3, 2), "implied a and a/b");
        t.insert("a/d".into(), node(Kind::Dir, ""));
        t.insert("a/e".into(), node(Kind::File, ""));
        assert_eq!(t.dir_links("a"), 4, "b (implied) and d (explicit), not the file e");
        t.insert("a/d/x".into(), node(Kind::File, ""));
        t.remove("a/d/x");
        assert_eq!(t.dir_links("a"), 4, "an explicit directory stays when its last entry goes");
        t.insert("a/b".into(), node(Kind::Dir, ""));
        assert_eq!(t.dir_links("a"), 4, "an implied directory made explicit is still one");
        t.remove("a/b/c");
        t.remove("a/b");
        assert_eq!((t.dir_links("a"), t.dir_links("")), (3, 3));
        t.insert("a/d".into(), node(Kind::File, ""));
        assert_eq!(t.dir_links("a"), 2, "a directory replaced by a file");
        t.remove("a/d");
        t.remove("a/e");
        assert_eq!(t.dir_links(""), 2, "a went with its last key");
        let mut fresh = BTreeMap::new();
        fresh.insert("p/q/r".to_owned(), node(Kind::File, "1"));
        t.replace_remote(fresh);
        assert_eq!((t.dir_links(""), t.dir_links("p")), (3, 3));
    }

    #[test]
    fn replacing_remote_state_keeps_local_files_and_reports_changes() {
        let mut t = Tree::new();
        t.insert("keep".into(), node(Kind::File, "1"));
        t.insert("gone".into(), node(Kind::File, "1"));
        let mut local = node(Kind::File, "swap");
        local.local = true;
        t.insert(".f.swp".into(), local);
        let mut fresh = BTreeMap::new();
        fresh.insert("keep".to_owned(), node(Kind::File, "1"));
        fresh.insert("new".to_owned(), node(Kind::File, "2"));
        let mut changed = t.replace_remote(fresh);
        changed.sort();
        assert_eq!(changed, vec!["gone".to_owned(), "new".to_owned()]);
        assert!(t.get(".f.swp").is_some());
    }

    #[test]
    fn globs_match_editor_scratch_names() {
        for (g, n) in [(".*.sw?", ".config.yaml.swp"), ("4913", "4913"), ("*~", "config~"), ("a*b?c", "aXXbYc")] {
            assert!(glob_match(g, n), "{g} {n}");
        }
        for (g, n) in [(".*.sw?", "config.swp"), ("*~", "config"), ("4913", "49130")] {
            assert!(!glob_match(g, n), "{g} {n}");
        }
    }
}
