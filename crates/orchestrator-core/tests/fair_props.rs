//! Property tests of weighted fair sharing inside a lane: the share bound of start-time
//! fair queuing for random weights and costs, the service bound of a newly active
//! flow, and the aging bound.

use orch_domain::{FullPolicy, Priority};
use orchestrator_core::{BoundedQueue, Fairness, Flow, QueueConfig};
use proptest::prelude::*;
use std::collections::HashMap;

fn queue(aging_ms: u64) -> BoundedQueue<u64> {
    BoundedQueue::new(QueueConfig {
        capacity: 100_000,
        policy: FullPolicy::Reject,
        interactive_weight: 3,
        fairness: Fairness::Weighted,
        aging_ms,
    })
}

/// A deterministic cost sequence per flow (proptest picks the seed).
fn cost(seed: u64, n: u64, cmax: u64) -> u64 {
    let x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(n.wrapping_mul(1442695040888963407));
    1 + (x >> 33) % cmax
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Continuously backlogged flows: for any two flows i, j the normalised service
    /// W_i/w_i and W_j/w_j differ by at most c_max/w_i + c_max/w_j at every point.
    #[test]
    fn backlogged_flows_share_by_weight(weights in prop::collection::vec(1u32..10, 2..6),
                                        cmax in 1u64..50, seed in any::<u64>(),
                                        rounds in 50usize..400) {
        let mut q = queue(0);
        let mut flow_of = HashMap::new();
        let mut cost_of = HashMap::new();
        let mut next = 0u64;
        let push = |q: &mut BoundedQueue<u64>, f: usize, next: &mut u64,
                        flow_of: &mut HashMap<u64, usize>, cost_of: &mut HashMap<u64, u64>| {
            let c = cost(seed ^ f as u64, *next, cmax);
            q.push(*next, Priority::Interactive,
                   Flow { id: f as u32, weight: weights[f], cost: c }, 0).unwrap();
            flow_of.insert(*next, f);
            cost_of.insert(*next, c);
            *next += 1;
        };
        for f in 0..weights.len() {
            for _ in 0..2 { push(&mut q, f, &mut next, &mut flow_of, &mut cost_of); }
        }
        let mut served = vec![0u64; weights.len()];
        for _ in 0..rounds {
            let (k, _) = q.dequeue().unwrap();
            let f = flow_of[&k];
            served[f] += cost_of[&k];
            // keep every flow backlogged
            push(&mut q, f, &mut next, &mut flow_of, &mut cost_of);
            for i in 0..weights.len() {
                for j in 0..weights.len() {
                    let ni = served[i] as f64 / f64::from(weights[i]);
                    let nj = served[j] as f64 / f64::from(weights[j]);
                    let bound = cmax as f64 / f64::from(weights[i])
                        + cmax as f64 / f64::from(weights[j]) + 1e-6;
                    prop_assert!((ni - nj).abs() <= bound,
                        "flows {i},{j}: {ni} vs {nj} (bound {bound}), served {served:?}");
                }
            }
        }
    }

    /// A task of a flow that was idle is served within one task of each other flow,
    /// however heavy and backlogged they are.
    #[test]
    fn newly_active_flow_is_served_within_one_round(weights in prop::collection::vec(1u32..100, 1..8),
                                                     cmax in 1u64..500, seed in any::<u64>(),
                                                     warmup in 0usize..200) {
        let mut q = queue(0);
        let mut flow_of = HashMap::new();
        let mut next = 0u64;
        for (f, w) in weights.iter().enumerate() {
            for _ in 0..4 {
                q.push(next, Priority::Batch,
                       Flow { id: f as u32, weight: *w, cost: cost(seed, next, cmax) }, 0).unwrap();
                flow_of.insert(next, f);
                next += 1;
            }
        }
        for _ in 0..warmup {
            let (k, _) = q.dequeue().unwrap();
            let f = flow_of[&k];
            q.push(next, Priority::Batch,
                   Flow { id: f as u32, weight: weights[f], cost: cost(seed, next, cmax) }, 0).unwrap();
            flow_of.insert(next, f);
            next += 1;
        }
        let light = next;
        q.push(light, Priority::Batch, Flow { id: 1_000, weight: 1, cost: cmax }, 0).unwrap();
        let mut dequeues = 0;
        loop {
            let (k, _) = q.dequeue().unwrap();
            dequeues += 1;
            if k == light { break; }
            prop_assert!(dequeues <= weights.len(), "waited {dequeues} dequeues");
        }
    }

    /// With aging, a task waits at most `aging_ms` plus one dequeue per task that
    /// arrived before it, even in a flow with the smallest weight.
    #[test]
    fn aging_bounds_the_wait(aging in 1u64..50, heavy in 5u64..60) {
        let mut q = queue(aging);
        let mut next = 0u64;
        let mut now = 0u64;
        for _ in 0..heavy {
            q.push(next, Priority::Interactive, Flow { id: 0, weight: 1_000, cost: 1 }, now).unwrap();
            next += 1;
        }
        let starved = next;
        let ahead = q.len() as u64;
        q.push(starved, Priority::Interactive, Flow { id: 1, weight: 1, cost: 10_000 }, now).unwrap();
        next += 1;
        loop {
            now += 1;
            let (k, _) = q.pop(now).unwrap();
            if k == starved { break; }
            // the heavy flow keeps its backlog
            q.push(next, Priority::Interactive, Flow { id: 0, weight: 1_000, cost: 1 }, now).unwrap();
            next += 1;
            prop_assert!(now <= aging + ahead + 1, "waited {now} ms");
        }
    }
}

/// Weights 1:2:5 with equal costs: served shares are 1/8 : 2/8 : 5/8 exactly over
/// whole rounds.
#[test]
fn shares_follow_weights_one_two_five() {
    let mut q = queue(0);
    let weights = [1u32, 2, 5];
    let mut next = 0u64;
    let mut flow_of = HashMap::new();
    for (f, w) in weights.iter().enumerate() {
        for _ in 0..100 {
            q.push(
                next,
                Priority::Interactive,
                Flow {
                    id: f as u32,
                    weight: *w,
                    cost: 10,
                },
                0,
            )
            .unwrap();
            flow_of.insert(next, f);
            next += 1;
        }
    }
    let mut served = [0u32; 3];
    for _ in 0..80 {
        let (k, _) = q.dequeue().unwrap();
        served[flow_of[&k]] += 1;
    }
    assert_eq!(served, [10, 20, 50]);
}
