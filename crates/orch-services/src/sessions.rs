//! Sessions: turns, token use and budgets, the replica (and engine slot) that holds a
//! session's KV cache for affinity, and TTL eviction.

use orch_domain::{SessionId, SessionInfo};
use std::collections::HashMap;
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
}

/// Where a session's KV lives, for affinity and eviction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvHome {
    pub pool_id: String,
    pub replica_id: String,
    pub slot: Option<u32>,
}

pub struct SessionStore {
    map: Mutex<HashMap<SessionId, Session>>,
    ttl: Duration,
    budget: Option<u64>,
}

impl SessionStore {
    pub fn new(ttl: Duration, budget: Option<u64>) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            ttl,
            budget,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tokens left under the budget before this turn (None = unlimited).
    pub fn remaining(&self, id: SessionId) -> Option<u64> {
        let used = self.lock().get(&id).map_or(0, |s| s.tokens_used);
        self.budget.map(|b| b.saturating_sub(used))
    }

    /// Count a new turn (creating the session on its first turn).
    pub fn begin_turn(&self, id: SessionId) {
        let mut m = self.lock();
        let s = m.entry(id).or_insert_with(|| Session {
            turns: 0,
            tokens_used: 0,
            last_seen: Instant::now(),
            pool_id: None,
            replica_id: None,
            slot: None,
        });
        s.turns += 1;
        s.last_seen = Instant::now();
    }

    /// Record a finished turn: tokens used and where its KV now lives.
    pub fn end_turn(&self, id: SessionId, tokens: u64, home: KvHome) {
        if let Some(s) = self.lock().get_mut(&id) {
            s.tokens_used += tokens;
            s.last_seen = Instant::now();
            s.pool_id = Some(home.pool_id);
            s.replica_id = Some(home.replica_id);
            s.slot = home.slot;
        }
    }

    /// Charge tokens of a turn that did not finish normally (canceled or failed):
    /// what was streamed still counts against the budget.
    pub fn charge(&self, id: SessionId, tokens: u64) {
        if let Some(s) = self.lock().get_mut(&id) {
            s.tokens_used += tokens;
            s.last_seen = Instant::now();
        }
    }

    pub fn home(&self, id: SessionId) -> Option<KvHome> {
        let m = self.lock();
        let s = m.get(&id)?;
        Some(KvHome {
            pool_id: s.pool_id.clone()?,
            replica_id: s.replica_id.clone()?,
            slot: s.slot,
        })
    }

    pub fn info(&self, id: SessionId) -> Option<SessionInfo> {
        let m = self.lock();
        let s = m.get(&id)?;
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
        let s = self.lock().remove(&id)?;
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
        let before = m.len();
        m.retain(|_, s| s.last_seen.elapsed() < ttl);
        before - m.len()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
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
        let st = SessionStore::new(Duration::from_millis(50), Some(100));
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
}
