//! The state machine on fjall: entries, the revision counter, the watch
//! history, and applied request ids; plus its snapshots.
//!
//! Every applied log entry is one atomic fjall batch (its changes, its events
//! and the new applied log id together). State machine writes are not fsync'd
//! on their own: the Raft log is, and after a crash openraft re-applies from
//! the last applied id recorded with the data.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fjall::Readable;
use kv_client::{key_in_prefix, EntryInfo, Kind, ListResponse};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftLogId, StorageIOError};
use tokio::sync::watch;

use crate::dedup;
use crate::snapfile::{self, Header, TAG_DATA, TAG_DEDUP, TAG_SYS};
use crate::store::{fatal, Store};
use crate::token::TokenTable;
use crate::txn;
use crate::types::{
    decode, encode, Batch, Entry, LogId, Outcome, Response, Snapshot, SnapshotMeta, StorageError, StoredEntry,
    StoredEvent, StoredMembership, TokenRecord, TypeConfig,
};

mod read;
mod snapshot;

#[cfg(test)]
pub(crate) use snapshot::check_record;
#[cfg(any(test, fuzzing))]
pub use snapshot::fuzz_snapshot;
pub use snapshot::restore;
use snapshot::verify_snapshot;

use crate::format::{APPLIED, COMPACT, MEMBERSHIP, REVISION};

/// What the state machine keeps in memory between applies.
#[derive(Debug, Clone)]
struct ApplyState {
    applied: Option<LogId>,
    membership: StoredMembership,
    compact: u64,
    /// The revision and the dedup window.
    txn: txn::State,
    /// What is known of the dedup records' times.
    dedup: dedup::Floor,
}

/// Why the state machine cannot answer a read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A snapshot from the leader is being loaded: the state is neither the
    /// old one nor the new one yet. Retry shortly, or read from another member.
    #[error("this member is loading a snapshot from the leader; retry shortly or read from another member")]
    Loading,
    /// The store failed to read.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A read at a revision the history no longer reaches.
    #[error("revision {rev} is compacted (the history starts after {compact}); read the current state instead")]
    Compacted {
        /// The revision asked for.
        rev: u64,
        /// The history starts after this one.
        compact: u64,
    },
    /// A read at a revision whose state the history did not keep: changed
    /// since by a kvd that kept no previous entries.
    #[error("the state at revision {rev} was not kept: it was changed since by a kvd older than this one")]
    NotKept {
        /// The revision asked for.
        rev: u64,
    },
    /// A read at a revision the state has not reached.
    #[error("revision {rev} is ahead of the current revision {revision}")]
    Ahead {
        /// The revision asked for.
        rev: u64,
        /// The current one.
        revision: u64,
    },
}

/// Ends a load (see [`SmReader::view`]) when dropped, whatever happened.
struct LoadDone<'a>(&'a AtomicU64);

impl Drop for LoadDone<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Watch events (revision, event) and the last revision scanned.
pub type EventPage = (Vec<(u64, StoredEvent)>, u64);

/// The system area's record of the last revision that deleted a key under
/// `prefix` (crate::txn::Changes::deleted).
fn deleted_key(prefix: &str) -> Vec<u8> {
    [DELETED.as_bytes(), prefix.as_bytes()].concat()
}

/// Prefix of [`deleted_key`]s in the system area.
pub(crate) const DELETED: &str = "deleted/";

/// The system area's record of the rules writes are applied by
/// (crate::txn::RULES), u32 BE; none: 0.
pub(crate) const RULES_KEY: &[u8] = b"rules";

/// The rules the store's writes are applied by, as last set by the log.
pub(crate) fn rules(store: &Store) -> io::Result<u32> {
    let v = store.sys.get(RULES_KEY).map_err(io_err)?;
    Ok(v.and_then(|b| b.as_ref().try_into().ok()).map(u32::from_be_bytes).unwrap_or(0))
}

fn token_key(name: &str) -> Vec<u8> {
    [b"token/".as_slice(), name.as_bytes()].concat()
}

/// What a transaction reads: the store as last committed.
impl txn::ReadView for Store {
    fn entry(&self, key: &str) -> io::Result<Option<StoredEntry>> {
        self.data.get(key).map_err(io_err)?.map(|b| decode(&b)).transpose()
    }

