//! The pool actor: one task per pool that owns its [`PoolState`], handles [`Cmd`]s in
//! batches, dispatches queued work onto free slots, expires tasks that waited too
//! long, and publishes a [`Snapshot`] after each batch.
//!
//! Dispatch happens only here, and only when a serving replica has a free slot
//! ([`dispatch`]: session affinity, then the cached prefix, then least loaded).

mod dispatch;
mod expiry;
mod progress;
mod publish;
mod retry;

use super::admit::{check, prompt_tokens};
use super::charge::Charges;
use super::slot::Observed;
use super::state::{Pinned, PoolState, Replica};
use super::{Cmd, Flow, Launch, Placed, PoolError, PoolHandle, Snapshot};
use crate::config::PoolSpec;
use crate::lifecycle::{CancelReason, Ending};
use crate::sessions::SessionStore;
use crate::task::TaskRecord;
use crate::tenants::QueuedLease;
use orch_domain::{ErrorCode, OrchError, TaskId, TaskRequest};
use orchestrator_core::eta::queue_position;

/// Prompt blocks looked at for prefix placement (the first 128 KiB).
const PREFIX_MAX_BLOCKS: usize = 128 * 1024 / orchestrator_core::prefix::BLOCK_BYTES;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Commands handled per batch before dispatching and publishing.
const BATCH: usize = 64;

struct Queued {
    rec: Arc<TaskRecord>,
    request: Arc<TaskRequest>,
    /// The replica set (engine, version, model, profile, ctx) the task was admitted
    /// to: a `determinism: strict` task runs on it or not at all.
    pinned: Arc<Pinned>,
    enqueued_at: Instant,
    /// The expiry entry that belongs to this stay in the queue.
    expires_at: Instant,
    /// The tenant's place in its queue allowance, given back when this is dropped.
    _lease: Option<QueuedLease>,
}

/// Why a queued task expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Expiry {
    Deadline,
    QueueWait,
}

struct Actor {
    id: Arc<str>,
    st: PoolState,
    queued: HashMap<TaskId, Queued>,
    /// Tasks holding a slot: their record, replica and claim (a continuation on the
    /// same replica is a new claim: the old one's late release leaves it listed).
    running: HashMap<TaskId, (Arc<TaskRecord>, Arc<str>, u64)>,
    /// Claims made so far (numbers the slot guards).
    claims: u64,
    expiries: BinaryHeap<Reverse<(Instant, TaskId, Expiry)>>,
    sessions: Arc<SessionStore>,
    launch: Launch,
    me: mpsc::WeakUnboundedSender<Cmd>,
    snap_tx: watch::Sender<Arc<Snapshot>>,
    was_ready: Option<bool>,
    /// Origin of the queue's millisecond clock (fair-queue aging).
    epoch: Instant,
    /// When waiting tasks next get a `metrics` frame.
    next_progress: Option<Instant>,
    /// Retries waiting for a replica they have not tried.
    parked: retry::ParkedRetries,
    /// What each queued or running task is charged in the fair queue.
    charges: Charges,
    /// The queue-depth gauges of the pinned engine, resolved once (`publish`).
    depth: std::cell::RefCell<Option<publish::DepthGauges>>,
}

pub(super) fn spawn(
    spec: PoolSpec,
    prior_service_ms: f64,
    sessions: Arc<SessionStore>,
    launch: Launch,
) -> PoolHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let id: Arc<str> = spec.id.as_str().into();
    let st = PoolState::new(spec, prior_service_ms);
    let first = publish::snapshot_of(&id, &st, 0);
    crate::metrics::pool_ready(&id, false);
    let actor = Actor {
        id: id.clone(),
        st,
        queued: HashMap::new(),
        running: HashMap::new(),
        claims: 0,
        expiries: BinaryHeap::new(),
        sessions,
        launch,
        me: tx.downgrade(),
        snap_tx: watch::Sender::new(Arc::new(first)),
        was_ready: Some(false),
        epoch: Instant::now(),
        next_progress: None,
        parked: retry::ParkedRetries::new(),
        charges: Charges::default(),
        depth: Default::default(),
    };
    let snap = actor.snap_tx.subscribe();
    tokio::spawn(actor.run(rx));
    PoolHandle { id, tx, snap }
}

