//! The one map from domain errors to the client API's answers: a code of
//! kv-client's vocabulary, its HTTP status and a sentence; also as the SSE
//! `error` frame that ends a watch stream.

use axum::body::Bytes;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use kv_client::{ErrorBody, ErrorCode};

use crate::auth::Denied;
use crate::metrics::METRICS;
use crate::node::ClusterError;
use crate::sm::ReadError;

/// An error answer: a code of kv-client's vocabulary, which decides the
/// status, and a sentence for humans.
#[derive(Debug)]
pub(crate) struct ApiError {
    code: ErrorCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into() }
    }
    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, message)
    }
    pub(crate) fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::TooLarge, message)
    }
    pub(crate) fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Unavailable, message)
    }
    pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "internal error");
        ApiError::new(ErrorCode::Internal, e.to_string())
    }

    /// The code of the answer.
    #[cfg(test)]
    pub(crate) fn code(&self) -> ErrorCode {
        self.code.clone()
    }

    /// The HTTP status of the answer.
    pub(crate) fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The JSON body of DESIGN.md §4.
    fn body(self) -> ErrorBody {
        ErrorBody { error: self.code, message: self.message }
    }

    /// The SSE `error` event that ends a watch stream, with the same body.
    pub(crate) fn sse_event(self) -> Bytes {
        let data = serde_json::to_string(&self.body()).unwrap_or_default();
        Bytes::from(format!("event: error\ndata: {data}\n\n"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> HttpResponse {
        METRICS.request_errors.inc();
        let status = self.status();
        let mut resp = (status, axum::Json(self.body())).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"kv\""));
        }
        resp
    }
}

impl From<Denied> for ApiError {
    fn from(d: Denied) -> ApiError {
        ApiError::new(d.code(), d.message)
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> ApiError {
        match e {
            ClusterError::Unavailable(m) => ApiError::unavailable(m),
            ClusterError::Invalid(m) => ApiError::new(ErrorCode::BadRequest, m),
            ClusterError::NotFound(m) => ApiError::not_found(m),
            ClusterError::NotJoinable(m) => ApiError::new(ErrorCode::NotJoinable, m),
            ClusterError::NoSpace(m) => ApiError::new(ErrorCode::NoSpace, m),
            ClusterError::UnknownOutcome(m) => ApiError::new(ErrorCode::UnknownOutcome, m),
            ClusterError::Denied(d) => ApiError::from(d),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> ApiError {
        match e {
            ReadError::Loading => ApiError::unavailable(e.to_string()),
            ReadError::Io(e) => ApiError::internal(e),
            ReadError::Compacted { .. } | ReadError::NotKept { .. } => {
                ApiError::new(ErrorCode::Compacted, e.to_string())
            }
            ReadError::Ahead { .. } => ApiError::new(ErrorCode::BadQuery, e.to_string()),
        }
    }
}

pub(crate) fn compare_failed(key: &str) -> ApiError {
    ApiError::new(ErrorCode::CompareFailed, format!("the condition on {key:?} does not hold; nothing was written"))
}
