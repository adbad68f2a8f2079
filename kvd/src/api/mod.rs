//! The client API (DESIGN.md §4) over HTTP/1.1.
//!
//! Handlers validate, turn writes into one transaction proposed to Raft, and
//! read from the state machine after a read-index barrier (or locally with
//! `?stale=true`). Errors become the JSON body of §4 in one place: [`ApiError`].

mod auth;
mod cluster;
mod error;
mod health;
mod kv;
mod parse;
mod ui;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Extension, MatchedPath, Request as HttpRequest, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::Router;
use kv_client::clock::now_ns;
use kv_client::{header as kvh, ErrorCode, OpResult, TxnResponse};

use crate::auth::{Authority, Caller};
use crate::metrics::{method_label, Route, METRICS};
use crate::node::Node;
use crate::types::{Outcome, Request, Response, Txn};
use auth::{create_token, list_tokens, revoke_token, whoami};
use cluster::{add_member, cluster, promote_member, remove_member, snapshot, status, transfer_leader};
use error::{ApiError, ApiResult};
use health::{live, metrics, ready};
use kv::{history, kv_delete, kv_get, kv_put, list, txn};
use parse::{request_id_of, valid_request_id};
use watch::{watch, WatchPages};

#[cfg(any(test, fuzzing))]
pub use parse::fuzz_request;

