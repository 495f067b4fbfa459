//! One attempt of a task on one replica: submit to the engine, drive its event stream
//! into the task log under the first-token, idle and wall-clock watchdogs, honour
//! cancel. A continuation is an attempt too: it resumes from what earlier attempts
//! streamed ([`Streamed`]), sends no second `started`, and its tokens go on from the
//! next index.
//!
//! Owns: [`Streamed`], what a run has streamed across its attempts.

use super::Outcome;
use crate::metrics::Where;
use crate::pool::Assignment;
use crate::sessions::SessionStore;
use crate::task::FirstToken;
use adapter_api::{EngineEvent, EngineRequest, Resume, WorkerError};
use futures_util::StreamExt;
use orch_domain::{MetricsFrame, StartedFrame, StreamEvent, TokenFrame};
use orchestrator_core::eta::on_time_probability;
use tokio::time::Instant;

/// Tokens are added to `tokens_out_total` in batches of this many (and at the end).
const TOKEN_METRIC_BATCH: u64 = 16;

/// What a task's run has streamed so far, across the replicas it ran on.
pub(super) struct Streamed {
    /// `started` went out (once per task, whatever moves follow).
    pub started: bool,
    /// Time to the first token of the first attempt that produced one.
    pub ttft_ms: u64,
    /// Whether the output is kept for a continuation (the pool allows moves and the
    /// engine reports token ids); when false, `ids` and `text` stay empty.
    pub keep: bool,
    /// The engine's ids of every token streamed, in order.
    pub ids: Vec<u32>,
    /// Their text, as streamed.
    pub text: String,
    /// Every streamed token came with its ids (else nothing can be continued).
    pub ids_complete: bool,
    /// The prompt's length in tokens, as the first attempt's engine told it.
    pub prompt_tokens: Option<u32>,
    /// `tokens_in_total` already has the prompt.
    pub prompt_counted: bool,
    /// Times the generation moved to another engine.
    pub moves: u32,
    /// Tokens already generated when the current attempt started (its engine counts
    /// them as prompt).
    pub resumed_at: u32,
    /// Engine time of the attempts before the current one, in ms.
    pub decode_before_ms: u64,
    /// When the last token reached the log.
    pub last_token_at: Option<std::time::Instant>,
    /// Set when a continuation is under way: the first token after it ends the pause
    /// the client saw.
    pub pause_from: Option<std::time::Instant>,
    /// The generation's wall-clock limit, fixed by its first attempt.
    pub wall_end: Option<Instant>,
    /// The engines it failed on (a continuation avoids them).
    pub failed: Vec<std::sync::Arc<dyn adapter_api::WorkerAdapter>>,
}

impl Streamed {
    pub fn new(keep: bool) -> Self {
        Self {
            started: false,
            ttft_ms: 0,
            keep,
            ids: Vec::new(),
            text: String::new(),
            ids_complete: true,
            prompt_tokens: None,
            prompt_counted: false,
            moves: 0,
            resumed_at: 0,
            decode_before_ms: 0,
            last_token_at: None,
            pause_from: None,
            wall_end: None,
            failed: Vec::new(),
        }
    }

    /// What a continuation starts after, when there is anything to continue from.
    pub fn resume(&self) -> Option<Resume> {
        (self.moves > 0).then(|| Resume {
            ids: self.ids.clone(),
            text: self.text.clone(),
        })
    }
}

pub(super) struct Attempt<'a> {
    pub a: &'a Assignment,
    pub w: &'a Where,
    pub sessions: &'a SessionStore,
    pub so_far: &'a mut Streamed,
    pub t0: Instant,
    pub tokens_out: metrics::Counter,
    pub unflushed: u64,
    /// When the stream next gets a `metrics` frame.
    pub next_metrics: Option<Instant>,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.tokens_out.increment(self.unflushed);
        crate::metrics::console::streamed(self.unflushed);
    }
}

impl<'a> Attempt<'a> {
    pub fn new(
        a: &'a Assignment,
        w: &'a Where,
        sessions: &'a SessionStore,
        so_far: &'a mut Streamed,
    ) -> Self {
        Self {
            a,
            w,
            sessions,
            so_far,
            t0: Instant::now(),
            tokens_out: w.tokens_out_counter(),
            unflushed: 0,
            next_metrics: None,
        }
    }

