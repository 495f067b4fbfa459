//! The services facade: one [`Orchestrator`] owns the pools, the task records and the
//! sessions, and exposes what the HTTP layer (or an embedding program) calls:
//! admit, stream, cancel, status, sessions, readiness and shutdown.

use crate::config::{PoolSpec, ServiceConfig};
use crate::pool::{Pinned, Pool, Replica};
use crate::reader::StreamReader;
use crate::sessions::SessionStore;
use crate::task::{CancelReason, TaskRecord};
use adapter_api::{Health, WorkerAdapter};
use orch_domain::{
    EndFrame, ErrorCode, ErrorFrame, FinishReason, OrchError, SessionId, SessionInfo, StreamEvent,
    TaskId, TaskStatus,
};
use orchestrator_core::eta::queue_position;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;
use tokio::time::Instant;

pub(crate) struct Inner {
    pub(crate) cfg: ServiceConfig,
    pub(crate) pools: RwLock<Vec<Arc<Pool>>>,
    pub(crate) tasks: Mutex<HashMap<TaskId, Arc<TaskRecord>>>,
    pub(crate) sessions: SessionStore,
    pub(crate) accepting: AtomicBool,
    pub(crate) self_tests_passed: AtomicBool,
}

/// The orchestrator services. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Orchestrator {
    pub(crate) inner: Arc<Inner>,
}

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
}

impl Orchestrator {
    /// Create the services and start the record/session sweeper (needs a tokio runtime).
    pub fn new(cfg: ServiceConfig) -> Self {
        let inner = Arc::new(Inner {
            sessions: SessionStore::new(cfg.session_ttl, cfg.session_token_budget),
            cfg,
            pools: RwLock::new(Vec::new()),
            tasks: Mutex::new(HashMap::new()),
            accepting: AtomicBool::new(true),
            self_tests_passed: AtomicBool::new(true),
        });
        tokio::spawn(sweeper(Arc::downgrade(&inner)));
        Self { inner }
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.inner.cfg
    }

    pub(crate) fn tasks(&self) -> MutexGuard<'_, HashMap<TaskId, Arc<TaskRecord>>> {
        self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.inner
            .pools
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn pool(&self, id: &str) -> Option<Arc<Pool>> {
        self.pools().into_iter().find(|p| p.id == id)
    }

    /// Register an empty pool and start its dispatcher.
    pub fn create_pool(&self, spec: PoolSpec) -> Result<Arc<Pool>, PoolError> {
        let mut pools = self.inner.pools.write().unwrap_or_else(|p| p.into_inner());
        if pools.iter().any(|p| p.id == spec.id) {
            return Err(PoolError::DuplicatePool(spec.id));
        }
        let pool = Arc::new(Pool::new(spec, self.inner.cfg.prior_service_ms));
        pools.push(pool.clone());
        crate::metrics::pool_ready(&pool.id, false);
        tokio::spawn(crate::dispatch::dispatcher(
            Arc::downgrade(&self.inner),
            pool.clone(),
        ));
        Ok(pool)
    }

    /// Probe a replica and add it to a pool, enforcing version pinning.
    pub async fn attach_replica(
        &self,
        pool_id: &str,
        replica_id: &str,
        adapter: Arc<dyn WorkerAdapter>,
    ) -> Result<(), PoolError> {
        self.attach(pool_id, replica_id, adapter, (None, None), false)
            .await
    }

    /// Probe a replica and add it. A `staged` replica (reload) takes no work and is
    /// not held to the current pin until [`switch_replicas`](Self::switch_replicas).
    pub async fn attach(
        &self,
        pool_id: &str,
        replica_id: &str,
        adapter: Arc<dyn WorkerAdapter>,
        (endpoint, pid): (Option<String>, Option<u32>),
        staged: bool,
    ) -> Result<(), PoolError> {
        let pool = self
            .pool(pool_id)
            .ok_or_else(|| PoolError::UnknownPool(pool_id.into()))?;
        let probe = |reason: String| PoolError::Probe {
            pool: pool_id.into(),
            replica: replica_id.into(),
            reason,
        };
        let health = adapter.health().await.map_err(|e| probe(e.to_string()))?;
        let props = adapter
            .properties()
            .await
            .map_err(|e| probe(e.to_string()))?;
        {
            let mut st = pool.lock();
            let got = Pinned::of(&props, &st.spec.sampler_profile_version);
            match &st.pinned {
                _ if staged => {}
                Some(p) if *p != got => {
                    return Err(PoolError::Pinning {
                        pool: pool_id.into(),
                        replica: replica_id.into(),
                        pinned: format!("{p:?}"),
                        got: format!("{got:?}"),
                    })
                }
                Some(_) => {}
                None => st.pinned = Some(got),
            }
            // a restarted replica keeps its slot count (tasks of the dead process still
            // hold SlotGuards that will give their slots back) and its drain state
            let (busy, draining) = match st.replicas.iter().position(|r| r.id == replica_id) {
                Some(i) => {
                    let old = st.replicas.remove(i);
                    (old.busy, old.draining)
                }
                None => (0, false),
            };
            st.replicas.push(Replica {
                id: replica_id.to_string(),
                adapter,
                props,
                ready: health == Health::Ready,
                draining,
                staged,
                busy,
                last_error: None,
                endpoint,
                pid,
            });
            crate::metrics::pool_ready(&pool.id, st.is_ready());
        }
        pool.wake.notify_one();
        Ok(())
    }

