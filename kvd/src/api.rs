//! The client API (DESIGN.md §4) over HTTP/1.1.
//!
//! Handlers validate, turn writes into one transaction proposed to Raft, and
//! read from the state machine after a read-index barrier (or locally with
//! `?stale=true`). Errors become the JSON body of §4 in one place: [`ApiError`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Query, Request as HttpRequest, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use kv_client::{
    decode_key, decode_value, header as kvh, normalize_prefix, validate_key, Access, AddMember, EntryInfo, ErrorBody,
    EventType, Grants, Kind, NewToken, OpResult, TokenInfo, TokenSpec, TransferLeader, TxnOp, TxnRequest, TxnResponse,
    WatchEvent, WhoAmI,
};
use serde::Deserialize;
use serde_bytes::ByteBuf;

use crate::auth::{Authority, Caller, Denied, Validity};
use crate::cluster::ClusterError;
use crate::metrics::{Gauges, METRICS};
use crate::node::Node;
use crate::sm::ReadError;
use crate::types::{Cmp, Op, Outcome, PutAttrs, Request, Response, StoredEntry, TokenRecord, Txn};

/// Most operations a transaction may hold.
const MAX_TXN_OPS: usize = 1024;
/// Default and largest page of a list.
const LIST_DEFAULT_LIMIT: usize = 10_000;
const LIST_MAX_LIMIT: usize = 100_000;
/// Events read from the history per step of a watch stream.
const WATCH_BATCH: usize = 512;
/// Keepalive interval on idle watch streams. A keepalive carries the
/// stream's revision, and clients give a stream up after a few intervals
/// without one (kv-client), so a frozen or cut-off member is left within
/// seconds.
const WATCH_KEEPALIVE: Duration = Duration::from_secs(2);

/// An error answer: status plus the JSON body `{"error", "message"}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }
    fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }
    fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "internal error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> HttpResponse {
        METRICS.request_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = ErrorBody { error: self.code.to_owned(), message: self.message };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"kv\""));
        }
        resp
    }
}

impl From<Denied> for ApiError {
    fn from(d: Denied) -> ApiError {
        if d.status == 401 {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", d.message)
        } else {
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", d.message)
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;
type Shared = Arc<Node>;

/// Builds the router of the client API.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/kv", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/kv/", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/kv/{*key}", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/list", get(list))
        .route("/v1/list/", get(list))
        .route("/v1/list/{*prefix}", get(list))
        .route("/v1/txn", post(txn))
        .route("/v1/watch", get(watch))
        .route("/v1/watch/", get(watch))
        .route("/v1/watch/{*prefix}", get(watch))
        .route("/v1/status", get(status))
        .route("/v1/snapshot", get(snapshot))
        .route("/v1/cluster", get(cluster))
        .route("/v1/cluster/members", post(add_member))
        .route("/v1/cluster/members/{id}", axum::routing::delete(remove_member))
        .route("/v1/cluster/members/{id}/promote", post(promote_member))
        .route("/v1/cluster/leader", post(transfer_leader))
        .route("/v1/auth/whoami", get(whoami))
        .route("/v1/auth/tokens", get(list_tokens).post(create_token))
        .route("/v1/auth/tokens/{name}", axum::routing::delete(revoke_token))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such endpoint; see DESIGN.md §4 for the API") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this path")
        })
        .layer(axum::middleware::from_fn_with_state(node.clone(), request_id))
        .layer(axum::middleware::from_fn_with_state(node.clone(), authenticate))
        .layer(axum::middleware::from_fn_with_state(node.clone(), leader_hint))
        .layer(axum::middleware::from_fn(observe))
        .with_state(node)
}

/// Works out who is calling (DESIGN.md §10) and hands it to the handler as
/// an `Extension<Caller>`; a bad credential is refused here with 401.
async fn authenticate(State(node): State<Shared>, mut req: HttpRequest, next: Next) -> HttpResponse {
    if req.uri().path().starts_with("/health/") {
        return next.run(req).await;
    }
    match node.auth.caller(req.headers(), &node.sm.tokens()) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(d) => ApiError::from(d).into_response(),
    }
}

/// A write that a follower forwarded to the leader is answered with the
/// leader's client URL: a client that knows it sends its next writes there,
/// which saves the follower a request and the leader a peer call per write.
async fn leader_hint(State(node): State<Shared>, req: HttpRequest, next: Next) -> HttpResponse {
    let write = matches!(*req.method(), Method::PUT | Method::DELETE | Method::POST)
        && (req.uri().path().starts_with("/v1/kv/") || req.uri().path() == "/v1/txn");
    let mut resp = next.run(req).await;
    if write && (resp.status().is_success() || resp.status() == StatusCode::PRECONDITION_FAILED) {
        let leader = node.raft.metrics().borrow().current_leader.filter(|l| *l != node.cfg.id);
        if let Some(url) = leader.and_then(|l| node.member(l)).and_then(|m| HeaderValue::from_str(&m.client_url).ok()) {
            resp.headers_mut().insert(kvh::LEADER, url);
        }
    }
    resp
}

/// Whether a request is a write proposed to Raft (one that a request id
/// deduplicates).
fn proposes(method: &Method, path: &str) -> bool {
    match *method {
        Method::PUT => path == "/v1/kv" || path.starts_with("/v1/kv/"),
        Method::DELETE => path == "/v1/kv" || path.starts_with("/v1/kv/") || path.starts_with("/v1/auth/tokens/"),
        Method::POST => path == "/v1/txn" || path == "/v1/auth/tokens",
        _ => false,
    }
}

/// What `X-Kv-Request-Id` may hold.
fn valid_request_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())
}

