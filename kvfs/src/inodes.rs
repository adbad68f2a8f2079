//! The inode table: which inode a path is, and what an inode the kernel
//! still holds shows once its path moved on. Plain data, no I/O.
//!
//! IMPORTANT: an inode's content never changes. When a file's content
//! changes (a write here or elsewhere), or the file is deleted or renamed
//! over, its inode is *detached*: it keeps the version it had (a frozen
//! copy) for the programs that hold it open and for the kernel's page
//! cache, and the path gets a new inode at its next lookup. This is how
//! `rename(2)` over a file behaves on a local filesystem, and it is what
//! keeps a reader of one version from ever seeing bytes of another, by
//! `read`, by `mmap` or through the page cache.
//!
//! A detached inode whose name still exists (`gone: false`) still stands
//! for "the file at that name" to the programs that hold it: their writes,
//! chmods and renames here go to the name.

use std::collections::{HashMap, HashSet};

use crate::tree::TreeNode;

/// Inode number of the mount's root.
pub const ROOT: u64 = 1;

/// What an inode stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// The current entry at a path (looked up in the tree).
    Attached,
    /// A version the path no longer has: the entry as it was. `gone` when
    /// the path itself was deleted or replaced by a rename (a write through
    /// such an inode goes nowhere); otherwise writes still go to the path.
    Detached {
        /// The entry as it was when detached (`None`: an implied directory).
        node: Option<TreeNode>,
        /// The path no longer names this file.
        gone: bool,
    },
}

/// One inode.
#[derive(Debug, Clone)]
pub struct Inode {
    /// The path it has (or last had).
    pub path: String,
    /// Attached to the path, or a frozen version.
    pub binding: Binding,
    /// How many lookups the kernel holds (FORGET gives them back).
    pub nlookup: u64,
}

/// Inode numbers by path and paths by inode number.
#[derive(Debug)]
pub struct Inodes {
    by_ino: HashMap<u64, Inode>,
    attached: HashMap<String, u64>,
    /// Detached inodes whose name still exists.
    live: HashSet<u64>,
    next: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        Inodes::new()
    }
}

impl Inodes {
    /// A table holding only the root.
    pub fn new() -> Inodes {
        let mut by_ino = HashMap::new();
        by_ino.insert(ROOT, Inode { path: String::new(), binding: Binding::Attached, nlookup: 1 });
        let mut attached = HashMap::new();
        attached.insert(String::new(), ROOT);
        Inodes { by_ino, attached, live: HashSet::new(), next: ROOT + 1 }
    }

    /// The inode attached to `path`, attaching a new one if it has none.
    pub fn attach(&mut self, path: &str) -> u64 {
        if let Some(i) = self.attached.get(path) {
            return *i;
        }
        let i = self.next;
        self.next += 1;
        self.by_ino.insert(i, Inode { path: path.to_owned(), binding: Binding::Attached, nlookup: 0 });
        self.attached.insert(path.to_owned(), i);
        i
    }

    /// The inode attached to `path`, if any.
    pub fn attached(&self, path: &str) -> Option<u64> {
        self.attached.get(path).copied()
    }

    /// An inode by number.
    pub fn get(&self, ino: u64) -> Option<&Inode> {
        self.by_ino.get(&ino)
    }

    /// Counts one lookup the kernel now holds.
    pub fn looked_up(&mut self, ino: u64) {
        if let Some(i) = self.by_ino.get_mut(&ino) {
            i.nlookup += 1;
        }
    }

    /// The kernel gave back `n` lookups; a detached inode nobody holds is
    /// dropped (attached ones stay: their path still names them).
    pub fn forget(&mut self, ino: u64, n: u64) {
        let Some(i) = self.by_ino.get_mut(&ino) else { return };
        i.nlookup = i.nlookup.saturating_sub(n);
        if i.nlookup == 0 && i.binding != Binding::Attached {
            self.by_ino.remove(&ino);
            self.live.remove(&ino);
        }
    }

    /// Detaches the inode of `path` (if it has one), keeping `node` as what
    /// it shows from now on; with `gone`, the name no longer exists, for it
    /// and for every older version of it. Returns the inode.
    pub fn detach(&mut self, path: &str, node: Option<TreeNode>, gone: bool) -> Option<u64> {
        if gone {
            self.mark_gone(path);
        }
        let ino = self.attached.remove(path)?;
        if ino == ROOT {
            self.attached.insert(String::new(), ROOT);
            return None;
        }
        if let Some(i) = self.by_ino.get_mut(&ino) {
            i.binding = Binding::Detached { node, gone };
            if i.nlookup == 0 {
                self.by_ino.remove(&ino);
            } else if !gone {
                self.live.insert(ino);
            }
        }
        Some(ino)
    }

    /// The name `path` no longer exists: its older versions held open stop
    /// standing for it.
    fn mark_gone(&mut self, path: &str) {
        let gone: Vec<u64> =
            self.live.iter().copied().filter(|i| self.by_ino.get(i).is_some_and(|i| i.path == path)).collect();
        for ino in gone {
            self.live.remove(&ino);
            if let Some(Inode { binding: Binding::Detached { gone, .. }, .. }) = self.by_ino.get_mut(&ino) {
                *gone = true;
            }
        }
    }

