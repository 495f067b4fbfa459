//! Admission: validate a task against the spec and the chosen pool, estimate its
//! queue position and start time, apply the queue's full-policy, and register it.

use crate::dispatch::{publish_depth, where_queued};
use crate::orchestrator::Orchestrator;
use crate::pool::{Pool, PoolState};
use crate::task::{Admission, TaskRecord};
use orch_domain::{
    AdmissionResponse, ErrorCode, ErrorFrame, FullPolicy, OrchError, PolicyLabel, StreamEvent,
    StreamLinks, TaskId, TaskRequest,
};
use orchestrator_core::eta::{predicted_start_ms, queue_position};
use std::sync::Arc;

/// Bytes per token assumed when checking that prompt + max_tokens fits the context
/// before the engine has tokenized the prompt (the engine enforces the exact limit).
pub const BYTES_PER_TOKEN_ESTIMATE: usize = 4;

pub fn estimate_prompt_tokens(prompt: &str) -> u32 {
    prompt.len().div_ceil(BYTES_PER_TOKEN_ESTIMATE) as u32
}

/// Milliseconds a client should wait before retrying a refused admission.
fn retry_after_ms(st: &PoolState) -> u64 {
    let slots = st.slots_total().max(1) as f64;
    ((st.service.mean_ms() / slots).round() as u64).max(1000)
}

impl Orchestrator {
    /// Admit a task: 202 data on success, a typed error otherwise.
    pub fn admit(
        &self,
        req: TaskRequest,
        correlation_id: &str,
    ) -> Result<AdmissionResponse, OrchError> {
        req.validate()?;
        if !self.is_accepting() {
            return Err(
                OrchError::new(ErrorCode::PoolUnready, "server is shutting down")
                    .with_retry_after_ms(1000),
            );
        }
        let pool = self.select_pool(&req)?;
        let id = req.task_id.unwrap_or_else(TaskId::new_random);
        if let Some(sid) = req.session_id {
            if let Some(left) = self.inner.sessions.remaining(sid) {
                if left < u64::from(req.max_tokens) {
                    return Err(OrchError::new(
                        ErrorCode::QuotaExceeded,
                        format!("session {sid} has {left} tokens left of its budget"),
                    )
                    .with_policy(PolicyLabel::Quota)
                    .with_retry_after_ms(1000)
                    .with_pool(&pool.id));
                }
            }
        }

        let mut st = pool.lock();
        // re-checked under the lock: a drain may have started since select_pool
        if !st.is_ready() {
            return Err(unready(&pool.id));
        }
        let pinned = st.pinned.clone().ok_or_else(|| {
            OrchError::new(
                ErrorCode::PoolUnready,
                format!("pool {} has no replica yet", pool.id),
            )
            .with_pool(&pool.id)
            .with_retry_after_ms(1000)
        })?;
        check_fits(&req, &st, pinned.ctx_max)?;
        let engine = pinned.engine.clone();

        let free = st.free_slots();
        let ahead = st.queue.ahead_if_enqueued(req.priority);
        let position = queue_position(ahead, free);
        let eta = predicted_start_ms(position, st.slots_total(), st.service.mean_ms());
        if let Some(deadline) = req.deadline_ms {
            // deadline_ms bounds completion: start estimate + decode estimate
            let tokens = req.expected_tokens.unwrap_or(req.max_tokens);
            let finish = eta as f64 + st.per_token.mean_ms() * f64::from(tokens);
            if finish > deadline as f64 {
                crate::metrics::rejected(&engine, "deadline_unmet");
                return Err(OrchError::new(
                    ErrorCode::DeadlineUnmet,
                    format!(
                        "deadline_ms {deadline} cannot be met: predicted start in {eta} ms, finish in {} ms",
                        finish.round()
                    ),
                )
                .with_pool(&pool.id));
            }
        }

        let mut tasks = self.tasks();
        if tasks.get(&id).is_some_and(|r| !r.is_terminal()) {
            return Err(OrchError::new(
                ErrorCode::Conflict,
                format!("task {id} already exists"),
            ));
        }
        let admitted = match st.queue.enqueue(id, req.priority) {
            Ok(a) => a,
            Err(full) => {
                let label = full.policy.label();
                crate::metrics::rejected(&engine, "queue_full");
                crate::metrics::backpressure(&engine, label.as_str());
                return Err(OrchError::new(
                    ErrorCode::AdmissionReject,
                    format!(
                        "queue of pool {} is full (capacity {})",
                        pool.id, full.capacity
                    ),
                )
                .with_policy(label)
                .with_retry_after_ms(retry_after_ms(&st))
                .with_engine(&engine)
                .with_pool(&pool.id));
            }
        };
        let priority = req.priority;
        let session = req.session_id;
        let rec = Arc::new(TaskRecord::new(
            Admission {
                id,
                priority,
                pool_id: pool.id.clone(),
                session,
                correlation_id: correlation_id.to_string(),
                queue_position: position,
                predicted_start_ms: eta,
            },
            req,
        ));
        tasks.insert(id, rec);
        let evicted = admitted.evicted.and_then(|v| tasks.get(&v).cloned());
        drop(tasks);
        publish_depth(&pool.id, &st);
        let policy = st.queue.config().policy;
        let backoff_hint = retry_after_ms(&st);
        drop(st);

        if let Some(victim) = evicted {
            evict(&pool, &victim, policy, &engine, backoff_hint);
        }
        if let Some(sid) = session {
            self.inner.sessions.begin_turn(sid);
        }
        where_queued(Some(&pinned), &pool.id).enqueued(priority.as_str());
        pool.wake.notify_one();
        tracing::debug!(task_id = %id, pool_id = %pool.id, queue_position = position,
            predicted_start_ms = eta, correlation_id, "admitted");
        Ok(AdmissionResponse {
            task_id: id,
            queue_position: position,
            predicted_start_ms: eta,
            backoff_ms: 0,
            streams: StreamLinks {
                sse: AdmissionResponse::stream_path(id),
            },
        })
    }