/// A write sent without `X-Kv-Request-Id` gets one of this node's (stamped
/// with its time, see crate::dedup); the answer to every write, errors
/// included, carries the id that was used, so a client told the outcome is
/// unknown (504) can resend the write with it.
async fn request_id(State(node): State<Shared>, mut req: HttpRequest, next: Next) -> HttpResponse {
    if !proposes(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    if !req.headers().contains_key(kvh::REQUEST_ID) {
        if let Ok(v) = HeaderValue::from_str(&node.new_request_id(now_ns())) {
            req.headers_mut().insert(kvh::REQUEST_ID, v);
        }
    }
    let id = req.headers().get(kvh::REQUEST_ID).filter(|v| v.to_str().is_ok_and(valid_request_id)).cloned();
    let mut resp = next.run(req).await;
    if let Some(id) = id {
        resp.headers_mut().insert(kvh::REQUEST_ID, id);
    }
    resp
}

/// Records request latency, reads and writes apart (watches excluded).
async fn observe(req: HttpRequest, next: Next) -> HttpResponse {
    let start = Instant::now();
    let write = !matches!(*req.method(), Method::GET | Method::HEAD);
    let watch = req.uri().path().starts_with("/v1/watch");
    let resp = next.run(req).await;
    if !watch {
        let h = if write { &METRICS.write_latency } else { &METRICS.read_latency };
        h.observe(start.elapsed());
    }
    resp
}

/// The key (or prefix) in a path after `/v1/{what}/`, percent-decoded.
fn path_key(uri: &Uri, what: &str) -> ApiResult<String> {
    let path = uri.path();
    let rest = path
        .strip_prefix("/v1/")
        .and_then(|p| p.strip_prefix(what))
        .map(|p| p.strip_prefix('/').unwrap_or(p))
        .unwrap_or("");
    decode_key(rest).ok_or_else(|| ApiError::bad("invalid_key", "key is not valid percent-encoded UTF-8"))
}

fn check_key(key: &str) -> ApiResult<()> {
    validate_key(key).map_err(|e| ApiError::bad("invalid_key", e.to_string()))
}

/// What a delete removes: a key, or with `recursive` a prefix (normalized).
fn delete_target(raw: String, recursive: bool) -> ApiResult<String> {
    if recursive {
        return check_prefix(&raw);
    }
    check_key(&raw)?;
    Ok(raw)
}

fn check_prefix(p: &str) -> ApiResult<String> {
    normalize_prefix(p).map(str::to_owned).map_err(|e| ApiError::bad("invalid_key", e.to_string()))
}

fn query<T: serde::de::DeserializeOwned + Default>(uri: &Uri) -> ApiResult<T> {
    if uri.query().is_none() {
        return Ok(T::default());
    }
    Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::bad("bad_query", format!("bad query string: {}", e.body_text())))
}

fn flag(v: &Option<String>, name: &str) -> ApiResult<bool> {
    match v.as_deref() {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(other) => Err(ApiError::bad("bad_query", format!("{name}={other:?}: expected true or false"))),
    }
}

/// Reads a request body of at most `limit` bytes. Refuses a larger declared
/// Content-Length before reading anything, and stops reading a chunked body
/// as soon as it passes the limit.
async fn read_body(headers: &HeaderMap, body: Body, limit: u64, what: &str) -> ApiResult<Bytes> {
    let too_large = || ApiError::too_large(format!("{what} is larger than the limit of {limit} bytes"));
    if let Some(len) = headers.get(header::CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ApiError::bad("bad_request", "bad Content-Length"))?;
        if len > limit {
            return Err(too_large());
        }
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad("bad_request", format!("reading the body failed: {e}")))?;
        if buf.len() as u64 + chunk.len() as u64 > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// Waits until this node may answer a linearizable read (read index,
/// through the leader when this node is not it), then checks the caller's
/// credential again.
///
/// IMPORTANT: the check before the wait used this node's token table as it
/// was; after the wait the table holds everything committed before the read
/// began, a revocation on the leader included, so a revoked token reads
/// nothing even through a member that was behind. A stale read is answered
/// from this node's state as it is, its token table included.
async fn read_barrier(node: &Node, caller: &Caller, stale: bool) -> ApiResult<()> {
    if stale {
        node.check_member()?;
        return node.check_stale().map_err(ApiError::from);
    }
    node.linearize().await?;
    Ok(caller.need_valid(&node.sm.tokens())?)
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> ApiError {
        match e {
            ClusterError::Unavailable(m) => ApiError::unavailable(m),
            ClusterError::Invalid(m) => ApiError::bad("bad_request", m),
            ClusterError::NotFound(m) => ApiError::not_found(m),
            ClusterError::NotJoinable(m) => ApiError::new(StatusCode::CONFLICT, "not_joinable", m),
            ClusterError::NoSpace(m) => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "no_space", m),
            ClusterError::UnknownOutcome(m) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "unknown_outcome", m),
            ClusterError::Denied(d) => ApiError::from(d),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> ApiError {
        match e {
            ReadError::Loading => ApiError::unavailable(e.to_string()),
            ReadError::Io(e) => ApiError::internal(e),
        }
    }
}

/// Now, in ns since the Unix epoch.
pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Proposes a transaction, whose rights `caller` was checked for, and waits
/// until it is committed and applied; the leader checks the caller's
/// credential again (with `headers`' when it is another member).
async fn propose(node: &Node, caller: &Caller, headers: &HeaderMap, txn: Txn) -> ApiResult<Response> {
    // NOTE: `request_id` gave the request an id if it came without; the
    // node gives one too if it is still empty.
    let id = match headers.get(kvh::REQUEST_ID) {
        None => String::new(),
        Some(v) => {
            let s = v.to_str().unwrap_or("");
            if !valid_request_id(s) {
                return Err(ApiError::bad(
                    "bad_request",
                    "X-Kv-Request-Id must be 1 to 128 printable ASCII characters",
                ));
            }
            s.to_owned()
        }
    };
    let req = Request { id: id.clone(), now_ns: now_ns(), txn };
    let r = node.write(req, Authority::checked(caller, headers)).await.map_err(ApiError::from)?;
    if let Some(Outcome::RequestIdExpired(first_ns)) = r.outcomes.first() {
        let window_s = node.sm.dedup_window_ms() as f64 / 1000.0;
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "request_id_expired",
            format!(
                "request id {id:?} was first used at {}, longer ago than the {window_s} s the cluster \
                 remembers request ids for (less a tenth); whether a write with it was applied is no \
                 longer known, so this one was refused and nothing was written: read the keys to learn \
                 their state, and send any new write with a new request id",
                http_date(*first_ns)
            ),
        ));
    }
    Ok(r)
}

