//! A pool: its queue, its replicas with slot accounting, and the dispatcher's wake-up.
//!
//! All scheduling state of a pool sits behind one mutex so that placement decisions,
//! slot counts and queue contents are always consistent. Slots are held by
//! [`SlotGuard`]s that give the slot back (and wake the dispatcher) when dropped.

use crate::config::PoolSpec;
use adapter_api::{Properties, WorkerAdapter};
use orch_domain::TaskId;
use orchestrator_core::eta::ServiceTime;
use orchestrator_core::placement::ReplicaLoad;
use orchestrator_core::BoundedQueue;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// One engine replica as the pool sees it.
pub struct Replica {
    pub id: String,
    pub adapter: Arc<dyn WorkerAdapter>,
    pub props: Properties,
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
    pub ctx_max: u32,
    pub sampler_profile_version: String,
}

impl Pinned {
    pub fn of(p: &Properties, sampler_profile_version: &str) -> Self {
        Self {
            engine: p.engine.clone(),
            engine_version: p.engine_version.clone(),
            model_digest: p.model_digest.clone(),
            ctx_max: p.ctx_max,
            sampler_profile_version: sampler_profile_version.to_string(),
        }
    }
}

pub struct PoolState {
    pub queue: BoundedQueue<TaskId>,
    pub replicas: Vec<Replica>,
    pub service: ServiceTime,
    /// Decode time per output token.
    pub per_token: ServiceTime,
    pub pinned: Option<Pinned>,
    pub draining: bool,
    pub rotate: usize,
    pub last_error: Option<String>,
    pub spec: PoolSpec,
}

impl PoolState {
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
        self.replicas.iter_mut().find(|r| r.id == id)
    }
}

/// Per-token decode time assumed before the first task finishes.
pub const PRIOR_TOKEN_MS: f64 = 20.0;

pub struct Pool {
    pub id: String,
    state: Mutex<PoolState>,
    /// Wakes the dispatcher: new work, a freed slot, a replica became ready.
    pub wake: Notify,
}

impl Pool {
    pub fn new(spec: PoolSpec, prior_service_ms: f64) -> Self {
        Self {
            id: spec.id.clone(),
            state: Mutex::new(PoolState {
                queue: BoundedQueue::new(spec.queue),
                replicas: Vec::new(),
                service: ServiceTime::new(prior_service_ms),
                per_token: ServiceTime::new(PRIOR_TOKEN_MS),
                pinned: None,
                draining: false,
                rotate: 0,
                last_error: None,
                spec,
            }),
            wake: Notify::new(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A claimed replica slot; dropping it frees the slot and wakes the dispatcher.
pub struct SlotGuard {
    pool: Arc<Pool>,
    replica_id: String,
}

impl SlotGuard {
    /// Claim one slot on `replica_id`; the caller holds the pool lock via `st`.
    pub fn claim(pool: &Arc<Pool>, st: &mut PoolState, replica_id: &str) -> Option<Self> {
        let r = st.replica_mut(replica_id)?;
        r.busy += 1;
        Some(Self {
            pool: pool.clone(),
            replica_id: replica_id.to_string(),
        })
    }

    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        {
            let mut st = self.pool.lock();
            if let Some(r) = st.replica_mut(&self.replica_id) {
                r.busy = r.busy.saturating_sub(1);
            }
        }
        self.pool.wake.notify_one();
    }
}
