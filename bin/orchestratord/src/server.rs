//! Wiring: config → services → pools → router → listener, and graceful shutdown.

use crate::config::{Config, EngineChoice, PoolConfig};
use adapter_api::WorkerAdapter;
use adapter_mock::MockEngine;
use orch_api::{AppState, MetricsRender};
use orch_services::{Orchestrator, PoolError, PoolSpec, ServiceConfig};
use orchestrator_core::QueueConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("pool {0}: engine {1} is not available in this build")]
    Engine(String, String),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub orch: Orchestrator,
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
    }
}

pub fn service_config(cfg: &Config) -> ServiceConfig {
    let s = &cfg.server;
    ServiceConfig {
        stream_grace: Duration::from_millis(s.stream_grace_ms),
        record_ttl: Duration::from_millis(s.record_ttl_ms),
        session_ttl: Duration::from_millis(s.session_ttl_ms),
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
        retries_before_first_token: p.retries_before_first_token,
    }
}

async fn start_pool(orch: &Orchestrator, p: &PoolConfig) -> Result<(), StartError> {
    orch.create_pool(pool_spec(p))?;
    match p.engine {
        EngineChoice::Mock => {
            let mc = p.mock.clone().unwrap_or_default();
            for i in 0..p.replicas {
                let adapter: Arc<dyn WorkerAdapter> = Arc::new(MockEngine::new(mc.clone()));
                orch.attach_replica(&p.id, &format!("{}-r{i}", p.id), adapter)
                    .await?;
            }
            Ok(())
        }
        EngineChoice::Llamacpp => Err(StartError::Engine(p.id.clone(), "llamacpp".into())),
    }
}

/// Build everything from `cfg` and serve on `listener`.
pub async fn start(
    cfg: Config,
    listener: TcpListener,
    metrics: Option<MetricsRender>,
) -> Result<Server, StartError> {
    let orch = Orchestrator::new(service_config(&cfg));
    for p in &cfg.pools {
        start_pool(&orch, p).await?;
    }
    let state = AppState {
        orch: orch.clone(),
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
        if let Err(e) = axum::serve(listener, app)
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
        shutdown_tx,
        handle,
        shutdown_grace: Duration::from_millis(cfg.server.shutdown_grace_ms),
    })
}
