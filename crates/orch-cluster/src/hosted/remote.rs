//! The leader side of a replica another instance hosts: a [`WorkerAdapter`] whose
//! health and properties are the host's latest advertisement, and whose `submit` asks
//! the host to run the generation and streams back what the host forwards (numbered:
//! a lost message ends the run with a reset, as a broken engine connection would).
//! Dropping the stream before its end tells the host to stop the run.

use super::host::StopMsg;
use super::{
    resend_subject, run_subject, stop_subject, AdReplica, Resend, RunAnswer, RunMsg, RunRequest,
    WireRequest, ACCEPT, RESEND_AFTER, SILENT,
};
use adapter_api::{
    BoxFuture, EngineRequest, EventStream, Health, Properties, WorkerAdapter, WorkerError,
};
use async_nats::{Client, RequestErrorKind, Subscriber};
use futures_util::StreamExt;
use orch_domain::TaskId;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What the leader last heard of a hosted replica.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub ad: AdReplica,
    pub at: Instant,
}

/// See the module docs.
pub(crate) struct HostedReplica {
    client: Client,
    host: String,
    pool_id: String,
    seen: Arc<Mutex<Seen>>,
    engine: &'static str,
}

impl HostedReplica {
    pub fn new(client: Client, host: &str, pool_id: &str, ad: AdReplica) -> Self {
        // the engine's name as events and metrics spell it (the mock always names
        // itself `mock`); an engine this build does not know is `remote`
        let engine = match ad.engine.as_str() {
            "llamacpp" => "llamacpp",
            "mock" => "mock",
            "openai" => "openai",
            _ => "remote",
        };
        Self {
            client,
            host: host.to_string(),
            pool_id: pool_id.to_string(),
            seen: Arc::new(Mutex::new(Seen {
                ad,
                at: Instant::now(),
            })),
            engine,
        }
    }

    /// The host advertised the replica again.
    pub fn heard(&self, ad: AdReplica) {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Seen {
            ad,
            at: Instant::now(),
        };
    }

    fn seen(&self) -> Seen {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn stop_later(client: &Client, host: &str, msg: StopMsg) {
        let (client, subject) = (client.clone(), stop_subject(host));
        if let (Ok(h), Ok(b)) = (
            tokio::runtime::Handle::try_current(),
            serde_json::to_vec(&msg),
        ) {
            h.spawn(async move {
                let _ = client.publish(subject, b.into()).await;
            });
        }
    }
}

/// Tells the host to stop a run whose stream is dropped before its end.
struct StopOnDrop {
    client: Client,
    host: String,
    run: String,
    ended: bool,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if !self.ended {
            HostedReplica::stop_later(
                &self.client,
                &self.host,
                StopMsg {
                    run: Some(self.run.clone()),
                    task: None,
                },
            );
        }
    }
}

/// A run's stream as the leader reads it.
struct Run {
    sub: Subscriber,
    client: Client,
    next: u64,
    /// Nothing more comes (its end, a failure, or a loss).
    done: bool,
    /// When a resend was last asked for (one at a time: the tail it brings covers
    /// every later gap).
    asked: Option<Instant>,
    guard: StopOnDrop,
}

impl Run {
    /// Ask the host to send the run's messages again from the first one missed.
    async fn ask_resend(&mut self) {
        if self.asked.is_some_and(|t| t.elapsed() < RESEND_AFTER) {
            return;
        }
        self.asked = Some(Instant::now());
        let r = Resend {
            run: self.guard.run.clone(),
            from: self.next,
        };
        if let Ok(b) = serde_json::to_vec(&r) {
            let _ = self
                .client
                .publish(resend_subject(&self.guard.host), b.into())
                .await;
        }
    }

    /// The run's next engine event (`None` after its end or failure).
    async fn next(&mut self) -> Option<Result<adapter_api::EngineEvent, WorkerError>> {
        if self.done {
            return None;
        }
        // whatever comes back now is the last, but an end or a failure the host
        // sent (the host stopped on its own then; any other needs a stop)
        self.done = true;
        let mut heard = Instant::now();
        loop {
            let m = match tokio::time::timeout(RESEND_AFTER, self.sub.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    return Some(Err(WorkerError::Reset(
                        "the connection to the replica's host closed".into(),
                    )));
                }
                Err(_) if heard.elapsed() >= SILENT => {
                    // the guard tells the host to stop, in case it is only slow
                    return Some(Err(WorkerError::Reset(format!(
                        "the replica's host {} was silent for {SILENT:?}",
                        self.guard.host
                    ))));
                }
                Err(_) => {
                    // not even a beat: maybe the host's server is being replaced,
                    // maybe the last messages were lost
                    self.ask_resend().await;
                    continue;
                }
            };
            heard = Instant::now();
            if let Some(reply) = m.reply {
                // the host asks whether the run is still wanted: it is, from this
                // message on (the host lets go of the ones before, sends the rest again)
                let next = self.next.to_string();
                let _ = self.client.publish(reply, next.into()).await;
                continue;
            }
            let msg = match serde_json::from_slice::<RunMsg>(&m.payload) {
                Ok(msg) => msg,
                Err(e) => return Some(Err(WorkerError::Protocol(e.to_string()))),
            };
            if msg.seq < self.next {
                // sent again: already had it
                continue;
            }
            if msg.seq > self.next {
                // a gap: what follows it comes again with the resend
                self.ask_resend().await;
                continue;
            }
            self.next += 1;
            let ev = msg.ev.into_engine();
            let last = ev.is_err() || matches!(ev, Ok(adapter_api::EngineEvent::End(_)));
            self.guard.ended = last;
            self.done = last;
            return Some(ev);
        }
    }
}

