//! Cluster mode, end to end on one box: three clustered nats-servers (the official
//! 2.14.6, provisioned; `sync_interval: always`), three orchestratord binaries built with `--features cluster-tests`,
//! mock pools, real HTTP on loopback, and `kill -9`.
//!
//! Run: `cargo test -p orchestratord --features cluster-tests --test cluster`
//! (scripts/test.sh does). A missing nats-server fails.
#![cfg(feature = "cluster-tests")]

mod common;

use common::{lint, parse_sse, task, Reap, SseFrame};
use futures_util::StreamExt;
use orch_cluster::testing::Nats;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One scenario at a time: three nats-servers and three instances share two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LEASE_TTL_MS: u64 = 1500;

/// The environment variable the instances read the NATS password from.
const PASSWORD_ENV: &str = "ORCH_TEST_NATS_PASSWORD";

struct Instance {
    proc: Option<Reap>,
    base: String,
    log: Arc<Mutex<String>>,
}

struct Cluster {
    nats: Nats,
    inst: Vec<Instance>,
    http: reqwest::Client,
}

impl Cluster {
    /// Three instances `a`, `b`, `c` of one mock pool; `a` prefers to lead it, and
    /// `b` and `c` are standbys (`host_replicas = false`): only the leader's replicas
    /// serve, which the scenarios about a leader's own runs (failover, fencing, the
    /// queue's order, a client's instance dying) need to know where a task runs.
    async fn start(name: &str, pool_extra: &str, mock: &str) -> Self {
        let base = common::mock_config(pool_extra, mock);
        // a bids for the pool at once; b and c one lease TTL later
        let c = Self::start_with(name, |i| {
            let prefer = if i == 0 {
                r#"["mockpool"]"#
            } else {
                "[\"none\"]\nhost_replicas = false"
            };
            (base.clone(), prefer.to_string())
        })
        .await;
        c.wait_leader(0, Duration::from_secs(15)).await;
        c
    }

    /// Three instances; `config(i)` gives instance i's config (without `[cluster]`)
    /// and its `prefer_pools` list.
    async fn start_with(name: &str, config: impl Fn(usize) -> (String, String)) -> Self {
        let nats = Nats::start(name).await;
        let urls = nats.urls_toml();
        // TLS and a user on every server; the password reaches the instances through
        // their environment, as the README advises
        let security = nats.security_toml(PASSWORD_ENV);
        let mut inst = Vec::new();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            let (body, prefer) = config(i);
            // a scenario may set its own lease TTL among its cluster lines
            let ttl = if prefer.contains("lease_ttl_ms") {
                String::new()
            } else {
                format!("lease_ttl_ms = {LEASE_TTL_MS}\n")
            };
            let toml = format!(
                "{body}\n[cluster]\nurls = [{urls}]\ninstance_id = \"{id}\"\n{ttl}prefer_pools = {prefer}\n{security}"
            );
            let path = common::temp_config(&format!("cluster-{name}-{id}"), &toml);
            let (proc, base, log) = common::spawn_binary_logged(
                &path,
                &[(PASSWORD_ENV, orch_cluster::testing::PASSWORD)],
            );
            inst.push(Instance {
                proc: Some(proc),
                base,
                log,
            });
        }
        Cluster {
            nats,
            inst,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    fn leads(&self, i: usize) -> bool {
        self.inst[i]
            .log
            .lock()
            .unwrap()
            .contains("leading the pool")
    }

    /// The pools instance `i` has led (from its "leading the pool" lines).
    fn led_pools(&self, i: usize) -> Vec<String> {
        let log = self.inst[i].log.lock().unwrap();
        log.lines()
            .filter(|l| l.contains("\"leading the pool\""))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["pool_id"].as_str().map(str::to_string))
            .collect()
    }

