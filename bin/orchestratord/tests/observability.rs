//! Observability over real processes: the orchestratord binary (mock pools, keyed
//! tenants) under a workload with admissions, rejections of every kind, cancels, a
//! failing pool and reloads, scraped by a real Prometheus (Debian's package).
//!
//! * `/metrics` holds to `ci/metrics.lint.json` in both directions (every listed
//!   metric present, nothing unlisted, label keys exact, series within budget, no
//!   unbounded values) and `promtool check metrics` finds nothing but the unit lint
//!   the spec's own names contradict;
//! * Prometheus scrapes it, loads `ci/alerts/*.yml`, and every PromQL of every panel
//!   of `ci/dashboards/*.json` parses and returns data;
//! * `promtool test rules` passes the alert unit tests;
//! * a task's lifecycle lines carry the spec §6 fields, and no line carries a prompt
//!   or a key.
//!
//! `ORCH_OBS_SECONDS` lengthens the workload (default 6 s); with `ORCH_DASHBOARD_PNG`
//! set, the dashboard test also renders the overview panels to that file through
//! `scripts/render_dashboard.py` (what `scripts/render-dashboard.sh` does).

mod common;
use common::prom::{self, promtool, repo};
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ADMIN: &str = "oqk_obs-admin";
const ALPHA: &str = "oqk_obs-alpha";
const BETA: &str = "oqk_obs-beta";
/// A prompt the logs must never show.
const SECRET_PROMPT: &str = "the-prompt-text-must-not-be-logged";

fn config() -> String {
    format!(
        r#"{}{}{}
[server]
keepalive_ms = 200

[tenants.alpha]
weight = 1

[tenants.beta]
weight = 3
max_queued = 3

[[pools]]
id = "p"
engine = "mock"
model = "mock-model"
replicas = 2
queue_capacity = 8
[pools.mock]
slots = 2
tokens_per_sec = 150.0
ttft_ms = 15
tokens = 24
prefill_ms_per_block = 1

[[pools]]
id = "f"
engine = "mock"
model = "mock-faulty"
migration_limit = 0
[pools.mock]
slots = 1
tokens_per_sec = 200.0
ttft_ms = 5
fail_after_tokens = 2

[[pools]]
id = "m"
engine = "mock"
model = "mock-moving"
replicas = 2
[pools.mock]
slots = 1
tokens_per_sec = 200.0
ttft_ms = 5
fail_after_tokens = 2
faults_only_on = ["m-r0"]
"#,
        key_entry(ADMIN, "ops", "admin"),
        key_entry(ALPHA, "alpha", "client"),
        key_entry(BETA, "beta", "client"),
    )
}

fn write_config(name: &str) -> PathBuf {
    write_config_text(name, &config())
}

