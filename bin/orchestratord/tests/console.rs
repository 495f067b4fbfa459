//! The operator console in a real browser: Debian's headless Chromium, driven over
//! WebDriver (chromedriver; plain HTTP, no Node), against a running server with a
//! mock pool under load. The page's numbers equal the API's; a drain and a cancel
//! made through the page take effect; a client key's page shows its own tenant's
//! tasks and none of another's; screenshots at desktop and phone widths are saved
//! (`target/console/`, or `$ORCH_CONSOLE_SCREENSHOTS`).
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (scripts/provision.sh
//! installs them); without them it fails, unless `ORCH_SKIP_BROWSER=1` says
//! explicitly that this run skips it.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const ADMIN: &str = "oqk_console-admin";
const ALICE: &str = "oqk_console-alice";
const BOB: &str = "oqk_console-bob";
const CHROMIUM: &str = "/usr/bin/chromium";
const DRIVER: &str = "/usr/bin/chromedriver";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    http: reqwest::Client,
    base: String,
    session: String,
    _proc: Reap,
}

impl Driver {
    async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let proc = Reap(
            std::process::Command::new(DRIVER)
                .arg(format!("--port={port}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("chromedriver starts"),
        );
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let t0 = Instant::now();
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "chromedriver did not answer"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = std::env::temp_dir().join(format!("orch-console-chromium-{port}"));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                format!("--user-data-dir={}", profile.display()),
                "--window-size=1280,800"]}}}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_string();
        Driver {
            http,
            base,
            session,
            _proc: proc,
        }
    }

    async fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let rb = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let v: Value = rb.send().await.unwrap().json().await.unwrap();
        assert!(v["value"]["error"].is_null(), "{method} {path}: {v}");
        v["value"].clone()
    }

    async fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .cmd(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v[ELEMENT].as_str().unwrap().to_string()
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.cmd("POST", &format!("/element/{e}/click"), json!({}))
            .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd("POST", &format!("/element/{e}/clear"), json!({}))
            .await;
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            json!({"text": text}),
        )
        .await;
    }

    /// Wait until `script` returns true.
    async fn until(&self, script: &str, what: &str) {
        let t0 = Instant::now();
        while self.js(script).await != json!(true) {
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "the page never showed {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, name: &str) {
        let b64 = self.cmd("GET", "/screenshot", json!({})).await;
        let png = base64_decode(b64.as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = std::env::var("ORCH_CONSOLE_SCREENSHOTS").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/console").to_string()
        });
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(format!("{dir}/{name}.png"), png).unwrap();
    }

    async fn sign_in(&self, url: &str, key: &str) {
        self.cmd("POST", "/url", json!({"url": url})).await;
        self.js("sessionStorage.clear(); return true").await;
        self.cmd("POST", "/url", json!({"url": url})).await;
        self.until(
            "return !document.getElementById('key-form').hidden",
            "the key form",
        )
        .await;
        self.type_into("#key-input", key).await;
        self.click("#key-submit").await;
        self.until(
            "return !document.getElementById('app').hidden && document.querySelectorAll('#tasks tbody tr').length > 0",
            "its tasks",
        )
        .await;
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => 0,
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let n = chunk.iter().take_while(|c| **c != b'=').count();
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= val(*c) << (18 - 6 * i as u32);
        }
        let bytes = [(acc >> 16) as u8, (acc >> 8) as u8, acc as u8];
        out.extend_from_slice(&bytes[..n.saturating_sub(1)]);
    }
    out
}

