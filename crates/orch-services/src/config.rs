//! Settings of the services layer and of each pool, independent of any file format.

use orchestrator_core::QueueConfig;
use std::time::Duration;

/// Process-wide service settings.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// A running task with no reader for this long is canceled (`abandoned`).
    pub stream_grace: Duration,
    /// Readers of one task's stream at once, at most (each reader is woken for every
    /// frame); one more is refused 429 `QUOTA_EXCEEDED` (`quota-readers`).
    pub max_readers_per_task: usize,
    /// How long a finished task's frames stay readable (then only its summary).
    pub record_ttl: Duration,
    /// Bounds on what the task table retains; the oldest finished records go first.
    pub retention: Retention,
    /// Most sessions tracked at once; the least recently used is evicted beyond it.
    pub max_sessions: usize,
    /// Idle time after which a session is evicted.
    pub session_ttl: Duration,
    /// Tokens (in + out) a session may use; `None` = unlimited.
    pub session_token_budget: Option<u64>,
    /// How often expired records and sessions are swept.
    pub sweep_interval: Duration,
    /// Service time assumed for ETAs before the first task finishes.
    pub prior_service_ms: f64,
    /// Tenants: weights and quotas.
    pub tenancy: Tenancy,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            stream_grace: Duration::from_secs(30),
            max_readers_per_task: 16,
            record_ttl: Duration::from_secs(300),
            retention: Retention::default(),
            max_sessions: 100_000,
            session_ttl: Duration::from_secs(600),
            session_token_budget: None,
            sweep_interval: Duration::from_secs(1),
            prior_service_ms: 1000.0,
            tenancy: Tenancy::default(),
        }
    }
}

/// Limits on what one tenant may have in the system at once. `None` = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quotas {
    /// Tasks admitted and not yet ended (queued + running).
    pub max_concurrent: Option<u32>,
    /// Tasks waiting in queues.
    pub max_queued: Option<u32>,
    /// Output tokens per minute: `max_tokens` is reserved at admission and what was
    /// not generated is given back when the task ends.
    pub tokens_per_minute: Option<u64>,
    /// Largest `max_tokens` of one task.
    pub max_tokens_per_task: Option<u32>,
    /// Most KV cache, in context tokens, the tenant's admitted and unfinished tasks
    /// (queued or running) may hold at once: each counts its prompt (estimated) plus
    /// its `max_tokens`, the most context it can occupy on its engine.
    pub max_kv_tokens: Option<u64>,
    /// Prompt plus output tokens per UTC day (needs the usage ledger).
    pub tokens_per_day: Option<u64>,
    /// Prompt plus output tokens per UTC month (needs the usage ledger).
    pub tokens_per_month: Option<u64>,
}

/// One tenant's share weight and quotas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSpec {
    pub name: String,
    /// Share of each queue's service relative to other tenants (≥ 1).
    pub weight: u32,
    pub quotas: Quotas,
}

impl TenantSpec {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            weight: 1,
            quotas: Quotas::default(),
        }
    }
}

/// Tenants known from configuration, and what a tenant not listed gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenancy {
    pub tenants: Vec<TenantSpec>,
    /// Weight and quotas of tenants not listed (its name is ignored).
    pub defaults: TenantSpec,
}

impl Default for Tenancy {
    fn default() -> Self {
        Self {
            tenants: Vec::new(),
            defaults: TenantSpec::new("default"),
        }
    }
}

/// Bounds on finished task records kept by the task table.
///
/// A finished record first keeps all its frames (so late readers and `Last-Event-ID`
/// resumes work); past `max_frames_records`, `max_frames_bytes` or the record TTL its
/// frames are dropped and a small summary remains (status, counts, finish reason), so
/// the id still answers `GET /v1/tasks/{id}` and is refused for reuse (409). Past
/// `max_summaries` or `summary_ttl` the summary goes too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_frames_records: usize,
    pub max_frames_bytes: u64,
    pub max_summaries: usize,
    pub summary_ttl: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_frames_records: 10_000,
            max_frames_bytes: 64 * 1024 * 1024,
            max_summaries: 100_000,
            summary_ttl: Duration::from_secs(3600),
        }
    }
}

/// How a pool picks the replica for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlacementMode {
    /// The least loaded replica, ignoring sessions and prompts.
    LeastLoaded,
    /// A session's replica when it can take work, else the least loaded.
    Session,
    /// Session affinity, then the replica holding the longest cached prompt prefix
    /// (within a load slack), else the least loaded.
    #[default]
    Prefix,
}

impl PlacementMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PlacementMode::LeastLoaded => "least-loaded",
            PlacementMode::Session => "session",
            PlacementMode::Prefix => "prefix",
        }
    }
}

/// What a pool is configured to be. Engine facts (version, digest, slots, ctx) come
/// from its replicas' properties and are pinned by the first replica.
#[derive(Debug, Clone, PartialEq)]
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
    /// Wall-clock limit on one generation, from submit to its end.
    pub decode_timeout: Duration,
    /// Longest a task may wait in the queue before it ends with `POOL_UNAVAILABLE`.
    pub queue_wait_limit: Duration,
    /// Attempts on another replica when a task fails before its first token.
    pub retries_before_first_token: u32,
    /// Times a generation may move to another replica (or the same one restarted) and
    /// continue from its tokens so far when its engine fails mid-stream (0 = never).
    pub migration_limit: u32,
    /// How often a waiting or running task's stream gets a `metrics` frame
    /// (zero = never).
    pub metrics_frame_interval: Duration,
    pub placement: PlacementMode,
    /// Entries the prefix index keeps, one per prompt block per replica holding it
    /// (least recently used go first).
    pub prefix_index_blocks: usize,
    /// The prefix index is corrected by what engines report reusing (observed-precise);
    /// off, it records only where prompts were sent.
    pub prefix_observed: bool,
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
            decode_timeout: Duration::from_secs(600),
            queue_wait_limit: Duration::from_secs(300),
            retries_before_first_token: 1,
            migration_limit: 3,
            metrics_frame_interval: Duration::from_secs(1),
            placement: PlacementMode::Prefix,
            prefix_index_blocks: 100_000,
            prefix_observed: true,
        }
    }
}
