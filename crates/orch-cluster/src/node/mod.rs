//! One orchestratord instance in a cluster: the [`TaskHome`] the services hold
//! (admission stores tasks in their pool's queue; records follow stored frames; status
//! and cancel through the task-state bucket) and, for every pool, a bid to lead it
//! ([`leader`]): the leader runs the pool's queued tasks on this instance's replicas
//! (through [`LocalPools`]) and stores their frames.
//!
//! Owns: the instance's JetStream handles and its leadership loops. Never: HTTP, or
//! a reference to the services' core (the core holds the node; the node holds only
//! the pools' handle).

mod follow;
mod health;
mod hints;
mod leader;
mod quota;

mod withdraw;

use crate::wire::{ClusterStatus, ReplicatedTask};
use crate::{
    Cluster, ClusterConfig, ClusterError, FrameLog, Leases, PublishError, TaskQueue, TaskStates,
};
use futures_util::future::BoxFuture;
use orch_domain::{ErrorCode, OrchError, PolicyLabel, TaskId, TaskRequest, TaskStatus};
use orch_services::home::Placed;
use orch_services::{Admitted, CancelReason, LocalPools, TaskHome, TaskRecord};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// What an instance needs to join a cluster.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub cluster: ClusterConfig,
    /// This instance's name (unique in the cluster; holds leases under it).
    pub instance: String,
    /// A pool leader that stops renewing loses its pool after this long.
    pub lease_ttl: Duration,
    /// How long frames and statuses are kept.
    pub keep: Duration,
    /// Pools this instance bids for first (the others one lease TTL later at start).
    pub prefer_pools: Vec<String>,
    /// How long a submission keeps trying to store its task while the cluster does
    /// not answer (a stream electing a new leader after a server's loss takes seconds)
    /// before it is refused with 503.
    pub store_retry: Duration,
    /// This instance's replicas serve every pool's leader (true), or only the pools
    /// this instance leads (a standby).
    pub host_replicas: bool,
}

/// A pool as the cluster stores it: its id and how many tasks its queue holds (its
/// queue capacity plus its slots: a task stays in the queue until it ends).
#[derive(Debug, Clone)]
pub struct PoolQueue {
    pub pool_id: String,
    pub capacity: usize,
}

/// This instance's membership in the cluster.
pub struct Node {
    pub(crate) instance: String,
    /// The name this process holds leases under: the instance and a nonce of this
    /// process, so a renewal adopting a stored revision (see `lease`) can only ever
    /// adopt its own, even if two processes were given one instance name.
    pub(crate) holder: String,
    pub(crate) pools: LocalPools,
    pub(crate) queues: HashMap<String, TaskQueue>,
    pub(crate) frames: FrameLog,
    pub(crate) states: TaskStates,
    pub(crate) hints: hints::Hints,
    pub(crate) health: health::Health,
    pub(crate) client: async_nats::Client,
    js: async_nats::jetstream::Context,
    pub(crate) store_retry: Duration,
    /// One JetStream request not answered within this has failed.
    request_timeout: Duration,
    pub(crate) lease_ttl: Duration,
    withdrawals: withdraw::Withdrawals,
    /// The runs this instance hosts for pool leaders.
    pub(crate) hosted: crate::hosted::host::Host,
    /// Tenants' cluster-wide quota ledgers.
    pub(crate) quotas: crate::quota::Quotas,
    /// When this instance last looked for ended tasks in each tenant's ledger.
    pruned: std::sync::Mutex<HashMap<String, std::time::Instant>>,
}

/// A number that differs between processes (pid and start time).
fn process_nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}{:x}", std::process::id(), t & 0xffff_ffff_ffff)
}

/// Pause between tries of a store the cluster could not answer.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

