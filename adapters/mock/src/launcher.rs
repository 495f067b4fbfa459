//! A [`ReplicaLauncher`] for mock pools, so the pool manager (start, restart, reload)
//! runs the same code paths with the mock as with real engines.

use crate::{MockConfig, MockEngine};
use adapter_api::{
    BoxFuture, LaunchError, LaunchOverrides, ReplicaLauncher, ReplicaProcess, WorkerAdapter,
};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

pub struct MockLauncher {
    cfg: MockConfig,
    launched: Mutex<Vec<(String, watch::Sender<Option<String>>)>>,
}

impl MockLauncher {
    pub fn new(cfg: MockConfig) -> Self {
        Self {
            cfg,
            launched: Mutex::new(Vec::new()),
        }
    }

    /// Simulate a crash of the named replica's latest process.
    pub fn crash(&self, replica_id: &str) -> bool {
        let g = self.launched.lock().unwrap_or_else(|p| p.into_inner());
        match g.iter().rev().find(|(id, _)| id == replica_id) {
            Some((_, tx)) => tx.send(Some("mock: simulated crash".into())).is_ok(),
            None => false,
        }
    }
}

struct MockProcess {
    engine: Arc<MockEngine>,
    exit: watch::Receiver<Option<String>>,
    stop: watch::Sender<Option<String>>,
}

impl ReplicaProcess for MockProcess {
    fn adapter(&self) -> Arc<dyn WorkerAdapter> {
        self.engine.clone()
    }
    fn exited(&self) -> BoxFuture<'_, String> {
        let mut rx = self.exit.clone();
        Box::pin(async move {
            match rx.wait_for(Option::is_some).await {
                Ok(v) => v.clone().unwrap_or_default(),
                Err(_) => "mock: gone".into(),
            }
        })
    }
    fn stop(&self) -> BoxFuture<'_, ()> {
        let _ = self.stop.send(Some("stopped by orchestratord".into()));
        Box::pin(async {})
    }
    fn endpoint(&self) -> String {
        "in-process://mock".into()
    }
}

impl ReplicaLauncher for MockLauncher {
    /// A path (absolute or `.gguf`) stands for a model file, as with real engines.
    fn model_overrides(&self, model_ref: &str) -> Option<LaunchOverrides> {
        (model_ref.starts_with('/') || model_ref.ends_with(".gguf")).then(|| LaunchOverrides {
            model_path: Some(model_ref.to_string()),
        })
    }

    fn launch(
        &self,
        replica_id: &str,
        overrides: &LaunchOverrides,
    ) -> BoxFuture<'_, Result<Box<dyn ReplicaProcess>, LaunchError>> {
        let mut cfg = self.cfg.clone();
        let res = match &overrides.model_path {
            Some(p) if !std::path::Path::new(p).is_file() => {
                Err(LaunchError::MissingModel(p.clone()))
            }
            Some(p) => {
                cfg.model = std::path::Path::new(p)
                    .file_name()
                    .map_or_else(|| p.clone(), |n| n.to_string_lossy().to_string());
                Ok(())
            }
            None => Ok(()),
        };
        if cfg
            .faults_only_on
            .as_ref()
            .is_some_and(|only| !only.iter().any(|r| r == replica_id))
        {
            cfg.fail_before_first_token = false;
            cfg.fail_after_tokens = None;
            cfg.stall_after_tokens = None;
            cfg.crash_after_ms = None;
            cfg.hang_after_ms = None;
        }
        let replica_id = replica_id.to_string();
        Box::pin(async move {
            res?;
            let (tx, rx) = watch::channel(None);
            let first_launch = {
                let mut g = self.launched.lock().unwrap_or_else(|p| p.into_inner());
                let first = !g.iter().any(|(id, _)| *id == replica_id);
                g.push((replica_id, tx.clone()));
                first
            };
            let crash = cfg.crash_after_ms;
            let hang = cfg.hang_after_ms.filter(|_| first_launch);
            let engine = Arc::new(MockEngine::new(cfg));
            if let Some(ms) = crash {
                let (engine, tx) = (engine.clone(), tx.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    engine.die();
                    let _ = tx.send(Some(format!("mock: crashed {ms} ms after launch")));
                });
            }
            if let Some(ms) = hang {
                let engine = engine.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    engine.hang();
                });
            }
            Ok(Box::new(MockProcess {
                engine,
                exit: rx,
                stop: tx,
            }) as Box<dyn ReplicaProcess>)
        })
    }
}
