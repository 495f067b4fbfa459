//! Retries before the first token, and continuations after a mid-stream failure: a
//! task whose engine failed is placed again, a retry on a replica it has not tried, a
//! continuation on any serving replica but the failed engines (a replica restarted since
//! runs a new engine and may take it). When no such replica has a free slot, it waits
//! (parked, ahead of the queue) up to the pool's queue-wait limit (at most
//! [`PARK_MAX`]); it fails at once only when no replica could ever take it, or the pool
//! drains. The runner gives back the failed replica's slot before it asks, so that
//! replica serves other tasks (or its restarted engine) meanwhile.

use super::Actor;
use crate::pool::state::Replica;
use crate::pool::Assignment;
use crate::task::TaskRecord;
use adapter_api::WorkerAdapter;
use orch_domain::{PlacementReason, TaskRequest};
use orchestrator_core::placement::pick_replica;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Longest a retry waits for a free replica.
pub(super) const PARK_MAX: Duration = Duration::from_secs(30);

/// What a placement after a failure keeps away from.
pub(super) enum Avoid {
    /// A retry before the first token: replicas already tried.
    Replicas(Vec<Arc<str>>),
    /// A continuation: the engines that failed it (by identity; a restart replaces a
    /// replica's engine).
    Engines(Vec<Arc<dyn WorkerAdapter>>),
}

impl Avoid {
    fn avoids(&self, r: &Replica) -> bool {
        match self {
            Avoid::Replicas(ids) => ids.contains(&r.id),
            // and an engine that cannot continue a generation (an older instance's)
            Avoid::Engines(engines) => {
                !r.adapter.continues() || engines.iter().any(|e| Arc::ptr_eq(e, &r.adapter))
            }
        }
    }

    /// Whether `r` might take the task some time: a retry needs a serving replica it
    /// has not tried; a continuation also waits for a replica that is down now (it
    /// restarts with a new engine), not for one leaving the pool, nor for a failed
    /// engine its health checks still pass.
    fn could_take(&self, r: &Replica) -> bool {
        match self {
            Avoid::Replicas(_) => r.serving() && !self.avoids(r),
            Avoid::Engines(_) => {
                !r.draining && !r.staged && r.adapter.continues() && (!r.ready || !self.avoids(r))
            }
        }
    }

    fn reason(&self) -> PlacementReason {
        match self {
            Avoid::Replicas(_) => PlacementReason::Retry,
            Avoid::Engines(_) => PlacementReason::Migration,
        }
    }
}

/// A retry waiting for a replica it has not tried to free a slot.
pub(super) struct Parked {
    rec: Arc<TaskRecord>,
    request: Arc<TaskRequest>,
    tried: Avoid,
    reply: oneshot::Sender<Option<Assignment>>,
    pub(super) until: Instant,
    /// Since when no replica could take it (a continuation waits [`HOPELESS_GRACE`]
    /// for a failed engine's health checks to fail, so its restart counts).
    hopeless_since: Option<Instant>,
}

/// How long a continuation that only a failed engine could take waits for that
/// engine to be found unhealthy (and so restarted) before it gives up: the default
/// supervision finds a hung engine unhealthy about 3.5 s after it stops answering.
pub(super) const HOPELESS_GRACE: Duration = Duration::from_secs(5);

impl Parked {
    fn gives_up_at(&self) -> Instant {
        match self.hopeless_since {
            Some(t) => self.until.min(t + HOPELESS_GRACE),
            None => self.until,
        }
    }
}

pub(super) type ParkedRetries = VecDeque<Parked>;

impl Parked {
    pub(super) fn id(&self) -> orch_domain::TaskId {
        self.rec.id
    }
}

impl Actor {
    /// A runner asks to retry `rec` elsewhere: placed now, parked, or refused.
    pub(super) fn retry_cmd(
        &mut self,
        rec: Arc<TaskRecord>,
        request: Arc<TaskRequest>,
        tried: Avoid,
        reply: oneshot::Sender<Option<Assignment>>,
    ) {
        // the runner stopped waiting (canceled): no slot is claimed for it
        if reply.is_closed() || rec.cancel.is_cancelled() {
            self.charges.close(&rec.id);
            return;
        }
        if let Some(a) = self.place_retry(&rec, &request, &tried) {
            // if the runner is gone, the unsent assignment's guard frees its slot
            let _ = reply.send(Some(a));
            return;
        }
        let could_ever = self.could_ever(&tried);
        let continuation = matches!(tried, Avoid::Engines(_));
        if self.st.draining || (!could_ever && !continuation) {
            self.charges.close(&rec.id);
            let _ = reply.send(None);
            return;
        }
        let now = Instant::now();
        let wait = self.st.spec.queue_wait_limit.min(PARK_MAX);
        tracing::debug!(task_id = %rec.id, pool_id = %self.id, "retry parked until a replica frees a slot");
        self.parked.push_back(Parked {
            rec,
            request,
            tried,
            reply,
            until: now + wait,
            hopeless_since: (!could_ever).then_some(now),
        });
    }

    fn could_ever(&self, tried: &Avoid) -> bool {
        !self.st.draining && self.st.replicas.iter().any(|r| tried.could_take(r))
    }

    /// Place a retry on a serving replica it has not tried, if one has a free slot.
    fn place_retry(
        &mut self,
        rec: &Arc<TaskRecord>,
        request: &Arc<TaskRequest>,
        tried: &Avoid,
    ) -> Option<Assignment> {
        if self.st.draining {
            return None;
        }
        let loads: Vec<_> = self
            .st
            .replicas
            .iter()
            .map(|r| {
                let mut l = r.load();
                if tried.avoids(r) {
                    l.ready = false;
                }
                l
            })
            .collect();
        let idx = pick_replica(&loads, None, 0)?;
        let pinned = self.st.pinned.clone()?;
        let a = self.claim(
            idx,
            rec.clone(),
            request.clone(),
            None,
            pinned,
            tried.reason(),
        )?;
        crate::metrics::placed(&self.id, tried.reason());
        Some(a)
    }

    /// Serve parked retries first (they were admitted before anything queued): place
    /// those a replica can take now, give up on those whose runner left, that were
    /// canceled, or that waited their limit.
    pub(super) fn serve_parked(&mut self) {
        let now = Instant::now();
        let mut keep = VecDeque::with_capacity(self.parked.len());
        while let Some(mut p) = self.parked.pop_front() {
            let gone = p.reply.is_closed() || p.rec.cancel.is_cancelled();
            if gone || p.gives_up_at() <= now || self.st.draining {
                self.charges.close(&p.rec.id);
                let _ = p.reply.send(None);
                continue;
            }
            match self.place_retry(&p.rec, &p.request, &p.tried) {
                Some(a) => {
                    let _ = p.reply.send(Some(a));
                }
                None => {
                    if self.could_ever(&p.tried) {
                        p.hopeless_since = None;
                    } else {
                        p.hopeless_since.get_or_insert(now);
                    }
                    keep.push_back(p)
                }
            }
        }
        self.parked = keep;
    }

    /// When the earliest parked retry gives up.
    pub(super) fn next_parked_deadline(&self) -> Option<Instant> {
        self.parked.iter().map(Parked::gives_up_at).min()
    }
}
