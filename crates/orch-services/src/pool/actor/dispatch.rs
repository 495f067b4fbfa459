//! Dispatch: queued work onto free slots, only here and only when a serving replica has
//! one. Placement is session affinity, then the replica holding the prompt's prefix
//! (within a load slack), then the least loaded (`orchestrator-core`); a retry takes
//! another serving replica not yet tried.

use super::{Actor, PREFIX_MAX_BLOCKS};
use crate::config::PlacementMode;
use crate::lifecycle::Ending;
use crate::pool::observed::reuses_cache;
use crate::pool::slot::SlotGuard;
use crate::pool::state::Pinned;
use crate::pool::{Assignment, Limits, PoolHandle};
use crate::task::TaskRecord;
use orch_domain::{Determinism, ErrorCode, OrchError, PlacementReason, TaskRequest};
use orchestrator_core::prefix::{block_hashes, choose, PrefixPolicy};
use std::sync::Arc;
use tokio::time::Instant;

impl Actor {
    /// Claim a slot on replica `idx` for `rec`.
    pub(super) fn claim(
        &mut self,
        idx: usize,
        rec: Arc<TaskRecord>,
        request: Arc<TaskRequest>,
        slot_hint: Option<u32>,
        pinned: Arc<Pinned>,
        placement: PlacementReason,
    ) -> Option<Assignment> {
        let tx = self.me.upgrade()?;
        let r = &mut self.st.replicas[idx];
        r.busy += 1;
        let replica_id = r.id.clone();
        let adapter = r.adapter.clone();
        self.claims += 1;
        let claim = self.claims;
        self.running
            .insert(rec.id, (rec.clone(), replica_id.clone(), claim));
        let spec = &self.st.spec;
        let limits = Limits {
            first_token: spec.first_token_timeout,
            idle: spec.idle_timeout,
            decode: spec.decode_timeout,
            retries: spec.retries_before_first_token,
            migrations: spec.migration_limit,
            metrics_every: spec.metrics_frame_interval,
        };
        let pool = PoolHandle {
            id: self.id.clone(),
            tx: tx.clone(),
            snap: self.snap_tx.subscribe(),
        };
        Some(Assignment {
            guard: SlotGuard::new(tx, replica_id.clone(), (rec.id, claim)),
            rec,
            request,
            replica_id,
            adapter,
            pinned,
            slot_hint,
            dequeued_at: Instant::now(),
            pool,
            limits,
            placement,
        })
    }

    pub(super) fn dispatch(&mut self) {
        let mut moved = false;
        while !self.st.draining && !self.st.queue.is_empty() && self.st.free_slots() > 0 {
            let now_ms = self.now_ms();
            let Some((id, _)) = self.st.queue.pop(now_ms) else {
                break;
            };
            moved = true;
            let Some(q) = self.queued.remove(&id) else {
                continue;
            };
            if q.rec.is_ended() {
                self.charges.refund(&mut self.st.queue, &id);
                continue;
            }
            if q.rec.cancel.is_cancelled() {
                self.charges.refund(&mut self.st.queue, &id);
                self.end_unstarted(&q.rec, None);
                continue;
            }
            let strict = q.request.determinism == Some(Determinism::Strict);
            if strict && self.st.pinned.as_ref().is_some_and(|p| **p != *q.pinned) {
                // a reload replaced the replica set while it waited: running it on
                // the new one would break the promise `strict` made at admission
                self.charges.refund(&mut self.st.queue, &id);
                q.rec.end(Ending::Failed(
                    OrchError::new(
                        ErrorCode::PoolUnready,
                        "a reload replaced the replica set this strict task was admitted to; submit it again to run it on the new one",
                    )
                    .with_pool(&*self.id)
                    .with_retry_after_ms(1000),
                ));
                continue;
            }
            let mode = self.st.spec.placement;
            let home = q
                .rec
                .session
                .filter(|_| mode != PlacementMode::LeastLoaded)
                .and_then(|s| self.sessions.home(&q.rec.tenant, s));
            let preferred = home
                .as_ref()
                .filter(|h| *h.pool_id == *self.id)
                .and_then(|h| self.st.replicas.iter().position(|r| *r.id == *h.replica_id));
            let loads = self.st.loads();
            self.st.rotate = self.st.rotate.wrapping_add(1);
            let hashes = if mode == PlacementMode::Prefix {
                block_hashes(q.request.prompt.as_bytes(), PREFIX_MAX_BLOCKS)
            } else {
                Vec::new()
            };
            let matched = if hashes.is_empty() {
                vec![0; loads.len()]
            } else {
                let ids: Vec<Arc<str>> = self.st.replicas.iter().map(|r| r.id.clone()).collect();
                self.st.prefix.matched(&hashes, &ids)
            };
            let choice = choose(
                &loads,
                &matched,
                preferred,
                PrefixPolicy::default(),
                self.st.rotate,
            );
            let placed = match (choice, self.st.pinned.clone()) {
                (Some((idx, why)), Some(pinned)) => {
                    // the session's engine slot is certainly free only on an idle
                    // replica; on a busy one the engine picks a slot itself
                    let idle = self.st.replicas[idx].busy == 0;
                    let hint = home
                        .filter(|_| idle && Some(idx) == preferred)
                        .and_then(|h| h.slot);
                    let rid = self.st.replicas[idx].id.clone();
                    let prefix = (!hashes.is_empty())
                        .then(|| self.st.prefix.place(hashes, &rid, matched[idx]));
                    let watch = self.st.spec.prefix_observed && reuses_cache(&q.request);
                    let bytes = q.request.prompt.len();
                    crate::metrics::placed(&self.id, why);
                    let a = self.claim(idx, q.rec.clone(), q.request, hint, pinned, why);
                    if let (Some(p), Some(_), true) = (prefix, &a, watch) {
                        self.st.watched.insert(self.claims, p, rid, bytes, idle);
                    }
                    a
                }
                _ => None,
            };
            match placed {
                Some(a) => (self.launch)(a),
                None => {
                    self.charges.refund(&mut self.st.queue, &id);
                    // free_slots() > 0 makes placement succeed; should it not, the
                    // dequeued task still ends instead of being lost
                    q.rec.end(Ending::Failed(
                        OrchError::new(
                            ErrorCode::ReplicaExhausted,
                            "no replica could take the task",
                        )
                        .with_retry_after_ms(1000)
                        .with_pool(&*self.id),
                    ));
                }
            }
        }
        if moved {
            self.publish_depth();
        }
    }
}
