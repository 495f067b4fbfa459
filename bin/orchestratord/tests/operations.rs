//! Operating a running server, over real processes and HTTP (mock pools): SIGHUP and
//! `POST /v1/admin/reload-config` apply a new quota, queue limit and replica count with
//! streams in flight (none dropped), a broken file is refused with its problems while
//! the old configuration keeps serving, shrinking drains first; replicas are added by
//! URL at runtime, serve, and are removed after draining; one of another engine version
//! is refused by the pool's pin (409 naming both).

mod common;
use common::*;
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

const ADMIN: &str = "oqk_ops-admin";
const CLIENT: &str = "oqk_ops-client";

use common::key_entry as key;

fn config(max_queued: u32, replicas: u32, queue_capacity: u32, weight: u32) -> String {
    format!(
        "{}{}\n[server]\nkeepalive_ms = 200\n\n[tenants.t]\nweight = {weight}\nmax_queued = {max_queued}\n\n[[pools]]\nid = \"p\"\nengine = \"mock\"\nmodel = \"mock-model\"\nreplicas = {replicas}\nqueue_capacity = {queue_capacity}\n[pools.mock]\nslots = 2\ntokens_per_sec = 20.0\nttft_ms = 2\ntokens = 30\n",
        key(ADMIN, "ops", "admin"),
        key(CLIENT, "t", "client"),
    )
}

