//! Wire types of the client API (DESIGN.md §4). Values travel as raw bytes in
//! kv requests; everything here is JSON.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;

/// Header names used by the client API.
pub mod header {
    /// The revision a response reflects.
    pub const REVISION: &str = "x-kv-revision";
    /// Entry kind: `file`, `dir`, `symlink`, `fifo`, `socket`, `char` or `block`.
    pub const KIND: &str = "x-kv-kind";
    /// Permission bits, in octal (`0644`).
    pub const MODE: &str = "x-kv-mode";
    /// Owner user id.
    pub const UID: &str = "x-kv-uid";
    /// Owner group id.
    pub const GID: &str = "x-kv-gid";
    /// Modification time in nanoseconds since the Unix epoch.
    pub const MTIME: &str = "x-kv-mtime";
    /// Access time in nanoseconds since the Unix epoch (set by writes that
    /// give it, never by reads).
    pub const ATIME: &str = "x-kv-atime";
    /// Change time in nanoseconds since the Unix epoch: the time of the last
    /// write to the entry (answers only).
    pub const CTIME: &str = "x-kv-ctime";
    /// Revision of the write that created the entry.
    pub const CREATE_REVISION: &str = "x-kv-create-revision";
    /// Revision of the last write to the entry.
    pub const MOD_REVISION: &str = "x-kv-mod-revision";
    /// Writes since creation.
    pub const VERSION: &str = "x-kv-version";
    /// Client-chosen id of a write; a retried write with the same id applies once.
    pub const REQUEST_ID: &str = "x-kv-request-id";
    /// On a write a follower forwarded: the leader's client URL, where the
    /// next writes are cheaper (no hop through the follower).
    pub const LEADER: &str = "x-kv-leader";
    /// On a watch: how often the stream carries a keepalive when idle, ms.
    pub const KEEPALIVE_MS: &str = "x-kv-keepalive-ms";
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A file: the value is its content.
    #[default]
    File,
    /// An explicit directory: the value is empty.
    Dir,
    /// A symbolic link: the value is the link target.
    Symlink,
    /// A named pipe (FIFO): the value is empty; a mount's kernel does its I/O.
    Fifo,
    /// A unix socket's name: the value is empty.
    Socket,
    /// A character device: the value is its number, `MAJOR:MINOR`.
    Char,
    /// A block device: the value is its number, `MAJOR:MINOR`.
    Block,
}

impl Kind {
    /// Every kind, in wire order.
    pub const ALL: [Kind; 7] =
        [Kind::File, Kind::Dir, Kind::Symlink, Kind::Fifo, Kind::Socket, Kind::Char, Kind::Block];

    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
            Kind::Char => "char",
            Kind::Block => "block",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Permission bits a new entry of this kind gets when none are given.
    pub fn default_mode(self) -> u32 {
        match self {
            Kind::Dir => 0o755,
            Kind::Symlink => 0o777,
            _ => 0o644,
        }
    }

    /// Whether the kind is a device (its value is its number).
    pub fn is_device(self) -> bool {
        matches!(self, Kind::Char | Kind::Block)
    }

    /// Whether an entry of this kind holds a value: a directory, FIFO or
    /// socket never does.
    pub fn holds_value(self) -> bool {
        !matches!(self, Kind::Dir | Kind::Fifo | Kind::Socket)
    }

    /// Whether `value` is a value an entry of this kind may hold; the
    /// reason when it is not.
    pub fn check_value(self, value: &[u8]) -> Result<(), String> {
        match self {
            Kind::File => Ok(()),
            _ if !self.holds_value() && !value.is_empty() => Err(format!("a {} entry has no value", self.as_str())),
            Kind::Dir | Kind::Fifo | Kind::Socket => Ok(()),
            Kind::Symlink if value.is_empty() => Err("a symlink needs a target as its value".into()),
            Kind::Symlink => Ok(()),
            Kind::Char | Kind::Block => device_number(value).map(|_| ()).ok_or_else(|| {
                format!(
                    "a {} device needs its number as its value, MAJOR:MINOR in decimal without leading \
                     zeros (major below 4096, minor below 1048576), not {:?}",
                    self.as_str(),
                    String::from_utf8_lossy(value)
                )
            }),
        }
    }

    /// Whether a put of this kind with `value` (`None`: the key's own
    /// value is kept) may be taken; the reason when not. Without a value,
    /// a device's number and a symlink's target cannot be kept from
    /// whatever the key held before.
    pub fn check_put(self, value: Option<&[u8]>) -> Result<(), String> {
        match value {
            Some(v) => self.check_value(v),
            None if self.is_device() => {
                Err(format!("a {} device needs its number as its value, MAJOR:MINOR in decimal", self.as_str()))
            }
            None if self == Kind::Symlink => Err("a symlink needs a target as its value".into()),
            None => Ok(()),
        }
    }

