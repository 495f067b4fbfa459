//! Keys and usage over real HTTP: keys made through the API work at once, expire and
//! are revoked at once; the usage ledger matches the tasks run, to the token, after
//! the server is killed with SIGKILL and restarted on its state directory; a budget
//! refuses the task that would cross it; a client sees only its own tenant's usage.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const ADMIN: &str = "oqk_accounts-admin";
const GLOBEX: &str = "oqk_accounts-globex";

fn keyed(extra: &str, mock: &str) -> String {
    format!(
        "{}{}{extra}{}",
        key_entry(ADMIN, "ops", "admin"),
        key_entry(GLOBEX, "globex", "client"),
        mock_config("", mock)
    )
}

async fn create_key(s: &TestServer, body: Value) -> Value {
    let r = s
        .http
        .post(s.url("/v1/admin/keys"))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers().get("cache-control").unwrap(),
        "no-store",
        "a response with a key is never cached"
    );
    r.json().await.unwrap()
}

async fn submit_as(s: &TestServer, key: &str, body: &Value) -> reqwest::Response {
    s.http
        .post(s.url("/v1/tasks"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Run a task to its end as `key`: its end frame's data.
async fn run_as(s: &TestServer, key: &str, prompt: &str, max_tokens: u32) -> Value {
    let r = submit_as(s, key, &task(prompt, max_tokens, "interactive")).await;
    assert_eq!(r.status(), 202);
    let a: Value = r.json().await.unwrap();
    let id = a["task_id"].as_str().unwrap();
    let text = get_as(s, key, &format!("/v1/tasks/{id}/stream"))
        .await
        .text()
        .await
        .unwrap();
    let frames = parse_sse(&text);
    let end = frames.last().expect("frames");
    assert_eq!(end.event, "end", "{text}");
    end.data.clone()
}

async fn get_as(s: &TestServer, key: &str, path: &str) -> reqwest::Response {
    s.http
        .get(s.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

async fn delete_as(s: &TestServer, key: &str, path: &str) -> reqwest::Response {
    s.http
        .delete(s.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

async fn usage(s: &TestServer, key: &str, query: &str) -> Value {
    let r = get_as(s, key, &format!("/v1/usage{query}")).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn a_created_key_works_at_once_its_expiry_ends_it_and_a_revoked_key_is_refused_next() {
    let s = start(&keyed(
        "",
        "slots = 2\ntokens = 3\ntokens_per_sec = 500.0\nttft_ms = 1",
    ))
    .await;
    let made = create_key(
        &s,
        json!({"tenant": "acme", "label": "friday demo", "ttl_s": 2, "priorities": ["interactive"]}),
    )
    .await;
    let key = made["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("oqk_"));
    assert_eq!(made["tenant"], "acme");
    assert_eq!(made["role"], "client");
    assert_eq!(made["source"], "api");
    // it works at once, as a client of its tenant with its limits
    run_as(&s, &key, "hello", 3).await;
    let caps = s.get_json_as("/v1/capabilities", &key).await;
    assert_eq!(caps["tenant"]["tenant"], "acme");
    let r = submit_as(&s, &key, &task("x", 1, "batch")).await;
    assert_eq!(r.status(), 403, "the key may not submit batch");
    let r = get_as(&s, &key, "/v1/pools").await;
    assert_eq!(r.status(), 403, "a client key on the control plane");
    // listed with its last use, never with the key
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let list = s.get_json_as("/v1/admin/keys", ADMIN).await;
    assert!(!list.to_string().contains(&key));
    let mine = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["fingerprint"] == made["fingerprint"])
        .expect("listed")
        .clone();
    assert_eq!(mine["label"], "friday demo");
    assert!(mine["last_used_at"].is_string(), "{mine}");
    assert!(list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["source"] == "config" && k["tenant"] == "globex"));
    // past its expiry it is refused like an unknown key
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = submit_as(&s, &key, &task("late", 1, "interactive")).await;
    envelope(r, 401, "UNAUTHENTICATED").await;

    // revoked: the next request is refused
    let other = create_key(&s, json!({"tenant": "acme"})).await;
    let k2 = other["key"].as_str().unwrap();
    assert_eq!(
        submit_as(&s, k2, &task("a", 1, "batch")).await.status(),
        202
    );
    let fp = other["fingerprint"].as_str().unwrap();
    let r = delete_as(&s, ADMIN, &format!("/v1/admin/keys/{fp}")).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["revoked_at"].is_string());
    let r = submit_as(&s, k2, &task("b", 1, "batch")).await;
    envelope(r, 401, "UNAUTHENTICATED").await;
    // a client key cannot make keys; a config key cannot be revoked here
    let r = s
        .http
        .post(s.url("/v1/admin/keys"))
        .bearer_auth(GLOBEX)
        .json(&json!({"tenant": "globex", "role": "admin"}))
        .send()
        .await
        .unwrap();
    envelope(r, 403, "FORBIDDEN").await;
    let cfg_fp = orch_services::auth::fingerprint(GLOBEX);
    let r = delete_as(&s, ADMIN, &format!("/v1/admin/keys/{cfg_fp}")).await;
    envelope(r, 409, "CONFLICT").await;
    assert_eq!(
        submit_as(&s, GLOBEX, &task("c", 1, "batch")).await.status(),
        202
    );
}

#[tokio::test]
async fn a_client_sees_only_its_tenants_usage_and_gets_csv_on_request() {
    let s = start(&keyed(
        "",
        "slots = 2\ntokens = 4\ntokens_per_sec = 500.0\nttft_ms = 1",
    ))
    .await;
    let acme = create_key(&s, json!({"tenant": "acme"})).await;
    let acme_key = acme["key"].as_str().unwrap();
    let mut want_out = 0;
    for i in 0..3 {
        let end = run_as(&s, acme_key, &format!("acme {i}"), 4).await;
        want_out += end["tokens_out"].as_u64().unwrap();
    }
    run_as(&s, GLOBEX, "globex", 4).await;
    let mine = usage(&s, acme_key, "?group_by=key").await;
    assert_eq!(mine["tenant"], "acme");
    let rows = mine["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{mine}");
    assert_eq!(rows[0]["group"], acme["fingerprint"]);
    assert_eq!(rows[0]["tasks"], 3);
    assert_eq!(rows[0]["tokens_out"], want_out);
    let r = get_as(&s, acme_key, "/v1/usage?tenant=globex").await;
    envelope(r, 403, "FORBIDDEN").await;
    let all = usage(&s, ADMIN, "?group_by=tenant").await;
    let tenants: Vec<&str> = all["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["group"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["acme", "globex"]);
    assert_eq!(all["total"]["tasks"], 4);
    let csv = s
        .http
        .get(s.url("/v1/usage?group_by=tenant"))
        .bearer_auth(ADMIN)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert!(csv.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let text = csv.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "tenant,tasks,tokens_in,tokens_out,tokens_cached,canceled,errors"
    );
    assert!(lines[1].starts_with("acme,3,"), "{text}");
    assert_eq!(lines.len(), 3);
}

#[tokio::test]
async fn a_budget_refuses_the_task_that_would_cross_it_and_capabilities_show_it() {
    // each task holds its prompt estimate plus max_tokens (10) of the day's 60 tokens
    let s = start(&keyed(
        "[tenants.globex]\ntokens_per_day = 60\n",
        "slots = 2\ntokens = 10\ntokens_per_sec = 500.0\nttft_ms = 1",
    ))
    .await;
    let mut spent = 0;
    let mut refused = None;
    for i in 0..20 {
        let r = submit_as(&s, GLOBEX, &task(&format!("t{i}"), 10, "interactive")).await;
        if r.status() == 429 {
            refused = Some(envelope(r, 429, "QUOTA_EXCEEDED").await);
            break;
        }
        assert_eq!(r.status(), 202);
        let a: Value = r.json().await.unwrap();
        let id = a["task_id"].as_str().unwrap();
        let frames = parse_sse(
            &s.http
                .get(s.url(&format!("/v1/tasks/{id}/stream")))
                .bearer_auth(GLOBEX)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
        let end = &frames.last().unwrap().data;
        spent += end["tokens_in"].as_u64().unwrap() + end["tokens_out"].as_u64().unwrap();
    }
    let e = refused.expect("the budget refused a task");
    assert_eq!(e["policy_label"], "quota-budget");
    assert!(e["message"].as_str().unwrap().contains("resets at"), "{e}");
    assert!(e["retry_after_ms"].as_u64().unwrap() <= 86_400_000);
    assert!(spent <= 60, "never over the budget: {spent}");
    // the refused task would have crossed it: what was spent plus its most
    let need = 10 + 1; // max_tokens + the prompt's estimate (2 bytes: 1 token)
    assert!(spent + need > 60, "refused although it fit: spent {spent}");
    let caps = s.get_json_as("/v1/capabilities", GLOBEX).await;
    let b = &caps["tenant"]["budget"];
    assert_eq!(caps["tenant"]["quotas"]["tokens_per_day"], 60);
    assert_eq!(b["used_today"], spent, "{caps}");
    assert!(b["day_resets_at"].as_str().unwrap().ends_with("T00:00:00Z"));
    // the ledger says the same
    let u = usage(&s, ADMIN, "?tenant=globex").await;
    assert_eq!(
        u["total"]["tokens_in"].as_u64().unwrap() + u["total"]["tokens_out"].as_u64().unwrap(),
        spent
    );
}

#[tokio::test]
async fn the_ledger_and_keys_survive_kill_9_and_a_restart_to_the_token() {
    let cfg = temp_config(
        "ledger",
        &keyed(
            "",
            "slots = 2\ntokens = 7\ntokens_per_sec = 50.0\nttft_ms = 1",
        ),
    );
    let state = fresh_state_dir();
    let env = [("ORCH_STATE_DIR", state.as_str())];
    let (mut proc, base, _) = spawn_binary_logged(&cfg, &env);
    let s = TestServer::at(&base);
    let made = create_key(&s, json!({"tenant": "acme"})).await;
    let key = made["key"].as_str().unwrap().to_string();
    let (mut tin, mut tout) = (0u64, 0u64);
    for i in 0..12 {
        let k = if i % 3 == 0 { GLOBEX } else { key.as_str() };
        let end = run_as(&s, k, &format!("prompt number {i}"), 7).await;
        tin += end["tokens_in"].as_u64().unwrap();
        tout += end["tokens_out"].as_u64().unwrap();
    }
    // a task canceled after its first token counts too, its prompt by the estimate
    // (16 bytes: 4 tokens; the engine reported no count)
    let r = submit_as(&s, &key, &task("cancel me please", 7, "interactive")).await;
    let id = r.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut live = get_as(&s, &key, &format!("/v1/tasks/{id}/stream")).await;
    let mut seen = String::new();
    while !seen.contains("event: token") {
        let chunk = live.chunk().await.unwrap().expect("a token before the end");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(live);
    let cancel = s
        .http
        .post(s.url(&format!("/v1/tasks/{id}/cancel")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert!(cancel.status().is_success());
    let frames = parse_sse(
        &s.http
            .get(s.url(&format!("/v1/tasks/{id}/stream")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    let last = frames.last().unwrap();
    assert_eq!(last.data["finish_reason"], "canceled", "{:?}", last.data);
    tin += 4;
    tout += last.data["tokens_out"].as_u64().unwrap_or(0);
    // the ledger is written at least every second: wait that, then SIGKILL
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = proc.0.id() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let _ = proc.0.wait();
    let (_proc2, base2, _) = spawn_binary_logged(&cfg, &env);
    let s2 = TestServer::at(&base2);
    let u = usage(&s2, ADMIN, "?group_by=tenant").await;
    assert_eq!(u["total"]["tasks"], 13, "{u}");
    assert_eq!(u["total"]["tokens_in"], tin, "{u}");
    assert_eq!(u["total"]["tokens_out"], tout, "{u}");
    assert_eq!(u["total"]["canceled"], 1, "{u}");
    let acme = &u["rows"][0];
    assert_eq!(
        (acme["group"].as_str(), acme["tasks"].as_u64()),
        (Some("acme"), Some(9))
    );
    // the key made before the kill still works, and is still listed
    assert_eq!(
        submit_as(&s2, &key, &task("again", 1, "batch"))
            .await
            .status(),
        202
    );
    let list = s2.get_json_as("/v1/admin/keys", ADMIN).await;
    assert!(list
        .to_string()
        .contains(made["fingerprint"].as_str().unwrap()));
    // a second server on the same state directory is refused at start
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orchestratord"))
        .env("ORCH_STATE_DIR", &state)
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
            "--skip-self-test",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another orchestratord"), "{err}");
}

#[tokio::test]
async fn on_an_open_server_a_made_key_names_its_tenant_and_keeps_its_role() {
    let s = start(&mock_config(
        "",
        "slots = 2\ntokens = 2\ntokens_per_sec = 500.0\nttft_ms = 1",
    ))
    .await;
    let r = s
        .http
        .post(s.url("/v1/admin/keys"))
        .json(&json!({"tenant": "acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let made: Value = r.json().await.unwrap();
    let key = made["key"].as_str().unwrap();
    let caps = s.get_json_as("/v1/capabilities", key).await;
    assert_eq!(caps["tenant"]["tenant"], "acme");
    assert_eq!(caps["tenant"]["role"], "client");
    let r = get_as(&s, key, "/v1/pools").await;
    envelope(r, 403, "FORBIDDEN").await;
    // without a key it is the open server it was
    let r = s.http.get(s.url("/v1/pools")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // a revoked key is refused, not quietly the open caller
    let fp = made["fingerprint"].as_str().unwrap();
    let r = s
        .http
        .delete(s.url(&format!("/v1/admin/keys/{fp}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = get_as(&s, key, "/v1/capabilities").await;
    envelope(r, 401, "UNAUTHENTICATED").await;
}

#[tokio::test]
async fn a_key_limited_to_some_pools_makes_only_keys_within_them() {
    let scoped_admin = "oqk_accounts-scoped-admin";
    let entry = format!(
        "{}pools = [\"mockpool\"]\n",
        key_entry(scoped_admin, "ops", "admin")
    );
    let s = start(&keyed(&entry, "slots = 1\ntokens = 1\nttft_ms = 1")).await;
    let post = |body: Value| {
        s.http
            .post(s.url("/v1/admin/keys"))
            .bearer_auth(scoped_admin)
            .json(&body)
            .send()
    };
    let r = post(json!({"tenant": "acme", "role": "admin"}))
        .await
        .unwrap();
    envelope(r, 403, "FORBIDDEN").await;
    let r = post(json!({"tenant": "acme", "pools": ["mockpool", "other"]}))
        .await
        .unwrap();
    envelope(r, 403, "FORBIDDEN").await;
    let r = post(json!({"tenant": "acme", "pools": ["mockpool"]}))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}
