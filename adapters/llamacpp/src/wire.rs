//! The JSON shapes of llama-server's native API that the adapter reads and writes.

use serde::{Deserialize, Serialize};

/// A prompt: its text, or (continuing a generation) its text followed by the token ids
/// already generated, which llama-server reads as one mixed prompt (`["text", 12, 34]`:
/// the text tokenized as usual, BOS included, then the ids as they are); or, when the
/// prompt was tokenized already (admission's count), its ids followed by those
/// generated (`[2, 901, 12, 34]`: taken as they are, nothing tokenized).
#[derive(Debug)]
pub enum Prompt<'a> {
    Text(&'a str),
    Continued(&'a str, &'a [u32]),
    Ids(&'a [u32], &'a [u32]),
}

impl Serialize for Prompt<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match self {
            Prompt::Text(t) => s.serialize_str(t),
            Prompt::Continued(t, ids) => {
                let mut seq = s.serialize_seq(Some(ids.len() + 1))?;
                seq.serialize_element(t)?;
                for id in *ids {
                    seq.serialize_element(id)?;
                }
                seq.end()
            }
            Prompt::Ids(prompt, generated) => {
                let mut seq = s.serialize_seq(Some(prompt.len() + generated.len()))?;
                for id in prompt.iter().chain(generated.iter()) {
                    seq.serialize_element(id)?;
                }
                seq.end()
            }
        }
    }
}

#[derive(Debug, Serialize)]
pub struct CompletionRequest<'a> {
    pub prompt: Prompt<'a>,
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

/// `POST /tokenize`: a prompt's tokens as `/completion` makes them.
#[derive(Debug, Serialize)]
pub struct TokenizeRequest<'a> {
    pub content: &'a str,
    pub add_special: bool,
}

/// Its answer: the ids.
#[derive(Debug, Deserialize)]
pub struct TokenizeResponse {
    pub tokens: Vec<u32>,
}

/// One `data:` chunk of a streaming completion.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Chunk {
    pub content: String,
    /// The ids of the tokens of this chunk (streamed chunks carry the one token they
    /// were made for, also when its text is held back).
    pub tokens: Vec<i64>,
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
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
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
    /// Context size of this slot (its share of the KV cache).
    #[serde(default)]
    pub n_ctx: u32,
    /// Tokens of the slot's current (or last) prompt, which stay cached.
    #[serde(default)]
    pub n_prompt_tokens: u32,
    #[serde(default)]
    pub next_token: Vec<NextToken>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NextToken {
    #[serde(default)]
    pub n_decoded: u32,
}

impl Slot {
    /// Cells of the slot's context holding tokens (prompt plus decoded), at most `n_ctx`.
    pub fn cells_used(&self) -> u32 {
        let decoded = self.next_token.first().map_or(0, |t| t.n_decoded);
        self.n_prompt_tokens.saturating_add(decoded).min(self.n_ctx)
    }
}

/// Fraction of all slots' context cells in use; `None` when no slot reports a size.
pub fn kv_usage(slots: &[Slot]) -> Option<f64> {
    let total: u64 = slots.iter().map(|s| u64::from(s.n_ctx)).sum();
    let used: u64 = slots.iter().map(|s| u64::from(s.cells_used())).sum();
    (total > 0).then(|| used as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_continued_prompt_is_its_text_then_the_ids() {
        let text = serde_json::to_string(&Prompt::Text("hi")).unwrap();
        assert_eq!(text, r#""hi""#);
        let ids = [7u32, 9];
        let mixed = serde_json::to_string(&Prompt::Continued("hi", &ids)).unwrap();
        assert_eq!(mixed, r#"["hi",7,9]"#);
        let counted = serde_json::to_string(&Prompt::Ids(&[2, 5], &[])).unwrap();
        assert_eq!(counted, "[2,5]");
        let both = serde_json::to_string(&Prompt::Ids(&[2, 5], &ids)).unwrap();
        assert_eq!(both, "[2,5,7,9]");
    }

    /// The shape llama-server's `GET /slots` answers with (only_metrics form).
    const SLOTS: &str = r#"[
      {"id":0,"n_ctx":2048,"speculative":false,"is_processing":true,"id_task":7,
       "n_prompt_tokens":300,"n_prompt_tokens_processed":300,"n_prompt_tokens_cache":0,
       "params":{},"next_token":[{"has_next_token":true,"has_new_line":false,"n_remain":90,"n_decoded":100}]},
      {"id":1,"n_ctx":2048,"speculative":false,"is_processing":false}
    ]"#;

    #[test]
    fn kv_usage_counts_prompt_and_decoded_cells_over_all_contexts() {
        let slots: Vec<Slot> = serde_json::from_str(SLOTS).unwrap();
        let got = kv_usage(&slots).unwrap();
        assert!((got - 400.0 / 4096.0).abs() < 1e-9, "{got}");
    }

    #[test]
    fn kv_usage_is_capped_per_slot_and_absent_without_sizes() {
        let full = r#"[{"id":0,"n_ctx":100,"is_processing":true,"n_prompt_tokens":90,
            "next_token":[{"n_decoded":50}]}]"#;
        let slots: Vec<Slot> = serde_json::from_str(full).unwrap();
        assert_eq!(kv_usage(&slots), Some(1.0));
        let none: Vec<Slot> = serde_json::from_str(r#"[{"id":0,"is_processing":false}]"#).unwrap();
        assert_eq!(kv_usage(&none), None);
    }
}
