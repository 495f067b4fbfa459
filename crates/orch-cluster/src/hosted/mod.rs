//! Every instance's replicas serve its pools (capacity): each instance advertises its
//! own replicas ([`host::advertise`]) and runs, on them, the generations a pool's
//! leader sends it ([`host::serve`]); the leader attaches the replicas other instances
//! advertise to its pool as [`HostedReplica`]s ([`roster`]), so its pool's actor places
//! every task on any ready replica in the cluster (prefix-aware, session-aware and
//! load-balanced, exactly as standalone) and runs it through the same runner
//! (watchdogs, retries before the first token, cancel).
//!
//! The leader stays the one writer of each task's frames (fenced by its lease): the
//! engine's events come back to it over core NATS and it stores them as it stores its
//! own replicas' (one more hop per token, on a connection the instances already hold).
//! A run is tied to both ends: the host asks the leader every [`BEAT`] whether the
//! run is still wanted (no responder: the leader is gone, the run stops and frees its
//! slot), and the leader ends the run with `WORKER_RESET` when its host is silent for
//! [`SILENT`] (the runner retries it elsewhere when no token was streamed). Messages
//! are numbered; the host keeps a run's messages until shortly after its end and sends
//! them again from the first one the leader misses (core NATS drops what is
//! published while a subscriber's server is being replaced), so losing a nats-server
//! loses no token. An instance whose advertisements stop for [`SILENT`] has its
//! replicas taken out.
//!
//! Owns: the subjects and wire forms of advertisements and runs. Never: a store
//! (nothing here persists; what a run streams is stored by the leader's term).

pub(crate) mod host;
#[cfg(all(test, feature = "testing"))]
mod relay_tests;
mod remote;
pub(crate) mod roster;

pub(crate) use remote::HostedReplica;

use adapter_api::{EngineEnd, EngineEvent, EngineRequest, WorkerError};
use orch_domain::{ChatMessage, FinishReason, TaskId};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How often an instance advertises its replicas.
pub(crate) const ADVERTISE: Duration = Duration::from_millis(250);
/// How often a host asks whether a run is still wanted (and so tells it is alive).
pub(crate) const BEAT: Duration = Duration::from_millis(500);
/// A host (or its advertisements) silent this long is taken as gone.
pub(crate) const SILENT: Duration = Duration::from_secs(2);
/// A leader that heard nothing of a run for this long, not even a beat (or saw a gap
/// in its numbers), asks the host to send its messages again from the first it misses: core NATS
/// drops what is published while a subscriber's server is being replaced.
pub(crate) const RESEND_AFTER: Duration = Duration::from_secs(1);
/// How long a host keeps an ended run's messages for a resend.
pub(crate) const KEEP_ENDED: Duration = Duration::from_secs(10);
/// How long a leader waits for a host to accept a run.
pub(crate) const ACCEPT: Duration = Duration::from_secs(2);
/// Runs one host serves at once at most (the leaders' slot accounting keeps it far
/// lower; this bounds what a misbehaving leader can start).
pub(crate) const MAX_RUNS: usize = 4096;

/// `instance` as one subject token: `A-Za-z0-9-` as they are, any other byte as `_`
/// and its two hex digits (so different names never share a token).
pub(crate) fn token(instance: &str) -> String {
    let mut out = String::with_capacity(instance.len());
    for b in instance.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// What goes before the ids of an instance's own replicas (its pool manager makes
/// them so): the instance's name and `:`, so replica ids are unique in the cluster,
/// and a replica's host is known from its id.
pub fn replica_prefix(instance: &str) -> String {
    format!("{instance}:")
}

/// Where an instance takes runs.
pub(crate) fn run_subject(host: &str) -> String {
    format!("orch.host.{}.run", token(host))
}

/// Where an instance takes requests to send a run's messages again.
pub(crate) fn resend_subject(host: &str) -> String {
    format!("orch.host.{}.resend", token(host))
}

/// Where an instance takes stops of its runs.
pub(crate) fn stop_subject(host: &str) -> String {
    format!("orch.host.{}.stop", token(host))
}

/// Where the instances advertise their replicas of `pool_id`.
pub(crate) fn ad_subject(pool_id: &str) -> String {
    format!("orch.replicas.{pool_id}")
}

/// An instance's replicas of one pool, as it advertises them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Ad {
    pub instance: String,
    pub replicas: Vec<AdReplica>,
}

