//! The shared core of the services: configuration, the task table, sessions, tenants
//! and the pool registry, plus the one cancel path every caller uses.
//!
//! Owns: the `accepting` and `self_tests_passed` flags. Everything else it holds owns
//! its own state (see each module).
//! Never: holds a lock across an `await` (it holds none of its own).

use crate::config::ServiceConfig;
use crate::lifecycle::{CancelReason, Phase};
use crate::registry::PoolRegistry;
use crate::sessions::SessionStore;
use crate::table::TaskTable;
use crate::task::TaskRecord;
use crate::tenants::Tenants;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub(crate) struct Core {
    pub cfg: ServiceConfig,
    pub table: TaskTable,
    pub sessions: Arc<SessionStore>,
    pub pools: PoolRegistry,
    pub tenants: Tenants,
    pub accepting: AtomicBool,
    pub self_tests_passed: AtomicBool,
    /// Cluster mode's backend (set once, before serving); standalone has none.
    pub cluster: std::sync::OnceLock<Arc<dyn crate::cluster::ClusterPort>>,
}

impl Core {
    pub fn new(cfg: ServiceConfig) -> Self {
        let sessions = Arc::new(SessionStore::new(
            cfg.session_ttl,
            cfg.session_token_budget,
            cfg.max_sessions,
        ));
        let launch = crate::runner::launcher(sessions.clone());
        Self {
            table: TaskTable::new(cfg.retention, cfg.record_ttl),
            pools: PoolRegistry::new(sessions.clone(), cfg.prior_service_ms, launch),
            sessions,
            tenants: Tenants::new(&cfg.tenancy),
            cfg,
            accepting: AtomicBool::new(true),
            self_tests_passed: AtomicBool::new(true),
            cluster: std::sync::OnceLock::new(),
        }
    }

    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    /// Cancel a task: its reason is recorded and its token fired first, so whoever
    /// holds it next (the pool actor if queued, its runner if running) ends it.
    pub async fn cancel(&self, rec: &Arc<TaskRecord>, reason: CancelReason) {
        if !rec.request_cancel(reason) {
            return;
        }
        // a queued task leaves the queue; a retry parked in the pool is let go (the
        // pool's actor looks at its parked retries after any command). A mirror's
        // task is queued with its leader: its follower passes the cancel on.
        if !rec.mirror && matches!(rec.phase(), Phase::Queued | Phase::Retrying) {
            if let Some(pool) = self.pools.get(&rec.pool_id) {
                pool.cancel_queued(rec.id).await;
            }
        }
    }
}
