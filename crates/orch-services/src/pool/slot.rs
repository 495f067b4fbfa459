//! A claimed replica slot. Dropping it tells the pool actor the slot is free (with the
//! task's observed service times, if it finished normally); no lock is taken.

use super::Cmd;
use orch_domain::TaskId;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Service times a finished task observed, for the pool's ETA estimates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observed {
    pub service_ms: f64,
    /// Decode milliseconds per output token (None when no token was produced).
    pub per_token_ms: Option<f64>,
}

/// What the engine reported of the prompt: its tokens, and how many it reused from its
/// cache (corrects the prefix index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSeen {
    pub tokens_in: u32,
    pub tokens_cached: u32,
}

pub struct SlotGuard {
    tx: mpsc::UnboundedSender<Cmd>,
    replica_id: Arc<str>,
    task: TaskId,
    /// The pool's number for this claim.
    claim: u64,
    observed: Option<Observed>,
    prompt_tokens: Option<u32>,
    cache: Option<CacheSeen>,
    released: bool,
}

impl SlotGuard {
    pub(crate) fn new(
        tx: mpsc::UnboundedSender<Cmd>,
        replica_id: Arc<str>,
        (task, claim): (TaskId, u64),
    ) -> Self {
        Self {
            tx,
            replica_id,
            task,
            claim,
            observed: None,
            prompt_tokens: None,
            cache: None,
            released: false,
        }
    }

    /// Give the slot back now (once; dropping the guard then does nothing).
    pub fn release(&mut self) {
        if !std::mem::replace(&mut self.released, true) {
            let _ = self.tx.send(Cmd::SlotFreed {
                replica_id: self.replica_id.clone(),
                task: self.task,
                claim: self.claim,
                observed: self.observed.take(),
                prompt_tokens: self.prompt_tokens,
                cache: self.cache,
            });
        }
    }

    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// Report the uncached prompt tokens the engine processed (the fair queue charges
    /// them), with the slot's release.
    pub fn prompt_processed(&mut self, tokens: u32) {
        self.prompt_tokens = Some(tokens);
    }

    /// Report what the engine reused of the prompt, with the slot's release.
    pub fn cache_seen(&mut self, seen: CacheSeen) {
        self.cache = Some(seen);
    }

    /// Report service times with the slot's release.
    pub fn observe(&mut self, observed: Observed) {
        self.observed = Some(observed);
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        // a stopped actor has nothing left to account for
        self.release();
    }
}
