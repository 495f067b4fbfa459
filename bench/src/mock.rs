//! Mock-engine scenarios, each orchestratord vs its floor in the same run: CPU per
//! relayed token (`cpu`), RSS with 10,000 open streams (`streams`), added submit →
//! first-token latency (`latency`).
//!
//! Both servers are separate processes on loopback: orchestratord (the release binary
//! next to this one, with a mock pool) and the floor (`orch-bench floor-server`, see
//! `floor.rs`), paced alike from one [`Pace`]. The client code path is the same for
//! both: `POST /v1/tasks`, then `GET` the `streams.sse` path it returns.

pub mod admission;
pub mod console;
pub mod cpu;
pub mod large;
pub mod latency;
pub mod ledger;
pub mod streams;

pub use crate::floor::Pace;
use futures_util::StreamExt;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn sibling(name: &str) -> std::path::PathBuf {
    let me = std::env::current_exe().expect("current exe");
    me.parent().expect("exe dir").join(name)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Run `cmd` under `sh` with the fd limit raised (10,000 streams need it).
fn spawn_sh(cmd: String, what: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n 20000 2>/dev/null; exec {cmd}"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"))
}

fn config_path(port: u16) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("orch-bench-{port}.toml"))
}

/// Start orchestratord (release binary) on a free port with a mock pool; its config
/// file is `config_path(port)`.
/// `top` is added before the rest (e.g. `[auth]` and `[tenants]` tables).
pub fn spawn_server(top: &str, mock: &str, pool: &str) -> (Child, String) {
    spawn_with_config(&format!(
        "{top}\n[server]\nkeepalive_ms = 15000\nstream_grace_ms = 600000\nmax_connections = 50000\nmax_unauthenticated_per_peer = 0\n[[pools]]\nid = \"bench\"\nengine = \"mock\"\nmodel = \"mock-model\"\nmax_tokens_out = 100000\n{pool}\n[pools.mock]\nctx_max = 1000000\n{mock}\n"
    ))
}

/// Start orchestratord (release binary) on a free port with the config `cfg`.
pub fn spawn_with_config(cfg: &str) -> (Child, String) {
    let port = free_port();
    let path = config_path(port);
    std::fs::write(&path, cfg).expect("write orchestratord config");
    let bin = sibling("orchestratord");
    // a state directory of its own (the account store admits one server per dir)
    let state = std::env::temp_dir().join(format!("orch-bench-state-{port}"));
    let _ = std::fs::remove_dir_all(&state);
    let cmd = format!(
        "env RUST_LOG=warn ORCH_STATE_DIR={} {} --config {} --addr 127.0.0.1:{port} --skip-self-test",
        state.display(),
        bin.display(),
        path.display()
    );
    let child = spawn_sh(
        cmd,
        "orchestratord (release binary next to orch-bench: cargo build --release)",
    );
    (child, format!("http://127.0.0.1:{port}"))
}

/// Start the floor server (this binary, `floor-server`) on a free port at `pace`.
pub fn spawn_floor(pace: &Pace) -> (Child, String) {
    let port = free_port();
    let me = std::env::current_exe().expect("current exe");
    let cmd = format!(
        "{} floor-server --addr 127.0.0.1:{port} {}",
        me.display(),
        pace.args()
    );
    (
        spawn_sh(cmd, "floor-server"),
        format!("http://127.0.0.1:{port}"),
    )
}

