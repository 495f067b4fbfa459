//! The per-task event log: the streaming bridge between a running generation and any
//! number of SSE readers.
//!
//! Frames are appended once (serialized to their one-line JSON `data` at append time)
//! and kept while the task table retains the record, so a stream may be opened before
//! dispatch, by several readers at once, and resumed from any sequence id. Appending
//! after a terminal frame (`end`/`error`) is refused: the log enforces "nothing after
//! the end".
//!
//! Storage is one byte buffer of all frames' data plus a small index entry per frame
//! (no allocation per frame; trimmed to size when the log closes). Readers visit frames
//! in place ([`TaskLog::poll_visit`]): no copy per frame on the relay path, and one
//! lock per append and per read (waiting readers' wakers live under the same lock).

use orch_domain::{EventKind, StreamEvent};
use std::cell::RefCell;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// One frame, borrowed from the log: `id: seq`, `event: kind`, `data: data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef<'a> {
    /// 1-based sequence number (the SSE `id`).
    pub seq: u64,
    pub kind: EventKind,
    /// The payload as one line of JSON.
    pub data: &'a str,
}

impl FrameRef<'_> {
    /// Whether this frame ends the stream.
    pub fn is_terminal(&self) -> bool {
        self.kind.is_terminal()
    }

    pub fn to_owned(&self) -> Frame {
        Frame {
            seq: self.seq,
            kind: self.kind,
            data: self.data.to_string(),
        }
    }
}

/// An owned copy of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub seq: u64,
    pub kind: EventKind,
    pub data: String,
}

impl Frame {
    pub fn is_terminal(&self) -> bool {
        self.kind.is_terminal()
    }
}

/// Where a frame's data ends in the buffer, and its kind.
#[derive(Debug, Clone, Copy)]
struct Entry {
    end: u32,
    kind: EventKind,
}

#[derive(Debug, Default)]
struct LogInner {
    data: Vec<u8>,
    index: Vec<Entry>,
    closed: bool,
    /// Readers waiting for the next frame.
    waiters: Vec<Waker>,
}

impl LogInner {
    fn frame(&self, i: usize) -> FrameRef<'_> {
        let start = if i == 0 {
            0
        } else {
            self.index[i - 1].end as usize
        };
        let e = self.index[i];
        let bytes = &self.data[start..e.end as usize];
        FrameRef {
            seq: i as u64 + 1,
            kind: e.kind,
            // written from serde_json output, which is UTF-8
            data: std::str::from_utf8(bytes).unwrap_or("{}"),
        }
    }

    fn visit(&self, after: u64, f: &mut impl FnMut(FrameRef<'_>)) -> Visited {
        let start = (after as usize).min(self.index.len());
        for i in start..self.index.len() {
            f(self.frame(i));
        }
        Visited {
            last: (self.index.len() as u64).max(after),
            closed: self.closed,
        }
    }
}

#[derive(Debug, Default)]
pub struct TaskLog {
    inner: Mutex<LogInner>,
}

thread_local! {
    /// Serialization scratch, so an append allocates nothing of its own.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn write_data(ev: &StreamEvent, out: &mut Vec<u8>) {
    let r = match ev {
        StreamEvent::Started(f) => serde_json::to_writer(&mut *out, f),
        StreamEvent::Token(f) => serde_json::to_writer(&mut *out, f),
        StreamEvent::Metrics(f) => serde_json::to_writer(&mut *out, f),
        StreamEvent::End(f) => serde_json::to_writer(&mut *out, f),
        StreamEvent::Error(f) => serde_json::to_writer(&mut *out, f),
    };
    // Serializing these plain structs cannot fail; keep a valid frame regardless.
    if r.is_err() {
        out.clear();
        out.extend_from_slice(b"{}");
    }
}

/// A frame's data as the log stores it: one line of JSON.
pub fn encode(ev: &StreamEvent) -> String {
    let mut out = Vec::new();
    write_data(ev, &mut out);
    String::from_utf8(out).unwrap_or_else(|_| "{}".into())
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
        // A poisoned log still holds consistent frames (an append is one index push).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append a frame. Returns false (and appends nothing) once the log is closed.
    pub fn push(&self, ev: &StreamEvent) -> bool {
        SCRATCH.with(|s| {
            let mut scratch = s.borrow_mut();
            scratch.clear();
            write_data(ev, &mut scratch);
            self.append(ev.kind(), &scratch)
        })
    }

    /// Append one frame's data of kind `kind` (a terminal one closes the log) and
    /// wake the waiting readers. False when the log is closed.
    fn append(&self, kind: EventKind, data: &[u8]) -> bool {
        let waiters = {
            let mut g = self.lock();
            if g.closed {
                return false;
            }
            g.data.extend_from_slice(data);
            let end = u32::try_from(g.data.len()).unwrap_or(u32::MAX);
            g.index.push(Entry { end, kind });
            if kind.is_terminal() {
                g.closed = true;
                g.data.shrink_to_fit();
                g.index.shrink_to_fit();
            }
            std::mem::take(&mut g.waiters)
        };
        for w in waiters {
            w.wake();
        }
        true
    }

    /// Append a frame already serialized elsewhere (a frame stored by the instance
    /// that ran the task). False when the log is closed.
    pub fn push_stored(&self, kind: EventKind, data: &str) -> bool {
        self.append(kind, data.as_bytes())
    }

    /// Call `f` on each frame with `seq > after`, in order, without copying them.
    pub fn visit_since(&self, after: u64, mut f: impl FnMut(FrameRef<'_>)) -> Visited {
        self.lock().visit(after, &mut f)
    }

    /// Visit the frames with `seq > after` like [`visit_since`](Self::visit_since);
    /// when there are none and the log is open, register `cx`'s waker (woken by the
    /// next append) and return `Pending`. One lock either way.
    pub fn poll_visit(
        &self,
        after: u64,
        cx: &mut Context<'_>,
        mut f: impl FnMut(FrameRef<'_>),
    ) -> Poll<Visited> {
        let mut g = self.lock();
        if after as usize >= g.index.len() && !g.closed {
            if !g.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                g.waiters.push(cx.waker().clone());
            }
            return Poll::Pending;
        }
        Poll::Ready(g.visit(after, &mut f))
    }

    /// Copies of the frames with `seq > after`, and whether the log is closed.
    pub fn since(&self, after: u64) -> (Vec<Frame>, bool) {
        let mut out = Vec::new();
        let v = self.visit_since(after, |f| out.push(f.to_owned()));
        (out, v.closed)
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    pub fn len(&self) -> u64 {
        self.lock().index.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the frames hold (buffer and index capacity).
    pub fn bytes(&self) -> u64 {
        let g = self.lock();
        (g.data.capacity() + g.index.capacity() * std::mem::size_of::<Entry>()) as u64
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
            ids: None,
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
        assert_eq!(f[1].kind, EventKind::End);
        assert!(f[1].is_terminal());
        assert_eq!(log.since(100).0.len(), 0);
        let (all, _) = log.since(0);
        assert_eq!(all[0].data, r#"{"t":"t0","i":0}"#);
        assert!(log.bytes() >= all.iter().map(|f| f.data.len() as u64).sum::<u64>());
    }
}