fn wire_response(r: &Response) -> TxnResponse {
    TxnResponse {
        succeeded: r.succeeded,
        revision: r.revision,
        results: r
            .outcomes
            .iter()
            .map(|o| match o {
                Outcome::Put(k, rev) => {
                    OpResult { op: "put".into(), key: k.clone(), mod_revision: Some(*rev), deleted: None }
                }
                Outcome::Delete(k, n) => {
                    OpResult { op: "delete".into(), key: k.clone(), mod_revision: None, deleted: Some(*n) }
                }
                Outcome::Token(name, _) | Outcome::TokenCreated(name, _) => {
                    OpResult { op: "token".into(), key: name.clone(), mod_revision: None, deleted: None }
                }
                // NOTE: `propose` turns this into an error; it never gets here.
                Outcome::RequestIdExpired(_) => {
                    OpResult { op: "refused".into(), key: String::new(), mod_revision: None, deleted: None }
                }
            })
            .collect(),
    }
}

fn json_with_revision(status: StatusCode, rev: u64, body: &impl serde::Serialize) -> HttpResponse {
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert(kvh::REVISION, rev.into());
    resp
}

/// `"N"` (or `W/"N"`) from an entity tag; `None` for `*`.
fn parse_etag(v: &HeaderValue) -> ApiResult<Option<u64>> {
    let s = v.to_str().unwrap_or("").trim();
    if s == "*" {
        return Ok(None);
    }
    s.trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .map(Some)
        .map_err(|_| ApiError::bad("bad_request", format!("bad entity tag {s:?}: expected \"REVISION\"")))
}

/// Compares from `If-Match` and `If-None-Match: *` on a write.
fn conditions(key: &str, headers: &HeaderMap) -> ApiResult<Vec<Cmp>> {
    let mut c = Vec::new();
    if let Some(v) = headers.get(header::IF_MATCH) {
        c.push(match parse_etag(v)? {
            Some(rev) => Cmp::ModRevision(key.to_owned(), rev),
            None => Cmp::Exists(key.to_owned(), true),
        });
    }
    if let Some(v) = headers.get(header::IF_NONE_MATCH) {
        if v.to_str().map(str::trim).ok() != Some("*") {
            return Err(ApiError::bad("bad_request", "on writes If-None-Match supports only *"));
        }
        c.push(Cmp::Exists(key.to_owned(), false));
    }
    Ok(c)
}

fn compare_failed(key: &str) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "compare_failed",
        format!("the condition on {key:?} does not hold; nothing was written"),
    )
}

#[derive(Debug, Default, Deserialize)]
struct ReadParams {
    stale: Option<String>,
}

/// The key and `stale` flag of a get.
fn parse_get(uri: &Uri) -> ApiResult<(String, bool)> {
    let key = path_key(uri, "kv")?;
    check_key(&key)?;
    let p: ReadParams = query(uri)?;
    Ok((key, flag(&p.stale, "stale")?))
}

/// GET (and HEAD) /v1/kv/{key}
async fn kv_get(
    State(node): State<Shared>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<HttpResponse> {
    let (key, stale) = parse_get(&uri)?;
    caller.need_read(&key)?;
    read_barrier(&node, &caller, stale).await?;
    let (entry, rev) = node.sm.get(&key)?;
    let Some(e) = entry else {
        let mut resp = ApiError::not_found(format!("key {key:?} not found")).into_response();
        resp.headers_mut().insert(kvh::REVISION, rev.into());
        return Ok(resp);
    };
    let etag = format!("\"{}\"", e.mod_revision);
    let not_modified = match headers.get(header::IF_NONE_MATCH) {
        Some(v) => {
            v.to_str().unwrap_or("").split(',').any(|t| t.trim() == "*" || t.trim().trim_start_matches("W/") == etag)
        }
        None => false,
    };
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

fn entry_headers(h: &mut HeaderMap, e: &StoredEntry) {
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(kvh::KIND, HeaderValue::from_static(e.kind.as_str()));
    if let Ok(v) = HeaderValue::from_str(&format!("{:04o}", e.mode)) {
        h.insert(kvh::MODE, v);
    }
    h.insert(kvh::UID, e.uid.into());
    h.insert(kvh::GID, e.gid.into());
    h.insert(kvh::MTIME, e.mtime_ns.into());
    h.insert(kvh::CREATE_REVISION, e.create_revision.into());
    h.insert(kvh::MOD_REVISION, e.mod_revision.into());
    h.insert(kvh::VERSION, e.version.into());
    if let Ok(v) = HeaderValue::from_str(&http_date(e.mtime_ns)) {
        h.insert(header::LAST_MODIFIED, v);
    }
}

/// Parses the attribute headers of a PUT.
fn attrs_from_headers(h: &HeaderMap) -> ApiResult<PutAttrs> {
    fn get<'a>(h: &'a HeaderMap, name: &str) -> ApiResult<Option<&'a str>> {
        h.get(name)
            .map(|v| {
                v.to_str()
                    .map(str::trim)
                    .map_err(|_| ApiError::bad("bad_request", format!("header {name} is not ASCII")))
            })
            .transpose()
    }
    let bad = |name: &str, want: &str| ApiError::bad("bad_request", format!("header {name}: expected {want}"));
    let attrs = PutAttrs {
        kind: get(h, kvh::KIND)?
            .map(|v| Kind::parse(v).ok_or_else(|| bad(kvh::KIND, "file, dir or symlink")))
            .transpose()?,
        mode: get(h, kvh::MODE)?
            .map(|v| u32::from_str_radix(v, 8).map_err(|_| bad(kvh::MODE, "octal permission bits")))
            .transpose()?,
        uid: get(h, kvh::UID)?.map(|v| v.parse().map_err(|_| bad(kvh::UID, "a user id"))).transpose()?,
        gid: get(h, kvh::GID)?.map(|v| v.parse().map_err(|_| bad(kvh::GID, "a group id"))).transpose()?,
        mtime_ns: get(h, kvh::MTIME)?
            .map(|v| v.parse().map_err(|_| bad(kvh::MTIME, "nanoseconds since the epoch")))
            .transpose()?,
    };
    Ok(attrs)
}

