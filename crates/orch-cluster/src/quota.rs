//! Tenant quotas that hold across the cluster: one ledger per tenant in a replicated
//! KV bucket, changed only by compare-and-set on its revision (two instances admitting
//! for one tenant at once cannot both take the last place; the loser reads again).
//! The ledger lists the tenant's tasks admitted and not ended (queued or running) and
//! the output tokens reserved in the current minute, so `max_concurrent`,
//! `max_queued` and `tokens_per_minute` count every instance's admissions.
//!
//! * Admission ([`Quotas::take`]) adds the task, or refuses with the standalone 429
//!   `QUOTA_EXCEEDED` and its policy label; a cluster that cannot answer refuses with
//!   503 (fails closed).
//! * The pool's leader marks the task running when it starts and removes it when its
//!   end is stored, giving back the tokens it did not generate (same minute only).
//! * A ledger entry whose removal was lost (a leader that died between storing an end
//!   and removing it) is found when the tenant is full: entries older than
//!   [`RECHECK_AFTER`] whose task has ended (or is nowhere) are dropped, at most once
//!   per tenant every few seconds on each instance.
//!
//! `tokens_per_minute` counts per calendar minute here (standalone: a bucket that
//! refills continuously). Tenants without these quotas never touch the bucket.
//!
//! Owns: the bucket's keys and the ledger's form. Never: HTTP.

use crate::{Cluster, ClusterError};
use async_nats::jetstream::kv::Store;
use orch_domain::{ErrorCode, OrchError, PolicyLabel};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

const BUCKET: &str = "orch_quotas";

/// A ledger entry older than this is checked against the task's state when its tenant
/// is full: a younger one may be a task whose store is still being tried (up to
/// `store_retry_ms`, at most 60 s), and entries carry other instances' clocks.
pub(crate) const RECHECK_AFTER: Duration = Duration::from_secs(90);

/// Compare-and-set tries before an admission gives up with 503 (each lost try means
/// another instance changed the ledger meanwhile).
const TRIES: usize = 16;

/// One task in a tenant's ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// Waiting (not started yet).
    pub queued: bool,
    /// Admitted at (ms since the epoch).
    pub at: u64,
    /// Output tokens reserved in `minute` (0: none).
    pub tokens: u64,
    /// The minute the tokens were reserved in.
    pub minute: u64,
}

/// A tenant's ledger.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Ledger {
    pub tasks: BTreeMap<String, Entry>,
    /// The minute `tokens` counts.
    pub minute: u64,
    pub tokens: u64,
}

/// What a tenant may have (the cluster-wide part of its quotas).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_concurrent: Option<u32>,
    pub max_queued: Option<u32>,
    pub tokens_per_minute: Option<u64>,
}

impl Limits {
    pub fn any(&self) -> bool {
        self.max_concurrent.is_some()
            || self.max_queued.is_some()
            || self.tokens_per_minute.is_some()
    }
}

fn refuse(which: PolicyLabel, message: String, retry_after_ms: u64) -> OrchError {
    OrchError::new(ErrorCode::QuotaExceeded, message)
        .with_policy(which)
        .with_retry_after_ms(retry_after_ms.max(1))
}

impl Ledger {
    /// Add task `id` reserving `tokens` at `now_ms`, or say which quota refuses it.
    pub fn admit(
        &mut self,
        tenant: &str,
        id: &str,
        limits: &Limits,
        tokens: u64,
        now_ms: u64,
        busy_retry_ms: u64,
    ) -> Result<(), OrchError> {
        if self.tasks.contains_key(id) {
            return Ok(());
        }
        let minute = now_ms / 60_000;
        if self.minute != minute {
            self.minute = minute;
            self.tokens = 0;
        }
        if let Some(max) = limits.max_concurrent {
            let n = self.tasks.len();
            if n >= max as usize {
                return Err(refuse(
                    PolicyLabel::QuotaConcurrency,
                    format!("tenant {tenant} has {n} tasks in flight in the cluster (max_concurrent {max})"),
                    busy_retry_ms,
                ));
            }
        }
        if let Some(max) = limits.max_queued {
            let n = self.tasks.values().filter(|e| e.queued).count();
            if n >= max as usize {
                return Err(refuse(
                    PolicyLabel::QuotaQueued,
                    format!(
                        "tenant {tenant} has {n} tasks waiting in the cluster (max_queued {max})"
                    ),
                    busy_retry_ms,
                ));
            }
        }
        let mut reserved = 0;
        if let Some(tpm) = limits.tokens_per_minute {
            if self.tokens + tokens > tpm {
                let next_minute_ms = (minute + 1) * 60_000 - now_ms;
                return Err(refuse(
                    PolicyLabel::QuotaTokensPerMinute,
                    format!(
                        "tenant {tenant} has {} of its {tpm} tokens this minute left in the cluster; this task reserves {tokens}",
                        tpm.saturating_sub(self.tokens)
                    ),
                    next_minute_ms,
                ));
            }
            self.tokens += tokens;
            reserved = tokens;
        }
        self.tasks.insert(
            id.to_string(),
            Entry {
                queued: true,
                at: now_ms,
                tokens: reserved,
                minute,
            },
        );
        Ok(())
    }

