//! Metric names and label sets (spec §5). Names and label keys are a contract; the
//! lint file `ci/metrics.lint.json` lists them and a test holds `/metrics` to it.

use metrics::{counter, gauge, histogram, Counter};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

pub const TASKS_ENQUEUED: &str = "tasks_enqueued_total";
pub const TASKS_STARTED: &str = "tasks_started_total";
pub const TASKS_CANCELED: &str = "tasks_canceled_total";
pub const TASKS_REJECTED: &str = "tasks_rejected_total";
pub const TOKENS_IN: &str = "tokens_in_total";
pub const TOKENS_OUT: &str = "tokens_out_total";
pub const BACKPRESSURE: &str = "admission_backpressure_events_total";
pub const QUEUE_DEPTH: &str = "queue_depth";
pub const POOL_READY: &str = "pool_ready";
/// Admission → first token (what the client waits, queueing included).
pub const LATENCY_FIRST_TOKEN: &str = "latency_first_token_ms";
/// Dispatch → first token (the engine's part).
pub const LATENCY_FIRST_TOKEN_DISPATCH: &str = "latency_first_token_dispatch_ms";
pub const LATENCY_DECODE: &str = "latency_decode_ms";
/// Each tenant's share of the output tokens served per priority, over a sliding window.
pub const ADMISSION_SHARE: &str = "admission_share";
/// Of the tasks with a deadline that ended, the fraction that completed within it.
pub const DEADLINES_MET_RATIO: &str = "deadlines_met_ratio";
/// Tasks placed on a replica, by why (`session`, `prefix`, `load`, `retry`).
pub const TASKS_PLACED: &str = "tasks_placed_total";
/// Prompt tokens an engine served from its KV cache.
pub const TOKENS_CACHED: &str = "tokens_cached_total";
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

    pub fn tokens_cached(&self, n: u32) {
        counter!(TOKENS_CACHED, &self.base()).increment(u64::from(n));
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

    pub fn first_token_dispatch_ms(&self, priority: &str, ms: f64) {
        histogram!(LATENCY_FIRST_TOKEN_DISPATCH, &self.per_pool(priority)).record(ms);
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

pub fn placed(pool_id: &str, reason: &'static str) {
    counter!(TASKS_PLACED, "pool_id" => pool_id.to_string(), "reason" => reason).increment(1);
}

pub fn pool_ready(pool_id: &str, ready: bool) {
    gauge!(POOL_READY, "pool_id" => pool_id.to_string()).set(if ready { 1.0 } else { 0.0 });
}

/// Length of the window `admission_share` is computed over, and its bucket size.
pub const SHARE_WINDOW_SECS: u64 = 60;
const SHARE_BUCKET_SECS: u64 = 10;

type ShareKey = (String, &'static str);

/// Tokens per tenant, one map per priority (interactive, batch).
type Bucket = [HashMap<String, u64>; 2];

struct ShareWindow {
    epoch: Instant,
    /// (bucket number, tokens per tenant and priority), oldest first.
    buckets: VecDeque<(u64, Bucket)>,
    /// Every series ever set, so a tenant that stopped being served drops to 0.
    seen: HashMap<ShareKey, ()>,
}

static SHARES: Mutex<Option<ShareWindow>> = Mutex::new(None);

const PRIORITIES: [&str; 2] = ["interactive", "batch"];

fn priority_index(p: &str) -> usize {
    usize::from(p != "interactive")
}

/// Count `tokens` served to `tenant` at `priority`. Cheap (one short lock, no gauge
/// update, no allocation once the tenant is known): the gauges are set by
/// [`refresh_shares`], which the services' sweep calls every second.
pub fn served(tenant: &str, priority: &str, tokens: u64) {
    let mut g = SHARES.lock().unwrap_or_else(|p| p.into_inner());
    let w = g.get_or_insert_with(|| ShareWindow {
        epoch: Instant::now(),
        buckets: VecDeque::new(),
        seen: HashMap::new(),
    });
    let now = w.epoch.elapsed().as_secs() / SHARE_BUCKET_SECS;
    if w.buckets.back().is_none_or(|(b, _)| *b != now) {
        w.buckets.push_back((now, Default::default()));
    }
    if let Some((_, b)) = w.buckets.back_mut() {
        let m = &mut b[priority_index(priority)];
        match m.get_mut(tenant) {
            Some(n) => *n += tokens,
            None => {
                m.insert(tenant.to_string(), tokens);
            }
        }
    }
}

/// Drop buckets that left the window and set every share gauge (called by the
/// periodic sweep, so shares also decay when nothing is served).
pub fn refresh_shares() {
    let mut g = SHARES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(w) = g.as_mut() {
        refresh(w);
    }
}

fn refresh(w: &mut ShareWindow) {
    let now = w.epoch.elapsed().as_secs() / SHARE_BUCKET_SECS;
    let keep = SHARE_WINDOW_SECS / SHARE_BUCKET_SECS;
    while w.buckets.front().is_some_and(|(b, _)| b + keep <= now) {
        w.buckets.pop_front();
    }
    let mut per: HashMap<ShareKey, u64> = HashMap::new();
    let mut total = [0u64; 2];
    for (_, b) in &w.buckets {
        for (i, m) in b.iter().enumerate() {
            for (t, n) in m {
                *per.entry((t.clone(), PRIORITIES[i])).or_insert(0) += n;
                total[i] += n;
            }
        }
    }
    for k in per.keys() {
        w.seen.insert(k.clone(), ());
    }
    for k in w.seen.keys() {
        let n = per.get(k).copied().unwrap_or(0);
        let t = total[priority_index(k.1)];
        let share = if t == 0 { 0.0 } else { n as f64 / t as f64 };
        gauge!(ADMISSION_SHARE, "tenant" => k.0.clone(), "priority" => k.1).set(share);
    }
}

static DEADLINES: [[AtomicU64; 2]; 2] = [
    [AtomicU64::new(0), AtomicU64::new(0)],
    [AtomicU64::new(0), AtomicU64::new(0)],
];

/// A task with a deadline ended: completed within it (`met`) or not.
pub fn deadline_outcome(priority: &str, met: bool) {
    let i = usize::from(priority != "interactive");
    let [m, n] = &DEADLINES[i];
    if met {
        m.fetch_add(1, Ordering::AcqRel);
    }
    let total = n.fetch_add(1, Ordering::AcqRel) + 1;
    let ratio = m.load(Ordering::Acquire) as f64 / total as f64;
    gauge!(DEADLINES_MET_RATIO, "priority" => PRIORITIES[i]).set(ratio);
}
