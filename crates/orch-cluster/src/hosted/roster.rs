//! The leader's roster of a pool's replicas on other instances, for its term: every
//! replica another instance advertises is attached to the leader's pool as a
//! [`HostedReplica`] (held to the pool's pin like any replica; one the pin refuses is
//! logged and tried again after [`REFUSED_RETRY`]), its readiness follows the
//! advertisements, it stops taking work when its host was silent for [`SILENT`], and
//! it is taken out when it is no longer advertised or its host was silent for
//! [`TAKE_OUT_AFTER`] (by then every run on it has ended: a replica attached again
//! starts with its slots free). The term's end takes every hosted replica out, and a
//! term's start takes out whatever an earlier term left attached.

use super::{ad_subject, Ad, AdReplica, HostedReplica, ADVERTISE, SILENT};
use futures_util::StreamExt;
use orch_services::LocalPools;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A replica the pool's pin refused is tried again after this long.
const REFUSED_RETRY: Duration = Duration::from_secs(10);
/// A silent host's replicas leave the pool after this long (they take no work from
/// [`SILENT`] on).
const TAKE_OUT_AFTER: Duration = Duration::from_secs(60);

/// One attached hosted replica.
struct Attached {
    host: String,
    adapter: Arc<HostedReplica>,
    serving: bool,
}

/// What the roster holds; dropping it (the term ended) takes every hosted replica out
/// of the pool.
struct Roster {
    pools: LocalPools,
    pool_id: String,
    attached: HashMap<String, Attached>,
    /// Hosts by when they last advertised.
    hosts: HashMap<String, Instant>,
    refused: HashMap<String, Instant>,
}

impl Drop for Roster {
    fn drop(&mut self) {
        for id in self.attached.keys() {
            self.pools.detach(&self.pool_id, id);
        }
        crate::metrics::hosted_replicas(&self.pool_id, 0);
    }
}

impl Roster {
    async fn heard(&mut self, client: &async_nats::Client, ad: Ad) {
        self.hosts.insert(ad.instance.clone(), Instant::now());
        let listed: Vec<String> = ad.replicas.iter().map(|r| r.id.clone()).collect();
        for r in ad.replicas {
            self.replica(client, &ad.instance, r).await;
        }
        // replicas of this host it no longer advertises leave the pool
        let gone: Vec<String> = self
            .attached
            .iter()
            .filter(|(id, a)| a.host == ad.instance && !listed.contains(id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.take_out(&id, "no longer advertised");
        }
    }

    async fn replica(&mut self, client: &async_nats::Client, host: &str, r: AdReplica) {
        if let Some(a) = self.attached.get_mut(&r.id) {
            let (id, serving) = (r.id.clone(), r.serving);
            a.adapter.heard(r);
            if a.serving != serving {
                a.serving = serving;
                self.pools.set_ready(&self.pool_id, &id, serving);
            }
            return;
        }
        if self
            .refused
            .get(&r.id)
            .is_some_and(|t| t.elapsed() < REFUSED_RETRY)
        {
            return;
        }
        let id = r.id.clone();
        let serving = r.serving;
        let adapter = Arc::new(HostedReplica::new(client.clone(), host, &self.pool_id, r));
        let attached = self
            .pools
            .attach_hosted(
                &self.pool_id,
                &id,
                adapter.clone(),
                format!("cluster instance {host}"),
            )
            .await;
        match attached {
            Ok(()) => {
                tracing::info!(pool_id = %self.pool_id, replica_id = %id, host, "replica of another instance serves the pool");
                self.refused.remove(&id);
                self.attached.insert(
                    id,
                    Attached {
                        host: host.to_string(),
                        adapter,
                        serving,
                    },
                );
            }
            Err(e) => {
                tracing::warn!(pool_id = %self.pool_id, replica_id = %id, host, error = %e,
                    "replica of another instance refused by the pool");
                self.refused.insert(id, Instant::now());
            }
        }
    }

    fn take_out(&mut self, id: &str, why: &str) {
        if self.attached.remove(id).is_some() {
            self.pools.detach(&self.pool_id, id);
            tracing::warn!(pool_id = %self.pool_id, replica_id = id, why, "replica of another instance taken out of the pool");
        }
    }

    /// Hosts silent for [`SILENT`]: their replicas take no work; for
    /// [`TAKE_OUT_AFTER`]: they leave the pool.
    fn prune(&mut self) {
        let silent: Vec<(String, bool)> = self
            .hosts
            .iter()
            .filter(|(_, t)| t.elapsed() >= SILENT)
            .map(|(h, t)| (h.clone(), t.elapsed() >= TAKE_OUT_AFTER))
            .collect();
        for (h, gone) in silent {
            let ids: Vec<String> = self
                .attached
                .iter()
                .filter(|(_, a)| a.host == h)
                .map(|(id, _)| id.clone())
                .collect();
            if gone {
                self.hosts.remove(&h);
                for id in ids {
                    self.take_out(&id, "its instance was silent");
                }
                continue;
            }
            for id in ids {
                if let Some(a) = self.attached.get_mut(&id) {
                    if a.serving {
                        a.serving = false;
                        self.pools.set_ready(&self.pool_id, &id, false);
                        tracing::warn!(pool_id = %self.pool_id, replica_id = %id, host = %h,
                            "replica of another instance takes no work: its instance went silent");
                    }
                }
            }
        }
    }
}

/// Keep the pool's hosted replicas for the term (until aborted).
pub(crate) fn keep(
    client: async_nats::Client,
    pools: LocalPools,
    pool_id: String,
    me: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut ads) = client.subscribe(ad_subject(&pool_id)).await else {
            tracing::warn!(
                pool_id,
                "cannot hear other instances' replicas: only this instance's serve"
            );
            return;
        };
        // replicas an earlier term attached (one being attached as it ended) go
        let own = super::replica_prefix(&me);
        for r in pools.replicas(&pool_id, "") {
            if !r.id.starts_with(&own) {
                pools.detach(&pool_id, &r.id);
            }
        }
        let mut roster = Roster {
            pools,
            pool_id,
            attached: HashMap::new(),
            hosts: HashMap::new(),
            refused: HashMap::new(),
        };
        let mut tick = tokio::time::interval(ADVERTISE);
        loop {
            tokio::select! {
                m = ads.next() => {
                    let Some(m) = m else { return };
                    match serde_json::from_slice::<Ad>(&m.payload) {
                        Ok(ad) if ad.instance != me => roster.heard(&client, ad).await,
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "unreadable replica advertisement"),
                    }
                }
                _ = tick.tick() => {
                    roster.prune();
                    crate::metrics::hosted_replicas(&roster.pool_id, roster.attached.len());
                }
            }
        }
    })
}
