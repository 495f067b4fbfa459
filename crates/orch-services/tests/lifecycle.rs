//! Task lifecycle through the services with mock engines, in process (no HTTP):
//! retries before the first token, watchdogs, queue expiry, drain and cancel. Every
//! task ends with exactly one terminal frame (checked by `terminal`).

mod common;

use common::*;
use orch_services::{Caller, PoolSpec, ServiceConfig};
use std::future::Future;
use std::time::Duration;

#[tokio::test]
async fn failure_before_first_token_is_retried_on_another_replica() {
    // r0 fails before its first token and has the most free slots, so it is picked
    // first every time; r1 is healthy
    let bad = adapter_mock::MockConfig {
        fail_before_first_token: true,
        ..mock(4)
    };
    let o = orch(&[bad, mock(1)]).await;
    for _ in 0..3 {
        let id = submit(&o, req(4)).await;
        let fs = frames(&o, id).await;
        let (ev, data) = terminal(&fs);
        assert_eq!(ev, "end", "{data}");
        let started: serde_json::Value = serde_json::from_str(&fs[0].data).unwrap();
        assert_eq!(fs[0].kind.as_str(), "started");
        assert_eq!(started["replica_id"], "p-r1", "ran on the healthy replica");
        assert_eq!(
            fs.iter().filter(|f| f.kind.as_str() == "started").count(),
            1,
            "the failed attempt is invisible to the client"
        );
    }
}

#[tokio::test]
async fn retries_used_up_end_with_replica_exhausted() {
    let bad = |slots| adapter_mock::MockConfig {
        fail_before_first_token: true,
        ..mock(slots)
    };
    let o = orch(&[bad(4), bad(1)]).await;
    let id = submit(&o, req(4)).await;
    let (ev, data) = terminal(&frames(&o, id).await);
    assert_eq!(ev, "error");
    assert_eq!(data["code"], "REPLICA_EXHAUSTED", "{data}");
    assert_eq!(data["retriable"], true);
}

#[tokio::test]
async fn without_another_replica_the_engine_error_is_kept() {
    let bad = adapter_mock::MockConfig {
        fail_before_first_token: true,
        ..mock(2)
    };
    let o = orch(&[bad]).await;
    let id = submit(&o, req(4)).await;
    let (ev, data) = terminal(&frames(&o, id).await);
    assert_eq!((ev, data["code"].as_str()), ("error", Some("WORKER_RESET")));
}

#[tokio::test]
async fn wall_clock_limit_ends_a_slow_generation() {
    let spec = PoolSpec {
        decode_timeout: Duration::from_millis(300),
        ..spec()
    };
    let o = orch_with(ServiceConfig::default(), spec, &[slow(1)]).await;
    let id = submit(&o, req(500)).await;
    let fs = frames(&o, id).await;
    let (ev, data) = terminal(&fs);
    assert_eq!(
        (ev, data["code"].as_str()),
        ("error", Some("DECODE_TIMEOUT"))
    );
    assert!(
        data["message"].as_str().unwrap().contains("wall-clock"),
        "{data}"
    );
    assert!(
        fs.iter().any(|f| f.kind.as_str() == "token"),
        "tokens flowed before the limit"
    );
}

#[tokio::test]
async fn idle_watchdog_ends_a_stalled_generation() {
    let spec = PoolSpec {
        idle_timeout: Duration::from_millis(200),
        ..spec()
    };
    let stall = adapter_mock::MockConfig {
        stall_after_tokens: Some(2),
        ..mock(1)
    };
    let o = orch_with(ServiceConfig::default(), spec, &[stall]).await;
    let id = submit(&o, req(10)).await;
    let fs = frames(&o, id).await;
    let (ev, data) = terminal(&fs);
    assert_eq!(
        (ev, data["code"].as_str()),
        ("error", Some("DECODE_TIMEOUT"))
    );
    assert_eq!(fs.iter().filter(|f| f.kind.as_str() == "token").count(), 2);
}

