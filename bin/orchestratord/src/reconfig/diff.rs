//! What a new config changes, section by section, compared by value: what applies at
//! once, what needs new replicas, what needs a restart and what is refused. Pure: the
//! reload applies a [`Diff`], and tests hold each case here.

use crate::config::{Config, PoolConfig};
use crate::settings::pool_spec;

/// The difference between the running config and a new one.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Diff {
    /// Keys or `/metrics` access changed (the key ring is swapped at once either way).
    pub auth: bool,
    /// Tenants' weights or quotas changed (the next admission sees them).
    pub tenants: bool,
    /// Sections that need a restart, not applied: `[server]`, `[supervision]`,
    /// `[cluster]`.
    pub restart: Vec<&'static str>,
    /// Pools, in the new file's order, then the ones it no longer has.
    pub pools: Vec<PoolDiff>,
}

/// What changes for one pool.
#[derive(Debug, Clone, PartialEq)]
pub enum PoolDiff {
    /// In the new file only: created and started.
    Added(String),
    /// In the running config only: removing a pool needs a restart, so it is refused
    /// and the pool keeps serving.
    Removed(String),
    /// In both, with what changed (nothing, for an unchanged pool).
    Kept(PoolChange),
}

/// What changed in a pool that stays.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolChange {
    pub id: String,
    /// Queue limits and policy, fairness, timeouts, output limit, placement: applied
    /// at once to what comes next.
    pub settings: bool,
    /// The engine, its settings or the model: new replicas replace the old ones.
    pub engine: bool,
    /// The replica count, `(old, new)`, when it changed.
    pub replicas: Option<(u32, u32)>,
}

impl PoolChange {
    pub fn is_empty(&self) -> bool {
        !self.settings && !self.engine && self.replicas.is_none()
    }
}

/// Whether two pools run different engines (a change here needs new replicas).
fn engine_differs(a: &PoolConfig, b: &PoolConfig) -> bool {
    a.engine != b.engine || a.model != b.model
}

/// Compare `old` (running) with `new`, each section by value.
pub fn diff(old: &Config, new: &Config) -> Diff {
    let mut restart = Vec::new();
    if old.server != new.server {
        restart.push("[server]");
    }
    if old.supervision != new.supervision {
        restart.push("[supervision]");
    }
    if old.cluster != new.cluster {
        restart.push("[cluster]");
    }
    let mut pools: Vec<PoolDiff> = new
        .pools
        .iter()
        .map(|p| match old.pools.iter().find(|o| o.id == p.id) {
            None => PoolDiff::Added(p.id.clone()),
            Some(o) => PoolDiff::Kept(PoolChange {
                id: p.id.clone(),
                settings: pool_spec(o) != pool_spec(p),
                engine: engine_differs(o, p),
                replicas: (o.replicas != p.replicas).then_some((o.replicas, p.replicas)),
            }),
        })
        .collect();
    pools.extend(
        old.pools
            .iter()
            .filter(|o| !new.pools.iter().any(|p| p.id == o.id))
            .map(|o| PoolDiff::Removed(o.id.clone())),
    );
    Diff {
        auth: old.auth != new.auth,
        tenants: old.tenants != new.tenants || old.tenant_defaults != new.tenant_defaults,
        restart,
        pools,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        [server]
        addr = "127.0.0.1:0"
        [tenants.acme]
        weight = 2
        [[pools]]
        id = "a"
        engine = "mock"
        model = "m"
        replicas = 2
        [pools.mock]
        slots = 2
        [[pools]]
        id = "b"
        engine = "mock"
        model = "m"
    "#;

    fn cfg(text: &str) -> Config {
        Config::parse(text).expect("a valid config")
    }

    fn kept(d: &Diff, id: &str) -> PoolChange {
        d.pools
            .iter()
            .find_map(|p| match p {
                PoolDiff::Kept(c) if c.id == id => Some(c.clone()),
                _ => None,
            })
            .expect("a kept pool")
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let d = diff(&cfg(BASE), &cfg(BASE));
        assert!(!d.auth && !d.tenants && d.restart.is_empty());
        assert!(d
            .pools
            .iter()
            .all(|p| matches!(p, PoolDiff::Kept(c) if c.is_empty())));
    }

    #[test]
    fn pool_settings_apply_now_and_engine_settings_need_new_replicas() {
        let new = BASE.replace("replicas = 2", "replicas = 2\n        queue_capacity = 9");
        let c = kept(&diff(&cfg(BASE), &cfg(&new)), "a");
        assert!(c.settings && !c.engine && c.replicas.is_none(), "{c:?}");

        let new = BASE.replace("slots = 2", "slots = 3");
        let c = kept(&diff(&cfg(BASE), &cfg(&new)), "a");
        assert!(c.engine && !c.settings, "{c:?}");

        let new = BASE.replace("replicas = 2", "replicas = 3");
        let c = kept(&diff(&cfg(BASE), &cfg(&new)), "a");
        assert_eq!(c.replicas, Some((2, 3)));
        assert!(!c.engine && !c.settings, "{c:?}");
        assert!(kept(&diff(&cfg(BASE), &cfg(&new)), "b").is_empty());
    }

    #[test]
    fn a_new_pool_is_added_and_a_removed_one_is_refused() {
        let new = BASE.replace(
            "[[pools]]\n        id = \"b\"",
            "[[pools]]\n        id = \"c\"",
        );
        let d = diff(&cfg(BASE), &cfg(&new));
        assert!(d.pools.contains(&PoolDiff::Added("c".into())), "{d:?}");
        assert!(d.pools.contains(&PoolDiff::Removed("b".into())), "{d:?}");
    }

    #[test]
    fn server_supervision_and_cluster_need_a_restart() {
        let new = BASE.replace(
            "addr = \"127.0.0.1:0\"",
            "addr = \"127.0.0.1:0\"\n        keepalive_ms = 999",
        );
        assert_eq!(diff(&cfg(BASE), &cfg(&new)).restart, ["[server]"]);
        let new = format!("{BASE}\n        [supervision]\n        health_interval_ms = 900");
        assert_eq!(diff(&cfg(BASE), &cfg(&new)).restart, ["[supervision]"]);
    }

    #[test]
    fn tenants_and_keys_are_told_apart() {
        let new = BASE.replace("weight = 2", "weight = 5");
        let d = diff(&cfg(BASE), &cfg(&new));
        assert!(d.tenants && !d.auth);
        let new = format!("[auth]\nmetrics = \"admin\"\n{BASE}");
        let d = diff(&cfg(BASE), &cfg(&new));
        assert!(d.auth && !d.tenants);
    }
}
