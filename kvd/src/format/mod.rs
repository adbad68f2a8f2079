//! How kvd lays out what it keeps and what it sends, and the versions of
//! those layouts.
//!
//! Every value kvd stores or sends is a serde value encoded with postcard
//! (crate::types::encode, decode), except the small fixed records named
//! below.
//! Three layouts carry a version:
//!
//! - **The data dir**, format [`DATA_FORMAT`] (3), recorded as a u32
//!   big-endian under [`FORMAT_KEY`] in the `raft` keyspace. A data dir
//!   without it is format 1: kvd 0.1's, every value in the bincode 1 layout
//!   ([`bincode1`]). Format 2 is postcard with entries that have no access
//!   and change times, puts that give no access time and responses without
//!   their time ([`in_layout_2`]).
//!   Opening an older one upgrades it ([`open`]): every value that differs
//!   is decoded in the old layout and encoded in the new one (an entry's
//!   access and change times are its mtime), in ONE fjall batch with the
//!   format record, made durable before anything else is written, so a
//!   crash part-way leaves the old data dir as it was. A data dir of a newer
//!   format is refused, and nothing is written to it.
//! - **Snapshot files** (crate::snapfile): `KVSNAP03` holds postcard header
//!   and values; `KVSNAP02` (format 2's values) and `KVSNAP01` files
//!   (backups and snapshots of kvd 0.1) are still read, their values
//!   upgraded as they are read ([`upgrade_value`]).
//! - **Peer messages** ([`PeerFormat`]): the `x-kv-peer-format` header of a
//!   request says how its body is encoded (no header: 1, bincode 1, what kvd
//!   0.1 sends; 2: postcard in format 2's layout; 3: postcard); the answer
//!   comes in the same format, and says in `x-kv-peer-formats` every format
//!   the answering node reads. A sender uses format 1 with a peer until an
//!   answer says the peer reads a newer one, so members of several versions
//!   talk during a rolling upgrade. A put's access time does not travel in
//!   formats 1 and 2 (the older member keeps none).
//!
//! What each keyspace holds (values in the data dir's format):
//!
//! ```text
//! log        u64 BE index        -> Entry
//! raft       vote                -> Vote
//!            purged              -> LogId
//!            committed           -> Option<LogId>
//!            cluster_id          -> text (crate::identity)
//!            format              -> u32 BE, this data dir's format
//! sm_meta    applied             -> Option<LogId>
//!            membership          -> StoredMembership
//!            revision, compact   -> u64 BE
//! data       key                 -> StoredEntry
//! events     rev u64 BE, seq u32 BE -> StoredEvent
//! revisions  rev u64 BE          -> RevisionRecord
//! dedup      r{id}               -> (i64 log time, Response)  (crate::dedup)
//!            i{id}               -> (u64 index, Response)
//!            t.., x.., w         -> empty or u64 BE
//! sys        token/{name}        -> TokenRecord
//!            deleted/{prefix}    -> u64 BE
//!            rules               -> u32 BE  (crate::sm::RULES_KEY)
//! ```

use std::io;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub(crate) use crate::types::in_layout_2;
use crate::types::{
    decode, encode, Entry, LogId, Response, RevisionRecord, StoredEntry, StoredEvent, StoredMembership, TokenRecord,
    Vote,
};

pub mod bincode1;

/// The data dir format this kvd writes. 1: kvd 0.1 (bincode 1, no record);
/// 2: postcard, entries without access and change times.
pub const DATA_FORMAT: u32 = 3;

/// Where the data dir's format is recorded, in the `raft` keyspace.
pub const FORMAT_KEY: &[u8] = b"format";

