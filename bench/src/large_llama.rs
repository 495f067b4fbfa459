//! Large prompts in front of one real llama-server (issue 28, item 2, the real-engine
//! half): closed loops of 1, 20, 60 and 150 clients, each sending a 256 KiB prompt and
//! reading its stream (4 tokens, temperature 0), direct (`POST /completion`) and
//! through orchestratord (OrchQueue submit, then the SSE stream), alternating in one
//! run against the same engine (orchestratord's spawned replica, 2 slots).
//!
//! What fits this box: the bundled model's context is 32,768 tokens per slot, and a
//! cold prefill runs at about 320 tokens/s on 2 CPU threads. So the prompts are mostly
//! whitespace (an indented document's padding: lines of 1,023 spaces, ~8,700 tokens
//! for 256 KiB), share that prefix (held in both slots' caches after the warm-up) and
//! differ in their last line: every request still carries, parses and tokenizes its
//! whole 256 KiB and prefills only its own tail. By orchestratord's 4-bytes-per-token
//! estimate each is 65,536 tokens, over the context, so admission has the engine count
//! it (`/tokenize`) before admitting it and sends the counted ids, not the text, to
//! `/completion`: the count is part of what is measured.
//!
//! The engine gets an HTTP thread per direct client (`--threads-http 192`): with its
//! default (4 here) 150 direct clients hold every thread, orchestratord's health probe
//! waits behind them and the supervisor restarts a replica it sees as hung.

use crate::llama::start_in_process;
use crate::stats::{p50_p99, proc_cpu_seconds};
use futures_util::StreamExt;
use std::time::{Duration, Instant};

/// Every prompt's size in bytes (prefix + distinct tail).
pub const PROMPT_BYTES: usize = 256 * 1024;
/// The concurrencies run, unless `ORCH_BENCH_CONCURRENCY` names some (`1,20`).
const CONCURRENCY: [usize; 4] = [1, 20, 60, 150];
/// Tasks per side per round, as a multiple of the concurrency.
const TASKS_PER_CLIENT: usize = 2;
const ROUNDS: usize = 2;
const MAX_TOKENS: u32 = 4;

fn prompt(n: usize) -> String {
    let tail = format!("\nRequest {n}: name one colour.");
    let mut p = String::with_capacity(PROMPT_BYTES);
    p.push_str("Document follows.\n");
    while p.len() + tail.len() + 1024 <= PROMPT_BYTES {
        p.push_str(&" ".repeat(1023));
        p.push('\n');
    }
    p.push_str(&" ".repeat(PROMPT_BYTES - p.len() - tail.len()));
    p.push_str(&tail);
    p
}

/// Time from `t0` to the first frame `is_token` accepts; the stream is read to its end.
/// Without such a frame: the stream's last frame (or why it broke off), to report.
pub(crate) async fn first_token(
    r: reqwest::Response,
    t0: Instant,
    is_token: fn(&str) -> bool,
) -> Result<Duration, String> {
    let mut s = r.bytes_stream();
    let (mut ttft, mut buf, mut last) = (None, String::new(), String::from("no frame"));
    while let Some(c) = s.next().await {
        let c = c.map_err(|e| format!("the stream broke off: {e}; last frame: {last}"))?;
        buf.push_str(&String::from_utf8_lossy(&c));
        while let Some(i) = buf.find("\n\n") {
            let frame: String = buf.drain(..i + 2).collect();
            if ttft.is_none() && is_token(&frame) {
                ttft = Some(t0.elapsed());
            }
            last = frame;
        }
    }
    ttft.ok_or_else(|| format!("no token; last frame: {}", last.trim()))
}

/// A request's TTFT, or `None` with the reason on stderr.
fn noted(r: Result<Duration, String>, side: &str) -> Option<Duration> {
    r.inspect_err(|e| eprintln!("  note: {side}: {e}")).ok()
}

fn direct_token(f: &str) -> bool {
    f.contains("\"content\":\"") && !f.contains("\"content\":\"\"")
}

