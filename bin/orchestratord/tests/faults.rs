//! Faults over real HTTP against the binary (mock engines with injected faults): a
//! replica that hangs mid-stream (like SIGSTOP), an engine that drips tokens, a replica
//! that crash-loops, and a failure before the first token retried on another replica.
//! Each test asserts the frame the client sees and how the pool recovers.

mod common;
use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const SUPERVISION: &str =
    "[supervision]\nhealth_interval_ms = 100\nhealth_timeout_ms = 150\nunhealthy_after = 2\nrestart_unresponsive_after = 4\n";

fn config(pool: &str, mock: &str) -> std::path::PathBuf {
    let text = format!(
        "[server]\nkeepalive_ms = 200\n{SUPERVISION}\n[[pools]]\nid = \"p\"\nengine = \"mock\"\nmodel = \"mock-model\"\n{pool}\n[pools.mock]\n{mock}\n"
    );
    temp_config("faults", &text)
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn submit(&self, max_tokens: u32) -> String {
        let r = self
            .http
            .post(format!("{}/v1/tasks", self.base))
            .json(&task("fault", max_tokens, "interactive"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{:?}", r.text().await);
        r.json::<Value>().await.unwrap()["task_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn stream(&self, id: &str) -> Vec<SseFrame> {
        parse_sse(
            &self
                .http
                .get(format!("{}/v1/tasks/{id}/stream", self.base))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        )
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn metric(&self, line_prefix: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(line_prefix))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }
}

fn last(frames: &[SseFrame]) -> &SseFrame {
    frames.last().expect("a terminal frame")
}

#[tokio::test]
async fn a_replica_that_hangs_mid_stream_gives_a_watchdog_error_and_is_restarted() {
    // without continuation (on by default: migration.rs) the watchdog's error ends it
    let path = config(
        "idle_timeout_ms = 700\nmigration_limit = 0",
        "slots = 1\ntokens_per_sec = 20.0\nttft_ms = 5\ntokens = 200\nhang_after_ms = 500",
    );
    let (_child, base, _) = spawn_binary_logged(&path, &[]);
    let api = Api {
        http: reqwest::Client::new(),
        base,
    };
    let t0 = Instant::now();
    let id = api.submit(200).await;
    let frames = api.stream(&id).await;
    let end = last(&frames);
    assert_eq!(end.event, "error", "{frames:?}");
    assert_eq!(end.data["code"], "DECODE_TIMEOUT", "{end:?}");
    assert_eq!(end.data["retriable"], true);
    let tokens = frames.iter().filter(|f| f.event == "token").count();
    assert!(tokens > 0, "it streamed before it hung");
    println!(
        "[faults] hung replica: {tokens} tokens, then {} after {:?}",
        end.data["code"],
        t0.elapsed()
    );
    // the supervisor kills the unresponsive process and a fresh one serves
    let t1 = Instant::now();
    loop {
        if api
            .metric(
                "replica_restarts_total{pool_id=\"p\",replica_id=\"p-r0\",reason=\"unresponsive\"}",
            )
            .await
            >= 1.0
            && api.get("/v1/pools").await["pools"][0]["ready"] == true
        {
            break;
        }
        assert!(t1.elapsed() < Duration::from_secs(10), "no restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = api.submit(5).await;
    let frames = api.stream(&id).await;
    assert_eq!(last(&frames).event, "end", "{frames:?}");
    println!(
        "[faults] restarted and serving {:?} after the error",
        t1.elapsed()
    );
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn an_engine_that_drips_tokens_hits_the_wall_clock_limit() {
    let path = config(
        "decode_timeout_ms = 1500\nidle_timeout_ms = 5000",
        "slots = 1\ntokens_per_sec = 2.0\nttft_ms = 5\ntokens = 100",
    );
    let (_child, base, _) = spawn_binary_logged(&path, &[]);
    let api = Api {
        http: reqwest::Client::new(),
        base,
    };
    let t0 = Instant::now();
    let id = api.submit(100).await;
    let frames = api.stream(&id).await;
    let took = t0.elapsed();
    let end = last(&frames);
    assert_eq!(end.data["code"], "DECODE_TIMEOUT", "{frames:?}");
    let msg = end.data["message"].as_str().unwrap();
    assert!(msg.contains("wall-clock"), "{msg}");
    let tokens = frames.iter().filter(|f| f.event == "token").count();
    assert!((2..=5).contains(&tokens), "{tokens} tokens in 1.5 s at 2/s");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // the slot came back: the next task starts
    let id = api.submit(1).await;
    assert_eq!(last(&api.stream(&id).await).event, "end");
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn a_crash_looping_replica_ends_every_task_typed_within_a_bound_and_the_pool_says_why() {
    let path = config(
        "queue_wait_limit_ms = 2000\nqueue_capacity = 16",
        "slots = 1\ntokens_per_sec = 10.0\nttft_ms = 5\ntokens = 50\ncrash_after_ms = 300",
    );
    let (_child, base, _) = spawn_binary_logged(&path, &[]);
    let api = Api {
        http: reqwest::Client::new(),
        base,
    };
    // the pool says why while the replica crash-loops (once it is back and ready, its
    // view no longer carries the crash: seen once in CI, read just after a restart)
    let said_why = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = {
        let (http, url, said) = (
            api.http.clone(),
            format!("{}/v1/pools", api.base),
            said_why.clone(),
        );
        tokio::spawn(async move {
            for _ in 0..200 {
                if let Ok(r) = http.get(&url).send().await {
                    if r.text().await.is_ok_and(|t| t.contains("crashed")) {
                        said.store(true, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    let t0 = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(api.submit(50).await);
    }
    let mut codes = Vec::new();
    for id in &ids {
        let frames = api.stream(id).await;
        let end = last(&frames);
        assert_eq!(end.event, "error", "{frames:?}");
        codes.push(end.data["code"].as_str().unwrap().to_string());
    }
    let took = t0.elapsed();
    println!("[faults] crash loop: {codes:?} within {took:?}");
    for c in &codes {
        assert!(
            ["WORKER_RESET", "REPLICA_EXHAUSTED", "POOL_UNAVAILABLE"].contains(&c.as_str()),
            "{c}"
        );
    }
    assert!(took < Duration::from_secs(10), "{took:?}");
    let _ = watch.await;
    assert!(
        said_why.load(std::sync::atomic::Ordering::Relaxed),
        "the pool said why while its replica crash-looped"
    );
    let restarts = api
        .metric("replica_restarts_total{pool_id=\"p\",replica_id=\"p-r0\",reason=\"exited\"}")
        .await;
    assert!(restarts >= 2.0, "{restarts}");
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn a_failure_before_the_first_token_is_retried_on_another_replica() {
    let path = config(
        "replicas = 2\nretries_before_first_token = 1\nplacement = \"least-loaded\"",
        "slots = 1\ntokens_per_sec = 40.0\nttft_ms = 5\ntokens = 4\nfail_before_first_token = true\nfaults_only_on = [\"p-r0\"]",
    );
    let (_child, base, _) = spawn_binary_logged(&path, &[]);
    let api = Api {
        http: reqwest::Client::new(),
        base,
    };
    // pairs at once: with one slot each, one of every pair is placed on p-r0, fails
    // there at once, and waits for p-r1 (busy with the other for ~100 ms) instead of
    // failing
    for _ in 0..3 {
        let (a, b) = (api.submit(4).await, api.submit(4).await);
        for id in [a, b] {
            let frames = api.stream(&id).await;
            assert_eq!(last(&frames).event, "end", "{frames:?}");
            let started = frames.iter().find(|f| f.event == "started").unwrap();
            assert_eq!(started.data["replica_id"], "p-r1", "{started:?}");
        }
    }
    let retried = api
        .metric("tasks_placed_total{pool_id=\"p\",reason=\"retry\"}")
        .await;
    assert!(
        retried >= 1.0,
        "no task was tried on p-r0 first ({retried})"
    );
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn while_a_retry_waits_the_replica_it_failed_on_gives_its_slot_back() {
    let path = config(
        "replicas = 2\nretries_before_first_token = 1\nplacement = \"least-loaded\"",
        "slots = 1\ntokens_per_sec = 40.0\nttft_ms = 5\ntokens = 60\nfail_before_first_token = true\nfaults_only_on = [\"p-r0\"]",
    );
    let (_child, base, _) = spawn_binary_logged(&path, &[]);
    let api = Api {
        http: reqwest::Client::new(),
        base,
    };
    // a long task ends up on p-r1 (placed on p-r0 first, it is retried there)
    let long = api.submit(60).await;
    let t0 = Instant::now();
    loop {
        let s = api.get(&format!("/v1/tasks/{long}")).await;
        if s["replica_id"] == "p-r1" && s["tokens_out"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "{s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // the next one fails on p-r0 and waits for p-r1; p-r0's slot is free meanwhile
    let waiting = api.submit(4).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = api.get(&format!("/v1/tasks/{waiting}")).await;
    assert_eq!(s["state"], "running", "retrying counts as running: {s}");
    let pools = api.get("/v1/pools").await;
    let r0 = pools["pools"][0]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "p-r0")
        .unwrap()
        .clone();
    assert_eq!(
        r0["slots_free"], 1,
        "p-r0 holds no slot for the waiting retry: {r0}"
    );
    let frames = api.stream(&waiting).await;
    assert_eq!(last(&frames).event, "end", "{frames:?}");
    let started = frames.iter().find(|f| f.event == "started").unwrap();
    assert_eq!(started.data["replica_id"], "p-r1");
    assert_eq!(last(&api.stream(&long).await).event, "end");
    let _ = std::fs::remove_file(path);
}
