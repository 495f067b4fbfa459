//! Sessions: turns, token use and budgets, the replica (and engine slot) that holds a
//! session's KV cache for affinity, TTL eviction, and a bound on how many are kept
//! (session ids are chosen by clients): past `max`, the least recently used goes.
//!
//! Sessions are namespaced by tenant: a session is its tenant and the id that tenant
//! chose, so another tenant's use of the same id is another session, and nothing here
//! tells a tenant that an id is in use elsewhere.
//!
//! Owns: the session map and its recency order, behind one lock taken briefly.
//! Never: calls out (engines, pools) while holding it.

use orch_domain::{SessionId, SessionInfo};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A session as the store keys it: its tenant and the id the tenant chose.
type Key = (Arc<str>, SessionId);

#[derive(Debug, Clone)]
pub struct Session {
    pub turns: u32,
    pub tokens_used: u64,
    /// Tokens reserved by turns admitted and not yet ended.
    pub tokens_reserved: u64,
    pub last_seen: Instant,
    pub pool_id: Option<String>,
    pub replica_id: Option<String>,
    pub slot: Option<u32>,
    /// Position in the recency order.
    tick: u64,
}

/// Where a session's KV lives, for affinity and eviction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvHome {
    pub pool_id: String,
    pub replica_id: String,
    pub slot: Option<u32>,
}

#[derive(Default)]
struct Sessions {
    map: HashMap<Key, Session>,
    /// tick → session, oldest first.
    order: BTreeMap<u64, Key>,
    next_tick: u64,
}

impl Sessions {
    fn touch(&mut self, key: &Key) -> Option<&mut Session> {
        let tick = self.next_tick;
        let s = self.map.get_mut(key)?;
        self.order.remove(&s.tick);
        s.tick = tick;
        s.last_seen = Instant::now();
        self.order.insert(tick, key.clone());
        self.next_tick += 1;
        Some(s)
    }

    /// Find or create a session (evicting the least recently used beyond `max`).
    fn get_or_create(&mut self, key: &Key, max: usize) -> Option<&mut Session> {
        if !self.map.contains_key(key) {
            while self.map.len() >= max {
                let Some((_, oldest)) = self.order.pop_first() else {
                    break;
                };
                self.map.remove(&oldest);
                tracing::debug!(tenant = %oldest.0, session_id = %oldest.1, "session evicted (store full)");
            }
            self.map.insert(
                key.clone(),
                Session {
                    turns: 0,
                    tokens_used: 0,
                    tokens_reserved: 0,
                    last_seen: Instant::now(),
                    pool_id: None,
                    replica_id: None,
                    slot: None,
                    tick: u64::MAX,
                },
            );
        }
        self.touch(key)
    }

    fn remove(&mut self, key: &Key) -> Option<Session> {
        let s = self.map.remove(key)?;
        self.order.remove(&s.tick);
        Some(s)
    }
}

/// Why a turn could not reserve its session's budget: fewer tokens left than it
/// reserves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub left: u64,
}

pub struct SessionStore {
    inner: Mutex<Sessions>,
    ttl: Duration,
    budget: Option<u64>,
    max: usize,
}

