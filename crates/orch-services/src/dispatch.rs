//! The dispatcher: one loop per pool that takes work from the queue only when a ready
//! replica has a free slot, places it (session affinity, then least loaded), and runs
//! it. Running a task drives the adapter's event stream into the task log, enforces
//! the first-token and idle watchdogs, honours cancel, retries on another replica when
//! an engine fails before producing anything, and always ends with one terminal frame.

use crate::metrics::Where;
use crate::orchestrator::{canceled_end, server_abort, Inner, Orchestrator};
use crate::pool::{Pinned, Pool, PoolState, SlotGuard};
use crate::sessions::KvHome;
use crate::task::{CancelReason, TaskRecord};
use adapter_api::{EngineEnd, EngineEvent, EngineRequest, WorkerAdapter, WorkerError};
use futures_util::StreamExt;
use orch_domain::{
    EndFrame, ErrorFrame, Priority, StartedFrame, StreamEvent, TaskRequest, TokenFrame,
};
use orchestrator_core::placement::pick_replica;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// A dequeued task bound to a replica slot.
struct Assignment {
    record: Arc<TaskRecord>,
    replica_id: String,
    adapter: Arc<dyn WorkerAdapter>,
    pinned: Pinned,
    slot_hint: Option<u32>,
    _guard: SlotGuard,
    dequeued_at: Instant,
}

/// Metric labels for a task that has no replica yet.
pub(crate) fn where_queued(pinned: Option<&Pinned>, pool_id: &str) -> Where {
    Where {
        engine: pinned.map_or_else(|| "unknown".into(), |p| p.engine.clone()),
        engine_version: pinned.map_or_else(|| "unknown".into(), |p| p.engine_version.clone()),
        pool_id: pool_id.to_string(),
        replica_id: "none".into(),
    }
}

pub(crate) fn publish_depth(pool_id: &str, st: &PoolState) {
    let w = where_queued(st.pinned.as_ref(), pool_id);
    w.queue_depth("interactive", st.queue.len_of(Priority::Interactive));
    w.queue_depth("batch", st.queue.len_of(Priority::Batch));
}

pub(crate) async fn dispatcher(inner: Weak<Inner>, pool: Arc<Pool>) {
    loop {
        pool.wake.notified().await;
        let Some(inner) = inner.upgrade() else { return };
        let orch = Orchestrator { inner };
        while let Some(a) = next_assignment(&orch, &pool) {
            tokio::spawn(run(orch.clone(), pool.clone(), a));
        }
    }
}

fn next_assignment(orch: &Orchestrator, pool: &Arc<Pool>) -> Option<Assignment> {
    let mut st = pool.lock();
    loop {
        if st.draining || st.queue.is_empty() || st.free_slots() == 0 {
            return None;
        }
        let (id, _) = st.queue.dequeue()?;
        publish_depth(&pool.id, &st);
        let Some(record) = orch.tasks().get(&id).cloned() else {
            continue;
        };
        if record.is_terminal() {
            continue;
        }
        let home = record.session.and_then(|s| orch.inner.sessions.home(s));
        let preferred = home
            .as_ref()
            .filter(|h| h.pool_id == pool.id)
            .and_then(|h| st.replicas.iter().position(|r| r.id == h.replica_id));
        let loads = st.loads();
        st.rotate = st.rotate.wrapping_add(1);
        // free_slots() > 0 makes these succeed; should one not, the dequeued task still
        // gets its terminal frame instead of being lost
        let placed = pick_replica(&loads, preferred, st.rotate).and_then(|idx| {
            let replica_id = st.replicas[idx].id.clone();
            let adapter = st.replicas[idx].adapter.clone();
            // the session's engine slot is certainly free only on an idle replica; on a
            // busy one the engine picks a slot itself (prompt-cache similarity) instead
            // of making the task wait for that slot
            let idle = st.replicas[idx].busy == 0;
            let pinned = st.pinned.clone()?;
            let guard = SlotGuard::claim(pool, &mut st, &replica_id)?;
            Some((idx, replica_id, adapter, pinned, guard, idle))
        });
        let Some((idx, replica_id, adapter, pinned, guard, idle)) = placed else {
            record.terminate(StreamEvent::Error(ErrorFrame {
                code: orch_domain::ErrorCode::ReplicaExhausted,
                message: "no replica could take the task".into(),
                retriable: true,
                retry_after_ms: Some(1000),
                engine: None,
                pool_id: Some(pool.id.clone()),
            }));
            continue;
        };
        let slot_hint = home
            .filter(|h| idle && Some(idx) == preferred && h.replica_id == replica_id)
            .and_then(|h| h.slot);
        return Some(Assignment {
            record,
            replica_id,
            adapter,
            pinned,
            slot_hint,
            _guard: guard,
            dequeued_at: Instant::now(),
        });
    }
}

