//! Readers of a task's event log. Each SSE connection holds one [`StreamReader`]; the
//! reader count drives the abandoned-stream grace period: when the last reader of an
//! unfinished task goes away and none returns within the grace, the task is canceled
//! and its slot freed.
//!
//! Owns: a reader's position. Frames are visited in place in the log (no copy per
//! frame); [`StreamReader::next`] copies them for callers that want owned frames.

use crate::core::Core;
use crate::lifecycle::CancelReason;
use crate::task::log::Frame;
use crate::task::TaskRecord;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub enum ReadItem {
    /// Frames in order; the last batch of a finished task ends with its terminal frame.
    Frames(Vec<Frame>),
    /// Nothing new within the keep-alive interval.
    KeepAlive,
}

/// What [`StreamReader::next_with`] delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// This many frames were visited.
    Frames(usize),
    KeepAlive,
}

/// Counts a reader for as long as it lives.
struct ReaderGuard {
    core: Arc<Core>,
    rec: Arc<TaskRecord>,
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        let Some(generation) = self.rec.reader_left() else {
            return;
        };
        if self.rec.is_ended() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (core, rec) = (self.core.clone(), self.rec.clone());
        let grace = core.cfg.stream_grace;
        rt.spawn(async move {
            tokio::time::sleep(grace).await;
            if rec.still_abandoned(generation) && !rec.is_ended() {
                tracing::info!(task_id = %rec.id, grace_ms = grace.as_millis() as u64,
                    "no reader within the grace period: canceling abandoned task");
                core.cancel(&rec, CancelReason::Abandoned).await;
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
    pub(crate) fn new(core: Arc<Core>, rec: Arc<TaskRecord>, after: u64) -> Self {
        rec.reader_joined();
        let rx = rec.log.subscribe();
        Self {
            _guard: ReaderGuard {
                core,
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

    /// Visit the next frames in place, or report a keep-alive after `keepalive` of
    /// silence; `None` once the terminal frame has been delivered.
    pub async fn next_with(
        &mut self,
        keepalive: Duration,
        mut visit: impl FnMut(&Frame),
    ) -> Option<Read> {
        if self.done {
            return None;
        }
        loop {
            self.rx.borrow_and_update();
            let mut n = 0;
            let mut terminal = false;
            let v = self.rec.log.visit_since(self.after, |f| {
                n += 1;
                terminal |= f.is_terminal();
                visit(f);
            });
            if n > 0 {
                self.after = v.last;
                self.done = terminal;
                return Some(Read::Frames(n));
            }
            if v.closed {
                self.done = true;
                return None;
            }
            match tokio::time::timeout(keepalive, self.rx.changed()).await {
                Err(_) => return Some(Read::KeepAlive),
                Ok(Err(_)) => {
                    self.done = true;
                    return None;
                }
                Ok(Ok(())) => continue,
            }
        }
    }

    /// Like [`next_with`](Self::next_with), with owned copies of the frames.
    pub async fn next(&mut self, keepalive: Duration) -> Option<ReadItem> {
        let mut frames = Vec::new();
        match self
            .next_with(keepalive, |f| frames.push(f.clone()))
            .await?
        {
            Read::Frames(_) => Some(ReadItem::Frames(frames)),
            Read::KeepAlive => Some(ReadItem::KeepAlive),
        }
    }
}
