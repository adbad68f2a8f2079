//! Transaction semantics: what one request's compares and operations do,
//! over a read-only view of the committed state and the changes of the log
//! entry being applied.
//!
//! It knows no storage: crate::sm gives it a view of the fjall store and
//! writes the changes out as one batch; the tests here use an in-memory view.

use std::collections::BTreeMap;
use std::io;

use kv_client::{key_in_prefix, Kind};
use serde_bytes::ByteBuf;

use crate::dedup;
use crate::types::{Cmp, Op, Outcome, Prev, Request, Response, RevisionRecord, StoredEntry, StoredEvent, TokenRecord};

/// What a transaction reads from the committed state.
pub(crate) trait ReadView {
    /// The entry at `key`, if any.
    fn entry(&self, key: &str) -> io::Result<Option<StoredEntry>>;
    /// Every entry whose key starts with `prefix` ("" for all), in order.
    fn entries_with_prefix(&self, prefix: &str) -> io::Result<Vec<(String, StoredEntry)>>;
    /// Whether a token named `name` exists.
    fn token_exists(&self, name: &str) -> io::Result<bool>;
    /// Whether a key under `prefix` (normalized, "" for all) was put or
    /// deleted after revision `rev`, decided from the current state: the
    /// entries' mod revisions and the prefix's last recursive delete.
    fn changed_since(&self, prefix: &str, rev: u64) -> io::Result<bool>;
}

/// Changes of the log entry being applied, not yet committed; later requests
/// of the entry see them over the committed state.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Entries written (`Some`) or deleted (`None`).
    pub(crate) entries: BTreeMap<String, Option<StoredEntry>>,
    /// Tokens created (`Some`) or revoked (`None`), by name.
    pub(crate) tokens: BTreeMap<String, Option<TokenRecord>>,
    /// Watch events in order: revision, sequence within it, event.
    pub(crate) events: Vec<(u64, u32, StoredEvent)>,
    /// When each new revision was made, and by whom.
    pub(crate) revisions: Vec<(u64, RevisionRecord)>,
    /// The last revision that deleted a key under each prefix (every
    /// ancestor of a deleted key, and the key itself).
    pub(crate) deleted: BTreeMap<String, u64>,
}

impl Changes {
    /// The entry at `key` as the entry being applied sees it: its own
    /// earlier writes first, then the committed state.
    fn entry(&self, view: &impl ReadView, key: &str) -> io::Result<Option<StoredEntry>> {
        match self.entries.get(key) {
            Some(e) => Ok(e.clone()),
            None => view.entry(key),
        }
    }

    /// Whether a key under `prefix` was put or deleted after `rev`, as the
    /// entry being applied sees it: its own earlier changes, then the
    /// committed state.
    fn changed_since(&self, view: &impl ReadView, prefix: &str, rev: u64) -> io::Result<bool> {
        let own = self.events.iter().any(|(r, _, e)| *r > rev && key_in_prefix(&e.key, prefix));
        Ok(own || view.changed_since(prefix, rev)?)
    }

    /// Whether a token named `name` exists, as the entry being applied sees it.
    fn token_exists(&self, view: &impl ReadView, name: &str) -> io::Result<bool> {
        match self.tokens.get(name) {
            Some(t) => Ok(t.is_some()),
            None => view.token_exists(name),
        }
    }
}

/// What a transaction reads and moves besides entries and tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct State {
    /// The store revision: raised by one for each request that writes or
    /// deletes an entry.
    pub(crate) revision: u64,
    /// The dedup window in effect, ms (crate::dedup).
    pub(crate) dedup_window_ms: u64,
    /// The rules writes are applied by ([`RULES`]), as the log set them.
    pub(crate) rules: u32,
}

/// The rules this kvd applies writes by, and proposes when it leads
/// (`Op::SetRules`). 0: kvd before times. 1: a put of attributes alone
/// keeps the mtime, and a directory entry's mtime and ctime move when a key
/// is made in it or removed from it ([`touch_parents`]).
///
/// IMPORTANT: a member applies an entry by the rules the log has set, not
/// by its release: members of two releases apply the same log alike.
pub(crate) const RULES: u32 = 1;

