//! Admission throughput against its floor and with tenancy on vs off, side by side in
//! one run: the floor server's POST-202 (the same typed body parsing and validation,
//! the same random task ids, no queue; `floor.rs`), and the same orchestratord binary
//! and mock pool (unpaced, one token per task, 256 slots) three ways: open with
//! arrival-order queues ("off"); API keys for three tenants weighted 1:2:5 with
//! per-tenant quotas checked on every admission but arrival-order queues ("keys"); and
//! keys, quotas and weighted fair queuing ("on"). A closed loop of 32 clients posts
//! tasks for 2 s per round; rounds rotate which server goes first.

use super::{client, thousands, Server};
use crate::floor::Pace;
use crate::stats::p50_p99;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) const CLIENTS: usize = 32;
const ROUND: Duration = Duration::from_secs(2);
const ROUNDS: usize = 6;

const KEYS: [(&str, &str, u32); 3] = [
    ("oqk_bench-bronze", "bronze", 1),
    ("oqk_bench-silver", "silver", 2),
    ("oqk_bench-gold", "gold", 5),
];

fn sha256_hex(s: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(super) fn tenancy_toml() -> String {
    let mut t = String::new();
    for (key, tenant, _) in KEYS {
        t.push_str(&format!(
            "[[auth.keys]]\nsha256 = \"{}\"\ntenant = \"{tenant}\"\nrole = \"client\"\n",
            sha256_hex(key)
        ));
    }
    for (_, tenant, weight) in KEYS {
        t.push_str(&format!(
            "[tenants.{tenant}]\nweight = {weight}\nmax_concurrent = 100000\nmax_queued = 100000\ntokens_per_minute = 1000000000\nmax_tokens_per_task = 64\nmax_kv_tokens = 1000000000\n"
        ));
    }
    t
}

/// One closed-loop round: admissions per second and POST latencies.
pub(super) async fn round(h: &reqwest::Client, base: &str, keyed: bool) -> (f64, Vec<Duration>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut hs = Vec::new();
    let t0 = Instant::now();
    for c in 0..CLIENTS {
        let (h, base, stop) = (h.clone(), base.to_string(), stop.clone());
        hs.push(tokio::spawn(async move {
            let body = serde_json::json!({"workload": "completion", "model_ref": "mock-model",
                "priority": if c % 2 == 0 { "interactive" } else { "batch" },
                "prompt": "hello", "max_tokens": 1});
            let mut lat = Vec::new();
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let mut rb = h.post(format!("{base}/v1/tasks")).json(&body);
                if keyed {
                    rb = rb.bearer_auth(KEYS[i % KEYS.len()].0);
                }
                i += 1;
                let t = Instant::now();
                match rb.send().await {
                    Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed());
                    }
                    _ => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
            lat
        }));
    }
    tokio::time::sleep(ROUND).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for h in hs {
        all.extend(h.await.unwrap_or_default());
    }
    (all.len() as f64 / t0.elapsed().as_secs_f64(), all)
}

pub async fn run() {
    println!(
        "== admission: {CLIENTS} clients, closed loop, {} s per round, floor / tenancy off / keys / on ==",
        ROUND.as_secs()
    );
    let mock = "slots = 256\ntokens_per_sec = 0.0\nttft_ms = 0\ntokens = 1";
    let keyed = tenancy_toml();
    let fifo = "queue_capacity = 4096\nfairness = \"fifo\"";
    let servers = [
        Server::floor(&Pace {
            tokens_per_sec: 0.0,
            ttft_ms: 0,
            tokens: 1,
        }),
        Server::orchestratord_with("off", "", mock, fifo),
        Server::orchestratord_with("keys", &keyed, mock, fifo),
        Server::orchestratord_with(
            "on",
            &keyed,
            mock,
            "queue_capacity = 4096\nfairness = \"weighted\"",
        ),
    ];
    // the keyed servers get keys (the floor ignores the header)
    let keyed_at = |k: usize| k >= 2;
    let h = client(CLIENTS * 2);
    for (i, s) in servers.iter().enumerate() {
        round(&h, &s.base, keyed_at(i)).await; // warm-up
    }
    println!();
    println!("| round | floor: admissions/s | off | keys | on | **keys / off** | **on / off** | **on / floor** |");
    println!("|---|---|---|---|---|---|---|---|");
    let n = servers.len();
    let mut rates = [0.0f64; 4];
    let mut lats: [Vec<Duration>; 4] = Default::default();
    for r in 0..ROUNDS {
        let mut got: [(f64, Vec<Duration>); 4] = Default::default();
        // rotate which server goes first, so order effects cancel over the rounds
        for j in 0..n {
            let k = (r + j) % n;
            got[k] = round(&h, &servers[k].base, keyed_at(k)).await;
        }
        println!(
            "| {} | {} | {} | {} | {} | **{:.3}** | **{:.3}** | **{:.3}** |",
            r + 1,
            thousands(got[0].0 as u64),
            thousands(got[1].0 as u64),
            thousands(got[2].0 as u64),
            thousands(got[3].0 as u64),
            got[2].0 / got[1].0,
            got[3].0 / got[1].0,
            got[3].0 / got[0].0,
        );
        for k in 0..n {
            rates[k] += got[k].0 / ROUNDS as f64;
            lats[k].append(&mut got[k].1);
        }
    }
    println!(
        "| mean | {} | {} | {} | {} | **{:.3}** | **{:.3}** | **{:.3}** |",
        thousands(rates[0] as u64),
        thousands(rates[1] as u64),
        thousands(rates[2] as u64),
        thousands(rates[3] as u64),
        rates[2] / rates[1],
        rates[3] / rates[1],
        rates[3] / rates[0],
    );
    println!("\nTarget: on / floor >= 0.6.\n");
    println!("| POST /v1/tasks latency, all rounds | floor | off | keys | on |");
    println!("|---|---|---|---|---|");
    let q: Vec<(f64, f64)> = lats.iter().map(|l| p50_p99(l)).collect();
    println!(
        "| p50 | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms |",
        q[0].0, q[1].0, q[2].0, q[3].0
    );
    println!(
        "| p99 | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms |",
        q[0].1, q[1].1, q[2].1, q[3].1
    );
}