    /// The kind an entry of this kind keeps when a put gives no kind and
    /// `value` (`None`: none): a FIFO, socket or device that cannot hold
    /// the value (content, not a device number) is replaced by a file.
    pub fn kept_by(self, value: Option<&[u8]>) -> Kind {
        let special = matches!(self, Kind::Fifo | Kind::Socket | Kind::Char | Kind::Block);
        if special && value.is_some_and(|v| self.check_value(v).is_err()) {
            Kind::File
        } else {
            self
        }
    }
}

/// The largest device major number a mount can show (12 bits).
pub const MAX_MAJOR: u32 = (1 << 12) - 1;
/// The largest device minor number a mount can show (20 bits).
pub const MAX_MINOR: u32 = (1 << 20) - 1;

/// The device number a device entry's value holds: `MAJOR:MINOR`, in
/// decimal, as `ls -l` and `stat` show them.
pub fn device_number(value: &[u8]) -> Option<(u32, u32)> {
    let (major, minor) = std::str::from_utf8(value).ok()?.split_once(':')?;
    let num = |s: &str| s.bytes().all(|b| b.is_ascii_digit()).then(|| s.parse::<u32>().ok()).flatten();
    let (major, minor) = (num(major)?, num(minor)?);
    // NOTE: one spelling per number (no leading zeros), the one mounts and
    // `kvctl export` read back, so equal numbers compare equal.
    (major <= MAX_MAJOR && minor <= MAX_MINOR && value == device_value(major, minor).as_slice())
        .then_some((major, minor))
}

/// The value of a device entry with number `major`:`minor`.
pub fn device_value(major: u32, minor: u32) -> Vec<u8> {
    format!("{major}:{minor}").into_bytes()
}

/// Metadata of an entry (DESIGN.md §2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// File, dir, symlink, FIFO, socket or device.
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Revision of the write that created the entry.
    pub create_revision: u64,
    /// Revision of the last write to the entry.
    pub mod_revision: u64,
    /// Writes since creation (1 after the first).
    pub version: u64,
    /// Length of the value in bytes.
    pub size: u64,
    /// Access time, ns since the epoch: set when the entry is created and by
    /// writes that give one, never by reads. `None` from a server that
    /// keeps none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atime_ns: Option<i64>,
    /// Change time, ns since the epoch: when the entry was last written
    /// (value or attributes). `None` from a server that keeps none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctime_ns: Option<i64>,
}

impl Meta {
    /// The access time, the mtime when the server keeps none.
    pub fn atime(&self) -> i64 {
        self.atime_ns.unwrap_or(self.mtime_ns)
    }

    /// The change time, the mtime when the server keeps none.
    pub fn ctime(&self) -> i64 {
        self.ctime_ns.unwrap_or(self.mtime_ns)
    }
}

/// One entry in a list or watch event, with its value when asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryInfo {
    /// Full key.
    pub key: String,
    /// Metadata.
    #[serde(flatten)]
    pub meta: Meta,
    /// The value when it is UTF-8 (and values were asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value in standard base64 when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

impl EntryInfo {
    /// Builds an entry, carrying `value` as text or base64 when given.
    pub fn new(key: String, meta: Meta, value: Option<&[u8]>) -> EntryInfo {
        let (text, b64) = match value {
            None => (None, None),
            Some(v) => match std::str::from_utf8(v) {
                Ok(s) => (Some(s.to_owned()), None),
                Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(v))),
            },
        };
        EntryInfo { key, meta, value: text, value_base64: b64 }
    }

    /// The value bytes, if the entry carries them.
    pub fn value_bytes(&self) -> Option<Vec<u8>> {
        decode_value(self.value.as_deref(), self.value_base64.as_deref()).ok()?
    }
}

/// Decodes a value given as text or base64 (at most one of them).
pub fn decode_value(text: Option<&str>, b64: Option<&str>) -> Result<Option<Vec<u8>>, String> {
    match (text, b64) {
        (Some(_), Some(_)) => Err("give either value or value_base64, not both".into()),
        (Some(t), None) => Ok(Some(t.as_bytes().to_vec())),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(Some)
            .map_err(|e| format!("value_base64 is not valid base64: {e}")),
        (None, None) => Ok(None),
    }
}