    /// Attaches `ino` to `path` again (or for the first time there), unless
    /// another inode is attached to it: for this mount's own change, when
    /// the watch brought the same change first and detached the inode of
    /// the file this mount changed.
    pub fn reattach(&mut self, ino: u64, path: &str) {
        if self.attached.get(path).is_some_and(|i| *i != ino) {
            return;
        }
        let Some(i) = self.by_ino.get_mut(&ino) else { return };
        if let Some(old) = self.attached.get(&i.path).filter(|a| **a == ino && i.path != path) {
            let _ = old;
            self.attached.remove(&i.path);
        }
        i.binding = Binding::Attached;
        i.path = path.to_owned();
        self.live.remove(&ino);
        self.attached.insert(path.to_owned(), ino);
    }

    /// Paths at or below `root` that have an attached inode.
    pub fn attached_under(&self, root: &str) -> Vec<String> {
        let dir = format!("{root}/");
        self.attached.keys().filter(|p| *p == root || root.is_empty() || p.starts_with(&dir)).cloned().collect()
    }

    /// The inodes that stand for files at or below `root`: attached ones
    /// and older versions held open, with their paths.
    pub fn versions_under(&self, root: &str) -> Vec<(String, u64)> {
        let dir = format!("{root}/");
        let under = |p: &str| p == root || root.is_empty() || p.starts_with(&dir);
        let mut v: Vec<(String, u64)> =
            self.attached.iter().filter(|(p, _)| under(p)).map(|(p, i)| (p.clone(), *i)).collect();
        v.extend(
            self.live
                .iter()
                .filter_map(|i| self.by_ino.get(i).filter(|n| under(&n.path)).map(|n| (n.path.clone(), *i))),
        );
        v
    }

    /// The inodes that stand for the file at `path`: its attached one and
    /// older versions held open.
    pub fn versions_of(&self, path: &str) -> Vec<u64> {
        // NOTE: a lookup, not a scan of every attached path: the watch asks
        // for each path a change deletes.
        let mut v: Vec<u64> = self.attached.get(path).copied().into_iter().collect();
        v.extend(self.live.iter().copied().filter(|i| self.by_ino.get(i).is_some_and(|n| n.path == path)));
        v
    }

    /// Moves the inodes of `from` and everything below it to `to` (a rename
    /// here: open files follow their name, older versions held open too).
    pub fn rename(&mut self, from: &str, to: &str) {
        let dir = format!("{from}/");
        let moved = |p: &str| format!("{to}{}", &p[from.len()..]);
        for p in self.attached_under(from) {
            if let Some(i) = self.attached.remove(&p) {
                if let Some(inode) = self.by_ino.get_mut(&i) {
                    inode.path = moved(&p);
                }
                self.attached.insert(moved(&p), i);
            }
        }
        for i in &self.live {
            if let Some(inode) = self.by_ino.get_mut(i) {
                if inode.path == from || inode.path.starts_with(&dir) {
                    inode.path = moved(&inode.path);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detached_inode_keeps_its_version_until_the_kernel_forgets_it() {
        let mut t = Inodes::new();
        let a = t.attach("f");
        t.looked_up(a);
        assert_eq!(t.attach("f"), a, "one inode per path while attached");
        assert_eq!(t.detach("f", None, false), Some(a));
        let b = t.attach("f");
        assert_ne!(a, b, "the path gets a new inode once its old one is detached");
        assert_eq!(t.get(a).map(|i| i.path.as_str()), Some("f"));
        assert!(matches!(t.get(a).map(|i| &i.binding), Some(Binding::Detached { gone: false, .. })));
        t.forget(a, 1);
        assert!(t.get(a).is_none(), "dropped once forgotten");
        t.forget(b, 5);
        assert!(t.get(b).is_some(), "an attached inode stays");
    }

    #[test]
    fn a_detached_inode_nobody_looked_up_is_dropped_at_once() {
        let mut t = Inodes::new();
        let a = t.attach("f");
        t.detach("f", None, true);
        assert!(t.get(a).is_none());
        assert_eq!(t.detach("", None, true), None, "the root stays attached");
        assert_eq!(t.attached(""), Some(ROOT));
    }

    #[test]
    fn an_own_change_the_watch_applied_first_gets_its_inode_back() {
        let mut t = Inodes::new();
        let a = t.attach("tmp");
        t.looked_up(a);
        t.detach("tmp", None, false);
        t.reattach(a, "f");
        assert_eq!(t.attached("f"), Some(a));
        assert_eq!(t.get(a).map(|i| (i.path.as_str(), &i.binding)), Some(("f", &Binding::Attached)));
        let b = t.attach("g");
        t.reattach(a, "g");
        assert_eq!(t.attached("g"), Some(b), "another inode attached meanwhile keeps the name");
        assert_eq!(t.attached("f"), Some(a));
    }

    #[test]
    fn a_rename_moves_the_inodes_of_a_subtree() {
        let mut t = Inodes::new();
        let d = t.attach("d");
        let f = t.attach("d/f");
        let other = t.attach("dx");
        t.rename("d", "e");
        assert_eq!((t.attached("e"), t.attached("e/f")), (Some(d), Some(f)));
        assert_eq!(t.get(f).map(|i| i.path.as_str()), Some("e/f"));
        assert_eq!(t.attached("dx"), Some(other), "a sibling sharing the name's start stays");
        assert_eq!(t.attached("d"), None);
        // An older version held open follows its name, until the name goes.
        let old = t.attach("v");
        t.looked_up(old);
        t.detach("v", None, false);
        t.rename("v", "w");
        assert_eq!(t.get(old).map(|i| i.path.as_str()), Some("w"));
        t.detach("w", None, true);
        assert!(matches!(t.get(old).map(|i| &i.binding), Some(Binding::Detached { gone: true, .. })));
    }
}
