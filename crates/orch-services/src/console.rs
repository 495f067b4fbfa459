//! The operator console's snapshot (`GET /v1/console`): pools, tenants, live tasks,
//! recent failures and the series, scoped to the caller; and the one-second sampler
//! that feeds the series.
//!
//! Owns: nothing but the sampler task; everything shown is read from the modules
//! that own it (pool snapshots, tenants, the task table, `recent`).
//! Never: shows a client key another tenant's task or failure, a pool its key may
//! not use, a replica's endpoint, pid or last error, or the server-wide series
//! (those are an admin's); a key limited to pools sees only their tasks.

use crate::auth::Caller;
use crate::core::Core;
use orch_domain::console::{ConsoleTask, ConsoleTenant, ConsoleView};
use orch_domain::TaskState;
use std::collections::BTreeSet;
use std::sync::Weak;
use std::time::Duration;

/// Most tasks a snapshot lists (the oldest; `tasks_total` counts them all).
const TASKS_SHOWN: usize = 500;

/// Sample the series once a second until the services are gone.
pub(crate) async fn sampler(core: Weak<Core>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(c) = core.upgrade() else { return };
        let (mut depth, mut running) = (0u32, 0u32);
        for p in c.pools.all() {
            let s = p.snapshot();
            depth += s.queue_depth;
            running += s.running;
        }
        c.table.recent().sample(depth, running);
    }
}

/// The console's snapshot for `caller`.
pub(crate) fn view(core: &Core, caller: &Caller) -> ConsoleView {
    let mut pools = crate::control::pool_views(core);
    pools.retain(|p| caller.may_use_pool(&p.id));
    if !caller.is_admin() {
        for p in &mut pools {
            for r in &mut p.replicas {
                r.endpoint = None;
                r.pid = None;
                r.last_error = None;
            }
        }
    }
    let mut tasks: Vec<ConsoleTask> = core
        .table
        .live_records()
        .iter()
        .filter(|r| caller.may_see(&r.tenant) && caller.may_use_pool(&r.pool_id))
        .map(|r| {
            let state = r.state();
            let (pos, eta) = r.estimate();
            let age = r.admitted_at.elapsed();
            let tokens = r.tokens_out();
            ConsoleTask {
                task_id: r.id,
                tenant: r.tenant.to_string(),
                pool_id: r.pool_id.clone(),
                replica_id: r.replica_id(),
                state,
                priority: r.priority,
                queue_position: (state == TaskState::Queued).then_some(pos),
                predicted_start_ms: (state == TaskState::Queued).then_some(eta),
                tokens_out: tokens,
                tokens_per_s: match r.started_at().map(|t| t.elapsed().as_secs_f64()) {
                    Some(run) if tokens > 0 && run > 0.0 => f64::from(tokens) / run,
                    _ => 0.0,
                },
                age_ms: age.as_millis() as u64,
            }
        })
        .collect();
    tasks.sort_by_key(|t| std::cmp::Reverse(t.age_ms));
    let tasks_total = tasks.len();
    tasks.truncate(TASKS_SHOWN);
    let shares = crate::metrics::shares();
    let mut names: BTreeSet<String> = BTreeSet::new();
    if caller.is_admin() {
        // the tenants this instance knows (configured, or seen); never made here
        names.extend(core.tenants.names());
    } else {
        names.insert(caller.tenant.to_string());
    }
    let tenants = names
        .into_iter()
        .map(|name| {
            let t = core.tenants.get(&name);
            let caps = t.caps(caller.role);
            let (si, sb) = shares
                .iter()
                .find(|s| s.0 == name)
                .map_or((0.0, 0.0), |s| (s.1, s.2));
            ConsoleTenant {
                tenant: name,
                weight: caps.weight,
                share_interactive: si,
                share_batch: sb,
                in_flight: caps.in_flight,
                queued: caps.queued,
                quotas: caps.quotas,
            }
        })
        .collect();
    let (failures, mut series) = core
        .table
        .recent()
        .view(|f| caller.may_see(&f.tenant) && caller.may_use_pool(&f.pool_id));
    if !caller.is_admin() {
        series.clear();
    }
    ConsoleView {
        at_ms: crate::accounts::calendar::now_ms(),
        tenant: caller.tenant.to_string(),
        role: caller.role.as_str().to_string(),
        pools,
        tenants,
        tasks,
        tasks_total,
        failures,
        series,
    }
}
