//! Wiring: config → services → pools → router → listener, and graceful shutdown.

use crate::config::{Config, PoolConfig};
use crate::settings::{check_open_address, pool_spec, service_config};
use orch_api::{AppState, MetricsRender};
use orch_services::{ManagerConfig, Orchestrator, PoolError, PoolManager};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("{0}")]
    Engine(String),
    #[error("{0}")]
    SelfTest(String),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Auth(String),
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("accounts: {0}")]
    Accounts(String),
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub orch: Orchestrator,
    pub manager: PoolManager,
    pub reconfig: std::sync::Arc<crate::reconfig::Reconfig>,
    shutdown_tx: watch::Sender<bool>,
    handle: JoinHandle<()>,
    shutdown_grace: Duration,
}

impl Server {
    /// Re-read the config file and apply it (see [`crate::reconfig`]).
    pub async fn reconfigure(&self) -> Result<serde_json::Value, Vec<String>> {
        self.reconfig.reload().await
    }

    /// Graceful stop: refuse new work (503), let running tasks finish within the
    /// configured grace, end what is left with a retriable error, then close.
    pub async fn shutdown(self) {
        self.orch.begin_shutdown();
        let aborted = self.orch.drain_all(self.shutdown_grace).await;
        if aborted > 0 {
            tracing::warn!(aborted, "shutdown grace elapsed; ended remaining tasks");
        }
        if let Some(a) = self.orch.accounts() {
            match a.flush().await {
                Ok(()) => tracing::info!("usage ledger written"),
                Err(e) => {
                    tracing::error!(error = %e.message, "usage ledger: the last second may be lost")
                }
            }
        }
        let _ = self.shutdown_tx.send(true);
        let _ = self.handle.await;
        self.manager.stop_all().await;
    }
}

/// Startup options beyond the config file.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Skip the per-pool startup self-tests (development only).
    pub skip_self_test: bool,
}

/// Build everything from `cfg` and serve on `listener`.
pub async fn start(
    cfg: Config,
    listener: TcpListener,
    metrics: Option<MetricsRender>,
) -> Result<Server, StartError> {
    start_with(cfg, listener, metrics, StartOptions::default()).await
}

/// Build everything from `cfg`, start and self-test the pools, and serve on `listener`.
pub async fn start_with(
    cfg: Config,
    listener: TcpListener,
    metrics: Option<MetricsRender>,
    opts: StartOptions,
) -> Result<Server, StartError> {
    let auth = auth_config(&cfg, listener.local_addr()?)?;
    if cfg
        .pools
        .iter()
        .any(|p| matches!(p.engine, crate::config::EngineConfig::Llamacpp(_)))
    {
        let stopped = adapter_llamacpp::orphans::reap(&crate::engines::pid_dir());
        if !stopped.is_empty() {
            tracing::warn!(
                ?stopped,
                "stopped engines an earlier orchestratord left running"
            );
        }
    }
    let orch = Orchestrator::new(service_config(&cfg));
    if cfg.server.accounts {
        open_accounts(&orch, &cfg, listener.local_addr()?).await?;
    }
    let load_timeout = cfg
        .pools
        .iter()
        .map(crate::engines::load_timeout)
        .max()
        .unwrap_or_default();
    let manager = PoolManager::new(
        orch.registry(),
        ManagerConfig {
            load_timeout,
            health_interval: Duration::from_millis(cfg.supervision.health_interval_ms),
            health_timeout: Duration::from_millis(cfg.supervision.health_timeout_ms),
            unhealthy_after: cfg.supervision.unhealthy_after,
            restart_unresponsive_after: cfg.supervision.restart_unresponsive_after,
            replica_prefix: replica_prefix(&cfg, listener.local_addr()?),
            ..ManagerConfig::default()
        },
    );
    orch.set_self_tests_passed(false);
    for p in &cfg.pools {
        if let Err(e) = start_pool(&orch, &manager, p).await {
            manager.stop_all().await;
            return Err(e);
        }
    }
    if !opts.skip_self_test {
        if let Err(e) = crate::selftest::log_probe() {
            manager.stop_all().await;
            return Err(StartError::SelfTest(e));
        }
        for p in &cfg.pools {
            if let Err(e) = crate::selftest::self_test_pool(&orch, &p.id, metrics.as_ref()).await {
                manager.stop_all().await;
                return Err(StartError::SelfTest(e));
            }
        }
    }
    orch.set_self_tests_passed(true);
    let addr = listener.local_addr()?;
    #[cfg(feature = "cluster")]
    if let Some(c) = &cfg.cluster {
        if let Err(e) = crate::cluster::join(&orch, &cfg, c, addr).await {
            manager.stop_all().await;
            return Err(StartError::Cluster(e));
        }
    }
    let auth = auth.shared();
    let running: crate::reconfig::Running =
        std::sync::Arc::new(std::sync::RwLock::new(std::sync::Arc::new(cfg.clone())));
    {
        let running = running.clone();
        manager.set_remote_factory(std::sync::Arc::new(move |pool_id: &str, url: &str| {
            let p = crate::reconfig::pool_of(&running, pool_id)
                .ok_or_else(|| format!("unknown pool {pool_id}"))?;
            crate::engines::remote_launcher(&p, url)
        }));
    }
    let reconfig = std::sync::Arc::new(crate::reconfig::Reconfig {
        path: cfg.source.clone(),
        running,
        orch: orch.clone(),
        manager: manager.clone(),
        auth: auth.clone(),
        addr,
        lock: tokio::sync::Mutex::new(()),
    });
    let hook: orch_api::ReconfigureHook = {
        let r = reconfig.clone();
        std::sync::Arc::new(move || {
            let r = r.clone();
            Box::pin(async move { r.reload().await })
        })
    };
    let state = AppState {
        orch: orch.clone(),
        manager: Some(manager.clone()),
        metrics,
        keepalive: Duration::from_millis(cfg.server.keepalive_ms.max(10)),
        body: orch_api::body::BodyLimits {
            max_bytes: cfg.server.body_limit_bytes,
            read_timeout: Duration::from_millis(cfg.server.body_read_timeout_ms),
        },
        auth,
        reconfigure: Some(hook),
        browser: std::sync::Arc::new(orch_api::browser::BrowserPolicy {
            bound: Some(addr),
            allowed_hosts: cfg.server.allowed_hosts.clone(),
            allowed_origins: cfg.server.allowed_origins.clone(),
        }),
    };
    let app = orch_api::router(state);
    let limits = crate::serve::Limits {
        max_connections: cfg.server.max_connections,
        max_unauthenticated: cfg
            .server
            .max_unauthenticated_connections
            .unwrap_or((cfg.server.max_connections / 2).max(1)),
        max_unauthenticated_per_peer: cfg.server.max_unauthenticated_per_peer,
        max_per_peer: cfg.server.max_connections_per_peer,
        header_read_timeout: Duration::from_millis(cfg.server.header_read_timeout_ms),
        write_stall_timeout: Duration::from_millis(cfg.server.write_stall_timeout_ms),
        send_buffer_bytes: cfg.server.send_buffer_bytes,
    };
    let (shutdown_tx, mut rx) = watch::channel(false);
    let handle = tokio::spawn(async move {
        let stop = async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        crate::serve::serve(listener, app, limits, stop).await;
    });
    tracing::info!(%addr, pools = cfg.pools.len(), "orchestratord listening");
    Ok(Server {
        addr,
        orch,
        manager,
        reconfig,
        shutdown_tx,
        handle,
        shutdown_grace: Duration::from_millis(cfg.server.shutdown_grace_ms),
    })
}

