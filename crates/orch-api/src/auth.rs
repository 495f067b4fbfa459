//! Who is calling: the API key on each request (`Authorization: Bearer <key>` or
//! `X-API-Key: <key>`) becomes a [`Caller`] (tenant + role) that handlers receive as an
//! extension, and the route decides which role it needs:
//!
//! * open: `/livez`, `/readyz`, `/openapi/*`, and `/metrics` unless configured
//!   admin-only;
//! * admin: the control plane (`/v1/pools…`, `/v1/replicasets`);
//! * client (or admin): everything else.
//!
//! Keys come from the config file (the key ring) or were made through the keys API
//! (`orch_services::accounts`; revoked or expired ones authenticate nothing).
//! No key → 401 `UNAUTHENTICATED` (with `WWW-Authenticate: Bearer`); a key that is not
//! in the key ring → 401 as well; a valid key without the role → 403 `FORBIDDEN`.
//! With no keys configured every request is the open caller (the binary only allows
//! that on a loopback address). Keys are never logged: logs carry the key ring's
//! fingerprint of a known key and nothing of an unknown one.

use crate::correlation::CorrelationId;
use crate::error::ApiError;
use crate::App;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use orch_domain::{ErrorCode, OrchError};
use orch_services::{Caller, KeyRing, Role};
use std::sync::Arc;

/// Authentication settings of the HTTP layer.
#[derive(Debug, Default)]
pub struct AuthConfig {
    /// Accepted keys; empty = open (every caller is [`Caller::open`]).
    pub keys: KeyRing,
    /// Whether `/metrics` needs an admin key (when keys are configured).
    pub metrics_admin_only: bool,
}

/// The live key ring: replaced as a whole by a reconfiguration, read per request.
pub type SharedAuth = Arc<std::sync::RwLock<Arc<AuthConfig>>>;

/// The key ring in force now (a reconfiguration swaps it as a whole).
pub fn current(auth: &SharedAuth) -> Arc<AuthConfig> {
    auth.read().unwrap_or_else(|p| p.into_inner()).clone()
}

impl AuthConfig {
    pub fn open() -> SharedAuth {
        Self::default().shared()
    }

    pub fn shared(self) -> SharedAuth {
        Arc::new(std::sync::RwLock::new(Arc::new(self)))
    }
}

/// The role a path needs, or `None` for an open path.
pub fn required_role(path: &str, metrics_admin_only: bool) -> Option<Role> {
    match path {
        "/livez" | "/readyz" => None,
        "/metrics" if !metrics_admin_only => None,
        "/metrics" => Some(Role::Admin),
        p if p.starts_with("/openapi/") => None,
        // the console's page, script and style hold no data (what it shows comes
        // from /v1/console with the operator's key)
        "/console" | "/console/app.js" | "/console/app.css" => None,
        p if p == "/v1/pools" || p.starts_with("/v1/pools/") => Some(Role::Admin),
        p if p == "/v1/replicasets" || p.starts_with("/v1/admin/") => Some(Role::Admin),
        _ => Some(Role::Client),
    }
}

/// The key a request presents, if any: `Authorization: Bearer` first (the standard),
/// else `X-API-Key`.
fn presented_key(h: &HeaderMap) -> Option<&str> {
    let bearer = h
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, k)| k.trim())
        .filter(|k| !k.is_empty());
    bearer.or_else(|| {
        h.get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    })
}

/// The error response for `path`: OpenAI's shape on the OpenAI door, the envelope
/// elsewhere.
pub(crate) fn refuse(path: &str, e: OrchError, cid: &CorrelationId) -> Response {
    if crate::openai::is_openai_path(path) {
        crate::openai::error::OpenAiError::from(e).into_response()
    } else {
        ApiError::new(e, cid).into_response()
    }
}

fn unauthenticated(path: &str, message: &str, cid: &CorrelationId) -> Response {
    let mut r = refuse(
        path,
        OrchError::new(ErrorCode::Unauthenticated, message),
        cid,
    );
    r.headers_mut().insert(
        "www-authenticate",
        HeaderValue::from_static("Bearer realm=\"orchestratord\""),
    );
    r
}

fn forbidden(path: &str, caller: &Caller, cid: &CorrelationId) -> Response {
    refuse(
        path,
        OrchError::new(
            ErrorCode::Forbidden,
            format!(
                "tenant {}'s key has role client; this route needs an admin key",
                caller.tenant
            ),
        ),
        cid,
    )
}

