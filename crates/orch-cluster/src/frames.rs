//! Tasks' frames in the cluster: one replicated stream for all tasks, one subject per
//! task. The running task's leader appends frames in batches (one message per batch),
//! each conditional on the subject's last sequence being the one it wrote last, so a
//! leader that was replaced cannot add a frame after its successor (it is fenced). Any
//! instance reads a task's frames by direct get (answered by the nearest replica, even
//! without quorum), from the start or after a `Last-Event-ID`, or from the stream's
//! leader when a replica may lag (a new leader taking a task over always does).

use crate::{Cluster, ClusterError};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, Config, DirectGetErrorKind, StorageType};
use std::time::Duration;

const STREAM: &str = "ORCH_FRAMES";

/// One SSE frame: its id (`Last-Event-ID`), kind (stored as its event name) and JSON
/// data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Frame {
    pub id: u64,
    #[serde(rename = "event")]
    pub kind: orch_domain::EventKind,
    pub data: String,
}

/// Which copy of the frames a read asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// Any replica (direct get; the nearest answers): cheap and spread out, but one
    /// that lags shows fewer frames until it catches up.
    Replica,
    /// The stream's leader: every frame a quorum stored.
    Leader,
}

/// The frames of every task.
#[derive(Clone)]
pub struct FrameLog {
    cluster: Cluster,
    stream: stream::Stream,
}

/// Appends one task's frames (held by the task's current leader).
pub struct FrameWriter {
    log: FrameLog,
    subject: String,
    /// Stream sequence of the last batch this writer stored on the subject (0: none).
    last: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Someone else wrote this task's frames since: this writer no longer leads it.
    #[error("frames of task {0}: another leader has written since; this writer is fenced")]
    Fenced(String),
    #[error("frames of task {task}: the cluster did not store or answer: {reason}")]
    Unavailable { task: String, reason: String },
}

fn subject(task_id: &str) -> String {
    format!("orch.frames.{task_id}")
}

/// The core subject a task's stored batches are announced on (not persisted: a reader
/// that misses one reads the stored frames).
fn tail_subject(task_id: &str) -> String {
    format!("orch.tail.{task_id}")
}

impl Cluster {
    /// The frame stream, created if missing; frames are kept for `keep`.
    pub async fn frame_log(&self, keep: Duration) -> Result<FrameLog, ClusterError> {
        let stream = self
            .ensure_stream(Config {
                name: STREAM.into(),
                subjects: vec!["orch.frames.*".into()],
                storage: StorageType::File,
                num_replicas: self.cfg.replicas,
                allow_direct: true,
                max_age: keep,
                max_bytes: self.cfg.max_frame_bytes,
                discard: stream::DiscardPolicy::New,
                ..Default::default()
            })
            .await?;
        Ok(FrameLog {
            cluster: self.clone(),
            stream,
        })
    }
}

impl FrameLog {
    /// Whether the stream holds nine tenths of its byte bound or more.
    pub async fn nearly_full(&self) -> Result<bool, FrameError> {
        let mut s = self.stream.clone();
        let info = s.info().await.map_err(|e| FrameError::Unavailable {
            task: "*".into(),
            reason: e.to_string(),
        })?;
        let max = info.config.max_bytes;
        Ok(max > 0 && info.state.bytes.saturating_mul(10) >= (max as u64).saturating_mul(9))
    }

    /// A writer for a task nobody has written frames of yet.
    pub fn writer(&self, task_id: &str) -> FrameWriter {
        FrameWriter {
            log: self.clone(),
            subject: subject(task_id),
            last: 0,
        }
    }

