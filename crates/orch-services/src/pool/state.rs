//! A pool's scheduling state: its queue, replicas with slot accounting, pinned engine
//! facts, drain flag and service-time estimates. Plain data with no lock: the pool
//! actor owns it and is the only code that changes it.

use crate::config::PoolSpec;
use adapter_api::{Properties, WorkerAdapter};
use orch_domain::TaskId;
use orchestrator_core::eta::ServiceTime;
use orchestrator_core::placement::ReplicaLoad;
use orchestrator_core::prefix::PrefixIndex;
use orchestrator_core::BoundedQueue;
use std::sync::Arc;

/// One engine replica as the pool sees it.
pub struct Replica {
    pub id: Arc<str>,
    pub adapter: Arc<dyn WorkerAdapter>,
    pub props: Arc<Properties>,
    pub ready: bool,
    pub draining: bool,
    /// Started by a reload and not switched in yet: takes no work.
    pub staged: bool,
    pub busy: u32,
    pub last_error: Option<String>,
    /// Where the replica listens, when known.
    pub endpoint: Option<String>,
    /// OS process id of a local replica.
    pub pid: Option<u32>,
}

impl Replica {
    /// Ready, not draining, not staged: may receive new work.
    pub fn serving(&self) -> bool {
        self.ready && !self.draining && !self.staged
    }

    pub fn load(&self) -> ReplicaLoad {
        ReplicaLoad {
            ready: self.ready,
            draining: self.draining || self.staged,
            slots_total: self.props.slots,
            slots_busy: self.busy,
        }
    }
}

/// Engine facts every replica of a pool must share (version pinning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    pub engine: String,
    pub engine_version: String,
    pub model_digest: String,
    /// What the engine computes about its model (see `Properties`).
    pub model_fingerprint: Option<String>,
    pub ctx_max: u32,
    pub sampler_profile_version: String,
}

impl Pinned {
    pub fn of(p: &Properties, sampler_profile_version: &str) -> Self {
        Self {
            engine: p.engine.clone(),
            engine_version: p.engine_version.clone(),
            model_digest: p.model_digest.clone(),
            model_fingerprint: p.model_fingerprint.clone(),
            ctx_max: p.ctx_max,
            sampler_profile_version: sampler_profile_version.to_string(),
        }
    }
}

/// Per-token decode time assumed before the first task finishes.
pub const PRIOR_TOKEN_MS: f64 = 20.0;

pub struct PoolState {
    pub queue: BoundedQueue<TaskId>,
    pub replicas: Vec<Replica>,
    pub service: ServiceTime,
    /// Decode time per output token.
    pub per_token: ServiceTime,
    pub pinned: Option<Arc<Pinned>>,
    pub draining: bool,
    pub rotate: usize,
    pub last_error: Option<String>,
    pub spec: Arc<PoolSpec>,
    /// Which replica recently served which prompt prefix (prefix placement).
    pub prefix: PrefixIndex<Arc<str>>,
    /// Prefix placements by claim, until their engine reports (`observed.rs`).
    pub watched: super::observed::Watch,
}

impl PoolState {
    pub fn new(spec: PoolSpec, prior_service_ms: f64) -> Self {
        Self {
            queue: BoundedQueue::new(spec.queue),
            replicas: Vec::new(),
            service: ServiceTime::new(prior_service_ms),
            per_token: ServiceTime::new(PRIOR_TOKEN_MS),
            pinned: None,
            draining: false,
            rotate: 0,
            last_error: None,
            prefix: PrefixIndex::new(spec.prefix_index_blocks),
            watched: Default::default(),
            spec: Arc::new(spec),
        }
    }

    pub fn loads(&self) -> Vec<ReplicaLoad> {
        self.replicas.iter().map(Replica::load).collect()
    }

    pub fn free_slots(&self) -> u32 {
        if self.draining {
            return 0;
        }
        orchestrator_core::placement::free_slots(&self.loads())
    }

    pub fn slots_total(&self) -> u32 {
        self.replicas
            .iter()
            .filter(|r| r.serving())
            .map(|r| r.props.slots)
            .sum()
    }

    pub fn busy_total(&self) -> u32 {
        self.replicas.iter().map(|r| r.busy).sum()
    }

    pub fn is_ready(&self) -> bool {
        !self.draining && self.replicas.iter().any(Replica::serving)
    }

    pub fn replica_mut(&mut self, id: &str) -> Option<&mut Replica> {
        self.replicas.iter_mut().find(|r| &*r.id == id)
    }

    /// Milliseconds a client should wait before retrying a refused admission.
    pub fn retry_after_ms(&self) -> u64 {
        let slots = self.slots_total().max(1) as f64;
        ((self.service.mean_ms() / slots).round() as u64).max(1000)
    }
}
