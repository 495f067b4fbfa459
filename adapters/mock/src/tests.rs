//! The mock engine's own behaviour: determinism, script, faults, pacing, slots,
//! continuation.

use super::*;
use futures_util::StreamExt;

fn req(max_tokens: u32, seed: i64) -> EngineRequest {
    EngineRequest {
        chat: None,
        task_id: TaskId::new_random(),
        prompt: "hello there".into(),
        max_tokens,
        seed,
        temperature: None,
        top_p: None,
        stop: vec![],
        slot: None,
        cache_prompt: false,
        resume: None,
        prompt_ids: None,
    }
}

async fn collect(e: &MockEngine, r: EngineRequest) -> Vec<Result<EngineEvent, WorkerError>> {
    e.submit(r).await.unwrap().collect().await
}

fn fast() -> MockConfig {
    MockConfig {
        tokens_per_sec: 0.0,
        ttft_ms: 0,
        ..MockConfig::default()
    }
}

#[tokio::test]
async fn deterministic_for_a_seed() {
    let e = MockEngine::new(fast());
    let a = collect(&e, req(5, 7)).await;
    let b = collect(&e, req(5, 7)).await;
    let c = collect(&e, req(5, 8)).await;
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(a.len(), 6);
    assert!(matches!(
        a[5],
        Ok(EngineEvent::End(EngineEnd {
            finish_reason: FinishReason::Length,
            tokens_out: 5,
            ..
        }))
    ));
}

#[tokio::test]
async fn eos_when_max_tokens_exceeds_script() {
    let e = MockEngine::new(MockConfig {
        tokens: 3,
        ..fast()
    });
    let ev = collect(&e, req(10, 1)).await;
    assert!(matches!(
        ev.last(),
        Some(Ok(EngineEvent::End(EngineEnd {
            finish_reason: FinishReason::Eos,
            tokens_out: 3,
            ..
        })))
    ));
}

#[tokio::test]
async fn fails_after_n_tokens() {
    let e = MockEngine::new(MockConfig {
        fail_after_tokens: Some(3),
        ..fast()
    });
    let ev = collect(&e, req(10, 1)).await;
    assert_eq!(ev.len(), 4);
    assert!(matches!(ev[3], Err(WorkerError::Reset(_))));
}

fn texts_and_ids(ev: &[Result<EngineEvent, WorkerError>]) -> (String, Vec<u32>) {
    let (mut text, mut all) = (String::new(), Vec::new());
    for e in ev {
        if let Ok(EngineEvent::Token { text: t, ids, .. }) = e {
            text.push_str(t);
            all.extend(ids);
        }
    }
    (text, all)
}

#[tokio::test]
async fn a_continuation_goes_on_where_the_tokens_so_far_end() {
    let e = MockEngine::new(fast());
    let whole = collect(&e, req(8, 3)).await;
    let (text, ids) = texts_and_ids(&whole);
    assert_eq!(ids.len(), 8);
    let head = collect(&e, req(3, 3)).await;
    let (head_text, head_ids) = texts_and_ids(&head);
    let mut r = req(5, 3);
    r.resume = Some(Resume {
        ids: head_ids.clone(),
        text: head_text.clone(),
    });
    let tail = collect(&e, r).await;
    let (tail_text, tail_ids) = texts_and_ids(&tail);
    assert_eq!(format!("{head_text}{tail_text}"), text);
    assert_eq!([head_ids, tail_ids].concat(), ids);
    assert!(matches!(
        tail.last(),
        Some(Ok(EngineEvent::End(EngineEnd { tokens_out: 5, .. })))
    ));
    // the stream's own indices start at 0
    assert!(matches!(tail[0], Ok(EngineEvent::Token { index: 0, .. })));
}

#[tokio::test]
async fn a_continuation_from_tokens_the_model_did_not_generate_is_refused() {
    let e = MockEngine::new(fast());
    let mut r = req(5, 3);
    r.resume = Some(Resume {
        ids: vec![999],
        text: " nope".into(),
    });
    assert!(matches!(e.submit(r).await, Err(WorkerError::Rejected(_))));
    assert_eq!(e.busy_slots(), 0);
}

#[tokio::test]
async fn slots_are_bounded_and_freed_on_drop() {
    let e = MockEngine::new(MockConfig { slots: 1, ..fast() });
    let s = e.submit(req(3, 1)).await.unwrap();
    assert_eq!(e.busy_slots(), 1);
    assert!(matches!(e.submit(req(3, 1)).await, Err(WorkerError::Busy)));
    drop(s);
    assert_eq!(e.busy_slots(), 0);
    assert!(e.submit(req(3, 1)).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn paces_tokens() {
    let e = MockEngine::new(MockConfig {
        ttft_ms: 100,
        tokens_per_sec: 10.0,
        ..MockConfig::default()
    });
    let t0 = Instant::now();
    let ev = collect(&e, req(3, 1)).await;
    assert_eq!(ev.len(), 4);
    // first token at 100 ms, then 100 ms apart: the third at 300 ms
    assert!(t0.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn names_itself_mock() {
    let e = MockEngine::new(fast());
    assert_eq!(e.engine(), "mock");
    assert_eq!(e.properties().await.unwrap().engine, "mock");
}

#[test]
fn the_fast_prompt_count_agrees_with_the_unicode_one() {
    // words and runs of spaces of every length, across the 64-byte chunks
    let long: String = (0..400)
        .map(|i| {
            format!(
                "{}{}",
                "w".repeat(i % 7 + 1),
                [" ", "\t", "  ", "\n \r"][i % 4]
            )
        })
        .collect();
    // every ASCII byte, in a pseudo-random order, at every offset within 8 bytes
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mixed: String = (0..5000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from((x % 128) as u8)
        })
        .collect();
    for p in [
        "",
        " ",
        "one",
        "  two words  ",
        "a\tb\nc\x0bd\x0ce\rf",
        "trailing space ",
        "many   spaces\n\nbetween",
        "x\x08y\x0ez\x1f w!\x7f",
        "12345678 abcdefgh\tABCDEFG  12345678",
        &long,
        &mixed,
        &"a b ".repeat(65_536),
    ] {
        assert_eq!(
            super::prompt_tokens(p),
            p.split_whitespace().count() as u32 + 1,
            "{p:?}"
        );
    }
}
