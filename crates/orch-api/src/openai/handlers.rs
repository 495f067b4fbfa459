//! The OpenAI door's handlers: the request becomes an OrchQueue task admitted for the
//! caller's tenant (same admission, quotas, fair queue and dispatch as `POST
//! /v1/tasks`), and the task's event log is relayed as OpenAI chunks (`data: {…}` …
//! `data: [DONE]`) or gathered into one response. The protocol has no resume, so a
//! client that goes away cancels its task at once. Every response names its task in
//! `X-Orch-Task-Id`.

use super::error::{stream_error_json, OpenAiError};
use super::request::{self, Options};
use crate::correlation::CorrelationId;
use crate::{App, AppState};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use orch_domain::{
    EndFrame, ErrorCode, ErrorFrame, EventKind, FinishReason, OrchError, Priority, TaskId,
    TaskRequest,
};
use orch_services::{Caller, FrameRef, Orchestrator, Read, StreamReader};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Header naming the OrchQueue task behind a response.
pub const TASK_HEADER: &str = "x-orch-task-id";
/// Header choosing the priority class (`interactive`, the default, or `batch`).
pub const PRIORITY_HEADER: &str = "x-orch-priority";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

/// Cancels the task when dropped while armed (the client went away).
struct CancelOnDrop {
    orch: Orchestrator,
    caller: Caller,
    id: TaskId,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (orch, caller, id) = (self.orch.clone(), self.caller.clone(), self.id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            tracing::info!(task_id = %id, tenant = %caller.tenant, "openai client went away: canceling its task");
            rt.spawn(async move {
                let _ = orch.cancel(&caller, id).await;
            });
        }
    }
}

/// Turns task frames into OpenAI output.
struct Conv {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    stream: bool,
    include_usage: bool,
    role_sent: bool,
    text: String,
    end: Option<EndFrame>,
    error: Option<OpenAiError>,
    done: bool,
}

#[derive(serde::Deserialize)]
struct Tok<'a> {
    #[serde(borrow)]
    t: Cow<'a, str>,
}

fn finish(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Eos | FinishReason::Canceled => "stop",
    }
}

fn usage(e: &EndFrame) -> Value {
    json!({"prompt_tokens": e.tokens_in, "completion_tokens": e.tokens_out,
        "total_tokens": e.tokens_in + e.tokens_out})
}

fn data(out: &mut String, v: &Value) {
    out.push_str("data: ");
    out.push_str(&v.to_string());
    out.push_str("\n\n");
}

impl Conv {
    fn chunk(&self, choice: Value) -> Value {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
            "choices": [choice]})
    }

    fn piece(&self, text: &str, finish_reason: Option<&str>) -> Value {
        match self.kind {
            Kind::Chat => {
                let delta = if finish_reason.is_some() {
                    json!({})
                } else {
                    json!({"content": text})
                };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason})
            }
            Kind::Completion => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason})
            }
        }
    }

    fn on_frame(&mut self, f: &FrameRef<'_>, out: &mut String) {
        match f.kind {
            EventKind::Started if self.stream && self.kind == Kind::Chat && !self.role_sent => {
                self.role_sent = true;
                let c = self.chunk(
                    json!({"index": 0, "delta": {"role": "assistant", "content": ""},
                    "logprobs": null, "finish_reason": null}),
                );
                data(out, &c);
            }
            EventKind::Token => {
                let Ok(tok) = serde_json::from_str::<Tok<'_>>(f.data) else {
                    return;
                };
                if self.stream {
                    let c = self.chunk(self.piece(&tok.t, None));
                    data(out, &c);
                } else {
                    self.text.push_str(&tok.t);
                }
            }
            EventKind::End => {
                self.done = true;
                let Ok(end) = serde_json::from_str::<EndFrame>(f.data) else {
                    self.error = Some(OrchError::internal("unreadable end frame").into());
                    return;
                };
                if self.stream {
                    let c = self.chunk(self.piece("", Some(finish(end.finish_reason))));
                    data(out, &c);
                    if self.include_usage {
                        let mut u = self.chunk(json!(null));
                        u["choices"] = json!([]);
                        u["usage"] = usage(&end);
                        data(out, &u);
                    }
                    out.push_str("data: [DONE]\n\n");
                }
                self.end = Some(end);
            }
            EventKind::Error => {
                self.done = true;
                let e: OpenAiError = match serde_json::from_str::<ErrorFrame>(f.data) {
                    Ok(fr) => OrchError::from(fr).into(),
                    Err(_) => OrchError::internal("unreadable error frame").into(),
                };
                if self.stream {
                    data(out, &stream_error_json(&e));
                }
                self.error = Some(e);
            }
            EventKind::Started | EventKind::Metrics => {}
        }
    }

    /// The whole (non-streaming) response.
    fn response(&self, end: &EndFrame) -> Value {
        let (object, choice) = match self.kind {
            Kind::Chat => (
                "chat.completion",
                json!({"index": 0, "message": {"role": "assistant", "content": self.text},
                    "logprobs": null, "finish_reason": finish(end.finish_reason)}),
            ),
            Kind::Completion => (
                "text_completion",
                json!({"index": 0, "text": self.text, "logprobs": null,
                    "finish_reason": finish(end.finish_reason)}),
            ),
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
            "choices": [choice], "usage": usage(end)})
    }
}

