//! Snapshots of the state machine: building, verifying, installing, and
//! the offline restore of `kvd restore`.

use super::*;

impl SmReader {
    /// Writes a snapshot of the current state and puts it in place as
    /// `current.snap`, unless a newer one got there meanwhile. Returns it
    /// open (the file written, whatever the path holds by then).
    pub(super) fn build_snapshot_file(&self) -> io::Result<(Header, std::fs::File)> {
        let tmp = self.temp_path("build");
        let header = self.write_snapshot(&tmp)?;
        let file = std::fs::File::open(&tmp)?;
        self.at(Step::Built);
        let _one = self.lock_snapshots();
        if !self.newer_than_current(&header)? {
            tracing::info!(snapshot = %header.meta.snapshot_id, "a newer snapshot was put in place meanwhile; keeping it");
            std::fs::remove_file(&tmp)?;
            return Ok((header, file));
        }
        std::fs::rename(&tmp, self.current_snapshot_path())?;
        snapfile::sync_dir(&self.snap_dir)?;
        Ok((header, file))
    }

    /// A fresh temp file name in the snapshot dir (removed at start if left).
    pub fn temp_snapshot_path(&self) -> PathBuf {
        self.temp_path("backup")
    }

    /// A fresh temp file name in the snapshot dir, for `what`.
    pub(super) fn temp_path(&self, what: &str) -> PathBuf {
        self.snap_dir.join(format!("{what}-{}.tmp", kv_client::clock::now_ns()))
    }

    /// Writes a snapshot of one consistent view of the state to `dest`.
    pub fn write_snapshot(&self, dest: &std::path::Path) -> io::Result<Header> {
        let snap = {
            let _one = self.lock_snapshots();
            self.store.db.snapshot()
        };
        let m = &self.store.sm_meta;
        let applied: Option<LogId> = snap.get(m, APPLIED).map_err(io_err)?.map(|b| decode(&b)).transpose()?.flatten();
        let membership: StoredMembership =
            snap.get(m, MEMBERSHIP).map_err(io_err)?.map(|b| decode(&b)).transpose()?.unwrap_or_default();
        let revision = u64_of(snap.get(m, REVISION).map_err(io_err)?);
        let nanos = kv_client::clock::now_ns();
        let snapshot_id = match applied {
            Some(l) => format!("{}-{}-{}-{nanos}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => format!("0-0-0-{nanos}"),
        };
        let header =
            Header { meta: SnapshotMeta { last_log_id: applied, last_membership: membership, snapshot_id }, revision };
        let mut w = snapfile::Writer::new(std::fs::File::create(dest)?, &header)?;
        for item in snap.iter(&self.store.data) {
            let (k, v) = item.into_inner().map_err(io_err)?;
            w.record(TAG_DATA, &k, &v)?;
        }
        for item in snap.iter(&self.store.dedup) {
            let (k, v) = item.into_inner().map_err(io_err)?;
            w.record(TAG_DEDUP, &k, &v)?;
        }
        for item in snap.iter(&self.store.sys) {
            let (k, v) = item.into_inner().map_err(io_err)?;
            w.record(TAG_SYS, &k, &v)?;
        }
        w.finish()?;
        Ok(header)
    }

    /// Replaces the state with the snapshot in `file` (the one in place as
    /// `current.snap`). Call under [`Self::lock_snapshots`].
    ///
    /// IMPORTANT: read from the open file that was checked, never again by
    /// path: a rename in between could put another file there.
    pub(super) fn load_snapshot(&self, file: &mut std::fs::File) -> io::Result<ApplyState> {
        use std::io::Seek;
        // NOTE: its records were checked before it went in place (install,
        // or the snapshot this node built); the CRC pass here only keeps a
        // damaged file from being half loaded.
        file.rewind()?;
        let header = snapfile::read(&mut *file, |_, _, _| Ok(()))?;
        file.rewind()?;
        let s = &self.store;
        self.loads.fetch_add(1, Ordering::SeqCst);
        let _done = LoadDone(&self.loads);
        for ks in [&s.data, &s.dedup, &s.events, &s.revisions, &s.sys] {
            ks.clear().unwrap_or_else(|e| fatal("clearing the state machine failed", &e));
        }
        self.at(Step::Cleared);
        let mut batch = load_records(s, file).unwrap_or_else(|e| fatal("loading a snapshot failed", &e));
        let mut st = ApplyState {
            applied: header.meta.last_log_id,
            membership: header.meta.last_membership.clone(),
            compact: header.revision,
            txn: txn::State { revision: header.revision, dedup_window_ms: dedup::DEFAULT_WINDOW_MS, rules: 0 },
            dedup: dedup::Floor::default(),
        };
        // IMPORTANT: the applied id is written last, so a crash part-way leaves
        // `current.snap` ahead of it and the next start loads it again.
        batch.insert(&s.sm_meta, MEMBERSHIP, encode(&st.membership));
        batch.insert(&s.sm_meta, REVISION, st.txn.revision.to_be_bytes());
        batch.insert(&s.sm_meta, COMPACT, st.compact.to_be_bytes());
        batch.insert(&s.sm_meta, APPLIED, encode(&st.applied));
        batch.commit().unwrap_or_else(|e| fatal("loading a snapshot failed", &e));
        s.sync();
        // NOTE: read once the last batch of records (the window's among them)
        // is in.
        st.txn.dedup_window_ms = dedup::window_ms(s)?;
        self.dedup_window_ms.store(st.txn.dedup_window_ms, std::sync::atomic::Ordering::Relaxed);
        st.txn.rules = super::rules(s)?;
        self.rules.store(st.txn.rules, std::sync::atomic::Ordering::Relaxed);
        self.reload_tokens()?;
        st.dedup = dedup::Floor::load(s);
        Ok(st)
    }
}

/// Offline restore: loads a verified snapshot file's data into an empty
/// store. The node then bootstraps a new one-member cluster on first start,
/// continuing from the snapshot's revision.
pub fn restore(store: &Store, snapshot: &std::path::Path) -> io::Result<u64> {
    let mut file = std::fs::File::open(snapshot)?;
    let header = verify_snapshot(&mut file)?;
    std::io::Seek::rewind(&mut file)?;
    let mut batch = load_records(store, file)?;
    batch.insert(&store.sm_meta, REVISION, header.revision.to_be_bytes());
    batch.insert(&store.sm_meta, COMPACT, header.revision.to_be_bytes());
    batch.commit().map_err(io_err)?;
    store.sync();
    Ok(header.revision)
}

/// Checks one snapshot record the way the state machine will read it: a
/// valid key with a decodable entry, a decodable token or dedup record. The
/// CRC catches a damaged file; this catches a well-formed file that was not
/// written by kvd (or by a kvd with other types) before it is installed.
pub(crate) fn check_record(tag: u8, k: &[u8], v: &[u8]) -> io::Result<()> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("snapshot record: {what}"));
    match tag {
        TAG_DATA => {
            let key = std::str::from_utf8(k).map_err(|_| bad("key is not UTF-8"))?;
            kv_client::validate_key(key).map_err(|e| bad(&format!("bad key {key:?}: {e}")))?;
            decode::<StoredEntry>(v).map_err(|_| bad(&format!("entry of {key:?} does not decode")))?;
        }
        TAG_SYS if k == super::RULES_KEY => {
            if v.len() != 4 {
                return Err(bad("the rules record is not a u32"));
            }
        }
        TAG_SYS if k.starts_with(DELETED.as_bytes()) => {
            if v.len() != 8 {
                return Err(bad("a deletion record is not a revision"));
            }
        }
        TAG_SYS => {
            decode::<TokenRecord>(v).map_err(|_| bad("token record does not decode"))?;
        }
        TAG_DEDUP => dedup::check_record(k, v).map_err(bad)?,
        _ => return Err(bad("unknown record tag")),
    }
    Ok(())
}

