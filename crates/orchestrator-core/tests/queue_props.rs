//! Property tests of the bounded queue against a simple model.

use orch_domain::{FullPolicy, Priority};
use orchestrator_core::{BoundedQueue, QueueConfig};
use proptest::prelude::*;
use std::collections::{HashSet, VecDeque};

#[derive(Debug, Clone)]
enum Op {
    Enqueue(Priority),
    Dequeue,
    Cancel(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop_oneof![Just(Priority::Interactive), Just(Priority::Batch)].prop_map(Op::Enqueue),
        3 => Just(Op::Dequeue),
        1 => (0usize..64).prop_map(Op::Cancel),
    ]
}

fn policy() -> impl Strategy<Value = FullPolicy> {
    prop_oneof![
        Just(FullPolicy::Reject),
        Just(FullPolicy::DropLru),
        Just(FullPolicy::ShedLowPriority)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Capacity is never exceeded; every key admitted is dequeued, canceled or evicted
    /// exactly once (or still queued at the end); FIFO holds within each lane; cancel
    /// removes exactly the named task.
    #[test]
    fn queue_matches_model(ops in prop::collection::vec(op(), 1..200),
                           cap in 1usize..8, pol in policy(), w in 1u32..4) {
        let mut q = BoundedQueue::new(QueueConfig { capacity: cap, policy: pol, interactive_weight: w, ..QueueConfig::default() });
        let mut model: [VecDeque<u32>; 2] = [VecDeque::new(), VecDeque::new()];
        let mut next = 0u32;
        let mut admitted = HashSet::new();
        let mut gone = HashSet::new();
        for op in ops {
            match op {
                Op::Enqueue(p) => {
                    let key = next; next += 1;
                    let l = if p == Priority::Interactive { 0 } else { 1 };
                    match q.enqueue(key, p) {
                        Ok(a) => {
                            if let Some(v) = a.evicted {
                                prop_assert!(pol != FullPolicy::Reject);
                                // only batch tasks are ever evicted
                                let pos = model[1].iter().position(|&k| k == v);
                                prop_assert!(pos.is_some());
                                if pol == FullPolicy::DropLru { prop_assert_eq!(pos, Some(0)); }
                                if pol == FullPolicy::ShedLowPriority {
                                    prop_assert_eq!(p, Priority::Interactive);
                                    prop_assert_eq!(pos, Some(model[1].len() - 1));
                                }
                                model[1].retain(|&k| k != v);
                                prop_assert!(gone.insert(v));
                            }
                            model[l].push_back(key);
                            admitted.insert(key);
                        }
                        Err(_) => {
                            prop_assert_eq!(model[0].len() + model[1].len(), cap);
                        }
                    }
                }
                Op::Dequeue => {
                    match q.dequeue() {
                        Some((k, p)) => {
                            let l = if p == Priority::Interactive { 0 } else { 1 };
                            // FIFO within the lane: it must be the lane's head
                            prop_assert_eq!(model[l].pop_front(), Some(k));
                            prop_assert!(gone.insert(k));
                        }
                        None => prop_assert!(model[0].is_empty() && model[1].is_empty()),
                    }
                }
                Op::Cancel(i) => {
                    let key = i as u32;
                    let was = model.iter().any(|m| m.contains(&key));
                    prop_assert_eq!(q.cancel(&key), was);
                    if was {
                        for m in model.iter_mut() { m.retain(|&k| k != key); }
                        prop_assert!(gone.insert(key));
                    }
                }
            }
            prop_assert!(q.len() <= cap);
            prop_assert_eq!(q.len(), model[0].len() + model[1].len());
            prop_assert_eq!(q.len_of(Priority::Interactive), model[0].len());
        }
        // no task lost or duplicated: admitted = gone ∪ still queued, disjoint
        let queued: Vec<u32> = q.keys().into_iter().map(|(k, _)| k).collect();
        for k in &queued { prop_assert!(!gone.contains(k)); }
        prop_assert_eq!(gone.len() + queued.len(), admitted.len());
    }

    /// With both lanes non-empty, batch is served at least once per `w + 1` dequeues.
    #[test]
    fn batch_never_starves(w in 1u32..5, n in 1usize..20) {
        let mut q = BoundedQueue::new(QueueConfig { capacity: 1000, policy: FullPolicy::Reject, interactive_weight: w, ..QueueConfig::default() });
        for k in 0..(n as u32 * 10) { q.enqueue(k, Priority::Interactive).unwrap(); }
        for k in 0..n as u32 { q.enqueue(10_000 + k, Priority::Batch).unwrap(); }
        let mut since_batch = 0;
        while q.len_of(Priority::Batch) > 0 {
            let (_, p) = q.dequeue().unwrap();
            if p == Priority::Batch { since_batch = 0 } else { since_batch += 1 }
            prop_assert!(since_batch <= w);
        }
    }
}