/// `raft`: the vote.
pub const VOTE: &[u8] = b"vote";
/// `raft`: the last purged log id.
pub const PURGED: &[u8] = b"purged";
/// `raft`: the last committed log id (a hint).
pub const COMMITTED: &[u8] = b"committed";
/// `raft`: the cluster id, as text.
pub const CLUSTER_ID: &[u8] = b"cluster_id";
/// `sm_meta`: the last applied log id.
pub const APPLIED: &[u8] = b"applied";
/// `sm_meta`: the membership as last applied.
pub const MEMBERSHIP: &[u8] = b"membership";
/// `sm_meta`: the store revision, u64 BE.
pub const REVISION: &[u8] = b"revision";
/// `sm_meta`: the revision up to which the history was dropped, u64 BE.
pub const COMPACT: &[u8] = b"compact";

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// A format 1 value of type `T`, encoded in the current format.
fn reencode<T: Serialize + DeserializeOwned>(v: &[u8]) -> Result<Vec<u8>, bincode1::Error> {
    Ok(encode(&in_layout_2(|| bincode1::from_slice::<T>(v))?))
}

/// A keyspace of the data dir, or the matching records of a snapshot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// `log`.
    Log,
    /// `raft`.
    Raft,
    /// `sm_meta`.
    SmMeta,
    /// `data`.
    Data,
    /// `events`.
    Events,
    /// `revisions`.
    Revisions,
    /// `dedup`.
    Dedup,
    /// `sys`.
    Sys,
}

/// A record of data dir format `from` (1: kvd 0.1, bincode 1; 2) with its
/// value in the current format: `None` when the value is the same in both.
pub fn upgrade_value(from: u32, space: Space, key: &[u8], v: &[u8]) -> io::Result<Option<Vec<u8>>> {
    match from {
        1 => upgrade_from_1(space, key, v),
        _ => upgrade_from_2(space, key, v),
    }
}

/// A record of format 2 in the current format: only log entries (puts),
/// entries, events (which hold entries) and dedup records (responses)
/// differ.
fn upgrade_from_2(space: Space, key: &[u8], v: &[u8]) -> io::Result<Option<Vec<u8>>> {
    fn again<T: Serialize + DeserializeOwned>(v: &[u8]) -> io::Result<Vec<u8>> {
        Ok(encode(&in_layout_2(|| decode::<T>(v))?))
    }
    let new = match space {
        Space::Log => again::<Entry>(v),
        Space::Data => again::<StoredEntry>(v),
        Space::Events => again::<StoredEvent>(v),
        Space::Dedup => match key.first() {
            Some(b'r') => again::<(i64, Response)>(v),
            Some(b'i') => again::<(u64, Response)>(v),
            _ => return Ok(None),
        },
        _ => return Ok(None),
    };
    new.map(Some).map_err(|e| invalid(format!("{space:?} record {:?} does not decode: {e}", show(key))))
}

/// A record of format 1 with its value in the current format.
fn upgrade_from_1(space: Space, key: &[u8], v: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let new = match space {
        Space::Log => reencode::<Entry>(v),
        Space::Raft => match key {
            VOTE => reencode::<Vote>(v),
            PURGED => reencode::<LogId>(v),
            COMMITTED => reencode::<Option<LogId>>(v),
            CLUSTER_ID => return Ok(None),
            _ => return Err(unknown(space, key)),
        },
        Space::SmMeta => match key {
            APPLIED => reencode::<Option<LogId>>(v),
            MEMBERSHIP => reencode::<StoredMembership>(v),
            REVISION | COMPACT => return Ok(None),
            _ => return Err(unknown(space, key)),
        },
        Space::Data => reencode::<StoredEntry>(v),
        Space::Events => in_layout_2(|| legacy_event(v)).map(|e| encode(&e)),
        Space::Revisions => reencode::<RevisionRecord>(v),
        Space::Dedup => match key.first() {
            Some(b'r') => reencode::<(i64, Response)>(v),
            Some(b'i') => reencode::<(u64, Response)>(v),
            Some(b't' | b'x' | b'w') => return Ok(None),
            _ => return Err(unknown(space, key)),
        },
        Space::Sys if key.starts_with(b"token/") => reencode::<TokenRecord>(v),
        Space::Sys if key.starts_with(b"deleted/") => return Ok(None),
        Space::Sys => return Err(unknown(space, key)),
    };
    new.map(Some).map_err(|e| invalid(format!("{space:?} record {:?} does not decode: {e}", show(key))))
}

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

fn unknown(space: Space, key: &[u8]) -> io::Error {
    invalid(format!("unknown {space:?} record {:?}", show(key)))
}

