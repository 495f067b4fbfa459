//! The task lifecycle: its phases, why a task ends, and the one place a terminal frame
//! is built.
//!
//! ```text
//! queued ──dispatch──▶ running ──engine failed before its first token──▶ retrying
//!   │                    │  ▲                                              │
//!   │                    │  └───────────── placed on another replica ──────┘
//!   └──────┬─────────────┴──────────────────────┬──────────────────────────┘
//!          ▼                                    ▼
//!   ended (queued: canceled, evicted,     ended (completed, canceled, failed)
//!          expired, drained)
//! ```
//!
//! Every ending is an [`Ending`]; [`Ending::frame`] turns it into the task's single
//! `end` or `error` frame. Errors become frames through the domain's
//! `ErrorFrame::from(OrchError)`, so codes, retriability and hints are decided once.

use orch_domain::{
    EndFrame, ErrorCode, ErrorFrame, FinishReason, FullPolicy, OrchError, StreamEvent, TaskState,
};

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

    /// Client-side cancels end with `end`/`canceled`; server-side ones (drain,
    /// shutdown) with a retriable error, since the client did not ask for it.
    pub fn by_client(self) -> bool {
        matches!(self, CancelReason::Client | CancelReason::Abandoned)
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Queued,
    Running,
    /// The engine failed before the first token; looking for another replica.
    Retrying,
    Ended(TaskState),
}

impl Phase {
    /// The state clients see (`retrying` is still `running` to them).
    pub fn state(self) -> TaskState {
        match self {
            Phase::Queued => TaskState::Queued,
            Phase::Running | Phase::Retrying => TaskState::Running,
            Phase::Ended(s) => s,
        }
    }

    pub fn is_ended(self) -> bool {
        matches!(self, Phase::Ended(_))
    }
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// The engine finished the generation.
    Completed {
        tokens_in: u32,
        tokens_out: u32,
        decode_time_ms: u64,
        ttft_ms: u64,
        finish_reason: FinishReason,
        tokens_cached: Option<u32>,
    },
    /// Canceled after `tokens_out` tokens (0 when it never ran).
    Canceled {
        reason: CancelReason,
        tokens_out: u32,
        pool_id: String,
    },
    /// Evicted from a full queue by its policy.
    Evicted {
        policy: FullPolicy,
        retry_after_ms: u64,
        engine: String,
        pool_id: String,
    },
    /// Failed: the error is the frame.
    Failed(OrchError),
}

impl Ending {
    /// The state a task is in after this ending.
    pub fn state(&self) -> TaskState {
        match self {
            Ending::Completed { .. } => TaskState::Completed,
            Ending::Canceled { reason, .. } if reason.by_client() => TaskState::Canceled,
            _ => TaskState::Failed,
        }
    }

    /// The terminal frame (the only function that builds one).
    pub fn frame(&self) -> StreamEvent {
        match self {
            Ending::Completed {
                tokens_in,
                tokens_out,
                decode_time_ms,
                ttft_ms,
                finish_reason,
                tokens_cached,
            } => StreamEvent::End(EndFrame {
                tokens_in: *tokens_in,
                tokens_out: *tokens_out,
                decode_time_ms: *decode_time_ms,
                ttft_ms: *ttft_ms,
                finish_reason: *finish_reason,
                tokens_cached: *tokens_cached,
            }),
            Ending::Canceled {
                reason, tokens_out, ..
            } if reason.by_client() => StreamEvent::End(EndFrame {
                tokens_in: 0,
                tokens_out: *tokens_out,
                decode_time_ms: 0,
                ttft_ms: 0,
                finish_reason: FinishReason::Canceled,
                tokens_cached: None,
            }),
            Ending::Canceled {
                reason, pool_id, ..
            } => {
                let msg = match reason {
                    CancelReason::Drain => "pool drained before the task finished; retry",
                    _ => "server shutting down before the task finished; retry",
                };
                error_frame(
                    OrchError::new(ErrorCode::PoolUnready, msg)
                        .with_retry_after_ms(1000)
                        .with_pool(pool_id.as_str()),
                )
            }
            Ending::Evicted {
                policy,
                retry_after_ms,
                engine,
                pool_id,
            } => {
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
                error_frame(
                    OrchError::new(code, msg)
                        .with_retry_after_ms(*retry_after_ms)
                        .with_policy(policy.label())
                        .with_engine(engine.as_str())
                        .with_pool(pool_id.as_str()),
                )
            }
            Ending::Failed(e) => error_frame(e.clone()),
        }
    }

    /// The cancel reason, when this ending is a cancel (for metrics).
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        match self {
            Ending::Canceled { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}

fn error_frame(e: OrchError) -> StreamEvent {
    StreamEvent::Error(ErrorFrame::from(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_cancels_end_and_server_cancels_error() {
        let c = |reason| Ending::Canceled {
            reason,
            tokens_out: 3,
            pool_id: "p".into(),
        };
        for r in [CancelReason::Client, CancelReason::Abandoned] {
            let StreamEvent::End(e) = c(r).frame() else {
                panic!("{r:?} must end with `end`")
            };
            assert_eq!((e.finish_reason, e.tokens_out), (FinishReason::Canceled, 3));
            assert_eq!(c(r).state(), TaskState::Canceled);
        }
        for r in [CancelReason::Drain, CancelReason::Shutdown] {
            let StreamEvent::Error(e) = c(r).frame() else {
                panic!("{r:?} must end with `error`")
            };
            assert_eq!(e.code, ErrorCode::PoolUnready);
            assert!(e.retriable);
            assert_eq!(c(r).state(), TaskState::Failed);
        }
    }

    #[test]
    fn failures_keep_the_domain_error() {
        let e = OrchError::new(ErrorCode::ReplicaExhausted, "x").with_pool("p");
        let StreamEvent::Error(f) = Ending::Failed(e).frame() else {
            panic!("failure must be an error frame")
        };
        assert_eq!(f.code, ErrorCode::ReplicaExhausted);
        assert!(f.retriable);
        assert_eq!(f.pool_id.as_deref(), Some("p"));
    }
}
