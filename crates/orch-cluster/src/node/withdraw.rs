//! Withdrawing refused submits whose store may still land. A publish that timed out
//! while a pool's queue had no quorum can be stored later, when quorum returns (its
//! proposal waited in the stream leader's log). The client was answered 503 (not
//! admitted) and may retry, so such a task must not run: its cancel flag is stored as
//! soon as the cluster takes it, and the pool's leader ends the task `canceled` when it
//! takes it (or stops it at once if it already runs).
//!
//! Only tasks whose id the server generated are withdrawn. A task id the client chose
//! (its `task_id`, or one derived from an `Idempotency-Key`) is the client's handle:
//! its retry with that id reaches that task, which runs once.
//!
//! Owns: the withdrawals not yet stored (at most [`MAX_PENDING`]).

use crate::TaskStates;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Withdrawals held at most; beyond that a refused submit may still run (logged).
pub(super) const MAX_PENDING: usize = 4096;
/// How long a withdrawal is tried for; a task stored later than this would run.
const KEEP_TRYING: Duration = Duration::from_secs(3600);
/// Pause between tries while the cluster cannot store the flag.
const PAUSE: Duration = Duration::from_secs(1);

/// The instance's withdrawals, stored one after another by one task.
#[derive(Clone)]
pub(super) struct Withdrawals {
    tx: mpsc::Sender<(String, String)>,
}

impl Withdrawals {
    pub(super) fn start(states: TaskStates) -> Self {
        let (tx, rx) = mpsc::channel(MAX_PENDING);
        tokio::spawn(run(states, rx));
        Self { tx }
    }

    /// Withdraw task `task` of `pool` (its submit was refused but may be stored).
    pub(super) fn withdraw(&self, pool: &str, task: &str) {
        tracing::warn!(
            pool_id = pool,
            task_id = task,
            "a refused submit may still be stored; withdrawing it"
        );
        if self
            .tx
            .try_send((pool.to_string(), task.to_string()))
            .is_err()
        {
            tracing::error!(
                pool_id = pool,
                task_id = task,
                "too many withdrawals pending: this refused submit may still run"
            );
        }
    }
}

async fn run(states: TaskStates, mut rx: mpsc::Receiver<(String, String)>) {
    let mut pending: VecDeque<(String, String, Instant)> = VecDeque::new();
    loop {
        if pending.is_empty() {
            let Some((p, t)) = rx.recv().await else {
                return;
            };
            pending.push_back((p, t, Instant::now()));
        }
        while pending.len() < MAX_PENDING {
            let Ok((p, t)) = rx.try_recv() else {
                break;
            };
            pending.push_back((p, t, Instant::now()));
        }
        // the oldest first; while the cluster cannot store one, it stores none: wait
        while let Some((pool, task, since)) = pending.front().cloned() {
            match states.request_cancel(&pool, &task).await {
                Ok(()) => {
                    tracing::info!(pool_id = %pool, task_id = %task, "withdrew a refused submit");
                    pending.pop_front();
                }
                Err(e) if since.elapsed() > KEEP_TRYING => {
                    tracing::error!(pool_id = %pool, task_id = %task, error = %e, "gave up withdrawing a refused submit: it may still run");
                    pending.pop_front();
                }
                Err(_) => break,
            }
        }
        if !pending.is_empty() {
            tokio::time::sleep(PAUSE).await;
        }
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::testing::Nats;
    use crate::{Cluster, ClusterConfig};

    /// Against three real nats-servers: the flag cannot be stored while two are down;
    /// once they are back, the pending withdrawal is stored (and nothing else is).
    #[tokio::test]
    async fn a_withdrawal_made_without_quorum_is_stored_once_quorum_returns() {
        let mut n = Nats::start("withdraw").await;
        let c = Cluster::connect(ClusterConfig {
            urls: n.urls(),
            security: n.security(),
            ..ClusterConfig::default()
        })
        .await
        .unwrap();
        let states = c.task_states(Duration::from_secs(600)).await.unwrap();
        let w = Withdrawals::start(states.clone());
        n.kill(2);
        n.kill(1);
        w.withdraw("p", "refused-1");
        // quorum stays lost past a few tries of the worker
        tokio::time::sleep(PAUSE * 3).await;
        n.restart(1);
        n.restart(2);
        for i in 0..3 {
            n.wait_healthy(i).await;
        }
        let t0 = Instant::now();
        while !matches!(states.cancel_requested("refused-1").await, Ok(true)) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the withdrawal was not stored 30 s after quorum returned"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!(
            "[cluster] withdrawal stored {:?} after quorum returned",
            t0.elapsed()
        );
        assert!(!states.cancel_requested("never-refused").await.unwrap());
    }
}