impl SessionStore {
    pub fn new(ttl: Duration, budget: Option<u64>, max: usize) -> Self {
        Self {
            inner: Mutex::new(Sessions::default()),
            ttl,
            budget,
            max: max.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Sessions> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserve `tokens` of the budget of `tenant`'s session `id` for a new turn,
    /// creating the session on its first turn. Atomic: concurrent turns cannot together
    /// reserve more than the budget.
    pub fn reserve(&self, tenant: &Arc<str>, id: SessionId, tokens: u64) -> Result<(), Refusal> {
        let budget = self.budget;
        let mut m = self.lock();
        let s = m
            .get_or_create(&(tenant.clone(), id), self.max)
            .ok_or(Refusal { left: 0 })?;
        if let Some(b) = budget {
            let left = b.saturating_sub(s.tokens_used + s.tokens_reserved);
            if left < tokens {
                return Err(Refusal { left });
            }
        }
        s.tokens_reserved += tokens;
        Ok(())
    }

    /// What is left of `tenant`'s session `id`'s budget while a turn that reserved
    /// `reserved` tokens here has produced `so_far`: the budget less what turns used,
    /// what the others hold, and this turn's tokens so far. `None` without a budget,
    /// for an unknown session, or when this store does not hold the turn's reservation
    /// (a cluster leader running a task another instance admitted, a session evicted
    /// meanwhile): then the figure is not known here.
    pub fn remaining_during(
        &self,
        tenant: &Arc<str>,
        id: SessionId,
        reserved: u64,
        so_far: u64,
    ) -> Option<u64> {
        let b = self.budget?;
        let m = self.lock();
        let s = m.map.get(&(tenant.clone(), id))?;
        let others = s.tokens_reserved.checked_sub(reserved)?;
        Some(b.saturating_sub(s.tokens_used + others + so_far))
    }

    /// A turn ended: release its reservation and charge what it used, in one step.
    pub fn settle(&self, tenant: &Arc<str>, id: SessionId, reserved: u64, used: u64) {
        let mut m = self.lock();
        if let Some(s) = m.map.get_mut(&(tenant.clone(), id)) {
            s.tokens_reserved = s.tokens_reserved.saturating_sub(reserved);
            s.tokens_used += used;
        }
    }

    /// Count a new turn (creating the session on its first turn).
    /// Beyond the bound, the least recently used session is evicted.
    pub fn begin_turn(&self, tenant: &Arc<str>, id: SessionId) {
        if let Some(s) = self.lock().get_or_create(&(tenant.clone(), id), self.max) {
            s.turns += 1;
        }
    }

    /// Record where a finished turn left the session's KV.
    pub fn end_turn(&self, tenant: &Arc<str>, id: SessionId, home: KvHome) {
        if let Some(s) = self.lock().touch(&(tenant.clone(), id)) {
            s.pool_id = Some(home.pool_id);
            s.replica_id = Some(home.replica_id);
            s.slot = home.slot;
        }
    }

    /// The tenant of the first session with this id (for an admin, who may see any
    /// tenant's; a scan, as admins ask rarely).
    pub fn any_tenant_of(&self, id: SessionId) -> Option<Arc<str>> {
        let m = self.lock();
        let key = m.map.keys().find(|(_, s)| *s == id)?;
        Some(key.0.clone())
    }

    pub fn home(&self, tenant: &Arc<str>, id: SessionId) -> Option<KvHome> {
        let m = self.lock();
        let s = m.map.get(&(tenant.clone(), id))?;
        Some(KvHome {
            pool_id: s.pool_id.clone()?,
            replica_id: s.replica_id.clone()?,
            slot: s.slot,
        })
    }

    pub fn info(&self, tenant: &Arc<str>, id: SessionId) -> Option<SessionInfo> {
        let m = self.lock();
        let s = m.map.get(&(tenant.clone(), id))?;
        let idle = s.last_seen.elapsed();
        if idle >= self.ttl {
            return None;
        }
        Some(SessionInfo {
            session_id: id,
            turns: s.turns,
            ttl_ms_remaining: (self.ttl - idle).as_millis() as u64,
            tokens_used: s.tokens_used,
            tokens_budget_remaining: self
                .budget
                .map(|b| b.saturating_sub(s.tokens_used + s.tokens_reserved)),
            pool_id: s.pool_id.clone(),
            replica_id: s.replica_id.clone(),
            kv_warmth: s.replica_id.is_some(),
        })
    }

    /// Remove a session, returning where its KV lived.
    pub fn remove(&self, tenant: &Arc<str>, id: SessionId) -> Option<Option<KvHome>> {
        let s = self.lock().remove(&(tenant.clone(), id))?;
        Some(match (s.pool_id, s.replica_id) {
            (Some(pool_id), Some(replica_id)) => Some(KvHome {
                pool_id,
                replica_id,
                slot: s.slot,
            }),
            _ => None,
        })
    }

    /// Evict sessions idle past the TTL; returns how many.
    pub fn sweep(&self) -> usize {
        let ttl = self.ttl;
        let mut m = self.lock();
        let mut evicted = 0;
        // oldest first: stop at the first session still within its TTL
        while let Some((&tick, key)) = m.order.first_key_value() {
            if m.map.get(key).is_some_and(|s| s.last_seen.elapsed() < ttl) {
                break;
            }
            let key = key.clone();
            m.order.remove(&tick);
            m.map.remove(&key);
            evicted += 1;
        }
        evicted
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> Arc<str> {
        name.into()
    }

    /// The budget left during a turn counts its tokens so far, not its reservation,
    /// and is unknown where the turn's reservation is not held.
    #[test]
    fn the_budget_left_during_a_turn_counts_its_tokens_so_far() {
        let st = SessionStore::new(Duration::from_secs(60), Some(100), 10);
        let id = SessionId(uuid::Uuid::new_v4());
        let a = t("t");
        st.reserve(&a, id, 40).unwrap();
        st.reserve(&a, id, 20).unwrap();
        // this turn (40 reserved) has made 10; another holds 20
        assert_eq!(st.remaining_during(&a, id, 40, 10), Some(70));
        // a turn whose reservation this store does not hold
        assert_eq!(st.remaining_during(&a, id, 80, 10), None);
        assert_eq!(st.remaining_during(&t("other"), id, 40, 10), None);
        let none = SessionStore::new(Duration::from_secs(60), None, 10);
        none.reserve(&a, id, 40).unwrap();
        assert_eq!(none.remaining_during(&a, id, 40, 10), None);
    }

    #[test]
    fn counts_turns_tokens_and_expires() {
        let st = SessionStore::new(Duration::from_millis(50), Some(100), 10);
        let id = SessionId(uuid::Uuid::new_v4());
        let a = t("t");
        st.begin_turn(&a, id);
        st.reserve(&a, id, 40).unwrap();
        st.settle(&a, id, 40, 30);
        st.end_turn(
            &a,
            id,
            KvHome {
                pool_id: "p".into(),
                replica_id: "r0".into(),
                slot: Some(1),
            },
        );
        st.begin_turn(&a, id);
        let info = st.info(&a, id).unwrap();
        assert_eq!(info.turns, 2);
        assert_eq!(info.tokens_used, 30);
        assert_eq!(info.tokens_budget_remaining, Some(70));
        assert!(info.kv_warmth);
        std::thread::sleep(Duration::from_millis(60));
        assert!(st.info(&a, id).is_none());
        assert_eq!(st.sweep(), 1);
        assert!(st.is_empty());
    }

    #[test]
    fn reservations_are_atomic_and_each_tenant_has_its_own_session() {
        let st = SessionStore::new(Duration::from_secs(60), Some(100), 10);
        let id = SessionId(uuid::Uuid::new_v4());
        let (a, b) = (t("a"), t("b"));
        st.reserve(&a, id, 60).unwrap();
        assert_eq!(st.reserve(&a, id, 60), Err(Refusal { left: 40 }));
        // the same id is another session for another tenant: its whole budget
        assert!(st.reserve(&b, id, 100).is_ok());
        assert_eq!(st.info(&b, id).unwrap().tokens_budget_remaining, Some(0));
        st.settle(&a, id, 60, 10);
        assert!(st.reserve(&a, id, 90).is_ok());
        assert_eq!(st.len(), 2);
        assert!(st.info(&t("c"), id).is_none());
        assert!(st.any_tenant_of(id).is_some());
    }

    #[test]
    fn bounded_by_count_least_recently_used_first() {
        let st = SessionStore::new(Duration::from_secs(60), None, 3);
        let a = t("a");
        let ids: Vec<SessionId> = (0..4).map(|_| SessionId(uuid::Uuid::new_v4())).collect();
        for id in &ids[..3] {
            st.begin_turn(&a, *id);
        }
        st.begin_turn(&a, ids[0]); // 0 is now the most recent; 1 the least
        st.begin_turn(&a, ids[3]);
        assert_eq!(st.len(), 3);
        assert!(
            st.info(&a, ids[1]).is_none(),
            "least recently used must go first"
        );
        for id in [ids[0], ids[2], ids[3]] {
            assert!(st.info(&a, id).is_some());
        }
    }
}
