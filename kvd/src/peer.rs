//! The server side of the peer API (on `--peer-addr`): Raft RPCs, snapshot
//! chunks, writes forwarded by followers, read-index requests, and the two
//! steps of a leadership transfer. Bodies are bincode. Every request and
//! answer carries the cluster id (crate::identity); a request from another
//! cluster is refused (409) before any handler sees it.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::post;
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::auth::Authority;
use crate::cluster::Forwarded;
use crate::identity::{from_headers, Mismatch, Refusal, HEADER};
use crate::network::path;
use crate::node::Node;
use crate::types::{decode, encode, TypeConfig};
use openraft::raft::AppendEntriesRequest;

/// Largest peer request: a batch of log entries or one snapshot chunk.
const MAX_PEER_BODY: usize = 512 << 20;

/// Builds the router of the peer API.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route(path::APPEND, post(append))
        .route(path::VOTE, post(vote))
        .route(path::SNAPSHOT, post(snapshot))
        .route(path::PROPOSE, post(propose))
        .route(path::READ_INDEX, post(read_index))
        .route(path::HOLD_ELECTIONS, post(hold_elections))
        .route(path::ELECT, post(elect))
        .route(path::STATUS, axum::routing::get(status))
        .route(path::IDENTITY, post(identity))
        .layer(axum::middleware::from_fn_with_state(node.clone(), same_cluster))
        .layer(DefaultBodyLimit::max(MAX_PEER_BODY))
        .with_state(node)
}

/// Refuses a request from another cluster (409, naming both ids, logged
/// here and by the sender); a node without an id yet learns it from the
/// first Raft message of its leader. Every answer carries this node's id.
async fn same_cluster(State(node): State<Arc<Node>>, req: Request, next: Next) -> HttpResponse {
    let path = req.uri().path().to_owned();
    // NOTE: anyone may ask who a node is: `member add` does, before it
    // proposes anything (crate::cluster).
    if path == path::IDENTITY {
        return next.run(req).await;
    }
    let ident = node.net.identity().clone();
    let theirs = from_headers(req.headers());
    if let Some(theirs) = theirs.filter(|_| ident.get().is_none()) {
        if [path::APPEND, path::VOTE, path::SNAPSHOT].contains(&path.as_str()) {
            let i = ident.clone();
            if tokio::task::spawn_blocking(move || i.adopt(theirs)).await.is_err() {
                return (StatusCode::INTERNAL_SERVER_ERROR, "cannot store the cluster id").into_response();
            }
        }
    }
    if let Err(m) = ident.check(theirs) {
        return refuse(&node, &path, m);
    }
    let mut resp = next.run(req).await;
    if let Some(v) = ident.get().and_then(|id| HeaderValue::from_str(&id.to_string()).ok()) {
        resp.headers_mut().insert(HEADER, v);
    }
    resp
}

/// The answer to a message from another cluster.
fn refuse(node: &Node, path: &str, m: Mismatch) -> HttpResponse {
    if node.net.identity().loud(Refusal::Here) {
        tracing::error!(
            cluster_id = %m.ours,
            peer_cluster_id = %m.theirs,
            path,
            "refused a peer message from another cluster"
        );
    }
    let text = format!(
        "node {}: {m}. To move this node to the other cluster, wipe or reset its data dir, start it \
         without --bootstrap and add it there with `kvctl member add`",
        node.cfg.id
    );
    (StatusCode::CONFLICT, [(HEADER, m.ours.to_string())], text).into_response()
}

/// Who this node is and whether it may join a cluster (see
/// [`Node::add_member`]).
async fn identity(State(node): State<Arc<Node>>) -> HttpResponse {
    reply(&node.identity_info().await)
}

fn reply<T: Serialize>(v: &T) -> HttpResponse {
    ([("content-type", "application/octet-stream")], encode(v)).into_response()
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, HttpResponse> {
    decode(body).map_err(|e| (StatusCode::BAD_REQUEST, format!("undecodable peer request: {e}")).into_response())
}

async fn append(State(node): State<Arc<Node>>, body: Bytes) -> HttpResponse {
    let req: AppendEntriesRequest<TypeConfig> = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    // A follower out of disk space takes heartbeats but no entries; the
    // leader retries them once space is freed (see crate::disk).
    if !req.entries.is_empty() {
        if let Err(m) = node.disk.check(node.cfg.id) {
            return (StatusCode::INSUFFICIENT_STORAGE, m).into_response();
        }
    }
    reply(&node.raft.append_entries(req).await)
}

async fn vote(State(node): State<Arc<Node>>, body: Bytes) -> HttpResponse {
    match parse(&body) {
        Ok(req) => reply(&node.raft.vote(req).await),
        Err(r) => r,
    }
}

async fn snapshot(State(node): State<Arc<Node>>, body: Bytes) -> HttpResponse {
    match parse(&body) {
        Ok(req) => reply(&node.raft.install_snapshot(req).await),
        Err(r) => r,
    }
}

/// A follower's client write, authorized and run through this node's
/// proposer if it leads.
async fn propose(State(node): State<Arc<Node>>, body: Bytes) -> HttpResponse {
    let f: Forwarded = match parse(&body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    reply(&node.propose_local(f.req, &Authority::Client(f.authorization), node.request_timeout()).await)
}

/// The read index a follower must apply up to before a linearizable read.
async fn read_index(State(node): State<Arc<Node>>) -> HttpResponse {
    reply(&node.read_index_local(node.request_timeout()).await)
}

/// Stops this node from starting elections for a while (0 ms: allow again).
async fn hold_elections(State(node): State<Arc<Node>>, body: Bytes) -> HttpResponse {
    let ms: u64 = match parse(&body) {
        Ok(ms) => ms,
        Err(r) => return r,
    };
    node.elections.hold_for(Duration::from_millis(ms));
    reply(&())
}

/// This member's own status.
async fn status(State(node): State<Arc<Node>>) -> HttpResponse {
    axum::Json(node.status().await).into_response()
}

/// Starts an election on this node now.
async fn elect(State(node): State<Arc<Node>>) -> HttpResponse {
    let res = node.raft.trigger().elect().await.map_err(|e| e.to_string());
    reply(&res)
}

#[cfg(any(test, fuzzing))]
/// Fuzzing entry: every peer message kvd decodes (requests here, answers in
/// the network client), from arbitrary bytes: an error, never a panic or an
/// allocation beyond the input's size.
pub fn fuzz_peer(data: &[u8]) {
    use openraft::error::{InstallSnapshotError, RaftError};
    use openraft::raft::{
        AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse,
    };

    use crate::cluster::ForwardError;
    use crate::types::{Entry, NodeId, Response};

    let _ = decode::<AppendEntriesRequest<TypeConfig>>(data);
    let _ = decode::<VoteRequest<NodeId>>(data);
    let _ = decode::<InstallSnapshotRequest<TypeConfig>>(data);
    let _ = decode::<Forwarded>(data);
    let _ = decode::<u64>(data);
    let _ = decode::<Entry>(data);
    let _ = decode::<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>(data);
    let _ = decode::<Result<VoteResponse<NodeId>, RaftError<NodeId>>>(data);
    let _ = decode::<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>>(data);
    let _ = decode::<Result<Response, ForwardError>>(data);
    let _ = decode::<Result<u64, ForwardError>>(data);
    let _ = decode::<crate::cluster::NodeIdentity>(data);
}
