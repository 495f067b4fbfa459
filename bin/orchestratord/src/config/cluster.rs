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
    /// This instance's replicas serve every pool's leader, wherever it runs (true);
    /// false: they serve only the pools this instance leads (a standby that takes
    /// over when a leader dies, and runs nothing meanwhile).
    #[serde(default = "host_replicas")]
    pub host_replicas: bool,
    /// Most bytes the cluster's frames stream holds; while it is nine tenths full,
    /// submits get 503 until old frames age out.
    #[serde(default = "max_frame_bytes")]
    pub max_frame_bytes: u64,
    /// How long a pool's queue remembers a stored task id, so that a retried store is
    /// not stored twice (task ids stay unique beyond it: each is claimed for its
    /// tenant as long as the cluster keeps anything of the task).
    #[serde(default = "dedupe_window_ms")]
    pub dedupe_window_ms: u64,
    /// Credentials, one way at most: `user` with the password in the environment
    /// variable `password_env`; a token in `token_env`; an nkey seed file; or a
    /// `.creds` file. Secrets never sit in this file.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default)]
    pub nkey_seed_file: Option<String>,
    #[serde(default)]
    pub credentials_file: Option<String>,
    /// TLS (required when set): the CA the servers' certificates chain to, and this
    /// instance's certificate and key for servers that verify clients.
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    #[serde(default)]
    pub tls_cert_file: Option<String>,
    #[serde(default)]
    pub tls_key_file: Option<String>,
    /// Accept NATS URLs off loopback without credentials and TLS (anyone who reaches
    /// the servers could then read every prompt and act as any instance).
    #[serde(default)]
    pub insecure: bool,
}

impl ClusterSection {
    /// This instance's name: `instance_id`, else the listen address.
    pub fn instance(&self, addr: std::net::SocketAddr) -> String {
        self.instance_id.clone().unwrap_or_else(|| addr.to_string())
    }

    /// Problems with the security settings, as (field, message).
    pub fn security_problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let methods = [
            self.password_env.is_some(),
            self.token_env.is_some(),
            self.nkey_seed_file.is_some(),
            self.credentials_file.is_some(),
        ]
        .iter()
        .filter(|m| **m)
        .count();
        if methods > 1 {
            out.push((
                "cluster",
                "give one of password_env, token_env, nkey_seed_file, credentials_file".into(),
            ));
        }
        if self.user.is_some() != self.password_env.is_some() {
            out.push(("cluster.user", "user and password_env go together".into()));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            out.push((
                "cluster.tls_cert_file",
                "tls_cert_file and tls_key_file go together".into(),
            ));
        }
        if self.tls_cert_file.is_some() && self.tls_ca_file.is_none() {
            out.push((
                "cluster.tls_ca_file",
                "a client certificate needs tls_ca_file".into(),
            ));
        }
        let secured = methods == 1 && self.tls_ca_file.is_some();
        let off_loopback = self.urls.iter().any(|u| !url_is_loopback(u));
        if off_loopback && !secured && !self.insecure {
            out.push((
                "cluster",
                "refusing a NATS URL off loopback without credentials and TLS: anyone who \
                 reaches those servers could read every prompt and output, submit as any \
                 tenant or lead pools. Set credentials (e.g. user + password_env) and \
                 tls_ca_file, or insecure = true to accept the risk"
                    .into(),
            ));
        }
        out
    }
}

/// Is `nats://host:port` on a loopback host?
fn url_is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host = if let Some(h) = rest.strip_prefix('[') {
        h.split(']').next().unwrap_or("")
    } else {
        rest.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn host_replicas() -> bool {
    true
}

fn max_frame_bytes() -> u64 {
    1 << 30
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
                    host_replicas: true,
                    max_frame_bytes: 1 << 30,
                    lease_ttl_ms: lease_ttl_ms(),
                    request_timeout_ms: request_timeout_ms(),
                    store_retry_ms: store_retry_ms(),
                    replicas: cluster_replicas(),
                    prefer_pools: Vec::new(),
                    dedupe_window_ms: dedupe_window_ms(),
                    user: None,
                    password_env: None,
                    token_env: None,
                    nkey_seed_file: None,
                    credentials_file: None,
                    tls_ca_file: None,
                    tls_cert_file: None,
                    tls_key_file: None,
                    insecure: false,
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

    fn section(extra: &str) -> ClusterSection {
        toml::from_str(&format!("urls = ['nats://10.0.0.1:4222']\n{extra}")).unwrap()
    }

    #[test]
    fn a_nats_url_off_loopback_needs_credentials_and_tls_unless_insecure() {
        let refused = |extra: &str| {
            section(extra)
                .security_problems()
                .iter()
                .any(|(_, m)| m.contains("off loopback"))
        };
        assert!(refused(""));
        assert!(refused("user = 'orch'\npassword_env = 'P'"));
        assert!(refused("tls_ca_file = '/ca.pem'"));
        assert!(!refused(
            "user = 'orch'\npassword_env = 'P'\ntls_ca_file = '/ca.pem'"
        ));
        assert!(!refused(
            "credentials_file = '/x.creds'\ntls_ca_file = '/ca.pem'"
        ));
        assert!(!refused("insecure = true"));
        // loopback is fine without
        let lo: ClusterSection =
            toml::from_str("urls = ['nats://127.0.0.1:4222', 'nats://localhost:4223']").unwrap();
        assert!(lo.security_problems().is_empty());
        // one method at most, pairs go together
        let p = section("token_env = 'T'\nnkey_seed_file = '/s'\ntls_ca_file = '/ca'")
            .security_problems();
        assert!(p.iter().any(|(_, m)| m.contains("one of")), "{p:?}");
        let p = section("user = 'u'\ntls_ca_file = '/ca'").security_problems();
        assert!(p.iter().any(|(f, _)| *f == "cluster.user"), "{p:?}");
        let p = section("tls_cert_file = '/c'").security_problems();
        assert!(
            p.iter().any(|(f, _)| *f == "cluster.tls_cert_file"),
            "{p:?}"
        );
    }
}
