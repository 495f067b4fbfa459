//! Cache-aware placement over real HTTP, with mock replicas that model a KV cache
//! (uncached prompt blocks cost prefill time): a conversation's next turn, sent without
//! a session id through OrchQueue or the OpenAI door, lands on the replica that holds
//! its prefix and starts faster than under least-loaded placement; a hot prefix still
//! spreads over the replicas.

mod common;
use common::*;
use serde_json::{json, Value};

fn config(placement: &str) -> String {
    mock_config(
        &format!("replicas = 2\nplacement = \"{placement}\""),
        "slots = 2\ntokens_per_sec = 400.0\nttft_ms = 2\ntokens = 4\nprefill_ms_per_block = 4",
    )
}

/// A distinct ~2 KB conversation opening.
fn opening(k: usize) -> String {
    (0..40)
        .map(|i| format!("Fact {k}.{i}: the archive keeps record {i} of shelf {k}. "))
        .collect()
}

/// Run one task; (replica_id, placement, ttft_ms).
async fn turn(s: &TestServer, prompt: &str) -> (String, String, u64) {
    let (id, _) = s.submit(&task(prompt, 4, "interactive")).await;
    let f = s.stream(&id, None).await;
    let started = f.iter().find(|f| f.event == "started").expect("started");
    let end = f.last().unwrap();
    assert_eq!(end.event, "end", "{f:?}");
    (
        started.data["replica_id"].as_str().unwrap().to_string(),
        started.data["placement"].as_str().unwrap().to_string(),
        end.data["ttft_ms"].as_u64().unwrap(),
    )
}

