//! The pool manager: starts each pool's replicas through a [`ReplicaLauncher`], waits
//! until they are ready, health-checks them, restarts crashed ones with backoff, and
//! performs reloads (start new replicas, switch when ready, drain and stop the old;
//! roll back when the new ones fail). Engine-agnostic: launchers come from adapters.

use crate::registry::{PoolRegistry, ReplicaOrigin};
use adapter_api::{Health, LaunchOverrides, ReplicaLauncher, ReplicaProcess, WorkerAdapter};
use orch_domain::control::ReloadResponse;
use orch_domain::{ErrorCode, OrchError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod runtime;

#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub health_interval: Duration,
    /// Longest a replica may take from launch to ready.
    pub load_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Consecutive failed health checks before a replica is marked unready.
    pub unhealthy_after: u32,
    /// A health check not answered within this fails.
    pub health_timeout: Duration,
    /// Consecutive failed health checks before a replica that is still running (hung,
    /// stopped, wedged) is killed and restarted.
    pub restart_unresponsive_after: u32,
    /// Put before every replica id this manager makes (cluster mode: the instance's
    /// name and `:`, so replica ids are unique in the cluster).
    pub replica_prefix: String,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            health_interval: Duration::from_millis(500),
            load_timeout: Duration::from_secs(120),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            unhealthy_after: 2,
            health_timeout: Duration::from_secs(1),
            restart_unresponsive_after: 5,
            replica_prefix: String::new(),
        }
    }
}

struct Supervisor {
    replica_id: String,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

struct Managed {
    launcher: Arc<dyn ReplicaLauncher>,
    replicas: u32,
    generation: u64,
    supervisors: Vec<Supervisor>,
    /// Replicas added at runtime by URL (`<pool>-x<N>`).
    remotes: Vec<Supervisor>,
    next_remote: u32,
    overrides: LaunchOverrides,
    reloading: bool,
}

/// Builds the launcher of one replica reached by URL, for a pool (engine-specific, so
/// the binary provides it): `(pool_id, url)`.
pub type RemoteFactory =
    Arc<dyn Fn(&str, &str) -> Result<Arc<dyn ReplicaLauncher>, String> + Send + Sync>;

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct PoolManager {
    pools: PoolRegistry,
    cfg: ManagerConfig,
    managed: Arc<Mutex<HashMap<String, Managed>>>,
    remote: Arc<Mutex<Option<RemoteFactory>>>,
}

/// The id of replica `k` of a pool's `generation` (0 = as started), after `prefix`.
fn replica_id(prefix: &str, pool_id: &str, generation: u64, k: u32) -> String {
    if generation == 0 {
        format!("{prefix}{pool_id}-r{k}")
    } else {
        format!("{prefix}{pool_id}-g{generation}-r{k}")
    }
}

/// The `k` of a replica id made by [`replica_id`].
fn index_of(id: &str) -> Option<u32> {
    id.rsplit_once("-r").and_then(|(_, k)| k.parse().ok())
}

type Ready = oneshot::Sender<Result<(), String>>;

impl PoolManager {
    pub fn new(pools: PoolRegistry, cfg: ManagerConfig) -> Self {
        Self {
            pools,
            cfg,
            managed: Arc::new(Mutex::new(HashMap::new())),
            remote: Arc::new(Mutex::new(None)),
        }
    }

