//! Mock-engine scenarios: added latency, CPU per relayed token, open-stream memory.
//! The orchestrator runs as its own process (the release `orchestratord` binary next
//! to this one); baselines run the same mock engine without the orchestrator.

use crate::stats::{cpu_seconds, rss_mib, summary};
use adapter_api::{EngineEvent, EngineRequest, WorkerAdapter};
use adapter_mock::{MockConfig, MockEngine};
use futures_util::StreamExt;
use orch_domain::{Priority, TaskId, TaskRequest};
use orch_services::{Orchestrator, PoolSpec, ReadItem, ServiceConfig};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RATE_PER_SEC: u64 = 1000;

fn sibling(name: &str) -> std::path::PathBuf {
    let me = std::env::current_exe().expect("current exe");
    me.parent().expect("exe dir").join(name)
}

/// Start orchestratord (release binary) on a free port with a mock pool.
pub fn spawn_server(mock: &str, pool: &str) -> (Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = format!(
        "[server]\nkeepalive_ms = 15000\nstream_grace_ms = 600000\n[[pools]]\nid = \"bench\"\nengine = \"mock\"\nmodel = \"mock-model\"\nmax_tokens_out = 100000\n{pool}\n[pools.mock]\nctx_max = 1000000\n{mock}\n"
    );
    let path = std::env::temp_dir().join(format!("orch-bench-{port}.toml"));
    std::fs::File::create(&path)
        .unwrap()
        .write_all(cfg.as_bytes())
        .unwrap();
    let bin = sibling("orchestratord");
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 20000 2>/dev/null; RUST_LOG=warn exec {} --config {} --addr 127.0.0.1:{port} --skip-self-test",
            bin.display(),
            path.display()
        ))
        .stderr(Stdio::null())
        .spawn()
        .expect("orchestratord release binary next to orch-bench (cargo build --release)");
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    (child, base)
}

fn proc_cpu(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ut: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    (ut + st) / 100.0
}

fn body(prompt: &str, max_tokens: u32) -> serde_json::Value {
    serde_json::json!({"workload":"completion","model_ref":"mock-model","priority":"interactive","prompt":prompt,"max_tokens":max_tokens})
}

/// Read an SSE response until the first token frame.
async fn first_token(resp: reqwest::Response) -> bool {
    let mut s = resp.bytes_stream();
    let mut seen = Vec::new();
    while let Some(Ok(c)) = s.next().await {
        seen.extend_from_slice(&c);
        if seen.windows(12).any(|w| w == b"event: token") {
            return true;
        }
    }
    false
}

fn fast_mock() -> MockConfig {
    MockConfig {
        slots: 256,
        tokens_per_sec: 0.0,
        ttft_ms: 0,
        tokens: 4,
        ..MockConfig::default()
    }
}

