//! Metric names and label sets (spec §5). Names and label keys are a contract; the
//! lint file `ci/metrics.lint.json` lists them and a test holds `/metrics` to it.

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Histogram,
};
use orch_domain::Priority;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
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
/// Of the tasks with a deadline that ended in the last five minutes, the fraction that
/// completed within it.
pub const DEADLINES_MET_RATIO: &str = "deadlines_met_ratio";
/// Tasks placed on a replica, by why (`session`, `prefix`, `load`, `retry`).
pub const TASKS_PLACED: &str = "tasks_placed_total";
pub const PREFIX_OBSERVED: &str = "prefix_index_observations_total";
/// Prompt tokens an engine served from its KV cache.
pub const TOKENS_CACHED: &str = "tokens_cached_total";
/// Time from dequeue to the engine call (one part of the added latency).
pub const DISPATCH_LATENCY: &str = "orchestrator_dispatch_latency_ms";
/// Admission → dispatch: how long a task waited in its queue.
pub const QUEUE_WAIT: &str = "queue_wait_ms";
/// The orchestrator's part of the client's time to first token: admission → the first
/// token handed to the client's stream, minus the engine's time (engine call → its
/// first token). Queue wait is included; `queue_wait_ms` has it on its own.
pub const ADDED_LATENCY: &str = "orchestrator_added_latency_ms";
/// Tasks that ended with an `error` frame, by error code.
pub const TASKS_FAILED: &str = "tasks_failed_total";
/// Fraction of a replica's KV cache in use, as the engine reports it.
pub const KV_CACHE_USAGE: &str = "kv_cache_usage_ratio";
pub const SLOTS_BUSY: &str = "slots_busy";
pub const SLOTS_CAPACITY: &str = "slots_capacity";
/// Replicas of a pool by state (`ready`, `unready`, `draining`, `staged`).
pub const REPLICAS: &str = "replicas";
pub const QUEUE_CAPACITY: &str = "queue_capacity";
/// Replica restarts by why (`exited`: the process died and is being restarted;
/// `unresponsive`: it answered no health check for a while and was killed;
/// `restart_failed`: a restart attempt did not come up and is retried after backoff).
pub const REPLICA_RESTARTS: &str = "replica_restarts_total";
/// Reloads by outcome (`switched`, `rolled_back`, `refused`).
pub const RELOADS: &str = "reloads_total";

/// Generations that moved to another replica mid-stream and continued there, by the
/// failure that moved them (`worker_reset`, `decode_timeout`, `pool_unready`,
/// `replica_exhausted`).
pub const TASKS_MIGRATED: &str = "tasks_migrated_total";
/// The pause a client saw at a continuation: its last token before the failure to the
/// first token after it, in ms.
pub const MIGRATION_PAUSE: &str = "task_migration_pause_ms";
/// Why a generation moved (bounded label values: the failure's error code).
pub const MIGRATION_REASONS: [orch_domain::ErrorCode; 4] = [
    orch_domain::ErrorCode::WorkerReset,
    orch_domain::ErrorCode::DecodeTimeout,
    orch_domain::ErrorCode::PoolUnready,
    orch_domain::ErrorCode::ReplicaExhausted,
];

/// Usage ledger writes by outcome (`ok`, `error`).
pub const LEDGER_FLUSHES: &str = "usage_ledger_flushes_total";
/// Rows (hour × tenant × key × pool × model sums) the usage ledger wrote.
pub const LEDGER_ROWS: &str = "usage_ledger_rows_written_total";

/// Why a replica restarted (bounded label values).
pub const RESTART_REASONS: [&str; 3] = ["exited", "unresponsive", "restart_failed"];
/// How a reload ended (bounded label values).
pub const RELOAD_OUTCOMES: [&str; 3] = ["switched", "rolled_back", "refused"];