impl Node {
    /// Connect, make (or check) every stream and bucket, and start bidding for the
    /// leadership of each pool (run on `local`, this instance's pools). The returned
    /// node is the services' task home.
    pub async fn start(
        cfg: NodeConfig,
        local: LocalPools,
        pools: Vec<PoolQueue>,
    ) -> Result<Arc<Node>, ClusterError> {
        crate::metrics::describe();
        let cluster = Cluster::connect(cfg.cluster.clone()).await?;
        let frames = cluster.frame_log(cfg.keep).await?;
        let states = cluster.task_states(cfg.keep).await?;
        let leases: Leases = cluster.leases(cfg.lease_ttl).await?;
        let quotas = cluster.quotas().await?;
        let mut queues = HashMap::new();
        for p in &pools {
            let q = cluster.task_queue(&p.pool_id, p.capacity).await?;
            queues.insert(p.pool_id.clone(), q);
        }
        let withdrawals = withdraw::Withdrawals::start(states.clone());
        let node = Arc::new(Node {
            instance: cfg.instance.clone(),
            holder: format!("{}#{}", cfg.instance, process_nonce()),
            pools: local,
            queues,
            frames,
            states,
            hints: hints::Hints::start(cluster.js.client()).await?,
            health: health::Health::start(
                &cluster,
                &cfg.instance,
                pools.iter().map(|p| &p.pool_id),
                cfg.store_retry,
            )
            .await?,
            client: cluster.js.client(),
            js: cluster.js.clone(),
            lease_ttl: cfg.lease_ttl,
            store_retry: cfg.store_retry,
            request_timeout: cfg.cluster.request_timeout,
            withdrawals,
            hosted: crate::hosted::host::Host::default(),
            quotas,
            pruned: std::sync::Mutex::default(),
        });
        health::spawn(Arc::downgrade(&node));
        if cfg.host_replicas {
            // this instance's replicas serve every pool's leader, wherever it is
            let prefix = Node::replica_prefix(&cfg.instance);
            crate::hosted::host::serve(
                node.client.clone(),
                node.pools.clone(),
                &cfg.instance,
                prefix.clone(),
                node.hosted.clone(),
            )
            .await?;
            crate::hosted::host::advertise(
                node.client.clone(),
                node.pools.clone(),
                cfg.instance.clone(),
                prefix,
            );
        }
        for p in pools {
            let preferred = cfg.prefer_pools.is_empty() || cfg.prefer_pools.contains(&p.pool_id);
            leader::spawn(node.clone(), leases.clone(), p, preferred);
        }
        tracing::info!(instance = %cfg.instance, urls = ?cfg.cluster.urls, "joined the cluster");
        Ok(node)
    }

    /// What goes before the ids of an instance's own replicas (its pool manager makes
    /// them so): the instance's name and `:`, so replica ids are unique in the
    /// cluster, and a replica's host is known from its id.
    pub fn replica_prefix(instance: &str) -> String {
        crate::hosted::replica_prefix(instance)
    }

