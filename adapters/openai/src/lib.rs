//! Any OpenAI-compatible server as a replica: vLLM, SGLang, TGI's Messages API, Ollama,
//! llama-server's `/v1`.
//!
//! * health and model discovery from `GET /v1/models` (the configured model must be
//!   listed; 503 while the server loads);
//! * properties: engine `openai`, the model id, a pinned digest (configured, else
//!   `openai:<model id>`), the configured slot limit, the context length when the
//!   server reports one (`max_model_len` from vLLM, `meta.n_ctx_train` from
//!   llama-server), else the configured one;
//! * generation: `POST /v1/chat/completions` for chats (the server applies the model's
//!   template) and `/v1/completions` for prompts, streamed, with
//!   `stream_options.include_usage` for token counts; dropping the stream disconnects,
//!   which is how these servers cancel;
//! * typed errors: unreachable → `Connect`, 503 → `Unready`, other 4xx → `Rejected`,
//!   5xx and broken streams → `Reset`, silence past the read timeout → `Timeout`.

mod launcher;
mod wire;

pub use launcher::{OpenAiLauncher, OpenAiReplica};

use adapter_api::{
    BoxFuture, EngineEnd, EngineEvent, EngineRequest, EventStream, Health, Properties,
    WorkerAdapter, WorkerError,
};
use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::StreamExt;
use orch_domain::{FinishReason, TaskId};
use std::time::{Duration, Instant};
use wire::{Chunk, Models};

/// The engine name in events and metrics.
pub const ENGINE: &str = "openai";

/// How to reach and describe one OpenAI-compatible server.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// `http://host:port` (the adapter appends `/v1/...`).
    pub base_url: String,
    /// The upstream model id requests name.
    pub model: String,
    /// Sent as `Authorization: Bearer` upstream.
    pub api_key: Option<String>,
    /// Concurrent generations this replica takes.
    pub slots: u32,
    /// Context length when the server does not report one.
    pub ctx: u32,
    /// Pinned model identity; default `openai:<model>`.
    pub model_digest: Option<String>,
    pub engine_version: Option<String>,
    pub connect_timeout: Duration,
    /// Longest silence on an open stream.
    pub read_timeout: Duration,
    pub control_timeout: Duration,
}

impl OpenAiConfig {
    pub fn new(base_url: &str, model: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            model: model.to_string(),
            api_key: None,
            slots: 4,
            ctx: 4096,
            model_digest: None,
            engine_version: None,
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(60),
            control_timeout: Duration::from_secs(5),
        }
    }
}

pub struct OpenAiAdapter {
    cfg: OpenAiConfig,
    http: reqwest::Client,
}

fn net_err(e: reqwest::Error) -> WorkerError {
    if e.is_connect() {
        WorkerError::Connect(e.to_string())
    } else if e.is_timeout() {
        WorkerError::Timeout(e.to_string())
    } else {
        WorkerError::Reset(e.to_string())
    }
}

fn status_err(what: &str, status: reqwest::StatusCode, body: &str) -> WorkerError {
    let msg = format!(
        "{what}: HTTP {status}: {}",
        body.chars().take(300).collect::<String>()
    );
    match status.as_u16() {
        503 => WorkerError::Unready(msg),
        429 => WorkerError::Busy,
        400..=499 => WorkerError::Rejected(msg),
        _ => WorkerError::Reset(msg),
    }
}

