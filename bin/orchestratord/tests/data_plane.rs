//! OrchQueue v1 data plane, end to end over real HTTP against a mock pool.

mod common;
#[path = "data_plane/prompt_fit.rs"]
mod prompt_fit;
use common::*;
use serde_json::json;
use std::time::Duration;

const FAST: &str = "slots = 2\ntokens_per_sec = 0.0\nttft_ms = 5\ntokens = 8";
/// One slot, slow: work queues behind the first task.
const ONE_SLOW: &str = "slots = 1\ntokens_per_sec = 20.0\nttft_ms = 10\ntokens = 40";

#[tokio::test]
async fn admission_returns_202_with_spec_fields() {
    let s = start(&mock_config("", FAST)).await;
    let r = s.post_raw(&task("hello world", 4, "interactive")).await;
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(r.headers().contains_key("x-correlation-id"));
    let v: serde_json::Value = r.json().await.unwrap();
    let id = v["task_id"].as_str().unwrap();
    s.track(id);
    assert!(uuid::Uuid::parse_str(id).is_ok());
    assert_eq!(loc, format!("/v1/tasks/{id}"));
    assert_eq!(v["queue_position"], 0);
    assert!(v["predicted_start_ms"].is_u64());
    assert_eq!(v["backoff_ms"], 0);
    assert_eq!(v["streams"]["sse"], format!("/v1/tasks/{id}/stream"));
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn stream_is_started_tokens_end_with_contiguous_indices() {
    let s = start(&mock_config("", FAST)).await;
    let (id, _) = s.submit(&task("hello world", 6, "batch")).await;
    let r = s.stream_response(&id, None).await;
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert_eq!(r.headers()["cache-control"], "no-cache");
    assert_eq!(r.headers()["x-accel-buffering"], "no");
    let frames = parse_sse(&r.text().await.unwrap());
    let names: Vec<&str> = frames.iter().map(|f| f.event.as_str()).collect();
    assert_eq!(
        names,
        ["started", "token", "token", "token", "token", "token", "token", "end"]
    );
    let started = &frames[0].data;
    assert_eq!(started["engine"], "mock");
    assert_eq!(started["pool_id"], "mockpool");
    assert!(started["replica_id"]
        .as_str()
        .unwrap()
        .starts_with("mockpool-r"));
    assert!(started["engine_version"].is_string() && started["seed"].is_i64());
    for (k, f) in frames[1..7].iter().enumerate() {
        assert_eq!(f.data["i"], k as u64);
    }
    let ids: Vec<u64> = frames.iter().map(|f| f.id).collect();
    assert_eq!(ids, (1..=8).collect::<Vec<_>>());
    let end = &frames[7].data;
    assert_eq!(end["tokens_out"], 6);
    assert_eq!(end["finish_reason"], "length");
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn stream_opened_before_dispatch_waits_then_gets_everything() {
    let s = start(&mock_config("", ONE_SLOW)).await;
    let (first, _) = s.submit(&task("first", 10, "interactive")).await;
    let (second, adm) = s.submit(&task("second", 3, "interactive")).await;
    assert_eq!(
        adm["queue_position"], 1,
        "second waits for one slot release"
    );
    assert!(adm["predicted_start_ms"].as_u64().unwrap() > 0);
    assert_eq!(s.status(&second).await["state"], "queued");
    // open the second stream while it is still queued
    let r = s.stream_response(&second, None).await;
    assert_eq!(s.status(&second).await["state"], "queued");
    let frames = parse_sse(&r.text().await.unwrap());
    assert_eq!(frames.first().unwrap().event, "started");
    assert_eq!(frames.iter().filter(|f| f.event == "token").count(), 3);
    assert_eq!(frames.last().unwrap().event, "end");
    assert_eq!(s.status(&first).await["state"], "completed");
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn last_event_id_resume_replays_exactly_the_missing_frames() {
    let s = start(&mock_config("", FAST)).await;
    let (id, _) = s.submit(&task("resume me", 6, "interactive")).await;
    let all = s.stream(&id, None).await;
    assert_eq!(all.len(), 8);
    let tail = s.stream(&id, Some(3)).await;
    assert_eq!(tail, all[3..].to_vec());
    assert!(s.stream(&id, Some(8)).await.is_empty());
    // an id past the end of the stream cannot be resumed from
    let r = s.stream_response(&id, Some(99)).await;
    envelope(r, 400, "INVALID_PARAMS").await;
    // a second concurrent reader sees the same frames
    let (a, b) = tokio::join!(s.stream(&id, None), s.stream(&id, None));
    assert_eq!(a, b);
    let r = s
        .http
        .get(s.url(&format!("/v1/tasks/{id}/stream")))
        .header("Last-Event-ID", "x")
        .send()
        .await
        .unwrap();
    envelope(r, 400, "INVALID_PARAMS").await;
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn cancel_of_a_queued_task_removes_it() {
    let s = start(&mock_config("", ONE_SLOW)).await;
    let (running, _) = s.submit(&task("runs", 40, "interactive")).await;
    let (queued, _) = s.submit(&task("waits", 5, "interactive")).await;
    assert_eq!(s.cancel(&queued).await, 204);
    let frames = s.stream(&queued, None).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].event, "end");
    assert_eq!(frames[0].data["finish_reason"], "canceled");
    assert_eq!(s.status(&queued).await["state"], "canceled");
    // canceling again is harmless
    assert_eq!(s.cancel(&queued).await, 204);
    assert_eq!(s.cancel(&running).await, 204);
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn cancel_of_a_running_task_frees_its_slot_for_the_next() {
    let s = start(&mock_config("", ONE_SLOW)).await;
    let (a, _) = s.submit(&task("long", 40, "interactive")).await;
    let (b, _) = s.submit(&task("next", 3, "interactive")).await;
    s.wait_state(&a, "running").await;
    assert_eq!(s.status(&b).await["state"], "queued");
    assert_eq!(s.cancel(&a).await, 204);
    let fa = s.stream(&a, None).await;
    let end = fa.last().unwrap();
    assert_eq!(end.event, "end");
    assert_eq!(end.data["finish_reason"], "canceled");
    assert!(end.data["tokens_out"].as_u64().unwrap() < 40);
    let fb = s.stream(&b, None).await;
    assert_eq!(fb.last().unwrap().data["finish_reason"], "length");
    assert!(s.metrics().await.contains("tasks_canceled_total{"));
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn saturation_answers_429_with_backoff_headers_and_policy_label() {
    let s = start(&mock_config("queue_capacity = 1", ONE_SLOW)).await;
    let (a, _) = s.submit(&task("one", 20, "batch")).await;
    s.wait_state(&a, "running").await;
    s.submit(&task("two", 20, "batch")).await;
    let r = s.post_raw(&task("three", 20, "batch")).await;
    assert_eq!(r.status(), 429);
    let ra: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ra >= 1);
    let backoff: u64 = r.headers()["x-backoff-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(backoff >= 1000);
    let v = envelope(r, 429, "ADMISSION_REJECT").await;
    assert_eq!(v["policy_label"], "reject");
    assert_eq!(v["retriable"], true);
    assert_eq!(v["pool_id"], "mockpool");
    let m = s.metrics().await;
    assert!(m.contains("admission_backpressure_events_total{engine=\"mock\",policy=\"reject\"}"));
    s.cancel(&a).await;
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn drop_lru_eviction_ends_the_evicted_stream_with_its_error() {
    let s = start(&mock_config(
        "queue_capacity = 1\nqueue_policy = \"drop-lru\"",
        ONE_SLOW,
    ))
    .await;
    let (a, _) = s.submit(&task("running", 20, "batch")).await;
    s.wait_state(&a, "running").await;
    let (victim, _) = s.submit(&task("old batch", 5, "batch")).await;
    let (newer, _) = s.submit(&task("new batch", 5, "batch")).await;
    let fv = s.stream(&victim, None).await;
    assert_eq!(fv.len(), 1, "{fv:?}");
    assert_eq!(fv[0].event, "error");
    assert_eq!(fv[0].data["code"], "QUEUE_FULL_DROP_LRU");
    assert_eq!(fv[0].data["policy_label"], "drop-lru");
    assert_eq!(fv[0].data["retriable"], true);
    assert_eq!(s.status(&newer).await["state"], "queued");
    s.cancel(&a).await;
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn shed_low_priority_ends_the_shed_batch_task_with_its_policy_label() {
    let s = start(&mock_config(
        "queue_capacity = 1\nqueue_policy = \"shed-low-priority\"",
        ONE_SLOW,
    ))
    .await;
    let (a, _) = s.submit(&task("running", 20, "batch")).await;
    s.wait_state(&a, "running").await;
    let (batch, _) = s.submit(&task("queued batch", 5, "batch")).await;
    // an interactive arrival sheds the newest batch task
    let (inter, _) = s.submit(&task("urgent", 5, "interactive")).await;
    let fb = s.stream(&batch, None).await;
    assert_eq!(
        fb.len(),
        1,
        "a shed task gets only its terminal frame: {fb:?}"
    );
    assert_eq!(fb[0].event, "error");
    assert_eq!(fb[0].data["code"], "ADMISSION_REJECT");
    assert_eq!(fb[0].data["policy_label"], "shed-low-priority");
    assert_eq!(fb[0].data["retriable"], true);
    assert_eq!(s.status(&inter).await["state"], "queued");
    // with only interactive work queued, the next arrival is refused with the label
    let r = s
        .http
        .post(s.url("/v1/tasks"))
        .json(&task("one more", 5, "interactive"))
        .send()
        .await
        .unwrap();
    let v = envelope(r, 429, "ADMISSION_REJECT").await;
    assert_eq!(v["policy_label"], "shed-low-priority");
    s.cancel(&a).await;
    s.cancel(&inter).await;
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn bad_inputs_get_400_envelopes_naming_the_problem() {
    let s = start(&mock_config("", FAST)).await;
    let raw = s
        .http
        .post(s.url("/v1/tasks"))
        .header("content-type", "application/json")
        .body("{\"workload\": \"completion\",")
        .send()
        .await
        .unwrap();
    envelope(raw, 400, "INVALID_PARAMS").await;

    // the body must be JSON (spec §1): anything else is 415, whatever it contains
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut rb = s.http.post(s.url("/v1/tasks"));
        if let Some(ct) = ct {
            rb = rb.header("content-type", ct);
        }
        let r = rb
            .body(task("p", 1, "batch").to_string())
            .send()
            .await
            .unwrap();
        let v = envelope(r, 415, "INVALID_PARAMS").await;
        assert!(
            v["message"].as_str().unwrap().contains("application/json"),
            "{v}"
        );
    }

    let mut unknown = task("p", 1, "batch");
    unknown["colour"] = json!("blue");
    let v = envelope(s.post_raw(&unknown).await, 400, "INVALID_PARAMS").await;
    assert!(v["message"].as_str().unwrap().contains("colour"), "{v}");

    let v = envelope(
        s.post_raw(&task("", 1, "batch")).await,
        400,
        "INVALID_PARAMS",
    )
    .await;
    assert!(v["message"].as_str().unwrap().starts_with("prompt"), "{v}");

    let v = envelope(
        s.post_raw(&task("p", 0, "batch")).await,
        400,
        "INVALID_PARAMS",
    )
    .await;
    assert!(
        v["message"].as_str().unwrap().starts_with("max_tokens"),
        "{v}"
    );

    let mut big_ctx = task("p", 1, "batch");
    big_ctx["ctx"] = json!(1_000_000);
    let v = envelope(s.post_raw(&big_ctx).await, 400, "INVALID_PARAMS").await;
    assert!(v["message"].as_str().unwrap().starts_with("ctx"), "{v}");

    let mut no_fit = task("p", 100, "batch");
    no_fit["ctx"] = json!(64);
    let v = envelope(s.post_raw(&no_fit).await, 400, "INVALID_PARAMS").await;
    assert!(
        v["message"].as_str().unwrap().contains("exceeds ctx"),
        "{v}"
    );

    let mut bad_prio = task("p", 1, "batch");
    bad_prio["priority"] = json!("urgent");
    let v = envelope(s.post_raw(&bad_prio).await, 400, "INVALID_PARAMS").await;
    assert!(
        v["message"].as_str().unwrap().starts_with("priority"),
        "{v}"
    );

    let mut emb = task("p", 1, "batch");
    emb["workload"] = json!("embedding");
    envelope(s.post_raw(&emb).await, 400, "INVALID_PARAMS").await;

    let mut tight = task("p", 50, "batch");
    tight["deadline_ms"] = json!(1);
    envelope(s.post_raw(&tight).await, 400, "DEADLINE_UNMET").await;

    let mut pin = task("p", 1, "batch");
    pin["placement"] = json!({"pin_pool_id": "nope"});
    let v = envelope(s.post_raw(&pin).await, 400, "INVALID_PARAMS").await;
    assert!(v["message"]
        .as_str()
        .unwrap()
        .starts_with("placement.pin_pool_id"));
}

#[tokio::test]
async fn duplicate_live_task_id_is_409() {
    let s = start(&mock_config("", ONE_SLOW)).await;
    let id = uuid::Uuid::new_v4().to_string();
    let mut t = task("dup", 20, "batch");
    t["task_id"] = json!(id);
    s.submit(&t).await;
    envelope(s.post_raw(&t).await, 409, "CONFLICT").await;
    s.cancel(&id).await;
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn correlation_id_is_echoed_on_202_4xx_5xx_and_sse() {
    let s = start(&mock_config("", FAST)).await;
    let cid = "client-abc.123";
    let send = |body: serde_json::Value| {
        s.http
            .post(s.url("/v1/tasks"))
            .header("X-Correlation-Id", cid)
            .json(&body)
            .send()
    };
    let r = send(task("x", 2, "batch")).await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["x-correlation-id"], cid);
    let id = r.json::<serde_json::Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    s.track(&id);

    let r = send(task("", 2, "batch")).await.unwrap();
    assert_eq!(r.headers()["x-correlation-id"], cid);
    let v = envelope(r, 400, "INVALID_PARAMS").await;
    assert_eq!(v["correlation_id"], cid);

    let mut other = task("x", 2, "batch");
    other["engine"] = json!("llamacpp");
    let r = send(other).await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-correlation-id"], cid);
    assert!(r.headers().contains_key("retry-after"));
    let v = envelope(r, 503, "POOL_UNAVAILABLE").await;
    assert_eq!(v["correlation_id"], cid);

    let r = s
        .http
        .get(s.url(&format!("/v1/tasks/{id}/stream")))
        .header("X-Correlation-Id", cid)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-correlation-id"], cid);

    // an invalid id is replaced, not echoed
    let r = s
        .http
        .get(s.url("/livez"))
        .header("X-Correlation-Id", "bad id!")
        .send()
        .await
        .unwrap();
    let got = r.headers()["x-correlation-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(got).is_ok());
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn unknown_task_and_route_are_404() {
    let s = start(&mock_config("", FAST)).await;
    let id = uuid::Uuid::new_v4();
    for path in [
        format!("/v1/tasks/{id}"),
        format!("/v1/tasks/{id}/stream"),
        "/v1/tasks/not-a-uuid".into(),
        "/v2/nothing".into(),
    ] {
        envelope(
            s.http.get(s.url(&path)).send().await.unwrap(),
            404,
            "NOT_FOUND",
        )
        .await;
    }
    envelope(
        s.http
            .post(s.url(&format!("/v1/tasks/{id}/cancel")))
            .send()
            .await
            .unwrap(),
        404,
        "NOT_FOUND",
    )
    .await;
}

#[tokio::test]
async fn oversize_body_is_413() {
    let s = start(&mock_config("", FAST)).await;
    let t = task(&"a".repeat(2 * 1024 * 1024), 1, "batch");
    envelope(s.post_raw(&t).await, 413, "PAYLOAD_TOO_LARGE").await;
}

#[tokio::test]
async fn mock_failure_after_three_tokens_gives_one_worker_reset_and_no_end() {
    let s = start(&mock_config(
        "retries_before_first_token = 0",
        "tokens_per_sec = 0.0\nttft_ms = 1\nfail_after_tokens = 3",
    ))
    .await;
    let (id, _) = s.submit(&task("fail", 10, "interactive")).await;
    let frames = s.stream(&id, None).await;
    let names: Vec<&str> = frames.iter().map(|f| f.event.as_str()).collect();
    assert_eq!(names, ["started", "token", "token", "token", "error"]);
    assert_eq!(frames[4].data["code"], "WORKER_RESET");
    assert_eq!(frames[4].data["engine"], "mock");
    assert_eq!(s.status(&id).await["state"], "failed");
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn failure_before_first_token_fails_cleanly_when_no_other_replica() {
    let s = start(&mock_config(
        "",
        "tokens_per_sec = 0.0\nttft_ms = 1\nfail_before_first_token = true",
    ))
    .await;
    let (id, _) = s.submit(&task("fail", 10, "interactive")).await;
    let frames = s.stream(&id, None).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].data["code"], "WORKER_RESET");
}

#[tokio::test]
async fn stalled_engine_trips_the_idle_watchdog() {
    let s = start(&mock_config(
        "idle_timeout_ms = 200",
        "tokens_per_sec = 0.0\nttft_ms = 1\nstall_after_tokens = 2",
    ))
    .await;
    let (id, _) = s.submit(&task("stall", 10, "interactive")).await;
    let frames = s.stream(&id, None).await;
    let last = frames.last().unwrap();
    assert_eq!(last.event, "error");
    assert_eq!(last.data["code"], "DECODE_TIMEOUT");
    assert_eq!(frames.iter().filter(|f| f.event == "token").count(), 2);
}

#[tokio::test]
async fn sessions_count_turns_and_can_be_deleted() {
    let s = start(&mock_config("", FAST)).await;
    let sid = uuid::Uuid::new_v4().to_string();
    for _ in 0..2 {
        let mut t = task("turn", 3, "interactive");
        t["session_id"] = json!(sid);
        let (id, _) = s.submit(&t).await;
        s.stream(&id, None).await;
    }
    let v: serde_json::Value = s
        .http
        .get(s.url(&format!("/v1/sessions/{sid}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["turns"], 2);
    assert!(v["tokens_used"].as_u64().unwrap() >= 6);
    assert!(v["ttl_ms_remaining"].as_u64().unwrap() > 0);
    assert_eq!(v["kv_warmth"], true);
    let r = s
        .http
        .delete(s.url(&format!("/v1/sessions/{sid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    envelope(
        s.http
            .get(s.url(&format!("/v1/sessions/{sid}")))
            .send()
            .await
            .unwrap(),
        404,
        "NOT_FOUND",
    )
    .await;
    envelope(
        s.http
            .delete(s.url(&format!("/v1/sessions/{sid}")))
            .send()
            .await
            .unwrap(),
        404,
        "NOT_FOUND",
    )
    .await;
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn abandoned_stream_is_canceled_after_the_grace_period() {
    let cfg = mock_config("", ONE_SLOW).replace("stream_grace_ms = 60000", "stream_grace_ms = 300");
    let s = start(&cfg).await;
    let (id, _) = s.submit(&task("nobody reads", 40, "interactive")).await;
    {
        let mut r = s.stream_response(&id, None).await;
        let _ = r.chunk().await.unwrap();
    } // reader gone
    tokio::time::sleep(Duration::from_millis(600)).await;
    let st = s.wait_state(&id, "canceled").await;
    assert!(st["tokens_out"].as_u64().unwrap() < 40);
    assert!(s.metrics().await.contains("reason=\"abandoned\""));
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn shutdown_refuses_new_work_and_finishes_running_tasks() {
    let mut s = start(&mock_config(
        "",
        "slots = 1\ntokens_per_sec = 50.0\nttft_ms = 5\ntokens = 10",
    ))
    .await;
    let (id, _) = s.submit(&task("finish me", 10, "interactive")).await;
    let reader = tokio::spawn({
        let url = s.url(&format!("/v1/tasks/{id}/stream"));
        let http = s.http.clone();
        async move { parse_sse(&http.get(url).send().await.unwrap().text().await.unwrap()) }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let server = s.server.take().unwrap();
    let orch = server.orch.clone();
    let stop = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!orch.is_accepting());
    let frames = reader.await.unwrap();
    assert_eq!(frames.last().unwrap().event, "end");
    assert_eq!(frames.last().unwrap().data["finish_reason"], "length");
    stop.await.unwrap();
}

#[tokio::test]
async fn a_reconnect_restarts_the_abandon_grace_period() {
    let cfg = mock_config(
        "",
        "slots = 1\ntokens_per_sec = 20.0\nttft_ms = 5\ntokens = 60",
    )
    .replace("stream_grace_ms = 60000", "stream_grace_ms = 600");
    let s = start(&cfg).await;
    let (id, _) = s
        .submit(&task("reconnecting reader", 60, "interactive"))
        .await;
    let read_once = || async {
        let mut r = s.stream_response(&id, None).await;
        let _ = r.chunk().await.unwrap();
    };
    read_once().await; // first disconnect: a timer for t+600 ms
    tokio::time::sleep(Duration::from_millis(400)).await;
    read_once().await; // second disconnect at ~t+450: its own timer for ~t+1050 ms
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        s.status(&id).await["state"],
        "running",
        "the older timer must not cancel"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(s.wait_state(&id, "canceled").await["state"], "canceled");
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn a_canceled_turn_still_charges_its_streamed_tokens_to_the_session() {
    let cfg = mock_config(
        "",
        "slots = 1\ntokens_per_sec = 50.0\nttft_ms = 5\ntokens = 60",
    )
    .replace("[server]", "[server]\nsession_token_budget = 1000");
    let s = start(&cfg).await;
    let sid = uuid::Uuid::new_v4().to_string();
    let mut t = task("a long turn", 60, "interactive");
    t["session_id"] = json!(sid);
    let (id, _) = s.submit(&t).await;
    for _ in 0..200 {
        if s.status(&id).await["tokens_out"].as_u64().unwrap_or(0) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.cancel(&id).await, 204);
    let f = s.stream(&id, None).await;
    let streamed = f.iter().filter(|x| x.event == "token").count() as u64;
    assert!(streamed >= 3);
    let info = s.get_json(&format!("/v1/sessions/{sid}")).await;
    assert_eq!(info["tokens_used"].as_u64(), Some(streamed), "{info}");
    assert_eq!(
        info["tokens_budget_remaining"].as_u64(),
        Some(1000 - streamed)
    );
    s.assert_all_terminated().await;
}

/// A task tried on two replicas counts as started once, and both first-token
/// histograms (from admission, from dispatch) are exported.
#[tokio::test]
async fn a_retried_task_is_counted_as_started_once() {
    let s = start(
        r#"
[server]
keepalive_ms = 200
[[pools]]
id = "retrypool"
engine = "mock"
model = "retry-model"
replicas = 2
retries_before_first_token = 1
[pools.mock]
model = "retry-model"
fail_before_first_token = true
"#,
    )
    .await;
    let mut t = task("x", 4, "interactive");
    t["model_ref"] = serde_json::json!("retry-model");
    let (id, _) = s.submit(&t).await;
    let f = s.stream(&id, None).await;
    assert_eq!(f.last().unwrap().data["code"], "REPLICA_EXHAUSTED", "{f:?}");
    let m = s.metrics().await;
    let started: f64 = m
        .lines()
        .filter(|l| l.starts_with("tasks_started_total{") && l.contains("pool_id=\"retrypool\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(started, 1.0, "tried on 2 replicas, started once: {m}");
    let ok = start(&mock_config("", "tokens = 2\ntokens_per_sec = 200.0")).await;
    let (id, _) = ok.submit(&task("y", 2, "interactive")).await;
    ok.stream(&id, None).await;
    let m = ok.metrics().await;
    assert!(m.contains("latency_first_token_ms_bucket"), "{m}");
    assert!(m.contains("latency_first_token_dispatch_ms_bucket"), "{m}");
}

#[tokio::test]
async fn an_idempotency_key_names_the_task_admitted_before_and_runs_it_once() {
    let s = start(&mock_config("", "tokens_per_sec = 200.0\ntokens = 4")).await;
    let post = |key: &'static str, body: serde_json::Value| {
        let (http, url) = (s.http.clone(), s.url("/v1/tasks"));
        async move {
            http.post(url)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let first = post("order-42", task("hi", 4, "interactive")).await;
    assert_eq!(first.status(), 202);
    let id = first.json::<serde_json::Value>().await.unwrap()["task_id"].clone();
    let again = post("order-42", task("hi", 4, "interactive")).await;
    assert_eq!(again.status(), 202);
    assert_eq!(
        again.json::<serde_json::Value>().await.unwrap()["task_id"],
        id
    );
    let orch = &s.server.as_ref().unwrap().orch;
    assert_eq!(
        orch.stats().table.live + orch.stats().table.finished_with_frames,
        1
    );
    let frames = s.stream(id.as_str().unwrap(), None).await;
    assert_terminated(&frames, id.as_str().unwrap());
    assert_eq!(frames.iter().filter(|f| f.event == "started").count(), 1);
    // after it ended, still the same task, nothing new runs
    let later = post("order-42", task("hi", 4, "interactive")).await;
    assert_eq!(
        later.json::<serde_json::Value>().await.unwrap()["task_id"],
        id
    );
    let other = post("order-43", task("hi", 4, "interactive")).await;
    assert_ne!(
        other.json::<serde_json::Value>().await.unwrap()["task_id"],
        id
    );
    assert_eq!(
        orch.stats().table.live + orch.stats().table.finished_with_frames,
        2
    );
    // refused: empty, not visible ASCII, over 255 bytes, or together with a task_id
    let long: &'static str = Box::leak("k".repeat(256).into_boxed_str());
    for key in ["", "a b", long] {
        let e = envelope(
            post(key, task("hi", 4, "interactive")).await,
            400,
            "INVALID_PARAMS",
        )
        .await;
        assert!(
            e["message"].as_str().unwrap().contains("Idempotency-Key"),
            "{e}"
        );
    }
    let mut with_id = task("hi", 4, "interactive");
    with_id["task_id"] = json!(uuid::Uuid::new_v4().to_string());
    let e = envelope(post("order-44", with_id).await, 400, "INVALID_PARAMS").await;
    assert!(e["message"].as_str().unwrap().contains("not both"), "{e}");
}

/// One task's readers are bounded (each is woken for every frame, so unbounded readers
/// cost quadratic CPU): one over `max_readers_per_task` is 429 `quota-readers`, and a
/// place freed is taken again (before: any number of readers).
#[tokio::test]
async fn readers_per_task_are_bounded() {
    let cfg = mock_config("", "tokens_per_sec = 20.0\ntokens = 40").replace(
        "stream_grace_ms = 60000\n",
        "stream_grace_ms = 60000\nmax_readers_per_task = 3\n",
    );
    let s = start(&cfg).await;
    let (id, _) = s.submit(&task("readers", 40, "interactive")).await;
    let open = || s.http.get(s.url(&format!("/v1/tasks/{id}/stream"))).send();
    let mut readers = Vec::new();
    for _ in 0..3 {
        let r = open().await.unwrap();
        assert_eq!(r.status(), 200);
        readers.push(r);
    }
    let e = envelope(open().await.unwrap(), 429, "QUOTA_EXCEEDED").await;
    assert_eq!(e["policy_label"], "quota-readers", "{e}");
    drop(readers.pop());
    let t0 = std::time::Instant::now();
    loop {
        let r = open().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the freed place was not reused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Spec §1: a task without a `seed` gets one derived from its id, stable (the same id
/// gives the same seed on any server) and different for different ids; a given seed
/// is used as given; a `sampler_profile_version` other than the pool's is refused.
#[tokio::test]
async fn the_seed_is_derived_from_the_task_id_and_a_foreign_sampler_profile_is_refused() {
    let s = start(&mock_config("", FAST)).await;
    let started_seed = |frames: Vec<SseFrame>| frames[0].data["seed"].as_i64().unwrap();
    let mut seeds = Vec::new();
    for id in [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()] {
        let mut body = task("seeded", 2, "interactive");
        body["task_id"] = id.to_string().into();
        let (tid, _) = s.submit(&body).await;
        let seed = started_seed(s.stream(&tid, None).await);
        let expected = tid.parse::<orch_domain::TaskId>().unwrap().derived_seed();
        assert_eq!(seed, expected, "the seed is the one derived from the id");
        seeds.push(seed);
    }
    assert_ne!(seeds[0], seeds[1], "different ids, different seeds");
    let mut given = task("given", 2, "interactive");
    given["seed"] = 42.into();
    let (tid, _) = s.submit(&given).await;
    assert_eq!(started_seed(s.stream(&tid, None).await), 42);
    let mut foreign = task("foreign profile", 2, "interactive");
    foreign["sampler_profile_version"] = "v999".into();
    let v = envelope(s.post_raw(&foreign).await, 400, "INVALID_PARAMS").await;
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("sampler_profile_version"),
        "{v}"
    );
    s.assert_all_terminated().await;
}

/// Spec §2: while a stream waits (its task queued behind another), `: keep-alive`
/// comments go out every `keepalive_ms` (200 ms here), from before its first frame
/// (a `metrics` frame with its place, at the pool's interval).
#[tokio::test]
async fn a_waiting_stream_gets_keep_alive_comments() {
    use futures_util::StreamExt;
    let s = start(&mock_config("", ONE_SLOW)).await;
    let (first, _) = s.submit(&task("ahead", 40, "interactive")).await;
    let (waiting, _) = s.submit(&task("behind", 4, "interactive")).await;
    let r = s.stream_response(&waiting, None).await;
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut seen = String::new();
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_millis(900) {
        match tokio::time::timeout(Duration::from_millis(300), body.next()).await {
            Ok(Some(Ok(c))) => seen.push_str(&String::from_utf8_lossy(&c)),
            Ok(_) => break,
            Err(_) => {}
        }
    }
    let comments = seen.matches(": keep-alive").count();
    assert!(comments >= 2, "keep-alives while waiting: {seen:?}");
    // it has not started; what else it may get meanwhile is its place (`metrics`)
    assert!(
        !seen.contains("event: started") && !seen.contains("event: token"),
        "it waits: {seen:?}"
    );
    let first_frame = seen.find("event: ").unwrap_or(seen.len());
    assert!(
        seen.find(": keep-alive").is_some_and(|k| k < first_frame),
        "keep-alives come before any frame: {seen:?}"
    );
    drop(body);
    for id in [&first, &waiting] {
        s.http
            .post(s.url(&format!("/v1/tasks/{id}/cancel")))
            .send()
            .await
            .unwrap();
    }
    s.assert_all_terminated().await;
}

/// Spec §2: a running task's `metrics` frames carry `tokens_budget_remaining` (its
/// session's budget less earlier turns, prompt and output, and this turn's output so
/// far) and `kv_warmth`
/// (false on a first turn placed by load, true on a next turn placed by its session).
#[tokio::test]
async fn running_metrics_frames_carry_the_session_budget_left_and_kv_warmth() {
    let cfg = mock_config(
        "metrics_frame_interval_ms = 50",
        "slots = 1\ntokens_per_sec = 100.0\nttft_ms = 5\ntokens = 30",
    )
    .replace("[server]", "[server]\nsession_token_budget = 1000");
    let s = start(&cfg).await;
    let sid = uuid::Uuid::new_v4().to_string();
    let mut used = 0u64;
    for (turn, warm) in [(0, false), (1, true)] {
        let mut t = task(&format!("turn {turn}"), 30, "interactive");
        t["session_id"] = json!(sid);
        let (id, _) = s.submit(&t).await;
        let f = s.stream(&id, None).await;
        assert_eq!(f.last().unwrap().event, "end", "{f:?}");
        let running: Vec<&SseFrame> = f
            .iter()
            .filter(|x| x.event == "metrics" && x.data["tokens_out"].is_u64())
            .collect();
        assert!(running.len() >= 2, "metrics frames while running: {f:?}");
        for m in &running {
            let so_far = m.data["tokens_out"].as_u64().unwrap();
            assert_eq!(
                m.data["tokens_budget_remaining"].as_u64(),
                Some(1000 - used - so_far),
                "turn {turn}: {m:?}"
            );
            assert_eq!(m.data["kv_warmth"], json!(warm), "turn {turn}: {m:?}");
        }
        // a turn is charged its prompt and its output when it ends
        let end = &f.last().unwrap().data;
        used += end["tokens_in"].as_u64().unwrap() + end["tokens_out"].as_u64().unwrap();
    }
    // without a session there is no budget to tell of (kv_warmth is still told)
    let (id, _) = s.submit(&task("no session", 30, "interactive")).await;
    let f = s.stream(&id, None).await;
    let m = f
        .iter()
        .find(|x| x.event == "metrics" && x.data["tokens_out"].is_u64())
        .expect("a running metrics frame");
    assert!(m.data.get("tokens_budget_remaining").is_none(), "{m:?}");
    s.assert_all_terminated().await;
}
