//! Pools as actors. Each pool's queue, replicas, slot accounting and drain state are
//! owned by one task ([`actor`]) driven by [`Cmd`]s; everyone else holds a
//! [`PoolHandle`]: it sends commands and reads the latest published [`Snapshot`]
//! (a `watch`), so views, readiness and drain/reload waits take no lock.
//!
//! Owns: pool scheduling state (in the actor only). A slot is a [`SlotGuard`] that
//! sends "slot freed" from `Drop` and takes no lock.
//! Never: blocks the actor on I/O (probing a replica happens before `Attach`), or
//! builds a terminal frame itself (endings go through `TaskRecord::end`).

mod actor;
mod admit;
mod charge;
mod count;
mod observed;
mod slot;
pub mod state;

pub(crate) use admit::{estimate_prompt_tokens, prompt_tokens};

/// The upper bound a task is charged in its pool's fair queue when it is queued.
pub(crate) fn declared_cost(request: &TaskRequest) -> u64 {
    charge::declared(prompt_tokens(request), request)
}
pub(crate) use admit::{check_fits_snapshot, unready, worth_counting};
pub(crate) use count::{count_prompt, Count, COUNTS_AT_ONCE};
pub(crate) use observed::reuses_cache;
pub use slot::{Observed, PromptSeen, SlotGuard};
pub use state::{Pinned, Replica};

use crate::config::PoolSpec;
use crate::lifecycle::CancelReason;
use crate::sessions::SessionStore;
use crate::task::TaskRecord;
use crate::tenants::QueuedLease;
use adapter_api::{Properties, WorkerAdapter};
use orch_domain::{ErrorCode, OrchError, TaskId, TaskRequest};
pub use orchestrator_core::Flow;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// Starts running an assignment (the runner); injected so pools do not depend on it.
pub type Launch = Arc<dyn Fn(Assignment) + Send + Sync>;

/// Failure to add a replica to a pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("unknown pool {0}")]
    UnknownPool(String),
    #[error("duplicate pool {0}")]
    DuplicatePool(String),
    #[error("replica {replica} of pool {pool} could not be probed: {reason}")]
    Probe {
        pool: String,
        replica: String,
        reason: String,
    },
    #[error("replica {replica} of pool {pool} breaks version pinning: pool has {pinned}, replica has {got}")]
    Pinning {
        pool: String,
        replica: String,
        pinned: String,
        got: String,
    },
    #[error("pool {0} stopped")]
    Stopped(String),
}

/// Watchdog limits of a running task, from its pool's spec.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub first_token: Duration,
    pub idle: Duration,
    pub decode: Duration,
    pub retries: u32,
    /// Times a generation may move and continue after a mid-stream failure.
    pub migrations: u32,
    /// How often the running task's stream gets a `metrics` frame (zero = never).
    pub metrics_every: Duration,
}

/// A dequeued task bound to a replica slot.
pub struct Assignment {
    pub rec: Arc<TaskRecord>,
    pub request: Arc<TaskRequest>,
    pub replica_id: Arc<str>,
    pub adapter: Arc<dyn WorkerAdapter>,
    pub pinned: Arc<Pinned>,
    pub slot_hint: Option<u32>,
    pub guard: SlotGuard,
    pub dequeued_at: Instant,
    pub pool: PoolHandle,
    pub limits: Limits,
    /// Why this replica (`session`, `prefix`, `load`; `retry` after a failure).
    pub placement: orch_domain::PlacementReason,
}

/// Where admission placed a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub queue_position: u32,
    pub predicted_start_ms: u64,
}

/// A replica as views see it.
#[derive(Clone)]
pub struct ReplicaSnap {
    pub id: Arc<str>,
    pub adapter: Arc<dyn WorkerAdapter>,
    pub props: Arc<Properties>,
    pub state: orch_domain::control::ReplicaState,
    pub serving: bool,
    pub busy: u32,
    pub endpoint: Option<String>,
    pub pid: Option<u32>,
    pub last_error: Option<String>,
}

