//! Added time to first token in front of one real llama-server, as a new user meets
//! it (issue 28, item 0): sequential distinct short prompts (~20 tokens), 4 output
//! tokens, temperature 0, one request at a time. In the same run and against the same
//! engine (2 slots), rounds alternate between:
//!
//! * direct `POST /completion` (stream) and direct `POST /v1/chat/completions`;
//! * orchestratord with the engine as its **spawned** replica, through OrchQueue
//!   (submit, then the SSE stream) and through the OpenAI door;
//! * a second orchestratord with the same engine added **by URL**
//!   (`POST /v1/pools/{id}/replicas`), through OrchQueue and the door.
//!
//! OrchQueue paths are compared with direct `/completion`, door paths with direct
//! chat completions. TTFT is the client's: request sent → first frame with text. The
//! client keeps pooled connections to orchestratord (as an SDK does) and opens a
//! fresh one per direct request (llama-server closes each streamed connection).

use crate::llama::start_in_process;
use crate::stats::p50_p99;
use std::time::{Duration, Instant};

const ROUNDS: usize = 8;
const PER_ROUND: usize = 12;

#[derive(Clone, Copy, PartialEq)]
enum Path {
    DirectCompletion,
    DirectChat,
    SpawnedOrchQueue,
    SpawnedDoor,
    UrlOrchQueue,
    UrlDoor,
}

const PATHS: [Path; 6] = [
    Path::DirectCompletion,
    Path::SpawnedOrchQueue,
    Path::UrlOrchQueue,
    Path::DirectChat,
    Path::SpawnedDoor,
    Path::UrlDoor,
];

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::DirectCompletion => "direct /completion",
            Path::DirectChat => "direct /v1/chat/completions",
            Path::SpawnedOrchQueue => "spawned replica, OrchQueue",
            Path::SpawnedDoor => "spawned replica, OpenAI door",
            Path::UrlOrchQueue => "replica by URL, OrchQueue",
            Path::UrlDoor => "replica by URL, OpenAI door",
        }
    }
}

/// A prompt of about 20 tokens that differs from every other from its first token.
fn prompt(n: usize) -> String {
    const SUBJECTS: &[&str] = &[
        "Lighthouses",
        "Glaciers",
        "Violins",
        "Bakeries",
        "Comets",
        "Orchards",
        "Bridges",
        "Volcanoes",
        "Libraries",
        "Harbors",
        "Deserts",
        "Trains",
        "Beehives",
        "Castles",
    ];
    let s = SUBJECTS[n % SUBJECTS.len()];
    format!(
        "{s} number {n} are described here in one short sentence for a curious child who asks why:"
    )
}

/// Time from `t0` to the first SSE frame for which `has_text` holds.
async fn first_text(r: reqwest::Response, t0: Instant, has_text: fn(&str) -> bool) -> Duration {
    crate::large_llama::first_token(r, t0, has_text)
        .await
        .expect("the stream carried text")
}

fn data_json(frame: &str) -> Option<serde_json::Value> {
    let line = frame.lines().find_map(|l| l.strip_prefix("data: "))?;
    serde_json::from_str(line).ok()
}

fn completion_text(frame: &str) -> bool {
    data_json(frame).is_some_and(|v| v["content"].as_str().is_some_and(|c| !c.is_empty()))
}

