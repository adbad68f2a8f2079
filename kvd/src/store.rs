//! The on-disk store: one fjall database per data dir holding the Raft log,
//! the vote and the state machine, so a single journal fsync covers them all.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use tokio::sync::watch;

use crate::format::{self, Space};
use crate::types::LogId;

/// Largest memtable of a keyspace before it is written out to a table.
const MEMTABLE_BYTES: u64 = 8 << 20;

/// Errors opening a data dir.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the data dir's lock. Stop it, or use another dir.
    #[error("data dir {dir} is in use by another kvd (pid {pid}); stop it or choose another --data-dir")]
    Locked {
        /// The data dir.
        dir: PathBuf,
        /// Pid written by the holder, if readable.
        pid: String,
    },
    /// The data dir could not be created or read.
    #[error("cannot use data dir {dir}: {source}")]
    Io {
        /// The data dir.
        dir: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// fjall refused to open the database: it is corrupt or from another version.
    #[error(
        "cannot open the database in {dir}: {source}\n\
         The data dir is damaged (or from another version); kvd will not serve it. \
         Restore it from a snapshot with `kvd restore`, or, on a member of a cluster, \
         move it aside and add the node back with an empty data dir so it copies the data from the leader."
    )]
    Db {
        /// The data dir.
        dir: PathBuf,
        /// Cause.
        source: fjall::Error,
    },
    /// The data dir's format is newer than this kvd reads, or an older one
    /// could not be upgraded (crate::format); nothing was written to it.
    #[error("cannot use data dir {dir}: {source}")]
    Format {
        /// The data dir.
        dir: PathBuf,
        /// Cause.
        source: crate::format::FormatError,
    },
}

/// The open database and its keyspaces.
#[derive(Clone)]
pub struct Store {
    /// The database (one journal).
    pub db: Database,
    /// Raft log: big-endian index → entry.
    pub log: Keyspace,
    /// Raft metadata: vote, purged, committed.
    pub raft: Keyspace,
    /// State machine: key → entry.
    pub data: Keyspace,
    /// Watch history: revision, sequence → event.
    pub events: Keyspace,
    /// When each revision of the history was made, and by whom: revision →
    /// record.
    pub revisions: Keyspace,
    /// Applied request ids, for deduplication.
    pub dedup: Keyspace,
    /// State machine metadata: last applied, membership, revision.
    pub sm_meta: Keyspace,
    /// The replicated system area: `token/NAME` → token record.
    pub sys: Keyspace,
    /// The data dir.
    pub dir: PathBuf,
    /// How much of the Raft log is on disk.
    pub durable: Arc<Durability>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

/// How much of the Raft log is written, and how much of that is on disk.
///
/// IMPORTANT: on a leader with followers, an append of the leader's own
/// entries is reported done before its fsync (see crate::log_store), so
/// that the entries go to the followers while the leader's disk syncs:
/// openraft 0.9 sends nothing before the append is reported done. openraft
/// then counts the leader in a quorum for entries that may not be on its
/// disk yet. Two rules keep that safe, and both go by [`Durability`]:
/// - the state machine applies an entry only once it is on this node's
///   disk (crate::sm), so no client hears of it before it is on a quorum;
/// - followers hear of a commit index no further than this node's disk
///   (crate::network), so no other member applies it before that either.
///
/// Until both hold, an entry counted as committed may be lost in a crash,
/// but nobody has seen it, which is what Raft allows for an entry that is
/// not committed. A vote change syncs the journal, so a leader that steps
/// down has all its entries on disk before it answers as a follower.
#[derive(Debug)]
pub struct Durability {
    marks: watch::Sender<Marks>,
    /// One coalescing fsync at a time (see [`Store::sync_upto`]).
    syncing: Mutex<()>,
    /// This node's membership has other voters (set from Raft's metrics).
    replicated: AtomicBool,
}

/// The journal's progress, under one lock.
#[derive(Debug, Clone, Copy, Default)]
struct Marks {
    /// The last entry written to the journal.
    written: Option<LogId>,
    /// The last entry on disk.
    synced: Option<LogId>,
    /// Bumped when the log is cut back, so that an fsync that began before
    /// does not report entries that are gone.
    epoch: u64,
}

fn index_of(l: Option<LogId>) -> u64 {
    l.map_or(0, |l| l.index)
}

impl Durability {
    fn new() -> Durability {
        Durability {
            marks: watch::channel(Marks::default()).0,
            syncing: Mutex::new(()),
            replicated: AtomicBool::new(false),
        }
    }

    /// Entries up to `last` are in the journal (not necessarily on disk).
    pub fn wrote(&self, last: Option<LogId>) {
        // NOTE: nobody waits for this to change; see `wait`.
        self.marks.send_if_modified(|m| {
            m.written = last;
            false
        });
    }

    /// The log was cut back to `last`, and that is on disk.
    pub fn truncated(&self, last: Option<LogId>) {
        self.marks.send_modify(|m| *m = Marks { written: last, synced: last, epoch: m.epoch + 1 });
    }

    /// An fsync that began at `at` is done.
    fn synced_from(&self, at: Marks) {
        self.marks.send_if_modified(|m| {
            let newer = m.epoch == at.epoch && at.written > m.synced;
            if newer {
                m.synced = at.written;
            }
            newer
        });
    }

    /// The last entry on disk.
    pub fn synced(&self) -> Option<LogId> {
        self.marks.borrow().synced
    }

