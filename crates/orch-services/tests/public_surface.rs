//! The crate's public surface, read from its sources: the modules and items `lib.rs`
//! exports are exactly the ones listed here (what embedders, orch-api, the binary and a
//! task home need), and the data-plane facade stays narrow: at most 25 public methods,
//! each call made for a client naming its caller once (no `*_as` twins).
//! Growing the surface is a decision: change the list here with it.

use std::collections::BTreeSet;
use std::path::Path;

/// Modules other crates may name.
const PUBLIC_MODULES: &[&str] = &["accounts", "auth", "config", "home", "manager", "metrics"];

/// Items re-exported at the crate root.
const ROOT_ITEMS: &[&str] = &[
    "Accounts",
    "Admitted",
    "CancelReason",
    "Caller",
    "Ending",
    "Frame",
    "FrameRef",
    "KeyRing",
    "LocalPools",
    "LocalReplica",
    "ManagerConfig",
    "NewTask",
    "Orchestrator",
    "Phase",
    "PoolError",
    "PoolHandle",
    "PoolLoad",
    "PoolManager",
    "PoolRegistry",
    "PoolSpec",
    "Quotas",
    "Read",
    "ReadItem",
    "ReplicaOrigin",
    "Resumed",
    "Retention",
    "Role",
    "ServiceConfig",
    "Snapshot",
    "Stats",
    "StreamReader",
    "TableStats",
    "TaskHome",
    "TaskRecord",
    "Tenancy",
    "TenantSpec",
];

/// 25 until the accounts (keys, ledger, budgets) came with their setter and getter,
/// and the console's snapshot.
const FACADE_MAX_METHODS: usize = 28;

fn read(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Code lines (comments dropped).
fn code(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
}

/// `pub mod x;` names.
fn public_modules(lib: &str) -> BTreeSet<String> {
    code(lib)
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').trim().to_string())
        .collect()
}

/// Names a `pub use …;` statement (maybe over several lines) brings to the root.
fn root_items(lib: &str) -> BTreeSet<String> {
    let joined: String = code(lib).collect::<Vec<_>>().join(" ");
    let mut out = BTreeSet::new();
    for stmt in joined.split(';') {
        let Some(path) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let names = match (path.find('{'), path.rfind('}')) {
            (Some(a), Some(b)) => path[a + 1..b].to_string(),
            _ => path.rsplit("::").next().unwrap_or("").to_string(),
        };
        for n in names.split(',') {
            let n = n.trim();
            let n = n.rsplit(" as ").next().unwrap_or(n).trim();
            if !n.is_empty() {
                out.insert(n.to_string());
            }
        }
    }
    out
}

/// Public methods of `impl Orchestrator`.
fn facade_methods(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for raw in src.lines() {
        let raw = raw.split("//").next().unwrap_or("").trim_end();
        if raw.starts_with("impl Orchestrator") {
            inside = true;
            continue;
        }
        // the impl block's closing brace sits alone at column 0 in rustfmt'd code
        if raw == "}" {
            inside = false;
        }
        if !inside {
            continue;
        }
        let l = raw.trim();
        let rest = l
            .strip_prefix("pub async fn ")
            .or_else(|| l.strip_prefix("pub fn "));
        if let Some(rest) = rest {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

/// What is wrong with a facade's method list, as readable lines.
fn facade_problems(methods: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if methods.len() > FACADE_MAX_METHODS {
        out.push(format!(
            "the facade has {} public methods (at most {FACADE_MAX_METHODS}): {methods:?}",
            methods.len()
        ));
    }
    for m in methods.iter().filter(|m| m.ends_with("_as")) {
        out.push(format!(
            "`{m}` is a twin: pass the caller to the one method"
        ));
    }
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_crate_exports_exactly_its_listed_surface() {
    let lib = read("src/lib.rs");
    assert_eq!(public_modules(&lib), set(PUBLIC_MODULES), "public modules");
    assert_eq!(root_items(&lib), set(ROOT_ITEMS), "items at the crate root");
}

#[test]
fn the_facade_is_narrow_and_has_no_twins() {
    let methods = facade_methods(&read("src/orchestrator.rs"));
    assert!(
        methods.len() >= 20,
        "the reader found too few methods: {methods:?}"
    );
    let problems = facade_problems(&methods);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_rules_can_fail() {
    let lib = "pub mod home;\nmod core; // pub mod x;\npub use a::{B, c::D as E};\npub use f::G;";
    assert_eq!(public_modules(lib), set(&["home"]));
    assert_eq!(root_items(lib), set(&["B", "E", "G"]));
    let src = "impl Orchestrator {\n    pub fn admit(&self) {}\n    pub async fn admit_as(&self) {}\n    fn lookup() {}\n}\npub fn outside() {}";
    let methods = facade_methods(src);
    assert_eq!(methods, ["admit", "admit_as"]);
    assert_eq!(facade_problems(&methods).len(), 1);
    let many: Vec<String> = (0..=FACADE_MAX_METHODS).map(|i| format!("m{i}")).collect();
    assert_eq!(facade_problems(&many).len(), 1);
}
