//! Tenancy over real HTTP: API keys and roles, tenant isolation, quotas (each 429
//! names its quota), session budgets under concurrent turns, weighted fair sharing
//! under saturation (examples/tenants.toml, weights 1:2:5), and deadlines kept after
//! admission.

mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BRONZE: &str = "oqk_demo-bronze-NOT-SECRET";
const SILVER: &str = "oqk_demo-silver-NOT-SECRET";
const GOLD: &str = "oqk_demo-gold-NOT-SECRET";
const ADMIN: &str = "oqk_demo-admin-NOT-SECRET";

fn example() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/tenants.toml"
    ))
    .expect("examples/tenants.toml")
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

async fn submit_as(s: &TestServer, key: &str, body: &Value) -> reqwest::Response {
    s.http
        .post(s.url("/v1/tasks"))
        .header("authorization", bearer(key))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn get_as(s: &TestServer, key: Option<&str>, path: &str) -> reqwest::Response {
    let mut rb = s.http.get(s.url(path));
    if let Some(k) = key {
        rb = rb.header("authorization", bearer(k));
    }
    rb.send().await.unwrap()
}

/// Submit as `key` (expect 202) and read the stream to its end.
async fn run_as(s: &TestServer, key: &str, body: &Value) -> (String, Vec<SseFrame>) {
    let r = submit_as(s, key, body).await;
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let id = r.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    (id.clone(), stream_as(s, key, &id).await)
}

async fn stream_as(s: &TestServer, key: &str, id: &str) -> Vec<SseFrame> {
    let r = get_as(s, Some(key), &format!("/v1/tasks/{id}/stream")).await;
    assert_eq!(r.status(), 200);
    let text = tokio::time::timeout(Duration::from_secs(30), r.text())
        .await
        .expect("stream ends")
        .unwrap();
    let frames = parse_sse(&text);
    assert_terminated(&frames, id);
    frames
}

#[tokio::test]
async fn keys_decide_who_may_do_what_and_tenants_see_only_their_tasks() {
    let s = start(&example()).await;
    // no key, a wrong key and a key one byte off: 401 with a Bearer challenge
    let r = s.post_raw(&task("hi", 4, "interactive")).await;
    assert!(r.headers().get("www-authenticate").is_some());
    envelope(r, 401, "UNAUTHENTICATED").await;
    let mut off = GOLD.to_string();
    off.pop();
    off.push('X');
    for k in ["oqk_wrong", off.as_str(), &GOLD[..GOLD.len() - 1]] {
        envelope(
            submit_as(&s, k, &task("hi", 4, "interactive")).await,
            401,
            "UNAUTHENTICATED",
        )
        .await;
    }
    // a client key on the control plane: 403; the admin key: 200
    envelope(get_as(&s, Some(GOLD), "/v1/pools").await, 403, "FORBIDDEN").await;
    let r = s
        .http
        .post(s.url("/v1/pools/shared/drain"))
        .header("x-api-key", SILVER)
        .json(&json!({"deadline_ms": 10}))
        .send()
        .await
        .unwrap();
    envelope(r, 403, "FORBIDDEN").await;
    assert_eq!(get_as(&s, Some(ADMIN), "/v1/pools").await.status(), 200);
    // probes and (by this config) /metrics stay open
    for p in ["/livez", "/readyz", "/metrics", "/openapi/data.yaml"] {
        assert_eq!(get_as(&s, None, p).await.status(), 200, "{p}");
    }
    // X-API-Key works like Bearer; the task belongs to the key's tenant
    let r = s
        .http
        .post(s.url("/v1/tasks"))
        .header("x-api-key", GOLD)
        .json(&task("mine", 4, "interactive"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    stream_as(&s, GOLD, &id).await;
    let st: Value = get_as(&s, Some(GOLD), &format!("/v1/tasks/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(st["tenant"], "gold");
    // another tenant cannot see, stream or cancel it (404, like an unknown id)
    for p in [format!("/v1/tasks/{id}"), format!("/v1/tasks/{id}/stream")] {
        envelope(get_as(&s, Some(BRONZE), &p).await, 404, "NOT_FOUND").await;
    }
    let r = s
        .http
        .post(s.url(&format!("/v1/tasks/{id}/cancel")))
        .header("authorization", bearer(BRONZE))
        .send()
        .await
        .unwrap();
    envelope(r, 404, "NOT_FOUND").await;
    // an admin sees every tenant's tasks
    assert_eq!(
        get_as(&s, Some(ADMIN), &format!("/v1/tasks/{id}"))
            .await
            .status(),
        200
    );
    // capabilities show the caller's own weight and quotas
    let caps: Value = get_as(&s, Some(GOLD), "/v1/capabilities")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(caps["tenant"]["tenant"], "gold");
    assert_eq!(caps["tenant"]["role"], "client");
    assert_eq!(caps["tenant"]["weight"], 5);
    assert_eq!(caps["tenant"]["quotas"]["max_concurrent"], 24);
    assert_eq!(caps["tenant"]["quotas"]["tokens_per_minute"], 120000);
    // the Rust client carries a key the same way
    let c = orch_client::Client::new(&s.base).with_api_key(SILVER);
    let caps = c.capabilities().await.unwrap();
    assert_eq!(caps.tenant.unwrap().tenant, "silver");
    match orch_client::Client::new(&s.base).capabilities().await {
        Err(orch_client::ClientError::Api { status, envelope }) => {
            assert_eq!(status, 401);
            assert_eq!(envelope.code.as_str(), "UNAUTHENTICATED");
        }
        other => panic!("expected a 401, got {other:?}"),
    }
}

#[test]
fn keys_never_appear_in_logs() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let dir = std::env::temp_dir().join(format!("orch-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("tenants.toml");
    std::fs::write(&cfg, example()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_orchestratord"))
        .env("ORCH_STATE_DIR", common::fresh_state_dir())
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
            "--skip-self-test",
        ])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut child = Reap(child);
    let outs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    // the whole startup line, up to its newline (a read may stop inside it)
    let has_line = |s: &str| {
        s.split("listening on http://")
            .nth(1)
            .is_some_and(|rest| rest.contains('\n'))
    };
    while !has_line(&seen) && t0.elapsed() < Duration::from_secs(20) {
        let n = err.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let addr = seen
        .split("listening on http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("address in the startup line")
        .to_string();
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut one_off = SILVER.to_string();
    one_off.pop();
    one_off.push('Z');
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let base = format!("http://{addr}");
        let r = http
            .post(format!("{base}/v1/tasks"))
            .header("authorization", bearer(GOLD))
            .header("x-correlation-id", "log-test")
            .json(&task("PROMPT-TEXT-NEVER-LOGGED-7781", 4, "interactive"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{:?}", r.text().await);
        let id = r.json::<Value>().await.unwrap()["task_id"]
            .as_str()
            .unwrap()
            .to_string();
        let r = http
            .get(format!("{base}/v1/tasks/{id}/stream"))
            .header("authorization", bearer(GOLD))
            .send()
            .await
            .unwrap();
        assert!(r.text().await.unwrap().contains("event: end"));
        for k in [one_off.as_str(), "oqk_totally-wrong"] {
            let r = http
                .get(format!("{base}/v1/capabilities"))
                .header("x-api-key", k)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401);
        }
        let r = http
            .get(format!("{base}/v1/pools"))
            .header("authorization", bearer(BRONZE))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    });
    let st = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let _ = child.0.wait();
    let logs = format!("{seen}{}{}", errs.join().unwrap(), outs.join().unwrap());
    assert!(
        logs.contains("\"task_id\""),
        "debug logs were captured: {logs}"
    );
    assert!(logs.contains("forbidden"), "the 403 was logged: {logs}");
    assert!(
        logs.contains("key:"),
        "logs name keys by fingerprint: {logs}"
    );
    for k in [
        GOLD,
        BRONZE,
        SILVER,
        one_off.as_str(),
        "oqk_totally-wrong",
        ADMIN,
    ] {
        assert!(!logs.contains(k), "key {k} appears in the logs");
        assert!(
            !logs.contains(&k[4..]),
            "key material of {k} appears in the logs"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn quotas_refuse_with_their_name_and_give_back_what_was_not_used() {
    // /metrics stays open here (the test reads the refusal counters without a key)
    let cfg = format!(
        "[auth]\nmetrics = \"open\"\n{}{}{}\n[server]\nkeepalive_ms = 200\n\n[tenants.conc]\nmax_concurrent = 2\n\n[tenants.waiting]\nmax_queued = 1\n\n[tenants.tokens]\ntokens_per_minute = 100\nmax_tokens_per_task = 80\n\n[[pools]]\nid = \"p\"\nengine = \"mock\"\nmodel = \"mock-model\"\n[pools.mock]\nslots = 1\ntokens_per_sec = 40.0\nttft_ms = 5\ntokens = 8\n",
        key_entry("k-conc", "conc", "client"),
        key_entry("k-wait", "waiting", "client"),
        key_entry("k-tok", "tokens", "client"),
    );
    let s = start(&cfg).await;
    // concurrency: two in flight, the third is refused by name, with Retry-After
    let a = submit_as(&s, "k-conc", &task("a", 8, "batch")).await;
    assert_eq!(a.status(), 202);
    let a_id = a.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        submit_as(&s, "k-conc", &task("b", 8, "batch"))
            .await
            .status(),
        202
    );
    let r = submit_as(&s, "k-conc", &task("c", 8, "batch")).await;
    assert!(r.headers().get("retry-after").is_some());
    let e = envelope(r, 429, "QUOTA_EXCEEDED").await;
    assert_eq!(e["policy_label"], "quota-concurrency");
    assert_eq!(e["retriable"], true);
    // a task that ends gives its place back
    let r = s
        .http
        .post(s.url(&format!("/v1/tasks/{a_id}/cancel")))
        .header("authorization", bearer("k-conc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    stream_as(&s, "k-conc", &a_id).await;
    assert_eq!(
        submit_as(&s, "k-conc", &task("d", 8, "batch"))
            .await
            .status(),
        202
    );

    // queued: the pool's one slot is busy, one may wait, the next is refused
    assert_eq!(
        submit_as(&s, "k-wait", &task("w1", 8, "batch"))
            .await
            .status(),
        202
    );
    let e = envelope(
        submit_as(&s, "k-wait", &task("w2", 8, "batch")).await,
        429,
        "QUOTA_EXCEEDED",
    )
    .await;
    assert_eq!(e["policy_label"], "quota-queued");

    // tokens per minute: 60 reserved of 100; another 60 is refused until the first
    // ends having generated only 8, which gives 52 back
    let t1 = submit_as(&s, "k-tok", &task("t1", 60, "interactive")).await;
    assert_eq!(t1.status(), 202);
    let t1 = t1.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = submit_as(&s, "k-tok", &task("t2", 60, "interactive")).await;
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 10, "20 tokens at 100/min take 12 s: {retry}");
    let e = envelope(r, 429, "QUOTA_EXCEEDED").await;
    assert_eq!(e["policy_label"], "quota-tokens-per-minute");
    let frames = stream_as(&s, "k-tok", &t1).await;
    assert_eq!(frames.last().unwrap().data["tokens_out"], 8);
    let (_, frames) = run_as(&s, "k-tok", &task("t2", 60, "interactive")).await;
    assert_eq!(
        frames.last().unwrap().event,
        "end",
        "refunded tokens admit it"
    );
    // a task no wait could admit is a 400 naming the field
    let e = envelope(
        submit_as(&s, "k-tok", &task("big", 81, "interactive")).await,
        400,
        "INVALID_PARAMS",
    )
    .await;
    assert!(e["message"].as_str().unwrap().contains("max_tokens"));
    // refusals are counted by reason and by the quota that refused
    let m = s.metrics().await;
    assert!(m.contains("reason=\"quota\""), "{m}");
    assert!(m.contains("policy=\"quota-tokens-per-minute\""), "{m}");
}

#[tokio::test]
async fn concurrent_turns_cannot_overrun_a_session_budget() {
    let cfg = format!(
        "{}{}\n[server]\nkeepalive_ms = 200\nsession_token_budget = 100\n\n[[pools]]\nid = \"p\"\nengine = \"mock\"\nmodel = \"mock-model\"\n[pools.mock]\nslots = 4\ntokens_per_sec = 200.0\nttft_ms = 5\ntokens = 8\n",
        key_entry("k-s", "sess", "client"),
        key_entry("k-other", "other", "client"),
    );
    let s = Arc::new(start(&cfg).await);
    let sid = uuid::Uuid::new_v4().to_string();
    let turns = (0..10).map(|i| {
        let s = s.clone();
        let mut t = task(&format!("turn {i}"), 30, "interactive");
        t["session_id"] = json!(sid);
        tokio::spawn(async move {
            let r = submit_as(&s, "k-s", &t).await;
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        })
    });
    let mut admitted = Vec::new();
    let mut refused = 0;
    for h in turns {
        let (status, body) = h.await.unwrap();
        match status {
            202 => admitted.push(body["task_id"].as_str().unwrap().to_string()),
            429 => {
                assert_eq!(body["code"], "QUOTA_EXCEEDED");
                assert_eq!(body["policy_label"], "quota-session-budget");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    // 30 tokens reserved per turn: three fit in 100, however the turns interleave
    assert_eq!(admitted.len(), 3, "admitted {admitted:?}");
    assert_eq!(refused, 7);
    for id in &admitted {
        stream_as(&s, "k-s", id).await;
    }
    let info: Value = get_as(&s, Some("k-s"), &format!("/v1/sessions/{sid}"))
        .await
        .json()
        .await
        .unwrap();
    let used = info["tokens_used"].as_u64().unwrap();
    assert!(used <= 100, "{info}");
    assert_eq!(
        info["tokens_budget_remaining"].as_u64().unwrap(),
        100 - used
    );
    // another tenant's session answers exactly like an unknown id: not readable, and
    // the same id is a session of the other tenant's own, with its own budget, that
    // leaves this one untouched (no 403 to tell that the id is in use elsewhere)
    envelope(
        get_as(&s, Some("k-other"), &format!("/v1/sessions/{sid}")).await,
        404,
        "NOT_FOUND",
    )
    .await;
    let mut t = task("not yours", 4, "interactive");
    t["session_id"] = json!(sid);
    run_as(&s, "k-other", &t).await;
    let theirs: Value = get_as(&s, Some("k-other"), &format!("/v1/sessions/{sid}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["turns"], 1, "{theirs}");
    assert!(theirs["tokens_budget_remaining"].as_u64().unwrap() >= 100 - 4 - 8);
    let mine: Value = get_as(&s, Some("k-s"), &format!("/v1/sessions/{sid}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mine["tokens_used"], info["tokens_used"], "{mine}");
    assert_eq!(mine["turns"], info["turns"], "{mine}");
}

#[tokio::test]
async fn a_queued_task_whose_deadline_cannot_be_met_ends_deadline_unmet() {
    let s = start(&mock_config(
        "queue_capacity = 8\nmetrics_frame_interval_ms = 100",
        "slots = 1\ntokens_per_sec = 10.0\nttft_ms = 5\ntokens = 30",
    ))
    .await;
    let (blocker, _) = s.submit(&task("hold the slot", 30, "batch")).await;
    s.wait_state(&blocker, "running").await;
    // feasible at admission (start in ~1 s by the prior, 4 tokens after), but the
    // blocker holds the only slot for 3 s
    let mut t = task("in time?", 4, "interactive");
    t["deadline_ms"] = json!(1500);
    let (late, adm) = s.submit(&t).await;
    assert_eq!(adm["queue_position"], 1);
    let frames = s.stream(&late, None).await;
    assert_terminated(&frames, &late);
    let err = frames.last().unwrap();
    assert_eq!(err.event, "error");
    assert_eq!(err.data["code"], "DEADLINE_UNMET");
    assert!(!frames.iter().any(|f| f.event == "started"));
    // while it waited, metrics frames carried its position and on-time probability
    let waiting: Vec<_> = frames.iter().filter(|f| f.event == "metrics").collect();
    assert!(!waiting.is_empty(), "{frames:?}");
    assert_eq!(waiting[0].data["queue_position"], 1);
    let p = waiting.last().unwrap().data["on_time_probability"]
        .as_f64()
        .unwrap();
    assert!(
        (0.0..=0.5).contains(&p),
        "probability fell as the deadline neared: {p}"
    );
    let m = s.metrics().await;
    let ratio = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("deadlines_met_ratio{priority=\"interactive\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let before = ratio(&m).expect("deadlines_met_ratio exported");
    assert!(before < 1.0, "{m}");
    // a task that makes its deadline moves the ratio up
    s.stream(&blocker, None).await;
    let mut t = task("in time", 2, "interactive");
    t["deadline_ms"] = json!(10_000);
    let (ok, _) = s.submit(&t).await;
    let frames = s.stream(&ok, None).await;
    assert_eq!(frames.last().unwrap().event, "end");
    let after = ratio(&s.metrics().await).unwrap();
    assert!(after > before, "{before} -> {after}");
    s.assert_all_terminated().await;
}

/// Tokens served per tenant (and priority) while every tenant keeps the queue full.
struct Tally {
    tokens: Mutex<HashMap<(String, String), u64>>,
}

/// Keep `workers` tasks of `tenant` at `priority` in the system until `stop`, counting
/// tokens of tasks that end inside [from, stop).
#[allow(clippy::too_many_arguments)]
async fn saturate(
    s: Arc<TestServer>,
    key: &'static str,
    tenant: &'static str,
    priority: &'static str,
    body: Value,
    from: Instant,
    stop: Instant,
    tally: Arc<Tally>,
) {
    let mut body = body;
    body["priority"] = json!(priority);
    while Instant::now() < stop {
        let r = submit_as(&s, key, &body).await;
        if r.status() != 202 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let id = r.json::<Value>().await.unwrap()["task_id"]
            .as_str()
            .unwrap()
            .to_string();
        let frames = stream_as(&s, key, &id).await;
        let now = Instant::now();
        if now >= from && now < stop {
            let n = frames.last().unwrap().data["tokens_out"]
                .as_u64()
                .unwrap_or(0);
            *tally
                .tokens
                .lock()
                .unwrap()
                .entry((tenant.to_string(), priority.to_string()))
                .or_insert(0) += n;
        }
    }
}

/// What each tenant asks in a fairness run: bronze, silver, gold.
type Asks = [Value; 3];

/// Every tenant asks the same: 8 tokens of a model that answers 8.
fn same_asks() -> Asks {
    [0, 1, 2].map(|_| task("share", 8, "batch"))
}

async fn fairness_run(
    priorities: &[&'static str],
    config: &str,
    asks: Asks,
) -> (HashMap<(String, String), u64>, Vec<f64>, Vec<f64>) {
    fairness_run_on(Arc::new(start(config).await), priorities, asks).await
}

/// A fairness run against the server `s` serves (in this process or another).
async fn fairness_run_on(
    s: Arc<TestServer>,
    priorities: &[&'static str],
    asks: Asks,
) -> (HashMap<(String, String), u64>, Vec<f64>, Vec<f64>) {
    let t0 = Instant::now();
    let (from, stop) = (
        t0 + Duration::from_millis(1500),
        t0 + Duration::from_millis(7500),
    );
    let tally = Arc::new(Tally {
        tokens: Mutex::new(HashMap::new()),
    });
    let mut hs = Vec::new();
    let tenants = [(BRONZE, "bronze"), (SILVER, "silver"), (GOLD, "gold")];
    for ((key, tenant), ask) in tenants.into_iter().zip(asks) {
        for p in priorities {
            for _ in 0..6 {
                hs.push(tokio::spawn(saturate(
                    s.clone(),
                    key,
                    tenant,
                    p,
                    ask.clone(),
                    from,
                    stop,
                    tally.clone(),
                )));
            }
        }
    }
    // a tenant that submits little: one task now and then, timed from 202 to started
    let mut light = Vec::new();
    let mut heavy = Vec::new();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    for _ in 0..8 {
        let sent = Instant::now();
        let (_, frames) = run_as(&s, ADMIN, &task("light", 2, priorities[0])).await;
        assert!(frames.iter().any(|f| f.event == "started"));
        light.push(sent.elapsed().as_secs_f64() * 1e3);
        // the heavy tenants' status: time a gold task the same way
        let sent = Instant::now();
        run_as(&s, GOLD, &task("heavy", 2, priorities[0])).await;
        heavy.push(sent.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for h in hs {
        h.await.unwrap();
    }
    let t = tally.tokens.lock().unwrap().clone();
    (t, light, heavy)
}

fn shares(t: &HashMap<(String, String), u64>, priority: &str) -> [f64; 3] {
    let get = |n: &str| *t.get(&(n.to_string(), priority.to_string())).unwrap_or(&0) as f64;
    let (b, s, g) = (get("bronze"), get("silver"), get("gold"));
    let total = b + s + g;
    assert!(total > 0.0);
    [b / total, s / total, g / total]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn assert_shares(got: [f64; 3], what: &str) {
    let want = [1.0 / 8.0, 2.0 / 8.0, 5.0 / 8.0];
    eprintln!("{what}: served token shares bronze/silver/gold = {got:.3?} (want {want:.3?})");
    for i in 0..3 {
        assert!(
            (got[i] - want[i]).abs() <= 0.05,
            "{what}: shares {got:?} are not within ±0.05 of {want:?}"
        );
    }
}

/// Tenants that ask different `max_tokens` (48, 8, 24) of a model that answers 8:
/// shares of tokens served follow the weights, because each task is charged what it
/// used when it ends. Charged by declaration (before), the shares were 0.044 / 0.52 /
/// 0.44.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_shares_follow_weights_under_saturation() {
    let asks = [
        task("share", 48, "batch"),
        task("share", 8, "batch"),
        task("share", 24, "batch"),
    ];
    let (t, mut light, mut heavy) = fairness_run(&["batch"], &example(), asks).await;
    assert_shares(shares(&t, "batch"), "one class, max_tokens 48/8/24, 8 used");
    let (lm, hm) = (median(&mut light), median(&mut heavy));
    let lmax = light.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "light tenant: median {lm:.1} ms, max {lmax:.1} ms to end; heavy (gold) median {hm:.1} ms"
    );
    // served within the aging bound (5 s), and well ahead of the backlogged tenants
    assert!(lmax < 5000.0, "light tenant waited {lmax} ms");
    assert!(lm < hm, "light {lm} ms vs heavy {hm} ms");
}

/// Stage 9: the `admission_share{tenant,priority}` gauge itself, read from `/metrics`
/// of a server process of its own (the gauge is process-wide, so tests sharing a
/// process would mix their tenants), is within ±0.05 of the weights 1:2:5 under
/// saturation, and within ±0.05 of the shares the clients counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admission_share_gauge_follows_the_weights_under_saturation() {
    let path = temp_config("shares", &example());
    let (_child, base) = spawn_binary_at(&path);
    let s = Arc::new(TestServer::at(&base));
    let (t, _, _) = fairness_run_on(s.clone(), &["batch"], same_asks()).await;
    let text = s.metrics().await;
    let gauge = |tenant: &str| {
        lint::sum(
            &text,
            "admission_share",
            &[("tenant", tenant), ("priority", "batch")],
        )
    };
    let got = [gauge("bronze"), gauge("silver"), gauge("gold")];
    assert_shares(got, "admission_share gauge (batch)");
    let counted = shares(&t, "batch");
    for i in 0..3 {
        assert!(
            (got[i] - counted[i]).abs() <= 0.05,
            "gauge {got:?} vs counted by the clients {counted:?}"
        );
    }
    let _ = std::fs::remove_file(path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_shares_hold_within_each_priority_class() {
    let (t, _, _) = fairness_run(&["interactive", "batch"], &example(), same_asks()).await;
    assert_shares(shares(&t, "interactive"), "interactive");
    assert_shares(shares(&t, "batch"), "batch");
}

/// A tenant that declares 1 token (`expected_tokens`) and uses 256 gains nothing: the
/// queue charges an upper bound (`max_tokens`) and corrects it by what was used. The
/// model of examples/tenants.toml answers 256 tokens here, faster, and the tenants'
/// token rates are raised so that no quota shapes the shares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declaring_one_token_and_using_256_gains_nothing() {
    let config = example()
        .replace("tokens_per_minute = 120000", "tokens_per_minute = 10000000")
        .replace("tokens_per_sec = 400.0", "tokens_per_sec = 8000.0")
        .replace("tokens = 8\n", "tokens = 256\n");
    assert!(config.contains("tokens = 256"));
    let mut cheat = task("share", 256, "batch");
    cheat["expected_tokens"] = json!(1);
    let asks = [
        cheat,
        task("share", 256, "batch"),
        task("share", 256, "batch"),
    ];
    let (t, _, _) = fairness_run(&["batch"], &config, asks).await;
    assert_shares(shares(&t, "batch"), "bronze declares 1 token and uses 256");
}

/// An Idempotency-Key's task belongs to its tenant: another tenant's same key names a
/// different task, and naming the first task's id outright is refused whether or not
/// it exists (before: 409 "already exists", an existence oracle, and a squatter who
/// named the id first had the victim's repeat answered with the squatter's task).
#[tokio::test]
async fn an_idempotency_key_task_is_its_own_tenants_only() {
    let s = start(&example()).await;
    let keyed = |key: &'static str, body: Value| {
        let (http, url) = (s.http.clone(), s.url("/v1/tasks"));
        async move {
            http.post(url)
                .header("authorization", bearer(key))
                .header("Idempotency-Key", "order-1")
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let r = keyed(SILVER, task("mine", 4, "batch")).await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    // gold, same key: its own task
    let r = keyed(GOLD, task("theirs", 4, "batch")).await;
    assert_eq!(r.status(), 202);
    let gold_id = r.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(gold_id, id);
    // gold names silver's id: refused for its form, not for its existence
    let mut squat = task("squat", 4, "batch");
    squat["task_id"] = json!(id);
    let r = submit_as(&s, GOLD, &squat).await;
    assert_eq!(r.status(), 400);
    let e = r.json::<Value>().await.unwrap();
    assert_eq!(e["code"], "INVALID_PARAMS");
    assert!(e["message"].as_str().unwrap().contains("reserved"), "{e}");
    let unknown = uuid::Uuid::new_v8(*b"no such task 123");
    squat["task_id"] = json!(unknown.to_string());
    let r = submit_as(&s, GOLD, &squat).await;
    assert_eq!(
        r.status(),
        400,
        "an unknown derived id is refused the same way"
    );
    assert_eq!(
        get_as(&s, Some(GOLD), &format!("/v1/tasks/{id}"))
            .await
            .status(),
        404
    );
    // silver's repeat is still silver's task
    let r = keyed(SILVER, task("mine", 4, "batch")).await;
    assert_eq!(r.json::<Value>().await.unwrap()["task_id"], json!(id));
}

/// Keys limited to priorities and pools (spec §3): a key without `interactive` that
/// asks for it gets 403, on OrchQueue and on the OpenAI door; a key limited to one
/// pool runs only there and gets 403 for a model only other pools serve (before: any
/// client could say `interactive` and use any pool).
#[tokio::test]
async fn keys_limited_to_priorities_and_pools_get_403_outside_them() {
    const BATCH_ONLY: &str = "oqk_test-batch-only";
    const POOL_A: &str = "oqk_test-pool-a";
    let keys = format!(
        "[[auth.keys]]\nsha256 = \"{}\"\ntenant = \"batchy\"\nrole = \"client\"\npriorities = [\"batch\"]\n\n\
         [[auth.keys]]\nsha256 = \"{}\"\ntenant = \"pooly\"\nrole = \"client\"\npools = [\"a\"]\n\n",
        orch_services::auth::digest_hex(BATCH_ONLY),
        orch_services::auth::digest_hex(POOL_A),
    );
    let pools = "[[pools]]\nid = \"a\"\nengine = \"mock\"\nmodel = \"mock-model\"\n[pools.mock]\ntokens = 2\n\n\
                 [[pools]]\nid = \"b\"\nengine = \"mock\"\nmodel = \"other-model\"\n[pools.mock]\ntokens = 2\n";
    let s = start(&format!("{keys}{pools}")).await;
    let e = envelope(
        submit_as(&s, BATCH_ONLY, &task("hi", 2, "interactive")).await,
        403,
        "FORBIDDEN",
    )
    .await;
    assert!(
        e["message"].as_str().unwrap().contains("interactive"),
        "{e}"
    );
    run_as(&s, BATCH_ONLY, &task("hi", 2, "batch")).await;
    // the OpenAI door: asking for interactive is refused; without the header this
    // key's requests run as batch
    let door = |prio: Option<&'static str>| {
        let mut rb = s
            .http
            .post(s.url("/v1/completions"))
            .header("authorization", bearer(BATCH_ONLY))
            .json(&json!({"model": "mock-model", "prompt": "hi", "max_tokens": 2}));
        if let Some(p) = prio {
            rb = rb.header("x-orch-priority", p);
        }
        rb.send()
    };
    assert_eq!(door(Some("interactive")).await.unwrap().status(), 403);
    assert_eq!(door(None).await.unwrap().status(), 200);
    // pools: a's model runs; b's model is refused as not allowed, not as unknown
    run_as(&s, POOL_A, &task("hi", 2, "interactive")).await;
    let mut other = task("hi", 2, "batch");
    other["model_ref"] = json!("other-model");
    envelope(submit_as(&s, POOL_A, &other).await, 403, "FORBIDDEN").await;
    let mut pinned = task("hi", 2, "batch");
    pinned["placement"] = json!({"pin_pool_id": "b"});
    envelope(submit_as(&s, POOL_A, &pinned).await, 403, "FORBIDDEN").await;
    // an unlimited key of the same server is not affected
    assert_eq!(submit_as(&s, BATCH_ONLY, &other).await.status(), 202);
}

/// With keys and no `[auth] metrics` setting, `/metrics` (which names tenants) needs
/// an admin key (before: open to anyone who could reach the port).
#[tokio::test]
async fn with_keys_metrics_need_an_admin_key_unless_opened() {
    let config = example().replace("metrics = \"open\"\n", "");
    assert!(!config.contains("metrics = "));
    let s = start(&config).await;
    envelope(get_as(&s, None, "/metrics").await, 401, "UNAUTHENTICATED").await;
    envelope(get_as(&s, Some(GOLD), "/metrics").await, 403, "FORBIDDEN").await;
    assert_eq!(get_as(&s, Some(ADMIN), "/metrics").await.status(), 200);
}

/// Stage 11, the seed's KV quota: a tenant's unfinished tasks hold at most
/// `max_kv_tokens` of context (each its prompt, estimated at 4 bytes a token, plus its
/// `max_tokens`). Beyond it a task is refused with 429 `quota-kv` and Retry-After; a
/// task that alone needs more is the client's 400; a task that ends gives its KV back;
/// another tenant is not affected; capabilities show the quota.
#[tokio::test]
async fn the_kv_quota_bounds_what_a_tenants_unfinished_tasks_hold() {
    let cfg = format!(
        "{}{}\n[server]\nkeepalive_ms = 200\n\n[tenants.kv]\nmax_kv_tokens = 300\n\n[[pools]]\nid = \"p\"\nengine = \"mock\"\nmodel = \"mock-model\"\n[pools.mock]\nslots = 4\ntokens_per_sec = 40.0\nttft_ms = 5\ntokens = 100\n",
        key_entry("k-kv", "kv", "client"),
        key_entry("k-free", "free", "client"),
    );
    let s = start(&cfg).await;
    // 400 bytes of prompt (~100 tokens) + 100 tokens out: 200 of the 300
    let prompt = "x".repeat(400);
    let first = submit_as(&s, "k-kv", &task(&prompt, 100, "batch")).await;
    assert_eq!(first.status(), 202);
    let first = first.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = submit_as(&s, "k-kv", &task(&prompt, 100, "batch")).await;
    assert!(r.headers().get("retry-after").is_some());
    let e = envelope(r, 429, "QUOTA_EXCEEDED").await;
    assert_eq!(e["policy_label"], "quota-kv", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("max_kv_tokens 300"),
        "{e}"
    );
    // what fits beside it is admitted (100 bytes ~25 tokens + 60)
    assert_eq!(
        submit_as(&s, "k-kv", &task(&"y".repeat(100), 60, "batch"))
            .await
            .status(),
        202
    );
    // alone over the whole quota: no wait could admit it (checked before any other
    // quota, so never a 429 to retry); it names what to shrink
    let e = envelope(
        submit_as(&s, "k-kv", &task(&prompt, 250, "batch")).await,
        400,
        "INVALID_PARAMS",
    )
    .await;
    let m = e["message"].as_str().unwrap();
    assert!(m.starts_with("prompt") && m.contains("need 350"), "{e}");
    let e = envelope(
        submit_as(&s, "k-kv", &task("z", 301, "batch")).await,
        400,
        "INVALID_PARAMS",
    )
    .await;
    assert!(
        e["message"].as_str().unwrap().starts_with("max_tokens"),
        "{e}"
    );
    // another tenant has no such quota
    for _ in 0..3 {
        assert_eq!(
            submit_as(&s, "k-free", &task(&prompt, 100, "batch"))
                .await
                .status(),
            202
        );
    }
    // the first task ends: its 200 come back
    let frames = stream_as(&s, "k-kv", &first).await;
    assert_eq!(frames.last().unwrap().event, "end");
    let mut again = None;
    for _ in 0..100 {
        let r = submit_as(&s, "k-kv", &task(&prompt, 100, "batch")).await;
        if r.status() == 202 {
            again = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "the ended task's KV was given back");
    let caps = get_as(&s, Some("k-kv"), "/v1/capabilities").await;
    let caps: Value = caps.json().await.unwrap();
    assert_eq!(caps["tenant"]["quotas"]["max_kv_tokens"], 300, "{caps}");
    assert_eq!(caps["tenant"]["kv_tokens_held"], 200, "{caps}");
}
