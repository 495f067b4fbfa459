//! The host side: advertise this instance's replicas of every pool, and run on them
//! the generations pool leaders send, forwarding each engine event to the leader.
//! A run stops (dropping the engine's stream frees its slot) when the leader says
//! stop, when the leader no longer answers its beats (no responder: it is gone), or
//! when the engine's stream ends.

use super::{
    ad_subject, resend_subject, run_subject, stop_subject, Ad, AdReplica, Resend, RunAnswer,
    RunEvent, RunMsg, RunRequest, WireError, ADVERTISE, BEAT, KEEP_ENDED, MAX_RUNS, SILENT,
};
use crate::ClusterError;
use adapter_api::{EngineRequest, WorkerError};
use async_nats::{Client, RequestErrorKind};
use bytes::Bytes;
use futures_util::StreamExt;
use orch_domain::TaskId;
use orch_services::LocalPools;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A leader's stop of one run (`run`) or of every run of a task (`task`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct StopMsg {
    #[serde(default)]
    pub run: Option<String>,
    #[serde(default)]
    pub task: Option<TaskId>,
}

/// A run hosted here: its task, its stop signal, where its messages go and every
/// message sent so far (for a resend).
struct Hosted {
    task: TaskId,
    pool_id: String,
    stop: watch::Sender<bool>,
    events: String,
    sent: Arc<Mutex<Vec<Bytes>>>,
}

/// Runs in progress here (and ended ones for [`KEEP_ENDED`]), by run id.
type Runs = Arc<Mutex<HashMap<String, Hosted>>>;

/// Advertise this instance's replicas (ids starting with `prefix`) of every pool every
/// [`ADVERTISE`].
pub(crate) fn advertise(
    client: Client,
    pools: LocalPools,
    instance: String,
    prefix: String,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ADVERTISE);
        loop {
            tick.tick().await;
            for pool_id in pools.pool_ids() {
                let ad = Ad {
                    instance: instance.clone(),
                    replicas: pools
                        .replicas(&pool_id, &prefix)
                        .iter()
                        .map(|r| AdReplica::of(&r.id, r.serving, &r.props))
                        .collect(),
                };
                if let Ok(b) = serde_json::to_vec(&ad) {
                    let _ = client.publish(ad_subject(&pool_id), b.into()).await;
                }
            }
        }
    })
}

/// The runs this instance hosts. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Host {
    runs: Runs,
}

impl Host {
    /// Stop every run hosted for `pool_id`'s leader (this instance leads it now: the
    /// runs are the old leader's, which the new term settles from what is stored).
    pub fn stop_pool(&self, pool_id: &str) {
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for h in runs.values().filter(|h| h.pool_id == pool_id) {
            n += usize::from(!*h.stop.borrow());
            let _ = h.stop.send(true);
        }
        if n > 0 {
            tracing::info!(
                pool_id,
                runs = n,
                "stopped the runs hosted for the pool's former leader"
            );
        }
    }
}

/// Take runs and stops for this instance's replicas (ids starting with `prefix`).
pub(crate) async fn serve(
    client: Client,
    pools: LocalPools,
    instance: &str,
    prefix: String,
    host: Host,
) -> Result<JoinHandle<()>, ClusterError> {
    let setup = |e: String| ClusterError::Setup {
        what: "the hosted-run subscriptions".into(),
        reason: e,
    };
    let mut runs_sub = client
        .subscribe(run_subject(instance))
        .await
        .map_err(|e| setup(e.to_string()))?;
    let mut stops = client
        .subscribe(stop_subject(instance))
        .await
        .map_err(|e| setup(e.to_string()))?;
    let mut resends = client
        .subscribe(resend_subject(instance))
        .await
        .map_err(|e| setup(e.to_string()))?;
    let runs = host.runs;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(m) = runs_sub.next() => {
                    let Some(reply) = m.reply else { continue };
                    // each start on its own: an engine that is slow to answer does
                    // not hold the next run up
                    let (client, pools, prefix, runs) =
                        (client.clone(), pools.clone(), prefix.clone(), runs.clone());
                    tokio::spawn(async move {
                        let answer = match serde_json::from_slice::<RunRequest>(&m.payload) {
                            Ok(r) => start(&client, &pools, &prefix, &runs, r).await,
                            Err(e) => RunAnswer::Refused {
                                error: WireError::Protocol(format!("unreadable run request: {e}")),
                            },
                        };
                        if let Ok(b) = serde_json::to_vec(&answer) {
                            let _ = client.publish(reply, b.into()).await;
                        }
                    });
                }
                Some(m) = stops.next() => {
                    if let Ok(s) = serde_json::from_slice::<StopMsg>(&m.payload) {
                        stop(&runs, &s);
                    }
                }
                Some(m) = resends.next() => {
                    if let Ok(r) = serde_json::from_slice::<Resend>(&m.payload) {
                        resend(&client, &runs, &r).await;
                    }
                }
                else => return,
            }
        }
    }))
}