/// Runs one request against the committed state in `view` as `changes` sees
/// it; records what it changes in `changes` and `st`.
pub(crate) fn exec(view: &impl ReadView, changes: &mut Changes, st: &mut State, req: &Request) -> io::Result<Response> {
    let mut ok = true;
    for c in &req.txn.compare {
        let rev = |k: &str| -> io::Result<u64> { Ok(changes.entry(view, k)?.map(|e| e.mod_revision).unwrap_or(0)) };
        ok &= match c {
            Cmp::ModRevision(k, want) => rev(k)? == *want,
            Cmp::Exists(k, want) => (rev(k)? != 0) == *want,
            Cmp::PrefixUnchangedSince(prefix, since) => !changes.changed_since(view, prefix, *since)?,
        };
    }
    let ops = if ok { &req.txn.success } else { &req.txn.failure };
    let new_rev = st.revision + 1;
    let mut written: Vec<(String, Option<StoredEntry>, Prev)> = Vec::new();
    let mut writer = None;
    let mut outcomes = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            Op::Put { key, value, attrs } => {
                let prev = changes.entry(view, key)?;
                let prev = prev.as_ref();
                let kept = prev.map(|p| p.kind.kept_by(value.as_ref().map(|v| v.as_slice())));
                let kind = attrs.kind.or(kept).unwrap_or(Kind::File);
                let e = StoredEntry {
                    kind,
                    mode: attrs.mode.or(prev.map(|p| p.mode)).unwrap_or(kind.default_mode()),
                    uid: attrs.uid.or(prev.map(|p| p.uid)).unwrap_or(0),
                    gid: attrs.gid.or(prev.map(|p| p.gid)).unwrap_or(0),
                    // NOTE: an attributes-only put (no value) changes no
                    // content: the mtime stays unless given.
                    mtime_ns: attrs
                        .mtime_ns
                        .or(prev.filter(|_| value.is_none() && st.rules >= 1).map(|p| p.mtime_ns))
                        .unwrap_or(req.now_ns),
                    atime_ns: attrs.atime_ns.or(prev.map(|p| p.atime_ns)).unwrap_or(req.now_ns),
                    ctime_ns: req.now_ns,
                    create_revision: prev.map(|p| p.create_revision).unwrap_or(new_rev),
                    mod_revision: new_rev,
                    version: prev.map(|p| p.version + 1).unwrap_or(1),
                    value: match value {
                        Some(v) => v.clone(),
                        None if !kind.holds_value() => ByteBuf::new(),
                        None => prev.map(|p| p.value.clone()).unwrap_or_default(),
                    },
                };
                let before = Prev::from(prev.cloned());
                changes.entries.insert(key.clone(), Some(e.clone()));
                written.push((key.clone(), Some(e), before));
                outcomes.push(Outcome::Put(key.clone(), new_rev));
            }
            Op::Delete { key, recursive } => {
                // The keys that go, with what each held (for the history).
                let mut gone: Vec<(String, StoredEntry)> = Vec::new();
                if !key.is_empty() {
                    if let Some(e) = changes.entry(view, key)? {
                        gone.push((key.clone(), e));
                    }
                }
                if *recursive {
                    let base = if key.is_empty() { String::new() } else { format!("{key}/") };
                    let mut below: BTreeMap<String, StoredEntry> =
                        view.entries_with_prefix(&base)?.into_iter().collect();
                    for (k, v) in changes.entries.range(base.clone()..) {
                        if !k.starts_with(&base) {
                            break;
                        }
                        match v {
                            Some(e) => below.insert(k.clone(), e.clone()),
                            None => below.remove(k),
                        };
                    }
                    gone.extend(below);
                }
                outcomes.push(Outcome::Delete(key.clone(), gone.len() as u64));
                for (k, held) in gone {
                    for p in ancestors(&k) {
                        if changes.deleted.get(p) != Some(&new_rev) {
                            changes.deleted.insert(p.to_owned(), new_rev);
                        }
                    }
                    changes.entries.insert(k.clone(), None);
                    written.push((k, None, Prev::Entry(held)));
                }
            }
            Op::CreateToken(rec) => {
                let exists = changes.token_exists(view, &rec.name)?;
                if !exists {
                    changes.tokens.insert(rec.name.clone(), Some(rec.clone()));
                }
                outcomes.push(if exists {
                    Outcome::Token(rec.name.clone(), false)
                } else {
                    Outcome::TokenCreated(rec.name.clone(), rec.hash.clone())
                });
            }
            Op::RevokeToken(name) => {
                let exists = changes.token_exists(view, name)?;
                if exists {
                    changes.tokens.insert(name.clone(), None);
                }
                outcomes.push(Outcome::Token(name.clone(), exists));
            }
            Op::SetDedupWindow(ms) => st.dedup_window_ms = (*ms).clamp(dedup::MIN_WINDOW_MS, dedup::MAX_WINDOW_MS),
            // IMPORTANT: rules this kvd does not know are not applied by the
            // ones it knows: a log written by a newer kvd stops it.
            Op::SetRules(r) if *r > RULES => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the log sets rules of writes {r}, newer than this kvd applies ({RULES}): it was written by \
                         a newer kvd; upgrade this member"
                    ),
                ))
            }
            Op::SetRules(r) => st.rules = st.rules.max(*r),
            Op::Writer(w) => writer = Some(w.clone()),
        }
    }
    let touched = if st.rules >= 1 { touch_parents(view, changes, &mut written, new_rev, req.now_ns)? } else { vec![] };
    if !written.is_empty() {
        st.revision = new_rev;
        changes.events.extend(
            written
                .into_iter()
                .enumerate()
                .map(|(seq, (key, entry, prev))| (new_rev, seq as u32, StoredEvent { key, entry, prev })),
        );
        changes.revisions.push((new_rev, RevisionRecord { time_ns: req.now_ns, writer }));
    }
    let time_ns = (st.revision == new_rev).then_some(req.now_ns);
    Ok(Response { succeeded: ok, revision: st.revision, outcomes, time_ns, touched })
}