/// Starts a format 1 event record that holds its previous entry. One
/// without it (written before events kept them) starts with its key's
/// length (little-endian u64), whose top byte is never 0xFF.
const EVENT_WITH_PREV: [u8; 8] = [0xFF; 8];

/// A format 1 event record, in either of its layouts.
fn legacy_event(b: &[u8]) -> Result<StoredEvent, bincode1::Error> {
    /// An event record as kvd wrote it before events kept previous entries.
    #[derive(Deserialize)]
    struct EventWithoutPrev {
        key: String,
        entry: Option<StoredEntry>,
    }
    match b.strip_prefix(EVENT_WITH_PREV.as_slice()) {
        Some(rest) => bincode1::from_slice(rest),
        None => {
            let old: EventWithoutPrev = bincode1::from_slice(b)?;
            Ok(StoredEvent { key: old.key, entry: old.entry, prev: crate::types::Prev::Unknown })
        }
    }
}

/// The keyspaces of a data dir, by what they hold.
pub type Spaces<'a> = [(Space, &'a fjall::Keyspace); 8];

/// Why a data dir cannot be used in its format.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Written by a newer kvd.
    #[error(
        "the data dir is in format {found}, newer than this kvd reads (formats 1 to {DATA_FORMAT}); it was \
         written by a newer kvd: run that version or a later one on it. Nothing was written to it"
    )]
    Newer {
        /// The format recorded.
        found: u32,
    },
    /// The format record is not a u32.
    #[error("the data dir's format record is unreadable ({0:?}); nothing was written to it")]
    Unreadable(Vec<u8>),
    /// A data dir of an older format could not be upgraded.
    #[error(
        "cannot upgrade the data dir from format {from} to {DATA_FORMAT}: {source}. Nothing was written to it: \
         run the kvd that wrote it, or restore a snapshot"
    )]
    Upgrade {
        /// The format it is in.
        from: u32,
        /// What failed.
        source: io::Error,
    },
    /// The database failed.
    #[error("{0}")]
    Db(#[from] fjall::Error),
}

/// Checks the format of a just opened data dir, and upgrades a format 1
/// one (see the module doc). Returns the format it was in.
pub fn open(db: &fjall::Database, spaces: &Spaces<'_>) -> Result<u32, FormatError> {
    let raft = spaces.iter().find(|(s, _)| *s == Space::Raft).map(|(_, k)| *k);
    let Some(raft) = raft else {
        return Err(FormatError::Upgrade { from: DATA_FORMAT, source: invalid("no raft keyspace".into()) });
    };
    if let Some(v) = raft.get(FORMAT_KEY)? {
        let found = <[u8; 4]>::try_from(v.as_ref()).map_err(|_| FormatError::Unreadable(v.to_vec()))?;
        let found = u32::from_be_bytes(found);
        match found {
            DATA_FORMAT => return Ok(found),
            2 => return upgrade(db, spaces, raft, 2),
            f if f > DATA_FORMAT => return Err(FormatError::Newer { found }),
            _ => return Err(FormatError::Unreadable(v.to_vec())),
        }
    }
    upgrade(db, spaces, raft, 1)
}

/// Upgrades a data dir of format `from` (see the module doc); returns
/// `from`, or the current format for a new (empty) data dir.
fn upgrade(db: &fjall::Database, spaces: &Spaces<'_>, raft: &fjall::Keyspace, from: u32) -> Result<u32, FormatError> {
    let t = std::time::Instant::now();
    let mut batch = db.batch();
    let mut records = 0u64;
    for (space, ks) in spaces {
        for item in ks.iter() {
            let (k, v) = item.into_inner()?;
            let new = upgrade_value(from, *space, &k, &v).map_err(|source| FormatError::Upgrade { from, source })?;
            if let Some(new) = new {
                batch.insert(ks, k, new);
            }
            records += 1;
        }
    }
    batch.insert(raft, FORMAT_KEY, DATA_FORMAT.to_be_bytes());
    // IMPORTANT: one batch: after a crash the journal holds all of it or
    // none, and nothing in the new format is written before it is durable.
    batch.commit()?;
    db.persist(fjall::PersistMode::SyncData)?;
    if records > 0 {
        tracing::info!(
            records,
            ms = t.elapsed().as_millis() as u64,
            "upgraded the data dir from format {from} to {DATA_FORMAT}"
        );
    }
    Ok(if records > 0 || from > 1 { from } else { DATA_FORMAT })
}

