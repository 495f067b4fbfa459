//! The leader's side of a hosted run against a scripted host on real nats-servers: a
//! message lost on the way is asked for again and comes back in order, once; a host
//! that falls silent ends the run with a reset.

use super::host::StopMsg;
use super::{
    resend_subject, run_subject, stop_subject, AdReplica, HostedReplica, Resend, RunAnswer,
    RunEvent, RunMsg, RunRequest,
};
use crate::testing::Nats;
use crate::{Cluster, ClusterConfig};
use adapter_api::{EngineEvent, EngineRequest, WorkerAdapter, WorkerError};
use futures_util::StreamExt;
use orch_domain::{FinishReason, TaskId};
use std::time::Duration;

fn ad() -> AdReplica {
    AdReplica {
        id: "h:p-r0".into(),
        serving: true,
        engine: "mock".into(),
        engine_version: "1".into(),
        model: "m".into(),
        model_digest: "sha256:0".into(),
        model_fingerprint: None,
        slots: 1,
        ctx_max: 1024,
        continues: true,
    }
}

fn request() -> EngineRequest {
    EngineRequest {
        task_id: TaskId::new_random(),
        prompt: "hi".into(),
        chat: None,
        max_tokens: 3,
        seed: 1,
        temperature: None,
        top_p: None,
        stop: Vec::new(),
        slot: None,
        cache_prompt: false,
        resume: None,
        prompt_ids: None,
    }
}

fn token(i: u32) -> RunEvent {
    RunEvent::Token {
        text: format!("t{i}"),
        index: i,
        prompt_tokens: None,
        ids: vec![i + 100],
    }
}

fn end() -> RunEvent {
    RunEvent::End {
        tokens_in: 1,
        tokens_out: 3,
        tokens_cached: None,
        finish_reason: FinishReason::Length,
        decode_time_ms: 1,
        slot: None,
    }
}

async fn send(c: &async_nats::Client, to: &str, seq: u64, ev: RunEvent) {
    let b = serde_json::to_vec(&RunMsg { seq, ev }).unwrap();
    c.publish(to.to_string(), b.into()).await.unwrap();
}

/// A host that accepts one run and sends what `script` does with it.
async fn host<F, Fut>(c: async_nats::Client, script: F) -> tokio::task::JoinHandle<()>
where
    F: FnOnce(async_nats::Client, String, async_nats::Subscriber) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut runs = c.subscribe(run_subject("h")).await.unwrap();
    let resends = c.subscribe(resend_subject("h")).await.unwrap();
    c.flush().await.unwrap();
    tokio::spawn(async move {
        let m = runs.next().await.unwrap();
        let r: RunRequest = serde_json::from_slice(&m.payload).unwrap();
        let ok = serde_json::to_vec(&RunAnswer::Accepted).unwrap();
        c.publish(m.reply.unwrap(), ok.into()).await.unwrap();
        script(c, r.events, resends).await;
    })
}

#[tokio::test]
async fn a_lost_message_is_sent_again_and_arrives_in_order_once() {
    let n = Nats::start("hosted").await;
    let cluster = Cluster::connect(ClusterConfig {
        urls: n.urls(),
        security: n.security(),
        ..ClusterConfig::default()
    })
    .await
    .unwrap();
    let c = cluster.js.client();
    let leader = HostedReplica::new(c.clone(), "h", "p", ad());

    // token 1 is "lost"; the leader sees 2 after 0, asks for 1 on, and gets 1, 2, end
    let h = host(c.clone(), |c, events, mut resends| async move {
        send(&c, &events, 0, token(0)).await;
        send(&c, &events, 2, token(2)).await;
        let m = tokio::time::timeout(Duration::from_secs(5), resends.next())
            .await
            .expect("the leader asks for what it missed")
            .unwrap();
        let r: Resend = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(r.from, 1);
        send(&c, &events, 1, token(1)).await;
        send(&c, &events, 2, token(2)).await;
        send(&c, &events, 3, end()).await;
    })
    .await;
    let stream = leader.submit(request()).await.unwrap();
    let got: Vec<_> = stream.collect().await;
    h.await.unwrap();
    let texts: Vec<String> = got
        .iter()
        .map(|e| match e {
            Ok(EngineEvent::Token { text, .. }) => text.clone(),
            Ok(EngineEvent::End(_)) => "end".into(),
            Err(e) => format!("error {e}"),
        })
        .collect();
    assert_eq!(texts, ["t0", "t1", "t2", "end"]);

    // a host that accepts and then says nothing (not even a beat): a reset after the
    // silence, and the host is told to stop
    let mut stops = c.subscribe(stop_subject("h")).await.unwrap();
    let h = host(c.clone(), |c, events, _resends| async move {
        send(&c, &events, 0, token(0)).await;
    })
    .await;
    let t0 = std::time::Instant::now();
    let got: Vec<_> = leader.submit(request()).await.unwrap().collect().await;
    h.await.unwrap();
    assert!(matches!(got.first(), Some(Ok(EngineEvent::Token { .. }))));
    assert!(
        matches!(got.last(), Some(Err(WorkerError::Reset(_)))),
        "{got:?}"
    );
    assert!(t0.elapsed() >= super::SILENT, "{:?}", t0.elapsed());
    let stop = tokio::time::timeout(Duration::from_secs(5), stops.next())
        .await
        .expect("the host is told to stop the run")
        .unwrap();
    let s: StopMsg = serde_json::from_slice(&stop.payload).unwrap();
    assert!(s.run.is_some());
}