    /// Choose the pool for a request: placement pins and filters, model and engine match,
    /// readiness, then the least loaded.
    fn select_pool(&self, req: &TaskRequest) -> Result<Arc<Pool>, OrchError> {
        let pools = self.pools();
        let placement = req.placement.clone().unwrap_or_default();
        if let Some(pin) = &placement.pin_pool_id {
            let pool = pools.iter().find(|p| &p.id == pin).ok_or_else(|| {
                OrchError::invalid("placement.pin_pool_id", format!("unknown pool {pin}"))
            })?;
            let st = pool.lock();
            if !serves(&st, req) {
                return Err(OrchError::invalid(
                    "placement.pin_pool_id",
                    format!(
                        "pool {pin} does not serve model {} / this engine",
                        req.model_ref
                    ),
                ));
            }
            if !st.is_ready() {
                return Err(unready(pin));
            }
            return Ok(pool.clone());
        }
        let mut matching: Vec<(Arc<Pool>, bool, f64, usize)> = Vec::new();
        for p in pools
            .iter()
            .filter(|p| !placement.avoid_pools.contains(&p.id))
        {
            let st = p.lock();
            if serves(&st, req) {
                let load = (st.queue.len() as f64 + f64::from(st.busy_total()))
                    / f64::from(st.slots_total().max(1));
                let pref = placement
                    .prefer_pools
                    .iter()
                    .position(|x| x == &p.id)
                    .unwrap_or(usize::MAX);
                matching.push((p.clone(), st.is_ready(), load, pref));
            }
        }
        if matching.is_empty() {
            let what = match req.engine {
                Some(e) => format!("model {} on engine {}", req.model_ref, e.as_str()),
                None => format!("model {}", req.model_ref),
            };
            return Err(OrchError::new(
                ErrorCode::PoolUnavailable,
                format!("no pool serves {what}"),
            )
            .with_retry_after_ms(1000));
        }
        let ready = matching
            .iter()
            .filter(|m| m.1)
            .min_by(|a, b| a.3.cmp(&b.3).then(a.2.total_cmp(&b.2)));
        match ready {
            Some(m) => Ok(m.0.clone()),
            None => Err(unready(&matching[0].0.id)),
        }
    }
}

fn unready(pool_id: &str) -> OrchError {
    OrchError::new(
        ErrorCode::PoolUnready,
        format!("pool {pool_id} is not ready"),
    )
    .with_pool(pool_id)
    .with_retry_after_ms(1000)
}

/// Does this pool serve the request's model (name or digest) and engine?
fn serves(st: &PoolState, req: &TaskRequest) -> bool {
    let Some(p) = &st.pinned else {
        // not probed yet: match on the configured name only
        return st.spec.model == req.model_ref;
    };
    let model_ok = st.spec.model == req.model_ref || p.model_digest == req.model_ref;
    let engine_ok = req.engine.is_none_or(|e| e.as_str() == p.engine);
    model_ok && engine_ok
}

fn check_fits(req: &TaskRequest, st: &PoolState, ctx_max: u32) -> Result<(), OrchError> {
    if let Some(ctx) = req.ctx {
        if ctx > ctx_max {
            return Err(OrchError::invalid(
                "ctx",
                format!("{ctx} exceeds the pool's ctx_max {ctx_max}"),
            ));
        }
    }
    if req.max_tokens > st.spec.max_tokens_out {
        return Err(OrchError::invalid(
            "max_tokens",
            format!(
                "{} exceeds the pool's max_tokens_out {}",
                req.max_tokens, st.spec.max_tokens_out
            ),
        ));
    }
    let ctx = req.ctx.unwrap_or(ctx_max);
    let prompt = estimate_prompt_tokens(&req.prompt);
    if u64::from(prompt) + u64::from(req.max_tokens) > u64::from(ctx) {
        return Err(OrchError::invalid(
            "max_tokens",
            format!(
                "prompt (~{prompt} tokens) + max_tokens {} exceeds ctx {ctx}",
                req.max_tokens
            ),
        ));
    }
    if let Some(v) = &req.sampler_profile_version {
        if v != &st.spec.sampler_profile_version {
            return Err(OrchError::invalid(
                "sampler_profile_version",
                format!(
                    "{v} does not match the pool's {}",
                    st.spec.sampler_profile_version
                ),
            ));
        }
    }
    Ok(())
}

/// End an evicted task's stream with the policy's error.
fn evict(pool: &Pool, victim: &TaskRecord, policy: FullPolicy, engine: &str, retry_ms: u64) {
    let (code, msg) = match policy {
        FullPolicy::DropLru => (
            ErrorCode::QueueFullDropLru,
            "evicted from a full queue by policy drop-lru",
        ),
        _ => (
            ErrorCode::AdmissionReject,
            "shed from a full queue by a higher-priority task (policy shed-low-priority)",
        ),
    };
    let ev = StreamEvent::Error(ErrorFrame {
        code,
        message: msg.into(),
        retriable: true,
        retry_after_ms: Some(retry_ms),
        engine: Some(engine.to_string()),
        pool_id: Some(pool.id.clone()),
    });
    if victim.terminate(ev) {
        crate::metrics::backpressure(engine, policy.label().as_str());
        tracing::info!(task_id = %victim.id, pool_id = %pool.id, policy = policy.label().as_str(), "evicted queued task");
    }
}
