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
/// cache when it says (the fair queue charges the rest; the prefix index is corrected
/// by the reuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptSeen {
    pub tokens_in: u32,
    pub tokens_cached: Option<u32>,
}

impl PromptSeen {
    /// Prompt tokens the engine computed (not reused from its cache).
    pub fn processed(&self) -> u32 {
        self.tokens_in
            .saturating_sub(self.tokens_cached.unwrap_or(0))
    }
}

pub struct SlotGuard {
    tx: mpsc::UnboundedSender<Cmd>,
    replica_id: Arc<str>,
    task: TaskId,
    /// The pool's number for this claim.
    claim: u64,
    observed: Option<Observed>,
    prompt: Option<PromptSeen>,
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
            prompt: None,
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
                prompt: self.prompt,
            });
        }
    }

    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// Report what the engine said of the prompt, with the slot's release.
    pub fn prompt_seen(&mut self, seen: PromptSeen) {
        self.prompt = Some(seen);
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
