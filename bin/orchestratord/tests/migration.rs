//! Continuation (migration) over real HTTP with mock engines and injected faults: a
//! generation whose engine fails after it streamed tokens goes on on another replica
//! (or the same one restarted) from the tokens streamed, with no gap, no repeat and no
//! second `started`; every failure point has its test: mid-stream, at the last token,
//! during the continuation itself, the limit used up, the deadline passed, a hang and a
//! crash of the only replica. (Before the first token a task is retried instead:
//! `faults.rs::a_failure_before_the_first_token_is_retried_on_another_replica`.)

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const SUPERVISION: &str = "[supervision]\nhealth_interval_ms = 100\nhealth_timeout_ms = 150\nunhealthy_after = 2\nrestart_unresponsive_after = 4\n";

const SEED: i64 = 4242;

/// A pool `id` (each test its own: the metrics registry is the process's) with `pool`
/// and `mock` settings; its replicas are `{id}-r0`, `{id}-r1`, …
fn config(id: &str, pool: &str, mock: &str) -> String {
    let mock = mock.replace("mp-r", &format!("{id}-r"));
    format!(
        "{SUPERVISION}\n[[pools]]\nid = \"{id}\"\nengine = \"mock\"\nmodel = \"mock-model\"\nqueue_wait_limit_ms = 20000\n{pool}\n[pools.mock]\n{mock}\n"
    )
}

fn job(max_tokens: u32) -> Value {
    let mut t = task("continue me", max_tokens, "interactive");
    t["seed"] = json!(SEED);
    t
}

/// What the mock generates for the test's seed: its tokens' text and ids.
fn reference(n: u32) -> (String, Vec<u64>) {
    let text = (0..n)
        .map(|i| adapter_mock::token_text(0, SEED, i))
        .collect();
    let ids = (0..n)
        .map(|i| u64::from(adapter_mock::token_id(0, SEED, i)))
        .collect();
    (text, ids)
}

/// The stream as a client sees it, checked for the continuation's promises: one
/// `started`, contiguous token indices from 0, frame ids without a gap, one terminal
/// frame last. Returns (text, token ids, `migrated` notes, terminal frame).
fn read(frames: &[SseFrame]) -> (String, Vec<u64>, Vec<Value>, SseFrame) {
    let started = frames.iter().filter(|f| f.event == "started").count();
    assert_eq!(started, 1, "one started frame: {frames:?}");
    for (k, f) in frames.iter().enumerate() {
        assert_eq!(f.id, k as u64 + 1, "frame ids without a gap: {frames:?}");
    }
    let (mut text, mut ids, mut moved) = (String::new(), Vec::new(), Vec::new());
    let mut next = 0;
    for f in frames {
        match f.event.as_str() {
            "token" => {
                assert_eq!(f.data["i"], next, "token indices contiguous: {frames:?}");
                next += 1;
                text.push_str(f.data["t"].as_str().unwrap());
                for id in f.data["ids"].as_array().expect("ids on a mock token") {
                    ids.push(id.as_u64().unwrap());
                }
            }
            "metrics" if !f.data["migrated"].is_null() => moved.push(f.data["migrated"].clone()),
            _ => {}
        }
    }
    let last = frames.last().expect("a terminal frame").clone();
    assert!(["end", "error"].contains(&last.event.as_str()), "{last:?}");
    (text, ids, moved, last)
}

/// Submit `n` tasks at once and read their streams.
async fn run_all(s: &TestServer, n: usize, max_tokens: u32) -> Vec<Vec<SseFrame>> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(s.submit(&job(max_tokens)).await.0);
    }
    let reads = ids.iter().map(|id| s.stream(id, None));
    futures_util::future::join_all(reads).await
}

