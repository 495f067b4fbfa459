//! The task table: every task the server knows, sharded by id, with bounded retention.
//!
//! Owns: the id → record map (16 shards, one small lock each), the order in which
//! tasks finished, and the count of live tasks (a `watch`, so shutdown waits without
//! polling). A finished record keeps its frames until one of the [`Retention`] bounds
//! (count, bytes) or the record TTL pushes it out, oldest first; then only a
//! [`Summary`] stays, and past its own bounds the id is forgotten. A known id (live,
//! finished or summarized) is never reused: admission gets 409 `CONFLICT`.
//! Never: holds two of its locks at once, or calls into a pool.

use crate::config::Retention;
use crate::task::{EndHook, Summary, TaskRecord};
use orch_domain::{ErrorCode, OrchError, TaskId};
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const SHARDS: usize = 16;

enum Entry {
    /// Live, or finished with its frames.
    Record(Arc<TaskRecord>),
    /// Finished; frames dropped.
    Summary(Box<Summary>),
}

/// What a lookup found.
pub enum Lookup {
    Record(Arc<TaskRecord>),
    /// The task finished and its frames are no longer retained.
    Expired(Summary),
}

#[derive(Default)]
struct Retained {
    /// Finished records still holding frames, oldest first: (record, bytes, finished).
    frames: VecDeque<(Arc<TaskRecord>, u64, Instant)>,
    frames_bytes: u64,
    /// Summarized ids, oldest first.
    summaries: VecDeque<(TaskId, Instant)>,
}

/// Counts for operators and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableStats {
    pub live: usize,
    pub finished_with_frames: usize,
    pub frames_bytes: u64,
    pub summaries: usize,
}

struct Inner {
    shards: Vec<Mutex<HashMap<TaskId, Entry>>>,
    hasher: std::collections::hash_map::RandomState,
    retained: Mutex<Retained>,
    live: watch::Sender<usize>,
    bounds: Retention,
    record_ttl: Duration,
    /// What the console shows of ended tasks.
    recent: crate::recent::Recent,
}

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct TaskTable {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    fn shard(&self, id: &TaskId) -> MutexGuard<'_, HashMap<TaskId, Entry>> {
        lock(&self.shards[(self.hasher.hash_one(id) as usize) % SHARDS])
    }

    /// One task more is live: a count going up wakes no one (see [`Self::count_out`]).
    fn count_in(&self) {
        self.live.send_if_modified(|n| {
            *n += 1;
            false
        });
    }

    /// One task fewer is live. Waiters are woken only when none is left: `wait_idle`
    /// waits for zero, and waking every waiter on each task's end cost a wake-all per
    /// task on the admission path. [`TaskTable::live`] reads the count either way.
    fn count_out(&self) {
        self.live.send_if_modified(|n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }

    /// A task ended: count it out and retain its frames, within bounds.
    fn ended(&self, rec: &Arc<TaskRecord>) {
        self.count_out();
        self.recent.ended(rec);
        let bytes = rec.log.bytes();
        let mut victims = Vec::new();
        {
            let mut r = lock(&self.retained);
            r.frames.push_back((rec.clone(), bytes, Instant::now()));
            r.frames_bytes += bytes;
            while r.frames.len() > self.bounds.max_frames_records
                || r.frames_bytes > self.bounds.max_frames_bytes
            {
                let Some((v, b, _)) = r.frames.pop_front() else {
                    break;
                };
                r.frames_bytes -= b;
                victims.push(v);
            }
        }
        for v in victims {
            self.summarize(&v);
        }
    }

    /// Drop a finished record's frames, keeping its summary.
    fn summarize(&self, rec: &Arc<TaskRecord>) {
        let summary = rec.summary();
        {
            let mut shard = self.shard(&rec.id);
            match shard.get(&rec.id) {
                Some(Entry::Record(r)) if Arc::ptr_eq(r, rec) => {}
                _ => return,
            }
            shard.insert(rec.id, Entry::Summary(Box::new(summary)));
        }
        let mut gone = Vec::new();
        {
            let mut r = lock(&self.retained);
            r.summaries.push_back((rec.id, Instant::now()));
            while r.summaries.len() > self.bounds.max_summaries {
                if let Some((id, _)) = r.summaries.pop_front() {
                    gone.push(id);
                }
            }
        }
        for id in gone {
            self.forget(id);
        }
    }

    fn forget(&self, id: TaskId) {
        let mut shard = self.shard(&id);
        if matches!(shard.get(&id), Some(Entry::Summary(_))) {
            shard.remove(&id);
        }
    }
}