#[tokio::test]
async fn queue_wait_limit_ends_a_task_that_never_gets_a_slot() {
    let spec = PoolSpec {
        queue_wait_limit: Duration::from_millis(150),
        ..spec()
    };
    let o = orch_with(ServiceConfig::default(), spec, &[slow(1)]).await;
    let busy = submit(&o, req(500)).await;
    wait_started(&o, busy).await;
    let waiting = submit(&o, req(4)).await;
    let fs = frames(&o, waiting).await;
    let (ev, data) = terminal(&fs);
    assert_eq!(
        (ev, data["code"].as_str()),
        ("error", Some("POOL_UNAVAILABLE"))
    );
    assert_eq!(
        fs.len(),
        1,
        "a task that ends before dispatch sends only its terminal frame"
    );
    assert_eq!(data["retriable"], true);
    o.cancel(&Caller::open(), busy).await.unwrap();
    terminal(&frames(&o, busy).await);
}

#[tokio::test]
async fn a_deadline_passing_in_the_queue_ends_with_deadline_unmet() {
    let cfg = ServiceConfig {
        prior_service_ms: 1.0,
        ..ServiceConfig::default()
    };
    let o = orch_with(cfg, spec(), &[slow(1)]).await;
    let busy = submit(&o, req(500)).await;
    wait_started(&o, busy).await;
    let mut r = req(1);
    r.deadline_ms = Some(200);
    r.expected_tokens = Some(1);
    let late = submit(&o, r).await;
    let fs = frames(&o, late).await;
    let (ev, data) = terminal(&fs);
    assert_eq!(
        (ev, data["code"].as_str()),
        ("error", Some("DEADLINE_UNMET"))
    );
    assert_eq!(fs.len(), 1);
    o.cancel(&Caller::open(), busy).await.unwrap();
    terminal(&frames(&o, busy).await);
}

#[tokio::test]
async fn drain_ends_queued_tasks_and_lets_running_ones_finish() {
    let quick = adapter_mock::MockConfig {
        tokens_per_sec: 50.0,
        tokens: 10,
        ..mock(1)
    };
    let o = orch(&[quick]).await;
    let running = submit(&o, req(10)).await;
    wait_started(&o, running).await;
    let queued = submit(&o, req(10)).await;
    let d = o.drain("p", Duration::from_secs(10)).await.unwrap();
    assert_eq!((d.queued_ended, d.in_flight), (1, 1));
    let (ev, data) = terminal(&frames(&o, queued).await);
    assert_eq!((ev, data["code"].as_str()), ("error", Some("POOL_UNREADY")));
    let (ev, _) = terminal(&frames(&o, running).await);
    assert_eq!(ev, "end", "running work finishes within the drain deadline");
    assert!(!o.pool_view("p").unwrap().ready);
}

#[tokio::test]
async fn drain_deadline_ends_running_work() {
    let o = orch(&[slow(1)]).await;
    let running = submit(&o, req(500)).await;
    wait_started(&o, running).await;
    o.drain("p", Duration::from_millis(100)).await.unwrap();
    let (ev, data) = terminal(&frames(&o, running).await);
    assert_eq!((ev, data["code"].as_str()), ("error", Some("POOL_UNREADY")));
    assert_eq!(o.stats().live_tasks, 0);
}

#[tokio::test]
async fn canceling_a_queued_task_sends_only_its_terminal_frame() {
    let o = orch(&[slow(1)]).await;
    let busy = submit(&o, req(500)).await;
    wait_started(&o, busy).await;
    let queued = submit(&o, req(4)).await;
    assert_eq!(
        o.status(&Caller::open(), queued)
            .await
            .unwrap()
            .queue_position,
        Some(1)
    );
    o.cancel(&Caller::open(), queued).await.unwrap();
    let fs = frames(&o, queued).await;
    assert_eq!(fs.len(), 1);
    let (ev, data) = terminal(&fs);
    assert_eq!(
        (ev, data["finish_reason"].as_str()),
        ("end", Some("canceled"))
    );
    o.cancel(&Caller::open(), busy).await.unwrap();
    let (ev, data) = terminal(&frames(&o, busy).await);
    assert_eq!(
        (ev, data["finish_reason"].as_str()),
        ("end", Some("canceled"))
    );
    assert!(
        o.registry()
            .get("p")
            .unwrap()
            .wait_for(Duration::from_secs(5), |s| s.busy_total == 0)
            .await,
        "the canceled task's slot is freed"
    );
}

