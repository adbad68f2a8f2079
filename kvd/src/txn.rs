//! Transaction semantics: what one request's compares and operations do,
//! over a read-only view of the committed state and the changes of the log
//! entry being applied.
//!
//! It knows no storage: crate::sm gives it a view of the fjall store and
//! writes the changes out as one batch; the tests here use an in-memory view.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use kv_client::Kind;
use serde_bytes::ByteBuf;

use crate::dedup;
use crate::types::{Cmp, Op, Outcome, Request, Response, StoredEntry, StoredEvent, TokenRecord};

/// What a transaction reads from the committed state.
pub(crate) trait ReadView {
    /// The entry at `key`, if any.
    fn entry(&self, key: &str) -> io::Result<Option<StoredEntry>>;
    /// Every key that starts with `prefix` ("" for all), in order.
    fn keys_with_prefix(&self, prefix: &str) -> io::Result<Vec<String>>;
    /// Whether a token named `name` exists.
    fn token_exists(&self, name: &str) -> io::Result<bool>;
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
}

/// Runs one request against the committed state in `view` as `changes` sees
/// it; records what it changes in `changes` and `st`.
pub(crate) fn exec(view: &impl ReadView, changes: &mut Changes, st: &mut State, req: &Request) -> io::Result<Response> {
    let mut ok = true;
    for c in &req.txn.compare {
        let rev = |k: &str| -> io::Result<u64> { Ok(changes.entry(view, k)?.map(|e| e.mod_revision).unwrap_or(0)) };
        ok &= match c {
            Cmp::ModRevision(k, want) => rev(k)? == *want,
            Cmp::Exists(k, want) => (rev(k)? != 0) == *want,
        };
    }
    let ops = if ok { &req.txn.success } else { &req.txn.failure };
    let new_rev = st.revision + 1;
    let mut written: Vec<(String, Option<StoredEntry>)> = Vec::new();
    let mut outcomes = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            Op::Put { key, value, attrs } => {
                let prev = changes.entry(view, key)?;
                let prev = prev.as_ref();
                let kind = attrs.kind.or(prev.map(|p| p.kind)).unwrap_or(Kind::File);
                let e = StoredEntry {
                    kind,
                    mode: attrs.mode.or(prev.map(|p| p.mode)).unwrap_or(kind.default_mode()),
                    uid: attrs.uid.or(prev.map(|p| p.uid)).unwrap_or(0),
                    gid: attrs.gid.or(prev.map(|p| p.gid)).unwrap_or(0),
                    mtime_ns: attrs.mtime_ns.unwrap_or(req.now_ns),
                    create_revision: prev.map(|p| p.create_revision).unwrap_or(new_rev),
                    mod_revision: new_rev,
                    version: prev.map(|p| p.version + 1).unwrap_or(1),
                    value: match value {
                        Some(v) => v.clone(),
                        // NOTE: a directory never has a value.
                        None if kind == Kind::Dir => ByteBuf::new(),
                        None => prev.map(|p| p.value.clone()).unwrap_or_default(),
                    },
                };
                changes.entries.insert(key.clone(), Some(e.clone()));
                written.push((key.clone(), Some(e)));
                outcomes.push(Outcome::Put(key.clone(), new_rev));
            }
            Op::Delete { key, recursive } => {
                let mut gone: Vec<String> = Vec::new();
                if !key.is_empty() && changes.entry(view, key)?.is_some() {
                    gone.push(key.clone());
                }
                if *recursive {
                    let base = if key.is_empty() { String::new() } else { format!("{key}/") };
                    let mut below: BTreeSet<String> = view.keys_with_prefix(&base)?.into_iter().collect();
                    for (k, v) in changes.entries.range(base.clone()..) {
                        if !k.starts_with(&base) {
                            break;
                        }
                        if v.is_some() {
                            below.insert(k.clone());
                        } else {
                            below.remove(k);
                        }
                    }
                    gone.extend(below);
                }
                outcomes.push(Outcome::Delete(key.clone(), gone.len() as u64));
                for k in gone {
                    changes.entries.insert(k.clone(), None);
                    written.push((k, None));
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
        }
    }
    if !written.is_empty() {
        st.revision = new_rev;
        changes.events.extend(
            written
                .into_iter()
                .enumerate()
                .map(|(seq, (key, entry))| (new_rev, seq as u32, StoredEvent { key, entry })),
        );
    }
    Ok(Response { succeeded: ok, revision: st.revision, outcomes })
}
