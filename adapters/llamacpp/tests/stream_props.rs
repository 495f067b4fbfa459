//! Property-based fuzzing of the llama-server stream decoder: arbitrary bytes, split
//! anywhere, always give typed events (tokens with contiguous indices, then at most
//! one terminal `End` or error, last), and a well-formed stream split at arbitrary
//! points gives back exactly its tokens and its end.

use adapter_api::{EngineEvent, WorkerError};
use adapter_llamacpp::stream::decode;
use futures_util::StreamExt;
use proptest::prelude::*;

type Item = Result<EngineEvent, WorkerError>;

#[derive(Debug)]
struct Never;

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("never")
    }
}

fn run(chunks: Vec<Vec<u8>>) -> Vec<Item> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async move {
        let body = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, Never>));
        decode(body, (), |_| false).collect::<Vec<_>>().await
    })
}

/// Tokens first (indices 0, 1, …), then at most one terminal item, which is last.
fn well_ordered(items: &[Item]) -> Result<(), String> {
    let mut next = 0u32;
    for (i, it) in items.iter().enumerate() {
        let last = i + 1 == items.len();
        match it {
            Ok(EngineEvent::Token { index, .. }) => {
                if *index != next {
                    return Err(format!("token {index} where {next} was due"));
                }
                next += 1;
            }
            Ok(EngineEvent::End(_)) | Err(_) if !last => {
                return Err(format!("terminal item at {i} of {}", items.len()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Split `bytes` at the given cut points.
fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut out = Vec::new();
    let mut prev = 0;
    for c in at.into_iter().chain([bytes.len()]) {
        out.push(bytes[prev..c].to_vec());
        prev = c;
    }
    out
}

/// Pieces of SSE that look like llama-server's, to reach deep into the decoder.
fn sse_piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"data: {\"content\":\"a\",\"stop\":false}\n\n".to_vec()),
        Just(b"data: {\"content\":\"\",\"stop\":true,\"stop_type\":\"eos\",\"tokens_predicted\":2}\n\n".to_vec()),
        Just(b"data: {\"error\":{\"message\":\"x\"}}\n\n".to_vec()),
        Just(b"data: [DONE]\n\n".to_vec()),
        Just(b": keep-alive\n\n".to_vec()),
        Just(b"event: x\nid: 1\nretry: 5\n".to_vec()),
        Just(b"data: {\"content\":".to_vec()),
        Just(b"\r\n".to_vec()),
        prop::collection::vec(any::<u8>(), 0..24),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_give_typed_well_ordered_events(
        pieces in prop::collection::vec(sse_piece(), 0..12),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let bytes: Vec<u8> = pieces.concat();
        let items = run(split(&bytes, &cuts));
        prop_assert!(well_ordered(&items).is_ok(), "{:?}: {items:?}", well_ordered(&items));
        // the input ends, so the stream ends with a terminal item
        let last = items.last();
        prop_assert!(matches!(last, Some(Ok(EngineEvent::End(_))) | Some(Err(_))), "{items:?}");
    }

    #[test]
    fn a_well_formed_stream_split_anywhere_gives_back_its_tokens_and_end(
        texts in prop::collection::vec("\\PC{1,6}", 0..20),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let mut bytes = Vec::new();
        for t in &texts {
            let chunk = serde_json::json!({"content": t, "stop": false, "tokens_evaluated": 7});
            bytes.extend_from_slice(format!("data: {chunk}\n\n").as_bytes());
        }
        let end = serde_json::json!({"content": "", "stop": true, "stop_type": "eos",
            "tokens_predicted": texts.len(), "tokens_evaluated": 7});
        bytes.extend_from_slice(format!("data: {end}\n\n").as_bytes());
        let items = run(split(&bytes, &cuts));
        let mut got = Vec::new();
        for it in &items[..items.len() - 1] {
            match it {
                Ok(EngineEvent::Token { text, prompt_tokens, .. }) => {
                    prop_assert_eq!(*prompt_tokens, Some(7));
                    got.push(text.clone());
                }
                other => prop_assert!(false, "unexpected {other:?}"),
            }
        }
        prop_assert_eq!(got, texts.clone());
        match items.last() {
            Some(Ok(EngineEvent::End(e))) => {
                prop_assert_eq!(e.tokens_out as usize, texts.len());
                prop_assert_eq!(e.tokens_in, 7);
            }
            other => prop_assert!(false, "no end: {other:?}"),
        }
    }
}
