//! One suite of scenarios every [`Cluster`] engine must pass alike: the
//! in-memory [`crate::FakeCluster`] in unit tests, and the real cluster
//! through `kvfs::Remote` in the integration tests. A fake no such suite
//! keeps honest drifts from what it stands for.
//!
//! The suite panics with what differed. It writes only below the prefix it
//! is given, which must be empty, and judges revisions relative to the one
//! it starts at, so a cluster may hold other data; but nothing else may
//! write while it runs (it checks that each write takes exactly one
//! revision).

use std::sync::mpsc;
use std::time::Duration;

use kv_client::{
    key_in_prefix, Attrs, Compare, EntryInfo, EventType, Kind, Meta, OpResult, PutOptions, TxnOp, TxnRequest,
};

use crate::cluster::{Batch, Cluster, Events, Failure};

/// How long the suite waits for one batch of a watch.
const WAIT: Duration = Duration::from_secs(10);

/// Runs every scenario but compaction (see [`compaction`]) below `prefix`.
pub fn run(c: &dyn Cluster, prefix: &str) {
    let mut s = Suite::start(c, prefix);
    s.puts();
    s.put_conditions();
    s.txn_compares();
    s.rename_is_one_revision();
    s.recursive_delete();
    s.dir_times();
    s.delete();
    s.paging();
    s.events();
}

/// A watch from before a compacted revision fails with
/// [`Failure::Compacted`], and one from the current revision still works.
/// `compact(rev)` must return once the history up to `rev` is gone (for the
/// fake, `FakeCluster::compact`; for kvd, writes below `prefix` until
/// `revision - history_revisions >= rev`). It needs an empty prefix of its
/// own (not the one given to [`run`]).
pub fn compaction(c: &dyn Cluster, prefix: &str, compact: &dyn Fn(u64)) {
    let before = empty(c, prefix);
    let key = format!("{}/compaction/k", prefix.trim_end_matches('/'));
    ok(c.put(&key, b"1".to_vec(), &PutOptions::default()), "put");
    let r2 = ok(c.put(&key, b"2".to_vec(), &PutOptions::default()), "put");
    compact(r2);
    match c.watch(prefix, before) {
        Err(Failure::Compacted) => {}
        Err(e) => panic!("a watch from compacted revision {before} failed with {e:?}, not Compacted"),
        Ok(ev) => match first(ev) {
            Err(Failure::Compacted) => {}
            other => panic!("a watch from compacted revision {before} answered {other:?}, not Compacted"),
        },
    }
    let now = ok(c.list_page(prefix, None, 1), "listing").revision;
    let ev = ok(c.watch(prefix, now), "a watch from the current revision after a compaction");
    let r = ok(c.put(&key, b"3".to_vec(), &PutOptions::default()), "put");
    let got = collect(ev, 1, "the watch after a compaction");
    assert_eq!(got[0].revision, r, "the watch after a compaction sees the next write");
}

/// Expected events of one revision: (type, key).
type Expected = (u64, Vec<(EventType, String)>);

struct Suite<'a> {
    c: &'a dyn Cluster,
    prefix: String,
    start: u64,
    /// The revision the suite's last write made.
    rev: u64,
    /// Every revision the suite made, with its events.
    log: Vec<Expected>,
    /// A watch opened before the first write.
    live: Option<Box<dyn Events>>,
}

fn ok<T>(r: Result<T, Failure>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:?}"))
}

fn opts(attrs: Attrs) -> PutOptions {
    PutOptions { attrs, ..PutOptions::default() }
}

fn del(key: &str, recursive: bool) -> TxnOp {
    TxnOp::Delete { key: key.to_owned(), recursive }
}

fn put_result(key: &str, rev: u64) -> OpResult {
    OpResult { op: "put".into(), key: key.to_owned(), mod_revision: Some(rev), deleted: None }
}

fn del_result(key: &str, n: u64) -> OpResult {
    OpResult { op: "delete".into(), key: key.to_owned(), mod_revision: None, deleted: Some(n) }
}