/// A pool's state as last published by its actor.
#[derive(Clone)]
pub struct Snapshot {
    pub pool_id: Arc<str>,
    pub spec: Arc<PoolSpec>,
    pub pinned: Option<Arc<Pinned>>,
    pub ready: bool,
    pub draining: bool,
    pub queue_depth: u32,
    /// Queued tasks by priority: interactive, batch.
    pub queue_by_priority: [u32; 2],
    pub slots_total: u32,
    pub slots_free: u32,
    pub busy_total: u32,
    /// Tasks holding a slot.
    pub running: u32,
    /// When a refused client should retry (about one slot release away).
    pub retry_after_ms: u64,
    /// Observed decode time per output token (mean, ms).
    pub per_token_ms: f64,
    /// Observed time a task holds a slot (mean, ms): the queue's ETA unit.
    pub service_ms: f64,
    pub replicas: Vec<ReplicaSnap>,
    pub last_error: Option<String>,
}

pub(crate) enum Cmd {
    Admit {
        rec: Arc<TaskRecord>,
        request: Arc<TaskRequest>,
        flow: Flow,
        lease: Option<QueuedLease>,
        reply: oneshot::Sender<Result<Placed, OrchError>>,
    },
    CancelQueued {
        id: TaskId,
        reply: oneshot::Sender<bool>,
    },
    SlotFreed {
        replica_id: Arc<str>,
        task: TaskId,
        claim: u64,
        observed: Option<slot::Observed>,
        /// What the engine reported of the prompt for the run.
        prompt: Option<slot::PromptSeen>,
    },
    Retry {
        rec: Arc<TaskRecord>,
        request: Arc<TaskRequest>,
        tried: Vec<Arc<str>>,
        reply: oneshot::Sender<Option<Assignment>>,
    },
    Migrate {
        rec: Arc<TaskRecord>,
        request: Arc<TaskRequest>,
        failed: Vec<Arc<dyn WorkerAdapter>>,
        reply: oneshot::Sender<Option<Assignment>>,
    },
    Attach {
        replica: Replica,
        reply: oneshot::Sender<Result<(), PoolError>>,
    },
    SetReady {
        replica_id: String,
        ready: bool,
        error: Option<String>,
    },
    Detach {
        replica_id: String,
    },
    Switch {
        new_ids: Vec<String>,
        sampler: String,
        reply: oneshot::Sender<Result<Arc<Pinned>, OrchError>>,
    },
    Drain {
        reply: oneshot::Sender<(u32, u32)>,
    },
    StopRunning {
        reason: CancelReason,
    },
    Position {
        id: TaskId,
        reply: oneshot::Sender<Option<u32>>,
    },
    /// New settings (live reconfiguration); the pinned sampler profile stays.
    UpdateSpec {
        spec: PoolSpec,
    },
    /// Take no new work on this replica (before removing it).
    DrainReplica {
        replica_id: String,
        reply: oneshot::Sender<bool>,
    },
}

/// A pool, from outside its actor. Cheap to clone.
#[derive(Clone)]
pub struct PoolHandle {
    pub id: Arc<str>,
    tx: mpsc::UnboundedSender<Cmd>,
    snap: watch::Receiver<Arc<Snapshot>>,
}

impl PoolHandle {
    /// Start a pool's actor.
    pub fn spawn(
        spec: PoolSpec,
        prior_service_ms: f64,
        sessions: Arc<SessionStore>,
        launch: Launch,
    ) -> Self {
        actor::spawn(spec, prior_service_ms, sessions, launch)
    }

