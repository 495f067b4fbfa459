//! The JSON shapes of llama-server's native API that the adapter reads and writes.

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize)]
pub struct CompletionRequest<'a> {
    pub prompt: &'a str,
    pub n_predict: u32,
    pub stream: bool,
    pub seed: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub stop: &'a [String],
    /// -1 lets the server choose.
    pub id_slot: i64,
    pub cache_prompt: bool,
}

/// One `data:` chunk of a streaming completion.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Chunk {
    pub content: String,
    pub stop: bool,
    pub stop_type: Option<String>,
    pub id_slot: Option<i64>,
    pub tokens_predicted: Option<u32>,
    pub tokens_evaluated: Option<u32>,
    pub timings: Option<Timings>,
    pub error: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Timings {
    pub cache_n: Option<u32>,
    pub prompt_n: Option<u32>,
    pub predicted_ms: Option<f64>,
    pub prompt_ms: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Props {
    pub total_slots: Option<u32>,
    pub build_info: Option<String>,
    pub model_path: Option<String>,
    pub default_generation_settings: Option<GenerationSettings>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GenerationSettings {
    pub n_ctx: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Slot {
    pub id: i64,
    pub is_processing: bool,
}