    /// The task started (true when that changed anything).
    pub fn started(&mut self, id: &str) -> bool {
        match self.tasks.get_mut(id) {
            Some(e) if e.queued => {
                e.queued = false;
                true
            }
            _ => false,
        }
    }

    /// The task ended having generated `used` tokens: it leaves, and what it reserved
    /// and did not use goes back if still in its minute (true when that changed
    /// anything).
    pub fn ended(&mut self, id: &str, used: u64) -> bool {
        let Some(e) = self.tasks.remove(id) else {
            return false;
        };
        if e.minute == self.minute {
            self.tokens = self.tokens.saturating_sub(e.tokens.saturating_sub(used));
        }
        true
    }

    /// Entries admitted before `before_ms` (to check whether their task still lives).
    pub fn old(&self, before_ms: u64) -> Vec<String> {
        self.tasks
            .iter()
            .filter(|(_, e)| e.at < before_ms)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// The ledgers of every tenant with cluster-wide quotas.
#[derive(Clone)]
pub(crate) struct Quotas {
    kv: Store,
}

#[derive(Debug, thiserror::Error)]
#[error("tenant {tenant}'s quota ledger: the cluster did not answer: {reason}")]
pub(crate) struct QuotaError {
    pub tenant: String,
    pub reason: String,
}

fn key(tenant: &str) -> String {
    format!("tenant.{tenant}")
}

impl Cluster {
    /// The quota bucket, created if missing (ledgers never expire by age).
    pub(crate) async fn quotas(&self) -> Result<Quotas, ClusterError> {
        let kv = self.kv_bucket(BUCKET, Duration::ZERO, false).await?;
        Ok(Quotas { kv })
    }
}

/// What one compare-and-set round did.
pub(crate) enum Change<T> {
    /// Write this ledger (the round's answer is `T`).
    Write(Ledger, T),
    /// Nothing to write.
    Keep(T),
}

impl Quotas {
    /// Apply `f` to `tenant`'s ledger, writing it only when `f` says it changed.
    pub async fn edit(
        &self,
        tenant: &str,
        mut f: impl FnMut(&mut Ledger) -> bool,
    ) -> Result<(), QuotaError> {
        self.change(tenant, |mut l| {
            Ok(if f(&mut l) {
                Change::Write(l, ())
            } else {
                Change::Keep(())
            })
        })
        .await
        .map(|_| ())
    }

    /// Change `tenant`'s ledger with `f` by compare-and-set, reading again when another
    /// instance changed it meanwhile.
    pub async fn change<T>(
        &self,
        tenant: &str,
        mut f: impl FnMut(Ledger) -> Result<Change<T>, OrchError>,
    ) -> Result<Result<T, OrchError>, QuotaError> {
        let k = key(tenant);
        let err = |reason: String| QuotaError {
            tenant: tenant.to_string(),
            reason,
        };
        for _ in 0..TRIES {
            let entry = self.kv.entry(&k).await.map_err(|e| err(e.to_string()))?;
            let (ledger, revision) = match entry {
                // an unreadable ledger is not taken as empty (that would fail open)
                Some(e) if !e.value.is_empty() => (
                    serde_json::from_slice::<Ledger>(&e.value)
                        .map_err(|e| err(format!("unreadable ledger: {e}")))?,
                    Some(e.revision),
                ),
                Some(e) => (Ledger::default(), Some(e.revision)),
                None => (Ledger::default(), None),
            };
            let (next, answer) = match f(ledger) {
                Err(refused) => return Ok(Err(refused)),
                Ok(Change::Keep(a)) => return Ok(Ok(a)),
                Ok(Change::Write(l, a)) => (l, a),
            };
            let body: bytes::Bytes = serde_json::to_vec(&next)
                .map_err(|e| err(e.to_string()))?
                .into();
            let written = match revision {
                Some(r) => self.kv.update(&k, body, r).await.map(|_| ()).map_err(|e| {
                    (
                        e.kind() == async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision
                            || crate::is_wrong_last_sequence(&e),
                        e.to_string(),
                    )
                }),
                None => self.kv.create(&k, body).await.map(|_| ()).map_err(|e| {
                    (
                        e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists
                            || crate::is_wrong_last_sequence(&e),
                        e.to_string(),
                    )
                }),
            };
            match written {
                Ok(()) => return Ok(Ok(answer)),
                // someone else wrote first: read again
                Err((true, _)) => continue,
                Err((false, reason)) => return Err(err(reason)),
            }
        }
        Err(err(format!("{TRIES} concurrent changes in a row")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn concurrency_and_queue_places_are_counted_across_admissions() {
        let limits = Limits {
            max_concurrent: Some(2),
            max_queued: Some(1),
            tokens_per_minute: None,
        };
        let mut l = Ledger::default();
        l.admit("t", "a", &limits, 10, 5 * MIN, 100).unwrap();
        // a queued: the next one waits too, over max_queued
        let e = l.admit("t", "b", &limits, 10, 5 * MIN, 100).unwrap_err();
        assert_eq!(e.policy_label, Some(PolicyLabel::QuotaQueued));
        assert!(l.started("a"));
        l.admit("t", "b", &limits, 10, 5 * MIN, 100).unwrap();
        // a repeat of an admitted id is not counted twice
        l.admit("t", "b", &limits, 10, 5 * MIN, 100).unwrap();
        assert!(l.started("b"));
        let e = l.admit("t", "c", &limits, 10, 5 * MIN, 100).unwrap_err();
        assert_eq!(e.code, ErrorCode::QuotaExceeded);
        assert_eq!(e.policy_label, Some(PolicyLabel::QuotaConcurrency));
        assert!(l.ended("a", 3));
        assert!(!l.ended("a", 3), "an end counts once");
        l.admit("t", "c", &limits, 10, 5 * MIN, 100).unwrap();
    }

    #[test]
    fn tokens_per_minute_reserve_refund_and_roll_over() {
        let limits = Limits {
            tokens_per_minute: Some(100),
            ..Limits::default()
        };
        let mut l = Ledger::default();
        l.admit("t", "a", &limits, 60, 5 * MIN + 1, 1).unwrap();
        let e = l.admit("t", "b", &limits, 60, 5 * MIN + 2, 1).unwrap_err();
        assert_eq!(e.policy_label, Some(PolicyLabel::QuotaTokensPerMinute));
        assert_eq!(e.retry_after_ms, Some(MIN - 2), "until the next minute");
        // a generated 10 of its 60: 50 come back
        l.ended("a", 10);
        l.admit("t", "b", &limits, 60, 5 * MIN + 3, 1).unwrap();
        l.admit("t", "c", &limits, 30, 5 * MIN + 4, 1).unwrap();
        assert!(l.admit("t", "d", &limits, 1, 5 * MIN + 5, 1).is_err());
        // the next minute starts empty; an end from the last minute refunds nothing
        l.admit("t", "d", &limits, 100, 6 * MIN, 1).unwrap();
        l.ended("b", 0);
        assert_eq!(l.tokens, 100);
    }

    #[test]
    fn old_entries_are_listed_for_a_recheck() {
        let mut l = Ledger::default();
        l.admit("t", "a", &Limits::default(), 0, 1_000, 1).unwrap();
        l.admit("t", "b", &Limits::default(), 0, 20_000, 1).unwrap();
        assert_eq!(l.old(10_000), ["a"]);
    }
}
