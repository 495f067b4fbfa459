//! The data-plane facade: what the HTTP layer (or an embedding program) calls — admit,
//! stream, cancel, status, sessions, views, readiness and shutdown. Each method
//! delegates to the module that owns the work; this module holds no state of its own.
//! Replica management is not here: the pool manager uses [`PoolRegistry`].
//!
//! Nothing in this crate imports this module (enforced by `tests/module_graph.rs`).

use crate::auth::Caller;
use crate::cluster::{ClusterPort, ClusterStatus, ReplicatedTask};
use crate::config::{PoolSpec, ServiceConfig};
use crate::core::Core;
use crate::lifecycle::CancelReason;
use crate::pool::{PoolError, PoolHandle};
use crate::registry::{PoolRegistry, ReplicaOrigin};
use crate::streaming::StreamReader;
use crate::table::{Lookup, TableStats};
use crate::task::TaskRecord;
use adapter_api::WorkerAdapter;
use orch_domain::control::{Capabilities, DrainResponse, PoolHealth, PoolView, ReplicaSetView};
use orch_domain::{
    AdmissionResponse, OrchError, SessionId, SessionInfo, TaskId, TaskRequest, TaskState,
    TaskStatus,
};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// The orchestrator services. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Orchestrator {
    core: Arc<Core>,
}

impl Orchestrator {
    /// Create the services and start the retention sweeper (needs a tokio runtime).
    pub fn new(cfg: ServiceConfig) -> Self {
        let core = Arc::new(Core::new(cfg));
        tokio::spawn(sweeper(Arc::downgrade(&core)));
        tokio::spawn(crate::gauges::run(
            Arc::downgrade(&core),
            core.cfg.sweep_interval,
        ));
        Self { core }
    }

    /// Run in cluster mode on `port` (before serving; once). Admission then stores
    /// tasks in their pool's replicated queue, and tasks this instance has no record
    /// of are found through the cluster.
    pub fn set_cluster(&self, port: Arc<dyn ClusterPort>) -> Result<(), OrchError> {
        self.core
            .cluster
            .set(port)
            .map_err(|_| OrchError::internal("cluster mode was already set"))
    }

    pub fn is_cluster(&self) -> bool {
        self.core.cluster.get().is_some()
    }

    /// Cluster mode, on a pool's leader: run a task another instance admitted (or
    /// this one, before a failover) on this instance's pool. The record is not in the
    /// task table (readers follow the cluster's copy of its frames); a refusal by the
    /// pool ends it with its error frame. No quota is taken here: the admitting
    /// instance holds it.
    pub async fn run_replicated(&self, t: ReplicatedTask) -> Arc<TaskRecord> {
        let tenant = self.core.tenants.get(&t.tenant);
        let mut request = t.request;
        request.chat = t.chat;
        let pool = self.core.pools.get(&t.pool_id);
        let engine = pool
            .as_ref()
            .and_then(|p| p.snapshot().pinned.clone())
            .map_or_else(
                || ("none".into(), "none".into()),
                |p| (p.engine.clone(), p.engine_version.clone()),
            );
        let flow = crate::pool::Flow {
            id: tenant.ix,
            weight: tenant.weight(),
            cost: u64::from(request.expected_tokens.unwrap_or(request.max_tokens)).max(1),
        };
        let rec = Arc::new(TaskRecord::new(
            crate::task::Admission {
                id: t.task_id,
                tenant: tenant.name.clone(),
                priority: request.priority,
                pool_id: t.pool_id.clone(),
                session: request.session_id,
                correlation_id: t.correlation_id,
                engine,
                mirror: false,
            },
            request,
            None,
        ));
        let admitted = match (&pool, rec.request()) {
            (Some(pool), Some(req)) => pool.admit(rec.clone(), req, flow, None).await,
            _ => Err(OrchError::not_found("pool", &t.pool_id)),
        };
        if let Err(e) = admitted {
            rec.end(crate::lifecycle::Ending::Failed(e));
        }
        rec
    }

    /// Whether this instance's pool `id` serves now (a leader waits for it before
    /// taking tasks from the cluster's queue).
    pub fn pool_ready(&self, id: &str) -> bool {
        self.core.pools.get(id).is_some_and(|p| p.snapshot().ready)
    }

