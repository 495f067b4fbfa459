//! The floor: the least an HTTP front can do for orchestratord's flow, run as its own
//! process (`orch-bench floor-server --addr HOST:PORT --tokens-per-sec X --tokens N
//! [--ttft-ms M]`) so its CPU and RSS are read from /proc like orchestratord's.
//!
//! `POST /v1/tasks` parses the JSON body into the same typed request orchestratord
//! reads (`orch_domain::TaskRequest`, unknown fields refused) and checks it the same way
//! (`validate`), counts the prompt's tokens as the mock engine does (an engine reads
//! its prompt whoever sends it; orchestratord's mock runs in its process, so without
//! this the floor would skip the engine's share of the work: since 2026-12-03), stores
//! a generator state (start time, token count) under a fresh
//! random task id (`TaskId::new_random`, as orchestratord draws them) and answers 202
//! with the same-shaped JSON and a `Location`; `GET /v1/tasks/{id}/stream` takes that state and writes `started`, one
//! `token` frame per body chunk paced like the mock engine (token `i` is due at
//! `start + ttft + i / tokens_per_sec`; 0 = unpaced), then `end`. Same axum/hyper
//! (HTTP/1, `TCP_NODELAY` on accepted sockets), same multi-threaded tokio runtime.
//! No queue, no task log, no resume, no cancel: a task never streamed stays in the map.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use bytes::Bytes;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Token pace shared by the floor and the mock engine of one scenario.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Tokens per second per stream; 0 = as fast as possible.
    pub tokens_per_sec: f64,
    pub ttft_ms: u64,
    /// Tokens per task (when `max_tokens` allows that many).
    pub tokens: u32,
}

impl Pace {
    /// The `floor-server` arguments for this pace.
    pub fn args(&self) -> String {
        format!(
            "--tokens-per-sec {:.3} --ttft-ms {} --tokens {}",
            self.tokens_per_sec, self.ttft_ms, self.tokens
        )
    }

    /// The `[pools.mock]` keys (adapters/mock `MockConfig`) for this pace.
    pub fn mock_toml(&self, slots: u32) -> String {
        format!(
            "slots = {slots}\ntokens_per_sec = {:.3}\nttft_ms = {}\ntokens = {}",
            self.tokens_per_sec, self.ttft_ms, self.tokens
        )
    }

    fn due(&self, start: Instant, i: u32) -> Instant {
        let mut d = Duration::from_millis(self.ttft_ms);
        if self.tokens_per_sec > 0.0 {
            d += Duration::from_secs_f64(f64::from(i) / self.tokens_per_sec);
        }
        start + d
    }
}

/// Parse `--addr A --tokens-per-sec X --tokens N [--ttft-ms M]`.
pub fn parse_args(args: &[String]) -> Result<(String, Pace), String> {
    let mut addr = None;
    let mut pace = Pace {
        tokens_per_sec: 0.0,
        ttft_ms: 0,
        tokens: 16,
    };
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        let bad = || format!("{k}: bad value {v}");
        match k.as_str() {
            "--addr" => addr = Some(v.clone()),
            "--tokens-per-sec" => pace.tokens_per_sec = v.parse().map_err(|_| bad())?,
            "--ttft-ms" => pace.ttft_ms = v.parse().map_err(|_| bad())?,
            "--tokens" => pace.tokens = v.parse().map_err(|_| bad())?,
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    Ok((addr.ok_or("--addr is required")?, pace))
}

/// One task's generator state, from submit until its stream is opened.
struct Gen {
    start: Instant,
    total: u32,
    /// The prompt's length as the mock engine counts it (the engine's reading of the
    /// prompt, which orchestratord's in-process mock also does).
    tokens_in: u32,
}

#[derive(Clone)]
struct App {
    pace: Pace,
    tasks: Arc<Mutex<HashMap<String, Gen>>>,
}

async fn create_task(State(app): State<App>, body: Bytes) -> Response {
    let req: orch_domain::TaskRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    if req.validate().is_err() {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let total = req.max_tokens.min(app.pace.tokens);
    let id = orch_domain::TaskId::new_random().to_string();
    let gen = Gen {
        start: Instant::now(),
        total,
        tokens_in: adapter_mock::prompt_tokens(&req.prompt),
    };
    match app.tasks.lock() {
        Ok(mut m) => m.insert(id.clone(), gen),
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let sse = format!("/v1/tasks/{id}/stream");
    let body = serde_json::json!({"task_id": id, "queue_position": 0, "predicted_start_ms": 0,
        "backoff_ms": 0, "streams": {"sse": sse}});
    let location = format!("/v1/tasks/{id}");
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        axum::Json(body),
    )
        .into_response()
}

/// Frame `k` of a task: 0 = started, 1..=total = tokens, total + 1 = end.
async fn frame(pace: Pace, gen: &Gen, k: u32) -> Bytes {
    let seq = u64::from(k) + 1;
    let s = if k == 0 {
        format!("event: started\nid: {seq}\ndata: {{\"queue_position\":0,\"predicted_start_ms\":0,\"engine\":\"floor\"}}\n\n")
    } else if k <= gen.total {
        let i = k - 1;
        let due = pace.due(gen.start, i);
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        format!("event: token\nid: {seq}\ndata: {{\"t\":\"tok\",\"i\":{i}}}\n\n")
    } else {
        let ms = gen.start.elapsed().as_millis();
        format!("event: end\nid: {seq}\ndata: {{\"tokens_in\":{},\"tokens_out\":{},\"decode_time_ms\":{ms},\"finish_reason\":\"length\"}}\n\n", gen.tokens_in, gen.total)
    };
    Bytes::from(s)
}

async fn stream_task(State(app): State<App>, Path(id): Path<String>) -> Response {
    let gen = match app.tasks.lock() {
        Ok(mut m) => m.remove(&id),
        Err(_) => None,
    };
    let Some(gen) = gen else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let pace = app.pace;
    let frames = futures_util::stream::unfold((gen, 0u32), move |(gen, k)| async move {
        if k > gen.total + 1 {
            return None;
        }
        let b = frame(pace, &gen, k).await;
        Some((Ok::<_, Infallible>(b), (gen, k + 1)))
    });
    let mut resp = Response::new(Body::from_stream(frames));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// Serve the floor until the process is killed.
pub async fn serve(addr: &str, pace: Pace) -> std::io::Result<()> {
    let app = App {
        pace,
        tasks: Arc::default(),
    };
    let router = axum::Router::new()
        .route("/v1/tasks", axum::routing::post(create_task))
        .route("/v1/tasks/{id}/stream", axum::routing::get(stream_task))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    // like orchestratord: no Nagle on small SSE writes
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router).await
}
