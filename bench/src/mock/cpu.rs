//! CPU per relayed token: the same tasks through the floor and through orchestratord,
//! each server's process CPU (its generator or mock engine included) over its run,
//! divided by the token frames the client received. Paced (100 tokens/s per stream:
//! one token per wake-up, so one write per token) and unpaced; rounds alternate the
//! servers and which goes first, because the paced figure moves with the machine's load.

use super::{client, count_tokens, order, secs, submit_and_open, thousands, Pace, Server};
use futures_util::StreamExt;
use std::time::{Duration, Instant};

const TASKS: usize = 256;
const CONCURRENT: usize = 64;
const ROUNDS: usize = 3;

#[derive(Default, Clone, Copy)]
struct Run {
    tokens: u64,
    cpu: f64,
    wall: f64,
    failed: usize,
}

impl Run {
    fn us_per_token(&self) -> f64 {
        self.cpu / self.tokens.max(1) as f64 * 1e6
    }

    fn add(&mut self, r: &Run) {
        self.tokens += r.tokens;
        self.cpu += r.cpu;
        self.wall += r.wall;
        self.failed += r.failed;
    }
}

/// `n` tasks of `max_tokens`, `CONCURRENT` at a time, every stream read to its end.
async fn relay(h: &reqwest::Client, s: &Server, n: usize, max_tokens: u32) -> Run {
    let base = s.base.as_str();
    let (c0, t0) = (s.cpu_seconds(), Instant::now());
    let per_task: Vec<Option<u64>> = futures_util::stream::iter(0..n)
        .map(|_| async {
            let job = async {
                let r = submit_and_open(h, base, max_tokens).await?;
                Some(count_tokens(r).await)
            };
            tokio::time::timeout(Duration::from_secs(120), job)
                .await
                .ok()
                .flatten()
        })
        .buffer_unordered(CONCURRENT)
        .collect()
        .await;
    let wall = secs(t0);
    // let trailing work (task completion, connection reuse) land in the reading
    tokio::time::sleep(Duration::from_millis(200)).await;
    Run {
        tokens: per_task.iter().flatten().sum(),
        cpu: s.cpu_seconds() - c0,
        wall,
        failed: per_task.iter().filter(|t| t.is_none()).count(),
    }
}

fn row(label: &str, round: &str, f: &Run, o: &Run) {
    println!(
        "| {label} | {round} | {} / {} | {:.1} s / {:.1} s | {:.2} s | {:.2} s | {:.2} | {:.2} | **{:+.2}** |",
        thousands(f.tokens),
        thousands(o.tokens),
        f.wall,
        o.wall,
        f.cpu,
        o.cpu,
        f.us_per_token(),
        o.us_per_token(),
        o.us_per_token() - f.us_per_token()
    );
}

async fn variant(label: &str, pace: Pace) {
    let expected = TASKS as u64 * u64::from(pace.tokens);
    let servers = [
        Server::floor(&pace),
        Server::orchestratord(&pace, 256, 4096),
    ];
    let h = client(CONCURRENT);
    for s in &servers {
        relay(&h, s, CONCURRENT, 4).await; // warm-up: connections, allocator, lazy state
    }
    let mut total = [Run::default(); 2];
    for round in 1..=ROUNDS {
        let mut runs = [Run::default(); 2];
        for k in order(round) {
            let s = &servers[k];
            runs[k] = relay(&h, s, TASKS, pace.tokens).await;
            if runs[k].failed > 0 || runs[k].tokens != expected {
                eprintln!(
                    "  note: {}: {} tasks failed, {} of {expected} tokens",
                    s.name, runs[k].failed, runs[k].tokens
                );
            }
            total[k].add(&runs[k]);
        }
        row(label, &round.to_string(), &runs[0], &runs[1]);
    }
    row(label, "all", &total[0], &total[1]);
}

pub async fn run() {
    println!(
        "== cpu per relayed token: {TASKS} tasks per round, {CONCURRENT} concurrent streams, mock ttft 0 =="
    );
    println!();
    println!("| pace | round | tokens (floor / orchestratord) | wall (floor / orchestratord) | floor CPU | orchestratord CPU | floor µs/token | orchestratord µs/token | **added µs/token** |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let paced = Pace {
        tokens_per_sec: 100.0,
        ttft_ms: 0,
        tokens: 300,
    };
    variant("100 tokens/s per stream, 300 tokens", paced).await;
    let unpaced = Pace {
        tokens_per_sec: 0.0,
        ttft_ms: 0,
        tokens: 1000,
    };
    variant("unpaced, 1000 tokens", unpaced).await;
    println!();
    println!("Target (paced): orchestratord ≤ floor + 2 µs per token.");
}
