//! The usage ledger shared by every instance of the cluster: each instance's flushes
//! are published to one replicated stream (`ORCH_USAGE`), and every instance adds
//! every batch of that stream to its own store, so a report on any instance counts
//! the tasks every instance admitted.
//!
//! Owns: the stream (file storage, the cluster's replicas, kept 400 days), the
//! [`SharedLedger`] store wrapper and its follower task. A batch is added once: the
//! local store keeps the stream sequence of the last batch it added in the same
//! transaction (`AccountStore::add_shared_usage`), and the follower starts after it,
//! so a crash between adding and recording cannot count a batch twice. A flush
//! returns when the stream has the batch (replicated), not when every instance added
//! it; a report waits (up to 3 s) until this instance has added everything the
//! stream held when it was asked, so it counts what any instance flushed before.
//! Never: writes usage to the local store directly in cluster mode (only from the
//! stream), which is what keeps each instance's view whole and counted once.

use crate::{Cluster, ClusterConfig, ClusterError};
use async_nats::jetstream;
use futures_util::StreamExt;
use orch_domain::accounts::UsageCounts;
use orch_services::accounts::{AccountStore, StoreError, StoredKey, UsageKey, UsageQuery};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const STREAM: &str = "ORCH_USAGE";
/// How long the stream keeps batches (each instance's store keeps them for good).
const KEEP: Duration = Duration::from_secs(400 * 86_400);
/// Longest a report waits for this instance to catch up with the stream.
const CATCH_UP: Duration = Duration::from_secs(3);

#[derive(Serialize, Deserialize)]
struct Row {
    hour_ms: u64,
    tenant: String,
    key: String,
    pool: String,
    model: String,
    counts: UsageCounts,
}

fn to_rows(batch: &[(UsageKey, UsageCounts)]) -> Vec<Row> {
    batch
        .iter()
        .map(|(k, c)| Row {
            hour_ms: k.hour_ms,
            tenant: k.tenant.to_string(),
            key: k.key.to_string(),
            pool: k.pool.to_string(),
            model: k.model.to_string(),
            counts: c.clone(),
        })
        .collect()
}

fn from_rows(rows: Vec<Row>) -> Vec<(UsageKey, UsageCounts)> {
    rows.into_iter()
        .map(|r| {
            (
                UsageKey {
                    hour_ms: r.hour_ms,
                    tenant: r.tenant.into(),
                    key: r.key.into(),
                    pool: r.pool.into(),
                    model: r.model.into(),
                },
                r.counts,
            )
        })
        .collect()
}

/// A store whose usage goes through the cluster's stream; keys and reads are the
/// local store's.
pub struct SharedLedger {
    local: Arc<dyn AccountStore>,
    js: jetstream::Context,
    subject: String,
    runtime: tokio::runtime::Handle,
    /// Stream sequence of the last batch this instance added.
    added: Arc<AtomicU64>,
}

fn failed(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Failed(format!("the cluster's usage stream ({what}): {e}"))
}

impl SharedLedger {
    /// The stream's last sequence now.
    async fn last_seq(&self) -> Result<u64, StoreError> {
        let mut s = self
            .js
            .get_stream(STREAM)
            .await
            .map_err(|e| failed("reading it", e))?;
        let info = s.info().await.map_err(|e| failed("reading it", e))?;
        Ok(info.state.last_sequence)
    }
}