/// Checks a whole snapshot file (CRC and every record) and returns its header.
///
/// NOTE: a damaged file is reported as such (the CRC, checked at the end),
/// wherever the damage lies; a record that does not decode is reported only
/// in a file whose CRC holds (one written by something other than kvd).
pub(crate) fn verify_snapshot(file: impl io::Read) -> io::Result<Header> {
    let mut first_bad = None;
    let header = snapfile::read(file, |tag, k, v| {
        if first_bad.is_none() {
            first_bad = check_record(tag, &k, &v).err();
        }
        Ok(())
    })?;
    first_bad.map_or(Ok(header), Err)
}

#[cfg(any(test, fuzzing))]
/// Fuzzing entry: a snapshot file of arbitrary bytes must be refused with an
/// error or read whole; never a panic or an allocation beyond its size.
pub fn fuzz_snapshot(data: &[u8]) {
    let mut records = 0usize;
    if snapfile::read(data, |tag, k, v| {
        records += 1;
        // NOTE: a value of a KVSNAP01 file is re-encoded as it is read, and
        // a varint may take a byte or two more than the fixed-width integer
        // it replaces: never twice as many.
        assert!(k.len() + v.len() <= 2 * data.len(), "a record is longer than the file");
        check_record(tag, &k, &v)
    })
    .is_ok()
    {
        assert!(records * 9 <= data.len());
    }
}

/// Writes a (verified) snapshot file's records into the store in batches;
/// returns the last batch, still open, for the caller's metadata.
fn load_records(store: &Store, file: impl io::Read) -> io::Result<fjall::OwnedWriteBatch> {
    let mut batch = store.db.batch();
    snapfile::read(file, |tag, k, v| {
        let ks = match tag {
            TAG_DATA => &store.data,
            TAG_SYS => &store.sys,
            _ => &store.dedup,
        };
        batch.insert(ks, k, v);
        if batch.len() >= 1024 {
            std::mem::replace(&mut batch, store.db.batch()).commit().map_err(io_err)?;
        }
        Ok(())
    })?;
    Ok(batch)
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let shared = self.shared.clone();
        let (header, file) = blocking(move || shared.build_snapshot_file())
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        tracing::info!(snapshot = %header.meta.snapshot_id, revision = header.revision, "built snapshot");
        crate::metrics::METRICS.snapshots_built.inc();
        Ok(Snapshot { meta: header.meta, snapshot: Box::new(tokio::fs::File::from_std(file)) })
    }
}
