//! The OpenAI door over real HTTP on a mock pool: driven by the official `openai`
//! Python SDK (installed into the project's venv by `scripts/provision.sh`; a missing
//! SDK fails the test), and by raw requests for the edges: the error shape, refused
//! fields, backpressure, priority, and the cancel when a client goes away.

mod common;
use common::sdk::{assert_sdk_report, keys, run_sdk, CLIENT_KEY};
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_drives_the_door_on_a_mock_pool() {
    let s = start(&format!(
        "{}{}",
        keys(),
        mock_config(
            "",
            "slots = 2\ntokens_per_sec = 400.0\nttft_ms = 2\ntokens = 8"
        )
    ))
    .await;
    let base = s.base.clone();
    let r = tokio::task::spawn_blocking(move || run_sdk(&base, "mock-model"))
        .await
        .unwrap();
    eprintln!("SDK report: {r}");
    assert_sdk_report(&r, "mock-model");
    assert_eq!(r["chat"]["finish_reason"], "length");
    assert_eq!(r["chat"]["usage"]["completion_tokens"], 8);
    // the task behind a response is an ordinary OrchQueue task of the key's tenant
    let id = r["chat"]["task_id"].as_str().unwrap();
    let st = s.get_json_as(&format!("/v1/tasks/{id}"), CLIENT_KEY).await;
    assert_eq!(st["tenant"], "door");
    assert_eq!(st["state"], "completed");
    assert_eq!(st["priority"], "interactive");
}

async fn post(
    s: &TestServer,
    path: &str,
    body: &Value,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut rb = s.http.post(s.url(path)).json(body);
    for (k, v) in extra {
        rb = rb.header(*k, *v);
    }
    rb.send().await.unwrap()
}

async fn openai_error(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status().as_u16(), status);
    let v: Value = r.json().await.unwrap();
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string() && e["code"].is_string(), "{v}");
    v
}