impl Drop for Actor {
    /// Reached normally with nothing queued; after a panic in the actor, whatever was
    /// queued still ends (running tasks finish on their own).
    fn drop(&mut self) {
        for (_, q) in std::mem::take(&mut self.queued) {
            q.rec.end(Ending::Failed(
                OrchError::internal(format!("pool {} stopped", self.id)).with_pool(&*self.id),
            ));
        }
    }
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        loop {
            let next_expiry = self.expiries.peek().map(|Reverse((t, _, _))| *t);
            let next_expiry = match (next_expiry, self.next_parked_deadline()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let next_timer = match (next_expiry, self.next_progress) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let cmd = tokio::select! {
                biased;
                c = rx.recv() => match c {
                    Some(c) => Some(c),
                    None => break,
                },
                _ = sleep_until(next_timer) => None,
            };
            if let Some(c) = cmd {
                self.handle(c);
                for _ in 1..BATCH {
                    match rx.try_recv() {
                        Ok(c) => self.handle(c),
                        Err(_) => break,
                    }
                }
            }
            self.expire();
            self.serve_parked();
            self.dispatch();
            self.progress();
            self.publish();
        }
        // every handle and slot is gone: end whatever is still queued
        for (_, q) in std::mem::take(&mut self.queued) {
            self.end_unstarted(&q.rec, Some(CancelReason::Shutdown));
        }
    }