/// One advertised replica: its cluster-unique id, whether it serves, and its identity
/// (held to the leader's pool pin when it is attached).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct AdReplica {
    pub id: String,
    pub serving: bool,
    pub engine: String,
    pub engine_version: String,
    pub model: String,
    pub model_digest: String,
    #[serde(default)]
    pub model_fingerprint: Option<String>,
    pub slots: u32,
    pub ctx_max: u32,
    /// The engine continues a generation from token ids (older instances: no).
    #[serde(default)]
    pub continues: bool,
}

impl AdReplica {
    pub fn properties(&self) -> adapter_api::Properties {
        adapter_api::Properties {
            engine: self.engine.clone(),
            engine_version: self.engine_version.clone(),
            model: self.model.clone(),
            model_digest: self.model_digest.clone(),
            model_fingerprint: self.model_fingerprint.clone(),
            slots: self.slots,
            ctx_max: self.ctx_max,
        }
    }

    pub fn of(id: &str, serving: bool, p: &adapter_api::Properties, continues: bool) -> Self {
        Self {
            id: id.to_string(),
            serving,
            engine: p.engine.clone(),
            engine_version: p.engine_version.clone(),
            model: p.model.clone(),
            model_digest: p.model_digest.clone(),
            model_fingerprint: p.model_fingerprint.clone(),
            slots: p.slots,
            ctx_max: p.ctx_max,
            continues,
        }
    }
}

/// A leader's request to send a run's messages again, from `from` on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Resend {
    pub run: String,
    pub from: u64,
}

/// A leader's request to run a generation on one of the host's replicas; the host
/// sends the run's messages to `events`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RunRequest {
    pub run: String,
    pub pool_id: String,
    pub replica_id: String,
    pub events: String,
    pub request: WireRequest,
}

/// [`EngineRequest`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireRequest {
    pub task_id: TaskId,
    #[serde(with = "orch_domain::shared")]
    pub prompt: std::sync::Arc<str>,
    #[serde(default)]
    pub chat: Option<Vec<ChatMessage>>,
    pub max_tokens: u32,
    pub seed: i64,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub stop: Vec<String>,
    #[serde(default)]
    pub slot: Option<u32>,
    pub cache_prompt: bool,
    /// A continuation's tokens so far (ids, then their text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<(Vec<u32>, String)>,
}

impl From<&EngineRequest> for WireRequest {
    fn from(r: &EngineRequest) -> Self {
        Self {
            task_id: r.task_id,
            prompt: r.prompt.clone(),
            chat: r.chat.clone(),
            max_tokens: r.max_tokens,
            seed: r.seed,
            temperature: r.temperature,
            top_p: r.top_p,
            stop: r.stop.clone(),
            slot: r.slot,
            cache_prompt: r.cache_prompt,
            resume: r.resume.as_ref().map(|x| (x.ids.clone(), x.text.clone())),
        }
    }
}

impl From<WireRequest> for EngineRequest {
    fn from(r: WireRequest) -> Self {
        Self {
            task_id: r.task_id,
            prompt: r.prompt,
            chat: r.chat,
            max_tokens: r.max_tokens,
            seed: r.seed,
            temperature: r.temperature,
            top_p: r.top_p,
            stop: r.stop,
            slot: r.slot,
            cache_prompt: r.cache_prompt,
            resume: r
                .resume
                .map(|(ids, text)| adapter_api::Resume { ids, text }),
            // the host's engine tokenizes the text itself
            prompt_ids: None,
        }
    }
}

/// The host's answer to a [`RunRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub(crate) enum RunAnswer {
    Accepted,
    Refused { error: WireError },
}

/// A run's message from its host, numbered from 0 without gaps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RunMsg {
    pub seq: u64,
    pub ev: RunEvent,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum RunEvent {
    Token {
        text: String,
        index: u32,
        #[serde(default)]
        prompt_tokens: Option<u32>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ids: Vec<u32>,
    },
    End {
        tokens_in: u32,
        tokens_out: u32,
        #[serde(default)]
        tokens_cached: Option<u32>,
        finish_reason: FinishReason,
        decode_time_ms: u64,
        #[serde(default)]
        slot: Option<u32>,
    },
    Failed {
        error: WireError,
    },
}

