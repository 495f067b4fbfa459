//! Consumer pacts: what orch-client expects of orchestratord, recorded by running the
//! real client against a pact mock server. Writes
//! `contracts/pacts/orch-client-orchestratord.json` (committed; verified against the
//! real provider by `provider_verify.rs`). The stream interaction pins its frames with
//! one regular expression over the whole `text/event-stream` body: `started` (with its
//! engine, pool, replica, profile and seed), one or more `token`s, then `end` (with its
//! counts and finish reason), `metrics` frames and keep-alive comments allowed between.

use pact_consumer::prelude::*;
use std::path::PathBuf;

pub const TASK_DONE: &str = "2b7f4c1e-9a41-4f0e-8d3b-5c6a7e8f9a10";
pub const TASK_RUNNING: &str = "3c8e5d2f-0b52-4a1f-9e4c-6d7b8f9a0b21";
pub const SESSION: &str = "4d9f6e3a-1c63-4b2a-8f5d-7e8c9a0b1c32";

fn pacts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pacts")
}

fn task(prompt: &str) -> serde_json::Value {
    serde_json::json!({"workload": "completion", "model_ref": "mock-model", "priority": "interactive", "prompt": prompt, "max_tokens": 4})
}

/// A finished task's whole stream, as the provider sends it (frame order, names and the
/// leading fields of each frame's data; later additive fields are allowed).
const STREAM_RE: &str = concat!(
    r#"^(: [^\n]*\n\n|event: metrics\nid: \d+\ndata: \{[^\n]*\}\n\n)*"#,
    r#"event: started\nid: \d+\ndata: \{"queue_position":\d+,"predicted_start_ms":\d+,"#,
    r#""engine":"[^"]+","engine_version":"[^"]+","model":"[^"]+","pool_id":"[^"]+","#,
    r#""replica_id":"[^"]+","sampler_profile_version":"[^"]+","seed":-?\d+[^\n]*\}\n\n"#,
    r#"(event: token\nid: \d+\ndata: \{"t":"([^"\\]|\\.)*","i":\d+(,"ids":\[\d+(,\d+)*\])?\}\n\n"#,
    r#"|event: metrics\nid: \d+\ndata: \{[^\n]*\}\n\n|: [^\n]*\n\n)+"#,
    r#"event: end\nid: \d+\ndata: \{"tokens_in":\d+,"tokens_out":\d+,"decode_time_ms":\d+,"#,
    r#""ttft_ms":\d+,"finish_reason":"(length|stop|eos)"[^\n]*\}\n\n$"#,
);

/// The example the pact mock server answers with (it matches `STREAM_RE`).
const STREAM_EXAMPLE: &str = concat!(
    "event: started\nid: 1\ndata: {\"queue_position\":0,\"predicted_start_ms\":0,\"engine\":\"mock\",",
    "\"engine_version\":\"mock-0.1.0\",\"model\":\"sha256:d0a9\",\"pool_id\":\"mockpool\",",
    "\"replica_id\":\"mockpool-r0\",\"sampler_profile_version\":\"v1\",\"seed\":7,\"placement\":\"load\"}\n\n",
    "event: token\nid: 2\ndata: {\"t\":\" amber\",\"i\":0,\"ids\":[1]}\n\n",
    "event: token\nid: 3\ndata: {\"t\":\" brook\",\"i\":1,\"ids\":[2]}\n\n",
    "event: end\nid: 4\ndata: {\"tokens_in\":2,\"tokens_out\":2,\"decode_time_ms\":1,\"ttft_ms\":1,",
    "\"finish_reason\":\"length\"}\n\n",
);

const UUID_RE: &str = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";

