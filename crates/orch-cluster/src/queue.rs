//! A pool's replicated task queue: one JetStream stream per pool (file storage, R3,
//! at most the pool's queue capacity, discard-new, work-queue retention). A task is
//! published on its own subject (`orch.tasks.<pool>.<task>`, so any instance can find
//! a queued task by id) with its id as `Nats-Msg-Id`, so a repeated submission within
//! the dedupe window is recognised instead of queued twice; it counts as admitted only
//! once the publish is acknowledged (stored on a quorum).

use crate::{Cluster, ClusterError};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
use bytes::Bytes;

/// A pool's queue in the cluster.
#[derive(Clone)]
pub struct TaskQueue {
    pub(crate) cluster: Cluster,
    pub(crate) pool: String,
    pub(crate) stream: String,
    handle: async_nats::jetstream::stream::Stream,
}

/// A stored task: its place in the stream, and whether it was already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub sequence: u64,
    pub duplicate: bool,
}

/// Why a task was not stored, as a client would be told.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The queue holds its capacity (answer 429).
    #[error("the queue of pool {pool} is full")]
    Full { pool: String },
    /// No quorum, a timeout, or another storage failure (answer 503, retriable).
    /// `maybe_stored`: no answer came (a timeout), so the task may still be stored
    /// later, when the stream's quorum returns.
    #[error("the cluster cannot store tasks of pool {pool} now: {reason}")]
    Unavailable {
        pool: String,
        reason: String,
        maybe_stored: bool,
    },
}

/// JetStream's description for a discard-new stream at its message limit (code 10077,
/// which also covers other store failures: only this description means "full").
const FULL: &str = "maximum messages exceeded";

impl Cluster {
    /// The queue of `pool`, created if missing, holding at most `capacity` tasks.
    pub async fn task_queue(&self, pool: &str, capacity: usize) -> Result<TaskQueue, ClusterError> {
        let name = format!("ORCH_TASKS_{pool}");
        let cfg = Config {
            name: name.clone(),
            subjects: vec![format!("orch.tasks.{pool}.*")],
            storage: StorageType::File,
            num_replicas: self.cfg.replicas,
            max_messages: i64::try_from(capacity).unwrap_or(i64::MAX),
            discard: DiscardPolicy::New,
            duplicate_window: self.cfg.dedupe_window,
            retention: RetentionPolicy::WorkQueue,
            ..Default::default()
        };
        let handle = self.ensure_stream(cfg).await?;
        Ok(TaskQueue {
            cluster: self.clone(),
            pool: pool.to_string(),
            stream: name,
            handle,
        })
    }
}

impl TaskQueue {
    /// The pool this queue holds tasks of.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// Let the queue hold `capacity` tasks (the leader raises it to the cluster's
    /// queue plus every instance's slots: a task stays in the queue while it runs).
    pub async fn set_capacity(&self, capacity: usize) -> Result<(), String> {
        let mut handle = self.handle.clone();
        let mut cfg = handle
            .info()
            .await
            .map_err(|e| e.to_string())?
            .config
            .clone();
        let want = i64::try_from(capacity).unwrap_or(i64::MAX);
        if cfg.max_messages == want {
            return Ok(());
        }
        cfg.max_messages = want;
        self.cluster
            .js
            .update_stream(cfg)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn subject(&self, task_id: &str) -> String {
        format!("orch.tasks.{}.{task_id}", self.pool)
    }

    /// A task still in the queue (waiting or running, not yet acknowledged), by id: its
    /// payload. Answered by the stream's leader, so a task stored a moment ago on
    /// another instance is found.
    pub async fn find(&self, task_id: &str) -> Result<Option<Bytes>, PublishError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        match self
            .handle
            .get_last_raw_message_by_subject(&self.subject(task_id))
            .await
        {
            Ok(m) => Ok(Some(m.payload)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(PublishError::Unavailable {
                pool: self.pool.clone(),
                reason: e.to_string(),
                maybe_stored: false,
            }),
        }
    }

    /// Store a task (dedupe id `task_id`); returns once a quorum has it.
    pub async fn publish(&self, task_id: &str, payload: Bytes) -> Result<Published, PublishError> {
        let msg = PublishMessage::build().payload(payload).message_id(task_id);
        let ack = self
            .cluster
            .js
            .send_publish(self.subject(task_id), msg)
            .await
            .map_err(|e| self.refusal(e))?
            .await
            .map_err(|e| self.refusal(e))?;
        Ok(Published {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    fn refusal(&self, e: async_nats::jetstream::context::PublishError) -> PublishError {
        let reason = error_chain(&e);
        if e.kind() == PublishErrorKind::Other && reason.contains(FULL) {
            PublishError::Full {
                pool: self.pool.clone(),
            }
        } else {
            PublishError::Unavailable {
                pool: self.pool.clone(),
                reason,
                maybe_stored: maybe_stored(e.kind()),
            }
        }
    }
}

/// Whether a publish that failed this way may still be stored: a refusal or "no
/// responders" is an answer (not stored); no answer may be a store that waits in the
/// stream leader's log for its quorum.
fn maybe_stored(kind: PublishErrorKind) -> bool {
    matches!(
        kind,
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
    )
}

/// An error and its sources, joined (the JetStream description sits in a source).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unanswered_publish_may_still_be_stored() {
        assert!(maybe_stored(PublishErrorKind::TimedOut));
        assert!(maybe_stored(PublishErrorKind::BrokenPipe));
        for answered in [
            PublishErrorKind::StreamNotFound,
            PublishErrorKind::WrongLastMessageId,
            PublishErrorKind::WrongLastSequence,
            PublishErrorKind::MaxAckPending,
            PublishErrorKind::Other,
        ] {
            assert!(!maybe_stored(answered), "{answered:?}");
        }
    }
}