/// Register every metric's help text (the `# HELP` lines); call once after the
/// recorder is installed.
pub fn describe() {
    describe_counter!(TASKS_ENQUEUED, "Tasks admitted into a pool's queue.");
    describe_counter!(
        TASKS_STARTED,
        "Tasks dispatched to a replica (once per task, however many replicas it is tried on)."
    );
    describe_counter!(
        TASKS_CANCELED,
        "Tasks ended by a cancel, by reason (client, abandoned, shutdown, drain)."
    );
    describe_counter!(
        TASKS_REJECTED,
        "Submissions refused, by reason; engine is none when refused before a pool was chosen."
    );
    describe_counter!(
        TASKS_FAILED,
        "Tasks that ended with an error frame, by error code."
    );
    describe_counter!(
        TOKENS_IN,
        "Prompt tokens the engines processed for completed tasks."
    );
    describe_counter!(TOKENS_OUT, "Tokens streamed to clients.");
    describe_counter!(
        TOKENS_CACHED,
        "Prompt tokens an engine served from its KV cache."
    );
    describe_counter!(
        BACKPRESSURE,
        "Backpressure events (429s and drop-lru victims), by policy label."
    );
    describe_counter!(
        TASKS_PLACED,
        "Tasks placed on a replica, by why (session, prefix, load, retry)."
    );
    describe_counter!(
        PREFIX_OBSERVED,
        "Prefix placements checked against what the engine reported reusing, by what the index learned (confirmed, evicted, discovered, nothing)."
    );
    describe_counter!(
        REPLICA_RESTARTS,
        "Replica restarts, by reason (exited, unresponsive, restart_failed)."
    );
    describe_counter!(
        RELOADS,
        "Pool reloads, by outcome (switched, rolled_back, refused)."
    );
    describe_gauge!(QUEUE_DEPTH, "Tasks waiting in a pool's queue, by priority.");
    describe_gauge!(
        QUEUE_CAPACITY,
        "Capacity of a pool's queue (all priorities)."
    );
    describe_gauge!(
        POOL_READY,
        "1 when the pool has a ready replica and accepts work."
    );
    describe_gauge!(REPLICAS, "Replicas of a pool, by state.");
    describe_gauge!(SLOTS_BUSY, "Engine slots holding a task, per replica.");
    describe_gauge!(SLOTS_CAPACITY, "Engine slots a replica has.");
    describe_gauge!(
        KV_CACHE_USAGE,
        "Fraction of a replica's KV cache in use, as its engine reports it."
    );
    describe_gauge!(
        ADMISSION_SHARE,
        "Each tenant's share of the output tokens served in the last 60 s, per priority."
    );
    describe_gauge!(DEADLINES_MET_RATIO, "Of the tasks with a deadline that ended in the last 5 minutes, the fraction that completed within it.");
    describe_histogram!(
        LATENCY_FIRST_TOKEN,
        "Admission to first token, in ms (the client's wait, queueing included)."
    );
    describe_histogram!(
        LATENCY_FIRST_TOKEN_DISPATCH,
        "Dispatch to first token, in ms (the engine's part)."
    );
    describe_histogram!(
        LATENCY_DECODE,
        "Engine decode time of a completed task, in ms."
    );
    describe_histogram!(QUEUE_WAIT, "Admission to dispatch, in ms.");
    describe_histogram!(ADDED_LATENCY, "Admission to the first token handed to the client's stream, minus the engine's time (engine call to first token), in ms; includes queue wait.");
    describe_histogram!(DISPATCH_LATENCY, "Dequeue to engine call, in ms.");
    describe_counter!(
        TASKS_MIGRATED,
        "Generations that continued on another replica after their engine failed mid-stream, by the failure."
    );
    describe_histogram!(
        MIGRATION_PAUSE,
        "The pause a client saw at a continuation: last token before the failure to the first after it, in ms."
    );
    describe_counter!(
        LEDGER_FLUSHES,
        "Usage ledger writes (at least one a second while there is usage), by outcome."
    );
    describe_counter!(
        LEDGER_ROWS,
        "Rows (hour x tenant x key x pool x model sums) the usage ledger wrote."
    );
}

/// Create the usage ledger's series at zero (a server with a ledger, at start).
pub fn ledger_zero() {
    for outcome in ["ok", "error"] {
        counter!(LEDGER_FLUSHES, "outcome" => outcome).increment(0);
    }
    counter!(LEDGER_ROWS).increment(0);
}

/// Labels that identify where a task runs.
#[derive(Debug, Clone)]
pub struct Where {
    pub engine: String,
    pub engine_version: String,
    pub pool_id: String,
    pub replica_id: String,
    /// The run-path handles of this place, once looked up (`run`).
    run: OnceLock<Arc<run::Handles>>,
}

impl Where {
    pub fn new(engine: &str, engine_version: &str, pool_id: &str, replica_id: &str) -> Self {
        Self {
            engine: engine.to_string(),
            engine_version: engine_version.to_string(),
            pool_id: pool_id.to_string(),
            replica_id: replica_id.to_string(),
            run: OnceLock::new(),
        }
    }

    fn run(&self) -> &run::Handles {
        self.run.get_or_init(|| run::handles(self))
    }

