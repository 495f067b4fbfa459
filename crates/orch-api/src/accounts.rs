//! Keys and usage over HTTP: `POST/GET /v1/admin/keys` and
//! `DELETE /v1/admin/keys/{fingerprint}` (admin role, by the `/v1/admin/` prefix),
//! and `GET /v1/usage` (a client sees its own tenant; an admin every tenant, or one
//! by `tenant=`), as JSON or, with `Accept: text/csv`, as CSV.
//!
//! Owns: request parsing and the response shapes of these routes; keys, the ledger
//! and budgets are the services' (`orch_services::accounts`). A server without
//! accounts (`server.accounts = false`, or an embedder that set none) answers 404
//! `NOT_FOUND` saying so.

use crate::body::read_json;
use crate::correlation::CorrelationId;
use crate::error::{ApiError, OrApi};
use crate::{App, AppState};
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use orch_domain::accounts::{CreatedKey, KeyList, KeyView, NewKey, UsageGroupBy, UsageReport};
#[allow(unused_imports)]
use orch_domain::ErrorEnvelope;
use orch_domain::{ErrorCode, OrchError};
use orch_services::accounts::{calendar, UsageQuery};
use orch_services::{Accounts, Caller};
use std::sync::Arc;

type ApiResult<T> = Result<T, ApiError>;

/// Longest span one usage report covers (a year and a day).
const MAX_SPAN_MS: u64 = 366 * 86_400_000;
const HOUR_MS: u64 = 3_600_000;

fn accounts(app: &AppState, cid: &CorrelationId) -> ApiResult<Arc<Accounts>> {
    app.orch.accounts().ok_or_else(|| {
        ApiError::new(
            OrchError::new(
                ErrorCode::NotFound,
                "this server keeps no accounts (keys API, usage ledger and budgets are off: `server.accounts = false`)",
            ),
            cid,
        )
    })
}

fn config_key_view(c: &Caller) -> KeyView {
    let scope = c.scope.as_deref();
    KeyView {
        fingerprint: c.key_fingerprint.as_deref().unwrap_or("-").to_string(),
        tenant: c.tenant.to_string(),
        role: c.role.as_str().to_string(),
        source: "config".into(),
        label: None,
        created_at: None,
        expires_at: None,
        last_used_at: None,
        revoked_at: None,
        pools: scope.and_then(|s| s.pools.clone()),
        priorities: scope.and_then(|s| s.priorities.clone()),
    }
}

/// A key limited to some pools or priorities makes only keys within those limits
/// (403 otherwise): it cannot mint a key that reaches more than it does.
fn within_scope(caller: &Caller, req: &NewKey) -> Result<(), OrchError> {
    let Some(scope) = caller.scope.as_deref() else {
        return Ok(());
    };
    let refuse = |what: &str| {
        Err(OrchError::new(
            ErrorCode::Forbidden,
            format!(
                "this key is limited to some {what}; a key it makes must name {what} among them"
            ),
        ))
    };
    if let Some(mine) = &scope.pools {
        match &req.pools {
            Some(p) if p.iter().all(|x| mine.contains(x)) => {}
            _ => return refuse("pools"),
        }
    }
    if let Some(mine) = &scope.priorities {
        match &req.priorities {
            Some(p) if p.iter().all(|x| mine.contains(x)) => {}
            _ => return refuse("priorities"),
        }
    }
    Ok(())
}

/// `POST /v1/admin/keys`: a new key for a tenant, shown once.
#[utoipa::path(post, path = "/v1/admin/keys", tag = "control", operation_id = "createKey",
    request_body = NewKey,
    responses(
        (status = 201, description = "The key (shown this once) and its fingerprint; it works at once", body = CreatedKey),
        (status = 400, description = "Invalid body (tenant name, role, expiry in the past, empty lists)", body = ErrorEnvelope),
        (status = 403, description = "The caller's key is limited to some pools or priorities and the new key would reach beyond them", body = ErrorEnvelope),
        (status = 404, description = "This server keeps no accounts", body = ErrorEnvelope),
    ))]
