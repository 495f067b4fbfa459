//! Running one task on an engine: drive the adapter's event stream into the task log,
//! enforce the first-token, idle and wall-clock watchdogs, honour cancel, retry on
//! another replica when an engine fails before producing anything, and end the task
//! through its lifecycle (always exactly one terminal frame).
//!
//! Owns: nothing shared; a run holds its [`Assignment`] (and so its slot) until the
//! engine is confirmed idle after the terminal frame.
//! Never: takes a pool lock (there is none) or builds a frame by hand for an ending.

use crate::lifecycle::Ending;
use crate::metrics::Where;
use crate::pool::{Assignment, Launch, Observed};
use crate::sessions::{KvHome, SessionStore};
use crate::task::FirstToken;
use adapter_api::{EngineEnd, EngineEvent, EngineRequest, WorkerError};
use futures_util::{FutureExt, StreamExt};
use orch_domain::{ErrorCode, MetricsFrame, OrchError, StartedFrame, StreamEvent, TokenFrame};
use orchestrator_core::eta::on_time_probability;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::time::Instant;

/// The pool actors' way to start a run. A run that panics still ends its task (the
/// slot goes back as the assignment unwinds).
pub fn launcher(sessions: Arc<SessionStore>) -> Launch {
    Arc::new(move |a: Assignment| {
        let rec = a.rec.clone();
        let run = AssertUnwindSafe(run(a, sessions.clone())).catch_unwind();
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

/// Tokens are added to `tokens_out_total` in batches of this many (and at the end).
const TOKEN_METRIC_BATCH: u64 = 16;

struct Attempt<'a> {
    a: &'a Assignment,
    w: &'a Where,
    sessions: &'a SessionStore,
    started: bool,
    ttft_ms: u64,
    t0: Instant,
    tokens_out: metrics::Counter,
    unflushed: u64,
    /// When the stream next gets a `metrics` frame.
    next_metrics: Option<Instant>,
    /// `tokens_in_total` already has this attempt's prompt (told with a token).
    prompt_counted: bool,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.tokens_out.increment(self.unflushed);
    }
}

impl Attempt<'_> {
    /// `started` goes out with the first engine event, once the replica is certain.
    fn ensure_started(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        let engine_at = std::time::Instant::now();
        let rec = &self.a.rec;
        self.ttft_ms = self.t0.elapsed().as_millis() as u64;
        // the client's wait (from admission, queueing included) and the engine's part
        // (from this attempt's dispatch), separately
        let prio = rec.priority.as_str();
        self.w
            .first_token_ms(prio, rec.admitted_at.elapsed().as_secs_f64() * 1e3);
        self.w
            .first_token_dispatch_ms(prio, self.t0.elapsed().as_secs_f64() * 1e3);
        let (queue_position, predicted_start_ms) = rec.estimate();
        let p = &self.a.pinned;
        tracing::info!(task_id = %rec.id, tenant = %rec.tenant, pool_id = %self.a.pool.id,
            replica_id = %self.a.replica_id, engine = %p.engine, engine_version = %p.engine_version,
            priority = rec.priority.as_str(), placement = self.a.placement.as_str(), ttft_ms = self.ttft_ms,
            correlation_id = %rec.correlation_id, "task started");
        rec.emit(&StreamEvent::Started(StartedFrame {
            queue_position,
            predicted_start_ms,
            engine: p.engine.clone(),
            engine_version: p.engine_version.clone(),
            model: p.model_digest.clone(),
            pool_id: self.a.pool.id.to_string(),
            replica_id: self.a.replica_id.to_string(),
            sampler_profile_version: p.sampler_profile_version.clone(),
            seed: self.a.request.effective_seed(rec.id),
            placement: Some(self.a.placement),
        }));
        rec.mark_first_token(FirstToken {
            engine_at,
            // admission → this attempt's engine call (queue wait included)
            before_engine_ms: self
                .t0
                .into_std()
                .saturating_duration_since(rec.admitted_at)
                .as_secs_f64()
                * 1e3,
            histogram: self.w.added_latency(),
        });
    }

    /// A `metrics` frame while running: tokens so far, queue depth behind, with a
    /// deadline the probability of meeting it at the pool's observed decode rate, whether
    /// the task runs where its KV was (`kv_warmth`: placed by its session or a cached
    /// prefix), and with a session budget what is left of it counting this turn's tokens
    /// so far (its reservation, `max_tokens`, is held until it ends).
    fn progress(&self, tokens: u32) {
        let (a, req, rec) = (self.a, &self.a.request, &self.a.rec);
        let snap = a.pool.snapshot();
        let on_time = req.deadline_ms.map(|deadline| {
            let left = deadline as f64 - rec.admitted_at.elapsed().as_secs_f64() * 1e3;
            let todo = req
                .expected_tokens
                .unwrap_or(req.max_tokens)
                .saturating_sub(tokens);
            on_time_probability(snap.per_token_ms * f64::from(todo), 0.0, left)
        });
        rec.emit(&StreamEvent::Metrics(MetricsFrame {
            queue_depth: snap.queue_depth,
            queue_position: None,
            predicted_start_ms: None,
            on_time_probability: on_time,
            tokens_out: Some(tokens),
            tokens_budget_remaining: rec.session.and_then(|sid| {
                self.sessions.remaining_during(
                    &rec.tenant,
                    sid,
                    u64::from(req.max_tokens),
                    u64::from(tokens),
                )
            }),
            // warm only where its cached prefix is also used (not `kv_hint: cold`, not
            // a strict task, which computes its whole prompt)
            kv_warmth: Some(
                matches!(
                    a.placement,
                    orch_domain::PlacementReason::Session | orch_domain::PlacementReason::Prefix
                ) && req.kv_hint != Some(orch_domain::KvHint::Cold)
                    && req.determinism != Some(orch_domain::Determinism::Strict),
            ),
        }));
    }

    async fn drive(&mut self) -> Outcome {
        let (a, req, rec) = (self.a, &self.a.request, &self.a.rec);
        let lim = a.limits;
        let eng = EngineRequest {
            task_id: rec.id,
            prompt: req.prompt.clone(),
            chat: req.chat.clone(),
            max_tokens: req.max_tokens,
            seed: req.effective_seed(rec.id),
            // engines take f32; a positive top_p stays positive
            temperature: req.effective_temperature().map(|t| t as f32),
            top_p: req.top_p.map(|p| (p as f32).max(f32::MIN_POSITIVE)),
            stop: req.stop.clone().unwrap_or_default(),
            slot: a.slot_hint,
            // a strict task computes its whole prompt: a reused prefix was computed in
            // another batch shape, and its last bits can tip a greedy pick
            cache_prompt: req.kv_hint != Some(orch_domain::KvHint::Cold)
                && req.determinism != Some(orch_domain::Determinism::Strict),
        };
        self.w
            .dispatch_ms(a.dequeued_at.elapsed().as_secs_f64() * 1e3);
        let cancelled = rec.cancel.cancelled();
        tokio::pin!(cancelled);
        let submit = tokio::select! {
            biased;
            _ = &mut cancelled => return Outcome::Canceled,
            r = tokio::time::timeout(lim.first_token, a.adapter.submit(eng)) => r,
        };
        let mut stream = match submit {
            Ok(Ok(s)) => s,
            Ok(Err(err)) => {
                return Outcome::Failed {
                    err,
                    emitted: false,
                    ours: false,
                }
            }
            Err(_) => {
                let err = WorkerError::Timeout(format!("no response within {:?}", lim.first_token));
                return Outcome::Failed {
                    err,
                    emitted: false,
                    ours: true,
                };
            }
        };
        let wall_end = Instant::now() + lim.decode;
        if !lim.metrics_every.is_zero() {
            self.next_metrics = Some(Instant::now() + lim.metrics_every);
        }
        // one watchdog timer, re-armed only when it fires early (no timer per token)
        let mut last = Instant::now();
        let watchdog = tokio::time::sleep_until((last + lim.first_token).min(wall_end));
        tokio::pin!(watchdog);
        loop {
            let next = tokio::select! {
                biased;
                _ = &mut cancelled => {
                    // dropping the stream stops the engine; the run confirms the slot
                    // is idle once the terminal frame is out
                    drop(stream);
                    return Outcome::Canceled;
                }
                n = stream.next() => n,
                _ = &mut watchdog => {
                    let now = Instant::now();
                    let limit = if self.started { lim.idle } else { lim.first_token };
                    let due = (last + limit).min(wall_end);
                    if now < due {
                        watchdog.as_mut().reset(due);
                        continue;
                    }
                    drop(stream);
                    let what = if now >= wall_end {
                        format!("generation exceeded its wall-clock limit of {:?}", lim.decode)
                    } else if self.started {
                        format!("no engine event for {limit:?} between tokens")
                    } else {
                        format!("no engine event for {limit:?} before the first token")
                    };
                    return Outcome::Failed {
                        err: WorkerError::Timeout(what),
                        emitted: self.started,
                        ours: true,
                    };
                }
            };
            last = Instant::now();
            match next {
                None => {
                    let err = WorkerError::Reset("engine closed the stream without an end".into());
                    return Outcome::Failed {
                        err,
                        emitted: self.started,
                        ours: true,
                    };
                }
                Some(Err(err)) => {
                    return Outcome::Failed {
                        err,
                        emitted: self.started,
                        ours: false,
                    }
                }
                Some(Ok(EngineEvent::Token {
                    text,
                    prompt_tokens,
                    ..
                })) => {
                    if let (Some(n), false) = (prompt_tokens, self.prompt_counted) {
                        // the prompt was processed: it counts even if the task
                        // does not complete
                        self.w.tokens_in(n);
                        self.prompt_counted = true;
                    }
                    if !self.started {
                        self.ensure_started();
                        // from now on the (usually shorter) idle limit applies
                        watchdog.as_mut().reset((last + lim.idle).min(wall_end));
                    }
                    let i = rec.add_token();
                    rec.emit(&StreamEvent::Token(TokenFrame { t: text, i }));
                    if self.next_metrics.is_some_and(|t| last >= t) {
                        self.next_metrics = Some(last + lim.metrics_every);
                        self.progress(i + 1);
                    }
                    self.unflushed += 1;
                    if self.unflushed == TOKEN_METRIC_BATCH {
                        self.tokens_out.increment(self.unflushed);
                        self.unflushed = 0;
                    }
                }
                Some(Ok(EngineEvent::End(end))) => {
                    self.ensure_started();
                    return Outcome::Ended(end);
                }
            }
        }
    }
}