#[tokio::test]
async fn shutdown_ends_what_is_left_after_the_grace() {
    let o = orch(&[slow(1)]).await;
    let running = submit(&o, req(500)).await;
    let queued = submit(&o, req(4)).await;
    wait_started(&o, running).await;
    o.begin_shutdown();
    assert!(
        o.admit(&Caller::open(), req(1), "t").await.is_err(),
        "no admission after shutdown began"
    );
    let ended = o.drain_all(Duration::from_millis(100)).await;
    assert_eq!(ended, 2);
    for id in [running, queued] {
        let (ev, data) = terminal(&frames(&o, id).await);
        assert_eq!((ev, data["code"].as_str()), ("error", Some("POOL_UNREADY")));
    }
    assert_eq!(o.stats().live_tasks, 0);
}

#[tokio::test]
async fn a_refused_admission_whose_caller_left_still_ends_the_task() {
    let o = orch(&[mock(1)]).await;
    let id = orch_domain::TaskId::new_random();
    let mut r = req(50);
    r.task_id = Some(id);
    r.deadline_ms = Some(1); // the pool refuses it: DEADLINE_UNMET
                             // the caller goes away while the pool decides (polled once, then dropped)
    let caller = Caller::open();
    let mut admit = Box::pin(o.admit(&caller, r, "t"));
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(admit.as_mut().poll(cx))).await;
    assert!(
        first.is_pending(),
        "the admission was still waiting for its pool"
    );
    drop(admit);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while o.stats().live_tasks > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refused task stayed live"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = o
        .status(&Caller::open(), id)
        .await
        .expect("the refused task is known");
    assert_eq!(s.error_code.as_deref(), Some("DEADLINE_UNMET"));
}

#[tokio::test]
async fn a_model_no_pool_serves_is_a_400_and_a_missing_engine_a_503() {
    let o = orch(&[mock(1)]).await;
    let mut r = req(1);
    r.model_ref = "no-such-model".into();
    let e = o.admit(&Caller::open(), r, "t").await.unwrap_err();
    assert_eq!(e.code, orch_domain::ErrorCode::InvalidParams);
    assert!(
        e.message.starts_with("model_ref") && e.message.contains("no-such-model"),
        "{e}"
    );
    let mut r = req(1);
    r.engine = Some(orch_domain::EngineKind::Llamacpp);
    let e = o.admit(&Caller::open(), r, "t").await.unwrap_err();
    assert_eq!(e.code, orch_domain::ErrorCode::PoolUnavailable);
    assert!(e.retry_after_ms.is_some());
    assert_eq!(o.stats().live_tasks, 0);
}

