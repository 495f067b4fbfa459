//! Leading a pool: while this instance holds the pool's lease it takes the pool's
//! queue over and runs its tasks on its own replicas, in admission order (the pool's
//! actor applies the same fair order as standalone).
//!
//! Each task gets one writer that stores its frames in batches: one store in flight,
//! and the frames that arrive meanwhile go together in the next (batched behind the
//! pending acknowledgment). When the terminal frame is stored the task leaves the
//! queue (acknowledged) and its status is recorded.
//!
//! Taking a task over from a failed leader: a task whose last stored frame is
//! terminal only leaves the queue; one with a cancel request ends canceled; one that
//! streamed a token ends with a retriable `WORKER_RESET` (a half-finished generation
//! is not continued); any other is run again here, its frames continuing the ids the
//! old leader stored.
//!
//! Losing the lease stops everything this term started at once: no frame of it is
//! stored after that (and a store racing the new leader is fenced by the subject's
//! sequence).

use super::running::Running;
use super::{Node, PoolQueue};
use crate::wire::{ClusterStatus, ReplicatedTask};
use crate::{lead, metrics, Dispatch, Frame, FrameError, Leases, QueuedTask};
use futures_util::StreamExt;
use orch_domain::{ErrorCode, EventKind, OrchError, StreamEvent, TaskId, TaskState};
use orch_services::{CancelReason, Ending, TaskRecord};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

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
        let (mut leading, _bid) = lead(leases, key, node.instance.clone(), delay);
        loop {
            if leading.wait_for(|l| *l).await.is_err() {
                return;
            }
            term(&node, &pool, &mut leading).await;
        }
    });
}

