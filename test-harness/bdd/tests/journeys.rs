//! Cucumber journeys against the real `orchestratord` binary: each scenario writes a
//! config from its `Given` steps, starts the binary on an ephemeral loopback port at its
//! first `When`, and talks to it over HTTP (tasks and streams through `orch-client`,
//! everything else as raw requests so every status and header can be checked).
//!
//! The run fails on any failed, skipped or undefined step (`fail_on_skipped`, and a
//! scenario with an undefined step counts as skipped).

use cucumber::{given, then, when, World};
use futures_util::StreamExt;
use orch_client::{Client, Event};
use orch_domain::{StreamEvent, TaskId};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Settings that belong to `[[pools]]`; any other pool setting goes to its engine table.
const POOL_KEYS: &[&str] = &[
    "replicas",
    "queue_capacity",
    "queue_policy",
    "interactive_weight",
    "max_tokens_out",
    "first_token_timeout_ms",
    "idle_timeout_ms",
    "decode_timeout_ms",
    "queue_wait_limit_ms",
    "retries_before_first_token",
    "migration_limit",
    "fairness",
    "aging_ms",
    "metrics_frame_interval_ms",
    "placement",
];

#[derive(Debug)]
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Debug, Clone)]
struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

#[derive(Debug, Default, World)]
pub struct Orch {
    pool: Vec<(String, String)>,
    engine: Vec<(String, String)>,
    server: Vec<(String, String)>,
    extra: String,
    real_engine: bool,
    keys: HashMap<String, String>,
    child: Option<Reap>,
    base: String,
    http: reqwest::Client,
    last: Option<Resp>,
    tasks: HashMap<String, String>,
    admissions: HashMap<String, Value>,
    frames: HashMap<String, Vec<Event>>,
    readers: Vec<Vec<Event>>,
    /// Headers for the next request only.
    next_headers: Vec<(String, String)>,
    /// Tokens served to each tenant in a saturation run (after its warm-up).
    served: HashMap<String, u64>,
    /// The number each counting task must continue with (fresh per run).
    counts: HashMap<String, u64>,
}

fn toml_value(v: &str) -> String {
    if v.parse::<f64>().is_ok() || v == "true" || v == "false" || v.starts_with('[') {
        v.to_string()
    } else {
        format!("\"{v}\"")
    }
}

fn binary() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let st = Command::new(env!("CARGO"))
            .args([
                "build",
                "-q",
                "-p",
                "orchestratord",
                "--bin",
                "orchestratord",
            ])
            .status()
            .expect("cargo build orchestratord");
        assert!(st.success(), "building orchestratord failed");
    });
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("orchestratord")
}

impl Orch {
    fn config(&self) -> String {
        let mut s = String::new();
        s.push_str(&self.extra);
        for (name, key) in &self.keys {
            let (tenant, role) = name.split_once('/').unwrap_or((name, "client"));
            s.push_str(&format!(
                "[[auth.keys]]\nsha256 = \"{}\"\ntenant = \"{tenant}\"\nrole = \"{role}\"\n",
                orch_services::auth::digest_hex(key)
            ));
        }
        s.push_str("[server]\nkeepalive_ms = 200\nshutdown_grace_ms = 2000\n");
        for (k, v) in &self.server {
            s.push_str(&format!("{k} = {}\n", toml_value(v)));
        }
        let (engine, table) = if self.real_engine {
            ("llamacpp", "llamacpp")
        } else {
            ("mock", "mock")
        };
        let model = if self.real_engine {
            "gemma-3-270m"
        } else {
            "mock-model"
        };
        s.push_str(&format!(
            "[[pools]]\nid = \"p\"\nengine = \"{engine}\"\nmodel = \"{model}\"\n"
        ));
        for (k, v) in &self.pool {
            s.push_str(&format!("{k} = {}\n", toml_value(v)));
        }
        s.push_str(&format!("[pools.{table}]\n"));
        if self.real_engine {
            s.push_str("ctx = 2048\nslots = 2\nthreads = 2\n");
        }
        for (k, v) in &self.engine {
            s.push_str(&format!("{k} = {}\n", toml_value(v)));
        }
        s
    }

