//! Queue hints: each pool's leader publishes its queue (depth, free slots, service
//! time) a few times a second on a core subject; every instance keeps the latest, so
//! a 202 on any instance reports a position and an ETA as standalone admission does.
//! Not persisted: a hint older than [`FRESH`] is not used.

use crate::wire::QueueHint;
use crate::ClusterError;
use futures_util::StreamExt;
use orch_services::LocalPools;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a leader publishes its pool's hint.
pub(super) const EVERY: Duration = Duration::from_millis(250);
/// A hint older than this is ignored (its leader is gone or cut off).
const FRESH: Duration = Duration::from_secs(2);

fn subject(pool_id: &str) -> String {
    format!("orch.hint.{pool_id}")
}

/// A pool's latest hint: when it came, and how many tasks this instance stored for
/// the pool since (they stand behind what the hint counted).
type Latest = Arc<Mutex<HashMap<String, (Instant, QueueHint, u32)>>>;

/// The latest hint of every pool.
pub(crate) struct Hints {
    latest: Latest,
    client: async_nats::Client,
}

impl Hints {
    /// Subscribe to every pool's hints.
    pub(super) async fn start(client: async_nats::Client) -> Result<Self, ClusterError> {
        let mut sub = client
            .subscribe("orch.hint.*")
            .await
            .map_err(|e| ClusterError::Setup {
                what: "the queue hints subscription".into(),
                reason: e.to_string(),
            })?;
        let latest: Latest = Arc::default();
        let map = Arc::downgrade(&latest);
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let Some(map) = map.upgrade() else { return };
                let pool = m.subject.trim_start_matches("orch.hint.").to_string();
                if let Ok(h) = serde_json::from_slice::<QueueHint>(&m.payload) {
                    map.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(pool, (Instant::now(), h, 0));
                }
            }
        });
        Ok(Self { latest, client })
    }

    /// The queue a task of `pool_id` stored now joins: the latest fresh hint plus
    /// the tasks this instance stored since (this one is counted for the next).
    pub(super) fn join(&self, pool_id: &str) -> Option<QueueHint> {
        let mut map = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        let (at, h, since) = map.get_mut(pool_id)?;
        if at.elapsed() >= FRESH {
            return None;
        }
        let mut h = *h;
        let ahead = h.queue_depth + *since;
        // the free slots the hint saw are taken first, then the queue grows
        let took = ahead.min(h.slots_free);
        h.slots_free -= took;
        h.queue_depth = ahead - took;
        *since += 1;
        Some(h)
    }

    /// Publish the pool's hint every [`EVERY`] (a leader, for its term).
    pub(super) fn publish(
        &self,
        pools: LocalPools,
        pool_id: String,
    ) -> tokio::task::JoinHandle<()> {
        let client = self.client.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            loop {
                tick.tick().await;
                let Some(h) = pools.load(&pool_id).map(QueueHint::from) else {
                    continue;
                };
                if let Ok(b) = serde_json::to_vec(&h) {
                    let _ = client.publish(subject(&pool_id), b.into()).await;
                }
            }
        })
    }
}
