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

/// Serialize and Deserialize for a struct whose `new` fields (after its
/// `old` ones, in that order) are not in data dir format 2's layout: there
/// ([`layout_2`]) they are neither written nor read, and `fill` gives them
/// their values from the rest (else they are their defaults).
macro_rules! with_layout_2 {
    ($ty:ident, [$($old:ident),+], [$($new:ident),+], $fill:expr) => {
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeStruct;
                let old = layout_2();
                const OLD: usize = [$(stringify!($old)),+].len();
                const ALL: usize = OLD + [$(stringify!($new)),+].len();
                let mut st = s.serialize_struct(stringify!($ty), if old { OLD } else { ALL })?;
                $(st.serialize_field(stringify!($old), &self.$old)?;)+
                if !old {
                    $(st.serialize_field(stringify!($new), &self.$new)?;)+
                }
                st.end()
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str(stringify!($ty))
                    }
                    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<$ty, A::Error> {
                        let mut at = 0..;
                        // NOTE: the fields in the order they are encoded.
                        $(let $old = field(&mut a, at.next().unwrap_or_default())?;)+
                        let mut v = $ty { $($old,)+ $($new: Default::default(),)+ };
                        if layout_2() {
                            let fill: fn(&mut $ty) = $fill;
                            fill(&mut v);
                        } else {
                            $(v.$new = field(&mut a, at.next().unwrap_or_default())?;)+
                        }
                        Ok(v)
                    }
                }
                const FIELDS: &[&str] = &[$(stringify!($old),)+ $(stringify!($new),)+];
                let old = [$(stringify!($old)),+].len();
                d.deserialize_struct(stringify!($ty), &FIELDS[..if layout_2() { old } else { FIELDS.len() }], V)
            }
        }
    };
}

/// The next field of a struct encoded by hand, the `i`th.
fn field<'de, T: Deserialize<'de>, A: serde::de::SeqAccess<'de>>(a: &mut A, i: usize) -> Result<T, A::Error> {
    a.next_element()?.ok_or_else(|| serde::de::Error::invalid_length(i, &"all the fields"))
}

/// Attributes given with a put; `None` keeps the current (or default) value.
///
/// Encoded by `with_layout_2!`: data dir format 2 and peer formats 1 and 2 have no
/// `atime_ns` ([`in_layout_2`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// Access time, ns.
    pub atime_ns: Option<i64>,
}

with_layout_2!(PutAttrs, [kind, mode, uid, gid, mtime_ns], [atime_ns], |_| {});

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
    /// Raise the rules later writes are applied by to this level (see
    /// crate::txn::RULES; never lowered): a leader proposes its own before
    /// its first write when the log holds a lower one, so every member
    /// applies every entry by the same rules, whichever release it runs.
    SetRules(u32),
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
///
/// Encoded by `with_layout_2!`: data dir format 2 and peer formats 1 and 2 have no
/// `time_ns` ([`in_layout_2`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// Whether every compare held.
    pub succeeded: bool,
    /// Store revision after the request.
    pub revision: u64,
    /// One outcome per operation run.
    pub outcomes: Vec<Outcome>,
    /// The request's time, when applying it wrote something: the ctime of
    /// what it put (kept with the dedup record, so a retry is answered the
    /// same).
    pub time_ns: Option<i64>,
    /// The directory entries the request wrote besides the keys it named
    /// (those a key was made in or removed from, crate::txn), each with the
    /// revision it had before.
    pub touched: Vec<(String, u64)>,
}

with_layout_2!(Response, [succeeded, revision, outcomes], [time_ns, touched], |_| {});

/// An entry as stored in the state machine.
///
/// Encoded by `with_layout_2!`: data dir format 2, snapshot files `KVSNAP02` and peer
/// formats 1 and 2 have no `atime_ns` and `ctime_ns`; read there, both are
/// the mtime ([`in_layout_2`]).
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Access time, ns: set at creation and by a put that gives one, never
    /// by reads.
    pub atime_ns: i64,
    /// Change time, ns: the log time of the last write to the entry.
    pub ctime_ns: i64,
}

with_layout_2!(
    StoredEntry,
    [kind, mode, uid, gid, mtime_ns, create_revision, mod_revision, version, value],
    [atime_ns, ctime_ns],
    // (format 2 kept no access and change times: the mtime stands for them)
    |e: &mut StoredEntry| (e.atime_ns, e.ctime_ns) = (e.mtime_ns, e.mtime_ns)
);

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
            atime_ns: Some(self.atime_ns),
            ctime_ns: Some(self.ctime_ns),
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

thread_local! {
    /// Whether entries and puts are read and written in the layout of
    /// data dir format 2 ([`in_layout_2`], crate::format).
    static LAYOUT_2: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the thread reads and writes in format 2's layout: entries
/// ([`StoredEntry`]) without `atime_ns` and `ctime_ns`, puts ([`PutAttrs`])
/// without `atime_ns`, responses ([`Response`]) without `time_ns` and
/// `touched`. Format 1 (bincode 1) has
/// the same fields.
pub(crate) fn layout_2() -> bool {
    LAYOUT_2.with(std::cell::Cell::get)
}

/// Runs `f` with entries and puts read and written in format 2's layout
/// ([`layout_2`]): what data dirs of formats 1 and 2, `KVSNAP01` and
/// `KVSNAP02` files and peer formats 1 and 2 hold.
pub(crate) fn in_layout_2<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            LAYOUT_2.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(LAYOUT_2.with(|c| c.replace(true)));
    f()
}
