//! Where admitted tasks live: the one seam between the services and a backend.
//!
//! A [`TaskHome`] takes every admitted task and answers for tasks this instance holds
//! no record of. The services hold exactly one, chosen once before serving
//! (`Orchestrator::set_home`; until then, and by default, the local one):
//!
//! * the local home (`crate::local`) queues and runs tasks on this instance's pools;
//! * a replicated home (orch-cluster's node, in cluster mode) stores each task where a
//!   pool's leader, on any instance, runs it, and copies what the leader stored into
//!   this instance's record with [`TaskRecord::apply_stored`].
//!
//! Owns: the trait and what crosses it ([`Admitted`], [`PoolLoad`], [`Placed`]).
//! Never: a connection, a wire format, or a branch on which home is in use.

use crate::lifecycle::CancelReason;
pub use crate::pool::Placed;
use crate::pool::{Flow, PoolHandle};
use crate::task::TaskRecord;
pub use crate::tenants::QueuedLease;
use futures_util::future::BoxFuture;
use orch_domain::{EventKind, OrchError, TaskId, TaskRequest, TaskStatus};
use std::sync::Arc;

/// Where admitted tasks are queued and run. Every error is already typed for
/// clients (a full queue is 429 `ADMISSION_REJECT`, a backend that cannot store is
/// 503).
pub trait TaskHome: Send + Sync {
    /// Take an admitted task (registered in the task table, its tenant's places
    /// reserved); returns the place it is expected to take. An error refuses the
    /// admission: the caller ends the record with it and forgets it.
    fn place(&self, task: Admitted) -> BoxFuture<'_, Result<Placed, OrchError>>;

    /// A task this instance holds no record of, as the home recorded it (`None`:
    /// unknown here).
    fn find(&self, id: TaskId) -> BoxFuture<'_, Result<Option<TaskStatus>, OrchError>>;

    /// Feed `rec`, a record made for a task [`find`](Self::find) returned, with the
    /// task's frames until its terminal one.
    fn follow(&self, rec: Arc<TaskRecord>);

    /// Act on a cancel of a task with a record here (its reason is recorded and its
    /// token fired already).
    fn cancel<'a>(
        &'a self,
        rec: &'a Arc<TaskRecord>,
        reason: CancelReason,
    ) -> BoxFuture<'a, Result<(), OrchError>>;

    /// Cancel a task [`find`](Self::find) returned (no record here).
    fn cancel_found<'a>(&'a self, task: &'a TaskStatus) -> BoxFuture<'a, Result<(), OrchError>>;

    /// Bring a status up to date with what the task's runner knows now: its place
    /// while it waits (and, for a task run elsewhere, its state and tokens so far).
    fn refresh<'a>(&'a self, status: &'a mut TaskStatus) -> BoxFuture<'a, ()>;

    /// Whether this instance can admit now (part of readiness).
    fn is_available(&self) -> bool;

    /// Whether tasks outlive this instance: run elsewhere, their frames reach a
    /// record here after they were stored (a reader may ask past what arrived), and at
    /// shutdown live tasks are left to the home instead of being ended.
    fn tasks_outlive_instance(&self) -> bool;
}

/// An admitted task on its way to its home (admission checked it fits its pool's last
/// published state: readiness, context and limits).
pub struct Admitted {
    pub(crate) rec: Arc<TaskRecord>,
    pub(crate) request: Arc<TaskRequest>,
    pub(crate) pool: PoolHandle,
    pub(crate) flow: Flow,
    pub(crate) lease: QueuedLease,
}

impl Admitted {
    /// The task's record (registered in the task table).
    pub fn record(&self) -> &Arc<TaskRecord> {
        &self.rec
    }

    /// The request as admitted.
    pub fn request(&self) -> &Arc<TaskRequest> {
        &self.request
    }

    /// The quotas of the task's tenant (a replicated home counts them across its
    /// instances).
    pub fn quotas(&self) -> crate::config::Quotas {
        self.lease.0.quotas()
    }

    /// The record and the tenant's queue place (to hold until the task starts).
    pub fn into_parts(self) -> (Arc<TaskRecord>, QueuedLease) {
        (self.rec, self.lease)
    }
}

/// A pool's queue and slots as they stand, for estimates made on another instance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolLoad {
    /// How many tasks the pool's own queue holds at most.
    pub queue_capacity: u32,
    pub queue_depth: u32,
    pub slots_free: u32,
    pub slots_total: u32,
    /// Mean service time of a task (ms).
    pub service_ms: f64,
}

impl PoolLoad {
    /// Where a task joining this queue now is expected to stand (as admission
    /// estimates it, with every queued task counted ahead).
    pub fn placed(&self) -> Placed {
        use orchestrator_core::eta::{predicted_start_ms, queue_position};
        let position = queue_position(self.queue_depth as usize, self.slots_free);
        Placed {
            queue_position: position,
            predicted_start_ms: predicted_start_ms(position, self.slots_total, self.service_ms),
        }
    }
}

/// A task's ending as a home stores it: the terminal frame's kind and its data,
/// encoded exactly as the task log encodes it.
pub fn ending_frame(ending: &crate::lifecycle::Ending) -> (EventKind, String) {
    let ev = ending.frame();
    (ev.kind(), crate::task::log::encode(&ev))
}