    /// The latest published state.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snap.borrow().clone()
    }

    fn stopped(&self) -> OrchError {
        OrchError::new(ErrorCode::PoolUnready, format!("pool {} stopped", self.id))
            .with_pool(&*self.id)
            .with_retry_after_ms(1000)
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).ok()?;
        rx.await.ok()
    }

    /// Enqueue a registered task of `flow` (its tenant, weight and expected cost),
    /// holding its tenant's queue place `lease` while it waits (re-checks readiness,
    /// fit and deadline). A task run for another instance's admission (cluster mode)
    /// holds no lease here: its admitting instance holds it.
    pub async fn admit(
        &self,
        rec: Arc<TaskRecord>,
        request: Arc<TaskRequest>,
        flow: Flow,
        lease: Option<QueuedLease>,
    ) -> Result<Placed, OrchError> {
        self.ask(|reply| Cmd::Admit {
            rec,
            request,
            flow,
            lease,
            reply,
        })
        .await
        .unwrap_or_else(|| Err(self.stopped()))
    }

    /// Remove a queued task and end it with its recorded cancel reason. False when it
    /// was not queued (already running or ended).
    pub async fn cancel_queued(&self, id: TaskId) -> bool {
        self.ask(|reply| Cmd::CancelQueued { id, reply })
            .await
            .unwrap_or(false)
    }

    /// A replica to continue a generation on after its engine failed mid-stream: a
    /// serving one with a free slot other than the engines in `failed` (a restarted
    /// replica is a new engine), waiting (parked) for one up to the pool's retry wait.
    pub async fn migrate(
        &self,
        rec: Arc<TaskRecord>,
        request: Arc<TaskRequest>,
        failed: Vec<Arc<dyn WorkerAdapter>>,
    ) -> Option<Assignment> {
        self.ask(|reply| Cmd::Migrate {
            rec,
            request,
            failed,
            reply,
        })
        .await
        .flatten()
    }

    /// Another serving replica with a free slot, not among `tried`.
    pub async fn retry(
        &self,
        rec: Arc<TaskRecord>,
        request: Arc<TaskRequest>,
        tried: Vec<Arc<str>>,
    ) -> Option<Assignment> {
        self.ask(|reply| Cmd::Retry {
            rec,
            request,
            tried,
            reply,
        })
        .await
        .flatten()
    }

    pub async fn attach(&self, replica: Replica) -> Result<(), PoolError> {
        self.ask(|reply| Cmd::Attach { replica, reply })
            .await
            .unwrap_or_else(|| Err(PoolError::Stopped(self.id.to_string())))
    }

    pub fn set_ready(&self, replica_id: &str, ready: bool, error: Option<String>) {
        let _ = self.tx.send(Cmd::SetReady {
            replica_id: replica_id.to_string(),
            ready,
            error,
        });
    }

    pub fn detach(&self, replica_id: &str) {
        let _ = self.tx.send(Cmd::Detach {
            replica_id: replica_id.to_string(),
        });
    }

    /// Reload's switch: staged `new_ids` start serving under a new pin; every other
    /// replica drains. Also clears a pool-level drain.
    pub async fn switch(
        &self,
        new_ids: Vec<String>,
        sampler: &str,
    ) -> Result<Arc<Pinned>, OrchError> {
        self.ask(|reply| Cmd::Switch {
            new_ids,
            sampler: sampler.to_string(),
            reply,
        })
        .await
        .unwrap_or_else(|| Err(self.stopped()))
    }

    /// Stop dispatch and end every queued task; returns (queued ended, running).
    pub async fn drain(&self) -> (u32, u32) {
        self.ask(|reply| Cmd::Drain { reply })
            .await
            .unwrap_or((0, 0))
    }

    /// Ask every running task to stop.
    pub fn stop_running(&self, reason: CancelReason) {
        let _ = self.tx.send(Cmd::StopRunning { reason });
    }

    /// Apply new settings: queue limits and policy, timeouts, output limit and the
    /// metrics interval apply to what comes next; nothing running is touched.
    pub fn update_spec(&self, spec: PoolSpec) {
        let _ = self.tx.send(Cmd::UpdateSpec { spec });
    }

    /// Stop giving new work to one replica; false when the pool has no such replica.
    pub async fn drain_replica(&self, replica_id: &str) -> bool {
        self.ask(|reply| Cmd::DrainReplica {
            replica_id: replica_id.to_string(),
            reply,
        })
        .await
        .unwrap_or(false)
    }

    /// Queue position of a queued task (None when not queued).
    pub async fn position(&self, id: TaskId) -> Option<u32> {
        self.ask(|reply| Cmd::Position { id, reply })
            .await
            .flatten()
    }

    /// Wait until the published state satisfies `pred`; false when the pool stopped.
    pub async fn until(&self, pred: impl FnMut(&Arc<Snapshot>) -> bool) -> bool {
        self.snap.clone().wait_for(pred).await.is_ok()
    }

    /// Wait until the published state satisfies `pred` or `limit` passes; returns
    /// whether it did.
    pub async fn wait_for(
        &self,
        limit: Duration,
        pred: impl FnMut(&Arc<Snapshot>) -> bool,
    ) -> bool {
        let mut rx = self.snap.clone();
        let ok = matches!(
            tokio::time::timeout(limit, rx.wait_for(pred)).await,
            Ok(Ok(_))
        );
        ok
    }
}
