//! The instance's side of the cluster-wide tenant quotas ([`crate::quota`]): taking a
//! place at admission (and, when the tenant is full, first dropping ledger entries of
//! tasks that have ended), and, as a pool's leader, marking a task started and ended.
//! Tenants without cluster-wide quotas are never looked up.

use super::{unavailable, Node};
use crate::quota::{Change, Limits, RECHECK_AFTER};
use orch_domain::{OrchError, PolicyLabel, TaskId};

/// How long a refused client waits before trying again (a running task's end).
const BUSY_RETRY_MS: u64 = 1000;
/// Least time between two looks for ended tasks in one tenant's ledger.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

use crate::wire::now_ms;

/// The cluster-wide part of a tenant's quotas.
pub(super) fn limits(q: &orch_services::Quotas) -> Limits {
    Limits {
        max_concurrent: q.max_concurrent,
        max_queued: q.max_queued,
        tokens_per_minute: q.tokens_per_minute,
    }
}

impl Node {
    /// Take a place for task `id` of `tenant` in its cluster-wide quotas, reserving
    /// `tokens`: 429 `QUOTA_EXCEEDED` when one is used up, 503 when the cluster cannot
    /// answer.
    pub(super) async fn take_quota(
        &self,
        tenant: &str,
        id: TaskId,
        limits: &Limits,
        tokens: u64,
    ) -> Result<(), OrchError> {
        if !limits.any() {
            return Ok(());
        }
        let key = id.to_string();
        let mut pruned = false;
        loop {
            let now = now_ms();
            let r = self
                .quotas
                .change(tenant, |mut l| {
                    l.admit(tenant, &key, limits, tokens, now, BUSY_RETRY_MS)?;
                    Ok(Change::Write(l, ()))
                })
                .await
                .map_err(unavailable)?;
            match r {
                Ok(()) => return Ok(()),
                Err(refused)
                    if !pruned
                        && matches!(
                            refused.policy_label,
                            Some(PolicyLabel::QuotaConcurrency | PolicyLabel::QuotaQueued)
                        )
                        && self.may_prune(tenant) =>
                {
                    pruned = true;
                    if self.drop_ended(tenant).await? == 0 {
                        return Err(refused);
                    }
                }
                Err(refused) => return Err(refused),
            }
        }
    }

    /// Drop the ledger entries of `tenant`'s tasks that ended (or are nowhere) though
    /// their removal never came (a leader died between storing an end and removing
    /// it). Only entries older than [`RECHECK_AFTER`] are checked. How many went.
    async fn drop_ended(&self, tenant: &str) -> Result<usize, OrchError> {
        let before = now_ms().saturating_sub(RECHECK_AFTER.as_millis() as u64);
        let old = self
            .quotas
            .change(tenant, |l| Ok(Change::Keep(l.old(before))))
            .await
            .map_err(unavailable)?
            .unwrap_or_default();
        let mut gone = Vec::new();
        for id in old {
            let Ok(task) = id.parse::<TaskId>() else {
                gone.push(id);
                continue;
            };
            match self.recorded(task).await? {
                Some(s) if !s.state.is_terminal() => {}
                _ => gone.push(id),
            }
        }
        if gone.is_empty() {
            return Ok(0);
        }
        tracing::warn!(
            tenant,
            tasks = gone.len(),
            "dropped quota places of tasks that had ended"
        );
        let n = gone.len();
        // every one is removed (no short circuit)
        self.quotas
            .edit(tenant, |l| {
                gone.iter().filter(|id| l.ended(id, 0)).count() > 0
            })
            .await
            .map_err(unavailable)?;
        Ok(n)
    }

    /// Whether this instance may look for ended tasks in `tenant`'s ledger now (at
    /// most once every [`PRUNE_EVERY`] per tenant: a tenant pressing at its limit does
    /// not multiply the cluster's reads).
    fn may_prune(&self, tenant: &str) -> bool {
        let mut last = self.pruned.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if last
            .get(tenant)
            .is_some_and(|t| now.duration_since(*t) < PRUNE_EVERY)
        {
            return false;
        }
        if last.len() >= 4096 {
            last.retain(|_, t| now.duration_since(*t) < PRUNE_EVERY);
        }
        last.insert(tenant.to_string(), now);
        true
    }

    /// Whether `tenant` has cluster-wide quotas (same config on every instance).
    fn counted(&self, tenant: &str) -> bool {
        limits(&self.pools.quotas(tenant)).any()
    }

    /// A task of `tenant` started: it no longer counts as waiting (best effort).
    pub(crate) async fn quota_started(&self, tenant: &str, id: TaskId) {
        if !self.counted(tenant) {
            return;
        }
        let key = id.to_string();
        if let Err(e) = self.quotas.edit(tenant, |l| l.started(&key)).await {
            tracing::warn!(task_id = %id, error = %e, "could not mark the task started in its tenant's quota");
        }
    }

    /// A task of `tenant` ended having generated `used` tokens: its place and unused
    /// tokens go back (best effort: a lost removal is found when the tenant is full).
    pub(crate) async fn quota_ended(&self, tenant: &str, id: TaskId, used: u64) {
        if !self.counted(tenant) {
            return;
        }
        let key = id.to_string();
        if let Err(e) = self.quotas.edit(tenant, |l| l.ended(&key, used)).await {
            tracing::warn!(task_id = %id, error = %e, "could not give the task's quota place back");
        }
    }
}