    /// Cluster mode, on a pool's leader: the pool's queue as it stands, for the other
    /// instances' estimates.
    pub fn queue_hint(&self, pool_id: &str) -> Option<crate::cluster::QueueHint> {
        let s = self.core.pools.get(pool_id)?.snapshot();
        Some(crate::cluster::QueueHint {
            queue_depth: s.queue_depth,
            slots_free: s.slots_free,
            slots_total: s.slots_total,
            service_ms: s.service_ms,
        })
    }

    /// Cluster mode, on a pool's leader: a task it runs as it stands now (for a
    /// status asked on another instance). `None` once it ended here: its end counts
    /// once it is stored, and the recorded status says it then.
    pub async fn live_status(&self, rec: &TaskRecord) -> Option<crate::cluster::LiveStatus> {
        let s = rec.summary();
        if s.state.is_terminal() {
            return None;
        }
        let queue_position = match (s.state, self.core.pools.get(&s.pool_id)) {
            (TaskState::Queued, Some(pool)) => pool.position(rec.id).await,
            _ => None,
        };
        Some(crate::cluster::LiveStatus {
            state: s.state,
            queue_position,
            tokens_out: s.tokens_out,
            replica_id: s.replica_id,
        })
    }

    /// Cancel a task record this instance runs for the cluster (see
    /// [`run_replicated`](Self::run_replicated)).
    pub async fn cancel_replicated(&self, rec: &Arc<TaskRecord>, reason: CancelReason) {
        self.core.cancel(rec, reason).await;
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.core.cfg
    }

    /// The pool registry, for the pool manager (replicas come and go through it).
    pub fn registry(&self) -> PoolRegistry {
        self.core.pools.clone()
    }

    /// Apply a new tenancy at once (live reconfiguration); what changed, per tenant.
    pub fn update_tenancy(&self, t: &crate::config::Tenancy) -> Vec<String> {
        self.core.tenants.update(t)
    }

    /// Apply new pool settings at once (queue limits and policy, fairness, timeouts,
    /// output limit); queued and running tasks are not touched.
    pub fn update_pool_spec(&self, spec: PoolSpec) -> Result<(), OrchError> {
        let pool = self
            .core
            .pools
            .get(&spec.id)
            .ok_or_else(|| OrchError::not_found("pool", &spec.id))?;
        pool.update_spec(spec);
        Ok(())
    }

    /// Register an empty pool and start its actor.
    pub fn create_pool(&self, spec: PoolSpec) -> Result<PoolHandle, PoolError> {
        self.core.pools.create(spec)
    }

    /// Probe a serving replica and add it to a pool (embedders and tests; the pool
    /// manager attaches through the registry).
    pub async fn attach_replica(
        &self,
        pool_id: &str,
        replica_id: &str,
        adapter: Arc<dyn WorkerAdapter>,
    ) -> Result<(), PoolError> {
        self.core
            .pools
            .attach(
                pool_id,
                replica_id,
                adapter,
                ReplicaOrigin::default(),
                false,
            )
            .await
    }

    /// Admit a task as the open caller (an admin of the `anonymous` tenant): for
    /// trusted in-process callers. Servers with keys use [`admit_as`](Self::admit_as).
    pub async fn admit(
        &self,
        req: TaskRequest,
        correlation_id: &str,
    ) -> Result<AdmissionResponse, OrchError> {
        self.admit_as(&Caller::open(), req, correlation_id).await
    }

    /// Admit a task for `caller`'s tenant (its quotas, weight and sessions).
    pub async fn admit_as(
        &self,
        caller: &Caller,
        req: TaskRequest,
        correlation_id: &str,
    ) -> Result<AdmissionResponse, OrchError> {
        crate::admission::admit(&self.core, caller, req, correlation_id).await
    }

    /// The largest `max_tokens` a task for `model` with this prompt could be admitted
    /// with (from the pools serving the model, ready ones first), for clients that
    /// name no limit. `None` when no pool serves the model.
    pub fn output_limit(&self, model: &str, prompt: &str) -> Option<u32> {
        crate::admission::output_limit(&self.core, model, prompt)
    }

