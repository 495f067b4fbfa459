//! Operating a running server (admin role): replicas added by URL, listed and removed
//! at runtime, and re-reading the config file.

use crate::body::read_json;
use crate::correlation::CorrelationId;
use crate::error::{ApiError, OrApi};
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use orch_domain::{ErrorCode, OrchError};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

type ApiResult<T> = Result<T, ApiError>;

/// Longest a removed replica's running tasks get (then it stops regardless).
const REMOVE_DEADLINE_MAX_MS: u64 = orch_domain::control::DRAIN_DEADLINE_MAX_MS;

fn manager(app: &AppState, cid: &CorrelationId) -> ApiResult<orch_services::PoolManager> {
    app.manager.clone().ok_or_else(|| {
        ApiError::new(
            OrchError::new(ErrorCode::Conflict, "this server does not manage replicas"),
            cid,
        )
    })
}

/// `GET /v1/pools/{id}/replicas`.
pub async fn list_replicas(
    State(app): State<AppState>,
    Extension(cid): Extension<CorrelationId>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let v = app.orch.pool_view(&id).or_api(&cid)?;
    Ok(Json(json!({"pool_id": v.id, "replicas": v.replicas})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddReplica {
    /// Where the engine listens (`http://host:port`).
    pub url: String,
}

/// `POST /v1/pools/{id}/replicas` `{url}` → 201 once the replica serves; 409 when its
/// identity does not match the pool's pin (the message names the difference).
pub async fn add_replica(
    State(app): State<AppState>,
    Extension(cid): Extension<CorrelationId>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let req: AddReplica = read_json(body, 64 * 1024).await.or_api(&cid)?;
    if !(req.url.starts_with("http://") || req.url.starts_with("https://")) || req.url.len() > 2048
    {
        return Err(ApiError::new(
            OrchError::invalid("url", "must be an http:// or https:// URL"),
            &cid,
        ));
    }
    app.orch.pool_view(&id).or_api(&cid)?;
    let m = manager(&app, &cid)?;
    let rid = m.add_remote(&id, &req.url).await.or_api(&cid)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"pool_id": id, "replica_id": rid, "url": req.url})),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub struct RemoveQuery {
    pub deadline_ms: Option<u64>,
}

/// `DELETE /v1/pools/{id}/replicas/{replica}` → 202: the replica takes no new work at
/// once, its running tasks finish (within `deadline_ms`, default 60 s), then it stops.
pub async fn remove_replica(
    State(app): State<AppState>,
    Extension(cid): Extension<CorrelationId>,
    Path((id, replica)): Path<(String, String)>,
    Query(q): Query<RemoveQuery>,
) -> ApiResult<Response> {
    let v = app.orch.pool_view(&id).or_api(&cid)?;
    if !v.replicas.iter().any(|r| r.id == replica) {
        return Err(ApiError::new(
            OrchError::not_found("replica", &replica),
            &cid,
        ));
    }
    let deadline = q.deadline_ms.unwrap_or(60_000).min(REMOVE_DEADLINE_MAX_MS);
    let m = manager(&app, &cid)?;
    let (pool, rid) = (id.clone(), replica.clone());
    tokio::spawn(async move {
        if let Err(e) = m
            .remove_replica(&pool, &rid, Duration::from_millis(deadline))
            .await
        {
            tracing::warn!(pool_id = %pool, replica_id = %rid, error = %e.message, "replica removal failed");
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"pool_id": id, "replica_id": replica, "draining": true, "deadline_ms": deadline})),
    )
        .into_response())
}

/// `POST /v1/admin/reload-config` → 200 with what changed; 409 with every problem when
/// the file is refused (the running configuration stays).
pub async fn reload_config(
    State(app): State<AppState>,
    Extension(cid): Extension<CorrelationId>,
) -> ApiResult<Response> {
    let Some(hook) = app.reconfigure.clone() else {
        return Err(ApiError::new(
            OrchError::new(
                ErrorCode::Conflict,
                "this server was not started from a config file",
            ),
            &cid,
        ));
    };
    match hook().await {
        Ok(report) => Ok(Json(report).into_response()),
        Err(problems) => Err(ApiError::new(
            OrchError::new(
                ErrorCode::Conflict,
                format!("config refused, nothing changed: {}", problems.join("; ")),
            ),
            &cid,
        )),
    }
}
