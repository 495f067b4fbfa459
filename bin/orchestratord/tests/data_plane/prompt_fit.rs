//! A prompt over the context by the 4-bytes-per-token estimate is counted by the
//! pool's engine before it is refused (mock engines count when `tokenizer = true`).

use super::common::*;
use serde_json::json;

/// ctx 64; the mock counts one token per word, plus one.
fn config(tokenizer: bool) -> String {
    config_counting_in(tokenizer, 0)
}

fn config_counting_in(tokenizer: bool, count_ms: u64) -> String {
    mock_config(
        "",
        &format!("slots = 1\ntokens_per_sec = 0.0\nttft_ms = 1\ntokens = 4\nctx_max = 64\ntokenizer = {tokenizer}\ncount_ms = {count_ms}"),
    )
}

/// 1,000 bytes, 3 words: ~250 tokens by the estimate, 4 by the mock's count.
fn padded_prompt() -> String {
    format!("one{}two{}three", " ".repeat(497), " ".repeat(492))
}

#[tokio::test]
async fn a_prompt_over_the_estimate_that_the_engine_counts_as_fitting_is_admitted_and_runs() {
    let s = start(&config(true)).await;
    let p = padded_prompt();
    assert_eq!(p.len(), 1000);
    let (id, _) = s.submit(&task(&p, 4, "interactive")).await;
    let frames = s.stream(&id, None).await;
    assert_terminated(&frames, &id);
    let end = frames.last().unwrap();
    assert_eq!(end.event, "end", "{frames:?}");
    // the engine read the prompt as it counted it
    assert_eq!(end.data["tokens_in"], 4, "{end:?}");
}

#[tokio::test]
async fn a_prompt_the_engine_counts_over_the_context_is_refused_with_its_count() {
    let s = start(&config(true)).await;
    // 100 words: ~125 tokens by the estimate, 101 by the count, over ctx 64 both ways
    let words = vec!["word"; 100].join(" ");
    let v = envelope(
        s.post_raw(&task(&words, 4, "batch")).await,
        400,
        "INVALID_PARAMS",
    )
    .await;
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("101 tokens, counted by the engine") && msg.contains("exceeds ctx 64"),
        "{v}"
    );
}

#[tokio::test]
async fn without_a_tokenizer_the_estimate_refuses_as_before() {
    let s = start(&config(false)).await;
    let v = envelope(
        s.post_raw(&task(&padded_prompt(), 4, "batch")).await,
        400,
        "INVALID_PARAMS",
    )
    .await;
    assert!(
        v["message"].as_str().unwrap().contains("~250 tokens"),
        "{v}"
    );
}

#[tokio::test]
async fn a_prompt_no_tokenizer_could_fit_is_refused_without_counting() {
    let s = start(&config(true)).await;
    // over 32 bytes per token of context: 2 words the mock would count as 3 tokens
    let p = format!("one{}two", " ".repeat(64 * 32));
    let v = envelope(
        s.post_raw(&task(&p, 4, "batch")).await,
        400,
        "INVALID_PARAMS",
    )
    .await;
    assert!(
        v["message"].as_str().unwrap().contains("~514 tokens"),
        "{v}"
    );
    // max_tokens alone over the context: nothing to count either
    let mut big = task(&padded_prompt(), 64, "batch");
    big["priority"] = json!("interactive");
    let v = envelope(s.post_raw(&big).await, 400, "INVALID_PARAMS").await;
    assert!(
        v["message"].as_str().unwrap().contains("~250 tokens"),
        "{v}"
    );
}

#[tokio::test]
async fn a_prompt_that_could_fit_is_admitted_when_no_count_slot_frees_in_time() {
    // the engine takes 8 s to count; eight counts (all a server runs at once) occupy
    // it, so a ninth prompt waits 5 s for a count slot, then is admitted on the least
    // it can be (1,001 bytes at 32 bytes a token: 32 tokens, fits ctx 64) and the
    // engine decides
    let s = start(&config_counting_in(true, 8_000)).await;
    let slow = |n: usize| {
        let s = &s;
        async move {
            let p = format!("{n}{}", padded_prompt());
            let t0 = std::time::Instant::now();
            let (id, _) = s.submit(&task(&p, 4, "batch")).await;
            (id, t0.elapsed())
        }
    };
    let last = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        slow(9).await
    };
    let (counted, last) = tokio::join!(futures_util::future::join_all((1..=8).map(slow)), last);
    let secs = |d: std::time::Duration| d.as_secs_f64();
    // the first eight were counted (8 s); the ninth did not wait for a count
    assert!(counted.iter().all(|c| secs(c.1) >= 7.5), "{counted:?}");
    assert!(
        secs(last.1) >= 4.5 && secs(last.1) < 7.0,
        "admitted after {:?}",
        last.1
    );
    for id in counted.into_iter().map(|c| c.0).chain([last.0]) {
        let frames = s.stream(&id, None).await;
        let end = frames.last().unwrap();
        assert_eq!(end.event, "end", "{frames:?}");
        assert_eq!(end.data["tokens_in"], 4, "{end:?}");
    }
}
