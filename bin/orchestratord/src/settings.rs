//! The services' settings from the config file: the conversions startup and live
//! reconfiguration share (so neither imports the other).

use crate::config::{Config, FairnessChoice, PlacementChoice, PoolConfig};
use orch_services::{
    config::PlacementMode, PoolSpec, Quotas, Retention, ServiceConfig, Tenancy, TenantSpec,
};
use orchestrator_core::{Fairness, QueueConfig};
use std::net::SocketAddr;
use std::time::Duration;

pub fn service_config(cfg: &Config) -> ServiceConfig {
    let s = &cfg.server;
    ServiceConfig {
        stream_grace: Duration::from_millis(s.stream_grace_ms),
        max_readers_per_task: s.max_readers_per_task,
        record_ttl: Duration::from_millis(s.record_ttl_ms),
        retention: Retention {
            max_frames_records: s.retained_tasks_max,
            max_frames_bytes: s.retained_bytes_max,
            max_summaries: s.summaries_max,
            summary_ttl: Duration::from_millis(s.summary_ttl_ms),
        },
        session_ttl: Duration::from_millis(s.session_ttl_ms),
        max_sessions: s.sessions_max,
        session_token_budget: s.session_token_budget,
        tenancy: tenancy(cfg),
        ..ServiceConfig::default()
    }
}

fn tenant_spec(name: &str, t: &crate::config::TenantConfig) -> TenantSpec {
    TenantSpec {
        name: name.to_string(),
        weight: t.weight,
        quotas: Quotas {
            max_concurrent: t.max_concurrent,
            max_queued: t.max_queued,
            tokens_per_minute: t.tokens_per_minute,
            max_tokens_per_task: t.max_tokens_per_task,
            max_kv_tokens: t.max_kv_tokens,
            tokens_per_day: t.tokens_per_day,
            tokens_per_month: t.tokens_per_month,
        },
    }
}

/// Tenants of the config: listed ones, and the defaults for any other.
pub fn tenancy(cfg: &Config) -> Tenancy {
    Tenancy {
        tenants: cfg.tenants.iter().map(|(n, t)| tenant_spec(n, t)).collect(),
        defaults: tenant_spec("default", &cfg.tenant_defaults),
    }
}

pub fn pool_spec(p: &PoolConfig) -> PoolSpec {
    PoolSpec {
        id: p.id.clone(),
        model: p.model.clone(),
        queue: QueueConfig {
            capacity: p.queue_capacity,
            policy: p.queue_policy,
            interactive_weight: p.interactive_weight,
            fairness: match p.fairness {
                FairnessChoice::Weighted => Fairness::Weighted,
                FairnessChoice::Fifo => Fairness::Fifo,
            },
            aging_ms: p.aging_ms,
        },
        max_tokens_out: p.max_tokens_out,
        sampler_profile_version: p.sampler_profile_version.clone(),
        first_token_timeout: Duration::from_millis(p.first_token_timeout_ms),
        idle_timeout: Duration::from_millis(p.idle_timeout_ms),
        decode_timeout: Duration::from_millis(p.decode_timeout_ms),
        queue_wait_limit: Duration::from_millis(p.queue_wait_limit_ms),
        retries_before_first_token: p.retries_before_first_token,
        migration_limit: p.migration_limit,
        metrics_frame_interval: Duration::from_millis(p.metrics_frame_interval_ms),
        placement: match p.placement {
            PlacementChoice::LeastLoaded => PlacementMode::LeastLoaded,
            PlacementChoice::Session => PlacementMode::Session,
            PlacementChoice::Prefix => PlacementMode::Prefix,
        },
        prefix_index_blocks: p.prefix_index_blocks,
        prefix_observed: p.prefix_observed,
    }
}

/// Serving without keys on an address other than loopback.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OpenAddress(String);

/// The public demo keys of `examples/tenants.toml` (printed in that file and the
/// README): fine for trying the example on one's own machine, never off loopback.
pub const DEMO_KEYS: &[&str] = &[
    "oqk_demo-bronze-NOT-SECRET",
    "oqk_demo-silver-NOT-SECRET",
    "oqk_demo-gold-NOT-SECRET",
    "oqk_demo-admin-NOT-SECRET",
];

/// Refuse to serve on anything but a loopback address without keys, or with a public
/// demo key among them.
pub fn check_open_address(
    keys: &orch_services::KeyRing,
    addr: SocketAddr,
) -> Result<(), OpenAddress> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    if let Some(c) = DEMO_KEYS.iter().find_map(|k| keys.authenticate(k)) {
        return Err(OpenAddress(format!(
            "refusing to listen on {addr} with a public demo key (tenant {}): the demo keys of \
             examples/tenants.toml are published; make real ones with \
             `orchestratord keys new --tenant NAME --role client|admin`, or listen on 127.0.0.1",
            c.tenant
        )));
    }
    if keys.is_empty() {
        return Err(OpenAddress(format!(
            "refusing to listen on {addr} without API keys: anyone who can reach it could \
             submit work, drain or reload pools. Create a key with \
             `orchestratord keys new --tenant NAME --role admin`, add the printed \
             [[auth.keys]] entry to the config, or listen on 127.0.0.1"
        )));
    }
    Ok(())
}

/// Where the account store lives: `server.state_dir`, else `$ORCH_STATE_DIR`, else
/// `$XDG_STATE_HOME/orchestratord`, else `~/.local/state/orchestratord`, else
/// `./orchestratord-state`.
pub fn state_dir(cfg: &Config) -> std::path::PathBuf {
    use std::path::PathBuf;
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = &cfg.server.state_dir {
        return PathBuf::from(d);
    }
    if let Some(d) = env("ORCH_STATE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = env("XDG_STATE_HOME") {
        return PathBuf::from(d).join("orchestratord");
    }
    if let Some(h) = env("HOME") {
        return PathBuf::from(h).join(".local/state/orchestratord");
    }
    PathBuf::from("orchestratord-state")
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_services::auth::{digest_hex, KeyRing, Role};

    fn ring(keys: &[&str]) -> KeyRing {
        let mut r = KeyRing::new();
        for k in keys {
            r.add_digest(&digest_hex(k), "t", Role::Admin).unwrap();
        }
        r
    }

    #[test]
    fn off_loopback_needs_keys_and_no_demo_key() {
        let (lo, out): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1".parse().unwrap(),
            "10.0.0.1:1".parse().unwrap(),
        );
        assert!(check_open_address(&ring(&[]), lo).is_ok());
        assert!(check_open_address(&ring(&[DEMO_KEYS[3]]), lo).is_ok());
        assert!(check_open_address(&ring(&[]), out).is_err());
        let e = check_open_address(&ring(&["oqk_real", DEMO_KEYS[1]]), out).unwrap_err();
        assert!(e.to_string().contains("demo key"), "{e}");
        assert!(check_open_address(&ring(&["oqk_real"]), out).is_ok());
    }
}
