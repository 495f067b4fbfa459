//! Gauges read off state rather than counted at events: each pool's readiness, queue
//! depth and capacity, replicas by state, slots per replica (from the published
//! snapshots), and each replica's KV-cache usage (asked of its engine).
//!
//! Owns: the republishing cadence. Every gauge is set again each interval, so a series
//! nobody refreshes any more (a removed pool, a replaced engine version, a replica
//! that left) drops out of `/metrics` under the exporter's idle timeout instead of
//! lingering at its last value.

use crate::core::Core;
use crate::metrics::{self, Where};
use crate::pool::Snapshot;
use orch_domain::control::ReplicaState;
use std::sync::Weak;
use std::time::Duration;

/// Longest an engine's KV-usage answer may take before the poll moves on.
const KV_POLL_TIMEOUT: Duration = Duration::from_secs(1);

/// Set every gauge of one pool from its snapshot.
pub(crate) fn publish_pool(s: &Snapshot) {
    let pool = &*s.pool_id;
    metrics::pool_ready(pool, s.ready);
    metrics::queue_capacity(pool, s.spec.queue.capacity);
    if let Some(p) = &s.pinned {
        let w = Where::new(&p.engine, &p.engine_version, pool, "none");
        w.queue_depth("interactive", s.queue_by_priority[0] as usize);
        w.queue_depth("batch", s.queue_by_priority[1] as usize);
    }
    for r in &s.replicas {
        replica_where(s, r).slots(r.busy, r.props.slots);
    }
    for state in ReplicaState::ALL {
        let n = s.replicas.iter().filter(|r| r.state == state).count();
        metrics::replicas(pool, state.as_str(), n);
    }
}

fn replica_where(s: &Snapshot, r: &crate::pool::ReplicaSnap) -> Where {
    Where::new(&r.props.engine, &r.props.engine_version, &s.pool_id, &r.id)
}

/// Republish the pool gauges every `interval` and ask each replica's engine for its
/// KV-cache usage, until the services are dropped.
pub(crate) async fn run(core: Weak<Core>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(c) = core.upgrade() else { return };
        let snaps: Vec<_> = c.pools.all().iter().map(|p| p.snapshot()).collect();
        drop(c);
        metrics::publish_deadlines();
        for s in &snaps {
            publish_pool(s);
        }
        let polls = snaps.iter().flat_map(|s| {
            s.replicas.iter().map(move |r| async move {
                let got = tokio::time::timeout(KV_POLL_TIMEOUT, r.adapter.kv_cache_usage()).await;
                match got {
                    Ok(Ok(Some(ratio))) => replica_where(s, r).kv_cache_usage(ratio),
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => tracing::debug!(pool_id = %s.pool_id, replica_id = %r.id,
                        error = %e, "kv cache usage not read"),
                    Err(_) => tracing::debug!(pool_id = %s.pool_id, replica_id = %r.id,
                        "kv cache usage: engine did not answer in time"),
                }
            })
        });
        futures_util::future::join_all(polls).await;
    }
}
