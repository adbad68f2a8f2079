//! What an apply changes: the plan that makes a prefix equal to a local
//! tree, and its unified diff for people. Pure data, no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use kv_client::Kind;

/// One entry of a tree as kv stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// File, dir, symlink, FIFO, socket or device.
    pub kind: Kind,
    /// Permission bits (ignored for symlinks).
    pub mode: u32,
    /// Owner and group; `None` when they are not compared (no `--owners`).
    pub owner: Option<(u32, u32)>,
    /// File content, link target or device number; empty for a dir,
    /// FIFO or socket.
    pub value: Vec<u8>,
}

impl Node {
    /// `file 0644`, `dir 0755`, `symlink -> target`, `char 1:3 0644`.
    pub fn describe(&self) -> String {
        let owner = self.owner.map(|(u, g)| format!(" {u}:{g}")).unwrap_or_default();
        match self.kind {
            Kind::Symlink => format!("symlink -> {}{owner}", String::from_utf8_lossy(&self.value)),
            k if k.is_device() => {
                format!("{} {} {:04o}{owner}", k.as_str(), String::from_utf8_lossy(&self.value), self.mode)
            }
            k => format!("{} {:04o}{owner}", k.as_str(), self.mode),
        }
    }

    /// Whether `self` (what the cluster holds) already is `want`.
    fn same_as(&self, want: &Node) -> bool {
        self.kind == want.kind
            && self.value == want.value
            && (self.kind == Kind::Symlink || self.mode & 0o7777 == want.mode & 0o7777)
            && want.owner.is_none_or(|o| self.owner == Some(o))
    }
}

/// A tree by path relative to its root (`a/b.conf`).
pub type Tree = BTreeMap<String, Node>;

/// A local directory tree to publish.
#[derive(Debug, Default)]
pub struct Local {
    /// Every file, symlink and directory.
    pub tree: Tree,
    /// Directories that an implied directory shows as they are (not empty,
    /// mode 0755, and root-owned when owners count): they need no entry.
    pub plain_dirs: BTreeSet<String>,
}

/// An entry the cluster holds, with the revision it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The entry.
    pub node: Node,
    /// Its mod_revision when listed.
    pub mod_revision: u64,
}

/// What an apply does, by relative path.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// New entries.
    pub added: Vec<(String, Node)>,
    /// Entries rewritten: what is held, what it becomes.
    pub changed: Vec<(String, Held, Node)>,
    /// Entries deleted (`--prune`).
    pub removed: Vec<(String, Held)>,
    /// Entries that stay as they are.
    pub unchanged: usize,
    /// Entries under the prefix the tree lacks, kept (no `--prune`).
    pub kept: usize,
}

impl Plan {
    /// Whether the apply writes nothing.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// The plan that makes `held` equal to `local` (or, without `prune`, a
/// superset of it).
pub fn plan(local: &Local, held: &BTreeMap<String, Held>, prune: bool) -> Plan {
    let mut p = Plan::default();
    for (path, want) in &local.tree {
        match held.get(path) {
            Some(h) if h.node.same_as(want) => p.unchanged += 1,
            Some(h) => p.changed.push((path.clone(), h.clone(), want.clone())),
            None if local.plain_dirs.contains(path) => {}
            None => p.added.push((path.clone(), want.clone())),
        }
    }
    for (path, h) in held {
        if !local.tree.contains_key(path) {
            if prune {
                p.removed.push((path.clone(), h.clone()));
            } else {
                p.kept += 1;
            }
        }
    }
    p
}

/// The tree the cluster holds after `plan` runs over `held`.
pub fn result(held: &BTreeMap<String, Held>, plan: &Plan) -> Tree {
    let mut t: Tree = held.iter().map(|(k, h)| (k.clone(), h.node.clone())).collect();
    for (k, _) in &plan.removed {
        t.remove(k);
    }
    for (k, n) in plan.added.iter().map(|(k, n)| (k, n)).chain(plan.changed.iter().map(|(k, _, n)| (k, n))) {
        t.insert(k.clone(), n.clone());
    }
    t
}

/// The plan for people: one line per change, then a unified diff of each
/// text content that changes (binary ones as "differ"); keys are shown
/// under `prefix`.
pub fn render(plan: &Plan, prefix: &str) -> String {
    let key = |p: &str| if prefix.is_empty() { p.to_owned() } else { format!("{prefix}/{p}") };
    let mut out = String::new();
    for (p, n) in &plan.added {
        let _ = writeln!(out, "added    {}  ({})", key(p), n.describe());
    }
    for (p, h, n) in &plan.changed {
        let _ = writeln!(out, "changed  {}  ({} -> {})", key(p), h.node.describe(), n.describe());
    }
    for (p, h) in &plan.removed {
        let _ = writeln!(out, "removed  {}  ({})", key(p), h.node.describe());
    }
    fn file(n: &Node) -> Option<&[u8]> {
        (n.kind == Kind::File).then_some(n.value.as_slice())
    }
    // Key, content before, content after.
    type Contents<'a> = (String, Option<&'a [u8]>, Option<&'a [u8]>);
    let mut contents: Vec<Contents> = Vec::new();
    contents.extend(plan.added.iter().filter_map(|(p, n)| file(n).map(|v| (key(p), None, Some(v)))));
    contents.extend(plan.changed.iter().filter_map(|(p, h, n)| {
        let (old, new) = (file(&h.node), file(n));
        (old != new && (old.is_some() || new.is_some())).then(|| (key(p), old, new))
    }));
    contents.extend(plan.removed.iter().filter_map(|(p, h)| file(&h.node).map(|v| (key(p), Some(v), None))));
    contents.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, old, new) in contents {
        out.push_str(&unified(&k, old, new));
    }
    out
}

