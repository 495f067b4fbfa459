//! Continuation (migration): a generation whose engine failed after it had streamed
//! tokens — the engine exited, reset, hung past a watchdog, was restarted or removed —
//! moves to another replica (or the same one once restarted: a new engine) and goes on
//! from the tokens streamed, with the same sampling settings and seed and what is left
//! of `max_tokens`. The client's stream goes on with the next token: no gap, no repeat,
//! no second `started`; one `metrics` frame says that it moved, from where and why.
//!
//! Guardrails ([`verdict`]): the pool's `migration_limit` (0 = never), an engine that
//! reports token ids, the generation's wall-clock limit and the task's deadline, a
//! sequence that still fits the engine's context, and not a strict task (a
//! continuation's prefill computes the tokens so far in another batch shape than their
//! decode did, which can tip a greedy pick). Anything else keeps the old typed error.

use super::attempt::Streamed;
use crate::pool::Assignment;
use adapter_api::WorkerError;
use orch_domain::{Determinism, ErrorCode, MetricsFrame, Migrated, StreamEvent};
use tokio::time::Instant;

/// What to do with a generation whose engine failed after it had streamed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Move it and go on.
    Continue,
    /// Every token it may have was streamed: it ends as completed (`length`).
    Complete,
    /// It ends with the failure, for this reason.
    Refuse(&'static str),
}

/// Whether a generation that failed with `err` after streaming `so_far` on `a`'s
/// replica continues elsewhere.
pub(super) fn verdict(a: &Assignment, err: &WorkerError, so_far: &Streamed) -> Verdict {
    let (lim, req, rec) = (a.limits, &a.request, &a.rec);
    if lim.migrations == 0 {
        return Verdict::Refuse("the pool's migration_limit is 0");
    }
    if matches!(err, WorkerError::Rejected(_)) {
        return Verdict::Refuse("the engine refused the request");
    }
    if !so_far.keep || !so_far.ids_complete {
        return Verdict::Refuse("the engine reports no token ids to continue from");
    }
    if req.determinism == Some(Determinism::Strict) {
        return Verdict::Refuse(
            "a strict task is not continued (a continuation could differ from a whole run)",
        );
    }
    let done = so_far.ids.len() as u32;
    if done >= req.max_tokens {
        return Verdict::Complete;
    }
    if so_far.moves >= lim.migrations {
        return Verdict::Refuse("the pool's migration_limit is used up");
    }
    if so_far.wall_end.is_some_and(|end| Instant::now() >= end) {
        return Verdict::Refuse("the generation's wall-clock limit passed");
    }
    if req
        .deadline_ms
        .is_some_and(|d| rec.admitted_at.elapsed().as_millis() >= u128::from(d))
    {
        return Verdict::Refuse("the task's deadline passed");
    }
    let ctx = a.pinned.ctx_max;
    let prompt = so_far.prompt_tokens.unwrap_or(0);
    if ctx > 0 && prompt.saturating_add(done) >= ctx {
        return Verdict::Refuse("the prompt and the tokens so far fill the engine's context");
    }
    Verdict::Continue
}

