//! The record of one admitted task: who it is, its phase, its event log, its cancel
//! token and its one token counter.
//!
//! Owns: the task's [`Phase`] (moved only by the methods here, under the record's own
//! small lock) and its frames. [`TaskRecord::end`] is the single way a task ends: it
//! appends exactly one terminal frame, built by [`Ending::frame`], and tells the task
//! table through the record's end hook (after its lock is released).
//! Never: takes another lock while holding its own, or reaches a pool.

pub mod cancel;
pub mod log;

use crate::lifecycle::{CancelReason, Ending, Phase};
use cancel::CancelSignal;
use log::TaskLog;
use orch_domain::{
    ErrorCode, EventKind, FinishReason, Priority, SessionId, StreamEvent, TaskId, TaskRequest,
    TaskState,
};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Called once when a task ends (the task table's retention bookkeeping).
pub type EndHook = Arc<dyn Fn(&Arc<TaskRecord>) + Send + Sync>;

/// What a task used, handed to its settlement when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// False for a task refused after registration (it never entered a queue).
    pub admitted: bool,
    pub state: TaskState,
    /// Prompt tokens (known for tasks that ended with `end`; 0 otherwise).
    pub tokens_in: u32,
    pub tokens_out: u32,
    /// Prompt tokens the engine served from its cache (with `end`; 0 otherwise).
    pub tokens_cached: u32,
    /// The error code of a task that failed.
    pub error: Option<ErrorCode>,
    /// Whether the task was handed to an engine (it has a replica).
    pub started: bool,
    /// Milliseconds from admission to the end.
    pub elapsed_ms: u64,
}

/// What a task's terminal frame says about its use.
#[derive(Debug, Clone, Copy, Default)]
struct Ended {
    tokens_in: u32,
    tokens_cached: u32,
    error: Option<ErrorCode>,
}

impl Ended {
    fn of(ev: &StreamEvent) -> Self {
        match ev {
            StreamEvent::End(e) => Self {
                tokens_in: e.tokens_in,
                tokens_cached: e.tokens_cached.unwrap_or(0).min(e.tokens_in),
                error: None,
            },
            StreamEvent::Error(e) => Self {
                error: Some(e.code),
                ..Self::default()
            },
            _ => Self::default(),
        }
    }
}

/// Gives back what admission reserved for a task (quotas, session budget) and
/// records its outcome; runs once, when the task ends or is refused.
pub type Settlement = Box<dyn FnOnce(Settled) + Send>;

#[derive(Debug)]
struct Meta {
    phase: Phase,
    /// The request, until the task ends.
    request: Option<Arc<TaskRequest>>,
    replica_id: Option<String>,
    /// Engine and engine version, for the metrics and the lifecycle lines.
    engine: (String, String),
    finish: Option<FinishReason>,
    error_code: Option<ErrorCode>,
    cancel_reason: Option<CancelReason>,
    finished_at: Option<Instant>,
    queue_position: u32,
    predicted_start_ms: u64,
}

/// What a finished task leaves behind once its frames are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub id: TaskId,
    pub state: TaskState,
    pub priority: Priority,
    pub pool_id: String,
    pub replica_id: Option<String>,
    pub tokens_out: u32,
    pub finish: Option<FinishReason>,
    pub error_code: Option<ErrorCode>,
    pub finished_at: Option<Instant>,
    pub tenant: Arc<str>,
}

impl Summary {
    /// The task's status as a client reads it (no queue position: its pool knows it).
    pub fn to_status(&self) -> orch_domain::TaskStatus {
        orch_domain::TaskStatus {
            task_id: self.id,
            tenant: self.tenant.to_string(),
            state: self.state,
            priority: self.priority,
            pool_id: self.pool_id.clone(),
            replica_id: self.replica_id.clone(),
            queue_position: None,
            tokens_out: self.tokens_out,
            finish_reason: self.finish,
            error_code: self.error_code.map(|c| c.as_str().to_string()),
        }
    }
}

/// Identity of a task, fixed at admission.
pub struct Admission {
    pub id: TaskId,
    pub tenant: Arc<str>,
    pub priority: Priority,
    pub pool_id: String,
    pub session: Option<SessionId>,
    pub correlation_id: String,
    /// The pool's engine and version when it was admitted (updated when it starts).
    pub engine: (String, String),
    /// How long ago it was admitted (zero here; a task admitted on another instance
    /// has waited already).
    pub waited: std::time::Duration,
}

