//! Replicas of an OpenAI-compatible pool are servers someone else runs: "launching"
//! one builds its adapter for the URL of that replica (replica `<pool>-r<N>` gets the
//! N-th URL); it never exits on its own, health checks mark it unready instead.

use crate::{OpenAiAdapter, OpenAiConfig};
use adapter_api::{
    BoxFuture, LaunchError, LaunchOverrides, ReplicaLauncher, ReplicaProcess, WorkerAdapter,
};
use std::sync::Arc;
use tokio::sync::watch;

/// One pool's replicas: one URL each.
pub struct OpenAiLauncher {
    /// Settings shared by every replica; `base_url` is replaced per replica.
    pub template: OpenAiConfig,
    pub urls: Vec<String>,
}

pub struct OpenAiReplica {
    adapter: Arc<OpenAiAdapter>,
    stop: watch::Sender<bool>,
}

impl ReplicaProcess for OpenAiReplica {
    fn adapter(&self) -> Arc<dyn WorkerAdapter> {
        self.adapter.clone()
    }
    fn exited(&self) -> BoxFuture<'_, String> {
        let mut rx = self.stop.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(|s| *s).await;
            "detached".to_string()
        })
    }
    fn stop(&self) -> BoxFuture<'_, ()> {
        let _ = self.stop.send(true);
        Box::pin(async {})
    }
    fn endpoint(&self) -> String {
        self.adapter.base_url().to_string()
    }
}

/// The replica number at the end of an id like `pool-r3` (or `pool-g1-r3`).
fn index_of(replica_id: &str) -> usize {
    replica_id
        .rsplit_once("-r")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0)
}

impl ReplicaLauncher for OpenAiLauncher {
    fn launch(
        &self,
        replica_id: &str,
        _overrides: &LaunchOverrides,
    ) -> BoxFuture<'_, Result<Box<dyn ReplicaProcess>, LaunchError>> {
        let i = index_of(replica_id);
        Box::pin(async move {
            if self.urls.is_empty() {
                return Err(LaunchError::Spawn("no upstream URL configured".into()));
            }
            let mut cfg = self.template.clone();
            cfg.base_url = self.urls[i % self.urls.len()]
                .trim_end_matches('/')
                .to_string();
            let adapter = OpenAiAdapter::new(cfg).map_err(|e| LaunchError::Spawn(e.to_string()))?;
            let (stop, _) = watch::channel(false);
            Ok(Box::new(OpenAiReplica {
                adapter: Arc::new(adapter),
                stop,
            }) as Box<dyn ReplicaProcess>)
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn replica_ids_pick_their_url() {
        assert_eq!(super::index_of("up-r0"), 0);
        assert_eq!(super::index_of("up-r2"), 2);
        assert_eq!(super::index_of("up-g1-r1"), 1);
        assert_eq!(super::index_of("weird"), 0);
    }
}
