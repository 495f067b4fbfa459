//! Readers of a task's event log. Each SSE connection holds one [`StreamReader`]; the
//! reader count drives the abandoned-stream grace period: when the last reader of an
//! unfinished task goes away and none returns within the grace, the task is canceled
//! and its slot freed.

use crate::orchestrator::Orchestrator;
use crate::task::{CancelReason, TaskRecord};
use crate::task_log::Frame;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub enum ReadItem {
    /// Frames in order; the last batch of a finished task ends with its terminal frame.
    Frames(Vec<Arc<Frame>>),
    /// Nothing new within the keep-alive interval.
    KeepAlive,
}

/// Counts a reader for as long as it lives.
struct ReaderGuard {
    orch: Orchestrator,
    rec: Arc<TaskRecord>,
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        let left = self.rec.readers.fetch_sub(1, Ordering::AcqRel) - 1;
        if left > 0 || self.rec.is_terminal() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (orch, rec) = (self.orch.clone(), self.rec.clone());
        let grace = orch.config().stream_grace;
        let generation = rec.disconnects.fetch_add(1, Ordering::AcqRel) + 1;
        rt.spawn(async move {
            tokio::time::sleep(grace).await;
            let latest = rec.disconnects.load(Ordering::Acquire) == generation;
            if latest && rec.reader_count() == 0 && !rec.is_terminal() {
                tracing::info!(task_id = %rec.id, grace_ms = grace.as_millis() as u64,
                    "no reader within the grace period: canceling abandoned task");
                orch.cancel_record(&rec, CancelReason::Abandoned);
            }
        });
    }
}

pub struct StreamReader {
    rec: Arc<TaskRecord>,
    after: u64,
    rx: watch::Receiver<u64>,
    done: bool,
    _guard: ReaderGuard,
}

impl StreamReader {
    pub(crate) fn new(orch: Orchestrator, rec: Arc<TaskRecord>, after: u64) -> Self {
        rec.readers.fetch_add(1, Ordering::AcqRel);
        let rx = rec.log.subscribe();
        Self {
            _guard: ReaderGuard {
                orch,
                rec: rec.clone(),
            },
            rec,
            after,
            rx,
            done: false,
        }
    }

    pub fn task_id(&self) -> orch_domain::TaskId {
        self.rec.id
    }

    pub fn correlation_id(&self) -> &str {
        &self.rec.correlation_id
    }

    /// The next frames, a keep-alive after `keepalive` of silence, or `None` once the
    /// terminal frame has been delivered.
    pub async fn next(&mut self, keepalive: Duration) -> Option<ReadItem> {
        if self.done {
            return None;
        }
        loop {
            self.rx.borrow_and_update();
            let (frames, closed) = self.rec.log.since(self.after);
            if let Some(last) = frames.last() {
                self.after = last.seq;
                if closed && frames.iter().any(|f| matches!(f.event, "end" | "error")) {
                    self.done = true;
                }
                return Some(ReadItem::Frames(frames));
            }
            if closed {
                self.done = true;
                return None;
            }
            match tokio::time::timeout(keepalive, self.rx.changed()).await {
                Err(_) => return Some(ReadItem::KeepAlive),
                Ok(Err(_)) => {
                    self.done = true;
                    return None;
                }
                Ok(Ok(())) => continue,
            }
        }
    }
}
