//! The observed-precise prefix index against today's (issue 28, item 4), on two real
//! llama-server replicas under cache pressure: 1 slot and 1 thread each, and
//! `--cache-ram 0`, so a replica holds one prompt (its slot's) at a time. Three
//! conversations (more than the two slots hold) from one client: two take turns and
//! the third cuts in every second pair; every turn resends its conversation's whole
//! history (~1 KB of distinct text plus the turns so far) with no session id. The pool's
//! `prefix_observed` switches live between rounds (the same engines, alternating which
//! goes first); each round starts with fresh conversations.
//!
//! Reported for turns 2 and later: the hit rate (the engine reused at least half the
//! prompt, from the `end` frame's `tokens_cached`), the reused share of prompt tokens,
//! and the time to first token.

use futures_util::StreamExt;
use std::time::{Duration, Instant};

const TURNS: usize = 4;
const ROUNDS: usize = 4;

fn history(round: usize, k: usize) -> String {
    (0..14)
        .map(|i| {
            format!("Log {round}-{k}-{i}: dock {k} weighed crate {i} at noon and found it sound. ")
        })
        .collect()
}

/// One OrchQueue task: (time to first token, tokens_in, tokens_cached).
pub async fn turn(http: &reqwest::Client, base: &str, prompt: &str) -> (Duration, u64, u64) {
    let t0 = Instant::now();
    let mut s = crate::llama::submit_greedy(http, base, prompt, 4)
        .await
        .bytes_stream();
    let (mut ttft, mut buf) = (None, String::new());
    while let Some(Ok(c)) = s.next().await {
        buf.push_str(&String::from_utf8_lossy(&c));
        if ttft.is_none() && buf.contains("event: token") {
            ttft = Some(t0.elapsed());
        }
        if buf.contains("event: error") {
            panic!("a turn failed: {buf}");
        }
        if buf.contains("event: end") && buf.ends_with("\n\n") {
            break;
        }
    }
    let end = buf
        .split("\n\n")
        .find(|f| f.starts_with("event: end"))
        .and_then(|f| f.lines().find_map(|l| l.strip_prefix("data: ")))
        .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .expect("an end frame");
    (
        ttft.unwrap_or_default(),
        end["tokens_in"].as_u64().unwrap_or(0),
        end["tokens_cached"].as_u64().unwrap_or(0),
    )
}

#[derive(Default)]
struct Tally {
    turns: usize,
    hits: usize,
    tokens_in: u64,
    tokens_cached: u64,
    ttft: Vec<f64>,
}

/// One round, one client: conversations 0 and 1 take turns, and conversation 2 cuts
/// in after every second pair (three conversations on two one-prompt replicas).
async fn round(http: &reqwest::Client, base: &str, r: usize) -> Tally {
    let mut hist: Vec<String> = (0..3).map(|k| history(r, k)).collect();
    let mut order = Vec::new();
    for t in 0..TURNS {
        order.extend([0, 1]);
        if t % 2 == 1 {
            order.push(2);
        }
    }
    let mut seen = [0usize; 3];
    let mut tally = Tally::default();
    for k in order {
        let t = seen[k];
        seen[k] += 1;
        hist[k].push_str(&format!(
            "Question {t} on dock {k}: what was weighed? Answer: crates. "
        ));
        let (ttft, tin, cached) = turn(http, base, &hist[k]).await;
        if t == 0 {
            continue;
        }
        tally.turns += 1;
        tally.hits += usize::from(cached * 2 >= tin && tin > 0);
        tally.tokens_in += tin;
        tally.tokens_cached += cached;
        tally.ttft.push(ttft.as_secs_f64() * 1e3);
    }
    tally
}

fn set(server: &orchestratord::Server, cfg: &orchestratord::Config, observed: bool) {
    let mut spec = orchestratord::settings::pool_spec(&cfg.pools[0]);
    spec.prefix_observed = observed;
    server
        .orch
        .registry()
        .update_spec(spec)
        .expect("pool settings");
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

pub async fn run() {
    println!("== observed-precise vs recorded-only prefix index: 2 llama-server replicas (1 slot, 1 thread, --cache-ram 0) ==");
    let text = "[[pools]]\nid = \"llama\"\nengine = \"llamacpp\"\nmodel = \"gemma-3-270m\"\nreplicas = 2\nmax_tokens_out = 512\nfirst_token_timeout_ms = 120000\n[pools.llamacpp]\nctx = 4096\nslots = 1\nthreads = 1\nextra_args = [\"--cache-ram\", \"0\"]\n";
    let cfg = orchestratord::Config::parse(text).expect("bench config");
    let (server, base, http) = crate::llama::start_in_process(cfg.clone()).await;
    let mut tallies = [Tally::default(), Tally::default()];
    for r in 0..ROUNDS * 2 {
        // on, off, off, on, on, off, …: each goes first as often
        let observed = (r / 2 + r) % 2 == 0;
        set(&server, &cfg, observed);
        let t = round(&http, &base, r).await;
        println!(
            "  round {}: {}: {} of {} turns hit, cached {:.0}%",
            r + 1,
            if observed { "observed" } else { "recorded" },
            t.hits,
            t.turns,
            100.0 * t.tokens_cached as f64 / t.tokens_in.max(1) as f64
        );
        let all = &mut tallies[usize::from(!observed)];
        all.turns += t.turns;
        all.hits += t.hits;
        all.tokens_in += t.tokens_in;
        all.tokens_cached += t.tokens_cached;
        all.ttft.extend(t.ttft);
    }
    println!();
    println!("| index | turns | **hit rate** | prompt tokens reused | TTFT p50 | TTFT p90 |");
    println!("|---|---|---|---|---|---|");
    for (name, t) in [
        ("observed-precise (corrected)", &tallies[0]),
        ("recorded only (before)", &tallies[1]),
    ] {
        println!(
            "| {name} | {} | **{:.0}%** | {:.0}% | {:.0} ms | {:.0} ms |",
            t.turns,
            100.0 * t.hits as f64 / t.turns.max(1) as f64,
            100.0 * t.tokens_cached as f64 / t.tokens_in.max(1) as f64,
            pct(&t.ttft, 0.5),
            pct(&t.ttft, 0.9)
        );
    }
    server.shutdown().await;
}
