//! Control plane (spec §4) on mock pools and readiness (the metrics contract is held by
//! tests/observability.rs).

mod common;
use common::*;
use serde_json::{json, Value};

const SLOW: &str = "slots = 2\ntokens_per_sec = 20.0\nttft_ms = 5\ntokens = 40";

async fn get(s: &TestServer, path: &str) -> (u16, Value) {
    let r = s.http.get(s.url(path)).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn pools_health_and_replicasets_describe_the_pool() {
    let s = start_self_tested(&mock_config("replicas = 2", SLOW)).await;
    let (st, v) = get(&s, "/v1/pools").await;
    assert_eq!(st, 200);
    let p = &v["pools"][0];
    assert_eq!(p["id"], "mockpool");
    assert_eq!(p["engine"], "mock");
    assert_eq!(p["ready"], true);
    assert_eq!(p["slots_total"], 4);
    assert_eq!(p["replicas"].as_array().unwrap().len(), 2);
    assert!(p["model_digest"].as_str().unwrap().starts_with("sha256:"));
    let (st, h) = get(&s, "/v1/pools/mockpool/health").await;
    assert_eq!(st, 200);
    assert_eq!(h["live"], true);
    assert_eq!(h["ready"], true);
    assert_eq!(h["replicas_ready"], 2);
    let (st, rs) = get(&s, "/v1/replicasets").await;
    assert_eq!(st, 200);
    assert_eq!(rs["replica_sets"][0]["pool_id"], "mockpool");
    assert_eq!(rs["replica_sets"][0]["replicas_ready"], 2);
    let r = s
        .http
        .get(s.url("/v1/pools/nope/health"))
        .send()
        .await
        .unwrap();
    envelope(r, 404, "NOT_FOUND").await;
    assert_eq!(
        s.http.get(s.url("/readyz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        s.http.get(s.url("/livez")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn drain_makes_the_pool_unready_and_ends_work_by_the_deadline() {
    let s = start(&mock_config("", SLOW)).await;
    let (a, _) = s.submit(&task("long", 40, "batch")).await;
    s.wait_state(&a, "running").await;
    let r = s
        .http
        .post(s.url("/v1/pools/mockpool/drain"))
        .json(&json!({"deadline_ms": 200}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let f = s.stream(&a, None).await;
    assert_eq!(f.last().unwrap().data["code"], "POOL_UNREADY");
    let r = s.http.get(s.url("/readyz")).send().await.unwrap();
    envelope(r, 503, "POOL_UNREADY").await;
    envelope(
        s.post_raw(&task("x", 1, "batch")).await,
        503,
        "POOL_UNREADY",
    )
    .await;
    let r = s
        .http
        .post(s.url("/v1/pools/mockpool/drain"))
        .json(&json!({"deadline": 1}))
        .send()
        .await
        .unwrap();
    envelope(r, 400, "INVALID_PARAMS").await;
    // a reload brings a drained pool back
    let r = s
        .http
        .post(s.url("/v1/pools/mockpool/reload"))
        .json(&json!({"model_ref": "mock-model"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        s.http.get(s.url("/readyz")).send().await.unwrap().status(),
        200
    );
    s.assert_all_terminated().await;
}

/// Reload the mock pool onto the same model with sampler profile `v9` (202).
async fn reload_to_v9(s: &TestServer) {
    let r = s
        .http
        .post(s.url("/v1/pools/mockpool/reload"))
        .json(&json!({"model_ref": "mock-model", "sampler_profile_version": "v9"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn reload_switches_sampler_profile_and_refuses_unknown_models() {
    let s = start(&mock_config("", SLOW)).await;
    let (during, _) = s.submit(&task("during reload", 10, "interactive")).await;
    reload_to_v9(&s).await;
    assert_eq!(s.stream(&during, None).await.last().unwrap().event, "end");
    let (id, _) = s.submit(&task("after", 2, "interactive")).await;
    assert_eq!(
        s.stream(&id, None).await[0].data["sampler_profile_version"],
        "v9"
    );
    let r = s
        .http
        .post(s.url("/v1/pools/mockpool/reload"))
        .json(&json!({"model_ref": "/nonexistent/x.gguf"}))
        .send()
        .await
        .unwrap();
    envelope(r, 409, "CONFLICT").await;
    let r = s
        .http
        .post(s.url("/v1/pools/nope/reload"))
        .json(&json!({"model_ref": "m"}))
        .send()
        .await
        .unwrap();
    envelope(r, 404, "NOT_FOUND").await;
    s.assert_all_terminated().await;
}

/// Spec §1: `determinism: strict` pins the replica set the task was admitted to. A
/// strict task still waiting when a reload replaces the set (here its sampler profile)
/// ends with a retriable `POOL_UNREADY` naming why, never started on the new set; a
/// best-effort task waiting beside it runs on the new one.
#[tokio::test]
async fn a_strict_task_never_runs_on_a_replica_set_a_reload_put_in_its_place() {
    let s = start(&mock_config(
        "",
        "slots = 1\ntokens_per_sec = 20.0\nttft_ms = 5\ntokens = 40",
    ))
    .await;
    // 2 s of work ahead: the reload switches the set long before a slot frees
    let (running, _) = s.submit(&task("running", 40, "interactive")).await;
    let mut strict = task("strict", 4, "interactive");
    strict["determinism"] = json!("strict");
    let (strict, _) = s.submit(&strict).await;
    let (loose, _) = s.submit(&task("best effort", 4, "interactive")).await;
    assert_eq!(s.status(&strict).await["state"], "queued");
    reload_to_v9(&s).await;
    assert_eq!(s.stream(&running, None).await.last().unwrap().event, "end");
    let f = s.stream(&strict, None).await;
    assert!(f.iter().all(|x| x.event != "started"), "{f:?}");
    let end = f.last().unwrap();
    assert_eq!(end.event, "error", "{f:?}");
    assert_eq!(end.data["code"], "POOL_UNREADY", "{end:?}");
    assert_eq!(end.data["retriable"], true, "{end:?}");
    assert!(
        end.data["message"].as_str().unwrap().contains("strict"),
        "{end:?}"
    );
    let f = s.stream(&loose, None).await;
    assert_eq!(f[0].data["sampler_profile_version"], "v9", "{f:?}");
    assert_eq!(f.last().unwrap().event, "end");
    s.assert_all_terminated().await;
}
