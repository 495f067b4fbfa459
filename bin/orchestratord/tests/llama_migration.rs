//! Continuation on the real engine (Gemma 3 270M, greedy, a counting prompt): a
//! llama-server killed with `kill -9`, or stopped with `kill -STOP` past the idle
//! watchdog, after it streamed tokens; the supervisor restarts it and the generation
//! continues there from its token ids. The client's whole text equals an
//! uninterrupted reference run's, token for token, and the stream ends with `end`.
//! Same through the OpenAI door with the official SDK. Needs the provisioned engine
//! (see `llamacpp.rs` on skipping).
#![cfg(not(skip_real_engine))]
#![allow(clippy::await_holding_lock)]

mod common;
use common::llama::*;
use common::*;
use serde_json::Value;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

const TOKENS: u32 = 48;

/// Token texts of a stream, and how often it moved (its `migrated` notes).
fn tokens_of(frames: &[SseFrame]) -> (Vec<String>, Vec<Value>) {
    let texts = frames
        .iter()
        .filter(|f| f.event == "token")
        .map(|f| f.data["t"].as_str().unwrap_or_default().to_string())
        .collect();
    let moved = frames
        .iter()
        .filter(|f| f.event == "metrics" && f.data["migrated"].is_object())
        .map(|f| f.data["migrated"].clone())
        .collect();
    (texts, moved)
}

/// One replica, one slot; a stopped engine is found unresponsive within about 2.5 s
/// (after the idle watchdog's 1 s, so a stop is seen by the watchdog first).
fn config() -> String {
    format!(
        "[supervision]\nhealth_interval_ms = 200\nhealth_timeout_ms = 300\nunhealthy_after = 2\nrestart_unresponsive_after = 5\n{}",
        llama_config(1, 1, 2, "").replace("idle_timeout_ms = 10000", "idle_timeout_ms = 1000")
    )
}

/// The reference: the same greedy task run to its end with nothing in the way.
async fn reference(s: &TestServer) -> Vec<String> {
    let (id, _) = s.submit(&llama_task(LONG, TOKENS)).await;
    let frames = s.stream(&id, None).await;
    assert_eq!(frames.last().unwrap().event, "end", "{frames:?}");
    let (texts, moved) = tokens_of(&frames);
    assert!(moved.is_empty());
    texts
}

async fn replica_pid(s: &TestServer) -> u64 {
    pools(s).await["pools"][0]["replicas"][0]["pid"]
        .as_u64()
        .expect("local replica pid")
}

fn signal(sig: &str, pid: u64) {
    let st = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Run the task, send `sig` to its engine after 10 tokens, and check the client's
/// stream: every token of the reference in order, `end`, one move for `reason`.
async fn interrupted(s: &TestServer, sig: &str, reason: &str, want: &[String]) {
    let (id, _) = s.submit(&llama_task(LONG, TOKENS)).await;
    wait_tokens(s, &id, 10).await;
    let pid = replica_pid(s).await;
    let t0 = Instant::now();
    signal(sig, pid);
    let frames = s.stream(&id, None).await;
    let last = frames.last().unwrap();
    assert_eq!(last.event, "end", "{frames:?}");
    let (texts, moved) = tokens_of(&frames);
    assert_eq!(texts, want, "token for token the uninterrupted run's text");
    assert_eq!(last.data["tokens_out"], want.len());
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0]["reason"], reason);
    assert!(moved[0]["at_token"].as_u64().unwrap() >= 10, "{moved:?}");
    assert_eq!(frames.iter().filter(|f| f.event == "started").count(), 1);
    assert_ne!(replica_pid(s).await, pid, "a restarted engine continued it");
    eprintln!(
        "[migration] {sig}: {} tokens, moved at token {}, ended {:?} after the signal",
        texts.len(),
        moved[0]["at_token"],
        t0.elapsed()
    );
}

#[tokio::test]
async fn kill_9_mid_stream_the_generation_continues_with_the_uninterrupted_text() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_engine();
    let s = start(&config()).await;
    let want = reference(&s).await;
    assert_eq!(
        want.len(),
        TOKENS as usize,
        "the counting prompt fills max_tokens"
    );
    interrupted(&s, "-9", "WORKER_RESET", &want).await;
    // (the registry is the process's: other tests of this file count there too)
    let m = s.metrics().await;
    let moved = m
        .lines()
        .find_map(|l| {
            l.strip_prefix("tasks_migrated_total{pool_id=\"llama\",reason=\"worker_reset\"} ")
        })
        .and_then(|v| v.parse::<f64>().ok());
    assert!(moved >= Some(1.0), "{m}");
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn sigstop_past_the_idle_watchdog_the_generation_continues_with_the_uninterrupted_text() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_engine();
    let s = start(&config()).await;
    let want = reference(&s).await;
    interrupted(&s, "-STOP", "DECODE_TIMEOUT", &want).await;
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn through_the_openai_door_a_killed_engine_costs_the_sdk_stream_no_token() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_engine();
    let s = start(&config()).await;
    let want = reference(&s).await.concat();
    // the official SDK streams a completion; the engine is killed once 16 of its
    // tokens are out
    // tokens_out_total moves in steps of 16, and the registry is the process's: the
    // count before the SDK's task is the baseline
    let tokens_out = "tokens_out_total{";
    let moves = "tasks_migrated_total{pool_id=\"llama\"";
    let before = s.metric_sum(tokens_out).await;
    let moved_before = s.metric_sum(moves).await;
    let sdk = sdk::stream_completion(&s.base, "gemma-3-270m", LONG, TOKENS);
    let killer = async {
        let t0 = Instant::now();
        loop {
            if s.metric_sum(tokens_out).await >= before + 16.0 {
                signal("-9", replica_pid(&s).await);
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the SDK's task never streamed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let (text, ()) = tokio::join!(sdk, killer);
    assert_eq!(text, want, "the SDK's text is the uninterrupted run's");
    assert_eq!(
        s.metric_sum(moves).await,
        moved_before + 1.0,
        "its generation moved once"
    );
    s.assert_all_terminated().await;
}
