//! Operators' endpoints: members, leadership transfer, status, snapshots.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response as HttpResponse};
use kv_client::{header as kvh, AddMember, TransferLeader};

use super::error::{ApiError, ApiResult};
use super::parse::{member_id, parse_json, read_body};
use super::read_barrier;
use crate::auth::Caller;
use crate::node::Node;

/// GET /v1/snapshot — a consistent snapshot of everything committed before
/// the call, streamed (the file format of `kvd restore`, CRC-checked).
pub(crate) async fn snapshot(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<HttpResponse> {
    caller.need_admin("take a snapshot of")?;
    tracing::info!(who = caller.who(), "snapshot requested");
    read_barrier(&node, &caller, false).await?;
    let sm = node.state().clone();
    let path = sm.temp_snapshot_path();
    let p = path.clone();
    let header = tokio::task::spawn_blocking(move || sm.write_snapshot(&p))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let file = tokio::fs::File::open(&path).await.map_err(ApiError::internal)?;
    let len = file.metadata().await.map_err(ApiError::internal)?.len();
    // NOTE: unlinked at once; the open file keeps the data until streamed.
    let _ = tokio::fs::remove_file(&path).await;
    let stream = futures_util::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 16];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<Bytes, std::io::Error>(Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_LENGTH, len.into());
    h.insert(kvh::REVISION, header.revision.into());
    Ok(resp)
}

/// GET /v1/status — this member's own view.
pub(crate) async fn status(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<HttpResponse> {
    caller.need_known("see the status of")?;
    let mut status = node.status().await;
    let cfg = node.config();
    status.limits = Some(kv_client::Limits {
        max_value_size: cfg.max_value_size,
        max_txn_size: cfg.max_txn_size,
        max_txn_ops: super::parse::MAX_TXN_OPS as u64,
    });
    Ok(axum::Json(status).into_response())
}

/// GET /v1/cluster — every member with its status.
pub(crate) async fn cluster(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<HttpResponse> {
    caller.need_known("see the members of")?;
    Ok(axum::Json(node.cluster_info().await).into_response())
}

/// Sends a membership request on to the leader unless this node leads, with
/// the caller's `Authorization` header: the leader checks it on its own.
/// `Ok(None)`: this node is the leader, and the caller's credential (checked
/// again here, on a token table holding everything committed before this
/// leader's term) still holds.
pub(crate) async fn forward_to_leader(
    node: &Node,
    caller: &Caller,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Option<Bytes>,
    wait: Duration,
) -> ApiResult<Option<HttpResponse>> {
    let deadline = Instant::now() + node.request_timeout();
    let leader = node.wait_for_leader(deadline).await?;
    if leader == node.id() {
        // IMPORTANT: the member that decides the change authorizes it.
        node.await_own_term_applied(deadline.saturating_duration_since(Instant::now())).await?;
        caller.need_valid(&node.tokens())?;
        return Ok(None);
    }
    let Some(url) = node.member(leader).map(|m| m.client_url).filter(|u| !u.is_empty()) else {
        return Err(ApiError::unavailable(format!("the leader (node {leader}) has no known client URL")));
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut req = node.member_http().request(method, format!("{}{path}", url.trim_end_matches('/'))).timeout(wait);
    if let Some(a) = headers.get(header::AUTHORIZATION) {
        req = req.header(header::AUTHORIZATION, a.clone());
    }
    if let Some(b) = body {
        req = req.header(header::CONTENT_TYPE, "application/json").body(b);
    }
    let resp =
        req.send().await.map_err(|e| ApiError::unavailable(format!("cannot reach the leader (node {leader}): {e}")))?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| ApiError::unavailable(format!("leader answer cut short: {e}")))?;
    let mut out = (status, bytes).into_response();
    out.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(Some(out))
}

/// POST /v1/cluster/members {id, peer_url, client_url?, learner?}
pub(crate) async fn add_member(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<HttpResponse> {
    caller.need_admin("add a member to")?;
    let raw = read_body(&headers, body, 64 << 10, "the request").await?;
    let req: AddMember = parse_json(&raw)?;
    let wait = crate::node::JOIN_TIMEOUT + node.change_timeout() + node.request_timeout();
    if let Some(r) = forward_to_leader(&node, &caller, Method::POST, &uri, &headers, Some(raw), wait).await? {
        return Ok(r);
    }
    let (id, peer_url) = (req.id, req.peer_url.clone());
    node.add_member(req).await?;
    tracing::info!(who = caller.who(), id, peer_url, "member added");
    Ok(axum::Json(node.cluster_info().await).into_response())
}

/// POST /v1/cluster/members/{id}/promote
pub(crate) async fn promote_member(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<HttpResponse> {
    caller.need_admin("promote a member of")?;
    let id = member_id(&uri)?;
    let wait = node.change_timeout() + node.request_timeout();
    if let Some(r) = forward_to_leader(&node, &caller, Method::POST, &uri, &headers, None, wait).await? {
        return Ok(r);
    }
    node.promote(id).await?;
    tracing::info!(who = caller.who(), id, "member promoted");
    Ok(axum::Json(node.cluster_info().await).into_response())
}

/// DELETE /v1/cluster/members/{id}; a leader removing itself hands over
/// leadership first, then asks the new leader to remove it.
pub(crate) async fn remove_member(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<HttpResponse> {
    caller.need_admin("remove a member of")?;
    let id = member_id(&uri)?;
    // NOTE: the leader removing itself transfers leadership first.
    let wait = node.transfer_timeout() + node.change_timeout() + node.request_timeout() * 2;
    if let Some(r) = forward_to_leader(&node, &caller, Method::DELETE, &uri, &headers, None, wait).await? {
        return Ok(r);
    }
    if id == node.id() {
        if let Some(next) = node.successor() {
            node.transfer_leader(next).await?;
            if let Some(r) = forward_to_leader(&node, &caller, Method::DELETE, &uri, &headers, None, wait).await? {
                return Ok(r);
            }
        }
    }
    node.remove_member(id).await?;
    tracing::info!(who = caller.who(), id, "member removed");
    Ok(axum::Json(node.cluster_info().await).into_response())
}

/// POST /v1/cluster/leader {id}
pub(crate) async fn transfer_leader(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<HttpResponse> {
    caller.need_admin("move the leader of")?;
    let raw = read_body(&headers, body, 64 << 10, "the request").await?;
    let req: TransferLeader = parse_json(&raw)?;
    let wait = node.transfer_timeout() + node.request_timeout();
    if let Some(r) = forward_to_leader(&node, &caller, Method::POST, &uri, &headers, Some(raw), wait).await? {
        return Ok(r);
    }
    node.transfer_leader(req.id).await?;
    tracing::info!(who = caller.who(), id = req.id, "leadership moved");
    Ok(axum::Json(node.cluster_info().await).into_response())
}
