//! Reads of the state machine: one entry, a listing, the watch history;
//! each from one consistent view of the store.

use super::*;

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
    /// is a full key (recursive) or a child name.
    pub fn list(
        &self,
        prefix: &str,
        recursive: bool,
        values: bool,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ListResponse, ReadError> {
        let snap = self.view()?;
        let revision = u64_of(snap.get(&self.store.sm_meta, REVISION).map_err(io_err)?);
        let base = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        let info = |key: String, e: StoredEntry| {
            let v = values.then_some(e.value.as_slice());
            EntryInfo::new(key, e.meta(), v)
        };
        let mut entries = Vec::new();
        let mut more = false;
        if recursive {
            let start = match after {
                Some(a) if a.as_bytes() > base.as_bytes() => std::ops::Bound::Excluded(a.as_bytes().to_vec()),
                _ => std::ops::Bound::Included(base.as_bytes().to_vec()),
            };
            let end = prefix_end(base.as_bytes());
            for item in snap.range(&self.store.data, (start, end)) {
                let (k, v) = item.into_inner().map_err(io_err)?;
                if entries.len() == limit {
                    more = true;
                    break;
                }
                let key = String::from_utf8_lossy(&k).into_owned();
                entries.push(info(key, decode(&v)?));
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
                for item in snap.range(&self.store.data, (std::ops::Bound::Included(from.clone()), end.clone())) {
                    let (k, v) = item.into_inner().map_err(io_err)?;
                    let key = String::from_utf8_lossy(&k).into_owned();
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
                            children.insert(name.to_owned(), info(key.clone(), decode(&v)?));
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
            let ev: StoredEvent = decode(&v)?;
            if key_in_prefix(&ev.key, prefix) {
                out.push((rev, ev));
            }
        }
        Ok(Some((out, last_rev)))
    }
}

/// The smallest key after every key that starts with `base`.
fn prefix_end(base: &[u8]) -> std::ops::Bound<Vec<u8>> {
    let mut end = base.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return std::ops::Bound::Excluded(end);
        }
    }
    std::ops::Bound::Unbounded
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
        },
        None,
    )
}
