//! No import circle anywhere in the workspace: inside every crate (the binary and
//! orch-cluster included), modules that share a parent never use each other both ways,
//! directly or around a longer loop. A child using its parent's items (`super::X`)
//! and a parent using its children is structure, not a circle, and is not counted.
//! orch-services is held to a stricter, layered order by its own
//! `tests/module_graph.rs`.
//!
//! References are read from the sources: `crate::a::b`, `super::a`, `self::a` paths
//! (also inside `use …::{…}` groups), with comments skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Source roots of every crate in the workspace.
const CRATES: &[&str] = &[
    "crates/orch-domain/src",
    "crates/orchestrator-core/src",
    "crates/adapter-api/src",
    "crates/orch-services/src",
    "crates/orch-api/src",
    "crates/orch-client/src",
    "crates/orch-cluster/src",
    "adapters/mock/src",
    "adapters/llamacpp/src",
    "adapters/openai/src",
    "bin/orchestratord/src",
    "bin/orch/src",
    "bench/src",
];

type Module = Vec<String>;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
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

/// The module a file defines (`[]` for the crate root).
fn module_of(root: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(root).expect("under the root");
    let mut m: Module = rel
        .components()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect();
    if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        m.pop();
    }
    m
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// Paths after `prefix` in `code`: `prefix a::b` gives `[a, b]`; `prefix {a::x, b}`
/// gives `[a, x]` and `[b]` (one level of group).
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        let tail = &rest[i + prefix.len()..];
        rest = tail;
        // `foo_crate::` or `xsuper::` are other names
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let items: Vec<&str> = match tail.strip_prefix('{') {
            Some(group) => group[..group.find('}').unwrap_or(group.len())]
                .split(',')
                .collect(),
            None => vec![tail],
        };
        for item in items {
            let segs: Vec<String> = item
                .trim()
                .split("::")
                .map(ident)
                .take_while(|s| !s.is_empty())
                .collect();
            if !segs.is_empty() {
                out.push(segs);
            }
        }
    }
    out
}

/// The longest known module that `path` (from the crate root) names.
fn resolve(path: &[String], modules: &BTreeSet<Module>) -> Option<Module> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|m| modules.contains(m))
}

/// Modules a file's code refers to.
fn refs(text: &str, me: &Module, modules: &BTreeSet<Module>) -> BTreeSet<Module> {
    let mut out = BTreeSet::new();
    // `super` of `a/b.rs` and of `a/b/mod.rs` is `a`; `self` is the module itself
    let parent: Module = me[..me.len().saturating_sub(1)].to_vec();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        for p in paths_after(code, "crate::") {
            out.extend(resolve(&p, modules));
        }
        for p in paths_after(code, "super::") {
            let mut full = parent.clone();
            full.extend(p);
            out.extend(resolve(&full, modules));
        }
        for p in paths_after(code, "self::") {
            let mut full = me.clone();
            full.extend(p);
            out.extend(resolve(&full, modules));
        }
    }
    out
}

/// Edges between sibling modules (children of one parent), by parent: a reference
/// from `a::b::x` to `a::c::y` is `b → c` under `a`.
type Siblings = BTreeMap<Module, BTreeMap<String, BTreeSet<String>>>;

fn sibling_edges(root: &Path) -> Siblings {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(root, f)).collect();
    let mut g = Siblings::new();
    for f in &files {
        let me = module_of(root, f);
        let text = std::fs::read_to_string(f).expect("read source");
        for to in refs(&text, &me, &modules) {
            add_edge(&mut g, &me, &to);
        }
    }
    g
}

fn add_edge(g: &mut Siblings, from: &Module, to: &Module) {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    // one is the other's ancestor: structure, not a circle
    if common == from.len() || common == to.len() {
        return;
    }
    g.entry(from[..common].to_vec())
        .or_default()
        .entry(from[common].clone())
        .or_default()
        .insert(to[common].clone());
}

/// A circle among one parent's children, if any (depth-first search).
fn circle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|n| visit(n, g, &mut Vec::new(), &mut done))
}

fn circles(g: &Siblings) -> Vec<String> {
    g.iter()
        .filter_map(|(parent, kids)| {
            circle(kids).map(|c| {
                let at = if parent.is_empty() {
                    "crate".to_string()
                } else {
                    format!("crate::{}", parent.join("::"))
                };
                format!("{at}: {}", c.join(" -> "))
            })
        })
        .collect()
}

#[test]
fn no_crate_has_an_import_circle() {
    let mut found = Vec::new();
    let mut edges = 0;
    for c in CRATES {
        let g = sibling_edges(&workspace().join(c));
        edges += g
            .values()
            .map(|k| k.values().map(BTreeSet::len).sum::<usize>())
            .sum::<usize>();
        found.extend(circles(&g).into_iter().map(|l| format!("{c}: {l}")));
    }
    assert!(edges > 50, "the reader found almost no edges ({edges})");
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
}

#[test]
fn the_rules_can_fail() {
    let m = |s: &str| -> Module { s.split("::").map(String::from).collect() };
    let modules: BTreeSet<Module> = ["node", "node::leader", "node::live", "server", "reconfig"]
        .iter()
        .map(|s| m(s))
        .collect();
    // a circle between siblings two levels down, and one at the top
    let mut g = Siblings::new();
    let leader = refs(
        "use super::live::answer; // crate::server",
        &m("node::leader"),
        &modules,
    );
    assert_eq!(leader, BTreeSet::from([m("node::live")]));
    for to in leader {
        add_edge(&mut g, &m("node::leader"), &to);
    }
    for to in refs(
        "use super::{leader::Running, Node};",
        &m("node::live"),
        &modules,
    ) {
        add_edge(&mut g, &m("node::live"), &to);
    }
    for to in refs("use crate::{reconfig::Reconfig};", &m("server"), &modules) {
        add_edge(&mut g, &m("server"), &to);
    }
    for to in refs("use crate::server::pool_spec;", &m("reconfig"), &modules) {
        add_edge(&mut g, &m("reconfig"), &to);
    }
    let found = circles(&g);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found.iter().any(|l| l.starts_with("crate::node: ")));
    assert!(found.iter().any(|l| l.starts_with("crate: ")));
    // a child using its parent and the parent using it is not a circle
    let mut g = Siblings::new();
    add_edge(&mut g, &m("node::leader"), &m("node"));
    add_edge(&mut g, &m("node"), &m("node::leader"));
    assert!(circles(&g).is_empty());
    // another crate's `orch_services::task` is not this crate's module
    assert!(paths_after("orch_crate::x", "crate::").is_empty());
}