    /// `started` goes out with the first engine event, once the replica is certain.
    fn ensure_started(&mut self) {
        if self.so_far.started {
            return;
        }
        self.so_far.started = true;
        let engine_at = std::time::Instant::now();
        let rec = &self.a.rec;
        let ttft_ms = self.t0.elapsed().as_millis() as u64;
        self.so_far.ttft_ms = ttft_ms;
        // the client's wait (from admission, queueing included) and the engine's part
        // (from this attempt's dispatch), separately
        let prio = rec.priority;
        self.w
            .first_token_ms(prio, rec.admitted_at.elapsed().as_secs_f64() * 1e3);
        self.w
            .first_token_dispatch_ms(prio, self.t0.elapsed().as_secs_f64() * 1e3);
        let (queue_position, predicted_start_ms) = rec.estimate();
        let p = &self.a.pinned;
        tracing::info!(task_id = %rec.id, tenant = %rec.tenant, pool_id = %self.a.pool.id,
            replica_id = %self.a.replica_id, engine = %p.engine, engine_version = %p.engine_version,
            priority = rec.priority.as_str(), placement = self.a.placement.as_str(), ttft_ms,
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
            migrated: None,
        }));
    }

    /// One token from the engine: into the log (with its ids), and kept for a
    /// continuation.
    fn token(&mut self, text: String, ids: Vec<u32>, now: Instant) {
        let rec = &self.a.rec;
        if let Some(from) = self.so_far.pause_from.take() {
            let ms = from.elapsed().as_secs_f64() * 1e3;
            crate::metrics::migration_pause_ms(&self.a.pool.id, ms);
            tracing::info!(task_id = %rec.id, tenant = %rec.tenant, pool_id = %self.a.pool.id,
                replica_id = %self.a.replica_id, pause_ms = ms, "continued generation streams again");
        }
        if self.so_far.keep {
            if ids.is_empty() {
                self.so_far.ids_complete = false;
            }
            self.so_far.ids.extend_from_slice(&ids);
            self.so_far.text.push_str(&text);
        }
        let i = rec.add_token();
        let ids = (!ids.is_empty()).then_some(ids);
        rec.emit(&StreamEvent::Token(TokenFrame { t: text, i, ids }));
        self.so_far.last_token_at = Some(now.into_std());
        if self.next_metrics.is_some_and(|t| now >= t) {
            self.next_metrics = Some(now + self.a.limits.metrics_every);
            self.progress(i + 1);
        }
        self.unflushed += 1;
        if self.unflushed == TOKEN_METRIC_BATCH {
            self.tokens_out.increment(self.unflushed);
            crate::metrics::console::streamed(self.unflushed);
            self.unflushed = 0;
        }
    }

    fn request(&self) -> EngineRequest {
        let (a, req, rec) = (self.a, &self.a.request, &self.a.rec);
        let resume = self.so_far.resume();
        let done = resume.as_ref().map_or(0, |r| r.ids.len() as u32);
        EngineRequest {
            task_id: rec.id,
            prompt: req.prompt.clone(),
            chat: req.chat.clone(),
            // a continuation generates what is left
            max_tokens: req.max_tokens.saturating_sub(done),
            seed: req.effective_seed(rec.id),
            // engines take f32; a positive top_p stays positive
            temperature: req.effective_temperature().map(|t| t as f32),
            top_p: req.top_p.map(|p| (p as f32).max(f32::MIN_POSITIVE)),
            stop: req.stop.clone().unwrap_or_default(),
            slot: a.slot_hint,
            // a strict task computes its whole prompt: a reused prefix was computed in
            // another batch shape, and its last bits can tip a greedy pick
            cache_prompt: crate::pool::reuses_cache(req),
            resume,
            prompt_ids: req.prompt_ids.clone(),
        }
    }

    pub async fn drive(&mut self) -> Outcome {
        let (a, rec) = (self.a, &self.a.rec);
        let lim = a.limits;
        let eng = self.request();
        self.so_far.resumed_at = eng.resume.as_ref().map_or(0, |r| r.ids.len() as u32);
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
                    emitted: self.so_far.started,
                    ours: false,
                }
            }
            Err(_) => {
                let err = WorkerError::Timeout(format!("no response within {:?}", lim.first_token));
                return Outcome::Failed {
                    err,
                    emitted: self.so_far.started,
                    ours: true,
                };
            }
        };
        // one wall-clock limit for the whole generation, continuations included
        let wall_end = *self
            .so_far
            .wall_end
            .get_or_insert_with(|| Instant::now() + lim.decode);
        if !lim.metrics_every.is_zero() {
            self.next_metrics = Some(Instant::now() + lim.metrics_every);
        }
        // one watchdog timer, re-armed only when it fires early (no timer per token);
        // the first event of every attempt (a continuation's prefill too) gets the
        // first-token limit, later ones the idle limit
        let mut seen = false;
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
                    let limit = if seen { lim.idle } else { lim.first_token };
                    let due = (last + limit).min(wall_end);
                    if now < due {
                        watchdog.as_mut().reset(due);
                        continue;
                    }
                    drop(stream);
                    let what = if now >= wall_end {
                        format!("generation exceeded its wall-clock limit of {:?}", lim.decode)
                    } else if seen {
                        format!("no engine event for {limit:?} between tokens")
                    } else {
                        format!("no engine event for {limit:?} before the first token")
                    };
                    return Outcome::Failed {
                        err: WorkerError::Timeout(what),
                        emitted: self.so_far.started,
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
                        emitted: self.so_far.started,
                        ours: true,
                    };
                }
                Some(Err(err)) => {
                    return Outcome::Failed {
                        err,
                        emitted: self.so_far.started,
                        ours: false,
                    }
                }
                Some(Ok(EngineEvent::Token {
                    text,
                    prompt_tokens,
                    ids,
                    ..
                })) => {
                    if let (Some(n), false) = (prompt_tokens, self.so_far.prompt_counted) {
                        // the prompt was processed: it counts even if the task
                        // does not complete (a continuation's engine counts the
                        // tokens so far as prompt too: they are not the task's)
                        let n = n.saturating_sub(self.so_far.resumed_at);
                        self.w.tokens_in(n);
                        self.so_far.prompt_counted = true;
                        self.so_far.prompt_tokens = Some(n);
                    }
                    if !seen {
                        seen = true;
                        self.ensure_started();
                        // from now on the (usually shorter) idle limit applies
                        watchdog.as_mut().reset((last + lim.idle).min(wall_end));
                    }
                    self.token(text, ids, last);
                }
                Some(Ok(EngineEvent::End(end))) => {
                    self.ensure_started();
                    return Outcome::Ended(end);
                }
            }
        }
    }
}
