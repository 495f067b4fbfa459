//! `orch-bench cluster-capacity` (feature `cluster`): what a cluster's instances serve
//! together. Three instances of one mock pool (one replica each, paced) on three
//! clustered nats-servers, run twice in one go, alternating: with every instance's
//! replicas serving (`host_replicas = true`, the default) and with two standbys
//! (`host_replicas = false`: only the leader's replica serves, as before issue 23's
//! capacity work). The same burst of tasks each time, submitted over all three
//! instances; tokens/s is the tokens streamed over the time from the first submit to
//! the last end.
//!
//! `orch-bench cluster-failover`: three instances (one mock replica of 4 slots each,
//! every replica serving), 12 tasks streaming, the leader killed with SIGKILL: the time
//! until another instance reports itself the pool's leader (its `/metrics`), with the
//! lease TTL the README's production config uses (3 s) and the tests' (1.5 s).
//!
//! `orch-bench cluster-capacity-llama`: the same with two instances, each spawning one
//! real llama-server (the bundled Gemma 3 270M, 2 slots, one thread each, so the two
//! engines share the box's two cores), 16 prompts of 64 tokens at temperature 0.

use crate::mock::{client, Server};
use futures_util::StreamExt;
use orch_cluster::testing::Nats;
use std::time::{Duration, Instant};

const SLOTS: u32 = 2;
const RATE: f64 = 100.0;
const TOKENS: u32 = 50;
const TASKS: usize = 48;
const ROUNDS: usize = 2;

/// One task's tokens, read through `base`.
async fn one(h: reqwest::Client, base: String) -> u32 {
    let Some((_, sse)) = crate::mock::submit(&h, &base, TOKENS).await else {
        return 0;
    };
    read_tokens(&h, &base, &sse).await
}

/// The tokens of a task's stream.
async fn read_tokens(h: &reqwest::Client, base: &str, sse: &str) -> u32 {
    let Ok(r) = h.get(format!("{base}{sse}")).send().await else {
        return 0;
    };
    let mut body = r.bytes_stream();
    let marker = b"event: token";
    let (mut carry, mut n) = (Vec::new(), 0u32);
    while let Some(Ok(chunk)) = body.next().await {
        carry.extend_from_slice(&chunk);
        n += carry.windows(marker.len()).filter(|w| *w == marker).count() as u32;
        let keep = carry.len().min(marker.len() - 1);
        carry.drain(..carry.len() - keep);
    }
    n
}

/// Start three instances; `hosting`: every instance's replica serves.
async fn instances(urls: &str, security: &str, hosting: bool) -> Vec<Server> {
    let mock = format!("slots = {SLOTS}\ntokens_per_sec = {RATE}\nttft_ms = 0\ntokens = {TOKENS}");
    let out: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|id| {
            let prefer = if *id == "a" { "[\"bench\"]" } else { "[\"none\"]" };
            let top = format!(
                "[cluster]\nurls = [{urls}]\ninstance_id = \"{id}\"\nprefer_pools = {prefer}\nhost_replicas = {hosting}\n{security}"
            );
            Server::orchestratord_with("cluster", &top, &mock, "queue_capacity = 1000")
        })
        .collect();
    // the preferred instance takes the lease; the others' replicas are attached
    tokio::time::sleep(Duration::from_secs(3)).await;
    out
}

/// Tokens/s of one burst of `TASKS` over the instances.
async fn burst(h: &reqwest::Client, bases: &[String]) -> (f64, u32) {
    let t0 = Instant::now();
    let hs: Vec<_> = (0..TASKS)
        .map(|i| tokio::spawn(one(h.clone(), bases[i % bases.len()].clone())))
        .collect();
    let mut tokens = 0;
    for t in hs {
        tokens += t.await.unwrap_or(0);
    }
    (f64::from(tokens) / t0.elapsed().as_secs_f64(), tokens)
}

