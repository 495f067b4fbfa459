//! OrchQueue v1 over HTTP.
//!
//! Owns the axum router, the handlers, SSE framing, the correlation-id and API-key
//! middleware, strict JSON bodies and the single error → HTTP mapping ([`error::status_of`]).
//! Handlers call `orch_services::Orchestrator` only; no engine crate is reachable here.

pub mod access;
pub mod accounts;
pub mod admin;
pub mod auth;
pub mod body;
pub mod browser;
pub mod conn;
pub mod console;
pub mod control;
pub mod correlation;
pub mod data;
pub mod error;
pub mod openai;
pub mod openapi;
pub mod ops;
pub mod sse;

use axum::routing::{get, post};
use axum::Router;
use orch_services::{Orchestrator, PoolManager};
use std::sync::Arc;
use std::time::Duration;

/// Renders the Prometheus text exposition.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// The handlers' state as the router holds it: one allocation shared by every request
/// (cloning `AppState` per request cost a dozen reference counts and its drop).
pub type App = Arc<AppState>;

/// Shared handler state.
#[derive(Clone)]
pub struct AppState {
    pub orch: Orchestrator,
    /// Process supervision (reload); `None` when pools are managed elsewhere.
    pub manager: Option<PoolManager>,
    pub metrics: Option<MetricsRender>,
    /// SSE comment keep-alive interval while a stream waits.
    pub keepalive: Duration,
    /// Largest request body accepted (413 above) and how long it may take (408).
    pub body: body::BodyLimits,
    /// API keys and which routes need which role (swapped by a reconfiguration).
    pub auth: auth::SharedAuth,
    /// Re-reads the config file and applies it (`POST /v1/admin/reload-config`);
    /// `None` when the server was not started from a file.
    pub reconfigure: Option<ReconfigureHook>,
    /// Which hosts and origins may reach the server from a browser.
    pub browser: Arc<browser::BrowserPolicy>,
}

/// Re-read and apply the configuration: a report of what changed, or every problem
/// that made it refuse the file (then nothing changed).
pub type ReconfigureHook = Arc<
    dyn Fn() -> futures_util::future::BoxFuture<'static, Result<serde_json::Value, Vec<String>>>
        + Send
        + Sync,
>;

impl AppState {
    pub fn new(orch: Orchestrator) -> Self {
        Self {
            orch,
            manager: None,
            metrics: None,
            keepalive: Duration::from_secs(15),
            body: body::BodyLimits {
                max_bytes: orch_domain::PROMPT_MAX_BYTES + 64 * 1024,
                read_timeout: Duration::from_secs(30),
            },
            auth: auth::AuthConfig::open(),
            reconfigure: None,
            browser: Arc::default(),
        }
    }
}

/// The full router: data plane, operational endpoints and fallbacks.
pub fn router(state: AppState) -> Router {
    let state: App = Arc::new(state);
    Router::new()
        .route("/v1/tasks", post(data::create_task))
        .route("/v1/tasks/{id}", get(data::task_status))
        .route("/v1/tasks/{id}/stream", get(data::stream_task))
        .route("/v1/tasks/{id}/cancel", post(data::cancel_task))
        .route(
            "/v1/sessions/{id}",
            get(data::get_session).delete(data::delete_session),
        )
        .route(
            "/v1/chat/completions",
            post(openai::handlers::chat_completions),
        )
        .route("/v1/completions", post(openai::handlers::completions))
        .route("/v1/models", get(openai::handlers::models))
        .route("/v1/pools", get(control::list_pools))
        .route("/v1/pools/{id}/health", get(control::pool_health))
        .route("/v1/pools/{id}/drain", post(control::drain_pool))
        .route("/v1/pools/{id}/reload", post(control::reload_pool))
        .route("/v1/replicasets", get(control::replica_sets))
        .route(
            "/v1/pools/{id}/replicas",
            get(admin::list_replicas).post(admin::add_replica),
        )
        .route(
            "/v1/pools/{id}/replicas/{replica}",
            axum::routing::delete(admin::remove_replica),
        )
        .route("/v1/admin/reload-config", post(admin::reload_config))
        .route(
            "/v1/admin/keys",
            get(accounts::list_keys).post(accounts::create_key),
        )
        .route(
            "/v1/admin/keys/{fingerprint}",
            axum::routing::delete(accounts::revoke_key),
        )
        .route("/v1/usage", get(accounts::usage))
        .route("/v1/console", get(console::snapshot))
        .route("/console", get(console::page))
        .route("/console/app.js", get(console::script))
        .route("/console/app.css", get(console::style))
        .route("/v1/capabilities", get(control::capabilities))
        .route("/openapi/data.yaml", get(openapi::serve_data))
        .route("/openapi/control.yaml", get(openapi::serve_control))
        .route("/livez", get(ops::livez))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        // from the inside out: the panic catcher around browser safety then
        // authentication (the caller; one layer, the browser check before any key is
        // looked at), then the correlation id with the access log inside it (one
        // layer; the log sees refusals and panics too). Each layer costs a request a
        // boxed future and a clone of the service inside it, so they are few.
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .layer(axum::middleware::from_fn(edge))
        .with_state(state)
}

/// The innermost layer: browser safety, then authentication, then the handler, with
/// any panic among them caught ([`caught`]).
async fn guard(
    state: axum::extract::State<App>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    caught(async move {
        if let Some(refused) = browser::refusal(&state.browser, &req) {
            return refused;
        }
        auth::middleware(state, req, next).await
    })
    .await
}

/// Serve with `served`; if it panics, answer 500 `INTERNAL` ([`panic_response`]).
/// Caught here rather than by tower-http's panic layer, which also boxes and maps the
/// response body: a stream paid that on every frame. (Neither catches a panic while
/// a body streams; that ends the connection.)
pub(crate) async fn caught(
    served: impl std::future::Future<Output = axum::response::Response>,
) -> axum::response::Response {
    use futures_util::FutureExt;
    std::panic::AssertUnwindSafe(served)
        .catch_unwind()
        .await
        .unwrap_or_else(panic_response)
}

/// The outermost layer: the correlation id, and inside it the access log.
pub(crate) async fn edge(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    correlation::around(req, |req| access::logged(req, next)).await
}

/// A handler that panicked answers 500 `INTERNAL` in the envelope, with the request's
/// own correlation id (so the log line and the client's error can be matched).
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let cid = correlation::current()
        .unwrap_or_else(|| correlation::CorrelationId(uuid::Uuid::new_v4().to_string()));
    tracing::error!(correlation_id = %cid.0, "handler panicked");
    error::ApiError::new(orch_domain::OrchError::internal("internal error"), &cid).into_response()
}
