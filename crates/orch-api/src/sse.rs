//! SSE framing of a task's event log: `event:`/`id:`/`data:` lines per frame, comment
//! keep-alives while waiting, and the headers proxies need to not buffer.

use bytes::Bytes;
use orch_services::{FrameRef, Read, StreamReader};
use std::convert::Infallible;
use std::fmt::Write;
use std::time::Duration;

pub const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// Append one frame. Event names are static identifiers (`EventKind`) and `data` is one JSON line
/// (serde_json never emits raw newlines), so no field can break the framing.
pub fn write_frame(out: &mut String, f: &FrameRef<'_>) {
    let _ = write!(
        out,
        "event: {}\nid: {}\ndata: {}\n\n",
        f.kind, f.seq, f.data
    );
}

/// The response body: all frames from the reader, batched per wake-up and written
/// straight from the task log into one buffer.
pub fn body_stream(
    reader: StreamReader,
    keepalive: Duration,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send {
    futures_util::stream::unfold(reader, move |mut r| async move {
        let mut s = String::new();
        let chunk = match r.next_with(keepalive, |f| write_frame(&mut s, &f)).await? {
            Read::KeepAlive => Bytes::from_static(KEEPALIVE),
            Read::Frames(_) => Bytes::from(s),
        };
        Some((Ok(chunk), r))
    })
}
