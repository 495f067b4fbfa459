//! The TOML config file: server settings and pools. Strict: unknown keys are errors,
//! and [`Config::validate`] checks what types cannot (ids, counts, duplicates).

use adapter_mock::MockConfig;
use orch_domain::FullPolicy;
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub pools: Vec<PoolConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub addr: String,
    pub body_limit_bytes: usize,
    pub keepalive_ms: u64,
    pub stream_grace_ms: u64,
    /// How long a finished task keeps its frames (then only its summary).
    pub record_ttl_ms: u64,
    /// Finished tasks that keep their frames, at most (oldest summarized first).
    pub retained_tasks_max: usize,
    /// Bytes of frames finished tasks keep, at most (oldest summarized first).
    pub retained_bytes_max: u64,
    /// Summaries of finished tasks kept, at most, and for how long.
    pub summaries_max: usize,
    pub summary_ttl_ms: u64,
    pub session_ttl_ms: u64,
    /// Sessions tracked at once, at most (least recently used evicted).
    pub sessions_max: usize,
    pub session_token_budget: Option<u64>,
    /// On SIGTERM: how long running tasks may take to finish.
    pub shutdown_grace_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".into(),
            body_limit_bytes: orch_domain::PROMPT_MAX_BYTES + 64 * 1024,
            keepalive_ms: 15_000,
            stream_grace_ms: 30_000,
            record_ttl_ms: 300_000,
            retained_tasks_max: 10_000,
            retained_bytes_max: 64 * 1024 * 1024,
            summaries_max: 100_000,
            summary_ttl_ms: 3_600_000,
            session_ttl_ms: 600_000,
            sessions_max: 100_000,
            session_token_budget: None,
            shutdown_grace_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineChoice {
    Mock,
    Llamacpp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub id: String,
    pub engine: EngineChoice,
    /// Catalog name clients send as `model_ref`.
    pub model: String,
    #[serde(default = "one")]
    pub replicas: u32,
    #[serde(default = "queue_capacity")]
    pub queue_capacity: usize,
    #[serde(default)]
    pub queue_policy: FullPolicy,
    #[serde(default = "interactive_weight")]
    pub interactive_weight: u32,
    #[serde(default = "max_tokens_out")]
    pub max_tokens_out: u32,
    #[serde(default = "sampler_profile")]
    pub sampler_profile_version: String,
    #[serde(default = "first_token_timeout_ms")]
    pub first_token_timeout_ms: u64,
    #[serde(default = "idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Wall-clock limit on one generation.
    #[serde(default = "decode_timeout_ms")]
    pub decode_timeout_ms: u64,
    /// Longest a task may wait in the queue (then it ends with POOL_UNAVAILABLE).
    #[serde(default = "queue_wait_limit_ms")]
    pub queue_wait_limit_ms: u64,
    #[serde(default = "one")]
    pub retries_before_first_token: u32,
    /// Settings of the mock engine (engine = "mock").
    #[serde(default)]
    pub mock: Option<MockConfig>,
    /// Settings of llama-server replicas (engine = "llamacpp").
    #[serde(default)]
    pub llamacpp: Option<LlamaCppConfig>,
}

/// `[pools.llamacpp]`: how to run (or reach) llama-server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlamaCppConfig {
    /// llama-server binary; default `$ORCH_LLAMA_SERVER`, else the provisioned cache.
    pub binary: Option<String>,
    /// GGUF model file; default `$ORCH_MODEL`, else the bundled Gemma 3 270M.
    pub model_path: Option<String>,
    /// Context per replica (llama-server `--ctx-size`, split across slots).
    pub ctx: u32,
    /// Concurrent decodes per replica (`--parallel`).
    pub slots: u32,
    pub threads: u32,
    pub extra_args: Vec<String>,
    /// A remote replica at this URL instead of spawning (needs `model_digest`).
    pub url: Option<String>,
    pub model_digest: Option<String>,
    pub load_timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

impl Default for LlamaCppConfig {
    fn default() -> Self {
        Self {
            binary: None,
            model_path: None,
            ctx: 4096,
            slots: 2,
            threads: 2,
            extra_args: Vec::new(),
            url: None,
            model_digest: None,
            load_timeout_ms: 120_000,
            connect_timeout_ms: 2_000,
        }
    }
}

fn one() -> u32 {
    1
}
fn queue_capacity() -> usize {
    64
}
fn interactive_weight() -> u32 {
    3
}
fn max_tokens_out() -> u32 {
    2048
}
fn sampler_profile() -> String {
    "v1".into()
}
fn first_token_timeout_ms() -> u64 {
    60_000
}
fn idle_timeout_ms() -> u64 {
    30_000
}
fn decode_timeout_ms() -> u64 {
    600_000
}
fn queue_wait_limit_ms() -> u64 {
    300_000
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<text>".into(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.pools.is_empty() {
            return bad("at least one [[pools]] entry is required".into());
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.pools {
            if !valid_id(&p.id) {
                return bad(format!(
                    "pool id {:?} must be 1..=64 chars of [A-Za-z0-9_-]",
                    p.id
                ));
            }
            if !seen.insert(p.id.as_str()) {
                return bad(format!("duplicate pool id {:?}", p.id));
            }
            if p.model.trim().is_empty() {
                return bad(format!("pool {}: model must not be empty", p.id));
            }
            if p.replicas == 0 || p.replicas > 64 {
                return bad(format!("pool {}: replicas must be 1..=64", p.id));
            }
            if p.queue_capacity == 0 {
                return bad(format!("pool {}: queue_capacity must be at least 1", p.id));
            }
            if p.max_tokens_out == 0 {
                return bad(format!("pool {}: max_tokens_out must be at least 1", p.id));
            }
            match p.engine {
                EngineChoice::Mock => {
                    if p.llamacpp.is_some() {
                        return bad(format!(
                            "pool {}: [pools.llamacpp] given for a mock pool",
                            p.id
                        ));
                    }
                    let m = p.mock.clone().unwrap_or_default();
                    if m.slots == 0 {
                        return bad(format!("pool {}: mock.slots must be at least 1", p.id));
                    }
                }
                EngineChoice::Llamacpp => {
                    if p.mock.is_some() {
                        return bad(format!(
                            "pool {}: [pools.mock] given for a llamacpp pool",
                            p.id
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_example_and_rejects_unknown_keys() {
        let ok = Config::parse(
            r#"
            [[pools]]
            id = "m"
            engine = "mock"
            model = "mock-model"
            queue_policy = "drop-lru"
            [pools.mock]
            slots = 1
            "#,
        )
        .unwrap();
        assert_eq!(ok.pools[0].queue_policy, FullPolicy::DropLru);
        let e =
            Config::parse("[[pools]]\nid='m'\nengine='mock'\nmodel='x'\nbogus=1\n").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        assert!(Config::parse("").is_err());
        let e = Config::parse("[[pools]]\nid='a b'\nengine='mock'\nmodel='x'\n").unwrap_err();
        assert!(e.to_string().contains("pool id"), "{e}");
    }
}
