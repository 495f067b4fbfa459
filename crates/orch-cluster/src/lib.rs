//! Cluster mode on NATS JetStream: the pieces several orchestratord instances share.
//!
//! Cluster mode of `docs/cluster-plan.md`: connecting to a JetStream cluster,
//! each pool's replicated task queue (file storage, R3, bounded, discard-new, work-queue
//! retention, the task id as the dedupe id), pool-leader leases in a KV bucket (create,
//! renew by revision, expire by age; [`lead`] keeps one and steps down when it cannot
//! renew), the leader's dispatch consumer ([`Dispatch`]), tasks' frames
//! ([`FrameLog`]: batched, fenced appends; reads by direct get after any id) and tasks'
//! statuses and cancel requests ([`TaskStates`]), what instances store and send each
//! other about tasks ([`wire`]), tenants' cluster-wide quota ledgers (`quota`), every
//! instance's replicas serving the pools' leaders (`hosted`), and an instance's
//! membership ([`Node`]): the services' task home and its pool leadership. What each
//! JetStream answer means for a client is decided here, once: a full queue is a 429, a
//! cluster without quorum a 503.
//!
//! Owns: the NATS connection, the JetStream names and the wire forms. Never: HTTP (it
//! reaches the services only through `orch-services`' `TaskHome` seam, and runs tasks
//! through the narrow `LocalPools` handle).

mod dispatch;
mod frames;
mod hosted;
pub mod keys;
mod lease;
pub mod metrics;
mod node;
#[cfg(feature = "testing")]
pub mod probe;
mod queue;
mod quota;
mod security;
mod tasks;
#[cfg(feature = "testing")]
pub mod testing;
pub mod usage;
pub mod wire;

pub use dispatch::{Dispatch, QueuedTask};
pub use frames::{Frame, FrameError, FrameLog, FrameWriter, ReadFrom};
pub use lease::{lead, Lease, LeaseError, Leases};
pub use node::{Node, NodeConfig, PoolQueue};
pub use queue::{PublishError, Published, TaskQueue};
pub use security::{Auth, Security, Tls};
pub use tasks::{Claim, TaskStateError, TaskStates};

use async_nats::jetstream;
use std::time::Duration;

/// How a cluster is reached and how its streams are made.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `nats://host:port` of each server (any one suffices to connect).
    pub urls: Vec<String>,
    /// Copies of every stream and bucket (3 survives one server's loss).
    pub replicas: usize,
    /// How long a JetStream request may take before it counts as unavailable.
    pub request_timeout: Duration,
    /// How long a pool's queue stream remembers a stored task id (so a retried store
    /// of one admission is not stored twice). Task ids stay unique in the cluster
    /// beyond it: each is claimed for its tenant ([`TaskStates::claim`]).
    pub dedupe_window: Duration,
    /// Credentials and TLS for the servers.
    pub security: Security,
    /// Most bytes the frames stream holds (discard-new: admission refuses with 503
    /// while it is nine tenths full, and frames wait for room).
    pub max_frame_bytes: i64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            urls: vec!["nats://127.0.0.1:4222".into()],
            replicas: 3,
            request_timeout: Duration::from_millis(1500),
            dedupe_window: Duration::from_secs(120),
            security: Security::default(),
            max_frame_bytes: 1 << 30,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot reach the NATS cluster at {urls:?}: {reason}")]
    Connect { urls: Vec<String>, reason: String },
    #[error("JetStream refused to set up {what}: {reason}")]
    Setup { what: String, reason: String },
}

/// A connection to the cluster and its JetStream context.
#[derive(Clone)]
pub struct Cluster {
    pub(crate) js: jetstream::Context,
    pub(crate) cfg: ClusterConfig,
}

/// Whether a JetStream error is a compare-and-set refused for its expected last
/// sequence (error codes 10071 and, on newer servers, 10164, which async-nats 0.46
/// does not classify), from its description anywhere in its chain.
pub(crate) fn is_wrong_last_sequence(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.to_string().contains("wrong last sequence") {
            return true;
        }
        cur = err.source();
    }
    false
}

/// How long setting up a stream (at start, or when a leader takes a queue over) keeps
/// trying: right after the servers start, or while a meta leader is elected, the
/// JetStream API does not answer for seconds (seen on this 2-core machine).
const SETUP_RETRY: Duration = Duration::from_secs(20);
/// First pause between setup tries, doubled after each failed try (a meta leader
/// being elected answers "no suitable peers" or error 10008 for a while).
const SETUP_PAUSE: Duration = Duration::from_millis(100);
/// Longest pause between setup tries.
const SETUP_PAUSE_MAX: Duration = Duration::from_secs(2);

