//! Reads of the state machine: one entry, a listing, the watch history;
//! each from one consistent view of the store.

use std::ops::Bound;

use super::*;
use crate::types::{Prev, RevisionRecord};

impl SmReader {
    /// Reads one entry and the revision the read reflects.
    pub fn get(&self, key: &str) -> Result<(Option<StoredEntry>, u64), ReadError> {
        let snap = self.view()?;
        let rev = u64_of(snap.get(&self.store.sm_meta, REVISION).map_err(io_err)?);
        let e = snap.get(&self.store.data, key).map_err(io_err)?;
        Ok((e.map(|b| decode(&b)).transpose()?, rev))
    }

    /// Lists below `prefix` (already validated; "" for all). Without
    /// `recursive`, direct children only, with implied directories; `after`
    /// is a full key (recursive) or a child name. With `at`, the listing as
    /// it was at that past revision, from the history: today's entries, with
    /// those changed since as they were then.
    pub fn list(
        &self,
        prefix: &str,
        recursive: bool,
        values: bool,
        after: Option<&str>,
        limit: usize,
        at: Option<u64>,
    ) -> Result<ListResponse, ReadError> {
        let snap = self.view()?;
        let revision = match at {
            Some(rev) => {
                self.check_past(&snap, rev)?;
                rev
            }
            None => u64_of(snap.get(&self.store.sm_meta, REVISION).map_err(io_err)?),
        };
        // NOTE: the first event of a key after `at` holds what it was then;
        // later ones change nothing of that.
        let mut then: BTreeMap<String, Option<StoredEntry>> = BTreeMap::new();
        if let Some(rev) = at {
            let base = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
            for item in snap.range(&self.store.events, event_key(rev.saturating_add(1), 0)..) {
                let (_, v) = item.into_inner().map_err(io_err)?;
                let key = StoredEvent::decode_key(&v)?;
                if key.starts_with(&base) && !then.contains_key(&key) {
                    then.insert(key, before(StoredEvent::decode(&v)?, rev)?);
                }
            }
        }
        let range = |from: Bound<Vec<u8>>, to: Bound<Vec<u8>>| {
            let now = snap.range(&self.store.data, (from.clone(), to.clone())).map(|item| {
                let (k, v) = item.into_inner().map_err(io_err)?;
                Ok((String::from_utf8_lossy(&k).into_owned(), Stored::Encoded(v)))
            });
            let changed = string_range(&then, from, to).map(|(k, e)| (k.clone(), e.clone()));
            Then { now: now.peekable(), changed: changed.peekable() }
        };
        let page = Page { prefix, recursive, values, after, limit };
        Ok(page.list(range, revision)?)
    }

    /// The entry at `key` as it was at revision `rev`, from the history.
    pub fn get_at(&self, key: &str, rev: u64) -> Result<Option<StoredEntry>, ReadError> {
        let snap = self.view()?;
        self.check_past(&snap, rev)?;
        for item in snap.range(&self.store.events, event_key(rev.saturating_add(1), 0)..) {
            let (_, v) = item.into_inner().map_err(io_err)?;
            if StoredEvent::decode_key(&v)? == key {
                return before(StoredEvent::decode(&v)?, rev);
            }
        }
        Ok(snap.get(&self.store.data, key).map_err(io_err)?.map(|b| decode(&b)).transpose()?)
    }

    /// The versions of `key` in the history, newest first, at most `limit`;
    /// the current revision; the revision the history starts after.
    pub fn history(&self, key: &str, limit: usize) -> Result<(Vec<Version>, u64, u64), ReadError> {
        let snap = self.view()?;
        let revision = u64_of(snap.get(&self.store.sm_meta, REVISION).map_err(io_err)?);
        let compact = u64_of(snap.get(&self.store.sm_meta, COMPACT).map_err(io_err)?);
        let mut out = Vec::new();
        for item in snap.range(&self.store.events, event_key(compact.saturating_add(1), 0)..).rev() {
            let (k, v) = item.into_inner().map_err(io_err)?;
            if StoredEvent::decode_key(&v)? != key {
                continue;
            }
            let ev = StoredEvent::decode(&v)?;
            let rev = u64::from_be_bytes(k[..8].try_into().map_err(io_err)?);
            // NOTE: a key changed twice in one revision shows once, as it
            // was at the revision's end (the later event, met first here).
            if out.last().is_some_and(|v: &Version| v.revision == rev) {
                continue;
            }
            let record: Option<RevisionRecord> =
                snap.get(&self.store.revisions, rev.to_be_bytes()).map_err(io_err)?.map(|b| decode(&b)).transpose()?;
            out.push(Version { revision: rev, record, entry: ev.entry });
            if out.len() == limit {
                break;
            }
        }
        Ok((out, revision, compact))
    }