/// Gives every directory entry a key was made in or removed from by a
/// request (that existed before it and not after, or the other way round,
/// or was deleted and put again: a rename over it) the request's time as its mtime and ctime, as a file system does: a
/// write of the directory in the same revision, after the writes of its
/// entries. Not for a directory the request wrote itself (one made or moved
/// with its entries), nor for one that is only implied by the keys below it
/// (it has no entry to hold times). Returns the directories written, each
/// with the revision it had before.
fn touch_parents(
    view: &impl ReadView,
    changes: &mut Changes,
    written: &mut Vec<(String, Option<StoredEntry>, Prev)>,
    rev: u64,
    now_ns: i64,
) -> io::Result<Vec<(String, u64)>> {
    // NOTE: on the apply loop's path: a request that only overwrites keys
    // (most of them) changes no directory.
    let overwrite = |(_, entry, prev): &(String, Option<StoredEntry>, Prev)| {
        matches!(prev, Prev::Entry(_)) && entry.as_ref().is_some_and(|e| e.create_revision != rev)
    };
    if written.iter().all(overwrite) {
        return Ok(vec![]);
    }
    let changes_of = written.iter().map(|(key, entry, prev)| {
        (key.as_str(), matches!(prev, Prev::Entry(_)), entry.as_ref().map(|e| e.create_revision == rev))
    });
    let parents = kv_client::dirs_changed(changes_of);
    let mut touched = Vec::new();
    for parent in parents {
        let Some(before) = changes.entry(view, &parent)?.filter(|e| e.kind == Kind::Dir) else { continue };
        let after = StoredEntry {
            mtime_ns: now_ns,
            ctime_ns: now_ns,
            mod_revision: rev,
            version: before.version + 1,
            ..before.clone()
        };
        changes.entries.insert(parent.clone(), Some(after.clone()));
        touched.push((parent.clone(), before.mod_revision));
        written.push((parent, Some(after), Prev::Entry(before)));
    }
    Ok(touched)
}

/// Every prefix a key is under: "", each of its ancestors, and the key.
pub(crate) fn ancestors(key: &str) -> impl Iterator<Item = &str> {
    std::iter::once("").chain(key.match_indices('/').map(|(i, _)| &key[..i])).chain(std::iter::once(key))
}

/// The committed state in memory, for tests of what runs over a
/// [`ReadView`]; crate::sm checks that it reads like the fjall store.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct MemView {
    entries: BTreeMap<String, StoredEntry>,
    tokens: std::collections::BTreeSet<String>,
    /// The last deleting revision under each prefix.
    deleted: BTreeMap<String, u64>,
}

#[cfg(test)]
impl MemView {
    /// Commits the changes of one log entry.
    pub(crate) fn commit(&mut self, changes: Changes) {
        self.deleted.extend(changes.deleted);
        for (k, e) in changes.entries {
            match e {
                Some(e) => self.entries.insert(k, e),
                None => self.entries.remove(&k),
            };
        }
        for (name, t) in changes.tokens {
            match t {
                Some(_) => self.tokens.insert(name),
                None => self.tokens.remove(&name),
            };
        }
    }
}

#[cfg(test)]
impl ReadView for MemView {
    fn entry(&self, key: &str) -> io::Result<Option<StoredEntry>> {
        Ok(self.entries.get(key).cloned())
    }

    fn entries_with_prefix(&self, prefix: &str) -> io::Result<Vec<(String, StoredEntry)>> {
        Ok(self
            .entries
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect())
    }

    fn token_exists(&self, name: &str) -> io::Result<bool> {
        Ok(self.tokens.contains(name))
    }

    fn changed_since(&self, prefix: &str, rev: u64) -> io::Result<bool> {
        let put = self.entries.iter().any(|(k, e)| key_in_prefix(k, prefix) && e.mod_revision > rev);
        Ok(put || self.deleted.get(prefix).is_some_and(|d| *d > rev))
    }
}

#[cfg(test)]
mod tests {
    use kv_client::Grants;

    use super::*;
    use crate::types::{PutAttrs, Txn};

    const NOW: i64 = 1_718_000_000_000_000_000;

    fn req(compare: Vec<Cmp>, success: Vec<Op>, failure: Vec<Op>) -> Request {
        Request { id: String::new(), now_ns: NOW, txn: Txn { compare, success, failure } }
    }

    fn only(ops: Vec<Op>) -> Request {
        req(vec![], ops, vec![])
    }

    fn put_attrs(key: &str, value: Option<&str>, attrs: PutAttrs) -> Op {
        Op::Put { key: key.to_owned(), value: value.map(|v| ByteBuf::from(v.as_bytes())), attrs }
    }

