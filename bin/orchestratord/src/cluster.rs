//! Cluster mode's wiring (cargo feature `cluster`): `[cluster]` to an `orch-cluster`
//! node, set as the services' cluster port after the self-tests passed on this
//! instance's own pools.

use crate::config::{ClusterSection, Config};
use orch_cluster::{Auth, ClusterConfig, Node, NodeConfig, PoolQueue, Security, Tls};
use orch_services::Orchestrator;
use std::net::SocketAddr;
use std::time::Duration;

/// Join the cluster named by `c`: make its streams and buckets, bid for the pools'
/// leadership, and route admission, streams, status and cancel through it.
pub async fn join(
    orch: &Orchestrator,
    cfg: &Config,
    c: &ClusterSection,
    addr: SocketAddr,
) -> Result<(), String> {
    let pools = cfg
        .pools
        .iter()
        .map(|p| PoolQueue {
            pool_id: p.id.clone(),
            capacity: p.queue_capacity + (p.replicas * p.slots_per_replica()) as usize,
        })
        .collect();
    if c.instance_id.is_none() && addr.ip().is_unspecified() {
        // every machine listening on 0.0.0.0:PORT would share one name (and with it
        // its leases and its replicas' ids)
        return Err(format!(
            "[cluster] instance_id is required when listening on {addr}: name this instance (unique in the cluster)"
        ));
    }
    let node_cfg = NodeConfig {
        cluster: cluster_config(c)?,
        instance: c.instance(addr),
        lease_ttl: Duration::from_millis(c.lease_ttl_ms),
        keep: keep(cfg),
        prefer_pools: c.prefer_pools.clone(),
        store_retry: Duration::from_millis(c.store_retry_ms),
        host_replicas: c.host_replicas,
    };
    let shared = node_cfg.cluster.clone();
    let node = Node::start(node_cfg, orch.local_pools(), pools)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(accounts) = orch.accounts() {
        orch_cluster::keys::share(shared, &accounts)
            .await
            .map_err(|e| e.to_string())?;
    }
    orch.set_home(node).map_err(|e| e.message)
}

fn cluster_config(c: &ClusterSection) -> Result<ClusterConfig, String> {
    Ok(ClusterConfig {
        urls: c.urls.clone(),
        replicas: c.replicas,
        request_timeout: Duration::from_millis(c.request_timeout_ms),
        dedupe_window: Duration::from_millis(c.dedupe_window_ms),
        security: security(c)?,
        max_frame_bytes: i64::try_from(c.max_frame_bytes).unwrap_or(i64::MAX),
    })
}

/// The usage ledger shared through the cluster, over this instance's `local` store.
pub async fn shared_ledger(
    c: &ClusterSection,
    addr: SocketAddr,
    local: std::sync::Arc<dyn orch_services::accounts::AccountStore>,
) -> Result<std::sync::Arc<dyn orch_services::accounts::AccountStore>, String> {
    let l = orch_cluster::usage::shared_ledger(cluster_config(c)?, &c.instance(addr), local)
        .await
        .map_err(|e| e.to_string())?;
    Ok(l)
}

/// How long the cluster keeps a task's frames, status, cancel flag and id claim: the
/// retention (`record_ttl_ms`, at least a minute) after the longest a task can live
/// (its queue-wait limit, its tries at a first token and its decode limit), so
/// nothing of a task that respects its limits expires while it runs.
fn keep(cfg: &Config) -> Duration {
    let life = cfg
        .pools
        .iter()
        .map(|p| {
            p.queue_wait_limit_ms
                + u64::from(p.retries_before_first_token + 1) * p.first_token_timeout_ms
                + p.decode_timeout_ms
        })
        .max()
        .unwrap_or(0);
    Duration::from_millis(cfg.server.record_ttl_ms.max(60_000) + life)
}

/// The credentials and TLS `[cluster]` names, secrets read from the environment or
/// files now (never from the config file itself).
fn security(c: &ClusterSection) -> Result<Security, String> {
    let env = |var: &str| {
        std::env::var(var)
            .map_err(|_| format!("[cluster] names environment variable {var}, which is not set"))
    };
    let auth = if let (Some(user), Some(var)) = (&c.user, &c.password_env) {
        Auth::UserPassword {
            user: user.clone(),
            password: env(var)?,
        }
    } else if let Some(var) = &c.token_env {
        Auth::Token(env(var)?)
    } else if let Some(f) = &c.nkey_seed_file {
        let seed =
            std::fs::read_to_string(f).map_err(|e| format!("[cluster] nkey_seed_file {f}: {e}"))?;
        Auth::NkeySeed(seed.trim().to_string())
    } else if let Some(f) = &c.credentials_file {
        Auth::CredentialsFile(f.into())
    } else {
        Auth::None
    };
    let tls = c.tls_ca_file.as_ref().map(|ca| Tls {
        ca_file: ca.into(),
        client_cert: c
            .tls_cert_file
            .as_ref()
            .zip(c.tls_key_file.as_ref())
            .map(|(cert, key)| (cert.into(), key.into())),
    });
    Ok(Security { auth, tls })
}
