//! The peer protocol, declared once: each RPC's path, request and answer.
//!
//! The sender (crate::network) and the receiver (crate::peer) both name an
//! RPC by its type here, so they cannot disagree on what travels. Messages
//! are encoded in the body of a POST (in a versioned format, see
//! crate::format::PeerFormat), except [`Status`], a JSON GET that an operator
//! can read with curl.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::auth::Denied;
use crate::types::{NodeId, Request, Response, TypeConfig};

/// One RPC of the peer API.
pub trait Rpc {
    /// Its path on the peer address.
    const PATH: &'static str;
    /// A GET answered in JSON, instead of a POST of an encoded message.
    const JSON_GET: bool = false;
    /// What the sender sends.
    type Request: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What the receiver answers.
    type Response: Serialize + DeserializeOwned + Send + 'static;
}

macro_rules! rpc {
    ($(#[$doc:meta])* $name:ident, $path:literal, $req:ty => $resp:ty $(, json_get = $json:literal)?) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub enum $name {}
        impl Rpc for $name {
            const PATH: &'static str = $path;
            $(const JSON_GET: bool = $json;)?
            type Request = $req;
            type Response = $resp;
        }
    };
}

rpc!(
    /// Raft AppendEntries.
    Append, "/peer/v1/append",
    AppendEntriesRequest<TypeConfig> => Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>
);
rpc!(
    /// Raft RequestVote.
    Vote, "/peer/v1/vote",
    VoteRequest<NodeId> => Result<VoteResponse<NodeId>, RaftError<NodeId>>
);
rpc!(
    /// One chunk of Raft InstallSnapshot.
    Snapshot, "/peer/v1/snapshot",
    InstallSnapshotRequest<TypeConfig> => Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>
);
rpc!(
    /// A client write forwarded to the leader, which authorizes it.
    Propose, "/peer/v1/propose",
    Forwarded => Result<Response, ForwardError>
);
rpc!(
    /// The leader's read index, for a follower's linearizable read.
    ReadIndex, "/peer/v1/read-index",
    () => Result<u64, ForwardError>
);
rpc!(
    /// Hold back elections for this many ms (0: allow again); for a
    /// leadership transfer.
    HoldElections, "/peer/v1/hold-elections",
    u64 => ()
);
rpc!(
    /// Start an election now (leadership transfer).
    Elect, "/peer/v1/elect",
    () => Result<(), String>
);
rpc!(
    /// The member's own status.
    Status, "/peer/v1/status",
    () => kv_client::NodeStatus,
    json_get = true
);
rpc!(
    /// Who the node is; answered to anyone, from any cluster (`member add`
    /// asks before it proposes anything).
    Identity, "/peer/v1/identity",
    () => NodeIdentity
);

/// The RPCs that carry Raft's own messages: a node without a cluster id
/// learns its leader's from them.
pub const RAFT_PATHS: [&str; 3] = [Append::PATH, Vote::PATH, Snapshot::PATH];

/// Why the leader did not take a forwarded request.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    /// The receiver is not the leader; the leader it knows is given.
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    /// The leader failed the request.
    #[error("{0}")]
    Failed(String),
    /// The leader's disk is nearly full: writes are refused.
    #[error("{0}")]
    NoSpace(String),
    /// The leader has not heard from a quorum for an election timeout: it
    /// refused the write without taking it.
    #[error("{0}")]
    NoQuorum(String),
    /// The leader refused the caller (401) or the right (403), against its
    /// own token table; nothing was written.
    #[error("{0}")]
    Denied(Denied),
    /// The leader has not yet applied what was committed before its term,
    /// so it cannot authorize yet; it refused the write without taking it.
    #[error("{0}")]
    NotReady(String),
}

/// A client write forwarded to the leader.
///
/// IMPORTANT: it carries the client's credential as the client sent it, and
/// nothing that says "already authorized": the leader authorizes every
/// write itself (see `Node::propose_local`), so neither a member with an
/// old token table nor anyone who reaches the peer port gets a write past it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forwarded {
    /// The write.
    pub req: Request,
    /// The value of the client's `Authorization` header, if it sent one.
    pub authorization: Option<String>,
}

/// Who a node is, as `member add` asks it before proposing anything.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// Its `--id`.
    pub node_id: NodeId,
    /// Its cluster id (crate::identity), if it has one.
    pub cluster_id: Option<String>,
    /// Whether it holds a Raft log, vote or snapshot.
    pub holds_data: bool,
}

#[cfg(any(test, fuzzing))]
/// Decodes `data` as every request and every answer of the protocol: an
/// error, never a panic or an allocation beyond the input's size.
pub fn decode_all(data: &[u8]) {
    fn both<R: Rpc>(data: &[u8]) {
        use crate::format::PeerFormat;
        for f in [PeerFormat::Bincode1, PeerFormat::Postcard2, PeerFormat::Postcard] {
            let _ = f.decode::<R::Request>(data);
            let _ = f.decode::<R::Response>(data);
        }
    }
    both::<Append>(data);
    both::<Vote>(data);
    both::<Snapshot>(data);
    both::<Propose>(data);
    both::<ReadIndex>(data);
    both::<HoldElections>(data);
    both::<Elect>(data);
    both::<Identity>(data);
    let _ = crate::types::decode::<crate::types::Entry>(data);
    let _ = serde_json::from_slice::<<Status as Rpc>::Response>(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_has_its_own_peer_path() {
        let paths = [
            Append::PATH,
            Vote::PATH,
            Snapshot::PATH,
            Propose::PATH,
            ReadIndex::PATH,
            HoldElections::PATH,
            Elect::PATH,
            Status::PATH,
            Identity::PATH,
        ];
        let distinct: std::collections::BTreeSet<_> = paths.iter().collect();
        assert_eq!(distinct.len(), paths.len(), "{paths:?}");
        assert!(paths.iter().all(|p| p.starts_with("/peer/v1/")), "{paths:?}");
    }
}
