//! Unit tests of the bounded fair queue.
use super::*;

fn q(capacity: usize, policy: FullPolicy) -> BoundedQueue<u32> {
    BoundedQueue::new(QueueConfig {
        capacity,
        policy,
        interactive_weight: 2,
        ..QueueConfig::default()
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
fn a_new_policy_re_tags_what_is_queued() {
    let mut q = q(16, FullPolicy::Reject);
    let heavy = Flow {
        id: 1,
        weight: 1,
        cost: 100,
    };
    let light = Flow {
        id: 2,
        weight: 1,
        cost: 1,
    };
    q.push(1, Priority::Batch, heavy, 0).unwrap();
    q.push(2, Priority::Batch, heavy, 0).unwrap();
    q.push(3, Priority::Batch, light, 0).unwrap();
    q.set_config(QueueConfig {
        fairness: Fairness::Fifo,
        ..q.config()
    });
    let order: Vec<u32> = std::iter::from_fn(|| q.dequeue().map(|(k, _)| k)).collect();
    assert_eq!(
        order,
        vec![1, 2, 3],
        "arrival order after switching to fifo"
    );
    q.push(4, Priority::Batch, heavy, 0).unwrap();
    q.set_config(QueueConfig {
        capacity: 1,
        ..q.config()
    });
    assert!(
        q.push(5, Priority::Batch, light, 0).is_err(),
        "smaller capacity refuses"
    );
    assert_eq!(q.len(), 1, "and evicts nothing");
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