/// Where a continuation went.
pub(super) enum Moved {
    To(Box<Assignment>),
    /// Canceled while it waited for a replica.
    Canceled,
    /// No replica took it: it ends with the failure, for this reason.
    Nowhere(&'static str),
}

/// Give up `a`'s replica and find another for the rest of the generation (waiting up
/// to the pool's retry wait), then tell the client's stream that it moved.
pub(super) async fn move_on(a: Assignment, err: &WorkerError, so_far: &mut Streamed) -> Moved {
    let (rec, request, pool) = (a.rec.clone(), a.request.clone(), a.pool.clone());
    let (pinned, from) = (a.pinned.clone(), a.replica_id.clone());
    so_far.failed.push(a.adapter.clone());
    if matches!(err, WorkerError::Timeout(_)) {
        // a watchdog abandoned a live stream: its slot goes back once the engine is
        // confirmed idle (or the check gives up), without holding the continuation
        tokio::spawn(async move {
            super::settle_engine(&a).await;
            drop(a);
        });
    } else {
        // the engine's stream is gone: its slot goes back now (a restarted engine in
        // its place may take the continuation)
        drop(a);
    }
    if !rec.retrying() {
        return Moved::Canceled;
    }
    // a cancel while it waits for a replica ends the wait (the dropped request gives
    // back a slot the pool may be placing it in)
    let placed = tokio::select! {
        biased;
        _ = rec.cancel.cancelled() => return Moved::Canceled,
        p = pool.migrate(rec.clone(), request.clone(), so_far.failed.clone()) => p,
    };
    let Some(next) = placed else {
        return if rec.cancel.is_cancelled() {
            Moved::Canceled
        } else {
            Moved::Nowhere("no replica could take it within the pool's wait")
        };
    };
    if rec.cancel.is_cancelled() {
        return Moved::Canceled;
    }
    // token ids mean the same only to the same model and engine
    if *next.pinned != *pinned {
        return Moved::Nowhere("a reload replaced the replica set it ran on");
    }
    // it may have waited: its deadline still holds
    if request
        .deadline_ms
        .is_some_and(|d| rec.admitted_at.elapsed().as_millis() >= u128::from(d))
    {
        return Moved::Nowhere("the task's deadline passed while it waited for a replica");
    }
    let p = &next.pinned;
    if !rec.start(&next.replica_id, &p.engine, &p.engine_version) {
        return Moved::Canceled;
    }
    so_far.moves += 1;
    so_far.pause_from = so_far.last_token_at;
    let code = err.code();
    let at_token = rec.tokens_out();
    crate::metrics::migrated(&next.pool.id, code);
    tracing::info!(task_id = %rec.id, tenant = %rec.tenant, pool_id = %next.pool.id, from = %from,
        to = %next.replica_id, reason = code.as_str(), at_token, moves = so_far.moves,
        error = %err, "task migrated: its generation continues on another engine");
    tell_moved(
        &next,
        Migrated {
            from_replica: from.to_string(),
            to_replica: next.replica_id.to_string(),
            reason: code,
            at_token,
            count: so_far.moves,
        },
    );
    Moved::To(Box::new(next))
}

/// Take over a generation another run streamed part of (`r`: a failed-over pool
/// leader's), on `a`: continue it when [`verdict`] allows (telling the stream it moved),
/// complete it when every token was streamed, or end it with the failure the other
/// run's loss means. False when it ended here.
pub(super) fn resume(a: &Assignment, r: crate::task::Resumed, so_far: &mut Streamed) -> bool {
    let rec = &a.rec;
    so_far.started = true;
    so_far.ids_complete = so_far.keep && r.ids.len() >= r.tokens as usize;
    so_far.ids = r.ids;
    so_far.text = r.text;
    so_far.moves = r.moves;
    let lost =
        WorkerError::Reset("the pool's leader failed over after the task had streamed".into());
    let public = "the pool's leader failed over after the task had streamed";
    let end_failed = |why: &str| {
        tracing::info!(task_id = %rec.id, tenant = %rec.tenant, why, "generation not continued after a fail-over");
        rec.end(crate::lifecycle::Ending::Failed(
            orch_domain::OrchError::new(
                ErrorCode::WorkerReset,
                format!("{public}; not continued: {why}"),
            )
            .with_engine(a.pinned.engine.as_str())
            .with_pool(&*a.pool.id)
            .with_retry_after_ms(0),
        ));
    };
    let v = verdict(a, &lost, so_far);
    // token ids mean the same only to the same model and engine (a reload may have
    // come between the two leaders); a generation already whole needs neither
    let same = r.model == a.pinned.model_digest && r.engine_version == a.pinned.engine_version;
    if v != Verdict::Complete && !same {
        end_failed(
            "the pool's replicas run another model or engine version than the one it streamed on",
        );
        return false;
    }
    match v {
        Verdict::Continue => {}
        Verdict::Complete => {
            // nothing is left to generate, but its end was not stored
            rec.end(crate::lifecycle::Ending::Completed {
                tokens_in: so_far.prompt_tokens.unwrap_or(0),
                tokens_out: rec.tokens_out(),
                decode_time_ms: 0,
                ttft_ms: 0,
                finish_reason: orch_domain::FinishReason::Length,
                tokens_cached: None,
            });
            return false;
        }
        Verdict::Refuse(why) => {
            end_failed(why);
            return false;
        }
    }
    so_far.moves += 1;
    let at_token = rec.tokens_out();
    crate::metrics::migrated(&a.pool.id, ErrorCode::WorkerReset);
    tracing::info!(task_id = %rec.id, tenant = %rec.tenant, pool_id = %a.pool.id, from = %r.from_replica,
        to = %a.replica_id, at_token, moves = so_far.moves,
        "task migrated: its generation continues after its pool's leader failed over");
    tell_moved(
        a,
        Migrated {
            from_replica: r.from_replica,
            to_replica: a.replica_id.to_string(),
            reason: ErrorCode::WorkerReset,
            at_token,
            count: so_far.moves,
        },
    );
    true
}

/// The one `metrics` frame that tells the client's stream its generation moved to
/// `a`'s replica.
fn tell_moved(a: &Assignment, moved: Migrated) {
    a.rec.emit(&StreamEvent::Metrics(MetricsFrame {
        queue_depth: a.pool.snapshot().queue_depth,
        queue_position: None,
        predicted_start_ms: None,
        on_time_probability: None,
        tokens_out: Some(moved.at_token),
        tokens_budget_remaining: None,
        kv_warmth: None,
        migrated: Some(moved),
    }));
}

/// The error a generation ends with when a continuation itself was refused by the
/// engine: what moved it, not the refusal (the client's request was fine).
pub(super) fn refused_continuation() -> (ErrorCode, &'static str) {
    (
        ErrorCode::WorkerReset,
        "the engine failed mid-stream and refused to continue the generation; retry",
    )
}
