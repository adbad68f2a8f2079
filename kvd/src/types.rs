//! The Raft type config, declared once, and what travels through the log.

use kv_client::Kind;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

pub use crate::token::TokenRecord;

openraft::declare_raft_types!(
    /// kv's Raft types: requests are transactions, snapshots are files.
    pub TypeConfig:
        D = Batch,
        R = Vec<Response>,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A node id.
pub type NodeId = u64;
/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<NodeId>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A vote.
pub type Vote = openraft::Vote<NodeId>;
/// A storage error as openraft sees it.
pub type StorageError = openraft::StorageError<NodeId>;
/// Membership as stored by the state machine.
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
/// Metadata of a snapshot.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
/// A snapshot with its data file.
pub type Snapshot = openraft::Snapshot<TypeConfig>;

/// How to reach a member: its peer API and its client API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// URL of the peer API.
    pub peer_url: String,
    /// URL of the client API.
    pub client_url: String,
}

/// What one log entry carries: client writes batched by the proposer, so one
/// append and one fsync serve many concurrent clients (group commit).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch(pub Vec<Request>);

/// A client write. Every client write is a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Client request id; a request whose id was applied before is answered
    /// from the recorded response instead of being applied again (for the
    /// dedup window, see crate::dedup). Empty: none.
    pub id: String,
    /// Wall-clock time at the proposing node, ns; default mtime of writes, and
    /// the log time that dedup records are kept by, so applying the entry is
    /// deterministic on every member.
    pub now_ns: i64,
    /// The transaction.
    pub txn: Txn,
}

/// A transaction: if every compare holds, `success` runs, else `failure`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// Conditions.
    pub compare: Vec<Cmp>,
    /// Operations when all conditions hold.
    pub success: Vec<Op>,
    /// Operations otherwise.
    pub failure: Vec<Op>,
}

/// A condition on one key, or on every key under a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmp {
    /// The key's mod_revision is this (0: absent).
    ModRevision(String, u64),
    /// The key exists (true) or not (false).
    Exists(String, bool),
    /// No key under the prefix (normalized, "" for all) was put or deleted
    /// after this revision: by the entries' mod_revisions, the last
    /// revision that deleted a key under the prefix (kept in the system
    /// area, crate::sm), and the entry's own earlier requests. Decided from
    /// replicated state only, alike on every member.
    // NOTE: variants are only ever added at the end: the log holds them by
    // index, and older entries must still decode.
    PrefixUnchangedSince(String, u64),
}

/// Attributes given with a put; `None` keeps the current (or default) value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutAttrs {
    /// Kind.
    pub kind: Option<Kind>,
    /// Permission bits.
    pub mode: Option<u32>,
    /// Owner.
    pub uid: Option<u32>,
    /// Group.
    pub gid: Option<u32>,
    /// Modification time, ns.
    pub mtime_ns: Option<i64>,
}

/// One write operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Write a key.
    Put {
        /// The key.
        key: String,
        /// The value; `None` keeps the current one (attributes-only write).
        value: Option<ByteBuf>,
        /// Attributes.
        attrs: PutAttrs,
    },
    /// Delete a key (and with `recursive` everything below it).
    Delete {
        /// The key or prefix.
        key: String,
        /// Whole subtree.
        recursive: bool,
    },
    /// Create a token unless one of that name exists (system area; does not
    /// raise the revision).
    CreateToken(TokenRecord),
    /// Remove a token by name (system area).
    RevokeToken(String),
    /// Set the dedup window, ms (see crate::dedup): a leader proposes its
    /// own before its first write when the log holds another.
    // NOTE: variants are only ever added at the end: the log holds them by
    // index, and older entries must still decode.
    SetDedupWindow(u64),
    /// Who sent the request, as the leader authorized it: recorded with the
    /// revision it makes (see [`RevisionRecord`]). Put there by the leader
    /// only, first in each branch; produces no outcome.
    Writer(String),
}

