//! The access log: one line per request with its method, route template (never the
//! concrete path, which may hold ids), status, latency to the response head, correlation
//! id and tenant (`-` when the request was refused before a key was known). Streams are
//! logged when their head goes out. It runs outside authentication and the panic
//! catcher, so refusals (401/403) and panics (500) get their line too.

use crate::correlation::CorrelationId;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use orch_services::Caller;
use std::time::Instant;

/// Serve `req` through `next` and log its line (run by the correlation layer, inside
/// which the id is known).
pub async fn logged(req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "<unmatched>".to_string(), |m| m.as_str().to_string());
    let cid = req.extensions().get::<CorrelationId>().map(|c| c.0.clone());
    let resp = next.run(req).await;
    // the auth layer (inside this one) puts the caller on the response
    let tenant = resp
        .extensions()
        .get::<Caller>()
        .map(|c| c.tenant.to_string());
    tracing::info!(target: "access", method = %method, route = %route,
        status = resp.status().as_u16(), latency_ms = t0.elapsed().as_secs_f64() * 1e3,
        correlation_id = cid.as_deref().unwrap_or("-"), tenant = tenant.as_deref().unwrap_or("-"),
        "request");
    resp
}
