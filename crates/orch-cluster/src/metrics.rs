//! Cluster mode's metrics: who leads which pool, whether the cluster answers, what its
//! stores cost and how often they fail, and what a new leader found of its
//! predecessor's tasks. Names and label keys are a contract like the standalone ones:
//! `ci/metrics.cluster.lint.json` lists them, and the cluster scenarios hold each
//! instance's `/metrics` to it. Label values come from bounded sets (pools, the
//! values below); never a task id.
//!
//! Owns: the names, their help texts and the label values. Never: the recorder (the
//! binary installs it; without one these calls do nothing).

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use std::time::Duration;

/// 1 while this instance has a connection to a NATS server.
pub const CONNECTED: &str = "cluster_connected";
/// 1 while the cluster stores this instance's writes: one was acknowledged (by a
/// quorum) within `store_retry_ms`. An instance is ready only while it is 1.
pub const QUORUM: &str = "cluster_quorum";
/// 1 while this instance leads a pool (holds its lease and runs its queue).
pub const POOL_LEADER: &str = "cluster_pool_leader";
/// Leadership changes on this instance, by `change` ([`CHANGES`]).
pub const LEADERSHIP_CHANGES: &str = "cluster_leadership_changes_total";
/// Storing an admitted task on a quorum (retries included), in ms.
pub const TASK_STORE: &str = "cluster_task_store_ms";
/// Storing a batch of a task's frames on a quorum and announcing it (the leader), in ms.
pub const FRAME_STORE: &str = "cluster_frame_store_ms";
/// Stores that failed and were retried or given up, by `what` ([`STORES`]).
pub const STORE_ERRORS: &str = "cluster_store_errors_total";
/// Tasks a leader took from its pool's queue, by `outcome` ([`OUTCOMES`]).
pub const TASKS_TAKEN: &str = "cluster_tasks_taken_total";
/// Generations this instance ran on its replicas for another instance's pool leader.
pub const HOSTED_RUNS: &str = "cluster_hosted_runs_total";
/// Replicas of other instances serving the pool this instance leads.
pub const HOSTED_REPLICAS: &str = "cluster_hosted_replicas";

/// `change` values: the lease won and the queue taken over; the lease lost.
pub const CHANGES: [&str; 2] = ["acquired", "lost"];
/// `what` values: an admitted task, a batch of frames, a task's status, an ended
/// task's acknowledgment (it leaves the queue).
pub const STORES: [&str; 4] = ["task", "frames", "status", "ack"];
/// `outcome` values of a taken task: run for the first time here (`run`); run again
/// after a failed leader stored frames but no token (`rerun`); only removed, its end
/// already stored (`settled`); ended canceled, a cancel was requested (`canceled`);
/// its generation continued here from the tokens it had streamed (`continue`); ended
/// with `WORKER_RESET`, it had streamed tokens without ids (`worker_reset`).
pub const OUTCOMES: [&str; 6] = [
    "run",
    "rerun",
    "settled",
    "canceled",
    "continue",
    "worker_reset",
];

/// Register the help texts (the `# HELP` lines); harmless to call again.
pub fn describe() {
    describe_gauge!(
        CONNECTED,
        "1 while this instance is connected to a NATS server."
    );
    describe_gauge!(
        QUORUM,
        "1 while the cluster acknowledged a write of this instance within store_retry_ms; readiness needs it."
    );
    describe_gauge!(POOL_LEADER, "1 while this instance leads the pool.");
    describe_counter!(
        LEADERSHIP_CHANGES,
        "Pool leaderships this instance acquired or lost."
    );
    describe_histogram!(
        TASK_STORE,
        "Storing an admitted task on a quorum, retries included, in ms."
    );
    describe_histogram!(
        FRAME_STORE,
        "Storing a batch of a task's frames on a quorum, in ms."
    );
    describe_counter!(
        STORE_ERRORS,
        "Cluster stores that failed, by what was stored."
    );
    describe_counter!(
        TASKS_TAKEN,
        "Tasks a pool leader took from the queue, by what it found of an earlier leader's run."
    );
    describe_counter!(
        HOSTED_RUNS,
        "Generations this instance ran on its replicas for another instance's pool leader."
    );
    describe_gauge!(
        HOSTED_REPLICAS,
        "Replicas of other instances serving the pool this instance leads."
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn connected(up: bool) {
    gauge!(CONNECTED).set(f64::from(u8::from(up)));
}

pub(crate) fn quorum(up: bool) {
    gauge!(QUORUM).set(f64::from(u8::from(up)));
}

pub(crate) fn leader(pool_id: &str, leading: bool) {
    gauge!(POOL_LEADER, "pool_id" => pool_id.to_string()).set(f64::from(u8::from(leading)));
}

pub(crate) fn leadership(pool_id: &str, change: &'static str) {
    counter!(LEADERSHIP_CHANGES, "pool_id" => pool_id.to_string(), "change" => change).increment(1);
}

pub(crate) fn task_stored(pool_id: &str, took: Duration) {
    histogram!(TASK_STORE, "pool_id" => pool_id.to_string()).record(ms(took));
}

pub(crate) fn frames_stored(pool_id: &str, took: Duration) {
    histogram!(FRAME_STORE, "pool_id" => pool_id.to_string()).record(ms(took));
}

pub(crate) fn store_failed(pool_id: &str, what: &'static str) {
    counter!(STORE_ERRORS, "pool_id" => pool_id.to_string(), "what" => what).increment(1);
}

pub(crate) fn taken(pool_id: &str, outcome: &'static str) {
    counter!(TASKS_TAKEN, "pool_id" => pool_id.to_string(), "outcome" => outcome).increment(1);
}

pub(crate) fn hosted_run(pool_id: &str) {
    counter!(HOSTED_RUNS, "pool_id" => pool_id.to_string()).increment(1);
}

pub(crate) fn hosted_replicas(pool_id: &str, n: usize) {
    gauge!(HOSTED_REPLICAS, "pool_id" => pool_id.to_string()).set(n as f64);
}