/// Another ready replica with a free slot, not among `tried`.
fn retry_assignment(pool: &Arc<Pool>, a: &Assignment, tried: &[String]) -> Option<Assignment> {
    let mut st = pool.lock();
    if st.draining {
        return None;
    }
    let loads: Vec<_> = st
        .replicas
        .iter()
        .map(|r| {
            let mut l = r.load();
            if tried.contains(&r.id) {
                l.ready = false;
            }
            l
        })
        .collect();
    let idx = pick_replica(&loads, None, 0)?;
    let replica_id = st.replicas[idx].id.clone();
    let adapter = st.replicas[idx].adapter.clone();
    let guard = SlotGuard::claim(pool, &mut st, &replica_id)?;
    Some(Assignment {
        record: a.record.clone(),
        replica_id,
        adapter,
        pinned: a.pinned.clone(),
        slot_hint: None,
        _guard: guard,
        dequeued_at: Instant::now(),
    })
}

enum Outcome {
    Ended(EngineEnd),
    Canceled,
    /// The engine failed; `emitted` tells whether anything reached the client.
    Failed {
        err: WorkerError,
        emitted: bool,
    },
}

struct Run<'a> {
    rec: &'a TaskRecord,
    a: &'a Assignment,
    req: &'a TaskRequest,
    w: Where,
    pool_id: &'a str,
    tokens: u32,
    started: bool,
    ttft_ms: u64,
    t0: Instant,
}

