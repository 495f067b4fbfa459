//! Admission throughput as the cluster benchmarks measure it: a closed loop of 32
//! clients posting one-token tasks for 2 s.

use crate::mock::{client, Server};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 32;
const ADMIT_ROUND: Duration = Duration::from_secs(2);

/// Admissions per second of a closed loop over `bases`; then waits until the tasks it
/// admitted have ended, so the next round does not share the machine with them.
pub async fn admission_round(h: &reqwest::Client, bases: &[String]) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let hs: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (h, base, stop) = (h.clone(), bases[c % bases.len()].clone(), stop.clone());
            tokio::spawn(async move {
                let (mut n, mut last) = (0u64, None);
                while !stop.load(Ordering::Relaxed) {
                    match crate::mock::submit(&h, &base, 1).await {
                        Some((id, _)) => {
                            n += 1;
                            last = Some(id);
                        }
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                (n, base, last)
            })
        })
        .collect();
    tokio::time::sleep(ADMIT_ROUND).await;
    stop.store(true, Ordering::Relaxed);
    let mut n = 0;
    let mut lasts = Vec::new();
    for h in hs {
        if let Ok((k, base, last)) = h.await {
            n += k;
            lasts.extend(last.map(|id| (base, id)));
        }
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let until = Instant::now() + Duration::from_secs(120);
    for (base, id) in lasts {
        while Instant::now() < until {
            let state = match h.get(format!("{base}/v1/tasks/{id}")).send().await {
                Ok(r) => r.json::<serde_json::Value>().await.unwrap_or_default()["state"].clone(),
                Err(_) => serde_json::Value::Null,
            };
            if matches!(state.as_str(), Some("completed" | "failed" | "canceled")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    rate
}

/// Standalone orchestratord's admissions/s: the mean of two rounds after a warm-up,
/// on the cluster benchmark's mock pool (for `orch-bench cluster-store`).
pub async fn standalone_admissions() -> f64 {
    let mock = "slots = 256\ntokens_per_sec = 50.0\nttft_ms = 0\ntokens = 100";
    let standalone = Server::orchestratord_with("standalone", "", mock, "queue_capacity = 100000");
    let h = client(256);
    let base = std::slice::from_ref(&standalone.base);
    admission_round(&h, base).await; // warm-up
    (admission_round(&h, base).await + admission_round(&h, base).await) / 2.0
}
