//! The same prompts sent directly to llama-server and through orchestratord, against
//! the same replica and slots, in one run: aggregate tokens/s and time to first token.

use crate::stats::summary;
use futures_util::StreamExt;
use std::time::{Duration, Instant};

const PROMPTS: &[&str] = &[
    "The history of the lighthouse begins",
    "Count from one to twenty: 1, 2, 3,",
    "A recipe for bread: first,",
    "The three laws of motion are",
    "Once upon a time in a small village",
    "The secret code is 5521. Repeat the secret code: The secret code is",
];

/// Count the SSE frames that carry a token, and the time to the first one.
async fn count_tokens(
    r: reqwest::Response,
    t: Instant,
    is_token: fn(&str) -> bool,
) -> (u64, Duration) {
    let mut s = r.bytes_stream();
    let (mut n, mut ttft, mut buf) = (0u64, None, String::new());
    while let Some(Ok(c)) = s.next().await {
        buf.push_str(&String::from_utf8_lossy(&c));
        while let Some(i) = buf.find("\n\n") {
            let frame: String = buf.drain(..i + 2).collect();
            if is_token(&frame) {
                n += 1;
                ttft.get_or_insert_with(|| t.elapsed());
            }
        }
    }
    (n, ttft.unwrap_or_default())
}

struct Run {
    tokens: u64,
    wall: Duration,
    ttft: Vec<Duration>,
}

/// Run every prompt `rounds` times at concurrency `conc` through `job`, which returns
/// (tokens, time to first token) per request.
async fn run_jobs<F, Fut>(conc: usize, rounds: usize, job: F) -> Run
where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = (u64, Duration)>,
{
    let t0 = Instant::now();
    let jobs = PROMPTS.iter().cycle().take(PROMPTS.len() * rounds).copied();
    let res: Vec<(u64, Duration)> = futures_util::stream::iter(jobs)
        .map(job)
        .buffer_unordered(conc)
        .collect()
        .await;
    Run {
        tokens: res.iter().map(|r| r.0).sum(),
        wall: t0.elapsed(),
        ttft: res.iter().map(|r| r.1).collect(),
    }
}

async fn direct(
    http: &reqwest::Client,
    endpoint: &str,
    max_tokens: u32,
    conc: usize,
    rounds: usize,
) -> Run {
    run_jobs(conc, rounds, |p| async move {
        let t = Instant::now();
        let body = serde_json::json!({"prompt": p, "n_predict": max_tokens, "stream": true, "temperature": 0.0, "cache_prompt": true});
        let r = http.post(format!("{endpoint}/completion")).json(&body).send().await.unwrap();
        count_tokens(r, t, |f| f.contains("\"stop\":false") && !f.contains("\"content\":\"\"")).await
    })
    .await
}

async fn via_orch(
    http: &reqwest::Client,
    base: &str,
    max_tokens: u32,
    conc: usize,
    rounds: usize,
) -> Run {
    run_jobs(conc, rounds, |p| async move {
        let t = Instant::now();
        let r = submit_greedy(http, base, p, max_tokens).await;
        count_tokens(r, t, |f| f.starts_with("event: token")).await
    })
    .await
}

/// Submit a greedy OrchQueue task for the bundled model and open its stream.
pub async fn submit_greedy(
    http: &reqwest::Client,
    base: &str,
    prompt: &str,
    max_tokens: u32,
) -> reqwest::Response {
    let body = serde_json::json!({"workload": "completion", "model_ref": "gemma-3-270m",
        "priority": "interactive", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0});
    let v: serde_json::Value = http
        .post(format!("{base}/v1/tasks"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sse = v["streams"]["sse"].as_str().unwrap().to_string();
    http.get(format!("{base}{sse}")).send().await.unwrap()
}

/// Start orchestratord in this process with `cfg` (a real llama.cpp pool, no
/// self-tests); its base URL, and an HTTP client without pooled connections
/// (llama-server closes each streamed connection).
pub async fn start_in_process(
    cfg: orchestratord::Config,
) -> (orchestratord::Server, String, reqwest::Client) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = orchestratord::start_with(
        cfg.with_temp_state(),
        listener,
        None,
        orchestratord::StartOptions {
            skip_self_test: true,
        },
    )
    .await
    .expect("llama pool starts (run scripts/provision.sh first)");
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    (server, base, http)
}

/// Direct and via runs alternate this many times (the order flips each time), so
/// drift and warm-up noise fall on both paths alike.
const ALTERNATIONS: usize = 6;

pub async fn throughput() {
    let (max_tokens, slots, rounds) = (48u32, 2usize, 1usize);
    println!("== llama.cpp: direct vs through orchestratord (1 replica, {slots} slots, {} prompts x {max_tokens} tokens per run) ==", PROMPTS.len() * rounds);
    let cfg = format!(
        "[[pools]]\nid = \"llama\"\nengine = \"llamacpp\"\nmodel = \"gemma-3-270m\"\nmax_tokens_out = 512\n[pools.llamacpp]\n# the direct path reaches this engine itself\nengine_api_key = false\nctx = 4096\nslots = {slots}\nthreads = 2\n"
    );
    let (server, base, http) = start_in_process(orchestratord::Config::parse(&cfg).unwrap()).await;
    let endpoint = server.orch.pool_views()[0].replicas[0]
        .endpoint
        .clone()
        .unwrap();
    // warm-up both paths
    direct(&http, &endpoint, 8, slots, 1).await;
    via_orch(&http, &base, 8, slots, 1).await;
    let (mut dt, mut ot) = ((0u64, Duration::ZERO), (0u64, Duration::ZERO));
    let (mut dttft, mut ottft) = (Vec::new(), Vec::new());
    for i in 0..ALTERNATIONS {
        let (d, o) = if i % 2 == 0 {
            let d = direct(&http, &endpoint, max_tokens, slots, rounds).await;
            (d, via_orch(&http, &base, max_tokens, slots, rounds).await)
        } else {
            let o = via_orch(&http, &base, max_tokens, slots, rounds).await;
            (direct(&http, &endpoint, max_tokens, slots, rounds).await, o)
        };
        println!(
            "  alternation {}: direct {:.1} tokens/s, via {:.1} tokens/s",
            i + 1,
            d.tokens as f64 / d.wall.as_secs_f64(),
            o.tokens as f64 / o.wall.as_secs_f64()
        );
        dt = (dt.0 + d.tokens, dt.1 + d.wall);
        ot = (ot.0 + o.tokens, ot.1 + o.wall);
        dttft.extend(d.ttft);
        ottft.extend(o.ttft);
    }
    let dtps = dt.0 as f64 / dt.1.as_secs_f64();
    let otps = ot.0 as f64 / ot.1.as_secs_f64();
    println!(
        "  direct:   {} tokens in {:.2} s = {dtps:.1} tokens/s",
        dt.0,
        dt.1.as_secs_f64()
    );
    println!(
        "  via orch: {} tokens in {:.2} s = {otps:.1} tokens/s",
        ot.0,
        ot.1.as_secs_f64()
    );
    println!(
        "  throughput ratio (via / direct): {:.3} (target >= 0.99)",
        otps / dtps
    );
    let (d50, _) = summary("ttft direct", dttft);
    let (o50, _) = summary("ttft via orchestratord", ottft);
    println!("  ttft p50 added: {:.2} ms", o50 - d50);
    server.shutdown().await;
}