pub async fn run() {
    println!("== cluster capacity: 3 instances x 1 mock replica ({SLOTS} slots, {RATE} tokens/s per stream), {TASKS} tasks of {TOKENS} tokens at once ==");
    let nats = Nats::start("bench-capacity").await;
    let urls = nats.urls_toml();
    std::env::set_var("ORCH_BENCH_NATS_PASSWORD", orch_cluster::testing::PASSWORD);
    let security = nats.security_toml("ORCH_BENCH_NATS_PASSWORD");
    let h = client(64);
    println!("| round | only the leader's replica serves: tokens/s | every instance's replica serves: tokens/s | **ratio** |");
    println!("|---|---|---|---|");
    let (mut one_sum, mut all_sum) = (0.0, 0.0);
    for round in 0..ROUNDS {
        let mut r = [0.0; 2];
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for hosting in order {
            let servers = instances(&urls, &security, hosting).await;
            let bases: Vec<String> = servers.iter().map(|s| s.base.clone()).collect();
            let (rate, tokens) = burst(&h, &bases).await;
            assert_eq!(tokens, TASKS as u32 * TOKENS, "every token streamed");
            r[usize::from(hosting)] = rate;
            drop(servers);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        ratio_row(round + 1, r[0], r[1], 0);
        one_sum += r[0];
        all_sum += r[1];
    }
    ratio_row("mean", one_sum / ROUNDS as f64, all_sum / ROUNDS as f64, 0);
    drop(nats);
}

const LLAMA_TASKS: usize = 16;
const LLAMA_TOKENS: u32 = 64;

/// One real-engine task: a distinct counting prompt, temperature 0.
async fn one_llama(h: reqwest::Client, base: String, n: usize) -> u32 {
    let body = serde_json::json!({"workload": "completion", "model_ref": "gemma-3-270m",
        "priority": "interactive", "prompt": format!("Count from {n} to {}:", n + 200),
        "max_tokens": LLAMA_TOKENS, "temperature": 0.0});
    let Ok(r) = h.post(format!("{base}/v1/tasks")).json(&body).send().await else {
        return 0;
    };
    let Ok(v) = r.json::<serde_json::Value>().await else {
        return 0;
    };
    let Some(sse) = v["streams"]["sse"].as_str() else {
        return 0;
    };
    read_tokens(&h, &base, sse).await
}

/// One prompt straight to a llama-server (`/completion`, streamed): its tokens.
async fn one_bare(h: reqwest::Client, endpoint: String, n: usize) -> u32 {
    let body = serde_json::json!({"prompt": format!("Count from {n} to {}:", n + 200),
        "n_predict": LLAMA_TOKENS, "stream": true, "temperature": 0.0});
    let Ok(r) = h
        .post(format!("{endpoint}/completion"))
        .json(&body)
        .send()
        .await
    else {
        return 0;
    };
    let mut body = r.bytes_stream();
    let (mut buf, mut n) = (String::new(), 0u32);
    while let Some(Ok(c)) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&c));
        while let Some(i) = buf.find("\n\n") {
            let frame: String = buf.drain(..i + 2).collect();
            if frame.contains("\"stop\":false") && !frame.contains("\"content\":\"\"") {
                n += 1;
            }
        }
    }
    n
}

/// Tokens/s of `LLAMA_TASKS` prompts sent straight to `endpoints` (round robin).
async fn bare_burst(h: &reqwest::Client, endpoints: &[String]) -> f64 {
    let t0 = Instant::now();
    let hs: Vec<_> = (0..LLAMA_TASKS)
        .map(|i| {
            tokio::spawn(one_bare(
                h.clone(),
                endpoints[i % endpoints.len()].clone(),
                i,
            ))
        })
        .collect();
    let mut tokens = 0;
    for t in hs {
        tokens += t.await.unwrap_or(0);
    }
    f64::from(tokens) / t0.elapsed().as_secs_f64()
}