    /// Start the server on first use.
    fn up(&mut self) {
        if self.child.is_some() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("orch-bdd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let path = dir.join(format!(
            "s{}.toml",
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::write(&path, self.config()).unwrap();
        let state = dir.join(format!(
            "state{}",
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut child = Command::new(binary())
            .env("ORCH_STATE_DIR", state)
            .args([
                "--config",
                path.to_str().unwrap(),
                "--addr",
                "127.0.0.1:0",
                "--skip-self-test",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start orchestratord");
        let mut err = child.stderr.take().unwrap();
        let (mut seen, mut buf) = (String::new(), [0u8; 4096]);
        let t0 = Instant::now();
        let done = |s: &str| {
            s.split("listening on http://")
                .nth(1)
                .is_some_and(|r| r.contains('\n'))
        };
        while !done(&seen) && t0.elapsed() < Duration::from_secs(120) {
            let n = err.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = err.read_to_end(&mut sink);
        });
        let addr = seen
            .split("listening on http://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| {
                panic!(
                    "orchestratord did not start:\n{seen}\nconfig:\n{}",
                    self.config()
                )
            })
            .to_string();
        self.base = format!("http://{addr}");
        self.child = Some(Reap(child));
    }

    fn key_of(&self, who: &str) -> Option<String> {
        self.keys
            .iter()
            .find(|(n, _)| n.split('/').next() == Some(who))
            .map(|(_, k)| k.clone())
    }

    fn client(&self, who: Option<&str>) -> Client {
        let mut c = Client::new(&self.base);
        if let Some(k) = who.and_then(|w| self.key_of(w)) {
            c = c.with_api_key(&k);
        }
        c
    }

    /// `<alias>` in a path becomes that task's id.
    fn path(&self, p: &str) -> String {
        let mut out = p.to_string();
        for (a, id) in &self.tasks {
            out = out.replace(&format!("<{a}>"), id);
        }
        out
    }

    async fn request(&mut self, method: &str, path: &str, who: Option<&str>, body: Option<Body>) {
        self.up();
        let url = format!("{}{}", self.base, self.path(path));
        let mut rb = match method {
            "GET" => self.http.get(&url),
            "POST" => self.http.post(&url),
            "DELETE" => self.http.delete(&url),
            m => panic!("method {m}"),
        };
        if let Some(k) = who.and_then(|w| self.key_of(w)) {
            rb = rb.bearer_auth(k);
        }
        for (name, value) in std::mem::take(&mut self.next_headers) {
            rb = rb.header(name, value);
        }
        rb = match body {
            Some(Body::Json(v)) => rb.json(&v),
            Some(Body::Raw(ct, text)) => rb.header("content-type", ct).body(text),
            None => rb,
        };
        let r = rb.send().await.expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        self.last = Some(Resp {
            status,
            headers,
            body,
        });
    }

    fn last(&self) -> &Resp {
        self.last.as_ref().expect("a response")
    }

    async fn submit(&mut self, alias: &str, body: Value, who: Option<&str>) {
        self.request("POST", "/v1/tasks", who, Some(Body::Json(body)))
            .await;
        let r = self.last().clone();
        if r.status == 202 {
            self.tasks.insert(
                alias.to_string(),
                r.body["task_id"].as_str().unwrap().to_string(),
            );
            self.admissions.insert(alias.to_string(), r.body);
        }
    }

    fn id(&self, alias: &str) -> TaskId {
        self.tasks
            .get(alias)
            .unwrap_or_else(|| panic!("no task {alias}"))
            .parse()
            .unwrap()
    }

    async fn read(&mut self, alias: &str, who: Option<&str>) -> Vec<Event> {
        self.up();
        let c = self.client(who);
        tokio::time::timeout(Duration::from_secs(60), c.collect(self.id(alias)))
            .await
            .expect("the stream ends within 60 s")
            .expect("stream")
    }
}

enum Body {
    Json(Value),
    Raw(&'static str, String),
}

fn task(max_tokens: u32, priority: &str) -> Value {
    json!({"workload": "completion", "model_ref": "mock-model", "priority": priority,
        "prompt": "Tell me about lighthouses.", "max_tokens": max_tokens})
}

fn name(ev: &Event) -> &'static str {
    match ev.event {
        StreamEvent::Started(_) => "started",
        StreamEvent::Token(_) => "token",
        StreamEvent::Metrics(_) => "metrics",
        StreamEvent::End(_) => "end",
        StreamEvent::Error(_) => "error",
    }
}

// ---------------------------------------------------------------- given

#[given("a mock pool")]
fn mock_pool(_w: &mut Orch) {}

#[given("a mock pool with:")]
fn mock_pool_with(w: &mut Orch, step: &cucumber::gherkin::Step) {
    for row in &step.table.as_ref().expect("a table").rows {
        let (k, v) = (row[0].trim().to_string(), row[1].trim().to_string());
        if POOL_KEYS.contains(&k.as_str()) {
            w.pool.push((k, v));
        } else {
            w.engine.push((k, v));
        }
    }
}

#[given(expr = "the server setting {word} is {word}")]
fn server_setting(w: &mut Orch, k: String, v: String) {
    w.server.push((k, v));
}

#[given("these API keys:")]
fn api_keys(w: &mut Orch, step: &cucumber::gherkin::Step) {
    // | tenant | role |: one key each, named by its tenant in later steps
    let rows = &step.table.as_ref().expect("a table").rows;
    for row in rows.iter().skip(1) {
        let (tenant, role) = (row[0].trim(), row[1].trim());
        w.keys.insert(
            format!("{tenant}/{role}"),
            format!("oqk_bdd-{tenant}-{role}"),
        );
    }
}

#[given(expr = "tenant {string} has {word} {int}")]
fn tenant_quota(w: &mut Orch, tenant: String, k: String, v: u64) {
    w.extra
        .push_str(&format!("[tenants.{tenant}]\n{k} = {v}\n"));
}

#[given("the bundled llama.cpp model")]
fn bundled_model(w: &mut Orch) {
    let cache = std::env::var_os("ORCH_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/orchestratord")))
        .expect("HOME");
    let bin = std::env::var_os("ORCH_LLAMA_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache.join("engines/llamacpp-b11434-current/bin/llama-server"));
    assert!(
        bin.is_file(),
        "llama-server missing ({}): run scripts/provision.sh",
        bin.display()
    );
    // the binary provision.sh built: its digest matches the one recorded then
    let record = format!("{}.sha256", bin.display());
    let ok = std::process::Command::new("sha256sum")
        .args(["--check", "--status", &record])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} does not match its recorded digest ({record}); run scripts/provision.sh",
        bin.display()
    );
    w.real_engine = true;
    w.pool.push(("max_tokens_out".into(), "512".into()));
    w.pool
        .push(("first_token_timeout_ms".into(), "60000".into()));
}