pub struct TaskRecord {
    pub id: TaskId,
    /// The tenant that admitted it.
    pub tenant: Arc<str>,
    pub priority: Priority,
    pub pool_id: String,
    pub session: Option<SessionId>,
    pub correlation_id: String,
    pub admitted_at: Instant,
    pub log: TaskLog,
    pub cancel: CancelSignal,
    readers: AtomicUsize,
    /// Bumped each time the last reader leaves; a grace timer acts only if no newer
    /// disconnect happened since it started.
    disconnects: AtomicU64,
    tokens_out: AtomicU32,
    meta: Mutex<Meta>,
    on_end: Option<EndHook>,
    settlement: Mutex<Option<Settlement>>,
    first_token: std::sync::OnceLock<FirstToken>,
    /// When the task first went to an engine.
    started_at: std::sync::OnceLock<Instant>,
    first_token_taken: std::sync::atomic::AtomicBool,
    /// What another run streamed before this one takes the generation over.
    resumed: Mutex<Option<Resumed>>,
}

/// A generation another run streamed part of (a pool leader that failed over, in
/// cluster mode): its run here continues it from these tokens, after the frames the
/// other run stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// The engine's ids of the tokens streamed, in order.
    pub ids: Vec<u32>,
    /// Their text.
    pub text: String,
    /// Token frames streamed (the next token's index).
    pub tokens: u32,
    /// Times the generation moved before.
    pub moves: u32,
    /// The replica it last ran on.
    pub from_replica: String,
    /// The model digest and engine version it ran with (from its `started` frame):
    /// token ids mean the same only to the same model and engine.
    pub model: String,
    pub engine_version: String,
}

/// When the engine produced a task's first token, and how long the task took from
/// admission to the engine call. The first reader that hands that token to its client
/// records the added latency from it: admission → first token to the client, minus the
/// engine's time (engine call → first token).
pub struct FirstToken {
    pub engine_at: Instant,
    pub before_engine_ms: f64,
    pub histogram: metrics::Histogram,
}

impl std::fmt::Debug for TaskRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskRecord")
            .field("id", &self.id)
            .field("pool_id", &self.pool_id)
            .field("phase", &self.phase())
            .finish()
    }
}

impl TaskRecord {
    /// A record for task `a`. `request` is `None` for a record that follows a task
    /// run elsewhere (its frames come from [`apply_stored`](Self::apply_stored)).
    pub fn new(a: Admission, request: Option<TaskRequest>, on_end: Option<EndHook>) -> Self {
        Self {
            id: a.id,
            tenant: a.tenant,
            priority: a.priority,
            pool_id: a.pool_id,
            session: a.session,
            correlation_id: a.correlation_id,
            admitted_at: Instant::now()
                .checked_sub(a.waited)
                .unwrap_or_else(Instant::now),
            log: TaskLog::new(),
            cancel: CancelSignal::default(),
            readers: AtomicUsize::new(0),
            disconnects: AtomicU64::new(0),
            tokens_out: AtomicU32::new(0),
            meta: Mutex::new(Meta {
                phase: Phase::Queued,
                request: request.map(Arc::new),
                replica_id: None,
                engine: a.engine,
                finish: None,
                error_code: None,
                cancel_reason: None,
                finished_at: None,
                queue_position: 0,
                predicted_start_ms: 0,
            }),
            on_end,
            settlement: Mutex::new(None),
            first_token: std::sync::OnceLock::new(),
            started_at: std::sync::OnceLock::new(),
            first_token_taken: std::sync::atomic::AtomicBool::new(false),
            resumed: Mutex::new(None),
        }
    }

    /// The generation continues what another run streamed: its tokens count from
    /// there. Before the task runs.
    pub fn set_resumed(&self, r: Resumed) {
        self.tokens_out.store(r.tokens, Ordering::Release);
        *self.resumed.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }

