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
//! Reconfigurations run one at a time.

use crate::config::{Config, MetricsAccess, PoolConfig};
use crate::settings::{check_open_address, pool_spec, tenancy};
use orch_api::auth::{AuthConfig, SharedAuth};
use orch_services::{Orchestrator, PoolManager};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Longest a shrinking pool's drained replicas keep running for their tasks.
const SHRINK_DRAIN_LIMIT: Duration = Duration::from_secs(600);

pub struct Reconfig {
    pub path: Option<PathBuf>,
    pub current: tokio::sync::Mutex<Config>,
    pub orch: Orchestrator,
    pub manager: PoolManager,
    pub auth: SharedAuth,
    pub addr: SocketAddr,
    /// Pool configs by id, for replicas added by URL (which engine, which model).
    pub pools: Arc<std::sync::RwLock<Vec<PoolConfig>>>,
}

/// What decides the engine: a change here needs new replicas.
fn engine_key(p: &PoolConfig) -> String {
    format!(
        "{:?}",
        (p.engine, &p.model, &p.mock, &p.llamacpp, &p.openai)
    )
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
        check_open_address(keys.is_empty(), self.addr).map_err(|e| vec![e.to_string()])?;
        // every new launcher is built before anything changes: a broken engine setting
        // refuses the whole file
        let mut cur = self.current.lock().await;
        let mut launchers = std::collections::HashMap::new();
        for p in &new.pools {
            let old = cur.pools.iter().find(|o| o.id == p.id);
            if old.is_none_or(|o| engine_key(o) != engine_key(p)) {
                let l = crate::engines::launcher_for(p).map_err(|e| vec![e])?;
                launchers.insert(p.id.clone(), l);
            }
        }
        let mut applied: Vec<String> = Vec::new();
        let mut not_applied: Vec<String> = Vec::new();

        let metrics_admin_only = new.auth.metrics == MetricsAccess::Admin;
        let key_count = keys.len();
        let before = self
            .auth
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys
            .len();
        *self.auth.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(AuthConfig {
            keys,
            metrics_admin_only,
        });
        applied.push(format!(
            "auth: {before} → {key_count} keys, /metrics {:?}",
            new.auth.metrics
        ));
        applied.extend(self.orch.update_tenancy(&tenancy(&new)));
        if format!("{:?}", cur.server) != format!("{:?}", new.server) {
            not_applied.push("[server]: changes need a restart".into());
        }

        for p in &new.pools {
            let Some(old) = cur.pools.iter().find(|o| o.id == p.id).cloned() else {
                let Some(l) = launchers.remove(&p.id) else {
                    continue;
                };
                match self.orch.registry().create(pool_spec(p)) {
                    Ok(_) => match self.manager.start_pool(&p.id, l, p.replicas).await {
                        Ok(()) => applied.push(format!("pool {}: added", p.id)),
                        Err(e) => not_applied.push(format!("pool {}: could not start: {e}", p.id)),
                    },
                    Err(e) => not_applied.push(format!("pool {}: {e}", p.id)),
                }
                continue;
            };
            let spec = pool_spec(p);
            if format!("{:?}", pool_spec(&old)) != format!("{spec:?}") {
                match self.orch.registry().update_spec(spec.clone()) {
                    Ok(()) => applied.push(format!("pool {}: settings applied", p.id)),
                    Err(e) => not_applied.push(format!("pool {}: {e}", p.id)),
                }
            }
            if let Some(l) = launchers.remove(&p.id) {
                // new engine settings: replicas are replaced through a reload (which also
                // takes the new replica count)
                if p.replicas != old.replicas {
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
            } else if p.replicas != old.replicas {
                match self
                    .manager
                    .scale(&p.id, p.replicas, SHRINK_DRAIN_LIMIT)
                    .await
                {
                    Ok(()) => applied.push(format!(
                        "pool {}: replicas {} → {}",
                        p.id, old.replicas, p.replicas
                    )),
                    Err(e) => not_applied.push(format!("pool {}: {}", p.id, e.message)),
                }
            }
        }
        let mut keep = new.clone();
        for old in &cur.pools {
            if !new.pools.iter().any(|p| p.id == old.id) {
                not_applied.push(format!(
                    "pool {}: removed from the file; removing a pool needs a restart (it keeps serving)",
                    old.id
                ));
                keep.pools.push(old.clone());
            }
        }
        *self.pools.write().unwrap_or_else(|p| p.into_inner()) = keep.pools.clone();
        *cur = keep;
        tracing::info!(?applied, ?not_applied, "configuration reloaded");
        Ok(json!({"applied": applied, "not_applied": not_applied}))
    }
}
