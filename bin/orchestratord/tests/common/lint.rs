//! `/metrics` held to the lint files: `ci/metrics.lint.json` (standalone) and, for an
//! instance built with the cluster feature, `ci/metrics.cluster.lint.json`. Every
//! exposed series is listed with its type and exact label keys, no label value is
//! unbounded (a UUID, a prompt, `unknown`), and each metric keeps its series budget;
//! `promtool check metrics` finds nothing but the unit lint the spec's `_ms` names
//! draw.

use super::prom::promtool;
use std::collections::{BTreeMap, BTreeSet};

#[derive(serde::Deserialize)]
pub struct Lint {
    pub metrics: Vec<LintMetric>,
}

#[derive(serde::Deserialize)]
pub struct LintMetric {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub labels: Vec<String>,
    pub max_series: usize,
}

pub fn standalone() -> Lint {
    serde_json::from_str(include_str!("../../../../ci/metrics.lint.json")).unwrap()
}

/// The GPU gauges: allowed where a GPU exists, never required.
pub fn gpu() -> Lint {
    serde_json::from_str(include_str!("../../../../ci/metrics.gpu.lint.json")).unwrap()
}

pub fn cluster() -> Lint {
    serde_json::from_str(include_str!("../../../../ci/metrics.cluster.lint.json")).unwrap()
}

/// What an exposition held, once it passed [`check`].
pub struct Checked {
    /// Each metric's series (their label strings).
    pub series: BTreeMap<String, BTreeSet<String>>,
    /// Each (metric, label key)'s values.
    pub values: BTreeMap<(String, String), BTreeSet<String>>,
}

/// Hold `text` to `lints` (panics on the first breach): every series listed, type and
/// label keys exact, no value containing `secret`, each metric within its budget.
pub fn check(text: &str, lints: &[&Lint], secret: &str) -> Checked {
    let by_name: BTreeMap<&str, &LintMetric> = lints
        .iter()
        .flat_map(|l| l.metrics.iter())
        .map(|m| (m.name.as_str(), m))
        .collect();
    let mut series: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut values: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (n, t) = rest.split_once(' ').unwrap();
            types.insert(n.to_string(), t.to_string());
        }
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (head, _) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match head.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (head, ""),
        };
        let base_name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| {
                name.strip_suffix(suf)
                    .filter(|b| by_name.get(b).is_some_and(|m| m.kind == "histogram"))
            })
            .unwrap_or(name);
        let m = by_name
            .get(base_name)
            .unwrap_or_else(|| panic!("{base_name} is exposed but in no lint file"));
        assert_eq!(
            types.get(base_name).map(String::as_str),
            Some(m.kind.as_str()),
            "{base_name}: exposed type differs from the lint file"
        );
        let mut keys = BTreeSet::new();
        for kv in labels.split("\",").filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once("=\"").unwrap();
            let v = v.trim_end_matches('"');
            assert!(
                uuid::Uuid::parse_str(v).is_err() && !v.contains(secret),
                "{line}: unbounded label value"
            );
            assert_ne!(v, "unknown", "{line}: a series with an unknown label value");
            if k != "le" {
                keys.insert(k.to_string());
                values
                    .entry((base_name.to_string(), k.to_string()))
                    .or_default()
                    .insert(v.to_string());
            }
        }
        let want: BTreeSet<String> = m.labels.iter().cloned().collect();
        assert_eq!(keys, want, "{line}: label keys differ from the lint file");
        series
            .entry(base_name.to_string())
            .or_default()
            .insert(labels.to_string());
    }
    for (name, s) in &series {
        let budget = by_name[name.as_str()].max_series;
        assert!(
            s.len() <= budget,
            "{name}: {} series over its budget",
            s.len()
        );
    }
    Checked { series, values }
}

/// Every metric of `lint` is exposed.
pub fn all_exposed(c: &Checked, lint: &Lint) {
    for m in &lint.metrics {
        assert!(
            c.series.contains_key(&m.name),
            "{} is in the lint file but not exposed after the workload",
            m.name
        );
    }
}

/// Names in milliseconds: spec §5 fixes these, the others keep the same unit (the
/// cluster's two store histograms among them). promtool's advice to use base units is
/// the one lint they may draw.
const MS_NAMES: [&str; 9] = [
    "latency_first_token_ms",
    "latency_first_token_dispatch_ms",
    "latency_decode_ms",
    "queue_wait_ms",
    "orchestrator_added_latency_ms",
    "orchestrator_dispatch_latency_ms",
    "cluster_task_store_ms",
    "cluster_frame_store_ms",
    "task_migration_pause_ms",
];

/// `promtool check metrics` reads `text` and finds nothing but "abbreviated units" on
/// [`MS_NAMES`].
pub fn promtool_clean(text: &str) {
    let (code, out) = promtool(&["check", "metrics"], Some(text));
    assert!(
        code == 0 || code == 3,
        "promtool could not read the exposition ({code}): {out}"
    );
    for problem in out.lines().filter(|l| !l.trim().is_empty()) {
        let allowed = problem
            .strip_suffix(" metric names should not contain abbreviated units")
            .is_some_and(|n| MS_NAMES.contains(&n));
        assert!(allowed, "promtool check metrics: {problem}");
    }
}

/// Whether `text` has a sample of `name` whose labels include every `labels` pair.
pub fn has(text: &str, name: &str, labels: &[(&str, &str)]) -> bool {
    samples(text, name, labels).next().is_some()
}

fn samples<'a>(
    text: &'a str,
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = &'a str> + 'a {
    text.lines()
        .filter(move |l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter(move |l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
}

/// Sum of the samples of `name` whose labels include every `labels` pair.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text, name, labels)
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}