    /// A task `caller` may see (its tenant's, or any for an admin): others are 404,
    /// exactly like an unknown id, so ids of other tenants are not revealed.
    fn lookup(&self, caller: &Caller, id: TaskId) -> Result<Lookup, OrchError> {
        let found = self.core.table.get(id);
        let owner = match &found {
            Some(Lookup::Record(r)) => Some(r.tenant.clone()),
            Some(Lookup::Expired(s)) => Some(s.tenant.clone()),
            None => None,
        };
        match (found, owner) {
            (Some(l), Some(o)) if caller.may_see(&o) => Ok(l),
            _ => Err(OrchError::not_found("task", id)),
        }
    }

    /// Cluster mode: the recorded status of a task this instance has no record of,
    /// if `caller` may see it (404 otherwise, like an unknown id). Standalone: 404.
    async fn remote(&self, caller: &Caller, id: TaskId) -> Result<ClusterStatus, OrchError> {
        let port = self
            .core
            .cluster
            .get()
            .ok_or_else(|| OrchError::not_found("task", id))?;
        match port.status(id).await? {
            Some(s) if caller.may_see(&s.tenant) => Ok(s),
            _ => Err(OrchError::not_found("task", id)),
        }
    }

    /// Cluster mode: a mirror record for a task another instance admitted, following
    /// its stored frames (the one already in the table if a reader made it first).
    fn mirror(&self, id: TaskId, s: &ClusterStatus) -> Result<Arc<TaskRecord>, OrchError> {
        let port = self
            .core
            .cluster
            .get()
            .ok_or_else(|| OrchError::not_found("task", id))?;
        let rec = Arc::new(TaskRecord::new(
            crate::task::Admission {
                id,
                tenant: self.core.tenants.get(&s.tenant).name.clone(),
                priority: s.priority,
                pool_id: s.pool_id.clone(),
                session: None,
                correlation_id: String::new(),
                engine: ("none".into(), "none".into()),
                mirror: true,
            },
            TaskRequest::completion("", "", 1, s.priority),
            Some(self.core.table.end_hook()),
        ));
        if self.core.table.insert(rec.clone()).is_err() {
            return self.core.table.record(id);
        }
        port.follow(rec.clone(), None);
        Ok(rec)
    }

    /// Open a reader of a task's events after sequence `last_event_id` (0 = start).
    pub async fn open_stream(
        &self,
        id: TaskId,
        last_event_id: u64,
    ) -> Result<StreamReader, OrchError> {
        self.open_stream_as(&Caller::open(), id, last_event_id)
            .await
    }

    /// In cluster mode a task admitted elsewhere is read from the cluster's copy of
    /// its frames (its stored frames only, so a resume elsewhere never sees a frame
    /// twice or misses one).
    pub async fn open_stream_as(
        &self,
        caller: &Caller,
        id: TaskId,
        last_event_id: u64,
    ) -> Result<StreamReader, OrchError> {
        let rec = match self.lookup(caller, id) {
            Ok(_) => self.core.table.record(id)?,
            Err(e) if !self.is_cluster() => return Err(e),
            Err(_) => {
                let s = self.remote(caller, id).await?;
                self.mirror(id, &s)?
            }
        };
        let len = rec.log.len();
        // a mirror may not have caught up yet: it checks nothing here
        if !rec.mirror && last_event_id > len {
            return Err(OrchError::invalid(
                "Last-Event-ID",
                format!("{last_event_id} is past the last frame ({len}) of this task"),
            ));
        }
        Ok(StreamReader::new(self.core.clone(), rec, last_event_id))
    }

    /// Cancel a task: a queued one is removed, a running one is stopped on its engine.
    /// Canceling a finished (or expired) task is a no-op.
    pub async fn cancel(&self, id: TaskId) -> Result<(), OrchError> {
        self.cancel_as(&Caller::open(), id).await
    }

