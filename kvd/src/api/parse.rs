//! Request parsing: turns paths, queries, headers and bodies into domain
//! values, or a 400/413 that names what is wrong. Nothing here reads or
//! writes state; it is the whole surface of the `request` fuzz target.

use axum::body::{Body, Bytes};
use axum::extract::Query;
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use futures_util::StreamExt;
use kv_client::{
    decode_key, decode_value, header as kvh, normalize_prefix, validate_key, ErrorCode, Grants, Kind, TokenSpec, TxnOp,
    TxnRequest,
};
use serde::Deserialize;
use serde_bytes::ByteBuf;

use super::error::{ApiError, ApiResult};
use crate::types::{Cmp, Op, PutAttrs, Txn};

/// Most compares and operations a transaction may hold: `kvctl apply` of
/// 2,000 entries takes one put and one compare each (DESIGN.md's sizes).
pub(crate) const MAX_TXN_OPS: usize = 4096;
/// Default and largest page of a list.
pub(crate) const LIST_DEFAULT_LIMIT: usize = 10_000;
pub(crate) const LIST_MAX_LIMIT: usize = 100_000;
/// Most prefix compares a transaction may hold.
pub(crate) const MAX_PREFIX_COMPARES: usize = 8;
/// Default and largest number of versions in a history answer.
pub(crate) const HISTORY_DEFAULT_LIMIT: usize = 100;
pub(crate) const HISTORY_MAX_LIMIT: usize = 10_000;

/// What `X-Kv-Request-Id` may hold.
pub(crate) fn valid_request_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())
}

/// The key (or prefix) in a path after `/v1/{what}/`, percent-decoded.
pub(crate) fn path_key(uri: &Uri, what: &str) -> ApiResult<String> {
    let path = uri.path();
    let rest = path
        .strip_prefix("/v1/")
        .and_then(|p| p.strip_prefix(what))
        .map(|p| p.strip_prefix('/').unwrap_or(p))
        .unwrap_or("");
    decode_key(rest).ok_or_else(|| ApiError::new(ErrorCode::InvalidKey, "key is not valid percent-encoded UTF-8"))
}

pub(crate) fn check_key(key: &str) -> ApiResult<()> {
    validate_key(key).map_err(|e| ApiError::new(ErrorCode::InvalidKey, e.to_string()))
}

/// What a delete removes: a key, or with `recursive` a prefix (normalized).
pub(crate) fn delete_target(raw: String, recursive: bool) -> ApiResult<String> {
    if recursive {
        return check_prefix(&raw);
    }
    check_key(&raw)?;
    Ok(raw)
}

pub(crate) fn check_prefix(p: &str) -> ApiResult<String> {
    normalize_prefix(p).map(str::to_owned).map_err(|e| ApiError::new(ErrorCode::InvalidKey, e.to_string()))
}

pub(crate) fn query<T: serde::de::DeserializeOwned + Default>(uri: &Uri) -> ApiResult<T> {
    if uri.query().is_none() {
        return Ok(T::default());
    }
    Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::new(ErrorCode::BadQuery, format!("bad query string: {}", e.body_text())))
}

pub(crate) fn flag(v: &Option<String>, name: &str) -> ApiResult<bool> {
    match v.as_deref() {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(other) => Err(ApiError::new(ErrorCode::BadQuery, format!("{name}={other:?}: expected true or false"))),
    }
}

/// Reads a request body of at most `limit` bytes. Refuses a larger declared
/// Content-Length before reading anything, and stops reading a chunked body
/// as soon as it passes the limit.
pub(crate) async fn read_body(headers: &HeaderMap, body: Body, limit: u64, what: &str) -> ApiResult<Bytes> {
    let too_large = || ApiError::too_large(format!("{what} is larger than the limit of {limit} bytes"));
    if let Some(len) = headers.get(header::CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ApiError::new(ErrorCode::BadRequest, "bad Content-Length"))?;
        if len > limit {
            return Err(too_large());
        }
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("reading the body failed: {e}")))?;
        if buf.len() as u64 + chunk.len() as u64 > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// `"N"` (or `W/"N"`) from an entity tag; `None` for `*`.
pub(crate) fn parse_etag(v: &HeaderValue) -> ApiResult<Option<u64>> {
    let s = v.to_str().unwrap_or("").trim();
    if s == "*" {
        return Ok(None);
    }
    s.trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .map(Some)
        .map_err(|_| ApiError::new(ErrorCode::BadRequest, format!("bad entity tag {s:?}: expected \"REVISION\"")))
}

