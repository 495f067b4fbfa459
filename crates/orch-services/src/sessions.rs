//! Sessions: turns, token use and budgets, the replica (and engine slot) that holds a
//! session's KV cache for affinity, TTL eviction, and a bound on how many are kept
//! (session ids are chosen by clients): past `max`, the least recently used goes.
//!
//! Owns: the session map and its recency order, behind one lock taken briefly.
//! Never: calls out (engines, pools) while holding it.

use orch_domain::{SessionId, SessionInfo};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Session {
    pub turns: u32,
    pub tokens_used: u64,
    /// Tokens reserved by turns admitted and not yet ended.
    pub tokens_reserved: u64,
    /// The tenant whose turns these are (set by the first turn).
    pub tenant: Option<Arc<str>>,
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
    map: HashMap<SessionId, Session>,
    /// tick → session, oldest first.
    order: BTreeMap<u64, SessionId>,
    next_tick: u64,
}

impl Sessions {
    fn touch(&mut self, id: SessionId) -> Option<&mut Session> {
        let tick = self.next_tick;
        let s = self.map.get_mut(&id)?;
        self.order.remove(&s.tick);
        s.tick = tick;
        s.last_seen = Instant::now();
        self.order.insert(tick, id);
        self.next_tick += 1;
        Some(s)
    }

    /// Find or create a session (evicting the least recently used beyond `max`).
    fn get_or_create(&mut self, id: SessionId, max: usize) -> Option<&mut Session> {
        if !self.map.contains_key(&id) {
            while self.map.len() >= max {
                let Some((_, oldest)) = self.order.pop_first() else {
                    break;
                };
                self.map.remove(&oldest);
                tracing::debug!(session_id = %oldest, "session evicted (store full)");
            }
            self.map.insert(
                id,
                Session {
                    turns: 0,
                    tokens_used: 0,
                    tokens_reserved: 0,
                    tenant: None,
                    last_seen: Instant::now(),
                    pool_id: None,
                    replica_id: None,
                    slot: None,
                    tick: u64::MAX,
                },
            );
        }
        self.touch(id)
    }

    fn remove(&mut self, id: SessionId) -> Option<Session> {
        let s = self.map.remove(&id)?;
        self.order.remove(&s.tick);
        Some(s)
    }
}

/// Why a turn could not reserve its session's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Fewer tokens left than the turn reserves.
    Budget { left: u64 },
    /// The session id belongs to another tenant.
    OtherTenant,
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

    /// Reserve `tokens` of the session's budget for a new turn of `tenant`, creating
    /// the session on its first turn. Atomic: concurrent turns cannot together
    /// reserve more than the budget. Refused when the session belongs to another
    /// tenant or too little budget is left.
    pub fn reserve(&self, id: SessionId, tenant: &Arc<str>, tokens: u64) -> Result<(), Refusal> {
        let budget = self.budget;
        let mut m = self.lock();
        let s = m
            .get_or_create(id, self.max)
            .ok_or(Refusal::Budget { left: 0 })?;
        match &s.tenant {
            Some(t) if **t != **tenant => return Err(Refusal::OtherTenant),
            Some(_) => {}
            None => s.tenant = Some(tenant.clone()),
        }
        if let Some(b) = budget {
            let left = b.saturating_sub(s.tokens_used + s.tokens_reserved);
            if left < tokens {
                return Err(Refusal::Budget { left });
            }
        }
        s.tokens_reserved += tokens;
        Ok(())
    }

    /// A turn ended: release its reservation and charge what it used, in one step.
    pub fn settle(&self, id: SessionId, reserved: u64, used: u64) {
        let mut m = self.lock();
        if let Some(s) = m.map.get_mut(&id) {
            s.tokens_reserved = s.tokens_reserved.saturating_sub(reserved);
            s.tokens_used += used;
        }
    }

    /// Count a new turn (creating the session on its first turn).
    /// Beyond the bound, the least recently used session is evicted.
    pub fn begin_turn(&self, id: SessionId) {
        if let Some(s) = self.lock().get_or_create(id, self.max) {
            s.turns += 1;
        }
    }

    /// Record where a finished turn left the session's KV.
    pub fn end_turn(&self, id: SessionId, home: KvHome) {
        if let Some(s) = self.lock().touch(id) {
            s.pool_id = Some(home.pool_id);
            s.replica_id = Some(home.replica_id);
            s.slot = home.slot;
        }
    }

    /// The tenant a session belongs to.
    pub fn owner(&self, id: SessionId) -> Option<Arc<str>> {
        self.lock().map.get(&id).and_then(|s| s.tenant.clone())
    }

    pub fn home(&self, id: SessionId) -> Option<KvHome> {
        let m = self.lock();
        let s = m.map.get(&id)?;
        Some(KvHome {
            pool_id: s.pool_id.clone()?,
            replica_id: s.replica_id.clone()?,
            slot: s.slot,
        })
    }

    pub fn info(&self, id: SessionId) -> Option<SessionInfo> {
        let m = self.lock();
        let s = m.map.get(&id)?;
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
    pub fn remove(&self, id: SessionId) -> Option<Option<KvHome>> {
        let s = self.lock().remove(id)?;
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
        while let Some((&tick, &id)) = m.order.first_key_value() {
            if m.map.get(&id).is_some_and(|s| s.last_seen.elapsed() < ttl) {
                break;
            }
            m.order.remove(&tick);
            m.map.remove(&id);
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

    #[test]
    fn counts_turns_tokens_and_expires() {
        let st = SessionStore::new(Duration::from_millis(50), Some(100), 10);
        let id = SessionId(uuid::Uuid::new_v4());
        let t: Arc<str> = "t".into();
        st.begin_turn(id);
        st.reserve(id, &t, 40).unwrap();
        st.settle(id, 40, 30);
        st.end_turn(
            id,
            KvHome {
                pool_id: "p".into(),
                replica_id: "r0".into(),
                slot: Some(1),
            },
        );
        st.begin_turn(id);
        let info = st.info(id).unwrap();
        assert_eq!(info.turns, 2);
        assert_eq!(info.tokens_used, 30);
        assert_eq!(info.tokens_budget_remaining, Some(70));
        assert!(info.kv_warmth);
        std::thread::sleep(Duration::from_millis(60));
        assert!(st.info(id).is_none());
        assert_eq!(st.sweep(), 1);
        assert!(st.is_empty());
    }

    #[test]
    fn reservations_are_atomic_and_owned() {
        let st = SessionStore::new(Duration::from_secs(60), Some(100), 10);
        let id = SessionId(uuid::Uuid::new_v4());
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        st.reserve(id, &a, 60).unwrap();
        assert_eq!(st.reserve(id, &a, 60), Err(Refusal::Budget { left: 40 }));
        assert_eq!(st.reserve(id, &b, 1), Err(Refusal::OtherTenant));
        st.settle(id, 60, 10);
        assert!(st.reserve(id, &a, 90).is_ok());
    }

    #[test]
    fn bounded_by_count_least_recently_used_first() {
        let st = SessionStore::new(Duration::from_secs(60), None, 3);
        let ids: Vec<SessionId> = (0..4).map(|_| SessionId(uuid::Uuid::new_v4())).collect();
        for id in &ids[..3] {
            st.begin_turn(*id);
        }
        st.begin_turn(ids[0]); // 0 is now the most recent; 1 the least
        st.begin_turn(ids[3]);
        assert_eq!(st.len(), 3);
        assert!(
            st.info(ids[1]).is_none(),
            "least recently used must go first"
        );
        for id in [ids[0], ids[2], ids[3]] {
            assert!(st.info(id).is_some());
        }
    }
}
