//! Readers of a task's event log. Each SSE connection holds one [`StreamReader`]; the
//! reader count drives the abandoned-stream grace period: when the last reader of an
//! unfinished task goes away and none returns within the grace, the task is canceled
//! and its slot freed.
//!
//! The first reader that was waiting when a task's first token arrived records the
//! orchestrator's added latency as it hands that token out.
//!
//! Owns: a reader's position and its keep-alive timer. Frames are visited in place in
//! the log (no copy per frame); [`StreamReader::next`] copies them for callers that
//! want owned frames. The keep-alive timer is armed once and re-armed only when it
//! fires early, so relaying a token costs no timer operation.

use crate::core::Core;
use crate::lifecycle::CancelReason;
use crate::task::log::{Frame, FrameRef};
use crate::task::TaskRecord;
use orch_domain::{ErrorCode, OrchError, PolicyLabel};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::time::{Instant, Sleep};

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
                tracing::info!(task_id = %rec.id, tenant = %rec.tenant, grace_ms = grace.as_millis() as u64,
                    "no reader within the grace period: canceling abandoned task");
                if let Err(e) = core.cancel(&rec, CancelReason::Abandoned).await {
                    tracing::warn!(task_id = %rec.id, error = %e, "the abandoned task's cancel was not taken");
                }
            }
        });
    }
}

pub struct StreamReader {
    rec: Arc<TaskRecord>,
    after: u64,
    done: bool,
    /// When something (frames or a keep-alive) was last delivered.
    last: Instant,
    keepalive: Option<Pin<Box<Sleep>>>,
    /// Joined before the first token: this reader may time the orchestrator's added
    /// latency when it hands that token out.
    awaits_first_token: bool,
    _guard: ReaderGuard,
}

impl StreamReader {
    /// A reader of `rec` after frame `after`, unless the task has as many readers as
    /// it may have.
    pub(crate) fn open(
        core: Arc<Core>,
        rec: Arc<TaskRecord>,
        after: u64,
    ) -> Result<Self, OrchError> {
        let max = core.cfg.max_readers_per_task;
        if !rec.try_reader_join(max) {
            return Err(OrchError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "task {} already has {max} readers, the most it may have",
                    rec.id
                ),
            )
            .with_policy(PolicyLabel::QuotaReaders)
            .with_retry_after_ms(1000));
        }
        let awaits_first_token = rec.tokens_out() == 0;
        Ok(Self {
            _guard: ReaderGuard {
                core,
                rec: rec.clone(),
            },
            rec,
            after,
            done: false,
            last: Instant::now(),
            keepalive: None,
            awaits_first_token,
        })
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
        mut visit: impl FnMut(FrameRef<'_>),
    ) -> Option<Read> {
        if self.done {
            return None;
        }
        let Self {
            rec,
            after,
            done,
            last,
            keepalive: timer,
            awaits_first_token,
            ..
        } = self;
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(keepalive)));
        std::future::poll_fn(|cx| {
            let mut n = 0;
            let mut terminal = false;
            let mut token = false;
            if let Poll::Ready(v) = rec.log.poll_visit(*after, cx, |f| {
                n += 1;
                terminal |= f.is_terminal();
                token |= *awaits_first_token && f.kind == orch_domain::EventKind::Token;
                visit(f);
            }) {
                *after = v.last;
                *last = Instant::now();
                if token {
                    *awaits_first_token = false;
                    if let Some(ft) = rec.take_first_token() {
                        let ms = ft.before_engine_ms + ft.engine_at.elapsed().as_secs_f64() * 1e3;
                        ft.histogram.record(ms);
                    }
                }
                if n > 0 {
                    *done = terminal;
                    return Poll::Ready(Some(Read::Frames(n)));
                }
                // closed with nothing left (a resume past the terminal frame)
                *done = true;
                return Poll::Ready(None);
            }
            while timer.as_mut().poll(cx).is_ready() {
                let now = Instant::now();
                let due = *last + keepalive;
                if now >= due {
                    *last = now;
                    timer.as_mut().reset(now + keepalive);
                    return Poll::Ready(Some(Read::KeepAlive));
                }
                // frames went out since it was armed: re-arm for the real due time
                timer.as_mut().reset(due);
            }
            Poll::Pending
        })
        .await
    }

    /// Like [`next_with`](Self::next_with), with owned copies of the frames.
    pub async fn next(&mut self, keepalive: Duration) -> Option<ReadItem> {
        let mut frames = Vec::new();
        match self
            .next_with(keepalive, |f| frames.push(f.to_owned()))
            .await?
        {
            Read::Frames(_) => Some(ReadItem::Frames(frames)),
            Read::KeepAlive => Some(ReadItem::KeepAlive),
        }
    }
}
