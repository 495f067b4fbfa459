//! API keys: who a caller is (its tenant) and what it may do (its role).
//!
//! Owns: the key ring, which holds only SHA-256 digests of keys. A presented key is
//! hashed and compared with every digest in constant time (`subtle`; comparing
//! fixed-size digests also hides the key's length), with no early exit on a match.
//! Never: keeps, logs or returns a key; logs name a key by its [`fingerprint`].

use orch_domain::Priority;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The data plane: tasks, streams, sessions, capabilities.
    Client,
    /// Everything, including the control plane.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "client" => Some(Role::Client),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The tenant a request acts for when the server runs without keys.
pub const OPEN_TENANT: &str = "anonymous";

/// What a key is limited to beyond its role (spec §3: a valid key not allowed a
/// priority or pool gets 403). `None` in a field means no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub priorities: Option<Vec<Priority>>,
    pub pools: Option<Vec<String>>,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: Arc<str>,
    pub role: Role,
    /// Short, non-reversible name of the key used (for logs), if any.
    pub key_fingerprint: Option<Arc<str>>,
    /// The key's limits, if it has any.
    pub scope: Option<Arc<Scope>>,
}

impl Caller {
    /// The caller of a server with no keys configured (loopback only): an admin of
    /// the `anonymous` tenant.
    pub fn open() -> Self {
        Self {
            tenant: OPEN_TENANT.into(),
            role: Role::Admin,
            key_fingerprint: None,
            scope: None,
        }
    }

    /// A caller of `tenant` with `role`, without a key (embedders, tests).
    pub fn of(tenant: &str, role: Role) -> Self {
        Self {
            tenant: tenant.into(),
            role,
            key_fingerprint: None,
            scope: None,
        }
    }

    /// The same caller limited to `scope`.
    pub fn with_scope(mut self, scope: Scope) -> Self {
        self.scope = Some(Arc::new(scope));
        self
    }

    /// May this caller submit at `p`?
    pub fn may_use_priority(&self, p: Priority) -> bool {
        match self.scope.as_ref().and_then(|s| s.priorities.as_ref()) {
            Some(allowed) => allowed.contains(&p),
            None => true,
        }
    }

    /// May this caller's tasks run on pool `id`?
    pub fn may_use_pool(&self, id: &str) -> bool {
        match self.scope.as_ref().and_then(|s| s.pools.as_ref()) {
            Some(allowed) => allowed.iter().any(|a| a == id),
            None => true,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// May this caller see a task or session of `owner`? Its own tenant's, or any
    /// for an admin.
    pub fn may_see(&self, owner: &str) -> bool {
        self.is_admin() || *self.tenant == *owner
    }
}

/// A key ring entry that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key digest must be 64 hex digits (the SHA-256 of the key), got {0} characters")]
    BadDigest(usize),
    #[error("tenant name {0:?} must be 1-64 characters of [A-Za-z0-9._-]")]
    BadTenant(String),
}

struct Entry {
    digest: [u8; 32],
    tenant: Arc<str>,
    role: Role,
    fingerprint: Arc<str>,
    scope: Option<Arc<Scope>>,
}

/// Digests of the accepted keys with their tenant and role.
#[derive(Default)]
pub struct KeyRing {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("keys", &self.entries.len())
            .finish()
    }
}

/// Is this a valid tenant name (used in metric labels and logs)?
pub fn valid_tenant(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn sha256(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 digest of a key as 64 hex digits: what the key ring stores.
pub fn digest_hex(key: &str) -> String {
    hex(&sha256(key))
}

/// A short name for a key in logs: the first 8 hex digits of a second hash, so it
/// reveals nothing about the key and does not match the stored digest either.
pub fn fingerprint(key: &str) -> String {
    fingerprint_of_digest(&sha256(key))
}

pub(crate) fn fingerprint_of_digest(digest: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(b"orchestratord key fingerprint\0");
    h.update(digest);
    format!("key:{}", &hex(&h.finalize())[..8])
}

/// A fresh random key (32 bytes from the OS, hex) with the `oqk_` prefix.
pub fn new_key() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)?;
    Ok(format!("oqk_{}", hex(&b)))
}

