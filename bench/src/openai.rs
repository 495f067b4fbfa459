//! Time to first token and decode rate of OpenAI chat completions (streamed, one at a
//! time) in front of one llama-server, four ways in the same run: **direct** (the
//! engine's own `/v1/chat/completions`), orchestratord's OpenAI door onto its
//! **llamacpp** pool (the same replica; template via `/apply-template`), the door onto
//! an **openai** pool pointed at that replica's `/v1`, and **LiteLLM**'s proxy
//! (`scripts/provision-bench.sh` installs it; left out with a note when absent). Each
//! round sends one request per path, rotating which goes first.

use crate::stats::pct;
use futures_util::StreamExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 40;
const MAX_TOKENS: u32 = 16;
const PROMPTS: &[&str] = &[
    "Write one sentence about lighthouses.",
    "Name three colors.",
    "The secret code is 5521. Repeat the secret code.",
    "Say hello to a friend.",
    "What is the capital of France?",
];

struct Path {
    name: &'static str,
    base: String,
    key: Option<String>,
    ttft: Vec<Duration>,
    tps: Vec<f64>,
    failed: usize,
}

/// One streamed chat completion: (time to first content, decode tokens/s).
async fn one(http: &reqwest::Client, p: &Path, prompt: &str) -> Option<(Duration, f64)> {
    let body = serde_json::json!({"model": "gemma-3-270m", "stream": true, "max_tokens": MAX_TOKENS,
        "temperature": 0, "messages": [{"role": "user", "content": prompt}]});
    let t0 = Instant::now();
    let mut rb = http
        .post(format!("{}/v1/chat/completions", p.base))
        .json(&body);
    if let Some(k) = &p.key {
        rb = rb.bearer_auth(k);
    }
    let r = rb.send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    let mut s = r.bytes_stream();
    let (mut first, mut last, mut n, mut buf) = (None, t0, 0u32, String::new());
    while let Some(Ok(c)) = s.next().await {
        buf.push_str(&String::from_utf8_lossy(&c));
        while let Some(i) = buf.find("\n\n") {
            let frame: String = buf.drain(..i + 2).collect();
            let Some(data) = frame.trim().strip_prefix("data: ") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                continue;
            };
            let content = v["choices"][0]["delta"]["content"].as_str().unwrap_or("");
            if !content.is_empty() {
                n += 1;
                last = Instant::now();
                first.get_or_insert(last);
            }
        }
    }
    let first = first?;
    let decode = last.duration_since(first).as_secs_f64();
    let tps = if n > 1 && decode > 0.0 {
        f64::from(n - 1) / decode
    } else {
        f64::NAN
    };
    Some((first.duration_since(t0), tps))
}

fn litellm() -> Option<std::path::PathBuf> {
    let cache = std::env::var_os("ORCH_CACHE_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| std::path::PathBuf::from(h).join(".cache/orchestratord"))
        })?;
    let p = cache.join("venv-litellm/bin/litellm");
    p.is_file().then_some(p)
}

struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_litellm(bin: &std::path::Path, upstream: &str) -> Option<(Reap, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .ok()?
        .port();
    let cfg = std::env::temp_dir().join(format!("litellm-bench-{port}.yaml"));
    std::fs::write(
        &cfg,
        format!(
            "model_list:\n  - model_name: gemma-3-270m\n    litellm_params:\n      model: openai/gemma-3-270m\n      api_base: {upstream}/v1\n      api_key: none\n"
        ),
    )
    .ok()?;
    let child = Command::new(bin)
        .args([
            "--config",
            cfg.to_str()?,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .env("LITELLM_MASTER_KEY", "sk-bench")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let child = Reap(child);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..240 {
        if let Ok(r) = http.get(format!("{base}/health/liveliness")).send().await {
            if r.status().is_success() {
                return Some((child, base));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

pub async fn run() {
    println!("== OpenAI chat completions in front of one llama-server: direct vs orchestratord vs LiteLLM ==");
    let cfg = "[[pools]]\nid = \"llama\"\nengine = \"llamacpp\"\nmodel = \"gemma-3-270m\"\nmax_tokens_out = 512\n[pools.llamacpp]\n# the direct path and LiteLLM reach this engine themselves\nengine_api_key = false\nctx = 4096\nslots = 2\nthreads = 2\n";
    let cfg = orchestratord::Config::parse(cfg).unwrap().with_temp_state();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let opts = orchestratord::StartOptions {
        skip_self_test: true,
    };
    let door = orchestratord::start_with(cfg, l, None, opts.clone())
        .await
        .expect("llama pool starts (run scripts/provision.sh first)");
    let endpoint = door.orch.pool_views()[0].replicas[0]
        .endpoint
        .clone()
        .unwrap();
    let cfg2 = format!(
        "[[pools]]\nid = \"up\"\nengine = \"openai\"\nmodel = \"gemma-3-270m\"\nreplicas = 1\n[pools.openai]\nurls = [\"{endpoint}\"]\nslots = 2\n"
    );
    let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = orchestratord::start_with(
        orchestratord::Config::parse(&cfg2)
            .unwrap()
            .with_temp_state(),
        l2,
        None,
        opts,
    )
    .await
    .expect("openai pool starts");
    let mut paths = vec![
        Path {
            name: "direct llama-server",
            base: endpoint.clone(),
            key: None,
            ttft: vec![],
            tps: vec![],
            failed: 0,
        },
        Path {
            name: "orchestratord, llamacpp pool",
            base: format!("http://{}", door.addr),
            key: None,
            ttft: vec![],
            tps: vec![],
            failed: 0,
        },
        Path {
            name: "orchestratord, openai pool",
            base: format!("http://{}", up.addr),
            key: None,
            ttft: vec![],
            tps: vec![],
            failed: 0,
        },
    ];
    let _litellm = match litellm() {
        Some(bin) => match start_litellm(&bin, &endpoint).await {
            Some((child, base)) => {
                paths.push(Path {
                    name: "LiteLLM proxy",
                    base,
                    key: Some("sk-bench".into()),
                    ttft: vec![],
                    tps: vec![],
                    failed: 0,
                });
                Some(child)
            }
            None => {
                println!("  (LiteLLM did not start: left out)");
                None
            }
        },
        None => {
            println!("  (LiteLLM not installed: run scripts/provision-bench.sh; left out)");
            None
        }
    };
    // llama-server closes streamed connections: no pooling on any path
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for p in &paths {
        for w in PROMPTS {
            one(&http, p, w).await; // warm-up
        }
    }
    for r in 0..ROUNDS {
        let prompt = PROMPTS[r % PROMPTS.len()];
        for j in 0..paths.len() {
            let k = (r + j) % paths.len();
            match one(&http, &paths[k], prompt).await {
                Some((t, tps)) => {
                    paths[k].ttft.push(t);
                    if tps.is_finite() {
                        paths[k].tps.push(tps);
                    }
                }
                None => paths[k].failed += 1,
            }
        }
    }
    let direct50 = {
        let mut v = paths[0].ttft.clone();
        v.sort();
        pct(&v, 0.5)
    };
    println!();
    println!("{ROUNDS} rounds, one streamed chat completion ({MAX_TOKENS} tokens max) per path per round, rotating order.");
    println!();
    println!("| path | TTFT p50 | TTFT p90 | **added p50 vs direct** | decode tokens/s (mean) | failed |");
    println!("|---|---|---|---|---|---|");
    for p in &paths {
        let mut v = p.ttft.clone();
        v.sort();
        let (p50, p90) = (pct(&v, 0.5), pct(&v, 0.9));
        let tps = p.tps.iter().sum::<f64>() / p.tps.len().max(1) as f64;
        println!(
            "| {} | {p50:.1} ms | {p90:.1} ms | **{:+.1} ms** | {tps:.1} | {} |",
            p.name,
            p50 - direct50,
            p.failed
        );
    }
    up.shutdown().await;
    door.shutdown().await;
}