    fn base(&self) -> [(&'static str, String); 4] {
        [
            ("engine", self.engine.clone()),
            ("engine_version", self.engine_version.clone()),
            ("pool_id", self.pool_id.clone()),
            ("replica_id", self.replica_id.clone()),
        ]
    }

    pub fn enqueued(&self, priority: Priority) {
        self.run().enqueued(self, priority).increment(1);
    }

    pub fn started(&self, priority: Priority) {
        self.run().started(self, priority).increment(1);
    }

    pub fn canceled(&self, reason: &str) {
        let mut l = self.base().to_vec();
        l.push(("reason", reason.to_string()));
        counter!(TASKS_CANCELED, &l).increment(1);
    }

    pub fn tokens_out_counter(&self) -> Counter {
        self.run().tokens_out(self).clone()
    }

    pub fn tokens_cached(&self, n: u32) {
        self.run().tokens_cached(self).increment(u64::from(n));
    }

    pub fn tokens_in(&self, n: u32) {
        self.run().tokens_in(self).increment(u64::from(n));
    }

    fn per_pool(&self, priority: &str) -> [(&'static str, String); 4] {
        [
            ("engine", self.engine.clone()),
            ("engine_version", self.engine_version.clone()),
            ("pool_id", self.pool_id.clone()),
            ("priority", priority.to_string()),
        ]
    }

    pub fn first_token_dispatch_ms(&self, priority: Priority, ms: f64) {
        self.run().first_token_dispatch(self, priority).record(ms);
    }

    pub fn first_token_ms(&self, priority: Priority, ms: f64) {
        self.run().first_token(self, priority).record(ms);
        console::first_token(ms);
    }

    pub fn decode_ms(&self, priority: Priority, ms: f64) {
        self.run().decode(self, priority).record(ms);
    }

    pub fn queue_wait_ms(&self, priority: Priority, ms: f64) {
        self.run().queue_wait(self, priority).record(ms);
    }

    /// The histogram the first reader of a task's stream records its added latency in.
    pub fn added_latency(&self) -> Histogram {
        self.run().added_latency(self).clone()
    }

    pub fn kv_cache_usage(&self, ratio: f64) {
        gauge!(KV_CACHE_USAGE, &self.base()).set(ratio);
    }

    pub fn slots(&self, busy: u32, total: u32) {
        gauge!(SLOTS_BUSY, &self.base()).set(f64::from(busy));
        gauge!(SLOTS_CAPACITY, &self.base()).set(f64::from(total));
    }

    pub fn dispatch_ms(&self, ms: f64) {
        self.run().dispatch(self).record(ms);
    }

    pub fn queue_depth(&self, priority: &str, depth: usize) {
        self.queue_depth_gauge(priority).set(depth as f64);
    }

    pub fn queue_depth_gauge(&self, priority: &str) -> metrics::Gauge {
        gauge!(QUEUE_DEPTH, &self.per_pool(priority))
    }
}

pub fn rejected(engine: &str, reason: &str) {
    counter!(TASKS_REJECTED, "engine" => engine.to_string(), "reason" => reason.to_string())
        .increment(1);
}

/// A usage ledger write ended: `ok` with `rows` written, or failed.
pub fn ledger_flushed(ok: bool, rows: usize) {
    counter!(LEDGER_FLUSHES, "outcome" => if ok { "ok" } else { "error" }).increment(1);
    if ok {
        counter!(LEDGER_ROWS).increment(rows as u64);
    }
}

pub fn backpressure(engine: &str, policy: &str) {
    counter!(BACKPRESSURE, "engine" => engine.to_string(), "policy" => policy.to_string())
        .increment(1);
}

pub fn prefix_observed(pool_id: &str, learned: &'static str) {
    counter!(PREFIX_OBSERVED, "pool_id" => pool_id.to_string(), "learned" => learned).increment(1);
}

pub fn placed(pool_id: &str, reason: orch_domain::PlacementReason) {
    counter!(TASKS_PLACED, "pool_id" => pool_id.to_string(), "reason" => reason.as_str())
        .increment(1);
}

/// Count a refused submission. `engine` is the chosen pool's engine, `none` when the
/// request was refused before a pool was chosen.
pub fn rejected_code(engine: &str, code: orch_domain::ErrorCode) {
    rejected(engine, reject_reason(code));
}

/// The bounded `reason` of `tasks_rejected_total` for a refusal's error code.
pub fn reject_reason(code: orch_domain::ErrorCode) -> &'static str {
    use orch_domain::ErrorCode as C;
    match code {
        C::InvalidParams | C::PayloadTooLarge => "invalid",
        C::Conflict => "conflict",
        C::Forbidden => "forbidden",
        C::Unauthenticated => "unauthenticated",
        C::QuotaExceeded => "quota",
        C::AdmissionReject | C::QueueFullDropLru => "queue_full",
        C::DeadlineUnmet => "deadline_unmet",
        C::PoolUnready => "pool_unready",
        C::PoolUnavailable => "pool_unavailable",
        _ => "other",
    }
}

/// A task ended with an `error` frame.
pub fn failed(engine: &str, engine_version: &str, pool_id: &str, code: &'static str) {
    counter!(TASKS_FAILED, "engine" => engine.to_string(), "engine_version" => engine_version.to_string(),
        "pool_id" => pool_id.to_string(), "code" => code)
    .increment(1);
}

pub fn replica_restart(pool_id: &str, replica_id: &str, reason: &'static str) {
    counter!(REPLICA_RESTARTS, "pool_id" => pool_id.to_string(), "replica_id" => replica_id.to_string(), "reason" => reason)
        .increment(1);
}

pub fn reload(pool_id: &str, outcome: &'static str) {
    counter!(RELOADS, "pool_id" => pool_id.to_string(), "outcome" => outcome).increment(1);
}

/// Create a pool's counters at zero, so rates and alerts see them before the first
/// event (a counter that appears only at its first increment hides that increment).
pub fn pool_counters(pool_id: &str) {
    for o in RELOAD_OUTCOMES {
        counter!(RELOADS, "pool_id" => pool_id.to_string(), "outcome" => o).absolute(0);
    }
    for r in MIGRATION_REASONS {
        counter!(TASKS_MIGRATED, "pool_id" => pool_id.to_string(), "reason" => r.as_str().to_ascii_lowercase())
            .absolute(0);
    }
    // registered empty: the first pause then shows as an increase
    let _ = histogram!(MIGRATION_PAUSE, "pool_id" => pool_id.to_string());
}

/// A generation moved to another replica after `reason`.
pub fn migrated(pool_id: &str, reason: orch_domain::ErrorCode) {
    counter!(TASKS_MIGRATED, "pool_id" => pool_id.to_string(), "reason" => reason.as_str().to_ascii_lowercase())
        .increment(1);
}

/// The pause a client saw at a continuation.
pub fn migration_pause_ms(pool_id: &str, ms: f64) {
    histogram!(MIGRATION_PAUSE, "pool_id" => pool_id.to_string()).record(ms);
}

/// Create a replica's restart counters at zero.
pub fn replica_counters(pool_id: &str, replica_id: &str) {
    for r in RESTART_REASONS {
        counter!(REPLICA_RESTARTS, "pool_id" => pool_id.to_string(), "replica_id" => replica_id.to_string(), "reason" => r)
            .absolute(0);
    }
}

pub fn replicas(pool_id: &str, state: &'static str, n: usize) {
    gauge!(REPLICAS, "pool_id" => pool_id.to_string(), "state" => state).set(n as f64);
}

pub fn queue_capacity(pool_id: &str, capacity: usize) {
    gauge!(QUEUE_CAPACITY, "pool_id" => pool_id.to_string()).set(capacity as f64);
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

/// Each tenant's share of the output tokens served in the last minute: (tenant,
/// interactive share, batch share), by tenant name.
pub fn shares() -> Vec<(String, f64, f64)> {
    let mut g = SHARES.lock().unwrap_or_else(|p| p.into_inner());
    let Some(w) = g.as_mut() else {
        return Vec::new();
    };
    let (per, total) = window_sums(w);
    let mut out: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    for ((tenant, prio), n) in per {
        let t = total[priority_index(prio)];
        let share = if t == 0 { 0.0 } else { n as f64 / t as f64 };
        let e = out.entry(tenant).or_default();
        if prio == PRIORITIES[0] {
            e.0 = share;
        } else {
            e.1 = share;
        }
    }
    out.into_iter().map(|(t, (i, b))| (t, i, b)).collect()
}

/// Drop buckets that left the window; the tokens per (tenant, priority) in it and
/// each priority's total.
fn window_sums(w: &mut ShareWindow) -> (HashMap<ShareKey, u64>, [u64; 2]) {
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
    (per, total)
}

fn refresh(w: &mut ShareWindow) {
    let (per, total) = window_sums(w);
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

pub mod console;
mod deadlines;
mod run;
pub use deadlines::{deadline_outcome, publish_deadlines, DEADLINE_WINDOW_SECS};
pub use run::forget as forget_cached_handles;
