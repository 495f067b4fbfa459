//! Keys made through the API, shared by every instance of the cluster: a key made on
//! one instance works on all of them, and a revocation on any reaches all of them
//! (in the time the KV bucket's watch takes to deliver: milliseconds).
//!
//! Owns: the `ORCH_KEYS` KV bucket (replicated like the others, never expiring; one
//! record per key, by its fingerprint: the key's SHA-256 digest, tenant, role,
//! limits, expiry and revocation — never the key), the [`KeyReplica`] that publishes
//! to it, and the watcher that hands every record to the services'
//! `ManagedKeys::apply` (which refuses a record whose fingerprint does not belong to
//! its digest, and never takes back a revocation).
//! Trust: whoever may write to the cluster's NATS may add keys here, as they may
//! already submit as any tenant; NATS authentication and TLS (`[cluster]`) are what
//! keeps them out.

use crate::{Cluster, ClusterConfig, ClusterError};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use orch_domain::Priority;
use orch_services::accounts::{KeyReplica, StoreError, StoredKey};
use orch_services::{Accounts, Role};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Weak};
use std::time::Duration;

const BUCKET: &str = "ORCH_KEYS";
/// How long a key's publication is tried before the call that made it fails.
const PUBLISH_RETRY: Duration = Duration::from_secs(10);
const PUBLISH_PAUSE: Duration = Duration::from_millis(50);
const PUBLISH_PAUSE_MAX: Duration = Duration::from_millis(500);

/// A key as the bucket holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyRecord {
    fingerprint: String,
    digest: String,
    tenant: String,
    role: String,
    #[serde(default)]
    label: Option<String>,
    created_ms: u64,
    #[serde(default)]
    expires_ms: Option<u64>,
    #[serde(default)]
    revoked_ms: Option<u64>,
    #[serde(default)]
    pools: Option<Vec<String>>,
    #[serde(default)]
    priorities: Option<Vec<Priority>>,
}

impl From<&StoredKey> for KeyRecord {
    fn from(k: &StoredKey) -> Self {
        Self {
            fingerprint: k.fingerprint.clone(),
            digest: k.digest.clone(),
            tenant: k.tenant.clone(),
            role: k.role.as_str().to_string(),
            label: k.label.clone(),
            created_ms: k.created_ms,
            expires_ms: k.expires_ms,
            revoked_ms: k.revoked_ms,
            pools: k.pools.clone(),
            priorities: k.priorities.clone(),
        }
    }
}

impl KeyRecord {
    /// The stored key, or `None` for a role this build does not know.
    fn into_stored(self) -> Option<StoredKey> {
        Some(StoredKey {
            role: Role::parse(&self.role)?,
            fingerprint: self.fingerprint,
            digest: self.digest,
            tenant: self.tenant,
            label: self.label,
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
            revoked_ms: self.revoked_ms,
            last_used_ms: None,
            pools: self.pools,
            priorities: self.priorities,
        })
    }
}

/// The bucket's key for a fingerprint (`key:1a2b3c4d` → `key.1a2b3c4d`).
fn kv_key(fingerprint: &str) -> String {
    fingerprint.replace(':', ".")
}

struct KvKeys {
    kv: async_nats::jetstream::kv::Store,
}

impl KeyReplica for KvKeys {
    fn publish(&self, key: StoredKey) -> BoxFuture<'static, Result<(), StoreError>> {
        let kv = self.kv.clone();
        Box::pin(async move {
            let body: bytes::Bytes = serde_json::to_vec(&KeyRecord::from(&key))
                .map_err(|e| StoreError::Failed(e.to_string()))?
                .into();
            // a bucket can answer "no responders" for a moment (made a moment ago, or
            // electing a leader after a server's loss): tried again for a while, as
            // the other stores here are
            let t0 = tokio::time::Instant::now();
            let mut pause = PUBLISH_PAUSE;
            loop {
                match kv.put(kv_key(&key.fingerprint), body.clone()).await {
                    Ok(_) => return Ok(()),
                    Err(e) if t0.elapsed() < PUBLISH_RETRY => {
                        tracing::debug!(error = %e, "the cluster's key bucket did not take a key yet; trying again");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(PUBLISH_PAUSE_MAX);
                    }
                    Err(e) => {
                        return Err(StoreError::Failed(format!("the cluster's key bucket: {e}")))
                    }
                }
            }
        })
    }
}

fn apply(accounts: &Accounts, value: &[u8]) {
    match serde_json::from_slice::<KeyRecord>(value) {
        Ok(r) => match r.into_stored() {
            Some(k) => accounts.keys().apply(k),
            None => {
                tracing::warn!("a shared API key names a role this build does not know; ignored")
            }
        },
        Err(e) => tracing::warn!(error = %e, "a shared API key record is unreadable; ignored"),
    }
}

/// Share `accounts`' keys through the cluster: read every key it holds now (before
/// this instance serves, so a key revoked elsewhere is refused here from the start),
/// publish keys made or revoked here, and follow what the other instances publish.
pub async fn share(cfg: ClusterConfig, accounts: &Arc<Accounts>) -> Result<(), ClusterError> {
    let cluster = Cluster::connect(cfg).await?;
    let kv = cluster.kv_bucket(BUCKET, Duration::ZERO, false).await?;
    let setup = |e: String| ClusterError::Setup {
        what: format!("KV bucket {BUCKET}"),
        reason: e,
    };
    let mut names = kv.keys().await.map_err(|e| setup(e.to_string()))?;
    let mut n = 0;
    while let Some(name) = names.next().await {
        let name = name.map_err(|e| setup(e.to_string()))?;
        if let Some(v) = kv.get(&name).await.map_err(|e| setup(e.to_string()))? {
            apply(accounts, &v);
            n += 1;
        }
    }
    accounts
        .keys()
        .set_replica(Arc::new(KvKeys { kv: kv.clone() }));
    tokio::spawn(follow(kv, Arc::downgrade(accounts)));
    tracing::info!(keys = n, "API keys shared through the cluster");
    Ok(())
}

/// Hand every record the bucket delivers to the services, watching again after a
/// lost connection, until the services are gone.
async fn follow(kv: async_nats::jetstream::kv::Store, accounts: Weak<Accounts>) {
    use async_nats::jetstream::kv::Operation;
    loop {
        match kv.watch_with_history(">").await {
            Ok(mut w) => {
                while let Some(e) = w.next().await {
                    let Some(a) = accounts.upgrade() else {
                        return;
                    };
                    match e {
                        Ok(entry) if entry.operation == Operation::Put => apply(&a, &entry.value),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "the cluster's key watch failed; watching again");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch the cluster's keys; trying again"),
        }
        if accounts.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
