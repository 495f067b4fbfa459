//! What the actor shows outside: the snapshot it publishes after each batch, the
//! queue-depth gauges, and the metric labels of a task that has no replica yet.

use super::Actor;
use crate::metrics::Where;
use crate::pool::state::PoolState;
use crate::pool::{ReplicaSnap, Snapshot};
use orch_domain::control::ReplicaState;
use orch_domain::Priority;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the actor keeps its queue-depth gauge handles before resolving them again.
/// The sweep sets the same series every second, so the exporter never drops them as
/// idle under a held handle; resolving again now and then keeps that true even if the
/// sweep stalled. Must stay well under the exporter's gauge idle timeout (15 s,
/// `GAUGE_IDLE` in the server's telemetry), or a held handle could outlive its series.
const DEPTH_REFRESH: Duration = Duration::from_secs(5);

/// The queue-depth gauges (interactive, batch) and the queued-task labels for one
/// pinned engine.
pub(super) struct DepthGauges {
    pinned: Arc<crate::pool::state::Pinned>,
    at: Instant,
    gauges: [metrics::Gauge; 2],
    /// The labels of a task with no replica yet (its run-path handles cached inside).
    queued: Where,
}

impl Actor {
    pub(super) fn where_queued(&self) -> Where {
        let p = self.st.pinned.as_deref();
        Where::new(
            p.map_or("unknown", |p| &p.engine),
            p.map_or("unknown", |p| &p.engine_version),
            &self.id,
            "none",
        )
    }

    /// Queue depth as it changes (the sweep republishes it from the snapshot too). No
    /// series before a replica pins the pool's engine: `engine` would be unknown.
    pub(super) fn publish_depth(&self) {
        let (i, b) = (
            self.st.queue.len_of(Priority::Interactive),
            self.st.queue.len_of(Priority::Batch),
        );
        self.with_queued(|d| {
            d.gauges[0].set(i as f64);
            d.gauges[1].set(b as f64);
        });
    }

    /// Count a task entering the queue (`tasks_enqueued_total`).
    pub(super) fn count_enqueued(&self, priority: Priority) {
        if self.st.pinned.is_none() {
            self.where_queued().enqueued(priority);
        } else {
            self.with_queued(|d| d.queued.enqueued(priority));
        }
    }

    /// Run `f` on the queue's metric handles for the pinned engine (none before a
    /// replica pins one), resolved again when the engine changes or they are old.
    fn with_queued(&self, f: impl FnOnce(&DepthGauges)) {
        let Some(pinned) = &self.st.pinned else {
            return;
        };
        let mut cached = self.depth.borrow_mut();
        let fresh = cached
            .as_ref()
            .is_some_and(|d| Arc::ptr_eq(&d.pinned, pinned) && d.at.elapsed() < DEPTH_REFRESH);
        if !fresh {
            let queued = self.where_queued();
            *cached = Some(DepthGauges {
                pinned: pinned.clone(),
                at: Instant::now(),
                gauges: [Priority::Interactive, Priority::Batch]
                    .map(|p| queued.queue_depth_gauge(p.as_str())),
                queued,
            });
        }
        if let Some(d) = cached.as_ref() {
            f(d);
        }
    }

    pub(super) fn publish(&mut self) {
        let ready = self.st.is_ready();
        if self.was_ready != Some(ready) {
            crate::metrics::pool_ready(&self.id, ready);
            self.was_ready = Some(ready);
        }
        let snap = snapshot_of(&self.id, &self.st, self.running.len());
        self.snap_tx.send_replace(Arc::new(snap));
    }
}

/// What views see of a pool's state.
pub(super) fn snapshot_of(id: &Arc<str>, st: &PoolState, running: usize) -> Snapshot {
    let replicas = st
        .replicas
        .iter()
        .map(|r| ReplicaSnap {
            id: r.id.clone(),
            adapter: r.adapter.clone(),
            props: r.props.clone(),
            state: if r.staged {
                ReplicaState::Staged
            } else if r.draining {
                ReplicaState::Draining
            } else if r.ready {
                ReplicaState::Ready
            } else {
                ReplicaState::Unready
            },
            serving: r.serving(),
            busy: r.busy,
            endpoint: r.endpoint.clone(),
            pid: r.pid,
            last_error: r.last_error.clone(),
        })
        .collect();
    Snapshot {
        pool_id: id.clone(),
        spec: st.spec.clone(),
        pinned: st.pinned.clone(),
        ready: st.is_ready(),
        draining: st.draining,
        queue_depth: st.queue.len() as u32,
        queue_by_priority: [
            st.queue.len_of(Priority::Interactive) as u32,
            st.queue.len_of(Priority::Batch) as u32,
        ],
        slots_total: st.slots_total(),
        slots_free: st.free_slots(),
        busy_total: st.busy_total(),
        running: running as u32,
        retry_after_ms: st.retry_after_ms(),
        per_token_ms: st.per_token.mean_ms(),
        service_ms: st.service.mean_ms(),
        replicas,
        last_error: st.last_error.clone(),
    }
}
