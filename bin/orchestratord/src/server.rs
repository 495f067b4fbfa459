//! Wiring: config → services → pools → router → listener, and graceful shutdown.

use crate::config::{Config, PoolConfig};
use axum::serve::ListenerExt;
use orch_api::{AppState, MetricsRender};
use orch_services::{
    ManagerConfig, Orchestrator, PoolError, PoolManager, PoolSpec, Retention, ServiceConfig,
};
use orchestrator_core::QueueConfig;
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
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub orch: Orchestrator,
    pub manager: PoolManager,
    shutdown_tx: watch::Sender<bool>,
    handle: JoinHandle<()>,
    shutdown_grace: Duration,
}

impl Server {
    /// Graceful stop: refuse new work (503), let running tasks finish within the
    /// configured grace, end what is left with a retriable error, then close.
    pub async fn shutdown(self) {
        self.orch.begin_shutdown();
        let aborted = self.orch.drain_all(self.shutdown_grace).await;
        if aborted > 0 {
            tracing::warn!(aborted, "shutdown grace elapsed; ended remaining tasks");
        }
        let _ = self.shutdown_tx.send(true);
        let _ = self.handle.await;
        self.manager.stop_all().await;
    }
}

pub fn service_config(cfg: &Config) -> ServiceConfig {
    let s = &cfg.server;
    ServiceConfig {
        stream_grace: Duration::from_millis(s.stream_grace_ms),
        record_ttl: Duration::from_millis(s.record_ttl_ms),
        retention: Retention {
            max_frames_records: s.retained_tasks_max,
            max_frames_bytes: s.retained_bytes_max,
            max_summaries: s.summaries_max,
            summary_ttl: Duration::from_millis(s.summary_ttl_ms),
        },
        session_ttl: Duration::from_millis(s.session_ttl_ms),
        max_sessions: s.sessions_max,
        session_token_budget: s.session_token_budget,
        ..ServiceConfig::default()
    }
}

pub fn pool_spec(p: &PoolConfig) -> PoolSpec {
    PoolSpec {
        id: p.id.clone(),
        model: p.model.clone(),
        queue: QueueConfig {
            capacity: p.queue_capacity,
            policy: p.queue_policy,
            interactive_weight: p.interactive_weight,
        },
        max_tokens_out: p.max_tokens_out,
        sampler_profile_version: p.sampler_profile_version.clone(),
        first_token_timeout: Duration::from_millis(p.first_token_timeout_ms),
        idle_timeout: Duration::from_millis(p.idle_timeout_ms),
        decode_timeout: Duration::from_millis(p.decode_timeout_ms),
        queue_wait_limit: Duration::from_millis(p.queue_wait_limit_ms),
        retries_before_first_token: p.retries_before_first_token,
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
    let orch = Orchestrator::new(service_config(&cfg));
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
        for p in &cfg.pools {
            if let Err(e) = crate::selftest::self_test_pool(&orch, &p.id, metrics.as_ref()).await {
                manager.stop_all().await;
                return Err(StartError::SelfTest(e));
            }
        }
    }
    orch.set_self_tests_passed(true);
    let state = AppState {
        orch: orch.clone(),
        manager: Some(manager.clone()),
        metrics,
        keepalive: Duration::from_millis(cfg.server.keepalive_ms.max(10)),
        body_limit: cfg.server.body_limit_bytes,
    };
    let app = orch_api::router(state);
    let addr = listener.local_addr()?;
    let (shutdown_tx, mut rx) = watch::channel(false);
    let handle = tokio::spawn(async move {
        let stop = async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        // no Nagle: SSE frames are small writes that must not wait for a delayed ACK
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(error = %e, "could not set TCP_NODELAY");
            }
        });
        // into_make_service turns the routes into services once; serving the Router
        // itself re-runs that conversion for every connection (about 13 KiB each,
        // kept for the connection's life: found with massif on 2,000 open streams)
        if let Err(e) = axum::serve(listener, app.into_make_service())
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "server error");
        }
    });
    tracing::info!(%addr, pools = cfg.pools.len(), "orchestratord listening");
    Ok(Server {
        addr,
        orch,
        manager,
        shutdown_tx,
        handle,
        shutdown_grace: Duration::from_millis(cfg.server.shutdown_grace_ms),
    })
}

async fn start_pool(
    orch: &Orchestrator,
    manager: &PoolManager,
    p: &PoolConfig,
) -> Result<(), StartError> {
    let launcher = crate::engines::launcher_for(p).map_err(StartError::Engine)?;
    orch.create_pool(pool_spec(p))?;
    manager
        .start_pool(&p.id, launcher, p.replicas)
        .await
        .map_err(|e| StartError::Engine(format!("pool {}: {e}", p.id)))
}