    /// Refuses a read at `rev` that the history no longer reaches, or that
    /// lies ahead of the state.
    fn check_past(&self, snap: &fjall::Snapshot, rev: u64) -> Result<(), ReadError> {
        let revision = u64_of(snap.get(&self.store.sm_meta, REVISION).map_err(io_err)?);
        let compact = u64_of(snap.get(&self.store.sm_meta, COMPACT).map_err(io_err)?);
        if rev > revision {
            return Err(ReadError::Ahead { rev, revision });
        }
        if rev < compact {
            return Err(ReadError::Compacted { rev, compact });
        }
        Ok(())
    }

    /// Events after revision `after` of keys in `prefix`: whole revisions
    /// only, stopping after about `max` events scanned. Returns the events
    /// and the last revision scanned (the cursor to continue from), or `None`
    /// when `after` is older than the retained history.
    pub fn events_after(&self, after: u64, prefix: &str, max: usize) -> Result<Option<EventPage>, ReadError> {
        let snap = self.view()?;
        let compact = u64_of(snap.get(&self.store.sm_meta, COMPACT).map_err(io_err)?);
        if after < compact {
            return Ok(None);
        }
        let mut out = Vec::new();
        let mut last_rev = after;
        for (scanned, item) in snap.range(&self.store.events, event_key(after.saturating_add(1), 0)..).enumerate() {
            let (k, v) = item.into_inner().map_err(io_err)?;
            let rev = u64::from_be_bytes(k[..8].try_into().map_err(io_err)?);
            if rev != last_rev && scanned >= max {
                // Stop at a revision boundary so a revision is never split.
                break;
            }
            last_rev = rev;
            let ev = StoredEvent::decode(&v)?;
            if key_in_prefix(&ev.key, prefix) {
                out.push((rev, ev));
            }
        }
        Ok(Some((out, last_rev)))
    }
}

/// One version of a key in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The revision that made it.
    pub revision: u64,
    /// When and by whom, if recorded.
    pub record: Option<RevisionRecord>,
    /// The entry it left; `None`: deleted.
    pub entry: Option<StoredEntry>,
}

/// What an event's key held at `rev`, the revision before the event's.
fn before(ev: StoredEvent, rev: u64) -> Result<Option<StoredEntry>, ReadError> {
    match ev.prev {
        Prev::Absent => Ok(None),
        Prev::Entry(e) => Ok(Some(e)),
        // NOTE: written by a kvd that kept no previous entries: what the key
        // held before it is not known.
        Prev::Unknown => Err(ReadError::NotKept { rev }),
    }
}

/// The entries of `map` between two bounds given as bytes; none when the
/// bounds hold nothing (where `BTreeMap::range` would panic).
fn string_range<V>(
    map: &BTreeMap<String, V>,
    from: Bound<Vec<u8>>,
    to: Bound<Vec<u8>>,
) -> impl Iterator<Item = (&String, &V)> {
    let s = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    let (from, to) = (from.map(s), to.map(s));
    let empty = match (&from, &to) {
        (Bound::Included(a), Bound::Included(b)) => a > b,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Excluded(b)) | (Bound::Excluded(a), Bound::Included(b)) => {
            a >= b
        }
        _ => false,
    };
    (!empty).then(|| map.range::<String, _>((from, to))).into_iter().flatten()
}

/// Today's entries of a listing range merged, in key order, with the
/// entries changed since a revision as they were then.
struct Then<N: Iterator, C: Iterator> {
    now: std::iter::Peekable<N>,
    changed: std::iter::Peekable<C>,
}

