//! The JSON shapes of the OpenAI API that the adapter reads.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Models {
    pub data: Vec<Model>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Model {
    pub id: String,
    pub owned_by: Option<String>,
    /// vLLM
    pub max_model_len: Option<u32>,
    /// llama-server
    pub meta: Option<ModelMeta>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ModelMeta {
    pub n_ctx_train: Option<u32>,
    pub n_ctx: Option<u32>,
}

impl Model {
    /// The context length the server reports, if any.
    pub fn ctx(&self) -> Option<u32> {
        self.max_model_len
            .or_else(|| self.meta.as_ref().and_then(|m| m.n_ctx.or(m.n_ctx_train)))
    }
}

/// One `data:` chunk of a streamed completion or chat completion.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Chunk {
    pub choices: Vec<Choice>,
    pub usage: Option<Usage>,
    pub error: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Choice {
    /// `/v1/completions`
    pub text: Option<String>,
    /// `/v1/chat/completions`
    pub delta: Option<Delta>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Delta {
    pub content: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PromptDetails {
    pub cached_tokens: Option<u32>,
}
