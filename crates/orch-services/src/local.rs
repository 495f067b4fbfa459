//! This instance's pools as a task home: [`LocalHome`] queues admitted tasks on their
//! pool's actor (the default home), and [`LocalPools`] is the narrow handle a
//! replicated home gets to run, on this instance's pools, tasks that another instance
//! admitted (a pool's leader in cluster mode).
//!
//! Owns: nothing of its own (the pools own their queues; records own their phases).
//! Never: holds the services' core (a home the core holds reaches back only through
//! [`LocalPools`], so no reference cycle forms).

use crate::home::{Admitted, PoolLoad, TaskHome};
use crate::lifecycle::{CancelReason, Ending, Phase};
use crate::pool::{Flow, Placed};
use crate::registry::{PoolRegistry, ReplicaOrigin};
use crate::task::{Admission, EndHook, TaskRecord};
use crate::tenants::{Tenant, Tenants};
use adapter_api::{Properties, WorkerAdapter};
use futures_util::future::BoxFuture;
use orch_domain::{OrchError, Priority, TaskId, TaskRequest, TaskState, TaskStatus};
use std::sync::Arc;

/// Tasks queued and run on this instance's pools.
#[derive(Clone)]
pub(crate) struct LocalHome {
    pools: PoolRegistry,
}

impl LocalHome {
    pub fn new(pools: PoolRegistry) -> Self {
        Self { pools }
    }

    /// A queued task leaves its queue (ended with its recorded reason); a retry
    /// parked in the pool is let go. A running task's runner ends it on its token.
    async fn cancel_local(&self, rec: &Arc<TaskRecord>) {
        if matches!(rec.phase(), Phase::Queued | Phase::Retrying) {
            if let Some(pool) = self.pools.get(&rec.pool_id) {
                pool.cancel_queued(rec.id).await;
            }
        }
    }
}

impl TaskHome for LocalHome {
    fn place(&self, t: Admitted) -> BoxFuture<'_, Result<Placed, OrchError>> {
        Box::pin(async move { t.pool.admit(t.rec, t.request, t.flow, Some(t.lease)).await })
    }

    fn find(&self, _id: TaskId) -> BoxFuture<'_, Result<Option<TaskStatus>, OrchError>> {
        Box::pin(async { Ok(None) })
    }

    fn follow(&self, rec: Arc<TaskRecord>) {
        // nothing is found here that has no record
        tracing::error!(task_id = %rec.id, "the local home was asked to follow a task");
    }

    fn cancel<'a>(
        &'a self,
        rec: &'a Arc<TaskRecord>,
        _reason: CancelReason,
    ) -> BoxFuture<'a, Result<(), OrchError>> {
        Box::pin(async move {
            self.cancel_local(rec).await;
            Ok(())
        })
    }

    fn cancel_found<'a>(&'a self, _task: &'a TaskStatus) -> BoxFuture<'a, Result<(), OrchError>> {
        Box::pin(async { Ok(()) })
    }

    fn refresh<'a>(&'a self, s: &'a mut TaskStatus) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if s.state == TaskState::Queued {
                if let Some(pool) = self.pools.get(&s.pool_id) {
                    s.queue_position = pool.position(s.task_id).await;
                }
            }
        })
    }

    fn is_available(&self) -> bool {
        true
    }

    fn tasks_outlive_instance(&self) -> bool {
        false
    }
}

/// What identifies a task to run (fixed at its admission, maybe on another
/// instance).
#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: TaskId,
    pub tenant: String,
    pub pool_id: String,
    pub correlation_id: String,
    /// The request (with its chat, if it came through the OpenAI door).
    pub request: TaskRequest,
    /// How long ago it was admitted (its queue-wait limit and deadline count from
    /// then, not from when this instance got it).
    pub waited: std::time::Duration,
    /// The part of its generation another run streamed (a failed-over leader's): the
    /// run here continues it.
    pub resumed: Option<crate::task::Resumed>,
}

/// The record of a task admitted for `tenant` on the pool `pool_id` whose last
/// published state is `snap` (it names the engine until the task starts): the one
/// constructor that admission, a run for another instance and a record that follows a
/// task run elsewhere share. `waited`: how long ago it was admitted.
pub(crate) fn new_record(
    (id, waited): (TaskId, std::time::Duration),
    tenant: &Tenant,
    (pool_id, snap): (&str, Option<&crate::pool::Snapshot>),
    correlation_id: &str,
    priority: Priority,
    request: Option<TaskRequest>,
    on_end: Option<EndHook>,
) -> Arc<TaskRecord> {
    let engine = snap.and_then(|s| s.pinned.as_ref()).map_or_else(
        || ("none".into(), "none".into()),
        |p| (p.engine.clone(), p.engine_version.clone()),
    );
    let session = request.as_ref().and_then(|r| r.session_id);
    Arc::new(TaskRecord::new(
        Admission {
            id,
            tenant: tenant.name.clone(),
            priority,
            pool_id: pool_id.to_string(),
            session,
            correlation_id: correlation_id.to_string(),
            engine,
            waited,
        },
        request,
        on_end,
    ))
}

/// The flow a task of `tenant` is queued as: its tenant, weight and the upper bound of
/// its cost (corrected when it ends, see `pool::charge`).
pub(crate) fn flow_of(tenant: &Tenant, request: &TaskRequest) -> Flow {
    Flow {
        id: tenant.ix,
        weight: tenant.weight(),
        cost: crate::pool::declared_cost(request),
    }
}

