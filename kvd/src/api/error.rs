//! The one map from domain errors to the client API's answers: a code of
//! kv-client's vocabulary, its HTTP status and a sentence; also as the SSE
//! `error` frame that ends a watch stream.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use kv_client::ErrorBody;

use crate::auth::Denied;
use crate::metrics::METRICS;
use crate::node::ClusterError;
use crate::sm::ReadError;

/// An error answer: status plus the JSON body `{"error", "message"}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }
    pub(crate) fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub(crate) fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }
    pub(crate) fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
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

pub(crate) type ApiResult<T> = Result<T, ApiError>;

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

pub(crate) fn compare_failed(key: &str) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "compare_failed",
        format!("the condition on {key:?} does not hold; nothing was written"),
    )
}