impl Cluster {
    /// Make (or find) a stream, trying again while the JetStream API does not answer.
    pub(crate) async fn ensure_stream(
        &self,
        cfg: jetstream::stream::Config,
    ) -> Result<jetstream::stream::Stream, ClusterError> {
        let t0 = std::time::Instant::now();
        let mut pause = SETUP_PAUSE;
        loop {
            match self.js.get_or_create_stream(cfg.clone()).await {
                Ok(s) => return Ok(self.keep_bounds(s, &cfg).await),
                Err(e) if t0.elapsed() < SETUP_RETRY => {
                    tracing::debug!(stream = %cfg.name, error = %e, "stream setup not answered; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(SETUP_PAUSE_MAX);
                }
                Err(e) => {
                    return Err(ClusterError::Setup {
                        what: format!("stream {}", cfg.name),
                        reason: e.to_string(),
                    })
                }
            }
        }
    }

    /// A stream made earlier with smaller bounds (age, bytes) or another discard policy
    /// gets this instance's: an operator who raises a retention sees it applied, and a
    /// stream made by an older version gets the policy this one relies on. Bounds are
    /// only raised (lowering one would trim stored messages, and an instance with a
    /// smaller setting must not shorten what the others keep). Other settings are
    /// read fresh and left as they are (a pool's leader raises its queue's message
    /// bound itself).
    async fn keep_bounds(
        &self,
        mut s: jetstream::stream::Stream,
        want: &jetstream::stream::Config,
    ) -> jetstream::stream::Stream {
        // 0 and -1 both mean unlimited; zero age means unlimited too
        let bytes = |b: i64| if b <= 0 { i64::MAX } else { b };
        let age = |a: Duration| if a.is_zero() { Duration::MAX } else { a };
        let Ok(info) = s.info().await else {
            return s;
        };
        let have = info.config.clone();
        let raise_age = age(want.max_age) > age(have.max_age);
        let raise_bytes = bytes(want.max_bytes) > bytes(have.max_bytes);
        let discard = want.discard != have.discard;
        if !raise_age && !raise_bytes && !discard {
            return s;
        }
        let mut cfg = have;
        if raise_age {
            cfg.max_age = want.max_age;
        }
        if raise_bytes {
            cfg.max_bytes = want.max_bytes;
        }
        cfg.discard = want.discard;
        match self.js.update_stream(cfg).await {
            Ok(_) => {
                tracing::info!(stream = %want.name, max_age = ?want.max_age, max_bytes = want.max_bytes, "stream bounds updated");
            }
            Err(e) => {
                tracing::warn!(stream = %want.name, error = %e, "could not update the stream's bounds");
            }
        }
        s
    }

    /// A KV bucket whose values live `max_age`, created if missing. Its stream is made
    /// here with the settings async-nats's `create_key_value` would use: that call
    /// first reads the account info, whose 2.9 answer async-nats 0.46 cannot parse
    /// (seen against nats-server 2.9.10). With `direct` reads any replica answers a
    /// get (fast, and even without quorum, but maybe a moment behind); without it the
    /// stream's leader answers (a value just written elsewhere is seen).
    pub(crate) async fn kv_bucket(
        &self,
        bucket: &str,
        max_age: Duration,
        direct: bool,
    ) -> Result<jetstream::kv::Store, ClusterError> {
        use jetstream::stream::{Config, DiscardPolicy, StorageType};
        let setup = |e: String| ClusterError::Setup {
            what: format!("KV bucket {bucket}"),
            reason: e,
        };
        self.ensure_stream(Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age,
            storage: StorageType::File,
            num_replicas: self.cfg.replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: direct,
            discard: DiscardPolicy::New,
            ..Default::default()
        })
        .await?;
        let t0 = std::time::Instant::now();
        let mut pause = SETUP_PAUSE;
        loop {
            match self.js.get_key_value(bucket).await {
                Ok(kv) => return Ok(kv),
                Err(e) if t0.elapsed() < SETUP_RETRY => {
                    tracing::debug!(bucket, error = %e, "bucket not answered; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(SETUP_PAUSE_MAX);
                }
                Err(e) => return Err(setup(e.to_string())),
            }
        }
    }

    pub async fn connect(cfg: ClusterConfig) -> Result<Self, ClusterError> {
        let err = |e: String| ClusterError::Connect {
            urls: cfg.urls.clone(),
            reason: e,
        };
        let addrs = cfg
            .urls
            .iter()
            .map(|u| u.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?;
        let options = async_nats::ConnectOptions::new()
            .name("orchestratord")
            .connection_timeout(cfg.request_timeout.max(Duration::from_secs(1)));
        let options = cfg
            .security
            .apply(options)
            .await
            .map_err(|e| err(format!("credentials: {e}")))?;
        let client = options
            .connect(addrs)
            .await
            .map_err(|e| err(e.to_string()))?;
        let mut js = jetstream::new(client);
        js.set_timeout(cfg.request_timeout);
        Ok(Self { js, cfg })
    }
}
