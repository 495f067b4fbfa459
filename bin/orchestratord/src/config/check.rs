//! What types cannot catch in a config: every problem, each named by its place in the
//! file (`pools[1].queue_capacity: must be at least 1`).

use super::{valid_id, Config, ConfigError, EngineConfig};

impl Config {
    /// The first problem as an error (see [`problems`](Self::problems) for all).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = self.problems();
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(p.join("; ")))
        }
    }

    /// Every problem types cannot catch, each named by its path in the file
    /// (`pools[1].queue_capacity: must be at least 1`).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut bad = |path: String, m: &str| out.push(format!("{path}: {m}"));
        if self.pools.is_empty() {
            bad("pools".into(), "at least one [[pools]] entry is required");
        }
        let sv = &self.supervision;
        if sv.health_interval_ms < 50 || sv.health_timeout_ms < 50 {
            bad(
                "supervision".into(),
                "health_interval_ms and health_timeout_ms must be at least 50",
            );
        }
        if sv.unhealthy_after == 0 || sv.restart_unresponsive_after < sv.unhealthy_after {
            bad(
                "supervision.restart_unresponsive_after".into(),
                "need 1 <= unhealthy_after <= restart_unresponsive_after",
            );
        }
        if let Some(c) = &self.cluster {
            if !cfg!(feature = "cluster") {
                bad(
                    "cluster".into(),
                    "this orchestratord was built without cluster mode (cargo feature `cluster`)",
                );
            }
            if c.urls.is_empty() || c.urls.iter().any(|u| !u.starts_with("nats://")) {
                bad("cluster.urls".into(), "one or more nats://host:port URLs");
            }
            if c.lease_ttl_ms < 500
                || c.request_timeout_ms < 100
                || !(100..=60_000).contains(&c.store_retry_ms)
            {
                bad(
                    "cluster".into(),
                    "lease_ttl_ms must be at least 500, request_timeout_ms at least 100, store_retry_ms 100..=60000",
                );
            }
            if c.max_frame_bytes < 1 << 20 {
                bad("cluster.max_frame_bytes".into(), "must be at least 1048576");
            }
            if !(1..=5).contains(&c.replicas) {
                bad("cluster.replicas".into(), "must be 1..=5");
            }
            if !(1_000..=3_600_000).contains(&c.dedupe_window_ms) {
                bad("cluster.dedupe_window_ms".into(), "must be 1000..=3600000");
            }
            if let Some(id) = &c.instance_id {
                let ok = !id.is_empty()
                    && id.len() <= 64
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !ok {
                    bad(
                        "cluster.instance_id".into(),
                        "must be 1-64 of A-Z a-z 0-9 - _ . (it qualifies this instance's replica ids)",
                    );
                }
            }
            for (field, m) in c.security_problems() {
                bad(field.into(), &m);
            }
            for (i, p) in self.pools.iter().enumerate() {
                if p.queue_policy != orch_domain::FullPolicy::Reject {
                    bad(
                        format!("pools[{i}].queue_policy"),
                        "cluster mode serves only `reject` (a full queue refuses with 429)",
                    );
                }
            }
            let tenants = self
                .tenants
                .iter()
                .map(|(n, t)| (format!("tenants.{n}"), t))
                .chain(std::iter::once((
                    "tenant_defaults".to_string(),
                    &self.tenant_defaults,
                )));
            for (at, t) in tenants {
                if t.tokens_per_day.is_some() || t.tokens_per_month.is_some() {
                    bad(
                        at,
                        "token budgets are counted per instance's ledger and are not enforced across a cluster yet: leave tokens_per_day and tokens_per_month out in cluster mode",
                    );
                }
            }
        }
        let s = &self.server;
        if !(4096..=16 * 1024 * 1024).contains(&s.send_buffer_bytes) {
            bad("server.send_buffer_bytes".into(), "must be 4096..=16777216");
        }
        if s.max_readers_per_task == 0 {
            bad("server.max_readers_per_task".into(), "must be at least 1");
        }
        if s.max_connections == 0 {
            bad("server.max_connections".into(), "must be at least 1");
        }
        if let Some(n) = s.max_unauthenticated_connections {
            if n == 0 || n > s.max_connections {
                bad(
                    "server.max_unauthenticated_connections".into(),
                    "must be 1..=max_connections",
                );
            }
        }
        for (k, v) in [
            ("header_read_timeout_ms", s.header_read_timeout_ms),
            ("write_stall_timeout_ms", s.write_stall_timeout_ms),
            ("body_read_timeout_ms", s.body_read_timeout_ms),
        ] {
            if v < 100 {
                bad(format!("server.{k}"), "must be at least 100 (ms)");
            }
        }
        for (name, t) in std::iter::once(("tenant_defaults", &self.tenant_defaults))
            .chain(self.tenants.iter().map(|(n, t)| (n.as_str(), t)))
        {
            let at = if name == "tenant_defaults" {
                name.to_string()
            } else {
                format!("tenants.{name}")
            };
            if name != "tenant_defaults" && !orch_services::auth::valid_tenant(name) {
                bad(
                    at.clone(),
                    "a tenant name is 1..=64 chars of [A-Za-z0-9._-]",
                );
            }
            if t.weight == 0 || t.weight > 1000 {
                bad(format!("{at}.weight"), "must be 1..=1000");
            }
            if t.max_tokens_per_task == Some(0) {
                bad(
                    format!("{at}.max_tokens_per_task"),
                    "0 would refuse everything; leave it out for unlimited",
                );
            }
            if t.max_kv_tokens == Some(0) {
                bad(
                    format!("{at}.max_kv_tokens"),
                    "0 would refuse everything; leave it out for unlimited",
                );
            }
            for (v, what) in [
                (t.tokens_per_day, "tokens_per_day"),
                (t.tokens_per_month, "tokens_per_month"),
            ] {
                if v == Some(0) {
                    bad(
                        format!("{at}.{what}"),
                        "0 would refuse everything; leave it out for unlimited",
                    );
                }
                if v.is_some() && !self.server.accounts {
                    bad(
                        format!("{at}.{what}"),
                        "a token budget is counted by the usage ledger: it needs `server.accounts = true`",
                    );
                }
            }
            if t.tokens_per_minute == Some(0) {
                bad(
                    format!("{at}.tokens_per_minute"),
                    "0 would refuse everything; leave it out for unlimited",
                );
            }
        }
        for (i, k) in self.auth.keys.iter().enumerate() {
            let at = format!("auth.keys[{i}]");
            if orch_services::Role::parse(&k.role).is_none() {
                bad(format!("{at}.role"), "must be \"client\" or \"admin\"");
            }
            for p in k.pools.iter().flatten() {
                if !self.pools.iter().any(|x| x.id == *p) {
                    bad(
                        format!("{at}.pools"),
                        &format!("names no configured pool: {p}"),
                    );
                }
            }
            if k.priorities.as_ref().is_some_and(|p| p.is_empty()) {
                bad(
                    format!("{at}.priorities"),
                    "an empty list would refuse everything",
                );
            }
            let mut ring = orch_services::KeyRing::new();
            if let Err(e) = ring.add_digest(&k.sha256, &k.tenant, orch_services::Role::Client) {
                let field = match e {
                    orch_services::auth::KeyError::BadDigest(_) => "sha256",
                    orch_services::auth::KeyError::BadTenant(_) => "tenant",
                };
                bad(format!("{at}.{field}"), &e.to_string());
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.pools.iter().enumerate() {
            let at = format!("pools[{i}]");
            if !valid_id(&p.id) {
                bad(format!("{at}.id"), "must be 1..=64 chars of [A-Za-z0-9_-]");
            }
            if !seen.insert(p.id.as_str()) {
                bad(format!("{at}.id"), &format!("duplicate pool id {:?}", p.id));
            }
            if p.model.trim().is_empty() {
                bad(format!("{at}.model"), "must not be empty");
            }
            if p.replicas == 0 || p.replicas > 64 {
                bad(format!("{at}.replicas"), "must be 1..=64");
            }
            if p.queue_capacity == 0 {
                bad(format!("{at}.queue_capacity"), "must be at least 1");
            }
            if p.metrics_frame_interval_ms > 0 && p.metrics_frame_interval_ms < 50 {
                bad(
                    format!("{at}.metrics_frame_interval_ms"),
                    "must be 0 (off) or at least 50",
                );
            }
            if p.max_tokens_out == 0 {
                bad(format!("{at}.max_tokens_out"), "must be at least 1");
            }
            if p.prefix_index_blocks == 0 || p.prefix_index_blocks > 10_000_000 {
                bad(format!("{at}.prefix_index_blocks"), "must be 1..=10000000");
            }
            match &p.engine {
                EngineConfig::Openai(o) => {
                    if o.urls.is_empty() || o.urls.len() != p.replicas as usize {
                        bad(
                            format!("{at}.openai.urls"),
                            &format!(
                                "one URL per replica: replicas is {}, urls has {}",
                                p.replicas,
                                o.urls.len()
                            ),
                        );
                    }
                    for (j, u) in o.urls.iter().enumerate() {
                        if !(u.starts_with("http://") || u.starts_with("https://")) {
                            bad(
                                format!("{at}.openai.urls[{j}]"),
                                "must start with http:// or https://",
                            );
                        }
                    }
                    if o.slots == 0 {
                        bad(format!("{at}.openai.slots"), "must be at least 1");
                    }
                }
                EngineConfig::Mock(m) => {
                    let t = m.tokens_per_sec;
                    if !(t == 0.0 || (0.001..=1_000_000.0).contains(&t)) {
                        bad(
                            format!("{at}.mock.tokens_per_sec"),
                            &format!("must be 0 (unpaced) or 0.001..=1000000, got {t}"),
                        );
                    }
                    if m.slots == 0 {
                        bad(format!("{at}.mock.slots"), "must be at least 1");
                    }
                }
                EngineConfig::Llamacpp(l) => {
                    if l.slots == 0 {
                        bad(format!("{at}.llamacpp.slots"), "must be at least 1");
                    }
                    if l.ctx < 64 {
                        bad(format!("{at}.llamacpp.ctx"), "must be at least 64");
                    }
                    if l.deterministic && l.slots > 1 {
                        // measured: two prompts that arrive together share a batch even
                        // without continuous batching, and that changed a greedy answer
                        bad(
                            format!("{at}.llamacpp.deterministic"),
                            "needs slots = 1: an engine decoding two requests at once batches them, and the batch's shape changes what a strict task generates",
                        );
                    }
                    if let Some(a) = adapter_llamacpp::launcher::reserved_arg(&l.extra_args) {
                        bad(
                            format!("{at}.llamacpp.extra_args"),
                            &format!("may not set {a}: the engine listens on loopback, on a port orchestratord picks, with orchestratord's key"),
                        );
                    }
                }
            }
        }
        out
    }
}
