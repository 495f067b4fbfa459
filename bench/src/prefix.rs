//! Prefix-aware vs least-loaded placement on two real llama-server replicas (1 slot,
//! 1 thread each), switched live on the same pool between conversations: the second
//! turn's time to first token of conversations that resend a ~1,200-token history
//! without a session id, through OrchQueue and through the OpenAI door; then a uniform
//! load of distinct short prompts under both placements (throughput ratio).

use futures_util::StreamExt;
use orch_services::config::PlacementMode;
use std::time::{Duration, Instant};

const CONVERSATIONS: usize = 4;

fn history(k: usize) -> String {
    (0..60)
        .map(|i| {
            format!(
                "Entry {k}-{i}: the ledger of harbor {k} lists crate {i} as delivered on time. "
            )
        })
        .collect()
}

/// Time to the first token frame of a task submitted through OrchQueue (a failed
/// task stops the benchmark).
async fn orchqueue_ttft(http: &reqwest::Client, base: &str, prompt: &str) -> Duration {
    crate::observed::turn(http, base, prompt).await.0
}

/// Time to the first content chunk of a streamed chat completion (the OpenAI door).
async fn door_ttft(http: &reqwest::Client, base: &str, messages: &serde_json::Value) -> Duration {
    let body = serde_json::json!({"model": "gemma-3-270m", "stream": true, "max_tokens": 4,
        "temperature": 0, "messages": messages});
    let t0 = Instant::now();
    let mut s = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .bytes_stream();
    let (mut ttft, mut buf) = (None, String::new());
    while let Some(Ok(c)) = s.next().await {
        buf.push_str(&String::from_utf8_lossy(&c));
        if ttft.is_none() && buf.contains("\"content\":\"") && !buf.contains("\"content\":\"\"}") {
            ttft = Some(t0.elapsed());
        }
        if buf.contains("[DONE]") {
            break;
        }
    }
    ttft.unwrap_or_default()
}

fn set(server: &orchestratord::Server, cfg: &orchestratord::Config, mode: PlacementMode) {
    let mut spec = orchestratord::settings::pool_spec(&cfg.pools[0]);
    spec.placement = mode;
    server.orch.registry().update_spec(spec).unwrap();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn run() {
    println!("== prefix-aware vs least-loaded placement: 2 llama-server replicas (1 slot, 1 thread each) ==");
    let text = "[[pools]]\nid = \"llama\"\nengine = \"llamacpp\"\nmodel = \"gemma-3-270m\"\nreplicas = 2\nmax_tokens_out = 512\nfirst_token_timeout_ms = 120000\n[pools.llamacpp]\nctx = 4096\nslots = 1\nthreads = 1\n";
    let cfg = orchestratord::Config::parse(text).unwrap();
    let (server, base, http) = crate::llama::start_in_process(cfg.clone()).await;
    let modes = [PlacementMode::Prefix, PlacementMode::LeastLoaded];
    // `ORCH_BENCH_UNIFORM_ONLY=1` skips the conversations (minutes of cold prefill)
    if std::env::var_os("ORCH_BENCH_UNIFORM_ONLY").is_none() {
        conversations(&server, &cfg, &http, &base, &modes).await;
    }
    uniform(&server, &cfg, &http, &base, &modes).await;
    server.shutdown().await;
}

async fn conversations(
    server: &orchestratord::Server,
    cfg: &orchestratord::Config,
    http: &reqwest::Client,
    base: &str,
    modes: &[PlacementMode; 2],
) {
    let (http, base) = (http.clone(), base.to_string());
    let mut oq: [Vec<f64>; 2] = [vec![], vec![]];
    let mut door: [Vec<f64>; 2] = [vec![], vec![]];
    for k in 0..CONVERSATIONS * 2 {
        let m = k % 2;
        set(server, cfg, modes[m]);
        // OrchQueue: the turn-1 prompt, then the same history plus one more exchange
        let h = history(k);
        orchqueue_ttft(
            &http,
            &base,
            &format!("{h}Question: which crate came first?"),
        )
        .await;
        let t = orchqueue_ttft(
            &http,
            &base,
            &format!("{h}Question: which crate came first? Answer: crate 0. Question: and last?"),
        )
        .await;
        oq[m].push(ms(t));
        // the OpenAI door: the client resends the whole chat
        let hd = history(100 + k);
        let mut msgs = serde_json::json!([{"role": "system", "content": hd}, {"role": "user", "content": "Which crate came first?"}]);
        door_ttft(&http, &base, &msgs).await;
        if let Some(a) = msgs.as_array_mut() {
            a.push(serde_json::json!({"role": "assistant", "content": "Crate 0."}));
            a.push(serde_json::json!({"role": "user", "content": "And the last?"}));
        }
        door[m].push(ms(door_ttft(&http, &base, &msgs).await));
    }
    println!();
    println!("{CONVERSATIONS} conversations per placement, alternating; second-turn time to first token (median):");
    println!();
    println!("| path | prefix placement | least-loaded | **ratio** |");
    println!("|---|---|---|---|");
    let (op, ol) = (median(oq[0].clone()), median(oq[1].clone()));
    let (dp, dl) = (median(door[0].clone()), median(door[1].clone()));
    println!(
        "| OrchQueue | {op:.0} ms | {ol:.0} ms | **{:.1}×** |",
        ol / op
    );
    println!(
        "| OpenAI door | {dp:.0} ms | {dl:.0} ms | **{:.1}×** |",
        dl / dp
    );
    println!(
        "  (all: OrchQueue prefix {:?} / least {:?}; door prefix {:?} / least {:?})",
        oq[0], oq[1], door[0], door[1]
    );
}

async fn uniform(
    server: &orchestratord::Server,
    cfg: &orchestratord::Config,
    http: &reqwest::Client,
    base: &str,
    modes: &[PlacementMode; 2],
) {
    let (http, base) = (http.clone(), base.to_string());

    // uniform load of distinct prompts (distinct from their first byte, several blocks
    // long, so the index is consulted and never matches): placement must not cost
    // balance. Runs alternate, the first placement of each pair alternates too.
    const RUNS: usize = 16;
    const TASKS: usize = 24;
    let mut rate = [0.0f64; 2];
    for run in 0..RUNS {
        let m = if (run / 2) % 2 == 0 {
            run % 2
        } else {
            1 - run % 2
        };
        set(server, cfg, modes[m]);
        let t0 = Instant::now();
        let jobs = (0..TASKS).map(|i| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let p = format!("{:06} run {run} item {i}: a short note on shipping schedules, crate counts and harbor weather for the week.", run * 1000 + i);
                orchqueue_ttft(&http, &base, &p).await;
            }
        });
        futures_util::stream::iter(jobs)
            .buffer_unordered(4)
            .collect::<Vec<_>>()
            .await;
        rate[m] += TASKS as f64 / t0.elapsed().as_secs_f64() / (RUNS / 2) as f64;
    }
    println!();
    println!("| uniform distinct prompts ({TASKS} per run, 4 in flight, {} runs each, alternating) | tasks/s |", RUNS / 2);
    println!("|---|---|");
    println!("| prefix placement | {:.2} |", rate[0]);
    println!("| least-loaded | {:.2} |", rate[1]);
    println!(
        "| **ratio prefix / least-loaded** | **{:.3}** |",
        rate[0] / rate[1]
    );
}