pub async fn create_key(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> ApiResult<Response> {
    let a = accounts(&app, &cid)?;
    let req: NewKey = read_json(body, app.body.capped(16 * 1024))
        .await
        .or_api(&cid)?;
    within_scope(&caller, &req).or_api(&cid)?;
    let auth = crate::auth::current(&app.auth);
    let (key, view) = a
        .keys()
        .create(req, |fp| auth.keys.has_fingerprint(fp))
        .await
        .or_api(&cid)?;
    let mut r = (StatusCode::CREATED, Json(CreatedKey { key, view })).into_response();
    r.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(r)
}

/// `GET /v1/admin/keys`: every key, never the key itself.
#[utoipa::path(get, path = "/v1/admin/keys", tag = "control", operation_id = "listKeys",
    responses(
        (status = 200, description = "The config file's keys (`source: config`), then the keys made here, oldest first", body = KeyList),
        (status = 404, description = "This server keeps no accounts", body = ErrorEnvelope),
    ))]
pub async fn list_keys(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
) -> ApiResult<Response> {
    let a = accounts(&app, &cid)?;
    let auth = crate::auth::current(&app.auth);
    let mut keys: Vec<KeyView> = auth.keys.callers().iter().map(config_key_view).collect();
    keys.extend(a.keys().list());
    Ok(Json(KeyList { keys }).into_response())
}

/// `DELETE /v1/admin/keys/{fingerprint}`: revoke a key made here, at once.
#[utoipa::path(delete, path = "/v1/admin/keys/{fingerprint}", tag = "control", operation_id = "revokeKey",
    params(("fingerprint" = String, Path, description = "The key's fingerprint (`key:` and 8 hex digits)")),
    responses(
        (status = 200, description = "Revoked: the key authenticates nothing from now on", body = KeyView),
        (status = 404, description = "No such key made through the API, or no accounts", body = ErrorEnvelope),
        (status = 409, description = "A key of the config file: remove it from the file and reload the config", body = ErrorEnvelope),
    ))]
pub async fn revoke_key(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
    Path(fingerprint): Path<String>,
) -> ApiResult<Response> {
    let a = accounts(&app, &cid)?;
    let auth = crate::auth::current(&app.auth);
    if auth.keys.has_fingerprint(&fingerprint) {
        return Err(ApiError::new(
            OrchError::new(
                ErrorCode::Conflict,
                format!("{fingerprint} is a key of the config file; remove it from the file and reload the config (POST /v1/admin/reload-config)"),
            ),
            &cid,
        ));
    }
    let view = a.keys().revoke(&fingerprint).await.or_api(&cid)?;
    Ok(Json(view).into_response())
}

/// The query of `GET /v1/usage`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Start (RFC 3339 or a UTC date), rounded down to the hour. Default: the start
    /// of the current UTC month.
    #[param(pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ][0-9:.]+([Zz]|[+-][0-9]{2}:[0-9]{2}))?$")]
    pub from: Option<String>,
    /// End, exclusive, rounded up to the hour. Default: now.
    #[param(pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ][0-9:.]+([Zz]|[+-][0-9]{2}:[0-9]{2}))?$")]
    pub to: Option<String>,
    /// `tenant` (default), `key`, `pool`, `model` or `hour`.
    #[param(value_type = Option<UsageGroupBy>)]
    pub group_by: Option<String>,
    /// Only this tenant (admins; a client key always sees only its own).
    #[param(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub tenant: Option<String>,
}

fn time_param(name: &str, v: &str) -> Result<u64, OrchError> {
    // a `+hh:mm` offset arrives as a space when the client did not encode it
    let v = if v.contains('T') {
        v.replace(' ', "+")
    } else {
        v.to_string()
    };
    calendar::parse_rfc3339(&v).ok_or_else(|| {
        OrchError::invalid(
            name,
            "must be an RFC 3339 timestamp (2026-12-01T00:00:00Z) or a date (2026-12-01)",
        )
    })
}

fn usage_query(p: &UsageParams, caller: &Caller) -> Result<UsageQuery, OrchError> {
    let now = calendar::now_ms();
    let from = match &p.from {
        Some(v) => time_param("from", v)?,
        None => calendar::month_bounds(now).0,
    };
    let to = match &p.to {
        Some(v) => time_param("to", v)?,
        None => now,
    };
    let from = calendar::hour_start(from);
    let to = calendar::hour_start(to.saturating_add(HOUR_MS - 1));
    if to <= from {
        return Err(OrchError::invalid("to", "must be after `from`"));
    }
    if to - from > MAX_SPAN_MS {
        return Err(OrchError::invalid("to", "a report covers at most 366 days"));
    }
    let group_by = match &p.group_by {
        None => UsageGroupBy::Tenant,
        Some(g) => UsageGroupBy::parse(g).ok_or_else(|| {
            OrchError::invalid("group_by", "must be tenant, key, pool, model or hour")
        })?,
    };
    let tenant = if caller.is_admin() {
        p.tenant.clone()
    } else {
        match &p.tenant {
            Some(t) if *t != *caller.tenant => {
                return Err(OrchError::new(
                    ErrorCode::Forbidden,
                    "a client key sees only its own tenant's usage",
                ))
            }
            _ => Some(caller.tenant.to_string()),
        }
    };
    Ok(UsageQuery {
        from_ms: from,
        to_ms: to,
        tenant,
        group_by,
    })
}

