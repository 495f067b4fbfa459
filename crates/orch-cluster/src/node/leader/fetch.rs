//! The term's only puller of the pool's queue: while the pool has room (its queue and
//! slots) it takes queued tasks one after another, so the pool queues them in
//! admission order, and gives each its own driver (run and store it, or settle what a
//! failed leader left of it) that runs beside the next.

use super::room::Room;
use super::store::serve;
use super::takeover::{take, Next};
use super::{Term, PULL_RETRY};
use crate::node::Node;
use crate::Dispatch;
use futures_util::StreamExt;
use std::sync::Arc;
use tokio::task::JoinSet;

/// Hand queued tasks out while the pool has room, until the term aborts this.
pub(super) async fn fetch(
    node: Arc<Node>,
    pool_id: String,
    dispatch: Arc<Dispatch>,
    room: Arc<Room>,
    term: Term,
) {
    let mut tasks = JoinSet::new();
    loop {
        // tasks wait in the queue until this instance's replicas serve
        if !node.pools.until_ready(&pool_id).await {
            tracing::warn!(
                pool_id,
                "the pool stopped: no more tasks taken from its queue"
            );
            return;
        }
        let mut queued = match dispatch.tasks().await {
            Ok(s) => Box::pin(s),
            Err(e) => {
                tracing::debug!(pool_id, error = %e, "cannot pull from the queue; retrying");
                tokio::time::sleep(PULL_RETRY).await;
                continue;
            }
        };
        loop {
            while tasks.try_join_next().is_some() {}
            let permit = room.place(&node, &pool_id).await;
            let qt = match queued.next().await {
                Some(Ok(qt)) => qt,
                Some(Err(e)) => {
                    tracing::debug!(pool_id, error = %e, "the pull from the queue failed; pulling again");
                    break;
                }
                None => break,
            };
            // taken one after another: the pool queues them in admission order; what
            // follows (frames, acknowledgments) runs beside the next
            let next = take(&node, qt).await;
            // registered before its driver runs: a cancel that comes now finds it, and
            // a term that ends now stops it even if its driver never ran
            if let Next::Run(t) = &next {
                term.running(t.rec.clone());
            }
            let (node, dispatch, term) = (node.clone(), dispatch.clone(), term.clone());
            tasks.spawn(async move {
                drive(&node, &dispatch, &term, next).await;
                drop(permit);
            });
        }
        tokio::time::sleep(PULL_RETRY).await;
    }
}

/// Carry one taken task to its end: run it and store its frames, or settle it.
async fn drive(node: &Arc<Node>, dispatch: &Dispatch, term: &Term, mut next: Next) {
    loop {
        match next {
            Next::Run(taken) => {
                let Some(qt) = serve(node, dispatch, term, *taken).await else {
                    return;
                };
                // fenced while it ran: another leader stored frames of it. If that one
                // is stale, it steps down within a lease TTL and this one takes the
                // task again from what is stored; if this one is stale, its term ends
                // first and aborts this
                tokio::time::sleep(node.lease_ttl).await;
                next = take(node, qt).await;
                if let Next::Run(t) = &next {
                    term.running(t.rec.clone());
                }
            }
            Next::Settle(settle) => {
                let (qt, status) = *settle;
                if let Some((id, s)) = status {
                    node.set_status(id, &s).await;
                    node.quota_ended(&s.tenant, id, u64::from(s.tokens_out))
                        .await;
                }
                node.leave(dispatch, &qt).await;
                return;
            }
        }
    }
}
