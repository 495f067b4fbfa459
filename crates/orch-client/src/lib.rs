//! An async client for OrchQueue v1.
//!
//! ```no_run
//! # async fn demo() -> Result<(), orch_client::ClientError> {
//! use orch_domain::{Priority, TaskRequest};
//! let c = orch_client::Client::new("http://127.0.0.1:8080");
//! let adm = c.submit(&TaskRequest::completion("gemma-3-270m", "Hello", 8, Priority::Interactive)).await?;
//! let events = c.collect(adm.task_id).await?; // resumes with Last-Event-ID if the connection drops
//! # Ok(()) }
//! ```
//! Every non-2xx answer becomes [`ClientError::Api`] carrying the server's `ErrorEnvelope`.

use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use orch_domain::control::{
    Capabilities, DrainRequest, DrainResponse, PoolHealth, PoolList, ReloadRequest, ReloadResponse,
    ReplicaSetList,
};
use orch_domain::{
    AdmissionResponse, EndFrame, ErrorEnvelope, ErrorFrame, EventKind, MetricsFrame, SessionId,
    SessionInfo, StartedFrame, StreamEvent, TaskId, TaskRequest, TaskStatus, TokenFrame,
};
use serde::de::DeserializeOwned;
use std::pin::Pin;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error envelope.
    #[error("HTTP {status}: {} {}", envelope.code.as_str(), envelope.message)]
    Api {
        status: u16,
        envelope: ErrorEnvelope,
    },
    #[error("transport: {0}")]
    Transport(String),
    #[error("unexpected response: {0}")]
    Decode(String),
}

/// One SSE frame: its id and typed payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: u64,
    pub event: StreamEvent,
}

pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, ClientError>> + Send>>;

#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    /// Sent as `Authorization: Bearer <key>` on every request.
    api_key: Option<String>,
    /// Reconnects allowed per stream when the connection drops mid-stream.
    pub max_resumes: u32,
}

fn transport(e: reqwest::Error) -> ClientError {
    ClientError::Transport(e.to_string())
}

/// Decode one SSE frame into a typed event.
pub fn parse_event(name: &str, id: &str, data: &str) -> Result<Event, ClientError> {
    let bad = |e: serde_json::Error| ClientError::Decode(format!("{name} frame: {e}"));
    let kind: EventKind = name
        .parse()
        .map_err(|_| ClientError::Decode(format!("unknown event {name}")))?;
    let event = match kind {
        EventKind::Started => {
            StreamEvent::Started(serde_json::from_str::<StartedFrame>(data).map_err(bad)?)
        }
        EventKind::Token => {
            StreamEvent::Token(serde_json::from_str::<TokenFrame>(data).map_err(bad)?)
        }
        EventKind::Metrics => {
            StreamEvent::Metrics(serde_json::from_str::<MetricsFrame>(data).map_err(bad)?)
        }
        EventKind::End => StreamEvent::End(serde_json::from_str::<EndFrame>(data).map_err(bad)?),
        EventKind::Error => {
            StreamEvent::Error(serde_json::from_str::<ErrorFrame>(data).map_err(bad)?)
        }
    };
    let id = id
        .parse()
        .map_err(|_| ClientError::Decode(format!("bad id {id:?}")))?;
    Ok(Event { id, event })
}

impl Client {
    pub fn new(base: &str) -> Self {
        Self::with_http(base, reqwest::Client::new())
    }

