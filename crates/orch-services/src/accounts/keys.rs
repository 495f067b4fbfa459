//! Keys made at runtime (`POST /v1/admin/keys`): created, listed and revoked without
//! editing a file, kept in the [`AccountStore`] and in memory.
//!
//! Owns: the in-memory map from a key's SHA-256 digest to its entry, and each
//! entry's last-use time (written to the store by the accounts' flush, within a
//! second). A key is looked up by its digest: what a lookup's timing could reveal is
//! about the digest, which a caller cannot steer, not about any stored key.
//! A revoked or expired key authenticates nothing from the moment it is revoked or
//! expires. Keys of the config file stay in the [`KeyRing`](crate::KeyRing) and
//! cannot be revoked here.
//! In cluster mode a [`KeyReplica`] shares every key made or revoked here with the
//! other instances (published before it is answered), and [`ManagedKeys::apply`]
//! takes theirs: a key made on one instance works on all, a revocation reaches all.
//! Never: keeps, logs or returns a key after it was created.

use super::calendar::{now_ms, rfc3339};
use super::store::{AccountStore, StoreError, StoredKey};
use crate::auth::{self, Caller, Role, Scope};
use futures_util::future::BoxFuture;
use orch_domain::accounts::{KeyView, NewKey};
use orch_domain::{ErrorCode, OrchError};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Longest `ttl_s` (100 years).
pub const TTL_MAX_S: u64 = 3_153_600_000;

/// Longest label.
pub const LABEL_MAX_CHARS: usize = 200;

struct Entry {
    stored: StoredKey,
    caller: Caller,
    revoked: AtomicBool,
    /// ms of the last request the key authenticated (0 = never).
    last_used: AtomicU64,
    /// What the store holds of `last_used`.
    last_flushed: AtomicU64,
}

impl Entry {
    fn new(stored: StoredKey) -> Self {
        let scope = (stored.pools.is_some() || stored.priorities.is_some()).then(|| Scope {
            pools: stored.pools.clone(),
            priorities: stored.priorities.clone(),
        });
        let mut caller = Caller::of(&stored.tenant, stored.role);
        caller.key_fingerprint = Some(stored.fingerprint.as_str().into());
        if let Some(s) = scope {
            caller = caller.with_scope(s);
        }
        let used = stored.last_used_ms.unwrap_or(0);
        Self {
            revoked: AtomicBool::new(stored.revoked_ms.is_some()),
            last_used: AtomicU64::new(used),
            last_flushed: AtomicU64::new(used),
            caller,
            stored,
        }
    }

    /// This key revoked at `at_ms` (or when it already was), with its last use.
    fn revoked(&self, at_ms: u64) -> Arc<Entry> {
        let mut stored = self.stored.clone();
        stored.revoked_ms.get_or_insert(at_ms);
        let e = Entry::new(stored);
        e.last_used
            .store(self.last_used.load(Ordering::Acquire), Ordering::Release);
        Arc::new(e)
    }

    fn view(&self) -> KeyView {
        let s = &self.stored;
        let used = self.last_used.load(Ordering::Acquire);
        KeyView {
            fingerprint: s.fingerprint.clone(),
            tenant: s.tenant.clone(),
            role: s.role.as_str().to_string(),
            source: "api".into(),
            label: s.label.clone(),
            created_at: Some(rfc3339(s.created_ms)),
            expires_at: s.expires_ms.map(rfc3339),
            last_used_at: (used > 0).then(|| rfc3339(used)),
            revoked_at: s.revoked_ms.map(rfc3339),
            pools: s.pools.clone(),
            priorities: s.priorities.clone(),
        }
    }
}

/// Shares keys with the other instances of a cluster (orch-cluster implements it on
/// a replicated KV bucket). A key made or revoked here is published before the call
/// that made or revoked it is answered.
pub trait KeyReplica: Send + Sync + 'static {
    fn publish(&self, key: StoredKey) -> BoxFuture<'static, Result<(), StoreError>>;
}

/// The keys made at runtime.
pub struct ManagedKeys {
    /// Where keys are shared with other instances (cluster mode).
    replica: std::sync::OnceLock<Arc<dyn KeyReplica>>,
    store: Arc<dyn AccountStore>,
    /// Revocations in force here that the store has not taken yet (retried by the
    /// flusher each second, so a restart does not bring the key back).
    unstored: std::sync::Mutex<Vec<(String, u64)>>,
    by_digest: RwLock<HashMap<[u8; 32], Arc<Entry>>>,
}

impl std::fmt::Debug for ManagedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedKeys")
            .field("keys", &self.read().len())
            .finish()
    }
}

