//! Leading a pool: while this instance holds the pool's lease it takes the pool's
//! queue over and runs its tasks on its own replicas, in admission order (the pool's
//! actor applies the same fair order as standalone).
//!
//! One owner per job, as the pool's actor owns its pool:
//!
//! * the **term** ([`term`], this module): one task per term that owns the tasks the
//!   term runs (by id), takes the closed [`TermCmd`]s (a task runs, a task's end was
//!   stored, find a task for a live answer) and the pool's cancel requests, and stops
//!   everything the term started when the lease is lost;
//! * the **fetch** ([`fetch`]): the only puller of the pool's queue; it hands tasks out
//!   one after another while the pool has room;
//! * the **take-over** ([`takeover`]): what to do with a task, decided from what a
//!   failed leader stored of it;
//! * the **frame store** ([`store`]): one writer per task, storing its frames in
//!   fenced batches and recording its status;
//! * **live answers** ([`live`]): ask the term for a task, then the pools.
//!
//! Losing the lease stops everything this term started at once: no frame of it is
//! stored after that (and a store racing the new leader is fenced by the subject's
//! sequence).
//!
//! Every pause is a named constant below.

mod fetch;
pub(super) mod live;
mod room;
mod store;
mod takeover;

use super::{Node, PoolQueue};
use crate::{lead, Leases};
use futures_util::StreamExt;
use orch_domain::TaskId;
use orch_services::{CancelReason, TaskRecord};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// After the queue could not be taken over, wait this long before the next term tries.
const TAKE_OVER_RETRY: Duration = Duration::from_millis(500);
/// After a pull from the queue failed (or ended), wait this long before pulling again.
const PULL_RETRY: Duration = Duration::from_millis(250);
/// After a task's frames moved while it was being taken (a fenced settlement), read
/// them again after this long.
const REREAD: Duration = Duration::from_millis(100);
/// While the cluster cannot answer a read or store a batch, try again after this long
/// (the stream pauses; the lease decides for how long).
const STORE_RETRY: Duration = Duration::from_millis(250);

/// What the term's owner of the running tasks is told or asked.
pub(super) enum TermCmd {
    /// A task was handed to this instance's pool (its writer stores its frames).
    Running(Arc<TaskRecord>),
    /// A task's end was stored, or its run here stopped.
    Done(TaskId),
    /// The record of a task this term runs, if any (for a live answer).
    Find {
        id: TaskId,
        reply: oneshot::Sender<Option<Arc<TaskRecord>>>,
    },
}

/// The term's command channel. Cheap to clone.
#[derive(Clone)]
pub(super) struct Term(mpsc::UnboundedSender<TermCmd>);

impl Term {
    fn tell(&self, cmd: TermCmd) {
        // a term that ended has stopped its tasks already
        let _ = self.0.send(cmd);
    }

    pub fn running(&self, rec: Arc<TaskRecord>) {
        self.tell(TermCmd::Running(rec));
    }

    pub fn done(&self, id: TaskId) {
        self.tell(TermCmd::Done(id));
    }

    /// The record of a task this term runs (`None`: not here, or the term ended).
    pub async fn find(&self, id: TaskId) -> Option<Arc<TaskRecord>> {
        let (reply, rx) = oneshot::channel();
        self.tell(TermCmd::Find { id, reply });
        rx.await.ok().flatten()
    }
}

/// Bid for the pool's lease for as long as the process runs; lead while holding it.
/// An instance that does not prefer the pool bids one lease TTL later at start, so
/// preferred leaders spread the pools over the instances.
pub(super) fn spawn(node: Arc<Node>, leases: Leases, pool: PoolQueue, preferred: bool) {
    tokio::spawn(async move {
        let key = format!("pool.{}", pool.pool_id);
        let delay = if preferred {
            Duration::ZERO
        } else {
            leases.ttl
        };
        let (mut leading, _bid) = lead(leases, key, node.holder.clone(), delay);
        loop {
            if leading.wait_for(|l| *l).await.is_err() {
                return;
            }
            term(&node, &pool, &mut leading).await;
        }
    });
}

