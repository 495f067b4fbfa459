//! The one seam between orchestratord and an inference engine.
//!
//! An engine adapter implements [`WorkerAdapter`] for one replica (one engine process
//! or endpoint): health, properties, `submit` returning a stream of typed
//! [`EngineEvent`]s, and `cancel`. Everything engine-specific (wire protocol, token
//! accounting, timeouts) stays behind this trait; the services layer only sees these
//! types, and handlers never see an adapter at all.

use futures_core::Stream;
use orch_domain::{ErrorCode, FinishReason, TaskId};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type EventStream = Pin<Box<dyn Stream<Item = Result<EngineEvent, WorkerError>> + Send>>;

/// What the orchestrator asks an engine to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineRequest {
    pub task_id: TaskId,
    pub prompt: std::sync::Arc<str>,
    /// A chat to render with the model's own template instead of `prompt` (the
    /// engine applies it; adapters never hand-write a template).
    pub chat: Option<Vec<orch_domain::ChatMessage>>,
    pub max_tokens: u32,
    pub seed: i64,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stop: Vec<String>,
    /// Engine slot to run in (session affinity / KV reuse), when the engine has slots.
    pub slot: Option<u32>,
    /// Ask the engine to reuse cached prompt KV.
    pub cache_prompt: bool,
    /// Continue a generation another replica started: the engine treats `resume`'s
    /// tokens as already generated (after the prompt) and produces what follows, at
    /// most `max_tokens` more. Only sent to engines that [`WorkerAdapter::continues`].
    pub resume: Option<Resume>,
    /// `prompt` as an engine's tokenizer already made it (admission's count). An
    /// engine serving the same model (`PromptIds::model` is its digest) sends these ids
    /// instead of the text, so a long prompt is tokenized once; others ignore them.
    pub prompt_ids: Option<orch_domain::PromptIds>,
}

/// An engine's count of a prompt ([`WorkerAdapter::count_tokens`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCount {
    pub n: u32,
    /// The ids themselves, when the engine gave them.
    pub ids: Option<orch_domain::PromptIds>,
}

/// The output of a generation so far, which a continuation starts after.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    /// The engine's token ids, in order.
    pub ids: Vec<u32>,
    /// Their text, as streamed.
    pub text: String,
}

/// One event of a generation. Token indices are 0-based and contiguous.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    Token {
        text: String,
        index: u32,
        /// The prompt's length in tokens, when the engine tells it with a token (at
        /// least with the first): prompt tokens count as processed from then on,
        /// whether or not the task completes.
        prompt_tokens: Option<u32>,
        /// The engine's ids of the tokens this text is made of (one or more: text held
        /// back for a partial character or a possible stop word comes out with a later
        /// token); empty when the engine does not report ids.
        ids: Vec<u32>,
    },
    End(EngineEnd),
}

#[derive(Debug, Clone, PartialEq)]
pub struct EngineEnd {
    pub tokens_in: u32,
    pub tokens_out: u32,
    /// Prompt tokens served from the KV cache, when the engine reports it.
    pub tokens_cached: Option<u32>,
    pub finish_reason: FinishReason,
    pub decode_time_ms: u64,
    /// The engine slot that served the request, when the engine has slots.
    pub slot: Option<u32>,
}

/// Static facts about a replica, read once it is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Properties {
    /// `llamacpp`, `mock`, …
    pub engine: String,
    pub engine_version: String,
    /// The model's display name.
    pub model: String,
    /// `sha256:<hex>` of the model file.
    pub model_digest: String,
    /// What the engine itself computes about its model (metadata, tokenizer), when it
    /// reports any: replicas of a pool must agree on it.
    pub model_fingerprint: Option<String>,
    pub slots: u32,
    pub ctx_max: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ready,
    /// Up but not serving yet (e.g. loading the model).
    Loading,
}

/// Typed failures of an engine. Each maps to one OrchQueue error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerError {
    #[error("engine unreachable: {0}")]
    Connect(String),
    #[error("engine reset: {0}")]
    Reset(String),
    #[error("engine timed out: {0}")]
    Timeout(String),
    #[error("engine not ready: {0}")]
    Unready(String),
    #[error("engine has no free slot")]
    Busy,
    #[error("engine protocol error: {0}")]
    Protocol(String),
    #[error("engine refused the request: {0}")]
    Rejected(String),
}

impl WorkerError {
    /// What a client may be told: the kind of failure, never the detail, which can
    /// name the engine's address or quote its answer (an upstream provider's error
    /// body included); the detail goes to the log.
    pub fn public_message(&self) -> String {
        match self {
            WorkerError::Connect(_) => "the engine could not be reached",
            WorkerError::Reset(_) => "the engine reset the request",
            WorkerError::Timeout(_) => "the engine timed out",
            WorkerError::Unready(_) => "the engine is not ready",
            WorkerError::Busy => "the engine has no free slot",
            WorkerError::Protocol(_) => "the engine's answer could not be read",
            WorkerError::Rejected(_) => {
                "the engine refused the request (its reason is in the server log, under this correlation id)"
            }
        }
        .to_string()
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            WorkerError::Connect(_) | WorkerError::Reset(_) | WorkerError::Protocol(_) => {
                ErrorCode::WorkerReset
            }
            WorkerError::Timeout(_) => ErrorCode::DecodeTimeout,
            WorkerError::Unready(_) => ErrorCode::PoolUnready,
            WorkerError::Busy => ErrorCode::ReplicaExhausted,
            WorkerError::Rejected(_) => ErrorCode::InvalidParams,
        }
    }

    /// Safe to retry on another replica when no token was sent yet.
    pub fn retriable_elsewhere(&self) -> bool {
        !matches!(self, WorkerError::Rejected(_))
    }
}

