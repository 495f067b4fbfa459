//! Response bodies of the data plane: admission, task status and session info.

use crate::events::FinishReason;
use crate::ids::{SessionId, TaskId};
use crate::task::Priority;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamLinks {
    pub sse: String,
}

/// `202 Accepted` body of `POST /v1/tasks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AdmissionResponse {
    pub task_id: TaskId,
    /// 0 = dispatched now (or next in line for a free slot).
    pub queue_position: u32,
    pub predicted_start_ms: u64,
    pub backoff_ms: u64,
    pub streams: StreamLinks,
}

impl AdmissionResponse {
    pub fn stream_path(id: TaskId) -> String {
        format!("/v1/tasks/{id}/stream")
    }

    /// The 202 of an admitted task at this place in its queue.
    pub fn accepted(task_id: TaskId, queue_position: u32, predicted_start_ms: u64) -> Self {
        Self {
            task_id,
            queue_position,
            predicted_start_ms,
            backoff_ms: 0,
            streams: StreamLinks {
                sse: Self::stream_path(task_id),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Queued,
    Running,
    Completed,
    Canceled,
    Failed,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Canceled | TaskState::Failed
        )
    }
}

/// `GET /v1/tasks/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskStatus {
    pub task_id: TaskId,
    /// The tenant that submitted the task.
    #[serde(default)]
    pub tenant: String,
    pub state: TaskState,
    pub priority: Priority,
    pub pool_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
    pub tokens_out: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

/// `GET /v1/sessions/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionInfo {
    pub session_id: SessionId,
    pub turns: u32,
    pub ttl_ms_remaining: u64,
    pub tokens_used: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_budget_remaining: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
    pub kv_warmth: bool,
}
