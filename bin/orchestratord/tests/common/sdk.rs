//! The official `openai` Python SDK against a running server: the script
//! `tests/py/openai_sdk.py` reports what it saw as JSON; these helpers run it and hold
//! the report to what every engine must show.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::path::PathBuf;

pub const CLIENT_KEY: &str = "oqk_openai-door-client";
pub const LIMITED_KEY: &str = "oqk_openai-door-limited";

pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("ORCH_PYTHON") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("ORCH_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/orchestratord")))
        .expect("HOME or ORCH_CACHE_DIR");
    cache.join("venv/bin/python")
}

pub fn keys() -> String {
    let entry = |k: &str, t: &str| {
        format!(
            "[[auth.keys]]\nsha256 = \"{}\"\ntenant = \"{t}\"\nrole = \"client\"\n",
            orch_services::auth::digest_hex(k)
        )
    };
    format!(
        "{}{}[tenants.limited]\ntokens_per_minute = 10\n",
        entry(CLIENT_KEY, "door"),
        entry(LIMITED_KEY, "limited")
    )
}

/// Run the SDK script against `base`; its JSON report.
pub fn run_sdk(base: &str, model: &str) -> Value {
    let py = python();
    assert!(
        py.is_file(),
        "{} missing: run scripts/provision.sh (it installs the openai SDK)",
        py.display()
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/openai_sdk.py");
    let out = std::process::Command::new(&py)
        .args([script, base, CLIENT_KEY, model, LIMITED_KEY])
        .output()
        .expect("run the SDK script");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "SDK script failed: {stderr}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("SDK report is not JSON ({e}): {stderr}"))
}

/// What every run of the SDK script must show, on any engine.
pub fn assert_sdk_report(r: &Value, model: &str) {
    assert!(
        r["models"].as_array().unwrap().iter().any(|m| m == model),
        "{r}"
    );
    let chat = &r["chat"];
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["role"], "assistant");
    assert!(!chat["content"].as_str().unwrap().is_empty(), "{r}");
    assert!(
        chat["task_id"].as_str().is_some_and(|t| t.len() == 36),
        "{r}"
    );
    let u = &chat["usage"];
    assert!(u["completion_tokens"].as_u64().unwrap() >= 1);
    assert!(u["prompt_tokens"].as_u64().unwrap() >= 1);
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
    let st = &r["chat_stream"];
    assert_eq!(st["roles"], json!(["assistant"]));
    assert_eq!(
        st["content"], chat["content"],
        "same seed and prompt: streamed = whole"
    );
    assert_eq!(st["finish_reason"], chat["finish_reason"]);
    assert_eq!(st["usage"], chat["usage"]);
    assert!(!r["completion"]["text"].as_str().unwrap().is_empty());
    assert_eq!(r["completion_stream"]["text"], r["completion"]["text"]);
    assert_eq!(r["unsupported"], json!({"status": 400, "param": "n"}));
    assert_eq!(r["bad_key"], json!({"status": 401}));
    assert_eq!(r["rate_limited"]["status"], 429, "{r}");
    assert_eq!(r["rate_limited"]["code"], "quota_tokens_per_minute");
    assert!(r["rate_limited"]["retry_after"]
        .as_str()
        .is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
}

/// Stream one greedy completion through the door with the SDK (`openai_stream.py`);
/// the text the client received. Runs the script off the async runtime.
pub async fn stream_completion(base: &str, model: &str, prompt: &str, max_tokens: u32) -> String {
    let py = python();
    assert!(
        py.is_file(),
        "{} missing: run scripts/provision.sh",
        py.display()
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/openai_stream.py");
    let args = [
        script.to_string(),
        base.to_string(),
        model.to_string(),
        prompt.to_string(),
        max_tokens.to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&py)
            .args(&args)
            .output()
            .expect("run the SDK stream script")
    })
    .await
    .expect("the SDK script's thread");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "SDK stream script failed: {stderr}");
    let r: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("SDK report is not JSON ({e}): {stderr}"));
    r["text"].as_str().unwrap_or_default().to_string()
}
