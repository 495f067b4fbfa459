//! The pool's side of admission, run inside the actor: readiness, fit against the
//! pinned context and limits, queue position and ETA, and deadline feasibility.

use super::state::{Pinned, PoolState};
use super::{Flow, Placed};
use crate::config::PoolSpec;
use orch_domain::{ErrorCode, OrchError, TaskRequest};
use orchestrator_core::eta::{predicted_start_ms, queue_position};
use std::sync::Arc;

/// Bytes per token assumed when checking that prompt + max_tokens fits the context
/// before the engine has tokenized the prompt (the engine enforces the exact limit).
pub const BYTES_PER_TOKEN_ESTIMATE: usize = 4;

pub fn estimate_prompt_tokens(prompt: &str) -> u32 {
    prompt.len().div_ceil(BYTES_PER_TOKEN_ESTIMATE) as u32
}

/// A task's prompt in tokens: its engine's count when admission took one, else the
/// estimate.
pub fn prompt_tokens(req: &TaskRequest) -> u32 {
    req.prompt_tokens
        .unwrap_or_else(|| estimate_prompt_tokens(&req.prompt))
}

/// 503 `POOL_UNREADY` for a pool that cannot take work now.
pub(crate) fn unready(pool_id: &str) -> OrchError {
    OrchError::new(
        ErrorCode::PoolUnready,
        format!("pool {pool_id} is not ready"),
    )
    .with_pool(pool_id)
    .with_retry_after_ms(1000)
}

/// Everything but the enqueue: Ok with the pin and the estimate if the task may join.
pub(super) fn check(
    st: &PoolState,
    pool_id: &str,
    req: &TaskRequest,
    flow: Flow,
) -> Result<(Arc<Pinned>, Placed), OrchError> {
    if !st.is_ready() {
        return Err(unready(pool_id));
    }
    let pinned = st.pinned.clone().ok_or_else(|| {
        OrchError::new(
            ErrorCode::PoolUnready,
            format!("pool {pool_id} has no replica yet"),
        )
        .with_pool(pool_id)
        .with_retry_after_ms(1000)
    })?;
    check_fits(req, &st.spec, pinned.ctx_max)?;
    let ahead = st.queue.ahead_if_pushed(req.priority, flow);
    let position = queue_position(ahead, st.free_slots());
    let eta = predicted_start_ms(position, st.slots_total(), st.service.mean_ms());
    if let Some(deadline) = req.deadline_ms {
        // deadline_ms bounds completion: start estimate + decode estimate
        let tokens = req.expected_tokens.unwrap_or(req.max_tokens);
        let finish = eta as f64 + st.per_token.mean_ms() * f64::from(tokens);
        if finish > deadline as f64 {
            return Err(OrchError::new(
                ErrorCode::DeadlineUnmet,
                format!(
                    "deadline_ms {deadline} cannot be met: predicted start in {eta} ms, finish in {} ms",
                    finish.round()
                ),
            )
            .with_pool(pool_id));
        }
    }
    Ok((
        pinned,
        Placed {
            queue_position: position,
            predicted_start_ms: eta,
        },
    ))
}

/// Readiness and fit against a published snapshot (cluster mode's admission, where the
/// pool's queue lives with its leader, maybe on another instance).
pub(crate) fn check_fits_snapshot(s: &super::Snapshot, req: &TaskRequest) -> Result<(), OrchError> {
    let pinned = s
        .pinned
        .as_ref()
        .filter(|_| s.ready)
        .ok_or_else(|| unready(&s.pool_id))?;
    check_fits(req, &s.spec, pinned.ctx_max)
}

/// Whether the prompt (counted, or else estimated) plus `max_tokens` exceeds the
/// task's context.
fn over_context(req: &TaskRequest, ctx_max: u32) -> bool {
    let ctx = req.ctx.unwrap_or(ctx_max);
    u64::from(prompt_tokens(req)) + u64::from(req.max_tokens) > u64::from(ctx)
}

/// Whether admission should ask the pool's engine to count the prompt: it is over
/// the context by the estimate and nobody counted it yet.
/// A prompt of one token must fit beside `max_tokens`, or no count could change the
/// answer.
pub(crate) fn worth_counting(s: &super::Snapshot, req: &TaskRequest) -> bool {
    req.prompt_tokens.is_none()
        && s.pinned.as_ref().is_some_and(|p| {
            let ctx = req.ctx.unwrap_or(p.ctx_max);
            ctx <= p.ctx_max && req.max_tokens < ctx && over_context(req, p.ctx_max)
        })
}

fn check_fits(req: &TaskRequest, spec: &PoolSpec, ctx_max: u32) -> Result<(), OrchError> {
    if let Some(ctx) = req.ctx {
        if ctx > ctx_max {
            return Err(OrchError::invalid(
                "ctx",
                format!("{ctx} exceeds the pool's ctx_max {ctx_max}"),
            ));
        }
    }
    if req.max_tokens > spec.max_tokens_out {
        return Err(OrchError::invalid(
            "max_tokens",
            format!(
                "{} exceeds the pool's max_tokens_out {}",
                req.max_tokens, spec.max_tokens_out
            ),
        ));
    }
    if over_context(req, ctx_max) {
        let ctx = req.ctx.unwrap_or(ctx_max);
        let prompt = match req.prompt_tokens {
            Some(n) => format!("{n} tokens, counted by the engine"),
            None => format!("~{} tokens", estimate_prompt_tokens(&req.prompt)),
        };
        return Err(OrchError::invalid(
            "max_tokens",
            format!(
                "prompt ({prompt}) + max_tokens {} exceeds ctx {ctx}",
                req.max_tokens
            ),
        ));
    }
    if let Some(v) = &req.sampler_profile_version {
        if v != &spec.sampler_profile_version {
            return Err(OrchError::invalid(
                "sampler_profile_version",
                format!(
                    "{v} does not match the pool's {}",
                    spec.sampler_profile_version
                ),
            ));
        }
    }
    Ok(())
}
