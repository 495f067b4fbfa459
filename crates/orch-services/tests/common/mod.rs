//! In-process harness for orch-services tests: an [`Orchestrator`] with mock pools,
//! no HTTP. Every helper is bounded in time.

#![allow(dead_code)]

use adapter_mock::{MockConfig, MockEngine};
use orch_domain::{Priority, TaskId, TaskRequest};
use orch_services::{Caller, Frame, Orchestrator, PoolSpec, ReadItem, ServiceConfig};
use std::sync::Arc;
use std::time::Duration;

pub const MODEL: &str = "mock-model";

pub fn mock(slots: u32) -> MockConfig {
    MockConfig {
        slots,
        tokens_per_sec: 0.0,
        ttft_ms: 0,
        tokens: 4,
        ..MockConfig::default()
    }
}

pub fn slow(slots: u32) -> MockConfig {
    MockConfig {
        tokens_per_sec: 20.0,
        tokens: 1000,
        ..mock(slots)
    }
}

/// Services with one pool `p` and the given replicas (`p-r0`, `p-r1`, …).
pub async fn orch_with(
    cfg: ServiceConfig,
    spec: PoolSpec,
    replicas: &[MockConfig],
) -> Orchestrator {
    let o = Orchestrator::new(cfg);
    o.registry().create(spec).expect("create pool");
    for (i, m) in replicas.iter().enumerate() {
        o.registry()
            .add_replica(
                "p",
                &format!("p-r{i}"),
                Arc::new(MockEngine::new(m.clone())),
            )
            .await
            .expect("attach");
    }
    o
}

pub fn spec() -> PoolSpec {
    PoolSpec::new("p", MODEL)
}

pub async fn orch(replicas: &[MockConfig]) -> Orchestrator {
    orch_with(ServiceConfig::default(), spec(), replicas).await
}

pub fn req(max_tokens: u32) -> TaskRequest {
    TaskRequest::completion(MODEL, "hello", max_tokens, Priority::Interactive)
}

pub async fn submit(o: &Orchestrator, r: TaskRequest) -> TaskId {
    o.admit(&Caller::open(), r, "test")
        .await
        .expect("admitted")
        .task_id
}

/// Every frame of a task up to and including its terminal one.
pub async fn frames(o: &Orchestrator, id: TaskId) -> Vec<Frame> {
    let mut rd = o
        .open_stream(&Caller::open(), id, 0)
        .await
        .expect("open stream");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, rd.next(Duration::from_secs(1))).await {
            Err(_) => panic!("no terminal frame within 20 s; got {out:?}"),
            Ok(None) => return out,
            Ok(Some(ReadItem::KeepAlive)) => {}
            Ok(Some(ReadItem::Frames(fs))) => out.extend(fs),
        }
    }
}

/// The terminal frame's event and parsed data.
pub fn terminal(fs: &[Frame]) -> (&'static str, serde_json::Value) {
    let last = fs.last().expect("at least one frame");
    assert!(last.is_terminal(), "last frame is not terminal: {fs:?}");
    let n = fs.iter().filter(|f| f.is_terminal()).count();
    assert_eq!(n, 1, "exactly one terminal frame: {fs:?}");
    (
        last.kind.as_str(),
        serde_json::from_str(&last.data).expect("json"),
    )
}

/// Wait until the first frame of a task exists (it started).
pub async fn wait_started(o: &Orchestrator, id: TaskId) {
    let mut rd = o
        .open_stream(&Caller::open(), id, 0)
        .await
        .expect("open stream");
    let got = tokio::time::timeout(Duration::from_secs(10), rd.next(Duration::from_secs(5)))
        .await
        .expect("a first frame within 10 s");
    assert!(matches!(got, Some(ReadItem::Frames(_))));
}