    async fn wait_leader(&self, i: usize, limit: Duration) -> Duration {
        let t0 = Instant::now();
        while !self.leads(i) {
            assert!(
                t0.elapsed() < limit,
                "instance {i} did not lead within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        t0.elapsed()
    }

    fn url(&self, i: usize, path: &str) -> String {
        format!("{}{path}", self.inst[i].base)
    }

    async fn submit(&self, i: usize, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(i, "/v1/tasks"))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn admit(&self, i: usize, body: &Value) -> String {
        let r = self.submit(i, body).await;
        assert_eq!(r.status(), 202, "{:?}", r.text().await);
        let v: Value = r.json().await.unwrap();
        v["task_id"].as_str().unwrap().to_string()
    }

    /// The stream of `id` on instance `i`; a retriable 503 (the cluster cannot answer
    /// for a moment, as while a stream elects a leader) is retried, as a client would.
    async fn stream_response(&self, i: usize, id: &str, last: Option<u64>) -> reqwest::Response {
        let t0 = Instant::now();
        loop {
            let mut rb = self
                .http
                .get(self.url(i, &format!("/v1/tasks/{id}/stream")));
            if let Some(l) = last {
                rb = rb.header("Last-Event-ID", l.to_string());
            }
            let r = rb.send().await.unwrap();
            if r.status() == 503 && t0.elapsed() < Duration::from_secs(15) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            if r.status() != 200 {
                panic!(
                    "stream of {id} on instance {i}: {} {:?}",
                    r.status(),
                    r.text().await
                );
            }
            return r;
        }
    }

    /// A task's whole stream read through instance `i` (after `last`).
    async fn stream(&self, i: usize, id: &str, last: Option<u64>) -> Vec<SseFrame> {
        let r = self.stream_response(i, id, last).await;
        let text = tokio::time::timeout(Duration::from_secs(60), r.text())
            .await
            .expect("stream ends in time")
            .unwrap();
        parse_sse(&text)
    }

    /// `GET path` on instance `i`, decoded as JSON.
    async fn get_json(&self, i: usize, path: &str) -> Value {
        self.http
            .get(self.url(i, path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn status(&self, i: usize, id: &str) -> Value {
        self.get_json(i, &format!("/v1/tasks/{id}")).await
    }

    fn kill(&mut self, i: usize) {
        self.inst[i].proc.take();
    }

    /// Instance `i`'s `/metrics`, held to both lint files (standalone and cluster)
    /// and passed by promtool.
    async fn metrics(&self, i: usize) -> String {
        let text = self
            .http
            .get(self.url(i, "/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let (standalone, cluster) = (lint::standalone(), lint::cluster());
        lint::check(&text, &[&standalone, &cluster], "hello cluster");
        lint::promtool_clean(&text);
        text
    }

    /// Wait until instance `i`'s readiness is `want`, failing with `what` after
    /// `limit`; how long it took.
    async fn wait_ready(&self, i: usize, want: bool, limit: Duration, what: &str) -> Duration {
        let t0 = Instant::now();
        while self.ready(i).await != want {
            assert!(t0.elapsed() < limit, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        t0.elapsed()
    }

    /// `GET /readyz` on instance `i` is 200.
    async fn ready(&self, i: usize) -> bool {
        self.http
            .get(self.url(i, "/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    }
}

impl Drop for Cluster {
    /// A failed scenario shows what each instance logged (its last lines).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (n, inst) in self.inst.iter().enumerate() {
            let log = inst.log.lock().unwrap();
            let lines: Vec<_> = log.lines().filter(|l| !l.contains("/healthz")).collect();
            eprintln!("--- instance {n}: last {} lines", lines.len().min(60));
            for l in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{}", &l[..l.len().min(400)]);
            }
        }
    }
}

/// Frames of a response until `n` have come (the connection stays open).
async fn first_frames(r: reqwest::Response, n: usize) -> Vec<SseFrame> {
    let mut body = r.bytes_stream();
    let mut text = String::new();
    while parse_sse(&text).len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(20), body.next())
            .await
            .expect("frames in time")
            .expect("stream open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    parse_sse(&text)
}

fn frame_ids(frames: &[SseFrame]) -> Vec<u64> {
    frames.iter().map(|f| f.id).collect()
}

/// The `migrated` notes of a stream.
fn moves(frames: &[SseFrame]) -> Vec<Value> {
    frames
        .iter()
        .filter(|f| f.event == "metrics" && f.data["migrated"].is_object())
        .map(|f| f.data["migrated"].clone())
        .collect()
}

/// A whole stream: started once, `tokens` tokens with contiguous indices, `end` last,
/// frame ids without a gap or a repeat.
fn assert_whole(frames: &[SseFrame], tokens: usize) {
    assert_eq!(one_terminal(frames).event, "end", "{frames:?}");
    let idx: Vec<u64> = frames
        .iter()
        .filter(|f| f.event == "token")
        .map(|f| f.data["i"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, (0..tokens as u64).collect::<Vec<_>>(), "{frames:?}");
    assert_eq!(frames.iter().filter(|f| f.event == "started").count(), 1);
    assert_eq!(
        frame_ids(frames),
        (1..=frames.len() as u64).collect::<Vec<_>>()
    );
}

fn one_terminal(frames: &[SseFrame]) -> &SseFrame {
    let terminals: Vec<_> = frames
        .iter()
        .filter(|f| f.event == "end" || f.event == "error")
        .collect();
    assert_eq!(terminals.len(), 1, "exactly one terminal frame: {frames:?}");
    assert!(std::ptr::eq(terminals[0], frames.last().unwrap()));
    terminals[0]
}

#[tokio::test]
async fn any_instance_admits_serves_resumes_cancels_and_refuses_when_full() {
    let _one = ONE_AT_A_TIME.lock().await;
    let c = Cluster::start(
        "serve",
        "replicas = 1\nqueue_capacity = 2",
        "slots = 1\ntokens_per_sec = 50.0\ntokens = 100",
    )
    .await;
    // admitted on a non-leader, read on the other non-leader and on the leader
    let id = c.admit(1, &task("hello cluster", 12, "interactive")).await;
    let on_c = c.stream(2, &id, None).await;
    assert_eq!(on_c.first().unwrap().event, "started");
    assert_eq!(one_terminal(&on_c).event, "end");
    assert_eq!(on_c.iter().filter(|f| f.event == "token").count(), 12);
    assert_eq!(
        frame_ids(&on_c),
        (1..=on_c.len() as u64).collect::<Vec<_>>()
    );
    for i in [0, 1] {
        assert_eq!(
            c.stream(i, &id, None).await,
            on_c,
            "instance {i} serves the same frames"
        );
    }
    // resume after every id, on every instance: no gap, no duplicate
    for last in 0..on_c.len() as u64 {
        let i = last as usize % 3;
        let rest = c.stream(i, &id, Some(last)).await;
        assert_eq!(rest, on_c[last as usize..], "resume after {last} on {i}");
    }
    // status from any instance
    for i in 0..3 {
        let s = c.status(i, &id).await;
        assert_eq!(s["state"], "completed", "{s}");
        assert_eq!(s["tokens_out"], 12, "{s}");
    }
    // the same Idempotency-Key on two instances names one task, run once
    let keyed = |i: usize| {
        c.http
            .post(c.url(i, "/v1/tasks"))
            .header("Idempotency-Key", "cluster-order-1")
            .json(&task("keyed", 12, "interactive"))
            .send()
    };
    let k0: Value = keyed(0).await.unwrap().json().await.unwrap();
    let k2: Value = keyed(2).await.unwrap().json().await.unwrap();
    assert_eq!(k0["task_id"], k2["task_id"], "{k0} {k2}");
    let kid = k0["task_id"].as_str().unwrap();
    let kf = c.stream(1, kid, None).await;
    assert_eq!(
        kf.iter().filter(|f| f.event == "started").count(),
        1,
        "{kf:?}"
    );
    assert_eq!(one_terminal(&kf).event, "end");
    // a task id is unique in the cluster: reusing one admitted on another instance
    // (which this one has no record of) is 409
    let solo = c.admit(1, &task("solo", 4, "interactive")).await;
    let mut reuse = task("reuse", 4, "interactive");
    reuse["task_id"] = Value::String(solo);
    let r = c.submit(0, &reuse).await;
    common::envelope(r, 409, "CONFLICT").await;
    // a cancel on one instance stops a task admitted on another
    let long = c.admit(2, &task("long", 100, "batch")).await;
    let r = c.stream_response(0, &long, None).await;
    let seen = first_frames(r, 3).await;
    assert_eq!(seen[0].event, "started");
    // a task behind it, admitted on another instance once the leader's queue hint
    // has caught up, is told its place: the one slot is taken, so position 1
    tokio::time::sleep(Duration::from_millis(600)).await;
    let behind = c.submit(0, &task("behind", 4, "interactive")).await;
    assert_eq!(behind.status(), 202);
    let behind: Value = behind.json().await.unwrap();
    assert_eq!(behind["queue_position"], 1, "{behind}");
    assert!(
        behind["predicted_start_ms"].as_u64().unwrap() > 0,
        "{behind}"
    );
    // and its status on any instance says so: the leader answers where it waits
    let behind_id = behind["task_id"].as_str().unwrap();
    // (once the leader took it from the cluster's queue: a moment after the 202)
    for i in 0..3 {
        let t0 = Instant::now();
        let s = loop {
            let s = c.status(i, behind_id).await;
            if !s["queue_position"].is_null() || t0.elapsed() > Duration::from_secs(2) {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(s["state"], "queued", "{s}");
        assert_eq!(s["queue_position"], 1, "instance {i}: {s}");
    }
    // a running task's status on an instance with no record of it is live: its
    // tokens so far (the task-state bucket has it as it started, with none)
    let t0 = Instant::now();
    let s = loop {
        let s = c.status(1, &long).await;
        if s["tokens_out"].as_u64() >= Some(2) || t0.elapsed() > Duration::from_secs(2) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(s["state"], "running", "{s}");
    assert!(s["tokens_out"].as_u64().unwrap() >= 2, "{s}");
    let cancel = c
        .http
        .post(c.url(1, &format!("/v1/tasks/{long}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 204);
    let frames = c.stream(2, &long, None).await;
    let end = one_terminal(&frames);
    assert_eq!(end.event, "end");
    assert_eq!(end.data["finish_reason"], "canceled");
    let behind = c.stream(0, behind["task_id"].as_str().unwrap(), None).await;
    assert_eq!(one_terminal(&behind).event, "end");
    // full: the queue holds capacity 2 + 1 slot; more are refused with 429 (the
    // ended tasks leave the cluster's queue a moment after their end is stored: a
    // refusal before three were admitted is that moment, and the fill goes on)
    let mut admitted = Vec::new();
    let mut refused = None;
    let t0 = Instant::now();
    for n in 0..40 {
        let r = c.submit(n % 3, &task("fill", 100, "batch")).await;
        match r.status().as_u16() {
            202 => admitted.push(
                r.json::<Value>().await.unwrap()["task_id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            ),
            429 if admitted.len() < 3 && t0.elapsed() < Duration::from_secs(3) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            429 => {
                refused = Some(r.json::<Value>().await.unwrap());
                break;
            }
            s => panic!("submit into a full queue: {s} {:?}", r.text().await),
        }
    }
    let refused = refused.expect("a full cluster queue refuses");
    assert_eq!(refused["code"], "ADMISSION_REJECT", "{refused}");
    assert_eq!(refused["policy_label"], "reject", "{refused}");
    assert_eq!(admitted.len(), 3, "queue capacity + slots were admitted");
    for id in &admitted {
        let _ = c
            .http
            .post(c.url(0, &format!("/v1/tasks/{id}/cancel")))
            .send()
            .await
            .unwrap();
    }
    for id in &admitted {
        one_terminal(&c.stream(1, id, None).await);
    }
    // a cancel sent before the leader took the task: the leader, paused for 300 ms
    // (under half the lease TTL, so it keeps leading), takes it after the cancel's
    // message went by; its stored cancel flag (read as the task is taken) stops it
    let pid = c.inst[0].proc.as_ref().unwrap().0.id() as i32;
    let paused = Instant::now();
    // SAFETY: kill(2) on a child process this test started
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let early = c.admit(1, &task("early cancel", 50, "interactive")).await;
    let cancel = c
        .http
        .post(c.url(2, &format!("/v1/tasks/{early}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 204);
    tokio::time::sleep(Duration::from_millis(300).saturating_sub(paused.elapsed())).await;
    // SAFETY: as above
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let frames = c.stream(1, &early, None).await;
    let end = one_terminal(&frames);
    assert_eq!(end.event, "end", "{frames:?}");
    assert_eq!(end.data["finish_reason"], "canceled", "{frames:?}");
    let tokens = frames.iter().filter(|f| f.event == "token").count();
    assert!(tokens < 50, "{tokens} tokens after a cancel");
    assert!(c.leads(0) && !c.inst[0].log.lock().unwrap().contains("no longer leading"));
    // every instance's metrics hold to the lint files and show who leads, what the
    // stores took and what the leader took (store errors and leadership losses are
    // checked in the scenarios that make them)
    let texts = [c.metrics(0).await, c.metrics(1).await, c.metrics(2).await];
    let mp = [("pool_id", "mockpool")];
    for (i, t) in texts.iter().enumerate() {
        assert_eq!(lint::sum(t, "cluster_connected", &[]), 1.0, "{i}");
        assert_eq!(lint::sum(t, "cluster_quorum", &[]), 1.0, "{i}");
        let leads = if i == 0 { 1.0 } else { 0.0 };
        assert!(lint::has(t, "cluster_pool_leader", &mp), "{i}: {t}");
        assert_eq!(lint::sum(t, "cluster_pool_leader", &mp), leads, "{i}");
    }
    let acquired = [("pool_id", "mockpool"), ("change", "acquired")];
    assert_eq!(
        lint::sum(&texts[0], "cluster_leadership_changes_total", &acquired),
        1.0
    );
    assert!(lint::sum(&texts[0], "cluster_frame_store_ms_count", &mp) >= 1.0);
    let run = [("pool_id", "mockpool"), ("outcome", "run")];
    let taken = lint::sum(&texts[0], "cluster_tasks_taken_total", &run);
    assert!(taken >= 5.0, "tasks taken: {taken}");
    // the first task and a fill task were admitted on b
    assert!(lint::sum(&texts[1], "cluster_task_store_ms_count", &mp) >= 2.0);
}

#[tokio::test]
async fn a_dead_leader_is_replaced_within_the_lease_its_streamed_task_continues_and_the_queue_keeps_its_order(
) {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::start(
        "failover",
        "replicas = 1\nqueue_capacity = 8",
        "slots = 1\ntokens_per_sec = 20.0\ntokens = 40",
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(
            c.admit(1 + n % 2, &task(&format!("task {n}"), 40, "interactive"))
                .await,
        );
    }
    // the first is streaming on the leader (a); the others wait in the queue
    let seen = first_frames(c.stream_response(1, &ids[0], None).await, 3).await;
    assert_eq!(seen[1].event, "token");
    c.kill(0);
    let killed = Instant::now();
    let took = c.wait_leader_any(&[1, 2], Duration::from_secs(10)).await;
    let took_ms = killed.elapsed().as_millis();
    eprintln!("new leader after {took_ms} ms (lease TTL {LEASE_TTL_MS} ms; {took:?} of waiting)");
    // the lease expires at most a TTL after its last renewal, bidders try every TTL/6,
    // and the take-over makes a replicated (R3) consumer: 0.14–0.6 s on this box
    assert!(
        took_ms < u128::from(LEASE_TTL_MS) + 1500,
        "takeover took {took_ms} ms"
    );
    // the task that had streamed continues on the new leader from its tokens: every
    // token once, in order; no frame lost or doubled
    let first = c.stream(2, &ids[0], None).await;
    assert_whole(&first, 40);
    assert_eq!(moves(&first).len(), 1, "{first:?}");
    // the queued ones run on the new leader, in admission order
    let mut started = Vec::new();
    for id in &ids[1..] {
        let frames = c.stream(1, id, None).await;
        assert_eq!(one_terminal(&frames).event, "end", "{frames:?}");
        assert_eq!(frames.iter().filter(|f| f.event == "token").count(), 40);
        started.push(c.started_at(id).await);
    }
    eprintln!("queued tasks started in order: {started:?}");
    let mut sorted = started.clone();
    sorted.sort();
    assert_eq!(started, sorted, "queued tasks keep their order");
    // the new leader's metrics: it leads, it continued the streamed task, it ran the rest
    let new = (1..3).find(|i| c.leads(*i)).unwrap();
    let m = c.metrics(new).await;
    let mp = [("pool_id", "mockpool")];
    assert_eq!(lint::sum(&m, "cluster_pool_leader", &mp), 1.0, "{m}");
    let outcome = |o| lint::sum(&m, "cluster_tasks_taken_total", &[("outcome", o)]);
    assert_eq!(outcome("continue"), 1.0, "{m}");
    assert_eq!(outcome("worker_reset"), 0.0, "{m}");
    assert_eq!(outcome("run"), 3.0, "{m}");
    assert_eq!(lint::sum(&m, "tasks_migrated_total", &mp), 1.0, "{m}");
}

impl Cluster {
    async fn wait_leader_any(&self, among: &[usize], limit: Duration) -> Duration {
        let t0 = Instant::now();
        while !among.iter().any(|i| self.leads(*i)) {
            assert!(t0.elapsed() < limit, "no new leader within {limit:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        t0.elapsed()
    }

    /// The `task_id` of instance `i`'s last log line that says `what`, if any.
    fn logged_task_id(&self, i: usize, what: &str) -> Option<String> {
        let log = self.inst[i].log.lock().unwrap();
        log.lines()
            .rev()
            .filter(|l| l.contains(what))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|v| v["task_id"].as_str().map(String::from))
    }

    /// The order in which the leader started a task: its `started` frame's position
    /// in the leader's log (the lifecycle line "task started" comes in start order).
    async fn started_at(&self, id: &str) -> usize {
        for inst in &self.inst {
            let log = inst.log.lock().unwrap();
            let mut at = None;
            for (n, line) in log.lines().enumerate() {
                if line.contains("task started") && line.contains(id) {
                    at = Some(n);
                }
            }
            if let Some(n) = at {
                return n;
            }
        }
        panic!("no instance logged the start of {id}");
    }
}

#[tokio::test]
async fn a_client_whose_instance_dies_resumes_on_another_with_no_gap_or_duplicate() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::start(
        "resume",
        "replicas = 1",
        "slots = 2\ntokens_per_sec = 50.0\ntokens = 40",
    )
    .await;
    let id = c.admit(1, &task("resume me", 40, "interactive")).await;
    let seen = first_frames(c.stream_response(1, &id, None).await, 6).await;
    let last = seen.last().unwrap().id;
    c.kill(1);
    let rest = c.stream(2, &id, Some(last)).await;
    assert_eq!(rest.first().unwrap().id, last + 1, "no gap");
    let mut all = seen.clone();
    all.extend(rest);
    assert_eq!(frame_ids(&all), (1..=all.len() as u64).collect::<Vec<_>>());
    assert_eq!(one_terminal(&all).event, "end");
    assert_eq!(all.iter().filter(|f| f.event == "token").count(), 40);
    assert_eq!(
        all,
        c.stream(0, &id, None).await,
        "what the client pieced together is the task's stream"
    );
}

#[tokio::test]
async fn one_nats_server_down_loses_nothing_and_without_quorum_submits_get_503() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::start(
        "nats-down",
        "replicas = 1",
        "slots = 2\ntokens_per_sec = 20.0\ntokens = 60",
    )
    .await;
    c.nats.kill(2);
    let first = c
        .admit(1, &task("one server down", 10, "interactive"))
        .await;
    let frames = c.stream(2, &first, None).await;
    assert_eq!(one_terminal(&frames).event, "end");
    assert_eq!(frames.iter().filter(|f| f.event == "token").count(), 10);
    assert!(c.ready(1).await, "one server down: still ready");
    // a task streaming when quorum goes
    let long = c
        .admit(1, &task("through the outage", 60, "interactive"))
        .await;
    let seen = first_frames(c.stream_response(2, &long, None).await, 3).await;
    assert_eq!(seen[2].event, "token");
    // a second server down: no quorum, submits are refused with a retriable 503. The
    // first one's store may wait in the stream leader's log and land when quorum
    // returns: then it is withdrawn (it must not run)
    c.nats.kill(1);
    let t0 = Instant::now();
    let r = c.submit(1, &task("no quorum", 10, "interactive")).await;
    let waited = t0.elapsed();
    let v = common::envelope(r, 503, "POOL_UNAVAILABLE").await;
    assert_eq!(v["retriable"], true);
    eprintln!("503 without quorum after {waited:?}");
    // after store_retry_ms (10 s by default) of "no responders"
    assert!(waited < Duration::from_secs(12), "refused in {waited:?}");
    let m = c.metrics(1).await;
    let failed = [("pool_id", "mockpool"), ("what", "task")];
    assert!(
        lint::sum(&m, "cluster_store_errors_total", &failed) >= 1.0,
        "{m}"
    );
    // still connected (to the last server), but nothing it wrote was stored for
    // store_retry_ms plus an election's 10 s: unready (submits are refused already)
    let took = c
        .wait_ready(
            1,
            false,
            Duration::from_secs(15),
            "still ready without quorum",
        )
        .await;
    eprintln!("unready {took:?} after the 503 without quorum");
    // the gauges follow within a check (every second)
    let t0 = Instant::now();
    loop {
        let m = c.metrics(1).await;
        assert_eq!(lint::sum(&m, "cluster_connected", &[]), 1.0, "{m}");
        if lint::sum(&m, "cluster_quorum", &[]) == 0.0 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // quorum back (the surviving server kept its log: a whole-cluster crash while a
    // store waited without quorum can leave nats-server 2.9's replicas diverged, see
    // the README): ready again, submits are admitted and served again
    for i in 1..3 {
        c.nats.restart(i);
    }
    for i in 0..3 {
        c.nats.wait_healthy(i).await;
    }
    let took = c
        .wait_ready(1, true, Duration::from_secs(30), "not ready again")
        .await;
    eprintln!("ready again {took:?} after the servers were healthy");
    let t0 = Instant::now();
    let id = loop {
        let r = c
            .submit(1, &task("after recovery", 10, "interactive"))
            .await;
        if r.status() == 202 {
            break r.json::<Value>().await.unwrap()["task_id"]
                .as_str()
                .unwrap()
                .to_string();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no recovery in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "admitting again {:?} after the servers were healthy",
        t0.elapsed()
    );
    // the stream that paused ends once, with nothing lost or doubled
    let frames = c.stream(0, &long, None).await;
    let end = one_terminal(&frames);
    eprintln!(
        "the task caught by the outage ended with {} {}",
        end.event, end.data
    );
    assert_eq!(
        frame_ids(&frames),
        (1..=frames.len() as u64).collect::<Vec<_>>()
    );
    assert_eq!(&frames[..3], &seen[..]);
    let frames = c.stream(0, &id, None).await;
    assert_eq!(one_terminal(&frames).event, "end", "{frames:?}");
    // the refused task did not run. If its store went unanswered, the instance
    // withdrew it: never stored (404), or stored late and canceled when its leader took
    // it (or at once, if the leader took it before the withdrawal was stored)
    let withdrawn = c.logged_task_id(1, "withdrawing it");
    let outcome = match &withdrawn {
        None => "answered (nothing to withdraw)".to_string(),
        Some(refused) => {
            let t0 = Instant::now();
            loop {
                let r = c
                    .http
                    .get(c.url(2, &format!("/v1/tasks/{refused}")))
                    .send()
                    .await
                    .unwrap();
                if r.status() == 404 {
                    break "withdrawn, never stored".to_string();
                }
                let v: Value = r.json().await.unwrap();
                match v["state"].as_str() {
                    Some("canceled") => {
                        let frames = c.stream(2, refused, None).await;
                        assert_eq!(one_terminal(&frames).event, "end", "{frames:?}");
                        let tokens = frames.iter().filter(|f| f.event == "token").count();
                        assert!(tokens < 10, "{frames:?}");
                        break format!("stored late and withdrawn ({tokens} tokens)");
                    }
                    Some("queued" | "running") if t0.elapsed() < Duration::from_secs(15) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    _ => panic!("the refused task was not withdrawn: {v}"),
                }
            }
        }
    };
    // and no instance ran a task that was not admitted (the withdrawn one aside: it
    // may have been stopped at once)
    let admitted = [first.as_str(), long.as_str(), id.as_str()];
    for (n, inst) in c.inst.iter().enumerate() {
        let log = inst.log.lock().unwrap();
        for line in log.lines().filter(|l| l.contains("\"task started\"")) {
            assert!(
                admitted.iter().any(|a| line.contains(a))
                    || withdrawn
                        .as_ref()
                        .is_some_and(|w| line.contains(w.as_str())),
                "instance {n} ran a task that was not admitted: {line}"
            );
        }
    }
    eprintln!("the submit refused without quorum: {outcome}");
    // every server gone at once, from a ready state: unready at once (no connection)
    assert!(c.ready(1).await, "ready after the recovery");
    for i in 0..3 {
        c.nats.kill(i);
    }
    let took = c
        .wait_ready(1, false, Duration::from_secs(3), "still ready without NATS")
        .await;
    eprintln!("unready {took:?} after every nats-server died");
    let t0 = Instant::now();
    while lint::sum(&c.metrics(1).await, "cluster_connected", &[]) != 0.0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "still connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_task_running_before_its_first_token_is_run_again_by_the_new_leader() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::start(
        "rerun",
        "replicas = 1",
        "slots = 1\nttft_ms = 3000\ntokens_per_sec = 50.0\ntokens = 10",
    )
    .await;
    let id = c.admit(1, &task("caught early", 10, "interactive")).await;
    // running on the leader's engine (its slot is taken), no frame yet: `started`
    // comes with the first token, 3 s after the engine call
    let t0 = Instant::now();
    loop {
        let v = c.get_json(0, "/v1/pools").await;
        if v["pools"][0]["slots_free"] == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "never dispatched: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.kill(0);
    c.wait_leader_any(&[1, 2], Duration::from_secs(10)).await;
    let frames = c.stream(2, &id, None).await;
    assert_eq!(one_terminal(&frames).event, "end", "{frames:?}");
    assert_eq!(frames.iter().filter(|f| f.event == "token").count(), 10);
    assert_eq!(frames.iter().filter(|f| f.event == "started").count(), 1);
    assert_eq!(
        frame_ids(&frames),
        (1..=frames.len() as u64).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_paused_leader_is_replaced_and_stores_nothing_when_it_wakes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let c = Cluster::start(
        "paused",
        "replicas = 1",
        "slots = 1\ntokens_per_sec = 20.0\ntokens = 60",
    )
    .await;
    let id = c.admit(1, &task("paused leader", 60, "interactive")).await;
    let seen = first_frames(c.stream_response(2, &id, None).await, 3).await;
    assert_eq!(seen[2].event, "token");
    let pid = c.inst[0].proc.as_ref().unwrap().0.id() as i32;
    // SAFETY: kill(2) on a child process this test started
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    c.wait_leader_any(&[1, 2], Duration::from_secs(10)).await;
    // the new leader continued the task it found streamed
    let frames = c.stream(2, &id, None).await;
    assert_whole(&frames, 60);
    // every message (a batch of frames) stored of every task so far: the reader above
    // stops at the terminal frame, so it alone could not see a frame stored after it
    let stored = c
        .nats
        .stream_messages("ORCH_FRAMES")
        .await
        .expect("the frames stream's size");
    assert!(
        stored >= 2,
        "{stored} messages stored for {} frames",
        frames.len()
    );
    // SAFETY: as above
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let t0 = Instant::now();
    while !c.inst[0]
        .log
        .lock()
        .unwrap()
        .contains("no longer leading the pool")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the woken leader did not step down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = c.metrics(0).await;
    let lost = [("pool_id", "mockpool"), ("change", "lost")];
    assert_eq!(
        lint::sum(&m, "cluster_leadership_changes_total", &lost),
        1.0,
        "{m}"
    );
    assert!(lint::has(&m, "cluster_pool_leader", &[]), "{m}");
    assert_eq!(lint::sum(&m, "cluster_pool_leader", &[]), 0.0, "{m}");
    // nothing the old leader did after waking was stored: not one more message in the
    // whole frames stream, and the task's frames read the same
    assert_eq!(
        c.nats.stream_messages("ORCH_FRAMES").await,
        Some(stored),
        "the woken leader stored frames"
    );
    let after = c.stream(1, &id, None).await;
    assert_eq!(after, frames, "the stored frames did not change");
    assert_eq!(
        frame_ids(&after),
        (1..=after.len() as u64).collect::<Vec<_>>()
    );
    // and the pool still serves, through the new leader
    let next = c.admit(0, &task("after the pause", 5, "interactive")).await;
    assert_eq!(one_terminal(&c.stream(0, &next, None).await).event, "end");
}

#[tokio::test]
async fn pool_leaders_spread_over_the_instances_that_prefer_them() {
    let _one = ONE_AT_A_TIME.lock().await;
    let two_pools = format!(
        "{}\n[[pools]]\nid = \"otherpool\"\nengine = \"mock\"\nmodel = \"other-model\"\n[pools.mock]\nmodel = \"other-model\"\n",
        common::mock_config("", "")
    );
    let c = Cluster::start_with("spread", |i| {
        let prefer = [r#"["mockpool"]"#, r#"["otherpool"]"#, r#"["none"]"#][i];
        (two_pools.clone(), prefer.to_string())
    })
    .await;
    let t0 = Instant::now();
    while c.led_pools(0).is_empty() || c.led_pools(1).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "pools not led in 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(2 * LEASE_TTL_MS)).await;
    assert_eq!(c.led_pools(0), ["mockpool"]);
    assert_eq!(c.led_pools(1), ["otherpool"]);
    assert!(c.led_pools(2).is_empty());
    // each pool serves through its own leader, from any instance
    let mut other = task("other", 4, "interactive");
    other["model_ref"] = "other-model".into();
    for (i, body) in [task("mine", 4, "interactive"), other].iter().enumerate() {
        let id = c.admit(2, body).await;
        let frames = c.stream(2, &id, None).await;
        assert_eq!(one_terminal(&frames).event, "end");
        assert_eq!(frames[0].data["pool_id"], ["mockpool", "otherpool"][i]);
    }
}

#[tokio::test]
async fn an_instance_that_cannot_reach_the_cluster_does_not_start() {
    let port = orch_cluster::testing::free_ports(1)[0];
    let toml = format!(
        "{}\n[cluster]\nurls = [\"nats://127.0.0.1:{port}\"]\n",
        common::mock_config("", "")
    );
    let path = common::temp_config("cluster-unreachable", &toml);
    let t0 = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_orchestratord"))
        .env("ORCH_STATE_DIR", common::fresh_state_dir())
        .args(["--config", path.to_str().unwrap(), "--addr", "127.0.0.1:0"])
        .args(["--skip-self-test", "--log-format", "json"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("exits within 30 s")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("startup failed: cluster:"), "{err}");
    assert!(!err.contains("listening on"), "{err}");
    eprintln!("refused to start after {:?}", t0.elapsed());
}

/// Task ids are tenants' own as long as the cluster keeps anything of them: with keys
/// and two tenants, reusing the victim's id on another instance after the queue's
/// dedupe window is 409, reveals nothing (the status and stream stay 404 to the
/// other tenant), and the victim's running task is untouched. Before, the reuse was
/// 202, its record replayed the victim's stored frames, and the victim's task ended
/// with WORKER_RESET.
#[tokio::test]
async fn another_tenants_task_id_is_refused_after_the_dedupe_window_and_the_victim_is_untouched() {
    let _one = ONE_AT_A_TIME.lock().await;
    const ALICE: &str = "oqk_cluster-alice";
    const MALLORY: &str = "oqk_cluster-mallory";
    let body = format!(
        "{}{}{}",
        common::key_entry(ALICE, "alice", "client"),
        common::key_entry(MALLORY, "mallory", "client"),
        common::mock_config("", "slots = 8\ntokens_per_sec = 20.0\ntokens = 80"),
    );
    // a quota that must hold across the instances
    let body = format!("{body}\n[tenants.alice]\nmax_concurrent = 3\n");
    let c = Cluster::start_with("tenants", |i| {
        let prefer = if i == 0 {
            r#"["mockpool"]"#
        } else {
            r#"["none"]"#
        };
        (body.clone(), format!("{prefer}\ndedupe_window_ms = 1000"))
    })
    .await;
    c.wait_leader(0, Duration::from_secs(15)).await;
    let id = uuid::Uuid::new_v4().to_string();
    let mut mine = task("alice's secret", 80, "interactive");
    mine["task_id"] = id.clone().into();
    let as_key = |key: &'static str, rb: reqwest::RequestBuilder| rb.bearer_auth(key);
    let r = as_key(ALICE, c.http.post(c.url(0, "/v1/tasks")))
        .json(&mine)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    // and one whose id the server drew (claimed only when its leader records it)
    let r = as_key(ALICE, c.http.post(c.url(0, "/v1/tasks")))
        .json(&task("drawn", 80, "interactive"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let drawn = r.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    // past the queue's dedupe window, while alice's tasks run
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let mut theirs = task("mallory", 80, "interactive");
    theirs["task_id"] = drawn.clone().into();
    let r = as_key(MALLORY, c.http.post(c.url(1, "/v1/tasks")))
        .json(&theirs)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "{:?}", r.text().await);
    let mut theirs = task("mallory", 80, "interactive");
    theirs["task_id"] = id.clone().into();
    let r = as_key(MALLORY, c.http.post(c.url(2, "/v1/tasks")))
        .json(&theirs)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "{:?}", r.text().await);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["code"], "CONFLICT");
    assert!(!e.to_string().contains("alice"), "{e}");
    for path in [format!("/v1/tasks/{id}"), format!("/v1/tasks/{id}/stream")] {
        let r = as_key(MALLORY, c.http.get(c.url(1, &path)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    // a task's whole stream, read with alice's key on instance i
    let alice_stream = |i: usize, id: String| {
        let rb = as_key(
            ALICE,
            c.http.get(c.url(i, &format!("/v1/tasks/{id}/stream"))),
        );
        async move {
            let r = rb.send().await.unwrap();
            assert_eq!(r.status(), 200);
            let text = tokio::time::timeout(Duration::from_secs(60), r.text())
                .await
                .expect("the stream ends")
                .unwrap();
            parse_sse(&text)
        }
    };
    // alice's task runs to its end, read from another instance
    let frames = alice_stream(1, id.clone()).await;
    let end = one_terminal(&frames);
    assert_eq!(end.event, "end", "{:?}", end.data);
    assert_eq!(end.data["tokens_out"], 80);
    let frames = alice_stream(2, drawn.clone()).await;
    assert_eq!(
        one_terminal(&frames).event,
        "end",
        "mallory did not touch it"
    );
    // alice's max_concurrent holds across the instances: with one task in flight, six
    // submits at once over the three instances admit exactly two
    let long = as_key(ALICE, c.http.post(c.url(0, "/v1/tasks")))
        .json(&task("long", 80, "interactive"))
        .send()
        .await
        .unwrap();
    assert_eq!(long.status(), 202);
    let answers = futures_util::future::join_all((0..6).map(|n| {
        let rb = as_key(ALICE, c.http.post(c.url(n % 3, "/v1/tasks")));
        async move {
            let r = rb
                .json(&task(&format!("burst {n}"), 8, "interactive"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    }))
    .await;
    let admitted: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 202)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(admitted.len(), 2, "{answers:?}");
    for (s, v) in answers.iter().filter(|(s, _)| *s != 202) {
        assert_eq!(*s, 429, "{v}");
        assert_eq!(v["code"], "QUOTA_EXCEEDED", "{v}");
        assert_eq!(v["policy_label"], "quota-concurrency", "{v}");
    }
    // their places come back when they end
    for v in &admitted {
        let id = v["task_id"].as_str().unwrap().to_string();
        let frames = alice_stream(1, id).await;
        assert_eq!(one_terminal(&frames).event, "end");
    }
    let t0 = Instant::now();
    loop {
        let r = as_key(ALICE, c.http.post(c.url(2, "/v1/tasks")))
            .json(&task("after", 4, "interactive"))
            .send()
            .await
            .unwrap();
        if r.status() == 202 {
            break;
        }
        assert_eq!(r.status(), 429, "{:?}", r.text().await);
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "places not given back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The whole cluster crashes while a write waits without quorum (the case that left
/// nats-server 2.9's replicas diverged), and comes back: every task admitted before
/// ends exactly once (one terminal frame, no gap, no duplicate), the submit refused
/// during the outage does not run, and the instances admit and serve again.
#[tokio::test]
async fn a_whole_cluster_crash_with_a_write_waiting_loses_nothing_admitted() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut c = Cluster::start(
        "crash",
        "replicas = 1",
        "slots = 1\ntokens_per_sec = 20.0\ntokens = 20",
    )
    .await;
    // one running, the rest queued
    let mut admitted = Vec::new();
    for n in 0..4 {
        admitted.push(
            c.admit(1, &task(&format!("before {n}"), 20, "interactive"))
                .await,
        );
    }
    // quorum lost: the next submit's store waits in the stream leader's log, and the
    // client is told 503
    c.nats.kill(1);
    c.nats.kill(2);
    let r = c
        .submit(1, &task("during the outage", 20, "interactive"))
        .await;
    common::envelope(r, 503, "POOL_UNAVAILABLE").await;
    // then every server dies, and all come back
    c.nats.kill(0);
    for i in 0..3 {
        c.nats.restart(i);
    }
    for i in 0..3 {
        c.nats.wait_healthy(i).await;
    }
    c.nats.wait_meta_current().await;
    let took = c
        .wait_ready(
            1,
            true,
            Duration::from_secs(60),
            "not ready after the crash",
        )
        .await;
    eprintln!("ready {took:?} after the servers were healthy again");
    for id in &admitted {
        let frames = c.stream(2, id, None).await;
        let end = one_terminal(&frames);
        assert!(
            end.event == "end" || end.data["code"] == "WORKER_RESET",
            "{id}: {:?}",
            end.data
        );
        assert_eq!(
            frame_ids(&frames),
            (1..=frames.len() as u64).collect::<Vec<_>>(),
            "{id}: no gap, no duplicate"
        );
        assert_eq!(
            frames.iter().filter(|f| f.event == "started").count(),
            1,
            "{id}: started once"
        );
    }
    // the refused submit did not run to its end
    if let Some(refused) = c.logged_task_id(1, "withdrawing it") {
        let r = c
            .http
            .get(c.url(2, &format!("/v1/tasks/{refused}")))
            .send()
            .await
            .unwrap();
        if r.status() != 404 {
            let frames = c.stream(2, &refused, None).await;
            let tokens = frames.iter().filter(|f| f.event == "token").count();
            assert!(tokens < 20, "the withdrawn task ran: {frames:?}");
        }
    }
    // and the cluster serves again
    let id = c.admit(0, &task("after the crash", 4, "interactive")).await;
    let frames = c.stream(2, &id, None).await;
    assert_eq!(one_terminal(&frames).event, "end", "{frames:?}");
}

/// The replica id a task's `started` frame names.
fn started_replica(frames: &[SseFrame]) -> String {
    frames[0].data["replica_id"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Capacity: every instance's replicas serve the pool (the default). Three instances
/// with one one-slot replica each run three tasks at once, each on a replica named by
/// its instance; losing a nats-server while they stream loses no token (a host sends
/// again what its leader missed); a host's death takes its replica out of the pool and
/// the task it streamed continues on another replica, while everything else runs on.
#[tokio::test]
async fn every_instances_replicas_serve_the_pool_and_a_dead_host_is_taken_out() {
    let _one = ONE_AT_A_TIME.lock().await;
    // a lease that outlasts the lease bucket's election when a nats-server goes (the
    // leader would step down otherwise, ending its streamed tasks: see the README)
    let base = common::mock_config(
        "replicas = 1\nqueue_capacity = 8",
        "slots = 1\ntokens_per_sec = 20.0\ntokens = 30",
    );
    let mut c = Cluster::start_with("capacity", |i| {
        let prefer = [r#"["mockpool"]"#, r#"["none"]"#, r#"["none"]"#][i];
        (base.clone(), format!("{prefer}\nlease_ttl_ms = 10000"))
    })
    .await;
    c.wait_leader(0, Duration::from_secs(20)).await;
    // the leader attaches the two other instances' replicas
    let t0 = Instant::now();
    loop {
        let v = c.get_json(0, "/v1/pools").await;
        let n = v["pools"][0]["replicas"].as_array().map_or(0, Vec::len);
        if n == 3 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // three tasks at once: one per replica, each replica's id names its instance
    let ids: Vec<String> = futures_util::future::join_all((0..3).map(|n| {
        let c = &c;
        async move {
            c.admit(n, &task(&format!("wide {n}"), 30, "interactive"))
                .await
        }
    }))
    .await;
    let firsts = futures_util::future::join_all(
        ids.iter()
            .map(|id| async { first_frames(c.stream_response(0, id, None).await, 3).await }),
    )
    .await;
    let mut replicas: Vec<String> = firsts.iter().map(|f| started_replica(f)).collect();
    replicas.sort();
    assert_eq!(
        replicas,
        ["a:mockpool-r0", "b:mockpool-r0", "c:mockpool-r0"],
        "three tasks at once run on the three instances' replicas"
    );
    // a nats-server goes while they stream: nothing is lost
    c.nats.kill(2);
    for id in &ids {
        let frames = c.stream(1, id, None).await;
        assert_eq!(one_terminal(&frames).event, "end", "{frames:?}");
        assert_eq!(frames.iter().filter(|f| f.event == "token").count(), 30);
        assert_eq!(frames.iter().filter(|f| f.event == "started").count(), 1);
        assert_eq!(
            frame_ids(&frames),
            (1..=frames.len() as u64).collect::<Vec<_>>()
        );
    }
    c.nats.restart(2);
    c.nats.wait_healthy(2).await;
    // the hosts counted their runs; the leader its hosted replicas
    let mp = [("pool_id", "mockpool")];
    let lead = c.metrics(0).await;
    assert_eq!(
        lint::sum(&lead, "cluster_hosted_replicas", &mp),
        2.0,
        "{lead}"
    );
    let hosted: f64 = [c.metrics(1).await, c.metrics(2).await]
        .iter()
        .map(|m| lint::sum(m, "cluster_hosted_runs_total", &mp))
        .sum();
    assert!(hosted >= 2.0, "runs hosted by b and c: {hosted}");
    // the host of a streaming task dies: its task continues on another replica, its
    // replica leaves the pool, the others finish
    let ids: Vec<String> = futures_util::future::join_all((0..3).map(|n| {
        let c = &c;
        async move {
            c.admit(0, &task(&format!("again {n}"), 30, "interactive"))
                .await
        }
    }))
    .await;
    let mut on_c = None;
    for id in &ids {
        let f = first_frames(c.stream_response(0, id, None).await, 3).await;
        if started_replica(&f) == "c:mockpool-r0" {
            on_c = Some(id.clone());
        }
    }
    let on_c = on_c.expect("one of three concurrent tasks runs on c");
    c.kill(2);
    for id in &ids {
        let frames = c.stream(0, id, None).await;
        let last = one_terminal(&frames);
        assert_eq!(last.event, "end", "{frames:?}");
        assert_whole(&frames, 30);
        if *id == on_c {
            let m = moves(&frames);
            assert_eq!(m.len(), 1, "{frames:?}");
            assert_eq!(m[0]["from_replica"], "c:mockpool-r0");
            assert_eq!(m[0]["reason"], "WORKER_RESET");
        }
    }
    // its replica takes no work (it leaves the pool after a minute of silence)
    let t0 = Instant::now();
    loop {
        let v = c.get_json(0, "/v1/pools").await;
        let states: Vec<(String, String)> = v["pools"][0]["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap().to_string();
                (s("id"), s("state"))
            })
            .collect();
        if states
            .iter()
            .any(|(id, st)| id == "c:mockpool-r0" && st == "unready")
        {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // and new work runs on what is left
    let id = c.admit(1, &task("after", 5, "interactive")).await;
    assert_eq!(one_terminal(&c.stream(1, &id, None).await).event, "end");
    // the leader dies while its tasks stream on its own and on b's replica: b takes
    // the pool over and continues both; new work runs on b
    let ids: Vec<String> = futures_util::future::join_all((0..2).map(|n| {
        let c = &c;
        async move {
            c.admit(1, &task(&format!("orphan {n}"), 30, "interactive"))
                .await
        }
    }))
    .await;
    for id in &ids {
        first_frames(c.stream_response(1, id, None).await, 3).await;
    }
    c.kill(0);
    for id in &ids {
        let frames = c.stream(1, id, None).await;
        assert_whole(&frames, 30);
    }
    let id = c.admit(1, &task("on b", 5, "interactive")).await;
    let frames = c.stream(1, &id, None).await;
    assert_eq!(one_terminal(&frames).event, "end");
    assert_eq!(started_replica(&frames), "b:mockpool-r0");
}

/// Continuation across a leader's death: twelve tasks stream (from instance b) on the
/// three instances' replicas when the pool's leader is killed with SIGKILL; the new
/// leader continues every one from its stored tokens: each ends with `end` and all its
/// tokens, once each, in order, `started` once.
#[tokio::test]
async fn kill_9_of_the_leader_while_twelve_tasks_stream_loses_no_token() {
    let _one = ONE_AT_A_TIME.lock().await;
    let base = common::mock_config(
        "replicas = 1\nqueue_capacity = 16",
        "slots = 4\ntokens_per_sec = 20.0\ntokens = 40",
    );
    let mut c = Cluster::start_with("continue", |i| {
        let prefer = [r#"["mockpool"]"#, r#"["none"]"#, r#"["none"]"#][i];
        (base.clone(), prefer.to_string())
    })
    .await;
    c.wait_leader(0, Duration::from_secs(20)).await;
    let t0 = Instant::now();
    while c.get_json(0, "/v1/pools").await["pools"][0]["replicas"]
        .as_array()
        .map_or(0, Vec::len)
        < 3
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "replicas not attached"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ids = Vec::new();
    for n in 0..12 {
        ids.push(
            c.admit(1, &task(&format!("twelve {n}"), 40, "interactive"))
                .await,
        );
    }
    // every one has streamed when the leader dies
    futures_util::future::join_all(
        ids.iter()
            .map(|id| async { first_frames(c.stream_response(1, id, None).await, 3).await }),
    )
    .await;
    c.kill(0);
    let all = futures_util::future::join_all(ids.iter().map(|id| c.stream(1, id, None))).await;
    let mut moved = 0;
    for frames in &all {
        assert_whole(frames, 40);
        moved += usize::from(!moves(frames).is_empty());
    }
    eprintln!("[cluster] leader killed with 12 streaming: all ended whole, {moved} moved");
    assert!(
        moved >= 4,
        "at least the leader's own replica's tasks moved: {moved}"
    );
}

/// The frames stream is bounded (`max_frame_bytes`, discard-new): once it is nine
/// tenths full, every instance refuses new tasks with a retriable 503 that says why,
/// until old frames age out.
#[tokio::test]
async fn a_nearly_full_frame_store_refuses_new_tasks_with_503() {
    let _one = ONE_AT_A_TIME.lock().await;
    let base = common::mock_config(
        "replicas = 1\nqueue_capacity = 8\nmax_tokens_out = 100000",
        "slots = 4\ntokens_per_sec = 5000.0\ntokens = 4000",
    );
    let c = Cluster::start_with("framesfull", |i| {
        let prefer = [r#"["mockpool"]"#, r#"["none"]"#, r#"["none"]"#][i];
        (base.clone(), format!("{prefer}\nmax_frame_bytes = 1048576"))
    })
    .await;
    c.wait_leader(0, Duration::from_secs(15)).await;
    // a few thousand frames fill a mebibyte
    for n in 0..4 {
        c.admit(n % 3, &task(&format!("big {n}"), 4000, "interactive"))
            .await;
    }
    let t0 = Instant::now();
    let refused = loop {
        let r = c.submit(1, &task("one more", 4, "interactive")).await;
        if r.status() == 503 {
            break r.json::<Value>().await.unwrap();
        }
        assert_eq!(r.status(), 202, "{:?}", r.text().await);
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "never refused while the frame store filled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(refused["code"], "POOL_UNAVAILABLE", "{refused}");
    assert_eq!(refused["retriable"], true, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("frame store is nine tenths full"),
        "{refused}"
    );
}

/// Keys made through the API are the cluster's: a key made on one instance works on
/// another, and its revocation on a third is refused on every instance within a
/// second; the usage ledger is the cluster's too: a report on any instance counts
/// the tasks every instance admitted (issue 26).
#[tokio::test]
async fn a_key_made_on_one_instance_works_on_all_and_its_revocation_reaches_all_within_a_second() {
    let _one = ONE_AT_A_TIME.lock().await;
    const ADMIN: &str = "oqk_cluster-keys-admin";
    let body = format!(
        "{}{}",
        common::key_entry(ADMIN, "ops", "admin"),
        common::mock_config("", "slots = 2\ntokens_per_sec = 200.0\ntokens = 2"),
    );
    let c = Cluster::start_with("keys", |i| {
        let prefer = if i == 0 {
            r#"["mockpool"]"#
        } else {
            r#"["none"]"#
        };
        (body.clone(), prefer.to_string())
    })
    .await;
    c.wait_leader(0, Duration::from_secs(15)).await;
    let r = c
        .http
        .post(c.url(0, "/v1/admin/keys"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"tenant": "carol"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let made: Value = r.json().await.unwrap();
    let key = made["key"].as_str().unwrap().to_string();
    let fp = made["fingerprint"].as_str().unwrap().to_string();
    // answers `status` for `key`'s capabilities on instance i, trying for up to 1 s
    let within_a_second = |i: usize, want: u16| {
        let (h, url, key) = (c.http.clone(), c.url(i, "/v1/capabilities"), key.clone());
        async move {
            let t0 = Instant::now();
            loop {
                let got = h
                    .get(&url)
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16();
                if got == want {
                    return t0.elapsed();
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(1),
                    "instance {i} still answers {got}, not {want}, after a second"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let took = within_a_second(1, 200).await;
    eprintln!("a key made on a works on b after {took:?}");
    let r = c
        .http
        .post(c.url(1, "/v1/tasks"))
        .bearer_auth(&key)
        .json(&task("carol's", 2, "interactive"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // carol's task (admitted by b) and one of ops (admitted by a) run to their end
    let carols = r.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .http
        .post(c.url(0, "/v1/tasks"))
        .bearer_auth(ADMIN)
        .json(&task("ops'", 2, "interactive"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let ops = r.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut tokens_out = 0;
    for (i, id, k) in [(1, &carols, key.as_str()), (0, &ops, ADMIN)] {
        let text = c
            .http
            .get(c.url(i, &format!("/v1/tasks/{id}/stream")))
            .bearer_auth(k)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let frames = parse_sse(&text);
        let end = one_terminal(&frames);
        assert_eq!(end.event, "end", "{text}");
        tokens_out += end.data["tokens_out"].as_u64().unwrap();
    }
    // the third instance's report counts both (each admitting instance writes its
    // ledger within a second; the report waits for the cluster's stream)
    let t0 = Instant::now();
    let report = loop {
        let u: Value = c
            .http
            .get(c.url(2, "/v1/usage?group_by=tenant"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if u["total"]["tasks"] == 2 || t0.elapsed() > Duration::from_secs(5) {
            break u;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(report["total"]["tasks"], 2, "{report}");
    assert_eq!(report["total"]["tokens_out"], tokens_out, "{report}");
    let tenants: Vec<&str> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["group"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["carol", "ops"], "{report}");
    eprintln!("the cluster's usage counted on c after {:?}", t0.elapsed());
    // listed on the third, then revoked there
    let list: Value = c
        .http
        .get(c.url(2, "/v1/admin/keys"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(list.to_string().contains(&fp), "{list}");
    let r = c
        .http
        .delete(c.url(2, &format!("/v1/admin/keys/{fp}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for i in [0, 1, 2] {
        let took = within_a_second(i, 401).await;
        eprintln!("revoked on c, refused on instance {i} after {took:?}");
    }
}
