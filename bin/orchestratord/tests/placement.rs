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
