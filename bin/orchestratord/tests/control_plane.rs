//! Control plane (spec §4) on mock pools, readiness, and the metrics contract.

mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

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

#[tokio::test]
async fn reload_switches_sampler_profile_and_refuses_unknown_models() {
    let s = start(&mock_config("", SLOW)).await;
    let (during, _) = s.submit(&task("during reload", 10, "interactive")).await;
    let r = s
        .http
        .post(s.url("/v1/pools/mockpool/reload"))
        .json(&json!({"model_ref": "mock-model", "sampler_profile_version": "v9"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
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

#[derive(serde::Deserialize)]
struct Lint {
    metrics: Vec<LintMetric>,
}

#[derive(serde::Deserialize)]
struct LintMetric {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    labels: Vec<String>,
    max_series: usize,
}

#[tokio::test]
async fn metrics_follow_the_lint_file() {
    let s = start(&mock_config("queue_capacity = 1", SLOW)).await;
    let (a, _) = s.submit(&task("a", 3, "interactive")).await;
    let (b, _) = s.submit(&task("b", 3, "batch")).await;
    let (c, _) = s.submit(&task("c", 3, "batch")).await;
    let r = s.post_raw(&task("d", 3, "batch")).await;
    assert_eq!(r.status(), 429);
    s.cancel(&b).await;
    s.cancel(&c).await;
    s.stream(&a, None).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let text = s.metrics().await;
    let lint: Lint = serde_json::from_str(include_str!("../../../ci/metrics.lint.json")).unwrap();
    let by_name: BTreeMap<&str, &LintMetric> =
        lint.metrics.iter().map(|m| (m.name.as_str(), m)).collect();
    let mut series: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let uuid_like = |v: &str| uuid::Uuid::parse_str(v).is_ok();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (head, _) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match head.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (head, ""),
        };
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| {
                name.strip_suffix(suf)
                    .filter(|b| by_name.get(b).is_some_and(|m| m.kind == "histogram"))
            })
            .unwrap_or(name);
        let m = by_name
            .get(base)
            .unwrap_or_else(|| panic!("metric {base} is not in ci/metrics.lint.json"));
        let mut keys = BTreeSet::new();
        for kv in labels.split("\",").filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once("=\"").unwrap();
            assert!(
                !uuid_like(v.trim_end_matches('"')),
                "{line}: unbounded label value"
            );
            if k != "le" {
                keys.insert(k.to_string());
            }
        }
        let want: BTreeSet<String> = m.labels.iter().cloned().collect();
        assert_eq!(keys, want, "{line}: label keys differ from the lint file");
        series
            .entry(base.to_string())
            .or_default()
            .insert(labels.to_string());
    }
    for (name, set) in &series {
        assert!(
            set.len() <= by_name[name.as_str()].max_series,
            "{name} over its series budget"
        );
    }
    for must in [
        "tasks_enqueued_total",
        "tasks_started_total",
        "tasks_canceled_total",
        "tasks_rejected_total",
        "tokens_out_total",
        "queue_depth",
        "latency_first_token_ms",
        "admission_backpressure_events_total",
    ] {
        assert!(series.contains_key(must), "{must} missing from /metrics");
    }
}