/// One engine replica. Implementations must be cheap to call concurrently.
pub trait WorkerAdapter: Send + Sync + 'static {
    /// Engine name as it appears in events and metrics (`llamacpp`, `mock`).
    fn engine(&self) -> &'static str;
    fn health(&self) -> BoxFuture<'_, Result<Health, WorkerError>>;
    fn properties(&self) -> BoxFuture<'_, Result<Properties, WorkerError>>;
    /// Start a generation. Dropping the returned stream must stop the generation
    /// and free the engine slot.
    fn submit(&self, req: EngineRequest) -> BoxFuture<'_, Result<EventStream, WorkerError>>;
    /// Stop a running generation and make sure its slot is free again.
    fn cancel(&self, task: TaskId) -> BoxFuture<'_, Result<(), WorkerError>>;
    /// The engine's own Prometheus exposition, when it has one (llama-server
    /// `--metrics`); `None` for engines without metrics.
    fn metrics_text(&self) -> BoxFuture<'_, Result<Option<String>, WorkerError>> {
        Box::pin(async { Ok(None) })
    }
    /// Tokens this engine reports having generated since it started, from its own
    /// metrics (llama-server: `tokens_predicted_total`); `None` when it exports none.
    /// Startup self-tests check that it moves.
    fn tokens_generated_total(&self) -> BoxFuture<'_, Result<Option<f64>, WorkerError>> {
        Box::pin(async { Ok(None) })
    }
    /// Fraction (0..=1) of this replica's KV cache in use, when the engine tells
    /// (llama-server: its slots' cached tokens over their context); `None` otherwise.
    fn kv_cache_usage(&self) -> BoxFuture<'_, Result<Option<f64>, WorkerError>> {
        Box::pin(async { Ok(None) })
    }
    /// How many tokens this engine's tokenizer makes of `text` as a prompt (special
    /// tokens such as BOS included), and their ids when it has them; `None` (default)
    /// when it cannot tell. Admission asks before refusing a prompt its
    /// bytes-per-token estimate puts over the context, so a prompt that fits is not
    /// refused on a guess, and hands the ids on ([`EngineRequest::prompt_ids`]).
    fn count_tokens(
        &self,
        _text: std::sync::Arc<str>,
    ) -> BoxFuture<'_, Result<Option<TokenCount>, WorkerError>> {
        Box::pin(async { Ok(None) })
    }
    /// Whether this engine continues a generation from its token ids
    /// ([`EngineRequest::resume`]) and reports ids with every token; engines that do not
    /// (default) are never asked to.
    fn continues(&self) -> bool {
        false
    }
    /// Forget a session's cached KV in `slot` (best effort; default: nothing to do).
    fn erase_slot(&self, _slot: u32) -> BoxFuture<'_, Result<(), WorkerError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A running engine replica that orchestratord started (a child process).
pub trait ReplicaProcess: Send + Sync {
    /// The adapter that talks to this replica.
    fn adapter(&self) -> Arc<dyn WorkerAdapter>;
    /// Resolves when the process exits, with a human-readable reason.
    fn exited(&self) -> BoxFuture<'_, String>;
    /// Stop the process (SIGKILL if it does not exit promptly).
    fn stop(&self) -> BoxFuture<'_, ()>;
    /// Where the replica listens, for operators (`http://127.0.0.1:PORT`).
    fn endpoint(&self) -> String;
    /// OS process id, when the replica is a local child process.
    fn pid(&self) -> Option<u32> {
        None
    }
}

/// What a launch should load. `None` fields keep the pool's configured values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchOverrides {
    /// A model file path (reload).
    pub model_path: Option<String>,
}

/// Starts replicas of one pool. Implemented per engine (e.g. spawning `llama-server`)
/// and by test doubles; the pool manager supervises what it returns.
pub trait ReplicaLauncher: Send + Sync {
    fn launch(
        &self,
        replica_id: &str,
        overrides: &LaunchOverrides,
    ) -> BoxFuture<'_, Result<Box<dyn ReplicaProcess>, LaunchError>>;

    /// What a reload to `model_ref` (not the pool's current model) should launch, in
    /// this engine's terms (llama.cpp: a `.gguf` file); `None` when this launcher
    /// cannot load it, and the reload is refused with nothing changed.
    fn model_overrides(&self, _model_ref: &str) -> Option<LaunchOverrides> {
        None
    }
}

/// Sum the values of a Prometheus text exposition's samples whose series (name and
/// labels, as written) match.
pub fn sum_samples(text: &str, matches: impl Fn(&str) -> bool) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| matches(series))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// A replica could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    #[error("engine binary not found: {0}")]
    MissingBinary(String),
    #[error("model not found: {0}")]
    MissingModel(String),
    #[error("engine failed to start: {0}")]
    Spawn(String),
}