    /// In cluster mode the cancel is stored and sent to the task's leader before this
    /// returns.
    pub async fn cancel_as(&self, caller: &Caller, id: TaskId) -> Result<(), OrchError> {
        let pool_id = match self.lookup(caller, id) {
            Ok(Lookup::Record(rec)) => {
                self.core.cancel(&rec, CancelReason::Client).await;
                (rec.mirror && !rec.is_ended()).then(|| rec.pool_id.clone())
            }
            Ok(Lookup::Expired(_)) => None,
            Err(e) if !self.is_cluster() => return Err(e),
            Err(_) => {
                let s = self.remote(caller, id).await?;
                (!s.state.is_terminal()).then_some(s.pool_id)
            }
        };
        if let (Some(pool_id), Some(port)) = (pool_id, self.core.cluster.get()) {
            port.cancel(&pool_id, id).await?;
        }
        Ok(())
    }

    /// `GET /v1/tasks/{id}`: live state, or the summary of an expired task.
    pub async fn status(&self, id: TaskId) -> Result<TaskStatus, OrchError> {
        self.status_as(&Caller::open(), id).await
    }

    /// In cluster mode a task not ended is asked of its pool's leader: its place while
    /// it waits, and (for a task this instance has no record of) its state and tokens
    /// now.
    pub async fn status_as(&self, caller: &Caller, id: TaskId) -> Result<TaskStatus, OrchError> {
        let port = self.core.cluster.get();
        let (s, queued) = match self.lookup(caller, id) {
            Ok(Lookup::Record(rec)) => (rec.summary(), rec.state() == TaskState::Queued),
            Ok(Lookup::Expired(s)) => (s, false),
            Err(e) if port.is_none() => return Err(e),
            Err(_) => {
                let mut st = self.remote(caller, id).await?.to_status(id);
                if let (false, Some(port)) = (st.state.is_terminal(), port) {
                    if let Some(live) = port.live(&st.pool_id, id).await {
                        live.apply(&mut st);
                    }
                }
                return Ok(st);
            }
        };
        let position = match (queued, port, self.core.pools.get(&s.pool_id)) {
            (false, ..) => None,
            (true, Some(port), _) => port
                .live(&s.pool_id, id)
                .await
                .and_then(|l| l.queue_position),
            (true, None, Some(pool)) => pool.position(id).await,
            (true, None, None) => None,
        };
        Ok(TaskStatus {
            task_id: id,
            tenant: s.tenant.to_string(),
            state: s.state,
            priority: s.priority,
            pool_id: s.pool_id,
            replica_id: s.replica_id,
            queue_position: position,
            tokens_out: s.tokens_out,
            finish_reason: s.finish,
            error_code: s.error_code.map(|c| c.as_str().to_string()),
        })
    }

    /// A session `caller` may see (404 otherwise, like an unknown one).
    fn check_session(&self, caller: &Caller, id: SessionId) -> Result<(), OrchError> {
        match self.core.sessions.owner(id) {
            Some(o) if !caller.may_see(&o) => Err(OrchError::not_found("session", id)),
            _ => Ok(()),
        }
    }

    pub fn session(&self, id: SessionId) -> Result<SessionInfo, OrchError> {
        self.session_as(&Caller::open(), id)
    }

    pub fn session_as(&self, caller: &Caller, id: SessionId) -> Result<SessionInfo, OrchError> {
        self.check_session(caller, id)?;
        self.core
            .sessions
            .info(id)
            .ok_or_else(|| OrchError::not_found("session", id))
    }

    /// End a session and ask its replica to forget the session's KV.
    pub async fn delete_session(&self, id: SessionId) -> Result<(), OrchError> {
        self.delete_session_as(&Caller::open(), id).await
    }

    pub async fn delete_session_as(&self, caller: &Caller, id: SessionId) -> Result<(), OrchError> {
        self.check_session(caller, id)?;
        let home = self
            .core
            .sessions
            .remove(id)
            .ok_or_else(|| OrchError::not_found("session", id))?;
        let Some(home) = home else { return Ok(()) };
        let adapter = self.core.pools.get(&home.pool_id).and_then(|p| {
            p.snapshot()
                .replicas
                .iter()
                .find(|r| *r.id == *home.replica_id)
                .map(|r| r.adapter.clone())
        });
        if let (Some(a), Some(slot)) = (adapter, home.slot) {
            if let Err(e) = a.erase_slot(slot).await {
                tracing::warn!(session_id = %id, error = %e, "could not erase session KV");
            }
        }
        Ok(())
    }

