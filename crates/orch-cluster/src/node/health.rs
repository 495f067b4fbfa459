//! How this instance sees the cluster, checked every second: its connection, and
//! whether the cluster still stores what it writes. The probe is a write (a heartbeat
//! to the replicated `ORCH_HEALTH` stream, R3 like every other store): a read could be
//! answered by a stream leader that lost its quorum and has not stepped down yet
//! (seen: still answering 15 s after two of three servers died), a write needs a
//! quorum. The cluster counts as storing while the last acknowledged write (the
//! probe's, or an admitted task's) is younger than `store_retry` plus [`ELECTION`]: a
//! stream electing a new leader after one server's loss (4–9 s on nats-server 2.9,
//! the heartbeat stream's own election included) does not make the instance unready;
//! a cluster without quorum does, [`ELECTION`] after its submits began to be refused.
//! It is one stream's view: with more than three servers a pool's queue can lose its
//! quorum while the heartbeat stream keeps its own (submits to that pool then get 503
//! while the instance stays ready). The cluster gauges (connection, quorum,
//! leadership) are set from here, so they stay fresh.
//!
//! Owns: the instance's readiness in cluster mode. Never: a task's store.

use super::Node;
use crate::{metrics, Cluster, ClusterError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How long a heartbeat is kept in its stream (only the latest per instance counts).
const HEARTBEAT_KEEP: Duration = Duration::from_secs(60);
/// How often the connection and the quorum are checked.
const EVERY: Duration = Duration::from_secs(1);

/// How long past `store_retry` an instance stays ready without a stored write: the
/// longest election seen after one server's loss, with a beat's margin.
pub(crate) const ELECTION: Duration = Duration::from_secs(10);

/// The heartbeat stream: one subject per instance, its last heartbeat kept.
const STREAM: &str = "ORCH_HEALTH";

pub(crate) struct Health {
    /// When the cluster last acknowledged a write of this instance.
    stored: Mutex<Instant>,
    window: Duration,
    /// Whether this instance leads each pool.
    leading: HashMap<String, AtomicBool>,
    /// This instance's heartbeat subject.
    subject: String,
    /// The frames stream holds nine tenths of its byte bound (admission refuses).
    frames_full: AtomicBool,
}

impl Health {
    /// Make (or find) the heartbeat stream; the cluster counts as storing from now
    /// (every stream was just set up).
    pub(super) async fn start<'a>(
        cluster: &Cluster,
        instance: &str,
        pools: impl Iterator<Item = &'a String>,
        window: Duration,
    ) -> Result<Self, ClusterError> {
        use async_nats::jetstream::stream::{Config, DiscardPolicy};
        cluster
            .ensure_stream(Config {
                name: STREAM.into(),
                subjects: vec!["orch.health.*".into()],
                max_messages_per_subject: 1,
                max_age: HEARTBEAT_KEEP,
                num_replicas: cluster.cfg.replicas,
                discard: DiscardPolicy::Old,
                ..Default::default()
            })
            .await?;
        Ok(Self {
            stored: Mutex::new(Instant::now()),
            window: window + ELECTION,
            leading: pools.map(|p| (p.clone(), AtomicBool::new(false))).collect(),
            subject: format!("orch.health.{}", crate::hosted::token(instance)),
            frames_full: AtomicBool::new(false),
        })
    }

    /// The cluster acknowledged a write just now.
    pub(crate) fn stored(&self) {
        *self.stored.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Whether the cluster acknowledged a write within the window.
    pub(crate) fn storing(&self) -> bool {
        self.stored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            < self.window
    }

    /// Whether the frames stream was nine tenths full at the last check.
    pub(crate) fn frames_full(&self) -> bool {
        self.frames_full.load(Ordering::Acquire)
    }

    /// This instance now leads the pool, or no longer does.
    pub(crate) fn set_leading(&self, pool_id: &str, leading: bool) {
        if let Some(l) = self.leading.get(pool_id) {
            l.store(leading, Ordering::Release);
        }
        metrics::leader(pool_id, leading);
        metrics::leadership(pool_id, if leading { "acquired" } else { "lost" });
    }

    fn publish(&self, connected: bool) {
        metrics::connected(connected);
        metrics::quorum(self.storing());
        for (id, l) in &self.leading {
            metrics::leader(id, l.load(Ordering::Acquire));
        }
    }
}

/// Check the cluster every [`EVERY`] for as long as the node lives.
pub(super) fn spawn(node: Weak<Node>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(node) = node.upgrade() else { return };
            check(&node).await;
        }
    });
}

async fn check(node: &Arc<Node>) {
    metrics::connected(node.is_connected());
    let beat = async {
        node.js
            .publish(node.health.subject.clone(), bytes::Bytes::new())
            .await?
            .await
    };
    if let Ok(Ok(_)) = tokio::time::timeout(EVERY * 2, beat).await {
        node.health.stored();
    }
    if let Ok(Ok(full)) = tokio::time::timeout(EVERY, node.frames.nearly_full()).await {
        let was = node.health.frames_full.swap(full, Ordering::AcqRel);
        if full && !was {
            tracing::error!("the cluster's frame store is nine tenths full: refusing new tasks until old frames age out (raise [cluster] max_frame_bytes)");
        }
    }
    node.health.publish(node.is_connected());
}