// ---------------------------------------------------------------- when

#[when(expr = "I submit a task {string}")]
async fn submit(w: &mut Orch, alias: String) {
    w.submit(&alias, task(8, "interactive"), None).await;
}

#[when(expr = "I submit a task {string} with {int} tokens")]
async fn submit_n(w: &mut Orch, alias: String, n: u32) {
    w.submit(&alias, task(n, "interactive"), None).await;
}

#[when(expr = "I submit a {word} task {string} with {int} tokens")]
async fn submit_prio(w: &mut Orch, prio: String, alias: String, n: u32) {
    w.submit(&alias, task(n, &prio), None).await;
}

#[when(expr = "{word} submits a task {string} with {int} tokens")]
async fn submit_as(w: &mut Orch, who: String, alias: String, n: u32) {
    w.submit(&alias, task(n, "interactive"), Some(&who)).await;
}

#[when(expr = "I submit a task {string} in session {string} with {int} tokens")]
async fn submit_session(w: &mut Orch, alias: String, session: String, n: u32) {
    let mut t = task(n, "interactive");
    t["session_id"] = json!(session);
    w.submit(&alias, t, None).await;
}

#[when(expr = "I submit a task {string} with determinism {word}, seed {int} and {int} tokens")]
async fn submit_seeded(w: &mut Orch, alias: String, det: String, seed: i64, n: u32) {
    let mut t = task(n, "interactive");
    if w.real_engine {
        t["model_ref"] = json!("gemma-3-270m");
        t["prompt"] = json!("Write two sentences about a lighthouse keeper:");
    }
    t["determinism"] = json!(det);
    t["seed"] = json!(seed);
    w.submit(&alias, t, None).await;
    assert_eq!(w.last().status, 202, "{:?}", w.last().body);
}

#[when(expr = "I submit a task {string} with determinism {word} and {int} tokens")]
async fn submit_determinism(w: &mut Orch, alias: String, det: String, n: u32) {
    let mut t = task(n, "interactive");
    t["determinism"] = json!(det);
    w.submit(&alias, t, None).await;
    assert_eq!(w.last().status, 202, "{:?}", w.last().body);
}

