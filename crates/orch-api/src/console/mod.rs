//! The operator console: `GET /console` (a page, its script and its style, embedded
//! in the binary at build time: no CDN, no build step) and `GET /v1/console`, the
//! snapshot the page polls once a second (client or admin key; scoped by
//! `orch_services`' console module).
//!
//! Owns: the assets and their headers. The page holds no data of its own: it is
//! served without a key, and everything it shows comes from the API with the key the
//! operator types (kept in the tab's session storage). A strict Content-Security-Policy
//! (scripts and styles from this server only, no inline code, no framing) and
//! `nosniff` go with every asset; actions go through the existing API, so its roles
//! and browser-safety checks apply to them.

use crate::App;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
#[allow(unused_imports)]
use orch_domain::console::ConsoleView;
#[allow(unused_imports)]
use orch_domain::ErrorEnvelope;
use orch_services::Caller;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// What the page may load and do.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// The console's total weight (page, script, style), in bytes.
pub const WEIGHT_BYTES: usize = INDEX.len() + SCRIPT.len() + STYLE.len();

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /console`.
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /console/app.js`.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /console/app.css`.
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// `GET /v1/console`: the console's snapshot for the caller.
#[utoipa::path(get, path = "/v1/console", tag = "control", operation_id = "getConsole",
    responses(
        (status = 200, description = "Pools, tenants, running and queued tasks, recent failures and the last five minutes, scoped to the caller: a client key sees its own tenant's tasks and failures and no replica endpoints", body = ConsoleView),
    ))]
pub async fn snapshot(State(app): State<App>, Extension(caller): Extension<Caller>) -> Response {
    let mut r = Json(app.orch.console(&caller)).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}
