//! `[auth]` and the keys file: accepted keys (digests only, with their tenant, role
//! and limits) and who may scrape `/metrics`.

use serde::Deserialize;

/// `[auth]`: API keys (digests only) and what `/metrics` needs.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// A TOML file with more `[[keys]]` entries (relative to the config file).
    pub keys_file: Option<String>,
    /// `open` or `admin`: whether scraping `/metrics` needs an admin key. Absent:
    /// `admin` when keys are configured (metrics name tenants), `open` without keys.
    pub metrics: Option<MetricsAccess>,
    pub keys: Vec<KeyEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricsAccess {
    Open,
    Admin,
}

impl AuthSection {
    /// Whether `/metrics` needs an admin key: as configured, else whenever keys are.
    pub fn metrics_admin_only(&self) -> bool {
        match self.metrics {
            Some(m) => m == MetricsAccess::Admin,
            None => !self.keys.is_empty() || self.keys_file.is_some(),
        }
    }
}

/// One accepted key: the SHA-256 of the key (never the key), its tenant and role.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub sha256: String,
    pub tenant: String,
    /// `client` (data plane) or `admin` (everything).
    pub role: String,
    /// Priorities this key may submit (absent: all). A key without `interactive`
    /// that asks for it gets 403.
    #[serde(default)]
    pub priorities: Option<Vec<orch_domain::Priority>>,
    /// Pools this key's tasks may run on (absent: all).
    #[serde(default)]
    pub pools: Option<Vec<String>>,
}

impl KeyEntry {
    /// The key's limits, if it has any.
    pub fn scope(&self) -> Option<orch_services::auth::Scope> {
        (self.priorities.is_some() || self.pools.is_some()).then(|| orch_services::auth::Scope {
            priorities: self.priorities.clone(),
            pools: self.pools.clone(),
        })
    }
}

/// The keys file: `[[keys]]` entries.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    #[serde(default)]
    pub keys: Vec<KeyEntry>,
}