/// Block until `base` answers an HTTP request (any status): the server is serving.
fn wait_http(base: &str) {
    let addr = base.trim_start_matches("http://");
    // a spawned engine loads its model before the server listens
    for _ in 0..2400 {
        if let Ok(mut c) = std::net::TcpStream::connect(addr) {
            let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
            let req = "GET /healthz HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n";
            let mut buf = [0u8; 16];
            if c.write_all(req.as_bytes()).is_ok() && matches!(c.read(&mut buf), Ok(k) if k > 0) {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("server at {base} did not start");
}

/// A server process under test; killed and reaped when dropped.
pub struct Server {
    pub name: &'static str,
    pub base: String,
    child: Child,
}

impl Server {
    pub fn floor(pace: &Pace) -> Self {
        let (child, base) = spawn_floor(pace);
        wait_http(&base);
        Self {
            name: "floor",
            base,
            child,
        }
    }

    pub fn orchestratord(pace: &Pace, slots: u32, queue_capacity: u32) -> Self {
        Self::orchestratord_with(
            "orchestratord",
            "",
            &pace.mock_toml(slots),
            &format!("queue_capacity = {queue_capacity}"),
        )
    }

    /// orchestratord with a whole config of its own.
    pub fn orchestratord_config(name: &'static str, cfg: &str) -> Self {
        let (child, base) = spawn_with_config(cfg);
        wait_http(&base);
        if let Some(port) = base.rsplit(':').next().and_then(|p| p.parse().ok()) {
            let _ = std::fs::remove_file(config_path(port));
        }
        Self { name, base, child }
    }

    /// orchestratord with extra config: `top` tables and `pool` keys.
    pub fn orchestratord_with(name: &'static str, top: &str, mock: &str, pool: &str) -> Self {
        let (child, base) = spawn_server(top, mock, pool);
        wait_http(&base);
        // read at startup only: serving means it is no longer needed
        if let Some(port) = base.rsplit(':').next().and_then(|p| p.parse().ok()) {
            let _ = std::fs::remove_file(config_path(port));
        }
        Self { name, base, child }
    }

    pub fn cpu_seconds(&self) -> f64 {
        crate::stats::proc_cpu_seconds(self.child.id())
    }

    /// The process id (for `perf record -p`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss_mib(&self) -> f64 {
        crate::stats::rss_mib(self.child.id())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client(idle_per_host: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(idle_per_host)
        .build()
        .expect("http client")
}

/// `POST /v1/tasks`; the task id and its SSE path from the 202.
pub async fn submit(h: &reqwest::Client, base: &str, max_tokens: u32) -> Option<(String, String)> {
    let body = serde_json::json!({"workload": "completion", "model_ref": "mock-model",
        "priority": "interactive", "prompt": "hello", "max_tokens": max_tokens});
    submit_body(h, base, serde_json::to_vec(&body).ok()?.into()).await
}

/// `POST /v1/tasks` with a JSON body made beforehand; the task id and its SSE path.
pub async fn submit_body(
    h: &reqwest::Client,
    base: &str,
    body: bytes::Bytes,
) -> Option<(String, String)> {
    let r = h
        .post(format!("{base}/v1/tasks"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .ok()?;
    if r.status() != reqwest::StatusCode::ACCEPTED {
        return None;
    }
    let v: serde_json::Value = r.json().await.ok()?;
    Some((
        v["task_id"].as_str()?.to_string(),
        v["streams"]["sse"].as_str()?.to_string(),
    ))
}

/// Submit a task and open its stream (the common client path of every scenario).
pub async fn submit_and_open(
    h: &reqwest::Client,
    base: &str,
    max_tokens: u32,
) -> Option<reqwest::Response> {
    let (_, sse) = submit(h, base, max_tokens).await?;
    let r = h.get(format!("{base}{sse}")).send().await.ok()?;
    r.status().is_success().then_some(r)
}

const TOKEN: &[u8] = b"event: token";

/// Read an SSE response until the first token frame.
pub async fn first_token(resp: reqwest::Response) -> bool {
    let mut s = resp.bytes_stream();
    let mut seen = Vec::new();
    while let Some(Ok(c)) = s.next().await {
        seen.extend_from_slice(&c);
        if seen.windows(TOKEN.len()).any(|w| w == TOKEN) {
            return true;
        }
    }
    false
}

/// Read an SSE response to its end; the number of token frames.
pub async fn count_tokens(resp: reqwest::Response) -> u64 {
    let mut s = resp.bytes_stream();
    let (mut n, mut carry) = (0u64, Vec::new());
    while let Some(Ok(c)) = s.next().await {
        carry.extend_from_slice(&c);
        n += carry.windows(TOKEN.len()).filter(|w| *w == TOKEN).count() as u64;
        // keep less than one marker: a marker split across chunks is counted once
        let keep = carry.len().min(TOKEN.len() - 1);
        carry.drain(..carry.len() - keep);
    }
    n
}

/// Fire `n` jobs at `rate` per second (open loop) and collect their latencies.
pub async fn run_open_loop<F, Fut>(n: usize, rate: u64, job: F) -> Vec<Duration>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Option<Duration>> + Send + 'static,
{
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
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

/// Server indices for round `r` (0 = floor, 1 = orchestratord): floor first in odd
/// rounds, orchestratord first in even ones, so order effects cancel over the rounds.
pub fn order(r: usize) -> [usize; 2] {
    if r % 2 == 1 {
        [0, 1]
    } else {
        [1, 0]
    }
}

/// Elapsed wall time as seconds, for tables.
pub fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// `76800` → `76,800`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let first = match s.len() % 3 {
        0 => s.len().min(3),
        r => r,
    };
    let mut out = s[..first].to_string();
    for group in s.as_bytes()[first..].chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(group).unwrap_or("?"));
    }
    out
}