    fn entries_with_prefix(&self, prefix: &str) -> io::Result<Vec<(String, StoredEntry)>> {
        let mut entries = Vec::new();
        for item in self.data.prefix(prefix.as_bytes()) {
            let (k, v) = item.into_inner().map_err(io_err)?;
            entries.push((String::from_utf8_lossy(&k).into_owned(), decode(&v)?));
        }
        Ok(entries)
    }

    fn token_exists(&self, name: &str) -> io::Result<bool> {
        Ok(self.sys.get(token_key(name)).map_err(io_err)?.is_some())
    }

    fn changed_since(&self, prefix: &str, rev: u64) -> io::Result<bool> {
        /// NOTE: postcard writes a struct's fields in order and `decode`
        /// leaves trailing bytes unread: the entry's value is never decoded.
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Revisions {
            kind: Kind,
            mode: u32,
            uid: u32,
            gid: u32,
            mtime_ns: i64,
            create_revision: u64,
            mod_revision: u64,
        }
        if self.sys.get(deleted_key(prefix)).map_err(io_err)?.is_some_and(|v| u64_of(Some(v)) > rev) {
            return Ok(true);
        }
        for item in self.data.prefix(prefix.as_bytes()) {
            let (k, v) = item.into_inner().map_err(io_err)?;
            // NOTE: keys are checked UTF-8 when written; no String per key.
            let key = std::str::from_utf8(&k).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if key_in_prefix(key, prefix) && decode::<Revisions>(&v)?.mod_revision > rev {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Read access to the state machine, shared by the API and openraft.
pub struct SmReader {
    store: Store,
    tokens: std::sync::RwLock<Arc<TokenTable>>,
    snap_dir: PathBuf,
    rev_tx: watch::Sender<u64>,
    history: u64,
    /// Held to put a snapshot in place and load it, and to take the view a
    /// snapshot is written from (see [`SmReader::lock_snapshots`]).
    snapshots: std::sync::Mutex<()>,
    /// Odd while a snapshot is being loaded (see [`SmReader::view`]).
    loads: AtomicU64,
    /// Called at each [`Step`], so that a test can force an interleaving.
    #[cfg(test)]
    hook: std::sync::Mutex<Option<Hook>>,
    /// The dedup window as last applied, ms; for the proposer.
    dedup_window_ms: std::sync::atomic::AtomicU64,
    /// The rules as last applied (crate::txn::RULES); for the proposer.
    rules: std::sync::atomic::AtomicU32,
}

/// Points where a test may stop a snapshot build or load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A build has written its file and is about to put it in place.
    Built,
    /// A load has cleared the state and is about to write the snapshot's.
    Cleared,
}

#[cfg(test)]
type Hook = Arc<dyn Fn(Step) + Send + Sync>;

impl std::fmt::Debug for SmReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmReader").field("snap_dir", &self.snap_dir).finish()
    }
}

/// The state machine handed to openraft.
pub struct StateMachine {
    shared: Arc<SmReader>,
    st: ApplyState,
    receiving: Option<PathBuf>,
}

/// Builds snapshots from a consistent fjall snapshot.
pub struct SnapshotBuilder {
    shared: Arc<SmReader>,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn u64_of(v: Option<fjall::UserValue>) -> u64 {
    v.and_then(|b| b.as_ref().try_into().ok()).map(u64::from_be_bytes).unwrap_or(0)
}

fn event_key(rev: u64, seq: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&rev.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

impl SmReader {
    #[cfg(test)]
    fn at(&self, step: Step) {
        let hook = self.hook.lock().ok().and_then(|h| h.clone());
        if let Some(h) = hook {
            h(step);
        }
    }

    #[cfg(not(test))]
    fn at(&self, _step: Step) {}

    /// A consistent view of the state for a read, unless a snapshot is
    /// being loaded.
    ///
    /// IMPORTANT: a load clears the state and writes the snapshot's in many
    /// batches, with the old revision and applied id in place until its last
    /// one; a view taken in between shows keys missing under a revision they
    /// were written before, a state that never existed. `loads` is odd while
    /// a load runs (a sequence lock): a view is used only if no load began or
    /// ran while it was taken. Two atomic loads per read; readers never wait.
    fn view(&self) -> Result<fjall::Snapshot, ReadError> {
        let before = self.loads.load(Ordering::SeqCst);
        let snap = self.store.db.snapshot();
        if before % 2 == 1 || self.loads.load(Ordering::SeqCst) != before {
            return Err(ReadError::Loading);
        }
        Ok(snap)
    }

    /// The lock around putting a snapshot in place and loading it.
    ///
    /// IMPORTANT: openraft builds snapshots on a task of their own, which may
    /// finish while a newer snapshot is being installed. Under this lock a
    /// snapshot goes in place only if it is newer than the one there, an
    /// install renames and loads as one step, and a build takes its view of
    /// the state between loads, never during one.
    fn lock_snapshots(&self) -> std::sync::MutexGuard<'_, ()> {
        self.snapshots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a snapshot with `header` is newer than the one in place (or
    /// there is none, or it is unreadable). Call under [`Self::lock_snapshots`].
    fn newer_than_current(&self, header: &Header) -> io::Result<bool> {
        match snapfile::read_header(&self.current_snapshot_path()) {
            Ok(cur) => Ok(header.meta.last_log_id > cur.meta.last_log_id),
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::InvalidData) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// The latest applied revision, and a way to wait for the next one.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.rev_tx.subscribe()
    }

    /// Revision up to which the watch history was dropped: a watch must start
    /// at or after it.
    pub fn compact_revision(&self) -> io::Result<u64> {
        Ok(u64_of(self.store.sm_meta.get(COMPACT).map_err(io_err)?))
    }

    /// The dedup window this member last applied from the log, ms.
    pub fn dedup_window_ms(&self) -> u64 {
        self.dedup_window_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The rules this member last applied from the log (crate::txn::RULES).
    pub fn rules(&self) -> u32 {
        self.rules.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every token, by the hash of its secret (as applied on this member).
    pub fn tokens(&self) -> Arc<TokenTable> {
        self.tokens.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// Reloads the token table from the system area.
    fn reload_tokens(&self) -> io::Result<()> {
        let mut t = TokenTable::new();
        for item in self.store.sys.prefix(b"token/") {
            let (_, v) = item.into_inner().map_err(io_err)?;
            let rec: TokenRecord = decode(&v)?;
            t.insert(rec.hash.clone(), rec);
        }
        if let Ok(mut g) = self.tokens.write() {
            *g = Arc::new(t);
        }
        Ok(())
    }

    /// Path of the newest snapshot file.
    pub fn current_snapshot_path(&self) -> PathBuf {
        self.snap_dir.join("current.snap")
    }

    fn apply_state(&self) -> io::Result<ApplyState> {
        let m = &self.store.sm_meta;
        Ok(ApplyState {
            applied: m.get(APPLIED).map_err(io_err)?.map(|b| decode(&b)).transpose()?.flatten(),
            membership: m.get(MEMBERSHIP).map_err(io_err)?.map(|b| decode(&b)).transpose()?.unwrap_or_default(),
            compact: u64_of(m.get(COMPACT).map_err(io_err)?),
            txn: txn::State {
                revision: u64_of(m.get(REVISION).map_err(io_err)?),
                dedup_window_ms: dedup::window_ms(&self.store)?,
                rules: rules(&self.store)?,
            },
            dedup: dedup::Floor::load(&self.store),
        })
    }

    /// Applies one log entry as one atomic fjall batch.
    fn apply_one(&self, st: &mut ApplyState, entry: &Entry) -> io::Result<Vec<Response>> {
        let log_id = *entry.get_log_id();
        let mut batch = self.store.db.batch();
        let mut changes = txn::Changes::default();
        let mut out = Vec::new();
        match &entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Membership(m) => {
                st.membership = StoredMembership::new(Some(log_id), m.clone());
                batch.insert(&self.store.sm_meta, MEMBERSHIP, encode(&st.membership));
            }
            EntryPayload::Normal(Batch(reqs)) => {
                // IMPORTANT: the entry's log time comes from the entry (the
                // proposing members' clocks), never from this member's clock:
                // every member keeps and prunes the same records.
                let now_ns = reqs.iter().map(|r| r.now_ns).max().unwrap_or(0);
                let window_before = st.txn.dedup_window_ms;
                let rules_before = st.txn.rules;
                // Responses to the entry's requests with an id, recorded with it.
                let mut answered: HashMap<String, Response> = HashMap::new();
                for req in reqs {
                    let seen = match answered.get(&req.id) {
                        _ if req.id.is_empty() => None,
                        Some(r) => Some(r.clone()),
                        None => dedup::lookup(&self.store, &st.dedup, &req.id)?,
                    };
                    // NOTE: a retried write is answered, not applied again;
                    // one that may be the retry of a write whose record was
                    // pruned is refused.
                    let resp = match seen {
                        Some(r) => r,
                        None => match dedup::expired(&req.id, now_ns, st.txn.dedup_window_ms) {
                            Some(first_ns) => Response {
                                succeeded: false,
                                revision: st.txn.revision,
                                outcomes: vec![Outcome::RequestIdExpired(first_ns)],
                                ..Response::default()
                            },
                            None => {
                                let resp = txn::exec(&self.store, &mut changes, &mut st.txn, req)?;
                                if !req.id.is_empty() {
                                    answered.insert(req.id.clone(), resp.clone());
                                }
                                resp
                            }
                        },
                    };
                    out.push(resp);
                }
                for (id, response) in answered {
                    dedup::record(&self.store, &mut batch, &mut st.dedup, now_ns, &id, response);
                }
                if st.txn.rules != rules_before {
                    batch.insert(&self.store.sys, RULES_KEY, st.txn.rules.to_be_bytes());
                    self.rules.store(st.txn.rules, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(rules = st.txn.rules, "the rules of writes changed");
                }
                if st.txn.dedup_window_ms != window_before {
                    dedup::set_window(&self.store, &mut batch, st.txn.dedup_window_ms);
                    self.dedup_window_ms.store(st.txn.dedup_window_ms, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(window_ms = st.txn.dedup_window_ms, "dedup window changed");
                }
                dedup::prune(&self.store, &mut batch, &mut st.dedup, now_ns, st.txn.dedup_window_ms, log_id.index)?;
            }
        }
        let tokens_changed = !changes.tokens.is_empty();
        for (prefix, rev) in &changes.deleted {
            batch.insert(&self.store.sys, deleted_key(prefix), rev.to_be_bytes());
        }
        for (name, v) in changes.tokens {
            match v {
                Some(rec) => batch.insert(&self.store.sys, token_key(&name), encode(&rec)),
                None => batch.remove(&self.store.sys, token_key(&name)),
            }
        }
        for (k, v) in changes.entries {
            match v {
                Some(e) => batch.insert(&self.store.data, k, encode(&e)),
                None => batch.remove(&self.store.data, k),
            }
        }
        let compact = st.txn.revision.saturating_sub(self.history);
        if compact > st.compact {
            for item in self.store.events.range(event_key(st.compact + 1, 0)..event_key(compact + 1, 0)) {
                batch.remove(&self.store.events, item.key().map_err(io_err)?);
            }
            for item in self.store.revisions.range((st.compact + 1).to_be_bytes()..(compact + 1).to_be_bytes()) {
                batch.remove(&self.store.revisions, item.key().map_err(io_err)?);
            }
            st.compact = compact;
        }
        for (rev, seq, ev) in changes.events {
            // Events already older than the history are not kept at all.
            if rev > st.compact {
                batch.insert(&self.store.events, event_key(rev, seq), ev.encode());
            }
        }
        for (rev, record) in changes.revisions {
            if rev > st.compact {
                batch.insert(&self.store.revisions, rev.to_be_bytes(), encode(&record));
            }
        }
        st.applied = Some(log_id);
        batch.insert(&self.store.sm_meta, APPLIED, encode(&st.applied));
        batch.insert(&self.store.sm_meta, REVISION, st.txn.revision.to_be_bytes());
        batch.insert(&self.store.sm_meta, COMPACT, st.compact.to_be_bytes());
        batch.commit().unwrap_or_else(|e| fatal("writing the state machine failed", &e));
        if tokens_changed {
            self.reload_tokens()?;
        }
        Ok(out)
    }
}

impl StateMachine {
    /// Opens the state machine. `history` is how many revisions of watch
    /// history are kept. If the last snapshot is ahead of the applied state
    /// (a crash during install, or after a snapshot of unsynced state), it is
    /// loaded first.
    pub fn open(store: Store, history: u64) -> io::Result<StateMachine> {
        let snap_dir = store.dir.join("snapshots");
        std::fs::create_dir_all(&snap_dir)?;
        for e in std::fs::read_dir(&snap_dir)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "tmp") {
                std::fs::remove_file(&p)?;
            }
        }
        let (rev_tx, _) = watch::channel(0);
        let shared = Arc::new(SmReader {
            store,
            tokens: Default::default(),
            snap_dir,
            rev_tx,
            history: history.max(1),
            snapshots: Default::default(),
            loads: AtomicU64::new(0),
            #[cfg(test)]
            hook: Default::default(),
            dedup_window_ms: Default::default(),
            rules: Default::default(),
        });
        let mut st = shared.apply_state()?;
        match std::fs::File::open(shared.current_snapshot_path()) {
            Ok(mut file) => {
                let header = snapfile::read_header_from(&mut file)?;
                if header.meta.last_log_id > st.applied {
                    tracing::warn!(snapshot = %header.meta.snapshot_id, "state is behind the last snapshot; loading it");
                    let _one = shared.lock_snapshots();
                    st = shared.load_snapshot(&mut file)?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        shared.reload_tokens()?;
        shared.rev_tx.send_replace(st.txn.revision);
        shared.dedup_window_ms.store(st.txn.dedup_window_ms, std::sync::atomic::Ordering::Relaxed);
        shared.rules.store(st.txn.rules, std::sync::atomic::Ordering::Relaxed);
        Ok(StateMachine { shared, st, receiving: None })
    }

    /// Read access for the API.
    pub fn shared(&self) -> Arc<SmReader> {
        self.shared.clone()
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io_err)?
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.st.applied, self.st.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Response>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for entry in entries {
            // IMPORTANT: a leader may count its own entry committed before it
            // is on its disk (see crate::store::Durability); nothing of it
            // shows, to a client or a watcher, before it is.
            self.shared.store.durable.wait(entry.log_id.index).await;
            let resp =
                self.shared.apply_one(&mut self.st, &entry).map_err(|e| StorageIOError::apply(entry.log_id, &e))?;
            out.push(resp);
        }
        self.shared.rev_tx.send_replace(self.st.txn.revision);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { shared: self.shared.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.shared.temp_path("recv");
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        self.receiving = Some(path);
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let shared = self.shared.clone();
        let want = meta.last_log_id;
        let mut src = snapshot.into_std().await;
        let receiving = self.receiving.take();
        let werr = |e: io::Error| StorageIOError::write_snapshot(Some(meta.signature()), &e);
        let st = blocking(move || {
            use std::io::Seek;
            src.rewind()?;
            let tmp = shared.temp_path("install");
            let mut dst = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&tmp)?;
            std::io::copy(&mut src, &mut dst)?;
            dst.sync_all()?;
            dst.rewind()?;
            // Checked whole at the door, from the open file that is loaded below.
            let checked = verify_snapshot(&mut dst);
            let header = match checked {
                Ok(h) if h.meta.last_log_id == want => h,
                Ok(_) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot does not match its metadata"));
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            };
            if let Some(p) = receiving {
                let _ = std::fs::remove_file(p);
            }
            let _one = shared.lock_snapshots();
            // NOTE: openraft installs only snapshots past what is committed
            // here, and a snapshot in place never is; refuse rather than go back.
            if !shared.newer_than_current(&header)? {
                let _ = std::fs::remove_file(&tmp);
                return Err(io::Error::other("a newer snapshot is already in place"));
            }
            std::fs::rename(&tmp, shared.current_snapshot_path())?;
            snapfile::sync_dir(&shared.snap_dir)?;
            shared.load_snapshot(&mut dst)
        })
        .await
        .map_err(werr)?;
        self.st = st;
        self.shared.rev_tx.send_replace(self.st.txn.revision);
        tracing::info!(revision = self.st.txn.revision, "installed snapshot");
        crate::metrics::METRICS.snapshots_installed.inc();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let path = self.shared.current_snapshot_path();
        // NOTE: the header is read from the file opened, so the two match
        // even if a build puts another file in place meanwhile.
        let found = blocking(move || match std::fs::File::open(&path) {
            Ok(mut file) => {
                let header = snapfile::read_header_from(&mut file)?;
                std::io::Seek::rewind(&mut file)?;
                Ok(Some((header, file)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
        .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(found
            .map(|(header, file)| Snapshot { meta: header.meta, snapshot: Box::new(tokio::fs::File::from_std(file)) }))
    }
}

#[cfg(test)]
mod snapshot_tests;

#[cfg(test)]
mod dedup_tests;

#[cfg(test)]
mod history_tests;

#[cfg(test)]
mod view_tests {
    //! The fjall store as a transaction's read view, against txn's in-memory one.

    use openraft::CommittedLeaderId;
    use serde_bytes::ByteBuf;

    use super::*;
    use crate::txn::{MemView, ReadView};
    use crate::types::{Op, PutAttrs, Request, Txn};

    fn only(ops: Vec<Op>) -> Request {
        Request { id: String::new(), now_ns: 7, txn: Txn { compare: vec![], success: ops, failure: vec![] } }
    }

    fn put(key: &str) -> Op {
        Op::Put { key: key.to_owned(), value: Some(ByteBuf::from(key.as_bytes())), attrs: PutAttrs::default() }
    }

    fn token(name: &str) -> Op {
        Op::CreateToken(TokenRecord {
            name: name.to_owned(),
            hash: name.to_owned(),
            grants: Default::default(),
            created_ns: 0,
        })
    }

    /// NOTE: keeps the in-memory view honest: the txn tests run over it.
    #[test]
    fn the_store_reads_like_the_in_memory_view() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = StateMachine::open(Store::open(dir.path()).expect("store"), 1000).expect("state machine");
        let mut mem = MemView::default();
        let mut st = sm.st.txn;
        let keys = ["a", "a/b", "a/b/c", "a.b", "a0", "ab", "ab/c", "b"];
        let entries = [
            vec![only(keys.iter().map(|k| put(k)).collect()), only(vec![token("t"), token("u")])],
            vec![only(vec![Op::Delete { key: "a/b".into(), recursive: true }, Op::RevokeToken("u".into())])],
        ];
        for (index, reqs) in entries.into_iter().enumerate() {
            let mut changes = txn::Changes::default();
            let want: Vec<Response> =
                reqs.iter().map(|r| txn::exec(&mem, &mut changes, &mut st, r).expect("exec")).collect();
            mem.commit(changes);
            let log_id = LogId::new(CommittedLeaderId::new(1, 1), index as u64 + 1);
            let e = Entry { log_id, payload: EntryPayload::Normal(Batch(reqs)) };
            assert_eq!(sm.shared.apply_one(&mut sm.st, &e).expect("apply"), want);
        }
        let store = &sm.shared.store;
        for k in keys.iter().chain(&["missing"]) {
            assert_eq!(store.entry(k).expect("entry"), mem.entry(k).expect("entry"), "{k}");
        }
        for p in ["", "a", "a/", "a/b/", "ab", "b", "z"] {
            assert_eq!(
                store.entries_with_prefix(p).expect("entries"),
                mem.entries_with_prefix(p).expect("entries"),
                "{p:?}"
            );
        }
        for t in ["t", "u", "missing"] {
            assert_eq!(store.token_exists(t).expect("token"), mem.token_exists(t).expect("token"), "{t}");
        }
        for p in ["", "a", "a/b", "a/b/c", "ab", "b", "z"] {
            for rev in 0..4 {
                let got = store.changed_since(p, rev).expect("changed since");
                assert_eq!(got, mem.changed_since(p, rev).expect("changed since"), "{p:?} since {rev}");
            }
        }
        assert!(store.changed_since("a/b", 1).expect("changed since"), "the recursive delete at 2");
    }

    #[test]
    fn a_prefix_compare_is_decided_alike_whatever_history_a_member_kept() {
        // IMPORTANT: members keep histories of their own lengths (and none
        // after installing a snapshot); a compare must not depend on them.
        let answers = |history: u64| {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut sm = StateMachine::open(Store::open(dir.path()).expect("store"), history).expect("state machine");
            let entries = [
                only(vec![put("a/1")]),
                only(vec![put("a/2")]),
                only(vec![Op::Delete { key: "a/1".into(), recursive: false }]),
                only(vec![put("b")]),
            ];
            for (index, req) in entries.into_iter().enumerate() {
                let log_id = LogId::new(CommittedLeaderId::new(1, 1), index as u64 + 1);
                let e = Entry { log_id, payload: EntryPayload::Normal(Batch(vec![req])) };
                sm.shared.apply_one(&mut sm.st, &e).expect("apply");
            }
            let store = &sm.shared.store;
            let mut out = vec![];
            for p in ["", "a", "a/1", "a/2", "b"] {
                for rev in 0..=4 {
                    out.push(store.changed_since(p, rev).expect("changed since"));
                }
            }
            out
        };
        let full = answers(1000);
        assert_eq!(answers(1), full, "a member that kept one revision of history");
        assert_eq!(&full[5..10], [true, true, true, false, false], "a: written at 1 and 2, deleted at 3");
    }
}