    /// How replicas added by URL at runtime get their launcher.
    pub fn set_remote_factory(&self, f: RemoteFactory) {
        *self.remote.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Managed>> {
        self.managed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start `replicas` replicas of an existing (created) pool and wait until all are
    /// ready. Any failure stops what was started and is returned, naming the replica.
    pub async fn start_pool(
        &self,
        pool_id: &str,
        launcher: Arc<dyn ReplicaLauncher>,
        replicas: u32,
    ) -> Result<(), String> {
        let ids: Vec<String> = (0..replicas)
            .map(|i| replica_id(&self.cfg.replica_prefix, pool_id, 0, i))
            .collect();
        let overrides = LaunchOverrides::default();
        let (sups, waits) = self.spawn_all(pool_id, &launcher, &ids, &overrides, false);
        self.lock().insert(
            pool_id.to_string(),
            Managed {
                launcher,
                replicas,
                generation: 0,
                supervisors: sups,
                remotes: Vec::new(),
                next_remote: 0,
                overrides,
                reloading: false,
            },
        );
        if let Err(e) = wait_all(waits).await {
            self.stop_pool(pool_id).await;
            return Err(e);
        }
        Ok(())
    }

    fn spawn_all(
        &self,
        pool_id: &str,
        launcher: &Arc<dyn ReplicaLauncher>,
        ids: &[String],
        overrides: &LaunchOverrides,
        staged: bool,
    ) -> (Vec<Supervisor>, Vec<oneshot::Receiver<Result<(), String>>>) {
        let mut sups = Vec::new();
        let mut waits = Vec::new();
        for id in ids {
            let (tx, rx) = oneshot::channel();
            let stop = CancellationToken::new();
            let done = tokio::spawn(supervise(Job {
                pools: self.pools.clone(),
                cfg: self.cfg.clone(),
                pool_id: pool_id.to_string(),
                replica_id: id.clone(),
                launcher: launcher.clone(),
                overrides: overrides.clone(),
                stop: stop.clone(),
                staged,
                ready: Some(tx),
            }));
            sups.push(Supervisor {
                replica_id: id.clone(),
                stop,
                done,
            });
            waits.push(rx);
        }
        (sups, waits)
    }

    /// Stop every replica of a pool.
    pub async fn stop_pool(&self, pool_id: &str) {
        let sups = match self.lock().get_mut(pool_id) {
            Some(m) => {
                let mut all = std::mem::take(&mut m.supervisors);
                all.append(&mut m.remotes);
                all
            }
            None => return,
        };
        stop_all(sups).await;
    }

    /// Reload a pool onto `model_path` (None = same model) and `sampler`.
    pub async fn reload(
        &self,
        pool_id: &str,
        model_path: Option<String>,
        sampler: &str,
    ) -> Result<ReloadResponse, OrchError> {
        let conflict = |m: String| OrchError::new(ErrorCode::Conflict, m).with_pool(pool_id);
        let (launcher, ids, overrides) = {
            let mut pools = self.lock();
            let m = pools
                .get_mut(pool_id)
                .ok_or_else(|| OrchError::not_found("pool", pool_id))?;
            if m.reloading {
                crate::metrics::reload(pool_id, "refused");
                return Err(conflict(format!("pool {pool_id} is already reloading")));
            }
            m.reloading = true;
            m.generation += 1;
            let ids: Vec<String> = (0..m.replicas)
                .map(|i| replica_id(&self.cfg.replica_prefix, pool_id, m.generation, i))
                .collect();
            let overrides = LaunchOverrides {
                model_path: model_path.or_else(|| m.overrides.model_path.clone()),
            };
            (m.launcher.clone(), ids, overrides)
        };
        let (new_sups, waits) = self.spawn_all(pool_id, &launcher, &ids, &overrides, true);
        if let Err(e) = wait_all(waits).await {
            stop_all(new_sups).await;
            if let Some(m) = self.lock().get_mut(pool_id) {
                m.reloading = false;
            }
            crate::metrics::reload(pool_id, "rolled_back");
            tracing::warn!(pool_id, error = %e, "reload failed: rolled back, old replicas keep serving");
            return Err(conflict(format!("reload rolled back: {e}")));
        }
        let pinned = match self.pools.switch(pool_id, &ids, sampler).await {
            Ok(p) => p,
            Err(e) => {
                stop_all(new_sups).await;
                if let Some(m) = self.lock().get_mut(pool_id) {
                    m.reloading = false;
                }
                crate::metrics::reload(pool_id, "rolled_back");
                return Err(e);
            }
        };
        let old = {
            let mut pools = self.lock();
            match pools.get_mut(pool_id) {
                Some(m) => {
                    m.overrides = overrides;
                    m.reloading = false;
                    std::mem::replace(&mut m.supervisors, new_sups)
                }
                None => new_sups,
            }
        };
        // the old replicas take no new work; stop them once their last task is done
        // (waited on the pool's published slot counts, not polled)
        let pools = self.pools.clone();
        let pid = pool_id.to_string();
        tokio::spawn(async move {
            let ids: Vec<String> = old.iter().map(|s| s.replica_id.clone()).collect();
            pools
                .wait_replicas_idle(&pid, &ids, OLD_REPLICAS_MAX_WAIT)
                .await;
            stop_all(old).await;
        });
        crate::metrics::reload(pool_id, "switched");
        tracing::info!(pool_id, model_digest = %pinned.model_digest, sampler, "reload switched");
        Ok(ReloadResponse {
            pool_id: pool_id.to_string(),
            model_digest: pinned.model_digest.clone(),
            engine_version: pinned.engine_version.clone(),
            sampler_profile_version: pinned.sampler_profile_version.clone(),
            replicas: ids,
        })
    }
}

async fn wait_all(waits: Vec<oneshot::Receiver<Result<(), String>>>) -> Result<(), String> {
    let mut first_err = None;
    for w in waits {
        let r = w.await.unwrap_or_else(|_| Err("supervisor ended".into()));
        if let (Err(e), None) = (r, &first_err) {
            first_err = Some(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

async fn stop_all(sups: Vec<Supervisor>) {
    for s in &sups {
        s.stop.cancel();
    }
    for s in sups {
        let _ = s.done.await;
    }
}

/// Longest the old replicas of a reload keep running for their last tasks (a task's
/// own watchdogs end it well before this).
const OLD_REPLICAS_MAX_WAIT: Duration = Duration::from_secs(3600);

struct Job {
    pools: PoolRegistry,
    cfg: ManagerConfig,
    pool_id: String,
    replica_id: String,
    launcher: Arc<dyn ReplicaLauncher>,
    overrides: LaunchOverrides,
    stop: CancellationToken,
    staged: bool,
    /// Told once: the first launch became ready, or why not (then the job ends).
    ready: Option<Ready>,
}

impl Job {
    fn report(&mut self, r: Result<(), String>) {
        if let Some(tx) = self.ready.take() {
            let _ = tx.send(r);
        }
    }

    /// Launch and wait until healthy; `Err` carries a readable reason.
    async fn bring_up(&self) -> Result<Box<dyn ReplicaProcess>, String> {
        let proc = self
            .launcher
            .launch(&self.replica_id, &self.overrides)
            .await
            .map_err(|e| format!("replica {}: {e}", self.replica_id))?;
        let adapter = proc.adapter();
        let deadline = Instant::now() + self.cfg.load_timeout;
        loop {
            tokio::select! {
                why = proc.exited() => return Err(format!("replica {} exited while loading: {why}", self.replica_id)),
                _ = self.stop.cancelled() => { proc.stop().await; return Err("stopped".into()) }
                h = tokio::time::timeout(self.cfg.health_timeout, adapter.health()) => {
                    if let Ok(Ok(Health::Ready)) = h { break }
                }
            }
            if Instant::now() >= deadline {
                proc.stop().await;
                return Err(format!(
                    "replica {} not ready within {:?}",
                    self.replica_id, self.cfg.load_timeout
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let staged = self.staged;
        let origin = ReplicaOrigin {
            endpoint: Some(proc.endpoint()),
            pid: proc.pid(),
        };
        if let Err(e) = self
            .pools
            .attach(&self.pool_id, &self.replica_id, adapter, origin, staged)
            .await
        {
            proc.stop().await;
            return Err(e.to_string());
        }
        Ok(proc)
    }

    /// Health-check until the process exits, stops answering, or the job is stopped.
    async fn watch(&self, proc: &dyn ReplicaProcess, adapter: Arc<dyn WorkerAdapter>) -> Watched {
        let mut fails = 0u32;
        loop {
            tokio::select! {
                why = proc.exited() => return Watched::Exited(why),
                _ = self.stop.cancelled() => return Watched::Stopped,
                _ = tokio::time::sleep(self.cfg.health_interval) => {}
            }
            let h = tokio::time::timeout(self.cfg.health_timeout, adapter.health()).await;
            let ok = matches!(h, Ok(Ok(Health::Ready)));
            if ok {
                if fails >= self.cfg.unhealthy_after {
                    self.pools
                        .set_ready(&self.pool_id, &self.replica_id, true, None);
                }
                fails = 0;
            } else {
                fails += 1;
                if fails == self.cfg.unhealthy_after {
                    let e = format!("replica {} failed {fails} health checks", self.replica_id);
                    tracing::warn!(pool_id = %self.pool_id, replica_id = %self.replica_id, "{e}");
                    self.pools
                        .set_ready(&self.pool_id, &self.replica_id, false, Some(e));
                }
                if fails >= self.cfg.restart_unresponsive_after {
                    let h = self.cfg.health_interval * fails;
                    return Watched::Unresponsive(format!(
                        "replica {} answered no health check for {h:?} ({fails} in a row)",
                        self.replica_id
                    ));
                }
            }
        }
    }
}

/// How watching a running replica ended.
enum Watched {
    /// The process exited, for this reason.
    Exited(String),
    /// The process runs but answers nothing: it is killed and restarted.
    Unresponsive(String),
    /// The job was stopped.
    Stopped,
}

async fn supervise(mut job: Job) {
    let mut backoff = job.cfg.backoff_initial;
    loop {
        if job.stop.is_cancelled() {
            break;
        }
        let proc = match job.bring_up().await {
            Ok(p) => p,
            Err(e) => {
                if job.ready.is_some() {
                    job.report(Err(e));
                    break;
                }
                tracing::warn!(pool_id = %job.pool_id, replica_id = %job.replica_id, error = %e,
                    backoff_ms = backoff.as_millis() as u64, "restart failed; retrying");
                crate::metrics::replica_restart(&job.pool_id, &job.replica_id, "restart_failed");
                job.pools
                    .set_ready(&job.pool_id, &job.replica_id, false, Some(e));
                tokio::select! {
                    _ = job.stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(job.cfg.backoff_max);
                continue;
            }
        };
        job.report(Ok(()));
        // a restart re-joins the pool as a serving replica (a staged one was switched in
        // or, on rollback, its job was stopped)
        job.staged = false;
        backoff = job.cfg.backoff_initial;
        let adapter = proc.adapter();
        let why = match job.watch(proc.as_ref(), adapter).await {
            Watched::Stopped => {
                proc.stop().await;
                break;
            }
            Watched::Exited(why) => {
                tracing::error!(pool_id = %job.pool_id, replica_id = %job.replica_id, reason = %why,
                    "replica died; restarting");
                crate::metrics::replica_restart(&job.pool_id, &job.replica_id, "exited");
                why
            }
            Watched::Unresponsive(why) => {
                tracing::error!(pool_id = %job.pool_id, replica_id = %job.replica_id, reason = %why,
                    "replica unresponsive; killing and restarting it");
                crate::metrics::replica_restart(&job.pool_id, &job.replica_id, "unresponsive");
                proc.stop().await;
                why
            }
        };
        job.pools
            .set_ready(&job.pool_id, &job.replica_id, false, Some(why));
        tokio::select! {
            _ = job.stop.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
    }
    job.pools.detach(&job.pool_id, &job.replica_id);
}

impl PoolManager {
    /// Resolve a reload request: the pool's model name or current digest keeps the
    /// model (e.g. a new sampler profile); anything else is asked of the pool's
    /// launcher (llama.cpp: a `.gguf` path); what it cannot load is a 409 with nothing
    /// changed.
    pub async fn reload_ref(
        &self,
        pool_id: &str,
        req: &orch_domain::control::ReloadRequest,
    ) -> Result<ReloadResponse, OrchError> {
        let snap = self
            .pools
            .get(pool_id)
            .ok_or_else(|| OrchError::not_found("pool", pool_id))?
            .snapshot();
        if req.model_ref.trim().is_empty() {
            return Err(OrchError::invalid("model_ref", "must not be empty"));
        }
        if orch_domain::task::longer_than(&req.model_ref, 1024) {
            return Err(OrchError::invalid(
                "model_ref",
                "must be at most 1024 characters",
            ));
        }
        let sampler = req
            .sampler_profile_version
            .clone()
            .unwrap_or_else(|| snap.spec.sampler_profile_version.clone());
        if sampler.is_empty() || orch_domain::task::longer_than(&sampler, 64) {
            return Err(OrchError::invalid(
                "sampler_profile_version",
                "must be 1..=64 characters",
            ));
        }
        let digest = snap.pinned.as_ref().map(|p| p.model_digest.as_str());
        let same = req.model_ref == snap.spec.model || Some(req.model_ref.as_str()) == digest;
        let path = if same {
            None
        } else {
            let launcher = self.lock().get(pool_id).map(|m| m.launcher.clone());
            match launcher.and_then(|l| l.model_overrides(&req.model_ref)) {
                Some(o) => o.model_path,
                None => {
                    crate::metrics::reload(pool_id, "refused");
                    return Err(OrchError::new(
                        ErrorCode::Conflict,
                        format!(
                            "reload rolled back: {} is neither the pool's model nor a model file under its models directory",
                            req.model_ref
                        ),
                    )
                    .with_pool(pool_id));
                }
            }
        };
        // run to completion even if the caller goes away: a half-done reload would
        // leave staged replicas running and the pool marked as reloading
        let this = self.clone();
        let pid = pool_id.to_string();
        tokio::spawn(async move { this.reload(&pid, path, &sampler).await })
            .await
            .map_err(|e| OrchError::internal(format!("reload task failed: {e}")))?
    }
}
