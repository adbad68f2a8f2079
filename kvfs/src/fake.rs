//! An in-memory [`Cluster`] with kvd's semantics, and test controls to make
//! it fail, stall or lose answers, so the mount's rules are tested without
//! kvd or FUSE. [`crate::conformance`] runs on it and on the real cluster,
//! which keeps the two alike.
//!
//! What it copies from kvd (`kvd/src/sm.rs`, `kvd/src/api.rs`): every write
//! is a transaction; a transaction that changes anything takes the next
//! revision (one for all its changes, events in the order of its operations),
//! one that changes nothing (a failed compare, a delete of a missing key)
//! leaves the revision alone; attributes a put leaves out are kept from the
//! existing entry or take the kind's defaults; nothing refuses a put over a
//! directory or under a file; a put resent with the request id of one applied
//! before is answered with that one's answer and not applied again. What it
//! leaves out: the dedup window (ids are kept forever), tokens, and
//! compaction by history length (tests call [`FakeCluster::compact`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use kv_client::{
    decode_value, key_in_prefix, normalize_prefix, validate_key, Attrs, EntryInfo, EventType, KeyError, Kind, Meta,
    OpResult, PutOptions, TxnOp, TxnRequest, TxnResponse, WatchEvent,
};

use crate::cluster::{Batch, Cluster, Events, Failure, Page, Written};

/// kvd's default largest value, bytes (`max_value_size`).
const DEFAULT_MAX_VALUE: u64 = 1 << 20;
/// Most compares and operations in one transaction (kvd's `MAX_TXN_OPS`).
const MAX_TXN_OPS: usize = 4096;
/// Largest page of a listing (kvd's `LIST_MAX_LIMIT`).
const LIST_MAX_LIMIT: usize = 100_000;

/// A condition, checked (kvd's `Cmp`).
enum Cmp {
    ModRevision(String, u64),
    Exists(String, bool),
}

/// An operation, checked (kvd's `Op`).
enum Op {
    Put { key: String, value: Option<Vec<u8>>, attrs: Attrs },
    Delete { key: String, recursive: bool },
}

/// A transaction, checked (kvd's `Txn`).
struct Txn {
    compare: Vec<Cmp>,
    success: Vec<Op>,
    failure: Vec<Op>,
}

/// An entry as stored.
#[derive(Debug, Clone)]
struct Stored {
    meta: Meta,
    value: Vec<u8>,
}

impl Stored {
    fn info(&self, key: &str) -> EntryInfo {
        EntryInfo::new(key.to_owned(), self.meta.clone(), Some(&self.value))
    }
}

