//! What the operator console shows (`GET /v1/console`): one snapshot of pools,
//! tenants, live tasks, recent failures and the last minutes' series, scoped to the
//! caller (a client key sees its own tenant's tasks and failures, and no replica
//! endpoints; an admin sees everything). Times are ms since the Unix epoch.

use crate::control::{PoolView, QuotaCaps};
use crate::{Priority, TaskId, TaskState};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsoleView {
    /// When the snapshot was taken.
    pub at_ms: u64,
    /// The caller's tenant and role.
    pub tenant: String,
    pub role: String,
    pub pools: Vec<PoolView>,
    pub tenants: Vec<ConsoleTenant>,
    /// Queued and running tasks, oldest first (at most 500).
    pub tasks: Vec<ConsoleTask>,
    /// How many queued and running tasks the caller may see in all.
    pub tasks_total: usize,
    /// The most recent failed tasks, newest first.
    pub failures: Vec<ConsoleFailure>,
    /// One point a second over the last five minutes, oldest first (the whole
    /// server's: admins only; empty for a client key).
    pub series: Vec<ConsolePoint>,
}

/// A tenant's share and use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsoleTenant {
    pub tenant: String,
    pub weight: u32,
    /// Its share of the output tokens served in the last minute, per priority.
    pub share_interactive: f64,
    pub share_batch: f64,
    pub in_flight: u32,
    pub queued: u32,
    pub quotas: QuotaCaps,
}

/// A task that is queued or running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsoleTask {
    pub task_id: TaskId,
    pub tenant: String,
    pub pool_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
    pub state: TaskState,
    pub priority: Priority,
    /// With a queued task: its place and predicted start, as its pool last
    /// estimated them (each `metrics_frame_interval_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_start_ms: Option<u64>,
    pub tokens_out: u32,
    /// Tokens per second since it first went to an engine (0 while queued).
    pub tokens_per_s: f64,
    /// Since admission.
    pub age_ms: u64,
}

/// A task that failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsoleFailure {
    pub task_id: TaskId,
    pub tenant: String,
    pub pool_id: String,
    pub code: String,
    pub at_ms: u64,
}

/// One second of the server's work.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsolePoint {
    pub at_ms: u64,
    /// Tokens streamed to clients in that second by this process, all pools.
    pub tokens_per_s: u64,
    pub queue_depth: u32,
    pub running: u32,
    /// Time to first token (admission to the first token handed to the client) of
    /// the tasks whose first token came in the ten seconds before, p50 and p99
    /// (absent with none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p50_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p99_ms: Option<u64>,
}
