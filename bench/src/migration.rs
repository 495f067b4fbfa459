//! Continuation on the real engine, measured from the client's side: a greedy task
//! streams on one of two llama-server replicas, its engine is killed with SIGKILL after
//! 10 tokens, and the generation continues on the other replica. The pause the client
//! sees (its last token before the kill to the first after) is set against what a
//! client without continuation pays, in the same run: the same task submitted afresh
//! until it is back at the same token, and to its end.

use crate::stats::summary;
use futures_util::StreamExt;
use std::time::{Duration, Instant};

const PROMPT: &str = "Count from one to one hundred, one number per line:\n1\n2\n3\n";
const MAX_TOKENS: u32 = 48;
/// The engine is killed once this many tokens reached the client.
const KILL_AT: usize = 10;

/// One task's stream as the client received it.
#[derive(Default)]
struct Seen {
    /// Arrival of each token.
    tokens: Vec<Instant>,
    replica: String,
    /// Index of the first token after a move, if it moved.
    moved_at: Option<usize>,
    ended: bool,
}

/// Read a stream to its end; `at_kill` runs once `KILL_AT` tokens arrived.
async fn read(r: reqwest::Response, mut at_kill: impl FnMut(&str)) -> Seen {
    let mut s = r.bytes_stream();
    let (mut seen, mut buf) = (Seen::default(), String::new());
    while let Some(Ok(c)) = s.next().await {
        buf.push_str(&String::from_utf8_lossy(&c));
        while let Some(i) = buf.find("\n\n") {
            let frame: String = buf.drain(..i + 2).collect();
            let data = frame
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                .unwrap_or_default();
            if frame.starts_with("event: started") {
                seen.replica = data["replica_id"].as_str().unwrap_or_default().to_string();
            } else if frame.starts_with("event: token") {
                seen.tokens.push(Instant::now());
                if seen.tokens.len() == KILL_AT {
                    at_kill(&seen.replica);
                }
            } else if frame.starts_with("event: metrics") && data["migrated"].is_object() {
                seen.moved_at = Some(seen.tokens.len());
            } else if frame.starts_with("event: end") {
                seen.ended = true;
            }
        }
    }
    seen
}

async fn wait_both_ready(server: &orchestratord::Server) {
    let t0 = Instant::now();
    loop {
        let views = server.orch.pool_views();
        let ready = views[0]
            .replicas
            .iter()
            .filter(|r| r.state == orch_domain::control::ReplicaState::Ready)
            .count();
        if ready == 2 {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "replicas not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn run() {
    let kills: usize = std::env::var("ORCH_BENCH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    println!("== continuation on llama.cpp: kill -9 of the engine after {KILL_AT} tokens, {kills} times (2 replicas x 1 slot, {MAX_TOKENS} greedy tokens) ==");
    let cfg = "[supervision]\nhealth_interval_ms = 200\nhealth_timeout_ms = 300\n\n[[pools]]\nid = \"llama\"\nengine = \"llamacpp\"\nmodel = \"gemma-3-270m\"\nreplicas = 2\nmax_tokens_out = 512\n[pools.llamacpp]\nctx = 1024\nslots = 1\nthreads = 1\n";
    let (server, base, http) =
        crate::llama::start_in_process(orchestratord::Config::parse(cfg).unwrap()).await;
    let (mut pauses, mut back, mut whole) = (Vec::new(), Vec::new(), Vec::new());
    let mut reference: Option<usize> = None;
    for k in 0..kills {
        wait_both_ready(&server).await;
        // a client without continuation submits again: the time to get back to the
        // same token, and to the end
        let t = Instant::now();
        let again = read(
            crate::llama::submit_greedy(&http, &base, PROMPT, MAX_TOKENS).await,
            |_| {},
        )
        .await;
        back.push(again.tokens[KILL_AT - 1].saturating_duration_since(t));
        whole.push(t.elapsed());
        let n = *reference.get_or_insert(again.tokens.len());
        // the interrupted one
        let views = server.orch.pool_views();
        let seen = read(
            crate::llama::submit_greedy(&http, &base, PROMPT, MAX_TOKENS).await,
            |replica| {
                let pid = views[0]
                    .replicas
                    .iter()
                    .find(|r| r.id == replica)
                    .and_then(|r| r.pid)
                    .expect("the replica's pid");
                // SAFETY: kill(2) on an engine process this benchmark started
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            },
        )
        .await;
        assert!(seen.ended, "run {k}: the continued task ended with end");
        assert_eq!(seen.tokens.len(), n, "run {k}: every token, once");
        let at = seen.moved_at.expect("it moved");
        pauses.push(seen.tokens[at].saturating_duration_since(seen.tokens[at - 1]));
    }
    let (p50, p99) = summary("pause at a continuation", pauses);
    let (b50, b99) = summary("rerun: back at the same token", back);
    summary("rerun: to its end", whole);
    println!(
        "  a client waits {:.2}x less at p50 ({:.2}x at p99) than one that must start over",
        b50 / p50,
        b99 / p99
    );
    server.shutdown().await;
}