#[derive(Debug)]
struct State {
    data: BTreeMap<String, Stored>,
    revision: u64,
    /// Revisions up to this one have no history left.
    compact: u64,
    /// Every revision after `compact`, with all its events, ascending.
    history: VecDeque<Batch>,
    /// Raised by [`FakeCluster::end_streams`].
    epoch: u64,
    /// Failures the next calls answer with, in order.
    failing: VecDeque<Failure>,
    /// Writes still to apply whose answer is lost.
    lost: u32,
    /// Answers of applied puts, by request id.
    answered: HashMap<String, TxnResponse>,
    delay: Duration,
    unavailable: bool,
    max_value: u64,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Signalled on every new revision, compaction and [`FakeCluster::end_streams`].
    changed: Condvar,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // NOTE: a panic while the lock was held (a failing test thread)
        // leaves the state as consistent as any step leaves it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An in-memory cluster; share it with `Arc` and write "from elsewhere" by
/// calling its [`Cluster`] methods directly.
#[derive(Debug)]
pub struct FakeCluster {
    inner: Arc<Inner>,
}

impl Default for FakeCluster {
    fn default() -> Self {
        FakeCluster::new()
    }
}

fn invalid(e: KeyError) -> Failure {
    Failure::Invalid { too_long: e.is_too_long() }
}

/// kvd's `check_put`: the attributes against the value.
fn check_put(value: Option<&[u8]>, attrs: &Attrs) -> Result<(), Failure> {
    let bad = attrs.mode.is_some_and(|m| m > 0o7777) || attrs.kind.is_some_and(|k| k.check_put(value).is_err());
    if bad {
        return Err(Failure::Invalid { too_long: false });
    }
    Ok(())
}

/// kvd's `delete_target`: a key, or with `recursive` a prefix (normalized).
fn delete_target(key: &str, recursive: bool) -> Result<String, Failure> {
    if recursive {
        return normalize_prefix(key).map(str::to_owned).map_err(invalid);
    }
    validate_key(key).map_err(invalid)?;
    Ok(key.to_owned())
}

/// kvd's `convert_txn`: checks every compare and operation.
fn check_txn(t: &TxnRequest, max_value: u64) -> Result<Txn, Failure> {
    // NOTE: kvd bounds the body it reads; the client sends it as JSON.
    let body = serde_json::to_vec(t).map_err(|_| Failure::Invalid { too_long: false })?;
    if body.len() as u64 > 16 * max_value {
        return Err(Failure::TooLarge);
    }
    if t.compare.len() + t.success.len() + t.failure.len() > MAX_TXN_OPS {
        return Err(Failure::Invalid { too_long: false });
    }
    let mut compare = Vec::with_capacity(t.compare.len());
    for c in &t.compare {
        // NOTE: kvfs sends no prefix compare; the fake refuses one.
        if c.prefix.is_some() || c.unchanged_since.is_some() {
            return Err(Failure::Invalid { too_long: false });
        }
        validate_key(&c.key).map_err(invalid)?;
        compare.push(match (c.mod_revision, c.exists) {
            (Some(rev), None) => Cmp::ModRevision(c.key.clone(), rev),
            (None, Some(e)) => Cmp::Exists(c.key.clone(), e),
            _ => return Err(Failure::Invalid { too_long: false }),
        });
    }
    let ops = |list: &[TxnOp]| -> Result<Vec<Op>, Failure> {
        list.iter()
            .map(|op| match op {
                TxnOp::Put { key, value, value_base64, kind, mode, uid, gid, mtime_ns, atime_ns } => {
                    validate_key(key).map_err(invalid)?;
                    let value = decode_value(value.as_deref(), value_base64.as_deref())
                        .map_err(|_| Failure::Invalid { too_long: false })?;
                    if value.as_ref().is_some_and(|v| v.len() as u64 > max_value) {
                        return Err(Failure::TooLarge);
                    }
                    let attrs = Attrs {
                        kind: *kind,
                        mode: *mode,
                        uid: *uid,
                        gid: *gid,
                        mtime_ns: *mtime_ns,
                        atime_ns: *atime_ns,
                    };
                    check_put(value.as_deref(), &attrs)?;
                    Ok(Op::Put { key: key.clone(), value, attrs })
                }
                TxnOp::Delete { key, recursive } => {
                    Ok(Op::Delete { key: delete_target(key, *recursive)?, recursive: *recursive })
                }
            })
            .collect()
    };
    Ok(Txn { compare, success: ops(&t.success)?, failure: ops(&t.failure)? })
}

impl State {
    /// kvd's `exec`: one transaction, applied whole; one revision for all
    /// its changes, none if it changes nothing.
    fn exec(&mut self, txn: Txn) -> TxnResponse {
        let rev_of = |k: &str| self.data.get(k).map_or(0, |e| e.meta.mod_revision);
        let ok = txn.compare.iter().all(|c| match c {
            Cmp::ModRevision(k, want) => rev_of(k) == *want,
            Cmp::Exists(k, want) => (rev_of(k) != 0) == *want,
        });
        let rev = self.revision + 1;
        let now = kv_client::clock::now_ns();
        let mut events = Vec::new();
        let mut results = Vec::new();
        for op in if ok { txn.success } else { txn.failure } {
            match op {
                Op::Put { key, value, attrs } => {
                    let prev = self.data.get(&key);
                    let kept = prev.map(|p| p.meta.kind.kept_by(value.as_deref()));
                    let kind = attrs.kind.or(kept).unwrap_or(Kind::File);
                    let attrs_only = value.is_none();
                    let value = match value {
                        Some(v) => v,
                        None if !kind.holds_value() => Vec::new(),
                        None => prev.map(|p| p.value.clone()).unwrap_or_default(),
                    };
                    let meta = Meta {
                        kind,
                        mode: attrs.mode.or(prev.map(|p| p.meta.mode)).unwrap_or(kind.default_mode()),
                        uid: attrs.uid.or(prev.map(|p| p.meta.uid)).unwrap_or(0),
                        gid: attrs.gid.or(prev.map(|p| p.meta.gid)).unwrap_or(0),
                        mtime_ns: attrs
                            .mtime_ns
                            .or(prev.filter(|_| attrs_only).map(|p| p.meta.mtime_ns))
                            .unwrap_or(now),
                        create_revision: prev.map_or(rev, |p| p.meta.create_revision),
                        mod_revision: rev,
                        version: prev.map_or(1, |p| p.meta.version + 1),
                        size: value.len() as u64,
                        atime_ns: Some(attrs.atime_ns.or(prev.map(|p| p.meta.atime())).unwrap_or(now)),
                        ctime_ns: Some(now),
                    };
                    let e = Stored { meta, value };
                    events.push(WatchEvent {
                        kind: EventType::Put,
                        key: key.clone(),
                        revision: rev,
                        entry: Some(e.info(&key)),
                        prev: None,
                    });
                    self.data.insert(key.clone(), e);
                    results.push(OpResult { op: "put".into(), key, mod_revision: Some(rev), deleted: None });
                }
                Op::Delete { key, recursive } => {
                    let mut gone = Vec::new();
                    if !key.is_empty() && self.data.contains_key(&key) {
                        gone.push(key.clone());
                    }
                    if recursive {
                        let base = if key.is_empty() { String::new() } else { format!("{key}/") };
                        let below = self.data.range(base.clone()..).take_while(|(k, _)| k.starts_with(&base));
                        gone.extend(below.map(|(k, _)| k.clone()));
                    }
                    for k in &gone {
                        self.data.remove(k);
                        events.push(WatchEvent {
                            kind: EventType::Delete,
                            key: k.clone(),
                            revision: rev,
                            entry: None,
                            prev: None,
                        });
                    }
                    let deleted = Some(gone.len() as u64);
                    results.push(OpResult { op: "delete".into(), key, mod_revision: None, deleted });
                }
            }
        }
        let touched = self.touch_parents(&mut events, rev, now);
        if !events.is_empty() {
            self.revision = rev;
            self.history.push_back(Batch { revision: rev, events });
        }
        let time_ns = (self.revision == rev).then_some(now);
        TxnResponse { succeeded: ok, revision: self.revision, results, time_ns, touched }
    }

