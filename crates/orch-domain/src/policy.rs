//! Queue-full policies and the labels that name them on 429s and in metrics. Quota
//! refusals name their quota (`quota-<name>`), refining the spec's single `quota`.

use serde::{Deserialize, Serialize};

/// What a pool's queue does when a task arrives and it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum FullPolicy {
    /// Refuse the new task with 429 `ADMISSION_REJECT`.
    #[default]
    Reject,
    /// Evict the oldest queued batch task (its stream ends with `QUEUE_FULL_DROP_LRU`).
    DropLru,
    /// An interactive arrival evicts the newest queued batch task; a batch arrival is refused.
    ShedLowPriority,
}

impl FullPolicy {
    pub fn label(self) -> PolicyLabel {
        match self {
            FullPolicy::Reject => PolicyLabel::Reject,
            FullPolicy::DropLru => PolicyLabel::DropLru,
            FullPolicy::ShedLowPriority => PolicyLabel::ShedLowPriority,
        }
    }
}

/// `policy_label` on a 429 body and the `policy` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum PolicyLabel {
    Reject,
    DropLru,
    ShedLowPriority,
    /// Tenant quota on tasks in flight (queued + running).
    QuotaConcurrency,
    /// Tenant quota on tasks waiting in queues.
    QuotaQueued,
    /// Tenant quota on output tokens per minute.
    QuotaTokensPerMinute,
    /// A session's token budget.
    QuotaSessionBudget,
    /// Tenant quota on the KV cache (context tokens) its unfinished tasks may hold.
    QuotaKv,
    /// Readers of one task's stream at once.
    QuotaReaders,
    /// A tenant's token budget per day or per month.
    QuotaBudget,
}

impl PolicyLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyLabel::Reject => "reject",
            PolicyLabel::DropLru => "drop-lru",
            PolicyLabel::ShedLowPriority => "shed-low-priority",
            PolicyLabel::QuotaConcurrency => "quota-concurrency",
            PolicyLabel::QuotaQueued => "quota-queued",
            PolicyLabel::QuotaTokensPerMinute => "quota-tokens-per-minute",
            PolicyLabel::QuotaSessionBudget => "quota-session-budget",
            PolicyLabel::QuotaKv => "quota-kv",
            PolicyLabel::QuotaReaders => "quota-readers",
            PolicyLabel::QuotaBudget => "quota-budget",
        }
    }
}
