//! What instances store and send each other about tasks: a task as its pool's queue
//! holds it, a task's recorded status, a leader's live answer and its queue hint.
//! Every instance of a cluster runs the same version; these forms are read only by
//! orchestratord.
//!
//! Owns: the serde forms and their conversions to the services' types. Never: I/O.

use orch_domain::{
    ChatMessage, FinishReason, Priority, TaskId, TaskRequest, TaskState, TaskStatus,
};
use orch_services::home::Placed;
use orch_services::{NewTask, PoolLoad};
use serde::{Deserialize, Serialize};

/// A task as its pool's replicated queue stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicatedTask {
    pub task_id: TaskId,
    pub tenant: String,
    pub pool_id: String,
    pub correlation_id: String,
    pub request: TaskRequest,
    /// The OpenAI door's chat (not part of the request's wire form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<Vec<ChatMessage>>,
    /// The prompt's tokens as the admitting instance's engine counted them (not part
    /// of the request's wire form), so the leader's fit check agrees with admission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u32>,
    /// When it was admitted (ms since the epoch, the admitting instance's clock; 0:
    /// not told): its queue-wait limit and deadline count from then, on any leader.
    #[serde(default)]
    pub admitted_ms: u64,
}

/// Now, in ms since the epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The longest wait taken from a stored admission time (a clock far off is not
/// believed beyond it).
const WAITED_MAX: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl ReplicatedTask {
    /// The task as the leader's pool runs it (its chat back in its request).
    pub fn into_new_task(self) -> NewTask {
        let mut request = self.request;
        request.chat = self.chat;
        request.prompt_tokens = self.prompt_tokens;
        let waited = if self.admitted_ms == 0 {
            std::time::Duration::ZERO
        } else {
            std::time::Duration::from_millis(now_ms().saturating_sub(self.admitted_ms))
                .min(WAITED_MAX)
        };
        NewTask {
            id: self.task_id,
            tenant: self.tenant,
            pool_id: self.pool_id,
            correlation_id: self.correlation_id,
            request,
            waited,
            resumed: None,
        }
    }
}

/// A task's status as the cluster knows it: recorded by its leader when it starts and
/// when it ends; a task still waiting is read from its pool's queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub tenant: String,
    pub pool_id: String,
    pub priority: Priority,
    pub state: TaskState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
    #[serde(default)]
    pub tokens_out: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

impl ClusterStatus {
    /// A stored task as it waits in its pool's queue.
    pub fn queued(t: &ReplicatedTask) -> Self {
        Self {
            tenant: t.tenant.clone(),
            pool_id: t.pool_id.clone(),
            priority: t.request.priority,
            state: TaskState::Queued,
            replica_id: None,
            tokens_out: 0,
            finish_reason: None,
            error_code: None,
        }
    }

    /// Status as a client sees it (no queue position: the queue is the leader's).
    pub fn to_status(&self, id: TaskId) -> TaskStatus {
        TaskStatus {
            task_id: id,
            tenant: self.tenant.clone(),
            state: self.state,
            priority: self.priority,
            pool_id: self.pool_id.clone(),
            replica_id: self.replica_id.clone(),
            queue_position: None,
            tokens_out: self.tokens_out,
            finish_reason: self.finish_reason,
            error_code: self.error_code.clone(),
        }
    }
}

/// A task as the leader running it sees it now (the task-state bucket has it only as
/// it started and ended).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveStatus {
    pub state: TaskState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
    pub tokens_out: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
}

impl LiveStatus {
    /// `s` with what the leader knows now.
    pub fn apply(self, s: &mut TaskStatus) {
        s.state = self.state;
        s.queue_position = self.queue_position;
        s.tokens_out = self.tokens_out;
        if self.replica_id.is_some() {
            s.replica_id = self.replica_id;
        }
    }
}

impl From<TaskStatus> for LiveStatus {
    fn from(s: TaskStatus) -> Self {
        Self {
            state: s.state,
            queue_position: s.queue_position,
            tokens_out: s.tokens_out,
            replica_id: s.replica_id,
        }
    }
}

/// A pool's queue as its leader last saw it (published a few times a second), for the
/// position and ETA a 202 on another instance reports.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QueueHint {
    /// How many tasks the leader's pool queue holds at most (0: not told).
    #[serde(default)]
    pub queue_capacity: u32,
    pub queue_depth: u32,
    pub slots_free: u32,
    pub slots_total: u32,
    pub service_ms: f64,
}

impl QueueHint {
    /// Where a task joining this queue now is expected to stand.
    pub fn placed(&self) -> Placed {
        PoolLoad::from(*self).placed()
    }
}

impl From<PoolLoad> for QueueHint {
    fn from(l: PoolLoad) -> Self {
        Self {
            queue_capacity: l.queue_capacity,
            queue_depth: l.queue_depth,
            slots_free: l.slots_free,
            slots_total: l.slots_total,
            service_ms: l.service_ms,
        }
    }
}

impl From<QueueHint> for PoolLoad {
    fn from(h: QueueHint) -> Self {
        Self {
            queue_capacity: h.queue_capacity,
            queue_depth: h.queue_depth,
            slots_free: h.slots_free,
            slots_total: h.slots_total,
            service_ms: h.service_ms,
        }
    }
}
