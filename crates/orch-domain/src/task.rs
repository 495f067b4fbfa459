//! The task request (`POST /v1/tasks`) and the rules it is checked against before any
//! pool is consulted. Pool-dependent checks (ctx, sampler profile) live in admission.

use crate::error::OrchError;
use crate::ids::{SessionId, TaskId};
use serde::{Deserialize, Serialize};

// Text bounds count characters (Unicode scalar values), the way JSON Schema's
// `maxLength` counts, so a request valid by the published schema is never refused for
// a length the schema allows (spec §1).

/// Largest prompt accepted, in characters.
pub const PROMPT_MAX_CHARS: usize = 256 * 1024;
/// The most UTF-8 bytes such a prompt takes (the HTTP body limit is set above this).
pub const PROMPT_MAX_BYTES: usize = 4 * PROMPT_MAX_CHARS;
/// Largest `stop` list, and stop string in characters.
pub const STOP_MAX_ITEMS: usize = 8;
pub const STOP_MAX_CHARS: usize = 256;
/// Largest `model_ref` and `sampler_profile_version`, in characters.
pub const MODEL_REF_MAX_CHARS: usize = 256;
pub const SAMPLER_PROFILE_MAX_CHARS: usize = 64;

/// `s` has more than `max` characters (counting only when its bytes could): the way
/// every text bound of the API counts, as JSON Schema's `maxLength` does.
pub fn longer_than(s: &str, max: usize) -> bool {
    s.len() > max && s.chars().count() > max
}

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
    /// Catalog name or `sha256:<digest>` (at most 256 characters).
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 256, pattern = r"\S")
    )]
    pub model_ref: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineKind>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::int::opt_u32"
    )]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub ctx: Option<u32>,
    pub priority: Priority,
    // read once and shared (not copied) by the task record, placement and the
    // engine request
    /// At most 262,144 characters.
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = String, min_length = 1, max_length = 262144)
    )]
    #[serde(with = "crate::shared")]
    pub prompt: std::sync::Arc<str>,
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    #[serde(deserialize_with = "crate::int::u32")]
    pub max_tokens: u32,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::int::opt_i64"
    )]
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
    /// At most 8 strings of 1..=256 characters each.
    #[cfg_attr(feature = "openapi", schema(max_items = 8))]
    pub stop: Option<Vec<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::int::opt_u64"
    )]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub deadline_ms: Option<u64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::int::opt_u32"
    )]
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
    /// The prompt's length in tokens as the pool's engine counted it, when admission
    /// asked (its 4-bytes-per-token estimate put the prompt over the context), or the
    /// least it can be when no count came in time; set by the server, never read from
    /// the body. Fit checks, holds and charges use it instead of the estimate.
    #[serde(skip)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub prompt_tokens: Option<u32>,
    /// The prompt's token ids from that count, when the engine gave them: a replica of
    /// the same model is sent these instead of the text, so the prompt is tokenized
    /// once, not twice. Set by the server, never read from the body.
    #[serde(skip)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub prompt_ids: Option<PromptIds>,
}

/// A prompt's token ids as an engine serving `model` (its digest) made them, special
/// tokens included: only an engine serving the same model may take them for the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptIds {
    pub model: std::sync::Arc<str>,
    pub ids: std::sync::Arc<[u32]>,
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
            prompt: prompt.into(),
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
            prompt_tokens: None,
            prompt_ids: None,
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
        if longer_than(&self.model_ref, MODEL_REF_MAX_CHARS) {
            return Err(OrchError::invalid(
                "model_ref",
                format!("must be at most {MODEL_REF_MAX_CHARS} characters"),
            ));
        }
        if self.prompt.is_empty() {
            return Err(OrchError::invalid("prompt", "must not be empty"));
        }
        if longer_than(&self.prompt, PROMPT_MAX_CHARS) {
            return Err(OrchError::invalid(
                "prompt",
                format!("must be at most {PROMPT_MAX_CHARS} characters"),
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
                .any(|s| s.is_empty() || longer_than(s, STOP_MAX_CHARS))
            {
                return Err(OrchError::invalid(
                    "stop",
                    format!("each stop string must be 1..={STOP_MAX_CHARS} characters"),
                ));
            }
        }
        if self.deadline_ms == Some(0) {
            return Err(OrchError::invalid("deadline_ms", "must be at least 1"));
        }
        if let Some(v) = &self.sampler_profile_version {
            if v.is_empty() || longer_than(v, SAMPLER_PROFILE_MAX_CHARS) {
                return Err(OrchError::invalid(
                    "sampler_profile_version",
                    format!("must be 1..={SAMPLER_PROFILE_MAX_CHARS} characters"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn req(prompt: &str) -> TaskRequest {
        TaskRequest::completion("m", prompt, 1, Priority::Batch)
    }

    fn refused_field(r: &TaskRequest) -> Option<String> {
        r.validate().err().map(|e| e.message)
    }

    /// Bounds count characters as JSON Schema's `maxLength` does: a prompt of the most
    /// characters in 4-byte UTF-8 is accepted, one character more is not (before: the
    /// server counted bytes, so a schema-valid prompt was refused).
    #[test]
    fn text_bounds_count_characters_like_the_schema() {
        let emoji = "\u{1F600}";
        assert!(req(&emoji.repeat(PROMPT_MAX_CHARS)).validate().is_ok());
        let over = refused_field(&req(&emoji.repeat(PROMPT_MAX_CHARS + 1)));
        assert!(over.is_some_and(|m| m.starts_with("prompt")));
        let mut r = req("hi");
        r.stop = Some(vec!["\u{20AC}".repeat(STOP_MAX_CHARS)]);
        assert!(r.validate().is_ok());
        r.stop = Some(vec!["\u{20AC}".repeat(STOP_MAX_CHARS + 1)]);
        assert!(refused_field(&r).is_some_and(|m| m.starts_with("stop")));
        let mut r = req("hi");
        r.model_ref = "\u{00E9}".repeat(MODEL_REF_MAX_CHARS);
        assert!(r.validate().is_ok());
        r.model_ref.push('x');
        assert!(refused_field(&r).is_some_and(|m| m.starts_with("model_ref")));
        let mut r = req("hi");
        r.sampler_profile_version = Some("\u{00E9}".repeat(SAMPLER_PROFILE_MAX_CHARS));
        assert!(r.validate().is_ok());
    }

    /// The Idempotency-Key alphabet the OpenAPI document states (`^[!-~]+$`, 1..=255).
    #[test]
    fn idempotency_keys_are_visible_ascii() {
        let with_key = |k: &str| {
            let mut r = req("hi");
            r.idempotency_key = Some(k.to_string());
            r.validate().is_ok()
        };
        assert!(with_key("!"));
        assert!(with_key(&"~".repeat(255)));
        assert!(!with_key(&"a".repeat(256)));
        assert!(!with_key("a b"));
        assert!(!with_key(""));
        assert!(!with_key("\u{00E9}"));
    }
}
