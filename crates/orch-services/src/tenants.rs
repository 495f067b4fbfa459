//! Tenants: each one's weight in fair queuing, its quotas, and what it has in the
//! system right now.
//!
//! Owns: per-tenant counters (tasks in flight, tasks queued) and the tokens-per-minute
//! bucket. Admission reserves through [`Tenant::reserve`], which checks every quota
//! and takes what it needs in one step (atomics and the bucket's own small lock), so
//! concurrent admissions cannot overrun a quota. What is reserved is given back by
//! RAII: a [`QueuedLease`] when the task leaves the queue, a [`Reservation`] when the
//! task ends (with the tokens it did not generate refunded).
//! Never: calls out while holding the bucket's lock.

use crate::config::{Quotas, Tenancy, TenantSpec};
use orch_domain::{ErrorCode, OrchError, PolicyLabel};
use orchestrator_core::bucket::TokenBucket;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// One tenant. Shared by every task it has in the system.
pub struct Tenant {
    pub name: Arc<str>,
    /// Small dense number (the flow id in queues).
    pub ix: u32,
    /// Weight and quotas: replaced as a whole by a live reconfiguration.
    spec: RwLock<(u32, Quotas)>,
    in_flight: AtomicU32,
    queued: AtomicU32,
    /// Context tokens the tenant's unfinished tasks hold ([`KvHold`]).
    kv_held: AtomicU64,
    bucket: Mutex<Option<TokenBucket>>,
    epoch: Instant,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("name", &self.name)
            .field("weight", &self.weight())
            .finish()
    }
}

/// What a tenant uses now, against its quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub in_flight: u32,
    pub queued: u32,
    /// Tokens left in the per-minute bucket (None = no such quota).
    pub tokens_available: Option<u64>,
}

fn quota_error(which: PolicyLabel, message: String, retry_after_ms: u64) -> OrchError {
    OrchError::new(ErrorCode::QuotaExceeded, message)
        .with_policy(which)
        .with_retry_after_ms(retry_after_ms.max(1))
}

/// Take one unit of `counter` if it is below `max`.
fn take_below(counter: &AtomicU32, max: Option<u32>) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| match max {
            Some(m) if v >= m => None,
            _ => Some(v + 1),
        })
        .is_ok()
}

