//! Live answers about a pool's tasks: its leader answers, for the tasks it runs (each
//! term's running set), a core request on `orch.live.<pool>` with the task as it
//! stands now (state, place in the queue, tokens so far). Any instance asks it for a
//! status: the task-state bucket only records a task's start and its end.
//!
//! Not fenced: a stale leader that has not yet noticed it lost its lease may still
//! answer for the tasks it ran, for up to a renewal interval.
//!
//! Owns: the request's subject and wire form. Never: a store (nothing here persists).

use super::Term;
use crate::wire::LiveStatus;
use futures_util::StreamExt;
use orch_domain::TaskId;
use orch_services::LocalPools;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// How long a status waits for the leader's answer.
const ASK: Duration = Duration::from_millis(300);
/// Answers being made at once (each asks the pool's actor where a task waits).
const IN_FLIGHT: usize = 64;

fn subject(pool_id: &str) -> String {
    format!("orch.live.{pool_id}")
}

/// Task `id` as `pool_id`'s leader answers within [`ASK`] (`None`: no answer, or the
/// leader does not run it).
pub(in crate::node) async fn ask(
    client: &async_nats::Client,
    pool_id: &str,
    id: TaskId,
) -> Option<LiveStatus> {
    let ask = client.request(subject(pool_id), id.to_string().into());
    let answer = tokio::time::timeout(ASK, ask).await.ok()?.ok()?;
    serde_json::from_slice::<Option<LiveStatus>>(&answer.payload).ok()?
}

/// Answer for the tasks `term` runs (a leader, for its term).
pub(super) fn answer(
    client: async_nats::Client,
    pools: LocalPools,
    pool_id: String,
    term: Term,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut asks) = client.subscribe(subject(&pool_id)).await else {
            tracing::warn!(pool_id, "cannot answer live status requests");
            return;
        };
        let busy = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut answers = JoinSet::new();
        while let Some(m) = asks.next().await {
            while answers.try_join_next().is_some() {}
            let Some(reply) = m.reply else { continue };
            // beyond the bound, no answer: the asker reads the recorded status
            let Ok(permit) = busy.clone().try_acquire_owned() else {
                continue;
            };
            let id = std::str::from_utf8(&m.payload)
                .ok()
                .and_then(|s| s.parse::<TaskId>().ok());
            let (client, pools, term) = (client.clone(), pools.clone(), term.clone());
            answers.spawn(async move {
                let rec = match id {
                    Some(id) => term.find(id).await,
                    None => None,
                };
                let live = match rec {
                    Some(rec) => pools.status(&rec).await.map(LiveStatus::from),
                    None => None,
                };
                let body = serde_json::to_vec(&live).unwrap_or_else(|_| b"null".to_vec());
                let _ = client.publish(reply, body.into()).await;
                drop(permit);
            });
        }
    })
}