fn stop(runs: &Runs, s: &StopMsg) {
    let runs = runs.lock().unwrap_or_else(|p| p.into_inner());
    for (run, h) in runs.iter() {
        if s.run.as_deref() == Some(run.as_str()) || s.task == Some(h.task) {
            let _ = h.stop.send(true);
        }
    }
}

/// Send a run's messages again from `from` on (what the leader missed).
async fn resend(client: &Client, runs: &Runs, r: &Resend) {
    let found = {
        let runs = runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.get(&r.run).map(|h| {
            let sent = h.sent.lock().unwrap_or_else(|p| p.into_inner());
            let from = usize::try_from(r.from)
                .unwrap_or(usize::MAX)
                .min(sent.len());
            (h.events.clone(), sent[from..].to_vec())
        })
    };
    if let Some((events, tail)) = found {
        for b in tail {
            let _ = client.publish(events.clone(), b).await;
        }
    }
}

/// Start a run on the named replica, if it serves here.
async fn start(
    client: &Client,
    pools: &LocalPools,
    prefix: &str,
    runs: &Runs,
    r: RunRequest,
) -> RunAnswer {
    let refused = |e: WorkerError| RunAnswer::Refused {
        error: WireError::from(&e),
    };
    if !r.replica_id.starts_with(prefix) {
        return refused(WorkerError::Unready(format!(
            "replica {} is not hosted here",
            r.replica_id
        )));
    }
    let replica = pools
        .replicas(&r.pool_id, prefix)
        .into_iter()
        .find(|x| *x.id == *r.replica_id);
    let Some(replica) = replica.filter(|x| x.serving) else {
        return refused(WorkerError::Unready(format!(
            "replica {} does not serve here now",
            r.replica_id
        )));
    };
    if runs.lock().unwrap_or_else(|p| p.into_inner()).len() >= MAX_RUNS {
        return refused(WorkerError::Busy);
    }
    let task = r.request.task_id;
    let stream = match replica.adapter.submit(EngineRequest::from(r.request)).await {
        Ok(s) => s,
        Err(e) => return refused(e),
    };
    let (tx, rx) = watch::channel(false);
    let sent = Arc::new(Mutex::new(Vec::new()));
    runs.lock().unwrap_or_else(|p| p.into_inner()).insert(
        r.run.clone(),
        Hosted {
            task,
            pool_id: r.pool_id.clone(),
            stop: tx.clone(),
            events: r.events.clone(),
            sent: sent.clone(),
        },
    );
    crate::metrics::hosted_run(&r.pool_id);
    let (client, runs) = (client.clone(), runs.clone());
    tokio::spawn(async move {
        let beats = tokio::spawn(beats(client.clone(), r.events.clone(), tx));
        pump(&client, stream, &r.events, &sent, rx).await;
        beats.abort();
        if let Some(h) = runs.lock().unwrap_or_else(|p| p.into_inner()).get(&r.run) {
            // ended: nothing left to stop
            h.stop.send_replace(true);
        }
        // kept a while for a leader that missed the last messages
        tokio::time::sleep(KEEP_ENDED).await;
        runs.lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&r.run);
    });
    RunAnswer::Accepted
}

/// Forward the engine's events to the leader until the run ends or is stopped.
async fn pump(
    client: &Client,
    mut stream: adapter_api::EventStream,
    events: &str,
    sent: &Mutex<Vec<Bytes>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut seq = 0;
    loop {
        let ev = tokio::select! {
            biased;
            _ = stopped.wait_for(|s| *s) => return,
            ev = stream.next() => ev,
        };
        let (ev, last) = match ev {
            Some(Ok(e)) => {
                let end = matches!(e, adapter_api::EngineEvent::End(_));
                (RunEvent::from(e), end)
            }
            Some(Err(e)) => (
                RunEvent::Failed {
                    error: WireError::from(&e),
                },
                true,
            ),
            None => (
                RunEvent::Failed {
                    error: WireError::Reset("the engine's stream ended without an end".into()),
                },
                true,
            ),
        };
        if let Ok(b) = serde_json::to_vec(&RunMsg { seq, ev }) {
            let b = Bytes::from(b);
            sent.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(b.clone());
            let _ = client.publish(events.to_string(), b).await;
        }
        seq += 1;
        if last {
            let _ = client.flush().await;
            return;
        }
    }
}

/// Ask the leader every [`BEAT`] whether it still wants the run; stop it when nobody
/// answered for [`SILENT`] (no responder, as while the leader's server is replaced,
/// counts as no answer: a leader that is gone stays unanswering).
async fn beats(client: Client, events: String, stop: watch::Sender<bool>) {
    let mut tick = tokio::time::interval(BEAT);
    tick.tick().await;
    let mut last_answer = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let ask = client.request(events.clone(), "beat".into());
        match tokio::time::timeout(BEAT, ask).await {
            Ok(Ok(_)) => last_answer = tokio::time::Instant::now(),
            Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => {
                tracing::debug!(events, "no leader answered a hosted run's beat");
            }
            _ => {}
        }
        if last_answer.elapsed() >= SILENT {
            tracing::info!(
                events,
                "the leader of a hosted run stopped answering; stopping it"
            );
            let _ = stop.send(true);
            return;
        }
    }
}