fn parse_digest(s: &str) -> Result<[u8; 32], KeyError> {
    let s = s.trim();
    let bad = || KeyError::BadDigest(s.chars().count());
    if s.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(chunk).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

impl KeyRing {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a key by its SHA-256 digest (64 hex digits).
    pub fn add_digest(
        &mut self,
        digest_hex: &str,
        tenant: &str,
        role: Role,
    ) -> Result<(), KeyError> {
        self.add_scoped(digest_hex, tenant, role, None)
    }

    /// Add a key by its digest, limited to `scope` when given.
    pub fn add_scoped(
        &mut self,
        digest_hex: &str,
        tenant: &str,
        role: Role,
        scope: Option<Scope>,
    ) -> Result<(), KeyError> {
        if !valid_tenant(tenant) {
            return Err(KeyError::BadTenant(tenant.to_string()));
        }
        let digest = parse_digest(digest_hex)?;
        self.entries.push(Entry {
            fingerprint: fingerprint_of_digest(&digest).into(),
            digest,
            tenant: tenant.into(),
            role,
            scope: scope.map(Arc::new),
        });
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The keys as callers (fingerprint, tenant, role, scope), in file order: what
    /// `GET /v1/admin/keys` lists of the config file's keys.
    pub fn callers(&self) -> Vec<Caller> {
        self.entries
            .iter()
            .map(|e| Caller {
                tenant: e.tenant.clone(),
                role: e.role,
                key_fingerprint: Some(e.fingerprint.clone()),
                scope: e.scope.clone(),
            })
            .collect()
    }

    /// Is a key of this fingerprint in the ring?
    pub fn has_fingerprint(&self, fp: &str) -> bool {
        self.entries.iter().any(|e| &*e.fingerprint == fp)
    }

    /// Tenants named by the keys (sorted, unique).
    pub fn tenants(&self) -> Vec<String> {
        let mut t: Vec<String> = self.entries.iter().map(|e| e.tenant.to_string()).collect();
        t.sort();
        t.dedup();
        t
    }

    /// The caller a presented key belongs to. Every digest is compared, in constant
    /// time, whatever matches.
    pub fn authenticate(&self, presented: &str) -> Option<Caller> {
        let d = sha256(presented);
        let mut found: Option<&Entry> = None;
        for e in &self.entries {
            let hit: bool = e.digest.ct_eq(&d).into();
            if hit && found.is_none() {
                found = Some(e);
            }
        }
        found.map(|e| Caller {
            tenant: e.tenant.clone(),
            role: e.role,
            key_fingerprint: Some(e.fingerprint.clone()),
            scope: e.scope.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticates_by_digest_only() {
        let key = new_key().unwrap();
        let mut ring = KeyRing::new();
        ring.add_digest(&digest_hex(&key), "acme", Role::Client)
            .unwrap();
        let c = ring.authenticate(&key).unwrap();
        assert_eq!(&*c.tenant, "acme");
        assert_eq!(c.role, Role::Client);
        assert_eq!(
            c.key_fingerprint.as_deref(),
            Some(fingerprint(&key).as_str())
        );
        assert!(!fingerprint(&key).contains(&digest_hex(&key)[..8]));
        // one byte off, a prefix, and the digest itself are all refused
        let mut off = key.clone().into_bytes();
        let last = off.len() - 1;
        off[last] = if off[last] == b'0' { b'1' } else { b'0' };
        assert!(ring
            .authenticate(std::str::from_utf8(&off).unwrap())
            .is_none());
        assert!(ring.authenticate(&key[..key.len() - 1]).is_none());
        assert!(ring.authenticate(&digest_hex(&key)).is_none());
    }

    #[test]
    fn refuses_malformed_entries() {
        let mut ring = KeyRing::new();
        assert_eq!(
            ring.add_digest("abc", "t", Role::Admin),
            Err(KeyError::BadDigest(3))
        );
        let d = digest_hex("k");
        assert!(matches!(
            ring.add_digest(&d, "bad tenant", Role::Admin),
            Err(KeyError::BadTenant(_))
        ));
        assert!(ring.is_empty());
    }

    #[test]
    fn new_keys_differ() {
        assert_ne!(new_key().unwrap(), new_key().unwrap());
        assert!(new_key().unwrap().starts_with("oqk_"));
    }
}
