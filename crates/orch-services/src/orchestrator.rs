//! The data-plane facade: what the HTTP layer (or an embedding program) calls — admit,
//! stream, cancel, status, sessions, views, readiness and shutdown. Each method
//! delegates to the module that owns the work; this module holds no state of its own.
//! Every call made for a client names its [`Caller`] (tenant and role): what it may
//! see and what it is charged to; trusted in-process callers pass [`Caller::open`].
//! Replica management is not here: the pool manager uses [`PoolRegistry`].
//!
//! Nothing in this crate imports this module (enforced by `tests/module_graph.rs`).

use crate::auth::Caller;
use crate::config::ServiceConfig;
use crate::core::Core;
use crate::home::TaskHome;
use crate::lifecycle::CancelReason;
use crate::local::{new_record, LocalPools};
use crate::registry::PoolRegistry;
use crate::streaming::StreamReader;
use crate::table::{Lookup, TableStats};
use crate::task::TaskRecord;
use orch_domain::control::{Capabilities, DrainResponse, PoolHealth, PoolView, ReplicaSetView};
use orch_domain::{
    AdmissionResponse, OrchError, SessionId, SessionInfo, TaskId, TaskRequest, TaskState,
    TaskStatus,
};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// What the services hold now (for operators, tests and benchmarks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Tasks admitted and not yet ended.
    pub live_tasks: usize,
    /// What the task table retains.
    pub table: TableStats,
    /// Sessions tracked.
    pub sessions: usize,
}

/// The orchestrator services. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Orchestrator {
    core: Arc<Core>,
}

impl Orchestrator {
    /// Create the services and start the retention sweeper (needs a tokio runtime).
    /// Tasks are queued and run on this instance's pools until [`set_home`](Self::set_home).
    pub fn new(cfg: ServiceConfig) -> Self {
        let core = Arc::new(Core::new(cfg));
        tokio::spawn(sweeper(Arc::downgrade(&core)));
        tokio::spawn(crate::gauges::run(
            Arc::downgrade(&core),
            core.cfg.sweep_interval,
        ));
        tokio::spawn(crate::console::sampler(Arc::downgrade(&core)));
        Self { core }
    }

    /// Send admitted tasks to `home` from now on (once, before serving): a backend
    /// that stores them where a pool's leader runs them (cluster mode). Tasks this
    /// instance holds no record of are then looked up there too.
    pub fn set_home(&self, home: Arc<dyn TaskHome>) -> Result<(), OrchError> {
        self.core.set_home(home)
    }

    /// Keep runtime keys, the usage ledger and token budgets in `accounts` (once,
    /// before serving). Without it, budgets are not enforced and nothing is recorded.
    pub fn set_accounts(&self, accounts: Arc<crate::accounts::Accounts>) -> Result<(), OrchError> {
        self.core.set_accounts(accounts)
    }

    /// The operator console's snapshot for `caller` (`GET /v1/console`).
    pub fn console(&self, caller: &Caller) -> orch_domain::console::ConsoleView {
        crate::console::view(&self.core, caller)
    }

    /// The accounts, when set.
    pub fn accounts(&self) -> Option<Arc<crate::accounts::Accounts>> {
        self.core.accounts().cloned()
    }

    /// This instance's pools, for a home that runs here tasks other instances
    /// admitted (it holds no reference to these services).
    pub fn local_pools(&self) -> LocalPools {
        self.core.local_pools()
    }

    /// The pool registry, for the pool manager and embedders (pools are created,
    /// replicas attached and pool settings applied through it).
    pub fn registry(&self) -> PoolRegistry {
        self.core.pools.clone()
    }

    /// Apply a new tenancy at once (live reconfiguration); what changed, per tenant.
    pub fn update_tenancy(&self, t: &crate::config::Tenancy) -> Vec<String> {
        self.core.tenants.update(t)
    }

