//! OrchQueue v1 domain vocabulary.
//!
//! This crate owns the types every layer speaks: the task request and its validation
//! rules, the admission and status responses, the SSE frame payloads, the error codes
//! with their `ErrorEnvelope`, and the backpressure policy labels. It depends on
//! `serde`, `thiserror` and `uuid` only: no I/O, no async runtime, no HTTP.

pub mod accounts;
pub mod console;
pub mod control;
pub mod error;
pub mod events;
pub mod ids;
mod int;
pub mod policy;
pub mod shared;
pub mod task;
pub mod views;

pub use error::{ErrorCode, ErrorEnvelope, OrchError};
pub use events::{
    EndFrame, ErrorFrame, EventKind, FinishReason, MetricsFrame, Migrated, PlacementReason,
    StartedFrame, StreamEvent, TokenFrame, UnknownEvent,
};
pub use ids::{SessionId, TaskId};
pub use policy::{FullPolicy, PolicyLabel};
pub use task::{
    ChatMessage, Determinism, EngineKind, KvHint, Placement, Priority, PromptIds, TaskRequest,
    Workload, MODEL_REF_MAX_CHARS, PROMPT_MAX_BYTES, PROMPT_MAX_CHARS, SAMPLER_PROFILE_MAX_CHARS,
    STOP_MAX_CHARS, STOP_MAX_ITEMS,
};
pub use views::{AdmissionResponse, SessionInfo, StreamLinks, TaskState, TaskStatus};