/// Whether bytes are shown as text: UTF-8 without NUL.
fn is_text(b: &[u8]) -> bool {
    !b.contains(&0) && std::str::from_utf8(b).is_ok()
}

/// Context lines around each change in a hunk.
const CONTEXT: usize = 3;
/// Largest table the line matcher builds (lines × lines of the part that
/// differs); beyond it the part is shown as removed whole and added whole.
const MAX_TABLE: usize = 4_000_000;

/// One line of an edit script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edit {
    Same(usize, usize),
    Del(usize),
    Add(usize),
}

/// The edit script from `a` to `b`: a longest common subsequence of lines
/// (common head and tail first, then a table on what is left).
fn edits(a: &[&str], b: &[&str]) -> Vec<Edit> {
    let head = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let tail = a[head..].iter().rev().zip(b[head..].iter().rev()).take_while(|(x, y)| x == y).count();
    let (ma, mb) = (&a[head..a.len() - tail], &b[head..b.len() - tail]);
    let mut out: Vec<Edit> = (0..head).map(|i| Edit::Same(i, i)).collect();
    if ma.len().saturating_mul(mb.len()) > MAX_TABLE {
        out.extend((0..ma.len()).map(|i| Edit::Del(head + i)));
        out.extend((0..mb.len()).map(|j| Edit::Add(head + j)));
    } else {
        // lcs[i][j]: longest common subsequence of ma[i..] and mb[j..].
        let w = mb.len() + 1;
        let mut lcs = vec![0u32; (ma.len() + 1) * w];
        for i in (0..ma.len()).rev() {
            for j in (0..mb.len()).rev() {
                lcs[i * w + j] = if ma[i] == mb[j] {
                    lcs[(i + 1) * w + j + 1] + 1
                } else {
                    lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < ma.len() || j < mb.len() {
            if i < ma.len() && j < mb.len() && ma[i] == mb[j] {
                out.push(Edit::Same(head + i, head + j));
                (i, j) = (i + 1, j + 1);
            } else if i < ma.len() && (j == mb.len() || lcs[(i + 1) * w + j] >= lcs[i * w + j + 1]) {
                // NOTE: removals before additions, as diff(1) and git show them.
                out.push(Edit::Del(head + i));
                i += 1;
            } else {
                out.push(Edit::Add(head + j));
                j += 1;
            }
        }
    }
    let (na, nb) = (a.len() - tail, b.len() - tail);
    out.extend((0..tail).map(|t| Edit::Same(na + t, nb + t)));
    out
}

/// A unified diff (`git diff` style, 3 lines of context) of a file's
/// content from `old` to `new` (`None`: the file does not exist on that
/// side); binary contents give one "differ" line.
pub fn unified(key: &str, old: Option<&[u8]>, new: Option<&[u8]>) -> String {
    let (from, to) = (
        if old.is_some() { format!("a/{key}") } else { "/dev/null".into() },
        if new.is_some() { format!("b/{key}") } else { "/dev/null".into() },
    );
    let (o, n) = (old.unwrap_or_default(), new.unwrap_or_default());
    if !is_text(o) || !is_text(n) {
        return format!("Binary files {from} and {to} differ\n");
    }
    fn lines(b: &[u8]) -> Vec<&str> {
        std::str::from_utf8(b).unwrap_or_default().split_inclusive('\n').collect()
    }
    let (a, b) = (lines(o), lines(n));
    let script = edits(&a, &b);
    let changed: Vec<usize> = (0..script.len()).filter(|&i| !matches!(script[i], Edit::Same(..))).collect();
    let Some(&first) = changed.first() else { return String::new() };
    let mut out = format!("--- {from}\n+++ {to}\n");
    // Hunks: runs of changes less than two contexts apart, with context.
    let mut start = first;
    let mut end = first;
    let mut hunks = Vec::new();
    for &c in &changed[1..] {
        if c - end > 2 * CONTEXT {
            hunks.push((start, end));
            start = c;
        }
        end = c;
    }
    hunks.push((start, end));
    for (s, e) in hunks {
        let lo = s.saturating_sub(CONTEXT);
        let hi = (e + CONTEXT + 1).min(script.len());
        let part = &script[lo..hi];
        // Where the hunk starts on each side: the lines before it.
        let (mut before_a, mut before_b) = (0, 0);
        for ed in &script[..lo] {
            match ed {
                Edit::Same(..) => (before_a, before_b) = (before_a + 1, before_b + 1),
                Edit::Del(_) => before_a += 1,
                Edit::Add(_) => before_b += 1,
            }
        }
        let len_a = part.iter().filter(|e| !matches!(e, Edit::Add(_))).count();
        let len_b = part.iter().filter(|e| !matches!(e, Edit::Del(_))).count();
        let at = |before: usize, len: usize| if len == 0 { before } else { before + 1 };
        let _ = writeln!(out, "@@ -{},{len_a} +{},{len_b} @@", at(before_a, len_a), at(before_b, len_b));
        for ed in part {
            let (sign, line) = match *ed {
                Edit::Same(i, _) => (' ', a[i]),
                Edit::Del(i) => ('-', a[i]),
                Edit::Add(j) => ('+', b[j]),
            };
            out.push(sign);
            out.push_str(line);
            if !line.ends_with('\n') {
                out.push_str("\n\\ No newline at end of file\n");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(v: &str, mode: u32) -> Node {
        Node { kind: Kind::File, mode, owner: None, value: v.as_bytes().to_vec() }
    }

    fn held(n: Node, rev: u64) -> Held {
        Held { node: n, mod_revision: rev }
    }

    #[test]
    fn a_plan_adds_changes_keeps_and_prunes() {
        let mut local = Local::default();
        local.tree.insert("same".into(), file("x", 0o644));
        local.tree.insert("content".into(), file("new", 0o644));
        local.tree.insert("mode".into(), file("x", 0o600));
        local.tree.insert("new".into(), file("n", 0o644));
        local.tree.insert("d".into(), Node { kind: Kind::Dir, mode: 0o755, owner: None, value: vec![] });
        local.tree.insert("d/f".into(), file("f", 0o644));
        local.plain_dirs.insert("d".into());
        local.tree.insert("link".into(), Node { kind: Kind::Symlink, mode: 0o777, owner: None, value: b"t".to_vec() });
        let mut h = BTreeMap::new();
        h.insert("same".to_owned(), held(Node { owner: Some((5, 5)), ..file("x", 0o100644) }, 1));
        h.insert("content".to_owned(), held(file("old", 0o644), 2));
        h.insert("mode".to_owned(), held(file("x", 0o644), 3));
        h.insert("d/f".to_owned(), held(file("f", 0o644), 4));
        h.insert("gone".to_owned(), held(file("g", 0o644), 5));
        h.insert(
            "link".to_owned(),
            held(Node { kind: Kind::Symlink, mode: 0o600, owner: None, value: b"t".to_vec() }, 6),
        );
        let p = plan(&local, &h, false);
        let names = |v: Vec<&String>| v.into_iter().cloned().collect::<Vec<_>>();
        assert_eq!(names(p.added.iter().map(|a| &a.0).collect()), ["new"], "a plain dir needs no entry");
        assert_eq!(names(p.changed.iter().map(|a| &a.0).collect()), ["content", "mode"]);
        assert_eq!((p.unchanged, p.kept, p.removed.len()), (3, 1, 0), "owners and symlink modes do not count");
        let pruned = plan(&local, &h, true);
        assert_eq!((pruned.kept, pruned.removed.len(), pruned.removed[0].0.as_str()), (0, 1, "gone"));
        let after = result(&h, &pruned);
        assert_eq!(after.keys().collect::<Vec<_>>(), ["content", "d/f", "link", "mode", "new", "same"]);
        assert_eq!(after["content"].value, b"new");
        // Owners count when given.
        local.tree.insert("same".into(), Node { owner: Some((0, 0)), ..file("x", 0o644) });
        assert_eq!(plan(&local, &h, false).changed.len(), 3);
        // A dir where a file was, and an explicit dir that is not plain.
        local.plain_dirs.clear();
        let p = plan(&local, &h, false);
        assert!(p.added.iter().any(|(k, n)| k == "d" && n.kind == Kind::Dir));
        assert!(plan(&Local::default(), &BTreeMap::new(), true).is_empty());
    }

    #[test]
    fn a_unified_diff_shows_hunks_with_context() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n13\n14\n15\n";
        let new = "1\n2\nthree\n4\n5\n6\n7\n8\n9\n10\n11\n12\n13\n15\n16\n";
        let d = unified("app/f", Some(old.as_bytes()), Some(new.as_bytes()));
        let want = "--- a/app/f\n+++ b/app/f\n\
                    @@ -1,6 +1,6 @@\n 1\n 2\n-3\n+three\n 4\n 5\n 6\n\
                    @@ -11,5 +11,5 @@\n 11\n 12\n 13\n-14\n 15\n+16\n";
        assert_eq!(d, want);
        // Changes less than two contexts apart share a hunk.
        let d = unified("f", Some(b"a\nb\nc\nd\ne\n"), Some(b"A\nb\nc\nd\nE\n"));
        assert_eq!(d, "--- a/f\n+++ b/f\n@@ -1,5 +1,5 @@\n-a\n+A\n b\n c\n d\n-e\n+E\n");
    }

    #[test]
    fn a_unified_diff_of_new_removed_unchanged_and_binary_files() {
        assert_eq!(unified("f", None, Some(b"x\ny\n")), "--- /dev/null\n+++ b/f\n@@ -0,0 +1,2 @@\n+x\n+y\n");
        assert_eq!(unified("f", Some(b"x\n"), None), "--- a/f\n+++ /dev/null\n@@ -1,1 +0,0 @@\n-x\n");
        assert_eq!(unified("f", Some(b"same\n"), Some(b"same\n")), "");
        assert_eq!(
            unified("f", Some(b"x"), Some(b"x\n")),
            "--- a/f\n+++ b/f\n@@ -1,1 +1,1 @@\n-x\n\\ No newline at end of file\n+x\n"
        );
        assert_eq!(unified("b", Some(b"\0\x01"), Some(b"\0\x02")), "Binary files a/b and b/b differ\n");
        assert_eq!(unified("b", None, Some(&[0xff, 0xfe])), "Binary files /dev/null and b/b differ\n");
    }

    #[test]
    fn a_large_difference_is_shown_whole_rather_than_matched() {
        let old: String = (0..3000).map(|i| format!("{i}\n")).collect();
        let new: String = (0..3000).map(|i| format!("x{i}\n")).collect();
        let d = unified("f", Some(old.as_bytes()), Some(new.as_bytes()));
        assert!(d.starts_with("--- a/f\n+++ b/f\n@@ -1,3000 +1,3000 @@\n-0\n"), "{}", &d[..60]);
        assert_eq!(d.lines().filter(|l| l.starts_with('+') && !l.starts_with("+++")).count(), 3000);
    }

    #[test]
    fn the_rendered_plan_names_each_change_with_its_mode() {
        let mut local = Local::default();
        local.tree.insert("a.conf".into(), file("new\n", 0o600));
        local.tree.insert("bin".into(), Node { kind: Kind::File, mode: 0o644, owner: None, value: vec![0, 1] });
        let mut h = BTreeMap::new();
        h.insert("a.conf".to_owned(), held(file("old\n", 0o644), 1));
        h.insert("old".to_owned(), held(file("x\n", 0o644), 1));
        let text = render(&plan(&local, &h, true), "app");
        assert!(text.contains("added    app/bin  (file 0644)"), "{text}");
        assert!(text.contains("changed  app/a.conf  (file 0644 -> file 0600)"), "{text}");
        assert!(text.contains("removed  app/old  (file 0644)"), "{text}");
        assert!(text.contains("--- a/app/a.conf\n+++ b/app/a.conf\n@@ -1,1 +1,1 @@\n-old\n+new\n"), "{text}");
        assert!(text.contains("Binary files /dev/null and b/app/bin differ"), "{text}");
        assert!(text.contains("--- a/app/old\n+++ /dev/null\n"), "{text}");
    }
}
