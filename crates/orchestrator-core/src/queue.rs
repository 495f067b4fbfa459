//! A bounded queue with one FIFO lane per priority.
//!
//! * Enqueue and dequeue are O(1) amortized: lanes are `VecDeque`s, cancellation marks
//!   the entry dead in an index map and dead entries are skipped (and compacted) later.
//! * Dequeue prefers `interactive` but serves one `batch` task after every
//!   `interactive_weight` interactive ones while both lanes wait, so batch never starves.
//! * When full, the configured [`FullPolicy`] decides: refuse, evict the oldest batch
//!   task (`drop-lru`), or let an interactive arrival shed the newest batch task.

use orch_domain::{FullPolicy, Priority};
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    pub capacity: usize,
    pub policy: FullPolicy,
    /// Interactive dequeues allowed in a row while batch work waits (≥ 1).
    pub interactive_weight: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            capacity: 64,
            policy: FullPolicy::Reject,
            interactive_weight: 3,
        }
    }
}

/// The queue was full and the policy refused the new task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("queue full (capacity {capacity}, policy {policy:?})")]
pub struct QueueFull {
    pub capacity: usize,
    pub policy: FullPolicy,
}

/// A successful enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted<K> {
    /// Live tasks that will be dequeued before this one (estimate under rotation).
    pub ahead: usize,
    /// A task evicted to make room (its stream must end with an error).
    pub evicted: Option<K>,
}

#[derive(Debug, Clone, Copy)]
struct Slot<K> {
    key: K,
    seq: u64,
}

const LANES: usize = 2;