/// Authenticate, then hand the request on. The caller also rides on the response (for
/// the access log, which runs outside this layer so it sees refusals too).
pub async fn middleware(State(app): State<App>, req: Request, next: Next) -> Response {
    let submission = req.method() == axum::http::Method::POST
        && matches!(
            req.uri().path(),
            "/v1/tasks" | "/v1/chat/completions" | "/v1/completions"
        );
    let (caller, mut resp) = authenticate(app, req, next).await;
    if let Some(c) = caller {
        resp.extensions_mut().insert(c);
    } else if submission && resp.status() == axum::http::StatusCode::UNAUTHORIZED {
        // a submission refused for want of a key still counts as a rejection
        orch_services::metrics::rejected("none", "unauthenticated");
    }
    resp
}

async fn authenticate(app: App, mut req: Request, next: Next) -> (Option<Caller>, Response) {
    let auth = current(&app.auth);
    let cid = req
        .extensions()
        .get::<CorrelationId>()
        .cloned()
        .unwrap_or_else(|| CorrelationId(uuid::Uuid::new_v4().to_string()));
    let need = required_role(req.uri().path(), auth.metrics_admin_only);
    let conn = req.extensions().get::<crate::conn::ConnAuth>().cloned();
    let managed = |k: &str| app.orch.accounts().and_then(|a| a.keys().authenticate(k));
    if auth.keys.is_empty() {
        if let (Some(conn), Some(_)) = (&conn, need) {
            conn.authenticated();
        }
        // an open server: a key made through the API still names its tenant and
        // keeps its role; one revoked or expired is refused (not quietly the open
        // caller); any other key is ignored, as on every open server
        let presented = presented_key(req.headers());
        let c = match presented.and_then(managed) {
            Some(c) => c,
            None if presented
                .is_some_and(|k| app.orch.accounts().is_some_and(|a| a.keys().is_known(k))) =>
            {
                let path = req.uri().path().to_string();
                return (
                    None,
                    unauthenticated(&path, "the API key is not valid", &cid),
                );
            }
            None => Caller::open(),
        };
        if need == Some(Role::Admin) && !c.is_admin() {
            let path = req.uri().path().to_string();
            return (Some(c.clone()), forbidden(&path, &c, &cid));
        }
        req.extensions_mut().insert(c.clone());
        return (Some(c), next.run(req).await);
    }
    let Some(need) = need else {
        return (None, next.run(req).await);
    };
    let path = req.uri().path().to_string();
    let caller = match presented_key(req.headers()) {
        None => return (
            None,
            unauthenticated(
                &path,
                "an API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
                &cid,
            ),
        ),
        Some(k) => match auth.keys.authenticate(k).or_else(|| managed(k)) {
            Some(c) => {
                if let Some(conn) = &conn {
                    conn.authenticated();
                }
                c
            }
            None => {
                tracing::info!(correlation_id = %cid.0, path = %req.uri().path(), "unknown API key refused");
                return (
                    None,
                    unauthenticated(&path, "the API key is not valid", &cid),
                );
            }
        },
    };
    if need == Role::Admin && caller.role != Role::Admin {
        tracing::info!(correlation_id = %cid.0, tenant = %caller.tenant,
            key = caller.key_fingerprint.as_deref().unwrap_or("-"), path = %req.uri().path(),
            "forbidden: admin route with a client key");
        let resp = forbidden(&path, &caller, &cid);
        return (Some(caller), resp);
    }
    req.extensions_mut().insert(caller.clone());
    (Some(caller), next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_the_right_role() {
        assert_eq!(required_role("/livez", true), None);
        assert_eq!(required_role("/openapi/data.yaml", true), None);
        assert_eq!(required_role("/metrics", false), None);
        assert_eq!(required_role("/metrics", true), Some(Role::Admin));
        assert_eq!(required_role("/v1/pools/p/drain", false), Some(Role::Admin));
        assert_eq!(required_role("/v1/poolsX", false), Some(Role::Client));
        assert_eq!(required_role("/v1/tasks", false), Some(Role::Client));
        assert_eq!(required_role("/v1/capabilities", false), Some(Role::Client));
    }

    #[test]
    fn keys_come_from_bearer_or_x_api_key() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h), None);
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(presented_key(&h), None);
        h.insert("authorization", HeaderValue::from_static("Bearer  k1 "));
        assert_eq!(presented_key(&h), Some("k1"));
        h.insert("x-api-key", HeaderValue::from_static("k2"));
        assert_eq!(presented_key(&h), Some("k1"), "Bearer first");
        h.remove("authorization");
        assert_eq!(presented_key(&h), Some("k2"));
    }
}
