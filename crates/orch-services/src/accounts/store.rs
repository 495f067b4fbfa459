//! The seam to the durable store of keys and usage: what the services need from it,
//! implemented by a real database outside this crate (`orch-store`, SQLite) or, in
//! tests, by anything that keeps rows.
//!
//! Calls are blocking: the services make them on tokio's blocking pool, never on a
//! request's path (the ledger writes in batches; keys are read once at start).

use crate::auth::Role;
use orch_domain::accounts::{UsageCounts, UsageGroupBy};
use orch_domain::Priority;
use std::sync::Arc;

/// A key made through the API, as stored: its SHA-256 digest, never the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub fingerprint: String,
    /// SHA-256 of the key, 64 hex digits.
    pub digest: String,
    pub tenant: String,
    pub role: Role,
    pub label: Option<String>,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
    pub last_used_ms: Option<u64>,
    pub pools: Option<Vec<String>>,
    pub priorities: Option<Vec<Priority>>,
}

/// The ledger's grain: one tenant's use of one pool's model with one key in one hour.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UsageKey {
    /// Start of the hour (ms since the epoch, UTC) the tasks ended in.
    pub hour_ms: u64,
    pub tenant: Arc<str>,
    /// The key's fingerprint; `-` for a request without one.
    pub key: Arc<str>,
    pub pool: Arc<str>,
    pub model: Arc<str>,
}

/// Which rows a report sums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub from_ms: u64,
    pub to_ms: u64,
    pub tenant: Option<String>,
    pub group_by: UsageGroupBy,
}

/// What went wrong in the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the account store failed: {0}")]
    Failed(String),
    #[error("the account store already holds {0}")]
    Duplicate(String),
}

/// A durable store of keys and usage.
pub trait AccountStore: Send + Sync + 'static {
    /// Every key made through the API, revoked ones included.
    fn keys(&self) -> Result<Vec<StoredKey>, StoreError>;
    /// Store a new key ([`StoreError::Duplicate`] when its fingerprint is taken).
    fn insert_key(&self, key: &StoredKey) -> Result<(), StoreError>;
    /// Mark a key revoked at `at_ms`; false when no such key is stored.
    fn revoke_key(&self, fingerprint: &str, at_ms: u64) -> Result<bool, StoreError>;
    /// Record when keys were last used.
    fn touch_keys(&self, used: &[(String, u64)]) -> Result<(), StoreError>;
    /// Add a batch of counts to the ledger, in one transaction.
    fn add_usage(&self, rows: &[(UsageKey, UsageCounts)]) -> Result<(), StoreError>;
    /// The ledger between `q.from_ms` and `q.to_ms`, summed by `q.group_by`, in the
    /// group's order.
    fn usage(&self, q: &UsageQuery) -> Result<Vec<(String, UsageCounts)>, StoreError>;
    /// Prompt plus output tokens per tenant since `since_ms` (budgets start from it).
    fn tokens_by_tenant(&self, since_ms: u64) -> Result<Vec<(String, u64)>, StoreError>;
    /// Add a batch of the cluster's shared usage log, once: with the batch, the store
    /// records `seq` (its place in the log) in the same transaction, and skips a batch
    /// at or below the place it recorded. True when the batch was added.
    fn add_shared_usage(
        &self,
        seq: u64,
        rows: &[(UsageKey, UsageCounts)],
    ) -> Result<bool, StoreError>;
    /// The place in the cluster's shared usage log of the last batch added (0: none).
    fn shared_usage_seq(&self) -> Result<u64, StoreError>;
}