async fn submit(s: &TestServer, key: &str, prompt: &str) -> String {
    let r = s
        .http
        .post(s.url("/v1/tasks"))
        .bearer_auth(key)
        .json(&task(prompt, 400, "interactive"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_apis_numbers_drains_and_cancels_and_keeps_tenants_apart() {
    if !(std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(DRIVER).exists()) {
        if std::env::var("ORCH_SKIP_BROWSER").as_deref() == Ok("1") {
            eprintln!("SKIPPED: no {CHROMIUM} / {DRIVER} and ORCH_SKIP_BROWSER=1");
            return;
        }
        panic!("{CHROMIUM} and {DRIVER} are needed: run scripts/provision.sh (or set ORCH_SKIP_BROWSER=1 to skip this test, visibly)");
    }
    let cfg = format!(
        "{}{}{}{}",
        key_entry(ADMIN, "ops", "admin"),
        key_entry(ALICE, "alice", "client"),
        key_entry(BOB, "bob", "client"),
        mock_config(
            "queue_capacity = 16",
            "slots = 2\ntokens_per_sec = 4.0\nttft_ms = 5\ntokens = 400"
        )
    );
    let s = start(&cfg).await;
    // under load: two running, three queued
    let a1 = submit(&s, ALICE, "alice one").await;
    let a2 = submit(&s, ALICE, "alice two").await;
    let b1 = submit(&s, BOB, "bob one").await;
    let b2 = submit(&s, BOB, "bob two").await;
    let a3 = submit(&s, ALICE, "alice three").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let d = Driver::start().await;
    let url = s.url("/console");
    d.sign_in(&url, ADMIN).await;
    // the numbers shown are the API's
    let pools = s.get_json_as("/v1/pools", ADMIN).await;
    let p = &pools["pools"][0];
    let want_queue = format!("{} / {}", p["queue_depth"], p["queue_capacity"]);
    let want_slots = format!(
        "{} / {}",
        p["slots_total"].as_u64().unwrap() - p["slots_free"].as_u64().unwrap(),
        p["slots_total"]
    );
    d.until(
        &format!("return document.querySelector('tr[data-pool=mockpool] [data-k=queue]').textContent === '{want_queue}'"),
        "the API's queue depth",
    )
    .await;
    d.until(
        &format!("return document.querySelector('tr[data-pool=mockpool] [data-k=slots]').textContent === '{want_slots}'"),
        "the API's busy slots",
    )
    .await;
    let shown: Vec<String> = serde_json::from_value(
        d.js("return [...document.querySelectorAll('#tasks tbody tr')].map(r => r.dataset.task)")
            .await,
    )
    .unwrap();
    let mut all = vec![a1.clone(), a2.clone(), a3.clone(), b1.clone(), b2.clone()];
    all.sort();
    let mut got = shown.clone();
    got.sort();
    assert_eq!(got, all, "every live task is listed");
    for id in &all {
        let st = s.get_json_as(&format!("/v1/tasks/{id}"), ADMIN).await;
        let state = d
            .js(&format!("return document.querySelector('tr[data-task=\"{id}\"] [data-k=state]').textContent"))
            .await;
        assert_eq!(state, st["state"], "task {id}");
    }
    d.until(
        "return document.querySelector('#now-tps').textContent !== '–'",
        "a tokens/s figure",
    )
    .await;
    d.screenshot("console-desktop").await;
    d.cmd("POST", "/window/rect", json!({"width": 390, "height": 844}))
        .await;
    d.screenshot("console-narrow").await;
    d.cmd(
        "POST",
        "/window/rect",
        json!({"width": 1280, "height": 800}),
    )
    .await;

    // cancel bob's queued task through the page, with its confirmation
    d.click(&format!("button[data-cancel=\"{b2}\"]")).await;
    d.until(
        "return !document.getElementById('confirm').hidden",
        "the confirmation",
    )
    .await;
    d.click("#confirm-yes").await;
    d.until(
        "return document.getElementById('result').dataset.status === '204'",
        "the cancel's answer",
    )
    .await;
    let t0 = Instant::now();
    while s.get_json_as(&format!("/v1/tasks/{b2}"), ADMIN).await["state"] != "canceled" {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the cancel took effect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // drain the pool through the page
    d.type_into("#drain-deadline", "200").await;
    d.click("#f-drain button[type=submit]").await;
    d.until(
        "return !document.getElementById('confirm').hidden",
        "the confirmation",
    )
    .await;
    d.click("#confirm-yes").await;
    d.until(
        "return document.getElementById('result').dataset.status === '202'",
        "the drain's answer",
    )
    .await;
    let h = s.get_json_as("/v1/pools/mockpool/health", ADMIN).await;
    assert_eq!(h["draining"], true, "{h}");
    d.until(
        "return document.querySelector('tr[data-pool=mockpool] [data-k=state]').textContent === 'draining'",
        "the pool draining",
    )
    .await;

    // alice's page: her tasks only, and no replica endpoints
    let s2 = start(&cfg).await;
    let mine = submit(&s2, ALICE, "alice's").await;
    let theirs = submit(&s2, BOB, "bob's").await;
    d.sign_in(&s2.url("/console"), ALICE).await;
    let html = d.js("return document.body.innerHTML").await;
    let html = html.as_str().unwrap();
    assert!(html.contains(&mine), "alice sees her task");
    assert!(!html.contains(&theirs), "alice does not see bob's task");
    assert!(!html.contains(">bob<"), "nor bob's tenant");
    let forms = d
        .js("return [...document.querySelectorAll('form.admin')].every(f => f.hidden)")
        .await;
    assert_eq!(forms, json!(true), "a client key gets no admin actions");
    // bob's task cannot be cancelled through alice's page either (the API says 404)
    d.type_into("#cancel-id", &theirs).await;
    d.click("#f-cancel button[type=submit]").await;
    d.click("#confirm-yes").await;
    d.until(
        "return document.getElementById('result').dataset.status === '404'",
        "the refusal",
    )
    .await;
    let st = s2.get_json_as(&format!("/v1/tasks/{theirs}"), ADMIN).await;
    assert_eq!(st["state"], "running", "{st}");
    d.cmd("DELETE", "", json!({})).await;
}

/// `GET /v1/console` over HTTP (no browser): a client key limited to one pool sees
/// its own tenant's tasks in that pool only, that pool only, no replica endpoints and
/// no server-wide series; an admin sees every task, pool and the series.
#[tokio::test]
async fn a_client_keys_snapshot_holds_its_tenant_and_pools_only() {
    let scoped = format!("{}pools = [\"a\"]\n", key_entry(ALICE, "alice", "client"));
    let pool = |id: &str| {
        format!("[[pools]]\nid = \"{id}\"\nengine = \"mock\"\nmodel = \"mock-model\"\n[pools.mock]\nslots = 2\ntokens_per_sec = 4.0\nttft_ms = 5\ntokens = 400\n")
    };
    let cfg = format!(
        "{}{}{}[server]\nkeepalive_ms = 200\n{}{}",
        key_entry(ADMIN, "ops", "admin"),
        scoped,
        key_entry(BOB, "bob", "client"),
        pool("a"),
        pool("b")
    );
    let s = start(&cfg).await;
    let pinned = |p: &str, prompt: &str| {
        let mut t = task(prompt, 400, "interactive");
        t["placement"] = json!({"pin_pool_id": p});
        t
    };
    let post = |key: &'static str, body: Value| {
        s.http
            .post(s.url("/v1/tasks"))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    let mine = post(ALICE, pinned("a", "alice in a")).await.unwrap();
    assert_eq!(mine.status(), 202);
    let mine = mine.json::<Value>().await.unwrap()["task_id"].clone();
    let theirs = post(BOB, pinned("b", "bob in b")).await.unwrap();
    assert_eq!(theirs.status(), 202);
    let also = post(BOB, pinned("a", "bob in a")).await.unwrap();
    assert_eq!(also.status(), 202);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let v = s.get_json_as("/v1/console", ALICE).await;
    assert_eq!(v["role"], "client");
    let ids: Vec<&Value> = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["task_id"])
        .collect();
    assert_eq!(ids, [&mine], "{v}");
    let pools: Vec<&str> = v["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(pools, ["a"]);
    assert!(v["pools"][0]["replicas"][0]["endpoint"].is_null(), "{v}");
    assert_eq!(v["series"], json!([]));
    let tenants: Vec<&str> = v["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["alice"]);
    let a = s.get_json_as("/v1/console", ADMIN).await;
    assert_eq!(a["tasks_total"], 3, "{a}");
    assert_eq!(a["pools"].as_array().unwrap().len(), 2);
    assert!(
        !a["series"].as_array().unwrap().is_empty(),
        "the admin sees the series"
    );
    assert!(a["pools"][0]["replicas"][0]["endpoint"].is_string());
}