/// How a peer message's body is encoded (the `x-kv-peer-format` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerFormat {
    /// bincode 1's layout: kvd 0.1, which sends no header.
    Bincode1 = 1,
    /// postcard, in data dir format 2's layout ([`in_layout_2`]).
    Postcard2 = 2,
    /// postcard.
    Postcard = 3,
}

/// The header naming a peer message's format.
pub const PEER_FORMAT_HEADER: &str = "x-kv-peer-format";
/// The header of an answer naming every format its sender reads.
pub const PEER_FORMATS_HEADER: &str = "x-kv-peer-formats";
/// What this kvd puts in [`PEER_FORMATS_HEADER`].
pub const PEER_FORMATS: &str = "1 2 3";

impl PeerFormat {
    /// The format a message's [`PEER_FORMAT_HEADER`] names (none: 1); an
    /// unknown one is refused with a text saying what this kvd reads.
    pub fn of_message(header: Option<&axum::http::HeaderValue>) -> Result<PeerFormat, String> {
        let Some(h) = header else { return Ok(PeerFormat::Bincode1) };
        match h.to_str().map(str::trim) {
            Ok("1") => Ok(PeerFormat::Bincode1),
            Ok("2") => Ok(PeerFormat::Postcard2),
            Ok("3") => Ok(PeerFormat::Postcard),
            _ => Err(format!(
                "peer message format {:?} is unknown to this kvd, which reads formats {PEER_FORMATS}; \
                 upgrade this member to the sender's version",
                String::from_utf8_lossy(h.as_bytes())
            )),
        }
    }

    /// The newest format both this kvd and a peer read, by the
    /// [`PEER_FORMATS_HEADER`] of the peer's answer (none: kvd 0.1).
    pub fn best_with(header: Option<&axum::http::HeaderValue>) -> PeerFormat {
        let theirs = header.and_then(|h| h.to_str().ok()).unwrap_or_default();
        let reads = |f: &str| theirs.split([' ', ',']).any(|t| t == f);
        if reads("3") {
            PeerFormat::Postcard
        } else if reads("2") {
            PeerFormat::Postcard2
        } else {
            PeerFormat::Bincode1
        }
    }

    /// The header value naming this format.
    pub fn header(self) -> axum::http::HeaderValue {
        axum::http::HeaderValue::from_static(match self {
            PeerFormat::Bincode1 => "1",
            PeerFormat::Postcard2 => "2",
            PeerFormat::Postcard => "3",
        })
    }

    /// Encodes a message in this format.
    pub fn encode<T: Serialize + ?Sized>(self, v: &T) -> Vec<u8> {
        match self {
            PeerFormat::Bincode1 => in_layout_2(|| bincode1::to_vec(v).unwrap_or_default()),
            PeerFormat::Postcard2 => in_layout_2(|| encode(v)),
            PeerFormat::Postcard => encode(v),
        }
    }

    /// Decodes a message in this format.
    pub fn decode<T: DeserializeOwned>(self, b: &[u8]) -> io::Result<T> {
        match self {
            PeerFormat::Bincode1 => in_layout_2(|| bincode1::from_slice(b).map_err(|e| invalid(e.to_string()))),
            PeerFormat::Postcard2 => in_layout_2(|| decode(b)),
            PeerFormat::Postcard => decode(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, Membership};
    use serde_bytes::ByteBuf;

    use super::*;
    use crate::store::{OpenError, Store};
    use crate::types::{Batch, Prev, Request};

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(2, 1), index)
    }

    fn entry() -> StoredEntry {
        StoredEntry {
            kind: kv_client::Kind::File,
            mode: 0o640,
            uid: 1,
            gid: 2,
            mtime_ns: 1_700_000_000_123_456_789,
            create_revision: 3,
            mod_revision: 4,
            version: 2,
            value: ByteBuf::from(b"v".to_vec()),
            // (what an entry of an older format is read with)
            atime_ns: 1_700_000_000_123_456_789,
            ctime_ns: 1_700_000_000_123_456_789,
        }
    }

