//! Real llama-server replicas (the bundled Gemma 3 270M) behind orchestratord.
//! Provisioned by `scripts/provision.sh`. A missing engine fails these tests; a run
//! that means to go without them says so with `ORCH_SKIP_REAL_ENGINE=1` or
//! `--features orchestratord/skip-real-engine`, which leaves them out entirely with a
//! SKIP warning in the build output (they never read as passed; see `build.rs`). Tests run one at a time (they share two CPU cores with the
//! engines).
#![cfg(not(skip_real_engine))]
// Each #[tokio::test] has its own runtime on its own thread; the std mutex is held on
// purpose across awaits to run the real-engine tests one at a time.
#![allow(clippy::await_holding_lock)]

mod common;
#[path = "llamacpp/prompt_fit.rs"]
mod prompt_fit;
use common::llama::*;
use common::*;
use serde_json::{json, Value};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

/// A config whose engines take requests without a key (for an engine another
/// program reaches directly, as `engine_api_key = false` documents).
fn keyless_engines(cfg: String) -> String {
    cfg.replace(
        "[pools.llamacpp]\n",
        "[pools.llamacpp]\nengine_api_key = false\n",
    )
}

/// The API key orchestratord gave the engine listening at `endpoint`: read from the
/// process's environment, which only this user can read (as the README says).
async fn engine_key(s: &TestServer, endpoint: &str) -> String {
    let p = pools(s).await;
    let pid = p["pools"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|pool| pool["replicas"].as_array().unwrap().iter())
        .find(|r| r["endpoint"] == endpoint)
        .and_then(|r| r["pid"].as_u64())
        .expect("a local replica with a pid");
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"LLAMA_API_KEY="))
        .map(|k| String::from_utf8_lossy(k).to_string())
        .expect("the engine has a key")
}

