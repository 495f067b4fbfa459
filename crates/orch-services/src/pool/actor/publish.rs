//! What the actor shows outside: the snapshot it publishes after each batch, the
//! queue-depth gauges, and the metric labels of a task that has no replica yet.

use super::Actor;
use crate::metrics::Where;
use crate::pool::state::PoolState;
use crate::pool::{ReplicaSnap, Snapshot};
use orch_domain::control::ReplicaState;
use orch_domain::Priority;
use std::sync::Arc;

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
        if self.st.pinned.is_none() {
            return;
        }
        let w = self.where_queued();
        w.queue_depth("interactive", self.st.queue.len_of(Priority::Interactive));
        w.queue_depth("batch", self.st.queue.len_of(Priority::Batch));
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