/// `GET /v1/list/{prefix}` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListResponse {
    /// Revision the listing reflects.
    pub revision: u64,
    /// Entries in key order. Without `recursive`, directories that exist only
    /// because keys lie below them appear with kind `dir` and revision 0.
    pub entries: Vec<EntryInfo>,
    /// True when `limit` cut the listing; pass `after=next_after` for more.
    pub more: bool,
    /// Where the next page starts (the `after` parameter), when `more`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// `GET /v1/history/{key}` answer: the key's versions that the history
/// still holds, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryResponse {
    /// The key.
    pub key: String,
    /// The revision the answer reflects.
    pub revision: u64,
    /// The history starts after this revision: versions before it are gone.
    pub compact: u64,
    /// Versions, newest first.
    pub versions: Vec<KeyVersion>,
}

/// One version of a key: what one revision left there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVersion {
    /// The revision that made it.
    pub revision: u64,
    /// When, ns since the epoch (the log time of the write); absent when
    /// not recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_ns: Option<i64>,
    /// Who: a token's name, `jwt:` and a JWT's subject, `anonymous`, or `kvd`; absent
    /// when not recorded (written before writers were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<String>,
    /// The revision deleted the key.
    pub deleted: bool,
    /// The entry's metadata after the revision; absent when deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Meta>,
}

/// A condition of a transaction, in one of two forms:
///
/// - on a key: `{"key": K, "mod_revision": N}` (the key's mod_revision is
///   N; 0 = absent) or `{"key": K, "exists": B}`;
/// - on a prefix: `{"prefix": P, "unchanged_since": N}` holds when no key
///   under P (`""` for the whole keyspace, one trailing `/` allowed) was put
///   or deleted after revision N, however long ago N was (a transaction
///   holds at most a few).
///
/// Build them with [`Compare::key_at`], [`Compare::key_exists`] and
/// [`Compare::prefix_unchanged`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compare {
    /// Key compared (the key form; empty in the prefix form).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// Holds when the key's mod_revision equals this (0 = key absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mod_revision: Option<u64>,
    /// Holds when the key exists (true) or does not (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    /// Prefix compared (the prefix form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Holds when nothing under `prefix` changed after this revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unchanged_since: Option<u64>,
}

impl Compare {
    /// Holds when `key`'s mod_revision is `rev` (0: the key is absent).
    pub fn key_at(key: impl Into<String>, rev: u64) -> Compare {
        Compare { key: key.into(), mod_revision: Some(rev), ..Compare::default() }
    }

    /// Holds when `key` exists (`true`) or does not (`false`).
    pub fn key_exists(key: impl Into<String>, exists: bool) -> Compare {
        Compare { key: key.into(), exists: Some(exists), ..Compare::default() }
    }

    /// Holds when no key under `prefix` was put or deleted after `rev`.
    pub fn prefix_unchanged(prefix: impl Into<String>, rev: u64) -> Compare {
        Compare { prefix: Some(prefix.into()), unchanged_since: Some(rev), ..Compare::default() }
    }
}

/// Attributes a put may set; absent ones keep the existing entry's (or the
/// defaults for a new entry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attrs {
    /// Entry kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    /// Permission bits (at most 0o7777).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Owner user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Owner group id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Modification time, ns since the epoch (default: the time of a write
    /// that gives a value, else kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
    /// Access time, ns since the epoch (default: kept; the time of the write
    /// for a new entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atime_ns: Option<i64>,
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum TxnOp {
    /// Write a key.
    Put {
        /// Key written.
        key: String,
        /// The value as UTF-8 text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
        /// The value as base64 (for binary values).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value_base64: Option<String>,
        /// Entry kind.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<Kind>,
        /// Permission bits.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
        /// Owner user id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uid: Option<u32>,
        /// Owner group id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gid: Option<u32>,
        /// Modification time, ns since the epoch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtime_ns: Option<i64>,
        /// Access time, ns since the epoch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        atime_ns: Option<i64>,
    },
    /// Delete a key, or with `recursive` the key and everything below it.
    Delete {
        /// Key (or prefix) deleted.
        key: String,
        /// Delete the whole subtree.
        #[serde(default)]
        recursive: bool,
    },
}

impl TxnOp {
    /// A put of a text value with every attribute left as it is.
    pub fn put(key: impl Into<String>, value: impl Into<String>) -> TxnOp {
        TxnOp::Put {
            key: key.into(),
            value: Some(value.into()),
            value_base64: None,
            kind: None,
            mode: None,
            uid: None,
            gid: None,
            mtime_ns: None,
            atime_ns: None,
        }
    }
}

