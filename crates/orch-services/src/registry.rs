//! The pool registry: which pools exist (handles to their actors), and the replica
//! operations the pool manager needs (probe and attach, readiness, detach, switch).
//!
//! Owns: the list of pool handles (read-mostly; written only when a pool is created).
//! Never: touches tasks or streams; the data plane reaches pools through handles.

use crate::config::PoolSpec;
use crate::pool::{Launch, Pinned, PoolError, PoolHandle, Replica};
use crate::sessions::SessionStore;
use adapter_api::{Health, WorkerAdapter};
use orch_domain::OrchError;
use std::sync::{Arc, RwLock};
use std::time::Duration;

struct Inner {
    pools: RwLock<Vec<PoolHandle>>,
    sessions: Arc<SessionStore>,
    prior_service_ms: f64,
    launch: Launch,
}

/// Where a replica came from, for operators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaOrigin {
    pub endpoint: Option<String>,
    pub pid: Option<u32>,
}

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct PoolRegistry {
    inner: Arc<Inner>,
}

impl PoolRegistry {
    pub fn new(sessions: Arc<SessionStore>, prior_service_ms: f64, launch: Launch) -> Self {
        Self {
            inner: Arc::new(Inner {
                pools: RwLock::new(Vec::new()),
                sessions,
                prior_service_ms,
                launch,
            }),
        }
    }

    pub fn all(&self) -> Vec<PoolHandle> {
        self.inner
            .pools
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn get(&self, id: &str) -> Option<PoolHandle> {
        let pools = self.inner.pools.read().unwrap_or_else(|p| p.into_inner());
        pools.iter().find(|p| &*p.id == id).cloned()
    }

    fn need(&self, id: &str) -> Result<PoolHandle, PoolError> {
        self.get(id)
            .ok_or_else(|| PoolError::UnknownPool(id.into()))
    }

    /// Register an empty pool and start its actor.
    pub fn create(&self, spec: PoolSpec) -> Result<PoolHandle, PoolError> {
        let mut pools = self.inner.pools.write().unwrap_or_else(|p| p.into_inner());
        if pools.iter().any(|p| *p.id == *spec.id) {
            return Err(PoolError::DuplicatePool(spec.id));
        }
        let h = PoolHandle::spawn(
            spec,
            self.inner.prior_service_ms,
            self.inner.sessions.clone(),
            self.inner.launch.clone(),
        );
        crate::metrics::pool_counters(&h.id);
        pools.push(h.clone());
        Ok(h)
    }

    /// Probe a replica and add it. A `staged` replica (reload) takes no work and is
    /// not held to the current pin until [`switch`](Self::switch).
    pub async fn attach(
        &self,
        pool_id: &str,
        replica_id: &str,
        adapter: Arc<dyn WorkerAdapter>,
        origin: ReplicaOrigin,
        staged: bool,
    ) -> Result<(), PoolError> {
        let pool = self.need(pool_id)?;
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
        crate::metrics::replica_counters(pool_id, replica_id);
        pool.attach(Replica {
            id: replica_id.into(),
            adapter,
            props: Arc::new(props),
            ready: health == Health::Ready,
            draining: false,
            staged,
            busy: 0,
            last_error: None,
            endpoint: origin.endpoint,
            pid: origin.pid,
        })
        .await
    }

    /// Probe a serving replica and add it to a pool, ready for work (embedders and
    /// tests; the pool manager attaches with its origin through [`attach`](Self::attach)).
    pub async fn add_replica(
        &self,
        pool_id: &str,
        replica_id: &str,
        adapter: Arc<dyn WorkerAdapter>,
    ) -> Result<(), PoolError> {
        self.attach(
            pool_id,
            replica_id,
            adapter,
            ReplicaOrigin::default(),
            false,
        )
        .await
    }

    /// Apply new pool settings at once (queue limits and policy, fairness, timeouts,
    /// output limit); queued and running tasks are not touched.
    pub fn update_spec(&self, spec: PoolSpec) -> Result<(), PoolError> {
        self.need(&spec.id)?.update_spec(spec);
        Ok(())
    }

    /// Mark a replica ready or not (health checks, crashes, restarts).
    pub fn set_ready(&self, pool_id: &str, replica_id: &str, ready: bool, error: Option<String>) {
        if let Some(p) = self.get(pool_id) {
            p.set_ready(replica_id, ready, error);
        }
    }

    /// Remove a replica from its pool (after it drained or when it is stopped).
    pub fn detach(&self, pool_id: &str, replica_id: &str) {
        if let Some(p) = self.get(pool_id) {
            p.detach(replica_id);
        }
    }

    /// Reload's switch (see [`PoolHandle::switch`]).
    pub async fn switch(
        &self,
        pool_id: &str,
        new_ids: &[String],
        sampler: &str,
    ) -> Result<Arc<Pinned>, OrchError> {
        let p = self
            .get(pool_id)
            .ok_or_else(|| OrchError::not_found("pool", pool_id))?;
        p.switch(new_ids.to_vec(), sampler).await
    }

    /// Wait (without polling) until none of `replica_ids` holds a busy slot.
    pub async fn wait_replicas_idle(&self, pool_id: &str, replica_ids: &[String], limit: Duration) {
        if let Some(p) = self.get(pool_id) {
            p.wait_for(limit, |s| {
                s.replicas
                    .iter()
                    .filter(|r| replica_ids.iter().any(|id| **id == *r.id))
                    .all(|r| r.busy == 0)
            })
            .await;
        }
    }
}
