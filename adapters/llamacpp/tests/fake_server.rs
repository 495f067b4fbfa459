//! The llama.cpp adapter through its public `WorkerAdapter` API against a fake
//! llama-server (`fake/`): health and properties mapping, streamed completions and the
//! request body, typed errors (mid-stream error, early close, HTTP 400/503/500,
//! timeouts), cancel's idle check on `/slots`, metrics and slot erase.

mod fake;

use adapter_api::{
    EngineEnd, EngineEvent, EngineRequest, EventStream, Health, WorkerAdapter, WorkerError,
};
use adapter_llamacpp::{ClientOptions, LlamaCppAdapter};
use fake::{End, FakeLlama, Reply};
use futures_util::StreamExt;
use orch_domain::{ErrorCode, FinishReason, TaskId};
use std::time::{Duration, Instant};

const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

fn opts() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(5),
        control_timeout: Duration::from_secs(2),
        cancel_verify: Duration::from_secs(2),
        api_key: None,
    }
}

fn adapter(fake: &FakeLlama, opts: ClientOptions) -> LlamaCppAdapter {
    LlamaCppAdapter::new(&fake.url, "fake-model", DIGEST, opts).expect("adapter")
}

fn request() -> EngineRequest {
    EngineRequest {
        chat: None,
        task_id: TaskId::new_random(),
        prompt: "Once upon a time".into(),
        max_tokens: 16,
        seed: 42,
        temperature: None,
        top_p: None,
        stop: Vec::new(),
        slot: None,
        cache_prompt: false,
        resume: None,
        prompt_ids: None,
    }
}

async fn submit(a: &LlamaCppAdapter, req: EngineRequest) -> EventStream {
    match a.submit(req).await {
        Ok(s) => s,
        Err(e) => panic!("submit failed: {e:?}"),
    }
}

async fn submit_err(a: &LlamaCppAdapter, req: EngineRequest) -> WorkerError {
    match a.submit(req).await {
        Ok(_) => panic!("submit succeeded; expected an error"),
        Err(e) => e,
    }
}

async fn next(s: &mut EventStream) -> Option<Result<EngineEvent, WorkerError>> {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("stream stalled past the test's own limit")
}

/// Tokens as `(index, text)`, then the stream's end or error (after which it must end).
async fn drain(mut s: EventStream) -> (Vec<(u32, String)>, Result<EngineEnd, WorkerError>) {
    let mut tokens = Vec::new();
    loop {
        let last = match next(&mut s)
            .await
            .expect("stream ended without End or error")
        {
            Ok(EngineEvent::Token { text, index, .. }) => {
                tokens.push((index, text));
                continue;
            }
            Ok(EngineEvent::End(end)) => Ok(end),
            Err(e) => Err(e),
        };
        assert!(
            next(&mut s).await.is_none(),
            "events after the terminal one"
        );
        return (tokens, last);
    }
}

fn toks(list: &[&str]) -> Vec<(u32, String)> {
    list.iter()
        .enumerate()
        .map(|(i, t)| (i as u32, t.to_string()))
        .collect()
}

#[tokio::test]
async fn health_is_loading_on_503_then_ready_on_200() {
    let fake = FakeLlama::start().await;
    fake.script(|s| s.health.extend([503, 503]));
    let a = adapter(&fake, opts());
    assert_eq!(a.health().await, Ok(Health::Loading));
    assert_eq!(a.health().await, Ok(Health::Loading));
    assert_eq!(a.health().await, Ok(Health::Ready));
}

#[tokio::test]
async fn health_with_another_status_is_a_protocol_error() {
    let fake = FakeLlama::start().await;
    fake.script(|s| s.health.push_back(500));
    let a = adapter(&fake, opts());
    assert!(matches!(a.health().await, Err(WorkerError::Protocol(m)) if m.contains("500")));
}

#[tokio::test]
async fn unreachable_engine_is_a_connect_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let a = LlamaCppAdapter::new(&format!("http://127.0.0.1:{port}"), "m", DIGEST, opts()).unwrap();
    assert!(matches!(a.health().await, Err(WorkerError::Connect(_))));
}

