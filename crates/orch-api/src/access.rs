//! The access log: one line per request with its method, route template (never the
//! concrete path, which may hold ids), status, latency to the response head, correlation
//! id and tenant. Streams are logged when their head goes out.

use crate::correlation::CorrelationId;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use orch_services::Caller;
use std::time::Instant;

pub async fn middleware(req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "<unmatched>".to_string(), |m| m.as_str().to_string());
    let cid = req.extensions().get::<CorrelationId>().map(|c| c.0.clone());
    let tenant = req
        .extensions()
        .get::<Caller>()
        .map(|c| c.tenant.to_string());
    let resp = next.run(req).await;
    tracing::info!(target: "access", method = %method, route = %route,
        status = resp.status().as_u16(), latency_ms = t0.elapsed().as_secs_f64() * 1e3,
        correlation_id = cid.as_deref().unwrap_or("-"), tenant = tenant.as_deref().unwrap_or("-"),
        "request");
    resp
}
