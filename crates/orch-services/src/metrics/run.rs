//! The handles a task's run records into, registered once per place (engine, engine
//! version, pool, replica) and reused by every task that runs there: a run records a
//! dozen series, and building each one's labels and finding it in the registry per
//! task cost more than the rest of the bookkeeping. The cache is process-wide (the
//! recorder is too) and forgets everything when it grows past [`MAX_PLACES`] (replica
//! ids churn only with reconfiguration), or when a recorder is installed ([`forget`]:
//! a handle taken before that records nowhere).

use super::{
    Where, ADDED_LATENCY, DISPATCH_LATENCY, LATENCY_DECODE, LATENCY_FIRST_TOKEN,
    LATENCY_FIRST_TOKEN_DISPATCH, QUEUE_WAIT, TASKS_ENQUEUED, TASKS_STARTED, TOKENS_CACHED,
    TOKENS_IN, TOKENS_OUT,
};
use metrics::{counter, histogram, Counter, Histogram};
use orch_domain::Priority;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock, RwLock};

/// Places remembered before the cache starts over.
const MAX_PLACES: usize = 4096;

/// One place's run-path series, each registered when first recorded (so `/metrics`
/// shows a series once something happened in it, as without the cache).
#[derive(Default)]
pub(crate) struct Handles {
    enqueued: [OnceLock<Counter>; 2],
    started: [OnceLock<Counter>; 2],
    queue_wait: [OnceLock<Histogram>; 2],
    first_token: [OnceLock<Histogram>; 2],
    first_token_dispatch: [OnceLock<Histogram>; 2],
    decode: [OnceLock<Histogram>; 2],
    tokens_in: OnceLock<Counter>,
    tokens_cached: OnceLock<Counter>,
    tokens_out: OnceLock<Counter>,
    dispatch: OnceLock<Histogram>,
    added_latency: OnceLock<Histogram>,
}

fn index(p: Priority) -> usize {
    match p {
        Priority::Interactive => 0,
        Priority::Batch => 1,
    }
}

fn counted(name: &'static str, w: &Where, p: Priority) -> Counter {
    let mut l = w.base().to_vec();
    l.push(("priority", p.as_str().to_string()));
    counter!(name, &l)
}

impl Handles {
    pub(crate) fn enqueued(&self, w: &Where, p: Priority) -> &Counter {
        self.enqueued[index(p)].get_or_init(|| counted(TASKS_ENQUEUED, w, p))
    }
    pub(crate) fn started(&self, w: &Where, p: Priority) -> &Counter {
        self.started[index(p)].get_or_init(|| counted(TASKS_STARTED, w, p))
    }
    pub(crate) fn queue_wait(&self, w: &Where, p: Priority) -> &Histogram {
        self.queue_wait[index(p)].get_or_init(|| histogram!(QUEUE_WAIT, &w.per_pool(p.as_str())))
    }
    pub(crate) fn first_token(&self, w: &Where, p: Priority) -> &Histogram {
        self.first_token[index(p)]
            .get_or_init(|| histogram!(LATENCY_FIRST_TOKEN, &w.per_pool(p.as_str())))
    }
    pub(crate) fn first_token_dispatch(&self, w: &Where, p: Priority) -> &Histogram {
        self.first_token_dispatch[index(p)]
            .get_or_init(|| histogram!(LATENCY_FIRST_TOKEN_DISPATCH, &w.per_pool(p.as_str())))
    }
    pub(crate) fn decode(&self, w: &Where, p: Priority) -> &Histogram {
        self.decode[index(p)].get_or_init(|| histogram!(LATENCY_DECODE, &w.per_pool(p.as_str())))
    }
    pub(crate) fn tokens_in(&self, w: &Where) -> &Counter {
        self.tokens_in
            .get_or_init(|| counter!(TOKENS_IN, &w.base()))
    }
    pub(crate) fn tokens_cached(&self, w: &Where) -> &Counter {
        self.tokens_cached
            .get_or_init(|| counter!(TOKENS_CACHED, &w.base()))
    }
    pub(crate) fn tokens_out(&self, w: &Where) -> &Counter {
        self.tokens_out
            .get_or_init(|| counter!(TOKENS_OUT, &w.base()))
    }
    pub(crate) fn dispatch(&self, w: &Where) -> &Histogram {
        self.dispatch.get_or_init(|| {
            histogram!(DISPATCH_LATENCY, "engine" => w.engine.clone(), "pool_id" => w.pool_id.clone())
        })
    }
    pub(crate) fn added_latency(&self, w: &Where) -> &Histogram {
        self.added_latency.get_or_init(|| {
            histogram!(ADDED_LATENCY, "engine" => w.engine.clone(), "pool_id" => w.pool_id.clone())
        })
    }
}

impl std::fmt::Debug for Handles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handles")
    }
}

type Place = (String, String, String, String);
type Cache = RwLock<HashMap<u64, Vec<(Place, Arc<Handles>)>>>;

fn cache() -> &'static (std::hash::RandomState, Cache) {
    static CACHE: OnceLock<(std::hash::RandomState, Cache)> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn same(p: &Place, w: &Where) -> bool {
    p.0 == w.engine && p.1 == w.engine_version && p.2 == w.pool_id && p.3 == w.replica_id
}

/// The handles of `w`'s place, registered on first use.
pub(crate) fn handles(w: &Where) -> Arc<Handles> {
    let (seed, cache) = cache();
    let key = seed.hash_one((&w.engine, &w.engine_version, &w.pool_id, &w.replica_id));
    let found = |m: &HashMap<u64, Vec<(Place, Arc<Handles>)>>| {
        m.get(&key)
            .and_then(|v| v.iter().find(|(p, _)| same(p, w)))
            .map(|(_, h)| h.clone())
    };
    if let Some(h) = cache.read().ok().as_deref().and_then(found) {
        return h;
    }
    let made = Arc::new(Handles::default());
    if let Ok(mut m) = cache.write() {
        if let Some(h) = found(&m) {
            return h;
        }
        if m.len() >= MAX_PLACES {
            m.clear();
        }
        let place = (
            w.engine.clone(),
            w.engine_version.clone(),
            w.pool_id.clone(),
            w.replica_id.clone(),
        );
        m.entry(key).or_default().push((place, made.clone()));
    }
    made
}

/// Forget every cached handle: a recorder installed after some task ran gets its own.
pub fn forget() {
    if let Ok(mut m) = cache().1.write() {
        m.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(replica: &str) -> Where {
        Where::new("mock", "1", "p", replica)
    }

    #[test]
    fn one_place_gets_the_same_handles_and_another_its_own() {
        let a = handles(&at("run-cache-r0"));
        assert!(Arc::ptr_eq(&a, &handles(&at("run-cache-r0"))));
        assert!(!Arc::ptr_eq(&a, &handles(&at("run-cache-r1"))));
        let mut other_version = at("run-cache-r0");
        other_version.engine_version = "2".into();
        assert!(!Arc::ptr_eq(&a, &handles(&other_version)));
    }
}
