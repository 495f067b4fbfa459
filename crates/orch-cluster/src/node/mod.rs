//! One orchestratord instance in a cluster: the [`ClusterPort`] the services call
//! (admission stores tasks in their pool's queue; mirrors follow stored frames; status
//! and cancel through the task-state bucket) and, for every pool, a bid to lead it
//! ([`leader`]): the leader runs the pool's queued tasks on its own replicas and
//! stores their frames.
//!
//! Owns: the instance's JetStream handles and its leadership loops. Never: HTTP.

mod follow;
mod health;
mod hints;
mod leader;
mod live;
mod withdraw;

use crate::{
    Cluster, ClusterConfig, ClusterError, FrameLog, Leases, PublishError, TaskQueue, TaskStates,
};
use futures_util::future::BoxFuture;
use orch_domain::{ErrorCode, OrchError, PolicyLabel, TaskId};
use orch_services::cluster::{ClusterPort, ClusterStatus, LiveStatus, ReplicatedTask};
use orch_services::pool::Placed;
use orch_services::task::TaskRecord;
use orch_services::tenants::QueuedLease;
use orch_services::Orchestrator;
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
    pub(crate) orch: Orchestrator,
    pub(crate) queues: HashMap<String, TaskQueue>,
    pub(crate) frames: FrameLog,
    pub(crate) states: TaskStates,
    pub(crate) hints: hints::Hints,
    pub(crate) health: health::Health,
    pub(crate) client: async_nats::Client,
    js: async_nats::jetstream::Context,
    pub(crate) store_retry: Duration,
    pub(crate) lease_ttl: Duration,
    withdrawals: withdraw::Withdrawals,
}

/// Pause between tries of a store the cluster could not answer.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

impl Node {
    /// Connect, make (or check) every stream and bucket, and start bidding for the
    /// leadership of each pool. The returned node is also the services' port.
    pub async fn start(
        cfg: NodeConfig,
        orch: Orchestrator,
        pools: Vec<PoolQueue>,
    ) -> Result<Arc<Node>, ClusterError> {
        crate::metrics::describe();
        let cluster = Cluster::connect(cfg.cluster.clone()).await?;
        let frames = cluster.frame_log(cfg.keep).await?;
        let states = cluster.task_states(cfg.keep).await?;
        let leases: Leases = cluster.leases(cfg.lease_ttl).await?;
        let mut queues = HashMap::new();
        for p in &pools {
            let q = cluster.task_queue(&p.pool_id, p.capacity).await?;
            queues.insert(p.pool_id.clone(), q);
        }
        let withdrawals = withdraw::Withdrawals::start(states.clone());
        let node = Arc::new(Node {
            instance: cfg.instance.clone(),
            orch,
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
            withdrawals,
        });
        health::spawn(Arc::downgrade(&node));
        for p in pools {
            let preferred = cfg.prefer_pools.is_empty() || cfg.prefer_pools.contains(&p.pool_id);
            leader::spawn(node.clone(), leases.clone(), p, preferred);
        }
        tracing::info!(instance = %cfg.instance, urls = ?cfg.cluster.urls, "joined the cluster");
        Ok(node)
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

impl ClusterPort for Node {
    fn enqueue<'a>(&'a self, t: &'a ReplicatedTask) -> BoxFuture<'a, Result<Placed, OrchError>> {
        Box::pin(async move {
            let queue = self
                .queues
                .get(&t.pool_id)
                .ok_or_else(|| OrchError::not_found("pool", &t.pool_id))?;
            let payload = serde_json::to_vec(t).map_err(|e| OrchError::internal(e.to_string()))?;
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
        })
    }

    fn follow(&self, mirror: Arc<TaskRecord>, lease: Option<QueuedLease>) {
        tokio::spawn(follow::follow(self.frames.clone(), mirror, lease));
    }

    /// Connected, and the cluster stored a write of this instance within
    /// `store_retry` (see [`health`]).
    fn is_available(&self) -> bool {
        self.is_connected() && self.health.storing()
    }

    /// The recorded status (from its start on), else the task as it waits in its
    /// pool's queue.
    fn status(&self, id: TaskId) -> BoxFuture<'_, Result<Option<ClusterStatus>, OrchError>> {
        Box::pin(async move {
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
        })
    }

    fn live<'a>(&'a self, pool_id: &'a str, id: TaskId) -> BoxFuture<'a, Option<LiveStatus>> {
        Box::pin(live::ask(&self.client, pool_id, id))
    }

    fn cancel<'a>(&'a self, pool_id: &'a str, id: TaskId) -> BoxFuture<'a, Result<(), OrchError>> {
        Box::pin(async move {
            self.states
                .request_cancel(pool_id, &id.to_string())
                .await
                .map_err(unavailable)
        })
    }
}