    /// Mark a replica ready or not (health checks, crashes, restarts).
    pub fn set_replica_ready(
        &self,
        pool_id: &str,
        replica_id: &str,
        ready: bool,
        error: Option<String>,
    ) {
        let Some(pool) = self.pool(pool_id) else {
            return;
        };
        {
            let mut st = pool.lock();
            if let Some(r) = st.replica_mut(replica_id) {
                r.ready = ready;
                if error.is_some() {
                    r.last_error = error.clone();
                }
            }
            if error.is_some() {
                st.last_error = error;
            }
            crate::metrics::pool_ready(&pool.id, st.is_ready());
        }
        pool.wake.notify_one();
    }

    /// Whether at least one pool is ready and startup self-tests passed.
    pub fn is_ready(&self) -> bool {
        self.inner.self_tests_passed.load(Ordering::Acquire)
            && self.pools().iter().any(|p| p.lock().is_ready())
    }

    pub fn set_self_tests_passed(&self, passed: bool) {
        self.inner
            .self_tests_passed
            .store(passed, Ordering::Release);
    }

    pub fn is_accepting(&self) -> bool {
        self.inner.accepting.load(Ordering::Acquire)
    }

    pub(crate) fn record(&self, id: TaskId) -> Result<Arc<TaskRecord>, OrchError> {
        self.tasks()
            .get(&id)
            .cloned()
            .ok_or_else(|| OrchError::not_found("task", id))
    }

    /// Open a reader of a task's events after sequence `last_event_id` (0 = from the start).
    pub fn open_stream(&self, id: TaskId, last_event_id: u64) -> Result<StreamReader, OrchError> {
        let rec = self.record(id)?;
        let len = rec.log.len();
        if last_event_id > len {
            return Err(OrchError::invalid(
                "Last-Event-ID",
                format!("{last_event_id} is past the last frame ({len}) of this task"),
            ));
        }
        Ok(StreamReader::new(self.clone(), rec, last_event_id))
    }

    /// Cancel a task: a queued one is removed, a running one is stopped on its engine.
    /// Canceling an already finished task is a no-op.
    pub fn cancel(&self, id: TaskId) -> Result<(), OrchError> {
        let rec = self.record(id)?;
        self.cancel_record(&rec, CancelReason::Client);
        Ok(())
    }

    pub(crate) fn cancel_record(&self, rec: &Arc<TaskRecord>, reason: CancelReason) {
        if rec.is_terminal() {
            return;
        }
        if let Some(pool) = self.pool(&rec.pool_id) {
            let removed = {
                let mut st = pool.lock();
                let removed = st.queue.cancel(&rec.id);
                if removed {
                    crate::dispatch::publish_depth(&pool.id, &st);
                }
                removed
            };
            if removed {
                let ev = match reason {
                    CancelReason::Client | CancelReason::Abandoned => canceled_end(0),
                    CancelReason::Shutdown | CancelReason::Drain => {
                        server_abort(reason, &rec.pool_id)
                    }
                };
                if rec.terminate(ev) {
                    crate::dispatch::where_queued(st_labels(&pool).as_ref(), &rec.pool_id)
                        .canceled(reason.as_str());
                }
                return;
            }
        }
        rec.request_cancel(reason);
    }

