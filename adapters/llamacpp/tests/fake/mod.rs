//! A scriptable fake of llama-server's native HTTP API (`/health`, `/props`, `/slots`,
//! `/slots/{id}?action=erase`, `/completion` streamed as SSE, `/metrics`) on an
//! ephemeral loopback port, so adapter tests need no real engine.
//!
//! Each test scripts the shared [`Script`]: the `/health` status sequence, the `/props`
//! answer, and one [`Reply`] per `/completion` (token stream, mid-stream error, early
//! close, dropped connection, HTTP error, slow headers or first token, hang). `/slots`
//! reflects the completions in flight; request bodies are recorded for assertions.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a stream ends after its tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum End {
    /// The final `stop: true` chunk with this `stop_type` and timings.
    Stop(&'static str),
    /// `data: {"error": {...}}`, then the body ends.
    Error,
    /// The body ends cleanly without a stop chunk.
    Close,
    /// The connection is dropped mid-body (no chunked terminator).
    Abort,
    /// Nothing more is sent; the connection stays open.
    Hang,
}

/// The fake's answer to one `POST /completion`.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Non-200 answers carry llama-server's JSON error body and nothing else.
    pub status: u16,
    /// Delay before the response headers.
    pub head_delay: Duration,
    /// Delay after the headers before the first chunk.
    pub first_delay: Duration,
    /// Delay before each later chunk.
    pub gap: Duration,
    /// One `data:` chunk per entry ("" is a token whose text is held back).
    pub tokens: Vec<String>,
    pub end: End,
    pub prompt_tokens: u32,
    pub cached_tokens: u32,
}

impl Reply {
    pub fn tokens(tokens: &[&str], end: End) -> Self {
        Self {
            status: 200,
            head_delay: Duration::ZERO,
            first_delay: Duration::ZERO,
            gap: Duration::ZERO,
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            end,
            prompt_tokens: 5,
            cached_tokens: 0,
        }
    }

    pub fn status(status: u16) -> Self {
        Self {
            status,
            ..Self::tokens(&[], End::Close)
        }
    }
}

/// What a test scripts and inspects. Locked briefly; never held across an await.
pub struct Script {
    /// `/health` statuses to answer in order; 200 once empty.
    pub health: VecDeque<u16>,
    pub props_status: u16,
    pub props: Value,
    /// The `meta` of `/v1/models` (the model metadata the engine reports).
    pub meta: Value,
    pub metrics: String,
    /// `/completion` replies in order; `Reply::tokens(["Hello", " world"], eos)` once empty.
    pub replies: VecDeque<Reply>,
    /// Completion in flight per slot (`/slots` `is_processing`).
    pub busy: Vec<bool>,
    /// Slots `/slots` reports processing regardless of completions (a stuck engine).
    pub stuck_slots: usize,
    /// JSON bodies of `/completion` requests, in arrival order.
    pub completions: Vec<Value>,
    /// Paths and queries of `/slots/{id}` POSTs.
    pub slot_posts: Vec<String>,
    /// Completions whose client went away before the server finished the stream.
    pub aborted: u32,
}

type Shared = Arc<Mutex<Script>>;

pub struct FakeLlama {
    pub url: String,
    script: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeLlama {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeLlama {
    /// A ready fake with 2 slots of 1024 tokens.
    pub async fn start() -> Self {
        let script = Arc::new(Mutex::new(Script {
            health: VecDeque::new(),
            props_status: 200,
            props: json!({
                "default_generation_settings": {"n_ctx": 1024, "params": {"n_predict": -1}},
                "total_slots": 2,
                "model_path": "/models/fake.gguf",
                "build_info": "b6123-0123abcd",
            }),
            meta: json!({"vocab_type": 1, "n_vocab": 32000, "n_ctx_train": 4096, "n_embd": 256,
                         "n_params": 1234567, "size": 7654321, "ftype": "Q4_K - Medium"}),
            metrics:
                "# TYPE llamacpp:prompt_tokens_total counter\nllamacpp:prompt_tokens_total 42\n"
                    .into(),
            replies: VecDeque::new(),
            busy: vec![false; 2],
            stuck_slots: 0,
            completions: Vec::new(),
            slot_posts: Vec::new(),
            aborted: 0,
        }));
        let app = Router::new()
            .route("/health", get(health))
            .route("/props", get(props))
            .route("/v1/models", get(models))
            .route("/tokenize", post(tokenize))
            .route("/slots", get(slots))
            .route("/slots/{id}", post(slot_action))
            .route("/completion", post(completion))
            .route("/metrics", get(metrics))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake llama-server");
        });
        Self {
            url,
            script,
            server,
        }
    }

    /// Read or change the script.
    pub fn script<R>(&self, f: impl FnOnce(&mut Script) -> R) -> R {
        f(&mut self.script.lock().expect("script lock"))
    }

    pub fn push(&self, reply: Reply) {
        self.script(|s| s.replies.push_back(reply));
    }
}

fn error_body(code: u16) -> Value {
    let (message, kind) = match code {
        400 => (
            "the request exceeds the available context size",
            "invalid_request_error",
        ),
        503 => ("Loading model", "unavailable_error"),
        _ => ("internal error", "server_error"),
    };
    json!({"error": {"code": code, "message": message, "type": kind}})
}