fn store_error(e: StoreError) -> OrchError {
    tracing::error!(error = %e, "the account store failed");
    OrchError::internal("the account store failed; the server log says why")
}

fn digest_bytes(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// Run a blocking store call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, OrchError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(store_error),
        Err(e) => Err(OrchError::internal(format!("account store call: {e}"))),
    }
}

impl ManagedKeys {
    /// The keys `store` holds (read once, at start: blocking).
    pub fn load(store: Arc<dyn AccountStore>) -> Result<Self, StoreError> {
        let mut map = HashMap::new();
        for k in store.keys()? {
            match digest_bytes(&k.digest) {
                Some(d) => {
                    map.insert(d, Arc::new(Entry::new(k)));
                }
                None => {
                    tracing::warn!(key = %k.fingerprint, "a stored key has a malformed digest; skipped")
                }
            }
        }
        Ok(Self {
            store,
            replica: std::sync::OnceLock::new(),
            unstored: std::sync::Mutex::new(Vec::new()),
            by_digest: RwLock::new(map),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<[u8; 32], Arc<Entry>>> {
        self.by_digest.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The caller of a presented key: `None` for a key never made, revoked or expired.
    pub fn authenticate(&self, presented: &str) -> Option<Caller> {
        let d: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let e = self.read().get(&d).cloned()?;
        if e.revoked.load(Ordering::Acquire) {
            return None;
        }
        let now = now_ms();
        if e.stored.expires_ms.is_some_and(|x| now >= x) {
            return None;
        }
        // to the second: a key used all the time is not rewritten per request
        if now / 1000 > e.last_used.load(Ordering::Relaxed) / 1000 {
            e.last_used.store(now, Ordering::Release);
        }
        Some(e.caller.clone())
    }

    /// Share keys through `replica` from now on (once, before serving).
    pub fn set_replica(&self, replica: Arc<dyn KeyReplica>) {
        let _ = self.replica.set(replica);
    }

    /// Take a key another instance made or revoked. A record whose fingerprint does
    /// not belong to its digest is refused; a revocation is final (a later record
    /// without one does not bring the key back).
    pub fn apply(&self, k: StoredKey) {
        let Some(d) = digest_bytes(&k.digest) else {
            tracing::warn!(key = %k.fingerprint, "a shared key has a malformed digest; ignored");
            return;
        };
        if auth::fingerprint_of_digest(&d) != k.fingerprint || !auth::valid_tenant(&k.tenant) {
            tracing::warn!(key = %k.fingerprint, "a shared key does not match its digest or names no valid tenant; ignored");
            return;
        }
        let mut map = self.by_digest.write().unwrap_or_else(|p| p.into_inner());
        match map.get(&d) {
            Some(e) if e.revoked.load(Ordering::Acquire) || k.revoked_ms.is_none() => {}
            Some(e) => {
                e.revoked.store(true, Ordering::Release);
                let replaced = e.revoked(k.revoked_ms.unwrap_or_else(now_ms));
                tracing::info!(key = %k.fingerprint, "API key revoked on another instance");
                map.insert(d, replaced);
            }
            None => {
                tracing::info!(key = %k.fingerprint, tenant = %k.tenant, "API key made on another instance");
                map.insert(d, Arc::new(Entry::new(k)));
            }
        }
    }

    /// Was this key made here (revoked or expired ones too)?
    pub fn is_known(&self, presented: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.read().contains_key(&d)
    }

    /// A revocation the store did not take: retried by the flusher.
    pub(crate) fn revoke_unstored(&self, fingerprint: &str, at_ms: u64) {
        self.unstored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((fingerprint.to_string(), at_ms));
    }

    pub(crate) fn take_unstored_revokes(&self) -> Vec<(String, u64)> {
        std::mem::take(&mut *self.unstored.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Is a key of this fingerprint held (revoked ones too)?
    pub fn has_fingerprint(&self, fp: &str) -> bool {
        self.read().values().any(|e| e.stored.fingerprint == fp)
    }

    /// Make a key from `req`: the key (shown once) and its view. `taken` says whether
    /// a fingerprint is already in use elsewhere (the config file's keys).
    pub async fn create(
        &self,
        req: NewKey,
        taken: impl Fn(&str) -> bool,
    ) -> Result<(String, KeyView), OrchError> {
        let now = now_ms();
        let stored_template = validate(&req, now)?;
        // a fresh key whose fingerprint names no other key
        let mut key = String::new();
        for _ in 0..8 {
            let k = auth::new_key().map_err(|e| OrchError::internal(format!("random key: {e}")))?;
            let fp = auth::fingerprint(&k);
            if !taken(&fp) && !self.has_fingerprint(&fp) {
                key = k;
                break;
            }
        }
        if key.is_empty() {
            return Err(OrchError::internal("no free key fingerprint"));
        }
        let stored = StoredKey {
            fingerprint: auth::fingerprint(&key),
            digest: auth::digest_hex(&key),
            created_ms: now,
            ..stored_template
        };
        if let Some(r) = self.replica.get() {
            // the other instances have it before anyone holds the key
            r.publish(stored.clone()).await.map_err(store_error)?;
        }
        let store = self.store.clone();
        let s = stored.clone();
        blocking(move || store.insert_key(&s)).await?;
        let entry = Arc::new(Entry::new(stored.clone()));
        let view = entry.view();
        if let Some(d) = digest_bytes(&stored.digest) {
            self.by_digest
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(d, entry);
        }
        tracing::info!(key = %view.fingerprint, tenant = %view.tenant, role = %view.role,
            expires_at = view.expires_at.as_deref().unwrap_or("-"), "API key created");
        Ok((key, view))
    }

    /// Revoke the key named by `fingerprint`, at once. 404 for no such key made here.
    pub async fn revoke(&self, fingerprint: &str) -> Result<KeyView, OrchError> {
        let entry = self
            .read()
            .values()
            .find(|e| e.stored.fingerprint == fingerprint)
            .cloned()
            .ok_or_else(|| {
                OrchError::new(
                    ErrorCode::NotFound,
                    format!("no API key {fingerprint} was made through the API"),
                )
            })?;
        // refused from now on, before the store has it
        entry.revoked.store(true, Ordering::Release);
        let now = now_ms();
        if let Some(r) = self.replica.get() {
            r.publish(entry.revoked(now).stored.clone()).await.map_err(|e| {
                tracing::error!(key = %fingerprint, error = %e, "API key revoked here but not shared with the other instances; revoke it again");
                store_error(e)
            })?;
        }
        let store = self.store.clone();
        let fp = fingerprint.to_string();
        if let Err(e) = blocking(move || store.revoke_key(&fp, now)).await {
            // in force here already; stored by the flusher's next tries
            self.revoke_unstored(fingerprint, now);
            tracing::error!(key = %fingerprint, "API key revoked here but not stored yet; retried each second");
            return Err(e);
        }
        if entry.stored.revoked_ms.is_some() {
            return Ok(entry.view());
        }
        let replaced = entry.revoked(now);
        if let Some(d) = digest_bytes(&entry.stored.digest) {
            self.by_digest
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(d, replaced.clone());
        }
        tracing::info!(key = %fingerprint, tenant = %entry.stored.tenant, "API key revoked");
        Ok(replaced.view())
    }

    /// Every key made here, oldest first.
    pub fn list(&self) -> Vec<KeyView> {
        let mut v: Vec<(u64, KeyView)> = self
            .read()
            .values()
            .map(|e| (e.stored.created_ms, e.view()))
            .collect();
        v.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| a.1.fingerprint.cmp(&b.1.fingerprint))
        });
        v.into_iter().map(|(_, k)| k).collect()
    }

    /// Last uses not yet written, marked written (the flush writes them).
    pub(crate) fn take_touched(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for e in self.read().values() {
            let used = e.last_used.load(Ordering::Acquire);
            if used > e.last_flushed.swap(used, Ordering::AcqRel) {
                out.push((e.stored.fingerprint.clone(), used));
            }
        }
        out
    }
}

/// The stored form of a valid request (fingerprint, digest and creation time unset).
fn validate(req: &NewKey, now: u64) -> Result<StoredKey, OrchError> {
    if !auth::valid_tenant(&req.tenant) {
        return Err(OrchError::invalid(
            "tenant",
            "must be 1-64 characters of [A-Za-z0-9._-]",
        ));
    }
    let role = match req.role.as_deref() {
        None => Role::Client,
        Some(r) => Role::parse(r)
            .ok_or_else(|| OrchError::invalid("role", "must be `client` or `admin`"))?,
    };
    if let Some(l) = &req.label {
        if l.chars().count() > LABEL_MAX_CHARS || l.chars().any(char::is_control) {
            return Err(OrchError::invalid(
                "label",
                format!("at most {LABEL_MAX_CHARS} characters, no control characters"),
            ));
        }
    }
    let expires_ms = match (&req.expires_at, req.ttl_s) {
        (Some(_), Some(_)) => {
            return Err(OrchError::invalid(
                "expires_at",
                "give expires_at or ttl_s, not both",
            ))
        }
        (Some(at), None) => {
            let ms = super::calendar::parse_rfc3339(at)
                .ok_or_else(|| OrchError::invalid("expires_at", "must be an RFC 3339 timestamp"))?;
            if ms <= now {
                return Err(OrchError::invalid("expires_at", "must be in the future"));
            }
            Some(ms)
        }
        (None, Some(s)) if !(1..=TTL_MAX_S).contains(&s) => {
            return Err(OrchError::invalid(
                "ttl_s",
                format!("must be 1..={TTL_MAX_S} (100 years)"),
            ))
        }
        (None, Some(s)) => Some(now.saturating_add(s.saturating_mul(1000))),
        (None, None) => None,
    };
    if let Some(p) = &req.pools {
        if p.is_empty() || p.len() > 64 || p.iter().any(|x| x.is_empty() || x.len() > 128) {
            return Err(OrchError::invalid(
                "pools",
                "1-64 pool ids of 1-128 characters",
            ));
        }
    }
    if req.priorities.as_ref().is_some_and(Vec::is_empty) {
        return Err(OrchError::invalid(
            "priorities",
            "must name at least one priority",
        ));
    }
    Ok(StoredKey {
        fingerprint: String::new(),
        digest: String::new(),
        tenant: req.tenant.clone(),
        role,
        label: req.label.clone(),
        created_ms: now,
        expires_ms,
        revoked_ms: None,
        last_used_ms: None,
        pools: req.pools.clone(),
        priorities: req.priorities.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::store::{UsageKey, UsageQuery};
    use orch_domain::accounts::UsageCounts;

    /// A store that holds nothing (apply never writes).
    struct Empty;
    impl AccountStore for Empty {
        fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
            Ok(Vec::new())
        }
        fn insert_key(&self, _: &StoredKey) -> Result<(), StoreError> {
            Ok(())
        }
        fn revoke_key(&self, _: &str, _: u64) -> Result<bool, StoreError> {
            Ok(true)
        }
        fn touch_keys(&self, _: &[(String, u64)]) -> Result<(), StoreError> {
            Ok(())
        }
        fn add_usage(&self, _: &[(UsageKey, UsageCounts)]) -> Result<(), StoreError> {
            Ok(())
        }
        fn usage(&self, _: &UsageQuery) -> Result<Vec<(String, UsageCounts)>, StoreError> {
            Ok(Vec::new())
        }
        fn tokens_by_tenant(&self, _: u64) -> Result<Vec<(String, u64)>, StoreError> {
            Ok(Vec::new())
        }
        fn add_shared_usage(
            &self,
            _: u64,
            _: &[(UsageKey, UsageCounts)],
        ) -> Result<bool, StoreError> {
            Ok(true)
        }
        fn shared_usage_seq(&self) -> Result<u64, StoreError> {
            Ok(0)
        }
    }

    fn shared(key: &str, revoked: bool) -> StoredKey {
        StoredKey {
            fingerprint: auth::fingerprint(key),
            digest: auth::digest_hex(key),
            tenant: "acme".into(),
            role: Role::Client,
            label: None,
            created_ms: 1,
            expires_ms: None,
            revoked_ms: revoked.then_some(2),
            last_used_ms: None,
            pools: None,
            priorities: None,
        }
    }

    #[test]
    fn another_instances_keys_work_here_and_a_revocation_is_final() {
        let keys = ManagedKeys::load(Arc::new(Empty)).unwrap();
        keys.apply(shared("oqk_a", false));
        assert_eq!(&*keys.authenticate("oqk_a").unwrap().tenant, "acme");
        keys.apply(shared("oqk_a", true));
        assert!(keys.authenticate("oqk_a").is_none());
        // a late record without the revocation does not bring it back
        keys.apply(shared("oqk_a", false));
        assert!(keys.authenticate("oqk_a").is_none());
        assert!(keys.is_known("oqk_a"));
    }

    #[test]
    fn a_record_whose_fingerprint_is_not_its_digests_is_refused() {
        let keys = ManagedKeys::load(Arc::new(Empty)).unwrap();
        let mut forged = shared("oqk_b", false);
        forged.fingerprint = auth::fingerprint("oqk_other");
        keys.apply(forged);
        assert!(keys.authenticate("oqk_b").is_none());
        let mut bad_tenant = shared("oqk_c", false);
        bad_tenant.tenant = "no spaces allowed".into();
        keys.apply(bad_tenant);
        assert!(keys.authenticate("oqk_c").is_none());
    }
}
