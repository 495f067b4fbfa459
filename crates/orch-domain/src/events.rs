//! SSE frame payloads (spec §2). The `event:` name of each frame is
//! [`StreamEvent::name`]; the `data:` line is the payload serialized as one JSON line.

use crate::error::{ErrorCode, OrchError};
use crate::policy::PolicyLabel;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Length,
    Stop,
    Eos,
    Canceled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::Stop => "stop",
            FinishReason::Eos => "eos",
            FinishReason::Canceled => "canceled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StartedFrame {
    pub queue_position: u32,
    pub predicted_start_ms: u64,
    pub engine: String,
    pub engine_version: String,
    pub model: String,
    pub pool_id: String,
    pub replica_id: String,
    pub sampler_profile_version: String,
    pub seed: i64,
    /// Why this replica: `session`, `prefix` (it holds the prompt's prefix), `load`,
    /// or `retry` (additive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenFrame {
    pub t: String,
    pub i: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricsFrame {
    /// Tasks waiting in the pool's queue.
    pub queue_depth: u32,
    /// While queued: slot releases this task still waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
    /// While queued: predicted milliseconds until it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_start_ms: Option<u64>,
    /// With a deadline: the probability (0–1) that the task completes within it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_time_probability: Option<f64>,
    /// While running: tokens streamed so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_out: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_budget_remaining: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_warmth: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EndFrame {
    pub tokens_in: u32,
    pub tokens_out: u32,
    pub decode_time_ms: u64,
    pub ttft_ms: u64,
    pub finish_reason: FinishReason,
    /// Prompt tokens served from the engine's KV cache (additive field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_cached: Option<u32>,
}

impl EndFrame {
    /// The state a task is in after this frame: canceled when it says so, else
    /// completed (an `error` frame means failed).
    pub fn state(&self) -> crate::TaskState {
        if self.finish_reason == FinishReason::Canceled {
            crate::TaskState::Canceled
        } else {
            crate::TaskState::Completed
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorFrame {
    pub code: ErrorCode,
    pub message: String,
    pub retriable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// The queue policy that ended the task (eviction by `drop-lru`, shedding by
    /// `shed-low-priority`); additive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_label: Option<PolicyLabel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_id: Option<String>,
}

impl From<OrchError> for ErrorFrame {
    fn from(e: OrchError) -> Self {
        Self {
            code: e.code,
            message: e.message,
            retriable: e.retriable,
            retry_after_ms: e.retry_after_ms,
            policy_label: e.policy_label,
            engine: e.engine,
            pool_id: e.pool_id,
        }
    }
}

/// One frame of a task's event stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "data", rename_all = "snake_case")]
pub enum StreamEvent {
    Started(StartedFrame),
    Token(TokenFrame),
    Metrics(MetricsFrame),
    End(EndFrame),
    Error(ErrorFrame),
}

impl StreamEvent {
    pub fn name(&self) -> &'static str {
        match self {
            StreamEvent::Started(_) => "started",
            StreamEvent::Token(_) => "token",
            StreamEvent::Metrics(_) => "metrics",
            StreamEvent::End(_) => "end",
            StreamEvent::Error(_) => "error",
        }
    }

    /// `end` and `error` close a stream; nothing follows them.
    pub fn is_terminal(&self) -> bool {
        matches!(self, StreamEvent::End(_) | StreamEvent::Error(_))
    }
}