#[test]
fn orch_client_consumer_pacts() {
    let mut pb = PactBuilder::new("orch-client", "orchestratord");
    pb.with_output_dir(pacts_dir());
    pb.interaction("enqueue a task", "", |mut i| {
        i.given("a mock pool serves mock-model");
        i.request.method("POST").path("/v1/tasks")
            .header("Content-Type", "application/json").json_body(task("Hello there"));
        i.response.status(202).content_type("application/json").json_body(json_pattern!({
            "task_id": term!(UUID_RE, "7d1a3f52-0c7e-4c9a-9a51-2d1f0e8b6c11"),
            "queue_position": like!(0),
            "predicted_start_ms": like!(0),
            "backoff_ms": 0,
            "streams": {"sse": term!("^/v1/tasks/[0-9a-f-]{36}/stream$", "/v1/tasks/7d1a3f52-0c7e-4c9a-9a51-2d1f0e8b6c11/stream")}
        }));
        i
    });
    pb.interaction("enqueue into a full queue", "", |mut i| {
        i.given("the queue of pool mockpool is full");
        i.request
            .method("POST")
            .path("/v1/tasks")
            .header("Content-Type", "application/json")
            .json_body(task("one too many"));
        i.response
            .status(429)
            .content_type("application/json")
            .header("Retry-After", term!("^[1-9][0-9]*$", "1"))
            .header("X-Backoff-Ms", term!("^[0-9]+$", "1000"))
            .json_body(json_pattern!({
                "code": "ADMISSION_REJECT",
                "message": like!("queue of pool mockpool is full (capacity 1)"),
                "retriable": true,
                "retry_after_ms": like!(1000),
                "policy_label": "reject",
                "engine": "mock",
                "pool_id": "mockpool",
                "correlation_id": like!("b9f0c2de-5d4f-4c55-8d0e-3f3c2a1b0a99")
            }));
        i
    });
    pb.interaction("enqueue an invalid task", "", |mut i| {
        i.given("a mock pool serves mock-model");
        i.request
            .method("POST")
            .path("/v1/tasks")
            .header("Content-Type", "application/json")
            .json_body(task(""));
        i.response
            .status(400)
            .content_type("application/json")
            .json_body(json_pattern!({
                "code": "INVALID_PARAMS",
                "message": "prompt: must not be empty",
                "retriable": false,
                "correlation_id": like!("b9f0c2de-5d4f-4c55-8d0e-3f3c2a1b0a99")
            }));
        i
    });
    pb.interaction("stream a finished task", "", |mut i| {
        i.given("task 2b7f4c1e-9a41-4f0e-8d3b-5c6a7e8f9a10 has finished");
        i.request
            .method("GET")
            .path(format!("/v1/tasks/{TASK_DONE}/stream"));
        i.response
            .status(200)
            .content_type("text/event-stream")
            .body_matching2(term!(STREAM_RE, STREAM_EXAMPLE), "text/event-stream");
        i
    });
    pb.interaction("cancel a running task", "", |mut i| {
        i.given("task 3c8e5d2f-0b52-4a1f-9e4c-6d7b8f9a0b21 is running");
        i.request
            .method("POST")
            .path(format!("/v1/tasks/{TASK_RUNNING}/cancel"));
        i.response.status(204);
        i
    });
    pb.interaction("get a session", "", |mut i| {
        i.given("session 4d9f6e3a-1c63-4b2a-8f5d-7e8c9a0b1c32 has one finished turn");
        i.request
            .method("GET")
            .path(format!("/v1/sessions/{SESSION}"));
        i.response
            .status(200)
            .content_type("application/json")
            .json_body(json_pattern!({
                "session_id": SESSION,
                "turns": 1,
                "ttl_ms_remaining": like!(600000),
                "tokens_used": like!(8),
                "pool_id": "mockpool",
                "replica_id": "mockpool-r0",
                "kv_warmth": true
            }));
        i
    });
    pb.interaction("delete a session", "", |mut i| {
        i.given("session 4d9f6e3a-1c63-4b2a-8f5d-7e8c9a0b1c32 has one finished turn");
        i.request
            .method("DELETE")
            .path(format!("/v1/sessions/{SESSION}"));
        i.response.status(204);
        i
    });
    pb.interaction("get capabilities", "", |mut i| {
        i.given("a mock pool serves mock-model");
        i.request.method("GET").path("/v1/capabilities");
        i.response.status(200).content_type("application/json").json_body(json_pattern!({
            "api_version": "1.0.0",
            "engines": each_like!({
                "pool_id": "mockpool", "engine": "mock", "engine_version": like!("mock-0.1.0"),
                "sampler_profile_version": like!("v1"), "model": "mock-model",
                "model_digest": term!("^sha256:[0-9a-f]{64}$", "sha256:d0a9bc032a6acfdcfe07305f67efa5e46dc68a8074ddf273f44a55d7dc4f528c"),
                "ctx_max": like!(4096), "max_tokens_out": like!(2048), "workloads": ["completion"],
                "concurrency": like!(1), "queue": {"capacity": like!(1), "policy": like!("reject")}, "ready": true
            }),
            "rate_limits": {"prompt_max_chars": like!(262144), "prompt_max_bytes": like!(262144), "body_max_bytes": like!(1114112)},
            "features": each_like!("sse")
        }));
        i
    });
    pb.interaction("get pool health", "", |mut i| {
        i.given("a mock pool serves mock-model");
        i.request.method("GET").path("/v1/pools/mockpool/health");
        i.response
            .status(200)
            .content_type("application/json")
            .json_body(json_pattern!({
                "pool_id": "mockpool", "live": true, "ready": true, "draining": false,
                "queue_depth": like!(0), "queue_capacity": like!(1), "slots_total": like!(1),
                "slots_free": like!(1), "replicas_ready": like!(1), "replicas_total": like!(1)
            }));
        i
    });

    let server = pb.start_mock_server(None, None);
    let base = server.url().to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use orch_client::{Client, ClientError};
        use orch_domain::{SessionId, TaskId};
        let c = Client::new(base.trim_end_matches('/'));
        let req = |p: &str| serde_json::from_value::<orch_domain::TaskRequest>(task(p)).unwrap();
        let adm = c.submit(&req("Hello there")).await.unwrap();
        assert_eq!(adm.streams.sse, format!("/v1/tasks/{}/stream", adm.task_id));
        match c.submit(&req("one too many")).await {
            Err(ClientError::Api {
                status: 429,
                envelope,
            }) => {
                assert_eq!(envelope.policy_label.map(|p| p.as_str()), Some("reject"))
            }
            other => panic!("expected 429, got {other:?}"),
        }
        match c.submit(&req("")).await {
            Err(ClientError::Api {
                status: 400,
                envelope,
            }) => assert!(envelope.message.starts_with("prompt")),
            other => panic!("expected 400, got {other:?}"),
        }
        let done: TaskId = TASK_DONE.parse().unwrap();
        // the client reads the frames the pact pins: started, tokens, end
        let mut stream = c.stream_from(done, 0).await.unwrap();
        let mut kinds = Vec::new();
        while let Some(ev) = futures_util::StreamExt::next(&mut stream).await {
            kinds.push(ev.unwrap().event.kind().as_str());
        }
        assert_eq!(kinds, ["started", "token", "token", "end"]);
        c.cancel(TASK_RUNNING.parse().unwrap()).await.unwrap();
        let sid: SessionId = SESSION.parse().unwrap();
        let info = c.session(sid).await.unwrap();
        assert_eq!(info.turns, 1);
        c.delete_session(sid).await.unwrap();
        let caps = c.capabilities().await.unwrap();
        assert_eq!(caps.api_version, orch_domain::control::API_VERSION);
        let h = c.pool_health("mockpool").await.unwrap();
        assert!(h.ready);
    });
}
