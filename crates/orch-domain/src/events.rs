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
    /// Why this replica (additive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementReason>,
}

/// Why a task went to the replica it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PlacementReason {
    /// The replica holding the task's session.
    Session,
    /// The replica that holds the prompt's prefix in its cache.
    Prefix,
    /// The least loaded replica.
    Load,
    /// Another replica after the first failed before the first token.
    Retry,
    /// Another replica (or the same one restarted) continuing a generation whose
    /// engine failed mid-stream.
    Migration,
}

impl PlacementReason {
    /// Every reason (the `reason` label values of `tasks_placed_total`).
    pub const ALL: [PlacementReason; 5] = [
        PlacementReason::Session,
        PlacementReason::Prefix,
        PlacementReason::Load,
        PlacementReason::Retry,
        PlacementReason::Migration,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PlacementReason::Session => "session",
            PlacementReason::Prefix => "prefix",
            PlacementReason::Load => "load",
            PlacementReason::Retry => "retry",
            PlacementReason::Migration => "migration",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenFrame {
    pub t: String,
    pub i: u32,
    /// The engine's ids of the tokens `t` is made of (additive; present when the
    /// engine reports them, as llama.cpp does). A continuation on another replica
    /// resumes from them; they are engine- and model-specific.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<u32>>,
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
    /// While running, in a session with a token budget: what is left of it (less its
    /// earlier turns' prompt and output tokens and this turn's output so far).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_budget_remaining: Option<u64>,
    /// While running: whether the task runs where its KV cache was (placed by its
    /// session or by a cached prefix of its prompt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_warmth: Option<bool>,
    /// Sent once when a generation moved to another replica mid-stream and continues
    /// there: the stream goes on with the next token, no gap, no repeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrated: Option<Migrated>,
}

/// A running generation moved: its engine failed after it had streamed tokens, and it
/// continues on another replica (or the same one restarted) from the tokens streamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Migrated {
    /// The replica whose engine failed.
    pub from_replica: String,
    /// The replica that continues.
    pub to_replica: String,
    /// The failure, as the error code it would have ended the task with.
    pub reason: ErrorCode,
    /// The 0-based index of the first token the continuation streams.
    pub at_token: u32,
    /// How many times this task has moved, this one included.
    pub count: u32,
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

impl From<ErrorFrame> for OrchError {
    /// The error a stored `error` frame carried (a client library, or an instance
    /// that reads another's frames, gets back the error the server sent).
    fn from(f: ErrorFrame) -> Self {
        let mut e = OrchError::new(f.code, f.message);
        e.retriable = f.retriable;
        e.retry_after_ms = f.retry_after_ms;
        e.policy_label = f.policy_label;
        e.engine = f.engine;
        e.pool_id = f.pool_id;
        e
    }
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
    /// What kind of frame this is.
    pub fn kind(&self) -> EventKind {
        match self {
            StreamEvent::Started(_) => EventKind::Started,
            StreamEvent::Token(_) => EventKind::Token,
            StreamEvent::Metrics(_) => EventKind::Metrics,
            StreamEvent::End(_) => EventKind::End,
            StreamEvent::Error(_) => EventKind::Error,
        }
    }

    /// The SSE `event:` name.
    pub fn name(&self) -> &'static str {
        self.kind().as_str()
    }

    /// `end` and `error` close a stream; nothing follows them.
    pub fn is_terminal(&self) -> bool {
        self.kind().is_terminal()
    }
}

/// The kind of a stream frame: the SSE `event:` name, typed. Every place that decides
/// by a frame's kind matches on this; its name is written and read only by
/// [`EventKind::as_str`] and [`FromStr`](std::str::FromStr) (and serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Started,
    Token,
    Metrics,
    End,
    Error,
}

impl EventKind {
    /// Every kind, in the order a stream can carry them.
    pub const ALL: [EventKind; 5] = [
        EventKind::Started,
        EventKind::Token,
        EventKind::Metrics,
        EventKind::End,
        EventKind::Error,
    ];

    /// The SSE `event:` name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Token => "token",
            EventKind::Metrics => "metrics",
            EventKind::End => "end",
            EventKind::Error => "error",
        }
    }

    /// `end` and `error` close a stream; nothing follows them.
    pub fn is_terminal(self) -> bool {
        matches!(self, EventKind::End | EventKind::Error)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An SSE `event:` name that is not a frame kind of this contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown stream event {0:?}")]
pub struct UnknownEvent(pub String);

impl std::str::FromStr for EventKind {
    type Err = UnknownEvent;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownEvent(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_kind_reads_back_its_own_name_and_nothing_else() {
        for k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>(), Ok(k));
            assert_eq!(k.to_string(), k.as_str());
        }
        assert_eq!(
            "tokens".parse::<EventKind>(),
            Err(UnknownEvent("tokens".into()))
        );
        let terminal: Vec<_> = EventKind::ALL
            .into_iter()
            .filter(|k| k.is_terminal())
            .collect();
        assert_eq!(terminal, [EventKind::End, EventKind::Error]);
    }

    #[test]
    fn an_error_frame_gives_back_the_error_it_was_made_from() {
        let e = OrchError::new(crate::ErrorCode::AdmissionReject, "full")
            .with_retry_after_ms(250)
            .with_policy(crate::PolicyLabel::Reject)
            .with_pool("p0");
        assert_eq!(OrchError::from(ErrorFrame::from(e.clone())), e);
    }
}