fn lane(p: Priority) -> usize {
    match p {
        Priority::Interactive => 0,
        Priority::Batch => 1,
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct BoundedQueue<K> {
    cfg: QueueConfig,
    lanes: [VecDeque<Slot<K>>; LANES],
    live: HashMap<K, (usize, u64)>,
    counts: [usize; LANES],
    next_seq: u64,
    streak: u32,
}

impl<K: Copy + Eq + Hash> BoundedQueue<K> {
    pub fn new(cfg: QueueConfig) -> Self {
        Self {
            cfg: QueueConfig {
                interactive_weight: cfg.interactive_weight.max(1),
                ..cfg
            },
            lanes: [VecDeque::new(), VecDeque::new()],
            live: HashMap::new(),
            counts: [0; LANES],
            next_seq: 0,
            streak: 0,
        }
    }

    pub fn config(&self) -> QueueConfig {
        self.cfg
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    pub fn len_of(&self, p: Priority) -> usize {
        self.counts[lane(p)]
    }

    pub fn contains(&self, key: &K) -> bool {
        self.live.contains_key(key)
    }

    /// Insert at the back of its lane, applying the full-policy when at capacity.
    /// A key that is already queued is refused as a duplicate by returning it evicted
    /// is impossible: callers must check [`contains`](Self::contains) first.
    pub fn enqueue(&mut self, key: K, priority: Priority) -> Result<Admitted<K>, QueueFull> {
        let mut evicted = None;
        if self.live.len() >= self.cfg.capacity {
            let victim = match self.cfg.policy {
                FullPolicy::Reject => None,
                FullPolicy::DropLru => self.front_live(lane(Priority::Batch)),
                FullPolicy::ShedLowPriority if priority == Priority::Interactive => {
                    self.back_live(lane(Priority::Batch))
                }
                FullPolicy::ShedLowPriority => None,
            };
            match victim {
                Some(v) if self.cfg.capacity > 0 => {
                    self.cancel(&v);
                    evicted = Some(v);
                }
                _ => {
                    return Err(QueueFull {
                        capacity: self.cfg.capacity,
                        policy: self.cfg.policy,
                    })
                }
            }
        }
        let l = lane(priority);
        let seq = self.next_seq;
        self.next_seq += 1;
        let ahead = self.ahead_estimate(l, self.counts[l]);
        self.lanes[l].push_back(Slot { key, seq });
        self.live.insert(key, (l, seq));
        self.counts[l] += 1;
        Ok(Admitted { ahead, evicted })
    }

    /// Tasks that would be ahead of a new arrival of `priority` (no insertion).
    pub fn ahead_if_enqueued(&self, priority: Priority) -> usize {
        let l = lane(priority);
        self.ahead_estimate(l, self.counts[l])
    }

    /// Remove a queued task. Returns false when it was not queued.
    pub fn cancel(&mut self, key: &K) -> bool {
        match self.live.remove(key) {
            Some((l, _)) => {
                self.counts[l] -= 1;
                self.compact(l);
                true
            }
            None => false,
        }
    }

    /// Take the next task under the weighted rotation.
    pub fn dequeue(&mut self) -> Option<(K, Priority)> {
        let (i, b) = (lane(Priority::Interactive), lane(Priority::Batch));
        let pick = match (self.counts[i] > 0, self.counts[b] > 0) {
            (false, false) => return None,
            (true, false) => i,
            (false, true) => b,
            (true, true) if self.streak < self.cfg.interactive_weight => i,
            (true, true) => b,
        };
        let key = self.pop_live(pick)?;
        if pick == i && self.counts[b] > 0 {
            self.streak += 1;
        } else {
            self.streak = 0;
        }
        let p = if pick == i {
            Priority::Interactive
        } else {
            Priority::Batch
        };
        Some((key, p))
    }

    /// Number of live tasks that will be dequeued before `key` (estimate under rotation).
    /// O(lane length); used for status queries, not on the hot path.
    pub fn ahead_of(&self, key: &K) -> Option<usize> {
        let (l, seq) = *self.live.get(key)?;
        let same = self.lanes[l]
            .iter()
            .filter(|s| s.seq < seq && self.is_live(s))
            .count();
        Some(self.ahead_estimate(l, same))
    }

    /// Live keys in dequeue-lane order (interactive lane first), for inspection.
    pub fn keys(&self) -> Vec<(K, Priority)> {
        let mut out = Vec::with_capacity(self.live.len());
        for (l, p) in [(0, Priority::Interactive), (1, Priority::Batch)] {
            out.extend(
                self.lanes[l]
                    .iter()
                    .filter(|s| self.is_live(s))
                    .map(|s| (s.key, p)),
            );
        }
        out
    }

    /// Tasks ahead of the `same_ahead`-th task of lane `l`, counting the other lane's
    /// share under the weighted rotation.
    fn ahead_estimate(&self, l: usize, same_ahead: usize) -> usize {
        let w = self.cfg.interactive_weight as usize;
        let other = self.counts[1 - l];
        let other_share = if l == 0 {
            // one batch task per `w` interactive ones
            (same_ahead / w).min(other)
        } else {
            // `w` interactive tasks before each batch task
            ((same_ahead + 1) * w).min(other)
        };
        same_ahead + other_share
    }

    fn is_live(&self, s: &Slot<K>) -> bool {
        matches!(self.live.get(&s.key), Some(&(_, seq)) if seq == s.seq)
    }

    fn pop_live(&mut self, l: usize) -> Option<K> {
        while let Some(s) = self.lanes[l].pop_front() {
            if self.is_live(&s) {
                self.live.remove(&s.key);
                self.counts[l] -= 1;
                return Some(s.key);
            }
        }
        None
    }

    fn front_live(&self, l: usize) -> Option<K> {
        self.lanes[l]
            .iter()
            .find(|s| self.is_live(s))
            .map(|s| s.key)
    }

    fn back_live(&self, l: usize) -> Option<K> {
        self.lanes[l]
            .iter()
            .rev()
            .find(|s| self.is_live(s))
            .map(|s| s.key)
    }

    /// Drop dead entries once they outnumber live ones (keeps memory O(live)).
    fn compact(&mut self, l: usize) {
        if self.lanes[l].len() > 2 * self.counts[l] + 32 {
            let live = &self.live;
            self.lanes[l].retain(|s| matches!(live.get(&s.key), Some(&(_, seq)) if seq == s.seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(capacity: usize, policy: FullPolicy) -> BoundedQueue<u32> {
        BoundedQueue::new(QueueConfig {
            capacity,
            policy,
            interactive_weight: 2,
        })
    }

    #[test]
    fn reject_policy_refuses_when_full() {
        let mut q = q(2, FullPolicy::Reject);
        q.enqueue(1, Priority::Batch).unwrap();
        q.enqueue(2, Priority::Interactive).unwrap();
        assert!(q.enqueue(3, Priority::Interactive).is_err());
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn drop_lru_evicts_oldest_batch() {
        let mut q = q(3, FullPolicy::DropLru);
        q.enqueue(1, Priority::Interactive).unwrap();
        q.enqueue(2, Priority::Batch).unwrap();
        q.enqueue(3, Priority::Batch).unwrap();
        let a = q.enqueue(4, Priority::Interactive).unwrap();
        assert_eq!(a.evicted, Some(2));
        assert!(!q.contains(&2));
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn drop_lru_with_no_batch_task_rejects() {
        let mut q = q(1, FullPolicy::DropLru);
        q.enqueue(1, Priority::Interactive).unwrap();
        assert!(q.enqueue(2, Priority::Batch).is_err());
    }

    #[test]
    fn shed_low_priority_sheds_newest_batch_for_interactive_only() {
        let mut q = q(2, FullPolicy::ShedLowPriority);
        q.enqueue(1, Priority::Batch).unwrap();
        q.enqueue(2, Priority::Batch).unwrap();
        assert!(q.enqueue(3, Priority::Batch).is_err());
        let a = q.enqueue(4, Priority::Interactive).unwrap();
        assert_eq!(a.evicted, Some(2));
    }

    #[test]
    fn weighted_rotation_serves_batch_between_interactive_runs() {
        let mut q = q(16, FullPolicy::Reject);
        for k in 0..6 {
            q.enqueue(k, Priority::Interactive).unwrap();
        }
        q.enqueue(100, Priority::Batch).unwrap();
        q.enqueue(101, Priority::Batch).unwrap();
        let order: Vec<u32> = std::iter::from_fn(|| q.dequeue().map(|(k, _)| k)).collect();
        assert_eq!(order, vec![0, 1, 100, 2, 3, 101, 4, 5]);
    }

    #[test]
    fn ahead_estimate_matches_rotation_for_fresh_arrivals() {
        let mut q = q(16, FullPolicy::Reject);
        for k in 0..4 {
            q.enqueue(k, Priority::Interactive).unwrap();
        }
        let b = q.enqueue(100, Priority::Batch).unwrap();
        // w = 2: two interactive run before the first batch task
        assert_eq!(b.ahead, 2);
        let i = q.enqueue(5, Priority::Interactive).unwrap();
        // 4 interactive ahead, plus the batch task served after the first two
        assert_eq!(i.ahead, 5);
    }
}