    /// What another run streamed, to the run that continues it (once).
    pub(crate) fn take_resumed(&self) -> Option<Resumed> {
        self.resumed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Set what runs when the task ends (admission's reservations). Before the task
    /// is visible to anyone else.
    pub fn set_settlement(&self, s: Settlement) {
        *self.settlement.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
    }

    fn settle(&self, admitted: bool, state: TaskState, ended: Ended) {
        let s = self
            .settlement
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(s) = s {
            s(Settled {
                admitted,
                state,
                tokens_in: ended.tokens_in,
                tokens_out: self.tokens_out(),
                tokens_cached: ended.tokens_cached,
                error: ended.error,
                started: self.meta().replica_id.is_some(),
                elapsed_ms: self.admitted_at.elapsed().as_millis() as u64,
            });
        }
    }

    fn meta(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn phase(&self) -> Phase {
        self.meta().phase
    }

    pub fn state(&self) -> TaskState {
        self.phase().state()
    }

    pub fn is_ended(&self) -> bool {
        self.phase().is_ended()
    }

    /// The request (until the task ends).
    pub fn request(&self) -> Option<Arc<TaskRequest>> {
        self.meta().request.clone()
    }

    /// The admission estimate shown in `started`.
    pub fn set_estimate(&self, queue_position: u32, predicted_start_ms: u64) {
        let mut m = self.meta();
        m.queue_position = queue_position;
        m.predicted_start_ms = predicted_start_ms;
    }

    pub fn estimate(&self) -> (u32, u64) {
        let m = self.meta();
        (m.queue_position, m.predicted_start_ms)
    }

    pub fn replica_id(&self) -> Option<String> {
        self.meta().replica_id.clone()
    }

    /// queued/retrying → running on `replica_id`. False when the task already ended.
    pub fn start(&self, replica_id: &str, engine: &str, engine_version: &str) -> bool {
        let mut m = self.meta();
        if !matches!(m.phase, Phase::Queued | Phase::Retrying) {
            return false;
        }
        m.phase = Phase::Running;
        m.replica_id = Some(replica_id.to_string());
        let _ = self.started_at.set(Instant::now());
        if m.engine.0 != engine || m.engine.1 != engine_version {
            m.engine = (engine.to_string(), engine_version.to_string());
        }
        true
    }

    /// running → retrying (the engine failed before the first token).
    pub fn retrying(&self) -> bool {
        let mut m = self.meta();
        if m.phase != Phase::Running {
            return false;
        }
        m.phase = Phase::Retrying;
        true
    }

    /// Append a non-terminal frame (dropped if the task already ended).
    pub fn emit(&self, ev: &StreamEvent) -> bool {
        self.log.push(ev)
    }

    /// Mark the engine's first token (once; a retry that produced none sets nothing).
    pub fn mark_first_token(&self, f: FirstToken) {
        let _ = self.first_token.set(f);
    }

    /// The first-token mark, to the first caller only.
    pub(crate) fn take_first_token(&self) -> Option<&FirstToken> {
        let f = self.first_token.get()?;
        (!self.first_token_taken.swap(true, Ordering::AcqRel)).then_some(f)
    }

    /// Count one streamed token; returns its 0-based index.
    pub fn add_token(&self) -> u32 {
        self.tokens_out.fetch_add(1, Ordering::AcqRel)
    }

    /// When the task first went to an engine (`None` while it waited).
    pub fn started_at(&self) -> Option<Instant> {
        self.started_at.get().copied()
    }

    /// Tokens streamed so far (the one counter).
    pub fn tokens_out(&self) -> u32 {
        self.tokens_out.load(Ordering::Acquire)
    }

    /// End the task with its terminal frame. Returns false if it had already ended.
    pub fn end(self: &Arc<Self>, ending: Ending) -> bool {
        let ev = ending.frame();
        {
            let mut m = self.meta();
            if m.phase.is_ended() {
                return false;
            }
            m.phase = Phase::Ended(ending.state());
            match &ev {
                StreamEvent::End(e) => m.finish = Some(e.finish_reason),
                StreamEvent::Error(e) => m.error_code = Some(e.code),
                _ => {}
            }
            m.request = None;
            m.finished_at = Some(Instant::now());
            // appended under the record's lock so phase and frames agree
            self.log.push(&ev);
        }
        let ended = Ended::of(&ev);
        let (engine, version) = self.meta().engine.clone();
        if let StreamEvent::Error(e) = &ev {
            crate::metrics::failed(&engine, &version, &self.pool_id, e.code.as_str());
        }
        self.log_ended(&ev, &engine, &version);
        self.settle(true, ending.state(), ended);
        if let Some(hook) = &self.on_end {
            hook(self);
        }
        true
    }

    /// Append a frame of this task that was stored by the instance running it (its
    /// pool's leader, in cluster mode), moving this record's phase, token count and
    /// ending the way the running record moved. The runner logs the task's lifecycle
    /// and counts its failures; this record only settles what its own admission
    /// reserved. False when the frame was not appended (the record had ended).
    pub fn apply_stored(self: &Arc<Self>, kind: EventKind, data: &str) -> bool {
        use orch_domain::{EndFrame, ErrorFrame, StartedFrame};
        let mut outcome = Ended::default();
        let ended = {
            let mut m = self.meta();
            if m.phase.is_ended() {
                return false;
            }
            let state = match kind {
                EventKind::Started => {
                    if let Ok(f) = serde_json::from_str::<StartedFrame>(data) {
                        m.replica_id = Some(f.replica_id);
                        m.engine = (f.engine, f.engine_version);
                    }
                    m.phase = Phase::Running;
                    None
                }
                EventKind::Token => {
                    self.add_token();
                    None
                }
                EventKind::Metrics => None,
                EventKind::End => {
                    let f = serde_json::from_str::<EndFrame>(data).ok();
                    m.finish = f.as_ref().map(|f| f.finish_reason);
                    if let Some(f) = &f {
                        outcome = Ended::of(&StreamEvent::End(f.clone()));
                    }
                    Some(f.map_or(TaskState::Completed, |f| f.state()))
                }
                EventKind::Error => {
                    m.error_code = serde_json::from_str::<ErrorFrame>(data)
                        .ok()
                        .map(|f| f.code);
                    outcome.error = Some(m.error_code.unwrap_or(ErrorCode::Internal));
                    Some(TaskState::Failed)
                }
            };
            if let Some(state) = state {
                m.phase = Phase::Ended(state);
                m.request = None;
                m.finished_at = Some(Instant::now());
            }
            if !self.log.push_stored(kind, data) {
                return false;
            }
            state
        };
        if let Some(state) = ended {
            self.settle(true, state, outcome);
            if let Some(hook) = &self.on_end {
                hook(self);
            }
        }
        true
    }

    /// The task's one lifecycle line for its end (spec §6 fields; never its prompt).
    fn log_ended(&self, ev: &StreamEvent, engine: &str, engine_version: &str) {
        let replica = self.replica_id().unwrap_or_default();
        match ev {
            StreamEvent::End(e) => tracing::info!(
                task_id = %self.id, tenant = %self.tenant, session_id = self.session.map(tracing::field::display),
                engine, engine_version,
                pool_id = %self.pool_id, replica_id = %replica, priority = self.priority.as_str(),
                tokens_in = e.tokens_in, tokens_out = e.tokens_out, decode_time_ms = e.decode_time_ms,
                ttft_ms = e.ttft_ms, finish_reason = e.finish_reason.as_str(),
                correlation_id = %self.correlation_id, "task ended"),
            StreamEvent::Error(e) => tracing::info!(
                task_id = %self.id, tenant = %self.tenant, session_id = self.session.map(tracing::field::display),
                engine, engine_version, pool_id = %self.pool_id, replica_id = %replica, priority = self.priority.as_str(),
                tokens_out = self.tokens_out(), error_code = e.code.as_str(),
                correlation_id = %self.correlation_id, "task failed"),
            _ => {}
        }
    }

    /// End the task as canceled, for `reason` or the one it recorded, with the tokens
    /// it streamed. Returns the reason when this call ended it (for the metric).
    pub fn end_canceled(self: &Arc<Self>, reason: Option<CancelReason>) -> Option<CancelReason> {
        let reason = reason.unwrap_or_else(|| self.cancel_reason());
        let ending = Ending::Canceled {
            reason,
            tokens_out: self.tokens_out(),
            pool_id: self.pool_id.clone(),
        };
        self.end(ending).then_some(reason)
    }

    /// Close a task that admission refused after registering it: its log gets the
    /// refusal as its terminal frame (for a reader that attached meanwhile), without
    /// the end hook (the task was never admitted, the table takes it back).
    pub fn refuse(&self, e: orch_domain::OrchError) {
        let ending = Ending::Failed(e);
        {
            let mut m = self.meta();
            if m.phase.is_ended() {
                return;
            }
            m.phase = Phase::Ended(ending.state());
            m.request = None;
            m.finished_at = Some(Instant::now());
            self.log.push(&ending.frame());
        }
        self.settle(false, ending.state(), Ended::default());
    }

    /// Ask the task to stop, recording why (first reason wins). False if it ended.
    pub fn request_cancel(&self, reason: CancelReason) -> bool {
        {
            let mut m = self.meta();
            if m.phase.is_ended() {
                return false;
            }
            m.cancel_reason.get_or_insert(reason);
        }
        self.cancel.cancel();
        true
    }

    pub fn cancel_reason(&self) -> CancelReason {
        self.meta().cancel_reason.unwrap_or(CancelReason::Client)
    }

    pub fn summary(&self) -> Summary {
        let m = self.meta();
        Summary {
            id: self.id,
            state: m.phase.state(),
            priority: self.priority,
            pool_id: self.pool_id.clone(),
            replica_id: m.replica_id.clone(),
            tokens_out: self.tokens_out(),
            finish: m.finish,
            error_code: m.error_code,
            finished_at: m.finished_at,
            tenant: self.tenant.clone(),
        }
    }

    pub fn reader_count(&self) -> usize {
        self.readers.load(Ordering::Acquire)
    }

    /// A reader arrives, if fewer than `max` read now (atomically: concurrent
    /// arrivals cannot overshoot).
    pub fn try_reader_join(&self, max: usize) -> bool {
        self.readers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// A reader left. Returns the disconnect generation when it was the last one.
    pub fn reader_left(&self) -> Option<u64> {
        let left = self
            .readers
            .fetch_sub(1, Ordering::AcqRel)
            .saturating_sub(1);
        (left == 0).then(|| self.disconnects.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// Whether `generation` is still the latest disconnect and nobody reads.
    pub fn still_abandoned(&self, generation: u64) -> bool {
        self.disconnects.load(Ordering::Acquire) == generation && self.reader_count() == 0
    }
}
