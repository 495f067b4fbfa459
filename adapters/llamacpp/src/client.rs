//! The adapter for one llama-server replica, over its native HTTP API.

use crate::wire::{CompletionRequest, Prompt, Props, Slot};
use crate::ENGINE;
use adapter_api::{
    BoxFuture, EngineRequest, EventStream, Health, Properties, TokenCount, WorkerAdapter,
    WorkerError,
};
use orch_domain::{PromptIds, TaskId};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// Longest silence on an open stream before the read fails (idle watchdog).
    pub read_timeout: Duration,
    /// Longest a control call (`/health`, `/props`, `/slots`) may take.
    pub control_timeout: Duration,
    /// How long `cancel` waits for the engine slot to become idle.
    pub cancel_verify: Duration,
    /// Sent as `Authorization: Bearer` on every request (the engine's own key).
    pub api_key: Option<String>,
}

impl std::fmt::Debug for ClientOptions {
    /// The engine's key is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("control_timeout", &self.control_timeout)
            .field("cancel_verify", &self.cancel_verify)
            .field("api_key", &self.api_key.as_ref().map(|_| ".."))
            .finish()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(60),
            control_timeout: Duration::from_secs(5),
            cancel_verify: Duration::from_secs(3),
            api_key: None,
        }
    }
}

pub struct LlamaCppAdapter {
    base: String,
    /// Control calls (`/health`, `/props`, `/slots`): pooled keep-alive connections.
    http: reqwest::Client,
    /// Streamed completions: llama-server closes the connection after a streamed
    /// response without saying so, so reusing it would fail the next request with an
    /// incomplete message; these use a fresh connection each time.
    stream_http: reqwest::Client,
    opts: ClientOptions,
    model: String,
    model_digest: String,
    /// Generations of ours in flight on this replica (for the idle check on cancel).
    active: Arc<AtomicU32>,
}

struct ActiveGuard(Arc<AtomicU32>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
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

/// The response when it is a success, else its typed error (503 → unready, other 4xx →
/// rejected, the rest → reset), with the start of its body.
async fn refuse_unless_ok(
    resp: reqwest::Response,
    what: &str,
) -> Result<reqwest::Response, WorkerError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let text = resp.text().await.unwrap_or_default();
    let msg = format!(
        "{what}HTTP {status}: {}",
        text.chars().take(300).collect::<String>()
    );
    Err(match status.as_u16() {
        503 => WorkerError::Unready(msg),
        400..=499 => WorkerError::Rejected(msg),
        _ => WorkerError::Reset(msg),
    })
}

impl LlamaCppAdapter {
    /// `base` is `http://host:port`; `model_digest` is `sha256:<hex>` of the model file.
    pub fn new(
        base: &str,
        model: &str,
        model_digest: &str,
        opts: ClientOptions,
    ) -> Result<Self, WorkerError> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(k) = &opts.api_key {
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {k}"))
                .map_err(|e| WorkerError::Protocol(format!("engine api key: {e}")))?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let build = |pool: usize| {
            reqwest::Client::builder()
                .default_headers(headers.clone())
                .connect_timeout(opts.connect_timeout)
                .read_timeout(opts.read_timeout)
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(pool)
                .tcp_nodelay(true)
                .build()
                .map_err(|e| WorkerError::Protocol(e.to_string()))
        };
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            http: build(8)?,
            stream_http: build(0)?,
            opts,
            model: model.to_string(),
            model_digest: model_digest.to_string(),
            active: Arc::new(AtomicU32::new(0)),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, WorkerError> {
        let r = self
            .http
            .get(format!("{}{}", self.base, path))
            .timeout(self.opts.control_timeout)
            .send()
            .await
            .map_err(net_err)?;
        if r.status().as_u16() == 503 {
            return Err(WorkerError::Unready(format!("{path}: loading")));
        }
        if !r.status().is_success() {
            return Err(WorkerError::Protocol(format!(
                "{path}: HTTP {}",
                r.status()
            )));
        }
        r.json()
            .await
            .map_err(|e| WorkerError::Protocol(format!("{path}: {e}")))
    }

    /// What the engine computes about its model: its metadata, its tokenizer's split
    /// of a probe, its chat template and special tokens ([`crate::identity`]).
    async fn fingerprint(&self, props: &Props) -> Result<String, WorkerError> {
        let models: crate::identity::Models = self.get_json("/v1/models").await?;
        let meta = models
            .data
            .into_iter()
            .find_map(|m| m.meta)
            .unwrap_or_default();
        let r = self
            .http
            .post(format!("{}/tokenize", self.base))
            .timeout(self.opts.control_timeout)
            .json(&serde_json::json!({"content": crate::identity::PROBE}))
            .send()
            .await
            .map_err(net_err)?;
        let r = refuse_unless_ok(r, "/tokenize: ").await?;
        let tokens: crate::identity::Tokens = r
            .json()
            .await
            .map_err(|e| WorkerError::Protocol(format!("/tokenize: {e}")))?;
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        Ok(crate::identity::fingerprint(
            &meta,
            &tokens.tokens,
            &s(&props.chat_template),
            &s(&props.bos_token),
            &s(&props.eos_token),
        ))
    }

    /// Slots the engine is decoding in right now (from `GET /slots`).
    pub async fn processing_slots(&self) -> Result<u32, WorkerError> {
        let slots: Vec<Slot> = self.get_json("/slots").await?;
        Ok(slots.iter().filter(|s| s.is_processing).count() as u32)
    }

    /// Render a chat with the model's own template (llama-server `/apply-template`).
    async fn apply_template(
        &self,
        chat: &[orch_domain::ChatMessage],
    ) -> Result<String, WorkerError> {
        // a plain JSON answer: the pooled keep-alive client
        let resp = self
            .http
            .post(format!("{}/apply-template", self.base))
            .json(&serde_json::json!({ "messages": chat }))
            .send()
            .await
            .map_err(net_err)?;
        let resp = refuse_unless_ok(resp, "apply-template ").await?;
        let v: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| WorkerError::Protocol(format!("apply-template: {e}")))?;
        v.get("prompt")
            .and_then(|p| p.as_str())
            .map(str::to_string)
            .ok_or_else(|| WorkerError::Protocol("apply-template answered without a prompt".into()))
    }

