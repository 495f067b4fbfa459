//! The explicit opt-out of the real-engine tests: `ORCH_SKIP_REAL_ENGINE=1` (as for the
//! BDD journeys) or `--features skip-real-engine` leaves `tests/llamacpp.rs` out of the
//! build, and says so loudly in the build output. Without it a missing engine fails.

fn main() {
    println!("cargo::rerun-if-env-changed=ORCH_SKIP_REAL_ENGINE");
    println!("cargo::rustc-check-cfg=cfg(skip_real_engine)");
    let by_env = std::env::var("ORCH_SKIP_REAL_ENGINE").is_ok_and(|v| v == "1");
    let by_feature = std::env::var_os("CARGO_FEATURE_SKIP_REAL_ENGINE").is_some();
    if by_env || by_feature {
        let why = if by_env {
            "ORCH_SKIP_REAL_ENGINE=1"
        } else {
            "--features skip-real-engine"
        };
        println!("cargo::rustc-cfg=skip_real_engine");
        println!(
            "cargo::warning=SKIP: the real-engine tests (tests/llamacpp.rs) are left out of this build ({why}); they have NOT run"
        );
    }
}