/// Submit → first token at 1,000 tasks/s: in-process services vs the bare engine,
/// and over HTTP against a separate orchestratord process vs the bare engine.
pub async fn latency() {
    println!(
        "== latency: submit -> first token, open loop at {RATE_PER_SEC} tasks/s, mock ttft 0 =="
    );
    let n = 3000usize;

    // (1) in-process: the services' own added latency
    let engine = Arc::new(MockEngine::new(fast_mock()));
    let direct = run_open_loop(n, {
        let e = engine.clone();
        move |_| {
            let e = e.clone();
            async move {
                let t0 = Instant::now();
                let mut s = e.submit(req()).await.ok()?;
                while let Some(Ok(ev)) = s.next().await {
                    if matches!(ev, EngineEvent::Token { .. }) {
                        return Some(t0.elapsed());
                    }
                }
                None
            }
        }
    })
    .await;
    let orch = Orchestrator::new(ServiceConfig::default());
    orch.create_pool(PoolSpec {
        max_tokens_out: 64,
        ..PoolSpec::new("bench", "mock-model")
    })
    .unwrap();
    orch.attach_replica("bench", "bench-r0", Arc::new(MockEngine::new(fast_mock())))
        .await
        .unwrap();
    let through = run_open_loop(n, {
        let o = orch.clone();
        move |_| {
            let o = o.clone();
            async move {
                let t0 = Instant::now();
                let r = TaskRequest::completion("mock-model", "hello", 4, Priority::Interactive);
                let adm = o.admit(r, "bench").ok()?;
                let mut rd = o.open_stream(adm.task_id, 0).ok()?;
                while let Some(item) = rd.next(Duration::from_secs(5)).await {
                    if let ReadItem::Frames(fs) = item {
                        if fs.iter().any(|f| f.event == "token") {
                            return Some(t0.elapsed());
                        }
                    }
                }
                None
            }
        }
    })
    .await;
    println!("in-process (no HTTP):");
    let (d50, d99) = summary("engine direct", direct);
    let (o50, o99) = summary("orchestrator services", through);
    println!("  added: p50 {:.3} ms, p99 {:.3} ms", o50 - d50, o99 - d99);

    // (2) over HTTP, orchestratord in its own process
    let (mut child, base) = spawn_server(
        "slots = 256\ntokens_per_sec = 0.0\nttft_ms = 0\ntokens = 4",
        "queue_capacity = 4096",
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    let direct_http = crate::mock::direct_engine_server().await;
    let d = run_open_loop(n, {
        let (h, url) = (http.clone(), direct_http.clone());
        move |_| {
            let (h, url) = (h.clone(), url.clone());
            async move {
                let t0 = Instant::now();
                let r = h.post(&url).json(&body("hello", 4)).send().await.ok()?;
                first_token(r).await.then(|| t0.elapsed())
            }
        }
    })
    .await;
    let o = run_open_loop(n, {
        let (h, base) = (http.clone(), base.clone());
        move |_| {
            let (h, base) = (h.clone(), base.clone());
            async move {
                let t0 = Instant::now();
                let r = h
                    .post(format!("{base}/v1/tasks"))
                    .json(&body("hello", 4))
                    .send()
                    .await
                    .ok()?;
                let v: serde_json::Value = r.json().await.ok()?;
                let sse = v["streams"]["sse"].as_str()?.to_string();
                let s = h.get(format!("{base}{sse}")).send().await.ok()?;
                first_token(s).await.then(|| t0.elapsed())
            }
        }
    })
    .await;
    println!("over HTTP (client, orchestratord and engine share 2 cores):");
    let (d50, d99) = summary("engine direct (1 request)", d);
    let (o50, o99) = summary("via orchestratord (POST + stream)", o);
    println!(
        "  added: p50 {:.3} ms, p99 {:.3} ms (includes the second HTTP request)",
        o50 - d50,
        o99 - d99
    );
    let _ = child.kill();
}

fn req() -> EngineRequest {
    EngineRequest {
        task_id: TaskId::new_random(),
        prompt: "hello".into(),
        max_tokens: 4,
        seed: 1,
        temperature: None,
        top_p: None,
        stop: vec![],
        slot: None,
        cache_prompt: false,
    }
}

/// Fire `n` jobs at RATE_PER_SEC (open loop) and collect their latencies.
async fn run_open_loop<F, Fut>(n: usize, job: F) -> Vec<Duration>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Option<Duration>> + Send + 'static,
{
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_SEC));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        tick.tick().await;
        handles.push(tokio::spawn(job(i)));
    }
    let mut out = Vec::with_capacity(n);
    let mut failed = 0;
    for h in handles {
        match h.await {
            Ok(Some(d)) => out.push(d),
            _ => failed += 1,
        }
    }
    if failed > 0 {
        println!("  ({failed} of {n} jobs failed)");
    }
    out
}

/// A bare HTTP front for the mock engine (the baseline): POST → SSE token frames.
pub async fn direct_engine_server() -> String {
    use axum::response::IntoResponse;
    let engine = Arc::new(MockEngine::new(fast_mock()));
    let app = axum::Router::new().route(
        "/generate",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let e = engine.clone();
            async move {
                let mut r = req();
                r.max_tokens = v["max_tokens"].as_u64().unwrap_or(4) as u32;
                let s = match e.submit(r).await {
                    Ok(s) => s,
                    Err(_) => return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response(),
                };
                let body = s.map(|ev| {
                    let line = match ev {
                        Ok(EngineEvent::Token { text, index }) => format!(
                            "event: token\ndata: {}\n\n",
                            serde_json::json!({"t": text, "i": index})
                        ),
                        Ok(EngineEvent::End(_)) => "event: end\ndata: {}\n\n".to_string(),
                        Err(_) => "event: error\ndata: {}\n\n".to_string(),
                    };
                    Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line))
                });
                let mut resp = axum::response::Response::new(axum::body::Body::from_stream(body));
                resp.headers_mut()
                    .insert("content-type", "text/event-stream".parse().unwrap());
                resp
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}/generate")
}

