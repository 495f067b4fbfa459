//! What the operator console charts that is counted where tokens flow: the tokens
//! streamed by this process (added with the `tokens_out_total` batches, so never a
//! per-token cost), and the time to first token of the last ten seconds' tasks
//! (admission → first token, the client's wait, recorded when the first token is
//! handed to the client).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static STREAMED: AtomicU64 = AtomicU64::new(0);
static FIRST_TOKENS: Mutex<VecDeque<(Instant, u32)>> = Mutex::new(VecDeque::new());

/// First-token times are summarized over this much.
pub const TTFT_WINDOW: Duration = Duration::from_secs(10);
/// Most first-token times kept (a window of a very busy server is sampled).
const TTFT_MAX: usize = 20_000;

/// `n` more tokens were streamed to clients.
pub fn streamed(n: u64) {
    STREAMED.fetch_add(n, Ordering::Relaxed);
}

/// Tokens streamed to clients by this process so far.
pub fn streamed_total() -> u64 {
    STREAMED.load(Ordering::Relaxed)
}

pub(crate) fn first_token(ms: f64) {
    let mut g = FIRST_TOKENS.lock().unwrap_or_else(|p| p.into_inner());
    if g.len() >= TTFT_MAX {
        g.pop_front();
    }
    g.push_back((Instant::now(), ms.max(0.0).round() as u32));
}

/// p50 and p99 of the first-token times of the last [`TTFT_WINDOW`] (sorted after
/// the lock is released).
pub fn first_token_p50_p99() -> (Option<u64>, Option<u64>) {
    let mut v: Vec<u32> = {
        let mut g = FIRST_TOKENS.lock().unwrap_or_else(|p| p.into_inner());
        let cutoff = Instant::now().checked_sub(TTFT_WINDOW);
        while g
            .front()
            .is_some_and(|(at, _)| cutoff.is_some_and(|c| *at < c))
        {
            g.pop_front();
        }
        g.iter().map(|(_, ms)| *ms).collect()
    };
    v.sort_unstable();
    (pct(&v, 0.5), pct(&v, 0.99))
}

fn pct(sorted: &[u32], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(u64::from(sorted[i]))
}

#[cfg(test)]
mod tests {
    use super::pct;

    #[test]
    fn percentiles_of_a_window() {
        assert_eq!(pct(&[], 0.5), None);
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(pct(&v, 0.5), Some(50));
        assert_eq!(pct(&v, 0.99), Some(99));
        assert_eq!(pct(&[7], 0.99), Some(7));
    }
}
