//! Helpers of the tests against real llama-server replicas: the engine's presence
//! check, a pool config, a greedy task, and waits on a task's tokens and the pool.

use super::TestServer;
use serde_json::{json, Value};
use std::time::Duration;

pub const LONG: &str = "Count from one to one hundred, one number per line:\n1\n2\n3\n";

/// Fails the test when the provisioned engine or model is missing.
pub fn require_engine() {
    let bin = orchestratord::engines::default_llama_server();
    let model = orchestratord::engines::default_model();
    if bin.is_file() && model.is_file() {
        // the binary provision.sh built, not just a file of that name
        if let Err(e) = orchestratord::engines::verify_engine_binary(&bin) {
            panic!("{e}");
        }
        return;
    }
    let msg = format!(
        "llama-server or model missing ({} / {}); run scripts/provision.sh",
        bin.display(),
        model.display()
    );
    panic!("{msg} (or leave these tests out with ORCH_SKIP_REAL_ENGINE=1)");
}

pub fn llama_config(replicas: u32, slots: u32, threads: u32, extra: &str) -> String {
    format!(
        r#"
[server]
keepalive_ms = 200
stream_grace_ms = 60000

[[pools]]
id = "llama"
engine = "llamacpp"
model = "gemma-3-270m"
replicas = {replicas}
max_tokens_out = 512
first_token_timeout_ms = 30000
idle_timeout_ms = 10000
{extra}

[pools.llamacpp]
ctx = {ctx}
slots = {slots}
threads = {threads}
"#,
        ctx = 1024 * slots
    )
}

pub fn llama_task(prompt: &str, max_tokens: u32) -> Value {
    json!({
        "workload": "completion",
        "model_ref": "gemma-3-270m",
        "priority": "interactive",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
    })
}

pub async fn pools(s: &TestServer) -> Value {
    s.get_json("/v1/pools").await
}

/// Wait until the task has streamed at least `n` tokens.
pub async fn wait_tokens(s: &TestServer, id: &str, n: u64) {
    for _ in 0..600 {
        if s.status(id).await["tokens_out"].as_u64().unwrap_or(0) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {id} never reached {n} tokens");
}

pub async fn wait_ready(s: &TestServer) {
    for _ in 0..600 {
        let h: Value = s.get_json("/v1/pools/llama/health").await;
        if h["ready"] == true {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("pool never became ready again");
}