    async fn open(&self, req: EngineRequest) -> Result<EventStream, WorkerError> {
        let rendered = match &req.chat {
            Some(chat) => Some(self.apply_template(chat).await?),
            None => None,
        };
        let text = rendered.as_deref().unwrap_or(&req.prompt);
        let generated = req.resume.as_ref().map_or(&[][..], |r| &r.ids[..]);
        // ids counted by an engine of this model stand for the text: not tokenized again
        let counted = match (&rendered, &req.prompt_ids) {
            (None, Some(p)) if *p.model == *self.model_digest => Some(&p.ids[..]),
            _ => None,
        };
        let body = CompletionRequest {
            prompt: match counted {
                Some(ids) => Prompt::Ids(ids, generated),
                None if !generated.is_empty() => Prompt::Continued(text, generated),
                None => Prompt::Text(text),
            },
            n_predict: req.max_tokens,
            stream: true,
            // llama-server seeds are u32 and u32::MAX means "random": keep the low 32
            // bits and move only that one value
            seed: match (req.seed as u64 & 0xFFFF_FFFF) as u32 {
                u32::MAX => u32::MAX - 1,
                s => s,
            },
            temperature: req.temperature,
            top_p: req.top_p,
            stop: &req.stop,
            id_slot: req.slot.map_or(-1, i64::from),
            cache_prompt: req.cache_prompt,
        };
        let resp = self
            .stream_http
            .post(format!("{}/completion", self.base))
            .json(&body)
            .send()
            .await
            .map_err(net_err)?;
        let resp = refuse_unless_ok(resp, "").await?;
        self.active.fetch_add(1, Ordering::AcqRel);
        let guard = ActiveGuard(self.active.clone());
        Ok(crate::stream::decode(
            resp.bytes_stream(),
            guard,
            reqwest::Error::is_timeout,
        ))
    }
}

