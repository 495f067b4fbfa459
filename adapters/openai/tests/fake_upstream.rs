//! The OpenAI adapter against an axum fake of an OpenAI-compatible server on an
//! ephemeral loopback port: discovery, streamed completions and chats with usage,
//! typed errors, an early close, a slow first token, and an error chunk mid-stream.

use adapter_api::{EngineEvent, EngineRequest, Health, WorkerAdapter, WorkerError};
use adapter_openai::{OpenAiAdapter, OpenAiConfig};
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use orch_domain::{ChatMessage, FinishReason, TaskId};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Normal,
    Status(u16),
    EarlyClose,
    SlowFirst,
    ErrorChunk,
    NoDone,
}

#[derive(Clone)]
struct Fake {
    mode: Mode,
    seen: Arc<Mutex<Vec<(String, Value)>>>,
}

fn sse(lines: Vec<String>, delay_first: Option<Duration>) -> Response {
    let s =
        futures_util::stream::iter(lines.into_iter().enumerate()).then(move |(i, l)| async move {
            if i == 0 {
                if let Some(d) = delay_first {
                    tokio::time::sleep(d).await;
                }
            }
            Ok::<_, std::convert::Infallible>(format!("data: {l}\n\n"))
        });
    let mut r = Response::new(Body::from_stream(s));
    r.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    r
}

async fn generate(State(f): State<Fake>, path: &'static str, body: Value) -> Response {
    f.seen
        .lock()
        .unwrap()
        .push((path.to_string(), body.clone()));
    if let Mode::Status(s) = f.mode {
        return (
            StatusCode::from_u16(s).unwrap(),
            Json(json!({"error": {"message": "nope"}})),
        )
            .into_response();
    }
    let chat = path.contains("chat");
    let piece = |t: &str, fin: Option<&str>| {
        if chat {
            json!({"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": fin}]})
                .to_string()
        } else {
            json!({"choices": [{"index": 0, "text": t, "finish_reason": fin}]}).to_string()
        }
    };
    let mut lines = vec![piece("Hel", None), piece("lo", None)];
    match f.mode {
        Mode::EarlyClose => return sse(lines, None),
        Mode::ErrorChunk => {
            lines.push(json!({"error": {"message": "upstream exploded"}}).to_string());
            return sse(lines, None);
        }
        _ => {}
    }
    lines.push(piece("", Some("length")));
    lines.push(
        json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": 3}}})
        .to_string(),
    );
    if f.mode != Mode::NoDone {
        lines.push("[DONE]".into());
    }
    let delay = (f.mode == Mode::SlowFirst).then(|| Duration::from_millis(800));
    sse(lines, delay)
}

