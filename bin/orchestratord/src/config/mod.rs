//! The TOML config file: server settings and pools. Strict: unknown keys are errors,
//! and [`Config::validate`] checks what types cannot (ids, counts, duplicates).

use adapter_mock::MockConfig;

mod auth;
mod check;
mod cluster;
mod file;
mod state;
pub use auth::{AuthSection, KeyEntry, KeysFile, MetricsAccess};
pub use cluster::ClusterSection;
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub supervision: Supervision,
    /// Weight and quotas of tenants not listed under `[tenants]`.
    #[serde(default)]
    pub tenant_defaults: TenantConfig,
    /// Tenants by name.
    #[serde(default)]
    pub tenants: std::collections::BTreeMap<String, TenantConfig>,
    #[serde(default)]
    pub pools: Vec<PoolConfig>,
    /// Cluster mode (needs the `cluster` build feature); absent: standalone.
    #[serde(default)]
    pub cluster: Option<ClusterSection>,
    /// Directory of the config file (relative paths in it are resolved from here).
    #[serde(skip)]
    pub base_dir: Option<std::path::PathBuf>,
    /// The file it was read from (what a reconfiguration re-reads).
    #[serde(skip)]
    pub source: Option<std::path::PathBuf>,
}

/// `[supervision]`: how replicas are health-checked and when they are restarted.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Supervision {
    pub health_interval_ms: u64,
    /// A health check not answered within this fails.
    pub health_timeout_ms: u64,
    /// Consecutive failed checks before a replica is marked unready (takes no work).
    pub unhealthy_after: u32,
    /// Consecutive failed checks before a replica that still runs (hung, stopped) is
    /// killed and restarted.
    pub restart_unresponsive_after: u32,
}

impl Default for Supervision {
    fn default() -> Self {
        Self {
            health_interval_ms: 500,
            health_timeout_ms: 1000,
            unhealthy_after: 2,
            restart_unresponsive_after: 5,
        }
    }
}

/// A tenant's weight and quotas (absent quota = unlimited).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    pub weight: u32,
    pub max_concurrent: Option<u32>,
    pub max_queued: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub max_tokens_per_task: Option<u32>,
    /// Most KV cache (context tokens: prompt + max_tokens) the tenant's unfinished
    /// tasks may hold at once (per instance in cluster mode).
    pub max_kv_tokens: Option<u64>,
    /// Prompt plus output tokens per UTC day, counted by the usage ledger.
    pub tokens_per_day: Option<u64>,
    /// Prompt plus output tokens per UTC month, counted by the usage ledger.
    pub tokens_per_month: Option<u64>,
}

impl Default for TenantConfig {
    fn default() -> Self {
        Self {
            weight: 1,
            max_concurrent: None,
            max_queued: None,
            tokens_per_minute: None,
            max_tokens_per_task: None,
            max_kv_tokens: None,
            tokens_per_day: None,
            tokens_per_month: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Readers of one task's stream at once (429 `quota-readers` beyond).
    pub max_readers_per_task: usize,
    /// Open connections at most; one more gets a bare 503 and is closed.
    pub max_connections: usize,
    /// Connections not yet authenticated (no request on them has passed a key check),
    /// at most, in all; beyond it a new connection serves one request and is closed
    /// unless that request authenticates. Absent: half of `max_connections`.
    pub max_unauthenticated_connections: Option<usize>,
    /// Connections not yet authenticated from one peer address, at most; one more
    /// gets a bare 503 and is closed. 0 = no limit.
    pub max_unauthenticated_per_peer: usize,
    /// Connections from one peer address, at most, authenticated or not (behind a
    /// proxy every client has the proxy's address). 0 = no limit.
    pub max_connections_per_peer: usize,
    /// A request's header block must arrive within this of the connection opening
    /// or of its previous response (slowloris and idle keep-alive connections).
    pub header_read_timeout_ms: u64,
    /// A client that reads nothing for this long while a response waits to be
    /// written is disconnected (its stream's abandon grace then applies).
    pub write_stall_timeout_ms: u64,
    /// A request body must arrive whole within this (408 after).
    pub body_read_timeout_ms: u64,
    /// Kernel send buffer of each connection, in bytes (fixed; see `write_stall_timeout_ms`).
    pub send_buffer_bytes: usize,
    /// Host names (or `name:port`) this server answers to besides loopback names and
    /// its listen address; when set, a request with any other `Host` is refused (DNS
    /// rebinding). A loopback server answers only to loopback names without it.
    pub allowed_hosts: Vec<String>,
    /// Origins (`https://ui.example`) whose pages may send requests, besides the
    /// server's own; any other `Origin` is refused (cross-site requests).
    pub allowed_origins: Vec<String>,
    /// Where keys made through the API and the usage ledger are kept (a SQLite
    /// database, `accounts.db`). Absent: `$ORCH_STATE_DIR`, else
    /// `$XDG_STATE_HOME/orchestratord`, else `~/.local/state/orchestratord`.
    pub state_dir: Option<String>,
    /// The keys API, the usage ledger and token budgets (on by default).
    pub accounts: bool,
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
            max_readers_per_task: 16,
            max_connections: 10_000,
            max_unauthenticated_connections: None,
            max_unauthenticated_per_peer: 256,
            max_connections_per_peer: 0,
            header_read_timeout_ms: 10_000,
            write_stall_timeout_ms: 30_000,
            body_read_timeout_ms: 30_000,
            send_buffer_bytes: 256 * 1024,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            state_dir: None,
            accounts: true,
        }
    }
}