fn status_json(code: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(code).expect("valid status");
    (status, Json(body)).into_response()
}

async fn health(State(s): State<Shared>) -> Response {
    let code = s.lock().expect("lock").health.pop_front().unwrap_or(200);
    match code {
        200 => status_json(200, json!({"status": "ok"})),
        c => status_json(c, error_body(c)),
    }
}

async fn props(State(s): State<Shared>) -> Response {
    let s = s.lock().expect("lock");
    match s.props_status {
        200 => status_json(200, s.props.clone()),
        c => status_json(c, error_body(c)),
    }
}

async fn models(State(s): State<Shared>) -> Response {
    let s = s.lock().expect("lock");
    status_json(
        200,
        json!({"object": "list", "data": [{"id": "fake", "meta": s.meta.clone()}]}),
    )
}

/// A fake tokenizer: one token per character, its code point.
async fn tokenize(Json(body): Json<Value>) -> Response {
    let text = body["content"].as_str().unwrap_or_default();
    let tokens: Vec<u32> = text.chars().map(u32::from).collect();
    status_json(200, json!({"tokens": tokens}))
}

async fn slots(State(s): State<Shared>) -> Response {
    let s = s.lock().expect("lock");
    let slots: Vec<Value> = (0..s.busy.len())
        .map(|i| json!({"id": i, "id_task": -1, "n_ctx": 1024, "is_processing": s.busy[i] || i < s.stuck_slots}))
        .collect();
    status_json(200, Value::Array(slots))
}

async fn slot_action(State(s): State<Shared>, uri: Uri) -> Response {
    s.lock().expect("lock").slot_posts.push(uri.to_string());
    status_json(200, json!({"id_slot": 0, "n_erased": 0}))
}

async fn metrics(State(s): State<Shared>) -> String {
    s.lock().expect("lock").metrics.clone()
}

/// Frees its slot when the response body is dropped (finished, or the client left).
struct SlotGuard {
    script: Shared,
    slot: usize,
    finished: bool,
}

impl SlotGuard {
    /// The server ended the stream itself: not a client abort.
    fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Ok(mut s) = self.script.lock() {
            s.busy[self.slot] = false;
            if !self.finished {
                s.aborted += 1;
            }
        }
    }
}

enum Step {
    Data(Value),
    Abort,
    Hang,
}

async fn completion(State(s): State<Shared>, Json(body): Json<Value>) -> Response {
    let (reply, slot) = {
        let mut st = s.lock().expect("lock");
        st.completions.push(body.clone());
        let reply = st
            .replies
            .pop_front()
            .unwrap_or_else(|| Reply::tokens(&["Hello", " world"], End::Stop("eos")));
        let wanted = body["id_slot"]
            .as_i64()
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < st.busy.len());
        let slot = wanted
            .or_else(|| st.busy.iter().position(|b| !b))
            .unwrap_or(0);
        if reply.status == 200 {
            st.busy[slot] = true;
        }
        (reply, slot)
    };
    if reply.status != 200 {
        return status_json(reply.status, error_body(reply.status));
    }
    let guard = SlotGuard {
        script: s,
        slot,
        finished: false,
    };
    tokio::time::sleep(reply.head_delay).await;
    let (first_delay, gap) = (reply.first_delay, reply.gap);
    let steps = plan(&reply, slot);
    let stream = futures_util::stream::unfold(
        (steps, guard, true),
        move |(mut steps, mut guard, first)| async move {
            let Some(step) = steps.pop_front() else {
                guard.finish();
                return None;
            };
            tokio::time::sleep(if first { first_delay } else { gap }).await;
            let next = match step {
                Step::Data(v) => Ok(Bytes::from(format!("data: {v}\n\n"))),
                Step::Abort => {
                    guard.finish();
                    Err(std::io::Error::other("fake: connection dropped"))
                }
                Step::Hang => std::future::pending().await,
            };
            Some((next, (steps, guard, false)))
        },
    );
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .expect("response")
}

/// The chunks llama-server would send for `reply` (shapes as in its `/completion`).
fn plan(reply: &Reply, slot: usize) -> VecDeque<Step> {
    let n = reply.tokens.len() as u32;
    let mut steps: VecDeque<Step> = reply
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Step::Data(
                json!({"index": 0, "content": t, "tokens": [100 + i], "stop": false, "id_slot": -1,
                "tokens_predicted": i + 1, "tokens_evaluated": reply.prompt_tokens}),
            )
        })
        .collect();
    steps.push_back(match reply.end {
        End::Stop(stop_type) => Step::Data(json!({
            "content": "", "id_slot": slot, "stop": true, "model": "fake",
            "tokens_predicted": n, "tokens_evaluated": reply.prompt_tokens,
            "stop_type": stop_type, "stopping_word": "", "truncated": false,
            "tokens_cached": reply.prompt_tokens + n,
            "timings": {"cache_n": reply.cached_tokens,
                "prompt_n": reply.prompt_tokens - reply.cached_tokens, "prompt_ms": 3.5,
                "predicted_n": n, "predicted_ms": 1.25},
        })),
        End::Error => Step::Data(json!({"error": {"code": 500,
            "message": "fake: decode failed", "type": "server_error"}})),
        End::Close => return steps,
        End::Abort => Step::Abort,
        End::Hang => Step::Hang,
    });
    steps
}
