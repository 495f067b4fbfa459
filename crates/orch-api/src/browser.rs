//! Browser safety: a web page the operator has open must not be able to drive this
//! server, keyless on loopback included. Browsers send two kinds of requests without
//! asking first (no CORS preflight): a form post and a "simple" `fetch` (no custom
//! headers, a body of `text/plain`, a form type, or none). Three checks, before
//! authentication:
//!
//! * **Origin**: a request that carries an `Origin` (browsers add it to every cross-site
//!   request and to every POST) must come from this server's own origin or one listed
//!   in `[server] allowed_origins`; otherwise 403 `FORBIDDEN`. Clients that are not
//!   browsers send no `Origin` and are not affected.
//! * **Host** (DNS rebinding: a hostile name that resolves to 127.0.0.1 makes the page
//!   same-origin with it): a server listening on loopback answers only to loopback
//!   names (`localhost`, `127.x.x.x`, `[::1]`) and the hosts listed in
//!   `[server] allowed_hosts`; a server that lists `allowed_hosts` answers only to
//!   those (and loopback names, and the address it listens on). Otherwise 403. A
//!   server on another address without that list takes any `Host` (it needs keys, and
//!   a page cannot send them).
//! * **Body type**: a request that changes state (any method but GET, HEAD, OPTIONS)
//!   and carries a body or a `Content-Type` must say `application/json`; otherwise 415
//!   (a form post or a `text/plain` fetch never reaches a handler).
//!
//! Owns: the policy ([`BrowserPolicy`]) and the refusals. Never: authentication.

use crate::correlation::CorrelationId;
use axum::extract::Request;
use axum::http::{header, HeaderMap, Method};
use axum::response::Response;
use orch_domain::{ErrorCode, OrchError};
use std::net::{IpAddr, SocketAddr};

/// Which hosts and origins this server answers to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrowserPolicy {
    /// The address the server listens on (`None`: unknown, e.g. an embedded router).
    pub bound: Option<SocketAddr>,
    /// Host names (or `name:port`) the server answers to besides loopback names and the
    /// address it listens on; when set, every other `Host` is refused.
    pub allowed_hosts: Vec<String>,
    /// Origins (`https://ui.example:8443`) allowed besides the server's own.
    pub allowed_origins: Vec<String>,
}

/// `host` without its port (`[::1]:80` → `::1`, `a:80` → `a`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn is_loopback_name(name: &str) -> bool {
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl BrowserPolicy {
    /// Whether a request with this `Host` may be answered.
    pub fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host);
        if is_loopback_name(name) {
            return true;
        }
        if self
            .allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host) || h.eq_ignore_ascii_case(name))
        {
            return true;
        }
        let bound_ip = self.bound.map(|b| b.ip());
        if bound_ip.is_some_and(|ip| !ip.is_unspecified() && name.parse::<IpAddr>() == Ok(ip)) {
            return true;
        }
        // no list: only a loopback listener knows which names are its own
        self.allowed_hosts.is_empty() && !bound_ip.is_some_and(|ip| ip.is_loopback())
    }

    /// Whether a request from `origin` (its `Origin` header), sent to `host`, may be
    /// answered: the server's own origin, or a listed one.
    pub fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim_end_matches('/');
        if self
            .allowed_origins
            .iter()
            .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin))
        {
            return true;
        }
        let Some(host) = host else { return false };
        ["http://", "https://"].iter().any(|scheme| {
            origin
                .strip_prefix(scheme)
                .is_some_and(|o| o.eq_ignore_ascii_case(host))
        })
    }
}

/// A state-changing request whose body is not declared JSON (a form post or a
/// `text/plain` fetch): what a page may send without a preflight.
fn unsafe_body(method: &Method, headers: &HeaderMap) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return false;
    }
    let has_body = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|n| n.trim() != "0")
        || headers.contains_key(header::TRANSFER_ENCODING);
    (headers.contains_key(header::CONTENT_TYPE) || has_body) && !crate::body::is_json(headers)
}

