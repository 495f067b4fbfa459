//! A bounded queue with one lane per priority class and fair sharing inside each lane.
//!
//! * Classes: dequeue prefers `interactive` but serves one `batch` task after every
//!   `interactive_weight` interactive ones while both lanes wait, so batch never starves.
//! * Inside a lane, tasks belong to flows (tenants) with weights; the lane serves the
//!   flow whose head has the smallest start tag ([`crate::fair`]): weighted start-time
//!   fair queuing, or arrival order when fairness is off. A task is charged its
//!   declared cost when it arrives and corrected by what it used when it ends
//!   ([`BoundedQueue::settle`]).
//!   Within one flow, order is always FIFO.
//! * Aging: a task that has waited `aging_ms` is served next in its lane, whatever its
//!   flow's share (a bound on waiting under any weights).
//! * When full, the configured [`FullPolicy`] decides: refuse, evict the oldest batch
//!   task (`drop-lru`), or let an interactive arrival shed the newest batch task.
//! * Enqueue and dequeue are O(log flows) amortized: cancellation marks an entry dead
//!   in the live index, and dead entries are skipped and compacted later.

use crate::fair::{ArrivalOrder, StartTimeFair, TagInput, TagPolicy, Tags};
use orch_domain::{FullPolicy, Priority};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::Hash;

/// How a lane shares service among flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fairness {
    /// Weighted start-time fair queuing (cost charged up front, settled on use).
    #[default]
    Weighted,
    /// First come, first served across flows.
    Fifo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    pub capacity: usize,
    pub policy: FullPolicy,
    /// Interactive dequeues allowed in a row while batch work waits (≥ 1).
    pub interactive_weight: u32,
    pub fairness: Fairness,
    /// A task waiting this long is served next in its lane (0 = no aging).
    pub aging_ms: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            capacity: 64,
            policy: FullPolicy::Reject,
            interactive_weight: 3,
            fairness: Fairness::Weighted,
            aging_ms: 60_000,
        }
    }
}

/// The flow (tenant) a task belongs to, its weight and its expected cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub id: u32,
    /// ≥ 1; a flow's share of its lane is proportional to it.
    pub weight: u32,
    /// Expected tokens, ≥ 1.
    pub cost: u64,
}