fn cmp_rev(key: &str, rev: u64) -> Compare {
    Compare::key_at(key, rev)
}

fn cmp_exists(key: &str, exists: bool) -> Compare {
    Compare::key_exists(key, exists)
}

/// The first answer of a stream, with a deadline.
fn first(ev: Box<dyn Events>) -> Result<Option<Batch>, Failure> {
    let (tx, rx) = mpsc::channel();
    let mut ev = ev;
    std::thread::spawn(move || {
        let _ = tx.send(ev.next());
    });
    rx.recv_timeout(WAIT).unwrap_or_else(|_| panic!("a watch answered nothing within {WAIT:?}"))
}

/// The next `n` batches of a stream, each with a deadline.
fn collect(ev: Box<dyn Events>, n: usize, what: &str) -> Vec<Batch> {
    let (tx, rx) = mpsc::channel();
    let mut ev = ev;
    // NOTE: a thread, so that a stream that never answers fails the suite
    // instead of hanging it; it ends after `n` batches.
    std::thread::spawn(move || {
        for _ in 0..n {
            let r = ev.next();
            let go_on = matches!(r, Ok(Some(_)));
            if tx.send(r).is_err() || !go_on {
                return;
            }
        }
    });
    (0..n)
        .map(|i| match rx.recv_timeout(WAIT) {
            Ok(Ok(Some(b))) => b,
            Ok(other) => panic!("{what}: batch {i} of {n} was {other:?}"),
            Err(_) => panic!("{what}: batch {i} of {n} did not come within {WAIT:?}"),
        })
        .collect()
}

/// The revision now; panics unless nothing lies below `prefix`.
fn empty(c: &dyn Cluster, prefix: &str) -> u64 {
    assert!(!prefix.trim_end_matches('/').is_empty(), "the suite needs a prefix of its own, not the whole keyspace");
    let page = ok(c.list_page(prefix, None, 1), "listing the suite's prefix");
    if let Some(e) = page.entries.first() {
        panic!("the suite needs an empty prefix; {prefix:?} holds {:?}", e.key);
    }
    page.revision
}

