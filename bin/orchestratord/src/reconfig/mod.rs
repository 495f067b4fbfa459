//! Live reconfiguration (SIGHUP, `POST /v1/admin/reload-config`): re-read the config
//! file and apply the difference without dropping a stream.
//!
//! * A file with any problem is refused whole (every problem named by its place in the
//!   file) and the running configuration stays.
//! * Keys and `/metrics` access are swapped at once; tenants' weights and quotas apply
//!   to the next admission; pool settings (queue limits and policy, fairness, timeouts,
//!   output limit) apply to what comes next.
//! * A pool's replica count grows (new replicas start and serve) or shrinks (the
//!   highest-numbered drain first: no new work, running tasks finish, then they stop).
//! * Engine settings (model, context, slots, binary, mock or upstream settings) go
//!   through the reload path: new replicas start and serve before the old ones drain.
//! * New pools start. What needs a restart (`[server]`, removing a pool) is reported as
//!   not applied.
//!
//! Reconfigurations run one at a time. What changed is decided by [`diff`], section by
//! section and by value; this module applies it.

mod diff;

pub use diff::{diff, Diff, PoolChange, PoolDiff};

use crate::config::{Config, PoolConfig};
use crate::settings::{check_open_address, pool_spec, tenancy};
use orch_api::auth::{AuthConfig, SharedAuth};
use orch_services::{Orchestrator, PoolManager};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Longest a shrinking pool's drained replicas keep running for their tasks.
const SHRINK_DRAIN_LIMIT: Duration = Duration::from_secs(600);

/// The config the server runs now: one copy, read by whoever needs a pool's settings
/// (replicas added by URL), replaced whole by a reconfiguration.
pub type Running = Arc<RwLock<Arc<Config>>>;

pub struct Reconfig {
    pub path: Option<PathBuf>,
    pub running: Running,
    pub orch: Orchestrator,
    pub manager: PoolManager,
    pub auth: SharedAuth,
    pub addr: SocketAddr,
    /// One reconfiguration at a time.
    pub lock: tokio::sync::Mutex<()>,
}

/// A pool's settings in the running config.
pub fn pool_of(running: &Running, id: &str) -> Option<PoolConfig> {
    let cfg = running.read().unwrap_or_else(|p| p.into_inner()).clone();
    cfg.pools.iter().find(|p| p.id == id).cloned()
}

impl Reconfig {
    /// Re-read the file and apply it; a report of what changed and what was not applied,
    /// or every problem of a refused file.
    pub async fn reload(&self) -> Result<Value, Vec<String>> {
        let path = self
            .path
            .clone()
            .ok_or_else(|| vec!["this server was not started from a config file".to_string()])?;
        let new = Config::check_file(&path)?;
        let keys = new.key_ring().map_err(|e| vec![e.to_string()])?;
        check_open_address(&keys, self.addr).map_err(|e| vec![e.to_string()])?;
        let _one_at_a_time = self.lock.lock().await;
        let cur = self
            .running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let d = diff(&cur, &new);
        // every new launcher is built before anything changes: a broken engine setting
        // refuses the whole file
        let mut launchers = std::collections::HashMap::new();
        for pd in &d.pools {
            let id = match pd {
                PoolDiff::Added(id) => id,
                PoolDiff::Kept(c) if c.engine => &c.id,
                PoolDiff::Kept(_) | PoolDiff::Removed(_) => continue,
            };
            if let Some(p) = new.pools.iter().find(|p| &p.id == id) {
                let l = crate::engines::launcher_for(p).map_err(|e| vec![e])?;
                launchers.insert(id.clone(), l);
            }
        }
        let mut applied: Vec<String> = Vec::new();
        let mut not_applied: Vec<String> = Vec::new();

        let key_count = keys.len();
        let before = self
            .auth
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys
            .len();
        *self.auth.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(AuthConfig {
            keys,
            metrics_admin_only: new.auth.metrics_admin_only(),
        });
        applied.push(format!(
            "auth: {before} → {key_count} keys, /metrics {:?}",
            new.auth.metrics
        ));
        applied.extend(self.orch.update_tenancy(&tenancy(&new)));
        for section in &d.restart {
            not_applied.push(format!("{section}: changes need a restart"));
        }

        let mut keep = new.clone();
        for pd in &d.pools {
            match pd {
                PoolDiff::Added(id) => {
                    let (Some(p), Some(l)) =
                        (new.pools.iter().find(|p| &p.id == id), launchers.remove(id))
                    else {
                        continue;
                    };
                    match self.orch.registry().create(pool_spec(p)) {
                        Ok(_) => match self.manager.start_pool(id, l, p.replicas).await {
                            Ok(()) => applied.push(format!("pool {id}: added")),
                            Err(e) => not_applied.push(format!("pool {id}: could not start: {e}")),
                        },
                        Err(e) => not_applied.push(format!("pool {id}: {e}")),
                    }
                }
                PoolDiff::Removed(id) => {
                    not_applied.push(format!(
                        "pool {id}: removed from the file; removing a pool needs a restart (it keeps serving)"
                    ));
                    if let Some(old) = cur.pools.iter().find(|o| &o.id == id) {
                        keep.pools.push(old.clone());
                    }
                }
                PoolDiff::Kept(c) => {
                    let Some(p) = new.pools.iter().find(|p| p.id == c.id) else {
                        continue;
                    };
                    self.apply_pool(
                        p,
                        c,
                        launchers.remove(&c.id),
                        &mut applied,
                        &mut not_applied,
                    )
                    .await;
                }
            }
        }
        *self.running.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keep);
        tracing::info!(?applied, ?not_applied, "configuration reloaded");
        Ok(json!({"applied": applied, "not_applied": not_applied}))
    }

    /// Apply what changed in a pool that stays: settings at once, then new replicas
    /// for new engine settings (which also take the new count), or the new count.
    async fn apply_pool(
        &self,
        p: &PoolConfig,
        c: &PoolChange,
        launcher: Option<Arc<dyn adapter_api::ReplicaLauncher>>,
        applied: &mut Vec<String>,
        not_applied: &mut Vec<String>,
    ) {
        let spec = pool_spec(p);
        if c.settings {
            match self.orch.registry().update_spec(spec.clone()) {
                Ok(()) => applied.push(format!("pool {}: settings applied", p.id)),
                Err(e) => not_applied.push(format!("pool {}: {e}", p.id)),
            }
        }
        if let Some(l) = launcher {
            if c.replicas.is_some() {
                let _ = self
                    .manager
                    .scale(&p.id, p.replicas, SHRINK_DRAIN_LIMIT)
                    .await;
            }
            match self
                .manager
                .relaunch(&p.id, l, &spec.sampler_profile_version)
                .await
            {
                Ok(r) => applied.push(format!(
                    "pool {}: engine settings changed, replicas replaced: {:?}",
                    p.id, r.replicas
                )),
                Err(e) => not_applied.push(format!("pool {}: {}", p.id, e.message)),
            }
        } else if let Some((old, new)) = c.replicas {
            match self
                .manager
                .scale(&p.id, p.replicas, SHRINK_DRAIN_LIMIT)
                .await
            {
                Ok(()) => applied.push(format!("pool {}: replicas {old} → {new}", p.id)),
                Err(e) => not_applied.push(format!("pool {}: {}", p.id, e.message)),
            }
        }
    }
}