/// A pool: its id and model, queue and timing settings, and its engine with that
/// engine's own settings. Read from the file's form ([`file::PoolFile`]): `engine = "…"`
/// picks the variant and `[pools.<engine>]` holds its settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "file::PoolFile")]
pub struct PoolConfig {
    pub id: String,
    pub engine: EngineConfig,
    /// Catalog name clients send as `model_ref`.
    pub model: String,
    pub replicas: u32,
    pub queue_capacity: usize,
    pub queue_policy: FullPolicy,
    pub interactive_weight: u32,
    pub max_tokens_out: u32,
    pub sampler_profile_version: String,
    pub first_token_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    /// Wall-clock limit on one generation.
    pub decode_timeout_ms: u64,
    /// Longest a task may wait in the queue (then it ends with POOL_UNAVAILABLE).
    pub queue_wait_limit_ms: u64,
    pub retries_before_first_token: u32,
    /// Times a generation whose engine fails mid-stream may move to another replica and
    /// continue from its tokens so far (0 = never; then the failure ends it).
    pub migration_limit: u32,
    /// Sharing among tenants inside each priority class.
    pub fairness: FairnessChoice,
    /// A task that waited this long is served next in its class (0 = never).
    pub aging_ms: u64,
    /// How often waiting and running tasks get a `metrics` frame (0 = never).
    pub metrics_frame_interval_ms: u64,
    /// How a replica is picked.
    pub placement: PlacementChoice,
    /// Prefix index entries per pool (one per 256-byte block per replica holding it).
    pub prefix_index_blocks: usize,
    /// Correct the prefix index with what engines report reusing.
    pub prefix_observed: bool,
}

/// A pool's engine with its own settings (`engine = "…"` and `[pools.<engine>]`).
/// A new engine is a variant here and its launcher in `engines.rs`; every place that
/// depends on the engine matches on this enum, so the compiler lists them.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineConfig {
    /// The scriptable mock engine (tests and benchmarks; it names itself `mock`).
    Mock(MockConfig),
    /// llama.cpp's llama-server, spawned or reached by URL.
    Llamacpp(LlamaCppConfig),
    /// Any OpenAI-compatible server by URL.
    Openai(OpenAiPoolConfig),
}

impl EngineConfig {
    /// The `engine` value that selects this variant.
    pub fn name(&self) -> &'static str {
        match self {
            EngineConfig::Mock(_) => "mock",
            EngineConfig::Llamacpp(_) => "llamacpp",
            EngineConfig::Openai(_) => "openai",
        }
    }
}

/// `[pools.openai]`: replicas that are OpenAI-compatible servers someone else runs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiPoolConfig {
    /// One base URL per replica (`http://host:port`; `/v1/...` is appended).
    pub urls: Vec<String>,
    /// The upstream model id; default the pool's `model`.
    #[serde(default)]
    pub model: Option<String>,
    /// Name of an environment variable holding the upstream API key (the key itself
    /// never goes in the config).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Concurrent generations per replica.
    #[serde(default = "openai_slots")]
    pub slots: u32,
    /// Context length when the server does not report one.
    #[serde(default = "openai_ctx")]
    pub ctx: u32,
    /// Pinned model identity; default `openai:<model>`.
    #[serde(default)]
    pub model_digest: Option<String>,
    #[serde(default)]
    pub engine_version: Option<String>,
    #[serde(default = "openai_connect_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "openai_load_ms")]
    pub load_timeout_ms: u64,
}

fn openai_slots() -> u32 {
    4
}
fn openai_ctx() -> u32 {
    4096
}
fn openai_connect_ms() -> u64 {
    2_000
}
fn openai_load_ms() -> u64 {
    60_000
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlacementChoice {
    LeastLoaded,
    Session,
    #[default]
    Prefix,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FairnessChoice {
    #[default]
    Weighted,
    Fifo,
}

/// `[pools.llamacpp]`: how to run (or reach) llama-server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Determinism over throughput: needs `slots = 1`, and runs llama-server with
    /// `--no-cont-batching`, so requests never share a batch and `determinism: strict`
    /// tasks give the same text whatever else runs. Default false.
    pub deterministic: bool,
    /// More llama-server arguments (not `--host`, `--port`, `--api-key`,
    /// `--api-key-file`: the engine listens on loopback with orchestratord's key).
    pub extra_args: Vec<String>,
    /// GGUF files a reload may load must be under this directory; default: the
    /// directory of `model_path`.
    pub models_dir: Option<String>,
    /// Give each spawned engine a fresh random API key (default true), so nothing
    /// else on the machine can use it; `false` for an engine other programs must
    /// reach directly.
    pub engine_api_key: bool,
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
            deterministic: false,
            extra_args: Vec::new(),
            models_dir: None,
            engine_api_key: true,
            url: None,
            model_digest: None,
            load_timeout_ms: 120_000,
            connect_timeout_ms: 2_000,
        }
    }
}

