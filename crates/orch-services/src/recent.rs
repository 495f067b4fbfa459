//! What the operator console charts and lists, kept in memory: the last tasks that
//! failed, and one point a second over the last five minutes (tokens streamed,
//! queue depth, running tasks, time to first token p50/p99 of the tasks that ended
//! in the ten seconds before).
//!
//! Owns: those bounded rings. Fed by the task table when a task ends (never on a
//! token's path) and by the gauges' one-second loop.

use crate::task::TaskRecord;
use orch_domain::console::{ConsoleFailure, ConsolePoint};
use orch_domain::{EndFrame, EventKind, TaskState};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Failed tasks kept.
const FAILURES: usize = 50;
/// Points kept (five minutes at one a second).
const POINTS: usize = 300;
/// Tasks' first-token times are summarized over this much.
const TTFT_WINDOW: Duration = Duration::from_secs(10);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Default)]
struct Inner {
    failures: VecDeque<ConsoleFailure>,
    ttfts: VecDeque<(Instant, u64)>,
    /// Tokens of the tasks that ended (live ones are counted from their records).
    ended_tokens: u64,
    last_total: Option<u64>,
    points: VecDeque<ConsolePoint>,
}

#[derive(Default)]
pub(crate) struct Recent {
    inner: Mutex<Inner>,
}

fn pct(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

impl Recent {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A task ended: its tokens, its failure, its first-token time.
    pub fn ended(&self, rec: &TaskRecord) {
        let s = rec.summary();
        let mut ttft = None;
        if s.state == TaskState::Completed && s.tokens_out > 0 {
            let last = rec.log.len().saturating_sub(1);
            rec.log.visit_since(last, |f| {
                if f.kind == EventKind::End {
                    ttft = serde_json::from_str::<EndFrame>(f.data)
                        .ok()
                        .map(|e| e.ttft_ms);
                }
            });
        }
        let mut g = self.lock();
        g.ended_tokens += u64::from(s.tokens_out);
        if let (TaskState::Failed, Some(code)) = (s.state, s.error_code) {
            g.failures.push_front(ConsoleFailure {
                task_id: s.id,
                tenant: s.tenant.to_string(),
                pool_id: s.pool_id.clone(),
                code: code.as_str().to_string(),
                at_ms: now_ms(),
            });
            g.failures.truncate(FAILURES);
        }
        if let Some(t) = ttft {
            g.ttfts.push_back((Instant::now(), t));
        }
    }

    /// One second's point: `live_tokens` streamed so far by the tasks still live.
    pub fn sample(&self, live_tokens: u64, queue_depth: u32, running: u32) {
        let mut g = self.lock();
        let total = g.ended_tokens + live_tokens;
        let per_s = g.last_total.map_or(0, |p| total.saturating_sub(p));
        g.last_total = Some(total);
        let cutoff = Instant::now().checked_sub(TTFT_WINDOW);
        while g
            .ttfts
            .front()
            .is_some_and(|(at, _)| cutoff.is_some_and(|c| *at < c))
        {
            g.ttfts.pop_front();
        }
        let mut t: Vec<u64> = g.ttfts.iter().map(|(_, v)| *v).collect();
        t.sort_unstable();
        g.points.push_back(ConsolePoint {
            at_ms: now_ms(),
            tokens_per_s: per_s,
            queue_depth,
            running,
            ttft_p50_ms: pct(&t, 0.5),
            ttft_p99_ms: pct(&t, 0.99),
        });
        while g.points.len() > POINTS {
            g.points.pop_front();
        }
    }

    /// The failures `may_see` allows (newest first) and the series.
    pub fn view(&self, may_see: impl Fn(&str) -> bool) -> (Vec<ConsoleFailure>, Vec<ConsolePoint>) {
        let g = self.lock();
        (
            g.failures
                .iter()
                .filter(|f| may_see(&f.tenant))
                .cloned()
                .collect(),
            g.points.iter().copied().collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::pct;

    #[test]
    fn percentiles_of_a_window() {
        assert_eq!(pct(&[], 0.5), None);
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(pct(&v, 0.5), Some(50));
        assert_eq!(pct(&v, 0.99), Some(99));
        assert_eq!(pct(&[7], 0.99), Some(7));
    }
}
