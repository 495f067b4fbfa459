//! Control-plane handlers (spec §4): pools, health, drain, reload, replica sets.

use crate::body::read_json;
use crate::correlation::CorrelationId;
use crate::error::{ApiError, OrApi};
use crate::App;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
#[allow(unused_imports)]
use orch_domain::control::{
    Capabilities, DrainRequest, DrainResponse, PoolHealth, PoolList, ReloadRequest, ReloadResponse,
    ReplicaSetList,
};
#[allow(unused_imports)]
use orch_domain::ErrorEnvelope;
use orch_domain::{ErrorCode, OrchError};
use std::time::Duration;

type ApiResult<T> = Result<T, ApiError>;

/// Longest drain deadline accepted (one hour).
pub const MAX_DRAIN_MS: u64 = orch_domain::control::DRAIN_DEADLINE_MAX_MS;

#[utoipa::path(get, path = "/v1/pools", tag = "control", operation_id = "listPools",
    responses((status = 200, description = "Pools with their replicas", body = PoolList)))]
pub async fn list_pools(State(app): State<App>) -> Response {
    Json(PoolList {
        pools: app.orch.pool_views(),
    })
    .into_response()
}

#[utoipa::path(get, path = "/v1/pools/{id}/health", tag = "control", operation_id = "poolHealth",
    params(("id" = String, Path, description = "Pool id")),
    responses(
        (status = 200, description = "Liveness, readiness, drain state, queue and slot figures", body = PoolHealth),
        (status = 404, description = "Unknown pool", body = ErrorEnvelope),
    ))]
pub async fn pool_health(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let h = app.orch.pool_health(&id).or_api(&cid)?;
    Ok(Json(h).into_response())
}

#[utoipa::path(post, path = "/v1/pools/{id}/drain", tag = "control", operation_id = "drainPool",
    params(("id" = String, Path, description = "Pool id")),
    request_body = DrainRequest,
    responses(
        (status = 202, description = "Draining: dispatch stopped; in-flight work ends by the deadline", body = DrainResponse),
        (status = 400, description = "Invalid body", body = ErrorEnvelope),
        (status = 404, description = "Unknown pool", body = ErrorEnvelope),
    ))]
pub async fn drain_pool(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let req: DrainRequest = read_json(body, app.body.capped(4096)).await.or_api(&cid)?;
    if req.deadline_ms > MAX_DRAIN_MS {
        let e = OrchError::invalid("deadline_ms", format!("must be at most {MAX_DRAIN_MS}"));
        return Err(ApiError::new(e, &cid));
    }
    let r = app
        .orch
        .drain(&id, Duration::from_millis(req.deadline_ms))
        .await
        .or_api(&cid)?;
    Ok((StatusCode::ACCEPTED, Json(r)).into_response())
}

#[utoipa::path(post, path = "/v1/pools/{id}/reload", tag = "control", operation_id = "reloadPool",
    params(("id" = String, Path, description = "Pool id")),
    request_body = ReloadRequest,
    responses(
        (status = 202, description = "New replicas ready and switched in; old ones drain", body = ReloadResponse),
        (status = 400, description = "Invalid body", body = ErrorEnvelope),
        (status = 404, description = "Unknown pool", body = ErrorEnvelope),
        (status = 409, description = "Reload failed and rolled back, or already reloading", body = ErrorEnvelope),
    ))]
pub async fn reload_pool(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let req: ReloadRequest = read_json(body, app.body.capped(4096)).await.or_api(&cid)?;
    let Some(manager) = app.manager.clone() else {
        let e = OrchError::new(
            ErrorCode::Conflict,
            "this server does not manage its replicas",
        );
        return Err(ApiError::new(e, &cid));
    };
    let r = manager.reload_ref(&id, &req).await.or_api(&cid)?;
    Ok((StatusCode::ACCEPTED, Json(r)).into_response())
}

#[utoipa::path(get, path = "/v1/replicasets", tag = "control", operation_id = "listReplicaSets",
    responses((status = 200, description = "Replica sets with load, slots and pinned versions", body = ReplicaSetList)))]
pub async fn replica_sets(State(app): State<App>) -> Response {
    Json(ReplicaSetList {
        replica_sets: app.orch.replica_sets(),
    })
    .into_response()
}

#[utoipa::path(get, path = "/v1/capabilities", tag = "control", operation_id = "getCapabilities",
    responses((status = 200, description = "API version, engines, limits and features", body = Capabilities)))]
pub async fn capabilities(
    State(app): State<App>,
    Extension(caller): Extension<orch_services::Caller>,
) -> Response {
    Json(app.orch.capabilities(&caller, app.body.max_bytes as u64)).into_response()
}
