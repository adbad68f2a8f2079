//! The cluster id: made at bootstrap (and by `kvd restore`'s first start,
//! so a restored node is a new cluster), learned by a joining node from the
//! first Raft message it takes from its leader, carried by every peer
//! message (the [`HEADER`] header, both ways), and checked by every
//! receiver: nodes of two clusters never mix.
//!
//! It lives in the Raft metadata keyspace beside the vote, and is on disk
//! (the journal fsync'd) before the node serves with it or answers the
//! message that taught it.
//!
//! NOTE: a message without an id is taken: it comes from a kvd that
//! predates ids (README: a cluster is upgraded whole) or from a member whose
//! data dir does, which learns the id from its leader, or makes one when it
//! leads (see [`Identity::own_when_leading`]).

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

// Key of the id in the Raft metadata keyspace.
use crate::format::CLUSTER_ID as KEY;
use crate::store::{fatal, Store};

/// The header of every peer request and answer that carries the sender's
/// cluster id.
pub const HEADER: &str = "x-kv-cluster";

/// Most often a refused message is logged (per direction).
const LOG_EVERY: Duration = Duration::from_secs(1);

/// A cluster's id: 64 random bits, shown as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterId(u64);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for ClusterId {
    type Err = String;

    fn from_str(s: &str) -> Result<ClusterId, String> {
        if s.len() != 16 {
            return Err(format!("cluster id {s:?} is not 16 hex digits"));
        }
        u64::from_str_radix(s, 16).map(ClusterId).map_err(|_| format!("cluster id {s:?} is not 16 hex digits"))
    }
}

impl ClusterId {
    /// A new random id.
    pub fn random() -> crate::error::Result<ClusterId> {
        let mut b = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
            .map_err(|_| crate::error::Error::Invalid("no randomness for a cluster id".into()))?;
        Ok(ClusterId(u64::from_be_bytes(b)))
    }
}

/// A message from another cluster.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "this node belongs to cluster {ours}, and the message came from cluster {theirs}: \
     nodes of two clusters never mix"
)]
pub struct Mismatch {
    /// This node's cluster.
    pub ours: ClusterId,
    /// The sender's.
    pub theirs: ClusterId,
}

/// This node's cluster id, once it has one.
#[derive(Debug)]
pub struct Identity {
    store: Store,
    id: Mutex<Option<ClusterId>>,
    /// When a refusal was last logged: messages refused here, answers
    /// refused by a peer.
    logged: [Mutex<Option<Instant>>; 2],
}

/// Which refusals [`Identity::loud`] rate-limits.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    /// This node refused a message.
    Here = 0,
    /// A peer refused this node's message.
    ByPeer = 1,
}

impl Identity {
    /// Reads the id from the data dir's store, if it has one.
    pub fn load(store: Store) -> crate::error::Result<Identity> {
        let id = match store.raft.get(KEY)? {
            Some(v) => Some(
                std::str::from_utf8(&v)
                    .map_err(|e| crate::error::Error::Invalid(format!("the stored cluster id is not text: {e}")))?
                    .parse::<ClusterId>()
                    .map_err(crate::error::Error::Invalid)?,
            ),
            None => None,
        };
        Ok(Identity { store, id: Mutex::new(id), logged: Default::default() })
    }

    /// The id, if this node has one yet.
    pub fn get(&self) -> Option<ClusterId> {
        *self.id.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes a new cluster's id (bootstrap) and puts it on disk, replacing
    /// any id this node had.
    pub fn create(&self) -> crate::error::Result<ClusterId> {
        let id = ClusterId::random()?;
        let mut held = self.id.lock().unwrap_or_else(|e| e.into_inner());
        self.persist(id);
        *held = Some(id);
        Ok(id)
    }

    /// Takes `id` as this node's when it has none (blocks for an fsync
    /// then); the id it has.
    pub fn adopt(&self, id: ClusterId) -> ClusterId {
        let mut held = self.id.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mine) = *held {
            return mine;
        }
        // IMPORTANT: the id is on disk before the message that taught it is
        // answered, so a restart never forgets which cluster it joined.
        self.persist(id);
        *held = Some(id);
        tracing::info!(cluster_id = %id, "this node now belongs to cluster");
        id
    }

    /// Checks the id a message came with against this node's.
    pub fn check(&self, theirs: Option<ClusterId>) -> Result<(), Mismatch> {
        match (self.get(), theirs) {
            (Some(ours), Some(theirs)) if ours != theirs => Err(Mismatch { ours, theirs }),
            _ => Ok(()),
        }
    }

    /// Whether a refusal of this kind should be logged now (at most one a
    /// second: Raft resends every heartbeat).
    pub fn loud(&self, which: Refusal) -> bool {
        let mut last = self.logged[which as usize].lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }

    fn persist(&self, id: ClusterId) {
        if let Err(e) = self.store.raft.insert(KEY, id.to_string().as_bytes()) {
            fatal("writing the cluster id failed", &e);
        }
        self.store.sync();
    }
}

/// The cluster id a request or answer carries in its [`HEADER`], if any
/// (a malformed one counts as none).
pub fn from_headers(h: &axum::http::HeaderMap) -> Option<ClusterId> {
    h.get(HEADER).and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_learned_once_kept_across_a_restart_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let ident = Identity::load(store.clone()).expect("load");
        assert_eq!(ident.get(), None);
        let a = ClusterId(0xa);
        assert!(ident.check(Some(a)).is_ok(), "a node without an id takes any");
        assert_eq!(ident.adopt(a), a);
        assert_eq!(ident.adopt(ClusterId(0xb)), a, "learned once");
        let e = ident.check(Some(ClusterId(0xb))).expect_err("another cluster");
        assert!(e.to_string().contains("cluster 000000000000000a") && e.to_string().contains("000000000000000b"));
        assert!(ident.check(None).is_ok(), "a kvd from before ids");
        drop(ident);
        assert_eq!(Identity::load(store).expect("load").get(), Some(a), "kept on disk");
    }

    #[test]
    fn ids_parse_as_sixteen_hex_digits() {
        let id = ClusterId::random().expect("random");
        assert_eq!(id.to_string().parse::<ClusterId>(), Ok(id));
        assert!("abc".parse::<ClusterId>().is_err());
        assert!("zzzzzzzzzzzzzzzz".parse::<ClusterId>().is_err());
    }
}