#[tokio::test]
async fn properties_come_from_props_with_the_configured_model_and_digest() {
    let fake = FakeLlama::start().await;
    fake.script(|s| {
        s.props = serde_json::json!({
            "default_generation_settings": {"n_ctx": 2048},
            "total_slots": 4,
            "model_path": "/elsewhere/other.gguf",
            "build_info": "b6500-feedbeef",
        })
    });
    let p = adapter(&fake, opts()).properties().await.unwrap();
    assert_eq!(p.engine, "llamacpp");
    assert_eq!(p.engine_version, "b6500-feedbeef");
    assert_eq!(p.slots, 4);
    assert_eq!(p.ctx_max, 2048);
    // identity is what the launcher computed, not the engine's model_path
    assert_eq!(p.model, "fake-model");
    assert_eq!(p.model_digest, DIGEST);
    // and what the engine computes about its model is its fingerprint
    let fp = p.model_fingerprint.unwrap();
    assert!(
        fp.contains("params=1234567") && fp.contains("vocab=32000/1"),
        "{fp}"
    );
    fake.script(|s| s.meta["n_params"] = serde_json::json!(1234568));
    let other = adapter(&fake, opts()).properties().await.unwrap();
    assert_ne!(other.model_fingerprint.unwrap(), fp);
}

#[tokio::test]
async fn properties_default_when_props_are_sparse() {
    let fake = FakeLlama::start().await;
    fake.script(|s| s.props = serde_json::json!({"total_slots": 0}));
    let p = adapter(&fake, opts()).properties().await.unwrap();
    assert_eq!((p.slots, p.ctx_max), (1, 0));
    assert_eq!(p.engine_version, "unknown");
}

#[tokio::test]
async fn properties_while_loading_are_unready() {
    let fake = FakeLlama::start().await;
    fake.script(|s| s.props_status = 503);
    let err = adapter(&fake, opts()).properties().await.unwrap_err();
    assert!(matches!(err, WorkerError::Unready(_)), "{err:?}");
}

#[tokio::test]
async fn stream_yields_tokens_in_order_then_end_with_engine_counts() {
    let fake = FakeLlama::start().await;
    let mut r = Reply::tokens(&["Hel", "lo", " world"], End::Stop("eos"));
    r.gap = Duration::from_millis(40);
    (r.prompt_tokens, r.cached_tokens) = (7, 3);
    fake.push(r);
    let (tokens, end) = drain(submit(&adapter(&fake, opts()), request()).await).await;
    assert_eq!(tokens, toks(&["Hel", "lo", " world"]));
    let end = end.unwrap();
    // tokens_in is tokens_evaluated (7), not timings.prompt_n (7 - 3 cached)
    assert_eq!(
        (end.tokens_in, end.tokens_out, end.tokens_cached),
        (7, 3, Some(3))
    );
    assert_eq!(end.finish_reason, FinishReason::Eos);
    assert_eq!(end.slot, Some(0));
    // wall time from the response to the stop chunk (3 gaps of 40 ms), not the engine's
    // timings.predicted_ms (1.25)
    assert!(
        (120..5000).contains(&end.decode_time_ms),
        "{}",
        end.decode_time_ms
    );
}

#[tokio::test]
async fn finish_reason_follows_stop_type() {
    let fake = FakeLlama::start().await;
    let a = adapter(&fake, opts());
    for (stop_type, want) in [
        ("eos", FinishReason::Eos),
        ("word", FinishReason::Stop),
        ("limit", FinishReason::Length),
    ] {
        fake.push(Reply::tokens(&["x"], End::Stop(stop_type)));
        let (_, end) = drain(submit(&a, request()).await).await;
        assert_eq!(end.unwrap().finish_reason, want, "stop_type {stop_type}");
    }
}

#[tokio::test]
async fn held_back_empty_chunks_are_skipped_and_indices_stay_contiguous() {
    let fake = FakeLlama::start().await;
    fake.push(Reply::tokens(&["a", "", "b"], End::Stop("limit")));
    let (tokens, end) = drain(submit(&adapter(&fake, opts()), request()).await).await;
    assert_eq!(tokens, toks(&["a", "b"]));
    assert_eq!(
        end.unwrap().tokens_out,
        3,
        "the engine's token count, not the events'"
    );
}