    /// kvd's touch of the directory entries a transaction made or removed
    /// keys in (txn::touch_parents): their mtime and ctime are its time, in
    /// the same revision (not for a directory it wrote itself). Returns
    /// them, with the revision each had before.
    fn touch_parents(&mut self, events: &mut Vec<WatchEvent>, rev: u64, now: i64) -> Vec<kv_client::Touched> {
        let parents = kv_client::dirs_changed(events.iter().map(|e| {
            let made_here = e.entry.as_ref().is_some_and(|i| i.meta.create_revision == rev);
            (e.key.as_str(), e.kind == EventType::Delete || !made_here, (e.kind == EventType::Put).then_some(made_here))
        }));
        let mut touched = Vec::new();
        for p in parents {
            let Some(e) = self.data.get_mut(&p).filter(|e| e.meta.kind == Kind::Dir) else { continue };
            let before = e.meta.mod_revision;
            e.meta.mtime_ns = now;
            e.meta.ctime_ns = Some(now);
            e.meta.mod_revision = rev;
            e.meta.version += 1;
            let info = e.info(&p);
            events.push(WatchEvent {
                kind: EventType::Put,
                key: p.clone(),
                revision: rev,
                entry: Some(info),
                prev: None,
            });
            touched.push(kv_client::Touched { key: p, mod_revision_before: before });
        }
        touched
    }
}

impl FakeCluster {
    /// An empty cluster at revision 0.
    pub fn new() -> FakeCluster {
        let state = State {
            data: BTreeMap::new(),
            revision: 0,
            compact: 0,
            history: VecDeque::new(),
            epoch: 0,
            failing: VecDeque::new(),
            lost: 0,
            answered: HashMap::new(),
            delay: Duration::ZERO,
            unavailable: false,
            max_value: DEFAULT_MAX_VALUE,
        };
        FakeCluster { inner: Arc::new(Inner { state: Mutex::new(state), changed: Condvar::new() }) }
    }

