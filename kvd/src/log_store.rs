//! The Raft log and vote on fjall.
//!
//! IMPORTANT: votes, truncates, purges and appends fsync before they are
//! reported done, with one exception. On a leader with followers, an append
//! of the leader's own entries is reported done at once and fsyncs on a
//! blocking thread meanwhile: openraft 0.9 replicates an entry only after
//! the leader's append of it is done, so otherwise every write would wait
//! for the leader's fsync and then for a follower's, one after the other.
//! Why that is safe, and the two rules it needs, is in
//! [`crate::store::Durability`].
//!
//! Every other append (a follower's, a single voter's, or one carrying a
//! membership change) fsyncs in place, on openraft's core, with no thread
//! hop; group commit happens one level up, where the proposer puts every
//! write queued meanwhile into one entry.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, StorageIOError};

use crate::format::{COMMITTED, PURGED, VOTE};
use crate::store::{fatal, Store};
use crate::types::{decode, encode, Entry, LogId, NodeId, StorageError, TypeConfig, Vote};

/// The log store handed to openraft (and its reader, a clone).
#[derive(Clone)]
pub struct LogStore {
    store: Store,
    /// This node.
    id: NodeId,
    /// The vote last saved.
    vote: Option<Vote>,
}

impl LogStore {
    /// Opens the log store of node `id`. Whatever the journal holds is made
    /// durable first: a crash of the process (not of the machine) can leave
    /// entries in the page cache that were never fsynced.
    pub fn new(store: Store, id: NodeId) -> Result<LogStore, StorageError> {
        let mut s = LogStore { store, id, vote: None };
        s.vote = s.get_meta(VOTE)?;
        let last = s.last_log_id()?;
        s.store.durable.wrote(last);
        s.step_down_at_start();
        s.store.sync();
        Ok(s)
    }

    /// Comes back from a restart as a follower, never as the leader it was.
    ///
    /// IMPORTANT: no log id is ever reused with other content. A log id is
    /// (term, leader, index), and only the leader of a term makes log ids
    /// of that term, one index after another, so within one life of the
    /// process it never makes the same one twice. Across a restart it could:
    /// openraft 0.9 restores a node whose saved vote is its own committed
    /// one as leader of that same term at once, and that leader appends at
    /// the end of its log as it finds it. A leader's own appends may reach
    /// the followers before its disk (the early append, see
    /// [`crate::store::Durability`]), and a power cut (or an fsync that never
    /// completed) loses them from its log while the followers keep them. It
    /// would then append other entries under the log ids the followers
    /// already hold; followers compare log ids only, keep theirs, and the
    /// replicas diverge for good. So the saved vote is turned back into an
    /// uncommitted one for the same leader id before openraft reads it: the
    /// node starts as a follower, still bound by its vote in that term (it
    /// grants no other candidate of the term), and can lead again only after
    /// winning an election in a later term, whose log ids are new. Any
    /// follower's log then is compared by the normal rules, so what a quorum
    /// holds wins (etcd and TiKV likewise restart every node as a follower).
    /// The rewritten vote is on disk before openraft starts (the caller's
    /// fsync).
    fn step_down_at_start(&mut self) {
        let Some(vote) = self.leading_vote().copied() else {
            return;
        };
        let demoted = Vote { committed: false, ..vote };
        self.store.raft.insert(VOTE, encode(&demoted)).unwrap_or_else(|e| write_failed(e));
        self.vote = Some(demoted);
        tracing::info!(term = vote.leader_id().term, "was the leader before the restart; starting as a follower");
    }

    /// The saved vote, when it is this node's own as a leader.
    fn leading_vote(&self) -> Option<&Vote> {
        self.vote.as_ref().filter(|v| v.is_committed() && v.leader_id().voted_for() == Some(self.id))
    }

