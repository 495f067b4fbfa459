//! `[cluster]` and `--cluster`: the settings of cluster mode (used when orchestratord
//! is built with the `cluster` feature; `check-config` refuses them otherwise).

use super::{Config, ConfigError};
use serde::Deserialize;

/// `[cluster]`: join a NATS JetStream cluster with other instances (see README,
/// "Cluster mode").
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// `nats://host:port` of each server.
    pub urls: Vec<String>,
    /// This instance's name, unique in the cluster (default: the listen address).
    #[serde(default)]
    pub instance_id: Option<String>,
    /// A pool leader that cannot renew its lease loses the pool after this long.
    #[serde(default = "lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// One JetStream request not answered within this has failed.
    #[serde(default = "request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// How long a submission keeps trying to store its task while the cluster does not
    /// answer (a stream whose leader was lost elects another within about 4–9 s on
    /// nats-server 2.9); then 503.
    #[serde(default = "store_retry_ms")]
    pub store_retry_ms: u64,
    /// Copies of every stream and bucket (3 survives the loss of one server).
    #[serde(default = "cluster_replicas")]
    pub replicas: usize,
    /// Pools this instance bids to lead first (empty: every pool).
    #[serde(default)]
    pub prefer_pools: Vec<String>,
    /// How long a pool's queue remembers a stored task id, so that a retried store is
    /// not stored twice (task ids stay unique beyond it: each is claimed for its
    /// tenant as long as the cluster keeps anything of the task).
    #[serde(default = "dedupe_window_ms")]
    pub dedupe_window_ms: u64,
}

fn dedupe_window_ms() -> u64 {
    120_000
}

fn lease_ttl_ms() -> u64 {
    3000
}

fn request_timeout_ms() -> u64 {
    1500
}

fn store_retry_ms() -> u64 {
    10_000
}

fn cluster_replicas() -> usize {
    3
}

impl Config {
    /// Apply `--cluster URLS` (comma-separated): cluster mode with these servers and
    /// the `[cluster]` section's other settings (or their defaults); checked again.
    pub fn with_cluster_flag(mut self, urls: Option<&str>) -> Result<Self, ConfigError> {
        let Some(urls) = urls else { return Ok(self) };
        let urls: Vec<String> = urls
            .split(',')
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect();
        match &mut self.cluster {
            Some(c) => c.urls = urls,
            None => {
                self.cluster = Some(ClusterSection {
                    urls,
                    instance_id: None,
                    lease_ttl_ms: lease_ttl_ms(),
                    request_timeout_ms: request_timeout_ms(),
                    store_retry_ms: store_retry_ms(),
                    replicas: cluster_replicas(),
                    prefer_pools: Vec::new(),
                    dedupe_window_ms: dedupe_window_ms(),
                })
            }
        }
        self.validate()?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cluster(extra: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!(
            "[[pools]]\nid='m'\nengine='mock'\nmodel='x'\n[cluster]\nurls=['nats://127.0.0.1:4222']\n{extra}"
        ))
    }

    #[test]
    fn cluster_timings_outside_their_ranges_are_refused() {
        for (extra, named) in [
            ("store_retry_ms = 0", "store_retry_ms 100..=60000"),
            ("store_retry_ms = 60001", "store_retry_ms 100..=60000"),
            ("lease_ttl_ms = 499", "lease_ttl_ms must be at least 500"),
            ("request_timeout_ms = 99", "request_timeout_ms at least 100"),
            ("replicas = 0", "cluster.replicas"),
        ] {
            let e = with_cluster(extra).unwrap_err().to_string();
            assert!(e.contains(named), "{extra}: {e}");
        }
        // in range: only the build's own refusal, if it has no cluster mode
        let r = with_cluster("store_retry_ms = 100\nlease_ttl_ms = 500");
        if cfg!(feature = "cluster") {
            assert!(r.is_ok(), "{r:?}");
        } else {
            let e = r.unwrap_err().to_string();
            assert!(
                e.contains("built without cluster mode") && !e.contains("100..=60000"),
                "{e}"
            );
        }
    }
}
