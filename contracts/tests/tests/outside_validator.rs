//! The committed OpenAPI documents checked by a validator nobody here wrote:
//! `openapi-spec-validator` (PyPI, installed into the project's venv by
//! `scripts/provision.sh`). It reads YAML as YAML 1.1 (PyYAML), so it also catches
//! scalars that 1.1 and 1.2 readers disagree on (a bare `no` is a boolean to 1.1).
//! A missing validator fails the test: run `scripts/provision.sh`.

use std::path::PathBuf;
use std::process::Command;

fn validator() -> PathBuf {
    if let Some(p) = std::env::var_os("ORCH_OPENAPI_VALIDATOR") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("ORCH_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/orchestratord")))
        .expect("HOME or ORCH_CACHE_DIR");
    cache.join("venv/bin/openapi-spec-validator")
}

fn validate(path: &std::path::Path) -> (bool, String) {
    let bin = validator();
    assert!(
        bin.is_file(),
        "{} missing: run scripts/provision.sh (it installs the validator)",
        bin.display()
    );
    let out = Command::new(&bin)
        .arg(path)
        .output()
        .expect("run the validator");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn committed_documents_pass_openapi_spec_validator() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../openapi");
    for name in ["data.yaml", "control.yaml"] {
        let (ok, text) = validate(&dir.join(name));
        assert!(ok, "{name} rejected by openapi-spec-validator:\n{text}");
    }
}

#[test]
fn the_validator_rejects_a_broken_document() {
    let dir = std::env::temp_dir().join(format!("orch-openapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bad = dir.join("bad.yaml");
    // the YAML 1.1 trap this project fell into once: a bare `no` description
    std::fs::write(
        &bad,
        "openapi: 3.1.0\ninfo: {title: t, version: '1'}\npaths:\n  /x:\n    get:\n      responses:\n        '200':\n          description: no\n",
    )
    .expect("write");
    let (ok, text) = validate(&bad);
    assert!(!ok, "a boolean description must be rejected:\n{text}");
}