impl<N, C> Iterator for Then<N, C>
where
    N: Iterator<Item = io::Result<(String, Stored)>>,
    C: Iterator<Item = (String, Option<StoredEntry>)>,
{
    type Item = io::Result<(String, Stored)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let now_key = match self.now.peek() {
                Some(Ok((k, _))) => Some(k.as_str()),
                Some(Err(_)) => return self.now.next(),
                None => None,
            };
            let take_changed = match (now_key, self.changed.peek()) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(n), Some((c, _))) => c.as_str() <= n,
            };
            if !take_changed {
                return self.now.next();
            }
            let (key, then) = self.changed.next()?;
            if now_key == Some(key.as_str()) {
                self.now.next();
            }
            if let Some(e) = then {
                return Some(Ok((key, Stored::Decoded(e))));
            }
        }
    }
}

/// An entry as a listing meets it: still encoded (the store) or not.
enum Stored {
    Encoded(fjall::Slice),
    Decoded(StoredEntry),
}

impl Stored {
    fn entry(self) -> io::Result<StoredEntry> {
        match self {
            Stored::Encoded(b) => decode(&b),
            Stored::Decoded(e) => Ok(e),
        }
    }
}

/// One page of a listing (see [`SmReader::list`]).
struct Page<'a> {
    prefix: &'a str,
    recursive: bool,
    values: bool,
    after: Option<&'a str>,
    limit: usize,
}

impl Page<'_> {
    /// The page, over the entries `range` yields between two keys, in order.
    fn list<I>(&self, range: impl Fn(Bound<Vec<u8>>, Bound<Vec<u8>>) -> I, revision: u64) -> io::Result<ListResponse>
    where
        I: Iterator<Item = io::Result<(String, Stored)>>,
    {
        let (prefix, recursive, after, limit) = (self.prefix, self.recursive, self.after, self.limit);
        let base = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        let info = |key: String, e: StoredEntry| {
            let v = self.values.then_some(e.value.as_slice());
            EntryInfo::new(key, e.meta(), v)
        };
        let mut entries = Vec::new();
        let mut more = false;
        if recursive {
            let start = match after {
                Some(a) if a.as_bytes() > base.as_bytes() => Bound::Excluded(a.as_bytes().to_vec()),
                _ => Bound::Included(base.as_bytes().to_vec()),
            };
            for item in range(start, prefix_end(base.as_bytes())) {
                let (key, v) = item?;
                if entries.len() == limit {
                    more = true;
                    break;
                }
                entries.push(info(key, v.entry()?));
            }
        } else {
            // Walk every direct child, jumping over each child's subtree.
            // NOTE: no early stop at `limit`: a subtree can sort after a
            // sibling with a longer name ("b.txt" < "b/c"), so the page is
            // cut only once all names are known.
            let mut children: BTreeMap<String, EntryInfo> = BTreeMap::new();
            let mut from: Vec<u8> = [base.as_bytes(), after.unwrap_or("").as_bytes()].concat();
            let end = prefix_end(base.as_bytes());
            'outer: loop {
                for item in range(Bound::Included(from.clone()), end.clone()) {
                    let (key, v) = item?;
                    let rest = &key[base.len()..];
                    let (name, below) = match rest.split_once('/') {
                        None => (rest, false),
                        Some((name, _)) => (name, true),
                    };
                    let seen = after.is_some_and(|a| name <= a);
                    if !seen {
                        if below {
                            children.entry(name.to_owned()).or_insert_with(|| implied_dir(format!("{base}{name}")));
                        } else {
                            children.insert(name.to_owned(), info(key.clone(), v.entry()?));
                        }
                    }
                    if below {
                        // Jump past the subtree `base/name/…`: '0' follows '/'.
                        from = format!("{base}{name}0").into_bytes();
                        continue 'outer;
                    }
                }
                break;
            }
            if children.len() > limit {
                more = true;
            }
            entries.extend(children.into_values().take(limit));
        }
        let next_after = if more {
            entries.last().map(|e| if recursive { e.key.clone() } else { e.key[base.len()..].to_owned() })
        } else {
            None
        };
        Ok(ListResponse { revision, entries, more, next_after })
    }
}

/// The smallest key after every key that starts with `base`.
fn prefix_end(base: &[u8]) -> Bound<Vec<u8>> {
    let mut end = base.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bound::Excluded(end);
        }
    }
    Bound::Unbounded
}

fn implied_dir(key: String) -> EntryInfo {
    EntryInfo::new(
        key,
        kv_client::Meta {
            kind: Kind::Dir,
            mode: Kind::Dir.default_mode(),
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            create_revision: 0,
            mod_revision: 0,
            version: 0,
            size: 0,
            atime_ns: None,
            ctime_ns: None,
        },
        None,
    )
}
