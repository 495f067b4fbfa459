//! Shared helpers for integration tests: a real server on an ephemeral loopback port,
//! a real HTTP client, an SSE parser, and the "every admitted task ended" check.
#![allow(dead_code)]

pub mod lint;
pub mod llama;
pub mod prom;
pub mod sdk;

use serde_json::{json, Value};
use std::sync::Mutex;
use std::time::Duration;

pub struct TestServer {
    pub base: String,
    pub server: Option<orchestratord::Server>,
    pub http: reqwest::Client,
    admitted: Mutex<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SseFrame {
    pub event: String,
    pub id: u64,
    pub data: Value,
}

/// Start a server without startup self-tests (tests of behaviour use scripted faults
/// that a self-test would rightly refuse); `start_self_tested` runs them.
pub async fn start(toml: &str) -> TestServer {
    start_opts(toml, true).await
}

pub async fn start_self_tested(toml: &str) -> TestServer {
    start_opts(toml, false).await
}

/// A state directory of its own for one test server (the account store's lock keeps
/// two servers out of one directory).
pub fn fresh_state_dir() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    std::env::temp_dir()
        .join(format!(
            "orch-state-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ))
        .to_string_lossy()
        .into_owned()
}

pub async fn start_opts(toml: &str, skip_self_test: bool) -> TestServer {
    let cfg = orchestratord::Config::parse(toml)
        .expect("test config")
        .with_temp_state();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let opts = orchestratord::StartOptions { skip_self_test };
    let server =
        orchestratord::start_with(cfg, listener, orchestratord::telemetry::metrics(), opts)
            .await
            .expect("server starts");
    TestServer {
        base: format!("http://{}", server.addr),
        server: Some(server),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        admitted: Mutex::new(Vec::new()),
    }
}

impl TestServer {
    /// A client of a server already running at `base` (a spawned binary).
    pub fn at(base: &str) -> TestServer {
        TestServer {
            base: base.to_string(),
            server: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            admitted: Mutex::new(Vec::new()),
        }
    }
}

/// A mock pool config with the given pool/queue/mock knobs.
pub fn mock_config(pool_extra: &str, mock: &str) -> String {
    format!(
        r#"
[server]
keepalive_ms = 200
stream_grace_ms = 60000

[[pools]]
id = "mockpool"
engine = "mock"
model = "mock-model"
{pool_extra}

[pools.mock]
{mock}
"#
    )
}

pub fn task(prompt: &str, max_tokens: u32, priority: &str) -> Value {
    json!({
        "workload": "completion",
        "model_ref": "mock-model",
        "priority": priority,
        "prompt": prompt,
        "max_tokens": max_tokens,
    })
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post_raw(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/tasks"))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Submit and expect 202; returns the task id.
    pub async fn submit(&self, body: &Value) -> (String, Value) {
        let r = self.post_raw(body).await;
        assert_eq!(r.status(), 202, "submit failed: {:?}", r.text().await);
        let v: Value = r.json().await.unwrap();
        let id = v["task_id"].as_str().unwrap().to_string();
        self.admitted.lock().unwrap().push(id.clone());
        (id, v)
    }

    /// Record a task admitted outside `submit` (e.g. by a raw post).
    pub fn track(&self, id: &str) {
        self.admitted.lock().unwrap().push(id.to_string());
    }

    pub async fn stream_response(&self, id: &str, last_event_id: Option<u64>) -> reqwest::Response {
        let mut rb = self.http.get(self.url(&format!("/v1/tasks/{id}/stream")));
        if let Some(l) = last_event_id {
            rb = rb.header("Last-Event-ID", l.to_string());
        }
        rb.send().await.unwrap()
    }

    /// Read a task's stream to its end (bounded by a timeout).
    pub async fn stream(&self, id: &str, last_event_id: Option<u64>) -> Vec<SseFrame> {
        let r = self.stream_response(id, last_event_id).await;
        assert_eq!(r.status(), 200);
        let text = tokio::time::timeout(Duration::from_secs(20), r.text())
            .await
            .expect("stream ends in time")
            .unwrap();
        parse_sse(&text)
    }

    pub async fn cancel(&self, id: &str) -> reqwest::StatusCode {
        self.http
            .post(self.url(&format!("/v1/tasks/{id}/cancel")))
            .send()
            .await
            .unwrap()
            .status()
    }

    /// GET a path and decode its JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// GET a path with an API key and decode its JSON body.
    pub async fn get_json_as(&self, path: &str, key: &str) -> Value {
        self.http
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn status(&self, id: &str) -> Value {
        self.get_json(&format!("/v1/tasks/{id}")).await
    }

    /// Poll the task status until `pred` holds (bounded).
    pub async fn wait_state(&self, id: &str, state: &str) -> Value {
        for _ in 0..500 {
            let s = self.status(id).await;
            if s["state"] == state {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("task {id} never reached state {state}");
    }

    /// The sum of the `/metrics` samples whose line starts with `prefix`.
    pub async fn metric_sum(&self, prefix: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Every task admitted in this test has exactly one terminal frame, last.
    pub async fn assert_all_terminated(&self) {
        let ids = self.admitted.lock().unwrap().clone();
        for id in ids {
            let frames = self.stream(&id, None).await;
            assert_terminated(&frames, &id);
        }
    }
}

pub fn assert_terminated(frames: &[SseFrame], id: &str) {
    let terminals = frames
        .iter()
        .filter(|f| f.event == "end" || f.event == "error")
        .count();
    assert_eq!(
        terminals, 1,
        "task {id} must have exactly one terminal frame: {frames:?}"
    );
    let last = frames.last().unwrap();
    assert!(
        last.event == "end" || last.event == "error",
        "task {id}: terminal frame is not last"
    );
}

/// Parse an SSE body into frames (comments and keep-alives are skipped).
pub fn parse_sse(text: &str) -> Vec<SseFrame> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let (mut event, mut id, mut data) = (None, None, None);
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event: ") {
                event = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = v.parse().ok();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str(v).expect("data is one JSON line"));
            }
        }
        if let (Some(event), Some(id), Some(data)) = (event, id, data) {
            out.push(SseFrame { event, id, data });
        }
    }
    out
}

/// Assert an ErrorEnvelope body with `code`, and return it.
pub async fn envelope(r: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status().as_u16(), status);
    let cid = r.headers().get("x-correlation-id").cloned();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(v["retriable"].is_boolean());
    assert_eq!(
        v["correlation_id"].as_str(),
        cid.as_ref().and_then(|c| c.to_str().ok()),
        "body and header correlation ids agree"
    );
    v
}

/// Kills and reaps a child process however the test ends.
pub struct Reap(pub std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the orchestratord binary on the config file at `path` (ephemeral loopback
/// port, no self-tests); its process and base URL once it announced it listens.
pub fn spawn_binary_at(path: &std::path::Path) -> (Reap, String) {
    let (child, base, _) = spawn_binary_logged(path, &[]);
    (child, base)
}

/// Like [`spawn_binary_at`], with extra environment and JSON logs; also returns
/// everything the process writes to stderr, as it writes it.
pub fn spawn_binary_logged(
    path: &std::path::Path,
    env: &[(&str, &str)],
) -> (Reap, String, std::sync::Arc<Mutex<String>>) {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_orchestratord"))
        .env("ORCH_STATE_DIR", fresh_state_dir())
        .args([
            "--config",
            path.to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
            "--skip-self-test",
            "--log-format",
            "json",
        ])
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let (mut seen, mut buf) = (String::new(), [0u8; 4096]);
    let t0 = std::time::Instant::now();
    // the whole startup line, up to its newline (a read may stop inside it)
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
    let addr = seen
        .split("listening on http://")
        .nth(1)
        .and_then(|r| r.split(|c: char| c.is_whitespace() || c == '"').next())
        .unwrap_or_else(|| panic!("no startup line: {seen}"))
        .to_string();
    let log = std::sync::Arc::new(Mutex::new(seen));
    // keep draining stderr so the child never blocks on a full pipe
    let sink = log.clone();
    std::thread::spawn(move || loop {
        match err.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => sink
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    });
    (Reap(child), format!("http://{addr}"), log)
}

/// An `[[auth.keys]]` entry accepting `key` (only its digest is written).
pub fn key_entry(key: &str, tenant: &str, role: &str) -> String {
    format!(
        "[[auth.keys]]\nsha256 = \"{}\"\ntenant = \"{tenant}\"\nrole = \"{role}\"\n",
        orch_services::auth::digest_hex(key)
    )
}

/// Write `text` to a fresh config file under the temp dir (named after `name`).
pub fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!(
        "orch-{name}-{}-{}.toml",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::write(&p, text).unwrap();
    p
}