fn orch_token(f: &str) -> bool {
    f.starts_with("event: token")
}

async fn direct(http: &reqwest::Client, engine: &str, p: String) -> Option<Duration> {
    let t0 = Instant::now();
    let body = serde_json::json!({"prompt": p, "n_predict": MAX_TOKENS, "stream": true,
        "temperature": 0.0, "cache_prompt": true});
    let r = async {
        let r = http
            .post(format!("{engine}/completion"))
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        first_token(r, t0, direct_token).await
    };
    noted(r.await, "direct")
}

async fn via(http: &reqwest::Client, base: &str, p: String) -> Option<Duration> {
    noted(via_ttft(http, base, p).await, "orchestratord")
}

async fn via_ttft(http: &reqwest::Client, base: &str, p: String) -> Result<Duration, String> {
    let t0 = Instant::now();
    let body = serde_json::json!({"workload": "completion", "model_ref": "gemma-3-270m",
        "priority": "interactive", "prompt": p, "max_tokens": MAX_TOKENS, "temperature": 0.0});
    let r = http
        .post(format!("{base}/v1/tasks"))
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("submit failed: {e}"))?;
    if r.status() != 202 {
        let status = r.status();
        return Err(format!(
            "submit answered {status}: {}",
            r.text().await.unwrap_or_default()
        ));
    }
    let v: serde_json::Value = r.json().await.map_err(|e| format!("the 202's body: {e}"))?;
    let sse = v["streams"]["sse"]
        .as_str()
        .ok_or("a 202 without a stream")?
        .to_string();
    let s = http
        .get(format!("{base}{sse}"))
        .send()
        .await
        .map_err(|e| format!("the stream's request failed: {e}"))?;
    first_token(s, t0, orch_token).await
}

#[derive(Default)]
struct Side {
    ttft: Vec<Duration>,
    wall: Duration,
    tasks: usize,
    failed: usize,
    /// The engine process's CPU time (all its threads) over this side's rounds.
    engine_cpu: f64,
}

/// The engine's pid, for its CPU time.
static ENGINE_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

fn engine_cpu() -> f64 {
    ENGINE_PID.get().map_or(0.0, |&p| proc_cpu_seconds(p))
}

/// `n` tasks, `conc` at a time; prompts numbered from `*next`.
async fn closed_loop<F, Fut>(conc: usize, n: usize, next: &mut usize, side: &mut Side, job: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Option<Duration>>,
{
    let prompts: Vec<String> = (0..n).map(|i| prompt(*next + i)).collect();
    *next += n;
    let cpu0 = engine_cpu();
    let t0 = Instant::now();
    let got: Vec<Option<Duration>> = futures_util::stream::iter(prompts)
        .map(job)
        .buffer_unordered(conc)
        .collect()
        .await;
    side.wall += t0.elapsed();
    side.engine_cpu += engine_cpu() - cpu0;
    side.tasks += n;
    side.failed += got.iter().filter(|t| t.is_none()).count();
    side.ttft.extend(got.into_iter().flatten());
}

fn pool_toml() -> &'static str {
    "[[pools]]\nid = \"llama\"\nengine = \"llamacpp\"\nmodel = \"gemma-3-270m\"\nmax_tokens_out = 512\nqueue_capacity = 256\n[pools.llamacpp]\n# the direct path reaches this engine itself\nengine_api_key = false\nctx = 65536\nslots = 2\nthreads = 2\n# an HTTP thread per direct client, and some for orchestratord's probes\nextra_args = [\"--threads-http\", \"192\"]\n"
}