fn chat(max_tokens: u32) -> Value {
    json!({"model": "mock-model", "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "hello"}]})
}

#[tokio::test]
async fn errors_have_openai_shape_and_unsupported_fields_are_refused_by_name() {
    let s = start(&mock_config(
        "queue_capacity = 1",
        "slots = 1\ntokens_per_sec = 20.0\nttft_ms = 2\ntokens = 40",
    ))
    .await;
    for (field, value) in [
        ("tools", json!([{"type": "function"}])),
        ("n", json!(3)),
        ("logprobs", json!(true)),
        ("frequency_penalty", json!(0.5)),
        ("max_tokns", json!(4)),
    ] {
        let mut b = chat(4);
        b[field] = value;
        let v = openai_error(post(&s, "/v1/chat/completions", &b, &[]).await, 400).await;
        assert_eq!(v["error"]["param"], field, "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    // neutral values of those fields are accepted
    let mut b = chat(2);
    b["n"] = json!(1);
    b["logprobs"] = json!(false);
    b["frequency_penalty"] = json!(0);
    let r = post(&s, "/v1/chat/completions", &b, &[]).await;
    assert_eq!(r.status(), 200);
    // a model nobody serves, a bad priority header, a body that is not JSON
    let mut b = chat(2);
    b["model"] = json!("nope");
    let v = openai_error(post(&s, "/v1/chat/completions", &b, &[]).await, 400).await;
    assert_eq!(v["error"]["param"], "model_ref");
    openai_error(
        post(
            &s,
            "/v1/completions",
            &json!({"model": "mock-model", "prompt": "x"}),
            &[("x-orch-priority", "urgent")],
        )
        .await,
        400,
    )
    .await;
    let r = s
        .http
        .post(s.url("/v1/chat/completions"))
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    openai_error(r, 415).await;
    // backpressure: the slot and the one queue place are taken → 429 with Retry-After
    let running = s
        .http
        .post(s.url("/v1/chat/completions"))
        .json(&json!({"model": "mock-model",
        "max_tokens": 40, "stream": true, "messages": [{"role": "user", "content": "a"}]}));
    let r1 = running.send().await.unwrap();
    assert_eq!(r1.status(), 200);
    let queued = post(&s, "/v1/tasks", &task("b", 4, "batch"), &[]).await;
    assert_eq!(queued.status(), 202);
    let r = post(&s, "/v1/chat/completions", &chat(4), &[]).await;
    assert!(r.headers().get("retry-after").is_some());
    let v = openai_error(r, 429).await;
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(v["error"]["code"], "reject");
    drop(r1);
}

#[tokio::test]
async fn priority_comes_from_the_header_and_the_task_is_named() {
    let s = start(&mock_config(
        "",
        "slots = 2\ntokens_per_sec = 400.0\nttft_ms = 2\ntokens = 4",
    ))
    .await;
    let r = post(
        &s,
        "/v1/completions",
        &json!({"model": "mock-model", "prompt": "p", "max_tokens": 3}),
        &[("x-orch-priority", "batch")],
    )
    .await;
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-orch-task-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["id"], format!("cmpl-{id}"));
    assert_eq!(v["usage"]["completion_tokens"], 3);
    let st = s.status(&id).await;
    assert_eq!(st["priority"], "batch");
    let models: Value = s.get_json("/v1/models").await;
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "mock-model");
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_task_at_once() {
    // the stream grace is 60 s: only the door's own cancel can end it this fast
    let s = start(&mock_config(
        "",
        "slots = 1\ntokens_per_sec = 10.0\nttft_ms = 2\ntokens = 100",
    ))
    .await;
    let mut b = chat(100);
    b["stream"] = json!(true);
    let mut r = post(&s, "/v1/chat/completions", &b, &[]).await;
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-orch-task-id"].to_str().unwrap().to_string();
    let first = r.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    drop(r);
    let t0 = Instant::now();
    loop {
        let st = s.status(&id).await;
        if st["state"] == "canceled" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(3), "still {st}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "canceled {} ms after the client left",
        t0.elapsed().as_millis()
    );
    // the slot is free again: the next request runs at once
    let r = post(&s, "/v1/chat/completions", &chat(2), &[]).await;
    assert_eq!(r.status(), 200);
}

/// An `openai` pool whose replica is any OpenAI-compatible server: here a second
/// orchestratord's own door (over a mock pool), so the whole chain runs without a real
/// engine. The SDK drives the first server; its tasks run upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_pool_serves_through_any_openai_compatible_upstream() {
    let upstream = start(&mock_config(
        "",
        "slots = 4\ntokens_per_sec = 400.0\nttft_ms = 2\ntokens = 8",
    ))
    .await;
    let front = start(&format!(
        "{}\n[[pools]]\nid = \"up\"\nengine = \"openai\"\nmodel = \"mock-model\"\nreplicas = 1\n[pools.openai]\nurls = [\"{}\"]\nslots = 2\n",
        common::sdk::keys(),
        upstream.base
    ))
    .await;
    let pools = front.get_json_as("/v1/capabilities", CLIENT_KEY).await;
    let e = &pools["engines"][0];
    assert_eq!(e["engine"], "openai");
    assert_eq!(e["model_digest"], "openai:mock-model");
    assert_eq!(e["concurrency"], 2);
    let base = front.base.clone();
    let r = tokio::task::spawn_blocking(move || run_sdk(&base, "mock-model"))
        .await
        .unwrap();
    eprintln!("SDK report (openai pool → upstream door): {r}");
    assert_sdk_report(&r, "mock-model");
    // tokens and usage come from upstream: the mock's 8 tokens, the same words
    assert_eq!(r["chat"]["usage"]["completion_tokens"], 8);
    // the front's task ran on its openai replica
    let id = r["chat"]["task_id"].as_str().unwrap();
    let st = front
        .get_json_as(&format!("/v1/tasks/{id}"), CLIENT_KEY)
        .await;
    assert_eq!(st["replica_id"], "up-r0");
    assert_eq!(st["state"], "completed");
}