async fn get(http: &reqwest::Client, base: &str, key: &str, path: &str) -> Value {
    http.get(format!("{base}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Submit a task as the client (admitted before this returns) and read its stream to
/// the end in the background.
async fn stream_task(
    http: &reqwest::Client,
    base: &str,
    max_tokens: u32,
) -> tokio::task::JoinHandle<Vec<SseFrame>> {
    let (http, base) = (http.clone(), base.to_string());
    let r = http
        .post(format!("{base}/v1/tasks"))
        .bearer_auth(CLIENT)
        .json(&task("in flight", max_tokens, "interactive"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let id = r.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::spawn(async move {
        let text = http
            .get(format!("{base}/v1/tasks/{id}/stream"))
            .bearer_auth(CLIENT)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        parse_sse(&text)
    })
}

/// `n` tasks in flight: each admitted before the next is submitted.
async fn stream_tasks(
    http: &reqwest::Client,
    base: &str,
    n: usize,
    max_tokens: u32,
) -> Vec<tokio::task::JoinHandle<Vec<SseFrame>>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(stream_task(http, base, max_tokens).await);
    }
    out
}

async fn replica_ids(http: &reqwest::Client, base: &str) -> Vec<String> {
    let v = get(http, base, ADMIN, "/v1/pools").await;
    v["pools"][0]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

async fn wait_replicas(http: &reqwest::Client, base: &str, n: usize) -> Vec<String> {
    let t0 = Instant::now();
    loop {
        let ids = replica_ids(http, base).await;
        if ids.len() == n {
            return ids;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "replicas {ids:?}, want {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn hup(child: &Reap) {
    let st = Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_quotas_limits_and_replicas_without_dropping_a_stream() {
    let dir = std::env::temp_dir().join(format!("orch-ops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("orchestratord.toml");
    std::fs::write(&path, config(8, 1, 64, 1)).unwrap();
    let (child, base) = spawn_binary_at(&path);
    let http = reqwest::Client::new();
    let caps = get(&http, &base, CLIENT, "/v1/capabilities").await;
    assert_eq!(caps["tenant"]["quotas"]["max_queued"], 8);
    // four streams in flight (2 slots: two run, two wait)
    let streams = stream_tasks(&http, &base, 4, 30).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&path, config(3, 2, 16, 5)).unwrap();
    hup(&child);
    let ids = wait_replicas(&http, &base, 2).await;
    assert_eq!(ids, ["p-r0", "p-r1"]);
    let caps = get(&http, &base, CLIENT, "/v1/capabilities").await;
    assert_eq!(caps["tenant"]["quotas"]["max_queued"], 3, "{caps}");
    assert_eq!(caps["tenant"]["weight"], 5);
    assert_eq!(caps["engines"][0]["queue"]["capacity"], 16);
    for s in streams {
        let frames = s.await.unwrap();
        assert_eq!(
            frames.last().unwrap().event,
            "end",
            "no stream dropped: {frames:?}"
        );
        assert_eq!(frames.last().unwrap().data["tokens_out"], 30);
    }

    // a broken file is refused with its problems; the running configuration stays
    std::fs::write(&path, config(1, 1, 0, 0)).unwrap();
    hup(&child);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = http
        .post(format!("{base}/v1/admin/reload-config"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let v = envelope(r, 409, "CONFLICT").await;
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("pools[0].queue_capacity") && msg.contains("tenants.t.weight"),
        "{msg}"
    );
    let caps = get(&http, &base, CLIENT, "/v1/capabilities").await;
    assert_eq!(
        caps["tenant"]["quotas"]["max_queued"], 3,
        "old config still applies"
    );
    assert_eq!(replica_ids(&http, &base).await.len(), 2);
    // a client key may not reload
    let r = http
        .post(format!("{base}/v1/admin/reload-config"))
        .bearer_auth(CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // shrinking drains first: tasks running on the removed replica finish normally
    let streams = stream_tasks(&http, &base, 4, 30).await;
    let t0 = Instant::now();
    loop {
        let pools = get(&http, &base, ADMIN, "/v1/pools").await;
        let busy_r1 = pools["pools"][0]["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == "p-r1")
            .map(|r| r["slots_total"].as_u64().unwrap() - r["slots_free"].as_u64().unwrap())
            .unwrap();
        if busy_r1 > 0 {
            break; // a task runs on the replica that will go
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "nothing ran on p-r1: {pools}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(&path, config(3, 1, 16, 5)).unwrap();
    let t0 = Instant::now();
    let r = http
        .post(format!("{base}/v1/admin/reload-config"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    assert!(
        report["applied"].to_string().contains("replicas 2 → 1"),
        "{report}"
    );
    eprintln!(
        "shrink returned after {} ms (drained first)",
        t0.elapsed().as_millis()
    );
    for s in streams {
        let frames = s.await.unwrap();
        assert_eq!(frames.last().unwrap().event, "end", "{frames:?}");
    }
    assert_eq!(wait_replicas(&http, &base, 1).await, ["p-r0"]);
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_added_by_url_serve_and_are_removed_after_draining() {
    // two OpenAI-compatible upstreams (orchestratord's own door over mock pools)
    let up = mock_config(
        "",
        "slots = 1\ntokens_per_sec = 20.0\nttft_ms = 2\ntokens = 20",
    );
    let (a, b) = (start(&up).await, start(&up).await);
    let front = start(&format!(
        "{}\n[[pools]]\nid = \"up\"\nengine = \"openai\"\nmodel = \"mock-model\"\nreplicas = 1\n[pools.openai]\nurls = [\"{}\"]\nslots = 1\n",
        key(ADMIN, "ops", "admin"),
        a.base
    ))
    .await;
    let http = reqwest::Client::new();
    let r = http
        .post(front.url("/v1/pools/up/replicas"))
        .bearer_auth(ADMIN)
        .json(&json!({"url": b.base}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let added: Value = r.json().await.unwrap();
    assert_eq!(added["replica_id"], "up-x1");
    let list = get(&http, &front.base, ADMIN, "/v1/pools/up/replicas").await;
    assert_eq!(list["replicas"].as_array().unwrap().len(), 2, "{list}");
    // two tasks at once: one slot each, so one runs on the added replica
    let run = |http: reqwest::Client, base: String| async move {
        let r = http
            .post(format!("{base}/v1/tasks"))
            .bearer_auth(ADMIN)
            .json(&task("x", 20, "interactive"))
            .send()
            .await
            .unwrap();
        let id = r.json::<Value>().await.unwrap()["task_id"]
            .as_str()
            .unwrap()
            .to_string();
        let text = http
            .get(format!("{base}/v1/tasks/{id}/stream"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        parse_sse(&text)
    };
    let (f1, f2) = tokio::join!(
        run(http.clone(), front.base.clone()),
        run(http.clone(), front.base.clone())
    );
    let replicas: Vec<_> = [&f1, &f2]
        .iter()
        .map(|f| f[0].data["replica_id"].as_str().unwrap().to_string())
        .collect();
    assert!(replicas.contains(&"up-x1".to_string()), "{replicas:?}");
    assert!(f1.last().unwrap().event == "end" && f2.last().unwrap().event == "end");
    // removal drains first: a task running on it ends normally, then it is gone
    let running = tokio::spawn(run(http.clone(), front.base.clone()));
    let hold = tokio::spawn(run(http.clone(), front.base.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = http
        .delete(front.url("/v1/pools/up/replicas/up-x1"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    for h in [running, hold] {
        let f = h.await.unwrap();
        assert_eq!(f.last().unwrap().event, "end", "{f:?}");
    }
    let t0 = Instant::now();
    loop {
        let list = get(&http, &front.base, ADMIN, "/v1/pools/up/replicas").await;
        if list["replicas"].as_array().unwrap().len() == 1 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "{list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // a URL with nothing behind it is refused and nothing is added
    let r = http
        .post(front.url("/v1/pools/up/replicas"))
        .bearer_auth(ADMIN)
        .json(&json!({"url": "ftp://x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// A fake OpenAI-compatible upstream that lists `mock-model`, owned by `version`
/// (the openai adapter's engine version when the config names none).
async fn fake_upstream(version: &'static str) -> String {
    let app = axum::Router::new().route(
        "/v1/models",
        axum::routing::get(move || async move {
            axum::Json(json!({"object": "list", "data": [
                {"id": "mock-model", "object": "model", "owned_by": version}
            ]}))
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_another_engine_version_is_refused_by_the_pools_pin() {
    let (one, two) = (
        fake_upstream("vendor-1.0").await,
        fake_upstream("vendor-2.0").await,
    );
    let front = start(&format!(
        "{}\n[[pools]]\nid = \"up\"\nengine = \"openai\"\nmodel = \"mock-model\"\nreplicas = 1\n[pools.openai]\nurls = [\"{one}\"]\nslots = 1\n",
        key(ADMIN, "ops", "admin"),
    ))
    .await;
    let http = reqwest::Client::new();
    let pools = get(&http, &front.base, ADMIN, "/v1/pools").await;
    assert_eq!(pools["pools"][0]["engine_version"], "vendor-1.0", "{pools}");
    let r = http
        .post(front.url("/v1/pools/up/replicas"))
        .bearer_auth(ADMIN)
        .json(&json!({"url": two}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "CONFLICT");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("vendor-2.0") && msg.contains("vendor-1.0"),
        "{msg}"
    );
    let list = get(&http, &front.base, ADMIN, "/v1/pools/up/replicas").await;
    assert_eq!(
        list["replicas"].as_array().unwrap().len(),
        1,
        "nothing added: {list}"
    );
}

/// An upstream that lists `mock-model` and fails every generation with a body that
/// carries details a client must not see.
async fn failing_upstream() -> String {
    let fail = || async {
        (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "upstream internals: account acct-SECRET-42, shard 7",
        )
    };
    let app = axum::Router::new()
        .route(
            "/v1/models",
            axum::routing::get(|| async {
                axum::Json(json!({"object": "list", "data": [
                    {"id": "mock-model", "object": "model", "owned_by": "vendor"}
                ]}))
            }),
        )
        .route("/v1/completions", axum::routing::post(fail))
        .route("/v1/chat/completions", axum::routing::post(fail));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}")
}

/// A failing upstream's address and answer are logged, not returned: the client's
/// error frame names the failure's kind only (before: "engine reset: /v1/completions:
/// HTTP 500 …: upstream internals: account acct-SECRET-42 …").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_details_are_logged_not_returned() {
    let up = failing_upstream().await;
    let port = up.rsplit(':').next().unwrap().to_string();
    let front = start(&format!(
        "{}\n[[pools]]\nid = \"up\"\nengine = \"openai\"\nmodel = \"mock-model\"\nreplicas = 1\nretries_before_first_token = 0\n[pools.openai]\nurls = [\"{up}\"]\nslots = 1\n",
        key(ADMIN, "ops", "admin"),
    ))
    .await;
    let http = reqwest::Client::new();
    let r = http
        .post(front.url("/v1/tasks"))
        .bearer_auth(ADMIN)
        .json(&task("hi", 4, "interactive"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let text = http
        .get(front.url(&format!("/v1/tasks/{id}/stream")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let frames = parse_sse(&text);
    let last = frames.last().unwrap();
    assert_eq!(last.event, "error", "{text}");
    let msg = last.data["message"].as_str().unwrap();
    assert!(!msg.contains("SECRET") && !msg.contains("shard"), "{msg}");
    assert!(!msg.contains(&port) && !msg.contains("127.0.0.1"), "{msg}");
    assert!(msg.contains("engine"), "{msg}");
    // the OpenAI door says no more
    let r = http
        .post(front.url("/v1/completions"))
        .bearer_auth(ADMIN)
        .json(&json!({"model": "mock-model", "prompt": "hi", "max_tokens": 4}))
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    assert!(!body.contains("SECRET") && !body.contains(&port), "{body}");
}

/// An upstream that lists `mock-model` and records the `Authorization` headers sent
/// to it.
async fn recording_upstream() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/v1/models",
        axum::routing::get(move |h: axum::http::HeaderMap| {
            let s = s.clone();
            async move {
                if let Some(v) = h.get("authorization") {
                    s.lock().unwrap().push(v.to_str().unwrap_or("").to_string());
                }
                axum::Json(json!({"object": "list", "data": [
                    {"id": "mock-model", "object": "model", "owned_by": "vendor"}
                ]}))
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}"), seen)
}

/// An `openai` pool's provider key goes only to the origins its config names: adding a
/// replica by a URL elsewhere is refused before anything is sent there (before: the
/// key went to whatever URL the admin chose).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_key_is_sent_only_to_configured_hosts() {
    let (configured, to_configured) = recording_upstream().await;
    let (elsewhere, to_elsewhere) = recording_upstream().await;
    let path = temp_config(
        "provider-key",
        &format!(
            "{}\n[[pools]]\nid = \"up\"\nengine = \"openai\"\nmodel = \"mock-model\"\nreplicas = 1\n[pools.openai]\nurls = [\"{configured}\"]\napi_key_env = \"ORCH_TEST_PROVIDER_KEY\"\nslots = 1\n",
            key(ADMIN, "ops", "admin"),
        ),
    );
    let (_child, base, _) =
        spawn_binary_logged(&path, &[("ORCH_TEST_PROVIDER_KEY", "sk-provider-secret")]);
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/v1/pools/up/replicas"))
        .bearer_auth(ADMIN)
        .json(&json!({"url": elsewhere}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["message"].as_str().unwrap().contains("provider key"),
        "{v}"
    );
    assert!(
        to_elsewhere.lock().unwrap().is_empty(),
        "nothing reached the other host"
    );
    // the configured host got the key, and another replica there is accepted
    assert!(to_configured
        .lock()
        .unwrap()
        .iter()
        .any(|a| a == "Bearer sk-provider-secret"));
    let r = http
        .post(format!("{base}/v1/pools/up/replicas"))
        .bearer_auth(ADMIN)
        .json(&json!({"url": format!("{configured}/")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let _ = std::fs::remove_file(path);
}