impl From<EngineEvent> for RunEvent {
    fn from(e: EngineEvent) -> Self {
        match e {
            EngineEvent::Token {
                text,
                index,
                prompt_tokens,
                ids,
            } => RunEvent::Token {
                text,
                index,
                prompt_tokens,
                ids,
            },
            EngineEvent::End(e) => RunEvent::End {
                tokens_in: e.tokens_in,
                tokens_out: e.tokens_out,
                tokens_cached: e.tokens_cached,
                finish_reason: e.finish_reason,
                decode_time_ms: e.decode_time_ms,
                slot: e.slot,
            },
        }
    }
}

impl RunEvent {
    /// The engine's event, or its failure.
    pub fn into_engine(self) -> Result<EngineEvent, WorkerError> {
        match self {
            RunEvent::Token {
                text,
                index,
                prompt_tokens,
                ids,
            } => Ok(EngineEvent::Token {
                text,
                index,
                prompt_tokens,
                ids,
            }),
            RunEvent::End {
                tokens_in,
                tokens_out,
                tokens_cached,
                finish_reason,
                decode_time_ms,
                slot,
            } => Ok(EngineEvent::End(EngineEnd {
                tokens_in,
                tokens_out,
                tokens_cached,
                finish_reason,
                decode_time_ms,
                slot,
            })),
            RunEvent::Failed { error } => Err(error.into()),
        }
    }
}

/// [`WorkerError`] on the wire (its kind and detail).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub(crate) enum WireError {
    Connect(String),
    Reset(String),
    Timeout(String),
    Unready(String),
    Busy,
    Protocol(String),
    Rejected(String),
}

impl From<&WorkerError> for WireError {
    fn from(e: &WorkerError) -> Self {
        match e.clone() {
            WorkerError::Connect(d) => WireError::Connect(d),
            WorkerError::Reset(d) => WireError::Reset(d),
            WorkerError::Timeout(d) => WireError::Timeout(d),
            WorkerError::Unready(d) => WireError::Unready(d),
            WorkerError::Busy => WireError::Busy,
            WorkerError::Protocol(d) => WireError::Protocol(d),
            WorkerError::Rejected(d) => WireError::Rejected(d),
        }
    }
}

impl From<WireError> for WorkerError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Connect(d) => WorkerError::Connect(d),
            WireError::Reset(d) => WorkerError::Reset(d),
            WireError::Timeout(d) => WorkerError::Timeout(d),
            WireError::Unready(d) => WorkerError::Unready(d),
            WireError::Busy => WorkerError::Busy,
            WireError::Protocol(d) => WorkerError::Protocol(d),
            WireError::Rejected(d) => WorkerError::Rejected(d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_name_becomes_one_subject_token() {
        assert_eq!(token("127.0.0.1:8080"), "127_2e0_2e0_2e1_3a8080");
        assert_eq!(token("gpu-box"), "gpu-box");
        assert_ne!(token("a.b"), token("a_b"));
        assert_eq!(run_subject("a.b"), "orch.host.a_2eb.run");
    }

    #[test]
    fn engine_events_and_failures_survive_the_wire() {
        let events = [
            EngineEvent::Token {
                text: "hé".into(),
                index: 3,
                prompt_tokens: Some(7),
                ids: vec![17, 4],
            },
            EngineEvent::End(EngineEnd {
                tokens_in: 7,
                tokens_out: 4,
                tokens_cached: Some(2),
                finish_reason: FinishReason::Length,
                decode_time_ms: 12,
                slot: Some(1),
            }),
        ];
        for e in events {
            let json = serde_json::to_string(&RunMsg {
                seq: 1,
                ev: RunEvent::from(e.clone()),
            })
            .unwrap();
            let back: RunMsg = serde_json::from_str(&json).unwrap();
            assert_eq!(back.ev.into_engine(), Ok(e));
        }
        for w in [
            WorkerError::Busy,
            WorkerError::Timeout("slow".into()),
            WorkerError::Rejected("bad".into()),
        ] {
            let json = serde_json::to_string(&RunEvent::Failed {
                error: WireError::from(&w),
            })
            .unwrap();
            let back: RunEvent = serde_json::from_str(&json).unwrap();
            assert_eq!(back.into_engine(), Err(w));
        }
    }
}
