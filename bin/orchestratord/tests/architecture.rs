//! Enforces the crate layering of DEVELOPERS.md / ARCHITECTURE.md from `cargo metadata`:
//! which workspace crates may depend on which, and which heavy or I/O crates must stay
//! out of the inner layers (checked over normal, transitive dependencies).

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

struct Graph {
    /// package name -> normal (non-dev, non-build) dependency names
    deps: BTreeMap<String, BTreeSet<String>>,
}

fn graph() -> Graph {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: BTreeMap<String, String> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut deps = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        let name = names[node["id"].as_str().unwrap()].clone();
        let normal: BTreeSet<String> = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kind"].is_null())
            })
            .map(|d| names[d["pkg"].as_str().unwrap()].clone())
            .collect();
        deps.entry(name)
            .or_insert_with(BTreeSet::new)
            .extend(normal);
    }
    Graph { deps }
}

impl Graph {
    fn direct(&self, pkg: &str) -> &BTreeSet<String> {
        &self.deps[pkg]
    }
    fn transitive(&self, pkg: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![pkg.to_string()];
        while let Some(p) = stack.pop() {
            for d in self.deps.get(&p).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    stack.push(d.clone());
                }
            }
        }
        seen
    }
}

const WORKSPACE: &[&str] = &[
    "orch-domain",
    "orchestrator-core",
    "adapter-api",
    "orch-services",
    "orch-api",
    "adapter-mock",
    "adapter-llamacpp",
    "adapter-openai",
    "orchestratord",
    "orch-client",
    "orch-cli",
    "orch-cluster",
    "orch-store",
];

/// Workspace crates each crate may depend on directly.
fn allowed_internal(pkg: &str) -> &'static [&'static str] {
    match pkg {
        "orch-domain" => &[],
        "orchestrator-core" => &["orch-domain"],
        "adapter-api" => &["orch-domain"],
        "adapter-mock" | "adapter-llamacpp" | "adapter-openai" => &["adapter-api", "orch-domain"],
        "orch-services" => &["orch-domain", "orchestrator-core", "adapter-api"],
        "orch-api" => &["orch-services", "orch-domain"],
        // clients speak the wire contract only
        "orch-client" => &["orch-domain"],
        // the CLI is a client too: it reaches the server only over HTTP
        "orch-cli" => &["orch-client", "orch-domain"],
        // cluster mode implements orch-services' seam (a trait defined there), and
        // reaches the replicas other instances host through the engine seam
        "orch-cluster" => &["orch-services", "orch-domain", "adapter-api"],
        // the account store implements orch-services' seam (a trait defined there)
        "orch-store" => &["orch-services", "orch-domain"],
        "orchestratord" => WORKSPACE,
        _ => &[],
    }
}

#[test]
fn workspace_edges_follow_the_layering() {
    let g = graph();
    for pkg in WORKSPACE.iter().filter(|p| g.deps.contains_key(**p)) {
        for d in g
            .direct(pkg)
            .iter()
            .filter(|d| WORKSPACE.contains(&d.as_str()))
        {
            assert!(
                allowed_internal(pkg).contains(&d.as_str()),
                "{pkg} must not depend on {d} (see ARCHITECTURE.md)"
            );
        }
    }
}

/// orch-domain: serde, thiserror and uuid; plus utoipa only as an optional dependency
/// behind its `openapi` feature (schema derivation for the generated contracts).
#[test]
fn orch_domain_uses_serde_thiserror_uuid_only() {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let domain = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "orch-domain")
        .expect("orch-domain exists");
    let mut checked = 0;
    for d in domain["dependencies"].as_array().unwrap() {
        if d["kind"].is_string() {
            continue; // dev/build dependencies
        }
        let name = d["name"].as_str().unwrap();
        let ok = ["serde", "thiserror", "uuid"].contains(&name)
            || (name == "utoipa" && d["optional"] == true);
        assert!(ok, "orch-domain must not depend on {name}");
        checked += 1;
    }
    assert!(checked >= 3);
}

#[test]
fn inner_layers_stay_free_of_io_and_http() {
    let g = graph();
    let forbid = |pkg: &str, bad: &[&str]| {
        let t = g.transitive(pkg);
        for b in bad {
            assert!(
                !t.contains(*b),
                "{pkg} must not (even transitively) depend on {b}"
            );
        }
    };
    forbid("orch-domain", &["tokio", "axum", "hyper", "reqwest"]);
    forbid("orchestrator-core", &["tokio", "axum", "hyper", "reqwest"]);
    forbid("adapter-api", &["tokio", "axum", "hyper"]);
    forbid(
        "orch-services",
        &[
            "rusqlite",
            "axum",
            "hyper",
            "tower-http",
            "adapter-mock",
            "adapter-llamacpp",
            "adapter-openai",
            "reqwest",
            "async-nats",
        ],
    );
    forbid(
        "orch-api",
        &[
            "rusqlite",
            "adapter-mock",
            "adapter-llamacpp",
            "adapter-openai",
            "reqwest",
            "async-nats",
        ],
    );
    // cluster mode never reaches HTTP or an engine
    forbid(
        "orch-cluster",
        &[
            "axum",
            "hyper",
            "orch-api",
            "adapter-mock",
            "adapter-llamacpp",
            "adapter-openai",
        ],
    );
    // the standalone build (default features) has no NATS in it: cluster mode is the
    // optional `cluster` feature
    forbid("orchestratord", &["async-nats", "orch-cluster"]);
}

#[test]
fn heavy_test_crates_stay_out_of_the_product_crates() {
    let g = graph();
    for pkg in WORKSPACE.iter().filter(|p| g.deps.contains_key(**p)) {
        let t = g.transitive(pkg);
        for heavy in ["cucumber", "pact_consumer", "pact_verifier"] {
            assert!(!t.contains(heavy), "{pkg} pulls {heavy}");
        }
    }
}

#[test]
fn the_rules_can_fail() {
    // guard against a vacuous graph: the crates exist and have the expected edges
    let g = graph();
    assert!(g.direct("orch-api").contains("orch-services"));
    assert!(g.transitive("orch-services").contains("tokio"));
    assert!(!allowed_internal("orch-api").contains(&"adapter-mock"));
}
