//! Sessions: turns, token use and budgets, the replica (and engine slot) that holds a
//! session's KV cache for affinity, TTL eviction, and a bound on how many are kept
//! (session ids are chosen by clients): past `max`, the least recently used goes.
//!
//! Owns: the session map and its recency order, behind one lock taken briefly.
//! Never: calls out (engines, pools) while holding it.

use orch_domain::{SessionId, SessionInfo};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Session {
    pub turns: u32,
    pub tokens_used: u64,
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

    fn remove(&mut self, id: SessionId) -> Option<Session> {
        let s = self.map.remove(&id)?;
        self.order.remove(&s.tick);
        Some(s)
    }
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

    /// Tokens left under the budget before this turn (None = unlimited).
    pub fn remaining(&self, id: SessionId) -> Option<u64> {
        let used = self.lock().map.get(&id).map_or(0, |s| s.tokens_used);
        self.budget.map(|b| b.saturating_sub(used))
    }

    /// Count a new turn (creating the session on its first turn).
    /// Beyond the bound, the least recently used session is evicted.
    pub fn begin_turn(&self, id: SessionId) {
        let mut m = self.lock();
        if !m.map.contains_key(&id) {
            while m.map.len() >= self.max {
                let Some((_, oldest)) = m.order.pop_first() else {
                    break;
                };
                m.map.remove(&oldest);
                tracing::debug!(session_id = %oldest, "session evicted (store full)");
            }
            m.map.insert(
                id,
                Session {
                    turns: 0,
                    tokens_used: 0,
                    last_seen: Instant::now(),
                    pool_id: None,
                    replica_id: None,
                    slot: None,
                    tick: u64::MAX,
                },
            );
        }
        if let Some(s) = m.touch(id) {
            s.turns += 1;
        }
    }

    /// Record a finished turn: tokens used and where its KV now lives.
    pub fn end_turn(&self, id: SessionId, tokens: u64, home: KvHome) {
        if let Some(s) = self.lock().touch(id) {
            s.tokens_used += tokens;
            s.pool_id = Some(home.pool_id);
            s.replica_id = Some(home.replica_id);
            s.slot = home.slot;
        }
    }

    /// Charge tokens of a turn that did not finish normally (canceled or failed):
    /// what was streamed still counts against the budget.
    pub fn charge(&self, id: SessionId, tokens: u64) {
        if let Some(s) = self.lock().touch(id) {
            s.tokens_used += tokens;
        }
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
            tokens_budget_remaining: self.budget.map(|b| b.saturating_sub(s.tokens_used)),
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
        st.begin_turn(id);
        st.end_turn(
            id,
            30,
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