/// Second turns of four conversations: (same replica as turn 1?, reason, ttft).
async fn second_turns(s: &TestServer) -> Vec<(bool, String, u64)> {
    let mut out = Vec::new();
    for k in 0..4 {
        let first = format!("{}Question one?", opening(k));
        let (r1, _, t1) = turn(s, &first).await;
        assert!(t1 >= 100, "a cold 2 KB prompt prefills for ~130 ms: {t1}");
        let second = format!("{first} Answer one. Question two?");
        let (r2, why, t2) = turn(s, &second).await;
        out.push((r1 == r2, why, t2));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_turn_without_a_session_lands_where_its_prefix_is_cached() {
    let prefix = start(&config("prefix")).await;
    let least = start(&config("least-loaded")).await;
    let p = second_turns(&prefix).await;
    let l = second_turns(&least).await;
    let mean =
        |v: &[(bool, String, u64)]| v.iter().map(|x| x.2 as f64).sum::<f64>() / v.len() as f64;
    eprintln!(
        "2nd-turn ttft: prefix {:.0} ms {p:?}; least-loaded {:.0} ms {l:?}",
        mean(&p),
        mean(&l)
    );
    for (same, why, _) in &p {
        assert!(
            *same,
            "prefix placement keeps the conversation on its replica: {p:?}"
        );
        assert_eq!(why, "prefix");
    }
    assert!(
        mean(&p) * 2.0 < mean(&l),
        "cached prefixes start faster: prefix {p:?} vs least-loaded {l:?}"
    );
    let m = prefix.metrics().await;
    assert!(
        m.contains("tasks_placed_total{pool_id=\"mockpool\",reason=\"prefix\"}"),
        "{m}"
    );
    assert!(
        m.lines().any(|l| l.starts_with("tokens_cached_total{")),
        "{m}"
    );
    let caps = prefix.get_json("/v1/capabilities").await;
    assert_eq!(caps["engines"][0]["placement"], "prefix");
    prefix.assert_all_terminated().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_conversations_resend_their_history_and_stay_on_their_replica() {
    let s = start(&config("prefix")).await;
    for k in 0..3 {
        let mut messages = vec![
            json!({"role": "system", "content": opening(k)}),
            json!({"role": "user", "content": "Question one?"}),
        ];
        let mut replicas = Vec::new();
        for turn in 0..3 {
            let r = s
                .http
                .post(s.url("/v1/chat/completions"))
                .json(&json!({"model": "mock-model", "max_tokens": 4, "messages": messages}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let id = r.headers()["x-orch-task-id"].to_str().unwrap().to_string();
            let v: Value = r.json().await.unwrap();
            let answer = v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string();
            replicas.push(
                s.status(&id).await["replica_id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
            messages.push(json!({"role": "assistant", "content": answer}));
            messages.push(json!({"role": "user", "content": format!("Question {}?", turn + 2)}));
        }
        assert!(
            replicas.iter().all(|r| *r == replicas[0]),
            "conversation {k} moved: {replicas:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_prefix_still_spreads_over_the_replicas() {
    let s = std::sync::Arc::new(start(&config("prefix")).await);
    let hot = format!("{}Question?", opening(9));
    turn(&s, &hot).await; // cached on one replica now
    let runs: Vec<_> = (0..8)
        .map(|_| {
            let (s, hot) = (s.clone(), hot.clone());
            tokio::spawn(async move { turn(&s, &hot).await })
        })
        .collect();
    let mut replicas = std::collections::BTreeSet::new();
    let mut reasons = std::collections::BTreeSet::new();
    for r in runs {
        let (rep, why, _) = r.await.unwrap();
        replicas.insert(rep);
        reasons.insert(why);
    }
    assert_eq!(
        replicas.len(),
        2,
        "load outweighs one hot prefix: {replicas:?}"
    );
    assert!(reasons.contains("prefix"), "{reasons:?}");
}

/// Run one task of `prompt` (with `kv_hint`, if any) to its `end`; its `tokens_cached`.
async fn tokens_cached(s: &TestServer, prompt: &str, hint: Option<&str>) -> u64 {
    let mut t = task(prompt, 2, "interactive");
    if let Some(h) = hint {
        t["kv_hint"] = json!(h);
    }
    let (id, _) = s.submit(&t).await;
    let f = s.stream(&id, None).await;
    let end = f.last().unwrap();
    assert_eq!(end.event, "end", "{f:?}");
    end.data["tokens_cached"].as_u64().expect("tokens_cached")
}

/// Spec §1 `kv_hint`: `cold` reaches the engine as "do not reuse the cache"
/// (`cache_prompt: false`, which llama-server honours the same way; the real-engine
/// test is in `llamacpp.rs`), so a prompt the replica holds is computed again.
#[tokio::test]
async fn kv_hint_cold_reaches_the_engine_and_skips_its_cache() {
    let s = start(&mock_config(
        "",
        "slots = 1\ntokens_per_sec = 0.0\nttft_ms = 1\ntokens = 4\nprefill_ms_per_block = 1",
    ))
    .await;
    let prompt = opening(7);
    let cached = |hint: Option<&'static str>| tokens_cached(&s, &prompt, hint);
    assert_eq!(cached(None).await, 0, "first sight of the prompt");
    assert!(cached(None).await > 0, "reused by default");
    assert!(cached(Some("reuse")).await > 0, "reuse is the default");
    assert_eq!(cached(Some("cold")).await, 0, "cold computes it again");
    s.assert_all_terminated().await;
}

/// Two pools serving one model, `a` and `b`.
fn two_pools() -> String {
    let pool = |id: &str| {
        format!(
            "[[pools]]\nid = \"{id}\"\nengine = \"mock\"\nmodel = \"mock-model\"\n\n[pools.mock]\nslots = 4\ntokens_per_sec = 0.0\nttft_ms = 1\ntokens = 4\n\n"
        )
    };
    format!("[server]\nkeepalive_ms = 200\n\n{}{}", pool("a"), pool("b"))
}

/// The pool a task started on.
async fn pool_of(s: &TestServer, placement: Value) -> String {
    let mut t = task("where", 2, "interactive");
    t["placement"] = placement;
    let (id, _) = s.submit(&t).await;
    let f = s.stream(&id, None).await;
    assert_eq!(f.last().unwrap().event, "end", "{f:?}");
    f[0].data["pool_id"].as_str().unwrap().to_string()
}

/// Spec §1 `placement`: `prefer_pools` picks the preferred ready pool even when another
/// is as idle, in the order given; `avoid_pools` never uses an avoided pool; a pinned
/// pool that is not ready is refused with its typed error (503 `POOL_UNREADY`, retriable,
/// naming the pool), never a silent fallback to another pool.
#[tokio::test]
async fn prefer_and_avoid_pools_are_honoured_and_a_pinned_unready_pool_is_refused() {
    let s = start(&two_pools()).await;
    for _ in 0..4 {
        assert_eq!(pool_of(&s, json!({"prefer_pools": ["b"]})).await, "b");
        assert_eq!(pool_of(&s, json!({"prefer_pools": ["a", "b"]})).await, "a");
        assert_eq!(pool_of(&s, json!({"avoid_pools": ["a"]})).await, "b");
        assert_eq!(pool_of(&s, json!({"avoid_pools": ["b"]})).await, "a");
        assert_eq!(pool_of(&s, json!({"pin_pool_id": "b"})).await, "b");
    }
    // avoiding every pool of the model is the client's own contradiction (400 naming
    // the field), not an outage to retry
    let mut none = task("nowhere", 2, "interactive");
    none["placement"] = json!({"avoid_pools": ["a", "b"]});
    let e = envelope(s.post_raw(&none).await, 400, "INVALID_PARAMS").await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("placement.avoid_pools"),
        "{e}"
    );
    let r = s
        .http
        .post(s.url("/v1/pools/b/drain"))
        .json(&json!({"deadline_ms": 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // b is draining: preferring it falls back to a ready pool (a preference, not a pin) …
    assert_eq!(pool_of(&s, json!({"prefer_pools": ["b"]})).await, "a");
    // … but pinning it is refused with its own error
    let mut pinned = task("pinned", 2, "interactive");
    pinned["placement"] = json!({"pin_pool_id": "b"});
    let e = envelope(s.post_raw(&pinned).await, 503, "POOL_UNREADY").await;
    assert_eq!(e["retriable"], true, "{e}");
    assert_eq!(e["pool_id"], "b", "{e}");
    s.assert_all_terminated().await;
}

/// The observed-precise index (issue 28, item 4): when a task ends, what the engine
/// reported reusing corrects the prefix index. On one replica whose modelled KV cache
/// holds one conversation: a repeat is confirmed; after another conversation pushed
/// the first out, the index still predicts it, the engine reports reusing nothing, and
/// the index learns the eviction. A `cold` task (which reuses nothing on purpose)
/// teaches nothing.
#[tokio::test]
async fn the_engines_cache_report_confirms_and_corrects_the_prefix_index() {
    // a pool id of its own: the metrics recorder is shared by this file's servers
    let s = start(
        &mock_config(
            "",
            "slots = 1\ntokens_per_sec = 0.0\nttft_ms = 1\ntokens = 4\nprefill_ms_per_block = 1\nkv_blocks = 40",
        )
        .replace("id = \"mockpool\"", "id = \"observed\""),
    )
    .await;
    let (a, b) = (opening(1), opening(2));
    assert!(a.len() / 64 > 20 && a.len() / 64 <= 40, "{}", a.len());
    // the slot (and with it the engine's report) comes back just after `end`
    let learned = |what: &'static str, want: f64| {
        let s = &s;
        async move {
            let key = format!(
                "prefix_index_observations_total{{pool_id=\"observed\",learned=\"{what}\"}}"
            );
            let mut got = 0.0;
            for _ in 0..100 {
                got = s.metric_sum(&key).await;
                if got >= want {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            got
        }
    };
    assert_eq!(tokens_cached(&s, &a, None).await, 0);
    assert!(
        tokens_cached(&s, &a, None).await > 0,
        "a repeat reuses the prompt"
    );
    assert_eq!(learned("confirmed", 1.0).await, 1.0);
    assert_eq!(learned("evicted", 0.0).await, 0.0);
    // b does not fit beside a: the engine drops a
    assert_eq!(tokens_cached(&s, &b, None).await, 0);
    assert_eq!(tokens_cached(&s, &a, None).await, 0, "a was evicted");
    assert_eq!(learned("evicted", 1.0).await, 1.0, "the index learned it");
    // cold reuses nothing by request: not an eviction
    tokens_cached(&s, &a, Some("cold")).await;
    // its slot's return is processed before the next task's placement
    tokens_cached(&s, &b, None).await;
    assert_eq!(
        learned("evicted", 2.0).await,
        2.0,
        "b was evicted by a: learned"
    );
    assert_eq!(
        learned("confirmed", 1.0).await,
        1.0,
        "cold confirmed nothing"
    );
    s.assert_all_terminated().await;
}