/// Checks a put's attributes and value against each other.
fn check_put(key: &str, value: Option<&[u8]>, attrs: &PutAttrs) -> ApiResult<()> {
    if attrs.mode.is_some_and(|m| m > 0o7777) {
        return Err(ApiError::bad("bad_request", "mode must be at most 07777"));
    }
    match attrs.kind {
        Some(Kind::Dir) if value.is_some_and(|v| !v.is_empty()) => {
            Err(ApiError::bad("bad_request", format!("{key:?}: a dir entry has no value")))
        }
        Some(Kind::Symlink) if value.is_some_and(<[u8]>::is_empty) => {
            Err(ApiError::bad("bad_request", format!("{key:?}: a symlink needs a target as its value")))
        }
        _ => Ok(()),
    }
}

/// The key, attributes and conditions of a put (the value is checked with
/// [`check_put`] once read).
fn parse_put(uri: &Uri, headers: &HeaderMap) -> ApiResult<(String, PutAttrs, Vec<Cmp>)> {
    let key = path_key(uri, "kv")?;
    check_key(&key)?;
    let attrs = attrs_from_headers(headers)?;
    let compare = conditions(&key, headers)?;
    Ok((key, attrs, compare))
}

/// PUT /v1/kv/{key}
async fn kv_put(
    State(node): State<Shared>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<HttpResponse> {
    let (key, attrs, compare) = parse_put(&uri, &headers)?;
    caller.need_write(&key)?;
    let value = read_body(&headers, body, node.cfg.max_value_size, "the value").await?;
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

#[derive(Debug, Default, Deserialize)]
struct DeleteParams {
    recursive: Option<String>,
}

/// The key (or prefix), `recursive` flag and conditions of a delete.
fn parse_delete(uri: &Uri, headers: &HeaderMap) -> ApiResult<(String, bool, Vec<Cmp>)> {
    let raw = path_key(uri, "kv")?;
    let p: DeleteParams = query(uri)?;
    let recursive = flag(&p.recursive, "recursive")?;
    let key = delete_target(raw, recursive)?;
    let compare = conditions(&key, headers)?;
    Ok((key, recursive, compare))
}

/// DELETE /v1/kv/{key}[?recursive=true]
async fn kv_delete(
    State(node): State<Shared>,
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

#[derive(Debug, Default, Deserialize)]
struct ListParams {
    recursive: Option<String>,
    values: Option<String>,
    stale: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

/// A checked list request.
#[derive(Debug)]
struct ListRequest {
    prefix: String,
    recursive: bool,
    values: bool,
    stale: bool,
    limit: usize,
    after: Option<String>,
}

fn parse_list(uri: &Uri) -> ApiResult<ListRequest> {
    let prefix = check_prefix(&path_key(uri, "list")?)?;
    let p: ListParams = query(uri)?;
    let limit = match p.limit.as_deref() {
        None => LIST_DEFAULT_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=LIST_MAX_LIMIT).contains(&n) => n,
            _ => return Err(ApiError::bad("bad_query", format!("limit must be a number from 1 to {LIST_MAX_LIMIT}"))),
        },
    };
    Ok(ListRequest {
        prefix,
        recursive: flag(&p.recursive, "recursive")?,
        values: flag(&p.values, "values")?,
        stale: flag(&p.stale, "stale")?,
        limit,
        after: p.after,
    })
}

/// GET /v1/list/{prefix}
async fn list(State(node): State<Shared>, Extension(caller): Extension<Caller>, uri: Uri) -> ApiResult<HttpResponse> {
    let q = parse_list(&uri)?;
    let access = caller.need_some_read(&q.prefix)?;
    read_barrier(&node, &caller, q.stale).await?;
    let mut r = node.sm.list(&q.prefix, q.recursive, q.values, q.after.as_deref(), q.limit)?;
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

/// Turns a wire transaction into a checked one.
fn convert_txn(t: TxnRequest, max_value: u64) -> ApiResult<Txn> {
    if t.compare.len() + t.success.len() + t.failure.len() > MAX_TXN_OPS {
        return Err(ApiError::bad(
            "bad_request",
            format!("a transaction holds at most {MAX_TXN_OPS} compares and operations"),
        ));
    }
    let mut compare = Vec::with_capacity(t.compare.len());
    for c in t.compare {
        check_key(&c.key)?;
        compare.push(match (c.mod_revision, c.exists) {
            (Some(rev), None) => Cmp::ModRevision(c.key, rev),
            (None, Some(e)) => Cmp::Exists(c.key, e),
            _ => {
                return Err(ApiError::bad(
                    "bad_request",
                    format!("compare on {:?} needs exactly one of mod_revision and exists", c.key),
                ))
            }
        });
    }
    let ops = |list: Vec<TxnOp>| -> ApiResult<Vec<Op>> {
        list.into_iter()
            .map(|op| match op {
                TxnOp::Put { key, value, value_base64, kind, mode, uid, gid, mtime_ns } => {
                    check_key(&key)?;
                    let value = decode_value(value.as_deref(), value_base64.as_deref())
                        .map_err(|m| ApiError::bad("bad_request", format!("{key:?}: {m}")))?;
                    if value.as_ref().is_some_and(|v| v.len() as u64 > max_value) {
                        return Err(ApiError::too_large(format!(
                            "value of {key:?} is larger than the limit of {max_value} bytes"
                        )));
                    }
                    let attrs = PutAttrs { kind, mode, uid, gid, mtime_ns };
                    check_put(&key, value.as_deref(), &attrs)?;
                    Ok(Op::Put { key, value: value.map(ByteBuf::from), attrs })
                }
                TxnOp::Delete { key, recursive } => Ok(Op::Delete { key: delete_target(key, recursive)?, recursive }),
            })
            .collect()
    };
    Ok(Txn { compare, success: ops(t.success)?, failure: ops(t.failure)? })
}

/// A transaction body, parsed and checked.
fn parse_txn(raw: &[u8], max_value: u64) -> ApiResult<Txn> {
    let t: TxnRequest =
        serde_json::from_slice(raw).map_err(|e| ApiError::bad("bad_json", format!("transaction is not valid: {e}")))?;
    convert_txn(t, max_value)
}

/// POST /v1/txn
async fn txn(
    State(node): State<Shared>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<HttpResponse> {
    let raw = read_body(&headers, body, node.cfg.max_txn_size, "the transaction").await?;
    // NOTE: a transaction holds puts and deletes only (`parse_txn`).
    let txn = parse_txn(&raw, node.cfg.max_value_size)?;
    // A transaction touching anything the caller may not touch is refused whole.
    caller.need_txn(&txn)?;
    let r = propose(&node, &caller, &headers, txn).await?;
    Ok(json_with_revision(StatusCode::OK, r.revision, &wire_response(&r)))
}

#[derive(Debug, Default, Deserialize)]
struct WatchParams {
    rev: Option<String>,
}

/// State of one watch stream.
struct WatchState {
    node: Shared,
    prefix: String,
    /// Rights of a caller who may read only parts of the prefix.
    partial: Option<Grants>,
    /// The stream ends when the caller's credential stops holding.
    valid_while: Validity,
    cursor: u64,
    rx: tokio::sync::watch::Receiver<u64>,
    out: VecDeque<Bytes>,
    done: bool,
    /// When the stream last sent something: a keepalive is due a keepalive
    /// interval after it, however many changes to other prefixes came.
    last_sent: tokio::time::Instant,
}

/// Pages of watch events kept for other streams (see [`WatchPages`]).
const KEPT_WATCH_PAGES: usize = 8;
/// A page holding more value bytes than this is not kept.
const MAX_KEPT_PAGE_BYTES: usize = 1 << 20;

/// One event of a [`WatchPage`], already encoded.
struct PageEvent {
    revision: u64,
    key: String,
    put: bool,
    /// The event as JSON, the `data:` of its SSE message.
    data: String,
}

/// The events of every key after a revision, encoded, and the last
/// revision scanned.
struct WatchPage {
    events: Vec<PageEvent>,
    scanned: u64,
}

/// Recent pages of watch events, shared by the watch streams of this node.
///
/// NOTE: streams that keep up all ask for the events after the same
/// revision at about the same time; one scan of the history and one JSON
/// encoding then serve a thousand of them, each filtering by its prefix
/// and rights. A kept page may be older than the history: its events are
/// still a whole-revision prefix of what follows the revision, and the
/// stream asks again from where the page ends. Empty pages are never kept,
/// so a stream always moves on.
#[derive(Default)]
pub struct WatchPages {
    pages: std::sync::Mutex<VecDeque<(u64, Arc<WatchPage>)>>,
}

impl WatchPages {
    /// The page after revision `after`, or `None` if that is compacted.
    fn after(&self, node: &Node, after: u64) -> Result<Option<Arc<WatchPage>>, ReadError> {
        if let Some(p) =
            self.pages.lock().ok().and_then(|p| p.iter().find(|(a, _)| *a == after).map(|(_, p)| p.clone()))
        {
            return Ok(Some(p));
        }
        let Some((events, scanned)) = node.sm.events_after(after, "", WATCH_BATCH)? else { return Ok(None) };
        let mut bytes = 0;
        let events: Vec<PageEvent> = events
            .into_iter()
            .map(|(revision, ev)| {
                bytes += ev.entry.as_ref().map_or(0, |e| e.value.len());
                let wire = WatchEvent {
                    kind: if ev.entry.is_some() { EventType::Put } else { EventType::Delete },
                    key: ev.key.clone(),
                    revision,
                    entry: ev.entry.as_ref().map(|e| EntryInfo::new(ev.key.clone(), e.meta(), Some(&e.value))),
                };
                let data = serde_json::to_string(&wire).unwrap_or_default();
                PageEvent { revision, key: ev.key, put: ev.entry.is_some(), data }
            })
            .collect();
        let page = Arc::new(WatchPage { events, scanned });
        if !page.events.is_empty() && bytes <= MAX_KEPT_PAGE_BYTES {
            if let Ok(mut pages) = self.pages.lock() {
                pages.push_back((after, page.clone()));
                if pages.len() > KEPT_WATCH_PAGES {
                    pages.pop_front();
                }
            }
        }
        Ok(Some(page))
    }
}

fn sse(event: &str, id: Option<u64>, data: &str) -> Bytes {
    let id = id.map(|i| format!("id: {i}\n")).unwrap_or_default();
    Bytes::from(format!("event: {event}\n{id}data: {data}\n\n"))
}

impl WatchState {
    /// Fills `out` with the next messages; waits when there is nothing new.
    async fn fill(&mut self) {
        loop {
            // NOTE: a member without a leader, or removed, sends no more
            // changes: the stream ends so that its client moves elsewhere.
            if let Err(e) = self.node.check_watchable() {
                tracing::info!(reason = %e, prefix = %self.prefix, "ending a watch stream");
                let body = serde_json::json!({"error": "unavailable", "message": e.to_string()});
                self.out.push_back(sse("error", None, &body.to_string()));
                self.done = true;
                return;
            }
            if !self.valid_while.holds(&self.node.sm.tokens()) {
                let body = serde_json::json!({"error": "unauthorized",
                    "message": "the token was revoked or has expired"});
                self.out.push_back(sse("error", None, &body.to_string()));
                self.done = true;
                return;
            }
            let page = match self.node.watch_pages.after(&self.node, self.cursor) {
                Ok(p) => p,
                // NOTE: a snapshot is loading; the install announces its
                // revision once done, and the stream goes on from there.
                Err(ReadError::Loading) => {
                    if self.wait_for_change().await {
                        continue;
                    }
                    return;
                }
                Err(e) => {
                    let body = serde_json::json!({"error": "internal", "message": e.to_string()});
                    self.out.push_back(sse("error", None, &body.to_string()));
                    self.done = true;
                    return;
                }
            };
            let Some(page) = page else {
                let body = serde_json::json!({"error": "compacted",
                    "message": format!("revision {} is compacted; list again and watch from the list's revision", self.cursor)});
                self.out.push_back(sse("error", None, &body.to_string()));
                self.done = true;
                return;
            };
            self.cursor = self.cursor.max(page.scanned);
            // NOTE: filtered before ids are placed, so the last visible
            // event of a revision still carries the resume id.
            let events: Vec<&PageEvent> = page
                .events
                .iter()
                .filter(|e| kv_client::key_in_prefix(&e.key, &self.prefix))
                .filter(|e| self.partial.as_ref().is_none_or(|g| g.can_read(&e.key)))
                .collect();
            let n = events.len();
            for (i, ev) in events.iter().enumerate() {
                let last_of_rev = i + 1 == n || events[i + 1].revision != ev.revision;
                let name = if ev.put { "put" } else { "delete" };
                self.out.push_back(sse(name, last_of_rev.then_some(ev.revision), &ev.data));
            }
            if !self.out.is_empty() {
                self.last_sent = tokio::time::Instant::now();
                return;
            }
            if *self.rx.borrow_and_update() > self.cursor {
                // Still behind: a keepalive that is due goes out between
                // pages, or a stream that never catches up sends nothing.
                if tokio::time::Instant::now() >= self.last_sent + WATCH_KEEPALIVE {
                    self.keepalive();
                    return;
                }
                continue;
            }
            if !self.wait_for_change().await {
                return;
            }
        }
    }

    /// Waits for a new revision, at most a keepalive interval: whether one
    /// came. Otherwise `out` holds a keepalive, or the stream is done (the
    /// node is shutting down).
    async fn wait_for_change(&mut self) -> bool {
        // IMPORTANT: the keepalive is due a keepalive interval after the
        // last thing sent, not after the last change: a stream of a quiet
        // prefix in a busy cluster wakes for every change elsewhere, and
        // would otherwise send nothing until its client gives it up.
        let due = self.last_sent + WATCH_KEEPALIVE;
        if tokio::time::Instant::now() < due {
            match tokio::time::timeout_at(due, self.rx.changed()).await {
                Ok(Ok(())) => return true,
                Ok(Err(_)) => {
                    self.done = true;
                    return false;
                }
                Err(_) => {}
            }
        }
        self.keepalive();
        false
    }

    /// Queues a keepalive carrying the cursor.
    fn keepalive(&mut self) {
        // IMPORTANT: every event of this prefix up to the cursor is already
        // out (a keepalive follows only an empty `out`), so its revision is
        // a resume point, and carries the SSE id.
        let body = serde_json::json!({ "revision": self.cursor });
        self.out.push_back(sse("keepalive", Some(self.cursor), &body.to_string()));
        self.last_sent = tokio::time::Instant::now();
    }
}

/// The prefix of a watch and the revision it resumes after (`rev=` or
/// `Last-Event-ID`).
fn parse_watch(uri: &Uri, headers: &HeaderMap) -> ApiResult<(String, Option<u64>)> {
    let prefix = check_prefix(&path_key(uri, "watch")?)?;
    let p: WatchParams = query(uri)?;
    let bad_rev = |v: &str| ApiError::bad("bad_query", format!("revision {v:?} is not a number"));
    let from = match (&p.rev, headers.get("last-event-id")) {
        (Some(r), _) => Some(r.parse::<u64>().map_err(|_| bad_rev(r))?),
        (None, Some(v)) => {
            let s = v.to_str().unwrap_or("");
            Some(s.trim().parse::<u64>().map_err(|_| bad_rev(s))?)
        }
        (None, None) => None,
    };
    Ok((prefix, from))
}

/// GET /v1/watch/{prefix}?rev=N — events after revision N as server-sent events.
async fn watch(
    State(node): State<Shared>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<HttpResponse> {
    let (prefix, from) = parse_watch(&uri, &headers)?;
    let partial = (caller.need_some_read(&prefix)? == Access::Partial).then(|| caller.grants.clone());
    node.check_watchable()?;
    let rx = node.sm.subscribe();
    let current = *rx.borrow();
    let cursor = from.unwrap_or(current);
    let compact = node.sm.compact_revision().map_err(ApiError::internal)?;
    if cursor < compact {
        return Err(ApiError::new(
            StatusCode::GONE,
            "compacted",
            format!("revision {cursor} is compacted (history starts after {compact}); list again and watch from the list's revision"),
        ));
    }
    let valid_while = caller.valid_while.clone();
    let state = WatchState {
        node,
        prefix,
        partial,
        valid_while,
        cursor,
        rx,
        out: VecDeque::new(),
        done: false,
        last_sent: tokio::time::Instant::now(),
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(b) = st.out.pop_front() {
                return Some((Ok::<Bytes, std::io::Error>(b), st));
            }
            if st.done {
                return None;
            }
            st.fill().await;
        }
    });
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(kvh::REVISION, current.into());
    h.insert(kvh::KEEPALIVE_MS, (WATCH_KEEPALIVE.as_millis() as u64).into());
    Ok(resp)
}

/// GET /v1/snapshot — a consistent snapshot of everything committed before
/// the call, streamed (the file format of `kvd restore`, CRC-checked).
async fn snapshot(State(node): State<Shared>, Extension(caller): Extension<Caller>) -> ApiResult<HttpResponse> {
    caller.need_admin("take a snapshot of")?;
    tracing::info!(who = caller.who(), "snapshot requested");
    read_barrier(&node, &caller, false).await?;
    let sm = node.sm.clone();
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
async fn status(State(node): State<Shared>, Extension(caller): Extension<Caller>) -> ApiResult<HttpResponse> {
    caller.need_known("see the status of")?;
    Ok(axum::Json(node.status().await).into_response())
}

/// GET /v1/cluster — every member with its status.
async fn cluster(State(node): State<Shared>, Extension(caller): Extension<Caller>) -> ApiResult<HttpResponse> {
    caller.need_known("see the members of")?;
    Ok(axum::Json(node.cluster_info().await).into_response())
}

/// Sends a membership request on to the leader unless this node leads, with
/// the caller's `Authorization` header: the leader checks it on its own.
/// `Ok(None)`: this node is the leader, and the caller's credential (checked
/// again here, on a token table holding everything committed before this
/// leader's term) still holds.
async fn forward_to_leader(
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
    if leader == node.cfg.id {
        // IMPORTANT: the member that decides the change authorizes it.
        node.await_own_term_applied(deadline.saturating_duration_since(Instant::now())).await?;
        caller.need_valid(&node.sm.tokens())?;
        return Ok(None);
    }
    let Some(url) = node.member(leader).map(|m| m.client_url).filter(|u| !u.is_empty()) else {
        return Err(ApiError::unavailable(format!("the leader (node {leader}) has no known client URL")));
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut req = node.net.http().request(method, format!("{}{path}", url.trim_end_matches('/'))).timeout(wait);
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

fn member_id(uri: &Uri) -> ApiResult<u64> {
    uri.path()
        .trim_start_matches("/v1/cluster/members/")
        .split('/')
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|id| *id != 0)
        .ok_or_else(|| ApiError::bad("bad_request", "member id must be a non-zero integer"))
}

fn parse_json<T: serde::de::DeserializeOwned>(raw: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(raw).map_err(|e| ApiError::bad("bad_json", format!("body is not valid: {e}")))
}

/// POST /v1/cluster/members {id, peer_url, client_url?, learner?}
async fn add_member(
    State(node): State<Shared>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<HttpResponse> {
    caller.need_admin("add a member to")?;
    let raw = read_body(&headers, body, 64 << 10, "the request").await?;
    let req: AddMember = parse_json(&raw)?;
    let wait = crate::cluster::JOIN_TIMEOUT + node.change_timeout() + node.request_timeout();
    if let Some(r) = forward_to_leader(&node, &caller, Method::POST, &uri, &headers, Some(raw), wait).await? {
        return Ok(r);
    }
    let (id, peer_url) = (req.id, req.peer_url.clone());
    node.add_member(req).await?;
    tracing::info!(who = caller.who(), id, peer_url, "member added");
    Ok(axum::Json(node.cluster_info().await).into_response())
}

/// POST /v1/cluster/members/{id}/promote
async fn promote_member(
    State(node): State<Shared>,
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
async fn remove_member(
    State(node): State<Shared>,
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
    if id == node.cfg.id {
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
async fn transfer_leader(
    State(node): State<Shared>,
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

/// GET /health/live
async fn live() -> HttpResponse {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

/// GET /health/ready: a leader is known and this node has applied everything
/// it knows to be committed.
async fn ready(State(node): State<Shared>) -> ApiResult<HttpResponse> {
    let (ok, detail) = node.readiness().await;
    if ok {
        Ok(axum::Json(serde_json::json!({"status": "ready", "detail": detail})).into_response())
    } else {
        Err(ApiError::unavailable(format!("not ready: {detail}")))
    }
}

/// GET /metrics
async fn metrics(State(node): State<Shared>, Extension(caller): Extension<Caller>) -> ApiResult<HttpResponse> {
    if !node.auth.open_metrics {
        caller.need_known("read the metrics of")?;
    }
    let m = node.raft.metrics().borrow().clone();
    let g = Gauges {
        term: m.current_term,
        last_log_index: m.last_log_index.unwrap_or(0),
        applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
        is_leader: m.current_leader == Some(node.cfg.id),
        has_leader: m.current_leader.is_some(),
        revision: *node.sm.subscribe().borrow(),
        db_bytes: node.db_size(),
        disk_free: node.disk.free(),
        disk_full: node.disk.is_low(),
        no_space_refusals: node.disk.refused.load(std::sync::atomic::Ordering::Relaxed),
        heartbeats_paused: node.heartbeats.held(),
        elections_held: node.elections.held(),
        proposals_held: node.proposer.held(),
    };
    let mut resp = METRICS.render(&g).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(resp)
}

/// GET /v1/auth/whoami
async fn whoami(State(node): State<Shared>, Extension(caller): Extension<Caller>) -> HttpResponse {
    axum::Json(WhoAmI { mode: node.auth.mode.as_str().into(), name: caller.name, grants: caller.grants })
        .into_response()
}

fn token_info(r: &TokenRecord) -> TokenInfo {
    TokenInfo { name: r.name.clone(), grants: r.grants.clone(), created_ns: r.created_ns }
}

/// GET /v1/auth/tokens (linearizable)
async fn list_tokens(State(node): State<Shared>, Extension(caller): Extension<Caller>) -> ApiResult<HttpResponse> {
    caller.need_admin("list the tokens of")?;
    read_barrier(&node, &caller, false).await?;
    let mut list: Vec<TokenInfo> = node.sm.tokens().values().map(token_info).collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(axum::Json(list).into_response())
}

/// POST /v1/auth/tokens {name, read, write, admin}: the secret is in this
/// answer only; the cluster keeps its hash.
async fn create_token(
    State(node): State<Shared>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<HttpResponse> {
    caller.need_admin("create a token in")?;
    let raw = read_body(&headers, body, 64 << 10, "the request").await?;
    let spec: TokenSpec = parse_json(&raw)?;
    kv_client::validate_token_name(&spec.name).map_err(|m| ApiError::bad("bad_request", m))?;
    let grants = spec.grants().normalized().map_err(|e| ApiError::bad("invalid_key", format!("bad prefix: {e}")))?;
    if grants == Grants::default() {
        return Err(ApiError::bad("bad_request", "a token needs at least one right: read, write or admin"));
    }
    let (rec, token) = new_token_record(&spec.name, grants).map_err(ApiError::internal)?;
    let txn = Txn { compare: vec![], success: vec![Op::CreateToken(rec.clone())], failure: vec![] };
    let r = propose(&node, &caller, &headers, txn).await?;
    match r.outcomes.first() {
        Some(Outcome::TokenCreated(_, hash)) if *hash == rec.hash => {}
        // NOTE: a kvd before TokenCreated answered this way.
        Some(Outcome::Token(_, true)) => {}
        // IMPORTANT: a resent create (the same request id) is answered from
        // the first attempt's record; the secret made for this attempt was
        // never stored and must not be handed out as if it worked.
        Some(Outcome::TokenCreated(..)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "token_created_earlier",
                format!(
                    "token {:?} was created by an earlier attempt of this request (the same X-Kv-Request-Id), \
                     whose answer was lost; its secret is shown only once and is not stored, so it cannot be \
                     shown again: revoke the token and create it again",
                    spec.name
                ),
            ));
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "exists",
                format!("a token named {:?} exists; revoke it first or pick another name", spec.name),
            ))
        }
    }
    tracing::info!(who = caller.who(), token = rec.name, "token created");
    Ok(axum::Json(NewToken { info: token_info(&rec), token }).into_response())
}

/// A token record with a fresh secret; the secret is returned, not stored.
pub fn new_token_record(name: &str, grants: Grants) -> anyhow::Result<(TokenRecord, String)> {
    let token = crate::auth::new_token()?;
    Ok((TokenRecord::new(name, grants, &token, now_ns()), token))
}

/// DELETE /v1/auth/tokens/{name}
async fn revoke_token(
    State(node): State<Shared>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<HttpResponse> {
    caller.need_admin("revoke a token in")?;
    let name = decode_key(uri.path().trim_start_matches("/v1/auth/tokens/")).unwrap_or_default();
    kv_client::validate_token_name(&name).map_err(|m| ApiError::bad("bad_request", m))?;
    let txn = Txn { compare: vec![], success: vec![Op::RevokeToken(name.clone())], failure: vec![] };
    let r = propose(&node, &caller, &headers, txn).await?;
    if !matches!(r.outcomes.first(), Some(Outcome::Token(_, true))) {
        return Err(ApiError::not_found(format!("no token named {name:?}")));
    }
    tracing::info!(who = caller.who(), token = name, "token revoked");
    Ok(axum::Json(serde_json::json!({"revoked": name})).into_response())
}

/// An RFC 7231 date (`Sun, 06 Nov 1994 08:49:37 GMT`) from ns since the epoch.
fn http_date(ns: i64) -> String {
    const WD: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MON: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let t = kv_client::Utc::from_ns(ns);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WD[t.weekday as usize],
        t.day,
        MON[(t.month - 1) as usize],
        t.year,
        t.hour,
        t.minute,
        t.second
    )
}

#[cfg(any(test, fuzzing))]
/// Fuzzing entry: everything the client API checks in a request before it
/// touches the node, on a request made of arbitrary bytes (`TARGET\n`,
/// `NAME: VALUE` lines, an empty line, the body). Panics when a check panics
/// or lets through what it must not.
pub fn fuzz_request(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let Ok(uri) = lines.next().unwrap_or("").parse::<Uri>() else { return };
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((n, v)) = line.split_once(':') else { continue };
        if let (Ok(n), Ok(v)) =
            (axum::http::HeaderName::from_bytes(n.trim().as_bytes()), HeaderValue::from_str(v.trim()))
        {
            headers.append(n, v);
        }
    }
    let valid = |k: &str| assert!(validate_key(k).is_ok(), "{k:?} passed the checks but is not a valid key");
    let prefix_ok = |p: &str| assert!(p.is_empty() || validate_key(p).is_ok(), "{p:?} is not a valid prefix");
    if let Ok((key, _)) = parse_get(&uri) {
        valid(&key);
    }
    if let Ok((key, attrs, _)) = parse_put(&uri, &headers) {
        valid(&key);
        let _ = check_put(&key, Some(body.as_bytes()), &attrs);
    }
    if let Ok((key, recursive, _)) = parse_delete(&uri, &headers) {
        if recursive {
            prefix_ok(&key);
        } else {
            valid(&key);
        }
    }
    if let Ok(q) = parse_list(&uri) {
        prefix_ok(&q.prefix);
        assert!((1..=LIST_MAX_LIMIT).contains(&q.limit));
    }
    if let Ok((prefix, _)) = parse_watch(&uri, &headers) {
        prefix_ok(&prefix);
    }
    if let Ok(t) = parse_txn(body.as_bytes(), 1 << 20) {
        for op in t.success.iter().chain(&t.failure) {
            match op {
                Op::Put { key, value, .. } => {
                    valid(key);
                    assert!(value.as_ref().is_none_or(|v| v.len() <= 1 << 20));
                }
                Op::Delete { key, recursive: true } => prefix_ok(key),
                Op::Delete { key, .. } => valid(key),
                _ => panic!("a client transaction produced a system operation"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_are_rfc7231() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(784_111_777_000_000_000), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(951_782_400_000_000_000), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn txn_conversion_checks_every_op() {
        let t = |s: &str| serde_json::from_str::<TxnRequest>(s).expect("json");
        assert!(convert_txn(t(r#"{"success":[{"op":"put","key":"a/../b","value":"x"}]}"#), 10).is_err());
        let e =
            convert_txn(t(r#"{"success":[{"op":"put","key":"a","value":"0123456789x"}]}"#), 10).expect_err("too large");
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(convert_txn(t(r#"{"compare":[{"key":"a"}]}"#), 10).is_err());
        assert!(convert_txn(t(r#"{"success":[{"op":"put","key":"d","kind":"dir","value":"x"}]}"#), 10).is_err());
        assert!(convert_txn(t(r#"{"success":[{"op":"delete","key":"","recursive":true}]}"#), 10).is_ok());
        assert!(convert_txn(t(r#"{"success":[{"op":"delete","key":""}]}"#), 10).is_err());
    }
}