/// The endpoint of the replica instance `base` runs itself.
async fn own_endpoint(h: &reqwest::Client, base: &str, instance: &str) -> Option<String> {
    let v: serde_json::Value = h
        .get(format!("{base}/v1/pools"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["pools"][0]["replicas"]
        .as_array()?
        .iter()
        .find(|r| {
            r["id"]
                .as_str()
                .is_some_and(|id| id.starts_with(&format!("{instance}:")))
        })
        .and_then(|r| r["endpoint"].as_str())
        .map(str::to_string)
}

pub async fn run_llama() {
    println!("== cluster capacity, real engines: 2 instances x 1 llama-server (2 slots, 1 thread), {LLAMA_TASKS} prompts x {LLAMA_TOKENS} tokens at once ==");
    let nats = Nats::start("bench-capacity-llama").await;
    let urls = nats.urls_toml();
    std::env::set_var("ORCH_BENCH_NATS_PASSWORD", orch_cluster::testing::PASSWORD);
    let security = nats.security_toml("ORCH_BENCH_NATS_PASSWORD");
    let h = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client");
    println!("| round | only the leader's replica serves: tokens/s | both instances' replicas serve: tokens/s | **ratio** |");
    println!("|---|---|---|---|");
    let (mut one_sum, mut all_sum) = (0.0, 0.0);
    let mut bare = Vec::new();
    for round in 0..ROUNDS {
        let mut r = [0.0; 2];
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for hosting in order {
            let servers: Vec<Server> = ["a", "b"]
                .iter()
                .map(|id| {
                    let prefer = if *id == "a" { "[\"llama\"]" } else { "[\"none\"]" };
                    let cfg = format!(
                        "[cluster]\nurls = [{urls}]\ninstance_id = \"{id}\"\nprefer_pools = {prefer}\nhost_replicas = {hosting}\n{security}\n[[pools]]\nid = \"llama\"\nengine = \"llamacpp\"\nmodel = \"gemma-3-270m\"\nqueue_capacity = 64\n[pools.llamacpp]\n# the bare comparison reaches the engines itself\nengine_api_key = false\nctx = 4096\nslots = 2\nthreads = 1\n"
                    );
                    Server::orchestratord_config("cluster", &cfg)
                })
                .collect();
            tokio::time::sleep(Duration::from_secs(3)).await;
            let bases: Vec<String> = servers.iter().map(|s| s.base.clone()).collect();
            // warm-up: each engine's first prompt
            for b in &bases {
                one_llama(h.clone(), b.clone(), 1000).await;
            }
            let t0 = Instant::now();
            let hs: Vec<_> = (0..LLAMA_TASKS)
                .map(|i| tokio::spawn(one_llama(h.clone(), bases[i % bases.len()].clone(), i)))
                .collect();
            let mut tokens = 0;
            for t in hs {
                tokens += t.await.unwrap_or(0);
            }
            assert!(tokens > 0, "the engines streamed");
            r[usize::from(hosting)] = f64::from(tokens) / t0.elapsed().as_secs_f64();
            if hosting {
                // the box's own ceiling: the same prompts straight to one engine, then
                // to both (the instances idle meanwhile)
                let mut ends = Vec::new();
                for (b, id) in bases.iter().zip(["a", "b"]) {
                    ends.extend(own_endpoint(&h, b, id).await);
                }
                if ends.len() == 2 {
                    let one = bare_burst(&h, &ends[..1]).await;
                    let two = bare_burst(&h, &ends).await;
                    bare.push((one, two));
                }
            }
            drop(servers);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        ratio_row(round + 1, r[0], r[1], 1);
        one_sum += r[0];
        all_sum += r[1];
    }
    ratio_row("mean", one_sum / ROUNDS as f64, all_sum / ROUNDS as f64, 1);
    println!();
    println!("The box's ceiling, the same prompts straight to the engines (no orchestratord in the path):");
    println!();
    println!("| round | one llama-server: tokens/s | two llama-servers: tokens/s | **ratio** |");
    println!("|---|---|---|---|");
    for (i, (one, two)) in bare.iter().enumerate() {
        println!(
            "| {} | {one:.1} | {two:.1} | **{:.2}×** |",
            i + 1,
            two / one
        );
    }
    drop(nats);
}

/// Whether the instance at `base` leads pool `bench` (its `/metrics`).
async fn leads(h: &reqwest::Client, base: &str) -> bool {
    let Ok(r) = h.get(format!("{base}/metrics")).send().await else {
        return false;
    };
    r.text()
        .await
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("cluster_pool_leader{pool_id=\"bench\"} 1"))
}

pub async fn failover() {
    println!("== cluster failover under load: 3 instances x 1 mock replica (4 slots), 12 tasks streaming, leader killed ==");
    let nats = Nats::start("bench-failover").await;
    let urls = nats.urls_toml();
    std::env::set_var("ORCH_BENCH_NATS_PASSWORD", orch_cluster::testing::PASSWORD);
    let security = nats.security_toml("ORCH_BENCH_NATS_PASSWORD");
    let h = client(64);
    println!("| lease TTL | round | kill → another instance leads | **minus the TTL** |");
    println!("|---|---|---|---|");
    for ttl_ms in [3000u64, 1500] {
        for round in 0..3 {
            let mock = "slots = 4\ntokens_per_sec = 20.0\nttft_ms = 0\ntokens = 400";
            let mut servers: Vec<Option<Server>> = ["a", "b", "c"]
                .iter()
                .map(|id| {
                    let prefer = if *id == "a" { "[\"bench\"]" } else { "[\"none\"]" };
                    let top = format!(
                        "[cluster]\nurls = [{urls}]\ninstance_id = \"{id}\"\nprefer_pools = {prefer}\nlease_ttl_ms = {ttl_ms}\n{security}"
                    );
                    Some(Server::orchestratord_with("cluster", &top, mock, "queue_capacity = 100"))
                })
                .collect();
            let bases: Vec<String> = servers.iter().flatten().map(|s| s.base.clone()).collect();
            let t0 = Instant::now();
            while !leads(&h, &bases[0]).await {
                assert!(t0.elapsed() < Duration::from_secs(30), "a never led");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // the other instances' replicas attached, then 12 tasks streaming
            tokio::time::sleep(Duration::from_secs(1)).await;
            let streams: Vec<_> = (0..12)
                .map(|i| {
                    let (h, base) = (h.clone(), bases[1 + i % 2].clone());
                    tokio::spawn(async move {
                        crate::mock::submit_and_open(&h, &base, 400).await.map(|r| {
                            tokio::spawn(async move {
                                let _ = r.bytes().await;
                            })
                        })
                    })
                })
                .collect();
            for s in streams {
                let _ = s.await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            servers[0].take();
            let killed = Instant::now();
            let took = loop {
                if leads(&h, &bases[1]).await || leads(&h, &bases[2]).await {
                    break killed.elapsed();
                }
                assert!(
                    killed.elapsed() < Duration::from_secs(60),
                    "nobody took over"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let over = took.as_secs_f64() * 1000.0 - ttl_ms as f64;
            println!(
                "| {ttl_ms} ms | {} | {:.0} ms | **{over:+.0} ms** |",
                round + 1,
                took.as_secs_f64() * 1000.0
            );
            drop(servers);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    drop(nats);
}

/// One table row: a rate with one replica, with all, and their ratio.
fn ratio_row(label: impl std::fmt::Display, one: f64, all: f64, decimals: usize) {
    println!(
        "| {label} | {one:.decimals$} | {all:.decimals$} | **{:.2}×** |",
        all / one
    );
}