fn finish_of(reason: &str) -> FinishReason {
    match reason {
        "length" => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

impl OpenAiAdapter {
    pub fn new(cfg: OpenAiConfig) -> Result<Self, WorkerError> {
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.read_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| WorkerError::Protocol(e.to_string()))?;
        Ok(Self { cfg, http })
    }

    pub fn base_url(&self) -> &str {
        &self.cfg.base_url
    }

    fn req(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.cfg.api_key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    async fn models(&self) -> Result<Models, WorkerError> {
        let r = self
            .req(self.http.get(format!("{}/v1/models", self.cfg.base_url)))
            .timeout(self.cfg.control_timeout)
            .send()
            .await
            .map_err(net_err)?;
        let status = r.status();
        if !status.is_success() {
            let body = r.text().await.unwrap_or_default();
            return Err(status_err("GET /v1/models", status, &body));
        }
        r.json()
            .await
            .map_err(|e| WorkerError::Protocol(format!("GET /v1/models: {e}")))
    }

    async fn open(&self, req: EngineRequest) -> Result<EventStream, WorkerError> {
        let mut body = serde_json::json!({
            "model": self.cfg.model,
            "max_tokens": req.max_tokens,
            "stream": true,
            "stream_options": {"include_usage": true},
            "seed": req.seed,
        });
        if let Some(t) = req.temperature {
            body["temperature"] = t.into();
        }
        if let Some(p) = req.top_p {
            body["top_p"] = p.into();
        }
        if !req.stop.is_empty() {
            body["stop"] = serde_json::json!(req.stop);
        }
        let path = match &req.chat {
            Some(chat) => {
                body["messages"] = serde_json::json!(chat);
                "/v1/chat/completions"
            }
            None => {
                body["prompt"] = (&*req.prompt).into();
                "/v1/completions"
            }
        };
        let resp = self
            .req(self.http.post(format!("{}{path}", self.cfg.base_url)))
            .json(&body)
            .send()
            .await
            .map_err(net_err)?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(status_err(path, status, &text));
        }
        let started = Instant::now();
        let events = resp.bytes_stream().eventsource();
        let st = Relay {
            index: 0,
            finish: None,
            usage: None,
            done: false,
            t0: started,
        };
        let s = futures_util::stream::unfold((events, st), |(mut events, mut st)| async move {
            if st.done {
                return None;
            }
            loop {
                let item = match events.next().await {
                    None => {
                        st.done = true;
                        // a stream that closes after its finish reason is complete
                        // even without [DONE] (some servers omit it)
                        let out = match st.finish.take() {
                            Some(f) => Ok(EngineEvent::End(st.end(f))),
                            None => Err(WorkerError::Reset(
                                "the server closed the stream before finishing".into(),
                            )),
                        };
                        return Some((out, (events, st)));
                    }
                    Some(Err(EventStreamError::Transport(e))) if e.is_timeout() => {
                        st.done = true;
                        let e =
                            WorkerError::Timeout(format!("stream idle past the read timeout: {e}"));
                        return Some((Err(e), (events, st)));
                    }
                    Some(Err(e)) => {
                        st.done = true;
                        return Some((
                            Err(WorkerError::Reset(format!("stream: {e}"))),
                            (events, st),
                        ));
                    }
                    Some(Ok(ev)) => ev,
                };
                if item.data.trim() == "[DONE]" {
                    st.done = true;
                    let f = st.finish.take().unwrap_or(FinishReason::Stop);
                    return Some((Ok(EngineEvent::End(st.end(f))), (events, st)));
                }
                let chunk: Chunk = match serde_json::from_str(&item.data) {
                    Ok(c) => c,
                    Err(e) => {
                        st.done = true;
                        let e = WorkerError::Protocol(format!("bad chunk: {e}"));
                        return Some((Err(e), (events, st)));
                    }
                };
                if let Some(err) = chunk.error {
                    st.done = true;
                    let e = WorkerError::Reset(format!("server error mid-stream: {err}"));
                    return Some((Err(e), (events, st)));
                }
                if let Some(u) = chunk.usage {
                    st.usage = Some(u);
                }
                let Some(choice) = chunk.choices.into_iter().next() else {
                    continue;
                };
                if let Some(f) = choice.finish_reason.as_deref() {
                    st.finish = Some(finish_of(f));
                }
                let text = choice
                    .text
                    .or(choice.delta.and_then(|d| d.content))
                    .unwrap_or_default();
                if text.is_empty() {
                    continue;
                }
                let ev = EngineEvent::Token {
                    text,
                    index: st.index,
                    // an OpenAI-compatible server tells usage only at the end
                    prompt_tokens: None,
                    // nor token ids: a generation here is not continued elsewhere
                    ids: Vec::new(),
                };
                st.index += 1;
                return Some((Ok(ev), (events, st)));
            }
        });
        Ok(Box::pin(s))
    }
}

struct Relay {
    index: u32,
    finish: Option<FinishReason>,
    usage: Option<wire::Usage>,
    done: bool,
    t0: Instant,
}

impl Relay {
    fn end(&self, finish_reason: FinishReason) -> EngineEnd {
        let u = self.usage.clone().unwrap_or_default();
        EngineEnd {
            tokens_in: u.prompt_tokens,
            tokens_out: u.completion_tokens.max(self.index),
            tokens_cached: u.prompt_tokens_details.and_then(|d| d.cached_tokens),
            finish_reason,
            decode_time_ms: self.t0.elapsed().as_millis() as u64,
            slot: None,
        }
    }
}

impl WorkerAdapter for OpenAiAdapter {
    fn engine(&self) -> &'static str {
        ENGINE
    }

    fn health(&self) -> BoxFuture<'_, Result<Health, WorkerError>> {
        Box::pin(async move {
            match self.models().await {
                Ok(m) if m.data.iter().any(|x| x.id == self.cfg.model) => Ok(Health::Ready),
                Ok(m) => Err(WorkerError::Unready(format!(
                    "model {} is not served here (GET /v1/models lists {:?})",
                    self.cfg.model,
                    m.data.iter().map(|x| x.id.as_str()).collect::<Vec<_>>()
                ))),
                Err(WorkerError::Unready(_)) => Ok(Health::Loading),
                Err(e) => Err(e),
            }
        })
    }

    fn properties(&self) -> BoxFuture<'_, Result<Properties, WorkerError>> {
        Box::pin(async move {
            let models = self.models().await?;
            let m = models
                .data
                .iter()
                .find(|x| x.id == self.cfg.model)
                .ok_or_else(|| {
                    WorkerError::Unready(format!("model {} not listed", self.cfg.model))
                })?;
            Ok(Properties {
                engine: ENGINE.to_string(),
                engine_version: self
                    .cfg
                    .engine_version
                    .clone()
                    .or_else(|| m.owned_by.clone())
                    .unwrap_or_else(|| "unknown".into()),
                model: self.cfg.model.clone(),
                model_digest: self
                    .cfg
                    .model_digest
                    .clone()
                    .unwrap_or_else(|| format!("openai:{}", self.cfg.model)),
                model_fingerprint: None,
                slots: self.cfg.slots.max(1),
                ctx_max: m.ctx().unwrap_or(self.cfg.ctx),
            })
        })
    }

    fn submit(&self, req: EngineRequest) -> BoxFuture<'_, Result<EventStream, WorkerError>> {
        Box::pin(self.open(req))
    }

    /// These servers cancel a generation when its connection closes: dropping the
    /// stream did it, and there is no slot to check.
    fn cancel(&self, _task: TaskId) -> BoxFuture<'_, Result<(), WorkerError>> {
        Box::pin(async { Ok(()) })
    }
}
