//! `orch-bench cluster` (feature `cluster`): standalone orchestratord vs a cluster of
//! three instances on three clustered nats-servers (R3), side by side in one run, same
//! release binary (built with `--features cluster`), same mock pool.
//!
//! * Per-token latency at 1,000 tokens/s aggregate: 20 concurrent streams of 100
//!   tokens at 50 tokens/s. Each token's lateness is its arrival minus the submit
//!   minus its place in the mock's schedule (`i / rate`); cluster minus standalone is
//!   what the cluster adds per token. Cluster tasks are submitted to and read from a
//!   non-leader instance (the leader is another process), as through a load balancer.
//! * Admission throughput: a closed loop of 32 clients posting for 2 s (one-token tasks).
//!
//! Rounds alternate which side goes first.

use crate::mock::{client, Server};
use crate::stats::pct;
use futures_util::StreamExt;
use orch_cluster::testing::Nats;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const STREAMS: usize = 20;
const TOKENS: u32 = 100;
const RATE: f64 = 50.0;
const ROUNDS: usize = 4;
const CLIENTS: usize = 32;
const ADMIT_ROUND: Duration = Duration::from_secs(2);

/// Token lateness of one task: submit on `submit_base`, read on `read_base`.
async fn one_stream(h: reqwest::Client, submit_base: String, read_base: String) -> Vec<Duration> {
    let t0 = Instant::now();
    let Some((_, sse)) = crate::mock::submit(&h, &submit_base, TOKENS).await else {
        return Vec::new();
    };
    let Ok(r) = h.get(format!("{read_base}{sse}")).send().await else {
        return Vec::new();
    };
    let mut body = r.bytes_stream();
    let mut out = Vec::new();
    let marker = b"event: token";
    let mut carry = Vec::new();
    while let Some(Ok(chunk)) = body.next().await {
        let at = t0.elapsed();
        carry.extend_from_slice(&chunk);
        let n = carry.windows(marker.len()).filter(|w| *w == marker).count();
        for _ in 0..n {
            let i = out.len() as f64;
            out.push(at.saturating_sub(Duration::from_secs_f64(i / RATE)));
        }
        let keep = carry.len().min(marker.len() - 1);
        carry.drain(..carry.len() - keep);
    }
    out
}

async fn streams_round(h: &reqwest::Client, submit: &str, read: &str) -> Vec<Duration> {
    let hs: Vec<_> = (0..STREAMS)
        .map(|_| tokio::spawn(one_stream(h.clone(), submit.to_string(), read.to_string())))
        .collect();
    let mut all = Vec::new();
    for h in hs {
        all.extend(h.await.unwrap_or_default());
    }
    all
}

async fn admission_round(h: &reqwest::Client, bases: &[String]) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let hs: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (h, base, stop) = (h.clone(), bases[c % bases.len()].clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if crate::mock::submit(&h, &base, 1).await.is_some() {
                        n += 1;
                    } else {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                n
            })
        })
        .collect();
    tokio::time::sleep(ADMIT_ROUND).await;
    stop.store(true, Ordering::Relaxed);
    let mut n = 0;
    for h in hs {
        n += h.await.unwrap_or(0);
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

fn ms(d: f64) -> String {
    format!("{d:.3} ms")
}

pub async fn run() {
    println!("== cluster: standalone vs 3 instances on 3 nats-servers (R3), {STREAMS} streams x {RATE} tokens/s ==");
    let nats = Nats::start("bench").await;
    let urls = nats
        .urls()
        .iter()
        .map(|u| format!("{u:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mock = format!("slots = 256\ntokens_per_sec = {RATE}\nttft_ms = 0\ntokens = {TOKENS}");
    let pool = "queue_capacity = 100000";
    let standalone = Server::orchestratord_with("standalone", "", &mock, pool);
    let cluster: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|id| {
            let prefer = if *id == "a" { "[\"bench\"]" } else { "[\"none\"]" };
            let top = format!(
                "[cluster]\nurls = [{urls}]\ninstance_id = \"{id}\"\nprefer_pools = {prefer}\n"
            );
            Server::orchestratord_with("cluster", &top, &mock, pool)
        })
        .collect();
    // the preferred instance bids at once; give it the lease
    tokio::time::sleep(Duration::from_secs(2)).await;
    let h = client(256);
    let sides: [(&str, String, String); 2] = [
        ("standalone", standalone.base.clone(), standalone.base.clone()),
        ("cluster", cluster[1].base.clone(), cluster[1].base.clone()),
    ];
    // warm-up: connections, the leader's consumer, the mirrors' first subscriptions
    for (_, s, r) in &sides {
        streams_round(&h, s, r).await;
    }
    let mut late: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    println!("| round | standalone p50 | cluster p50 | **added p50** | standalone p99 | cluster p99 | **added p99** |");
    println!("|---|---|---|---|---|---|---|");
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut this: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
        for i in order {
            let (_, s, r) = &sides[i];
            this[i] = streams_round(&h, s, r).await;
        }
        row(&format!("{}", round + 1), &mut this);
        for i in 0..2 {
            late[i].extend(this[i].drain(..));
        }
    }
    row("all rounds pooled", &mut late);
    println!(
        "tokens measured: standalone {}, cluster {} (expected {} per round each)",
        late[0].len(),
        late[1].len(),
        STREAMS as u32 * TOKENS
    );
    println!();
    println!("| round | standalone: admissions/s | cluster (3 instances): admissions/s | **cluster / standalone** |");
    println!("|---|---|---|---|");
    let cluster_bases: Vec<String> = cluster.iter().map(|s| s.base.clone()).collect();
    let (mut a, mut b) = (0.0, 0.0);
    for round in 0..ROUNDS {
        let (x, y) = if round % 2 == 0 {
            let x = admission_round(&h, std::slice::from_ref(&standalone.base)).await;
            (x, admission_round(&h, &cluster_bases).await)
        } else {
            let y = admission_round(&h, &cluster_bases).await;
            (admission_round(&h, std::slice::from_ref(&standalone.base)).await, y)
        };
        println!("| {} | {x:.0} | {y:.0} | **{:.3}** |", round + 1, y / x);
        a += x;
        b += y;
    }
    println!(
        "| mean | {:.0} | {:.0} | **{:.3}** |",
        a / ROUNDS as f64,
        b / ROUNDS as f64,
        b / a
    );
    drop(cluster);
    drop(standalone);
    drop(nats);
}

fn row(name: &str, v: &mut [Vec<Duration>; 2]) {
    v[0].sort();
    v[1].sort();
    let (s50, c50) = (pct(&v[0], 0.5), pct(&v[1], 0.5));
    let (s99, c99) = (pct(&v[0], 0.99), pct(&v[1], 0.99));
    println!(
        "| {name} | {} | {} | **{:+.3} ms** | {} | {} | **{:+.3} ms** |",
        ms(s50),
        ms(c50),
        c50 - s50,
        ms(s99),
        ms(c99),
        c99 - s99
    );
}
