//! The module layering of orch-services, read from the sources: every module sits on
//! a layer and may use only modules on lower layers, so there is no cycle, and the
//! data-plane facade (`orchestrator`) is imported by no module of the crate.
//! A new module must be given a layer here before it compiles into a green run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layer of every top-level module, bottom up.
const LAYERS: &[(&str, u32)] = &[
    ("config", 0),
    ("metrics", 0),
    ("lifecycle", 0),
    ("auth", 0),
    ("task", 1),
    ("accounts", 1),
    ("sessions", 1),
    ("tenants", 1),
    ("pool", 2),
    ("recent", 2),
    ("runner", 3),
    ("home", 3),
    ("table", 4),
    ("registry", 4),
    ("local", 5),
    ("core", 6),
    ("streaming", 7),
    ("admission", 7),
    ("control", 7),
    ("manager", 7),
    ("gauges", 7),
    ("console", 8),
    ("orchestrator", 9),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a source file belongs to (`None` for lib.rs).
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).ok()?;
    let first = rel.components().next()?.as_os_str().to_string_lossy();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib").then_some(name)
}

/// `crate::X` paths in code (comments and doc comments skipped).
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let tail = &rest[i + "crate::".len()..];
            let name: String = tail
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
            rest = tail;
        }
    }
    out
}

/// module → modules it uses.
fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let Some(m) = module_of(&f) else { continue };
        let text = std::fs::read_to_string(&f).expect("read source");
        let refs = crate_refs(&text);
        let e = g.entry(m.clone()).or_default();
        e.extend(refs.into_iter().filter(|r| *r != m));
    }
    g
}

/// Layering violations of a graph, as readable lines.
fn violations(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let layer: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let mut out = Vec::new();
    for (m, uses) in g {
        let Some(&lm) = layer.get(m.as_str()) else {
            out.push(format!(
                "module `{m}` has no layer in tests/module_graph.rs"
            ));
            continue;
        };
        for u in uses {
            match layer.get(u.as_str()) {
                Some(&lu) if lu < lm => {}
                Some(&lu) => out.push(format!(
                    "`{m}` (layer {lm}) uses `{u}` (layer {lu}): a module may use only lower layers"
                )),
                None => out.push(format!("`{m}` uses unknown module `{u}`")),
            }
        }
    }
    out
}

#[test]
fn modules_use_only_lower_layers_and_have_no_cycle() {
    let g = edges();
    assert!(
        g.get("runner").is_some_and(|u| u.contains("pool")),
        "the reader found no edges: {g:?}"
    );
    // every edge goes down a layer, so there is no cycle (the workspace-wide circle
    // check is bin/orchestratord/tests/module_graph.rs)
    let v = violations(&g);
    assert!(v.is_empty(), "layering violations:\n{}", v.join("\n"));
}

#[test]
fn nothing_imports_the_facade() {
    let users: Vec<_> = edges()
        .into_iter()
        .filter(|(_, uses)| uses.contains("orchestrator"))
        .map(|(m, _)| m)
        .collect();
    assert!(users.is_empty(), "modules importing the facade: {users:?}");
}

#[test]
fn the_rules_can_fail() {
    let mut g = BTreeMap::new();
    g.insert(
        "runner".to_string(),
        BTreeSet::from(["orchestrator".to_string()]),
    );
    g.insert(
        "orchestrator".to_string(),
        BTreeSet::from(["runner".to_string()]),
    );
    // a cycle always breaks the layering somewhere
    assert_eq!(violations(&g).len(), 1);
    assert_eq!(
        crate_refs("use crate::pool::X; // crate::table\n/// [`crate::core`]"),
        BTreeSet::from(["pool".to_string()])
    );
}
