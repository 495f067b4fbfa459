//! Keys made at runtime and the usage ledger, as the API speaks them:
//! `POST/GET /v1/admin/keys`, `DELETE /v1/admin/keys/{fingerprint}` and
//! `GET /v1/usage`. Timestamps are RFC 3339 in UTC.

use crate::Priority;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A key to create (`POST /v1/admin/keys`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// The tenant the key acts for (1-64 characters of `[A-Za-z0-9._-]`).
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9._-]{1,64}$"))]
    pub tenant: String,
    /// `client` (the data plane; default) or `admin` (everything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^(client|admin)$"))]
    pub role: Option<String>,
    /// A note for operators (at most 200 characters, no control characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(max_length = 200, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")
    )]
    pub label: Option<String>,
    /// When the key stops working (RFC 3339, in the future; not with `ttl_s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub expires_at: Option<String>,
    /// Or: seconds from now until the key stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 3_153_600_000_u64))]
    pub ttl_s: Option<u64>,
    /// The only pools the key's tasks may run on (1-64 pool ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 64))]
    pub pools: Option<Vec<String>>,
    /// The only priorities the key may submit at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_items = 1))]
    pub priorities: Option<Vec<Priority>>,
}

/// What the server tells about a key: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyView {
    /// The key's name in logs, usage and `DELETE /v1/admin/keys/{fingerprint}`.
    pub fingerprint: String,
    pub tenant: String,
    pub role: String,
    /// `api` for keys made here (revocable), `config` for keys of the config file.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Last request the key authenticated, to the second (written within a second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pools: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priorities: Option<Vec<Priority>>,
}

/// A created key: `key` is shown here once and never again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedKey {
    pub key: String,
    #[serde(flatten)]
    pub view: KeyView,
}

/// `GET /v1/admin/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyList {
    pub keys: Vec<KeyView>,
}

/// What a usage report's rows are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum UsageGroupBy {
    Tenant,
    Key,
    Pool,
    Model,
    Hour,
}

impl UsageGroupBy {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageGroupBy::Tenant => "tenant",
            UsageGroupBy::Key => "key",
            UsageGroupBy::Pool => "pool",
            UsageGroupBy::Model => "model",
            UsageGroupBy::Hour => "hour",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "tenant" => UsageGroupBy::Tenant,
            "key" => UsageGroupBy::Key,
            "pool" => UsageGroupBy::Pool,
            "model" => UsageGroupBy::Model,
            "hour" => UsageGroupBy::Hour,
            _ => return None,
        })
    }
}

/// What tasks used, summed over a group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageCounts {
    /// Tasks that ended (completed, failed or canceled).
    pub tasks: u64,
    /// Prompt tokens of completed and canceled tasks, as the engine counted them.
    pub tokens_in: u64,
    /// Tokens streamed to clients.
    pub tokens_out: u64,
    /// Prompt tokens the engine served from its cache.
    pub tokens_cached: u64,
    pub canceled: u64,
    /// Failed tasks by error code.
    pub errors: BTreeMap<String, u64>,
}

impl UsageCounts {
    /// Add `other` into these counts.
    pub fn add(&mut self, other: &UsageCounts) {
        self.tasks += other.tasks;
        self.tokens_in += other.tokens_in;
        self.tokens_out += other.tokens_out;
        self.tokens_cached += other.tokens_cached;
        self.canceled += other.canceled;
        for (code, n) in &other.errors {
            *self.errors.entry(code.clone()).or_default() += n;
        }
    }
}

/// One row of a usage report: a group's name and its counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageRow {
    /// The tenant, key fingerprint (`-` for none), pool, model, or the hour's start.
    pub group: String,
    #[serde(flatten)]
    pub counts: UsageCounts,
}

/// `GET /v1/usage`: the ledger between `from` (inclusive) and `to` (exclusive),
/// counted by the hour each task ended in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageReport {
    pub from: String,
    pub to: String,
    pub group_by: UsageGroupBy,
    /// Only this tenant's usage (always set for a client key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub rows: Vec<UsageRow>,
    pub total: UsageCounts,
}

/// A tenant's token budgets and what it used of them (`GET /v1/capabilities`).
/// Tokens are prompt plus output tokens, by the UTC day and month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BudgetCaps {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_month: Option<u64>,
    /// Tokens used today, plus what running and queued tasks hold.
    pub used_today: u64,
    pub used_this_month: u64,
    pub day_resets_at: String,
    pub month_resets_at: String,
}