impl WorkerAdapter for LlamaCppAdapter {
    fn engine(&self) -> &'static str {
        ENGINE
    }

    fn health(&self) -> BoxFuture<'_, Result<Health, WorkerError>> {
        Box::pin(async move {
            let r = self
                .http
                .get(format!("{}/health", self.base))
                .timeout(self.opts.control_timeout)
                .send()
                .await
                .map_err(net_err)?;
            match r.status().as_u16() {
                200 => Ok(Health::Ready),
                503 => Ok(Health::Loading),
                s => Err(WorkerError::Protocol(format!("/health: HTTP {s}"))),
            }
        })
    }

    fn properties(&self) -> BoxFuture<'_, Result<Properties, WorkerError>> {
        Box::pin(async move {
            let p: Props = self.get_json("/props").await?;
            // a replica added by URL names no digest: read the model file it reports
            // (an engine on this machine), or refuse to guess its identity
            let model_digest = if self.model_digest.is_empty() {
                let path = p.model_path.clone().ok_or_else(|| {
                    WorkerError::Protocol(
                        "/props names no model_path: the model's identity is unknown".into(),
                    )
                })?;
                tokio::task::spawn_blocking(move || crate::model::digest(std::path::Path::new(&path)))
                    .await
                    .map_err(|e| WorkerError::Protocol(e.to_string()))?
                    .map_err(|e| {
                        WorkerError::Protocol(format!(
                            "cannot read the model file the engine reports ({e}): its identity is unknown; \
                             configure model_digest for remote engines"
                        ))
                    })?
            } else {
                self.model_digest.clone()
            };
            let model_fingerprint = Some(self.fingerprint(&p).await?);
            Ok(Properties {
                engine: ENGINE.into(),
                engine_version: p.build_info.unwrap_or_else(|| "unknown".into()),
                model: self.model.clone(),
                model_digest,
                model_fingerprint,
                slots: p.total_slots.unwrap_or(1).max(1),
                ctx_max: p
                    .default_generation_settings
                    .and_then(|g| g.n_ctx)
                    .unwrap_or(0),
            })
        })
    }

    fn submit(&self, req: EngineRequest) -> BoxFuture<'_, Result<EventStream, WorkerError>> {
        Box::pin(self.open(req))
    }

    /// llama-server streams each token's id and takes a prompt followed by ids.
    fn continues(&self) -> bool {
        true
    }

    /// The caller has dropped the stream (closing the upstream request, which makes
    /// llama-server stop decoding); wait until `/slots` shows the slot idle.
    fn cancel(&self, _task: TaskId) -> BoxFuture<'_, Result<(), WorkerError>> {
        Box::pin(async move {
            let deadline = Instant::now() + self.opts.cancel_verify;
            loop {
                let busy = self.processing_slots().await?;
                if busy <= self.active.load(Ordering::Acquire) {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err(WorkerError::Timeout(format!(
                        "slot still processing {:?} after cancel",
                        self.opts.cancel_verify
                    )));
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    }

    /// llama-server's own `tokens_predicted_total` (needs `--metrics`).
    fn tokens_generated_total(&self) -> BoxFuture<'_, Result<Option<f64>, WorkerError>> {
        Box::pin(async move {
            let text = self.metrics_text().await?;
            Ok(text.map(|t| {
                adapter_api::sum_samples(&t, |series| series.ends_with("tokens_predicted_total"))
            }))
        })
    }

    fn metrics_text(&self) -> BoxFuture<'_, Result<Option<String>, WorkerError>> {
        Box::pin(async move {
            let r = self
                .http
                .get(format!("{}/metrics", self.base))
                .timeout(self.opts.control_timeout)
                .send()
                .await
                .map_err(net_err)?;
            if !r.status().is_success() {
                return Err(WorkerError::Protocol(format!(
                    "/metrics: HTTP {}",
                    r.status()
                )));
            }
            r.text().await.map(Some).map_err(net_err)
        })
    }

    fn count_tokens(
        &self,
        text: std::sync::Arc<str>,
    ) -> BoxFuture<'_, Result<Option<TokenCount>, WorkerError>> {
        Box::pin(async move {
            // as /completion tokenizes a prompt: BOS and the like included
            let body = crate::wire::TokenizeRequest {
                content: &text,
                add_special: true,
            };
            let r = self
                .http
                .post(format!("{}/tokenize", self.base))
                .timeout(self.opts.control_timeout)
                .json(&body)
                .send()
                .await
                .map_err(net_err)?;
            let r = refuse_unless_ok(r, "/tokenize: ").await?;
            let tokens: crate::wire::TokenizeResponse = r
                .json()
                .await
                .map_err(|e| WorkerError::Protocol(format!("/tokenize: {e}")))?;
            Ok(Some(TokenCount {
                n: u32::try_from(tokens.tokens.len()).unwrap_or(u32::MAX),
                ids: Some(PromptIds {
                    model: self.model_digest.as_str().into(),
                    ids: tokens.tokens.into(),
                }),
            }))
        })
    }

    fn kv_cache_usage(&self) -> BoxFuture<'_, Result<Option<f64>, WorkerError>> {
        Box::pin(async move {
            let slots: Vec<Slot> = self.get_json("/slots").await?;
            Ok(crate::wire::kv_usage(&slots))
        })
    }

    fn erase_slot(&self, slot: u32) -> BoxFuture<'_, Result<(), WorkerError>> {
        Box::pin(async move {
            let r = self
                .http
                .post(format!("{}/slots/{slot}?action=erase", self.base))
                .timeout(self.opts.control_timeout)
                .send()
                .await
                .map_err(net_err)?;
            if r.status().is_success() {
                Ok(())
            } else {
                Err(WorkerError::Protocol(format!(
                    "erase slot {slot}: HTTP {}",
                    r.status()
                )))
            }
        })
    }
}
