//! What a llama-server proves about the model it serves, computed by the engine
//! itself: the model metadata it reports (`/v1/models` `meta`: parameter count,
//! vocabulary size and type, embedding width, training context, file size and
//! quantization), how its tokenizer splits a fixed probe text (`/tokenize`), and its
//! chat template and special tokens (`/props`). Two replicas of a pool must agree on
//! all of it, on top of the model file digest: an engine reached by URL that only
//! *names* the right file no longer passes for it.
//!
//! Not verified: the weights themselves. An engine that lies consistently (reports a
//! model's metadata and tokenizes like it while serving other weights) is not caught;
//! the README's security model says so.

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Mixed scripts, digits, punctuation and whitespace: tokenizers that differ split it
/// differently.
pub const PROBE: &str = "The quick brown fox, 12345 ünïcødé; 東京 — ½π!\n\tfn main() {}";

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Models {
    pub data: Vec<ModelEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ModelEntry {
    pub meta: Option<Meta>,
}

/// llama-server's model metadata (`n_ctx` is the server's setting, not the model's,
/// and is left out).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Meta {
    pub vocab_type: Option<i64>,
    pub n_vocab: Option<u64>,
    pub n_ctx_train: Option<u64>,
    pub n_embd: Option<u64>,
    pub n_params: Option<u64>,
    pub size: Option<u64>,
    pub ftype: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Tokens {
    pub tokens: Vec<i64>,
}

fn short_digest(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn field<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "?".to_string(), T::to_string)
}

/// The fingerprint of what the engine reported, readable in a pin-mismatch message.
pub fn fingerprint(
    meta: &Meta,
    probe_tokens: &[i64],
    template: &str,
    bos: &str,
    eos: &str,
) -> String {
    let ids: Vec<u8> = probe_tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    let special = format!("{template}\u{0}{bos}\u{0}{eos}");
    format!(
        "params={} vocab={}/{} embd={} ctx_train={} size={} ftype={} tokenizer={} template={}",
        field(&meta.n_params),
        field(&meta.n_vocab),
        field(&meta.vocab_type),
        field(&meta.n_embd),
        field(&meta.n_ctx_train),
        field(&meta.size),
        field(&meta.ftype),
        short_digest(&ids),
        short_digest(special.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(n_params: u64) -> Meta {
        Meta {
            vocab_type: Some(1),
            n_vocab: Some(262_144),
            n_ctx_train: Some(32_768),
            n_embd: Some(640),
            n_params: Some(n_params),
            size: Some(246_587_904),
            ftype: Some("Q4_K - Medium".into()),
        }
    }

    #[test]
    fn any_reported_difference_changes_the_fingerprint() {
        let base = fingerprint(&meta(268_098_176), &[818, 3823], "t", "<bos>", "<eos>");
        assert_eq!(
            base,
            fingerprint(&meta(268_098_176), &[818, 3823], "t", "<bos>", "<eos>")
        );
        assert!(base.contains("params=268098176") && base.contains("vocab=262144/1"));
        for other in [
            fingerprint(&meta(268_098_177), &[818, 3823], "t", "<bos>", "<eos>"),
            fingerprint(&meta(268_098_176), &[818, 3824], "t", "<bos>", "<eos>"),
            fingerprint(&meta(268_098_176), &[818, 3823], "u", "<bos>", "<eos>"),
            fingerprint(&meta(268_098_176), &[818, 3823], "t", "<s>", "<eos>"),
            fingerprint(&Meta::default(), &[818, 3823], "t", "<bos>", "<eos>"),
        ] {
            assert_ne!(base, other);
        }
    }
}