impl Default for Flow {
    fn default() -> Self {
        Self {
            id: 0,
            weight: 1,
            cost: 1,
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
    /// The task's arrival number, for [`BoundedQueue::settle`].
    pub seq: u64,
}

const LANES: usize = 2;

fn lane(p: Priority) -> usize {
    match p {
        Priority::Interactive => 0,
        Priority::Batch => 1,
    }
}

fn priority_of(l: usize) -> Priority {
    if l == 0 {
        Priority::Interactive
    } else {
        Priority::Batch
    }
}

/// Where a live task is.
#[derive(Debug, Clone, Copy)]
struct Live {
    lane: usize,
    seq: u64,
    flow: u32,
    /// Its flow's weight and its cost as pushed (for re-tagging on a policy change).
    weight: u32,
    cost: u64,
    at_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry<K> {
    key: K,
    seq: u64,
    start: u64,
    /// No correction takes its start below this: the lane's virtual time when it
    /// arrived, if its flow had nothing queued then (else 0).
    floor: u64,
}

#[derive(Debug)]
struct FlowQ<K> {
    q: VecDeque<Entry<K>>,
    last_finish: u64,
    /// The key of this flow's one current entry in `heads` (others are stale).
    heap_key: Option<(u64, u64)>,
}

#[derive(Debug)]
struct Lane<K> {
    /// Arrival order: (key, seq, arrival time) for aging and eviction.
    fifo: VecDeque<(K, u64, u64)>,
    flows: HashMap<u32, FlowQ<K>>,
    /// One entry per non-empty flow: (start tag of its head, head seq, flow).
    heads: BinaryHeap<Reverse<(u64, u64, u32)>>,
    vtime: u64,
    arrivals: u64,
    /// Entries held in flow deques, dead or alive.
    entries: usize,
}

impl<K> Lane<K> {
    fn new() -> Self {
        Self {
            fifo: VecDeque::new(),
            flows: HashMap::new(),
            heads: BinaryHeap::new(),
            vtime: 0,
            arrivals: 0,
            entries: 0,
        }
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct BoundedQueue<K> {
    cfg: QueueConfig,
    lanes: [Lane<K>; LANES],
    live: HashMap<K, Live>,
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
            lanes: [Lane::new(), Lane::new()],
            live: HashMap::new(),
            counts: [0; LANES],
            next_seq: 0,
            streak: 0,
        }
    }

    pub fn config(&self) -> QueueConfig {
        self.cfg
    }

    /// Apply new settings to a live queue. Capacity, full-policy, class weight and
    /// aging apply from the next operation (a smaller capacity evicts nothing: it
    /// refuses arrivals until the queue is below it). A change of fairness re-tags every
    /// queued task under the new policy in arrival order, so order stays consistent.
    pub fn set_config(&mut self, cfg: QueueConfig) {
        let fairness_changed = cfg.fairness != self.cfg.fairness;
        self.cfg = QueueConfig {
            interactive_weight: cfg.interactive_weight.max(1),
            ..cfg
        };
        if !fairness_changed {
            return;
        }
        let mut live: Vec<(K, Live)> = self.live.drain().collect();
        live.sort_by_key(|(_, at)| at.seq);
        self.lanes = [Lane::new(), Lane::new()];
        self.counts = [0; LANES];
        for (key, at) in live {
            let flow = Flow {
                id: at.flow,
                weight: at.weight,
                cost: at.cost,
            };
            // capacity cannot refuse these: they were all queued already
            self.insert(key, at.lane, flow, at.at_ms);
        }
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

    /// [`push`](Self::push) in the default flow (plain FIFO per lane).
    pub fn enqueue(&mut self, key: K, priority: Priority) -> Result<Admitted<K>, QueueFull> {
        self.push(key, priority, Flow::default(), 0)
    }

    /// Insert a task of `flow` arriving at `now_ms`, applying the full-policy when at
    /// capacity. Callers must check [`contains`](Self::contains) first: a key already
    /// queued must not be pushed again.
    pub fn push(
        &mut self,
        key: K,
        priority: Priority,
        flow: Flow,
        now_ms: u64,
    ) -> Result<Admitted<K>, QueueFull> {
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
        let seq = self.next_seq;
        let ahead = self.insert(key, lane(priority), flow, now_ms);
        Ok(Admitted {
            ahead,
            evicted,
            seq,
        })
    }

    /// Tag and file a task in lane `l` (no capacity check); the tasks ahead of it.
    fn insert(&mut self, key: K, l: usize, flow: Flow, now_ms: u64) -> usize {
        let seq = self.next_seq;
        self.next_seq += 1;
        let tags = self.tags(l, flow);
        let ahead = self.ahead_estimate(l, self.same_lane_ahead(l, tags.start, seq));
        let ln = &mut self.lanes[l];
        let vtime = ln.vtime;
        ln.arrivals += 1;
        ln.entries += 1;
        ln.fifo.push_back((key, seq, now_ms));
        let fq = ln.flows.entry(flow.id).or_insert_with(|| FlowQ {
            q: VecDeque::new(),
            last_finish: 0,
            heap_key: None,
        });
        fq.last_finish = tags.finish;
        // a task that arrives while its flow has nothing queued (the flow is not
        // backlogged) earns no credit below the virtual time of its arrival; one that
        // joins a backlog does (the backlog was held back by what its flow was charged)
        let floor = if fq.heap_key.is_none() { vtime } else { 0 };
        fq.q.push_back(Entry {
            key,
            seq,
            start: tags.start,
            floor,
        });
        if fq.heap_key.is_none() {
            fq.heap_key = Some((tags.start, seq));
            ln.heads.push(Reverse((tags.start, seq, flow.id)));
        }
        self.live.insert(
            key,
            Live {
                lane: l,
                seq,
                flow: flow.id,
                weight: flow.weight,
                cost: flow.cost,
                at_ms: now_ms,
            },
        );
        self.counts[l] += 1;
        ahead
    }

    fn tags(&self, l: usize, flow: Flow) -> Tags {
        let ln = &self.lanes[l];
        let input = TagInput {
            vtime: ln.vtime,
            last_finish: ln.flows.get(&flow.id).map_or(0, |f| f.last_finish),
            arrival: ln.arrivals,
            cost: flow.cost,
            weight: flow.weight,
        };
        match self.cfg.fairness {
            Fairness::Weighted => StartTimeFair.tag(input),
            Fairness::Fifo => ArrivalOrder.tag(input),
        }
    }

    /// Tasks that would be ahead of a new arrival of `priority` (no insertion).
    pub fn ahead_if_enqueued(&self, priority: Priority) -> usize {
        self.ahead_if_pushed(priority, Flow::default())
    }

    /// Tasks that would be ahead of a new arrival of `priority` in `flow`.
    pub fn ahead_if_pushed(&self, priority: Priority, flow: Flow) -> usize {
        let l = lane(priority);
        let tags = self.tags(l, flow);
        self.ahead_estimate(l, self.same_lane_ahead(l, tags.start, self.next_seq))
    }

    /// Remove a queued task. Returns false when it was not queued.
    pub fn cancel(&mut self, key: &K) -> bool {
        match self.live.remove(key) {
            Some(at) => {
                self.counts[at.lane] -= 1;
                self.compact(at.lane);
                true
            }
            None => false,
        }
    }

    /// Take the next task (weighted rotation across classes, fair share inside).
    pub fn dequeue(&mut self) -> Option<(K, Priority)> {
        self.pop(0)
    }

    /// Take the next task at `now_ms` (which drives aging).
    pub fn pop(&mut self, now_ms: u64) -> Option<(K, Priority)> {
        let (i, b) = (lane(Priority::Interactive), lane(Priority::Batch));
        let pick = match (self.counts[i] > 0, self.counts[b] > 0) {
            (false, false) => return None,
            (true, false) => i,
            (false, true) => b,
            (true, true) if self.streak < self.cfg.interactive_weight => i,
            (true, true) => b,
        };
        let key = self.pop_lane(pick, now_ms)?;
        if pick == i && self.counts[b] > 0 {
            self.streak += 1;
        } else {
            self.streak = 0;
        }
        Some((key, priority_of(pick)))
    }

    /// Number of live tasks that will be dequeued before `key` (estimate: fair order
    /// inside the lane, rotation across lanes, aging ignored). O(flows · log n).
    pub fn ahead_of(&self, key: &K) -> Option<usize> {
        let at = *self.live.get(key)?;
        let start = self.lanes[at.lane]
            .flows
            .get(&at.flow)?
            .q
            .iter()
            .find(|e| e.seq == at.seq)?
            .start;
        Some(self.ahead_estimate(at.lane, self.same_lane_ahead(at.lane, start, at.seq)))
    }

    /// Live keys in arrival order per lane (interactive lane first), for inspection.
    pub fn keys(&self) -> Vec<(K, Priority)> {
        let mut out = Vec::with_capacity(self.live.len());
        for l in 0..LANES {
            out.extend(
                self.lanes[l]
                    .fifo
                    .iter()
                    .filter(|(k, seq, _)| self.is_live(k, *seq))
                    .map(|(k, _, _)| (*k, priority_of(l))),
            );
        }
        out
    }

    /// Entries of lane `l` ordered before (start, seq): dead entries not yet compacted
    /// are counted too (an over-estimate bounded by the compaction threshold).
    fn same_lane_ahead(&self, l: usize, start: u64, seq: u64) -> usize {
        let ahead: usize = self.lanes[l]
            .flows
            .values()
            .map(|f| f.q.partition_point(|e| (e.start, e.seq) < (start, seq)))
            .sum();
        ahead.min(self.counts[l])
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

    fn is_live(&self, key: &K, seq: u64) -> bool {
        matches!(self.live.get(key), Some(at) if at.seq == seq)
    }

    fn take(&mut self, l: usize, key: K) -> K {
        self.live.remove(&key);
        self.counts[l] -= 1;
        key
    }

    fn pop_lane(&mut self, l: usize, now_ms: u64) -> Option<K> {
        // aging: the oldest live task of the lane goes first once it waited too long
        while let Some(&(key, seq, at)) = self.lanes[l].fifo.front() {
            if !self.is_live(&key, seq) {
                self.lanes[l].fifo.pop_front();
                continue;
            }
            if self.cfg.aging_ms > 0 && now_ms >= at.saturating_add(self.cfg.aging_ms) {
                self.lanes[l].fifo.pop_front();
                return Some(self.take(l, key));
            }
            break;
        }
        while let Some(Reverse((start, seq, flow))) = self.lanes[l].heads.pop() {
            let live = &self.live;
            let ln = &mut self.lanes[l];
            let Some(fq) = ln.flows.get_mut(&flow) else {
                continue;
            };
            if fq.heap_key != Some((start, seq)) {
                // superseded by a newer entry for this flow (its tags were settled)
                continue;
            }
            while let Some(e) = fq.q.front() {
                if matches!(live.get(&e.key), Some(at) if at.seq == e.seq) {
                    break;
                }
                fq.q.pop_front();
                ln.entries -= 1;
            }
            let Some(head) = fq.q.front().copied() else {
                fq.heap_key = None;
                continue;
            };
            if (head.start, head.seq) != (start, seq) {
                // the head this entry was made for left the queue: re-file the flow
                fq.heap_key = Some((head.start, head.seq));
                ln.heads.push(Reverse((head.start, head.seq, flow)));
                continue;
            }
            fq.q.pop_front();
            ln.entries -= 1;
            ln.vtime = ln.vtime.max(head.start);
            fq.heap_key = fq.q.front().map(|next| (next.start, next.seq));
            if let Some(next) = fq.q.front() {
                ln.heads.push(Reverse((next.start, next.seq, flow)));
            }
            return Some(self.take(l, head.key));
        }
        None
    }

    fn front_live(&self, l: usize) -> Option<K> {
        self.lanes[l]
            .fifo
            .iter()
            .find(|(k, seq, _)| self.is_live(k, *seq))
            .map(|(k, _, _)| *k)
    }

    fn back_live(&self, l: usize) -> Option<K> {
        self.lanes[l]
            .fifo
            .iter()
            .rev()
            .find(|(k, seq, _)| self.is_live(k, *seq))
            .map(|(k, _, _)| *k)
    }

    /// Drop dead entries once they outnumber live ones (keeps memory O(live)).
    fn compact(&mut self, l: usize) {
        let live = &self.live;
        let ln = &mut self.lanes[l];
        let alive = |k: &K, seq: u64| matches!(live.get(k), Some(at) if at.seq == seq);
        if ln.fifo.len() > 2 * self.counts[l] + 32 {
            ln.fifo.retain(|(k, seq, _)| alive(k, *seq));
        }
        if ln.entries > 2 * self.counts[l] + 32 {
            ln.entries = 0;
            for fq in ln.flows.values_mut() {
                fq.q.retain(|e| alive(&e.key, e.seq));
                ln.entries += fq.q.len();
            }
            ln.refile_heads();
        }
    }
}

mod settle;

#[cfg(test)]
mod tests;