/// Each tenant keeps `n` batch tasks waiting (a new one as soon as one ends) for
/// `ms`; tokens are counted after the first quarter (the warm-up).
#[when(
    expr = "{word}, {word} and {word} each keep {int} batch tasks of {int} tokens waiting for {int} ms"
)]
async fn saturate(w: &mut Orch, a: String, b: String, c: String, n: u32, tokens: u32, ms: u64) {
    w.up();
    let t0 = Instant::now();
    let (from, stop) = (
        t0 + Duration::from_millis(ms / 4),
        t0 + Duration::from_millis(ms),
    );
    let req: orch_domain::TaskRequest = serde_json::from_value(task(tokens, "batch")).unwrap();
    let mut runs = Vec::new();
    for who in [a, b, c] {
        for _ in 0..n {
            let (client, req, who) = (w.client(Some(&who)), req.clone(), who.clone());
            runs.push(tokio::spawn(async move {
                let mut got = 0u64;
                while Instant::now() < stop {
                    let Ok(adm) = client.submit(&req).await else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    let frames = client.collect(adm.task_id).await.expect("stream");
                    if Instant::now() >= from && Instant::now() < stop {
                        got += frames
                            .iter()
                            .filter(|e| matches!(e.event, StreamEvent::Token(_)))
                            .count() as u64;
                    }
                }
                (who, got)
            }));
        }
    }
    for r in runs {
        let (who, got) = r.await.unwrap();
        *w.served.entry(who).or_insert(0) += got;
    }
}

#[when(expr = "I submit a task {string} with a deadline of {int} ms")]
async fn submit_deadline(w: &mut Orch, alias: String, ms: u64) {
    let mut t = task(4, "interactive");
    t["deadline_ms"] = json!(ms);
    w.submit(&alias, t, None).await;
}

#[when(expr = "I submit a task {string} with {int} tokens and Idempotency-Key {string}")]
async fn submit_idempotent(w: &mut Orch, alias: String, n: u32, key: String) {
    w.next_headers.push(("Idempotency-Key".into(), key));
    w.submit(&alias, task(n, "interactive"), None).await;
}

#[when(expr = "I submit a task {string} with the same id as {string}")]
async fn submit_same_id(w: &mut Orch, alias: String, other: String) {
    let mut t = task(4, "interactive");
    t["task_id"] = json!(w.tasks[&other]);
    w.submit(&alias, t, None).await;
}

/// The counting gate: a count from a fresh random start, which the model must continue;
/// the answer is not in the prompt (an echo cannot pass) and no recording can know it.
#[when(expr = "I submit a task {string} continuing a fresh count with {int} tokens")]
async fn submit_count(w: &mut Orch, alias: String, n: u32) {
    let start = 10
        + (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64 ^ d.as_secs())
            % 9_990);
    let prompt = format!(
        "Counting: {start}, {}, {}, {}, {},",
        start + 1,
        start + 2,
        start + 3,
        start + 4
    );
    w.counts.insert(alias.clone(), start + 5);
    submit_prompt(w, alias, prompt, n).await;
}

#[when(expr = "I submit a task {string} with prompt {string} and {int} tokens")]
async fn submit_prompt(w: &mut Orch, alias: String, prompt: String, n: u32) {
    let prompt = prompt.replace("\\n", "\n");
    let model = if w.real_engine {
        "gemma-3-270m"
    } else {
        "mock-model"
    };
    let t = json!({"workload": "completion", "model_ref": model, "priority": "interactive",
        "prompt": prompt, "max_tokens": n, "temperature": 0.0});
    w.submit(&alias, t, None).await;
}

#[when(expr = "I submit the body {string}")]
async fn submit_body(w: &mut Orch, body: String) {
    w.request(
        "POST",
        "/v1/tasks",
        None,
        Some(Body::Raw("application/json", body)),
    )
    .await;
}

#[when(expr = "I submit a task as {string}")]
async fn submit_ctype(w: &mut Orch, ctype: String) {
    let ct: &'static str = Box::leak(ctype.into_boxed_str());
    w.request(
        "POST",
        "/v1/tasks",
        None,
        Some(Body::Raw(ct, task(4, "batch").to_string())),
    )
    .await;
}