    fn last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        Ok(match self.store.log.last_key_value() {
            Some(g) => {
                let v = g.value().map_err(|e| read_err(ErrorSubject::Logs, e))?;
                Some(*decode::<Entry>(&v).map_err(|e| read_err(ErrorSubject::Logs, e))?.get_log_id())
            }
            None => self.get_meta(PURGED)?,
        })
    }

    /// Whether `entries` may be reported appended before they are on disk:
    /// this node leads with followers, and they are its own entries of its
    /// term, with no membership change among them.
    ///
    /// NOTE: only the leader of a term makes entries with its term and id, so
    /// a follower's append (even of this node's entries of an older term,
    /// copied back by a later leader) never qualifies.
    fn may_sync_later(&self, entries: &[Entry]) -> bool {
        let Some(vote) = self.leading_vote() else {
            return false;
        };
        self.store.durable.replicated()
            && entries
                .iter()
                .all(|e| e.log_id.leader_id == *vote.leader_id() && !matches!(e.payload, EntryPayload::Membership(_)))
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let v = self.store.raft.get(key).map_err(|e| read_err(ErrorSubject::Store, e))?;
        v.map(|b| decode(&b)).transpose().map_err(|e| StorageIOError::read(&e).into())
    }

    /// Writes `entries` to the log. On return they are on disk, or, if
    /// [`Self::may_sync_later`], an fsync of them is under way.
    fn write(&mut self, entries: Vec<Entry>) {
        let Some(last) = entries.last().map(|e| *e.get_log_id()) else {
            return;
        };
        let mut batch = self.store.db.batch();
        for e in &entries {
            batch.insert(&self.store.log, idx_key(e.get_log_id().index), encode(e));
        }
        batch.commit().unwrap_or_else(|e| write_failed(e));
        self.store.durable.wrote(Some(last));
        let m = &crate::metrics::METRICS;
        if self.may_sync_later(&entries) {
            m.early_appends.inc();
            m.group_commit.observe_items(1);
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || {
                if store.sync_upto(last) {
                    m.group_commit.observe_event();
                }
            });
        } else {
            self.store.sync();
            m.group_commit.observe_count(1);
        }
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
        Ok(LogState { last_purged_log_id: self.get_meta(PURGED)?, last_log_id: self.last_log_id()? })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        // NOTE: a node that becomes a candidate first votes for itself in a
        // new term; the same vote committed (it won) is not another election.
        let term = vote.leader_id().term;
        if vote.leader_id().voted_for() == Some(self.id) && self.vote.is_none_or(|v| v.leader_id().term < term) {
            crate::metrics::METRICS.elections.inc();
        }
        self.store.raft.insert(VOTE, encode(vote)).unwrap_or_else(|e| write_failed(e));
        // IMPORTANT: the vote must be on disk before we answer anyone with it.
        // This also puts on disk every entry appended before it, so a leader
        // that steps down answers as a follower only for what is on disk.
        self.store.sync();
        self.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // NOTE: a hint for faster restarts only; not fsync'd on its own, and
        // written as a batch so that it waits in fjall's journal buffer for the
        // next fsync (a keyspace's own insert writes the buffer out: one
        // syscall more on every commit).
        let mut batch = self.store.db.batch();
        batch.insert(&self.store.raft, COMMITTED, encode(&committed));
        batch.commit().unwrap_or_else(|e| write_failed(e));
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
        self.write(entries.into_iter().collect());
        // IMPORTANT: on disk by now, except where Durability says otherwise.
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
        self.store.durable.truncated(self.last_log_id()?);
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

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Membership};

    use super::*;

    fn entry(term: u64, leader: NodeId, index: u64, membership: bool) -> Entry {
        let payload = if membership {
            EntryPayload::Membership(Membership::new(vec![[1, 2, 3].into()], None))
        } else {
            EntryPayload::Blank
        };
        Entry { log_id: LogId::new(CommittedLeaderId::new(term, leader), index), payload }
    }

    /// `durable.wait(index)`, failing with `why` after 10 s instead of hanging.
    async fn wait_on_disk(durable: &crate::store::Durability, index: u64, why: &str) {
        tokio::time::timeout(std::time::Duration::from_secs(10), durable.wait(index)).await.expect(why);
    }

    fn open(id: NodeId) -> (tempfile::TempDir, LogStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open store");
        let log = LogStore::new(store, id).expect("log store");
        (dir, log)
    }

    #[tokio::test]
    async fn only_a_leaders_own_entries_of_its_term_may_reach_disk_after_the_append() {
        let (_dir, mut log) = open(1);
        let leader_of = |term, node| {
            let mut v = Vote::new(term, node);
            v.commit();
            v
        };
        let mine = [entry(5, 1, 10, false), entry(5, 1, 11, false)];
        log.store.durable.set_replicated(true);

        // Not leading: a candidate's vote, or another node's leadership.
        log.save_vote(&Vote::new(5, 1)).await.expect("vote");
        assert!(!log.may_sync_later(&mine));
        log.save_vote(&leader_of(5, 2)).await.expect("vote");
        assert!(!log.may_sync_later(&mine));
        assert!(!log.may_sync_later(&[entry(5, 2, 10, false)]));

        log.save_vote(&leader_of(5, 1)).await.expect("vote");
        assert!(log.may_sync_later(&mine));
        // This node's entries of an older term, sent back by a later leader.
        assert!(!log.may_sync_later(&[entry(4, 1, 9, false), entry(5, 1, 10, false)]));
        // A membership change is on disk before anyone counts it.
        assert!(!log.may_sync_later(&[entry(5, 1, 10, false), entry(5, 1, 11, true)]));
        // A single voter has nobody to overlap its fsync with.
        log.store.durable.set_replicated(false);
        assert!(!log.may_sync_later(&mine));
    }

    #[tokio::test]
    async fn an_append_reported_early_is_on_disk_before_wait_returns() {
        let (_dir, mut log) = open(1);
        let mut vote = Vote::new(7, 1);
        vote.commit();
        log.save_vote(&vote).await.expect("vote");
        log.store.durable.set_replicated(true);
        let durable = log.store.durable.clone();

        // Another leader's entries (this node follows): on disk when done.
        log.write(vec![entry(6, 2, 1, false), entry(6, 2, 2, false)]);
        assert_eq!(durable.synced().map(|l| l.index), Some(2));

        let mine = vec![entry(7, 1, 3, false)];
        assert!(log.may_sync_later(&mine), "the test must take the early path");
        log.write(mine);
        wait_on_disk(&durable, 3, "an early append never reached the disk").await;
        assert_eq!(durable.synced().map(|l| l.index), Some(3));
        // An entry past the log's end (never written) has nothing to wait for.
        wait_on_disk(&durable, 99, "waited for an entry the log never wrote").await;
    }

    #[tokio::test]
    async fn a_truncation_leaves_the_remaining_log_on_disk() {
        let (_dir, mut log) = open(2);
        log.write((1..=5).map(|i| entry(3, 1, i, false)).collect());
        let durable = log.store.durable.clone();
        assert_eq!(durable.synced().map(|l| l.index), Some(5));

        log.truncate(*entry(3, 1, 4, false).get_log_id()).await.expect("truncate");
        assert_eq!(durable.synced().map(|l| l.index), Some(3));
        // What comes after is waited for again.
        log.store.durable.set_replicated(true);
        let mut vote = Vote::new(4, 2);
        vote.commit();
        log.save_vote(&vote).await.expect("vote");
        log.write(vec![entry(4, 2, 4, false)]);
        wait_on_disk(&durable, 4, "an append after the truncation never reached the disk").await;
        assert_eq!(durable.synced().map(|l| l.index), Some(4));
    }
}
