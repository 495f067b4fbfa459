//! What the operator console charts and lists, kept in memory: the last tasks that
//! failed, and one point a second over the last five minutes (tokens streamed, queue
//! depth, running tasks, time to first token p50/p99 of the ten seconds before).
//!
//! Owns: those bounded rings. Failures are fed by the task table when a task ends
//! (never on a token's path); points by `console::sampler` once a second, from the
//! counters `metrics::console` keeps.

use crate::task::TaskRecord;
use orch_domain::console::{ConsoleFailure, ConsolePoint};
use orch_domain::TaskState;
use std::collections::VecDeque;
use std::sync::Mutex;

/// Failed tasks kept.
const FAILURES: usize = 50;
/// Points kept (five minutes at one a second).
const POINTS: usize = 300;

#[derive(Default)]
struct Inner {
    failures: VecDeque<ConsoleFailure>,
    last_streamed: Option<u64>,
    points: VecDeque<ConsolePoint>,
}

#[derive(Default)]
pub(crate) struct Recent {
    inner: Mutex<Inner>,
}

impl Recent {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A task ended: kept when it failed.
    pub fn ended(&self, rec: &TaskRecord) {
        if rec.state() != TaskState::Failed {
            return;
        }
        let s = rec.summary();
        let Some(code) = s.error_code else { return };
        let mut g = self.lock();
        g.failures.push_front(ConsoleFailure {
            task_id: s.id,
            tenant: s.tenant.to_string(),
            pool_id: s.pool_id.clone(),
            code: code.as_str().to_string(),
            at_ms: crate::accounts::calendar::now_ms(),
        });
        g.failures.truncate(FAILURES);
    }

    /// One second's point.
    pub fn sample(&self, queue_depth: u32, running: u32) {
        let streamed = crate::metrics::console::streamed_total();
        let (p50, p99) = crate::metrics::console::first_token_p50_p99();
        let mut g = self.lock();
        let per_s = g.last_streamed.map_or(0, |p| streamed.saturating_sub(p));
        g.last_streamed = Some(streamed);
        g.points.push_back(ConsolePoint {
            at_ms: crate::accounts::calendar::now_ms(),
            tokens_per_s: per_s,
            queue_depth,
            running,
            ttft_p50_ms: p50,
            ttft_p99_ms: p99,
        });
        while g.points.len() > POINTS {
            g.points.pop_front();
        }
    }

    /// The failures `may_see` allows (newest first), and the series.
    pub fn view(
        &self,
        may_see: impl Fn(&ConsoleFailure) -> bool,
    ) -> (Vec<ConsoleFailure>, Vec<ConsolePoint>) {
        let g = self.lock();
        (
            g.failures.iter().filter(|f| may_see(f)).cloned().collect(),
            g.points.iter().copied().collect(),
        )
    }
}
