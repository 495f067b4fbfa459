//! Control-plane bodies (spec §4): pools, health, drain, reload, replica sets.

use serde::{Deserialize, Serialize};

/// Where a replica stands in its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// Serves new work.
    Ready,
    /// Probed unhealthy, starting or restarting: no new work.
    Unready,
    /// Finishing its running tasks; no new work.
    Draining,
    /// Started by a reload, waiting for the switch to the new pin.
    Staged,
}

impl ReplicaState {
    /// Every state (the `state` label values of the replica gauge).
    pub const ALL: [ReplicaState; 4] = [
        ReplicaState::Ready,
        ReplicaState::Unready,
        ReplicaState::Draining,
        ReplicaState::Staged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Ready => "ready",
            ReplicaState::Unready => "unready",
            ReplicaState::Draining => "draining",
            ReplicaState::Staged => "staged",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaView {
    pub id: String,
    pub state: ReplicaState,
    pub slots_total: u32,
    pub slots_free: u32,
    pub engine_version: String,
    pub model_digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PoolView {
    pub id: String,
    pub engine: String,
    pub engine_version: String,
    pub model: String,
    pub model_digest: String,
    pub sampler_profile_version: String,
    pub ctx_max: u32,
    pub ready: bool,
    pub draining: bool,
    pub slots_total: u32,
    pub slots_free: u32,
    pub queue_depth: u32,
    pub queue_capacity: u32,
    pub queue_policy: String,
    pub replicas: Vec<ReplicaView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PoolList {
    pub pools: Vec<PoolView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PoolHealth {
    pub pool_id: String,
    pub live: bool,
    pub ready: bool,
    pub draining: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub queue_depth: u32,
    pub queue_capacity: u32,
    pub slots_total: u32,
    pub slots_free: u32,
    pub replicas_ready: u32,
    pub replicas_total: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// At most [`DRAIN_DEADLINE_MAX_MS`] (one hour).
    #[cfg_attr(feature = "openapi", schema(maximum = 3_600_000))]
    #[serde(deserialize_with = "integral_u64")]
    pub deadline_ms: u64,
}

/// A JSON integer, also when written with a zero fraction (`5000.0`): JSON Schema
/// counts that as an integer, so the server accepts it too.
fn integral_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    use serde::de::Error;
    let v = serde_json_number::Number::deserialize(d)?;
    v.0.ok_or_else(|| D::Error::custom("expected a non-negative integer"))
}

mod serde_json_number {
    /// A number that is a non-negative integer, possibly written as `n.0`.
    pub struct Number(pub Option<u64>);

    impl<'de> serde::Deserialize<'de> for Number {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Number;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a non-negative integer")
                }
                fn visit_u64<E>(self, v: u64) -> Result<Number, E> {
                    Ok(Number(Some(v)))
                }
                fn visit_i64<E>(self, v: i64) -> Result<Number, E> {
                    Ok(Number(u64::try_from(v).ok()))
                }
                fn visit_f64<E>(self, v: f64) -> Result<Number, E> {
                    let ok = v >= 0.0 && v.fract() == 0.0 && v <= u64::MAX as f64;
                    Ok(Number(ok.then_some(v as u64)))
                }
            }
            d.deserialize_any(V)
        }
    }
}

/// Longest drain deadline accepted.
pub const DRAIN_DEADLINE_MAX_MS: u64 = 3_600_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DrainResponse {
    pub pool_id: String,
    pub draining: bool,
    pub deadline_ms: u64,
    /// Tasks running when the drain began (they finish or are ended by the deadline).
    pub in_flight: u32,
    /// Queued tasks ended at once with a retriable `POOL_UNREADY`.
    pub queued_ended: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReloadRequest {
    /// A GGUF path, the pool's model name, or `sha256:<digest>` of its current model.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 1024, pattern = r"\S")
    )]
    pub model_ref: String,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub sampler_profile_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReloadResponse {
    pub pool_id: String,
    pub model_digest: String,
    pub engine_version: String,
    pub sampler_profile_version: String,
    pub replicas: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaSetView {
    pub id: String,
    pub pool_id: String,
    pub engine: String,
    pub engine_version: String,
    pub model_digest: String,
    pub sampler_profile_version: String,
    pub replicas: u32,
    pub replicas_ready: u32,
    pub slots_total: u32,
    pub slots_free: u32,
    /// busy slots / total slots, 0..=1.
    pub load: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaSetList {
    pub replica_sets: Vec<ReplicaSetView>,
}

/// Queue settings a client can plan with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueCaps {
    pub capacity: u32,
    pub policy: String,
}

/// Limits a client must respect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RateLimits {
    /// The longest prompt, in characters (Unicode scalar values), the bound the server
    /// enforces. Additive: absent from servers of earlier releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_max_chars: Option<u64>,
    /// A prompt of at most this many UTF-8 bytes is always accepted (it cannot have
    /// more characters than bytes); the meaning this field always had.
    pub prompt_max_bytes: u64,
    pub body_max_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_tokens_budget: Option<u64>,
}

/// What one pool (engine + model) offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EngineCaps {
    pub pool_id: String,
    pub engine: String,
    pub engine_version: String,
    pub sampler_profile_version: String,
    pub model: String,
    pub model_digest: String,
    pub ctx_max: u32,
    pub max_tokens_out: u32,
    pub workloads: Vec<String>,
    /// Concurrent decodes across ready replicas.
    pub concurrency: u32,
    pub queue: QueueCaps,
    /// How a replica is picked: `prefix`, `session` or `least-loaded`.
    #[serde(default)]
    pub placement: String,
    pub ready: bool,
}

