//! SSE framing of a task's event log: `event:`/`id:`/`data:` lines per frame, comment
//! keep-alives while waiting, and the headers proxies need to not buffer.

use bytes::Bytes;
use orch_services::{FrameRef, Read, StreamReader};
use std::convert::Infallible;
use std::time::Duration;

pub const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// Append one frame. Event names are static identifiers (`EventKind`) and `data` is one JSON line
/// (serde_json never emits raw newlines), so no field can break the framing. One
/// reservation per frame, no formatter: this runs once per token.
pub fn write_frame(out: &mut String, f: &FrameRef<'_>) {
    let kind = f.kind.as_str();
    out.reserve("event: \nid: \ndata: \n\n".len() + kind.len() + 20 + f.data.len());
    out.push_str("event: ");
    out.push_str(kind);
    out.push_str("\nid: ");
    out.push_str(itoa::Buffer::new().format(f.seq));
    out.push_str("\ndata: ");
    out.push_str(f.data);
    out.push_str("\n\n");
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

#[cfg(test)]
mod tests {
    use super::*;
    use orch_domain::EventKind;

    #[test]
    fn a_frame_is_its_three_lines_and_a_blank_one() {
        for (seq, kind, data) in [
            (1, EventKind::Started, r#"{"queue_position":0}"#),
            (10, EventKind::Token, r#"{"t":"hi","i":9}"#),
            (u64::MAX, EventKind::End, "{}"),
        ] {
            let mut out = String::from("before\n");
            write_frame(&mut out, &FrameRef { seq, kind, data });
            assert_eq!(
                out,
                format!("before\nevent: {kind}\nid: {seq}\ndata: {data}\n\n")
            );
        }
    }
}
