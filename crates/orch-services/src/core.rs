//! The shared core of the services: configuration, the task table, sessions, tenants,
//! the pool registry and the task home, plus the one cancel path every caller uses.
//!
//! Owns: the `accepting` and `self_tests_passed` flags, and which [`TaskHome`] tasks
//! go to (set once; the local one until then). Everything else it holds owns its own
//! state (see each module).
//! Never: holds a lock across an `await` (it holds none of its own).

use crate::accounts::Accounts;
use crate::config::ServiceConfig;
use crate::home::TaskHome;
use crate::lifecycle::CancelReason;
use crate::local::{LocalHome, LocalPools};
use crate::registry::PoolRegistry;
use crate::sessions::SessionStore;
use crate::table::TaskTable;
use crate::task::TaskRecord;
use crate::tenants::Tenants;
use orch_domain::OrchError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

pub(crate) struct Core {
    pub cfg: ServiceConfig,
    pub table: TaskTable,
    pub sessions: Arc<SessionStore>,
    pub pools: PoolRegistry,
    pub tenants: Arc<Tenants>,
    pub accepting: AtomicBool,
    pub self_tests_passed: AtomicBool,
    local: LocalHome,
    /// Where tasks go when not to this instance's pools (set once, before serving).
    home: OnceLock<Arc<dyn TaskHome>>,
    /// Runtime keys, the usage ledger and budgets (set once, before serving).
    accounts: OnceLock<Arc<Accounts>>,
    /// Engine counts of prompts in flight (`crate::pool::count_prompt`).
    pub counting: tokio::sync::Semaphore,
}

impl Core {
    pub fn new(cfg: ServiceConfig) -> Self {
        let sessions = Arc::new(SessionStore::new(
            cfg.session_ttl,
            cfg.session_token_budget,
            cfg.max_sessions,
        ));
        let launch = crate::runner::launcher(sessions.clone());
        let pools = PoolRegistry::new(sessions.clone(), cfg.prior_service_ms, launch);
        Self {
            table: TaskTable::new(cfg.retention, cfg.record_ttl),
            local: LocalHome::new(pools.clone()),
            pools,
            sessions,
            tenants: Arc::new(Tenants::new(&cfg.tenancy)),
            cfg,
            accepting: AtomicBool::new(true),
            self_tests_passed: AtomicBool::new(true),
            home: OnceLock::new(),
            accounts: OnceLock::new(),
            counting: tokio::sync::Semaphore::new(crate::pool::COUNTS_AT_ONCE),
        }
    }

    /// Where tasks live.
    pub fn home(&self) -> &dyn TaskHome {
        match self.home.get() {
            Some(h) => h.as_ref(),
            None => &self.local,
        }
    }

    /// Send tasks to `home` from now on (once).
    pub fn set_home(&self, home: Arc<dyn TaskHome>) -> Result<(), OrchError> {
        self.home
            .set(home)
            .map_err(|_| OrchError::internal("the task home was already set"))
    }

    /// Keep keys, usage and budgets in `accounts` from now on (once).
    pub fn set_accounts(&self, accounts: Arc<Accounts>) -> Result<(), OrchError> {
        self.accounts
            .set(accounts)
            .map_err(|_| OrchError::internal("the accounts were already set"))
    }

    pub fn accounts(&self) -> Option<&Arc<Accounts>> {
        self.accounts.get()
    }

    /// This instance's pools, for a home that runs tasks here for other instances.
    pub fn local_pools(&self) -> LocalPools {
        LocalPools::new(self.pools.clone(), self.tenants.clone())
    }

    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    /// Cancel a task: its reason is recorded and its token fired first, so whoever
    /// holds it next (the pool actor if queued, its runner if running) ends it; then
    /// its home acts on it (a queued task leaves its queue). A task that ended is
    /// left alone.
    pub async fn cancel(
        &self,
        rec: &Arc<TaskRecord>,
        reason: CancelReason,
    ) -> Result<(), OrchError> {
        if !rec.request_cancel(reason) {
            return Ok(());
        }
        self.home().cancel(rec, reason).await
    }
}