pub async fn run() {
    println!("== large prompts in front of one llama-server (2 slots): {PROMPT_BYTES}-byte prompts, shared prefix, {MAX_TOKENS} tokens, closed loops ==");
    let cfg = orchestratord::Config::parse(pool_toml()).expect("bench config");
    let (server, base, fresh) = start_in_process(cfg).await;
    let engine = server.orch.pool_views()[0].replicas[0]
        .endpoint
        .clone()
        .expect("a spawned replica has an endpoint");
    let pid = server.orch.pool_views()[0].replicas[0].pid;
    if let Some(p) = pid {
        let _ = ENGINE_PID.set(p);
    }
    let concurrency: Vec<usize> = std::env::var("ORCH_BENCH_CONCURRENCY")
        .ok()
        .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_else(|| CONCURRENCY.to_vec());
    // llama-server closes each streamed connection: direct requests open fresh ones;
    // an SDK keeps pooled connections to orchestratord
    let pooled = reqwest::Client::new();
    let mut next = 0usize;
    // warm-up: both slots take the shared prefix (a cold prefill each), then both paths
    let t = Instant::now();
    let mut warm = Side::default();
    closed_loop(2, 2, &mut next, &mut warm, |p| direct(&fresh, &engine, p)).await;
    closed_loop(2, 4, &mut next, &mut warm, |p| via(&pooled, &base, p)).await;
    closed_loop(2, 4, &mut next, &mut warm, |p| direct(&fresh, &engine, p)).await;
    println!(
        "  warm-up: {} requests in {:.1} s, {} failed",
        warm.tasks,
        t.elapsed().as_secs_f64(),
        warm.failed
    );
    println!("\n| concurrent | n (each side) | direct TTFT p50 | orchestratord TTFT p50 | **added p50** | direct p99 | orchestratord p99 | added p99 | **added mean** | tasks/s, orchestratord / direct | engine CPU per task, direct / orchestratord |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for conc in concurrency {
        let (mut d, mut o) = (Side::default(), Side::default());
        // one at a time: enough tasks for a p50 (closed loops have `conc` × 2 per round)
        let n = if conc == 1 {
            12
        } else {
            conc * TASKS_PER_CLIENT
        };
        for round in 0..ROUNDS {
            if round % 2 == 0 {
                closed_loop(conc, n, &mut next, &mut d, |p| direct(&fresh, &engine, p)).await;
                closed_loop(conc, n, &mut next, &mut o, |p| via(&pooled, &base, p)).await;
            } else {
                closed_loop(conc, n, &mut next, &mut o, |p| via(&pooled, &base, p)).await;
                closed_loop(conc, n, &mut next, &mut d, |p| direct(&fresh, &engine, p)).await;
            }
        }
        if d.failed + o.failed > 0 {
            eprintln!(
                "  note: {conc} concurrent: {} direct and {} orchestratord requests had no token",
                d.failed, o.failed
            );
        }
        let now = &server.orch.pool_views()[0].replicas[0];
        if now.pid != pid {
            eprintln!(
                "  note: the engine was restarted during {conc} concurrent (pid {:?} -> {:?}): {:?}",
                pid, now.pid, now.last_error
            );
        }
        let (d50, d99) = p50_p99(&d.ttft);
        let (o50, o99) = p50_p99(&o.ttft);
        let rate = |s: &Side| s.tasks as f64 / s.wall.as_secs_f64();
        let mean = |s: &Side| {
            s.ttft.iter().map(Duration::as_secs_f64).sum::<f64>() * 1e3 / s.ttft.len().max(1) as f64
        };
        let cpu = |s: &Side| s.engine_cpu * 1e3 / s.tasks.max(1) as f64;
        println!(
            "| {conc} | {} | {d50:.1} ms | {o50:.1} ms | **{:+.1} ms** | {d99:.1} ms | {o99:.1} ms | {:+.1} ms | **{:+.1} ms** | {:.1} / {:.1} = {:.3} | {:.0} / {:.0} ms |",
            o.ttft.len(),
            o50 - d50,
            o99 - d99,
            mean(&o) - mean(&d),
            rate(&o),
            rate(&d),
            rate(&o) / rate(&d),
            cpu(&d),
            cpu(&o)
        );
    }
    println!("\nTarget: added TTFT p50 <= +2 ms at every concurrency.");
    server.shutdown().await;
}
