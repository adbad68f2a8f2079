//! Health and metrics: liveness, readiness, Prometheus text.

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response as HttpResponse};

use super::error::{ApiError, ApiResult};
use crate::auth::Caller;
use crate::metrics::{CONTENT_TYPE, METRICS};
use crate::node::Node;

/// GET /health/live
pub(crate) async fn live() -> HttpResponse {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

/// GET /health/ready: a leader is known and this node has applied everything
/// it knows to be committed.
pub(crate) async fn ready(State(node): State<Arc<Node>>) -> ApiResult<HttpResponse> {
    let (ok, detail) = node.readiness().await;
    if ok {
        Ok(axum::Json(serde_json::json!({"status": "ready", "detail": detail})).into_response())
    } else {
        Err(ApiError::unavailable(format!("not ready: {detail}")))
    }
}

/// GET /metrics
pub(crate) async fn metrics(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<HttpResponse> {
    if !node.auth().open_metrics {
        caller.need_known("read the metrics of")?;
    }
    let mut resp = METRICS.render(node.gauges()).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(resp)
}
