//! A web page the operator has open cannot drive a keyless server on loopback: the
//! exact requests a hostile page can send without a CORS preflight (a form post, a
//! `text/plain` fetch, a body-less cross-site POST, a POST through a DNS-rebinding
//! name) are refused before they reach a handler, and nothing changed. Clients that
//! are not browsers (no `Origin`), same-origin pages and listed origins still work.

mod common;

use common::*;
use reqwest::header::{HOST, ORIGIN};
use serde_json::{json, Value};

const EVIL: &str = "http://evil.example";

/// POST `path` with these headers and body, as a page (or a client) would.
async fn post(
    s: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> reqwest::Response {
    let mut rb = s.http.post(s.url(path)).body(body.to_string());
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    rb.send().await.unwrap()
}

async fn draining(s: &TestServer) -> bool {
    let v: Value = s.get_json("/v1/pools").await;
    v["pools"][0]["draining"].as_bool().expect("draining flag")
}

#[tokio::test]
async fn a_hostile_pages_requests_are_refused_and_change_nothing() {
    let s = start(&mock_config("", "tokens = 400\ntokens_per_sec = 50.0")).await;
    let port = s.base.rsplit(':').next().unwrap().to_string();
    let (id, _) = s.submit(&task("long", 400, "batch")).await;
    s.wait_state(&id, "running").await;

    // a form post to drain the pool (a page's <form method=post>)
    let form = "application/x-www-form-urlencoded";
    let drain = "/v1/pools/mockpool/drain";
    let r = post(
        &s,
        drain,
        &[("origin", EVIL), ("content-type", form)],
        "deadline_ms=1",
    )
    .await;
    envelope(r, 403, "FORBIDDEN").await;
    // a text/plain fetch of reload-config
    let text = [
        ("origin", EVIL),
        ("content-type", "text/plain;charset=UTF-8"),
    ];
    let r = post(&s, "/v1/admin/reload-config", &text, "{}").await;
    envelope(r, 403, "FORBIDDEN").await;
    // a body-less no-cors fetch cancelling a task
    let cancel = format!("/v1/tasks/{id}/cancel");
    let r = post(&s, &cancel, &[("origin", EVIL)], "").await;
    envelope(r, 403, "FORBIDDEN").await;
    // DNS rebinding: the page's own name now resolves to 127.0.0.1, so the browser
    // sees it as same-origin; the Host still names the page's site
    let rebound = format!("evil.example:{port}");
    let page = format!("http://{rebound}");
    let headers = [
        ("host", rebound.as_str()),
        ("origin", &page),
        ("content-type", "text/plain"),
    ];
    let r = post(&s, drain, &headers, r#"{"deadline_ms": 1}"#).await;
    envelope(r, 403, "FORBIDDEN").await;
    let r = s
        .http
        .get(s.url("/v1/pools"))
        .header(HOST, &rebound)
        .send()
        .await
        .unwrap();
    envelope(r, 403, "FORBIDDEN").await;
    // a form post with no Origin at all (an old browser) still cannot carry a body
    let r = post(&s, drain, &[("content-type", form)], "deadline_ms=1").await;
    envelope(r, 415, "INVALID_PARAMS").await;

    // nothing changed: the pool serves, the task runs on
    assert!(!draining(&s).await, "a refused request drained the pool");
    assert_eq!(s.status(&id).await["state"], "running");

    // a page of this server itself (same origin) and a plain client both work
    let r = post(&s, &cancel, &[("origin", &s.base)], "").await;
    assert_eq!(r.status(), 204, "{:?}", r.text().await);
    let f = s.stream(&id, None).await;
    assert_eq!(f.last().unwrap().data["finish_reason"], "canceled");
    let r = s
        .http
        .post(s.url("/v1/pools/mockpool/drain"))
        .header(HOST, format!("localhost:{port}"))
        .json(&json!({"deadline_ms": 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    assert!(draining(&s).await);
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn listed_origins_and_hosts_are_let_through() {
    let cfg = mock_config("", "").replace(
        "[server]\n",
        "[server]\nallowed_origins = [\"https://ui.example\"]\nallowed_hosts = [\"orch.lan\"]\n",
    );
    let s = start(&cfg).await;
    let r = s
        .http
        .post(s.url("/v1/tasks"))
        .header(ORIGIN, "https://ui.example")
        .header(HOST, "orch.lan")
        .json(&task("hi", 2, "interactive"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let id = r.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    s.track(&id);
    let r = s
        .http
        .post(s.url("/v1/tasks"))
        .header(ORIGIN, "https://other.example")
        .json(&task("hi", 2, "interactive"))
        .send()
        .await
        .unwrap();
    envelope(r, 403, "FORBIDDEN").await;
    let r = s
        .http
        .get(s.url("/v1/capabilities"))
        .header(HOST, "other.lan")
        .send()
        .await
        .unwrap();
    envelope(r, 403, "FORBIDDEN").await;
    s.stream(&id, None).await;
    s.assert_all_terminated().await;
}
