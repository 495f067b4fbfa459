//! Counting a prompt with the pool's engine before refusing it on an estimate.
//!
//! Admission estimates a prompt at 4 bytes per token. Prose and code come out near
//! that; whitespace-heavy text (indented documents, padding) tokenizes at up to ~31
//! bytes per token, so the estimate alone would refuse prompts that fit. When a prompt
//! is over the context by the estimate, admission asks one serving replica's engine to
//! count it ([`adapter_api::WorkerAdapter::count_tokens`]) and decides on that.
//!
//! The count's ids go on to the engine with the task, so the prompt is tokenized once.
//!
//! Owns: which prompts are worth an engine's time, how many counts run at once, and
//! what stands when no count comes in time.
//! Never: waits longer than [`COUNT_WAIT`] for a count slot, abandons a count it
//! started, asks about a prompt no tokenizer could fit, or refuses a prompt that could fit
//! because the engine was too busy to count it (it is admitted on the least it can be
//! and the engine decides).

use super::Snapshot;
use adapter_api::TokenCount;
use orch_domain::TaskRequest;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Counts in flight at once, per server: each costs an engine a tokenization of up
/// to the body limit. Two were too few: under load a count takes ~0.5 s while the
/// engine decodes, and two at a time could not keep a 2-slot engine's queue fed
/// (BENCHMARKS, item 2's real-engine half: 0.85× direct's tasks/s at 20 clients,
/// 1.02× with eight).
pub const COUNTS_AT_ONCE: usize = 8;

/// No tokenizer we know of makes longer tokens (Gemma's longest are 31 spaces); a
/// prompt that would not fit even at this many bytes per token is refused uncounted.
const MAX_BYTES_PER_TOKEN: u64 = 32;

/// A prompt waits at most this long for a count slot (a 256 KiB prompt's count: ~0.3 s
/// of an idle engine on 2 cores); the count itself is bounded by the adapter (its
/// control timeout, 5 s for llama-server).
const COUNT_WAIT: Duration = Duration::from_secs(5);

/// What admission knows of a prompt's length beyond its estimate.
#[derive(Debug)]
pub(crate) enum Count {
    /// The engine counted it (and gave its ids, when it has them).
    Counted(TokenCount),
    /// It could fit, and no count was had (no count slot in time, or the engine
    /// failed to count): the least it can be, at [`MAX_BYTES_PER_TOKEN`]. Admitted on that;
    /// the engine enforces its exact limit when it runs (an `error` frame if over).
    AtLeast(u32),
    /// Not worth asking, no serving replica, or an engine that cannot count: the
    /// estimate stands.
    Estimate,
}

/// The engine's count of `req`'s prompt, when it is worth asking and a serving replica
/// of the pool can count.
pub(crate) async fn count_prompt(s: &Snapshot, req: &TaskRequest, slots: &Semaphore) -> Count {
    let Some(ctx) = req.ctx.or(s.pinned.as_ref().map(|p| p.ctx_max)) else {
        return Count::Estimate;
    };
    let least = (req.prompt.len() as u64).div_ceil(MAX_BYTES_PER_TOKEN);
    if !super::worth_counting(s, req) || least + u64::from(req.max_tokens) > u64::from(ctx) {
        return Count::Estimate;
    }
    let least = u32::try_from(least).unwrap_or(u32::MAX);
    let Some(replica) = s.replicas.iter().find(|r| r.serving) else {
        return Count::Estimate;
    };
    // a count once started runs to its end (the adapter bounds it): dropped halfway,
    // the engine would finish tokenizing for nobody and tokenize the text again later
    let Ok(Ok(_slot)) = tokio::time::timeout(COUNT_WAIT, slots.acquire()).await else {
        tracing::debug!(pool_id = %s.pool_id, replica_id = %replica.id,
            "no count slot within its time (a burst of large prompts); admitted on the least it can be");
        return Count::AtLeast(least);
    };
    match replica.adapter.count_tokens(req.prompt.clone()).await {
        Ok(Some(c)) => Count::Counted(c),
        Ok(None) => Count::Estimate,
        Err(e) => {
            tracing::debug!(pool_id = %s.pool_id, replica_id = %replica.id, error = %e,
                "the engine could not count a prompt; admitted on the least it can be");
            Count::AtLeast(least)
        }
    }
}
