//! A store probe for the benchmarks (feature `testing`): how many task-sized messages
//! per second the servers store when they arrive in JetStream's atomic batches
//! (ADR-50, nats-server 2.12+: a batch's messages are staged and stored together or
//! not at all, acknowledged once at its commit), into a stream of its own shaped like
//! a pool's queue (R3 as configured, file storage, work-queue retention, discard
//! new, the dedupe window, each message with its own dedupe id). It answers whether
//! the server's own batching lifts the store's ceiling under `sync_interval: always`.
//! Never used by the product.

use crate::Cluster;
use bytes::Bytes;
use futures_util::StreamExt;
use std::time::{Duration, Instant};

/// Make the probe's stream; `allow_atomic` is set through the JetStream API directly
/// (async-nats exposes it only behind its `server_2_12` feature, which the product
/// does not need).
async fn make_stream(c: &Cluster, name: &str) -> Result<(), String> {
    let body = serde_json::json!({
        "name": name,
        "subjects": [format!("{name}.*")],
        "storage": "file",
        "num_replicas": c.cfg.replicas,
        "max_msgs": 10_000_000,
        "discard": "new",
        "duplicate_window": u64::try_from(c.cfg.dedupe_window.as_nanos()).unwrap_or(u64::MAX),
        "retention": "workqueue",
        "allow_atomic": true,
    });
    let client = c.js.client();
    let t0 = Instant::now();
    loop {
        let reply = client
            .request(
                format!("$JS.API.STREAM.CREATE.{name}"),
                Bytes::from(body.to_string()),
            )
            .await;
        let why = match reply {
            Ok(m) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&m.payload).map_err(|e| e.to_string())?;
                match v.get("error") {
                    None => return Ok(()),
                    Some(e) => e.to_string(),
                }
            }
            Err(e) => e.to_string(),
        };
        if t0.elapsed() > Duration::from_secs(20) {
            return Err(format!("stream {name}: {why}"));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Store one batch of `size` messages; `Err` with the server's answer when it is refused.
async fn one_batch(
    client: &async_nats::Client,
    name: &str,
    batch: usize,
    size: usize,
    payload: &Bytes,
) -> Result<(), String> {
    let id = format!("{name}-{batch}");
    for i in 1..=size {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Batch-Id", id.as_str());
        h.insert("Nats-Batch-Sequence", i.to_string().as_str());
        h.insert("Nats-Msg-Id", format!("{id}-{i}").as_str());
        let subject = format!("{name}.{id}-{i}");
        if i == size {
            h.insert("Nats-Batch-Commit", "1");
        }
        if i == 1 || i == size {
            // the start is a request (the server answers at once if it refuses the
            // batch); the commit's answer is the batch's acknowledgement
            let m = client
                .request_with_headers(subject, h, payload.clone())
                .await
                .map_err(|e| e.to_string())?;
            let answer = String::from_utf8_lossy(&m.payload);
            if answer.contains("\"error\"") {
                return Err(answer.into_owned());
            }
        } else {
            client
                .publish_with_headers(subject, h, payload.clone())
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Messages stored per second: `total` messages of `payload_len` bytes in atomic
/// batches of `size` (at least 2), `in_flight` batches at a time, into a fresh stream
/// `name`. `Err` when the stream cannot be made or any batch is refused.
pub async fn atomic_batch_rate(
    c: &Cluster,
    name: &str,
    size: usize,
    in_flight: usize,
    total: usize,
    payload_len: usize,
) -> Result<f64, String> {
    let size = size.max(2);
    make_stream(c, name).await?;
    let client = c.js.client();
    let payload = Bytes::from(vec![b'x'; payload_len]);
    let batches = total / size;
    let t0 = Instant::now();
    let stored: Vec<Result<(), String>> = futures_util::stream::iter(0..batches)
        .map(|b| {
            let (client, payload) = (client.clone(), payload.clone());
            async move { one_batch(&client, name, b, size, &payload).await }
        })
        .buffer_unordered(in_flight.max(1))
        .collect()
        .await;
    let elapsed = t0.elapsed().as_secs_f64();
    stored.into_iter().collect::<Result<Vec<()>, String>>()?;
    Ok((batches * size) as f64 / elapsed)
}
