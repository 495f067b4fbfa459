//! Counting a prompt with the pool's engine before refusing it on an estimate.
//!
//! Admission estimates a prompt at 4 bytes per token. Prose and code come out near
//! that; whitespace-heavy text (indented documents, padding) tokenizes at up to ~31
//! bytes per token, so the estimate alone would refuse prompts that fit. When a prompt
//! is over the context by the estimate, admission asks one serving replica's engine to
//! count it ([`adapter_api::WorkerAdapter::count_tokens`]) and decides on that.
//!
//! Owns: which prompts are worth an engine's time and how many counts run at once.
//! Never: waits longer than [`COUNT_TIMEOUT`] for a count slot and the count together,
//! asks about a prompt no tokenizer could fit, or fails admission because an engine
//! could not count (the estimate stands).

use super::Snapshot;
use orch_domain::TaskRequest;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Counts in flight at once, per server: each costs an engine a tokenization of up
/// to the body limit.
pub const COUNTS_AT_ONCE: usize = 2;

/// No tokenizer we know of makes longer tokens (Gemma's longest are 31 spaces); a
/// prompt longer than this many bytes per token of context is refused uncounted.
const MAX_BYTES_PER_TOKEN: u64 = 32;

/// Waiting for a count slot and the engine's count take at most this long together (a
/// 256 KB prompt: ~0.2 s of an engine on 2 cores).
const COUNT_TIMEOUT: Duration = Duration::from_secs(5);

/// The engine's count of `req`'s prompt, when it is worth asking and a serving replica
/// of the pool counts it in time; `None` otherwise.
pub(crate) async fn count_prompt(
    s: &Snapshot,
    req: &TaskRequest,
    slots: &Semaphore,
) -> Option<u32> {
    let ctx = u64::from(req.ctx.unwrap_or(s.pinned.as_ref()?.ctx_max));
    if !super::worth_counting(s, req) || req.prompt.len() as u64 > ctx * MAX_BYTES_PER_TOKEN {
        return None;
    }
    let replica = s.replicas.iter().find(|r| r.serving)?;
    let count = async {
        let _slot = slots.acquire().await.ok()?;
        Some(replica.adapter.count_tokens(req.prompt.clone()).await)
    };
    match tokio::time::timeout(COUNT_TIMEOUT, count).await {
        Ok(None) => None,
        Ok(Some(r)) => match r {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(pool_id = %s.pool_id, replica_id = %replica.id, error = %e,
                    "the engine could not count a prompt; the estimate stands");
                None
            }
        },
        Err(_) => {
            tracing::debug!(pool_id = %s.pool_id, replica_id = %replica.id,
                "no count of a prompt within its time (counts busy or the engine slow); the estimate stands");
            None
        }
    }
}
