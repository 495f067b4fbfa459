//! Cluster mode's seam: what the services need from a replicated backend, with no
//! NATS type in sight (the backend is `orch-cluster`; the binary wires it in).
//!
//! In cluster mode an instance that admits a task does not queue it on its own pool:
//! it stores it in the pool's replicated queue ([`ClusterPort::enqueue`]) and keeps a
//! *mirror* record in its task table, fed with the frames the pool's leader stored
//! ([`ClusterPort::follow`]); readers, status and cancel on this instance work on that
//! mirror exactly as on a local task. The leader (any instance) runs the task on its
//! pool through [`crate::Orchestrator::run_replicated`].
//!
//! Owns: the wire forms ([`ReplicatedTask`], [`ClusterStatus`]). Never: a connection.

use crate::pool::Placed;
use crate::task::TaskRecord;
use crate::tenants::QueuedLease;
use futures_util::future::BoxFuture;
use orch_domain::{
    ChatMessage, FinishReason, OrchError, Priority, TaskId, TaskRequest, TaskState, TaskStatus,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

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

/// A pool's queue as its leader last saw it (published a few times a second), for the
/// position and ETA a 202 on another instance reports.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QueueHint {
    pub queue_depth: u32,
    pub slots_free: u32,
    pub slots_total: u32,
    pub service_ms: f64,
}

impl QueueHint {
    /// Where a task joining this queue now is expected to stand (as standalone
    /// admission estimates it, with every queued task counted ahead).
    pub fn placed(&self) -> Placed {
        use orchestrator_core::eta::{predicted_start_ms, queue_position};
        let position = queue_position(self.queue_depth as usize, self.slots_free);
        Placed {
            queue_position: position,
            predicted_start_ms: predicted_start_ms(position, self.slots_total, self.service_ms),
        }
    }
}

/// What the services ask of the cluster. Every error is already typed for clients: a
/// full queue is 429 `ADMISSION_REJECT`, a cluster that cannot store is 503.
pub trait ClusterPort: Send + Sync {
    /// Store an admitted task in its pool's queue; returns once it is stored on a
    /// quorum (the 202 follows), with the place the cluster expects it to take (from
    /// the leader's last [`QueueHint`]; 0 when none is known). A task id stored before
    /// is not stored twice.
    fn enqueue<'a>(&'a self, task: &'a ReplicatedTask) -> BoxFuture<'a, Result<Placed, OrchError>>;

    /// Feed `mirror` with its task's stored frames until the terminal one; `lease`
    /// (the tenant's queue place, when this instance admitted it) is given back when
    /// the task starts. A cancel of the mirror is passed on to the task's leader.
    fn follow(&self, mirror: Arc<TaskRecord>, lease: Option<QueuedLease>);

    /// The recorded status of a task this instance has no record of.
    fn status(&self, id: TaskId) -> BoxFuture<'_, Result<Option<ClusterStatus>, OrchError>>;

    /// Whether this instance can admit through the cluster now (readiness): it
    /// reaches the cluster, and the cluster stored a write of it recently.
    fn is_available(&self) -> bool;

    /// A task as its pool's leader runs it now: its state, its place while it waits,
    /// its tokens so far (`None` when no leader answers at once, or the leader does
    /// not hold the task: not yet taken from the cluster's queue, or already ended).
    fn live<'a>(&'a self, pool_id: &'a str, id: TaskId) -> BoxFuture<'a, Option<LiveStatus>>;

    /// Ask the leader of `pool_id` to cancel a task (stored, so a later leader sees it).
    fn cancel<'a>(&'a self, pool_id: &'a str, id: TaskId) -> BoxFuture<'a, Result<(), OrchError>>;
}