/// Result of one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A put; the entry's new mod_revision.
    Put(String, u64),
    /// A delete; how many entries went.
    Delete(String, u64),
    /// A token operation on a name; whether it took effect.
    Token(String, bool),
    /// The whole request was refused, nothing written: its id has no record
    /// and was first used (at this time, ns) too long ago to tell whether it
    /// was applied before (see crate::dedup).
    RequestIdExpired(i64),
    /// A token created under this name, with the hash of its secret: a
    /// create resent with the same request id is answered with the first
    /// attempt's outcome, and tells by the hash that the secret it holds is
    /// not the one stored.
    TokenCreated(String, String),
}

/// What applying a request answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Whether every compare held.
    pub succeeded: bool,
    /// Store revision after the request.
    pub revision: u64,
    /// One outcome per operation run.
    pub outcomes: Vec<Outcome>,
}

/// An entry as stored in the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEntry {
    /// Kind.
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, ns.
    pub mtime_ns: i64,
    /// Revision that created it.
    pub create_revision: u64,
    /// Revision of the last write.
    pub mod_revision: u64,
    /// Writes since creation.
    pub version: u64,
    /// The value.
    pub value: ByteBuf,
}

impl StoredEntry {
    /// The wire metadata.
    pub fn meta(&self) -> kv_client::Meta {
        kv_client::Meta {
            kind: self.kind,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            mtime_ns: self.mtime_ns,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            size: self.value.len() as u64,
        }
    }
}

/// A change recorded for watchers and for reads of past revisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// The key.
    pub key: String,
    /// The entry after a put; `None` for a delete.
    pub entry: Option<StoredEntry>,
    /// What the key held just before.
    pub prev: Prev,
}

/// What a key held just before an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Prev {
    /// Not recorded: the event was written by a kvd that kept no previous
    /// entries.
    Unknown,
    /// The key did not exist.
    Absent,
    /// This entry.
    Entry(StoredEntry),
}

impl From<Option<StoredEntry>> for Prev {
    fn from(e: Option<StoredEntry>) -> Prev {
        e.map_or(Prev::Absent, Prev::Entry)
    }
}

impl StoredEvent {
    /// The record of this event in the history.
    pub(crate) fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// The key of an event from its record, without decoding its entries.
    pub(crate) fn decode_key(b: &[u8]) -> std::io::Result<String> {
        /// NOTE: postcard writes a struct's fields in order, and [`decode`]
        /// leaves trailing bytes unread: this reads the first.
        #[derive(Deserialize)]
        struct KeyOnly {
            key: String,
        }
        Ok(decode::<KeyOnly>(b)?.key)
    }

    /// An event from its record.
    pub(crate) fn decode(b: &[u8]) -> std::io::Result<StoredEvent> {
        decode(b)
    }
}

/// When a revision was made and by whom, as the history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionRecord {
    /// The log time of the request that made it, ns.
    pub time_ns: i64,
    /// Who made it: a token's name, `jwt:` and a JWT's subject, `anonymous`, or `kvd`
    /// for the node itself; `None` for revisions from before writers were
    /// recorded.
    pub writer: Option<String>,
}

/// Encodes `v` with postcard (the layout of everything kvd stores and of
/// peer messages of format 2, see crate::format); only fails for types serde
/// cannot encode, which none of ours are.
pub(crate) fn encode<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    // NOTE: postcard cannot fail on these plain types (no sequences of
    // unknown length) when writing to a growable buffer. Sized first, as
    // bincode 1 did, so a large value is written once, not regrown.
    postcard::to_extend(v, Vec::with_capacity(encoded_size(v))).unwrap_or_default()
}

/// Decodes a `T` from the front of `b` (postcard), reporting corruption as
/// an io error. Trailing bytes are left unread, so a prefix of a struct's
/// fields decodes on its own ([`StoredEvent::decode_key`]).
pub(crate) fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> std::io::Result<T> {
    postcard::from_bytes(b).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Encoded size of `v`, for batching limits.
pub(crate) fn encoded_size<T: Serialize + ?Sized>(v: &T) -> usize {
    postcard::serialize_with_flavor(v, postcard::ser_flavors::Size::default()).unwrap_or(0)
}
