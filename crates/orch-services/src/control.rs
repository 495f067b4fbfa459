//! Control-plane operations on pools: views, health, drain, and the replica switch
//! used by reload. Process supervision lives in [`crate::manager`].

use crate::orchestrator::{server_abort, Orchestrator};
use crate::pool::{Pinned, PoolState, Replica};
use crate::task::CancelReason;
use orch_domain::control::{DrainResponse, PoolHealth, PoolView, ReplicaSetView, ReplicaView};
use orch_domain::{OrchError, TaskState};
use std::time::Duration;
use tokio::time::Instant;

fn replica_view(r: &Replica) -> ReplicaView {
    let state = if r.staged {
        "staged"
    } else if r.draining {
        "draining"
    } else if r.ready {
        "ready"
    } else {
        "unready"
    };
    ReplicaView {
        id: r.id.clone(),
        state: state.into(),
        slots_total: r.props.slots,
        slots_free: r.props.slots.saturating_sub(r.busy),
        engine_version: r.props.engine_version.clone(),
        model_digest: r.props.model_digest.clone(),
        endpoint: r.endpoint.clone(),
        pid: r.pid,
        last_error: r.last_error.clone(),
    }
}

fn pool_view(id: &str, st: &PoolState) -> PoolView {
    let p = st.pinned.clone();
    PoolView {
        id: id.to_string(),
        engine: p.as_ref().map_or_else(String::new, |p| p.engine.clone()),
        engine_version: p
            .as_ref()
            .map_or_else(String::new, |p| p.engine_version.clone()),
        model: st.spec.model.clone(),
        model_digest: p
            .as_ref()
            .map_or_else(String::new, |p| p.model_digest.clone()),
        sampler_profile_version: st.spec.sampler_profile_version.clone(),
        ctx_max: p.as_ref().map_or(0, |p| p.ctx_max),
        ready: st.is_ready(),
        draining: st.draining,
        slots_total: st.slots_total(),
        slots_free: st.free_slots(),
        queue_depth: st.queue.len() as u32,
        queue_capacity: st.queue.config().capacity as u32,
        queue_policy: st.queue.config().policy.label().as_str().into(),
        replicas: st.replicas.iter().map(replica_view).collect(),
    }
}

impl Orchestrator {
    pub fn pool_views(&self) -> Vec<PoolView> {
        self.pools()
            .iter()
            .map(|p| pool_view(&p.id, &p.lock()))
            .collect()
    }

    pub fn pool_view(&self, id: &str) -> Result<PoolView, OrchError> {
        let pool = self
            .pool(id)
            .ok_or_else(|| OrchError::not_found("pool", id))?;
        let st = pool.lock();
        Ok(pool_view(id, &st))
    }

    pub fn pool_health(&self, id: &str) -> Result<PoolHealth, OrchError> {
        let pool = self
            .pool(id)
            .ok_or_else(|| OrchError::not_found("pool", id))?;
        // one snapshot: view and last error under the same lock
        let (v, last_error) = {
            let st = pool.lock();
            (pool_view(id, &st), st.last_error.clone())
        };
        Ok(PoolHealth {
            pool_id: v.id,
            live: !v.replicas.is_empty(),
            ready: v.ready,
            draining: v.draining,
            last_error,
            queue_depth: v.queue_depth,
            queue_capacity: v.queue_capacity,
            slots_total: v.slots_total,
            slots_free: v.slots_free,
            replicas_ready: v.replicas.iter().filter(|r| r.state == "ready").count() as u32,
            replicas_total: v.replicas.len() as u32,
        })
    }

    pub fn replica_sets(&self) -> Vec<ReplicaSetView> {
        self.pools()
            .iter()
            .map(|p| {
                let st = p.lock();
                let v = pool_view(&p.id, &st);
                let total: u32 = st.replicas.iter().map(|r| r.props.slots).sum();
                ReplicaSetView {
                    id: format!(
                        "{}/{}",
                        p.id,
                        v.model_digest
                            .trim_start_matches("sha256:")
                            .get(..12)
                            .unwrap_or("")
                    ),
                    pool_id: p.id.clone(),
                    engine: v.engine,
                    engine_version: v.engine_version,
                    model_digest: v.model_digest,
                    sampler_profile_version: v.sampler_profile_version,
                    replicas: st.replicas.len() as u32,
                    replicas_ready: st.replicas.iter().filter(|r| r.serving()).count() as u32,
                    slots_total: total,
                    slots_free: total.saturating_sub(st.busy_total()),
                    load: if total == 0 {
                        0.0
                    } else {
                        f64::from(st.busy_total()) / f64::from(total)
                    },
                }
            })
            .collect()
    }

