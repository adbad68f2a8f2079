//! Who the caller is, and tokens: list, create, revoke.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response as HttpResponse};
use kv_client::clock::now_ns;
use kv_client::{decode_key, ErrorCode, NewToken, TokenInfo, WhoAmI};

use super::error::{ApiError, ApiResult};
use super::parse::{parse_token_spec, read_body};
use super::{propose, read_barrier};
use crate::auth::Caller;
use crate::node::Node;
use crate::types::{Op, Outcome, TokenRecord, Txn};

/// GET /v1/auth/whoami
pub(crate) async fn whoami(State(node): State<Arc<Node>>, Extension(caller): Extension<Caller>) -> HttpResponse {
    axum::Json(WhoAmI { mode: node.auth().mode.as_str().into(), name: caller.name, grants: caller.grants })
        .into_response()
}

pub(crate) fn token_info(r: &TokenRecord) -> TokenInfo {
    TokenInfo { name: r.name.clone(), grants: r.grants.clone(), created_ns: r.created_ns }
}

/// GET /v1/auth/tokens (linearizable)
pub(crate) async fn list_tokens(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<HttpResponse> {
    caller.need_admin("list the tokens of")?;
    read_barrier(&node, &caller, false).await?;
    let mut list: Vec<TokenInfo> = node.tokens().values().map(token_info).collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(axum::Json(list).into_response())
}

/// POST /v1/auth/tokens {name, read, write, admin}: the secret is in this
/// answer only; the cluster keeps its hash.
pub(crate) async fn create_token(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<HttpResponse> {
    caller.need_admin("create a token in")?;
    let raw = read_body(&headers, body, 64 << 10, "the request").await?;
    let (spec, grants) = parse_token_spec(&raw)?;
    let (rec, token) = crate::token::new_token_record(&spec.name, grants, now_ns()).map_err(ApiError::internal)?;
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
                ErrorCode::TokenCreatedEarlier,
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
                ErrorCode::Exists,
                format!("a token named {:?} exists; revoke it first or pick another name", spec.name),
            ))
        }
    }
    tracing::info!(who = caller.who(), token = rec.name, "token created");
    Ok(axum::Json(NewToken { info: token_info(&rec), token }).into_response())
}

/// DELETE /v1/auth/tokens/{name}
pub(crate) async fn revoke_token(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<HttpResponse> {
    caller.need_admin("revoke a token in")?;
    let name = decode_key(uri.path().trim_start_matches("/v1/auth/tokens/")).unwrap_or_default();
    kv_client::validate_token_name(&name).map_err(|m| ApiError::new(ErrorCode::BadRequest, m))?;
    let txn = Txn { compare: vec![], success: vec![Op::RevokeToken(name.clone())], failure: vec![] };
    let r = propose(&node, &caller, &headers, txn).await?;
    if !matches!(r.outcomes.first(), Some(Outcome::Token(_, true))) {
        return Err(ApiError::not_found(format!("no token named {name:?}")));
    }
    tracing::info!(who = caller.who(), token = name, "token revoked");
    Ok(axum::Json(serde_json::json!({"revoked": name})).into_response())
}
