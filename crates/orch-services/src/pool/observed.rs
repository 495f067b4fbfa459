//! The observed-precise prefix index: each prefix placement is remembered with its
//! claim until the slot comes back; then what the engine reported reusing of the
//! prompt (`tokens_cached` of `tokens_in`) corrects the index (see
//! [`PrefixIndex::observe`](orchestrator_core::prefix::PrefixIndex::observe)).
//!
//! Token counts map to prompt bytes by proportion, so a shortfall of a quarter of the
//! prediction is forgiven. An eviction is inferred only from a task placed on an idle
//! replica: on a busy one the engine may run it in another slot than the one holding
//! its prefix (or the prefix may still be being computed), which is a miss without an
//! eviction; such tasks only confirm. Only first runs that asked the engine to reuse
//! its cache are watched: a strict or `cold` task computes its whole prompt whatever
//! the engine holds, and a continuation's prompt is not the one placed.

use super::slot::PromptSeen;
use orch_domain::{Determinism, KvHint, TaskRequest};
use orchestrator_core::prefix::{Learned, Placed, PrefixIndex, BLOCK_BYTES};
use std::collections::HashMap;
use std::sync::Arc;

/// Prefix placements by claim, until their slots come back.
#[derive(Default)]
pub struct Watch {
    by_claim: HashMap<u64, Watched>,
}

/// A prefix placement waiting for its engine's report.
pub struct Watched {
    placed: Placed,
    replica: Arc<str>,
    prompt_bytes: usize,
    /// The replica ran nothing when the task was placed: its engine could choose any
    /// slot, so a shortfall is an eviction, not a prefix still being computed in a
    /// busy slot.
    idle: bool,
}

/// Whether the engine is asked to reuse its cache for this request (the runner asks
/// exactly then).
pub fn reuses_cache(req: &TaskRequest) -> bool {
    req.kv_hint != Some(KvHint::Cold) && req.determinism != Some(Determinism::Strict)
}

/// Blocks of a `prompt_bytes` prompt the engine reused (`tokens_cached` of
/// `tokens_in`), by the token proportion.
fn reused_blocks(prompt_bytes: usize, tokens_in: u32, tokens_cached: u32) -> usize {
    if tokens_in == 0 {
        return 0;
    }
    let cached = u64::from(tokens_cached.min(tokens_in));
    let bytes = prompt_bytes as u64 * cached / u64::from(tokens_in);
    (bytes / BLOCK_BYTES as u64) as usize
}

fn label(l: Learned) -> &'static str {
    match l {
        Learned::Confirmed => "confirmed",
        Learned::Evicted => "evicted",
        Learned::Discovered => "discovered",
        Learned::Nothing => "nothing",
    }
}

impl Watch {
    /// Remember a prefix placement under its claim.
    pub fn insert(
        &mut self,
        claim: u64,
        placed: Placed,
        replica: Arc<str>,
        prompt_bytes: usize,
        idle: bool,
    ) {
        self.by_claim.insert(
            claim,
            Watched {
                placed,
                replica,
                prompt_bytes,
                idle,
            },
        );
    }

    /// A claim's slot came back: correct `index` with the engine's report, if any.
    pub fn seen(
        &mut self,
        index: &mut PrefixIndex<Arc<str>>,
        pool_id: &str,
        claim: u64,
        seen: Option<PromptSeen>,
    ) {
        let Some(w) = self.by_claim.remove(&claim) else {
            return;
        };
        // an engine that does not say what it reused teaches nothing
        let Some((tokens_in, Some(cached))) = seen.map(|s| (s.tokens_in, s.tokens_cached)) else {
            return;
        };
        let reused = reused_blocks(w.prompt_bytes, tokens_in, cached);
        // a real eviction leaves little or nothing reused; a quarter's shortfall is
        // forgiven (chat templates, uneven bytes per token)
        let slack = if w.idle {
            (w.placed.predicted() / 4).max(2)
        } else {
            usize::MAX
        };
        let learned = index.observe(&w.placed, &w.replica, reused, slack);
        crate::metrics::prefix_observed(pool_id, label(learned));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reused_tokens_map_to_blocks_by_proportion() {
        let bytes = 100 * BLOCK_BYTES;
        assert_eq!(reused_blocks(bytes, 1600, 1600), 100);
        assert_eq!(reused_blocks(bytes, 1600, 800), 50);
        assert_eq!(reused_blocks(bytes, 1600, 0), 0);
        assert_eq!(reused_blocks(bytes, 0, 0), 0);
        // a count over the prompt's is clamped
        assert_eq!(reused_blocks(bytes, 1600, 9000), 100);
    }

    /// A miss on a busy replica (another slot, or a prefix still computing) is not an
    /// eviction; the same miss on an idle one is.
    #[test]
    fn only_a_miss_on_an_idle_replica_is_an_eviction() {
        let r0: Arc<str> = "r0".into();
        let old = orchestrator_core::prefix::block_hashes(&[b'o'; 8 * BLOCK_BYTES], 64);
        let hot = orchestrator_core::prefix::block_hashes(&[b'h'; 8 * BLOCK_BYTES], 64);
        let miss = PromptSeen {
            tokens_in: 800,
            tokens_cached: Some(0),
        };
        for (idle, old_kept) in [(false, 8), (true, 0)] {
            let mut ix = PrefixIndex::new(1000);
            let mut w = Watch::default();
            ix.record(&old, &r0);
            ix.record(&hot, &r0);
            let placed = ix.place(hot.clone(), &r0, 8);
            w.insert(1, placed, r0.clone(), 8 * BLOCK_BYTES, idle);
            w.seen(&mut ix, "p", 1, Some(miss));
            assert_eq!(
                ix.matched(&old, std::slice::from_ref(&r0)),
                vec![old_kept],
                "idle {idle}"
            );
            assert!(w.by_claim.is_empty(), "the claim is no longer watched");
        }
    }
}
