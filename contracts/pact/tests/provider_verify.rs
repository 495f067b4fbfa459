//! Provider verification: start the real orchestratord (mock pool) on a loopback port,
//! set each interaction's provider state through a state-change endpoint, and verify
//! every interaction of the committed pact file with pact_verifier. A second test
//! proves the verification can fail: a pact with one deliberately broken field.

use axum::routing::post;
use axum::Json;
use orch_domain::{TaskId, TaskRequest, TaskState};
use orch_services::Caller;
use orchestratord::Server;
use pact_verifier::callback_executors::HttpRequestProviderStateExecutor;
use pact_verifier::{
    FilterInfo, NullRequestFilterExecutor, PactSource, ProviderInfo, ProviderTransport,
    VerificationOptions,
};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const MOCK: &str = r#"
[server]
keepalive_ms = 200
[[pools]]
id = "mockpool"
engine = "mock"
model = "mock-model"
queue_capacity = 1
[pools.mock]
slots = 1
tokens_per_sec = 20.0
ttft_ms = 5
tokens = 40
"#;

fn pact_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pacts/orch-client-orchestratord.json")
}

async fn start() -> Server {
    let cfg = orchestratord::Config::parse(MOCK)
        .unwrap()
        .with_temp_state();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let opts = orchestratord::StartOptions {
        skip_self_test: true,
    };
    orchestratord::start_with(cfg, l, orchestratord::telemetry::metrics(), opts)
        .await
        .unwrap()
}

fn request(prompt: &str, max_tokens: u32) -> TaskRequest {
    serde_json::from_value(json!({"workload": "completion", "model_ref": "mock-model",
        "priority": "interactive", "prompt": prompt, "max_tokens": max_tokens}))
    .unwrap()
}