impl Tenant {
    fn new(spec: &TenantSpec, name: &str, ix: u32) -> Self {
        let epoch = Instant::now();
        Self {
            name: name.into(),
            ix,
            spec: RwLock::new((spec.weight.max(1), spec.quotas)),
            in_flight: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            kv_held: AtomicU64::new(0),
            bucket: Mutex::new(
                spec.quotas
                    .tokens_per_minute
                    .map(|tpm| TokenBucket::per_minute(tpm, 0)),
            ),
            epoch,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, Option<TokenBucket>> {
        self.bucket.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Share weight in fair queuing.
    pub fn weight(&self) -> u32 {
        self.spec.read().unwrap_or_else(|p| p.into_inner()).0
    }

    pub fn quotas(&self) -> Quotas {
        self.spec.read().unwrap_or_else(|p| p.into_inner()).1
    }

    /// Apply a new weight and quotas (live reconfiguration). Tasks already admitted
    /// keep what they reserved; a new per-minute budget starts with no more than the
    /// tokens available under the old one.
    fn update(&self, spec: &TenantSpec) {
        let old = self.quotas();
        *self.spec.write().unwrap_or_else(|p| p.into_inner()) = (spec.weight.max(1), spec.quotas);
        if old.tokens_per_minute != spec.quotas.tokens_per_minute {
            let now = self.now_ms();
            let mut b = self.bucket();
            let had = b.as_mut().map(|b| b.available(now));
            *b = spec.quotas.tokens_per_minute.map(|tpm| {
                let mut nb = TokenBucket::per_minute(tpm, now);
                if let Some(had) = had.filter(|h| *h < tpm) {
                    let _ = nb.try_take(tpm - had, now);
                }
                nb
            });
        }
    }

    pub fn usage(&self) -> Usage {
        let now = self.now_ms();
        Usage {
            in_flight: self.in_flight.load(Ordering::Acquire),
            queued: self.queued.load(Ordering::Acquire),
            tokens_available: self.bucket().as_mut().map(|b| b.available(now)),
        }
    }

    /// What `GET /v1/capabilities` shows the tenant.
    pub fn caps(&self, role: crate::auth::Role) -> orch_domain::control::TenantCaps {
        let u = self.usage();
        let q = &self.quotas();
        orch_domain::control::TenantCaps {
            tenant: self.name.to_string(),
            role: role.as_str().to_string(),
            weight: self.weight(),
            quotas: orch_domain::control::QuotaCaps {
                max_concurrent: q.max_concurrent,
                max_queued: q.max_queued,
                tokens_per_minute: q.tokens_per_minute,
                max_tokens_per_task: q.max_tokens_per_task,
                max_kv_tokens: q.max_kv_tokens,
                tokens_per_day: q.tokens_per_day,
                tokens_per_month: q.tokens_per_month,
            },
            in_flight: u.in_flight,
            queued: u.queued,
            tokens_available: u.tokens_available,
            kv_tokens_held: q.max_kv_tokens.map(|_| self.kv_held()),
            budget: None,
        }
    }

    /// Check every quota for a task of `max_tokens` and reserve what it needs: a place
    /// in flight, a place in the queue, and `max_tokens` from the bucket. Refusals:
    /// 400 for a task no wait could admit (over `max_tokens_per_task` or the whole
    /// per-minute budget), 429 `QUOTA_EXCEEDED` naming the quota otherwise, with
    /// `retry_after_ms` from when capacity returns (`busy_retry_ms` when that is a
    /// running task's end).
    pub fn reserve(
        self: &Arc<Self>,
        max_tokens: u32,
        busy_retry_ms: u64,
    ) -> Result<(Reservation, QueuedLease), OrchError> {
        let q = &self.quotas();
        if let Some(m) = q.max_tokens_per_task {
            if max_tokens > m {
                return Err(OrchError::invalid(
                    "max_tokens",
                    format!(
                        "{max_tokens} exceeds tenant {}'s max_tokens_per_task {m}",
                        self.name
                    ),
                ));
            }
        }
        if let Some(tpm) = q.tokens_per_minute {
            if u64::from(max_tokens) > tpm {
                return Err(OrchError::invalid(
                    "max_tokens",
                    format!(
                        "{max_tokens} exceeds tenant {}'s tokens_per_minute {tpm}",
                        self.name
                    ),
                ));
            }
        }
        if !take_below(&self.in_flight, q.max_concurrent) {
            return Err(quota_error(
                PolicyLabel::QuotaConcurrency,
                format!(
                    "tenant {} has {} tasks in flight (max_concurrent {})",
                    self.name,
                    self.in_flight.load(Ordering::Acquire),
                    q.max_concurrent.unwrap_or(0)
                ),
                busy_retry_ms,
            ));
        }
        // from here on, an early return drops these and gives the places back
        let mut reservation = Reservation {
            tenant: self.clone(),
            tokens: 0,
            used: 0,
        };
        if !take_below(&self.queued, q.max_queued) {
            return Err(quota_error(
                PolicyLabel::QuotaQueued,
                format!(
                    "tenant {} has {} tasks waiting (max_queued {})",
                    self.name,
                    self.queued.load(Ordering::Acquire),
                    q.max_queued.unwrap_or(0)
                ),
                busy_retry_ms,
            ));
        }
        let lease = QueuedLease(self.clone());
        let now = self.now_ms();
        let mut guard = self.bucket();
        if let Some(b) = guard.as_mut() {
            if let Err(short) = b.try_take(u64::from(max_tokens), now) {
                let tpm = b.capacity();
                drop(guard);
                return Err(quota_error(
                    PolicyLabel::QuotaTokensPerMinute,
                    format!(
                        "tenant {} has {} of its {tpm} tokens per minute left; this task reserves {max_tokens}",
                        self.name, short.available
                    ),
                    short.wait_ms,
                ));
            }
            reservation.tokens = u64::from(max_tokens);
        }
        Ok((reservation, lease))
    }
}

impl Tenant {
    /// Whether a task needing `need` context tokens could ever fit the tenant's KV
    /// quota: one that needs more than the whole quota is the client's 400 (no wait
    /// could admit it), checked before anything is reserved.
    pub fn kv_fits_at_all(&self, need: u64, max_tokens: u32) -> Result<(), OrchError> {
        match self.quotas().max_kv_tokens {
            Some(max) if need > max => {
                // name what to shrink: max_tokens when it alone is over
                let field = if u64::from(max_tokens) > max {
                    "max_tokens"
                } else {
                    "prompt"
                };
                Err(OrchError::invalid(
                    field,
                    format!(
                        "the prompt and max_tokens need {need} tokens of KV cache, over tenant {}'s max_kv_tokens {max}",
                        self.name
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Hold `need` context tokens of the tenant's KV quota for a task until it ends
    /// (the returned [`KvHold`] gives them back when dropped). Every task's need is
    /// counted, quota or not, so a quota a live reconfiguration sets sees the tasks
    /// already running. One that does not fit beside the tenant's other tasks is
    /// refused with 429 `QUOTA_EXCEEDED` (`quota-kv`), retry after `busy_retry_ms`.
    pub fn hold_kv(self: &Arc<Self>, need: u64, busy_retry_ms: u64) -> Result<KvHold, OrchError> {
        let max = self.quotas().max_kv_tokens;
        let taken =
            self.kv_held
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| match max {
                    Some(m) if held + need > m => None,
                    _ => Some(held + need),
                });
        match taken {
            Ok(_) => Ok(KvHold {
                tenant: self.clone(),
                tokens: need,
            }),
            Err(held) => Err(quota_error(
                PolicyLabel::QuotaKv,
                format!(
                    "tenant {}'s unfinished tasks hold {held} tokens of KV cache; this task needs {need} more (max_kv_tokens {})",
                    self.name,
                    max.unwrap_or(0)
                ),
                busy_retry_ms,
            )),
        }
    }

    /// Context tokens the tenant's unfinished tasks hold now.
    pub fn kv_held(&self) -> u64 {
        self.kv_held.load(Ordering::Acquire)
    }
}

/// Context tokens of a tenant's KV quota held by one unfinished task; given back when
/// dropped (when the task ends, or when its admission fails after the hold).
pub struct KvHold {
    tenant: Arc<Tenant>,
    tokens: u64,
}

impl Drop for KvHold {
    fn drop(&mut self) {
        self.tenant.kv_held.fetch_sub(self.tokens, Ordering::AcqRel);
    }
}

/// A task's place in flight and its reserved tokens; given back when dropped, with
/// the tokens it did not use ([`Reservation::used`]) refunded.
pub struct Reservation {
    tenant: Arc<Tenant>,
    tokens: u64,
    used: u64,
}

impl Reservation {
    /// Record the tokens the task generated (before dropping the reservation).
    pub fn used(&mut self, tokens_out: u64) {
        self.used = tokens_out;
    }

    pub fn tenant(&self) -> &Arc<Tenant> {
        &self.tenant
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let t = &self.tenant;
        t.in_flight.fetch_sub(1, Ordering::AcqRel);
        let refund = self.tokens.saturating_sub(self.used);
        if refund > 0 {
            let now = t.now_ms();
            if let Some(b) = t.bucket().as_mut() {
                b.give_back(refund, now);
            }
        }
    }
}

/// A task's place in its tenant's queue allowance; given back when dropped (the task
/// left the queue: dispatched, canceled, evicted or expired).
pub struct QueuedLease(pub(crate) Arc<Tenant>);

impl Drop for QueuedLease {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every tenant, by name. Tenants not configured get the defaults on first use.
pub struct Tenants {
    map: RwLock<HashMap<Arc<str>, Arc<Tenant>>>,
    defaults: RwLock<TenantSpec>,
}

impl Tenants {
    pub fn new(cfg: &Tenancy) -> Self {
        let mut map = HashMap::new();
        for (ix, t) in cfg.tenants.iter().enumerate() {
            let tenant = Arc::new(Tenant::new(t, &t.name, ix as u32));
            map.insert(tenant.name.clone(), tenant);
        }
        Self {
            map: RwLock::new(map),
            defaults: RwLock::new(cfg.defaults.clone()),
        }
    }

    /// Apply a new tenancy (live reconfiguration): listed tenants get their new weight
    /// and quotas, tenants no longer listed fall back to the defaults, new ones are
    /// added. Returns what changed, one line per tenant.
    pub fn update(&self, cfg: &Tenancy) -> Vec<String> {
        let mut changed = Vec::new();
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        *self.defaults.write().unwrap_or_else(|p| p.into_inner()) = cfg.defaults.clone();
        for (name, t) in m.iter() {
            let spec = cfg
                .tenants
                .iter()
                .find(|s| *s.name == **name)
                .unwrap_or(&cfg.defaults);
            let before = (t.weight(), t.quotas());
            if before != (spec.weight.max(1), spec.quotas) {
                t.update(spec);
                changed.push(format!(
                    "tenant {name}: weight {} → {}, quotas {:?} → {:?}",
                    before.0,
                    spec.weight.max(1),
                    before.1,
                    spec.quotas
                ));
            }
        }
        for spec in &cfg.tenants {
            if !m.contains_key(spec.name.as_str()) {
                let ix = m.len() as u32;
                let t = Arc::new(Tenant::new(spec, &spec.name, ix));
                m.insert(t.name.clone(), t);
                changed.push(format!("tenant {} added", spec.name));
            }
        }
        changed
    }

    /// Every tenant known now (configured, or seen since start), by name.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .map(|k| k.to_string())
            .collect();
        v.sort();
        v
    }

    /// The tenant called `name`, created with the defaults if it is new.
    pub fn get(&self, name: &str) -> Arc<Tenant> {
        if let Some(t) = self.map.read().unwrap_or_else(|p| p.into_inner()).get(name) {
            return t.clone();
        }
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        let ix = m.len() as u32;
        let defaults = self
            .defaults
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        m.entry(name.into())
            .or_insert_with(|| Arc::new(Tenant::new(&defaults, name, ix)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(q: Quotas) -> Arc<Tenant> {
        let spec = TenantSpec {
            name: "t".into(),
            weight: 1,
            quotas: q,
        };
        Tenants::new(&Tenancy {
            tenants: vec![spec],
            defaults: TenantSpec::new("d"),
        })
        .get("t")
    }

    #[test]
    fn concurrency_and_queue_places_come_back_when_dropped() {
        let t = tenant(Quotas {
            max_concurrent: Some(2),
            max_queued: Some(1),
            ..Quotas::default()
        });
        let (r1, l1) = t.reserve(10, 500).unwrap();
        let e = t.reserve(10, 500).err().unwrap();
        assert_eq!(e.policy_label, Some(PolicyLabel::QuotaQueued));
        drop(l1); // dispatched
        let (r2, _l2) = t.reserve(10, 500).unwrap();
        let e = t.reserve(10, 500).err().unwrap();
        assert_eq!(e.policy_label, Some(PolicyLabel::QuotaConcurrency));
        assert_eq!(e.retry_after_ms, Some(500));
        drop((r1, r2));
        assert_eq!(t.usage().in_flight, 0);
    }

    /// The KV quota holds what unfinished tasks may occupy; a hold is given back when
    /// dropped; a task over the whole quota is the client's 400.
    #[test]
    fn kv_holds_are_bounded_and_given_back() {
        let t = tenant(Quotas {
            max_kv_tokens: Some(300),
            ..Quotas::default()
        });
        let a = t.hold_kv(200, 700).unwrap();
        let e = t.hold_kv(150, 700).err().unwrap();
        assert_eq!(e.code, ErrorCode::QuotaExceeded);
        assert_eq!(e.policy_label, Some(PolicyLabel::QuotaKv));
        assert_eq!(e.retry_after_ms, Some(700));
        let b = t.hold_kv(100, 700).unwrap();
        drop(a);
        let c = t.hold_kv(150, 700).unwrap();
        assert_eq!(t.kv_held(), 250);
        // over the whole quota: the client's 400, naming what to shrink
        let e = t.kv_fits_at_all(301, 10).err().unwrap();
        assert_eq!(e.code, ErrorCode::InvalidParams);
        assert!(e.message.starts_with("prompt"), "{}", e.message);
        let e = t.kv_fits_at_all(400, 350).err().unwrap();
        assert!(e.message.starts_with("max_tokens"), "{}", e.message);
        assert!(t.kv_fits_at_all(300, 10).is_ok());
        drop((b, c));
        assert_eq!(t.kv_held(), 0);
        assert!(t.hold_kv(300, 1).is_ok());
        // no quota: never refused, still counted (a quota set later sees them)
        let free = tenant(Quotas::default());
        let holds: Vec<_> = (0..5).map(|_| free.hold_kv(1 << 20, 1).unwrap()).collect();
        assert_eq!(free.kv_held(), 5 << 20);
        drop(holds);
        assert_eq!(free.kv_held(), 0);
    }

    #[test]
    fn tokens_per_minute_reserve_and_refund() {
        let t = tenant(Quotas {
            tokens_per_minute: Some(100),
            ..Quotas::default()
        });
        let (mut r, _l) = t.reserve(80, 1).unwrap();
        let e = t.reserve(30, 1).err().unwrap();
        assert_eq!(e.policy_label, Some(PolicyLabel::QuotaTokensPerMinute));
        assert!(e.retry_after_ms.unwrap() >= 5_000);
        r.used(20);
        drop(r);
        // 60 of the 80 reserved came back
        assert!(t.usage().tokens_available.unwrap() >= 80);
        assert!(t.reserve(70, 1).is_ok());
        // more than the whole budget can never be admitted: 400
        assert_eq!(
            t.reserve(101, 1).err().unwrap().code,
            ErrorCode::InvalidParams
        );
    }

    #[test]
    fn a_new_tenancy_applies_to_known_tenants() {
        let ts = Tenants::new(&Tenancy::default());
        let a = ts.get("a");
        assert_eq!(a.weight(), 1);
        let mut spec = TenantSpec::new("a");
        spec.weight = 4;
        spec.quotas.max_queued = Some(0);
        let changed = ts.update(&Tenancy {
            tenants: vec![spec],
            defaults: TenantSpec::new("d"),
        });
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert_eq!(a.weight(), 4);
        assert!(
            a.reserve(1, 1).is_err(),
            "the new queue quota applies at once"
        );
    }

    #[test]
    fn unknown_tenants_get_the_defaults() {
        let ts = Tenants::new(&Tenancy::default());
        let a = ts.get("a");
        assert!(Arc::ptr_eq(&a, &ts.get("a")));
        assert_ne!(a.ix, ts.get("b").ix);
    }
}