fn write_config_text(name: &str, text: &str) -> PathBuf {
    temp_config(&format!("obs-{name}"), text)
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn post(&self, key: &str, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Submit as `key`; on 202 read the stream to its end in the background.
    async fn submit(
        &self,
        key: &str,
        body: &Value,
    ) -> (u16, Option<tokio::task::JoinHandle<Vec<SseFrame>>>) {
        let r = self.post(key, "/v1/tasks", body).await;
        let status = r.status().as_u16();
        if status != 202 {
            return (status, None);
        }
        let id = r.json::<Value>().await.unwrap()["task_id"]
            .as_str()
            .unwrap()
            .to_string();
        let (http, url, key) = (
            self.http.clone(),
            format!("{}/v1/tasks/{id}/stream", self.base),
            key.to_string(),
        );
        let h = tokio::spawn(async move {
            let text = http
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            parse_sse(&text)
        });
        (status, Some(h))
    }
}

fn work(prompt: &str, max_tokens: u32, priority: &str) -> Value {
    let mut t = task(prompt, max_tokens, priority);
    t["prompt"] = json!(format!("{SECRET_PROMPT} {prompt}"));
    t
}

/// What the workload saw, by HTTP status.
#[derive(Default, Debug)]
struct Seen {
    statuses: BTreeMap<u16, u32>,
}

/// Drive admissions from two tenants for `secs`, then a burst over capacity, every
/// kind of refusal, a cancel, a failing pool, and reloads (one switched, one refused).
/// Every admitted task's stream is read to its terminal frame.
type Streams = Vec<tokio::task::JoinHandle<Vec<SseFrame>>>;

/// Three submissions every 150 ms for `length`: alpha interactive, beta batch and
/// interactive, every other round with a deadline.
async fn steady(c: &Client, length: Duration, seen: &mut Seen, streams: &mut Streams) {
    let t0 = Instant::now();
    let mut i = 0u32;
    while t0.elapsed() < length {
        i += 1;
        for (k, prio) in [
            (ALPHA, "interactive"),
            (BETA, "batch"),
            (BETA, "interactive"),
        ] {
            let mut body = work(&format!("turn {i}"), 12, prio);
            if i.is_multiple_of(2) {
                body["deadline_ms"] = json!(30_000);
            }
            let (s, h) = c.submit(k, &body).await;
            *seen.statuses.entry(s).or_default() += 1;
            streams.extend(h);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

async fn workload(c: &Client, secs: u64) -> Seen {
    let mut seen = Seen::default();
    let mut streams = Vec::new();
    let count = |s: u16, seen: &mut Seen| *seen.statuses.entry(s).or_default() += 1;
    // steady admissions from both tenants for half the time, the events below, then
    // steady again (so a dashboard over the run shows the events mid-way)
    let half = Duration::from_millis(secs * 500);
    steady(c, half, &mut seen, &mut streams).await;
    // refusals before a pool is chosen: wrong content type, bad JSON, unknown model
    let r = c
        .http
        .post(format!("{}/v1/tasks", c.base))
        .bearer_auth(ALPHA)
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    count(r.status().as_u16(), &mut seen);
    let r = c
        .http
        .post(format!("{}/v1/tasks", c.base))
        .bearer_auth(ALPHA)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    count(r.status().as_u16(), &mut seen);
    let mut unknown = work("x", 4, "interactive");
    unknown["model_ref"] = json!("no-such-model");
    count(c.submit(ALPHA, &unknown).await.0, &mut seen);
    // a cancel of a long task
    let r = c
        .post(ALPHA, "/v1/tasks", &work("long", 400, "interactive"))
        .await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = c
        .post(ALPHA, &format!("/v1/tasks/{id}/cancel"), &json!({}))
        .await;
    count(r.status().as_u16(), &mut seen);
    // a pool whose engine fails mid-stream
    let mut faulty = work("fails", 8, "interactive");
    faulty["model_ref"] = json!("mock-faulty");
    let (s, h) = c.submit(ALPHA, &faulty).await;
    assert_eq!(s, 202);
    let frames = h.unwrap().await.unwrap();
    assert_eq!(frames.last().unwrap().event, "error", "{frames:?}");
    // a pool where one replica's engine fails mid-stream: of two tasks at once, the one
    // on that replica moves to the other and continues there
    let mut moving = work("moves", 8, "interactive");
    moving["model_ref"] = json!("mock-moving");
    let mut both = Vec::new();
    for _ in 0..2 {
        let (s, h) = c.submit(ALPHA, &moving).await;
        assert_eq!(s, 202);
        both.push(h.unwrap());
    }
    for h in both {
        let frames = h.await.unwrap();
        assert_eq!(frames.last().unwrap().event, "end", "{frames:?}");
    }
    // a prompt of several blocks, twice: the engine's cache report checks the prefix
    // index (prefix_index_observations_total)
    let long = work(
        &"a history worth keeping in the cache. ".repeat(8),
        4,
        "interactive",
    );
    for _ in 0..2 {
        let (s, h) = c.submit(ALPHA, &long).await;
        assert_eq!(s, 202);
        let frames = h.unwrap().await.unwrap();
        assert_eq!(frames.last().unwrap().event, "end", "{frames:?}");
    }
    // a drained pool refuses with 503 (pool_unready); a reload brings it back
    let r = c
        .post(ADMIN, "/v1/pools/f/drain", &json!({"deadline_ms": 1000}))
        .await;
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let (s, _) = c.submit(ALPHA, &faulty).await;
    count(s, &mut seen);
    assert_eq!(s, 503);
    let r = c
        .post(
            ADMIN,
            "/v1/pools/f/reload",
            &json!({"model_ref": "mock-faulty"}),
        )
        .await;
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    // a submission without a key
    let r = c
        .http
        .post(format!("{}/v1/tasks", c.base))
        .json(&work("no key", 4, "interactive"))
        .send()
        .await
        .unwrap();
    count(r.status().as_u16(), &mut seen);
    // a burst over the queue's capacity and beta's max_queued: 429s of both kinds
    let bodies: Vec<Value> = (0..24)
        .map(|j| work(&format!("burst {j}"), 24, "batch"))
        .collect();
    let burst: Vec<_> = bodies
        .iter()
        .enumerate()
        .map(|(j, b)| c.submit(if j % 2 == 0 { ALPHA } else { BETA }, b))
        .collect();
    for (s, h) in futures_util::future::join_all(burst).await {
        count(s, &mut seen);
        streams.extend(h);
    }
    // reloads: one switched, one rolled back (a model file that is not there), one
    // refused (a model the launcher does not know)
    let r = c
        .post(
            ADMIN,
            "/v1/pools/p/reload",
            &json!({"model_ref": "mock-model"}),
        )
        .await;
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let r = c
        .post(
            ADMIN,
            "/v1/pools/p/reload",
            &json!({"model_ref": "/nope/x.gguf"}),
        )
        .await;
    assert_eq!(r.status(), 409);
    let r = c
        .post(
            ADMIN,
            "/v1/pools/p/reload",
            &json!({"model_ref": "no-such-model"}),
        )
        .await;
    assert_eq!(r.status(), 409);
    steady(c, half, &mut seen, &mut streams).await;
    for h in streams {
        let frames = h.await.unwrap();
        let last = frames.last().expect("a terminal frame");
        assert!(last.event == "end" || last.event == "error", "{frames:?}");
    }
    seen
}

fn workload_secs() -> u64 {
    std::env::var("ORCH_OBS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6)
}

#[tokio::test]
async fn metrics_hold_to_the_lint_file_both_ways_and_pass_promtool() {
    let path = write_config("lint");
    let (_child, base, _log) = spawn_binary_logged(&path, &[]);
    let c = Client {
        http: reqwest::Client::new(),
        base: base.clone(),
    };
    let seen = workload(&c, 3).await;
    for s in [202, 400, 401, 409, 415, 429, 503] {
        if s != 409 {
            assert!(seen.statuses.contains_key(&s), "no {s} in {seen:?}");
        }
    }
    // let the gauge sweep run once more after the reload
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = c
        .http
        .get(format!("{base}/metrics"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    let lint = lint::standalone();
    let checked = lint::check(&text, &[&lint, &lint::gpu()], SECRET_PROMPT);
    lint::all_exposed(&checked, &lint);
    let values = checked.values;
    // the workload's events landed where they belong
    let reasons = &values[&("tasks_rejected_total".to_string(), "reason".to_string())];
    for r in [
        "invalid",
        "queue_full",
        "quota",
        "pool_unready",
        "unauthenticated",
    ] {
        assert!(reasons.contains(r), "no rejection reason {r}: {reasons:?}");
    }
    let codes = &values[&("tasks_failed_total".to_string(), "code".to_string())];
    assert!(codes.contains("WORKER_RESET"), "{codes:?}");
    for (pool, outcome, n) in [
        ("p", "switched", 1),
        ("p", "rolled_back", 1),
        ("p", "refused", 1),
        ("f", "switched", 1),
    ] {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with(&format!("reloads_total{{pool_id=\"{pool}\""))
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .unwrap();
        assert!(line.ends_with(&format!(" {n}")), "{line}");
    }
    assert!(text
        .lines()
        .any(|l| l.starts_with("tasks_canceled_total{") && l.contains("reason=\"client\"")));
    assert!(text
        .lines()
        .any(|l| l.starts_with("orchestrator_added_latency_ms_count") && !l.ends_with(" 0")));

    lint::promtool_clean(&text);
    let _ = std::fs::remove_file(path);
}

/// Every target expression of every panel of `file`, with its panel title.
fn panel_queries(file: &std::path::Path) -> Vec<(String, String)> {
    let d: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((
                    p["title"].as_str().unwrap_or("?").to_string(),
                    e.to_string(),
                ));
            }
        }
    }
    out
}

/// The dashboards' variables, as the query test and the renderer fill them.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace("$pool", ".*")
}

fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(ext))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn prometheus_scrapes_and_every_dashboard_query_returns_data() {
    let path = write_config("prom");
    let (_child, base, _log) = spawn_binary_logged(&path, &[]);
    let target = base.trim_start_matches("http://").to_string();
    let rules: Vec<PathBuf> = files("ci/alerts", ".yml")
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".test.yml"))
        .collect();
    assert!(!rules.is_empty(), "no alert rules in ci/alerts");
    let p = prom::start("dash", &target, ADMIN, &rules).await;
    let http = reqwest::Client::new();
    let c = Client {
        http: http.clone(),
        base,
    };
    let started = std::time::SystemTime::now();
    p.wait_scrapes(&http, 2).await;
    workload(&c, workload_secs()).await;
    // a few scrapes after the workload, so rates see its last events
    tokio::time::sleep(Duration::from_secs(3)).await;
    let up = p.query(&http, "up{job=\"orchestratord\"}").await.unwrap();
    assert_eq!(up[0]["value"][1], "1", "{up:?}");

    // the alert rules loaded into the live server and evaluate without error
    let rules_state: Value = http
        .get(format!("{}/api/v1/rules", p.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let groups = rules_state["data"]["groups"].as_array().unwrap();
    assert!(!groups.is_empty(), "{rules_state}");
    for g in groups {
        for r in g["rules"].as_array().unwrap() {
            assert_eq!(r["health"], "ok", "rule {} : {}", r["name"], r["lastError"]);
        }
    }

    let dashboards = files("ci/dashboards", ".json");
    assert!(dashboards.len() >= 3, "{dashboards:?}");
    let mut failures = Vec::new();
    let mut n = 0;
    for d in &dashboards {
        for (title, expr) in panel_queries(d) {
            n += 1;
            // data: at least one series with a number (a quantile over no events is NaN)
            let finite = |s: &Value| {
                s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(f64::is_finite)
            };
            match p.query(&http, &substitute(&expr)).await {
                Ok(r) if r.iter().any(finite) => {}
                Ok(r) => failures.push(format!(
                    "{}: {title}: no data ({} series, none finite): {expr}",
                    d.display(),
                    r.len()
                )),
                Err(e) => failures.push(format!("{}: {title}: {e}: {expr}", d.display())),
            }
        }
    }
    println!(
        "[observability] {n} panel queries over {} dashboards",
        dashboards.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    if let Ok(png) = std::env::var("ORCH_DASHBOARD_PNG") {
        let end = std::time::SystemTime::now();
        let unix = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                .to_string()
        };
        let python = std::env::var("ORCH_PYTHON").unwrap_or_else(|_| "python3".into());
        let status = std::process::Command::new(python)
            .current_dir(repo())
            .args([
                "scripts/render_dashboard.py",
                "--prometheus",
                &p.base,
                "--dashboard",
                "ci/dashboards/overview.json",
                "--start",
                &unix(started),
                "--end",
                &unix(end),
                "--step",
                "1",
                "--out",
                &png,
            ])
            .status()
            .unwrap();
        assert!(status.success(), "render_dashboard.py failed");
    }
    let _ = std::fs::remove_file(path);
}

#[test]
fn alert_rules_check_and_pass_their_promtool_unit_tests() {
    let rules = files("ci/alerts", ".yml");
    let (tests, defs): (Vec<_>, Vec<_>) = rules
        .iter()
        .partition(|p| p.to_string_lossy().ends_with(".test.yml"));
    assert!(!defs.is_empty() && !tests.is_empty(), "{rules:?}");
    for d in &defs {
        let (code, out) = promtool(&["check", "rules", d.to_str().unwrap()], None);
        assert_eq!(code, 0, "promtool check rules {}: {out}", d.display());
    }
    for t in &tests {
        let (code, out) = promtool(&["test", "rules", t.to_str().unwrap()], None);
        assert_eq!(code, 0, "promtool test rules {}: {out}", t.display());
        println!(
            "[observability] promtool test rules {}: {}",
            t.display(),
            out.trim()
        );
    }
}

#[tokio::test]
async fn lifecycle_lines_carry_the_spec_fields_and_never_a_prompt_or_key() {
    let path = write_config("logs");
    let (_child, base, log) = spawn_binary_logged(&path, &[("RUST_LOG", "info")]);
    let c = Client {
        http: reqwest::Client::new(),
        base,
    };
    let sid = uuid::Uuid::new_v4().to_string();
    let mut body = work("lifecycle", 6, "interactive");
    body["session_id"] = json!(sid);
    let r = c
        .http
        .post(format!("{}/v1/tasks", c.base))
        .bearer_auth(ALPHA)
        .header("x-correlation-id", "obs-corr-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let text = c
        .http
        .get(format!("{}/v1/tasks/{id}/stream", c.base))
        .bearer_auth(ALPHA)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(parse_sse(&text).last().unwrap().event, "end");
    // a task that fails, one the client cancels, and a request without a key
    let mut faulty = work("fails", 8, "interactive");
    faulty["model_ref"] = json!("mock-faulty");
    let r = c.post(ALPHA, "/v1/tasks", &faulty).await;
    let failed_id = r.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let failed_frames = parse_sse(
        &c.http
            .get(format!("{}/v1/tasks/{failed_id}/stream", c.base))
            .bearer_auth(ALPHA)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(failed_frames.last().unwrap().event, "error");
    let r = c
        .post(ALPHA, "/v1/tasks", &work("to cancel", 400, "batch"))
        .await;
    let cancel_id = r.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = c
        .post(ALPHA, &format!("/v1/tasks/{cancel_id}/cancel"), &json!({}))
        .await;
    assert!(r.status().is_success());
    let r = c
        .http
        .get(format!("{}/v1/capabilities", c.base))
        .header("x-correlation-id", "obs-corr-401")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = Arc::clone(&log);
    let all = lines.lock().unwrap().clone();
    let json_lines: Vec<Value> = all
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let of_task: Vec<&Value> = json_lines
        .iter()
        .filter(|v| v["task_id"] == id.as_str())
        .collect();
    let find = |msg: &str| -> &Value {
        of_task
            .iter()
            .find(|v| v["message"] == msg)
            .unwrap_or_else(|| panic!("no '{msg}' line for {id}: {of_task:#?}"))
    };
    let common = [
        "task_id",
        "tenant",
        "pool_id",
        "priority",
        "correlation_id",
        "engine",
    ];
    let admitted = find("task admitted");
    let started = find("task started");
    let ended = find("task ended");
    for (line, extra) in [
        (
            admitted,
            &["queue_position", "predicted_start_ms", "session_id"][..],
        ),
        (started, &["replica_id", "engine_version", "ttft_ms"][..]),
        (
            ended,
            &[
                "replica_id",
                "engine_version",
                "session_id",
                "tokens_in",
                "tokens_out",
                "decode_time_ms",
                "ttft_ms",
            ][..],
        ),
    ] {
        for f in common.iter().chain(extra) {
            assert!(!line[f].is_null(), "{f} missing from {line}");
        }
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["tenant"], "alpha");
        assert_eq!(line["correlation_id"], "obs-corr-1");
        assert_eq!(line["engine"], "mock");
    }
    assert_eq!(ended["tokens_out"], 6);
    // the session id is the plain id, as sent
    assert_eq!(admitted["session_id"], sid.as_str());
    assert_eq!(ended["session_id"], sid.as_str());
    // a failed task's line names its code; a canceled one says canceled
    let by_msg = |task: &str, msg: &str| -> Value {
        json_lines
            .iter()
            .find(|v| v["task_id"] == task && v["message"] == msg)
            .cloned()
            .unwrap_or_else(|| panic!("no '{msg}' line for {task}: {all}"))
    };
    let failed = by_msg(&failed_id, "task failed");
    assert_eq!(failed["error_code"], "WORKER_RESET", "{failed}");
    for f in [
        "tenant",
        "engine",
        "engine_version",
        "pool_id",
        "replica_id",
        "tokens_out",
    ] {
        assert!(!failed[f].is_null(), "{f} missing from {failed}");
    }
    let canceled = by_msg(&cancel_id, "task ended");
    assert_eq!(canceled["finish_reason"], "canceled", "{canceled}");
    assert_eq!(canceled["tenant"], "alpha");
    // one access line per request, with its route template and tenant; a refusal
    // before any key was known has one too
    let access = |cid: &str| -> Value {
        json_lines
            .iter()
            .find(|v| v["correlation_id"] == cid && v["route"].is_string())
            .cloned()
            .unwrap_or_else(|| panic!("no access line for {cid}: {all}"))
    };
    let submit = access("obs-corr-1");
    assert_eq!(submit["route"], "/v1/tasks");
    assert_eq!(submit["method"], "POST");
    assert_eq!(submit["status"], 202);
    assert_eq!(submit["tenant"], "alpha");
    assert!(submit["latency_ms"].as_f64().is_some());
    let refused = access("obs-corr-401");
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["tenant"], "-");
    for secret in [SECRET_PROMPT, ALPHA, &ALPHA["oqk_".len()..]] {
        assert!(!all.contains(secret), "the log shows {secret:?}");
    }
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn a_canceled_tasks_prompt_counts_in_tokens_in_once_it_was_processed() {
    // a slow pool: the cancel lands long before the task could complete
    let slow = config()
        .replace("tokens_per_sec = 150.0", "tokens_per_sec = 10.0")
        .replace("tokens = 24", "tokens = 400");
    assert_ne!(slow, config());
    let path = write_config_text("tokens-in", &slow);
    let (_child, base, _log) = spawn_binary_logged(&path, &[]);
    let http = reqwest::Client::new();
    let c = Client {
        http: http.clone(),
        base: base.clone(),
    };
    let metrics = || async {
        http.get(format!("{base}/metrics"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    // five words: the mock counts six prompt tokens
    let mut body = task("one two three four five", 400, "interactive");
    body["prompt"] = json!("one two three four five");
    let r = c.post(ALPHA, "/v1/tasks", &body).await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut resp = http
        .get(format!("{base}/v1/tasks/{id}/stream"))
        .bearer_auth(ALPHA)
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    while !seen.contains("event: token") {
        let chunk = resp.chunk().await.unwrap().expect("stream open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let r = c
        .post(ALPHA, &format!("/v1/tasks/{id}/cancel"), &json!({}))
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    while let Some(chunk) = resp.chunk().await.unwrap() {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("\"canceled\""), "{seen}");
    let text = metrics().await;
    assert_eq!(lint::sum(&text, "tokens_in_total", &[]), 6.0, "{text}");
    assert_eq!(lint::sum(&text, "tasks_canceled_total", &[]), 1.0);
    // a completed task adds its prompt once, not twice
    let (s, h) = c.submit(ALPHA, &body_with_max(&body, 3)).await;
    assert_eq!(s, 202);
    assert_eq!(h.unwrap().await.unwrap().last().unwrap().event, "end");
    assert_eq!(lint::sum(&metrics().await, "tokens_in_total", &[]), 12.0);
    let _ = std::fs::remove_file(path);
}

fn body_with_max(body: &Value, max_tokens: u32) -> Value {
    let mut b = body.clone();
    b["max_tokens"] = json!(max_tokens);
    b
}

/// Series of `name` whose labels contain `needle`.
fn series_with(text: &str, name: &str, needle: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(needle))
        .count()
}

#[tokio::test]
async fn series_of_a_replaced_engine_version_leave_the_exposition() {
    let path = write_config("stale");
    let (_child, base, _log) = spawn_binary_logged(&path, &[]);
    let http = reqwest::Client::new();
    let metrics = || async {
        http.get(format!("{base}/metrics"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let old = "engine_version=\"mock-0.1.0\",pool_id=\"p\"";
    let new = "engine_version=\"mock-9.9.9\",pool_id=\"p\"";
    // the gauge sweep publishes within a second of start
    let t0 = Instant::now();
    let mut text = metrics().await;
    while series_with(&text, "slots_capacity", old) < 2 && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        text = metrics().await;
    }
    assert_eq!(series_with(&text, "queue_depth", old), 2, "{text}");
    assert_eq!(series_with(&text, "slots_capacity", old), 2, "{text}");
    // the same pool on a new engine version (engine settings go through a reload)
    std::fs::write(
        &path,
        config().replacen(
            "prefill_ms_per_block = 1",
            "prefill_ms_per_block = 1\nengine_version = \"mock-9.9.9\"",
            1,
        ),
    )
    .unwrap();
    let r = http
        .post(format!("{base}/v1/admin/reload-config"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    let t0 = Instant::now();
    loop {
        let text = metrics().await;
        let (stale, fresh) = (
            series_with(&text, "queue_depth", old) + series_with(&text, "slots_capacity", old),
            series_with(&text, "queue_depth", new) + series_with(&text, "slots_capacity", new),
        );
        if stale == 0 && fresh == 4 {
            println!(
                "[observability] old version's series gone after {:?}",
                t0.elapsed()
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "stale {stale}, fresh {fresh} after 40 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = std::fs::remove_file(path);
}