impl TaskTable {
    pub fn new(bounds: Retention, record_ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                hasher: Default::default(),
                retained: Mutex::new(Retained::default()),
                live: watch::Sender::new(0),
                bounds,
                record_ttl,
                recent: crate::recent::Recent::default(),
            }),
        }
    }

    /// What the console shows of ended tasks and the last minutes.
    pub(crate) fn recent(&self) -> &crate::recent::Recent {
        &self.inner.recent
    }

    /// The hook records call when they end.
    pub fn end_hook(&self) -> EndHook {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        Arc::new(move |rec: &Arc<TaskRecord>| {
            if let Some(inner) = weak.upgrade() {
                inner.ended(rec);
            }
        })
    }

    /// Register a new task; 409 when the id is known (live, finished or summarized).
    pub fn insert(&self, rec: Arc<TaskRecord>) -> Result<(), OrchError> {
        {
            let mut shard = self.inner.shard(&rec.id);
            if shard.contains_key(&rec.id) {
                return Err(OrchError::new(
                    ErrorCode::Conflict,
                    format!("task {} already exists; task ids are never reused", rec.id),
                ));
            }
            shard.insert(rec.id, Entry::Record(rec));
        }
        self.inner.count_in();
        Ok(())
    }

    /// Take back a task that admission refused after registering it.
    pub fn remove_unadmitted(&self, rec: &Arc<TaskRecord>) {
        let removed = {
            let mut shard = self.inner.shard(&rec.id);
            match shard.get(&rec.id) {
                Some(Entry::Record(r)) if Arc::ptr_eq(r, rec) => shard.remove(&rec.id).is_some(),
                _ => false,
            }
        };
        if removed {
            self.inner.count_out();
        }
    }

    pub fn get(&self, id: TaskId) -> Option<Lookup> {
        match self.inner.shard(&id).get(&id)? {
            Entry::Record(r) => Some(Lookup::Record(r.clone())),
            Entry::Summary(s) => Some(Lookup::Expired((**s).clone())),
        }
    }

    /// The record of a task whose frames are retained.
    pub fn record(&self, id: TaskId) -> Result<Arc<TaskRecord>, OrchError> {
        match self.get(id) {
            Some(Lookup::Record(r)) => Ok(r),
            Some(Lookup::Expired(_)) => Err(expired(id)),
            None => Err(OrchError::not_found("task", id)),
        }
    }

    /// Tasks admitted and not yet ended.
    pub fn live(&self) -> usize {
        *self.inner.live.borrow()
    }

    /// Wait until no task is live, up to `limit`; returns whether that happened.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let mut rx = self.inner.live.subscribe();
        let ok = matches!(
            tokio::time::timeout(limit, rx.wait_for(|n| *n == 0)).await,
            Ok(Ok(_))
        );
        ok
    }

    /// Records of live tasks (a full scan: for shutdown and operators, not hot paths).
    pub fn live_records(&self) -> Vec<Arc<TaskRecord>> {
        let mut out = Vec::new();
        for s in &self.inner.shards {
            // collect under the shard lock, look at each record after releasing it
            let recs: Vec<_> = lock(s)
                .values()
                .filter_map(|e| match e {
                    Entry::Record(r) => Some(r.clone()),
                    Entry::Summary(_) => None,
                })
                .collect();
            out.extend(recs.into_iter().filter(|r| !r.is_ended()));
        }
        out
    }

    /// Apply the TTLs: frames older than the record TTL go (summary stays), summaries
    /// older than theirs go. Visits only what expires (both queues are in finish order).
    pub fn sweep(&self) {
        let now = Instant::now();
        let (mut old_frames, mut old_summaries) = (Vec::new(), Vec::new());
        {
            let mut r = lock(&self.inner.retained);
            while r
                .frames
                .front()
                .is_some_and(|(_, _, t)| now.duration_since(*t) >= self.inner.record_ttl)
            {
                if let Some((rec, b, _)) = r.frames.pop_front() {
                    r.frames_bytes -= b;
                    old_frames.push(rec);
                }
            }
            let ttl = self.inner.bounds.summary_ttl;
            while r
                .summaries
                .front()
                .is_some_and(|(_, t)| now.duration_since(*t) >= ttl)
            {
                if let Some((id, _)) = r.summaries.pop_front() {
                    old_summaries.push(id);
                }
            }
        }
        for rec in old_frames {
            self.inner.summarize(&rec);
        }
        for id in old_summaries {
            self.inner.forget(id);
        }
    }

    pub fn stats(&self) -> TableStats {
        let r = lock(&self.inner.retained);
        TableStats {
            live: self.live(),
            finished_with_frames: r.frames.len(),
            frames_bytes: r.frames_bytes,
            summaries: r.summaries.len(),
        }
    }
}

/// 404 for a task whose frames are gone.
pub fn expired(id: TaskId) -> OrchError {
    OrchError::new(
        ErrorCode::NotFound,
        format!(
            "task {id} expired: it finished and its frames are no longer retained (its summary is at GET /v1/tasks/{id})"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Ending;
    use crate::task::Admission;
    use orch_domain::Priority;

    fn live_record(table: &TaskTable) -> Arc<TaskRecord> {
        let rec = Arc::new(TaskRecord::new(
            Admission {
                id: TaskId::new_random(),
                tenant: "t".into(),
                priority: Priority::Interactive,
                pool_id: "p".into(),
                session: None,
                correlation_id: "c".into(),
                engine: ("mock".into(), "mock-0".into()),
                waited: Duration::ZERO,
            },
            None,
            Some(table.end_hook()),
        ));
        assert!(table.insert(rec.clone()).is_ok());
        rec
    }

    #[tokio::test]
    async fn waiting_for_idle_ends_when_the_last_live_task_ends_and_not_before() {
        let table = TaskTable::new(Retention::default(), Duration::from_secs(60));
        let (a, b) = (live_record(&table), live_record(&table));
        assert_eq!(table.live(), 2);
        let waiter = tokio::spawn({
            let t = table.clone();
            async move { t.wait_idle(Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(a.end(Ending::Failed(OrchError::internal("first"))));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(table.live(), 1);
        assert!(!waiter.is_finished(), "a task is still live");
        assert!(b.end(Ending::Failed(OrchError::internal("last"))));
        let idle = tokio::time::timeout(Duration::from_secs(2), waiter).await;
        assert!(matches!(idle, Ok(Ok(true))), "woken when none was left");
        assert_eq!(table.live(), 0);
        // already idle: answered at once
        assert!(table.wait_idle(Duration::from_millis(1)).await);
    }
}