/// Compares from `If-Match` and `If-None-Match: *` on a write.
pub(crate) fn conditions(key: &str, headers: &HeaderMap) -> ApiResult<Vec<Cmp>> {
    let mut c = Vec::new();
    if let Some(v) = headers.get(header::IF_MATCH) {
        c.push(match parse_etag(v)? {
            Some(rev) => Cmp::ModRevision(key.to_owned(), rev),
            None => Cmp::Exists(key.to_owned(), true),
        });
    }
    if let Some(v) = headers.get(header::IF_NONE_MATCH) {
        if v.to_str().map(str::trim).ok() != Some("*") {
            return Err(ApiError::new(ErrorCode::BadRequest, "on writes If-None-Match supports only *"));
        }
        c.push(Cmp::Exists(key.to_owned(), false));
    }
    Ok(c)
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ReadParams {
    pub(crate) stale: Option<String>,
    pub(crate) rev: Option<String>,
}

/// A checked get: the key, `stale`, and the past revision to read at.
#[derive(Debug)]
pub(crate) struct GetRequest {
    pub(crate) key: String,
    pub(crate) stale: bool,
    pub(crate) rev: Option<u64>,
}

pub(crate) fn parse_get(uri: &Uri) -> ApiResult<GetRequest> {
    let key = path_key(uri, "kv")?;
    check_key(&key)?;
    let p: ReadParams = query(uri)?;
    Ok(GetRequest { key, stale: flag(&p.stale, "stale")?, rev: revision(&p.rev)? })
}

/// A `rev=N` query parameter: the revision to read at.
fn revision(v: &Option<String>) -> ApiResult<Option<u64>> {
    v.as_deref()
        .map(|r| {
            r.parse::<u64>().map_err(|_| ApiError::new(ErrorCode::BadQuery, format!("revision {r:?} is not a number")))
        })
        .transpose()
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct HistoryParams {
    pub(crate) limit: Option<String>,
}

/// A checked history request: the key and how many versions at most.
pub(crate) fn parse_history(uri: &Uri) -> ApiResult<(String, usize)> {
    let key = path_key(uri, "history")?;
    check_key(&key)?;
    let p: HistoryParams = query(uri)?;
    Ok((key, limit(&p.limit, HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT)?))
}

/// A `limit=N` query parameter from 1 to `max`.
fn limit(v: &Option<String>, default: usize, max: usize) -> ApiResult<usize> {
    match v.as_deref() {
        None => Ok(default),
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::new(ErrorCode::BadQuery, format!("limit must be a number from 1 to {max}"))),
        },
    }
}

/// Parses the attribute headers of a PUT.
pub(crate) fn attrs_from_headers(h: &HeaderMap) -> ApiResult<PutAttrs> {
    fn get<'a>(h: &'a HeaderMap, name: &str) -> ApiResult<Option<&'a str>> {
        h.get(name)
            .map(|v| {
                v.to_str()
                    .map(str::trim)
                    .map_err(|_| ApiError::new(ErrorCode::BadRequest, format!("header {name} is not ASCII")))
            })
            .transpose()
    }
    let bad = |name: &str, want: &str| ApiError::new(ErrorCode::BadRequest, format!("header {name}: expected {want}"));
    let attrs = PutAttrs {
        kind: get(h, kvh::KIND)?
            .map(|v| Kind::parse(v).ok_or_else(|| bad(kvh::KIND, "file, dir, symlink, fifo, socket, char or block")))
            .transpose()?,
        mode: get(h, kvh::MODE)?
            .map(|v| u32::from_str_radix(v, 8).map_err(|_| bad(kvh::MODE, "octal permission bits")))
            .transpose()?,
        uid: get(h, kvh::UID)?.map(|v| v.parse().map_err(|_| bad(kvh::UID, "a user id"))).transpose()?,
        gid: get(h, kvh::GID)?.map(|v| v.parse().map_err(|_| bad(kvh::GID, "a group id"))).transpose()?,
        mtime_ns: get(h, kvh::MTIME)?
            .map(|v| v.parse().map_err(|_| bad(kvh::MTIME, "nanoseconds since the epoch")))
            .transpose()?,
        atime_ns: get(h, kvh::ATIME)?
            .map(|v| v.parse().map_err(|_| bad(kvh::ATIME, "nanoseconds since the epoch")))
            .transpose()?,
    };
    Ok(attrs)
}