    /// A writer that continues a task's frames (a new leader taking a task over), and
    /// every frame stored so far. The subject's last sequence and the frames are read
    /// from the stream's leader (a replica may lag, or after a whole-cluster crash on
    /// nats-server 2.9 even disagree), so the writer's condition and the frames agree.
    pub async fn resume_writer(
        &self,
        task_id: &str,
    ) -> Result<(FrameWriter, Vec<Frame>), FrameError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        let subject = subject(task_id);
        let last = match self.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => 0,
            Err(e) => return Err(unavailable(task_id, e)),
        };
        // from the leader too: a replica that lags (one that was down, catching up)
        // could miss frames the condition counts
        let (frames, seen) = self.read_all(task_id, ReadFrom::Leader).await?;
        if seen < last {
            return Err(unavailable(
                task_id,
                "the stream's leader changed while reading",
            ));
        }
        Ok((
            FrameWriter {
                log: self.clone(),
                subject,
                last,
            },
            frames,
        ))
    }

    /// The batches of `task_id` announced from now on, each once it is stored (a
    /// batch that cannot be read as frames comes as an empty one). Not persisted: a
    /// reader that may have missed one reads the stored frames.
    pub async fn tail(
        &self,
        task_id: &str,
    ) -> Result<impl futures_util::Stream<Item = Vec<Frame>> + Unpin, FrameError> {
        use futures_util::StreamExt;
        let sub = self
            .cluster
            .js
            .client()
            .subscribe(tail_subject(task_id))
            .await
            .map_err(|e| unavailable(task_id, e))?;
        Ok(sub.map(|m| serde_json::from_slice(&m.payload).unwrap_or_default()))
    }

    /// The stored frames of `task_id` with an id above `after`, in order, read from
    /// any replica (the nearest answers; it may lag behind, for as long as it takes to
    /// catch up).
    pub async fn read_after(&self, task_id: &str, after: u64) -> Result<Vec<Frame>, FrameError> {
        self.read_after_from(task_id, after, ReadFrom::Replica)
            .await
    }

    /// [`read_after`](Self::read_after), from the replica or the stream's leader.
    pub async fn read_after_from(
        &self,
        task_id: &str,
        after: u64,
        from: ReadFrom,
    ) -> Result<Vec<Frame>, FrameError> {
        let (frames, _) = self.read_all(task_id, from).await?;
        Ok(frames.into_iter().filter(|f| f.id > after).collect())
    }

    /// Every stored frame of `task_id`, and the stream sequence of the last batch read.
    async fn read_all(
        &self,
        task_id: &str,
        from: ReadFrom,
    ) -> Result<(Vec<Frame>, u64), FrameError> {
        use async_nats::jetstream::stream::RawMessageErrorKind;
        let subject = subject(task_id);
        let mut out = Vec::new();
        let mut seq = 1;
        let mut last = 0;
        loop {
            let m = match from {
                ReadFrom::Replica => match self
                    .stream
                    .direct_get_next_for_subject(subject.clone(), Some(seq))
                    .await
                {
                    Ok(m) => m,
                    Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok((out, last)),
                    Err(e) => return Err(unavailable(task_id, e)),
                },
                ReadFrom::Leader => match self
                    .stream
                    .get_first_raw_message_by_subject(&subject, seq)
                    .await
                {
                    Ok(m) => m,
                    Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {
                        return Ok((out, last))
                    }
                    Err(e) => return Err(unavailable(task_id, e)),
                },
            };
            let batch: Vec<Frame> =
                serde_json::from_slice(&m.payload).map_err(|e| unavailable(task_id, e))?;
            out.extend(batch);
            last = m.sequence;
            seq = m.sequence + 1;
        }
    }
}

impl FrameWriter {
    /// Store `frames` (one message), only if nobody else wrote this task's frames since
    /// this writer last did. Returns once a quorum has them, after announcing them on
    /// the task's tail subject for live readers.
    pub async fn append(&mut self, frames: &[Frame]) -> Result<(), FrameError> {
        let task = self.subject.trim_start_matches("orch.frames.").to_string();
        let payload = serde_json::to_vec(frames).map_err(|e| unavailable(&task, e))?;
        let payload = bytes::Bytes::from(payload);
        let msg = PublishMessage::build()
            .payload(payload.clone())
            .expected_last_subject_sequence(self.last);
        let refusal = |e: async_nats::jetstream::context::PublishError| {
            if e.kind() == PublishErrorKind::WrongLastSequence {
                FrameError::Fenced(task.clone())
            } else {
                unavailable(&task, e)
            }
        };
        let ack = self
            .log
            .cluster
            .js
            .send_publish(self.subject.clone(), msg)
            .await
            .map_err(&refusal)?
            .await
            .map_err(&refusal)?;
        self.last = ack.sequence;
        // best effort: a reader that misses it reads the stored batch
        let _ = self
            .log
            .cluster
            .js
            .client()
            .publish(tail_subject(&task), payload)
            .await;
        Ok(())
    }

    /// Stream sequence of the last batch this writer stored (0: none yet).
    pub fn last_sequence(&self) -> u64 {
        self.last
    }
}

fn unavailable(task: &str, e: impl std::fmt::Display) -> FrameError {
    FrameError::Unavailable {
        task: task.to_string(),
        reason: e.to_string(),
    }
}