/// API keys from the config. Without keys the server is open, which is allowed only on
/// a loopback address.
fn auth_config(cfg: &Config, addr: SocketAddr) -> Result<orch_api::auth::AuthConfig, StartError> {
    let keys = cfg
        .key_ring()
        .map_err(|e| StartError::Auth(e.to_string()))?;
    check_open_address(&keys, addr).map_err(|e| StartError::Auth(e.to_string()))?;
    if keys.is_empty() {
        tracing::warn!(%addr, "no API keys configured: every request acts as an admin of tenant `anonymous` (loopback only)");
    } else {
        tracing::info!(keys = keys.len(), tenants = ?keys.tenants(), "API keys loaded");
    }
    Ok(orch_api::auth::AuthConfig {
        keys,
        metrics_admin_only: cfg.auth.metrics_admin_only(),
    })
}

async fn start_pool(
    orch: &Orchestrator,
    manager: &PoolManager,
    p: &PoolConfig,
) -> Result<(), StartError> {
    let launcher = crate::engines::launcher_for(p).map_err(StartError::Engine)?;
    orch.registry().create(pool_spec(p))?;
    manager
        .start_pool(&p.id, launcher, p.replicas)
        .await
        .map_err(|e| StartError::Engine(format!("pool {}: {e}", p.id)))
}

/// Open the account store under the state directory and keep keys, usage and budgets
/// there. In cluster mode usage goes through the cluster's shared stream (every
/// instance's store counts every instance's tasks) and keys are shared through the
/// cluster (`cluster::join`).
async fn open_accounts(
    orch: &Orchestrator,
    cfg: &Config,
    addr: SocketAddr,
) -> Result<(), StartError> {
    let dir = crate::settings::state_dir(cfg);
    let store =
        orch_store::SqliteStore::open(&dir).map_err(|e| StartError::Accounts(e.to_string()))?;
    tracing::info!(path = %store.path().display(), "account store open (API keys, usage ledger)");
    #[allow(unused_mut)]
    let mut store: std::sync::Arc<dyn orch_services::accounts::AccountStore> =
        std::sync::Arc::new(store);
    #[cfg(feature = "cluster")]
    if let Some(c) = &cfg.cluster {
        store = crate::cluster::shared_ledger(c, addr, store)
            .await
            .map_err(StartError::Cluster)?;
    }
    #[cfg(not(feature = "cluster"))]
    let _ = addr;
    let accounts =
        orch_services::Accounts::open(store).map_err(|e| StartError::Accounts(e.to_string()))?;
    orch_services::metrics::ledger_zero();
    orch.set_accounts(accounts)
        .map_err(|e| StartError::Accounts(e.message))
}

/// What goes before this instance's replica ids: nothing standalone; in cluster mode
/// its instance name and `:`, so replica ids are unique in the cluster.
fn replica_prefix(cfg: &Config, addr: SocketAddr) -> String {
    #[cfg(feature = "cluster")]
    if let Some(c) = &cfg.cluster {
        return orch_cluster::Node::replica_prefix(&c.instance(addr));
    }
    let _ = (cfg, addr);
    String::new()
}
