//! Operational endpoints: `/livez`, `/readyz`, `/metrics`, and the fallbacks that keep
//! unknown routes and methods inside the error envelope.

use crate::correlation::CorrelationId;
use crate::error::ApiError;
use crate::App;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use orch_domain::{ErrorCode, OrchError};
use serde_json::json;

#[utoipa::path(get, path = "/livez", tag = "ops", operation_id = "livez",
    responses((status = 200, description = "The process is alive", body = serde_json::Value)))]
pub async fn livez() -> Response {
    Json(json!({"status": "alive"})).into_response()
}

#[utoipa::path(get, path = "/readyz", tag = "ops", operation_id = "readyz",
    responses(
        (status = 200, description = "At least one pool is ready and startup self-tests passed", body = serde_json::Value),
        (status = 503, description = "Not ready", body = orch_domain::ErrorEnvelope),
    ))]
pub async fn readyz(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
) -> Result<Response, ApiError> {
    if app.orch.is_ready() && app.orch.is_accepting() {
        return Ok(Json(json!({"status": "ready"})).into_response());
    }
    let why = if app.orch.is_accepting() {
        "no pool is ready or startup self-tests have not passed"
    } else {
        "shutting down"
    };
    Err(ApiError::new(
        OrchError::new(ErrorCode::PoolUnready, why),
        &cid,
    ))
}

#[utoipa::path(get, path = "/metrics", tag = "ops", operation_id = "metrics",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)))]
pub async fn metrics(State(app): State<App>) -> Response {
    let text = app.metrics.as_ref().map(|f| f()).unwrap_or_default();
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

pub async fn not_found(Extension(cid): Extension<CorrelationId>) -> ApiError {
    ApiError::new(OrchError::new(ErrorCode::NotFound, "no such route"), &cid)
}

pub async fn method_not_allowed(Extension(cid): Extension<CorrelationId>) -> ApiError {
    ApiError::new(
        OrchError::new(
            ErrorCode::MethodNotAllowed,
            "method not allowed on this route",
        ),
        &cid,
    )
}
