//! Operating a running server (admin role): replicas added by URL, listed and removed
//! at runtime, and re-reading the config file.

use crate::body::read_json;
use crate::correlation::CorrelationId;
use crate::error::{ApiError, OrApi};
use crate::{App, AppState};
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
#[allow(unused_imports)]
use orch_domain::control::{
    AddReplicaRequest, AddReplicaResponse, ReloadConfigReport, RemoveReplicaResponse, ReplicaList,
};
#[allow(unused_imports)]
use orch_domain::ErrorEnvelope;
use orch_domain::{ErrorCode, OrchError};
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
#[utoipa::path(get, path = "/v1/pools/{id}/replicas", tag = "control", operation_id = "listReplicas",
    params(("id" = String, Path, description = "Pool id")),
    responses(
        (status = 200, description = "The pool's replicas, configured and added at runtime", body = ReplicaList),
        (status = 404, description = "Unknown pool", body = ErrorEnvelope),
    ))]
pub async fn list_replicas(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let v = app.orch.pool_view(&id).or_api(&cid)?;
    Ok(Json(ReplicaList {
        pool_id: v.id,
        replicas: v.replicas,
    })
    .into_response())
}

/// `POST /v1/pools/{id}/replicas` `{url}` → 201 once the replica serves; 409 when its
/// identity does not match the pool's pin (the message names the difference).
#[utoipa::path(post, path = "/v1/pools/{id}/replicas", tag = "control", operation_id = "addReplica",
    params(("id" = String, Path, description = "Pool id")),
    request_body = AddReplicaRequest,
    responses(
        (status = 201, description = "The engine at the URL serves in the pool", body = AddReplicaResponse),
        (status = 400, description = "Invalid body or URL, or a pool whose engine has no replicas by URL (mock)", body = ErrorEnvelope),
        (status = 404, description = "Unknown pool", body = ErrorEnvelope),
        (status = 409, description = "The engine did not become ready, or its identity (engine, version, model digest, context) does not match the pool's pin; the message names the difference. Nothing was added.", body = ErrorEnvelope),
    ))]
pub async fn add_replica(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let req: AddReplicaRequest = read_json(body, app.body.capped(64 * 1024))
        .await
        .or_api(&cid)?;
    if !(req.url.starts_with("http://") || req.url.starts_with("https://"))
        || orch_domain::task::longer_than(&req.url, 2048)
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
        Json(AddReplicaResponse {
            pool_id: id,
            replica_id: rid,
            url: req.url,
        }),
    )
        .into_response())
}

/// `deadline_ms` from the query string (400 in the envelope when malformed).
fn deadline_of(query: Option<&str>, cid: &CorrelationId) -> ApiResult<Option<u64>> {
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "deadline_ms" {
            return v.parse::<u64>().map(Some).map_err(|_| {
                ApiError::new(
                    OrchError::invalid("deadline_ms", "must be a non-negative integer"),
                    cid,
                )
            });
        }
    }
    Ok(None)
}

/// `DELETE /v1/pools/{id}/replicas/{replica}` → 202: the replica takes no new work at
/// once, its running tasks finish (within `deadline_ms`, default 60 s), then it stops.
#[utoipa::path(delete, path = "/v1/pools/{id}/replicas/{replica}", tag = "control", operation_id = "removeReplica",
    params(
        ("id" = String, Path, description = "Pool id"),
        ("replica" = String, Path, description = "Replica id"),
        ("deadline_ms" = Option<u64>, Query, description = "Longest its running tasks get (default 60000, at most 3600000)"),
    ),
    responses(
        (status = 202, description = "Draining: no new work; detached once its running tasks end", body = RemoveReplicaResponse),
        (status = 400, description = "Malformed deadline_ms", body = ErrorEnvelope),
        (status = 404, description = "Unknown pool or replica", body = ErrorEnvelope),
    ))]
pub async fn remove_replica(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
    Path((id, replica)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let deadline_ms = deadline_of(query.as_deref(), &cid)?;
    let v = app.orch.pool_view(&id).or_api(&cid)?;
    if !v.replicas.iter().any(|r| r.id == replica) {
        return Err(ApiError::new(
            OrchError::not_found("replica", &replica),
            &cid,
        ));
    }
    let deadline = deadline_ms.unwrap_or(60_000).min(REMOVE_DEADLINE_MAX_MS);
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
        Json(RemoveReplicaResponse {
            pool_id: id,
            replica_id: replica,
            draining: true,
            deadline_ms: deadline,
        }),
    )
        .into_response())
}

/// `POST /v1/admin/reload-config` → 200 with what changed; 409 with every problem when
/// the file is refused (the running configuration stays).
#[utoipa::path(post, path = "/v1/admin/reload-config", tag = "control", operation_id = "reloadConfig",
    responses(
        (status = 200, description = "The config file was re-read and applied", body = ReloadConfigReport),
        (status = 409, description = "The file was refused (every problem named by its place in the file), or the server was not started from a file; nothing changed", body = ErrorEnvelope),
    ))]
pub async fn reload_config(
    State(app): State<App>,
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
