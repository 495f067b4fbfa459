//! Large prompts (issue 28, item 2): 256 KB prompts, submit → first token against the
//! floor at 20, 60 and 150 concurrent clients (closed loop, mock ttft 0, 4 tokens),
//! rounds alternating which server goes first; then the memory a queued 256 KB task
//! holds in orchestratord (RSS before and after queueing them behind a busy slot).

use super::{client, first_token, order, Pace, Server};
use crate::stats::p50_p99;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PROMPT_BYTES: usize = 256 * 1024;
const CONCURRENCY: [usize; 3] = [20, 60, 150];
const TASKS_PER_ROUND: usize = 1_500;
const ROUNDS: usize = 4;
const QUEUED: usize = 200;

/// A prompt of `PROMPT_BYTES` that differs from every other from its first block.
fn prompt(n: usize) -> String {
    let mut s = format!("Document {n:08}: ");
    let line = "the quarterly ledger lists every crate, its harbor and the day it came in. ";
    while s.len() + line.len() <= PROMPT_BYTES {
        s.push_str(line);
    }
    while s.len() < PROMPT_BYTES {
        s.push('.');
    }
    s
}

fn body(n: usize, max_tokens: u32) -> bytes::Bytes {
    let v = serde_json::json!({"workload": "completion", "model_ref": "mock-model",
        "priority": "interactive", "prompt": prompt(n), "max_tokens": max_tokens});
    bytes::Bytes::from(serde_json::to_vec(&v).expect("json"))
}

async fn submit_raw(h: &reqwest::Client, base: &str, body: bytes::Bytes) -> Option<String> {
    super::submit_body(h, base, body).await.map(|(_, sse)| sse)
}

/// `conc` clients, `n` tasks in all: each submits a 256 KB prompt and reads its
/// stream to the first token. The bodies are made before the clock starts.
async fn round(
    h: &reqwest::Client,
    base: &str,
    conc: usize,
    n: usize,
    seed: usize,
) -> Vec<Duration> {
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new((0..n).map(|i| body(seed + i, 4)).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let jobs = (0..conc).map(|_| {
        let (h, base, bodies, next) = (h.clone(), base.to_string(), bodies.clone(), next.clone());
        async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(b) = bodies.get(i).cloned() else {
                    break;
                };
                let t0 = Instant::now();
                let Some(sse) = submit_raw(&h, &base, b).await else {
                    continue;
                };
                let Ok(r) = h.get(format!("{base}{sse}")).send().await else {
                    continue;
                };
                if first_token(r).await {
                    out.push(t0.elapsed());
                }
            }
            out
        }
    });
    let all: Vec<Vec<Duration>> = futures_util::stream::iter(jobs)
        .buffer_unordered(conc)
        .collect()
        .await;
    let v: Vec<Duration> = all.into_iter().flatten().collect();
    if v.len() < n {
        println!("  note: {base}: {} of {n} saw a token", v.len());
    }
    v
}

pub async fn run() {
    println!("== large prompts: 256 KB, submit -> first token, closed loop, mock ttft 0 ==");
    let pace = Pace {
        tokens_per_sec: 0.0,
        ttft_ms: 0,
        tokens: 4,
    };
    let servers = [
        Server::floor(&pace),
        Server::orchestratord(&pace, 256, 4096),
    ];
    println!(
        "  floor pid {}, orchestratord pid {}",
        servers[0].pid(),
        servers[1].pid()
    );
    let h = client(256);
    for s in &servers {
        round(&h, &s.base, 20, 100, 0).await; // warm-up
    }
    println!();
    println!("| concurrent | floor p50 | orchestratord p50 | **added p50** | floor p99 | orchestratord p99 | added p99 | floor tasks/s | orchestratord tasks/s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut seed = 1_000_000;
    for conc in CONCURRENCY {
        let mut lat: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
        let mut wall = [Duration::ZERO; 2];
        for r in 1..=ROUNDS {
            for k in order(r) {
                seed += TASKS_PER_ROUND;
                let t0 = Instant::now();
                let v = round(&h, &servers[k].base, conc, TASKS_PER_ROUND, seed).await;
                wall[k] += t0.elapsed();
                lat[k].extend(v);
            }
        }
        let (f, o) = (p50_p99(&lat[0]), p50_p99(&lat[1]));
        println!(
            "| {conc} | {:.2} ms | {:.2} ms | **{:+.2} ms** | {:.2} ms | {:.2} ms | {:+.2} ms | {:.0} | {:.0} |",
            f.0,
            o.0,
            o.0 - f.0,
            f.1,
            o.1,
            o.1 - f.1,
            lat[0].len() as f64 / wall[0].as_secs_f64(),
            lat[1].len() as f64 / wall[1].as_secs_f64(),
        );
    }
    drop(servers);
    memory(&h).await;
}

/// RSS growth per queued 256 KB task: one slot held by a long task, `QUEUED` tasks
/// queued behind it.
async fn memory(h: &reqwest::Client) {
    let pace = Pace {
        tokens_per_sec: 1.0,
        ttft_ms: 0,
        tokens: 100_000,
    };
    let s = Server::orchestratord(&pace, 1, 1024);
    // the slot's holder, then a settle and a reading
    submit_raw(h, &s.base, body(0, 100_000))
        .await
        .expect("the holder is admitted");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = s.rss_mib();
    for i in 1..=QUEUED {
        submit_raw(h, &s.base, body(i, 4))
            .await
            .expect("a queued task is admitted");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = s.rss_mib();
    let per_task = (after - before) * 1024.0 * 1024.0 / QUEUED as f64;
    println!();
    println!("| queued 256 KB tasks | RSS before | RSS after | **per task** | **per task / prompt size** |");
    println!("|---|---|---|---|---|");
    println!(
        "| {QUEUED} | {before:.1} MiB | {after:.1} MiB | **{:.0} KiB** | **{:.2}×** |",
        per_task / 1024.0,
        per_task / PROMPT_BYTES as f64
    );
    println!();
    println!("Targets: added TTFT p50 ≤ +2 ms at every concurrency; ≤ 1.2× the prompt's size per queued task.");
}
