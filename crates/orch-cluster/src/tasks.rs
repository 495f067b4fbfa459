//! What any instance can ask about any task: its status (a KV bucket written by the
//! task's leader at each change), a cancel request (a KV flag, so a leader that
//! takes the task over later still sees it, plus a core message to whoever leads the
//! task's pool now, so a running task stops at once), and who owns its id: a task id
//! is claimed for its tenant before it is stored (`create`: one claim wins, cluster
//! wide), and the claim lives as long as the task's status does, so an id is never
//! reused by another tenant while the cluster keeps anything of it.

use crate::{Cluster, ClusterError};
use async_nats::jetstream::kv::Store;
use futures_util::StreamExt;
use std::time::Duration;

const BUCKET: &str = "orch_tasks";

/// Tasks' statuses and cancel flags.
#[derive(Clone)]
pub struct TaskStates {
    kv: Store,
    client: async_nats::Client,
}

#[derive(Debug, thiserror::Error)]
#[error("task {task}: the cluster did not answer: {reason}")]
pub struct TaskStateError {
    pub task: String,
    pub reason: String,
}

fn status_key(task: &str) -> String {
    format!("status.{task}")
}

fn cancel_key(task: &str) -> String {
    format!("cancel.{task}")
}

fn owner_key(task: &str) -> String {
    format!("owner.{task}")
}

/// Whose a task id is, as [`TaskStates::claim`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Claimed now, for this tenant.
    New,
    /// This tenant's already (a retry, or an idempotent repeat).
    Own,
    /// Another tenant's: the id must not be used.
    Other,
}

/// The core subject a pool's leader hears cancels on.
fn cancel_subject(pool: &str) -> String {
    format!("orch.cancel.{pool}")
}

impl Cluster {
    /// The task-state bucket, created if missing; entries live `keep`.
    pub async fn task_states(&self, keep: Duration) -> Result<TaskStates, ClusterError> {
        // read from the leader: a status or cancel flag written a moment ago on another
        // instance is seen (a task just admitted elsewhere is not a 404)
        let kv = self.kv_bucket(BUCKET, keep, false).await?;
        Ok(TaskStates {
            kv,
            client: self.js.client(),
        })
    }
}

impl TaskStates {
    /// Record a task's status (the leader, at each change).
    pub async fn set_status(&self, task: &str, status_json: &str) -> Result<(), TaskStateError> {
        self.kv
            .put(status_key(task), status_json.to_string().into())
            .await
            .map(|_| ())
            .map_err(|e| err(task, e))
    }

    /// Claim task id `task` for `tenant` (before it is stored anywhere): exactly one
    /// claim of an id wins across the cluster.
    pub async fn claim(&self, task: &str, tenant: &str) -> Result<Claim, TaskStateError> {
        use async_nats::jetstream::kv::CreateErrorKind;
        // a claim that expires between the create and the read is created again once
        for _ in 0..2 {
            match self
                .kv
                .create(owner_key(task), tenant.to_string().into())
                .await
            {
                Ok(_) => return Ok(Claim::New),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(err(task, e)),
            }
            match self
                .kv
                .get(owner_key(task))
                .await
                .map_err(|e| err(task, e))?
            {
                Some(owner) if owner.as_ref() == tenant.as_bytes() => return Ok(Claim::Own),
                Some(_) => return Ok(Claim::Other),
                None => continue,
            }
        }
        Err(err(task, "its claim changed while it was read"))
    }

    /// Keep `tenant`'s claim of `task` for another retention period (written with each
    /// status, so the claim outlives the task by as long as its status does).
    pub async fn renew_claim(&self, task: &str, tenant: &str) -> Result<(), TaskStateError> {
        self.kv
            .put(owner_key(task), tenant.to_string().into())
            .await
            .map(|_| ())
            .map_err(|e| err(task, e))
    }

    /// A task's last recorded status, if any.
    pub async fn status(&self, task: &str) -> Result<Option<String>, TaskStateError> {
        self.kv
            .get(status_key(task))
            .await
            .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
            .map_err(|e| err(task, e))
    }

    /// Ask for a task of `pool` to be canceled: the flag first (stored), then the
    /// message to the pool's current leader.
    pub async fn request_cancel(&self, pool: &str, task: &str) -> Result<(), TaskStateError> {
        self.kv
            .put(cancel_key(task), "1".into())
            .await
            .map_err(|e| err(task, e))?;
        self.client
            .publish(cancel_subject(pool), task.to_string().into())
            .await
            .map_err(|e| err(task, e))?;
        self.client.flush().await.map_err(|e| err(task, e))
    }

    /// Whether a cancel was requested (a leader taking a task over checks this).
    pub async fn cancel_requested(&self, task: &str) -> Result<bool, TaskStateError> {
        self.kv
            .get(cancel_key(task))
            .await
            .map(|v| v.is_some())
            .map_err(|e| err(task, e))
    }

    /// Task ids whose cancel is requested from now on, for the leader of `pool`.
    pub async fn cancels(
        &self,
        pool: &str,
    ) -> Result<impl futures_util::Stream<Item = String>, TaskStateError> {
        let sub = self
            .client
            .subscribe(cancel_subject(pool))
            .await
            .map_err(|e| err(pool, e))?;
        Ok(sub.map(|m| String::from_utf8_lossy(&m.payload).into_owned()))
    }
}

fn err(task: &str, e: impl std::fmt::Display) -> TaskStateError {
    TaskStateError {
        task: task.to_string(),
        reason: e.to_string(),
    }
}
