//! The per-task event log: the streaming bridge between a running generation and any
//! number of SSE readers.
//!
//! Frames are appended once (serialized to their one-line JSON `data` at append time)
//! and kept while the task table retains the record, so a stream may be opened before
//! dispatch, by several readers at once, and resumed from any sequence id. Appending
//! after a terminal frame (`end`/`error`) is refused: the log enforces "nothing after
//! the end". Readers visit frames in place ([`TaskLog::poll_visit`]): no copy per
//! frame on the relay path, and one lock per append and per read (waiting readers'
//! wakers live under the same lock as the frames).

use orch_domain::StreamEvent;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// One SSE frame: `id: seq`, `event: event`, `data: data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// 1-based sequence number (the SSE `id`).
    pub seq: u64,
    pub event: &'static str,
    /// The payload as one line of JSON.
    pub data: String,
}

impl Frame {
    /// Whether this frame ends the stream.
    pub fn is_terminal(&self) -> bool {
        matches!(self.event, "end" | "error")
    }
}

/// Bytes a frame costs beyond its data (the struct and vector slot).
const FRAME_OVERHEAD: u64 = std::mem::size_of::<Frame>() as u64;

#[derive(Debug, Default)]
struct LogInner {
    frames: Vec<Frame>,
    closed: bool,
    bytes: u64,
    /// Readers waiting for the next frame.
    waiters: Vec<Waker>,
}

#[derive(Debug, Default)]
pub struct TaskLog {
    inner: Mutex<LogInner>,
}

fn data_json(ev: &StreamEvent) -> String {
    let r = match ev {
        StreamEvent::Started(f) => serde_json::to_string(f),
        StreamEvent::Token(f) => serde_json::to_string(f),
        StreamEvent::Metrics(f) => serde_json::to_string(f),
        StreamEvent::End(f) => serde_json::to_string(f),
        StreamEvent::Error(f) => serde_json::to_string(f),
    };
    // Serializing these plain structs cannot fail; keep a valid frame regardless.
    r.unwrap_or_else(|_| "{}".to_string())
}

/// What a visit saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visited {
    /// Sequence of the last frame visited (`after` when none).
    pub last: u64,
    /// The log is closed (its terminal frame exists).
    pub closed: bool,
}

impl TaskLog {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, LogInner> {
        // A poisoned log still holds consistent frames (pushes are single statements).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append a frame. Returns false (and appends nothing) once the log is closed.
    pub fn push(&self, ev: &StreamEvent) -> bool {
        let data = data_json(ev);
        let waiters = {
            let mut g = self.lock();
            if g.closed {
                return false;
            }
            let seq = g.frames.len() as u64 + 1;
            g.bytes += data.len() as u64 + FRAME_OVERHEAD;
            g.frames.push(Frame {
                seq,
                event: ev.name(),
                data,
            });
            g.closed = ev.is_terminal();
            std::mem::take(&mut g.waiters)
        };
        for w in waiters {
            w.wake();
        }
        true
    }

    /// Call `f` on each frame with `seq > after`, in order, without copying them.
    pub fn visit_since(&self, after: u64, mut f: impl FnMut(&Frame)) -> Visited {
        let g = self.lock();
        let start = (after as usize).min(g.frames.len());
        for fr in &g.frames[start..] {
            f(fr);
        }
        Visited {
            last: (g.frames.len() as u64).max(after),
            closed: g.closed,
        }
    }

    /// Visit the frames with `seq > after` like [`visit_since`](Self::visit_since);
    /// when there are none and the log is open, register `cx`'s waker (woken by the
    /// next append) and return `Pending`. One lock either way.
    pub fn poll_visit(
        &self,
        after: u64,
        cx: &mut Context<'_>,
        mut f: impl FnMut(&Frame),
    ) -> Poll<Visited> {
        let mut g = self.lock();
        let start = (after as usize).min(g.frames.len());
        if start == g.frames.len() && !g.closed {
            if !g.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                g.waiters.push(cx.waker().clone());
            }
            return Poll::Pending;
        }
        for fr in &g.frames[start..] {
            f(fr);
        }
        Poll::Ready(Visited {
            last: (g.frames.len() as u64).max(after),
            closed: g.closed,
        })
    }

    /// Copies of the frames with `seq > after`, and whether the log is closed.
    pub fn since(&self, after: u64) -> (Vec<Frame>, bool) {
        let mut out = Vec::new();
        let v = self.visit_since(after, |f| out.push(f.clone()));
        (out, v.closed)
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    pub fn len(&self) -> u64 {
        self.lock().frames.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the frames take (data plus per-frame overhead).
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_domain::{EndFrame, FinishReason, TokenFrame};

    fn tok(i: u32) -> StreamEvent {
        StreamEvent::Token(TokenFrame {
            t: format!("t{i}"),
            i,
        })
    }

    #[test]
    fn replays_from_any_id_and_refuses_after_terminal() {
        let log = TaskLog::new();
        for i in 0..3 {
            assert!(log.push(&tok(i)));
        }
        let end = StreamEvent::End(EndFrame {
            tokens_in: 1,
            tokens_out: 3,
            decode_time_ms: 1,
            ttft_ms: 1,
            finish_reason: FinishReason::Length,
            tokens_cached: None,
        });
        assert!(log.push(&end));
        assert!(!log.push(&tok(9)));
        let (f, closed) = log.since(2);
        assert!(closed);
        assert_eq!(f.iter().map(|f| f.seq).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(f[0].data, r#"{"t":"t2","i":2}"#);
        assert_eq!(f[1].event, "end");
        assert!(f[1].is_terminal());
        assert_eq!(log.since(100).0.len(), 0);
        assert!(log.bytes() > 4 * FRAME_OVERHEAD);
    }
}