impl WorkerAdapter for HostedReplica {
    fn engine(&self) -> &'static str {
        self.engine
    }

    fn continues(&self) -> bool {
        self.seen().ad.continues
    }

    fn health(&self) -> BoxFuture<'_, Result<Health, WorkerError>> {
        Box::pin(async move {
            let s = self.seen();
            if s.at.elapsed() >= SILENT {
                Err(WorkerError::Connect(format!(
                    "host {} not heard for {:?}",
                    self.host,
                    s.at.elapsed()
                )))
            } else if s.ad.serving {
                Ok(Health::Ready)
            } else {
                Ok(Health::Loading)
            }
        })
    }

    fn properties(&self) -> BoxFuture<'_, Result<Properties, WorkerError>> {
        Box::pin(async move { Ok(self.seen().ad.properties()) })
    }

    fn submit(&self, req: EngineRequest) -> BoxFuture<'_, Result<EventStream, WorkerError>> {
        Box::pin(async move {
            let replica_id = self.seen().ad.id;
            let events = self.client.new_inbox();
            // subscribed before asking: nothing the host sends is missed
            let sub = self
                .client
                .subscribe(events.clone())
                .await
                .map_err(|e| WorkerError::Connect(e.to_string()))?;
            let body = RunRequest {
                run: events.clone(),
                pool_id: self.pool_id.clone(),
                replica_id,
                events: events.clone(),
                request: WireRequest::from(&req),
            };
            let body =
                serde_json::to_vec(&body).map_err(|e| WorkerError::Protocol(e.to_string()))?;
            let ask = self.client.request(run_subject(&self.host), body.into());
            let answer = match tokio::time::timeout(ACCEPT, ask).await {
                Err(_) => {
                    // it may still start: tell it to stop
                    Self::stop_later(
                        &self.client,
                        &self.host,
                        StopMsg {
                            run: Some(events.clone()),
                            task: None,
                        },
                    );
                    return Err(WorkerError::Connect(format!(
                        "host {} did not accept the run within {ACCEPT:?}",
                        self.host
                    )));
                }
                Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => {
                    return Err(WorkerError::Connect(format!(
                        "host {} does not take runs",
                        self.host
                    )))
                }
                Ok(Err(e)) => return Err(WorkerError::Connect(e.to_string())),
                Ok(Ok(m)) => serde_json::from_slice::<RunAnswer>(&m.payload)
                    .map_err(|e| WorkerError::Protocol(e.to_string()))?,
            };
            if let RunAnswer::Refused { error } = answer {
                return Err(error.into());
            }
            let run = Run {
                sub,
                client: self.client.clone(),
                next: 0,
                done: false,
                asked: None,
                guard: StopOnDrop {
                    client: self.client.clone(),
                    host: self.host.clone(),
                    run: events,
                    ended: false,
                },
            };
            let stream = futures_util::stream::unfold(run, |mut run| async move {
                run.next().await.map(|ev| (ev, run))
            });
            Ok(Box::pin(stream) as EventStream)
        })
    }

    fn cancel(&self, task: TaskId) -> BoxFuture<'_, Result<(), WorkerError>> {
        Box::pin(async move {
            let msg = StopMsg {
                run: None,
                task: Some(task),
            };
            let b = serde_json::to_vec(&msg).map_err(|e| WorkerError::Protocol(e.to_string()))?;
            // answered once the host dropped the run's engine stream (its slot is free)
            let ask = self.client.request(stop_subject(&self.host), b.into());
            match tokio::time::timeout(ACCEPT, ask).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(WorkerError::Connect(e.to_string())),
                Err(_) => Err(WorkerError::Timeout(format!(
                    "host {} did not confirm the stop within {ACCEPT:?}",
                    self.host
                ))),
            }
        })
    }
}