/// This instance's pools, for a home that runs here the tasks another instance
/// admitted. Cheap to clone.
#[derive(Clone)]
pub struct LocalPools {
    home: LocalHome,
    tenants: Arc<Tenants>,
}

impl LocalPools {
    pub(crate) fn new(pools: PoolRegistry, tenants: Arc<Tenants>) -> Self {
        Self {
            home: LocalHome::new(pools),
            tenants,
        }
    }

    /// Run `t` on this instance's pool. The record is in no task table (its frames
    /// are read from the record by whoever stores them); a refusal by the pool ends
    /// it with its error frame. No quota is taken here: the admitting instance holds
    /// its tenant's places.
    pub async fn run(&self, t: NewTask) -> Arc<TaskRecord> {
        let tenant = self.tenants.get(&t.tenant);
        let pool = self.home.pools.get(&t.pool_id);
        let snap = pool.as_ref().map(|p| p.snapshot());
        let flow = flow_of(&tenant, &t.request);
        let rec = new_record(
            (t.id, t.waited),
            &tenant,
            (&t.pool_id, snap.as_deref()),
            &t.correlation_id,
            t.request.priority,
            Some(t.request),
            None,
        );
        if let Some(r) = t.resumed {
            rec.set_resumed(r);
        }
        let admitted = match (&pool, rec.request()) {
            (Some(pool), Some(req)) => pool.admit(rec.clone(), req, flow, None).await,
            _ => Err(OrchError::not_found("pool", &t.pool_id)),
        };
        if let Err(e) = admitted {
            rec.end(Ending::Failed(e));
        }
        rec
    }

    /// Wait until the pool `id` serves (from its published state, no polling).
    /// False when there is no such pool or it stopped.
    pub async fn until_ready(&self, id: &str) -> bool {
        match self.home.pools.get(id) {
            Some(p) => p.until(|s| s.ready).await,
            None => false,
        }
    }

    /// The pool's queue and slots as they stand.
    pub fn load(&self, pool_id: &str) -> Option<PoolLoad> {
        let s = self.home.pools.get(pool_id)?.snapshot();
        Some(PoolLoad {
            queue_capacity: s.spec.queue.capacity as u32,
            queue_depth: s.queue_depth,
            slots_free: s.slots_free,
            slots_total: s.slots_total,
            service_ms: s.service_ms,
        })
    }

    /// A task run here as it stands now: its state, place while queued, tokens so
    /// far. `None` once it ended (its end counts once it is stored elsewhere).
    pub async fn status(&self, rec: &TaskRecord) -> Option<TaskStatus> {
        let s = rec.summary();
        if s.state.is_terminal() {
            return None;
        }
        let mut st = s.to_status();
        self.home.refresh(&mut st).await;
        Some(st)
    }

    /// Cancel a task run here, for `reason`.
    pub async fn cancel(&self, rec: &Arc<TaskRecord>, reason: CancelReason) {
        if rec.request_cancel(reason) {
            self.home.cancel_local(rec).await;
        }
    }

    /// The quotas of tenant `name` (the defaults for a tenant not configured).
    pub fn quotas(&self, name: &str) -> crate::config::Quotas {
        self.tenants.get(name).quotas()
    }

    /// The ids of this instance's pools.
    pub fn pool_ids(&self) -> Vec<String> {
        self.home
            .pools
            .all()
            .iter()
            .map(|p| p.id.to_string())
            .collect()
    }

    /// The replicas of pool `pool_id` whose id starts with `prefix` (this instance's
    /// own, where replicas hosted elsewhere are attached beside them), as they stand.
    pub fn replicas(&self, pool_id: &str, prefix: &str) -> Vec<LocalReplica> {
        let Some(pool) = self.home.pools.get(pool_id) else {
            return Vec::new();
        };
        pool.snapshot()
            .replicas
            .iter()
            .filter(|r| r.id.starts_with(prefix))
            .map(|r| LocalReplica {
                id: r.id.clone(),
                adapter: r.adapter.clone(),
                props: r.props.clone(),
                serving: r.serving,
            })
            .collect()
    }

    /// Add a replica that another instance hosts (reached through `adapter`) to pool
    /// `pool_id`: probed, and held to the pool's pin as any replica is.
    pub async fn attach_hosted(
        &self,
        pool_id: &str,
        replica_id: &str,
        adapter: Arc<dyn WorkerAdapter>,
        endpoint: String,
    ) -> Result<(), String> {
        let origin = ReplicaOrigin {
            endpoint: Some(endpoint),
            pid: None,
        };
        self.home
            .pools
            .attach(pool_id, replica_id, adapter, origin, false)
            .await
            .map_err(|e| e.to_string())
    }

    /// Mark a replica of pool `pool_id` ready (serving) or not.
    pub fn set_ready(&self, pool_id: &str, replica_id: &str, ready: bool) {
        self.home.pools.set_ready(pool_id, replica_id, ready, None);
    }

    /// Take a replica out of pool `pool_id` (its running tasks keep their streams).
    pub fn detach(&self, pool_id: &str, replica_id: &str) {
        self.home.pools.detach(pool_id, replica_id);
    }
}

/// One of this instance's replicas, for an instance that leads its pool elsewhere.
#[derive(Clone)]
pub struct LocalReplica {
    pub id: Arc<str>,
    pub adapter: Arc<dyn WorkerAdapter>,
    pub props: Arc<Properties>,
    /// Ready, not draining, not staged.
    pub serving: bool,
}
