//! How much a term takes from the pool's queue: as many tasks as its pool holds (its
//! queue plus every slot, this instance's and those of the replicas other instances
//! host), so the pool's own queue never refuses a task the term took; and the
//! replicated queue's bound, raised to the same (a task stays in it while it runs).

use crate::node::Node;
use crate::TaskQueue;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How often the room's limit and the queue's bound are read again from the pool
/// (replicas of other instances come and go).
const RECHECK: Duration = Duration::from_millis(250);

/// See the module docs. One puller acquires; a task's driver frees.
pub(super) struct Room {
    taken: AtomicUsize,
    freed: Notify,
    /// The configured queue plus this instance's slots (used until the pool tells).
    floor: usize,
}

/// One taken task's place; dropping it frees the place.
pub(super) struct Place(Arc<Room>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

impl Room {
    pub fn new(floor: usize) -> Arc<Self> {
        Arc::new(Self {
            taken: AtomicUsize::new(0),
            freed: Notify::new(),
            floor: floor.max(1),
        })
    }

    /// The pool's queue plus all its slots now.
    fn limit(&self, node: &Node, pool_id: &str) -> usize {
        node.pools.load(pool_id).map_or(self.floor, |l| {
            (l.queue_capacity as usize + l.slots_total as usize).max(1)
        })
    }

    /// Wait for a place in the pool.
    pub async fn place(self: &Arc<Self>, node: &Node, pool_id: &str) -> Place {
        loop {
            let freed = self.freed.notified();
            if self.taken.load(Ordering::Acquire) < self.limit(node, pool_id) {
                self.taken.fetch_add(1, Ordering::AcqRel);
                return Place(self.clone());
            }
            tokio::select! {
                _ = freed => {}
                _ = tokio::time::sleep(RECHECK) => {}
            }
        }
    }
}

/// Keep the replicated queue's bound at the configured one or, when other instances'
/// replicas serve too, the pool's queue plus all its slots (until aborted).
pub(super) fn follow_capacity(
    node: Arc<Node>,
    queue: TaskQueue,
    pool_id: String,
    configured: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut set = configured;
        let mut tick = tokio::time::interval(RECHECK * 4);
        loop {
            tick.tick().await;
            let Some(l) = node.pools.load(&pool_id) else {
                continue;
            };
            let want = configured.max(l.queue_capacity as usize + l.slots_total as usize);
            if want == set {
                continue;
            }
            match queue.set_capacity(want).await {
                Ok(()) => {
                    tracing::info!(
                        pool_id,
                        capacity = want,
                        "the pool's replicated queue now holds this many tasks"
                    );
                    set = want;
                }
                Err(e) => {
                    tracing::debug!(pool_id, error = %e, "could not change the queue's bound")
                }
            }
        }
    })
}