impl AccountStore for SharedLedger {
    fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        self.local.keys()
    }
    fn insert_key(&self, key: &StoredKey) -> Result<(), StoreError> {
        self.local.insert_key(key)
    }
    fn revoke_key(&self, fingerprint: &str, at_ms: u64) -> Result<bool, StoreError> {
        self.local.revoke_key(fingerprint, at_ms)
    }
    fn touch_keys(&self, used: &[(String, u64)]) -> Result<(), StoreError> {
        self.local.touch_keys(used)
    }

    /// Publish the batch and wait for the stream's acknowledgement (called on a
    /// blocking thread by the flusher).
    fn add_usage(&self, rows: &[(UsageKey, UsageCounts)]) -> Result<(), StoreError> {
        let body = serde_json::to_vec(&to_rows(rows)).map_err(|e| failed("encoding", e))?;
        let (js, subject) = (self.js.clone(), self.subject.clone());
        self.runtime.block_on(async move {
            js.publish(subject, body.into())
                .await
                .map_err(|e| failed("publishing", e))?
                .await
                .map_err(|e| failed("its acknowledgement", e))?;
            Ok(())
        })
    }

    /// Wait until this instance added what the stream holds now, then read.
    fn usage(&self, q: &UsageQuery) -> Result<Vec<(String, UsageCounts)>, StoreError> {
        self.runtime.block_on(async {
            let want = self.last_seq().await?;
            let t0 = tokio::time::Instant::now();
            while self.added.load(Ordering::Acquire) < want {
                if t0.elapsed() > CATCH_UP {
                    tracing::warn!(
                        want,
                        have = self.added.load(Ordering::Acquire),
                        "usage report before this instance caught up with the cluster's usage stream"
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok::<_, StoreError>(())
        })?;
        self.local.usage(q)
    }

    fn tokens_by_tenant(&self, since_ms: u64) -> Result<Vec<(String, u64)>, StoreError> {
        self.local.tokens_by_tenant(since_ms)
    }
    fn add_shared_usage(
        &self,
        seq: u64,
        rows: &[(UsageKey, UsageCounts)],
    ) -> Result<bool, StoreError> {
        self.local.add_shared_usage(seq, rows)
    }
    fn shared_usage_seq(&self) -> Result<u64, StoreError> {
        self.local.shared_usage_seq()
    }
}

/// The shared ledger over `local` for `instance`: make (or check) the stream, and
/// start adding its batches to `local` from after the last one `local` added.
pub async fn shared_ledger(
    cfg: ClusterConfig,
    instance: &str,
    local: Arc<dyn AccountStore>,
) -> Result<Arc<SharedLedger>, ClusterError> {
    let cluster = Cluster::connect(cfg).await?;
    cluster
        .ensure_stream(jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec!["orch.usage.>".into()],
            storage: jetstream::stream::StorageType::File,
            num_replicas: cluster.cfg.replicas,
            max_age: KEEP,
            ..Default::default()
        })
        .await?;
    let from = local.shared_usage_seq().map_err(|e| ClusterError::Setup {
        what: "the local usage ledger".into(),
        reason: e.to_string(),
    })?;
    let added = Arc::new(AtomicU64::new(from));
    let ledger = Arc::new(SharedLedger {
        local: local.clone(),
        js: cluster.js.clone(),
        subject: format!("orch.usage.{}", instance.replace(['.', '*', '>', ' '], "_")),
        runtime: tokio::runtime::Handle::current(),
        added: added.clone(),
    });
    tokio::spawn(follow(cluster.js.clone(), local, added));
    Ok(ledger)
}

/// Add every batch of the stream to `local`, in order, once; start again from the
/// last one added after any failure.
async fn follow(js: jetstream::Context, local: Arc<dyn AccountStore>, added: Arc<AtomicU64>) {
    use jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    loop {
        let start = added.load(Ordering::Acquire) + 1;
        let r: Result<(), String> = async {
            let stream = js.get_stream(STREAM).await.map_err(|e| e.to_string())?;
            let consumer = stream
                .create_consumer(OrderedConfig {
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: start,
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            let mut msgs = consumer.messages().await.map_err(|e| e.to_string())?;
            while let Some(m) = msgs.next().await {
                let m = m.map_err(|e| e.to_string())?;
                let seq = m.info().map_err(|e| e.to_string())?.stream_sequence;
                let rows = match serde_json::from_slice::<Vec<Row>>(&m.payload) {
                    Ok(rows) => from_rows(rows),
                    Err(e) => {
                        tracing::error!(seq, error = %e, "an unreadable usage batch in the cluster's stream; skipped");
                        Vec::new()
                    }
                };
                let l = local.clone();
                tokio::task::spawn_blocking(move || l.add_shared_usage(seq, &rows))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                added.store(seq, Ordering::Release);
            }
            Err("the stream's consumer ended".into())
        }
        .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "following the cluster's usage stream; again in a second");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