    fn put(key: &str, value: &str) -> Op {
        put_attrs(key, Some(value), PutAttrs::default())
    }

    fn del(key: &str, recursive: bool) -> Op {
        Op::Delete { key: key.to_owned(), recursive }
    }

    fn token(name: &str) -> TokenRecord {
        TokenRecord {
            name: name.to_owned(),
            hash: format!("hash-of-{name}"),
            grants: Grants::default(),
            created_ns: NOW,
        }
    }

    fn mod_rev(key: &str, rev: u64) -> Cmp {
        Cmp::ModRevision(key.to_owned(), rev)
    }

    fn exists(key: &str, want: bool) -> Cmp {
        Cmp::Exists(key.to_owned(), want)
    }

    /// A view and state after one entry putting `keys`, each in a revision of its own.
    fn with_keys(keys: &[&str]) -> (MemView, State) {
        let mut view = MemView::default();
        let mut st = State { revision: 0, dedup_window_ms: dedup::DEFAULT_WINDOW_MS, rules: RULES };
        let reqs: Vec<Request> = keys.iter().map(|k| only(vec![put(k, k)])).collect();
        entry(&mut view, &mut st, &reqs);
        (view, st)
    }

    /// Runs `reqs` as one log entry and commits it; returns the responses.
    fn entry(view: &mut MemView, st: &mut State, reqs: &[Request]) -> Vec<Response> {
        let (out, changes) = run(view, st, reqs);
        view.commit(changes);
        out
    }

    /// Runs `reqs` as one log entry without committing it.
    fn run(view: &MemView, st: &mut State, reqs: &[Request]) -> (Vec<Response>, Changes) {
        let mut changes = Changes::default();
        let out = reqs.iter().map(|r| exec(view, &mut changes, st, r).expect("exec")).collect();
        (out, changes)
    }

    fn get(view: &MemView, key: &str) -> Option<StoredEntry> {
        view.entry(key).expect("entry")
    }

