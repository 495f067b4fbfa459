//! Snapshots (insta) of the payloads clients plan with: capabilities, pools listing,
//! pool health, every error envelope kind the server answers with, and the full SSE
//! transcript of a deterministic mock task. Ids and times are redacted.

mod common;
use common::*;
use serde_json::{json, Value};

fn task(prompt: &str, max_tokens: u32) -> Value {
    json!({"workload": "completion", "model_ref": "mock-model", "priority": "interactive",
           "prompt": prompt, "max_tokens": max_tokens, "seed": 42})
}

async fn get(http: &reqwest::Client, url: String) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn payload_snapshots() {
    let l = live(MOCK).await;
    let http = reqwest::Client::new();
    let b = &l.base;
    insta::assert_json_snapshot!(
        "capabilities",
        get(&http, format!("{b}/v1/capabilities")).await
    );
    insta::assert_json_snapshot!("pools", get(&http, format!("{b}/v1/pools")).await);
    insta::assert_json_snapshot!(
        "pool_health",
        get(&http, format!("{b}/v1/pools/mockpool/health")).await
    );
}

#[tokio::test]
async fn sse_transcript_snapshot() {
    let l = live(MOCK).await;
    let c = orch_client::Client::new(&l.base);
    let req: orch_domain::TaskRequest =
        serde_json::from_value(task("The sea was grey", 5)).unwrap();
    let adm = c.submit(&req).await.unwrap();
    let events = c.collect(adm.task_id).await.unwrap();
    let transcript: Vec<Value> = events
        .iter()
        .map(|e| json!({"id": e.id, "event": e.event.name(), "data": serde_json::to_value(&e.event).unwrap()["data"]}))
        .collect();
    insta::assert_json_snapshot!("sse_transcript", transcript, {
        "[].data.decode_time_ms" => "[ms]",
        "[].data.ttft_ms" => "[ms]",
    });
}

#[tokio::test]
async fn error_envelope_snapshots() {
    let l = live(MOCK).await;
    let http = reqwest::Client::new();
    let b = l.base.clone();
    let post = |body: Value| http.post(format!("{b}/v1/tasks")).json(&body).send();
    let mut kinds = Vec::new();
    let mut capture = |name: &str, v: Value| kinds.push(json!({"case": name, "envelope": v}));

    capture(
        "invalid_params_empty_prompt",
        post(task("", 1)).await.unwrap().json().await.unwrap(),
    );
    let mut unknown = task("x", 1);
    unknown["colour"] = json!("blue");
    capture(
        "invalid_params_unknown_field",
        post(unknown).await.unwrap().json().await.unwrap(),
    );
    let mut dl = task("x", 50);
    dl["deadline_ms"] = json!(1);
    capture(
        "deadline_unmet",
        post(dl).await.unwrap().json().await.unwrap(),
    );
    capture(
        "payload_too_large",
        post(task(&"x".repeat(2 << 20), 1))
            .await
            .unwrap()
            .json()
            .await
            .unwrap(),
    );
    let mut other = task("x", 1);
    other["engine"] = json!("vllm");
    capture(
        "pool_unavailable",
        post(other).await.unwrap().json().await.unwrap(),
    );
    let ghost = "00000000-0000-4000-8000-000000000000";
    capture(
        "not_found",
        get(&http, format!("{b}/v1/tasks/{ghost}")).await,
    );
    let mut dup = task("long", 6);
    dup["task_id"] = json!("11111111-1111-4111-8111-111111111111");
    post(dup.clone()).await.unwrap();
    capture("conflict", post(dup).await.unwrap().json().await.unwrap());
    post(task("queued", 6)).await.unwrap();
    capture(
        "admission_reject",
        post(task("one too many", 6))
            .await
            .unwrap()
            .json()
            .await
            .unwrap(),
    );
    let r = http
        .post(format!("{b}/v1/pools/mockpool/reload"))
        .json(&json!({"model_ref": "/nonexistent/m.gguf"}))
        .send()
        .await
        .unwrap();
    capture("conflict_reload_rolled_back", r.json().await.unwrap());
    http.post(format!("{b}/v1/pools/mockpool/drain"))
        .json(&json!({"deadline_ms": 0}))
        .send()
        .await
        .unwrap();
    capture(
        "pool_unready",
        post(task("x", 1)).await.unwrap().json().await.unwrap(),
    );
    insta::assert_json_snapshot!("error_envelopes", kinds, {
        "[].envelope.correlation_id" => "[correlation-id]",
    });
}