    /// Admit a task for `caller`'s tenant (its quotas, weight and sessions).
    pub async fn admit(
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

    /// A task this instance has no record of, as its home recorded it, if `caller`
    /// may see it (404 otherwise, like an unknown id).
    async fn find(&self, caller: &Caller, id: TaskId) -> Result<TaskStatus, OrchError> {
        match self.core.home().find(id).await? {
            Some(s) if caller.may_see(&s.tenant) => Ok(s),
            _ => Err(OrchError::not_found("task", id)),
        }
    }

    /// A record for a task found in its home, fed with the frames stored there (the
    /// one already in the table if a reader made it first).
    fn follow(&self, s: &TaskStatus) -> Result<Arc<TaskRecord>, OrchError> {
        let rec = new_record(
            (s.task_id, std::time::Duration::ZERO),
            &self.core.tenants.get(&s.tenant),
            (&s.pool_id, None),
            "",
            s.priority,
            None,
            Some(self.core.table.end_hook()),
        );
        if self.core.table.insert(rec.clone()).is_err() {
            return self.core.table.record(s.task_id);
        }
        self.core.home().follow(rec.clone());
        Ok(rec)
    }

    /// Open a reader of a task's events after sequence `last_event_id` (0 = start).
    /// A task this instance has no record of is read from its home's copy of its
    /// frames (stored frames only, so a resume elsewhere never sees a frame twice or
    /// misses one).
    pub async fn open_stream(
        &self,
        caller: &Caller,
        id: TaskId,
        last_event_id: u64,
    ) -> Result<StreamReader, OrchError> {
        let home = self.core.home();
        let rec = match self.lookup(caller, id) {
            Ok(_) => self.core.table.record(id)?,
            Err(e) if !home.tasks_outlive_instance() => return Err(e),
            Err(_) => {
                let s = self.find(caller, id).await?;
                self.follow(&s)?
            }
        };
        let len = rec.log.len();
        // frames copied from elsewhere may not have caught up: nothing to check here
        if !home.tasks_outlive_instance() && last_event_id > len {
            return Err(OrchError::invalid(
                "Last-Event-ID",
                format!("{last_event_id} is past the last frame ({len}) of this task"),
            ));
        }
        StreamReader::open(self.core.clone(), rec, last_event_id)
    }

    /// Cancel a task: a queued one is removed, a running one is stopped on its engine.
    /// Canceling a finished (or expired) task is a no-op. A task run elsewhere is
    /// canceled there before this returns.
    pub async fn cancel(&self, caller: &Caller, id: TaskId) -> Result<(), OrchError> {
        match self.lookup(caller, id) {
            Ok(Lookup::Record(rec)) => self.core.cancel(&rec, CancelReason::Client).await,
            Ok(Lookup::Expired(_)) => Ok(()),
            Err(e) if !self.core.home().tasks_outlive_instance() => Err(e),
            Err(_) => {
                let s = self.find(caller, id).await?;
                if s.state.is_terminal() {
                    return Ok(());
                }
                self.core.home().cancel_found(&s).await
            }
        }
    }

    /// `GET /v1/tasks/{id}`: live state, or the summary of an expired task. A task
    /// not ended is brought up to date by its home: its place while it waits, and
    /// (run elsewhere) its state and tokens now.
    pub async fn status(&self, caller: &Caller, id: TaskId) -> Result<TaskStatus, OrchError> {
        let home = self.core.home();
        let mut status = match self.lookup(caller, id) {
            Ok(Lookup::Record(rec)) => rec.summary().to_status(),
            Ok(Lookup::Expired(s)) => return Ok(s.to_status()),
            Err(e) if !home.tasks_outlive_instance() => return Err(e),
            Err(_) => {
                let mut s = self.find(caller, id).await?;
                if !s.state.is_terminal() {
                    home.refresh(&mut s).await;
                }
                return Ok(s);
            }
        };
        if status.state == TaskState::Queued {
            // a record here follows its own frames: only its place is asked for
            let mut now = status.clone();
            home.refresh(&mut now).await;
            status.queue_position = now.queue_position;
        }
        Ok(status)
    }

    /// The tenant whose session `id` `caller` addresses: its own tenant's, or (for an
    /// admin without one) any tenant's. Another tenant's session answers 404 exactly
    /// like an unknown id.
    fn session_tenant(&self, caller: &Caller, id: SessionId) -> Result<Arc<str>, OrchError> {
        if self.core.sessions.info(&caller.tenant, id).is_some() {
            return Ok(caller.tenant.clone());
        }
        match self.core.sessions.any_tenant_of(id) {
            Some(t) if caller.is_admin() => Ok(t),
            _ => Err(OrchError::not_found("session", id)),
        }
    }

    pub fn session(&self, caller: &Caller, id: SessionId) -> Result<SessionInfo, OrchError> {
        let tenant = self.session_tenant(caller, id)?;
        self.core
            .sessions
            .info(&tenant, id)
            .ok_or_else(|| OrchError::not_found("session", id))
    }

    /// End a session and ask its replica to forget the session's KV.
    pub async fn delete_session(&self, caller: &Caller, id: SessionId) -> Result<(), OrchError> {
        let tenant = self.session_tenant(caller, id)?;
        let home = self
            .core
            .sessions
            .remove(&tenant, id)
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

    /// `GET /v1/capabilities` data with the calling tenant's weight, quotas and use;
    /// `body_max_bytes` comes from the HTTP layer.
    pub fn capabilities(&self, caller: &Caller, body_max_bytes: u64) -> Capabilities {
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

    /// Whether at least one pool is ready, startup self-tests passed and the task
    /// home can take tasks.
    pub fn is_ready(&self) -> bool {
        self.core.self_tests_passed.load(Ordering::Acquire)
            && self.core.pools.all().iter().any(|p| p.snapshot().ready)
            && self.core.home().is_available()
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

    /// Live tasks, what the task table retains, sessions tracked.
    pub fn stats(&self) -> Stats {
        Stats {
            live_tasks: self.core.table.live(),
            table: self.core.table.stats(),
            sessions: self.core.sessions.len(),
        }
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

    /// Wait up to `bound` for live tasks to finish (without polling), then end the
    /// rest with a retriable error. Returns how many had to be ended.
    ///
    /// Tasks that outlive this instance (their home runs them elsewhere) are left to
    /// it: nothing is ended here (a client resumes its stream on another instance).
    pub async fn drain_all(&self, bound: Duration) -> usize {
        if self.core.table.wait_idle(bound).await || self.core.home().tasks_outlive_instance() {
            return 0;
        }
        let live = self.core.table.live_records();
        for rec in &live {
            // the local home takes every cancel
            let _ = self.core.cancel(rec, CancelReason::Shutdown).await;
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