fn where_of(a: &Assignment) -> Where {
    Where {
        engine: a.pinned.engine.clone(),
        engine_version: a.pinned.engine_version.clone(),
        pool_id: a.pool.id.to_string(),
        replica_id: a.replica_id.to_string(),
    }
}

async fn run(first: Assignment, sessions: Arc<SessionStore>) {
    let rec = first.rec.clone();
    let (engine, version) = (&first.pinned.engine, &first.pinned.engine_version);
    if !rec.start(&first.replica_id, engine, version) {
        return;
    }
    where_of(&first).queue_wait_ms(
        rec.priority.as_str(),
        first
            .dequeued_at
            .into_std()
            .saturating_duration_since(rec.admitted_at)
            .as_secs_f64()
            * 1e3,
    );
    let t_start = Instant::now();
    let mut a = first;
    let mut tried: Vec<Arc<str>> = Vec::new();
    loop {
        let w = where_of(&a);
        // a task starts once, however many replicas it is tried on
        if tried.is_empty() {
            w.started(rec.priority.as_str());
        }
        let mut at = Attempt {
            a: &a,
            w: &w,
            sessions: &sessions,
            started: false,
            ttft_ms: 0,
            t0: Instant::now(),
            tokens_out: w.tokens_out_counter(),
            unflushed: 0,
            next_metrics: None,
            prompt_counted: false,
        };
        let outcome = at.drive().await;
        let ttft_ms = at.ttft_ms;
        let prompt_counted = at.prompt_counted;
        drop(at);
        let pool_id = a.pool.id.to_string();
        match outcome {
            Outcome::Ended(end) => {
                if !prompt_counted {
                    w.tokens_in(end.tokens_in);
                }
                finish_ok(a, &w, end, ttft_ms, t_start, &sessions);
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
                let mut settled = false;
                // a watchdog abandoned a live engine stream: its slot is checked
                let stopped = matches!(err, WorkerError::Timeout(_));
                tracing::warn!(task_id = %rec.id, tenant = %rec.tenant, pool_id = %pool_id, replica_id = %a.replica_id,
                    error = %err, tokens_out = rec.tokens_out(), "engine failure");
                let public = if ours {
                    err.to_string()
                } else {
                    err.public_message()
                };
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
                if rec.cancel.is_cancelled() {
                    if let Some(reason) = rec.end_canceled(None) {
                        w.canceled(reason.as_str());
                    }
                } else {
                    rec.end(Ending::Failed(
                        failure
                            .with_engine(a.pinned.engine.as_str())
                            .with_pool(pool_id.as_str()),
                    ));
                }
                if stopped && !settled {
                    settle_engine(&a).await;
                }
                return;
            }
        }
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
    ttft_ms: u64,
    t_start: Instant,
    sessions: &SessionStore,
) {
    let rec = a.rec.clone();
    let tokens = rec.tokens_out();
    let ended = rec.end(Ending::Completed {
        tokens_in: end.tokens_in,
        tokens_out: tokens,
        decode_time_ms: end.decode_time_ms,
        ttft_ms,
        finish_reason: end.finish_reason,
        tokens_cached: end.tokens_cached,
    });
    if !ended {
        return;
    }
    if let Some(c) = end.tokens_cached {
        w.tokens_cached(c);
    }
    w.decode_ms(rec.priority.as_str(), end.decode_time_ms as f64);
    a.guard
        .prompt_processed(end.tokens_in.saturating_sub(end.tokens_cached.unwrap_or(0)));
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
