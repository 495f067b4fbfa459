//! Corrections of what a task was charged in its lane's fair order, once its real
//! cost is known ([`BoundedQueue::settle`]), and the rebuild of a lane's heap of flow
//! heads that corrections and compaction share.

use super::{lane, BoundedQueue, Fairness, Flow, Lane};
use crate::fair::TAG_ONE;
use orch_domain::Priority;
use std::cmp::Reverse;
use std::hash::Hash;

impl<K: Copy + Eq + Hash> BoundedQueue<K> {
    /// Correct a task's charge once its real cost is known: `flow` is the flow as it
    /// was pushed (its `cost` what was charged then), `seq` its arrival number (from
    /// [`Admitted::seq`]) and `used` what the task really cost (0 for a task that left
    /// the queue without running). The difference moves the flow's finish tag and the
    /// tags of its tasks queued *after* this one (the earlier ones never included its
    /// cost), so a flow's share of its lane follows what its tasks used, whatever they
    /// declared: a flow that declares little and uses much is served later, one that
    /// declared too much catches up. A credit never takes a task that arrived while its
    /// flow had nothing queued below the lane's virtual time at its arrival (service
    /// others had while the flow was not backlogged earns it nothing). Nothing changes
    /// under [`Fairness::Fifo`].
    pub fn settle(&mut self, priority: Priority, flow: Flow, seq: u64, used: u64) {
        if self.cfg.fairness != Fairness::Weighted {
            return;
        }
        let delta = (i128::from(used) - i128::from(flow.cost)) * i128::from(TAG_ONE)
            / i128::from(flow.weight.max(1));
        if delta == 0 {
            return;
        }
        let ln = &mut self.lanes[lane(priority)];
        let Some(fq) = ln.flows.get_mut(&flow.id) else {
            return;
        };
        // the flow's later tasks move by the difference, each no lower than the
        // virtual time it arrived at (a task that arrived after the flow fell behind
        // starts there whatever came before it, and the ones after it follow it), which
        // keeps their order: a refund or a credit never moves a task ahead of where
        // exact costs would have put it
        let mut d = delta;
        let mut moved = false;
        for e in fq.q.iter_mut().filter(|e| e.seq > seq) {
            let start = i128::from(e.start);
            let new = (start + d)
                .max(i128::from(e.floor))
                .clamp(0, i128::from(u64::MAX));
            d = new - start;
            e.start = new as u64;
            moved = true;
        }
        fq.last_finish = (i128::from(fq.last_finish) + d).clamp(0, i128::from(u64::MAX)) as u64;
        if !moved {
            return;
        }
        if let Some(h) = fq.q.front() {
            fq.heap_key = Some((h.start, h.seq));
            ln.heads.push(Reverse((h.start, h.seq, flow.id)));
        }
        // stale heap entries are skipped when popped; keep them bounded
        if ln.heads.len() > 2 * ln.flows.len() + 32 {
            ln.refile_heads();
        }
    }
}

impl<K> Lane<K> {
    /// Rebuild `heads`: one entry per flow with queued entries, for its front.
    pub(super) fn refile_heads(&mut self) {
        self.heads.clear();
        for (id, fq) in self.flows.iter_mut() {
            fq.heap_key = fq.q.front().map(|h| (h.start, h.seq));
            if let Some(h) = fq.q.front() {
                self.heads.push(Reverse((h.start, h.seq, *id)));
            }
        }
    }
}