async fn serve(mode: Mode) -> (String, Fake) {
    let fake = Fake {
        mode,
        seen: Arc::new(Mutex::new(Vec::new())),
    };
    let app = Router::new()
        .route(
            "/v1/models",
            get(|State(f): State<Fake>| async move {
                if f.mode == Mode::Status(503) {
                    return (StatusCode::SERVICE_UNAVAILABLE, "loading").into_response();
                }
                Json(json!({"object": "list", "data": [
                    {"id": "up-model", "object": "model", "owned_by": "fake", "max_model_len": 8192}]}))
                .into_response()
            }),
        )
        .route(
            "/v1/completions",
            post(|s: State<Fake>, Json(b): Json<Value>| generate(s, "/v1/completions", b)),
        )
        .route(
            "/v1/chat/completions",
            post(|s: State<Fake>, Json(b): Json<Value>| generate(s, "/v1/chat/completions", b)),
        )
        .with_state(fake.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (format!("http://{addr}"), fake)
}

fn adapter(base: &str) -> OpenAiAdapter {
    let mut c = OpenAiConfig::new(base, "up-model");
    c.read_timeout = Duration::from_millis(300);
    c.slots = 3;
    OpenAiAdapter::new(c).unwrap()
}

fn request(chat: bool) -> EngineRequest {
    EngineRequest {
        task_id: TaskId::new_random(),
        prompt: "Say hello".into(),
        chat: chat.then(|| {
            vec![ChatMessage {
                role: "user".into(),
                content: "Say hello".into(),
            }]
        }),
        max_tokens: 2,
        seed: 5,
        temperature: Some(0.0),
        top_p: None,
        stop: vec!["\n".into()],
        slot: None,
        cache_prompt: true,
        resume: None,
        prompt_ids: None,
    }
}

async fn run(a: &OpenAiAdapter, chat: bool) -> Vec<Result<EngineEvent, WorkerError>> {
    match a.submit(request(chat)).await {
        Ok(s) => s.collect().await,
        Err(e) => vec![Err(e)],
    }
}

#[tokio::test]
async fn discovery_reads_models_and_the_context_length() {
    let (base, _) = serve(Mode::Normal).await;
    let a = adapter(&base);
    assert_eq!(a.health().await.unwrap(), Health::Ready);
    let p = a.properties().await.unwrap();
    assert_eq!(p.engine, "openai");
    assert_eq!(p.model_digest, "openai:up-model");
    assert_eq!(p.ctx_max, 8192);
    assert_eq!(p.slots, 3);
    // a model the server does not list is not ready
    let mut c = OpenAiConfig::new(&base, "other");
    c.read_timeout = Duration::from_millis(300);
    assert!(matches!(
        OpenAiAdapter::new(c).unwrap().health().await,
        Err(WorkerError::Unready(_))
    ));
    let (base, _) = serve(Mode::Status(503)).await;
    assert_eq!(adapter(&base).health().await.unwrap(), Health::Loading);
}

#[tokio::test]
async fn completions_and_chats_stream_tokens_then_end_with_usage() {
    let (base, fake) = serve(Mode::Normal).await;
    let a = adapter(&base);
    for chat in [false, true] {
        let ev = run(&a, chat).await;
        let texts: Vec<String> = ev
            .iter()
            .filter_map(|e| match e {
                Ok(EngineEvent::Token { text, .. }) => Some(text.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(texts, ["Hel", "lo"]);
        match ev.last() {
            Some(Ok(EngineEvent::End(e))) => {
                assert_eq!(
                    (e.tokens_in, e.tokens_out, e.tokens_cached),
                    (7, 2, Some(3))
                );
                assert_eq!(e.finish_reason, FinishReason::Length);
            }
            other => panic!("no end: {other:?}"),
        }
    }
    let seen = fake.seen.lock().unwrap().clone();
    assert_eq!(seen[0].0, "/v1/completions");
    assert_eq!(seen[0].1["prompt"], "Say hello");
    assert_eq!(seen[0].1["stream_options"]["include_usage"], true);
    assert_eq!(seen[0].1["stop"], json!(["\n"]));
    assert_eq!(seen[1].0, "/v1/chat/completions");
    assert_eq!(seen[1].1["messages"][0]["content"], "Say hello");
    assert_eq!(seen[1].1["model"], "up-model");
}

#[tokio::test]
async fn http_errors_are_typed() {
    for (status, want) in [
        (400u16, "rejected"),
        (429, "busy"),
        (500, "reset"),
        (503, "unready"),
    ] {
        let (base, _) = serve(Mode::Status(status)).await;
        let got = run(&adapter(&base), false).await;
        let kind = match &got[0] {
            Err(WorkerError::Rejected(_)) => "rejected",
            Err(WorkerError::Busy) => "busy",
            Err(WorkerError::Reset(_)) => "reset",
            Err(WorkerError::Unready(_)) => "unready",
            other => panic!("{status}: {other:?}"),
        };
        assert_eq!(kind, want, "HTTP {status}");
    }
    let a = adapter("http://127.0.0.1:9");
    assert!(matches!(
        run(&a, false).await[0],
        Err(WorkerError::Connect(_))
    ));
}

#[tokio::test]
async fn an_early_close_or_an_error_chunk_is_a_reset_after_the_tokens() {
    for mode in [Mode::EarlyClose, Mode::ErrorChunk] {
        let (base, _) = serve(mode).await;
        let ev = run(&adapter(&base), true).await;
        assert_eq!(ev.len(), 3, "{ev:?}");
        assert!(matches!(ev[0], Ok(EngineEvent::Token { index: 0, .. })));
        assert!(matches!(ev[1], Ok(EngineEvent::Token { index: 1, .. })));
        assert!(matches!(ev[2], Err(WorkerError::Reset(_))), "{ev:?}");
    }
    // a server that finishes but omits [DONE] still ends cleanly
    let (base, _) = serve(Mode::NoDone).await;
    let ev = run(&adapter(&base), false).await;
    assert!(matches!(ev.last(), Some(Ok(EngineEvent::End(_)))), "{ev:?}");
}

#[tokio::test]
async fn a_slow_first_token_is_a_timeout() {
    let (base, _) = serve(Mode::SlowFirst).await;
    let ev = run(&adapter(&base), false).await;
    assert!(
        matches!(ev.last(), Some(Err(WorkerError::Timeout(_)))),
        "{ev:?}"
    );
}