/// One term as the pool's leader: until the lease is lost.
async fn term(node: &Arc<Node>, pool: &PoolQueue, leading: &mut watch::Receiver<bool>) {
    let Some(queue) = node.queues.get(&pool.pool_id) else {
        return;
    };
    let dispatch = match queue.take_over().await {
        Ok(d) => Arc::new(d),
        Err(e) => {
            tracing::warn!(pool_id = %pool.pool_id, error = %e, "could not take the queue over");
            tokio::time::sleep(Duration::from_millis(500)).await;
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
    node.health.set_leading(&pool.pool_id, true);
    let running = Running::default();
    let room = Arc::new(Semaphore::new(pool.capacity.max(1)));
    let hints = node.hints.publish(node.pools.clone(), pool.pool_id.clone());
    let live = super::live::answer(
        node.client.clone(),
        node.pools.clone(),
        pool.pool_id.clone(),
        running.clone(),
    );
    let fetcher = tokio::spawn(fetch(
        node.clone(),
        pool.pool_id.clone(),
        dispatch.clone(),
        room.clone(),
        running.clone(),
    ));
    loop {
        tokio::select! {
            changed = leading.changed() => {
                if changed.is_err() || !*leading.borrow() {
                    break;
                }
            }
            Some(id) = cancels.next() => {
                let rec = id.parse().ok().and_then(|id: TaskId| running.get(id));
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
    live.abort();
    let _ = fetcher.await;
    let left = running.drain();
    for rec in &left {
        node.pools.cancel(rec, CancelReason::Shutdown).await;
    }
    tracing::warn!(pool_id = %pool.pool_id, stopped = left.len(), "no longer leading the pool");
}

/// Hand queued tasks out while the pool has room (its queue and slots), each taken in
/// turn (so the pool queues them in admission order) and then given its own writer.
async fn fetch(
    node: Arc<Node>,
    pool_id: String,
    dispatch: Arc<Dispatch>,
    room: Arc<Semaphore>,
    running: Running,
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
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        loop {
            while tasks.try_join_next().is_some() {}
            let Ok(permit) = room.clone().acquire_owned().await else {
                return;
            };
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
            let (node, dispatch, running) = (node.clone(), dispatch.clone(), running.clone());
            tasks.spawn(async move {
                let mut next = next;
                loop {
                    match next {
                        Next::Run(taken) => {
                            let Some(qt) = serve(&node, &dispatch, &running, *taken).await else {
                                break;
                            };
                            // fenced while it ran: another leader stored frames of it.
                            // If that one is stale, it steps down within a lease TTL
                            // and this one takes the task again from what is stored;
                            // if this one is stale, its term ends first and aborts this
                            tokio::time::sleep(node.lease_ttl).await;
                            next = take(&node, qt).await;
                        }
                        Next::Settle(settle) => {
                            let (qt, status) = *settle;
                            if let Some((id, s)) = status {
                                node.set_status(id, &s).await;
                            }
                            node.leave(&dispatch, &qt).await;
                            break;
                        }
                    }
                }
                drop(permit);
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a taken task needs next.
enum Next {
    /// Run it: its writer stores its frames.
    Run(Box<Taken>),
    /// Nothing to run: record its status (if given) and let it leave the queue.
    Settle(Box<(QueuedTask, Option<(TaskId, ClusterStatus)>)>),
}

/// A task handed to this term, ready for its writer.
struct Taken {
    qt: QueuedTask,
    rec: Arc<TaskRecord>,
    writer: crate::FrameWriter,
    base: u64,
    status: ClusterStatus,
}

/// Take one queued task: settle what a failed leader left of it, or hand it to the
/// pool (in the order tasks come, so the pool queues them in admission order). A store
/// refused as fenced means the frames moved since they were read: read them again
/// (if another leader really took over, this term ends and stops this).
async fn take(node: &Arc<Node>, mut qt: QueuedTask) -> Next {
    loop {
        match take_once(node, qt).await {
            Ok(next) => return next,
            Err(again) => {
                tracing::debug!(task_id = %again.task_id, "task's frames moved while taking it; reading again");
                qt = again;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One try of [`take`]: `Err` gives the task back when the ending's store was fenced.
async fn take_once(node: &Arc<Node>, qt: QueuedTask) -> Result<Next, QueuedTask> {
    let t: ReplicatedTask = match serde_json::from_slice(&qt.payload) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(task_id = %qt.task_id, error = %e, "unreadable queued task dropped");
            return Ok(Next::Settle(Box::new((qt, None))));
        }
    };
    let id = t.task_id;
    let key = id.to_string();
    let status = ClusterStatus::queued(&t);
    // what a failed leader left of it, and whether it was canceled meanwhile (one
    // round trip each, together)
    let (mut writer, prior, canceled) = loop {
        let (frames, canceled) = tokio::join!(
            node.frames.resume_writer(&key),
            node.states.cancel_requested(&key)
        );
        match frames {
            Ok((w, prior)) => break (w, prior, canceled.unwrap_or(false)),
            Err(e) => {
                tracing::debug!(task_id = %id, error = %e, "cannot read the task's frames; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    let base = prior.last().map_or(0, |f| f.id);
    let tokens = prior.iter().filter(|f| f.kind == EventKind::Token).count() as u32;
    if let Some(ev) = prior.last().and_then(parse_terminal) {
        // a failed leader stored the end but may not have recorded it
        let mut s = status;
        s.state = match &ev {
            StreamEvent::End(e) => e.state(),
            _ => TaskState::Failed,
        };
        s.tokens_out = tokens;
        record_end(&mut s, &ev);
        metrics::taken(&t.pool_id, "settled");
        return Ok(Next::Settle(Box::new((qt, Some((id, s))))));
    }
    let ending = if canceled {
        Some(Ending::Canceled {
            reason: CancelReason::Client,
            tokens_out: tokens,
            pool_id: t.pool_id.clone(),
        })
    } else if tokens > 0 {
        Some(Ending::Failed(
            OrchError::new(
                ErrorCode::WorkerReset,
                "the pool's leader failed over after the task had streamed; retry",
            )
            .with_pool(t.pool_id.as_str())
            .with_retry_after_ms(0),
        ))
    } else {
        None
    };
    if let Some(ending) = ending {
        let ev = ending.frame();
        if !store(&mut writer, &[to_frame(base + 1, &ending)], &t.pool_id, id).await {
            return Err(qt);
        }
        metrics::taken(
            &t.pool_id,
            if canceled { "canceled" } else { "worker_reset" },
        );
        let mut s = status;
        s.state = ending.state();
        s.tokens_out = tokens;
        record_end(&mut s, &ev);
        return Ok(Next::Settle(Box::new((qt, Some((id, s))))));
    }
    metrics::taken(&t.pool_id, if prior.is_empty() { "run" } else { "rerun" });
    let rec = node.pools.run(t.into_new_task()).await;
    Ok(Next::Run(Box::new(Taken {
        qt,
        rec,
        writer,
        base,
        status,
    })))
}

/// Store a batch, trying again while the cluster cannot store it (the stream pauses;
/// the lease decides for how long). False when this writer was fenced.
async fn store(
    writer: &mut crate::FrameWriter,
    batch: &[Frame],
    pool_id: &str,
    id: TaskId,
) -> bool {
    loop {
        let t0 = std::time::Instant::now();
        match writer.append(batch).await {
            Ok(()) => {
                metrics::frames_stored(pool_id, t0.elapsed());
                return true;
            }
            Err(FrameError::Fenced(_)) => return false,
            Err(e) => {
                metrics::store_failed(pool_id, "frames");
                tracing::debug!(task_id = %id, error = %e, "frames not stored; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Store a taken task's frames until its terminal one, then let it leave the queue.
/// Fenced (someone else stored frames of it meanwhile): its run here is stopped and
/// the task given back, to be taken again from what is stored.
async fn serve(
    node: &Arc<Node>,
    dispatch: &Dispatch,
    running: &Running,
    mut t: Taken,
) -> Option<QueuedTask> {
    let id = t.rec.id;
    running.insert(t.rec.clone());
    let stored = write_frames(node, &t.rec, &mut t.writer, t.base, &t.status).await;
    running.remove(id);
    if stored {
        node.leave(dispatch, &t.qt).await;
        None
    } else {
        tracing::warn!(task_id = %id, "the task's frames were written by another leader; taking it again");
        node.pools.cancel(&t.rec, CancelReason::Shutdown).await;
        Some(t.qt)
    }
}

/// Store the record's frames as they come (ids after `base`) until its terminal frame
/// is stored (true), or this writer is fenced (false).
async fn write_frames(
    node: &Arc<Node>,
    rec: &Arc<TaskRecord>,
    writer: &mut crate::FrameWriter,
    base: u64,
    status: &ClusterStatus,
) -> bool {
    let mut after = 0;
    let mut running_put = None;
    loop {
        let mut batch = Vec::new();
        let v = std::future::poll_fn(|cx| {
            rec.log.poll_visit(after, cx, |f| {
                batch.push(Frame {
                    id: base + f.seq,
                    kind: f.kind,
                    data: f.data.to_string(),
                })
            })
        })
        .await;
        after = v.last;
        if !store(writer, &batch, &status.pool_id, rec.id).await {
            return false;
        }
        if let Some(f) = batch.iter().find(|f| f.kind == EventKind::Started) {
            let mut s = status.clone();
            s.state = TaskState::Running;
            s.replica_id = serde_json::from_str::<orch_domain::StartedFrame>(&f.data)
                .ok()
                .map(|s| s.replica_id);
            // off the frames' path: the next batch does not wait for it (the terminal
            // status waits for it, so it cannot land last)
            let (node, id) = (node.clone(), rec.id);
            running_put = Some(tokio::spawn(async move { node.set_status(id, &s).await }));
        }
        if let Some(last) = batch.last().filter(|f| f.kind.is_terminal()) {
            let mut s = status.clone();
            s.state = rec.state();
            s.tokens_out = rec.tokens_out();
            s.replica_id = rec.replica_id();
            if let Some(ev) = parse_terminal(last) {
                record_end(&mut s, &ev);
            }
            if let Some(put) = running_put.take() {
                let _ = put.await;
            }
            node.set_status(rec.id, &s).await;
            return true;
        }
    }
}

fn parse_terminal(f: &Frame) -> Option<StreamEvent> {
    match f.kind {
        EventKind::End => serde_json::from_str(&f.data).ok().map(StreamEvent::End),
        EventKind::Error => serde_json::from_str(&f.data).ok().map(StreamEvent::Error),
        EventKind::Started | EventKind::Token | EventKind::Metrics => None,
    }
}

fn record_end(s: &mut ClusterStatus, ev: &StreamEvent) {
    match ev {
        StreamEvent::End(e) => s.finish_reason = Some(e.finish_reason),
        StreamEvent::Error(e) => s.error_code = Some(e.code.as_str().to_string()),
        _ => {}
    }
}

/// An ending as a stored frame, encoded as the task log encodes it.
fn to_frame(id: u64, ending: &Ending) -> Frame {
    let (kind, data) = orch_services::home::ending_frame(ending);
    Frame { id, kind, data }
}
