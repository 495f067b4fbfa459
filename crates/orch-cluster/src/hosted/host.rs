//! The host side: advertise this instance's replicas of every pool, and run on them
//! the generations pool leaders send, forwarding each engine event to the leader.
//!
//! A run is accepted at once (the engine is asked afterwards, in the run's own task:
//! an engine that answers only with its first token does not hold the leader's
//! request up; a refusal then is the run's first message). It stops (dropping the
//! engine's stream frees its slot) when the leader says stop (answered once the
//! stream is dropped), when nobody answered its beats for [`SILENT`], or when the
//! engine's stream ends. A beat's answer carries the number of the next message the
//! leader expects: what it has is let go, and what it missed is sent again.

use super::{
    ad_subject, resend_subject, run_subject, stop_subject, Ad, AdReplica, Resend, RunAnswer,
    RunEvent, RunMsg, RunRequest, WireError, ADVERTISE, BEAT, KEEP_ENDED, MAX_RUNS, SILENT,
};
use crate::ClusterError;
use adapter_api::{EngineRequest, WorkerError};
use async_nats::Client;
use bytes::Bytes;
use futures_util::StreamExt;
use orch_domain::TaskId;
use orch_services::LocalPools;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a stop's answer waits for the stopped runs' streams to be dropped.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// A leader's stop of one run (`run`) or of every run of a task (`task`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct StopMsg {
    #[serde(default)]
    pub run: Option<String>,
    #[serde(default)]
    pub task: Option<TaskId>,
}

/// A run's messages not yet confirmed by the leader: `sent[i]` is message `base + i`.
#[derive(Default)]
struct Sent {
    base: u64,
    msgs: Vec<Bytes>,
}

impl Sent {
    /// The leader has every message before `next`.
    fn confirm(&mut self, next: u64) {
        let n = usize::try_from(next.saturating_sub(self.base))
            .unwrap_or(usize::MAX)
            .min(self.msgs.len());
        self.msgs.drain(..n);
        self.base += n as u64;
    }

    /// The messages from `from` on.
    fn from(&self, from: u64) -> Vec<Bytes> {
        let skip = usize::try_from(from.saturating_sub(self.base))
            .unwrap_or(usize::MAX)
            .min(self.msgs.len());
        self.msgs[skip..].to_vec()
    }

    /// Number of the next message to send.
    fn next(&self) -> u64 {
        self.base + self.msgs.len() as u64
    }
}

/// A run hosted here.
struct Hosted {
    task: TaskId,
    pool_id: String,
    /// Set to stop the run.
    stop: watch::Sender<bool>,
    /// Set once the run's engine stream is dropped.
    ended: watch::Receiver<bool>,
    events: String,
    sent: Arc<Mutex<Sent>>,
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
                        .map(|r| AdReplica::of(&r.id, r.serving, &r.props, r.adapter.continues()))
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
            n += usize::from(!*h.ended.borrow());
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

/// Take runs, stops and resends for this instance's replicas (ids starting with
/// `prefix`).
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
                    let answer = match serde_json::from_slice::<RunRequest>(&m.payload) {
                        Ok(r) => start(&client, &pools, &prefix, &runs, r),
                        Err(e) => RunAnswer::Refused {
                            error: WireError::Protocol(format!("unreadable run request: {e}")),
                        },
                    };
                    if let Ok(b) = serde_json::to_vec(&answer) {
                        let _ = client.publish(reply, b.into()).await;
                    }
                }
                Some(m) = stops.next() => {
                    if let Ok(s) = serde_json::from_slice::<StopMsg>(&m.payload) {
                        let ended = stop(&runs, &s);
                        if let Some(reply) = m.reply {
                            let client = client.clone();
                            tokio::spawn(async move {
                                for mut e in ended {
                                    let _ = tokio::time::timeout(STOP_WAIT, e.wait_for(|d| *d)).await;
                                }
                                let _ = client.publish(reply, "stopped".into()).await;
                            });
                        }
                    }
                }
                Some(m) = resends.next() => {
                    if let Ok(r) = serde_json::from_slice::<Resend>(&m.payload) {
                        resend(&client, &runs, &r);
                    }
                }
                else => return,
            }
        }
    }))
}

/// Stop the runs `s` names; what tells when each one's stream is dropped.
fn stop(runs: &Runs, s: &StopMsg) -> Vec<watch::Receiver<bool>> {
    let runs = runs.lock().unwrap_or_else(|p| p.into_inner());
    runs.iter()
        .filter(|(run, h)| s.run.as_deref() == Some(run.as_str()) || s.task == Some(h.task))
        .map(|(_, h)| {
            let _ = h.stop.send(true);
            h.ended.clone()
        })
        .collect()
}

