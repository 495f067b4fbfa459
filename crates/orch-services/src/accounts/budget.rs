//! Token budgets per tenant, per UTC day and per UTC month: prompt plus output
//! tokens, as the usage ledger counts them.
//!
//! Owns: each tenant's spend today and this month (read from the store at start,
//! then kept up to date by every task's settlement, the same numbers the ledger
//! writes) and what admitted, unfinished tasks hold. Admission holds a task's most
//! (estimated prompt + `max_tokens`) and refuses the task that would cross a budget;
//! its end replaces the hold with what it used.
//! Never: reads the store on a request's path.

use super::calendar::{day_bounds, month_bounds, now_ms, rfc3339};
use orch_domain::accounts::BudgetCaps;
use orch_domain::{ErrorCode, OrchError, PolicyLabel};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A tenant's budgets (`None` = none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetLimits {
    pub tokens_per_day: Option<u64>,
    pub tokens_per_month: Option<u64>,
}

impl BudgetLimits {
    pub fn is_some(&self) -> bool {
        self.tokens_per_day.is_some() || self.tokens_per_month.is_some()
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Spend {
    day_end: u64,
    day: u64,
    month_end: u64,
    month: u64,
    /// Most tokens admitted, unfinished tasks can still use.
    held: u64,
}

impl Spend {
    /// Start a new day or month when its end has passed.
    fn roll(&mut self, now: u64) {
        if now >= self.day_end {
            self.day = 0;
            self.day_end = day_bounds(now).1;
        }
        if now >= self.month_end {
            self.month = 0;
            self.month_end = month_bounds(now).1;
        }
    }
}

/// Every tenant's spend.
#[derive(Debug, Default)]
pub struct Budgets {
    spend: Mutex<HashMap<String, Spend>>,
}

/// A task's hold on its tenant's budgets, replaced by what it used when it ends
/// ([`settle`](Self::settle)); given back when dropped unsettled.
pub struct BudgetHold {
    budgets: Arc<Budgets>,
    tenant: String,
    tokens: u64,
}

impl Budgets {
    /// Start from the spend the store holds: per tenant, this month's and today's.
    pub fn starting_at(month: Vec<(String, u64)>, today: Vec<(String, u64)>) -> Self {
        let now = now_ms();
        let mut spend: HashMap<String, Spend> = HashMap::new();
        let fresh = || Spend {
            day_end: day_bounds(now).1,
            month_end: month_bounds(now).1,
            ..Spend::default()
        };
        for (t, n) in month {
            spend.entry(t).or_insert_with(fresh).month = n;
        }
        for (t, n) in today {
            spend.entry(t).or_insert_with(fresh).day = n;
        }
        Self {
            spend: Mutex::new(spend),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Spend>> {
        self.spend.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hold `need` tokens of `tenant`'s budgets, or refuse with 429 `QUOTA_EXCEEDED`
    /// (`quota-budget`) when today's or this month's spend plus what is held plus
    /// `need` would cross a budget; `retry_after_ms` is the time to the reset.
    /// A task bigger than a whole budget is the client's 400.
    pub fn hold(
        self: &Arc<Self>,
        tenant: &str,
        limits: BudgetLimits,
        need: u64,
    ) -> Result<BudgetHold, OrchError> {
        let now = now_ms();
        for (limit, what) in [
            (limits.tokens_per_day, "tokens_per_day"),
            (limits.tokens_per_month, "tokens_per_month"),
        ] {
            if let Some(l) = limit.filter(|l| need > *l) {
                return Err(OrchError::invalid(
                    "max_tokens",
                    format!("the prompt and max_tokens need up to {need} tokens, over tenant {tenant}'s {what} {l}"),
                ));
            }
        }
        let mut map = self.lock();
        if !map.contains_key(tenant) {
            map.insert(tenant.to_string(), Spend::default());
        }
        let Some(s) = map.get_mut(tenant) else {
            return Err(OrchError::internal("budget entry vanished"));
        };
        s.roll(now);
        let over = |limit: Option<u64>, used: u64| limit.filter(|l| used + s.held + need > *l);
        let refusal = if let Some(l) = over(limits.tokens_per_day, s.day) {
            Some(("today", "tokens_per_day", l, s.day, s.day_end))
        } else {
            over(limits.tokens_per_month, s.month)
                .map(|l| ("this month", "tokens_per_month", l, s.month, s.month_end))
        };
        if let Some((when, what, limit, used, reset)) = refusal {
            let held = s.held;
            drop(map);
            return Err(OrchError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "tenant {tenant} used {used} of its {what} {limit} {when} (UTC) and its unfinished tasks hold {held}; this task needs up to {need}; the budget resets at {}",
                    rfc3339(reset)
                ),
            )
            .with_policy(PolicyLabel::QuotaBudget)
            .with_retry_after_ms(reset.saturating_sub(now).max(1)));
        }
        s.held += need;
        Ok(BudgetHold {
            budgets: self.clone(),
            tenant: tenant.to_string(),
            tokens: need,
        })
    }

    /// What `tenant` spent today and this month, plus what its tasks hold.
    pub fn caps(&self, tenant: &str, limits: BudgetLimits) -> BudgetCaps {
        let now = now_ms();
        let mut map = self.lock();
        let mut s = map.get(tenant).copied().unwrap_or_default();
        s.roll(now);
        if let Some(e) = map.get_mut(tenant) {
            *e = s;
        }
        BudgetCaps {
            tokens_per_day: limits.tokens_per_day,
            tokens_per_month: limits.tokens_per_month,
            used_today: s.day + s.held,
            used_this_month: s.month + s.held,
            day_resets_at: rfc3339(s.day_end),
            month_resets_at: rfc3339(s.month_end),
        }
    }
}

impl BudgetHold {
    /// The task ended having used `used` tokens: that is its spend, the hold goes.
    pub fn settle(mut self, used: u64) {
        let now = now_ms();
        let mut map = self.budgets.lock();
        let s = map.entry(std::mem::take(&mut self.tenant)).or_default();
        s.roll(now);
        s.held = s.held.saturating_sub(self.tokens);
        s.day += used;
        s.month += used;
        self.tokens = 0;
    }
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        if self.tokens > 0 {
            if let Some(s) = self.budgets.lock().get_mut(&self.tenant) {
                s.held = s.held.saturating_sub(self.tokens);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_the_task_that_would_cross_a_budget_and_counts_what_was_used() {
        let b = Arc::new(Budgets::starting_at(
            vec![("acme".into(), 500)],
            vec![("acme".into(), 100)],
        ));
        let limits = BudgetLimits {
            tokens_per_day: Some(300),
            tokens_per_month: Some(10_000),
        };
        let h = b.hold("acme", limits, 150).unwrap();
        // 100 spent + 150 held + 100 > 300
        let e = b.hold("acme", limits, 100).err().unwrap();
        assert_eq!(e.code, ErrorCode::QuotaExceeded);
        assert_eq!(e.policy_label, Some(PolicyLabel::QuotaBudget));
        assert!(e.retry_after_ms.unwrap() <= 86_400_000);
        assert!(e.message.contains("resets at"), "{}", e.message);
        h.settle(40);
        let c = b.caps("acme", limits);
        assert_eq!((c.used_today, c.used_this_month), (140, 540));
        // a dropped hold gives its tokens back
        drop(b.hold("acme", limits, 160).unwrap());
        assert!(b.hold("acme", limits, 160).is_ok());
        // more than the whole budget is the client's mistake
        assert_eq!(
            b.hold("acme", limits, 301).err().unwrap().code,
            ErrorCode::InvalidParams
        );
        // no budget: anything goes, and the spend is still counted
        assert!(b.hold("other", BudgetLimits::default(), 1 << 40).is_ok());
    }
}
