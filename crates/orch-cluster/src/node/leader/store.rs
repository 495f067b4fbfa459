//! A task's frame store: one writer per task stores the record's frames in batches (one
//! store in flight; the frames that arrive meanwhile go together in the next, batched
//! behind the pending acknowledgment), each batch fenced by the subject's sequence, and
//! records the task's status when it starts and when its end is stored. Then the task
//! leaves the queue.

use super::{Term, STORE_RETRY};
use crate::node::Node;
use crate::wire::ClusterStatus;
use crate::{metrics, Dispatch, Frame, FrameError, FrameWriter, QueuedTask};
use orch_domain::{EventKind, TaskId, TaskState};
use orch_services::{CancelReason, TaskRecord};
use std::sync::Arc;

/// A task handed to this term, ready for its writer.
pub(super) struct Taken {
    pub qt: QueuedTask,
    pub rec: Arc<TaskRecord>,
    pub writer: FrameWriter,
    /// The last frame id a failed leader stored (0: none).
    pub base: u64,
    /// The task as it waited (its status's fixed part).
    pub status: ClusterStatus,
}

/// Store a batch, trying again while the cluster cannot store it (the stream pauses;
/// the lease decides for how long). False when this writer was fenced.
pub(super) async fn store(
    writer: &mut FrameWriter,
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
                tokio::time::sleep(STORE_RETRY).await;
            }
        }
    }
}

/// Store a taken task's frames until its terminal one, then let it leave the queue
/// (the term was told it runs when it was taken, and is told here when it is done).
/// Fenced (someone else stored frames of it meanwhile): its run here is stopped and
/// the task given back, to be taken again from what is stored.
pub(super) async fn serve(
    node: &Arc<Node>,
    dispatch: &Dispatch,
    term: &Term,
    mut t: Taken,
) -> Option<QueuedTask> {
    let id = t.rec.id;
    let stored = write_frames(node, &t.rec, &mut t.writer, t.base, &t.status).await;
    term.done(id);
    if stored {
        node.leave(dispatch, &t.qt).await;
        None
    } else {
        tracing::warn!(task_id = %id, "the task's frames were written by another leader; taking it again");
        node.pools.cancel(&t.rec, CancelReason::Shutdown).await;
        Some(t.qt)
    }
}

/// The task's status as its record stands (recorded when it starts and when it ends).
fn status_of(rec: &TaskRecord, queued: &ClusterStatus) -> ClusterStatus {
    let s = rec.summary();
    ClusterStatus {
        state: s.state,
        replica_id: s.replica_id,
        tokens_out: s.tokens_out,
        finish_reason: s.finish,
        error_code: s.error_code.map(|c| c.as_str().to_string()),
        ..queued.clone()
    }
}

/// Store the record's frames as they come (ids after `base`) until its terminal frame
/// is stored (true), or this writer is fenced (false).
async fn write_frames(
    node: &Arc<Node>,
    rec: &Arc<TaskRecord>,
    writer: &mut FrameWriter,
    base: u64,
    queued: &ClusterStatus,
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
        if !store(writer, &batch, &queued.pool_id, rec.id).await {
            return false;
        }
        if batch.last().is_some_and(|f| f.kind.is_terminal()) {
            // the record ended before its terminal frame was appended
            let s = status_of(rec, queued);
            if let Some(put) = running_put.take() {
                let _ = put.await;
            }
            node.set_status(rec.id, &s).await;
            node.quota_ended(&s.tenant, rec.id, u64::from(s.tokens_out))
                .await;
            return true;
        }
        if batch.iter().any(|f| f.kind == EventKind::Started) {
            let s = ClusterStatus {
                state: TaskState::Running,
                replica_id: rec.replica_id(),
                ..queued.clone()
            };
            // off the frames' path: the next batch does not wait for it (the terminal
            // status waits for it, so it cannot land last)
            let (node, id) = (node.clone(), rec.id);
            running_put = Some(tokio::spawn(async move {
                node.set_status(id, &s).await;
                node.quota_started(&s.tenant, id).await;
            }));
        }
    }
}
