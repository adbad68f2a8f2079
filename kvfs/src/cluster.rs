//! The cluster as a mount needs it: writes with compare semantics, paged
//! listings and a stream of whole revisions. [`crate::Remote`] is the real
//! one (HTTP, kv-client); [`crate::FakeCluster`] keeps everything in memory
//! so the filesystem's rules are tested without kvd or FUSE, and one
//! conformance suite ([`crate::conformance`]) keeps the two alike.
//!
//! Calls block: FUSE callbacks are not async, and the watch runs on a thread
//! of its own.

use fuser::Errno;
use kv_client::{EntryInfo, PutOptions, TxnRequest, TxnResponse, WatchEvent};

/// Why a cluster call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// A put's own condition failed (`if_match` or `create_only`): someone
    /// else wrote the key. Transactions report this as `succeeded: false`
    /// instead.
    #[error("the key changed meanwhile")]
    Conflict,
    /// The history a watch would resume from is compacted: list again.
    #[error("the watch history is compacted")]
    Compacted,
    /// The token may not do this (or was revoked).
    #[error("permission denied")]
    Denied,
    /// The value or transaction is over the cluster's limit.
    #[error("too large")]
    TooLarge,
    /// The cluster's disk quota is used up.
    #[error("no space left in the cluster")]
    NoSpace,
    /// The key does not exist (delete).
    #[error("no such key")]
    NotFound,
    /// The cluster refused the request as malformed (a bad key name).
    #[error("invalid request")]
    Invalid {
        /// The name is over the length limit.
        too_long: bool,
    },
    /// No answer within the bound, no quorum, or the connection broke: the
    /// outcome of a write is unknown.
    #[error("the cluster did not answer")]
    Unavailable,
}

impl Failure {
    /// What the filesystem reports for it; `conflict` is what a failed
    /// compare means to the caller (`EEXIST` for an exclusive create).
    pub fn errno(&self, conflict: Errno) -> Errno {
        match self {
            Failure::Conflict => conflict,
            Failure::TooLarge => Errno::EFBIG,
            Failure::NoSpace => Errno::ENOSPC,
            Failure::NotFound => Errno::ENOENT,
            Failure::Denied => Errno::EACCES,
            Failure::Invalid { too_long: true } => Errno::ENAMETOOLONG,
            Failure::Invalid { too_long: false } => Errno::EINVAL,
            Failure::Compacted | Failure::Unavailable => Errno::EIO,
        }
    }
}

/// One page of a listing with values.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The store's revision when this page was read (pages of one listing
    /// may each have their own).
    pub revision: u64,
    /// Entries in key order.
    pub entries: Vec<EntryInfo>,
    /// Where the next page starts, if there is one.
    pub next_after: Option<String>,
}

impl kv_client::Paged for Page {
    fn next_cursor(&self) -> Option<&str> {
        self.next_after.as_deref()
    }
}

/// Every event of one revision (a transaction's changes share one).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The revision.
    pub revision: u64,
    /// Its events under the watched prefix, in order.
    pub events: Vec<WatchEvent>,
}

/// A stream of whole revisions.
pub trait Events: Send {
    /// The next revision with events under the prefix; `Ok(None)` when the
    /// stream ended (reconnect and resume after the last one seen). A batch
    /// without events is progress: nothing under the prefix changed up to
    /// its revision (a keepalive).
    fn next(&mut self) -> Result<Option<Batch>, Failure>;

    /// How long the stream may stay silent before the mount counts itself
    /// stale (it fails on its own a little later), if it proves liveness.
    fn quiet_after(&self) -> Option<std::time::Duration> {
        None
    }

    /// The member the stream comes from, if it is a remote one.
    fn endpoint(&self) -> Option<String> {
        None
    }
}

/// What a write made: its revision, the time the cluster wrote with when
/// it says, and the directory entries it changed besides the keys it named
/// (kv_client::TxnResponse).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// The revision of the write.
    pub revision: u64,
    /// Its time, ns since the epoch.
    pub time_ns: Option<i64>,
    /// The directories it gave its time and revision, by full key, with the
    /// revision each had before.
    pub touched: Vec<kv_client::Touched>,
}

impl Written {
    /// What a transaction's answer says of its write.
    pub fn of(r: &TxnResponse) -> Written {
        Written { revision: r.revision, time_ns: r.time_ns, touched: r.touched.clone() }
    }
}

/// The cluster operations a mount uses, on full keys.
pub trait Cluster: Send + Sync + 'static {
    /// Writes one key; the revision of the write.
    fn put(&self, key: &str, value: Vec<u8>, opts: &PutOptions) -> Result<u64, Failure>;
    /// [`Cluster::put`], with the time of the write when the cluster says.
    fn put_at(&self, key: &str, value: Vec<u8>, opts: &PutOptions) -> Result<Written, Failure> {
        self.put(key, value, opts).map(|revision| Written { revision, ..Written::default() })
    }
    /// Runs a transaction.
    fn txn(&self, txn: &TxnRequest) -> Result<TxnResponse, Failure>;
    /// Deletes one key; the revision of the delete.
    fn delete(&self, key: &str) -> Result<u64, Failure>;
    /// [`Cluster::delete`], with the time of the delete when the cluster
    /// says.
    fn delete_at(&self, key: &str) -> Result<Written, Failure> {
        self.delete(key).map(|revision| Written { revision, ..Written::default() })
    }
    /// Whether the cluster answers (and has a quorum) right now.
    fn probe(&self) -> Result<(), Failure>;
    /// One page of the entries below `prefix`, with values, after `after`.
    fn list_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Page, Failure>;
    /// Revisions after `after` with changes under `prefix`.
    fn watch(&self, prefix: &str, after: u64) -> Result<Box<dyn Events>, Failure>;
}