/// `POST /v1/txn` body: if every compare holds, `success` runs, else `failure`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnRequest {
    /// Conditions, all of which must hold.
    #[serde(default)]
    pub compare: Vec<Compare>,
    /// Operations run when every compare holds.
    #[serde(default)]
    pub success: Vec<TxnOp>,
    /// Operations run otherwise.
    #[serde(default)]
    pub failure: Vec<TxnOp>,
}

/// Result of one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpResult {
    /// `put` or `delete`.
    pub op: String,
    /// Key of the operation.
    pub key: String,
    /// For a put, the entry's new mod_revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mod_revision: Option<u64>,
    /// For a delete, how many entries it removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<u64>,
}

/// Answer of a transaction, and of PUT and DELETE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Whether every compare held.
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: u64,
    /// One result per operation that ran.
    pub results: Vec<OpResult>,
    /// The time the transaction wrote with (ns since the epoch: the mtime
    /// of entries it put without one, the ctime of all it put, and the
    /// times of the directories in `touched`); absent when it wrote
    /// nothing (or from a server that does not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_ns: Option<i64>,
    /// The directory entries it wrote besides the keys it named: those a
    /// key was made in or removed from, given its time as their mtime and
    /// ctime, in its revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub touched: Vec<Touched>,
}

/// A directory entry a transaction wrote besides the keys it named
/// ([`TxnResponse::touched`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Touched {
    /// Its full key.
    pub key: String,
    /// The revision it had before: a copy of it at that revision became
    /// the transaction's.
    pub mod_revision_before: u64,
}

/// Kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// The key was written.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change, as sent by a watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// Put or delete.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// Key changed.
    pub key: String,
    /// Revision of the change (a transaction's changes share one).
    pub revision: u64,
    /// The entry after a put, with its value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryInfo>,
    /// The entry before the change, with its value, when the watch asked
    /// for it (`prev=true`) and the key existed (and the history kept it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<EntryInfo>,
}

/// One node's own view of itself (`GET /v1/status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node id.
    pub id: u64,
    /// `leader`, `follower`, `learner`, `candidate` or `shutdown`.
    pub role: String,
    /// Current Raft term.
    pub term: u64,
    /// The leader this node knows of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
    /// Last log index on this node.
    pub last_log_index: u64,
    /// Highest index this node knows to be committed.
    pub commit_index: u64,
    /// Last applied index.
    pub applied_index: u64,
    /// Last log index covered by this node's snapshot.
    pub snapshot_index: u64,
    /// Log entries up to this index are purged from this node's log.
    pub purged_index: u64,
    /// Store revision.
    pub revision: u64,
    /// Disk space used by the data dir's database, bytes.
    pub db_size_bytes: u64,
    /// Peer URL.
    pub peer_url: String,
    /// Client URL.
    pub client_url: String,
    /// The limits this member holds client requests to (`GET /v1/status`
    /// only; absent from older members and in `GET /v1/cluster`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
}

/// The limits a member holds client requests to, from its configuration, so
/// that a client can refuse what is too large before sending it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest value, bytes (larger: 413).
    pub max_value_size: u64,
    /// Largest transaction body, bytes of JSON (larger: 413).
    pub max_txn_size: u64,
    /// Most compares and operations in one transaction (more: 400).
    pub max_txn_ops: u64,
}

impl Limits {
    /// kvd's defaults, for a member too old to say.
    pub const DEFAULT: Limits = Limits { max_value_size: 1 << 20, max_txn_size: 16 << 20, max_txn_ops: 4096 };
}

/// A member as `GET /v1/cluster` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Node id.
    pub id: u64,
    /// Peer URL.
    pub peer_url: String,
    /// Client URL.
    pub client_url: String,
    /// Voter (true) or learner (false).
    pub voter: bool,
    /// The member's own status, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<NodeStatus>,
    /// Why the member did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Log entries the member's applied index is behind the leader's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
}

/// `GET /v1/cluster` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The leader, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
    /// Term of the answering node.
    pub term: u64,
    /// Members by id.
    pub members: Vec<MemberInfo>,
}

/// `POST /v1/cluster/members` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// Id of the new member (non-zero, unused).
    pub id: u64,
    /// Its peer URL.
    pub peer_url: String,
    /// Its client URL (default: unknown until it reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_url: Option<String>,
    /// Keep it a learner instead of promoting it once it caught up.
    #[serde(default)]
    pub learner: bool,
}

/// `POST /v1/cluster/leader` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferLeader {
    /// The voter that should lead.
    pub id: u64,
}