    fn old<T: Serialize>(v: &T) -> Vec<u8> {
        in_layout_2(|| bincode1::to_vec(v)).expect("encode")
    }

    /// Writes one record of every kind into `store` as kvd 0.1 did, and
    /// takes its format record away. Returns what to read back.
    fn write_format_1(store: &Store) -> (Vote, Entry, StoredMembership, TokenRecord, Response) {
        let mut vote = Vote::new(2, 1);
        vote.commit();
        let req = Request { id: "r".into(), now_ns: 5, txn: Default::default() };
        let e = Entry { log_id: log_id(7), payload: EntryPayload::Normal(Batch(vec![req])) };
        let membership = StoredMembership::new(Some(log_id(1)), Membership::new(vec![[1u64].into()], None));
        let token = TokenRecord { name: "t".into(), hash: "h".into(), grants: Default::default(), created_ns: 9 };
        let resp = Response { succeeded: true, revision: 4, ..Response::default() };
        let s = store;
        let mut b = s.db.batch();
        b.insert(&s.raft, VOTE, old(&vote));
        b.insert(&s.raft, PURGED, old(&log_id(3)));
        b.insert(&s.raft, COMMITTED, old(&Some(log_id(7))));
        b.insert(&s.raft, CLUSTER_ID, b"00000000000000ab".as_slice());
        b.insert(&s.log, 7u64.to_be_bytes(), old(&e));
        b.insert(&s.sm_meta, APPLIED, old(&Some(log_id(7))));
        b.insert(&s.sm_meta, MEMBERSHIP, old(&membership));
        b.insert(&s.sm_meta, REVISION, 4u64.to_be_bytes());
        b.insert(&s.data, "a", old(&entry()));
        let ev = StoredEvent { key: "a".into(), entry: Some(entry()), prev: Prev::Absent };
        b.insert(&s.events, [0u8; 12], [[0xFF; 8].as_slice(), &old(&ev)].concat());
        b.insert(&s.revisions, 4u64.to_be_bytes(), old(&RevisionRecord { time_ns: 5, writer: Some("w".into()) }));
        b.insert(&s.dedup, "rr", old(&(5i64, resp.clone())));
        b.insert(&s.dedup, "w", 1000u64.to_be_bytes());
        b.insert(&s.sys, "token/t", old(&token));
        b.insert(&s.sys, "deleted/a", 4u64.to_be_bytes());
        b.remove(&s.raft, FORMAT_KEY);
        b.commit().expect("commit");
        s.db.persist(fjall::PersistMode::SyncData).expect("persist");
        (vote, e, membership, token, resp)
    }

    fn get<T: DeserializeOwned>(ks: &fjall::Keyspace, key: impl AsRef<[u8]>) -> T {
        decode(&ks.get(key).expect("get").expect("present")).expect("decodes in the current format")
    }

    /// The raw bytes of every record of the data dir at `dir`, read with
    /// fjall alone (no upgrade).
    fn raw(dir: &std::path::Path) -> Vec<(String, Vec<u8>, Vec<u8>)> {
        let db = fjall::Database::builder(dir.join("db")).open().expect("open");
        let mut out = vec![];
        for name in ["log", "raft", "sm_meta", "data", "events", "revisions", "dedup", "sys"] {
            let ks = db.keyspace(name, fjall::KeyspaceCreateOptions::default).expect("keyspace");
            for item in ks.iter() {
                let (k, v) = item.into_inner().expect("read");
                out.push((name.to_owned(), k.to_vec(), v.to_vec()));
            }
        }
        out
    }

