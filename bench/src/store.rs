//! `orch-bench cluster-store` (feature `cluster`), also the last part of `orch-bench
//! cluster`: the most tasks per second the three nats-servers can store at all, with
//! the servers' own `sync_interval`, as bare JetStream publishes of a task-sized
//! payload (600 bytes, the queue's own publish: dedupe id, R3, discard-new) at the
//! admission benchmark's concurrency (32) and at 256, into 1, 4 and 16 queue streams
//! (a pool's queue sharded that many ways). Side by side in the same run: standalone
//! orchestratord's admission rate on the same machine. No orchestratord instance runs
//! meanwhile, so the figure is the store's ceiling, not what an admission costs. Then
//! the same tasks in JetStream's atomic batches (the server's own group commit),
//! beside single publishes, to show whether batching lifts that ceiling.

use bytes::Bytes;
use futures_util::StreamExt;
use orch_cluster::testing::Nats;
use orch_cluster::{Cluster, ClusterConfig};
use std::time::Instant;

const PUBLISHES: usize = 2_000;
const PAYLOAD: usize = 600;
/// Messages per atomic-batch cell.
const BATCHED: usize = 4_096;

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
    atomic_batches(&c, standalone).await;
}

/// JetStream's own group commit: atomic batches (ADR-50) of 16 and 64 task-sized
/// messages, 16 batches in flight, into one queue-shaped stream each, beside single
/// publishes into one stream at 256 in flight (the table above's best one-stream
/// setting), in the same run.
async fn atomic_batches(c: &Cluster, standalone: f64) {
    println!();
    println!("Atomic batches (nats-server 2.12+, ADR-50): the same {PAYLOAD}-byte tasks, each with its dedupe id, {BATCHED} per cell, in batches that each commit together:");
    println!();
    println!("| round | single publishes, 256 in flight | batches of 16, 16 in flight | batches of 64, 16 in flight | **best / standalone admissions** |");
    println!("|---|---|---|---|---|");
    for round in 1..=2 {
        let (single, _) = rate(c, &format!("atom{round}single"), 1, 256).await;
        let mut cells = vec![single];
        for size in [16, 64] {
            let name = format!("ATOM_{round}_{size}");
            match orch_cluster::probe::atomic_batch_rate(c, &name, size, 16, BATCHED, PAYLOAD).await
            {
                Ok(r) => cells.push(r),
                Err(e) => {
                    eprintln!("  note: atomic batches of {size}: {e}");
                    cells.push(0.0);
                }
            }
        }
        let best = cells.iter().copied().fold(0.0, f64::max);
        println!(
            "| {round} | {:.0} | {:.0} | {:.0} | **{:.3}** |",
            cells[0],
            cells[1],
            cells[2],
            best / standalone
        );
    }
}

/// `orch-bench cluster-store`: standalone admissions, then the store's ceiling.
pub async fn run() {
    println!("== cluster store ceiling: 3 nats-servers (R3, TLS, auth) vs standalone admission ==");
    let nats = Nats::start("bench-store").await;
    let standalone = crate::admit::standalone_admissions().await;
    ceiling(&nats, standalone).await;
}
