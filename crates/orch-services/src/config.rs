//! Settings of the services layer and of each pool, independent of any file format.

use orchestrator_core::QueueConfig;
use std::time::Duration;

/// Process-wide service settings.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// A running task with no reader for this long is canceled (`abandoned`).
    pub stream_grace: Duration,
    /// How long a finished task's record (and its frames) stays readable.
    pub record_ttl: Duration,
    /// Idle time after which a session is evicted.
    pub session_ttl: Duration,
    /// Tokens (in + out) a session may use; `None` = unlimited.
    pub session_token_budget: Option<u64>,
    /// How often expired records and sessions are swept.
    pub sweep_interval: Duration,
    /// Service time assumed for ETAs before the first task finishes.
    pub prior_service_ms: f64,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            stream_grace: Duration::from_secs(30),
            record_ttl: Duration::from_secs(300),
            session_ttl: Duration::from_secs(600),
            session_token_budget: None,
            sweep_interval: Duration::from_secs(1),
            prior_service_ms: 1000.0,
        }
    }
}

/// What a pool is configured to be. Engine facts (version, digest, slots, ctx) come
/// from its replicas' properties and are pinned by the first replica.
#[derive(Debug, Clone)]
pub struct PoolSpec {
    pub id: String,
    /// Catalog name clients use as `model_ref` (the digest form also matches).
    pub model: String,
    pub queue: QueueConfig,
    /// Largest `max_tokens` accepted for this pool.
    pub max_tokens_out: u32,
    pub sampler_profile_version: String,
    /// Limit on the first engine event after submit.
    pub first_token_timeout: Duration,
    /// Limit between two engine events.
    pub idle_timeout: Duration,
    /// Attempts on another replica when a task fails before its first token.
    pub retries_before_first_token: u32,
}

impl PoolSpec {
    pub fn new(id: &str, model: &str) -> Self {
        Self {
            id: id.to_string(),
            model: model.to_string(),
            queue: QueueConfig::default(),
            max_tokens_out: 2048,
            sampler_profile_version: "v1".to_string(),
            first_token_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            retries_before_first_token: 1,
        }
    }
}
