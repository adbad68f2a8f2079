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
}

/// Joins a directory path and a name.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
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

    /// Mutable access to the entry at a path.
    pub fn get_mut(&mut self, path: &str) -> Option<&mut TreeNode> {
        self.entries.get_mut(path)
    }

    /// Stores an entry.
    pub fn insert(&mut self, path: String, node: TreeNode) {
        self.entries.insert(path, node);
    }

    /// Removes an entry.
    pub fn remove(&mut self, path: &str) -> Option<TreeNode> {
        self.entries.remove(path)
    }

    /// Removes an entry this mount deleted in the cluster at `revision`.
    pub fn remove_at(&mut self, path: &str, revision: u64) -> Option<TreeNode> {
        let r = self.gone.entry(path.to_owned()).or_insert(0);
        *r = (*r).max(revision);
        self.entries.remove(path)
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
                self.entries.remove(&k);
                changed.push(k);
            }
        }
        for (k, n) in fresh {
            if self.entries.get(&k).is_some_and(|o| o.local || o.provisional) {
                continue;
            }
            if self.entries.get(&k) != Some(&n) {
                changed.push(k.clone());
                self.entries.insert(k, n);
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