/// Send a run's messages again from `r.from` on (what the leader missed), off the
/// serving loop.
fn resend(client: &Client, runs: &Runs, r: &Resend) {
    let found = {
        let runs = runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.get(&r.run).map(|h| {
            let sent = h.sent.lock().unwrap_or_else(|p| p.into_inner());
            (h.events.clone(), sent.from(r.from))
        })
    };
    if let Some((events, tail)) = found {
        let client = client.clone();
        tokio::spawn(async move {
            for b in tail {
                let _ = client.publish(events.clone(), b).await;
            }
        });
    }
}

/// Accept a run on the named replica, if it serves here, and start it.
fn start(
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
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ended_tx, ended_rx) = watch::channel(false);
    let sent = Arc::new(Mutex::new(Sent::default()));
    {
        let mut map = runs.lock().unwrap_or_else(|p| p.into_inner());
        let live = map.values().filter(|h| !*h.ended.borrow()).count();
        if live >= MAX_RUNS {
            return refused(WorkerError::Busy);
        }
        map.insert(
            r.run.clone(),
            Hosted {
                task: r.request.task_id,
                pool_id: r.pool_id.clone(),
                stop: stop_tx.clone(),
                ended: ended_rx,
                events: r.events.clone(),
                sent: sent.clone(),
            },
        );
    }
    crate::metrics::hosted_run(&r.pool_id);
    let (client, runs) = (client.clone(), runs.clone());
    tokio::spawn(async move {
        let beats = tokio::spawn(beats(
            client.clone(),
            r.events.clone(),
            stop_tx,
            sent.clone(),
        ));
        let mut stopped = stop_rx;
        let stream = tokio::select! {
            biased;
            _ = stopped.wait_for(|s| *s) => None,
            s = replica.adapter.submit(EngineRequest::from(r.request)) => Some(s),
        };
        match stream {
            Some(Ok(stream)) => pump(&client, stream, &r.events, &sent, stopped).await,
            Some(Err(e)) => {
                let ev = RunEvent::Failed {
                    error: WireError::from(&e),
                };
                send(&client, &r.events, &sent, ev).await;
            }
            None => {}
        }
        let _ = ended_tx.send(true);
        beats.abort();
        // kept a while for a leader that missed the last messages
        tokio::time::sleep(KEEP_ENDED).await;
        runs.lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&r.run);
    });
    RunAnswer::Accepted
}

/// Number, keep and send one message of a run.
async fn send(client: &Client, events: &str, sent: &Mutex<Sent>, ev: RunEvent) {
    let b = {
        let mut s = sent.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(b) = serde_json::to_vec(&RunMsg { seq: s.next(), ev }) else {
            return;
        };
        let b = Bytes::from(b);
        s.msgs.push(b.clone());
        b
    };
    let _ = client.publish(events.to_string(), b).await;
}

/// Forward the engine's events to the leader until the run ends or is stopped.
async fn pump(
    client: &Client,
    mut stream: adapter_api::EventStream,
    events: &str,
    sent: &Mutex<Sent>,
    mut stopped: watch::Receiver<bool>,
) {
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
        send(client, events, sent, ev).await;
        if last {
            let _ = client.flush().await;
            return;
        }
    }
}

/// Ask the leader every [`BEAT`] whether it still wants the run; its answer is the
/// next message it expects (what it has is let go, what it missed is sent again).
/// Stop the run when nobody answered for [`SILENT`] (no responder, as while the
/// leader's server is replaced, counts as no answer).
async fn beats(client: Client, events: String, stop: watch::Sender<bool>, sent: Arc<Mutex<Sent>>) {
    let mut tick = tokio::time::interval(BEAT);
    tick.tick().await;
    let mut last_answer = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let ask = client.request(events.clone(), "beat".into());
        if let Ok(Ok(answer)) = tokio::time::timeout(BEAT, ask).await {
            last_answer = tokio::time::Instant::now();
            let next = std::str::from_utf8(&answer.payload)
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            if let Some(next) = next {
                let missed = {
                    let mut s = sent.lock().unwrap_or_else(|p| p.into_inner());
                    s.confirm(next);
                    s.from(next)
                };
                for b in missed {
                    let _ = client.publish(events.clone(), b).await;
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmed_messages_are_let_go_and_the_rest_can_be_sent_again() {
        let mut s = Sent::default();
        for n in 0..5u8 {
            s.msgs.push(Bytes::from(vec![n]));
        }
        assert_eq!(s.from(3), [Bytes::from(vec![3]), Bytes::from(vec![4])]);
        s.confirm(3);
        assert_eq!((s.base, s.msgs.len(), s.next()), (3, 2, 5));
        assert_eq!(s.from(0).len(), 2, "what was confirmed is gone");
        assert!(s.from(9).is_empty());
        s.confirm(99);
        assert_eq!((s.base, s.msgs.len()), (5, 0));
    }
}
