//! The usage ledger's cost, side by side in one run: the same orchestratord binary,
//! keys, quotas and weighted fair queuing, with the accounts (ledger, budgets' counters,
//! keys API) on and off (`[server] accounts = false`), under `admission`'s closed loop
//! of 32 clients (every task runs and ends, so every one is recorded); rounds rotate
//! which server goes first. Then the database's size after 1M tasks: the real
//! `Accounts` flusher over the real SQLite store, fed a month of tasks spread over
//! tenants, keys, pools and hours.

use super::admission::{round, tenancy_toml, CLIENTS};
use super::{client, thousands, Server};
use crate::stats::p50_p99;
use orch_domain::accounts::UsageCounts;
use orch_services::accounts::{calendar, AccountStore, UsageKey, UsageQuery};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROUNDS: usize = 6;

fn config(accounts: bool) -> String {
    format!(
        "{}\n[server]\nkeepalive_ms = 15000\nmax_connections = 50000\nmax_unauthenticated_per_peer = 0\naccounts = {accounts}\n[[pools]]\nid = \"bench\"\nengine = \"mock\"\nmodel = \"mock-model\"\nqueue_capacity = 4096\nfairness = \"weighted\"\n[pools.mock]\nslots = 256\ntokens_per_sec = 0.0\nttft_ms = 0\ntokens = 1\n",
        tenancy_toml()
    )
}

pub async fn run() {
    println!(
        "== ledger: admission with the usage ledger on vs off, {CLIENTS} clients, closed loop =="
    );
    let servers = [
        Server::orchestratord_config("ledger on", &config(true)),
        Server::orchestratord_config("ledger off", &config(false)),
    ];
    let h = client(CLIENTS * 2);
    for s in &servers {
        round(&h, &s.base, true).await; // warm-up
    }
    println!();
    println!("| round | ledger on: admissions/s | ledger off | **on / off** |");
    println!("|---|---|---|---|");
    let mut rates = [0.0f64; 2];
    let mut lats: [Vec<Duration>; 2] = Default::default();
    for r in 0..ROUNDS {
        let mut got: [(f64, Vec<Duration>); 2] = Default::default();
        for j in 0..2 {
            let k = (r + j) % 2;
            got[k] = round(&h, &servers[k].base, true).await;
        }
        println!(
            "| {} | {} | {} | **{:.3}** |",
            r + 1,
            thousands(got[0].0 as u64),
            thousands(got[1].0 as u64),
            got[0].0 / got[1].0
        );
        for k in 0..2 {
            rates[k] += got[k].0 / ROUNDS as f64;
            lats[k].append(&mut got[k].1);
        }
    }
    println!(
        "| mean | {} | {} | **{:.3}** |",
        thousands(rates[0] as u64),
        thousands(rates[1] as u64),
        rates[0] / rates[1]
    );
    let q: Vec<(f64, f64)> = lats.iter().map(|l| p50_p99(l)).collect();
    println!("\n| POST /v1/tasks latency, all rounds | ledger on | ledger off |");
    println!("|---|---|---|");
    println!("| p50 | {:.3} ms | {:.3} ms |", q[0].0, q[1].0);
    println!("| p99 | {:.3} ms | {:.3} ms |", q[0].1, q[1].1);
    println!("\nTarget: on / off >= 0.97, p99 not worse beyond noise.\n");
    drop(servers);
    size_after_a_million().await;
}

/// 1M tasks through the real flusher into a fresh database: its size and the time the
/// writes took.
async fn size_after_a_million() {
    const TASKS: u64 = 1_000_000;
    const TENANTS: u64 = 50;
    const KEYS_PER_TENANT: u64 = 4;
    const POOLS: u64 = 2;
    const HOURS: u64 = 30 * 24;
    let dir = std::env::temp_dir().join(format!("orch-bench-ledger-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(orch_store::SqliteStore::open(&dir).expect("open the store"));
    let accounts =
        orch_services::Accounts::open(store.clone() as Arc<dyn AccountStore>).expect("accounts");
    let start_hour = calendar::hour_start(calendar::now_ms()) - HOURS * 3_600_000;
    let t0 = Instant::now();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..TASKS {
        // xorshift: a spread with no pattern the database could exploit
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let tenant = x % TENANTS;
        let key = UsageKey {
            hour_ms: start_hour + (i * HOURS / TASKS) * 3_600_000,
            tenant: format!("tenant-{tenant:02}").into(),
            key: format!("key:{:08x}", tenant * 16 + (x >> 8) % KEYS_PER_TENANT).into(),
            pool: format!("pool-{}", (x >> 16) % POOLS).into(),
            model: "gemma-3-270m".into(),
        };
        let mut c = UsageCounts {
            tasks: 1,
            tokens_in: 200 + (x >> 20) % 800,
            tokens_out: 1 + (x >> 30) % 256,
            tokens_cached: (x >> 40) % 200,
            canceled: u64::from((x >> 50).is_multiple_of(50)),
            ..UsageCounts::default()
        };
        if (x >> 52).is_multiple_of(100) {
            c.errors.insert("WORKER_RESET".into(), 1);
        }
        accounts.record(key, c);
        if i % 100_000 == 99_999 {
            // what a second of heavy traffic leaves the flusher, then its write
            accounts.flush().await.expect("flush");
        }
    }
    accounts.flush().await.expect("flush");
    let took = t0.elapsed();
    let report = accounts
        .report(UsageQuery {
            from_ms: start_hour,
            to_ms: start_hour + (HOURS + 1) * 3_600_000,
            tenant: None,
            group_by: orch_domain::accounts::UsageGroupBy::Tenant,
        })
        .await
        .expect("report");
    assert_eq!(report.total.tasks, TASKS, "every task is in the ledger");
    let q0 = Instant::now();
    let _ = accounts
        .report(UsageQuery {
            from_ms: start_hour,
            to_ms: start_hour + (HOURS + 1) * 3_600_000,
            tenant: Some("tenant-07".into()),
            group_by: orch_domain::accounts::UsageGroupBy::Key,
        })
        .await
        .expect("report");
    let one_tenant = q0.elapsed();
    drop(accounts);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let db = size(store.path());
    let wal = size(&store.path().with_extension("db-wal"));
    println!(
        "| 1M tasks: {TENANTS} tenants x {KEYS_PER_TENANT} keys x {POOLS} pools x {HOURS} hours | value |"
    );
    println!("|---|---|");
    println!("| database file | {:.1} MiB |", db as f64 / 1048576.0);
    println!("| write-ahead log | {:.1} MiB |", wal as f64 / 1048576.0);
    println!(
        "| recording + writing 1M tasks | {:.2} s |",
        took.as_secs_f64()
    );
    println!(
        "| one tenant's month by key (report) | {:.1} ms |",
        one_tenant.as_secs_f64() * 1000.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