impl<'a> Suite<'a> {
    fn start(c: &'a dyn Cluster, prefix: &str) -> Suite<'a> {
        let start = empty(c, prefix);
        let live = Some(ok(c.watch(prefix, start), "a watch from the start"));
        let prefix = prefix.trim_end_matches('/').to_owned();
        Suite { c, prefix, start, rev: start, log: Vec::new(), live }
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }

    /// The store's revision now.
    fn current(&self) -> u64 {
        ok(self.c.list_page(&self.prefix, None, 1), "listing").revision
    }

    /// Checks that nothing was written since the suite's last write.
    fn unchanged(&self, what: &str) {
        assert_eq!(self.current(), self.rev, "{what} changed the revision");
    }

    /// Records a write that answered `rev` with these events.
    fn wrote(&mut self, rev: u64, events: Vec<(EventType, String)>, what: &str) {
        assert_eq!(rev, self.rev + 1, "{what}: each write takes the next revision");
        self.rev = rev;
        self.log.push((rev, events));
    }

    fn put(&mut self, key: &str, value: &[u8], o: &PutOptions) -> u64 {
        let rev = ok(self.c.put(key, value.to_vec(), o), &format!("put {key}"));
        self.wrote(rev, vec![(EventType::Put, key.to_owned())], &format!("put {key}"));
        rev
    }

    /// A put of a new key right in directory entry `dir`: a change of the
    /// directory too (see [`Suite::dir_times`]).
    fn put_new_in(&mut self, key: &str, value: &[u8], dir: &str) -> u64 {
        let rev = ok(self.c.put(key, value.to_vec(), &PutOptions::default()), &format!("put {key}"));
        self.wrote(
            rev,
            vec![(EventType::Put, key.to_owned()), (EventType::Put, dir.to_owned())],
            &format!("put {key}"),
        );
        rev
    }

    fn txn(&mut self, t: &TxnRequest, what: &str) -> kv_client::TxnResponse {
        ok(self.c.txn(t), what)
    }

    /// The entry at `key`, read by a listing of its parent.
    fn entry(&self, key: &str) -> Option<EntryInfo> {
        let parent = key.rsplit_once('/').map_or("", |(p, _)| p);
        kv_client::pages(|after| self.c.list_page(parent, after, 1000))
            .find_map(|page| ok(page, "listing").entries.into_iter().find(|e| e.key == key))
    }

    fn meta(&self, key: &str) -> Meta {
        self.entry(key).unwrap_or_else(|| panic!("{key} is missing")).meta
    }

    fn conflict(&self, r: Result<u64, Failure>, what: &str) {
        assert_eq!(r, Err(Failure::Conflict), "{what}");
        self.unchanged(what);
    }

    fn puts(&mut self) {
        let a = self.key("put/a");
        let r1 = self.put(&a, b"hello", &PutOptions::default());
        let e = self.entry(&a).unwrap_or_else(|| panic!("{a} is missing after its put"));
        assert_eq!(e.value_bytes(), Some(b"hello".to_vec()));
        assert!(e.meta.mtime_ns > 0, "a put without mtime takes the write's time");
        // (the times apart, checked below)
        let want = |mode, uid, mtime_ns, mod_revision, version, size, m: &Meta| Meta {
            kind: Kind::File,
            mode,
            uid,
            gid: 0,
            mtime_ns,
            create_revision: r1,
            mod_revision,
            version,
            size,
            atime_ns: m.atime_ns,
            ctime_ns: m.ctime_ns,
        };
        let m = e.meta;
        assert_eq!(m, want(0o644, 0, m.mtime_ns, r1, 1, 5, &m), "a new file's defaults");
        assert_eq!((m.atime_ns, m.ctime_ns), (Some(m.mtime_ns), Some(m.mtime_ns)), "a new file's times are one");
        let attrs = Attrs { mode: Some(0o600), uid: Some(1000), mtime_ns: Some(42), ..Attrs::default() };
        let r2 = self.put(&a, b"hi", &opts(attrs));
        let m2 = self.meta(&a);
        assert_eq!(m2, want(0o600, 1000, 42, r2, 2, 2, &m2), "given attributes are set, others kept");
        assert_eq!(m2.atime_ns, m.atime_ns, "the atime is kept");
        assert!(m2.ctime() > m.ctime(), "a write changes the ctime");
        let r3 = self.put(&a, b"", &PutOptions::default());
        let m = self.meta(&a);
        assert_eq!(m, want(0o600, 1000, m.mtime_ns, r3, 3, 0, &m), "attributes left out are kept");
        assert!(m.mtime_ns > 42, "mtime left out of a write of a value is the write's time, not kept");
        // A put of attributes alone: the content did not change, so the
        // mtime stays; the ctime is the write's time.
        let attrs_only = TxnOp::Put {
            key: a.clone(),
            value: None,
            value_base64: None,
            kind: None,
            mode: Some(0o640),
            uid: None,
            gid: None,
            mtime_ns: None,
            atime_ns: Some(-7),
        };
        let t = TxnRequest { success: vec![attrs_only], ..TxnRequest::default() };
        let r = self.txn(&t, "a put of attributes alone");
        self.wrote(r.revision, vec![(EventType::Put, a.clone())], "a put of attributes alone");
        let m4 = self.meta(&a);
        assert_eq!((m4.mode, m4.size, m4.mtime_ns, m4.atime_ns), (0o640, 0, m.mtime_ns, Some(-7)), "attributes alone");
        assert!(m4.ctime() > m.ctime(), "a put of attributes alone changes the ctime");

        let d = self.key("put/d");
        self.put(&d, b"", &opts(Attrs { kind: Some(Kind::Dir), ..Attrs::default() }));
        assert_eq!((self.meta(&d).kind, self.meta(&d).mode), (Kind::Dir, 0o755), "a new dir's defaults");
        self.put(&d, b"", &opts(Attrs { mode: Some(0o700), ..Attrs::default() }));
        assert_eq!((self.meta(&d).kind, self.meta(&d).mode), (Kind::Dir, 0o700), "a put without kind keeps it");
        let l = self.key("put/l");
        self.put(&l, b"target", &opts(Attrs { kind: Some(Kind::Symlink), ..Attrs::default() }));
        let m = self.meta(&l);
        assert_eq!((m.kind, m.mode, m.size), (Kind::Symlink, 0o777, 6), "a new symlink's defaults");
        // NOTE: the store keeps no tree: a key below a file is not refused.
        self.put(&self.key("put/a/below"), b"x", &PutOptions::default());

        let refused: [(String, Vec<u8>, Attrs, Failure); 5] = [
            (self.key("put/m"), b"x".to_vec(), Attrs { mode: Some(0o10000), ..Attrs::default() }, invalid(false)),
            (self.key("put/dv"), b"x".to_vec(), Attrs { kind: Some(Kind::Dir), ..Attrs::default() }, invalid(false)),
            (self.key("put/ls"), Vec::new(), Attrs { kind: Some(Kind::Symlink), ..Attrs::default() }, invalid(false)),
            (self.key("put//x"), b"x".to_vec(), Attrs::default(), invalid(false)),
            (self.key(&"n".repeat(300)), b"x".to_vec(), Attrs::default(), invalid(true)),
        ];
        for (key, value, attrs, want) in refused {
            assert_eq!(self.c.put(&key, value, &opts(attrs.clone())), Err(want), "put {key:?} with {attrs:?}");
            self.unchanged("a refused put");
        }
    }

    fn put_conditions(&mut self) {
        let k = self.key("cond/k");
        let only = PutOptions { create_only: true, ..PutOptions::default() };
        let if_match = |rev| PutOptions { if_match: Some(rev), ..PutOptions::default() };
        let r1 = self.put(&k, b"1", &only);
        self.conflict(self.c.put(&k, b"2".to_vec(), &only), "create_only on an existing key");
        self.conflict(self.c.put(&k, b"2".to_vec(), &if_match(0)), "if_match 0 (absent) on an existing key");
        self.conflict(self.c.put(&k, b"2".to_vec(), &if_match(r1 + 1)), "if_match another revision");
        assert_eq!(self.entry(&k).and_then(|e| e.value_bytes()), Some(b"1".to_vec()), "a conflict writes nothing");
        let r2 = self.put(&k, b"2", &if_match(r1));
        assert_eq!(self.meta(&k).version, 2);
        self.conflict(self.c.put(&k, b"3".to_vec(), &if_match(r1)), "if_match a stale revision");
        self.conflict(self.c.put(&self.key("cond/none"), b"x".to_vec(), &if_match(r2)), "if_match on an absent key");
        self.put(&self.key("cond/new"), b"x", &if_match(0));

        // A put resent with its request id (after an unknown outcome) is
        // answered as the first time and applied once.
        let id = format!("conformance-{}-{}", std::process::id(), self.rev);
        let resend = PutOptions { request_id: Some(id), ..only };
        let once = self.key("cond/once");
        let r = self.put(&once, b"1", &resend);
        assert_eq!(self.c.put(&once, b"1".to_vec(), &resend), Ok(r), "a resent put answers its first outcome");
        self.unchanged("a resent put");
    }

    fn txn_compares(&mut self) {
        let (x, y, z) = (self.key("txn/x"), self.key("txn/y"), self.key("txn/z"));
        let rx = self.put(&x, b"1", &PutOptions::default());
        let mut t = TxnRequest {
            compare: vec![cmp_rev(&x, rx), cmp_exists(&y, false)],
            success: vec![TxnOp::put(&y, "2")],
            failure: vec![],
        };
        let r = self.txn(&t, "a txn whose compares hold");
        assert!(r.succeeded, "compares that hold");
        assert_eq!(r.results, vec![put_result(&y, self.rev + 1)]);
        self.wrote(r.revision, vec![(EventType::Put, y.clone())], "a txn");
        let r = self.txn(&t, "a txn whose compare fails");
        assert!(!r.succeeded, "y exists now");
        assert_eq!((r.revision, r.results.len()), (self.rev, 0), "a failed txn without failure ops changes nothing");
        self.unchanged("a failed txn");
        t.failure = vec![TxnOp::put(&z, "f")];
        let r = self.txn(&t, "a txn that runs its failure ops");
        assert!(!r.succeeded);
        assert_eq!(r.results, vec![put_result(&z, self.rev + 1)], "the failure ops ran");
        self.wrote(r.revision, vec![(EventType::Put, z.clone())], "failure ops");
        assert_eq!(self.entry(&y).and_then(|e| e.value_bytes()), Some(b"2".to_vec()), "success ops did not run");

        let missing = self.key("txn/missing");
        for (c, holds) in [
            (cmp_rev(&missing, 0), true),
            (cmp_exists(&missing, true), false),
            (cmp_rev(&x, 0), false),
            (cmp_exists(&x, true), true),
            (cmp_rev(&x, rx + 1), false),
        ] {
            let t = TxnRequest { compare: vec![c.clone()], ..TxnRequest::default() };
            let r = self.txn(&t, "a txn without ops");
            assert_eq!((r.succeeded, r.revision), (holds, self.rev), "{c:?} (mod_revision 0 means absent)");
        }
        self.unchanged("txns without ops");

        let w = self.key("txn/w");
        let t = TxnRequest { success: vec![TxnOp::put(&w, "1"), TxnOp::put(&w, "2")], ..TxnRequest::default() };
        let r = self.txn(&t, "a txn writing one key twice");
        let rev = self.rev + 1;
        assert_eq!(r.results, vec![put_result(&w, rev), put_result(&w, rev)]);
        self.wrote(r.revision, vec![(EventType::Put, w.clone()), (EventType::Put, w.clone())], "two puts of a key");
        let m = self.meta(&w);
        assert_eq!((m.create_revision, m.mod_revision, m.version), (rev, rev, 2), "both puts count");

        let t = TxnRequest { success: vec![del(&missing, false)], ..TxnRequest::default() };
        let r = self.txn(&t, "a txn deleting a missing key");
        assert!(r.succeeded);
        assert_eq!((r.revision, r.results.clone()), (self.rev, vec![del_result(&missing, 0)]), "nothing deleted");
        self.unchanged("a txn delete of a missing key");
    }

    fn rename_is_one_revision(&mut self) {
        let (a, b) = (self.key("mv/a"), self.key("mv/b"));
        let ra = self.put(&a, b"A", &PutOptions::default());
        let rb = self.put(&b, b"B", &PutOptions::default());
        let t = TxnRequest {
            compare: vec![cmp_rev(&a, ra), cmp_rev(&b, rb)],
            success: vec![del(&a, false), del(&b, false), TxnOp::put(&b, "A")],
            failure: vec![],
        };
        let r = self.txn(&t, "a rename");
        let rev = self.rev + 1;
        assert!(r.succeeded);
        assert_eq!(r.results, vec![del_result(&a, 1), del_result(&b, 1), put_result(&b, rev)]);
        let events = vec![(EventType::Delete, a.clone()), (EventType::Delete, b.clone()), (EventType::Put, b.clone())];
        self.wrote(r.revision, events, "a rename");
        assert_eq!(self.entry(&a), None, "the source is gone");
        let e = self.entry(&b).unwrap_or_else(|| panic!("{b} is missing after the rename"));
        assert_eq!(e.value_bytes(), Some(b"A".to_vec()));
        assert_eq!((e.meta.create_revision, e.meta.version), (rev, 1), "deleted then put: a new entry");
    }

    /// A directory entry's mtime and ctime move when a key is made in it
    /// or removed from it, in the same revision, after its entries' events;
    /// not when one in it is overwritten, nor for a directory only implied
    /// by keys below it.
    fn dir_times(&mut self) {
        let d = self.key("dt/d");
        self.put(&d, b"", &opts(Attrs { kind: Some(Kind::Dir), mtime_ns: Some(5), ..Attrs::default() }));
        let before = self.meta(&d);
        assert_eq!(before.mtime_ns, 5);
        let f = self.key("dt/d/f");
        let r = self.put_new_in(&f, b"1", &d);
        let made = self.meta(&d);
        assert_eq!((made.mod_revision, made.version), (r, before.version + 1), "the directory's write");
        assert!(made.mtime_ns > 5 && made.ctime() > before.ctime(), "the directory's times: {made:?}");
        assert_eq!(made.ctime_ns, Some(made.mtime_ns), "mtime and ctime are the write's time");
        assert_eq!((made.mode, made.kind, made.atime_ns), (before.mode, Kind::Dir, before.atime_ns), "the rest stays");
        self.put(&f, b"2", &PutOptions::default());
        assert_eq!(self.meta(&d), made, "an overwrite changes no directory");
        let t = TxnRequest { success: vec![del(&f, false)], ..TxnRequest::default() };
        let r = self.txn(&t, "a delete in a directory");
        self.wrote(r.revision, vec![(EventType::Delete, f.clone()), (EventType::Put, d.clone())], "a delete");
        let removed = self.meta(&d);
        assert!(removed.mod_revision == r.revision && removed.ctime() > made.ctime(), "a removal: {removed:?}");
        // A directory made with its entries in one write is written once.
        let (d2, g) = (self.key("dt/d2"), self.key("dt/d2/g"));
        let t = TxnRequest { success: vec![dir_put(&d2), TxnOp::put(&g, "x")], ..TxnRequest::default() };
        let r = self.txn(&t, "a directory made with an entry");
        self.wrote(r.revision, vec![(EventType::Put, d2.clone()), (EventType::Put, g.clone())], "mkdir and create");
        // An implied directory has no entry to write (the watches check
        // that the put is its only event).
        let i = self.key("dt/implied/x");
        self.put(&i, b"x", &PutOptions::default());
    }

    fn recursive_delete(&mut self) {
        let d = self.key("rm/d");
        self.put(&d, b"", &opts(Attrs { kind: Some(Kind::Dir), ..Attrs::default() }));
        let below = [self.key("rm/d/1"), self.key("rm/d/2/3")];
        let beside = [self.key("rm/d.x"), self.key("rm/d0")];
        self.put_new_in(&below[0], b"v", &d);
        for k in below[1..].iter().chain(&beside) {
            self.put(k, b"v", &PutOptions::default());
        }
        let t = TxnRequest { success: vec![del(&d, true)], ..TxnRequest::default() };
        let r = self.txn(&t, "a recursive delete");
        assert_eq!(r.results, vec![del_result(&d, 3)], "the key and what lies below it, nothing beside");
        let mut events = vec![(EventType::Delete, d.clone())];
        events.extend(below.iter().map(|k| (EventType::Delete, k.clone())));
        self.wrote(r.revision, events, "a recursive delete");
        for k in &beside {
            assert!(self.entry(k).is_some(), "{k} is not below {d}");
        }
        let r = self.txn(&t, "a recursive delete of nothing");
        assert_eq!((r.succeeded, r.revision, r.results.clone()), (true, self.rev, vec![del_result(&d, 0)]));
    }

    fn delete(&mut self) {
        let k = self.key("del/k");
        assert_eq!(self.c.delete(&k), Err(Failure::NotFound), "delete of a missing key");
        self.unchanged("a delete of a missing key");
        self.put(&k, b"v", &PutOptions::default());
        let r = ok(self.c.delete(&k), "delete");
        self.wrote(r, vec![(EventType::Delete, k.clone())], "delete");
        assert_eq!(self.entry(&k), None);
        assert_eq!(self.c.delete(&k), Err(Failure::NotFound), "delete of a deleted key");
    }

    fn paging(&mut self) {
        let dir = self.key("page");
        self.put(&dir, b"", &opts(Attrs { kind: Some(Kind::Dir), ..Attrs::default() }));
        self.put(&self.key("page0"), b"beside", &PutOptions::default());
        let keys: Vec<String> = (0..7).map(|i| self.key(&format!("page/{i}"))).collect();
        for k in &keys {
            self.put_new_in(k, k.as_bytes(), &dir);
        }
        for limit in [1, 2, 3, 7, 8] {
            let (mut seen, mut after, mut pages) = (Vec::new(), None::<String>, 0);
            loop {
                let p = ok(self.c.list_page(&dir, after.as_deref(), limit), "a page");
                pages += 1;
                assert!(pages <= keys.len() + 1, "limit {limit}: the listing does not end");
                assert_eq!(p.revision, self.rev, "a page carries the current revision");
                assert!(
                    !p.entries.is_empty() && p.entries.len() <= limit,
                    "limit {limit}: {} entries",
                    p.entries.len()
                );
                for e in &p.entries {
                    assert_eq!(e.value_bytes(), Some(e.key.as_bytes().to_vec()), "pages carry values");
                }
                seen.extend(p.entries.iter().map(|e| e.key.clone()));
                match p.next_after {
                    None => break,
                    Some(n) => {
                        assert_eq!(Some(&n), seen.last(), "next_after is the page's last key");
                        after = Some(n);
                    }
                }
            }
            assert_eq!(seen, keys, "limit {limit}: everything below the prefix, once, in order");
            assert_eq!(pages, keys.len().div_ceil(limit), "limit {limit}: no empty last page");
        }
    }

    /// Every revision the suite made arrives as one batch, on the stream
    /// opened at the start and on a replay from the start; a narrower
    /// prefix sees only its own keys.
    fn events(&mut self) {
        let live = self.live.take().unwrap_or_else(|| panic!("the live watch was taken"));
        let n = self.log.len();
        check(collect(live, n, "the live watch"), &self.log, "the live watch");
        let replay = ok(self.c.watch(&self.prefix, self.start), "a replay");
        check(collect(replay, n, "a replay"), &self.log, "a replay");
        let sub = self.key("rm/d");
        let narrow: Vec<Expected> = self
            .log
            .iter()
            .map(|(r, ev)| (*r, ev.iter().filter(|(_, k)| key_in_prefix(k, &sub)).cloned().collect::<Vec<_>>()))
            .filter(|(_, ev)| !ev.is_empty())
            .collect();
        let ev = ok(self.c.watch(&sub, self.start), "a watch of a narrower prefix");
        check(collect(ev, narrow.len(), "a narrower watch"), &narrow, "a narrower watch");
    }
}

/// A put of a new directory.
fn dir_put(key: &str) -> TxnOp {
    let mut op = TxnOp::put(key, "");
    if let TxnOp::Put { kind, .. } = &mut op {
        *kind = Some(Kind::Dir);
    }
    op
}

fn invalid(too_long: bool) -> Failure {
    Failure::Invalid { too_long }
}

/// Compares batches with the expected revisions and events.
fn check(got: Vec<Batch>, want: &[Expected], what: &str) {
    for (b, (rev, events)) in got.iter().zip(want) {
        let kinds: Vec<(EventType, String)> = b.events.iter().map(|e| (e.kind, e.key.clone())).collect();
        assert_eq!((b.revision, &kinds), (*rev, events), "{what}: one batch per revision, its events in order");
        for e in &b.events {
            assert_eq!(e.revision, b.revision, "{what}: an event carries its batch's revision");
            match (e.kind, &e.entry) {
                (EventType::Put, Some(entry)) => {
                    assert_eq!((&entry.key, entry.meta.mod_revision), (&e.key, b.revision), "{what}: a put's entry");
                    assert!(entry.value_bytes().is_some(), "{what}: a put's entry carries its value");
                }
                (EventType::Delete, None) => {}
                (kind, entry) => panic!("{what}: a {kind:?} event of {} with entry {entry:?}", e.key),
            }
        }
    }
}
