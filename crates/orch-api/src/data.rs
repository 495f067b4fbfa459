//! Data-plane handlers (spec §1): tasks, their streams, cancel, status, sessions.

use crate::body::read_json;
use crate::correlation::CorrelationId;
use crate::error::{ApiError, OrApi};
use crate::App;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
#[allow(unused_imports)]
use orch_domain::{
    AdmissionResponse, ErrorEnvelope, OrchError, SessionId, SessionInfo, TaskId, TaskRequest,
    TaskStatus,
};
use orch_services::Caller;

type ApiResult<T> = Result<T, ApiError>;

fn task_id(raw: &str, cid: &CorrelationId) -> ApiResult<TaskId> {
    raw.parse()
        .map_err(|_| ApiError::new(OrchError::not_found("task", raw.escape_default()), cid))
}

fn session_id(raw: &str, cid: &CorrelationId) -> ApiResult<SessionId> {
    raw.parse()
        .map_err(|_| ApiError::new(OrchError::not_found("session", raw.escape_default()), cid))
}

/// `POST /v1/tasks` → 202 `AdmissionResponse` with `Location`.
#[utoipa::path(post, path = "/v1/tasks", tag = "data", operation_id = "createTask",
    request_body = TaskRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters. The task id is derived from it and the caller's tenant (the body then names no task_id): a repeated submission is answered with the task admitted before (202, nothing is run twice) while the server (or, in cluster mode, the cluster) knows it"),
    ),
    responses(
        (status = 202, description = "Admitted into the queue", body = AdmissionResponse),
        (status = 400, description = "Invalid parameters (including a model_ref no pool serves), malformed JSON, unknown field, or deadline infeasible", body = ErrorEnvelope),
        (status = 409, description = "A task the server still knows (live, finished, or summarized after its frames expired) has this task_id; ids are never reused", body = ErrorEnvelope),
        (status = 413, description = "Body over the limit", body = ErrorEnvelope),
        (status = 415, description = "Body is not application/json (code INVALID_PARAMS)", body = ErrorEnvelope),
        (status = 429, description = "Queue full or quota exceeded (backpressure)", body = ErrorEnvelope),
        (status = 503, description = "The model is served but no pool of it (of the requested engine) is ready or able to take work", body = ErrorEnvelope),
    ))]
pub async fn create_task(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    // a submission refused before admission still counts in tasks_rejected_total
    let refused = |e: OrchError| {
        orch_services::metrics::rejected_code("none", e.code);
        e
    };
    if !crate::body::is_json(&headers) {
        return Err(ApiError::media_type(
            refused(crate::body::not_json(&headers)),
            &cid,
        ));
    }
    let mut req: TaskRequest = read_json(body, app.body)
        .await
        .map_err(refused)
        .or_api(&cid)?;
    if let Some(v) = headers.get("idempotency-key") {
        // not visible ASCII: the services refuse it by name (400)
        req.idempotency_key = Some(v.to_str().unwrap_or("").to_string());
    }
    let adm = app.orch.admit(&caller, req, &cid.0).await.or_api(&cid)?;
    let location = format!("/v1/tasks/{}", adm.task_id);
    let mut resp = (StatusCode::ACCEPTED, Json(adm)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// `GET /v1/tasks/{id}/stream` → `text/event-stream`, resumable with `Last-Event-ID`.
#[utoipa::path(get, path = "/v1/tasks/{id}/stream", tag = "data", operation_id = "streamTask",
    params(
        ("id" = String, Path, description = "Task id (UUID)"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this frame id"),
    ),
    responses(
        (status = 200, description = "Server-Sent Events: started, token*, metrics*, then end or error", content_type = "text/event-stream", body = String),
        (status = 400, description = "Malformed Last-Event-ID", body = ErrorEnvelope),
        (status = 404, description = "Unknown task, or a finished task whose frames expired (the message says so; its summary stays at GET /v1/tasks/{id})", body = ErrorEnvelope),
    ))]
pub async fn stream_task(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = task_id(&id, &cid)?;
    let last = match headers.get("last-event-id") {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::new(
                    OrchError::invalid("Last-Event-ID", "must be a non-negative integer"),
                    &cid,
                )
            })?,
    };
    let reader = app.orch.open_stream(&caller, id, last).await.or_api(&cid)?;
    let body = Body::from_stream(crate::sse::body_stream(reader, app.keepalive));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// `POST /v1/tasks/{id}/cancel` → 204.
#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", tag = "data", operation_id = "cancelTask",
    params(("id" = String, Path, description = "Task id (UUID)")),
    responses(
        (status = 204, description = "Canceled (or already finished)"),
        (status = 404, description = "Unknown task", body = ErrorEnvelope),
    ))]
pub async fn cancel_task(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = task_id(&id, &cid)?;
    app.orch.cancel(&caller, id).await.or_api(&cid)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/tasks/{id}` → `TaskStatus`.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "data", operation_id = "getTask",
    params(("id" = String, Path, description = "Task id (UUID)")),
    responses(
        (status = 200, description = "Task state; for a finished task whose frames expired, its retained summary", body = TaskStatus),
        (status = 404, description = "Unknown task", body = ErrorEnvelope),
    ))]
pub async fn task_status(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = task_id(&id, &cid)?;
    let st = app.orch.status(&caller, id).await.or_api(&cid)?;
    Ok(Json(st).into_response())
}

/// `GET /v1/sessions/{id}` → `SessionInfo`.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "data", operation_id = "getSession",
    params(("id" = String, Path, description = "Session id (UUID)")),
    responses(
        (status = 200, description = "Session state and budgets", body = SessionInfo),
        (status = 404, description = "Unknown or expired session", body = ErrorEnvelope),
    ))]
pub async fn get_session(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = session_id(&id, &cid)?;
    let info = app.orch.session(&caller, id).or_api(&cid)?;
    Ok(Json(info).into_response())
}

/// `DELETE /v1/sessions/{id}` → 204.
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "data", operation_id = "deleteSession",
    params(("id" = String, Path, description = "Session id (UUID)")),
    responses(
        (status = 204, description = "Session ended, KV evicted"),
        (status = 404, description = "Unknown or expired session", body = ErrorEnvelope),
    ))]
pub async fn delete_session(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = session_id(&id, &cid)?;
    app.orch.delete_session(&caller, id).await.or_api(&cid)?;
    Ok(StatusCode::NO_CONTENT)
}
