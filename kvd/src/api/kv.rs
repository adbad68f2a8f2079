//! Keys and values: get, put, delete, list, transactions.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response as HttpResponse};
use kv_client::{header as kvh, Access, HistoryResponse, KeyVersion};
use serde_bytes::ByteBuf;

use super::error::{compare_failed, ApiError, ApiResult};
use super::parse::{
    check_put, if_none_match, parse_delete, parse_get, parse_history, parse_list, parse_put, parse_txn, read_body,
    GetRequest,
};
use super::{http_date, json_with_revision, propose, read_barrier, wire_response};
use crate::auth::Caller;
use crate::node::Node;
use crate::types::{Op, Outcome, StoredEntry, Txn};

/// GET (and HEAD) /v1/kv/{key}
pub(crate) async fn kv_get(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<HttpResponse> {
    let GetRequest { key, stale, rev } = parse_get(&uri)?;
    caller.need_read(&key)?;
    read_barrier(&node, &caller, stale).await?;
    let (entry, rev) = match rev {
        Some(rev) => (node.state().get_at(&key, rev)?, rev),
        None => node.state().get(&key)?,
    };
    let Some(e) = entry else {
        let mut resp = ApiError::not_found(format!("key {key:?} not found")).into_response();
        resp.headers_mut().insert(kvh::REVISION, rev.into());
        return Ok(resp);
    };
    let etag = format!("\"{}\"", e.mod_revision);
    let not_modified = if_none_match(&headers, &etag);
    let mut resp = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let len = e.value.len();
        let mut r = Body::from(e.value.clone().into_vec()).into_response();
        r.headers_mut().insert(header::CONTENT_LENGTH, len.into());
        r
    };
    let h = resp.headers_mut();
    entry_headers(h, &e);
    h.insert(kvh::REVISION, rev.into());
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    Ok(resp)
}

pub(crate) fn entry_headers(h: &mut HeaderMap, e: &StoredEntry) {
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(kvh::KIND, HeaderValue::from_static(e.kind.as_str()));
    if let Ok(v) = HeaderValue::from_str(&format!("{:04o}", e.mode)) {
        h.insert(kvh::MODE, v);
    }
    h.insert(kvh::UID, e.uid.into());
    h.insert(kvh::GID, e.gid.into());
    h.insert(kvh::MTIME, e.mtime_ns.into());
    h.insert(kvh::ATIME, e.atime_ns.into());
    h.insert(kvh::CTIME, e.ctime_ns.into());
    h.insert(kvh::CREATE_REVISION, e.create_revision.into());
    h.insert(kvh::MOD_REVISION, e.mod_revision.into());
    h.insert(kvh::VERSION, e.version.into());
    if let Ok(v) = HeaderValue::from_str(&http_date(e.mtime_ns)) {
        h.insert(header::LAST_MODIFIED, v);
    }
}

/// PUT /v1/kv/{key}
pub(crate) async fn kv_put(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<HttpResponse> {
    let (key, attrs, compare) = parse_put(&uri, &headers)?;
    caller.need_write(&key)?;
    let value = read_body(&headers, body, node.config().max_value_size, "the value").await?;
    check_put(&key, Some(&value), &attrs)?;
    let txn = Txn {
        compare,
        success: vec![Op::Put { key: key.clone(), value: Some(ByteBuf::from(value.to_vec())), attrs }],
        failure: vec![],
    };
    let r = propose(&node, &caller, &headers, txn).await?;
    if !r.succeeded {
        return Err(compare_failed(&key));
    }
    let mut resp = json_with_revision(StatusCode::OK, r.revision, &wire_response(&r));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", r.revision)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    Ok(resp)
}

/// DELETE /v1/kv/{key}[?recursive=true]
pub(crate) async fn kv_delete(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<HttpResponse> {
    let (key, recursive, compare) = parse_delete(&uri, &headers)?;
    caller.need_write(&key)?;
    let txn = Txn { compare, success: vec![Op::Delete { key: key.clone(), recursive }], failure: vec![] };
    let r = propose(&node, &caller, &headers, txn).await?;
    if !r.succeeded {
        return Err(compare_failed(&key));
    }
    if matches!(r.outcomes.first(), Some(Outcome::Delete(_, 0))) {
        return Err(ApiError::not_found(format!("key {key:?} not found; nothing deleted")));
    }
    Ok(json_with_revision(StatusCode::OK, r.revision, &wire_response(&r)))
}

/// GET /v1/list/{prefix}
pub(crate) async fn list(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> ApiResult<HttpResponse> {
    let q = parse_list(&uri)?;
    let access = caller.need_some_read(&q.prefix)?;
    read_barrier(&node, &caller, q.stale).await?;
    let mut r = node.state().list(&q.prefix, q.recursive, q.values, q.after.as_deref(), q.limit, q.rev)?;
    if access == Access::Partial {
        // NOTE: only what the caller may read, and the directories leading
        // to it; paging still works because `next_after` is unchanged.
        r.entries.retain(|e| caller.grants.can_see(&e.key));
        for e in &mut r.entries {
            if !caller.grants.can_read(&e.key) {
                e.value = None;
                e.value_base64 = None;
            }
        }
    }
    Ok(json_with_revision(StatusCode::OK, r.revision, &r))
}

/// POST /v1/txn
pub(crate) async fn txn(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<HttpResponse> {
    let raw = read_body(&headers, body, node.config().max_txn_size, "the transaction").await?;
    // NOTE: a transaction holds puts and deletes only (`parse_txn`).
    let txn = parse_txn(&raw, node.config().max_value_size)?;
    // A transaction touching anything the caller may not touch is refused whole.
    caller.need_txn(&txn)?;
    let r = propose(&node, &caller, &headers, txn).await?;
    Ok(json_with_revision(StatusCode::OK, r.revision, &wire_response(&r)))
}

/// GET /v1/history/{key}?limit=N: the key's versions in the history,
/// newest first, with when and by whom each was written.
pub(crate) async fn history(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> ApiResult<HttpResponse> {
    let (key, limit) = parse_history(&uri)?;
    caller.need_read(&key)?;
    read_barrier(&node, &caller, false).await?;
    let (versions, revision, compact) = node.state().history(&key, limit)?;
    let versions = versions
        .into_iter()
        .map(|v| KeyVersion {
            revision: v.revision,
            time_ns: v.record.as_ref().map(|r| r.time_ns),
            writer: v.record.and_then(|r| r.writer),
            deleted: v.entry.is_none(),
            meta: v.entry.map(|e| e.meta()),
        })
        .collect();
    let body = HistoryResponse { key, revision, compact, versions };
    Ok(json_with_revision(StatusCode::OK, revision, &body))
}