    /// Store a task, trying again for up to `store_retry` while the cluster cannot
    /// answer (a stream electing a new leader after a server's loss answers "no
    /// responders" for seconds). Also says whether it was tried more than once.
    async fn publish(
        &self,
        queue: &TaskQueue,
        id: &str,
        payload: bytes::Bytes,
    ) -> Result<(crate::Published, bool), PublishError> {
        let t0 = tokio::time::Instant::now();
        let deadline = t0 + self.store_retry;
        let mut tries = 0;
        // whether any try went unanswered (that store may still land)
        let mut unanswered = false;
        loop {
            tries += 1;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let r = tokio::time::timeout(left, queue.publish(id, payload.clone()))
                .await
                .unwrap_or_else(|_| {
                    Err(PublishError::Unavailable {
                        pool: queue.pool().to_string(),
                        reason: "no answer within store_retry".into(),
                        maybe_stored: true,
                    })
                });
            match r {
                Ok(p) => {
                    self.health.stored();
                    crate::metrics::task_stored(queue.pool(), t0.elapsed());
                    return Ok((p, tries > 1));
                }
                Err(PublishError::Unavailable { maybe_stored, .. })
                    if tokio::time::Instant::now() + RETRY_PAUSE < deadline =>
                {
                    unanswered |= maybe_stored;
                    crate::metrics::store_failed(queue.pool(), "task");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(PublishError::Unavailable {
                    pool,
                    reason,
                    maybe_stored,
                }) => {
                    crate::metrics::store_failed(queue.pool(), "task");
                    return Err(PublishError::Unavailable {
                        pool,
                        reason,
                        maybe_stored: unanswered || maybe_stored,
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    pub(crate) fn status_json(s: &ClusterStatus) -> String {
        serde_json::to_string(s).unwrap_or_else(|_| "{}".into())
    }

    /// Record a task's status, trying again for up to `store_retry` while the cluster
    /// cannot store it (a bucket electing a leader after a server's loss): once its
    /// task leaves the queue, the status is how other instances find it. A failure
    /// after that is logged (frames stay the record of what happened).
    pub(crate) async fn set_status(&self, id: TaskId, s: &ClusterStatus) {
        let deadline = tokio::time::Instant::now() + self.store_retry;
        let (key, json) = (id.to_string(), Self::status_json(s));
        loop {
            let Err(e) = self.states.set_status(&key, &json).await else {
                // the id stays its tenant's as long as its status is kept
                if let Err(e) = self.states.renew_claim(&key, &s.tenant).await {
                    tracing::warn!(task_id = %id, error = %e, "could not renew the task id's claim");
                }
                return;
            };
            crate::metrics::store_failed(&s.pool_id, "status");
            if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
                tracing::warn!(task_id = %id, error = %e, "could not record the task's status");
                return;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Let an ended task leave its pool's queue, trying again for up to `store_retry`
    /// while the cluster does not confirm (after that it stays until the next leader
    /// settles it from its stored end).
    pub(crate) async fn leave(&self, dispatch: &crate::Dispatch, qt: &crate::QueuedTask) {
        let deadline = tokio::time::Instant::now() + self.store_retry;
        loop {
            let Err(e) = dispatch.done(qt).await else {
                return;
            };
            crate::metrics::store_failed(dispatch.pool(), "ack");
            if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
                tracing::warn!(task_id = %qt.task_id, error = %e, "the ended task could not leave the queue");
                return;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// 503 `POOL_UNAVAILABLE`, retriable (spec §3: always): the cluster cannot store or
/// answer now.
fn unavailable(what: impl std::fmt::Display) -> OrchError {
    let mut e = OrchError::new(
        ErrorCode::PoolUnavailable,
        format!("the cluster cannot serve this now: {what}"),
    )
    .with_retry_after_ms(1000);
    e.retriable = true;
    e
}

/// Bytes kept free in a stored task's NATS message for JetStream's headers.
const PUBLISH_HEADROOM: usize = 4096;

impl Node {
    /// Store a task in its pool's queue; the place the cluster expects it to take
    /// (from the leader's last queue hint; 0 when none is known). A task id stored
    /// before is not stored twice.
    async fn enqueue(&self, t: &ReplicatedTask) -> Result<Placed, OrchError> {
        let queue = self
            .queues
            .get(&t.pool_id)
            .ok_or_else(|| OrchError::not_found("pool", &t.pool_id))?;
        let payload = serde_json::to_vec(t).map_err(|e| OrchError::internal(e.to_string()))?;
        // one NATS message holds the task: a record over the servers' max_payload (less
        // room for JetStream's headers) can never be stored, so it is the client's 413,
        // not a retriable 503
        let max = self.client.server_info().max_payload;
        if max > 0 && payload.len() + PUBLISH_HEADROOM > max {
            return Err(OrchError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "this task takes {} bytes stored, over the cluster's NATS max_payload ({max} bytes); send a shorter prompt, or raise max_payload on the nats-servers",
                    payload.len()
                ),
            ));
        }
        let id = t.task_id.to_string();
        // the stored task is its record while it waits: other instances find it in
        // the queue by id; its leader records its status from its start on
        let published = self.publish(queue, &id, payload.into()).await;
        let (published, retried) = published.map_err(|e| match e {
            PublishError::Full { pool } => OrchError::new(
                ErrorCode::AdmissionReject,
                format!("queue of pool {pool} is full"),
            )
            .with_policy(PolicyLabel::Reject)
            .with_pool(pool.as_str())
            .with_retry_after_ms(1000),
            PublishError::Unavailable {
                pool,
                reason,
                maybe_stored,
            } => {
                // told "not admitted", the client may retry: a store that lands
                // later must not run. A task id the client chose (its own, or
                // from an Idempotency-Key) is not withdrawn: a retry with it is
                // that task (the same one, or 409 naming it)
                if maybe_stored && t.request.task_id.is_none() {
                    self.withdrawals.withdraw(&pool, &id);
                }
                unavailable(format!("pool {pool}: {reason}")).with_pool(pool.as_str())
            }
        })?;
        // a duplicate after a retry is this admission's own earlier store; one of an
        // idempotent submission is the same task submitted meanwhile elsewhere
        if published.duplicate && !retried && t.request.idempotency_key.is_none() {
            return Err(OrchError::new(
                ErrorCode::Conflict,
                format!("task {id} is already known to the cluster"),
            ));
        }
        Ok(self.hints.join(&t.pool_id).map_or(
            Placed {
                queue_position: 0,
                predicted_start_ms: 0,
            },
            |h| h.placed(),
        ))
    }

    /// Claim the task's id for its tenant, trying again for up to `store_retry` while
    /// the cluster cannot answer (as a store does); each failed try counts as a failed
    /// task store.
    async fn claim(&self, t: &ReplicatedTask) -> Result<crate::Claim, OrchError> {
        let deadline = tokio::time::Instant::now() + self.store_retry;
        let id = t.task_id.to_string();
        loop {
            // each try is bounded: a KV call can otherwise wait ten seconds on a bucket
            // electing a leader, where a fresh try after the election answers at once
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let per_try = left.min(self.request_timeout);
            let r = tokio::time::timeout(per_try, self.states.claim(&id, &t.tenant)).await;
            match r {
                Ok(Ok(c)) => return Ok(c),
                Ok(Err(e)) if tokio::time::Instant::now() + RETRY_PAUSE < deadline => {
                    crate::metrics::store_failed(&t.pool_id, "task");
                    tracing::debug!(task_id = %id, error = %e, "claim not answered; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Ok(Err(e)) => {
                    crate::metrics::store_failed(&t.pool_id, "task");
                    return Err(unavailable(e).with_pool(t.pool_id.as_str()));
                }
                Err(_) if tokio::time::Instant::now() + RETRY_PAUSE < deadline => {
                    crate::metrics::store_failed(&t.pool_id, "task");
                    tracing::debug!(task_id = %id, "claim not answered in time; retrying");
                }
                Err(_) => {
                    crate::metrics::store_failed(&t.pool_id, "task");
                    return Err(
                        unavailable(format!("task {id}: no answer within store_retry"))
                            .with_pool(t.pool_id.as_str()),
                    );
                }
            }
        }
    }

    /// The recorded status (from its start on), else the task as it waits in its
    /// pool's queue.
    async fn recorded(&self, id: TaskId) -> Result<Option<ClusterStatus>, OrchError> {
        let key = id.to_string();
        let raw = self.states.status(&key).await.map_err(unavailable)?;
        if let Some(s) = raw.and_then(|r| serde_json::from_str(&r).ok()) {
            return Ok(Some(s));
        }
        for q in self.queues.values() {
            let Some(payload) = q.find(&key).await.map_err(unavailable)? else {
                continue;
            };
            let Ok(t) = serde_json::from_slice::<ReplicatedTask>(&payload) else {
                continue;
            };
            return Ok(Some(ClusterStatus::queued(&t)));
        }
        Ok(None)
    }

    /// Ask the leader of `pool_id` to cancel a task (stored, so a later leader sees it).
    async fn request_cancel(&self, pool_id: &str, id: TaskId) -> Result<(), OrchError> {
        self.states
            .request_cancel(pool_id, &id.to_string())
            .await
            .map_err(unavailable)
    }
}

impl TaskHome for Node {
    /// Store the task in the pool's queue (the 202 follows a quorum's store), then
    /// follow what its leader stores into the record; the tenant's queue place is held
    /// until the task starts.
    fn place(&self, task: Admitted) -> BoxFuture<'_, Result<Placed, OrchError>> {
        Box::pin(async move {
            let (rec, req) = (task.record(), task.request());
            let t = ReplicatedTask {
                task_id: rec.id,
                tenant: rec.tenant.to_string(),
                pool_id: rec.pool_id.clone(),
                correlation_id: rec.correlation_id.clone(),
                chat: req.chat.clone(),
                prompt_tokens: req.prompt_tokens,
                request: TaskRequest::clone(req),
                admitted_ms: crate::wire::now_ms(),
            };
            if self.health.frames_full() {
                return Err(unavailable(
                    "its frame store is nine tenths full (old frames age out; see [cluster] max_frame_bytes)",
                )
                .with_pool(t.pool_id.as_str()));
            }
            // an id the client chose (its `task_id`, or one derived from an
            // Idempotency-Key) is claimed for its tenant before anything of the task is
            // stored: another tenant's id (however long ago it was used) is refused
            // and left untouched. An id this instance drew at random cannot be anyone
            // else's: it is claimed when its leader records the task's status, which
            // saves an admission a store on the cluster
            let chosen = t.request.task_id.is_some() || t.request.idempotency_key.is_some();
            if chosen {
                let claim = self.claim(&t).await?;
                // the tenant's own id is a task it submitted before, unless nothing of
                // it was stored (a retry after a 503): naming it again is 409, as
                // standalone; an id claimed just now may still name a task that drew
                // it at random and has not started (not claimed yet): 409 too
                let known = match claim {
                    crate::Claim::Other => true,
                    crate::Claim::New | crate::Claim::Own => {
                        self.recorded(t.task_id).await?.is_some()
                    }
                };
                if known {
                    if claim != crate::Claim::Own {
                        tracing::info!(task_id = %t.task_id, tenant = %t.tenant,
                            "refused: the task id belongs to another task");
                    }
                    return Err(OrchError::new(
                        ErrorCode::Conflict,
                        format!("task {} is already known to the cluster", t.task_id),
                    ));
                }
            }
            // the tenant's quotas count every instance's admissions
            let limits = quota::limits(&task.quotas());
            let tokens = u64::from(t.request.max_tokens);
            self.take_quota(&t.tenant, t.task_id, &limits, tokens)
                .await?;
            let placed = match self.enqueue(&t).await {
                Ok(p) => p,
                Err(e) => {
                    // a store that was refused gives its place back; one the cluster
                    // did not answer may still land and run: its place stays (the
                    // ledger's prune finds it if it never does)
                    if limits.any() && e.code != ErrorCode::PoolUnavailable {
                        self.quota_ended(&t.tenant, t.task_id, 0).await;
                    }
                    return Err(e);
                }
            };
            let (rec, lease) = task.into_parts();
            tokio::spawn(follow::follow(self.frames.clone(), rec, Some(lease)));
            Ok(placed)
        })
    }

    fn find(&self, id: TaskId) -> BoxFuture<'_, Result<Option<TaskStatus>, OrchError>> {
        Box::pin(async move { Ok(self.recorded(id).await?.map(|s| s.to_status(id))) })
    }

    fn follow(&self, rec: Arc<TaskRecord>) {
        tokio::spawn(follow::follow(self.frames.clone(), rec, None));
    }

    /// A client's cancel goes to the task's leader. A reader that went away does not
    /// cancel in cluster mode (a client resumes on any instance), and at shutdown the
    /// task is left to its leader.
    fn cancel<'a>(
        &'a self,
        rec: &'a Arc<TaskRecord>,
        reason: CancelReason,
    ) -> BoxFuture<'a, Result<(), OrchError>> {
        Box::pin(async move {
            match reason {
                CancelReason::Client => self.request_cancel(&rec.pool_id, rec.id).await,
                CancelReason::Abandoned | CancelReason::Shutdown | CancelReason::Drain => Ok(()),
            }
        })
    }

    fn cancel_found<'a>(&'a self, t: &'a TaskStatus) -> BoxFuture<'a, Result<(), OrchError>> {
        Box::pin(self.request_cancel(&t.pool_id, t.task_id))
    }

    /// What the pool's leader knows of the task now (within the live answer's
    /// budget; unchanged without an answer).
    fn refresh<'a>(&'a self, s: &'a mut TaskStatus) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(live) = leader::live::ask(&self.client, &s.pool_id, s.task_id).await {
                live.apply(s);
            }
        })
    }

    /// Connected, and the cluster stored a write of this instance within
    /// `store_retry` (see [`health`]).
    fn is_available(&self) -> bool {
        self.is_connected() && self.health.storing()
    }

    fn tasks_outlive_instance(&self) -> bool {
        true
    }
}