    /// Stop dispatch on a pool. Queued tasks end at once with a retriable error;
    /// running tasks may finish until `deadline`, then they are ended too.
    pub fn drain(&self, pool_id: &str, deadline: Duration) -> Result<DrainResponse, OrchError> {
        let pool = self
            .pool(pool_id)
            .ok_or_else(|| OrchError::not_found("pool", pool_id))?;
        let queued: Vec<_> = {
            let mut st = pool.lock();
            st.draining = true;
            let keys = st.queue.keys();
            for (k, _) in &keys {
                st.queue.cancel(k);
            }
            crate::dispatch::publish_depth(&pool.id, &st);
            crate::metrics::pool_ready(&pool.id, false);
            keys
        };
        let mut queued_ended = 0;
        for (id, _) in queued {
            if let Ok(rec) = self.record(id) {
                if rec.terminate(server_abort(CancelReason::Drain, pool_id)) {
                    queued_ended += 1;
                }
            }
        }
        let running = self.running_in(pool_id);
        let in_flight = running.len() as u32;
        let orch = self.clone();
        let pid = pool_id.to_string();
        tokio::spawn(async move {
            let end = Instant::now() + deadline;
            while Instant::now() < end && !orch.running_in(&pid).is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for rec in orch.running_in(&pid) {
                orch.cancel_record(&rec, CancelReason::Drain);
            }
        });
        tracing::info!(
            pool_id,
            deadline_ms = deadline.as_millis() as u64,
            in_flight,
            queued_ended,
            "drain started"
        );
        Ok(DrainResponse {
            pool_id: pool_id.to_string(),
            draining: true,
            deadline_ms: deadline.as_millis() as u64,
            in_flight,
            queued_ended,
        })
    }

    fn running_in(&self, pool_id: &str) -> Vec<std::sync::Arc<crate::task::TaskRecord>> {
        self.tasks()
            .values()
            .filter(|r| r.pool_id == pool_id && r.state() == TaskState::Running)
            .cloned()
            .collect()
    }

    /// Reload's switch: staged replicas `new_ids` start serving under a new pin; every
    /// other replica drains. Also clears a pool-level drain.
    pub fn switch_replicas(
        &self,
        pool_id: &str,
        new_ids: &[String],
        sampler_profile_version: &str,
    ) -> Result<Pinned, OrchError> {
        let pool = self
            .pool(pool_id)
            .ok_or_else(|| OrchError::not_found("pool", pool_id))?;
        let pinned = {
            let mut st = pool.lock();
            let first = st
                .replicas
                .iter()
                .find(|r| new_ids.contains(&r.id))
                .ok_or_else(|| OrchError::internal("no staged replica to switch to"))?;
            let pinned = Pinned::of(&first.props, sampler_profile_version);
            for r in st.replicas.iter_mut() {
                if new_ids.contains(&r.id) {
                    r.staged = false;
                } else {
                    r.draining = true;
                }
            }
            st.pinned = Some(pinned.clone());
            st.spec.sampler_profile_version = sampler_profile_version.to_string();
            st.draining = false;
            crate::metrics::pool_ready(&pool.id, st.is_ready());
            pinned
        };
        pool.wake.notify_one();
        Ok(pinned)
    }

    /// Remove a replica from its pool (after it drained or when it is stopped).
    pub fn detach_replica(&self, pool_id: &str, replica_id: &str) {
        if let Some(pool) = self.pool(pool_id) {
            let mut st = pool.lock();
            st.replicas.retain(|r| r.id != replica_id);
            crate::metrics::pool_ready(&pool.id, st.is_ready());
        }
    }

    /// Busy slots of one replica (0 when unknown).
    pub fn replica_busy(&self, pool_id: &str, replica_id: &str) -> u32 {
        self.pool(pool_id)
            .and_then(|p| {
                p.lock()
                    .replicas
                    .iter()
                    .find(|r| r.id == replica_id)
                    .map(|r| r.busy)
            })
            .unwrap_or(0)
    }
}

impl Orchestrator {
    /// `GET /v1/capabilities` data; `body_max_bytes` comes from the HTTP layer.
    pub fn capabilities(&self, body_max_bytes: u64) -> orch_domain::control::Capabilities {
        use orch_domain::control::{Capabilities, EngineCaps, QueueCaps, RateLimits};
        let engines = self
            .pools()
            .iter()
            .map(|p| {
                let st = p.lock();
                let v = pool_view(&p.id, &st);
                EngineCaps {
                    pool_id: v.id,
                    engine: v.engine,
                    engine_version: v.engine_version,
                    sampler_profile_version: v.sampler_profile_version,
                    model: v.model,
                    model_digest: v.model_digest,
                    ctx_max: v.ctx_max,
                    max_tokens_out: st.spec.max_tokens_out,
                    workloads: vec!["completion".into()],
                    concurrency: v.slots_total,
                    queue: QueueCaps {
                        capacity: v.queue_capacity,
                        policy: v.queue_policy,
                    },
                    ready: v.ready,
                }
            })
            .collect();
        Capabilities {
            api_version: orch_domain::control::API_VERSION.to_string(),
            engines,
            rate_limits: RateLimits {
                prompt_max_bytes: orch_domain::PROMPT_MAX_BYTES as u64,
                body_max_bytes,
                session_tokens_budget: self.config().session_token_budget,
            },
            features: orch_domain::control::FEATURES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}
