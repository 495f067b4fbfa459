//! A prompt over the context by the 4-bytes-per-token estimate is counted by the real
//! engine's tokenizer (`POST /tokenize`) before it is refused.

use super::common::llama::*;
use super::common::*;
use super::SERIAL;

#[tokio::test]
async fn the_real_engine_counts_a_padded_prompt_that_the_estimate_would_refuse() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_engine();
    // one slot of 1,024 tokens
    let s = start(&llama_config(1, 1, 2, "")).await;
    // 8,138 bytes (~2,035 tokens by the estimate), mostly an indented document's
    // padding, which Gemma's tokenizer takes up to 31 spaces at a time
    let mut p = String::from("Numbers:\n");
    for n in 1..=40 {
        p.push_str(&" ".repeat(200));
        p.push_str(&format!("{n}\n"));
    }
    p.push_str("The next number is");
    assert!(p.len() > 8_000, "{}", p.len());
    let (id, _) = s.submit(&llama_task(&p, 3)).await;
    let frames = s.stream(&id, None).await;
    let end = frames.last().unwrap();
    assert_eq!(end.event, "end", "{frames:?}");
    let tokens_in = end.data["tokens_in"].as_u64().unwrap();
    assert!(
        (100..1_000).contains(&tokens_in),
        "the engine read {tokens_in} tokens of {} bytes",
        p.len()
    );

    // prose over the context by the count too: refused before enqueue, with the count
    let words = vec!["word"; 1_100].join(" ");
    let v = envelope(
        s.post_raw(&llama_task(&words, 3)).await,
        400,
        "INVALID_PARAMS",
    )
    .await;
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("counted by the engine") && msg.contains("exceeds ctx 1024"),
        "{v}"
    );
    s.assert_all_terminated().await;
}
