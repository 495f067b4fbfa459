//! Control-plane handlers (spec §4): pools, health, drain, reload, replica sets.

use crate::body::read_json;
use crate::correlation::CorrelationId;
use crate::error::ApiError;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use orch_domain::control::{DrainRequest, PoolList, ReloadRequest, ReplicaSetList};
use orch_domain::{ErrorCode, OrchError};
use std::time::Duration;

type ApiResult<T> = Result<T, ApiError>;

/// Longest drain deadline accepted (one hour).
pub const MAX_DRAIN_MS: u64 = 3_600_000;

pub async fn list_pools(State(app): State<AppState>) -> Response {
    Json(PoolList {
        pools: app.orch.pool_views(),
    })
    .into_response()
}

pub async fn pool_health(
    State(app): State<AppState>,
    Extension(cid): Extension<CorrelationId>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let h = app
        .orch
        .pool_health(&id)
        .map_err(|e| ApiError::new(e, &cid))?;
    Ok(Json(h).into_response())
}

pub async fn drain_pool(
    State(app): State<AppState>,
    Extension(cid): Extension<CorrelationId>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let req: DrainRequest = read_json(body, 4096)
        .await
        .map_err(|e| ApiError::new(e, &cid))?;
    if req.deadline_ms > MAX_DRAIN_MS {
        let e = OrchError::invalid("deadline_ms", format!("must be at most {MAX_DRAIN_MS}"));
        return Err(ApiError::new(e, &cid));
    }
    let r = app
        .orch
        .drain(&id, Duration::from_millis(req.deadline_ms))
        .map_err(|e| ApiError::new(e, &cid))?;
    Ok((StatusCode::ACCEPTED, Json(r)).into_response())
}

pub async fn reload_pool(
    State(app): State<AppState>,
    Extension(cid): Extension<CorrelationId>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let req: ReloadRequest = read_json(body, 4096)
        .await
        .map_err(|e| ApiError::new(e, &cid))?;
    let Some(manager) = app.manager.clone() else {
        let e = OrchError::new(
            ErrorCode::Conflict,
            "this server does not manage its replicas",
        );
        return Err(ApiError::new(e, &cid));
    };
    let r = manager
        .reload_ref(&id, &req)
        .await
        .map_err(|e| ApiError::new(e, &cid))?;
    Ok((StatusCode::ACCEPTED, Json(r)).into_response())
}

pub async fn replica_sets(State(app): State<AppState>) -> Response {
    Json(ReplicaSetList {
        replica_sets: app.orch.replica_sets(),
    })
    .into_response()
}

pub async fn capabilities(State(app): State<AppState>) -> Response {
    Json(app.orch.capabilities(app.body_limit as u64)).into_response()
}
