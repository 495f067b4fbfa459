//! Queue expiry: a queued task ends when its deadline passes or when it has waited
//! longer than the pool's queue-wait limit. Entries of tasks that left the queue stay
//! in the heap until their time (an entry only acts on the stay it was made for).

use super::{Actor, Expiry};
use crate::lifecycle::Ending;
use orch_domain::{ErrorCode, OrchError};
use std::cmp::Reverse;
use tokio::time::Instant;

impl Actor {
    /// End queued tasks past their deadline or the pool's queue-wait limit.
    pub(super) fn expire(&mut self) {
        let now = Instant::now();
        let mut changed = false;
        while let Some(Reverse((t, id, why))) = self.expiries.peek().copied() {
            if t > now {
                break;
            }
            self.expiries.pop();
            // an entry of an earlier stay of the same id is stale
            if self.queued.get(&id).map(|q| q.expires_at) != Some(t) {
                continue;
            }
            let Some(q) = self.queued.remove(&id) else {
                continue;
            };
            self.unqueue(&id);
            changed = true;
            let waited = q.enqueued_at.elapsed().as_millis();
            let mut err = match why {
                Expiry::Deadline => OrchError::new(
                    ErrorCode::DeadlineUnmet,
                    format!("deadline passed after {waited} ms in the queue of pool {}", self.id),
                ),
                Expiry::QueueWait => OrchError::new(
                    ErrorCode::PoolUnavailable,
                    format!(
                        "waited {waited} ms in the queue of pool {} (limit {} ms) without a free replica",
                        self.id,
                        self.st.spec.queue_wait_limit.as_millis()
                    ),
                )
                .with_retry_after_ms(self.st.retry_after_ms()),
            };
            // the pool may recover: POOL_UNAVAILABLE is always retriable (spec §3)
            err.retriable |= why == Expiry::QueueWait;
            q.rec.end(Ending::Failed(err.with_pool(&*self.id)));
            tracing::info!(task_id = %id, tenant = %q.rec.tenant, pool_id = %self.id, waited_ms = waited as u64,
                reason = ?why, "queued task expired");
        }
        // entries of tasks that left the queue otherwise stay until their time; keep
        // the heap proportional to the queue
        if self.expiries.len() > 2 * self.queued.len() + 64 {
            let queued = &self.queued;
            self.expiries
                .retain(|Reverse((_, id, _))| queued.contains_key(id));
        }
        if changed {
            self.publish_depth();
        }
    }
}
