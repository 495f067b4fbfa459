//! Pool-leader leases in a replicated KV bucket whose values expire by age: the first
//! `create` of a key holds it, the holder renews by revision (a compare-and-set, so a
//! holder that lost the lease cannot take it back), and a lease not renewed within the
//! bucket's TTL disappears so another instance can create it. Lease keys are never
//! deleted: async-nats's `create` is not atomic after a delete.

use crate::{Cluster, ClusterError};
use async_nats::jetstream::kv::{CreateErrorKind, Store};
use std::time::Duration;

/// The bucket of leases, with their time to live.
#[derive(Clone)]
pub struct Leases {
    kv: Store,
    pub ttl: Duration,
}

/// A held lease: its key, who holds it, and the revision its next renewal must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: String,
    pub holder: String,
    pub revision: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Someone else holds it.
    #[error("lease {0} is held by another instance")]
    Held(String),
    /// A renewal failed: the lease expired or was taken; the holder must stop (fence).
    #[error("lease {key} lost: {reason}")]
    Lost { key: String, reason: String },
    /// The bucket could not be reached (no quorum, timeout).
    #[error("lease {key}: the cluster did not answer: {reason}")]
    Unavailable { key: String, reason: String },
}

const BUCKET: &str = "orch_leases";

impl Cluster {
    /// The lease bucket, created if missing, whose values live `ttl` unless renewed.
    pub async fn leases(&self, ttl: Duration) -> Result<Leases, ClusterError> {
        let kv = self.kv_bucket(BUCKET, ttl, true).await?;
        Ok(Leases { kv, ttl })
    }
}

impl Leases {
    /// Take the lease `key` for `holder` if nobody holds it.
    pub async fn acquire(&self, key: &str, holder: &str) -> Result<Lease, LeaseError> {
        match self.kv.create(key, holder.to_string().into()).await {
            Ok(revision) => Ok(Lease {
                key: key.to_string(),
                holder: holder.to_string(),
                revision,
            }),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                Err(LeaseError::Held(key.into()))
            }
            Err(e) => Err(LeaseError::Unavailable {
                key: key.into(),
                reason: e.to_string(),
            }),
        }
    }

    /// Renew a held lease (compare-and-set on its revision). A renewal refused for its
    /// revision may be one whose earlier try was stored but not acknowledged (a
    /// server's loss): when the key still names this holder, its stored revision is
    /// taken and the renewal is to be tried again (`Unavailable`; a replica that lags
    /// may show an older revision first). Holder names are unique per process.
    pub async fn renew(&self, lease: &mut Lease) -> Result<(), LeaseError> {
        let e = match self
            .kv
            .update(&lease.key, lease.holder.clone().into(), lease.revision)
            .await
        {
            Ok(revision) => {
                lease.revision = revision;
                return Ok(());
            }
            Err(e) => e,
        };
        let conflict = e.kind() == async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision
            || crate::is_wrong_last_sequence(&e);
        if !conflict {
            return Err(LeaseError::Unavailable {
                key: lease.key.clone(),
                reason: e.to_string(),
            });
        }
        match self.kv.entry(&lease.key).await {
            Ok(Some(entry))
                if entry.operation == async_nats::jetstream::kv::Operation::Put
                    && *entry.value == *lease.holder.as_bytes() =>
            {
                tracing::info!(key = %lease.key, "a lease renewal landed unacknowledged; renewing from it");
                lease.revision = entry.revision;
                Err(LeaseError::Unavailable {
                    key: lease.key.clone(),
                    reason: "renewing from the stored revision".into(),
                })
            }
            Ok(_) => Err(LeaseError::Lost {
                key: lease.key.clone(),
                reason: e.to_string(),
            }),
            Err(e) => Err(LeaseError::Unavailable {
                key: lease.key.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// Who holds `key` now, if anyone (may lag the leader by a moment).
    pub async fn holder(&self, key: &str) -> Result<Option<String>, LeaseError> {
        self.kv
            .get(key)
            .await
            .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
            .map_err(|e| LeaseError::Unavailable {
                key: key.into(),
                reason: e.to_string(),
            })
    }
}

/// Renew within half the TTL, trying again while the bucket cannot answer (its stream
/// may be electing a leader); false when the lease was lost (someone else's revision)
/// or that time ran out. Called a third of the TTL after the last renewal, so a
/// leader gives up a sixth of the TTL before its lease can expire.
/// Pause between renewals the bucket did not answer.
const RENEW_RETRY: Duration = Duration::from_millis(50);

async fn renew_in_time(leases: &Leases, lease: &mut Lease) -> bool {
    let deadline = tokio::time::Instant::now() + leases.ttl / 2;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, leases.renew(lease)).await {
            Ok(Ok(())) => return true,
            Ok(Err(LeaseError::Unavailable { .. })) if !left.is_zero() => {
                tokio::time::sleep(RENEW_RETRY.min(left)).await;
            }
            _ => return false,
        }
    }
}

/// Keep trying to lead `key` as `holder`: acquire when free, renew every third of the
/// TTL while leading, and step down (fence) as soon as the lease is lost or could not
/// be renewed within half the TTL (see `renew_in_time`), before anyone else could take
/// it. The receiver
/// says whether this instance leads now; the task runs until the returned handle is
/// aborted or dropped with the runtime. The first bid waits `first_bid_after` (so
/// that, at start, the instance that prefers a key gets it).
pub fn lead(
    leases: Leases,
    key: String,
    holder: String,
    first_bid_after: Duration,
) -> (
    tokio::sync::watch::Receiver<bool>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let handle = tokio::spawn(async move {
        tokio::time::sleep(first_bid_after).await;
        let tick = leases.ttl / 3;
        // a bid is one create request: bidding twice per renewal tick takes a dead
        // holder's key sooner (failover is the TTL plus at most one bid interval)
        let bid = leases.ttl / 6;
        loop {
            let mut lease = match leases.acquire(&key, &holder).await {
                Ok(l) => l,
                Err(_) => {
                    tokio::time::sleep(bid).await;
                    continue;
                }
            };
            tracing::info!(key, holder, "leading");
            tx.send_replace(true);
            loop {
                tokio::time::sleep(tick).await;
                if !renew_in_time(&leases, &mut lease).await {
                    tracing::warn!(key, holder, "lease renewal failed: stepping down");
                    tx.send_replace(false);
                    break;
                }
            }
        }
    });
    (rx, handle)
}
