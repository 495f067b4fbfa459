//! What a task costs its tenant in the fair queue, and the correction when it ends.
//!
//! A task is charged an upper bound when it is queued: its prompt (estimated from its
//! length) plus `max_tokens` output tokens, output weighted [`OUTPUT_WEIGHT`]× (decode
//! costs a slot more than prefill per token). When a run ends the charge is corrected
//! to what it really used: uncached prompt tokens the engine reported (the estimate when
//! the run did not complete) plus the output tokens it produced. `expected_tokens` is a
//! hint for ETAs and deadlines and is never what a tenant is charged, so declaring 1
//! token and using 256 buys nothing; a task that leaves the queue without running is
//! refunded.

use orch_domain::{Priority, TaskId, TaskRequest};
use orchestrator_core::{BoundedQueue, Flow};
use std::collections::HashMap;

/// An output token costs this many prompt tokens.
pub const OUTPUT_WEIGHT: u64 = 2;

/// The upper bound a task is charged when it is queued.
pub fn declared(prompt_estimate: u32, request: &TaskRequest) -> u64 {
    (u64::from(prompt_estimate) + OUTPUT_WEIGHT * u64::from(request.max_tokens)).max(1)
}

/// What a run really cost.
pub fn used(prompt_tokens: u32, tokens_out: u32) -> u64 {
    u64::from(prompt_tokens) + OUTPUT_WEIGHT * u64::from(tokens_out)
}

/// A queued or running task's standing charge.
#[derive(Debug, Clone, Copy)]
pub struct Charge {
    priority: Priority,
    /// The flow as pushed; `cost` is what is still charged (0 once a run settled it).
    flow: Flow,
    /// The task's arrival number in its lane: only tasks after it are re-tagged.
    seq: u64,
    prompt_estimate: u32,
    /// Output tokens earlier runs of it settled (a continued generation's first part).
    settled_out: u32,
}

/// The pool actor's standing charges, by task.
#[derive(Debug, Default)]
pub struct Charges {
    by_task: HashMap<TaskId, Charge>,
}

impl Charges {
    pub fn open(
        &mut self,
        id: TaskId,
        priority: Priority,
        flow: Flow,
        seq: u64,
        prompt_estimate: u32,
    ) {
        self.by_task.insert(
            id,
            Charge {
                priority,
                flow,
                seq,
                prompt_estimate,
                settled_out: 0,
            },
        );
    }

    /// The task left without running: its whole charge is given back.
    pub fn refund(&mut self, queue: &mut BoundedQueue<TaskId>, id: &TaskId) {
        if let Some(c) = self.by_task.remove(id) {
            queue.settle(c.priority, c.flow, c.seq, 0);
        }
    }

    /// A run of the task ended having used `prompt_tokens` (None: not reported, the
    /// estimate is charged) and produced `tokens_out` in all (what earlier runs
    /// settled is taken off). The charge is closed when
    /// the task ended; a task about to be retried keeps it open at zero, so the next
    /// run's use is charged too.
    pub fn settle_run(
        &mut self,
        queue: &mut BoundedQueue<TaskId>,
        id: &TaskId,
        prompt_tokens: Option<u32>,
        tokens_out: u32,
        ended: bool,
    ) {
        let Some(cost) = self.run_cost(id, prompt_tokens, tokens_out) else {
            return;
        };
        let Some(c) = self.by_task.get_mut(id) else {
            return;
        };
        queue.settle(c.priority, c.flow, c.seq, cost);
        // from now on the flow has paid for this much output: a retry pays the rest
        c.flow.cost = 0;
        if ended {
            self.by_task.remove(id);
        }
    }

    /// What a run of the task that ends now costs, and the output it settles: output
    /// an earlier run of it settled is not charged again (nor as prompt: the runner
    /// reports a continuation's prompt net of the tokens it resumed from).
    fn run_cost(
        &mut self,
        id: &TaskId,
        prompt_tokens: Option<u32>,
        tokens_out: u32,
    ) -> Option<u64> {
        let c = self.by_task.get_mut(id)?;
        let out = tokens_out.saturating_sub(c.settled_out);
        c.settled_out = c.settled_out.max(tokens_out);
        Some(used(prompt_tokens.unwrap_or(c.prompt_estimate), out))
    }

    /// Close a charge without correcting it (a retry that found no replica: its runs
    /// are settled already).
    pub fn close(&mut self, id: &TaskId) {
        self.by_task.remove(id);
    }

    /// Drop charges of tasks that are gone (bounded bookkeeping; `keep` says which
    /// tasks the actor still tracks).
    pub fn prune(&mut self, live: usize, keep: impl Fn(&TaskId) -> bool) {
        if self.by_task.len() > 2 * live + 64 {
            self.by_task.retain(|id, _| keep(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_generation_pays_its_first_part_once() {
        let mut charges = Charges::default();
        let id = TaskId::new_random();
        let flow = Flow {
            id: 1,
            weight: 1,
            cost: 100,
        };
        charges.open(id, Priority::Interactive, flow, 0, 10);
        // a retry before the first token: nothing out yet
        assert_eq!(charges.run_cost(&id, None, 0), Some(10));
        // the first engine streamed 5 tokens and failed: prompt + 5 outputs
        assert_eq!(
            charges.run_cost(&id, Some(10), 5),
            Some(10 + OUTPUT_WEIGHT * 5)
        );
        // the continuation ended at 8 in all: only its 3 are output it pays for
        assert_eq!(
            charges.run_cost(&id, Some(10), 8),
            Some(10 + OUTPUT_WEIGHT * 3)
        );
        assert_eq!(charges.run_cost(&TaskId::new_random(), Some(1), 1), None);
    }
}