#[tokio::test]
async fn a_generation_that_fails_mid_stream_continues_on_another_replica_with_no_gap_or_repeat() {
    // two one-slot replicas, one task each; r0's engine fails after 5 tokens
    let s = start(&config(
        "mig1",
        "replicas = 2",
        "slots = 1\ntokens = 40\ntokens_per_sec = 200.0\nttft_ms = 5\nfail_after_tokens = 5\nfaults_only_on = [\"mig1-r0\"]",
    ))
    .await;
    let runs = run_all(&s, 2, 12).await;
    let (want_text, want_ids) = reference(12);
    let mut moved_total = 0;
    for frames in &runs {
        let (text, ids, moved, last) = read(frames);
        assert_eq!(last.event, "end", "{frames:?}");
        assert_eq!(last.data["tokens_out"], 12);
        assert_eq!(last.data["finish_reason"], "length");
        assert_eq!(text, want_text, "the text of an uninterrupted run");
        assert_eq!(ids, want_ids);
        if let Some(m) = moved.first() {
            assert_eq!(moved.len(), 1, "{moved:?}");
            assert_eq!(m["from_replica"], "mig1-r0");
            assert_eq!(m["to_replica"], "mig1-r1");
            assert_eq!(m["reason"], "WORKER_RESET");
            assert_eq!(m["at_token"], 5);
            assert_eq!(m["count"], 1);
            // the note comes right after the fifth token
            let at = frames
                .iter()
                .position(|f| f.data["migrated"].is_object())
                .unwrap();
            assert_eq!(frames[at - 1].data["i"], 4, "{frames:?}");
        }
        moved_total += moved.len();
    }
    assert_eq!(moved_total, 1, "the task on r0 moved, the other did not");
    let migrated = s
        .metric_sum("tasks_migrated_total{pool_id=\"mig1\",reason=\"worker_reset\"}")
        .await;
    assert_eq!(migrated, 1.0);
    assert_eq!(
        s.metric_sum("task_migration_pause_ms_count{pool_id=\"mig1\"}")
            .await,
        1.0
    );
    assert_eq!(
        s.metric_sum("tasks_placed_total{pool_id=\"mig1\",reason=\"migration\"}")
            .await,
        1.0
    );
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn a_failure_after_the_last_token_ends_the_task_as_completed() {
    // every token the task may have was streamed; only the engine's end was lost
    let s = start(&config(
        "mig2",
        "replicas = 1",
        "slots = 1\ntokens = 40\ntokens_per_sec = 0.0\nttft_ms = 0\nfail_after_tokens = 8",
    ))
    .await;
    let frames = &run_all(&s, 1, 8).await[0];
    let (text, _, moved, last) = read(frames);
    assert_eq!(last.event, "end", "{frames:?}");
    assert_eq!(last.data["tokens_out"], 8);
    assert_eq!(last.data["finish_reason"], "length");
    assert_eq!(text, reference(8).0);
    assert!(moved.is_empty(), "nothing left to continue: {moved:?}");
    assert_eq!(
        s.metric_sum("tasks_migrated_total{pool_id=\"mig2\"").await,
        0.0
    );
}

const THREE_FAILING_TWO: &str =
    "slots = 1\ntokens = 40\ntokens_per_sec = 100.0\nttft_ms = 5\nfail_after_tokens = 4\nfaults_only_on = [\"mp-r0\", \"mp-r1\"]";

#[tokio::test]
async fn a_continuation_that_fails_itself_is_continued_again() {
    // three one-slot replicas, one task each; r0 and r1 fail at token 4 (a continuation
    // placed on the other one fails there at once): every task ends on r2
    let s = start(&config("mig3", "replicas = 3", THREE_FAILING_TWO)).await;
    let runs = run_all(&s, 3, 10).await;
    let (want_text, _) = reference(10);
    let mut most = 0;
    for frames in &runs {
        let (text, _, moved, last) = read(frames);
        assert_eq!(last.event, "end", "{frames:?}");
        assert_eq!(text, want_text);
        for (k, m) in moved.iter().enumerate() {
            assert_eq!(m["count"], k as u64 + 1, "{moved:?}");
            assert_eq!(m["at_token"], 4);
        }
        if let Some(m) = moved.last() {
            assert_eq!(m["to_replica"], "mig3-r2", "{moved:?}");
        }
        most = most.max(moved.len());
    }
    // the task that failed second finds the first one's replica free and fails there too
    assert!(most >= 2, "a continuation failed and was continued again");
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn when_the_migration_limit_is_used_up_the_failure_stands() {
    let s = start(&config(
        "mig4",
        "replicas = 3\nmigration_limit = 1",
        THREE_FAILING_TWO,
    ))
    .await;
    let runs = run_all(&s, 3, 10).await;
    let mut errors = 0;
    for frames in &runs {
        let (text, _, moved, last) = read(frames);
        assert!(moved.len() <= 1, "{moved:?}");
        if last.event == "error" {
            errors += 1;
            assert_eq!(last.data["code"], "WORKER_RESET", "{last:?}");
            assert_eq!(last.data["retriable"], true);
            let msg = last.data["message"].as_str().unwrap();
            assert!(msg.contains("migration_limit"), "{msg}");
            // what it streamed is a prefix of the whole text, nothing repeated
            assert!(reference(10).0.starts_with(&text), "{text}");
        }
    }
    assert!(errors >= 1, "a task needed a second move and had none left");
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn with_migration_off_a_mid_stream_failure_ends_the_task() {
    let s = start(&config(
        "mig5",
        "replicas = 2\nmigration_limit = 0",
        "slots = 1\ntokens = 40\ntokens_per_sec = 200.0\nttft_ms = 5\nfail_after_tokens = 5",
    ))
    .await;
    let frames = &run_all(&s, 1, 12).await[0];
    let (_, _, moved, last) = read(frames);
    assert_eq!(last.data["code"], "WORKER_RESET", "{frames:?}");
    assert!(moved.is_empty());
}

#[tokio::test]
async fn a_task_past_its_deadline_is_not_continued() {
    let s = start(&config(
        "mig6",
        "replicas = 2",
        "slots = 1\ntokens = 40\ntokens_per_sec = 10.0\nttft_ms = 5\nfail_after_tokens = 5",
    ))
    .await;
    // the failure comes about 500 ms after admission, past the 300 ms deadline (the
    // admission's prediction, 12 tokens at the prior 20 ms each, meets it)
    let mut t = job(12);
    t["deadline_ms"] = json!(300);
    let (id, _) = s.submit(&t).await;
    let frames = s.stream(&id, None).await;
    let (_, _, moved, last) = read(&frames);
    assert_eq!(last.event, "error", "{frames:?}");
    assert_eq!(last.data["code"], "WORKER_RESET");
    let msg = last.data["message"].as_str().unwrap();
    assert!(msg.contains("deadline"), "{msg}");
    assert!(moved.is_empty());
}

#[tokio::test]
async fn the_only_replica_hanging_mid_stream_is_restarted_and_the_generation_continues_there() {
    // like SIGSTOP: the replica answers nothing from 300 ms on; the idle watchdog ends
    // the attempt, the supervisor kills and restarts the replica, and the continuation
    // waits for it
    let s = start(&config(
        "mig7",
        "replicas = 1\nidle_timeout_ms = 500",
        "slots = 1\ntokens = 40\ntokens_per_sec = 40.0\nttft_ms = 5\nhang_after_ms = 300",
    ))
    .await;
    let frames = &run_all(&s, 1, 30).await[0];
    let (text, ids, moved, last) = read(frames);
    assert_eq!(last.event, "end", "{frames:?}");
    assert_eq!((text, ids), reference(30));
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0]["reason"], "DECODE_TIMEOUT");
    assert_eq!(moved[0]["from_replica"], "mig7-r0");
    assert_eq!(
        moved[0]["to_replica"], "mig7-r0",
        "the same replica, restarted"
    );
    assert!(s.metric_sum("replica_restarts_total{pool_id=\"mig7\",replica_id=\"mig7-r0\",reason=\"unresponsive\"}").await >= 1.0);
}

#[tokio::test]
async fn the_only_replica_crashing_mid_stream_is_restarted_and_the_generation_continues_there() {
    // the process exits 400 ms after each launch: the first run streams about 18
    // tokens, the restarted one finishes the rest well within its own 400 ms
    let s = start(&config(
        "mig8",
        "replicas = 1",
        "slots = 1\ntokens = 60\ntokens_per_sec = 50.0\nttft_ms = 5\ncrash_after_ms = 400",
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let frames = &run_all(&s, 1, 25).await[0];
    let (text, ids, moved, last) = read(frames);
    assert_eq!(last.event, "end", "{frames:?}");
    assert_eq!((text, ids), reference(25));
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0]["reason"], "WORKER_RESET");
    assert_eq!(moved[0]["to_replica"], "mig8-r0");
}