    /// The current revision.
    pub fn revision(&self) -> u64 {
        self.inner.lock().revision
    }

    /// One entry with its value (no failure or delay applies).
    pub fn get(&self, key: &str) -> Option<EntryInfo> {
        self.inner.lock().data.get(key).map(|e| e.info(key))
    }

    /// Drops the watch history up to `rev` (at most the current revision):
    /// a watch after an earlier revision, or a stream still behind it, fails
    /// with [`Failure::Compacted`].
    pub fn compact(&self, rev: u64) {
        let mut st = self.inner.lock();
        let rev = rev.min(st.revision);
        if rev > st.compact {
            st.compact = rev;
            st.history.retain(|b| b.revision > rev);
            self.inner.changed.notify_all();
        }
    }

    /// The next `n` calls of [`Cluster`] methods (not [`Events::next`]) fail
    /// with `failure`, after any failures queued before, and change nothing.
    pub fn fail_next(&self, n: usize, failure: Failure) {
        self.inner.lock().failing.extend(std::iter::repeat_n(failure, n));
    }

    /// The next `n` writes (put, txn, delete) that get as far as being
    /// applied are applied, but answer [`Failure::Unavailable`]: an unknown
    /// outcome.
    pub fn fail_after_apply(&self, n: u32) {
        self.inner.lock().lost += n;
    }

    /// Each [`Cluster`] call sleeps this long before anything else.
    pub fn set_delay(&self, delay: Duration) {
        self.inner.lock().delay = delay;
    }

    /// While set, every [`Cluster`] call fails with [`Failure::Unavailable`];
    /// open streams stay open (and get nothing, as nothing can be written).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.inner.lock().unavailable = unavailable;
    }

    /// Largest value a put takes (kvd's `max_value_size`, 1 MiB by default);
    /// a transaction body may be four times that.
    pub fn set_max_value(&self, bytes: u64) {
        self.inner.lock().max_value = bytes;
    }

    /// Every stream open now answers `Ok(None)` once (as a broken
    /// connection does), then goes on from where it was.
    pub fn end_streams(&self) {
        self.inner.lock().epoch += 1;
        self.inner.changed.notify_all();
    }

    /// The start of every call: the delay, then queued failures, then
    /// unavailability.
    fn enter(&self) -> Result<MutexGuard<'_, State>, Failure> {
        let delay = self.inner.lock().delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut st = self.inner.lock();
        if let Some(f) = st.failing.pop_front() {
            return Err(f);
        }
        if st.unavailable {
            return Err(Failure::Unavailable);
        }
        Ok(st)
    }

    /// Applies a checked transaction, unless one with request id `id` was
    /// applied before; the answer, unless it is lost.
    fn apply(&self, txn: Txn, id: Option<&str>) -> Result<TxnResponse, Failure> {
        let mut st = self.enter()?;
        let before = st.revision;
        let r = match id.and_then(|id| st.answered.get(id)) {
            Some(r) => r.clone(),
            None => {
                let r = st.exec(txn);
                if let Some(id) = id {
                    st.answered.insert(id.to_owned(), r.clone());
                }
                r
            }
        };
        if st.revision != before {
            self.inner.changed.notify_all();
        }
        if st.lost > 0 {
            st.lost -= 1;
            return Err(Failure::Unavailable);
        }
        Ok(r)
    }
}

impl Cluster for FakeCluster {
    fn put(&self, key: &str, value: Vec<u8>, opts: &PutOptions) -> Result<u64, Failure> {
        self.put_at(key, value, opts).map(|w| w.revision)
    }

