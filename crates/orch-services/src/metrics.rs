//! Metric names and label sets (spec §5). Names and label keys are a contract; the
//! lint file `ci/metrics.lint.json` lists them and a test holds `/metrics` to it.

use metrics::{counter, gauge, histogram, Counter};

pub const TASKS_ENQUEUED: &str = "tasks_enqueued_total";
pub const TASKS_STARTED: &str = "tasks_started_total";
pub const TASKS_CANCELED: &str = "tasks_canceled_total";
pub const TASKS_REJECTED: &str = "tasks_rejected_total";
pub const TOKENS_IN: &str = "tokens_in_total";
pub const TOKENS_OUT: &str = "tokens_out_total";
pub const BACKPRESSURE: &str = "admission_backpressure_events_total";
pub const QUEUE_DEPTH: &str = "queue_depth";
pub const POOL_READY: &str = "pool_ready";
pub const LATENCY_FIRST_TOKEN: &str = "latency_first_token_ms";
pub const LATENCY_DECODE: &str = "latency_decode_ms";
/// Time from dequeue to the engine call: the orchestrator's own added latency.
pub const DISPATCH_LATENCY: &str = "orchestrator_dispatch_latency_ms";

/// Labels that identify where a task runs.
#[derive(Debug, Clone)]
pub struct Where {
    pub engine: String,
    pub engine_version: String,
    pub pool_id: String,
    pub replica_id: String,
}

impl Where {
    fn base(&self) -> [(&'static str, String); 4] {
        [
            ("engine", self.engine.clone()),
            ("engine_version", self.engine_version.clone()),
            ("pool_id", self.pool_id.clone()),
            ("replica_id", self.replica_id.clone()),
        ]
    }

    pub fn enqueued(&self, priority: &str) {
        let mut l = self.base().to_vec();
        l.push(("priority", priority.to_string()));
        counter!(TASKS_ENQUEUED, &l).increment(1);
    }

    pub fn started(&self, priority: &str) {
        let mut l = self.base().to_vec();
        l.push(("priority", priority.to_string()));
        counter!(TASKS_STARTED, &l).increment(1);
    }

    pub fn canceled(&self, reason: &str) {
        let mut l = self.base().to_vec();
        l.push(("reason", reason.to_string()));
        counter!(TASKS_CANCELED, &l).increment(1);
    }

    pub fn tokens_out_counter(&self) -> Counter {
        counter!(TOKENS_OUT, &self.base())
    }

    pub fn tokens_in(&self, n: u32) {
        counter!(TOKENS_IN, &self.base()).increment(u64::from(n));
    }

    fn per_pool(&self, priority: &str) -> [(&'static str, String); 4] {
        [
            ("engine", self.engine.clone()),
            ("engine_version", self.engine_version.clone()),
            ("pool_id", self.pool_id.clone()),
            ("priority", priority.to_string()),
        ]
    }

    pub fn first_token_ms(&self, priority: &str, ms: f64) {
        histogram!(LATENCY_FIRST_TOKEN, &self.per_pool(priority)).record(ms);
    }

    pub fn decode_ms(&self, priority: &str, ms: f64) {
        histogram!(LATENCY_DECODE, &self.per_pool(priority)).record(ms);
    }

    pub fn dispatch_ms(&self, ms: f64) {
        histogram!(DISPATCH_LATENCY, "engine" => self.engine.clone(), "pool_id" => self.pool_id.clone()).record(ms);
    }

    pub fn queue_depth(&self, priority: &str, depth: usize) {
        gauge!(QUEUE_DEPTH, &self.per_pool(priority)).set(depth as f64);
    }
}

pub fn rejected(engine: &str, reason: &str) {
    counter!(TASKS_REJECTED, "engine" => engine.to_string(), "reason" => reason.to_string())
        .increment(1);
}

pub fn backpressure(engine: &str, policy: &str) {
    counter!(BACKPRESSURE, "engine" => engine.to_string(), "policy" => policy.to_string())
        .increment(1);
}

pub fn pool_ready(pool_id: &str, ready: bool) {
    gauge!(POOL_READY, "pool_id" => pool_id.to_string()).set(if ready { 1.0 } else { 0.0 });
}
