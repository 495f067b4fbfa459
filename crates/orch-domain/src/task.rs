//! The task request (`POST /v1/tasks`) and the rules it is checked against before any
//! pool is consulted. Pool-dependent checks (ctx, sampler profile) live in admission.

use crate::error::OrchError;
use crate::ids::{SessionId, TaskId};
use serde::{Deserialize, Serialize};

/// Largest prompt accepted, in bytes (the HTTP body limit is set above this).
pub const PROMPT_MAX_BYTES: usize = 256 * 1024;
/// Largest `stop` list and stop string accepted.
pub const STOP_MAX_ITEMS: usize = 8;
pub const STOP_MAX_BYTES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Interactive,
    Batch,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Batch => "batch",
        }
    }
}

/// The workloads this server accepts (the schema of `TaskRequest.workload`).
#[cfg(feature = "openapi")]
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AcceptedWorkload {
    Completion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    Completion,
    Embedding,
    Rerank,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    Llamacpp,
    Vllm,
    Tgi,
    Triton,
    Mock,
    /// Any OpenAI-compatible server reached over HTTP (vLLM, SGLang, TGI, Ollama, …).
    Openai,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Llamacpp => "llamacpp",
            EngineKind::Vllm => "vllm",
            EngineKind::Tgi => "tgi",
            EngineKind::Triton => "triton",
            EngineKind::Mock => "mock",
            EngineKind::Openai => "openai",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Determinism {
    Strict,
    BestEffort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum KvHint {
    Reuse,
    Cold,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Placement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_pool_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefer_pools: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub avoid_pools: Vec<String>,
}

/// One message of a chat (the OpenAI door). The engine renders the conversation with
/// the model's own chat template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (or `developer`, `tool`).
    pub role: String,
    pub content: String,
}

/// `TaskRequest`: unknown fields are rejected so typos are not silently ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// The client's id for the task (a UUID; absent: the server picks one). Version-8
    /// UUIDs are reserved for ids derived from an `Idempotency-Key` (400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<TaskId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
    /// Only `completion` is served; other workloads are refused (400).
    #[cfg_attr(feature = "openapi", schema(value_type = AcceptedWorkload))]
    pub workload: Workload,
    /// Catalog name or `sha256:<digest>` (at most 256 bytes).
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 256, pattern = r"\S")
    )]
    pub model_ref: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub ctx: Option<u32>,
    pub priority: Priority,
    /// At most 262,144 bytes (UTF-8).
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 262144))]
    pub prompt: String,
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub max_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub determinism: Option<Determinism>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub sampler_profile_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 2.0))]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(exclusive_minimum = 0.0, maximum = 1.0))]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// At most 8 strings of 1..=256 bytes each.
    #[cfg_attr(feature = "openapi", schema(max_items = 8))]
    pub stop: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub deadline_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_hint: Option<KvHint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// A chat to render with the model's template instead of `prompt` (set by the
    /// OpenAI door; not part of OrchQueue v1). `prompt` then holds the messages' text,
    /// which bounds its size and estimates its length.
    #[serde(skip)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub chat: Option<Vec<ChatMessage>>,
    /// The submission's `Idempotency-Key` header (not part of the body): the task id
    /// is derived from it and the tenant, so a repeated submission names the same task.
    #[serde(skip)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub idempotency_key: Option<String>,
}

impl TaskRequest {
    /// A minimal valid completion request (for tests, benches and embedders).
    pub fn completion(model_ref: &str, prompt: &str, max_tokens: u32, priority: Priority) -> Self {
        Self {
            task_id: None,
            session_id: None,
            workload: Workload::Completion,
            model_ref: model_ref.to_string(),
            engine: None,
            ctx: None,
            priority,
            prompt: prompt.to_string(),
            max_tokens,
            seed: None,
            determinism: None,
            sampler_profile_version: None,
            temperature: None,
            top_p: None,
            stop: None,
            deadline_ms: None,
            expected_tokens: None,
            kv_hint: None,
            placement: None,
            chat: None,
            idempotency_key: None,
        }
    }

    /// Pool-independent validation. Each failure names the field at fault.
    pub fn validate(&self) -> Result<(), OrchError> {
        if let Some(k) = &self.idempotency_key {
            if k.is_empty() || k.len() > 255 || !k.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
                return Err(OrchError::invalid(
                    "Idempotency-Key",
                    "must be 1 to 255 visible ASCII characters",
                ));
            }
            if self.task_id.is_some() {
                return Err(OrchError::invalid(
                    "Idempotency-Key",
                    "give either a task_id or an Idempotency-Key, not both",
                ));
            }
        }
        if self.task_id.is_some_and(|id| id.0.get_version_num() == 8) {
            // ids derived from an Idempotency-Key are version 8: nobody may take one
            // by naming it, so another tenant cannot squat on a key's task
            return Err(OrchError::invalid(
                "task_id",
                "version-8 UUIDs are reserved for ids derived from an Idempotency-Key",
            ));
        }
        if self.workload != Workload::Completion {
            return Err(OrchError::invalid(
                "workload",
                "only `completion` is supported by this server",
            ));
        }
        if self.model_ref.trim().is_empty() {
            return Err(OrchError::invalid("model_ref", "must not be empty"));
        }
        if self.model_ref.len() > 256 {
            return Err(OrchError::invalid("model_ref", "must be at most 256 bytes"));
        }
        if self.prompt.is_empty() {
            return Err(OrchError::invalid("prompt", "must not be empty"));
        }
        if self.prompt.len() > PROMPT_MAX_BYTES {
            return Err(OrchError::invalid(
                "prompt",
                format!("must be at most {PROMPT_MAX_BYTES} bytes"),
            ));
        }
        if self.max_tokens == 0 {
            return Err(OrchError::invalid("max_tokens", "must be at least 1"));
        }
        if self.ctx == Some(0) {
            return Err(OrchError::invalid("ctx", "must be at least 1"));
        }
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) || t.is_nan() {
                return Err(OrchError::invalid("temperature", "must be within [0, 2]"));
            }
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(OrchError::invalid("top_p", "must be within (0, 1]"));
            }
        }
        if let Some(stop) = &self.stop {
            if stop.len() > STOP_MAX_ITEMS {
                return Err(OrchError::invalid(
                    "stop",
                    format!("at most {STOP_MAX_ITEMS} stop strings"),
                ));
            }
            if stop
                .iter()
                .any(|s| s.is_empty() || s.len() > STOP_MAX_BYTES)
            {
                return Err(OrchError::invalid(
                    "stop",
                    format!("each stop string must be 1..={STOP_MAX_BYTES} bytes"),
                ));
            }
        }
        if self.deadline_ms == Some(0) {
            return Err(OrchError::invalid("deadline_ms", "must be at least 1"));
        }
        if let Some(v) = &self.sampler_profile_version {
            if v.is_empty() || v.len() > 64 {
                return Err(OrchError::invalid(
                    "sampler_profile_version",
                    "must be 1..=64 bytes",
                ));
            }
        }
        Ok(())
    }

    /// The effective seed: the request's, or one derived from the task id.
    pub fn effective_seed(&self, id: TaskId) -> i64 {
        self.seed.unwrap_or_else(|| id.derived_seed())
    }

    /// Temperature after determinism: `strict` forces 0.
    pub fn effective_temperature(&self) -> Option<f64> {
        match self.determinism {
            Some(Determinism::Strict) => Some(0.0),
            _ => self.temperature,
        }
    }
}