    fn put_at(&self, key: &str, value: Vec<u8>, opts: &PutOptions) -> Result<Written, Failure> {
        validate_key(key).map_err(invalid)?;
        let max = self.inner.lock().max_value;
        if value.len() as u64 > max {
            return Err(Failure::TooLarge);
        }
        check_put(Some(&value), &opts.attrs)?;
        let mut compare = Vec::new();
        if let Some(rev) = opts.if_match {
            compare.push(Cmp::ModRevision(key.to_owned(), rev));
        }
        if opts.create_only {
            compare.push(Cmp::Exists(key.to_owned(), false));
        }
        let op = Op::Put { key: key.to_owned(), value: Some(value), attrs: opts.attrs.clone() };
        let r = self.apply(Txn { compare, success: vec![op], failure: Vec::new() }, opts.request_id.as_deref())?;
        if !r.succeeded {
            return Err(Failure::Conflict);
        }
        Ok(Written::of(&r))
    }

    fn txn(&self, txn: &TxnRequest) -> Result<TxnResponse, Failure> {
        let max = self.inner.lock().max_value;
        self.apply(check_txn(txn, max)?, None)
    }

    fn delete(&self, key: &str) -> Result<u64, Failure> {
        self.delete_at(key).map(|w| w.revision)
    }

    fn delete_at(&self, key: &str) -> Result<Written, Failure> {
        validate_key(key).map_err(invalid)?;
        let op = Op::Delete { key: key.to_owned(), recursive: false };
        let r = self.apply(Txn { compare: Vec::new(), success: vec![op], failure: Vec::new() }, None)?;
        // NOTE: kvd answers 404 when nothing was deleted (and the revision
        // did not move).
        if r.results.first().and_then(|o| o.deleted) == Some(0) {
            return Err(Failure::NotFound);
        }
        Ok(Written::of(&r))
    }

    fn probe(&self) -> Result<(), Failure> {
        self.enter().map(drop)
    }

    fn list_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Page, Failure> {
        let st = self.enter()?;
        let prefix = normalize_prefix(prefix).map_err(invalid)?;
        if !(1..=LIST_MAX_LIMIT).contains(&limit) {
            return Err(Failure::Invalid { too_long: false });
        }
        // NOTE: like kvd's recursive listing, the prefix key itself is not
        // in it: only what lies below.
        let base = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        let start = match after {
            Some(a) if a > base.as_str() => Bound::Excluded(a.to_owned()),
            _ => Bound::Included(base.clone()),
        };
        let mut entries = Vec::new();
        let mut more = false;
        for (k, e) in st.data.range((start, Bound::Unbounded)) {
            if !k.starts_with(&base) {
                break;
            }
            if entries.len() == limit {
                more = true;
                break;
            }
            entries.push(e.info(k));
        }
        let next_after = if more { entries.last().map(|e| e.key.clone()) } else { None };
        Ok(Page { revision: st.revision, entries, next_after })
    }

    fn watch(&self, prefix: &str, after: u64) -> Result<Box<dyn Events>, Failure> {
        let st = self.enter()?;
        let prefix = normalize_prefix(prefix).map_err(invalid)?.to_owned();
        if after < st.compact {
            return Err(Failure::Compacted);
        }
        Ok(Box::new(FakeEvents { inner: self.inner.clone(), prefix, cursor: after, epoch: st.epoch }))
    }
}

/// A watch on a [`FakeCluster`].
struct FakeEvents {
    inner: Arc<Inner>,
    prefix: String,
    /// The last revision delivered or scanned.
    cursor: u64,
    /// The [`State::epoch`] this stream has answered `Ok(None)` for.
    epoch: u64,
}

impl Events for FakeEvents {
    fn next(&mut self) -> Result<Option<Batch>, Failure> {
        let mut st = self.inner.lock();
        loop {
            if st.epoch != self.epoch {
                self.epoch = st.epoch;
                return Ok(None);
            }
            if self.cursor < st.compact {
                return Err(Failure::Compacted);
            }
            let from = st.history.partition_point(|b| b.revision <= self.cursor);
            let found = st.history.iter().skip(from).find_map(|b| {
                let events: Vec<WatchEvent> =
                    b.events.iter().filter(|e| key_in_prefix(&e.key, &self.prefix)).cloned().collect();
                (!events.is_empty()).then_some(Batch { revision: b.revision, events })
            });
            if let Some(b) = found {
                self.cursor = b.revision;
                return Ok(Some(b));
            }
            self.cursor = self.cursor.max(st.revision);
            st = self.inner.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
#[path = "fake_tests.rs"]
mod tests;