/// End every live task and wait until the pool is idle.
async fn reset(orch: &orch_services::Orchestrator) {
    for id in orch.live_task_ids() {
        let _ = orch.cancel(&Caller::open(), id).await;
    }
    for _ in 0..250 {
        if orch.live_task_ids().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("provider state: tasks did not end");
}

async fn wait_state(orch: &orch_services::Orchestrator, id: TaskId, done: fn(TaskState) -> bool) {
    for _ in 0..250 {
        if orch
            .status(&Caller::open(), id)
            .await
            .map(|s| done(s.state))
            .unwrap_or(false)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("provider state: task {id} never reached the wanted state");
}

async fn set_state(orch: orch_services::Orchestrator, state: &str) -> Result<(), String> {
    reset(&orch).await;
    let consumer_ids = |s: &str| {
        s.split_whitespace()
            .find(|w| w.len() == 36)
            .map(str::to_string)
    };
    match state {
        "a mock pool serves mock-model" => {}
        "the queue of pool mockpool is full" => {
            // fill until every slot runs and the queue is at capacity (dispatch is async)
            for _ in 0..100 {
                while orch
                    .admit(&Caller::open(), request("filler", 40), "pact-state")
                    .await
                    .is_ok()
                {}
                let v = orch.pool_view("mockpool").map_err(|e| e.to_string())?;
                if v.slots_free == 0 && v.queue_depth >= v.queue_capacity {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            return Err("queue never filled".into());
        }
        s if s.ends_with("has finished") || s.ends_with("is running") => {
            let id: TaskId = consumer_ids(s)
                .ok_or("no task id")?
                .parse()
                .map_err(|_| "bad id")?;
            let mut r = request("state task", if s.ends_with("is running") { 40 } else { 2 });
            r.task_id = Some(id);
            orch.admit(&Caller::open(), r, "pact-state")
                .await
                .map_err(|e| e.to_string())?;
            if s.ends_with("is running") {
                wait_state(&orch, id, |st| st == TaskState::Running).await;
            } else {
                wait_state(&orch, id, TaskState::is_terminal).await;
            }
        }
        s if s.starts_with("session ") => {
            let sid: orch_domain::SessionId = consumer_ids(s)
                .ok_or("no session id")?
                .parse()
                .map_err(|_| "bad id")?;
            let _ = orch.delete_session(&Caller::open(), sid).await;
            let mut r = request("a turn", 2);
            r.session_id = Some(sid);
            let adm = orch
                .admit(&Caller::open(), r, "pact-state")
                .await
                .map_err(|e| e.to_string())?;
            wait_state(&orch, adm.task_id, TaskState::is_terminal).await;
        }
        other => return Err(format!("unknown provider state {other:?}")),
    }
    Ok(())
}

/// The state-change endpoint pact_verifier posts `{state, params, action}` to.
async fn state_app(orch: orch_services::Orchestrator) -> String {
    let app = axum::Router::new().route(
        "/provider-states",
        post(move |Json(body): Json<Value>| {
            let orch = orch.clone();
            async move {
                if body["action"] == "setup" {
                    let state = body["state"].as_str().unwrap_or_default().to_string();
                    if let Err(e) = set_state(orch, &state).await {
                        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e);
                    }
                }
                (axum::http::StatusCode::OK, String::new())
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}/provider-states")
}

async fn verify(file: PathBuf) -> bool {
    let server = start().await;
    let states = state_app(server.orch.clone()).await;
    let provider = ProviderInfo {
        name: "orchestratord".into(),
        host: "127.0.0.1".into(),
        transports: vec![ProviderTransport {
            transport: "http".into(),
            port: Some(server.addr.port()),
            path: None,
            scheme: Some("http".into()),
        }],
        ..ProviderInfo::default()
    };
    let executor = Arc::new(HttpRequestProviderStateExecutor {
        state_change_url: Some(states),
        ..HttpRequestProviderStateExecutor::default()
    });
    let options = VerificationOptions::<NullRequestFilterExecutor>::default();
    let result = pact_verifier::verify_provider_async(
        provider,
        vec![PactSource::File(file.display().to_string())],
        FilterInfo::None,
        vec![],
        &options,
        None,
        &executor,
        None,
    )
    .await
    .expect("verification runs");
    server.shutdown().await;
    result.result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_honours_every_interaction_of_the_committed_pact() {
    let file = pact_file();
    let pact: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("committed pact file"))
            .unwrap();
    assert!(pact["interactions"].as_array().unwrap().len() >= 9);
    assert!(
        verify(file).await,
        "provider verification failed (see the output above)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_fails_on_a_deliberately_broken_field() {
    let text = std::fs::read_to_string(pact_file()).unwrap();
    assert!(
        text.contains("\"policy_label\": \"reject\"")
            || text.contains("\"policy_label\":\"reject\"")
    );
    let broken = text.replacen("\"reject\"", "\"rejected\"", 1);
    let path = std::env::temp_dir().join(format!("broken-pact-{}.json", std::process::id()));
    std::fs::write(&path, broken).unwrap();
    let ok = verify(path.clone()).await;
    let _ = std::fs::remove_file(&path);
    assert!(
        !ok,
        "a pact expecting policy_label \"rejected\" must fail verification"
    );
}

/// The stream interaction's frames are really checked: a pact whose stream pattern wants
/// `end` to say `finish_reason` `done` (never sent) fails verification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_fails_on_a_stream_frame_the_provider_does_not_send() {
    let text = std::fs::read_to_string(pact_file()).unwrap();
    let wanted = r#"\"finish_reason\":\"(length|stop|eos)\""#;
    assert!(text.contains(wanted), "the pact pins the end frame");
    let broken = text.replacen(wanted, r#"\"finish_reason\":\"done\""#, 1);
    let path = std::env::temp_dir().join(format!("broken-sse-pact-{}.json", std::process::id()));
    std::fs::write(&path, broken).unwrap();
    let ok = verify(path.clone()).await;
    let _ = std::fs::remove_file(&path);
    assert!(
        !ok,
        "a stream pattern the provider does not match must fail verification"
    );
}
