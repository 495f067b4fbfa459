//! Added submit → first-token latency at 1,000 tasks/s (open loop): `POST /v1/tasks`,
//! `GET` the stream, read until the first token frame, against the floor and
//! orchestratord (mock ttft 0, unpaced), in three rounds alternating the servers and
//! which of them goes first.

use super::{client, first_token, order, run_open_loop, submit_and_open, thousands, Pace, Server};
use crate::stats::p50_p99;
use std::time::{Duration, Instant};

const RATE: u64 = 1000;
const PER_ROUND: usize = 3000;
const ROUNDS: usize = 3;

/// One open-loop run against `base`; the latencies of the jobs that saw a token.
async fn round(h: &reqwest::Client, base: &str, n: usize) -> Vec<Duration> {
    run_open_loop(n, RATE, |_| {
        let (h, base) = (h.clone(), base.to_string());
        async move {
            let t0 = Instant::now();
            let job = async {
                first_token(submit_and_open(&h, &base, 4).await?)
                    .await
                    .then_some(())
            };
            tokio::time::timeout(Duration::from_secs(10), job)
                .await
                .ok()??;
            Some(t0.elapsed())
        }
    })
    .await
}

pub async fn run() {
    println!(
        "== latency: submit -> first token, open loop at {} tasks/s, {} per round, mock ttft 0 ==",
        thousands(RATE),
        thousands(PER_ROUND as u64)
    );
    let pace = Pace {
        tokens_per_sec: 0.0,
        ttft_ms: 0,
        tokens: 4,
    };
    let servers = [
        Server::floor(&pace),
        Server::orchestratord(&pace, 256, 4096),
    ];
    let h = client(512);
    for s in &servers {
        round(&h, &s.base, 500).await; // warm-up
    }
    println!();
    println!("| round | floor p50 | orchestratord p50 | **added p50** | floor p99 | orchestratord p99 | **added p99** |");
    println!("|---|---|---|---|---|---|---|");
    let mut all: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for r in 1..=ROUNDS {
        let mut q = [(0.0, 0.0); 2];
        // alternate which server goes first, so order effects cancel over the rounds
        for k in order(r) {
            let s = &servers[k];
            let v = round(&h, &s.base, PER_ROUND).await;
            if v.len() < PER_ROUND {
                println!("  note: {}: {} of {PER_ROUND} saw a token", s.name, v.len());
            }
            q[k] = p50_p99(&v);
            all[k].extend(v);
        }
        row(&r.to_string(), q[0], q[1]);
    }
    row("all rounds pooled", p50_p99(&all[0]), p50_p99(&all[1]));
    println!();
    println!("Targets: added ≤ 0.15 ms at p50, ≤ 0.5 ms at p99.");
}

fn row(label: &str, (f50, f99): (f64, f64), (o50, o99): (f64, f64)) {
    println!(
        "| {label} | {f50:.3} ms | {o50:.3} ms | **{:+.3} ms** | {f99:.3} ms | {o99:.3} ms | **{:+.3} ms** |",
        o50 - f50,
        o99 - f99
    );
}