impl Run<'_> {
    /// `started` goes out with the first engine event, once the replica is certain.
    fn ensure_started(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        self.ttft_ms = self.t0.elapsed().as_millis() as u64;
        self.w.first_token_ms(
            self.rec.priority.as_str(),
            self.t0.elapsed().as_secs_f64() * 1e3,
        );
        self.rec.emit(&StreamEvent::Started(StartedFrame {
            queue_position: self.rec.queue_position,
            predicted_start_ms: self.rec.predicted_start_ms,
            engine: self.a.pinned.engine.clone(),
            engine_version: self.a.pinned.engine_version.clone(),
            model: self.a.pinned.model_digest.clone(),
            pool_id: self.pool_id.to_string(),
            replica_id: self.a.replica_id.clone(),
            sampler_profile_version: self.a.pinned.sampler_profile_version.clone(),
            seed: self.req.effective_seed(self.rec.id),
        }));
    }

    async fn drive(&mut self, first_timeout: Duration, idle_timeout: Duration) -> Outcome {
        let eng = EngineRequest {
            task_id: self.rec.id,
            prompt: self.req.prompt.clone(),
            max_tokens: self.req.max_tokens,
            seed: self.req.effective_seed(self.rec.id),
            temperature: self.req.effective_temperature(),
            top_p: self.req.top_p,
            stop: self.req.stop.clone().unwrap_or_default(),
            slot: self.a.slot_hint,
            cache_prompt: self.req.kv_hint != Some(orch_domain::KvHint::Cold),
        };
        self.w
            .dispatch_ms(self.a.dequeued_at.elapsed().as_secs_f64() * 1e3);
        let cancel = self.rec.cancel.clone();
        let submit = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Outcome::Canceled,
            r = tokio::time::timeout(first_timeout, self.a.adapter.submit(eng)) => r,
        };
        let mut stream = match submit {
            Ok(Ok(s)) => s,
            Ok(Err(err)) => {
                return Outcome::Failed {
                    err,
                    emitted: false,
                }
            }
            Err(_) => {
                let err = WorkerError::Timeout(format!("no response within {first_timeout:?}"));
                return Outcome::Failed {
                    err,
                    emitted: false,
                };
            }
        };
        let tokens_out = self.w.tokens_out_counter();
        loop {
            let limit = if self.started {
                idle_timeout
            } else {
                first_timeout
            };
            let next = tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    // dropping the stream stops the engine; `run` confirms the slot is
                    // idle once the terminal frame is out
                    drop(stream);
                    return Outcome::Canceled;
                }
                n = tokio::time::timeout(limit, stream.next()) => n,
            };
            match next {
                Err(_) => {
                    drop(stream);
                    let what = if self.started {
                        "between tokens"
                    } else {
                        "before the first token"
                    };
                    let err = WorkerError::Timeout(format!("no engine event for {limit:?} {what}"));
                    return Outcome::Failed {
                        err,
                        emitted: self.started,
                    };
                }
                Ok(None) => {
                    let err = WorkerError::Reset("engine closed the stream without an end".into());
                    return Outcome::Failed {
                        err,
                        emitted: self.started,
                    };
                }
                Ok(Some(Err(err))) => {
                    return Outcome::Failed {
                        err,
                        emitted: self.started,
                    }
                }
                Ok(Some(Ok(EngineEvent::Token { text, .. }))) => {
                    self.ensure_started();
                    self.rec.emit(&StreamEvent::Token(TokenFrame {
                        t: text,
                        i: self.tokens,
                    }));
                    self.rec.add_token();
                    self.tokens += 1;
                    tokens_out.increment(1);
                }
                Ok(Some(Ok(EngineEvent::End(end)))) => {
                    self.ensure_started();
                    return Outcome::Ended(end);
                }
            }
        }
    }
}

async fn run(orch: Orchestrator, pool: Arc<Pool>, first: Assignment) {
    let rec = first.record.clone();
    let Some(req) = rec.start(&first.replica_id) else {
        return;
    };
    let (first_timeout, idle_timeout, retries) = {
        let st = pool.lock();
        (
            st.spec.first_token_timeout,
            st.spec.idle_timeout,
            st.spec.retries_before_first_token,
        )
    };
    let t_start = Instant::now();
    let mut a = first;
    let mut tried: Vec<String> = Vec::new();
    loop {
        let w = Where {
            engine: a.pinned.engine.clone(),
            engine_version: a.pinned.engine_version.clone(),
            pool_id: pool.id.clone(),
            replica_id: a.replica_id.clone(),
        };
        w.started(rec.priority.as_str());
        let mut r = Run {
            rec: &rec,
            a: &a,
            req: &req,
            w: w.clone(),
            pool_id: &pool.id,
            tokens: 0,
            started: false,
            ttft_ms: 0,
            t0: Instant::now(),
        };
        let outcome = r.drive(first_timeout, idle_timeout).await;
        let (tokens, ttft_ms) = (r.tokens, r.ttft_ms);
        match outcome {
            Outcome::Ended(end) => {
                finish_ok(&orch, &pool, &rec, &a, &w, end, tokens, ttft_ms, t_start);
                return;
            }
            Outcome::Canceled => {
                let reason = rec.cancel_reason();
                let ev = match reason {
                    CancelReason::Client | CancelReason::Abandoned => canceled_end(tokens),
                    _ => server_abort(reason, &pool.id),
                };
                if rec.terminate(ev) {
                    w.canceled(reason.as_str());
                }
                charge_session(&orch, &rec, tokens);
                settle_engine(&a, &rec).await;
                return;
            }
            Outcome::Failed { err, emitted } => {
                // a watchdog timeout abandoned a live engine stream: its slot is checked
                let stopped = matches!(err, WorkerError::Timeout(_));
                tracing::warn!(task_id = %rec.id, pool_id = %pool.id, replica_id = %a.replica_id,
                    error = %err, tokens_out = tokens, "engine failure");
                if !emitted && err.retriable_elsewhere() && (tried.len() as u32) < retries {
                    tried.push(a.replica_id.clone());
                    if let Some(next) = retry_assignment(&pool, &a, &tried) {
                        tracing::info!(task_id = %rec.id, from = %a.replica_id, to = %next.replica_id,
                            "retrying on another replica before the first token");
                        if stopped {
                            settle_engine(&a, &rec).await;
                        }
                        rec.meta().replica_id = Some(next.replica_id.clone());
                        a = next;
                        continue;
                    }
                }
                rec.terminate(StreamEvent::Error(ErrorFrame {
                    code: err.code(),
                    message: err.to_string(),
                    retriable: err.code().default_retriable(),
                    retry_after_ms: None,
                    engine: Some(a.pinned.engine.clone()),
                    pool_id: Some(pool.id.clone()),
                }));
                charge_session(&orch, &rec, tokens);
                if stopped {
                    settle_engine(&a, &rec).await;
                }
                return;
            }
        }
    }
}