/// Error body of every failed request (DESIGN.md §4): `{"error": "<code>",
/// "message": "<sentence>"}`.
///
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong (`invalid_key`, `not_found`, ...).
    pub error: ErrorCode,
    /// A sentence for humans.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_ops_parse_and_unknown_ops_fail() {
        let t: TxnRequest = serde_json::from_str(
            r#"{"compare":[{"key":"a","mod_revision":0}],
                "success":[{"op":"put","key":"a","value":"x","mode":384},
                           {"op":"delete","key":"b","recursive":true}]}"#,
        )
        .expect("valid txn");
        assert_eq!(t.success.len(), 2);
        assert!(matches!(&t.success[0], TxnOp::Put { mode, .. } if *mode == Some(0o600)));
        assert!(serde_json::from_str::<TxnRequest>(r#"{"success":[{"op":"frob","key":"a"}]}"#).is_err());
        assert!(serde_json::from_str::<TxnRequest>(r#"{"success":[{"op":"put","key":"a","bogus":1}]}"#).is_err());
        assert!(serde_json::from_str::<TxnRequest>(r#"{"compares":[]}"#).is_err());
        let t: TxnRequest =
            serde_json::from_str(r#"{"compare":[{"prefix":"app/","unchanged_since":42}]}"#).expect("prefix form");
        assert_eq!(t.compare, [Compare::prefix_unchanged("app/", 42)]);
        assert_eq!(
            serde_json::to_string(&Compare::prefix_unchanged("app", 7)).expect("json"),
            r#"{"prefix":"app","unchanged_since":7}"#
        );
        assert_eq!(serde_json::to_string(&Compare::key_at("a", 0)).expect("json"), r#"{"key":"a","mod_revision":0}"#);
        assert!(serde_json::from_str::<Compare>(r#"{"prefix":"a","since":1}"#).is_err());
    }

    #[test]
    fn entry_values_round_trip_text_and_binary() {
        let meta = Meta {
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 1,
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            size: 2,
            atime_ns: None,
            ctime_ns: Some(3),
        };
        // (a time an older server does not send is left out, and read as none)
        let json = serde_json::to_value(&meta).expect("json");
        assert_eq!((json.get("atime_ns"), json["ctime_ns"].as_i64()), (None, Some(3)));
        let older = r#"{"kind":"file","mode":420,"uid":0,"gid":0,"mtime_ns":1,"create_revision":1,"mod_revision":1,"version":1,"size":2}"#;
        let read: Meta = serde_json::from_str(older).expect("an older server's entry");
        assert_eq!((read.atime(), read.ctime()), (1, 1), "no times kept: the mtime stands for them");
        let text = EntryInfo::new("k".into(), meta.clone(), Some(b"hi"));
        assert_eq!(text.value.as_deref(), Some("hi"));
        let bin = EntryInfo::new("k".into(), meta, Some(&[0xff, 0x00]));
        assert!(bin.value.is_none());
        assert_eq!(bin.value_bytes(), Some(vec![0xff, 0x00]));
        assert!(decode_value(Some("a"), Some("YQ==")).is_err());
        assert!(decode_value(None, Some("***")).is_err());
    }
    #[test]
    fn device_numbers_have_one_spelling_and_bounds() {
        assert_eq!(device_number(b"1:3"), Some((1, 3)));
        assert_eq!(device_number(b"4095:1048575"), Some((MAX_MAJOR, MAX_MINOR)));
        assert_eq!(device_number(b"0:0"), Some((0, 0)));
        for bad in [
            "",
            ":",
            "1:",
            ":3",
            "01:3",
            "1:03",
            "+1:3",
            " 1:3",
            "1:3 ",
            "1:3\n",
            "1:3:4",
            "4096:0",
            "0:1048576",
            "a:b",
            "1\u{0663}:3",
        ] {
            assert_eq!(device_number(bad.as_bytes()), None, "{bad:?}");
            assert!(Kind::Char.check_value(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert_eq!(device_value(259, 70000), b"259:70000");
    }

    #[test]
    fn each_kind_holds_only_its_values_and_has_a_wire_name() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Kind::parse("pipe"), None);
        assert!(Kind::File.check_value(b"anything").is_ok());
        for k in [Kind::Dir, Kind::Fifo, Kind::Socket] {
            assert!(k.check_value(b"").is_ok() && k.check_value(b"x").is_err(), "{k:?}");
        }
        assert!(Kind::Symlink.check_value(b"").is_err() && Kind::Symlink.check_value(b"t").is_ok());
        assert!(Kind::Block.check_value(b"8:1").is_ok() && Kind::Block.check_value(b"").is_err());
        assert_eq!(Kind::ALL.iter().filter(|k| k.is_device()).count(), 2);
    }
}