/// The refusal of what a web page could send without the operator meaning it (see the
/// module docs); `None` lets the request go on. Nothing is allocated unless a request
/// is refused. Run in the authentication layer, before any key is looked at.
pub fn refusal(policy: &BrowserPolicy, req: &Request) -> Option<Response> {
    let headers = req.headers();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let refusal = if host.is_some_and(|h| !policy.host_allowed(h)) {
        Some(forbidden(format!(
            "Host {} is not a name of this server (a DNS-rebinding page?); list it in [server] allowed_hosts to allow it",
            host.unwrap_or_default()
        )))
    } else if let Some(origin) = headers.get(header::ORIGIN) {
        let o = origin.to_str().unwrap_or("(not text)");
        (!policy.origin_allowed(o, host)).then(|| {
            forbidden(format!(
                "cross-site request refused: Origin {o} is not this server's; list it in [server] allowed_origins to allow it"
            ))
        })
    } else {
        None
    };
    // the OpenAI door's handlers refuse a body that is not JSON in OpenAI's shape
    let not_json = refusal.is_none()
        && unsafe_body(req.method(), headers)
        && !crate::openai::is_openai_path(req.uri().path());
    if refusal.is_none() && !not_json {
        return None;
    }
    let path = req.uri().path();
    let cid = req
        .extensions()
        .get::<CorrelationId>()
        .cloned()
        .unwrap_or_else(|| CorrelationId(uuid::Uuid::new_v4().to_string()));
    Some(match refusal {
        Some(e) => {
            tracing::warn!(path, error = %e.message, "browser-unsafe request refused");
            crate::auth::refuse(path, e, &cid)
        }
        None => {
            use axum::response::IntoResponse;
            let e = crate::body::not_json(req.headers());
            crate::error::ApiError::media_type(e, &cid).into_response()
        }
    })
}

fn forbidden(message: String) -> OrchError {
    OrchError::new(ErrorCode::Forbidden, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(bound: &str, hosts: &[&str], origins: &[&str]) -> BrowserPolicy {
        BrowserPolicy {
            bound: Some(bound.parse().unwrap()),
            allowed_hosts: hosts.iter().map(|s| s.to_string()).collect(),
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_loopback_server_answers_only_to_loopback_names_and_listed_hosts() {
        let p = policy("127.0.0.1:8080", &[], &[]);
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "127.0.0.2",
        ] {
            assert!(p.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "evil.example",
            "10.0.0.5:8080",
            "localhost.evil.example",
        ] {
            assert!(!p.host_allowed(bad), "{bad}");
        }
        let p = policy("127.0.0.1:8080", &["orch.lan"], &[]);
        assert!(p.host_allowed("orch.lan:8080"));
        assert!(!p.host_allowed("evil.example"));
    }

    #[test]
    fn another_listener_takes_any_host_unless_it_lists_them() {
        assert!(policy("0.0.0.0:80", &[], &[]).host_allowed("anything.example"));
        let p = policy("10.0.0.5:80", &["orch.example"], &[]);
        assert!(p.host_allowed("orch.example"));
        assert!(p.host_allowed("10.0.0.5:80"));
        assert!(!p.host_allowed("evil.example"));
    }

    #[test]
    fn only_the_servers_own_origin_and_listed_ones_pass() {
        let p = policy("127.0.0.1:8080", &[], &["https://ui.example"]);
        let host = Some("127.0.0.1:8080");
        assert!(p.origin_allowed("http://127.0.0.1:8080", host));
        assert!(p.origin_allowed("https://ui.example/", host));
        assert!(!p.origin_allowed("http://evil.example", host));
        assert!(!p.origin_allowed("null", host));
        assert!(!p.origin_allowed("http://127.0.0.1:9999", host));
        assert!(!p.origin_allowed("http://127.0.0.1:8080", None));
    }

    #[test]
    fn a_state_change_must_declare_json_when_it_has_a_body_or_a_type() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(
                    axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            m
        };
        let form = h(&[("content-type", "application/x-www-form-urlencoded")]);
        assert!(unsafe_body(&Method::POST, &form));
        assert!(unsafe_body(
            &Method::POST,
            &h(&[("content-type", "text/plain")])
        ));
        assert!(unsafe_body(&Method::POST, &h(&[("content-length", "2")])));
        assert!(!unsafe_body(&Method::POST, &h(&[])));
        assert!(!unsafe_body(&Method::POST, &h(&[("content-length", "0")])));
        assert!(!unsafe_body(
            &Method::POST,
            &h(&[("content-type", "application/json")])
        ));
        assert!(!unsafe_body(&Method::GET, &form));
    }
}
