//! `orch-bench cluster-store` (feature `cluster`), also the last part of `orch-bench
//! cluster`: the most tasks per second the three nats-servers can store at all, with
//! the servers' own `sync_interval`, as bare JetStream publishes of a task-sized
//! payload (600 bytes, the queue's own publish: dedupe id, R3, discard-new) at the
//! admission benchmark's concurrency (32) and at 256, into 1, 4 and 16 queue streams
//! (a pool's queue sharded that many ways). Side by side in the same run: standalone
//! orchestratord's admission rate on the same machine. No orchestratord instance runs
//! meanwhile, so the figure is the store's ceiling, not what an admission costs.

use bytes::Bytes;
use futures_util::StreamExt;
use orch_cluster::testing::Nats;
use orch_cluster::{Cluster, ClusterConfig};
use std::time::Instant;

const PUBLISHES: usize = 2_000;
const PAYLOAD: usize = 600;

/// Publishes per second into `shards` fresh queues, `concurrent` in flight.
async fn rate(c: &Cluster, tag: &str, shards: usize, concurrent: usize) -> (f64, usize) {
    let mut queues = Vec::new();
    for s in 0..shards {
        match c.task_queue(&format!("{tag}s{s}"), 1_000_000).await {
            Ok(q) => queues.push(q),
            Err(e) => {
                eprintln!("  note: queue {tag}s{s}: {e}");
                return (0.0, PUBLISHES);
            }
        }
    }
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    let t0 = Instant::now();
    let stored = futures_util::stream::iter(0..PUBLISHES)
        .map(|i| {
            let (q, p) = (queues[i % shards].clone(), payload.clone());
            async move { q.publish(&format!("t{i}"), p).await.is_ok() }
        })
        .buffer_unordered(concurrent)
        .filter(|ok| futures_util::future::ready(*ok))
        .count()
        .await;
    (
        stored as f64 / t0.elapsed().as_secs_f64(),
        PUBLISHES - stored,
    )
}

/// The store's ceiling on `nats`, against `standalone` admissions/s (measured in the
/// same run by the caller).
pub async fn ceiling(nats: &Nats, standalone: f64) {
    let sync = std::env::var("ORCH_TEST_NATS_SYNC_INTERVAL").unwrap_or_else(|_| "always".into());
    let c = match Cluster::connect(ClusterConfig {
        urls: nats.urls(),
        security: nats.security(),
        ..ClusterConfig::default()
    })
    .await
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("  note: cannot connect for the store ceiling: {e}");
            return;
        }
    };
    println!();
    println!("Store ceiling: bare publishes of {PAYLOAD}-byte tasks, {PUBLISHES} per cell, `sync_interval: {sync}`; standalone admits {standalone:.0}/s, so issue 23's target (0.5×) is {:.0}/s:", standalone / 2.0);
    println!();
    println!("| round | in flight | 1 stream: publishes/s | 4 streams | 16 streams | **best / standalone admissions** |");
    println!("|---|---|---|---|---|---|");
    for round in 1..=2 {
        for concurrent in [32, 256] {
            let mut cells = Vec::new();
            for shards in [1, 4, 16] {
                let (r, failed) = rate(
                    &c,
                    &format!("ceil{round}c{concurrent}k{shards}"),
                    shards,
                    concurrent,
                )
                .await;
                if failed > 0 {
                    eprintln!("  note: {failed} publishes failed ({shards} streams, {concurrent} in flight)");
                }
                cells.push(r);
            }
            let best = cells.iter().copied().fold(0.0, f64::max);
            println!(
                "| {round} | {concurrent} | {:.0} | {:.0} | {:.0} | **{:.3}** |",
                cells[0],
                cells[1],
                cells[2],
                best / standalone
            );
        }
    }
}

/// `orch-bench cluster-store`: standalone admissions, then the store's ceiling.
pub async fn run() {
    println!("== cluster store ceiling: 3 nats-servers (R3, TLS, auth) vs standalone admission ==");
    let nats = Nats::start("bench-store").await;
    let standalone = crate::admit::standalone_admissions().await;
    ceiling(&nats, standalone).await;
}