/// llama-server's own `/slots` listing of a replica.
async fn engine_slots(s: &TestServer, endpoint: &str) -> Value {
    let key = engine_key(s, endpoint).await;
    s.http
        .get(format!("{endpoint}/slots"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn two_replicas_with_two_slots_run_four_and_queue_the_fifth() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_engine();
    let s = start(&llama_config(2, 2, 1, "")).await;
    let mut ids = Vec::new();
    for k in 0..5 {
        let (id, adm) = s.submit(&llama_task(LONG, 200)).await;
        if k == 4 {
            assert_eq!(adm["queue_position"], 1, "the fifth task waits for a slot");
        }
        ids.push(id);
    }
    for id in &ids[..4] {
        wait_tokens(&s, id, 1).await;
    }
    let states: Vec<Value> =
        futures_util::future::join_all(ids.iter().map(|id| s.status(id))).await;
    let running = states.iter().filter(|st| st["state"] == "running").count();
    assert_eq!(running, 4, "{states:?}");
    assert_eq!(states[4]["state"], "queued");
    let replicas: std::collections::HashSet<String> = states[..4]
        .iter()
        .map(|st| st["replica_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(replicas.len(), 2, "work spread over both replicas");
    s.cancel(&ids[0]).await;
    wait_tokens(&s, &ids[4], 1).await;
    for id in &ids {
        s.cancel(id).await;
    }
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn kill_9_mid_stream_gives_one_worker_reset_and_the_replica_comes_back() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_engine();
    // without continuation (on by default: llama_migration.rs) the task ends
    let s = start(&llama_config(
        1,
        1,
        2,
        "retries_before_first_token = 0\nmigration_limit = 0",
    ))
    .await;
    let (id, _) = s.submit(&llama_task(LONG, 300)).await;
    wait_tokens(&s, &id, 3).await;
    let p = pools(&s).await;
    let pid = p["pools"][0]["replicas"][0]["pid"]
        .as_u64()
        .expect("local replica pid");
    let t0 = Instant::now();
    let st = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let frames = s.stream(&id, None).await;
    let elapsed = t0.elapsed();
    let errors: Vec<&SseFrame> = frames.iter().filter(|f| f.event == "error").collect();
    assert_eq!(errors.len(), 1, "{frames:?}");
    assert_eq!(errors[0].data["code"], "WORKER_RESET");
    assert!(!frames.iter().any(|f| f.event == "end"));
    assert!(
        elapsed < Duration::from_secs(2),
        "error frame after {elapsed:?}"
    );
    eprintln!("kill -9 -> WORKER_RESET after {elapsed:?}");
    // the supervisor notices the exit (pool unready, reason recorded), restarts, and
    // the pool is ready again
    let mut reason = String::new();
    for _ in 0..200 {
        let h: Value = s.get_json("/v1/pools/llama/health").await;
        reason = h["last_error"].as_str().unwrap_or("").to_string();
        if reason.contains("exited") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        reason.contains("exited"),
        "exit reason recorded: {reason:?}"
    );
    wait_ready(&s).await;
    let (again, _) = s.submit(&llama_task("The capital of France is", 4)).await;
    let f = s.stream(&again, None).await;
    assert_eq!(f.last().unwrap().event, "end");
    assert_ne!(
        pools(&s).await["pools"][0]["replicas"][0]["pid"].as_u64(),
        Some(pid)
    );
    s.assert_all_terminated().await;
}

/// A replica stopped with SIGSTOP mid-stream (continuation off): the idle watchdog
/// ends the task with a retriable `DECODE_TIMEOUT`, the supervisor finds it answers no health check, kills
/// it and starts a fresh one, which serves.
#[tokio::test]
async fn sigstop_mid_stream_gives_a_watchdog_error_and_the_replica_is_restarted() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_engine();
    let cfg = format!(
        "[supervision]\nhealth_interval_ms = 200\nhealth_timeout_ms = 300\nunhealthy_after = 2\nrestart_unresponsive_after = 5\n{}",
        llama_config(1, 1, 2, "retries_before_first_token = 0\nmigration_limit = 0")
            .replace("idle_timeout_ms = 10000", "idle_timeout_ms = 1500")
    );
    let s = start(&cfg).await;
    let (id, _) = s.submit(&llama_task(LONG, 300)).await;
    wait_tokens(&s, &id, 3).await;
    let pid = pools(&s).await["pools"][0]["replicas"][0]["pid"]
        .as_u64()
        .expect("local replica pid");
    let t0 = Instant::now();
    let st = std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let frames = s.stream(&id, None).await;
    let elapsed = t0.elapsed();
    let last = frames.last().unwrap();
    assert_eq!(last.event, "error", "{frames:?}");
    assert_eq!(last.data["code"], "DECODE_TIMEOUT", "{last:?}");
    assert_eq!(last.data["retriable"], true);
    assert!(
        elapsed < Duration::from_secs(5),
        "error frame after {elapsed:?}"
    );
    eprintln!("SIGSTOP -> DECODE_TIMEOUT after {elapsed:?}");
    let mut restarted = None;
    for _ in 0..300 {
        let p = pools(&s).await;
        let r = &p["pools"][0]["replicas"][0];
        if r["pid"].as_u64().is_some_and(|p| p != pid) && p["pools"][0]["ready"] == true {
            restarted = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restarted = restarted.expect("a fresh replica within 30 s");
    eprintln!("SIGSTOP -> fresh replica ready after {restarted:?}");
    assert!(!alive(pid as u32), "the stopped process was killed");
    let (again, _) = s.submit(&llama_task("The capital of France is", 4)).await;
    let f = s.stream(&again, None).await;
    assert_eq!(f.last().unwrap().event, "end", "{f:?}");
    let m = s.metrics().await;
    assert!(
        m.lines().any(|l| l.starts_with("replica_restarts_total")
            && l.contains("reason=\"unresponsive\"")
            && l.ends_with(" 1")),
        "{m}"
    );
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn drain_stops_dispatch_and_ends_in_flight_work_by_the_deadline() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_engine();
    let s = start(&llama_config(1, 1, 2, "")).await;
    let (running, _) = s.submit(&llama_task(LONG, 400)).await;
    let (queued, _) = s.submit(&llama_task(LONG, 10)).await;
    wait_tokens(&s, &running, 1).await;
    let t0 = Instant::now();
    let r = s
        .http
        .post(s.url("/v1/pools/llama/drain"))
        .json(&json!({"deadline_ms": 800}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["in_flight"], 1);
    assert_eq!(body["queued_ended"], 1);
    let r = s.post_raw(&llama_task("new work", 4)).await;
    envelope(r, 503, "POOL_UNREADY").await;
    let fr = s.stream(&running, None).await;
    let elapsed = t0.elapsed();
    assert_eq!(fr.last().unwrap().event, "error");
    assert_eq!(fr.last().unwrap().data["code"], "POOL_UNREADY");
    assert!(
        elapsed < Duration::from_millis(800 + 1500),
        "ended after {elapsed:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(700),
        "ended before the deadline: {elapsed:?}"
    );
    let fq = s.stream(&queued, None).await;
    assert_eq!(fq.len(), 1);
    assert_eq!(fq[0].data["retriable"], true);
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn reload_same_digest_new_sampler_switches_without_a_failed_task() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_engine();
    let s = start(&llama_config(1, 1, 2, "")).await;
    let digest = pools(&s).await["pools"][0]["model_digest"]
        .as_str()
        .unwrap()
        .to_string();
    let (during, _) = s.submit(&llama_task(LONG, 60)).await;
    wait_tokens(&s, &during, 1).await;
    let r = s
        .http
        .post(s.url("/v1/pools/llama/reload"))
        .json(&json!({"model_ref": digest, "sampler_profile_version": "v2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["sampler_profile_version"], "v2");
    assert_eq!(body["model_digest"], digest.as_str());
    let fd = s.stream(&during, None).await;
    assert_eq!(
        fd.last().unwrap().event,
        "end",
        "the task running during reload finishes"
    );
    let (after, _) = s.submit(&llama_task("The capital of France is", 4)).await;
    let fa = s.stream(&after, None).await;
    assert_eq!(fa[0].data["sampler_profile_version"], "v2");
    assert_eq!(fa[0].data["replica_id"], "llama-g1-r0");
    for _ in 0..100 {
        let p = pools(&s).await;
        if p["pools"][0]["replicas"].as_array().unwrap().len() == 1 {
            assert_eq!(p["pools"][0]["replicas"][0]["id"], "llama-g1-r0");
            s.assert_all_terminated().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("old replica was not retired");
}

#[tokio::test]
async fn reload_to_a_broken_model_answers_409_and_old_replicas_keep_serving() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_engine();
    let models = std::env::temp_dir().join(format!("orch-models-{}", std::process::id()));
    std::fs::create_dir_all(&models).unwrap();
    let s = start(&llama_config(1, 1, 2, "").replace(
        "[pools.llamacpp]\n",
        &format!("[pools.llamacpp]\nmodels_dir = \"{}\"\n", models.display()),
    ))
    .await;
    let broken = models.join("broken.gguf");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(std::iter::repeat_n(0u8, 4096));
    std::fs::write(&broken, bytes).unwrap();
    // the bundled model itself is outside this pool's models directory: refused
    // before anything starts, as any path outside is (before: any GGUF path loaded)
    let outside = orchestratord::engines::default_model()
        .display()
        .to_string();
    for model_ref in [
        broken.display().to_string(),
        "/nonexistent/model.gguf".into(),
        "no-such-model".into(),
        outside.clone(),
        format!(
            "{}/../{}",
            models.display(),
            outside.trim_start_matches('/')
        ),
    ] {
        let r = s
            .http
            .post(s.url("/v1/pools/llama/reload"))
            .json(&json!({"model_ref": model_ref}))
            .send()
            .await
            .unwrap();
        let v = envelope(r, 409, "CONFLICT").await;
        assert!(
            v["message"].as_str().unwrap().contains("rolled back"),
            "{v}"
        );
    }
    let _ = std::fs::remove_dir_all(&models);
    let p = pools(&s).await;
    assert_eq!(p["pools"][0]["replicas"].as_array().unwrap().len(), 1);
    assert_eq!(p["pools"][0]["replicas"][0]["id"], "llama-r0");
    let (id, _) = s.submit(&llama_task("The capital of France is", 4)).await;
    assert_eq!(s.stream(&id, None).await.last().unwrap().event, "end");
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn cancel_of_a_running_task_leaves_the_engine_slot_idle() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_engine();
    let s = start(&llama_config(1, 2, 2, "")).await;
    let (id, _) = s.submit(&llama_task(LONG, 400)).await;
    wait_tokens(&s, &id, 3).await;
    let endpoint = pools(&s).await["pools"][0]["replicas"][0]["endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let slots = engine_slots(&s, &endpoint).await;
    assert!(
        slots
            .as_array()
            .unwrap()
            .iter()
            .any(|sl| sl["is_processing"] == true),
        "busy before cancel"
    );
    assert_eq!(s.cancel(&id).await, 204);
    let f = s.stream(&id, None).await;
    assert_eq!(f.last().unwrap().data["finish_reason"], "canceled");
    // orchestratord gives the slot back only once the engine confirmed it idle
    for _ in 0..200 {
        let p = pools(&s).await;
        if p["pools"][0]["slots_free"] == p["pools"][0]["slots_total"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let slots = engine_slots(&s, &endpoint).await;
    assert!(
        slots
            .as_array()
            .unwrap()
            .iter()
            .all(|sl| sl["is_processing"] == false),
        "llama-server slot idle once orchestratord freed it: {slots}"
    );
    s.assert_all_terminated().await;
}

#[tokio::test]
async fn a_sessions_next_turn_lands_on_the_same_replica_and_reuses_kv() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_engine();
    let s = start(&llama_config(2, 1, 1, "")).await;
    let sid = uuid::Uuid::new_v4().to_string();
    let mut prompt = String::from(
        "A long story about a lighthouse keeper named Ada who lived on a rocky island. ",
    );
    prompt.push_str(&"The sea was grey and the wind was cold. ".repeat(8));
    let mut replicas = Vec::new();
    let mut cached = Vec::new();
    for turn in 0..3 {
        let mut t = llama_task(&prompt, 8);
        t["session_id"] = json!(sid);
        let (id, _) = s.submit(&t).await;
        let f = s.stream(&id, None).await;
        let text: String = f
            .iter()
            .filter(|x| x.event == "token")
            .map(|x| x.data["t"].as_str().unwrap())
            .collect();
        replicas.push(f[0].data["replica_id"].as_str().unwrap().to_string());
        cached.push(
            f.last().unwrap().data["tokens_cached"]
                .as_u64()
                .unwrap_or(0),
        );
        prompt.push_str(&text);
        prompt.push_str(&format!(" Then, on day {turn}, "));
    }
    eprintln!("session replicas {replicas:?}, tokens_cached {cached:?}");
    assert!(replicas.iter().all(|r| r == &replicas[0]), "{replicas:?}");
    assert!(
        cached[1] > 50 && cached[2] > 50,
        "later turns reuse the KV cache: {cached:?}"
    );
    // spec §1 `kv_hint: cold` reaches the engine: the same conversation, on the same
    // replica, is computed again (llama-server reports no cached prompt tokens)
    let mut cold = llama_task(&prompt, 2);
    cold["session_id"] = json!(sid);
    cold["kv_hint"] = json!("cold");
    let (id, _) = s.submit(&cold).await;
    let f = s.stream(&id, None).await;
    assert_eq!(f[0].data["replica_id"], replicas[0].as_str(), "{f:?}");
    let end = f.last().unwrap();
    assert_eq!(end.event, "end", "{f:?}");
    assert_eq!(
        end.data["tokens_cached"].as_u64().unwrap_or(0),
        0,
        "{end:?}"
    );
    let info: Value = s.get_json(&format!("/v1/sessions/{sid}")).await;
    assert_eq!(info["turns"], 4);
    assert_eq!(info["replica_id"], replicas[0].as_str());
    s.assert_all_terminated().await;
}

/// llama-server closes each streamed connection; back-to-back tasks must never land on
/// a dead pooled connection (no retries allowed here, so one would fail the task).
#[tokio::test]
async fn back_to_back_tasks_on_one_replica_all_succeed() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_engine();
    let s = start(&llama_config(1, 1, 2, "retries_before_first_token = 0")).await;
    for k in 0..8 {
        let (id, _) = s
            .submit(&llama_task(
                &format!("Item {k}: the capital of France is"),
                3,
            ))
            .await;
        let f = s.stream(&id, None).await;
        assert_eq!(f.last().unwrap().event, "end", "task {k}: {f:?}");
    }
    s.assert_all_terminated().await;
    // the engine's KV cache holds the last prompt: its usage, read from llama-server's
    // /slots, shows in kv_cache_usage_ratio (republished every second)
    let t0 = Instant::now();
    let ratio = loop {
        let m = s.metrics().await;
        let v = m
            .lines()
            .find(|l| l.starts_with("kv_cache_usage_ratio{") && l.contains("engine=\"llamacpp\""))
            .and_then(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok());
        if let Some(v) = v.filter(|v| *v > 0.0) {
            break v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no kv_cache_usage_ratio > 0: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("kv_cache_usage_ratio after the last task: {ratio:.4}");
    assert!(ratio < 1.0, "{ratio}");
}

fn minute_in_words(m: u32) -> String {
    const ONES: [&str; 20] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
    ];
    const TENS: [&str; 6] = ["", "", "twenty", "thirty", "forty", "fifty"];
    match m {
        0..=19 => ONES[m as usize].to_string(),
        _ if m.is_multiple_of(10) => TENS[(m / 10) as usize].to_string(),
        _ => format!("{}-{}", TENS[(m / 10) as usize], ONES[(m % 10) as usize]),
    }
}

/// Plan stage 15: a real model, through OrchQueue v1 only, proves it generated the
/// fresh nonce it was given; metrics moved; `started` names the real engine and model.
#[tokio::test]
async fn haiku_gate_real_model_continues_a_fresh_count_through_orchqueue() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_engine();
    let t0 = Instant::now();
    let s = start_self_tested(&llama_config(1, 2, 2, "")).await;
    let ready = s.http.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(
        ready.status(),
        200,
        "self-tests passed and the pool is ready"
    );
    // an echo server cannot pass: the answer (n + 5) is not in the prompt
    let n = 10 + (uuid::Uuid::new_v4().as_u128() % 9_990) as u64;
    let prompt = format!("Counting: {n}, {}, {}, {}, {},", n + 1, n + 2, n + 3, n + 4);
    let before = tokens_out(&s.metrics().await);
    let (frames, text) = run_gate(&s, &prompt, 6).await;
    let started = &frames[0];
    assert_eq!(started.event, "started");
    assert_eq!(started.data["engine"], "llamacpp");
    let version = started.data["engine_version"].as_str().unwrap();
    assert!(
        version.starts_with('b') && !version.starts_with("b0-"),
        "real engine version: {version}"
    );
    assert_eq!(
        started.data["model"],
        format!("sha256:{}", orchestratord::engines::BUNDLED_MODEL_SHA256)
    );
    let first: String = text
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    assert_eq!(
        first,
        (n + 5).to_string(),
        "the model continued the count from {n}: {text:?}"
    );
    // and the haiku prompt, with the minute in words, transcript printed
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let minute = minute_in_words(((now / 60) % 60) as u32);
    let haiku = format!("A haiku written at {minute} minutes past the hour:\n");
    let (frames, text) = run_gate(&s, &haiku, 24).await;
    assert_eq!(frames.last().unwrap().event, "end");
    assert!(!text.trim().is_empty(), "the haiku has words");
    let after = tokens_out(&s.metrics().await);
    assert!(
        after > before,
        "tokens_out_total rose ({before} -> {after})"
    );
    let elapsed = t0.elapsed();
    eprintln!("haiku gate took {elapsed:?} (including engine start and self-tests)");
    assert!(elapsed < Duration::from_secs(60));
    s.assert_all_terminated().await;
}

/// Run one gate prompt at temperature 0; print and return its frames and text.
async fn run_gate(s: &TestServer, prompt: &str, max_tokens: u32) -> (Vec<SseFrame>, String) {
    let (id, _) = s.submit(&llama_task(prompt, max_tokens)).await;
    let frames = s.stream(&id, None).await;
    let text: String = frames
        .iter()
        .filter(|f| f.event == "token")
        .map(|f| f.data["t"].as_str().unwrap())
        .collect();
    eprintln!("---- haiku gate transcript ----\nprompt: {prompt}\noutput: {text}");
    for f in &frames {
        eprintln!("event: {} id: {} data: {}", f.event, f.id, f.data);
    }
    (frames, text)
}

fn tokens_out(metrics: &str) -> f64 {
    orchestratord::selftest::tokens_out_of(metrics, "llama")
}

/// Anti-cheat: no committed file holds a recorded llama.cpp transcript or model output
/// fixture that a test could replay instead of running the engine.
#[test]
fn anti_cheat_no_canned_engine_output_in_the_source() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::process::Command::new("git")
        .arg("ls-files")
        .current_dir(&root)
        .output()
        .unwrap();
    let files = String::from_utf8_lossy(&out.stdout);
    // needles are assembled at run time so this file does not match itself
    let recorded_engine = ["\"engine\":", "\"llamacpp\""].concat();
    let recorded_token = ["event:", " token"].concat();
    let canned = [["canned", "_haiku"].concat(), ["haiku", "_output"].concat()];
    let gates = [
        ["Count", "ing:"].concat(),
        ["minutes past", " the hour"].concat(),
        ["secret", " code"].concat(),
    ];
    let real_name = ["llama", "cpp"].concat();
    for f in files.lines() {
        let path = root.join(f);
        assert!(!f.ends_with(".gguf"), "model file committed: {f}");
        if f.ends_with(".md") {
            continue; // documentation shows real transcripts for readers
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let recorded = text.contains(&recorded_engine) && text.contains(&recorded_token);
        assert!(!recorded, "{f} holds a recorded llama.cpp stream");
        let lower = text.to_lowercase();
        assert!(
            !canned.iter().any(|c| lower.contains(c.as_str())),
            "{f} holds a canned haiku"
        );
        // product code (not tests) never sees the gates' prompts: a server that
        // recognised them could answer without the engine
        let product = ["crates/", "adapters/", "bin/"]
            .iter()
            .any(|p| f.starts_with(p))
            && f.contains("/src/");
        if product {
            for gate in &gates {
                assert!(
                    !text.contains(gate.as_str()),
                    "{f} mentions a gate prompt ({gate:?})"
                );
            }
        }
        // the mock names itself mock everywhere: it never poses as the real engine
        if f.starts_with("adapters/mock/src/") {
            assert!(
                !lower.contains(&real_name),
                "{f}: the mock names the real engine"
            );
        }
    }
}

/// The official `openai` SDK through the OpenAI door onto the real llama.cpp pool: the
/// chat template is the model's own, applied by llama-server (`/apply-template`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_drives_the_door_on_the_real_llama_pool() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_engine();
    let s = start(&format!(
        "{}{}",
        common::sdk::keys(),
        llama_config(1, 2, 2, "")
    ))
    .await;
    let base = s.base.clone();
    let r = tokio::task::spawn_blocking(move || common::sdk::run_sdk(&base, "gemma-3-270m"))
        .await
        .unwrap();
    eprintln!("SDK report (llama.cpp): {r}");
    common::sdk::assert_sdk_report(&r, "gemma-3-270m");
    // the template wraps the two short messages in the model's turn markers
    let words = "You repeat codes. The secret code is 4821. Repeat the secret code."
        .split_whitespace()
        .count() as u64;
    assert!(
        r["chat"]["usage"]["prompt_tokens"].as_u64().unwrap() > words,
        "the engine applied a template: {r}"
    );
}

/// An `openai` pool pointed at another llama-server's own `/v1` (a replica that a
/// second orchestratord runs), driven by the official SDK through the first one's door.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_drives_an_openai_pool_on_a_real_llama_servers_v1() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_engine();
    let engine_host = start(&keyless_engines(llama_config(1, 2, 2, ""))).await;
    let pools = pools(&engine_host).await;
    let endpoint = pools["pools"][0]["replicas"][0]["endpoint"]
        .as_str()
        .expect("replica endpoint")
        .to_string();
    let front = start(&format!(
        "{}\n[server]\nkeepalive_ms = 200\n[[pools]]\nid = \"up\"\nengine = \"openai\"\nmodel = \"gemma-3-270m\"\nreplicas = 1\nfirst_token_timeout_ms = 30000\n[pools.openai]\nurls = [\"{endpoint}\"]\nslots = 2\n",
        common::sdk::keys(),
    ))
    .await;
    let base = front.base.clone();
    let r = tokio::task::spawn_blocking(move || common::sdk::run_sdk(&base, "gemma-3-270m"))
        .await
        .unwrap();
    eprintln!("SDK report (openai pool → llama-server /v1): {r}");
    common::sdk::assert_sdk_report(&r, "gemma-3-270m");
    assert!(
        r["chat"]["usage"]["prompt_tokens"].as_u64().unwrap() > 13,
        "{r}"
    );
}

/// Spawn the orchestratord binary on `config`; returns the child and its base URL.
fn spawn_binary(config: &str, name: &str) -> (Reap, String) {
    let path = std::env::temp_dir().join(format!("orch-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, config).unwrap();
    spawn_binary_at(&path)
}

fn alive(pid: u32) -> bool {
    // a zombie has exited; only a running (or sleeping) process counts
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// `kill -9` of orchestratord takes its engines with it (parent-death signal), and a
/// later start stops an engine an earlier instance left behind (its pid file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_engine_survives_kill_9_of_orchestratord() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_engine();
    let (mut child, base) = spawn_binary(&llama_config(2, 1, 1, ""), "orphans");
    let pools: Value = reqwest::get(format!("{base}/v1/pools"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pids: Vec<u32> = pools["pools"][0]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["pid"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|p| alive(*p)));
    child.0.kill().unwrap(); // SIGKILL: no chance to clean up
    child.0.wait().unwrap();
    let t0 = Instant::now();
    while pids.iter().any(|p| alive(*p)) && t0.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left: Vec<_> = pids.iter().filter(|p| alive(**p)).collect();
    assert!(left.is_empty(), "engines outlived orchestratord: {left:?}");
    eprintln!("engines gone {} ms after kill -9", t0.elapsed().as_millis());

    // an engine an earlier instance left (its owner is gone; no parent-death signal)
    let stray = std::process::Command::new(orchestratord::engines::default_llama_server())
        .args([
            "--model",
            orchestratord::engines::default_model().to_str().unwrap(),
        ])
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--ctx-size",
            "256",
            "--threads",
            "1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let dead_owner = {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let id = c.id();
        c.wait().unwrap();
        id
    };
    let run = orchestratord::engines::pid_dir();
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join(format!("{dead_owner}-stray-r0.pid")),
        format!(
            "{} {dead_owner} {}\n",
            stray.id(),
            orchestratord::engines::default_llama_server().display()
        ),
    )
    .unwrap();
    assert!(alive(stray.id()));
    let (child, _) = spawn_binary(&llama_config(1, 1, 1, ""), "orphans2");
    let mut stray = stray;
    let t0 = Instant::now();
    let mut gone = false;
    while t0.elapsed() < Duration::from_secs(2) {
        if let Ok(Some(_)) = stray.try_wait() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stray.kill();
    drop(child);
    assert!(gone, "the stray engine was stopped at start");
}

/// A llama-server added to a pool by URL at runtime: its identity is read from the
/// engine (the model file it reports) and checked against the pool's pin. The same
/// model serves tasks; another model file (another digest) is refused with the
/// difference; removal drains it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_llama_server_added_at_runtime_serves_and_another_model_is_refused() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_engine();
    let front = start(&llama_config(1, 1, 1, "")).await;
    let host = start(&keyless_engines(llama_config(1, 1, 1, ""))).await;
    let endpoint = pools(&host).await["pools"][0]["replicas"][0]["endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let r = front
        .http
        .post(front.url("/v1/pools/llama/replicas"))
        .json(&json!({"url": endpoint}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    // one slot per replica, two tasks at once: one runs on the added replica
    let (a, _) = front.submit(&llama_task(LONG, 24)).await;
    let (b, _) = front.submit(&llama_task(LONG, 24)).await;
    let (fa, fb) = tokio::join!(front.stream(&a, None), front.stream(&b, None));
    let on: Vec<_> = [&fa, &fb]
        .iter()
        .map(|f| f[0].data["replica_id"].as_str().unwrap().to_string())
        .collect();
    assert!(on.contains(&"llama-x1".to_string()), "{on:?}");
    assert!(fa.last().unwrap().event == "end" && fb.last().unwrap().event == "end");

    // the same engine with another model file: refused, naming the digests
    let other = std::env::temp_dir().join(format!("orch-other-{}.gguf", std::process::id()));
    std::fs::copy(orchestratord::engines::default_model(), &other).unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&other)
            .unwrap();
        f.write_all(b"another model").unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut stray = std::process::Command::new(orchestratord::engines::default_llama_server())
        .args(["--model", other.to_str().unwrap(), "--host", "127.0.0.1"])
        .args([
            "--port",
            &port.to_string(),
            "--ctx-size",
            "1024",
            "--threads",
            "1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let t0 = Instant::now();
    while reqwest::get(format!("{url}/health"))
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "stray engine not ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = front
        .http
        .post(front.url("/v1/pools/llama/replicas"))
        .json(&json!({"url": url}))
        .send()
        .await
        .unwrap();
    let v = envelope(r, 409, "CONFLICT").await;
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("model_digest"),
        "the difference is named: {msg}"
    );
    let _ = stray.kill();
    let _ = stray.wait();
    let _ = std::fs::remove_file(&other);
    let mut sidecar = other.into_os_string();
    sidecar.push(".sha256");
    let _ = std::fs::remove_file(sidecar);

    // removal drains: a task running on the added replica still ends normally
    let (a, _) = front.submit(&llama_task(LONG, 24)).await;
    let (b, _) = front.submit(&llama_task(LONG, 24)).await;
    wait_tokens(&front, &a, 1).await;
    wait_tokens(&front, &b, 1).await;
    let r = front
        .http
        .delete(front.url("/v1/pools/llama/replicas/llama-x1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    for id in [&a, &b] {
        let f = front.stream(id, None).await;
        assert_eq!(f.last().unwrap().event, "end", "{f:?}");
    }
    let t0 = Instant::now();
    while pools(&front).await["pools"][0]["replicas"]
        .as_array()
        .unwrap()
        .len()
        != 1
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "removed replica still listed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    front.assert_all_terminated().await;
}

/// Two real replicas, prefix placement (the default), no session id: a conversation's
/// second turn lands on the replica that served the first and reuses its KV cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversations_next_turn_lands_on_the_replica_holding_its_prefix() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_engine();
    let s = start(&llama_config(2, 1, 1, "")).await;
    let history: String = (0..25)
        .map(|i| format!("Entry {i}: the ledger lists crate {i} as delivered on time. "))
        .collect();
    let first = format!("{history}Question: which crate came first?");
    let (a, _) = s.submit(&llama_task(&first, 4)).await;
    let fa = s.stream(&a, None).await;
    let second = format!("{first} Answer: crate 0. Question: and the last?");
    let (b, _) = s.submit(&llama_task(&second, 4)).await;
    let fb = s.stream(&b, None).await;
    let replica = |f: &[SseFrame]| f[0].data["replica_id"].as_str().unwrap().to_string();
    assert_eq!(replica(&fa), replica(&fb), "{fa:?} {fb:?}");
    assert_eq!(fb[0].data["placement"], "prefix");
    let cached = fb.last().unwrap().data["tokens_cached"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        cached > 100,
        "the engine reused the history's KV: {cached} tokens cached"
    );
    eprintln!(
        "turn 1 ttft {} ms, turn 2 ttft {} ms, {cached} tokens cached",
        fa.last().unwrap().data["ttft_ms"],
        fb.last().unwrap().data["ttft_ms"]
    );
    s.assert_all_terminated().await;
}

/// A spawned engine listens on loopback only and answers only to the key
/// orchestratord gave it (in its environment, not on its command line): another
/// program on the machine cannot use it, and `extra_args` cannot rebind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_engine_answers_only_to_orchestratords_key_on_loopback() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_engine();
    let s = start(&llama_config(1, 1, 1, "")).await;
    let p = pools(&s).await;
    let replica = &p["pools"][0]["replicas"][0];
    let endpoint = replica["endpoint"].as_str().unwrap().to_string();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");
    let key = engine_key(&s, &endpoint).await;
    assert_eq!(key.len(), 64);
    let pid = replica["pid"].as_u64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(&key),
        "the key is not on the command line"
    );
    let body = json!({"prompt": "Hello", "n_predict": 2});
    let without = s
        .http
        .post(format!("{endpoint}/completion"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        without.status(),
        401,
        "before: 200 to anyone on the machine"
    );
    let wrong = s
        .http
        .post(format!("{endpoint}/completion"))
        .bearer_auth("not-the-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let with = s
        .http
        .post(format!("{endpoint}/completion"))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), 200);
    // orchestratord itself serves through it
    let (id, _) = s.submit(&llama_task("The capital of France is", 4)).await;
    assert_eq!(s.stream(&id, None).await.last().unwrap().event, "end");
    s.assert_all_terminated().await;
    // extra_args that would rebind the engine are refused by check-config
    let bad = temp_config(
        "rebind",
        &llama_config(1, 1, 1, "").replace(
            "[pools.llamacpp]\n",
            "[pools.llamacpp]\nextra_args = [\"--host\", \"0.0.0.0\"]\n",
        ),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orchestratord"))
        .env("ORCH_STATE_DIR", common::fresh_state_dir())
        .args(["check-config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("extra_args") && text.contains("--host"),
        "{text}"
    );
    let _ = std::fs::remove_file(bad);
}

/// An engine reached by URL must prove the pool's model with what it computes, not
/// with the file it names: an impostor that answers `/props` exactly like the pool's
/// engine (same model_path, build, context) but reports other model metadata and
/// tokenizes otherwise is refused, naming the fingerprint (before: its digest was that
/// of the named local file, so it passed the pin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_only_names_the_right_model_file_is_refused() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_engine();
    let front = start(&llama_config(1, 1, 1, "")).await;
    let endpoint = pools(&front).await["pools"][0]["replicas"][0]["endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let key = engine_key(&front, &endpoint).await;
    let get = |path: &str| {
        let (http, url, key) = (front.http.clone(), format!("{endpoint}{path}"), key.clone());
        async move {
            http.get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let props = get("/props").await;
    let mut models = get("/v1/models").await;
    assert!(props["model_path"].is_string());
    models["data"][0]["meta"]["n_params"] = json!(123);
    let impostor = axum::Router::new()
        .route(
            "/health",
            axum::routing::get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route(
            "/props",
            axum::routing::get(move || {
                let p = props.clone();
                async move { axum::Json(p) }
            }),
        )
        .route(
            "/v1/models",
            axum::routing::get(move || {
                let m = models.clone();
                async move { axum::Json(m) }
            }),
        )
        .route(
            "/tokenize",
            axum::routing::post(|| async { axum::Json(json!({"tokens": [1, 2, 3]})) }),
        )
        .route(
            "/slots",
            axum::routing::get(|| async { axum::Json(json!([])) }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, impostor).await });
    let r = front
        .http
        .post(front.url("/v1/pools/llama/replicas"))
        .json(&json!({"url": url}))
        .send()
        .await
        .unwrap();
    let v = envelope(r, 409, "CONFLICT").await;
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("model_fingerprint") && msg.contains("params=123"),
        "{msg}"
    );
    assert_eq!(
        pools(&front).await["pools"][0]["replicas"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "nothing added"
    );
}

/// Spec §1 / plan stage 6: `determinism: strict` on the real engine. The same task
/// (the same id, so the same derived seed; temperature forced to 0 over the request's
/// 1.0; its whole prompt computed, no cached prefix) gives identical text on two fresh
/// servers of a pool that trades throughput for determinism (`deterministic = true`,
/// one slot per replica, llama-server's `--no-cont-batching`), the second time
/// submitted right after another task (temperature 1.0) on the same replica.
#[tokio::test]
async fn strict_runs_of_the_same_task_give_identical_text_on_the_real_engine() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_engine();
    let id = uuid::Uuid::new_v4().to_string();
    let cfg =
        llama_config(1, 1, 2, "").replace("threads = 2\n", "threads = 2\ndeterministic = true\n");
    assert!(cfg.contains("deterministic = true"));
    let mut texts = Vec::new();
    for round in 0..2 {
        let s = start(&cfg).await;
        wait_ready(&s).await;
        let mut beside = None;
        if round == 1 {
            // submitted just before: in flight when the strict task arrives
            let mut other = llama_task("Tell a long story about the sea:", 64);
            other["temperature"] = json!(1.0);
            let (o, _) = s.submit(&other).await;
            beside = Some(o);
        }
        let mut t = llama_task("Write two sentences about a lighthouse keeper:", 24);
        t["task_id"] = json!(id);
        t["determinism"] = json!("strict");
        t["temperature"] = json!(1.0);
        let (tid, _) = s.submit(&t).await;
        let f = s.stream(&tid, None).await;
        assert_eq!(f.last().unwrap().event, "end", "{f:?}");
        let derived = tid.parse::<orch_domain::TaskId>().unwrap().derived_seed();
        let started = f.iter().find(|x| x.event == "started").expect("started");
        assert_eq!(started.data["seed"], json!(derived), "{started:?}");
        let text: String = f
            .iter()
            .filter(|x| x.event == "token")
            .map(|x| x.data["t"].as_str().unwrap())
            .collect();
        eprintln!("strict run {round}: {text:?}");
        texts.push(text);
        if let Some(o) = beside {
            // it ran on the same replica too, before the strict task (one slot: they
            // never share a batch; with two slots they did, and the text differed)
            let st = s.status(&o).await;
            assert!(st["tokens_out"].as_u64().unwrap_or(0) > 0, "{st}");
            s.cancel(&o).await;
        }
        s.assert_all_terminated().await;
    }
    assert!(!texts[0].trim().is_empty());
    assert_eq!(texts[0], texts[1], "strict runs of one task differ");
}
