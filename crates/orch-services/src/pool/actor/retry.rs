//! Retries before the first token: a task whose engine failed before producing
//! anything is placed again on a replica it has not tried. When every such replica is
//! busy, the retry waits (parked, ahead of the queue) for one to free a slot, up to the
//! pool's queue-wait limit (at most [`PARK_MAX`]); it fails at once only when no other
//! replica could ever take it, or the pool drains. The runner gives back the failed
//! replica's slot before it asks, so that replica serves other tasks meanwhile.

use super::Actor;
use crate::pool::Assignment;
use crate::task::TaskRecord;
use orch_domain::{PlacementReason, TaskRequest};
use orchestrator_core::placement::pick_replica;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Longest a retry waits for a free replica.
pub(super) const PARK_MAX: Duration = Duration::from_secs(30);

/// A retry waiting for a replica it has not tried to free a slot.
pub(super) struct Parked {
    rec: Arc<TaskRecord>,
    request: Arc<TaskRequest>,
    tried: Vec<Arc<str>>,
    reply: oneshot::Sender<Option<Assignment>>,
    pub(super) until: Instant,
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
        tried: Vec<Arc<str>>,
        reply: oneshot::Sender<Option<Assignment>>,
    ) {
        if let Some(a) = self.place_retry(&rec, &request, &tried) {
            // if the runner is gone, the unsent assignment's guard frees its slot
            let _ = reply.send(Some(a));
            return;
        }
        let could_ever = !self.st.draining
            && self
                .st
                .replicas
                .iter()
                .any(|r| r.serving() && !tried.contains(&r.id));
        if !could_ever {
            self.charges.close(&rec.id);
            let _ = reply.send(None);
            return;
        }
        let wait = self.st.spec.queue_wait_limit.min(PARK_MAX);
        tracing::debug!(task_id = %rec.id, pool_id = %self.id, "retry parked until a replica frees a slot");
        self.parked.push_back(Parked {
            rec,
            request,
            tried,
            reply,
            until: Instant::now() + wait,
        });
    }

    /// Place a retry on a serving replica it has not tried, if one has a free slot.
    fn place_retry(
        &mut self,
        rec: &Arc<TaskRecord>,
        request: &Arc<TaskRequest>,
        tried: &[Arc<str>],
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
                if tried.contains(&r.id) {
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
            PlacementReason::Retry,
        )?;
        crate::metrics::placed(&self.id, PlacementReason::Retry);
        Some(a)
    }

    /// Serve parked retries first (they were admitted before anything queued): place
    /// those a replica can take now, give up on those whose runner left, that were
    /// canceled, or that waited their limit.
    pub(super) fn serve_parked(&mut self) {
        let now = Instant::now();
        let mut keep = VecDeque::with_capacity(self.parked.len());
        while let Some(p) = self.parked.pop_front() {
            let gone = p.reply.is_closed() || p.rec.cancel.is_cancelled();
            if gone || p.until <= now || self.st.draining {
                self.charges.close(&p.rec.id);
                let _ = p.reply.send(None);
                continue;
            }
            match self.place_retry(&p.rec, &p.request, &p.tried) {
                Some(a) => {
                    let _ = p.reply.send(Some(a));
                }
                None => keep.push_back(p),
            }
        }
        self.parked = keep;
    }

    /// When the earliest parked retry gives up.
    pub(super) fn next_parked_deadline(&self) -> Option<Instant> {
        self.parked.iter().map(|p| p.until).min()
    }
}