#[tokio::test]
async fn request_body_carries_sampling_slot_and_cache_fields() {
    let fake = FakeLlama::start().await;
    let req = EngineRequest {
        temperature: Some(0.5),
        top_p: Some(0.25),
        stop: vec!["\n".into()],
        slot: Some(1),
        cache_prompt: true,
        ..request()
    };
    let (_, end) = drain(submit(&adapter(&fake, opts()), req).await).await;
    assert_eq!(
        end.unwrap().slot,
        Some(1),
        "the engine ran it in the hinted slot"
    );
    let body = fake.script(|s| s.completions.clone()).pop().unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "prompt": "Once upon a time", "n_predict": 16, "stream": true, "seed": 42,
            "temperature": 0.5, "top_p": 0.25, "stop": ["\n"], "id_slot": 1,
            "cache_prompt": true,
        })
    );
}

#[tokio::test]
async fn token_ids_come_with_their_text_and_held_back_ones_with_the_next() {
    let fake = FakeLlama::start().await;
    // the second token's text is held back (a partial character): its id comes with
    // the third's text
    fake.push(Reply::tokens(&["a", "", "bc", "d"], End::Stop("eos")));
    let mut s = submit(&adapter(&fake, opts()), request()).await;
    let mut got = Vec::new();
    while let Some(Ok(EngineEvent::Token { text, ids, .. })) = next(&mut s).await {
        got.push((text, ids));
    }
    let want = [("a", vec![100]), ("bc", vec![101, 102]), ("d", vec![103])];
    let want: Vec<_> = want.into_iter().map(|(t, i)| (t.to_string(), i)).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_continuation_sends_the_prompt_followed_by_the_ids_so_far() {
    let fake = FakeLlama::start().await;
    let req = EngineRequest {
        max_tokens: 5,
        resume: Some(adapter_api::Resume {
            ids: vec![7, 9],
            text: " and".into(),
        }),
        ..request()
    };
    drain(submit(&adapter(&fake, opts()), req).await)
        .await
        .1
        .unwrap();
    let body = fake.script(|s| s.completions.clone()).pop().unwrap();
    assert_eq!(
        body["prompt"],
        serde_json::json!(["Once upon a time", 7, 9])
    );
    assert_eq!(body["n_predict"], 5);
    // nothing generated yet: the prompt alone, as text
    let req = EngineRequest {
        resume: Some(adapter_api::Resume::default()),
        ..request()
    };
    drain(submit(&adapter(&fake, opts()), req).await)
        .await
        .1
        .unwrap();
    let body = fake.script(|s| s.completions.clone()).pop().unwrap();
    assert_eq!(body["prompt"], "Once upon a time");
}

#[tokio::test]
async fn a_counted_prompt_goes_as_its_ids_to_an_engine_of_the_same_model_only() {
    let fake = FakeLlama::start().await;
    let a = adapter(&fake, opts());
    let count = a.count_tokens("Once".into()).await.unwrap().unwrap();
    let ids = count.ids.clone().expect("llama-server counts with ids");
    assert_eq!((count.n, &*ids.model), (4, DIGEST));
    let req = EngineRequest {
        prompt_ids: Some(ids.clone()),
        resume: Some(adapter_api::Resume {
            ids: vec![7],
            text: " x".into(),
        }),
        ..request()
    };
    drain(submit(&a, req).await).await.1.unwrap();
    let body = fake.script(|s| s.completions.clone()).pop().unwrap();
    // the counted ids, then those generated so far: nothing left to tokenize
    assert_eq!(body["prompt"], serde_json::json!([79, 110, 99, 101, 7]));
    // ids another model's tokenizer made are not this engine's: the text goes
    let other = orch_domain::PromptIds {
        model: "sha256:other".into(),
        ..ids
    };
    let req = EngineRequest {
        prompt_ids: Some(other),
        ..request()
    };
    drain(submit(&a, req).await).await.1.unwrap();
    let body = fake.script(|s| s.completions.clone()).pop().unwrap();
    assert_eq!(body["prompt"], "Once upon a time");
}

#[tokio::test]
async fn request_without_hints_lets_the_server_choose() {
    let fake = FakeLlama::start().await;
    drain(submit(&adapter(&fake, opts()), request()).await)
        .await
        .1
        .unwrap();
    let body = fake.script(|s| s.completions.clone()).pop().unwrap();
    assert_eq!(body["id_slot"], -1);
    assert_eq!(body["cache_prompt"], false);
    for absent in ["temperature", "top_p", "stop"] {
        assert!(body.get(absent).is_none(), "{absent} sent: {body}");
    }
}

#[tokio::test]
async fn seed_keeps_the_low_32_bits_and_never_sends_the_random_sentinel() {
    let fake = FakeLlama::start().await;
    let a = adapter(&fake, opts());
    for seed in [(1i64 << 32) + 5, -1, i64::from(u32::MAX)] {
        drain(submit(&a, EngineRequest { seed, ..request() }).await)
            .await
            .1
            .unwrap();
    }
    let seeds: Vec<_> = fake.script(|s| s.completions.iter().map(|b| b["seed"].clone()).collect());
    assert_eq!(
        seeds,
        [5, 4_294_967_294u64, 4_294_967_294u64].map(serde_json::Value::from)
    );
}

#[tokio::test]
async fn mid_stream_error_chunk_is_a_reset_after_the_tokens() {
    let fake = FakeLlama::start().await;
    fake.push(Reply::tokens(&["a", "b"], End::Error));
    let (tokens, end) = drain(submit(&adapter(&fake, opts()), request()).await).await;
    assert_eq!(tokens, toks(&["a", "b"]));
    let err = end.unwrap_err();
    assert!(
        matches!(&err, WorkerError::Reset(m) if m.contains("fake: decode failed")),
        "{err:?}"
    );
}

#[tokio::test]
async fn early_close_without_stop_is_a_reset() {
    let fake = FakeLlama::start().await;
    fake.push(Reply::tokens(&["a"], End::Close));
    let (tokens, end) = drain(submit(&adapter(&fake, opts()), request()).await).await;
    assert_eq!(tokens, toks(&["a"]));
    let err = end.unwrap_err();
    assert!(
        matches!(&err, WorkerError::Reset(m) if m.contains("before stop")),
        "{err:?}"
    );
}

#[tokio::test]
async fn dropped_connection_mid_stream_is_a_reset() {
    let fake = FakeLlama::start().await;
    fake.push(Reply::tokens(&["a"], End::Abort));
    let (tokens, end) = drain(submit(&adapter(&fake, opts()), request()).await).await;
    assert_eq!(tokens, toks(&["a"]));
    assert!(matches!(end, Err(WorkerError::Reset(_))), "{end:?}");
}

#[tokio::test]
async fn http_400_is_rejected_and_not_retriable_elsewhere() {
    let fake = FakeLlama::start().await;
    fake.push(Reply::status(400));
    let err = submit_err(&adapter(&fake, opts()), request()).await;
    assert!(
        matches!(&err, WorkerError::Rejected(m) if m.contains("400") && m.contains("context size")),
        "{err:?}"
    );
    assert!(!err.retriable_elsewhere());
    assert_eq!(err.code(), ErrorCode::InvalidParams);
}

#[tokio::test]
async fn http_503_is_unready_and_retriable_elsewhere() {
    let fake = FakeLlama::start().await;
    fake.push(Reply::status(503));
    let err = submit_err(&adapter(&fake, opts()), request()).await;
    assert!(
        matches!(&err, WorkerError::Unready(m) if m.contains("Loading model")),
        "{err:?}"
    );
    assert!(err.retriable_elsewhere());
}

#[tokio::test]
async fn http_500_is_a_reset() {
    let fake = FakeLlama::start().await;
    fake.push(Reply::status(500));
    let err = submit_err(&adapter(&fake, opts()), request()).await;
    assert!(matches!(err, WorkerError::Reset(_)), "{err:?}");
}

fn short_read() -> ClientOptions {
    ClientOptions {
        read_timeout: Duration::from_millis(300),
        ..opts()
    }
}

#[tokio::test]
async fn slow_response_headers_time_out_on_submit() {
    let fake = FakeLlama::start().await;
    let mut r = Reply::tokens(&["late"], End::Stop("eos"));
    r.head_delay = Duration::from_secs(5);
    fake.push(r);
    let t0 = Instant::now();
    let err = submit_err(&adapter(&fake, short_read()), request()).await;
    assert!(matches!(err, WorkerError::Timeout(_)), "{err:?}");
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn slow_first_token_after_headers_is_a_timeout() {
    let fake = FakeLlama::start().await;
    let mut r = Reply::tokens(&["late"], End::Stop("eos"));
    r.first_delay = Duration::from_secs(5);
    fake.push(r);
    let t0 = Instant::now();
    let (tokens, end) = drain(submit(&adapter(&fake, short_read()), request()).await).await;
    assert!(tokens.is_empty());
    assert!(matches!(end, Err(WorkerError::Timeout(_))), "{end:?}");
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn stall_between_tokens_is_a_timeout() {
    let fake = FakeLlama::start().await;
    fake.push(Reply::tokens(&["a"], End::Hang));
    let (tokens, end) = drain(submit(&adapter(&fake, short_read()), request()).await).await;
    assert_eq!(tokens, toks(&["a"]));
    let err = end.unwrap_err();
    assert!(matches!(err, WorkerError::Timeout(_)), "{err:?}");
    assert_eq!(err.code(), ErrorCode::DecodeTimeout);
}

/// A long stream: 1000 tokens, 20 ms apart.
fn long_reply() -> Reply {
    let words = vec!["w"; 1000];
    let mut r = Reply::tokens(&words, End::Stop("limit"));
    r.gap = Duration::from_millis(20);
    r
}

#[tokio::test]
async fn cancel_returns_once_slots_show_the_dropped_stream_idle() {
    let fake = FakeLlama::start().await;
    fake.push(long_reply());
    let a = adapter(&fake, opts());
    let mut s = submit(&a, request()).await;
    for _ in 0..2 {
        assert!(matches!(
            next(&mut s).await,
            Some(Ok(EngineEvent::Token { .. }))
        ));
    }
    assert_eq!(a.processing_slots().await, Ok(1));
    drop(s);
    let t0 = Instant::now();
    a.cancel(TaskId::new_random()).await.unwrap();
    assert!(t0.elapsed() < opts().cancel_verify);
    assert_eq!(a.processing_slots().await, Ok(0));
    assert_eq!(
        fake.script(|s| s.aborted),
        1,
        "the engine saw the request go away"
    );
}

#[tokio::test]
async fn cancel_does_not_wait_for_our_other_open_streams() {
    let fake = FakeLlama::start().await;
    fake.push(long_reply());
    let a = adapter(&fake, opts());
    let mut other = submit(&a, request()).await;
    assert!(matches!(
        next(&mut other).await,
        Some(Ok(EngineEvent::Token { .. }))
    ));
    let t0 = Instant::now();
    a.cancel(TaskId::new_random()).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(
        a.processing_slots().await,
        Ok(1),
        "the other stream still decodes"
    );
}

#[tokio::test]
async fn cancel_times_out_while_the_engine_keeps_a_slot_processing() {
    let fake = FakeLlama::start().await;
    fake.script(|s| s.stuck_slots = 1);
    let a = adapter(
        &fake,
        ClientOptions {
            cancel_verify: Duration::from_millis(200),
            ..opts()
        },
    );
    let t0 = Instant::now();
    let err = a.cancel(TaskId::new_random()).await.unwrap_err();
    assert!(matches!(err, WorkerError::Timeout(_)), "{err:?}");
    assert!(t0.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn metrics_text_is_the_engine_exposition() {
    let fake = FakeLlama::start().await;
    let text =
        "# TYPE llamacpp:tokens_predicted_total counter\nllamacpp:tokens_predicted_total 7\n";
    fake.script(|s| s.metrics = text.into());
    assert_eq!(
        adapter(&fake, opts()).metrics_text().await,
        Ok(Some(text.to_string()))
    );
}

#[tokio::test]
async fn erase_slot_posts_the_erase_action() {
    let fake = FakeLlama::start().await;
    adapter(&fake, opts()).erase_slot(1).await.unwrap();
    assert_eq!(
        fake.script(|s| s.slot_posts.clone()),
        ["/slots/1?action=erase"]
    );
}