fn wants_csv(h: &HeaderMap) -> bool {
    h.get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|m| m.trim().starts_with("text/csv")))
}

/// A CSV field: quoted when it holds a comma, quote or line break; a leading
/// `=`, `+`, `-`, `@`, tab or carriage return is prefixed with `'` so a spreadsheet does not run it.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '@', '\t', '\r']) || (s.starts_with('-') && s.len() > 1) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// The report as CSV: one row per group, errors as `code=n;code=n`.
pub fn report_csv(r: &UsageReport) -> String {
    let mut out = format!(
        "{},tasks,tokens_in,tokens_out,tokens_cached,canceled,errors\n",
        r.group_by.as_str()
    );
    for row in &r.rows {
        let c = &row.counts;
        let errors: Vec<String> = c.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            csv_field(&row.group),
            c.tasks,
            c.tokens_in,
            c.tokens_out,
            c.tokens_cached,
            c.canceled,
            csv_field(&errors.join(";"))
        ));
    }
    out
}

/// `GET /v1/usage`.
#[utoipa::path(get, path = "/v1/usage", tag = "data", operation_id = "getUsage",
    params(UsageParams),
    responses(
        (status = 200, description = "Usage between `from` and `to` by the hour each task ended in; `Accept: text/csv` gives CSV",
            content((UsageReport = "application/json"), (String = "text/csv"))),
        (status = 400, description = "Invalid time, span or grouping", body = ErrorEnvelope),
        (status = 403, description = "A client key asked for another tenant", body = ErrorEnvelope),
        (status = 404, description = "This server keeps no accounts", body = ErrorEnvelope),
    ))]
pub async fn usage(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(p) =
        params.map_err(|e| ApiError::new(OrchError::invalid("query", e.body_text()), &cid))?;
    let a = accounts(&app, &cid)?;
    let q = usage_query(&p, &caller).or_api(&cid)?;
    let report = a.report(q).await.or_api(&cid)?;
    if wants_csv(&headers) {
        return Ok((
            [(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            report_csv(&report),
        )
            .into_response());
    }
    Ok(Json(report).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_services::Role;

    #[test]
    fn a_client_sees_only_its_tenant_and_times_round_to_the_hour() {
        let client = Caller::of("acme", Role::Client);
        let p = UsageParams {
            from: Some("2026-12-01T10:30:00Z".into()),
            to: Some("2026-12-01T12:00:01Z".into()),
            ..UsageParams::default()
        };
        let q = usage_query(&p, &client).unwrap();
        assert_eq!(q.tenant.as_deref(), Some("acme"));
        assert_eq!(calendar::rfc3339(q.from_ms), "2026-12-01T10:00:00Z");
        assert_eq!(calendar::rfc3339(q.to_ms), "2026-12-01T13:00:00Z");
        let other = UsageParams {
            tenant: Some("globex".into()),
            ..UsageParams::default()
        };
        assert_eq!(
            usage_query(&other, &client).unwrap_err().code,
            ErrorCode::Forbidden
        );
        let admin = Caller::of("ops", Role::Admin);
        assert_eq!(
            usage_query(&other, &admin).unwrap().tenant.as_deref(),
            Some("globex")
        );
        assert_eq!(
            usage_query(&UsageParams::default(), &admin).unwrap().tenant,
            None
        );
        let bad = UsageParams {
            group_by: Some("color".into()),
            ..UsageParams::default()
        };
        assert_eq!(
            usage_query(&bad, &admin).unwrap_err().code,
            ErrorCode::InvalidParams
        );
        let backwards = UsageParams {
            from: Some("2026-12-02".into()),
            to: Some("2026-12-01".into()),
            ..UsageParams::default()
        };
        assert!(usage_query(&backwards, &admin).is_err());
    }

    #[test]
    fn csv_fields_cannot_smuggle_formulas_or_columns() {
        assert_eq!(csv_field("acme"), "acme");
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("-"), "-");
    }
}