/// `GET /v1/capabilities`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Capabilities {
    /// Equals the OpenAPI documents' `info.version`.
    pub api_version: String,
    pub engines: Vec<EngineCaps>,
    pub rate_limits: RateLimits,
    pub features: Vec<String>,
    /// The calling tenant: its role, weight, quotas and what it uses now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantCaps>,
}

/// The calling tenant's share and limits (`GET /v1/capabilities`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantCaps {
    pub tenant: String,
    /// `client` (data plane) or `admin` (everything).
    pub role: String,
    /// Share weight in fair queuing relative to other tenants.
    pub weight: u32,
    pub quotas: QuotaCaps,
    /// Tasks admitted and not ended (queued + running).
    pub in_flight: u32,
    /// Tasks waiting in queues.
    pub queued: u32,
    /// Tokens left in the per-minute budget now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_available: Option<u64>,
    /// With a KV quota: the context tokens the tenant's unfinished tasks hold now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_tokens_held: Option<u64>,
    /// With a token budget: what the tenant used of it and when it resets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<crate::accounts::BudgetCaps>,
}

/// A tenant's quotas; an absent field is unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QuotaCaps {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens_per_task: Option<u32>,
    /// Most KV cache (context tokens: prompt + `max_tokens`) the tenant's unfinished
    /// tasks may hold at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_kv_tokens: Option<u64>,
    /// Prompt plus output tokens per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    /// Prompt plus output tokens per UTC month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_month: Option<u64>,
}

/// The OrchQueue API version (the OpenAPI `info.version`).
pub const API_VERSION: &str = "1.0.0";

/// Feature flags this build serves.
pub const FEATURES: &[&str] = &[
    "sse",
    "sse_resume_last_event_id",
    "multiple_readers",
    "cancel",
    "sessions",
    "session_kv_affinity",
    "priorities",
    "backpressure_429",
    "drain",
    "reload",
    "determinism_strict",
    "placement_pin_prefer_avoid",
    "deadline_admission",
    "deadline_tracking",
    "api_keys",
    "tenant_quotas",
    "weighted_fair_queuing",
    "prefix_cache_placement",
    "openai_compatible",
    "runtime_replicas",
    "live_reconfiguration",
];

/// `POST /v1/pools/{id}/replicas`: an engine running elsewhere joins the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AddReplicaRequest {
    /// Where the engine listens: `http://host:port` (at most 2048 bytes).
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 8, max_length = 2048, pattern = "^https?://")
    )]
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddReplicaResponse {
    pub pool_id: String,
    /// `<pool>-x<N>`.
    pub replica_id: String,
    pub url: String,
}

/// `GET /v1/pools/{id}/replicas`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaList {
    pub pool_id: String,
    pub replicas: Vec<ReplicaView>,
}

/// `DELETE /v1/pools/{id}/replicas/{replica}`: draining, then detached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RemoveReplicaResponse {
    pub pool_id: String,
    pub replica_id: String,
    pub draining: bool,
    pub deadline_ms: u64,
}

/// `POST /v1/admin/reload-config`: what the new file changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReloadConfigReport {
    pub applied: Vec<String>,
    /// Changes that need a restart (`[server]`, removing a pool) or that failed.
    pub not_applied: Vec<String>,
}
