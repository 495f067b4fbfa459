//! The observed-precise prefix index: each prefix placement is remembered with its
//! claim until the slot comes back; then what the engine reported reusing of the
//! prompt (`tokens_cached` of `tokens_in`) corrects the index (see
//! [`PrefixIndex::observe`](orchestrator_core::prefix::PrefixIndex::observe)).
//!
//! Token counts map to prompt bytes by proportion, so a shortfall of a few blocks is
//! forgiven. Only first runs that asked the engine to reuse its cache are watched: a
//! strict or `cold` task computes its whole prompt whatever the engine holds, and a
//! continuation's prompt is not the one placed.

use super::slot::CacheSeen;
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
}

/// Whether the engine is asked to reuse its cache for this request (the runner asks
/// exactly then).
pub fn reuses_cache(req: &TaskRequest) -> bool {
    req.kv_hint != Some(KvHint::Cold) && req.determinism != Some(Determinism::Strict)
}

/// Blocks of a `prompt_bytes` prompt the engine reused, by the token proportion.
fn reused_blocks(prompt_bytes: usize, seen: CacheSeen) -> usize {
    if seen.tokens_in == 0 {
        return 0;
    }
    let cached = u64::from(seen.tokens_cached.min(seen.tokens_in));
    let bytes = prompt_bytes as u64 * cached / u64::from(seen.tokens_in);
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
    pub fn insert(&mut self, claim: u64, placed: Placed, replica: Arc<str>, prompt_bytes: usize) {
        self.by_claim.insert(
            claim,
            Watched {
                placed,
                replica,
                prompt_bytes,
            },
        );
    }

    /// A claim's slot came back: correct `index` with the engine's report, if any.
    pub fn seen(
        &mut self,
        index: &mut PrefixIndex<Arc<str>>,
        pool_id: &str,
        claim: u64,
        seen: Option<CacheSeen>,
    ) {
        let Some(w) = self.by_claim.remove(&claim) else {
            return;
        };
        let Some(seen) = seen else { return };
        let reused = reused_blocks(w.prompt_bytes, seen);
        let slack = (w.placed.predicted / 16).max(2);
        let learned = index.observe(&w.placed, &w.replica, reused, slack);
        crate::metrics::prefix_observed(pool_id, label(learned));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reused_tokens_map_to_blocks_by_proportion() {
        let seen = |tokens_in, tokens_cached| CacheSeen {
            tokens_in,
            tokens_cached,
        };
        let bytes = 100 * BLOCK_BYTES;
        assert_eq!(reused_blocks(bytes, seen(1600, 1600)), 100);
        assert_eq!(reused_blocks(bytes, seen(1600, 800)), 50);
        assert_eq!(reused_blocks(bytes, seen(1600, 0)), 0);
        assert_eq!(reused_blocks(bytes, seen(0, 0)), 0);
        // a count over the prompt's is clamped
        assert_eq!(reused_blocks(bytes, seen(1600, 9000)), 100);
    }
}
