//! `orch-bench cluster` (feature `cluster`): standalone orchestratord vs a cluster of
//! three instances on three clustered nats-servers (R3), side by side in one run, same
//! release binary (built with `--features cluster`), same mock pool.
//!
//! * Latency at 1,000 tokens/s aggregate: tasks of 100 tokens at 50 tokens/s arriving
//!   10 a second (so 20 streams are open at a time), 60 per round: POST → 202, POST → first token, and each later token's arrival after
//!   the first beyond its place in the mock's schedule (`i / rate`). Every frame takes
//!   the same path, so a constant delay the cluster adds per frame shows in the first
//!   token; what varies per token shows in the later ones. Cluster tasks are submitted
//!   to and read from a non-leader instance (the leader is another process), as
//!   through a load balancer.
//! * Admission throughput: a closed loop of 32 clients posting for 2 s (one-token tasks).
//! * Then the store's ceiling on the same servers (`store.rs`).
//!
//! Rounds alternate which side goes first.

use crate::admit::admission_round;
use crate::mock::{client, Server};
use crate::stats::pct;
use futures_util::StreamExt;
use orch_cluster::testing::Nats;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const STREAMS: usize = 20;
const TASKS: usize = 60;
const TOKENS: u32 = 100;
const RATE: f64 = 50.0;
const ROUNDS: usize = 4;

/// What one task's client saw, submitted on `submit_base` and read on `read_base`.
#[derive(Default)]
struct Seen {
    /// POST → 202.
    admitted: Vec<Duration>,
    /// POST → first token.
    first: Vec<Duration>,
    /// Each later token: its arrival after the first token minus its place in the
    /// mock's schedule (`i / rate`); what relaying adds per token beyond the first.
    later: Vec<Duration>,
}

impl Seen {
    fn extend(&mut self, o: Seen) {
        self.admitted.extend(o.admitted);
        self.first.extend(o.first);
        self.later.extend(o.later);
    }
}

async fn one_stream(h: reqwest::Client, submit_base: String, read_base: String) -> Seen {
    let mut seen = Seen::default();
    let t0 = Instant::now();
    let Some((_, sse)) = crate::mock::submit(&h, &submit_base, TOKENS).await else {
        return seen;
    };
    seen.admitted.push(t0.elapsed());
    let Ok(r) = h.get(format!("{read_base}{sse}")).send().await else {
        return seen;
    };
    let mut body = r.bytes_stream();
    let marker = b"event: token";
    let mut carry = Vec::new();
    let mut n = 0u32;
    let mut first = None;
    while let Some(Ok(chunk)) = body.next().await {
        let at = t0.elapsed();
        carry.extend_from_slice(&chunk);
        let k = carry.windows(marker.len()).filter(|w| *w == marker).count();
        for _ in 0..k {
            match first {
                None => {
                    first = Some(at);
                    seen.first.push(at);
                }
                Some(f) => {
                    let due = Duration::from_secs_f64(f64::from(n) / RATE);
                    seen.later.push((at - f).saturating_sub(due));
                }
            }
            n += 1;
        }
        let keep = carry.len().min(marker.len() - 1);
        carry.drain(..carry.len() - keep);
    }
    seen
}

/// Tasks arrive at a steady rate that keeps `STREAMS` streams open (each lasts
/// `TOKENS / RATE` seconds), `TASKS` in all.
async fn streams_round(h: &reqwest::Client, submit: &str, read: &str) -> Seen {
    let every = Duration::from_secs_f64(f64::from(TOKENS) / RATE / STREAMS as f64);
    let mut tick = tokio::time::interval(every);
    let mut hs = Vec::new();
    for _ in 0..TASKS {
        tick.tick().await;
        hs.push(tokio::spawn(one_stream(
            h.clone(),
            submit.to_string(),
            read.to_string(),
        )));
    }
    let mut all = Seen::default();
    for h in hs {
        all.extend(h.await.unwrap_or_default());
    }
    all
}