/// CPU per relayed token: orchestratord process CPU minus the bare engine's CPU for the
/// same tokens, divided by the tokens relayed over HTTP/SSE.
pub async fn cpu_per_token() {
    let (tasks, tokens, conc) = (400usize, 1000u32, 32usize);
    println!("== cpu per relayed token: {tasks} tasks x {tokens} tokens, {conc} concurrent ==");
    // baseline: the mock engine alone producing the same tokens
    let engine = Arc::new(MockEngine::new(MockConfig {
        slots: 256,
        tokens_per_sec: 0.0,
        ttft_ms: 0,
        tokens,
        ..MockConfig::default()
    }));
    let c0 = cpu_seconds();
    let t0 = Instant::now();
    futures_util::stream::iter(0..tasks)
        .for_each_concurrent(conc, |_| {
            let e = engine.clone();
            async move {
                let mut r = req();
                r.max_tokens = tokens;
                if let Ok(mut s) = e.submit(r).await {
                    while s.next().await.is_some() {}
                }
            }
        })
        .await;
    let engine_cpu = cpu_seconds() - c0;
    let engine_wall = t0.elapsed();

    let (mut child, base) = spawn_server(
        &format!("slots = 256\ntokens_per_sec = 0.0\nttft_ms = 0\ntokens = {tokens}"),
        "queue_capacity = 4096",
    );
    let http = reqwest::Client::new();
    let pid = child.id();
    let s0 = proc_cpu(pid);
    let t0 = Instant::now();
    let relayed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    futures_util::stream::iter(0..tasks)
        .for_each_concurrent(conc, |_| {
            let (h, base, relayed) = (http.clone(), base.clone(), relayed.clone());
            async move {
                let Ok(r) = h
                    .post(format!("{base}/v1/tasks"))
                    .json(&body("hello", tokens))
                    .send()
                    .await
                else {
                    return;
                };
                let Ok(v) = r.json::<serde_json::Value>().await else {
                    return;
                };
                let Some(sse) = v["streams"]["sse"].as_str() else {
                    return;
                };
                let Ok(s) = h.get(format!("{base}{sse}")).send().await else {
                    return;
                };
                let Ok(text) = s.text().await else { return };
                let n = text.matches("event: token").count() as u64;
                relayed.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        })
        .await;
    let server_cpu = proc_cpu(pid) - s0;
    let wall = t0.elapsed();
    let relayed = relayed.load(std::sync::atomic::Ordering::Relaxed);
    let _ = child.kill();
    let per_token_us = (server_cpu - engine_cpu) / relayed as f64 * 1e6;
    println!(
        "  bare engine: {engine_cpu:.2} s CPU for {} tokens ({engine_wall:?} wall)",
        tasks as u64 * u64::from(tokens)
    );
    println!("  orchestratord process: {server_cpu:.2} s CPU for {relayed} relayed tokens ({wall:?} wall)");
    println!("  orchestrator CPU per relayed token (process - engine): {per_token_us:.2} us");
}

/// 10,000 concurrent open SSE streams against an orchestratord process: its RSS.
pub async fn open_streams() {
    let n = 10_000usize;
    println!("== {n} concurrent open streams: orchestratord RSS ==");
    let (mut child, base) = spawn_server(
        "slots = 20000\ntokens_per_sec = 0.2\nttft_ms = 0\ntokens = 1000",
        "queue_capacity = 20000",
    );
    let pid = child.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = rss_mib(pid);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let ids: Vec<String> = futures_util::stream::iter(0..n)
        .map(|_| {
            let (h, base) = (http.clone(), base.clone());
            async move {
                let r = h
                    .post(format!("{base}/v1/tasks"))
                    .json(&body("hold the line", 1000))
                    .send()
                    .await
                    .ok()?;
                let v: serde_json::Value = r.json().await.ok()?;
                Some(v["task_id"].as_str()?.to_string())
            }
        })
        .buffer_unordered(64)
        .filter_map(|x| async move { x })
        .collect()
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let admitted = rss_mib(pid);
    let addr = base.trim_start_matches("http://").to_string();
    let mut conns = Vec::with_capacity(ids.len());
    for id in &ids {
        let Ok(mut c) = tokio::net::TcpStream::connect(&addr).await else {
            break;
        };
        let req = format!("GET /v1/tasks/{id}/stream HTTP/1.1\r\nhost: bench\r\n\r\n");
        if c.write_all(req.as_bytes()).await.is_err() {
            break;
        }
        conns.push(c);
    }
    // read each stream's first chunk: the stream is open and serving
    let mut open = 0;
    for c in conns.iter_mut() {
        let mut buf = [0u8; 2048];
        if let Ok(Ok(k)) = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await {
            if k > 0 && buf[..k].starts_with(b"HTTP/1.1 200") {
                open += 1;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded = rss_mib(pid);
    println!(
        "  admitted {} tasks, {open} streams open concurrently",
        ids.len()
    );
    println!("  orchestratord RSS: idle {idle:.1} MiB, {} running tasks {admitted:.1} MiB, plus {open} open streams {loaded:.1} MiB (target <= 200 MiB)", ids.len());
    drop(conns);
    let _ = child.kill();
}