    #[test]
    fn a_data_dir_of_kvd_0_1_is_upgraded_when_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (vote, e, membership, token, resp) = write_format_1(&Store::open(dir.path()).expect("open"));
        let s = Store::open(dir.path()).expect("open and upgrade");
        assert_eq!(s.raft.get(FORMAT_KEY).expect("get").as_deref(), Some(DATA_FORMAT.to_be_bytes().as_slice()));
        assert_eq!(get::<Vote>(&s.raft, VOTE), vote);
        assert_eq!(get::<LogId>(&s.raft, PURGED), log_id(3));
        assert_eq!(get::<Option<LogId>>(&s.raft, COMMITTED), Some(log_id(7)));
        assert_eq!(s.raft.get(CLUSTER_ID).expect("get").as_deref(), Some(b"00000000000000ab".as_slice()));
        assert_eq!(get::<Entry>(&s.log, 7u64.to_be_bytes()), e);
        assert_eq!(get::<Option<LogId>>(&s.sm_meta, APPLIED), Some(log_id(7)));
        assert_eq!(get::<StoredMembership>(&s.sm_meta, MEMBERSHIP), membership);
        assert_eq!(s.sm_meta.get(REVISION).expect("get").as_deref(), Some(4u64.to_be_bytes().as_slice()));
        assert_eq!(get::<StoredEntry>(&s.data, "a"), entry());
        let ev = s.events.get([0u8; 12]).expect("get").expect("event");
        assert_eq!(StoredEvent::decode(&ev).expect("event").prev, Prev::Absent);
        assert_eq!(get::<RevisionRecord>(&s.revisions, 4u64.to_be_bytes()).writer.as_deref(), Some("w"));
        assert_eq!(get::<(i64, Response)>(&s.dedup, "rr"), (5, resp));
        assert_eq!(s.dedup.get("w").expect("get").as_deref(), Some(1000u64.to_be_bytes().as_slice()));
        assert_eq!(get::<TokenRecord>(&s.sys, "token/t"), token);
        assert_eq!(s.sys.get("deleted/a").expect("get").as_deref(), Some(4u64.to_be_bytes().as_slice()));
        // Opened again: nothing more to do.
        drop(s);
        let before = raw(dir.path());
        drop(Store::open(dir.path()).expect("open again"));
        assert_eq!(raw(dir.path()), before);
    }

    #[test]
    fn a_data_dir_of_format_2_is_upgraded_when_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        let two = |v: &dyn erased::Encode| in_layout_2(|| v.encode());
        let attrs = crate::types::PutAttrs { mode: Some(0o600), mtime_ns: Some(9), ..Default::default() };
        let put = crate::types::Op::Put { key: "a".into(), value: None, attrs };
        let txn = crate::types::Txn { success: vec![put], ..Default::default() };
        let req = Request { id: "r".into(), now_ns: 5, txn };
        let e = Entry { log_id: log_id(7), payload: EntryPayload::Normal(Batch(vec![req])) };
        let ev = StoredEvent { key: "a".into(), entry: Some(entry()), prev: Prev::Entry(entry()) };
        let resp = Response { succeeded: true, revision: 4, ..Response::default() };
        let mut b = s.db.batch();
        b.insert(&s.log, 7u64.to_be_bytes(), two(&e));
        b.insert(&s.data, "a", two(&entry()));
        b.insert(&s.events, [0u8; 12], two(&ev));
        b.insert(&s.dedup, "rr", two(&(5i64, resp.clone())));
        b.insert(&s.raft, FORMAT_KEY, 2u32.to_be_bytes());
        b.commit().expect("commit");
        s.db.persist(fjall::PersistMode::SyncData).expect("persist");
        drop(s);
        let s = Store::open(dir.path()).expect("open and upgrade");
        assert_eq!(s.raft.get(FORMAT_KEY).expect("get").as_deref(), Some(DATA_FORMAT.to_be_bytes().as_slice()));
        assert_eq!(get::<Entry>(&s.log, 7u64.to_be_bytes()), e, "a put's access time is none");
        assert_eq!(get::<StoredEntry>(&s.data, "a"), entry(), "an entry's access and change times are its mtime");
        assert_eq!(StoredEvent::decode(&s.events.get([0u8; 12]).expect("get").expect("event")).expect("event"), ev);
        assert_eq!(get::<(i64, Response)>(&s.dedup, "rr"), (5, resp));
        drop(s);
        let before = raw(dir.path());
        drop(Store::open(dir.path()).expect("open again"));
        assert_eq!(raw(dir.path()), before);
    }

    /// Encoding through a trait object (the records of one batch differ in
    /// type).
    mod erased {
        pub trait Encode {
            fn encode(&self) -> Vec<u8>;
        }
        impl<T: serde::Serialize> Encode for T {
            fn encode(&self) -> Vec<u8> {
                crate::types::encode(self)
            }
        }
    }

    #[test]
    fn an_upgrade_that_fails_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        write_format_1(&s);
        s.data.insert("bad", [1u8, 2, 3]).expect("insert");
        s.db.persist(fjall::PersistMode::SyncData).expect("persist");
        drop(s);
        let before = raw(dir.path());
        let e = Store::open(dir.path()).map(drop).expect_err("an undecodable record");
        assert!(matches!(e, OpenError::Format { source: FormatError::Upgrade { from: 1, .. }, .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains("cannot upgrade the data dir from format 1") && text.contains("\"bad\""), "{text}");
        assert_eq!(raw(dir.path()), before, "the data dir changed");
    }

    #[test]
    fn a_data_dir_of_a_newer_format_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        s.raft.insert(FORMAT_KEY, (DATA_FORMAT + 1).to_be_bytes()).expect("insert");
        s.data.insert("a", [0xAB; 4]).expect("insert");
        s.db.persist(fjall::PersistMode::SyncData).expect("persist");
        drop(s);
        let before = raw(dir.path());
        let e = Store::open(dir.path()).map(drop).expect_err("a newer format");
        assert!(matches!(e, OpenError::Format { source: FormatError::Newer { found: 4 }, .. }), "{e}");
        assert!(e.to_string().contains("format 4, newer than this kvd reads (formats 1 to 3)"), "{e}");
        assert_eq!(raw(dir.path()), before, "the data dir changed");
    }

    #[test]
    fn a_new_data_dir_records_the_current_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        assert_eq!(s.raft.get(FORMAT_KEY).expect("get").as_deref(), Some(DATA_FORMAT.to_be_bytes().as_slice()));
    }

    #[test]
    fn peer_formats_are_named_by_headers_and_unknown_ones_refused() {
        use axum::http::HeaderValue;
        assert_eq!(PeerFormat::of_message(None), Ok(PeerFormat::Bincode1), "kvd 0.1 sends no header");
        assert_eq!(PeerFormat::of_message(Some(&HeaderValue::from_static("2"))), Ok(PeerFormat::Postcard2));
        assert_eq!(PeerFormat::of_message(Some(&HeaderValue::from_static("3"))), Ok(PeerFormat::Postcard));
        let e = PeerFormat::of_message(Some(&HeaderValue::from_static("4"))).expect_err("unknown");
        assert!(e.contains("format \"4\"") && e.contains("reads formats 1 2 3"), "{e}");
        assert_eq!(PeerFormat::best_with(None), PeerFormat::Bincode1, "kvd 0.1 answers without the header");
        assert_eq!(PeerFormat::best_with(Some(&HeaderValue::from_static("1 2"))), PeerFormat::Postcard2);
        assert_eq!(PeerFormat::best_with(Some(&HeaderValue::from_static(PEER_FORMATS))), PeerFormat::Postcard);
        assert_eq!(PeerFormat::best_with(Some(&HeaderValue::from_static("1 2 3 4"))), PeerFormat::Postcard);
        let mut e = entry();
        (e.atime_ns, e.ctime_ns) = (11, 12);
        for f in [PeerFormat::Bincode1, PeerFormat::Postcard2, PeerFormat::Postcard] {
            assert_eq!(PeerFormat::of_message(Some(&f.header())), Ok(f));
            let v = (7u64, "x".to_owned(), Some(e.clone()));
            let back = f.decode::<(u64, String, Option<StoredEntry>)>(&f.encode(&v)).expect("decode");
            // Formats 1 and 2 carry no access and change times: the mtime
            // stands for them.
            let want = if f == PeerFormat::Postcard { v } else { (7, "x".to_owned(), Some(entry())) };
            assert_eq!(back, want, "{f:?}");
        }
        assert_eq!(PeerFormat::Bincode1.encode(&7u32), [7, 0, 0, 0]);
        assert_eq!(PeerFormat::Postcard2.encode(&7u32), [7]);
        assert_eq!(PeerFormat::Postcard.encode(&7u32), [7]);
    }
}
