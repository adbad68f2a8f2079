//! The Raft log and vote on fjall.
//!
//! IMPORTANT: nothing is reported to openraft as done before it is on disk.
//! Votes, truncates, purges and appends fsync before reporting done. An
//! append fsyncs in place, on openraft's core, with no thread hop; group
//! commit happens one level up, where the proposer puts every write queued
//! meanwhile into one entry.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, StorageIOError};

use crate::store::{fatal, Store};
use crate::types::{decode, encode, Entry, LogId, StorageError, TypeConfig, Vote};

const VOTE: &[u8] = b"vote";
const PURGED: &[u8] = b"purged";
const COMMITTED: &[u8] = b"committed";

/// The log store handed to openraft (and its reader, a clone).
#[derive(Clone)]
pub struct LogStore {
    store: Store,
}

impl LogStore {
    /// Opens the log store.
    pub fn new(store: Store) -> LogStore {
        LogStore { store }
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let v = self.store.raft.get(key).map_err(|e| read_err(ErrorSubject::Store, e))?;
        v.map(|b| decode(&b)).transpose().map_err(|e| StorageIOError::read(&e).into())
    }
}

fn idx_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn read_err(subject: ErrorSubject<u64>, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(subject, ErrorVerb::Read, openraft::AnyError::new(&e)).into()
}

/// A write to fjall failed: the database is poisoned or the disk is gone.
fn write_failed(e: fjall::Error) -> ! {
    fatal("writing the raft log failed", &e)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => Bound::Included(idx_key(e)),
            Bound::Excluded(&e) => Bound::Excluded(idx_key(e)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in self.store.log.range((Bound::Included(idx_key(start)), end)) {
            let v = item.value().map_err(|e| read_err(ErrorSubject::Logs, e))?;
            out.push(decode::<Entry>(&v).map_err(|e| read_err(ErrorSubject::Logs, e))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta(PURGED)?;
        let last = match self.store.log.last_key_value() {
            Some(g) => {
                let v = g.value().map_err(|e| read_err(ErrorSubject::Logs, e))?;
                Some(*decode::<Entry>(&v).map_err(|e| read_err(ErrorSubject::Logs, e))?.get_log_id())
            }
            None => last_purged,
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.store.raft.insert(VOTE, encode(vote)).unwrap_or_else(|e| write_failed(e));
        // IMPORTANT: the vote must be on disk before we answer anyone with it.
        self.store.sync();
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // NOTE: a hint for faster restarts only; not fsync'd on its own.
        self.store.raft.insert(COMMITTED, encode(&committed)).unwrap_or_else(|e| write_failed(e));
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = self.store.db.batch();
        for e in entries {
            batch.insert(&self.store.log, idx_key(e.get_log_id().index), encode(&e));
        }
        batch.commit().unwrap_or_else(|e| write_failed(e));
        // IMPORTANT: the callback fires only after the fsync.
        self.store.sync();
        crate::metrics::METRICS.group_commit.observe_count(1);
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = self.store.db.batch();
        for item in self.store.log.range(idx_key(log_id.index)..) {
            let k = item.key().map_err(|e| read_err(ErrorSubject::Logs, e))?;
            batch.remove(&self.store.log, k);
        }
        batch.commit().unwrap_or_else(|e| write_failed(e));
        // IMPORTANT: truncated entries must not come back after a crash.
        self.store.sync();
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = self.store.db.batch();
        batch.insert(&self.store.raft, PURGED, encode(&log_id));
        for item in self.store.log.range(..=idx_key(log_id.index)) {
            let k = item.key().map_err(|e| read_err(ErrorSubject::Logs, e))?;
            batch.remove(&self.store.log, k);
        }
        batch.commit().unwrap_or_else(|e| write_failed(e));
        // IMPORTANT: the journal is shared, so this fsync also makes the state
        // machine durable up to the snapshot the purge follows: the purged
        // entries are never needed to rebuild it.
        self.store.sync();
        Ok(())
    }
}