#[when(expr = "I submit a task with a prompt of {int} bytes")]
async fn submit_big(w: &mut Orch, n: usize) {
    let mut t = task(4, "batch");
    t["prompt"] = json!("x".repeat(n));
    w.request("POST", "/v1/tasks", None, Some(Body::Json(t)))
        .await;
}

#[when(expr = "I submit a task for model {string}")]
async fn submit_model(w: &mut Orch, model: String) {
    let mut t = task(4, "batch");
    t["model_ref"] = json!(model);
    w.request("POST", "/v1/tasks", None, Some(Body::Json(t)))
        .await;
}

#[when(expr = "I read the stream of {string}")]
async fn read(w: &mut Orch, alias: String) {
    let f = w.read(&alias, None).await;
    w.frames.insert(alias, f);
}

#[when(expr = "{word} reads the stream of {string}")]
async fn read_as(w: &mut Orch, who: String, alias: String) {
    let f = w.read(&alias, Some(&who)).await;
    w.frames.insert(alias, f);
}

#[when(expr = "I read the stream of {string} after frame {int}")]
async fn read_after(w: &mut Orch, alias: String, after: u64) {
    let c = w.client(None);
    let mut s = c.stream_from(w.id(&alias), after).await.expect("stream");
    let mut out = Vec::new();
    while let Some(Ok(ev)) = s.next().await {
        let end = ev.event.is_terminal();
        out.push(ev);
        if end {
            break;
        }
    }
    w.frames.insert(format!("{alias}@resumed"), out);
}

#[when(expr = "two readers read the stream of {string}")]
async fn two_readers(w: &mut Orch, alias: String) {
    let id = w.id(&alias);
    let (a, b) = (w.client(None), w.client(None));
    let (x, y) = tokio::join!(a.collect(id), b.collect(id));
    w.readers = vec![x.expect("reader 1"), y.expect("reader 2")];
}

#[when(expr = "I open the stream of {string} and go away")]
async fn open_and_leave(w: &mut Orch, alias: String) {
    let c = w.client(None);
    let mut s = c.stream_from(w.id(&alias), 0).await.expect("stream");
    let _ = s.next().await;
    drop(s);
}

#[when(expr = "I cancel {string}")]
async fn cancel(w: &mut Orch, alias: String) {
    w.request("POST", &format!("/v1/tasks/<{alias}>/cancel"), None, None)
        .await;
}

