//! The `orch` binary against a real orchestratord on an ephemeral loopback port (mock
//! pools): submit and follow with the live queue position, JSON output, status,
//! cancel, the control plane, keys, and exit codes by error class.

use std::process::{Command, Output};
use std::time::Duration;

const ADMIN: &str = "oqk_cli-admin";
const CLIENT: &str = "oqk_cli-client";

async fn server(pool_extra: &str, mock: &str, keys: bool) -> orchestratord::Server {
    let key = |k: &str, t: &str, r: &str| {
        format!(
            "[[auth.keys]]\nsha256 = \"{}\"\ntenant = \"{t}\"\nrole = \"{r}\"\n",
            orch_services_digest(k)
        )
    };
    let auth = if keys {
        format!(
            "{}{}",
            key(ADMIN, "ops", "admin"),
            key(CLIENT, "cli", "client")
        )
    } else {
        String::new()
    };
    let toml = format!(
        "{auth}[server]\nkeepalive_ms = 200\n[[pools]]\nid = \"p\"\nengine = \"mock\"\nmodel = \"mock-model\"\nmetrics_frame_interval_ms = 100\n{pool_extra}\n[pools.mock]\n{mock}\n"
    );
    let cfg = orchestratord::Config::parse(&toml)
        .unwrap()
        .with_temp_state();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let opts = orchestratord::StartOptions {
        skip_self_test: true,
    };
    orchestratord::start_with(cfg, l, None, opts).await.unwrap()
}

fn orch_services_digest(k: &str) -> String {
    orch_services::auth::digest_hex(k)
}

async fn orch(url: &str, key: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_orch"));
    c.env("ORCH_URL", url).env_remove("ORCH_API_KEY").args(args);
    if let Some(k) = key {
        c.env("ORCH_API_KEY", k);
    }
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_follows_a_task_from_its_queue_position_to_its_last_token() {
    let s = server(
        "",
        "slots = 1\ntokens_per_sec = 20.0\nttft_ms = 2\ntokens = 8",
        false,
    )
    .await;
    let url = format!("http://{}", s.addr);
    // hold the only slot for ~0.4 s
    let o = orch(
        &url,
        None,
        &[
            "submit",
            "--model",
            "mock-model",
            "--max-tokens",
            "8",
            "hold",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = orch(
        &url,
        None,
        &[
            "submit",
            "--model",
            "mock-model",
            "--max-tokens",
            "4",
            "--seed",
            "7",
            "--stream",
            "hi",
        ],
    )
    .await;
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("queued: position 1"),
        "live queue position: {err}"
    );
    assert!(err.contains("started on p-r0"), "{err}");
    assert!(err.contains("end: "), "{err}");
    assert_eq!(
        out.split_whitespace().count(),
        4,
        "four tokens on stdout: {out:?}"
    );
    // --json: the 202, then status and cancel by id
    let o = orch(
        &url,
        None,
        &[
            "--json",
            "submit",
            "--model",
            "mock-model",
            "--max-tokens",
            "8",
            "x",
        ],
    )
    .await;
    let adm: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = adm["task_id"].as_str().unwrap().to_string();
    let o = orch(&url, None, &["--json", "status", &id]).await;
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["task_id"], id);
    assert!(orch(&url, None, &["cancel", &id]).await.status.success());
    // exit codes: unknown task 4, invalid request 2
    let unknown = uuid_like();
    assert_eq!(
        orch(&url, None, &["status", &unknown]).await.status.code(),
        Some(4)
    );
    assert_eq!(
        orch(&url, None, &["submit", "--model", "nope", "x"])
            .await
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        orch(&url, None, &["status", "not-a-uuid"])
            .await
            .status
            .code(),
        Some(2)
    );
    s.shutdown().await;
}

fn uuid_like() -> String {
    "5f2b7c1e-0a41-4f0e-8d3b-5c6a7e8f9a10".into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_roles_backpressure_and_an_absent_server_have_their_exit_codes() {
    let s = server(
        "queue_capacity = 1",
        "slots = 1\ntokens_per_sec = 5.0\nttft_ms = 2\ntokens = 40",
        true,
    )
    .await;
    let url = format!("http://{}", s.addr);
    assert_eq!(
        orch(&url, None, &["capabilities"]).await.status.code(),
        Some(3)
    );
    let o = orch(&url, Some(CLIENT), &["capabilities"]).await;
    assert!(
        text(&o.stdout).contains("tenant cli (client)"),
        "{}",
        text(&o.stdout)
    );
    assert_eq!(
        orch(&url, Some(CLIENT), &["pools"]).await.status.code(),
        Some(3)
    );
    let o = orch(&url, Some(ADMIN), &["pools"]).await;
    assert!(
        text(&o.stdout).starts_with("p mock mock-model"),
        "{}",
        text(&o.stdout)
    );
    // fill the slot and the one queue place: the next submit is backpressure (5)
    for _ in 0..2 {
        let o = orch(
            &url,
            Some(CLIENT),
            &["submit", "--model", "mock-model", "--max-tokens", "40", "x"],
        )
        .await;
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    let o = orch(
        &url,
        Some(CLIENT),
        &["submit", "--model", "mock-model", "x"],
    )
    .await;
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("retry in"), "{}", text(&o.stderr));
    let o = orch(&url, Some(ADMIN), &["drain", "p", "--deadline-ms", "100"]).await;
    assert!(
        text(&o.stdout).contains("p draining"),
        "{}",
        text(&o.stdout)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.shutdown().await;
    assert_eq!(
        orch("http://127.0.0.1:9", None, &["pools"])
            .await
            .status
            .code(),
        Some(7)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_made_listed_and_revoked_and_usage_reads_the_ledger() {
    let s = server(
        "",
        "slots = 2\ntokens_per_sec = 500.0\nttft_ms = 1\ntokens = 5",
        true,
    )
    .await;
    let url = format!("http://{}", s.addr);
    let o = orch(
        &url,
        Some(ADMIN),
        &[
            "keys", "create", "--tenant", "acme", "--label", "team a", "--ttl-s", "3600",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let key = text(&o.stdout).trim().to_string();
    assert!(key.starts_with("oqk_"), "{key}");
    let fp = text(&o.stderr)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(fp.starts_with("key:"), "{}", text(&o.stderr));
    // the new key submits at once
    let o = orch(
        &url,
        Some(&key),
        &[
            "submit",
            "--model",
            "mock-model",
            "--max-tokens",
            "5",
            "--stream",
            "hi",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = orch(&url, Some(ADMIN), &["keys", "list"]).await;
    let list = text(&o.stdout);
    assert!(list.contains(&fp) && list.contains("(team a)"), "{list}");
    assert!(!list.contains(&key));
    // a client key reads its own usage; CSV on request
    let o = orch(
        &url,
        Some(&key),
        &["usage", "--group-by", "tenant", "--csv"],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let csv = text(&o.stdout);
    assert!(
        csv.lines().nth(1).is_some_and(|l| l.starts_with("acme,1,")),
        "{csv}"
    );
    let o = orch(&url, Some(&key), &["usage"]).await;
    assert!(text(&o.stdout).contains("acme"), "{}", text(&o.stdout));
    // revoked: the key is refused next (exit 3)
    let o = orch(&url, Some(ADMIN), &["keys", "revoke", &fp]).await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        orch(&url, Some(&key), &["capabilities"])
            .await
            .status
            .code(),
        Some(3)
    );
    // a client key cannot make keys
    assert_eq!(
        orch(&url, Some(CLIENT), &["keys", "create", "--tenant", "x"])
            .await
            .status
            .code(),
        Some(3)
    );
    s.shutdown().await;
}