    /// `GET /v1/tasks/{id}`.
    pub fn status(&self, id: TaskId) -> Result<TaskStatus, OrchError> {
        let rec = self.record(id)?;
        let position = self.pool(&rec.pool_id).and_then(|pool| {
            let st = pool.lock();
            st.queue
                .ahead_of(&id)
                .map(|ahead| queue_position(ahead, st.free_slots()).max(1))
        });
        let m = rec.meta();
        Ok(TaskStatus {
            task_id: id,
            state: m.state,
            priority: rec.priority,
            pool_id: rec.pool_id.clone(),
            replica_id: m.replica_id.clone(),
            queue_position: position,
            tokens_out: m.tokens_out,
            finish_reason: m.finish,
            error_code: m.error_code.map(|c| c.as_str().to_string()),
        })
    }

    pub fn session(&self, id: SessionId) -> Result<SessionInfo, OrchError> {
        self.inner
            .sessions
            .info(id)
            .ok_or_else(|| OrchError::not_found("session", id))
    }

    /// End a session and ask its replica to forget the session's KV.
    pub async fn delete_session(&self, id: SessionId) -> Result<(), OrchError> {
        let home = self
            .inner
            .sessions
            .remove(id)
            .ok_or_else(|| OrchError::not_found("session", id))?;
        if let Some(home) = home {
            let adapter = self.pool(&home.pool_id).and_then(|p| {
                let st = p.lock();
                st.replicas
                    .iter()
                    .find(|r| r.id == home.replica_id)
                    .map(|r| r.adapter.clone())
            });
            if let (Some(a), Some(slot)) = (adapter, home.slot) {
                if let Err(e) = a.erase_slot(slot).await {
                    tracing::warn!(session_id = %id, error = %e, "could not erase session KV");
                }
            }
        }
        Ok(())
    }

    /// Tasks admitted and not yet ended.
    pub fn live_tasks(&self) -> usize {
        self.tasks().values().filter(|r| !r.is_terminal()).count()
    }

    /// Stop admitting (503 from then on).
    pub fn begin_shutdown(&self) {
        self.inner.accepting.store(false, Ordering::Release);
    }

    /// Wait up to `bound` for live tasks to finish, then end the rest with a retriable
    /// error. Returns how many had to be aborted.
    pub async fn drain_all(&self, bound: Duration) -> usize {
        let deadline = Instant::now() + bound;
        while self.live_tasks() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let live: Vec<Arc<TaskRecord>> = self
            .tasks()
            .values()
            .filter(|r| !r.is_terminal())
            .cloned()
            .collect();
        for rec in &live {
            self.cancel_record(rec, CancelReason::Shutdown);
        }
        // give running tasks a moment to write their terminal frame
        let settle = Instant::now() + Duration::from_secs(2);
        while self.live_tasks() > 0 && Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        live.len()
    }
}

/// Labels for a pool's metrics before a replica is chosen.
pub(crate) fn st_labels(pool: &Pool) -> Option<Pinned> {
    pool.lock().pinned.clone()
}

pub(crate) fn canceled_end(tokens_out: u32) -> StreamEvent {
    StreamEvent::End(EndFrame {
        tokens_in: 0,
        tokens_out,
        decode_time_ms: 0,
        ttft_ms: 0,
        finish_reason: FinishReason::Canceled,
        tokens_cached: None,
    })
}

/// The terminal frame of work the server itself ended (shutdown, drain deadline).
pub(crate) fn server_abort(reason: CancelReason, pool_id: &str) -> StreamEvent {
    let msg = match reason {
        CancelReason::Drain => "pool drained before the task finished; retry",
        _ => "server shutting down before the task finished; retry",
    };
    StreamEvent::Error(ErrorFrame {
        code: ErrorCode::PoolUnready,
        message: msg.into(),
        retriable: true,
        retry_after_ms: Some(1000),
        engine: None,
        pool_id: Some(pool_id.to_string()),
    })
}

/// Expire finished records past their TTL and idle sessions.
async fn sweeper(inner: Weak<Inner>) {
    loop {
        let interval = match inner.upgrade() {
            Some(i) => i.cfg.sweep_interval,
            None => return,
        };
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else { return };
        let ttl = inner.cfg.record_ttl;
        {
            let mut tasks = inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
            tasks.retain(|_, r| {
                let m = r.meta();
                !matches!(m.finished_at, Some(t) if t.elapsed() >= ttl) || r.reader_count() > 0
            });
        }
        inner.sessions.sweep();
    }
}

impl Orchestrator {
    /// Ids of tasks admitted and not yet ended (for operators and test harnesses).
    pub fn live_task_ids(&self) -> Vec<TaskId> {
        self.tasks()
            .values()
            .filter(|r| !r.is_terminal())
            .map(|r| r.id)
            .collect()
    }
}