#[when(expr = "I wait until {string} is {word}")]
async fn wait_state(w: &mut Orch, alias: String, state: String) {
    let c = w.client(None);
    let t0 = Instant::now();
    loop {
        let st = c.status(w.id(&alias)).await.expect("status");
        if serde_json::to_value(st.state).unwrap() == json!(state) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{alias} never became {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[when(expr = "I wait {int} ms")]
async fn wait_ms(_w: &mut Orch, ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[when(expr = "I GET {string}")]
async fn get(w: &mut Orch, path: String) {
    w.request("GET", &path, None, None).await;
}

#[when(expr = "{word} GETs {string}")]
async fn get_as(w: &mut Orch, who: String, path: String) {
    w.request("GET", &path, Some(&who), None).await;
}

#[when(expr = "I POST {string} with {string}")]
async fn post(w: &mut Orch, path: String, body: String) {
    let v: Value = serde_json::from_str(&body).expect("a JSON body");
    w.request("POST", &path, None, Some(Body::Json(v))).await;
}

#[when(expr = "{word} POSTs {string} with {string}")]
async fn post_as(w: &mut Orch, who: String, path: String, body: String) {
    let v: Value = serde_json::from_str(&body).expect("a JSON body");
    w.request("POST", &path, Some(&who), Some(Body::Json(v)))
        .await;
}

#[when(expr = "I DELETE {string}")]
async fn delete(w: &mut Orch, path: String) {
    w.request("DELETE", &path, None, None).await;
}

#[when("the server is asked to stop")]
async fn stop(w: &mut Orch) {
    w.up();
    let pid = w.child.as_ref().unwrap().0.id();
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    // the signal is handled asynchronously: the stop has begun once readiness says so
    let t0 = std::time::Instant::now();
    loop {
        let r = w.http.get(format!("{}/readyz", w.base)).send().await;
        match r {
            Ok(r) if r.status() == 503 => break,
            Err(_) => break,
            Ok(_) => {}
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "SIGTERM not acted on in 5 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------- then

#[then(expr = "the response status is {int}")]
fn status_is(w: &mut Orch, status: u16) {
    let r = w.last();
    assert_eq!(r.status, status, "body: {}", r.body);
}

#[then(expr = "the error code is {string}")]
fn error_code(w: &mut Orch, code: String) {
    let b = &w.last().body;
    let got = b["code"]
        .as_str()
        .or(b["error"]["code"].as_str())
        .unwrap_or("");
    assert_eq!(got, code, "{b}");
    if b.get("code").is_some() {
        assert!(
            b["correlation_id"].is_string(),
            "an envelope carries its correlation id: {b}"
        );
    }
}

#[then(expr = "the response carries header {string}")]
fn has_header(w: &mut Orch, h: String) {
    assert!(
        w.last().headers.contains_key(h.to_lowercase().as_str()),
        "{:?}",
        w.last().headers
    );
}

#[then(expr = "the JSON at {string} is {string}")]
fn json_at(w: &mut Orch, pointer: String, want: String) {
    let want: Value = serde_json::from_str(&want).unwrap_or(Value::String(want));
    let got = w
        .last()
        .body
        .pointer(&pointer)
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(got, want, "at {pointer} of {}", w.last().body);
}

#[then(expr = "the admission of {string} has queue position {int}")]
fn admission_position(w: &mut Orch, alias: String, pos: u64) {
    assert_eq!(
        w.admissions[&alias]["queue_position"],
        json!(pos),
        "{}",
        w.admissions[&alias]
    );
}

fn frames<'a>(w: &'a Orch, alias: &str) -> &'a Vec<Event> {
    w.frames
        .get(alias)
        .unwrap_or_else(|| panic!("the stream of {alias} was not read"))
}

#[then(expr = "the stream of {string} ends with {word}")]
fn ends_with(w: &mut Orch, alias: String, event: String) {
    let f = frames(w, &alias);
    let terminals = f.iter().filter(|e| e.event.is_terminal()).count();
    assert_eq!(terminals, 1, "exactly one terminal frame: {f:?}");
    assert_eq!(name(f.last().unwrap()), event, "{f:?}");
}

#[then(expr = "the stream of {string} ends with error {string}")]
fn ends_with_error(w: &mut Orch, alias: String, code: String) {
    let f = frames(w, &alias);
    match &f.last().unwrap().event {
        StreamEvent::Error(e) => assert_eq!(e.code.as_str(), code, "{f:?}"),
        other => panic!("{alias} ended with {other:?}"),
    }
}

#[then(expr = "the stream of {string} ends with finish reason {string}")]
fn finish_reason(w: &mut Orch, alias: String, reason: String) {
    match &frames(w, &alias).last().unwrap().event {
        StreamEvent::End(e) => assert_eq!(e.finish_reason.as_str(), reason),
        other => panic!("{alias} ended with {other:?}"),
    }
}

#[then(expr = "the stream of {string} has {int} tokens")]
fn token_count(w: &mut Orch, alias: String, n: usize) {
    let f = frames(w, &alias);
    let toks: Vec<u32> = f
        .iter()
        .filter_map(|e| match &e.event {
            StreamEvent::Token(t) => Some(t.i),
            _ => None,
        })
        .collect();
    assert_eq!(toks.len(), n, "{f:?}");
    assert!(
        toks.iter().enumerate().all(|(k, i)| *i as usize == k),
        "indices contiguous: {toks:?}"
    );
}

#[then(expr = "the stream of {string} starts with started")]
fn starts_with_started(w: &mut Orch, alias: String) {
    let f = frames(w, &alias);
    let first = f.iter().find(|e| name(e) != "metrics").unwrap();
    assert_eq!(name(first), "started", "{f:?}");
}

#[then(expr = "the stream of {string} has only its terminal frame")]
fn only_terminal(w: &mut Orch, alias: String) {
    let f = frames(w, &alias);
    let real: Vec<_> = f.iter().filter(|e| name(e) != "metrics").collect();
    assert_eq!(real.len(), 1, "{f:?}");
    assert!(real[0].event.is_terminal());
}

#[then(expr = "the resumed stream of {string} starts at frame {int}")]
fn resumed_at(w: &mut Orch, alias: String, id: u64) {
    let f = frames(w, &format!("{alias}@resumed"));
    assert_eq!(f[0].id, id, "{f:?}");
    assert!(f.last().unwrap().event.is_terminal());
}

#[then("both readers saw the same frames")]
fn same_frames(w: &mut Orch) {
    assert_eq!(w.readers.len(), 2);
    assert_eq!(w.readers[0], w.readers[1]);
    assert!(w.readers[0].last().unwrap().event.is_terminal());
}

#[then(expr = "{string} and {string} are the same task")]
async fn same_task(w: &mut Orch, a: String, b: String) {
    assert_eq!(w.id(&a), w.id(&b));
}

#[then(expr = "{string} and {string} are different tasks")]
async fn different_tasks(w: &mut Orch, a: String, b: String) {
    assert_ne!(w.id(&a), w.id(&b));
}

#[then(expr = "{string} is {word}")]
async fn state_is(w: &mut Orch, alias: String, state: String) {
    let st = w.client(None).status(w.id(&alias)).await.expect("status");
    assert_eq!(serde_json::to_value(st.state).unwrap(), json!(state));
}

#[then(expr = "{string} becomes {word} within {int} ms")]
async fn becomes(w: &mut Orch, alias: String, state: String, ms: u64) {
    let c = w.client(None);
    let t0 = Instant::now();
    loop {
        let st = c.status(w.id(&alias)).await.expect("status");
        if serde_json::to_value(st.state).unwrap() == json!(state) {
            return;
        }
        assert!(t0.elapsed() < Duration::from_millis(ms), "{alias}: {st:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `got` (per tenant) is within `tol` of the weights' shares.
fn assert_weighted(what: &str, got: [f64; 3], weights: [f64; 3], tol: f64) {
    let (gs, ws) = (got.iter().sum::<f64>(), weights.iter().sum::<f64>());
    assert!(gs > 0.0, "{what}: nothing served");
    for i in 0..3 {
        let (g, want) = (got[i] / gs, weights[i] / ws);
        assert!(
            (g - want).abs() <= tol,
            "{what}: shares {:?} vs weights {weights:?} (±{tol})",
            got.map(|x| x / gs)
        );
    }
}

#[then(
    expr = "the tokens served to {word}, {word} and {word} follow the weights {int}:{int}:{int} within {float}"
)]
// a cucumber step takes each value its expression captures as an argument
#[allow(clippy::too_many_arguments)]
fn served_follow(w: &mut Orch, a: String, b: String, c: String, x: u32, y: u32, z: u32, tol: f64) {
    let got = [&a, &b, &c].map(|t| *w.served.get(t.as_str()).unwrap_or(&0) as f64);
    assert_weighted("tokens served", got, [x, y, z].map(f64::from), tol);
}

#[then(
    expr = "the admission_share gauges of {word}, {word} and {word} follow the weights {int}:{int}:{int} within {float}"
)]
// a cucumber step takes each value its expression captures as an argument
#[allow(clippy::too_many_arguments)]
async fn gauges_follow(
    w: &mut Orch,
    a: String,
    b: String,
    c: String,
    x: u32,
    y: u32,
    z: u32,
    tol: f64,
) {
    let admin = w
        .keys
        .keys()
        .find(|k| k.ends_with("/admin"))
        .map(|k| k.split('/').next().unwrap_or_default().to_string());
    w.request("GET", "/metrics", admin.as_deref(), None).await;
    let text = w.last().body.as_str().unwrap_or_default().to_string();
    let gauge = |tenant: &str| {
        text.lines()
            .filter(|l| l.starts_with("admission_share{"))
            .filter(|l| {
                l.contains(&format!("tenant=\"{tenant}\"")) && l.contains("priority=\"batch\"")
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
    };
    let got = [gauge(&a), gauge(&b), gauge(&c)];
    // the gauge is the share itself: the three sum to about 1 (the admin's own tasks
    // would count too, and there are none here)
    assert!(
        (got.iter().sum::<f64>() - 1.0).abs() < 0.01,
        "gauges {got:?}"
    );
    assert_weighted("admission_share gauge", got, [x, y, z].map(f64::from), tol);
}

fn text_of(w: &Orch, alias: &str) -> String {
    w.frames
        .get(alias)
        .unwrap_or_else(|| panic!("no stream read for {alias}"))
        .iter()
        .filter_map(|e| match &e.event {
            StreamEvent::Token(t) => Some(t.t.clone()),
            _ => None,
        })
        .collect()
}

#[then(expr = "{string} and {string} have the same text")]
fn same_text(w: &mut Orch, a: String, b: String) {
    let (ta, tb) = (text_of(w, &a), text_of(w, &b));
    assert!(!ta.is_empty(), "{a} has text");
    assert_eq!(ta, tb);
}

/// The `migrated` notes of a stream's `metrics` frames.
fn moves(w: &Orch, alias: &str) -> Vec<orch_domain::Migrated> {
    frames(w, alias)
        .iter()
        .filter_map(|e| match &e.event {
            StreamEvent::Metrics(m) => m.migrated.clone(),
            _ => None,
        })
        .collect()
}

#[then(expr = "exactly one of {string} and {string} moved to another replica, once")]
fn one_moved(w: &mut Orch, a: String, b: String) {
    let (ma, mb) = (moves(w, &a), moves(w, &b));
    let moved: Vec<_> = [&ma, &mb].into_iter().filter(|m| !m.is_empty()).collect();
    assert_eq!(moved.len(), 1, "{ma:?} / {mb:?}");
    assert_eq!(moved[0].len(), 1, "{moved:?}");
    assert_ne!(moved[0][0].from_replica, moved[0][0].to_replica);
}

#[then(expr = "the stream of {string} did not move")]
fn did_not_move(w: &mut Orch, alias: String) {
    assert!(moves(w, &alias).is_empty());
}

#[then(expr = "{string} and {string} have different text")]
fn different_text(w: &mut Orch, a: String, b: String) {
    assert_ne!(text_of(w, &a), text_of(w, &b));
}

fn started_seed(w: &Orch, alias: &str) -> i64 {
    w.frames[alias]
        .iter()
        .find_map(|e| match &e.event {
            StreamEvent::Started(s) => Some(s.seed),
            _ => None,
        })
        .expect("a started frame")
}

#[then(expr = "the started frame of {string} names seed {int}")]
fn names_seed(w: &mut Orch, alias: String, seed: i64) {
    assert_eq!(started_seed(w, &alias), seed);
}

#[then(expr = "the started frame of {string} names the seed derived from its id")]
fn names_derived_seed(w: &mut Orch, alias: String) {
    assert_eq!(started_seed(w, &alias), w.id(&alias).derived_seed());
}

#[then(
    expr = "the raw stream of {string} shows at least {int} keep-alive comments within {int} ms before any frame"
)]
async fn keepalives(w: &mut Orch, alias: String, n: usize, ms: u64) {
    w.up();
    let url = format!("{}/v1/tasks/{}/stream", w.base, w.id(&alias));
    let r = w.http.get(url).send().await.expect("stream");
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let (mut seen, t0) = (String::new(), Instant::now());
    while t0.elapsed() < Duration::from_millis(ms) {
        let left = Duration::from_millis(ms).saturating_sub(t0.elapsed());
        match tokio::time::timeout(left, body.next()).await {
            Ok(Some(Ok(c))) => seen.push_str(&String::from_utf8_lossy(&c)),
            _ => break,
        }
    }
    let before_frames = &seen[..seen.find("event: ").unwrap_or(seen.len())];
    let count = before_frames.matches(": keep-alive").count();
    assert!(
        count >= n,
        "{count} keep-alives before any frame in {seen:?}"
    );
}

#[then(expr = "the first number in the text of {string} continues its count")]
fn continues_count(w: &mut Orch, alias: String) {
    let text = text_of(w, &alias);
    let first: String = text
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    assert_eq!(first, w.counts[&alias].to_string(), "{text:?}");
}

#[tokio::main]
async fn main() {
    let features = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/features");
    // real-engine journeys fail without the engine, unless the run says it leaves them
    // out (and then it says so, loudly: they never read as passed)
    let skip_real = std::env::var_os("ORCH_SKIP_REAL_ENGINE").is_some_and(|v| v == "1");
    if skip_real {
        println!("NOTE: ORCH_SKIP_REAL_ENGINE=1: @real-engine scenarios are left out of this run");
    }
    Orch::cucumber()
        // `cargo test -- --nocapture` passes libtest flags this runner does not take
        .with_default_cli()
        .max_concurrent_scenarios(4)
        .fail_on_skipped()
        .filter_run_and_exit(features, move |feature, _, scenario| {
            let real = feature
                .tags
                .iter()
                .chain(&scenario.tags)
                .any(|t| t == "real-engine");
            !(skip_real && real)
        })
        .await;
}