/// Checks a put's attributes and value against each other.
pub(crate) fn check_put(key: &str, value: Option<&[u8]>, attrs: &PutAttrs) -> ApiResult<()> {
    if attrs.mode.is_some_and(|m| m > 0o7777) {
        return Err(ApiError::new(ErrorCode::BadRequest, "mode must be at most 07777"));
    }
    match attrs.kind {
        Some(kind) => kind.check_put(value).map_err(|m| ApiError::new(ErrorCode::BadRequest, format!("{key:?}: {m}"))),
        None => Ok(()),
    }
}

/// The key, attributes and conditions of a put (the value is checked with
/// [`check_put`] once read).
pub(crate) fn parse_put(uri: &Uri, headers: &HeaderMap) -> ApiResult<(String, PutAttrs, Vec<Cmp>)> {
    let key = path_key(uri, "kv")?;
    check_key(&key)?;
    let attrs = attrs_from_headers(headers)?;
    let compare = conditions(&key, headers)?;
    Ok((key, attrs, compare))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct DeleteParams {
    pub(crate) recursive: Option<String>,
}

/// The key (or prefix), `recursive` flag and conditions of a delete.
pub(crate) fn parse_delete(uri: &Uri, headers: &HeaderMap) -> ApiResult<(String, bool, Vec<Cmp>)> {
    let raw = path_key(uri, "kv")?;
    let p: DeleteParams = query(uri)?;
    let recursive = flag(&p.recursive, "recursive")?;
    let key = delete_target(raw, recursive)?;
    let compare = conditions(&key, headers)?;
    Ok((key, recursive, compare))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListParams {
    pub(crate) recursive: Option<String>,
    pub(crate) values: Option<String>,
    pub(crate) stale: Option<String>,
    pub(crate) limit: Option<String>,
    pub(crate) after: Option<String>,
    pub(crate) rev: Option<String>,
}

/// A checked list request.
#[derive(Debug)]
pub(crate) struct ListRequest {
    pub(crate) prefix: String,
    pub(crate) recursive: bool,
    pub(crate) values: bool,
    pub(crate) stale: bool,
    pub(crate) limit: usize,
    pub(crate) after: Option<String>,
    pub(crate) rev: Option<u64>,
}

pub(crate) fn parse_list(uri: &Uri) -> ApiResult<ListRequest> {
    let prefix = check_prefix(&path_key(uri, "list")?)?;
    let p: ListParams = query(uri)?;
    let limit = limit(&p.limit, LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT)?;
    Ok(ListRequest {
        prefix,
        recursive: flag(&p.recursive, "recursive")?,
        values: flag(&p.values, "values")?,
        stale: flag(&p.stale, "stale")?,
        limit,
        after: p.after,
        rev: revision(&p.rev)?,
    })
}

/// Turns a wire transaction into a checked one.
pub(crate) fn convert_txn(t: TxnRequest, max_value: u64) -> ApiResult<Txn> {
    if t.compare.len() + t.success.len() + t.failure.len() > MAX_TXN_OPS {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("a transaction holds at most {MAX_TXN_OPS} compares and operations"),
        ));
    }
    // NOTE: a prefix compare reads every entry under its prefix when the
    // entry is applied, on every member: a few per transaction.
    let prefixes = t.compare.iter().filter(|c| c.prefix.is_some()).count();
    if prefixes > MAX_PREFIX_COMPARES {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("a transaction holds at most {MAX_PREFIX_COMPARES} prefix compares, not {prefixes}"),
        ));
    }
    let mut compare = Vec::with_capacity(t.compare.len());
    for c in t.compare {
        compare.push(match (c.prefix, c.unchanged_since, c.mod_revision, c.exists) {
            (Some(p), Some(rev), None, None) if c.key.is_empty() => Cmp::PrefixUnchangedSince(check_prefix(&p)?, rev),
            (None, None, Some(rev), None) => {
                check_key(&c.key)?;
                Cmp::ModRevision(c.key, rev)
            }
            (None, None, None, Some(e)) => {
                check_key(&c.key)?;
                Cmp::Exists(c.key, e)
            }
            _ => {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "compare on {:?}: give either a key with exactly one of mod_revision and exists, or a \
                         prefix with unchanged_since",
                        c.key
                    ),
                ))
            }
        });
    }
    let ops = |list: Vec<TxnOp>| -> ApiResult<Vec<Op>> {
        list.into_iter()
            .map(|op| match op {
                TxnOp::Put { key, value, value_base64, kind, mode, uid, gid, mtime_ns, atime_ns } => {
                    check_key(&key)?;
                    let value = decode_value(value.as_deref(), value_base64.as_deref())
                        .map_err(|m| ApiError::new(ErrorCode::BadRequest, format!("{key:?}: {m}")))?;
                    if value.as_ref().is_some_and(|v| v.len() as u64 > max_value) {
                        return Err(ApiError::too_large(format!(
                            "value of {key:?} is larger than the limit of {max_value} bytes"
                        )));
                    }
                    let attrs = PutAttrs { kind, mode, uid, gid, mtime_ns, atime_ns };
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
pub(crate) fn parse_txn(raw: &[u8], max_value: u64) -> ApiResult<Txn> {
    let t: TxnRequest = serde_json::from_slice(raw)
        .map_err(|e| ApiError::new(ErrorCode::BadJson, format!("transaction is not valid: {e}")))?;
    convert_txn(t, max_value)
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct WatchParams {
    pub(crate) rev: Option<String>,
    pub(crate) prev: Option<String>,
}

/// A checked watch: the prefix, the revision it resumes after (`rev=` or
/// `Last-Event-ID`), and whether events carry the entry before.
#[derive(Debug)]
pub(crate) struct WatchRequest {
    pub(crate) prefix: String,
    pub(crate) from: Option<u64>,
    pub(crate) prev: bool,
}

/// The prefix of a watch and the revision it resumes after (`rev=` or
/// `Last-Event-ID`).
pub(crate) fn parse_watch(uri: &Uri, headers: &HeaderMap) -> ApiResult<WatchRequest> {
    let prefix = check_prefix(&path_key(uri, "watch")?)?;
    let p: WatchParams = query(uri)?;
    let bad_rev = |v: &str| ApiError::new(ErrorCode::BadQuery, format!("revision {v:?} is not a number"));
    let from = match (&p.rev, headers.get("last-event-id")) {
        (Some(r), _) => Some(r.parse::<u64>().map_err(|_| bad_rev(r))?),
        (None, Some(v)) => {
            let s = v.to_str().unwrap_or("");
            Some(s.trim().parse::<u64>().map_err(|_| bad_rev(s))?)
        }
        (None, None) => None,
    };
    Ok(WatchRequest { prefix, from, prev: flag(&p.prev, "prev")? })
}

pub(crate) fn member_id(uri: &Uri) -> ApiResult<u64> {
    uri.path()
        .trim_start_matches("/v1/cluster/members/")
        .split('/')
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|id| *id != 0)
        .ok_or_else(|| ApiError::new(ErrorCode::BadRequest, "member id must be a non-zero integer"))
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(raw: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(raw).map_err(|e| ApiError::new(ErrorCode::BadJson, format!("body is not valid: {e}")))
}

/// The request id a client chose (`X-Kv-Request-Id`), or "" for none.
pub(crate) fn request_id_of(headers: &HeaderMap) -> ApiResult<String> {
    match headers.get(kvh::REQUEST_ID) {
        None => Ok(String::new()),
        Some(v) => match v.to_str() {
            Ok(s) if valid_request_id(s) => Ok(s.to_owned()),
            _ => {
                Err(ApiError::new(ErrorCode::BadRequest, "X-Kv-Request-Id must be 1 to 128 printable ASCII characters"))
            }
        },
    }
}

/// Whether `If-None-Match` names `etag` (or `*`): the client's copy is current.
pub(crate) fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers.get(header::IF_NONE_MATCH).is_some_and(|v| {
        v.to_str().unwrap_or("").split(',').any(|t| t.trim() == "*" || t.trim().trim_start_matches("W/") == etag)
    })
}

/// A token to create (`POST /v1/auth/tokens`): its spec and its rights,
/// normalized; at least one right.
pub(crate) fn parse_token_spec(raw: &[u8]) -> ApiResult<(TokenSpec, Grants)> {
    let spec: TokenSpec = parse_json(raw)?;
    kv_client::validate_token_name(&spec.name).map_err(|m| ApiError::new(ErrorCode::BadRequest, m))?;
    let grants =
        spec.grants().normalized().map_err(|e| ApiError::new(ErrorCode::InvalidKey, format!("bad prefix: {e}")))?;
    if grants == Grants::default() {
        return Err(ApiError::new(ErrorCode::BadRequest, "a token needs at least one right: read, write or admin"));
    }
    Ok((spec, grants))
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
    if let Ok(g) = parse_get(&uri) {
        valid(&g.key);
    }
    if let Ok((key, limit)) = parse_history(&uri) {
        valid(&key);
        assert!((1..=HISTORY_MAX_LIMIT).contains(&limit));
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
    if let Ok(w) = parse_watch(&uri, &headers) {
        prefix_ok(&w.prefix);
    }
    if let Ok(id) = request_id_of(&headers) {
        assert!(id.is_empty() || valid_request_id(&id));
    }
    let _ = if_none_match(&headers, "\"1\"");
    let _ = member_id(&uri);
    if let Ok((_, grants)) = parse_token_spec(body.as_bytes()) {
        assert!(grants != Grants::default(), "a token without rights passed");
    }
    let _ = parse_json::<kv_client::AddMember>(body.as_bytes());
    let _ = parse_json::<kv_client::TransferLeader>(body.as_bytes());
    if let Ok(t) = parse_txn(body.as_bytes(), 1 << 20) {
        for c in &t.compare {
            match c {
                Cmp::PrefixUnchangedSince(p, _) => {
                    prefix_ok(p);
                    assert!(!p.ends_with('/'), "{p:?} was not normalized");
                }
                Cmp::ModRevision(k, _) | Cmp::Exists(k, _) => valid(k),
            }
        }
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
    fn txn_conversion_checks_every_op() {
        let t = |s: &str| serde_json::from_str::<TxnRequest>(s).expect("json");
        assert!(convert_txn(t(r#"{"success":[{"op":"put","key":"a/../b","value":"x"}]}"#), 10).is_err());
        let e =
            convert_txn(t(r#"{"success":[{"op":"put","key":"a","value":"0123456789x"}]}"#), 10).expect_err("too large");
        assert_eq!(e.status(), axum::http::StatusCode::PAYLOAD_TOO_LARGE);
        assert!(convert_txn(t(r#"{"compare":[{"key":"a"}]}"#), 10).is_err());
        assert!(convert_txn(t(r#"{"success":[{"op":"put","key":"d","kind":"dir","value":"x"}]}"#), 10).is_err());
        assert!(convert_txn(t(r#"{"success":[{"op":"delete","key":"","recursive":true}]}"#), 10).is_ok());
        assert!(convert_txn(t(r#"{"success":[{"op":"delete","key":""}]}"#), 10).is_err());
    }

    #[test]
    fn a_compare_takes_one_form_and_a_prefix_is_checked_and_normalized() {
        let t = |s: &str| serde_json::from_str::<TxnRequest>(s).expect("json");
        let c = |s: &str| convert_txn(t(s), 10).map(|t| t.compare);
        assert_eq!(
            c(r#"{"compare":[{"prefix":"app/","unchanged_since":42}]}"#).expect("prefix form"),
            [Cmp::PrefixUnchangedSince("app".into(), 42)]
        );
        assert_eq!(
            c(r#"{"compare":[{"prefix":"","unchanged_since":0}]}"#).expect("the whole keyspace"),
            [Cmp::PrefixUnchangedSince(String::new(), 0)]
        );
        let code = |s: &str| c(s).expect_err(s).code();
        assert_eq!(code(r#"{"compare":[{"prefix":"a//b","unchanged_since":1}]}"#), ErrorCode::InvalidKey);
        assert_eq!(code(r#"{"compare":[{"prefix":"../x","unchanged_since":1}]}"#), ErrorCode::InvalidKey);
        for mixed in [
            r#"{"compare":[{"prefix":"a"}]}"#,
            r#"{"compare":[{"unchanged_since":1}]}"#,
            r#"{"compare":[{"prefix":"a","unchanged_since":1,"key":"a"}]}"#,
            r#"{"compare":[{"prefix":"a","unchanged_since":1,"exists":true}]}"#,
            r#"{"compare":[{"key":"a","mod_revision":1,"unchanged_since":1}]}"#,
            r#"{"compare":[{"key":"a","mod_revision":1,"exists":true}]}"#,
        ] {
            assert_eq!(code(mixed), ErrorCode::BadRequest, "{mixed}");
        }
    }
}
