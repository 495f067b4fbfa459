//! The record of one admitted task: its request until dispatch, its state, its event
//! log and its cancel token. [`TaskRecord::terminate`] is the single way a task ends,
//! and it appends exactly one terminal frame.

use crate::task_log::TaskLog;
use orch_domain::{
    ErrorCode, FinishReason, Priority, SessionId, StreamEvent, TaskId, TaskRequest, TaskState,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why a task was canceled (the `reason` label of `tasks_canceled_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    Client,
    Abandoned,
    Shutdown,
    Drain,
}

impl CancelReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::Client => "client",
            CancelReason::Abandoned => "abandoned",
            CancelReason::Shutdown => "shutdown",
            CancelReason::Drain => "drain",
        }
    }
}

#[derive(Debug)]
pub struct TaskMeta {
    pub state: TaskState,
    pub request: Option<TaskRequest>,
    pub replica_id: Option<String>,
    pub tokens_out: u32,
    pub finish: Option<FinishReason>,
    pub error_code: Option<ErrorCode>,
    pub cancel_reason: Option<CancelReason>,
    pub finished_at: Option<Instant>,
}

#[derive(Debug)]
pub struct TaskRecord {
    pub id: TaskId,
    pub priority: Priority,
    pub pool_id: String,
    pub session: Option<SessionId>,
    pub correlation_id: String,
    pub queue_position: u32,
    pub predicted_start_ms: u64,
    pub admitted_at: Instant,
    pub log: TaskLog,
    pub cancel: CancellationToken,
    pub readers: AtomicUsize,
    /// Bumped each time the last reader leaves; a grace timer acts only if no newer
    /// disconnect happened since it started.
    pub disconnects: std::sync::atomic::AtomicU64,
    meta: Mutex<TaskMeta>,
}

pub struct Admission {
    pub id: TaskId,
    pub priority: Priority,
    pub pool_id: String,
    pub session: Option<SessionId>,
    pub correlation_id: String,
    pub queue_position: u32,
    pub predicted_start_ms: u64,
}

impl TaskRecord {
    pub fn new(a: Admission, request: TaskRequest) -> Self {
        Self {
            id: a.id,
            priority: a.priority,
            pool_id: a.pool_id,
            session: a.session,
            correlation_id: a.correlation_id,
            queue_position: a.queue_position,
            predicted_start_ms: a.predicted_start_ms,
            admitted_at: Instant::now(),
            log: TaskLog::new(),
            cancel: CancellationToken::new(),
            readers: AtomicUsize::new(0),
            disconnects: std::sync::atomic::AtomicU64::new(0),
            meta: Mutex::new(TaskMeta {
                state: TaskState::Queued,
                request: Some(request),
                replica_id: None,
                tokens_out: 0,
                finish: None,
                error_code: None,
                cancel_reason: None,
                finished_at: None,
            }),
        }
    }

    pub fn meta(&self) -> MutexGuard<'_, TaskMeta> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> TaskState {
        self.meta().state
    }

    pub fn is_terminal(&self) -> bool {
        self.state().is_terminal()
    }

    /// Move to running on `replica_id`, handing the request to the dispatcher.
    /// Returns `None` when the task already ended (canceled while being placed).
    pub fn start(&self, replica_id: &str) -> Option<TaskRequest> {
        let mut m = self.meta();
        if m.state.is_terminal() {
            return None;
        }
        m.state = TaskState::Running;
        m.replica_id = Some(replica_id.to_string());
        m.request.take()
    }

    /// Put a task that failed before its first token back to queued (for a retry).
    pub fn requeue(&self, request: TaskRequest) -> bool {
        let mut m = self.meta();
        if m.state.is_terminal() {
            return false;
        }
        m.state = TaskState::Queued;
        m.replica_id = None;
        m.request = Some(request);
        true
    }

    /// Append a non-terminal frame (dropped if the task already ended).
    pub fn emit(&self, ev: &StreamEvent) -> bool {
        self.log.push(ev)
    }

    pub fn add_token(&self) {
        self.meta().tokens_out += 1;
    }

    /// End the task with its terminal frame. Returns false if it had already ended.
    pub fn terminate(&self, ev: StreamEvent) -> bool {
        let mut m = self.meta();
        if m.state.is_terminal() {
            return false;
        }
        m.state = match &ev {
            StreamEvent::End(e) if e.finish_reason == FinishReason::Canceled => TaskState::Canceled,
            StreamEvent::End(_) => TaskState::Completed,
            _ => TaskState::Failed,
        };
        match &ev {
            StreamEvent::End(e) => m.finish = Some(e.finish_reason),
            StreamEvent::Error(e) => m.error_code = Some(e.code),
            _ => {}
        }
        m.request = None;
        m.finished_at = Some(Instant::now());
        // the log is appended under the meta lock so state and frames agree
        self.log.push(&ev);
        true
    }

    /// Ask a running task to stop, recording why (first reason wins).
    pub fn request_cancel(&self, reason: CancelReason) {
        {
            let mut m = self.meta();
            if m.state.is_terminal() {
                return;
            }
            m.cancel_reason.get_or_insert(reason);
        }
        self.cancel.cancel();
    }

    pub fn cancel_reason(&self) -> CancelReason {
        self.meta().cancel_reason.unwrap_or(CancelReason::Client)
    }

    pub fn reader_count(&self) -> usize {
        self.readers.load(Ordering::Acquire)
    }
}
