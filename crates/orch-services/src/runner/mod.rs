//! Running one task on an engine: drive the adapter's event stream into the task log
//! ([`attempt`]), retry on another replica when an engine fails before producing
//! anything, continue the generation on another one when it fails after
//! ([`migrate`]), and end the task through its lifecycle (always exactly one terminal
//! frame).
//!
//! Owns: nothing shared; a run holds its [`Assignment`] (and so its slot) until the
//! engine is confirmed idle after the terminal frame.
//! Never: takes a pool lock (there is none) or builds a frame by hand for an ending.

mod attempt;
mod migrate;

use crate::lifecycle::Ending;
use crate::metrics::Where;
use crate::pool::{Assignment, Launch, Observed, PromptSeen};
use crate::sessions::{KvHome, SessionStore};
use adapter_api::{EngineEnd, WorkerError};
use attempt::{Attempt, Streamed};
use futures_util::FutureExt;
use migrate::{Moved, Verdict};
use orch_domain::{ErrorCode, FinishReason, OrchError};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::time::Instant;

/// The pool actors' way to start a run. A run that panics still ends its task (the
/// slot goes back as the assignment unwinds).
pub fn launcher(sessions: Arc<SessionStore>) -> Launch {
    Arc::new(move |a: Assignment| {
        let rec = a.rec.clone();
        // boxed: the run's state is large, and the spawn would otherwise copy it into
        // the task's cell through each wrapper; this way only a pointer moves
        let run = AssertUnwindSafe(Box::pin(run(a, sessions.clone()))).catch_unwind();
        tokio::spawn(async move {
            if run.await.is_err() {
                tracing::error!(task_id = %rec.id, tenant = %rec.tenant, "task run panicked");
                rec.end(Ending::Failed(
                    OrchError::internal("the task's run failed").with_pool(rec.pool_id.as_str()),
                ));
            }
        });
    })
}

enum Outcome {
    Ended(EngineEnd),
    Canceled,
    /// The engine failed; `emitted` tells whether anything reached the client, and
    /// `ours` whether the runner itself (a watchdog) described the failure, so its
    /// words may reach the client (an adapter's may name the engine's address or
    /// quote its answer: those are logged only).
    Failed {
        err: WorkerError,
        emitted: bool,
        ours: bool,
    },
}

fn where_of(a: &Assignment) -> Where {
    Where::new(
        &a.pinned.engine,
        &a.pinned.engine_version,
        &a.pool.id,
        &a.replica_id,
    )
}

/// End the task with `failure` (naming its engine and pool), unless a cancel came
/// first: then it ends canceled.
fn end_failed(a: &Assignment, w: &Where, failure: OrchError) {
    let rec = &a.rec;
    if rec.cancel.is_cancelled() {
        if let Some(reason) = rec.end_canceled(None) {
            w.canceled(reason.as_str());
        }
    } else {
        rec.end(crate::lifecycle::Ending::Failed(
            failure
                .with_engine(a.pinned.engine.as_str())
                .with_pool(&*a.pool.id),
        ));
    }
}

