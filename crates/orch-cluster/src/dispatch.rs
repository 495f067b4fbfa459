//! The pool leader's side of a task queue: one durable pull consumer per pool
//! (explicit acks, replicated like the stream) that hands queued tasks out in
//! admission order. A task leaves the queue, and frees its place, when the leader
//! acknowledges it (once the task has ended). A new leader drops the old consumer and
//! makes its own, and so gets every task not yet acknowledged again, in order.

use crate::queue::TaskQueue;
use crate::ClusterError;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::Message;
use bytes::Bytes;
use futures_util::StreamExt;
use std::time::Duration;

/// How long one long pull waits for tasks before the server ends it (the pull is then
/// made again at once: an empty queue costs one request per this).
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// The server's heartbeat on an idle pull (a pull that misses two is made again).
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);

fn queued(msg: Message) -> QueuedTask {
    let sequence = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    let task_id = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.as_str().to_string())
        .unwrap_or_default();
    QueuedTask {
        task_id,
        sequence,
        payload: msg.payload.clone(),
        msg,
    }
}

/// The consumer's name (one per pool stream).
const CONSUMER: &str = "dispatch";
/// How long a handed-out task may stay unacknowledged before JetStream offers it
/// again: longer than any generation may run (a new leader gets it at once anyway).
const ACK_WAIT: Duration = Duration::from_secs(3600);

/// The leader's handle on its pool's queue.
pub struct Dispatch {
    consumer: PullConsumer,
    pool: String,
}

/// A task handed to the leader; acknowledge it with [`Dispatch::done`] when it ends.
pub struct QueuedTask {
    /// The id it was published under (its dedupe id).
    pub task_id: String,
    /// Its place in the queue (admission order).
    pub sequence: u64,
    pub payload: Bytes,
    msg: Message,
}

impl TaskQueue {
    /// Become this queue's dispatcher: drop any earlier leader's consumer and make a
    /// fresh one, which starts at the oldest unacknowledged task.
    pub async fn take_over(&self) -> Result<Dispatch, ClusterError> {
        let js = &self.cluster.js;
        let setup = |e: String| ClusterError::Setup {
            what: format!("the dispatch consumer of {}", self.stream),
            reason: e,
        };
        // absent is fine (nobody led this pool yet); any other failure is not: the old
        // consumer must be gone before this one hands tasks out
        match js.delete_consumer_from_stream(CONSUMER, &self.stream).await {
            Ok(_) => {}
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(setup(format!("deleting the earlier consumer: {e}"))),
        }
        let stream = js
            .get_stream(&self.stream)
            .await
            .map_err(|e| setup(e.to_string()))?;
        let consumer = stream
            .get_or_create_consumer(
                CONSUMER,
                pull::Config {
                    durable_name: Some(CONSUMER.into()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    deliver_policy: DeliverPolicy::All,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| setup(e.to_string()))?;
        tracing::info!(pool_id = %self.pool, "took over the pool's queue");
        Ok(Dispatch {
            consumer,
            pool: self.pool.clone(),
        })
    }
}

impl Dispatch {
    /// The pool whose queue this hands out.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// The queued tasks in admission order, as they come: one long pull (the server
    /// holds it open and delivers each task when it is stored; idle heartbeats tell a
    /// lost pull). Tasks not yet taken from the stream are this consumer's until it is
    /// replaced, so a new leader gets them again. The stream ends with an error when
    /// the consumer is replaced or the cluster cannot answer.
    pub async fn tasks(
        &self,
    ) -> Result<impl futures_util::Stream<Item = Result<QueuedTask, ClusterError>>, ClusterError>
    {
        let err = |e: String| ClusterError::Setup {
            what: "the pull from the pool's queue".into(),
            reason: e,
        };
        let stream = self
            .consumer
            .stream()
            .max_messages_per_batch(64)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
            .map_err(|e| err(e.to_string()))?;
        Ok(stream.map(move |m| m.map(queued).map_err(|e| err(e.to_string()))))
    }

    /// Up to `max` tasks in admission order, answered at once (JetStream's `no_wait`
    /// fetch: it returns what the server hands out right away, possibly fewer than
    /// are queued, and waits for nothing; `wait` bounds the request). For tests and
    /// tools; a dispatcher uses [`tasks`](Self::tasks).
    pub async fn next(&self, max: usize, wait: Duration) -> Result<Vec<QueuedTask>, ClusterError> {
        let err = |e: String| ClusterError::Setup {
            what: "a fetch from the pool's queue".into(),
            reason: e,
        };
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(max)
            .expires(wait)
            .messages()
            .await
            .map_err(|e| err(e.to_string()))?;
        let mut out = Vec::new();
        while let Some(m) = batch.next().await {
            out.push(queued(m.map_err(|e| err(e.to_string()))?));
        }
        Ok(out)
    }

    /// The task ended: it leaves the queue (the server confirms the ack). May be tried
    /// again when the confirmation does not come.
    pub async fn done(&self, task: &QueuedTask) -> Result<(), ClusterError> {
        task.msg
            .double_ack()
            .await
            .map_err(|e| ClusterError::Setup {
                what: format!("the ack of task {}", task.task_id),
                reason: e.to_string(),
            })
    }
}

/// JetStream's "consumer not found" (10014).
fn not_found(e: &async_nats::jetstream::stream::ConsumerError) -> bool {
    use async_nats::jetstream::stream::ConsumerErrorKind;
    use async_nats::jetstream::ErrorCode;
    matches!(e.kind(), ConsumerErrorKind::JetStream(j) if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND)
}
