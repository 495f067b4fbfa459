//! schemathesis (PyPI, installed into the project's venv by `scripts/provision.sh`)
//! against live servers with API keys: every check (`--checks all`), example-based,
//! coverage, fuzzing and stateful phases (the 202 of `createTask` links to the task's
//! operations), on both documents. A fixed seed keeps the run reproducible; the config
//! is `contracts/schemathesis.toml` (it documents the accepted refusals), and
//! `contracts/schemathesis_hooks.py` puts the test pool's values into exactly the
//! pool-dependent fields of schema-valid submissions, so no 400 is accepted for them. A missing
//! schemathesis fails the test: run `scripts/provision.sh`.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Command;

const ADMIN: &str = "oqk_schemathesis-admin";
const CLIENT: &str = "oqk_schemathesis-client";

fn st() -> PathBuf {
    let cache = std::env::var_os("ORCH_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/orchestratord")))
        .expect("HOME or ORCH_CACHE_DIR");
    cache.join("venv/bin/st")
}

fn config() -> String {
    let key = |k: &str, t: &str, r: &str| {
        format!(
            "[[auth.keys]]\nsha256 = \"{}\"\ntenant = \"{t}\"\nrole = \"{r}\"\n",
            orch_services::auth::digest_hex(k)
        )
    };
    format!(
        "{}{}[server]\nkeepalive_ms = 200\n[[pools]]\nid = \"p\"\nengine = \"mock\"\nmodel = \"mock-model\"\nqueue_capacity = 64\nsampler_profile_version = \"v1\"\nmax_tokens_out = 500000\n[pools.mock]\nslots = 4\ntokens_per_sec = 0.0\nttft_ms = 0\ntokens = 4\nctx_max = 1048576\n",
        key(ADMIN, "ops", "admin"),
        key(CLIENT, "st", "client")
    )
}

/// Run schemathesis on one document of a fresh server; (exit ok, output).
async fn run(doc: &str, key: &str) -> (bool, String) {
    let bin = st();
    assert!(
        bin.is_file(),
        "{} missing: run scripts/provision.sh (it installs schemathesis)",
        bin.display()
    );
    let file = std::env::temp_dir().join(format!("orch-st-{doc}-{}.toml", std::process::id()));
    std::fs::write(&file, config()).unwrap();
    let l = live_file(&file).await;
    let url = format!("{}/openapi/{doc}.yaml", l.base);
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemathesis.toml");
    let hooks_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let auth = format!("Authorization: Bearer {key}");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(["--config-file", cfg, "run", &url, "--checks", "all"])
            .args(["--exclude-operation-id", "readyz", "--max-examples", "30"])
            .args(["--seed", "20261128", "-H", &auth])
            .env("NO_COLOR", "1")
            // the pool-dependent fields of schema-valid submissions (see the file)
            .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
            .env("PYTHONPATH", hooks_dir)
            .output()
            .expect("run schemathesis")
    })
    .await
    .unwrap();
    let _ = std::fs::remove_file(&file);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure_in_the_data_plane() {
    let (ok, text) = run("data", CLIENT).await;
    let summary: String = text.lines().rev().take(12).collect::<Vec<_>>().join("\n");
    eprintln!("{summary}");
    assert!(ok, "schemathesis failed on data.yaml:\n{text}");
    assert!(text.contains("passed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure_in_the_control_plane() {
    let (ok, text) = run("control", ADMIN).await;
    let summary: String = text.lines().rev().take(12).collect::<Vec<_>>().join("\n");
    eprintln!("{summary}");
    assert!(ok, "schemathesis failed on control.yaml:\n{text}");
}
