//! Changing a running pool's replicas: scaling (grow, or drain then shrink), replacing
//! its engine settings through a reload, and replicas added by URL and removed at
//! runtime.

use super::{index_of, replica_id, stop_all, wait_all, PoolManager, Supervisor};
use adapter_api::{LaunchOverrides, ReplicaLauncher};
use orch_domain::control::ReloadResponse;
use orch_domain::{ErrorCode, OrchError};
use std::sync::Arc;
use std::time::Duration;

impl PoolManager {
    /// Replicas a pool is configured to run (not counting ones added by URL).
    pub fn replica_count(&self, pool_id: &str) -> Option<u32> {
        self.lock().get(pool_id).map(|m| m.replicas)
    }

    /// Change how many replicas a pool runs. Growing starts the new ones and waits
    /// until they serve; shrinking drains the highest-numbered first (no new work;
    /// their running tasks finish, bounded by `drain_limit`), then stops them.
    pub async fn scale(
        &self,
        pool_id: &str,
        n: u32,
        drain_limit: Duration,
    ) -> Result<(), OrchError> {
        let conflict = |m: String| OrchError::new(ErrorCode::Conflict, m).with_pool(pool_id);
        let (launcher, generation, cur, overrides) = {
            let pools = self.lock();
            let m = pools
                .get(pool_id)
                .ok_or_else(|| OrchError::not_found("pool", pool_id))?;
            if m.reloading {
                return Err(conflict(format!("pool {pool_id} is reloading")));
            }
            (
                m.launcher.clone(),
                m.generation,
                m.replicas,
                m.overrides.clone(),
            )
        };
        if n == cur {
            return Ok(());
        }
        if n > cur {
            let ids: Vec<String> = (cur..n)
                .map(|k| replica_id(&self.cfg.replica_prefix, pool_id, generation, k))
                .collect();
            let (sups, waits) = self.spawn_all(pool_id, &launcher, &ids, &overrides, false);
            if let Err(e) = wait_all(waits).await {
                stop_all(sups).await;
                return Err(conflict(format!("scaling up failed, nothing changed: {e}")));
            }
            if let Some(m) = self.lock().get_mut(pool_id) {
                m.supervisors.extend(sups);
                m.replicas = n;
            }
            tracing::info!(pool_id, from = cur, to = n, "scaled up");
            return Ok(());
        }
        let victims: Vec<Supervisor> = {
            let mut pools = self.lock();
            let Some(m) = pools.get_mut(pool_id) else {
                return Ok(());
            };
            m.replicas = n;
            let (keep, go): (Vec<_>, Vec<_>) = std::mem::take(&mut m.supervisors)
                .into_iter()
                .partition(|s| index_of(&s.replica_id).is_some_and(|k| k < n));
            m.supervisors = keep;
            go
        };
        self.drain_and_stop(pool_id, victims, drain_limit).await;
        tracing::info!(pool_id, from = cur, to = n, "scaled down");
        Ok(())
    }

    /// Drain replicas (no new work), wait for their running tasks, stop them.
    async fn drain_and_stop(&self, pool_id: &str, sups: Vec<Supervisor>, limit: Duration) {
        let ids: Vec<String> = sups.iter().map(|s| s.replica_id.clone()).collect();
        if let Some(pool) = self.pools.get(pool_id) {
            for id in &ids {
                pool.drain_replica(id).await;
            }
        }
        self.pools.wait_replicas_idle(pool_id, &ids, limit).await;
        stop_all(sups).await;
    }

    /// Engine settings changed (live reconfiguration): later launches use `launcher`,
    /// and the pool's replicas are replaced through a reload (new ones start and serve
    /// before the old ones drain).
    pub async fn relaunch(
        &self,
        pool_id: &str,
        launcher: Arc<dyn ReplicaLauncher>,
        sampler: &str,
    ) -> Result<ReloadResponse, OrchError> {
        {
            let mut pools = self.lock();
            let m = pools
                .get_mut(pool_id)
                .ok_or_else(|| OrchError::not_found("pool", pool_id))?;
            m.launcher = launcher;
            m.overrides = LaunchOverrides::default();
        }
        self.reload(pool_id, None, sampler).await
    }

    /// Add a replica reached by `url` to a pool at runtime. Its identity (engine,
    /// version, model digest, context) is read from the engine and must match the
    /// pool's pin: a mismatch is a 409 naming the difference, and nothing is added.
    /// Health-checked and restarted like any replica. Returns its id.
    pub async fn add_remote(&self, pool_id: &str, url: &str) -> Result<String, OrchError> {
        let factory = self
            .remote
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| OrchError::invalid("url", "this server cannot add replicas by URL"))?;
        let launcher = factory(pool_id, url).map_err(|e| OrchError::invalid("url", e))?;
        let id = {
            let mut pools = self.lock();
            let m = pools
                .get_mut(pool_id)
                .ok_or_else(|| OrchError::not_found("pool", pool_id))?;
            m.next_remote += 1;
            format!("{}{pool_id}-x{}", self.cfg.replica_prefix, m.next_remote)
        };
        // an engine that is unreachable or refuses (e.g. does not serve the model) is
        // refused at once rather than after the load timeout
        let refused = |why: String| {
            OrchError::new(
                ErrorCode::Conflict,
                format!("replica at {url} refused: {why}"),
            )
            .with_pool(pool_id)
        };
        let probe = launcher
            .launch(&id, &LaunchOverrides::default())
            .await
            .map_err(|e| refused(e.to_string()))?;
        let health = probe.adapter().health().await;
        probe.stop().await;
        if let Err(e) = health {
            return Err(refused(e.to_string()));
        }
        let (sups, waits) = self.spawn_all(
            pool_id,
            &launcher,
            std::slice::from_ref(&id),
            &LaunchOverrides::default(),
            false,
        );
        if let Err(e) = wait_all(waits).await {
            stop_all(sups).await;
            return Err(OrchError::new(
                ErrorCode::Conflict,
                format!("replica at {url} refused: {e}"),
            )
            .with_pool(pool_id));
        }
        if let Some(m) = self.lock().get_mut(pool_id) {
            m.remotes.extend(sups);
        }
        tracing::info!(pool_id, replica_id = %id, url, "replica added at runtime");
        Ok(id)
    }

    /// Remove a replica: drain it (its running tasks finish, bounded by `limit`), then
    /// stop and detach it. A configured replica leaves the pool's count too.
    pub async fn remove_replica(
        &self,
        pool_id: &str,
        id: &str,
        limit: Duration,
    ) -> Result<(), OrchError> {
        let sup = {
            let mut pools = self.lock();
            let m = pools
                .get_mut(pool_id)
                .ok_or_else(|| OrchError::not_found("pool", pool_id))?;
            if let Some(i) = m.remotes.iter().position(|s| s.replica_id == id) {
                m.remotes.remove(i)
            } else if let Some(i) = m.supervisors.iter().position(|s| s.replica_id == id) {
                m.replicas = m.replicas.saturating_sub(1);
                m.supervisors.remove(i)
            } else {
                return Err(OrchError::not_found("replica", id));
            }
        };
        self.drain_and_stop(pool_id, vec![sup], limit).await;
        tracing::info!(pool_id, replica_id = id, "replica removed");
        Ok(())
    }

    pub async fn stop_all(&self) {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        for id in ids {
            self.stop_pool(&id).await;
        }
    }
}