/// Builds the router of the client API.
pub fn router(node: Arc<Node>) -> Router {
    // NOTE: the pages of watch events, shared by this node's streams, are
    // handed to the watch routes only.
    let pages = Extension(Arc::new(WatchPages::default()));
    let watch = get(watch).layer(pages);
    let api = Router::new()
        .route("/v1/kv", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/kv/", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/kv/{*key}", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/list", get(list))
        .route("/v1/list/", get(list))
        .route("/v1/list/{*prefix}", get(list))
        .route("/v1/txn", post(txn))
        .route("/v1/history/{*key}", get(history))
        .route("/v1/watch", watch.clone())
        .route("/v1/watch/", watch.clone())
        .route("/v1/watch/{*prefix}", watch)
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
        .route("/metrics", get(metrics));
    let with_ui = if node.config().ui { ui::routes(api) } else { api };
    with_ui
        .fallback(|| async { ApiError::not_found("no such endpoint; see DESIGN.md §4 for the API") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed on this path")
        })
        .layer(axum::middleware::from_fn_with_state(node.clone(), front))
        .with_state(node)
}

/// What every request goes through before its handler, outside in:
/// [`observe`], [`leader_hint`], [`same_origin_writes`], [`authenticate`],
/// [`request_id`].
///
/// NOTE: one layer, not five: each middleware layer costs every request a
/// clone of the service under it, a boxed service and a boxed future.
pub(crate) async fn front(State(node): State<Arc<Node>>, req: HttpRequest, next: Next) -> HttpResponse {
    observe(req, |req| leader_hint(&node, req, |req| inner_front(&node, req, next))).await
}

async fn inner_front(node: &Node, mut req: HttpRequest, next: Next) -> HttpResponse {
    if let Some(refusal) = same_origin_writes(&req) {
        return refusal;
    }
    if let Err(refusal) = authenticate(node, &mut req) {
        return refusal;
    }
    request_id(node, req, |req| next.run(req)).await
}

/// Refuses a write a browser sends on behalf of another site (CSRF): a
/// page elsewhere may make a browser POST a plain-text body to
/// `/v1/txn` without asking first, and on a cluster without tokens that
/// would be a write. Browsers say where a request comes from
/// (`Sec-Fetch-Site`, `Origin`); programs (curl, kvctl, kvfs) send neither
/// and are not affected; the web UI's own requests are same-origin.
pub(crate) fn same_origin_writes(req: &HttpRequest) -> Option<HttpResponse> {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let from = cross_site(req.headers())?;
    Some(
        ApiError::new(
            ErrorCode::Forbidden,
            format!("a write sent by a browser from another site ({from}) is refused; kv takes writes from its own pages and from programs"),
        )
        .into_response(),
    )
}

/// Where a browser says a request comes from, when that is another site
/// than the one it is sent to.
pub(crate) fn cross_site(h: &HeaderMap) -> Option<String> {
    let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(site) = text("sec-fetch-site") {
        return (!matches!(site, "same-origin" | "none")).then(|| format!("Sec-Fetch-Site: {site}"));
    }
    let origin = text("origin")?;
    // An Origin is `scheme://host[:port]`; `null` comes from sandboxed or
    // file pages.
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    match (origin_host, text("host")) {
        (Some(o), Some(host)) if o.eq_ignore_ascii_case(host) => None,
        _ => Some(format!("Origin: {origin}")),
    }
}

/// Works out who is calling (DESIGN.md §10) and hands it to the handler as
/// an `Extension<Caller>`; a bad credential is refused here with 401.
pub(crate) fn authenticate(node: &Node, req: &mut HttpRequest) -> Result<(), HttpResponse> {
    if req.uri().path().starts_with("/health/") || ui::is_ui(req.uri().path()) {
        return Ok(());
    }
    let caller = node.caller(req.headers()).map_err(|d| ApiError::from(d).into_response())?;
    req.extensions_mut().insert(caller);
    Ok(())
}

/// A write that a follower forwarded to the leader is answered with the
/// leader's client URL: a client that knows it sends its next writes there,
/// which saves the follower a request and the leader a peer call per write.
pub(crate) async fn leader_hint<F: Future<Output = HttpResponse>>(
    node: &Node,
    req: HttpRequest,
    next: impl FnOnce(HttpRequest) -> F,
) -> HttpResponse {
    let write = matches!(*req.method(), Method::PUT | Method::DELETE | Method::POST)
        && (req.uri().path().starts_with("/v1/kv/") || req.uri().path() == "/v1/txn");
    let mut resp = next(req).await;
    if write && (resp.status().is_success() || resp.status() == StatusCode::PRECONDITION_FAILED) {
        let leader = node.known_leader().filter(|l| *l != node.id());
        if let Some(url) = leader.and_then(|l| node.member(l)).and_then(|m| HeaderValue::from_str(&m.client_url).ok()) {
            resp.headers_mut().insert(kvh::LEADER, url);
        }
    }
    resp
}

/// Whether a request is a write proposed to Raft (one that a request id
/// deduplicates).
pub(crate) fn proposes(method: &Method, path: &str) -> bool {
    match *method {
        Method::PUT => path == "/v1/kv" || path.starts_with("/v1/kv/"),
        Method::DELETE => path == "/v1/kv" || path.starts_with("/v1/kv/") || path.starts_with("/v1/auth/tokens/"),
        Method::POST => path == "/v1/txn" || path == "/v1/auth/tokens",
        _ => false,
    }
}

/// A write sent without `X-Kv-Request-Id` gets one of this node's (stamped
/// with its time, see crate::dedup); the answer to every write, errors
/// included, carries the id that was used, so a client told the outcome is
/// unknown (504) can resend the write with it.
pub(crate) async fn request_id<F: Future<Output = HttpResponse>>(
    node: &Node,
    mut req: HttpRequest,
    next: impl FnOnce(HttpRequest) -> F,
) -> HttpResponse {
    if !proposes(req.method(), req.uri().path()) {
        return next(req).await;
    }
    if !req.headers().contains_key(kvh::REQUEST_ID) {
        if let Ok(v) = HeaderValue::from_str(&node.new_request_id(now_ns())) {
            req.headers_mut().insert(kvh::REQUEST_ID, v);
        }
    }
    let id = req.headers().get(kvh::REQUEST_ID).filter(|v| v.to_str().is_ok_and(valid_request_id)).cloned();
    let mut resp = next(req).await;
    if let Some(id) = id {
        resp.headers_mut().insert(kvh::REQUEST_ID, id);
    }
    resp
}

/// Counts requests by route template, method and status, and records
/// their latency until the response head (watch streams excluded).
///
/// NOTE: the layer wraps each route, so the route matched is known here;
/// labels hold the template (an `Arc`) and static strings, never a copy of
/// the path.
pub(crate) async fn observe<F: Future<Output = HttpResponse>>(
    req: HttpRequest,
    next: impl FnOnce(HttpRequest) -> F,
) -> HttpResponse {
    let start = Instant::now();
    let route = Route::new(req.extensions().get::<MatchedPath>());
    let method = method_label(req.method());
    let watch = req.uri().path().starts_with("/v1/watch");
    let resp = next(req).await;
    METRICS.observe_request(route, method, resp.status().as_u16(), start.elapsed(), !watch);
    resp
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
pub(crate) async fn read_barrier(node: &Node, caller: &Caller, stale: bool) -> ApiResult<()> {
    if stale {
        node.check_member()?;
        return node.check_stale().map_err(ApiError::from);
    }
    node.linearize().await?;
    Ok(caller.need_valid(&node.tokens())?)
}

/// Proposes a transaction, whose rights `caller` was checked for, and waits
/// until it is committed and applied; the leader checks the caller's
/// credential again (with `headers`' when it is another member).
pub(crate) async fn propose(node: &Node, caller: &Caller, headers: &HeaderMap, txn: Txn) -> ApiResult<Response> {
    // NOTE: `request_id` gave the request an id if it came without; the
    // node gives one too if it is still empty.
    let id = request_id_of(headers)?;
    let req = Request { id: id.clone(), now_ns: now_ns(), txn };
    let r = node.write(req, Authority::checked(caller, headers)).await.map_err(ApiError::from)?;
    if let Some(Outcome::RequestIdExpired(first_ns)) = r.outcomes.first() {
        let window_s = node.state().dedup_window_ms() as f64 / 1000.0;
        return Err(ApiError::new(
            ErrorCode::RequestIdExpired,
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

pub(crate) fn wire_response(r: &Response) -> TxnResponse {
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
        time_ns: r.time_ns,
        touched: r
            .touched
            .iter()
            .map(|(key, before)| kv_client::Touched { key: key.clone(), mod_revision_before: *before })
            .collect(),
    }
}

pub(crate) fn json_with_revision(status: StatusCode, rev: u64, body: &impl serde::Serialize) -> HttpResponse {
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert(kvh::REVISION, rev.into());
    resp
}

/// An RFC 7231 date (`Sun, 06 Nov 1994 08:49:37 GMT`) from ns since the epoch.
pub(crate) fn http_date(ns: i64) -> String {
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

#[cfg(test)]
mod tests {
    #[test]
    fn writes_a_browser_sends_from_another_site_are_told_apart() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_str(v).expect("header"));
            }
            h
        };
        let host = ("host", "10.0.0.1:7379");
        // Programs send neither header; the UI's own pages are same-origin.
        assert_eq!(super::cross_site(&headers(&[host])), None);
        assert_eq!(super::cross_site(&headers(&[host, ("origin", "http://10.0.0.1:7379")])), None);
        assert_eq!(super::cross_site(&headers(&[host, ("sec-fetch-site", "same-origin")])), None);
        assert_eq!(super::cross_site(&headers(&[host, ("sec-fetch-site", "none")])), None);
        for other in [
            vec![host, ("origin", "https://evil.example")],
            vec![host, ("origin", "http://10.0.0.1:7380")],
            vec![host, ("origin", "null")],
            vec![("origin", "http://10.0.0.1:7379")],
            vec![host, ("sec-fetch-site", "cross-site")],
            vec![host, ("sec-fetch-site", "same-site"), ("origin", "http://10.0.0.1:7379")],
        ] {
            assert!(super::cross_site(&headers(&other)).is_some(), "{other:?}");
        }
    }

    use super::*;

    #[test]
    fn http_dates_are_rfc7231() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(784_111_777_000_000_000), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(951_782_400_000_000_000), "Tue, 29 Feb 2000 00:00:00 GMT");
    }
}