    fn keys(view: &MemView) -> Vec<String> {
        view.entries_with_prefix("").expect("entries").into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn mod_revision_compare_holds_only_at_the_keys_revision() {
        let (view, mut st) = with_keys(&["k", "other"]);
        let (out, _) = run(
            &view,
            &mut st,
            &[req(vec![mod_rev("k", 1)], vec![], vec![]), req(vec![mod_rev("k", 2)], vec![], vec![])],
        );
        assert_eq!((out[0].succeeded, out[1].succeeded), (true, false));
    }

    #[test]
    fn exists_compare_and_a_missing_key_at_revision_0() {
        let (view, mut st) = with_keys(&["k"]);
        let cases = [
            (exists("k", true), true),
            (exists("k", false), false),
            (exists("missing", false), true),
            (exists("missing", true), false),
            (mod_rev("missing", 0), true),
            (mod_rev("k", 0), false),
        ];
        for (cmp, want) in cases {
            let (out, _) = run(&view, &mut st, &[req(vec![cmp.clone()], vec![], vec![])]);
            assert_eq!(out[0].succeeded, want, "{cmp:?}");
        }
    }

    #[test]
    fn a_failed_compare_runs_the_failure_branch_only() {
        let (mut view, mut st) = with_keys(&["k"]);
        let out = entry(
            &mut view,
            &mut st,
            &[req(vec![exists("k", true), mod_rev("k", 9)], vec![put("yes", "1")], vec![put("no", "1")])],
        );
        assert_eq!(
            out[0],
            Response {
                succeeded: false,
                revision: 2,
                outcomes: vec![Outcome::Put("no".into(), 2)],
                time_ns: Some(NOW),
                touched: vec![],
            }
        );
        assert_eq!(keys(&view), ["k", "no"]);
    }

    #[test]
    fn a_directory_is_written_when_an_entry_is_made_in_it_or_removed_from_it() {
        let mut view = MemView::default();
        let mut st = State { revision: 0, dedup_window_ms: dedup::DEFAULT_WINDOW_MS, rules: RULES };
        let at = |now: i64, ops: Vec<Op>| Request { now_ns: now, ..only(ops) };
        entry(&mut view, &mut st, &[at(NOW, vec![put_attrs("d", None, dir()), put_attrs("e", None, dir())])]);
        let d = |view: &MemView| get(view, "d").expect("d");
        assert_eq!((d(&view).mod_revision, d(&view).mtime_ns), (1, NOW));
        // Made in it: d is written in the same revision, after its entry.
        let (out, changes) = run(&view, &mut st, &[at(NOW + 1, vec![put("d/f", "1")])]);
        assert_eq!(out[0].touched, [("d".to_owned(), 1)], "d, and the revision it had");
        let events: Vec<&str> = changes.events.iter().map(|(_, _, e)| e.key.as_str()).collect();
        assert_eq!(events, ["d/f", "d"]);
        view.commit(changes);
        let made = d(&view);
        assert_eq!((made.mod_revision, made.version, made.mtime_ns, made.ctime_ns), (2, 2, NOW + 1, NOW + 1));
        // Overwritten, or made and removed in one request: no change of d.
        let out = entry(&mut view, &mut st, &[at(NOW + 2, vec![put("d/f", "2"), put("d/g", "x"), del("d/g", false)])]);
        assert_eq!((out[0].touched.len(), d(&view)), (0, made.clone()));
        // Renamed over a name in e, and out of d: both are written.
        entry(&mut view, &mut st, &[at(NOW + 3, vec![put("e/x", "old")])]);
        let out =
            entry(&mut view, &mut st, &[at(NOW + 4, vec![del("d/f", false), del("e/x", false), put("e/x", "2")])]);
        assert_eq!(names(&out[0]), ["d", "e"]);
        assert_eq!((d(&view).mtime_ns, get(&view, "e").expect("e").ctime_ns), (NOW + 4, NOW + 4));
        // A directory made with its entries, or implied: not written again.
        let out = entry(&mut view, &mut st, &[at(NOW + 5, vec![put_attrs("n", None, dir()), put("n/a", "1")])]);
        assert!(out[0].touched.is_empty());
        let out = entry(&mut view, &mut st, &[at(NOW + 6, vec![put("implied/a", "1")])]);
        assert!(out[0].touched.is_empty());
        // A recursive delete writes the directory above it, not those it removes.
        let out = entry(&mut view, &mut st, &[at(NOW + 7, vec![put_attrs("d/s", None, dir()), put("d/s/t", "1")])]);
        assert_eq!(names(&out[0]), ["d"]);
        let out = entry(&mut view, &mut st, &[at(NOW + 8, vec![del("d/s", true)])]);
        assert_eq!((names(&out[0]), d(&view).mtime_ns), (vec!["d"], NOW + 8));
    }

    #[test]
    fn the_rules_of_writes_come_from_the_log_and_never_go_down() {
        // Rules this kvd does not know stop it.
        let mut st = State { revision: 0, dedup_window_ms: dedup::DEFAULT_WINDOW_MS, rules: 0 };
        let e = exec(&MemView::default(), &mut Changes::default(), &mut st, &only(vec![Op::SetRules(RULES + 1)]))
            .expect_err("newer rules");
        assert!(e.to_string().contains("newer than this kvd applies"), "{e}");
        assert_eq!(st.rules, 0);
        // Before the log sets rules 1, writes are applied as before them.
        let mut view = MemView::default();
        let mut st = State { revision: 0, dedup_window_ms: dedup::DEFAULT_WINDOW_MS, rules: 0 };
        let at = |now: i64, ops: Vec<Op>| Request { now_ns: now, ..only(ops) };
        let mode = PutAttrs { mode: Some(0o600), ..PutAttrs::default() };
        entry(&mut view, &mut st, &[at(NOW, vec![put_attrs("d", None, dir()), put("d/f", "1")])]);
        let out =
            entry(&mut view, &mut st, &[at(NOW + 1, vec![put("d/g", "1"), put_attrs("d/f", None, mode.clone())])]);
        assert!(out[0].touched.is_empty());
        assert_eq!(get(&view, "d").expect("d").mod_revision, 1, "no directory write");
        assert_eq!(get(&view, "d/f").expect("f").mtime_ns, NOW + 1, "an attributes-only put takes the time");
        entry(&mut view, &mut st, &[only(vec![Op::SetRules(1)])]);
        assert_eq!(st.rules, 1);
        entry(&mut view, &mut st, &[only(vec![Op::SetRules(0)])]);
        assert_eq!(st.rules, 1, "never lowered");
        let out = entry(&mut view, &mut st, &[at(NOW + 2, vec![put("d/h", "1"), put_attrs("d/f", None, mode)])]);
        assert_eq!(names(&out[0]), ["d"]);
        assert_eq!(get(&view, "d/f").expect("f").mtime_ns, NOW + 1, "an attributes-only put keeps the mtime");
    }

    fn names(r: &Response) -> Vec<&str> {
        r.touched.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn a_new_entry_takes_the_defaults() {
        let (mut view, mut st) = with_keys(&["k"]);
        entry(&mut view, &mut st, &[only(vec![put("f", "v"), put_attrs("d", None, dir())])]);
        let f = StoredEntry {
            kind: Kind::File,
            mode: Kind::File.default_mode(),
            uid: 0,
            gid: 0,
            mtime_ns: NOW,
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            value: ByteBuf::from(b"v".to_vec()),
            atime_ns: NOW,
            ctime_ns: NOW,
        };
        assert_eq!(get(&view, "f"), Some(f));
        let d = get(&view, "d").expect("d");
        assert_eq!((d.kind, d.mode, d.value.len()), (Kind::Dir, Kind::Dir.default_mode(), 0));
    }

    fn dir() -> PutAttrs {
        PutAttrs { kind: Some(Kind::Dir), ..PutAttrs::default() }
    }

    #[test]
    fn a_put_keeps_what_it_does_not_give() {
        let mut view = MemView::default();
        let mut st = State { revision: 0, dedup_window_ms: dedup::DEFAULT_WINDOW_MS, rules: RULES };
        let first = PutAttrs {
            kind: Some(Kind::Symlink),
            mode: Some(0o600),
            uid: Some(7),
            gid: Some(8),
            mtime_ns: Some(5),
            atime_ns: Some(3),
        };
        entry(&mut view, &mut st, &[only(vec![put_attrs("k", Some("target"), first)])]);
        let mut later = req(vec![], vec![put_attrs("k", None, PutAttrs::default())], vec![]);
        later.now_ns = NOW + 1;
        entry(&mut view, &mut st, &[later]);
        let k = get(&view, "k").expect("k");
        assert_eq!((k.kind, k.mode, k.uid, k.gid), (Kind::Symlink, 0o600, 7, 8));
        assert_eq!(k.value.as_slice(), b"target", "no value given: the value is kept");
        assert_eq!((k.create_revision, k.mod_revision, k.version), (1, 2, 2));
        assert_eq!((k.mtime_ns, k.atime_ns), (5, 3), "no value nor times given: the times are kept");
        assert_eq!(k.ctime_ns, NOW + 1, "the ctime is the request's time");
        let mut rewrite = req(vec![], vec![put_attrs("k", Some("other"), PutAttrs::default())], vec![]);
        rewrite.now_ns = NOW + 2;
        entry(&mut view, &mut st, &[rewrite]);
        let k = get(&view, "k").expect("k");
        assert_eq!((k.mtime_ns, k.atime_ns, k.ctime_ns), (NOW + 2, 3, NOW + 2), "a value without an mtime: now");
        let mode_only = PutAttrs { mode: Some(0o640), mtime_ns: Some(42), ..PutAttrs::default() };
        entry(&mut view, &mut st, &[only(vec![put_attrs("k", None, mode_only)])]);
        let k = get(&view, "k").expect("k");
        assert_eq!((k.kind, k.mode, k.uid, k.gid, k.mtime_ns), (Kind::Symlink, 0o640, 7, 8, 42));
        assert_eq!((k.version, k.value.as_slice()), (4, b"other".as_slice()));
    }

    #[test]
    fn a_directory_never_has_a_value() {
        let (mut view, mut st) = with_keys(&["k"]);
        entry(&mut view, &mut st, &[only(vec![put_attrs("k", None, dir())])]);
        let k = get(&view, "k").expect("k");
        assert_eq!((k.kind, k.mode, k.value.len()), (Kind::Dir, 0o644, 0), "the mode is kept from the file");
    }

    #[test]
    fn a_delete_counts_what_went() {
        let (view, mut st) = with_keys(&["a", "b"]);
        let (out, changes) = run(&view, &mut st, &[only(vec![del("a", false), del("missing", false)])]);
        assert_eq!(out[0].outcomes, [Outcome::Delete("a".into(), 1), Outcome::Delete("missing".into(), 0)]);
        let before = get(&view, "a").expect("a");
        assert_eq!(changes.events, [(3, 0, StoredEvent { key: "a".into(), entry: None, prev: Prev::Entry(before) })]);
        let (out, changes) = run(&view, &mut st, &[only(vec![del("missing", false), del("missing", true)])]);
        assert_eq!(out[0].outcomes, [Outcome::Delete("missing".into(), 0), Outcome::Delete("missing".into(), 0)]);
        assert_eq!((out[0].revision, changes.events.len()), (3, 0), "nothing went: no revision");
    }

    #[test]
    fn a_recursive_delete_covers_the_store_and_the_entrys_own_writes() {
        let (view, mut st) = with_keys(&["a", "a/1", "a/2", "a/2/x", "ab"]);
        let (out, changes) =
            run(&view, &mut st, &[only(vec![put("a/3", "new"), del("a/1", false)]), only(vec![del("a", true)])]);
        assert_eq!(out[1].outcomes, [Outcome::Delete("a".into(), 4)]);
        let gone: Vec<&str> = changes.events.iter().filter(|e| e.0 == 7).map(|e| e.2.key.as_str()).collect();
        assert_eq!(gone, ["a", "a/2", "a/2/x", "a/3"], "the key first, then below it in order; a/1 went before");
        let mut view = view;
        view.commit(changes);
        assert_eq!(keys(&view), ["ab"]);
    }

    #[test]
    fn a_recursive_delete_of_a_does_not_touch_ab() {
        let (mut view, mut st) = with_keys(&["a.b", "a/x", "a/x/y", "ab", "ab/y", "a0"]);
        let out = entry(&mut view, &mut st, &[only(vec![del("a", true)])]);
        assert_eq!(out[0].outcomes, [Outcome::Delete("a".into(), 2)], "no key `a` itself");
        assert_eq!(keys(&view), ["a.b", "a0", "ab", "ab/y"]);
    }

    #[test]
    fn a_recursive_delete_of_the_empty_key_deletes_everything() {
        let (mut view, mut st) = with_keys(&["a", "b/c", "d"]);
        entry(&mut view, &mut st, &[only(vec![del("b/c", false), put("e", "1")])]);
        let out = entry(&mut view, &mut st, &[only(vec![put("f", "1")]), only(vec![del("", true)])]);
        assert_eq!(out[1].outcomes, [Outcome::Delete(String::new(), 4)], "a, d, e and f");
        assert!(keys(&view).is_empty());
    }

    #[test]
    fn a_rename_is_one_revision() {
        let (view, mut st) = with_keys(&["src", "x"]);
        let src = get(&view, "src").expect("src");
        let rename = req(
            vec![mod_rev("src", src.mod_revision), exists("dst", false)],
            vec![put("dst", "src"), del("src", false)],
            vec![],
        );
        let (out, changes) = run(&view, &mut st, std::slice::from_ref(&rename));
        assert_eq!(
            out[0],
            Response {
                succeeded: true,
                revision: 3,
                outcomes: vec![Outcome::Put("dst".into(), 3), Outcome::Delete("src".into(), 1)],
                time_ns: Some(NOW),
                touched: vec![],
            }
        );
        assert_eq!(st.revision, 3);
        let events: Vec<(u64, u32, &str, bool)> =
            changes.events.iter().map(|(r, s, e)| (*r, *s, e.key.as_str(), e.entry.is_some())).collect();
        assert_eq!(events, [(3, 0, "dst", true), (3, 1, "src", false)]);
        let mut view = view;
        view.commit(changes);
        let (out, changes) = run(&view, &mut st, &[rename]);
        assert_eq!((out[0].succeeded, out[0].revision, changes.events.len()), (false, 3, 0), "the source is gone");
    }

    #[test]
    fn a_transaction_that_changes_no_entry_keeps_the_revision() {
        let (view, mut st) = with_keys(&["k"]);
        let reqs = [
            req(vec![exists("k", false)], vec![put("k", "2")], vec![]),
            only(vec![del("missing", true), Op::CreateToken(token("t")), Op::SetDedupWindow(60_000)]),
        ];
        let (out, changes) = run(&view, &mut st, &reqs);
        assert_eq!((out[0].revision, out[1].revision, st.revision), (1, 1, 1));
        assert!(changes.entries.is_empty() && changes.events.is_empty());
    }

    #[test]
    fn tokens_are_created_once_and_revoked_once() {
        let mut view = MemView::default();
        let mut st = State { revision: 0, dedup_window_ms: dedup::DEFAULT_WINDOW_MS, rules: RULES };
        let out = entry(&mut view, &mut st, &[only(vec![Op::CreateToken(token("a")), Op::CreateToken(token("a"))])]);
        assert_eq!(
            out[0].outcomes,
            [Outcome::TokenCreated("a".into(), "hash-of-a".into()), Outcome::Token("a".into(), false)]
        );
        assert!(view.token_exists("a").expect("token"));
        let (out, changes) = run(
            &view,
            &mut st,
            &[only(vec![
                Op::CreateToken(token("a")),
                Op::RevokeToken("a".into()),
                Op::RevokeToken("a".into()),
                Op::RevokeToken("missing".into()),
                Op::CreateToken(token("a")),
            ])],
        );
        assert_eq!(
            out[0].outcomes,
            [
                Outcome::Token("a".into(), false),
                Outcome::Token("a".into(), true),
                Outcome::Token("a".into(), false),
                Outcome::Token("missing".into(), false),
                Outcome::TokenCreated("a".into(), "hash-of-a".into()),
            ]
        );
        assert_eq!(changes.tokens.keys().collect::<Vec<_>>(), ["a"], "a missing token is not written");
        assert_eq!((st.revision, changes.events.len()), (0, 0), "tokens are not entries");
    }

    #[test]
    fn the_dedup_window_is_held_to_its_bounds() {
        let mut st = State { revision: 5, dedup_window_ms: dedup::DEFAULT_WINDOW_MS, rules: RULES };
        for (ms, want) in [(0, dedup::MIN_WINDOW_MS), (u64::MAX, dedup::MAX_WINDOW_MS), (60_000, 60_000)] {
            let (out, _) = run(&MemView::default(), &mut st, &[only(vec![Op::SetDedupWindow(ms)])]);
            assert_eq!((st.dedup_window_ms, st.revision, out[0].outcomes.len()), (want, 5, 0), "{ms}");
        }
    }

    fn unchanged_since(prefix: &str, rev: u64) -> Cmp {
        Cmp::PrefixUnchangedSince(prefix.to_owned(), rev)
    }

    #[test]
    fn a_prefix_compare_fails_after_a_put_or_a_delete_under_the_prefix() {
        // Revisions 1..=4: app/a, app/b, apple, other.
        let (mut view, mut st) = with_keys(&["app/a", "app/b", "apple", "other"]);
        let holds = |view: &MemView, st: &mut State, cmp: Cmp| {
            let (out, _) = run(view, st, &[req(vec![cmp], vec![], vec![])]);
            out[0].succeeded
        };
        assert!(holds(&view, &mut st, unchanged_since("app", 2)), "app/b was written at 2, not after");
        assert!(!holds(&view, &mut st, unchanged_since("app", 1)), "app/b was written at 2");
        assert!(holds(&view, &mut st, unchanged_since("app", 4)), "apple is not under app");
        assert!(!holds(&view, &mut st, unchanged_since("", 3)), "the empty prefix holds every key");
        assert!(holds(&view, &mut st, unchanged_since("app/a", 1)));
        assert!(holds(&view, &mut st, unchanged_since("nothing", 0)));
        assert!(holds(&view, &mut st, unchanged_since("app", 99)), "a revision not reached yet");
        // A delete is a change too; so is a recursive one.
        entry(&mut view, &mut st, &[only(vec![del("app/a", false)])]);
        assert!(!holds(&view, &mut st, unchanged_since("app/a", 4)));
        assert!(holds(&view, &mut st, unchanged_since("app/b", 4)));
        entry(&mut view, &mut st, &[only(vec![del("app", true)])]);
        assert!(!holds(&view, &mut st, unchanged_since("app/b", 5)));
        // A failed compare writes nothing; the failure branch runs.
        let (out, changes) =
            run(&view, &mut st, &[req(vec![unchanged_since("app", 4)], vec![put("app/c", "1")], vec![put("no", "1")])]);
        assert_eq!(out[0].outcomes, [Outcome::Put("no".into(), 7)]);
        assert!(!changes.entries.contains_key("app/c"));
    }

    #[test]
    fn a_prefix_compare_sees_the_entrys_own_earlier_requests() {
        let (view, mut st) = with_keys(&["app/a"]);
        let (out, _) = run(
            &view,
            &mut st,
            &[
                req(vec![unchanged_since("app", 1)], vec![put("x", "1")], vec![]),
                only(vec![del("app/a", false)]),
                req(vec![unchanged_since("app", 1)], vec![put("y", "1")], vec![]),
                req(vec![unchanged_since("app", 3)], vec![put("z", "1")], vec![]),
            ],
        );
        let held: Vec<bool> = out.iter().map(|r| r.succeeded).collect();
        assert_eq!(held, [true, true, false, true], "the delete at 3 counts for the requests after it");
    }

    #[test]
    fn a_prefix_compare_is_decided_by_the_state_not_by_a_history() {
        // IMPORTANT: every member must decide alike, whatever history it
        // kept: a compare on a revision long past is still decided.
        let (mut view, mut st) = with_keys(&["app/a", "app/b", "app/c"]);
        let holds = |view: &MemView, st: &mut State, cmp: Cmp| {
            let (out, _) = run(view, st, &[req(vec![cmp], vec![], vec![])]);
            out[0].succeeded
        };
        assert!(!holds(&view, &mut st, unchanged_since("app", 1)), "app/b and app/c came after 1");
        assert!(holds(&view, &mut st, unchanged_since("app/a", 1)));
        entry(&mut view, &mut st, &[only(vec![del("app/b/x", false), del("app/c", false)])]);
        assert_eq!(st.revision, 4);
        assert!(!holds(&view, &mut st, unchanged_since("app", 3)), "the delete of app/c at 4");
        assert!(!holds(&view, &mut st, unchanged_since("app/c", 3)));
        assert!(holds(&view, &mut st, unchanged_since("app/b", 3)), "deleting nothing changes nothing");
        assert!(holds(&view, &mut st, unchanged_since("app", 4)));
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), ["", "a", "a/b", "a/b/c"]);
        assert_eq!(ancestors("a").collect::<Vec<_>>(), ["", "a"]);
    }

    #[test]
    fn the_requests_of_one_entry_see_each_others_writes() {
        let (view, mut st) = with_keys(&["old"]);
        let (out, changes) = run(
            &view,
            &mut st,
            &[
                only(vec![put("k", "1"), del("old", false)]),
                req(vec![mod_rev("k", 2), exists("old", false)], vec![put("k", "2")], vec![]),
                only(vec![del("k", false)]),
                req(vec![exists("k", false), mod_rev("old", 0)], vec![put("k", "3")], vec![]),
            ],
        );
        assert!(out.iter().all(|r| r.succeeded));
        assert_eq!(out.iter().map(|r| r.revision).collect::<Vec<_>>(), [2, 3, 4, 5]);
        let k = changes.entries.get("k").cloned().flatten().expect("k");
        assert_eq!((k.create_revision, k.version, k.value.as_slice()), (5, 1, b"3".as_slice()), "created again");
        let events: Vec<(u64, u32, &str)> = changes.events.iter().map(|(r, s, e)| (*r, *s, e.key.as_str())).collect();
        assert_eq!(events, [(2, 0, "k"), (2, 1, "old"), (3, 0, "k"), (4, 0, "k"), (5, 0, "k")]);
    }
}