    pub fn pool_views(&self) -> Vec<PoolView> {
        crate::control::pool_views(&self.core)
    }

    pub fn pool_view(&self, id: &str) -> Result<PoolView, OrchError> {
        crate::control::pool_view_of(&self.core, id)
    }

    pub fn pool_health(&self, id: &str) -> Result<PoolHealth, OrchError> {
        crate::control::pool_health(&self.core, id)
    }

    pub fn replica_sets(&self) -> Vec<ReplicaSetView> {
        crate::control::replica_sets(&self.core)
    }

    /// `GET /v1/capabilities` data for the open caller; `body_max_bytes` comes from
    /// the HTTP layer.
    pub fn capabilities(&self, body_max_bytes: u64) -> Capabilities {
        self.capabilities_as(&Caller::open(), body_max_bytes)
    }

    /// Capabilities with the calling tenant's weight, quotas and use.
    pub fn capabilities_as(&self, caller: &Caller, body_max_bytes: u64) -> Capabilities {
        crate::control::capabilities(&self.core, caller, body_max_bytes)
    }

    /// Stop dispatch on a pool; running tasks get until `deadline`.
    pub async fn drain(
        &self,
        pool_id: &str,
        deadline: Duration,
    ) -> Result<DrainResponse, OrchError> {
        crate::control::drain(&self.core, pool_id, deadline).await
    }

    /// Whether at least one pool is ready and startup self-tests passed.
    /// In cluster mode, also that the cluster can store this instance's submissions.
    pub fn is_ready(&self) -> bool {
        self.core.self_tests_passed.load(Ordering::Acquire)
            && self.core.pools.all().iter().any(|p| p.snapshot().ready)
            && self.core.cluster.get().is_none_or(|c| c.is_available())
    }

    pub fn set_self_tests_passed(&self, passed: bool) {
        self.core.self_tests_passed.store(passed, Ordering::Release);
    }

    pub fn is_accepting(&self) -> bool {
        self.core.is_accepting()
    }

    /// Stop admitting (503 from then on).
    pub fn begin_shutdown(&self) {
        self.core.accepting.store(false, Ordering::Release);
    }

    /// Tasks admitted and not yet ended.
    pub fn live_tasks(&self) -> usize {
        self.core.table.live()
    }

    /// Ids of tasks admitted and not yet ended (for operators and test harnesses).
    pub fn live_task_ids(&self) -> Vec<TaskId> {
        self.core
            .table
            .live_records()
            .iter()
            .map(|r| r.id)
            .collect()
    }

    /// What the task table retains.
    pub fn table_stats(&self) -> TableStats {
        self.core.table.stats()
    }

    /// Sessions currently tracked.
    pub fn session_count(&self) -> usize {
        self.core.sessions.len()
    }

    /// Wait up to `bound` for live tasks to finish (without polling), then end the
    /// rest with a retriable error. Returns how many had to be ended.
    ///
    /// In cluster mode the tasks belong to the cluster: nothing is ended here (their
    /// leader runs them; a client resumes its stream on another instance).
    pub async fn drain_all(&self, bound: Duration) -> usize {
        if self.core.table.wait_idle(bound).await || self.is_cluster() {
            return 0;
        }
        let live = self.core.table.live_records();
        for rec in &live {
            self.core.cancel(rec, CancelReason::Shutdown).await;
        }
        // give running tasks a moment to write their terminal frame
        self.core.table.wait_idle(Duration::from_secs(2)).await;
        live.len()
    }
}

/// Apply the task table's TTLs and expire idle sessions.
async fn sweeper(core: Weak<Core>) {
    loop {
        let interval = match core.upgrade() {
            Some(c) => c.cfg.sweep_interval,
            None => return,
        };
        tokio::time::sleep(interval).await;
        let Some(core) = core.upgrade() else { return };
        core.table.sweep();
        core.sessions.sweep();
        crate::metrics::refresh_shares();
    }
}
