//! Decoding llama-server's streamed `/completion` response (SSE with one JSON chunk
//! per event) into engine events: tokens with contiguous indices, then exactly one
//! `End`, or one error. Whatever the bytes, the result is typed: a malformed event or
//! chunk is a `Protocol` error, a stream cut short a `Reset`, a read timeout a
//! `Timeout`; nothing panics (a property test feeds it arbitrary bytes).

use crate::wire::Chunk;
use adapter_api::{EngineEnd, EngineEvent, EventStream, WorkerError};
use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use orch_domain::FinishReason;
use std::time::Instant;

pub(crate) fn finish_of(stop_type: Option<&str>) -> FinishReason {
    match stop_type {
        Some("eos") => FinishReason::Eos,
        Some("word") => FinishReason::Stop,
        _ => FinishReason::Length,
    }
}

/// Decode `body` (the response's bytes). `guard` lives as long as the stream;
/// `is_timeout` tells a transport timeout from other transport errors.
pub fn decode<S, B, E, G>(body: S, guard: G, is_timeout: fn(&E) -> bool) -> EventStream
where
    S: Stream<Item = Result<B, E>> + Send + Unpin + 'static,
    B: AsRef<[u8]> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
    G: Send + 'static,
{
    let events = body.eventsource();
    let state = (events, guard, 0u32, false, Instant::now(), Vec::new());
    let s = futures_util::stream::unfold(
        state,
        move |(mut events, guard, mut index, done, t0, mut held)| async move {
            if done {
                return None;
            }
            loop {
                let item = match events.next().await {
                    None => {
                        let e =
                            WorkerError::Reset("llama-server closed the stream before stop".into());
                        return Some((Err(e), (events, guard, index, true, t0, held)));
                    }
                    // the client's read timeout (no byte for `read_timeout`) is a
                    // timeout, not a reset: the engine may still be decoding
                    Some(Err(EventStreamError::Transport(e))) if is_timeout(&e) => {
                        let e =
                            WorkerError::Timeout(format!("stream idle past the read timeout: {e}"));
                        return Some((Err(e), (events, guard, index, true, t0, held)));
                    }
                    Some(Err(e)) => {
                        let e = WorkerError::Reset(format!("stream: {e}"));
                        return Some((Err(e), (events, guard, index, true, t0, held)));
                    }
                    Some(Ok(ev)) => ev,
                };
                let chunk: Chunk = match serde_json::from_str(&item.data) {
                    Ok(c) => c,
                    Err(e) => {
                        let e = WorkerError::Protocol(format!("bad chunk: {e}"));
                        return Some((Err(e), (events, guard, index, true, t0, held)));
                    }
                };
                if let Some(err) = chunk.error {
                    let e = WorkerError::Reset(format!("llama-server error: {err}"));
                    return Some((Err(e), (events, guard, index, true, t0, held)));
                }
                if chunk.stop {
                    let timings = chunk.timings.unwrap_or_default();
                    let end = EngineEnd {
                        tokens_in: chunk.tokens_evaluated.or(timings.prompt_n).unwrap_or(0),
                        tokens_out: chunk.tokens_predicted.unwrap_or(index),
                        tokens_cached: timings.cache_n,
                        finish_reason: finish_of(chunk.stop_type.as_deref()),
                        decode_time_ms: t0.elapsed().as_millis() as u64,
                        slot: chunk.id_slot.and_then(|s| u32::try_from(s).ok()),
                    };
                    return Some((
                        Ok(EngineEvent::End(end)),
                        (events, guard, index, true, t0, held),
                    ));
                }
                // ids of tokens whose text the server holds back (a partial UTF-8
                // sequence, a possible stop word) go out with the next text
                held.extend(chunk.tokens.iter().filter_map(|&t| u32::try_from(t).ok()));
                if chunk.content.is_empty() {
                    continue;
                }
                let ev = EngineEvent::Token {
                    text: chunk.content,
                    index,
                    prompt_tokens: chunk.tokens_evaluated,
                    ids: std::mem::take(&mut held),
                };
                index += 1;
                return Some((Ok(ev), (events, guard, index, false, t0, held)));
            }
        },
    );
    Box::pin(s)
}
