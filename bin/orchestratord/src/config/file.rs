//! A pool as the config file writes it: `engine = "…"` plus an optional section per
//! engine. [`PoolConfig`] is made from it, with the engine and its settings as one
//! [`EngineConfig`]; a section given for another engine, or a required one missing,
//! refuses the file.

use super::{
    EngineConfig, FairnessChoice, LlamaCppConfig, OpenAiPoolConfig, PlacementChoice, PoolConfig,
};
use adapter_mock::MockConfig;
use orch_domain::FullPolicy;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum EngineChoice {
    Mock,
    Llamacpp,
    /// Any OpenAI-compatible server by URL (`[pools.openai]`).
    Openai,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PoolFile {
    id: String,
    engine: EngineChoice,
    /// Catalog name clients send as `model_ref`.
    model: String,
    #[serde(default = "super::one")]
    replicas: u32,
    #[serde(default = "super::queue_capacity")]
    queue_capacity: usize,
    #[serde(default)]
    queue_policy: FullPolicy,
    #[serde(default = "super::interactive_weight")]
    interactive_weight: u32,
    #[serde(default = "super::max_tokens_out")]
    max_tokens_out: u32,
    #[serde(default = "super::sampler_profile")]
    sampler_profile_version: String,
    #[serde(default = "super::first_token_timeout_ms")]
    first_token_timeout_ms: u64,
    #[serde(default = "super::idle_timeout_ms")]
    idle_timeout_ms: u64,
    /// Wall-clock limit on one generation.
    #[serde(default = "super::decode_timeout_ms")]
    decode_timeout_ms: u64,
    /// Longest a task may wait in the queue (then it ends with POOL_UNAVAILABLE).
    #[serde(default = "super::queue_wait_limit_ms")]
    queue_wait_limit_ms: u64,
    #[serde(default = "super::one")]
    retries_before_first_token: u32,
    #[serde(default = "super::migration_limit")]
    migration_limit: u32,
    /// Sharing among tenants inside each priority class: `weighted` (weighted fair
    /// queuing by expected tokens) or `fifo`.
    #[serde(default)]
    fairness: FairnessChoice,
    /// A task that waited this long is served next in its class (0 = never).
    #[serde(default = "super::aging_ms")]
    aging_ms: u64,
    /// How often waiting and running tasks get a `metrics` frame (0 = never).
    #[serde(default = "super::metrics_frame_interval_ms")]
    metrics_frame_interval_ms: u64,
    /// How a replica is picked: `prefix` (default: session, then the replica holding
    /// the prompt's prefix within a load slack, then least loaded), `session`, or
    /// `least-loaded`.
    #[serde(default)]
    placement: PlacementChoice,
    /// Prefix index entries per pool (one per 256-byte block per replica holding it).
    #[serde(default = "prefix_index_blocks")]
    prefix_index_blocks: usize,
    /// Correct the prefix index with what the engine reports reusing (default on).
    #[serde(default = "yes")]
    prefix_observed: bool,
    /// Settings of the mock engine (engine = "mock").
    #[serde(default)]
    mock: Option<MockConfig>,
    /// Settings of llama-server replicas (engine = "llamacpp").
    #[serde(default)]
    llamacpp: Option<LlamaCppConfig>,
    /// Upstream OpenAI-compatible servers (engine = "openai").
    #[serde(default)]
    openai: Option<OpenAiPoolConfig>,
}

impl TryFrom<PoolFile> for PoolConfig {
    type Error = String;

    fn try_from(p: PoolFile) -> Result<Self, String> {
        let stray: Vec<&str> = [
            ("mock", p.mock.is_some(), EngineChoice::Mock),
            ("llamacpp", p.llamacpp.is_some(), EngineChoice::Llamacpp),
            ("openai", p.openai.is_some(), EngineChoice::Openai),
        ]
        .into_iter()
        .filter(|(_, present, engine)| *present && *engine != p.engine)
        .map(|(name, ..)| name)
        .collect();
        if !stray.is_empty() {
            return Err(format!(
                "pool {}: [pools.{}] given for a {:?} pool",
                p.id,
                stray.join("], [pools."),
                p.engine
            ));
        }
        let engine = match p.engine {
            EngineChoice::Mock => EngineConfig::Mock(p.mock.unwrap_or_default()),
            EngineChoice::Llamacpp => EngineConfig::Llamacpp(p.llamacpp.unwrap_or_default()),
            EngineChoice::Openai => EngineConfig::Openai(p.openai.ok_or_else(|| {
                format!(
                    "pool {}: engine \"openai\" needs [pools.openai] with urls",
                    p.id
                )
            })?),
        };
        Ok(PoolConfig {
            id: p.id,
            engine,
            model: p.model,
            replicas: p.replicas,
            queue_capacity: p.queue_capacity,
            queue_policy: p.queue_policy,
            interactive_weight: p.interactive_weight,
            max_tokens_out: p.max_tokens_out,
            sampler_profile_version: p.sampler_profile_version,
            first_token_timeout_ms: p.first_token_timeout_ms,
            idle_timeout_ms: p.idle_timeout_ms,
            decode_timeout_ms: p.decode_timeout_ms,
            queue_wait_limit_ms: p.queue_wait_limit_ms,
            retries_before_first_token: p.retries_before_first_token,
            migration_limit: p.migration_limit,
            fairness: p.fairness,
            aging_ms: p.aging_ms,
            metrics_frame_interval_ms: p.metrics_frame_interval_ms,
            placement: p.placement,
            prefix_index_blocks: p.prefix_index_blocks,
            prefix_observed: p.prefix_observed,
        })
    }
}

fn yes() -> bool {
    true
}

fn prefix_index_blocks() -> usize {
    100_000
}