fn migration_limit() -> u32 {
    3
}

fn one() -> u32 {
    1
}
impl PoolConfig {
    /// Slots of one replica (what its engine serves at once).
    pub fn slots_per_replica(&self) -> u32 {
        match &self.engine {
            EngineConfig::Mock(m) => m.slots,
            EngineConfig::Llamacpp(l) => l.slots,
            EngineConfig::Openai(o) => o.slots,
        }
    }
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
fn aging_ms() -> u64 {
    60_000
}
fn metrics_frame_interval_ms() -> u64 {
    1_000
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
        let mut cfg = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })?;
        cfg.base_dir = path.parent().map(Path::to_path_buf);
        cfg.source = Some(path.to_path_buf());
        // the keys file is read (and its entries checked) at load time
        cfg.key_entries()?;
        Ok(cfg)
    }

    /// Every key entry: inline `[[auth.keys]]` and the keys file's `[[keys]]`.
    pub fn key_entries(&self) -> Result<Vec<KeyEntry>, ConfigError> {
        let mut out = self.auth.keys.clone();
        if let Some(f) = &self.auth.keys_file {
            let path = match &self.base_dir {
                Some(d) => d.join(f),
                None => std::path::PathBuf::from(f),
            };
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let file: KeysFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            out.extend(file.keys);
        }
        Ok(out)
    }

    /// The key ring from every key entry (digests checked).
    pub fn key_ring(&self) -> Result<orch_services::KeyRing, ConfigError> {
        let mut ring = orch_services::KeyRing::new();
        for (i, k) in self.key_entries()?.iter().enumerate() {
            let role = orch_services::Role::parse(&k.role).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "auth key #{}: role {:?} must be \"client\" or \"admin\"",
                    i + 1,
                    k.role
                ))
            })?;
            ring.add_scoped(&k.sha256, &k.tenant, role, k.scope())
                .map_err(|e| ConfigError::Invalid(format!("auth key #{}: {e}", i + 1)))?;
        }
        Ok(ring)
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg = Self::parse_unchecked(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Types only (strict keys), without [`problems`](Self::problems).
    pub fn parse_unchecked(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<text>".into(),
            message: e.to_string(),
        })
    }

    /// Everything wrong with the file at `path`, each named by its place in the file
    /// (`orchestratord check-config`); empty when it is good.
    pub fn check_file(path: &Path) -> Result<Self, Vec<String>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
        let mut cfg = Self::parse_unchecked(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => vec![message.trim().to_string()],
            other => vec![other.to_string()],
        })?;
        cfg.base_dir = path.parent().map(Path::to_path_buf);
        cfg.source = Some(path.to_path_buf());
        let mut problems = cfg.problems();
        // inline keys are among the problems; a keys file is read here
        if cfg.auth.keys_file.is_some() {
            if let Err(e) = cfg.key_ring() {
                problems.push(format!("auth.keys_file: {e}"));
            }
        }
        problems.dedup();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(problems)
        }
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
        assert!(e.to_string().contains("pools[0].id"), "{e}");
    }

    #[test]
    fn the_engine_key_selects_the_variant_and_only_its_section() {
        let pool = |engine: &str, section: &str| {
            Config::parse(&format!(
                "[[pools]]\nid='p'\nengine='{engine}'\nmodel='x'\n{section}"
            ))
        };
        let c = pool("mock", "[pools.mock]\nslots = 3\n").unwrap();
        assert!(matches!(&c.pools[0].engine, EngineConfig::Mock(m) if m.slots == 3));
        assert_eq!(c.pools[0].slots_per_replica(), 3);
        // a section is optional where its engine has defaults
        let c = pool("llamacpp", "").unwrap();
        assert_eq!(
            c.pools[0].engine,
            EngineConfig::Llamacpp(LlamaCppConfig::default())
        );
        assert_eq!(c.pools[0].engine.name(), "llamacpp");
        // another engine's section, or a required one missing, refuses the file
        let e = pool("mock", "[pools.llamacpp]\nslots = 1\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("[pools.llamacpp] given for a Mock pool"),
            "{e}"
        );
        let e = pool("openai", "").unwrap_err();
        assert!(e.to_string().contains("needs [pools.openai]"), "{e}");
        assert!(pool("tpu", "").is_err());
    }
}
