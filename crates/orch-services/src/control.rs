//! Control-plane operations on pools: views (from published snapshots, no lock),
//! health, replica sets, capabilities, and drain. Process supervision and reload live
//! in [`crate::manager`].

use crate::core::Core;
use crate::lifecycle::CancelReason;
use crate::pool::{ReplicaSnap, Snapshot};
use orch_domain::control::{
    DrainResponse, PoolHealth, PoolView, ReplicaSetView, ReplicaState, ReplicaView,
};
use orch_domain::OrchError;
use std::time::Duration;

fn replica_view(r: &ReplicaSnap) -> ReplicaView {
    ReplicaView {
        id: r.id.to_string(),
        state: r.state,
        slots_total: r.props.slots,
        slots_free: r.props.slots.saturating_sub(r.busy),
        engine_version: r.props.engine_version.clone(),
        model_digest: r.props.model_digest.clone(),
        endpoint: r.endpoint.clone(),
        pid: r.pid,
        last_error: r.last_error.clone(),
    }
}

fn pool_view(s: &Snapshot) -> PoolView {
    let p = s.pinned.as_deref();
    PoolView {
        id: s.pool_id.to_string(),
        engine: p.map_or_else(String::new, |p| p.engine.clone()),
        engine_version: p.map_or_else(String::new, |p| p.engine_version.clone()),
        model: s.spec.model.clone(),
        model_digest: p.map_or_else(String::new, |p| p.model_digest.clone()),
        sampler_profile_version: s.spec.sampler_profile_version.clone(),
        ctx_max: p.map_or(0, |p| p.ctx_max),
        ready: s.ready,
        draining: s.draining,
        slots_total: s.slots_total,
        slots_free: s.slots_free,
        queue_depth: s.queue_depth,
        queue_capacity: s.spec.queue.capacity as u32,
        queue_policy: s.spec.queue.policy.label().as_str().into(),
        replicas: s.replicas.iter().map(replica_view).collect(),
    }
}

fn snapshot(core: &Core, id: &str) -> Result<std::sync::Arc<Snapshot>, OrchError> {
    core.pools
        .get(id)
        .map(|p| p.snapshot())
        .ok_or_else(|| OrchError::not_found("pool", id))
}

pub(crate) fn pool_views(core: &Core) -> Vec<PoolView> {
    core.pools
        .all()
        .iter()
        .map(|p| pool_view(&p.snapshot()))
        .collect()
}

pub(crate) fn pool_view_of(core: &Core, id: &str) -> Result<PoolView, OrchError> {
    let s = snapshot(core, id)?;
    Ok(pool_view(&s))
}

pub(crate) fn pool_health(core: &Core, id: &str) -> Result<PoolHealth, OrchError> {
    // one snapshot: view and last error agree
    let s = snapshot(core, id)?;
    let v = pool_view(&s);
    Ok(PoolHealth {
        pool_id: v.id,
        live: !v.replicas.is_empty(),
        ready: v.ready,
        draining: v.draining,
        last_error: s.last_error.clone(),
        queue_depth: v.queue_depth,
        queue_capacity: v.queue_capacity,
        slots_total: v.slots_total,
        slots_free: v.slots_free,
        replicas_ready: v
            .replicas
            .iter()
            .filter(|r| r.state == ReplicaState::Ready)
            .count() as u32,
        replicas_total: v.replicas.len() as u32,
    })
}

pub(crate) fn replica_sets(core: &Core) -> Vec<ReplicaSetView> {
    core.pools
        .all()
        .iter()
        .map(|p| {
            let s = p.snapshot();
            let v = pool_view(&s);
            let total: u32 = s.replicas.iter().map(|r| r.props.slots).sum();
            ReplicaSetView {
                id: format!(
                    "{}/{}",
                    s.pool_id,
                    v.model_digest
                        .trim_start_matches("sha256:")
                        .get(..12)
                        .unwrap_or("")
                ),
                pool_id: s.pool_id.to_string(),
                engine: v.engine,
                engine_version: v.engine_version,
                model_digest: v.model_digest,
                sampler_profile_version: v.sampler_profile_version,
                replicas: s.replicas.len() as u32,
                replicas_ready: s.replicas.iter().filter(|r| r.serving).count() as u32,
                slots_total: total,
                slots_free: total.saturating_sub(s.busy_total),
                load: if total == 0 {
                    0.0
                } else {
                    f64::from(s.busy_total) / f64::from(total)
                },
            }
        })
        .collect()
}

/// Stop dispatch on a pool. Queued tasks end at once with a retriable error; running
/// tasks may finish until `deadline` (waited on the pool's published running count,
/// not polled), then they are ended too.
pub(crate) async fn drain(
    core: &Core,
    pool_id: &str,
    deadline: Duration,
) -> Result<DrainResponse, OrchError> {
    let pool = core
        .pools
        .get(pool_id)
        .ok_or_else(|| OrchError::not_found("pool", pool_id))?;
    // the drain and its deadline run to completion even if the caller goes away
    let (queued_ended, in_flight) = tokio::spawn(async move {
        let r = pool.drain().await;
        tokio::spawn(async move {
            if !pool.wait_for(deadline, |s| s.running == 0).await {
                pool.stop_running(CancelReason::Drain);
            }
        });
        r
    })
    .await
    .map_err(|e| OrchError::internal(format!("drain task failed: {e}")))?;
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

/// `GET /v1/capabilities` data; `body_max_bytes` comes from the HTTP layer.
pub(crate) fn capabilities(
    core: &Core,
    caller: &crate::auth::Caller,
    body_max_bytes: u64,
) -> orch_domain::control::Capabilities {
    use orch_domain::control::{Capabilities, EngineCaps, QueueCaps, RateLimits};
    let engines = core
        .pools
        .all()
        .iter()
        .map(|p| {
            let s = p.snapshot();
            let v = pool_view(&s);
            EngineCaps {
                pool_id: v.id,
                engine: v.engine,
                engine_version: v.engine_version,
                sampler_profile_version: v.sampler_profile_version,
                model: v.model,
                model_digest: v.model_digest,
                ctx_max: v.ctx_max,
                max_tokens_out: s.spec.max_tokens_out,
                workloads: vec!["completion".into()],
                concurrency: v.slots_total,
                queue: QueueCaps {
                    capacity: v.queue_capacity,
                    policy: v.queue_policy,
                },
                placement: s.spec.placement.as_str().to_string(),
                ready: v.ready,
            }
        })
        .collect();
    Capabilities {
        api_version: orch_domain::control::API_VERSION.to_string(),
        engines,
        rate_limits: RateLimits {
            prompt_max_chars: Some(orch_domain::PROMPT_MAX_CHARS as u64),
            prompt_max_bytes: orch_domain::PROMPT_MAX_CHARS as u64,
            body_max_bytes,
            session_tokens_budget: core.cfg.session_token_budget,
        },
        features: orch_domain::control::FEATURES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        tenant: Some({
            let t = core.tenants.get(&caller.tenant);
            let mut caps = t.caps(caller.role);
            let q = t.quotas();
            let limits = crate::accounts::BudgetLimits {
                tokens_per_day: q.tokens_per_day,
                tokens_per_month: q.tokens_per_month,
            };
            if let Some(a) = core.accounts().filter(|_| limits.is_some()) {
                caps.budget = Some(a.budgets().caps(&t.name, limits));
            }
            caps
        }),
    }
}
