//! The on-disk store: one fjall database per data dir holding the Raft log,
//! the vote and the state machine, so a single journal fsync covers them all.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

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
    /// Applied request ids, for deduplication.
    pub dedup: Keyspace,
    /// State machine metadata: last applied, membership, revision.
    pub sm_meta: Keyspace,
    /// The replicated system area: `token/NAME` → token record.
    pub sys: Keyspace,
    /// The data dir.
    pub dir: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
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
    /// Opens (or creates) the database under `dir/db`.
    pub fn open(dir: &Path) -> Result<Store, OpenError> {
        let db_err = |source| OpenError::Db { dir: dir.to_owned(), source };
        // NOTE: journal persistence is ours to ask for: log appends, votes,
        // truncates and purges are fsync'd explicitly before openraft hears of
        // them; state machine writes ride along with the next log fsync.
        let db = Database::builder(dir.join("db")).manual_journal_persist(true).open().map_err(db_err)?;
        // NOTE: small memtables keep resident memory near the data size
        // (fjall's default is 64 MiB per keyspace, 7 keyspaces here) and
        // make each flush short; tables are what reads are served from.
        let ks = |name: &str| {
            db.keyspace(name, || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)).map_err(db_err)
        };
        Ok(Store {
            log: ks("log")?,
            raft: ks("raft")?,
            data: ks("data")?,
            events: ks("events")?,
            dedup: ks("dedup")?,
            sm_meta: ks("sm_meta")?,
            sys: ks("sys")?,
            db,
            dir: dir.to_owned(),
        })
    }

    /// Makes everything written so far durable (fdatasync of the journal).
    /// A failure stops the process: fjall is poisoned and the state on disk
    /// can no longer be trusted.
    pub fn sync(&self) {
        let t = std::time::Instant::now();
        if let Err(e) = self.db.persist(PersistMode::SyncData) {
            fatal("fsync of the journal failed", &e);
        }
        crate::metrics::METRICS.fsync.observe(t.elapsed());
    }

    /// Writes every memtable out to tables, so the next start has no journal
    /// to replay (a clean stop of a node with a million keys otherwise costs
    /// seconds at the next start). Best effort: the journal still has it all.
    pub fn flush_memtables(&self) {
        let t = std::time::Instant::now();
        for ks in [&self.log, &self.raft, &self.data, &self.events, &self.dedup, &self.sm_meta, &self.sys] {
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