    pub fn with_http(base: &str, http: reqwest::Client) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            http,
            api_key: None,
            max_resumes: 3,
        }
    }

    /// Authenticate every request with this API key (`orchestratord keys new`).
    pub fn with_api_key(mut self, key: &str) -> Self {
        self.api_key = Some(key.to_string());
        self
    }

    fn authed(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.authed(self.http.get(self.url(path)))
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.authed(self.http.post(self.url(path)))
    }

    fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.authed(self.http.delete(self.url(path)))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn check(resp: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.map_err(transport)?;
        match serde_json::from_str::<ErrorEnvelope>(&text) {
            Ok(envelope) => Err(ClientError::Api {
                status: status.as_u16(),
                envelope,
            }),
            Err(_) => Err(ClientError::Decode(format!(
                "HTTP {status} without an envelope: {text}"
            ))),
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = Self::check(rb.send().await.map_err(transport)?).await?;
        resp.json()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn empty(&self, rb: reqwest::RequestBuilder) -> Result<(), ClientError> {
        Self::check(rb.send().await.map_err(transport)?)
            .await
            .map(|_| ())
    }

    /// `POST /v1/tasks`.
    pub async fn submit(&self, req: &TaskRequest) -> Result<AdmissionResponse, ClientError> {
        self.json(self.post("/v1/tasks").json(req)).await
    }

    /// `GET /v1/tasks/{id}/stream` from after `last_event_id` (no resume).
    pub async fn stream_from(
        &self,
        id: TaskId,
        last_event_id: u64,
    ) -> Result<EventStream, ClientError> {
        let mut rb = self.get(&format!("/v1/tasks/{id}/stream"));
        if last_event_id > 0 {
            rb = rb.header("Last-Event-ID", last_event_id.to_string());
        }
        let resp = Self::check(rb.send().await.map_err(transport)?).await?;
        let s = resp.bytes_stream().eventsource().map(|r| match r {
            Ok(ev) => parse_event(&ev.event, &ev.id, &ev.data),
            Err(e) => Err(ClientError::Transport(e.to_string())),
        });
        Ok(Box::pin(s))
    }

    /// All events of a task up to its terminal frame, reconnecting with
    /// `Last-Event-ID` (at most `max_resumes` times) when the connection drops.
    pub async fn collect(&self, id: TaskId) -> Result<Vec<Event>, ClientError> {
        let mut out: Vec<Event> = Vec::new();
        let mut resumes = 0;
        loop {
            let after = out.last().map_or(0, |e| e.id);
            let mut s = self.stream_from(id, after).await?;
            let mut dropped = None;
            while let Some(item) = s.next().await {
                match item {
                    Ok(ev) => {
                        let terminal = ev.event.is_terminal();
                        out.push(ev);
                        if terminal {
                            return Ok(out);
                        }
                    }
                    Err(ClientError::Transport(e)) => {
                        dropped = Some(e);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            resumes += 1;
            if resumes > self.max_resumes {
                let why = dropped.unwrap_or_else(|| "stream closed before a terminal frame".into());
                return Err(ClientError::Transport(why));
            }
        }
    }

    /// `POST /v1/pools/{id}/drain` (admin).
    pub async fn drain(
        &self,
        pool_id: &str,
        deadline_ms: u64,
    ) -> Result<DrainResponse, ClientError> {
        self.json(
            self.post(&format!("/v1/pools/{pool_id}/drain"))
                .json(&DrainRequest { deadline_ms }),
        )
        .await
    }

    /// `POST /v1/pools/{id}/reload` (admin).
    pub async fn reload(
        &self,
        pool_id: &str,
        req: &ReloadRequest,
    ) -> Result<ReloadResponse, ClientError> {
        self.json(self.post(&format!("/v1/pools/{pool_id}/reload")).json(req))
            .await
    }

    pub async fn cancel(&self, id: TaskId) -> Result<(), ClientError> {
        self.empty(self.post(&format!("/v1/tasks/{id}/cancel")))
            .await
    }

    pub async fn status(&self, id: TaskId) -> Result<TaskStatus, ClientError> {
        self.json(self.get(&format!("/v1/tasks/{id}"))).await
    }

    pub async fn session(&self, id: SessionId) -> Result<SessionInfo, ClientError> {
        self.json(self.get(&format!("/v1/sessions/{id}"))).await
    }

    pub async fn delete_session(&self, id: SessionId) -> Result<(), ClientError> {
        self.empty(self.delete(&format!("/v1/sessions/{id}"))).await
    }

    pub async fn pools(&self) -> Result<PoolList, ClientError> {
        self.json(self.get("/v1/pools")).await
    }

    pub async fn pool_health(&self, pool_id: &str) -> Result<PoolHealth, ClientError> {
        self.json(
            self.http
                .get(self.url(&format!("/v1/pools/{pool_id}/health"))),
        )
        .await
    }

    pub async fn replica_sets(&self) -> Result<ReplicaSetList, ClientError> {
        self.json(self.get("/v1/replicasets")).await
    }

    pub async fn capabilities(&self) -> Result<Capabilities, ClientError> {
        self.json(self.get("/v1/capabilities")).await
    }

    /// `POST /v1/admin/keys` (admin): the new key, shown this once.
    pub async fn create_key(
        &self,
        req: &orch_domain::accounts::NewKey,
    ) -> Result<orch_domain::accounts::CreatedKey, ClientError> {
        self.json(self.post("/v1/admin/keys").json(req)).await
    }

    /// `GET /v1/admin/keys` (admin).
    pub async fn keys(&self) -> Result<orch_domain::accounts::KeyList, ClientError> {
        self.json(self.get("/v1/admin/keys")).await
    }

    /// `DELETE /v1/admin/keys/{fingerprint}` (admin).
    pub async fn revoke_key(
        &self,
        fingerprint: &str,
    ) -> Result<orch_domain::accounts::KeyView, ClientError> {
        self.json(self.delete(&format!("/v1/admin/keys/{fingerprint}")))
            .await
    }

    /// `GET /v1/usage` with `query` (`from`, `to`, `group_by`, `tenant`), as JSON.
    pub async fn usage(
        &self,
        query: &[(&str, &str)],
    ) -> Result<orch_domain::accounts::UsageReport, ClientError> {
        self.json(self.get(&usage_path(query))).await
    }

    /// `GET /v1/usage` as CSV.
    pub async fn usage_csv(&self, query: &[(&str, &str)]) -> Result<String, ClientError> {
        let rb = self.get(&usage_path(query)).header("accept", "text/csv");
        let resp = Self::check(rb.send().await.map_err(transport)?).await?;
        resp.text().await.map_err(transport)
    }
}

/// `/v1/usage` with `query` percent-encoded (every byte but unreserved ones).
fn usage_path(query: &[(&str, &str)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    let q: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    if q.is_empty() {
        "/v1/usage".into()
    } else {
        format!("/v1/usage?{}", q.join("&"))
    }
}