async fn run(first: Assignment, sessions: Arc<SessionStore>) {
    let rec = first.rec.clone();
    let (engine, version) = (&first.pinned.engine, &first.pinned.engine_version);
    if !rec.start(&first.replica_id, engine, version) {
        return;
    }
    let mut w = where_of(&first);
    w.queue_wait_ms(
        rec.priority,
        first
            .dequeued_at
            .into_std()
            .saturating_duration_since(rec.admitted_at)
            .as_secs_f64()
            * 1e3,
    );
    let t_start = Instant::now();
    // the output is kept for a continuation only where one may happen
    let mut so_far = Streamed::new(first.limits.migrations > 0 && first.adapter.continues());
    if let Some(r) = rec.take_resumed() {
        // another run (a failed-over leader's) streamed part of it: continue that
        if !migrate::resume(&first, r, &mut so_far) {
            return;
        }
    }
    let mut a = first;
    let mut tried: Vec<Arc<str>> = Vec::new();
    loop {
        // a task starts once, however many replicas it is tried on
        if tried.is_empty() && so_far.moves == 0 {
            w.started(rec.priority);
        }
        let mut at = Attempt::new(&a, &w, &sessions, &mut so_far);
        let outcome = at.drive().await;
        let (attempt_t0, attempt_ms) = (at.t0, at.t0.elapsed().as_millis() as u64);
        drop(at);
        match outcome {
            Outcome::Ended(end) => {
                if !so_far.prompt_counted {
                    w.tokens_in(end.tokens_in);
                }
                finish_ok(a, &w, end, &so_far, t_start, &sessions);
                return;
            }
            Outcome::Canceled => {
                if let Some(reason) = rec.end_canceled(None) {
                    w.canceled(reason.as_str());
                }
                settle_engine(&a).await;
                return;
            }
            Outcome::Failed { err, emitted, ours } => {
                tracing::warn!(task_id = %rec.id, tenant = %rec.tenant, pool_id = %a.pool.id, replica_id = %a.replica_id,
                    error = %err, tokens_out = rec.tokens_out(), "engine failure");
                let public = if ours {
                    err.to_string()
                } else {
                    err.public_message()
                };
                if emitted && !rec.cancel.is_cancelled() {
                    match migrate::verdict(&a, &err, &so_far) {
                        Verdict::Continue => {
                            // the engine's time: to its last token, not the failure's
                            // detection (an idle watchdog's wait)
                            so_far.decode_before_ms += engine_ms(&so_far, attempt_t0, attempt_ms);
                            let (code, engine) = (err.code(), a.pinned.engine.clone());
                            let failed_on = w.clone();
                            match migrate::move_on(a, &err, &mut so_far).await {
                                Moved::To(next) => {
                                    a = *next;
                                    w = where_of(&a);
                                    continue;
                                }
                                Moved::Canceled => {
                                    if let Some(reason) = rec.end_canceled(None) {
                                        failed_on.canceled(reason.as_str());
                                    }
                                }
                                Moved::Nowhere(_) if rec.cancel.is_cancelled() => {
                                    if let Some(reason) = rec.end_canceled(None) {
                                        failed_on.canceled(reason.as_str());
                                    }
                                }
                                Moved::Nowhere(why) => {
                                    tracing::warn!(task_id = %rec.id, tenant = %rec.tenant, why, "generation not continued");
                                    rec.end(crate::lifecycle::Ending::Failed(
                                        OrchError::new(
                                            code,
                                            format!("{public}; not continued: {why}"),
                                        )
                                        .with_engine(engine.as_str())
                                        .with_pool(failed_on.pool_id.as_str()),
                                    ));
                                }
                            }
                            return;
                        }
                        Verdict::Complete => {
                            // every token it may have was streamed: only its end was lost
                            settle_if_abandoned(&a, &err).await;
                            let end = EngineEnd {
                                // as an engine that continued would count them
                                tokens_in: so_far.prompt_tokens.unwrap_or(0) + so_far.resumed_at,
                                tokens_out: rec.tokens_out(),
                                tokens_cached: None,
                                finish_reason: FinishReason::Length,
                                decode_time_ms: engine_ms(&so_far, attempt_t0, attempt_ms),
                                slot: None,
                            };
                            finish_ok(a, &w, end, &so_far, t_start, &sessions);
                            return;
                        }
                        Verdict::Refuse(why) => {
                            tracing::info!(task_id = %rec.id, tenant = %rec.tenant, why, "generation not continued");
                            let failure =
                                if so_far.moves > 0 && matches!(err, WorkerError::Rejected(_)) {
                                    let (code, msg) = migrate::refused_continuation();
                                    OrchError::new(code, msg)
                                } else if so_far.moves > 0 {
                                    OrchError::new(
                                        err.code(),
                                        format!(
                                            "{public}; not continued after {} move(s): {why}",
                                            so_far.moves
                                        ),
                                    )
                                } else {
                                    OrchError::new(
                                        err.code(),
                                        format!("{public}; not continued: {why}"),
                                    )
                                };
                            end_failed(&a, &w, failure);
                            settle_if_abandoned(&a, &err).await;
                            return;
                        }
                    }
                }
                let mut settled = false;
                // a watchdog abandoned a live engine stream: its slot is checked
                let stopped = matches!(err, WorkerError::Timeout(_));
                let mut failure = OrchError::new(err.code(), public.clone());
                if !emitted && err.retriable_elsewhere() && a.limits.retries > 0 {
                    tried.push(a.replica_id.clone());
                    if (tried.len() as u32) <= a.limits.retries && rec.retrying() {
                        // the failed replica is not tried again: once its engine is
                        // idle, its slot goes back while the retry waits for another
                        if stopped && !settled {
                            settle_engine(&a).await;
                            settled = true;
                        }
                        a.guard.release();
                        let next = a
                            .pool
                            .retry(rec.clone(), a.request.clone(), tried.clone())
                            .await;
                        // a strict task stays on the replica set it was admitted to
                        let strict =
                            a.request.determinism == Some(orch_domain::Determinism::Strict);
                        let moved_set = next.as_ref().is_some_and(|n| *n.pinned != *a.pinned);
                        if strict && moved_set {
                            // ends below like any failure (a cancel still wins)
                            drop(next);
                            failure = OrchError::new(
                                ErrorCode::PoolUnready,
                                "a reload replaced the replica set this strict task was admitted to before it could be retried; submit it again to run it on the new one",
                            )
                            .with_retry_after_ms(1000);
                        } else if let Some(next) = next {
                            tracing::info!(task_id = %rec.id, tenant = %rec.tenant, from = %a.replica_id, to = %next.replica_id,
                                "retrying on another replica before the first token");
                            let p = &next.pinned;
                            if rec.start(&next.replica_id, &p.engine, &p.engine_version) {
                                a = next;
                                w = where_of(&a);
                                continue;
                            }
                            // canceled while retrying: end below as a cancel
                            a = next;
                        }
                    } else {
                        failure = OrchError::new(
                            ErrorCode::ReplicaExhausted,
                            format!(
                                "failed before the first token on {} replica(s), retries used up; last error: {public}",
                                tried.len()
                            ),
                        )
                        .with_retry_after_ms(1000);
                    }
                }
                end_failed(&a, &w, failure);
                if stopped && !settled {
                    settle_engine(&a).await;
                }
                return;
            }
        }
    }
}