fn chat_text(frame: &str) -> bool {
    data_json(frame).is_some_and(|v| {
        v["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    })
}

fn orchqueue_text(frame: &str) -> bool {
    frame.starts_with("event: token")
}

struct Targets<'a> {
    /// Without pooled connections (llama-server closes each streamed one).
    http: &'a reqwest::Client,
    /// With pooled keep-alive connections, as an SDK holds them to orchestratord.
    pooled: &'a reqwest::Client,
    engine: &'a str,
    spawned: &'a str,
    by_url: &'a str,
}

async fn chat(http: &reqwest::Client, base: &str, p: &str) -> reqwest::Response {
    let body = serde_json::json!({"model": "gemma-3-270m", "stream": true, "max_tokens": 4,
        "temperature": 0, "messages": [{"role": "user", "content": p}]});
    http.post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("chat completion answered")
}

/// Time to first text, and for OrchQueue the time to its 202.
async fn one(t: &Targets<'_>, path: Path, p: &str) -> (Duration, Option<Duration>) {
    let t0 = Instant::now();
    match path {
        Path::DirectCompletion => {
            let body = serde_json::json!({"prompt": p, "n_predict": 4, "stream": true,
                "temperature": 0.0, "cache_prompt": true});
            let r = t
                .http
                .post(format!("{}/completion", t.engine))
                .json(&body)
                .send()
                .await
                .expect("completion answered");
            (first_text(r, t0, completion_text).await, None)
        }
        Path::DirectChat => (
            first_text(chat(t.http, t.engine, p).await, t0, chat_text).await,
            None,
        ),
        Path::SpawnedOrchQueue | Path::UrlOrchQueue => {
            let base = if path == Path::SpawnedOrchQueue {
                t.spawned
            } else {
                t.by_url
            };
            let (r, accepted) = submit_timed(t.pooled, base, p, t0).await;
            (first_text(r, t0, orchqueue_text).await, Some(accepted))
        }
        Path::SpawnedDoor | Path::UrlDoor => {
            let base = if path == Path::SpawnedDoor {
                t.spawned
            } else {
                t.by_url
            };
            (
                first_text(chat(t.pooled, base, p).await, t0, chat_text).await,
                None,
            )
        }
    }
}

/// `POST /v1/tasks` (greedy, 4 tokens), then `GET` its stream; the stream and the
/// time from `t0` to the 202.
async fn submit_timed(
    http: &reqwest::Client,
    base: &str,
    prompt: &str,
    t0: Instant,
) -> (reqwest::Response, Duration) {
    let body = serde_json::json!({"workload": "completion", "model_ref": "gemma-3-270m",
        "priority": "interactive", "prompt": prompt, "max_tokens": 4, "temperature": 0.0});
    let r = http
        .post(format!("{base}/v1/tasks"))
        .json(&body)
        .send()
        .await
        .expect("submit answered");
    assert_eq!(r.status(), 202);
    let v: serde_json::Value = r.json().await.expect("a 202 body");
    let accepted = t0.elapsed();
    let sse = v["streams"]["sse"].as_str().expect("a stream path");
    let s = http
        .get(format!("{base}{sse}"))
        .send()
        .await
        .expect("stream answered");
    (s, accepted)
}

fn pool_toml() -> &'static str {
    "[[pools]]\nid = \"llama\"\nengine = \"llamacpp\"\nmodel = \"gemma-3-270m\"\nmax_tokens_out = 512\n[pools.llamacpp]\n# the direct path reaches this engine itself\nengine_api_key = false\nctx = 4096\nslots = 2\nthreads = 2\n"
}

pub async fn run() {
    println!("== added TTFT in front of one llama-server (2 slots): distinct ~20-token prompts, 4 tokens, one at a time ==");
    let cfg = orchestratord::Config::parse(pool_toml()).expect("bench config");
    let (spawned, spawned_base, http) = start_in_process(cfg.clone()).await;
    let engine = spawned.orch.pool_views()[0].replicas[0]
        .endpoint
        .clone()
        .expect("a spawned replica has an endpoint");
    // the second server's own engine makes way for the first one's, added by URL
    let (by_url, url_base, _) = start_in_process(cfg).await;
    let own = by_url.orch.pool_views()[0].replicas[0].id.clone();
    let r = http
        .post(format!("{url_base}/v1/pools/llama/replicas"))
        .json(&serde_json::json!({"url": engine}))
        .send()
        .await
        .expect("add replica answered");
    assert_eq!(
        r.status(),
        201,
        "add replica by URL: {}",
        r.text().await.unwrap_or_default()
    );
    let r = http
        .delete(format!("{url_base}/v1/pools/llama/replicas/{own}"))
        .send()
        .await
        .expect("remove replica answered");
    assert_eq!(r.status(), 202);
    for _ in 0..200 {
        if by_url.orch.pool_views()[0].replicas.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let views = by_url.orch.pool_views();
    assert_eq!(views[0].replicas.len(), 1, "only the URL replica is left");
    println!(
        "  engine {engine}; by-URL server's replica: {}",
        views[0].replicas[0].id
    );
    let pooled = reqwest::Client::new();
    let t = Targets {
        http: &http,
        pooled: &pooled,
        engine: &engine,
        spawned: &spawned_base,
        by_url: &url_base,
    };
    let mut n = 0usize;
    // warm-up: every path, a few requests
    for path in PATHS {
        for _ in 0..3 {
            n += 1;
            one(&t, path, &prompt(n)).await;
        }
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); PATHS.len()];
    let mut accepted: Vec<Vec<Duration>> = vec![Vec::new(); PATHS.len()];
    for round in 0..ROUNDS {
        // rotate the order so drift falls on every path alike
        for k in 0..PATHS.len() {
            let i = (k + round) % PATHS.len();
            for _ in 0..PER_ROUND {
                n += 1;
                let (ttft, acc) = one(&t, PATHS[i], &prompt(n)).await;
                times[i].push(ttft);
                accepted[i].extend(acc);
            }
        }
    }
    println!("\n| path | n | TTFT p50 | TTFT p99 | **added p50** | added p99 | of which POST → 202, p50 |");
    println!("|---|---|---|---|---|---|---|");
    let base_of = |i: usize| {
        if i < 3 {
            p50_p99(&times[0])
        } else {
            p50_p99(&times[3])
        }
    };
    for (i, path) in PATHS.iter().enumerate() {
        let (p50, p99) = p50_p99(&times[i]);
        let (b50, b99) = base_of(i);
        let added = if i == 0 || i == 3 {
            ("—".to_string(), "—".to_string())
        } else {
            (
                format!("**{:+.2} ms**", p50 - b50),
                format!("{:+.2} ms", p99 - b99),
            )
        };
        let acc = if accepted[i].is_empty() {
            "—".to_string()
        } else {
            format!("{:.2} ms", p50_p99(&accepted[i]).0)
        };
        println!(
            "| {} | {} | {p50:.2} ms | {p99:.2} ms | {} | {} | {acc} |",
            path.name(),
            times[i].len(),
            added.0,
            added.1
        );
    }
    by_url.shutdown().await;
    spawned.shutdown().await;
}