/// The header's priority; without one, `interactive`, or `batch` for a key limited to
/// it (asking for a priority the key may not use is refused at admission, 403).
fn priority(h: &HeaderMap, caller: &Caller) -> Result<Priority, OpenAiError> {
    match h.get(PRIORITY_HEADER).map(|v| v.to_str().unwrap_or("")) {
        None if !caller.may_use_priority(Priority::Interactive) => Ok(Priority::Batch),
        None | Some("interactive") => Ok(Priority::Interactive),
        Some("batch") => Ok(Priority::Batch),
        Some(_) => Err(OpenAiError::invalid(
            "X-Orch-Priority",
            "X-Orch-Priority must be `interactive` or `batch`",
        )),
    }
}

fn with_task(mut r: Response, id: TaskId) -> Response {
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        r.headers_mut().insert(TASK_HEADER, v);
    }
    r
}

/// The request as a task and the door's options, or why it is refused.
async fn parse(
    app: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    body: Body,
    kind: Kind,
) -> Result<(TaskRequest, Options), OpenAiError> {
    if !crate::body::is_json(headers) {
        let mut e: OpenAiError = crate::body::not_json(headers).into();
        e.status = axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
        return Err(e);
    }
    let value: Value = crate::body::read_json(body, app.body).await?;
    let prio = priority(headers, caller)?;
    let orch = app.orch.clone();
    Ok(match kind {
        Kind::Chat => request::chat(value, prio, |m, p| orch.output_limit(m, p).unwrap_or(256))?,
        Kind::Completion => request::completion(value, prio)?,
    })
}

async fn serve(
    app: App,
    cid: CorrelationId,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
    kind: Kind,
) -> Result<Response, OpenAiError> {
    let (req, opts) = parse(&app, &caller, &headers, body, kind)
        .await
        // a request refused before admission still counts in tasks_rejected_total
        .inspect_err(|_| orch_services::metrics::rejected("none", "invalid"))?;
    let adm = app.orch.admit(&caller, req, &cid.0).await?;
    let id = adm.task_id;
    let reader = app.orch.open_stream(&caller, id, 0).await?;
    let guard = CancelOnDrop {
        orch: app.orch.clone(),
        caller,
        id,
        armed: true,
    };
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let conv = Conv {
        kind,
        id: match kind {
            Kind::Chat => format!("chatcmpl-{id}"),
            Kind::Completion => format!("cmpl-{id}"),
        },
        created,
        model: opts.model.clone(),
        stream: opts.stream,
        include_usage: opts.include_usage,
        role_sent: false,
        text: String::new(),
        end: None,
        error: None,
        done: false,
    };
    if opts.stream {
        return Ok(with_task(
            stream_response(reader, conv, guard, app.keepalive),
            id,
        ));
    }
    // errors after admission name the task too
    let r = gather(reader, conv, guard, app.keepalive)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    Ok(with_task(r, id))
}

/// Wait for the whole generation and answer once.
async fn gather(
    mut reader: StreamReader,
    mut conv: Conv,
    mut guard: CancelOnDrop,
    keepalive: Duration,
) -> Result<Response, OpenAiError> {
    let mut scratch = String::new();
    while !conv.done {
        match reader
            .next_with(keepalive, |f| conv.on_frame(&f, &mut scratch))
            .await
        {
            Some(_) => {}
            None => break,
        }
    }
    guard.armed = false;
    if let Some(e) = conv.error.take() {
        return Err(e);
    }
    match &conv.end {
        Some(end) => Ok(Json(conv.response(end)).into_response()),
        None => Err(OrchError::new(
            ErrorCode::Internal,
            "the task's stream ended without a result",
        )
        .into()),
    }
}

struct Relay {
    reader: StreamReader,
    conv: Conv,
    guard: CancelOnDrop,
    keepalive: Duration,
}

fn stream_response(
    reader: StreamReader,
    conv: Conv,
    guard: CancelOnDrop,
    keepalive: Duration,
) -> Response {
    let relay = Relay {
        reader,
        conv,
        guard,
        keepalive,
    };
    let body = futures_util::stream::unfold(relay, |mut r| async move {
        if r.conv.done {
            return None;
        }
        let mut out = String::new();
        let Relay {
            reader,
            conv,
            keepalive,
            ..
        } = &mut r;
        let read = reader
            .next_with(*keepalive, |f| conv.on_frame(&f, &mut out))
            .await;
        match read {
            None => return None,
            Some(Read::KeepAlive) => out.push_str(": keep-alive\n\n"),
            Some(Read::Frames(_)) => {}
        }
        if r.conv.done {
            // the task ended: nothing left to cancel
            r.guard.armed = false;
        }
        Some((
            Ok::<_, std::convert::Infallible>(bytes::Bytes::from(out)),
            r,
        ))
    });
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    serve(app, cid, caller, headers, body, Kind::Chat)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/completions`.
pub async fn completions(
    State(app): State<App>,
    Extension(cid): Extension<CorrelationId>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    serve(app, cid, caller, headers, body, Kind::Completion)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `GET /v1/models`: the models the pools serve (by catalog name).
pub async fn models(State(app): State<App>) -> Response {
    let mut names: Vec<String> = app.orch.pool_views().into_iter().map(|p| p.model).collect();
    names.sort();
    names.dedup();
    let data: Vec<Value> = names
        .into_iter()
        .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": "orchestratord"}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}