/// What storing one frame costs in the cluster, under the load of the moment: a
/// one-frame batch appended (stored on a quorum), then its announcement received, as
/// a leader's writer and a mirror's follower do for every batch. Every 10 ms until
/// `stop`.
async fn probe(
    urls: Vec<String>,
    security: orch_cluster::Security,
    stop: Arc<AtomicBool>,
) -> Vec<Duration> {
    let cfg = orch_cluster::ClusterConfig {
        urls,
        security,
        ..Default::default()
    };
    let Ok(c) = orch_cluster::Cluster::connect(cfg).await else {
        return Vec::new();
    };
    let Ok(log) = c.frame_log(Duration::from_secs(300)).await else {
        return Vec::new();
    };
    let task = format!("probe-{}", std::process::id());
    let Ok(mut tail) = log.tail(&task).await else {
        return Vec::new();
    };
    let mut w = log.writer(&task);
    let mut out = Vec::new();
    let mut id = 0;
    while !stop.load(Ordering::Relaxed) {
        id += 1;
        let f = orch_cluster::Frame {
            id,
            kind: orch_domain::EventKind::Token,
            data: format!("{{\"t\":\"x\",\"i\":{id}}}"),
        };
        let t = Instant::now();
        if w.append(&[f]).await.is_err() {
            break;
        }
        if tokio::time::timeout(Duration::from_secs(2), tail.next())
            .await
            .is_err()
        {
            break;
        }
        out.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    out
}

fn ms(d: f64) -> String {
    format!("{d:.3} ms")
}

pub async fn run() {
    println!("== cluster: standalone vs 3 instances on 3 nats-servers (R3), ~{STREAMS} open streams x {RATE} tokens/s ==");
    let nats = Nats::start("bench").await;
    let urls = nats.urls_toml();
    // the instances read the servers' password from their environment (inherited)
    std::env::set_var("ORCH_BENCH_NATS_PASSWORD", orch_cluster::testing::PASSWORD);
    let security = nats.security_toml("ORCH_BENCH_NATS_PASSWORD");
    let mock = format!("slots = 256\ntokens_per_sec = {RATE}\nttft_ms = 0\ntokens = {TOKENS}");
    let pool = "queue_capacity = 100000";
    let standalone = Server::orchestratord_with("standalone", "", &mock, pool);
    let cluster: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|id| {
            let prefer = if *id == "a" {
                "[\"bench\"]"
            } else {
                "[\"none\"]"
            };
            let top = format!(
                "[cluster]\nurls = [{urls}]\ninstance_id = \"{id}\"\nprefer_pools = {prefer}\n{security}"
            );
            Server::orchestratord_with("cluster", &top, &mock, pool)
        })
        .collect();
    // the preferred instance bids at once; give it the lease
    tokio::time::sleep(Duration::from_secs(2)).await;
    let h = client(256);
    let sides: [(&str, String, String); 2] = [
        (
            "standalone",
            standalone.base.clone(),
            standalone.base.clone(),
        ),
        ("cluster", cluster[1].base.clone(), cluster[1].base.clone()),
    ];
    // warm-up: connections, the leader's consumer, the mirrors' first subscriptions
    for (_, s, r) in &sides {
        streams_round(&h, s, r).await;
    }
    let mut seen: [Seen; 2] = [Seen::default(), Seen::default()];
    let mut stored = Vec::new();
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (_, s, r) = &sides[i];
            let stop = Arc::new(AtomicBool::new(false));
            let p =
                (i == 1).then(|| tokio::spawn(probe(nats.urls(), nats.security(), stop.clone())));
            seen[i].extend(streams_round(&h, s, r).await);
            stop.store(true, Ordering::Relaxed);
            if let Some(p) = p {
                stored.extend(p.await.unwrap_or_default());
            }
        }
    }
    println!("{ROUNDS} rounds pooled, alternating which side goes first:");
    println!();
    println!("| measure | standalone p50 | cluster p50 | **added p50** | standalone p99 | cluster p99 | **added p99** |");
    println!("|---|---|---|---|---|---|---|");
    let [a, b] = &mut seen;
    row("POST → 202", &mut a.admitted, &mut b.admitted);
    row("POST → first token", &mut a.first, &mut b.first);
    row(
        "each later token, after the first, beyond its schedule",
        &mut a.later,
        &mut b.later,
    );
    stored.sort();
    println!(
        "| storing one frame in the cluster and hearing it announced (probe, during the cluster rounds, n = {}) | | {} | | | {} | |",
        stored.len(),
        ms(pct(&stored, 0.5)),
        ms(pct(&stored, 0.99))
    );
    println!(
        "tokens measured: standalone {}, cluster {} (expected {})",
        a.first.len() + a.later.len(),
        b.first.len() + b.later.len(),
        ROUNDS as u32 * TASKS as u32 * TOKENS
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
            (
                admission_round(&h, std::slice::from_ref(&standalone.base)).await,
                y,
            )
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
    // what the servers can store at all, against the standalone rate just measured
    crate::store::ceiling(&nats, a / ROUNDS as f64).await;
    drop(nats);
}

fn row(name: &str, a: &mut [Duration], b: &mut [Duration]) {
    a.sort();
    b.sort();
    let (s50, c50) = (pct(a, 0.5), pct(b, 0.5));
    let (s99, c99) = (pct(a, 0.99), pct(b, 0.99));
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