    /// Waits until the entry at `index` is on disk. An entry this log never
    /// wrote has nothing to wait for (openraft's storage tests apply such
    /// entries; a running node applies only what its log holds).
    pub async fn wait(&self, index: u64) {
        let on_disk = |m: &Marks| index_of(m.synced) >= index.min(index_of(m.written));
        if on_disk(&self.marks.borrow()) {
            return;
        }
        // NOTE: the sender lives as long as self, which the caller holds.
        let _ = self.marks.subscribe().wait_for(on_disk).await;
    }

    /// Whether this node's membership has other voters.
    pub fn replicated(&self) -> bool {
        self.replicated.load(Ordering::Relaxed)
    }

    /// Records whether this node's membership has other voters.
    pub fn set_replicated(&self, yes: bool) {
        self.replicated.store(yes, Ordering::Relaxed);
    }
}

/// Holds the data dir's lock for the life of the process.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Takes the exclusive lock on a data dir, creating the dir if needed.
pub fn lock_dir(dir: &Path) -> Result<DirLock, OpenError> {
    let io = |source| OpenError::Io { dir: dir.to_owned(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    let path = dir.join("LOCK");
    let mut file =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default().trim().to_owned();
            return Err(OpenError::Locked {
                dir: dir.to_owned(),
                pid: if pid.is_empty() { "unknown".into() } else { pid },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(DirLock { _file: file })
}

impl Store {
    /// Opens (or creates) the database under `dir/db`, upgrading a data dir
    /// of kvd 0.1 to the current format and refusing one of a newer format
    /// (crate::format::open).
    pub fn open(dir: &Path) -> Result<Store, OpenError> {
        let db_err = |source| OpenError::Db { dir: dir.to_owned(), source };
        // NOTE: journal persistence is ours to ask for: log appends, votes,
        // truncates and purges are fsync'd explicitly before openraft hears of
        // them; state machine writes ride along with the next log fsync.
        let db = Database::builder(dir.join("db")).manual_journal_persist(true).open().map_err(db_err)?;
        // NOTE: small memtables keep resident memory near the data size
        // (fjall's default is 64 MiB per keyspace, 8 keyspaces here) and
        // make each flush short; tables are what reads are served from.
        let ks = |name: &str| {
            db.keyspace(name, || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)).map_err(db_err)
        };
        let store = Store {
            log: ks("log")?,
            raft: ks("raft")?,
            data: ks("data")?,
            events: ks("events")?,
            revisions: ks("revisions")?,
            dedup: ks("dedup")?,
            sm_meta: ks("sm_meta")?,
            sys: ks("sys")?,
            db,
            dir: dir.to_owned(),
            durable: Arc::new(Durability::new()),
        };
        format::open(&store.db, &store.spaces()).map_err(|source| OpenError::Format { dir: dir.to_owned(), source })?;
        Ok(store)
    }

    /// Every keyspace, with what it holds.
    fn spaces(&self) -> format::Spaces<'_> {
        [
            (Space::Log, &self.log),
            (Space::Raft, &self.raft),
            (Space::SmMeta, &self.sm_meta),
            (Space::Data, &self.data),
            (Space::Events, &self.events),
            (Space::Revisions, &self.revisions),
            (Space::Dedup, &self.dedup),
            (Space::Sys, &self.sys),
        ]
    }

    /// Makes everything written so far durable (fdatasync of the journal).
    /// A failure stops the process: fjall is poisoned and the state on disk
    /// can no longer be trusted.
    pub fn sync(&self) {
        let at = *self.durable.marks.borrow();
        let t = std::time::Instant::now();
        if let Err(e) = self.db.persist(PersistMode::SyncData) {
            fatal("fsync of the journal failed", &e);
        }
        crate::metrics::METRICS.fsync.observe(t.elapsed());
        self.durable.synced_from(at);
    }

    /// Makes the log durable up to at least `last`, unless it already is:
    /// concurrent callers share one fsync. Whether this call made one.
    pub fn sync_upto(&self, last: LogId) -> bool {
        let _one = self.durable.syncing.lock().unwrap_or_else(|e| e.into_inner());
        let behind = self.durable.synced() < Some(last);
        if behind {
            self.sync();
        }
        behind
    }

    /// Writes every memtable out to tables, so the next start has no journal
    /// to replay (a clean stop of a node with a million keys otherwise costs
    /// seconds at the next start). Best effort: the journal still has it all.
    pub fn flush_memtables(&self) {
        let t = std::time::Instant::now();
        for (_, ks) in self.spaces() {
            // NOTE: fjall 3 exposes this only as a hidden method.
            if let Err(e) = ks.rotate_memtable_and_wait() {
                tracing::warn!(error = %e, "flushing a memtable at shutdown failed; the next start replays the journal");
                return;
            }
        }
        tracing::info!(ms = t.elapsed().as_millis() as u64, "memtables flushed");
    }
}

/// Stops the node loudly: a storage failure means this node's state can no
/// longer be trusted, so it must not go on serving (DESIGN.md §3).
pub fn fatal(what: &str, err: &dyn std::fmt::Display) -> ! {
    tracing::error!(error = %err, "{what}; stopping the node");
    eprintln!("kvd: fatal: {what}: {err}");
    std::process::exit(70)
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn id(index: u64) -> Option<LogId> {
        Some(LogId::new(CommittedLeaderId::new(1, 1), index))
    }

    #[test]
    fn an_fsync_begun_before_a_truncation_does_not_report_the_cut_entries() {
        let d = Durability::new();
        d.wrote(id(7));
        let before = *d.marks.borrow();
        d.truncated(id(3));
        d.synced_from(before);
        assert_eq!(d.synced(), id(3), "a stale fsync reported entries that are gone");
        // An fsync begun after the cut counts.
        d.wrote(id(5));
        let now = *d.marks.borrow();
        d.synced_from(now);
        assert_eq!(d.synced(), id(5));
    }
}