/// A task admitted elsewhere a while ago (a pool leader taking a dead leader's queue
/// over) keeps its queue-wait limit from its admission: waiting past it already, it
/// ends at once instead of waiting the whole limit again.
#[tokio::test]
async fn the_queue_wait_limit_counts_from_admission_not_from_a_take_over() {
    let spec = PoolSpec {
        queue_wait_limit: Duration::from_secs(5),
        ..spec()
    };
    let o = orch_with(ServiceConfig::default(), spec, &[slow(1)]).await;
    let busy = submit(&o, req(500)).await;
    wait_started(&o, busy).await;
    let t0 = std::time::Instant::now();
    let rec = o
        .local_pools()
        .run(task_for_p(req(4), Duration::from_secs(6), None))
        .await;
    while !rec.summary().state.is_terminal() {
        assert!(t0.elapsed() < Duration::from_secs(2), "still waiting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        rec.summary().error_code,
        Some(orch_domain::ErrorCode::PoolUnavailable)
    );
    o.cancel(&Caller::open(), busy).await.unwrap();
    terminal(&frames(&o, busy).await);
}

/// A task for pool `p`, as another instance's admission hands it over.
fn task_for_p(
    request: orch_domain::TaskRequest,
    waited: Duration,
    resumed: Option<orch_services::Resumed>,
) -> orch_services::NewTask {
    orch_services::NewTask {
        id: orch_domain::TaskId::new_random(),
        tenant: "anonymous".into(),
        pool_id: "p".into(),
        correlation_id: "c".into(),
        request,
        waited,
        resumed,
    }
}

/// Run `request` on pool `p` as the continuation of `resumed` (what a failed-over
/// leader left), until it ends.
async fn run_resumed(
    o: &orch_services::Orchestrator,
    request: orch_domain::TaskRequest,
    resumed: orch_services::Resumed,
) -> std::sync::Arc<orch_services::TaskRecord> {
    let rec = o
        .local_pools()
        .run(task_for_p(request, Duration::ZERO, Some(resumed)))
        .await;
    let t0 = std::time::Instant::now();
    while !rec.summary().state.is_terminal() {
        assert!(t0.elapsed() < Duration::from_secs(5), "still running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rec
}

#[tokio::test]
async fn a_run_that_takes_over_another_runs_generation_goes_on_from_its_tokens() {
    // what a pool leader that failed over left: 3 tokens streamed on another instance
    let cfg = adapter_mock::MockConfig {
        tokens: 40,
        ..mock(1)
    };
    let o = orch_with(ServiceConfig::default(), spec(), &[cfg]).await;
    let mut request = req(8);
    request.seed = Some(5);
    let text = |i: u32| adapter_mock::token_text(0, 5, i);
    let resumed = orch_services::Resumed {
        ids: (0..3).map(|i| adapter_mock::token_id(0, 5, i)).collect(),
        text: (0..3).map(text).collect(),
        tokens: 3,
        moves: 0,
        from_replica: "elsewhere-r0".into(),
        model: adapter_mock::mock_digest("mock-model"),
        engine_version: "mock-0.1.0".into(),
    };
    let rec = run_resumed(&o, request, resumed).await;
    let (frames, closed) = rec.log.since(0);
    assert!(closed);
    let kinds: Vec<_> = frames.iter().map(|f| f.kind.as_str()).collect();
    // no second `started`: a note that it moved, the tokens after the third, its end
    assert_eq!(
        kinds,
        ["metrics", "token", "token", "token", "token", "token", "end"]
    );
    let note: serde_json::Value = serde_json::from_str(&frames[0].data).unwrap();
    let m = &note["migrated"];
    assert_eq!(
        (&m["from_replica"], &m["to_replica"], &m["reason"]),
        (
            &serde_json::json!("elsewhere-r0"),
            &serde_json::json!("p-r0"),
            &serde_json::json!("WORKER_RESET")
        )
    );
    assert_eq!(
        (&m["at_token"], &m["count"]),
        (&serde_json::json!(3), &serde_json::json!(1))
    );
    for (k, f) in frames[1..6].iter().enumerate() {
        let t: serde_json::Value = serde_json::from_str(&f.data).unwrap();
        let i = k as u32 + 3;
        assert_eq!(t["i"], i);
        assert_eq!(t["t"], text(i));
    }
    let end: serde_json::Value = serde_json::from_str(&frames[6].data).unwrap();
    assert_eq!(end["tokens_out"], 8);
}

#[tokio::test]
async fn a_taken_over_generation_without_token_ids_ends_with_the_old_error() {
    let o = orch_with(ServiceConfig::default(), spec(), &[mock(1)]).await;
    let resumed = orch_services::Resumed {
        ids: Vec::new(),
        text: " x".into(),
        tokens: 1,
        moves: 0,
        from_replica: "elsewhere-r0".into(),
        model: adapter_mock::mock_digest("mock-model"),
        engine_version: "mock-0.1.0".into(),
    };
    let rec = run_resumed(&o, req(8), resumed).await;
    assert_eq!(
        rec.summary().error_code,
        Some(orch_domain::ErrorCode::WorkerReset)
    );
}

#[tokio::test]
async fn a_taken_over_generation_of_another_model_is_not_continued() {
    // a reload between the two leaders: the ids were another model's
    let o = orch_with(ServiceConfig::default(), spec(), &[mock(1)]).await;
    let resumed = orch_services::Resumed {
        ids: vec![1, 2],
        text: " amber brook".into(),
        tokens: 2,
        moves: 0,
        from_replica: "elsewhere-r0".into(),
        model: "sha256:another".into(),
        engine_version: "mock-0.1.0".into(),
    };
    let rec = run_resumed(&o, req(8), resumed).await;
    let s = rec.summary();
    assert_eq!(s.error_code, Some(orch_domain::ErrorCode::WorkerReset));
    let (frames, _) = rec.log.since(0);
    assert!(
        frames.iter().all(|f| f.kind.as_str() != "token"),
        "nothing generated from another model's ids"
    );
}