/// One term as the pool's leader, until the lease is lost: the owner of the tasks it
/// runs.
async fn term(node: &Arc<Node>, pool: &PoolQueue, leading: &mut watch::Receiver<bool>) {
    let Some(queue) = node.queues.get(&pool.pool_id) else {
        return;
    };
    let dispatch = match queue.take_over().await {
        Ok(d) => Arc::new(d),
        Err(e) => {
            tracing::warn!(pool_id = %pool.pool_id, error = %e, "could not take the queue over");
            tokio::time::sleep(TAKE_OVER_RETRY).await;
            return;
        }
    };
    let mut cancels = match node.states.cancels(&pool.pool_id).await {
        Ok(c) => c.boxed(),
        Err(e) => {
            tracing::warn!(pool_id = %pool.pool_id, error = %e, "cannot hear cancels");
            return;
        }
    };
    tracing::info!(pool_id = %pool.pool_id, instance = %node.instance, "leading the pool");
    // what this instance still runs for the former leader is settled from the store
    node.hosted.stop_pool(&pool.pool_id);
    node.health.set_leading(&pool.pool_id, true);
    let (tx, mut cmds) = mpsc::unbounded_channel();
    let me = Term(tx);
    let mut running: HashMap<TaskId, Arc<TaskRecord>> = HashMap::new();
    let room = room::Room::new(pool.capacity);
    let capacity = room::follow_capacity(
        node.clone(),
        queue.clone(),
        pool.pool_id.clone(),
        pool.capacity,
    );
    // the replicas other instances host serve the pool for this term
    let roster = crate::hosted::roster::keep(
        node.client.clone(),
        node.pools.clone(),
        pool.pool_id.clone(),
        node.instance.clone(),
    );
    let hints = node.hints.publish(node.pools.clone(), pool.pool_id.clone());
    let live = live::answer(
        node.client.clone(),
        node.pools.clone(),
        pool.pool_id.clone(),
        me.clone(),
    );
    let fetcher = tokio::spawn(fetch::fetch(
        node.clone(),
        pool.pool_id.clone(),
        dispatch.clone(),
        room.clone(),
        me.clone(),
    ));
    drop(me);
    loop {
        // in this order: stepping down first, then what the term's tasks told it (a
        // task registered before a cancel for it came is found by that cancel)
        tokio::select! {
            biased;
            changed = leading.changed() => {
                if changed.is_err() || !*leading.borrow() {
                    break;
                }
            }
            Some(cmd) = cmds.recv() => apply(&mut running, cmd),
            Some(id) = cancels.next() => {
                let rec = id.parse().ok().and_then(|id: TaskId| running.get(&id).cloned());
                if let Some(rec) = rec {
                    node.pools.cancel(&rec, CancelReason::Client).await;
                }
            }
        }
    }
    // stepped down: nothing of this term may be stored any more (aborting the fetcher
    // drops its tasks, which aborts them)
    node.health.set_leading(&pool.pool_id, false);
    fetcher.abort();
    hints.abort();
    capacity.abort();
    roster.abort();
    // its replicas are out of the pool before anything else happens
    let _ = roster.await;
    live.abort();
    let _ = fetcher.await;
    while let Ok(cmd) = cmds.try_recv() {
        apply(&mut running, cmd);
    }
    let left = running.len();
    for (_, rec) in running.drain() {
        node.pools.cancel(&rec, CancelReason::Shutdown).await;
    }
    tracing::warn!(pool_id = %pool.pool_id, stopped = left, "no longer leading the pool");
}

fn apply(running: &mut HashMap<TaskId, Arc<TaskRecord>>, cmd: TermCmd) {
    match cmd {
        TermCmd::Running(rec) => {
            running.insert(rec.id, rec);
        }
        TermCmd::Done(id) => {
            running.remove(&id);
        }
        TermCmd::Find { id, reply } => {
            let _ = reply.send(running.get(&id).cloned());
        }
    }
}