/// Streamed tokens of an unfinished turn still count against its session's budget.
fn charge_session(orch: &Orchestrator, rec: &TaskRecord, tokens: u32) {
    if let (Some(sid), true) = (rec.session, tokens > 0) {
        orch.inner.sessions.charge(sid, u64::from(tokens));
    }
}

/// After the terminal frame: confirm the engine stopped and its slot is idle, while
/// the task still holds the slot (so no new work lands on a busy engine slot).
async fn settle_engine(a: &Assignment, rec: &TaskRecord) {
    if let Err(e) = a.adapter.cancel(rec.id).await {
        tracing::warn!(task_id = %rec.id, replica_id = %a.replica_id, error = %e,
            "engine cancel not confirmed");
    }
}

#[allow(clippy::too_many_arguments)]
fn finish_ok(
    orch: &Orchestrator,
    pool: &Pool,
    rec: &TaskRecord,
    a: &Assignment,
    w: &Where,
    end: EngineEnd,
    tokens: u32,
    ttft_ms: u64,
    t_start: Instant,
) {
    let ended = rec.terminate(StreamEvent::End(EndFrame {
        tokens_in: end.tokens_in,
        tokens_out: tokens,
        decode_time_ms: end.decode_time_ms,
        ttft_ms,
        finish_reason: end.finish_reason,
        tokens_cached: end.tokens_cached,
    }));
    if !ended {
        return;
    }
    w.tokens_in(end.tokens_in);
    w.decode_ms(rec.priority.as_str(), end.decode_time_ms as f64);
    {
        let mut st = pool.lock();
        st.service.observe(t_start.elapsed().as_secs_f64() * 1e3);
        if tokens > 0 {
            st.per_token
                .observe(end.decode_time_ms as f64 / f64::from(tokens));
        }
    }
    if let Some(sid) = rec.session {
        orch.inner.sessions.end_turn(
            sid,
            u64::from(end.tokens_in) + u64::from(tokens),
            KvHome {
                pool_id: pool.id.clone(),
                replica_id: a.replica_id.clone(),
                slot: end.slot,
            },
        );
    }
    tracing::info!(task_id = %rec.id, pool_id = %pool.id, replica_id = %a.replica_id,
        tokens_in = end.tokens_in, tokens_out = tokens, decode_time_ms = end.decode_time_ms,
        ttft_ms, correlation_id = %rec.correlation_id, "task finished");
}
