//! `orch-bench cluster-capacity` (feature `cluster`): what a cluster's instances serve
//! together. Three instances of one mock pool (one replica each, paced) on three
//! clustered nats-servers, run twice in one go, alternating: with every instance's
//! replicas serving (`host_replicas = true`, the default) and with two standbys
//! (`host_replicas = false`: only the leader's replica serves, as before issue 23's
//! capacity work). The same burst of tasks each time, submitted over all three
//! instances; tokens/s is the tokens streamed over the time from the first submit to
//! the last end.

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
        println!(
            "| {} | {:.0} | {:.0} | **{:.2}×** |",
            round + 1,
            r[0],
            r[1],
            r[1] / r[0]
        );
        one_sum += r[0];
        all_sum += r[1];
    }
    println!(
        "| mean | {:.0} | {:.0} | **{:.2}×** |",
        one_sum / ROUNDS as f64,
        all_sum / ROUNDS as f64,
        all_sum / one_sum
    );
    drop(nats);
}