/// An attempt's engine time: from its start to its last token (not the failure's
/// detection, e.g. an idle watchdog's wait); all of it when it streamed nothing.
fn engine_ms(so_far: &Streamed, t0: Instant, attempt_ms: u64) -> u64 {
    so_far.last_token_at.map_or(attempt_ms, |t| {
        t.saturating_duration_since(t0.into_std()).as_millis() as u64
    })
}

/// A watchdog abandoned a live engine stream: confirm its slot is idle.
async fn settle_if_abandoned(a: &Assignment, err: &WorkerError) {
    if matches!(err, WorkerError::Timeout(_)) {
        settle_engine(a).await;
    }
}

/// After the terminal frame: confirm the engine stopped and its slot is idle, while
/// the task still holds the slot (so no new work lands on a busy engine slot).
async fn settle_engine(a: &Assignment) {
    if let Err(e) = a.adapter.cancel(a.rec.id).await {
        tracing::warn!(task_id = %a.rec.id, tenant = %a.rec.tenant, replica_id = %a.replica_id, error = %e,
            "engine cancel not confirmed");
    }
}

fn finish_ok(
    mut a: Assignment,
    w: &Where,
    end: EngineEnd,
    so_far: &Streamed,
    t_start: Instant,
    sessions: &SessionStore,
) {
    let rec = a.rec.clone();
    let tokens = rec.tokens_out();
    // a continued generation's engine counted the tokens so far as prompt; its
    // decode time adds the attempts before
    let tokens_in = end.tokens_in.saturating_sub(so_far.resumed_at);
    let end = EngineEnd {
        tokens_in,
        tokens_cached: end.tokens_cached.map(|c| c.min(tokens_in)),
        decode_time_ms: end.decode_time_ms + so_far.decode_before_ms,
        ..end
    };
    let ended = rec.end(Ending::Completed {
        tokens_in: end.tokens_in,
        tokens_out: tokens,
        decode_time_ms: end.decode_time_ms,
        ttft_ms: so_far.ttft_ms,
        finish_reason: end.finish_reason,
        tokens_cached: end.tokens_cached,
    });
    if !ended {
        return;
    }
    if let Some(c) = end.tokens_cached {
        w.tokens_cached(c);
    }
    w.decode_ms(rec.priority, end.decode_time_ms as f64);
    a.guard.prompt_seen(PromptSeen {
        tokens_in: end.tokens_in,
        tokens_cached: end.tokens_cached,
    });
    a.guard.observe(Observed {
        service_ms: t_start.elapsed().as_secs_f64() * 1e3,
        per_token_ms: (tokens > 0).then(|| end.decode_time_ms as f64 / f64::from(tokens)),
    });
    if let Some(sid) = rec.session {
        sessions.end_turn(
            &rec.tenant,
            sid,
            KvHome {
                pool_id: a.pool.id.to_string(),
                replica_id: a.replica_id.to_string(),
                slot: end.slot,
            },
        );
    }
}
