//! The operator console's cost, side by side in one run: the page's weight (what a
//! browser downloads: page, script, style), and the server's CPU with 0 and with 10
//! consoles open (each polling `GET /v1/console` once a second, as the page does)
//! while 32 mock generations stream. Rounds alternate 0 and 10 consoles.

use super::{client, Server};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CONSOLES: usize = 10;
const STREAMS: usize = 32;
const ROUND: Duration = Duration::from_secs(10);
const ROUNDS: usize = 3;

pub async fn run() {
    println!("== console: page weight, and server CPU with 0 vs {CONSOLES} consoles open ({STREAMS} streams running) ==");
    let cfg = "[server]\nkeepalive_ms = 15000\n[[pools]]\nid = \"bench\"\nengine = \"mock\"\nmodel = \"mock-model\"\nmax_tokens_out = 1000000\nqueue_capacity = 64\n[pools.mock]\nslots = 64\nctx_max = 2000000\ntokens_per_sec = 20.0\nttft_ms = 1\ntokens = 1000000\n";
    let server = Server::orchestratord_config("orchestratord", cfg);
    let h = client(64);
    let mut weight = 0usize;
    for path in ["/console", "/console/app.js", "/console/app.css"] {
        let body = h
            .get(format!("{}{path}", server.base))
            .send()
            .await
            .expect("console asset")
            .bytes()
            .await
            .expect("asset body");
        weight += body.len();
    }
    // the load: long generations, each read by a client
    let stop = Arc::new(AtomicBool::new(false));
    for i in 0..STREAMS {
        let (h, base, stop) = (h.clone(), server.base.clone(), stop.clone());
        tokio::spawn(async move {
            let body = serde_json::json!({"workload": "completion", "model_ref": "mock-model",
                "priority": "interactive", "prompt": format!("stream {i}"), "max_tokens": 1000000});
            let Ok(r) = h.post(format!("{base}/v1/tasks")).json(&body).send().await else {
                return;
            };
            let Ok(v) = r.json::<serde_json::Value>().await else {
                return;
            };
            let id = v["task_id"].as_str().unwrap_or_default().to_string();
            let Ok(mut s) = h.get(format!("{base}/v1/tasks/{id}/stream")).send().await else {
                return;
            };
            while !stop.load(Ordering::Relaxed) {
                if !matches!(s.chunk().await, Ok(Some(_))) {
                    break;
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!();
    println!("| round | CPU, 0 consoles | CPU, {CONSOLES} consoles | added by the consoles |");
    println!("|---|---|---|---|");
    let (mut sum0, mut sum10) = (0.0, 0.0);
    for r in 0..ROUNDS {
        let c0 = measure(&server, &h, 0).await;
        let c10 = measure(&server, &h, CONSOLES).await;
        sum0 += c0;
        sum10 += c10;
        println!(
            "| {} | {:.2}% | {:.2}% | {:+.2} points |",
            r + 1,
            c0 * 100.0,
            c10 * 100.0,
            (c10 - c0) * 100.0
        );
    }
    let (m0, m10) = (sum0 / ROUNDS as f64, sum10 / ROUNDS as f64);
    println!(
        "| mean | {:.2}% | {:.2}% | **{:+.2} points** (of one core) |",
        m0 * 100.0,
        m10 * 100.0,
        (m10 - m0) * 100.0
    );
    println!(
        "\nPer console poll: {:.0} µs of server CPU. Page weight (HTML + JS + CSS, uncompressed): {weight} bytes.\n",
        (m10 - m0) * 1e6 / CONSOLES as f64
    );
    stop.store(true, Ordering::Relaxed);
}

/// The server's CPU use (fraction of one core) over a round with `consoles` pollers.
async fn measure(server: &Server, h: &reqwest::Client, consoles: usize) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let mut polls = Vec::new();
    for _ in 0..consoles {
        let (h, url, stop) = (
            h.clone(),
            format!("{}/v1/console", server.base),
            stop.clone(),
        );
        polls.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if let Ok(r) = h.get(&url).send().await {
                    let _ = r.bytes().await;
                }
            }
        }));
    }
    let c0 = server.cpu_seconds();
    tokio::time::sleep(ROUND).await;
    let used = server.cpu_seconds() - c0;
    stop.store(true, Ordering::Relaxed);
    for p in polls {
        let _ = p.await;
    }
    used / ROUND.as_secs_f64()
}