    /// End a task that never ran as canceled, for `reason` or the one it recorded;
    /// counts the cancel. Returns whether this call ended it.
    fn end_unstarted(&self, rec: &Arc<TaskRecord>, reason: Option<CancelReason>) -> bool {
        let ended = rec.end_canceled(reason);
        if let Some(r) = ended {
            self.where_queued().canceled(r.as_str());
        }
        ended.is_some()
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Admit {
                rec,
                request,
                flow,
                lease,
                reply,
            } => {
                let r = self.admit(rec.clone(), request, flow, lease);
                if let Err(Err(e)) = reply.send(r) {
                    // the caller went away: nobody will take the refused task back
                    // out of the table, so it ends here (and is counted out)
                    rec.end(Ending::Failed(e));
                }
            }
            Cmd::CancelQueued { id, reply } => {
                let _ = reply.send(self.cancel_queued(id));
            }
            Cmd::SlotFreed {
                replica_id,
                task,
                claim,
                observed,
                prompt,
            } => {
                let st = &mut self.st;
                st.watched.seen(&mut st.prefix, &self.id, claim, prompt);
                let processed = prompt.map(|p| p.processed());
                self.slot_freed(&replica_id, (task, claim), observed, processed)
            }
            Cmd::Retry {
                rec,
                request,
                tried,
                reply,
            } => {
                self.retry_cmd(rec, request, retry::Avoid::Replicas(tried), reply);
            }
            Cmd::Migrate {
                rec,
                request,
                failed,
                reply,
            } => {
                self.retry_cmd(rec, request, retry::Avoid::Engines(failed), reply);
            }
            Cmd::Attach { replica, reply } => {
                let _ = reply.send(self.attach(replica));
            }
            Cmd::SetReady {
                replica_id,
                ready,
                error,
            } => {
                if let Some(r) = self.st.replica_mut(&replica_id) {
                    r.ready = ready;
                    if error.is_some() {
                        r.last_error = error.clone();
                    }
                }
                if error.is_some() {
                    self.st.last_error = error;
                }
            }
            Cmd::Detach { replica_id } => {
                let id: Arc<str> = replica_id.as_str().into();
                self.st.prefix.forget(&id);
                self.st.replicas.retain(|r| *r.id != *replica_id);
            }
            Cmd::Switch {
                new_ids,
                sampler,
                reply,
            } => {
                let _ = reply.send(self.switch(&new_ids, &sampler));
            }
            Cmd::Drain { reply } => {
                let _ = reply.send(self.drain());
            }
            // a drain deadline that fires after a reload ended the drain stops nothing
            Cmd::StopRunning { reason } if reason == CancelReason::Drain && !self.st.draining => {}
            Cmd::StopRunning { reason } => {
                for (rec, _, _) in self.running.values() {
                    rec.request_cancel(reason);
                }
            }
            Cmd::UpdateSpec { mut spec } => {
                spec.sampler_profile_version = self.st.spec.sampler_profile_version.clone();
                self.st.queue.set_config(spec.queue);
                self.st.spec = Arc::new(spec);
                self.publish_depth();
            }
            Cmd::DrainReplica { replica_id, reply } => {
                let found = match self.st.replica_mut(&replica_id) {
                    Some(r) => {
                        r.draining = true;
                        true
                    }
                    None => false,
                };
                let _ = reply.send(found);
            }
            Cmd::Position { id, reply } => {
                let free = self.st.free_slots();
                let pos = self
                    .st
                    .queue
                    .ahead_of(&id)
                    .map(|ahead| queue_position(ahead, free).max(1));
                let _ = reply.send(pos);
            }
        }
    }

    /// Milliseconds on the queue's clock.
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn admit(
        &mut self,
        rec: Arc<TaskRecord>,
        request: Arc<TaskRequest>,
        flow: Flow,
        lease: Option<QueuedLease>,
    ) -> Result<Placed, OrchError> {
        let (pinned, placed) = check(&self.st, &self.id, &request, flow)?;
        let id = rec.id;
        if rec.cancel.is_cancelled() {
            // canceled between registration and this command: it ends at once
            self.end_unstarted(&rec, None);
            return Ok(placed);
        }
        let now_ms = self.now_ms();
        let admitted = match self.st.queue.push(id, request.priority, flow, now_ms) {
            Ok(a) => a,
            Err(full) => {
                let label = full.policy.label();
                crate::metrics::backpressure(&pinned.engine, label.as_str());
                return Err(OrchError::new(
                    ErrorCode::AdmissionReject,
                    format!(
                        "queue of pool {} is full (capacity {})",
                        self.id, full.capacity
                    ),
                )
                .with_policy(label)
                .with_retry_after_ms(self.st.retry_after_ms())
                .with_engine(&pinned.engine)
                .with_pool(&*self.id));
            }
        };
        self.charges.open(
            id,
            request.priority,
            flow,
            admitted.seq,
            prompt_tokens(&request),
        );
        rec.set_estimate(placed.queue_position, placed.predicted_start_ms);
        let now = Instant::now();
        // the wait limit and the deadline count from admission (a moment ago, or on
        // another instance a while ago)
        let since = now.checked_sub(rec.admitted_at.elapsed()).unwrap_or(now);
        let wait = since + self.st.spec.queue_wait_limit;
        let expiry = match request.deadline_ms {
            Some(ms) => {
                let d = since + std::time::Duration::from_millis(ms);
                if d < wait {
                    (d, Expiry::Deadline)
                } else {
                    (wait, Expiry::QueueWait)
                }
            }
            None => (wait, Expiry::QueueWait),
        };
        self.expiries.push(Reverse((expiry.0, id, expiry.1)));
        self.queued.insert(
            id,
            Queued {
                rec: rec.clone(),
                request: request.clone(),
                pinned: pinned.clone(),
                enqueued_at: now,
                expires_at: expiry.0,
                _lease: lease,
            },
        );
        if self.next_progress.is_none() && !self.st.spec.metrics_frame_interval.is_zero() {
            self.next_progress = Some(now + self.st.spec.metrics_frame_interval);
        }
        if let Some(sid) = rec.session {
            self.sessions.begin_turn(&rec.tenant, sid);
        }
        if let Some(v) = admitted.evicted {
            self.charges.refund(&mut self.st.queue, &v);
        }
        if let Some(victim) = admitted.evicted.and_then(|v| self.queued.remove(&v)) {
            let policy = self.st.queue.config().policy;
            let ended = victim.rec.end(Ending::Evicted {
                policy,
                retry_after_ms: self.st.retry_after_ms(),
                engine: pinned.engine.clone(),
                pool_id: self.id.to_string(),
            });
            if ended {
                crate::metrics::backpressure(&pinned.engine, policy.label().as_str());
                tracing::info!(task_id = %victim.rec.id, tenant = %victim.rec.tenant, pool_id = %self.id,
                    policy = policy.label().as_str(), "evicted queued task");
            }
        }
        self.count_enqueued(request.priority);
        self.publish_depth();
        Ok(placed)
    }

    fn cancel_queued(&mut self, id: TaskId) -> bool {
        let Some(q) = self.queued.remove(&id) else {
            return false;
        };
        self.unqueue(&id);
        self.end_unstarted(&q.rec, None);
        self.publish_depth();
        true
    }

    /// Take a task out of the queue without running it, refunding its charge.
    fn unqueue(&mut self, id: &TaskId) {
        self.st.queue.cancel(id);
        self.charges.refund(&mut self.st.queue, id);
    }

    fn slot_freed(
        &mut self,
        replica_id: &str,
        (task, claim): (TaskId, u64),
        observed: Option<Observed>,
        prompt_tokens: Option<u32>,
    ) {
        if let Some(r) = self.st.replica_mut(replica_id) {
            r.busy = r.busy.saturating_sub(1);
        }
        if let Some((rec, _, _)) = self.running.get(&task) {
            // a run ends before its slot is given back, except one about to be retried
            let (tokens_out, ended) = (rec.tokens_out(), rec.is_ended());
            self.charges
                .settle_run(&mut self.st.queue, &task, prompt_tokens, tokens_out, ended);
        }
        if self
            .running
            .get(&task)
            .is_some_and(|(_, r, c)| &**r == replica_id && *c == claim)
        {
            self.running.remove(&task);
        }
        let live = self.queued.len() + self.running.len() + self.parked.len();
        let (queued, running) = (&self.queued, &self.running);
        let parked: Vec<TaskId> = if self.parked.is_empty() {
            Vec::new()
        } else {
            self.parked.iter().map(|p| p.id()).collect()
        };
        // the task just released may be about to be retried: its charge stays
        self.charges.prune(live, |id| {
            *id == task
                || queued.contains_key(id)
                || running.contains_key(id)
                || parked.contains(id)
        });
        if let Some(o) = observed {
            self.st.service.observe(o.service_ms);
            if let Some(t) = o.per_token_ms {
                self.st.per_token.observe(t);
            }
        }
    }

    fn attach(&mut self, mut replica: Replica) -> Result<(), PoolError> {
        let got = Pinned::of(&replica.props, &self.st.spec.sampler_profile_version);
        match &self.st.pinned {
            _ if replica.staged => {}
            Some(p) if **p != got => {
                return Err(PoolError::Pinning {
                    pool: self.id.to_string(),
                    replica: replica.id.to_string(),
                    pinned: format!("{p:?}"),
                    got: format!("{got:?}"),
                })
            }
            Some(_) => {}
            None => self.st.pinned = Some(Arc::new(got)),
        }
        // a restarted replica keeps its slot count (tasks of the dead process still
        // hold slot guards that will give their slots back) and its drain state
        // a new or restarted engine holds no prompt cache
        self.st.prefix.forget(&replica.id);
        if let Some(i) = self.st.replicas.iter().position(|r| r.id == replica.id) {
            let old = self.st.replicas.remove(i);
            replica.busy = old.busy;
            replica.draining = old.draining;
        }
        self.st.replicas.push(replica);
        Ok(())
    }

    fn switch(&mut self, new_ids: &[String], sampler: &str) -> Result<Arc<Pinned>, OrchError> {
        let first = self
            .st
            .replicas
            .iter()
            .find(|r| new_ids.iter().any(|n| **n == *r.id))
            .ok_or_else(|| OrchError::internal("no staged replica to switch to"))?;
        let pinned = Arc::new(Pinned::of(&first.props, sampler));
        for r in self.st.replicas.iter_mut() {
            if new_ids.iter().any(|n| **n == *r.id) {
                r.staged = false;
            } else {
                r.draining = true;
            }
        }
        self.st.pinned = Some(pinned.clone());
        Arc::make_mut(&mut self.st.spec).sampler_profile_version = sampler.to_string();
        self.st.draining = false;
        Ok(pinned)
    }

    fn drain(&mut self) -> (u32, u32) {
        self.st.draining = true;
        let mut ended = 0;
        for (id, q) in std::mem::take(&mut self.queued) {
            self.unqueue(&id);
            if self.end_unstarted(&q.rec, Some(CancelReason::Drain)) {
                ended += 1;
            }
        }
        self.expiries.clear();
        self.publish_depth();
        (ended, self.running.len() as u32)
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
