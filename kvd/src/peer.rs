//! The server side of the peer API (on `--peer-addr`): Raft RPCs, snapshot
//! chunks, writes forwarded by followers, read-index requests, and the two
//! steps of a leadership transfer. Bodies are bincode.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::post;
use axum::Router;
use openraft::error::{CheckIsLeaderError, RaftError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cluster::ForwardError;
use crate::network::path;
use crate::node::Node;
use crate::types::{decode, encode, Request};

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
        .layer(DefaultBodyLimit::max(MAX_PEER_BODY))
        .with_state(node)
}

fn reply<T: Serialize>(v: &T) -> HttpResponse {
    ([("content-type", "application/octet-stream")], encode(v)).into_response()
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, HttpResponse> {
    decode(body).map_err(|e| (StatusCode::BAD_REQUEST, format!("undecodable peer request: {e}")).into_response())
}

async fn append(State(node): State<Arc<Node>>, body: Bytes) -> HttpResponse {
    match parse(&body) {
        Ok(req) => reply(&node.raft.append_entries(req).await),
        Err(r) => r,
    }
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

/// A follower's client write, run through this node's proposer if it leads.
async fn propose(State(node): State<Arc<Node>>, body: Bytes) -> HttpResponse {
    let req: Request = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let res = match node.raft.metrics().borrow().current_leader {
        Some(l) if l == node.cfg.id => None,
        other => Some(Err(ForwardError::NotLeader(other))),
    };
    let res = match res {
        Some(r) => r,
        None => match tokio::time::timeout(node.request_timeout(), node.proposer.propose(req)).await {
            Ok(r) => r.map_err(ForwardError::from),
            Err(_) => Err(ForwardError::Failed("not committed in time".into())),
        },
    };
    reply(&res)
}

/// The read index a follower must apply up to before a linearizable read.
async fn read_index(State(node): State<Arc<Node>>) -> HttpResponse {
    let res = match node.raft.get_read_log_id().await {
        Ok((read, _)) => Ok(read.map(|l| l.index).unwrap_or(0)),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(ForwardError::NotLeader(f.leader_id)),
        Err(e) => Err(ForwardError::Failed(e.to_string())),
    };
    reply(&res)
}

/// Stops this node from starting elections for a while (0 ms: allow again).
async fn hold_elections(State(node): State<Arc<Node>>, body: Bytes) -> HttpResponse {
    let ms: u64 = match parse(&body) {
        Ok(ms) => ms,
        Err(r) => return r,
    };
    node.hold_elections(Duration::from_millis(ms));
    reply(&())
}

/// Starts an election on this node now.
async fn elect(State(node): State<Arc<Node>>) -> HttpResponse {
    let res = node.raft.trigger().elect().await.map_err(|e| e.to_string());
    reply(&res)
}
